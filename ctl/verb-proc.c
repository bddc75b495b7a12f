/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl process verbs: ps logs kill ports — the agent's compat processes and /exec/v1
 * execs, merged by libdevbox (dbx_process_*), and its listening ports.  Main thread only.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Only BOX (and -o, --help) for ps and ports. */
static int box_only_args(struct ctl_global *g, const char *verb, const char *help, int argc,
			 char **argv, const char **ret_box)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"output", required_argument, NULL, 'o'},
		{0},
	};
	int opt, code;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:ho:", opts, NULL)) != -1) {
		switch (opt) {
		case 'o':
			if ((code = ctl_set_output(g, verb, optarg)))
				return code;
			break;
		case 'h':
			fputs(help, stdout);
			return -1;
		default:
			return ctl_bad_option(verb, opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error(verb, "missing BOX");
	if (optind + 1 < argc)
		return ctl_usage_error(verb, "unexpected argument '%s'", argv[optind + 1]);
	*ret_box = argv[optind];
	return 0;
}

/* ---- ps ----------------------------------------------------------------------------------- */

static const char ps_help[] =
	"Usage: devboxctl ps [OPTIONS] BOX\n"
	"\n"
	"List the processes started through the agent: background processes of the compat API\n"
	"and execs (devboxctl exec), running or recently finished.\n"
	"\n"
	"Options:\n"
	"  -o, --output FMT   table (default) or json\n"
	"  -h, --help         this help\n";

static const char *sig_name(int sig, char *buf, size_t len)
{
	const char *a = sig > 0 ? sigabbrev_np(sig) : NULL;
	if (a)
		snprintf(buf, len, "SIG%s", a);
	else
		snprintf(buf, len, "%d", sig);
	return buf;
}

int ctl_cmd_ps(struct ctl_global *g, int argc, char **argv)
{
	const char *box;
	dbx_client *c = NULL;
	struct dbx_process *list = NULL;
	size_t n = 0;
	int code = box_only_args(g, "ps", ps_help, argc, argv, &box);
	if (code)
		return code < 0 ? 0 : code;
	code = ctl_connect(g, box, &c);
	if (code)
		return code;
	int r = dbx_process_list(c, &list, &n);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++) {
			const struct dbx_process *p = &list[i];
			char sb[32];
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "id", p->id);
			cJSON_AddNumberToObject(o, "pid", p->pid);
			cJSON_AddStringToObject(o, "kind", p->is_exec ? "exec" : "process");
			cJSON_AddStringToObject(o, "status", p->status);
			cJSON_AddBoolToObject(o, "running", p->running);
			if (p->running || p->signal)
				cJSON_AddNullToObject(o, "exitCode");
			else
				cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
			if (p->signal)
				cJSON_AddStringToObject(o, "signal",
							sig_name(p->signal, sb, sizeof(sb)));
			else
				cJSON_AddNullToObject(o, "signal");
			cJSON_AddNumberToObject(o, "startMs", (double)p->start_ms);
			cJSON_AddStringToObject(o, "command", p->command);
			cJSON_AddItemToArray(arr, o);
		}
		ctl_print_json(arr);
		goto out;
	}
	struct ctl_table *t =
		ctl_table_new(7, "ID", "PID", "KIND", "STATUS", "EXIT", "STARTED", "COMMAND");
	for (size_t i = 0; i < n; i++) {
		const struct dbx_process *p = &list[i];
		char pid[16], ex[32], age[32];
		snprintf(pid, sizeof(pid), "%d", (int)p->pid);
		if (p->running)
			snprintf(ex, sizeof(ex), "-");
		else if (p->signal)
			sig_name(p->signal, ex, sizeof(ex));
		else
			snprintf(ex, sizeof(ex), "%d", p->exit_code);
		ctl_table_add(t, p->id, pid, p->is_exec ? "exec" : "process", p->status, ex,
			      ctl_fmt_age(p->start_ms, age, sizeof(age)), p->command);
	}
	ctl_table_print(t, stdout);
out:
	dbx_process_list_free(list, n);
	dbx_client_free(c);
	return code;
}

/* ---- logs --------------------------------------------------------------------------------- */

static int out_sink(void *ud, const void *buf, size_t len)
{
	return fwrite(buf, 1, len, stdout) == len ? 0 : -EPIPE;
}

static const char logs_help[] =
	"Usage: devboxctl logs [OPTIONS] BOX ID\n"
	"\n"
	"Print the output kept by the agent for a process or exec (see devboxctl ps), as it\n"
	"is.  For a running exec, what it has printed so far (until it is quiet for a second).\n"
	"\n"
	"Options:\n"
	"  -h, --help         this help\n";

int ctl_cmd_logs(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	dbx_client *c = NULL;
	int code, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:o:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'o':
			return ctl_no_output("logs");
		case 'h':
			fputs(logs_help, stdout);
			return 0;
		default:
			return ctl_bad_option("logs", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("logs", "missing BOX");
	if (optind + 2 != argc)
		return ctl_usage_error("logs", optind + 1 >= argc ? "missing ID"
								  : "expected exactly one ID");
	code = ctl_connect(g, argv[optind], &c);
	if (code)
		return code;
	int r = dbx_process_logs(c, argv[optind + 1], out_sink, NULL);
	fflush(stdout);
	if (r < 0 && r != -EPIPE)
		code = ctl_fail(NULL, r);
	else if (r < 0)
		code = CTL_EXIT_FAIL;
	dbx_client_free(c);
	return code;
}

/* ---- kill --------------------------------------------------------------------------------- */

/* "TERM", "SIGTERM", "sigterm", "15", "RTMIN+1" → signal number, 0 if unknown. */
static int parse_signal(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s && !*end)
		return v > 0 && v <= SIGRTMAX ? (int)v : 0;
	if (!strncasecmp(s, "SIG", 3))
		s += 3;
	if (!strncasecmp(s, "RTMIN", 5) || !strncasecmp(s, "RTMAX", 5)) {
		int base = (s[3] == 'I' || s[3] == 'i') ? SIGRTMIN : SIGRTMAX;
		long off = 0;
		if (s[5]) {
			off = strtol(s + 5, &end, 10);
			if (*end || (s[5] != '+' && s[5] != '-'))
				return 0;
		}
		long sig = base + off;
		return sig >= SIGRTMIN && sig <= SIGRTMAX ? (int)sig : 0;
	}
	for (int sig = 1; sig < SIGRTMIN; sig++) {
		const char *a = sigabbrev_np(sig);
		if (a && !strcasecmp(a, s))
			return sig;
	}
	return 0;
}

static const char kill_help[] =
	"Usage: devboxctl kill [OPTIONS] BOX ID...\n"
	"\n"
	"Send a signal to processes or execs (see devboxctl ps).  An exec's whole process group\n"
	"is signalled; a compat process accepts only TERM, INT, HUP and KILL.\n"
	"\n"
	"Options:\n"
	"  -s, --signal SIG   signal name or number (default TERM)\n"
	"  -h, --help         this help\n";

int ctl_cmd_kill(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"signal", required_argument, NULL, 's'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	dbx_client *c = NULL;
	int sig = SIGTERM, code, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:s:o:h", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			sig = parse_signal(optarg);
			if (!sig)
				return ctl_usage_error("kill", "unknown signal '%s'", optarg);
			break;
		case 'o':
			return ctl_no_output("kill");
		case 'h':
			fputs(kill_help, stdout);
			return 0;
		default:
			return ctl_bad_option("kill", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("kill", "missing BOX");
	if (optind + 1 >= argc)
		return ctl_usage_error("kill", "missing ID");
	code = ctl_connect(g, argv[optind], &c);
	if (code)
		return code;
	for (int i = optind + 1; i < argc; i++) {
		int r = dbx_process_kill(c, argv[i], sig);
		if (r < 0) {
			code = ctl_fail(NULL, r);
			if (code == CTL_EXIT_TRANSPORT)
				break;
		}
	}
	dbx_client_free(c);
	return code;
}

/* ---- ports -------------------------------------------------------------------------------- */

static const char ports_help[] =
	"Usage: devboxctl ports [OPTIONS] BOX\n"
	"\n"
	"List the TCP ports listening on all addresses inside a devbox (not 22, not the agent's).\n"
	"A local box shares this machine's network, so for a local box (or an agent run by\n"
	"hand) these are all such ports of this machine, not only the box's own.\n"
	"\n"
	"Options:\n"
	"  -o, --output FMT   table (default) or json: an array of numbers\n"
	"  -h, --help         this help\n";

static int int_cmp(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

int ctl_cmd_ports(struct ctl_global *g, int argc, char **argv)
{
	const char *box;
	dbx_client *c = NULL;
	int *ports = NULL;
	size_t n = 0;
	int code = box_only_args(g, "ports", ports_help, argc, argv, &box);
	if (code)
		return code < 0 ? 0 : code;
	code = ctl_connect(g, box, &c);
	if (code)
		return code;
	int r = dbx_ports_list(c, &ports, &n);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	qsort(ports, n, sizeof(*ports), int_cmp);
	if (g->output == CTL_OUT_JSON) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++)
			cJSON_AddItemToArray(arr, cJSON_CreateNumber(ports[i]));
		ctl_print_json(arr);
	} else {
		struct ctl_table *t = ctl_table_new(1, "PORT");
		for (size_t i = 0; i < n; i++) {
			char p[16];
			snprintf(p, sizeof(p), "%d", ports[i]);
			ctl_table_add(t, p);
		}
		ctl_table_print(t, stdout);
	}
out:
	free(ports);
	dbx_client_free(c);
	return code;
}
