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
};

struct events {
	struct agent *ag;
	struct watcher *watcher;
	pthread_mutex_t ring_mu; /* protects ring[], oldest and the assignment of seq */
	struct ring_ent *ring;   /* indexed by seq % ring_cap */
	size_t ring_cap;
	uint64_t oldest;          /* first seq the ring still holds (last + 1 when empty) */
	atomic_bool post_pending; /* a deliver_posted() is queued for the service thread */
};

struct evclient {
	struct evclient *next; /* clients list: changed by the service thread under sess_mu */
	struct wsconn *c;
	uint64_t next_seq; /* the next event this client gets (service thread) */
	bool closing;
	char session[SESSION_LEN + 1];
};

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
	for (size_t i = 0; i < e->ring_cap; i++)
		free(e->ring[i].json);
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

/* ---- the ring (watcher thread) ------------------------------------------------------- */

static void deliver_posted(void *arg);

static void wake_service(struct events *e)
{
	if (!atomic_exchange(&e->post_pending, true))
		work_post(e->ag->pool, deliver_posted, NULL);
}

/* Stores @body ("{...}" without seq, @blen chars) as the frame of the next seq. ring_mu held. */
static void ring_put(struct events *e, const char *body, size_t blen)
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
	re->seq = s;
	re->json = json;
	re->len = (size_t)hl + blen - 1;
	if (s >= e->ring_cap + e->oldest)
		e->oldest = s - e->ring_cap + 1;
	atomic_store(&seq, s);
}

void events_publish(struct events *e, cJSON *const *objs, size_t n)
{
	char **bodies = calloc(n ? n : 1, sizeof(*bodies));

	if (!bodies)
		abort();
	for (size_t i = 0; i < n; i++) {
		cJSON_AddStringToObject(objs[i], "boot", boot_id);
		bodies[i] = cJSON_PrintUnformatted(objs[i]);
		if (!bodies[i])
			abort();
	}
	pthread_mutex_lock(&e->ring_mu);
	for (size_t i = 0; i < n; i++)
		ring_put(e, bodies[i], strlen(bodies[i]));
	pthread_mutex_unlock(&e->ring_mu);
	for (size_t i = 0; i < n; i++)
		free(bodies[i]);
	free(bodies);
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
		if (ws_queued(cl->c) + re->len > client_max ||
		    ws_send(cl->c, false, re->json, re->len) < 0) {
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
	locks_session_end(ws_agent(c), cl->session);
	free(cl);
}

const struct ws_handler events_ws_handler = {"/fs/v1/events", ev_open, ev_message, ev_close, 4096};
