/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The local provider: a devbox is a directory $HOME_ROOT/<name>/ holding
 *   workspace/   the files
 *   state.json   0600, written atomically (temp + rename): status, agent pid + start time,
 *                port, token, creation time — the truth, checked against /proc on every read
 *   agent.log    the agent's stdout and stderr
 * served by a devbox-agent started here as a daemon (double fork + setsid) on 127.0.0.1 with
 * an ephemeral port (read from its "listening on HOST:PORT" line) and a random token.
 *
 * pause = SIGSTOP the agent and every descendant; start from Paused = SIGCONT; shutdown =
 * SIGTERM the agent (it ends its children), then SIGKILL what is left; start from
 * Stopped/Error = a new agent.  A dead or unresponsive agent (pid gone, pid reused — the
 * start time from /proc/PID/stat differs — or /health failing) shows as status "Error" with a
 * reason, and so does a box whose state file is unusable (truncated, edited); delete removes
 * such a box, and a directory a failed delete left behind.  State changes hold flock() on
 * $HOME_ROOT/.lock so concurrent devboxctl runs do not race.  Not a security boundary: the agent
 * runs as the user.
 *
 * Threads: one per provider handle (provider.h).  fork() children only call
 * async-signal-safe functions before execve().
 */
#include "provider_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define STATE_FILE          "state.json"
#define LOG_FILE            "agent.log"
#define TOKEN_LEN           32
#define START_TIMEOUT_MS    20000
#define STOP_TIMEOUT_MS     10000
#define HEALTH_TIMEOUT_MS   2000
#define STATE_MAX           (64u << 10)
#define MONITOR_INTERVAL_MS 200

struct local {
	char *home;      /* provider root, absolute */
	char *agent_cfg; /* cfg->agent_path or NULL */
	int lock_fd;     /* $home/.lock while a state change is in progress, else -1 */
};

struct state {
	char name[64];
	char status[16];          /* Running, Paused, Stopped */
	pid_t pid;                /* 0 when no agent */
	unsigned long long start; /* /proc/PID/stat field 22 of that agent */
	int port;
	char token[TOKEN_LEN + 1];
	int64_t created_ms;
	char **env; /* "K=V" given at create, for every agent of the box; n_env entries */
	size_t n_env;
};

static void state_clear(struct state *st)
{
	explicit_bzero(st->token, sizeof(st->token));
	for (size_t i = 0; i < st->n_env; i++)
		free(st->env[i]);
	free(st->env);
	st->env = NULL;
	st->n_env = 0;
}

/* Environment names the agent's own configuration uses. */
static bool env_reserved(const char *kv)
{
	static const char *const names[] = {
		"ADDR=", "WORKSPACE_PATH=", "TOKEN=", "DEVBOX_JWT_SECRET=", "MAX_FILE_SIZE="};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strncmp(kv, names[i], strlen(names[i])))
			return true;
	return false;
}

/* Same variable name in two "K=V" strings? */
static bool env_same_name(const char *a, const char *b)
{
	size_t n = strcspn(a, "=");
	return !strncmp(a, b, n) && b[n] == '=';
}

static struct local *L(dbx_provider *p)
{
	return p->priv;
}

/* ---- paths, lock, state file ----------------------------------------------------------- */

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *s = buf + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static char *box_path(struct local *l, const char *name, const char *file)
{
	char *s;
	if (asprintf(&s, "%s/%s%s%s", l->home, name, file ? "/" : "", file ? file : "") < 0)
		return NULL;
	return s;
}

static int lock_home(struct local *l, const char *op)
{
	char *path;
	if (asprintf(&path, "%s/.lock", l->home) < 0)
		return dbx__error(ENOMEM, "%s: out of memory", op);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		int e = errno;
		dbx__error(e, "%s: lock %s: %s", op, path, strerror(e));
		free(path);
		return -e;
	}
	free(path);
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int e = errno;
			close(fd);
			return dbx__error(e, "%s: lock %s/.lock: %s", op, l->home, strerror(e));
		}
	}
	l->lock_fd = fd;
	return 0;
}

static void unlock_home(struct local *l)
{
	if (l->lock_fd >= 0) {
		close(l->lock_fd); /* releases the flock */
		l->lock_fd = -1;
	}
}

static int state_load(struct local *l, const char *op, const char *name, struct state *st)
{
	char *path = box_path(l, name, STATE_FILE);
	char buf[STATE_MAX];
	cJSON *j = NULL;
	ssize_t n = 0;
	int fd, r = 0;

	memset(st, 0, sizeof(*st));
	if (!path)
		return dbx__error(ENOMEM, "%s %s: out of memory", op, name);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		r = errno == ENOENT
			    ? dbx__error(ENOENT, "%s %s: devbox '%s' not found", op, name, name)
			    : dbx__error(errno, "%s %s: %s: %s", op, name, path, strerror(errno));
		goto out;
	}
	size_t got = 0;
	while (got < sizeof(buf) && (n = read(fd, buf + got, sizeof(buf) - got)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (n < 0 || got == sizeof(buf)) {
		r = dbx__error(n < 0 ? errno : EFBIG, "%s %s: read %s: %s", op, name, path,
			       n < 0 ? strerror(errno) : "too large");
		goto out;
	}
	j = cJSON_ParseWithLength(buf, got);
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(j, "status");
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(j, "agent_pid");
	const cJSON *start = cJSON_GetObjectItemCaseSensitive(j, "agent_start");
	const cJSON *port = cJSON_GetObjectItemCaseSensitive(j, "port");
	const cJSON *token = cJSON_GetObjectItemCaseSensitive(j, "token");
	const cJSON *created = cJSON_GetObjectItemCaseSensitive(j, "created_ms");
	if (!cJSON_IsString(status) || !cJSON_IsNumber(pid) || !cJSON_IsString(start) ||
	    !cJSON_IsNumber(port) || !cJSON_IsString(token) || !cJSON_IsNumber(created) ||
	    strlen(status->valuestring) >= sizeof(st->status) ||
	    strlen(token->valuestring) >= sizeof(st->token) || !(pid->valuedouble >= 0) ||
	    pid->valuedouble > INT_MAX || !(port->valuedouble >= 0) || port->valuedouble > 65535 ||
	    !(created->valuedouble > -1e15 && created->valuedouble < 1e15) ||
	    (strcmp(status->valuestring, "Running") && strcmp(status->valuestring, "Paused") &&
	     strcmp(status->valuestring, "Stopped"))) {
		r = dbx__error(EBADMSG, "%s %s: %s: not a devbox state file", op, name, path);
		goto out;
	}
	snprintf(st->name, sizeof(st->name), "%s", name);
	snprintf(st->status, sizeof(st->status), "%s", status->valuestring);
	snprintf(st->token, sizeof(st->token), "%s", token->valuestring);
	st->pid = (pid_t)pid->valuedouble;
	st->start = strtoull(start->valuestring, NULL, 10);
	st->port = (int)port->valuedouble;
	st->created_ms = (int64_t)created->valuedouble;
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(j, "env");
	if (cJSON_IsArray(env) && cJSON_GetArraySize(env) > 0) {
		st->env = calloc((size_t)cJSON_GetArraySize(env), sizeof(*st->env));
		if (!st->env) {
			r = dbx__error(ENOMEM, "%s %s: out of memory", op, name);
			goto out;
		}
		const cJSON *e;
		cJSON_ArrayForEach(e, env)
		{
			if (!cJSON_IsString(e) || !strchr(e->valuestring, '='))
				continue;
			if (!(st->env[st->n_env] = strdup(e->valuestring))) {
				r = dbx__error(ENOMEM, "%s %s: out of memory", op, name);
				goto out;
			}
			st->n_env++;
		}
	}
out:
	if (r < 0)
		state_clear(st);
	cJSON_Delete(j);
	explicit_bzero(buf, sizeof(buf));
	free(path);
	return r;
}

static int state_save(struct local *l, const char *op, const struct state *st)
{
	char *path = box_path(l, st->name, STATE_FILE), *tmp = NULL, *text = NULL;
	char startbuf[32];
	cJSON *j = cJSON_CreateObject(), *envj = NULL;
	int fd = -1, r = 0;

	snprintf(startbuf, sizeof(startbuf), "%llu", st->start);
	if (!path || !j || asprintf(&tmp, "%s.tmp", path) < 0 ||
	    !cJSON_AddStringToObject(j, "name", st->name) ||
	    !cJSON_AddStringToObject(j, "status", st->status) ||
	    !cJSON_AddNumberToObject(j, "agent_pid", st->pid) ||
	    !cJSON_AddStringToObject(j, "agent_start", startbuf) ||
	    !cJSON_AddNumberToObject(j, "port", st->port) ||
	    !cJSON_AddStringToObject(j, "token", st->token) ||
	    !cJSON_AddNumberToObject(j, "created_ms", (double)st->created_ms) ||
	    !(envj = cJSON_AddArrayToObject(j, "env"))) {
		r = dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
		goto out;
	}
	for (size_t i = 0; i < st->n_env; i++) {
		cJSON *e = cJSON_CreateString(st->env[i]);
		if (!e || !cJSON_AddItemToArray(envj, e)) {
			cJSON_Delete(e);
			r = dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
			goto out;
		}
	}
	text = cJSON_Print(j);
	if (!text) {
		r = dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
		goto out;
	}
	errno = 0; /* a short write leaves errno alone */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	size_t len = strlen(text);
	if (fd < 0 || fchmod(fd, 0600) < 0 || write(fd, text, len) != (ssize_t)len ||
	    write(fd, "\n", 1) != 1 || fsync(fd) < 0) {
		r = dbx__error(errno ? errno : EIO, "%s %s: write %s: %s", op, st->name, tmp,
			       strerror(errno ? errno : EIO));
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = dbx__error(errno, "%s %s: write %s: %s", op, st->name, tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		r = dbx__error(errno, "%s %s: rename %s: %s", op, st->name, path, strerror(errno));
		goto out;
	}
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && tmp)
		unlink(tmp);
	if (text) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
	cJSON_Delete(j);
	free(tmp);
	free(path);
	return r;
}

/* ---- /proc ----------------------------------------------------------------------------- */

struct pstat {
	char state;
	pid_t ppid;
	unsigned long long utime, stime, start;
};

static int proc_stat(pid_t pid, struct pstat *ps)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -ESRCH;
	buf[n] = '\0';
	/* comm may hold spaces and ')'; the fields start after the last ')'. */
	char *s = strrchr(buf, ')');
	if (!s)
		return -EBADMSG;
	int ppid;
	/* fields 3 state, 4 ppid, 14 utime, 15 stime, 22 starttime */
	if (sscanf(s + 2,
		   "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
		   "%*d %llu",
		   &ps->state, &ppid, &ps->utime, &ps->stime, &ps->start) != 5)
		return -EBADMSG;
	ps->ppid = ppid;
	return 0;
}

/* True when st's agent process is still the one we started (and not a zombie). */
static bool agent_alive(const struct state *st, struct pstat *ret_ps)
{
	struct pstat ps;
	if (st->pid <= 0 || proc_stat(st->pid, &ps) < 0 || ps.start != st->start ||
	    ps.state == 'Z' || ps.state == 'X')
		return false;
	if (ret_ps)
		*ret_ps = ps;
	return true;
}

struct pidset {
	pid_t *v;
	size_t n, cap;
};

static int pidset_add(struct pidset *s, pid_t pid)
{
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 32;
		pid_t *nv = realloc(s->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		s->v = nv;
		s->cap = nc;
	}
	s->v[s->n++] = pid;
	return 0;
}

/* root and all its descendants (root first), from one scan of /proc. */
static int proc_tree(pid_t root, struct pidset *out)
{
	struct pidset all = {0}, parents = {0};
	DIR *d = opendir("/proc");
	struct dirent *de;
	int r = 0;

	out->n = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		struct pstat ps;
		if (*end || pid <= 0 || proc_stat((pid_t)pid, &ps) < 0)
			continue;
		if ((r = pidset_add(&all, (pid_t)pid)) < 0 ||
		    (r = pidset_add(&parents, ps.ppid)) < 0)
			goto out;
	}
	if ((r = pidset_add(out, root)) < 0)
		goto out;
	for (size_t i = 0; i < out->n; i++) /* breadth first: out grows while we walk it */
		for (size_t k = 0; k < all.n; k++)
			if (parents.v[k] == out->v[i] && all.v[k] != root &&
			    (r = pidset_add(out, all.v[k])) < 0)
				goto out;
out:
	closedir(d);
	free(all.v);
	free(parents.v);
	return r;
}

static void signal_tree(const struct pidset *t, int sig)
{
	for (size_t i = 0; i < t->n; i++)
		kill(t->v[i], sig);
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Through the pidfd when there is one (never to a process that reused the pid). */
static void signal_agent(int pidfd, pid_t pid, int sig)
{
	if (pidfd >= 0)
		syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0U);
	else
		kill(pid, sig);
}

/* Waits until the process behind pidfd (or pid, without one) exits; true if it did. */
static bool wait_exit(int pidfd, const struct state *st, int timeout_ms)
{
	uint64_t deadline = dbx_now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		if (pidfd >= 0) {
			struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
			if (poll(&pfd, 1, 20) > 0)
				return true;
		} else {
			if (!agent_alive(st, NULL))
				return true;
			sleep_ms(20);
		}
		if (dbx_now_ms() >= deadline)
			return !agent_alive(st, NULL);
	}
}

/* ---- agent process --------------------------------------------------------------------- */

static bool executable(const char *path)
{
	struct stat sb;
	return access(path, X_OK) == 0 && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int find_agent(struct local *l, const char *op, char **ret)
{
	const char *given = l->agent_cfg ? l->agent_cfg : getenv("DEVBOX_AGENT");
	char self[PATH_MAX], *cand = NULL;

	*ret = NULL;
	if (given && *given) {
		if (!executable(given))
			return dbx__error(ENOENT, "%s: agent %s: not an executable file", op,
					  given);
		*ret = strdup(given);
		return *ret ? 0 : dbx__error(ENOMEM, "%s: out of memory", op);
	}
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			static const char *const rel[] = {"devbox-agent", "../agent/devbox-agent"};
			for (size_t i = 0; i < 2; i++) {
				if (asprintf(&cand, "%s/%s", self, rel[i]) < 0)
					return dbx__error(ENOMEM, "%s: out of memory", op);
				if (executable(cand)) {
					*ret = cand;
					return 0;
				}
				free(cand);
				cand = NULL;
			}
		}
	}
	const char *path = getenv("PATH");
	while (path && *path) {
		size_t len = strcspn(path, ":");
		if (len) {
			if (asprintf(&cand, "%.*s/devbox-agent", (int)len, path) < 0)
				return dbx__error(ENOMEM, "%s: out of memory", op);
			if (executable(cand)) {
				*ret = cand;
				return 0;
			}
			free(cand);
			cand = NULL;
		}
		path += len + (path[len] == ':');
	}
	return dbx__error(ENOENT,
			  "%s: devbox-agent not found (not next to the program, not in "
			  "$PATH); set $DEVBOX_AGENT or --agent",
			  op);
}

/* Remembers a non-empty log line (truncated) for error messages. */
static void keep_line(char *last, size_t lastlen, const char *line)
{
	size_t m = strnlen(line, lastlen - 1);
	if (m == 0)
		return;
	memcpy(last, line, m);
	last[m] = '\0';
}

/* The first "listening on HOST:PORT" line written to log fd at or after *off; *off moves
 * past the complete lines read, so any amount of earlier output is skipped. */
static int read_port(int logfd, off_t *off, int *ret_port, char *last, size_t lastlen)
{
	char buf[4096];
	ssize_t n = pread(logfd, buf, sizeof(buf) - 1, *off);
	if (n <= 0)
		return -EAGAIN;
	buf[n] = '\0';
	char *line = buf, *nl;
	while ((nl = memchr(line, '\n', (size_t)(buf + n - line)))) {
		*nl = '\0';
		const char *colon = strrchr(line, ':');
		if (!strncmp(line, "listening on ", 13) && colon) {
			*ret_port = atoi(colon + 1);
			return *ret_port > 0 && *ret_port <= 65535 ? 0 : -EBADMSG;
		}
		keep_line(last, lastlen, line);
		line = nl + 1;
	}
	if (line == buf && n == (ssize_t)sizeof(buf) - 1)
		line = buf + n; /* one line longer than the buffer: not the one we want */
	else
		keep_line(last, lastlen, line);
	*off += line - buf;
	return -EAGAIN;
}

/* Starts a new agent for st (fills pid, start, port; keeps the token). */
static int spawn_agent(struct local *l, const char *op, struct state *st)
{
	char *agent = NULL, *dir = box_path(l, st->name, NULL), *ws = NULL, *logp = NULL;
	char *env_addr = NULL, *env_ws = NULL, *env_tok = NULL;
	char **envp = NULL;
	int logfd = -1, nullfd = -1, pfd[2] = {-1, -1}, pidfd = -1, r;
	pid_t pid = 0;

	if (!dir || asprintf(&ws, "%s/workspace", dir) < 0 ||
	    asprintf(&logp, "%s/" LOG_FILE, dir) < 0 ||
	    asprintf(&env_addr, "ADDR=127.0.0.1:0") < 0 ||
	    asprintf(&env_ws, "WORKSPACE_PATH=%s", ws) < 0 ||
	    asprintf(&env_tok, "TOKEN=%s", st->token) < 0) {
		r = dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
		goto out;
	}
	r = find_agent(l, op, &agent);
	if (r < 0)
		goto out;
	size_t ne = 0;
	for (char **e = environ; e && *e; e++)
		ne++;
	envp = calloc(ne + st->n_env + 5, sizeof(*envp));
	if (!envp) {
		r = dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
		goto out;
	}
	size_t k = 0;
	for (char **e = environ; e && *e; e++) {
		bool keep = !env_reserved(*e);
		for (size_t i = 0; keep && i < st->n_env; i++)
			keep = !env_same_name(st->env[i], *e);
		if (keep)
			envp[k++] = *e;
	}
	for (size_t i = 0; i < st->n_env; i++)
		envp[k++] = st->env[i];
	envp[k++] = env_addr;
	envp[k++] = env_ws;
	envp[k++] = env_tok;
	/* The official agent's 100 MiB default protects a shared pod; a local box is the user's
	 * own disk, so files of any size can be written and copied (the disk is the limit). */
	static char env_max[] = "MAX_FILE_SIZE=1099511627776";
	envp[k++] = env_max;

	logfd = open(logp, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (logfd < 0 || nullfd < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
		r = dbx__error(errno, "%s %s: %s: %s", op, st->name, logp, strerror(errno));
		goto out;
	}
	off_t off = lseek(logfd, 0, SEEK_END);
	char *const argv[] = {agent, NULL};

	pid_t child = fork();
	if (child < 0) {
		r = dbx__error(errno, "%s %s: fork: %s", op, st->name, strerror(errno));
		goto out;
	}
	if (child == 0) {
		/* Async-signal-safe only from here on. */
		setsid();
		pid_t gc = fork();
		if (gc == 0) {
			sigset_t none;
			sigemptyset(&none);
			for (int s = 1; s < NSIG; s++)
				if (s != SIGKILL && s != SIGSTOP)
					signal(s, SIG_DFL);
			sigprocmask(SIG_SETMASK, &none, NULL);
			if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0 ||
			    chdir(ws) < 0)
				_exit(127);
			/* Nothing of the caller's leaks into the daemon, CLOEXEC or not. */
			syscall(SYS_close_range, 3U, ~0U, 0U);
			execve(agent, argv, envp);
			_exit(127);
		}
		ssize_t w = write(pfd[1], &gc, sizeof(gc));
		_exit(gc > 0 && w == (ssize_t)sizeof(gc) ? 0 : 1);
	}
	close(pfd[1]);
	pfd[1] = -1;
	int wst;
	while (waitpid(child, &wst, 0) < 0 && errno == EINTR)
		;
	ssize_t got;
	while ((got = read(pfd[0], &pid, sizeof(pid))) < 0 && errno == EINTR)
		;
	if (got != (ssize_t)sizeof(pid) || pid <= 0) {
		r = dbx__error(ECHILD, "%s %s: could not start %s", op, st->name, agent);
		pid = 0;
		goto out;
	}
	pidfd = pidfd_open_(pid);
	struct pstat ps;
	char last[256] = "";
	int port = 0;
	if (proc_stat(pid, &ps) < 0) {
		read_port(logfd, &off, &port, last, sizeof(last));
		r = dbx__error(ECHILD, "%s %s: the agent exited before listening%s%s", op, st->name,
			       last[0] ? ": " : "", last);
		pid = 0;
		goto out;
	}
	st->pid = pid;
	st->start = ps.start;

	uint64_t deadline = dbx_now_ms() + START_TIMEOUT_MS;
	for (;;) {
		r = read_port(logfd, &off, &port, last, sizeof(last));
		if (r == 0) {
			st->port = port;
			break;
		}
		bool exited;
		if (pidfd >= 0) {
			struct pollfd p = {.fd = pidfd, .events = POLLIN};
			exited = poll(&p, 1, 10) > 0;
		} else {
			exited = !agent_alive(st, NULL);
			sleep_ms(10);
		}
		if (exited) {
			read_port(logfd, &off, &port, last, sizeof(last));
			r = dbx__error(ECHILD, "%s %s: the agent exited before listening%s%s", op,
				       st->name, last[0] ? ": " : "", last);
			st->pid = 0;
			pid = 0;
			goto out;
		}
		if (dbx_now_ms() >= deadline) {
			r = dbx__error(ETIMEDOUT,
				       "%s %s: the agent did not report its port within "
				       "%d ms (log %s)",
				       op, st->name, START_TIMEOUT_MS, logp);
			goto out;
		}
	}
	r = 0;
	pid = 0; /* keep it running */
out:
	if (pid > 0) { /* started but unusable */
		kill(pid, SIGKILL);
		st->pid = 0;
	}
	if (pidfd >= 0)
		close(pidfd);
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	free(envp);
	if (env_tok) {
		explicit_bzero(env_tok, strlen(env_tok));
		free(env_tok);
	}
	free(env_addr);
	free(env_ws);
	free(agent);
	free(logp);
	free(ws);
	free(dir);
	return r;
}

/* Ends st's agent and everything below it; st->pid = 0 afterwards. */
static void stop_agent(struct state *st)
{
	struct pidset tree = {0};
	struct pstat ps;

	/* The pidfd first, then the check: signals then reach the process that was verified,
	 * even if the pid is reused meanwhile. */
	int pidfd = st->pid > 0 ? pidfd_open_(st->pid) : -1;
	if (!agent_alive(st, NULL)) {
		if (pidfd >= 0)
			close(pidfd);
		st->pid = 0;
		return;
	}
	if (proc_tree(st->pid, &tree) < 0)
		tree.n = 0;
	/* start times, so that a pid reused meanwhile is never killed */
	unsigned long long *starts = calloc(tree.n ? tree.n : 1, sizeof(*starts));
	for (size_t i = 0; starts && i < tree.n; i++)
		starts[i] = proc_stat(tree.v[i], &ps) == 0 ? ps.start : 0;
	signal_agent(pidfd, st->pid, SIGTERM);
	signal_tree(&tree, SIGCONT); /* a paused box must run to handle SIGTERM */
	signal_agent(pidfd, st->pid, SIGCONT);
	if (!wait_exit(pidfd, st, STOP_TIMEOUT_MS)) {
		signal_agent(pidfd, st->pid, SIGKILL);
		wait_exit(pidfd, st, STOP_TIMEOUT_MS);
	}
	/* Whatever the agent left behind (daemonised children) goes too. */
	for (size_t i = 1; starts && i < tree.n; i++)
		if (proc_stat(tree.v[i], &ps) == 0 && ps.start == starts[i])
			kill(tree.v[i], SIGKILL);
	if (pidfd >= 0)
		close(pidfd);
	free(tree.v);
	free(starts);
	st->pid = 0;
	st->start = 0;
}

static char *agent_url(const struct state *st)
{
	char *u;
	return asprintf(&u, "http://127.0.0.1:%d", st->port) < 0 ? NULL : u;
}

/* Effective status: the stored one, checked against the process. */
static int state_info(struct local *l, const struct state *st, bool check_health,
		      struct dbx_box_info **ret)
{
	struct dbx_box_info *i = dbx__box_info_new(st->name);
	const char *status = st->status;
	char reason[160] = "";
	bool reach = false;

	*ret = NULL;
	if (!i)
		return dbx__error(ENOMEM, "get %s: out of memory", st->name);
	if (!strcmp(st->status, "Running") || !strcmp(st->status, "Paused")) {
		if (!agent_alive(st, NULL)) {
			status = "Error";
			snprintf(reason, sizeof(reason), "agent exited (pid %d)", (int)st->pid);
		} else if (!strcmp(st->status, "Running") && check_health) {
			char *u = agent_url(st);
			if (!u || dbx__agent_health(u, st->token, false, HEALTH_TIMEOUT_MS) < 0) {
				status = "Error";
				snprintf(reason, sizeof(reason),
					 "agent pid %d not answering /health on 127.0.0.1:%d",
					 (int)st->pid, st->port);
			} else {
				reach = true;
			}
			free(u);
		} else {
			reach = true;
		}
	}
	char *ws = box_path(l, st->name, "workspace");
	if (dbx__strdup_to(&i->status, status) < 0 || dbx__strdup_to(&i->runtime, "local") < 0 ||
	    (reason[0] && dbx__strdup_to(&i->reason, reason) < 0) || !ws ||
	    (reach &&
	     (!(i->agent_url = agent_url(st)) || dbx__strdup_to(&i->agent_token, st->token) < 0))) {
		free(ws);
		dbx_box_info_free(i);
		return dbx__error(ENOMEM, "get %s: out of memory", st->name);
	}
	i->workspace = ws;
	i->agent_pid = reach ? st->pid : 0;
	i->created_ms = st->created_ms;
	*ret = i;
	return 0;
}

/* A state file that exists but cannot be used (truncated, edited, too large). */
static bool state_broken(int r)
{
	return r == -EBADMSG || r == -EFBIG;
}

/* A box directory without a state file, seen under the lock: what a failed delete or a
 * killed create left behind (a create in progress holds the lock). */
static bool leftover(struct local *l, const char *name)
{
	struct stat sb;
	char *dir = box_path(l, name, NULL);
	bool r = dir && lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode);
	free(dir);
	return r;
}

/* Such a box is reported as Error (not hidden, not a failure) so that it can be deleted. */
static int broken_info(struct local *l, const char *name, struct dbx_box_info **ret)
{
	struct dbx_box_info *i = dbx__box_info_new(name);
	char *sf = box_path(l, name, STATE_FILE), *reason = NULL;

	*ret = NULL;
	if (sf && asprintf(&reason, "unusable state file %s; delete the devbox", sf) < 0)
		reason = NULL;
	free(sf);
	if (!i || !reason || dbx__strdup_to(&i->status, "Error") < 0 ||
	    dbx__strdup_to(&i->runtime, "local") < 0 ||
	    !(i->workspace = box_path(l, name, "workspace"))) {
		free(reason);
		dbx_box_info_free(i);
		return dbx__error(ENOMEM, "get %s: out of memory", name);
	}
	i->reason = reason;
	dbx_error_clear();
	*ret = i;
	return 0;
}

/* ---- provider ops ---------------------------------------------------------------------- */

static int local_open(dbx_provider *p, const struct dbx_provider_config *cfg)
{
	struct local *l = calloc(1, sizeof(*l));
	const char *home = cfg->home;
	char *owned = NULL;
	int r;

	if (!l)
		return dbx__error(ENOMEM, "open provider local: out of memory");
	l->lock_fd = -1;
	if (!home || !*home)
		home = getenv("DEVBOX_HOME");
	if (!home || !*home) {
		const char *xdg = getenv("XDG_STATE_HOME");
		const char *h = getenv("HOME");
		int n = -1;
		if (xdg && *xdg == '/')
			n = asprintf(&owned, "%s/devbox", xdg);
		else if (h && *h)
			n = asprintf(&owned, "%s/.local/state/devbox", h);
		else {
			r = dbx__error(ENOENT, "open provider local: no --home, $DEVBOX_HOME, "
					       "$XDG_STATE_HOME or $HOME");
			goto fail;
		}
		if (n < 0) {
			owned = NULL;
			r = dbx__error(ENOMEM, "open provider local: out of memory");
			goto fail;
		}
		home = owned;
	}
	r = mkdir_p(home, 0700);
	if (r < 0) {
		r = dbx__error(-r, "open provider local: mkdir %s: %s", home, strerror(-r));
		goto fail;
	}
	l->home = realpath(home, NULL);
	if (!l->home) {
		r = dbx__error(errno, "open provider local: %s: %s", home, strerror(errno));
		goto fail;
	}
	if (cfg->agent_path && !(l->agent_cfg = strdup(cfg->agent_path))) {
		r = dbx__error(ENOMEM, "open provider local: out of memory");
		goto fail;
	}
	free(owned);
	p->priv = l;
	return 0;
fail:
	free(owned);
	free(l->home);
	free(l);
	return r;
}

static void local_close(dbx_provider *p)
{
	struct local *l = L(p);
	if (!l)
		return;
	unlock_home(l);
	free(l->home);
	free(l->agent_cfg);
	free(l);
	p->priv = NULL;
}

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *f)
{
	(void)sb;
	(void)f;
	if (type == FTW_DP)
		return rmdir(path) < 0 ? -1 : 0;
	return unlink(path) < 0 ? -1 : 0;
}

static int chmod_cb(const char *path, const struct stat *sb, int type, struct FTW *f)
{
	(void)f;
	if (type == FTW_D && (sb->st_mode & 0700) != 0700)
		chmod(path, (sb->st_mode & 07777) | 0700);
	return 0;
}

/* Never follows a symlink, never enters another file system (a FUSE mount of another box,
 * a bind mount of the user's files): what is mounted below path stays, and path with it. */
static int rm_rf(const char *path)
{
	nftw(path, chmod_cb, 16, FTW_PHYS | FTW_MOUNT); /* so read-only dirs can be emptied */
	if (nftw(path, rm_cb, 16, FTW_PHYS | FTW_MOUNT | FTW_DEPTH) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

static int local_create(dbx_provider *p, const struct dbx_box_spec *spec,
			struct dbx_box_info **ret_info)
{
	struct local *l = L(p);
	struct state st = {0};
	char *dir = NULL, *ws = NULL;
	bool made = false;
	int r;

	for (const char *const *e = spec->env; e && *e; e++) {
		if (!strchr(*e, '=') || **e == '=')
			return dbx__error(EINVAL, "create %s: env '%s' is not NAME=VALUE",
					  spec->name, *e);
		if (env_reserved(*e))
			return dbx__error(EINVAL, "create %s: env %.*s is the agent's own setting",
					  spec->name, (int)strcspn(*e, "="), *e);
		st.n_env++;
	}
	if (st.n_env) {
		char **v = calloc(st.n_env, sizeof(*v));
		if (!v)
			return dbx__error(ENOMEM, "create %s: out of memory", spec->name);
		st.env = v;
		for (size_t i = 0; i < st.n_env; i++)
			if (!(v[i] = strdup(spec->env[i]))) {
				state_clear(&st);
				return dbx__error(ENOMEM, "create %s: out of memory", spec->name);
			}
	}
	r = lock_home(l, "create");
	if (r < 0) {
		state_clear(&st);
		return r;
	}
	dir = box_path(l, spec->name, NULL);
	ws = box_path(l, spec->name, "workspace");
	if (!dir || !ws) {
		r = dbx__error(ENOMEM, "create %s: out of memory", spec->name);
		goto out;
	}
	if (mkdir(dir, 0700) < 0) {
		r = errno == EEXIST ? dbx__error(EEXIST, "create %s: devbox '%s' already exists",
						 spec->name, spec->name)
				    : dbx__error(errno, "create %s: mkdir %s: %s", spec->name, dir,
						 strerror(errno));
		goto out;
	}
	made = true;
	if (mkdir(ws, 0755) < 0) {
		r = dbx__error(errno, "create %s: mkdir %s: %s", spec->name, ws, strerror(errno));
		goto out;
	}
	snprintf(st.name, sizeof(st.name), "%s", spec->name);
	dbx_random_id(st.token, TOKEN_LEN);
	st.created_ms = dbx__wall_ms();
	r = spawn_agent(l, "create", &st);
	if (r < 0)
		goto out;
	snprintf(st.status, sizeof(st.status), "Running");
	r = state_save(l, "create", &st);
	if (r < 0) {
		stop_agent(&st);
		goto out;
	}
	r = state_info(l, &st, false, ret_info);
out:
	if (r < 0 && made)
		rm_rf(dir);
	unlock_home(l);
	state_clear(&st);
	free(ws);
	free(dir);
	return r;
}

static int cmp_info(const void *a, const void *b)
{
	const struct dbx_box_info *x = *(struct dbx_box_info *const *)a;
	const struct dbx_box_info *y = *(struct dbx_box_info *const *)b;
	return strcmp(x->name, y->name);
}

static int local_list(dbx_provider *p, struct dbx_box_info ***ret_list, size_t *ret_n)
{
	struct local *l = L(p);
	struct dbx_box_info **v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int r = 0;

	DIR *d = opendir(l->home);
	if (!d)
		return dbx__error(errno, "list %s: %s", l->home, strerror(errno));
	while ((de = readdir(d))) {
		struct state st;
		struct dbx_box_info *info;
		if (de->d_name[0] == '.' || strlen(de->d_name) > 63)
			continue;
		if (dbx__box_name_check("list", de->d_name) < 0)
			continue; /* not ours */
		r = state_load(l, "list", de->d_name, &st);
		if (state_broken(r)) {
			r = broken_info(l, de->d_name, &info);
		} else if (r < 0) {
			continue; /* a directory without a state file: being created or foreign */
		} else {
			r = state_info(l, &st, true, &info);
			state_clear(&st);
		}
		if (r < 0)
			goto fail;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 8;
			struct dbx_box_info **nv = realloc(v, nc * sizeof(*nv));
			if (!nv) {
				dbx_box_info_free(info);
				r = dbx__error(ENOMEM, "list: out of memory");
				goto fail;
			}
			v = nv;
			cap = nc;
		}
		v[n++] = info;
	}
	closedir(d);
	dbx_error_clear();
	if (n)
		qsort(v, n, sizeof(*v), cmp_info);
	*ret_list = v;
	*ret_n = n;
	return 0;
fail:
	closedir(d);
	dbx_box_list_free(v, n);
	return r;
}

static int local_get(dbx_provider *p, const char *name, struct dbx_box_info **ret_info)
{
	struct state st;
	int r = state_load(L(p), "get", name, &st);
	if (state_broken(r))
		return broken_info(L(p), name, ret_info);
	if (r < 0)
		return r;
	r = state_info(L(p), &st, true, ret_info);
	state_clear(&st);
	return r;
}

/* Waits until the agent answers /health (after a start or a resume). */
static int wait_health(const char *op, struct state *st)
{
	char *u = agent_url(st);
	int r = -ENOMEM;
	uint64_t deadline = dbx_now_ms() + START_TIMEOUT_MS;
	if (!u)
		return dbx__error(ENOMEM, "%s %s: out of memory", op, st->name);
	while ((r = dbx__agent_health(u, st->token, false, HEALTH_TIMEOUT_MS)) < 0) {
		if (!agent_alive(st, NULL) || dbx_now_ms() >= deadline)
			break;
		sleep_ms(20);
	}
	free(u);
	return r < 0 ? dbx__error(EIO, "%s %s: the agent does not answer /health", op, st->name)
		     : 0;
}

static int start_locked(struct local *l, const char *op, struct state *st)
{
	int r;
	if (!strcmp(st->status, "Paused") && agent_alive(st, NULL)) {
		struct pidset tree = {0};
		r = proc_tree(st->pid, &tree);
		if (r < 0)
			return dbx__error(-r, "%s %s: scan /proc: %s", op, st->name, strerror(-r));
		signal_tree(&tree, SIGCONT);
		free(tree.v);
		snprintf(st->status, sizeof(st->status), "Running");
		r = state_save(l, op, st);
		return r < 0 ? r : wait_health(op, st);
	}
	if (!strcmp(st->status, "Running") && agent_alive(st, NULL)) {
		char *u = agent_url(st);
		r = u ? dbx__agent_health(u, st->token, false, HEALTH_TIMEOUT_MS) : -ENOMEM;
		free(u);
		if (r == 0)
			return 0; /* already running */
	}
	stop_agent(st); /* a stale or hung agent, if any */
	r = spawn_agent(l, op, st);
	if (r < 0) {
		snprintf(st->status, sizeof(st->status), "Stopped");
		state_save(l, op, st);
		return r;
	}
	snprintf(st->status, sizeof(st->status), "Running");
	r = state_save(l, op, st);
	if (r < 0) {
		stop_agent(st);
		return r;
	}
	return wait_health(op, st);
}

static int shutdown_locked(struct local *l, const char *op, struct state *st)
{
	stop_agent(st);
	snprintf(st->status, sizeof(st->status), "Stopped");
	return state_save(l, op, st);
}

enum verb { V_START, V_PAUSE, V_RESTART, V_SHUTDOWN, V_DELETE };
static const char *const verb_names[] = {"start", "pause", "restart", "shutdown", "delete"};

static int pause_locked(struct local *l, const char *op, struct state *st)
{
	struct pidset tree = {0};
	int pidfd = -1, r;

	if (!strcmp(st->status, "Paused") && agent_alive(st, NULL))
		return 0;
	if (st->pid > 0)
		pidfd = pidfd_open_(st->pid); /* before the check, as in stop_agent */
	if (strcmp(st->status, "Running") || !agent_alive(st, NULL)) {
		r = dbx__error(EINVAL, "%s %s: devbox is not running (%s)", op, st->name,
			       agent_alive(st, NULL) ? st->status : "agent not running");
		goto out;
	}
	/* Stop the agent first so it starts nothing new, then everything below it; a second
	 * scan catches children forked while the first round was being sent. */
	signal_agent(pidfd, st->pid, SIGSTOP);
	for (int round = 0; round < 2; round++) {
		r = proc_tree(st->pid, &tree);
		if (r < 0) {
			r = dbx__error(-r, "%s %s: scan /proc: %s", op, st->name, strerror(-r));
			goto out;
		}
		signal_tree(&tree, SIGSTOP);
	}
	/* Report Paused only once every process really is stopped. */
	uint64_t deadline = dbx_now_ms() + 5000;
	for (;;) {
		bool all = true;
		for (size_t i = 0; i < tree.n && all; i++) {
			struct pstat ps;
			if (proc_stat(tree.v[i], &ps) == 0 && ps.state != 'T' && ps.state != 't' &&
			    ps.state != 'Z' && ps.state != 'X')
				all = false;
		}
		if (all)
			break;
		if (dbx_now_ms() >= deadline) {
			r = dbx__error(ETIMEDOUT, "%s %s: processes did not stop", op, st->name);
			goto out;
		}
		sleep_ms(5);
	}
	snprintf(st->status, sizeof(st->status), "Paused");
	r = state_save(l, op, st);
out:
	if (pidfd >= 0)
		close(pidfd);
	free(tree.v);
	return r;
}

static int local_verb(dbx_provider *p, const char *name, enum verb v)
{
	struct local *l = L(p);
	const char *op = verb_names[v];
	struct state st;
	char *dir = NULL;
	int r;

	r = lock_home(l, op);
	if (r < 0)
		return r;
	r = state_load(l, op, name, &st);
	if (r < 0 && v == V_DELETE && (state_broken(r) || (r == -ENOENT && leftover(l, name))))
		r = 0; /* a box whose state file is unusable or gone can still be deleted */
	if (r < 0)
		goto out;
	switch (v) {
	case V_START:
		r = start_locked(l, op, &st);
		break;
	case V_PAUSE:
		r = pause_locked(l, op, &st);
		break;
	case V_RESTART:
		r = shutdown_locked(l, op, &st);
		if (r == 0)
			r = start_locked(l, op, &st);
		break;
	case V_SHUTDOWN:
		r = shutdown_locked(l, op, &st);
		break;
	case V_DELETE:
		stop_agent(&st);
		dir = box_path(l, name, NULL);
		if (!dir) {
			r = dbx__error(ENOMEM, "%s %s: out of memory", op, name);
			break;
		}
		/* The state file goes first: a half-removed box is then no longer listed. */
		char *sf = box_path(l, name, STATE_FILE);
		if (sf)
			unlink(sf);
		free(sf);
		r = rm_rf(dir);
		if (r < 0)
			r = dbx__error(-r, "%s %s: remove %s: %s", op, name, dir, strerror(-r));
		break;
	}
out:
	unlock_home(l);
	state_clear(&st);
	free(dir);
	return r;
}

static int local_start(dbx_provider *p, const char *name)
{
	return local_verb(p, name, V_START);
}
static int local_pause(dbx_provider *p, const char *name)
{
	return local_verb(p, name, V_PAUSE);
}
static int local_restart(dbx_provider *p, const char *name)
{
	return local_verb(p, name, V_RESTART);
}
static int local_shutdown(dbx_provider *p, const char *name)
{
	return local_verb(p, name, V_SHUTDOWN);
}
static int local_remove(dbx_provider *p, const char *name)
{
	return local_verb(p, name, V_DELETE);
}

static uint64_t rss_bytes(pid_t pid)
{
	char path[64];
	unsigned long size = 0, res = 0;
	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &res) != 2)
		res = 0;
	fclose(f);
	return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* utime + stime of every process in the tree (processes that vanished count 0). */
static unsigned long long tree_ticks(const struct pidset *t, const unsigned long long *starts)
{
	unsigned long long sum = 0;
	for (size_t i = 0; i < t->n; i++) {
		struct pstat ps;
		if (proc_stat(t->v[i], &ps) == 0 && ps.start == starts[i])
			sum += ps.utime + ps.stime;
	}
	return sum;
}

static int local_monitor(dbx_provider *p, const char *name, int64_t since_ms,
			 struct dbx_monitor_sample **ret_samples, size_t *ret_n)
{
	struct state st;
	struct pidset tree = {0};
	unsigned long long *starts = NULL;
	struct dbx_monitor_sample *s = calloc(1, sizeof(*s));
	int r;

	(void)since_ms;
	if (!s)
		return dbx__error(ENOMEM, "monitor %s: out of memory", name);
	r = state_load(L(p), "monitor", name, &st);
	if (r < 0)
		goto out;
	state_clear(&st);
	s->time_ms = dbx__wall_ms();
	if (agent_alive(&st, NULL)) {
		r = proc_tree(st.pid, &tree);
		if (r < 0) {
			r = dbx__error(-r, "monitor %s: scan /proc: %s", name, strerror(-r));
			goto out;
		}
		starts = calloc(tree.n, sizeof(*starts));
		if (!starts) {
			r = dbx__error(ENOMEM, "monitor %s: out of memory", name);
			goto out;
		}
		for (size_t i = 0; i < tree.n; i++) {
			struct pstat ps;
			starts[i] = proc_stat(tree.v[i], &ps) == 0 ? ps.start : 0;
		}
		uint64_t t0 = dbx_now_ns();
		unsigned long long c0 = tree_ticks(&tree, starts);
		sleep_ms(MONITOR_INTERVAL_MS);
		unsigned long long c1 = tree_ticks(&tree, starts);
		double secs = (double)(dbx_now_ns() - t0) / 1e9;
		long hz = sysconf(_SC_CLK_TCK);
		s->cpu_percent = c1 > c0 && secs > 0 && hz > 0
					 ? (double)(c1 - c0) / (double)hz / secs * 100.0
					 : 0;
		for (size_t i = 0; i < tree.n; i++) {
			struct pstat ps;
			if (proc_stat(tree.v[i], &ps) == 0 && ps.start == starts[i]) {
				s->memory_bytes += rss_bytes(tree.v[i]);
				s->processes++;
			}
		}
		struct sysinfo si;
		if (sysinfo(&si) == 0 && si.totalram)
			s->memory_percent = (double)s->memory_bytes * 100.0 /
					    ((double)si.totalram * (double)si.mem_unit);
	}
	*ret_samples = s;
	*ret_n = 1;
	s = NULL;
out:
	free(starts);
	free(tree.v);
	free(s);
	return r;
}

static int local_templates(dbx_provider *p, char ***ret_names, size_t *ret_n)
{
	char **v = calloc(1, sizeof(*v));
	(void)p;
	if (!v || !(v[0] = strdup("local"))) {
		free(v);
		return dbx__error(ENOMEM, "templates: out of memory");
	}
	*ret_names = v;
	*ret_n = 1;
	return 0;
}

const struct dbx__provider_ops dbx__local_ops = {
	.name = "local",
	.open = local_open,
	.close = local_close,
	.create = local_create,
	.list = local_list,
	.get = local_get,
	.start = local_start,
	.pause = local_pause,
	.restart = local_restart,
	.shutdown = local_shutdown,
	.remove = local_remove,
	.monitor = local_monitor,
	.templates = local_templates,
};
