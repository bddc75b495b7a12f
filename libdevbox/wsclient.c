/* SPDX-License-Identifier: Apache-2.0 */
/*
 * wsclient: one libwebsockets client context per dbx_exec / dbx_watch (see wsclient.h).
 *
 * Requests from other threads (connect, send, close, rx pause) are recorded under w->mu and
 * picked up by the service thread in LWS_CALLBACK_EVENT_WAIT_CANCELLED after
 * lws_cancel_service(); only the service thread calls into lws for a wsi.
 */
#include "wsclient.h"

#include <errno.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PT_SERV_BUF        (128u << 10) /* lws read/write buffer: up to 2 exec frames per read */
#define WHY_MAX            160
#define DEFAULT_TIMEOUT_MS 10000

struct wsmsg {
	struct wsmsg *next;
	size_t len;
	bool binary;
	unsigned char buf[]; /* LWS_PRE + len */
};

enum ws_state { ST_IDLE, ST_CONNECTING, ST_OPEN };

struct dbx__ws {
	struct dbx__ws_config cfg;
	dbx_client *c; /* borrowed: the URL and token of each connection */
	char *auth;    /* "Bearer <token>" or NULL */
	bool insecure;
	struct lws_context *ctx;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t mu;
	pthread_cond_t cond; /* senders waiting for queue space or the end of the connection */
	/* protected by mu */
	char *pending_url; /* a connect request not yet started */
	bool close_req;
	int rx_want; /* -1: nothing to do; 0 pause; 1 resume */
	struct wsmsg *head, *tail;
	size_t queued;
	enum ws_state state;
	bool stop;

	/* service thread only */
	struct lws *wsi;
	char *conn_url;    /* the last attempt's URL, split in place by lws_parse_uri() */
	bool attempt_live; /* an attempt or connection exists (ended() not called yet) */
	char conn_path[4096];
	char conn_host[300];
	struct dbx_strbuf rx;
	bool rx_binary;
	bool rx_in_msg; /* fragments of a message are being collected */
	int fail_err;   /* why we are closing the connection ourselves, 0 if we are not */
	char fail_why[WHY_MAX];
	int peer_code; /* close status the peer sent, 0 if none */
	char peer_why[WHY_MAX];
	bool destroying; /* context teardown: no more user callbacks */
	lws_sorted_usec_list_t sul_timer;
	void (*timer_fn)(void *ud);
	lws_sorted_usec_list_t sul_deadline;
};

/* Idle connections are pinged after 30 s and dropped after 60 s without an answer. */
static const lws_retry_bo_t idle_policy = {
	.secs_since_valid_ping = 30,
	.secs_since_valid_hangup = 60,
};

static void lws_log_to_hook(int level, const char *line)
{
	size_t n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	dbx__log(level == LLL_ERR ? 1 : 2, "libwebsockets: %.*s", (int)n, line);
}

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void)
{
	/* libdevbox never prints: lws' own lines go to the debug hook. */
	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_to_hook);
}

static bool on_service_thread(const struct dbx__ws *w)
{
	return w->thread_started && pthread_equal(w->thread, pthread_self());
}

static void queue_drop(struct dbx__ws *w)
{
	while (w->head) {
		struct wsmsg *m = w->head;
		w->head = m->next;
		free(m);
	}
	w->tail = NULL;
	w->queued = 0;
}

/* ---- service thread ---------------------------------------------------------------------- */

static void ended(struct dbx__ws *w, int err, const char *why)
{
	lws_sul_cancel(&w->sul_deadline);
	w->wsi = NULL;
	w->attempt_live = false;
	dbx_sb_reset(&w->rx);
	pthread_mutex_lock(&w->mu);
	w->state = ST_IDLE;
	w->close_req = false;
	w->rx_want = -1;
	queue_drop(w);
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->mu);
	if (!w->destroying && w->cfg.ops->closed)
		w->cfg.ops->closed(w->cfg.ud, err, why);
}

static void deadline_cb(lws_sorted_usec_list_t *sul)
{
	struct dbx__ws *w = lws_container_of(sul, struct dbx__ws, sul_deadline);
	pthread_mutex_lock(&w->mu);
	bool connecting = w->state == ST_CONNECTING;
	pthread_mutex_unlock(&w->mu);
	if (!connecting || !w->wsi)
		return;
	w->fail_err = ETIMEDOUT;
	snprintf(w->fail_why, sizeof(w->fail_why), "no WebSocket handshake within %d ms",
		 w->cfg.timeout_ms);
	lws_set_timeout(w->wsi, PENDING_TIMEOUT_SENT_CLIENT_HANDSHAKE, LWS_TO_KILL_ASYNC);
}

static void timer_cb(lws_sorted_usec_list_t *sul)
{
	struct dbx__ws *w = lws_container_of(sul, struct dbx__ws, sul_timer);
	void (*fn)(void *) = w->timer_fn;
	w->timer_fn = NULL;
	if (fn && !w->destroying)
		fn(w->cfg.ud);
}

void dbx__ws_after(struct dbx__ws *w, int ms, void (*fn)(void *ud))
{
	w->timer_fn = fn;
	lws_sul_schedule(w->ctx, 0, &w->sul_timer, timer_cb, (lws_usec_t)ms * LWS_US_PER_MS);
}

static void start_connect(struct dbx__ws *w, char *url)
{
	const char *prot, *addr, *path;
	int port;

	w->fail_err = 0;
	w->fail_why[0] = '\0';
	w->peer_code = 0;
	w->peer_why[0] = '\0';
	w->rx_in_msg = false;
	/* lws_parse_uri() splits the string in place; lws may still look at the pieces while an
	 * attempt fails inside lws_client_connect_via_info(), so it lives until the next one. */
	free(w->conn_url);
	w->conn_url = url;
	w->attempt_live = true;
	if (lws_parse_uri(url, &prot, &addr, &port, &path) ||
	    (strcmp(prot, "ws") && strcmp(prot, "wss"))) {
		ended(w, -EINVAL, "not a ws:// or wss:// URL");
		return;
	}
	bool tls = !strcmp(prot, "wss");
	snprintf(w->conn_path, sizeof(w->conn_path), "/%s", path);
	if ((tls && port == 443) || (!tls && port == 80))
		snprintf(w->conn_host, sizeof(w->conn_host), "%s", addr);
	else if (strchr(addr, ':'))
		snprintf(w->conn_host, sizeof(w->conn_host), "[%s]:%d", addr, port);
	else
		snprintf(w->conn_host, sizeof(w->conn_host), "%s:%d", addr, port);

	struct lws_client_connect_info ci = {
		.context = w->ctx,
		.address = addr,
		.port = port,
		.path = w->conn_path,
		.host = w->conn_host,
		.origin = w->conn_host,
		.protocol = NULL, /* the agent serves its WebSockets without a subprotocol */
		.local_protocol_name = "dbx-ws",
		.pwsi = &w->wsi,
		.retry_and_idle_policy = &idle_policy,
	};
	if (tls) {
		ci.ssl_connection = LCCSCF_USE_SSL;
		if (w->insecure)
			ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED |
					     LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
					     LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
	}
	lws_sul_schedule(w->ctx, 0, &w->sul_deadline, deadline_cb,
			 (lws_usec_t)w->cfg.timeout_ms * LWS_US_PER_MS);
	/* A failure inside this call is reported through CLIENT_CONNECTION_ERROR (pwsi). */
	if (!lws_client_connect_via_info(&ci) && w->attempt_live) {
		w->wsi = NULL;
		ended(w, -ECONNREFUSED, "cannot start the connection");
	}
}

/* Picks up what other threads asked for. */
static void take_requests(struct dbx__ws *w)
{
	pthread_mutex_lock(&w->mu);
	char *url = w->pending_url;
	w->pending_url = NULL;
	bool writable = w->head || w->close_req;
	int rx = w->rx_want;
	w->rx_want = -1;
	bool abort_connect = w->close_req && w->state == ST_CONNECTING;
	bool open = w->state == ST_OPEN; /* ESTABLISHED takes care of the rest */
	pthread_mutex_unlock(&w->mu);

	if (url)
		start_connect(w, url);
	if (!w->wsi)
		return;
	if (abort_connect) {
		w->fail_err = ECONNRESET;
		snprintf(w->fail_why, sizeof(w->fail_why), "closed by the client");
		lws_set_timeout(w->wsi, PENDING_TIMEOUT_SENT_CLIENT_HANDSHAKE, LWS_TO_KILL_ASYNC);
		return;
	}
	if (!open)
		return;
	if (rx >= 0)
		lws_rx_flow_control(w->wsi, rx);
	if (writable)
		lws_callback_on_writable(w->wsi);
}

static int close_errno_from_status(long status)
{
	switch (status) {
	case 401:
		return EKEYREJECTED;
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 409:
		return EAGAIN;
	case 502:
	case 503:
	case 504:
		return ECONNREFUSED;
	default:
		return EPROTO;
	}
}

static int conn_error(struct dbx__ws *w, struct lws *wsi, const char *in)
{
	int err;
	char why[2 * WHY_MAX];
	const char *s = in ? in : "connection failed";

	if (w->fail_err) {
		err = w->fail_err;
		snprintf(why, sizeof(why), "%s", w->fail_why);
	} else if (strstr(s, "unauthorized")) {
		err = EKEYREJECTED;
		snprintf(why, sizeof(why), "HTTP 401: the agent refused the token");
	} else if (strstr(s, "not 101")) {
		unsigned int st = lws_http_client_http_response(wsi);
		err = close_errno_from_status(st);
		snprintf(why, sizeof(why), "HTTP %u instead of a WebSocket upgrade", st);
	} else if (strstr(s, "connect") || strstr(s, "Closed before conn") ||
		   strstr(s, "closed before established")) {
		err = ECONNREFUSED;
		snprintf(why, sizeof(why), "cannot connect: %s", s);
	} else if (strstr(s, "ssl") || strstr(s, "SSL") || strstr(s, "tls") || strstr(s, "cert")) {
		err = EKEYREJECTED;
		snprintf(why, sizeof(why), "TLS: %s", s);
	} else {
		err = EPROTO;
		snprintf(why, sizeof(why), "%s", s);
	}
	ended(w, -err, why);
	return 0;
}

/* Writes one queued message per WRITEABLE; returns -1 to close. */
static int on_writable(struct dbx__ws *w, struct lws *wsi)
{
	pthread_mutex_lock(&w->mu);
	struct wsmsg *m = w->head;
	bool close_now = !m && w->close_req;
	if (m) {
		w->head = m->next;
		if (!w->head)
			w->tail = NULL;
		w->queued -= m->len;
		pthread_cond_broadcast(&w->cond);
	}
	bool more = w->head || w->close_req;
	pthread_mutex_unlock(&w->mu);

	if (close_now) {
		lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
		w->fail_err = ECONNRESET;
		snprintf(w->fail_why, sizeof(w->fail_why), "closed by the client");
		return -1;
	}
	if (!m)
		return 0;
	int n = lws_write(wsi, m->buf + LWS_PRE, m->len,
			  m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
	free(m);
	if (n < 0) {
		w->fail_err = EPIPE;
		snprintf(w->fail_why, sizeof(w->fail_why), "write to the agent failed");
		return -1;
	}
	if (more)
		lws_callback_on_writable(wsi);
	return 0;
}

static int on_receive(struct dbx__ws *w, struct lws *wsi, const void *in, size_t len)
{
	if (!w->rx_in_msg) {
		dbx_sb_reset(&w->rx);
		w->rx_binary = lws_frame_is_binary(wsi);
		w->rx_in_msg = true;
	}
	if (dbx_sb_append(&w->rx, in, len) < 0) {
		w->fail_err = EMSGSIZE;
		snprintf(w->fail_why, sizeof(w->fail_why),
			 "a message from the agent exceeds %zu bytes", w->cfg.max_msg);
		lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
				 (unsigned char *)"too big", 7);
		return -1;
	}
	if (!lws_is_final_fragment(wsi))
		return 0;
	w->rx_in_msg = false;
	int r = w->cfg.ops->message(w->cfg.ud, w->rx_binary, w->rx.data, w->rx.len);
	dbx_sb_reset(&w->rx);
	if (r < 0) {
		w->fail_err = -r;
		snprintf(w->fail_why, sizeof(w->fail_why), "%s", strerror(-r));
		lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, (unsigned char *)"bad message",
				 11);
		return -1;
	}
	return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	struct lws_context *ctx = lws_get_context(wsi);
	struct dbx__ws *w = ctx ? lws_context_user(ctx) : NULL;
	if (!w)
		return 0;

	switch (reason) {
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		if (!w->destroying)
			take_requests(w);
		return 0;

	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
		unsigned char **p = in, *end = *p + len;
		if (w->auth && lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION,
							    (const unsigned char *)w->auth,
							    (int)strlen(w->auth), p, end))
			return -1;
		return 0;
	}

	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (wsi != w->wsi && w->wsi)
			return 0;
		return conn_error(w, wsi, in);

	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		lws_sul_cancel(&w->sul_deadline);
		w->wsi = wsi;
		pthread_mutex_lock(&w->mu);
		w->state = ST_OPEN;
		bool writable = w->head || w->close_req;
		pthread_mutex_unlock(&w->mu);
		if (w->cfg.ops->open)
			w->cfg.ops->open(w->cfg.ud);
		if (writable)
			lws_callback_on_writable(wsi);
		return 0;

	case LWS_CALLBACK_CLIENT_RECEIVE:
		return on_receive(w, wsi, in, len);

	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return on_writable(w, wsi);

	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (len >= 2) {
			const unsigned char *b = in;
			w->peer_code = b[0] << 8 | b[1];
			size_t n = len - 2 < WHY_MAX - 1 ? len - 2 : WHY_MAX - 1;
			memcpy(w->peer_why, b + 2, n);
			w->peer_why[n] = '\0';
		}
		return 0;

	case LWS_CALLBACK_CLIENT_CLOSED: {
		if (wsi != w->wsi)
			return 0;
		char why[2 * WHY_MAX];
		int err = w->fail_err ? w->fail_err : ECONNRESET;
		if (w->fail_err)
			snprintf(why, sizeof(why), "%s", w->fail_why);
		else if (w->peer_code)
			snprintf(why, sizeof(why), "the agent closed the connection (%d%s%s)",
				 w->peer_code, w->peer_why[0] ? ": " : "", w->peer_why);
		else
			snprintf(why, sizeof(why), "the connection to the agent was lost");
		ended(w, -err, why);
		return 0;
	}

	case LWS_CALLBACK_WSI_DESTROY:
		if (wsi == w->wsi)
			w->wsi = NULL;
		return 0;

	default:
		return 0;
	}
}

static const struct lws_protocols protocols[] = {
	{"dbx-ws", callback, 0, 0, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *service_main(void *arg)
{
	struct dbx__ws *w = arg;
	for (;;) {
		pthread_mutex_lock(&w->mu);
		bool stop = w->stop;
		pthread_mutex_unlock(&w->mu);
		if (stop)
			break;
		if (lws_service(w->ctx, 0) < 0)
			break;
	}
	return NULL;
}

/* ---- any thread -------------------------------------------------------------------------- */

int dbx__ws_new(dbx_client *c, const struct dbx__ws_config *cfg, struct dbx__ws **ret_ws)
{
	int r;
	struct dbx__ws *w = calloc(1, sizeof(*w));
	if (!w)
		return dbx__error(ENOMEM, "%s: out of memory", cfg->what);
	w->cfg = *cfg;
	if (w->cfg.timeout_ms <= 0)
		w->cfg.timeout_ms = DEFAULT_TIMEOUT_MS;
	w->c = c;
	w->insecure = dbx__client_insecure(c);
	w->rx_want = -1;
	dbx_sb_init(&w->rx, cfg->max_msg);
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cond, NULL);
	const char *tok = dbx_client_token(c);
	if (tok && *tok && asprintf(&w->auth, "Bearer %s", tok) < 0) {
		w->auth = NULL;
		r = dbx__error(ENOMEM, "%s: out of memory", cfg->what);
		goto fail;
	}

	pthread_once(&log_once, log_init);
	struct lws_context_creation_info info = {
		.port = CONTEXT_PORT_NO_LISTEN,
		.protocols = protocols,
		.gid = -1,
		.uid = -1,
		.user = w,
		/* TLS only for https agents: the client SSL_CTX loads the CA bundle (~20 ms). */
		.options = !strncmp(dbx_client_url(c), "https:", 6)
				   ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT
				   : 0,
		.pt_serv_buf_size = PT_SERV_BUF,
		.fd_limit_per_thread = 16, /* one connection, plus lws' own pipe */
		.timeout_secs = (unsigned)(w->cfg.timeout_ms + 999) / 1000,
		.connect_timeout_secs = (unsigned)(w->cfg.timeout_ms + 999) / 1000,
	};
	w->ctx = lws_create_context(&info);
	if (!w->ctx) {
		r = dbx__error(ENOMEM, "%s: cannot create the libwebsockets context", cfg->what);
		goto fail;
	}

	/* The service thread takes no signals: callers such as devboxctl handle them. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&w->thread, NULL, service_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0) {
		dbx__error(-r, "%s: cannot start a thread: %s", cfg->what, strerror(-r));
		goto fail;
	}
	w->thread_started = true;
	*ret_ws = w;
	return 0;
fail:
	dbx__ws_free(w);
	return r;
}

void dbx__ws_free(struct dbx__ws *w)
{
	if (!w)
		return;
	if (w->thread_started) {
		pthread_mutex_lock(&w->mu);
		w->stop = true;
		pthread_mutex_unlock(&w->mu);
		lws_cancel_service(w->ctx);
		pthread_join(w->thread, NULL);
	}
	if (w->ctx) {
		/* Teardown closes the connection; its callbacks must not reach the user. */
		w->destroying = true;
		lws_context_destroy(w->ctx);
	}
	free(w->conn_url);
	free(w->pending_url);
	queue_drop(w);
	dbx_sb_free(&w->rx);
	free(w->auth);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

int dbx__ws_connect(struct dbx__ws *w, const char *path_query)
{
	char *url = dbx__ws_url(w->c, path_query);
	if (!url)
		return dbx__error(ENOMEM, "%s: out of memory", w->cfg.what);
	pthread_mutex_lock(&w->mu);
	if (w->state != ST_IDLE || w->pending_url) {
		pthread_mutex_unlock(&w->mu);
		free(url);
		return dbx__error(EBUSY, "%s: already connected", w->cfg.what);
	}
	w->pending_url = url;
	w->state = ST_CONNECTING;
	w->close_req = false;
	queue_drop(w);
	pthread_mutex_unlock(&w->mu);
	lws_cancel_service(w->ctx);
	return 0;
}

int dbx__ws_send(struct dbx__ws *w, bool binary, const void *data, size_t len, size_t block_above)
{
	struct wsmsg *m = malloc(sizeof(*m) + LWS_PRE + len);
	if (!m)
		return dbx__error(ENOMEM, "%s: out of memory", w->cfg.what);
	m->next = NULL;
	m->len = len;
	m->binary = binary;
	if (len)
		memcpy(m->buf + LWS_PRE, data, len);

	pthread_mutex_lock(&w->mu);
	while (block_above && w->queued > block_above && w->state != ST_IDLE && !w->close_req &&
	       !w->stop)
		pthread_cond_wait(&w->cond, &w->mu);
	if (w->state == ST_IDLE || w->close_req || w->stop) {
		pthread_mutex_unlock(&w->mu);
		free(m);
		return dbx__error(EPIPE, "%s: the connection to the agent is closed", w->cfg.what);
	}
	if (w->tail)
		w->tail->next = m;
	else
		w->head = m;
	w->tail = m;
	w->queued += len;
	bool open = w->state == ST_OPEN;
	pthread_mutex_unlock(&w->mu);
	if (open)
		lws_cancel_service(w->ctx);
	return 0;
}

void dbx__ws_close(struct dbx__ws *w)
{
	pthread_mutex_lock(&w->mu);
	bool live = w->state != ST_IDLE;
	if (live)
		w->close_req = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->mu);
	if (live)
		lws_cancel_service(w->ctx);
}

void dbx__ws_rx_pause(struct dbx__ws *w, bool pause)
{
	if (on_service_thread(w)) {
		if (w->wsi)
			lws_rx_flow_control(w->wsi, pause ? 0 : 1);
		return;
	}
	pthread_mutex_lock(&w->mu);
	w->rx_want = pause ? 0 : 1;
	pthread_mutex_unlock(&w->mu);
	lws_cancel_service(w->ctx);
}
