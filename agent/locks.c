/* locks.c: POST /fs/v1/lock (PROTOCOL.md §2.2) and the lock sessions' descriptors.
 *
 * Locks are real kernel locks held by the agent, so processes inside the devbox see them:
 * flock(2) or open-file-description byte-range locks (F_OFD_SETLK) on a descriptor kept per
 * (session, path, kind, owner). A session is an open /fs/v1/events WebSocket (events.c); when it
 * closes, events.c calls locks_session_end(), which drops the session's descriptors and with
 * them every lock they hold.
 *
 * Threads: the lock route runs on workers; locks_session_end() on the service thread. The table
 * is protected by `mu`; an entry is refcounted (a worker waiting for a lock holds a ref), so a
 * session ending while a request waits closes the descriptor only when that request is done. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "fsapi.h"
#include "misc.h"
#include "path.h"

#define LOCK_TIMEOUT_DEFAULT 30000 /* ms */
#define LOCK_TIMEOUT_MAX     3600000
#define LOCK_FDS_PER_SESSION 4096
#define LOCK_WAITERS_MAX     32  /* wait=1 requests waiting at once: each holds a worker */
#define LOCK_KEY_MAX         256 /* session and owner ids */

struct lockfd {
	struct lockfd *next; /* mu */
	char *session, *owner;
	char rel[PATH_MAX];
	bool posix;
	bool dead;     /* mu: the session ended; the fd is closed when the last ref goes */
	unsigned refs; /* mu */
	int fd;        /* immutable while refs > 0 */
	dev_t dev;     /* the file the fd is open on */
	ino_t ino;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct lockfd *table; /* mu */
static atomic_int waiters;   /* wait=1 requests in their retry loop */

static void lockfd_unref(struct lockfd *l)
{
	pthread_mutex_lock(&mu);
	bool last = --l->refs == 0;
	pthread_mutex_unlock(&mu);
	if (!last)
		return;
	if (l->fd >= 0)
		close(l->fd);
	free(l->session);
	free(l->owner);
	free(l);
}

/* (mu held) The session's entry for (rel, kind, owner) on the file dev/ino, or NULL; *count
 * gets the number of the session's entries. */
static struct lockfd *find_locked(const char *session, const char *rel, bool posix,
				  const char *owner, const struct stat *st, unsigned *count)
{
	struct lockfd *hit = NULL;
	*count = 0;
	for (struct lockfd *l = table; l; l = l->next) {
		if (strcmp(l->session, session))
			continue;
		(*count)++;
		if (l->posix == posix && !strcmp(l->rel, rel) && !strcmp(l->owner, owner) &&
		    l->dev == st->st_dev && l->ino == st->st_ino)
			hit = l;
	}
	return hit;
}

/* Finds or opens the descriptor of (session, rel, kind, owner); returns it with a ref, or NULL
 * (with 0) when @create is false and there is none. */
static int lockfd_get(struct fs_op *o, const char *session, const char *rel, bool posix,
		      const char *owner, bool create, struct lockfd **ret)
{
	/* Which file the path names now. O_PATH: a real open for writing would show up in the
	 * change events (close-after-write) on every lock request. */
	int fd = dbx_path_open(o->ag->rootfd, rel, O_PATH, 0, 0);
	if (fd < 0)
		return fs_fail(o, fd, "lock %s", rel);
	struct stat st;
	int e = fstat(fd, &st) < 0 ? -errno : 0;
	close(fd);
	if (e < 0)
		return fs_fail(o, e, "lock %s", rel);
	unsigned count;
	pthread_mutex_lock(&mu);
	struct lockfd *l = find_locked(session, rel, posix, owner, &st, &count);
	if (l)
		l->refs++;
	pthread_mutex_unlock(&mu);
	*ret = l;
	if (l || !create)
		return 0; /* unlocking what this session never locked: nothing to do */

	/* A new descriptor: flock needs no access mode, an OFD write lock a writable one. */
	fd = -EACCES;
	if (posix)
		fd = dbx_path_open(o->ag->rootfd, rel, O_RDWR | O_NOCTTY | O_NONBLOCK, 0, 0);
	if (fd == -EISDIR || fd == -EACCES || fd == -EROFS || fd == -ETXTBSY)
		fd = dbx_path_open(o->ag->rootfd, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, 0);
	if (fd < 0)
		return fs_fail(o, fd, "lock %s", rel);
	if (fstat(fd, &st) < 0) {
		e = fs_fail(o, errno, "lock %s", rel);
		close(fd);
		return e;
	}
	l = calloc(1, sizeof(*l));
	if (!l || !(l->session = strdup(session)) || !(l->owner = strdup(owner))) {
		if (l)
			free(l->session);
		free(l);
		close(fd);
		return fs_fail(o, ENOMEM, "lock %s", rel);
	}
	snprintf(l->rel, sizeof(l->rel), "%s", rel);
	l->posix = posix;
	l->fd = fd;
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	l->refs = 2; /* the table's and the caller's */
	pthread_mutex_lock(&mu);
	/* Another request of the session may have added it meanwhile: use that one. */
	struct lockfd *other = find_locked(session, rel, posix, owner, &st, &count);
	if (other || count >= LOCK_FDS_PER_SESSION) {
		if (other)
			other->refs++;
		pthread_mutex_unlock(&mu);
		l->refs = 1;
		lockfd_unref(l);
		*ret = other;
		if (!other)
			return fs_fail(o, ENOLCK, "lock %s: over %d locked files in the session",
				       rel, LOCK_FDS_PER_SESSION);
		return 0;
	}
	l->next = table;
	table = l;
	pthread_mutex_unlock(&mu);
	*ret = l;
	return 0;
}

void locks_session_end(struct agent *ag, const char *session)
{
	struct lockfd *gone = NULL;
	pthread_mutex_lock(&mu);
	for (struct lockfd **pp = &table; *pp;) {
		struct lockfd *l = *pp;
		if (strcmp(l->session, session)) {
			pp = &l->next;
			continue;
		}
		*pp = l->next;
		l->dead = true;
		l->next = gone;
		gone = l;
	}
	pthread_mutex_unlock(&mu);
	while (gone) {
		struct lockfd *l = gone;
		gone = l->next;
		lockfd_unref(l); /* the table's ref: closing the fd releases its locks */
	}
}

/* One non-blocking attempt: 0, -EAGAIN (conflict) or another -errno. */
static int try_lock(struct lockfd *l, int type, uint64_t start, uint64_t len)
{
	if (!l->posix) {
		int op = type == F_UNLCK ? LOCK_UN : type == F_RDLCK ? LOCK_SH : LOCK_EX;
		if (flock(l->fd, op | LOCK_NB) < 0)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		return 0;
	}
	struct flock fl = {
		.l_type = (short)type,
		.l_whence = SEEK_SET,
		.l_start = (off_t)start,
		.l_len = (off_t)len,
	};
	if (fcntl(l->fd, F_OFD_SETLK, &fl) < 0) {
		if (errno == EBADF) /* a write lock on a file we may only read */
			return -EACCES;
		return errno == EACCES ? -EAGAIN : -errno;
	}
	return 0;
}

static int do_lock(struct fs_op *o, struct req *rq)
{
	char rel[PATH_MAX];
	const char *session = o->a->get(o->a->ctx, "session");
	const char *kind = o->a->get(o->a->ctx, "kind");
	const char *opname = o->a->get(o->a->ctx, "op");
	const char *owner = o->a->get(o->a->ctx, "owner");
	uint64_t start, len, timeout;
	bool wait;
	int r = fs_arg_path(o, "path", rel);
	if (r < 0 || (r = fs_arg_u64(o, "start", 0, &start)) < 0 ||
	    (r = fs_arg_u64(o, "len", 0, &len)) < 0 ||
	    (r = fs_arg_bool(o, "wait", false, &wait)) < 0 ||
	    (r = fs_arg_u64(o, "timeout", LOCK_TIMEOUT_DEFAULT, &timeout)) < 0)
		return r;
	if (!session || !*session || strlen(session) > LOCK_KEY_MAX)
		return fs_fail(o, EINVAL, "lock %s: missing or bad argument `session`", rel);
	if (!owner)
		owner = "";
	if (strlen(owner) > LOCK_KEY_MAX)
		return fs_fail(o, EINVAL, "lock %s: argument `owner` too long", rel);
	bool posix;
	if (kind && !strcmp(kind, "flock"))
		posix = false;
	else if (kind && !strcmp(kind, "posix"))
		posix = true;
	else
		return fs_fail(o, EINVAL, "lock %s: kind must be flock or posix", rel);
	int type;
	if (opname && !strcmp(opname, "sh"))
		type = F_RDLCK;
	else if (opname && !strcmp(opname, "ex"))
		type = F_WRLCK;
	else if (opname && !strcmp(opname, "un"))
		type = F_UNLCK;
	else
		return fs_fail(o, EINVAL, "lock %s: op must be sh, ex or un", rel);
	if (timeout > LOCK_TIMEOUT_MAX)
		timeout = LOCK_TIMEOUT_MAX;
	if (!events_session_alive(o->ag, session))
		return fs_fail(o, EINVAL, "lock %s: no open lock session %.64s", rel, session);

	struct lockfd *l = NULL;
	r = lockfd_get(o, session, rel, posix, owner, type != F_UNLCK, &l);
	if (r < 0)
		return r;
	if (!l) {
		o->json = cJSON_CreateObject();
		return 0;
	}
	uint64_t deadline = dbx_now_ms() + timeout;
	unsigned backoff = 10;
	bool counted = false;
	const char *why = NULL;
	for (;;) {
		r = try_lock(l, type, start, len);
		if (r != -EAGAIN || !wait)
			break;
		if (!counted && atomic_fetch_add(&waiters, 1) >= LOCK_WAITERS_MAX) {
			atomic_fetch_sub(&waiters, 1);
			why = "too many lock requests waiting; retry";
			r = -ENOLCK;
			break;
		}
		counted = true;
		if (req_gone(rq) || atomic_load(&o->ag->stopping)) {
			r = -ECANCELED;
			break;
		}
		pthread_mutex_lock(&mu);
		bool gone = l->dead;
		pthread_mutex_unlock(&mu);
		if (gone) {
			why = "the lock session ended";
			r = -ENOLCK;
			break;
		}
		if (dbx_now_ms() >= deadline) {
			r = -ETIMEDOUT;
			break;
		}
		struct timespec ts = {0, (long)backoff * 1000000L};
		nanosleep(&ts, NULL);
		if (backoff < 20)
			backoff += 5;
	}
	if (counted)
		atomic_fetch_sub(&waiters, 1);
	{
		pthread_mutex_lock(&mu);
		bool dead = l->dead;
		pthread_mutex_unlock(&mu);
		/* The session ended while we worked (maybe before our entry existed, so that
		 * locks_session_end() did not see it): its locks are gone, this one too — and on
		 * every outcome, so an entry created for a dead session never stays behind. */
		if (dead || !events_session_alive(o->ag, session)) {
			if (r == 0)
				try_lock(l, F_UNLCK, start, len);
			locks_session_end(o->ag, session);
			if (r == 0 || r == -EAGAIN) {
				why = "the lock session ended";
				r = -ENOLCK;
			}
		}
	}
	lockfd_unref(l);
	if (r == -EAGAIN)
		return fs_fail(o, EAGAIN, "lock %s: held by someone else", rel);
	if (r == -ETIMEDOUT)
		return fs_fail(o, ETIMEDOUT, "lock %s: not granted within %llu ms", rel,
			       (unsigned long long)timeout);
	if (why)
		return fs_fail(o, r, "lock %s: %s", rel, why);
	if (r < 0)
		return fs_fail(o, r, "lock %s", rel);
	o->json = cJSON_CreateObject();
	return 0;
}

static const char *query_get(void *ctx, const char *name)
{
	return req_query(ctx, name);
}

void fs_lock_route(struct req *r)
{
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a};
	do_lock(&o, r);
	fs_reply_op(r, &o);
}
