/* fsapi.c: the /fs/v1 routes (PROTOCOL.md §2): the route table, the error/attr helpers shared by
 * fsapi_data.c, fsapi_batch.c and locks.c, and the metadata operations (stat, statfs, list,
 * mkdir, rmdir, unlink, rename, symlink, readlink, link, chmod, chown, utimens, truncate, fsync,
 * mknod, xattrs, xattr-remove).
 *
 * Threads: every handler runs on a worker. Each operation is a function of a struct fs_op (its
 * arguments come from the query or, in a batch, from JSON fields), so HTTP routes and batch
 * share one implementation. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "events.h"
#include "files.h"
#include "fsapi.h"
#include "misc.h"
#include "path.h"

/* ---- errors and replies ------------------------------------------------------------------ */

int fs_fail(struct fs_op *o, int err, const char *fmt, ...)
{
	if (err < 0)
		err = -err;
	char what[FS_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	const char *why = strerror(err);
	if (err == EXDEV)
		why = "path leads outside the workspace";
	snprintf(o->msg, sizeof(o->msg), "%.440s: %.60s", what, why);
	o->err = err;
	return -err;
}

int fs_http_status(int err)
{
	switch (err < 0 ? -err : err) {
	case ENOENT:
		return 404;
	case EACCES:
	case EPERM:
	case EXDEV:
	case EROFS:
		return 403;
	case EEXIST:
	case ENOTEMPTY:
	case EBUSY:
	case ETXTBSY:
	case EAGAIN:
	case ETIMEDOUT:
		return 409;
	case ESTALE:
		return 412;
	case EFBIG:
	case ENOSPC:
	case EDQUOT:
		return 507;
	case EIO:
	case ENOMEM:
		return 500;
	default:
		return 400;
	}
}

static char *print_json(cJSON *o, size_t *ret_len)
{
	char *s = cJSON_PrintUnformatted(o);
	*ret_len = s ? strlen(s) : 0;
	return s;
}

void fs_reply_error(struct req *r, int err, const char *msg)
{
	fs_reply_error_http(r, fs_http_status(err), err, msg);
}

void fs_reply_error_http(struct req *r, int http_status, int err, const char *msg)
{
	if (err < 0)
		err = -err;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "error", dbx_errno_name(err));
	/* Messages quote client paths: keep the JSON valid UTF-8. */
	const char *m = msg ? msg : strerror(err);
	char *clean = dbx_utf8_lossy(m, strlen(m), NULL);
	cJSON_AddStringToObject(o, "message", clean ? clean : "");
	free(clean);
	size_t n;
	char *s = print_json(o, &n);
	cJSON_Delete(o);
	events_stamp(r);
	if (!s) {
		req_reply_empty(r, 500);
		return;
	}
	req_reply_raw(r, http_status, "application/json", s, n);
}

void fs_reply_json(struct req *r, cJSON *obj)
{
	size_t n;
	char *s = obj ? print_json(obj, &n) : NULL;
	cJSON_Delete(obj);
	if (!s) {
		fs_reply_error(r, ENOMEM, "reply: out of memory");
		return;
	}
	events_stamp(r);
	req_reply_raw(r, 200, "application/json", s, n);
}

static void add_dir_header(struct req *r, const char *name, const struct stat *st)
{
	cJSON *j = fs_attr_json(st, NULL);
	char *s = j ? cJSON_PrintUnformatted(j) : NULL;

	if (s)
		req_add_header(r, name, s);
	free(s);
	cJSON_Delete(j);
}

void fs_reply_op(struct req *r, struct fs_op *o)
{
	if (!o->err && o->has_dir)
		add_dir_header(r, "X-Dbx-Dir", &o->dir);
	if (!o->err && o->has_from_dir)
		add_dir_header(r, "X-Dbx-From-Dir", &o->from_dir);
	if (o->err) {
		cJSON_Delete(o->json);
		o->json = NULL;
		fs_reply_error(r, o->err, o->msg);
	} else {
		fs_reply_json(r, o->json ? o->json : cJSON_CreateObject());
		o->json = NULL;
	}
}

/* ---- arguments ----------------------------------------------------------------------------- */

static const char *arg(struct fs_op *o, const char *name)
{
	return o->a->get(o->a->ctx, name);
}

int fs_arg_path(struct fs_op *o, const char *name, char rel[PATH_MAX])
{
	const char *v = arg(o, name);
	if (!v)
		return fs_fail(o, EINVAL, "missing argument `%s`", name);
	int e = files_norm(o->ag, v, rel);
	if (e < 0)
		return fs_fail(o, e, "%.256s", v);
	return 0;
}

int fs_arg_u64(struct fs_op *o, const char *name, uint64_t def, uint64_t *out)
{
	const char *v = arg(o, name);
	if (!v || !*v) {
		*out = def;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || *end || v[0] == '-' || x > INT64_MAX)
		return fs_fail(o, EINVAL, "argument `%s`=%.64s: not a number", name, v);
	*out = x;
	return 0;
}

int fs_arg_bool(struct fs_op *o, const char *name, bool def, bool *out)
{
	const char *v = arg(o, name);
	if (!v || !*v)
		*out = def;
	else if (!strcmp(v, "1") || !strcmp(v, "true"))
		*out = true;
	else if (!strcmp(v, "0") || !strcmp(v, "false"))
		*out = false;
	else
		return fs_fail(o, EINVAL, "argument `%s`=%.64s: expected 0 or 1", name, v);
	return 0;
}

int fs_arg_mode(struct fs_op *o, const char *name, mode_t def, mode_t *out)
{
	const char *v = arg(o, name);
	if (!v || !*v) {
		*out = def;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, 8);
	if (errno || *end || v[0] == '-' || x > 0177777)
		return fs_fail(o, EINVAL, "argument `%s`=%.64s: not an octal mode", name, v);
	*out = (mode_t)x;
	return 0;
}

/* -1 (absent or "-1") or an id. */
static int arg_id(struct fs_op *o, const char *name, int64_t *out)
{
	const char *v = arg(o, name);
	*out = -1;
	if (!v || !*v || !strcmp(v, "-1"))
		return 0;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || *end || v[0] == '-' || x >= UINT32_MAX)
		return fs_fail(o, EINVAL, "argument `%s`=%.64s: not an id", name, v);
	*out = (int64_t)x;
	return 0;
}

/* ---- attributes ---------------------------------------------------------------------------- */

const char *fs_verstr(const struct stat *st, char buf[FS_VER_MAX])
{
	fs_ver(st, buf);
	return buf;
}

cJSON *fs_attr_at(int dfd, const char *name, const struct stat *st_or_null)
{
	struct stat st;
	if (st_or_null)
		st = *st_or_null;
	else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return NULL;
	char target[PATH_MAX];
	const char *tp = NULL;
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		tp = target;
	}
	return fs_attr_json(&st, tp);
}

int fs_parent(struct agent *ag, const char *rel, const char **ret_name)
{
	if (strcmp(rel, ".") == 0) {
		*ret_name = ".";
		int fd = fcntl(ag->rootfd, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -errno : fd;
	}
	return dbx_path_open_parent(ag->rootfd, rel, ret_name);
}

/* The parent of the path argument @argname, with its failure recorded. */
static int loc(struct fs_op *o, const char *argname, char rel[PATH_MAX], const char **ret_name,
	       const char *opname)
{
	int r = fs_arg_path(o, argname, rel);
	if (r < 0)
		return r;
	int dfd = fs_parent(o->ag, rel, ret_name);
	if (dfd < 0)
		return fs_fail(o, dfd, "%s %s", opname, rel);
	return dfd;
}

/* Success: o->json = attr of @name in @dfd. */
void fs_note_dir(struct fs_op *o, int dfd, bool from)
{
	struct stat *st = from ? &o->from_dir : &o->dir;
	bool *has = from ? &o->has_from_dir : &o->has_dir;

	*has = fstat(dfd, st) == 0;
}

static int reply_attr(struct fs_op *o, int dfd, const char *name, const char *opname,
		      const char *rel)
{
	o->json = fs_attr_at(dfd, name, NULL);
	if (!o->json)
		return fs_fail(o, errno, "%s %s", opname, rel);
	return 0;
}

/* ---- metadata operations ------------------------------------------------------------------- */

static int op_stat(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	int dfd = loc(o, "path", rel, &name, "stat");
	if (dfd < 0)
		return dfd;
	int r = reply_attr(o, dfd, name, "stat", rel);
	close(dfd);
	return r;
}

static int op_statfs(struct fs_op *o)
{
	struct statfs s;
	if (fstatfs(o->ag->rootfd, &s) < 0)
		return fs_fail(o, errno, "statfs");
	cJSON *j = cJSON_CreateObject();
	cJSON_AddNumberToObject(j, "bsize", (double)s.f_bsize);
	cJSON_AddNumberToObject(j, "frsize", (double)s.f_frsize);
	cJSON_AddNumberToObject(j, "blocks", (double)s.f_blocks);
	cJSON_AddNumberToObject(j, "bfree", (double)s.f_bfree);
	cJSON_AddNumberToObject(j, "bavail", (double)s.f_bavail);
	cJSON_AddNumberToObject(j, "files", (double)s.f_files);
	cJSON_AddNumberToObject(j, "ffree", (double)s.f_ffree);
	cJSON_AddNumberToObject(j, "namemax", (double)s.f_namelen);
	o->json = j;
	return 0;
}

static int op_list(struct fs_op *o)
{
	char rel[PATH_MAX];
	uint64_t off, limit;
	int r = fs_arg_path(o, "path", rel);
	if (r < 0 || (r = fs_arg_u64(o, "offset", 0, &off)) < 0 ||
	    (r = fs_arg_u64(o, "limit", FS_LIST_DEFAULT, &limit)) < 0)
		return r;
	if (limit == 0 || limit > FS_LIST_MAX)
		return fs_fail(o, EINVAL, "list %s: limit must be 1..%d", rel, FS_LIST_MAX);
	/* The directory itself is not followed when it is a symlink (ENOTDIR). */
	int fd = dbx_path_open(o->ag->rootfd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, 0);
	if (fd == -ELOOP)
		fd = -ENOTDIR;
	if (fd < 0)
		return fs_fail(o, fd, "list %s", rel);
	struct stat dst;
	if (fstat(fd, &dst) < 0) {
		r = fs_fail(o, errno, "list %s", rel);
		close(fd);
		return r;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		r = fs_fail(o, errno, "list %s", rel);
		close(fd);
		return r;
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddItemToObject(j, "attr", fs_attr_json(&dst, NULL));
	cJSON *ents = cJSON_AddArrayToObject(j, "entries");
	uint64_t idx = 0, n = 0;
	bool more = false;
	struct dirent *de;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno) {
				r = fs_fail(o, errno, "list %s", rel);
				goto fail;
			}
			break;
		}
		const char *nm = de->d_name;
		if (nm[0] == '.' && (!nm[1] || (nm[1] == '.' && !nm[2])))
			continue;
		if (idx++ < off)
			continue;
		if (n == limit) {
			more = true;
			break;
		}
		cJSON *a = fs_attr_at(dirfd(d), nm, NULL);
		if (!a)
			continue; /* removed meanwhile */
		cJSON *e = cJSON_CreateObject();
		char *lossy = dbx_utf8_lossy(nm, strlen(nm), NULL);
		cJSON_AddStringToObject(e, "name", lossy ? lossy : nm);
		free(lossy);
		cJSON_AddItemToObject(e, "attr", a);
		cJSON_AddItemToArray(ents, e);
		n++;
	}
	if (more)
		cJSON_AddNumberToObject(j, "next", (double)(off + n));
	else
		cJSON_AddNullToObject(j, "next");
	closedir(d);
	o->json = j;
	return 0;
fail:
	closedir(d);
	cJSON_Delete(j);
	return r;
}

static int op_mkdir(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	mode_t mode;
	int dfd = loc(o, "path", rel, &name, "mkdir");
	if (dfd < 0)
		return dfd;
	int r = fs_arg_mode(o, "mode", 0755, &mode);
	if (r == 0 && mkdirat(dfd, name, mode & 07777) < 0)
		r = fs_fail(o, errno, "mkdir %s", rel);
	if (r == 0)
		r = reply_attr(o, dfd, name, "mkdir", rel);
	if (r == 0)
		fs_note_dir(o, dfd, false);
	close(dfd);
	return r;
}

static int op_rmdir(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	int dfd = loc(o, "path", rel, &name, "rmdir");
	if (dfd < 0)
		return dfd;
	int r = 0;
	if (strcmp(rel, ".") == 0)
		r = fs_fail(o, EBUSY, "rmdir %s", rel);
	else if (unlinkat(dfd, name, AT_REMOVEDIR) < 0)
		r = fs_fail(o, errno, "rmdir %s", rel);
	else
		fs_note_dir(o, dfd, false);
	close(dfd);
	if (r == 0)
		o->json = cJSON_CreateObject();
	return r;
}

static int op_unlink(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	int dfd = loc(o, "path", rel, &name, "unlink");
	if (dfd < 0)
		return dfd;
	int r = 0;
	if (strcmp(rel, ".") == 0)
		r = fs_fail(o, EISDIR, "unlink %s", rel);
	else if (unlinkat(dfd, name, 0) < 0)
		r = fs_fail(o, errno, "unlink %s", rel);
	else
		fs_note_dir(o, dfd, false);
	close(dfd);
	if (r == 0)
		o->json = cJSON_CreateObject();
	return r;
}

static int op_rename(struct fs_op *o)
{
	char rel[PATH_MAX], to[PATH_MAX];
	const char *name, *toname;
	unsigned flags = 0;
	const char *fl = arg(o, "flags");
	if (fl && !strcmp(fl, "noreplace"))
		flags = RENAME_NOREPLACE;
	else if (fl && !strcmp(fl, "exchange"))
		flags = RENAME_EXCHANGE;
	else if (fl && *fl)
		return fs_fail(o, EINVAL, "rename: flags=%.64s", fl);
	int dfd = loc(o, "path", rel, &name, "rename");
	if (dfd < 0)
		return dfd;
	int r, tfd = loc(o, "to", to, &toname, "rename");
	if (tfd < 0) {
		close(dfd);
		return tfd;
	}
	if (!strcmp(rel, ".") || !strcmp(to, "."))
		r = fs_fail(o, EBUSY, "rename %s to %s", rel, to);
	else if (renameat2(dfd, name, tfd, toname, flags) < 0)
		r = fs_fail(o, errno, "rename %s to %s", rel, to);
	else
		r = reply_attr(o, tfd, toname, "rename", to);
	if (r == 0) {
		fs_note_dir(o, tfd, false);
		fs_note_dir(o, dfd, true);
		cJSON *j = cJSON_CreateObject();
		cJSON_AddItemToObject(j, "attr", o->json);
		o->json = j;
	}
	close(dfd);
	close(tfd);
	return r;
}

static int op_symlink(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	const char *target = arg(o, "target");
	if (!target || !*target)
		return fs_fail(o, EINVAL, "symlink: missing argument `target`");
	if (strlen(target) >= PATH_MAX)
		return fs_fail(o, ENAMETOOLONG, "symlink: target");
	if (!dbx_utf8_valid(target, strlen(target), false))
		return fs_fail(o, EINVAL, "symlink: target is not valid UTF-8");
	int dfd = loc(o, "path", rel, &name, "symlink");
	if (dfd < 0)
		return dfd;
	int r = 0;
	if (symlinkat(target, dfd, name) < 0)
		r = fs_fail(o, errno, "symlink %s", rel);
	else
		r = reply_attr(o, dfd, name, "symlink", rel);
	if (r == 0)
		fs_note_dir(o, dfd, false);
	close(dfd);
	return r;
}

static int op_readlink(struct fs_op *o)
{
	char rel[PATH_MAX], target[PATH_MAX];
	const char *name;
	int dfd = loc(o, "path", rel, &name, "readlink");
	if (dfd < 0)
		return dfd;
	int r = 0;
	ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);
	if (n < 0) {
		r = fs_fail(o, errno, "readlink %s", rel);
	} else {
		target[n] = '\0';
		char *t = dbx_utf8_lossy(target, (size_t)n, NULL);
		o->json = cJSON_CreateObject();
		cJSON_AddStringToObject(o->json, "target", t ? t : "");
		free(t);
	}
	close(dfd);
	return r;
}

static int op_link(struct fs_op *o)
{
	char rel[PATH_MAX], to[PATH_MAX];
	const char *name, *toname;
	int dfd = loc(o, "path", rel, &name, "link");
	if (dfd < 0)
		return dfd;
	int r, tfd = loc(o, "to", to, &toname, "link");
	if (tfd < 0) {
		close(dfd);
		return tfd;
	}
	if (!strcmp(rel, "."))
		r = fs_fail(o, EPERM, "link %s to %s", rel, to);
	else if (linkat(dfd, name, tfd, toname, 0) < 0)
		r = fs_fail(o, errno, "link %s to %s", rel, to);
	else
		r = reply_attr(o, tfd, toname, "link", to);
	if (r == 0)
		fs_note_dir(o, tfd, false);
	close(dfd);
	close(tfd);
	return r;
}

static int op_chmod(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	mode_t mode;
	const char *v = arg(o, "mode");
	if (!v || !*v)
		return fs_fail(o, EINVAL, "chmod: missing argument `mode`");
	int r = fs_arg_mode(o, "mode", 0, &mode);
	if (r < 0)
		return r;
	int dfd = loc(o, "path", rel, &name, "chmod");
	if (dfd < 0)
		return dfd;
	/* glibc refuses a symlink itself (EOPNOTSUPP) instead of following it. */
	if (fchmodat(dfd, name, mode & 07777, AT_SYMLINK_NOFOLLOW) < 0)
		r = fs_fail(o, errno, "chmod %s", rel);
	else
		r = reply_attr(o, dfd, name, "chmod", rel);
	close(dfd);
	return r;
}

static int op_chown(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	int64_t uid, gid;
	int r = arg_id(o, "uid", &uid);
	if (r < 0 || (r = arg_id(o, "gid", &gid)) < 0)
		return r;
	int dfd = loc(o, "path", rel, &name, "chown");
	if (dfd < 0)
		return dfd;
	if (fchownat(dfd, name, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) < 0)
		r = fs_fail(o, errno, "chown %s", rel);
	else
		r = reply_attr(o, dfd, name, "chown", rel);
	close(dfd);
	return r;
}

/* "sec.nsec" (the fraction as decimal digits, up to 9), "now" or "omit" (or absent). */
static int parse_time(struct fs_op *o, const char *name, struct timespec *ts)
{
	const char *v = arg(o, name);
	if (!v || !*v || !strcmp(v, "omit")) {
		ts->tv_sec = 0;
		ts->tv_nsec = UTIME_OMIT;
		return 0;
	}
	if (!strcmp(v, "now")) {
		ts->tv_sec = 0;
		ts->tv_nsec = UTIME_NOW;
		return 0;
	}
	char *end;
	errno = 0;
	long long s = strtoll(v, &end, 10);
	long ns = 0;
	if (errno || end == v)
		goto bad;
	if (*end == '.') {
		const char *p = end + 1;
		int digits = 0;
		for (; *p >= '0' && *p <= '9'; p++, digits++) {
			if (digits >= 9)
				goto bad;
			ns = ns * 10 + (*p - '0');
		}
		if (!digits)
			goto bad;
		for (int i = digits; i < 9; i++)
			ns *= 10;
		end = (char *)p;
	}
	if (*end)
		goto bad;
	ts->tv_sec = (time_t)s;
	ts->tv_nsec = ns;
	return 0;
bad:
	return fs_fail(o, EINVAL, "argument `%s`=%.64s: expected sec.nsec, now or omit", name, v);
}

static int op_utimens(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	struct timespec ts[2];
	int r = parse_time(o, "atime", &ts[0]);
	if (r < 0 || (r = parse_time(o, "mtime", &ts[1])) < 0)
		return r;
	int dfd = loc(o, "path", rel, &name, "utimens");
	if (dfd < 0)
		return dfd;
	if (utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = fs_fail(o, errno, "utimens %s", rel);
	else
		r = reply_attr(o, dfd, name, "utimens", rel);
	close(dfd);
	return r;
}

static int op_mknod(struct fs_op *o)
{
	char rel[PATH_MAX];
	const char *name;
	mode_t mode;
	const char *v = arg(o, "mode");
	if (!v || !*v)
		return fs_fail(o, EINVAL, "mknod: missing argument `mode`");
	int r = fs_arg_mode(o, "mode", 0, &mode);
	if (r < 0)
		return r;
	if (!S_ISFIFO(mode))
		return fs_fail(o, EPERM, "mknod: only FIFOs (mode %o)", (unsigned)mode);
	int dfd = loc(o, "path", rel, &name, "mknod");
	if (dfd < 0)
		return dfd;
	if (mknodat(dfd, name, mode, 0) < 0)
		r = fs_fail(o, errno, "mknod %s", rel);
	else
		r = reply_attr(o, dfd, name, "mknod", rel);
	if (r == 0)
		fs_note_dir(o, dfd, false);
	close(dfd);
	return r;
}

/* Opens the data object of @argname, following a final symlink inside the workspace only. */
static int open_data(struct fs_op *o, const char *opname, char rel[PATH_MAX], int flags)
{
	int r = fs_arg_path(o, "path", rel);
	if (r < 0)
		return r;
	int fd = dbx_path_open(o->ag->rootfd, rel, flags | O_NOCTTY | O_NONBLOCK, 0, 0);
	if (fd < 0)
		return fs_fail(o, fd, "%s %s", opname, rel);
	return fd;
}

static int fd_attr(struct fs_op *o, int fd, const char *opname, const char *rel)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return fs_fail(o, errno, "%s %s", opname, rel);
	o->json = fs_attr_json(&st, NULL);
	return 0;
}

static int op_truncate(struct fs_op *o)
{
	char rel[PATH_MAX];
	uint64_t size;
	const char *v = arg(o, "size");
	if (!v || !*v)
		return fs_fail(o, EINVAL, "truncate: missing argument `size`");
	int r = fs_arg_u64(o, "size", 0, &size);
	if (r < 0)
		return r;
	int fd = open_data(o, "truncate", rel, O_WRONLY);
	if (fd < 0)
		return fd;
	if (ftruncate(fd, (off_t)size) < 0)
		r = fs_fail(o, errno, "truncate %s", rel);
	else
		r = fd_attr(o, fd, "truncate", rel);
	close(fd);
	return r;
}

static int op_fsync(struct fs_op *o)
{
	char rel[PATH_MAX];
	bool data;
	int r = fs_arg_bool(o, "datasync", false, &data);
	if (r < 0)
		return r;
	int fd = open_data(o, "fsync", rel, O_RDONLY);
	if (fd < 0)
		return fd;
	if ((data ? fdatasync(fd) : fsync(fd)) < 0)
		r = fs_fail(o, errno, "fsync %s", rel);
	else
		r = fd_attr(o, fd, "fsync", rel);
	close(fd);
	return r;
}

/* ---- xattrs (names; values are in fsapi_data.c) ---------------------------------------------- */

static int op_xattrs(struct fs_op *o)
{
	char rel[PATH_MAX], proc[64];
	const char *name;
	int dfd = loc(o, "path", rel, &name, "xattrs");
	if (dfd < 0)
		return dfd;
	char *buf = NULL;
	int r = 0;
	/* The confined parent through /proc, then the name itself without following it. */
	char path[PATH_MAX + 64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dfd);
	snprintf(path, sizeof(path), "%s/%s", proc, name);
	ssize_t n = 0;
	for (int tries = 0; tries < 4; tries++) {
		n = llistxattr(path, NULL, 0);
		if (n < 0)
			break;
		free(buf);
		buf = malloc((size_t)n + 1);
		if (!buf) {
			n = -1;
			errno = ENOMEM;
			break;
		}
		n = llistxattr(path, buf, (size_t)n);
		if (n >= 0 || errno != ERANGE)
			break;
	}
	if (n < 0) {
		r = fs_fail(o, errno, "xattrs %s", rel);
		goto out;
	}
	o->json = cJSON_CreateObject();
	cJSON *names = cJSON_AddArrayToObject(o->json, "names");
	for (ssize_t i = 0; i < n;) {
		const char *x = buf + i;
		size_t l = strnlen(x, (size_t)(n - i));
		if (l > 5 && !strncmp(x, "user.", 5))
			cJSON_AddItemToArray(names, cJSON_CreateString(x));
		i += (ssize_t)l + 1;
	}
out:
	free(buf);
	close(dfd);
	return r;
}

static int op_xattr_remove(struct fs_op *o)
{
	char rel[PATH_MAX], path[PATH_MAX + 64];
	const char *name;
	const char *xn = arg(o, "name");
	if (!xn || strncmp(xn, "user.", 5) || !xn[5])
		return fs_fail(o, EOPNOTSUPP, "xattr-remove %.64s", xn ? xn : "(no name)");
	int dfd = loc(o, "path", rel, &name, "xattr-remove");
	if (dfd < 0)
		return dfd;
	int r = 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dfd, name);
	if (lremovexattr(path, xn) < 0)
		r = fs_fail(o, errno, "xattr-remove %s %.64s", rel, xn);
	else
		o->json = cJSON_CreateObject();
	close(dfd);
	return r;
}

/* ---- routing ------------------------------------------------------------------------------- */

static const struct {
	const char *name;
	fs_op_fn fn;
} ops[] = {
	{"stat", op_stat},       {"statfs", op_statfs},   {"list", op_list},
	{"mkdir", op_mkdir},     {"rmdir", op_rmdir},     {"unlink", op_unlink},
	{"rename", op_rename},   {"symlink", op_symlink}, {"readlink", op_readlink},
	{"link", op_link},       {"chmod", op_chmod},     {"chown", op_chown},
	{"utimens", op_utimens}, {"mknod", op_mknod},     {"truncate", op_truncate},
	{"fsync", op_fsync},     {"xattrs", op_xattrs},   {"xattr-remove", op_xattr_remove},
};

fs_op_fn fs_op_find(const char *name)
{
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (!strcmp(ops[i].name, name))
			return ops[i].fn;
	return NULL;
}

static const char *query_get(void *ctx, const char *name)
{
	return req_query(ctx, name);
}

static void simple_route(struct req *r)
{
	const char *p = req_path(r);
	const char *slash = strrchr(p, '/');
	fs_op_fn fn = fs_op_find(slash ? slash + 1 : p);
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a};
	if (!fn)
		fs_fail(&o, ENOSYS, "%s", p);
	else
		fn(&o);
	fs_reply_op(r, &o);
}

const struct route fs_routes[] = {
	{"GET", "/fs/v1/stat", simple_route, R_INLINE, NULL},
	{"GET", "/fs/v1/statfs", simple_route, R_INLINE, NULL},
	{"GET", "/fs/v1/list", simple_route, 0, NULL},
	{"GET", "/fs/v1/tree", fs_tree_route, R_XFER, NULL},
	{"GET", "/fs/v1/read", fs_read_route, R_XFER, NULL},
	{"PUT", "/fs/v1/write", fs_write_route, R_STREAM, fs_write_prepare},
	{"POST", "/fs/v1/truncate", simple_route, 0, NULL},
	{"POST", "/fs/v1/fsync", simple_route, 0, NULL},
	{"POST", "/fs/v1/mkdir", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/rmdir", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/unlink", simple_route, 0, NULL},
	{"POST", "/fs/v1/rename", simple_route, 0, NULL},
	{"POST", "/fs/v1/symlink", simple_route, R_INLINE, NULL},
	{"GET", "/fs/v1/readlink", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/link", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/chmod", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/chown", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/utimens", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/mknod", simple_route, R_INLINE, NULL},
	{"GET", "/fs/v1/xattr", fs_xattr_get_route, 0, NULL},
	{"GET", "/fs/v1/xattrs", simple_route, R_INLINE, NULL},
	{"PUT", "/fs/v1/xattr", fs_xattr_set_route, R_ANYBODY, fs_xattr_prepare},
	{"POST", "/fs/v1/xattr-remove", simple_route, R_INLINE, NULL},
	{"POST", "/fs/v1/lock", fs_lock_route, R_XFER, NULL},
	{"POST", "/fs/v1/batch", fs_batch_route, R_ANYBODY, fs_batch_prepare},
	{"GET", "/fs/v1/archive", fs_archive_get_route, R_XFER, NULL},
	{"POST", "/fs/v1/archive", fs_archive_post_route, R_JSON | R_XFER, fs_archive_post_prepare},
	{"PUT", "/fs/v1/archive", fs_archive_put_route, R_STREAM, fs_archive_put_prepare},
	{"GET", "/fs/v1/hashes", fs_hashes_route, R_XFER, NULL},
	{NULL, NULL, NULL, 0, NULL},
};
