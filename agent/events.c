/* events.c: the boot id, the event sequence, the event ring, lock sessions and the
 * /fs/v1/events WebSocket (PROTOCOL.md §3). The inotify watcher that feeds the ring is watch.c.
 *
 * Threads:
 * - the watcher thread (watch.c) appends events to the ring with events_publish() (ring_mu) and
 *   wakes the service thread with work_post() (at most one post outstanding: post_pending);
 * - the service thread owns the client list and fans the ring out to every client (ws_send);
 * - events_seq(), events_stamp() and events_session_alive() may run on any thread.
 *
 * Lifetime: events_start() creates the ring and starts the watcher; events_stop() joins it and
 * frees the ring. Clients outlive events_stop(): their close callbacks run when the context is
 * destroyed, later, and only touch the client list and the session registry (static). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "events_int.h"
#include "misc.h"

#define EVENTS_RING_DEFAULT 65536u
#define EVENTS_RING_MIN     4u
#define EVENTS_RING_MAX     (1u << 22)
/* A client with more than this queued is sent overflow and closed; the overflow frame itself
 * still fits below AGENT_WS_OUT_MAX. */
#define EVENTS_CLIENT_MAX (AGENT_WS_OUT_MAX - 4096u)
static size_t client_max = EVENTS_CLIENT_MAX; /* DEVBOX_AGENT_EVENT_CLIENT_MAX (tests) */
#define SESSION_LEN       24
#define EVENTS_CLIENTS_MAX 64 /* open event WebSockets (= lock sessions) */

struct ring_ent {
	uint64_t seq;
	char *json; /* the whole frame, seq included */
	size_t len;
	char *data; /* base64 content of a small file (EVENTS_DATA_FILE_MAX), or NULL */
	size_t dlen;
};

/* Content in events (PROTOCOL.md §3, `data=1`): the ring keeps at most this much of it; the
 * oldest entries lose theirs first (their frames stay valid without it). */
#define EVENTS_DATA_RING_MAX (16u << 20)
/* Versions written through the API (PUT write, batch): their bytes are the writer's already. */
#define OWN_VERSIONS 512

struct events {
	struct agent *ag;
	struct watcher *watcher;
	pthread_mutex_t ring_mu; /* protects ring[], oldest and the assignment of seq */
	struct ring_ent *ring;   /* indexed by seq % ring_cap */
	size_t ring_cap;
	uint64_t oldest;          /* first seq the ring still holds (last + 1 when empty) */
	size_t data_bytes;        /* (ring_mu) base64 bytes held in ring[].data */
	uint64_t data_oldest;     /* (ring_mu) no entry before this seq holds data */
	atomic_bool post_pending; /* a deliver_posted() is queued for the service thread */
};

struct evclient {
	struct evclient *next; /* clients list: changed by the service thread under sess_mu */
	struct wsconn *c;
	uint64_t next_seq; /* the next event this client gets (service thread) */
	bool closing;
	bool want_data; /* asked for file content in events (data=1) */
	char session[SESSION_LEN + 1];
};

static atomic_int data_clients; /* open clients with want_data */

struct own_version {
	uint64_t ino, size;
	int64_t mtime_sec;
	long mtime_nsec;
	bool busy; /* the write is under way: no version of ino has content in events */
};
static pthread_mutex_t own_mu = PTHREAD_MUTEX_INITIALIZER;
static struct own_version own[OWN_VERSIONS]; /* (own_mu) a ring of the latest */
static uintptr_t own_next;                   /* (own_mu) slots used so far */

static char boot_id[33];
static atomic_uint_fast64_t seq; /* last assigned; written under ring_mu */
static struct events *E;         /* service thread: set by events_start, cleared by events_stop */

/* The open events WebSockets. The service thread is the only writer (under sess_mu) and may
 * read without the lock; other threads read under it (events_session_alive). */
static pthread_mutex_t sess_mu = PTHREAD_MUTEX_INITIALIZER;
static struct evclient *clients;

/* DEVBOX_AGENT_EVENT_CLIENT_MAX: a smaller per-client queue, so tests reach it quickly. */
static size_t client_max_from_env(void)
{
	const char *s = getenv("DEVBOX_AGENT_EVENT_CLIENT_MAX");
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return EVENTS_CLIENT_MAX;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < 4096 || v > EVENTS_CLIENT_MAX) {
		agent_log(LLL_WARN, "ignoring DEVBOX_AGENT_EVENT_CLIENT_MAX=%s: not in 4096..%u", s,
			  EVENTS_CLIENT_MAX);
		return EVENTS_CLIENT_MAX;
	}
	return (size_t)v;
}

static size_t ring_size_from_env(void)
{
	const char *s = getenv("DEVBOX_AGENT_EVENT_RING");
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return EVENTS_RING_DEFAULT;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < EVENTS_RING_MIN || v > EVENTS_RING_MAX) {
		agent_log(LLL_WARN, "ignoring DEVBOX_AGENT_EVENT_RING=%s: not in %u..%u", s,
			  EVENTS_RING_MIN, EVENTS_RING_MAX);
		return EVENTS_RING_DEFAULT;
	}
	return (size_t)v;
}

int events_start(struct agent *ag)
{
	static const char hex[] = "0123456789abcdef";
	char raw[17];
	struct events *e;

	dbx_random_id(raw, 16);
	for (int i = 0; i < 16; i++) {
		boot_id[2 * i] = hex[(unsigned char)raw[i] >> 4];
		boot_id[2 * i + 1] = hex[(unsigned char)raw[i] & 15];
	}
	boot_id[32] = '\0';

	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->ag = ag;
	e->ring_cap = ring_size_from_env();
	client_max = client_max_from_env();
	e->ring = calloc(e->ring_cap, sizeof(*e->ring));
	if (!e->ring) {
		free(e);
		return -ENOMEM;
	}
	e->oldest = 1;
	pthread_mutex_init(&e->ring_mu, NULL);
	atomic_init(&e->post_pending, false);
	E = e;
	/* Without a watcher the agent still serves; the ring then says "overflow" once. */
	if (watcher_start(ag, e, &e->watcher) < 0)
		events_publish_overflow(e);
	return 0;
}

void events_stop(struct agent *ag)
{
	struct events *e = E;

	(void)ag;
	if (!e)
		return;
	watcher_stop(e->watcher);
	E = NULL;
	for (size_t i = 0; i < e->ring_cap; i++) {
		free(e->ring[i].json);
		free(e->ring[i].data);
	}
	free(e->ring);
	pthread_mutex_destroy(&e->ring_mu);
	free(e);
}

uint64_t events_seq(struct agent *ag)
{
	(void)ag;
	return atomic_load(&seq);
}

static void events_stamp_at(struct req *r, uint64_t at)
{
	char n[24];

	snprintf(n, sizeof(n), "%" PRIu64, at);
	req_add_header(r, "X-Dbx-Boot", boot_id);
	req_add_header(r, "X-Dbx-Seq", n);
}

void events_stamp(struct req *r)
{
	events_stamp_at(r, req_seq0(r));
}

bool events_session_alive(struct agent *ag, const char *session)
{
	bool alive = false;

	(void)ag;
	if (!session || !*session)
		return false;
	pthread_mutex_lock(&sess_mu);
	for (struct evclient *cl = clients; cl; cl = cl->next) {
		if (strcmp(cl->session, session) == 0) {
			alive = true;
			break;
		}
	}
	pthread_mutex_unlock(&sess_mu);
	return alive;
}

/* ---- content in events ---------------------------------------------------------------- */

size_t events_data_max(void)
{
	return atomic_load(&data_clients) > 0 ? EVENTS_DATA_FILE_MAX : 0;
}

static bool own_same(const struct own_version *v, const struct stat *st)
{
	return v->ino == (uint64_t)st->st_ino && v->size == (uint64_t)st->st_size &&
	       v->mtime_sec == (int64_t)st->st_mtim.tv_sec && v->mtime_nsec == st->st_mtim.tv_nsec;
}

uintptr_t events_write_begin(const struct stat *st)
{
	uintptr_t token;

	if (!S_ISREG(st->st_mode) || atomic_load(&data_clients) == 0)
		return 0;
	pthread_mutex_lock(&own_mu);
	own[own_next % OWN_VERSIONS] = (struct own_version){.ino = (uint64_t)st->st_ino,
							    .busy = true};
	token = ++own_next;
	pthread_mutex_unlock(&own_mu);
	return token;
}

void events_write_end(uintptr_t token, const struct stat *st)
{
	if (!token)
		return;
	pthread_mutex_lock(&own_mu);
	/* Unless OWN_VERSIONS later writes took the slot meanwhile. */
	if (own_next - (token - 1) <= OWN_VERSIONS) {
		struct own_version *v = &own[(token - 1) % OWN_VERSIONS];

		if (st)
			*v = (struct own_version){(uint64_t)st->st_ino, (uint64_t)st->st_size,
						  (int64_t)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
						  false};
		else
			*v = (struct own_version){0};
	}
	pthread_mutex_unlock(&own_mu);
}

bool events_written_by_api(const struct stat *st)
{
	bool found = false;

	pthread_mutex_lock(&own_mu);
	for (size_t i = 0; i < OWN_VERSIONS && i < own_next && !found; i++) {
		const struct own_version *v = &own[(own_next - 1 - i) % OWN_VERSIONS];

		found = v->busy ? v->ino == (uint64_t)st->st_ino : own_same(v, st);
	}
	pthread_mutex_unlock(&own_mu);
	return found;
}

/* ---- the ring (watcher thread) ------------------------------------------------------- */

static void deliver_posted(void *arg);

static void wake_service(struct events *e)
{
	if (!atomic_exchange(&e->post_pending, true))
		work_post(e->ag->pool, deliver_posted, NULL);
}

/* Stores @body ("{...}" without seq, @blen chars) as the frame of the next seq, with @data
 * (base64, taken over; may be NULL). ring_mu held. */
static void ring_put(struct events *e, const char *body, size_t blen, char *data)
{
	uint64_t s = atomic_load(&seq) + 1;
	struct ring_ent *re = &e->ring[s % e->ring_cap];
	char head[40];
	int hl = snprintf(head, sizeof(head), "{\"seq\":%" PRIu64 ",", s);
	char *json = malloc((size_t)hl + blen);

	if (!json)
		abort(); /* like work_post: an event silently lost would break the contract */
	memcpy(json, head, (size_t)hl);
	memcpy(json + hl, body + 1, blen - 1);
	json[(size_t)hl + blen - 1] = '\0';
	free(re->json);
	if (re->data)
		e->data_bytes -= re->dlen;
	free(re->data);
	re->seq = s;
	re->json = json;
	re->len = (size_t)hl + blen - 1;
	re->data = data;
	re->dlen = data ? strlen(data) : 0;
	e->data_bytes += re->dlen;
	if (s >= e->ring_cap + e->oldest)
		e->oldest = s - e->ring_cap + 1;
	/* Over budget: the oldest entries drop their content. */
	if (e->data_oldest < e->oldest)
		e->data_oldest = e->oldest;
	while (e->data_bytes > EVENTS_DATA_RING_MAX && e->data_oldest <= s) {
		struct ring_ent *o = &e->ring[e->data_oldest % e->ring_cap];

		if (o->data) {
			e->data_bytes -= o->dlen;
			free(o->data);
			o->data = NULL;
			o->dlen = 0;
		}
		e->data_oldest++;
	}
	atomic_store(&seq, s);
}

void events_publish(struct events *e, cJSON *const *objs, size_t n)
{
	char **bodies = calloc(n ? n : 1, sizeof(*bodies));
	char **datas = calloc(n ? n : 1, sizeof(*datas));

	if (!bodies || !datas)
		abort();
	for (size_t i = 0; i < n; i++) {
		cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(objs[i], "data");

		if (cJSON_IsString(d)) {
			datas[i] = d->valuestring; /* taken over */
			d->valuestring = NULL;
		}
		cJSON_Delete(d);
		cJSON_AddStringToObject(objs[i], "boot", boot_id);
		bodies[i] = cJSON_PrintUnformatted(objs[i]);
		if (!bodies[i])
			abort();
	}
	pthread_mutex_lock(&e->ring_mu);
	for (size_t i = 0; i < n; i++)
		ring_put(e, bodies[i], strlen(bodies[i]), datas[i]);
	pthread_mutex_unlock(&e->ring_mu);
	for (size_t i = 0; i < n; i++)
		free(bodies[i]);
	free(bodies);
	free(datas);
	if (n)
		wake_service(e);
}

void events_publish_overflow(struct events *e)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		abort();
	cJSON_AddStringToObject(o, "kind", "overflow");
	events_publish(e, &o, 1);
	cJSON_Delete(o);
}

/* ---- fan-out (service thread) -------------------------------------------------------- */

static void client_overflow(struct evclient *cl, const char *why)
{
	char buf[128];
	int n = snprintf(buf, sizeof(buf),
			 "{\"seq\":%" PRIu64 ",\"boot\":\"%s\",\"kind\":\"overflow\"}",
			 (uint64_t)atomic_load(&seq), boot_id);

	ws_send(cl->c, false, buf, (size_t)n);
	ws_close(cl->c, LWS_CLOSE_STATUS_POLICY_VIOLATION, why);
	cl->closing = true;
}

/* Sends @cl everything the ring holds after what it already got. */
static void client_pump(struct events *e, struct evclient *cl)
{
	const char *why = NULL;

	if (cl->closing)
		return;
	pthread_mutex_lock(&e->ring_mu);
	uint64_t last = atomic_load(&seq);
	if (cl->next_seq <= last && cl->next_seq < e->oldest)
		why = "events lost: client too slow";
	while (!why && cl->next_seq <= last) {
		const struct ring_ent *re = &e->ring[cl->next_seq % e->ring_cap];
		const char *frame = re->json;
		size_t len = re->len;
		char *with = NULL;

		if (cl->want_data && re->data) {
			/* "...}" becomes "...,"data":"<base64>"}" */
			static const char key[] = ",\"data\":\"";

			len = re->len - 1 + sizeof(key) - 1 + re->dlen + 2;
			with = malloc(len);
			if (with) {
				char *p = with;

				memcpy(p, re->json, re->len - 1);
				p += re->len - 1;
				memcpy(p, key, sizeof(key) - 1);
				p += sizeof(key) - 1;
				memcpy(p, re->data, re->dlen);
				p += re->dlen;
				memcpy(p, "\"}", 2);
				frame = with;
			} else {
				len = re->len; /* the content is optional */
			}
		}
		int r = ws_queued(cl->c) + len > client_max ? -ENOBUFS
							    : ws_send(cl->c, false, frame, len);
		free(with);
		if (r < 0) {
			why = "client too slow";
			break;
		}
		cl->next_seq++;
	}
	pthread_mutex_unlock(&e->ring_mu);
	if (why) {
		agent_log(LLL_WARN, "events: session %s: %s, sending overflow", cl->session, why);
		client_overflow(cl, why);
	}
}

static void deliver_posted(void *arg)
{
	struct events *e = E;

	(void)arg;
	if (!e)
		return; /* posted before events_stop(), run at pool teardown */
	atomic_store(&e->post_pending, false);
	for (struct evclient *cl = clients; cl; cl = cl->next)
		client_pump(e, cl);
}

static bool parse_seq(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static void ev_open(struct wsconn *c)
{
	struct events *e = E;
	struct evclient *cl = calloc(1, sizeof(*cl));
	const char *qboot = ws_query(c, "boot");
	uint64_t since = 0, last;
	bool have_since = parse_seq(ws_query(c, "since"), &since);
	bool resumed = false;
	cJSON *hello;

	if (!cl) {
		ws_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	cl->c = c;
	const char *qd = ws_query(c, "data");
	cl->want_data = qd && strcmp(qd, "1") == 0;
	dbx_random_id(cl->session, SESSION_LEN);
	if (e)
		pthread_mutex_lock(&e->ring_mu);
	last = atomic_load(&seq);
	if (e && have_since && qboot && strcmp(qboot, boot_id) == 0 && since <= last &&
	    since + 1 >= e->oldest)
		resumed = true;
	cl->next_seq = resumed ? since + 1 : last + 1;
	if (e)
		pthread_mutex_unlock(&e->ring_mu);

	/* Each client may queue up to client_max bytes and hold lock fds: bound how many. */
	int n = 0;
	pthread_mutex_lock(&sess_mu);
	for (struct evclient *o = clients; o; o = o->next)
		n++;
	if (n >= EVENTS_CLIENTS_MAX) {
		pthread_mutex_unlock(&sess_mu);
		free(cl);
		ws_close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "too many event sessions");
		return;
	}
	cl->next = clients;
	clients = cl;
	pthread_mutex_unlock(&sess_mu);
	if (cl->want_data)
		atomic_fetch_add(&data_clients, 1);
	ws_set_data(c, cl);

	hello = cJSON_CreateObject();
	if (!hello) {
		client_overflow(cl, "out of memory");
		return;
	}
	cJSON_AddStringToObject(hello, "kind", "hello");
	cJSON_AddStringToObject(hello, "boot", boot_id);
	cJSON_AddNumberToObject(hello, "seq", (double)last);
	cJSON_AddStringToObject(hello, "session", cl->session);
	cJSON_AddBoolToObject(hello, "resumed", resumed);
	ws_send_json(c, hello);
	if (e)
		client_pump(e, cl);
}

static void ev_message(struct wsconn *c, const char *data, size_t len, bool binary)
{
	/* Nothing to say to us: the stream is one-way (pings are handled by lws). */
	(void)c;
	(void)data;
	(void)len;
	(void)binary;
}

static void ev_close(struct wsconn *c)
{
	struct evclient *cl = ws_data(c);

	if (!cl)
		return;
	pthread_mutex_lock(&sess_mu);
	for (struct evclient **pp = &clients; *pp; pp = &(*pp)->next) {
		if (*pp == cl) {
			*pp = cl->next;
			break;
		}
	}
	pthread_mutex_unlock(&sess_mu);
	ws_set_data(c, NULL);
	if (cl->want_data)
		atomic_fetch_sub(&data_clients, 1);
	locks_session_end(ws_agent(c), cl->session);
	free(cl);
}

const struct ws_handler events_ws_handler = {"/fs/v1/events", ev_open, ev_message, ev_close, 4096};
