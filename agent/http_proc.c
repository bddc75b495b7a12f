/* http_proc.c: the /api/v1/process/... routes (agent-api.md §2.3) and the route table for every
 * process-related module (sessions.c, ports.c).
 *
 * exec, exec-sync and sync-stream run on a worker: parse, resolve the cwd, spawn
 * (proc_spawn), then hand the child to the service thread (proc_start_post); the reply comes
 * from there, once the child is adopted. list, status, kill and logs run inline on the service
 * thread, which owns the table.
 *
 * exec-sync and sync-stream hold a reference on their request (kind state below) until they
 * answer; the request's stream hook tells them when the client goes away, and then the child's
 * process group is killed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "misc.h"
#include "proc.h"

#define DEFAULT_EXEC_TIMEOUT   7200
#define DEFAULT_SYNC_TIMEOUT   30
#define DEFAULT_STREAM_TIMEOUT 300
#define MAX_TIMEOUT            (10ll * 365 * 24 * 3600)
#define SSE_KEEPALIVE_MS       15000
/* Queued SSE bytes: stop reading the child's pipes above HIWAT, resume below LOWAT. */
#define STREAM_HIWAT (4u << 20)
#define STREAM_LOWAT (1u << 20)
#define LOGS_LAG_MAX (4u << 20) /* a log SSE client this far behind skips entries */
#define SSE_HEADERS  "cache-control: no-cache\r\n"

/* ---- helpers ----------------------------------------------------------------------------- */

static void now_ts(char ts[21])
{
	dbx_fmt_time(time(NULL), ts);
}

/* Workers block while the client is slow; the service thread never does. */
static void push_raw(struct req *r, const char *data, size_t len)
{
	if (agent_on_service_thread())
		req_stream_push(r, data, len);
	else
		req_stream_write(r, data, len);
}

static void push_json_event(struct req *r, const char *event, cJSON *data)
{
	char *s = cJSON_PrintUnformatted(data);
	cJSON_Delete(data);
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	sse_append_event(&sb, event, s ? s : "{}");
	push_raw(r, sb.data, sb.len);
	dbx_sb_free(&sb);
	free(s);
}

static cJSON *error_event(const char *text, uint64_t duration_ms)
{
	char ts[21];
	now_ts(ts);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "error", proc_json_str(text, strlen(text)));
	cJSON_AddNumberToObject(o, "durationMs", (double)duration_ms);
	cJSON_AddStringToObject(o, "timestamp", ts);
	return o;
}

static cJSON *start_event(void)
{
	char ts[21];
	now_ts(ts);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "timestamp", ts);
	return o;
}

/* Parses ?name=<u64>. 1 present, 0 absent, -1 after a 400 reply. */
/* ---- exec (background) ------------------------------------------------------------------ */

static void exec_line(struct proc *p, int which, const char *d, size_t n)
{
	proc_log_append(p, which ? "[stderr] " : "[stdout] ", d, n);
}

static const struct proc_ops exec_ops = {
	.line = exec_line,
};

static void exec_started(struct proc *p, struct proc_start *ps)
{
	struct req *r = ps->r;
	if (!p) {
		req_reply_err(
			r, ST_OPERATION,
			"Failed to spawn process: cannot watch the child (out of descriptors)");
	} else {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "processId", p->id);
		cJSON_AddNumberToObject(o, "pid", p->pid);
		cJSON_AddStringToObject(o, "processStatus", "running");
		req_reply_ok(r, o);
	}
	req_unref(r);
}

/* ---- exec-sync ------------------------------------------------------------------------------ */

struct sync_ext {
	struct req *r; /* held until the reply; NULL after */
	struct dbx_strbuf out[2];
	size_t total;
};

static void sync_drop_req(struct sync_ext *x)
{
	if (!x->r)
		return;
	req_set_stream_hook(x->r, NULL, NULL);
	req_unref(x->r);
	x->r = NULL;
	dbx_sb_free(&x->out[0]);
	dbx_sb_free(&x->out[1]);
}

static void sync_output(struct proc *p, int which, const char *d, size_t n)
{
	struct sync_ext *x = p->ext;
	if (!x->r)
		return;
	x->total += n;
	if (x->total > AGENT_SYNC_OUTPUT_MAX) {
		p->drop_output = true; /* an escaped writer must not be read forever */
		proc_kill_group(p);
		req_reply_err(x->r, ST_INTERNAL,
			      "Process output exceeded the exec-sync limit of %u MiB (stdout + "
			      "stderr); the process group was killed",
			      AGENT_SYNC_OUTPUT_MAX >> 20);
		sync_drop_req(x);
		return;
	}
	dbx_sb_append(&x->out[which], d, n);
}

static void sync_finished(struct proc *p)
{
	struct sync_ext *x = p->ext;
	if (x->r) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddItemToObject(o, "stdout", proc_json_str(x->out[0].data, x->out[0].len));
		cJSON_AddItemToObject(o, "stderr", proc_json_str(x->out[1].data, x->out[1].len));
		if (p->signaled)
			cJSON_AddNullToObject(o, "exitCode");
		else
			cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
		cJSON_AddNumberToObject(o, "durationMs", (double)(p->end_ms - p->start_ms));
		char ts[21];
		dbx_fmt_time(p->start, ts);
		cJSON_AddStringToObject(o, "startTime", ts);
		dbx_fmt_time(p->end, ts);
		cJSON_AddStringToObject(o, "endTime", ts);
		req_reply_ok(x->r, o);
		sync_drop_req(x);
	}
	proc_purge(p);
}

static void sync_timeout(struct proc *p)
{
	struct sync_ext *x = p->ext;
	if (!x->r)
		return;
	/* Unlike the official agent, the child's whole group was killed (proc.c). */
	req_reply_err(x->r, ST_INTERNAL, "Process execution timed out");
	sync_drop_req(x);
}

static void sync_release(struct proc *p)
{
	struct sync_ext *x = p->ext;
	if (x->r)
		req_reply_err(x->r, ST_INTERNAL, "The agent is shutting down");
	sync_drop_req(x);
	free(x);
	p->ext = NULL;
}

static const struct proc_ops sync_ops = {
	.output = sync_output,
	.finished = sync_finished,
	.timeout = sync_timeout,
	.release = sync_release,
};

/* The client of an exec-sync or sync-stream went away: kill the child's group. */
static void client_gone(struct proc *p)
{
	p->drop_output = true;
	proc_kill_group(p);
	if (p->reaped)
		proc_close_pipes(p); /* may free p */
}

static void sync_hook(struct req *r, void *arg, bool gone)
{
	struct proc *p = arg;
	struct sync_ext *x = p->ext;
	if (!gone || x->r != r)
		return;
	sync_drop_req(x);
	client_gone(p);
}

static void sync_fail_reply(struct req *r, const char *program, const struct proc_fail *f,
			    time_t start)
{
	if (f->status != ST_OPERATION) {
		req_reply_err(r, f->status, "%s", f->msg);
		return;
	}
	char text[1024];
	if (f->not_found_program)
		snprintf(text, sizeof(text), "exec: \"%s\": executable file not found in $PATH",
			 program);
	else
		snprintf(text, sizeof(text), "Failed to spawn process: %s", f->msg);
	char ts[21];
	dbx_fmt_time(start, ts);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "stdout", "");
	cJSON_AddItemToObject(o, "stderr", proc_json_str(text, strlen(text)));
	cJSON_AddNumberToObject(o, "exitCode", 127);
	cJSON_AddNumberToObject(o, "durationMs", 0);
	cJSON_AddStringToObject(o, "startTime", ts);
	cJSON_AddStringToObject(o, "endTime", ts);
	/* Status 1600 without a message key, like the official agent. */
	req_reply_status(r, ST_OPERATION, NULL, o);
}

static void sync_started(struct proc *p, struct proc_start *ps)
{
	struct req *r = ps->r;
	if (!p) {
		struct proc_fail f = {.status = ST_OPERATION};
		snprintf(f.msg, sizeof(f.msg), "cannot watch the child (out of descriptors)");
		sync_fail_reply(r, "", &f, time(NULL));
		req_unref(r);
		return;
	}
	struct sync_ext *x = calloc(1, sizeof(*x));
	if (!x) {
		p->ops = &proc_orphan_ops;
		p->drop_output = true;
		proc_kill_group(p);
		req_reply_err(r, ST_INTERNAL, "Out of memory");
		req_unref(r);
		return;
	}
	dbx_sb_init(&x->out[0], 0);
	dbx_sb_init(&x->out[1], 0);
	x->r = r;
	p->ext = x;
	p->ops = &sync_ops;
	req_set_stream_hook(r, sync_hook, p);
	if (req_gone(r)) {
		sync_drop_req(x);
		client_gone(p);
	}
}

/* ---- sync-stream ----------------------------------------------------------------------------- */

struct stream_ext {
	struct proc *p;
	struct req *r; /* held until the stream ends; NULL after */
	lws_sorted_usec_list_t sul_ka;
	uint64_t last_ms;
};

static size_t stream_push(struct stream_ext *x, const char *event, cJSON *data)
{
	x->last_ms = dbx_now_ms();
	push_json_event(x->r, event, data);
	return req_stream_queued(x->r);
}

static void stream_end(struct stream_ext *x)
{
	if (!x->r)
		return;
	lws_sul_cancel(&x->sul_ka);
	req_set_stream_hook(x->r, NULL, NULL);
	req_stream_end(x->r, 0);
	req_unref(x->r);
	x->r = NULL;
}

static void stream_ka_cb(lws_sorted_usec_list_t *sul)
{
	struct stream_ext *x = lws_container_of(sul, struct stream_ext, sul_ka);
	if (!x->r)
		return;
	uint64_t now = dbx_now_ms();
	if (now - x->last_ms >= SSE_KEEPALIVE_MS) {
		req_stream_push(x->r, ":\n\n", 3);
		x->last_ms = now;
	}
	uint64_t due = x->last_ms + SSE_KEEPALIVE_MS - now;
	lws_sul_schedule(req_agent(x->r)->ctx, 0, &x->sul_ka, stream_ka_cb, (lws_usec_t)due * 1000);
}

static void stream_line(struct proc *p, int which, const char *d, size_t n)
{
	struct stream_ext *x = p->ext;
	if (!x->r)
		return;
	char ts[21];
	now_ts(ts);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "output", proc_json_str(d, n));
	cJSON_AddStringToObject(o, "timestamp", ts);
	if (stream_push(x, which ? "stderr" : "stdout", o) > STREAM_HIWAT)
		proc_pause_output(p, true);
}

static void stream_finished(struct proc *p)
{
	struct stream_ext *x = p->ext;
	if (x->r) {
		char ts[21];
		now_ts(ts);
		cJSON *o = cJSON_CreateObject();
		if (p->signaled)
			cJSON_AddNullToObject(o, "exitCode");
		else
			cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
		cJSON_AddNumberToObject(o, "duration", (double)(p->end_ms - p->start_ms));
		cJSON_AddStringToObject(o, "timestamp", ts);
		stream_push(x, "complete", o);
		stream_end(x);
	}
	proc_purge(p);
}

static void stream_timeout(struct proc *p)
{
	struct stream_ext *x = p->ext;
	if (!x->r)
		return;
	stream_push(x, "error", error_event("Execution timeout", dbx_now_ms() - p->start_ms));
	stream_end(x);
}

static void stream_release(struct proc *p)
{
	struct stream_ext *x = p->ext;
	if (x->r)
		stream_push(x, "error", error_event("The agent is shutting down", 0));
	stream_end(x);
	free(x);
	p->ext = NULL;
}

static const struct proc_ops stream_ops = {
	.line = stream_line,
	.finished = stream_finished,
	.timeout = stream_timeout,
	.release = stream_release,
};

static void stream_hook(struct req *r, void *arg, bool gone)
{
	struct proc *p = arg;
	struct stream_ext *x = p->ext;
	if (x->r != r)
		return;
	if (!gone) {
		if (req_stream_queued(r) < STREAM_LOWAT)
			proc_pause_output(p, false);
		return;
	}
	lws_sul_cancel(&x->sul_ka);
	req_unref(x->r);
	x->r = NULL;
	client_gone(p);
}

static void stream_begin(struct req *r)
{
	req_stream_begin(r, 200, "text/event-stream", -1, SSE_HEADERS);
}

/* Service thread or worker: a stream that fails before anything runs. */
static void stream_fail(struct req *r, const char *text)
{
	stream_begin(r);
	push_json_event(r, "start", start_event());
	push_json_event(r, "error", error_event(text, 0));
	req_stream_end(r, 0);
}

static void stream_started(struct proc *p, struct proc_start *ps)
{
	struct req *r = ps->r;
	struct stream_ext *x = p ? calloc(1, sizeof(*x)) : NULL;
	if (!x) {
		if (p) {
			p->ops = &proc_orphan_ops;
			p->drop_output = true;
			proc_kill_group(p);
		}
		stream_fail(r, "Failed to spawn process: cannot watch the child");
		req_unref(r);
		return;
	}
	x->p = p;
	x->r = r;
	p->ext = x;
	p->ops = &stream_ops;
	stream_begin(r);
	req_stream_keepalive(r, 60);
	stream_push(x, "start", start_event());
	req_set_stream_hook(r, stream_hook, p);
	lws_sul_schedule(req_agent(r)->ctx, 0, &x->sul_ka, stream_ka_cb, SSE_KEEPALIVE_MS * 1000ll);
	if (req_gone(r)) {
		stream_end(x);
		client_gone(p);
	}
}

/* ---- the three spawning routes (worker) ---------------------------------------------------- */

static void spawn_route(struct req *r, enum proc_kind kind)
{
	cJSON *body = req_json(r);
	struct proc_spec spec;
	struct proc_fail fail;
	struct proc_spawned sp;
	bool has_timeout;
	int64_t timeout = 0;

	memset(&fail, 0, sizeof(fail));
	if (json_get_int(r, body, "timeout", &has_timeout, &timeout) < 0)
		return;
	if (has_timeout && timeout < 0) {
		req_reply_shape(r, "timeout: invalid value: integer `%lld`, expected u64",
				(long long)timeout);
		return;
	}
	/* 0 (or absent) means the route's default. */
	if (!has_timeout || timeout == 0)
		timeout = kind == PK_EXEC   ? DEFAULT_EXEC_TIMEOUT
			  : kind == PK_SYNC ? DEFAULT_SYNC_TIMEOUT
					    : DEFAULT_STREAM_TIMEOUT;
	if (timeout > MAX_TIMEOUT)
		timeout = MAX_TIMEOUT;

	int rc = proc_spec_from_json(r, body, &spec, &fail);
	if (rc < 0)
		return;
	if (rc == 0 && proc_spawn(&spec, &sp, &fail) == 0) {
		struct proc_start *ps = calloc(1, sizeof(*ps));
		if (!ps)
			abort(); /* the child runs: without memory to track it nothing is sane */
		ps->ag = req_agent(r);
		ps->kind = kind;
		ps->ops = kind == PK_EXEC ? &exec_ops : kind == PK_SYNC ? &sync_ops : &stream_ops;
		ps->r = req_ref(r);
		ps->command = spec.command;
		spec.command = NULL;
		ps->sp = sp;
		ps->timeout_s = timeout;
		ps->started = kind == PK_EXEC   ? exec_started
			      : kind == PK_SYNC ? sync_started
						: stream_started;
		proc_start_post(ps);
		proc_spec_free(&spec);
		return;
	}
	const char *program = spec.argv && spec.argv[0] ? spec.argv[0] : "";
	if (kind == PK_EXEC) {
		if (fail.status == ST_OPERATION)
			req_reply_err(r, ST_OPERATION, "Failed to spawn process: %s", fail.msg);
		else
			req_reply_err(r, fail.status, "%s", fail.msg);
	} else if (kind == PK_SYNC) {
		sync_fail_reply(r, program, &fail, time(NULL));
	} else {
		char text[1024];
		if (fail.status == ST_OPERATION)
			snprintf(text, sizeof(text), "Failed to spawn process: %s", fail.msg);
		else
			snprintf(text, sizeof(text), "%s", fail.msg);
		stream_fail(r, text);
	}
	proc_spec_free(&spec);
}

static void exec_fn(struct req *r)
{
	spawn_route(r, PK_EXEC);
}

static void exec_sync_fn(struct req *r)
{
	spawn_route(r, PK_SYNC);
}

static void sync_stream_fn(struct req *r)
{
	spawn_route(r, PK_STREAM);
}

/* ---- list, status, kill (service thread) ------------------------------------------------- */

static struct proc *find_or_404(struct req *r)
{
	struct proc *p = proc_find(req_agent(r), PK_EXEC, req_param(r));
	if (!p)
		req_reply_err(r, ST_NOT_FOUND, "Process not found");
	return p;
}

static void list_fn(struct req *r)
{
	cJSON *arr = cJSON_CreateArray();
	struct proc_list *l = proc_records(req_agent(r), PK_EXEC);
	for (struct proc *p = l ? l->head : NULL; p; p = p->lnext)
		cJSON_AddItemToArray(arr, proc_status_json(p));
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "processes", arr);
	req_reply_ok(r, o);
}

static void status_fn(struct req *r)
{
	struct proc *p = find_or_404(r);
	if (p)
		req_reply_ok(r, proc_status_json(p));
}

static void kill_fn(struct req *r)
{
	struct proc *p = find_or_404(r);
	if (!p)
		return;
	if (p->reaped || p->state != PS_RUNNING) {
		req_reply_err(r, ST_CONFLICT, "Process is not running");
		return;
	}
	/* Like the official agent: these three are recognised, anything else is SIGKILL. */
	const char *s = req_query(r, "signal");
	int sig = SIGKILL;
	if (s && strcmp(s, "SIGTERM") == 0)
		sig = SIGTERM;
	else if (s && strcmp(s, "SIGINT") == 0)
		sig = SIGINT;
	else if (s && strcmp(s, "SIGHUP") == 0)
		sig = SIGHUP;
	int e = proc_signal(p, sig);
	if (e < 0) {
		req_reply_err(r, ST_INTERNAL, "Failed to kill process: %s (os error %d)",
			      strerror(-e), -e);
		return;
	}
	if (sig == SIGKILL)
		p->state = PS_KILLED;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "success", true);
	req_reply_ok(r, o);
}

/* ---- logs (service thread) ------------------------------------------------------------------ */

struct logsub {
	struct proc_listener l;
	struct req *r;
	struct agent *ag;
	lws_sorted_usec_list_t sul_ka;
	uint64_t last_ms;
	bool lagged;
};

static const char lag_event[] = "event: error\ndata: stream error\n\n";

static void logsub_free(struct logsub *s)
{
	lws_sul_cancel(&s->sul_ka);
	req_set_stream_hook(s->r, NULL, NULL);
	req_unref(s->r);
	free(s);
}

static void logsub_push(struct logsub *s, const char *data, size_t len)
{
	s->last_ms = dbx_now_ms();
	req_stream_push(s->r, data, len);
}

static void logsub_entry(struct proc_listener *l, const struct log_entry *e)
{
	struct logsub *s = lws_container_of(l, struct logsub, l);
	if (req_stream_queued(s->r) > LOGS_LAG_MAX) {
		s->lagged = true; /* skip entries, say so once the client catches up */
		return;
	}
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	if (s->lagged) {
		dbx_sb_puts(&sb, lag_event);
		s->lagged = false;
	}
	sse_append_data_lines(&sb, e->text, e->len);
	logsub_push(s, sb.data, sb.len);
	dbx_sb_free(&sb);
}

static void logsub_detach(struct proc_listener *l)
{
	/* The record was purged: the stream ends. */
	struct logsub *s = lws_container_of(l, struct logsub, l);
	req_set_stream_hook(s->r, NULL, NULL);
	req_stream_end(s->r, 0);
	logsub_free(s);
}

static void logsub_hook(struct req *r, void *arg, bool gone)
{
	struct logsub *s = arg;
	if (!gone) {
		if (s->lagged && req_stream_queued(r) < STREAM_LOWAT) {
			s->lagged = false;
			logsub_push(s, lag_event, sizeof(lag_event) - 1);
		}
		return;
	}
	proc_unlisten(&s->l);
	logsub_free(s);
}

static void logsub_ka_cb(lws_sorted_usec_list_t *sul)
{
	struct logsub *s = lws_container_of(sul, struct logsub, sul_ka);
	uint64_t now = dbx_now_ms();
	if (now - s->last_ms >= SSE_KEEPALIVE_MS) {
		req_stream_push(s->r, ":\n\n", 3);
		s->last_ms = now;
	}
	uint64_t due = s->last_ms + SSE_KEEPALIVE_MS - now;
	lws_sul_schedule(s->ag->ctx, 0, &s->sul_ka, logsub_ka_cb, (lws_usec_t)due * 1000);
}

static void logs_stream(struct req *r, struct proc *p, bool has_tail, int64_t tail)
{
	struct logsub *s = calloc(1, sizeof(*s));
	if (!s) {
		req_reply_err(r, ST_INTERNAL, "Out of memory");
		return;
	}
	s->r = req_ref(r);
	s->ag = req_agent(r);
	s->l.entry = logsub_entry;
	s->l.detach = logsub_detach;
	stream_begin(r);
	req_stream_keepalive(r, 60);
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	if (!has_tail || tail > 0) {
		for (const struct log_entry *e = proc_log_from(p, has_tail ? tail : 0); e;
		     e = e->next)
			sse_append_data_lines(&sb, e->text, e->len);
	}
	if (sb.len)
		logsub_push(s, sb.data, sb.len);
	else
		s->last_ms = dbx_now_ms();
	dbx_sb_free(&sb);
	proc_listen(p, &s->l);
	req_set_stream_hook(r, logsub_hook, s);
	lws_sul_schedule(s->ag->ctx, 0, &s->sul_ka, logsub_ka_cb, SSE_KEEPALIVE_MS * 1000ll);
}

static void logs_fn(struct req *r)
{
	uint64_t tail_q = 0;
	bool stream = false;
	int has_tail = req_query_u64(r, "tail", &tail_q);
	if (has_tail < 0 || req_query_bool(r, "stream", &stream) < 0)
		return;
	int64_t tail = tail_q > INT64_MAX ? INT64_MAX : (int64_t)tail_q;
	struct proc *p = find_or_404(r);
	if (!p)
		return;
	if (stream || strcmp(req_accept(r), "text/event-stream") == 0) {
		logs_stream(r, p, has_tail, tail);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "processId", p->id);
	cJSON_AddNumberToObject(o, "pid", p->pid);
	cJSON_AddStringToObject(o, "processStatus", proc_state_name(p->state));
	if (p->reaped)
		cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
	else
		cJSON_AddNullToObject(o, "exitCode");
	cJSON *arr = cJSON_AddArrayToObject(o, "logs");
	if (!has_tail || tail > 0)
		for (const struct log_entry *e = proc_log_from(p, has_tail ? tail : 0); e;
		     e = e->next)
			cJSON_AddItemToArray(arr, proc_json_str(e->text, e->len));
	req_reply_ok(r, o);
}

/* ---- route table ------------------------------------------------------------------------- */

const struct route proc_routes[] = {
	{"POST", "/api/v1/process/exec", exec_fn, R_JSON, NULL},
	{"POST", "/api/v1/process/exec-sync", exec_sync_fn, R_JSON, NULL},
	{"POST", "/api/v1/process/sync-stream", sync_stream_fn, R_JSON, NULL},
	{"GET", "/api/v1/process/list", list_fn, R_INLINE, NULL},
	{"GET", "/api/v1/process/*/status", status_fn, R_INLINE, NULL},
	{"POST", "/api/v1/process/*/kill", kill_fn, R_INLINE, NULL},
	{"GET", "/api/v1/process/*/logs", logs_fn, R_INLINE, NULL},
	{"POST", "/api/v1/sessions/create", sessions_create_fn, R_JSON, NULL},
	{"GET", "/api/v1/sessions", sessions_list_fn, R_INLINE, NULL},
	{"GET", "/api/v1/sessions/*", sessions_get_fn, R_INLINE, NULL},
	{"POST", "/api/v1/sessions/*/env", sessions_env_fn, R_JSON | R_INLINE, NULL},
	{"POST", "/api/v1/sessions/*/exec", sessions_exec_fn, R_JSON | R_INLINE, NULL},
	{"POST", "/api/v1/sessions/*/cd", sessions_cd_fn, R_JSON | R_INLINE, NULL},
	{"POST", "/api/v1/sessions/*/terminate", sessions_terminate_fn, R_INLINE, NULL},
	{"GET", "/api/v1/sessions/*/logs", sessions_logs_fn, R_INLINE, NULL},
	{"GET", "/api/v1/ports", ports_fn, 0, NULL},
	{NULL, NULL, NULL, 0, NULL},
};
