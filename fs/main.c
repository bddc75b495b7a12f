/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devbox-fs: mounts a devbox workspace at a local directory (DESIGN.md §2-§3).
 *
 *   devbox-fs [-f] [-d] [-o OPTS] [--token-file FILE] BOX MOUNTPOINT
 *
 * BOX is an agent URL (token from --token-file or $DEVBOX_TOKEN) or a devbox name resolved by
 * the provider ($DEVBOX_PROVIDER, default local).
 *
 * Threads:
 *   - main: parses options, connects, loads the tree, mounts, then sleeps in
 *     fuse_session_loop_mt until a signal (libfuse's handlers: TERM/INT/HUP) or an unmount;
 *     SIGUSR1 rewrites the stats file.  It alone receives signals: every other thread is
 *     started with all signals blocked.
 *   - libfuse workers (up to max_threads): the operations (ops.c, io.c); each may block on
 *     one bounded remote call.
 *   - the libdevbox watch thread: applies change events to the mirror (events.c).
 *   - the notifiers (notify.c, 4 queues): the only callers of fuse_lowlevel_notify_*.
 *   - the stats writer (stats.c).
 *   - the write queue's uploaders (wq.c): send buffered writes; drained and joined after the
 *     loop, before the other threads stop (exit status 1 if queued data could not be stored).
 * Order (c-style-notes §4.1.8): options -> agent reachable -> tree loaded -> session ->
 * signal handlers -> mount -> daemonize (without -f) -> threads -> loop -> stop threads ->
 * unmount.  The mountpoint is resolved once before mounting and never touched afterwards.
 */
#include "dfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int log_max = DFS_INFO;
static int log_fd = STDERR_FILENO; /* -o log=FILE: a file kept open across daemonizing */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void vlog(int level, const char *fmt, va_list ap)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	char msg[1024];
	size_t n;

	if (level > log_max)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = 0;
	pthread_mutex_lock(&log_lock);
	if (log_fd != STDERR_FILENO) {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		dprintf(log_fd, "%s.%03ldZ devbox-fs[%d]: %s: %s\n", when, ts.tv_nsec / 1000000,
			(int)getpid(), names[level], msg);
	} else {
		fprintf(stderr, "devbox-fs[%d]: %s: %s\n", (int)getpid(), names[level], msg);
	}
	pthread_mutex_unlock(&log_lock);
}

void dfs_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, fmt, ap);
	va_end(ap);
}

static void fuse_logger(enum fuse_log_level level, const char *fmt, va_list ap)
{
	int l = level <= FUSE_LOG_ERR       ? DFS_ERR
		: level == FUSE_LOG_WARNING ? DFS_WARN
		: level <= FUSE_LOG_INFO    ? DFS_INFO
					    : DFS_DEBUG;

	vlog(l, fmt, ap);
}

static void dbx_logger(int level, const char *msg, void *ud)
{
	dfs_log(level < 0 ? DFS_ERR : level > DFS_DEBUG ? DFS_DEBUG : level, "libdevbox: %s", msg);
}

static void on_usr1(int sig)
{
	stats_kick();
}

/* ---- options --------------------------------------------------------------------------- */

struct cli {
	bool foreground, fuse_debug, help, version;
	char *box, *mountpoint, *token_file, *log_file;
	char *fuse_opts; /* comma list passed to libfuse */
};

static void usage(FILE *f)
{
	fputs("usage: devbox-fs [-f] [-d] [-o OPTIONS] [--token-file FILE] BOX MOUNTPOINT\n"
	      "\n"
	      "Mounts the workspace of a devbox at MOUNTPOINT.  BOX is an agent URL\n"
	      "(http://HOST:PORT; token from --token-file or $DEVBOX_TOKEN) or a devbox name\n"
	      "resolved by the provider ($DEVBOX_PROVIDER, default local).\n"
	      "\n"
	      "  -f                 stay in the foreground (for systemd)\n"
	      "  -d                 libfuse debug output (implies -f and -o debug)\n"
	      "  --token-file FILE  read the agent token from FILE\n"
	      "  -o debug           verbose log (stderr)\n"
	      "  -o stats=FILE      counters as JSON (default "
	      "$XDG_RUNTIME_DIR/devbox-fs/PID.json)\n"
	      "  -o max_threads=N   FUSE worker threads (default 32)\n"
	      "  -o timeout=SECS    soft mounts: a remote call fails with EIO after SECS (10)\n"
	      "  -o soft | -o hard  hard: no per-operation deadline (default soft)\n"
	      "  -o ttl=SECS        kernel entry/attr timeout while the event stream is up (3600)\n"
	      "  -o echo            replay remote changes through the mount so inotify watchers\n"
	      "                     (editors, build tools) see them\n"
	      "  -o async_close     close() returns at once, the upload goes on in the background\n"
	      "                     (failures: logged, and reported by the next fsync/close)\n"
	      "  -o async_max=MiB   data queued for upload at most, writers wait beyond (256)\n"
	      "  -o token_file=FILE same as --token-file\n"
	      "  -o log=FILE        append the log to FILE (with times) instead of stderr, which\n"
	      "                     is /dev/null once the daemon detaches (mount -t, fstab)\n"
	      "  other -o options (allow_other, default_permissions, ro, ...) go to libfuse;\n"
	      "  fstab-only options (_netdev, noauto, nofail, x-*) are ignored.\n",
	      f);
}

static int add_fuse_opt(struct cli *c, const char *o)
{
	char *n;

	if (asprintf(&n, "%s%s%s", c->fuse_opts ? c->fuse_opts : "", c->fuse_opts ? "," : "", o) <
	    0)
		return -ENOMEM;
	free(c->fuse_opts);
	c->fuse_opts = n;
	return 0;
}

static int parse_num(const char *key, const char *v, double min, double max, double *ret)
{
	char *end;
	double x;

	errno = 0;
	x = strtod(v, &end);
	if (errno || end == v || *end || x < min || x > max) {
		fprintf(stderr, "devbox-fs: bad value for -o %s: '%s'\n", key, v);
		return -EINVAL;
	}
	*ret = x;
	return 0;
}

static int parse_o(struct dfs *d, struct cli *c, const char *list)
{
	char *dup = strdup(list), *save = NULL, *o;
	int r = 0;

	if (!dup)
		return -ENOMEM;
	for (o = strtok_r(dup, ",", &save); o && r == 0; o = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(o, '=');
		const char *v = eq ? eq + 1 : NULL;
		double x;

		if (eq)
			*eq = 0;
		if (!strcmp(o, "debug")) {
			d->debug = true;
		} else if (!strcmp(o, "echo")) {
			d->echo_on = true;
		} else if (!strcmp(o, "async_close")) {
			d->async_close = true;
		} else if (!strcmp(o, "async_max") && v) {
			r = parse_num(o, v, 1, 1 << 20, &x);
			d->async_max = (uint64_t)x << 20;
		} else if (!strcmp(o, "hard")) {
			d->hard = true;
		} else if (!strcmp(o, "soft")) {
			d->hard = false;
		} else if (!strcmp(o, "stats") && v) {
			free(d->stats_path);
			d->stats_path = strdup(v);
			r = d->stats_path ? 0 : -ENOMEM;
		} else if (!strcmp(o, "log") && v) {
			free(c->log_file);
			c->log_file = strdup(v);
			r = c->log_file ? 0 : -ENOMEM;
		} else if (!strcmp(o, "token_file") && v) {
			free(c->token_file);
			c->token_file = strdup(v);
			r = c->token_file ? 0 : -ENOMEM;
		} else if (!strcmp(o, "max_threads") && v) {
			r = parse_num(o, v, 2, 1024, &x);
			d->max_threads = (unsigned)x;
		} else if (!strcmp(o, "timeout") && v) {
			r = parse_num(o, v, 0.1, 86400, &x);
			d->op_timeout_ms = (int)(x * 1000);
		} else if (!strcmp(o, "ttl") && v) {
			r = parse_num(o, v, 0, 1e7, &x);
			d->ttl = x;
		} else if (!strcmp(o, "_netdev") || !strcmp(o, "noauto") || !strcmp(o, "auto") ||
			   !strcmp(o, "nofail") || !strcmp(o, "user") || !strcmp(o, "users") ||
			   !strcmp(o, "defaults") || !strncmp(o, "x-", 2) ||
			   !strncmp(o, "comment=", 8)) {
			continue;
		} else {
			if (eq)
				*eq = '=';
			r = add_fuse_opt(c, o);
		}
	}
	free(dup);
	return r;
}

static int parse_args(struct dfs *d, struct cli *c, int argc, char **argv)
{
	int npos = 0, r;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-f")) {
			c->foreground = true;
		} else if (!strcmp(a, "-d")) {
			c->foreground = c->fuse_debug = d->debug = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			c->help = true;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			c->version = true;
		} else if (!strcmp(a, "-o") || !strncmp(a, "-o", 2)) {
			const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);

			if (!v) {
				fputs("devbox-fs: -o needs an argument\n", stderr);
				return -EINVAL;
			}
			r = parse_o(d, c, v);
			if (r < 0)
				return r;
		} else if (!strcmp(a, "--token-file") || !strncmp(a, "--token-file=", 13)) {
			const char *v = a[12] == '=' ? a + 13 : (i + 1 < argc ? argv[++i] : NULL);

			if (!v) {
				fputs("devbox-fs: --token-file needs an argument\n", stderr);
				return -EINVAL;
			}
			free(c->token_file);
			c->token_file = strdup(v);
			if (!c->token_file)
				return -ENOMEM;
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "devbox-fs: unknown option '%s' (see --help)\n", a);
			return -EINVAL;
		} else if (npos == 0) {
			c->box = strdup(a);
			npos++;
		} else if (npos == 1) {
			c->mountpoint = strdup(a);
			npos++;
		} else {
			fprintf(stderr, "devbox-fs: unexpected argument '%s'\n", a);
			return -EINVAL;
		}
	}
	if (c->help || c->version)
		return 0;
	if (npos != 2 || !c->box || !c->mountpoint) {
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

static int read_token(const char *file, char **ret)
{
	char buf[4096];
	FILE *f = fopen(file, "re");
	size_t n;

	if (!f) {
		int e = errno;

		fprintf(stderr, "devbox-fs: token file %s: %s\n", file, strerror(e));
		return -e;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = 0;
	*ret = strdup(buf);
	return *ret ? 0 : -ENOMEM;
}

static int connect_box(struct dfs *d, struct cli *c)
{
	char *token = NULL;
	int r;

	if (strstr(c->box, "://")) {
		struct dbx_client_config cfg = {.url = c->box};

		if (c->token_file) {
			r = read_token(c->token_file, &token);
			if (r < 0)
				return r;
		} else if (getenv("DEVBOX_TOKEN")) {
			token = strdup(getenv("DEVBOX_TOKEN"));
		}
		cfg.token = token;
		r = dbx_client_new(&cfg, &d->client);
		free(token);
	} else {
		dbx_provider *p = NULL;

		r = dbx_provider_open(NULL, &p);
		if (r == 0)
			r = dbx_box_connect(p, c->box, &d->client);
		dbx_provider_free(p);
	}
	if (r < 0) {
		fprintf(stderr, "devbox-fs: %s: %s\n", c->box, dbx_error_last());
		return r;
	}
	r = dbx_client_health(d->client);
	if (r < 0)
		fprintf(stderr, "devbox-fs: %s: agent not reachable: %s\n", c->box,
			dbx_error_last());
	return r;
}

/* True when file (its directory, resolved) lies in the directory tree mnt (resolved). */
static bool inside(const char *mnt, const char *file)
{
	char *copy = strdup(file), dir[PATH_MAX];
	char *slash = copy ? strrchr(copy, '/') : NULL;
	bool r;

	if (!copy)
		return false;
	if (slash == copy)
		slash[1] = 0; /* "/x" -> "/" */
	else if (slash)
		*slash = 0;
	r = realpath(slash ? copy : ".", dir) &&
	    (!strcmp(mnt, "/") ||
	     (!strncmp(dir, mnt, strlen(mnt)) && (!dir[strlen(mnt)] || dir[strlen(mnt)] == '/')));
	free(copy);
	return r;
}

static int default_stats_path(struct dfs *d)
{
	const char *rt = getenv("XDG_RUNTIME_DIR");
	char *dir = NULL;
	int r;

	if (rt && *rt)
		r = asprintf(&dir, "%s/devbox-fs", rt);
	else
		r = asprintf(&dir, "/tmp/devbox-fs-%u", (unsigned)getuid());
	if (r < 0)
		return -ENOMEM;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		dfs_log(DFS_WARN, "stats directory %s: %s", dir, strerror(errno));
	}
	r = asprintf(&d->stats_path, "%s/%d.json", dir, (int)getpid());
	free(dir);
	return r < 0 ? -ENOMEM : 0;
}

static void cli_free(struct cli *c)
{
	free(c->box);
	free(c->mountpoint);
	free(c->token_file);
	free(c->log_file);
	free(c->fuse_opts);
}

int main(int argc, char **argv)
{
	struct dfs dd = {0}, *d = &dd;
	struct cli c = {0};
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lcfg = NULL;
	char boot[33] = "", mnt[PATH_MAX];
	uint64_t seq = 0;
	bool mirror_ok = false, itab_ok = false, mounted = false, handlers = false;
	int r, ret = 1;

	d->ttl = 3600;
	d->ttl_down = 1;
	d->op_timeout_ms = 10000;
	d->max_threads = 32;
	d->async_max = 256ull << 20;
	d->start_ms = now_ms();
	pthread_mutex_init(&d->sess_lock, NULL);
	pthread_mutex_init(&d->statfs_lock, NULL);
	pthread_mutex_init(&d->handles_lock, NULL);
	pthread_rwlockattr_t rwa;

	pthread_rwlockattr_init(&rwa);
	pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&d->mut_lock, &rwa);
	pthread_rwlockattr_destroy(&rwa);

	if (parse_args(d, &c, argc, argv) < 0)
		goto out;
	if (c.help) {
		usage(stdout);
		ret = 0;
		goto out;
	}
	if (c.version) {
		printf("devbox-fs %s (libdevbox %s, libfuse %d)\n", DEVBOX_VERSION, dbx_version(),
		       fuse_version());
		ret = 0;
		goto out;
	}
	/* Resolved now: the daemon later runs in "/" and must not look at it again. */
	if (!realpath(c.mountpoint, mnt)) {
		fprintf(stderr, "devbox-fs: mountpoint %s: %s\n", c.mountpoint, strerror(errno));
		goto out;
	}
	if (c.log_file && inside(mnt, c.log_file)) {
		fprintf(stderr, "devbox-fs: log file %s is inside the mountpoint %s\n", c.log_file,
			mnt);
		goto out;
	}
	if (c.log_file) {
		int fd = open(c.log_file, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC, 0600);

		if (fd < 0) {
			fprintf(stderr, "devbox-fs: log file %s: %s\n", c.log_file, strerror(errno));
			goto out;
		}
		log_fd = fd;
	}
	log_max = d->debug ? DFS_DEBUG : DFS_INFO;
	fuse_set_log_func(fuse_logger);
	dbx_set_log_hook(dbx_logger, d->debug ? 3 : 1, NULL);
	d->box = strdup(c.box);
	if (!d->box || (!d->stats_path && default_stats_path(d) < 0))
		goto out;
	/* The daemon never touches its own mount (a write there would wait for itself). */
	if (inside(mnt, d->stats_path)) {
		fprintf(stderr, "devbox-fs: stats file %s is inside the mountpoint %s\n",
			d->stats_path, mnt);
		goto out;
	}

	if (connect_box(d, &c) < 0)
		goto out;
	if (mirror_init(&d->mirror) < 0 || itab_init(&d->itab) < 0)
		goto out;
	mirror_ok = itab_ok = true;
	r = mirror_load(d, &d->mirror, &seq, boot);
	if (r < 0) {
		fprintf(stderr, "devbox-fs: %s: loading the tree: %s\n", c.box, dbx_error_last());
		goto out;
	}
	if (!S_ISDIR(d->mirror.root->attr.mode) || !itab_ref(d, "", &d->mirror.root->attr)) {
		fprintf(stderr, "devbox-fs: %s: workspace root is not a directory\n", c.box);
		goto out;
	}
	atomic_store(&d->st.last_event_seq, seq);
	atomic_store(&d->st.agent_seq, seq);
	dfs_log(DFS_DEBUG, "tree loaded: %zu entries at seq %llu", d->mirror.entries,
		(unsigned long long)seq);

	char *fsname = NULL;

	if (asprintf(&fsname, "fsname=devbox:%s,subtype=devbox-fs,max_read=%u", c.box, DFS_IO_MAX) <
		    0 ||
	    fuse_opt_add_arg(&args, argv[0]) < 0 || fuse_opt_add_arg(&args, "-o") < 0 ||
	    fuse_opt_add_arg(&args, fsname) < 0 ||
	    (c.fuse_opts &&
	     (fuse_opt_add_arg(&args, "-o") < 0 || fuse_opt_add_arg(&args, c.fuse_opts) < 0)) ||
	    (c.fuse_debug && fuse_opt_add_arg(&args, "-d") < 0)) {
		free(fsname);
		goto out;
	}
	free(fsname);
	d->se = fuse_session_new(&args, &dfs_ops, sizeof(dfs_ops), d);
	if (!d->se)
		goto out;
	if (fuse_set_signal_handlers(d->se) < 0)
		goto out;
	handlers = true;
	struct sigaction sa = {.sa_handler = on_usr1};

	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	if (fuse_session_mount(d->se, mnt) < 0)
		goto out;
	mounted = true;
	if (fuse_daemonize(c.foreground) < 0)
		goto out;

	if (notify_start(d) < 0)
		goto out;
	if (ra_start(d) < 0)
		dfs_log(DFS_WARN, "no read-ahead threads");
	if (d->echo_on && echo_start(d, mnt) < 0)
		dfs_log(DFS_WARN, "no echo thread: remote changes raise no inotify events");
	sigset_t all, old;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	events_start(d, boot, seq);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (stats_start(d) < 0)
		dfs_log(DFS_WARN, "no stats file");
	if (wq_start(d) < 0) {
		dfs_log(DFS_ERR, "no upload threads");
		goto stop;
	}
	dfs_log(DFS_INFO, "mounted %s on %s (%zu entries)", c.box, mnt, d->mirror.entries);

	lcfg = fuse_loop_cfg_create();
	if (!lcfg)
		goto stop;
	fuse_loop_cfg_set_max_threads(lcfg, d->max_threads);
	fuse_loop_cfg_set_clone_fd(lcfg, 0);
	r = fuse_session_loop_mt(d->se, lcfg);
	/* > 0: the signal that ended the loop (a requested stop); < 0: a failure. */
	ret = r < 0 ? 1 : 0;
	if (r < 0)
		dfs_log(DFS_ERR, "session loop: %s", strerror(-r));
stop:
	/* The mount goes first: storing the queued writes needs only the agent, and a process
	 * that touches the mount meanwhile gets an error at once instead of hanging until the
	 * drain is over (nobody serves the mount any more).  The replays of -o echo stop with it. */
	echo_stop(d);
	atomic_store(&d->mounted, false);
	if (mounted) {
		fuse_session_unmount(d->se);
		mounted = false;
	}
	/* Queued writes are stored (or reported lost) while everything else still runs. */
	if (wq_stop(d) != 0)
		ret = 1;
	ra_stop(d);
	events_stop(d);
	notify_stop(d);
	stats_stop(d);
out:
	if (mounted)
		fuse_session_unmount(d->se);
	if (handlers)
		fuse_remove_signal_handlers(d->se);
	if (d->se)
		fuse_session_destroy(d->se);
	echo_join(d); /* a replay blocked on the mount failed when the session closed */
	handles_free(d);
	if (lcfg)
		fuse_loop_cfg_destroy(lcfg);
	fuse_opt_free_args(&args);
	if (itab_ok) {
		itab_fini(d);
	}
	if (mirror_ok)
		mirror_fini(&d->mirror);
	dbx_client_free(d->client);
	pthread_mutex_destroy(&d->sess_lock);
	pthread_rwlock_destroy(&d->mut_lock);
	pthread_mutex_destroy(&d->statfs_lock);
	pthread_mutex_destroy(&d->handles_lock);
	free(d->box);
	free(d->stats_path);
	cli_free(&c);
	if (log_fd != STDERR_FILENO)
		close(log_fd);
	return ret;
}
