/*
 * The channel to the host and the event loop: outgoing frames queue in g_out and are written when
 * the channel is writable; incoming bytes are decoded into frames and handed to the request
 * handlers; one poll() loop serves the channel, the signalfd and the pipes of every exec.
 */
#include "agent.h"

#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <sys/signalfd.h>

int g_in_fd = -1, g_out_fd = -1; /* the channel (the same fd in PID 1 mode) */
int g_sig_fd = -1;               /* signalfd: SIGCHLD, SIGIO */
bool g_chan_up = true;           /* false between a host disconnect and its next data */
static int g_backoff_ms;         /* while the host is away: how long to leave the port */
static int64_t g_backoff_until;

static struct buf g_in; /* bytes read from the channel, not yet decoded */
struct buf g_out;       /* frames waiting for the channel to be writable */

/* ------------------------------------------------------------------------------------------ */
/* Outgoing frames */

void put_header(uint8_t *h, uint8_t type, uint32_t id, uint32_t len)
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
void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len)
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

void __attribute__((format(printf, 3, 4))) send_error(uint32_t id, uint16_t code, const char *fmt, ...)
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

void send_ok_u32(uint32_t id, uint32_t v)
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
void flush_out_blocking(int timeout_ms)
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
	case T_SYNC: handle_sync(id, len); break;
	case T_CREDIT: handle_credit(id, p, len); break;
	case T_FREEZE: handle_freeze(id, len); break;
	case T_THAW: handle_thaw(id, len); break;
	case T_RESIZE: handle_resize(id, p, len); break;
	case T_VOLUMES: handle_volumes(id, p, len); break;
	case T_HOST_HELLO:
		if (len) send_error(id, E_MALFORMED, "HOST_HELLO payload must be empty, got %zu bytes", len);
		else release_flow();
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
	release_flow();    /* nor grant credit to execs it does not know */
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

enum { K_SIG, K_CHAN_IN, K_CHAN_OUT, K_OUT, K_ERR, K_IN, K_KMSG, K_PSI };

void __attribute__((noreturn)) serve(void)
{
	static struct pollfd pfd[5 + 3 * MAX_EXECS];
	static struct { int kind, slot; } what[5 + 3 * MAX_EXECS];

	for (;;) {
		int n = 0, timeout = -1;
		/* First, before the fds are collected: it may close some. A terminal some background job
		 * holds after its exec ended is hung up once it has been quiet for TTY_HUP_MS. */
		int hup = tty_hangups();
#define WATCH(fd_, ev_, kind_, slot_) \
	(pfd[n] = (struct pollfd){ .fd = (fd_), .events = (ev_) }, what[n].kind = (kind_), what[n].slot = (slot_), n++)

		/* Before the signalfd: an OOM kill is logged before its victim dies, so the host learns of
		 * it before that exec's EXIT. */
		if (g_kmsg_fd >= 0) WATCH(g_kmsg_fd, POLLIN, K_KMSG, -1);
		if (g_psi_fd >= 0) WATCH(g_psi_fd, POLLPRI, K_PSI, -1);
		WATCH(g_sig_fd, POLLIN, K_SIG, -1);
		for (int i = 0; i < MAX_EXECS; i++) {
			struct exec *e = &g_execs[i];
			if (!e->used) continue;
			/* Backpressure: a slow channel slows every process down; a slow reader of one exec
			 * (no credit left) only that one. */
			if (g_out.len < OUT_HIGH && (!e->flow || e->credit > 0)) {
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
		if (hup >= 0 && (timeout < 0 || hup < timeout)) timeout = hup;
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
			case K_KMSG:
				if (g_kmsg_fd == pfd[i].fd) read_kmsg();
				break;
			case K_PSI:
				if (rev & POLLPRI) memory_pressure();
				else if (rev & (POLLERR | POLLNVAL)) close_fd(&g_psi_fd);
				break;
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
