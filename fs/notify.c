/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The notifier: the only thread that calls fuse_lowlevel_notify_*.
 *
 * fuse_lowlevel.h: an invalidation must not run in the path of a related operation, nor while
 * a lock such an operation needs is held.  So producers (the watch thread, and workers that
 * notice a race) only append to this queue; the notifier pops an item, resolves its path to a
 * node id under itab.lock, drops every lock, and then talks to the kernel.  The queue is
 * unbounded in items but each holds one path; a burst is drained in order.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct nitem {
	struct nitem *next;
	int kind;
	fuse_ino_t nodeid; /* 0: resolve path */
	char *s;           /* path (nodeid 0) or entry name */
};

struct nq {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct nitem *head, *tail;
	bool stop;
	pthread_t thread;
};

static void push(struct dfs *d, struct nitem *it)
{
	struct nq *q = d->nq;

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

static void run(struct dfs *d, struct nitem *it)
{
	fuse_ino_t id = it->nodeid;
	const char *name = it->s;
	char *dir = NULL;
	int r = 0;

	if (!id) {
		if (it->kind == NQ_ENTRY) {
			if (!*it->s)
				return;
			dir = path_dir(it->s);
			if (!dir)
				return;
			id = itab_nodeid_of(d, dir);
			name = path_base(it->s);
		} else {
			id = itab_nodeid_of(d, it->s);
		}
	}
	free(dir);
	if (!id)
		return; /* the kernel holds nothing for it */
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
}

static void *notify_main(void *arg)
{
	struct dfs *d = arg;
	struct nq *q = d->nq;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (!q->head && !q->stop)
			pthread_cond_wait(&q->cond, &q->lock);
		if (q->stop)
			break;
		struct nitem *it = q->head;

		q->head = it->next;
		if (!q->head)
			q->tail = NULL;
		pthread_mutex_unlock(&q->lock);
		if (atomic_load(&d->mounted))
			run(d, it);
		free(it->s);
		free(it);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int notify_start(struct dfs *d)
{
	struct nq *q = calloc(1, sizeof(*q));
	sigset_t all, old;
	int r;

	if (!q)
		return -ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	d->nq = q;
	/* Signals belong to the main thread (libfuse's handlers wake the session loop). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = -pthread_create(&q->thread, NULL, notify_main, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0) {
		d->nq = NULL;
		pthread_cond_destroy(&q->cond);
		pthread_mutex_destroy(&q->lock);
		free(q);
	}
	return r;
}

void notify_stop(struct dfs *d)
{
	struct nq *q = d->nq;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL);
	d->nq = NULL;
	while (q->head) {
		struct nitem *it = q->head;

		q->head = it->next;
		free(it->s);
		free(it);
	}
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q);
}
