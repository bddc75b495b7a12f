/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_watch: the change-event stream of a devbox over /fs/v1/events (agent/PROTOCOL.md §3).
 *
 * Owns one wsclient whose service thread is "the watch's thread": it decodes frames, runs the
 * user's callbacks in seq order and, when the connection drops, schedules the reconnect
 * (exponential backoff from 100 ms to backoff_max_ms, reset by every successful hello) resuming
 * from the boot id and the seq of the last event delivered.
 *
 * Locking: w->mu protects what other threads read (connected, session, reconnects, the first
 * connection's outcome); the resume position and backoff are the service thread's alone.
 */
#include "wsclient.h"
#include "base64.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVENT_MSG_MAX  (1u << 20) /* one event: two paths and an attr are far below this */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define START_WAIT_MS  30000 /* guards the first hello; the handshake has its own limit */

struct dbx_watch {
	dbx_client *c; /* borrowed: must outlive the watch */
	struct dbx__ws *ws;
	struct dbx_watch_callbacks cb;
	void *ud;
	int backoff_max_ms;
	bool no_reconnect;
	bool want_data;

	pthread_mutex_t mu;
	pthread_cond_t cond; /* the first connection's outcome */
	/* protected by mu */
	bool connected;
	char session[64];
	uint64_t reconnects;
	bool first_done;
	int first_err;
	char first_why[256];

	/* service thread only */
	bool have_pos; /* boot/since name a resume point */
	char boot[33];
	uint64_t since;  /* seq of the last event delivered */
	bool hello_seen; /* on the current connection */
	bool ever_up;    /* some connection got its hello */
	int backoff_ms;
};

static const char *const kind_names[] = {
	[DBX_EV_CREATE] = "create", [DBX_EV_MODIFY] = "modify",     [DBX_EV_ATTRIB] = "attrib",
	[DBX_EV_DELETE] = "delete", [DBX_EV_RENAME] = "rename",     [DBX_EV_MKDIR] = "mkdir",
	[DBX_EV_RMDIR] = "rmdir",   [DBX_EV_OVERFLOW] = "overflow",
};

const char *dbx_event_kind_name(enum dbx_event_kind k)
{
	if ((unsigned)k < sizeof(kind_names) / sizeof(kind_names[0]) && kind_names[k])
		return kind_names[k];
	return "unknown";
}

static enum dbx_event_kind kind_from_name(const char *s)
{
	for (size_t i = 1; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
		if (kind_names[i] && !strcmp(kind_names[i], s))
			return (enum dbx_event_kind)i;
	return 0;
}

/* "/fs/v1/events?boot=..&since=..&data=1", each part only when it applies. */
static char *events_path(const struct dbx_watch *w)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	struct dbx_strbuf args = DBX_STRBUF_INIT;
	int r = dbx_sb_puts(&q, "/fs/v1/events");

	if (r == 0 && w->have_pos) {
		r = dbx__query_add(&args, "boot", w->boot);
		if (r == 0)
			r = dbx__query_addu(&args, "since", w->since);
	}
	if (r == 0 && w->want_data)
		r = dbx__query_add(&args, "data", "1");
	if (r == 0 && args.len)
		r = dbx_sb_printf(&q, "?%s", args.data);
	dbx_sb_free(&args);
	if (r < 0)
		goto fail;
	return dbx_sb_steal(&q, NULL);
fail:
	dbx_sb_free(&q);
	return NULL;
}

/* ---- service thread ---------------------------------------------------------------------- */

static void reconnect(void *ud)
{
	struct dbx_watch *w = ud;
	char *pq = events_path(w);
	int r = pq ? dbx__ws_connect(w->ws, pq) : -ENOMEM;
	free(pq);
	if (r < 0) {
		/* Only ENOMEM can get here; try again later. */
		dbx__log(1, "watch: reconnect: %s", strerror(-r));
		dbx__ws_after(w->ws, w->backoff_max_ms, reconnect);
	}
}

static int on_hello(struct dbx_watch *w, const cJSON *m)
{
	struct dbx_watch_hello h = {0};
	const char *boot = dbx__json_str(m, "boot");
	const char *session = dbx__json_str(m, "session");
	if (!boot || strlen(boot) >= sizeof(h.boot) || !dbx__json_u64(m, "seq", &h.seq) ||
	    (session && strlen(session) >= sizeof(h.session)))
		return -EPROTO;
	snprintf(h.boot, sizeof(h.boot), "%s", boot);
	snprintf(h.session, sizeof(h.session), "%s", session ? session : "");
	h.resumed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "resumed"));

	/* Not resumed: the stream starts now, so "now" is where the next resume starts. */
	if (!h.resumed || !w->have_pos || strcmp(w->boot, h.boot)) {
		snprintf(w->boot, sizeof(w->boot), "%s", h.boot);
		w->since = h.seq;
		w->have_pos = true;
	}
	w->hello_seen = true;
	w->backoff_ms = BACKOFF_MIN_MS;

	pthread_mutex_lock(&w->mu);
	w->connected = true;
	snprintf(w->session, sizeof(w->session), "%s", h.session);
	if (w->ever_up)
		w->reconnects++;
	w->first_done = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->mu);
	w->ever_up = true;

	if (w->cb.hello)
		w->cb.hello(w->ud, &h);
	return 0;
}

/* A workspace path as events carry it: "." (the root) or names joined by single slashes, none
 * of them "." or "..". */
static bool event_path_ok(const char *p)
{
	if (!strcmp(p, "."))
		return true;
	if (!*p)
		return false;
	for (const char *s = p;;) {
		const char *e = strchr(s, '/');
		size_t n = e ? (size_t)(e - s) : strlen(s);

		if (!n || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		if (!e)
			return true;
		s = e + 1;
	}
}

static int on_event(struct dbx_watch *w, const cJSON *m, const char *kind)
{
	struct dbx_event ev = {0};
	ev.kind = kind_from_name(kind);
	if (!ev.kind) {
		dbx__log(2, "watch: ignoring an event of kind \"%.32s\"", kind);
		return 0;
	}
	if (!dbx__json_u64(m, "seq", &ev.seq))
		return -EPROTO;
	ev.path = dbx__json_str(m, "path");
	if (!ev.path) {
		if (ev.kind != DBX_EV_OVERFLOW)
			return -EPROTO;
		ev.path = "";
	}
	ev.to = dbx__json_str(m, "to");
	if (ev.kind == DBX_EV_RENAME && !ev.to)
		return -EPROTO;
	if (ev.kind != DBX_EV_OVERFLOW) {
		size_t pl = strlen(ev.path);
		bool bad = !event_path_ok(ev.path) || (ev.to && !event_path_ok(ev.to));

		/* Renaming the root, or a directory into itself, is not a change that can happen. */
		if (!bad && ev.to)
			bad = !strcmp(ev.path, ".") || !strcmp(ev.to, ".") ||
			      (!strncmp(ev.to, ev.path, pl) && ev.to[pl] == '/');
		if (bad) {
			/* Whatever it meant, the client's copy can no longer be trusted. */
			dbx__log(1, "watch: event %llu: invalid path \"%.64s\"%s%.64s%s: "
				    "reported as overflow",
				 (unsigned long long)ev.seq, ev.path, ev.to ? " -> \"" : "",
				 ev.to ? ev.to : "", ev.to ? "\"" : "");
			ev.kind = DBX_EV_OVERFLOW;
			ev.path = "";
			ev.to = NULL;
		}
	}
	const cJSON *attr = cJSON_GetObjectItemCaseSensitive(m, "attr");
	if (cJSON_IsObject(attr) && ev.kind != DBX_EV_OVERFLOW) {
		if (dbx__attr_from_json(attr, &ev.attr, &ev.target) == 0)
			ev.has_attr = true;
		else
			dbx__log(1, "watch: event %llu: undecodable attributes",
				 (unsigned long long)ev.seq);
	}
	const char *data = dbx__json_str(m, "data");
	unsigned char *bytes = NULL;
	if (data && ev.has_attr) {
		/* At most 64 KiB by the protocol; whatever the agent sends, the frame bounds it. */
		size_t n = strlen(data);

		bytes = malloc(n / 4 * 3 + 1);
		if (bytes && dbx_b64_decode(data, n, bytes, &ev.data_len, NULL, 0) == 0) {
			ev.data = bytes;
			ev.has_data = true;
		} else {
			dbx__log(1, "watch: event %llu: undecodable content",
				 (unsigned long long)ev.seq);
		}
	}
	const char *boot = dbx__json_str(m, "boot");
	if (boot && strlen(boot) < sizeof(w->boot) && strcmp(boot, w->boot))
		snprintf(w->boot, sizeof(w->boot), "%s", boot);
	if (ev.seq > w->since || ev.kind == DBX_EV_OVERFLOW)
		w->since = ev.seq;
	if (w->cb.event)
		w->cb.event(w->ud, &ev);
	free(bytes);
	return 0;
}

static int ws_message(void *ud, bool binary, const void *data, size_t len)
{
	struct dbx_watch *w = ud;
	if (binary)
		return -EPROTO;
	cJSON *m = cJSON_ParseWithLength(data, len);
	if (!m)
		return -EPROTO;
	const char *kind = dbx__json_str(m, "kind");
	int r;
	if (!kind)
		r = -EPROTO;
	else if (!strcmp(kind, "hello"))
		r = on_hello(w, m);
	else if (!w->hello_seen)
		r = -EPROTO;
	else
		r = on_event(w, m, kind);
	cJSON_Delete(m);
	return r;
}

static void ws_closed(void *ud, int err, const char *why)
{
	struct dbx_watch *w = ud;
	bool was_up = w->hello_seen;
	w->hello_seen = false;

	pthread_mutex_lock(&w->mu);
	w->connected = false;
	w->session[0] = '\0';
	bool first = !w->first_done;
	if (first) {
		w->first_done = true;
		w->first_err = err;
		snprintf(w->first_why, sizeof(w->first_why), "%s", why);
		pthread_cond_broadcast(&w->cond);
	}
	pthread_mutex_unlock(&w->mu);
	if (first)
		return; /* dbx_watch_start() reports it and frees the watch */

	if (was_up) {
		dbx__log(1, "watch: connection lost: %s", why);
		if (w->cb.down)
			w->cb.down(w->ud, err);
	} else {
		dbx__log(2, "watch: reconnect failed: %s", why);
	}
	if (w->no_reconnect)
		return;
	int delay = w->backoff_ms;
	w->backoff_ms =
		w->backoff_ms * 2 > w->backoff_max_ms ? w->backoff_max_ms : w->backoff_ms * 2;
	/* Up to 25 % jitter, so many clients of one restarted agent do not all come at once. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	delay += (int)((unsigned long)ts.tv_nsec % (unsigned long)(delay / 4 + 1));
	dbx__ws_after(w->ws, delay, reconnect);
}

static const struct dbx__ws_ops watch_ops = {
	.message = ws_message,
	.closed = ws_closed,
};

/* ---- caller's threads -------------------------------------------------------------------- */

dbx_watch *dbx_watch_free(dbx_watch *w)
{
	if (!w)
		return NULL;
	dbx__ws_free(w->ws); /* joins the watch's thread */
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->mu);
	free(w);
	return NULL;
}

int dbx_watch_start(dbx_client *c, const struct dbx_watch_config *cfg,
		    const struct dbx_watch_callbacks *cb, void *ud, dbx_watch **ret_watch)
{
	int r;
	char *pq = NULL;

	if (!c || !ret_watch)
		return dbx__error(EINVAL, "watch: bad arguments");
	dbx_watch *w = calloc(1, sizeof(*w));
	if (!w)
		return dbx__error(ENOMEM, "watch: out of memory");
	w->c = c;
	if (cb)
		w->cb = *cb;
	w->ud = ud;
	w->backoff_max_ms = cfg && cfg->backoff_max_ms > 0 ? cfg->backoff_max_ms : BACKOFF_MAX_MS;
	if (w->backoff_max_ms < BACKOFF_MIN_MS)
		w->backoff_max_ms = BACKOFF_MIN_MS;
	w->backoff_ms = BACKOFF_MIN_MS;
	w->no_reconnect = cfg && cfg->no_reconnect;
	w->want_data = cfg && cfg->want_data;
	if (cfg && cfg->boot && *cfg->boot) {
		if (strlen(cfg->boot) >= sizeof(w->boot)) {
			free(w);
			return dbx__error(EINVAL, "watch: boot id \"%.40s\" is too long",
					  cfg->boot);
		}
		snprintf(w->boot, sizeof(w->boot), "%s", cfg->boot);
		w->since = cfg->since;
		w->have_pos = true;
	}
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);

	struct dbx__ws_config wcfg = {
		.ops = &watch_ops,
		.ud = w,
		.max_msg = EVENT_MSG_MAX,
		.what = "watch",
	};
	r = dbx__ws_new(c, &wcfg, &w->ws);
	if (r < 0)
		goto fail;
	pq = events_path(w);
	if (!pq) {
		r = dbx__error(ENOMEM, "watch: out of memory");
		goto fail;
	}
	r = dbx__ws_connect(w->ws, pq);
	if (r < 0)
		goto fail;

	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += START_WAIT_MS / 1000;
	pthread_mutex_lock(&w->mu);
	while (!w->first_done) {
		if (pthread_cond_timedwait(&w->cond, &w->mu, &dl) == ETIMEDOUT) {
			w->first_done = true;
			w->first_err = -ETIMEDOUT;
			snprintf(w->first_why, sizeof(w->first_why), "no hello from the agent");
		}
	}
	r = w->first_err;
	pthread_mutex_unlock(&w->mu);
	if (r < 0) {
		dbx__error(-r, "watch %s: %s", dbx_client_url(c), w->first_why);
		goto fail;
	}
	*ret_watch = w;
	w = NULL;
fail:
	free(pq);
	dbx_watch_free(w);
	return r;
}

void dbx_watch_session(dbx_watch *w, char buf[64])
{
	pthread_mutex_lock(&w->mu);
	memcpy(buf, w->session, 64);
	pthread_mutex_unlock(&w->mu);
}

bool dbx_watch_connected(dbx_watch *w)
{
	pthread_mutex_lock(&w->mu);
	bool up = w->connected;
	pthread_mutex_unlock(&w->mu);
	return up;
}

uint64_t dbx_watch_reconnects(dbx_watch *w)
{
	pthread_mutex_lock(&w->mu);
	uint64_t n = w->reconnects;
	pthread_mutex_unlock(&w->mu);
	return n;
}
