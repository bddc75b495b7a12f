/* fsapi_data.c: the /fs/v1 routes that move bytes (PROTOCOL.md §2): read (ranged, streamed),
 * write (streamed body, pwrite at an offset or atomic replace), tree (NDJSON stream) and xattr
 * values. The byte-moving cores (fs_write_op, fs_read_into, fs_xattr_*) are shared with batch.
 *
 * Threads: workers only. Data operations follow a final symlink while it stays inside the
 * workspace (openat2 RESOLVE_BENEATH); tree never follows symlinks (walk_dir). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "events.h"
#include "files.h"
#include "fsapi.h"
#include "misc.h"
#include "path.h"

/* Plain writes up to this size run on the service thread (fs_write_prepare()). */
#define FS_INLINE_WRITE_MAX (64u << 10)

/* ---- sources --------------------------------------------------------------------------------- */

static ssize_t mem_read(void *ctx, void *buf, size_t len)
{
	struct fs_mem *m = ctx;
	if (len > m->left)
		len = m->left;
	memcpy(buf, m->p, len);
	m->p += len;
	m->left -= len;
	return (ssize_t)len;
}

void fs_src_mem(struct fs_src *src, struct fs_mem *m, const void *data, size_t len)
{
	m->p = data;
	m->left = len;
	src->read = mem_read;
	src->ctx = m;
	src->len = len;
}

/* The streamed request body, stopping at Content-Length by itself. */
struct body {
	struct req *r;
	uint64_t clen, got;
};

static ssize_t body_read(void *ctx, void *buf, size_t len)
{
	struct body *b = ctx;
	if (b->got >= b->clen)
		return 0;
	if (len > b->clen - b->got)
		len = (size_t)(b->clen - b->got);
	ssize_t n = req_body_read(b->r, buf, len);
	if (n > 0)
		b->got += (uint64_t)n;
	else if (n == 0)
		n = -EPIPE; /* ended before Content-Length */
	return n;
}

static const char *query_get(void *ctx, const char *name)
{
	return req_query(ctx, name);
}

/* ---- write ----------------------------------------------------------------------------------- */

int fs_write_prepare(struct req *r)
{
	struct agent *ag = req_agent(r);
	int64_t clen = req_content_length(r);
	if (clen > 0 && (uint64_t)clen > ag->cfg.max_file_size) {
		char msg[160];
		snprintf(msg, sizeof(msg), "write: body of %lld bytes is over the limit (%llu)",
			 (long long)clen, (unsigned long long)ag->cfg.max_file_size);
		fs_reply_error(r, EFBIG, msg);
		return 1;
	}
	/* A small plain write (no truncate, fsync or temp file, which may take long) is a few
	 * microseconds of pwrite into the page cache: buffer its body and run it on the service
	 * thread, sparing the worker hand-offs that would cost more than the write itself. */
	const char *t = req_query(r, "truncate"), *s = req_query(r, "fsync"),
		   *at = req_query(r, "atomic");
	if (clen >= 0 && clen <= FS_INLINE_WRITE_MAX && (!t || !strcmp(t, "0")) &&
	    (!s || !strcmp(s, "0")) && (!at || !strcmp(at, "0"))) {
		req_set_body(r, BODY_BUFFER, FS_INLINE_WRITE_MAX);
		req_run_inline(r);
		return 0;
	}
	req_set_body(r, BODY_STREAM, ag->cfg.max_file_size);
	return 0;
}

static int atomic_write(struct fs_op *o, const char *rel, bool create, bool excl, mode_t mode,
			char *buf)
{
	struct afile af;
	const char *name;
	/* POSIX semantics: the parent must exist (af_open would create it). */
	int r = fs_parent(o->ag, rel, &name);
	if (r < 0)
		return fs_fail(o, r, "write %s", rel);
	close(r);
	r = af_open(&af, o->ag, rel);
	if (r < 0)
		return fs_fail(o, r, "write %s", rel);
	char ver[64];
	if (excl && af.exists)
		r = fs_fail(o, EEXIST, "write %s", rel);
	else if (!create && !af.exists)
		r = fs_fail(o, ENOENT, "write %s", rel);
	else if (o->if_match && (!af.exists || strcmp(fs_verstr(&af.old, ver), o->if_match)))
		r = fs_fail(o, ESTALE, "write %s: If-Match %.64s", rel, o->if_match);
	else if (!af.exists && fchmod(af.fd, mode & 07777) < 0)
		r = fs_fail(o, errno, "write %s", rel);
	if (r < 0)
		goto fail;
	af.sync = true;
	for (;;) {
		ssize_t n = o->src->read(o->src->ctx, buf, AGENT_CHUNK);
		if (n < 0) {
			r = fs_fail(o, (int)n, "write %s: request body", rel);
			goto fail;
		}
		if (n == 0)
			break;
		r = af_write(&af, buf, (size_t)n);
		if (r < 0) {
			r = fs_fail(o, r, "write %s", rel);
			goto fail;
		}
	}
	char target[PATH_MAX];
	snprintf(target, sizeof(target), "%s", af.rel);
	r = af_commit(&af);
	if (r < 0)
		return fs_fail(o, r, "write %s", rel);
	int dfd = fs_parent(o->ag, target, &name);
	if (dfd < 0)
		return fs_fail(o, dfd, "write %s", rel);
	o->json = fs_attr_at(dfd, name, NULL);
	if (!o->json)
		r = fs_fail(o, errno, "write %s", rel);
	close(dfd);
	return r;
fail:
	af_abort(&af);
	return r;
}

int fs_write_op(struct fs_op *o)
{
	char rel[PATH_MAX];
	uint64_t off, ino;
	bool trunc, create, excl, atomic, sync, dir;
	mode_t mode;
	uintptr_t own = 0;
	int r = fs_arg_path(o, "path", rel);
	if (r < 0 || (r = fs_arg_u64(o, "offset", 0, &off)) < 0 ||
	    (r = fs_arg_u64(o, "ino", 0, &ino)) < 0 ||
	    (r = fs_arg_bool(o, "truncate", false, &trunc)) < 0 ||
	    (r = fs_arg_bool(o, "create", true, &create)) < 0 ||
	    (r = fs_arg_bool(o, "excl", false, &excl)) < 0 ||
	    (r = fs_arg_bool(o, "atomic", false, &atomic)) < 0 ||
	    (r = fs_arg_bool(o, "fsync", false, &sync)) < 0 ||
	    (r = fs_arg_bool(o, "dir", false, &dir)) < 0 ||
	    (r = fs_arg_mode(o, "mode", 0644, &mode)) < 0)
		return r;
	if (off + o->src->len > o->ag->cfg.max_file_size)
		return fs_fail(o, EFBIG, "write %s: beyond the file size limit (%llu)", rel,
			       (unsigned long long)o->ag->cfg.max_file_size);
	if (atomic && (off || ino))
		return fs_fail(o, EINVAL,
			       "write %s: atomic writes replace the whole file (offset 0, no ino)",
			       rel);
	char *buf = malloc(AGENT_CHUNK);
	if (!buf)
		return fs_fail(o, ENOMEM, "write %s", rel);
	if (atomic) {
		r = atomic_write(o, rel, create || excl, excl, mode, buf);
		free(buf);
		return r;
	}
	int flags = O_WRONLY | O_NOCTTY | O_NONBLOCK;
	/* With If-Match or ino the file must exist: it is what is compared. */
	if ((create && !o->if_match && !ino) || excl)
		flags |= O_CREAT;
	if (excl)
		flags |= O_EXCL;
	int fd = dbx_path_open(o->ag->rootfd, rel, flags, mode & 07777, 0);
	if (fd == -ENOENT && (o->if_match || ino)) {
		r = fs_fail(o, ESTALE, "write %s: no such file (it was removed)", rel);
		goto out;
	}
	if (fd < 0) {
		r = fs_fail(o, fd, "write %s", rel);
		goto out;
	}
	struct stat st;
	char ver[64];
	if (fstat(fd, &st) < 0) {
		r = fs_fail(o, errno, "write %s", rel);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = fs_fail(o, EINVAL, "write %s: not a regular file", rel);
		goto out;
	}
	own = events_write_begin(&st);
	if (ino && st.st_ino != ino) {
		r = fs_fail(o, ESTALE, "write %s: now another file (ino %llu, not %llu)", rel,
			    (unsigned long long)st.st_ino, (unsigned long long)ino);
		goto out;
	}
	if (o->if_match && strcmp(fs_verstr(&st, ver), o->if_match)) {
		r = fs_fail(o, ESTALE, "write %s: If-Match %.64s", rel, o->if_match);
		goto out;
	}
	uint64_t at = off;
	for (;;) {
		ssize_t n = o->src->read(o->src->ctx, buf, AGENT_CHUNK);
		if (n < 0) {
			r = fs_fail(o, (int)n, "write %s: request body", rel);
			goto out;
		}
		if (n == 0)
			break;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(fd, buf + done, (size_t)(n - done), (off_t)at);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				r = fs_fail(o, errno, "write %s", rel);
				goto out;
			}
			done += w;
			at += (uint64_t)w;
		}
	}
	if (trunc && ftruncate(fd, (off_t)at) < 0) {
		r = fs_fail(o, errno, "write %s: truncate", rel);
		goto out;
	}
	if (sync && fsync(fd) < 0) {
		r = fs_fail(o, errno, "write %s: fsync", rel);
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		r = fs_fail(o, errno, "write %s", rel);
		goto out;
	}
	o->json = fs_attr_json(&st, NULL);
	if (dir && o->json) {
		/* The directory as this write (a creation, perhaps) left it: X-Dbx-Dir. */
		const char *name;
		int pfd = fs_parent(o->ag, rel, &name);

		if (pfd >= 0) {
			fs_note_dir(o, pfd, false);
			close(pfd);
		}
	}
out:
	events_write_end(own, r < 0 || !o->json ? NULL : &st);
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

void fs_write_route(struct req *r)
{
	int64_t clen = req_content_length(r);
	struct body b = {r, clen > 0 ? (uint64_t)clen : 0, 0};
	struct fs_src src = {body_read, &b, b.clen};
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a, .if_match = req_if_match(r), .src = &src};
	fs_write_op(&o);
	if (o.err && b.got < b.clen && !req_gone(r)) {
		/* Keep the connection usable: read what the client still sends. */
		char *buf = malloc(64 << 10);
		while (buf && body_read(&b, buf, 64 << 10) > 0)
			;
		free(buf);
	}
	fs_reply_op(r, &o);
}

/* ---- read ------------------------------------------------------------------------------------ */

/* "bytes=a-b", "bytes=a-" or "bytes=-n" against @size: 0, -EINVAL (malformed) or -ERANGE. */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *count)
{
	if (strncmp(h, "bytes=", 6))
		return -EINVAL;
	const char *p = h + 6;
	char *end;
	if (strchr(p, ','))
		return -EINVAL; /* one range only */
	if (*p == '-') {
		unsigned long long n = strtoull(p + 1, &end, 10);
		if (*end || end == p + 1)
			return -EINVAL;
		if (n == 0)
			return -ERANGE;
		*start = n > size ? 0 : size - n;
		*count = size - *start;
		return size ? 0 : -ERANGE;
	}
	if (*p < '0' || *p > '9')
		return -EINVAL;
	unsigned long long a = strtoull(p, &end, 10), b = UINT64_MAX;
	if (*end != '-')
		return -EINVAL;
	if (end[1]) {
		const char *q = end + 1;
		b = strtoull(q, &end, 10);
		if (*end || b < a || *q < '0' || *q > '9')
			return -EINVAL;
	}
	if (a >= size)
		return -ERANGE;
	*start = a;
	*count = (b >= size ? size - 1 : b) - a + 1;
	return 0;
}

static int open_read(struct fs_op *o, char rel[PATH_MAX], struct stat *st)
{
	int r = fs_arg_path(o, "path", rel);
	if (r < 0)
		return r;
	/* O_NONBLOCK: a FIFO must not hang the worker (refused below). */
	int fd = dbx_path_open(o->ag->rootfd, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, 0);
	if (fd < 0)
		return fs_fail(o, fd, "read %s", rel);
	if (fstat(fd, st) < 0)
		r = fs_fail(o, errno, "read %s", rel);
	else if (S_ISDIR(st->st_mode))
		r = fs_fail(o, EISDIR, "read %s", rel);
	else if (!S_ISREG(st->st_mode))
		r = fs_fail(o, EINVAL, "read %s: not a regular file", rel);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

void fs_read_route(struct req *r)
{
	char rel[PATH_MAX], ver[64], hdrs[256];
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a};
	struct stat st;
	uint64_t off, len, size;
	int fd = open_read(&o, rel, &st);
	if (fd < 0) {
		fs_reply_op(r, &o);
		return;
	}
	size = (uint64_t)st.st_size;
	const char *range = req_range(r);
	int status = 200;
	if (range) {
		int e = parse_range(range, size, &off, &len);
		if (e == -ERANGE) {
			snprintf(o.msg, sizeof(o.msg),
				 "read %.256s: range %.64s not satisfiable (size %llu)", rel, range,
				 (unsigned long long)size);
			char cr[64];
			snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)size);
			req_add_header(r, "Content-Range", cr);
			fs_reply_error_http(r, 416, EINVAL, o.msg);
			goto out;
		}
		if (e < 0) {
			fs_fail(&o, EINVAL, "read %s: bad Range header %.64s", rel, range);
			fs_reply_op(r, &o);
			goto out;
		}
		status = 206;
	} else {
		if (fs_arg_u64(&o, "offset", 0, &off) < 0 ||
		    fs_arg_u64(&o, "length", UINT64_MAX, &len) < 0) {
			fs_reply_op(r, &o);
			goto out;
		}
		if (off >= size)
			len = 0;
		else if (len > size - off)
			len = size - off;
	}
	int hn = snprintf(hdrs, sizeof(hdrs), "X-Dbx-Version: %s\r\nX-Dbx-Size: %llu\r\n",
			  fs_verstr(&st, ver), (unsigned long long)size);
	if (status == 206)
		snprintf(hdrs + hn, sizeof(hdrs) - (size_t)hn,
			 "Content-Range: bytes %llu-%llu/%llu\r\n", (unsigned long long)off,
			 (unsigned long long)(off + len - 1), (unsigned long long)size);
	events_stamp(r);
	req_stream_begin(r, status, "application/octet-stream", (int64_t)len, hdrs);
	int err = 0;
	if (!req_is_head(r) && len) {
		char *buf = malloc(AGENT_CHUNK);
		err = buf ? 0 : -ENOMEM;
		while (!err && len) {
			ssize_t n =
				pread(fd, buf, len < AGENT_CHUNK ? len : AGENT_CHUNK, (off_t)off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				/* Shrunk under us: the promised length cannot be met. */
				err = n < 0 ? -errno : -EIO;
				break;
			}
			off += (uint64_t)n;
			len -= (uint64_t)n;
			err = req_stream_write(r, buf, (size_t)n);
		}
		free(buf);
	}
	req_stream_end(r, err);
out:
	close(fd);
}

int fs_read_into(struct fs_op *o, struct dbx_strbuf *blob, uint64_t max)
{
	char rel[PATH_MAX], ver[64];
	struct stat st;
	uint64_t off, len;
	int fd = open_read(o, rel, &st);
	if (fd < 0)
		return fd;
	int r = fs_arg_u64(o, "offset", 0, &off);
	if (r < 0 || (r = fs_arg_u64(o, "length", UINT64_MAX, &len)) < 0)
		goto out;
	uint64_t size = (uint64_t)st.st_size;
	if (off >= size)
		len = 0;
	else if (len > size - off)
		len = size - off;
	if (len > max) {
		r = fs_fail(o, EFBIG, "read %s: %llu bytes do not fit in the batch reply", rel,
			    (unsigned long long)len);
		goto out;
	}
	size_t at = blob->len;
	if (dbx_sb_reserve(blob, (size_t)len) < 0) {
		r = fs_fail(o, ENOMEM, "read %s", rel);
		goto out;
	}
	uint64_t got = 0;
	while (got < len) {
		ssize_t n =
			pread(fd, blob->data + at + got, (size_t)(len - got), (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = fs_fail(o, errno, "read %s", rel);
			goto out;
		}
		if (n == 0)
			break; /* shrunk meanwhile: a short read */
		got += (uint64_t)n;
	}
	blob->len = at + (size_t)got;
	blob->data[blob->len] = '\0';
	o->json = cJSON_CreateObject();
	cJSON *d = cJSON_AddArrayToObject(o->json, "data");
	cJSON_AddItemToArray(d, cJSON_CreateNumber((double)at));
	cJSON_AddItemToArray(d, cJSON_CreateNumber((double)got));
	cJSON_AddStringToObject(o->json, "ver", fs_verstr(&st, ver));
	cJSON_AddNumberToObject(o->json, "size", (double)size);
out:
	close(fd);
	return r;
}

/* ---- xattr values ---------------------------------------------------------------------------- */

/* The parent and the /proc path of @rel's last component (acted on without following it). */
static int xattr_loc(struct fs_op *o, const char *opname, char rel[PATH_MAX],
		     char path[PATH_MAX + 64], const char **ret_xname)
{
	const char *xn = o->a->get(o->a->ctx, "name");
	if (!xn || strncmp(xn, "user.", 5) || !xn[5])
		return fs_fail(o, EOPNOTSUPP, "%s %.64s: only user.* attributes", opname,
			       xn ? xn : "(no name)");
	int r = fs_arg_path(o, "path", rel);
	if (r < 0)
		return r;
	const char *name;
	int dfd = fs_parent(o->ag, rel, &name);
	if (dfd < 0)
		return fs_fail(o, dfd, "%s %s", opname, rel);
	snprintf(path, PATH_MAX + 64, "/proc/self/fd/%d/%s", dfd, name);
	*ret_xname = xn;
	return dfd;
}

/* The value into a malloc'd buffer. */
static int xattr_get(struct fs_op *o, char **ret, size_t *ret_len)
{
	char rel[PATH_MAX], path[PATH_MAX + 64];
	const char *xn;
	int dfd = xattr_loc(o, "xattr", rel, path, &xn);
	if (dfd < 0)
		return dfd;
	int r = 0;
	char *buf = malloc(FS_XATTR_MAX);
	ssize_t n = buf ? lgetxattr(path, xn, buf, FS_XATTR_MAX) : -1;
	if (!buf)
		errno = ENOMEM;
	if (n < 0) {
		r = fs_fail(o, errno, "xattr %s %.64s", rel, xn);
		free(buf);
	} else {
		*ret = buf;
		*ret_len = (size_t)n;
	}
	close(dfd);
	return r;
}

void fs_xattr_get_route(struct req *r)
{
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a};
	char *v;
	size_t n;
	if (xattr_get(&o, &v, &n) < 0) {
		fs_reply_op(r, &o);
		return;
	}
	events_stamp(r);
	req_reply_raw(r, 200, "application/octet-stream", v, n);
}

int fs_xattr_get_into(struct fs_op *o, struct dbx_strbuf *blob)
{
	char *v;
	size_t n;
	int r = xattr_get(o, &v, &n);
	if (r < 0)
		return r;
	size_t at = blob->len;
	if (dbx_sb_append(blob, v, n) < 0) {
		free(v);
		return fs_fail(o, EFBIG, "xattr: the batch reply is full");
	}
	free(v);
	o->json = cJSON_CreateObject();
	cJSON *d = cJSON_AddArrayToObject(o->json, "data");
	cJSON_AddItemToArray(d, cJSON_CreateNumber((double)at));
	cJSON_AddItemToArray(d, cJSON_CreateNumber((double)n));
	return 0;
}

int fs_xattr_set_op(struct fs_op *o)
{
	char rel[PATH_MAX], path[PATH_MAX + 64];
	const char *xn;
	const char *fl = o->a->get(o->a->ctx, "flags");
	int flags = 0;
	if (fl && !strcmp(fl, "create"))
		flags = XATTR_CREATE;
	else if (fl && !strcmp(fl, "replace"))
		flags = XATTR_REPLACE;
	else if (fl && *fl)
		return fs_fail(o, EINVAL, "xattr: flags=%.64s", fl);
	if (o->src->len > FS_XATTR_MAX)
		return fs_fail(o, E2BIG, "xattr: value of %llu bytes over %u",
			       (unsigned long long)o->src->len, FS_XATTR_MAX);
	int dfd = xattr_loc(o, "xattr", rel, path, &xn);
	if (dfd < 0)
		return dfd;
	int r = 0;
	char *buf = malloc(FS_XATTR_MAX);
	size_t len = 0;
	if (!buf) {
		r = fs_fail(o, ENOMEM, "xattr %s", rel);
		goto out;
	}
	for (;;) {
		ssize_t n = o->src->read(o->src->ctx, buf + len, FS_XATTR_MAX - len);
		if (n < 0) {
			r = fs_fail(o, (int)n, "xattr %s: request body", rel);
			goto out;
		}
		if (n == 0 || (len += (size_t)n) == FS_XATTR_MAX)
			break;
	}
	if (lsetxattr(path, xn, buf, len, flags) < 0)
		r = fs_fail(o, errno, "xattr %s %.64s", rel, xn);
	else
		o->json = cJSON_CreateObject();
out:
	free(buf);
	close(dfd);
	return r;
}

int fs_xattr_prepare(struct req *r)
{
	int64_t clen = req_content_length(r);
	if (clen > (int64_t)FS_XATTR_MAX) {
		char msg[128];
		snprintf(msg, sizeof(msg), "xattr: value of %lld bytes over the limit (%u)",
			 (long long)clen, FS_XATTR_MAX);
		fs_reply_error(r, E2BIG, msg);
		return 1;
	}
	req_set_body(r, BODY_BUFFER, FS_XATTR_MAX);
	return 0;
}

void fs_xattr_set_route(struct req *r)
{
	size_t n = 0;
	const char *body = req_body(r, &n);
	struct fs_mem m;
	struct fs_src src;
	fs_src_mem(&src, &m, body ? body : "", body ? n : 0);
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a, .src = &src};
	fs_xattr_set_op(&o);
	fs_reply_op(r, &o);
}

/* ---- tree ------------------------------------------------------------------------------------ */

#define TREE_FLUSH (64u << 10)

struct tree {
	struct req *r;
	struct dbx_strbuf out;
	uint64_t entries, max;
	int depth; /* entries deeper than this are not listed */
	bool truncated;
	int err; /* the client went away / out of memory */
};

static int tree_flush(struct tree *t)
{
	if (!t->out.len)
		return 0;
	int e = req_stream_write(t->r, t->out.data, t->out.len);
	dbx_sb_reset(&t->out);
	if (e < 0)
		t->err = e;
	return e;
}

static int tree_line(struct tree *t, const char *path, cJSON *attr, bool partial)
{
	cJSON *o = cJSON_CreateObject();
	char *lossy = dbx_utf8_lossy(path, strlen(path), NULL);
	cJSON_AddStringToObject(o, "path", lossy ? lossy : path);
	free(lossy);
	cJSON_AddItemToObject(o, "attr", attr);
	if (partial)
		cJSON_AddTrueToObject(o, "partial");
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	int e = s ? dbx_sb_puts(&t->out, s) : -ENOMEM;
	free(s);
	if (e == 0)
		e = dbx_sb_putc(&t->out, '\n');
	if (e < 0)
		return t->err = e;
	t->entries++;
	return t->out.len >= TREE_FLUSH ? tree_flush(t) : 0;
}

static int tree_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	struct tree *t = w->ctx;
	if (t->entries >= t->max) {
		t->truncated = true;
		return -ECANCELED;
	}
	bool dir = S_ISDIR(st->st_mode);
	bool partial = dir && w->depth + 1 >= t->depth;
	cJSON *a = fs_attr_at(dirfd, name, st);
	if (!a)
		return t->err = -ENOMEM;
	int e = tree_line(t, w->path, a, partial);
	if (e < 0)
		return e;
	return dir && !partial ? WALK_DESCEND : WALK_NEXT;
}

/* A subdirectory could not be opened or read: repeat its line, marked partial. */
static int tree_error(struct walk *w, int err)
{
	struct tree *t = w->ctx;
	if (t->err)
		return t->err;
	const char *name;
	struct req *r = t->r;
	int dfd = fs_parent(req_agent(r), w->path, &name);
	if (dfd < 0)
		return 0;
	cJSON *a = fs_attr_at(dfd, name, NULL);
	close(dfd);
	if (!a)
		return 0;
	t->entries--; /* the same entry again */
	return tree_line(t, w->path, a, true);
}

void fs_tree_route(struct req *r)
{
	char rel[PATH_MAX];
	struct fs_args a = {query_get, r};
	struct fs_op o = {.ag = req_agent(r), .a = &a};
	uint64_t depth, max;
	if (fs_arg_path(&o, "path", rel) < 0 ||
	    fs_arg_u64(&o, "depth", FS_TREE_DEPTH_DEFAULT, &depth) < 0 ||
	    fs_arg_u64(&o, "max", FS_TREE_MAX_DEFAULT, &max) < 0) {
		fs_reply_op(r, &o);
		return;
	}
	if (depth > FILES_WALK_DEPTH_MAX || max == 0 || max > FS_TREE_MAX_LIMIT) {
		fs_fail(&o, EINVAL, "tree %s: depth must be 0..%d and max 1..%d", rel,
			FILES_WALK_DEPTH_MAX, FS_TREE_MAX_LIMIT);
		fs_reply_op(r, &o);
		return;
	}
	/* The sequence number before the walk (the one X-Dbx-Seq carries, read when the request
	 * was dispatched): events after it apply to the snapshot. */
	uint64_t seq = req_seq0(r);
	const char *name;
	int dfd = fs_parent(o.ag, rel, &name);
	struct stat st;
	if (dfd < 0 || fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fs_fail(&o, dfd < 0 ? dfd : errno, "tree %s", rel);
		if (dfd >= 0)
			close(dfd);
		fs_reply_op(r, &o);
		return;
	}
	struct walk *w = calloc(1, sizeof(*w));
	struct tree t = {.r = r, .max = max, .depth = (int)depth};
	dbx_sb_init(&t.out, 0);
	int cfd = -1;
	bool partial = false;
	if (S_ISDIR(st.st_mode)) {
		partial = depth == 0;
		if (!partial) {
			cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			partial = cfd < 0;
		}
	}
	cJSON *attr = fs_attr_at(dfd, name, &st);
	close(dfd);
	if (!w || !attr) {
		cJSON_Delete(attr);
		free(w);
		if (cfd >= 0)
			close(cfd);
		fs_fail(&o, ENOMEM, "tree %s", rel);
		fs_reply_op(r, &o);
		return;
	}
	events_stamp(r);
	req_stream_begin(r, 200, "application/x-ndjson", -1, NULL);
	int e = tree_line(&t, rel, attr, partial);
	if (e == 0 && cfd >= 0) {
		snprintf(w->path, sizeof(w->path), "%s", rel);
		w->len = strlen(w->path);
		w->visit = tree_visit;
		w->error = tree_error;
		w->ctx = &t;
		walk_dir(w, cfd);
		cfd = -1;
	}
	if (cfd >= 0)
		close(cfd);
	free(w);
	if (!t.err) {
		dbx_sb_printf(&t.out,
			      "{\"end\":true,\"entries\":%llu,\"truncated\":%s,\"seq\":%llu}\n",
			      (unsigned long long)t.entries, t.truncated ? "true" : "false",
			      (unsigned long long)seq);
		tree_flush(&t);
	}
	dbx_sb_free(&t.out);
	req_stream_end(r, t.err);
}
