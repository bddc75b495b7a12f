/* agent.h: the devbox-agent's internal interfaces.
 *
 * Thread model (see main.c): one lws service thread owns every lws object, the process table and
 * all per-connection state; a worker pool (work.c) runs handlers that touch the file system or
 * spawn processes; a signal thread turns SIGTERM/SIGINT into a clean stop. Workers never see a
 * wsi: they talk to a request through the refcounted struct req and the req_* functions below,
 * which are documented with the threads allowed to call them. */
#pragma once

#include <cjson/cJSON.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "strbuf.h"

#define AGENT_VERSION "0.1.0"

/* Wire status numbers of the official agent (agent-api.md §1.3). */
enum {
	ST_OK = 0,
	ST_VALIDATION = 1400,
	ST_FORBIDDEN = 1403,
	ST_NOT_FOUND = 1404,
	ST_CONFLICT = 1409,
	ST_INVALID = 1422,
	ST_INTERNAL = 1500,
	ST_OPERATION = 1600,
};

/* Bounds. Each is answered with a clear error when exceeded; none stops the agent. */
#define AGENT_JSON_BODY_MAX (2u << 20)	     /* like axum's default body limit */
#define AGENT_JSON_DEPTH_MAX 64		     /* nesting of arrays/objects in a request */
#define AGENT_HEADER_MAX (16u << 10)	     /* request line + headers; 431 above */
#define AGENT_LWS_HEADER_MAX (32u << 10)     /* lws drops the connection above this */
#define AGENT_BODY_HIWAT (4u << 20)	     /* upload queue: pause the socket above */
#define AGENT_BODY_LOWAT (1u << 20)	     /* ... and resume below */
#define AGENT_OUT_HIWAT (2u << 20)	     /* download queue: block the producer above */
#define AGENT_CHUNK (256u << 10)	     /* read/write unit, = pt_serv_buf_size */
#define AGENT_MAX_CONNS 4096		     /* fd_limit_per_thread */
#define AGENT_MAX_RUNNING 256		     /* live child processes (exec, sync, sessions) */
#define AGENT_MAX_RECORDS 1024		     /* process records kept for status/logs */
#define AGENT_MAX_SESSIONS 64
#define AGENT_ENV_MAX 1024		     /* variables in one request's env */
#define AGENT_DOWNLOAD_PATHS_MAX 4096	     /* paths in one batch-download */
#define AGENT_LOG_ENTRIES 10000		     /* per process, like the official agent */
#define AGENT_LOG_BYTES (8u << 20)	     /* per process log ring */
#define AGENT_LOG_LINE_MAX (64u << 10)	     /* longer lines are split */
#define AGENT_LOG_TOTAL (256u << 20)	     /* all process logs together: oldest dropped */
#define AGENT_SYNC_OUTPUT_MAX (16u << 20)    /* exec-sync stdout + stderr */
#define AGENT_WS_MSG_MAX (64u << 10)	     /* one inbound WebSocket message */
#define AGENT_WS_OUT_MAX (8u << 20)	     /* queued outbound WebSocket bytes per connection */
#define AGENT_JSON_BUFFERED_MAX (512u << 20) /* all buffered request bodies together */
#define AGENT_IO_STALL_SECS 120		     /* a transfer with no progress for this long ends */

struct agent_config {
	char host[256];
	int port;
	char *workspace;	  /* absolute, normalised, no trailing slash */
	char *token;		  /* bearer token (may be empty) */
	size_t token_len;
	bool token_generated;
	uint64_t max_file_size;
	bool access_log;
};

struct work_pool;
struct proc_table;

struct agent {
	struct agent_config cfg;
	int rootfd;		/* O_PATH | O_DIRECTORY of the workspace */
	const char *alias;	/* "/home/devbox/project" when the workspace lives elsewhere */
	struct lws_context *ctx;
	struct lws_vhost *vh;
	struct work_pool *pool;	     /* short handlers */
	struct work_pool *xfer_pool; /* handlers that wait on the client (R_XFER, BODY_STREAM) */
	time_t start_time;
	int bound_port;
	atomic_bool stopping;
	atomic_size_t buffered_bytes; /* request bodies held in memory right now */
	struct proc_table *procs;     /* service thread only */
	struct ports_cache *ports;    /* own lock inside */
};

/* ---- worker pool (work.c) ------------------------------------------------------------ */

typedef void (*work_fn)(void *arg);

int work_pool_new(struct work_pool **ret, struct agent *ag, int min_threads, int max_threads);
void work_pool_free(struct work_pool *p); /* joins every thread; call after the loop ended */
/* Before lws_context_destroy(): later posts queue without waking the (gone) loop. */
void work_pool_detach_loop(struct work_pool *p);
/* Runs fn(arg) on a worker. Any thread. */
void work_submit(struct work_pool *p, work_fn fn, void *arg);
/* Runs fn(arg) on the service thread soon (wakes it with lws_cancel_service). Any thread. */
void work_post(struct work_pool *p, work_fn fn, void *arg);
/* Service thread, from LWS_CALLBACK_EVENT_WAIT_CANCELLED: runs everything posted so far. */
void work_run_posted(struct work_pool *p);
bool agent_on_service_thread(void);
void agent_mark_service_thread(void);

/* ---- requests (server.c) ------------------------------------------------------------- */

struct req;

enum body_mode {
	BODY_NONE,   /* body (if any) ignored */
	BODY_BUFFER, /* collected in memory up to a limit, then the handler runs */
	BODY_STREAM, /* handler runs at once on a worker and pulls it with req_body_read() */
};

typedef void (*route_fn)(struct req *r);

enum route_flags {
	R_PUBLIC = 1 << 0,  /* no token needed */
	R_JSON = 1 << 1,    /* JSON body required: 415/400 (text) before the handler */
	R_INLINE = 1 << 2,  /* handler runs on the service thread (must not block) */
	R_STREAM = 1 << 3,  /* BODY_STREAM */
	R_ANYBODY = 1 << 4, /* BODY_BUFFER of any content type (2 MiB) */
	R_XFER = 1 << 5,    /* the handler streams its reply (may wait on a slow client) */
};

struct route {
	const char *method; /* "GET" (HEAD allowed too) or "POST" */
	const char *path;   /* exact, or with one "*" segment (the {id}) */
	route_fn fn;
	unsigned flags;
	/* Optional, service thread, before any body arrives: may change the body mode/limit
	 * with req_set_body() or answer at once (then return 1). */
	int (*prepare)(struct req *r);
};

/* Reference counting: any thread. A worker that keeps a req beyond its handler takes a ref. */
struct req *req_ref(struct req *r);
void req_unref(struct req *r);

/* Request data: any thread once the handler runs (immutable by then). */
struct agent *req_agent(struct req *r);
const char *req_path(struct req *r);
const char *req_param(struct req *r);	      /* the "*" segment, or NULL */
const char *req_query(struct req *r, const char *name); /* decoded, first wins; NULL if absent */
/* ?name=true|false and ?name=<decimal> with axum's 400 texts: 0 absent, 1 present (*out
 * set), -1 after the 400 reply. */
int req_query_bool(struct req *r, const char *name, bool *out);
int req_query_u64(struct req *r, const char *name, uint64_t *out);
const char *req_content_type(struct req *r);  /* "" if absent */
const char *req_accept(struct req *r);	      /* "" if absent */
int64_t req_content_length(struct req *r);    /* -1 if absent */
/* The change-event sequence number read just before the handler was dispatched. */
uint64_t req_seq0(struct req *r);
const char *req_range(struct req *r);	      /* Range header or NULL */
const char *req_if_match(struct req *r);      /* If-Match header or NULL */
/* Any thread, before the reply: adds "name: value" to the reply's headers. */
void req_add_header(struct req *r, const char *name, const char *value);
bool req_is_head(struct req *r);
cJSON *req_json(struct req *r);		      /* R_JSON routes: the parsed body (borrowed) */
const char *req_body(struct req *r, size_t *ret_len); /* BODY_BUFFER routes */
bool req_gone(struct req *r);		      /* the client disconnected */

/* Service thread, in prepare(): choose the body mode and its byte limit (0 = none). */
void req_set_body(struct req *r, enum body_mode mode, uint64_t limit);
/* Service thread, in prepare(): this request's handler runs on the service thread once its body
 * is buffered (like R_INLINE): only for work that cannot block, such as a small pwrite into the
 * page cache.  Saves the two thread hand-offs that dominate a small request. */
void req_run_inline(struct req *r);

/* BODY_STREAM, worker only: blocks until bytes arrive. Returns bytes (>0), 0 at the end of the
 * body, -EPIPE if the client went away, -EMSGSIZE over the limit.  Also reads a BODY_BUFFER
 * body (any thread, after dispatch). */
ssize_t req_body_read(struct req *r, void *buf, size_t len);
/* The same without a copy: *ret_data points into the request's own buffer (at most @max bytes)
 * and stays valid until the next call. Don't mix with req_body_read() on one request except
 * in this order: next(), then read() continues where next() stopped. */
ssize_t req_body_next(struct req *r, const void **ret_data, size_t max);

/* Replies. Exactly one per request; any thread (the reply is sent by the service thread).
 * The JSON forms add the flat envelope; payload may be NULL and is consumed. */
void req_reply_ok(struct req *r, cJSON *payload);
void req_reply_status(struct req *r, int status, const char *message, cJSON *payload);
void req_reply_err(struct req *r, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* errno → 1404 (ENOENT), 1403 (EACCES/EPERM/EXDEV = outside the workspace), else 1500,
 * message "<what>: <strerror> (os error N)" or the escape text for EXDEV. */
void req_reply_errno(struct req *r, int err, const char *what);
int agent_errno_status(int err);
void req_reply_text(struct req *r, int http_status, const char *text); /* text/plain */
void req_reply_empty(struct req *r, int http_status);
/* A fixed body with a content type (raw bytes, not JSON). Takes ownership of data (malloc). */
void req_reply_raw(struct req *r, int http_status, const char *ctype, char *data, size_t len);

/* Streamed replies. begin() once, then writes, then end(). content_length < 0 = chunked.
 * extra_headers: NULL or "name: value\r\n" lines. */
void req_stream_begin(struct req *r, int http_status, const char *ctype, int64_t content_length,
		      const char *extra_headers);
/* Worker only: blocks while the queue is full. 0, or -EPIPE once the client is gone. */
int req_stream_write(struct req *r, const void *data, size_t len);
/* Service thread only: never blocks; returns the bytes now queued (for backpressure). */
size_t req_stream_push(struct req *r, const void *data, size_t len);
size_t req_stream_queued(struct req *r);
/* Any thread. err != 0 aborts the connection instead of ending the body cleanly. */
void req_stream_end(struct req *r, int err);
/* Service thread: called (once) when the client is gone or the stream is drained below the
 * low-water mark; lets service-thread producers (process output, SSE) resume. */
void req_set_stream_hook(struct req *r, void (*fn)(struct req *r, void *arg, bool gone),
			 void *arg);
/* Service thread: keep a long-lived stream alive past lws's content timeout. */
void req_stream_keepalive(struct req *r, int secs);

/* JSON helpers: typed field access with the official 422 messages. */
int json_get_str(struct req *r, cJSON *obj, const char *name, bool required, const char **out);
int json_get_bool(struct req *r, cJSON *obj, const char *name, bool *out);
int json_get_int(struct req *r, cJSON *obj, const char *name, bool *present, int64_t *out);
/* The 422 rejection used when a body does not fit the expected shape. */
void req_reply_shape(struct req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Content-Type matches @want (case-insensitive, parameters ignored). */
bool agent_ctype_is(const char *ct, const char *want);

/* The lws protocol callback for HTTP and WebSocket connections (server.c). */
int agent_http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			size_t len);

/* Resolve a client path below the workspace. Returns 0 and fills rel (PATH_MAX) or replies
 * with a clear error (1403 outside the workspace, 1422 too long) and returns -1. */
int req_resolve(struct req *r, const char *input, char *rel);
/* Absolute path of a workspace-relative path (caller frees). */
char *agent_abs(struct agent *ag, const char *rel);

/* ---- WebSocket routes (server.c) ------------------------------------------------------ */

struct wsconn;
struct ws_handler {
	const char *path;
	void (*open)(struct wsconn *c);
	void (*message)(struct wsconn *c, const char *data, size_t len, bool binary);
	void (*close)(struct wsconn *c);
	size_t msg_max;
	/* Optional: everything queued was written; the handler may queue more (flow control). */
	void (*drain)(struct wsconn *c);
};
/* Service thread only. Queues one message; returns -ENOBUFS over AGENT_WS_OUT_MAX. */
int ws_send(struct wsconn *c, bool binary, const void *data, size_t len);
int ws_send_json(struct wsconn *c, cJSON *obj); /* consumes obj */
size_t ws_queued(struct wsconn *c);
const char *ws_query(struct wsconn *c, const char *name); /* query argument of the upgrade */
void ws_rx_pause(struct wsconn *c, bool pause);		 /* rx flow control */
/* Sends what is queued, then a close frame with @status/@reason. */
void ws_close(struct wsconn *c, int status, const char *reason);
void ws_set_data(struct wsconn *c, void *data);
void *ws_data(struct wsconn *c);
struct agent *ws_agent(struct wsconn *c);

/* ---- route modules ------------------------------------------------------------------- */

extern const struct route files_routes[];
extern const struct route proc_routes[];
extern const struct ws_handler logs_ws_handler;
extern const struct route fs_routes[];	      /* fsapi.c: /fs/v1 */
extern const struct route exec_routes[];      /* exec.c: /exec/v1 */
extern const struct ws_handler exec_ws_handler;
/* exec.c: kill every exec's process group and free the table (shutdown, service thread) */
void exec_table_free(struct agent *ag);

/* process table lifecycle (proc.c), service thread */
int proc_table_new(struct agent *ag);
void proc_table_free(struct agent *ag); /* kills every child's group */
/* raw fd callback for adopted pipes and pidfds (proc.c) */
int proc_raw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		      size_t len);

/* logging (main.c): one logger for the agent and for lws */
void agent_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
