/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The metadata mirror: an in-memory tree of the workspace's entries (name, attr, symlink
 * target, "children complete" flag), loaded by one streamed `tree` call at mount and kept by
 * the event stream and by the replies of our own mutations.  Lookups, stats, listings and
 * ENOENT are answered from it while the stream is healthy.
 *
 * Every function here except mirror_load/init/fini requires mirror.lock (held briefly by the
 * callers, never across a remote call).  Entries are found by (parent, name) in one hash table.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t key_hash(const struct ment *parent, const char *name)
{
	return hash_str(name, (uint64_t)(uintptr_t)parent);
}

static struct ment *child_find(struct mirror *m, struct ment *dir, const char *name, size_t len)
{
	char buf[256];
	char *heap = NULL;
	const char *key = name;
	struct ment *found = NULL;

	if (name[len]) {
		if (len < sizeof(buf)) {
			memcpy(buf, name, len);
			buf[len] = 0;
			key = buf;
		} else {
			heap = strndup(name, len);
			if (!heap)
				return NULL;
			key = heap;
		}
	}
	uint64_t h = key_hash(dir, key);

	for (struct hnode *n = htab_first(&m->names, h); n; n = htab_next(n, h)) {
		struct ment *e = container_of(n, struct ment, h);

		if (e->parent == dir && strcmp(e->name, key) == 0) {
			found = e;
			break;
		}
	}
	free(heap);
	return found;
}

static struct ment *ment_new(const char *name)
{
	struct ment *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->name = strdup(name);
	if (!e->name) {
		free(e);
		return NULL;
	}
	return e;
}

int mirror_init(struct mirror *m)
{
	memset(m, 0, sizeof(*m));
	pthread_mutex_init(&m->lock, NULL);
	if (htab_init(&m->names) < 0)
		return -ENOMEM;
	if (htab_init(&m->tombs) < 0) {
		htab_fini(&m->names);
		return -ENOMEM;
	}
	if (htab_init(&m->negs) < 0) {
		htab_fini(&m->tombs);
		htab_fini(&m->names);
		return -ENOMEM;
	}
	m->root = ment_new("");
	if (!m->root) {
		htab_fini(&m->negs);
		htab_fini(&m->tombs);
		htab_fini(&m->names);
		return -ENOMEM;
	}
	m->root->attr.mode = S_IFDIR | 0755;
	return 0;
}

static void free_subtree(struct mirror *m, struct ment *e, bool unhash)
{
	struct ment *k = e->kids, *next;

	for (; k; k = next) {
		next = k->next;
		free_subtree(m, k, unhash);
	}
	if (unhash && e->parent)
		htab_del(&m->names, &e->h);
	if (e->parent)
		m->entries--;
	free(e->name);
	free(e->target);
	free(e);
}

struct tomb {
	struct hnode h;
	uint64_t seq;
	unsigned echoes; /* delete events of our own removals still to come */
	char path[];
};

#define TOMBS_MAX 4096

/* Removes the tombs the event stream has passed (and, if that is not enough, all of them):
 * no event can be older than them any more; a listing that started before the newest one
 * removed is refused (mirror_fill_dir), as it could bring back a name removed since. */
static void tombs_prune(struct mirror *m, bool all)
{
	for (size_t b = 0; b < m->tombs.nb; b++) {
		struct hnode **pp = &m->tombs.b[b];

		while (*pp) {
			struct tomb *t = container_of(*pp, struct tomb, h);

			if (!all && (t->seq > m->stream_seq || t->echoes)) {
				pp = &(*pp)->next;
				continue;
			}
			if (m->tomb_floor < t->seq)
				m->tomb_floor = t->seq;
			htab_del(&m->tombs, &t->h);
			free(t);
		}
	}
}

static void tombs_clear(struct mirror *m)
{
	tombs_prune(m, true);
}

static struct tomb *tomb_find(struct mirror *m, const char *path)
{
	uint64_t h = hash_str(path, 11);

	for (struct hnode *n = htab_first(&m->tombs, h); n; n = htab_next(n, h)) {
		struct tomb *t = container_of(n, struct tomb, h);

		if (!strcmp(t->path, path))
			return t;
	}
	return NULL;
}

void mirror_tomb_set(struct mirror *m, const char *path, uint64_t seq)
{
	struct tomb *t = tomb_find(m, path);

	if (t) {
		if (t->seq < seq)
			t->seq = seq;
		return;
	}
	if (m->tombs.n >= TOMBS_MAX)
		tombs_prune(m, false);
	if (m->tombs.n >= TOMBS_MAX)
		tombs_prune(m, true);
	t = malloc(sizeof(*t) + strlen(path) + 1);
	if (!t)
		return;
	t->seq = seq;
	t->echoes = 0;
	strcpy(t->path, path);
	htab_add(&m->tombs, &t->h, hash_str(path, 11));
}

uint64_t mirror_tomb_get(struct mirror *m, const char *path)
{
	struct tomb *t = tomb_find(m, path);

	return t ? t->seq : 0;
}

void mirror_tomb_expect_echo(struct mirror *m, const char *path, uint64_t seq)
{
	struct tomb *t;

	mirror_tomb_set(m, path, seq);
	t = tomb_find(m, path);
	if (t)
		t->echoes++;
}

bool mirror_tomb_echo_pending(struct mirror *m, const char *path)
{
	struct tomb *t = tomb_find(m, path);

	return t && t->echoes;
}

bool mirror_tomb_take_echo(struct mirror *m, const char *path)
{
	struct tomb *t = tomb_find(m, path);

	if (!t || !t->echoes)
		return false;
	t->echoes--;
	return true;
}

void mirror_tomb_forget_echoes(struct mirror *m)
{
	for (size_t b = 0; b < m->tombs.nb; b++)
		for (struct hnode *n = m->tombs.b[b]; n; n = n->next)
			container_of(n, struct tomb, h)->echoes = 0;
}

/* ---- names the kernel may hold as "no such entry" ------------------------------------------
 * A lookup answered ENOENT with a timeout leaves a negative dentry in the kernel; a name made
 * later must drop it.  A name nobody looked up needs no invalidation, and sending one anyway
 * would throw away the entry (and with it the inode and its cached content) that a lookup
 * racing the invalidation just handed out. */

#define NEGS_MAX 65536

struct neg {
	struct hnode h;
	uint64_t until_ms; /* the kernel forgets it by then */
	char path[];
};

/* Drops the records drop() says go (NULL: all of them). */
static void negs_drop(struct mirror *m, bool (*drop)(const struct neg *g, void *ctx), void *ctx)
{
	for (size_t b = 0; b < m->negs.nb; b++) {
		struct hnode **pp = &m->negs.b[b];

		while (*pp) {
			struct neg *g = container_of(*pp, struct neg, h);

			if (drop && !drop(g, ctx)) {
				pp = &(*pp)->next;
				continue;
			}
			htab_del(&m->negs, &g->h);
			free(g);
		}
	}
}

static bool neg_expired(const struct neg *g, void *now)
{
	return g->until_ms <= *(uint64_t *)now;
}

static struct neg *neg_find(struct mirror *m, const char *path)
{
	uint64_t h = hash_str(path, 13);

	for (struct hnode *n = htab_first(&m->negs, h); n; n = htab_next(n, h)) {
		struct neg *g = container_of(n, struct neg, h);

		if (!strcmp(g->path, path))
			return g;
	}
	return NULL;
}

void mirror_neg_note(struct mirror *m, const char *path, double ttl)
{
	uint64_t now = now_ms(), until = now + (uint64_t)(ttl * 1000.0) + 1000;
	struct neg *g = neg_find(m, path);

	if (g) {
		g->until_ms = until;
		return;
	}
	if (m->negs.n >= NEGS_MAX)
		negs_drop(m, neg_expired, &now);
	g = m->negs.n < NEGS_MAX ? malloc(sizeof(*g) + strlen(path) + 1) : NULL;
	if (!g) {
		/* Not remembered: until it expires, any name may be one. */
		negs_drop(m, NULL, NULL);
		if (m->negs_all_until_ms < until)
			m->negs_all_until_ms = until;
		return;
	}
	g->until_ms = until;
	strcpy(g->path, path);
	htab_add(&m->negs, &g->h, hash_str(path, 13));
}

bool mirror_neg_take(struct mirror *m, const char *path)
{
	uint64_t now = now_ms();
	struct neg *g = neg_find(m, path);
	bool live = m->negs_all_until_ms > now;

	if (g) {
		live = live || g->until_ms > now;
		htab_del(&m->negs, &g->h);
		free(g);
	}
	return live;
}

/* Names new in nw under the old directory o (both trees' entries for one path). */
static void negs_walk_new(struct dfs *d, struct mirror *m, struct ment *o, const struct ment *n)
{
	for (const struct ment *k = n->kids; k; k = k->next) {
		struct ment *ko = child_find(m, o, k->name, strlen(k->name));

		if (!ko) {
			char *p = ment_path(k);

			if (p)
				notify_path(d, NQ_ENTRY, p);
			free(p);
		} else if (S_ISDIR(k->attr.mode) && S_ISDIR(ko->attr.mode)) {
			negs_walk_new(d, m, ko, k);
		}
	}
}

struct negs_resync {
	struct dfs *d;
	struct mirror *nw;
};

/* A name the kernel may hold as absent that the new tree has: invalidated, then forgotten. */
static bool neg_now_present(const struct neg *g, void *ctx)
{
	struct negs_resync *c = ctx;

	if (!mirror_find(c->nw, g->path))
		return false;
	notify_path(c->d, NQ_ENTRY, g->path);
	return true;
}

void mirror_negs_resync(struct dfs *d, struct mirror *m, struct mirror *nw)
{
	struct negs_resync c = {d, nw};

	negs_drop(m, neg_now_present, &c);
	if (m->negs_all_until_ms > now_ms())
		negs_walk_new(d, m, m->root, nw->root);
}

void mirror_fini(struct mirror *m)
{
	if (m->root)
		free_subtree(m, m->root, false);
	m->root = NULL;
	tombs_clear(m);
	negs_drop(m, NULL, NULL);
	mirror_journal_end(m);
	htab_fini(&m->negs);
	htab_fini(&m->tombs);
	htab_fini(&m->names);
	pthread_mutex_destroy(&m->lock);
}

struct ment *mirror_find(struct mirror *m, const char *path)
{
	struct ment *e = m->root;

	if (!strcmp(path, ".") || !*path)
		return e;
	while (e && *path) {
		const char *slash = strchr(path, '/');
		size_t len = slash ? (size_t)(slash - path) : strlen(path);

		e = child_find(m, e, path, len);
		path += len;
		if (*path == '/')
			path++;
	}
	return e;
}

static void link_child(struct mirror *m, struct ment *dir, struct ment *e)
{
	e->parent = dir;
	e->prev = dir->kids_tail;
	e->next = NULL;
	if (dir->kids_tail)
		dir->kids_tail->next = e;
	else
		dir->kids = e;
	dir->kids_tail = e;
	dir->nkids++;
	dir->names_gen++;
	htab_add(&m->names, &e->h, key_hash(dir, e->name));
}

static void unlink_child(struct mirror *m, struct ment *e)
{
	struct ment *dir = e->parent;

	htab_del(&m->names, &e->h);
	if (e->prev)
		e->prev->next = e->next;
	else
		dir->kids = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		dir->kids_tail = e->prev;
	dir->nkids--;
	dir->names_gen++;
	e->prev = e->next = NULL;
	e->parent = NULL;
}

static int set_target(struct ment *e, const char *target)
{
	char *t = NULL;

	if (target && S_ISLNK(e->attr.mode)) {
		if (e->target && !strcmp(e->target, target))
			return 0;
		t = strdup(target);
		if (!t)
			return -ENOMEM;
	}
	free(e->target);
	e->target = t;
	return 0;
}

static void drop_kids(struct mirror *m, struct ment *e)
{
	while (e->kids) {
		struct ment *k = e->kids;

		unlink_child(m, k);
		free_subtree(m, k, true);
		m->entries--; /* k itself: detached above, so free_subtree did not count it */
	}
}

/* ---- journal: what our own operations changed while a resync loaded the tree ---------- */

static void journal_add(struct mirror *m, const char *path)
{
	if (!m->journaling)
		return;
	if (m->jn == m->jcap) {
		size_t cap = m->jcap ? m->jcap * 2 : 64;
		char **v = realloc(m->jv, cap * sizeof(*v));

		if (!v) {
			m->jlost = true;
			return;
		}
		m->jv = v;
		m->jcap = cap;
	}
	if (!(m->jv[m->jn] = strdup(path)))
		m->jlost = true;
	else
		m->jn++;
}

void mirror_journal_begin(struct mirror *m)
{
	mirror_journal_end(m);
	m->journaling = true;
}

void mirror_journal_end(struct mirror *m)
{
	for (size_t i = 0; i < m->jn; i++)
		free(m->jv[i]);
	free(m->jv);
	m->jv = NULL;
	m->jn = m->jcap = 0;
	m->journaling = false;
	m->jlost = false;
}

bool mirror_journal_replay(struct mirror *m, struct mirror *nw)
{
	bool journaling = m->journaling;

	m->journaling = false; /* nw is changed below, m is only read */
	for (size_t i = 0; i < m->jn; i++) {
		const char *p = m->jv[i];
		struct ment *o = mirror_find(m, p), *n = mirror_find(nw, p), *e;
		bool same;

		if (!o) {
			if (n && n != nw->root)
				mirror_detach(nw, n);
			continue;
		}
		same = n && n->attr.ino == o->attr.ino &&
		       (n->attr.mode & S_IFMT) == (o->attr.mode & S_IFMT);
		e = mirror_set(nw, p, &o->attr, o->target);
		if (!e)
			continue; /* its directory is not in the tree's copy (yet): listed on use */
		e->seq = o->seq;
		e->dseq = o->dseq;
		e->own = o->own;
		e->own_gen = o->own_gen;
		e->stale = o->stale;
		if (!same)
			e->complete = false;
	}
	m->journaling = journaling;
	return !m->jlost;
}

struct ment *mirror_set(struct mirror *m, const char *path, const struct dbx_attr *a,
			const char *target)
{
	struct ment *e;

	journal_add(m, path);
	if (!strcmp(path, ".") || !*path) {
		e = m->root;
	} else {
		char *dpath = path_dir(path);
		struct ment *dir;

		if (!dpath)
			return NULL;
		dir = mirror_find(m, dpath);
		free(dpath);
		if (!dir || !S_ISDIR(dir->attr.mode))
			return NULL;
		const char *name = path_base(path);

		e = child_find(m, dir, name, strlen(name));
		if (!e) {
			e = ment_new(name);
			if (!e)
				return NULL;
			link_child(m, dir, e);
			m->entries++;
			/* A directory we did not list ourselves starts incomplete. */
			e->complete = false;
		}
	}
	bool same = (e->attr.mode & S_IFMT) == (a->mode & S_IFMT) && e->attr.ino == a->ino;

	if (!same) {
		drop_kids(m, e);
		if (e != m->root)
			e->complete = false;
		if (e->parent)
			e->parent->names_gen++; /* a listing holds each name's type and ino */
	}
	if (S_ISDIR(a->mode) && e->attr.ino == 0)
		e->complete = false;
	e->attr = *a;
	e->stale = false;
	/* target NULL from a plain stat means "not sent": keep what we know of the same link. */
	if ((target || !same) && set_target(e, target) < 0)
		return NULL;
	m->gen++;
	return e;
}

void mirror_detach(struct mirror *m, struct ment *e)
{
	if (m->journaling) {
		char *p = ment_path(e);

		if (p)
			journal_add(m, p);
		else
			m->jlost = true;
		free(p);
	}
	if (e == m->root) {
		drop_kids(m, e);
		e->complete = false;
		return;
	}
	unlink_child(m, e);
	free_subtree(m, e, true);
	m->entries--; /* e itself: detached above, so free_subtree did not count it */
	m->gen++;
}

void mirror_remove(struct mirror *m, const char *path)
{
	struct ment *e = mirror_find(m, path);

	if (e && e != m->root)
		mirror_detach(m, e);
}

void mirror_move(struct mirror *m, const char *from, const char *to, bool exchange)
{
	struct ment *src = mirror_find(m, from);
	struct ment *dst = mirror_find(m, to);
	char *tdir = path_dir(to);
	struct ment *tparent = tdir ? mirror_find(m, tdir) : NULL;
	const char *tname = path_base(to);
	char *n1 = NULL, *n2 = NULL;

	free(tdir);
	m->gen++;
	journal_add(m, from);
	journal_add(m, to);
	if (src == m->root || dst == m->root)
		return;
	if (exchange) {
		struct ment *sparent;

		if (!src || !dst) {
			if (src)
				mirror_detach(m, src);
			if (dst)
				mirror_detach(m, dst);
			return;
		}
		sparent = src->parent;
		n1 = strdup(src->name);
		n2 = strdup(dst->name);
		if (!n1 || !n2) {
			mirror_detach(m, src);
			mirror_detach(m, dst);
			goto out;
		}
		unlink_child(m, src);
		unlink_child(m, dst);
		free(src->name);
		free(dst->name);
		src->name = n2;
		dst->name = n1;
		n1 = n2 = NULL;
		link_child(m, tparent, src);
		link_child(m, sparent, dst);
		goto out;
	}
	if (dst && dst != src)
		mirror_detach(m, dst);
	if (!src)
		goto out;
	if (!tparent || !S_ISDIR(tparent->attr.mode)) {
		mirror_detach(m, src);
		goto out;
	}
	n1 = strdup(tname);
	if (!n1) {
		mirror_detach(m, src);
		goto out;
	}
	unlink_child(m, src);
	free(src->name);
	src->name = n1;
	n1 = NULL;
	link_child(m, tparent, src);
out:
	free(n1);
	free(n2);
}

void listing_free(struct listing *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].name);
		free(l->v[i].target);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

int listing_add(struct listing *l, const char *name, const struct dbx_attr *a, const char *target)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 32;
		struct lent *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	struct lent *e = &l->v[l->n];

	e->name = strdup(name);
	e->target = target ? strdup(target) : NULL;
	if (!e->name || (target && !e->target)) {
		free(e->name);
		free(e->target);
		return -ENOMEM;
	}
	e->attr = *a;
	l->n++;
	return 0;
}

/* True when e's state is newer than a listing made at seq: set by an event after seq, or by
 * the reply to our own change made while the listing was under way. */
static bool newer_than(const struct ment *e, uint64_t seq)
{
	return e->seq > seq || (e->own && e->seq == seq);
}

int mirror_fill_dir(struct mirror *m, const char *path, const struct listing *l, uint64_t seq)
{
	struct ment *dir = mirror_find(m, path);
	struct ment *k, *next;

	/* Events and our own replies may have been applied while the listing travelled.  They
	 * are newer than it: merge, keeping every name and attribute set after seq and leaving
	 * out the names removed after seq (tombstones). */
	if (seq < m->tomb_floor)
		return 1; /* a removal after seq may have been forgotten */
	if (!dir && *path) {
		char *dpath = path_dir(path);
		struct ment *p = dpath ? mirror_find(m, dpath) : NULL;

		free(dpath);
		if (!p)
			return -ENOENT;
		if (p->dseq > seq || mirror_tomb_get(m, path) > seq)
			return 1; /* removed or replaced since */
	}
	if (dir && (newer_than(dir, seq) || dir->dseq > seq)) {
		if (!S_ISDIR(dir->attr.mode) || dir->attr.ino != l->dir.ino)
			return 1; /* replaced since */
	} else {
		dir = mirror_set(m, path, &l->dir, NULL);
		if (!dir)
			return -ENOENT;
		dir->seq = seq;
		dir->own = false;
	}
	for (k = dir->kids; k; k = k->next)
		k->seen = false;
	for (size_t i = 0; i < l->n; i++) {
		const char *name = l->v[i].name;
		struct ment *e = child_find(m, dir, name, strlen(name));
		char *p;

		if (e && newer_than(e, seq)) {
			e->seen = true;
			continue;
		}
		p = path_join(path, name);
		if (!p)
			return -ENOMEM;
		if (!e && mirror_tomb_get(m, p) > seq) {
			free(p);
			continue;
		}
		e = mirror_set(m, p, &l->v[i].attr, l->v[i].target);
		free(p);
		if (!e)
			return -ENOMEM;
		e->seen = true;
		e->seq = seq;
		e->own = false;
	}
	for (k = dir->kids; k; k = next) {
		next = k->next;
		if (!k->seen && !newer_than(k, seq))
			mirror_detach(m, k);
	}
	dir->complete = true;
	return 0;
}

struct load_ctx {
	struct mirror *m;
	int err;
};

static int load_cb(void *ud, const char *path, const struct dbx_attr *a, const char *target,
		   bool partial)
{
	struct load_ctx *c = ud;
	struct ment *e = mirror_set(c->m, path, a, target);

	if (!e)
		return 0; /* parent unknown: skip (cannot happen with parents first) */
	if (S_ISDIR(a->mode))
		e->complete = !partial;
	return 0;
}

static void mark_incomplete(struct ment *e)
{
	if (S_ISDIR(e->attr.mode))
		e->complete = false;
	for (struct ment *k = e->kids; k; k = k->next)
		mark_incomplete(k);
}

int mirror_load(struct dfs *d, struct mirror *m, uint64_t *ret_seq, char ret_boot[33])
{
	struct load_ctx c = {.m = m};
	struct dbx_tree_end end = {0};
	int r;

	pthread_mutex_lock(&m->lock);
	r = dbx_fs_tree(d->client, "", 0, 0, load_cb, &c, &end);
	STAT_INC(d, remote_calls);
	if (r >= 0) {
		const struct dbx_reply_meta *meta = dbx_last_reply_meta();

		if (end.truncated)
			mark_incomplete(m->root);
		*ret_seq = end.seq;
		if (meta->valid)
			memcpy(ret_boot, meta->boot, 33);
		else
			ret_boot[0] = 0;
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

void mirror_swap(struct mirror *a, struct mirror *b)
{
	struct htab th = a->names;
	struct ment *tr = a->root;
	size_t te = a->entries;

	a->names = b->names;
	a->root = b->root;
	a->entries = b->entries;
	b->names = th;
	b->root = tr;
	b->entries = te;
	a->gen++;
	b->gen++;
}

char *ment_path(const struct ment *e)
{
	size_t len = 0;
	char *p;

	for (const struct ment *x = e; x->parent; x = x->parent)
		len += strlen(x->name) + (x->parent->parent ? 1 : 0); /* name, and '/' unless top */
	p = malloc(len + 1);
	if (!p)
		return NULL;
	p[len] = 0;
	for (const struct ment *x = e; x->parent; x = x->parent) {
		size_t n = strlen(x->name);

		len -= n;
		memcpy(p + len, x->name, n);
		if (len)
			p[--len] = '/';
	}
	return p;
}

void mirror_mark_stale(struct dfs *d, struct ment *e)
{
	e->stale = true;
	e->stale_gen++;
	if (!S_ISDIR(e->attr.mode) || e->refresh_queued)
		return;
	char *p = ment_path(e);

	if (p) {
		e->refresh_queued = true;
		ra_refresh(d, p);
		free(p);
	}
}
