/* devbox-agent: HTTP + WebSocket server over a devbox workspace, wire-compatible with the
 * official Sealos agent (shared/reference/agent-api.md).
 *
 * Thread model:
 *   - the lws service thread (this one, after start-up) owns every lws object, every
 *     connection's state and the process table; it never blocks on the file system;
 *   - a worker pool (work.c) runs route handlers that touch files or spawn processes and posts
 *     results back through work_post() + lws_cancel_service();
 *   - a signal thread sigwait()s for SIGTERM/SIGINT and asks the loop to stop.
 * Shutdown: stop flag -> loop exits -> children's process groups killed -> connections closed
 * -> workers joined -> exit status 0. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "events.h"
#include "misc.h"
#include "path.h"

#define DEFAULT_ADDR "0.0.0.0:9757"
#define DEFAULT_WORKSPACE "/home/devbox/project"
#define DEFAULT_MAX_FILE_SIZE 104857600ull
#define OFFICIAL_WORKSPACE "/home/devbox/project"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER; /* ag.ctx vs the signal thread */

void agent_log(int level, const char *fmt, ...)
{
	va_list ap;
	FILE *f = level == LLL_USER ? stdout : stderr;
	pthread_mutex_lock(&log_mu);
	if (level != LLL_USER)
		fputs(level == LLL_ERR ? "devbox-agent: error: " : "devbox-agent: ", f);
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fflush(f);
	pthread_mutex_unlock(&log_mu);
}

static void lws_log_emit(int level, const char *line)
{
	size_t n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	/* lws prefixes its own timestamp and level: keep the text. */
	agent_log(level == LLL_ERR ? LLL_ERR : LLL_WARN, "lws: %.*s", (int)n, line);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: devbox-agent [--addr=HOST:PORT] [--workspace-path=DIR] [--token=TOKEN]\n"
		"                    [--max-file-size=BYTES] [--access-log]\n"
		"\n"
		"HTTP + WebSocket agent over a devbox workspace, compatible with the official\n"
		"Sealos devbox agent and its TypeScript SDK.\n"
		"\n"
		"  --addr=HOST:PORT        listen address (env ADDR, default %s);\n"
		"                          port 0 picks a free port\n"
		"  --workspace-path=DIR    workspace root (env WORKSPACE_PATH, default %s)\n"
		"  --token=TOKEN           bearer token (env TOKEN, else DEVBOX_JWT_SECRET;\n"
		"                          default: a random token, printed at start)\n"
		"  --max-file-size=BYTES   largest file accepted by writes (env MAX_FILE_SIZE,\n"
		"                          default %llu)\n"
		"  --access-log            print METHOD URI STATUS DURATION per request\n"
		"  --help, --version\n"
		"\n"
		"The first line on stdout is \"listening on HOST:PORT\". SIGTERM stops the agent\n"
		"cleanly (exit status 0); child processes' groups are killed.\n",
		DEFAULT_ADDR, DEFAULT_WORKSPACE, DEFAULT_MAX_FILE_SIZE);
}

static int parse_addr(const char *addr, char *host, size_t hostsz, int *port)
{
	const char *colon;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (!rb || rb[1] != ':')
			return -EINVAL;
		size_t n = (size_t)(rb - addr - 1);
		if (n >= hostsz)
			return -EINVAL;
		memcpy(host, addr + 1, n);
		host[n] = '\0';
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		size_t n = (size_t)(colon - addr);
		if (n >= hostsz)
			return -EINVAL;
		memcpy(host, addr, n);
		host[n] = '\0';
		if (n == 0)
			snprintf(host, hostsz, "0.0.0.0");
	}
	char *end;
	errno = 0;
	long p = strtol(colon + 1, &end, 10);
	if (errno || *end || colon[1] == '\0' || p < 0 || p > 65535)
		return -EINVAL;
	*port = (int)p;
	if (strcmp(host, "localhost") == 0)
		snprintf(host, hostsz, "127.0.0.1");
	return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || !*s || s[0] == '-')
		return -EINVAL;
	*out = v;
	return 0;
}

/* Overwrite a secret in our own argv so it does not show in /proc/PID/cmdline. */
static void scrub(char *s)
{
	while (*s)
		*s++ = 'x';
}

static int load_config(struct agent_config *cfg, int argc, char **argv)
{
	const char *addr = getenv("ADDR");
	const char *ws = getenv("WORKSPACE_PATH");
	const char *tok = getenv("TOKEN");
	if (!tok)
		tok = getenv("DEVBOX_JWT_SECRET");
	const char *mfs = getenv("MAX_FILE_SIZE");
	char *tok_copy = NULL;
	const char *mfs_flag = NULL;

	cfg->max_file_size = DEFAULT_MAX_FILE_SIZE;
	if (mfs && parse_u64(mfs, &cfg->max_file_size) < 0) {
		agent_log(LLL_WARN, "ignoring MAX_FILE_SIZE=%s: not a number of bytes", mfs);
		cfg->max_file_size = DEFAULT_MAX_FILE_SIZE;
	}
	if (tok)
		tok_copy = strdup(tok);
	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		} else if (strcmp(a, "--version") == 0) {
			printf("%s\n", AGENT_VERSION);
			exit(0);
		} else if (strncmp(a, "--addr=", 7) == 0) {
			addr = a + 7;
		} else if (strncmp(a, "--workspace-path=", 17) == 0) {
			ws = a + 17;
		} else if (strncmp(a, "--token=", 8) == 0) {
			free(tok_copy);
			tok_copy = strdup(a + 8);
			scrub(a + 8);
		} else if (strncmp(a, "--max-file-size=", 16) == 0) {
			mfs_flag = a + 16;
		} else if (strncmp(a, "--max-concurrent-reads=", 23) == 0) {
			/* Accepted for compatibility; the worker pool bounds concurrency. */
		} else if (strcmp(a, "--access-log") == 0) {
			cfg->access_log = true;
		} else {
			fprintf(stderr, "devbox-agent: unknown argument '%s' (see --help)\n", a);
			return -EINVAL;
		}
	}
	if (mfs_flag && parse_u64(mfs_flag, &cfg->max_file_size) < 0) {
		fprintf(stderr, "devbox-agent: --max-file-size=%s: not a number of bytes\n",
			mfs_flag);
		return -EINVAL;
	}
	if (!addr)
		addr = DEFAULT_ADDR;
	if (parse_addr(addr, cfg->host, sizeof(cfg->host), &cfg->port) < 0) {
		fprintf(stderr, "devbox-agent: bad listen address '%s' (want HOST:PORT)\n", addr);
		return -EINVAL;
	}
	if (!ws || !*ws)
		ws = DEFAULT_WORKSPACE;
	char real[PATH_MAX];
	if (!realpath(ws, real)) {
		/* A fresh devbox may not have its workspace yet: create it. */
		if (errno == ENOENT) {
			char tmp[PATH_MAX];
			snprintf(tmp, sizeof(tmp), "%s", ws);
			for (char *p = tmp + 1; *p; p++) {
				if (*p != '/')
					continue;
				*p = '\0';
				mkdir(tmp, 0755);
				*p = '/';
			}
			mkdir(tmp, 0755);
		}
		if (!realpath(ws, real)) {
			fprintf(stderr, "devbox-agent: workspace %s: %s\n", ws, strerror(errno));
			return -errno;
		}
	}
	cfg->workspace = strdup(real);
	if (tok_copy) {
		cfg->token = tok_copy;
	} else {
		cfg->token = malloc(25);
		if (!cfg->token)
			return -ENOMEM;
		dbx_random_id(cfg->token, 24);
		cfg->token_generated = true;
	}
	cfg->token_len = strlen(cfg->token);
	/* Children must never see the token (DESIGN §1.4). */
	unsetenv("TOKEN");
	unsetenv("DEVBOX_JWT_SECRET");
	return 0;
}

static void *signal_main(void *arg)
{
	struct agent *ag = arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	for (;;) {
		int sig = 0;
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP)
			continue;
		atomic_store(&ag->stopping, true);
		pthread_mutex_lock(&ctx_mu);
		if (ag->ctx)
			lws_cancel_service(ag->ctx);
		pthread_mutex_unlock(&ctx_mu);
		return NULL;
	}
}

static const struct lws_protocols protocols[] = {
	{"http", agent_http_callback, sizeof(void *) * 2, 0, 0, NULL, 0},
	{"dbx-raw", proc_raw_callback, 0, 0, 0, NULL, 0},
	/* WebSocket clients that insist on naming a subprotocol. */
	{"dbx", agent_http_callback, sizeof(void *) * 2, 0, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0},
};

static const lws_retry_bo_t ws_idle_policy = {
	.secs_since_valid_ping = 30,
	.secs_since_valid_hangup = 45,
};

int main(int argc, char **argv)
{
	struct agent ag;
	memset(&ag, 0, sizeof(ag));
	ag.rootfd = -1;
	ag.start_time = time(NULL);
	atomic_init(&ag.stopping, false);
	atomic_init(&ag.buffered_bytes, 0);
	int rc = 1;

	/* Up to 192 worker threads would each get a malloc arena: two keep RSS small and flat. */
	mallopt(M_ARENA_MAX, 2);
	if (load_config(&ag.cfg, argc, argv) < 0)
		return 2;
	ag.rootfd = open(ag.cfg.workspace, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (ag.rootfd < 0) {
		fprintf(stderr, "devbox-agent: workspace %s: %s\n", ag.cfg.workspace,
			strerror(errno));
		return 1;
	}
	if (strcmp(ag.cfg.workspace, OFFICIAL_WORKSPACE) != 0)
		ag.alias = OFFICIAL_WORKSPACE;

	/* Signals: handled by the signal thread only; children get a clean mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_emit);

	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
		       LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
	/* T1: with IPv6 on, lws ignores an IPv4 bind address (a context-wide option). */
	bool v6 = strchr(ag.cfg.host, ':') != NULL;
	if (!v6)
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	info.user = &ag;
	info.pt_serv_buf_size = AGENT_CHUNK;		   /* T2 */
	info.max_http_header_data = AGENT_LWS_HEADER_MAX; /* T14 */
	info.fd_limit_per_thread = AGENT_MAX_CONNS;	   /* T24 */
	info.timeout_secs = 30;				   /* T3/T4 */
	info.keepalive_timeout = 60;
	info.retry_and_idle_policy = &ws_idle_policy;
	ag.ctx = lws_create_context(&info);
	if (!ag.ctx) {
		fprintf(stderr, "devbox-agent: cannot create the lws context\n");
		goto out;
	}
	if (work_pool_new(&ag.pool, &ag, 4, 64) < 0 ||
	    work_pool_new(&ag.xfer_pool, &ag, 1, 128) < 0)
		goto out;
	if (proc_table_new(&ag) < 0)
		goto out;

	struct lws_context_creation_info vi;
	memset(&vi, 0, sizeof(vi));
	vi.port = ag.cfg.port;
	vi.protocols = protocols;
	vi.keepalive_timeout = 60;
	vi.timeout_secs = 30;
	vi.vhost_name = "devbox-agent";
	vi.options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
	/* 0.0.0.0 (IPv6 disabled) binds IPv4 any, like the official agent. */
	vi.iface = strcmp(ag.cfg.host, "0.0.0.0") == 0 ? NULL : ag.cfg.host;
	ag.vh = lws_create_vhost(ag.ctx, &vi);
	if (!ag.vh) {
		fprintf(stderr, "devbox-agent: cannot listen on %s:%d\n", ag.cfg.host,
			ag.cfg.port);
		goto out;
	}
	ag.bound_port = lws_get_vhost_listen_port(ag.vh);
	if (events_start(&ag) < 0) {
		fprintf(stderr, "devbox-agent: cannot watch the workspace %s\n", ag.cfg.workspace);
		goto out;
	}
	if (v6)
		printf("listening on [%s]:%d\n", ag.cfg.host, ag.bound_port);
	else
		printf("listening on %s:%d\n", ag.cfg.host, ag.bound_port);
	printf("workspace %s\n", ag.cfg.workspace);
	if (ag.cfg.token_generated) {
		printf("token %s\n", ag.cfg.token);
	} else if (ag.cfg.token_len > 6) {
		printf("token %.3s******%s (from configuration)\n", ag.cfg.token,
		       ag.cfg.token + ag.cfg.token_len - 3);
	} else {
		printf("token ****** (from configuration)\n");
	}
	fflush(stdout);

	pthread_t sig_thread;
	if (pthread_create(&sig_thread, NULL, signal_main, &ag) != 0)
		goto out;
	pthread_detach(sig_thread);

	agent_mark_service_thread();
	while (!atomic_load(&ag.stopping)) {
		if (lws_service(ag.ctx, 0) < 0)
			break;
	}
	rc = atomic_load(&ag.stopping) ? 0 : 1;

out:
	events_stop(&ag);
	exec_table_free(&ag);
	if (ag.procs)
		proc_table_free(&ag);
	if (ag.pool)
		work_pool_detach_loop(ag.pool);
	if (ag.xfer_pool)
		work_pool_detach_loop(ag.xfer_pool);
	pthread_mutex_lock(&ctx_mu);
	struct lws_context *ctx = ag.ctx;
	ag.ctx = NULL; /* the signal thread must not wake a context being destroyed */
	pthread_mutex_unlock(&ctx_mu);
	if (ctx)
		lws_context_destroy(ctx);
	work_pool_free(ag.xfer_pool);
	work_pool_free(ag.pool);
	if (ag.rootfd >= 0)
		close(ag.rootfd);
	if (ag.cfg.token)
		explicit_bzero(ag.cfg.token, ag.cfg.token_len);
	free(ag.cfg.token);
	free(ag.cfg.workspace);
	return rc;
}
