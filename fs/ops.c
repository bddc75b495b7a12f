/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Namespace and attribute operations (lookup, getattr, setattr, readdir, mkdir, rename, ...),
 * run by libfuse worker threads.
 *
 * Reads are answered from the mirror while the event stream is healthy (no round trip; long
 * kernel timeouts), otherwise from the agent with short timeouts.  Mutations are one remote
 * call each; their reply attributes go into the mirror and the kernel reply, and the remote
 * errno goes to fuse_reply_err unchanged.  A lookup answered from the mirror replies while
 * holding mirror.lock, so an event's invalidation always follows the answer into the kernel;
 * getattr and readdir re-check the mirror's generation after replying and, if an event landed
 * in between, ask the notifier to invalidate what was just handed out.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

/* ---- request context: interrupts and deadlines ---------------------------------------- */

static void on_interrupt(fuse_req_t req, void *data)
{
	struct opctx *o = data;

	o->cancelled = 1;
}

void op_begin(struct dfs *d, struct opctx *o, fuse_req_t req, bool may_wait)
{
	o->req = req;
	o->cancelled = 0;
	fuse_req_interrupt_func(req, on_interrupt, o);
	dbx_thread_set_cancel_flag(&o->cancelled);
	if (!d->hard && !may_wait)
		dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
}

int op_end(struct dfs *d, struct opctx *o, int r)
{
	const struct dbx_reply_meta *meta = dbx_last_reply_meta();

	dbx_thread_set_deadline(0);
	dbx_thread_set_cancel_flag(NULL);
	fuse_req_interrupt_func(o->req, NULL, NULL);
	if (meta && meta->valid && meta->seq > atomic_load(&d->st.agent_seq))
		atomic_store(&d->st.agent_seq, meta->seq);
	if (r < 0) {
		STAT_INC(d, remote_errors);
		if (o->cancelled) {
			STAT_INC(d, ops[OP_INTERRUPTED]);
			return -EINTR;
		}
		r = dfs_wire_errno(d, r);
	}
	return r;
}

uint64_t reply_seq(void)
{
	const struct dbx_reply_meta *meta = dbx_last_reply_meta();

	return meta && meta->valid ? meta->seq : 0;
}

/* When our own change of a name happened, for tombs and dseq: after the reply's seq (read
 * before the handler ran), so a listing stamped with that same seq may predate it. */
static uint64_t own_change_seq(void)
{
	return reply_seq() + 1;
}

int dfs_wire_errno(struct dfs *d, int r)
{
	switch (-r) {
	case ETIMEDOUT:
		return d->hard ? r : -EIO;
	case ECANCELED:
	case ECONNREFUSED:
	case ECONNRESET:
	case ECONNABORTED:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ENOTCONN:
	case EPIPE:
	case EPROTO:
	case EBADMSG:
		return -EIO; /* the link, not the file: what a local disk would say */
	default:
		return r;
	}
}

double dfs_ttl(struct dfs *d)
{
	return atomic_load(&d->healthy) ? d->ttl : d->ttl_down;
}

#define OP(d, op) STAT_INC(d, ops[op])
#define REMOTE(d) STAT_INC(d, remote_calls)

static struct dfs *req_dfs(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* ---- mirror helpers --------------------------------------------------------------------- */

/* The names in p were changed by our own call just answered: the directory's attr as that
 * change left it (X-Dbx-Dir, or X-Dbx-From-Dir for the source of a rename) saves a stat;
 * without it (older agent) or if the mirror already holds a later state, p is refreshed. */
static void own_dir_changed(struct dfs *d, struct ment *p, bool from)
{
	struct dbx_attr a;

	if (dbx_fs_last_dir(from, &a) == 0 && S_ISDIR(p->attr.mode) && a.ino == p->attr.ino &&
	    dfs_ts_cmp(&a.ctime, &p->attr.ctime) >= 0) {
		p->attr = a;
		return;
	}
	mirror_mark_stale(d, p);
}

void dfs_mirror_update(struct dfs *d, const char *path, const struct dbx_attr *a,
		       const char *target, bool parent_changed)
{
	struct ment *e;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_set(&d->mirror, path, a, target);
	if (e) {
		e->seq = reply_seq();
		e->own = true;
		e->own_gen++;
	}
	if (e && parent_changed && e->parent) {
		own_dir_changed(d, e->parent, false);
		e->parent->dseq = own_change_seq();
		mirror_neg_take(&d->mirror, path); /* the kernel's entry is the one we make */
	}
	pthread_mutex_unlock(&d->mirror.lock);
}

static void mirror_gone(struct dfs *d, const char *path, struct dbx_attr *ret_last)
{
	struct ment *e;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e && e != d->mirror.root) {
		if (ret_last)
			*ret_last = e->attr;
		if (e->parent) {
			own_dir_changed(d, e->parent, false);
			e->parent->dseq = own_change_seq();
		}
		mirror_tomb_set(&d->mirror, path, own_change_seq());
		mirror_detach(&d->mirror, e);
	}
	pthread_mutex_unlock(&d->mirror.lock);
}

/* Marks every entry of ino stale (its nlink changed through another name). */
static void stale_ino(struct dfs *d, struct ment *e, uint64_t ino)
{
	if (e->attr.ino == ino)
		mirror_mark_stale(d, e);
	for (struct ment *k = e->kids; k; k = k->next)
		stale_ino(d, k, ino);
}

/* Some path of ino in the mirror (another hard link), or NULL.  Caller holds mirror.lock. */
static char *path_of_ino(struct ment *e, uint64_t ino, const char *prefix)
{
	for (struct ment *k = e->kids; k; k = k->next) {
		char *p = path_join(prefix, k->name), *r = NULL;

		if (!p)
			return NULL;
		if (k->attr.ino == ino && !S_ISDIR(k->attr.mode))
			return p;
		if (S_ISDIR(k->attr.mode))
			r = path_of_ino(k, ino, p);
		free(p);
		if (r)
			return r;
	}
	return NULL;
}

/* 0 with *ret from the mirror, 1 if the mirror cannot answer, -ENOENT if it knows path is
 * absent.  Caller holds mirror.lock. */
static int mirror_answer(struct dfs *d, const char *path, struct dbx_attr *ret, char **ret_target)
{
	struct ment *e = mirror_find(&d->mirror, path);

	if (e && !e->stale) {
		*ret = e->attr;
		if (ret_target)
			*ret_target = e->target ? strdup(e->target) : NULL;
		return 0;
	}
	if (!e && *path) {
		char *dir = path_dir(path);
		struct ment *p = dir ? mirror_find(&d->mirror, dir) : NULL;

		free(dir);
		if (p && S_ISDIR(p->attr.mode) && p->complete)
			return -ENOENT;
	}
	return 1;
}

int dfs_refresh_attr(struct dfs *d, const char *path, struct dbx_attr *ret)
{
	struct ment *e;
	uint32_t gen = 0, own = 0;
	int r;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e) {
		gen = e->stale_gen;
		own = e->own_gen;
	}
	pthread_mutex_unlock(&d->mirror.lock);
	REMOTE(d);
	r = dbx_fs_stat(d->client, path, ret);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e && e->own_gen != own && e->attr.ino == ret->ino) {
		/* One of our own writes finished meanwhile: the stat may have caught it half way,
		 * its reply is the newer state. */
		*ret = e->attr;
		pthread_mutex_unlock(&d->mirror.lock);
		return 0;
	}
	bool again = e && e->stale && e->stale_gen != gen;

	if (!e && *path) {
		/* Gone from the mirror: only (re)add it if no name change in its directory came
		 * after the stat started (a delete applied meanwhile would be undone). */
		char *dir = path_dir(path);
		struct ment *p = dir ? mirror_find(&d->mirror, dir) : NULL;

		free(dir);
		if (!p || p->dseq > reply_seq()) {
			pthread_mutex_unlock(&d->mirror.lock);
			return 0;
		}
	}
	e = mirror_set(&d->mirror, path, ret, NULL);
	if (e) {
		e->seq = reply_seq();
		e->own = false;
		if (again)
			e->stale = true; /* changed again while the stat was under way */
	}
	pthread_mutex_unlock(&d->mirror.lock);
	return 0;
}

int dfs_getattr_path(struct dfs *d, const char *path, struct dbx_attr *ret, char **ret_target,
		     bool *ret_hit)
{
	int r = 1;

	if (ret_target)
		*ret_target = NULL;
	*ret_hit = false;
	if (atomic_load(&d->healthy)) {
		pthread_mutex_lock(&d->mirror.lock);
		r = mirror_answer(d, path, ret, ret_target);
		pthread_mutex_unlock(&d->mirror.lock);
		if (r <= 0) {
			*ret_hit = true;
			return r;
		}
	}
	r = dfs_refresh_attr(d, path, ret);
	if (r < 0 && r != -EINTR && dfs_wire_errno(d, r) == -EIO && r != -EIO) {
		/* The agent is out of reach: what the mirror last knew beats an error. */
		pthread_mutex_lock(&d->mirror.lock);
		struct ment *e = mirror_find(&d->mirror, path);

		if (e) {
			*ret = e->attr;
			if (ret_target && e->target)
				*ret_target = strdup(e->target);
			r = 0;
		}
		pthread_mutex_unlock(&d->mirror.lock);
		if (r == 0)
			return 0;
	}
	if (r == 0) {
		if (ret_target && S_ISLNK(ret->mode)) {
			pthread_mutex_lock(&d->mirror.lock);
			struct ment *e = mirror_find(&d->mirror, path);

			if (e && e->target)
				*ret_target = strdup(e->target);
			pthread_mutex_unlock(&d->mirror.lock);
		}
	} else if (r == -ENOENT) {
		/* Gone remotely before its event arrived: the kernel's dentry goes too (the
		 * event will find nothing left to do). */
		mirror_gone(d, path, NULL);
		if (*path)
			notify_path(d, NQ_ENTRY, path);
	}
	return r;
}

/* Lists path remotely into the mirror (a cold or incomplete directory). */
static int list_cb(void *ud, const char *name, const struct dbx_attr *a, const char *target)
{
	return listing_add(ud, name, a, target);
}

/* 0: the mirror holds path's listing; 1: the listing was too old to merge (see
 * mirror_fill_dir).  With keep, the listing itself is handed over either way. */
static int load_dir(struct dfs *d, const char *path, struct listing *keep)
{
	struct listing l = {0};
	int r;

	REMOTE(d);
	r = dbx_fs_list(d->client, path, &l.dir, list_cb, &l);
	if (r >= 0) {
		pthread_mutex_lock(&d->mirror.lock);
		r = mirror_fill_dir(&d->mirror, path, &l, reply_seq());
		pthread_mutex_unlock(&d->mirror.lock);
		if (r >= 0 && keep) {
			*keep = l;
			return r;
		}
	} else if (r == -ENOENT) {
		mirror_gone(d, path, NULL);
	}
	listing_free(&l);
	return r;
}

static void fill_entry(struct dfs *d, struct fuse_entry_param *e, fuse_ino_t id,
		       const struct dbx_attr *a)
{
	memset(e, 0, sizeof(*e));
	e->ino = id;
	attr_to_stat(a, &e->attr);
	e->attr_timeout = e->entry_timeout = dfs_ttl(d);
}

static void reply_entry(struct dfs *d, fuse_req_t req, const char *path, const struct dbx_attr *a)
{
	struct fuse_entry_param e;
	struct dfs_inode *i = itab_ref(d, path, a);

	if (!i) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fill_entry(d, &e, i->nodeid, a);
	shadow_stat(i, &e.attr);
	if (fuse_reply_entry(req, &e) < 0)
		itab_forget(d, i->nodeid, 1);
}

/* Copies the path of ino, replying ESTALE/ENOMEM itself on failure (see itab_path). */
char *dfs_path_of(struct dfs *d, fuse_req_t req, fuse_ino_t ino)
{
	char *p;
	int r = itab_path(d, ino, &p);

	if (r < 0)
		fuse_reply_err(req, -r);
	return p;
}

static char *child_path(struct dfs *d, fuse_req_t req, fuse_ino_t parent, const char *name)
{
	char *dir, *p;
	int r;

	if (strlen(name) > NAME_MAX) {
		fuse_reply_err(req, ENAMETOOLONG);
		return NULL;
	}
	/* A directory that was removed (a shell's cwd) holds no names: ENOENT, as on a disk. */
	r = itab_path(d, parent, &dir);
	if (r < 0) {
		fuse_reply_err(req, r == -ESTALE ? ENOENT : -r);
		return NULL;
	}
	p = path_join(dir, name);
	free(dir);
	if (!p)
		fuse_reply_err(req, ENOMEM);
	return p;
}

/* ---- echo requests (echo.c): the change already happened; answer from the mirror ------- */

static int echo_entry_attr(struct dfs *d, const char *path, struct dbx_attr *a)
{
	struct ment *e;
	int r = -ENOENT;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e) {
		*a = e->attr;
		r = 0;
	}
	pthread_mutex_unlock(&d->mirror.lock);
	return r;
}

/* An echo of a creation (mkdir, symlink, mknod): reply with the entry the mirror holds. */
static bool echo_new_entry(struct dfs *d, fuse_req_t req, const char *path)
{
	struct dbx_attr a;

	if (!echo_req(d, req))
		return false;
	if (echo_entry_attr(d, path, &a) < 0)
		fuse_reply_err(req, ENOENT);
	else
		reply_entry(d, req, path, &a);
	return true;
}

/* ---- lookup / forget / getattr ------------------------------------------------------- */

/* from_mirror: answered from the mirror, and called under mirror.lock. */
static void lookup_reply(struct dfs *d, fuse_req_t req, const char *path, int r,
			 const struct dbx_attr *a, bool from_mirror)
{
	if (r == -ENOENT) {
		struct fuse_entry_param e;

		if (from_mirror)
			STAT_INC(d, negative_hits);
		fill_entry(d, &e, 0, a);
		memset(&e.attr, 0, sizeof(e.attr));
		e.attr_timeout = 0;
		if (!atomic_load(&d->healthy))
			e.entry_timeout = 0;
		if (e.entry_timeout > 0) {
			/* Kept by the kernel: the event that makes the name must drop it. */
			if (!from_mirror)
				pthread_mutex_lock(&d->mirror.lock);
			mirror_neg_note(&d->mirror, path, e.entry_timeout);
			if (!from_mirror)
				pthread_mutex_unlock(&d->mirror.lock);
		}
		fuse_reply_entry(req, &e);
	} else if (r < 0) {
		fuse_reply_err(req, -r);
	} else {
		if (from_mirror)
			STAT_INC(d, lookup_hits);
		reply_entry(d, req, path, a);
	}
}

static void dfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a = {0};
	struct opctx o;
	bool from_mirror = false;
	char *path, *dir = NULL;
	int r = 1;

	OP(d, OP_LOOKUP);
	path = child_path(d, req, parent, name);
	if (!path)
		return;
	if (echo_req(d, req) && (r = echo_lookup(d, path, &a)) != 0) {
		/* Short-lived answers: only this replay may see them. */
		struct fuse_entry_param e;
		struct dfs_inode *i = r > 0 ? itab_ref(d, path, &a) : NULL;

		fill_entry(d, &e, i ? i->nodeid : 0, &a);
		e.attr_timeout = e.entry_timeout = 0;
		if (r < 0)
			memset(&e.attr, 0, sizeof(e.attr));
		if (r > 0 && !i)
			fuse_reply_err(req, ENOMEM);
		else if (fuse_reply_entry(req, &e) < 0 && i)
			itab_forget(d, i->nodeid, 1);
		free(path);
		return;
	}
	r = 1;
	if (atomic_load(&d->healthy)) {
		pthread_mutex_lock(&d->mirror.lock);
		r = mirror_answer(d, path, &a, NULL);
		struct ment *p =
			r == 1 ? mirror_find(&d->mirror, (dir = path_dir(path)) ? dir : "") : NULL;
		bool cold = p && S_ISDIR(p->attr.mode) && !p->complete && !p->stale;

		pthread_mutex_unlock(&d->mirror.lock);
		if (r == 1 && cold) {
			/* A cold directory: one listing answers this and every sibling. */
			op_begin(d, &o, req, false);
			r = op_end(d, &o, load_dir(d, dir, NULL));
			if (r >= 0) {
				pthread_mutex_lock(&d->mirror.lock);
				r = mirror_answer(d, path, &a, NULL);
				pthread_mutex_unlock(&d->mirror.lock);
			} else if (r != -EINTR && r != -EIO) {
				r = 1;
			}
		}
		from_mirror = r <= 0;
	}
	if (r == 1) {
		op_begin(d, &o, req, false);
		REMOTE(d);
		r = op_end(d, &o, dbx_fs_stat(d->client, path, &a));
		if (r == 0)
			dfs_mirror_update(d, path, &a, NULL, false);
		else if (r == -ENOENT)
			mirror_gone(d, path, NULL);
	}
	if (d->debug)
		dfs_log(DFS_DEBUG, "lookup %s: %d%s", path, r, from_mirror ? " (mirror)" : "");
	if (from_mirror) {
		/* Re-read and reply under mirror.lock: an event applied after this point queues
		 * its invalidation only once this answer has reached the kernel. */
		pthread_mutex_lock(&d->mirror.lock);
		int again = mirror_answer(d, path, &a, NULL);
		bool moved = again == 1;

		if (!moved)
			r = again;
		lookup_reply(d, req, path, r, &a, true);
		pthread_mutex_unlock(&d->mirror.lock);
		if (moved)
			notify_nodeid(d, NQ_ENTRY, parent, name);
	} else {
		lookup_reply(d, req, path, r, &a, false);
	}
	free(dir);
	free(path);
}

static void dfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct dfs *d = req_dfs(req);

	OP(d, OP_FORGET);
	itab_forget(d, ino, nlookup);
	fuse_reply_none(req);
}

static void dfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct dfs *d = req_dfs(req);

	for (size_t i = 0; i < count; i++) {
		OP(d, OP_FORGET);
		itab_forget(d, forgets[i].ino, forgets[i].nlookup);
	}
	fuse_reply_none(req);
}

/* The inode's current attributes (flushing buffered writes so size/mtime are the agent's). */
int dfs_inode_attr(struct dfs *d, fuse_req_t req, fuse_ino_t ino, struct dbx_attr *ret,
		   bool *ret_hit)
{
	struct dfs_inode *i = itab_get(d, ino);
	struct opctx o;
	char *path;
	bool hashed;
	int r;

	*ret_hit = false;
	if (!i)
		return -ESTALE;
	if (!S_ISDIR(i->mode) && !shadow_live(i)) {
		/* -o async_close: a stat while uploads are queued (tar's fchown right after the
		 * write) is answered from them instead of waiting. */
		if (io_attr_queued(d, i, ret) > 0)
			return 0;
		r = io_flush_inode(d, i);
		if (r < 0)
			return r;
	}
	pthread_mutex_lock(&d->itab.lock);
	hashed = i->path_hashed;
	path = i->path ? strdup(i->path) : NULL;
	pthread_mutex_unlock(&d->itab.lock);
	if (!path)
		return -ENOMEM;
	if (!hashed && ino != FUSE_ROOT_ID) {
		/* Removed while the kernel still holds it (an open file): last known attrs. */
		pthread_mutex_lock(&i->lock);
		*ret = i->attr;
		pthread_mutex_unlock(&i->lock);
		free(path);
		shadow_attr(i, ret);
		return 0;
	}
	op_begin(d, &o, req, false);
	r = op_end(d, &o, dfs_getattr_path(d, path, ret, NULL, ret_hit));
	if (d->debug)
		dfs_log(DFS_DEBUG, "attr %lu %s: %d nlink %u", (unsigned long)ino, path, r,
			ret->nlink);
	free(path);
	if (r == 0) {
		inode_set_attr(i, ret);
	} else if (r == -ENOENT) {
		/* Still open here: fstat keeps working with the last attributes. */
		pthread_mutex_lock(&i->lock);
		if (i->opens) {
			*ret = i->attr;
			r = 0;
		}
		pthread_mutex_unlock(&i->lock);
	}
	if (r == 0)
		shadow_attr(i, ret); /* unsent writes of the shadow */
	return r;
}

static void dfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct stat st;
	uint64_t gen;
	bool hit;
	int r;

	OP(d, OP_GETATTR);
	pthread_mutex_lock(&d->mirror.lock);
	gen = d->mirror.gen;
	pthread_mutex_unlock(&d->mirror.lock);
	r = dfs_inode_attr(d, req, ino, &a, &hit);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (hit)
		STAT_INC(d, getattr_hits);
	if (d->debug)
		dfs_log(DFS_DEBUG, "getattr %lu: %s nlink %u size %llu", (unsigned long)ino,
			hit ? "mirror" : "remote", a.nlink, (unsigned long long)a.size);
	attr_to_stat(&a, &st);
	fuse_reply_attr(req, &st, dfs_ttl(d));
	if (hit) {
		pthread_mutex_lock(&d->mirror.lock);
		bool moved = d->mirror.gen != gen;

		pthread_mutex_unlock(&d->mirror.lock);
		if (moved)
			notify_nodeid(d, NQ_INODE_ATTR, ino, NULL);
	}
}

/* chmod/chown to what the object already has change nothing but its ctime, yet tar, cp -a and
 * rsync issue them for every file they create: those bits of to_set are dropped when the
 * mirror (current while the event stream is healthy) shows they would change nothing.  Never
 * with set-id bits, which chown clears. */
static int setattr_needed(struct dfs *d, const char *path, const struct stat *attr, int to_set)
{
	const int ids = FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID;
	struct dbx_attr a;
	int r;

	if (!(to_set & (FUSE_SET_ATTR_MODE | ids)) || !atomic_load(&d->healthy))
		return to_set;
	pthread_mutex_lock(&d->mirror.lock);
	r = mirror_answer(d, path, &a, NULL);
	pthread_mutex_unlock(&d->mirror.lock);
	if (r != 0 || (a.mode & (S_ISUID | S_ISGID)))
		return to_set;
	if ((to_set & FUSE_SET_ATTR_MODE) && (a.mode & 07777) == (attr->st_mode & 07777))
		to_set &= ~FUSE_SET_ATTR_MODE;
	if ((to_set & ids) && (!(to_set & FUSE_SET_ATTR_UID) || a.uid == attr->st_uid) &&
	    (!(to_set & FUSE_SET_ATTR_GID) || a.gid == attr->st_gid))
		to_set &= ~ids;
	return to_set;
}

static void dfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_inode *i = itab_get(d, ino);
	struct dbx_attr a;
	struct opctx o;
	struct stat st;
	bool done = false, hit;
	char *path;
	int r = 0;

	OP(d, OP_SETATTR);
	if (!i) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	if (echo_req(d, req)) {
		r = dfs_inode_attr(d, req, ino, &a, &hit);
		goto out;
	}
	if (!S_ISDIR(i->mode)) {
		/* -o async_close: behind the file's queued uploads, answered from local attrs. */
		r = io_setattr_queued(d, i, path, attr, setattr_needed(d, path, attr, to_set), &a);
		if (r > 0) {
			r = 0;
			goto out;
		}
		if (r == 0)
			r = io_flush_inode(d, i);
		if (r < 0)
			goto out;
	}
	/* Waiting for uploads is done: the lock is held only while the change is sent. */
	pthread_rwlock_rdlock(&d->mut_lock);
	to_set = setattr_needed(d, path, attr, to_set);
	op_begin(d, &o, req, false);
	if (to_set & FUSE_SET_ATTR_MODE) {
		REMOTE(d);
		r = dbx_fs_chmod(d->client, path, attr->st_mode & 07777, &a);
		done = true;
	}
	if (r == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		REMOTE(d);
		r = dbx_fs_chown(d->client, path,
				 (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1,
				 (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1, &a);
		done = true;
	}
	if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE)) {
		REMOTE(d);
		r = dbx_fs_truncate(d->client, path, (uint64_t)attr->st_size, &a);
		done = true;
	}
	if (r == 0 && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec tv[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};

		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		REMOTE(d);
		r = dbx_fs_utimens(d->client, path, tv, &a);
		done = true;
	}
	r = op_end(d, &o, r);
	if (r == 0 && done) {
		dfs_mirror_update(d, path, &a, NULL, false);
		inode_set_attr(i, &a);
	}
	pthread_rwlock_unlock(&d->mut_lock);
	if (r == 0 && !done)
		r = dfs_inode_attr(d, req, ino, &a, &hit);
out:
	free(path);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	attr_to_stat(&a, &st);
	fuse_reply_attr(req, &st, dfs_ttl(d));
}

/* ---- symlinks ------------------------------------------------------------------------ */

static void dfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct opctx o;
	char *path, *target = NULL;
	bool hit = false;
	int r;

	OP(d, OP_READLINK);
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	if (atomic_load(&d->healthy)) {
		pthread_mutex_lock(&d->mirror.lock);
		r = mirror_answer(d, path, &a, &target);
		pthread_mutex_unlock(&d->mirror.lock);
		hit = r == 0 && target;
	}
	if (!hit) {
		free(target);
		target = NULL;
		op_begin(d, &o, req, false);
		REMOTE(d);
		r = op_end(d, &o, dbx_fs_readlink(d->client, path, &target));
		if (r < 0) {
			fuse_reply_err(req, -r);
			goto out;
		}
		pthread_mutex_lock(&d->mirror.lock);
		struct ment *e = mirror_find(&d->mirror, path);

		if (e && S_ISLNK(e->attr.mode) && !e->target)
			e->target = strdup(target);
		pthread_mutex_unlock(&d->mirror.lock);
	} else {
		STAT_INC(d, readlink_hits);
	}
	fuse_reply_readlink(req, target);
out:
	free(target);
	free(path);
}

static void dfs_symlink_locked(fuse_req_t req, const char *link, fuse_ino_t parent,
			       const char *name)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct opctx o;
	char *path;
	int r;

	OP(d, OP_SYMLINK);
	path = child_path(d, req, parent, name);
	if (!path)
		return;
	if (echo_new_entry(d, req, path)) {
		free(path);
		return;
	}
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_symlink(d->client, link, path, &a));
	if (r < 0) {
		fuse_reply_err(req, -r);
	} else {
		dfs_mirror_update(d, path, &a, link, true);
		reply_entry(d, req, path, &a);
	}
	free(path);
}

/* ---- directories and nodes ------------------------------------------------------------ */

static void dfs_mknod_locked(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			     dev_t rdev)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct opctx o;
	char *path;
	int r;

	OP(d, OP_MKNOD);
	path = child_path(d, req, parent, name);
	if (!path)
		return;
	if (echo_new_entry(d, req, path)) {
		free(path);
		return;
	}
	op_begin(d, &o, req, false);
	REMOTE(d);
	if (S_ISREG(mode)) {
		struct dbx_write_opts w = {.excl = true, .mode = mode & 07777, .dir = true};

		r = dbx_fs_pwrite(d->client, path, "", 0, &w, &a);
	} else {
		r = dbx_fs_mknod(d->client, path, mode, &a);
	}
	r = op_end(d, &o, r);
	if (r < 0) {
		fuse_reply_err(req, -r);
	} else {
		dfs_mirror_update(d, path, &a, NULL, true);
		reply_entry(d, req, path, &a);
	}
	free(path);
}

static void dfs_mkdir_locked(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct opctx o;
	char *path;
	int r;

	OP(d, OP_MKDIR);
	path = child_path(d, req, parent, name);
	if (!path)
		return;
	if (echo_new_entry(d, req, path)) {
		free(path);
		return;
	}
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_mkdir(d->client, path, mode & 07777, &a));
	if (r < 0) {
		fuse_reply_err(req, -r);
	} else {
		struct ment *e;

		pthread_mutex_lock(&d->mirror.lock);
		e = mirror_set(&d->mirror, path, &a, NULL);
		if (e) {
			e->complete = true; /* just made: empty */
			e->seq = reply_seq();
			e->dseq = own_change_seq();
			if (e->parent) {
				own_dir_changed(d, e->parent, false);
				e->parent->dseq = e->dseq;
			}
			mirror_neg_take(&d->mirror, path);
		}
		pthread_mutex_unlock(&d->mirror.lock);
		reply_entry(d, req, path, &a);
	}
	free(path);
}

static void remove_common(fuse_req_t req, fuse_ino_t parent, const char *name, bool dir)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr last = {0};
	struct opctx o;
	char *path;
	int r;

	OP(d, dir ? OP_RMDIR : OP_UNLINK);
	path = child_path(d, req, parent, name);
	if (!path)
		return;
	if (echo_req(d, req)) {
		itab_unlinked(d, path, NULL);
		fuse_reply_err(req, 0);
		free(path);
		return;
	}
	/* Before the lock and the deadline: pinning a big file's bytes may take a while. */
	if (!dir)
		io_preserve(d, path);
	pthread_rwlock_rdlock(&d->mut_lock);
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = dir ? dbx_fs_rmdir(d->client, path) : dbx_fs_unlink(d->client, path);
	r = op_end(d, &o, r);
	if (r == 0 || r == -ENOENT) {
		mirror_gone(d, path, &last);
		if (r == 0) {
			pthread_mutex_lock(&d->mirror.lock);
			mirror_tomb_expect_echo(&d->mirror, path, own_change_seq());
			pthread_mutex_unlock(&d->mirror.lock);
		}
		if (!dir && last.nlink > 1) {
			pthread_mutex_lock(&d->mirror.lock);
			stale_ino(d, d->mirror.root, last.ino);
			pthread_mutex_unlock(&d->mirror.lock);
		}
		if (r == 0) {
			fuse_ino_t id = itab_nodeid_of(d, path);
			struct dfs_inode *i = id ? itab_get(d, id) : NULL;

			char *other = NULL;

			if (!dir && last.nlink > 1) {
				pthread_mutex_lock(&d->mirror.lock);
				other = path_of_ino(d->mirror.root, last.ino, "");
				pthread_mutex_unlock(&d->mirror.lock);
			}
			itab_unlinked(d, path, last.ino ? &last : NULL);
			if (i && last.ino) {
				last.nlink = last.nlink ? last.nlink - 1 : 0;
				inode_set_attr(i, &last);
			}
			/* Still linked elsewhere: the inode goes on by its other name. */
			if (i && other)
				itab_repath(d, i, other);
			free(other);
		}
	}
	pthread_rwlock_unlock(&d->mut_lock);
	fuse_reply_err(req, -r);
	free(path);
}

static void dfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		       fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a, last = {0};
	struct opctx o;
	char *from = NULL, *to = NULL;
	bool exchange = flags & RENAME_EXCHANGE;
	int r;

	OP(d, OP_RENAME);
	if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	from = child_path(d, req, parent, name);
	if (!from)
		return;
	to = child_path(d, req, newparent, newname);
	if (!to)
		goto out;
	if (echo_req(d, req)) {
		itab_rename(d, from, to, false);
		fuse_reply_err(req, 0);
		goto out;
	}
	/* Buffered and queued writes go under the old names first (for a directory: those of
	 * every file below it). */
	r = io_flush_path(d, from);
	if (r == 0 && exchange)
		r = io_flush_path(d, to);
	if (r < 0) {
		fuse_reply_err(req, -r);
		goto out;
	}
	if (!exchange)
		io_preserve(d, to);
	/* Flushes and the pinning are done: the lock is held only while the change is sent. */
	pthread_rwlock_rdlock(&d->mut_lock);
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_rename(d->client, from, to, flags, &a));
	if (r < 0) {
		pthread_rwlock_unlock(&d->mut_lock);
		fuse_reply_err(req, -r);
		goto out;
	}
	pthread_mutex_lock(&d->mirror.lock);
	struct ment *old = mirror_find(&d->mirror, to);

	if (old && !exchange)
		last = old->attr;
	mirror_move(&d->mirror, from, to, exchange);
	mirror_neg_take(&d->mirror, to);
	struct ment *e = mirror_set(&d->mirror, to, &a, NULL);
	struct ment *fp = mirror_find(&d->mirror, from);

	uint64_t seq = reply_seq(), cseq = own_change_seq();

	if (e) {
		e->seq = seq;
		if (S_ISDIR(e->attr.mode))
			e->dseq = cseq;
		if (e->parent) {
			own_dir_changed(d, e->parent, false);
			e->parent->dseq = cseq;
		}
	}
	if (exchange && fp) {
		fp->seq = seq;
		if (S_ISDIR(fp->attr.mode))
			fp->dseq = cseq;
		if (fp->parent) {
			own_dir_changed(d, fp->parent, true);
			fp->parent->dseq = cseq;
		}
	}
	if (!exchange) {
		char *fdir = path_dir(from);
		struct ment *fd = fdir ? mirror_find(&d->mirror, fdir) : NULL;

		if (fd) {
			own_dir_changed(d, fd, true);
			fd->dseq = cseq;
		}
		free(fdir);
		mirror_tomb_set(&d->mirror, from, cseq);
	}
	pthread_mutex_unlock(&d->mirror.lock);
	if (!exchange && last.ino && last.ino != a.ino)
		itab_unlinked(d, to, &last);
	itab_rename(d, from, to, exchange);
	pthread_rwlock_unlock(&d->mut_lock);
	fuse_reply_err(req, 0);
out:
	free(from);
	free(to);
}

static void dfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		     const char *newname)
{
	struct dfs *d = req_dfs(req);
	struct dbx_attr a;
	struct opctx o;
	char *from, *to;
	int r;

	OP(d, OP_LINK);
	from = dfs_path_of(d, req, ino);
	if (!from)
		return;
	to = child_path(d, req, newparent, newname);
	if (!to) {
		free(from);
		return;
	}
	/* Unsent writes go under the existing name first. */
	struct dfs_inode *li = itab_get(d, ino);

	r = li && S_ISREG(li->mode) ? io_flush_inode(d, li) : 0;
	if (r < 0) {
		fuse_reply_err(req, -r);
		free(from);
		free(to);
		return;
	}
	pthread_rwlock_rdlock(&d->mut_lock);
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_link(d->client, from, to, &a));
	if (r < 0) {
		pthread_rwlock_unlock(&d->mut_lock);
		fuse_reply_err(req, -r);
	} else {
		dfs_mirror_update(d, from, &a, NULL, false);
		dfs_mirror_update(d, to, &a, NULL, true);
		pthread_mutex_lock(&d->mirror.lock);
		stale_ino(d, d->mirror.root, a.ino);
		struct ment *f = mirror_find(&d->mirror, from), *t = mirror_find(&d->mirror, to);

		if (f)
			f->stale = false;
		if (t)
			t->stale = false;
		pthread_mutex_unlock(&d->mirror.lock);
		pthread_rwlock_unlock(&d->mut_lock);
		reply_entry(d, req, to, &a);
	}
	free(from);
	free(to);
}

/* ---- readdir ------------------------------------------------------------------------- */

struct dsnap {
	struct dfs_handle h; /* first: the handle list (opendir snapshots only) */
	size_t n;
	struct dsent {
		char *name;
		struct dbx_attr attr;
		bool stale; /* attrs await a refresh: the kernel must not keep them */
	} * v;
	char *path;
	uint64_t gen; /* mirror generation the entries were copied at (0: from the agent) */
	uint32_t names_gen; /* the directory's (mirror copies) */
};

static void dsnap_clear(struct dsnap *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].name);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

static void dsnap_free(struct dsnap *s)
{
	if (!s)
		return;
	dsnap_clear(s);
	free(s->path);
	free(s);
}

static void dsnap_free_handle(struct dfs_handle *h)
{
	dsnap_free((struct dsnap *)h);
}

/* Snapshot of the mirror's listing of path: 1 if the mirror cannot answer. */
static int snap_from_mirror(struct dfs *d, const char *path, struct dsnap *s)
{
	struct ment *e = mirror_find(&d->mirror, path);
	size_t k = 0;

	/* The names of a complete directory are exact even while its own attributes await a
	 * refresh (stale), and the kernel takes none from "." and "..".  A stale child's attrs
	 * go out with attr_timeout 0 (readdirplus). */
	if (!e || !S_ISDIR(e->attr.mode) || !e->complete)
		return 1;
	s->v = calloc(e->nkids + 2, sizeof(*s->v));
	if (!s->v)
		return -ENOMEM;
	s->v[k].name = strdup(".");
	s->v[k++].attr = e->attr;
	s->v[k].name = strdup("..");
	s->v[k++].attr = e->parent ? e->parent->attr : e->attr;
	for (struct ment *c = e->kids; c; c = c->next) {
		s->v[k].name = strdup(c->name);
		s->v[k].stale = c->stale;
		s->v[k++].attr = c->attr;
	}
	s->n = k;
	s->gen = d->mirror.gen;
	s->names_gen = e->names_gen;
	for (size_t i = 0; i < k; i++)
		if (!s->v[i].name)
			return -ENOMEM;
	return 0;
}

static int snap_from_listing(struct dsnap *s, const struct listing *l)
{
	size_t k = 0;

	s->v = calloc(l->n + 2, sizeof(*s->v));
	if (!s->v)
		return -ENOMEM;
	s->v[k].name = strdup(".");
	s->v[k++].attr = l->dir;
	s->v[k].name = strdup("..");
	s->v[k++].attr = l->dir;
	for (size_t i = 0; i < l->n; i++) {
		s->v[k].name = strdup(l->v[i].name);
		s->v[k].stale = true;
		s->v[k++].attr = l->v[i].attr;
	}
	s->n = k;
	s->gen = 0;
	for (size_t i = 0; i < k; i++)
		if (!s->v[i].name)
			return -ENOMEM;
	return 0;
}

static void dfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dsnap *s = calloc(1, sizeof(*s));
	bool healthy = atomic_load(&d->healthy);
	struct opctx o;
	int r = 1;

	OP(d, OP_OPENDIR);
	if (!s) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	s->path = dfs_path_of(d, req, ino);
	if (!s->path) {
		free(s);
		return;
	}
	if (healthy) {
		pthread_mutex_lock(&d->mirror.lock);
		r = snap_from_mirror(d, s->path, s);
		pthread_mutex_unlock(&d->mirror.lock);
		if (r == 0)
			STAT_INC(d, readdir_hits);
	}
	if (r == 1) {
		struct listing l = {0};

		op_begin(d, &o, req, false);
		r = op_end(d, &o, load_dir(d, s->path, &l));
		if (r == 0) {
			pthread_mutex_lock(&d->mirror.lock);
			r = snap_from_mirror(d, s->path, s);
			pthread_mutex_unlock(&d->mirror.lock);
		}
		if (r == 1) {
			/* The mirror could not take it (or changed again): the agent's answer as
			 * it is, which the kernel must not cache. */
			r = snap_from_listing(s, &l);
			healthy = false;
		}
		listing_free(&l);
	}
	if (r < 0) {
		dsnap_free(s);
		fuse_reply_err(req, -r);
		return;
	}
	if (d->debug)
		dfs_log(DFS_DEBUG, "opendir %s: %zu entries%s", s->path, s->n,
			r == 0 ? "" : " (agent)");
	fi->fh = (uint64_t)(uintptr_t)s;
	fi->cache_readdir = healthy;
	fi->keep_cache = healthy;
	handle_add(d, &s->h, dsnap_free_handle);
	if (fuse_reply_open(req, fi) < 0) {
		handle_del(d, &s->h);
		dsnap_free(s);
	}
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct dfs *d = req_dfs(req);
	struct dsnap *s = (struct dsnap *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	size_t used = 0;

	OP(d, plus ? OP_READDIRPLUS : OP_READDIR);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (off == 0 && atomic_load(&d->healthy)) {
		/* (Re)starting: an event since opendir must not refill the kernel's cache with
		 * the old listing. */
		struct dsnap fresh = {0};

		pthread_mutex_lock(&d->mirror.lock);
		if (d->mirror.gen != s->gen && snap_from_mirror(d, s->path, &fresh) == 0) {
			dsnap_clear(s);
			s->v = fresh.v;
			s->n = fresh.n;
			s->gen = fresh.gen;
			fresh.v = NULL;
			fresh.n = 0;
		}
		pthread_mutex_unlock(&d->mirror.lock);
		dsnap_clear(&fresh);
	}
	size_t first = (size_t)off, last = first, nids = 0;
	/* readdirplus: the nodes handed out, each one lookup the kernel now owes a forget for */
	fuse_ino_t *ids = plus && off >= 0 && (size_t)off < s->n
				  ? calloc(s->n - (size_t)off, sizeof(*ids))
				  : NULL;

	for (size_t k = (size_t)off; off >= 0 && k < s->n; k++, last = k) {
		struct dsent *e = &s->v[k];
		size_t need;

		if (!plus) {
			struct stat st = {.st_ino = e->attr.ino, .st_mode = e->attr.mode};

			need = fuse_add_direntry(req, buf + used, size - used, e->name, &st,
						 (off_t)k + 1);
			if (need > size - used)
				break;
			used += need;
			continue;
		}
		struct fuse_entry_param ep;
		struct dfs_inode *i = NULL;
		bool dots = !strcmp(e->name, ".") || !strcmp(e->name, "..");

		if (!dots) {
			char *p = path_join(s->path, e->name);

			i = p ? itab_ref(d, p, &e->attr) : NULL;
			free(p);
			if (!i)
				break;
		}
		fill_entry(d, &ep, i ? i->nodeid : 0, &e->attr);
		if (e->stale)
			ep.attr_timeout = 0;
		if (i)
			shadow_stat(i, &ep.attr);
		need = fuse_add_direntry_plus(req, buf + used, size - used, e->name, &ep,
					      (off_t)k + 1);
		if (need > size - used) {
			if (i)
				itab_forget(d, i->nodeid, 1);
			break;
		}
		used += need;
		if (i && ids)
			ids[nids++] = i->nodeid;
	}
	if (d->debug)
		dfs_log(DFS_DEBUG, "readdir%s %s @%lld: %zu..%zu of %zu", plus ? "plus" : "",
			s->path, (long long)off, first, last, s->n);
	/* After the reply the handle may be released at once: keep what the check needs. */
	struct dsnap sent = {.gen = s->gen, .names_gen = s->names_gen, .path = strdup(s->path)};

	if (plus && last > first) {
		sent.v = calloc(last - first, sizeof(*sent.v));
		for (size_t k = first; sent.v && k < last; k++) {
			sent.v[sent.n].name = strdup(s->v[k].name);
			sent.v[sent.n].attr = s->v[k].attr;
			if (sent.v[sent.n].name)
				sent.n++;
		}
	}
	/* Not delivered (interrupted): the kernel did not take the lookups the entries carry. */
	if (fuse_reply_buf(req, buf, used) < 0)
		for (size_t k = 0; k < nids; k++)
			itab_forget(d, ids[k], 1);
	free(ids);
	free(buf);
	/* The mirror moved while these entries were on their way: drop what they installed, and
	 * the kernel's copy of the listing if its names changed. */
	bool any, moved = false;

	pthread_mutex_lock(&d->mirror.lock);
	any = d->mirror.gen != sent.gen;
	if (any && sent.gen) {
		struct ment *dm = sent.path ? mirror_find(&d->mirror, sent.path) : NULL;

		moved = !dm || dm->names_gen != sent.names_gen;
	}
	for (size_t k = 0; any && sent.path && k < sent.n; k++) {
		const char *nm = sent.v[k].name;
		char *p = strcmp(nm, ".") && strcmp(nm, "..") ? path_join(sent.path, nm) : NULL;
		struct ment *e = p ? mirror_find(&d->mirror, p) : NULL;

		if (p && (!e || e->attr.ino != sent.v[k].attr.ino))
			notify_nodeid(d, NQ_ENTRY, ino, nm);
		else if (p && !attr_same(&e->attr, &sent.v[k].attr))
			/* Same object, newer attrs (a later batch of an older snapshot). */
			notify_path(d,
				    attr_same_content(&e->attr, &sent.v[k].attr) ? NQ_INODE_ATTR
										 : NQ_INODE_DATA,
				    p);
		free(p);
	}
	pthread_mutex_unlock(&d->mirror.lock);
	if (moved) {
		/* Now, and again once the kernel has surely filled its directory cache from
		 * this reply (it does so after our write returns, racing the first one). */
		notify_nodeid(d, NQ_INODE_DATA, ino, NULL);
		notify_nodeid_later(d, NQ_INODE_DATA, ino, 10);
		notify_nodeid_later(d, NQ_INODE_DATA, ino, 100);
	}
	dsnap_clear(&sent);
	free(sent.path);
}

static void dfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void dfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			    struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void dfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);

	OP(d, OP_RELEASEDIR);
	struct dsnap *s = (struct dsnap *)(uintptr_t)fi->fh;

	handle_del(d, &s->h);
	dsnap_free(s);
	fuse_reply_err(req, 0);
}

static void dfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

/* ---- mutations run under mut_lock (shared), so the event thread applies their echoes after
 * the mirror holds their replies.  setattr, unlink, rmdir, rename and link take it themselves,
 * once the uploads they wait for are done (events must not wait behind those). ---------- */

static void dfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct dfs *d = req_dfs(req);

	pthread_rwlock_rdlock(&d->mut_lock);
	dfs_symlink_locked(req, link, parent, name);
	pthread_rwlock_unlock(&d->mut_lock);
}

static void dfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct dfs *d = req_dfs(req);

	pthread_rwlock_rdlock(&d->mut_lock);
	dfs_mknod_locked(req, parent, name, mode, rdev);
	pthread_rwlock_unlock(&d->mut_lock);
}

static void dfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct dfs *d = req_dfs(req);

	pthread_rwlock_rdlock(&d->mut_lock);
	dfs_mkdir_locked(req, parent, name, mode);
	pthread_rwlock_unlock(&d->mut_lock);
}

static void dfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_common(req, parent, name, false);
}

static void dfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_common(req, parent, name, true);
}

/* ---- session ------------------------------------------------------------------------- */

static void dfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct dfs *d = userdata;
	unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ATOMIC_O_TRUNC |
			FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_CACHE_SYMLINKS |
			FUSE_CAP_EXPLICIT_INVAL_DATA | FUSE_CAP_FLOCK_LOCKS | FUSE_CAP_POSIX_LOCKS |
			FUSE_CAP_EXPIRE_ONLY;

	conn->want |= want & conn->capable;
	conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA);
	conn->max_write = DFS_IO_MAX;
	conn->max_read = DFS_IO_MAX;
	conn->max_readahead = DFS_IO_MAX;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->time_gran = 1;
	dfs_log(DFS_DEBUG, "kernel FUSE protocol %u.%u, capabilities 0x%x of 0x%x",
		conn->proto_major, conn->proto_minor, conn->want, conn->capable);
	atomic_store(&d->mounted, true);
}

static void dfs_destroy(void *userdata)
{
	struct dfs *d = userdata;

	atomic_store(&d->mounted, false);
}

const struct fuse_lowlevel_ops dfs_ops = {
	.init = dfs_init,
	.destroy = dfs_destroy,
	.lookup = dfs_lookup,
	.forget = dfs_forget,
	.forget_multi = dfs_forget_multi,
	.getattr = dfs_getattr,
	.setattr = dfs_setattr,
	.readlink = dfs_readlink,
	.mknod = dfs_mknod,
	.mkdir = dfs_mkdir,
	.unlink = dfs_unlink,
	.rmdir = dfs_rmdir,
	.symlink = dfs_symlink,
	.rename = dfs_rename,
	.link = dfs_link,
	.open = io_open,
	.read = io_read,
	.write = io_write,
	.flush = io_flush,
	.release = io_release,
	.fsync = io_fsync,
	.opendir = dfs_opendir,
	.readdir = dfs_readdir,
	.readdirplus = dfs_readdirplus,
	.releasedir = dfs_releasedir,
	.fsyncdir = dfs_fsyncdir,
	.statfs = dfs_statfs,
	.setxattr = dfs_setxattr,
	.getxattr = dfs_getxattr,
	.listxattr = dfs_listxattr,
	.removexattr = dfs_removexattr,
	.access = dfs_access,
	.create = io_create,
	.getlk = io_getlk,
	.setlk = io_setlk,
	.flock = io_flock,
};
