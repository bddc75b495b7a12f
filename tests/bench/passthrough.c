// SPDX-License-Identifier: Apache-2.0
/*
 * bench-passthrough: a small libfuse 3 passthrough file system, the "FUSE overhead limit"
 * peer of tests/bench/fs_bench.py.
 *
 *     bench-passthrough SOURCE MOUNTPOINT [-f] [-s] [-o FUSE_OPTIONS]
 *
 * Every operation is forwarded to the same path under SOURCE (relative *at() calls on a
 * directory fd opened once). It asks the kernel for what a network file system with perfect
 * invalidation could ask for: long entry, attribute and negative-entry timeouts, stable inode
 * numbers (use_ino), the page cache kept across opens, readdir results cached (cache_readdir +
 * keep_cache), readdirplus and 1 MiB writes. So whatever it costs over the native directory is
 * the cost of FUSE itself, not of a network.
 */
#define FUSE_USE_VERSION 314

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

#define PT_TTL 86400.0

static int src_fd = -1;

/* The path relative to SOURCE: "/" is ".", "/a/b" is "a/b". */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return *path ? path : ".";
}

static void *pt_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	cfg->use_ino = 1;
	cfg->kernel_cache = 1;
	cfg->entry_timeout = PT_TTL;
	cfg->attr_timeout = PT_TTL;
	cfg->negative_timeout = PT_TTL;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	conn->max_write = 1 << 20;
	return NULL;
}

static int pt_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	int r = fi ? fstat((int)fi->fh, st) : fstatat(src_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);

	return r < 0 ? -errno : 0;
}

static int pt_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	if (size == 0)
		return -EINVAL;
	n = readlinkat(src_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int pt_opendir(const char *path, struct fuse_file_info *fi)
{
	int fd = openat(src_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		int err = -errno;

		close(fd);
		return err;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	return 0;
}

static int pt_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	DIR *d = (DIR *)(uintptr_t)fi->fh;
	struct dirent *de;

	seekdir(d, off);
	for (;;) {
		struct stat st;
		enum fuse_fill_dir_flags ff = 0;

		errno = 0;
		de = readdir(d);
		if (!de)
			return errno ? -errno : 0;
		memset(&st, 0, sizeof(st));
		if ((flags & FUSE_READDIR_PLUS) &&
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			ff = FUSE_FILL_DIR_PLUS;
		} else {
			st.st_ino = de->d_ino;
			st.st_mode = (mode_t)DTTOIF(de->d_type);
		}
		if (fill(buf, de->d_name, &st, telldir(d), ff))
			return 0;
	}
}

static int pt_releasedir(const char *path, struct fuse_file_info *fi)
{
	closedir((DIR *)(uintptr_t)fi->fh);
	return 0;
}

static int pt_mkdir(const char *path, mode_t mode)
{
	return mkdirat(src_fd, rel(path), mode) < 0 ? -errno : 0;
}

static int pt_unlink(const char *path)
{
	return unlinkat(src_fd, rel(path), 0) < 0 ? -errno : 0;
}

static int pt_rmdir(const char *path)
{
	return unlinkat(src_fd, rel(path), AT_REMOVEDIR) < 0 ? -errno : 0;
}

static int pt_symlink(const char *target, const char *path)
{
	return symlinkat(target, src_fd, rel(path)) < 0 ? -errno : 0;
}

static int pt_link(const char *from, const char *to)
{
	return linkat(src_fd, rel(from), src_fd, rel(to), 0) < 0 ? -errno : 0;
}

static int pt_rename(const char *from, const char *to, unsigned int flags)
{
	return renameat2(src_fd, rel(from), src_fd, rel(to), flags) < 0 ? -errno : 0;
}

static int pt_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int r = fi ? fchmod((int)fi->fh, mode) : fchmodat(src_fd, rel(path), mode, 0);

	return r < 0 ? -errno : 0;
}

static int pt_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	int r = fi ? fchown((int)fi->fh, uid, gid) :
		     fchownat(src_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);

	return r < 0 ? -errno : 0;
}

static int pt_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int fd, r;

	if (fi)
		return ftruncate((int)fi->fh, size) < 0 ? -errno : 0;
	fd = openat(src_fd, rel(path), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = ftruncate(fd, size) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int pt_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	int r = fi ? futimens((int)fi->fh, tv) :
		     utimensat(src_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW);

	return r < 0 ? -errno : 0;
}

static int pt_mknod(const char *path, mode_t mode, dev_t rdev)
{
	return mknodat(src_fd, rel(path), mode, rdev) < 0 ? -errno : 0;
}

static int pt_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int fd = openat(src_fd, rel(path), fi->flags | O_CLOEXEC, mode);

	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	return 0;
}

static int pt_open(const char *path, struct fuse_file_info *fi)
{
	int fd = openat(src_fd, rel(path), (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	if ((fi->flags & O_ACCMODE) == O_RDONLY)
		fi->noflush = 1;
	return 0;
}

static int pt_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	ssize_t n = pread((int)fi->fh, buf, size, off);

	return n < 0 ? -errno : (int)n;
}

static int pt_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	ssize_t n = pwrite((int)fi->fh, buf, size, off);

	return n < 0 ? -errno : (int)n;
}

static int pt_statfs(const char *path, struct statvfs *sv)
{
	return fstatvfs(src_fd, sv) < 0 ? -errno : 0;
}

static int pt_release(const char *path, struct fuse_file_info *fi)
{
	close((int)fi->fh);
	return 0;
}

static int pt_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);

	return r < 0 ? -errno : 0;
}

static const struct fuse_operations pt_ops = {
	.init = pt_init,
	.getattr = pt_getattr,
	.readlink = pt_readlink,
	.opendir = pt_opendir,
	.readdir = pt_readdir,
	.releasedir = pt_releasedir,
	.mknod = pt_mknod,
	.mkdir = pt_mkdir,
	.symlink = pt_symlink,
	.unlink = pt_unlink,
	.rmdir = pt_rmdir,
	.rename = pt_rename,
	.link = pt_link,
	.chmod = pt_chmod,
	.chown = pt_chown,
	.truncate = pt_truncate,
	.utimens = pt_utimens,
	.create = pt_create,
	.open = pt_open,
	.read = pt_read,
	.write = pt_write,
	.statfs = pt_statfs,
	.release = pt_release,
	.fsync = pt_fsync,
};

int main(int argc, char *argv[])
{
	char **args;
	int i, n = 0, ret = 1;

	if (argc < 3 || argv[1][0] == '-') {
		fprintf(stderr, "usage: %s SOURCE MOUNTPOINT [-f] [-s] [-o OPTIONS]\n", argv[0]);
		return 2;
	}
	src_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (src_fd < 0) {
		perror(argv[1]);
		return 1;
	}
	args = calloc((size_t)argc, sizeof(*args));
	if (!args)
		goto out;
	args[n++] = argv[0];
	for (i = 2; i < argc; i++)
		args[n++] = argv[i];
	umask(0);
	ret = fuse_main(n, args, &pt_ops, NULL);
	free(args);
out:
	close(src_fd);
	return ret;
}
