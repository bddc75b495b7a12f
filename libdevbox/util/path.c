#include "path.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Returns the rest of @path after @prefix when @path is @prefix or lies beneath it, else NULL. */
static const char *strip_prefix(const char *path, const char *prefix)
{
	size_t n = strlen(prefix);
	if (n == 1 && prefix[0] == '/')
		return path + 1;
	if (strncmp(path, prefix, n) != 0)
		return NULL;
	if (path[n] == '\0')
		return path + n;
	if (path[n] == '/')
		return path + n + 1;
	return NULL;
}

/* Lexical clean-up of @in into a relative path without leading slash ("" for nothing left):
 * "." components dropped, ".." pops one; a ".." at the top is ignored when @clamp (like the
 * kernel does at "/"), else -EXDEV. */
static int lexical_clean(const char *in, char *out, size_t outsz, bool clamp)
{
	size_t len = 0;
	const char *p = in;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		const char *s = p;
		while (*p && *p != '/')
			p++;
		size_t cl = (size_t)(p - s);
		if (cl == 1 && s[0] == '.')
			continue;
		if (cl == 2 && s[0] == '.' && s[1] == '.') {
			if (len == 0) {
				if (clamp)
					continue;
				return -EXDEV;
			}
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			continue;
		}
		if (len + (len > 0) + cl + 1 > outsz)
			return -ENAMETOOLONG;
		if (len > 0)
			out[len++] = '/';
		memcpy(out + len, s, cl);
		len += cl;
	}
	out[len] = '\0';
	return 0;
}

int dbx_path_normalize(const char *root, const char *alias, const char *input, char *out,
		       size_t outsz)
{
	char absbuf[PATH_MAX];
	if (outsz < 2)
		return -ENAMETOOLONG;
	if (input[0] != '/') {
		int r = lexical_clean(input, out, outsz, false);
		if (r < 0)
			return r;
	} else {
		absbuf[0] = '/';
		int r = lexical_clean(input, absbuf + 1, sizeof(absbuf) - 1, true);
		if (r < 0)
			return r;
		const char *rel = strip_prefix(absbuf, root);
		if (!rel && alias)
			rel = strip_prefix(absbuf, alias);
		if (!rel)
			return -EXDEV;
		size_t n = strlen(rel);
		if (n + 1 > outsz)
			return -ENAMETOOLONG;
		memcpy(out, rel, n + 1);
	}
	if (out[0] == '\0')
		snprintf(out, outsz, ".");
	return 0;
}

int dbx_path_open(int rootfd, const char *rel, int flags, mode_t mode, uint64_t resolve)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | resolve,
	};
	/* EAGAIN: a concurrent rename raced the RESOLVE_BENEATH walk; retry a few times. */
	for (int tries = 0;; tries++) {
		long fd = syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
		if (fd >= 0)
			return (int)fd;
		if ((errno != EAGAIN && errno != EINTR) || tries == 16)
			return -errno;
	}
}

int dbx_path_open_parent(int rootfd, const char *rel, const char **ret_name)
{
	if (strcmp(rel, ".") == 0)
		return -EINVAL;
	const char *slash = strrchr(rel, '/');
	if (!slash) {
		*ret_name = rel;
		return dbx_path_open(rootfd, ".", O_PATH | O_DIRECTORY, 0, 0);
	}
	char dir[PATH_MAX];
	size_t n = (size_t)(slash - rel);
	if (n >= sizeof(dir))
		return -ENAMETOOLONG;
	memcpy(dir, rel, n);
	dir[n] = '\0';
	*ret_name = slash + 1;
	return dbx_path_open(rootfd, dir, O_PATH | O_DIRECTORY, 0, 0);
}

int dbx_path_mkdirs(int rootfd, const char *rel_dir, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(rel_dir);
	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	if (strcmp(rel_dir, ".") == 0)
		return 0;
	/* Fast path: it already exists (as a directory, confined). */
	int fd = dbx_path_open(rootfd, rel_dir, O_PATH | O_DIRECTORY, 0, 0);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	if (fd != -ENOENT)
		return fd;
	memcpy(buf, rel_dir, n + 1);
	for (size_t i = 0; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char saved = buf[i];
		buf[i] = '\0';
		const char *name;
		int pfd = dbx_path_open_parent(rootfd, buf, &name);
		if (pfd < 0)
			return pfd;
		int r = mkdirat(pfd, name, mode) < 0 ? -errno : 0;
		close(pfd);
		if (r < 0 && r != -EEXIST)
			return r;
		if (r == -EEXIST) {
			/* Must be a directory (or a confined symlink to one). */
			int dfd = dbx_path_open(rootfd, buf, O_PATH | O_DIRECTORY, 0, 0);
			if (dfd < 0)
				return dfd;
			close(dfd);
		}
		buf[i] = saved;
	}
	return 0;
}

int dbx_path_mkparents(int rootfd, const char *rel, mode_t mode)
{
	const char *slash = strrchr(rel, '/');
	if (!slash)
		return 0;
	char dir[PATH_MAX];
	size_t n = (size_t)(slash - rel);
	if (n >= sizeof(dir))
		return -ENAMETOOLONG;
	memcpy(dir, rel, n);
	dir[n] = '\0';
	return dbx_path_mkdirs(rootfd, dir, mode);
}

char *dbx_path_join_abs(const char *root, const char *rel)
{
	char *out = NULL;
	if (strcmp(rel, ".") == 0)
		return strdup(root);
	if (strcmp(root, "/") == 0) {
		if (asprintf(&out, "/%s", rel) < 0)
			return NULL;
	} else if (asprintf(&out, "%s/%s", root, rel) < 0) {
		return NULL;
	}
	return out;
}
