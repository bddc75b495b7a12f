/* sessions.c: /api/v1/sessions/... (agent-api.md §2.4): long-lived shells fed through a stdin
 * pipe, with their output logged like a background process's.
 *
 * A session is a struct proc of kind PK_SESSION (proc.c) whose ext is a struct session.
 * create runs on a worker (it spawns); every other route runs inline on the service thread,
 * which owns the table and the session's stdin pipe. Writes to the shell never block: the pipe
 * is non-blocking and a command is written only if it fits whole (otherwise a clear error).
 *
 * Divergences from the official agent, for safety and correctness: the shell's cwd must lie
 * beneath the workspace; `cd` paths are resolved beneath it and sent quoted; `env` values are
 * sent single-quoted and names must be shell identifiers. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <fcntl.h>

#include "misc.h"
#include "path.h"
#include "proc.h"

#define DEFAULT_SHELL     "/bin/bash"
#define SESSION_INPUT_MAX (256u << 10) /* one exec/env/cd write */

struct session {
	char *shell;
	char *cwd;  /* absolute */
	cJSON *env; /* object of strings */
	time_t created, last_used;
	int in_w; /* stdin write end; -1 once closed */
	bool terminated;
	bool slot_held; /* counted in active_sessions */
};

static atomic_int active_sessions;

static void session_free(struct session *s)
{
	if (!s)
		return;
	if (s->in_w >= 0)
		close(s->in_w);
	if (s->slot_held)
		atomic_fetch_sub(&active_sessions, 1);
	free(s->shell);
	free(s->cwd);
	cJSON_Delete(s->env);
	free(s);
}

static void session_line(struct proc *p, int which, const char *d, size_t n)
{
	proc_log_append(p, which ? "[stderr] " : "[stdout] ", d, n);
}

static void session_reaped(struct proc *p)
{
	struct session *s = p->ext;
	s->terminated = true;
	if (s->in_w >= 0) {
		close(s->in_w);
		s->in_w = -1;
	}
	if (s->slot_held) {
		s->slot_held = false;
		atomic_fetch_sub(&active_sessions, 1);
	}
}

static void session_release(struct proc *p)
{
	session_free(p->ext);
	p->ext = NULL;
}

static const struct proc_ops session_ops = {
	.line = session_line,
	.reaped = session_reaped,
	.release = session_release,
};

static cJSON *session_json(struct proc *p)
{
	struct session *s = p->ext;
	char ts[21];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sessionId", p->id);
	cJSON_AddItemToObject(o, "shell", proc_json_str(s->shell, strlen(s->shell)));
	cJSON_AddItemToObject(o, "cwd", proc_json_str(s->cwd, strlen(s->cwd)));
	cJSON_AddItemToObject(o, "env", cJSON_Duplicate(s->env, true));
	cJSON_AddStringToObject(o, "sessionStatus", s->terminated ? "terminated" : "active");
	dbx_fmt_time(s->created, ts);
	cJSON_AddStringToObject(o, "createdAt", ts);
	dbx_fmt_time(s->last_used, ts);
	cJSON_AddStringToObject(o, "lastUsedAt", ts);
	return o;
}

/* ---- create (worker) ------------------------------------------------------------------- */

static void create_started(struct proc *p, struct proc_start *ps)
{
	struct req *r = ps->r;
	struct session *s = p ? p->ext : ps->ext; /* adopt_cb moved it to p->ext */
	if (!p) {
		session_free(s);
		req_reply_err(r, ST_INTERNAL, "Failed to spawn shell: cannot watch the child");
		req_unref(r);
		return;
	}
	s->in_w = ps->sp.in_w;
	ps->sp.in_w = -1;
	s->created = s->last_used = p->start;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sessionId", p->id);
	cJSON_AddItemToObject(o, "shell", proc_json_str(s->shell, strlen(s->shell)));
	cJSON_AddItemToObject(o, "cwd", proc_json_str(s->cwd, strlen(s->cwd)));
	cJSON_AddStringToObject(o, "sessionStatus", "active");
	req_reply_ok(r, o);
	req_unref(r);
}

void sessions_create_fn(struct req *r)
{
	cJSON *body = req_json(r);
	const char *wd, *shell;
	struct proc_spec spec;
	struct proc_fail fail;
	struct proc_spawned sp;
	struct session *s = NULL;

	memset(&spec, 0, sizeof(spec));
	spec.cwdfd = -1;
	memset(&fail, 0, sizeof(fail));
	if (json_get_str(r, body, "workingDir", false, &wd) < 0 ||
	    json_get_str(r, body, "shell", false, &shell) < 0)
		return;
	cJSON *env = cJSON_GetObjectItemCaseSensitive(body, "env");
	if (proc_spec_env(r, env, &spec) < 0)
		goto out;
	if (!shell || !*shell)
		shell = DEFAULT_SHELL;
	if (proc_spec_cwd(req_agent(r), wd, &spec, &fail)) {
		if (fail.status == ST_OPERATION)
			req_reply_err(r, ST_INTERNAL, "Failed to spawn shell: %s", fail.msg);
		else
			req_reply_err(r, fail.status, "%s", fail.msg);
		goto out;
	}
	s = calloc(1, sizeof(*s));
	spec.argv = calloc(2, sizeof(char *));
	if (!s || !spec.argv || !(spec.argv[0] = strdup(shell)) || !(s->shell = strdup(shell)) ||
	    !(spec.command = strdup(shell))) {
		req_reply_err(r, ST_INTERNAL, "Out of memory");
		goto out;
	}
	s->in_w = -1;
	s->cwd = spec.cwd_abs;
	spec.cwd_abs = NULL;
	s->env = env && cJSON_IsObject(env) ? cJSON_Duplicate(env, true) : cJSON_CreateObject();
	if (atomic_fetch_add(&active_sessions, 1) >= AGENT_MAX_SESSIONS) {
		atomic_fetch_sub(&active_sessions, 1);
		req_reply_err(r, ST_INTERNAL, "Failed to spawn shell: too many sessions (limit %d)",
			      AGENT_MAX_SESSIONS);
		goto out;
	}
	s->slot_held = true;
	spec.stdin_pipe = true;
	if (proc_spawn(&spec, &sp, &fail) < 0) {
		req_reply_err(r, ST_INTERNAL, "Failed to spawn shell: %s", fail.msg);
		goto out;
	}
	struct proc_start *ps = calloc(1, sizeof(*ps));
	if (!ps)
		abort(); /* the shell runs: without memory to track it nothing is sane */
	ps->ag = req_agent(r);
	ps->kind = PK_SESSION;
	ps->ops = &session_ops;
	ps->r = req_ref(r);
	ps->command = spec.command;
	spec.command = NULL;
	ps->sp = sp;
	ps->ext = s;
	s = NULL;
	ps->started = create_started;
	proc_start_post(ps);
out:
	session_free(s);
	proc_spec_free(&spec);
}

/* ---- inline routes (service thread) ------------------------------------------------------ */

static struct proc *find_or_404(struct req *r)
{
	struct proc *p = proc_find(req_agent(r), PK_SESSION, req_param(r));
	if (!p)
		req_reply_err(r, ST_NOT_FOUND, "Session not found");
	return p;
}

static struct proc *find_active(struct req *r)
{
	struct proc *p = find_or_404(r);
	if (!p)
		return NULL;
	struct session *s = p->ext;
	if (s->terminated || s->in_w < 0) {
		req_reply_err(r, ST_CONFLICT, "Session is not active");
		return NULL;
	}
	return p;
}

/* Writes @data whole to the shell's stdin, or not at all. Replies on failure (-1). */
static int session_write(struct req *r, struct proc *p, const char *data, size_t len)
{
	struct session *s = p->ext;
	int cap = fcntl(s->in_w, F_GETPIPE_SZ);
	int queued = 0;
	if (len > SESSION_INPUT_MAX) {
		req_reply_err(r, ST_INVALID, "Input too long (limit %u bytes)", SESSION_INPUT_MAX);
		return -1;
	}
	if (cap > 0 && ioctl(s->in_w, FIONREAD, &queued) == 0 && len > (size_t)(cap - queued)) {
		req_reply_err(r, ST_INTERNAL,
			      "Session input is full: the shell is not reading its input");
		return -1;
	}
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(s->in_w, data + off, len - off);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		int e = n < 0 ? errno : EIO;
		if (e == EPIPE)
			req_reply_err(r, ST_CONFLICT, "Session is not active");
		else if (e == EAGAIN)
			req_reply_err(r, ST_INTERNAL,
				      "Session input is full: the shell is not reading its input");
		else
			req_reply_err(r, ST_INTERNAL, "Writing to the shell: %s (os error %d)",
				      strerror(e), e);
		return -1;
	}
	s->last_used = time(NULL);
	return 0;
}

/* Appends @v single-quoted for a POSIX shell. */
static void shell_quote(struct dbx_strbuf *sb, const char *v)
{
	dbx_sb_putc(sb, '\'');
	for (; *v; v++) {
		if (*v == '\'')
			dbx_sb_puts(sb, "'\\''");
		else
			dbx_sb_putc(sb, *v);
	}
	dbx_sb_putc(sb, '\'');
}

static bool shell_name_ok(const char *k)
{
	if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
		return false;
	for (k++; *k; k++)
		if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') ||
		      (*k >= '0' && *k <= '9') || *k == '_'))
			return false;
	return true;
}

static void reply_success(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "success", true);
	req_reply_ok(r, o);
}

void sessions_list_fn(struct req *r)
{
	cJSON *arr = cJSON_CreateArray();
	struct proc_list *l = proc_records(req_agent(r), PK_SESSION);
	for (struct proc *p = l ? l->head : NULL; p; p = p->lnext)
		cJSON_AddItemToArray(arr, session_json(p));
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "sessions", arr);
	req_reply_ok(r, o);
}

void sessions_get_fn(struct req *r)
{
	struct proc *p = find_or_404(r);
	if (p)
		req_reply_ok(r, session_json(p));
}

void sessions_env_fn(struct req *r)
{
	cJSON *env = cJSON_GetObjectItemCaseSensitive(req_json(r), "env");
	if (!env || cJSON_IsNull(env)) {
		req_reply_shape(r, "missing field `env`");
		return;
	}
	if (!cJSON_IsObject(env)) {
		req_reply_shape(r, "env: invalid type: expected a map");
		return;
	}
	cJSON *it;
	cJSON_ArrayForEach(it, env)
	{
		if (!cJSON_IsString(it)) {
			req_reply_shape(r, "env.%s: invalid type: expected a string", it->string);
			return;
		}
	}
	struct proc *p = find_active(r);
	if (!p)
		return;
	struct session *s = p->ext;
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	cJSON_ArrayForEach(it, env)
	{
		if (!shell_name_ok(it->string)) {
			req_reply_err(r, ST_INVALID, "Invalid environment variable name: %s",
				      it->string);
			dbx_sb_free(&sb);
			return;
		}
		dbx_sb_printf(&sb, "export %s=", it->string);
		shell_quote(&sb, it->valuestring);
		dbx_sb_putc(&sb, '\n');
	}
	int rc = session_write(r, p, sb.data ? sb.data : "", sb.len);
	dbx_sb_free(&sb);
	if (rc < 0)
		return;
	cJSON_ArrayForEach(it, env)
	{
		cJSON *v = cJSON_CreateString(it->valuestring);
		if (cJSON_GetObjectItemCaseSensitive(s->env, it->string))
			cJSON_ReplaceItemInObjectCaseSensitive(s->env, it->string, v);
		else
			cJSON_AddItemToObject(s->env, it->string, v);
	}
	reply_success(r);
}

void sessions_exec_fn(struct req *r)
{
	const char *cmd;
	if (json_get_str(r, req_json(r), "command", true, &cmd) < 0)
		return;
	struct proc *p = find_active(r);
	if (!p)
		return;
	size_t n = strlen(cmd);
	char *line = malloc(n + 2);
	if (!line) {
		req_reply_err(r, ST_INTERNAL, "Out of memory");
		return;
	}
	memcpy(line, cmd, n);
	line[n] = '\n';
	int rc = session_write(r, p, line, n + 1);
	free(line);
	if (rc < 0)
		return;
	proc_log_append(p, "[exec] ", cmd, n);
	/* The official agent's fixed answer: the output only appears in the session's logs. */
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "exitCode", 0);
	cJSON_AddStringToObject(o, "stdout", "");
	cJSON_AddStringToObject(o, "stderr", "");
	cJSON_AddNumberToObject(o, "duration", 0);
	req_reply_ok(r, o);
}

void sessions_cd_fn(struct req *r)
{
	const char *path;
	if (json_get_str(r, req_json(r), "path", true, &path) < 0)
		return;
	struct proc *p = find_active(r);
	if (!p)
		return;
	struct session *s = p->ext;
	struct agent *ag = req_agent(r);
	char cur[PATH_MAX], rel[PATH_MAX];
	const char *input = path;
	char *joined = NULL;
	if (path[0] != '/') {
		/* Relative to the session's recorded cwd, lexically. */
		if (dbx_path_normalize(ag->cfg.workspace, ag->alias, s->cwd, cur, sizeof(cur)) < 0)
			snprintf(cur, sizeof(cur), ".");
		size_t l = strlen(cur) + strlen(path) + 2;
		joined = malloc(l);
		if (!joined) {
			req_reply_err(r, ST_INTERNAL, "Out of memory");
			return;
		}
		snprintf(joined, l, "%s/%s", cur, path);
		input = joined;
	}
	int e = dbx_path_normalize(ag->cfg.workspace, ag->alias, input, rel, sizeof(rel));
	free(joined);
	if (e == -EXDEV) {
		req_reply_err(r, ST_FORBIDDEN, "Path escapes the workspace %s: %s",
			      ag->cfg.workspace, path);
		return;
	}
	if (e < 0) {
		req_reply_err(r, ST_INVALID, "Path too long: %.64s...", path);
		return;
	}
	char *abs = agent_abs(ag, rel);
	if (!abs) {
		req_reply_err(r, ST_INTERNAL, "Out of memory");
		return;
	}
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	dbx_sb_puts(&sb, "cd ");
	shell_quote(&sb, abs);
	dbx_sb_putc(&sb, '\n');
	int rc = session_write(r, p, sb.data, sb.len);
	dbx_sb_free(&sb);
	if (rc < 0) {
		free(abs);
		return;
	}
	proc_log_append(p, "[cd] ", abs, strlen(abs));
	free(s->cwd);
	s->cwd = abs;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "workingDir", proc_json_str(abs, strlen(abs)));
	req_reply_ok(r, o);
}

void sessions_terminate_fn(struct req *r)
{
	struct proc *p = find_or_404(r);
	if (!p)
		return;
	struct session *s = p->ext;
	if (s->terminated) {
		req_reply_err(r, ST_CONFLICT, "Session is not active");
		return;
	}
	int e = proc_signal(p, SIGKILL);
	if (e < 0 && e != -ESRCH) {
		req_reply_err(r, ST_INTERNAL, "Failed to terminate session: %s (os error %d)",
			      strerror(-e), -e);
		return;
	}
	s->terminated = true;
	p->state = PS_KILLED;
	if (s->in_w >= 0) {
		close(s->in_w);
		s->in_w = -1;
	}
	reply_success(r);
}

void sessions_logs_fn(struct req *r)
{
	uint64_t tail_q = 0;
	int has_tail = req_query_u64(r, "tail", &tail_q);
	if (has_tail < 0)
		return;
	int64_t tail = tail_q > INT64_MAX ? INT64_MAX : (int64_t)tail_q;
	struct proc *p = find_or_404(r);
	if (!p)
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sessionId", p->id);
	cJSON *arr = cJSON_AddArrayToObject(o, "logs");
	if (!has_tail || tail > 0)
		for (const struct log_entry *e = proc_log_from(p, has_tail ? tail : 0); e;
		     e = e->next)
			cJSON_AddItemToArray(arr, proc_json_str(e->text, e->len));
	req_reply_ok(r, o);
}
