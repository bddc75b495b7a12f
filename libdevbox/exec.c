/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_exec: an interactive command in the devbox over /exec/v1 (agent/PROTOCOL.md §4).
 *
 * Owns one wsclient (its own lws context and service thread) attached to the exec, a queue of
 * received events and an eventfd that is readable while the queue holds something.
 *
 * Threads: the service thread decodes frames into events (ws_message) and records the end of
 * the connection (ws_closed); the caller's threads pull events (dbx_exec_next, one at a time)
 * and send input (any thread).  Everything shared is under x->mu.  The queue is bounded: above
 * EVQ_HIGH bytes of undelivered output the connection's reads pause (the agent then holds the
 * output in its ring), below EVQ_LOW they resume.
 *
 * Order: the agent sends "exit" after the last output frame and the queue is FIFO, with the
 * terminal event (EXIT or CLOSED) returned only once the queue is empty, so the exit always
 * comes after all output.
 */
#include "wsclient.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define FRAME_HDR   9           /* channel byte + 8-byte big-endian offset */
#define MSG_MAX     (1u << 20)  /* largest frame accepted from the agent (it sends 64 KiB) */
#define STDIN_CHUNK (64u << 10) /* stdin bytes per message (the agent takes 256 KiB) */
#define STDIN_BLOCK (1u << 20)  /* write_stdin blocks while more than this is queued */
#define EVQ_HIGH    (8u << 20)  /* pause reading above this much undelivered output */
#define EVQ_LOW     (2u << 20)  /* and resume below this */
#define ERRMSG_MAX  256

struct xev {
	struct xev *next;
	enum dbx_exec_event_kind kind;
	int channel;
	uint64_t offset, to;
	size_t len;
	unsigned char data[];
};

struct dbx_exec {
	dbx_client *c; /* borrowed: must outlive the exec (signals use its HTTP API) */
	struct dbx__ws *ws;
	char id[64];
	int efd; /* eventfd: nonzero while an event is pending */

	pthread_mutex_t mu;
	pthread_cond_t cond; /* an event arrived, the hello came or the connection ended */
	/* protected by mu */
	pid_t pid;
	bool tty;
	bool hello;
	bool open_done; /* hello received or the attach failed */
	int open_err;   /* attach failure (-errno) */
	struct xev *head, *tail;
	size_t q_bytes;
	bool paused;
	bool term_set; /* the terminal event is known */
	struct dbx_exec_event term;
	int srv_err; /* errno of the last {"type":"error"} from the agent */
	char errmsg[ERRMSG_MAX];
	bool stdin_closed;
	bool efd_set;

	/* the caller's thread (dbx_exec_next) */
	struct xev *cur; /* the event whose data the caller borrows */
};

/* ---- signal names ----------------------------------------------------------------------- */

static void sig_name(int sig, char *buf, size_t len)
{
	const char *abbrev = sig > 0 && sig < SIGRTMIN ? sigabbrev_np(sig) : NULL;
	if (abbrev)
		snprintf(buf, len, "SIG%s", abbrev);
	else if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(buf, len, "SIGRTMIN+%d", sig - SIGRTMIN);
	else
		snprintf(buf, len, "%d", sig);
}

static int sig_from_name(const char *s)
{
	if (!strncmp(s, "SIG", 3))
		s += 3;
	for (int sig = 1; sig < SIGRTMIN; sig++) {
		const char *a = sigabbrev_np(sig);
		if (a && !strcmp(a, s))
			return sig;
	}
	char *end;
	if (!strncmp(s, "RTMIN", 5) || !strncmp(s, "RTMAX", 5)) {
		bool max = s[4] == 'X';
		long off = 0;
		if (s[5]) {
			if (s[5] != (max ? '-' : '+'))
				return 0;
			off = strtol(s + 6, &end, 10);
			if (*end || off < 0 || off > SIGRTMAX - SIGRTMIN)
				return 0;
		}
		return max ? SIGRTMAX - (int)off : SIGRTMIN + (int)off;
	}
	long n = strtol(s, &end, 10);
	return *s && !*end && n > 0 && n <= SIGRTMAX ? (int)n : 0;
}

/* ---- service thread ---------------------------------------------------------------------- */

/* Under mu. */
static void efd_raise(struct dbx_exec *x)
{
	if (x->efd_set)
		return;
	uint64_t one = 1;
	if (write(x->efd, &one, sizeof(one)) == sizeof(one))
		x->efd_set = true;
}

static void efd_clear(struct dbx_exec *x)
{
	if (!x->efd_set)
		return;
	uint64_t v;
	if (read(x->efd, &v, sizeof(v)) == sizeof(v) || errno == EAGAIN)
		x->efd_set = false;
}

static void push(struct dbx_exec *x, struct xev *ev)
{
	pthread_mutex_lock(&x->mu);
	if (x->term_set) {
		/* Nothing follows the end (the agent sends no output after exit). */
		pthread_mutex_unlock(&x->mu);
		free(ev);
		return;
	}
	if (x->tail)
		x->tail->next = ev;
	else
		x->head = ev;
	x->tail = ev;
	x->q_bytes += ev->len;
	if (x->q_bytes > EVQ_HIGH && !x->paused) {
		x->paused = true;
		dbx__ws_rx_pause(x->ws, true);
	}
	efd_raise(x);
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->mu);
}

static void set_term(struct dbx_exec *x, const struct dbx_exec_event *ev)
{
	pthread_mutex_lock(&x->mu);
	if (!x->term_set) {
		x->term = *ev;
		x->term_set = true;
		efd_raise(x);
		pthread_cond_broadcast(&x->cond);
	}
	pthread_mutex_unlock(&x->mu);
}

static int on_output(struct dbx_exec *x, const unsigned char *d, size_t len)
{
	if (len < FRAME_HDR || (d[0] != 1 && d[0] != 2))
		return -EPROTO;
	uint64_t off = 0;
	for (int i = 1; i < FRAME_HDR; i++)
		off = off << 8 | d[i];
	struct xev *ev = malloc(sizeof(*ev) + len - FRAME_HDR);
	if (!ev)
		return -ENOMEM;
	*ev = (struct xev){
		.kind = DBX_EXEC_OUTPUT, .channel = d[0], .offset = off, .len = len - FRAME_HDR};
	memcpy(ev->data, d + FRAME_HDR, len - FRAME_HDR);
	push(x, ev);
	return 0;
}

static int on_text(struct dbx_exec *x, const char *d, size_t len)
{
	cJSON *m = cJSON_ParseWithLength(d, len);
	if (!m)
		return -EPROTO;
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(m, "type");
	const char *t = cJSON_IsString(type) ? type->valuestring : "";
	int r = 0;

	if (!strcmp(t, "hello")) {
		uint64_t pid = 0;
		dbx__json_u64(m, "pid", &pid);
		pthread_mutex_lock(&x->mu);
		x->pid = (pid_t)pid;
		x->tty = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "tty"));
		x->hello = true;
		x->open_done = true;
		pthread_cond_broadcast(&x->cond);
		pthread_mutex_unlock(&x->mu);
	} else if (!strcmp(t, "exit")) {
		struct dbx_exec_event ev = {.kind = DBX_EXEC_EXIT, .exit_code = -1};
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(m, "exitCode");
		const cJSON *sig = cJSON_GetObjectItemCaseSensitive(m, "signal");
		if (cJSON_IsNumber(code))
			ev.exit_code = code->valueint;
		if (cJSON_IsString(sig))
			ev.signal = sig_from_name(sig->valuestring);
		if (ev.exit_code < 0 && !ev.signal)
			r = -EPROTO;
		else
			set_term(x, &ev);
	} else if (!strcmp(t, "skipped")) {
		uint64_t ch = 0, from = 0, to = 0;
		if (!dbx__json_u64(m, "channel", &ch) || (ch != 1 && ch != 2) ||
		    !dbx__json_u64(m, "from", &from) || !dbx__json_u64(m, "to", &to) || to < from) {
			r = -EPROTO;
		} else {
			struct xev *ev = malloc(sizeof(*ev));
			if (!ev) {
				r = -ENOMEM;
			} else {
				*ev = (struct xev){.kind = DBX_EXEC_SKIPPED,
						   .channel = (int)ch,
						   .offset = from,
						   .to = to};
				push(x, ev);
			}
		}
	} else if (!strcmp(t, "error")) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(m, "error");
		const cJSON *msg = cJSON_GetObjectItemCaseSensitive(m, "message");
		pthread_mutex_lock(&x->mu);
		x->srv_err = dbx_errno_from_name(cJSON_IsString(e) ? e->valuestring : "EIO");
		snprintf(x->errmsg, sizeof(x->errmsg), "exec %s: %s", x->id,
			 cJSON_IsString(msg) ? msg->valuestring : dbx_errno_name(x->srv_err));
		pthread_mutex_unlock(&x->mu);
	}
	/* Unknown types are ignored: later agents may add some. */
	cJSON_Delete(m);
	return r;
}

static int ws_message(void *ud, bool binary, const void *data, size_t len)
{
	struct dbx_exec *x = ud;
	return binary ? on_output(x, data, len) : on_text(x, data, len);
}

static void ws_closed(void *ud, int err, const char *why)
{
	struct dbx_exec *x = ud;
	pthread_mutex_lock(&x->mu);
	if (x->srv_err) {
		/* The agent explained itself ({"type":"error"}) before closing. */
		err = -x->srv_err;
	} else {
		snprintf(x->errmsg, sizeof(x->errmsg), "exec %s: %s", x->id, why);
	}
	if (!x->open_done) {
		x->open_done = true;
		x->open_err = err;
	}
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->mu);
	struct dbx_exec_event ev = {.kind = DBX_EXEC_CLOSED, .error = err};
	set_term(x, &ev);
}

static const struct dbx__ws_ops exec_ops = {
	.message = ws_message,
	.closed = ws_closed,
};

/* ---- caller's threads -------------------------------------------------------------------- */

static struct timespec deadline_after(int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

dbx_exec *dbx_exec_free(dbx_exec *x)
{
	if (!x)
		return NULL;
	dbx__ws_free(x->ws); /* joins the service thread: nothing touches x afterwards */
	while (x->head) {
		struct xev *ev = x->head;
		x->head = ev->next;
		free(ev);
	}
	free(x->cur);
	if (x->efd >= 0)
		close(x->efd);
	pthread_cond_destroy(&x->cond);
	pthread_mutex_destroy(&x->mu);
	free(x);
	return NULL;
}

int dbx_exec_attach(dbx_client *c, const char *id, uint64_t offset, dbx_exec **ret_exec)
{
	int r;
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	char *pq = NULL;

	if (!c || !id || !*id || strlen(id) >= sizeof(((dbx_exec *)0)->id) || !ret_exec)
		return dbx__error(EINVAL, "exec attach: bad arguments");
	dbx_exec *x = calloc(1, sizeof(*x));
	if (!x)
		return dbx__error(ENOMEM, "exec attach %s: out of memory", id);
	x->c = c;
	x->efd = -1;
	snprintf(x->id, sizeof(x->id), "%s", id);
	pthread_mutex_init(&x->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&x->cond, &ca);
	pthread_condattr_destroy(&ca);
	x->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (x->efd < 0) {
		r = dbx__error(errno, "exec attach %s: eventfd: %s", id, strerror(errno));
		goto fail;
	}

	struct dbx__ws_config cfg = {
		.ops = &exec_ops,
		.ud = x,
		.max_msg = MSG_MAX,
		.what = "exec",
	};
	r = dbx__ws_new(c, &cfg, &x->ws);
	if (r < 0)
		goto fail;
	if ((r = dbx__query_add(&q, "id", id)) < 0 ||
	    (r = dbx__query_addu(&q, "offset", offset)) < 0 ||
	    asprintf(&pq, "/exec/v1/attach?%s", q.data) < 0) {
		pq = NULL;
		r = dbx__error(r < 0 ? -r : ENOMEM, "exec attach %s: out of memory", id);
		goto fail;
	}
	r = dbx__ws_connect(x->ws, pq);
	if (r < 0)
		goto fail;

	/* The connection has its own handshake deadline; this one only guards the hello. */
	struct timespec dl = deadline_after(30000);
	pthread_mutex_lock(&x->mu);
	while (!x->open_done) {
		if (pthread_cond_timedwait(&x->cond, &x->mu, &dl) == ETIMEDOUT) {
			x->open_done = true;
			x->open_err = -ETIMEDOUT;
			snprintf(x->errmsg, sizeof(x->errmsg), "exec %s: no hello from the agent",
				 id);
		}
	}
	r = x->open_err;
	pthread_mutex_unlock(&x->mu);
	if (r < 0) {
		dbx__error(-r, "attach %s", x->errmsg);
		goto fail;
	}
	*ret_exec = x;
	x = NULL;
	r = 0;
fail:
	dbx_exec_free(x);
	dbx_sb_free(&q);
	free(pq);
	return r;
}

/* Best effort: a started command whose attach failed must not keep running unseen. */
static void kill_quietly(dbx_client *c, const char *id)
{
	char saved[512];
	snprintf(saved, sizeof(saved), "%s", dbx_error_last());
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	if (dbx__query_add(&q, "id", id) == 0 && dbx__query_add(&q, "signal", "SIGKILL") == 0) {
		struct dbx__req rq = {.method = "POST",
				      .path = "/exec/v1/kill",
				      .query = q.data,
				      .op = "exec kill",
				      .err_path = id};
		dbx__request_json(c, &rq, NULL);
	}
	dbx_sb_free(&q);
	dbx__error(EIO, "%s", saved);
}

static cJSON *start_body(const struct dbx_exec_config *cfg)
{
	cJSON *b = cJSON_CreateObject();
	cJSON *argv = cJSON_AddArrayToObject(b, "argv");
	if (!argv)
		goto fail;
	for (const char *const *a = cfg->argv; *a; a++)
		if (!cJSON_AddItemToArray(argv, cJSON_CreateString(*a)))
			goto fail;
	if (cfg->env) {
		cJSON *env = cJSON_AddObjectToObject(b, "env");
		if (!env)
			goto fail;
		for (const char *const *e = cfg->env; *e; e++) {
			const char *eq = strchr(*e, '=');
			if (!eq || eq == *e) {
				errno = EINVAL;
				goto fail_errno;
			}
			char *k = strndup(*e, (size_t)(eq - *e));
			if (!k)
				goto fail;
			cJSON_DeleteItemFromObjectCaseSensitive(env, k); /* the last one wins */
			bool ok = cJSON_AddStringToObject(env, k, eq + 1);
			free(k);
			if (!ok)
				goto fail;
		}
	}
	if (cfg->cwd && *cfg->cwd && !cJSON_AddStringToObject(b, "cwd", cfg->cwd))
		goto fail;
	if (!cJSON_AddBoolToObject(b, "tty", cfg->tty) ||
	    !cJSON_AddNumberToObject(b, "rows", cfg->rows ? cfg->rows : 24) ||
	    !cJSON_AddNumberToObject(b, "cols", cfg->cols ? cfg->cols : 80) ||
	    !cJSON_AddNumberToObject(b, "timeout", cfg->timeout_s))
		goto fail;
	return b;
fail:
	errno = ENOMEM;
fail_errno:
	cJSON_Delete(b);
	return NULL;
}

int dbx_exec_start(dbx_client *c, const struct dbx_exec_config *cfg, dbx_exec **ret_exec)
{
	int r;
	cJSON *reply = NULL;
	char *body = NULL;

	if (!c || !cfg || !cfg->argv || !cfg->argv[0] || !ret_exec)
		return dbx__error(EINVAL, "exec: no command given");
	cJSON *b = start_body(cfg);
	if (!b)
		return dbx__error(errno, "exec %s: %s", cfg->argv[0],
				  errno == EINVAL ? "environment entries must be K=V"
						  : "out of memory");
	body = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	if (!body)
		return dbx__error(ENOMEM, "exec %s: out of memory", cfg->argv[0]);

	struct dbx__req rq = {
		.method = "POST",
		.path = "/exec/v1/start",
		.content_type = "application/json",
		.body = body,
		.body_len = strlen(body),
		.op = "exec",
		.err_path = cfg->argv[0],
	};
	r = dbx__request_json(c, &rq, &reply);
	if (r < 0)
		goto out;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(reply, "id");
	if (!cJSON_IsString(id) || !*id->valuestring) {
		r = dbx__error(EPROTO, "exec %s: the agent's reply has no id", cfg->argv[0]);
		goto out;
	}
	r = dbx_exec_attach(c, id->valuestring, 0, ret_exec);
	if (r < 0)
		kill_quietly(c, id->valuestring);
out:
	cJSON_Delete(reply);
	free(body);
	return r;
}

const char *dbx_exec_id(const dbx_exec *x)
{
	return x->id;
}

pid_t dbx_exec_pid(const dbx_exec *x)
{
	return x->pid;
}

int dbx_exec_write_stdin(dbx_exec *x, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	pthread_mutex_lock(&x->mu);
	bool closed = x->stdin_closed;
	pthread_mutex_unlock(&x->mu);
	if (closed)
		return dbx__error(EPIPE, "exec %s: stdin is closed", x->id);
	while (len) {
		size_t n = len < STDIN_CHUNK ? len : STDIN_CHUNK;
		int r = dbx__ws_send(x->ws, true, p, n, STDIN_BLOCK);
		if (r < 0)
			return r;
		p += n;
		len -= n;
	}
	return 0;
}

static int send_text(dbx_exec *x, cJSON *m, const char *what)
{
	char *s = m ? cJSON_PrintUnformatted(m) : NULL;
	cJSON_Delete(m);
	if (!s)
		return dbx__error(ENOMEM, "exec %s: %s: out of memory", x->id, what);
	int r = dbx__ws_send(x->ws, false, s, strlen(s), 0);
	free(s);
	return r;
}

int dbx_exec_close_stdin(dbx_exec *x)
{
	pthread_mutex_lock(&x->mu);
	bool was = x->stdin_closed;
	x->stdin_closed = true;
	pthread_mutex_unlock(&x->mu);
	if (was)
		return 0;
	cJSON *m = cJSON_CreateObject();
	if (m && !cJSON_AddStringToObject(m, "type", "eof")) {
		cJSON_Delete(m);
		m = NULL;
	}
	return send_text(x, m, "close stdin");
}

/* Over HTTP (POST /exec/v1/kill) rather than the WebSocket: a signal must get through even
 * when megabytes of stdin are queued in front of it or the agent has paused our stream. */
int dbx_exec_signal(dbx_exec *x, int sig)
{
	char name[32];
	if (sig <= 0 || sig > SIGRTMAX)
		return dbx__error(EINVAL, "exec %s: signal %d: no such signal", x->id, sig);
	sig_name(sig, name, sizeof(name));
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	int r;
	if ((r = dbx__query_add(&q, "id", x->id)) < 0 ||
	    (r = dbx__query_add(&q, "signal", name)) < 0) {
		dbx_sb_free(&q);
		return dbx__error(-r, "exec %s: out of memory", x->id);
	}
	struct dbx__req rq = {
		.method = "POST",
		.path = "/exec/v1/kill",
		.query = q.data,
		.op = "exec signal",
		.err_path = x->id,
	};
	r = dbx__request_json(x->c, &rq, NULL);
	dbx_sb_free(&q);
	return r;
}

int dbx_exec_resize(dbx_exec *x, unsigned rows, unsigned cols)
{
	if (!rows || !cols || rows > 65535 || cols > 65535)
		return dbx__error(EINVAL, "exec %s: resize %ux%u: rows and cols must be 1..65535",
				  x->id, rows, cols);
	cJSON *m = cJSON_CreateObject();
	if (m && (!cJSON_AddStringToObject(m, "type", "resize") ||
		  !cJSON_AddNumberToObject(m, "rows", rows) ||
		  !cJSON_AddNumberToObject(m, "cols", cols))) {
		cJSON_Delete(m);
		m = NULL;
	}
	return send_text(x, m, "resize");
}

int dbx_exec_next(dbx_exec *x, struct dbx_exec_event *ret, int timeout_ms)
{
	struct timespec dl = deadline_after(timeout_ms > 0 ? timeout_ms : 0);
	int r = 0;

	free(x->cur);
	x->cur = NULL;
	pthread_mutex_lock(&x->mu);
	while (!x->head && !x->term_set) {
		if (timeout_ms == 0)
			goto out;
		if (timeout_ms < 0)
			pthread_cond_wait(&x->cond, &x->mu);
		else if (pthread_cond_timedwait(&x->cond, &x->mu, &dl) == ETIMEDOUT)
			goto out;
	}
	if (x->head) {
		struct xev *ev = x->head;
		x->head = ev->next;
		if (!x->head)
			x->tail = NULL;
		x->q_bytes -= ev->len;
		if (x->paused && x->q_bytes < EVQ_LOW) {
			x->paused = false;
			dbx__ws_rx_pause(x->ws, false);
		}
		*ret = (struct dbx_exec_event){.kind = ev->kind,
					       .channel = ev->channel,
					       .data = ev->data,
					       .len = ev->len,
					       .offset = ev->offset,
					       .to = ev->to};
		x->cur = ev;
		if (!x->head && !x->term_set)
			efd_clear(x);
	} else {
		*ret = x->term;
		if (ret->kind == DBX_EXEC_CLOSED)
			dbx__error(-ret->error, "%s", x->errmsg);
	}
	r = 1;
out:
	pthread_mutex_unlock(&x->mu);
	return r;
}

int dbx_exec_fd(const dbx_exec *x)
{
	return x->efd;
}

int dbx_exec_run(dbx_client *c, const struct dbx_exec_config *cfg, dbx_sink_fn out, dbx_sink_fn err,
		 void *ud, int *ret_exit_code, int *ret_signal)
{
	dbx_exec *x = NULL;
	struct dbx_exec_event ev;
	int r = dbx_exec_start(c, cfg, &x);
	if (r < 0)
		return r;
	r = dbx_exec_close_stdin(x);
	while (r >= 0) {
		r = dbx_exec_next(x, &ev, -1);
		if (r < 0)
			break;
		if (ev.kind == DBX_EXEC_OUTPUT) {
			dbx_sink_fn sink = ev.channel == 2 ? err : out;
			if (sink && ev.len && (r = sink(ud, ev.data, ev.len)) < 0)
				dbx__error(-r, "exec %s: output: %s", x->id, strerror(-r));
		} else if (ev.kind == DBX_EXEC_EXIT) {
			if (ret_exit_code)
				*ret_exit_code = ev.exit_code;
			if (ret_signal)
				*ret_signal = ev.signal;
			r = 0;
			break;
		} else if (ev.kind == DBX_EXEC_CLOSED) {
			r = ev.error; /* dbx_exec_next() set the message */
			break;
		}
	}
	dbx_exec_free(x);
	return r;
}
