/*
 * File requests (docs/protocol.md, "Files"): uploads written as their frames arrive, downloads
 * read a chunk per event-loop turn (pump_xfers), MKDIR, SYMLINK, STAT and CANCEL.
 */
#include "agent.h"

#include <dirent.h>

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
int g_npump; /* X_READ and X_LIST transfers: the event loop feeds them */

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
void abort_all_xfers(void)
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

void handle_put_file(uint32_t id, const uint8_t *p, size_t len)
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

void handle_file_data(uint32_t id, const uint8_t *p, size_t len)
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
void handle_file_end(uint32_t id, const uint8_t *p, size_t len)
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

void handle_mkdir(uint32_t id, const uint8_t *p, size_t len)
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
void handle_symlink(uint32_t id, const uint8_t *p, size_t len)
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

void handle_stat(uint32_t id, const uint8_t *p, size_t len)
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
void handle_download(uint8_t type, uint32_t id, const uint8_t *p, size_t len)
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
void pump_xfers(void)
{
	for (int i = 0; i < MAX_XFERS && g_out.len < OUT_HIGH; i++) {
		struct xfer *x = &g_xfers[i];
		if (x->kind == X_READ) pump_read(x);
		else if (x->kind == X_LIST) pump_list(x);
	}
}

void handle_cancel(uint32_t id, size_t len)
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
