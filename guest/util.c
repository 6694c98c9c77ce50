/*
 * Small helpers shared by every part of the agent: clocks, logging, fatal errors, byte queues and
 * the reader of request payloads.
 */
#include "agent.h"

#include <stdarg.h>
#include <sys/reboot.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void write_all(int fd, const char *s, size_t n)
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
void __attribute__((format(printf, 1, 2))) warnx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog("", fmt, ap);
	va_end(ap);
}

void __attribute__((format(printf, 1, 2))) debugx(const char *fmt, ...)
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
void __attribute__((noreturn, format(printf, 1, 2))) fatal(const char *fmt, ...)
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
char *read_text(const char *path, size_t max)
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

bool buf_reserve(struct buf *b, size_t n)
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

void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof *b);
}

void buf_consume(struct buf *b, size_t n)
{
	b->head += n;
	b->len -= n;
	if (b->len == 0) {
		b->head = 0;
		if (b->cap > SHRINK_AT) buf_free(b); /* idle memory matters: give big buffers back */
	}
}

bool buf_append(struct buf *b, const void *p, size_t n)
{
	if (!buf_reserve(b, n)) return false;
	memcpy(buf_tail(b), p, n);
	b->len += n;
	return true;
}

void close_fd(int *fd)
{
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Payload reader */

bool rd_u32(struct reader *r, uint32_t *v)
{
	if (r->len - r->off < 4) return false;
	*v = get_be32(r->p + r->off);
	r->off += 4;
	return true;
}

/* Copies the next string out NUL-terminated; a string with a NUL inside cannot be an argument. */
const char *rd_str(struct reader *r, char **out)
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

bool rd_u64(struct reader *r, uint64_t *v)
{
	uint32_t hi, lo;
	if (r->len - r->off < 8) return false;
	rd_u32(r, &hi);
	rd_u32(r, &lo);
	*v = (uint64_t)hi << 32 | lo;
	return true;
}

