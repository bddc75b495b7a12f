/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl — manage devboxes and work with them.
 *
 * Threads: main only (verbs that need more, such as exec, say so in their own file).
 * This file: global options, the verb table, provider and agent resolution, errors.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct ctl_verb verbs[] = {
	{"create", ctl_cmd_create, "Create a devbox (and wait until it is ready)"},
	{"list", ctl_cmd_list, "List devboxes"},
	{"get", ctl_cmd_get, "Show one devbox"},
	{"start", ctl_cmd_start, "Start a paused or stopped devbox"},
	{"pause", ctl_cmd_pause, "Pause a devbox (processes frozen, workspace kept)"},
	{"restart", ctl_cmd_restart, "Restart a devbox's agent and processes"},
	{"shutdown", ctl_cmd_shutdown, "Stop a devbox (processes ended, workspace kept)"},
	{"delete", ctl_cmd_delete, "Delete a devbox and its workspace"},
	{"monitor", ctl_cmd_monitor, "CPU and memory of a devbox's processes"},
	{"templates", ctl_cmd_templates, "List the runtimes a devbox can be created from"},
	{"exec", ctl_cmd_exec, "Run a command in a devbox (exit status is the remote one)"},
	{"cp", ctl_cmd_cp, "Copy files and directories between here and a devbox"},
	{"ls", ctl_cmd_ls, "List a directory in a devbox"},
	{"cat", ctl_cmd_cat, "Print files of a devbox"},
	{"rm", ctl_cmd_rm, "Remove files or directories in a devbox"},
	{"mkdir", ctl_cmd_mkdir, "Create directories in a devbox"},
	{"mv", ctl_cmd_mv, "Move or rename within a devbox"},
	{"watch", ctl_cmd_watch, "Print change events of a devbox's workspace"},
	{"ps", ctl_cmd_ps, "List processes started through the agent"},
	{"logs", ctl_cmd_logs, "Print the output of a process"},
	{"kill", ctl_cmd_kill, "Signal a process"},
	{"ports", ctl_cmd_ports, "List listening ports inside a devbox"},
	{"mount", ctl_cmd_mount, "Mount a devbox's workspace at a local directory"},
	{"umount", ctl_cmd_umount, "Unmount a devbox mount"},
};

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl [GLOBAL OPTIONS] COMMAND [ARGS...]\n"
		"\n"
		"Global options:\n"
		"  --provider NAME    local (default, or $DEVBOX_PROVIDER) or sealos\n"
		"  --home DIR         local provider root ($DEVBOX_HOME, default\n"
		"                     $XDG_STATE_HOME/devbox)\n"
		"  --agent PATH       devbox-agent binary for the local provider ($DEVBOX_AGENT)\n"
		"  --kubeconfig FILE  sealos: kubeconfig ($KUBECONFIG, default ~/.kube/config)\n"
		"  --api-url URL      sealos: control-plane URL ($DEVBOX_API_URL; default derived\n"
		"                     from the kubeconfig server)\n"
		"  --insecure         do not verify TLS certificates\n"
		"  --timeout SECONDS  timeout of each request to an agent or the control plane\n"
		"                     (create/start/restart wait with --wait-timeout)\n"
		"  -o, --output FMT   table (default) or json; also accepted after the command\n"
		"  -q, --quiet        no progress output\n"
		"  -h, --help         this help; `devboxctl COMMAND --help` for a command\n"
		"  -V, --version      print the version\n"
		"\n"
		"Commands:\n");
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(out, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
	fprintf(out,
		"\n"
		"BOX is a devbox name, or an agent URL (http://HOST:PORT or https://HOST[:PORT])\n"
		"with the token in $DEVBOX_TOKEN.  Remote paths are relative to the workspace.\n"
		"\n"
		"Exit status: 0 success; 1 the operation failed; 2 bad command line; 255 the\n"
		"agent or control plane could not be reached or refused the credentials.  exec\n"
		"exits with the remote command's status (128+N when it died of signal N).\n");
}

bool ctl_is_transport_error(int err)
{
	switch (-err) {
	case ECONNREFUSED:
	case ECONNRESET:
	case ECONNABORTED:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ETIMEDOUT:
	case EKEYREJECTED: /* wrong token / kubeconfig refused (HTTP 401) */
	case EPROTO:
	case ENOTCONN:
	case EPIPE:
		return true;
	default:
		return false;
	}
}

int ctl_fail(const char *op, int err)
{
	const char *msg = dbx_error_last();
	if (!msg || !*msg)
		msg = strerror(err < 0 ? -err : err);
	if (op)
		fprintf(stderr, "devboxctl: %s: %s\n", op, msg);
	else
		fprintf(stderr, "devboxctl: %s\n", msg);
	return ctl_is_transport_error(err) ? CTL_EXIT_TRANSPORT : CTL_EXIT_FAIL;
}

int ctl_usage_error(const char *verb, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "devboxctl %s: ", verb);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'devboxctl %s --help'.\n", verb);
	return CTL_EXIT_USAGE;
}

int ctl_bad_option(const char *verb, int c, char **argv)
{
	const char *arg = optind > 0 ? argv[optind - 1] : "";
	if (!strncmp(arg, "--", 2) && arg[2]) {
		int len = (int)strcspn(arg, "=");
		if (c == ':')
			return ctl_usage_error(verb, "option '%.*s' needs an argument", len, arg);
		return ctl_usage_error(verb, "unknown option '%.*s'", len, arg);
	}
	if (c == ':')
		return ctl_usage_error(verb, "option '-%c' needs an argument", optopt);
	if (optopt > ' ' && optopt < 127)
		return ctl_usage_error(verb, "unknown option '-%c'", optopt);
	return ctl_usage_error(verb, "unknown option '%s'", arg);
}

int ctl_set_output(struct ctl_global *g, const char *verb, const char *arg)
{
	if (!strcmp(arg, "json"))
		g->output = CTL_OUT_JSON;
	else if (!strcmp(arg, "table"))
		g->output = CTL_OUT_TABLE;
	else
		return ctl_usage_error(verb, "-o: unknown format '%s' (json or table)", arg);
	return 0;
}

int ctl_no_output(const char *verb)
{
	return ctl_usage_error(verb, "-o does not apply: %s prints no table or JSON", verb);
}

int ctl_provider(struct ctl_global *g, dbx_provider **ret_p)
{
	struct dbx_provider_config cfg = {
		.name = g->provider,
		.home = g->home,
		.agent_path = g->agent,
		.kubeconfig = g->kubeconfig,
		.api_url = g->api_url,
		.insecure = g->insecure,
		.timeout_ms = g->timeout_ms,
	};
	int r = dbx_provider_open(&cfg, ret_p);
	if (r < 0) {
		const char *name = g->provider ? g->provider : getenv("DEVBOX_PROVIDER");
		int code = ctl_fail(NULL, r);
		if (name && *name && strcmp(name, "local") && strcmp(name, "sealos"))
			return CTL_EXIT_USAGE;
		/* sealos: a kubeconfig or API URL that cannot be used is a credentials failure. */
		return name && !strcmp(name, "sealos") ? CTL_EXIT_TRANSPORT : code;
	}
	return 0;
}

int ctl_connect(struct ctl_global *g, const char *box, dbx_client **ret_client)
{
	if (!strncmp(box, "http://", 7) || !strncmp(box, "https://", 8)) {
		struct dbx_client_config cfg = {
			.url = box,
			.token = getenv("DEVBOX_TOKEN"),
			.timeout_ms = g->timeout_ms,
			.insecure = g->insecure,
		};
		int r = dbx_client_new(&cfg, ret_client);
		return r < 0 ? ctl_fail(NULL, r) : 0;
	}
	dbx_provider *p = NULL;
	int code = ctl_provider(g, &p);
	if (code)
		return code;
	int r = dbx_box_connect(p, box, ret_client);
	if (r < 0)
		code = ctl_fail(NULL, r);
	dbx_provider_free(p);
	return code;
}

int main(int argc, char **argv)
{
	struct ctl_global g = {0};
	enum { O_PROVIDER = 256, O_KUBECONFIG, O_API_URL, O_HOME, O_AGENT, O_INSECURE, O_TIMEOUT };
	static const struct option opts[] = {
		{"provider", required_argument, NULL, O_PROVIDER},
		{"kubeconfig", required_argument, NULL, O_KUBECONFIG},
		{"api-url", required_argument, NULL, O_API_URL},
		{"home", required_argument, NULL, O_HOME},
		{"agent", required_argument, NULL, O_AGENT},
		{"insecure", no_argument, NULL, O_INSECURE},
		{"timeout", required_argument, NULL, O_TIMEOUT},
		{"output", required_argument, NULL, 'o'},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0},
	};
	int c;
	char *end;
	long v;

	while ((c = getopt_long(argc, argv, "+o:qhV", opts, NULL)) != -1) {
		switch (c) {
		case O_PROVIDER:
			g.provider = optarg;
			break;
		case O_KUBECONFIG:
			g.kubeconfig = optarg;
			break;
		case O_API_URL:
			g.api_url = optarg;
			break;
		case O_HOME:
			g.home = optarg;
			break;
		case O_AGENT:
			g.agent = optarg;
			break;
		case O_INSECURE:
			g.insecure = true;
			break;
		case O_TIMEOUT:
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || *end || v <= 0 || v > 86400) {
				fprintf(stderr,
					"devboxctl: --timeout: '%s' is not a number of seconds "
					"(1-86400)\n",
					optarg);
				return CTL_EXIT_USAGE;
			}
			g.timeout_ms = (int)v * 1000;
			break;
		case 'o':
			if (!strcmp(optarg, "json"))
				g.output = CTL_OUT_JSON;
			else if (!strcmp(optarg, "table"))
				g.output = CTL_OUT_TABLE;
			else {
				fprintf(stderr,
					"devboxctl: -o: unknown format '%s' (json or table)\n",
					optarg);
				return CTL_EXIT_USAGE;
			}
			break;
		case 'q':
			g.quiet = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("devboxctl %s\n", DEVBOX_VERSION);
			return 0;
		default:
			fprintf(stderr, "Try 'devboxctl --help'.\n");
			return CTL_EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_EXIT_USAGE;
	}
	const char *name = argv[optind];
	int first = optind;
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		if (strcmp(verbs[i].name, name))
			continue;
		optind = 0; /* reset getopt for the verb (0 also re-reads GNU extensions) */
		return verbs[i].run(&g, argc - first, argv + first);
	}
	fprintf(stderr, "devboxctl: unknown command '%s'\nTry 'devboxctl --help'.\n", name);
	return CTL_EXIT_USAGE;
}
