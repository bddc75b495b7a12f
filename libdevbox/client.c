/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client: dbx_client, the libcurl connection to one devbox-agent, and dbx__request(), the one
 * function every remote call of libdevbox goes through.
 *
 * Pool: a client owns a list of slots (a curl easy handle plus a private multi handle).  A call
 * takes an idle slot (LIFO, so a thread that calls again and again gets the handle it used last
 * and with it the same keep-alive connection) or creates one; it returns it afterwards.  The
 * multi handle lets the calling thread wait in curl_multi_poll() with a short timeout and be
 * woken by dbx_client_cancel() (curl_multi_wakeup), so cancellation, the per-thread interrupt
 * flag and the per-thread deadline are noticed within ~50 ms even when the peer is silent.
 *
 * Threads: any.  `lock` protects the slot lists; counters and the cancel flag are atomics.
 * Per-thread state (cancel flag, deadline, last reply meta) is _Thread_local.
 * Lifetime: dbx_client_free() must not race with calls on the same client (common.h).
 */
#include "internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_TIMEOUT_MS         30000
#define DEFAULT_RETRIES            3
#define DEFAULT_MAX_BODY           ((size_t)64 << 20)
/* Error bodies are still collected (this much) when 2xx bodies stream to a sink. */
#define ERR_BODY_MAX     ((size_t)64 << 10)
#define POLL_SLICE_MS    50
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS   2000

struct slot {
	CURL *easy;
	CURLM *multi;
	struct slot *next_idle; /* in client->idle while unused */
	struct slot *next_all;  /* in client->all for the client's lifetime */
};

struct dbx_client {
	char *url;   /* base URL without trailing '/' */
	char *token; /* "" when none */
	char *auth_header;
	char *ca_file;
	char *user_agent;
	int connect_timeout_ms;
	int timeout_ms;
	int retries;
	bool insecure;

	pthread_mutex_t lock; /* protects idle and all */
	struct slot *idle;
	struct slot *all;

	atomic_bool cancelled;
	_Atomic uint64_t n_requests, n_connects, n_retries, n_up, n_down;
};

/* Per-thread call controls and reply metadata. */
static _Thread_local const volatile int *tl_cancel_flag;
static _Thread_local uint64_t tl_deadline_ms;
static _Thread_local struct dbx_reply_meta tl_meta;
static _Thread_local bool tl_has_dir[2];
static _Thread_local struct dbx_attr tl_dir[2];

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_ALL);
}

/* ---- per-thread controls ------------------------------------------------------------------ */

void dbx_thread_set_cancel_flag(const volatile int *flag)
{
	tl_cancel_flag = flag;
}

void dbx_thread_set_deadline(uint64_t deadline_ms)
{
	tl_deadline_ms = deadline_ms;
}

const struct dbx_reply_meta *dbx_last_reply_meta(void)
{
	return &tl_meta;
}

int dbx_fs_last_dir(bool from, struct dbx_attr *ret)
{
	if (!tl_has_dir[from])
		return -ENOENT;
	*ret = tl_dir[from];
	return 0;
}

/* X-Dbx-Dir / X-Dbx-From-Dir: an attr object (PROTOCOL.md §1); ignored when malformed. */
static void parse_dir_header(struct dbx__resp *resp, int k, const char *v)
{
	cJSON *j = cJSON_Parse(v);

	resp->has_dir[k] = j && dbx__attr_from_json(j, &resp->dir[k], NULL) == 0 &&
			   S_ISDIR(resp->dir[k].mode);
	cJSON_Delete(j);
}

/* 0, or the errno that must stop the current call now. */
static int call_stop_reason(const dbx_client *c)
{
	if (atomic_load(&c->cancelled))
		return ECANCELED;
	/* The flag is written by another thread (a FUSE interrupt): read it atomically. */
	if (tl_cancel_flag && __atomic_load_n(tl_cancel_flag, __ATOMIC_RELAXED))
		return EINTR;
	if (tl_deadline_ms && dbx_now_ms() >= tl_deadline_ms)
		return ETIMEDOUT;
	return 0;
}

static const char *stop_reason_text(int err)
{
	switch (err) {
	case ECANCELED:
		return "cancelled";
	case EINTR:
		return "interrupted";
	case ETIMEDOUT:
		return "deadline passed";
	default:
		return strerror(err);
	}
}

/* ---- client ------------------------------------------------------------------------------- */

static char *xstrdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

int dbx_client_new(const struct dbx_client_config *cfg, dbx_client **ret_client)
{
	dbx_client *c = NULL;
	size_t n;
	int r;

	*ret_client = NULL;
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK)
		return dbx__error(EIO, "client: libcurl initialisation failed: %s",
				  curl_easy_strerror(curl_init_rc));
	if (!cfg || !cfg->url || !*cfg->url)
		return dbx__error(EINVAL, "client: no agent URL given");
	if (strncmp(cfg->url, "http://", 7) && strncmp(cfg->url, "https://", 8))
		return dbx__error(EINVAL,
				  "client %s: the agent URL must start with http:// or "
				  "https://",
				  cfg->url);
	if (cfg->token && strpbrk(cfg->token, "\r\n"))
		return dbx__error(EINVAL, "client %s: the token contains a line break", cfg->url);

	c = calloc(1, sizeof(*c));
	if (!c)
		return dbx__error(ENOMEM, "client: out of memory");
	pthread_mutex_init(&c->lock, NULL);
	c->url = strdup(cfg->url);
	c->token = strdup(cfg->token ? cfg->token : "");
	c->ca_file = xstrdup(cfg->ca_file);
	if (cfg->user_agent)
		c->user_agent = strdup(cfg->user_agent);
	else if (asprintf(&c->user_agent, "libdevbox/%s", dbx_version()) < 0)
		c->user_agent = NULL;
	if (!c->url || !c->token || (cfg->ca_file && !c->ca_file) || !c->user_agent) {
		r = dbx__error(ENOMEM, "client: out of memory");
		goto fail;
	}
	if (*c->token && asprintf(&c->auth_header, "Authorization: Bearer %s", c->token) < 0) {
		c->auth_header = NULL;
		r = dbx__error(ENOMEM, "client: out of memory");
		goto fail;
	}
	n = strlen(c->url);
	while (n > 0 && c->url[n - 1] == '/')
		c->url[--n] = '\0';
	c->connect_timeout_ms =
		cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
	c->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->retries = cfg->retries > 0 ? cfg->retries : cfg->retries < 0 ? 0 : DEFAULT_RETRIES;
	c->insecure = cfg->insecure;
	*ret_client = c;
	return 0;

fail:
	dbx_client_free(c);
	return r;
}

dbx_client *dbx_client_free(dbx_client *c)
{
	if (!c)
		return NULL;
	struct slot *s = c->all;
	while (s) {
		struct slot *next = s->next_all;
		curl_multi_cleanup(s->multi);
		curl_easy_cleanup(s->easy);
		free(s);
		s = next;
	}
	pthread_mutex_destroy(&c->lock);
	free(c->url);
	if (c->token)
		explicit_bzero(c->token, strlen(c->token));
	free(c->token);
	if (c->auth_header)
		explicit_bzero(c->auth_header, strlen(c->auth_header));
	free(c->auth_header);
	free(c->ca_file);
	free(c->user_agent);
	free(c);
	return NULL;
}

void dbx_client_cancel(dbx_client *c)
{
	atomic_store(&c->cancelled, true);
	pthread_mutex_lock(&c->lock);
	for (struct slot *s = c->all; s; s = s->next_all)
		curl_multi_wakeup(s->multi);
	pthread_mutex_unlock(&c->lock);
}

void dbx_client_uncancel(dbx_client *c)
{
	atomic_store(&c->cancelled, false);
}

const char *dbx_client_url(const dbx_client *c)
{
	return c->url;
}

const char *dbx_client_token(const dbx_client *c)
{
	return c->token;
}

bool dbx__client_insecure(const dbx_client *c)
{
	return c->insecure;
}

void dbx_client_get_stats(const dbx_client *c, struct dbx_client_stats *ret_stats)
{
	ret_stats->requests = atomic_load(&c->n_requests);
	ret_stats->connects = atomic_load(&c->n_connects);
	ret_stats->retries = atomic_load(&c->n_retries);
	ret_stats->bytes_up = atomic_load(&c->n_up);
	ret_stats->bytes_down = atomic_load(&c->n_down);
}

char *dbx__ws_url(const dbx_client *c, const char *path_query)
{
	const char *rest;
	const char *scheme;
	char *out;

	if (!strncmp(c->url, "https://", 8)) {
		scheme = "wss://";
		rest = c->url + 8;
	} else {
		scheme = "ws://";
		rest = c->url + 7;
	}
	if (asprintf(&out, "%s%s%s", scheme, rest, path_query ? path_query : "") < 0)
		return NULL;
	return out;
}

static struct slot *slot_get(dbx_client *c)
{
	struct slot *s;

	pthread_mutex_lock(&c->lock);
	s = c->idle;
	if (s)
		c->idle = s->next_idle;
	pthread_mutex_unlock(&c->lock);
	if (s)
		return s;

	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->easy = curl_easy_init();
	s->multi = curl_multi_init();
	if (!s->easy || !s->multi) {
		curl_multi_cleanup(s->multi);
		curl_easy_cleanup(s->easy);
		free(s);
		return NULL;
	}
	pthread_mutex_lock(&c->lock);
	s->next_all = c->all;
	c->all = s;
	pthread_mutex_unlock(&c->lock);
	return s;
}

static void slot_put(dbx_client *c, struct slot *s)
{
	pthread_mutex_lock(&c->lock);
	s->next_idle = c->idle;
	c->idle = s;
	pthread_mutex_unlock(&c->lock);
}

/* ---- one transfer ------------------------------------------------------------------------- */

struct xfer {
	dbx_client *c;
	const struct dbx__req *rq;
	struct dbx__resp *resp;
	CURL *easy;
	struct dbx_strbuf body;
	size_t max_body;
	/* upload */
	const unsigned char *mem;
	uint64_t up_done;
	/* why the transfer was aborted from a callback (positive errno), and a message for it */
	int abort_err;
	char abort_msg[1024];
	bool abort_verbatim; /* abort_msg is a callback's complete message */
	char errbuf[CURL_ERROR_SIZE];
	bool sink_started; /* bytes were delivered to the sink: no retry possible */
	bool got_status;
};

static void xfer_abort(struct xfer *x, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void xfer_abort(struct xfer *x, int err, const char *fmt, ...)
{
	va_list ap;
	if (x->abort_err)
		return;
	x->abort_err = err;
	va_start(ap, fmt);
	vsnprintf(x->abort_msg, sizeof(x->abort_msg), fmt, ap);
	va_end(ap);
}

/* A sink or source failed with err: its own message (if it set one) is kept verbatim. */
static void callback_abort(struct xfer *x, int err, const char *what)
{
	const char *m = dbx_error_last();
	if (x->abort_err)
		return;
	if (m[0]) {
		xfer_abort(x, err, "%s", m);
		x->abort_verbatim = true;
	} else {
		xfer_abort(x, err, "%s%s%s", what ? what : "", what ? ": " : "", strerror(err));
	}
}

static bool status_ok(long st)
{
	return st >= 200 && st < 300;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;
	struct dbx__resp *resp = x->resp;
	char line[1024];
	size_t l = len < sizeof(line) - 1 ? len : sizeof(line) - 1;

	memcpy(line, buf, l);
	line[l] = '\0';
	while (l > 0 && (line[l - 1] == '\r' || line[l - 1] == '\n'))
		line[--l] = '\0';
	if (!strncmp(line, "HTTP/", 5)) {
		/* A new response (after 100 Continue): forget what the previous one said. */
		memset(&resp->meta, 0, sizeof(resp->meta));
		resp->has_dir[0] = resp->has_dir[1] = false;
		resp->ver[0] = '\0';
		resp->size = UINT64_MAX;
		return len;
	}
	char *colon = strchr(line, ':');
	if (!colon)
		return len;
	*colon = '\0';
	char *v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	if (!strcasecmp(line, "X-Dbx-Boot")) {
		snprintf(resp->meta.boot, sizeof(resp->meta.boot), "%s", v);
		resp->meta.valid = true;
	} else if (!strcasecmp(line, "X-Dbx-Seq")) {
		resp->meta.seq = strtoull(v, NULL, 10);
		resp->meta.valid = true;
	} else if (!strcasecmp(line, "X-Dbx-Dir")) {
		parse_dir_header(resp, 0, v);
	} else if (!strcasecmp(line, "X-Dbx-From-Dir")) {
		parse_dir_header(resp, 1, v);
	} else if (!strcasecmp(line, "X-Dbx-Version")) {
		snprintf(resp->ver, sizeof(resp->ver), "%s", v);
	} else if (!strcasecmp(line, "X-Dbx-Size")) {
		char *end;
		errno = 0;
		unsigned long long sz = strtoull(v, &end, 10);
		if (!errno && end != v)
			resp->size = sz;
	}
	return len;
}

static size_t on_write(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;
	long st = 0;

	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &st);
	if (x->rq->sink && status_ok(st)) {
		x->sink_started = true;
		dbx_error_clear();
		int r = x->rq->sink(x->rq->sink_ud, buf, len);
		if (r < 0) {
			callback_abort(x, -r, NULL);
			return 0;
		}
		return len;
	}
	size_t limit = x->rq->sink ? ERR_BODY_MAX : x->max_body;
	if (x->body.len + len > limit) {
		if (x->rq->sink) /* an error body: the start of it is enough for the message */
			return len;
		xfer_abort(x, EMSGSIZE, "the reply is larger than %zu bytes", limit);
		return 0;
	}
	if (dbx_sb_append(&x->body, buf, len) < 0) {
		xfer_abort(x, ENOMEM, "out of memory");
		return 0;
	}
	return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	const struct dbx__req *rq = x->rq;
	size_t want = size * n;
	uint64_t total = rq->body ? rq->body_len : rq->src_len;
	uint64_t left = total - x->up_done;

	if (want > left)
		want = (size_t)left;
	if (want == 0)
		return 0;
	if (rq->body) {
		memcpy(buf, x->mem + x->up_done, want);
		x->up_done += want;
		return want;
	}
	dbx_error_clear();
	ssize_t got = rq->src(rq->src_ud, buf, want);
	if (got < 0) {
		callback_abort(x, (int)-got, "reading the data to send");
		return CURL_READFUNC_ABORT;
	}
	if (got == 0) {
		xfer_abort(x, EIO, "the data source ended %llu bytes early",
			   (unsigned long long)left);
		return CURL_READFUNC_ABORT;
	}
	if ((size_t)got > want)
		got = (ssize_t)want;
	x->up_done += (uint64_t)got;
	return (size_t)got;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct xfer *x = ud;
	int err = call_stop_reason(x->c);
	if (err) {
		xfer_abort(x, err, "%s", stop_reason_text(err));
		return 1;
	}
	return 0;
}

static int reason_from_curl(CURLcode rc, long os_errno, const char **ret_text)
{
	*ret_text = curl_easy_strerror(rc);
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
		if (os_errno == EHOSTUNREACH || os_errno == ENETUNREACH || os_errno == ETIMEDOUT) {
			*ret_text = strerror((int)os_errno);
			return os_errno == ETIMEDOUT ? ETIMEDOUT : EHOSTUNREACH;
		}
		*ret_text = "connection refused";
		return ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		*ret_text = "cannot resolve the host name";
		return EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		*ret_text = "timed out";
		return ETIMEDOUT;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		*ret_text = "connection lost";
		return ECONNRESET;
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	default:
		return EPROTO; /* TLS failures, malformed replies, unsupported protocol ... */
	}
}

/* Transport failures worth another attempt for an idempotent call. */
static bool retryable_transport(int err)
{
	return err == ECONNREFUSED || err == ECONNRESET || err == ETIMEDOUT || err == EHOSTUNREACH;
}

static void op_prefix(const struct dbx__req *rq, char *buf, size_t len)
{
	if (rq->op)
		snprintf(buf, len, "%s%s%s", rq->op, rq->err_path ? " " : "",
			 rq->err_path ? rq->err_path : "");
	else
		snprintf(buf, len, "%s %s", rq->method, rq->path);
}

/* Sets up the easy handle for one attempt.  0 or -errno (message set). */
static int xfer_setup(struct xfer *x, struct curl_slist **ret_hdrs, char **ret_url)
{
	dbx_client *c = x->c;
	const struct dbx__req *rq = x->rq;
	CURL *h = x->easy;
	struct curl_slist *hdrs = NULL, *t;
	char *url = NULL;
	char ctype[256];
	bool has_body = rq->body || rq->src;
	int timeout = rq->timeout_ms > 0 ? rq->timeout_ms : c->timeout_ms;

	if (asprintf(&url, "%s%s%s%s", c->url, rq->path, rq->query && *rq->query ? "?" : "",
		     rq->query && *rq->query ? rq->query : "") < 0)
		return -ENOMEM;

	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
	if (rq->stream) {
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)((timeout + 999) / 1000));
	} else {
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout);
	}
	if (c->insecure) {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	} else {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	}
	if (c->ca_file)
		curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, x);

	if (!strcmp(rq->method, "GET") && !has_body) {
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	} else if (!strcmp(rq->method, "HEAD")) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (has_body) {
		curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE,
				 (curl_off_t)(rq->body ? rq->body_len : rq->src_len));
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, x);
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
	} else {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
		if (strcmp(rq->method, "POST"))
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
	}

	if (c->auth_header && !(hdrs = curl_slist_append(hdrs, c->auth_header)))
		goto nomem;
	/* The agent answers at once; no "Expect: 100-continue" round trip. */
	if (!(t = curl_slist_append(hdrs, "Expect:")))
		goto nomem;
	hdrs = t;
	snprintf(ctype, sizeof(ctype), "Content-Type:%s%s", rq->content_type ? " " : "",
		 rq->content_type ? rq->content_type : "");
	if (!(t = curl_slist_append(hdrs, ctype)))
		goto nomem;
	hdrs = t;
	for (const char *const *e = rq->headers; e && *e; e++) {
		if (!(t = curl_slist_append(hdrs, *e)))
			goto nomem;
		hdrs = t;
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	*ret_hdrs = hdrs;
	*ret_url = url;
	return 0;

nomem:
	curl_slist_free_all(hdrs);
	free(url);
	return -ENOMEM;
}

/* Runs the prepared transfer on the slot's multi handle, waking up every POLL_SLICE_MS to
 * check cancellation.  Returns the curl result. */
static CURLcode xfer_run(struct xfer *x, struct slot *s)
{
	CURLcode rc = CURLE_OK;
	int running = 1;

	if (curl_multi_add_handle(s->multi, s->easy) != CURLM_OK)
		return CURLE_FAILED_INIT;
	for (;;) {
		if (curl_multi_perform(s->multi, &running) != CURLM_OK) {
			rc = CURLE_FAILED_INIT;
			break;
		}
		if (!running)
			break;
		int err = call_stop_reason(x->c);
		if (err) {
			xfer_abort(x, err, "%s", stop_reason_text(err));
			rc = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
		int wait = POLL_SLICE_MS;
		if (tl_deadline_ms) {
			uint64_t now = dbx_now_ms();
			if (tl_deadline_ms > now && tl_deadline_ms - now < (uint64_t)wait)
				wait = (int)(tl_deadline_ms - now) + 1;
		}
		curl_multi_poll(s->multi, NULL, 0, wait, NULL);
	}
	if (running == 0) {
		int left;
		CURLMsg *m;
		rc = CURLE_GOT_NOTHING;
		while ((m = curl_multi_info_read(s->multi, &left)))
			if (m->msg == CURLMSG_DONE && m->easy_handle == s->easy)
				rc = m->data.result;
	}
	curl_multi_remove_handle(s->multi, s->easy);
	return rc;
}

/* Sleeps for ms unless the call is stopped first; returns the stop errno or 0. */
static int backoff_sleep(dbx_client *c, struct slot *s, int ms)
{
	uint64_t until = dbx_now_ms() + (uint64_t)ms;
	for (;;) {
		int err = call_stop_reason(c);
		if (err)
			return err;
		uint64_t now = dbx_now_ms();
		if (now >= until)
			return 0;
		uint64_t w = until - now;
		curl_multi_poll(s->multi, NULL, 0, (int)(w < POLL_SLICE_MS ? w : POLL_SLICE_MS),
				NULL);
	}
}

static int compat_status_errno(long st)
{
	switch (st) {
	case 1400:
	case 1422:
		return EINVAL;
	case 1401:
		return EKEYREJECTED; /* the token was refused: an authentication failure */
	case 1403:
		return EACCES;
	case 1404:
		return ENOENT;
	case 1409:
		return EEXIST;
	case 1600:
		return ENOEXEC;
	default:
		return EIO;
	}
}

int dbx__http_status_errno(long status)
{
	switch (status) {
	case 400:
	case 415:
	case 422:
		return EINVAL;
	case 401:
		return EKEYREJECTED; /* the token was refused: an authentication failure */
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 405:
		return EOPNOTSUPP;
	case 408:
		return ETIMEDOUT;
	case 409:
		return EEXIST;
	case 412:
		return ESTALE;
	case 413:
		return EFBIG;
	case 429:
		return EAGAIN;
	case 502:
	case 503:
		return EHOSTUNREACH;
	case 504:
		return ETIMEDOUT;
	case 507:
		return ENOSPC;
	default:
		return EIO;
	}
}

/* The reason part of an agent message "op path: reason". */
static const char *agent_reason(const char *msg)
{
	const char *p = NULL, *q = msg;
	while ((q = strstr(q, ": "))) {
		p = q + 2;
		q = p;
	}
	return p && *p ? p : msg;
}

int dbx__reply_error(long status, const char *body, size_t len, bool compat, char *reason,
		     size_t reason_len)
{
	int err;
	cJSON *j = NULL;
	const cJSON *e, *m, *st;

	reason[0] = '\0';
	if (body && len > 0 && body[0] == '{')
		j = cJSON_ParseWithLength(body, len);
	if (status_ok(status)) {
		/* Only a compat envelope can carry an error in a 2xx reply. */
		st = compat ? cJSON_GetObjectItemCaseSensitive(j, "status") : NULL;
		if (!cJSON_IsNumber(st) || st->valuedouble == 0) {
			cJSON_Delete(j);
			return 0;
		}
		err = compat_status_errno((long)st->valuedouble);
		m = cJSON_GetObjectItemCaseSensitive(j, "message");
		snprintf(reason, reason_len, "%s",
			 cJSON_IsString(m) && *m->valuestring ? m->valuestring : strerror(err));
		cJSON_Delete(j);
		return err;
	}
	if (status == 401) {
		cJSON_Delete(j);
		snprintf(reason, reason_len, "authentication failed (wrong token?)");
		return EKEYREJECTED;
	}
	e = cJSON_GetObjectItemCaseSensitive(j, "error");
	m = cJSON_GetObjectItemCaseSensitive(j, "message");
	st = cJSON_GetObjectItemCaseSensitive(j, "status");
	if (cJSON_IsString(e)) {
		err = dbx_errno_from_name(e->valuestring);
		snprintf(reason, reason_len, "%s",
			 cJSON_IsString(m) && *m->valuestring ? agent_reason(m->valuestring)
							      : strerror(err));
	} else if (cJSON_IsNumber(st) && st->valuedouble != 0) {
		err = compat_status_errno((long)st->valuedouble);
		snprintf(reason, reason_len, "%s",
			 cJSON_IsString(m) && *m->valuestring ? m->valuestring : strerror(err));
	} else {
		err = dbx__http_status_errno(status);
		/* A plain-text rejection (axum-style 4xx) is worth quoting; its first line. */
		if (body && len > 0 && !j) {
			size_t l = strcspn(body, "\r\n");
			if (l > 200)
				l = 200;
			snprintf(reason, reason_len, "HTTP %ld: %.*s", status, (int)l, body);
		} else {
			const char *what = status == 502   ? "bad gateway"
					   : status == 503 ? "service unavailable"
					   : status == 504 ? "gateway timeout"
							   : strerror(err);
			snprintf(reason, reason_len, "HTTP %ld: %s", status, what);
		}
	}
	cJSON_Delete(j);
	return err;
}

static int request_impl(dbx_client *c, const struct dbx__req *rq, struct dbx__resp *resp, bool raw)
{
	struct slot *s = NULL;
	struct xfer x;
	char prefix[512];
	char reason[512];
	int attempt = 0, backoff = BACKOFF_FIRST_MS;
	int r = 0;
	/* A source is consumed by an attempt: only a memory body can be sent twice. */
	bool may_retry = rq->idempotent && !rq->src;

	memset(resp, 0, sizeof(*resp));
	resp->size = UINT64_MAX;
	/* A call that gets no reply must not leave the last one's directories behind. */
	tl_has_dir[0] = tl_has_dir[1] = false;
	op_prefix(rq, prefix, sizeof(prefix));
	if (rq->body && rq->src)
		return dbx__error(EINVAL, "%s: both a body and a source given", prefix);

	memset(&x, 0, sizeof(x));
	x.c = c;
	x.rq = rq;
	x.resp = resp;
	x.mem = rq->body;
	x.max_body = rq->max_body ? rq->max_body : DEFAULT_MAX_BODY;
	dbx_sb_init(&x.body, 0);

	int stop = call_stop_reason(c);
	if (stop)
		return dbx__error(stop, "%s: %s", prefix, stop_reason_text(stop));
	s = slot_get(c);
	if (!s)
		return dbx__error(ENOMEM, "%s: out of memory", prefix);
	x.easy = s->easy;

	for (;;) {
		struct curl_slist *hdrs = NULL;
		char *url = NULL;
		CURLcode rc;
		long st = 0, os_errno = 0, nconn = 0;
		curl_off_t up = 0, down = 0;

		dbx_sb_reset(&x.body);
		x.up_done = 0;
		x.abort_err = 0;
		x.abort_msg[0] = '\0';
		x.abort_verbatim = false;
		x.errbuf[0] = '\0';
		x.sink_started = false;
		memset(&resp->meta, 0, sizeof(resp->meta));
		resp->has_dir[0] = resp->has_dir[1] = false;
		resp->ver[0] = '\0';
		resp->size = UINT64_MAX;
		resp->status = 0;

		r = xfer_setup(&x, &hdrs, &url);
		if (r < 0) {
			r = dbx__error(ENOMEM, "%s: out of memory", prefix);
			break;
		}
		dbx__log(3, "%s %s%s%s (attempt %d)", rq->method, rq->path, rq->query ? "?" : "",
			 rq->query ? rq->query : "", attempt + 1);
		rc = xfer_run(&x, s);
		atomic_fetch_add(&c->n_requests, 1);
		curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &st);
		curl_easy_getinfo(s->easy, CURLINFO_OS_ERRNO, &os_errno);
		curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &nconn);
		curl_easy_getinfo(s->easy, CURLINFO_SIZE_UPLOAD_T, &up);
		curl_easy_getinfo(s->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
		atomic_fetch_add(&c->n_connects, (uint64_t)(nconn > 0 ? nconn : 0));
		atomic_fetch_add(&c->n_up, (uint64_t)(up > 0 ? up : 0));
		atomic_fetch_add(&c->n_down, (uint64_t)(down > 0 ? down : 0));
		curl_slist_free_all(hdrs);

		bool retry = false;
		if (rc != CURLE_OK) {
			const char *text;
			int err;
			if (x.abort_err) {
				err = x.abort_err;
				text = x.abort_msg;
				retry = false;
			} else {
				err = reason_from_curl(rc, os_errno, &text);
				/* curl's detail ("SSL certificate problem: ...") beats its generic
				 * text. */
				if (err == EPROTO && x.errbuf[0])
					text = x.errbuf;
				retry = retryable_transport(err) && !x.sink_started;
			}
			resp->status = 0;
			if (retry && may_retry && attempt < c->retries) {
				dbx__log(2, "%s: %s: %s; retrying in %d ms", prefix, url, text,
					 backoff);
			} else {
				/* Aborted by us (cancel, sink, source): the URL adds nothing. */
				if (x.abort_verbatim)
					r = dbx__error(err, "%s", text);
				else if (x.abort_err)
					r = dbx__error(err, "%s: %s", prefix, text);
				else
					r = dbx__error(err, "%s: %s: %s", prefix, url, text);
				free(url);
				break;
			}
		} else {
			resp->status = st;
			tl_meta = resp->meta;
			for (int k = 0; k < 2; k++) {
				tl_has_dir[k] = resp->has_dir[k];
				if (resp->has_dir[k])
					tl_dir[k] = resp->dir[k];
			}
			if ((st == 502 || st == 503 || st == 504) && may_retry &&
			    attempt < c->retries) {
				retry = true;
				dbx__log(2, "%s: %s: HTTP %ld; retrying in %d ms", prefix, url, st,
					 backoff);
			} else {
				bool compat = !raw && !rq->sink && !strncmp(rq->path, "/api/", 5);
				int err = 0;
				if (!raw)
					err = dbx__reply_error(st, x.body.data, x.body.len, compat,
							       reason, sizeof(reason));
				if (err) {
					if (st == 401 || st == 502 || st == 503 || st == 504)
						r = dbx__error(err, "%s: %s: %s", prefix, c->url,
							       reason);
					else
						r = dbx__error(err, "%s: %s", prefix, reason);
				} else {
					r = 0;
				}
				free(url);
				break;
			}
		}
		free(url);
		int serr = backoff_sleep(c, s, backoff);
		if (serr) {
			r = dbx__error(serr, "%s: %s", prefix, stop_reason_text(serr));
			break;
		}
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
		attempt++;
		atomic_fetch_add(&c->n_retries, 1);
	}
	slot_put(c, s);
	if (rq->sink && resp->status && status_ok(resp->status)) {
		dbx_sb_free(&x.body);
	} else {
		resp->body = dbx_sb_steal(&x.body, &resp->len);
		if (!resp->body && !resp->len) {
			resp->body = strdup("");
			if (!resp->body && r == 0)
				r = dbx__error(ENOMEM, "%s: out of memory", prefix);
		}
	}
	return r;
}

int dbx__request(dbx_client *c, const struct dbx__req *rq, struct dbx__resp *resp)
{
	return request_impl(c, rq, resp, false);
}

void dbx__resp_free(struct dbx__resp *resp)
{
	if (!resp)
		return;
	free(resp->body);
	resp->body = NULL;
	resp->len = 0;
}

int dbx__request_json(dbx_client *c, const struct dbx__req *rq, cJSON **ret_json)
{
	struct dbx__resp resp;
	char prefix[512];
	int r;

	if (ret_json)
		*ret_json = NULL;
	r = dbx__request(c, rq, &resp);
	if (r < 0)
		goto out;
	if (ret_json) {
		cJSON *j = cJSON_ParseWithLength(resp.body, resp.len);
		if (!j) {
			op_prefix(rq, prefix, sizeof(prefix));
			r = dbx__error(EPROTO, "%s: the agent sent a reply that is not JSON",
				       prefix);
			goto out;
		}
		*ret_json = j;
	}
out:
	dbx__resp_free(&resp);
	return r;
}

/* ---- public helpers ----------------------------------------------------------------------- */

int dbx_client_health(dbx_client *c)
{
	struct dbx__req rq = {
		.method = "GET",
		.path = "/health",
		.idempotent = true,
		.op = "health",
		.err_path = c->url,
	};
	cJSON *j = NULL;
	int r = dbx__request_json(c, &rq, &j);
	if (r < 0)
		return r;
	const cJSON *hs = cJSON_GetObjectItemCaseSensitive(j, "healthStatus");
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
	bool ok = (cJSON_IsString(hs) && !strcmp(hs->valuestring, "ok")) ||
		  (cJSON_IsString(st) && !strcmp(st->valuestring, "ok"));
	cJSON_Delete(j);
	if (!ok)
		return dbx__error(EPROTO, "health %s: the agent did not report \"ok\"", c->url);
	return 0;
}

int dbx_client_call(dbx_client *c, const char *method, const char *path_query,
		    const char *content_type, const void *body, size_t body_len, long *ret_status,
		    char **ret_body, size_t *ret_len)
{
	struct dbx__req rq = {0};
	struct dbx__resp resp;
	char *path = NULL;
	int r;

	if (ret_status)
		*ret_status = 0;
	if (ret_body)
		*ret_body = NULL;
	if (ret_len)
		*ret_len = 0;
	if (!method || !path_query || path_query[0] != '/')
		return dbx__error(EINVAL, "call: the path must start with '/'");
	path = strdup(path_query);
	if (!path)
		return dbx__error(ENOMEM, "call %s: out of memory", path_query);
	char *q = strchr(path, '?');
	if (q)
		*q++ = '\0';
	rq.method = method;
	rq.path = path;
	rq.query = q;
	rq.content_type = content_type;
	rq.body = body;
	rq.body_len = body ? body_len : 0;
	rq.idempotent = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	rq.op = method;
	rq.err_path = path_query;
	r = request_impl(c, &rq, &resp, true);
	if (r == 0) {
		if (ret_status)
			*ret_status = resp.status;
		if (ret_len)
			*ret_len = resp.len;
		if (ret_body) {
			*ret_body = resp.body;
			resp.body = NULL;
		}
	}
	dbx__resp_free(&resp);
	free(path);
	return r;
}
