/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The change-event stream (libdevbox dbx_watch) applied to the mirror.
 *
 * Runs on the watch thread only.  Each event updates the mirror under mirror.lock; an event
 * that matches what the mirror already holds (the echo of our own mutation, whose reply was
 * applied first) changes nothing.  Otherwise the kernel's copies are invalidated through the
 * notifier queue.  A hello that did not resume (new agent boot, ring overrun) or an overflow
 * reloads the tree and invalidates every kernel inode/dentry that differs from it.
 */
#include "dfs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool target_same(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

/* The kernel copies to drop after a change of path's parent listing.  absent: the mirror had
 * no entry at path before. */
static void dir_changed(struct dfs *d, struct ment *parent, const char *path, uint64_t seq,
			bool absent)
{
	char *dir = path_dir(path);
	bool neg = mirror_neg_take(&d->mirror, path);

	if (parent) {
		mirror_mark_stale(d, parent);
		if (parent->dseq < seq)
			parent->dseq = seq; /* names in it changed at seq */
	}
	/* A new name: the kernel holds nothing for it unless a lookup was told "no such entry"
	 * or found it where the mirror does not look.  An invalidation sent anyway could drop
	 * the entry a lookup racing it just handed out, and the inode's cached content. */
	if (!absent || neg || itab_nodeid_of(d, path))
		notify_path(d, NQ_ENTRY, path);
	if (dir)
		notify_path(d, NQ_INODE_DATA, dir);
	free(dir);
}

/* True when the mirror's state for ev's object is newer than ev: the entry was refreshed by a
 * reply stamped with a later seq, or (entry absent) our own op removed that name later. */
static bool older(struct mirror *m, struct ment *e, const struct dbx_event *ev)
{
	const char *path = ev->to ? ev->to : ev->path;

	if (e)
		return e->seq >= ev->seq;
	return mirror_tomb_get(m, path) >= ev->seq;
}

static void apply_set(struct dfs *d, const struct dbx_event *ev)
{
	struct mirror *m = &d->mirror;
	struct ment *old, *e;
	bool had, same_obj, same_content;

	if (!ev->has_attr)
		return; /* gone again already: its delete event follows */
	pthread_mutex_lock(&m->lock);
	old = mirror_find(m, ev->path);
	/* Before the echo of our own removal of path, an event about path is about what we
	 * removed (the agent stat'ed it before our removal ran, but published it after). */
	if ((old && attr_same(&old->attr, &ev->attr) && target_same(old->target, ev->target)) ||
	    older(m, old, ev) || mirror_tomb_echo_pending(m, ev->path)) {
		pthread_mutex_unlock(&m->lock);
		STAT_INC(d, events_echo);
		return;
	}
	had = old != NULL;
	same_obj = had && old->attr.ino == ev->attr.ino &&
		   (old->attr.mode & S_IFMT) == (ev->attr.mode & S_IFMT);
	same_content = same_obj && attr_same_content(&old->attr, &ev->attr);
	if (same_obj) {
		/* The agent stats when it reads the inotify event, possibly half way through one of
		 * our own writes (ctime then not newer than the reply we applied): not newer. */
		int c = dfs_ts_cmp(&ev->attr.ctime, &old->attr.ctime);

		if (c < 0 || (c == 0 && old->own)) {
			if (c == 0 && !old->refresh_queued) {
				old->refresh_queued = true;
				ra_refresh(d, ev->path); /* settle it with a stat of our own */
			}
			pthread_mutex_unlock(&m->lock);
			STAT_INC(d, events_echo);
			return;
		}
	}
	e = mirror_set(m, ev->path, &ev->attr, ev->target);
	if (!e) {
		pthread_mutex_unlock(&m->lock);
		return; /* in a part of the tree we never loaded */
	}
	if (!same_obj)
		dir_changed(d, e->parent, ev->path, ev->seq, !had);
	/* A directory made (or moved in) remotely: the agent watches it before walking it and
	 * reports every entry found as an event after this one, so its listing is known. */
	if (!had && ev->kind == DBX_EV_MKDIR && S_ISDIR(ev->attr.mode))
		e->complete = true;
	if (!same_obj && S_ISDIR(ev->attr.mode))
		e->dseq = ev->seq; /* a listing from before it is of something else */
	e->seq = ev->seq;
	e->own = false;
	if (same_obj && !same_content && ev->has_data && S_ISREG(ev->attr.mode)) {
		/* The new bytes came with the event: the next read needs no round trip. */
		char *copy = malloc(ev->data_len ? ev->data_len : 1);

		if (copy && ev->data_len)
			memcpy(copy, ev->data, ev->data_len);
		if (copy && itab_offer_content(d, ev->path, &ev->attr, copy, ev->data_len))
			STAT_INC(d, events_data);
		else
			free(copy);
	}
	if (same_obj && !same_content)
		notify_path(d, NQ_INODE_DATA, ev->path);
	else if (same_obj)
		notify_path(d, NQ_INODE_ATTR, ev->path);
	pthread_mutex_unlock(&m->lock);
	if (d->echo_on) {
		int kind = EC_ATTRIB;
		uint32_t t = ev->attr.mode & S_IFMT;

		if (!had)
			kind = t == S_IFDIR   ? EC_MKDIR
			       : t == S_IFLNK ? EC_SYMLINK
			       : t == S_IFIFO ? EC_MKFIFO
			       : t == S_IFREG ? EC_CREATE
					      : -1;
		else if (same_obj && !same_content && t == S_IFREG)
			kind = EC_MODIFY;
		if (kind >= 0)
			echo_queue(d, kind, ev->path, NULL, &ev->attr, ev->target);
	}
}

static void apply_delete(struct dfs *d, const struct dbx_event *ev)
{
	struct mirror *m = &d->mirror;
	struct ment *old;
	struct dbx_attr last;
	bool ours;

	pthread_mutex_lock(&m->lock);
	old = mirror_find(m, ev->path);
	/* The echo of our own removal.  An event published between the removal and this echo
	 * may have put the name back with what the agent saw before our removal ran: that entry
	 * goes now (our own next file under the name is marked own, and keeps it). */
	ours = mirror_tomb_take_echo(m, ev->path);
	if (!old || old == m->root || old->seq >= ev->seq || (ours && old->own)) {
		pthread_mutex_unlock(&m->lock);
		STAT_INC(d, events_echo);
		return;
	}
	last = old->attr;
	dir_changed(d, old->parent, ev->path, ev->seq, false);
	mirror_detach(m, old);
	mirror_tomb_set(m, ev->path, ev->seq);
	pthread_mutex_unlock(&m->lock);
	itab_unlinked(d, ev->path, &last);
	if (d->echo_on && !ours)
		echo_queue(d, S_ISDIR(last.mode) ? EC_RMDIR : EC_UNLINK, ev->path, NULL, &last,
			   NULL);
}

static void apply_rename(struct dfs *d, const struct dbx_event *ev)
{
	struct mirror *m = &d->mirror;
	struct ment *src, *dst;

	if (!ev->to)
		return;
	pthread_mutex_lock(&m->lock);
	src = mirror_find(m, ev->path);
	dst = mirror_find(m, ev->to);
	/* Already reflected (our own rename, or both halves of an exchange): the moved object
	 * sits at `to` and `from` holds something else or nothing.  Or older than our state. */
	if ((dst && ev->has_attr && attr_same(&dst->attr, &ev->attr) &&
	     (!src || src->attr.ino != ev->attr.ino)) ||
	    (dst && dst->seq >= ev->seq && (!src || src->seq >= ev->seq)) ||
	    (!dst && !src && older(m, NULL, ev))) {
		pthread_mutex_unlock(&m->lock);
		STAT_INC(d, events_echo);
		return;
	}
	if (src && ev->has_attr && src->attr.ino != ev->attr.ino) {
		/* `from` already holds another object (the second half of an exchange): only
		 * `to` changes. */
		bool replaced = dst && dst->attr.ino != ev->attr.ino;
		bool absent = !dst;

		dst = mirror_set(m, ev->to, &ev->attr, ev->target);
		dir_changed(d, dst ? dst->parent : NULL, ev->to, ev->seq, absent);
		pthread_mutex_unlock(&m->lock);
		if (replaced)
			itab_unlinked_but(d, ev->to, NULL, ev->attr.ino);
		return;
	}
	if (!src && dst && ev->has_attr && dst->attr.ino == ev->attr.ino &&
	    (dst->attr.mode & S_IFMT) == (ev->attr.mode & S_IFMT)) {
		/* Our own rename, already in place; only its attributes moved on since. */
		bool content = attr_same_content(&dst->attr, &ev->attr);

		dst = mirror_set(m, ev->to, &ev->attr, ev->target);
		if (dst) {
			dst->seq = ev->seq;
			dst->own = false;
		}
		notify_path(d, content ? NQ_INODE_ATTR : NQ_INODE_DATA, ev->to);
		pthread_mutex_unlock(&m->lock);
		return;
	}
	struct dbx_attr moved = {0};
	bool absent = !dst;

	if (src) {
		moved = src->attr;
		dir_changed(d, src->parent, ev->path, ev->seq, false);
	}
	mirror_move(m, ev->path, ev->to, false);
	mirror_tomb_set(m, ev->path, ev->seq);
	dst = ev->has_attr ? mirror_set(m, ev->to, &ev->attr, ev->target) : mirror_find(m, ev->to);
	if (dst) {
		moved = dst->attr;
		dst->seq = ev->seq;
		dst->own = false;
		if (S_ISDIR(dst->attr.mode))
			dst->dseq = ev->seq;
	}
	dir_changed(d, dst ? dst->parent : NULL, ev->to, ev->seq, absent);
	pthread_mutex_unlock(&m->lock);
	/* Whatever `to` named is gone, unless a lookup already found the moved object there. */
	itab_unlinked_but(d, ev->to, NULL, moved.ino);
	itab_rename(d, ev->path, ev->to, false);
	if (d->echo_on && src && moved.ino)
		echo_queue(d, EC_RENAME, ev->path, ev->to, &moved, NULL);
}

/* ---- resync --------------------------------------------------------------------------- */

static void diff_inode(struct dfs *d, struct dfs_inode *i, struct mirror *old, struct mirror *nw)
{
	struct ment *o = mirror_find(old, i->path);
	struct ment *n = mirror_find(nw, i->path);

	if (!n || !o || o->attr.ino != n->attr.ino) {
		if (*i->path)
			notify_path(d, NQ_ENTRY, i->path);
		notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
		return;
	}
	if (!attr_same_content(&o->attr, &n->attr))
		notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
	else if (!attr_same(&o->attr, &n->attr) || !target_same(o->target, n->target))
		notify_nodeid(d, NQ_INODE_ATTR, i->nodeid, NULL);
	if (!S_ISDIR(n->attr.mode))
		return;
	/* Names that appeared, vanished or changed identity, including negative dentries. */
	bool changed = false;

	for (struct ment *k = o->kids; k; k = k->next) {
		struct ment *nk = NULL;

		for (struct ment *x = n->kids; x && !nk; x = x->next)
			if (!strcmp(x->name, k->name))
				nk = x;
		if (!nk || nk->attr.ino != k->attr.ino) {
			notify_nodeid(d, NQ_ENTRY, i->nodeid, k->name);
			changed = true;
		}
	}
	for (struct ment *x = n->kids; x; x = x->next) {
		bool found = false;

		for (struct ment *k = o->kids; k && !found; k = k->next)
			found = !strcmp(x->name, k->name);
		if (!found) {
			notify_nodeid(d, NQ_ENTRY, i->nodeid, x->name);
			changed = true;
		}
	}
	if (changed)
		notify_nodeid(d, NQ_INODE_DATA, i->nodeid, NULL);
}

/* Reloads the tree.  Operations go on meanwhile (answered by the agent, the mirror being
 * unhealthy); only the final merge and swap hold mut_lock, as events do. */
static void resync(struct dfs *d)
{
	struct mirror nw;
	uint64_t seq;
	char boot[33];
	int r;

	atomic_store(&d->healthy, false);
	STAT_INC(d, resyncs);
	if (mirror_init(&nw) < 0)
		return;
	pthread_mutex_lock(&d->mirror.lock);
	mirror_journal_begin(&d->mirror);
	pthread_mutex_unlock(&d->mirror.lock);
	/* A deadline, so that an agent that stalls cannot hold the stream forever. */
	if (!d->hard)
		dbx_thread_set_deadline(now_ms() + (uint64_t)d->op_timeout_ms * 10);
	r = mirror_load(d, &nw, &seq, boot);
	dbx_thread_set_deadline(0);
	if (r < 0) {
		dfs_log(DFS_WARN, "resync: %s", dbx_error_last());
		pthread_mutex_lock(&d->mirror.lock);
		mirror_journal_end(&d->mirror);
		pthread_mutex_unlock(&d->mirror.lock);
		mirror_fini(&nw);
		return;
	}
	pthread_rwlock_wrlock(&d->mut_lock);
	pthread_mutex_lock(&d->mirror.lock);
	if (!mirror_journal_replay(&d->mirror, &nw))
		dfs_log(DFS_WARN, "resync: out of memory recording changes made meanwhile; "
				  "some may show late");
	mirror_journal_end(&d->mirror);
	pthread_mutex_lock(&d->itab.lock);
	for (size_t b = 0; b < d->itab.by_id.nb; b++)
		for (struct hnode *h = d->itab.by_id.b[b]; h; h = h->next) {
			struct dfs_inode *i = container_of(h, struct dfs_inode, h_id);

			if (i->path && i->path_hashed)
				diff_inode(d, i, &d->mirror, &nw);
		}
	pthread_mutex_unlock(&d->itab.lock);
	mirror_negs_resync(d, &d->mirror, &nw);
	mirror_swap(&d->mirror, &nw);
	if (d->mirror.tomb_floor < seq)
		d->mirror.tomb_floor = seq; /* a listing from before the tree may be older */
	mirror_tomb_forget_echoes(&d->mirror); /* the tree has what the echoes would say */
	pthread_mutex_unlock(&d->mirror.lock);
	pthread_rwlock_unlock(&d->mut_lock);
	mirror_fini(&nw);
	atomic_store(&d->healthy, true);
	dfs_log(DFS_INFO, "resynchronised with the workspace (%zu entries)", d->mirror.entries);
}

/* ---- watch callbacks (watch thread) ---------------------------------------------------- */

static void on_hello(void *ud, const struct dbx_watch_hello *h)
{
	struct dfs *d = ud;
	bool had;

	pthread_mutex_lock(&d->sess_lock);
	memcpy(d->session, h->session, sizeof(d->session));
	d->session[sizeof(d->session) - 1] = 0;
	memcpy(d->boot, h->boot, sizeof(d->boot));
	had = d->had_hello;
	d->had_hello = true;
	pthread_mutex_unlock(&d->sess_lock);
	atomic_store(&d->st.agent_seq, h->seq);
	if (!h->resumed) {
		dfs_log(had ? DFS_INFO : DFS_DEBUG, "event stream did not resume: resync");
		resync(d);
	} else {
		if (had)
			dfs_log(DFS_INFO, "event stream resumed at %llu",
				(unsigned long long)h->seq);
		atomic_store(&d->healthy, true);
	}
}

static void on_down(void *ud, int err)
{
	struct dfs *d = ud;

	atomic_store(&d->healthy, false);
	STAT_INC(d, stream_downs);
	pthread_mutex_lock(&d->sess_lock);
	d->session[0] = 0;
	pthread_mutex_unlock(&d->sess_lock);
	dfs_log(DFS_WARN, "event stream down (%s): short timeouts until it is back",
		strerror(err < 0 ? -err : err));
}

static void on_event(void *ud, const struct dbx_event *ev)
{
	struct dfs *d = ud;

	STAT_INC(d, events);
	atomic_store(&d->st.last_event_seq, ev->seq);
	if (atomic_load(&d->st.agent_seq) < ev->seq)
		atomic_store(&d->st.agent_seq, ev->seq);
	if (d->debug)
		dfs_log(DFS_DEBUG, "event %llu %s %s%s%s", (unsigned long long)ev->seq,
			dbx_event_kind_name(ev->kind), ev->path, ev->to ? " -> " : "",
			ev->to ? ev->to : "");
	if (ev->kind == DBX_EV_OVERFLOW) {
		resync(d); /* takes mut_lock itself, once the tree is loaded */
		goto done;
	}
	pthread_rwlock_wrlock(&d->mut_lock);
	switch (ev->kind) {
	case DBX_EV_CREATE:
	case DBX_EV_MKDIR:
	case DBX_EV_MODIFY:
	case DBX_EV_ATTRIB:
		apply_set(d, ev);
		break;
	case DBX_EV_DELETE:
	case DBX_EV_RMDIR:
		apply_delete(d, ev);
		break;
	case DBX_EV_RENAME:
		apply_rename(d, ev);
		break;
	case DBX_EV_OVERFLOW:
		break;
	}
	pthread_rwlock_unlock(&d->mut_lock);
done:
	pthread_mutex_lock(&d->mirror.lock);
	d->mirror.stream_seq = ev->seq;
	pthread_mutex_unlock(&d->mirror.lock);
}

int events_start(struct dfs *d, const char *boot, uint64_t since)
{
	struct dbx_watch_config cfg = {.boot = boot && *boot ? boot : NULL, .since = since,
				       .want_data = true};
	struct dbx_watch_callbacks cb = {.hello = on_hello, .event = on_event, .down = on_down};
	int r;

	r = dbx_watch_start(d->client, &cfg, &cb, d, &d->watch);
	if (r < 0)
		dfs_log(DFS_WARN, "event stream: %s: running without push invalidation",
			dbx_error_last());
	return r;
}

void events_stop(struct dfs *d)
{
	d->watch = dbx_watch_free(d->watch);
	atomic_store(&d->healthy, false);
}
