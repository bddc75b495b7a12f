/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_exec — an interactive command in the devbox (/exec/v1, agent/PROTOCOL.md §4).
 *
 * The attach WebSocket is served by a libwebsockets thread owned by the dbx_exec.  Output and
 * the exit arrive as events the caller pulls with dbx_exec_next(); dbx_exec_fd() is readable
 * whenever an event is pending, so a caller can poll it together with its own fds.  The input
 * calls may be made from any thread; dbx_exec_next() from one thread at a time.
 */
#ifndef DEVBOX_EXEC_H
#define DEVBOX_EXEC_H

#include <devbox/client.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbx_exec dbx_exec;

struct dbx_exec_config {
	const char *const *argv; /* NULL-terminated, exec'd as given (required) */
	const char *const *env;  /* NULL-terminated "K=V" list added to the agent's env, or NULL */
	const char *cwd;         /* workspace-relative; NULL: the workspace root */
	bool tty;                /* run on a new PTY */
	unsigned rows, cols;     /* initial PTY size; 0: 24x80 */
	unsigned timeout_s;      /* 0: none; the agent kills the group after it */
};

/* Starts the command and attaches to it from output offset 0. */
DBX_API int dbx_exec_start(dbx_client *c, const struct dbx_exec_config *cfg,
			   dbx_exec **ret_exec);
/* Attaches to a running (or recently finished) exec by id. */
DBX_API int dbx_exec_attach(dbx_client *c, const char *id, uint64_t offset,
			    dbx_exec **ret_exec);
/* Detaches (the remote command keeps running) and frees. */
DBX_API dbx_exec *dbx_exec_free(dbx_exec *e);

DBX_API const char *dbx_exec_id(const dbx_exec *e);
DBX_API pid_t dbx_exec_pid(const dbx_exec *e);

/* Input.  write_stdin blocks while more than 1 MiB is queued towards the agent. */
DBX_API int dbx_exec_write_stdin(dbx_exec *e, const void *buf, size_t len);
DBX_API int dbx_exec_close_stdin(dbx_exec *e);
DBX_API int dbx_exec_signal(dbx_exec *e, int sig);
DBX_API int dbx_exec_resize(dbx_exec *e, unsigned rows, unsigned cols);

enum dbx_exec_event_kind {
	DBX_EXEC_OUTPUT = 1, /* channel 1 stdout (everything with a PTY), 2 stderr */
	DBX_EXEC_SKIPPED,    /* output [from, to) of channel was lost (slow reader) */
	DBX_EXEC_EXIT,       /* the command ended; exit_code or signal set */
	DBX_EXEC_CLOSED,     /* the connection ended without an exit; error holds -errno */
};
struct dbx_exec_event {
	enum dbx_exec_event_kind kind;
	int channel;
	const void *data; /* OUTPUT: borrowed until the next dbx_exec_next() */
	size_t len;
	uint64_t offset;  /* OUTPUT: offset of data in its channel; SKIPPED: from */
	uint64_t to;      /* SKIPPED */
	int exit_code;    /* EXIT: -1 when killed by a signal */
	int signal;       /* EXIT: signal number or 0 */
	int error;        /* CLOSED */
};
/* Waits up to timeout_ms (-1 forever) for the next event: 1 with *ret set, 0 on timeout,
 * -errno on failure.  After EXIT or CLOSED it keeps returning that event. */
DBX_API int dbx_exec_next(dbx_exec *e, struct dbx_exec_event *ret, int timeout_ms);
/* Readable while an event is pending.  Borrowed. */
DBX_API int dbx_exec_fd(const dbx_exec *e);

/* Convenience: run argv to completion with no stdin, output to the sinks (either may be NULL)
 * and the result in *ret_exit_code / *ret_signal. */
DBX_API int dbx_exec_run(dbx_client *c, const struct dbx_exec_config *cfg,
			 dbx_sink_fn out, dbx_sink_fn err, void *ud, int *ret_exit_code,
			 int *ret_signal);

#ifdef __cplusplus
}
#endif
#endif
