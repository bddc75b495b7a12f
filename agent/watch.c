/* watch.c: the recursive inotify watcher behind the change events (PROTOCOL.md §3).
 *
 * One thread, started by events_start() and joined by events_stop(), owns everything here: the
 * inotify fd, the wd -> relative path map and the batch being built. It is the only code that
 * touches the file system for events, so the lws service thread never blocks on it.
 *
 * Loop: poll the inotify fd and a stop eventfd; drain what the kernel has (until EAGAIN, or a
 * batch limit), turn it into a batch of events (moves paired by cookie in the position of their
 * IN_MOVED_FROM), then stat each surviving object (confined: fstatat on an openat2-resolved
 * parent, never following the last component) and publish the batch to the ring.
 *
 * New directories (created, or moved in from outside) get a watch first and are then walked,
 * every entry reported as create/mkdir, so a `mkdir -p` or a `git checkout` racing the watch
 * loses nothing (an entry may be reported twice: once by the walk, once by its own event).
 * Watches are added through /proc/self/fd/N of a directory opened component by component with
 * O_NOFOLLOW beneath the workspace root, so a symlink can never make us watch outside it.
 *
 * Queue overflow rebuilds every watch (new inotify instance, silent walk) and then publishes an
 * `overflow`; a watch that cannot be added (ENOSPC: fs.inotify.max_user_watches) is logged and
 * also gives an `overflow` (once per batch), as the client can no longer trust the stream. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attr.h"
#include "base64.h"
#include "events_int.h"
#include "misc.h"
#include "path.h"

#define WATCH_MASK                                                                                 \
	(IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM |          \
	 IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK | IN_ONLYDIR)
#define BATCH_MAX      8192 /* events per published batch: bounds memory under a flood */
#define WALK_DEPTH_MAX 512  /* deeper directories are not watched (overflow instead) */
#define WALK_WAIT_SECS 5    /* events_start() waits this long for the initial watches */

enum ev_kind { K_NONE, K_CREATE, K_MKDIR, K_MODIFY, K_ATTRIB, K_DELETE, K_RMDIR, K_RENAME };

static const char *const kind_name[] = {
	[K_NONE] = "none",     [K_CREATE] = "create", [K_MKDIR] = "mkdir", [K_MODIFY] = "modify",
	[K_ATTRIB] = "attrib", [K_DELETE] = "delete", [K_RMDIR] = "rmdir", [K_RENAME] = "rename",
};

struct pev {
	enum ev_kind kind;
	char *path;
	char *to;          /* K_RENAME */
	uint32_t cookie;   /* an IN_MOVED_FROM waiting for its IN_MOVED_TO */
	bool from_pending; /* kind is K_DELETE/K_RMDIR until paired */
	bool isdir;
};

struct watch {
	struct watch *hnext;
	int wd;
	char *path; /* relative to the root, "." for the root */
};

struct watcher {
	struct agent *ag;
	struct events *e;
	pthread_t thread;
	int stopfd;           /* eventfd: written by watcher_stop() */
	atomic_bool stopping; /* checked by long walks */
	/* The initial walk: watcher_start() waits for it (bounded) so that a change made right
	 * after the agent says "listening" is seen. */
	pthread_mutex_t ready_mu;
	pthread_cond_t ready_cv;
	bool ready;   /* (ready_mu) the initial watches exist */
	bool gave_up; /* (ready_mu) watcher_start() stopped waiting: overflow when ready */
	/* Everything below: the watcher thread only. */
	int ifd;
	int rootdir; /* O_RDONLY | O_DIRECTORY of the workspace root */
	int root_wd;
	struct watch **buckets;
	size_t nbuckets, nwatches;
	struct pev *b;
	size_t n, cap;
	bool need_rebuild;     /* IN_Q_OVERFLOW seen in this batch */
	bool overflow_pending; /* publish an overflow at the end of this batch */
	bool watch_fail_logged;
	/* publish(): one cached parent directory for the stats of a batch */
	char *pdir;
	int pdirfd;
};

/* ---- wd -> path map ------------------------------------------------------------------ */

static size_t wd_hash(const struct watcher *w, int wd)
{
	return ((size_t)(unsigned)wd * 2654435761u) & (w->nbuckets - 1);
}

static struct watch *map_get(struct watcher *w, int wd)
{
	for (struct watch *x = w->buckets[wd_hash(w, wd)]; x; x = x->hnext)
		if (x->wd == wd)
			return x;
	return NULL;
}

static void map_grow(struct watcher *w)
{
	size_t old = w->nbuckets;
	struct watch **ob = w->buckets;
	struct watch **nb = calloc(old * 2, sizeof(*nb));

	if (!nb)
		return; /* keep the longer chains */
	w->buckets = nb;
	w->nbuckets = old * 2;
	for (size_t i = 0; i < old; i++) {
		while (ob[i]) {
			struct watch *x = ob[i];
			ob[i] = x->hnext;
			size_t h = wd_hash(w, x->wd);
			x->hnext = nb[h];
			nb[h] = x;
		}
	}
	free(ob);
}

static int map_put(struct watcher *w, int wd, const char *path)
{
	struct watch *x = map_get(w, wd);
	char *p = strdup(path);

	if (!p)
		return -ENOMEM;
	if (x) { /* the same directory seen under a new name */
		free(x->path);
		x->path = p;
		return 0;
	}
	x = malloc(sizeof(*x));
	if (!x) {
		free(p);
		return -ENOMEM;
	}
	x->wd = wd;
	x->path = p;
	size_t h = wd_hash(w, wd);
	x->hnext = w->buckets[h];
	w->buckets[h] = x;
	if (++w->nwatches > w->nbuckets)
		map_grow(w);
	return 0;
}

static void map_del(struct watcher *w, int wd)
{
	for (struct watch **pp = &w->buckets[wd_hash(w, wd)]; *pp; pp = &(*pp)->hnext) {
		if ((*pp)->wd == wd) {
			struct watch *x = *pp;
			*pp = x->hnext;
			free(x->path);
			free(x);
			w->nwatches--;
			return;
		}
	}
}

static void map_clear(struct watcher *w)
{
	for (size_t i = 0; i < w->nbuckets; i++) {
		while (w->buckets[i]) {
			struct watch *x = w->buckets[i];
			w->buckets[i] = x->hnext;
			free(x->path);
			free(x);
		}
	}
	w->nwatches = 0;
}

/* Is @path @dir itself or below it? Returns the length of @dir when it is, else 0. */
static size_t under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	if (strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/'))
		return n;
	return 0;
}

/* A directory moved inside the workspace: every watch at or below @from now lives below @to.
 * Returns whether @from itself was watched. */
static bool map_rename(struct watcher *w, const char *from, const char *to)
{
	bool found = false;

	for (size_t i = 0; i < w->nbuckets; i++) {
		for (struct watch *x = w->buckets[i]; x; x = x->hnext) {
			size_t n = under(x->path, from);
			if (!n)
				continue;
			found |= x->path[n] == '\0';
			size_t tl = strlen(to), rl = strlen(x->path + n);
			char *p = malloc(tl + rl + 1);
			if (!p)
				continue;
			memcpy(p, to, tl);
			memcpy(p + tl, x->path + n, rl + 1);
			free(x->path);
			x->path = p;
		}
	}
	return found;
}

/* A directory left the workspace: stop watching it and everything below it. */
static void map_remove_tree(struct watcher *w, const char *dir)
{
	for (size_t i = 0; i < w->nbuckets; i++) {
		struct watch **pp = &w->buckets[i];
		while (*pp) {
			struct watch *x = *pp;
			if (x->wd != w->root_wd && under(x->path, dir)) {
				inotify_rm_watch(w->ifd, x->wd);
				*pp = x->hnext;
				free(x->path);
				free(x);
				w->nwatches--;
			} else {
				pp = &x->hnext;
			}
		}
	}
}

/* ---- the batch ----------------------------------------------------------------------- */

static char *join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p;

	if (strcmp(dir, ".") == 0)
		return strdup(name);
	p = malloc(dl + nl + 2);
	if (!p)
		return NULL;
	memcpy(p, dir, dl);
	p[dl] = '/';
	memcpy(p + dl + 1, name, nl + 1);
	return p;
}

/* Appends an event; takes @path. Drops a repeat of the batch's last event (a write() loop gives
 * one IN_MODIFY per call, then IN_CLOSE_WRITE). */
static struct pev *add_ev(struct watcher *w, enum ev_kind kind, char *path, bool isdir)
{
	if (!path)
		return NULL;
	if ((kind == K_MODIFY || kind == K_ATTRIB) && w->n) {
		struct pev *l = &w->b[w->n - 1];
		if (l->kind == kind && !l->from_pending && strcmp(l->path, path) == 0) {
			free(path);
			return NULL;
		}
	}
	if (w->n == w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 64;
		struct pev *nb = realloc(w->b, nc * sizeof(*nb));
		if (!nb) {
			free(path);
			w->overflow_pending = true;
			return NULL;
		}
		w->b = nb;
		w->cap = nc;
	}
	struct pev *p = &w->b[w->n++];
	memset(p, 0, sizeof(*p));
	p->kind = kind;
	p->path = path;
	p->isdir = isdir;
	return p;
}

static void watch_failed(struct watcher *w, const char *rel, int err)
{
	if (!w->watch_fail_logged) {
		agent_log(LLL_WARN, "events: cannot watch %s: %s%s", rel, strerror(err),
			  err == ENOSPC
				  ? " (fs.inotify.max_user_watches reached); changes below it "
				    "are reported as overflow"
				  : "");
		w->watch_fail_logged = true;
	}
	w->overflow_pending = true;
}

static int add_watch(struct watcher *w, int dfd, const char *rel)
{
	char proc[48];
	int wd;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dfd);
	/* The magic link must be followed: it names exactly the directory we opened. */
	wd = inotify_add_watch(w->ifd, proc, WATCH_MASK);
	if (wd < 0 && errno == ENOENT) { /* no /proc: the path, last component not followed */
		char *abs = dbx_path_join_abs(w->ag->cfg.workspace, rel);
		wd = abs ? inotify_add_watch(w->ifd, abs, WATCH_MASK | IN_DONT_FOLLOW) : -1;
		free(abs);
	}
	if (wd < 0) {
		watch_failed(w, rel, errno);
		return -1;
	}
	if (map_put(w, wd, rel) < 0) {
		inotify_rm_watch(w->ifd, wd);
		w->overflow_pending = true;
		return -1;
	}
	return wd;
}

/* Watches the directory open as @dfd (relative path @rel) and everything below it. With
 * @report every entry found is added to the batch as create/mkdir. Consumes @dfd. */
static void watch_tree(struct watcher *w, int dfd, const char *rel, bool report, int depth)
{
	DIR *d;
	struct dirent *de;

	if (add_watch(w, dfd, rel) < 0) {
		close(dfd);
		return;
	}
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	while ((de = readdir(d)) && !atomic_load(&w->stopping)) {
		const char *name = de->d_name;
		bool isdir;

		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;
			if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue;
			isdir = S_ISDIR(st.st_mode);
		} else {
			isdir = de->d_type == DT_DIR;
		}
		if (!isdir && !report)
			continue;
		char *sub = join(rel, name);
		if (!sub) {
			w->overflow_pending = true;
			continue;
		}
		if (report)
			add_ev(w, isdir ? K_MKDIR : K_CREATE, strdup(sub), isdir);
		if (isdir) {
			int sfd = openat(dirfd(d), name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sfd >= 0 && depth + 1 < WALK_DEPTH_MAX)
				watch_tree(w, sfd, sub, report, depth + 1);
			else if (sfd >= 0) {
				close(sfd);
				watch_failed(w, sub, ELOOP);
			}
		}
		free(sub);
	}
	closedir(d);
}

/* A directory appeared at @rel (created, or moved in): watch it and report what it holds. */
static void watch_new_dir(struct watcher *w, const char *rel)
{
	int fd = dbx_path_open(w->ag->rootfd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, 0);

	if (fd >= 0)
		watch_tree(w, fd, rel, true, 0);
	/* Gone already (or replaced by a non-directory): its own events say so. */
}

static void watch_all(struct watcher *w)
{
	int fd = openat(w->rootdir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		watch_failed(w, ".", errno);
		return;
	}
	watch_tree(w, fd, ".", false, 0);
	w->root_wd = -1;
	for (size_t i = 0; i < w->nbuckets; i++)
		for (struct watch *x = w->buckets[i]; x; x = x->hnext)
			if (strcmp(x->path, ".") == 0)
				w->root_wd = x->wd;
}

static void handle(struct watcher *w, const struct inotify_event *ev)
{
	struct watch *x;
	bool isdir = ev->mask & IN_ISDIR;
	char *path;

	if (ev->mask & IN_Q_OVERFLOW) {
		w->need_rebuild = true;
		w->overflow_pending = true;
		return;
	}
	x = map_get(w, ev->wd);
	if (ev->mask & IN_IGNORED) {
		if (x)
			map_del(w, ev->wd);
		return;
	}
	if (!x)
		return; /* a watch removed while its events were queued */
	if (!ev->len || !ev->name[0]) {
		/* About the watched directory itself: its parent's watch reports it, except for
		 * the root, which has no parent here. */
		if (ev->wd != w->root_wd)
			return;
		if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
			agent_log(LLL_WARN, "events: the workspace directory was moved or deleted");
			w->overflow_pending = true;
		} else if (ev->mask & IN_ATTRIB) {
			add_ev(w, K_ATTRIB, strdup("."), true);
		}
		return;
	}
	path = join(x->path, ev->name);
	if (!path) {
		w->overflow_pending = true;
		return;
	}
	if (ev->mask & IN_CREATE) {
		add_ev(w, isdir ? K_MKDIR : K_CREATE, path, isdir);
		if (isdir)
			watch_new_dir(w, path);
	} else if (ev->mask & IN_DELETE) {
		add_ev(w, isdir ? K_RMDIR : K_DELETE, path, isdir);
	} else if (ev->mask & IN_MOVED_FROM) {
		struct pev *p = add_ev(w, isdir ? K_RMDIR : K_DELETE, path, isdir);
		if (p) {
			p->cookie = ev->cookie;
			p->from_pending = true;
		}
	} else if (ev->mask & IN_MOVED_TO) {
		struct pev *p = NULL;
		for (size_t i = w->n; i-- > 0;) {
			if (w->b[i].from_pending && w->b[i].cookie == ev->cookie) {
				p = &w->b[i];
				break;
			}
		}
		if (p) {
			p->kind = K_RENAME;
			p->to = path;
			p->from_pending = false;
			/* Not watched yet when it was renamed before its IN_CREATE was handled (the
			 * watch then failed with ENOENT): watch it now, under the new name. */
			if (isdir && !map_rename(w, p->path, path))
				watch_new_dir(w, path);
		} else {
			add_ev(w, isdir ? K_MKDIR : K_CREATE, path, isdir);
			if (isdir)
				watch_new_dir(w, path);
		}
	} else if (ev->mask & (IN_MODIFY | IN_CLOSE_WRITE)) {
		add_ev(w, K_MODIFY, path, isdir);
	} else if (ev->mask & IN_ATTRIB) {
		add_ev(w, K_ATTRIB, path, isdir);
	} else {
		free(path);
	}
}

/* ---- publishing ---------------------------------------------------------------------- */

/* The attr of @rel, or NULL when it no longer exists. Confined: the parent is resolved beneath
 * the root and the last component is never followed. */
/* The directory holding @rel (cached for the batch) and @rel's last name; -errno. */
static int parent_of(struct watcher *w, const char *rel, const char **ret_name)
{
	const char *slash = strrchr(rel, '/');

	if (!slash) {
		*ret_name = rel;
		return w->rootdir;
	}
	size_t dl = (size_t)(slash - rel);

	*ret_name = slash + 1;
	if (!w->pdir || strncmp(w->pdir, rel, dl) != 0 || w->pdir[dl] != '\0') {
		free(w->pdir);
		if (w->pdirfd >= 0)
			close(w->pdirfd);
		w->pdir = strndup(rel, dl);
		w->pdirfd = w->pdir ? dbx_path_open(w->ag->rootfd, w->pdir, O_PATH | O_DIRECTORY, 0, 0)
				    : -ENOMEM;
	}
	return w->pdirfd;
}

static cJSON *attr_of(struct watcher *w, const char *rel, struct stat *ret_st)
{
	const char *name;
	struct stat st;
	int pfd;
	char target[PATH_MAX];

	ret_st->st_mode = 0;
	if (strcmp(rel, ".") == 0) {
		if (fstat(w->rootdir, &st) < 0)
			return NULL;
		*ret_st = st;
		return fs_attr_json(&st, NULL);
	}
	pfd = parent_of(w, rel, &name);
	if (pfd < 0)
		return NULL;
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return NULL;
	*ret_st = st;
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(pfd, name, target, sizeof(target) - 1);
		target[n < 0 ? 0 : n] = '\0';
		return fs_attr_json(&st, target);
	}
	return fs_attr_json(&st, NULL);
}

static bool same_version(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* The content of the small regular file @rel as base64, if it is still the version in @st
 * (checked before and after the read, atime untouched); NULL otherwise.  Temp files of the
 * agent's own atomic writes (".NAME.dbx-XXXXXX") and versions written through the API are
 * left out: whoever wrote them has the bytes. */
static char *data_of(struct watcher *w, const char *rel, const struct stat *st, size_t max)
{
	const char *name;
	struct stat a, b;
	char *buf = NULL, *out = NULL;
	size_t got = 0, size = (size_t)st->st_size;
	int pfd, fd;

	if (!S_ISREG(st->st_mode) || (uint64_t)st->st_size > max || events_written_by_api(st))
		return NULL;
	pfd = parent_of(w, rel, &name);
	if (pfd < 0 || (name[0] == '.' && strstr(name, ".dbx-")))
		return NULL;
	/* Reading must not touch the file's atime (users see it, tests compare it): without
	 * O_NOATIME (the file is not ours and we lack CAP_FOWNER) no content goes. */
	fd = openat(pfd, name,
		    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOATIME);
	if (fd < 0)
		return NULL;
	buf = malloc(size + 1);
	if (!buf || fstat(fd, &a) < 0 || !same_version(&a, st))
		goto out;
	while (got <= size) {
		ssize_t n = pread(fd, buf + got, size + 1 - got, (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got != size || fstat(fd, &b) < 0 || !same_version(&b, st) ||
	    b.st_ctim.tv_sec != a.st_ctim.tv_sec || b.st_ctim.tv_nsec != a.st_ctim.tv_nsec)
		goto out;
	out = malloc(DBX_B64_LEN(size) + 1);
	if (out)
		dbx_b64_encode(buf, size, out);
out:
	free(buf);
	close(fd);
	return out;
}

/* A text frame must be UTF-8: a name that is not is sent lossily (U+FFFD), like a symlink's
 * target in an attr. */
static void add_path(cJSON *o, const char *key, const char *path)
{
	size_t len = strlen(path);
	char *lossy;

	if (dbx_utf8_valid(path, len, false)) {
		cJSON_AddStringToObject(o, key, path);
		return;
	}
	lossy = dbx_utf8_lossy(path, len, NULL);
	cJSON_AddStringToObject(o, key, lossy ? lossy : "");
	free(lossy);
}

static void pdir_reset(struct watcher *w)
{
	free(w->pdir);
	w->pdir = NULL;
	if (w->pdirfd >= 0)
		close(w->pdirfd);
	w->pdirfd = -1;
}

static void rebuild(struct watcher *w)
{
	int nfd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);

	if (nfd < 0) {
		agent_log(LLL_ERR, "events: inotify_init1: %s", strerror(errno));
		return; /* keep the overflowed instance: better than nothing */
	}
	close(w->ifd);
	w->ifd = nfd;
	map_clear(w);
	w->watch_fail_logged = false;
	watch_all(w);
}

static void finish_batch(struct watcher *w)
{
	cJSON **objs = calloc(w->n ? w->n : 1, sizeof(*objs));
	size_t no = 0, dmax = events_data_max();

	/* Unpaired moves: out of the workspace (a delete) — stop watching what left. */
	for (size_t i = 0; i < w->n; i++) {
		struct pev *p = &w->b[i];
		if (p->from_pending && p->isdir)
			map_remove_tree(w, p->path);
		p->from_pending = false;
	}
	if (w->need_rebuild) {
		/* Everything before the overflow is still worth sending, but the overflow must
		 * come after the new watches exist: a client revalidating on it then misses
		 * nothing. */
		rebuild(w);
	}
	for (size_t i = 0; objs && i < w->n; i++) {
		struct pev *p = &w->b[i];
		cJSON *o = cJSON_CreateObject();
		if (!o)
			break;
		cJSON_AddStringToObject(o, "kind", kind_name[p->kind]);
		add_path(o, "path", p->path);
		if (p->to)
			add_path(o, "to", p->to);
		if (p->kind != K_DELETE && p->kind != K_RMDIR) {
			const char *at = p->to ? p->to : p->path;
			struct stat st;
			cJSON *a = attr_of(w, at, &st);

			if (a)
				cJSON_AddItemToObject(o, "attr", a);
			/* Content for the last event of this file in the batch only. */
			if (a && dmax && (p->kind == K_CREATE || p->kind == K_MODIFY) &&
			    (i + 1 == w->n || strcmp(w->b[i + 1].path, p->path) != 0)) {
				char *data = data_of(w, at, &st, dmax);

				if (data && !cJSON_AddStringToObject(o, "data", data))
					w->overflow_pending = true;
				free(data);
			}
		}
		objs[no++] = o;
	}
	pdir_reset(w);
	if (no)
		events_publish(w->e, objs, no);
	if (w->overflow_pending || !objs || no < w->n)
		events_publish_overflow(w->e);
	for (size_t i = 0; i < no; i++)
		cJSON_Delete(objs[i]);
	free(objs);
	for (size_t i = 0; i < w->n; i++) {
		free(w->b[i].path);
		free(w->b[i].to);
	}
	w->n = 0;
	w->need_rebuild = false;
	w->overflow_pending = false;
}

/* Reads everything the kernel has queued, then publishes it as one batch. */
static void drain(struct watcher *w)
{
	char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));

	while (w->n < BATCH_MAX && !w->need_rebuild) {
		ssize_t len = read(w->ifd, buf, sizeof(buf));
		if (len < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				agent_log(LLL_ERR, "events: reading inotify: %s", strerror(errno));
			break;
		}
		if (len == 0)
			break;
		for (char *p = buf; p < buf + len;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			handle(w, ev);
			p += sizeof(*ev) + ev->len;
		}
	}
	finish_batch(w);
}

static void *watch_main(void *arg)
{
	struct watcher *w = arg;

	watch_all(w);
	pthread_mutex_lock(&w->ready_mu);
	w->ready = true;
	if (w->gave_up)
		w->overflow_pending = true; /* clients may have missed changes during the walk */
	pthread_cond_signal(&w->ready_cv);
	pthread_mutex_unlock(&w->ready_mu);
	if (w->overflow_pending)
		finish_batch(w); /* the workspace is not fully watched: say so at once */
	while (!atomic_load(&w->stopping)) {
		struct pollfd pf[2] = {{w->ifd, POLLIN, 0}, {w->stopfd, POLLIN, 0}};
		int r = poll(pf, 2, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			agent_log(LLL_ERR, "events: poll: %s", strerror(errno));
			break;
		}
		if (pf[1].revents)
			break;
		if (pf[0].revents)
			drain(w);
	}
	return NULL;
}

int watcher_start(struct agent *ag, struct events *e, struct watcher **ret)
{
	struct watcher *w = calloc(1, sizeof(*w));
	int r = -ENOMEM;

	*ret = NULL;
	if (!w)
		return -ENOMEM;
	w->ag = ag;
	w->e = e;
	w->ifd = w->stopfd = w->rootdir = w->pdirfd = -1;
	w->root_wd = -1;
	atomic_init(&w->stopping, false);
	pthread_mutex_init(&w->ready_mu, NULL);
	pthread_cond_init(&w->ready_cv, NULL);
	w->nbuckets = 1024;
	w->buckets = calloc(w->nbuckets, sizeof(*w->buckets));
	if (!w->buckets)
		goto fail;
	w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->ifd < 0) {
		r = -errno;
		agent_log(LLL_ERR, "events: inotify_init1: %s (fs.inotify.max_user_instances?)",
			  strerror(errno));
		goto fail;
	}
	w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	w->rootdir = openat(ag->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w->stopfd < 0 || w->rootdir < 0) {
		r = -errno;
		agent_log(LLL_ERR, "events: cannot open the workspace: %s", strerror(errno));
		goto fail;
	}
	r = -pthread_create(&w->thread, NULL, watch_main, w);
	if (r < 0) {
		agent_log(LLL_ERR, "events: cannot start the watcher thread: %s", strerror(-r));
		goto fail;
	}
	/* Bounded: a huge workspace must not keep the agent from serving. */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += WALK_WAIT_SECS;
	pthread_mutex_lock(&w->ready_mu);
	while (!w->ready) {
		if (pthread_cond_timedwait(&w->ready_cv, &w->ready_mu, &until) == ETIMEDOUT) {
			w->gave_up = !w->ready;
			break;
		}
	}
	pthread_mutex_unlock(&w->ready_mu);
	if (w->gave_up)
		agent_log(LLL_WARN,
			  "events: the workspace is still being watched after %d s; "
			  "an overflow event follows when it is done",
			  WALK_WAIT_SECS);
	*ret = w;
	return 0;
fail:
	if (w->ifd >= 0)
		close(w->ifd);
	if (w->stopfd >= 0)
		close(w->stopfd);
	if (w->rootdir >= 0)
		close(w->rootdir);
	free(w->buckets);
	pthread_cond_destroy(&w->ready_cv);
	pthread_mutex_destroy(&w->ready_mu);
	free(w);
	return r;
}

void watcher_stop(struct watcher *w)
{
	uint64_t one = 1;

	if (!w)
		return;
	atomic_store(&w->stopping, true);
	if (write(w->stopfd, &one, sizeof(one)) < 0)
		agent_log(LLL_ERR, "events: waking the watcher: %s", strerror(errno));
	pthread_join(w->thread, NULL);
	for (size_t i = 0; i < w->n; i++) {
		free(w->b[i].path);
		free(w->b[i].to);
	}
	free(w->b);
	pdir_reset(w);
	map_clear(w);
	free(w->buckets);
	close(w->ifd);
	close(w->stopfd);
	close(w->rootdir);
	pthread_cond_destroy(&w->ready_cv);
	pthread_mutex_destroy(&w->ready_mu);
	free(w);
}
