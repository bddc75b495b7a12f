/* server.c: the HTTP engine of devbox-agent on libwebsockets 4.1.6.
 *
 * Owns: struct req (one HTTP transaction), routing, authentication, request bodies (buffered or
 * streamed to a worker with rx flow control), replies (one write for small ones, chunked or
 * length-delimited streams for big ones), and the WebSocket plumbing (struct wsconn).
 *
 * Threads: every function that touches a wsi runs on the service thread. A req is refcounted;
 * workers reach it only through the req_* API, whose shared fields are guarded by req->mu. The
 * connection side holds one reference until the transaction completes or the connection closes
 * (then req->gone is set and r->wsi cleared, so producers and consumers stop).
 *
 * lws traps handled here (lws-notes.md): T1 bind address, T2 buffer size (main.c), T3 content
 * timeout re-armed per write, T5 100-continue, T6 chunked request bodies refused, T9 pss per
 * transaction, T10 hand-made chunked framing, T11 h2c refused, T12 headers+body in one write,
 * T14 header budget, T15 body size limits, T17 WS auth in CONFIRM_UPGRADE, T21 HEAD. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "events.h"
#include "http_int.h"
#include "misc.h"
#include "path.h"

#define CHUNK_HEAD (LWS_PRE + 16) /* room for LWS_PRE and a chunk-size line */
#define CHUNK_TAIL 2		  /* room for the CRLF after a chunk */

struct chunk {
	struct chunk *next;
	size_t len, off;
	unsigned char buf[]; /* CHUNK_HEAD + len + CHUNK_TAIL */
};

static struct chunk *chunk_new(const void *data, size_t len)
{
	struct chunk *c = malloc(sizeof(*c) + CHUNK_HEAD + len + CHUNK_TAIL);
	if (!c)
		return NULL;
	c->next = NULL;
	c->len = len;
	c->off = 0;
	if (len)
		memcpy(c->buf + CHUNK_HEAD, data, len);
	return c;
}

static void chunk_list_free(struct chunk *c)
{
	while (c) {
		struct chunk *n = c->next;
		free(c);
		c = n;
	}
}

struct req {
	atomic_int refs;
	struct agent *ag;
	struct lws *wsi;       /* service thread; NULL once the transaction is over */
	atomic_bool gone;      /* client disconnected or transaction over */
	const struct route *route;
	char method[8];
	bool head;
	char *uri;
	char *param;
	struct qargs q;
	char *ctype, *accept, *range, *if_match;
	int64_t clen;
	struct dbx_strbuf add_hdrs; /* (mu) "name: value\r\n" lines added before the reply */
	uint64_t t_start;
	uint64_t seq0;	       /* event sequence when the handler was dispatched */
	bool close_after;      /* service thread: close the connection after the reply */
	bool body_complete;    /* service thread: lws has delivered the whole request body */
	bool expect_continue;  /* service thread: the client waits for 100 Continue */
	bool dispatched;       /* service thread */
	bool run_inline;       /* service thread: req_run_inline() */

	/* request body */
	enum body_mode bmode;
	uint64_t blimit;
	struct dbx_strbuf body; /* BODY_BUFFER: service thread until dispatch, then read-only */
	size_t body_off;	/* BODY_BUFFER: what req_body_next() handed out */
	size_t accounted;	/* bytes counted in ag->buffered_bytes */
	bool body_over;		/* service thread: the limit was hit */
	cJSON *json;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* BODY_STREAM queue (mu) */
	struct chunk *in_head, *in_tail;
	struct chunk *in_cur; /* the consumer's chunk being handed out by req_body_next() */
	size_t in_bytes;
	uint64_t in_total;
	bool in_done, in_over, in_paused, in_resume_posted;

	/* reply (mu until resp_ready, then owned by the service thread except the stream queue) */
	bool replied;
	bool resp_ready;
	bool kick_posted;
	int http_status;
	char *out_ctype;
	char *out_hdrs;
	int64_t out_clen; /* -1: chunked */
	char *fixed;
	size_t fixed_len, fixed_off;
	bool streaming;
	struct chunk *out_head, *out_tail; /* (mu) */
	size_t out_bytes;		   /* (mu) */
	bool out_end;			   /* (mu) */
	int out_err;			   /* (mu) */
	bool hdrs_sent;			   /* service thread */
	void (*hook)(struct req *r, void *arg, bool gone);
	void *hook_arg;
	int keepalive_secs;
};


/* ---- reference counting and accessors ------------------------------------------------ */

struct req *req_ref(struct req *r)
{
	atomic_fetch_add(&r->refs, 1);
	return r;
}

void req_unref(struct req *r)
{
	if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	if (r->accounted)
		atomic_fetch_sub(&r->ag->buffered_bytes, r->accounted);
	qargs_free(&r->q);
	free(r->uri);
	free(r->param);
	free(r->ctype);
	free(r->accept);
	free(r->range);
	free(r->if_match);
	dbx_sb_free(&r->add_hdrs);
	dbx_sb_free(&r->body);
	cJSON_Delete(r->json);
	chunk_list_free(r->in_head);
	free(r->in_cur);
	chunk_list_free(r->out_head);
	free(r->out_ctype);
	free(r->out_hdrs);
	free(r->fixed);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
}

struct agent *req_agent(struct req *r)
{
	return r->ag;
}

const char *req_path(struct req *r)
{
	return r->uri;
}

const char *req_param(struct req *r)
{
	return r->param;
}

const char *req_query(struct req *r, const char *name)
{
	return qargs_get(&r->q, name);
}

const char *req_content_type(struct req *r)
{
	return r->ctype ? r->ctype : "";
}

const char *req_accept(struct req *r)
{
	return r->accept ? r->accept : "";
}

const char *req_range(struct req *r)
{
	return r->range;
}

const char *req_if_match(struct req *r)
{
	return r->if_match;
}

void req_add_header(struct req *r, const char *name, const char *value)
{
	pthread_mutex_lock(&r->mu);
	if (!r->replied)
		dbx_sb_printf(&r->add_hdrs, "%s: %s\r\n", name, value);
	pthread_mutex_unlock(&r->mu);
}

/* (mu held) The extra header lines of the reply: @extra plus those added before. */
static char *merge_headers(struct req *r, const char *extra)
{
	if (!r->add_hdrs.len)
		return extra ? strdup(extra) : NULL;
	if (extra)
		dbx_sb_puts(&r->add_hdrs, extra);
	return dbx_sb_steal(&r->add_hdrs, NULL);
}

int req_query_bool(struct req *r, const char *name, bool *out)
{
	const char *v = req_query(r, name);
	if (!v)
		return 0;
	if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
		*out = v[0] == 't';
		return 1;
	}
	char msg[200];
	snprintf(msg, sizeof(msg),
		 "Failed to deserialize query string: %.64s: provided string was not `true` or "
		 "`false`",
		 name);
	req_reply_text(r, 400, msg);
	return -1;
}

int req_query_u64(struct req *r, const char *name, uint64_t *out)
{
	const char *v = req_query(r, name);
	if (!v)
		return 0;
	size_t n = strlen(v);
	if (n >= 1 && n <= 19 && strspn(v, "0123456789") == n) {
		*out = strtoull(v, NULL, 10);
		return 1;
	}
	char msg[200];
	snprintf(msg, sizeof(msg),
		 "Failed to deserialize query string: %.64s: invalid digit found in string", name);
	req_reply_text(r, 400, msg);
	return -1;
}

uint64_t req_seq0(struct req *r)
{
	return r->seq0;
}

int64_t req_content_length(struct req *r)
{
	return r->clen;
}

bool req_is_head(struct req *r)
{
	return r->head;
}

cJSON *req_json(struct req *r)
{
	return r->json;
}

const char *req_body(struct req *r, size_t *ret_len)
{
	*ret_len = r->body.len;
	return r->body.data ? r->body.data : "";
}

bool req_gone(struct req *r)
{
	return atomic_load(&r->gone);
}

char *agent_abs(struct agent *ag, const char *rel)
{
	return dbx_path_join_abs(ag->cfg.workspace, rel);
}

/* ---- waking the service thread for a request ----------------------------------------- */

static void kick_cb(void *arg)
{
	struct req *r = arg;
	pthread_mutex_lock(&r->mu);
	r->kick_posted = false;
	pthread_mutex_unlock(&r->mu);
	if (r->wsi)
		lws_callback_on_writable(r->wsi);
	req_unref(r);
}

/* Any thread: make the service thread look at this request's reply. */
static void req_kick(struct req *r)
{
	if (agent_on_service_thread()) {
		if (r->wsi)
			lws_callback_on_writable(r->wsi);
		return;
	}
	pthread_mutex_lock(&r->mu);
	bool post = !r->kick_posted;
	r->kick_posted = true;
	pthread_mutex_unlock(&r->mu);
	if (post)
		work_post(r->ag->pool, kick_cb, req_ref(r));
}

/* ---- replies ----------------------------------------------------------------------- */

/* Takes ownership of body. */
static void reply_set(struct req *r, int http_status, const char *ctype, char *body, size_t len,
		      const char *extra)
{
	pthread_mutex_lock(&r->mu);
	if (r->replied) {
		pthread_mutex_unlock(&r->mu);
		agent_log(LLL_ERR, "internal: second reply to %s ignored", r->uri);
		free(body);
		return;
	}
	r->replied = true;
	r->http_status = http_status;
	r->out_ctype = ctype ? strdup(ctype) : NULL;
	r->out_hdrs = merge_headers(r, extra);
	r->fixed = body;
	r->fixed_len = len;
	r->out_clen = (int64_t)len;
	r->resp_ready = true;
	pthread_mutex_unlock(&r->mu);
	req_kick(r);
}

void req_reply_raw(struct req *r, int http_status, const char *ctype, char *data, size_t len)
{
	reply_set(r, http_status, ctype, data, len, NULL);
}

void req_reply_text(struct req *r, int http_status, const char *text)
{
	char *b = strdup(text);
	reply_set(r, http_status, "text/plain; charset=utf-8", b, b ? strlen(b) : 0, NULL);
}

void req_reply_empty(struct req *r, int http_status)
{
	reply_set(r, http_status, NULL, NULL, 0, NULL);
}

void req_reply_status(struct req *r, int status, const char *message, cJSON *payload)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "status", status);
	if (message)
		cJSON_AddStringToObject(o, "message", message);
	if (payload) {
		cJSON *it;
		while ((it = payload->child)) {
			cJSON_DetachItemViaPointer(payload, it);
			/* Keys from the payload never repeat the envelope's. */
			const char *k = it->string;
			if (strcmp(k, "status") == 0 || strcmp(k, "message") == 0) {
				cJSON_Delete(it);
				continue;
			}
			cJSON_AddItemToObject(o, k, it);
		}
		cJSON_Delete(payload);
	}
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	reply_set(r, 200, "application/json", s, s ? strlen(s) : 0, NULL);
}

void req_reply_ok(struct req *r, cJSON *payload)
{
	req_reply_status(r, ST_OK, "success", payload);
}

void req_reply_err(struct req *r, int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Messages may quote client paths: keep the JSON valid UTF-8. */
	char *clean = dbx_utf8_lossy(msg, strlen(msg), NULL);
	req_reply_status(r, status, clean ? clean : msg, NULL);
	free(clean);
}

int agent_errno_status(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case ENOENT:
		return ST_NOT_FOUND;
	case EACCES:
	case EPERM:
	case EXDEV:
		return ST_FORBIDDEN;
	default:
		return ST_INTERNAL;
	}
}

void req_reply_errno(struct req *r, int err, const char *what)
{
	if (err < 0)
		err = -err;
	if (err == EXDEV)
		req_reply_err(r, ST_FORBIDDEN, "%s: path escapes the workspace", what);
	else if (err == ELOOP)
		req_reply_err(r, ST_FORBIDDEN,
			      "%s: refusing to follow a symbolic link out of the workspace (os error %d)",
			      what, err);
	else
		req_reply_err(r, agent_errno_status(err), "%s: %s (os error %d)", what, strerror(err),
			      err);
}

void req_reply_shape(struct req *r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	char text[600];
	snprintf(text, sizeof(text), "Failed to deserialize the JSON body into the target type: %s",
		 msg);
	req_reply_text(r, 422, text);
}

int json_get_str(struct req *r, cJSON *obj, const char *name, bool required, const char **out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
	*out = NULL;
	if (!it || cJSON_IsNull(it)) {
		if (required) {
			req_reply_shape(r, "missing field `%s`", name);
			return -1;
		}
		return 0;
	}
	if (!cJSON_IsString(it)) {
		req_reply_shape(r, "%s: invalid type, expected a string", name);
		return -1;
	}
	*out = it->valuestring;
	return 0;
}

int json_get_bool(struct req *r, cJSON *obj, const char *name, bool *out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
	if (!it || cJSON_IsNull(it))
		return 0;
	if (!cJSON_IsBool(it)) {
		req_reply_shape(r, "%s: invalid type, expected a boolean", name);
		return -1;
	}
	*out = cJSON_IsTrue(it);
	return 0;
}

int json_get_int(struct req *r, cJSON *obj, const char *name, bool *present, int64_t *out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
	*present = false;
	if (!it || cJSON_IsNull(it))
		return 0;
	double d = it->valuedouble;
	if (!cJSON_IsNumber(it) || !(d >= -9.2e18 && d <= 9.2e18) || d != (double)(int64_t)d) {
		req_reply_shape(r, "%s: invalid type, expected an integer", name);
		return -1;
	}
	*present = true;
	*out = (int64_t)d;
	return 0;
}

int req_resolve(struct req *r, const char *input, char *rel)
{
	struct agent *ag = r->ag;
	int e = dbx_path_normalize(ag->cfg.workspace, ag->alias, input, rel, PATH_MAX);
	if (e == -EXDEV) {
		req_reply_err(r, ST_FORBIDDEN, "Path escapes the workspace %s: %s", ag->cfg.workspace,
			      input);
		return -1;
	}
	if (e < 0) {
		req_reply_err(r, ST_INVALID, "Path too long: %.64s...", input);
		return -1;
	}
	return 0;
}

/* ---- streamed replies -------------------------------------------------------------- */

void req_stream_begin(struct req *r, int http_status, const char *ctype, int64_t content_length,
		      const char *extra_headers)
{
	pthread_mutex_lock(&r->mu);
	if (r->replied) {
		pthread_mutex_unlock(&r->mu);
		agent_log(LLL_ERR, "internal: second reply to %s ignored", r->uri);
		return;
	}
	r->replied = true;
	r->streaming = true;
	r->http_status = http_status;
	r->out_ctype = ctype ? strdup(ctype) : NULL;
	r->out_hdrs = merge_headers(r, extra_headers);
	r->out_clen = content_length;
	r->resp_ready = true;
	pthread_mutex_unlock(&r->mu);
	req_kick(r);
}

/* (mu held) append; returns true if the queue was empty before. */
static bool out_append(struct req *r, struct chunk *c)
{
	bool was_empty = r->out_head == NULL;
	if (r->out_tail)
		r->out_tail->next = c;
	else
		r->out_head = c;
	r->out_tail = c;
	r->out_bytes += c->len;
	return was_empty;
}

int req_stream_write(struct req *r, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		size_t n = len > AGENT_CHUNK ? AGENT_CHUNK : len;
		struct chunk *c = chunk_new(p, n);
		if (!c)
			return -ENOMEM;
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += AGENT_IO_STALL_SECS;
		pthread_mutex_lock(&r->mu);
		while (r->out_bytes >= AGENT_OUT_HIWAT && !atomic_load(&r->gone)) {
			if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) {
				/* The client has not taken a byte for that long: give up. */
				atomic_store(&r->gone, true);
				break;
			}
		}
		if (atomic_load(&r->gone)) {
			pthread_mutex_unlock(&r->mu);
			free(c);
			return -EPIPE;
		}
		bool wake = out_append(r, c);
		pthread_mutex_unlock(&r->mu);
		if (wake)
			req_kick(r);
		p += n;
		len -= n;
	}
	return 0;
}

size_t req_stream_push(struct req *r, const void *data, size_t len)
{
	size_t q;
	pthread_mutex_lock(&r->mu);
	if (!atomic_load(&r->gone) && len) {
		struct chunk *c = chunk_new(data, len);
		if (c)
			out_append(r, c);
	}
	q = r->out_bytes;
	pthread_mutex_unlock(&r->mu);
	if (r->wsi)
		lws_callback_on_writable(r->wsi);
	return q;
}

size_t req_stream_queued(struct req *r)
{
	pthread_mutex_lock(&r->mu);
	size_t q = r->out_bytes;
	pthread_mutex_unlock(&r->mu);
	return q;
}

void req_stream_end(struct req *r, int err)
{
	pthread_mutex_lock(&r->mu);
	r->out_end = true;
	r->out_err = err;
	pthread_mutex_unlock(&r->mu);
	req_kick(r);
}

void req_set_stream_hook(struct req *r, void (*fn)(struct req *r, void *arg, bool gone), void *arg)
{
	r->hook = fn;
	r->hook_arg = arg;
}

void req_stream_keepalive(struct req *r, int secs)
{
	r->keepalive_secs = secs;
	if (r->wsi)
		lws_set_timeout(r->wsi, PENDING_TIMEOUT_HTTP_CONTENT, secs);
}

/* ---- request bodies ------------------------------------------------------------------ */

void req_set_body(struct req *r, enum body_mode mode, uint64_t limit)
{
	r->bmode = mode;
	r->blimit = limit;
}

void req_run_inline(struct req *r)
{
	r->run_inline = true;
}

static void resume_cb(void *arg)
{
	struct req *r = arg;
	pthread_mutex_lock(&r->mu);
	r->in_resume_posted = false;
	bool resume = r->in_paused && r->in_bytes < AGENT_BODY_LOWAT;
	if (resume)
		r->in_paused = false;
	pthread_mutex_unlock(&r->mu);
	if (resume && r->wsi)
		lws_rx_flow_control(r->wsi, 1);
	req_unref(r);
}

/* Worker: waits for the next queued chunk and takes it whole (the consumer then owns it).
 * Returns 1 with *ret, 0 at the end of the body, or -errno. */
static int body_pop(struct req *r, struct chunk **ret)
{
	int rc = 0;
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += AGENT_IO_STALL_SECS;
	pthread_mutex_lock(&r->mu);
	while (!r->in_head && !r->in_done && !r->in_over && !atomic_load(&r->gone)) {
		if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) {
			pthread_mutex_unlock(&r->mu);
			return -ETIMEDOUT;
		}
	}
	if (r->in_over) {
		rc = -EMSGSIZE;
	} else if (r->in_head) {
		struct chunk *c = r->in_head;
		r->in_head = c->next;
		if (!r->in_head)
			r->in_tail = NULL;
		c->next = NULL;
		r->in_bytes -= c->len - c->off;
		*ret = c;
		rc = 1;
		if (r->in_paused && r->in_bytes < AGENT_BODY_LOWAT && !r->in_resume_posted) {
			r->in_resume_posted = true;
			work_post(r->ag->pool, resume_cb, req_ref(r));
		}
	} else if (atomic_load(&r->gone)) {
		rc = -EPIPE;
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

ssize_t req_body_next(struct req *r, const void **ret_data, size_t max)
{
	if (r->bmode == BODY_BUFFER) {
		size_t n = r->body.len - r->body_off;

		if (n > max)
			n = max;
		*ret_data = r->body.data + r->body_off;
		r->body_off += n;
		return (ssize_t)n;
	}
	struct chunk *c = r->in_cur;
	if (!c || c->off == c->len) {
		free(c);
		r->in_cur = NULL;
		int rc = body_pop(r, &r->in_cur);
		if (rc <= 0)
			return rc;
		c = r->in_cur;
	}
	size_t n = c->len - c->off;
	if (n > max)
		n = max;
	*ret_data = c->buf + CHUNK_HEAD + c->off;
	c->off += n;
	return (ssize_t)n;
}

ssize_t req_body_read(struct req *r, void *buf, size_t len)
{
	const void *p;
	ssize_t n = req_body_next(r, &p, len);
	if (n > 0)
		memcpy(buf, p, (size_t)n);
	return n;
}

/* ---- routing ------------------------------------------------------------------------- */

static void health_fn(struct req *r)
{
	struct agent *ag = r->ag;
	char up[32];
	snprintf(up, sizeof(up), "%llds", (long long)(time(NULL) - ag->start_time));
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "healthStatus", "ok");
	cJSON_AddStringToObject(o, "uptime", up);
	cJSON_AddStringToObject(o, "version", AGENT_VERSION);
	req_reply_ok(r, o);
}

static void ready_fn(struct req *r)
{
	struct stat st;
	/* fstat of the root's O_PATH fd: no path walk; a removed workspace has no links. */
	bool ok = fstat(r->ag->rootfd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink > 0;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "readinessStatus", ok ? "ready" : "not_ready");
	cJSON_AddBoolToObject(o, "workspace", ok);
	req_reply_ok(r, o);
}

static const struct route health_routes[] = {
	{"GET", "/health", health_fn, R_PUBLIC | R_INLINE, NULL},
	{"GET", "/health/ready", ready_fn, R_PUBLIC | R_INLINE, NULL},
	{NULL, NULL, NULL, 0, NULL},
};

static const struct route *const route_tables[] = {health_routes, files_routes, proc_routes,
						    fs_routes, exec_routes};


/* Matches @uri against a pattern with at most one "*" segment; fills *param. */
static bool path_match(const char *pat, const char *uri, const char **pstart, size_t *plen)
{
	const char *star = strchr(pat, '*');
	if (!star)
		return strcmp(pat, uri) == 0;
	size_t pre = (size_t)(star - pat);
	if (strncmp(pat, uri, pre) != 0)
		return false;
	const char *seg = uri + pre;
	const char *end = strchr(seg, '/');
	size_t seglen = end ? (size_t)(end - seg) : strlen(seg);
	if (seglen == 0)
		return false;
	if (strcmp(star + 1, seg + seglen) != 0)
		return false;
	*pstart = seg;
	*plen = seglen;
	return true;
}

/* 0: found; 404 or 405 otherwise. */
static int route_find(const char *method, const char *uri, const struct route **ret,
		      char **ret_param)
{
	bool path_seen = false;
	for (size_t t = 0; t < sizeof(route_tables) / sizeof(route_tables[0]); t++) {
		for (const struct route *rt = route_tables[t]; rt->path; rt++) {
			const char *ps = NULL;
			size_t pl = 0;
			if (!path_match(rt->path, uri, &ps, &pl))
				continue;
			path_seen = true;
			bool ok = strcmp(rt->method, method) == 0 ||
				  (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0);
			if (!ok)
				continue;
			*ret = rt;
			*ret_param = ps ? strndup(ps, pl) : NULL;
			return 0;
		}
	}
	return path_seen ? 405 : 404;
}

static bool route_public(const char *uri)
{
	/* The official agent exempts exactly these three paths (agent-api.md §1.2). */
	return strcmp(uri, "/health") == 0 || strcmp(uri, "/health/ready") == 0 ||
	       strcmp(uri, "/health/live") == 0;
}

/* ---- helpers on the wsi (service thread) -------------------------------------------- */

static char *hdr_dup(struct lws *wsi, enum lws_token_indexes t)
{
	int n = lws_hdr_total_length(wsi, t);
	if (n <= 0)
		return NULL;
	char *s = malloc((size_t)n + 1);
	if (!s)
		return NULL;
	if (lws_hdr_copy(wsi, s, n + 1, t) < 0) {
		free(s);
		return NULL;
	}
	return s;
}

static size_t header_bytes(struct lws *wsi)
{
	size_t total = 0;
	for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
		int n = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
		if (n > 0)
			total += (size_t)n;
	}
	return total;
}

static bool auth_ok(struct agent *ag, struct lws *wsi)
{
	char *h = hdr_dup(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	bool ok = false;
	if (h && strncmp(h, "Bearer ", 7) == 0)
		ok = dbx_ct_equal(ag->cfg.token, ag->cfg.token_len, h + 7, strlen(h + 7));
	if (h) {
		explicit_bzero(h, strlen(h));
		free(h);
	}
	return ok;
}

const char *qargs_get(const struct qargs *q, const char *name)
{
	for (int i = 0; i < q->n; i++)
		if (strcmp(q->k[i], name) == 0)
			return q->v[i];
	return NULL;
}

void qargs_free(struct qargs *q)
{
	for (int i = 0; i < q->n; i++) {
		free(q->k[i]);
		free(q->v[i]);
	}
	free(q->k);
	free(q->v);
	q->n = 0;
	q->k = q->v = NULL;
}

int qargs_parse(struct qargs *q, struct lws *wsi)
{
	for (int i = 0; i < 256; i++) {
		int n = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
		if (n <= 0)
			break;
		char *frag = malloc((size_t)n + 1);
		if (!frag)
			return -ENOMEM;
		if (lws_hdr_copy_fragment(wsi, frag, n + 1, WSI_TOKEN_HTTP_URI_ARGS, i) < 0) {
			free(frag);
			break;
		}
		char *eq = strchr(frag, '=');
		char **nk = realloc(q->k, sizeof(char *) * (size_t)(q->n + 1));
		if (nk)
			q->k = nk;
		char **nv = realloc(q->v, sizeof(char *) * (size_t)(q->n + 1));
		if (nv)
			q->v = nv;
		char *val = strdup(eq ? eq + 1 : "");
		if (!nk || !nv || !val) {
			free(val);
			free(frag);
			return -ENOMEM;
		}
		if (eq)
			*eq = '\0';
		q->v[q->n] = val;
		q->k[q->n] = frag;
		q->n++;
	}
	return 0;
}

static void access_log(struct req *r)
{
	if (!r->ag->cfg.access_log)
		return;
	uint64_t us = (dbx_now_ns() - r->t_start) / 1000;
	agent_log(LLL_USER, "%s %s %d %llu.%03llums", r->method, r->uri, r->http_status,
		  (unsigned long long)(us / 1000), (unsigned long long)(us % 1000));
}

/* Detach the request from its connection: producers see gone, blocked workers wake. */
static void req_detach(struct req *r, bool run_hook)
{
	pthread_mutex_lock(&r->mu);
	atomic_store(&r->gone, true);
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	r->wsi = NULL;
	if (run_hook && r->hook) {
		void (*fn)(struct req *, void *, bool) = r->hook;
		r->hook = NULL;
		fn(r, r->hook_arg, true);
	}
}

/* The transaction is over: hand the connection back to lws for the next request. */
static int req_finish(struct req *r, struct lws *wsi)
{
	struct pss *pss = lws_wsi_user(wsi);
	bool close_conn = r->close_after;
	bool paused;
	pthread_mutex_lock(&r->mu);
	paused = r->in_paused;
	/* A stream that ended by itself has no producer left to stop; HEAD cuts one short. */
	bool producer_live = r->streaming && !r->out_end;
	pthread_mutex_unlock(&r->mu);
	access_log(r);
	if (pss && pss->req == r)
		pss->req = NULL;
	req_detach(r, producer_live);
	req_unref(r);
	if (close_conn)
		return -1;
	if (paused)
		lws_rx_flow_control(wsi, 1);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static void dispatch_job(void *arg)
{
	struct req *r = arg;
	r->route->fn(r);
	req_unref(r);
}

/* Body collected (or not needed): run the handler. Service thread. */
static void req_dispatch(struct req *r)
{
	if (r->dispatched)
		return;
	r->dispatched = true;
	if (r->route->flags & R_JSON && r->bmode == BODY_BUFFER) {
		size_t len = r->body.len;
		const char *b = r->body.data ? r->body.data : "";
		int depth = 0, maxd = 0;
		bool instr = false, esc = false;
		for (size_t i = 0; i < len; i++) {
			char c = b[i];
			if (instr) {
				if (esc)
					esc = false;
				else if (c == '\\')
					esc = true;
				else if (c == '"')
					instr = false;
			} else if (c == '"') {
				instr = true;
			} else if (c == '{' || c == '[') {
				if (++depth > maxd)
					maxd = depth;
			} else if (c == '}' || c == ']') {
				depth--;
			}
		}
		if (maxd > AGENT_JSON_DEPTH_MAX) {
			char msg[128];
			snprintf(msg, sizeof(msg),
				 "Failed to parse the request body as JSON: nesting deeper than %d",
				 AGENT_JSON_DEPTH_MAX);
			req_reply_text(r, 400, msg);
			return;
		}
		const char *end = NULL;
		r->json = cJSON_ParseWithLengthOpts(b, len, &end, 0);
		if (!r->json) {
			char msg[160];
			snprintf(msg, sizeof(msg),
				 "Failed to parse the request body as JSON: syntax error at byte %zu",
				 end ? (size_t)(end - b) : 0);
			req_reply_text(r, 400, msg);
			return;
		}
		if (!cJSON_IsObject(r->json)) {
			req_reply_shape(r, "invalid type: expected a JSON object");
			return;
		}
	}
	/* The handler may take long (exec-sync, big walks): lift lws's content timeout, except
	 * while a streamed body is still due (lws re-arms it per body chunk; on_body_done()
	 * lifts it), so a client that stalls mid-upload is dropped rather than pinning a
	 * worker. */
	if (r->wsi && !(r->bmode == BODY_STREAM && r->clen > 0))
		lws_set_timeout(r->wsi, NO_PENDING_TIMEOUT, 0);
	/* Read before the handler touches anything (see events_stamp()). */
	r->seq0 = events_seq(r->ag);
	if ((r->route->flags & R_INLINE) || r->run_inline) {
		r->route->fn(r);
		return;
	}
	/* Handlers that wait on the client (streamed bodies and replies) get their own pool,
	 * so slow clients cannot starve short requests. */
	bool xfer = r->bmode == BODY_STREAM || (r->route->flags & R_XFER);
	work_submit(xfer ? r->ag->xfer_pool : r->ag->pool, dispatch_job, req_ref(r));
}

static bool ctype_is(const char *ct, const char *want)
{
	size_t n = strlen(want);
	return ct && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

bool agent_ctype_is(const char *ct, const char *want)
{
	return ctype_is(ct, want);
}

/* A reply before the body was read: keep the connection only when discarding is cheap. */
/* A reply before the body was read. The reply is held until lws has read the whole body
 * (req_writable), because lws 4.1.6 mishandles a transaction completed with body bytes still
 * due: in its DISCARD_BODY state a pipelined next request can spin the loop forever. So close
 * instead when waiting is a bad idea: a big body, or a client that waits for 100 Continue
 * before it sends the body at all. */
static void early_reply_close_if_big(struct req *r)
{
	if (r->clen > (64 << 20) || r->expect_continue)
		r->close_after = true;
}

static int on_http(struct agent *ag, struct lws *wsi, struct pss *pss, const char *uri)
{
	struct req *r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	atomic_init(&r->refs, 1);
	r->ag = ag;
	r->wsi = wsi;
	r->t_start = dbx_now_ns();
	r->clen = -1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	dbx_sb_init(&r->body, AGENT_JSON_BODY_MAX);
	dbx_sb_init(&r->add_hdrs, 8192);
	pss->req = r;
	r->uri = strdup(uri);

	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI))
		strcpy(r->method, "GET");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI))
		strcpy(r->method, "POST");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI))
		strcpy(r->method, "HEAD");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_PUT_URI))
		strcpy(r->method, "PUT");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_DELETE_URI))
		strcpy(r->method, "DELETE");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_PATCH_URI))
		strcpy(r->method, "PATCH");
	else if (lws_hdr_total_length(wsi, WSI_TOKEN_OPTIONS_URI))
		strcpy(r->method, "OPTIONS");
	else
		strcpy(r->method, "OTHER");
	r->head = strcmp(r->method, "HEAD") == 0;

	if (!r->uri) {
		r->close_after = true;
		req_reply_empty(r, 500);
		return 0;
	}
	/* The body's framing first: every reply below must know whether a body is due. */
	char *te = hdr_dup(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING);
	if (te) {
		free(te);
		r->close_after = true;
		req_reply_text(r, 411,
			       "Chunked request bodies are not supported: send a Content-Length");
		return 0;
	}
	char *cl = hdr_dup(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
	if (cl) {
		/* Plain digits only, as lws parses it (atoll of at most 31 chars): a padded or
		 * signed value would make lws and us disagree on the body length. */
		size_t cll = strlen(cl);
		char *end = NULL;
		long long v = -1;
		if (cll >= 1 && cll <= 18 && strspn(cl, "0123456789") == cll)
			v = strtoll(cl, &end, 10);
		if (v < 0) {
			free(cl);
			r->close_after = true;
			req_reply_text(r, 400, "Invalid Content-Length");
			return 0;
		}
		r->clen = v;
		free(cl);
	}
	/* A POST without Content-Length: lws would wait for a 100 MiB body (T6); treat the
	 * body as empty and close after replying. */
	if (r->clen < 0 && strcmp(r->method, "POST") == 0)
		r->close_after = true;
	r->body_complete = r->clen <= 0;
	char *expect = hdr_dup(wsi, WSI_TOKEN_HTTP_EXPECT);
	r->expect_continue = expect && strcasecmp(expect, "100-continue") == 0 && r->clen > 0;
	free(expect);
	if (header_bytes(wsi) > AGENT_HEADER_MAX) {
		r->close_after = true;
		req_reply_text(r, 431, "Request header fields too large (limit 16384 bytes)");
		return 0;
	}
	if (!route_public(r->uri) && !auth_ok(ag, wsi)) {
		early_reply_close_if_big(r);
		req_reply_empty(r, 401);
		return 0;
	}
	r->ctype = hdr_dup(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE);
	r->accept = hdr_dup(wsi, WSI_TOKEN_HTTP_ACCEPT);
	r->range = hdr_dup(wsi, WSI_TOKEN_HTTP_RANGE);
	r->if_match = hdr_dup(wsi, WSI_TOKEN_HTTP_IF_MATCH);
	if (qargs_parse(&r->q, wsi) < 0) {
		r->close_after = true;
		req_reply_empty(r, 500);
		return 0;
	}

	int e = route_find(r->method, r->uri, &r->route, &r->param);
	if (e) {
		early_reply_close_if_big(r);
		req_reply_empty(r, e);
		return 0;
	}
	unsigned fl = r->route->flags;
	if (fl & R_STREAM)
		req_set_body(r, BODY_STREAM, 0);
	else if (fl & (R_JSON | R_ANYBODY))
		req_set_body(r, BODY_BUFFER, AGENT_JSON_BODY_MAX);
	else
		req_set_body(r, BODY_NONE, 0);
	if (fl & R_JSON && !ctype_is(r->ctype, "application/json")) {
		early_reply_close_if_big(r);
		req_reply_text(r, 415,
			       "Expected request with `Content-Type: application/json`");
		return 0;
	}
	if (r->route->prepare && r->route->prepare(r)) {
		early_reply_close_if_big(r);
		return 0;
	}
	if (r->bmode != BODY_NONE && r->clen < 0 && strcmp(r->method, "GET") != 0 && !r->head) {
		/* lws would wait for a 100 MiB body (T6): refuse rather than guess. */
		r->close_after = true;
		req_reply_text(r, 411, "Length Required: send the body with a Content-Length");
		return 0;
	}
	if (r->bmode == BODY_BUFFER) {
		uint64_t lim = r->blimit ? r->blimit : AGENT_JSON_BODY_MAX;
		r->body.limit = (size_t)lim;
		if (r->clen > 0 && (uint64_t)r->clen > lim) {
			early_reply_close_if_big(r);
			if (r->route->flags & R_JSON)
				req_reply_text(r, 413,
					       "Failed to buffer the request body: length limit exceeded");
			else
				req_reply_err(r, ST_INVALID, "File too large");
			return 0;
		}
		if (r->clen > 0) {
			size_t want = (size_t)r->clen;
			size_t now = atomic_fetch_add(&ag->buffered_bytes, want) + want;
			r->accounted = want;
			if (now > AGENT_JSON_BUFFERED_MAX && want > AGENT_JSON_BODY_MAX) {
				early_reply_close_if_big(r);
				req_reply_err(r, ST_INTERNAL,
					      "Agent busy: too many large request bodies in memory "
					      "(limit %u MiB), retry later",
					      AGENT_JSON_BUFFERED_MAX >> 20);
				return 0;
			}
		}
	}
	if (r->bmode == BODY_STREAM && r->blimit && r->clen > 0 && (uint64_t)r->clen > r->blimit) {
		early_reply_close_if_big(r);
		req_reply_err(r, ST_INVALID, "File too large");
		return 0;
	}
	bool has_body = r->clen > 0;
	if (has_body && r->expect_continue) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		unsigned char buf[LWS_PRE + sizeof(cont)];
		memcpy(buf + LWS_PRE, cont, sizeof(cont) - 1);
		lws_write(wsi, buf + LWS_PRE, sizeof(cont) - 1, LWS_WRITE_HTTP);
		r->expect_continue = false; /* from here on the client sends the body */
	}
	if (r->bmode == BODY_STREAM || !has_body || r->bmode == BODY_NONE)
		req_dispatch(r);
	return 0;
}

static void on_body(struct req *r, const void *in, size_t len)
{
	if (r->replied && r->bmode != BODY_STREAM)
		return;
	if (r->bmode == BODY_BUFFER) {
		/* The handler owns the buffer once dispatched (it may be parsing it now). */
		if (r->body_over || r->dispatched)
			return;
		if (dbx_sb_append(&r->body, in, len) < 0) {
			r->body_over = true;
			r->close_after = true;
			if (r->route->flags & R_JSON)
				req_reply_text(r, 413,
					       "Failed to buffer the request body: length limit exceeded");
			else
				req_reply_err(r, ST_INVALID, "File too large");
		}
		return;
	}
	if (r->bmode != BODY_STREAM)
		return;
	pthread_mutex_lock(&r->mu);
	bool pause = false;
	/* After the reply nobody consumes the rest: drop it (the reply waits for its end). */
	if (!r->in_over && !atomic_load(&r->gone) && !r->replied) {
		struct chunk *c = chunk_new(in, len);
		if (c) {
			if (r->in_tail)
				r->in_tail->next = c;
			else
				r->in_head = c;
			r->in_tail = c;
			r->in_bytes += len;
		} else {
			r->in_over = true; /* out of memory: fail the upload, never corrupt it */
		}
		r->in_total += len;
		if (r->blimit && r->in_total > r->blimit)
			r->in_over = true;
		pthread_cond_broadcast(&r->cv);
		if (r->in_bytes > AGENT_BODY_HIWAT && !r->in_paused)
			pause = r->in_paused = true;
	}
	pthread_mutex_unlock(&r->mu);
	if (pause)
		lws_rx_flow_control(r->wsi, 0);
}

static void on_body_done(struct req *r)
{
	r->body_complete = true;
	pthread_mutex_lock(&r->mu);
	bool ready = r->resp_ready;
	pthread_mutex_unlock(&r->mu);
	if (ready && r->wsi)
		lws_callback_on_writable(r->wsi); /* a reply was waiting for the body's end */
	if (r->bmode == BODY_STREAM) {
		pthread_mutex_lock(&r->mu);
		r->in_done = true;
		pthread_cond_broadcast(&r->cv);
		pthread_mutex_unlock(&r->mu);
		/* lws re-armed its content timeout per body chunk; the handler may still need
		 * time to finish (fsync, rename) before it replies. */
		if (r->wsi)
			lws_set_timeout(r->wsi, NO_PENDING_TIMEOUT, 0);
		return;
	}
	if (r->body_over || r->replied)
		return;
	req_dispatch(r);
}

/* Writes the status line and headers into buf; returns the end pointer or NULL. */
static unsigned char *build_headers(struct req *r, struct lws *wsi, unsigned char *p,
				    unsigned char *end)
{
	if (lws_add_http_header_status(wsi, (unsigned int)r->http_status, &p, end))
		return NULL;
	if (r->out_ctype &&
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
					 (const unsigned char *)r->out_ctype,
					 (int)strlen(r->out_ctype), &p, end))
		return NULL;
	if (r->out_clen >= 0) {
		if (lws_add_http_header_content_length(wsi, (lws_filepos_t)r->out_clen, &p, end))
			return NULL;
	} else if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING,
						(const unsigned char *)"chunked", 7, &p, end)) {
		return NULL;
	}
	if (r->close_after &&
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION, (const unsigned char *)"close",
					 5, &p, end))
		return NULL;
	if (r->out_hdrs) {
		/* "name: value\r\n" lines */
		const char *s = r->out_hdrs;
		while (*s) {
			const char *eol = strstr(s, "\r\n");
			size_t linelen = eol ? (size_t)(eol - s) : strlen(s);
			if ((size_t)(end - p) < linelen + 2)
				return NULL;
			memcpy(p, s, linelen);
			p += linelen;
			*p++ = '\r';
			*p++ = '\n';
			s += linelen + (eol ? 2 : 0);
		}
	}
	if (lws_finalize_http_header(wsi, &p, end))
		return NULL;
	return p;
}

static int write_headers(struct req *r, struct lws *wsi)
{
	static const size_t cap = 8192;
	/* T12: a small fixed body goes out with the headers in one write. */
	bool inline_body = !r->streaming && !r->head && r->fixed_len <= AGENT_CHUNK;
	unsigned char *buf = malloc(LWS_PRE + cap + (inline_body ? r->fixed_len : 0));
	if (!buf)
		return -1;
	unsigned char *start = buf + LWS_PRE, *p;
	p = build_headers(r, wsi, start, start + cap);
	if (!p) {
		free(buf);
		return -1;
	}
	if (inline_body) {
		if (r->fixed_len)
			memcpy(p, r->fixed, r->fixed_len);
		p += r->fixed_len;
		r->fixed_off = r->fixed_len;
	}
	size_t n = (size_t)(p - start);
	int w = lws_write(wsi, start, n, LWS_WRITE_HTTP_HEADERS);
	free(buf);
	if (w < 0 || (size_t)w != n)
		return -1;
	r->hdrs_sent = true;
	return 0;
}

static void stream_fire_hook(struct req *r)
{
	if (r->hook)
		r->hook(r, r->hook_arg, false);
}

/* HTTP WRITEABLE for a request. Returns -1 to close the connection. */
static int req_writable(struct req *r, struct lws *wsi)
{
	pthread_mutex_lock(&r->mu);
	bool ready = r->resp_ready;
	bool paused = r->in_paused;
	if (ready && paused && !r->body_complete)
		r->in_paused = false;
	pthread_mutex_unlock(&r->mu);
	if (!ready)
		return 0;
	if (!r->hdrs_sent && !r->body_complete && !r->close_after) {
		/* See early_reply_close_if_big(): let lws read the rest of the body first. */
		if (paused)
			lws_rx_flow_control(wsi, 1);
		return 0;
	}
	if (!r->hdrs_sent) {
		if (write_headers(r, wsi) < 0)
			return -1;
		if (r->head) {
			return req_finish(r, wsi);
		}
		if (!r->streaming && r->fixed_off == r->fixed_len)
			return req_finish(r, wsi);
		lws_callback_on_writable(wsi);
		return 0;
	}
	if (!r->streaming) {
		size_t n = r->fixed_len - r->fixed_off;
		if (n > AGENT_CHUNK)
			n = AGENT_CHUNK;
		unsigned char *buf = malloc(LWS_PRE + n);
		if (!buf)
			return -1;
		memcpy(buf + LWS_PRE, r->fixed + r->fixed_off, n);
		int w = lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP);
		free(buf);
		if (w < 0)
			return -1;
		r->fixed_off += n;
		if (r->fixed_off == r->fixed_len)
			return req_finish(r, wsi);
		lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, 60);
		lws_callback_on_writable(wsi);
		return 0;
	}
	/* Streaming: one chunk per WRITEABLE (T20). */
	pthread_mutex_lock(&r->mu);
	struct chunk *c = r->out_head;
	if (c) {
		r->out_head = c->next;
		if (!r->out_head)
			r->out_tail = NULL;
		r->out_bytes -= c->len;
		pthread_cond_broadcast(&r->cv);
	}
	bool end = r->out_end && !r->out_head;
	int err = r->out_err;
	size_t left = r->out_bytes;
	pthread_mutex_unlock(&r->mu);
	if (c) {
		unsigned char *data = c->buf + CHUNK_HEAD;
		size_t n = c->len;
		if (r->out_clen < 0) {
			char hex[16];
			int hl = snprintf(hex, sizeof(hex), "%zx\r\n", c->len);
			data -= hl;
			memcpy(data, hex, (size_t)hl);
			memcpy(c->buf + CHUNK_HEAD + c->len, "\r\n", 2);
			n += (size_t)hl + 2;
		}
		int w = lws_write(wsi, data, n, LWS_WRITE_HTTP);
		free(c);
		if (w < 0)
			return -1;
		lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT,
				r->keepalive_secs ? r->keepalive_secs : 60);
		if (left < AGENT_BODY_LOWAT)
			stream_fire_hook(r);
	}
	if (end) {
		if (err)
			return -1;
		if (r->out_clen < 0) {
			unsigned char fin[LWS_PRE + 8];
			memcpy(fin + LWS_PRE, "0\r\n\r\n", 5);
			if (lws_write(wsi, fin + LWS_PRE, 5, LWS_WRITE_HTTP_FINAL) < 0)
				return -1;
		}
		return req_finish(r, wsi);
	}
	if (left || c)
		lws_callback_on_writable(wsi);
	return 0;
}

static int reject_upgrade(struct lws *wsi, int status)
{
	unsigned char buf[LWS_PRE + 512], *start = buf + LWS_PRE, *p = start,
					  *end = buf + sizeof(buf);
	if (lws_add_http_header_status(wsi, (unsigned int)status, &p, end) ||
	    lws_add_http_header_content_length(wsi, 0, &p, end) ||
	    lws_finalize_http_header(wsi, &p, end))
		return -1;
	lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS);
	return 1;
}

/* ---- the protocol callback ----------------------------------------------------------- */

int agent_http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			size_t len)
{
	struct lws_context *ctx = lws_get_context(wsi);
	struct agent *ag = ctx ? lws_context_user(ctx) : NULL;
	struct pss *pss = user;

	switch (reason) {
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		/* Broadcast to every protocol (T8): handle it for protocols[0] only. */
		if (ag && lws_get_protocol(wsi) && strcmp(lws_get_protocol(wsi)->name, "http") == 0)
			work_run_posted(ag->pool);
		return 0;

	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: {
		if (!in || strcasecmp(in, "websocket") != 0)
			return reject_upgrade(wsi, 505); /* h2c and friends (T11) */
		char uri[256];
		if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0)
			return reject_upgrade(wsi, 404);
		if (!auth_ok(ag, wsi))
			return reject_upgrade(wsi, 401);
		if (!ws_find(uri))
			return reject_upgrade(wsi, 404);
		return 0;
	}

	case LWS_CALLBACK_HTTP: {
		if (pss->req) {
			/* Should not happen: a new transaction with the old one still bound. */
			struct req *old = pss->req;
			pss->req = NULL;
			req_detach(old, true);
			req_unref(old);
		}
		return on_http(ag, wsi, pss, in ? (const char *)in : "/");
	}

	case LWS_CALLBACK_HTTP_BODY:
		if (pss && pss->req)
			on_body(pss->req, in, len);
		return 0;

	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (pss && pss->req)
			on_body_done(pss->req);
		return 0;

	case LWS_CALLBACK_HTTP_WRITEABLE:
		if (pss && pss->req)
			return req_writable(pss->req, wsi);
		return 0;

	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
	case LWS_CALLBACK_CLOSED_HTTP:
		if (pss && pss->req) {
			struct req *r = pss->req;
			pss->req = NULL;
			access_log(r);
			req_detach(r, true);
			req_unref(r);
		}
		return 0;

	case LWS_CALLBACK_ESTABLISHED:
	case LWS_CALLBACK_RECEIVE:
	case LWS_CALLBACK_SERVER_WRITEABLE:
	case LWS_CALLBACK_CLOSED:
		return ws_callback(ag, wsi, reason, pss, in, len);

	default:
		return 0;
	}
}
