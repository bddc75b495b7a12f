/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl watch: print the change events of a devbox's workspace, one per line.
 *
 * Threads: the watch's thread (libdevbox) prints the events; the main thread waits on a
 * signalfd (SIGINT, SIGTERM, SIGHUP: the normal way to stop, exit 0) and on an eventfd the
 * printing side raises when --count is reached or stdout is gone.  stdout is only written by
 * the watch's thread.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

struct wctx {
	const char *prefix; /* only events at or under this path; "" for all */
	size_t prefix_len;
	bool json;
	bool quiet;
	uint64_t count; /* stop after this many events; 0: never */
	uint64_t printed;
	int efd;           /* raised when done */
	atomic_int result; /* exit status once done */
	bool hello_seen;
};

static void help(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl watch [OPTIONS] BOX [PATH]\n"
		"\n"
		"Prints the changes made in the devbox's workspace (by anyone: API calls, "
		"commands\n"
		"in the devbox, ...) as they happen, one line each:\n"
		"  <seq> <kind> <path> [-> <to>]\n"
		"kind is create, modify, attrib, delete, rename, mkdir, rmdir or overflow (events\n"
		"were lost: whatever mirrors the workspace must rescan it).  With PATH, only "
		"events\n"
		"at or under that path.  Reconnects by itself and resumes where it stopped.\n"
		"\n"
		"Options:\n"
		"  -o, --output FMT   table (default) or json: one JSON object per line\n"
		"  -n, --count N      exit after N events\n"
		"  -h, --help         this help\n"
		"\n"
		"Exit status: runs until interrupted (SIGINT, SIGTERM or SIGHUP: 0) or --count\n"
		"events were printed (0); otherwise as for every command.\n");
}

static void done(struct wctx *w, int status)
{
	atomic_store(&w->result, status);
	uint64_t one = 1;
	if (write(w->efd, &one, sizeof(one)) < 0) {
		/* An eventfd write only fails on counter overflow: it is already raised. */
	}
}

static bool under(const struct wctx *w, const char *path)
{
	if (!path || !w->prefix_len)
		return w->prefix_len == 0;
	return !strncmp(path, w->prefix, w->prefix_len) &&
	       (path[w->prefix_len] == '\0' || path[w->prefix_len] == '/');
}

static const char *type_name(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "file";
	case S_IFDIR:
		return "dir";
	case S_IFLNK:
		return "symlink";
	case S_IFIFO:
		return "fifo";
	case S_IFSOCK:
		return "socket";
	case S_IFCHR:
		return "chr";
	case S_IFBLK:
		return "blk";
	default:
		return "unknown";
	}
}

static cJSON *time_pair(struct timespec ts)
{
	double v[2] = {(double)ts.tv_sec, (double)ts.tv_nsec};
	return cJSON_CreateDoubleArray(v, 2);
}

static char *event_json(const struct dbx_event *ev)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "seq", (double)ev->seq);
	cJSON_AddStringToObject(o, "kind", dbx_event_kind_name(ev->kind));
	cJSON_AddStringToObject(o, "path", ev->path);
	if (ev->to)
		cJSON_AddStringToObject(o, "to", ev->to);
	if (ev->has_attr) {
		const struct dbx_attr *a = &ev->attr;
		cJSON *j = cJSON_AddObjectToObject(o, "attr");
		cJSON_AddStringToObject(j, "type", type_name(a->mode));
		cJSON_AddNumberToObject(j, "mode", a->mode);
		cJSON_AddNumberToObject(j, "ino", (double)a->ino);
		cJSON_AddNumberToObject(j, "nlink", a->nlink);
		cJSON_AddNumberToObject(j, "uid", a->uid);
		cJSON_AddNumberToObject(j, "gid", a->gid);
		cJSON_AddNumberToObject(j, "size", (double)a->size);
		cJSON_AddItemToObject(j, "mtime", time_pair(a->mtime));
		cJSON_AddItemToObject(j, "ctime", time_pair(a->ctime));
		if (a->ver[0])
			cJSON_AddStringToObject(j, "ver", a->ver);
		if (ev->target)
			cJSON_AddStringToObject(j, "target", ev->target);
	}
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static void on_event(void *ud, const struct dbx_event *ev)
{
	struct wctx *w = ud;
	if (w->count && w->printed >= w->count)
		return;
	if (ev->kind != DBX_EV_OVERFLOW && !under(w, ev->path) && !under(w, ev->to))
		return;
	int r;
	if (w->json) {
		char *s = event_json(ev);
		r = s ? printf("%s\n", s) : -1;
		free(s);
	} else if (ev->to) {
		r = printf("%llu %s %s -> %s\n", (unsigned long long)ev->seq,
			   dbx_event_kind_name(ev->kind), ev->path, ev->to);
	} else if (*ev->path) {
		r = printf("%llu %s %s\n", (unsigned long long)ev->seq,
			   dbx_event_kind_name(ev->kind), ev->path);
	} else {
		r = printf("%llu %s\n", (unsigned long long)ev->seq, dbx_event_kind_name(ev->kind));
	}
	if (r < 0 || fflush(stdout) == EOF) {
		/* stdout is gone (a closed pipe): nothing left to do. */
		done(w, CTL_EXIT_OK);
		w->count = w->printed = 1;
		return;
	}
	w->printed++;
	if (w->count && w->printed >= w->count)
		done(w, CTL_EXIT_OK);
}

static void on_hello(void *ud, const struct dbx_watch_hello *h)
{
	struct wctx *w = ud;
	if (w->hello_seen && !w->quiet)
		fprintf(stderr, "devboxctl: watch: reconnected%s\n",
			h->resumed ? "" : "; changes made meanwhile may not have been reported");
	w->hello_seen = true;
}

static void on_down(void *ud, int err)
{
	struct wctx *w = ud;
	if (!w->quiet)
		fprintf(stderr, "devboxctl: watch: connection lost (%s); reconnecting\n",
			strerror(-err));
}

int ctl_cmd_watch(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'},
		{"count", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct wctx w = {.json = g->output == CTL_OUT_JSON, .quiet = g->quiet, .efd = -1};
	char *prefix = NULL;
	dbx_client *client = NULL;
	dbx_watch *watch = NULL;
	int sfd = -1, c, code;
	char *end;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:o:n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			if ((code = ctl_set_output(g, "watch", optarg)))
				return code;
			w.json = g->output == CTL_OUT_JSON;
			break;
		case 'n':
			errno = 0;
			w.count = strtoull(optarg, &end, 10);
			if (errno || *end || !*optarg || *optarg == '-' || !w.count)
				return ctl_usage_error("watch",
						       "--count: '%s' is not a positive "
						       "number",
						       optarg);
			break;
		case 'h':
			help(stdout);
			return CTL_EXIT_OK;
		default:
			return ctl_bad_option("watch", c, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("watch", "missing BOX");
	if (argc - optind > 2)
		return ctl_usage_error("watch", "too many arguments");
	const char *box = argv[optind];

	/* PATH as the agent reports paths: relative, no "./", no trailing '/'; "." is all. */
	const char *p = optind + 1 < argc ? argv[optind + 1] : "";
	while (p[0] == '.' && p[1] == '/')
		p += 2;
	while (*p == '/')
		p++;
	prefix = strdup(!strcmp(p, ".") ? "" : p);
	if (!prefix) {
		fprintf(stderr, "devboxctl: watch: out of memory\n");
		return CTL_EXIT_FAIL;
	}
	w.prefix_len = strlen(prefix);
	while (w.prefix_len && prefix[w.prefix_len - 1] == '/')
		prefix[--w.prefix_len] = '\0';
	w.prefix = prefix;

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	w.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (sfd < 0 || w.efd < 0) {
		fprintf(stderr, "devboxctl: watch: %s\n", strerror(errno));
		code = CTL_EXIT_FAIL;
		goto out;
	}

	code = ctl_connect(g, box, &client);
	if (code)
		goto out;
	const struct dbx_watch_callbacks cb = {
		.hello = on_hello, .event = on_event, .down = on_down};
	int r = dbx_watch_start(client, NULL, &cb, &w, &watch);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		goto out;
	}

	for (;;) {
		struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN},
					{.fd = w.efd, .events = POLLIN}};
		if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
			fprintf(stderr, "devboxctl: watch: poll: %s\n", strerror(errno));
			code = CTL_EXIT_FAIL;
			break;
		}
		if (pfd[0].revents) {
			code = CTL_EXIT_OK; /* interrupted: the normal way to stop */
			break;
		}
		if (pfd[1].revents) {
			code = atomic_load(&w.result);
			break;
		}
	}
out:
	dbx_watch_free(watch); /* joins the printing thread */
	dbx_client_free(client);
	if (sfd >= 0)
		close(sfd);
	if (w.efd >= 0)
		close(w.efd);
	free(prefix);
	/* SIGINT/SIGTERM/SIGHUP stay blocked: the process ends right after this verb. */
	return code;
}
