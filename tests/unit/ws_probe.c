/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ws_probe: drives libdevbox's WebSocket clients (dbx_exec, dbx_watch) against a real agent for
 * tests/integration/test_wsclient_api.py.  Usage: ws_probe URL COMMAND [ARGS...] with the
 * token in $DEVBOX_TOKEN.  Exit status 0 unless the probe itself was misused.
 *
 * Commands (one JSON object on stdout unless said otherwise):
 *   run ARGV...          dbx_exec_run: {"rc","exit","signal","out","err","msg"}
 *   attach ID OFFSET     dbx_exec_attach, then every event until the end:
 *                        {"rc","msg","pid","events":[{"kind","ch","off","len"|"to"}],
 *                         "out","err","exit","signal","closed"}
 *   api                  the calls around one `sh -c 'read x; echo got:$x; exec sleep 100'`: a
 *                        field per check
 *   watch [BOOT SINCE]   JSON lines: {"ev":"hello",...}, {"ev":"event",...}, {"ev":"down"};
 *                        reads stdin lines: "state" prints {"ev":"state","session",
 *                        "connected","reconnects"}; EOF frees the watch, prints {"ev":"end"}
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static dbx_client *cl;

static void put_rc(cJSON *o, int rc)
{
	cJSON_AddNumberToObject(o, "rc", rc);
	cJSON_AddStringToObject(o, "errno", rc < 0 ? dbx_errno_name(-rc) : "");
	cJSON_AddStringToObject(o, "msg", rc < 0 ? dbx_error_last() : "");
}

static void print_json(cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	printf("%s\n", s);
	fflush(stdout);
	free(s);
	cJSON_Delete(o);
}

struct outs {
	struct dbx_strbuf o, e;
};

static int sink_out(void *ud, const void *buf, size_t len)
{
	return dbx_sb_append(&((struct outs *)ud)->o, buf, len);
}

static int sink_err(void *ud, const void *buf, size_t len)
{
	return dbx_sb_append(&((struct outs *)ud)->e, buf, len);
}

static int cmd_run(char **argv)
{
	struct outs outs = {DBX_STRBUF_INIT, DBX_STRBUF_INIT};
	struct dbx_exec_config cfg = {.argv = (const char *const *)argv};
	int code = -100, sig = -100;
	int rc = dbx_exec_run(cl, &cfg, sink_out, sink_err, &outs, &code, &sig);
	cJSON *j = cJSON_CreateObject();
	put_rc(j, rc);
	cJSON_AddNumberToObject(j, "exit", code);
	cJSON_AddNumberToObject(j, "signal", sig);
	cJSON_AddStringToObject(j, "out", outs.o.data ? outs.o.data : "");
	cJSON_AddStringToObject(j, "err", outs.e.data ? outs.e.data : "");
	print_json(j);
	dbx_sb_free(&outs.o);
	dbx_sb_free(&outs.e);
	return 0;
}

static const char *kind_name(enum dbx_exec_event_kind k)
{
	switch (k) {
	case DBX_EXEC_OUTPUT:
		return "output";
	case DBX_EXEC_SKIPPED:
		return "skipped";
	case DBX_EXEC_EXIT:
		return "exit";
	case DBX_EXEC_CLOSED:
		return "closed";
	}
	return "?";
}

static int cmd_attach(const char *id, const char *offset)
{
	dbx_exec *x = NULL;
	cJSON *j = cJSON_CreateObject();
	int rc = dbx_exec_attach(cl, id, strtoull(offset, NULL, 10), &x);
	put_rc(j, rc);
	if (rc == 0) {
		struct dbx_strbuf out[2] = {DBX_STRBUF_INIT, DBX_STRBUF_INIT};
		cJSON *evs = cJSON_AddArrayToObject(j, "events");
		cJSON_AddNumberToObject(j, "pid", dbx_exec_pid(x));
		struct dbx_exec_event ev;
		while (dbx_exec_next(x, &ev, 20000) == 1) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "kind", kind_name(ev.kind));
			cJSON_AddItemToArray(evs, e);
			if (ev.kind == DBX_EXEC_OUTPUT) {
				cJSON_AddNumberToObject(e, "ch", ev.channel);
				cJSON_AddNumberToObject(e, "off", (double)ev.offset);
				cJSON_AddNumberToObject(e, "len", (double)ev.len);
				dbx_sb_append(&out[ev.channel - 1], ev.data, ev.len);
				continue;
			}
			if (ev.kind == DBX_EXEC_SKIPPED) {
				cJSON_AddNumberToObject(e, "ch", ev.channel);
				cJSON_AddNumberToObject(e, "off", (double)ev.offset);
				cJSON_AddNumberToObject(e, "to", (double)ev.to);
				continue;
			}
			if (ev.kind == DBX_EXEC_EXIT) {
				cJSON_AddNumberToObject(j, "exit", ev.exit_code);
				cJSON_AddNumberToObject(j, "signal", ev.signal);
			} else {
				cJSON_AddStringToObject(j, "closed", dbx_errno_name(-ev.error));
				cJSON_AddStringToObject(j, "closed_msg", dbx_error_last());
			}
			break;
		}
		cJSON_AddStringToObject(j, "out", out[0].data ? out[0].data : "");
		cJSON_AddStringToObject(j, "err", out[1].data ? out[1].data : "");
		dbx_sb_free(&out[0]);
		dbx_sb_free(&out[1]);
	}
	print_json(j);
	dbx_exec_free(x);
	return 0;
}

static bool fd_readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, 0) == 1;
}

/* Waits for output containing needle (up to 20 s); true when seen. */
static bool wait_output(dbx_exec *x, const char *needle, struct dbx_strbuf *acc)
{
	struct dbx_exec_event ev;
	while (!strstr(acc->data ? acc->data : "", needle)) {
		if (dbx_exec_next(x, &ev, 20000) != 1 || ev.kind != DBX_EXEC_OUTPUT)
			return false;
		dbx_sb_append(acc, ev.data, ev.len);
	}
	return true;
}

static int cmd_api(void)
{
	static const char *const argv[] = {"sh", "-c", "read x; echo got:$x; exec sleep 100", NULL};
	struct dbx_exec_config cfg = {.argv = argv};
	struct dbx_strbuf acc = DBX_STRBUF_INIT;
	struct dbx_exec_event ev;
	dbx_exec *x = NULL;
	cJSON *j = cJSON_CreateObject();

	int rc = dbx_exec_start(cl, &cfg, &x);
	put_rc(j, rc);
	if (rc < 0)
		goto out;
	cJSON_AddBoolToObject(j, "id_set", strlen(dbx_exec_id(x)) > 0);
	cJSON_AddBoolToObject(j, "pid_set", dbx_exec_pid(x) > 0);
	/* Nothing to say yet: a short wait times out and the fd is not readable. */
	cJSON_AddNumberToObject(j, "next_idle", dbx_exec_next(x, &ev, 50));
	cJSON_AddBoolToObject(j, "fd_idle", fd_readable(dbx_exec_fd(x)));
	cJSON_AddNumberToObject(j, "write", dbx_exec_write_stdin(x, "hello\n", 6));
	/* Once output is pending the fd is readable. */
	struct pollfd p = {.fd = dbx_exec_fd(x), .events = POLLIN};
	cJSON_AddBoolToObject(j, "fd_ready", poll(&p, 1, 20000) == 1);
	cJSON_AddBoolToObject(j, "got", wait_output(x, "got:hello\n", &acc));
	cJSON_AddNumberToObject(j, "resize_bad", dbx_exec_resize(x, 0, 80));
	cJSON_AddNumberToObject(j, "signal_bad", dbx_exec_signal(x, 0));
	rc = dbx_exec_signal(x, SIGTERM);
	cJSON_AddNumberToObject(j, "signal", rc);
	cJSON_AddStringToObject(j, "signal_msg", rc < 0 ? dbx_error_last() : "");
	int n = dbx_exec_next(x, &ev, 20000);
	cJSON_AddNumberToObject(j, "next_n", n);
	cJSON_AddNumberToObject(j, "next_kind", n == 1 ? (int)ev.kind : -1);
	cJSON_AddNumberToObject(j, "next_sig", n == 1 ? ev.signal : -1);
	cJSON_AddBoolToObject(j, "exit_by_sigterm",
			      n == 1 && ev.kind == DBX_EXEC_EXIT && ev.signal == SIGTERM &&
				      ev.exit_code == -1);
	/* The end is sticky: returned again, and the fd stays readable. */
	n = dbx_exec_next(x, &ev, 0);
	cJSON_AddBoolToObject(j, "exit_again", n == 1 && ev.kind == DBX_EXEC_EXIT);
	cJSON_AddBoolToObject(j, "fd_after_exit", fd_readable(dbx_exec_fd(x)));
out:
	print_json(j);
	dbx_sb_free(&acc);
	dbx_exec_free(x);
	return 0;
}

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void locked_print(cJSON *o)
{
	pthread_mutex_lock(&out_mu);
	print_json(o);
	pthread_mutex_unlock(&out_mu);
}

static void w_hello(void *ud, const struct dbx_watch_hello *h)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "ev", "hello");
	cJSON_AddStringToObject(o, "boot", h->boot);
	cJSON_AddNumberToObject(o, "seq", (double)h->seq);
	cJSON_AddStringToObject(o, "session", h->session);
	cJSON_AddBoolToObject(o, "resumed", h->resumed);
	locked_print(o);
}

static void w_event(void *ud, const struct dbx_event *ev)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "ev", "event");
	cJSON_AddNumberToObject(o, "seq", (double)ev->seq);
	cJSON_AddStringToObject(o, "kind", dbx_event_kind_name(ev->kind));
	cJSON_AddStringToObject(o, "path", ev->path);
	if (ev->to)
		cJSON_AddStringToObject(o, "to", ev->to);
	cJSON_AddBoolToObject(o, "has_attr", ev->has_attr);
	if (ev->has_attr) {
		cJSON_AddNumberToObject(o, "size", (double)ev->attr.size);
		cJSON_AddNumberToObject(o, "mode", ev->attr.mode);
		cJSON_AddNumberToObject(o, "ino", (double)ev->attr.ino);
	}
	locked_print(o);
}

static void w_down(void *ud, int err)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "ev", "down");
	cJSON_AddStringToObject(o, "errno", dbx_errno_name(-err));
	locked_print(o);
}

static int cmd_watch(const char *boot, const char *since)
{
	struct dbx_watch_config cfg = {.boot = boot,
				       .since = since ? strtoull(since, NULL, 10) : 0,
				       .backoff_max_ms = 500};
	const struct dbx_watch_callbacks cb = {.hello = w_hello, .event = w_event, .down = w_down};
	dbx_watch *w = NULL;
	int rc = dbx_watch_start(cl, &cfg, &cb, NULL, &w);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "ev", "started");
	put_rc(o, rc);
	locked_print(o);
	if (rc < 0)
		return 0;
	char line[64];
	while (fgets(line, sizeof(line), stdin)) {
		if (strncmp(line, "state", 5))
			continue;
		char session[64];
		dbx_watch_session(w, session);
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ev", "state");
		cJSON_AddStringToObject(o, "session", session);
		cJSON_AddBoolToObject(o, "connected", dbx_watch_connected(w));
		cJSON_AddNumberToObject(o, "reconnects", (double)dbx_watch_reconnects(w));
		locked_print(o);
	}
	dbx_watch_free(w);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "ev", "end");
	locked_print(o);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: ws_probe URL COMMAND [ARGS...]\n");
		return 2;
	}
	struct dbx_client_config cfg = {.url = argv[1], .token = getenv("DEVBOX_TOKEN")};
	if (dbx_client_new(&cfg, &cl) < 0) {
		fprintf(stderr, "ws_probe: %s\n", dbx_error_last());
		return 2;
	}
	const char *cmd = argv[2];
	int r = 2;
	if (!strcmp(cmd, "run") && argc > 3)
		r = cmd_run(argv + 3);
	else if (!strcmp(cmd, "attach") && argc == 5)
		r = cmd_attach(argv[3], argv[4]);
	else if (!strcmp(cmd, "api"))
		r = cmd_api();
	else if (!strcmp(cmd, "watch"))
		r = cmd_watch(argc > 4 ? argv[3] : NULL, argc > 4 ? argv[4] : NULL);
	else
		fprintf(stderr, "ws_probe: bad command\n");
	dbx_client_free(cl);
	return r;
}
