/* SPDX-License-Identifier: Apache-2.0 */
/*
 * compat: processes and ports — the compat API's /api/v1/process routes and /api/v1/ports merged
 * with the execs of /exec/v1 (ps, kill, logs).  Thread-safe as the client is; no state.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXEC_LOGS_QUIET_MS 1000 /* a running exec's logs end after this long without output */

void dbx_process_list_free(struct dbx_process *list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++) {
		free(list[i].id);
		free(list[i].command);
		free(list[i].status);
	}
	free(list);
}

static int get_json(dbx_client *c, const char *path, const char *query, const char *op,
		    const char *err_path, cJSON **ret)
{
	struct dbx__req rq = {
		.method = "GET",
		.path = path,
		.query = query,
		.idempotent = true,
		.op = op,
		.err_path = err_path,
	};
	return dbx__request_json(c, &rq, ret);
}

int dbx_process_list(dbx_client *c, struct dbx_process **ret_list, size_t *ret_n)
{
	struct dbx_process *list = NULL;
	size_t n = 0;
	cJSON *j = NULL;
	int r;

	*ret_list = NULL;
	*ret_n = 0;
	r = get_json(c, "/api/v1/process/list", NULL, "ps", NULL, &j);
	if (r < 0)
		goto fail;
	r = dbx__processes_parse_compat(j, &list, &n);
	cJSON_Delete(j);
	j = NULL;
	if (r < 0)
		goto fail;
	r = get_json(c, "/exec/v1/list", NULL, "ps", NULL, &j);
	if (r < 0)
		goto fail;
	r = dbx__processes_parse_exec(j, &list, &n);
	cJSON_Delete(j);
	if (r < 0)
		goto fail;
	if (!list) {
		list = calloc(1, sizeof(*list));
		if (!list)
			return dbx__error(ENOMEM, "ps: out of memory");
	}
	*ret_list = list;
	*ret_n = n;
	return 0;
fail:
	dbx_process_list_free(list, n);
	return r;
}

/* 1 if id names an exec of /exec/v1, 0 if not, -errno. */
static int is_exec(dbx_client *c, const char *id, const char *op)
{
	struct dbx_process *list = NULL;
	size_t n = 0;
	cJSON *j = NULL;
	int r = get_json(c, "/exec/v1/list", NULL, op, id, &j);
	if (r < 0)
		return r;
	r = dbx__processes_parse_exec(j, &list, &n);
	cJSON_Delete(j);
	if (r == 0)
		for (size_t i = 0; i < n && r == 0; i++)
			if (!strcmp(list[i].id, id))
				r = 1;
	dbx_process_list_free(list, n);
	return r;
}

static bool valid_id(const char *id)
{
	/* Ids are short tokens from the official alphabet; anything else cannot be one and
	 * must not be spliced into a route path. */
	if (!id || !*id || strlen(id) > 64)
		return false;
	for (const char *p = id; *p; p++)
		if (!strchr("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", *p))
			return false;
	return true;
}

int dbx_process_kill(dbx_client *c, const char *id, int sig)
{
	char name[32], path[128];
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	int r;

	if (!valid_id(id))
		return dbx__error(EINVAL, "kill %s: not a process id", id ? id : "(null)");
	if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(name, sizeof(name), "SIGRTMIN+%d", sig - SIGRTMIN);
	else if (sig > 0 && sigabbrev_np(sig))
		snprintf(name, sizeof(name), "SIG%s", sigabbrev_np(sig));
	else
		return dbx__error(EINVAL, "kill %s: invalid signal %d", id, sig);

	r = is_exec(c, id, "kill");
	if (r < 0)
		return r;
	if (r == 1) {
		r = dbx__query_add(&q, "id", id);
		if (r == 0)
			r = dbx__query_add(&q, "signal", name);
		if (r == 0) {
			struct dbx__req rq = {
				.method = "POST",
				.path = "/exec/v1/kill",
				.query = q.data,
				.op = "kill",
				.err_path = id,
			};
			r = dbx__request_json(c, &rq, NULL);
		}
		dbx_sb_free(&q);
		return r;
	}
	/* The compat API knows only these; it would turn any other name into SIGKILL. */
	if (sig != SIGTERM && sig != SIGINT && sig != SIGHUP && sig != SIGKILL)
		return dbx__error(EINVAL,
				  "kill %s: a compat process can only be sent SIGTERM, "
				  "SIGINT, SIGHUP or SIGKILL",
				  id);
	snprintf(path, sizeof(path), "/api/v1/process/%s/kill", id);
	r = dbx__query_add(&q, "signal", name);
	if (r == 0) {
		struct dbx__req rq = {
			.method = "POST",
			.path = path,
			.query = q.data,
			.content_type = "application/json",
			.op = "kill",
			.err_path = id,
		};
		r = dbx__request_json(c, &rq, NULL);
		if (r == -EEXIST) /* 1409: "Process is not running" */
			r = dbx__error(ESRCH, "kill %s: the process is not running", id);
	}
	dbx_sb_free(&q);
	return r;
}

/* Strips the compat log prefix ("[stdout] ", "[stderr] ") of one entry. */
static const char *log_text(const char *s)
{
	if (!strncmp(s, "[stdout] ", 9) || !strncmp(s, "[stderr] ", 9))
		return s + 9;
	return s;
}

static int exec_logs(dbx_client *c, const char *id, dbx_sink_fn sink, void *ud)
{
	dbx_exec *e = NULL;
	struct dbx_exec_event ev;
	int r = dbx_exec_attach(c, id, 0, &e);
	if (r < 0)
		return r;
	for (;;) {
		r = dbx_exec_next(e, &ev, EXEC_LOGS_QUIET_MS);
		if (r <= 0)
			break; /* 0: quiet for a while, the retained output is delivered */
		if (ev.kind == DBX_EXEC_OUTPUT) {
			r = sink(ud, ev.data, ev.len);
			if (r < 0)
				break;
		} else if (ev.kind == DBX_EXEC_EXIT) {
			r = 0;
			break;
		} else if (ev.kind == DBX_EXEC_CLOSED) {
			r = ev.error < 0
				    ? dbx__error(-ev.error, "logs %s: the connection ended: %s", id,
						 strerror(-ev.error))
				    : 0;
			break;
		}
	}
	dbx_exec_free(e);
	return r < 0 ? r : 0;
}

int dbx_process_logs(dbx_client *c, const char *id, dbx_sink_fn sink, void *ud)
{
	char path[128];
	cJSON *j = NULL;
	const cJSON *logs, *e;
	int r;

	if (!valid_id(id))
		return dbx__error(EINVAL, "logs %s: not a process id", id ? id : "(null)");
	r = is_exec(c, id, "logs");
	if (r < 0)
		return r;
	if (r == 1)
		return exec_logs(c, id, sink, ud);
	snprintf(path, sizeof(path), "/api/v1/process/%s/logs", id);
	r = get_json(c, path, NULL, "logs", id, &j);
	if (r < 0)
		return r;
	logs = cJSON_GetObjectItemCaseSensitive(j, "logs");
	if (!cJSON_IsArray(logs)) {
		r = dbx__error(EPROTO, "logs %s: the agent's reply has no logs array", id);
		goto out;
	}
	cJSON_ArrayForEach(e, logs)
	{
		if (!cJSON_IsString(e))
			continue;
		const char *t = log_text(e->valuestring);
		r = sink(ud, t, strlen(t));
		if (r < 0)
			goto out;
	}
out:
	cJSON_Delete(j);
	return r;
}

int dbx_ports_list(dbx_client *c, int **ret_ports, size_t *ret_n)
{
	cJSON *j = NULL;
	*ret_ports = NULL;
	*ret_n = 0;
	int r = get_json(c, "/api/v1/ports", NULL, "ports", NULL, &j);
	if (r < 0)
		return r;
	r = dbx__ports_parse(j, ret_ports, ret_n);
	cJSON_Delete(j);
	return r;
}
