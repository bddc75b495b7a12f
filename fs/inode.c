/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The inode table: the kernel's node ids <-> remote identity (remote ino, current path).
 *
 * A node id is handed out once per remote inode (hard links share it) and never reused within
 * a mount; st_ino is always the remote ino, so it is stable across remounts.  nlookup mirrors
 * the kernel's lookup count: +1 per entry reply, -n per forget; at 0 the inode is freed.  An
 * inode whose remote object was removed stays (unhashed from by_rino, so a recycled remote ino
 * gets a new node) until the kernel forgets it.
 *
 * itab.lock protects the hashes, path and nlookup of every inode; inode.lock the rest.  Any
 * libfuse worker may call in; the notifier resolves paths here too.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t id_hash(uint64_t v)
{
	v ^= v >> 33;
	v *= 0xff51afd7ed558ccdull;
	v ^= v >> 33;
	return v;
}

int itab_init(struct itab *t)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	if (htab_init(&t->by_id) < 0 || htab_init(&t->by_rino) < 0 || htab_init(&t->by_path) < 0)
		return -ENOMEM;
	t->next_id = FUSE_ROOT_ID + 1;
	return 0;
}

static void unhash_path(struct itab *t, struct dfs_inode *i);

static void inode_free(struct dfs *d, struct dfs_inode *ino)
{
	if (ino->cache)
		atomic_fetch_sub(&d->cache_bytes, ino->cache_len);
	free(ino->cache);
	shadow_free(d, ino);
	ra_free(ino);
	free(ino->wb.buf);
	free(ino->path);
	pthread_mutex_destroy(&ino->lock);
	pthread_mutex_destroy(&ino->wlock);
	free(ino);
}

void itab_fini(struct dfs *d)
{
	struct itab *t = &d->itab;

	/* At unmount the kernel's counts drop implicitly: free what is left. */
	for (size_t b = 0; b < t->by_id.nb; b++) {
		while (t->by_id.b[b]) {
			struct dfs_inode *i = container_of(t->by_id.b[b], struct dfs_inode, h_id);

			htab_del(&t->by_id, &i->h_id);
			if (i->rino_hashed)
				htab_del(&t->by_rino, &i->h_rino);
			unhash_path(t, i);
			inode_free(d, i);
		}
	}
	htab_fini(&t->by_id);
	htab_fini(&t->by_rino);
	htab_fini(&t->by_path);
	pthread_mutex_destroy(&t->lock);
}

static struct dfs_inode *find_id(struct itab *t, fuse_ino_t id)
{
	uint64_t h = id_hash(id);

	for (struct hnode *n = htab_first(&t->by_id, h); n; n = htab_next(n, h)) {
		struct dfs_inode *i = container_of(n, struct dfs_inode, h_id);

		if (i->nodeid == id)
			return i;
	}
	return NULL;
}

static struct dfs_inode *find_rino(struct itab *t, uint64_t rino)
{
	uint64_t h = id_hash(rino);

	for (struct hnode *n = htab_first(&t->by_rino, h); n; n = htab_next(n, h)) {
		struct dfs_inode *i = container_of(n, struct dfs_inode, h_rino);

		if (i->rino == rino)
			return i;
	}
	return NULL;
}

static struct dfs_inode *find_path(struct itab *t, const char *path)
{
	uint64_t h = hash_str(path, 7);

	for (struct hnode *n = htab_first(&t->by_path, h); n; n = htab_next(n, h)) {
		struct dfs_inode *i = container_of(n, struct dfs_inode, h_path);

		if (!strcmp(i->path, path))
			return i;
	}
	return NULL;
}

static void unhash_path(struct itab *t, struct dfs_inode *i)
{
	if (i->path_hashed) {
		htab_del(&t->by_path, &i->h_path);
		i->path_hashed = false;
	}
}

/* Moves i to path (taking ownership of p); whoever held that path before loses it. */
static void set_path(struct itab *t, struct dfs_inode *i, char *p)
{
	struct dfs_inode *other = find_path(t, p);

	if (other && other != i)
		unhash_path(t, other);
	unhash_path(t, i);
	free(i->path);
	i->path = p;
	htab_add(&t->by_path, &i->h_path, hash_str(p, 7));
	i->path_hashed = true;
}

static struct dfs_inode *inode_new(struct itab *t, fuse_ino_t id, const struct dbx_attr *a)
{
	struct dfs_inode *i = calloc(1, sizeof(*i));

	if (!i)
		return NULL;
	pthread_mutex_init(&i->lock, NULL);
	pthread_mutex_init(&i->wlock, NULL);
	i->nodeid = id;
	i->rino = a->ino;
	i->mode = a->mode & S_IFMT;
	i->attr = *a;
	htab_add(&t->by_id, &i->h_id, id_hash(id));
	htab_add(&t->by_rino, &i->h_rino, id_hash(a->ino));
	i->rino_hashed = true;
	t->n++;
	return i;
}

struct dfs_inode *itab_ref(struct dfs *d, const char *path, const struct dbx_attr *a)
{
	struct itab *t = &d->itab;
	struct dfs_inode *i;
	char *p = strdup(path);
	bool root = !*path;

	if (!p)
		return NULL;
	pthread_mutex_lock(&t->lock);
	i = root ? find_id(t, FUSE_ROOT_ID) : find_rino(t, a->ino);
	if (i && (i->mode != (a->mode & S_IFMT) || (root && i->rino != a->ino))) {
		/* The remote ino now names another object: give it a fresh node. */
		if (i->rino_hashed) {
			htab_del(&t->by_rino, &i->h_rino);
			i->rino_hashed = false;
		}
		if (!root)
			i = NULL;
	}
	if (!i) {
		i = inode_new(t, root ? FUSE_ROOT_ID : t->next_id++, a);
		if (!i) {
			pthread_mutex_unlock(&t->lock);
			free(p);
			return NULL;
		}
	}
	if (root && !i->rino_hashed) {
		i->rino = a->ino;
		htab_add(&t->by_rino, &i->h_rino, id_hash(a->ino));
		i->rino_hashed = true;
	}
	if (!i->path || strcmp(i->path, p))
		set_path(t, i, p);
	else
		free(p);
	i->nlookup++;
	pthread_mutex_unlock(&t->lock);
	inode_set_attr(i, a);
	return i;
}

struct dfs_inode *itab_get(struct dfs *d, fuse_ino_t nodeid)
{
	struct dfs_inode *i;

	pthread_mutex_lock(&d->itab.lock);
	i = find_id(&d->itab, nodeid);
	pthread_mutex_unlock(&d->itab.lock);
	return i;
}

void itab_forget(struct dfs *d, fuse_ino_t nodeid, uint64_t n)
{
	struct itab *t = &d->itab;
	struct dfs_inode *i;

	pthread_mutex_lock(&t->lock);
	i = find_id(t, nodeid);
	if (!i || nodeid == FUSE_ROOT_ID) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	i->nlookup = i->nlookup > n ? i->nlookup - n : 0;
	if (i->nlookup) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	htab_del(&t->by_id, &i->h_id);
	if (i->rino_hashed)
		htab_del(&t->by_rino, &i->h_rino);
	unhash_path(t, i);
	t->n--;
	pthread_mutex_unlock(&t->lock);
	inode_free(d, i);
}

int itab_path(struct dfs *d, fuse_ino_t nodeid, char **ret)
{
	struct dfs_inode *i;
	int r = -ESTALE;

	*ret = NULL;
	pthread_mutex_lock(&d->itab.lock);
	i = find_id(&d->itab, nodeid);
	if (i && i->path && (i->path_hashed || nodeid == FUSE_ROOT_ID)) {
		*ret = strdup(i->path);
		r = *ret ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&d->itab.lock);
	return r;
}

char *itab_last_path(struct dfs *d, fuse_ino_t nodeid)
{
	struct dfs_inode *i;
	char *p = NULL;

	pthread_mutex_lock(&d->itab.lock);
	i = find_id(&d->itab, nodeid);
	if (i && i->path)
		p = strdup(i->path);
	pthread_mutex_unlock(&d->itab.lock);
	return p;
}

bool itab_handed_out(struct dfs *d, fuse_ino_t nodeid)
{
	struct dfs_inode *i;
	bool r;

	pthread_mutex_lock(&d->itab.lock);
	i = find_id(&d->itab, nodeid);
	r = i && i->nlookup > 0;
	pthread_mutex_unlock(&d->itab.lock);
	return r;
}

fuse_ino_t itab_nodeid_of(struct dfs *d, const char *path)
{
	struct dfs_inode *i;
	fuse_ino_t id = 0;

	if (!*path)
		return FUSE_ROOT_ID;
	pthread_mutex_lock(&d->itab.lock);
	i = find_path(&d->itab, path);
	if (i)
		id = i->nodeid;
	pthread_mutex_unlock(&d->itab.lock);
	return id;
}

/* If path is from or below it, returns the rewritten path (to + rest), else NULL. */
static char *rebase(const char *path, const char *from, const char *to)
{
	size_t fl = strlen(from);
	char *p;

	if (strncmp(path, from, fl) || (path[fl] && path[fl] != '/'))
		return NULL;
	if (asprintf(&p, "%s%s", to, path + fl) < 0)
		return NULL;
	return p;
}

void itab_rename(struct dfs *d, const char *from, const char *to, bool exchange)
{
	struct itab *t = &d->itab;
	struct dfs_inode **v = NULL;
	char **np = NULL;
	size_t n = 0;

	pthread_mutex_lock(&t->lock);
	/* Files only: they are the only nodes that move (the kernel holds no node below a name
	 * without holding the name's own), so no walk over every node. */
	struct dfs_inode *fi = find_path(t, from), *ti = exchange ? find_path(t, to) : NULL;

	if ((!fi || !S_ISDIR(fi->mode)) && (!ti || !S_ISDIR(ti->mode))) {
		char *pf = fi ? strdup(to) : NULL, *pt = ti ? strdup(from) : NULL;

		if ((!fi || pf) && (!ti || pt)) {
			if (fi)
				unhash_path(t, fi);
			if (ti)
				unhash_path(t, ti);
			if (fi)
				set_path(t, fi, pf);
			if (ti)
				set_path(t, ti, pt);
			pthread_mutex_unlock(&t->lock);
			return;
		}
		free(pf);
		free(pt);
	}
	v = calloc(t->n + 1, sizeof(*v));
	np = calloc(t->n + 1, sizeof(*np));
	if (!v || !np)
		goto out;
	/* Collect first, re-key after: the by_path buckets change under the walk otherwise. */
	for (size_t b = 0; b < t->by_id.nb; b++) {
		for (struct hnode *h = t->by_id.b[b]; h; h = h->next) {
			struct dfs_inode *i = container_of(h, struct dfs_inode, h_id);
			char *p;

			if (!i->path || !i->path_hashed)
				continue;
			p = rebase(i->path, from, to);
			if (!p && exchange)
				p = rebase(i->path, to, from);
			if (p && n < t->n + 1) {
				v[n] = i;
				np[n++] = p;
			} else {
				free(p);
			}
		}
	}
	for (size_t k = 0; k < n; k++)
		unhash_path(t, v[k]);
	for (size_t k = 0; k < n; k++) {
		set_path(t, v[k], np[k]);
		np[k] = NULL;
	}
out:
	pthread_mutex_unlock(&t->lock);
	free(v);
	free(np);
}

void itab_unlinked(struct dfs *d, const char *path, const struct dbx_attr *last)
{
	itab_unlinked_but(d, path, last, 0);
}

void itab_unlinked_but(struct dfs *d, const char *path, const struct dbx_attr *last,
		       uint64_t keep_rino)
{
	struct itab *t = &d->itab;
	struct dfs_inode *i;

	pthread_mutex_lock(&t->lock);
	i = find_path(t, path);
	if (i && (!keep_rino || i->rino != keep_rino)) {
		unhash_path(t, i);
		/* The last link is gone: the remote may recycle the ino for a new object. */
		if (i->rino_hashed && (!last || last->nlink <= 1 || S_ISDIR(i->mode))) {
			htab_del(&t->by_rino, &i->h_rino);
			i->rino_hashed = false;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

void inode_set_attr(struct dfs_inode *ino, const struct dbx_attr *a)
{
	pthread_mutex_lock(&ino->lock);
	ino->attr = *a;
	pthread_mutex_unlock(&ino->lock);
}

void itab_repath(struct dfs *d, struct dfs_inode *i, const char *path)
{
	char *p = strdup(path);

	if (!p)
		return;
	pthread_mutex_lock(&d->itab.lock);
	set_path(&d->itab, i, p);
	pthread_mutex_unlock(&d->itab.lock);
}

bool itab_offer_content(struct dfs *d, const char *path, const struct dbx_attr *a, char *buf,
			size_t len)
{
	struct itab *t = &d->itab;
	struct dfs_inode *i;
	bool taken = false;

	if (len != a->size || !a->ver[0] ||
	    atomic_load(&d->cache_bytes) + len > DFS_CACHE_BUDGET)
		return false;
	pthread_mutex_lock(&t->lock);
	i = find_path(t, path);
	if (i && i->rino == a->ino && S_ISREG(i->mode)) {
		pthread_mutex_lock(&i->lock);
		/* Not over the bytes of a removed open file, nor beside local writes not sent. */
		if (!i->pinned && !shadow_live_locked(i)) {
			if (i->cache)
				atomic_fetch_sub(&d->cache_bytes, i->cache_len);
			free(i->cache);
			i->cache = buf;
			i->cache_len = len;
			memcpy(i->cache_ver, a->ver, sizeof(i->cache_ver));
			atomic_fetch_add(&d->cache_bytes, len);
			taken = true;
		}
		pthread_mutex_unlock(&i->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return taken;
}
