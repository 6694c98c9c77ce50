/*
 * cellvm guest agent.
 *
 * PID 1 of every cellvm microVM: it turns the initramfs into a running system (mounts, kernel
 * modules, switch to the root disk) and then serves the host's requests over the virtio-serial
 * port named "cell.agent", speaking the protocol in docs/protocol.md.
 *
 * `agent --stdio` skips the PID 1 set-up and serves the same protocol on fds 0 and 1; the host's
 * tests use it to exercise the agent without a VM.
 *
 * The server is one thread and one poll() loop over: the channel, a signalfd for SIGCHLD (and
 * SIGIO, see channel_down), and the pipes of every running exec. Nothing in the loop blocks:
 * outgoing frames go through a queue written when the channel is writable, stdin data for a
 * process through a per-process queue written when its pipe is writable. File downloads are read
 * a chunk per loop turn while that queue is short, the way exec pipes are (OUT_HIGH).
 *
 * Build: gcc -static -Os -Wall -Wextra -Werror -o agent guest/agent.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/random.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "0.3.0"

/* Wire format (docs/protocol.md). */
#define MAGIC0 0xCE
#define MAGIC1 0x11
#define HDR_SIZE 12
#define MAX_PAYLOAD (1024u * 1024u)
#define MAX_PING 65536u
#define CHUNK 65536u /* largest STDOUT/STDERR payload */
#define MAX_EXECS 256
#define MAX_ARGC 1024u
#define MAX_ENVC 4096u
#define MAX_ENTROPY 4096u
#define MAX_HOSTNAME 63 /* one RFC 1123 label */
#define MACHINE_ID_LEN 32
#define MAX_XFERS 32 /* file transfers in progress at once */

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07) /* Linux 4.17+ */
#endif

enum {
	T_PING = 0x01, T_EXEC, T_STDIN, T_KILL, T_SET_TIME, T_ADD_ENTROPY, T_SHUTDOWN, T_SIGNAL_ALL, T_SET_IDENTITY,
	T_PUT_FILE = 0x0A, T_FILE_DATA, T_FILE_END, T_MKDIR, T_SYMLINK, T_READ_FILE, T_LIST_DIR, T_STAT, T_CANCEL, T_SYNC,
	T_OK = 0x80, T_PONG, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_HELLO, T_DATA, T_ERROR = 0x8F,
};
enum {
	E_MALFORMED = 1, E_BAD_CWD, E_UNKNOWN_ID, E_DUPLICATE_ID, E_UNKNOWN_TYPE, E_LIMIT, E_SYSCALL,
	E_NOT_FOUND, E_WRONG_TYPE, E_BAD_PATH,
};

/* Memory bounds. */
#define OUT_HIGH (4u << 20)   /* outgoing queue size above which exec pipes are not read */
#define OUT_HARD (16u << 20)  /* ... and above which the channel is not read either */
#define STDIN_CAP (16u << 20) /* stdin bytes queued for all processes together */
#define SHRINK_AT (256u << 10) /* an emptied buffer larger than this is given back */

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define NEWROOT "/newroot"
#define PORT_NAME "cell.agent"
/* Root disk and agent port: how long to wait for them to appear. Generous: under software emulation
 * with several VMs booting at once on a few cores they can take seconds, and the host has its own
 * deadline anyway. */
#define DEVICE_WAIT_MS 20000

/* ------------------------------------------------------------------------------------------ */
/* Globals */

static bool g_stdio;          /* --stdio test mode */
static bool g_debug;          /* cell.debug=1 or --debug */
static int g_log_fd = -1;     /* /dev/console in PID 1 mode, stderr in --stdio mode */
static pid_t g_self;

static int g_in_fd = -1, g_out_fd = -1; /* the channel (the same fd in PID 1 mode) */
static int g_sig_fd = -1;               /* signalfd: SIGCHLD, SIGIO */
static bool g_chan_up = true;           /* false between a host disconnect and its next data */
static int g_backoff_ms;                /* while the host is away: how long to leave the port */
static int64_t g_backoff_until;
static int g_stdio_flags[2] = { -1, -1 }; /* fd 0/1 flags to restore on exit in --stdio mode */

static struct rlimit g_nofile; /* RLIMIT_NOFILE as inherited, restored in exec children */
static bool g_nofile_saved;

struct buf {
	uint8_t *data;
	size_t head, len, cap; /* live bytes are data[head .. head+len) */
};

static struct buf g_in;  /* bytes read from the channel, not yet decoded */
static struct buf g_out; /* frames waiting for the channel to be writable */

struct exec {
	bool used;
	uint32_t id;
	pid_t pid;
	int out_fd, err_fd, in_fd; /* our pipe ends, -1 once closed */
	bool reaped;
	int status;
	struct buf inq;  /* stdin bytes the process has not taken yet */
	bool in_close;   /* host closed stdin: close the pipe once inq drains */
	bool in_dropped; /* stdin overflowed: further stdin data is discarded */
};

static struct exec g_execs[MAX_EXECS];
static int g_nexecs;
static size_t g_stdin_total;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) return;
		s += w;
		n -= (size_t)w;
	}
}

static void vlog(const char *prefix, const char *fmt, va_list ap)
{
	char msg[512];
	int n = 0;
	if (g_log_fd < 0) return;
	if (g_debug) {
		struct timespec ts;
		clock_gettime(CLOCK_BOOTTIME, &ts); /* same clock as the kernel's printk stamps */
		n = snprintf(msg, sizeof msg, "[%5lld.%06ld] ", (long long)ts.tv_sec, ts.tv_nsec / 1000);
	}
	n += snprintf(msg + n, sizeof msg - n, "cell-agent: %s", prefix);
	if ((size_t)n < sizeof msg) n += vsnprintf(msg + n, sizeof msg - n, fmt, ap);
	if ((size_t)n >= sizeof msg - 1) n = sizeof msg - 2;
	msg[n++] = '\n';
	write_all(g_log_fd, msg, (size_t)n);
}

/* Always printed: warnings worth seeing on the console even without cell.debug=1. */
static void __attribute__((format(printf, 1, 2))) warnx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog("", fmt, ap);
	va_end(ap);
}

static void __attribute__((format(printf, 1, 2))) debugx(const char *fmt, ...)
{
	va_list ap;
	if (!g_debug) return;
	va_start(ap, fmt);
	vlog("", fmt, ap);
	va_end(ap);
}

/*
 * Something the VM cannot run without failed. PID 1 must never exit (the kernel would panic with
 * a less useful message), so: say why on the console, give the serial line time to drain, power off.
 */
static void __attribute__((noreturn, format(printf, 1, 2))) fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (g_log_fd < 0) g_log_fd = g_stdio ? 2 : open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	vlog("FATAL: ", fmt, ap);
	va_end(ap);
	if (g_stdio) exit(1);
	sleep_ms(1000);
	sync();
	for (;;) {
		reboot(RB_POWER_OFF);
		sleep_ms(1000);
	}
}

/* Reads a small file into a NUL-terminated heap buffer; NULL if it cannot be read. */
static char *read_text(const char *path, size_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return NULL;
	char *text = malloc(max + 1);
	size_t n = 0;
	while (text && n < max) {
		ssize_t r = read(fd, text + n, max - n);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) break;
		n += (size_t)r;
	}
	close(fd);
	if (text) text[n] = '\0';
	return text;
}

/* ------------------------------------------------------------------------------------------ */
/* Byte queues */

static bool buf_reserve(struct buf *b, size_t n)
{
	if (b->head + b->len + n <= b->cap) return true;
	if (b->head > 0) {
		memmove(b->data, b->data + b->head, b->len);
		b->head = 0;
		if (b->len + n <= b->cap) return true;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + n) cap *= 2;
	uint8_t *d = realloc(b->data, cap);
	if (!d) return false;
	b->data = d;
	b->cap = cap;
	return true;
}

static uint8_t *buf_tail(struct buf *b) { return b->data + b->head + b->len; }

static void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof *b);
}

static void buf_consume(struct buf *b, size_t n)
{
	b->head += n;
	b->len -= n;
	if (b->len == 0) {
		b->head = 0;
		if (b->cap > SHRINK_AT) buf_free(b); /* idle memory matters: give big buffers back */
	}
}

static bool buf_append(struct buf *b, const void *p, size_t n)
{
	if (!buf_reserve(b, n)) return false;
	memcpy(buf_tail(b), p, n);
	b->len += n;
	return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Outgoing frames */

static void put_header(uint8_t *h, uint8_t type, uint32_t id, uint32_t len)
{
	h[0] = MAGIC0;
	h[1] = MAGIC1;
	h[2] = type;
	h[3] = 0;
	put_be32(h + 4, id);
	put_be32(h + 8, len);
}

/*
 * Queues a frame. While the host is disconnected frames are discarded: they answer requests of a
 * connection that is gone, and a reconnecting host reuses ids, so stale replies would be taken
 * for answers to its new requests.
 */
static void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len)
{
	uint8_t h[HDR_SIZE];
	if (!g_chan_up) return;
	if (!buf_reserve(&g_out, HDR_SIZE + len)) {
		warnx("out of memory queueing a %zu-byte frame; dropped", len);
		return;
	}
	put_header(h, type, id, (uint32_t)len);
	buf_append(&g_out, h, HDR_SIZE);
	if (len) buf_append(&g_out, payload, len);
}

static void __attribute__((format(printf, 3, 4))) send_error(uint32_t id, uint16_t code, const char *fmt, ...)
{
	uint8_t p[6 + 400];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf((char *)p + 6, sizeof p - 6, fmt, ap);
	va_end(ap);
	if (n < 0) n = 0;
	if ((size_t)n > sizeof p - 7) n = sizeof p - 7;
	put_be16(p, code);
	put_be32(p + 2, (uint32_t)n);
	debugx("-> ERROR id=%u code=%u: %s", id, code, (char *)p + 6);
	send_frame(T_ERROR, id, p, 6 + (size_t)n);
}

static void send_ok_u32(uint32_t id, uint32_t v)
{
	uint8_t p[4];
	put_be32(p, v);
	send_frame(T_OK, id, p, 4);
}

/* Writes as much of the outgoing queue as the channel takes now. False if the channel broke. */
static bool flush_out(void)
{
	while (g_out.len > 0) {
		ssize_t w = write(g_out_fd, g_out.data + g_out.head, g_out.len);
		if (w > 0) {
			buf_consume(&g_out, (size_t)w);
			continue;
		}
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return true;
		return false;
	}
	return true;
}

/* Shutdown paths: push the queue out, waiting for the channel, for at most timeout_ms. */
static void flush_out_blocking(int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	while (g_out.len > 0) {
		if (!flush_out()) return;
		int64_t left = deadline - mono_ms();
		if (g_out.len == 0 || left <= 0) return;
		struct pollfd p = { .fd = g_out_fd, .events = POLLOUT };
		if (poll(&p, 1, (int)left) < 0 && errno != EINTR) return;
		if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Exec table */

static struct exec *find_exec(uint32_t id)
{
	for (int i = 0; i < MAX_EXECS; i++)
		if (g_execs[i].used && g_execs[i].id == id) return &g_execs[i];
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

static void close_stdin(struct exec *e)
{
	close_fd(&e->in_fd);
	g_stdin_total -= e->inq.len;
	buf_free(&e->inq);
}

/* EXIT goes out once the process was reaped and both of its output pipes reached EOF. */
static void maybe_finish(struct exec *e)
{
	if (!e->used || !e->reaped || e->out_fd >= 0 || e->err_fd >= 0) return;
	uint8_t p[5];
	if (WIFSIGNALED(e->status)) {
		p[0] = 1;
		put_be32(p + 1, (uint32_t)WTERMSIG(e->status));
	} else {
		p[0] = 0;
		put_be32(p + 1, (uint32_t)WEXITSTATUS(e->status));
	}
	debugx("exec id=%u pid=%d: %s %d", e->id, e->pid, p[0] ? "killed by signal" : "exited", (int)get_be32(p + 1));
	send_frame(T_EXIT, e->id, p, sizeof p);
	close_stdin(e);
	memset(e, 0, sizeof *e);
	e->out_fd = e->err_fd = e->in_fd = -1;
	g_nexecs--;
}

/* Reaps every child that exited: ours get their status recorded, orphans are just buried. */
static void reap_children(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_EXECS; i++) {
			struct exec *e = &g_execs[i];
			if (e->used && !e->reaped && e->pid == pid) {
				e->reaped = true;
				e->status = st;
				maybe_finish(e);
				break;
			}
		}
	}
}

/* Reads one chunk of a process's stdout or stderr into a STDOUT/STDERR frame. */
static void read_output(struct exec *e, int *fd, uint8_t type)
{
	if (!buf_reserve(&g_out, HDR_SIZE + CHUNK)) return; /* out of memory: try again later */
	uint8_t *h = buf_tail(&g_out);
	ssize_t n = read(*fd, h + HDR_SIZE, CHUNK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
	if (n <= 0) { /* EOF (or an error, which ends the stream the same way) */
		close_fd(fd);
		maybe_finish(e);
		return;
	}
	if (!g_chan_up) return; /* nobody to send it to: drop (see send_frame) */
	put_header(h, type, e->id, (uint32_t)n);
	g_out.len += HDR_SIZE + (size_t)n;
}

/* Moves queued stdin into the process's pipe as far as it takes it. */
static void flush_stdin(struct exec *e)
{
	while (e->in_fd >= 0 && e->inq.len > 0) {
		ssize_t w = write(e->in_fd, e->inq.data + e->inq.head, e->inq.len);
		if (w > 0) {
			g_stdin_total -= (size_t)w;
			buf_consume(&e->inq, (size_t)w);
			continue;
		}
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return;
		close_stdin(e); /* EPIPE: the process closed its stdin; the rest has no reader */
		return;
	}
	if (e->in_fd >= 0 && e->in_close) close_stdin(e);
}

/* ------------------------------------------------------------------------------------------ */
/* EXEC */

struct exec_req {
	uint32_t flags, uid, gid;
	char *cwd;
	char **argv, **envp;
	char *strings; /* the NUL-terminated copies argv, envp and cwd point into */
};

struct reader {
	const uint8_t *p;
	size_t len, off;
	char *store; /* where the next string is copied to */
};

static bool rd_u32(struct reader *r, uint32_t *v)
{
	if (r->len - r->off < 4) return false;
	*v = get_be32(r->p + r->off);
	r->off += 4;
	return true;
}

/* Copies the next string out NUL-terminated; a string with a NUL inside cannot be an argument. */
static const char *rd_str(struct reader *r, char **out)
{
	uint32_t n;
	if (!rd_u32(r, &n)) return "truncated before a string length";
	if (n > r->len - r->off) return "string length runs past the payload end";
	if (memchr(r->p + r->off, 0, n)) return "string contains a NUL byte";
	memcpy(r->store, r->p + r->off, n);
	r->store[n] = '\0';
	*out = r->store;
	r->store += n + 1;
	r->off += n;
	return NULL;
}

static void free_req(struct exec_req *rq)
{
	free(rq->argv);
	free(rq->envp);
	free(rq->strings);
}

/* Validates an EXEC payload; on failure returns what was wrong (and *what says which field). */
static const char *parse_exec(const uint8_t *p, size_t len, struct exec_req *rq, char *what, size_t what_len)
{
	struct reader r = { .p = p, .len = len };
	uint32_t argc, envc;
	const char *err;

	memset(rq, 0, sizeof *rq);
	snprintf(what, what_len, "header");
	if (!rd_u32(&r, &rq->flags) || !rd_u32(&r, &rq->uid) || !rd_u32(&r, &rq->gid)) return "payload truncated";
	/* Every string costs at least its 4-byte length, so len/4+1 NULs are always enough. */
	rq->strings = malloc(len + len / 4 + 2);
	if (!rq->strings) return "out of memory";
	r.store = rq->strings;
	snprintf(what, what_len, "cwd");
	if ((err = rd_str(&r, &rq->cwd))) return err;
	snprintf(what, what_len, "argc");
	if (!rd_u32(&r, &argc)) return "payload truncated";
	if (argc < 1 || argc > MAX_ARGC) {
		snprintf(what, what_len, "argc %u", argc);
		return "out of range (1..1024)";
	}
	rq->argv = calloc(argc + 1, sizeof(char *));
	if (!rq->argv) return "out of memory";
	for (uint32_t i = 0; i < argc; i++) {
		snprintf(what, what_len, "argv[%u]", i);
		if ((err = rd_str(&r, &rq->argv[i]))) return err;
	}
	snprintf(what, what_len, "envc");
	if (!rd_u32(&r, &envc)) return "payload truncated";
	if (envc > MAX_ENVC) {
		snprintf(what, what_len, "envc %u", envc);
		return "out of range (0..4096)";
	}
	rq->envp = calloc(envc + 1, sizeof(char *));
	if (!rq->envp) return "out of memory";
	for (uint32_t i = 0; i < envc; i++) {
		snprintf(what, what_len, "env[%u]", i);
		if ((err = rd_str(&r, &rq->envp[i]))) return err;
	}
	snprintf(what, what_len, "payload");
	if (r.off != r.len) return "has trailing bytes";
	return NULL;
}

/* In the child: "cell: <message>" on the process's stderr, then exit like a shell would. */
static void __attribute__((noreturn, format(printf, 2, 3))) child_fail(int code, const char *fmt, ...)
{
	char msg[1024] = "cell: ";
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg + 6, sizeof msg - 7, fmt, ap);
	va_end(ap);
	if (n < 0) n = 0;
	n = 6 + ((size_t)n < sizeof msg - 7 ? n : (int)sizeof msg - 8);
	msg[n++] = '\n';
	write_all(2, msg, (size_t)n);
	_exit(code);
}

/* execve, running a file without a #! line through /bin/sh the way a shell (and execvp) does. */
static void try_exec(const char *path, char **argv, char **envp)
{
	execve(path, argv, envp);
	if (errno != ENOEXEC) return;
	size_t argc = 0;
	while (argv[argc]) argc++;
	char **sh = calloc(argc + 2, sizeof(char *));
	if (!sh) return;
	sh[0] = "/bin/sh";
	sh[1] = (char *)path;
	for (size_t i = 1; i < argc; i++) sh[i + 1] = argv[i];
	execve("/bin/sh", sh, envp);
	errno = ENOEXEC;
}

/* execvpe with the PATH of the process's own environment; reports and exits on failure. */
static void __attribute__((noreturn)) child_exec(char **argv, char **envp)
{
	const char *file = argv[0];
	int err = ENOENT;
	bool denied = false;

	if (strchr(file, '/')) {
		try_exec(file, argv, envp);
		err = errno;
	} else if (*file) {
		const char *path = DEFAULT_PATH;
		for (char **e = envp; *e; e++)
			if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
		size_t flen = strlen(file);
		for (const char *dir = path;; dir++) {
			const char *end = strchrnul(dir, ':');
			size_t dlen = (size_t)(end - dir);
			char full[4096];
			if (dlen + 1 + flen < sizeof full) {
				if (dlen == 0) { /* an empty PATH entry means the current directory */
					memcpy(full, file, flen + 1);
				} else {
					memcpy(full, dir, dlen);
					full[dlen] = '/';
					memcpy(full + dlen + 1, file, flen + 1);
				}
				try_exec(full, argv, envp);
				if (errno == EACCES) {
					denied = true;
				} else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
					   errno != ETIMEDOUT) {
					err = errno; /* found but not runnable (ENOEXEC, E2BIG, ...): stop here */
					break;
				}
			}
			if (!*end) break;
			dir = end;
		}
		if (denied && err == ENOENT) err = EACCES;
	}
	if (err == ENOENT || err == ENOTDIR) child_fail(127, "%s: not found", file);
	child_fail(126, "%s: %s", file, strerror(err));
}

/* The forked child: becomes the requested process or exits 126/127 with a message on stderr. */
static void __attribute__((noreturn)) run_child(struct exec_req *rq, int in_r, int out_w, int err_w)
{
	/* In test mode, processes must not outlive an agent that was killed. */
	if (g_stdio && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != g_self)) _exit(126);
	setsid();
	if (in_r < 0) in_r = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in_r < 0 || dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) _exit(126);
	/* Everything else is O_CLOEXEC already; this also covers fds the kernel handed to PID 1. */
	close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
	if (g_nofile_saved) setrlimit(RLIMIT_NOFILE, &g_nofile);

	sigset_t none;
	sigemptyset(&none);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);

	if (chdir(rq->cwd) != 0) child_fail(126, "cannot change directory to %s: %s", rq->cwd, strerror(errno));
	if (rq->uid != 0 || rq->gid != 0) {
		gid_t gid = rq->gid;
		if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(rq->uid) != 0)
			child_fail(126, "cannot switch to uid %u gid %u: %s", rq->uid, rq->gid, strerror(errno));
	}
	child_exec(rq->argv, rq->envp);
}

static void handle_exec(uint32_t id, const uint8_t *p, size_t len)
{
	struct exec_req rq;
	char what[64];
	const char *err;
	struct stat st;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, errp[2] = { -1, -1 };

	if (find_exec(id)) {
		send_error(id, E_DUPLICATE_ID, "an exec with id %u is still running", id);
		return;
	}
	if ((err = parse_exec(p, len, &rq, what, sizeof what))) {
		send_error(id, E_MALFORMED, "malformed EXEC: %s: %s", what, err);
		goto out;
	}
	if (g_nexecs >= MAX_EXECS) {
		send_error(id, E_LIMIT, "too many processes running (limit %d)", MAX_EXECS);
		goto out;
	}
	if (!*rq.cwd) rq.cwd = "/";
	/* Checked here rather than in the child, so a bad cwd is an ERROR and nothing runs. */
	if (stat(rq.cwd, &st) != 0) {
		send_error(id, E_BAD_CWD, "working directory %s: %s", rq.cwd, strerror(errno));
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		send_error(id, E_BAD_CWD, "working directory %s: not a directory", rq.cwd);
		goto out;
	}
	if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 || ((rq.flags & 1) && pipe2(in, O_CLOEXEC) != 0)) {
		send_error(id, E_SYSCALL, "pipe: %s", strerror(errno));
		goto close_pipes;
	}
	pid_t pid = fork();
	if (pid < 0) {
		send_error(id, E_SYSCALL, "fork: %s", strerror(errno));
		goto close_pipes;
	}
	if (pid == 0) run_child(&rq, in[0], out[1], errp[1]);

	struct exec *e = &g_execs[0];
	while (e->used) e++; /* g_nexecs < MAX_EXECS: there is a free slot */
	memset(e, 0, sizeof *e);
	e->used = true;
	e->id = id;
	e->pid = pid;
	e->out_fd = out[0];
	e->err_fd = errp[0];
	e->in_fd = in[1];
	set_nonblock(e->out_fd);
	set_nonblock(e->err_fd);
	if (e->in_fd >= 0) set_nonblock(e->in_fd);
	close(out[1]);
	close(errp[1]);
	if (in[0] >= 0) close(in[0]);
	g_nexecs++;
	debugx("exec id=%u pid=%d: %s (cwd %s)", id, pid, rq.argv[0], rq.cwd);
	/* Queued before the loop reads the new pipes, so STARTED precedes any output. */
	uint8_t started[4];
	put_be32(started, (uint32_t)pid);
	send_frame(T_STARTED, id, started, 4);
	free_req(&rq);
	return;

close_pipes:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0) close(in[i]);
		if (out[i] >= 0) close(out[i]);
		if (errp[i] >= 0) close(errp[i]);
	}
out:
	free_req(&rq);
}

/* ------------------------------------------------------------------------------------------ */
/* The other requests */

static void handle_stdin(uint32_t id, const uint8_t *p, size_t len)
{
	struct exec *e = find_exec(id);
	if (!e) {
		send_error(id, E_UNKNOWN_ID, "no running exec with id %u", id);
		return;
	}
	if (len == 0) {
		e->in_close = true;
		if (e->inq.len == 0) close_stdin(e);
		return;
	}
	/* No stdin pipe, stdin already closed, or the process closed it: nobody reads this. */
	if (e->in_fd < 0 || e->in_close || e->in_dropped) return;
	if (e->inq.len == 0) { /* fast path: straight into the pipe */
		ssize_t w = write(e->in_fd, p, len);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			close_stdin(e);
			return;
		}
		if (w > 0) {
			p += w;
			len -= (size_t)w;
		}
		if (len == 0) return;
	}
	if (g_stdin_total + len > STDIN_CAP || !buf_append(&e->inq, p, len)) {
		/* The process does not read its stdin and the host keeps sending: keep what it has, end
		 * its stdin after that (a prefix, never a stream with a hole), and say so. */
		e->in_dropped = true;
		e->in_close = true;
		send_error(id, E_LIMIT, "stdin of exec %u: more than %u MiB waiting for the process to read it; "
			   "further stdin is discarded", id, STDIN_CAP >> 20);
		return;
	}
	g_stdin_total += len;
}

static void handle_kill(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 4) {
		send_error(id, E_MALFORMED, "KILL payload must be 4 bytes, got %zu", len);
		return;
	}
	uint32_t sig = get_be32(p);
	if (sig >= NSIG) {
		send_error(id, E_MALFORMED, "signal %u out of range", sig);
		return;
	}
	struct exec *e = find_exec(id);
	if (!e) {
		send_error(id, E_UNKNOWN_ID, "no running exec with id %u", id);
		return;
	}
	/* The process group first (the exec is a session leader, so pgid == pid). Once the leader is
	 * reaped its pid cannot be reused while the group still has members, so this stays safe. */
	int rc = kill(-e->pid, (int)sig);
	if (rc != 0 && !e->reaped) rc = kill(e->pid, (int)sig);
	if (rc != 0 && errno != ESRCH) {
		send_error(id, E_SYSCALL, "kill: %s", strerror(errno));
		return;
	}
	send_frame(T_OK, id, NULL, 0);
}

/* Session id of a process from /proc/<pid>/stat, or -1. */
static pid_t proc_session(long pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return -1;
	buf[n] = '\0';
	char *s = strrchr(buf, ')'); /* comm may contain anything, but not after the last ')' */
	int ppid, pgrp, session;
	char state;
	if (!s || sscanf(s + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) != 4) return -1;
	return session;
}

static bool is_user_process(long pid)
{
	char path[64], c;
	snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return false;
	ssize_t n = read(fd, &c, 1);
	close(fd);
	return n == 1; /* kernel threads (and zombies) have an empty command line */
}

/*
 * Signals every process but the agent and PID 1. In --stdio mode the agent runs on someone's host,
 * so "every process" is narrowed to the sessions of its own running execs.
 */
static void handle_signal_all(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 4) {
		send_error(id, E_MALFORMED, "SIGNAL_ALL payload must be 4 bytes, got %zu", len);
		return;
	}
	uint32_t sig = get_be32(p);
	if (sig >= NSIG) {
		send_error(id, E_MALFORMED, "signal %u out of range", sig);
		return;
	}
	DIR *d = opendir("/proc");
	if (!d) {
		send_error(id, E_SYSCALL, "opendir /proc: %s", strerror(errno));
		return;
	}
	uint32_t count = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 1 || pid == g_self || !is_user_process(pid)) continue;
		if (g_stdio) {
			pid_t sid = proc_session(pid);
			bool ours = false;
			for (int i = 0; i < MAX_EXECS && !ours; i++) ours = g_execs[i].used && g_execs[i].pid == sid;
			if (!ours) continue;
		}
		if (kill((pid_t)pid, (int)sig) == 0) count++;
	}
	closedir(d);
	debugx("signal %u sent to %u processes", sig, count);
	send_ok_u32(id, count);
}

static void handle_set_time(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 12) {
		send_error(id, E_MALFORMED, "SET_TIME payload must be 12 bytes, got %zu", len);
		return;
	}
	int64_t sec = (int64_t)((uint64_t)get_be32(p) << 32 | get_be32(p + 4));
	uint32_t nsec = get_be32(p + 8);
	if (nsec >= 1000000000u || sec < 0) {
		send_error(id, E_MALFORMED, "SET_TIME: bad time %lld s %u ns", (long long)sec, nsec);
		return;
	}
	/* Test mode validates but never sets the clock of the machine it runs on. */
	struct timespec ts = { .tv_sec = (time_t)sec, .tv_nsec = nsec };
	if (!g_stdio && clock_settime(CLOCK_REALTIME, &ts) != 0) {
		send_error(id, E_SYSCALL, "clock_settime: %s", strerror(errno));
		return;
	}
	send_frame(T_OK, id, NULL, 0);
}

static void handle_add_entropy(uint32_t id, const uint8_t *p, size_t len)
{
	if (len == 0 || len > MAX_ENTROPY) {
		send_error(id, E_MALFORMED, "ADD_ENTROPY takes 1..%u bytes, got %zu", MAX_ENTROPY, len);
		return;
	}
	if (!g_stdio) { /* test mode: never credit the host's pool with bytes a test chose */
		struct rand_pool_info *info = malloc(sizeof *info + len);
		int fd = info ? open("/dev/urandom", O_WRONLY | O_CLOEXEC) : -1;
		int rc = -1, err = info ? errno : ENOMEM;
		if (fd >= 0) {
			info->entropy_count = (int)(8 * len);
			info->buf_size = (int)len;
			memcpy(info->buf, p, len);
			rc = ioctl(fd, RNDADDENTROPY, info);
			err = errno;
			/* Crediting the pool does not change what the CRNG generates until its next scheduled
			 * reseed, and a VM restored from a snapshot (every fork of it) carries the CRNG state of
			 * the snapshot: without a reseed now, forks would read the same /dev/urandom bytes.
			 * (This kernel has no vmgenid driver to do it.) Old kernels lack the ioctl: not fatal. */
			if (rc == 0 && ioctl(fd, RNDRESEEDCRNG) != 0) debugx("RNDRESEEDCRNG: %s", strerror(errno));
			close(fd);
		}
		free(info);
		if (rc != 0) {
			send_error(id, E_SYSCALL, "RNDADDENTROPY: %s", strerror(err));
			return;
		}
	}
	send_frame(T_OK, id, NULL, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Identity: hostname and machine id */

/*
 * Replaces path with text crash-safely: a temporary file in the same directory, fsync, rename over
 * path, fsync of the directory. An existing file keeps its mode and owner; a new one gets 0644.
 * Returns NULL, or the name of the system call that failed (errno says why).
 */
static const char *write_file_atomic(const char *path, const char *text)
{
	char tmp[256];
	const char *base = strrchr(path, '/'); /* paths here are absolute */
	snprintf(tmp, sizeof tmp, "%.*s/.%s.cell-XXXXXX", (int)(base - path), path, base + 1);
	mode_t mode = 0644;
	uid_t uid = 0;
	gid_t gid = 0;
	struct stat st;
	if (stat(path, &st) == 0) {
		mode = st.st_mode & 07777;
		uid = st.st_uid;
		gid = st.st_gid;
	}
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) return "mkstemp";
	const char *failed = NULL;
	size_t n = strlen(text), off = 0;
	while (!failed && off < n) {
		ssize_t w = write(fd, text + off, n - off);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) {
			if (w == 0) errno = EIO;
			failed = "write";
		} else {
			off += (size_t)w;
		}
	}
	if (!failed && fchown(fd, uid, gid) != 0) failed = "fchown";
	if (!failed && fchmod(fd, mode) != 0) failed = "fchmod";
	if (!failed && fsync(fd) != 0) failed = "fsync";
	int err = errno;
	if (close(fd) != 0 && !failed) {
		err = errno;
		failed = "close";
	}
	if (!failed && rename(tmp, path) != 0) {
		err = errno;
		failed = "rename";
	}
	if (failed) {
		unlink(tmp);
		errno = err;
		return failed;
	}
	char dir[256];
	snprintf(dir, sizeof dir, "%.*s", base == path ? 1 : (int)(base - path), path);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) { /* makes the rename itself durable; a failure here loses nothing yet */
		fsync(dfd);
		close(dfd);
	}
	return NULL;
}

/*
 * Rewrites one identity file in dir. A dir that is missing or not writable (a read-only root) is
 * skipped: not an error. Returns NULL or the failed system call, as write_file_atomic.
 */
static const char *write_identity_file(const char *dir, const char *path, const char *text)
{
	if (access(dir, W_OK) != 0) {
		debugx("%s: %s; %s left as it is", dir, strerror(errno), path);
		return NULL;
	}
	return write_file_atomic(path, text);
}

/* /etc/hostname, so that `cat /etc/hostname` agrees with `hostname`. */
static const char *write_hostname_file(const char *hostname)
{
	char text[MAX_HOSTNAME + 3];
	snprintf(text, sizeof text, "%s\n", hostname);
	return write_identity_file("/etc", "/etc/hostname", text);
}

/* One RFC 1123 label: 1..63 of [A-Za-z0-9-], not starting or ending with '-'. */
static const char *check_hostname(const char *h)
{
	size_t n = strlen(h);
	if (n == 0 || n > MAX_HOSTNAME) return "must be 1..63 characters";
	if (h[0] == '-' || h[n - 1] == '-') return "must not start or end with '-'";
	for (; *h; h++)
		if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || (*h >= '0' && *h <= '9') || *h == '-'))
			return "may contain only letters, digits and '-'";
	return NULL;
}

/* Empty (leave the machine id alone) or 32 lowercase hex digits. */
static const char *check_machine_id(const char *m)
{
	size_t n = strlen(m);
	if (n != 0 && n != MACHINE_ID_LEN) return "must be 32 lowercase hex digits, or empty";
	for (; *m; m++)
		if (!((*m >= '0' && *m <= '9') || (*m >= 'a' && *m <= 'f'))) return "must be 32 lowercase hex digits, or empty";
	return NULL;
}

/*
 * SET_IDENTITY: a fork of a snapshot becomes a machine of its own before any user command runs.
 * Machine-id files are rewritten only where the image has them (never created), and only when
 * they are regular files: /var/lib/dbus/machine-id is often a symlink to /etc/machine-id.
 */
static void handle_set_identity(uint32_t id, const uint8_t *p, size_t len)
{
	struct reader r = { .p = p, .len = len };
	char *hostname = NULL, *machine_id = NULL;
	const char *err, *what = "hostname";
	char *store = malloc(len + 2); /* each string costs at least its 4-byte length */
	if (!store) {
		send_error(id, E_SYSCALL, "malloc: %s", strerror(errno));
		return;
	}
	r.store = store;
	if (!(err = rd_str(&r, &hostname))) {
		what = "machine_id";
		err = rd_str(&r, &machine_id);
	}
	if (!err && r.off != r.len) {
		what = "payload";
		err = "has trailing bytes";
	}
	if (!err && (err = check_hostname(hostname))) what = "hostname";
	if (!err && (err = check_machine_id(machine_id))) what = "machine_id";
	if (err) {
		send_error(id, E_MALFORMED, "malformed SET_IDENTITY: %s: %s", what, err);
		goto out;
	}
	if (g_stdio) goto ok; /* test mode validates but never renames the machine it runs on */

	if (sethostname(hostname, strlen(hostname)) != 0) {
		send_error(id, E_SYSCALL, "sethostname: %s", strerror(errno));
		goto out;
	}
	const char *failed = write_hostname_file(hostname);
	if (failed) {
		send_error(id, E_SYSCALL, "%s /etc/hostname: %s", failed, strerror(errno));
		goto out;
	}
	if (*machine_id) {
		static const char *const files[][2] = {
			{ "/etc", "/etc/machine-id" },
			{ "/var/lib/dbus", "/var/lib/dbus/machine-id" },
		};
		char text[MACHINE_ID_LEN + 2];
		snprintf(text, sizeof text, "%s\n", machine_id);
		for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
			struct stat st;
			if (lstat(files[i][1], &st) != 0 || !S_ISREG(st.st_mode)) {
				debugx("%s: not a regular file; left as it is", files[i][1]);
				continue;
			}
			if ((failed = write_identity_file(files[i][0], files[i][1], text))) {
				send_error(id, E_SYSCALL, "%s %s: %s", failed, files[i][1], strerror(errno));
				goto out;
			}
		}
	}
	debugx("identity: hostname %s%s%s", hostname, *machine_id ? ", machine id " : "", machine_id);
ok:
	send_frame(T_OK, id, NULL, 0);
out:
	free(store);
}

/* ------------------------------------------------------------------------------------------ */
/* Files: PUT_FILE, FILE_DATA, FILE_END, MKDIR, SYMLINK, READ_FILE, LIST_DIR, STAT, CANCEL */

/*
 * A transfer is a request that spans several frames under one id: an upload (PUT_FILE, its
 * FILE_DATA chunks, FILE_END) or a download (READ_FILE, LIST_DIR: DATA frames, then OK). Uploads
 * are written as their frames arrive; downloads are read by the event loop one chunk at a time,
 * only while the outgoing queue is below OUT_HIGH, so a big file never sits in memory.
 */
enum { X_FREE, X_PUT, X_PUT_FAILED, X_READ, X_LIST };

struct xfer {
	int kind;
	uint32_t id;
	int fd;          /* X_PUT: the temporary file; X_READ: the file */
	DIR *dir;        /* X_LIST */
	uint64_t bytes;  /* X_PUT: received; X_READ: sent; X_LIST: entries sent */
	uint64_t max;    /* X_READ: size limit, 0 = none */
	uint32_t flags, mode, uid, gid;
	struct timespec mtime;
	char *path;      /* the target (X_PUT), the file (X_READ) or the directory (X_LIST) */
	char *tmp;       /* X_PUT: the temporary file renamed over path at FILE_END */
};

static struct xfer g_xfers[MAX_XFERS];
static int g_npump; /* X_READ and X_LIST transfers: the event loop feeds them */

static struct xfer *find_xfer(uint32_t id)
{
	for (int i = 0; i < MAX_XFERS; i++)
		if (g_xfers[i].kind != X_FREE && g_xfers[i].id == id) return &g_xfers[i];
	return NULL;
}

static struct xfer *new_xfer(uint32_t id, int kind)
{
	for (int i = 0; i < MAX_XFERS; i++) {
		struct xfer *x = &g_xfers[i];
		if (x->kind != X_FREE) continue;
		memset(x, 0, sizeof *x);
		x->kind = kind;
		x->id = id;
		x->fd = -1;
		if (kind == X_READ || kind == X_LIST) g_npump++;
		return x;
	}
	return NULL;
}

/* An upload's temporary file is removed; the slot stays taken until FILE_END or CANCEL when
 * `keep` (X_PUT_FAILED: its remaining FILE_DATA frames are swallowed, it was answered already). */
static void end_xfer(struct xfer *x, bool keep)
{
	close_fd(&x->fd);
	if (x->dir) closedir(x->dir);
	x->dir = NULL;
	if (x->tmp) unlink(x->tmp);
	free(x->tmp);
	free(x->path);
	x->tmp = x->path = NULL;
	if (x->kind == X_READ || x->kind == X_LIST) g_npump--;
	x->kind = keep ? X_PUT_FAILED : X_FREE;
}

/* The host went away or the agent ends: no transfer can be finished. */
static void abort_all_xfers(void)
{
	for (int i = 0; i < MAX_XFERS; i++)
		if (g_xfers[i].kind != X_FREE) end_xfer(&g_xfers[i], false);
}

/* ENOENT is "not found"; a path through (or to) the wrong kind of entry is "wrong type". */
static uint16_t errno_code(int err)
{
	if (err == ENOENT) return E_NOT_FOUND;
	if (err == ENOTDIR || err == EISDIR) return E_WRONG_TYPE;
	return E_SYSCALL;
}

static bool rd_u64(struct reader *r, uint64_t *v)
{
	uint32_t hi, lo;
	if (r->len - r->off < 8) return false;
	rd_u32(r, &hi);
	rd_u32(r, &lo);
	*v = (uint64_t)hi << 32 | lo;
	return true;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

/*
 * A path from the host: absolute and shorter than PATH_MAX (rd_str refused NUL bytes already).
 * Trailing slashes are dropped. With need_name, the last component must name an entry (not "/",
 * ".", ".."), because the entry is created or replaced there.
 */
static const char *check_path(char *path, bool need_name)
{
	size_t n = strlen(path);
	if (n == 0) return "is empty";
	if (path[0] != '/') return "is not absolute";
	if (n >= PATH_MAX) return "is longer than PATH_MAX";
	while (n > 1 && path[n - 1] == '/') path[--n] = '\0';
	const char *base = strrchr(path, '/') + 1;
	if (need_name && (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)) return "does not name an entry";
	return NULL;
}

/*
 * Creates the missing directories above path, 0755 and owned by the agent (root in a VM).
 * Returns NULL, or the failed call with the directory in `where` (errno says why). A component
 * that exists but is not a directory is left for the caller's own call to report.
 */
static const char *make_parents(const char *path, char *where, size_t where_len)
{
	char dir[PATH_MAX];
	struct stat st;
	snprintf(dir, sizeof dir, "%s", path);
	char *last = strrchr(dir, '/');
	if (!last || last == dir) return NULL;
	*last = '\0';
	if (stat(dir, &st) == 0) return NULL; /* the usual case: nothing to create */
	for (char *s = dir + 1;; s++) {
		if (*s != '/' && *s != '\0') continue;
		char c = *s;
		*s = '\0';
		if (mkdir(dir, 0755) == 0) {
			chmod(dir, 0755); /* whatever the umask */
		} else if (errno != EEXIST) {
			snprintf(where, where_len, "%s", dir);
			return "mkdir";
		}
		*s = c;
		if (!c) return NULL;
	}
}

/* dir/.base.cell-<suffix> beside path (the base shortened so the name fits NAME_MAX). */
static bool temp_beside(const char *path, const char *suffix, char *out, size_t out_len)
{
	const char *base = strrchr(path, '/') + 1;
	int n = snprintf(out, out_len, "%.*s.%.200s.cell-%s", (int)(base - path), path, base, suffix);
	return n > 0 && (size_t)n < out_len;
}

/* Parses the one or two strings (and fixed fields before them) of a file request. */
struct file_req {
	struct reader r;
	char *store;
	char *path, *target;
};

static const char *parse_strings(struct file_req *fr, bool two)
{
	fr->store = malloc(fr->r.len + 4);
	if (!fr->store) return "out of memory";
	fr->r.store = fr->store;
	const char *err = rd_str(&fr->r, &fr->path);
	if (!err && two) err = rd_str(&fr->r, &fr->target);
	if (!err && fr->r.off != fr->r.len) err = "has trailing bytes";
	return err;
}

static void handle_put_file(uint32_t id, const uint8_t *p, size_t len)
{
	struct file_req fr = { .r = { .p = p, .len = len } };
	uint32_t sec_hi, sec_lo, nsec;
	const char *err, *failed;
	char where[PATH_MAX], tmp[PATH_MAX + 256];

	if (find_xfer(id) || find_exec(id)) {
		send_error(id, E_DUPLICATE_ID, "id %u is in use by a running request", id);
		return;
	}
	/* A slot even for a request that fails: the FILE_DATA frames already on their way are then
	 * swallowed quietly instead of each being answered with an ERROR. */
	struct xfer *x = new_xfer(id, X_PUT_FAILED);
	if (!x) {
		send_error(id, E_LIMIT, "too many file transfers in progress (limit %d)", MAX_XFERS);
		return;
	}
	if (!rd_u32(&fr.r, &x->flags) || !rd_u32(&fr.r, &x->mode) || !rd_u32(&fr.r, &x->uid) || !rd_u32(&fr.r, &x->gid) ||
	    !rd_u32(&fr.r, &sec_hi) || !rd_u32(&fr.r, &sec_lo) || !rd_u32(&fr.r, &nsec)) {
		send_error(id, E_MALFORMED, "malformed PUT_FILE: payload truncated");
		goto out;
	}
	if ((err = parse_strings(&fr, false))) {
		send_error(id, E_MALFORMED, "malformed PUT_FILE: path: %s", err);
		goto out;
	}
	if (x->flags & ~1u || x->mode > 07777 || nsec >= 1000000000u) {
		send_error(id, E_MALFORMED, "malformed PUT_FILE: flags 0x%x, mode 0%o or mtime nanoseconds %u out of range",
			   x->flags, x->mode, nsec);
		goto out;
	}
	if ((err = check_path(fr.path, true))) {
		send_error(id, E_BAD_PATH, "PUT_FILE: path %s %s", fr.path, err);
		goto out;
	}
	x->mtime.tv_sec = (time_t)(int64_t)((uint64_t)sec_hi << 32 | sec_lo);
	x->mtime.tv_nsec = nsec;
	if ((failed = make_parents(fr.path, where, sizeof where))) {
		send_error(id, errno_code(errno), "%s %s: %s", failed, where, strerror(errno));
		goto out;
	}
	if (!temp_beside(fr.path, "XXXXXX", tmp, sizeof tmp)) {
		send_error(id, E_BAD_PATH, "PUT_FILE: path %s is too long", fr.path);
		goto out;
	}
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		send_error(id, errno_code(errno), "mkstemp %s: %s", tmp, strerror(errno));
		goto out;
	}
	x->fd = fd;
	x->path = strdup(fr.path);
	x->tmp = strdup(tmp);
	if (!x->path || !x->tmp) {
		send_error(id, E_SYSCALL, "strdup: %s", strerror(ENOMEM));
		end_xfer(x, true);
		goto out;
	}
	x->kind = X_PUT;
	debugx("put id=%u %s (mode 0%o, %u:%u)", id, x->path, x->mode, x->uid, x->gid);
out:
	free(fr.store);
}

static void handle_file_data(uint32_t id, const uint8_t *p, size_t len)
{
	struct xfer *x = find_xfer(id);
	if (!x || (x->kind != X_PUT && x->kind != X_PUT_FAILED)) {
		send_error(id, E_UNKNOWN_ID, "no file upload with id %u", id);
		return;
	}
	if (x->kind == X_PUT_FAILED) return; /* answered with an ERROR already */
	if (len > CHUNK) {
		send_error(id, E_MALFORMED, "FILE_DATA of %zu bytes is over 64 KiB", len);
		end_xfer(x, true);
		return;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(x->fd, p + off, len - off);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) {
			if (w == 0) errno = EIO;
			send_error(id, errno_code(errno), "write %s: %s", x->tmp, strerror(errno));
			end_xfer(x, true);
			return;
		}
		off += (size_t)w;
	}
	x->bytes += len;
}

/* Owner, mode, time, fsync, rename: the new file appears whole or not at all. */
static void handle_file_end(uint32_t id, const uint8_t *p, size_t len)
{
	struct xfer *x = find_xfer(id);
	const char *failed = NULL;
	if (!x || (x->kind != X_PUT && x->kind != X_PUT_FAILED)) {
		send_error(id, E_UNKNOWN_ID, "no file upload with id %u", id);
		return;
	}
	if (x->kind == X_PUT_FAILED) {
		end_xfer(x, false);
		return;
	}
	uint64_t size = len == 8 ? (uint64_t)get_be32(p) << 32 | get_be32(p + 4) : 0;
	if (len != 8) {
		send_error(id, E_MALFORMED, "FILE_END payload must be 8 bytes, got %zu", len);
	} else if (size != x->bytes) {
		send_error(id, E_MALFORMED, "FILE_END for %s: %llu bytes declared, %llu received", x->path,
			   (unsigned long long)size, (unsigned long long)x->bytes);
	} else {
		struct timespec times[2] = { x->mtime, x->mtime };
		int fd = x->fd, err;
		x->fd = -1;
		/* fchmod after fchown: chown clears the set-user-ID and set-group-ID bits. */
		if (fchown(fd, x->uid, x->gid) != 0) failed = "fchown";
		else if (fchmod(fd, x->mode) != 0) failed = "fchmod";
		else if ((x->flags & 1) && futimens(fd, times) != 0) failed = "futimens";
		else if (fsync(fd) != 0) failed = "fsync";
		err = errno;
		if (close(fd) != 0 && !failed) {
			failed = "close";
			err = errno;
		}
		if (!failed && rename(x->tmp, x->path) != 0) {
			failed = "rename";
			err = errno;
		}
		if (failed) {
			send_error(id, errno_code(err), "%s %s: %s", failed, strcmp(failed, "rename") ? x->tmp : x->path, strerror(err));
		} else {
			free(x->tmp); /* renamed: nothing to clean up */
			x->tmp = NULL;
			debugx("put id=%u %s: %llu bytes", id, x->path, (unsigned long long)x->bytes);
			send_frame(T_OK, id, NULL, 0);
		}
	}
	end_xfer(x, false);
}

static void handle_mkdir(uint32_t id, const uint8_t *p, size_t len)
{
	struct file_req fr = { .r = { .p = p, .len = len } };
	uint32_t mode, uid, gid;
	const char *err, *failed;
	char where[PATH_MAX];
	struct stat st;

	if (!rd_u32(&fr.r, &mode) || !rd_u32(&fr.r, &uid) || !rd_u32(&fr.r, &gid)) {
		send_error(id, E_MALFORMED, "malformed MKDIR: payload truncated");
		return;
	}
	if (!(err = parse_strings(&fr, false)) && mode > 07777) err = "mode out of range";
	if (err) {
		send_error(id, E_MALFORMED, "malformed MKDIR: %s", err);
		goto out;
	}
	if ((err = check_path(fr.path, false))) {
		send_error(id, E_BAD_PATH, "MKDIR: path %s %s", fr.path, err);
		goto out;
	}
	if ((failed = make_parents(fr.path, where, sizeof where))) {
		send_error(id, errno_code(errno), "%s %s: %s", failed, where, strerror(errno));
		goto out;
	}
	/* Private until it has its owner and mode. An existing directory only gets those. */
	if (mkdir(fr.path, 0700) != 0) {
		if (errno != EEXIST) {
			send_error(id, errno_code(errno), "mkdir %s: %s", fr.path, strerror(errno));
			goto out;
		}
		if (stat(fr.path, &st) != 0 || !S_ISDIR(st.st_mode)) {
			send_error(id, E_WRONG_TYPE, "mkdir %s: exists and is not a directory", fr.path);
			goto out;
		}
	}
	if (chown(fr.path, uid, gid) != 0) failed = "chown";
	else if (chmod(fr.path, mode) != 0) failed = "chmod";
	if (failed) send_error(id, errno_code(errno), "%s %s: %s", failed, fr.path, strerror(errno));
	else send_frame(T_OK, id, NULL, 0);
out:
	free(fr.store);
}

/* A symlink made beside the target and renamed over it: an existing entry is replaced atomically. */
static void handle_symlink(uint32_t id, const uint8_t *p, size_t len)
{
	struct file_req fr = { .r = { .p = p, .len = len } };
	uint32_t uid, gid;
	const char *err, *failed;
	char where[PATH_MAX], tmp[PATH_MAX + 256];
	static unsigned counter;

	if (!rd_u32(&fr.r, &uid) || !rd_u32(&fr.r, &gid)) {
		send_error(id, E_MALFORMED, "malformed SYMLINK: payload truncated");
		return;
	}
	if ((err = parse_strings(&fr, true))) {
		send_error(id, E_MALFORMED, "malformed SYMLINK: %s", err);
		goto out;
	}
	if (!*fr.target || strlen(fr.target) >= PATH_MAX) {
		send_error(id, E_MALFORMED, "malformed SYMLINK: the target must be 1..%d bytes", PATH_MAX - 1);
		goto out;
	}
	if ((err = check_path(fr.path, true))) {
		send_error(id, E_BAD_PATH, "SYMLINK: path %s %s", fr.path, err);
		goto out;
	}
	if ((failed = make_parents(fr.path, where, sizeof where))) {
		send_error(id, errno_code(errno), "%s %s: %s", failed, where, strerror(errno));
		goto out;
	}
	for (int tries = 0;; tries++) {
		char suffix[32];
		snprintf(suffix, sizeof suffix, "%d-%u", (int)g_self, ++counter);
		if (!temp_beside(fr.path, suffix, tmp, sizeof tmp)) {
			send_error(id, E_BAD_PATH, "SYMLINK: path %s is too long", fr.path);
			goto out;
		}
		if (symlink(fr.target, tmp) == 0) break;
		if (errno != EEXIST || tries > 100) { /* EEXIST: left over by an agent that died */
			send_error(id, errno_code(errno), "symlink %s: %s", tmp, strerror(errno));
			goto out;
		}
	}
	if (lchown(tmp, uid, gid) != 0) failed = "lchown";
	else if (rename(tmp, fr.path) != 0) failed = "rename";
	if (failed) {
		send_error(id, errno_code(errno), "%s %s: %s", failed, !strcmp(failed, "rename") ? fr.path : tmp, strerror(errno));
		unlink(tmp);
	} else {
		send_frame(T_OK, id, NULL, 0);
	}
out:
	free(fr.store);
}

static uint8_t kind_of(mode_t m)
{
	if (S_ISREG(m)) return 1;
	if (S_ISDIR(m)) return 2;
	if (S_ISLNK(m)) return 3;
	if (S_ISFIFO(m)) return 4;
	if (S_ISSOCK(m)) return 5;
	if (S_ISCHR(m)) return 6;
	if (S_ISBLK(m)) return 7;
	return 0;
}

static const char *kind_name(mode_t m)
{
	static const char *const names[] = { "an unknown kind of file", "a regular file", "a directory", "a symbolic link",
					     "a FIFO", "a socket", "a character device", "a block device" };
	return names[kind_of(m)];
}

#define STAT_RECORD_MAX (37 + PATH_MAX)
#define LIST_ENTRY_MAX (4 + NAME_MAX + STAT_RECORD_MAX)

/* The stat record of STAT replies and LIST_DIR entries (docs/protocol.md); returns its length. */
static size_t put_stat_record(uint8_t *p, const struct stat *st, const char *link, size_t link_len)
{
	p[0] = kind_of(st->st_mode);
	put_be32(p + 1, st->st_mode & 07777);
	put_be32(p + 5, st->st_uid);
	put_be32(p + 9, st->st_gid);
	put_be64(p + 13, (uint64_t)st->st_size);
	put_be64(p + 21, (uint64_t)(int64_t)st->st_mtim.tv_sec);
	put_be32(p + 29, (uint32_t)st->st_mtim.tv_nsec);
	put_be32(p + 33, (uint32_t)link_len);
	memcpy(p + 37, link, link_len);
	return 37 + link_len;
}

/* readlinkat into buf (not terminated); 0 bytes when it cannot be read. */
static size_t read_link(int dirfd, const char *path, char *buf, size_t cap)
{
	ssize_t n = readlinkat(dirfd, path, buf, cap);
	return n < 0 ? 0 : (size_t)n;
}

static void handle_stat(uint32_t id, const uint8_t *p, size_t len)
{
	struct file_req fr = { .r = { .p = p, .len = len } };
	uint32_t flags;
	const char *err;
	struct stat st;
	static uint8_t rec[STAT_RECORD_MAX];
	char link[PATH_MAX];
	size_t link_len = 0;

	if (!rd_u32(&fr.r, &flags)) {
		send_error(id, E_MALFORMED, "malformed STAT: payload truncated");
		return;
	}
	if (!(err = parse_strings(&fr, false)) && (flags & ~1u) != 0) err = "unknown flags";
	if (err) {
		send_error(id, E_MALFORMED, "malformed STAT: %s", err);
		goto out;
	}
	if ((err = check_path(fr.path, false))) {
		send_error(id, E_BAD_PATH, "STAT: path %s %s", fr.path, err);
		goto out;
	}
	if (((flags & 1) ? stat(fr.path, &st) : lstat(fr.path, &st)) != 0) {
		send_error(id, errno_code(errno), "%s %s: %s", (flags & 1) ? "stat" : "lstat", fr.path, strerror(errno));
		goto out;
	}
	if (S_ISLNK(st.st_mode)) link_len = read_link(AT_FDCWD, fr.path, link, sizeof link);
	send_frame(T_OK, id, rec, put_stat_record(rec, &st, link, link_len));
out:
	free(fr.store);
}

/* READ_FILE and LIST_DIR: checks and opens; the event loop then sends the DATA (pump_xfers). */
static void handle_download(uint8_t type, uint32_t id, const uint8_t *p, size_t len)
{
	struct file_req fr = { .r = { .p = p, .len = len } };
	const char *name = type == T_READ_FILE ? "READ_FILE" : "LIST_DIR", *err;
	uint64_t max = 0;
	struct stat st;

	if (type == T_READ_FILE && !rd_u64(&fr.r, &max)) {
		send_error(id, E_MALFORMED, "malformed READ_FILE: payload truncated");
		return;
	}
	if ((err = parse_strings(&fr, false))) {
		send_error(id, E_MALFORMED, "malformed %s: %s", name, err);
		goto out;
	}
	if ((err = check_path(fr.path, false))) {
		send_error(id, E_BAD_PATH, "%s: path %s %s", name, fr.path, err);
		goto out;
	}
	if (find_xfer(id) || find_exec(id)) {
		send_error(id, E_DUPLICATE_ID, "id %u is in use by a running request", id);
		goto out;
	}
	/* stat before open: opening a FIFO would block, opening a device may have side effects. */
	if (stat(fr.path, &st) != 0) {
		send_error(id, errno_code(errno), "stat %s: %s", fr.path, strerror(errno));
		goto out;
	}
	bool want_dir = type == T_LIST_DIR;
	if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
		send_error(id, E_WRONG_TYPE, "%s is %s, not %s", fr.path, kind_name(st.st_mode), want_dir ? "a directory" : "a regular file");
		goto out;
	}
	if (max && (uint64_t)st.st_size > max) {
		send_error(id, E_LIMIT, "%s is %llu bytes, over the limit of %llu", fr.path, (unsigned long long)st.st_size,
			   (unsigned long long)max);
		goto out;
	}
	struct xfer *x = new_xfer(id, want_dir ? X_LIST : X_READ);
	if (!x) {
		send_error(id, E_LIMIT, "too many file transfers in progress (limit %d)", MAX_XFERS);
		goto out;
	}
	x->max = max;
	x->path = strdup(fr.path);
	if (want_dir) {
		int fd = open(fr.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		x->dir = fd >= 0 ? fdopendir(fd) : NULL;
		if (!x->dir && fd >= 0) close(fd);
	} else {
		x->fd = open(fr.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
		if (x->fd >= 0 && (fstat(x->fd, &st) != 0 || !S_ISREG(st.st_mode))) { /* replaced meanwhile */
			close_fd(&x->fd);
			errno = EISDIR;
		}
	}
	if (!x->path || (want_dir ? !x->dir : x->fd < 0)) {
		send_error(id, errno_code(errno), "open %s: %s", fr.path, strerror(errno));
		end_xfer(x, false);
	}
out:
	free(fr.store);
}

/* One DATA chunk of a READ_FILE; OK with the size at the end. */
static void pump_read(struct xfer *x)
{
	if (!buf_reserve(&g_out, HDR_SIZE + CHUNK)) return; /* out of memory: try again later */
	uint8_t *h = buf_tail(&g_out);
	ssize_t n = read(x->fd, h + HDR_SIZE, CHUNK);
	if (n < 0 && errno == EINTR) return;
	if (n < 0) {
		send_error(x->id, errno_code(errno), "read %s: %s", x->path, strerror(errno));
	} else if (n == 0) {
		uint8_t size[8];
		put_be64(size, x->bytes);
		send_frame(T_OK, x->id, size, sizeof size);
	} else if (x->max && x->bytes + (uint64_t)n > x->max) {
		send_error(x->id, E_LIMIT, "%s grew over the limit of %llu bytes while it was read", x->path, (unsigned long long)x->max);
	} else {
		put_header(h, T_DATA, x->id, (uint32_t)n);
		g_out.len += HDR_SIZE + (size_t)n;
		x->bytes += (uint64_t)n;
		return;
	}
	end_xfer(x, false);
}

/* One DATA frame of LIST_DIR entries (at most 64 KiB); OK with the count at the end. */
static void pump_list(struct xfer *x)
{
	static uint8_t frame[CHUNK];
	static char link[PATH_MAX];
	size_t n = 0;
	bool more = false;
	int err = 0;
	struct stat st;

	for (;;) {
		if (n > CHUNK - LIST_ENTRY_MAX) { /* the next entry might not fit */
			more = true;
			break;
		}
		errno = 0;
		struct dirent *de = readdir(x->dir);
		if (!de) {
			err = errno;
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
		if (fstatat(dirfd(x->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* removed meanwhile */
		size_t name_len = strnlen(de->d_name, NAME_MAX), link_len = 0;
		if (S_ISLNK(st.st_mode)) link_len = read_link(dirfd(x->dir), de->d_name, link, sizeof link);
		put_be32(frame + n, (uint32_t)name_len);
		memcpy(frame + n + 4, de->d_name, name_len);
		n += 4 + name_len;
		n += put_stat_record(frame + n, &st, link, link_len);
		x->bytes++;
	}
	if (n > 0) send_frame(T_DATA, x->id, frame, n);
	if (more) return;
	if (err) send_error(x->id, errno_code(err), "readdir %s: %s", x->path, strerror(err));
	else send_ok_u32(x->id, (uint32_t)x->bytes);
	end_xfer(x, false);
}

/* Called by the event loop: one chunk per download, while the outgoing queue has room. */
static void pump_xfers(void)
{
	for (int i = 0; i < MAX_XFERS && g_out.len < OUT_HIGH; i++) {
		struct xfer *x = &g_xfers[i];
		if (x->kind == X_READ) pump_read(x);
		else if (x->kind == X_LIST) pump_list(x);
	}
}

static void handle_cancel(uint32_t id, size_t len)
{
	struct xfer *x = find_xfer(id);
	if (len != 0) {
		send_error(id, E_MALFORMED, "CANCEL takes no payload, got %zu bytes", len);
		return;
	}
	if (!x) {
		send_error(id, E_UNKNOWN_ID, "no file transfer with id %u", id);
		return;
	}
	end_xfer(x, false);
	send_frame(T_OK, id, NULL, 0);
}

/* Waits until no children are left (everything is reparented to PID 1), at most timeout_ms. */
static void wait_all_children(int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		pid_t pid;
		while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {
		}
		if (pid < 0 || mono_ms() >= deadline) return; /* ECHILD: none left */
		sleep_ms(5);
	}
}

/* --stdio mode end: the processes go with the agent. */
static void __attribute__((noreturn)) stdio_exit(int code)
{
	abort_all_xfers(); /* no half-written temporary file is left behind */
	for (int i = 0; i < MAX_EXECS; i++)
		if (g_execs[i].used) {
			kill(-g_execs[i].pid, SIGKILL);
			if (!g_execs[i].reaped) kill(g_execs[i].pid, SIGKILL);
		}
	flush_out_blocking(1000);
	wait_all_children(1000); /* bury them: whoever inherits them may be slow to */
	for (int fd = 0; fd < 2; fd++)
		if (g_stdio_flags[fd] >= 0) fcntl(fd, F_SETFL, g_stdio_flags[fd]);
	exit(code);
}

/* /proc/self/mounts escapes blanks in paths as \040 and friends. */
static void unescape_mount_path(char *s)
{
	char *w = s;
	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

/* Unmounts what can be unmounted, innermost first, and leaves the root read-only and clean. */
static void unmount_all(void)
{
	char *text = read_text("/proc/self/mounts", 256 * 1024);
	char *points[512];
	int n = 0;
	for (char *line = text ? strtok(text, "\n") : NULL; line && n < 512; line = strtok(NULL, "\n")) {
		char *mp = strchr(line, ' ');
		if (!mp) continue;
		mp++;
		char *end = strchr(mp, ' ');
		if (end) *end = '\0';
		unescape_mount_path(mp);
		if (strcmp(mp, "/") != 0) points[n++] = mp;
	}
	while (n-- > 0)
		if (umount2(points[n], 0) != 0) debugx("umount %s: %s", points[n], strerror(errno));
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) != 0) warnx("remount / read-only: %s", strerror(errno));
	free(text);
}

static void handle_shutdown(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 1 || p[0] > 1) {
		send_error(id, E_MALFORMED, "SHUTDOWN takes one byte, 0 (power off) or 1 (reboot)");
		return;
	}
	send_frame(T_OK, id, NULL, 0);
	if (g_stdio) stdio_exit(0);
	flush_out_blocking(1000);
	debugx("shutdown: stopping processes");
	kill(-1, SIGTERM); /* from PID 1: every process but us */
	wait_all_children(1000);
	kill(-1, SIGKILL);
	wait_all_children(500);
	sync();
	unmount_all();
	sync();
	debugx("shutdown: %s", p[0] ? "reboot" : "power off");
	reboot(p[0] ? RB_AUTOBOOT : RB_POWER_OFF);
	fatal("reboot: %s", strerror(errno));
}

/* ------------------------------------------------------------------------------------------ */
/* Incoming frames */

static void handle_frame(uint8_t type, uint32_t id, const uint8_t *p, size_t len)
{
	switch (type) {
	case T_PING:
		if (len > MAX_PING) send_error(id, E_MALFORMED, "PING payload of %zu bytes is over 64 KiB", len);
		else send_frame(T_PONG, id, p, len);
		break;
	case T_EXEC: handle_exec(id, p, len); break;
	case T_STDIN: handle_stdin(id, p, len); break;
	case T_KILL: handle_kill(id, p, len); break;
	case T_SET_TIME: handle_set_time(id, p, len); break;
	case T_ADD_ENTROPY: handle_add_entropy(id, p, len); break;
	case T_SHUTDOWN: handle_shutdown(id, p, len); break;
	case T_SIGNAL_ALL: handle_signal_all(id, p, len); break;
	case T_SET_IDENTITY: handle_set_identity(id, p, len); break;
	case T_PUT_FILE: handle_put_file(id, p, len); break;
	case T_FILE_DATA: handle_file_data(id, p, len); break;
	case T_FILE_END: handle_file_end(id, p, len); break;
	case T_MKDIR: handle_mkdir(id, p, len); break;
	case T_SYMLINK: handle_symlink(id, p, len); break;
	case T_READ_FILE:
	case T_LIST_DIR: handle_download(type, id, p, len); break;
	case T_STAT: handle_stat(id, p, len); break;
	case T_CANCEL: handle_cancel(id, len); break;
	case T_SYNC:
		/* Before a snapshot: the disk layer is frozen as it is, so what the page cache holds must be
		 * on it for a VM that later boots cold from that layer. */
		if (len != 0) send_error(id, E_MALFORMED, "SYNC takes no payload, got %zu bytes", len);
		else {
			sync();
			send_frame(T_OK, id, NULL, 0);
		}
		break;
	default: send_error(id, E_UNKNOWN_TYPE, "unknown frame type 0x%02x", type); break;
	}
}

/* Decodes and handles every complete frame in g_in, resynchronising on the magic. */
static void dispatch_frames(void)
{
	for (;;) {
		uint8_t *p = g_in.data + g_in.head;
		size_t n = g_in.len;
		size_t skip = 0;
		while (skip < n && !(p[skip] == MAGIC0 && (skip + 1 == n || p[skip + 1] == MAGIC1))) {
			uint8_t *next = memchr(p + skip + 1, MAGIC0, n - skip - 1);
			skip = next ? (size_t)(next - p) : n;
		}
		if (skip > 0) {
			debugx("skipped %zu bytes looking for a frame", skip);
			buf_consume(&g_in, skip);
			continue;
		}
		if (n < HDR_SIZE) return;
		uint32_t id = get_be32(p + 4), len = get_be32(p + 8);
		if (len > MAX_PAYLOAD) {
			/* Most likely not a header at all: answer, then look for a magic past this one. */
			send_error(id, E_MALFORMED, "declared payload length %u is over the 1 MiB limit", len);
			buf_consume(&g_in, 2);
			continue;
		}
		if (n < HDR_SIZE + (size_t)len) return;
		handle_frame(p[2], id, p + HDR_SIZE, len);
		buf_consume(&g_in, HDR_SIZE + (size_t)len);
	}
}

/*
 * The host went away (EOF or POLLHUP on the port). In PID 1 mode the agent stays: the port is
 * left out of poll() for a short, growing while (it reports POLLHUP continuously until a host
 * connects) and SIGIO, which virtio_console raises when the host side opens, cuts the wait short.
 */
static void channel_down(void)
{
	if (g_stdio) stdio_exit(0);
	if (g_chan_up) {
		debugx("host disconnected");
		int fl = fcntl(g_in_fd, F_GETFL);
		if (fl >= 0) fcntl(g_in_fd, F_SETFL, fl | O_ASYNC);
	}
	g_chan_up = false;
	abort_all_xfers(); /* nobody will finish them: the next host starts afresh */
	buf_consume(&g_in, g_in.len); /* a half-received frame from the old connection */
	buf_consume(&g_out, g_out.len);
	g_backoff_ms = g_backoff_ms ? (g_backoff_ms * 2 > 50 ? 50 : g_backoff_ms * 2) : 10;
	g_backoff_until = mono_ms() + g_backoff_ms;
}

static void read_channel(void)
{
	if (!buf_reserve(&g_in, CHUNK)) return;
	ssize_t n = read(g_in_fd, buf_tail(&g_in), g_in.cap - g_in.head - g_in.len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
	if (n <= 0) {
		channel_down();
		return;
	}
	if (!g_chan_up) {
		debugx("host connected");
		int fl = fcntl(g_in_fd, F_GETFL);
		if (fl >= 0) fcntl(g_in_fd, F_SETFL, fl & ~O_ASYNC);
		g_chan_up = true;
	}
	g_backoff_ms = 0;
	g_in.len += (size_t)n;
	dispatch_frames();
}

/* ------------------------------------------------------------------------------------------ */
/* Event loop */

enum { K_SIG, K_CHAN_IN, K_CHAN_OUT, K_OUT, K_ERR, K_IN };

static void __attribute__((noreturn)) serve(void)
{
	static struct pollfd pfd[3 + 3 * MAX_EXECS];
	static struct { int kind, slot; } what[3 + 3 * MAX_EXECS];

	for (;;) {
		int n = 0, timeout = -1;
#define WATCH(fd_, ev_, kind_, slot_) \
	(pfd[n] = (struct pollfd){ .fd = (fd_), .events = (ev_) }, what[n].kind = (kind_), what[n].slot = (slot_), n++)

		WATCH(g_sig_fd, POLLIN, K_SIG, -1);
		for (int i = 0; i < MAX_EXECS; i++) {
			struct exec *e = &g_execs[i];
			if (!e->used) continue;
			if (g_out.len < OUT_HIGH) { /* backpressure: a slow host slows the processes down */
				if (e->out_fd >= 0) WATCH(e->out_fd, POLLIN, K_OUT, i);
				if (e->err_fd >= 0) WATCH(e->err_fd, POLLIN, K_ERR, i);
			}
			if (e->in_fd >= 0 && e->inq.len > 0) WATCH(e->in_fd, POLLOUT, K_IN, i);
		}
		int64_t now = mono_ms();
		if (!g_chan_up && now < g_backoff_until) {
			timeout = (int)(g_backoff_until - now);
		} else {
			short in_ev = g_out.len < OUT_HARD ? POLLIN : 0, out_ev = g_out.len ? POLLOUT : 0;
			if (g_in_fd == g_out_fd) {
				WATCH(g_in_fd, in_ev | out_ev, K_CHAN_IN, -1);
			} else {
				WATCH(g_in_fd, in_ev, K_CHAN_IN, -1);
				if (out_ev) WATCH(g_out_fd, out_ev, K_CHAN_OUT, -1);
			}
		}
		if (g_npump > 0 && g_out.len < OUT_HIGH) timeout = 0; /* a download has its next chunk to read */
#undef WATCH

		if (poll(pfd, (nfds_t)n, timeout) < 0) {
			if (errno != EINTR) warnx("poll: %s", strerror(errno));
			continue;
		}

		/* Process pipes before the channel: handling an EXEC may reuse fd numbers of pipes
		 * closed in this round, and their stale revents must not be applied to the new ones. */
		for (int i = 0; i < n; i++) {
			short rev = pfd[i].revents;
			if (!rev) continue;
			struct exec *e = what[i].slot >= 0 ? &g_execs[what[i].slot] : NULL;
			switch (what[i].kind) {
			case K_SIG: {
				struct signalfd_siginfo si[16];
				ssize_t got;
				while ((got = read(g_sig_fd, si, sizeof si)) > 0)
					for (size_t k = 0; k < (size_t)got / sizeof si[0]; k++)
						if (si[k].ssi_signo == SIGIO) g_backoff_until = 0; /* the host is back */
				reap_children();
				break;
			}
			case K_OUT:
				if (e->out_fd == pfd[i].fd) read_output(e, &e->out_fd, T_STDOUT);
				break;
			case K_ERR:
				if (e->err_fd == pfd[i].fd) read_output(e, &e->err_fd, T_STDERR);
				break;
			case K_IN:
				if (e->in_fd == pfd[i].fd) flush_stdin(e);
				break;
			}
		}
		for (int i = 0; i < n; i++) {
			short rev = pfd[i].revents;
			if (what[i].kind == K_CHAN_OUT && (rev & (POLLERR | POLLHUP | POLLNVAL))) stdio_exit(0);
			if (what[i].kind == K_CHAN_IN && (rev & POLLNVAL)) fatal("the channel fd is not open");
			if (what[i].kind == K_CHAN_IN && (rev & (POLLIN | POLLHUP | POLLERR))) read_channel();
		}
		pump_xfers();
		if (!flush_out()) {
			if (g_stdio) stdio_exit(0);
			channel_down();
		}
	}
}

/* ------------------------------------------------------------------------------------------ */
/* PID 1 start-up */

static void mkdir_p(const char *path)
{
	char tmp[256];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *s = tmp + 1; *s; s++) {
		if (*s != '/') continue;
		*s = '\0';
		mkdir(tmp, 0755);
		*s = '/';
	}
	mkdir(tmp, 0755);
}

static bool do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data)
{
	mkdir_p(dst);
	if (mount(src, dst, type, flags, data) == 0 || errno == EBUSY) return true;
	warnx("mount %s on %s: %s", type ? type : src, dst, strerror(errno));
	return false;
}

/* fds 0-2 may be closed when the initramfs has no /dev/console: fill the holes, so no pipe ever
 * lands on 0-2 (the child's dup2 onto 0-2 would then clobber it). */
static void fill_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0) continue;
		int nfd = open("/dev/null", O_RDWR);
		if (nfd >= 0 && nfd != fd) close(nfd);
	}
}

static void load_modules(void)
{
	char *list = read_text("/etc/cell/modules", 64 * 1024);
	if (!list) {
		debugx("no /etc/cell/modules");
		return;
	}
	for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
		while (*line == ' ' || *line == '\t') line++;
		char *end = line + strlen(line);
		while (end > line && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) *--end = '\0';
		if (!*line || *line == '#') continue;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			warnx("module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) warnx("load module %s: %s", line, strerror(errno));
		else debugx("loaded %s", line);
		close(fd);
		unlink(line); /* the initramfs is RAM: the loaded module's file is just a copy */
	}
	free(list);
}

static bool wait_for_path(const char *path, int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	struct stat st;
	while (stat(path, &st) != 0) {
		if (mono_ms() >= deadline) return false;
		sleep_ms(1);
	}
	return true;
}

/*
 * Waits for an entry of `sysdir` (named `prefix`...) whose attribute file `attr` reads `want`, and
 * whose /dev node exists; writes that node's path to dev. The attribute can appear after the
 * device itself (a port's name comes over virtio's control queue), so it is polled for.
 */
static bool find_device(const char *sysdir, const char *prefix, const char *attr, const char *want, char *dev, size_t dev_len,
			int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		DIR *d = opendir(sysdir);
		struct dirent *de;
		while (d && (de = readdir(d))) {
			char path[300], value[64];
			if (de->d_name[0] == '.' || strncmp(de->d_name, prefix, strlen(prefix)) != 0) continue;
			snprintf(path, sizeof path, "%s/%s/%s", sysdir, de->d_name, attr);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0) continue;
			ssize_t n = read(fd, value, sizeof value - 1);
			close(fd);
			if (n <= 0) continue;
			value[n] = '\0';
			value[strcspn(value, "\n")] = '\0';
			snprintf(path, sizeof path, "/dev/%s", de->d_name);
			struct stat st;
			if (strcmp(value, want) == 0 && stat(path, &st) == 0) {
				snprintf(dev, dev_len, "%s", path);
				closedir(d);
				return true;
			}
		}
		if (d) closedir(d);
		if (mono_ms() >= deadline) return false;
		sleep_ms(2);
	}
}

/* /dev/vdX whose virtio-blk serial (set by the host with -device ...,serial=) is `serial`. Disks
 * are named by serial because the order in which virtio-mmio devices appear is not the order they
 * were given on QEMU's command line. */
static bool find_disk(const char *serial, char *dev, size_t dev_len, int timeout_ms)
{
	return find_device("/sys/block", "vd", "serial", serial, dev, dev_len, timeout_ms);
}

/* /dev/<vportNpM> whose sysfs name is PORT_NAME. */
static bool find_port(char *dev, size_t dev_len, int timeout_ms)
{
	return find_device("/sys/class/virtio-ports", "", "name", PORT_NAME, dev, dev_len, timeout_ms);
}

static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "lo", 3);
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
		warnx("loopback: %s", strerror(errno));
	} else {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) warnx("loopback up: %s", strerror(errno));
	}
	if (s >= 0) close(s);
}

/* Moves an initramfs mount into the new root, or mounts a fresh one there if it cannot. */
static void move_api_mount(const char *src, const char *type, unsigned long flags, const char *data)
{
	char dst[64];
	snprintf(dst, sizeof dst, NEWROOT "%s", src);
	mkdir_p(dst);
	if (mount(src, dst, NULL, MS_MOVE, NULL) == 0) return;
	debugx("move %s: %s; mounting afresh", src, strerror(errno));
	do_mount(type, dst, type, flags, data);
}

/* cell.data=/PATH: the disk with serial cell-data (ext4, made by the host) is mounted at PATH in
 * the new root. A missing disk is an error on the console, not a dead VM. */
static void mount_data_disk(const char *where)
{
	char dev[300], target[300];
	if (where[0] != '/' || strstr(where, "..")) {
		warnx("cell.data=%s: not an absolute path; no data disk", where);
		return;
	}
	if (!find_disk("cell-data", dev, sizeof dev, DEVICE_WAIT_MS)) {
		warnx("cell.data=%s: no disk with serial cell-data", where);
		return;
	}
	snprintf(target, sizeof target, NEWROOT "%s", where);
	mkdir(target, 0755);
	if (mount(dev, target, "ext4", MS_NOSUID | MS_NODEV, NULL) != 0) warnx("mount %s on %s: %s", dev, where, strerror(errno));
	else debugx("mounted data disk %s on %s", dev, where);
}

static void pid1_setup(void)
{
	/* The kernel starts init with everything unblocked and a bare initramfs. */
	mkdir("/proc", 0555);
	mkdir("/sys", 0555);
	mkdir("/dev", 0755);
	mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	fill_std_fds();
	g_log_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);

	char hostname[65] = "", root[300] = "/dev/vda", data[128] = "";
	char *cmdline = read_text("/proc/cmdline", 4096);
	if (!cmdline) fatal("cannot read /proc/cmdline: %s", strerror(errno));
	for (char *tok = strtok(cmdline, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
		if (strncmp(tok, "cell.hostname=", 14) == 0) snprintf(hostname, sizeof hostname, "%s", tok + 14);
		else if (strncmp(tok, "cell.root=", 10) == 0) snprintf(root, sizeof root, "%s", tok + 10);
		else if (strncmp(tok, "cell.data=", 10) == 0) snprintf(data, sizeof data, "%s", tok + 10);
		else if (strcmp(tok, "cell.debug=1") == 0) g_debug = true;
	}
	free(cmdline);
	debugx("agent %s starting", AGENT_VERSION);

	load_modules();
	debugx("modules loaded; waiting for %s", root);
	if (strncmp(root, "serial:", 7) == 0) {
		char dev[300];
		if (!find_disk(root + 7, dev, sizeof dev, DEVICE_WAIT_MS)) fatal("no disk with serial %s within %d ms", root + 7, DEVICE_WAIT_MS);
		snprintf(root, sizeof root, "%s", dev);
	}
	if (!wait_for_path(root, DEVICE_WAIT_MS)) fatal("root device %s did not appear within %d ms", root, DEVICE_WAIT_MS);
	mkdir(NEWROOT, 0755);
	if (mount(root, NEWROOT, "ext4", 0, NULL) != 0) {
		warnx("mount %s read-write: %s; trying read-only", root, strerror(errno));
		if (mount(root, NEWROOT, "ext4", MS_RDONLY, NULL) != 0) fatal("cannot mount root %s (ext4): %s", root, strerror(errno));
	}
	debugx("mounted %s", root);
	/* Before /sys and /dev move into the new root: find_disk reads them where they are now. */
	if (*data) mount_data_disk(data);

	move_api_mount("/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	move_api_mount("/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	move_api_mount("/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=0666");
	do_mount("tmpfs", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("tmpfs", NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* devtmpfs lacks these; shells and many tools expect them. */
	symlink("/proc/self/fd", NEWROOT "/dev/fd");
	symlink("/proc/self/fd/0", NEWROOT "/dev/stdin");
	symlink("/proc/self/fd/1", NEWROOT "/dev/stdout");
	symlink("/proc/self/fd/2", NEWROOT "/dev/stderr");

	if (chdir(NEWROOT) != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
		fatal("switching root to %s: %s", root, strerror(errno));
	debugx("switched root");

	if (*hostname) {
		const char *failed;
		if (sethostname(hostname, strlen(hostname)) != 0) warnx("sethostname %s: %s", hostname, strerror(errno));
		else if ((failed = write_hostname_file(hostname))) warnx("%s /etc/hostname: %s", failed, strerror(errno));
	}
	loopback_up();

	char dev[300];
	if (!find_port(dev, sizeof dev, DEVICE_WAIT_MS)) fatal("no virtio-serial port named %s within %d ms", PORT_NAME, DEVICE_WAIT_MS);
	int fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) fatal("open %s: %s", dev, strerror(errno));
	fcntl(fd, F_SETOWN, g_self); /* SIGIO target while the host is disconnected */
	g_in_fd = g_out_fd = fd;
	debugx("serving on %s", dev);
}

/* ------------------------------------------------------------------------------------------ */

static void send_hello(void)
{
	struct utsname u;
	uint8_t p[8 + sizeof AGENT_VERSION + sizeof u.release];
	size_t vlen = strlen(AGENT_VERSION), rlen;
	if (uname(&u) != 0) strcpy(u.release, "unknown");
	rlen = strnlen(u.release, sizeof u.release);
	put_be32(p, (uint32_t)vlen);
	memcpy(p + 4, AGENT_VERSION, vlen);
	put_be32(p + 4 + vlen, (uint32_t)rlen);
	memcpy(p + 8 + vlen, u.release, rlen);
	send_frame(T_HELLO, 0, p, 8 + vlen + rlen);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--stdio") == 0) g_stdio = true;
		else if (strcmp(argv[i], "--debug") == 0) g_debug = true;
		else {
			fprintf(stderr, "usage: %s [--stdio] [--debug]\n", argv[0]);
			return 2;
		}
	}
	g_self = getpid();
	if (!g_stdio && g_self != 1) {
		fprintf(stderr, "cell-agent: not PID 1; run with --stdio to serve the protocol on stdin/stdout\n");
		return 2;
	}

	/* SIGCHLD and SIGIO are read from a signalfd; SIGPIPE turns into EPIPE. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (g_stdio) {
		g_log_fd = 2;
		fill_std_fds();
		g_in_fd = 0;
		g_out_fd = 1;
		for (int fd = 0; fd < 2; fd++) {
			g_stdio_flags[fd] = fcntl(fd, F_GETFL);
			set_nonblock(fd);
		}
	} else {
		pid1_setup();
	}

	g_sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (g_sig_fd < 0) fatal("signalfd: %s", strerror(errno));
	/* 256 execs take up to 768 pipe ends; children get the inherited limit back. */
	if (getrlimit(RLIMIT_NOFILE, &g_nofile) == 0) {
		g_nofile_saved = true;
		struct rlimit more = g_nofile;
		if (more.rlim_cur < 4096) more.rlim_cur = more.rlim_max < 4096 ? more.rlim_max : 4096;
		setrlimit(RLIMIT_NOFILE, &more);
	}
	for (int i = 0; i < MAX_EXECS; i++) g_execs[i].out_fd = g_execs[i].err_fd = g_execs[i].in_fd = -1;

	send_hello();
	serve();
}
