/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Small helpers: an intrusive chained hash table, path strings, attribute conversion.
 * Stateless; the tables are protected by their owners' locks.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int htab_init(struct htab *t)
{
	t->nb = 64;
	t->n = 0;
	t->b = calloc(t->nb, sizeof(*t->b));
	return t->b ? 0 : -ENOMEM;
}

void htab_fini(struct htab *t)
{
	free(t->b);
	t->b = NULL;
	t->nb = t->n = 0;
}

static void htab_grow(struct htab *t)
{
	size_t nb = t->nb * 2;
	struct hnode **b = calloc(nb, sizeof(*b));

	if (!b)
		return; /* keep the longer chains; still correct */
	for (size_t i = 0; i < t->nb; i++) {
		struct hnode *n = t->b[i], *next;

		for (; n; n = next) {
			next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

void htab_add(struct htab *t, struct hnode *n, uint64_t hash)
{
	if (t->n >= t->nb)
		htab_grow(t);
	n->hash = hash;
	n->next = t->b[hash & (t->nb - 1)];
	t->b[hash & (t->nb - 1)] = n;
	t->n++;
}

void htab_del(struct htab *t, struct hnode *n)
{
	struct hnode **pp = &t->b[n->hash & (t->nb - 1)];

	for (; *pp; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			n->next = NULL;
			t->n--;
			return;
		}
	}
}

struct hnode *htab_first(const struct htab *t, uint64_t hash)
{
	struct hnode *n = t->b[hash & (t->nb - 1)];

	while (n && n->hash != hash)
		n = n->next;
	return n;
}

struct hnode *htab_next(struct hnode *n, uint64_t hash)
{
	for (n = n->next; n && n->hash != hash; n = n->next)
		;
	return n;
}

uint64_t hash_str(const char *s, uint64_t seed)
{
	uint64_t h = 1469598103934665603ull ^ (seed * 0x9e3779b97f4a7c15ull);

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return h ^ (h >> 29);
}

char *path_join(const char *dir, const char *name)
{
	char *p;

	if (!*dir)
		return strdup(name);
	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

const char *path_base(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

char *path_dir(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? strndup(path, (size_t)(s - path)) : strdup("");
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool ts_eq(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

bool attr_same_content(const struct dbx_attr *a, const struct dbx_attr *b)
{
	return a->ino == b->ino && a->size == b->size && ts_eq(&a->mtime, &b->mtime) &&
	       strcmp(a->ver, b->ver) == 0;
}

/* atime is left out: reads inside the devbox must not cause invalidations. */
bool attr_same(const struct dbx_attr *a, const struct dbx_attr *b)
{
	return attr_same_content(a, b) && a->mode == b->mode && a->nlink == b->nlink &&
	       a->uid == b->uid && a->gid == b->gid && ts_eq(&a->ctime, &b->ctime) &&
	       a->blocks == b->blocks;
}

void attr_to_stat(const struct dbx_attr *a, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = a->ino;
	st->st_mode = a->mode;
	st->st_nlink = a->nlink;
	st->st_uid = a->uid;
	st->st_gid = a->gid;
	st->st_size = (off_t)a->size;
	st->st_blocks = (blkcnt_t)a->blocks;
	st->st_blksize = a->blksize ? a->blksize : 4096;
	st->st_rdev = a->rdev;
	st->st_atim = a->atime;
	st->st_mtim = a->mtime;
	st->st_ctim = a->ctime;
}

void handle_add(struct dfs *d, struct dfs_handle *h, void (*free_fn)(struct dfs_handle *))
{
	h->free = free_fn;
	pthread_mutex_lock(&d->handles_lock);
	h->prev = NULL;
	h->next = d->handles;
	if (d->handles)
		d->handles->prev = h;
	d->handles = h;
	pthread_mutex_unlock(&d->handles_lock);
}

void handle_del(struct dfs *d, struct dfs_handle *h)
{
	pthread_mutex_lock(&d->handles_lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		d->handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&d->handles_lock);
}

void handles_free(struct dfs *d)
{
	while (d->handles) {
		struct dfs_handle *h = d->handles;

		d->handles = h->next;
		h->free(h);
	}
}
