/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_client — a connection to one devbox-agent (libcurl).
 *
 * A client is thread-safe: each call borrows a libcurl easy handle from the client's pool (one
 * per concurrently calling thread, created on demand, kept for reuse), so a thread that makes
 * call after call reuses its keep-alive connection.  Small calls have a total timeout; streaming
 * transfers instead fail when fewer than 1 byte/s moved for `timeout_ms`.  Idempotent calls
 * (GET, and the /fs/v1 operations the protocol marks as such) are retried with exponential
 * backoff on connection failures, 502/503/504 and timeouts; nothing else is ever retried.  TLS
 * peers are verified unless `insecure` is set.
 */
#ifndef DEVBOX_CLIENT_H
#define DEVBOX_CLIENT_H

#include <devbox/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbx_client dbx_client;

struct dbx_client_config {
	const char *url;        /* agent base URL, "http://127.0.0.1:9757" (required) */
	const char *token;      /* bearer token; NULL or "" sends none */
	int connect_timeout_ms; /* 0: 5000 */
	int timeout_ms;         /* 0: 30000; total for small calls, stall limit for streams */
	int retries;            /* extra attempts for idempotent calls; 0: 3; -1: none */
	bool insecure;          /* https: skip certificate and host verification */
	const char *ca_file;    /* https: CA bundle instead of the system one */
	const char *user_agent; /* NULL: "libdevbox/<version>" */
};

/* Copies everything it needs from cfg.  Does not contact the agent. */
DBX_API int dbx_client_new(const struct dbx_client_config *cfg, dbx_client **ret_client);
DBX_API dbx_client *dbx_client_free(dbx_client *c);

/* Any thread, async-signal-unsafe.  Makes every call in flight on c return -ECANCELED as soon
 * as possible, and every later call too, until dbx_client_uncancel(). */
DBX_API void dbx_client_cancel(dbx_client *c);
DBX_API void dbx_client_uncancel(dbx_client *c);

/* Per-thread call controls, used by devbox-fs for FUSE interrupts and deadlines.  While set,
 * calls made by this thread fail with -EINTR as soon as *flag becomes nonzero, and with
 * -ETIMEDOUT once CLOCK_MONOTONIC passes deadline_ms (0 clears).  The flag is borrowed. */
DBX_API void dbx_thread_set_cancel_flag(const volatile int *flag);
DBX_API void dbx_thread_set_deadline(uint64_t deadline_ms);

/* Borrowed from c; valid until dbx_client_free(). */
DBX_API const char *dbx_client_url(const dbx_client *c);
DBX_API const char *dbx_client_token(const dbx_client *c);

struct dbx_client_stats {
	uint64_t requests; /* HTTP requests sent (retries included) */
	uint64_t connects; /* new TCP connections opened; requests - connects were reused */
	uint64_t retries;
	uint64_t bytes_up;
	uint64_t bytes_down;
};
DBX_API void dbx_client_get_stats(const dbx_client *c, struct dbx_client_stats *ret_stats);

/* What the agent said about the state it answered from (PROTOCOL.md §1): the boot id and the
 * event seq stamped on the last reply received by this thread (from any client). */
struct dbx_reply_meta {
	char boot[33];
	uint64_t seq;
	bool valid; /* false when the reply had no X-Dbx-* headers (compat routes) */
};
DBX_API const struct dbx_reply_meta *dbx_last_reply_meta(void);

/* GET /health: 0 when the agent answers {"status":"ok"}. */
DBX_API int dbx_client_health(dbx_client *c);

/* Escape hatch for routes without a typed wrapper.  method "GET"/"POST"/..., path_query
 * "/api/v1/process/list?x=1" (caller-encoded).  body may be NULL.  On any HTTP status the
 * call returns 0 with *ret_status set and the body (NUL-terminated, at most 64 MiB) in
 * *ret_body (caller frees with free()); transport failures return -errno. */
DBX_API int dbx_client_call(dbx_client *c, const char *method, const char *path_query,
			    const char *content_type, const void *body, size_t body_len,
			    long *ret_status, char **ret_body, size_t *ret_len);

/* ---- compat API (/api/v1, shared/reference/agent-api.md §2) -------------------------- */

/* A process started by the compat API or an exec of /exec/v1 (ps). */
struct dbx_process {
	char *id;
	pid_t pid;
	char *command;  /* the command line as the agent reports it */
	char *status;   /* "running", "completed", "failed", "killed" ... as reported */
	bool running;
	int exit_code;  /* valid when !running and signal == 0 */
	int signal;     /* terminating signal number, 0 if none */
	int64_t start_ms;
	bool is_exec;   /* true: /exec/v1 exec, false: compat process */
};
/* Both lists merged, compat processes first.  Free with dbx_process_list_free(). */
DBX_API int dbx_process_list(dbx_client *c, struct dbx_process **ret_list, size_t *ret_n);
DBX_API void dbx_process_list_free(struct dbx_process *list, size_t n);
/* Signal a process or exec by id (sig e.g. SIGTERM). */
DBX_API int dbx_process_kill(dbx_client *c, const char *id, int sig);
/* The logs of a compat process, or the retained output of an exec, written to sink. */
DBX_API int dbx_process_logs(dbx_client *c, const char *id, dbx_sink_fn sink, void *ud);

/* Listening TCP ports inside the devbox (GET /api/v1/ports). */
DBX_API int dbx_ports_list(dbx_client *c, int **ret_ports, size_t *ret_n);

#ifdef __cplusplus
}
#endif
#endif
