/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl mount / umount: start devbox-fs for a box, list devbox-fs mounts, unmount.
 *
 * Main thread only.  Logs and counters live in $XDG_STATE_HOME/devbox-fs/ (mount_file_path).
 * `mount BOX DIR` resolves BOX to its agent URL and token (provider or
 * $DEVBOX_TOKEN), checks that the agent answers and accepts the token, then starts
 * `devbox-fs -f URL DIR` in its own session with the token in its environment ($DEVBOX_TOKEN,
 * never on a command line), its stdout and stderr appended to a log file, and polls
 * /proc/self/mountinfo until DIR is a FUSE mount.  If the daemon exits first, or the wait
 * times out, what it logged is printed.  Everything the child needs (argv, envp, fds) is
 * prepared before fork(): libcurl may have started threads, so the child only calls
 * async-signal-safe functions before exec.
 */
#include "ctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FS_NAME      "devbox-fs"
#define LOG_TAIL_MAX 8192       /* bytes of the daemon's log shown when it fails */
#define STATS_MAX    (1u << 20) /* largest stats file read */

extern char **environ;

struct mnt {
	char *mountpoint; /* unescaped */
	char *fstype;
	char *source;
	char *superopts;
};

struct mnt_list {
	struct mnt *v;
	size_t n;
};

static void mnt_list_free(struct mnt_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].mountpoint);
		free(l->v[i].fstype);
		free(l->v[i].source);
		free(l->v[i].superopts);
	}
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static char *unescape(const char *s)
{
	char *d = malloc(strlen(s) + 1), *o = d;
	if (!d)
		return NULL;
	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
	return d;
}

/* Parses /proc/self/mountinfo; 0 or -errno. */
static int mounts_read(struct mnt_list *ret)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int r = 0;

	*ret = (struct mnt_list){0};
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		/* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
		char *save = NULL, *tok, *mp = NULL, *type = NULL, *src = NULL, *sopts = NULL;
		int field = 0;
		bool after_sep = false;
		line[strcspn(line, "\n")] = '\0';
		for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
			if (!after_sep) {
				if (field == 4)
					mp = tok;
				else if (field >= 6 && !strcmp(tok, "-"))
					after_sep = true;
				field++;
				continue;
			}
			if (!type)
				type = tok;
			else if (!src)
				src = tok;
			else if (!sopts)
				sopts = tok;
		}
		if (!mp || !type)
			continue;
		struct mnt *nv = realloc(ret->v, (ret->n + 1) * sizeof(*nv));
		if (!nv) {
			r = -ENOMEM;
			break;
		}
		ret->v = nv;
		struct mnt *m = &ret->v[ret->n++];
		*m = (struct mnt){
			.mountpoint = unescape(mp),
			.fstype = strdup(type),
			.source = unescape(src ? src : ""),
			.superopts = strdup(sopts ? sopts : ""),
		};
		if (!m->mountpoint || !m->fstype || !m->source || !m->superopts) {
			r = -ENOMEM;
			break;
		}
	}
	free(line);
	fclose(f);
	if (r < 0)
		mnt_list_free(ret);
	return r;
}

static bool is_fuse_type(const char *t)
{
	return !strcmp(t, "fuse") || !strncmp(t, "fuse.", 5);
}

/* devbox-fs mounts with subtype "devbox-fs" (earlier builds: "devbox") and fsname
 * "devbox:BOX"; started by mount.fuse3 the source may be the BOX argument as given. */
static bool is_devbox_mount(const struct mnt *m)
{
	return !strcmp(m->fstype, "fuse.devbox") || !strcmp(m->fstype, "fuse.devbox-fs") ||
	       (is_fuse_type(m->fstype) && (!strncmp(m->source, "devbox:", 7) ||
					    !strncmp(m->source, FS_NAME, strlen(FS_NAME))));
}

/* The topmost mount at path (the last one listed), or NULL. */
static const struct mnt *mount_at(const struct mnt_list *l, const char *path)
{
	for (size_t i = l->n; i-- > 0;)
		if (!strcmp(l->v[i].mountpoint, path))
			return &l->v[i];
	return NULL;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* What a FUSE mount whose daemon died answers. */
static bool dead_mount_errno(int e)
{
	return e == ENOTCONN || e == ECONNABORTED;
}

/* Absolute, symlink-free path of an existing directory into buf.  A path whose FUSE daemon
 * died cannot be resolved (ENOTCONN, ECONNABORTED): then the parent is resolved and the name
 * appended. */
static int resolve_dir(const char *dir, char *buf, size_t len)
{
	char tmp[PATH_MAX];
	if (realpath(dir, tmp)) {
		if (strlen(tmp) >= len)
			return -ENAMETOOLONG;
		strcpy(buf, tmp);
		return 0;
	}
	if (!dead_mount_errno(errno))
		return -errno;
	/* Resolve the parent and append the last component. */
	char copy[PATH_MAX];
	if (strlen(dir) >= sizeof(copy))
		return -ENAMETOOLONG;
	strcpy(copy, dir);
	size_t l = strlen(copy);
	while (l > 1 && copy[l - 1] == '/')
		copy[--l] = '\0';
	char *slash = strrchr(copy, '/');
	const char *name = slash ? slash + 1 : copy;
	const char *parent = slash ? (slash == copy ? "/" : copy) : ".";
	if (slash && slash != copy)
		*slash = '\0';
	if (!realpath(parent, tmp))
		return -errno;
	if ((size_t)snprintf(buf, len, "%s%s%s", tmp, strcmp(tmp, "/") ? "/" : "", name) >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* devbox-fs: $DEVBOX_FS, else next to this binary in the build tree (../fs/devbox-fs) or the
 * install tree (same directory), else the name, looked up in $PATH at exec time. */
static void find_fs_binary(char *buf, size_t len)
{
	const char *env = getenv("DEVBOX_FS");
	char self[PATH_MAX];
	ssize_t n;

	if (env && *env) {
		snprintf(buf, len, "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			static const char *const rel[] = {"/../fs/" FS_NAME, "/" FS_NAME};
			for (size_t i = 0; i < 2; i++) {
				if ((size_t)snprintf(buf, len, "%s%s", self, rel[i]) < len &&
				    access(buf, X_OK) == 0)
					return;
			}
		}
	}
	snprintf(buf, len, "%s", FS_NAME);
}

/* The environment for devbox-fs: ours without DEVBOX_TOKEN, plus DEVBOX_TOKEN=token when the
 * box has one.  The strings are borrowed from environ except *ret_tokvar (caller frees). */
static char **child_env(const char *token, char **ret_tokvar)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **envp = calloc(n + 2, sizeof(*envp));
	size_t k = 0;
	*ret_tokvar = NULL;
	if (!envp)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "DEVBOX_TOKEN=", 13))
			envp[k++] = environ[i];
	if (token && *token) {
		if (asprintf(ret_tokvar, "DEVBOX_TOKEN=%s", token) < 0) {
			free(envp);
			*ret_tokvar = NULL;
			return NULL;
		}
		envp[k++] = *ret_tokvar;
	}
	envp[k] = NULL;
	return envp;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	if (strlen(path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	strcpy(tmp, path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Per-mount files: $XDG_STATE_HOME/devbox-fs/<DIR with '/' as '_'><ext>, XDG_STATE_HOME used
 * only when absolute (as libdevbox/local.c does), else ~/.local/state: ".log" the daemon's
 * log, ".json" its counters.  Deliberately outside the local provider's root
 * ($XDG_STATE_HOME/devbox, one subdirectory per box), so that no box name can collide with it
 * and deleting a box never touches a live mount's files. */
static int mount_file_path(const char *absdir, const char *ext, char *buf, size_t len)
{
	const char *state = getenv("XDG_STATE_HOME");
	const char *home = getenv("HOME");
	char dir[PATH_MAX];
	int r;

	if (state && *state == '/')
		r = snprintf(dir, sizeof(dir), "%s/" FS_NAME, state);
	else if (home && *home)
		r = snprintf(dir, sizeof(dir), "%s/.local/state/" FS_NAME, home);
	else
		return -ENOENT;
	if (r < 0 || (size_t)r >= sizeof(dir))
		return -ENAMETOOLONG;
	r = mkdir_p(dir, 0700);
	if (r < 0)
		return r;
	if ((size_t)snprintf(buf, len, "%s/%s%s", dir, absdir[1] ? absdir + 1 : "root", ext) >= len)
		return -ENAMETOOLONG;
	for (char *p = buf + strlen(dir) + 1; *p; p++)
		if (*p == '/')
			*p = '_';
	return 0;
}

/* Prints what the daemon logged from offset `from` (at most the last LOG_TAIL_MAX bytes). */
static void print_log_tail(const char *path, off_t from)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_size > from) {
		off_t start = st.st_size - from > LOG_TAIL_MAX ? st.st_size - LOG_TAIL_MAX : from;
		char buf[4096];
		ssize_t n;
		bool any = false;
		while ((n = pread(fd, buf, sizeof(buf), start)) > 0) {
			if (!any)
				fprintf(stderr, "devboxctl: mount: the daemon said:\n");
			any = true;
			fwrite(buf, 1, (size_t)n, stderr);
			start += n;
		}
	}
	close(fd);
	fprintf(stderr, "devboxctl: mount: daemon log: %s\n", path);
}

/* 1 when a FUSE mount is at path, 0 when not, -errno on error. */
static int fuse_mounted_at(const char *path, const struct mnt **ret, struct mnt_list *l)
{
	int r = mounts_read(l);
	if (r < 0)
		return r;
	const struct mnt *m = mount_at(l, path);
	if (ret)
		*ret = m;
	return m && is_fuse_type(m->fstype);
}

/* Reads a small file (the stats JSON) into a NUL-terminated buffer; NULL on error. */
static char *read_small_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = NULL;
	size_t len = 0, cap = 0;

	if (fd < 0)
		return NULL;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			if (cap >= STATS_MAX) {
				free(buf);
				buf = NULL;
				break;
			}
			cap = cap ? cap * 2 : 8192;
			char *n = realloc(buf, cap);
			if (!n) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = n;
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(buf);
			buf = NULL;
			break;
		}
		if (r == 0) {
			buf[len] = '\0';
			break;
		}
		len += (size_t)r;
	}
	close(fd);
	return buf;
}

static cJSON *read_stats(const char *path)
{
	char *text = read_small_file(path);
	cJSON *j = text ? cJSON_Parse(text) : NULL;
	free(text);
	if (j && !cJSON_IsObject(j)) {
		cJSON_Delete(j);
		j = NULL;
	}
	return j;
}

static double json_num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* True when pid is a devbox-fs with absdir among its arguments (devboxctl passes the
 * mountpoint last; mount.fuse3 passes it second, before -o). */
static bool daemon_serves(pid_t pid, const char *absdir)
{
	char path[64], comm[32] = "", cmd[8192];
	ssize_t n;
	int fd;

	if (pid <= 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, comm, sizeof(comm) - 1);
	close(fd);
	if (n <= 0 || strncmp(comm, FS_NAME, strlen(FS_NAME)))
		return false;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, cmd, sizeof(cmd) - 1);
	close(fd);
	if (n <= 0)
		return false;
	cmd[n] = '\0';
	size_t want = strlen(absdir);
	for (const char *a = cmd + strlen(cmd) + 1; a < cmd + n; a += strlen(a) + 1) {
		size_t l = strlen(a);
		while (l > 1 && a[l - 1] == '/')
			l--;
		if (l == want && !strncmp(a, absdir, l))
			return true;
	}
	return false;
}

/* Finds the stats file of the daemon serving absdir: devboxctl's own path first, then the
 * daemon's default directory.  Returns the parsed JSON (caller's) or NULL. */
static cJSON *find_stats(const char *absdir, char *path, size_t len)
{
	cJSON *j;
	if (mount_file_path(absdir, ".json", path, len) == 0 && (j = read_stats(path))) {
		if (daemon_serves((pid_t)json_num(j, "pid"), absdir))
			return j;
		cJSON_Delete(j);
	}
	const char *rt = getenv("XDG_RUNTIME_DIR");
	char dir[PATH_MAX];
	if (rt && *rt)
		snprintf(dir, sizeof(dir), "%s/" FS_NAME, rt);
	else
		snprintf(dir, sizeof(dir), "/tmp/" FS_NAME "-%u", (unsigned)getuid());
	DIR *d = opendir(dir);
	if (!d)
		return NULL;
	struct dirent *de;
	j = NULL;
	while (!j && (de = readdir(d))) {
		size_t nl = strlen(de->d_name);
		if (nl < 6 || strcmp(de->d_name + nl - 5, ".json"))
			continue;
		if ((size_t)snprintf(path, len, "%s/%s", dir, de->d_name) >= len)
			continue;
		j = read_stats(path);
		if (j && !daemon_serves((pid_t)json_num(j, "pid"), absdir)) {
			cJSON_Delete(j);
			j = NULL;
		}
	}
	closedir(d);
	return j;
}

static void flatten(struct ctl_table *t, const char *prefix, const cJSON *o)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, o)
	{
		char key[256], val[64];
		snprintf(key, sizeof(key), "%s%s%s", prefix, *prefix ? "." : "", it->string);
		if (cJSON_IsObject(it)) {
			flatten(t, key, it);
			continue;
		}
		if (cJSON_IsNumber(it))
			snprintf(val, sizeof(val), "%.0f", it->valuedouble);
		else if (cJSON_IsBool(it))
			snprintf(val, sizeof(val), "%s", cJSON_IsTrue(it) ? "true" : "false");
		else if (cJSON_IsString(it))
			snprintf(val, sizeof(val), "%s", it->valuestring);
		else
			snprintf(val, sizeof(val), "-");
		ctl_table_add(t, key, val);
	}
}

/* `mount --stats DIR`: asks the daemon for fresh counters (SIGUSR1 rewrites its stats file)
 * and prints them. */
static int show_stats(struct ctl_global *g, const char *dir)
{
	char absdir[PATH_MAX], path[PATH_MAX];
	int r = resolve_dir(dir, absdir, sizeof(absdir));
	if (r < 0) {
		fprintf(stderr, "devboxctl: mount --stats %s: %s\n", dir, strerror(-r));
		return CTL_EXIT_FAIL;
	}
	struct mnt_list l;
	const struct mnt *m = NULL;
	r = fuse_mounted_at(absdir, &m, &l);
	bool ours = r == 1 && is_devbox_mount(m);
	mnt_list_free(&l);
	if (r < 0)
		return ctl_fail("mount: read /proc/self/mountinfo", r);
	if (!ours) {
		fprintf(stderr, "devboxctl: mount --stats %s: not a devbox-fs mount\n", dir);
		return CTL_EXIT_FAIL;
	}
	cJSON *j = find_stats(absdir, path, sizeof(path));
	if (!j) {
		fprintf(stderr,
			"devboxctl: mount --stats %s: no counters found (the daemon writes "
			"them where -o stats=FILE says)\n",
			dir);
		return CTL_EXIT_FAIL;
	}
	double updated = json_num(j, "updated");
	if (kill((pid_t)json_num(j, "pid"), SIGUSR1) == 0) {
		uint64_t deadline = now_ms() + 2000;
		while (now_ms() < deadline) {
			cJSON *n = read_stats(path);
			if (n && json_num(n, "updated") != updated) {
				cJSON_Delete(j);
				j = n;
				break;
			}
			cJSON_Delete(n);
			usleep(10000);
		}
	}
	if (g->output == CTL_OUT_JSON) {
		cJSON_AddStringToObject(j, "mountpoint", absdir);
		ctl_print_json(j);
		return CTL_EXIT_OK;
	}
	struct ctl_table *t = ctl_table_new(2, "COUNTER", "VALUE");
	ctl_table_add(t, "mountpoint", absdir);
	flatten(t, "", j);
	ctl_table_print(t, stdout);
	cJSON_Delete(j);
	return CTL_EXIT_OK;
}

static void mount_usage(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl mount [OPTIONS] BOX DIR\n"
		"       devboxctl mount [-o json|table]    (list devbox-fs mounts)\n"
		"       devboxctl mount --stats DIR        (counters of a mount)\n"
		"\n"
		"Mounts the workspace of BOX at the local directory DIR with devbox-fs, which\n"
		"keeps running in the background until `devboxctl umount DIR`.  BOX is a devbox\n"
		"name or an agent URL (http[s]://HOST:PORT, token in $DEVBOX_TOKEN).  Returns\n"
		"once DIR is mounted.  Without BOX and DIR, lists the devbox-fs mounts.\n"
		"\n"
		"Options:\n"
		"  -o OPTS            mount options for devbox-fs, comma-separated (e.g. soft,\n"
		"                     hard, ro, echo, allow_other; see devbox-fs --help).  Here\n"
		"                     -o is not the output format: `devboxctl -o json mount ...`\n"
		"                     prints JSON (`devboxctl mount -o json` alone lists in JSON)\n"
		"      --foreground   run devbox-fs in the foreground (systemd units, debugging):\n"
		"                     its log goes to stderr; returns when it exits\n"
		"      --log FILE     append the daemon's log to FILE (default\n"
		"                     $XDG_STATE_HOME/devbox-fs/<DIR>.log)\n"
		"      --wait SECONDS how long to wait for the mount to appear (default 30)\n"
		"      --stats DIR    print the counters of the devbox-fs mounted at DIR\n"
		"                     (operations, cache hits, agent requests, bytes, events)\n"
		"  -h, --help         this help\n"
		"\n"
		"devbox-fs is $DEVBOX_FS, else the devbox-fs next to devboxctl, else the one in\n"
		"$PATH.  The token reaches it through its environment, never its command line.\n"
		"Its log and counters are in $XDG_STATE_HOME/devbox-fs/ (default\n"
		"~/.local/state/devbox-fs/), apart from the boxes of the local provider; a\n"
		"mount made without devboxctl keeps its counters in the daemon's default\n"
		"$XDG_RUNTIME_DIR/devbox-fs/PID.json.\n"
		"The same mount without devboxctl:  mount -t fuse.devbox-fs BOX DIR -o OPTS\n"
		"or in /etc/fstab:  BOX  DIR  fuse.devbox-fs  OPTS,_netdev  0  0\n");
}

static int list_mounts(struct ctl_global *g)
{
	struct mnt_list l;
	int r = mounts_read(&l);
	if (r < 0)
		return ctl_fail("mount: read /proc/self/mountinfo", r);
	if (g->output == CTL_OUT_JSON) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 0; arr && i < l.n; i++) {
			if (!is_devbox_mount(&l.v[i]))
				continue;
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "mountpoint", l.v[i].mountpoint);
			cJSON_AddStringToObject(o, "source", l.v[i].source);
			cJSON_AddStringToObject(o, "type", l.v[i].fstype);
			cJSON_AddStringToObject(o, "options", l.v[i].superopts);
			cJSON_AddItemToArray(arr, o);
		}
		ctl_print_json(arr);
	} else {
		struct ctl_table *t = ctl_table_new(3, "MOUNTPOINT", "SOURCE", "OPTIONS");
		for (size_t i = 0; i < l.n; i++)
			if (is_devbox_mount(&l.v[i]))
				ctl_table_add(t, l.v[i].mountpoint, l.v[i].source,
					      l.v[i].superopts);
		ctl_table_print(t, stdout);
	}
	mnt_list_free(&l);
	return CTL_EXIT_OK;
}

/* Waits for the mount or the child's exit.  0 mounted, 1 the child exited (status in
 * *ret_status), -ETIMEDOUT, or -errno. */
static int wait_mounted(pid_t pid, const char *dir, int wait_s, int *ret_status)
{
	uint64_t deadline = now_ms() + (uint64_t)wait_s * 1000;
	unsigned sleep_us = 2000;
	for (;;) {
		struct mnt_list l;
		int r = fuse_mounted_at(dir, NULL, &l);
		mnt_list_free(&l);
		if (r < 0)
			return r;
		if (r == 1)
			return 0;
		int st;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid) {
			*ret_status = st;
			return 1;
		}
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
		usleep(sleep_us);
		if (sleep_us < 50000)
			sleep_us *= 2;
	}
}

/* Starts devbox-fs in its own session, its output appended to the log, and waits until absdir
 * is mounted or it exits.  Returns the exit status for the command. */
static int start_detached(struct ctl_global *g, const char *box, const char *dir,
			  const char *absdir, const char *fsbin, const char *const *args,
			  char *const *envp, const char *log, int wait_s)
{
	char logpath[PATH_MAX];
	int logfd = -1, nullfd = -1, r, code = CTL_EXIT_FAIL;

	if (log) {
		if ((size_t)snprintf(logpath, sizeof(logpath), "%s", log) >= sizeof(logpath)) {
			code = ctl_usage_error("mount", "--log: path too long");
			goto out;
		}
	} else if ((r = mount_file_path(absdir, ".log", logpath, sizeof(logpath))) < 0) {
		fprintf(stderr,
			"devboxctl: mount: cannot create the log directory "
			"$XDG_STATE_HOME/devbox-fs or ~/.local/state/devbox-fs: %s (use --log "
			"FILE)\n",
			strerror(-r));
		goto out;
	}
	logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (logfd < 0 || nullfd < 0) {
		fprintf(stderr, "devboxctl: mount: open %s: %s\n",
			logfd < 0 ? logpath : "/dev/null", strerror(errno));
		goto out;
	}
	off_t log_start = lseek(logfd, 0, SEEK_END);
	if (log_start < 0)
		log_start = 0;

	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		code = ctl_fail("mount: fork", -errno);
		goto out;
	}
	if (pid == 0) {
		/* Own session: a Ctrl-C or hangup of this terminal must not end the mount. */
		setsid();
		if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
			_exit(127);
		if (chdir("/") < 0)
			_exit(127);
		execvpe(fsbin, (char *const *)args, envp);
		static const char msg[] =
			"devboxctl: mount: cannot run devbox-fs (not found or not "
			"executable; set $DEVBOX_FS)\n";
		if (write(2, msg, sizeof(msg) - 1) < 0)
			_exit(127);
		_exit(127);
	}

	int status = 0;
	r = wait_mounted(pid, absdir, wait_s, &status);
	if (r == 0) {
		if (!g->quiet && g->output != CTL_OUT_JSON)
			fprintf(stderr, "mounted %s at %s (devbox-fs pid %d, log %s)\n", box,
				absdir, (int)pid, logpath);
		if (g->output == CTL_OUT_JSON) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "mountpoint", absdir);
			cJSON_AddStringToObject(o, "box", box);
			cJSON_AddNumberToObject(o, "pid", pid);
			cJSON_AddStringToObject(o, "log", logpath);
			ctl_print_json(o);
		}
		code = CTL_EXIT_OK;
		goto out;
	}
	if (r == 1) {
		if (WIFEXITED(status))
			fprintf(stderr,
				"devboxctl: mount %s: devbox-fs exited with status %d before "
				"the mount appeared\n",
				dir, WEXITSTATUS(status));
		else
			fprintf(stderr,
				"devboxctl: mount %s: devbox-fs died of signal %d before the "
				"mount appeared\n",
				dir, WTERMSIG(status));
	} else {
		fprintf(stderr, "devboxctl: mount %s: %s\n", dir,
			r == -ETIMEDOUT ? "the mount did not appear in time; stopping devbox-fs"
					: strerror(-r));
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
	print_log_tail(logpath, log_start);
out:
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return code;
}

int ctl_cmd_mount(struct ctl_global *g, int argc, char **argv)
{
	enum { O_FOREGROUND = 256, O_LOG, O_WAIT, O_STATS };
	static const struct option opts[] = {
		{"foreground", no_argument, NULL, O_FOREGROUND},
		{"stats", required_argument, NULL, O_STATS},
		{"log", required_argument, NULL, O_LOG},
		{"wait", required_argument, NULL, O_WAIT},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *mopts = NULL, *log = NULL, *stats_dir = NULL;
	bool foreground = false;
	int wait_s = 30, c, r, code = CTL_EXIT_FAIL;
	char absdir[PATH_MAX], fsbin[PATH_MAX], statspath[PATH_MAX];
	char *tokvar = NULL, **envp = NULL, *end, *allopts = NULL;
	dbx_client *client = NULL;
	long v;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			mopts = optarg;
			break;
		case O_FOREGROUND:
			foreground = true;
			break;
		case O_LOG:
			log = optarg;
			break;
		case O_STATS:
			stats_dir = optarg;
			break;
		case O_WAIT:
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || *end || v <= 0 || v > 3600)
				return ctl_usage_error("mount",
						       "--wait: '%s' is not a number of "
						       "seconds (1-3600)",
						       optarg);
			wait_s = (int)v;
			break;
		case 'h':
			mount_usage(stdout);
			return CTL_EXIT_OK;
		default:
			return ctl_bad_option("mount", c, argv);
		}
	}
	if (stats_dir) {
		if (optind != argc || mopts || foreground || log)
			return ctl_usage_error("mount", "--stats takes only DIR");
		return show_stats(g, stats_dir);
	}
	if (optind == argc && !foreground && !log) {
		/* `devboxctl mount -o json` means the listing's format, not mount options. */
		if (mopts && !strcmp(mopts, "json"))
			g->output = CTL_OUT_JSON;
		else if (mopts && strcmp(mopts, "table"))
			return ctl_usage_error("mount", "expected BOX and DIR");
		return list_mounts(g);
	}
	if (argc - optind != 2)
		return ctl_usage_error("mount", "expected BOX and DIR");
	const char *box = argv[optind], *dir = argv[optind + 1];

	r = resolve_dir(dir, absdir, sizeof(absdir));
	if (dead_mount_errno(-r) ||
	    (r == 0 && access(absdir, F_OK) < 0 && dead_mount_errno(errno))) {
		fprintf(stderr,
			"devboxctl: mount %s: a previous mount's daemon is gone (transport "
			"endpoint is not connected); run `devboxctl umount %s` first\n",
			dir, dir);
		return CTL_EXIT_FAIL;
	}
	if (r < 0) {
		fprintf(stderr, "devboxctl: mount %s: %s\n", dir, strerror(-r));
		return CTL_EXIT_FAIL;
	}
	struct stat st;
	if (stat(absdir, &st) < 0) {
		fprintf(stderr, "devboxctl: mount %s: %s\n", dir, strerror(errno));
		return CTL_EXIT_FAIL;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "devboxctl: mount %s: not a directory\n", dir);
		return CTL_EXIT_FAIL;
	}
	{
		struct mnt_list l;
		const struct mnt *m = NULL;
		r = fuse_mounted_at(absdir, &m, &l);
		if (r == 1)
			fprintf(stderr, "devboxctl: mount %s: already a FUSE mount (%s from %s)\n",
				dir, m->fstype, m->source);
		mnt_list_free(&l);
		if (r == 1)
			return CTL_EXIT_FAIL;
		if (r < 0)
			return ctl_fail("mount: read /proc/self/mountinfo", r);
	}

	code = ctl_connect(g, box, &client);
	if (code)
		return code;
	code = CTL_EXIT_FAIL; /* until the mount is there */
	/* An authenticated call, so that a wrong token fails here with a clear message and 255
	 * instead of in the daemon. */
	struct statvfs vfs;
	r = dbx_fs_statfs(client, &vfs);
	if (r < 0) {
		code = ctl_fail("mount: reach the agent", r);
		goto out;
	}
	find_fs_binary(fsbin, sizeof(fsbin));
	envp = child_env(dbx_client_token(client), &tokvar);
	if (!envp) {
		code = ctl_fail("mount", -ENOMEM);
		goto out;
	}
	/* The counters go next to the log, where `mount --stats DIR` finds them. */
	if (!(mopts && strstr(mopts, "stats=")) &&
	    mount_file_path(absdir, ".json", statspath, sizeof(statspath)) == 0) {
		if (asprintf(&allopts, "stats=%s%s%s", statspath, mopts ? "," : "",
			     mopts ? mopts : "") < 0) {
			allopts = NULL;
			code = ctl_fail("mount", -ENOMEM);
			goto out;
		}
		mopts = allopts;
	}
	const char *args[8];
	int na = 0;
	args[na++] = fsbin;
	args[na++] = "-f";
	if (mopts) {
		args[na++] = "-o";
		args[na++] = mopts;
	}
	args[na++] = dbx_client_url(client);
	args[na++] = absdir;
	args[na] = NULL;

	if (foreground) {
		fflush(NULL);
		execvpe(fsbin, (char *const *)args, envp);
		fprintf(stderr, "devboxctl: mount: cannot run %s: %s\n", fsbin, strerror(errno));
		goto out;
	}

	code = start_detached(g, box, dir, absdir, fsbin, args, envp, log, wait_s);
out:
	free(envp);
	free(tokvar);
	free(allopts);
	dbx_client_free(client);
	return code;
}

static void umount_usage(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl umount [OPTIONS] DIR\n"
		"\n"
		"Unmounts the devbox-fs mount at DIR (fusermount3 -u); devbox-fs then exits.\n"
		"A mount whose daemon is gone (\"Transport endpoint is not connected\") is\n"
		"detached lazily.\n"
		"\n"
		"Options:\n"
		"  -f, -z, --lazy     detach now even if the mount is busy (open files, a shell's\n"
		"                     working directory); it goes away when the last user leaves\n"
		"  -h, --help         this help\n");
}

/* Runs fusermount3 -u [-z] -- dir; returns its exit status or -errno. */
static int run_fusermount(const char *dir, bool lazy)
{
	const char *args[6];
	int n = 0, st;
	args[n++] = "fusermount3";
	args[n++] = "-u";
	if (lazy)
		args[n++] = "-z";
	args[n++] = "--";
	args[n++] = dir;
	args[n] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execvp(args[0], (char *const *)args);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		return -ENOENT;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int ctl_cmd_umount(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"lazy", no_argument, NULL, 'z'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool lazy = false;
	int c, r;
	char absdir[PATH_MAX];

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:fzo:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
		case 'z':
			lazy = true;
			break;
		case 'o':
			return ctl_no_output("umount");
		case 'h':
			umount_usage(stdout);
			return CTL_EXIT_OK;
		default:
			return ctl_bad_option("umount", c, argv);
		}
	}
	if (argc - optind != 1)
		return ctl_usage_error("umount", "expected DIR");
	const char *dir = argv[optind];
	r = resolve_dir(dir, absdir, sizeof(absdir));
	if (r < 0) {
		fprintf(stderr, "devboxctl: umount %s: %s\n", dir, strerror(-r));
		return CTL_EXIT_FAIL;
	}

	struct mnt_list l;
	const struct mnt *m = NULL;
	r = fuse_mounted_at(absdir, &m, &l);
	bool devbox = r == 1 && is_devbox_mount(m);
	char fstype[64] = "";
	if (m)
		snprintf(fstype, sizeof(fstype), "%s", m->fstype);
	mnt_list_free(&l);
	if (r < 0)
		return ctl_fail("umount: read /proc/self/mountinfo", r);
	if (r == 0) {
		fprintf(stderr, "devboxctl: umount %s: %s\n", dir,
			fstype[0] ? "not a FUSE mount" : "not mounted");
		return CTL_EXIT_FAIL;
	}
	if (!devbox && !g->quiet)
		fprintf(stderr, "devboxctl: umount %s: note: a %s mount, not devbox-fs\n", dir,
			fstype);

	/* A daemon that crashed leaves the mount answering ENOTCONN or ECONNABORTED ("Transport
	 * endpoint is not connected"): only a lazy detach works. */
	struct stat st;
	bool dead = stat(absdir, &st) < 0 && dead_mount_errno(errno);
	r = run_fusermount(absdir, lazy || dead);
	if (r == -ENOENT) {
		fprintf(stderr, "devboxctl: umount %s: fusermount3 not found (install fuse3)\n",
			dir);
		return CTL_EXIT_FAIL;
	}
	if (r != 0) {
		fprintf(stderr, "devboxctl: umount %s: fusermount3 failed%s\n", dir,
			lazy || dead ? ""
				     : " (busy? `devboxctl umount --lazy` detaches it anyway)");
		return CTL_EXIT_FAIL;
	}
	if (dead && !g->quiet)
		fprintf(stderr, "devboxctl: umount %s: the daemon was gone; mount detached\n", dir);
	return CTL_EXIT_OK;
}
