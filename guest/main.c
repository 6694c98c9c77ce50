/*
 * Start and end of the agent: PID 1 set-up (mounts, modules, the root and data disks, switching
 * root, the port), --stdio mode, HELLO, main(); SHUTDOWN and the end of --stdio mode.
 */
#include "agent.h"

#include <dirent.h>
#include <net/if.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>

bool g_stdio;          /* --stdio test mode */
bool g_debug;          /* cell.debug=1 or --debug */
int g_log_fd = -1;     /* /dev/console in PID 1 mode, stderr in --stdio mode */
pid_t g_self;
static int g_stdio_flags[2] = { -1, -1 }; /* fd 0/1 flags to restore on exit in --stdio mode */

struct rlimit g_nofile; /* RLIMIT_NOFILE as inherited, restored in exec children */
bool g_nofile_saved;

/* ------------------------------------------------------------------------------------------ */
/* Shut-down */

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
void __attribute__((noreturn)) stdio_exit(int code)
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

void handle_shutdown(uint32_t id, const uint8_t *p, size_t len)
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

/* Loads the modules named in `list_path` (one path per line, dependencies first). */
static void load_modules(const char *list_path)
{
	char *list = read_text(list_path, 64 * 1024);
	if (!list) {
		debugx("no %s", list_path);
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

#define MAX_VOLUMES 8

/* A cell.vol= or cell.share= token, N:ro|rw:/PATH: false (said on the console) when it is not one. */
static bool parse_mount_token(const char *name, const char *spec, int max, int *index, bool *readonly, const char **path)
{
	int used = 0;
	*index = -1;
	if (sscanf(spec, "%d:%n", index, &used) != 1 || *index < 0 || *index >= max) {
		warnx("%s=%s: no index below %d", name, spec, max);
		return false;
	}
	const char *rest = spec + used;
	*readonly = strncmp(rest, "ro:", 3) == 0;
	if (!*readonly && strncmp(rest, "rw:", 3) != 0) {
		warnx("%s=%s: the mode is ro or rw", name, spec);
		return false;
	}
	*path = rest + 3;
	if ((*path)[0] != '/' || strstr(*path, "..")) {
		warnx("%s=%s: not an absolute path", name, spec);
		return false;
	}
	return true;
}

/* The named volumes of cell.vol= tokens, kept for VOLUMES requests: a snapshot of a VM with volumes
 * is taken with them unmounted, and every VM restored from it mounts them again (docs/volumes.md). */
static struct volume {
	int index;
	bool readonly, mounted;
	char path[200];
} g_volumes[MAX_VOLUMES];
static int g_nvolumes;

/* Mounts volume v at prefix+path; false (errno set) when its disk or the mount fails. */
static bool mount_volume_at(struct volume *v, const char *prefix, int wait_ms)
{
	char serial[32], dev[300], target[300];
	snprintf(serial, sizeof serial, "cell-vol-%d", v->index);
	if (!find_disk(serial, dev, sizeof dev, wait_ms)) {
		errno = ENODEV;
		return false;
	}
	snprintf(target, sizeof target, "%s%s", prefix, v->path);
	mkdir_p(target);
	unsigned long flags = MS_NOSUID | MS_NODEV | (v->readonly ? MS_RDONLY : 0);
	int rc = mount(dev, target, "ext4", flags, NULL);
	/* A volume whose last writer did not unmount it (a VM killed, or powered off) has a journal to
	 * replay, which a read-only disk cannot take: read it as its journal left it. */
	if (rc != 0 && v->readonly) rc = mount(dev, target, "ext4", flags, "noload");
	if (rc != 0) return false;
	v->mounted = true;
	return true;
}

/* cell.vol=N:ro|rw:/PATH: the disk with serial cell-vol-N (a named volume's ext4 image) is mounted
 * at PATH in the new root, read-only with ro. A bad token or a missing disk is an error on the
 * console, not a dead VM. */
static void mount_volume(const char *spec)
{
	int index;
	bool readonly;
	const char *where;
	if (!parse_mount_token("cell.vol", spec, MAX_VOLUMES, &index, &readonly, &where)) return;
	if (strlen(where) >= sizeof g_volumes[0].path) {
		warnx("cell.vol=%s: the path is too long", spec);
		return;
	}
	struct volume *v = &g_volumes[g_nvolumes++];
	v->index = index;
	v->readonly = readonly;
	snprintf(v->path, sizeof v->path, "%s", where);
	if (!mount_volume_at(v, NEWROOT, DEVICE_WAIT_MS)) warnx("mount volume cell-vol-%d on %s: %s", index, where, strerror(errno));
	else debugx("mounted volume cell-vol-%d on %s%s", index, where, readonly ? " (read-only)" : "");
}

/*
 * VOLUMES: u8 op. 0: unmount every volume (synced first; the reverse of the mount order), for a
 * snapshot: one still in use is mounted back with the others and the request fails naming it. 1:
 * mount every volume not mounted (after a restore). OK carries u32 how many changed.
 */
void handle_volumes(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 1 || p[0] > 1) {
		send_error(id, E_MALFORMED, "VOLUMES takes one byte: 0 unmount, 1 mount");
		return;
	}
	uint32_t changed = 0;
	uint8_t reply[4];
	if (p[0] == 0) {
		sync();
		for (int i = g_nvolumes - 1; i >= 0; i--) {
			struct volume *v = &g_volumes[i];
			if (!v->mounted) continue;
			if (umount2(v->path, 0) != 0) {
				int err = errno;
				for (int j = i + 1; j < g_nvolumes; j++)
					if (!g_volumes[j].mounted) mount_volume_at(&g_volumes[j], "", 0);
				send_error(id, err == EBUSY ? E_LIMIT : E_SYSCALL, "unmount %s: %s", v->path, err == EBUSY ? "files there are in use" : strerror(err));
				return;
			}
			v->mounted = false;
			changed++;
		}
	} else {
		for (int i = 0; i < g_nvolumes; i++) {
			struct volume *v = &g_volumes[i];
			if (v->mounted) continue;
			if (!mount_volume_at(v, "", DEVICE_WAIT_MS)) {
				send_error(id, E_SYSCALL, "mount volume on %s: %s", v->path, strerror(errno));
				return;
			}
			changed++;
		}
	}
	put_be32(reply, changed);
	send_frame(T_OK, id, reply, sizeof reply);
}

#define MAX_SHARES 4

/* cell.share=N:ro|rw:/PATH: the host folder shared as virtio-fs tag cell-share-N is mounted at
 * PATH in the new root. The host enforces what the guest may reach and whether it may write (its
 * virtiofsd is confined to the folder and, for ro, sees it through a read-only mount); ro here
 * only makes the guest say so early. */
static void mount_share(const char *spec)
{
	char tag[32], target[300];
	int index;
	bool readonly;
	const char *where;
	if (!parse_mount_token("cell.share", spec, MAX_SHARES, &index, &readonly, &where)) return;
	snprintf(tag, sizeof tag, "cell-share-%d", index);
	snprintf(target, sizeof target, NEWROOT "%s", where);
	mkdir_p(target);
	unsigned long flags = MS_NOSUID | MS_NODEV | (readonly ? MS_RDONLY : 0);
	/* The device may probe a moment after its module loads, as disks do. */
	int64_t deadline = mono_ms() + DEVICE_WAIT_MS;
	int rc;
	while ((rc = mount(tag, target, "virtiofs", flags, NULL)) != 0 && (errno == ENOENT || errno == EINVAL) && mono_ms() < deadline) sleep_ms(2);
	if (rc != 0) warnx("mount host folder %s on %s: %s", tag, where, strerror(errno));
	else debugx("mounted host folder %s on %s%s", tag, where, readonly ? " (read-only)" : "");
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

	char hostname[65] = "", root[300] = "/dev/vda", data[128] = "", net[64] = "";
	char volumes[MAX_VOLUMES][224], shares[MAX_SHARES][224];
	int nvolumes = 0, nshares = 0;
	char *cmdline = read_text("/proc/cmdline", 4096);
	if (!cmdline) fatal("cannot read /proc/cmdline: %s", strerror(errno));
	for (char *tok = strtok(cmdline, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
		if (strncmp(tok, "cell.hostname=", 14) == 0) snprintf(hostname, sizeof hostname, "%s", tok + 14);
		else if (strncmp(tok, "cell.root=", 10) == 0) snprintf(root, sizeof root, "%s", tok + 10);
		else if (strncmp(tok, "cell.data=", 10) == 0) snprintf(data, sizeof data, "%s", tok + 10);
		else if (strncmp(tok, "cell.net=", 9) == 0) snprintf(net, sizeof net, "%s", tok + 9);
		else if (strncmp(tok, "cell.vol=", 9) == 0 && nvolumes < MAX_VOLUMES) snprintf(volumes[nvolumes++], sizeof volumes[0], "%s", tok + 9);
		else if (strncmp(tok, "cell.share=", 11) == 0 && nshares < MAX_SHARES) snprintf(shares[nshares++], sizeof shares[0], "%s", tok + 11);
		else if (strcmp(tok, "cell.debug=1") == 0) g_debug = true;
	}
	free(cmdline);
	debugx("agent %s starting", AGENT_VERSION);

	load_modules("/etc/cell/modules");
	if (nshares > 0) load_modules("/etc/cell/modules.share");
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
	for (int i = 0; i < nvolumes; i++) mount_volume(volumes[i]);
	for (int i = 0; i < nshares; i++) mount_share(shares[i]);

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
	if (*net) network_up(net);
	workload_cgroup_setup();

	char dev[300];
	if (!find_port(dev, sizeof dev, DEVICE_WAIT_MS)) fatal("no virtio-serial port named %s within %d ms", PORT_NAME, DEVICE_WAIT_MS);
	int fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) fatal("open %s: %s", dev, strerror(errno));
	fcntl(fd, F_SETOWN, g_self); /* SIGIO target while the host is disconnected */
	g_in_fd = g_out_fd = fd;
	debugx("serving on %s", dev);
}

/* ------------------------------------------------------------------------------------------ */
/* HELLO and main */

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
	const char *kmsg = NULL; /* --stdio mode: a test's kernel log lines (oom.c) */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--stdio") == 0) g_stdio = true;
		else if (strcmp(argv[i], "--debug") == 0) g_debug = true;
		else if (strcmp(argv[i], "--kmsg") == 0 && i + 1 < argc) kmsg = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--stdio [--kmsg PATH]] [--debug]\n", argv[0]);
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
		if (kmsg) oom_watch_open(kmsg);
	} else {
		pid1_setup();
		oom_watch_open(NULL);
		thrash_watch_open();
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
