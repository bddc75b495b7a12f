/* exec.c: interactive exec over WebSocket (PROTOCOL.md §4): /exec/v1/start, list, kill and the
 * attach WebSocket.
 *
 * Owns: the exec table (records of live and recently exited execs), each exec's two output
 * rings, its stdin queue and the attached clients. The child itself is a struct proc of kind
 * PK_IEXEC in the process engine (proc.c), which spawns it (optionally on a new PTY), watches
 * its pipes and pidfd, and kills its group; exec.c sees it only through its proc_ops.
 *
 * Threads: start parses, resolves the cwd and spawns on a worker, then hands the child to the
 * service thread (proc_start_post) and replies from there. Everything else (the table, the
 * rings, the clients, stdin writes, list/kill, the WebSocket callbacks, the timers) runs on the
 * service thread only. The live-exec counter is atomic because workers reserve slots.
 *
 * Lifetime: a record is created when the child is adopted and lives until 10 minutes after the
 * child finished (reaped and output drained), or until shutdown (exec_table_free). Its struct
 * proc goes away earlier: once finished it is purged, and ops->release clears x->p. A client
 * holds a pointer to its record; a record going away detaches (and closes) its clients first.
 *
 * Flow control: each channel's ring keeps the last 8 MiB and a client reads it at its own pace
 * through a cursor, at most CLIENT_QUEUE_MAX bytes queued in lws at a time, topped up when lws
 * has written everything (the handler's drain hook) and by a timer. While a client is attached,
 * the child's output is never dropped: once some client lags FLOW_HIWAT bytes behind, the pipes
 * (or the PTY) are no longer read, so the child blocks on write, as it would under ssh, until
 * every client is back under FLOW_LOWAT. Without clients the ring just keeps the newest bytes;
 * a client whose cursor fell out of the ring (it attached late) gets a "skipped" frame. stdin goes through a bounded queue drained with non-blocking writes;
 * above STDIN_HIWAT the WebSocket that sent the data has its rx paused until the queue drains. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "events.h"
#include "fsapi.h"
#include "misc.h"
#include "proc.h"

#define EXEC_LIVE_MAX    64
#define EXEC_RECORDS_MAX 256                 /* finished records kept beyond: oldest dropped */
#define EXEC_TTL_MS      (10ull * 60 * 1000) /* records kept after exit */
#define RING_MAX         (8u << 20)          /* per channel */
#define RING_MIN         (64u << 10)
#define RING_TOTAL       (256u << 20) /* all rings together: see ring_grow() */
#define FRAME_DATA_MAX   (256u << 10) /* output bytes per binary frame */
#define CLIENT_QUEUE_MAX (2u << 20)   /* bytes queued per client before waiting */
#define STDIN_HIWAT      (1u << 20)   /* pending stdin: pause the sender above */
#define STDIN_LOWAT      (256u << 10) /* ... resume below */
#define STDIN_MSG_MAX    (256u << 10) /* one inbound WebSocket message */
#define PUMP_MS          10           /* lagging clients: top-up interval */
#define FLOW_HIWAT       (4u << 20)   /* a client this far behind pauses the child's output */
#define FLOW_LOWAT       (1u << 20)   /* ... until every client is back under this */
#define STDIN_RETRY_MS   10           /* stdin full: retry interval */
#define SWEEP_SECS       30
#define MAX_TIMEOUT      (10ll * 365 * 24 * 3600)

/* Bytes [first, next) of a channel's output, stored at offset % cap. */
struct ring {
	char *buf;
	size_t cap; /* 0 until the first byte; doubles up to RING_MAX */
	uint64_t first, next;
};

struct xclient;

struct xexec {
	struct xexec *next, *prev; /* in the table */
	char id[9];
	pid_t pid;
	char **argv;
	bool tty;
	struct proc *p; /* NULL once finished (purged) or at shutdown */
	bool running;   /* the leader has not been reaped */
	bool finished;  /* reaped and output drained: exit frames may go out */
	bool signaled;
	int status;     /* exit code, or the signal number when signaled */
	bool slot_held; /* counted in live_execs */
	bool out_paused; /* reading the child's output is paused for a lagging client */
	struct timespec start, end;
	uint64_t end_ms;
	struct ring ring[2]; /* stdout, stderr */

	int in_w;  /* stdin pipe / PTY master dup; -1 once closed */
	char *inq; /* pending stdin bytes */
	size_t inq_len, inq_cap;
	bool eof_pending; /* close stdin once inq is written (pipe only) */
	lws_sorted_usec_list_t sul_stdin;

	struct xclient *clients;
};

struct xclient {
	struct xclient *next, *prev;
	struct wsconn *c;
	struct xexec *x; /* NULL once the record went away */
	uint64_t cur[2]; /* next offset to send per channel */
	bool exit_sent;
	bool rx_paused; /* by the stdin queue */
};

/* Service thread only, except live_execs. */
struct exec_table {
	struct agent *ag;
	struct xexec *head, *tail;
	int n;
	lws_sorted_usec_list_t sul_pump, sul_sweep;
	bool pump_scheduled;
	size_t ring_bytes; /* allocated by every record's rings */
};

static struct exec_table *table;
static atomic_int live_execs;

/* ---- errors (PROTOCOL.md §1): the status table and JSON shape are fsapi.c's --------------- */

static cJSON *error_obj(int err, const char *fmt, va_list ap)
{
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "error", dbx_errno_name(err));
	cJSON_AddItemToObject(o, "message", proc_json_str(msg, strlen(msg)));
	return o;
}

static void reply_error(struct req *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void reply_error(struct req *r, int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fs_reply_error(r, err, msg);
}

static void ws_error(struct wsconn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void ws_error(struct wsconn *c, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	cJSON *o = error_obj(err, fmt, ap);
	va_end(ap);
	cJSON_AddStringToObject(o, "type", "error");
	ws_send_json(c, o);
}

/* ---- signal names ------------------------------------------------------------------------ */

/* "SIGINT", "INT", "SIGRTMIN+3", "RTMAX-1" or a number; 0 if unknown. */
static int signal_from_name(const char *s)
{
	if (!s || !*s)
		return 0;
	if (strncmp(s, "SIG", 3) == 0)
		s += 3;
	char *end;
	if (*s >= '0' && *s <= '9') {
		long n = strtol(s, &end, 10);
		return *end || n < 1 || n > SIGRTMAX ? 0 : (int)n;
	}
	if (strncmp(s, "RTMIN", 5) == 0 || strncmp(s, "RTMAX", 5) == 0) {
		bool max = s[4] == 'X';
		long off = 0;
		if (s[5]) {
			if ((max && s[5] != '-') || (!max && s[5] != '+') || !s[6])
				return 0;
			off = strtol(s + 6, &end, 10);
			if (*end || off < 0 || off > SIGRTMAX - SIGRTMIN)
				return 0;
		}
		return max ? SIGRTMAX - (int)off : SIGRTMIN + (int)off;
	}
	for (int sig = 1; sig < SIGRTMIN; sig++) {
		const char *abbr = sigabbrev_np(sig);
		if (abbr && strcmp(abbr, s) == 0)
			return sig;
	}
	return 0;
}

static void signal_name(int sig, char *out, size_t len)
{
	const char *abbr = sig < SIGRTMIN ? sigabbrev_np(sig) : NULL;
	if (abbr)
		snprintf(out, len, "SIG%s", abbr);
	else if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(out, len, "SIGRTMIN+%d", sig - SIGRTMIN);
	else
		snprintf(out, len, "%d", sig);
}

/* ---- output rings ------------------------------------------------------------------------ */

static void ring_copy_out(const struct ring *rg, uint64_t off, char *dst, size_t n)
{
	size_t pos = (size_t)(off % rg->cap);
	size_t a = rg->cap - pos < n ? rg->cap - pos : n;
	memcpy(dst, rg->buf + pos, a);
	memcpy(dst + a, rg->buf, n - a);
}

static void exec_drop(struct xexec *x);

/* Drops the oldest finished record other than @keep; false if there is none. */
static bool drop_oldest_finished(struct xexec *keep)
{
	for (struct xexec *q = table->head; q; q = q->next) {
		if (q != keep && q->finished) {
			exec_drop(q);
			return true;
		}
	}
	return false;
}

/* Grows @rg (of @owner) towards @want bytes, doubling up to RING_MAX. Over the table-wide
 * RING_TOTAL the oldest finished records are dropped; when only live ones remain the ring stays
 * as it is and simply keeps less history. */
static int ring_grow(struct xexec *owner, struct ring *rg, size_t want)
{
	size_t cap = rg->cap ? rg->cap : RING_MIN;
	while (cap < want && cap < RING_MAX)
		cap *= 2;
	if (cap <= rg->cap)
		return 0;
	while (rg->cap && table->ring_bytes - rg->cap + cap > RING_TOTAL)
		if (!drop_oldest_finished(owner))
			return 0;
	char *nb = malloc(cap);
	if (!nb)
		return -ENOMEM;
	uint64_t len = rg->next - rg->first;
	if (len) {
		/* Re-lay the kept bytes at their offset modulo the new size. */
		size_t pos = (size_t)(rg->first % cap);
		size_t a = cap - pos < len ? cap - pos : (size_t)len;
		ring_copy_out(rg, rg->first, nb + pos, a);
		ring_copy_out(rg, rg->first + a, nb, (size_t)len - a);
	}
	table->ring_bytes += cap - rg->cap;
	free(rg->buf);
	rg->buf = nb;
	rg->cap = cap;
	return 0;
}

static void ring_append(struct xexec *owner, struct ring *rg, const char *d, size_t n)
{
	if (ring_grow(owner, rg, (size_t)(rg->next - rg->first) + n) < 0 && !rg->cap) {
		rg->first = rg->next += n; /* no memory at all: clients see them as skipped */
		return;
	}
	if (n > rg->cap) {
		rg->next += n - rg->cap;
		d += n - rg->cap;
		n = rg->cap;
	}
	size_t pos = (size_t)(rg->next % rg->cap);
	size_t a = rg->cap - pos < n ? rg->cap - pos : n;
	memcpy(rg->buf + pos, d, a);
	memcpy(rg->buf, d + a, n - a);
	rg->next += n;
	if (rg->next - rg->first > rg->cap)
		rg->first = rg->next - rg->cap;
}

/* ---- clients ----------------------------------------------------------------------------- */

static void pump_cb(lws_sorted_usec_list_t *sul);

static void schedule_pump(void)
{
	if (!table || table->pump_scheduled)
		return;
	table->pump_scheduled = true;
	lws_sul_schedule(table->ag->ctx, 0, &table->sul_pump, pump_cb, PUMP_MS * LWS_US_PER_MS);
}

static cJSON *offsets_pair(const struct ring *rg)
{
	cJSON *a = cJSON_CreateArray();
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)rg->first));
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)rg->next));
	return a;
}

static void send_exit(struct xclient *cl)
{
	struct xexec *x = cl->x;
	char name[32];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", "exit");
	if (x->signaled) {
		signal_name(x->status, name, sizeof(name));
		cJSON_AddNullToObject(o, "exitCode");
		cJSON_AddStringToObject(o, "signal", name);
	} else {
		cJSON_AddNumberToObject(o, "exitCode", x->status);
		cJSON_AddNullToObject(o, "signal");
	}
	ws_send_json(cl->c, o);
	cl->exit_sent = true;
}

/* Queue what @cl has not seen yet, up to CLIENT_QUEUE_MAX in lws. True when caught up. */
static bool pump(struct xclient *cl)
{
	static unsigned char frame[9 + FRAME_DATA_MAX];
	struct xexec *x = cl->x;
	if (!x || cl->exit_sent)
		return true;
	for (;;) {
		bool progress = false;
		for (int ch = 0; ch < 2; ch++) {
			struct ring *rg = &x->ring[ch];
			if (ws_queued(cl->c) >= CLIENT_QUEUE_MAX)
				return false;
			if (cl->cur[ch] < rg->first) {
				cJSON *o = cJSON_CreateObject();
				cJSON_AddStringToObject(o, "type", "skipped");
				cJSON_AddNumberToObject(o, "channel", ch + 1);
				cJSON_AddNumberToObject(o, "from", (double)cl->cur[ch]);
				cJSON_AddNumberToObject(o, "to", (double)rg->first);
				ws_send_json(cl->c, o);
				cl->cur[ch] = rg->first;
			}
			if (cl->cur[ch] >= rg->next)
				continue;
			uint64_t left = rg->next - cl->cur[ch];
			size_t n = left < FRAME_DATA_MAX ? (size_t)left : FRAME_DATA_MAX;
			frame[0] = (unsigned char)(ch + 1);
			for (int i = 0; i < 8; i++)
				frame[1 + i] = (unsigned char)(cl->cur[ch] >> (56 - 8 * i));
			ring_copy_out(rg, cl->cur[ch], (char *)frame + 9, n);
			if (ws_send(cl->c, true, frame, 9 + n) < 0)
				return false;
			cl->cur[ch] += n;
			progress = true;
		}
		if (!progress)
			break;
	}
	if (x->finished)
		send_exit(cl);
	return true;
}

/* Backpressure: pause the child's output while a client lags FLOW_HIWAT behind the newest
 * byte, resume when all are under FLOW_LOWAT (or gone). */
static void flow_update(struct xexec *x)
{
	uint64_t lag = 0;
	for (struct xclient *cl = x->clients; cl; cl = cl->next) {
		if (cl->exit_sent)
			continue;
		for (int ch = 0; ch < 2; ch++) {
			uint64_t l = x->ring[ch].next - cl->cur[ch];
			if (l > lag)
				lag = l;
		}
	}
	bool pause = x->out_paused ? lag > FLOW_LOWAT : lag >= FLOW_HIWAT;
	if (pause == x->out_paused || !x->p)
		return;
	x->out_paused = pause;
	proc_pause_output(x->p, pause);
}

static void pump_all(struct xexec *x)
{
	bool lag = false;
	for (struct xclient *cl = x->clients; cl; cl = cl->next)
		lag |= !pump(cl);
	if (lag)
		schedule_pump();
	flow_update(x);
}

static void pump_cb(lws_sorted_usec_list_t *sul)
{
	struct exec_table *t = lws_container_of(sul, struct exec_table, sul_pump);
	t->pump_scheduled = false;
	for (struct xexec *x = t->head; x; x = x->next)
		pump_all(x);
}

static void client_detach(struct xclient *cl)
{
	struct xexec *x = cl->x;
	if (!x)
		return;
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		x->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	cl->next = cl->prev = NULL;
	cl->x = NULL;
}

/* ---- stdin ------------------------------------------------------------------------------- */

static void stdin_resume_all(struct xexec *x)
{
	for (struct xclient *cl = x->clients; cl; cl = cl->next) {
		if (cl->rx_paused) {
			cl->rx_paused = false;
			ws_rx_pause(cl->c, false);
		}
	}
}

static void stdin_close(struct xexec *x)
{
	lws_sul_cancel(&x->sul_stdin);
	if (x->in_w >= 0) {
		close(x->in_w);
		x->in_w = -1;
	}
	free(x->inq);
	x->inq = NULL;
	x->inq_len = x->inq_cap = 0;
	x->eof_pending = false;
	stdin_resume_all(x);
}

static void stdin_retry_cb(lws_sorted_usec_list_t *sul);

/* Writes what the queue holds without blocking; reschedules itself while the child is not
 * reading. */
static void stdin_flush(struct xexec *x)
{
	size_t off = 0;
	while (x->in_w >= 0 && off < x->inq_len) {
		ssize_t n = write(x->in_w, x->inq + off, x->inq_len - off);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* EPIPE (nobody reads any more), EIO (PTY hung up): stdin is gone. */
		stdin_close(x);
		return;
	}
	if (off) {
		memmove(x->inq, x->inq + off, x->inq_len - off);
		x->inq_len -= off;
	}
	if (x->inq_len) {
		if (x->in_w >= 0)
			lws_sul_schedule(table->ag->ctx, 0, &x->sul_stdin, stdin_retry_cb,
					 STDIN_RETRY_MS * LWS_US_PER_MS);
	} else if (x->eof_pending) {
		stdin_close(x);
		return;
	}
	if (x->inq_len <= STDIN_LOWAT)
		stdin_resume_all(x);
}

static void stdin_retry_cb(lws_sorted_usec_list_t *sul)
{
	stdin_flush(lws_container_of(sul, struct xexec, sul_stdin));
}

static void stdin_write(struct xclient *cl, const char *d, size_t n)
{
	struct xexec *x = cl->x;
	if (x->in_w < 0 || x->eof_pending) {
		ws_error(cl->c, EPIPE, "stdin of exec %s is closed", x->id);
		return;
	}
	if (x->inq_len + n > x->inq_cap) {
		size_t cap = x->inq_cap ? x->inq_cap : 64u << 10;
		while (cap < x->inq_len + n)
			cap *= 2;
		char *nq = realloc(x->inq, cap);
		if (!nq) {
			ws_error(cl->c, ENOMEM, "stdin of exec %s: out of memory", x->id);
			return;
		}
		x->inq = nq;
		x->inq_cap = cap;
	}
	memcpy(x->inq + x->inq_len, d, n);
	x->inq_len += n;
	stdin_flush(x);
	if (x->inq_len > STDIN_HIWAT && !cl->rx_paused) {
		cl->rx_paused = true;
		ws_rx_pause(cl->c, true);
	}
}

/* ---- records ------------------------------------------------------------------------------ */

static struct xexec *exec_find(const char *id)
{
	if (!table || !id)
		return NULL;
	for (struct xexec *x = table->head; x; x = x->next)
		if (strcmp(x->id, id) == 0)
			return x;
	return NULL;
}

static void slot_release(struct xexec *x)
{
	if (x->slot_held) {
		x->slot_held = false;
		atomic_fetch_sub(&live_execs, 1);
	}
}

static void xexec_free(struct xexec *x)
{
	if (!x)
		return;
	slot_release(x);
	proc_strv_free(x->argv);
	if (x->in_w >= 0)
		close(x->in_w);
	free(x->inq);
	for (int i = 0; i < 2; i++) {
		if (x->ring[i].cap) /* only service-thread records have rings */
			table->ring_bytes -= x->ring[i].cap;
		free(x->ring[i].buf);
	}
	free(x);
}

/* Unlinks and frees @x: its clients are told and closed, its child (if any) killed. */
static void exec_drop(struct xexec *x)
{
	while (x->clients) {
		struct xclient *cl = x->clients;
		client_detach(cl);
		ws_close(cl->c, LWS_CLOSE_STATUS_GOINGAWAY, "exec record removed");
	}
	lws_sul_cancel(&x->sul_stdin);
	if (x->p) {
		struct proc *p = x->p;
		proc_kill_group(p);
		proc_purge(p); /* release() clears x->p */
	}
	if (x->prev)
		x->prev->next = x->next;
	else
		table->head = x->next;
	if (x->next)
		x->next->prev = x->prev;
	else
		table->tail = x->prev;
	table->n--;
	xexec_free(x);
}

static void sweep_cb(lws_sorted_usec_list_t *sul)
{
	struct exec_table *t = lws_container_of(sul, struct exec_table, sul_sweep);
	uint64_t now = dbx_now_ms();
	struct xexec *x = t->head;
	while (x) {
		struct xexec *next = x->next;
		if (x->finished && now - x->end_ms >= EXEC_TTL_MS)
			exec_drop(x);
		x = next;
	}
	lws_sul_schedule(t->ag->ctx, 0, &t->sul_sweep, sweep_cb, SWEEP_SECS * LWS_US_PER_SEC);
}

static int table_get(struct agent *ag)
{
	if (table)
		return 0;
	table = calloc(1, sizeof(*table));
	if (!table)
		return -ENOMEM;
	table->ag = ag;
	lws_sul_schedule(ag->ctx, 0, &table->sul_sweep, sweep_cb, SWEEP_SECS * LWS_US_PER_SEC);
	return 0;
}

static void table_add(struct xexec *x)
{
	int finished = 0;
	for (struct xexec *q = table->head; q; q = q->next)
		finished += q->finished;
	for (struct xexec *q = table->head; q && finished >= EXEC_RECORDS_MAX;) {
		struct xexec *next = q->next;
		if (q->finished) {
			exec_drop(q);
			finished--;
		}
		q = next;
	}
	x->prev = table->tail;
	if (table->tail)
		table->tail->next = x;
	else
		table->head = x;
	table->tail = x;
	table->n++;
}

/* Signals @x's process group. After the leader was reaped, members still holding its output
 * keep the group id allocated, so the group is signalled while that output is open. */
static int exec_signal(struct xexec *x, int sig)
{
	struct proc *p = x->p;
	if (!p)
		return -ESRCH;
	if (x->running)
		return proc_signal(p, sig);
	if (!p->out[0].wsi && !p->out[1].wsi)
		return -ESRCH;
	return killpg(x->pid, sig) < 0 ? -errno : 0;
}

/* ---- proc_ops (service thread) ------------------------------------------------------------ */

static void iexec_output(struct proc *p, int which, const char *d, size_t n)
{
	struct xexec *x = p->ext;
	if (!x)
		return;
	ring_append(x, &x->ring[which], d, n);
	pump_all(x);
}

static void iexec_reaped(struct proc *p)
{
	struct xexec *x = p->ext;
	if (!x)
		return;
	x->running = false;
	x->signaled = p->signaled;
	x->status = p->signaled ? p->exit_code - 128 : p->exit_code;
	clock_gettime(CLOCK_REALTIME, &x->end);
	x->end_ms = dbx_now_ms();
	/* The slot stays held until the output is done (iexec_finished): a background child
	 * holding the pipes still holds fds and a record. */
}

static void iexec_finished(struct proc *p)
{
	struct xexec *x = p->ext;
	if (!x)
		return;
	x->finished = true;
	x->end_ms = dbx_now_ms();
	slot_release(x);
	stdin_close(x);
	proc_purge(p); /* frees p; release() clears x->p */
	pump_all(x);
}

static void iexec_release(struct proc *p)
{
	struct xexec *x = p->ext;
	if (x)
		x->p = NULL;
	p->ext = NULL;
}

static const struct proc_ops iexec_ops = {
	.output = iexec_output,
	.reaped = iexec_reaped,
	.finished = iexec_finished,
	.release = iexec_release,
};

/* ---- POST /exec/v1/start ------------------------------------------------------------------- */

static void start_started(struct proc *p, struct proc_start *ps)
{
	struct req *r = ps->r;
	struct xexec *x = p ? p->ext : ps->ext; /* adopt_cb moved it to p->ext */
	ps->ext = NULL;
	ps->r = NULL;
	if (p && table_get(ps->ag) < 0) {
		/* Nothing could ever attach: let the engine kill and reap it. */
		p->ext = NULL;
		p->ops = &proc_orphan_ops;
		p->drop_output = true;
		proc_kill_group(p);
		if (ps->sp.in_w >= 0)
			close(ps->sp.in_w);
		ps->sp.in_w = -1;
		p = NULL;
	}
	if (!p) {
		/* adopt_cb already killed the child and closed its fds (stdin included). */
		xexec_free(x);
		reply_error(r, EIO, "start: cannot watch the child process");
		req_unref(r);
		return;
	}
	x->p = p;
	x->pid = p->pid;
	x->running = true;
	x->in_w = ps->sp.in_w;
	ps->sp.in_w = -1;
	clock_gettime(CLOCK_REALTIME, &x->start);
	do
		dbx_random_id(x->id, 8);
	while (exec_find(x->id));
	table_add(x);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", x->id);
	cJSON_AddNumberToObject(o, "pid", x->pid);
	fs_reply_json(r, o);
	req_unref(r);
}

/* A valid variable name and a string value for each member of @env. */
static int check_env(struct req *r, cJSON *env)
{
	if (!env || cJSON_IsNull(env))
		return 0;
	if (!cJSON_IsObject(env)) {
		reply_error(r, EINVAL, "start: env must be an object of strings");
		return -1;
	}
	cJSON *it;
	cJSON_ArrayForEach(it, env)
	{
		if (!cJSON_IsString(it) || !*it->string || strchr(it->string, '=')) {
			reply_error(r, EINVAL,
				    "start: env.%s: expected a string under a valid name",
				    it->string);
			return -1;
		}
	}
	return 0;
}

static int get_uint(struct req *r, cJSON *body, const char *name, long long max, long long *out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(body, name);
	if (!it || cJSON_IsNull(it))
		return 0;
	if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > (double)max ||
	    it->valuedouble != (double)(long long)it->valuedouble) {
		reply_error(r, EINVAL, "start: %s must be an integer from 0 to %lld", name, max);
		return -1;
	}
	*out = (long long)it->valuedouble;
	return 0;
}

static void start_fn(struct req *r)
{
	size_t blen;
	const char *b = req_body(r, &blen);
	struct proc_spec spec;
	struct proc_fail fail;
	struct proc_spawned sp;
	struct xexec *x = NULL;
	cJSON *env_copy = NULL;
	bool slot = false;

	memset(&spec, 0, sizeof(spec));
	spec.cwdfd = -1;
	cJSON *body = b ? cJSON_ParseWithLength(b, blen) : NULL;
	if (!body || !cJSON_IsObject(body)) {
		reply_error(r, EINVAL, "start: the body must be a JSON object");
		goto out;
	}
	cJSON *argv = cJSON_GetObjectItemCaseSensitive(body, "argv");
	int argc = cJSON_IsArray(argv) ? cJSON_GetArraySize(argv) : 0;
	if (argc < 1) {
		reply_error(r, EINVAL, "start: argv must be a non-empty array of strings");
		goto out;
	}
	cJSON *it;
	cJSON_ArrayForEach(it, argv)
	{
		if (!cJSON_IsString(it)) {
			reply_error(r, EINVAL, "start: argv must be a non-empty array of strings");
			goto out;
		}
	}
	cJSON *env = cJSON_GetObjectItemCaseSensitive(body, "env");
	cJSON *cwd = cJSON_GetObjectItemCaseSensitive(body, "cwd");
	cJSON *tty = cJSON_GetObjectItemCaseSensitive(body, "tty");
	long long rows = 24, cols = 80, timeout = 0;
	if (check_env(r, env) < 0)
		goto out;
	if (cwd && !cJSON_IsNull(cwd) && !cJSON_IsString(cwd)) {
		reply_error(r, EINVAL, "start: cwd must be a string");
		goto out;
	}
	if (tty && !cJSON_IsNull(tty) && !cJSON_IsBool(tty)) {
		reply_error(r, EINVAL, "start: tty must be a boolean");
		goto out;
	}
	if (get_uint(r, body, "rows", 65535, &rows) < 0 ||
	    get_uint(r, body, "cols", 65535, &cols) < 0 ||
	    get_uint(r, body, "timeout", MAX_TIMEOUT, &timeout) < 0)
		goto out;
	spec.tty = cJSON_IsTrue(tty);
	spec.stdin_pipe = true;
	spec.rows = (unsigned short)rows;
	spec.cols = (unsigned short)cols;

	if (atomic_fetch_add(&live_execs, 1) >= EXEC_LIVE_MAX) {
		atomic_fetch_sub(&live_execs, 1);
		reply_error(r, EAGAIN, "start: too many running execs (limit %d)", EXEC_LIVE_MAX);
		goto out;
	}
	slot = true;

	env_copy = env && cJSON_IsObject(env) ? cJSON_Duplicate(env, true) : cJSON_CreateObject();
	if (!env_copy)
		goto nomem;
	if (spec.tty && !cJSON_GetObjectItemCaseSensitive(env_copy, "TERM"))
		cJSON_AddStringToObject(env_copy, "TERM", "xterm-256color");
	if (proc_spec_env(r, env_copy, &spec) < 0)
		goto out; /* replied (out of memory) */
	const char *cwd_s = cJSON_IsString(cwd) ? cwd->valuestring : NULL;
	if (proc_spec_cwd(req_agent(r), cwd_s, &spec, &fail)) {
		int e = fail.status == ST_FORBIDDEN ? EXDEV : fail.err ? fail.err : EINVAL;
		reply_error(r, e, "start: cwd %s: %s", cwd_s ? cwd_s : "", fail.msg);
		goto out;
	}
	x = calloc(1, sizeof(*x));
	spec.argv = calloc((size_t)argc + 1, sizeof(char *));
	if (!x || !spec.argv)
		goto nomem;
	x->in_w = -1;
	x->tty = spec.tty;
	struct dbx_strbuf cmd;
	dbx_sb_init(&cmd, 0);
	int k = 0;
	cJSON_ArrayForEach(it, argv)
	{
		if (!(spec.argv[k++] = strdup(it->valuestring))) {
			dbx_sb_free(&cmd);
			goto nomem;
		}
		if (k > 1)
			dbx_sb_putc(&cmd, ' ');
		dbx_sb_puts(&cmd, it->valuestring);
	}
	spec.command = dbx_sb_steal(&cmd, NULL);
	x->argv = calloc((size_t)argc + 1, sizeof(char *));
	if (!spec.command || !x->argv)
		goto nomem;
	for (k = 0; k < argc; k++)
		if (!(x->argv[k] = strdup(spec.argv[k])))
			goto nomem;

	if (proc_spawn(&spec, &sp, &fail) < 0) {
		reply_error(r, fail.err ? fail.err : EIO, "start: %s: %s", spec.argv[0], fail.msg);
		goto out;
	}
	struct proc_start *ps = calloc(1, sizeof(*ps));
	if (!ps)
		abort(); /* the child runs: without memory to track it nothing is sane */
	x->slot_held = true;
	slot = false;
	ps->ag = req_agent(r);
	ps->kind = PK_IEXEC;
	ps->ops = &iexec_ops;
	ps->r = req_ref(r);
	ps->command = spec.command;
	spec.command = NULL;
	ps->sp = sp;
	ps->timeout_s = timeout;
	ps->ext = x;
	x = NULL;
	ps->started = start_started;
	proc_start_post(ps);
	goto out;
nomem:
	reply_error(r, ENOMEM, "start: out of memory");
out:
	if (slot)
		atomic_fetch_sub(&live_execs, 1);
	xexec_free(x);
	proc_spec_free(&spec);
	cJSON_Delete(env_copy);
	cJSON_Delete(body);
}

/* ---- GET /exec/v1/list, POST /exec/v1/kill (service thread) ------------------------------- */

static cJSON *time_pair(const struct timespec *ts)
{
	cJSON *a = cJSON_CreateArray();
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_sec));
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_nsec));
	return a;
}

static void list_fn(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(o, "execs");
	for (struct xexec *x = table ? table->head : NULL; x; x = x->next) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "id", x->id);
		cJSON_AddNumberToObject(e, "pid", x->pid);
		cJSON *av = cJSON_AddArrayToObject(e, "argv");
		for (char **a = x->argv; *a; a++)
			cJSON_AddItemToArray(av, proc_json_str(*a, strlen(*a)));
		cJSON_AddBoolToObject(e, "tty", x->tty);
		cJSON_AddBoolToObject(e, "running", x->running);
		if (!x->running && !x->signaled)
			cJSON_AddNumberToObject(e, "exitCode", x->status);
		else
			cJSON_AddNullToObject(e, "exitCode");
		if (!x->running && x->signaled) {
			char name[32];
			signal_name(x->status, name, sizeof(name));
			cJSON_AddStringToObject(e, "signal", name);
		} else {
			cJSON_AddNullToObject(e, "signal");
		}
		cJSON_AddItemToObject(e, "startTime", time_pair(&x->start));
		if (x->running)
			cJSON_AddNullToObject(e, "endTime");
		else
			cJSON_AddItemToObject(e, "endTime", time_pair(&x->end));
		cJSON_AddItemToArray(arr, e);
	}
	fs_reply_json(r, o);
}

static void kill_fn(struct req *r)
{
	const char *id = req_query(r, "id");
	const char *name = req_query(r, "signal");
	int sig = name ? signal_from_name(name) : SIGTERM;
	if (!sig) {
		reply_error(r, EINVAL, "kill: unknown signal %s", name);
		return;
	}
	struct xexec *x = exec_find(id);
	if (!x) {
		reply_error(r, ENOENT, "kill: no exec with id %s", id ? id : "(none)");
		return;
	}
	int e = exec_signal(x, sig);
	if (e < 0) {
		reply_error(r, -e, "kill %s: %s", x->id, strerror(-e));
		return;
	}
	fs_reply_json(r, cJSON_CreateObject());
}

const struct route exec_routes[] = {
	{"POST", "/exec/v1/start", start_fn, R_ANYBODY, NULL},
	{"GET", "/exec/v1/list", list_fn, R_INLINE, NULL},
	{"POST", "/exec/v1/kill", kill_fn, R_INLINE, NULL},
	{NULL, NULL, NULL, 0, NULL},
};

/* ---- the attach WebSocket (service thread) ----------------------------------------------- */

static void attach_open(struct wsconn *c)
{
	const char *id = ws_query(c, "id");
	struct xexec *x = exec_find(id);
	if (!x) {
		ws_error(c, ENOENT, "attach: no exec with id %s", id ? id : "(none)");
		ws_close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "ENOENT");
		return;
	}
	uint64_t off = 0;
	const char *o = ws_query(c, "offset");
	if (o && *o) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(o, &end, 10);
		if (*end || errno || *o == '-') {
			ws_error(c, EINVAL, "attach: bad offset %s", o);
			ws_close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "EINVAL");
			return;
		}
		off = v;
	}
	struct xclient *cl = calloc(1, sizeof(*cl));
	if (!cl) {
		ws_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	cl->c = c;
	cl->x = x;
	cl->next = x->clients;
	if (x->clients)
		x->clients->prev = cl;
	x->clients = cl;
	ws_set_data(c, cl);

	cJSON *h = cJSON_CreateObject();
	cJSON_AddStringToObject(h, "type", "hello");
	cJSON_AddStringToObject(h, "id", x->id);
	cJSON_AddNumberToObject(h, "pid", x->pid);
	cJSON_AddBoolToObject(h, "tty", x->tty);
	cJSON_AddBoolToObject(h, "running", x->running);
	cJSON *offs = cJSON_AddObjectToObject(h, "offsets");
	cJSON_AddItemToObject(offs, "stdout", offsets_pair(&x->ring[0]));
	cJSON_AddItemToObject(offs, "stderr", offsets_pair(&x->ring[1]));
	ws_send_json(c, h);
	for (int ch = 0; ch < 2; ch++) {
		/* A cursor before the oldest kept byte gets a "skipped" frame from pump(). */
		cl->cur[ch] = off < x->ring[ch].next ? off : x->ring[ch].next;
	}
	if (!pump(cl))
		schedule_pump();
}

static void attach_text(struct xclient *cl, const char *data, size_t len)
{
	struct xexec *x = cl->x;
	cJSON *m = cJSON_ParseWithLength(data, len);
	cJSON *type = m ? cJSON_GetObjectItemCaseSensitive(m, "type") : NULL;
	const char *t = cJSON_IsString(type) ? type->valuestring : "";
	if (strcmp(t, "eof") == 0) {
		if (x->in_w < 0)
			goto out;
		if (x->tty) {
			stdin_write(cl, "\x04", 1); /* VEOF: the line discipline ends the read */
		} else {
			x->eof_pending = true;
			stdin_flush(x);
		}
	} else if (strcmp(t, "signal") == 0) {
		cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "signal");
		int sig = cJSON_IsString(s) ? signal_from_name(s->valuestring) : 0;
		if (!sig) {
			ws_error(cl->c, EINVAL, "signal: unknown signal");
			goto out;
		}
		int e = exec_signal(x, sig);
		if (e < 0)
			ws_error(cl->c, -e, "signal %s: %s", s->valuestring, strerror(-e));
	} else if (strcmp(t, "resize") == 0) {
		cJSON *rows = cJSON_GetObjectItemCaseSensitive(m, "rows");
		cJSON *cols = cJSON_GetObjectItemCaseSensitive(m, "cols");
		if (!cJSON_IsNumber(rows) || !cJSON_IsNumber(cols) || rows->valueint < 1 ||
		    cols->valueint < 1 || rows->valueint > 65535 || cols->valueint > 65535) {
			ws_error(cl->c, EINVAL, "resize: rows and cols must be 1..65535");
			goto out;
		}
		if (!x->tty) {
			ws_error(cl->c, ENOTTY, "resize: exec %s has no terminal", x->id);
			goto out;
		}
		struct winsize ws = {.ws_row = (unsigned short)rows->valueint,
				     .ws_col = (unsigned short)cols->valueint};
		/* The kernel sends SIGWINCH to the terminal's foreground group. */
		if (x->in_w < 0 || ioctl(x->in_w, TIOCSWINSZ, &ws) < 0)
			ws_error(cl->c, x->in_w < 0 ? EIO : errno, "resize: %s",
				 x->in_w < 0 ? "the terminal is closed" : strerror(errno));
	} else {
		ws_error(cl->c, EINVAL, "unknown message type \"%.64s\"", t);
	}
out:
	cJSON_Delete(m);
}

static void attach_message(struct wsconn *c, const char *data, size_t len, bool binary)
{
	struct xclient *cl = ws_data(c);
	if (!cl || !cl->x)
		return;
	if (binary) {
		if (len)
			stdin_write(cl, data, len);
		return;
	}
	attach_text(cl, data, len);
}

static void attach_close(struct wsconn *c)
{
	struct xclient *cl = ws_data(c);
	if (!cl)
		return;
	struct xexec *x = cl->x;
	client_detach(cl);
	ws_set_data(c, NULL);
	free(cl);
	if (x)
		flow_update(x); /* the last lagging client gone: the child may write again */
}

/* lws wrote everything queued for this client: top it up at once. */
static void attach_drain(struct wsconn *c)
{
	struct xclient *cl = ws_data(c);
	if (!cl || !cl->x)
		return;
	pump(cl);
	flow_update(cl->x);
}

const struct ws_handler exec_ws_handler = {"/exec/v1/attach", attach_open, attach_message,
					   attach_close, STDIN_MSG_MAX, attach_drain};

/* ---- shutdown ------------------------------------------------------------------------------ */

void exec_table_free(struct agent *ag)
{
	(void)ag;
	if (!table)
		return;
	lws_sul_cancel(&table->sul_pump);
	lws_sul_cancel(&table->sul_sweep);
	while (table->head)
		exec_drop(table->head); /* kills each live exec's process group */
	free(table);
	table = NULL;
}
