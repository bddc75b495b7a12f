/* proc.c: the process engine: spawn specs and posix_spawn (workers), the process table, adopted
 * pipes and pidfds, timeouts, per-process log rings and their listeners (service thread).
 *
 * Spawning (worker): the argv is exactly what the client asked for (no shell unless the client
 * runs one), the environment is the agent's (main.c removed the token) plus the request's, the
 * cwd is opened beneath the workspace with openat2 and entered with addfchdir, stdin is
 * /dev/null (sessions: a pipe), the child gets its own session and process group, a clean
 * signal mask and default dispositions, and closefrom(3) so no agent fd leaks (lws sockets may
 * lack O_CLOEXEC). With a PTY (interactive exec) the slave is opened by path, without
 * O_NOCTTY, as the child's fd 0: posix_spawn runs setsid() before the file actions, so the new
 * session leader acquires it as its controlling terminal (its group in the foreground); fds 1
 * and 2 are dups of it. The agent keeps only the master (output, stdin and window size). A
 * pidfd is opened at once (the child cannot be reaped by anyone else, so the pid cannot be
 * reused in between).
 *
 * Watching (service thread): the two pipe read ends and the pidfd are adopted into lws as raw
 * files bound to "dbx-raw" with the struct proc as opaque pointer. The pipes are read 64 KiB per
 * RAW_RX_FILE; we keep a dup of each read end because lws closes a flow-controlled pipe on
 * POLLHUP without reading what is left in it (lws-notes T18): whatever the close path, the dup
 * is drained to EOF. pidfd readable -> waitid(P_PIDFD, WNOHANG). The pidfd and the pipe EOFs
 * arrive in any order (T19): a process is "finished" once it is reaped and both pipes are at
 * EOF. A wsi we are done with gets its opaque pointer cleared before it closes, so a struct proc
 * can be freed as soon as it leaves the table; late callbacks see NULL and do nothing.
 *
 * Counters: live children are counted in a process-wide atomic (reserved by the worker before
 * spawning, released at reap), so workers never touch the table, which dies at shutdown while
 * handlers may still be running. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "misc.h"
#include "path.h"
#include "proc.h"

extern char **environ;

#define READ_CHUNK          (64u << 10)
#define SWEEP_SECS          30
#define RECORD_TTL_MS       (4ull * 3600 * 1000) /* exec records: 4 h after exit */
#define SESSION_TTL_MS      (30ull * 60 * 1000)  /* sessions: 30 min after the shell exits */
#define SESSION_RECORDS_MAX (2 * AGENT_MAX_SESSIONS)
#define DEFAULT_PATH        "/usr/local/bin:/usr/bin:/bin"

struct proc_table {
	struct agent *ag;
	struct proc_list records;  /* PK_EXEC, oldest first */
	struct proc_list sessions; /* PK_SESSION, oldest first */
	struct proc_list anon;     /* PK_SYNC, PK_STREAM and orphans */
	lws_sorted_usec_list_t sweep;
	size_t log_bytes;	   /* all records' and sessions' log entries together */
};

static atomic_int running_children;

/* ---- small helpers --------------------------------------------------------------------- */

void proc_strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

cJSON *proc_json_str(const char *s, size_t len)
{
	char *clean = dbx_utf8_lossy(s, len, NULL);
	cJSON *j = cJSON_CreateString(clean ? clean : "");
	free(clean);
	return j;
}

const char *proc_state_name(enum proc_state s)
{
	switch (s) {
	case PS_RUNNING:
		return "running";
	case PS_COMPLETED:
		return "completed";
	case PS_FAILED:
		return "failed";
	default:
		return "killed";
	}
}

static void add_time(cJSON *o, const char *name, time_t t)
{
	char ts[21];
	dbx_fmt_time(t, ts);
	cJSON_AddStringToObject(o, name, ts);
}

cJSON *proc_status_json(struct proc *p)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "processId", p->id);
	cJSON_AddNumberToObject(o, "pid", p->pid);
	cJSON_AddItemToObject(o, "command", proc_json_str(p->command, strlen(p->command)));
	cJSON_AddStringToObject(o, "processStatus", proc_state_name(p->state));
	add_time(o, "startTime", p->start);
	if (p->reaped)
		add_time(o, "endTime", p->end);
	else
		cJSON_AddNullToObject(o, "endTime");
	if (p->reaped)
		cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
	else
		cJSON_AddNullToObject(o, "exitCode");
	return o;
}

void sse_append_event(struct dbx_strbuf *sb, const char *event, const char *data)
{
	if (event)
		dbx_sb_printf(sb, "event: %s\n", event);
	dbx_sb_printf(sb, "data: %s\n\n", data);
}

void sse_append_data_lines(struct dbx_strbuf *sb, const char *text, size_t len)
{
	/* SSE treats \r\n, \r and \n as line ends: every one starts a new data line. */
	char *clean = dbx_utf8_lossy(text, len, &len);
	const char *s = clean ? clean : "";
	size_t i = 0, start = 0;
	for (;;) {
		if (i == len || s[i] == '\n' || s[i] == '\r') {
			dbx_sb_puts(sb, "data: ");
			dbx_sb_append(sb, s + start, i - start);
			dbx_sb_putc(sb, '\n');
			if (i == len)
				break;
			if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n')
				i++;
			start = ++i;
			continue;
		}
		i++;
	}
	dbx_sb_putc(sb, '\n');
	free(clean);
}

/* ---- command lines ------------------------------------------------------------------------ */

struct words {
	char **v;
	size_t n, cap;
};

static int words_push(struct words *w, struct dbx_strbuf *word)
{
	if (w->n + 2 > w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 8;
		char **nv = realloc(w->v, nc * sizeof(char *));
		if (!nv)
			return -ENOMEM;
		w->v = nv;
		w->cap = nc;
	}
	char *s = dbx_sb_steal(word, NULL);
	if (!s)
		s = strdup("");
	if (!s)
		return -ENOMEM;
	w->v[w->n++] = s;
	w->v[w->n] = NULL;
	return 0;
}

/* The state machine of the shell-words crate the official agent uses: POSIX quoting and
 * backslashes, '#' comments at a word start, no expansion and no operators. */
char **proc_split_words(const char *s)
{
	enum { DELIM, BACKSLASH, UNQ, UNQ_BS, SQ, DQ, DQ_BS, COMMENT } st = DELIM;
	struct words w = {NULL, 0, 0};
	struct dbx_strbuf word;
	bool ok = true;
	dbx_sb_init(&word, 0);
	for (const char *p = s;; p++) {
		char c = *p;
		switch (st) {
		case DELIM:
			if (!c)
				goto done;
			if (c == '\'')
				st = SQ;
			else if (c == '"')
				st = DQ;
			else if (c == '\\')
				st = BACKSLASH;
			else if (c == ' ' || c == '\t' || c == '\n')
				st = DELIM;
			else if (c == '#')
				st = COMMENT;
			else {
				dbx_sb_putc(&word, c);
				st = UNQ;
			}
			break;
		case BACKSLASH:
			if (!c) {
				dbx_sb_putc(&word, '\\');
				ok = words_push(&w, &word) == 0;
				goto done;
			}
			if (c == '\n') {
				st = DELIM;
			} else {
				dbx_sb_putc(&word, c);
				st = UNQ;
			}
			break;
		case UNQ:
			if (!c) {
				ok = words_push(&w, &word) == 0;
				goto done;
			}
			if (c == '\'')
				st = SQ;
			else if (c == '"')
				st = DQ;
			else if (c == '\\')
				st = UNQ_BS;
			else if (c == ' ' || c == '\t' || c == '\n') {
				if (words_push(&w, &word) < 0) {
					ok = false;
					goto done;
				}
				st = DELIM;
			} else
				dbx_sb_putc(&word, c);
			break;
		case UNQ_BS:
			if (!c) {
				dbx_sb_putc(&word, '\\');
				ok = words_push(&w, &word) == 0;
				goto done;
			}
			if (c != '\n')
				dbx_sb_putc(&word, c);
			st = UNQ;
			break;
		case SQ:
			if (!c) {
				ok = false;
				goto done;
			}
			if (c == '\'')
				st = UNQ;
			else
				dbx_sb_putc(&word, c);
			break;
		case DQ:
			if (!c) {
				ok = false;
				goto done;
			}
			if (c == '"')
				st = UNQ;
			else if (c == '\\')
				st = DQ_BS;
			else
				dbx_sb_putc(&word, c);
			break;
		case DQ_BS:
			if (!c) {
				ok = false;
				goto done;
			}
			if (c == '$' || c == '`' || c == '"' || c == '\\') {
				dbx_sb_putc(&word, c);
			} else if (c != '\n') {
				dbx_sb_putc(&word, '\\');
				dbx_sb_putc(&word, c);
			}
			st = DQ;
			break;
		case COMMENT:
			if (!c)
				goto done;
			if (c == '\n')
				st = DELIM;
			break;
		}
	}
done:
	dbx_sb_free(&word);
	if (ok && !w.v) {
		w.v = calloc(1, sizeof(char *));
		ok = w.v != NULL;
	}
	if (!ok) {
		proc_strv_free(w.v);
		return NULL;
	}
	return w.v;
}

/* ---- spawn specs (worker) ------------------------------------------------------------------ */

void proc_spec_free(struct proc_spec *spec)
{
	proc_strv_free(spec->argv);
	proc_strv_free(spec->envp);
	if (spec->cwdfd >= 0)
		close(spec->cwdfd);
	free(spec->cwd_abs);
	free(spec->command);
	memset(spec, 0, sizeof(*spec));
	spec->cwdfd = -1;
}

static void fail_set(struct proc_fail *f, int status, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void fail_set(struct proc_fail *f, int status, int err, const char *fmt, ...)
{
	va_list ap;
	f->status = status;
	f->err = err;
	va_start(ap, fmt);
	vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
	va_end(ap);
}

int proc_spec_cwd(struct agent *ag, const char *cwd, struct proc_spec *spec, struct proc_fail *fail)
{
	char rel[PATH_MAX];
	const char *in = cwd ? cwd : "";
	int e = dbx_path_normalize(ag->cfg.workspace, ag->alias, in, rel, sizeof(rel));
	if (e == -EXDEV) {
		fail_set(fail, ST_FORBIDDEN, EXDEV, "Path escapes the workspace %s: %s",
			 ag->cfg.workspace, in);
		return 1;
	}
	if (e < 0) {
		fail_set(fail, ST_INVALID, -e, "Path too long: %.64s...", in);
		return 1;
	}
	int fd = dbx_path_open(ag->rootfd, rel, O_PATH | O_DIRECTORY, 0, 0);
	if (fd == -EXDEV || fd == -ELOOP) {
		fail_set(fail, ST_FORBIDDEN, -fd,
			 "Working directory %s: refusing to follow a symbolic link out of the "
			 "workspace",
			 in);
		return 1;
	}
	if (fd < 0) {
		fail_set(fail, ST_OPERATION, -fd, "%s (os error %d) (working directory %s)",
			 strerror(-fd), -fd, in);
		return 1;
	}
	spec->cwdfd = fd;
	spec->cwd_abs = agent_abs(ag, rel);
	return 0;
}

static bool env_name_ok(const char *k)
{
	return *k && !strchr(k, '=');
}

int proc_spec_env(struct req *r, cJSON *env_obj, struct proc_spec *spec)
{
	size_t n_env = 0, n_req = 0;
	if (env_obj && !cJSON_IsNull(env_obj)) {
		if (!cJSON_IsObject(env_obj)) {
			req_reply_shape(r, "env: invalid type: expected a map");
			return -1;
		}
		cJSON *it;
		cJSON_ArrayForEach(it, env_obj)
		{
			if (!cJSON_IsString(it)) {
				req_reply_shape(r, "env.%s: invalid type: expected a string",
						it->string);
				return -1;
			}
			if (!env_name_ok(it->string)) {
				req_reply_shape(r, "env: invalid variable name `%s`", it->string);
				return -1;
			}
			/* The merge below is quadratic: keep it small. */
			if (++n_req > AGENT_ENV_MAX) {
				req_reply_shape(r, "env: more than %d variables", AGENT_ENV_MAX);
				return -1;
			}
		}
	} else {
		env_obj = NULL;
	}
	for (char **e = environ; *e; e++)
		n_env++;
	char **v = calloc(n_env + n_req + 1, sizeof(char *));
	if (!v)
		goto nomem;
	size_t k = 0;
	for (char **e = environ; *e; e++) {
		const char *eq = strchr(*e, '=');
		size_t kl = eq ? (size_t)(eq - *e) : strlen(*e);
		bool overridden = false;
		cJSON *it;
		if (env_obj) {
			cJSON_ArrayForEach(it, env_obj)
			{
				if (strlen(it->string) == kl && memcmp(it->string, *e, kl) == 0) {
					overridden = true;
					break;
				}
			}
		}
		if (overridden)
			continue;
		if (!(v[k++] = strdup(*e)))
			goto nomem_v;
	}
	if (env_obj) {
		cJSON *it;
		cJSON_ArrayForEach(it, env_obj)
		{
			/* A key given twice in the JSON: the last one wins. */
			cJSON *later = it->next;
			bool dup = false;
			for (; later; later = later->next)
				if (strcmp(later->string, it->string) == 0)
					dup = true;
			if (dup)
				continue;
			size_t len = strlen(it->string) + strlen(it->valuestring) + 2;
			if (!(v[k] = malloc(len)))
				goto nomem_v;
			snprintf(v[k++], len, "%s=%s", it->string, it->valuestring);
		}
	}
	v[k] = NULL;
	spec->envp = v;
	return 0;
nomem_v:
	proc_strv_free(v);
nomem:
	req_reply_err(r, ST_INTERNAL, "Out of memory");
	return -1;
}

static char *join_command(const char *command, cJSON *args)
{
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	dbx_sb_puts(&sb, command);
	if (args) {
		cJSON *it;
		cJSON_ArrayForEach(it, args)
		{
			dbx_sb_putc(&sb, ' ');
			dbx_sb_puts(&sb, it->valuestring);
		}
	}
	char *s = dbx_sb_steal(&sb, NULL);
	return s ? s : strdup("");
}

int proc_spec_from_json(struct req *r, cJSON *body, struct proc_spec *spec, struct proc_fail *fail)
{
	const char *command, *cwd;
	memset(spec, 0, sizeof(*spec));
	spec->cwdfd = -1;
	if (json_get_str(r, body, "command", true, &command) < 0)
		return -1;
	cJSON *args = cJSON_GetObjectItemCaseSensitive(body, "args");
	if (args && cJSON_IsNull(args))
		args = NULL;
	if (args) {
		cJSON *it;
		if (!cJSON_IsArray(args)) {
			req_reply_shape(r, "args: invalid type: expected a sequence");
			return -1;
		}
		cJSON_ArrayForEach(it, args)
		{
			if (!cJSON_IsString(it)) {
				req_reply_shape(r, "args: invalid type: expected a string");
				return -1;
			}
		}
	}
	if (json_get_str(r, body, "cwd", false, &cwd) < 0)
		return -1;
	if (proc_spec_env(r, cJSON_GetObjectItemCaseSensitive(body, "env"), spec) < 0)
		goto replied;

	/* Deliberate divergence from the official agent, which records only `command`: we record
	 * the whole command line (command + args joined by spaces), so that a listing tells what
	 * runs and the SDK's listProcesses check ("command contains node") passes. */
	spec->command = join_command(command, args);
	if (args) {
		size_t n = (size_t)cJSON_GetArraySize(args);
		spec->argv = calloc(n + 2, sizeof(char *));
		if (!spec->argv)
			goto nomem;
		size_t k = 0;
		if (!(spec->argv[k++] = strdup(command)))
			goto nomem;
		cJSON *it;
		cJSON_ArrayForEach(it, args)
		{
			if (!(spec->argv[k++] = strdup(it->valuestring)))
				goto nomem;
		}
	} else {
		spec->argv = proc_split_words(command);
		if (!spec->argv) {
			/* Unbalanced quote: the whole string is the program name (as upstream). */
			spec->argv = calloc(2, sizeof(char *));
			if (!spec->argv || !(spec->argv[0] = strdup(command)))
				goto nomem;
		}
	}
	if (!spec->command)
		goto nomem;
	if (!spec->argv[0]) {
		fail_set(fail, ST_OPERATION, ENOENT, "empty command");
		fail->not_found_program = true;
		return 1;
	}
	return proc_spec_cwd(req_agent(r), cwd, spec, fail);
nomem:
	req_reply_err(r, ST_INTERNAL, "Out of memory");
replied:
	proc_spec_free(spec);
	return -1;
}

/* ---- spawning (worker) ------------------------------------------------------------------ */

static const char *env_lookup(char **envp, const char *name)
{
	size_t n = strlen(name);
	for (char **e = envp; e && *e; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/* PATH search like execvp, but with the child's PATH and relative to the child's cwd.
 * Returns a malloc'd path, or NULL with errno (ENOENT, EACCES, ENOMEM). */
static char *find_program(const char *prog, char **envp, int cwdfd)
{
	if (!*prog) {
		errno = ENOENT;
		return NULL;
	}
	if (strchr(prog, '/'))
		return strdup(prog);
	const char *path = env_lookup(envp, "PATH");
	if (!path)
		path = DEFAULT_PATH;
	int err = ENOENT;
	const char *p = path;
	for (;;) {
		const char *colon = strchr(p, ':');
		size_t dl = colon ? (size_t)(colon - p) : strlen(p);
		char cand[PATH_MAX];
		int n = dl ? snprintf(cand, sizeof(cand), "%.*s/%s", (int)dl, p, prog)
			   : snprintf(cand, sizeof(cand), "%s", prog);
		struct stat st;
		if (n > 0 && (size_t)n < sizeof(cand) && fstatat(cwdfd, cand, &st, 0) == 0 &&
		    S_ISREG(st.st_mode)) {
			if (faccessat(cwdfd, cand, X_OK, AT_EACCESS) == 0) {
				/* A relative PATH entry stays relative: the child resolves it after
				 * its fchdir into the cwd. */
				if (strchr(cand, '/'))
					return strdup(cand);
				size_t l = strlen(cand) + 3;
				char *r = malloc(l);
				if (r)
					snprintf(r, l, "./%s", cand);
				return r;
			}
			err = EACCES;
		}
		if (!colon)
			break;
		p = colon + 1;
	}
	errno = err;
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* A PTY master (non-blocking, close-on-exec) with the given window size; the slave's path in
 * @name. 0 or -errno. */
static int open_pty(unsigned short rows, unsigned short cols, int *ret_master, char *name,
		    size_t name_len)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return -errno;
	struct winsize ws = {.ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80};
	if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, name_len) != 0 ||
	    ioctl(m, TIOCSWINSZ, &ws) < 0 || fcntl(m, F_SETFL, O_NONBLOCK) < 0) {
		int e = errno ? errno : EIO;
		close(m);
		return -e;
	}
	*ret_master = m;
	return 0;
}

int proc_spawn(struct proc_spec *spec, struct proc_spawned *sp, struct proc_fail *fail)
{
	int outp[2][2] = {{-1, -1}, {-1, -1}}, inp[2] = {-1, -1}, master = -1;
	char pts[64];
	char *path = NULL;
	int rc = -1, e;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	bool fa_ok = false, attr_ok = false;

	memset(sp, 0, sizeof(*sp));
	sp->pidfd = sp->in_w = -1;
	sp->rd[0] = sp->rd[1] = sp->dup[0] = sp->dup[1] = -1;
	memset(fail, 0, sizeof(*fail));

	if (atomic_fetch_add(&running_children, 1) >= AGENT_MAX_RUNNING) {
		atomic_fetch_sub(&running_children, 1);
		fail_set(fail, ST_OPERATION, EAGAIN, "too many running processes (limit %d)",
			 AGENT_MAX_RUNNING);
		return -1;
	}
	path = find_program(spec->argv[0], spec->envp, spec->cwdfd);
	if (!path) {
		e = errno;
		fail_set(fail, ST_OPERATION, e, "%s (os error %d)", strerror(e), e);
		fail->not_found_program = e == ENOENT;
		goto out;
	}
	if (spec->tty) {
		e = open_pty(spec->rows, spec->cols, &master, pts, sizeof(pts));
		if (e < 0) {
			e = -e;
			goto spawn_fail;
		}
	}
	for (int i = 0; i < 2 && !spec->tty; i++) {
		if (pipe2(outp[i], O_CLOEXEC) < 0)
			goto os_fail;
		/* Only our end is non-blocking; the child's stdout stays blocking. */
		if (fcntl(outp[i][0], F_SETFL, O_NONBLOCK) < 0)
			goto os_fail;
	}
	if (spec->stdin_pipe && !spec->tty) {
		if (pipe2(inp, O_CLOEXEC) < 0 || fcntl(inp[1], F_SETFL, O_NONBLOCK) < 0)
			goto os_fail;
		fcntl(inp[1], F_SETPIPE_SZ, 1 << 20); /* room for queued commands; best effort */
	}
	if ((e = posix_spawn_file_actions_init(&fa)))
		goto spawn_fail;
	fa_ok = true;
	if (spec->tty) {
		/* No O_NOCTTY: this open makes it the controlling terminal (see the top). */
		e = posix_spawn_file_actions_addopen(&fa, 0, pts, O_RDWR, 0);
		if (!e)
			e = posix_spawn_file_actions_adddup2(&fa, 0, 1);
		if (!e)
			e = posix_spawn_file_actions_adddup2(&fa, 0, 2);
	} else {
		if (spec->stdin_pipe)
			e = posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
		else
			e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
		if (!e)
			e = posix_spawn_file_actions_adddup2(&fa, outp[0][1], 1);
		if (!e)
			e = posix_spawn_file_actions_adddup2(&fa, outp[1][1], 2);
	}
	if (!e)
		e = posix_spawn_file_actions_addfchdir_np(&fa, spec->cwdfd);
	if (!e)
		e = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (e)
		goto spawn_fail;
	if ((e = posix_spawnattr_init(&attr)))
		goto spawn_fail;
	attr_ok = true;
	sigset_t none, dfl;
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGTERM);
	sigaddset(&dfl, SIGINT);
	sigaddset(&dfl, SIGHUP);
	sigaddset(&dfl, SIGPIPE);
	sigaddset(&dfl, SIGQUIT);
	sigaddset(&dfl, SIGCHLD);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
						POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	e = posix_spawn(&pid, path, &fa, &attr, spec->argv, spec->envp);
	if (e)
		goto spawn_fail;
	sp->pid = pid;
	sp->start = time(NULL);
	sp->start_ms = dbx_now_ms();
	sp->pidfd = pidfd_open(pid, 0);
	if (sp->pidfd < 0) {
		e = errno;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_set(fail, ST_OPERATION, e, "pidfd_open: %s (os error %d)", strerror(e), e);
		goto out;
	}
	if (spec->tty) {
		sp->rd[0] = master;
		master = -1;
		sp->dup[0] = fcntl(sp->rd[0], F_DUPFD_CLOEXEC, 3);
		sp->in_w = fcntl(sp->rd[0], F_DUPFD_CLOEXEC, 3);
	} else {
		for (int i = 0; i < 2; i++) {
			sp->rd[i] = outp[i][0];
			outp[i][0] = -1;
			sp->dup[i] = fcntl(sp->rd[i], F_DUPFD_CLOEXEC, 3);
		}
	}
	if (sp->dup[0] < 0 || (!spec->tty && sp->dup[1] < 0) || (spec->tty && sp->in_w < 0)) {
		e = errno;
		pidfd_send_signal(sp->pidfd, SIGKILL, NULL, 0);
		killpg(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_set(fail, ST_OPERATION, e, "%s (os error %d)", strerror(e), e);
		goto out;
	}
	if (spec->stdin_pipe && !spec->tty) {
		sp->in_w = inp[1];
		inp[1] = -1;
	}
	rc = 0;
	goto out;
os_fail:
	e = errno;
spawn_fail:
	fail_set(fail, ST_OPERATION, e, "%s (os error %d)", strerror(e), e);
	fail->not_found_program = e == ENOENT;
out:
	if (fa_ok)
		posix_spawn_file_actions_destroy(&fa);
	if (attr_ok)
		posix_spawnattr_destroy(&attr);
	for (int i = 0; i < 2; i++) {
		close_fd(&outp[i][0]);
		close_fd(&outp[i][1]);
	}
	close_fd(&inp[0]);
	close_fd(&inp[1]);
	close_fd(&master);
	free(path);
	if (rc < 0) {
		close_fd(&sp->pidfd);
		for (int i = 0; i < 2; i++) {
			close_fd(&sp->rd[i]);
			close_fd(&sp->dup[i]);
		}
		close_fd(&sp->in_w);
		atomic_fetch_sub(&running_children, 1);
	}
	return rc;
}

/* ---- the table (service thread) ------------------------------------------------------------ */

static void list_add(struct proc_list *l, struct proc *p)
{
	p->list = l;
	p->lnext = NULL;
	p->lprev = l->tail;
	if (l->tail)
		l->tail->lnext = p;
	else
		l->head = p;
	l->tail = p;
	l->n++;
}

static void list_del(struct proc *p)
{
	struct proc_list *l = p->list;
	if (!l)
		return;
	if (p->lprev)
		p->lprev->lnext = p->lnext;
	else
		l->head = p->lnext;
	if (p->lnext)
		p->lnext->lprev = p->lprev;
	else
		l->tail = p->lprev;
	l->n--;
	p->list = NULL;
	p->lnext = p->lprev = NULL;
}

struct proc_list *proc_records(struct agent *ag, enum proc_kind kind)
{
	struct proc_table *t = ag->procs;
	if (!t)
		return NULL;
	return kind == PK_SESSION ? &t->sessions : &t->records;
}

struct proc *proc_find(struct agent *ag, enum proc_kind kind, const char *id)
{
	struct proc_list *l = proc_records(ag, kind);
	if (!l || !id)
		return NULL;
	for (struct proc *p = l->head; p; p = p->lnext)
		if (strcmp(p->id, id) == 0)
			return p;
	return NULL;
}

/* Detach a wsi from its proc: later callbacks see no opaque pointer; close it soon. */
static void wsi_release(struct lws *wsi, bool close_it)
{
	lws_set_opaque_user_data(wsi, NULL);
	if (close_it)
		lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void log_free(struct proc *p)
{
	struct log_entry *e = p->log_head;
	while (e) {
		struct log_entry *n = e->next;
		free(e);
		e = n;
	}
	p->log_head = p->log_tail = NULL;
	p->t->log_bytes -= p->log_bytes;
	p->log_n = p->log_bytes = 0;
}

void proc_purge(struct proc *p)
{
	list_del(p);
	p->purged = true;
	while (p->listeners) {
		struct proc_listener *l = p->listeners;
		proc_unlisten(l);
		l->detach(l);
	}
	if (p->ops->release)
		p->ops->release(p);
	lws_sul_cancel(&p->sul_timeout);
	if (p->pidwsi) {
		wsi_release(p->pidwsi, true);
		p->pidwsi = NULL;
		p->pidfd = -1;
	}
	for (int i = 0; i < 2; i++) {
		struct proc_out *o = &p->out[i];
		if (o->wsi) {
			wsi_release(o->wsi, true);
			o->wsi = NULL;
		}
		close_fd(&o->dupfd);
		free(o->part);
	}
	log_free(p);
	free(p->command);
	free(p);
}

/* Reaped and both pipes at EOF: tell the kind (which may purge, and so free, p). */
static void proc_check(struct proc *p)
{
	if (p->finished || !p->reaped || !p->out[0].eof || !p->out[1].eof)
		return;
	p->finished = true;
	lws_sul_cancel(&p->sul_timeout);
	if (p->ops->finished)
		p->ops->finished(p);
}

static void emit_line(struct proc *p, int which, const char *d, size_t n)
{
	if (p->ops->line)
		p->ops->line(p, which, d, n);
}

static void deliver(struct proc *p, int which, const char *d, size_t n)
{
	if (p->ops->output) {
		p->ops->output(p, which, d, n);
		return;
	}
	struct proc_out *o = &p->out[which];
	while (n) {
		const char *nl = memchr(d, '\n', n);
		size_t take = nl ? (size_t)(nl - d) + 1 : n;
		size_t room = AGENT_LOG_LINE_MAX - o->partlen;
		if (take > room) {
			take = room; /* an overlong line is cut into pieces */
			nl = NULL;
		}
		if (o->partlen == 0 && nl) {
			emit_line(p, which, d, take);
		} else {
			if (!o->part && !(o->part = malloc(AGENT_LOG_LINE_MAX)))
				return;
			memcpy(o->part + o->partlen, d, take);
			o->partlen += take;
			if (nl || o->partlen == AGENT_LOG_LINE_MAX) {
				emit_line(p, which, o->part, o->partlen);
				o->partlen = 0;
			}
		}
		d += take;
		n -= take;
	}
}

/* The pipe is done (EOF, error, or lws closed it): read what the dup still holds, then mark
 * EOF. Never blocks: the dup is non-blocking. */
static void pipe_done(struct proc *p, int which, bool drain)
{
	static char buf[READ_CHUNK];
	struct proc_out *o = &p->out[which];
	if (o->eof)
		return;
	while (drain && o->dupfd >= 0) {
		ssize_t n = read(o->dupfd, buf, sizeof(buf));
		if (n > 0) {
			deliver(p, which, buf, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		break;
	}
	close_fd(&o->dupfd);
	o->eof = true;
	if (o->partlen) {
		size_t n = o->partlen;
		o->partlen = 0;
		emit_line(p, which, o->part, n);
	}
	free(o->part);
	o->part = NULL;
}

void proc_close_pipes(struct proc *p)
{
	for (int i = 0; i < 2; i++) {
		struct proc_out *o = &p->out[i];
		if (o->wsi) {
			wsi_release(o->wsi, true);
			o->wsi = NULL;
		}
		pipe_done(p, i, true);
	}
	proc_check(p);
}

void proc_pause_output(struct proc *p, bool pause)
{
	for (int i = 0; i < 2; i++) {
		struct proc_out *o = &p->out[i];
		if (!o->wsi || o->paused == pause)
			continue;
		o->paused = pause;
		lws_rx_flow_control(o->wsi, pause ? 0 : 1);
	}
}

int proc_signal(struct proc *p, int sig)
{
	if (p->reaped || p->pidfd < 0)
		return -ESRCH;
	if (pidfd_send_signal(p->pidfd, sig, NULL, 0) < 0 && errno != ESRCH)
		return -errno;
	if (killpg(p->pid, sig) < 0 && errno != ESRCH)
		return -errno;
	return 0;
}

void proc_kill_group(struct proc *p)
{
	if (!p->reaped) {
		proc_signal(p, SIGKILL);
		return;
	}
	/* The leader is gone. While a pipe is still open some member of its group most likely
	 * still holds it, and then the group id cannot have been reused (the kernel keeps a pid
	 * number allocated while it names a live process group). */
	if (p->out[0].wsi || p->out[1].wsi)
		killpg(p->pid, SIGKILL);
}

static void on_reaped(struct proc *p, const siginfo_t *si)
{
	p->reaped = true;
	atomic_fetch_sub(&running_children, 1);
	/* The timer stays armed until the output is done too (proc_check): a background
	 * child holding the pipes must not keep a request open past its timeout. */
	p->end = time(NULL);
	p->end_ms = dbx_now_ms();
	if (si && si->si_code == CLD_EXITED) {
		p->exit_code = si->si_status;
		if (p->state == PS_RUNNING)
			p->state = si->si_status == 0 ? PS_COMPLETED : PS_FAILED;
	} else if (si) {
		p->signaled = true;
		p->exit_code = 128 + si->si_status;
		p->state = PS_KILLED;
	} else {
		p->exit_code = -1;
		if (p->state == PS_RUNNING)
			p->state = PS_FAILED;
	}
	if (p->ops->reaped)
		p->ops->reaped(p);
}

static int on_pidfd(struct proc *p, struct lws *wsi)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid((idtype_t)P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0) {
		if (errno == EINTR)
			return 0;
		agent_log(LLL_ERR, "waitid(pidfd) for pid %d: %s", (int)p->pid, strerror(errno));
		wsi_release(wsi, false);
		p->pidwsi = NULL;
		p->pidfd = -1;
		on_reaped(p, NULL);
		proc_check(p);
		return -1;
	}
	if (si.si_pid == 0)
		return 0;
	wsi_release(wsi, false);
	p->pidwsi = NULL;
	p->pidfd = -1;
	on_reaped(p, &si);
	if (p->drop_output)
		proc_close_pipes(p); /* may free p */
	else
		proc_check(p); /* may free p */
	return -1;
}

static int on_pipe(struct proc *p, int which, struct lws *wsi)
{
	static char buf[READ_CHUNK];
	struct proc_out *o = &p->out[which];
	ssize_t n = read(o->dupfd, buf, sizeof(buf));
	if (n > 0) {
		deliver(p, which, buf, (size_t)n);
		return 0;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	wsi_release(wsi, false);
	o->wsi = NULL;
	pipe_done(p, which, false);
	proc_check(p);
	return -1;
}

int proc_raw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		      size_t len)
{
	struct proc *p;
	switch (reason) {
	case LWS_CALLBACK_RAW_RX_FILE:
		p = lws_get_opaque_user_data(wsi);
		if (!p)
			return -1;
		if (wsi == p->pidwsi)
			return on_pidfd(p, wsi);
		for (int i = 0; i < 2; i++)
			if (wsi == p->out[i].wsi)
				return on_pipe(p, i, wsi);
		return -1;
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		/* Closed by lws itself: POLLHUP on a paused pipe (T18), or shutdown. */
		p = lws_get_opaque_user_data(wsi);
		if (!p)
			return 0;
		lws_set_opaque_user_data(wsi, NULL);
		if (wsi == p->pidwsi) {
			p->pidwsi = NULL;
			p->pidfd = -1;
			return 0;
		}
		for (int i = 0; i < 2; i++) {
			if (wsi == p->out[i].wsi) {
				p->out[i].wsi = NULL;
				pipe_done(p, i, true);
				proc_check(p);
				break;
			}
		}
		return 0;
	default:
		return 0;
	}
}

/* ---- logs and listeners ----------------------------------------------------------------- */

static void log_drop_oldest(struct proc *p)
{
	struct log_entry *old = p->log_head;
	p->log_head = old->next;
	if (!p->log_head)
		p->log_tail = NULL;
	p->log_n--;
	p->log_bytes -= old->len;
	p->t->log_bytes -= old->len;
	free(old);
}

/* The oldest record or session with log entries other than @keep (whose newest entry must
 * survive); @keep itself when it is the only one holding more than that entry. */
static struct proc *log_victim(struct proc_table *t, struct proc *keep)
{
	struct proc_list *lists[] = {&t->records, &t->sessions};
	for (size_t i = 0; i < 2; i++)
		for (struct proc *q = lists[i]->head; q; q = q->lnext)
			if (q != keep && q->log_n > 0)
				return q;
	return keep->log_n > 1 ? keep : NULL;
}

void proc_log_append(struct proc *p, const char *prefix, const char *data, size_t len)
{
	size_t pl = strlen(prefix);
	struct log_entry *e = malloc(sizeof(*e) + pl + len + 1);
	if (!e)
		return;
	e->next = NULL;
	e->len = pl + len;
	memcpy(e->text, prefix, pl);
	memcpy(e->text + pl, data, len);
	e->text[e->len] = '\0';
	if (p->log_tail)
		p->log_tail->next = e;
	else
		p->log_head = e;
	p->log_tail = e;
	p->log_n++;
	p->log_bytes += e->len;
	p->t->log_bytes += e->len;
	while (p->log_n > AGENT_LOG_ENTRIES || (p->log_bytes > AGENT_LOG_BYTES && p->log_n > 1))
		log_drop_oldest(p);
	/* The table-wide budget: take from the oldest record (or session) that has logs. */
	while (p->t->log_bytes > AGENT_LOG_TOTAL) {
		struct proc *victim = log_victim(p->t, p);
		if (!victim)
			break;
		log_drop_oldest(victim);
	}
	struct proc_listener *l = p->listeners;
	while (l) {
		struct proc_listener *next = l->next;
		l->entry(l, e);
		l = next;
	}
}

const struct log_entry *proc_log_from(struct proc *p, int64_t n)
{
	const struct log_entry *e = p->log_head;
	if (n <= 0 || (size_t)n >= p->log_n)
		return e;
	for (size_t skip = p->log_n - (size_t)n; skip; skip--)
		e = e->next;
	return e;
}

void proc_listen(struct proc *p, struct proc_listener *l)
{
	l->p = p;
	l->prev = NULL;
	l->next = p->listeners;
	if (p->listeners)
		p->listeners->prev = l;
	p->listeners = l;
}

void proc_unlisten(struct proc_listener *l)
{
	struct proc *p = l->p;
	if (!p)
		return;
	if (l->prev)
		l->prev->next = l->next;
	else
		p->listeners = l->next;
	if (l->next)
		l->next->prev = l->prev;
	l->next = l->prev = NULL;
	l->p = NULL;
}

/* ---- adoption (service thread) ---------------------------------------------------------- */

static struct lws *adopt_fd(struct agent *ag, int fd, struct proc *p)
{
	lws_adopt_desc_t info;
	memset(&info, 0, sizeof(info));
	info.vh = ag->vh;
	info.type = LWS_ADOPT_RAW_FILE_DESC;
	info.fd.filefd = fd;
	info.vh_prot_name = "dbx-raw";
	info.opaque = p;
	struct lws *wsi = lws_adopt_descriptor_vhost_via_info(&info);
	/* lws 4.1.6 closes only sockets when adoption fails; a raw fd stays ours. */
	if (!wsi)
		close(fd);
	return wsi;
}

static void reap_job(void *arg)
{
	pid_t pid = (pid_t)(intptr_t)arg;
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	atomic_fetch_sub(&running_children, 1);
}

static void orphan_finished(struct proc *p)
{
	proc_purge(p);
}

const struct proc_ops proc_orphan_ops = {
	.finished = orphan_finished,
};

static void gen_id(struct proc_table *t, enum proc_kind kind, char id[9])
{
	for (;;) {
		dbx_random_id(id, 8);
		if (kind != PK_EXEC && kind != PK_SESSION)
			return;
		if (!proc_find(t->ag, kind, id))
			return;
	}
}

static void purge_oldest_finished(struct proc_list *l)
{
	for (struct proc *p = l->head; p; p = p->lnext) {
		if (p->reaped) {
			proc_purge(p);
			return;
		}
	}
}

static void timeout_cb(lws_sorted_usec_list_t *sul)
{
	struct proc *p = lws_container_of(sul, struct proc, sul_timeout);
	p->timed_out = true;
	/* Escaped writers (outside the group) must not keep the record waiting. */
	p->drop_output = true;
	proc_kill_group(p);
	if (p->ops->timeout)
		p->ops->timeout(p);
	if (p->reaped)
		proc_close_pipes(p);
}

static void adopt_cb(void *arg)
{
	struct proc_start *ps = arg;
	struct agent *ag = ps->ag;
	struct proc_table *t = ag->procs;
	struct proc_spawned *sp = &ps->sp;
	struct proc *p = t ? calloc(1, sizeof(*p)) : NULL;

	if (!p) {
		/* Shutting down (or out of memory): nothing may watch this child. */
		pidfd_send_signal(sp->pidfd, SIGKILL, NULL, 0);
		killpg(sp->pid, SIGKILL);
		close_fd(&sp->pidfd);
		for (int i = 0; i < 2; i++) {
			close_fd(&sp->rd[i]);
			close_fd(&sp->dup[i]);
		}
		close_fd(&sp->in_w);
		if (t)
			work_submit(ag->pool, reap_job, (void *)(intptr_t)sp->pid);
		else
			atomic_fetch_sub(&running_children, 1);
		free(ps->command);
		ps->started(NULL, ps);
		free(ps);
		return;
	}
	p->t = t;
	p->kind = ps->kind;
	p->ops = ps->ops;
	p->command = ps->command;
	ps->command = NULL;
	p->pid = sp->pid;
	p->pidfd = sp->pidfd;
	p->start = sp->start;
	p->start_ms = sp->start_ms;
	p->state = PS_RUNNING;
	gen_id(t, p->kind, p->id);

	p->pidwsi = adopt_fd(ag, sp->pidfd, p);
	sp->pidfd = -1;
	if (!p->pidwsi) {
		agent_log(LLL_ERR, "cannot watch pid %d (adopting its pidfd failed)", (int)p->pid);
		killpg(p->pid, SIGKILL);
		work_submit(ag->pool, reap_job, (void *)(intptr_t)p->pid);
		for (int i = 0; i < 2; i++) {
			close_fd(&sp->rd[i]);
			close_fd(&sp->dup[i]);
		}
		close_fd(&sp->in_w);
		free(p->command);
		free(p);
		ps->started(NULL, ps);
		free(ps);
		return;
	}
	bool ok = true;
	for (int i = 0; i < 2; i++) {
		p->out[i].dupfd = sp->dup[i];
		sp->dup[i] = -1;
		if (sp->rd[i] < 0) {
			p->out[i].eof = true; /* a PTY has no separate stderr */
			continue;
		}
		p->out[i].wsi = adopt_fd(ag, sp->rd[i], p);
		sp->rd[i] = -1;
		if (!p->out[i].wsi) {
			ok = false;
			pipe_done(p, i, false);
		}
	}
	if (!ok) {
		agent_log(LLL_ERR, "cannot watch pid %d (adopting a pipe failed)", (int)p->pid);
		p->ops = &proc_orphan_ops;
		p->drop_output = true;
		list_add(&t->anon, p);
		proc_kill_group(p);
		close_fd(&sp->in_w);
		ps->started(NULL, ps);
		free(ps);
		return;
	}
	if (p->kind == PK_EXEC) {
		while (t->records.n >= AGENT_MAX_RECORDS) {
			int before = t->records.n;
			purge_oldest_finished(&t->records);
			if (t->records.n == before)
				break;
		}
		list_add(&t->records, p);
	} else if (p->kind == PK_SESSION) {
		while (t->sessions.n >= SESSION_RECORDS_MAX) {
			int before = t->sessions.n;
			purge_oldest_finished(&t->sessions);
			if (t->sessions.n == before)
				break;
		}
		list_add(&t->sessions, p);
	} else {
		list_add(&t->anon, p);
	}
	p->ext = ps->ext;
	ps->ext = NULL;
	if (ps->timeout_s > 0)
		lws_sul_schedule(ag->ctx, 0, &p->sul_timeout, timeout_cb,
				 (lws_usec_t)ps->timeout_s * LWS_US_PER_SEC);
	ps->started(p, ps);
	free(ps);
}

void proc_start_post(struct proc_start *ps)
{
	work_post(ps->ag->pool, adopt_cb, ps);
}

/* ---- table lifecycle ------------------------------------------------------------------- */

static void sweep_list(struct proc_list *l, uint64_t ttl_ms, uint64_t now)
{
	struct proc *p = l->head;
	while (p) {
		struct proc *next = p->lnext;
		if (p->reaped && now - p->end_ms >= ttl_ms)
			proc_purge(p);
		p = next;
	}
}

static void sweep_cb(lws_sorted_usec_list_t *sul)
{
	struct proc_table *t = lws_container_of(sul, struct proc_table, sweep);
	uint64_t now = dbx_now_ms();
	sweep_list(&t->records, RECORD_TTL_MS, now);
	sweep_list(&t->sessions, SESSION_TTL_MS, now);
	lws_sul_schedule(t->ag->ctx, 0, &t->sweep, sweep_cb, SWEEP_SECS * LWS_US_PER_SEC);
}

int proc_table_new(struct agent *ag)
{
	struct proc_table *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->ag = ag;
	ag->procs = t;
	ports_cache_init(ag);
	lws_sul_schedule(ag->ctx, 0, &t->sweep, sweep_cb, SWEEP_SECS * LWS_US_PER_SEC);
	return 0;
}

static void free_list(struct proc_list *l)
{
	while (l->head) {
		struct proc *p = l->head;
		proc_kill_group(p);
		proc_purge(p);
	}
}

void proc_table_free(struct agent *ag)
{
	struct proc_table *t = ag->procs;
	if (!t)
		return;
	lws_sul_cancel(&t->sweep);
	free_list(&t->records);
	free_list(&t->sessions);
	free_list(&t->anon);
	ag->procs = NULL;
	free(t);
}
