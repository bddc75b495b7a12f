/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The write queue: background uploads of buffered writes.
 *
 * io.c buffers each inode's current contiguous run (inode.wlock); a full or broken run, and
 * whatever is buffered at flush, fsync, getattr, ..., is handed here as a job (buffer, offset,
 * length) of the inode's wfile.  WQ_THREADS uploader threads send the jobs with offset writes:
 * jobs of different files, and non-overlapping jobs of one file, in parallel (at most
 * WQ_FILE_RUNNING of one file at a time); a job overlapping an earlier pending job of its file
 * only after that one is done, so later bytes win.  Writers wait (interruptibly) while their
 * file has WQ_FILE_JOBS jobs pending or the queue holds more than its byte cap (WQ_CAP, or
 * -o async_max with -o async_close).
 *
 * Results: a success updates the mirror (a reply older than what it holds is skipped, since
 * replies of parallel jobs arrive in any order).  A refusal by the agent (ENOSPC, ...) drops
 * the bytes and is kept as the file's error until a flush, fsync or (default mode) write of the
 * file reports it; getattr, read & co wait for the uploads but leave it.  A transport failure
 * keeps the job: by default its file stalls (no job of it is sent) and the waiter gets EIO; the
 * next wait retries.  With
 * -o async_close, and while draining at exit, the queue instead backs off (100 ms doubling to
 * 2 s) and retries until the agent is back; soft mounts give a job up after 10 x timeout.
 *
 * Lifetime: a wfile is keyed by the inode's node id (never reused within a mount) and lives
 * while it has jobs, an unreported error or waiters.  Jobs never touch struct dfs_inode (the
 * kernel may forget it as soon as the file is closed): the path is resolved by node id when a
 * job is sent, falling back to the last path a writer gave.  Only waiters, which hold the inode
 * through their request, apply the last reply's attributes to it.
 *
 * Threads: libfuse workers submit and wait; the uploaders send; main starts the queue after
 * the mount and drains and stops it after the session loop (wq_stop).  wq.lock protects
 * everything here.  It is taken after inode.wlock and inode.lock, never held across a remote
 * call, and under it only the logger's and the notifier queue's leaf locks are taken.
 */
#include "dfs.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WQ_THREADS      8
#define WQ_FILE_RUNNING 4             /* uploads of one file at a time */
#define WQ_FILE_JOBS    4             /* jobs one file may have pending before its writer waits */
#define WQ_CAP          (64ull << 20) /* queued bytes in total (default mode) */
#define WQ_JOB_COST     256           /* bytes charged per job beyond its data */
#define WQ_SLICE_MS     100           /* waits re-check interrupts and the session this often */
#define WQ_BACKOFF_MIN  100
#define WQ_BACKOFF_MAX  2000
#define WQ_GIVE_UP      10   /* soft mounts: x timeout of failed retries before a job is lost */
#define WQ_POOL         4    /* full-size buffers kept for reuse (fresh ones cost page faults) */
#define WQ_POOL_IDLE_MS 1000 /* ... and freed when unused this long */

struct wfile;

struct wjob {
	struct wjob *fprev, *fnext; /* the file's pending jobs, in submission order */
	struct wjob *qprev, *qnext; /* jobs waiting for an uploader */
	struct wfile *f;
	char *buf;
	size_t len, cap;
	uint64_t off;
	uint64_t seq;        /* submission order within the file */
	uint64_t fail_since; /* first failed attempt (retrying mode), 0 if none */
	bool queued;         /* on the queue (else being sent) */
	bool async;          /* handed over by a close that did not wait */
	/* An attribute change queued behind the data (async_close): no buf, to_set != 0; it
	 * orders against every other job of the file. */
	int to_set; /* FUSE_SET_ATTR_MODE, _UID, _GID, _ATIME, _MTIME */
	uint32_t mode;
	uid_t uid;
	gid_t gid;
	struct timespec tv[2];
};

struct wfile {
	struct hnode h;            /* wq.files, by node id */
	struct wfile *prev, *next; /* wq.all */
	fuse_ino_t nodeid;
	uint64_t rino;            /* the agent's ino: writes go only to that file */
	char *path;               /* the last path a writer gave */
	struct wjob *head, *tail; /* pending jobs */
	unsigned njobs, running;
	uint64_t next_seq;
	int err;                  /* first refusal not reported yet */
	int terr;                 /* the transport failure that stalled it */
	bool stalled;             /* default mode: jobs wait for the next wait to retry */
	int waiters;              /* threads holding a pointer to it outside wq.lock */
	bool have_last, kc_stale; /* last: newest reply; kc_stale: some write did not land */
	struct dbx_attr last;
};

struct wq {
	pthread_mutex_t lock;
	pthread_cond_t work; /* uploaders: a job may be runnable */
	pthread_cond_t done; /* waiters: a job finished or failed */
	struct htab files;
	struct wfile *all;
	struct wjob *qhead, *qtail;
	uint64_t bytes, cap;
	uint64_t retry_at; /* retrying mode: no job is sent before (after a failure) */
	unsigned backoff_ms;
	uint64_t progress_ms; /* last successful upload */
	bool draining, stop;
	volatile int abort;  /* the uploaders' cancel flag: in-flight calls end */
	uint64_t lost_async; /* bytes closed without waiting that were never stored */
	char *pool[WQ_POOL]; /* free DFS_WBUF_MAX buffers */
	int npool;
	uint64_t pool_used_ms;
	pthread_t threads[WQ_THREADS];
	int nthreads;
};

static uint64_t fid_hash(fuse_ino_t id)
{
	uint64_t v = id;

	v ^= v >> 33;
	v *= 0xc4ceb9fe1a85ec53ull;
	v ^= v >> 33;
	return v;
}

static bool retrying(struct dfs *d)
{
	return d->async_close || d->wq->draining;
}

/* A refusal by the agent: final, so the bytes go and the error is reported once.  Anything
 * else (a lost connection, a timeout) may succeed when repeated (an offset write can be). */
bool wq_refused(int r)
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

/* The link, not the agent: worth retrying for as long as the agent may come back. */
static bool transport(int r)
{
	switch (-r) {
	case ETIMEDOUT:
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
	case EAGAIN:
		return true;
	default:
		return false;
	}
}

static void timed_wait(pthread_cond_t *c, pthread_mutex_t *m, uint64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(c, m, &ts);
}

/* a is a state of the file at least as new as b.  ctime ticks coarsely (a jiffy), so replies
 * of parallel uploads often share one; between them the size only grows (a truncation waits
 * for the queue), so the bigger one is the later. */
static bool not_older(const struct dbx_attr *a, const struct dbx_attr *b)
{
	int c = dfs_ts_cmp(&a->ctime, &b->ctime);

	return a->ino != b->ino || c > 0 || (c == 0 && a->size >= b->size);
}

/* ---- files and jobs (wq.lock) ---------------------------------------------------------- */

static struct wfile *file_find(struct wq *q, fuse_ino_t id)
{
	uint64_t h = fid_hash(id);

	for (struct hnode *n = htab_first(&q->files, h); n; n = htab_next(n, h)) {
		struct wfile *f = container_of(n, struct wfile, h);

		if (f->nodeid == id)
			return f;
	}
	return NULL;
}

static struct wfile *file_get(struct wq *q, fuse_ino_t id)
{
	struct wfile *f = file_find(q, id);

	if (f)
		return f;
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->nodeid = id;
	htab_add(&q->files, &f->h, fid_hash(id));
	f->next = q->all;
	if (q->all)
		q->all->prev = f;
	q->all = f;
	return f;
}

/* Frees f once nothing refers to it any more. */
static void file_put(struct wq *q, struct wfile *f)
{
	if (f->head || f->err || f->waiters)
		return;
	htab_del(&q->files, &f->h);
	if (f->prev)
		f->prev->next = f->next;
	else
		q->all = f->next;
	if (f->next)
		f->next->prev = f->prev;
	free(f->path);
	free(f);
}

static void queue_add(struct wq *q, struct wjob *j, bool front)
{
	j->queued = true;
	if (front) {
		j->qprev = NULL;
		j->qnext = q->qhead;
		if (q->qhead)
			q->qhead->qprev = j;
		else
			q->qtail = j;
		q->qhead = j;
	} else {
		j->qnext = NULL;
		j->qprev = q->qtail;
		if (q->qtail)
			q->qtail->qnext = j;
		else
			q->qhead = j;
		q->qtail = j;
	}
}

static void queue_del(struct wq *q, struct wjob *j)
{
	if (j->qprev)
		j->qprev->qnext = j->qnext;
	else
		q->qhead = j->qnext;
	if (j->qnext)
		j->qnext->qprev = j->qprev;
	else
		q->qtail = j->qprev;
	j->qprev = j->qnext = NULL;
	j->queued = false;
}

static uint64_t job_cost(const struct wjob *j)
{
	return j->len + WQ_JOB_COST;
}

/* Removes a job that is neither queued nor running, and frees it. */
static void job_free(struct dfs *d, struct wjob *j)
{
	struct wq *q = d->wq;
	struct wfile *f = j->f;

	if (j->fprev)
		j->fprev->fnext = j->fnext;
	else
		f->head = j->fnext;
	if (j->fnext)
		j->fnext->fprev = j->fprev;
	else
		f->tail = j->fprev;
	f->njobs--;
	q->bytes -= job_cost(j);
	atomic_store(&d->st.wq_bytes, q->bytes);
	if (j->buf && j->cap == DFS_WBUF_MAX && q->npool < WQ_POOL) {
		q->pool[q->npool++] = j->buf;
		q->pool_used_ms = now_ms();
	} else {
		free(j->buf);
	}
	free(j);
}

static bool overlaps(const struct wjob *a, const struct wjob *b)
{
	if (a->to_set || b->to_set)
		return true;
	return a->off < b->off + b->len && b->off < a->off + a->len;
}

/* The first queued job that may be sent now: its file is not stalled nor at its limit, and no
 * earlier pending job of its file overlaps it. */
static struct wjob *pick(struct wq *q)
{
	for (struct wjob *j = q->qhead; j; j = j->qnext) {
		struct wfile *f = j->f;
		bool ok = !f->stalled && f->running < WQ_FILE_RUNNING;

		for (struct wjob *k = f->head; ok && k != j; k = k->fnext)
			if (overlaps(k, j))
				ok = false;
		if (ok)
			return j;
	}
	return NULL;
}

/* ---- uploaders ------------------------------------------------------------------------- */

/* Records the reply of an upload in the mirror, unless it already holds a newer state of the
 * file (the reply of a later parallel job, or its event). */
static void mirror_note(struct dfs *d, const char *path, const struct dbx_attr *a)
{
	struct ment *e;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (!e || not_older(a, &e->attr)) {
		e = mirror_set(&d->mirror, path, a, NULL);
		if (e) {
			e->seq = reply_seq();
			e->own = true;
			e->own_gen++;
		}
	}
	pthread_mutex_unlock(&d->mirror.lock);
}

/* chmod, chown and utimens of an attribute job, in that order (as setattr does them). */
static int send_attr(struct dfs *d, const struct wjob *j, const char *path, struct dbx_attr *a)
{
	int r = 0;

	if (j->to_set & FUSE_SET_ATTR_MODE) {
		STAT_INC(d, remote_calls);
		r = dbx_fs_chmod(d->client, path, j->mode & 07777, a);
	}
	if (r == 0 && (j->to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		STAT_INC(d, remote_calls);
		r = dbx_fs_chown(d->client, path,
				 (j->to_set & FUSE_SET_ATTR_UID) ? j->uid : (uid_t)-1,
				 (j->to_set & FUSE_SET_ATTR_GID) ? j->gid : (gid_t)-1, a);
	}
	if (r == 0 && (j->to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		STAT_INC(d, remote_calls);
		r = dbx_fs_utimens(d->client, path, j->tv, a);
	}
	return r;
}

static int upload(struct dfs *d, const struct wjob *j, char **pathp, uint64_t rino)
{
	struct dbx_write_opts w = {.offset = j->off, .no_create = true, .if_ino = rino};
	const struct dbx_reply_meta *meta;
	struct dbx_attr a;
	char *again;
	int r;

	for (;;) {
		if (!d->hard)
			dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
		if (j->to_set) {
			r = send_attr(d, j, *pathp, &a);
		} else {
			STAT_INC(d, remote_calls);
			r = dbx_fs_pwrite(d->client, *pathp, j->buf, j->len, &w, &a);
		}
		dbx_thread_set_deadline(0);
		meta = dbx_last_reply_meta();
		if (meta && meta->valid && meta->seq > atomic_load(&d->st.agent_seq))
			atomic_store(&d->st.agent_seq, meta->seq);
		if (r != -ENOENT)
			break;
		/* Renamed while the job waited: follow the file to its new name. */
		if (itab_path(d, j->f->nodeid, &again) < 0 || !strcmp(again, *pathp)) {
			free(again);
			break;
		}
		free(*pathp);
		*pathp = again;
	}
	if (r < 0) {
		STAT_INC(d, remote_errors);
		dfs_log(DFS_DEBUG, "%s %s (%zu bytes at %llu): %s", j->to_set ? "setattr" : "write",
			*pathp, j->len, (unsigned long long)j->off, dbx_error_last());
		return r;
	}
	STAT_ADD(d, bytes_uploaded, j->len);
	mirror_note(d, *pathp, &a);
	if (j->to_set)
		notify_nodeid(d, NQ_INODE_ATTR, j->f->nodeid, NULL); /* drop the local answer */
	pthread_mutex_lock(&d->wq->lock);
	if (!j->f->have_last || not_older(&a, &j->f->last)) {
		j->f->last = a;
		j->f->have_last = true;
	}
	pthread_mutex_unlock(&d->wq->lock);
	return 0;
}

/* A job's bytes are gone for good (caller holds wq.lock). */
static void job_lost(struct dfs *d, struct wjob *j, const char *path, int r)
{
	struct wq *q = d->wq;
	struct wfile *f = j->f;
	int e = dfs_wire_errno(d, r);

	if (!f->err)
		f->err = e;
	f->kc_stale = true;
	STAT_INC(d, wq_failed);
	STAT_ADD(d, wq_lost_bytes, j->len);
	if (j->to_set) {
		dfs_log(DFS_WARN, "setattr of %s failed (queued after its writes): %s", path,
			strerror(-e));
		notify_nodeid(d, NQ_INODE_ATTR, f->nodeid, NULL);
	} else if (j->async || d->async_close || q->draining) {
		q->lost_async += j->len;
		dfs_log(DFS_WARN, "write of %s failed (%zu bytes at offset %llu): %s", path, j->len,
			(unsigned long long)j->off, strerror(-e));
	}
	job_free(d, j);
}

/* The result of sending j (caller holds wq.lock). */
static void finish(struct dfs *d, struct wjob *j, const char *path, int r)
{
	struct wq *q = d->wq;
	struct wfile *f = j->f;
	uint64_t now = now_ms();

	f->running--;
	if (r == 0) {
		q->progress_ms = now;
		q->backoff_ms = WQ_BACKOFF_MIN;
		q->retry_at = 0;
		job_free(d, j);
	} else if (wq_refused(r) || q->stop) {
		if (q->stop)
			queue_add(q, j, true); /* counted as lost by wq_stop */
		else
			job_lost(d, j, path, r);
	} else if (retrying(d)) {
		bool give_up = (!d->hard || !transport(r)) && j->fail_since &&
			       now - j->fail_since >= (uint64_t)d->op_timeout_ms * WQ_GIVE_UP;

		if (!j->fail_since)
			j->fail_since = now;
		if (give_up) {
			job_lost(d, j, path, r);
		} else {
			STAT_INC(d, wq_retries);
			queue_add(q, j, true);
			q->retry_at = now + q->backoff_ms;
			q->backoff_ms = q->backoff_ms * 2 > WQ_BACKOFF_MAX ? WQ_BACKOFF_MAX
									   : q->backoff_ms * 2;
		}
	} else {
		/* Kept for the next attempt; the file's other jobs wait with it. */
		queue_add(q, j, true);
		f->stalled = true;
		f->terr = r;
	}
	file_put(q, f);
	pthread_cond_broadcast(&q->done);
	pthread_cond_broadcast(&q->work);
}

static void *wq_main(void *arg)
{
	struct dfs *d = arg;
	struct wq *q = d->wq;

	dbx_thread_set_cancel_flag(&q->abort);
	pthread_mutex_lock(&q->lock);
	for (;;) {
		uint64_t now = now_ms();
		struct wjob *j = NULL;
		char *path = NULL;
		int r;

		if (q->stop)
			break;
		if (q->retry_at > now) {
			timed_wait(&q->work, &q->lock, q->retry_at - now);
			continue;
		}
		j = pick(q);
		if (!j && q->npool && now - q->pool_used_ms >= WQ_POOL_IDLE_MS) {
			while (q->npool) /* idle: the pool's memory goes back */
				free(q->pool[--q->npool]);
			continue;
		}
		if (!j) {
			if (q->npool)
				timed_wait(&q->work, &q->lock, WQ_POOL_IDLE_MS);
			else
				pthread_cond_wait(&q->work, &q->lock);
			continue;
		}
		queue_del(q, j);
		j->f->running++;
		path = j->f->path ? strdup(j->f->path) : NULL;
		uint64_t rino = j->f->rino;
		fuse_ino_t id = j->f->nodeid;

		pthread_mutex_unlock(&q->lock);

		char *cur;

		/* Removed or replaced meanwhile: the bytes have no file left to go to.  A node the
		 * kernel has forgotten since (a closed file it no longer caches) keeps the last
		 * path it had; the write's ino condition refuses it if that is not the file now. */
		r = itab_path(d, id, &cur);
		if (r == -ESTALE && !itab_get(d, id))
			r = 0;
		if (cur) {
			free(path);
			path = cur;
		}
		if (r == 0)
			r = path ? upload(d, j, &path, rino) : -ENOMEM;
		pthread_mutex_lock(&q->lock);
		finish(d, j, path ? path : "?", r);
		free(path);
	}
	pthread_mutex_unlock(&q->lock);
	dbx_thread_set_cancel_flag(NULL);
	return NULL;
}

/* ---- writers and waiters ---------------------------------------------------------------- */

static bool session_over(struct dfs *d)
{
	return d->se && fuse_session_exited(d->se);
}

char *wq_buf(struct dfs *d)
{
	struct wq *q = d->wq;
	char *b = NULL;

	pthread_mutex_lock(&q->lock);
	if (q->npool) {
		b = q->pool[--q->npool];
		q->pool_used_ms = now_ms();
	}
	pthread_mutex_unlock(&q->lock);
	return b ? b : malloc(DFS_WBUF_MAX);
}

int wq_submit(struct dfs *d, struct dfs_inode *i, const char *path, struct wbuf *wb, unsigned flags,
	      const volatile int *cancel)
{
	struct wq *q = d->wq;
	uint64_t start = now_ms(), cost = wb->len + WQ_JOB_COST;
	struct wfile *f;
	struct wjob *j;
	bool kc_sync;
	char *p;
	int r = 0;

	if (!wb->len)
		return 0;
	pthread_mutex_lock(&i->lock);
	kc_sync = i->kc_ver[0] && !strcmp(i->kc_ver, i->attr.ver);
	pthread_mutex_unlock(&i->lock);
	j = calloc(1, sizeof(*j));
	p = strdup(path);
	if (!j || !p) {
		free(j);
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_lock(&q->lock);
	f = file_get(q, i->nodeid);
	if (!f) {
		r = -ENOMEM;
		goto unlock;
	}
	f->waiters++;
	/* Room: the file below its job limit and the queue below its cap (one job always fits). */
	while (!(flags & WQ_FORCE)) {
		uint64_t now = now_ms();

		if (f->stalled && !retrying(d)) {
			r = dfs_wire_errno(d, f->terr);
			break;
		}
		if (f->njobs < WQ_FILE_JOBS && (!q->bytes || q->bytes + cost <= q->cap))
			break;
		if (cancel && *cancel) {
			r = -EINTR;
			break;
		}
		if (q->stop || session_over(d) ||
		    (!d->hard && now - (q->progress_ms > start ? q->progress_ms : start) >
					 (uint64_t)d->op_timeout_ms)) {
			r = -EIO;
			break;
		}
		timed_wait(&q->done, &q->lock, WQ_SLICE_MS);
	}
	f->waiters--;
	if (r < 0) {
		file_put(q, f);
		goto unlock;
	}
	/* A buffer much bigger than its run is trimmed: queued memory is what the cap bounds. */
	if (wb->cap > 2 * wb->len && wb->cap > 4096) {
		char *nb = realloc(wb->buf, wb->len);

		if (nb) {
			wb->buf = nb;
			wb->cap = wb->len;
		}
	}
	j->f = f;
	j->buf = wb->buf;
	j->cap = wb->cap;
	j->len = wb->len;
	j->off = wb->off;
	j->seq = f->next_seq++;
	j->async = flags & WQ_ASYNC;
	j->fprev = f->tail;
	if (f->tail)
		f->tail->fnext = j;
	else
		f->head = j;
	f->tail = j;
	f->njobs++;
	if (!kc_sync)
		f->kc_stale = true;
	free(f->path);
	f->path = p;
	f->rino = i->rino;
	p = NULL;
	queue_add(q, j, false);
	j = NULL;
	q->bytes += cost;
	atomic_store(&d->st.wq_bytes, q->bytes);
	if (q->bytes > atomic_load(&d->st.wq_bytes_max))
		atomic_store(&d->st.wq_bytes_max, q->bytes);
	STAT_INC(d, wq_jobs);
	/* The next buffer: a run that filled one is likely to fill the next. */
	wb->hint = wb->len >= DFS_WBUF_MAX ? DFS_WBUF_MAX : 0;
	wb->buf = NULL;
	wb->len = wb->cap = 0;
	pthread_cond_signal(&q->work);
unlock:
	pthread_mutex_unlock(&q->lock);
	free(j);
	free(p);
	return r;
}

int wq_submit_attr(struct dfs *d, struct dfs_inode *i, const char *path, const struct stat *st,
		   int to_set, struct dbx_attr *ret)
{
	struct wq *q = d->wq;
	struct dbx_attr a;
	struct timespec now;
	struct ment *e;
	struct wfile *f;
	struct wjob *j;
	bool found = false;
	char *p;
	int r = 1;

	/* The state the queued data builds on: the mirror's (or the last known) attributes. */
	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e && e->attr.ino == i->rino) {
		a = e->attr;
		found = true;
	}
	pthread_mutex_unlock(&d->mirror.lock);
	if (!found) {
		pthread_mutex_lock(&i->lock);
		a = i->attr;
		pthread_mutex_unlock(&i->lock);
	}
	j = calloc(1, sizeof(*j));
	p = strdup(path);
	if (!j || !p) {
		free(j);
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_lock(&q->lock);
	f = file_find(q, i->nodeid);
	if (!f || !f->head || f->stalled) {
		r = 0; /* nothing to wait for (or a failure to report): the caller does it now */
		goto unlock;
	}
	/* What the queued jobs will make of it, in order.  Size: the end of the furthest queued
	 * run (a truncation waits for the queue, so the file only grows while runs are queued);
	 * a run's upload stamps mtime with its own time, approximated by now. */
	clock_gettime(CLOCK_REALTIME, &now);
	for (struct wjob *k = f->head; k; k = k->fnext) {
		if (!k->to_set) {
			if (k->off + k->len > a.size)
				a.size = k->off + k->len;
			a.mtime = now;
			continue;
		}
		if (k->to_set & FUSE_SET_ATTR_MODE)
			a.mode = (a.mode & S_IFMT) | (k->mode & 07777);
		if (k->to_set & FUSE_SET_ATTR_UID)
			a.uid = k->uid;
		if (k->to_set & FUSE_SET_ATTR_GID)
			a.gid = k->gid;
		if ((k->to_set & FUSE_SET_ATTR_ATIME) && k->tv[0].tv_nsec != UTIME_OMIT)
			a.atime = k->tv[0];
		if ((k->to_set & FUSE_SET_ATTR_MTIME) && k->tv[1].tv_nsec != UTIME_OMIT)
			a.mtime = k->tv[1];
	}
	a.blocks = (a.size + 511) / 512;
	if (to_set & FUSE_SET_ATTR_MODE)
		a.mode = (a.mode & S_IFMT) | (st->st_mode & 07777);
	if (to_set & FUSE_SET_ATTR_UID)
		a.uid = st->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		a.gid = st->st_gid;
	if (to_set & FUSE_SET_ATTR_ATIME)
		a.atime = st->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME)
		a.mtime = st->st_mtim;
	a.ctime = now;
	*ret = a;
	if (!to_set)
		goto unlock; /* nothing changes: only the answer */
	j->f = f;
	j->to_set = to_set;
	j->mode = st->st_mode;
	j->uid = st->st_uid;
	j->gid = st->st_gid;
	j->tv[0] = (to_set & FUSE_SET_ATTR_ATIME) ? st->st_atim : (struct timespec){0, UTIME_OMIT};
	j->tv[1] = (to_set & FUSE_SET_ATTR_MTIME) ? st->st_mtim : (struct timespec){0, UTIME_OMIT};
	j->seq = f->next_seq++;
	j->async = true;
	j->fprev = f->tail;
	f->tail->fnext = j;
	f->tail = j;
	f->njobs++;
	free(f->path);
	f->path = p;
	f->rino = i->rino;
	p = NULL;
	queue_add(q, j, false);
	j = NULL;
	q->bytes += WQ_JOB_COST;
	atomic_store(&d->st.wq_bytes, q->bytes);
	STAT_INC(d, wq_jobs);
	pthread_cond_signal(&q->work);
unlock:
	pthread_mutex_unlock(&q->lock);
	free(j);
	free(p);
	return r;
}

/* Waits until n files have no pending job older than their target seq.  Returns the first
 * error: a transport failure that stalled a file (EIO), the wait's own limits, or (consume)
 * a refusal not reported yet.  Caller holds wq.lock and a waiter count on each file. */
static int wait_files(struct dfs *d, struct wfile **v, const uint64_t *target, size_t n,
		      unsigned flags, const volatile int *cancel)
{
	struct wq *q = d->wq;
	uint64_t start = now_ms();
	int r = 0;

	for (size_t k = 0; k < n; k++) {
		if (v[k]->stalled) {
			v[k]->stalled = false; /* a wait is the retry */
			pthread_cond_broadcast(&q->work);
		}
	}
	for (;;) {
		bool pending = false;
		uint64_t now = now_ms();

		for (size_t k = 0; k < n && !r; k++) {
			struct wfile *f = v[k];

			if (!f->head || f->head->seq >= target[k])
				continue;
			if (f->stalled)
				r = dfs_wire_errno(d, f->terr);
			pending = true;
		}
		if (r || !pending)
			break;
		if (cancel && *cancel) {
			r = -EINTR;
			break;
		}
		/* The session ending (unmount, SIGTERM) ends the wait: the loop joins the workers
		 * before the queue is drained. */
		if (q->stop || (!q->draining && session_over(d)) ||
		    (!d->hard && now - (q->progress_ms > start ? q->progress_ms : start) >
					 (uint64_t)d->op_timeout_ms + 1000)) {
			r = -EIO;
			break;
		}
		timed_wait(&q->done, &q->lock, WQ_SLICE_MS);
	}
	for (size_t k = 0; k < n && !r && (flags & WQ_CONSUME); k++) {
		if (v[k]->err) {
			r = v[k]->err;
			v[k]->err = 0;
		}
	}
	return r;
}

int wq_wait(struct dfs *d, struct dfs_inode *i, unsigned flags, const volatile int *cancel)
{
	struct wq *q = d->wq;
	struct dbx_attr last;
	bool apply = false, kc = false;
	struct wfile *f;
	uint64_t target;
	int r;

	pthread_mutex_lock(&q->lock);
	f = file_find(q, i->nodeid);
	if (!f) {
		pthread_mutex_unlock(&q->lock);
		return 0;
	}
	f->waiters++;
	target = f->next_seq;
	r = wait_files(d, &f, &target, 1, flags, cancel);
	if (!f->head && f->have_last) {
		last = f->last;
		apply = true;
		kc = !f->kc_stale;
		f->have_last = f->kc_stale = false;
	}
	f->waiters--;
	file_put(q, f);
	pthread_mutex_unlock(&q->lock);
	if (apply) {
		/* Everything written is stored: the kernel's pages (which hold it) stay valid for
		 * the new version if they were valid before. */
		pthread_mutex_lock(&i->lock);
		if (last.ino == i->attr.ino && dfs_ts_cmp(&last.ctime, &i->attr.ctime) >= 0) {
			if (kc && i->kc_ver[0] && !strcmp(i->kc_ver, i->attr.ver))
				memcpy(i->kc_ver, last.ver, sizeof(i->kc_ver));
			i->attr = last;
		}
		pthread_mutex_unlock(&i->lock);
	}
	return r;
}

/* path itself, or (prefix) anything below it */
static bool path_match(const char *p, const char *path, bool prefix)
{
	size_t n = strlen(path);

	if (!p)
		return false;
	if (!strcmp(p, path))
		return true;
	return prefix && (!n || (!strncmp(p, path, n) && p[n] == '/'));
}

int wq_wait_path(struct dfs *d, const char *path, bool prefix)
{
	struct wq *q = d->wq;
	struct wfile **v = NULL;
	uint64_t *target = NULL;
	size_t n = 0, cap = 0;
	int r = 0;

	pthread_mutex_lock(&q->lock);
	for (struct wfile *f = q->all; f; f = f->next) {
		if (!f->head || !path_match(f->path, path, prefix))
			continue;
		if (n == cap) {
			size_t nc = cap ? 2 * cap : 8;
			struct wfile **nv = realloc(v, nc * sizeof(*v));
			uint64_t *nt = nv ? realloc(target, nc * sizeof(*target)) : NULL;

			if (nv)
				v = nv;
			if (!nt) {
				r = -ENOMEM;
				break;
			}
			target = nt;
			cap = nc;
		}
		v[n] = f;
		target[n++] = f->next_seq;
		f->waiters++;
	}
	if (r == 0 && n)
		r = wait_files(d, v, target, n, 0, NULL);
	for (size_t k = 0; k < n; k++) {
		v[k]->waiters--;
		file_put(q, v[k]);
	}
	pthread_mutex_unlock(&q->lock);
	free(v);
	free(target);
	return r;
}

int wq_error(struct dfs *d, struct dfs_inode *i, bool stalled_too)
{
	struct wq *q = d->wq;
	struct wfile *f;
	int r = 0;

	pthread_mutex_lock(&q->lock);
	f = file_find(q, i->nodeid);
	if (f && f->err) {
		r = f->err;
		f->err = 0;
		file_put(q, f);
	} else if (f && stalled_too && f->stalled) {
		r = 1;
	}
	pthread_mutex_unlock(&q->lock);
	return r;
}

uint64_t wq_drop(struct dfs *d, struct dfs_inode *i)
{
	struct wq *q = d->wq;
	struct wfile *f;
	uint64_t lost = 0;

	pthread_mutex_lock(&q->lock);
	f = file_find(q, i->nodeid);
	if (f && f->stalled) {
		struct wjob *j = f->head, *next;

		/* A stalled file sends nothing new; jobs still in flight finish by themselves. */
		for (; j; j = next) {
			next = j->fnext;
			if (!j->queued)
				continue;
			lost += j->len;
			queue_del(q, j);
			job_free(d, j);
		}
		f->stalled = false;
		file_put(q, f);
	}
	pthread_mutex_unlock(&q->lock);
	return lost;
}

/* ---- start / stop ----------------------------------------------------------------------- */

int wq_start(struct dfs *d)
{
	struct wq *q = calloc(1, sizeof(*q));
	pthread_condattr_t ca;
	sigset_t all, old;

	if (!q || htab_init(&q->files) < 0) {
		free(q);
		return -ENOMEM;
	}
	pthread_mutex_init(&q->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->work, &ca);
	pthread_cond_init(&q->done, &ca);
	pthread_condattr_destroy(&ca);
	q->cap = d->async_close ? d->async_max : WQ_CAP;
	q->backoff_ms = WQ_BACKOFF_MIN;
	d->wq = q;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int k = 0; k < WQ_THREADS; k++)
		if (pthread_create(&q->threads[q->nthreads], NULL, wq_main, d) == 0)
			q->nthreads++;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!q->nthreads) {
		d->wq = NULL;
		pthread_cond_destroy(&q->work);
		pthread_cond_destroy(&q->done);
		pthread_mutex_destroy(&q->lock);
		htab_fini(&q->files);
		free(q);
		return -EAGAIN;
	}
	return 0;
}

/* What open files still buffer goes to the queue too (the session is over: no request can
 * reach an inode any more, and none is forgotten). */
static void submit_buffers(struct dfs *d)
{
	struct itab *t = &d->itab;
	struct dfs_inode **v;
	size_t n = 0;

	pthread_mutex_lock(&t->lock);
	v = calloc(t->n + 1, sizeof(*v));
	for (size_t b = 0; v && b < t->by_id.nb; b++)
		for (struct hnode *h = t->by_id.b[b]; h && n < t->n + 1; h = h->next)
			v[n++] = container_of(h, struct dfs_inode, h_id);
	pthread_mutex_unlock(&t->lock);
	for (size_t k = 0; k < n; k++) {
		struct dfs_inode *i = v[k];
		char *path;

		pthread_mutex_lock(&i->wlock);
		if (i->wb.len) {
			int r = itab_path(d, i->nodeid, &path);

			if (r == 0)
				r = wq_submit(d, i, path, &i->wb, WQ_FORCE, NULL);
			if (r < 0) {
				free(path);
				path = itab_last_path(d, i->nodeid);
				dfs_log(DFS_ERR, "%s: %zu buffered bytes not stored: %s",
					path ? path : "?", i->wb.len, strerror(-r));
			}
			free(path);
		}
		pthread_mutex_unlock(&i->wlock);
	}
	free(v);
}

int wq_stop(struct dfs *d)
{
	struct wq *q = d->wq;
	uint64_t deadline, lost = 0;
	int ret;

	if (!q)
		return 0;
	submit_buffers(d);
	pthread_mutex_lock(&q->lock);
	q->draining = true;
	for (struct wfile *f = q->all; f; f = f->next)
		f->stalled = false;
	pthread_cond_broadcast(&q->work);
	deadline = now_ms() + (uint64_t)d->op_timeout_ms * WQ_GIVE_UP;
	if (q->bytes)
		dfs_log(DFS_INFO, "storing %llu queued bytes before exit",
			(unsigned long long)q->bytes);
	while (q->bytes && now_ms() < deadline)
		timed_wait(&q->done, &q->lock, WQ_SLICE_MS);
	q->stop = true;
	q->abort = 1;
	pthread_cond_broadcast(&q->work);
	pthread_mutex_unlock(&q->lock);
	for (int k = 0; k < q->nthreads; k++)
		pthread_join(q->threads[k], NULL);

	/* Whatever is left could not be stored. */
	while (q->all) {
		struct wfile *f = q->all;
		uint64_t bytes = 0;

		while (f->head) {
			struct wjob *j = f->head;

			bytes += j->len;
			if (j->queued)
				queue_del(q, j);
			job_free(d, j);
		}
		if (bytes)
			dfs_log(DFS_ERR, "%s: %llu bytes could not be stored",
				f->path ? f->path : "?", (unsigned long long)bytes);
		lost += bytes;
		f->err = 0;
		f->waiters = 0;
		file_put(q, f);
	}
	STAT_ADD(d, wq_lost_bytes, lost);
	ret = lost || q->lost_async ? 1 : 0;
	if (q->lost_async)
		dfs_log(DFS_ERR,
			"%llu bytes of closed files were not stored (see the warnings above)",
			(unsigned long long)q->lost_async);
	while (q->npool)
		free(q->pool[--q->npool]);
	d->wq = NULL;
	htab_fini(&q->files);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->done);
	pthread_mutex_destroy(&q->lock);
	free(q);
	return ret;
}
