/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The notifiers: the only threads that call fuse_lowlevel_notify_*.
 *
 * fuse_lowlevel.h: an invalidation must not run in the path of a related operation, nor while
 * a lock such an operation needs is held.  So producers (the watch thread, and workers that
 * notice a race) only append to a queue; a notifier pops an item, resolves its path to a node
 * id under itab.lock, drops every lock, and then talks to the kernel.  The queues are
 * unbounded in items but each holds one path; a burst is drained in order.
 *
 * An entry invalidation waits in the kernel for its directory's lock, which a create or rename
 * there holds while its request is out (up to the timeout; with -o hard, for as long as the
 * agent is away).  So there are NQ_SHARDS queues, each with its thread, an item going to the
 * one of its directory (entries) or node (inodes): one busy directory holds up only its share.
 *
 * The kernel takes in a reply after the daemon wrote it, in the requesting task: an
 * invalidation can overtake it.  Two such races are closed by trying again a little later:
 * an inode invalidation the kernel refuses with ENOENT although a lookup reply handed the node
 * out (not instantiated yet; it would keep the reply's attributes for the full TTL), and a
 * readdir reply whose entries were already outdated (notify_nodeid_later: the kernel may fill
 * its directory cache from it after the invalidation that was meant to drop it).
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETRY_TRIES 6 /* after 1, 2, 4, 8, 16, 32 ms */

struct nitem {
	struct nitem *next;
	int kind;
	fuse_ino_t nodeid; /* 0: resolve path */
	char *s;           /* path (nodeid 0) or entry name */
	uint64_t due_ms;   /* later list: when to run */
	int tries;         /* ENOENT retries done */
};

#define NQ_SHARDS 4

struct nshard {
	struct dfs *d;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC */
	struct nitem *head, *tail;
	struct nitem *later; /* not before due_ms; unordered (a handful at a time) */
	bool stop;
	bool started;
	pthread_t thread;
};

struct nq {
	struct nshard s[NQ_SHARDS];
};

/* The item's directory (entries) or node (inodes) picks its queue. */
static struct nshard *shard_of(struct nq *q, const struct nitem *it)
{
	uint64_t h;

	if (it->nodeid) {
		h = it->nodeid * 0x9e3779b97f4a7c15ull;
	} else if (it->kind == NQ_ENTRY) {
		const char *slash = strrchr(it->s, '/');
		char *dir = slash ? strndup(it->s, (size_t)(slash - it->s)) : NULL;

		h = hash_str(dir ? dir : "", 13);
		free(dir);
	} else {
		h = hash_str(it->s, 13);
	}
	return &q->s[(h >> 32) % NQ_SHARDS];
}

static void push(struct dfs *d, struct nitem *it)
{
	struct nshard *q = d->nq ? shard_of(d->nq, it) : NULL;

	if (!q) {
		free(it->s);
		free(it);
		return;
	}
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

void notify_path(struct dfs *d, int kind, const char *path)
{
	struct nitem *it = calloc(1, sizeof(*it));

	if (!it || !(it->s = strdup(path))) {
		free(it);
		return;
	}
	it->kind = kind;
	push(d, it);
}

static void push_later(struct nshard *q, struct nitem *it, uint64_t delay_ms)
{
	it->due_ms = now_ms() + delay_ms;
	pthread_mutex_lock(&q->lock);
	it->next = q->later;
	q->later = it;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

void notify_nodeid_later(struct dfs *d, int kind, fuse_ino_t nodeid, unsigned delay_ms)
{
	struct nitem *it = d->nq ? calloc(1, sizeof(*it)) : NULL;

	if (!it)
		return;
	it->kind = kind;
	it->nodeid = nodeid;
	it->tries = RETRY_TRIES; /* no ENOENT retries on top */
	push_later(shard_of(d->nq, it), it, delay_ms);
}

void notify_nodeid(struct dfs *d, int kind, fuse_ino_t nodeid, const char *name)
{
	struct nitem *it = calloc(1, sizeof(*it));

	if (!it)
		return;
	it->kind = kind;
	it->nodeid = nodeid;
	if (name && !(it->s = strdup(name))) {
		free(it);
		return;
	}
	push(d, it);
}

/* true: it was queued again (and is no longer the caller's). */
static bool run(struct dfs *d, struct nshard *q, struct nitem *it)
{
	fuse_ino_t id = it->nodeid;
	const char *name = it->s;
	char *dir = NULL;
	int r = 0;

	if (!id) {
		if (it->kind == NQ_ENTRY) {
			if (!*it->s)
				return false;
			dir = path_dir(it->s);
			if (!dir)
				return false;
			id = itab_nodeid_of(d, dir);
			name = path_base(it->s);
		} else {
			id = itab_nodeid_of(d, it->s);
		}
	}
	free(dir);
	if (!id)
		return false; /* the kernel holds nothing for it */
	STAT_INC(d, invalidations);
	switch (it->kind) {
	case NQ_ENTRY:
		r = fuse_lowlevel_notify_inval_entry(d->se, id, name, strlen(name));
		break;
	case NQ_INODE_ATTR:
		r = fuse_lowlevel_notify_inval_inode(d->se, id, -1, 0);
		break;
	case NQ_INODE_DATA:
		r = fuse_lowlevel_notify_inval_inode(d->se, id, 0, 0);
		break;
	}
	if (d->debug)
		dfs_log(DFS_DEBUG, "invalidate %s %lu %s: %d",
			it->kind == NQ_ENTRY        ? "entry"
			: it->kind == NQ_INODE_ATTR ? "attr"
						    : "data",
			(unsigned long)id, it->kind == NQ_ENTRY ? name : "", r);
	else if (r < 0 && r != -ENOENT)
		dfs_log(DFS_DEBUG, "invalidate %lu %s: %s", (unsigned long)id, name ? name : "",
			strerror(-r));
	if (r == -ENOENT && it->kind != NQ_ENTRY && it->tries < RETRY_TRIES &&
	    itab_handed_out(d, id)) {
		/* A reply that handed the node out is still on its way into the kernel. */
		it->nodeid = id;
		free(it->s);
		it->s = NULL;
		it->next = NULL;
		push_later(q, it, 1u << it->tries++);
		return true;
	}
	return false;
}

static void *notify_main(void *arg)
{
	struct nshard *q = arg;
	struct dfs *d = q->d;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		uint64_t now = now_ms(), next = UINT64_MAX;

		/* Due later items join the queue's tail. */
		for (struct nitem **pp = &q->later; *pp;) {
			struct nitem *it = *pp;

			if (it->due_ms > now) {
				if (it->due_ms < next)
					next = it->due_ms;
				pp = &it->next;
				continue;
			}
			*pp = it->next;
			it->next = NULL;
			if (q->tail)
				q->tail->next = it;
			else
				q->head = it;
			q->tail = it;
		}
		if (!q->head && !q->stop) {
			if (next == UINT64_MAX) {
				pthread_cond_wait(&q->cond, &q->lock);
			} else {
				struct timespec ts = {.tv_sec = (time_t)(next / 1000),
						      .tv_nsec = (long)(next % 1000) * 1000000};

				pthread_cond_timedwait(&q->cond, &q->lock, &ts);
			}
			continue;
		}
		if (q->stop)
			break;
		struct nitem *it = q->head;

		q->head = it->next;
		if (!q->head)
			q->tail = NULL;
		pthread_mutex_unlock(&q->lock);
		if (!atomic_load(&d->mounted) || !run(d, q, it)) {
			free(it->s);
			free(it);
		}
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

static void shard_free(struct nshard *q)
{
	for (struct nitem **l = &q->head;; l = &q->later) {
		while (*l) {
			struct nitem *it = *l;

			*l = it->next;
			free(it->s);
			free(it);
		}
		if (l == &q->later)
			break;
	}
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
}

void notify_stop(struct dfs *d)
{
	struct nq *q = d->nq;

	if (!q)
		return;
	for (int k = 0; k < NQ_SHARDS; k++) {
		pthread_mutex_lock(&q->s[k].lock);
		q->s[k].stop = true;
		pthread_cond_signal(&q->s[k].cond);
		pthread_mutex_unlock(&q->s[k].lock);
	}
	for (int k = 0; k < NQ_SHARDS; k++)
		if (q->s[k].started)
			pthread_join(q->s[k].thread, NULL);
	d->nq = NULL;
	for (int k = 0; k < NQ_SHARDS; k++)
		shard_free(&q->s[k]);
	free(q);
}

int notify_start(struct dfs *d)
{
	struct nq *q = calloc(1, sizeof(*q));
	pthread_condattr_t ca;
	sigset_t all, old;
	int r = 0;

	if (!q)
		return -ENOMEM;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* now_ms()'s clock */
	for (int k = 0; k < NQ_SHARDS; k++) {
		q->s[k].d = d;
		pthread_mutex_init(&q->s[k].lock, NULL);
		pthread_cond_init(&q->s[k].cond, &ca);
	}
	pthread_condattr_destroy(&ca);
	d->nq = q;
	/* Signals belong to the main thread (libfuse's handlers wake the session loop). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int k = 0; k < NQ_SHARDS && r == 0; k++) {
		r = -pthread_create(&q->s[k].thread, NULL, notify_main, &q->s[k]);
		q->s[k].started = r == 0;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0)
		notify_stop(d);
	return r;
}
