/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Read-ahead for files too big to cache whole: when an open file is read sequentially, a small
 * pool of prefetch threads fetches the next chunks (RA_CHUNK each, a window that doubles up to
 * RA_WINDOW chunks) in parallel, so many ranged requests are in flight at once (the bandwidth-
 * delay product of a slow link, not one request per round trip).  Chunks live in per-inode
 * slots keyed by offset and content version; a read that finds its range there (or being
 * fetched) is answered from it.
 *
 * The same threads refresh, in the background, the attributes of directories our own changes
 * (or events) made stale, so the next stat of them is answered locally.
 *
 * Threads: libfuse workers call ra_read/ra_note/ra_release; the prefetch threads fill slots.
 * inode.lock protects the slots; a worker waits on inode.ra->cond for a chunk in flight.  An
 * inode's prefetches are only queued while it is open, and the last release waits for them,
 * so a prefetch never outlives its inode.
 */
#include "dfs.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RA_CHUNK   (1u << 20)
#define RA_SLOTS   16
#define RA_WINDOW  8
#define RA_THREADS 4
#define RA_BUDGET  (256ull << 20)

enum { SLOT_FREE, SLOT_BUSY, SLOT_READY };

struct ra_slot {
	uint64_t off;
	size_t len;
	char *data;
	char ver[DBX_VER_MAX];
	int state;
};

struct ra {
	struct ra_slot s[RA_SLOTS];
	int inflight;
	pthread_cond_t cond;
	uint64_t next;   /* where a sequential reader reads next */
	unsigned window; /* chunks to keep ahead */
};

struct ra_job {
	struct ra_job *next;
	struct dfs_inode *ino;
	char *path;
	uint64_t off;
	size_t len;
};

struct ra_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ra_job *head, *tail;
	bool stop;
	pthread_t threads[RA_THREADS];
	int nthreads;
	atomic_uint_fast64_t bytes;
};

static struct ra_slot *slot_at(struct ra *ra, uint64_t off, const char *ver)
{
	for (int k = 0; k < RA_SLOTS; k++) {
		struct ra_slot *s = &ra->s[k];

		if (s->state != SLOT_FREE && off >= s->off && off < s->off + s->len &&
		    (s->state == SLOT_BUSY || !strcmp(s->ver, ver)))
			return s;
	}
	return NULL;
}

static void slot_free(struct dfs *d, struct ra_slot *s)
{
	if (s->data)
		atomic_fetch_sub(&d->ra->bytes, s->len);
	free(s->data);
	s->data = NULL;
	s->state = SLOT_FREE;
}

/* Copies [off, off + size) (clamped at fsize) out of ready slots; waits for busy ones.
 * Returns the byte count, or -1 if some part is not (going to be) there. */
static ssize_t gather(struct dfs *d, struct dfs_inode *i, const char *ver, uint64_t fsize,
		      char *out, size_t size, uint64_t off)
{
	struct ra *ra = i->ra;
	size_t done = 0;

	if (off >= fsize)
		return 0;
	if (size > fsize - off)
		size = (size_t)(fsize - off);
	while (done < size) {
		struct ra_slot *s = slot_at(ra, off + done, ver);

		if (!s)
			return -1;
		if (s->state == SLOT_BUSY) {
			pthread_cond_wait(&ra->cond, &i->lock);
			continue; /* the slot may have been recycled: look again */
		}
		if (strcmp(s->ver, ver))
			return -1;
		size_t in = (size_t)(off + done - s->off);
		size_t n = s->len - in < size - done ? s->len - in : size - done;

		if (!n)
			return -1; /* a short chunk (file shrank): not ours to answer */
		memcpy(out + done, s->data + in, n);
		done += n;
	}
	return (ssize_t)done;
}

/* Queues prefetches ahead of a sequential reader at [off, off + size).  Caller holds i->lock. */
static void schedule(struct dfs *d, struct dfs_inode *i, const char *path, const char *ver,
		     uint64_t fsize, uint64_t off, size_t size)
{
	struct ra *ra = i->ra;
	struct ra_pool *p = d->ra;
	bool seq = off == ra->next || off == 0;

	ra->next = off + size;
	if (!seq) {
		ra->window = 0;
		return;
	}
	ra->window = ra->window ? (ra->window * 2 > RA_WINDOW ? RA_WINDOW : ra->window * 2) : 2;
	/* Drop chunks behind the reader or of another version. */
	for (int k = 0; k < RA_SLOTS; k++) {
		struct ra_slot *s = &ra->s[k];

		if (s->state == SLOT_READY && (s->off + s->len <= off || strcmp(s->ver, ver)))
			slot_free(d, s);
	}
	uint64_t start = (off + size) / RA_CHUNK * RA_CHUNK;

	for (unsigned c = 0; c < ra->window; c++) {
		uint64_t coff = start + (uint64_t)c * RA_CHUNK;
		struct ra_slot *s = NULL;
		struct ra_job *j;

		if (coff >= fsize)
			break;
		if (slot_at(ra, coff, ver))
			continue;
		if (atomic_load(&p->bytes) + RA_CHUNK > RA_BUDGET)
			break;
		for (int k = 0; k < RA_SLOTS && !s; k++)
			if (ra->s[k].state == SLOT_FREE)
				s = &ra->s[k];
		if (!s)
			break;
		j = calloc(1, sizeof(*j));
		if (!j || !(j->path = strdup(path))) {
			free(j);
			break;
		}
		s->state = SLOT_BUSY;
		s->off = coff;
		s->len = (size_t)(fsize - coff < RA_CHUNK ? fsize - coff : RA_CHUNK);
		memcpy(s->ver, ver, sizeof(s->ver));
		j->ino = i;
		j->off = coff;
		j->len = s->len;
		ra->inflight++;
		pthread_mutex_lock(&p->lock);
		if (p->tail)
			p->tail->next = j;
		else
			p->head = j;
		p->tail = j;
		pthread_cond_signal(&p->cond);
		pthread_mutex_unlock(&p->lock);
	}
}

static struct ra *ra_get(struct dfs_inode *i)
{
	if (!i->ra) {
		i->ra = calloc(1, sizeof(*i->ra));
		if (i->ra)
			pthread_cond_init(&i->ra->cond, NULL);
	}
	return i->ra;
}

bool ra_read(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const char *path, const char *ver,
	     uint64_t fsize, size_t size, uint64_t off)
{
	char *buf;
	ssize_t n = -1;

	if (!d->ra || !ver[0] || fsize <= DFS_SMALL_FILE)
		return false;
	buf = malloc(size ? size : 1);
	if (!buf)
		return false;
	pthread_mutex_lock(&i->lock);
	if (ra_get(i)) {
		n = gather(d, i, ver, fsize, buf, size, off);
		if (n >= 0)
			schedule(d, i, path, ver, fsize, off, size);
	}
	pthread_mutex_unlock(&i->lock);
	if (n >= 0) {
		STAT_ADD(d, bytes_read, (uint64_t)n);
		STAT_INC(d, read_cache_hits);
		fuse_reply_buf(req, buf, (size_t)n);
	}
	free(buf);
	return n >= 0;
}

void ra_note(struct dfs *d, struct dfs_inode *i, const char *path, const char *ver, uint64_t fsize,
	     size_t size, uint64_t off)
{
	if (!d->ra || !ver[0] || fsize <= DFS_SMALL_FILE)
		return;
	pthread_mutex_lock(&i->lock);
	if (ra_get(i))
		schedule(d, i, path, ver, fsize, off, size);
	pthread_mutex_unlock(&i->lock);
}

void ra_release(struct dfs *d, struct dfs_inode *i)
{
	pthread_mutex_lock(&i->lock);
	if (i->ra && !i->opens) {
		while (i->ra->inflight)
			pthread_cond_wait(&i->ra->cond, &i->lock);
		for (int k = 0; k < RA_SLOTS; k++)
			slot_free(d, &i->ra->s[k]);
	}
	pthread_mutex_unlock(&i->lock);
}

void ra_free(struct dfs_inode *i)
{
	if (!i->ra)
		return;
	for (int k = 0; k < RA_SLOTS; k++)
		free(i->ra->s[k].data);
	pthread_cond_destroy(&i->ra->cond);
	free(i->ra);
	i->ra = NULL;
}

void ra_refresh(struct dfs *d, const char *path)
{
	struct ra_pool *p = d->ra;
	struct ra_job *j;

	if (!p)
		return;
	j = calloc(1, sizeof(*j));
	if (!j || !(j->path = strdup(path))) {
		free(j);
		return;
	}
	pthread_mutex_lock(&p->lock);
	if (p->stop) {
		pthread_mutex_unlock(&p->lock);
		free(j->path);
		free(j);
		return;
	}
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static void run_refresh(struct dfs *d, struct ra_job *j)
{
	struct dbx_attr a, before = {0};
	struct ment *e;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, j->path);
	if (e) {
		e->refresh_queued = false;
		before = e->attr;
	}
	pthread_mutex_unlock(&d->mirror.lock);
	if (d->debug)
		dfs_log(DFS_DEBUG, "refresh %s%s", j->path, e ? "" : " (gone)");
	if (!e || !atomic_load(&d->healthy))
		return;
	if (!d->hard)
		dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
	int r = dfs_refresh_attr(d, j->path, &a);

	dbx_thread_set_deadline(0);
	/* A directory's kernel attrs were dropped by whoever made it stale; a file refreshed
	 * after an ambiguous event may have changed under the kernel's copy. */
	if (r == 0 && !S_ISDIR(a.mode) && !attr_same(&before, &a))
		notify_path(d, attr_same_content(&before, &a) ? NQ_INODE_ATTR : NQ_INODE_DATA,
			    j->path);
}

static void run_job(struct dfs *d, struct ra_job *j)
{
	struct dfs_inode *i = j->ino;
	char got[DBX_VER_MAX] = "";
	char *buf = malloc(j->len);
	ssize_t n = -ENOMEM;

	if (buf) {
		if (!d->hard)
			dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms);
		STAT_INC(d, remote_calls);
		n = dbx_fs_pread(d->client, j->path, buf, j->len, j->off, got, NULL);
		dbx_thread_set_deadline(0);
	}
	pthread_mutex_lock(&i->lock);
	for (int k = 0; k < RA_SLOTS; k++) {
		struct ra_slot *s = &i->ra->s[k];

		if (s->state != SLOT_BUSY || s->off != j->off)
			continue;
		if (n == (ssize_t)j->len && !strcmp(got, s->ver)) {
			s->data = buf;
			s->state = SLOT_READY;
			buf = NULL;
			atomic_fetch_add(&d->ra->bytes, s->len);
			STAT_ADD(d, bytes_fetched, s->len);
		} else {
			s->state = SLOT_FREE; /* failed or changed meanwhile: readers fetch it */
		}
		break;
	}
	i->ra->inflight--;
	pthread_cond_broadcast(&i->ra->cond);
	pthread_mutex_unlock(&i->lock);
	free(buf);
}

static void *ra_main(void *arg)
{
	struct dfs *d = arg;
	struct ra_pool *p = d->ra;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->head && !p->stop)
			pthread_cond_wait(&p->cond, &p->lock);
		if (!p->head)
			break; /* stopping, queue drained */
		struct ra_job *j = p->head;

		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);
		if (j->ino)
			run_job(d, j);
		else
			run_refresh(d, j);
		free(j->path);
		free(j);
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int ra_start(struct dfs *d)
{
	struct ra_pool *p = calloc(1, sizeof(*p));
	sigset_t all, old;

	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	d->ra = p;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int k = 0; k < RA_THREADS; k++)
		if (pthread_create(&p->threads[p->nthreads], NULL, ra_main, d) == 0)
			p->nthreads++;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!p->nthreads) {
		d->ra = NULL;
		pthread_cond_destroy(&p->cond);
		pthread_mutex_destroy(&p->lock);
		free(p);
		return -EAGAIN;
	}
	return 0;
}

void ra_stop(struct dfs *d)
{
	struct ra_pool *p = d->ra;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (int k = 0; k < p->nthreads; k++)
		pthread_join(p->threads[k], NULL);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
	d->ra = NULL;
}
