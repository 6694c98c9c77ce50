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
 * a chunk per loop turn while that queue is short, the way exec pipes are (OUT_HIGH). An exec the
 * host asked to flow-control (EXEC_FLOW) has its pipes read only while it has credit left, so a
 * host that reads one exec's output slowly holds back that process, not the channel.
 *
 * The parts: main.c (PID 1 start-up, --stdio mode, shut-down), loop.c (framing, outgoing queue,
 * event loop), exec.c (processes), files.c (file requests), machine.c (signals, time, entropy,
 * sync, identity), oom.c (OOM kills from the kernel log), util.c (logging, byte queues, payload
 * reader). This header holds what they
 * share: the wire constants, the bounds, the shared types, globals and functions.
 *
 * Build (in guest/): gcc -static -Os -Wall -Wextra -Werror -o agent *.c
 */
#ifndef CELL_AGENT_H
#define CELL_AGENT_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define AGENT_VERSION "0.11.1"

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
#define EXEC_FLOW 2u            /* EXEC flag: the exec's output is flow-controlled by CREDIT frames */
#define EXEC_WINDOW (256u << 10) /* the output credit a flow-controlled exec starts with */
#define EXEC_TTY 4u             /* EXEC flag: run on a new pseudo-terminal (rows and cols follow env) */
#define EXEC_ASIDE 8u           /* EXEC flag: outside the workload cgroup, which stays frozen (a spare warming up) */
#define MAX_TTY_DIM 1000u       /* rows and cols of a terminal: 1..1000 */
#define TTY_HUP_MS 200          /* a tty exec's leader is gone but something still holds the terminal: wait this long for output, then hang up */
#define DEFAULT_TERM "TERM=xterm-256color"

enum {
	T_PING = 0x01, T_EXEC, T_STDIN, T_KILL, T_SET_TIME, T_ADD_ENTROPY, T_SHUTDOWN, T_SIGNAL_ALL, T_SET_IDENTITY,
	T_PUT_FILE = 0x0A, T_FILE_DATA, T_FILE_END, T_MKDIR, T_SYMLINK, T_READ_FILE, T_LIST_DIR, T_STAT, T_CANCEL, T_SYNC,
	T_CREDIT = 0x14, T_HOST_HELLO, T_FREEZE, T_THAW, T_RESIZE, T_VOLUMES,
	T_OK = 0x80, T_PONG, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_HELLO, T_DATA, T_OOM, T_ERROR = 0x8F,
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
/* Shared types */

struct buf {
	uint8_t *data;
	size_t head, len, cap; /* live bytes are data[head .. head+len) */
};

struct exec {
	bool used;
	uint32_t id;
	pid_t pid;
	int out_fd, err_fd, in_fd; /* our pipe ends, -1 once closed; with a tty: the master (out) and a dup of it (in) */
	bool reaped;
	int status;
	struct buf inq;  /* stdin bytes the process has not taken yet */
	bool in_close;   /* host closed stdin: close the pipe once inq drains */
	bool in_dropped; /* stdin overflowed: further stdin data is discarded */
	bool flow;       /* output only while credit lasts (EXEC_FLOW); off once its host is gone */
	uint64_t credit; /* output bytes the host still takes from this exec */
	bool tty;        /* runs on a pseudo-terminal: out_fd is its master, no err_fd */
	int64_t hup_at;  /* tty exec reaped: when to stop waiting for output from other holders of the terminal */
};

/* A request payload being parsed (rd_*). */
struct reader {
	const uint8_t *p;
	size_t len, off;
	char *store; /* where the next string is copied to */
};

/* ------------------------------------------------------------------------------------------ */
/* Globals (each defined in the file named) */

/* main.c */
extern bool g_stdio;      /* --stdio test mode */
extern bool g_debug;      /* cell.debug=1 or --debug */
extern int g_log_fd;      /* /dev/console in PID 1 mode, stderr in --stdio mode */
extern pid_t g_self;
extern struct rlimit g_nofile; /* RLIMIT_NOFILE as inherited, restored in exec children */
extern bool g_nofile_saved;

/* loop.c */
extern int g_in_fd, g_out_fd; /* the channel (the same fd in PID 1 mode) */
extern int g_sig_fd;          /* signalfd: SIGCHLD, SIGIO */
extern bool g_chan_up;        /* false between a host disconnect and its next data */
extern struct buf g_out;      /* frames waiting for the channel to be writable */

/* exec.c */
extern struct exec g_execs[MAX_EXECS];

/* files.c */
extern int g_npump; /* READ_FILE and LIST_DIR transfers: the event loop feeds them */

/* oom.c */
extern int g_kmsg_fd; /* the kernel log, watched for OOM kills; -1 when not watched */
extern int g_psi_fd;  /* PID 1 mode: the memory pressure (PSI) trigger of the thrashing valve, or -1 */

/* ------------------------------------------------------------------------------------------ */
/* Big-endian fields and the free end of a byte queue */

static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}
static inline uint8_t *buf_tail(struct buf *b) { return b->data + b->head + b->len; }

/* ------------------------------------------------------------------------------------------ */
/* Functions */

/* util.c */
int64_t mono_ms(void);
void sleep_ms(long ms);
void set_nonblock(int fd);
void write_all(int fd, const char *s, size_t n);
void __attribute__((format(printf, 1, 2))) warnx(const char *fmt, ...);
void __attribute__((format(printf, 1, 2))) debugx(const char *fmt, ...);
void __attribute__((noreturn, format(printf, 1, 2))) fatal(const char *fmt, ...);
char *read_text(const char *path, size_t max);
bool buf_reserve(struct buf *b, size_t n);
void buf_free(struct buf *b);
void buf_consume(struct buf *b, size_t n);
bool buf_append(struct buf *b, const void *p, size_t n);
void close_fd(int *fd);
bool rd_u32(struct reader *r, uint32_t *v);
bool rd_u64(struct reader *r, uint64_t *v);
const char *rd_str(struct reader *r, char **out);

/* loop.c */
void put_header(uint8_t *h, uint8_t type, uint32_t id, uint32_t len);
void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len);
void __attribute__((format(printf, 3, 4))) send_error(uint32_t id, uint16_t code, const char *fmt, ...);
void send_ok_u32(uint32_t id, uint32_t v);
void flush_out_blocking(int timeout_ms);
void __attribute__((noreturn)) serve(void);

/* exec.c */
struct exec *find_exec(uint32_t id);
void reap_children(void);
void read_output(struct exec *e, int *fd, uint8_t type);
void flush_stdin(struct exec *e);
void handle_exec(uint32_t id, const uint8_t *p, size_t len);
void handle_stdin(uint32_t id, const uint8_t *p, size_t len);
void handle_kill(uint32_t id, const uint8_t *p, size_t len);
void handle_credit(uint32_t id, const uint8_t *p, size_t len);
void handle_resize(uint32_t id, const uint8_t *p, size_t len);
void handle_volumes(uint32_t id, const uint8_t *p, size_t len);
void release_flow(void);
int tty_hangups(void);

/* machine.c */
void handle_signal_all(uint32_t id, const uint8_t *p, size_t len);
void handle_set_time(uint32_t id, const uint8_t *p, size_t len);
void handle_add_entropy(uint32_t id, const uint8_t *p, size_t len);
void handle_sync(uint32_t id, size_t len);
void workload_cgroup_setup(void);
void network_up(const char *spec);
void join_workload_cgroup(void);
void thaw_workload(void);
void handle_freeze(uint32_t id, size_t len);
void handle_thaw(uint32_t id, size_t len);
void handle_set_identity(uint32_t id, const uint8_t *p, size_t len);
const char *write_hostname_file(const char *hostname);

/* files.c */
void handle_put_file(uint32_t id, const uint8_t *p, size_t len);
void handle_file_data(uint32_t id, const uint8_t *p, size_t len);
void handle_file_end(uint32_t id, const uint8_t *p, size_t len);
void handle_mkdir(uint32_t id, const uint8_t *p, size_t len);
void handle_symlink(uint32_t id, const uint8_t *p, size_t len);
void handle_stat(uint32_t id, const uint8_t *p, size_t len);
void handle_download(uint8_t type, uint32_t id, const uint8_t *p, size_t len);
void handle_cancel(uint32_t id, size_t len);
void pump_xfers(void);
void abort_all_xfers(void);

/* oom.c */
void oom_watch_open(const char *path);
void read_kmsg(void);
void thrash_watch_open(void);
void memory_pressure(void);

/* main.c */
void __attribute__((noreturn)) stdio_exit(int code);
void handle_shutdown(uint32_t id, const uint8_t *p, size_t len);

#endif
