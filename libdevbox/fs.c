/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fs: the /fs/v1 file API (agent/PROTOCOL.md §2) — one function per route, each a single
 * dbx__request().  Thread-safe as the client is; no state of its own.
 *
 * Retries: reads and the operations whose repetition changes nothing (stat, list, tree, read,
 * readlink, xattr reads, statfs, truncate to a size, fsync, chmod, chown, utimens with explicit
 * times) are idempotent; creations, removals, renames, writes, xattr changes and locks are not
 * retried, since a lost reply would make the second attempt fail or do the thing twice.
 */
#include "internal.h"

#include <errno.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#define TREE_LINE_MAX          ((size_t)256 << 10) /* one NDJSON line: an attr and a path */
#define XATTR_VALUE_MAX        ((size_t)64 << 10)
#define STREAM_WRITE_THRESHOLD ((size_t)1 << 20) /* larger bodies use the stall timeout */

static const char *show(const char *path)
{
	return path && *path ? path : ".";
}

/* Starts a query with path=<path> ("" and NULL mean the root). */
static int query_path(struct dbx_strbuf *q, const char *key, const char *path)
{
	return dbx__query_add(q, key, show(path));
}

static void octal(char *buf, size_t len, uint32_t mode)
{
	snprintf(buf, len, "%o", (unsigned)mode);
}

/* A JSON call on /fs/v1/<route>; *ret_json may be NULL to ignore the reply. */
static int fs_json(dbx_client *c, const char *method, const char *route, const char *query,
		   bool idempotent, const char *op, const char *path, cJSON **ret_json)
{
	char p[64];
	snprintf(p, sizeof(p), "/fs/v1/%s", route);
	struct dbx__req rq = {
		.method = method,
		.path = p,
		.query = query,
		.idempotent = idempotent,
		.op = op,
		.err_path = show(path),
	};
	return dbx__request_json(c, &rq, ret_json);
}

/* A call whose reply is an attr (or {"attr":...} with wrapped). */
static int fs_attr_call(dbx_client *c, const char *method, const char *route, const char *query,
			bool idempotent, const char *op, const char *path, bool wrapped,
			struct dbx_attr *ret_attr)
{
	cJSON *j = NULL;
	int r = fs_json(c, method, route, query, idempotent, op, path, &j);
	if (r < 0)
		return r;
	if (ret_attr) {
		const cJSON *a = wrapped ? cJSON_GetObjectItemCaseSensitive(j, "attr") : j;
		r = dbx__attr_from_json(a, ret_attr, NULL);
		if (r < 0)
			r = dbx__error(EPROTO, "%s %s: %s", op, show(path), dbx_error_last());
	}
	cJSON_Delete(j);
	return r;
}

static int oom(const char *op, const char *path)
{
	return dbx__error(ENOMEM, "%s %s: out of memory", op, show(path));
}

/* ---- metadata ----------------------------------------------------------------------------- */

int dbx_fs_stat(dbx_client *c, const char *path, struct dbx_attr *ret_attr)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	int r = query_path(&q, "path", path);
	if (r == 0)
		r = fs_attr_call(c, "GET", "stat", q.data, true, "stat", path, false, ret_attr);
	dbx_sb_free(&q);
	return r;
}

int dbx_fs_statfs(dbx_client *c, struct statvfs *ret_st)
{
	cJSON *j = NULL;
	uint64_t v;
	int r = fs_json(c, "GET", "statfs", NULL, true, "statfs", ".", &j);
	if (r < 0)
		return r;
	memset(ret_st, 0, sizeof(*ret_st));
	if (!dbx__json_u64(j, "bsize", &v)) {
		cJSON_Delete(j);
		return dbx__error(EPROTO, "statfs: the agent's reply has no bsize");
	}
	ret_st->f_bsize = (unsigned long)v;
	ret_st->f_frsize = dbx__json_u64(j, "frsize", &v) ? (unsigned long)v : ret_st->f_bsize;
	if (dbx__json_u64(j, "blocks", &v))
		ret_st->f_blocks = (fsblkcnt_t)v;
	if (dbx__json_u64(j, "bfree", &v))
		ret_st->f_bfree = (fsblkcnt_t)v;
	if (dbx__json_u64(j, "bavail", &v))
		ret_st->f_bavail = (fsblkcnt_t)v;
	if (dbx__json_u64(j, "files", &v))
		ret_st->f_files = (fsfilcnt_t)v;
	if (dbx__json_u64(j, "ffree", &v)) {
		ret_st->f_ffree = (fsfilcnt_t)v;
		ret_st->f_favail = (fsfilcnt_t)v;
	}
	ret_st->f_namemax = dbx__json_u64(j, "namemax", &v) ? (unsigned long)v : 255;
	cJSON_Delete(j);
	return 0;
}

int dbx_fs_list(dbx_client *c, const char *path, struct dbx_attr *ret_dir, dbx_dirent_fn fn,
		void *ud)
{
	uint64_t offset = 0;
	bool first = true;
	int r;

	for (;;) {
		struct dbx_strbuf q = DBX_STRBUF_INIT;
		cJSON *j = NULL;
		uint64_t next = 0;
		bool more = false;

		r = query_path(&q, "path", path);
		if (r == 0 && offset)
			r = dbx__query_addu(&q, "offset", offset);
		if (r == 0)
			r = fs_json(c, "GET", "list", q.data, true, "list", path, &j);
		dbx_sb_free(&q);
		if (r < 0)
			return r;
		r = dbx__list_page_parse(j, first ? ret_dir : NULL, fn, ud, &next, &more);
		cJSON_Delete(j);
		if (r)
			return r;
		if (!more)
			return 0;
		if (next <= offset)
			return dbx__error(EPROTO,
					  "list %s: the agent's next offset does not advance",
					  show(path));
		offset = next;
		first = false;
	}
}

/* ---- tree: NDJSON parsed as it arrives ------------------------------------------------------ */

struct tree_ctx {
	dbx_tree_fn fn;
	void *ud;
	struct dbx_strbuf line; /* bounded: TREE_LINE_MAX */
	struct dbx_tree_end end;
	bool done;
	int stop; /* fn's nonzero return, or a parse error */
	const char *path;
};

static int tree_feed_line(struct tree_ctx *t, const char *s, size_t n)
{
	if (t->done) {
		/* Nothing may follow the end line. */
		for (size_t i = 0; i < n; i++)
			if (s[i] != '\r' && s[i] != '\n' && s[i] != ' ')
				return dbx__error(EPROTO, "tree %s: data after the end line",
						  show(t->path));
		return 0;
	}
	int r = dbx__tree_line(s, n, t->fn, t->ud, &t->end, &t->done);
	if (r == -EPROTO && !strncmp(dbx_error_last(), "tree: ", 6)) {
		/* The decoder's message, with the path this walk started at. */
		char m[512];
		snprintf(m, sizeof(m), "%s", dbx_error_last() + 6);
		r = dbx__error(EPROTO, "tree %s: %s", show(t->path), m);
	}
	return r;
}

static int tree_sink(void *ud, const void *buf, size_t len)
{
	struct tree_ctx *t = ud;
	const char *p = buf, *end = p + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		int r;

		if (!nl) {
			if (dbx_sb_append(&t->line, p, n) < 0)
				goto toolong;
			return 0;
		}
		if (t->line.len) {
			if (dbx_sb_append(&t->line, p, n) < 0)
				goto toolong;
			r = tree_feed_line(t, t->line.data, t->line.len);
			dbx_sb_reset(&t->line);
		} else {
			r = tree_feed_line(t, p, n);
		}
		if (r) {
			t->stop = r;
			return r < 0 ? r : -ECANCELED;
		}
		p = nl + 1;
	}
	return 0;

toolong:
	t->stop = dbx__error(EPROTO, "tree %s: a line longer than %zu bytes", show(t->path),
			     TREE_LINE_MAX);
	return t->stop;
}

int dbx_fs_tree(dbx_client *c, const char *path, int depth, uint64_t max, dbx_tree_fn fn, void *ud,
		struct dbx_tree_end *ret_end)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	struct tree_ctx t = {.fn = fn, .ud = ud, .path = path};
	struct dbx__resp resp;
	int r;

	dbx_sb_init(&t.line, TREE_LINE_MAX);
	r = query_path(&q, "path", path);
	if (r == 0 && depth > 0)
		r = dbx__query_addu(&q, "depth", (uint64_t)depth);
	if (r == 0 && max > 0)
		r = dbx__query_addu(&q, "max", max);
	if (r < 0)
		goto out;
	struct dbx__req rq = {
		.method = "GET",
		.path = "/fs/v1/tree",
		.query = q.data,
		.sink = tree_sink,
		.sink_ud = &t,
		.idempotent = true,
		.stream = true,
		.op = "tree",
		.err_path = show(path),
	};
	r = dbx__request(c, &rq, &resp);
	dbx__resp_free(&resp);
	if (t.stop) {
		/* The callback's value, or the parse error (whose message the request kept). */
		r = t.stop;
		goto out;
	}
	if (r < 0)
		goto out;
	if (t.line.len) {
		r = tree_feed_line(&t, t.line.data, t.line.len);
		if (r)
			goto out;
	}
	if (!t.done) {
		r = dbx__error(EPROTO, "tree %s: the stream ended without its end line",
			       show(path));
		goto out;
	}
	if (ret_end)
		*ret_end = t.end;
out:
	dbx_sb_free(&t.line);
	dbx_sb_free(&q);
	return r;
}

/* ---- data --------------------------------------------------------------------------------- */

struct buf_sink {
	char *buf;
	size_t cap, len;
	const char *path;
};

static int buf_sink_fn(void *ud, const void *data, size_t len)
{
	struct buf_sink *b = ud;
	if (len > b->cap - b->len)
		return dbx__error(EPROTO,
				  "read %s: the agent sent more than the %zu bytes asked for",
				  show(b->path), b->cap);
	memcpy(b->buf + b->len, data, len);
	b->len += len;
	return 0;
}

ssize_t dbx_fs_pread(dbx_client *c, const char *path, void *buf, size_t len, uint64_t off,
		     char *ret_ver, uint64_t *ret_size)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	struct buf_sink b = {.buf = buf, .cap = len, .path = path};
	struct dbx__resp resp;
	int r;

	if (ret_ver)
		ret_ver[0] = '\0';
	if (ret_size)
		*ret_size = 0;
	r = query_path(&q, "path", path);
	if (r == 0 && off)
		r = dbx__query_addu(&q, "offset", off);
	if (r == 0)
		r = dbx__query_addu(&q, "length", len);
	if (r < 0)
		goto out;
	struct dbx__req rq = {
		.method = "GET",
		.path = "/fs/v1/read",
		.query = q.data,
		.sink = buf_sink_fn,
		.sink_ud = &b,
		.idempotent = true,
		.stream = len > STREAM_WRITE_THRESHOLD,
		.op = "read",
		.err_path = show(path),
	};
	r = dbx__request(c, &rq, &resp);
	if (r == 0) {
		if (ret_ver)
			snprintf(ret_ver, DBX_VER_MAX, "%s", resp.ver);
		if (ret_size)
			*ret_size = resp.size == UINT64_MAX ? 0 : resp.size;
	}
	dbx__resp_free(&resp);
out:
	dbx_sb_free(&q);
	return r < 0 ? r : (ssize_t)b.len;
}

int dbx_fs_read_stream(dbx_client *c, const char *path, uint64_t off, uint64_t len,
		       dbx_sink_fn sink, void *ud)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	struct dbx__resp resp;
	int r = query_path(&q, "path", path);
	if (r == 0 && off)
		r = dbx__query_addu(&q, "offset", off);
	if (r == 0 && len != UINT64_MAX)
		r = dbx__query_addu(&q, "length", len);
	if (r < 0)
		goto out;
	struct dbx__req rq = {
		.method = "GET",
		.path = "/fs/v1/read",
		.query = q.data,
		.sink = sink,
		.sink_ud = ud,
		.idempotent = true,
		.stream = true,
		.op = "read",
		.err_path = show(path),
	};
	r = dbx__request(c, &rq, &resp);
	dbx__resp_free(&resp);
out:
	dbx_sb_free(&q);
	return r;
}

static int write_call(dbx_client *c, const char *path, const void *buf, dbx_source_fn src, void *ud,
		      uint64_t len, const struct dbx_write_opts *opts, struct dbx_attr *ret_attr)
{
	static const struct dbx_write_opts defaults = {0};
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	char mode[16], ifm[DBX_VER_MAX + 16];
	const char *hdrs[2] = {NULL, NULL};
	cJSON *j = NULL;
	int r;

	if (!opts)
		opts = &defaults;
	if (opts->if_match && strpbrk(opts->if_match, "\r\n"))
		return dbx__error(EINVAL, "write %s: bad if_match version", show(path));
	octal(mode, sizeof(mode), opts->mode ? opts->mode & 07777 : 0644);
	r = query_path(&q, "path", path);
	if (r == 0 && opts->offset)
		r = dbx__query_addu(&q, "offset", opts->offset);
	if (r == 0 && opts->truncate)
		r = dbx__query_add(&q, "truncate", "1");
	if (r == 0 && opts->no_create)
		r = dbx__query_add(&q, "create", "0");
	if (r == 0 && opts->excl)
		r = dbx__query_add(&q, "excl", "1");
	if (r == 0 && opts->atomic)
		r = dbx__query_add(&q, "atomic", "1");
	if (r == 0 && opts->fsync)
		r = dbx__query_add(&q, "fsync", "1");
	if (r == 0 && opts->if_ino)
		r = dbx__query_addu(&q, "ino", opts->if_ino);
	if (r == 0 && opts->dir)
		r = dbx__query_add(&q, "dir", "1");
	if (r == 0)
		r = dbx__query_add(&q, "mode", mode);
	if (r < 0)
		goto out;
	if (opts->if_match) {
		snprintf(ifm, sizeof(ifm), "If-Match: %s", opts->if_match);
		hdrs[0] = ifm;
	}
	struct dbx__req rq = {
		.method = "PUT",
		.path = "/fs/v1/write",
		.query = q.data,
		.content_type = "application/octet-stream",
		.body = src ? NULL : (buf ? buf : ""),
		.body_len = src ? 0 : (size_t)len,
		.src = src,
		.src_ud = ud,
		.src_len = src ? len : 0,
		.headers = hdrs,
		.stream = src || len > STREAM_WRITE_THRESHOLD,
		.op = "write",
		.err_path = show(path),
	};
	r = dbx__request_json(c, &rq, &j);
	if (r == 0 && ret_attr) {
		r = dbx__attr_from_json(j, ret_attr, NULL);
		if (r < 0)
			r = dbx__error(EPROTO, "write %s: %s", show(path), dbx_error_last());
	}
	cJSON_Delete(j);
out:
	dbx_sb_free(&q);
	return r;
}

int dbx_fs_pwrite(dbx_client *c, const char *path, const void *buf, size_t len,
		  const struct dbx_write_opts *opts, struct dbx_attr *ret_attr)
{
	return write_call(c, path, buf, NULL, NULL, len, opts, ret_attr);
}

int dbx_fs_write_stream(dbx_client *c, const char *path, dbx_source_fn src, void *ud, uint64_t len,
			const struct dbx_write_opts *opts, struct dbx_attr *ret_attr)
{
	if (!src)
		return dbx__error(EINVAL, "write %s: no data source", show(path));
	if (len == 0)
		return write_call(c, path, "", NULL, NULL, 0, opts, ret_attr);
	return write_call(c, path, NULL, src, ud, len, opts, ret_attr);
}

/* ---- mutations ------------------------------------------------------------------------------ */

/* One path argument plus optional extra key/values; NULL-terminated pairs. */
static int simple_attr_op(dbx_client *c, const char *method, const char *route, const char *op,
			  const char *path, bool idempotent, bool wrapped,
			  struct dbx_attr *ret_attr, const char *const *kv)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	int r = query_path(&q, "path", path);
	for (; r == 0 && kv && kv[0]; kv += 2)
		if (kv[1])
			r = dbx__query_add(&q, kv[0], kv[1]);
	if (r < 0)
		r = oom(op, path);
	else if (ret_attr || wrapped)
		r = fs_attr_call(c, method, route, q.data, idempotent, op, path, wrapped, ret_attr);
	else
		r = fs_json(c, method, route, q.data, idempotent, op, path, NULL);
	dbx_sb_free(&q);
	return r;
}

int dbx_fs_truncate(dbx_client *c, const char *path, uint64_t size, struct dbx_attr *ret_attr)
{
	char sz[24];
	snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
	const char *kv[] = {"size", sz, NULL};
	return simple_attr_op(c, "POST", "truncate", "truncate", path, true, false, ret_attr, kv);
}

int dbx_fs_fsync(dbx_client *c, const char *path, bool datasync, struct dbx_attr *ret_attr)
{
	const char *kv[] = {"datasync", datasync ? "1" : "0", NULL};
	return simple_attr_op(c, "POST", "fsync", "fsync", path, true, false, ret_attr, kv);
}

int dbx_fs_mkdir(dbx_client *c, const char *path, uint32_t mode, struct dbx_attr *ret_attr)
{
	char m[16];
	octal(m, sizeof(m), mode ? mode & 07777 : 0755);
	const char *kv[] = {"mode", m, NULL};
	return simple_attr_op(c, "POST", "mkdir", "mkdir", path, false, false, ret_attr, kv);
}

int dbx_fs_rmdir(dbx_client *c, const char *path)
{
	return simple_attr_op(c, "POST", "rmdir", "rmdir", path, false, false, NULL, NULL);
}

int dbx_fs_unlink(dbx_client *c, const char *path)
{
	return simple_attr_op(c, "POST", "unlink", "unlink", path, false, false, NULL, NULL);
}

int dbx_fs_rename(dbx_client *c, const char *from, const char *to, unsigned flags,
		  struct dbx_attr *ret_to)
{
	const char *fl;
	if (flags == 0)
		fl = NULL;
	else if (flags == RENAME_NOREPLACE)
		fl = "noreplace";
	else if (flags == RENAME_EXCHANGE)
		fl = "exchange";
	else
		return dbx__error(EINVAL, "rename %s: unsupported flags %#x", show(from), flags);
	const char *kv[] = {"to", show(to), "flags", fl, NULL};
	return simple_attr_op(c, "POST", "rename", "rename", from, false, true, ret_to, kv);
}

int dbx_fs_symlink(dbx_client *c, const char *target, const char *linkpath,
		   struct dbx_attr *ret_attr)
{
	if (!target || !*target)
		return dbx__error(EINVAL, "symlink %s: empty target", show(linkpath));
	const char *kv[] = {"target", target, NULL};
	return simple_attr_op(c, "POST", "symlink", "symlink", linkpath, false, false, ret_attr,
			      kv);
}

int dbx_fs_readlink(dbx_client *c, const char *path, char **ret_target)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	cJSON *j = NULL;
	int r;

	*ret_target = NULL;
	r = query_path(&q, "path", path);
	if (r == 0)
		r = fs_json(c, "GET", "readlink", q.data, true, "readlink", path, &j);
	dbx_sb_free(&q);
	if (r < 0)
		return r;
	r = dbx__readlink_parse(j, ret_target);
	cJSON_Delete(j);
	return r;
}

int dbx_fs_link(dbx_client *c, const char *existing, const char *newpath, struct dbx_attr *ret_attr)
{
	const char *kv[] = {"to", show(newpath), NULL};
	return simple_attr_op(c, "POST", "link", "link", existing, false, false, ret_attr, kv);
}

int dbx_fs_chmod(dbx_client *c, const char *path, uint32_t mode, struct dbx_attr *ret_attr)
{
	char m[16];
	octal(m, sizeof(m), mode & 07777);
	const char *kv[] = {"mode", m, NULL};
	return simple_attr_op(c, "POST", "chmod", "chmod", path, true, false, ret_attr, kv);
}

int dbx_fs_chown(dbx_client *c, const char *path, uid_t uid, gid_t gid, struct dbx_attr *ret_attr)
{
	char u[16], g[16];
	snprintf(u, sizeof(u), "%u", (unsigned)uid);
	snprintf(g, sizeof(g), "%u", (unsigned)gid);
	const char *kv[] = {"uid", uid == (uid_t)-1 ? NULL : u, "gid", gid == (gid_t)-1 ? NULL : g,
			    NULL};
	return simple_attr_op(c, "POST", "chown", "chown", path, true, false, ret_attr, kv);
}

static int fmt_time(const struct timespec *ts, char *buf, size_t len)
{
	if (ts->tv_nsec == UTIME_NOW)
		snprintf(buf, len, "now");
	else if (ts->tv_nsec == UTIME_OMIT)
		snprintf(buf, len, "omit");
	else if (ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000L || ts->tv_sec < 0)
		return -EINVAL;
	else
		snprintf(buf, len, "%lld.%09ld", (long long)ts->tv_sec, ts->tv_nsec);
	return 0;
}

int dbx_fs_utimens(dbx_client *c, const char *path, const struct timespec tv[2],
		   struct dbx_attr *ret_attr)
{
	char at[48], mt[48];
	struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
	if (!tv)
		tv = now;
	if (fmt_time(&tv[0], at, sizeof(at)) < 0 || fmt_time(&tv[1], mt, sizeof(mt)) < 0)
		return dbx__error(EINVAL, "utimens %s: invalid time", show(path));
	const char *kv[] = {"atime", at, "mtime", mt, NULL};
	/* Setting explicit times twice gives the same result; "now" is close enough. */
	return simple_attr_op(c, "POST", "utimens", "utimens", path, true, false, ret_attr, kv);
}

int dbx_fs_mknod(dbx_client *c, const char *path, uint32_t mode, struct dbx_attr *ret_attr)
{
	char m[16];
	if (!S_ISFIFO(mode))
		return dbx__error(EPERM, "mknod %s: only FIFOs can be created", show(path));
	octal(m, sizeof(m), mode);
	const char *kv[] = {"mode", m, NULL};
	return simple_attr_op(c, "POST", "mknod", "mknod", path, false, false, ret_attr, kv);
}

/* ---- xattrs ------------------------------------------------------------------------------- */

ssize_t dbx_fs_getxattr(dbx_client *c, const char *path, const char *name, void *buf, size_t size)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	struct dbx__resp resp;
	ssize_t r;

	r = query_path(&q, "path", path);
	if (r == 0)
		r = dbx__query_add(&q, "name", name);
	if (r < 0) {
		dbx_sb_free(&q);
		return r;
	}
	struct dbx__req rq = {
		.method = "GET",
		.path = "/fs/v1/xattr",
		.query = q.data,
		.idempotent = true,
		.max_body = XATTR_VALUE_MAX,
		.op = "getxattr",
		.err_path = show(path),
	};
	r = dbx__request(c, &rq, &resp);
	if (r == 0) {
		if (size == 0)
			r = (ssize_t)resp.len;
		else if (resp.len > size)
			r = dbx__error(ERANGE,
				       "getxattr %s: %s: the value has %zu bytes, the "
				       "buffer %zu",
				       show(path), name, resp.len, size);
		else {
			memcpy(buf, resp.body, resp.len);
			r = (ssize_t)resp.len;
		}
	}
	dbx__resp_free(&resp);
	dbx_sb_free(&q);
	return r;
}

ssize_t dbx_fs_listxattr(dbx_client *c, const char *path, char *buf, size_t size)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	cJSON *j = NULL;
	ssize_t r = query_path(&q, "path", path);
	if (r == 0)
		r = fs_json(c, "GET", "xattrs", q.data, true, "listxattr", path, &j);
	dbx_sb_free(&q);
	if (r < 0)
		return r;
	r = dbx__xattr_names_parse(j, buf, size);
	cJSON_Delete(j);
	if (r == -ERANGE)
		r = dbx__error(ERANGE, "listxattr %s: the names need more than %zu bytes",
			       show(path), size);
	return r;
}

int dbx_fs_setxattr(dbx_client *c, const char *path, const char *name, const void *value,
		    size_t size, int flags)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	const char *fl = NULL;
	int r;

	if (flags == XATTR_CREATE)
		fl = "create";
	else if (flags == XATTR_REPLACE)
		fl = "replace";
	else if (flags)
		return dbx__error(EINVAL, "setxattr %s: unsupported flags %#x", show(path), flags);
	if (size > XATTR_VALUE_MAX)
		return dbx__error(E2BIG, "setxattr %s: %s: the value exceeds %zu bytes", show(path),
				  name, XATTR_VALUE_MAX);
	r = query_path(&q, "path", path);
	if (r == 0)
		r = dbx__query_add(&q, "name", name);
	if (r == 0 && fl)
		r = dbx__query_add(&q, "flags", fl);
	if (r < 0)
		goto out;
	struct dbx__req rq = {
		.method = "PUT",
		.path = "/fs/v1/xattr",
		.query = q.data,
		.content_type = "application/octet-stream",
		.body = value && size ? value : "",
		.body_len = value ? size : 0,
		.op = "setxattr",
		.err_path = show(path),
	};
	r = dbx__request_json(c, &rq, NULL);
out:
	dbx_sb_free(&q);
	return r;
}

int dbx_fs_removexattr(dbx_client *c, const char *path, const char *name)
{
	const char *kv[] = {"name", name, NULL};
	return simple_attr_op(c, "POST", "xattr-remove", "removexattr", path, false, false, NULL,
			      kv);
}

/* ---- locks -------------------------------------------------------------------------------- */

int dbx_fs_lock(dbx_client *c, const char *session, const char *path, const struct dbx_lock *lock)
{
	static const char *const ops[] = {"sh", "ex", "un"};
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	int timeout = lock->timeout_ms > 0 ? lock->timeout_ms : 30000;
	int r;

	if (!session || !*session)
		return dbx__error(EINVAL, "lock %s: no lock session", show(path));
	if ((unsigned)lock->op > DBX_LOCK_UN || (unsigned)lock->kind > DBX_LOCK_POSIX)
		return dbx__error(EINVAL, "lock %s: bad lock kind or op", show(path));
	r = dbx__query_add(&q, "session", session);
	if (r == 0)
		r = query_path(&q, "path", path);
	if (r == 0)
		r = dbx__query_add(&q, "kind", lock->kind == DBX_LOCK_FLOCK ? "flock" : "posix");
	if (r == 0)
		r = dbx__query_add(&q, "op", ops[lock->op]);
	if (r == 0 && lock->kind == DBX_LOCK_POSIX) {
		r = dbx__query_addu(&q, "start", lock->start);
		if (r == 0)
			r = dbx__query_addu(&q, "len", lock->len);
		if (r == 0)
			r = dbx__query_addu(&q, "owner", lock->owner);
	}
	if (r == 0 && lock->wait) {
		r = dbx__query_add(&q, "wait", "1");
		if (r == 0)
			r = dbx__query_addu(&q, "timeout", (uint64_t)timeout);
	}
	if (r < 0)
		goto out;
	struct dbx__req rq = {
		.method = "POST",
		.path = "/fs/v1/lock",
		.query = q.data,
		/* A waiting lock legitimately takes up to its own timeout. */
		.timeout_ms = lock->wait ? timeout + 30000 : 0,
		.op = "lock",
		.err_path = show(path),
	};
	r = dbx__request_json(c, &rq, NULL);
out:
	dbx_sb_free(&q);
	return r;
}
