/* files.c: the compat file routes /api/v1/files/... (agent-api.md §2.2): the route table, list,
 * read/download, delete, move, rename, chmod, and the helpers shared with files_write.c,
 * archive.c and search.c (atomic replacement, confined tree walks, error replies).
 *
 * Threads: every handler runs on a worker. Paths: each client path is normalised with
 * req_resolve()/files_norm() (lexical, -EXDEV outside the workspace), then reached only through
 * dbx_path_open*() (openat2 RESOLVE_BENEATH on ag->rootfd) and *at() calls relative to fds
 * obtained that way; walks never follow symlinks. Where the official agent follows symlinks out
 * of the workspace or deletes the workspace itself, we refuse with a clear error. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"
#include "misc.h"
#include "path.h"

/* ---- shared helpers ------------------------------------------------------------------- */

int files_norm(struct agent *ag, const char *input, char rel[PATH_MAX])
{
	return dbx_path_normalize(ag->cfg.workspace, ag->alias, input, rel, PATH_MAX);
}

const char *files_strerror(int err, char buf[160])
{
	if (err < 0)
		err = -err;
	switch (err) {
	case EXDEV:
		snprintf(buf, 160, "Path escapes the workspace");
		break;
	case ELOOP:
		snprintf(buf, 160, "Refusing to follow a symbolic link out of the workspace");
		break;
	case EFBIG:
		snprintf(buf, 160, "File too large");
		break;
	case ENAMETOOLONG:
		snprintf(buf, 160, "Path too long");
		break;
	default:
		snprintf(buf, 160, "%s (os error %d)", strerror(err), err);
		break;
	}
	return buf;
}

void files_reply_errno(struct req *r, int err, const char *op, const char *rel)
{
	char *abs = agent_abs(req_agent(r), rel);
	char what[PATH_MAX + 64];
	snprintf(what, sizeof(what), "%s %s", op, abs ? abs : rel);
	free(abs);
	req_reply_errno(r, err, what);
}

bool files_looks_binary(const unsigned char *s, size_t n)
{
	size_t ctl = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == 0)
			return true;
		if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') || s[i] == 0x7f)
			ctl++;
	}
	if (n && ctl * 10 > n)
		return true;
	return !dbx_utf8_valid((const char *)s, n, true);
}

/* ---- atomic replacement --------------------------------------------------------------- */

/* Follows final-component symlinks of @rel lexically (each hop re-normalised, so it cannot
 * leave the workspace); on return af->dirfd/name/rel/exists/old describe the real target. */
static int af_locate(struct afile *af, struct agent *ag, const char *rel)
{
	char cur[PATH_MAX];
	snprintf(cur, sizeof(cur), "%s", rel);
	for (int hops = 0;; hops++) {
		const char *name;
		int dfd = dbx_path_open_parent(ag->rootfd, cur, &name);
		if (dfd < 0)
			return dfd;
		struct stat st;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			int e = -errno;
			if (e != -ENOENT) {
				close(dfd);
				return e;
			}
			af->exists = false;
		} else if (S_ISLNK(st.st_mode)) {
			char target[PATH_MAX], joined[2 * PATH_MAX + 2];
			ssize_t n =
				hops < 40 ? readlinkat(dfd, name, target, sizeof(target) - 1) : -1;
			int e = hops < 40 ? -errno : -ELOOP;
			close(dfd);
			if (n < 0)
				return e;
			target[n] = '\0';
			/* RESOLVE_BENEATH refuses absolute link targets too. */
			if (target[0] == '/')
				return -EXDEV;
			/* name points into cur, just past the parent's slash (or at cur). */
			snprintf(joined, sizeof(joined), "%.*s%s", (int)(name - cur), cur, target);
			int r = dbx_path_normalize(ag->cfg.workspace, NULL, joined, cur,
						   sizeof(cur));
			if (r < 0)
				return r;
			if (strcmp(cur, ".") == 0)
				return -EISDIR;
			continue;
		} else {
			af->exists = true;
			af->old = st;
		}
		if (strlen(name) >= sizeof(af->name)) {
			close(dfd);
			return -ENAMETOOLONG;
		}
		af->dirfd = dfd;
		snprintf(af->name, sizeof(af->name), "%s", name);
		snprintf(af->rel, sizeof(af->rel), "%s", cur);
		return hops;
	}
}

int af_open(struct afile *af, struct agent *ag, const char *rel)
{
	memset(af, 0, sizeof(*af));
	af->dirfd = af->fd = -1;
	af->max = ag->cfg.max_file_size;
	if (strcmp(rel, ".") == 0)
		return -EISDIR;
	/* The kernel's verdict first: a path whose symlinks lead out of the workspace is refused
	 * before anything is created. */
	int kfd = dbx_path_open(ag->rootfd, rel, O_PATH, 0, 0);
	if (kfd < 0 && kfd != -ENOENT && kfd != -ENOTDIR)
		return kfd;
	int r = dbx_path_mkparents(ag->rootfd, rel, 0777);
	if (r < 0)
		goto fail;
	r = af_locate(af, ag, rel);
	if (r < 0)
		goto fail;
	if (r > 0 && kfd >= 0) {
		/* A symlink was followed lexically: it must name what the kernel resolved. */
		struct stat kst;
		if (fstat(kfd, &kst) < 0 || !af->exists || kst.st_dev != af->old.st_dev ||
		    kst.st_ino != af->old.st_ino) {
			r = -ELOOP;
			goto fail;
		}
	}
	if (af->exists && S_ISDIR(af->old.st_mode)) {
		r = -EISDIR;
		goto fail;
	}
	size_t nl = strlen(af->name);
	if (nl > NAME_MAX - 12)
		nl = NAME_MAX - 12;
	for (int tries = 0; tries < 100; tries++) {
		char id[7];
		dbx_random_id(id, 6);
		snprintf(af->tmp, sizeof(af->tmp), ".%.*s.dbx-%s", (int)nl, af->name, id);
		af->fd = openat(af->dirfd, af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
				af->exists ? 0600 : 0666);
		if (af->fd >= 0 || errno != EEXIST)
			break;
	}
	if (af->fd < 0) {
		r = -errno;
		af->tmp[0] = '\0';
		goto fail;
	}
	if (af->exists) {
		/* Keep the replaced file's mode, and its owner when we are allowed to. */
		if (geteuid() == 0 &&
		    (af->old.st_uid != geteuid() || af->old.st_gid != getegid()) &&
		    fchown(af->fd, af->old.st_uid, af->old.st_gid) < 0)
			agent_log(LLL_WARN, "keeping the owner of %s: %s", af->rel,
				  strerror(errno));
		if (fchmod(af->fd, af->old.st_mode & 07777) < 0) {
			r = -errno;
			goto fail;
		}
	}
	if (kfd >= 0)
		close(kfd);
	return 0;
fail:
	if (kfd >= 0)
		close(kfd);
	af_abort(af);
	return r;
}

int af_write(struct afile *af, const void *buf, size_t len)
{
	const char *p = buf;
	if (af->fd < 0)
		return -EBADF;
	if (af->size + len > af->max)
		return -EFBIG;
	while (len) {
		ssize_t n = write(af->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		af->size += (uint64_t)n;
	}
	return 0;
}

int af_commit(struct afile *af)
{
	int r = 0;
	if (af->fd < 0)
		return -EBADF;
	if (af->sync && fsync(af->fd) < 0)
		r = -errno;
	if (close(af->fd) < 0 && r == 0)
		r = -errno;
	af->fd = -1;
	if (r == 0 && renameat(af->dirfd, af->tmp, af->dirfd, af->name) < 0)
		r = -errno;
	if (r == 0)
		af->tmp[0] = '\0';
	if (r == 0 && af->sync) {
		/* The rename itself is durable once the directory is. */
		int d = openat(af->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d >= 0) {
			fsync(d);
			close(d);
		}
	}
	af_abort(af);
	return r;
}

void af_abort(struct afile *af)
{
	if (!af)
		return;
	if (af->fd >= 0) {
		close(af->fd);
		af->fd = -1;
	}
	if (af->tmp[0] && af->dirfd >= 0)
		unlinkat(af->dirfd, af->tmp, 0);
	af->tmp[0] = '\0';
	if (af->dirfd >= 0) {
		close(af->dirfd);
		af->dirfd = -1;
	}
}

/* ---- walks ---------------------------------------------------------------------------- */

int walk_dir(struct walk *w, int dfd)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		int e = -errno;
		close(dfd);
		return e;
	}
	size_t base = w->len;
	/* The root's entries are "name", not "./name". */
	bool at_root = base == 1 && w->path[0] == '.';
	int r = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno && w->error)
				r = w->error(w, -errno);
			else if (errno)
				r = -errno;
			break;
		}
		const char *name = de->d_name;
		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		size_t nl = strlen(name);
		size_t at = at_root ? 0 : base + 1;
		if (at + nl + 1 > sizeof(w->path)) {
			if (w->error && (r = w->error(w, -ENAMETOOLONG)) < 0)
				break;
			continue;
		}
		if (!at_root)
			w->path[base] = '/';
		memcpy(w->path + at, name, nl + 1);
		w->len = at + nl;
		struct stat st;
		if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			goto next; /* gone meanwhile */
		r = w->visit(w, dirfd(d), name, &st);
		if (r < 0)
			break;
		if (r == WALK_DESCEND && S_ISDIR(st.st_mode)) {
			int cfd = -ELOOP;
			if (w->depth < FILES_WALK_DEPTH_MAX) {
				cfd = openat(dirfd(d), name,
					     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				if (cfd < 0)
					cfd = -errno;
			}
			if (cfd < 0) {
				r = w->error ? w->error(w, cfd) : cfd;
			} else {
				w->depth++;
				r = walk_dir(w, cfd);
				w->depth--;
			}
			if (r < 0)
				break;
			if (w->leave && (r = w->leave(w, dirfd(d), name)) < 0)
				break;
		}
		r = 0;
	next:
		w->len = base;
		memcpy(w->path, ".", at_root ? 2 : 0);
		w->path[base] = '\0';
	}
	w->len = base;
	memcpy(w->path, ".", at_root ? 2 : 0);
	w->path[base] = '\0';
	closedir(d);
	return r < 0 ? r : 0;
}

static int rm_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	if (S_ISDIR(st->st_mode))
		return WALK_DESCEND;
	return unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? -errno : WALK_NEXT;
}

static int rm_leave(struct walk *w, int dirfd, const char *name)
{
	return unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT ? -errno : 0;
}

int files_remove_tree(int dirfd, const char *name)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(dirfd, name, 0) < 0 ? -errno : 0;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct walk *w = calloc(1, sizeof(*w));
	if (!w) {
		close(fd);
		return -ENOMEM;
	}
	snprintf(w->path, sizeof(w->path), "%s", name);
	w->len = strlen(w->path);
	w->visit = rm_visit;
	w->leave = rm_leave;
	int r = walk_dir(w, fd);
	free(w);
	if (r < 0)
		return r;
	return unlinkat(dirfd, name, AT_REMOVEDIR) < 0 ? -errno : 0;
}


/* ---- GET /api/v1/files/list ------------------------------------------------------------ */

static void list_fn(struct req *r)
{
	struct agent *ag = req_agent(r);
	const char *path = req_query(r, "path");
	bool hidden = false;
	uint64_t limit = 100, offset = 0;
	char rel[PATH_MAX];
	if (req_query_bool(r, "showHidden", &hidden) < 0 ||
	    req_query_u64(r, "limit", &limit) < 0 || req_query_u64(r, "offset", &offset) < 0)
		return;
	if (req_resolve(r, path ? path : ".", rel))
		return;
	int fd = dbx_path_open(ag->rootfd, rel, O_RDONLY | O_DIRECTORY, 0, 0);
	if (fd < 0) {
		files_reply_errno(r, fd, "list", rel);
		return;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		files_reply_errno(r, -errno, "list", rel);
		close(fd);
		return;
	}
	char *dabs = agent_abs(ag, rel);
	cJSON *files = cJSON_CreateArray();
	uint64_t seen = 0, taken = 0;
	struct dirent *de;
	while (dabs && taken < limit && (de = readdir(d))) {
		const char *n = de->d_name;
		if (n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2])))
			continue;
		if (!hidden && n[0] == '.')
			continue;
		struct stat st;
		if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (seen++ < offset)
			continue;
		char perm[16], mod[21];
		char *p = dbx_path_join_abs(dabs, n);
		snprintf(perm, sizeof(perm), "0%o", (unsigned)(st.st_mode & 0777));
		dbx_fmt_time(st.st_mtime, mod);
		char *clean = dbx_utf8_lossy(n, strlen(n), NULL);
		char *pclean = p ? dbx_utf8_lossy(p, strlen(p), NULL) : NULL;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "name", clean ? clean : n);
		cJSON_AddStringToObject(o, "path", pclean ? pclean : "");
		cJSON_AddNumberToObject(o, "size", (double)st.st_size);
		cJSON_AddBoolToObject(o, "isDir", S_ISDIR(st.st_mode));
		cJSON_AddStringToObject(o, "permissions", perm);
		cJSON_AddStringToObject(o, "modified", mod);
		cJSON_AddItemToArray(files, o);
		free(clean);
		free(pclean);
		free(p);
		taken++;
	}
	closedir(d);
	free(dabs);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "files", files);
	req_reply_ok(r, out);
}

/* ---- GET /api/v1/files/read, /download ------------------------------------------------- */

/* "Content-Disposition: attachment; filename="<base>"\r\n", with the name made header-safe. */
static char *disposition(const char *rel)
{
	const char *base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	dbx_sb_puts(&sb, "Content-Disposition: attachment; filename=\"");
	for (const unsigned char *p = (const unsigned char *)base; *p; p++) {
		if (*p == '"' || *p == '\\')
			dbx_sb_putc(&sb, '\\');
		dbx_sb_putc(&sb, *p < 0x20 || *p == 0x7f ? '_' : (char)*p);
	}
	dbx_sb_puts(&sb, "\"\r\n");
	return dbx_sb_steal(&sb, NULL);
}

static void read_fn(struct req *r)
{
	struct agent *ag = req_agent(r);
	const char *path = req_query(r, "path");
	char rel[PATH_MAX];
	if (!path) {
		req_reply_text(r, 400, "Failed to deserialize query string: missing field `path`");
		return;
	}
	if (req_resolve(r, path, rel))
		return;
	/* O_NONBLOCK: a FIFO must not hang the worker (it is refused below). */
	int fd = dbx_path_open(ag->rootfd, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0, 0);
	if (fd == -ENOENT) {
		req_reply_err(r, ST_NOT_FOUND, "File not found");
		return;
	}
	if (fd < 0) {
		files_reply_errno(r, fd, "read", rel);
		return;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		files_reply_errno(r, -errno, "read", rel);
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		req_reply_err(r, ST_INVALID, "Path is a directory, not a file");
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		req_reply_err(r, ST_INVALID, "Path is not a regular file");
		goto out;
	}
	char *hdr = disposition(rel);
	req_stream_begin(r, 200, "application/octet-stream", st.st_size, hdr);
	free(hdr);
	int err = 0;
	if (!req_is_head(r)) {
		char *buf = malloc(AGENT_CHUNK);
		uint64_t left = (uint64_t)st.st_size;
		err = buf ? 0 : -ENOMEM;
		while (!err && left) {
			ssize_t n = read(fd, buf, left < AGENT_CHUNK ? left : AGENT_CHUNK);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				/* Shrunk under us: the promised length cannot be met. */
				err = n < 0 ? -errno : -EIO;
				break;
			}
			left -= (uint64_t)n;
			err = req_stream_write(r, buf, (size_t)n);
		}
		free(buf);
	}
	req_stream_end(r, err);
out:
	close(fd);
}

/* ---- POST /api/v1/files/delete ---------------------------------------------------------- */

static void delete_fn(struct req *r)
{
	struct agent *ag = req_agent(r);
	cJSON *j = req_json(r);
	const char *path;
	bool recursive = false;
	char rel[PATH_MAX];
	if (json_get_str(r, j, "path", true, &path) || json_get_bool(r, j, "recursive", &recursive))
		return;
	if (req_resolve(r, path, rel))
		return;
	if (strcmp(rel, ".") == 0) {
		req_reply_err(r, ST_FORBIDDEN, "Refusing to delete the workspace root %s",
			      ag->cfg.workspace);
		return;
	}
	const char *name;
	int pfd = dbx_path_open_parent(ag->rootfd, rel, &name);
	if (pfd == -ENOENT || pfd == -ENOTDIR) {
		req_reply_err(r, ST_NOT_FOUND, "File not found");
		return;
	}
	if (pfd < 0) {
		files_reply_errno(r, pfd, "delete", rel);
		return;
	}
	struct stat st;
	int e = 0;
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		e = -errno;
		if (e == -ENOENT)
			req_reply_err(r, ST_NOT_FOUND, "File not found");
		else
			files_reply_errno(r, e, "delete", rel);
		goto out;
	}
	if (!S_ISDIR(st.st_mode))
		e = unlinkat(pfd, name, 0) < 0 ? -errno : 0;
	else if (recursive)
		e = files_remove_tree(pfd, name);
	else
		e = unlinkat(pfd, name, AT_REMOVEDIR) < 0 ? -errno : 0;
	if (e < 0) {
		if (e == -ELOOP)
			req_reply_err(r, ST_INTERNAL,
				      "delete %s: directory tree deeper than %d levels", path,
				      FILES_WALK_DEPTH_MAX);
		else
			files_reply_errno(r, e, "delete", rel);
		goto out;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "success", true);
	req_reply_ok(r, o);
out:
	close(pfd);
}

/* ---- POST /api/v1/files/move and /rename ------------------------------------------------- */

static bool is_inside(const char *rel, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(rel, dir, n) == 0 && rel[n] == '/';
}

/* Shared by move and rename; the official texts differ per route. */
struct mv_msgs {
	const char *src_missing, *dst_exists;
};

static void do_move(struct req *r, const char *src, const char *dst, bool overwrite,
		    const struct mv_msgs *m)
{
	struct agent *ag = req_agent(r);
	char srel[PATH_MAX], drel[PATH_MAX];
	const char *sname, *dname;
	int spfd = -1, dpfd = -1, e;
	struct stat sst, dst_st;
	if (req_resolve(r, src, srel) || req_resolve(r, dst, drel))
		return;
	if (strcmp(srel, ".") == 0 || strcmp(drel, ".") == 0) {
		req_reply_err(r, ST_FORBIDDEN, "Refusing to move or replace the workspace root %s",
			      ag->cfg.workspace);
		return;
	}
	spfd = dbx_path_open_parent(ag->rootfd, srel, &sname);
	if (spfd >= 0 && fstatat(spfd, sname, &sst, AT_SYMLINK_NOFOLLOW) < 0)
		e = -errno;
	else
		e = spfd < 0 ? spfd : 0;
	if (e == -ENOENT || e == -ENOTDIR) {
		req_reply_err(r, ST_NOT_FOUND, "%s", m->src_missing);
		goto out;
	}
	if (e < 0) {
		files_reply_errno(r, e, "move", srel);
		goto out;
	}
	if (is_inside(drel, srel)) {
		req_reply_err(r, ST_INVALID, "Cannot move %s into itself (%s)", src, dst);
		goto out;
	}
	/* Parents of the destination, then its directory (both confined). */
	e = dbx_path_mkparents(ag->rootfd, drel, 0777);
	if (e >= 0) {
		dpfd = dbx_path_open_parent(ag->rootfd, drel, &dname);
		e = dpfd < 0 ? dpfd : 0;
	}
	if (e < 0) {
		files_reply_errno(r, e, "move to", drel);
		goto out;
	}
	if (fstatat(dpfd, dname, &dst_st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (!overwrite) {
			req_reply_err(r, ST_CONFLICT, "%s", m->dst_exists);
			goto out;
		}
		if (dst_st.st_dev == sst.st_dev && dst_st.st_ino == sst.st_ino)
			goto done; /* the same entry: rename(2) would do nothing either */
		if (is_inside(srel, drel)) {
			req_reply_err(r, ST_INVALID, "Cannot replace %s: it contains the source %s",
				      dst, src);
			goto out;
		}
		e = files_remove_tree(dpfd, dname);
		if (e < 0 && e != -ENOENT) {
			files_reply_errno(r, e, "remove", drel);
			goto out;
		}
	}
	e = renameat2(spfd, sname, dpfd, dname, overwrite ? 0 : RENAME_NOREPLACE);
	if (e < 0 && (errno == EINVAL || errno == ENOSYS) && !overwrite) {
		/* File systems without RENAME_NOREPLACE: the check above stands in for it. */
		struct stat tmp;
		if (fstatat(dpfd, dname, &tmp, AT_SYMLINK_NOFOLLOW) == 0)
			errno = EEXIST;
		else
			e = renameat(spfd, sname, dpfd, dname);
	}
	if (e < 0) {
		e = errno;
		if (e == EEXIST)
			req_reply_err(r, ST_CONFLICT, "%s", m->dst_exists);
		else if (e == EXDEV)
			req_reply_err(r, ST_INTERNAL, "move %s: %s (os error %d)", src, strerror(e),
				      e);
		else
			files_reply_errno(r, -e, "move", srel);
		goto out;
	}
done:;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "success", true);
	req_reply_ok(r, o);
out:
	if (spfd >= 0)
		close(spfd);
	if (dpfd >= 0)
		close(dpfd);
}

static void move_fn(struct req *r)
{
	static const struct mv_msgs m = {"Source file not found", "Destination already exists"};
	cJSON *j = req_json(r);
	const char *src, *dst;
	bool overwrite = false;
	if (json_get_str(r, j, "source", true, &src) ||
	    json_get_str(r, j, "destination", true, &dst) ||
	    json_get_bool(r, j, "overwrite", &overwrite))
		return;
	do_move(r, src, dst, overwrite, &m);
}

static void rename_fn(struct req *r)
{
	static const struct mv_msgs m = {"Old path not found", "New path already exists"};
	cJSON *j = req_json(r);
	const char *src, *dst;
	if (json_get_str(r, j, "oldPath", true, &src) || json_get_str(r, j, "newPath", true, &dst))
		return;
	do_move(r, src, dst, false, &m);
}

/* ---- POST /api/v1/files/chmod ------------------------------------------------------------ */

/* chmod of an O_PATH fd (fchmod refuses those): through its /proc/self/fd magic link, which
 * names exactly the inode already resolved (confined) — no path walk happens again. */
static int chmod_fd(int fd, mode_t mode)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	return chmod(p, mode) < 0 ? -errno : 0;
}

struct chmod_ctx {
	mode_t mode;
	uid_t uid;
	gid_t gid;
	bool chown;
};

static int chmod_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	struct chmod_ctx *c = w->ctx;
	/* Never through a symlink: O_NOFOLLOW gives the link itself, which we only chown. */
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return WALK_NEXT; /* per-entry errors are ignored, like the official agent */
	struct stat now;
	if (fstat(fd, &now) == 0) {
		if (!S_ISLNK(now.st_mode))
			chmod_fd(fd, c->mode);
		if (c->chown)
			fchownat(fd, "", c->uid, c->gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
	}
	close(fd);
	return S_ISDIR(st->st_mode) ? WALK_DESCEND : WALK_NEXT;
}

static int chmod_walk_error(struct walk *w, int err)
{
	return 0;
}

static int parse_mode(const char *s, mode_t *out)
{
	if (strncmp(s, "0o", 2) == 0 || strncmp(s, "0O", 2) == 0)
		s += 2;
	if (!*s)
		return -EINVAL;
	unsigned long v = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '7')
			return -EINVAL;
		v = v * 8 + (unsigned long)(*s - '0');
		if (v > 0xffffffffUL)
			return -EINVAL;
	}
	*out = (mode_t)(v & 0777);
	return 0;
}

static int parse_id(const char *s, bool group, unsigned *out)
{
	char *end;
	if (!*s)
		return -EINVAL;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*end && !errno && s[0] != '-' && v < 0xffffffffUL) {
		*out = (unsigned)v;
		return 0;
	}
	char buf[4096];
	if (group) {
		struct group g, *res = NULL;
		if (getgrnam_r(s, &g, buf, sizeof(buf), &res) || !res)
			return -ENOENT;
		*out = res->gr_gid;
	} else {
		struct passwd pw, *res = NULL;
		if (getpwnam_r(s, &pw, buf, sizeof(buf), &res) || !res)
			return -ENOENT;
		*out = res->pw_uid;
	}
	return 0;
}

static void chmod_fn(struct req *r)
{
	struct agent *ag = req_agent(r);
	cJSON *j = req_json(r);
	const char *path, *mode_s, *owner;
	bool recursive = false;
	struct chmod_ctx c = {.uid = (uid_t)-1, .gid = (gid_t)-1};
	char rel[PATH_MAX];
	if (json_get_str(r, j, "path", true, &path) || json_get_str(r, j, "mode", true, &mode_s) ||
	    json_get_bool(r, j, "recursive", &recursive) ||
	    json_get_str(r, j, "owner", false, &owner))
		return;
	if (req_resolve(r, path, rel))
		return;
	if (parse_mode(mode_s, &c.mode) < 0) {
		req_reply_err(r, ST_INVALID,
			      "Invalid mode: %s (expected octal like 755, 0755 or 0o755)", mode_s);
		return;
	}
	if (owner && *owner) {
		char user[256];
		const char *colon = strchr(owner, ':');
		size_t ul = colon ? (size_t)(colon - owner) : strlen(owner);
		unsigned id;
		if (ul >= sizeof(user)) {
			req_reply_err(r, ST_INVALID, "Invalid owner: %s", owner);
			return;
		}
		memcpy(user, owner, ul);
		user[ul] = '\0';
		if (parse_id(user, false, &id) < 0) {
			req_reply_err(r, ST_INVALID, "Invalid owner: unknown user %s", user);
			return;
		}
		c.uid = id;
		if (colon && colon[1]) {
			if (parse_id(colon + 1, true, &id) < 0) {
				req_reply_err(r, ST_INVALID, "Invalid owner: unknown group %s",
					      colon + 1);
				return;
			}
			c.gid = id;
		}
		c.chown = true;
	}
	/* The named path itself follows symlinks, confined to the workspace. */
	int fd = dbx_path_open(ag->rootfd, rel, O_PATH, 0, 0);
	if (fd == -ENOENT || fd == -ENOTDIR) {
		req_reply_err(r, ST_NOT_FOUND, "Path not found");
		return;
	}
	if (fd < 0) {
		files_reply_errno(r, fd, "chmod", rel);
		return;
	}
	struct stat st;
	int e = fstat(fd, &st) < 0 ? -errno : chmod_fd(fd, c.mode);
	if (!e && c.chown && fchownat(fd, "", c.uid, c.gid, AT_EMPTY_PATH) < 0)
		e = -errno;
	if (e < 0) {
		files_reply_errno(r, e, "chmod", rel);
		close(fd);
		return;
	}
	if (recursive && S_ISDIR(st.st_mode)) {
		int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		struct walk *w = calloc(1, sizeof(*w));
		if (dfd >= 0 && w) {
			snprintf(w->path, sizeof(w->path), "%s", rel);
			w->len = strlen(w->path);
			w->visit = chmod_visit;
			w->error = chmod_walk_error;
			w->ctx = &c;
			walk_dir(w, dfd);
		} else if (dfd >= 0) {
			close(dfd);
		}
		free(w);
	}
	close(fd);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "success", true);
	req_reply_ok(r, o);
}

/* ---- the route table ----------------------------------------------------------------------- */

const struct route files_routes[] = {
	{"GET", "/api/v1/files/list", list_fn, 0, NULL},
	{"GET", "/api/v1/files/read", read_fn, R_XFER, NULL},
	{"GET", "/api/v1/files/download", read_fn, R_XFER, NULL},
	{"POST", "/api/v1/files/write", files_write, 0, files_write_prepare},
	{"POST", "/api/v1/files/delete", delete_fn, R_JSON, NULL},
	{"POST", "/api/v1/files/move", move_fn, R_JSON, NULL},
	{"POST", "/api/v1/files/rename", rename_fn, R_JSON, NULL},
	{"POST", "/api/v1/files/chmod", chmod_fn, R_JSON, NULL},
	{"POST", "/api/v1/files/batch-upload", files_batch_upload, 0, files_upload_prepare},
	{"POST", "/api/v1/files/batch-download", files_batch_download, R_JSON | R_XFER, NULL},
	{"POST", "/api/v1/files/search", files_search, R_JSON, NULL},
	{"POST", "/api/v1/files/find", files_find, R_JSON, NULL},
	{"POST", "/api/v1/files/replace", files_replace, R_JSON, NULL},
	{NULL, NULL, NULL, 0, NULL},
};
