/*
 * Requests about the whole machine rather than one process or file: SIGNAL_ALL, SET_TIME,
 * ADD_ENTROPY, SYNC and SET_IDENTITY (hostname and machine id, also used at start-up).
 */
#include "agent.h"

#include <dirent.h>
#include <linux/random.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07) /* Linux 4.17+ */
#endif

/* ------------------------------------------------------------------------------------------ */
/* SIGNAL_ALL, SET_TIME, ADD_ENTROPY, SYNC */

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
void handle_signal_all(uint32_t id, const uint8_t *p, size_t len)
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

void handle_set_time(uint32_t id, const uint8_t *p, size_t len)
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

void handle_add_entropy(uint32_t id, const uint8_t *p, size_t len)
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

/* Before a snapshot: the disk layer is frozen as it is, so what the page cache holds must be on it
 * for a VM that later boots cold from that layer. */
void handle_sync(uint32_t id, size_t len)
{
	if (len != 0) send_error(id, E_MALFORMED, "SYNC takes no payload, got %zu bytes", len);
	else {
		sync();
		send_frame(T_OK, id, NULL, 0);
	}
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
const char *write_hostname_file(const char *hostname)
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
void handle_set_identity(uint32_t id, const uint8_t *p, size_t len)
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
/* The workload's cgroup: frozen around a snapshot, thawed in a fork only after its reseed.
 *
 * Every process the host runs joins /sys/fs/cgroup/cell-work (cgroup v2). FREEZE stops them all
 * before the host pauses the VM for a snapshot, so the snapshot holds them stopped; every VM that
 * comes out of it (the source itself, forks, spares, restores) gets the host's clock and fresh
 * entropy first and only then THAW: no process of a fork runs, and draws random bytes, before its
 * CRNG was reseeded (this kernel has no vmgenid driver that would reseed it on its own). */

#define WORK_CGROUP "/sys/fs/cgroup/cell-work"
#define FREEZE_WAIT_MS 1000

static int g_work_procs_fd = -1;   /* cgroup.procs of the workload group, -1 when there is none */
static bool g_frozen;

void workload_cgroup_setup(void)
{
	if (g_stdio) return; /* test mode: never touch the host's cgroups */
	/* favordynmods: moving a process between groups (every EXEC's child joins the workload group)
	 * then skips an RCU grace period, ~12 ms under TCG, for slightly dearer fork and exit. Kernels
	 * before 6.0 refuse it: mounted without. */
	const unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	int rc = mount("cgroup2", "/sys/fs/cgroup", "cgroup2", flags, "favordynmods");
	if (rc != 0 && errno == EINVAL) rc = mount("cgroup2", "/sys/fs/cgroup", "cgroup2", flags, NULL);
	if (rc != 0 && errno != EBUSY) {
		warnx("mount cgroup2: %s (snapshots will not freeze processes)", strerror(errno));
		return;
	}
	if (mkdir(WORK_CGROUP, 0755) != 0 && errno != EEXIST) {
		warnx("mkdir %s: %s", WORK_CGROUP, strerror(errno));
		return;
	}
	/* Not O_CLOEXEC: the forked child writes to it before execve, then close_range marks it. */
	g_work_procs_fd = open(WORK_CGROUP "/cgroup.procs", O_WRONLY);
	if (g_work_procs_fd < 0) warnx("open %s/cgroup.procs: %s", WORK_CGROUP, strerror(errno));
}

/* In a forked child, before execve: "0" moves the writer itself. */
void join_workload_cgroup(void)
{
	if (g_work_procs_fd >= 0 && write(g_work_procs_fd, "0", 1) != 1) { /* not fatal: it just will not be frozen */ }
}

static bool write_freeze(const char *value)
{
	int fd = open(WORK_CGROUP "/cgroup.freeze", O_WRONLY | O_CLOEXEC);
	if (fd < 0) return false;
	bool ok = write(fd, value, 1) == 1;
	close(fd);
	return ok;
}

/* cgroup.events says "frozen 1" once every process in the group is stopped. */
static bool is_frozen(void)
{
	char *events = read_text(WORK_CGROUP "/cgroup.events", 256);
	bool frozen = events && strstr(events, "frozen 1") != NULL;
	free(events);
	return frozen;
}

void thaw_workload(void)
{
	if (!g_frozen) return;
	if (write_freeze("0")) g_frozen = false;
}

void handle_freeze(uint32_t id, size_t len)
{
	if (len != 0) {
		send_error(id, E_MALFORMED, "FREEZE takes no payload, got %zu bytes", len);
		return;
	}
	if (g_work_procs_fd < 0) {
		send_error(id, E_SYSCALL, "no workload cgroup to freeze");
		return;
	}
	if (!write_freeze("1")) {
		send_error(id, E_SYSCALL, "cgroup.freeze: %s", strerror(errno));
		return;
	}
	g_frozen = true;
	/* A process in an uninterruptible sleep delays freezing; past the wait the host goes on
	 * without it (and the workload is thawed at once rather than left half-frozen). */
	for (int waited = 0; !is_frozen(); waited += 5) {
		if (waited >= FREEZE_WAIT_MS) {
			thaw_workload();
			send_error(id, E_LIMIT, "the workload did not freeze within %d ms", FREEZE_WAIT_MS);
			return;
		}
		usleep(5000);
	}
	send_frame(T_OK, id, NULL, 0);
}

void handle_thaw(uint32_t id, size_t len)
{
	if (len != 0) {
		send_error(id, E_MALFORMED, "THAW takes no payload, got %zu bytes", len);
		return;
	}
	/* Also after a restore: the flag is in the snapshot's RAM, the file in its kernel state. */
	if (g_work_procs_fd >= 0 && !write_freeze("0")) {
		send_error(id, E_SYSCALL, "cgroup.freeze: %s", strerror(errno));
		return;
	}
	g_frozen = false;
	send_frame(T_OK, id, NULL, 0);
}
