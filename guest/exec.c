/*
 * Processes the host runs: EXEC (fork, set up, execve), their output pipes and stdin queues (or,
 * for an exec on a terminal, the master of its pseudo-terminal), reaping, EXIT, STDIN, KILL and
 * RESIZE. The event loop polls the pipes of g_execs.
 */
#include "agent.h"

#include <grp.h>
#include <stdarg.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>

struct exec g_execs[MAX_EXECS];
static int g_nexecs;
static size_t g_stdin_total;

/* ------------------------------------------------------------------------------------------ */
/* Exec table */

struct exec *find_exec(uint32_t id)
{
	for (int i = 0; i < MAX_EXECS; i++)
		if (g_execs[i].used && g_execs[i].id == id) return &g_execs[i];
	return NULL;
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
void reap_children(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_EXECS; i++) {
			struct exec *e = &g_execs[i];
			if (e->used && !e->reaped && e->pid == pid) {
				e->reaped = true;
				e->status = st;
				if (e->tty) e->hup_at = mono_ms() + TTY_HUP_MS;
				maybe_finish(e);
				break;
			}
		}
	}
}

/* Reads one chunk of a process's stdout or stderr into a STDOUT/STDERR frame, no more than its credit. */
void read_output(struct exec *e, int *fd, uint8_t type)
{
	size_t want = CHUNK;
	if (e->flow && e->credit < want) want = (size_t)e->credit;
	/* stdout took the last credit in this poll round: stderr waits (a 0-byte read would look like EOF) */
	if (want == 0) return;
	if (!buf_reserve(&g_out, HDR_SIZE + CHUNK)) return; /* out of memory: try again later */
	uint8_t *h = buf_tail(&g_out);
	ssize_t n = read(*fd, h + HDR_SIZE, want);
	if (n < 0 && errno == EINTR) return;
	if (n < 0 && errno == EAGAIN) {
		/* A terminal whose process is gone but which something else (a background job) still
		 * holds open: nothing more came for TTY_HUP_MS, so hang it up and end the exec. */
		if (e->tty && e->reaped && mono_ms() >= e->hup_at) {
			close_fd(fd);
			maybe_finish(e);
		}
		return;
	}
	/* EOF; a terminal's master reads EIO once every holder of its other side closed it and its
	 * output was read (or an error, which ends the stream the same way) */
	if (n <= 0) {
		close_fd(fd);
		maybe_finish(e);
		return;
	}
	if (!g_chan_up) return; /* nobody to send it to: drop (see send_frame) */
	if (e->flow) e->credit -= (uint64_t)n;
	put_header(h, type, e->id, (uint32_t)n);
	g_out.len += HDR_SIZE + (size_t)n;
}

/*
 * Reaped tty execs whose terminal is still open past their hang-up time: read what is left (or
 * hang up) on this loop turn. Returns the poll timeout until the next one is due (-1: none).
 */
int tty_hangups(void)
{
	int timeout = -1;
	int64_t now = mono_ms();
	for (int i = 0; i < MAX_EXECS; i++) {
		struct exec *e = &g_execs[i];
		if (!e->used || !e->tty || !e->reaped || e->out_fd < 0) continue;
		if (now < e->hup_at) {
			int left = (int)(e->hup_at - now);
			if (timeout < 0 || left < timeout) timeout = left;
			continue;
		}
		/* Out of credit or the channel backed up: the CREDIT or the drained queue wakes the loop. */
		if ((e->flow && e->credit == 0) || g_out.len >= OUT_HIGH) continue;
		read_output(e, &e->out_fd, T_STDOUT);
		if (e->used && e->out_fd >= 0) timeout = 0; /* more to read */
	}
	return timeout;
}

/* Moves queued stdin into the process's pipe as far as it takes it. */
void flush_stdin(struct exec *e)
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
	uint32_t rows, cols; /* with EXEC_TTY */
	char *cwd;
	char **argv, **envp;
	char *strings; /* the NUL-terminated copies argv, envp and cwd point into */
};

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
	rq->envp = calloc(envc + 2, sizeof(char *)); /* room for a TERM of our own */
	if (!rq->envp) return "out of memory";
	for (uint32_t i = 0; i < envc; i++) {
		snprintf(what, what_len, "env[%u]", i);
		if ((err = rd_str(&r, &rq->envp[i]))) return err;
	}
	if (rq->flags & EXEC_TTY) {
		snprintf(what, what_len, "rows and cols");
		if (!rd_u32(&r, &rq->rows) || !rd_u32(&r, &rq->cols)) return "payload truncated";
		if (rq->rows < 1 || rq->rows > MAX_TTY_DIM || rq->cols < 1 || rq->cols > MAX_TTY_DIM) {
			snprintf(what, what_len, "terminal size %ux%u", rq->cols, rq->rows);
			return "out of range (1..1000 each)";
		}
		bool has_term = false;
		for (uint32_t i = 0; i < envc; i++)
			if (strncmp(rq->envp[i], "TERM=", 5) == 0) has_term = true;
		if (!has_term) rq->envp[envc] = DEFAULT_TERM;
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

/* The forked child: becomes the requested process or exits 126/127 with a message on stderr. With
 * a terminal (tty >= 0, its slave side), that is its stdin, stdout, stderr and controlling tty. */
static void __attribute__((noreturn)) run_child(struct exec_req *rq, int in_r, int out_w, int err_w, int tty)
{
	/* In test mode, processes must not outlive an agent that was killed. */
	if (g_stdio && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != g_self)) _exit(126);
	setsid();
	if (tty >= 0) {
		if (ioctl(tty, TIOCSCTTY, 0) != 0) _exit(126);
		if (rq->uid != 0) (void)!fchown(tty, rq->uid, (gid_t)-1); /* its own terminal, as login gives it */
		in_r = out_w = err_w = tty;
	}
	if (in_r < 0) in_r = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in_r < 0 || dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) _exit(126);
	/* Everything else is O_CLOEXEC already; this also covers fds the kernel handed to PID 1. */
	close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
	if (g_nofile_saved) setrlimit(RLIMIT_NOFILE, &g_nofile);
	if (!(rq->flags & EXEC_ASIDE)) join_workload_cgroup();

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

/*
 * A new pseudo-terminal of rq's size: its master, its slave (opened here, before the fork, so the
 * master never reads a hang-up before the child has its side) and, when stdin was asked for, a
 * second fd of the master for stdin (closing stdin closes that one alone). All O_CLOEXEC. On
 * failure returns the step that failed (errno says why) with nothing left open.
 */
static const char *open_tty(const struct exec_req *rq, int *master, int *slave, int *master_in)
{
	const char *step = "posix_openpt";
	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0) return step;
	step = "unlockpt";
	if (unlockpt(*master) != 0) goto fail;
	step = "open the terminal";
	*slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*slave < 0) { /* kernels before 4.13 */
		char name[64];
		if (ptsname_r(*master, name, sizeof name) != 0) goto fail;
		*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (*slave < 0) goto fail;
	}
	step = "TIOCSWINSZ";
	struct winsize ws = { .ws_row = (unsigned short)rq->rows, .ws_col = (unsigned short)rq->cols };
	if (ioctl(*master, TIOCSWINSZ, &ws) != 0) goto fail;
	step = "dup";
	if (master_in && (*master_in = fcntl(*master, F_DUPFD_CLOEXEC, 0)) < 0) goto fail;
	return NULL;
fail:;
	int saved = errno;
	close_fd(master);
	close_fd(slave);
	errno = saved;
	return step;
}

void handle_exec(uint32_t id, const uint8_t *p, size_t len)
{
	struct exec_req rq;
	char what[64];
	const char *err;
	struct stat st;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, errp[2] = { -1, -1 };
	int master = -1, slave = -1, master_in = -1;

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
	if (rq.flags & EXEC_TTY) {
		if ((err = open_tty(&rq, &master, &slave, (rq.flags & 1) ? &master_in : NULL))) {
			send_error(id, E_SYSCALL, "pseudo-terminal: %s: %s", err, strerror(errno));
			goto close_pipes;
		}
	} else if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 || ((rq.flags & 1) && pipe2(in, O_CLOEXEC) != 0)) {
		send_error(id, E_SYSCALL, "pipe: %s", strerror(errno));
		goto close_pipes;
	}
	/* A frozen workload means a snapshot is being taken or a fork not yet reseeded; the host thaws
	 * it first, but a new process must never start frozen if it did not. An aside exec (a spare
	 * warming its code paths before any fork has its identity) leaves the workload frozen and
	 * stays out of its cgroup. */
	if (!(rq.flags & EXEC_ASIDE)) thaw_workload();
	pid_t pid = fork();
	if (pid < 0) {
		send_error(id, E_SYSCALL, "fork: %s", strerror(errno));
		goto close_pipes;
	}
	if (pid == 0) run_child(&rq, in[0], out[1], errp[1], slave);

	struct exec *e = &g_execs[0];
	while (e->used) e++; /* g_nexecs < MAX_EXECS: there is a free slot */
	memset(e, 0, sizeof *e);
	e->used = true;
	e->id = id;
	e->pid = pid;
	e->tty = master >= 0;
	e->out_fd = e->tty ? master : out[0];
	e->err_fd = errp[0];
	e->in_fd = e->tty ? master_in : in[1];
	e->flow = (rq.flags & EXEC_FLOW) != 0;
	e->credit = e->flow ? EXEC_WINDOW : 0;
	set_nonblock(e->out_fd); /* with a tty, for master_in too: one open file */
	if (e->err_fd >= 0) set_nonblock(e->err_fd);
	if (e->in_fd >= 0) set_nonblock(e->in_fd);
	if (out[1] >= 0) close(out[1]);
	if (errp[1] >= 0) close(errp[1]);
	if (in[0] >= 0) close(in[0]);
	if (slave >= 0) close(slave); /* the child holds it: its EOF is the master's EIO */
	g_nexecs++;
	debugx("exec id=%u pid=%d: %s (cwd %s)", id, pid, rq.argv[0], rq.cwd);
	/* Queued before the loop reads the new pipes, so STARTED precedes any output. The credit it
	 * took tells the host that flow control is on (an agent without it sends the pid alone). */
	uint8_t started[8];
	put_be32(started, (uint32_t)pid);
	put_be32(started + 4, EXEC_WINDOW);
	send_frame(T_STARTED, id, started, e->flow ? 8 : 4);
	free_req(&rq);
	return;

close_pipes:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0) close(in[i]);
		if (out[i] >= 0) close(out[i]);
		if (errp[i] >= 0) close(errp[i]);
	}
	close_fd(&master);
	close_fd(&slave);
	close_fd(&master_in);
out:
	free_req(&rq);
}

/* ------------------------------------------------------------------------------------------ */
/* STDIN, KILL and CREDIT */

void handle_stdin(uint32_t id, const uint8_t *p, size_t len)
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

void handle_kill(uint32_t id, const uint8_t *p, size_t len)
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


/* A new size for an exec's terminal: TIOCSWINSZ on its master, which sends SIGWINCH to the
 * terminal's foreground process group when the size changed. */
void handle_resize(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 8) {
		send_error(id, E_MALFORMED, "RESIZE payload must be 8 bytes, got %zu", len);
		return;
	}
	uint32_t rows = get_be32(p), cols = get_be32(p + 4);
	if (rows < 1 || rows > MAX_TTY_DIM || cols < 1 || cols > MAX_TTY_DIM) {
		send_error(id, E_MALFORMED, "terminal size %ux%u out of range (1..1000 each)", cols, rows);
		return;
	}
	struct exec *e = find_exec(id);
	if (!e) {
		send_error(id, E_UNKNOWN_ID, "no running exec with id %u", id);
		return;
	}
	if (!e->tty) {
		send_error(id, E_WRONG_TYPE, "exec %u has no terminal", id);
		return;
	}
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	if (e->out_fd >= 0 && ioctl(e->out_fd, TIOCSWINSZ, &ws) != 0) {
		send_error(id, E_SYSCALL, "TIOCSWINSZ: %s", strerror(errno));
		return;
	}
	send_frame(T_OK, id, NULL, 0);
}

/* More output credit for a flow-controlled exec. No reply: an exec that ended while the credit was
 * on its way (or one that lost flow control) simply has no use for it. */
void handle_credit(uint32_t id, const uint8_t *p, size_t len)
{
	if (len != 4) {
		send_error(id, E_MALFORMED, "CREDIT payload must be 4 bytes, got %zu", len);
		return;
	}
	struct exec *e = find_exec(id);
	if (!e || !e->flow) return;
	e->credit += get_be32(p); /* a u64 sum of u32 grants: no overflow in practice */
}

/* The host that granted credit is gone (or a new one says it knows none of these execs): nobody
 * will grant more, so output flows as it comes again, and is dropped while nobody listens. */
void release_flow(void)
{
	for (int i = 0; i < MAX_EXECS; i++) g_execs[i].flow = false;
}
