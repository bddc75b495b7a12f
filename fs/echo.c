/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Event echo (-o echo, DESIGN.md §2.9).  No FUSE notification produces an inotify event, so
 * local editors and file watchers would never hear of a change made inside the devbox.  With
 * echo on, each applied remote change is replayed through the mount by this module's thread:
 * O_CREAT / mkdir / symlink / mknod for new names, truncate to the same size for new content,
 * utimensat for attributes, unlink / rmdir, rename.  The kernel then raises the inotify events
 * itself.  The operation handlers recognise this thread's requests (fuse_req_ctx()->pid is its
 * tid) and answer them without any remote call, from the mirror: the change already happened.
 *
 * This is the one place the daemon touches its own mount, so it is opt-in.  Threads: the watch
 * thread queues items (echo_queue); the echo thread runs them one at a time; workers consult
 * the current item (echo_lookup) under echo.lock.  At shutdown the thread is told to stop and
 * joined after the session is gone (a syscall it is blocked in then fails).
 */
#include "dfs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

struct eitem {
	struct eitem *next;
	int kind;
	char *path, *to, *target;
	struct dbx_attr attr;
};

struct echo {
	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;
	struct eitem *head, *tail;
	size_t queued;
	bool stop;
	struct eitem *cur; /* being replayed */
	pthread_t thread;
	char *mnt;
	dev_t dev; /* the mount's device, checked at the first replay (0 before) */
};

#define FUSE_SUPER_MAGIC 0x65735546

#define ECHO_QUEUE_MAX 100000 /* beyond: drop (watchers get the next ones) */

static void item_free(struct eitem *it)
{
	if (!it)
		return;
	free(it->path);
	free(it->to);
	free(it->target);
	free(it);
}

void echo_queue(struct dfs *d, int kind, const char *path, const char *to, const struct dbx_attr *a,
		const char *target)
{
	struct echo *e = d->echo;
	struct eitem *it;

	if (!e)
		return;
	it = calloc(1, sizeof(*it));
	if (!it)
		return;
	it->kind = kind;
	it->attr = *a;
	it->path = strdup(path);
	it->to = to ? strdup(to) : NULL;
	it->target = target ? strdup(target) : NULL;
	if (!it->path || (to && !it->to) || (target && !it->target)) {
		item_free(it);
		return;
	}
	pthread_mutex_lock(&e->lock);
	if (e->queued >= ECHO_QUEUE_MAX || e->stop) {
		pthread_mutex_unlock(&e->lock);
		item_free(it);
		return;
	}
	if (e->tail)
		e->tail->next = it;
	else
		e->head = it;
	e->tail = it;
	e->queued++;
	pthread_cond_signal(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

bool echo_req(struct dfs *d, fuse_req_t req)
{
	pid_t tid = atomic_load(&d->echo_tid);

	return tid && fuse_req_ctx(req)->pid == tid;
}

int echo_lookup(struct dfs *d, const char *path, struct dbx_attr *ret)
{
	struct echo *e = d->echo;
	int r = 0;

	if (!e)
		return 0;
	pthread_mutex_lock(&e->lock);
	if (e->cur) {
		struct eitem *it = e->cur;
		bool is_from = !strcmp(it->path, path);
		bool is_to = it->to && !strcmp(it->to, path);

		switch (it->kind) {
		case EC_CREATE:
		case EC_MKDIR:
		case EC_SYMLINK:
		case EC_MKFIFO:
			if (is_from)
				r = -ENOENT; /* so the kernel creates it */
			break;
		case EC_UNLINK:
		case EC_RMDIR:
			if (is_from) {
				*ret = it->attr; /* what was there */
				r = 1;
			}
			break;
		case EC_RENAME:
			if (is_from) {
				*ret = it->attr;
				r = 1;
			} else if (is_to) {
				r = -ENOENT;
			}
			break;
		}
	}
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* A replay goes through a descriptor of the mount's root, checked to be our mount: once the
 * mount is gone (unmounted at exit, or by someone else) replays fail instead of reaching the
 * directory underneath.  Held only for the replay, so it never keeps the mount busy. */
static int root_fd(struct echo *e)
{
	struct statfs sf;
	struct stat st;
	int fd = open(e->mnt, O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || (e->dev && st.st_dev != e->dev) ||
	    (!e->dev && (fstatfs(fd, &sf) < 0 || sf.f_type != FUSE_SUPER_MAGIC))) {
		close(fd);
		return -ENOTCONN; /* not (or no longer) our mount */
	}
	e->dev = st.st_dev;
	return fd;
}

static void replay(struct dfs *d, struct echo *e, struct eitem *it)
{
	const char *p = it->path, *q = it->to;
	int r = 0, fd, dfd = root_fd(e);

	if (dfd < 0) {
		r = dfd;
		goto out;
	}
	switch (it->kind) {
	case EC_CREATE:
		fd = openat(dfd, p, O_CREAT | O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC,
			    it->attr.mode & 07777);
		if (fd < 0) {
			r = -errno;
		} else {
			/* It may have its content already: watchers expect a modification. */
			if (it->attr.size && ftruncate(fd, (off_t)it->attr.size) < 0)
				r = -errno;
			close(fd);
		}
		break;
	case EC_MKDIR:
		r = mkdirat(dfd, p, it->attr.mode & 07777) < 0 ? -errno : 0;
		break;
	case EC_SYMLINK:
		r = symlinkat(it->target ? it->target : "", dfd, p) < 0 ? -errno : 0;
		break;
	case EC_MKFIFO:
		r = mknodat(dfd, p, S_IFIFO | (it->attr.mode & 07777), 0) < 0 ? -errno : 0;
		break;
	case EC_MODIFY: {
		/* truncate(2) by a path through the descriptor: a setattr, as before, not an
		 * open (which watchers would see as a close-after-write). */
		char *tp = NULL;

		if (asprintf(&tp, "/proc/self/fd/%d/%s", dfd, p) < 0)
			r = -ENOMEM;
		else
			r = truncate(tp, (off_t)it->attr.size) < 0 ? -errno : 0;
		free(tp);
		break;
	}
	case EC_ATTRIB: {
		struct timespec tv[2] = {it->attr.atime, it->attr.mtime};

		r = utimensat(dfd, p, tv, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
		break;
	}
	case EC_UNLINK:
		r = unlinkat(dfd, p, 0) < 0 ? -errno : 0;
		break;
	case EC_RMDIR:
		r = unlinkat(dfd, p, AT_REMOVEDIR) < 0 ? -errno : 0;
		break;
	case EC_RENAME:
		r = q && renameat(dfd, p, dfd, q) < 0 ? -errno : 0;
		break;
	}
out:
	if (r < 0 && d->debug)
		dfs_log(DFS_DEBUG, "echo %d %s: %s", it->kind, it->path, strerror(-r));
	if (dfd >= 0) {
		close(dfd);
		STAT_INC(d, echoes_replayed);
	}
}

static void *echo_main(void *arg)
{
	struct dfs *d = arg;
	struct echo *e = d->echo;

	atomic_store(&d->echo_tid, gettid());
	pthread_mutex_lock(&e->lock);
	for (;;) {
		while (!e->head && !e->stop)
			pthread_cond_wait(&e->cond, &e->lock);
		if (e->stop)
			break;
		struct eitem *it = e->head;

		e->head = it->next;
		if (!e->head)
			e->tail = NULL;
		e->queued--;
		e->cur = it;
		pthread_mutex_unlock(&e->lock);
		if (atomic_load(&d->mounted))
			replay(d, e, it);
		pthread_mutex_lock(&e->lock);
		e->cur = NULL;
		item_free(it);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

int echo_start(struct dfs *d, const char *mnt)
{
	struct echo *e = calloc(1, sizeof(*e));
	sigset_t all, old;
	int r;

	if (!e || !(e->mnt = strdup(mnt))) {
		free(e);
		return -ENOMEM;
	}

	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	d->echo = e;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = -pthread_create(&e->thread, NULL, echo_main, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0) {
		d->echo = NULL;
		free(e->mnt);
		free(e);
	}
	return r;
}

void echo_stop(struct dfs *d)
{
	struct echo *e = d->echo;

	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	e->stop = true;
	pthread_cond_signal(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

void echo_join(struct dfs *d)
{
	struct echo *e = d->echo;

	if (!e)
		return;
	pthread_join(e->thread, NULL);
	atomic_store(&d->echo_tid, 0);
	d->echo = NULL;
	while (e->head) {
		struct eitem *it = e->head;

		e->head = it->next;
		item_free(it);
	}
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
	free(e->mnt);
	free(e);
}
