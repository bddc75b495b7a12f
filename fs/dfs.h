/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devbox-fs internal contract: the daemon context and the modules' entry points.
 *
 * Threads (see main.c for the full model): libfuse workers run the ops (ops.c, io.c); the watch
 * thread of libdevbox applies change events to the mirror (events.c); the notifier threads
 * (notify.c, one per queue shard) are the only callers of fuse_lowlevel_notify_*; one stats thread writes the counters
 * file (stats.c); the uploaders of the write queue (wq.c) send buffered writes.  Lock order,
 * where two are ever held together: shadow.lock -> inode.wlock -> mirror.lock -> itab.lock ->
 * inode.lock, and wq.lock last of all (under it only the leaf locks of the logger and of the
 * notifier's queue are taken).  No lock is held across a remote call except shadow.lock
 * (write-back shadow, shadow.c) and mut_lock (shared, by a mutation while its request is out,
 * not while it waits for uploads; exclusive, by the watch thread applying one event or
 * swapping in a reloaded tree; taken before any other lock); inode.wlock (write buffer) is held
 * while a writer waits, bounded, for room in the write queue, never across an upload.
 */
#ifndef DFS_H
#define DFS_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <fuse_lowlevel.h>

#include <devbox/devbox.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define DFS_SMALL_FILE   (512u * 1024)  /* fetched whole on first read, cached */
#define DFS_CACHE_BUDGET (128ull << 20) /* total bytes of whole-file cache */
#define DFS_WBUF_MAX     (4u << 20)     /* write buffer per inode */
#define DFS_IO_MAX       (1u << 20)     /* max_read / max_write */

/* ---- logging (main.c) ----------------------------------------------------------------- */
enum { DFS_ERR, DFS_WARN, DFS_INFO, DFS_DEBUG };
void dfs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- small intrusive hash table (util.c) ---------------------------------------------- */
struct hnode {
	struct hnode *next;
	uint64_t hash;
};
struct htab {
	struct hnode **b;
	size_t nb, n;
};
int htab_init(struct htab *t);
void htab_fini(struct htab *t);
void htab_add(struct htab *t, struct hnode *n, uint64_t hash);
void htab_del(struct htab *t, struct hnode *n);
/* Iterate a bucket: for (h = htab_first(t, hash); h; h = htab_next(h, hash)) */
struct hnode *htab_first(const struct htab *t, uint64_t hash);
struct hnode *htab_next(struct hnode *n, uint64_t hash);
uint64_t hash_str(const char *s, uint64_t seed);
#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

char *path_join(const char *dir, const char *name); /* "" + "a" = "a"; NULL on ENOMEM */
const char *path_base(const char *path);
char *path_dir(const char *path); /* "a/b" -> "a", "a" -> "" */
uint64_t now_ms(void);

static inline int dfs_ts_cmp(const struct timespec *a, const struct timespec *b)
{
	if (a->tv_sec != b->tv_sec)
		return a->tv_sec < b->tv_sec ? -1 : 1;
	if (a->tv_nsec != b->tv_nsec)
		return a->tv_nsec < b->tv_nsec ? -1 : 1;
	return 0;
}
bool attr_same(const struct dbx_attr *a, const struct dbx_attr *b);
bool attr_same_content(const struct dbx_attr *a, const struct dbx_attr *b);
void attr_to_stat(const struct dbx_attr *a, struct stat *st);

/* Open file and directory handles, listed so that those the kernel never released (a stop
 * while closes were in flight) are freed at exit (util.c). */
struct dfs_handle {
	struct dfs_handle *prev, *next;
	void (*free)(struct dfs_handle *h);
};
struct dfs;
void handle_add(struct dfs *d, struct dfs_handle *h, void (*free_fn)(struct dfs_handle *));
void handle_del(struct dfs *d, struct dfs_handle *h);
void handles_free(struct dfs *d);

/* ---- metadata mirror (mirror.c) ------------------------------------------------------- */
struct ment {
	struct hnode h; /* mirror.names, keyed by (parent, name) */
	struct ment *parent;
	char *name;
	struct ment *kids, *kids_tail; /* children in readdir order */
	struct ment *prev, *next;      /* siblings */
	size_t nkids;
	struct dbx_attr attr;
	char *target;        /* symlinks */
	bool complete;       /* dir: every child is known */
	bool stale;          /* attrs need a remote refresh (dir changed under it) */
	bool seen;           /* scratch for mirror_fill_dir */
	uint64_t seq;        /* event seq this state reflects (events <= it are older) */
	uint64_t dseq;       /* dir: seq of the last change of its names (ours: reply seq + 1) */
	uint32_t names_gen;  /* dir: bumped by every name added, removed or changing type */
	uint32_t stale_gen;  /* bumped whenever marked stale: a refresh sent before keeps it */
	bool refresh_queued; /* a background stat of it is queued (ra.c) */
	bool own;            /* attr came from the reply to our own change */
	uint32_t own_gen;    /* bumped by each such reply */
};

struct mirror {
	pthread_mutex_t lock; /* everything below and every ment */
	struct htab names;
	struct ment *root;
	uint64_t gen;      /* bumped on every change: ops re-check an answer given meanwhile */
	struct htab tombs; /* names removed (by events or our own ops), with their seq */
	uint64_t tomb_floor; /* newest tomb forgotten: listings older than it are refused */
	uint64_t stream_seq; /* last event applied: tombs at or below it are done with events */
	struct htab negs;    /* names the kernel may cache as absent (mirror_neg_note) */
	uint64_t negs_all_until_ms; /* too many to track: until then, any name may be */
	size_t entries;
	/* While a resync loads the tree: the paths our operations changed meanwhile. */
	bool journaling, jlost;
	char **jv;
	size_t jn, jcap;
};

int mirror_init(struct mirror *m);
void mirror_fini(struct mirror *m);
/* All below: caller holds m->lock. */
struct ment *mirror_find(struct mirror *m, const char *path);
/* Sets (creating) path's entry; NULL if the parent is unknown or on ENOMEM. */
struct ment *mirror_set(struct mirror *m, const char *path, const struct dbx_attr *a,
			const char *target);
void mirror_remove(struct mirror *m, const char *path);
void mirror_detach(struct mirror *m, struct ment *e); /* frees e and its subtree */
/* Moves from over to (replacing it); exchange swaps the two.  Unknown source: removes to. */
void mirror_move(struct mirror *m, const char *from, const char *to, bool exchange);
/* A listing (names + attrs) replacing the children of dir. */
struct listing {
	size_t n, cap;
	struct lent {
		char *name;
		struct dbx_attr attr;
		char *target;
	} * v;
	struct dbx_attr dir;
};
void listing_free(struct listing *l);
int listing_add(struct listing *l, const char *name, const struct dbx_attr *a, const char *target);
/* Merges a listing of dir made at seq (the reply's event position) into the mirror, keeping
 * every newer state; 0 (dir complete), 1 (refused: too old to merge), or -errno. */
int mirror_fill_dir(struct mirror *m, const char *path, const struct listing *l, uint64_t seq);
/* Loads the tree under "" into m (which must be empty).  ret_seq/ret_boot: the snapshot's
 * event position. */
struct dfs;
int mirror_load(struct dfs *d, struct mirror *m, uint64_t *ret_seq, char ret_boot[33]);
/* Resync: the tree is loaded into a new mirror while operations go on against m; what they
 * changed (journal) is copied from m into the new mirror before the two are swapped.  replay:
 * false if some change could not be recorded (out of memory). */
void mirror_journal_begin(struct mirror *m);
bool mirror_journal_replay(struct mirror *m, struct mirror *nw);
void mirror_journal_end(struct mirror *m);
/* Detaches old root (for resync): moves src's content into dst and leaves src empty. */
void mirror_swap(struct mirror *a, struct mirror *b);
/* Tombstones: path removed at seq (by an event, or our own op: then its reply seq + 1); events
 * for it up to seq are older, and so is a listing made before seq. */
void mirror_tomb_set(struct mirror *m, const char *path, uint64_t seq);
uint64_t mirror_tomb_get(struct mirror *m, const char *path);
/* Our own removal of path (at seq) succeeded: its delete event, whenever it comes,
 * is the echo, even if path holds a newer object of ours by then (its seq cannot tell: the
 * agent may publish the delete after our next create's reply).  take: true (and counted
 * off) for such an echo.  forget: after a resync, no echo is owed. */
void mirror_tomb_expect_echo(struct mirror *m, const char *path, uint64_t seq);
/* True while the delete event of our own removal of path has not come back: every event
 * about path published before it is about the removed object. */
bool mirror_tomb_echo_pending(struct mirror *m, const char *path);
bool mirror_tomb_take_echo(struct mirror *m, const char *path);
void mirror_tomb_forget_echoes(struct mirror *m);
/* A lookup of path is answered ENOENT, cached by the kernel for ttl seconds. */
void mirror_neg_note(struct mirror *m, const char *path, double ttl);
/* True if the kernel may still cache path as absent (then forgotten: the caller drops it). */
bool mirror_neg_take(struct mirror *m, const char *path);
/* Before m takes over the resynced tree nw: the names the kernel may cache as absent that nw
 * holds are invalidated (their events were lost). */
void mirror_negs_resync(struct dfs *d, struct mirror *m, struct mirror *nw);
char *ment_path(const struct ment *e); /* "" for the root; NULL on ENOMEM */
/* Marks e's attributes stale and queues a background refresh (caller holds mirror.lock). */
void mirror_mark_stale(struct dfs *d, struct ment *e);

/* ---- inode table (inode.c) ------------------------------------------------------------ */
/* The run of writes not yet handed to the write queue (inode.wlock). */
struct wbuf {
	char *buf;
	size_t len, cap;
	uint64_t off;
	size_t hint; /* capacity to start the next buffer with (the last run filled one) */
};

struct dfs_inode {
	struct hnode h_id, h_rino, h_path; /* itab hashes */
	fuse_ino_t nodeid;
	uint64_t rino;
	char *path;       /* itab.lock; the last path this inode was reached by */
	uint64_t nlookup; /* itab.lock */
	bool rino_hashed, path_hashed;
	uint32_t mode; /* type bits, fixed */

	pthread_mutex_t lock; /* fields below */
	struct dbx_attr attr; /* last attr known (used when the mirror has no entry) */
	char *cache;          /* whole small file */
	size_t cache_len;
	char cache_ver[DBX_VER_MAX];
	char kc_ver[DBX_VER_MAX]; /* version the kernel page cache holds, "" unknown */
	struct ra *ra;            /* read-ahead slots (ra.c), NULL until a big file is read */
	int opens;
	bool posix_locked;
	bool pinned; /* cache holds the content of a removed open file */

	pthread_mutex_t wlock; /* the write buffer; held while handing it to the write queue */
	struct wbuf wb;

	/* inode.lock: the write-back shadow (shadow.c), allocated at the first write and kept;
	 * shadow_live_locked() says whether it holds unsent writes. */
	struct shadow *shadow;
};

struct itab {
	pthread_mutex_t lock;
	struct htab by_id, by_rino, by_path;
	fuse_ino_t next_id;
	size_t n;
};

int itab_init(struct itab *t);
void itab_fini(struct dfs *d);
/* Finds or creates the inode for (path, attr) and adds one lookup. */
struct dfs_inode *itab_ref(struct dfs *d, const char *path, const struct dbx_attr *a);
struct dfs_inode *itab_get(struct dfs *d, fuse_ino_t nodeid); /* borrowed (kernel holds it) */
void itab_forget(struct dfs *d, fuse_ino_t nodeid, uint64_t n);
/* A copy of nodeid's path: 0, -ENOMEM, or -ESTALE when the inode is unknown or its name was
 * removed or taken over by another object (what its open handles do must then fail rather
 * than reach whatever holds that name now). */
int itab_path(struct dfs *d, fuse_ino_t nodeid, char **ret);
/* The last path nodeid had, also once removed: for messages only.  NULL if unknown. */
char *itab_last_path(struct dfs *d, fuse_ino_t nodeid);
/* True while the kernel holds (or is being handed) nodeid: lookups not yet forgotten. */
bool itab_handed_out(struct dfs *d, fuse_ino_t nodeid);
fuse_ino_t itab_nodeid_of(struct dfs *d, const char *path); /* 0 if none */
void itab_rename(struct dfs *d, const char *from, const char *to, bool exchange);
void itab_repath(struct dfs *d, struct dfs_inode *i, const char *path);
void itab_unlinked(struct dfs *d, const char *path, const struct dbx_attr *last);
/* itab_unlinked, except when the node at path is the remote object keep_rino (nonzero): a
 * lookup racing a rename event may already have put the moved object there. */
void itab_unlinked_but(struct dfs *d, const char *path, const struct dbx_attr *last,
		       uint64_t keep_rino);
/* Content of path's version a (from an event): becomes its inode's whole-file cache when the
 * kernel knows that inode and the budget allows; takes buf over if it returns true. */
bool itab_offer_content(struct dfs *d, const char *path, const struct dbx_attr *a, char *buf,
			size_t len);
void inode_set_attr(struct dfs_inode *ino, const struct dbx_attr *a);

/* ---- notifier (notify.c) -------------------------------------------------------------- */
enum { NQ_ENTRY, NQ_INODE_ATTR, NQ_INODE_DATA };
int notify_start(struct dfs *d);
void notify_stop(struct dfs *d);
/* Queue a kernel invalidation by path (resolved to a nodeid by the notifier). */
void notify_path(struct dfs *d, int kind, const char *path);
void notify_nodeid(struct dfs *d, int kind, fuse_ino_t nodeid, const char *name);
/* An inode invalidation delay_ms from now (see notify.c: a reply the kernel may take in after
 * the invalidation meant to follow it). */
void notify_nodeid_later(struct dfs *d, int kind, fuse_ino_t nodeid, unsigned delay_ms);

/* ---- events (events.c) ---------------------------------------------------------------- */
int events_start(struct dfs *d, const char *boot, uint64_t since);
void events_stop(struct dfs *d);

/* ---- echo (echo.c): replaying remote changes through the mount for inotify (-o echo) -- */
enum {
	EC_CREATE,
	EC_MKDIR,
	EC_SYMLINK,
	EC_MKFIFO,
	EC_MODIFY,
	EC_ATTRIB,
	EC_UNLINK,
	EC_RMDIR,
	EC_RENAME
};
int echo_start(struct dfs *d, const char *mnt);
void echo_stop(struct dfs *d); /* asks the thread to stop */
void echo_join(struct dfs *d); /* after the session is gone */
void echo_queue(struct dfs *d, int kind, const char *path, const char *to, const struct dbx_attr *a,
		const char *target);
bool echo_req(struct dfs *d, fuse_req_t req);
/* A lookup made by the echo thread: 1 (*ret: the replayed object's attrs), -ENOENT (pretend
 * absent so the kernel creates it), 0 (answer normally). */
int echo_lookup(struct dfs *d, const char *path, struct dbx_attr *ret);

/* ---- stats (stats.c) ------------------------------------------------------------------ */
enum dfs_op {
	OP_LOOKUP,
	OP_FORGET,
	OP_GETATTR,
	OP_SETATTR,
	OP_READLINK,
	OP_MKNOD,
	OP_MKDIR,
	OP_UNLINK,
	OP_RMDIR,
	OP_SYMLINK,
	OP_RENAME,
	OP_LINK,
	OP_OPEN,
	OP_READ,
	OP_WRITE,
	OP_FLUSH,
	OP_RELEASE,
	OP_FSYNC,
	OP_OPENDIR,
	OP_READDIR,
	OP_READDIRPLUS,
	OP_RELEASEDIR,
	OP_STATFS,
	OP_SETXATTR,
	OP_GETXATTR,
	OP_LISTXATTR,
	OP_REMOVEXATTR,
	OP_ACCESS,
	OP_CREATE,
	OP_GETLK,
	OP_SETLK,
	OP_FLOCK,
	OP_INTERRUPTED,
	OP__N
};
struct dfs_stats {
	atomic_uint_fast64_t ops[OP__N];
	atomic_uint_fast64_t remote_calls, remote_errors;
	atomic_uint_fast64_t lookup_hits, negative_hits, getattr_hits, readdir_hits;
	atomic_uint_fast64_t readlink_hits, read_cache_hits, read_cache_misses;
	atomic_uint_fast64_t bytes_read, bytes_written, bytes_fetched, bytes_uploaded;
	atomic_uint_fast64_t events, events_echo, invalidations, resyncs, stream_downs;
	atomic_uint_fast64_t events_data; /* contents that came with events and were kept */
	atomic_uint_fast64_t echoes_replayed;
	atomic_uint_fast64_t last_event_seq, agent_seq;
	/* write queue: bytes queued now and at most, jobs, retried attempts, jobs whose bytes
	 * were lost (refused, or given up) and those bytes */
	atomic_uint_fast64_t wq_bytes, wq_bytes_max, wq_jobs, wq_retries, wq_failed, wq_lost_bytes;
};
#define STAT_INC(d, f)    atomic_fetch_add_explicit(&(d)->st.f, 1, memory_order_relaxed)
#define STAT_ADD(d, f, v) atomic_fetch_add_explicit(&(d)->st.f, (v), memory_order_relaxed)
const char *dfs_op_name(enum dfs_op op);
int stats_start(struct dfs *d);
void stats_stop(struct dfs *d);
void stats_kick(void); /* async-signal-safe: write the file now */

/* ---- the daemon ----------------------------------------------------------------------- */
struct nq;      /* notify.c */
struct ra_pool; /* ra.c */
struct echo;    /* echo.c */
struct wq;      /* wq.c */

struct dfs {
	dbx_client *client;
	struct fuse_session *se;
	struct mirror mirror;
	struct itab itab;
	struct dfs_stats st;
	char *box;
	char *stats_path;

	/* options */
	bool debug;
	bool hard;         /* -o hard: no per-op deadline */
	int op_timeout_ms; /* -o timeout=S (soft) */
	double ttl;        /* entry/attr timeout while the stream is healthy */
	double ttl_down;   /* ... while it is down */
	unsigned max_threads;
	bool async_close;   /* -o async_close: flush/release do not wait for the upload */
	uint64_t async_max; /* -o async_max=MiB: the write queue's byte cap with async_close */

	/* Mutating ops hold it shared from their remote call until the mirror has their reply;
	 * the event thread holds it exclusively while applying an event (writer-preferring). */
	pthread_rwlock_t mut_lock;

	/* event stream */
	dbx_watch *watch;
	atomic_bool healthy;       /* stream up and mirror in sync */
	atomic_bool mounted;       /* session ready: notifications allowed */
	pthread_mutex_t sess_lock; /* session below */
	char session[64];
	char boot[33];
	bool had_hello;

	pthread_mutex_t statfs_lock; /* the two below */
	struct statvfs statfs_copy;
	uint64_t statfs_at;

	/* cache budget */
	atomic_uint_fast64_t cache_bytes;

	pthread_mutex_t handles_lock; /* the list below */
	struct dfs_handle *handles;

	struct nq *nq;
	struct ra_pool *ra;
	struct echo *echo;
	struct wq *wq;
	atomic_int echo_tid; /* the echo thread's tid, 0 if none */
	bool echo_on;        /* -o echo */
	pthread_t stats_thread;
	bool stats_running;
	pthread_mutex_t stats_lock;
	bool stats_stop;
	uint64_t start_ms;
};

extern const struct fuse_lowlevel_ops dfs_ops;

/* ops.c helpers shared with io.c */
struct opctx {
	fuse_req_t req;
	volatile int cancelled;
};
void op_begin(struct dfs *d, struct opctx *o, fuse_req_t req, bool may_wait);
int op_end(struct dfs *d, struct opctx *o, int r);
double dfs_ttl(struct dfs *d);
/* Transport failures (timeouts on soft mounts, lost connections) become EIO. */
int dfs_wire_errno(struct dfs *d, int r);
uint64_t reply_seq(void); /* X-Dbx-Seq of this thread's last reply, 0 if none */
/* Current attr of path: mirror when healthy, else a remote stat (refreshing the mirror). */
int dfs_getattr_path(struct dfs *d, const char *path, struct dbx_attr *ret, char **ret_target,
		     bool *ret_hit);
/* Records a mutation's reply in the mirror and marks the parent's attrs stale. */
void dfs_mirror_update(struct dfs *d, const char *path, const struct dbx_attr *a,
		       const char *target, bool parent_changed);

/* ra.c: read-ahead for big files */
int ra_start(struct dfs *d);
void ra_stop(struct dfs *d);
/* Answers the read from prefetched chunks (true) or leaves it to the caller (false). */
bool ra_read(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const char *path, const char *ver,
	     uint64_t fsize, size_t size, uint64_t off);
/* A read the caller fetched itself: keep the read-ahead going. */
void ra_note(struct dfs *d, struct dfs_inode *i, const char *path, const char *ver, uint64_t fsize,
	     size_t size, uint64_t off);
void ra_release(struct dfs *d, struct dfs_inode *i); /* after the last close */
void ra_free(struct dfs_inode *i);
/* Queues a background stat of path (a directory our own change made stale). */
void ra_refresh(struct dfs *d, const char *path);
/* A remote stat of path that leaves the entry stale if it was marked again meanwhile. */
int dfs_refresh_attr(struct dfs *d, const char *path, struct dbx_attr *ret);

/* ops.c helpers for xattr.c */
char *dfs_path_of(struct dfs *d, fuse_req_t req, fuse_ino_t ino); /* replies the error itself */
int dfs_inode_attr(struct dfs *d, fuse_req_t req, fuse_ino_t ino, struct dbx_attr *ret,
		   bool *ret_hit);

/* xattr.c */
void dfs_statfs(fuse_req_t req, fuse_ino_t ino);
void dfs_access(fuse_req_t req, fuse_ino_t ino, int mask);
void dfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		  int flags);
void dfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void dfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void dfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

/* io.c */
void io_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void io_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void io_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void io_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	      struct fuse_file_info *fi);
void io_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void io_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void io_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void io_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock);
void io_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
	      int sleep);
void io_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op);
/* Hands ino's buffered writes to the write queue and waits for all its uploads; returns EIO
 * if they could not be stored now (the agent out of reach), while a refusal (ENOSPC ...) is
 * left for the next write, flush or fsync of the file.  io_flush_path does the same for path
 * and everything below it (rename). */
int io_flush_inode(struct dfs *d, struct dfs_inode *ino);
int io_flush_path(struct dfs *d, const char *path);
/* -o async_close: chmod/chown/utimens (to_set, values in st) of a file with queued uploads
 * are queued behind them; *ret gets the attributes to answer with.  1 queued, 0 not (do it
 * now, after io_flush_inode), -errno. */
int io_setattr_queued(struct dfs *d, struct dfs_inode *ino, const char *path, const struct stat *st,
		      int to_set, struct dbx_attr *ret);
/* -o async_close: i's attributes with its queued uploads applied (1), without waiting for
 * them; 0 when nothing is queued (the caller waits and asks as usual). */
int io_attr_queued(struct dfs *d, struct dfs_inode *i, struct dbx_attr *ret);
void io_drop_cache(struct dfs *d, struct dfs_inode *ino);
void io_preserve(struct dfs *d, const char *path);

/* wq.c: the write queue (see there) */
enum {
	WQ_CONSUME = 1, /* wq_wait: report (and clear) a refusal not reported yet */
	WQ_ASYNC = 2,   /* wq_submit: handed over by a close that does not wait */
	WQ_FORCE = 4,   /* wq_submit: never wait for room (exit drain) */
};
int wq_start(struct dfs *d);
/* Drains the queue (bounded: 10 x timeout), stops and joins the uploaders; 1 if any data
 * accepted by the daemon was never stored (each such path is logged), else 0. */
int wq_stop(struct dfs *d);
/* Queues wb's run (taking its buffer) after waiting for room; caller holds i->wlock.  On error
 * wb is left as it was. */
int wq_submit(struct dfs *d, struct dfs_inode *i, const char *path, struct wbuf *wb, unsigned flags,
	      const volatile int *cancel);
/* A DFS_WBUF_MAX buffer for a write run (reused from finished uploads when possible). */
char *wq_buf(struct dfs *d);
/* Waits for the uploads i had queued when called (a stalled file is retried first). */
int wq_wait(struct dfs *d, struct dfs_inode *i, unsigned flags, const volatile int *cancel);
int wq_wait_path(struct dfs *d, const char *path, bool prefix);
/* Queues an attribute change behind i's queued uploads (see io_setattr_queued). */
int wq_submit_attr(struct dfs *d, struct dfs_inode *i, const char *path, const struct stat *st,
		   int to_set, struct dbx_attr *ret);
/* i's refusal not reported yet (cleared), or with stalled_too 1 if its uploads are stalled. */
int wq_error(struct dfs *d, struct dfs_inode *i, bool stalled_too);
/* A refusal by the agent (ENOSPC, EACCES, ...): final, unlike a transport failure. */
bool wq_refused(int r);
/* Drops i's stalled uploads (the last close reported their failure); returns the bytes. */
uint64_t wq_drop(struct dfs *d, struct dfs_inode *i);

/* ---- write-back shadow of small files (shadow.c) ---------------------------------------
 * While a regular file of at most DFS_SMALL_FILE bytes is written, its whole content is kept
 * in the daemon: writes change it, reads and getattr are answered from it, and its dirty span
 * goes to the agent in one write at flush, fsync, setattr, rename, link, unlink or when the
 * file would outgrow the limit; then it stays as the whole-file cache.  Lock: shadow.lock,
 * held across its fetch and upload, is taken before inode.wlock (see shadow.c). */
struct shadow;
enum {
	SHADOW_FSYNC = 1,   /* shadow_flush: with the agent's fsync */
	SHADOW_ASYNC = 2,   /* shadow_flush: hand the span to the write queue, not waited for */
	SHADOW_CONSUME = 4, /* shadow_flush: report (and clear) a refusal not reported yet */
};
/* Takes the write (1: replied, also with an error), or 0: io.c's path must take it and then
 * call shadow_write_end(i) (until then no shadow can appear beside its buffer). */
int shadow_write(struct dfs *d, fuse_req_t req, struct dfs_inode *i, const char *buf,
		 size_t size, uint64_t off);
void shadow_write_end(struct dfs_inode *i);
/* Replies from the shadow (true) or leaves the read to the caller (false). */
bool shadow_read(struct dfs *d, fuse_req_t req, struct dfs_inode *i, size_t size, uint64_t off);
/* Whether unsent writes of a shadow exist (_locked: caller holds inode.lock). */
bool shadow_live(struct dfs_inode *i);
bool shadow_live_locked(const struct dfs_inode *i);
/* Local size, blocks, mtime and ctime over the agent's, while unsent writes exist. */
void shadow_attr(struct dfs_inode *i, struct dbx_attr *a);
void shadow_stat(struct dfs_inode *i, struct stat *st);
/* Uploads the dirty span (flags SHADOW_*): 1 sent, 0 nothing to send, or -errno (transport
 * failures as EIO, the bytes kept; refusals drop them and are returned only with
 * SHADOW_CONSUME, else kept for the next consumer).  Never with inode.wlock held. */
int shadow_flush(struct dfs *d, struct dfs_inode *i, unsigned flags, const volatile int *cancel);
/* Drops unsent writes (the last close reported their failure); returns their bytes. */
uint64_t shadow_drop(struct dfs *d, struct dfs_inode *i);
void shadow_free(struct dfs *d, struct dfs_inode *i); /* inode teardown */

#endif
