/* SPDX-License-Identifier: Apache-2.0 */
/*
 * statfs, access and extended attributes, run by libfuse worker threads.  statfs is answered
 * from a copy at most 2 s old; access is decided locally from the mirror's attributes; xattrs
 * (user.* only, the agent's rule) go to the agent each time, other namespaces are answered
 * here (ls asks for security.* and ACLs on every file).
 */
#include "dfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OP(d, op) STAT_INC(d, ops[op])
#define REMOTE(d) STAT_INC(d, remote_calls)

static struct dfs *req_dfs(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* ---- statfs, access, xattrs ----------------------------------------------------------- */

void dfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct dfs *d = req_dfs(req);
	struct statvfs sv;
	struct opctx o;
	int r;

	OP(d, OP_STATFS);
	/* find, df and friends call statfs per run: answer from a copy at most 2 s old. */
	pthread_mutex_lock(&d->statfs_lock);
	if (d->statfs_at && now_ms() - d->statfs_at < 2000) {
		sv = d->statfs_copy;
		pthread_mutex_unlock(&d->statfs_lock);
		fuse_reply_statfs(req, &sv);
		return;
	}
	pthread_mutex_unlock(&d->statfs_lock);
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_statfs(d->client, &sv));
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	pthread_mutex_lock(&d->statfs_lock);
	d->statfs_copy = sv;
	d->statfs_at = now_ms();
	pthread_mutex_unlock(&d->statfs_lock);
	fuse_reply_statfs(req, &sv);
}

void dfs_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct dfs *d = req_dfs(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct dbx_attr a;
	unsigned bits;
	bool hit;
	int r;

	OP(d, OP_ACCESS);
	r = dfs_inode_attr(d, req, ino, &a, &hit);
	if (r < 0 || mask == F_OK) {
		fuse_reply_err(req, r < 0 ? -r : 0);
		return;
	}
	if (ctx->uid == 0) {
		/* root: everything but executing a file nobody may execute */
		bool x_ok = S_ISDIR(a.mode) || (a.mode & 0111);

		fuse_reply_err(req, (mask & X_OK) && !x_ok ? EACCES : 0);
		return;
	}
	if (ctx->uid == a.uid)
		bits = (a.mode >> 6) & 7;
	else if (ctx->gid == a.gid)
		bits = (a.mode >> 3) & 7;
	else
		bits = a.mode & 7;
	fuse_reply_err(req, ((unsigned)mask & ~bits & 7) ? EACCES : 0);
}

static void xattr_changed(struct dfs *d, const char *path)
{
	struct ment *e;

	pthread_mutex_lock(&d->mirror.lock);
	e = mirror_find(&d->mirror, path);
	if (e)
		mirror_mark_stale(d, e); /* ctime moved */
	pthread_mutex_unlock(&d->mirror.lock);
}

void dfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		  int flags)
{
	struct dfs *d = req_dfs(req);
	struct opctx o;
	char *path;
	int r;

	OP(d, OP_SETXATTR);
	if (strncmp(name, "user.", 5)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_setxattr(d->client, path, name, value, size, flags));
	if (r == 0)
		xattr_changed(d, path);
	fuse_reply_err(req, -r);
	free(path);
}

void dfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct dfs *d = req_dfs(req);
	struct opctx o;
	char *path, *buf = NULL;
	ssize_t r;

	OP(d, OP_GETXATTR);
	if (strncmp(name, "user.", 5)) {
		/* Only user.* exists remotely; ls asks for security.* and ACLs on every file. */
		fuse_reply_err(req, ENODATA);
		return;
	}
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = dbx_fs_getxattr(d->client, path, name, buf, size);
	if (r < 0)
		r = op_end(d, &o, (int)r);
	else
		op_end(d, &o, 0);
	if (r < 0)
		fuse_reply_err(req, (int)-r);
	else if (!size)
		fuse_reply_xattr(req, (size_t)r);
	else
		fuse_reply_buf(req, buf, (size_t)r);
out:
	free(buf);
	free(path);
}

void dfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct dfs *d = req_dfs(req);
	struct opctx o;
	char *path, *buf = NULL;
	ssize_t r;

	OP(d, OP_LISTXATTR);
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = dbx_fs_listxattr(d->client, path, buf, size);
	if (r < 0)
		r = op_end(d, &o, (int)r);
	else
		op_end(d, &o, 0);
	if (r < 0)
		fuse_reply_err(req, (int)-r);
	else if (!size)
		fuse_reply_xattr(req, (size_t)r);
	else
		fuse_reply_buf(req, buf, (size_t)r);
out:
	free(buf);
	free(path);
}

void dfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct dfs *d = req_dfs(req);
	struct opctx o;
	char *path;
	int r;

	OP(d, OP_REMOVEXATTR);
	path = dfs_path_of(d, req, ino);
	if (!path)
		return;
	op_begin(d, &o, req, false);
	REMOTE(d);
	r = op_end(d, &o, dbx_fs_removexattr(d->client, path, name));
	if (r == 0)
		xattr_changed(d, path);
	fuse_reply_err(req, -r);
	free(path);
}
