/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The /fs/v1 file API of devbox-agent (agent/PROTOCOL.md §2): one call per operation, the
 * errno of the remote system call returned as -errno, new attributes returned by mutations.
 * Paths are relative to the workspace root ("" or "." is the root).  Thread-safe per client.
 * After each call, dbx_last_reply_meta() holds the reply's boot id and event seq.
 */
#ifndef DEVBOX_FS_H
#define DEVBOX_FS_H

#include <devbox/client.h>
#include <sys/statvfs.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DBX_VER_MAX 64

/* PROTOCOL.md §1.1.  mode carries the type bits (S_IFREG ...). */
struct dbx_attr {
	uint64_t ino;
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid, gid;
	uint64_t size;
	uint64_t blocks;  /* 512-byte units */
	uint32_t blksize;
	uint64_t rdev;
	struct timespec atime, mtime, ctime;
	char ver[DBX_VER_MAX]; /* content version, "" if none */
};

DBX_API int dbx_fs_stat(dbx_client *c, const char *path, struct dbx_attr *ret_attr);
DBX_API int dbx_fs_statfs(dbx_client *c, struct statvfs *ret_st);

/* Called once per entry; target is the symlink target or NULL.  Returning nonzero stops the
 * walk and becomes the call's return value. */
typedef int (*dbx_dirent_fn)(void *ud, const char *name, const struct dbx_attr *attr,
			     const char *target);
/* Every entry of a directory (paged internally), "." and ".." omitted.  ret_dir may be NULL. */
DBX_API int dbx_fs_list(dbx_client *c, const char *path, struct dbx_attr *ret_dir,
			dbx_dirent_fn fn, void *ud);

/* The streamed tree (PROTOCOL.md §2.1).  path is relative to the workspace ("." for the
 * start itself); partial: the directory's children were not all sent. */
typedef int (*dbx_tree_fn)(void *ud, const char *path, const struct dbx_attr *attr,
			   const char *target, bool partial);
struct dbx_tree_end {
	uint64_t entries;
	bool truncated;
	uint64_t seq; /* event seq at the start of the walk */
};
/* depth 0: default (64); max 0: default (200000). */
DBX_API int dbx_fs_tree(dbx_client *c, const char *path, int depth, uint64_t max,
			dbx_tree_fn fn, void *ud, struct dbx_tree_end *ret_end);

/* Reads up to len bytes at off into buf; returns the byte count (short at EOF).  ret_ver (may
 * be NULL, DBX_VER_MAX bytes) receives the file's version; ret_size (may be NULL) its size. */
DBX_API ssize_t dbx_fs_pread(dbx_client *c, const char *path, void *buf, size_t len,
			     uint64_t off, char *ret_ver, uint64_t *ret_size);
/* Streams [off, off+len) (len UINT64_MAX: to EOF) into sink. */
DBX_API int dbx_fs_read_stream(dbx_client *c, const char *path, uint64_t off, uint64_t len,
			       dbx_sink_fn sink, void *ud);

struct dbx_write_opts {
	uint64_t offset;
	bool truncate;        /* truncate at offset + len after writing */
	bool no_create;       /* fail with ENOENT instead of creating */
	bool excl;            /* O_EXCL */
	bool atomic;          /* temp file + fsync + rename over path (whole-file replace) */
	bool fsync;
	uint32_t mode;        /* for a new file; 0: 0644 */
	const char *if_match; /* version the write is based on; -ESTALE if it changed */
	uint64_t if_ino;      /* nonzero: -ESTALE unless path is still this file (attr ino) */
	bool dir;             /* also report the parent directory's attr (dbx_fs_last_dir) */
};
/* opts NULL: offset 0, create, no truncate.  ret_attr may be NULL.  opts->dir: the reply
 * also gives the parent directory's attr (dbx_fs_last_dir). */
DBX_API int dbx_fs_pwrite(dbx_client *c, const char *path, const void *buf, size_t len,
			  const struct dbx_write_opts *opts, struct dbx_attr *ret_attr);
/* Same, with the bytes pulled from src; len must be exact (the agent needs Content-Length). */
DBX_API int dbx_fs_write_stream(dbx_client *c, const char *path, dbx_source_fn src, void *ud,
				uint64_t len, const struct dbx_write_opts *opts,
				struct dbx_attr *ret_attr);

DBX_API int dbx_fs_truncate(dbx_client *c, const char *path, uint64_t size,
			    struct dbx_attr *ret_attr);
DBX_API int dbx_fs_fsync(dbx_client *c, const char *path, bool datasync,
			 struct dbx_attr *ret_attr);
DBX_API int dbx_fs_mkdir(dbx_client *c, const char *path, uint32_t mode,
			 struct dbx_attr *ret_attr);
DBX_API int dbx_fs_rmdir(dbx_client *c, const char *path);
DBX_API int dbx_fs_unlink(dbx_client *c, const char *path);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (<linux/fs.h> values).  ret_to: attr of to. */
DBX_API int dbx_fs_rename(dbx_client *c, const char *from, const char *to, unsigned flags,
			  struct dbx_attr *ret_to);
DBX_API int dbx_fs_symlink(dbx_client *c, const char *target, const char *linkpath,
			   struct dbx_attr *ret_attr);
DBX_API int dbx_fs_readlink(dbx_client *c, const char *path, char **ret_target);
DBX_API int dbx_fs_link(dbx_client *c, const char *existing, const char *newpath,
			struct dbx_attr *ret_attr);
DBX_API int dbx_fs_chmod(dbx_client *c, const char *path, uint32_t mode,
			 struct dbx_attr *ret_attr);
/* (uid_t)-1 / (gid_t)-1 leave that id unchanged. */
DBX_API int dbx_fs_chown(dbx_client *c, const char *path, uid_t uid, gid_t gid,
			 struct dbx_attr *ret_attr);
/* tv[0] atime, tv[1] mtime; tv_nsec may be UTIME_NOW or UTIME_OMIT. */
DBX_API int dbx_fs_utimens(dbx_client *c, const char *path, const struct timespec tv[2],
			   struct dbx_attr *ret_attr);
/* FIFOs only (mode includes S_IFIFO). */
DBX_API int dbx_fs_mknod(dbx_client *c, const char *path, uint32_t mode,
			 struct dbx_attr *ret_attr);

/* xattrs, user.* only.  Like getxattr(2)/listxattr(2): size 0 returns the size needed;
 * -ERANGE when buf is too small.  listxattr fills NUL-separated names. */
DBX_API ssize_t dbx_fs_getxattr(dbx_client *c, const char *path, const char *name, void *buf,
				size_t size);
DBX_API ssize_t dbx_fs_listxattr(dbx_client *c, const char *path, char *buf, size_t size);
/* flags: 0, XATTR_CREATE or XATTR_REPLACE. */
DBX_API int dbx_fs_setxattr(dbx_client *c, const char *path, const char *name,
			    const void *value, size_t size, int flags);
DBX_API int dbx_fs_removexattr(dbx_client *c, const char *path, const char *name);

/* Locks (PROTOCOL.md §2.2).  session: the lock session of an events connection
 * (dbx_watch_session()).  owner: posix only, the client's lock-owner id. */
enum dbx_lock_kind { DBX_LOCK_FLOCK, DBX_LOCK_POSIX };
enum dbx_lock_op { DBX_LOCK_SH, DBX_LOCK_EX, DBX_LOCK_UN };
struct dbx_lock {
	enum dbx_lock_kind kind;
	enum dbx_lock_op op;
	uint64_t start, len; /* posix; len 0 = to EOF */
	uint64_t owner;      /* posix */
	bool wait;
	int timeout_ms;      /* with wait; 0: 30000 */
};
/* -EAGAIN: held elsewhere (wait false); -ETIMEDOUT; -EINTR when cancelled. */
DBX_API int dbx_fs_lock(dbx_client *c, const char *session, const char *path,
			const struct dbx_lock *lock);

/* Batch (PROTOCOL.md §2.3): many small operations in one round trip.  Build, run, read the
 * results; not thread-safe (one thread per batch). */
typedef struct dbx_batch dbx_batch;
DBX_API int dbx_batch_new(dbx_batch **ret_batch);
DBX_API dbx_batch *dbx_batch_free(dbx_batch *b);
/* Each add returns the op's index (>= 0) or -errno (-E2BIG past 1024 ops / 16 MiB). */
DBX_API int dbx_batch_stat(dbx_batch *b, const char *path);
DBX_API int dbx_batch_read(dbx_batch *b, const char *path, uint64_t off, size_t len);
/* data is copied. */
DBX_API int dbx_batch_write(dbx_batch *b, const char *path, const void *data, size_t len,
			    const struct dbx_write_opts *opts);
DBX_API int dbx_batch_mkdir(dbx_batch *b, const char *path, uint32_t mode);
DBX_API int dbx_batch_unlink(dbx_batch *b, const char *path);
DBX_API int dbx_batch_run(dbx_client *c, dbx_batch *b);
/* After a successful run: the op's result, 0 or -errno.  ret_attr / ret_data may be NULL;
 * *ret_data is borrowed from b (read ops). */
DBX_API int dbx_batch_result(dbx_batch *b, int index, struct dbx_attr *ret_attr,
			     const void **ret_data, size_t *ret_len);

/* The attr of a directory whose names this thread's last call changed (mkdir, rmdir, unlink,
 * rename, link, symlink, mknod, and a write with opts->dir), as the change left it: from
 * false, the parent of `to` (or of `path`); from true, the parent of a rename's `path`.
 * -ENOENT when that reply carried none (an older agent, or a failed call). */
DBX_API int dbx_fs_last_dir(bool from, struct dbx_attr *ret);

#ifdef __cplusplus
}
#endif
#endif
