/* SPDX-License-Identifier: Apache-2.0 */
/*
 * File data and locks: open/create/read/write/flush/release/fsync, flock and POSIX locks.
 * Run by libfuse worker threads.
 *
 * Reads: a file up to DFS_SMALL_FILE is fetched whole on first read and kept per inode, keyed
 * by its version (the agent's `ver`), within DFS_CACHE_BUDGET in total; bigger files are read
 * by range.  The kernel page cache is kept across opens (keep_cache) while the version is the
 * one it was filled from; events invalidate it when the content changes remotely.
 * Writes: buffered per inode (inode.wlock) as one contiguous run of up to DFS_WBUF_MAX bytes,
 * uploaded as one offset write when the run breaks or fills, and at flush (close), fsync,
 * getattr, setattr, rename and read, so close() returns the remote result (ENOSPC ...).
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

static bool definitive(int r)
{
	switch (-r) {
	case ENOSPC:
	case EFBIG:
	case EDQUOT:
	case ENOENT:
	case EROFS:
	case EACCES:
	case EPERM:
	case EISDIR:
	case EINVAL:
	case ESTALE:
	case ENOTDIR:
	case ENAMETOOLONG:
	case EXDEV:
	case ENOMEM:
		return true;
	default:
		return false;
	}
}

/* ---- write buffer ---------------------------------------------------------------------- */

int io_wb_flush(struct dfs *d, struct dfs_inode *i, const char *path)
{
	struct dbx_write_opts w = {.offset = i->wb.off, .no_create = true};
	struct dbx_attr a;
	size_t len = i->wb.len;
	int r;

	if (!len)
		return 0;
	STAT_INC(d, remote_calls);
	r = dbx_fs_pwrite(d->client, path, i->wb.buf, len, &w, &a);
	if (r < 0) {
		dfs_log(DFS_DEBUG, "write %s: %s", path, dbx_error_last());
		/* A refusal by the agent is final and reported once (to this write, flush, close or
		 * fsync); a lost connection or timeout keeps the bytes for the next attempt (an
		 * offset write can be repeated). */
		if (definitive(r))
			i->wb.len = 0;
		return r;
	}
	i->wb.len = 0;
	STAT_ADD(d, bytes_uploaded, len);
	dfs_mirror_update(d, path, &a, NULL, false);
	pthread_mutex_lock(&i->lock);
	/* The kernel's pages already hold what we wrote: they stay valid for the new version. */
	if (i->kc_ver[0] && !strcmp(i->kc_ver, i->attr.ver))
		memcpy(i->kc_ver, a.ver, sizeof(i->kc_ver));
	i->attr = a;
	pthread_mutex_unlock(&i->lock);
	return 0;
}

int io_flush_inode(struct dfs *d, struct dfs_inode *i)
{
	char *path;
	int r = 0;

	pthread_mutex_lock(&i->wlock);
	if (i->wb.len) {
		path = itab_path(d, i->nodeid);
		if (!path) {
			i->wb.len = 0;
			r = -ENOMEM;
		} else {
			if (!d->hard)
				dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
			r = io_wb_flush(d, i, path);
			dbx_thread_set_deadline(0);
			r = dfs_wire_errno(d, r);
			free(path);
		}
	}
	pthread_mutex_unlock(&i->wlock);
	return r;
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

	if (!i || !S_ISREG(i->mode))
		return;
	pthread_mutex_lock(&i->lock);
	opens = i->opens;
	pthread_mutex_unlock(&i->lock);
	if (!opens || io_flush_inode(d, i) < 0)
		return;
	pthread_mutex_lock(&i->lock);
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
	path = itab_path(d, ino);
	if (!path) {
		fuse_reply_err(req, ENOMEM);
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
	dir = itab_path(d, parent);
	path = dir ? path_join(dir, name) : NULL;
	free(dir);
	if (!path) {
		fuse_reply_err(req, ENOMEM);
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
	if (!found && atomic_load(&d->healthy)) {
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
	fuse_reply_buf(req, copy, n);
	free(copy);
	STAT_ADD(d, bytes_read, n);
	STAT_INC(d, read_cache_hits);
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
	r = io_flush_inode(d, i);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	path = itab_path(d, ino);
	if (!path) {
		fuse_reply_err(req, ENOMEM);
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

		fuse_reply_buf(req, buf + o2, len);
		STAT_ADD(d, bytes_read, len);
	} else {
		ra_note(d, i, path, got[0] ? got : ver, total, size, (uint64_t)off);
		fuse_reply_buf(req, buf, (size_t)n);
		STAT_ADD(d, bytes_read, (uint64_t)n);
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
	struct opctx o;
	char *path = NULL;
	int r = 0;

	STAT_INC(d, ops[OP_WRITE]);
	pthread_mutex_lock(&i->wlock);
	op_begin(d, &o, req, false);
	if (i->wb.len &&
	    ((uint64_t)off != i->wb.off + i->wb.len || i->wb.len + size > DFS_WBUF_MAX)) {
		path = itab_path(d, ino);
		r = path ? io_wb_flush(d, i, path) : -ENOMEM;
	}
	if (r == 0 && i->wb.len + size > i->wb.cap) {
		size_t cap = i->wb.cap ? i->wb.cap : 65536;
		char *nb;

		while (cap < i->wb.len + size)
			cap *= 2;
		nb = realloc(i->wb.buf, cap);
		if (!nb) {
			r = -ENOMEM;
		} else {
			i->wb.buf = nb;
			i->wb.cap = cap;
		}
	}
	if (r == 0) {
		if (!i->wb.len)
			i->wb.off = (uint64_t)off;
		memcpy(i->wb.buf + i->wb.len, buf, size);
		i->wb.len += size;
		if (i->wb.len >= DFS_WBUF_MAX) {
			if (!path)
				path = itab_path(d, ino);
			r = path ? io_wb_flush(d, i, path) : -ENOMEM;
		}
	}
	r = op_end(d, &o, r);
	pthread_mutex_unlock(&i->wlock);
	free(path);
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
	path = itab_path(d, ino);
	if (!path)
		return -ENOMEM;
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

void io_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dfs *d = req_dfs(req);
	struct dfs_fh *fh = fh_of(fi);
	int r;

	STAT_INC(d, ops[OP_FLUSH]);
	r = io_flush_inode(d, fh->ino);
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
	int r;

	STAT_INC(d, ops[OP_RELEASE]);
	r = io_flush_inode(d, fh->ino);
	if (r < 0)
		dfs_log(DFS_WARN, "release: buffered data lost: %s", strerror(-r));
	if (fh->flocked) {
		struct dbx_lock l = {.kind = DBX_LOCK_FLOCK, .op = DBX_LOCK_UN};

		lock_call(d, req, ino, &l);
	}
	if (fh->posix_locked)
		posix_unlock_owner(d, req, ino, fh->posix_owner);
	pthread_mutex_lock(&fh->ino->lock);
	fh->ino->opens--;
	pthread_mutex_unlock(&fh->ino->lock);
	ra_release(d, fh->ino);
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
	r = io_flush_inode(d, fh->ino);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	path = itab_path(d, ino);
	if (!path) {
		fuse_reply_err(req, ENOMEM);
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
