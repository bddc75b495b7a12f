/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libdevbox internals shared by its modules (never included by fs/, ctl/ or users).
 *
 * Errors: a failing function calls dbx__error(err, "op path: ...") once, at the place that
 * knows the reason, and returns its result (-err) unchanged upwards; callers above do not
 * overwrite the message.  dbx__log() goes to the user's hook, never to stderr.
 */
#pragma once
#include <devbox/devbox.h>
#include <cjson/cJSON.h>
#include <stdarg.h>

#include "strbuf.h"
#include "misc.h"

/* Sets this thread's dbx_error_last() and returns -err (err > 0). */
int dbx__error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dbx__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends "&key=<url-encoded value>" (no '&' when the buffer is empty). */
int dbx__query_add(struct dbx_strbuf *q, const char *key, const char *value);
int dbx__query_addu(struct dbx_strbuf *q, const char *key, uint64_t value);

/* One HTTP request to the agent.  Exactly one of body/src may be set (src needs src_len).
 * Without a sink, the reply body is collected into resp->body (NUL-terminated, at most
 * max_body bytes, default 64 MiB).  With a sink, 2xx bodies stream into it and error bodies are
 * still collected for the message.  A sink or source that fails with -errno aborts the call with
 * that errno; if it set a message with dbx__error() that message becomes the call's, verbatim.
 * Nothing is retried once a sink has received bytes, nor when a source is used. */
struct dbx__req {
	const char *method;       /* "GET" ... */
	const char *path;         /* "/fs/v1/stat" */
	const char *query;        /* encoded, without '?', or NULL */
	const char *content_type; /* NULL: none */
	const void *body;
	size_t body_len;
	dbx_source_fn src;
	void *src_ud;
	uint64_t src_len;
	dbx_sink_fn sink;
	void *sink_ud;
	const char *const *headers; /* extra "Name: value" lines, NULL-terminated */
	bool idempotent;            /* may be retried */
	bool stream;                /* long transfer: stall timeout instead of total timeout */
	size_t max_body;
	int timeout_ms; /* 0: the client's (total, or the stall limit with stream) */
	/* for error messages: "<op> <err_path>: <reason>" */
	const char *op;
	const char *err_path;
};

struct dbx__resp {
	long status;
	char *body; /* owned, NUL-terminated; NULL when streamed to a sink */
	size_t len;
	char ver[DBX_VER_MAX]; /* X-Dbx-Version */
	uint64_t size;         /* X-Dbx-Size, UINT64_MAX if absent */
	struct dbx_reply_meta meta;
	bool has_dir[2]; /* X-Dbx-Dir, X-Dbx-From-Dir */
	struct dbx_attr dir[2];
};

/* 0 on a 2xx reply.  Otherwise -errno with dbx_error_last() set: for an agent error the errno
 * of its {"error":"ENOENT"} (or from the HTTP status of a compat envelope), for transport
 * failures ECONNREFUSED, ETIMEDOUT, ECANCELED, EINTR, EPROTO ..., 401 → EKEYREJECTED (an
 * authentication failure; 403 is EACCES, a permission).  resp is
 * filled in both cases (status 0 on transport failure) and must be released. */
int dbx__request(dbx_client *c, const struct dbx__req *rq, struct dbx__resp *resp);
void dbx__resp_free(struct dbx__resp *resp);

/* JSON request/reply convenience on top of dbx__request: parses a JSON reply into *ret_json
 * (caller cJSON_Delete()s; may be NULL to ignore the reply). */
int dbx__request_json(dbx_client *c, const struct dbx__req *rq, cJSON **ret_json);

/* Attribute decoding (PROTOCOL.md §1.1).  *ret_target (may be NULL) borrows from j. */
int dbx__attr_from_json(const cJSON *j, struct dbx_attr *a, const char **ret_target);

/* The "ws://" / "wss://" URL for a path on the client's agent (caller frees). */
char *dbx__ws_url(const dbx_client *c, const char *path_query);
bool dbx__client_insecure(const dbx_client *c);

/* ---- reply decoding (json.c, client.c); pure functions, unit-tested --------------------- */

/* The errno an HTTP status means when the body says nothing better (404 → ENOENT ...). */
int dbx__http_status_errno(long status);
/* The error an agent reply carries, as a positive errno (0: success), and its reason text:
 * a /fs/v1 body {"error":"ENOENT","message":"op path: reason"} gives ENOENT and "reason"; with
 * compat, a 2xx envelope {"status":1404,"message":...} gives ENOENT and the message; 401 gives
 * EKEYREJECTED "authentication failed (wrong token?)"; anything else maps the HTTP status. */
int dbx__reply_error(long status, const char *body, size_t len, bool compat, char *reason,
		     size_t reason_len);

/* JSON field helpers: false when absent or of the wrong type (then *ret is untouched). */
bool dbx__json_u64(const cJSON *obj, const char *key, uint64_t *ret);
bool dbx__json_i64(const cJSON *obj, const char *key, int64_t *ret);
const char *dbx__json_str(const cJSON *obj, const char *key); /* borrowed, or NULL */
/* A [sec, nsec] pair. */
bool dbx__json_timespec(const cJSON *j, struct timespec *ret);

/* GET /fs/v1/list page: the directory's attr (ret_dir may be NULL), fn per entry, and the next
 * offset (*ret_more false when "next" is null).  Returns 0, fn's nonzero value, or -errno. */
int dbx__list_page_parse(const cJSON *j, struct dbx_attr *ret_dir, dbx_dirent_fn fn, void *ud,
			 uint64_t *ret_next, bool *ret_more);
/* One NDJSON line of GET /fs/v1/tree (without the '\n').  Entries go to fn; the end line
 * fills *ret_end and sets *ret_done.  0, fn's nonzero value, or -EPROTO (message set). */
int dbx__tree_line(const char *line, size_t len, dbx_tree_fn fn, void *ud,
		   struct dbx_tree_end *ret_end, bool *ret_done);
/* {"target":"..."} → malloc'd copy. */
int dbx__readlink_parse(const cJSON *j, char **ret_target);
/* {"names":[...]} → NUL-separated names in buf; size 0 → the size needed; -ERANGE if small. */
ssize_t dbx__xattr_names_parse(const cJSON *j, char *buf, size_t size);
/* {"ports":[...]} of GET /api/v1/ports. */
int dbx__ports_parse(const cJSON *j, int **ret_ports, size_t *ret_n);
/* Appends the processes of GET /api/v1/process/list ({"processes":[...]}) or of GET
 * /exec/v1/list ({"execs":[...]}) to *list (n entries, grown with realloc). */
int dbx__processes_parse_compat(const cJSON *j, struct dbx_process **list, size_t *n);
int dbx__processes_parse_exec(const cJSON *j, struct dbx_process **list, size_t *n);

/* Batch reply (application/x-dbx-batch): parses the JSON line and blob into b's results. */
int dbx__batch_parse_reply(dbx_batch *b, const char *body, size_t len);
/* Number of ops in b (for tests). */
int dbx__batch_count(const dbx_batch *b);
