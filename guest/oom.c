/*
 * The guest kernel's OOM kills, told to the host: the OOM killer logs "Out of memory: Killed
 * process N (name) total-vm:..." (or "Memory cgroup out of memory: ..."), the agent reads the
 * kernel log (/dev/kmsg) in its event loop and sends an OOM frame (u32 pid, string name). The
 * agent itself is PID 1, which the OOM killer never picks.
 *
 * And a relief valve for thrashing: without swap, a guest whose memory is full keeps dropping and
 * re-reading its programs' code pages, and the kernel, which sees that as progress, may not call
 * its OOM killer for minutes (measured: 3.5 min for `head -c 100000000 /dev/zero | sort` in a
 * 128 MiB guest, with every task stalled on memory ~60% of the time; a process streaming files
 * past a 45 MiB one stalled 5%). A PSI trigger wakes the agent for each second in which every
 * task was stalled on memory for half of it; after 10 s of such seconds it asks the kernel's OOM
 * killer to pick a process (sysrq f), as systemd-oomd and earlyoom would.
 *
 * In --stdio mode the host's kernel log is not ours: nothing is read unless a test names a file or
 * FIFO of kmsg-formatted lines (--kmsg PATH).
 */
#include "agent.h"

#include <sys/stat.h>

int g_kmsg_fd = -1;

#define KMSG_BUF 8192       /* a /dev/kmsg record is at most ~1 KiB of text plus its dictionary */
#define KMSG_READS_PER_TURN 64 /* records per loop turn: a flood of kernel messages cannot starve the rest */
#define OOM_NAME_MAX 64

int g_psi_fd = -1;
#define PSI_TRIGGER "full 500000 1000000" /* stall us per window us: all tasks stalled half of a second */
#define THRASH_MS 10000                   /* that long (windows at most 3 s apart) before acting */
static int64_t g_thrash_since, g_thrash_last;

static char g_line[KMSG_BUF];
static size_t g_line_len; /* bytes of a line not yet ended (a FIFO; /dev/kmsg reads whole records) */

void oom_watch_open(const char *path)
{
	int fd = open(path ? path : "/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		warnx("open %s: %s (OOM kills will not be reported)", path ? path : "/dev/kmsg", strerror(errno));
		return;
	}
	/* Only what happens from now on: the log before start-up holds no kill of ours. */
	struct stat st;
	if (!path || (fstat(fd, &st) == 0 && S_ISCHR(st.st_mode))) lseek(fd, 0, SEEK_END);
	g_kmsg_fd = fd;
}

/*
 * One kernel log line: "PRIO,SEQ,USEC,FLAGS;MESSAGE". Only the kernel's own messages count
 * (facility 0, so PRIO < 8): a message a guest process writes to /dev/kmsg gets the user facility.
 */
static void oom_line(char *line)
{
	char *end;
	long prio = strtol(line, &end, 10);
	if (end == line || *end != ',' || prio < 0 || prio >= 8) return;
	char *msg = strchr(end, ';');
	if (!msg) return;
	msg++;
	static const char killed[] = ": Killed process ";
	char *k = strstr(msg, killed);
	if (!k) return;
	*k = '\0';
	if (!strstr(msg, "ut of memory")) return; /* "Out of memory", "Memory cgroup out of memory" */
	char *p = k + sizeof killed - 1;
	long pid = strtol(p, &end, 10);
	if (end == p || pid <= 0 || pid > INT32_MAX || strncmp(end, " (", 2) != 0) return;
	char *name = end + 2;
	/* The name may hold anything (the kernel escapes unprintable bytes as \xNN), ")" too: it ends
	 * at the last ") total-vm:", or at the last ")" of a shorter line. */
	char *close = NULL;
	for (char *s = name; (s = strstr(s, ") total-vm:")); s++) close = s;
	if (!close) close = strrchr(name, ')');
	if (!close) return;
	size_t n = (size_t)(close - name);
	if (n > OOM_NAME_MAX) n = OOM_NAME_MAX;
	uint8_t payload[8 + OOM_NAME_MAX];
	put_be32(payload, (uint32_t)pid);
	put_be32(payload + 4, (uint32_t)n);
	memcpy(payload + 8, name, n);
	debugx("OOM kill of pid %ld (%.*s)", pid, (int)n, name);
	send_frame(T_OOM, 0, payload, 8 + n);
}

/* The kernel log is readable: handle what it has, a bounded number of reads per turn. */
void read_kmsg(void)
{
	for (int i = 0; i < KMSG_READS_PER_TURN; i++) {
		ssize_t n = read(g_kmsg_fd, g_line + g_line_len, sizeof g_line - 1 - g_line_len);
		if (n < 0 && errno == EPIPE) continue; /* records were overwritten before we read them */
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
		if (n < 0 && errno == EINVAL && g_line_len > 0) { /* no room for a whole record: drop the partial line */
			g_line_len = 0;
			continue;
		}
		if (n <= 0) { /* EOF of a test's file, or the log broke: stop watching it */
			if (n < 0) warnx("read kernel log: %s (OOM kills will no longer be reported)", strerror(errno));
			close_fd(&g_kmsg_fd);
			return;
		}
		g_line_len += (size_t)n;
		g_line[g_line_len] = '\0';
		char *start = g_line, *nl;
		while ((nl = memchr(start, '\n', g_line_len - (size_t)(start - g_line)))) {
			*nl = '\0';
			oom_line(start);
			start = nl + 1;
		}
		g_line_len -= (size_t)(start - g_line);
		if (g_line_len == sizeof g_line - 1) g_line_len = 0; /* a line longer than the buffer: not the kernel's */
		else memmove(g_line, start, g_line_len);
	}
}

/* PID 1 mode: the memory pressure trigger (no PSI in the kernel: no valve, not an error). */
void thrash_watch_open(void)
{
	int fd = open("/proc/pressure/memory", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		debugx("/proc/pressure/memory: %s (no thrashing valve)", strerror(errno));
		return;
	}
	if (write(fd, PSI_TRIGGER, sizeof PSI_TRIGGER) < 0) {
		warnx("PSI trigger: %s (no thrashing valve)", strerror(errno));
		close(fd);
		return;
	}
	g_psi_fd = fd;
}

/* POLLPRI on the trigger: one more window in which the tasks were stalled on memory. */
void memory_pressure(void)
{
	int64_t now = mono_ms();
	if (!g_thrash_since || now - g_thrash_last > 3000) g_thrash_since = now;
	g_thrash_last = now;
	if (now - g_thrash_since < THRASH_MS) return;
	g_thrash_since = 0;
	warnx("memory thrashing for %d s: asking the kernel's OOM killer to end a process", THRASH_MS / 1000);
	int fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "f", 1) != 1) warnx("sysrq-trigger: %s", strerror(errno));
	if (fd >= 0) close(fd);
}
