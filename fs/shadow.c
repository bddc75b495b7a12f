/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Write-back shadow of small files, run by libfuse worker threads.
 *
 * Tools such as GNU as write their output in small scattered pieces and fstat and read it back
 * while writing.  Buffering one contiguous run (io.c) uploads at every break of the run and at
 * every getattr and read.  Instead, while a regular file of at most DFS_SMALL_FILE bytes is
 * written, its whole content is kept here (inode.shadow):
 *
 *  - the first write builds it: empty for an empty file (just created or truncated: no fetch),
 *    else the whole-file cache if it holds the current version, else one fetch;
 *  - writes at any offset change it and widen one dirty span [dlo, dhi);
 *  - reads are served from it, getattr takes size, mtime and ctime from it (the time of the last
 *    local write), so neither costs a round trip;
 *  - at flush (close), fsync, setattr, rename, link or unlink the dirty span goes to the agent
 *    in one offset write (with the agent's fsync for fsync), conditional on the version the
 *    content was built on.  The reply's attributes replace the local ones, the kernel is told
 *    to drop the attributes it was given, and the content becomes the whole-file cache of the
 *    new version;
 *  - a file that would outgrow DFS_SMALL_FILE (or the cache budget) hands the span to the write
 *    queue (wq.c) like a full write buffer, and goes on by io.c's path;
 *  - if the file changed on the agent meanwhile (If-Match fails), the span is written anyway
 *    (the local writer wins within it, as with plain offset writes) and the copy is dropped;
 *  - with -o async_close, a close hands the span to the write queue (wq.c) instead of waiting.
 *
 * Errors, as for the write queue: a refusal by the agent (ENOSPC ...) drops the dirty bytes and
 * is reported once, to the flush, fsync or write that caused it or else to the next one (an
 * upload caused by rename, setattr, ... keeps it for them); a lost connection keeps the bytes
 * for the next attempt and fails whoever waited with EIO (the last close drops them after
 * reporting, like the write queue's stalled jobs).
 * A shadow is built only while the event stream is healthy (the mirror's version and size are
 * then current), nothing of the file is buffered or queued by io.c's path, and the cache
 * budget (dfs.cache_bytes, which counts every shadow's allocation) has room; otherwise the
 * write takes io.c's path.
 *
 * Locks: shadow.lock is held by every writer, also across io.c's path (shadow_write_end), so a
 * shadow never appears beside bytes buffered there; and across the fetch and the upload, so the
 * bytes being sent cannot change.  Every change of the fields below is also made under
 * inode.lock, so readers (read, getattr, entry replies) take only inode.lock and never wait for
 * the agent.  Order: shadow.lock -> inode.wlock -> mirror.lock -> itab.lock -> inode.lock, and
 * wq.lock last.  The struct lives from the first write until the inode is freed.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct shadow {
	pthread_mutex_t lock;
	/* Changed under lock and inode.lock; read under either. */
	bool live;                  /* buf is the file's content, with unsent writes */
	char *buf;                  /* cap bytes, counted in dfs.cache_bytes */
	size_t len, cap;            /* local size */
	size_t dlo, dhi;            /* dirty span; dlo == dhi: clean */
	char base[DBX_VER_MAX];     /* version the clean bytes come from */
	struct timespec mtime;      /* of the last local write */
	bool told;                  /* inode.lock only: the kernel was given local attributes */
	int err;                    /* lock only: a refusal not reported yet */
};

/* The inode's shadow, created if asked (NULL on ENOMEM or if none). */
static struct shadow *sh_get(struct dfs_inode *i, bool create)
{
	struct shadow *sh;

	pthread_mutex_lock(&i->lock);
	sh = i->shadow;
	if (!sh && create) {
		sh = calloc(1, sizeof(*sh));
		if (sh) {
			pthread_mutex_init(&sh->lock, NULL);
			i->shadow = sh;
		}
	}
	pthread_mutex_unlock(&i->lock);
	return sh;
}

/* The allocation for n bytes: a power of two from 4 KiB, at most DFS_SMALL_FILE. */
static size_t sh_cap_for(size_t n)
{
	size_t cap = 4096;

	while (cap < n)
		cap *= 2;
	return cap < DFS_SMALL_FILE ? cap : DFS_SMALL_FILE;
}

static bool budget_has(struct dfs *d, size_t more)
{
	return atomic_load(&d->cache_bytes) + more <= DFS_CACHE_BUDGET;
}

/* Forgets the content (caller holds sh.lock and inode.lock). */
static void sh_clear(struct dfs *d, struct shadow *sh)
{
	if (sh->buf)
		atomic_fetch_sub(&d->cache_bytes, sh->cap);
	free(sh->buf);
	sh->buf = NULL;
	sh->live = false;
	sh->told = false;
	sh->len = sh->cap = sh->dlo = sh->dhi = 0;
	sh->base[0] = 0;
}

/* ---- building -------------------------------------------------------------------------- */

/* The mirror's version and size of path if it is i's current regular file (stream healthy). */
static bool current(struct dfs *d, struct dfs_inode *i, const char *path, char ver[DBX_VER_MAX],
		    uint64_t *size)
{
	struct ment *e;
	bool ok = false;

	if (!atomic_load(&d->healthy))
		return false;
	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e && !e->stale && e->attr.ino == i->rino && S_ISREG(e->attr.mode)) {
		memcpy(ver, e->attr.ver, DBX_VER_MAX);
		*size = e->attr.size;
		ok = true;
	}
	pthread_mutex_unlock(&d->mirror.lock);
	return ok;
}

/* Fetches the whole file: 0 (*ret_buf of DFS_SMALL_FILE bytes, *ret_len, ver), 1 if it is
 * bigger than DFS_SMALL_FILE, or -errno. */
static int fetch(struct dfs *d, fuse_req_t req, const char *path, char **ret_buf, size_t *ret_len,
		 char ver[DBX_VER_MAX])
{
	char *buf = malloc(DFS_SMALL_FILE);
	uint64_t total = 0;
	struct opctx o;
	ssize_t n;
	int r;

	if (!buf)
		return -ENOMEM;
	op_begin(d, &o, req, false);
	STAT_INC(d, remote_calls);
	n = dbx_fs_pread(d->client, path, buf, DFS_SMALL_FILE, 0, ver, &total);
	r = op_end(d, &o, n < 0 ? (int)n : 0);
	if (r == 0) {
		STAT_ADD(d, bytes_fetched, (uint64_t)n);
		STAT_INC(d, read_cache_misses);
		if ((uint64_t)n != total)
			r = 1;
	}
	if (r != 0) {
		free(buf);
		return r;
	}
	*ret_buf = buf;
	*ret_len = (size_t)n;
	return 0;
}

/* Makes sh live with the file's content, room for end bytes: 0, or nonzero when the write
 * should take io.c's path instead.  Caller holds sh.lock. */
static int sh_load(struct dfs *d, fuse_req_t req, struct dfs_inode *i, struct shadow *sh,
		   size_t end)
{
	char ver[DBX_VER_MAX], *path, *buf = NULL, *nb;
	uint64_t size = 0;
	size_t len = 0, cap;
	bool busy, adopted = false;
	int r = 1;

	/* Bytes io.c's path buffered or queued must be on the agent first (with sh.lock held no
	 * more can come): a buffered run stays on that path, queued uploads are waited for. */
	pthread_mutex_lock(&i->wlock);
	busy = i->wb.len != 0;
	pthread_mutex_unlock(&i->wlock);
	if (busy || wq_wait(d, i, 0, NULL) != 0)
		return 1;
	if (itab_path(d, i->nodeid, &path) < 0)
		return 1; /* removed: io.c's path reports it */
	if (!current(d, i, path, ver, &size) || size > DFS_SMALL_FILE)
		goto out;
	cap = sh_cap_for(end > size ? end : (size_t)size);
	pthread_mutex_lock(&i->lock);
	if (i->pinned) {
		pthread_mutex_unlock(&i->lock);
		goto out;
	}
	if (i->cache && i->cache_len == size && ver[0] && !strcmp(i->cache_ver, ver)) {
		/* The cached copy is current: it becomes the shadow (stays counted). */
		buf = i->cache;
		len = i->cache_len;
		atomic_fetch_sub(&d->cache_bytes, i->cache_len);
		i->cache = NULL;
		i->cache_len = 0;
		i->cache_ver[0] = 0;
		adopted = true;
	} else if (i->cache) {
		/* An older version: of no further use. */
		atomic_fetch_sub(&d->cache_bytes, i->cache_len);
		free(i->cache);
		i->cache = NULL;
		i->cache_len = 0;
		i->cache_ver[0] = 0;
	}
	pthread_mutex_unlock(&i->lock);
	if (!budget_has(d, cap)) {
		if (adopted) {
			/* Give it back: the write goes the plain way. */
			pthread_mutex_lock(&i->lock);
			if (!i->cache) {
				i->cache = buf;
				i->cache_len = len;
				memcpy(i->cache_ver, ver, sizeof(i->cache_ver));
				atomic_fetch_add(&d->cache_bytes, len);
				buf = NULL;
			}
			pthread_mutex_unlock(&i->lock);
			free(buf);
		}
		goto out;
	}
	if (!adopted && size) {
		r = fetch(d, req, path, &buf, &len, ver);
		if (r != 0)
			goto out;
		r = 1;
		cap = sh_cap_for(end > len ? end : len);
	}
	nb = realloc(buf, cap);
	if (!nb) {
		free(buf);
		r = -ENOMEM;
		goto out;
	}
	atomic_fetch_add(&d->cache_bytes, cap);
	pthread_mutex_lock(&i->lock);
	sh->buf = nb;
	sh->cap = cap;
	sh->len = len;
	sh->dlo = sh->dhi = 0;
	memcpy(sh->base, ver, sizeof(sh->base));
	sh->live = true;
	pthread_mutex_unlock(&i->lock);
	r = 0;
out:
	free(path);
	return r;
}

/* ---- upload ---------------------------------------------------------------------------- */

/* Ends sh: its content, if it is version base of the agent's file, becomes the whole-file
 * cache.  Returns whether the kernel was given local attributes.  Caller holds sh.lock and
 * inode.lock. */
static bool sh_retire(struct dfs *d, struct dfs_inode *i, struct shadow *sh)
{
	bool told = sh->told;

	if (sh->base[0] && !i->pinned) {
		char *keep = realloc(sh->buf, sh->len ? sh->len : 1);

		if (keep) {
			if (i->cache)
				atomic_fetch_sub(&d->cache_bytes, i->cache_len);
			free(i->cache);
			i->cache = keep;
			i->cache_len = sh->len;
			memcpy(i->cache_ver, sh->base, sizeof(i->cache_ver));
			atomic_fetch_sub(&d->cache_bytes, sh->cap - sh->len);
			sh->buf = NULL;
		}
	}
	sh_clear(d, sh);
	return told;
}

/* The agent will not take the copy's bytes (or the file is gone): the copy goes, and the
 * kernel's pages with it. */
static void sh_refused(struct dfs *d, struct dfs_inode *i, struct shadow *sh)
{
	pthread_mutex_lock(&i->lock);
	sh_clear(d, sh);
	i->kc_ver[0] = 0;
	pthread_mutex_unlock(&i->lock);
	notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
}

/* Sends the dirty span in one offset write, conditional on the base version: 1 sent, or
 * -errno.  Then the content becomes the cache of the new version.  Caller holds sh.lock. */
static int sh_upload(struct dfs *d, struct dfs_inode *i, struct shadow *sh, bool fsync,
		     const volatile int *cancel)
{
	struct dbx_write_opts w = {
		.offset = sh->dlo, .no_create = true, .fsync = fsync, .if_ino = i->rino};
	size_t lo = sh->dlo, hi = sh->dhi;
	bool conflict = false, told;
	struct dbx_attr a;
	char *path;
	int r;

	r = itab_path(d, i->nodeid, &path);
	if (r < 0) {
		if (r == -ESTALE) /* removed or replaced: nowhere to write to */
			sh_refused(d, i, sh);
		return r;
	}
	w.if_match = sh->base[0] ? sh->base : NULL;
	dbx_thread_set_cancel_flag(cancel);
	if (!d->hard)
		dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
	STAT_INC(d, remote_calls);
	r = dbx_fs_pwrite(d->client, path, sh->buf + lo, hi - lo, &w, &a);
	if (r == -ESTALE && w.if_match) {
		/* Changed on the agent since the copy was made: the span still goes there (as a
		 * plain offset write would), but the rest of the copy is not the agent's now. */
		conflict = true;
		w.if_match = NULL;
		STAT_INC(d, remote_calls);
		r = dbx_fs_pwrite(d->client, path, sh->buf + lo, hi - lo, &w, &a);
	}
	dbx_thread_set_deadline(0);
	dbx_thread_set_cancel_flag(NULL);
	if (r < 0) {
		STAT_INC(d, remote_errors);
		dfs_log(DFS_DEBUG, "shadow upload %s: %s", path, dbx_error_last());
		free(path);
		if (cancel && *cancel)
			return -EINTR;
		if (!wq_refused(r))
			return dfs_wire_errno(d, r); /* kept for the next attempt */
		sh_refused(d, i, sh);
		return r;
	}
	STAT_ADD(d, bytes_uploaded, hi - lo);
	if (d->debug)
		dfs_log(DFS_DEBUG, "shadow upload %s [%zu, %zu) of %zu%s%s", path, lo, hi, sh->len,
			fsync ? " fsync" : "", conflict ? " (changed remotely)" : "");
	dfs_mirror_update(d, path, &a, NULL, false);
	free(path);
	pthread_mutex_lock(&i->lock);
	/* The kernel's pages hold what was written over the base version. */
	if (conflict || strcmp(i->kc_ver, sh->base))
		i->kc_ver[0] = 0;
	else
		memcpy(i->kc_ver, a.ver, sizeof(i->kc_ver));
	i->attr = a;
	if (conflict || a.size != sh->len)
		sh->base[0] = 0; /* not the agent's content: not to be cached */
	else
		memcpy(sh->base, a.ver, sizeof(sh->base));
	told = sh_retire(d, i, sh);
	pthread_mutex_unlock(&i->lock);
	/* The size and times the kernel was given are not the agent's. */
	if (conflict)
		notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
	else if (told)
		notify_nodeid(d, NQ_INODE_ATTR, i->nodeid, NULL);
	return 1;
}

/* The dirty span becomes a job of the write queue, not waited for (flags: WQ_ASYNC for a
 * close); then the copy goes (its version is known only once the job is done).  If the queue
 * refuses the job, the shadow stays as it was.  Caller holds sh.lock. */
static int sh_submit(struct dfs *d, struct dfs_inode *i, struct shadow *sh, unsigned flags)
{
	struct wbuf wb = {.off = sh->dlo, .len = sh->dhi - sh->dlo};
	char *path;
	bool told;
	int r;

	/* A copy: the queue may resize its buffer, readers may still read the shadow's. */
	wb.cap = wb.len;
	wb.buf = malloc(wb.len);
	r = itab_path(d, i->nodeid, &path);
	if (!wb.buf || r < 0) {
		free(wb.buf);
		free(path);
		return r < 0 ? r : -ENOMEM;
	}
	memcpy(wb.buf, sh->buf + sh->dlo, wb.len);
	pthread_mutex_lock(&i->wlock);
	r = wq_submit(d, i, path, &wb, flags, NULL);
	pthread_mutex_unlock(&i->wlock);
	free(wb.buf); /* NULL once the queue took it */
	free(path);
	if (r < 0)
		return r;
	/* Readers and getattr now go through io.c's flush, which waits for sh.lock and then for
	 * the job. */
	pthread_mutex_lock(&i->lock);
	told = sh->told;
	sh_clear(d, sh);
	pthread_mutex_unlock(&i->lock);
	if (told)
		notify_nodeid(d, NQ_INODE_ATTR, i->nodeid, NULL);
	return 0;
}

/* ---- entry points ---------------------------------------------------------------------- */

int shadow_write(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const char *data,
		 size_t size, uint64_t off)
{
	uint64_t end = off + size; /* off < 2^63, size <= DFS_IO_MAX */
	struct shadow *sh = sh_get(i, true);
	int r = 0;

	if (!sh) {
		fuse_reply_err(req, ENOMEM);
		return 1;
	}
	pthread_mutex_lock(&sh->lock);
	if (!S_ISREG(i->mode) || !size)
		return 0;
	if (sh->err) {
		/* A refusal of earlier bytes is reported here (as io.c's path does). */
		r = sh->err;
		sh->err = 0;
		goto fail;
	}
	if (!sh->live) {
		if (end > DFS_SMALL_FILE || sh_load(d, req, i, sh, (size_t)end) != 0)
			return 0;
	} else if (end > DFS_SMALL_FILE) {
		/* Outgrows the limit: queued like a full write buffer, the plain way from here. */
		r = sh_submit(d, i, sh, 0);
		if (r < 0)
			goto fail;
		goto plain;
	}
	if (end > sh->cap) {
		size_t cap = sh_cap_for(end);
		char *nb;

		if (!budget_has(d, cap - sh->cap)) {
			r = sh_submit(d, i, sh, 0);
			if (r < 0)
				goto fail;
			goto plain;
		}
		pthread_mutex_lock(&i->lock);
		nb = realloc(sh->buf, cap);
		if (nb) {
			atomic_fetch_add(&d->cache_bytes, cap - sh->cap);
			sh->buf = nb;
			sh->cap = cap;
		}
		pthread_mutex_unlock(&i->lock);
		if (!nb) {
			r = -ENOMEM;
			goto fail;
		}
	}
	pthread_mutex_lock(&i->lock);
	if (off > sh->len)
		memset(sh->buf + sh->len, 0, (size_t)off - sh->len);
	memcpy(sh->buf + off, data, size);
	if (end > sh->len)
		sh->len = end;
	if (sh->dhi > sh->dlo) {
		if (off < sh->dlo)
			sh->dlo = (size_t)off;
		if (end > sh->dhi)
			sh->dhi = end;
	} else {
		sh->dlo = (size_t)off;
		sh->dhi = end;
	}
	clock_gettime(CLOCK_REALTIME, &sh->mtime);
	pthread_mutex_unlock(&i->lock);
	pthread_mutex_unlock(&sh->lock);
	STAT_ADD(d, bytes_written, size);
	fuse_reply_write(req, size);
	return 1;
fail:
	pthread_mutex_unlock(&sh->lock);
	fuse_reply_err(req, -r);
	return 1;
plain:
	return 0; /* sh.lock stays held: shadow_write_end */
}

void shadow_write_end(struct dfs_inode *i)
{
	pthread_mutex_unlock(&i->shadow->lock);
}

bool shadow_read(struct dfs *d, fuse_req_t req, struct dfs_inode *i, size_t size, uint64_t off)
{
	char *copy = NULL;
	bool hit = false;
	size_t n = 0;

	pthread_mutex_lock(&i->lock);
	if (i->shadow && i->shadow->live) {
		struct shadow *sh = i->shadow;
		size_t o = off < sh->len ? (size_t)off : sh->len;

		n = sh->len - o < size ? sh->len - o : size;
		copy = malloc(n ? n : 1);
		if (copy) {
			memcpy(copy, sh->buf + o, n);
			hit = true;
		}
	}
	pthread_mutex_unlock(&i->lock);
	if (!hit)
		return false;
	/* After the reply the inode may be gone: nothing of it is touched below. */
	STAT_ADD(d, bytes_read, n);
	STAT_INC(d, read_cache_hits);
	fuse_reply_buf(req, copy, n);
	free(copy);
	return true;
}

bool shadow_live_locked(const struct dfs_inode *i)
{
	return i->shadow && i->shadow->live;
}

bool shadow_live(struct dfs_inode *i)
{
	bool live;

	pthread_mutex_lock(&i->lock);
	live = shadow_live_locked(i);
	pthread_mutex_unlock(&i->lock);
	return live;
}

void shadow_attr(struct dfs_inode *i, struct dbx_attr *a)
{
	pthread_mutex_lock(&i->lock);
	if (i->shadow && i->shadow->live && a->ino == i->rino) {
		struct shadow *sh = i->shadow;

		a->size = sh->len;
		a->blocks = (sh->len + 511) / 512;
		a->mtime = a->ctime = sh->mtime;
		sh->told = true;
	}
	pthread_mutex_unlock(&i->lock);
}

void shadow_stat(struct dfs_inode *i, struct stat *st)
{
	pthread_mutex_lock(&i->lock);
	if (i->shadow && i->shadow->live && st->st_ino == i->rino) {
		struct shadow *sh = i->shadow;

		st->st_size = (off_t)sh->len;
		st->st_blocks = (blkcnt_t)((sh->len + 511) / 512);
		st->st_mtim = st->st_ctim = sh->mtime;
		sh->told = true;
	}
	pthread_mutex_unlock(&i->lock);
}

int shadow_flush(struct dfs *d, struct dfs_inode *i, unsigned flags, const volatile int *cancel)
{
	struct shadow *sh = sh_get(i, false);
	int r = 0;

	if (!sh)
		return 0;
	pthread_mutex_lock(&sh->lock);
	if (sh->live && (flags & SHADOW_ASYNC))
		r = sh_submit(d, i, sh, WQ_ASYNC);
	else if (sh->live)
		r = sh_upload(d, i, sh, flags & SHADOW_FSYNC, cancel);
	if (r < 0 && !sh->live && !(flags & SHADOW_CONSUME)) {
		/* A refusal (the bytes are gone): for the next flush, fsync or write. */
		if (!sh->err)
			sh->err = r;
		r = 0;
	}
	if (r >= 0 && sh->err && (flags & SHADOW_CONSUME)) {
		r = sh->err;
		sh->err = 0;
	}
	pthread_mutex_unlock(&sh->lock);
	return r;
}

uint64_t shadow_drop(struct dfs *d, struct dfs_inode *i)
{
	struct shadow *sh = sh_get(i, false);
	uint64_t n = 0;

	if (!sh)
		return 0;
	pthread_mutex_lock(&sh->lock);
	pthread_mutex_lock(&i->lock);
	if (sh->live) {
		n = sh->dhi - sh->dlo;
		i->kc_ver[0] = 0;
	}
	sh_clear(d, sh);
	pthread_mutex_unlock(&i->lock);
	pthread_mutex_unlock(&sh->lock);
	if (n)
		notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
	return n;
}

void shadow_free(struct dfs *d, struct dfs_inode *i)
{
	struct shadow *sh = i->shadow;

	if (!sh)
		return;
	if (sh->buf)
		atomic_fetch_sub(&d->cache_bytes, sh->cap);
	free(sh->buf);
	pthread_mutex_destroy(&sh->lock);
	free(sh);
	i->shadow = NULL;
}
