/* SPDX-License-Identifier: Apache-2.0 */
/*
 * File data and locks: open/create/read/write/flush/release/fsync, flock and POSIX locks.
 * Run by libfuse worker threads.
 *
 * Reads: a file up to DFS_SMALL_FILE is fetched whole on first read and kept per inode, keyed
 * by its version (the agent's `ver`), within DFS_CACHE_BUDGET in total; bigger files are read
 * by range.  The kernel page cache is kept across opens (keep_cache) while the version is the
 * one it was filled from; events invalidate it when the content changes remotely.
 * Writes: buffered per inode (inode.wlock) as one contiguous run of up to DFS_WBUF_MAX bytes;
 * a run that breaks or fills is handed to the write queue (wq.c), whose threads upload it while
 * the writer goes on into a new buffer.  flush (close), fsync, getattr, setattr, rename, unlink
 * and read hand over what is buffered and wait for the inode's uploads, so close() returns the
 * remote result (ENOSPC ...).  With -o async_close, flush and release hand the rest over
 * without waiting; a failure is logged and reported by the next flush or fsync of the file.
 * Locks: forwarded to the agent in the event stream's lock session (dbx_fs_lock); blocking
 * requests are interruptible (FUSE INTERRUPT sets the thread's cancel flag).
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

struct dfs_fh {
	struct dfs_handle h; /* first: the handle list */
	struct dfs_inode *ino;
	int flags;
	bool posix_locked;
	uint64_t posix_owner;
	bool flocked;
};

static struct dfs *req_dfs(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void fh_free(struct dfs_handle *h)
{
	free(h); /* h is the first member of struct dfs_fh */
}

static struct dfs_fh *fh_of(struct fuse_file_info *fi)
{
	return (struct dfs_fh *)(uintptr_t)fi->fh;
}

/* ---- write buffer ---------------------------------------------------------------------- */

static void on_interrupt(fuse_req_t req, void *data)
{
	*(volatile int *)data = 1;
}

/* Hands i's buffered run to the write queue (caller holds i->wlock). */
static int wb_submit(struct dfs *d, struct dfs_inode *i, unsigned flags, const volatile int *cancel)
{
	char *path;
	int r;

	if (!i->wb.len)
		return 0;
	r = itab_path(d, i->nodeid, &path);
	if (r < 0)
		return r;
	r = wq_submit(d, i, path, &i->wb, flags, cancel);
	free(path);
	return r;
}

/* Hands over what i buffers, then waits for all its uploads (flags: WQ_CONSUME reports a
 * refusal not reported yet). */
static int flush_wait(struct dfs *d, struct dfs_inode *i, unsigned flags,
		      const volatile int *cancel)
{
	int r, w;

	r = shadow_flush(d, i, (flags & WQ_CONSUME) ? SHADOW_CONSUME : 0, cancel);
	if (r < 0)
		return r;
	pthread_mutex_lock(&i->wlock);
	r = wb_submit(d, i, 0, cancel);
	pthread_mutex_unlock(&i->wlock);
	w = wq_wait(d, i, flags, cancel);
	return r < 0 ? r : w;
}

int io_flush_inode(struct dfs *d, struct dfs_inode *i)
{
	/* A refusal stays for the next write, flush or fsync of the file: the calls whose errors
	 * programs check (a stat that took it would leave close() with 0). */
	return flush_wait(d, i, 0, NULL);
}

int io_flush_path(struct dfs *d, const char *path)
{
	fuse_ino_t id = itab_nodeid_of(d, path);
	struct dfs_inode *i = id ? itab_get(d, id) : NULL;
	int r = 0;

	if (i && !S_ISDIR(i->mode))
		r = io_flush_inode(d, i);
	/* Files below a directory, and files the kernel forgot since their close. */
	if (r == 0)
		r = wq_wait_path(d, path, true);
	return r;
}

int io_setattr_queued(struct dfs *d, struct dfs_inode *i, const char *path, const struct stat *st,
		      int to_set, struct dbx_attr *ret)
{
	const int queueable = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
			      FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_CTIME;
	/* How the caller got here (futimens/fchmod on an open file, ...), not what to change. */
	const int how = FUSE_SET_ATTR_FILE | FUSE_SET_ATTR_OPEN | FUSE_SET_ATTR_FORCE |
			FUSE_SET_ATTR_TIMES_SET | FUSE_SET_ATTR_TOUCH;
	int r;

	/* to_set may be 0 here: a chown/chmod to what the file has (tar's) is answered locally
	 * too, instead of waiting for the queue. */
	to_set &= ~how;
	if (!d->async_close || !S_ISREG(i->mode) || (to_set & ~queueable))
		return 0;
	/* What is still buffered goes first (a utimens after the last write of an open file). */
	r = shadow_flush(d, i, SHADOW_ASYNC, NULL);
	pthread_mutex_lock(&i->wlock);
	r = r < 0 ? r : wb_submit(d, i, WQ_ASYNC, NULL);
	pthread_mutex_unlock(&i->wlock);
	if (r < 0)
		return r;
	return wq_submit_attr(d, i, path, st, to_set & ~FUSE_SET_ATTR_CTIME, ret);
}

int io_attr_queued(struct dfs *d, struct dfs_inode *i, struct dbx_attr *ret)
{
	char *path;
	int r;

	if (!d->async_close || !S_ISREG(i->mode))
		return 0;
	if (itab_path(d, i->nodeid, &path) < 0)
		return 0;
	/* Unsent writes in the buffer have no place in the answer: the caller waits for them. */
	pthread_mutex_lock(&i->wlock);
	r = i->wb.len ? 0 : wq_submit_attr(d, i, path, NULL, 0, ret);
	pthread_mutex_unlock(&i->wlock);
	free(path);
	return r > 0 ? 1 : 0;
}

void io_drop_cache(struct dfs *d, struct dfs_inode *i)
{
	pthread_mutex_lock(&i->lock);
	if (i->cache)
		atomic_fetch_sub(&d->cache_bytes, i->cache_len);
	free(i->cache);
	i->cache = NULL;
	i->cache_len = 0;
	i->cache_ver[0] = 0;
	pthread_mutex_unlock(&i->lock);
}

/* Reads travel by path, so before the last name of an open file goes away (unlink, rename
 * over it) its bytes are pinned in the daemon: the open handles keep reading them. */
#define DFS_PIN_MAX (64u << 20)

void io_preserve(struct dfs *d, const char *path)
{
	fuse_ino_t id = itab_nodeid_of(d, path);
	struct dfs_inode *i = id ? itab_get(d, id) : NULL;
	char ver[DBX_VER_MAX] = "";
	uint64_t size, total = 0;
	size_t got = 0;
	char *buf;
	int opens;

	/* Uploads still queued for the name go first (or they would fail, or land on the
	 * file renamed over it). */
	if (wq_wait_path(d, path, false) < 0 || !i || !S_ISREG(i->mode))
		return;
	pthread_mutex_lock(&i->lock);
	opens = i->opens;
	pthread_mutex_unlock(&i->lock);
	if (!opens || io_flush_inode(d, i) < 0)
		return;
	/* The whole-file cache holds the current version already: it becomes the pinned copy. */
	pthread_mutex_lock(&d->mirror.lock);
	struct ment *e = mirror_find(&d->mirror, path);

	if (e && e->attr.ino == i->rino && atomic_load(&d->healthy))
		memcpy(ver, e->attr.ver, sizeof(ver));
	pthread_mutex_unlock(&d->mirror.lock);
	pthread_mutex_lock(&i->lock);
	if (ver[0] && i->cache && !strcmp(i->cache_ver, ver)) {
		i->pinned = true;
		pthread_mutex_unlock(&i->lock);
		return;
	}
	ver[0] = 0;
	size = i->attr.size;
	pthread_mutex_unlock(&i->lock);
	if (size > DFS_PIN_MAX) {
		dfs_log(DFS_WARN, "%s: open file too big to keep after removal", path);
		return;
	}
	buf = malloc(size + 1);
	if (!buf)
		return;
	for (;;) {
		ssize_t n;

		STAT_INC(d, remote_calls);
		n = dbx_fs_pread(d->client, path, buf + got, size + 1 - got, got, ver, &total);
		if (n < 0 || total > size) {
			free(buf);
			return;
		}
		got += (size_t)n;
		if (!n || got >= total)
			break;
	}
	pthread_mutex_lock(&i->lock);
	if (i->cache)
		atomic_fetch_sub(&d->cache_bytes, i->cache_len);
	free(i->cache);
	i->cache = buf;
	i->cache_len = got;
	memcpy(i->cache_ver, ver, sizeof(i->cache_ver));
	i->pinned = true;
	atomic_fetch_add(&d->cache_bytes, got);
	pthread_mutex_unlock(&i->lock);
}

/* ---- open / create ------------------------------------------------------------------- */

static void open_reply(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const struct dbx_attr *a,
		       struct fuse_file_info *fi, bool trusted, struct fuse_entry_param *entry)
{
	struct dfs_fh *fh = calloc(1, sizeof(*fh));
	bool keep;

	if (!fh) {
		if (entry)
			itab_forget(d, i->nodeid, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fh->ino = i;
	fh->flags = fi->flags;
	pthread_mutex_lock(&i->lock);
	keep = trusted && i->kc_ver[0] && a->ver[0] && !strcmp(i->kc_ver, a->ver);
	memcpy(i->kc_ver, a->ver, sizeof(i->kc_ver));
	i->attr = *a;
	i->opens++;
	pthread_mutex_unlock(&i->lock);
	handle_add(d, &fh->h, fh_free);
	fi->fh = (uint64_t)(uintptr_t)fh;
	fi->keep_cache = keep;
	fi->noflush = (fi->flags & O_ACCMODE) == O_RDONLY && !i->posix_locked;
	if ((entry ? fuse_reply_create(req, entry, fi) : fuse_reply_open(req, fi)) < 0) {
		pthread_mutex_lock(&i->lock);
		i->opens--;
		pthread_mutex_unlock(&i->lock);
		if (entry)
			itab_forget(d, i->nodeid, 1);
		handle_del(d, &fh->h);
		free(fh);
	}
}

void io_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_inode *i = itab_get(d, ino);
	struct dbx_attr a;
	struct opctx o;
	bool hit = false;
	char *path;
	int r;

	STAT_INC(d, ops[OP_OPEN]);
	if (!i) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	r = itab_path(d, ino, &path);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		r = io_flush_inode(d, i);
		pthread_rwlock_rdlock(&d->mut_lock);
		op_begin(d, &o, req, false);
		if (r == 0) {
			STAT_INC(d, remote_calls);
			r = dbx_fs_truncate(d->client, path, 0, &a);
		}
		r = op_end(d, &o, r);
		if (r == 0)
			dfs_mirror_update(d, path, &a, NULL, false);
		pthread_rwlock_unlock(&d->mut_lock);
	} else {
		op_begin(d, &o, req, false);
		r = op_end(d, &o, dfs_getattr_path(d, path, &a, NULL, &hit));
	}
	free(path);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	/* From the mirror the version is as fresh as the event stream; a remote stat is fresher. */
	open_reply(d, req, i, &a, fi, true, NULL);
}

static void create_locked(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			  struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dbx_write_opts w = {
		.excl = fi->flags & O_EXCL,
		.truncate = fi->flags & O_TRUNC,
		.mode = mode & 07777,
		.dir = true,
	};
	struct fuse_entry_param e;
	struct dfs_inode *i;
	struct dbx_attr a;
	struct opctx o;
	char *dir, *path;
	int r;

	STAT_INC(d, ops[OP_CREATE]);
	if (strlen(name) > 255) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	r = itab_path(d, parent, &dir);
	path = dir ? path_join(dir, name) : NULL;
	free(dir);
	if (!path) {
		fuse_reply_err(req, r < 0 ? -r : ENOMEM);
		return;
	}
	if (echo_req(d, req)) {
		/* The replay of a remote creation: the file is there already. */
		struct ment *me;

		pthread_mutex_lock(&d->mirror.lock);
		me = mirror_find(&d->mirror, path);
		if (me)
			a = me->attr;
		pthread_mutex_unlock(&d->mirror.lock);
		r = me && S_ISREG(a.mode) ? 0 : -ENOENT;
		goto created;
	}
	op_begin(d, &o, req, false);
	STAT_INC(d, remote_calls);
	r = dbx_fs_pwrite(d->client, path, "", 0, &w, &a);
	if (r == 0 && !(mode & 07777)) {
		/* The wire's mode 0 means "default": make a mode-0 file explicitly. */
		STAT_INC(d, remote_calls);
		r = dbx_fs_chmod(d->client, path, 0, &a);
	}
	r = op_end(d, &o, r);
	if (r == 0)
		dfs_mirror_update(d, path, &a, NULL, true);
created:
	if (r < 0) {
		fuse_reply_err(req, -r);
		free(path);
		return;
	}
	i = itab_ref(d, path, &a);
	free(path);
	if (!i) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = i->nodeid;
	attr_to_stat(&a, &e.attr);
	e.attr_timeout = e.entry_timeout = dfs_ttl(d);
	open_reply(d, req, i, &a, fi, true, &e);
}

void io_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);

	pthread_rwlock_rdlock(&d->mut_lock);
	create_locked(req, parent, name, mode, fi);
	pthread_rwlock_unlock(&d->mut_lock);
}

/* ---- read ------------------------------------------------------------------------------ */

/* The version and size the mirror (or, with the stream down, the last stat) says are current. */
static void current_ver(struct dfs *d, struct dfs_inode *i, const char *path, char ver[DBX_VER_MAX],
			uint64_t *size)
{
	bool found = false;

	pthread_mutex_lock(&i->lock);
	if (i->pinned) {
		memcpy(ver, i->cache_ver, DBX_VER_MAX);
		*size = i->cache_len;
		found = true;
	}
	pthread_mutex_unlock(&i->lock);
	if (!found && path && atomic_load(&d->healthy)) {
		pthread_mutex_lock(&d->mirror.lock);
		struct ment *e = mirror_find(&d->mirror, path);

		if (e && e->attr.ino == i->rino) {
			memcpy(ver, e->attr.ver, DBX_VER_MAX);
			*size = e->attr.size;
			found = true;
		}
		pthread_mutex_unlock(&d->mirror.lock);
	}
	if (!found) {
		pthread_mutex_lock(&i->lock);
		memcpy(ver, i->attr.ver, DBX_VER_MAX);
		*size = i->attr.size;
		pthread_mutex_unlock(&i->lock);
	}
}

/* Replies from the whole-file cache if it holds version ver.  Copies out first: once the reply
 * is sent the file may be closed and the inode forgotten, so nothing of it is touched after. */
static bool reply_cached(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const char *ver,
			 size_t size, off_t off)
{
	char *copy = NULL;
	size_t n = 0;
	bool hit = false;

	pthread_mutex_lock(&i->lock);
	if (i->cache && ver[0] && !strcmp(i->cache_ver, ver)) {
		size_t o = (size_t)off < i->cache_len ? (size_t)off : i->cache_len;

		n = i->cache_len - o < size ? i->cache_len - o : size;
		copy = malloc(n ? n : 1);
		if (copy) {
			memcpy(copy, i->cache + o, n);
			hit = true;
		}
	}
	pthread_mutex_unlock(&i->lock);
	if (!hit)
		return false;
	/* Counted before the reply: whoever saw the bytes sees them counted. */
	STAT_ADD(d, bytes_read, n);
	STAT_INC(d, read_cache_hits);
	fuse_reply_buf(req, copy, n);
	free(copy);
	return true;
}

void io_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_inode *i = fh_of(fi)->ino;
	char ver[DBX_VER_MAX], got[DBX_VER_MAX] = "";
	uint64_t fsize = 0, total = 0;
	struct opctx o;
	char *path = NULL, *buf = NULL;
	ssize_t n;
	int r;

	STAT_INC(d, ops[OP_READ]);
	if (shadow_read(d, req, i, size, (uint64_t)off))
		return;
	r = io_flush_inode(d, i);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = itab_path(d, ino, &path);
	if (r == -ESTALE) {
		/* Removed or replaced: only what the daemon holds of it is left to read (the
		 * bytes pinned for its open handles, or a cached copy of its last version). */
		current_ver(d, i, NULL, ver, &fsize);
		if (!reply_cached(d, req, i, ver, size, off))
			fuse_reply_err(req, ESTALE);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	current_ver(d, i, path, ver, &fsize);
	if (reply_cached(d, req, i, ver, size, off))
		goto out;
	bool whole = fsize <= DFS_SMALL_FILE &&
		     atomic_load(&d->cache_bytes) + DFS_SMALL_FILE <= DFS_CACHE_BUDGET;
	size_t want = whole ? DFS_SMALL_FILE : size;

	if (!whole && ra_read(d, req, i, path, ver, fsize, size, (uint64_t)off))
		goto out;
	STAT_INC(d, read_cache_misses);

	buf = malloc(want ? want : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	op_begin(d, &o, req, false);
	STAT_INC(d, remote_calls);
	n = dbx_fs_pread(d->client, path, buf, want, whole ? 0 : (uint64_t)off, got, &total);
	r = op_end(d, &o, n < 0 ? (int)n : 0);
	if (r < 0) {
		fuse_reply_err(req, -r);
		goto out;
	}
	STAT_ADD(d, bytes_fetched, (uint64_t)n);
	if (whole && (uint64_t)n == total) {
		/* The whole file: keep it for later reads of this version. */
		char *keep = realloc(buf, n ? (size_t)n : 1);

		if (keep) {
			buf = NULL;
			pthread_mutex_lock(&i->lock);
			if (i->cache)
				atomic_fetch_sub(&d->cache_bytes, i->cache_len);
			free(i->cache);
			i->cache = keep;
			i->cache_len = (size_t)n;
			memcpy(i->cache_ver, got, sizeof(i->cache_ver));
			atomic_fetch_add(&d->cache_bytes, (uint64_t)n);
			pthread_mutex_unlock(&i->lock);
			if (!reply_cached(d, req, i, got, size, off))
				fuse_reply_err(req, EAGAIN);
			goto check;
		}
	}
	if (whole) {
		size_t o2 = (size_t)off < (size_t)n ? (size_t)off : (size_t)n;
		size_t len = (size_t)n - o2 < size ? (size_t)n - o2 : size;

		STAT_ADD(d, bytes_read, len);
		fuse_reply_buf(req, buf + o2, len);
	} else {
		ra_note(d, i, path, got[0] ? got : ver, total, size, (uint64_t)off);
		STAT_ADD(d, bytes_read, (uint64_t)n);
		fuse_reply_buf(req, buf, (size_t)n);
	}
check:
	/* An event may have invalidated the page cache before our (older) bytes reached it. */
	if (got[0] && ver[0] && strcmp(got, ver))
		notify_nodeid(d, NQ_INODE_DATA, ino, NULL);
out:
	free(buf);
	free(path);
}

/* ---- write ----------------------------------------------------------------------------- */

void io_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	      struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_inode *i = fh_of(fi)->ino;
	struct wbuf *wb = &i->wb;
	struct opctx o;
	int r = 0;

	STAT_INC(d, ops[OP_WRITE]);
	if (shadow_write(d, req, i, buf, size, (uint64_t)off))
		return;
	pthread_mutex_lock(&i->wlock);
	op_begin(d, &o, req, true);
	if (!d->async_close) {
		/* A refusal of earlier bytes is reported here; stalled uploads are retried first,
		 * as a synchronous write would be. */
		r = wq_error(d, i, true);
		if (r == 1)
			r = wq_wait(d, i, WQ_CONSUME, &o.cancelled);
	}
	if (r == 0 && wb->len &&
	    ((uint64_t)off != wb->off + wb->len || wb->len + size > DFS_WBUF_MAX))
		r = wb_submit(d, i, 0, &o.cancelled);
	if (r == 0 && wb->len + size > wb->cap) {
		size_t cap = wb->cap ? wb->cap : wb->hint > 65536 ? wb->hint : 65536;
		char *nb;

		while (cap < wb->len + size)
			cap *= 2;
		/* A full-size buffer comes from the queue's pool of used ones. */
		nb = !wb->buf && cap == DFS_WBUF_MAX ? wq_buf(d) : realloc(wb->buf, cap);
		if (!nb) {
			r = -ENOMEM;
		} else {
			wb->buf = nb;
			wb->cap = cap;
		}
	}
	if (r == 0) {
		if (!wb->len)
			wb->off = (uint64_t)off;
		memcpy(wb->buf + wb->len, buf, size);
		wb->len += size;
		if (wb->len >= DFS_WBUF_MAX) {
			r = wb_submit(d, i, 0, &o.cancelled);
			if (r < 0)
				wb->len -= size; /* this write failed: its bytes go */
		}
	}
	r = op_end(d, &o, r);
	pthread_mutex_unlock(&i->wlock);
	shadow_write_end(i);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	STAT_ADD(d, bytes_written, size);
	fuse_reply_write(req, size);
}

/* ---- locks ----------------------------------------------------------------------------- */

static int lock_call(struct dfs *d, fuse_req_t req, fuse_ino_t ino, struct dbx_lock *l)
{
	char sess[64];
	struct opctx o;
	char *path;
	int r;

	pthread_mutex_lock(&d->sess_lock);
	memcpy(sess, d->session, sizeof(sess));
	pthread_mutex_unlock(&d->sess_lock);
	if (!sess[0])
		return -ENOLCK; /* no lock session while the event stream is down */
	r = itab_path(d, ino, &path);
	if (r < 0)
		return r;
	/* Bounded slices under the client's request timeout; a signal ends the wait. */
	l->timeout_ms = 20000;
	op_begin(d, &o, req, l->wait);
	do {
		STAT_INC(d, remote_calls);
		r = dbx_fs_lock(d->client, sess, path, l);
	} while (l->wait && r == -ETIMEDOUT && !o.cancelled);
	r = op_end(d, &o, r);
	free(path);
	return r;
}

static int posix_unlock_owner(struct dfs *d, fuse_req_t req, fuse_ino_t ino, uint64_t owner)
{
	struct dbx_lock l = {.kind = DBX_LOCK_POSIX, .op = DBX_LOCK_UN, .owner = owner};

	return lock_call(d, req, ino, &l);
}

void io_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock)
{
	struct dfs *d = req_dfs(req);
	/* No test-lock call on the wire: probe with a second owner and undo. */
	struct dbx_lock l = {
		.kind = DBX_LOCK_POSIX,
		.op = lock->l_type == F_WRLCK ? DBX_LOCK_EX : DBX_LOCK_SH,
		.start = (uint64_t)lock->l_start,
		.len = (uint64_t)lock->l_len,
		.owner = fi->lock_owner ^ (1ull << 63),
	};
	int r;

	STAT_INC(d, ops[OP_GETLK]);
	r = lock_call(d, req, ino, &l);
	if (r == 0) {
		l.op = DBX_LOCK_UN;
		lock_call(d, req, ino, &l);
		lock->l_type = F_UNLCK;
	} else if (r == -EAGAIN || r == -EACCES) {
		lock->l_pid = 0;
		r = 0;
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_lock(req, lock);
}

void io_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
	      int sleep)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	struct dbx_lock l = {
		.kind = DBX_LOCK_POSIX,
		.op = lock->l_type == F_UNLCK   ? DBX_LOCK_UN
		      : lock->l_type == F_WRLCK ? DBX_LOCK_EX
						: DBX_LOCK_SH,
		.start = (uint64_t)lock->l_start,
		.len = (uint64_t)lock->l_len,
		.owner = fi->lock_owner,
		.wait = sleep,
	};
	int r;

	STAT_INC(d, ops[OP_SETLK]);
	r = lock_call(d, req, ino, &l);
	if (r == 0 && l.op != DBX_LOCK_UN) {
		fh->posix_locked = true;
		fh->posix_owner = fi->lock_owner;
		pthread_mutex_lock(&fh->ino->lock);
		fh->ino->posix_locked = true;
		pthread_mutex_unlock(&fh->ino->lock);
	}
	fuse_reply_err(req, -r);
}

void io_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	struct dbx_lock l = {
		.kind = DBX_LOCK_FLOCK,
		.op = (op & LOCK_UN)   ? DBX_LOCK_UN
		      : (op & LOCK_EX) ? DBX_LOCK_EX
				       : DBX_LOCK_SH,
		.wait = !(op & LOCK_NB),
	};
	int r;

	STAT_INC(d, ops[OP_FLOCK]);
	r = lock_call(d, req, ino, &l);
	if (r == 0)
		fh->flocked = l.op != DBX_LOCK_UN;
	fuse_reply_err(req, r == -EAGAIN ? EWOULDBLOCK : -r);
}

/* ---- flush / release / fsync ----------------------------------------------------------- */

/* The wait of a flush or fsync: interruptible by the request's FUSE INTERRUPT. */
static int req_flush(struct dfs *d, fuse_req_t req, struct dfs_inode *i)
{
	volatile int cancelled = 0;
	int r;

	fuse_req_interrupt_func(req, on_interrupt, (void *)&cancelled);
	r = flush_wait(d, i, WQ_CONSUME, &cancelled);
	fuse_req_interrupt_func(req, NULL, NULL);
	if (r == -EINTR)
		STAT_INC(d, ops[OP_INTERRUPTED]);
	return r;
}

void io_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	struct dfs_inode *i = fh->ino;
	int r;

	STAT_INC(d, ops[OP_FLUSH]);
	if (d->async_close) {
		/* Queued, not waited for: an earlier failure of the file is reported now. */
		r = shadow_flush(d, i, SHADOW_ASYNC | SHADOW_CONSUME, NULL);
		pthread_mutex_lock(&i->wlock);
		r = r < 0 ? r : wb_submit(d, i, WQ_ASYNC, NULL);
		pthread_mutex_unlock(&i->wlock);
		if (r == 0)
			r = wq_error(d, i, false);
	} else {
		r = req_flush(d, req, i);
	}
	/* POSIX: any close by the owner drops its record locks. */
	if (fh->posix_locked && fh->posix_owner == fi->lock_owner) {
		posix_unlock_owner(d, req, ino, fi->lock_owner);
		fh->posix_locked = false;
	}
	fuse_reply_err(req, -r);
}

void io_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	struct dfs_inode *i = fh->ino;
	bool last;
	int r;

	STAT_INC(d, ops[OP_RELEASE]);
	pthread_mutex_lock(&i->lock);
	last = i->opens == 1;
	pthread_mutex_unlock(&i->lock);
	if (d->async_close) {
		r = shadow_flush(d, i, SHADOW_ASYNC, NULL);
		pthread_mutex_lock(&i->wlock);
		r = r < 0 ? r : wb_submit(d, i, WQ_ASYNC, NULL);
		pthread_mutex_unlock(&i->wlock);
	} else {
		r = flush_wait(d, i, last ? WQ_CONSUME : 0, NULL);
	}
	if (r < 0 && last) {
		/* Nobody is left to retry what could not be stored (the close reported it). */
		char *path = itab_last_path(d, ino);
		uint64_t n = (d->async_close ? 0 : wq_drop(d, i)) + shadow_drop(d, i);

		pthread_mutex_lock(&i->wlock);
		n += i->wb.len;
		i->wb.len = 0;
		pthread_mutex_unlock(&i->wlock);
		dfs_log(DFS_WARN, "release %s: buffered data lost (%llu bytes not stored): %s",
			path ? path : "?", (unsigned long long)n, strerror(-r));
		free(path);
	}
	if (fh->flocked) {
		struct dbx_lock l = {.kind = DBX_LOCK_FLOCK, .op = DBX_LOCK_UN};

		lock_call(d, req, ino, &l);
	}
	if (fh->posix_locked)
		posix_unlock_owner(d, req, ino, fh->posix_owner);
	pthread_mutex_lock(&i->lock);
	i->opens--;
	pthread_mutex_unlock(&i->lock);
	ra_release(d, i);
	handle_del(d, &fh->h);
	free(fh);
	fuse_reply_err(req, 0);
}

void io_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	struct dbx_attr a;
	struct opctx o;
	char *path;
	int r;

	STAT_INC(d, ops[OP_FSYNC]);
	/* A shadow's unsent writes go with the agent's fsync: then only a refusal of earlier
	 * queued bytes is left to report. */
	r = shadow_flush(d, fh->ino, SHADOW_FSYNC | SHADOW_CONSUME, NULL);
	if (r > 0) {
		fuse_reply_err(req, -wq_error(d, fh->ino, false));
		return;
	}
	r = r < 0 ? r : req_flush(d, req, fh->ino);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = itab_path(d, ino, &path);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	op_begin(d, &o, req, false);
	STAT_INC(d, remote_calls);
	r = op_end(d, &o, dbx_fs_fsync(d->client, path, datasync, &a));
	if (r == 0)
		dfs_mirror_update(d, path, &a, NULL, false);
	free(path);
	fuse_reply_err(req, -r);
}
