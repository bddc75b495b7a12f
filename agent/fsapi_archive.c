/* fsapi_archive.c: the transfer routes behind `devboxctl cp` (PROTOCOL.md §2.4):
 *   GET  /fs/v1/archive  a pax tar of a file or tree, streamed (chunked);
 *   POST /fs/v1/archive  the same, limited to the members listed in a JSON body;
 *   PUT  /fs/v1/archive  extract a tar body beneath a directory, each file through a temp name;
 *   GET  /fs/v1/hashes   NDJSON: type, size, mode, mtime and XXH3-64 of every entry of a tree.
 *
 * Threads: workers of the transfer pool only (they block on the client and the file system).
 * Reading never follows symlinks (walk_dir; the start path's last component is not followed
 * either). Extraction resolves the target directory like every path (beneath the workspace),
 * then every member beneath that directory with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: no
 * symlink, already there or created by the same archive, is ever traversed, so no member can
 * land outside the directory; absolute names and ".." are refused. A regular file is written
 * to ".NAME.dbx-XXXXXX" and renamed over NAME once complete, so an aborted upload leaves no
 * partial file. Memory is bounded: the tar flows through AGENT_CHUNK buffers both ways and the
 * per-member state of an upload (deferred directory metadata, the hash list of the reply) is
 * capped at ARC_ENTRIES_MAX members. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "events.h"
#include "files.h"
#include "fsapi.h"
#include "misc.h"
#include "path.h"

#define ARC_ENTRIES_MAX      100000      /* members of one upload */
#define ARC_INCLUDE_BODY_MAX (16u << 20) /* POST archive: the JSON list of members */
#define ARC_FLUSH            (64u << 10) /* NDJSON output coalescing */

static const char *query_get(void *ctx, const char *name)
{
	return req_query(ctx, name);
}

static void hex64(uint64_t h, char out[17])
{
	snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ---- reading: GET/POST archive ---------------------------------------------------------- */

struct arc_out {
	struct req *r;
	struct archive *a;
	char *buf;   /* AGENT_CHUNK: file reads */
	size_t skip; /* bytes of a workspace path before the member name */
	bool root;   /* the start is the workspace root: members are "./..." */
	int err;     /* first fatal error (-EPIPE: client gone) */
};

static la_ssize_t out_write_cb(struct archive *a, void *ctx, const void *buf, size_t len)
{
	struct arc_out *o = ctx;
	int e = o->err ? o->err : req_stream_write(o->r, buf, len);
	if (e < 0) {
		o->err = e;
		archive_set_error(a, -e, "client went away");
		return -1;
	}
	return (la_ssize_t)len;
}

static int out_fatal(struct arc_out *o)
{
	if (!o->err) {
		agent_log(LLL_WARN, "archive: %s", archive_error_string(o->a));
		o->err = -EIO;
	}
	return o->err;
}

/* The member name of the workspace path @rel. */
static void member_name(struct arc_out *o, const char *rel, char out[PATH_MAX])
{
	if (o->root)
		snprintf(out, PATH_MAX, strcmp(rel, ".") ? "./%s" : ".", rel);
	else
		snprintf(out, PATH_MAX, "%s", rel + o->skip);
}

/* Copies @size bytes of @fd into the archive; a file that shrank meanwhile is padded with
 * zeros (the header promised the size), one that grew is cut. */
static int out_copy(struct arc_out *o, int fd, uint64_t size)
{
	while (size) {
		size_t want = size < AGENT_CHUNK ? (size_t)size : AGENT_CHUNK;
		ssize_t n = fd >= 0 ? read(fd, o->buf, want) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			memset(o->buf, 0, want);
			n = (ssize_t)want;
			fd = -1;
		}
		if (archive_write_data(o->a, o->buf, (size_t)n) < 0)
			return out_fatal(o);
		size -= (uint64_t)n;
	}
	return 0;
}

/* One member: @name in @dirfd, workspace path @rel. Vanished entries are skipped. */
static int out_add(struct arc_out *o, int dirfd, const char *name, const struct stat *st,
		   const char *rel)
{
	struct archive_entry *e = NULL;
	struct stat fst = *st;
	char member[PATH_MAX];
	int fd = -1, r = 0;
	if (req_gone(o->r))
		return o->err = -EPIPE;
	if (S_ISSOCK(st->st_mode))
		return 0; /* tar cannot carry sockets */
	if (S_ISREG(st->st_mode)) {
		fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode))
			goto out; /* vanished or replaced meanwhile */
	}
	e = archive_entry_new();
	if (!e) {
		r = o->err = -ENOMEM;
		goto out;
	}
	member_name(o, rel, member);
	archive_entry_copy_pathname(e, member);
	archive_entry_copy_stat(e, &fst);
	/* Only what a copy keeps: type, mode, owner, size, mtime (ns). */
	archive_entry_unset_atime(e);
	archive_entry_unset_ctime(e);
	archive_entry_unset_birthtime(e);
	archive_entry_set_nlink(e, 1);
	archive_entry_set_dev(e, 0);
	archive_entry_set_ino64(e, 0);
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
	int w = archive_write_header(o->a, e);
	if (w == ARCHIVE_FATAL) {
		r = out_fatal(o);
		goto out;
	}
	if (w == ARCHIVE_FAILED)
		goto out; /* this member only (a device number tar cannot carry ...) */
	if (S_ISREG(fst.st_mode))
		r = out_copy(o, fd, (uint64_t)fst.st_size);
out:
	archive_entry_free(e);
	if (fd >= 0)
		close(fd);
	return r;
}

static int out_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	int r = out_add(w->ctx, dirfd, name, st, w->path);
	if (r < 0)
		return r;
	return S_ISDIR(st->st_mode) ? WALK_DESCEND : WALK_NEXT;
}

static int out_walk_error(struct walk *w, int err)
{
	struct arc_out *o = w->ctx;
	return o->err ? o->err : 0; /* unreadable subtrees are skipped */
}

/* The whole tree at @rel (already known to exist as @st in @pfd/@name). */
static int out_tree(struct arc_out *o, int pfd, const char *name, const struct stat *st,
		    const char *rel)
{
	int r = out_add(o, pfd, name, st, rel);
	if (r < 0 || !S_ISDIR(st->st_mode))
		return r;
	int dfd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return 0;
	struct walk *w = calloc(1, sizeof(*w));
	if (!w) {
		close(dfd);
		return o->err = -ENOMEM;
	}
	w->visit = out_visit;
	w->error = out_walk_error;
	w->ctx = o;
	snprintf(w->path, sizeof(w->path), "%s", rel);
	w->len = strlen(w->path);
	r = walk_dir(w, dfd);
	free(w);
	return o->err ? o->err : r;
}

/* A member name of the include list back to its workspace path: it must be the start's own
 * name or lie beneath it. */
static int include_rel(struct arc_out *o, const char *start_rel, const char *member,
		       char rel[PATH_MAX])
{
	char clean[PATH_MAX];
	/* Lexical clean-up relative to a fake root: ".." above the member's top is refused. */
	int e = dbx_path_normalize("/", NULL, member, clean, sizeof(clean));
	if (e < 0 || member[0] == '/')
		return -EINVAL;
	if (o->root) {
		snprintf(rel, PATH_MAX, "%s", clean);
		return 0;
	}
	const char *top = start_rel + o->skip;
	size_t tl = strlen(top);
	if (strncmp(clean, top, tl) != 0 || (clean[tl] != '\0' && clean[tl] != '/'))
		return -EINVAL;
	if ((size_t)snprintf(rel, PATH_MAX, "%.*s%s", (int)o->skip, start_rel, clean) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

static int out_include(struct arc_out *o, const char *start_rel, cJSON *list)
{
	cJSON *it;
	cJSON_ArrayForEach(it, list)
	{
		char rel[PATH_MAX];
		const char *name;
		struct stat st;
		if (include_rel(o, start_rel, it->valuestring, rel) < 0)
			continue; /* checked before the reply began */
		int pfd = fs_parent(req_agent(o->r), rel, &name);
		if (pfd < 0)
			continue;
		int r = 0;
		if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			r = out_add(o, pfd, name, &st, rel);
		close(pfd);
		if (r < 0 || o->err)
			return r < 0 ? r : o->err;
	}
	return 0;
}

int fs_archive_post_prepare(struct req *r)
{
	if (req_content_length(r) > (int64_t)ARC_INCLUDE_BODY_MAX) {
		fs_reply_error(r, E2BIG, "archive: include list over 16 MiB");
		return 1;
	}
	req_set_body(r, BODY_BUFFER, ARC_INCLUDE_BODY_MAX);
	return 0;
}

static void archive_out(struct req *r, bool post)
{
	char rel[PATH_MAX];
	struct fs_args args = {query_get, r};
	struct fs_op op = {.ag = req_agent(r), .a = &args};
	struct arc_out o = {.r = r};
	cJSON *list = NULL;
	const char *name;
	struct stat st;
	int pfd = -1;
	if (fs_arg_path(&op, "path", rel) < 0)
		goto reply;
	if (post) {
		list = cJSON_GetObjectItemCaseSensitive(req_json(r), "include");
		cJSON *it;
		if (!cJSON_IsArray(list)) {
			fs_fail(&op, EINVAL, "archive %s: the body must be {\"include\":[names]}",
				rel);
			goto reply;
		}
		cJSON_ArrayForEach(it, list)
		{
			if (!cJSON_IsString(it)) {
				fs_fail(&op, EINVAL, "archive %s: include: names must be strings",
					rel);
				goto reply;
			}
		}
	}
	o.root = strcmp(rel, ".") == 0;
	const char *slash = strrchr(rel, '/');
	o.skip = slash ? (size_t)(slash - rel) + 1 : 0;
	pfd = fs_parent(op.ag, rel, &name);
	if (pfd < 0) {
		fs_fail(&op, pfd, "archive %s", rel);
		goto reply;
	}
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fs_fail(&op, errno, "archive %s", rel);
		goto reply;
	}
	if (list) {
		cJSON *it;
		cJSON_ArrayForEach(it, list)
		{
			char mrel[PATH_MAX];
			if (include_rel(&o, rel, it->valuestring, mrel) < 0) {
				fs_fail(&op, EINVAL, "archive %s: include %.256s: not a member",
					rel, it->valuestring);
				goto reply;
			}
		}
	}
	o.buf = malloc(AGENT_CHUNK);
	o.a = archive_write_new();
	if (!o.buf || !o.a || archive_write_set_format_pax(o.a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(o.a, 64 << 10) != ARCHIVE_OK ||
	    archive_write_set_bytes_in_last_block(o.a, 1) != ARCHIVE_OK) {
		fs_fail(&op, ENOMEM, "archive %s: cannot set up the archive", rel);
		goto reply;
	}
	events_stamp(r);
	req_stream_begin(r, 200, "application/x-tar", -1, NULL);
	if (archive_write_open(o.a, &o, NULL, out_write_cb, NULL) != ARCHIVE_OK)
		out_fatal(&o);
	if (!o.err) {
		int e = list ? out_include(&o, rel, list) : out_tree(&o, pfd, name, &st, rel);
		if (e < 0 && !o.err)
			o.err = e;
	}
	if (!o.err && archive_write_close(o.a) != ARCHIVE_OK)
		out_fatal(&o);
	req_stream_end(r, o.err);
	goto out;
reply:
	fs_reply_op(r, &op);
out:
	if (pfd >= 0)
		close(pfd);
	if (o.a)
		archive_write_free(o.a);
	free(o.buf);
}

void fs_archive_get_route(struct req *r)
{
	archive_out(r, false);
}

void fs_archive_post_route(struct req *r)
{
	archive_out(r, true);
}

/* ---- writing: PUT archive ----------------------------------------------------------------- */

struct dir_meta {
	char *path; /* member path beneath the target directory, "." for itself */
	mode_t mode;
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
};

struct arc_in {
	struct req *r;
	struct agent *ag;
	struct fs_op *op;
	int dirfd;          /* O_PATH of the target directory */
	const char *dirrel; /* its workspace path, for messages */
	bool owner;         /* apply uid/gid from the archive */
	uint64_t clen, got; /* request body */
	char *buf;          /* AGENT_CHUNK */
	struct dir_meta *dirs;
	size_t ndirs, capdirs;
	uint64_t entries, files, ndir, symlinks, others, ignored, bytes;
	struct dbx_strbuf hashes; /* JSON array members, comma-separated */
	char tmp[NAME_MAX + 1];   /* the temp name in flight (removed on failure) */
	int tmp_dfd;
};

static la_ssize_t in_read_cb(struct archive *a, void *ctx, const void **buf)
{
	struct arc_in *in = ctx;
	if (in->got >= in->clen)
		return 0;
	ssize_t n = req_body_next(in->r, buf, (size_t)(in->clen - in->got));
	if (n == 0)
		n = -EPIPE; /* ended before Content-Length */
	if (n < 0) {
		archive_set_error(a, (int)-n, "request body: %s",
				  n == -EPIPE ? "the client went away" : strerror((int)-n));
		return -1;
	}
	in->got += (uint64_t)n;
	return n;
}

/* Drops what the client still sends after the archive's end marker. */
static void in_drain(struct arc_in *in)
{
	while (in->got < in->clen) {
		const void *p;
		ssize_t n = req_body_next(in->r, &p, (size_t)(in->clen - in->got));
		if (n <= 0)
			break;
		in->got += (uint64_t)n;
	}
}

/* Lexical check of a member name: relative, no "..", at most PATH_MAX. "./a//b/" → "a/b";
 * the directory itself → ".". */
static int member_clean(const char *in, char out[PATH_MAX])
{
	size_t len = 0;
	const char *p = in;
	if (!*in)
		return -EINVAL;
	if (in[0] == '/')
		return -EXDEV;
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
		if (cl == 2 && s[0] == '.' && s[1] == '.')
			return -EXDEV;
		if (cl > NAME_MAX)
			return -ENAMETOOLONG;
		if (len + (len > 0) + cl + 1 > PATH_MAX)
			return -ENAMETOOLONG;
		if (len > 0)
			out[len++] = '/';
		memcpy(out + len, s, cl);
		len += cl;
	}
	if (len == 0)
		out[len++] = '.';
	out[len] = '\0';
	return 0;
}

/* Opens @dir beneath the target directory without traversing any symlink. */
static int open_beneath(struct arc_in *in, const char *dir)
{
	return dbx_path_open(in->dirfd, dir, O_PATH | O_DIRECTORY, 0, RESOLVE_NO_SYMLINKS);
}

/* The parent directory of member @m (created like tar does when missing) and its last name. */
static int member_parent(struct arc_in *in, char *m, const char **ret_name)
{
	char *slash = strrchr(m, '/');
	if (!slash) {
		*ret_name = m;
		return open_beneath(in, ".");
	}
	*slash = '\0';
	*ret_name = slash + 1;
	int fd = open_beneath(in, m);
	if (fd != -ENOENT)
		goto out;
	/* mkdir -p, one confined component at a time. */
	for (char *p = m;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;
		*p = '\0';
		const char *name;
		char *ps = strrchr(m, '/');
		int pfd;
		if (ps) {
			*ps = '\0';
			pfd = open_beneath(in, m);
			*ps = '/';
			name = ps + 1;
		} else {
			pfd = open_beneath(in, ".");
			name = m;
		}
		if (pfd < 0) {
			*p = saved;
			fd = pfd;
			goto out;
		}
		if (mkdirat(pfd, name, 0755) < 0 && errno != EEXIST) {
			fd = -errno;
			close(pfd);
			*p = saved;
			goto out;
		}
		close(pfd);
		*p = saved;
		if (!saved)
			break;
	}
	fd = open_beneath(in, m);
out:
	*slash = '/';
	return fd;
}

/* A temp name next to @name, created by @make (returns 0 or -errno; EEXIST retried). */
static int make_tmp(struct arc_in *in, int pfd, const char *name,
		    int (*make)(struct arc_in *in, int pfd, const char *tmp, void *ctx), void *ctx)
{
	size_t nl = strlen(name);
	if (nl > NAME_MAX - 12)
		nl = NAME_MAX - 12;
	for (int tries = 0; tries < 100; tries++) {
		char id[7];
		dbx_random_id(id, 6);
		snprintf(in->tmp, sizeof(in->tmp), ".%.*s.dbx-%s", (int)nl, name, id);
		int e = make(in, pfd, in->tmp, ctx);
		if (e == 0) {
			in->tmp_dfd = pfd;
			return 0;
		}
		if (e != -EEXIST) {
			in->tmp[0] = '\0';
			return e;
		}
	}
	in->tmp[0] = '\0';
	return -EEXIST;
}

static void tmp_remove(struct arc_in *in)
{
	if (in->tmp[0] && in->tmp_dfd >= 0)
		unlinkat(in->tmp_dfd, in->tmp, 0);
	in->tmp[0] = '\0';
	in->tmp_dfd = -1;
}

/* Renames the temp name over @name. A directory there is refused (EISDIR). */
static int tmp_commit(struct arc_in *in, int pfd, const char *name)
{
	if (renameat(pfd, in->tmp, pfd, name) < 0) {
		int e = -errno;
		if (e == -ENOTEMPTY || e == -EEXIST)
			e = -EISDIR;
		return e;
	}
	in->tmp[0] = '\0';
	in->tmp_dfd = -1;
	return 0;
}

static int make_file(struct arc_in *in, int pfd, const char *tmp, void *ctx)
{
	int *fd = ctx;
	*fd = openat(pfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	return *fd < 0 ? -errno : 0;
}

static int make_symlink(struct arc_in *in, int pfd, const char *tmp, void *ctx)
{
	return symlinkat(ctx, pfd, tmp) < 0 ? -errno : 0;
}

struct link_src {
	int dirfd;
	const char *name;
};

static int make_link(struct arc_in *in, int pfd, const char *tmp, void *ctx)
{
	struct link_src *from = ctx;
	return linkat(from->dirfd, from->name, pfd, tmp, 0) < 0 ? -errno : 0;
}

static int make_fifo(struct arc_in *in, int pfd, const char *tmp, void *ctx)
{
	mode_t *mode = ctx;
	return mknodat(pfd, tmp, S_IFIFO | (*mode & 07777), 0) < 0 ? -errno : 0;
}

static void entry_mtime(struct archive_entry *e, struct timespec ts[2])
{
	ts[0].tv_sec = 0;
	ts[0].tv_nsec = UTIME_OMIT;
	if (archive_entry_mtime_is_set(e)) {
		ts[1].tv_sec = archive_entry_mtime(e);
		ts[1].tv_nsec = archive_entry_mtime_nsec(e);
	} else {
		ts[1].tv_sec = 0;
		ts[1].tv_nsec = UTIME_NOW;
	}
}

static int hash_add(struct arc_in *in, const char *m, uint64_t size, uint64_t h)
{
	char hex[17];
	hex64(h, hex);
	cJSON *o = cJSON_CreateObject();
	char *lossy = dbx_utf8_lossy(m, strlen(m), NULL);
	cJSON_AddStringToObject(o, "path", lossy ? lossy : "");
	free(lossy);
	cJSON_AddNumberToObject(o, "size", (double)size);
	cJSON_AddStringToObject(o, "xxh3", hex);
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	int e = s ? 0 : -ENOMEM;
	if (!e && in->hashes.len)
		e = dbx_sb_putc(&in->hashes, ',');
	if (!e)
		e = dbx_sb_puts(&in->hashes, s);
	free(s);
	return e;
}

static int put_file(struct arc_in *in, struct archive *a, struct archive_entry *e, int pfd,
		    const char *name, const char *m)
{
	int fd = -1, r;
	int64_t size = archive_entry_size(e);
	if (size > 0 && (uint64_t)size > in->ag->cfg.max_file_size)
		return fs_fail(in->op, EFBIG,
			       "archive %s: %lld bytes over the file size limit (%llu)", m,
			       (long long)size, (unsigned long long)in->ag->cfg.max_file_size);
	r = make_tmp(in, pfd, name, make_file, &fd);
	if (r < 0)
		return fs_fail(in->op, r, "archive %s", m);
	XXH3_state_t *xs = XXH3_createState();
	if (!xs) {
		r = fs_fail(in->op, ENOMEM, "archive %s", m);
		goto fail;
	}
	XXH3_64bits_reset(xs);
	uint64_t total = 0;
	for (;;) {
		la_ssize_t n = archive_read_data(a, in->buf, AGENT_CHUNK);
		if (n < 0) {
			int err = archive_errno(a) > 0 ? archive_errno(a) : EIO;
			r = fs_fail(in->op, err, "archive %s: %s", m, archive_error_string(a));
			goto fail;
		}
		if (n == 0)
			break;
		XXH3_64bits_update(xs, in->buf, (size_t)n);
		for (la_ssize_t done = 0; done < n;) {
			ssize_t w = write(fd, in->buf + done, (size_t)(n - done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				r = fs_fail(in->op, errno, "archive %s", m);
				goto fail;
			}
			done += w;
		}
		total += (uint64_t)n;
	}
	struct timespec ts[2];
	entry_mtime(e, ts);
	if (in->owner && fchown(fd, archive_entry_uid(e), archive_entry_gid(e)) < 0 &&
	    errno != EPERM) {
		r = fs_fail(in->op, errno, "archive %s: chown", m);
		goto fail;
	}
	if (fchmod(fd, archive_entry_perm(e) & 07777) < 0 || futimens(fd, ts) < 0) {
		r = fs_fail(in->op, errno, "archive %s", m);
		goto fail;
	}
	r = close(fd) < 0 ? -errno : 0; /* NFS-like file systems report ENOSPC here */
	fd = -1;
	if (r == 0)
		r = tmp_commit(in, pfd, name);
	if (r < 0) {
		r = fs_fail(in->op, r, "archive %s", m);
		goto fail;
	}
	in->files++;
	in->bytes += total;
	r = hash_add(in, m, total, XXH3_64bits_digest(xs));
	XXH3_freeState(xs);
	if (r < 0)
		return fs_fail(in->op, r, "archive %s: reply", m);
	return 0;
fail:
	XXH3_freeState(xs);
	if (fd >= 0)
		close(fd);
	tmp_remove(in);
	return r;
}

static int put_symlink(struct arc_in *in, struct archive_entry *e, int pfd, const char *name,
		       const char *m)
{
	const char *target = archive_entry_symlink(e);
	if (!target || !*target)
		return fs_fail(in->op, EINVAL, "archive %s: symlink without a target", m);
	/* The target is kept verbatim: it is never followed here. */
	int r = make_tmp(in, pfd, name, make_symlink, (void *)target);
	if (r < 0)
		return fs_fail(in->op, r, "archive %s", m);
	struct timespec ts[2];
	entry_mtime(e, ts);
	if (in->owner &&
	    fchownat(pfd, in->tmp, archive_entry_uid(e), archive_entry_gid(e),
		     AT_SYMLINK_NOFOLLOW) < 0 &&
	    errno != EPERM)
		r = -errno;
	if (r == 0 && utimensat(pfd, in->tmp, ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	if (r == 0)
		r = tmp_commit(in, pfd, name);
	if (r < 0) {
		tmp_remove(in);
		return fs_fail(in->op, r, "archive %s", m);
	}
	in->symlinks++;
	return 0;
}

static int put_dir(struct arc_in *in, struct archive_entry *e, int pfd, const char *name,
		   const char *m)
{
	if (strcmp(m, ".") != 0 && mkdirat(pfd, name, 0700) < 0) {
		int err = errno;
		struct stat st;
		if (err != EEXIST)
			return fs_fail(in->op, err, "archive %s", m);
		if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return fs_fail(in->op, errno, "archive %s", m);
		if (!S_ISDIR(st.st_mode))
			return fs_fail(in->op, ENOTDIR, "archive %s: exists and is not a directory",
				       m);
	}
	/* Mode and times once everything inside is written (a 0555 directory must still be
	 * filled, and writing into it changes its mtime). */
	if (in->ndirs == in->capdirs) {
		size_t cap = in->capdirs ? in->capdirs * 2 : 64;
		struct dir_meta *d = realloc(in->dirs, cap * sizeof(*d));
		if (!d)
			return fs_fail(in->op, ENOMEM, "archive %s", m);
		in->dirs = d;
		in->capdirs = cap;
	}
	struct dir_meta *d = &in->dirs[in->ndirs];
	d->path = strdup(m);
	if (!d->path)
		return fs_fail(in->op, ENOMEM, "archive %s", m);
	struct timespec ts[2];
	entry_mtime(e, ts);
	d->mtime = ts[1];
	d->mode = archive_entry_perm(e) & 07777;
	d->uid = archive_entry_uid(e);
	d->gid = archive_entry_gid(e);
	in->ndirs++;
	in->ndir++;
	return 0;
}

/* Hard link: the existing member must be beneath the target directory too. */
static int put_hardlink(struct arc_in *in, const char *link, int pfd, const char *name,
			const char *m)
{
	char lm[PATH_MAX];
	int r = member_clean(link, lm);
	if (r < 0)
		return fs_fail(in->op, r, "archive %s: link to %.256s", m, link);
	const char *lname;
	int lfd = member_parent(in, lm, &lname);
	if (lfd < 0)
		return fs_fail(in->op, lfd, "archive %s: link to %s", m, lm);
	struct link_src from = {lfd, lname};
	r = make_tmp(in, pfd, name, make_link, &from);
	if (r == 0)
		r = tmp_commit(in, pfd, name);
	close(lfd);
	if (r < 0) {
		tmp_remove(in);
		return fs_fail(in->op, r, "archive %s: link to %s", m, lm);
	}
	in->others++;
	return 0;
}

static int put_fifo(struct arc_in *in, struct archive_entry *e, int pfd, const char *name,
		    const char *m)
{
	mode_t mode = archive_entry_perm(e);
	int r = make_tmp(in, pfd, name, make_fifo, &mode);
	struct timespec ts[2];
	entry_mtime(e, ts);
	if (r == 0 && utimensat(pfd, in->tmp, ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	if (r == 0)
		r = tmp_commit(in, pfd, name);
	if (r < 0) {
		tmp_remove(in);
		return fs_fail(in->op, r, "archive %s", m);
	}
	in->others++;
	return 0;
}

static int put_entry(struct arc_in *in, struct archive *a, struct archive_entry *e)
{
	char m[PATH_MAX];
	const char *raw = archive_entry_pathname(e);
	int r = raw ? member_clean(raw, m) : -EINVAL;
	if (r == -EXDEV)
		return fs_fail(in->op, EXDEV, "archive %.256s: absolute name or `..`", raw);
	if (r < 0)
		return fs_fail(in->op, r, "archive %.256s", raw ? raw : "(no name)");
	if (++in->entries > ARC_ENTRIES_MAX)
		return fs_fail(in->op, E2BIG, "archive: more than %d members in one upload",
			       ARC_ENTRIES_MAX);
	const char *hl = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	if (strcmp(m, ".") == 0) {
		if (hl || type != AE_IFDIR)
			return fs_fail(in->op, EISDIR, "archive %.256s: names the directory itself",
				       raw);
		return put_dir(in, e, in->dirfd, ".", m);
	}
	char parent[PATH_MAX];
	memcpy(parent, m, strlen(m) + 1);
	const char *name;
	int pfd = member_parent(in, parent, &name);
	if (pfd < 0) {
		if (pfd == -ELOOP)
			return fs_fail(in->op, ELOOP,
				       "archive %s: refusing to write through a symbolic link", m);
		return fs_fail(in->op, pfd, "archive %s", m);
	}
	if (hl)
		r = put_hardlink(in, hl, pfd, name, m);
	else if (type == AE_IFREG)
		r = put_file(in, a, e, pfd, name, m);
	else if (type == AE_IFDIR)
		r = put_dir(in, e, pfd, name, m);
	else if (type == AE_IFLNK)
		r = put_symlink(in, e, pfd, name, m);
	else if (type == AE_IFIFO)
		r = put_fifo(in, e, pfd, name, m);
	else
		in->ignored++; /* devices and sockets are not created */
	close(pfd);
	return r;
}

/* Deferred directory metadata, deepest (latest) first. Best effort after a failure. */
static int dirs_apply(struct arc_in *in, bool report)
{
	int r = 0;
	for (size_t i = in->ndirs; i-- > 0;) {
		struct dir_meta *d = &in->dirs[i];
		char path[PATH_MAX];
		memcpy(path, d->path, strlen(d->path) + 1);
		const char *name = ".";
		int pfd =
			strcmp(path, ".") ? member_parent(in, path, &name) : open_beneath(in, ".");
		int e = pfd < 0 ? pfd : 0;
		struct timespec ts[2] = {{0, UTIME_OMIT}, d->mtime};
		if (!e && in->owner &&
		    fchownat(pfd, name, d->uid, d->gid, AT_SYMLINK_NOFOLLOW) < 0 && errno != EPERM)
			e = -errno;
		if (!e && fchmodat(pfd, name, d->mode, AT_SYMLINK_NOFOLLOW) < 0)
			e = -errno;
		if (!e && utimensat(pfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
			e = -errno;
		if (pfd >= 0)
			close(pfd);
		if (e < 0 && report && r == 0)
			r = fs_fail(in->op, e, "archive %s", d->path);
	}
	return r;
}

int fs_archive_put_prepare(struct req *r)
{
	req_set_body(r, BODY_STREAM, 0);
	return 0;
}

void fs_archive_put_route(struct req *r)
{
	char rel[PATH_MAX];
	struct fs_args args = {query_get, r};
	struct fs_op op = {.ag = req_agent(r), .a = &args};
	int64_t clen = req_content_length(r);
	struct arc_in in = {.r = r,
			    .ag = op.ag,
			    .op = &op,
			    .dirfd = -1,
			    .tmp_dfd = -1,
			    .clen = clen > 0 ? (uint64_t)clen : 0};
	struct archive *a = NULL;
	dbx_sb_init(&in.hashes, 0);
	if (fs_arg_path(&op, "path", rel) < 0 || fs_arg_bool(&op, "owner", false, &in.owner) < 0)
		goto reply;
	in.dirrel = rel;
	in.dirfd = dbx_path_open(op.ag->rootfd, rel, O_PATH | O_DIRECTORY, 0, 0);
	if (in.dirfd < 0) {
		fs_fail(&op, in.dirfd, "archive %s", rel);
		goto reply;
	}
	in.buf = malloc(AGENT_CHUNK);
	a = archive_read_new();
	if (!in.buf || !a || archive_read_support_format_tar(a) != ARCHIVE_OK) {
		fs_fail(&op, ENOMEM, "archive %s", rel);
		goto reply;
	}
	if (archive_read_open(a, &in, NULL, in_read_cb, NULL) != ARCHIVE_OK) {
		int err = archive_errno(a) > 0 ? archive_errno(a) : EINVAL;
		fs_fail(&op, err, "archive %s: %s", rel, archive_error_string(a));
		goto reply;
	}
	for (;;) {
		struct archive_entry *e;
		int h = archive_read_next_header(a, &e);
		if (h == ARCHIVE_EOF)
			break;
		if (h < ARCHIVE_WARN) {
			int err = archive_errno(a) > 0 ? archive_errno(a) : EINVAL;
			fs_fail(&op, err, "archive %s: %s", rel, archive_error_string(a));
			break;
		}
		if (put_entry(&in, a, e) < 0)
			break;
	}
	dirs_apply(&in, !op.err);
	if (!op.err)
		in_drain(&in);
reply:
	tmp_remove(&in);
	if (!op.err) {
		struct dbx_strbuf sb;
		dbx_sb_init(&sb, 0);
		dbx_sb_printf(&sb,
			      "{\"files\":%llu,\"dirs\":%llu,\"symlinks\":%llu,\"others\":%llu,"
			      "\"ignored\":%llu,\"bytes\":%llu,\"hashes\":[",
			      (unsigned long long)in.files, (unsigned long long)in.ndir,
			      (unsigned long long)in.symlinks, (unsigned long long)in.others,
			      (unsigned long long)in.ignored, (unsigned long long)in.bytes);
		dbx_sb_append(&sb, in.hashes.data ? in.hashes.data : "", in.hashes.len);
		if (dbx_sb_puts(&sb, "]}") < 0) {
			dbx_sb_free(&sb);
			fs_fail(&op, ENOMEM, "archive %s: reply", rel);
		} else {
			size_t n;
			char *s = dbx_sb_steal(&sb, &n);
			events_stamp(r);
			req_reply_raw(r, 200, "application/json", s, n);
		}
	}
	if (op.err)
		fs_reply_op(r, &op);
	if (a)
		archive_read_free(a);
	for (size_t i = 0; i < in.ndirs; i++)
		free(in.dirs[i].path);
	free(in.dirs);
	free(in.buf);
	dbx_sb_free(&in.hashes);
	if (in.dirfd >= 0)
		close(in.dirfd);
}

/* ---- hashes ------------------------------------------------------------------------------ */

struct hashes {
	struct req *r;
	struct dbx_strbuf out;
	char *buf;
	size_t skip; /* bytes of a workspace path before the path relative to the start */
	uint64_t entries;
	int err;
};

static int hashes_flush(struct hashes *h)
{
	if (!h->out.len || h->err)
		return h->err;
	int e = req_stream_write(h->r, h->out.data, h->out.len);
	dbx_sb_reset(&h->out);
	if (e < 0)
		h->err = e;
	return h->err;
}

/* XXH3-64 of the regular file @name in @dirfd. */
static int hash_file(struct hashes *h, int dirfd, const char *name, uint64_t *ret)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	XXH3_state_t *xs = XXH3_createState();
	int r = xs ? 0 : -ENOMEM;
	if (xs)
		XXH3_64bits_reset(xs);
	while (!r) {
		ssize_t n = read(fd, h->buf, AGENT_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		if (n <= 0)
			break;
		XXH3_64bits_update(xs, h->buf, (size_t)n);
		if (req_gone(h->r))
			r = -EPIPE;
	}
	if (!r)
		*ret = XXH3_64bits_digest(xs);
	XXH3_freeState(xs);
	close(fd);
	return r;
}

static int hashes_line(struct hashes *h, int dirfd, const char *name, const struct stat *st,
		       const char *path)
{
	cJSON *o = cJSON_CreateObject();
	char *lossy = dbx_utf8_lossy(path, strlen(path), NULL);
	cJSON_AddStringToObject(o, "path", lossy ? lossy : "");
	free(lossy);
	cJSON_AddStringToObject(o, "type", fs_type_name(st->st_mode));
	cJSON_AddNumberToObject(o, "size", (double)st->st_size);
	cJSON *mt = cJSON_AddArrayToObject(o, "mtime");
	cJSON_AddItemToArray(mt, cJSON_CreateNumber((double)st->st_mtim.tv_sec));
	cJSON_AddItemToArray(mt, cJSON_CreateNumber((double)st->st_mtim.tv_nsec));
	cJSON_AddNumberToObject(o, "mode", (double)st->st_mode);
	cJSON_AddNumberToObject(o, "uid", (double)st->st_uid);
	cJSON_AddNumberToObject(o, "gid", (double)st->st_gid);
	if (S_ISREG(st->st_mode)) {
		uint64_t x = 0;
		int e = hash_file(h, dirfd, name, &x);
		if (e == -EPIPE || e == -ENOMEM) {
			cJSON_Delete(o);
			return h->err = e;
		}
		if (e == 0) {
			char hex[17];
			hex64(x, hex);
			cJSON_AddStringToObject(o, "xxh3", hex);
		} else {
			cJSON_AddStringToObject(o, "error", dbx_errno_name(-e));
		}
	} else if (S_ISLNK(st->st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlinkat(dirfd, name, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		char *t = dbx_utf8_lossy(target, strlen(target), NULL);
		cJSON_AddStringToObject(o, "target", t ? t : "");
		free(t);
	}
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	int e = s ? dbx_sb_puts(&h->out, s) : -ENOMEM;
	free(s);
	if (!e)
		e = dbx_sb_putc(&h->out, '\n');
	if (e < 0)
		return h->err = e;
	h->entries++;
	return h->out.len >= ARC_FLUSH ? hashes_flush(h) : 0;
}

static int hashes_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	struct hashes *h = w->ctx;
	int e = hashes_line(h, dirfd, name, st, w->path + h->skip);
	if (e < 0)
		return e;
	return S_ISDIR(st->st_mode) ? WALK_DESCEND : WALK_NEXT;
}

static int hashes_walk_error(struct walk *w, int err)
{
	struct hashes *h = w->ctx;
	return h->err; /* unreadable subtrees are skipped */
}

void fs_hashes_route(struct req *r)
{
	char rel[PATH_MAX];
	struct fs_args args = {query_get, r};
	struct fs_op op = {.ag = req_agent(r), .a = &args};
	struct hashes h = {.r = r};
	struct walk *w = NULL;
	const char *name;
	struct stat st;
	int pfd = -1;
	dbx_sb_init(&h.out, 0);
	if (fs_arg_path(&op, "path", rel) < 0)
		goto reply;
	pfd = fs_parent(op.ag, rel, &name);
	if (pfd < 0) {
		fs_fail(&op, pfd, "hashes %s", rel);
		goto reply;
	}
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fs_fail(&op, errno, "hashes %s", rel);
		goto reply;
	}
	h.buf = malloc(AGENT_CHUNK);
	w = calloc(1, sizeof(*w));
	if (!h.buf || !w) {
		fs_fail(&op, ENOMEM, "hashes %s", rel);
		goto reply;
	}
	h.skip = strcmp(rel, ".") ? strlen(rel) + 1 : 0;
	events_stamp(r);
	req_stream_begin(r, 200, "application/x-ndjson", -1, NULL);
	hashes_line(&h, pfd, name, &st, ".");
	if (!h.err && S_ISDIR(st.st_mode)) {
		int dfd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd >= 0) {
			snprintf(w->path, sizeof(w->path), "%s", rel);
			w->len = strlen(w->path);
			w->visit = hashes_visit;
			w->error = hashes_walk_error;
			w->ctx = &h;
			walk_dir(w, dfd);
		}
	}
	if (!h.err) {
		dbx_sb_printf(&h.out, "{\"end\":true,\"entries\":%llu}\n",
			      (unsigned long long)h.entries);
		hashes_flush(&h);
	}
	req_stream_end(r, h.err);
	goto out;
reply:
	fs_reply_op(r, &op);
out:
	if (pfd >= 0)
		close(pfd);
	free(w);
	free(h.buf);
	dbx_sb_free(&h.out);
}
