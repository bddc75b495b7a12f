/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl lifecycle verbs: create list get start pause restart shutdown delete monitor
 * templates.  Each opens the configured provider (ctl_provider), calls libdevbox and prints a
 * table (default) or one JSON document (-o json, global or after the verb).  Main thread only.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct verb_help {
	const char *name;
	const char *args;
	const char *text;
};

#define OPT_OUTPUT "  -o, --output FMT      table (default) or json\n"
#define OPT_HELP   "  -h, --help            this help\n"
#define OPT_WAIT                                                                                   \
	"      --no-wait         sealos: return once the control plane accepted the request;\n"    \
	"                        local: still waits until the new agent listens (its port is\n"    \
	"                        known only then), skips only the final readiness check\n"         \
	"      --wait-timeout SECONDS  how long to wait until Running and answering (default\n"    \
	"                        180; --timeout after the command is the same option)\n"

static const struct verb_help helps[] = {
	{"create", "[OPTIONS] NAME",
	 "Create a devbox and wait until it is Running and its agent answers.\n"
	 "\n"
	 "Options:\n"
	 "      --runtime R       sealos: runtime template (see `devboxctl templates`)\n"
	 "      --cpu N           sealos: cores (0.1 0.2 0.5 1 2 4 8 16; default 1)\n"
	 "      --memory GIB      sealos: memory in GiB (0.1 0.5 1 2 4 8 16 32; default 2)\n"
	 "      --port N          sealos: expose port N over HTTP (repeatable)\n"
	 "      --env K=V         environment of the box's processes (repeatable; local: kept\n"
	 "                        for every agent the box gets)\n" OPT_WAIT OPT_OUTPUT OPT_HELP},
	{"list", "[OPTIONS]",
	 "List devboxes with their status.  -o json also prints each agent's token.\n"
	 "\n"
	 "Options:\n" OPT_OUTPUT OPT_HELP},
	{"get", "[OPTIONS] NAME",
	 "Show one devbox: status (Error with the reason when its agent died), agent URL,\n"
	 "workspace, resources.  -o json also prints the agent token.\n"
	 "\n"
	 "Options:\n" OPT_OUTPUT OPT_HELP},
	{"start", "[OPTIONS] NAME...",
	 "Start paused or stopped devboxes (a box in Error gets a new agent) and wait until\n"
	 "they are Running and their agents answer.  Prints \"started NAME\" for each.\n"
	 "\n"
	 "Options:\n" OPT_WAIT OPT_HELP},
	{"pause", "[OPTIONS] NAME...",
	 "Pause devboxes: every process is frozen, the workspace is kept.\n"
	 "\n"
	 "Options:\n" OPT_HELP},
	{"restart", "[OPTIONS] NAME...",
	 "Restart devboxes: processes end, a new agent starts; then wait until they are\n"
	 "Running and their agents answer.\n"
	 "\n"
	 "Options:\n" OPT_WAIT OPT_HELP},
	{"shutdown", "[OPTIONS] NAME...",
	 "Stop devboxes: processes end, the workspace is kept.\n"
	 "\n"
	 "Options:\n" OPT_HELP},
	{"delete", "[OPTIONS] NAME...",
	 "Delete devboxes, their processes and their workspace.\n"
	 "\n"
	 "Options:\n" OPT_HELP},
	{"monitor", "[OPTIONS] NAME",
	 "CPU and memory use.  local: one sample of the agent and its descendants measured\n"
	 "over 200 ms; sealos: the control plane's series.\n"
	 "\n"
	 "Options:\n"
	 "      --since SECONDS   sealos: series for the last SECONDS (default 3600)\n" OPT_OUTPUT
		 OPT_HELP},
	{"templates", "[OPTIONS]",
	 "List the runtimes a devbox can be created from.\n"
	 "\n"
	 "Options:\n" OPT_OUTPUT OPT_HELP},
};

static void help(const char *verb, FILE *out)
{
	for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
		if (!strcmp(helps[i].name, verb))
			fprintf(out, "Usage: devboxctl %s %s\n\n%s", verb, helps[i].args,
				helps[i].text);
}

static int parse_seconds(const char *verb, const char *opt, const char *arg, int *ret_ms)
{
	char *end;
	errno = 0;
	long v = strtol(arg, &end, 10);
	if (errno || *end || v <= 0 || v > 86400)
		return ctl_usage_error(verb, "%s: '%s' is not a number of seconds (1-86400)", opt,
				       arg);
	*ret_ms = (int)v * 1000;
	return 0;
}

/* ---- formatting ------------------------------------------------------------------------ */

static cJSON *info_json(const struct dbx_box_info *i)
{
	cJSON *o = cJSON_CreateObject(), *ports;
	if (!o)
		abort();
	cJSON_AddStringToObject(o, "name", i->name);
	cJSON_AddStringToObject(o, "status", i->status ? i->status : "Unknown");
	if (i->reason)
		cJSON_AddStringToObject(o, "reason", i->reason);
	else
		cJSON_AddNullToObject(o, "reason");
	if (i->runtime)
		cJSON_AddStringToObject(o, "runtime", i->runtime);
	else
		cJSON_AddNullToObject(o, "runtime");
	cJSON_AddNumberToObject(o, "cpu", i->cpu);
	cJSON_AddNumberToObject(o, "memoryGiB", i->memory_gib);
	if (i->agent_url)
		cJSON_AddStringToObject(o, "agentUrl", i->agent_url);
	else
		cJSON_AddNullToObject(o, "agentUrl");
	if (i->agent_token)
		cJSON_AddStringToObject(o, "token", i->agent_token);
	else
		cJSON_AddNullToObject(o, "token");
	if (i->workspace)
		cJSON_AddStringToObject(o, "workspace", i->workspace);
	else
		cJSON_AddNullToObject(o, "workspace");
	cJSON_AddNumberToObject(o, "agentPid", i->agent_pid);
	cJSON_AddNumberToObject(o, "createdMs", (double)i->created_ms);
	ports = cJSON_AddArrayToObject(o, "ports");
	for (size_t k = 0; ports && k < i->n_ports; k++) {
		cJSON *p = cJSON_CreateObject();
		cJSON_AddNumberToObject(p, "number", i->ports[k].number);
		cJSON_AddStringToObject(p, "protocol",
					i->ports[k].protocol ? i->ports[k].protocol : "HTTP");
		if (i->ports[k].public_url)
			cJSON_AddStringToObject(p, "publicUrl", i->ports[k].public_url);
		else
			cJSON_AddNullToObject(p, "publicUrl");
		cJSON_AddItemToArray(ports, p);
	}
	return o;
}

static const char *fmt_num(double v, const char *unit, char *buf, size_t len)
{
	if (v <= 0)
		return "-";
	snprintf(buf, len, "%g%s", v, unit);
	return buf;
}

static void print_infos(struct ctl_global *g, struct dbx_box_info *const *v, size_t n)
{
	struct ctl_table *t =
		ctl_table_new(7, "NAME", "STATUS", "RUNTIME", "CPU", "MEMORY", "CREATED", "AGENT");
	for (size_t i = 0; i < n; i++) {
		char cpu[32], mem[32], age[32];
		ctl_table_add(t, v[i]->name, v[i]->status, v[i]->runtime,
			      fmt_num(v[i]->cpu, "", cpu, sizeof(cpu)),
			      fmt_num(v[i]->memory_gib, " GiB", mem, sizeof(mem)),
			      ctl_fmt_age(v[i]->created_ms, age, sizeof(age)), v[i]->agent_url);
	}
	ctl_table_print(t, stdout);
	(void)g;
}

static void print_info_detail(const struct dbx_box_info *i)
{
	char buf[64], age[32];
	printf("Name:       %s\n", i->name);
	printf("Status:     %s\n", i->status ? i->status : "Unknown");
	if (i->reason)
		printf("Reason:     %s\n", i->reason);
	printf("Runtime:    %s\n", i->runtime ? i->runtime : "-");
	printf("CPU:        %s\n", fmt_num(i->cpu, " cores", buf, sizeof(buf)));
	printf("Memory:     %s\n", fmt_num(i->memory_gib, " GiB", buf, sizeof(buf)));
	printf("Agent:      %s\n", i->agent_url ? i->agent_url : "-");
	if (i->agent_pid)
		printf("Agent pid:  %d\n", (int)i->agent_pid);
	printf("Workspace:  %s\n", i->workspace ? i->workspace : "-");
	if (i->created_ms > 0)
		printf("Created:    %s\n", ctl_fmt_age(i->created_ms, age, sizeof(age)));
	for (size_t k = 0; k < i->n_ports; k++)
		printf("Port:       %d/%s%s%s\n", i->ports[k].number,
		       i->ports[k].protocol ? i->ports[k].protocol : "HTTP",
		       i->ports[k].public_url ? " " : "",
		       i->ports[k].public_url ? i->ports[k].public_url : "");
	printf("Token:      %s\n", i->agent_token ? "(hidden; -o json shows it)" : "-");
	fflush(stdout);
}

/* ---- verbs ----------------------------------------------------------------------------- */

enum { O_RUNTIME = 256, O_CPU, O_MEMORY, O_PORT, O_ENV, O_NO_WAIT, O_WAIT_TIMEOUT, O_SINCE };

int ctl_cmd_create(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"runtime", required_argument, NULL, O_RUNTIME},
		{"cpu", required_argument, NULL, O_CPU},
		{"memory", required_argument, NULL, O_MEMORY},
		{"port", required_argument, NULL, O_PORT},
		{"env", required_argument, NULL, O_ENV},
		{"no-wait", no_argument, NULL, O_NO_WAIT},
		{"wait-timeout", required_argument, NULL, O_WAIT_TIMEOUT},
		{"timeout", required_argument, NULL, O_WAIT_TIMEOUT},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct dbx_box_spec spec = {0};
	int *ports = calloc((size_t)argc + 1, sizeof(*ports));
	const char **env = calloc((size_t)argc + 1, sizeof(*env));
	size_t nenv = 0;
	dbx_provider *p = NULL;
	struct dbx_box_info *info = NULL;
	int c, code = 0, r;
	char *end;

	if (!ports || !env)
		abort();
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
		switch (c) {
		case O_RUNTIME:
			spec.runtime = optarg;
			break;
		case O_CPU:
		case O_MEMORY: {
			errno = 0;
			double v = strtod(optarg, &end);
			if (errno || *end || !(v > 0) || !isfinite(v)) {
				code = ctl_usage_error("create",
						       "--%s: '%s' is not a positive number",
						       c == O_CPU ? "cpu" : "memory", optarg);
				goto out;
			}
			if (c == O_CPU)
				spec.cpu = v;
			else
				spec.memory_gib = v;
			break;
		}
		case O_PORT: {
			errno = 0;
			long v = strtol(optarg, &end, 10);
			if (errno || *end || v < 1 || v > 65535) {
				code = ctl_usage_error(
					"create", "--port: '%s' is not a port (1-65535)", optarg);
				goto out;
			}
			ports[spec.n_ports++] = (int)v;
			break;
		}
		case O_ENV:
			if (!strchr(optarg, '=') || optarg[0] == '=') {
				code = ctl_usage_error("create", "--env: '%s' is not NAME=VALUE",
						       optarg);
				goto out;
			}
			env[nenv++] = optarg;
			break;
		case O_NO_WAIT:
			spec.no_wait = true;
			break;
		case O_WAIT_TIMEOUT:
			if ((code = parse_seconds("create", argv[optind - 1], optarg,
						  &spec.wait_timeout_ms)))
				goto out;
			break;
		case 'o':
			if ((code = ctl_set_output(g, "create", optarg)))
				goto out;
			break;
		case 'h':
			help("create", stdout);
			goto out;
		default:
			code = ctl_bad_option("create", c, argv);
			goto out;
		}
	}
	if (optind != argc - 1) {
		code = ctl_usage_error("create", optind >= argc ? "a NAME is required"
								: "exactly one NAME is expected");
		goto out;
	}
	spec.name = argv[optind];
	spec.ports = ports;
	spec.env = nenv ? env : NULL;
	code = ctl_provider(g, &p);
	if (code)
		goto out;
	if (!g->quiet && !spec.no_wait)
		fprintf(stderr, "Creating %s and waiting until it is ready...\n", spec.name);
	r = dbx_box_create(p, &spec, &info);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON)
		ctl_print_json(info_json(info));
	else
		print_infos(g, &info, 1);
out:
	dbx_box_info_free(info);
	dbx_provider_free(p);
	free(ports);
	free(env);
	return code;
}

/* Options of the verbs that only take -o (and --help); returns 0 or the exit status, with
 * *done set when --help was printed. */
static int simple_opts(const char *verb, struct ctl_global *g, int argc, char **argv, bool *done)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c, code;
	*done = false;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			if ((code = ctl_set_output(g, verb, optarg)))
				return code;
			break;
		case 'h':
			help(verb, stdout);
			*done = true;
			return 0;
		default:
			return ctl_bad_option(verb, c, argv);
		}
	}
	return 0;
}

int ctl_cmd_list(struct ctl_global *g, int argc, char **argv)
{
	struct dbx_box_info **v = NULL;
	dbx_provider *p = NULL;
	size_t n = 0;
	bool done;
	int code = simple_opts("list", g, argc, argv, &done), r;

	if (code || done)
		return code;
	if (optind != argc)
		return ctl_usage_error("list", "unexpected argument '%s'", argv[optind]);
	code = ctl_provider(g, &p);
	if (code)
		return code;
	r = dbx_box_list(p, &v, &n);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON) {
		cJSON *a = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++)
			cJSON_AddItemToArray(a, info_json(v[i]));
		ctl_print_json(a);
	} else {
		print_infos(g, v, n);
	}
out:
	dbx_box_list_free(v, n);
	dbx_provider_free(p);
	return code;
}

int ctl_cmd_get(struct ctl_global *g, int argc, char **argv)
{
	struct dbx_box_info *info = NULL;
	dbx_provider *p = NULL;
	bool done;
	int code = simple_opts("get", g, argc, argv, &done), r;

	if (code || done)
		return code;
	if (optind != argc - 1)
		return ctl_usage_error("get", optind >= argc ? "a NAME is required"
							     : "exactly one NAME is expected");
	code = ctl_provider(g, &p);
	if (code)
		return code;
	r = dbx_box_get(p, argv[optind], &info);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON)
		ctl_print_json(info_json(info));
	else
		print_info_detail(info);
out:
	dbx_box_info_free(info);
	dbx_provider_free(p);
	return code;
}

enum lverb { LV_START, LV_PAUSE, LV_RESTART, LV_SHUTDOWN, LV_DELETE };

static int multi(struct ctl_global *g, int argc, char **argv, enum lverb v)
{
	static const struct option opts[] = {
		{"no-wait", no_argument, NULL, O_NO_WAIT},
		{"wait-timeout", required_argument, NULL, O_WAIT_TIMEOUT},
		{"timeout", required_argument, NULL, O_WAIT_TIMEOUT},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	static const char *const past[] = {"started", "paused", "restarted", "stopped", "deleted"};
	const char *verb = argv[0];
	bool can_wait = v == LV_START || v == LV_RESTART, wait = can_wait;
	int timeout_ms = 0, c, code = 0;
	dbx_provider *p = NULL;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
		switch (c) {
		case O_NO_WAIT:
		case O_WAIT_TIMEOUT:
			if (!can_wait)
				return ctl_usage_error(verb, "unknown option '%.*s'",
						       (int)strcspn(argv[optind - 1], "="),
						       argv[optind - 1]);
			if (c == O_NO_WAIT)
				wait = false;
			else if ((code = parse_seconds(verb, argv[optind - 1], optarg,
						       &timeout_ms)))
				return code;
			break;
		case 'o':
			return ctl_no_output(verb);
		case 'h':
			help(verb, stdout);
			return 0;
		default:
			return ctl_bad_option(verb, c, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error(verb, "at least one NAME is required");
	code = ctl_provider(g, &p);
	if (code)
		return code;
	for (int i = optind; i < argc; i++) {
		const char *name = argv[i];
		int r;
		switch (v) {
		case LV_START:
			r = dbx_box_start(p, name);
			break;
		case LV_PAUSE:
			r = dbx_box_pause(p, name);
			break;
		case LV_RESTART:
			r = dbx_box_restart(p, name);
			break;
		case LV_SHUTDOWN:
			r = dbx_box_shutdown(p, name);
			break;
		default:
			r = dbx_box_delete(p, name);
			break;
		}
		if (r == 0 && wait)
			r = dbx_box_wait_ready(p, name, timeout_ms, NULL);
		if (r < 0) {
			int e = ctl_fail(NULL, r);
			if (code != CTL_EXIT_TRANSPORT)
				code = e;
			continue;
		}
		if (!g->quiet)
			printf("%s %s\n", past[v], name);
	}
	fflush(stdout);
	dbx_provider_free(p);
	return code;
}

int ctl_cmd_start(struct ctl_global *g, int argc, char **argv)
{
	return multi(g, argc, argv, LV_START);
}

int ctl_cmd_pause(struct ctl_global *g, int argc, char **argv)
{
	return multi(g, argc, argv, LV_PAUSE);
}

int ctl_cmd_restart(struct ctl_global *g, int argc, char **argv)
{
	return multi(g, argc, argv, LV_RESTART);
}

int ctl_cmd_shutdown(struct ctl_global *g, int argc, char **argv)
{
	return multi(g, argc, argv, LV_SHUTDOWN);
}

int ctl_cmd_delete(struct ctl_global *g, int argc, char **argv)
{
	return multi(g, argc, argv, LV_DELETE);
}

int ctl_cmd_monitor(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"since", required_argument, NULL, O_SINCE},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct dbx_monitor_sample *s = NULL;
	dbx_provider *p = NULL;
	int since_ms = 3600 * 1000, c, code, r;
	size_t n = 0;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
		switch (c) {
		case O_SINCE:
			if ((code = parse_seconds("monitor", "--since", optarg, &since_ms)))
				return code;
			break;
		case 'o':
			if ((code = ctl_set_output(g, "monitor", optarg)))
				return code;
			break;
		case 'h':
			help("monitor", stdout);
			return 0;
		default:
			return ctl_bad_option("monitor", c, argv);
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("monitor", optind >= argc ? "a NAME is required"
								 : "exactly one NAME is expected");
	code = ctl_provider(g, &p);
	if (code)
		return code;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t since = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - since_ms;
	r = dbx_box_monitor(p, argv[optind], since, &s, &n);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON) {
		cJSON *a = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddNumberToObject(o, "timeMs", (double)s[i].time_ms);
			cJSON_AddNumberToObject(o, "cpuPercent", s[i].cpu_percent);
			cJSON_AddNumberToObject(o, "memoryPercent", s[i].memory_percent);
			cJSON_AddNumberToObject(o, "memoryBytes", (double)s[i].memory_bytes);
			cJSON_AddNumberToObject(o, "processes", s[i].processes);
			cJSON_AddItemToArray(a, o);
		}
		ctl_print_json(a);
	} else {
		struct ctl_table *t =
			ctl_table_new(5, "TIME", "CPU%", "MEM%", "MEMORY", "PROCESSES");
		for (size_t i = 0; i < n; i++) {
			char tm[32], cpu[32], memp[32], mem[32], procs[32];
			time_t secs = (time_t)(s[i].time_ms / 1000);
			struct tm lt;
			strftime(tm, sizeof(tm), "%Y-%m-%d %H:%M:%S", localtime_r(&secs, &lt));
			snprintf(cpu, sizeof(cpu), "%.1f", s[i].cpu_percent);
			snprintf(memp, sizeof(memp), "%.1f", s[i].memory_percent);
			snprintf(procs, sizeof(procs), "%u", s[i].processes);
			ctl_table_add(t, tm, cpu, memp,
				      s[i].memory_bytes
					      ? ctl_fmt_size(s[i].memory_bytes, mem, sizeof(mem))
					      : "-",
				      s[i].processes ? procs : "-");
		}
		ctl_table_print(t, stdout);
	}
out:
	free(s);
	dbx_provider_free(p);
	return code;
}

int ctl_cmd_templates(struct ctl_global *g, int argc, char **argv)
{
	char **v = NULL;
	dbx_provider *p = NULL;
	size_t n = 0;
	bool done;
	int code = simple_opts("templates", g, argc, argv, &done), r;

	if (code || done)
		return code;
	if (optind != argc)
		return ctl_usage_error("templates", "unexpected argument '%s'", argv[optind]);
	code = ctl_provider(g, &p);
	if (code)
		return code;
	r = dbx_templates_list(p, &v, &n);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}
	if (g->output == CTL_OUT_JSON) {
		cJSON *a = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++)
			cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
		ctl_print_json(a);
	} else {
		struct ctl_table *t = ctl_table_new(1, "RUNTIME");
		for (size_t i = 0; i < n; i++)
			ctl_table_add(t, v[i]);
		ctl_table_print(t, stdout);
	}
out:
	dbx_strv_free(v, n);
	dbx_provider_free(p);
	return code;
}
