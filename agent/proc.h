/* proc.h: the process engine shared by proc.c (table, spawning, pipes, pidfds, timers, logs),
 * http_proc.c (/api/v1/process/...), sessions.c (/api/v1/sessions/...), ws_logs.c (/ws) and
 * ports.c (/api/v1/ports). Not installed; agent-internal.
 *
 * Threads: the process table and every struct proc belong to the service thread. Workers only
 * build a spawn spec, call proc_spawn() (which reserves a slot in a process-wide atomic
 * counter) and hand the result to the service thread with proc_start_post().
 *
 * Lifetime of a struct proc: created on the service thread when the spawned fds are adopted;
 * lives in one of the table's lists (exec records, sessions, or the anonymous exec-sync /
 * sync-stream list); proc_purge() unlinks it and closes its lws fds; the memory is freed once
 * no adopted wsi refers to it any more. */
#pragma once

#include <signal.h>

#include "agent.h"

enum proc_kind {
	PK_EXEC,    /* background process: a record with logs, listed */
	PK_SYNC,    /* exec-sync: output collected for one JSON reply */
	PK_STREAM,  /* sync-stream: output streamed as SSE */
	PK_SESSION, /* a shell session: a record with logs and a stdin pipe */
	PK_IEXEC,   /* interactive exec (/exec/v1, exec.c): raw output, stdin, optional PTY */
};

enum proc_state { PS_RUNNING, PS_COMPLETED, PS_FAILED, PS_KILLED };

struct log_entry {
	struct log_entry *next;
	size_t len;
	char text[]; /* "[stdout] line\n", raw bytes (may be invalid UTF-8), NUL-terminated */
};

/* A live consumer of a record's log entries (SSE logs stream, /ws subscription). */
struct proc_listener {
	struct proc_listener *next, *prev;
	struct proc *p; /* NULL once detached */
	/* A new entry. The listener may call proc_unlisten() on itself from here. */
	void (*entry)(struct proc_listener *l, const struct log_entry *e);
	/* The record is going away (purge or shutdown): l is already unlinked. */
	void (*detach)(struct proc_listener *l);
};

struct proc;

/* Per-kind behaviour, called on the service thread. */
struct proc_ops {
	/* Raw output bytes (exec-sync). When NULL, output is split into lines for line(). */
	void (*output)(struct proc *p, int which, const char *data, size_t len);
	/* One line including its '\n' (or a final/overlong piece without one). */
	void (*line)(struct proc *p, int which, const char *data, size_t len);
	void (*reaped)(struct proc *p);   /* the leader exited (state and exit code set) */
	void (*finished)(struct proc *p); /* reaped and both pipes at EOF */
	void (*timeout)(struct proc *p);  /* the timer fired (the group is already killed) */
	/* Shutdown or purge: release what the kind holds (req refs, session fds, ...). */
	void (*release)(struct proc *p);
};

struct proc_out {
	struct lws *wsi; /* adopted read end; NULL once closed */
	int dupfd;       /* our dup of the read end (lws-notes T18); -1 once closed */
	bool eof;
	bool paused; /* rx flow control applied to wsi */
	char *part;  /* partial line, AGENT_LOG_LINE_MAX bytes when allocated */
	size_t partlen;
};

struct proc {
	struct proc *lnext, *lprev; /* in its table list */
	struct proc_list *list;     /* NULL once purged */
	struct proc_table *t;
	const struct proc_ops *ops;
	enum proc_kind kind;
	char id[9];
	char *command; /* display command line */
	pid_t pid;
	int pidfd;              /* owned by pidwsi; -1 once that is closed */
	struct lws *pidwsi;     /* adopted pidfd; NULL once closed */
	struct proc_out out[2]; /* 0 stdout, 1 stderr */
	enum proc_state state;
	bool reaped;
	bool signaled; /* died from a signal (exit_code = 128 + sig) */
	int exit_code; /* valid once reaped */
	bool finished; /* finished() called */
	bool timed_out;
	bool drop_output; /* once reaped, stop waiting for pipe EOF (timeout, client gone) */
	bool purged;
	time_t start, end;         /* wall clock (wire timestamps) */
	uint64_t start_ms, end_ms; /* monotonic */
	lws_sorted_usec_list_t sul_timeout;

	/* logs (records and sessions) */
	struct log_entry *log_head, *log_tail;
	size_t log_n, log_bytes;
	struct proc_listener *listeners;

	void *ext; /* kind-specific state (owned through ops->release) */
};

/* Ops for a child nobody waits for any more: killed, reaped, forgotten. */
extern const struct proc_ops proc_orphan_ops;

struct proc_list {
	struct proc *head, *tail;
	int n;
};

/* ---- worker side ----------------------------------------------------------------------- */

struct proc_spec {
	char **argv;     /* NULL-terminated; argv[0] is the program as given */
	char **envp;     /* NULL-terminated */
	int cwdfd;       /* O_PATH | O_DIRECTORY beneath the workspace */
	char *cwd_abs;   /* absolute cwd (for sessions' replies) */
	char *command;   /* display command line */
	bool stdin_pipe; /* sessions: stdin is a pipe the agent writes; else /dev/null */
	/* A new PTY as stdin/stdout/stderr and controlling terminal (stdin_pipe ignored). */
	bool tty;
	unsigned short rows, cols; /* its initial window size */
};

/* A spawn or request problem, reported in the shape each route needs. */
struct proc_fail {
	int status;             /* ST_FORBIDDEN (cwd outside), ST_OPERATION (spawn), ST_INVALID */
	int err;                /* errno, 0 if none */
	bool not_found_program; /* the program itself was not found (exec-sync's Go-like text) */
	char msg[768];
};

struct proc_spawned {
	pid_t pid;
	int pidfd;
	/* Non-blocking read ends of stdout, stderr. With a PTY: rd[0] is the master and rd[1] is
	 * -1 (the stderr output is then at EOF from the start). */
	int rd[2];
	int dup[2]; /* their dups (T18) */
	int in_w;   /* stdin write end (sessions), a dup of the PTY master (tty), or -1 */
	time_t start;
	uint64_t start_ms;
};

/* Worker. Parses {"command","args","cwd","env"} into @spec. Returns 0; -1 after replying (a
 * 422 shape error); 1 with @fail filled (cwd outside / missing). */
int proc_spec_from_json(struct req *r, cJSON *body, struct proc_spec *spec, struct proc_fail *fail);
/* Worker. Builds spec->envp = the agent's environment + @env_obj (object of strings, or NULL);
 * -1 after a 422 reply. */
int proc_spec_env(struct req *r, cJSON *env_obj, struct proc_spec *spec);
/* Worker. Resolves @cwd (NULL = workspace) into spec->cwdfd / cwd_abs. 0 or 1 with @fail. */
int proc_spec_cwd(struct agent *ag, const char *cwd, struct proc_spec *spec,
		  struct proc_fail *fail);
void proc_spec_free(struct proc_spec *spec);
/* Splits a command line shell-like (quotes, backslashes, comments; no expansion). Returns a
 * NULL-terminated malloc'd vector, or NULL for an unbalanced quote. */
char **proc_split_words(const char *s);
void proc_strv_free(char **v);

/* Worker. Reserves a running slot and spawns. 0, or -1 with @fail filled (nothing runs). */
int proc_spawn(struct proc_spec *spec, struct proc_spawned *sp, struct proc_fail *fail);

struct proc_start {
	struct agent *ag;
	enum proc_kind kind;
	const struct proc_ops *ops;
	struct req *r; /* a reference, or NULL */
	char *command; /* taken */
	struct proc_spawned sp;
	int64_t timeout_s; /* 0 = none */
	void *ext;         /* taken: becomes p->ext */
	/* Service thread, once adopted (p != NULL) or on failure (p == NULL, child killed and
	 * everything but ps->r and ps->ext released). Must consume ps->r and ps->ext. */
	void (*started)(struct proc *p, struct proc_start *ps);
};

/* Any thread: adopt the spawned process on the service thread, then call ps->started. */
void proc_start_post(struct proc_start *ps);

/* ---- service thread --------------------------------------------------------------------- */

struct proc *proc_find(struct agent *ag, enum proc_kind kind, const char *id);
struct proc_list *proc_records(struct agent *ag, enum proc_kind kind);
/* Signals the leader (pidfd) and its whole process group. 0 or -errno. */
int proc_signal(struct proc *p, int sig);
/* SIGKILL to the group when it may still exist (see proc.c). */
void proc_kill_group(struct proc *p);
/* Removes @p from the table: listeners detached, release() called, lws fds closed, freed when
 * the last wsi is gone. */
void proc_purge(struct proc *p);
/* Stops waiting for output: closes both pipes (their remaining bytes are drained first). */
void proc_close_pipes(struct proc *p);
/* Pause/resume reading the pipes (backpressure for a slow SSE client). */
void proc_pause_output(struct proc *p, bool pause);

void proc_log_append(struct proc *p, const char *prefix, const char *data, size_t len);
void proc_listen(struct proc *p, struct proc_listener *l);
void proc_unlisten(struct proc_listener *l);
/* The entry that starts the last @n entries (n <= 0: all). */
const struct log_entry *proc_log_from(struct proc *p, int64_t n);

const char *proc_state_name(enum proc_state s);
/* {"processId","pid","command","processStatus","startTime","endTime","exitCode"} */
cJSON *proc_status_json(struct proc *p);
/* Lossy UTF-8 JSON string. */
cJSON *proc_json_str(const char *s, size_t len);

/* SSE helpers: append one event to @sb. */
void sse_append_event(struct dbx_strbuf *sb, const char *event, const char *data);
/* A log entry as SSE data lines (axum splits on '\n'): "data: a\ndata: \n\n". */
void sse_append_data_lines(struct dbx_strbuf *sb, const char *text, size_t len);

/* ---- other modules' routes ---------------------------------------------------------------- */

void sessions_create_fn(struct req *r);
void sessions_list_fn(struct req *r);
void sessions_get_fn(struct req *r);
void sessions_env_fn(struct req *r);
void sessions_exec_fn(struct req *r);
void sessions_cd_fn(struct req *r);
void sessions_terminate_fn(struct req *r);
void sessions_logs_fn(struct req *r);
void ports_fn(struct req *r);
void ports_cache_init(struct agent *ag);
