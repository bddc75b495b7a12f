/* archive.c: POST /api/v1/files/batch-download (agent-api.md §2.2.9): tar.gz (default), tar,
 * or multipart/mixed, streamed from a worker.
 *
 * libarchive writes through a callback straight into req_stream_write() (chunked reply), so
 * memory stays bounded by the engine's output high-water mark whatever the archive size. Member
 * names are workspace-relative. Walks never follow symlinks: a symlink is stored as a symlink
 * (tar) or, in multipart mode, followed only through openat2(RESOLVE_BENEATH), so nothing
 * outside the workspace can end up in the archive. Errors after the headers went out abort the
 * connection (the client sees a truncated chunked body, not a silently short archive). */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "files.h"
#include "misc.h"
#include "path.h"

enum dl_format { DL_TGZ, DL_TAR, DL_MULTIPART };

struct dl {
	struct req *r;
	struct agent *ag;
	enum dl_format fmt;
	struct archive *a;
	char boundary[40];
	char *buf; /* AGENT_CHUNK: file reads */
	char *out; /* AGENT_CHUNK: multipart output coalescing */
	size_t out_len;
	int err; /* first fatal error (-EPIPE: client gone) */
};

/* ---- output ------------------------------------------------------------------------------ */

static int out_flush(struct dl *d)
{
	if (d->out_len && !d->err) {
		int e = req_stream_write(d->r, d->out, d->out_len);
		if (e < 0)
			d->err = e;
	}
	d->out_len = 0;
	return d->err;
}

static int out_put(struct dl *d, const void *data, size_t len)
{
	const char *p = data;
	while (len && !d->err) {
		size_t n = AGENT_CHUNK - d->out_len;
		if (n > len)
			n = len;
		memcpy(d->out + d->out_len, p, n);
		d->out_len += n;
		p += n;
		len -= n;
		if (d->out_len == AGENT_CHUNK)
			out_flush(d);
	}
	return d->err;
}

static la_ssize_t ar_write_cb(struct archive *a, void *ctx, const void *buf, size_t len)
{
	struct dl *d = ctx;
	int e = d->err ? d->err : req_stream_write(d->r, buf, len);
	if (e < 0) {
		d->err = e;
		archive_set_error(a, -e, "client went away");
		return -1;
	}
	return (la_ssize_t)len;
}

/* ---- members ----------------------------------------------------------------------------- */

static int ar_fatal(struct dl *d)
{
	if (!d->err) {
		agent_log(LLL_WARN, "batch-download: %s", archive_error_string(d->a));
		d->err = -EIO;
	}
	return d->err;
}

/* Copies @fd's first @size bytes into the archive, zero-padding if the file shrank. */
static int ar_copy(struct dl *d, int fd, uint64_t size)
{
	while (size) {
		size_t want = size < AGENT_CHUNK ? (size_t)size : AGENT_CHUNK;
		ssize_t n = fd >= 0 ? read(fd, d->buf, want) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			memset(d->buf, 0, want);
			n = (ssize_t)want;
			fd = -1;
		}
		if (archive_write_data(d->a, d->buf, (size_t)n) < 0)
			return ar_fatal(d);
		size -= (uint64_t)n;
	}
	return 0;
}

static int ar_add(struct dl *d, int dirfd, const char *name, const struct stat *st,
		  const char *member)
{
	struct archive_entry *e;
	struct stat fst = *st;
	int fd = -1, r = 0;
	if (S_ISSOCK(st->st_mode))
		return 0; /* tar cannot carry sockets */
	if (S_ISREG(st->st_mode)) {
		fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode)) {
			if (fd >= 0)
				close(fd);
			return 0; /* vanished or replaced meanwhile */
		}
	}
	e = archive_entry_new();
	if (!e) {
		r = -ENOMEM;
		goto out;
	}
	archive_entry_copy_pathname(e, member);
	archive_entry_copy_stat(e, &fst);
	if (S_ISLNK(fst.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlinkat(dirfd, name, target, sizeof(target) - 1);
		if (n < 0)
			goto out;
		target[n] = '\0';
		archive_entry_copy_symlink(e, target);
		archive_entry_set_size(e, 0);
	} else if (!S_ISREG(fst.st_mode)) {
		archive_entry_set_size(e, 0);
	}
	int w = archive_write_header(d->a, e);
	if (w == ARCHIVE_FATAL) {
		r = ar_fatal(d);
		goto out;
	}
	if (w == ARCHIVE_FAILED)
		goto out; /* this member only */
	if (S_ISREG(fst.st_mode))
		r = ar_copy(d, fd, (uint64_t)fst.st_size);
out:
	archive_entry_free(e);
	if (fd >= 0)
		close(fd);
	return r;
}

static void escape_filename(struct dbx_strbuf *sb, const char *s)
{
	for (; *s; s++) {
		if (*s == '"')
			dbx_sb_puts(sb, "%22");
		else if (*s == '\r')
			dbx_sb_puts(sb, "%0D");
		else if (*s == '\n')
			dbx_sb_puts(sb, "%0A");
		else
			dbx_sb_putc(sb, *s);
	}
}

static int mp_add(struct dl *d, int dirfd, const char *name, const struct stat *st, const char *rel)
{
	int fd = -1, r = 0;
	struct stat fst;
	if (S_ISREG(st->st_mode))
		fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	else if (S_ISLNK(st->st_mode))
		/* followed only beneath the workspace root */
		fd = dbx_path_open(d->ag->rootfd, rel, O_RDONLY | O_NONBLOCK, 0, 0);
	else
		return 0;
	if (fd >= 0 && (fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode))) {
		close(fd);
		return 0;
	}
	if (fd < 0 && S_ISLNK(st->st_mode))
		return 0;
	char *abs = agent_abs(d->ag, rel);
	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 0);
	dbx_sb_printf(&sb, "--%s\r\nContent-Disposition: attachment; filename=\"", d->boundary);
	escape_filename(&sb, abs ? abs : rel);
	dbx_sb_puts(&sb, "\"\r\nContent-Type: application/octet-stream\r\n\r\n");
	free(abs);
	r = out_put(d, sb.data, sb.len);
	dbx_sb_free(&sb);
	/* An unreadable file gives an empty part, like the official agent. */
	uint64_t left = fd >= 0 ? (uint64_t)fst.st_size : 0;
	while (!r && left) {
		ssize_t n = read(fd, d->buf, left < AGENT_CHUNK ? left : AGENT_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		left -= (uint64_t)n;
		r = out_put(d, d->buf, (size_t)n);
	}
	if (!r)
		r = out_put(d, "\r\n", 2);
	if (fd >= 0)
		close(fd);
	return r;
}

static int add_one(struct dl *d, int dirfd, const char *name, const struct stat *st,
		   const char *rel)
{
	if (req_gone(d->r))
		return -EPIPE;
	return d->fmt == DL_MULTIPART ? mp_add(d, dirfd, name, st, rel)
				      : ar_add(d, dirfd, name, st, rel);
}

static int dl_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	int r = add_one(w->ctx, dirfd, name, st, w->path);
	if (r < 0)
		return r;
	return S_ISDIR(st->st_mode) ? WALK_DESCEND : WALK_NEXT;
}

static int dl_walk_error(struct walk *w, int err)
{
	struct dl *d = w->ctx;
	return d->err ? d->err : 0; /* unreadable subtrees are skipped */
}

static int add_path(struct dl *d, const char *rel)
{
	struct walk *w = calloc(1, sizeof(*w));
	int r = 0, pfd = -1, dfd = -1;
	const char *name;
	struct stat st;
	if (!w)
		return -ENOMEM;
	w->visit = dl_visit;
	w->error = dl_walk_error;
	w->ctx = d;
	snprintf(w->path, sizeof(w->path), "%s", rel);
	w->len = strlen(w->path);
	if (strcmp(rel, ".") == 0) {
		dfd = dbx_path_open(d->ag->rootfd, ".", O_RDONLY | O_DIRECTORY, 0, 0);
	} else {
		pfd = dbx_path_open_parent(d->ag->rootfd, rel, &name);
		if (pfd < 0 || fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			goto out; /* removed since the pre-check */
		if ((r = add_one(d, pfd, name, &st, rel)) < 0)
			goto out;
		if (S_ISDIR(st.st_mode))
			dfd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (dfd >= 0)
		r = walk_dir(w, dfd);
out:
	if (pfd >= 0)
		close(pfd);
	free(w);
	return d->err ? d->err : r;
}

/* ---- the handler ------------------------------------------------------------------------- */

/* The pre-checks: every path inside the workspace and existing. Replies and returns -1. */
static int check_paths(struct req *r, cJSON *paths, char (*rels)[PATH_MAX])
{
	struct agent *ag = req_agent(r);
	int i = 0;
	cJSON *it;
	cJSON_ArrayForEach(it, paths)
	{
		const char *name;
		struct stat st;
		if (req_resolve(r, it->valuestring, rels[i]))
			return -1;
		if (strcmp(rels[i], ".") != 0) {
			int pfd = dbx_path_open_parent(ag->rootfd, rels[i], &name);
			int e = pfd < 0 ? pfd : 0;
			if (!e && fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				e = -errno;
			if (pfd >= 0)
				close(pfd);
			if (e == -ENOENT || e == -ENOTDIR) {
				req_reply_err(r, ST_NOT_FOUND, "File not found: %s",
					      it->valuestring);
				return -1;
			}
			if (e < 0) {
				files_reply_errno(r, e, "batch-download", rels[i]);
				return -1;
			}
		}
		i++;
	}
	return 0;
}

void files_batch_download(struct req *r)
{
	cJSON *j = req_json(r);
	cJSON *paths = cJSON_GetObjectItemCaseSensitive(j, "paths"), *it;
	const char *format = NULL;
	char(*rels)[PATH_MAX] = NULL;
	struct dl d = {.r = r, .ag = req_agent(r), .fmt = DL_TGZ};
	if (!paths || cJSON_IsNull(paths)) {
		req_reply_shape(r, "missing field `paths`");
		return;
	}
	if (!cJSON_IsArray(paths)) {
		req_reply_shape(r, "paths: invalid type, expected a sequence");
		return;
	}
	cJSON_ArrayForEach(it, paths)
	{
		if (!cJSON_IsString(it)) {
			req_reply_shape(r, "paths: invalid type, expected a string");
			return;
		}
	}
	if (json_get_str(r, j, "format", false, &format))
		return;
	int n = cJSON_GetArraySize(paths);
	if (n == 0) {
		req_reply_err(r, ST_INVALID, "No paths provided");
		return;
	}
	if (n > AGENT_DOWNLOAD_PATHS_MAX) {
		req_reply_err(r, ST_INVALID, "Too many paths: %d (limit %d)", n,
			      AGENT_DOWNLOAD_PATHS_MAX);
		return;
	}
	rels = calloc((size_t)n, PATH_MAX);
	if (!rels) {
		req_reply_errno(r, ENOMEM, "batch-download");
		return;
	}
	if (check_paths(r, paths, rels) < 0)
		goto out;
	if (format && strcmp(format, "tar") == 0)
		d.fmt = DL_TAR;
	else if (format && (strcmp(format, "multipart") == 0 || strcmp(format, "mixed") == 0))
		d.fmt = DL_MULTIPART;
	d.buf = malloc(AGENT_CHUNK);
	d.out = d.fmt == DL_MULTIPART ? malloc(AGENT_CHUNK) : NULL;
	if (!d.buf || (d.fmt == DL_MULTIPART && !d.out)) {
		req_reply_errno(r, ENOMEM, "batch-download");
		goto out;
	}
	if (d.fmt == DL_MULTIPART) {
		/* Longer than the official 8 characters: a collision with content is unlikely. */
		char id[25], ct[80];
		dbx_random_id(id, 24);
		snprintf(d.boundary, sizeof(d.boundary), "dbx%s", id);
		snprintf(ct, sizeof(ct), "multipart/mixed; boundary=%s", d.boundary);
		req_stream_begin(
			r, 200, ct, -1,
			"Content-Disposition: attachment; filename=\"download.multipart\"\r\n");
	} else {
		d.a = archive_write_new();
		if (!d.a || archive_write_set_format_pax_restricted(d.a) != ARCHIVE_OK ||
		    (d.fmt == DL_TGZ && archive_write_add_filter_gzip(d.a) != ARCHIVE_OK) ||
		    archive_write_set_bytes_per_block(d.a, 64 << 10) != ARCHIVE_OK ||
		    archive_write_set_bytes_in_last_block(d.a, 1) != ARCHIVE_OK) {
			req_reply_err(r, ST_INTERNAL,
				      "batch-download: cannot set up the archive: %s",
				      d.a ? archive_error_string(d.a) : "out of memory");
			goto out;
		}
		if (d.fmt == DL_TGZ)
			req_stream_begin(r, 200, "application/gzip", -1,
					 "Content-Disposition: attachment; "
					 "filename=\"download.tar.gz\"\r\n");
		else
			req_stream_begin(r, 200, "application/x-tar", -1,
					 "Content-Disposition: attachment; "
					 "filename=\"download.tar\"\r\n");
		if (archive_write_open(d.a, &d, NULL, ar_write_cb, NULL) != ARCHIVE_OK)
			ar_fatal(&d);
	}
	for (int i = 0; i < n && !d.err; i++)
		if (add_path(&d, rels[i]) < 0 && !d.err)
			d.err = -EIO;
	if (d.fmt == DL_MULTIPART) {
		char end[64];
		int l = snprintf(end, sizeof(end), "--%s--\r\n", d.boundary);
		out_put(&d, end, (size_t)l);
		out_flush(&d);
	} else if (!d.err && archive_write_close(d.a) != ARCHIVE_OK) {
		ar_fatal(&d);
	}
	req_stream_end(r, d.err);
out:
	if (d.a)
		archive_write_free(d.a);
	free(d.buf);
	free(d.out);
	free(rels);
}
