/* SPDX-License-Identifier: Apache-2.0 */
/*
 * transfer: `docker cp` between the local machine and a devbox (include/devbox/transfer.h) over
 * the agent's archive routes (agent/PROTOCOL.md §2.4).
 *
 * Upload: the source is walked once (lstat of everything), the agent's hashes of the
 * destination tell which files already match (same type, size, mode, mtime and XXH3: skipped),
 * then the rest goes as one pax tar per PUT.  The agent wants a Content-Length, so the tar's
 * exact size is computed first by a dry run of the same libarchive writer over the planned
 * headers (libarchive pads unwritten data with zeros, so sizes agree byte for byte); the real
 * tar is then generated on the fly from the files, hashing what is sent.  A file that changes
 * size meanwhile aborts the upload (the agent then discards its temp file).  The agent replies
 * with the XXH3 of every file it wrote, compared with ours.  Large trees go in several PUTs of
 * at most CHUNK_ENTRIES members, the directories once more at the end (their times last).
 *
 * Download: the agent's hashes of the source (for skipping and verification) first, then the
 * tar (GET, or POST with the members still needed), streamed from the HTTP sink through a
 * socketpair into an extraction thread (libarchive reads pull-style).  Members are created
 * beneath the destination's parent with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), each
 * file as a temp name renamed into place when complete.
 *
 * Threads: each call runs on the calling thread, plus one extraction thread during a download;
 * progress callbacks come from the calling thread only.
 */
#include "internal.h"
#include "path.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define CHUNK          (256u << 10) /* file read/write unit */
#define CHUNK_ENTRIES  50000        /* members per PUT (the agent takes up to 100000) */
#define WALK_DEPTH_MAX 256
#define HASH_LINE_MAX  (64u << 10) /* one NDJSON line of /fs/v1/hashes */
#define REPLY_MAX      ((size_t)256 << 20)
#define INCLUDE_MAX    (15u << 20) /* POST archive body (the agent's limit is 16 MiB) */
#define PROGRESS_NS    100000000ull

/* ---- small helpers ------------------------------------------------------------------------ */

static char *join(const char *dir, const char *name)
{
	char *s = NULL;
	if (!*name)
		return strdup(dir);
	if (!*dir || !strcmp(dir, "."))
		return strdup(name);
	if (asprintf(&s, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name) < 0)
		return NULL;
	return s;
}

/* "a/b/" → "a/b" (but "/" stays), sets *slash when a trailing slash was there. */
static char *strip_slashes(const char *p, bool *slash)
{
	size_t n = strlen(p);
	*slash = n > 1 && p[n - 1] == '/';
	while (n > 1 && p[n - 1] == '/')
		n--;
	return strndup(p, n);
}

/* Is the path "X/." (copy the contents of X)? Then X is left in *ret. */
static bool contents_form(const char *p, char **ret)
{
	size_t n = strlen(p);
	if ((n >= 2 && !strcmp(p + n - 2, "/.")) || !strcmp(p, ".")) {
		*ret = n > 2 ? strndup(p, n - 2) : strdup(n == 2 ? "/" : ".");
		return true;
	}
	*ret = NULL;
	return false;
}

/* Lexical clean-up of a relative remote path ("a/../b/." → "b"), so its last component is the
 * name the agent gives the archive's first member.  Absolute paths and paths climbing out are
 * left to the agent (which knows the workspace and refuses with a clear error). */
static void norm_remote(char *p)
{
	char out[PATH_MAX];
	if (p && p[0] != '/' && dbx_path_normalize("/", NULL, p, out, sizeof(out)) == 0 &&
	    strlen(out) <= strlen(p))
		memcpy(p, out, strlen(out) + 1);
}

static const char *base_name(const char *p)
{
	const char *s = strrchr(p, '/');
	return s && s[1] ? s + 1 : p;
}

static char *dir_name(const char *p)
{
	const char *s = strrchr(p, '/');
	if (!s)
		return strdup(".");
	if (s == p)
		return strdup("/");
	return strndup(p, (size_t)(s - p));
}

static void hex64(uint64_t h, char out[17])
{
	snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static bool parse_hex64(const char *s, uint64_t *ret)
{
	char *end;
	if (!s || strlen(s) != 16)
		return false;
	errno = 0;
	*ret = strtoull(s, &end, 16);
	return !errno && !*end;
}

static bool same_time(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* XXH3-64 of a local file (not following a final symlink). */
static int hash_path(const char *path, uint64_t *ret)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char *buf = malloc(CHUNK);
	XXH3_state_t *xs = XXH3_createState();
	int r = buf && xs ? 0 : -ENOMEM;
	if (xs)
		XXH3_64bits_reset(xs);
	while (!r) {
		ssize_t n = read(fd, buf, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		if (n <= 0)
			break;
		XXH3_64bits_update(xs, buf, (size_t)n);
	}
	if (!r)
		*ret = XXH3_64bits_digest(xs);
	XXH3_freeState(xs);
	free(buf);
	close(fd);
	return r;
}

/* Lexical check of a member name (as the agent does): relative, no "..". "./a//b/" → "a/b",
 * nothing left → ".". */
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

/* ---- progress ----------------------------------------------------------------------------- */

struct progress {
	const struct dbx_cp_opts *opts;
	uint64_t bytes_total, files_total;
	uint64_t last_ns;
};

static void progress_tick(struct progress *p, uint64_t bytes, uint64_t files, bool final)
{
	if (!p->opts || !p->opts->progress)
		return;
	uint64_t now = dbx_now_ns();
	if (!final && now - p->last_ns < PROGRESS_NS)
		return;
	p->last_ns = now;
	p->opts->progress(p->opts->ud, bytes, p->bytes_total, files, p->files_total);
}

/* ---- remote metadata ---------------------------------------------------------------------- */

/* lstat of a remote path: 0, -ENOENT, or another -errno (message set). */
static int remote_stat(dbx_client *c, const char *path, struct dbx_attr *ret, bool quiet_enoent)
{
	struct dbx__resp resp;
	struct dbx_strbuf q;
	dbx_sb_init(&q, 0);
	dbx__query_add(&q, "path", path);
	struct dbx__req rq = {.method = "GET",
			      .path = "/fs/v1/stat",
			      .query = q.data,
			      .idempotent = true,
			      .op = "stat",
			      .err_path = path};
	int r = dbx__request(c, &rq, &resp);
	if (r == 0) {
		cJSON *j = cJSON_ParseWithLength(resp.body, resp.len);
		r = j ? dbx__attr_from_json(j, ret, NULL) : -EPROTO;
		if (r == -EPROTO && !j)
			dbx__error(EPROTO, "stat %s: the agent sent a reply that is not JSON",
				   path);
		cJSON_Delete(j);
	} else if (r == -ENOENT && quiet_enoent) {
		dbx_error_clear();
	}
	dbx__resp_free(&resp);
	dbx_sb_free(&q);
	return r;
}

/* One entry of GET /fs/v1/hashes. */
struct rent {
	char *path; /* relative to the listed path, "." for itself */
	uint32_t mode;
	uint64_t size;
	struct timespec mtime;
	uint64_t xxh;
	bool has_xxh;
	bool send; /* download: still to be copied */
};

struct rlist {
	struct rent *v;
	size_t n, cap;
	struct dbx_strbuf line;
	bool done;
	int err;
};

static void rlist_free(struct rlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].path);
	free(l->v);
	dbx_sb_free(&l->line);
	memset(l, 0, sizeof(*l));
}

static int rent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct rent *)a)->path, ((const struct rent *)b)->path);
}

static struct rent *rlist_find(const struct rlist *l, const char *path)
{
	struct rent key = {.path = (char *)path};
	return l->n ? bsearch(&key, l->v, l->n, sizeof(key), rent_cmp) : NULL;
}

static int rlist_line(struct rlist *l, const char *s, size_t len)
{
	cJSON *j = cJSON_ParseWithLength(s, len);
	if (!j)
		return dbx__error(EPROTO, "cp: hashes: a line that is not JSON");
	int r = 0;
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "end"))) {
		l->done = true;
		goto out;
	}
	const char *path = dbx__json_str(j, "path");
	uint64_t mode = 0, size = 0;
	struct timespec mt = {0, 0};
	if (!path || !dbx__json_u64(j, "mode", &mode) || !dbx__json_u64(j, "size", &size) ||
	    !dbx__json_timespec(cJSON_GetObjectItemCaseSensitive(j, "mtime"), &mt)) {
		r = dbx__error(EPROTO, "cp: hashes: a line without path, mode, size or mtime");
		goto out;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct rent *v = realloc(l->v, cap * sizeof(*v));
		if (!v) {
			r = dbx__error(ENOMEM, "cp: out of memory");
			goto out;
		}
		l->v = v;
		l->cap = cap;
	}
	struct rent *e = &l->v[l->n];
	memset(e, 0, sizeof(*e));
	e->path = strdup(path);
	if (!e->path) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	e->mode = (uint32_t)mode;
	e->size = size;
	e->mtime = mt;
	e->has_xxh = parse_hex64(dbx__json_str(j, "xxh3"), &e->xxh);
	e->send = true;
	l->n++;
out:
	cJSON_Delete(j);
	return r;
}

static int rlist_sink(void *ud, const void *buf, size_t len)
{
	struct rlist *l = ud;
	const char *p = buf;
	while (len) {
		const char *nl = memchr(p, '\n', len);
		size_t n = nl ? (size_t)(nl - p) : len;
		if (dbx_sb_append(&l->line, p, n) < 0)
			return dbx__error(EPROTO, "cp: hashes: a line longer than %u bytes",
					  HASH_LINE_MAX);
		if (!nl)
			break;
		int r = rlist_line(l, l->line.data, l->line.len);
		dbx_sb_reset(&l->line);
		if (r < 0)
			return r;
		p += n + 1;
		len -= n + 1;
	}
	return 0;
}

/* GET /fs/v1/hashes of @path into @l (sorted by path). */
static int remote_hashes(dbx_client *c, const char *path, const char *err_path, struct rlist *l)
{
	struct dbx__resp resp;
	struct dbx_strbuf q;
	memset(l, 0, sizeof(*l));
	dbx_sb_init(&l->line, HASH_LINE_MAX);
	dbx_sb_init(&q, 0);
	dbx__query_add(&q, "path", path);
	struct dbx__req rq = {.method = "GET",
			      .path = "/fs/v1/hashes",
			      .query = q.data,
			      .sink = rlist_sink,
			      .sink_ud = l,
			      .idempotent = true,
			      .stream = true,
			      .op = "cp",
			      .err_path = err_path};
	int r = dbx__request(c, &rq, &resp);
	dbx__resp_free(&resp);
	dbx_sb_free(&q);
	if (r == 0 && !l->done)
		r = dbx__error(EPROTO, "cp %s: the list of hashes ended early", err_path);
	if (r == 0)
		qsort(l->v, l->n, sizeof(*l->v), rent_cmp);
	else
		rlist_free(l);
	return r;
}

/* ---- local walk (upload source) ----------------------------------------------------------- */

struct ent {
	char *rel;    /* relative to the source, "" for the source itself */
	char *target; /* symlink target */
	struct stat st;
	uint64_t xxh;
	bool send;
};

struct ents {
	struct ent *v;
	size_t n, cap;
};

static void ents_free(struct ents *E)
{
	for (size_t i = 0; i < E->n; i++) {
		free(E->v[i].rel);
		free(E->v[i].target);
	}
	free(E->v);
	memset(E, 0, sizeof(*E));
}

static int ents_add(struct ents *E, const char *rel, const struct stat *st, int dfd,
		    const char *name)
{
	if (E->n == E->cap) {
		size_t cap = E->cap ? E->cap * 2 : 256;
		struct ent *v = realloc(E->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		E->v = v;
		E->cap = cap;
	}
	struct ent *e = &E->v[E->n];
	memset(e, 0, sizeof(*e));
	e->st = *st;
	e->send = true;
	e->rel = strdup(rel);
	if (!e->rel)
		return -ENOMEM;
	if (S_ISLNK(st->st_mode)) {
		char t[PATH_MAX];
		ssize_t n = readlinkat(dfd, name, t, sizeof(t) - 1);
		if (n < 0) {
			free(e->rel);
			return -errno;
		}
		t[n] = '\0';
		e->target = strdup(t);
		if (!e->target) {
			free(e->rel);
			return -ENOMEM;
		}
	}
	E->n++;
	return 0;
}

/* Pre-order walk of the directory @dfd (consumed) whose relative path is @rel. */
static int walk_local(struct ents *E, int dfd, char *rel, size_t len, int depth, const char *root)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		int e = errno;
		close(dfd);
		return dbx__error(e, "cp: open %s/%s: %s", root, rel, strerror(e));
	}
	int r = 0;
	struct dirent *de;
	while ((errno = 0, de = readdir(d))) {
		const char *nm = de->d_name;
		if (nm[0] == '.' && (!nm[1] || (nm[1] == '.' && !nm[2])))
			continue;
		size_t nl = strlen(nm);
		size_t at = len ? len + 1 : 0;
		if (at + nl + 1 > PATH_MAX) {
			r = dbx__error(ENAMETOOLONG, "cp: %s/%s/%s: path too long", root, rel, nm);
			break;
		}
		if (len)
			rel[len] = '/';
		memcpy(rel + at, nm, nl + 1);
		struct stat st;
		if (fstatat(dirfd(d), nm, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			rel[len] = '\0';
			continue; /* vanished */
		}
		if (S_ISSOCK(st.st_mode)) {
			rel[len] = '\0';
			continue; /* tar cannot carry sockets */
		}
		r = ents_add(E, rel, &st, dirfd(d), nm);
		if (r < 0) {
			r = dbx__error(-r, "cp: %s/%s: %s", root, rel, strerror(-r));
			break;
		}
		if (S_ISDIR(st.st_mode)) {
			if (depth >= WALK_DEPTH_MAX) {
				r = dbx__error(ELOOP, "cp: %s/%s: directories nested too deeply",
					       root, rel);
				break;
			}
			int cfd = openat(dirfd(d), nm,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0) {
				r = dbx__error(errno, "cp: open %s/%s: %s", root, rel,
					       strerror(errno));
				break;
			}
			r = walk_local(E, cfd, rel, at + nl, depth + 1, root);
			if (r < 0)
				break;
		}
		rel[len] = '\0';
	}
	if (!de && errno && r == 0)
		r = dbx__error(errno, "cp: read %s/%s: %s", root, rel, strerror(errno));
	rel[len] = '\0';
	closedir(d);
	return r;
}

static int plan_local(const char *src, const struct stat *st, struct ents *E)
{
	memset(E, 0, sizeof(*E));
	int r = ents_add(E, "", st, AT_FDCWD, src);
	if (r < 0)
		return dbx__error(-r, "cp: %s: %s", src, strerror(-r));
	if (!S_ISDIR(st->st_mode))
		return 0;
	int dfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return dbx__error(errno, "cp: open %s: %s", src, strerror(errno));
	char *rel = malloc(PATH_MAX);
	if (!rel) {
		close(dfd);
		return dbx__error(ENOMEM, "cp: out of memory");
	}
	rel[0] = '\0';
	r = walk_local(E, dfd, rel, 0, 0, src);
	free(rel);
	return r;
}

/* ---- upload: the tar generator ----------------------------------------------------------- */

struct gen {
	struct archive *a;
	bool dry;              /* count bytes only: no file is opened */
	uint64_t count;        /* bytes produced */
	struct dbx_strbuf out; /* produced, not yet handed out */
	size_t out_off;
	struct ents *E;
	size_t i, end;   /* members [i, end) */
	bool dirs_only;  /* the final directory pass of a chunked upload */
	bool contents;   /* members named by rel only (the source itself not sent) */
	const char *top; /* member name of the source itself */
	const char *src; /* local path of the source */
	struct ent *cur; /* regular file whose data is being sent */
	int fd;
	uint64_t left;
	XXH3_state_t *xs;
	char *buf;
	bool closed, done;
	struct progress *prog;
	uint64_t *bytes_done, *files_done;
};

static la_ssize_t gen_write_cb(struct archive *a, void *ctx, const void *buf, size_t len)
{
	struct gen *g = ctx;
	g->count += len;
	if (g->dry)
		return (la_ssize_t)len;
	if (dbx_sb_append(&g->out, buf, len) < 0) {
		archive_set_error(a, ENOMEM, "out of memory");
		return -1;
	}
	return (la_ssize_t)len;
}

static int gen_open(struct gen *g)
{
	g->fd = -1;
	dbx_sb_init(&g->out, 0);
	g->a = archive_write_new();
	g->xs = XXH3_createState();
	g->buf = g->dry ? NULL : malloc(CHUNK);
	if (!g->a || !g->xs || (!g->dry && !g->buf) ||
	    archive_write_set_format_pax(g->a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(g->a, 0) != ARCHIVE_OK ||
	    archive_write_open(g->a, g, NULL, gen_write_cb, NULL) != ARCHIVE_OK)
		return dbx__error(ENOMEM, "cp: cannot set up the archive writer");
	return 0;
}

static void gen_close(struct gen *g)
{
	if (g->a)
		archive_write_free(g->a);
	g->a = NULL;
	if (g->fd >= 0)
		close(g->fd);
	g->fd = -1;
	XXH3_freeState(g->xs);
	g->xs = NULL;
	free(g->buf);
	g->buf = NULL;
	dbx_sb_free(&g->out);
}

static void member_of(const struct gen *g, const struct ent *e, char out[PATH_MAX])
{
	if (g->contents)
		snprintf(out, PATH_MAX, "%s", *e->rel ? e->rel : ".");
	else if (!*e->rel)
		snprintf(out, PATH_MAX, "%s", g->top);
	else
		snprintf(out, PATH_MAX, "%s/%s", g->top, e->rel);
}

static int gen_fail(struct gen *g, const char *what)
{
	return dbx__error(archive_errno(g->a) > 0 ? archive_errno(g->a) : EIO, "cp: %s: %s", what,
			  archive_error_string(g->a));
}

/* Produces the next piece of the tar into g->out (or, dry, just counts it). */
static int gen_step(struct gen *g)
{
	char path[PATH_MAX * 2 + 2];
	if (g->cur) {
		struct ent *e = g->cur;
		snprintf(path, sizeof(path), "%s%s%s", g->src, *e->rel ? "/" : "", e->rel);
		if (g->left) {
			size_t want = g->left < CHUNK ? (size_t)g->left : CHUNK;
			ssize_t n = read(g->fd, g->buf, want);
			if (n < 0 && errno == EINTR)
				return 0;
			if (n < 0)
				return dbx__error(errno, "cp: read %s: %s", path, strerror(errno));
			if (n == 0)
				return dbx__error(EIO, "cp: %s: the file shrank while being copied",
						  path);
			XXH3_64bits_update(g->xs, g->buf, (size_t)n);
			if (archive_write_data(g->a, g->buf, (size_t)n) < 0)
				return gen_fail(g, path);
			g->left -= (uint64_t)n;
			*g->bytes_done += (uint64_t)n;
			progress_tick(g->prog, *g->bytes_done, *g->files_done, false);
			return 0;
		}
		struct stat st;
		if (fstat(g->fd, &st) < 0 || st.st_size != e->st.st_size)
			return dbx__error(EIO, "cp: %s: the file changed while being copied", path);
		close(g->fd);
		g->fd = -1;
		e->xxh = XXH3_64bits_digest(g->xs);
		g->cur = NULL;
		(*g->files_done)++;
		return 0;
	}
	for (; g->i < g->end; g->i++) {
		struct ent *e = &g->E->v[g->i];
		if (!e->send || (g->dirs_only && !S_ISDIR(e->st.st_mode)))
			continue;
		char member[PATH_MAX];
		member_of(g, e, member);
		struct archive_entry *ae = archive_entry_new();
		if (!ae)
			return dbx__error(ENOMEM, "cp: out of memory");
		archive_entry_copy_pathname(ae, member);
		archive_entry_set_mode(ae, e->st.st_mode);
		archive_entry_set_uid(ae, e->st.st_uid);
		archive_entry_set_gid(ae, e->st.st_gid);
		archive_entry_set_mtime(ae, e->st.st_mtim.tv_sec, e->st.st_mtim.tv_nsec);
		bool reg = S_ISREG(e->st.st_mode);
		archive_entry_set_size(ae, reg ? e->st.st_size : 0);
		if (e->target)
			archive_entry_copy_symlink(ae, e->target);
		int w = archive_write_header(g->a, ae);
		archive_entry_free(ae);
		snprintf(path, sizeof(path), "%s%s%s", g->src, *e->rel ? "/" : "", e->rel);
		if (w < ARCHIVE_WARN)
			return gen_fail(g, path);
		g->i++;
		if (reg && !g->dry) {
			g->fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			if (g->fd < 0)
				return dbx__error(errno, "cp: open %s: %s", path, strerror(errno));
			g->cur = e;
			g->left = (uint64_t)e->st.st_size;
			XXH3_64bits_reset(g->xs);
		}
		return 0;
	}
	if (!g->closed) {
		g->closed = true;
		if (archive_write_close(g->a) != ARCHIVE_OK)
			return gen_fail(g, "archive");
		return 0;
	}
	g->done = true;
	return 0;
}

static ssize_t gen_source(void *ud, void *buf, size_t len)
{
	struct gen *g = ud;
	while (g->out_off == g->out.len) {
		dbx_sb_reset(&g->out);
		g->out_off = 0;
		if (g->done)
			return 0;
		int r = gen_step(g);
		if (r < 0)
			return r;
	}
	size_t n = g->out.len - g->out_off;
	if (n > len)
		n = len;
	memcpy(buf, g->out.data + g->out_off, n);
	g->out_off += n;
	return (ssize_t)n;
}

/* ---- upload: PUT and verification ---------------------------------------------------------- */

struct up {
	dbx_client *c;
	const struct dbx_cp_opts *opts;
	struct dbx_cp_stats *st;
	const char *remote_dir; /* where the members are extracted */
	const char *err_path;   /* "BOX:path" in messages */
	struct progress prog;
	uint64_t bytes_done, files_done;
};

static int put_archive(struct up *u, dbx_source_fn src, void *ud, uint64_t size, cJSON **ret)
{
	struct dbx__resp resp;
	struct dbx_strbuf q;
	*ret = NULL;
	dbx_sb_init(&q, 0);
	dbx__query_add(&q, "path", u->remote_dir);
	if (u->opts && u->opts->keep_owner)
		dbx__query_add(&q, "owner", "1");
	struct dbx__req rq = {.method = "PUT",
			      .path = "/fs/v1/archive",
			      .query = q.data,
			      .content_type = "application/x-tar",
			      .src = src,
			      .src_ud = ud,
			      .src_len = size,
			      .stream = true,
			      .max_body = REPLY_MAX,
			      .op = "cp",
			      .err_path = u->err_path};
	int r = dbx__request(u->c, &rq, &resp);
	cJSON *j = resp.body ? cJSON_ParseWithLength(resp.body, resp.len) : NULL;
	if (r < 0 && resp.status >= 400) {
		/* The agent's message names the member ("archive a/b: No space left on device");
		 * the generic decoding keeps only the reason. */
		const char *m = dbx__json_str(j, "message");
		if (m)
			r = dbx__error(-r, "cp %s: %s", u->err_path, m);
	} else if (r == 0 && !j) {
		r = dbx__error(EPROTO, "cp %s: the agent sent a reply that is not JSON",
			       u->err_path);
	}
	if (r == 0)
		*ret = j;
	else
		cJSON_Delete(j);
	dbx__resp_free(&resp);
	dbx_sb_free(&q);
	return r;
}

static void add_reply_counts(struct dbx_cp_stats *st, const cJSON *j, bool dirs_only)
{
	uint64_t v;
	if (dirs_only)
		return;
	if (dbx__json_u64(j, "files", &v))
		st->files += v;
	if (dbx__json_u64(j, "dirs", &v))
		st->dirs += v;
	if (dbx__json_u64(j, "symlinks", &v))
		st->symlinks += v;
	if (dbx__json_u64(j, "others", &v))
		st->others += v;
	if (dbx__json_u64(j, "bytes", &v))
		st->bytes += v;
}

/* The agent's hashes, in tar order, against what was sent. */
static int verify_reply(struct up *u, const cJSON *j, struct gen *g, size_t from, size_t to)
{
	const cJSON *hs = cJSON_GetObjectItemCaseSensitive(j, "hashes");
	const cJSON *h = hs ? hs->child : NULL;
	for (size_t i = from; i < to; i++) {
		struct ent *e = &g->E->v[i];
		if (!e->send || !S_ISREG(e->st.st_mode) || (g->contents && !*e->rel))
			continue;
		char member[PATH_MAX], want[17];
		member_of(g, e, member);
		uint64_t got;
		const char *p = h ? dbx__json_str(h, "path") : NULL;
		if (!p || strcmp(p, member) || !parse_hex64(dbx__json_str(h, "xxh3"), &got))
			return dbx__error(EPROTO, "cp %s: the agent did not confirm %s",
					  u->err_path, member);
		if (got != e->xxh) {
			hex64(e->xxh, want);
			return dbx__error(EIO, "cp %s: %s arrived with XXH3 %s, sent %s",
					  u->err_path, member, dbx__json_str(h, "xxh3"), want);
		}
		if (!u->opts || !u->opts->no_verify)
			u->st->verified++;
		h = h->next;
	}
	return 0;
}

/* Sends members [from, to) (or, dirs_only, the directories among all) as one PUT. */
static int send_chunk(struct up *u, struct ents *E, size_t from, size_t to, bool dirs_only,
		      bool contents, const char *top, const char *src)
{
	struct gen dry = {.dry = true,
			  .fd = -1,
			  .E = E,
			  .i = from,
			  .end = to,
			  .dirs_only = dirs_only,
			  .contents = contents,
			  .top = top,
			  .src = src,
			  .prog = &u->prog,
			  .bytes_done = &u->bytes_done,
			  .files_done = &u->files_done};
	struct gen g = dry;
	g.dry = false;
	cJSON *j = NULL;
	int r = gen_open(&dry);
	while (r == 0 && !dry.done)
		r = gen_step(&dry);
	if (r == 0)
		r = gen_open(&g);
	if (r == 0)
		r = put_archive(u, gen_source, &g, dry.count, &j);
	if (r == 0 && g.count != dry.count)
		r = dbx__error(EIO, "cp %s: the archive came out at %llu bytes, %llu announced",
			       u->err_path, (unsigned long long)g.count,
			       (unsigned long long)dry.count);
	if (r == 0) {
		add_reply_counts(u->st, j, dirs_only);
		if (!dirs_only && (!u->opts || !u->opts->no_verify))
			r = verify_reply(u, j, &g, from, to);
	}
	cJSON_Delete(j);
	gen_close(&dry);
	gen_close(&g);
	return r;
}

/* Marks the files that already match at the destination (remote path @dst). */
static int mark_skips(struct up *u, struct ents *E, const char *src, const char *dst, bool contents)
{
	struct rlist l;
	int r = remote_hashes(u->c, dst, u->err_path, &l);
	if (r == -ENOENT) {
		dbx_error_clear();
		return 0;
	}
	if (r < 0)
		return r;
	for (size_t i = 0; i < E->n && r == 0; i++) {
		struct ent *e = &E->v[i];
		if (!S_ISREG(e->st.st_mode) || (contents && !*e->rel))
			continue;
		struct rent *re = rlist_find(&l, *e->rel ? e->rel : ".");
		if (!re || !re->has_xxh || !S_ISREG(re->mode) ||
		    re->size != (uint64_t)e->st.st_size ||
		    (re->mode & 07777) != (e->st.st_mode & 07777) ||
		    !same_time(&re->mtime, &e->st.st_mtim))
			continue;
		char *p = *e->rel ? join(src, e->rel) : strdup(src);
		uint64_t h;
		if (!p) {
			r = dbx__error(ENOMEM, "cp: out of memory");
			break;
		}
		int hr = hash_path(p, &h);
		if (hr < 0)
			r = dbx__error(-hr, "cp: read %s: %s", p, strerror(-hr));
		else if (h == re->xxh) {
			e->send = false;
			u->st->skipped++;
		}
		free(p);
	}
	rlist_free(&l);
	return r;
}

int dbx_cp_upload(dbx_client *c, const char *local_src, const char *remote_dst,
		  const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats)
{
	struct dbx_cp_stats stats = {0};
	struct up u = {.c = c, .opts = opts, .st = &stats, .prog = {.opts = opts}};
	struct ents E = {0};
	char *src = NULL, *dst = NULL, *rdir = NULL, *top = NULL, *dest_root = NULL;
	char *err_path = NULL, *real = NULL;
	bool src_slash, dst_slash;
	struct stat st;
	struct dbx_attr da;
	int r;

	bool contents = contents_form(local_src, &src);
	if (!contents)
		src = strip_slashes(local_src, &src_slash);
	dst = strip_slashes(remote_dst, &dst_slash);
	if (!src || !dst || asprintf(&err_path, "%s", remote_dst) < 0) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	u.err_path = err_path;
	if (lstat(src, &st) < 0) {
		r = dbx__error(errno, "stat %s: %s", local_src, strerror(errno));
		goto out;
	}
	if (contents && !S_ISDIR(st.st_mode)) {
		r = dbx__error(ENOTDIR, "cp %s: not a directory", local_src);
		goto out;
	}
	r = remote_stat(c, dst, &da, true);
	/* "..", "." or "/" have no name of their own: the directory's real one is used. */
	const char *bn = base_name(src);
	if (!strcmp(bn, ".") || !strcmp(bn, "..") || !strcmp(bn, "/")) {
		real = realpath(src, NULL);
		bn = real && strcmp(real, "/") ? base_name(real) : "root";
	}
	if (r == 0 && S_ISDIR(da.mode)) {
		rdir = strdup(dst);
		top = strdup(contents ? "." : bn);
	} else if (r == 0) {
		if (S_ISDIR(st.st_mode)) {
			r = dbx__error(ENOTDIR, "cp %s: cannot copy a directory onto a file",
				       remote_dst);
			goto out;
		}
		if (dst_slash) {
			r = dbx__error(ENOTDIR, "cp %s: not a directory", remote_dst);
			goto out;
		}
		rdir = dir_name(dst);
		top = strdup(base_name(dst));
	} else if (r == -ENOENT) {
		if (dst_slash) {
			r = dbx__error(ENOENT, "cp %s: no such directory", remote_dst);
			goto out;
		}
		rdir = dir_name(dst);
		r = remote_stat(c, rdir, &da, true);
		if (r == -ENOENT) {
			r = dbx__error(ENOENT, "cp %s: the parent directory does not exist",
				       remote_dst);
			goto out;
		}
		if (r < 0)
			goto out;
		if (!S_ISDIR(da.mode)) {
			r = dbx__error(ENOTDIR, "cp %s: the parent is not a directory", remote_dst);
			goto out;
		}
		top = strdup(base_name(dst));
		contents = false;
	} else {
		goto out;
	}
	if (!rdir || !top) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	u.remote_dir = rdir;
	r = plan_local(src, &st, &E);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < E.n; i++)
		if (S_ISREG(E.v[i].st.st_mode)) {
			u.prog.files_total++;
			u.prog.bytes_total += (uint64_t)E.v[i].st.st_size;
		}
	dest_root = contents ? strdup(rdir) : join(rdir, top);
	if (!dest_root) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	if (!opts || !opts->no_skip) {
		r = mark_skips(&u, &E, src, dest_root, contents);
		if (r < 0)
			goto out;
		for (size_t i = 0; i < E.n; i++)
			if (!E.v[i].send) {
				u.prog.files_total--;
				u.prog.bytes_total -= (uint64_t)E.v[i].st.st_size;
			}
	}
	size_t chunks = 0;
	for (size_t from = 0; from < E.n; chunks++) {
		size_t to = from + CHUNK_ENTRIES < E.n ? from + CHUNK_ENTRIES : E.n;
		r = send_chunk(&u, &E, from, to, false, contents, top, src);
		if (r < 0)
			goto out;
		from = to;
	}
	if (chunks > 1)
		r = send_chunk(&u, &E, 0, E.n, true, contents, top, src);
	progress_tick(&u.prog, u.bytes_done, u.files_done, true);
out:
	if (ret_stats)
		*ret_stats = stats;
	ents_free(&E);
	free(src);
	free(dst);
	free(rdir);
	free(top);
	free(dest_root);
	free(err_path);
	free(real);
	return r;
}

/* ---- download: local extraction ------------------------------------------------------------ */

struct dmeta {
	char *rel;
	mode_t mode;
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
};

struct xt {
	int sock;           /* read end of the socketpair */
	int basefd;         /* O_PATH of the local directory members are created in */
	const char *base;   /* its path, for messages */
	char top[PATH_MAX]; /* the source's member name, to be replaced */
	const char *newtop; /* its local name; "" for the contents form */
	bool dry;           /* parse and hash only (tar to a file descriptor) */
	bool keep_owner;
	bool verify;
	const struct rlist *R; /* expected hashes, or NULL */
	struct dmeta *dirs;
	size_t ndirs, cap;
	char tmp[NAME_MAX + 1];
	int tmp_dfd;
	char *buf;
	struct dbx_cp_stats st;
	atomic_uint_fast64_t bytes_done, files_done;
	int err;
	char msg[1024];
};

static int xt_fail(struct xt *x, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int xt_fail(struct xt *x, int err, const char *fmt, ...)
{
	if (err < 0)
		err = -err;
	if (!x->err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
		va_end(ap);
		x->err = err;
	}
	return -err;
}

static int xt_open_beneath(struct xt *x, const char *dir)
{
	return dbx_path_open(x->basefd, dir, O_PATH | O_DIRECTORY, 0, RESOLVE_NO_SYMLINKS);
}

/* The parent of @m beneath the base (created when missing); *ret_name its last name. */
static int xt_parent(struct xt *x, char *m, const char **ret_name)
{
	char *slash = strrchr(m, '/');
	if (!slash) {
		*ret_name = m;
		return xt_open_beneath(x, ".");
	}
	*slash = '\0';
	*ret_name = slash + 1;
	int fd = xt_open_beneath(x, m);
	for (char *p = m; fd == -ENOENT; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;
		*p = '\0';
		char *ps = strrchr(m, '/');
		const char *name = m;
		int pfd;
		if (ps) {
			*ps = '\0';
			pfd = xt_open_beneath(x, m);
			*ps = '/';
			name = ps + 1;
		} else {
			pfd = xt_open_beneath(x, ".");
		}
		int e = pfd < 0 ? pfd
				: (mkdirat(pfd, name, 0755) < 0 && errno != EEXIST ? -errno : 0);
		if (pfd >= 0)
			close(pfd);
		*p = saved;
		if (e < 0) {
			fd = e;
			break;
		}
		if (!saved) {
			fd = xt_open_beneath(x, m);
			break;
		}
	}
	*slash = '/';
	return fd;
}

static void xt_tmp_remove(struct xt *x)
{
	if (x->tmp[0] && x->tmp_dfd >= 0)
		unlinkat(x->tmp_dfd, x->tmp, 0);
	x->tmp[0] = '\0';
	x->tmp_dfd = -1;
}

static int xt_tmp_name(struct xt *x, int pfd, const char *name)
{
	size_t nl = strlen(name);
	char id[7];
	if (nl > NAME_MAX - 12)
		nl = NAME_MAX - 12;
	dbx_random_id(id, 6);
	snprintf(x->tmp, sizeof(x->tmp), ".%.*s.dbx-%s", (int)nl, name, id);
	x->tmp_dfd = pfd;
	return 0;
}

static int xt_commit(struct xt *x, int pfd, const char *name)
{
	if (renameat(pfd, x->tmp, pfd, name) < 0) {
		int e = errno;
		return e == ENOTEMPTY || e == EEXIST ? -EISDIR : -e;
	}
	x->tmp[0] = '\0';
	x->tmp_dfd = -1;
	return 0;
}

static void xt_times(struct archive_entry *e, struct timespec ts[2])
{
	ts[0].tv_sec = 0;
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1].tv_sec = archive_entry_mtime(e);
	ts[1].tv_nsec = archive_entry_mtime_nsec(e);
	if (!archive_entry_mtime_is_set(e))
		ts[1].tv_nsec = UTIME_NOW;
}

/* Reads the member's data, writing it to fd (-1: hash only). */
static int xt_data(struct xt *x, struct archive *a, int fd, const char *lpath, uint64_t *ret_h,
		   uint64_t *ret_n)
{
	XXH3_state_t *xs = XXH3_createState();
	if (!xs)
		return xt_fail(x, ENOMEM, "cp: out of memory");
	XXH3_64bits_reset(xs);
	uint64_t total = 0;
	int r = 0;
	for (;;) {
		la_ssize_t n = archive_read_data(a, x->buf, CHUNK);
		if (n < 0) {
			r = xt_fail(x, archive_errno(a) > 0 ? archive_errno(a) : EIO, "cp: %s: %s",
				    lpath, archive_error_string(a));
			break;
		}
		if (n == 0)
			break;
		XXH3_64bits_update(xs, x->buf, (size_t)n);
		for (la_ssize_t done = 0; fd >= 0 && done < n;) {
			ssize_t w = write(fd, x->buf + done, (size_t)(n - done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				r = xt_fail(x, errno, "cp: write %s: %s", lpath, strerror(errno));
				break;
			}
			done += w;
		}
		if (r < 0)
			break;
		total += (uint64_t)n;
		atomic_fetch_add(&x->bytes_done, (uint64_t)n);
	}
	*ret_h = XXH3_64bits_digest(xs);
	*ret_n = total;
	XXH3_freeState(xs);
	return r;
}

/* The source-relative path ("." for the source itself) of a cleaned member, or NULL when the
 * member is not beneath the source's own name. */
static const char *xt_rest(struct xt *x, const char *m)
{
	if (!strcmp(x->top, "."))
		return m;
	size_t tl = strlen(x->top);
	if (strncmp(m, x->top, tl))
		return NULL;
	if (!m[tl])
		return ".";
	return m[tl] == '/' ? m + tl + 1 : NULL;
}

static int xt_verify(struct xt *x, const char *rest, const char *lpath, uint64_t h)
{
	if (!x->verify || !x->R)
		return 0;
	struct rent *re = rlist_find(x->R, rest);
	if (!re || !re->has_xxh)
		return 0; /* appeared after the hashes were taken */
	if (re->xxh != h) {
		char a[17], b[17];
		hex64(h, a);
		hex64(re->xxh, b);
		return xt_fail(x, EIO,
			       "cp: %s: arrived with XXH3 %s, the devbox has %s (changed during "
			       "the copy?)",
			       lpath, a, b);
	}
	x->st.verified++;
	return 0;
}

static int xt_entry(struct xt *x, struct archive *a, struct archive_entry *e)
{
	char m[PATH_MAX], lrel[PATH_MAX * 2], lpath[PATH_MAX * 3];
	const char *raw = archive_entry_pathname(e);
	int r = raw ? member_clean(raw, m) : -EINVAL;
	if (r < 0)
		return xt_fail(x, r == -EXDEV ? EPROTO : -r,
			       "cp: the devbox sent a bad member %.256s", raw ? raw : "(none)");
	const char *rest = xt_rest(x, m);
	if (!rest)
		return xt_fail(x, EPROTO, "cp: the devbox sent an unexpected member %.256s", m);
	mode_t type = archive_entry_filetype(e);
	if (x->dry) {
		if (type == AE_IFREG && !archive_entry_hardlink(e)) {
			uint64_t h, n;
			r = xt_data(x, a, -1, m, &h, &n);
			if (r == 0)
				r = xt_verify(x, rest, m, h);
			x->st.files++;
			x->st.bytes += n;
			atomic_fetch_add(&x->files_done, 1);
		} else if (type == AE_IFDIR) {
			x->st.dirs++;
		} else if (type == AE_IFLNK) {
			x->st.symlinks++;
		} else {
			x->st.others++;
		}
		return r;
	}
	/* The local name: the source's own name replaced by newtop. */
	if (!strcmp(rest, "."))
		snprintf(lrel, sizeof(lrel), "%s", *x->newtop ? x->newtop : ".");
	else if (*x->newtop)
		snprintf(lrel, sizeof(lrel), "%s/%s", x->newtop, rest);
	else
		snprintf(lrel, sizeof(lrel), "%s", rest);
	if (strlen(lrel) >= PATH_MAX)
		return xt_fail(x, ENAMETOOLONG, "cp: %s: name too long", lrel);
	snprintf(lpath, sizeof(lpath), "%s/%s", x->base, lrel);
	if (!strcmp(lrel, ".") && type != AE_IFDIR)
		return xt_fail(x, EPROTO, "cp: the devbox sent a bad member %.256s", m);
	const char *name;
	int pfd = xt_parent(x, lrel, &name);
	if (pfd < 0)
		return xt_fail(x, pfd, "cp: %s: %s", lpath,
			       pfd == -ELOOP ? "refusing to write through a symbolic link"
					     : strerror(-pfd));
	struct timespec ts[2];
	xt_times(e, ts);
	uid_t uid = archive_entry_uid(e);
	gid_t gid = archive_entry_gid(e);
	mode_t perm = archive_entry_perm(e) & 07777;
	if (type == AE_IFDIR) {
		/* "." (the contents form) is the destination itself: only its metadata. */
		if (strcmp(lrel, ".") && mkdirat(pfd, name, 0700) < 0) {
			struct stat sb;
			if (errno != EEXIST)
				r = xt_fail(x, errno, "cp: mkdir %s: %s", lpath, strerror(errno));
			else if (fstatat(pfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
				 !S_ISDIR(sb.st_mode))
				r = xt_fail(x, ENOTDIR, "cp: %s: exists and is not a directory",
					    lpath);
		}
		if (r == 0 && x->ndirs == x->cap) {
			size_t cap = x->cap ? x->cap * 2 : 64;
			struct dmeta *d = realloc(x->dirs, cap * sizeof(*d));
			if (!d)
				r = xt_fail(x, ENOMEM, "cp: out of memory");
			else {
				x->dirs = d;
				x->cap = cap;
			}
		}
		if (r == 0) {
			struct dmeta *d = &x->dirs[x->ndirs];
			d->rel = strdup(lrel);
			if (!d->rel) {
				r = xt_fail(x, ENOMEM, "cp: out of memory");
			} else {
				d->mode = perm;
				d->mtime = ts[1];
				d->uid = uid;
				d->gid = gid;
				x->ndirs++;
				x->st.dirs++;
			}
		}
	} else if (type == AE_IFLNK) {
		const char *t = archive_entry_symlink(e);
		xt_tmp_name(x, pfd, name);
		if (!t || symlinkat(t, pfd, x->tmp) < 0) {
			x->tmp[0] = '\0';
			r = xt_fail(x, t ? errno : EPROTO, "cp: symlink %s: %s", lpath,
				    t ? strerror(errno) : "no target");
		} else {
			if (x->keep_owner)
				fchownat(pfd, x->tmp, uid, gid, AT_SYMLINK_NOFOLLOW);
			utimensat(pfd, x->tmp, ts, AT_SYMLINK_NOFOLLOW);
			int c = xt_commit(x, pfd, name);
			if (c < 0)
				r = xt_fail(x, c, "cp: %s: %s", lpath, strerror(-c));
			else
				x->st.symlinks++;
		}
	} else if (type == AE_IFREG && !archive_entry_hardlink(e)) {
		int fd = -1;
		for (int tries = 0; tries < 100 && fd < 0; tries++) {
			xt_tmp_name(x, pfd, name);
			fd = openat(pfd, x->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd < 0 && errno != EEXIST)
				break;
		}
		if (fd < 0) {
			x->tmp[0] = '\0';
			r = xt_fail(x, errno, "cp: create %s: %s", lpath, strerror(errno));
		} else {
			uint64_t h, n;
			r = xt_data(x, a, fd, lpath, &h, &n);
			if (r == 0 && x->keep_owner && fchown(fd, uid, gid) < 0)
				r = xt_fail(x, errno, "cp: chown %s: %s", lpath, strerror(errno));
			if (r == 0 && (fchmod(fd, perm) < 0 || futimens(fd, ts) < 0))
				r = xt_fail(x, errno, "cp: %s: %s", lpath, strerror(errno));
			if (close(fd) < 0 && r == 0)
				r = xt_fail(x, errno, "cp: write %s: %s", lpath, strerror(errno));
			if (r == 0)
				r = xt_verify(x, rest, lpath, h);
			if (r == 0) {
				int c = xt_commit(x, pfd, name);
				if (c < 0)
					r = xt_fail(x, c, "cp: %s: %s", lpath, strerror(-c));
			}
			if (r == 0) {
				x->st.files++;
				x->st.bytes += n;
				atomic_fetch_add(&x->files_done, 1);
			}
		}
	} else if (archive_entry_hardlink(e)) {
		char lm[PATH_MAX], lt[PATH_MAX * 2];
		const char *lrest =
			member_clean(archive_entry_hardlink(e), lm) == 0 ? xt_rest(x, lm) : NULL;
		if (!lrest)
			r = xt_fail(x, EPROTO, "cp: %s: a hard link out of the copy", lpath);
		else {
			if (!strcmp(lrest, "."))
				snprintf(lt, sizeof(lt), "%s", *x->newtop ? x->newtop : ".");
			else
				snprintf(lt, sizeof(lt), "%s%s%s", x->newtop, *x->newtop ? "/" : "",
					 lrest);
			const char *ln;
			int lfd = strlen(lt) < PATH_MAX ? xt_parent(x, lt, &ln) : -ENAMETOOLONG;
			xt_tmp_name(x, pfd, name);
			if (lfd < 0 || linkat(lfd, ln, pfd, x->tmp, 0) < 0) {
				x->tmp[0] = '\0';
				r = xt_fail(x, lfd < 0 ? -lfd : errno, "cp: link %s: %s", lpath,
					    strerror(lfd < 0 ? -lfd : errno));
			} else {
				int c = xt_commit(x, pfd, name);
				if (c < 0)
					r = xt_fail(x, c, "cp: %s: %s", lpath, strerror(-c));
				else
					x->st.others++;
			}
			if (lfd >= 0)
				close(lfd);
		}
	} else if (type == AE_IFIFO) {
		xt_tmp_name(x, pfd, name);
		if (mknodat(pfd, x->tmp, S_IFIFO | perm, 0) < 0) {
			x->tmp[0] = '\0';
			r = xt_fail(x, errno, "cp: mkfifo %s: %s", lpath, strerror(errno));
		} else {
			utimensat(pfd, x->tmp, ts, AT_SYMLINK_NOFOLLOW);
			int c = xt_commit(x, pfd, name);
			if (c < 0)
				r = xt_fail(x, c, "cp: %s: %s", lpath, strerror(-c));
			else
				x->st.others++;
		}
	}
	if (r < 0)
		xt_tmp_remove(x);
	x->tmp_dfd = -1;
	close(pfd);
	return r;
}

static void xt_dirs_apply(struct xt *x)
{
	for (size_t i = x->ndirs; i-- > 0;) {
		struct dmeta *d = &x->dirs[i];
		const char *name;
		int pfd = xt_parent(x, d->rel, &name);
		if (pfd < 0)
			continue;
		struct timespec ts[2] = {{0, UTIME_OMIT}, d->mtime};
		if (x->keep_owner)
			fchownat(pfd, name, d->uid, d->gid, AT_SYMLINK_NOFOLLOW);
		if (fchmodat(pfd, name, d->mode, AT_SYMLINK_NOFOLLOW) < 0 && x->err == 0)
			xt_fail(x, errno, "cp: chmod %s/%s: %s", x->base, d->rel, strerror(errno));
		utimensat(pfd, name, ts, AT_SYMLINK_NOFOLLOW);
		close(pfd);
	}
}

static void *xt_main(void *arg)
{
	struct xt *x = arg;
	struct archive *a = archive_read_new();
	x->buf = malloc(CHUNK);
	if (!a || !x->buf || archive_read_support_format_tar(a) != ARCHIVE_OK ||
	    archive_read_open_fd(a, x->sock, 64 << 10) != ARCHIVE_OK) {
		xt_fail(x, a && archive_errno(a) > 0 ? archive_errno(a) : ENOMEM,
			"cp: cannot read the archive: %s", a ? archive_error_string(a) : "");
		goto out;
	}
	for (;;) {
		struct archive_entry *e;
		int h = archive_read_next_header(a, &e);
		if (h == ARCHIVE_EOF)
			break;
		if (h < ARCHIVE_WARN) {
			xt_fail(x, archive_errno(a) > 0 ? archive_errno(a) : EPROTO,
				"cp: the archive from the devbox: %s", archive_error_string(a));
			break;
		}
		if (xt_entry(x, a, e) < 0)
			break;
	}
	if (!x->dry)
		xt_dirs_apply(x);
out:
	if (a)
		archive_read_free(a);
	free(x->buf);
	x->buf = NULL;
	/* Whatever happens, the sender must not block on a full socket. */
	shutdown(x->sock, SHUT_RDWR);
	return NULL;
}

/* ---- download: the HTTP side ------------------------------------------------------------- */

struct dl_sink {
	int sock; /* to the extractor, -1: none */
	int fd;   /* raw tar output (download_tar), -1: none */
	bool peer_gone;
	struct xt *x;
	struct progress *prog;
};

static int write_all(int fd, const void *buf, size_t len, bool sock)
{
	const char *p = buf;
	while (len) {
		ssize_t n = sock ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int dl_sink_fn(void *ud, const void *buf, size_t len)
{
	struct dl_sink *s = ud;
	if (s->fd >= 0) {
		int r = write_all(s->fd, buf, len, false);
		if (r < 0)
			return dbx__error(-r, "cp: write the archive: %s", strerror(-r));
	}
	if (s->sock >= 0 && write_all(s->sock, buf, len, true) < 0) {
		s->peer_gone = true;
		return -EPIPE;
	}
	if (s->x)
		progress_tick(s->prog, atomic_load(&s->x->bytes_done),
			      atomic_load(&s->x->files_done), false);
	return 0;
}

/* Runs the archive request, feeding @x (may be NULL) and/or @out_fd. */
static int dl_run(dbx_client *c, const char *src, const char *err_path, const char *include_json,
		  struct xt *x, int out_fd, struct progress *prog)
{
	struct dbx_strbuf q;
	int sv[2] = {-1, -1};
	pthread_t th;
	bool started = false;
	struct dbx__resp resp = {0};
	int r = 0;
	dbx_sb_init(&q, 0);
	dbx__query_add(&q, "path", src);
	struct dl_sink s = {.sock = -1, .fd = out_fd, .x = x, .prog = prog};
	if (x) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			r = dbx__error(errno, "cp: socketpair: %s", strerror(errno));
			goto out;
		}
		x->sock = sv[1];
		s.sock = sv[0];
		if ((r = pthread_create(&th, NULL, xt_main, x)) != 0) {
			r = dbx__error(r, "cp: cannot start a thread: %s", strerror(r));
			goto out;
		}
		started = true;
	}
	struct dbx__req rq = {.method = include_json ? "POST" : "GET",
			      .path = "/fs/v1/archive",
			      .query = q.data,
			      .sink = dl_sink_fn,
			      .sink_ud = &s,
			      .idempotent = true,
			      .stream = true,
			      .op = "cp",
			      .err_path = err_path};
	if (include_json) {
		rq.content_type = "application/json";
		rq.body = include_json;
		rq.body_len = strlen(include_json);
	}
	r = dbx__request(c, &rq, &resp);
	dbx__resp_free(&resp);
	if (s.sock >= 0)
		shutdown(s.sock, SHUT_WR); /* end of the archive for the extractor */
out:
	if (started) {
		pthread_join(th, NULL);
		/* The extractor's error is the cause when it stopped reading first. */
		if (x->err && (r == 0 || s.peer_gone))
			r = dbx__error(x->err, "%s", x->msg);
	}
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	dbx_sb_free(&q);
	return r;
}

/* Marks remote files that already match locally (beneath @ldest, the local counterpart of the
 * source); builds the include list when something was skipped. */
static int dl_plan(struct rlist *R, const char *ldest, const char *top, bool skip,
		   struct dbx_cp_stats *st, char **ret_include)
{
	*ret_include = NULL;
	size_t skipped = 0;
	for (size_t i = 0; skip && i < R->n; i++) {
		struct rent *re = &R->v[i];
		if (!S_ISREG(re->mode) || !re->has_xxh)
			continue;
		char *p = strcmp(re->path, ".") ? join(ldest, re->path) : strdup(ldest);
		struct stat ls;
		uint64_t h;
		if (!p)
			return dbx__error(ENOMEM, "cp: out of memory");
		if (lstat(p, &ls) == 0 && S_ISREG(ls.st_mode) && (uint64_t)ls.st_size == re->size &&
		    (ls.st_mode & 07777) == (re->mode & 07777) &&
		    same_time(&ls.st_mtim, &re->mtime) && hash_path(p, &h) == 0 && h == re->xxh) {
			re->send = false;
			skipped++;
		}
		free(p);
	}
	st->skipped = skipped;
	if (!skipped)
		return 0;
	/* The members still wanted, named as the agent names them. */
	cJSON *j = cJSON_CreateObject();
	cJSON *inc = cJSON_AddArrayToObject(j, "include");
	for (size_t i = 0; i < R->n; i++) {
		struct rent *re = &R->v[i];
		if (!re->send)
			continue;
		char m[PATH_MAX * 2];
		if (!strcmp(re->path, "."))
			snprintf(m, sizeof(m), "%s", top);
		else if (!strcmp(top, "."))
			snprintf(m, sizeof(m), "./%s", re->path);
		else
			snprintf(m, sizeof(m), "%s/%s", top, re->path);
		cJSON_AddItemToArray(inc, cJSON_CreateString(m));
	}
	char *s = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!s)
		return dbx__error(ENOMEM, "cp: out of memory");
	if (strlen(s) > INCLUDE_MAX) {
		/* Too long a list: fetch everything instead. */
		free(s);
		for (size_t i = 0; i < R->n; i++)
			R->v[i].send = true;
		st->skipped = 0;
		return 0;
	}
	*ret_include = s;
	return 0;
}

int dbx_cp_download(dbx_client *c, const char *remote_src, const char *local_dst,
		    const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats)
{
	struct dbx_cp_stats stats = {0};
	struct progress prog = {.opts = opts};
	struct rlist R = {0};
	struct xt *x = NULL;
	char *src = NULL, *dst = NULL, *base = NULL, *newtop = NULL, *ldest = NULL, *inc = NULL;
	bool src_slash, dst_slash;
	struct dbx_attr sa;
	struct stat ds;
	int r;

	bool contents = contents_form(remote_src, &src);
	if (!contents)
		src = strip_slashes(remote_src, &src_slash);
	dst = strip_slashes(local_dst, &dst_slash);
	if (!src || !dst) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	norm_remote(src);
	if (!strcmp(src, ".") || !strcmp(src, "/"))
		contents = true; /* the workspace has no name of its own */
	r = remote_stat(c, src, &sa, false);
	if (r < 0)
		goto out;
	if (contents && !S_ISDIR(sa.mode)) {
		r = dbx__error(ENOTDIR, "cp %s: not a directory", remote_src);
		goto out;
	}
	int sr = stat(dst, &ds) == 0 ? 0 : -errno;
	if (sr == 0 && S_ISDIR(ds.st_mode)) {
		base = strdup(dst);
		newtop = strdup(contents ? "" : base_name(src));
	} else if (sr == 0 || sr == -ENOENT) {
		bool exists = sr == 0;
		if (exists && S_ISDIR(sa.mode)) {
			r = dbx__error(ENOTDIR, "cp %s: cannot copy a directory onto a file",
				       local_dst);
			goto out;
		}
		if (dst_slash) {
			r = dbx__error(exists ? ENOTDIR : ENOENT, "cp %s: %s", local_dst,
				       exists ? "not a directory" : "no such directory");
			goto out;
		}
		base = dir_name(dst);
		struct stat ps;
		if (base && (stat(base, &ps) < 0 || !S_ISDIR(ps.st_mode))) {
			r = dbx__error(ENOENT, "cp %s: the parent directory does not exist",
				       local_dst);
			goto out;
		}
		newtop = strdup(base_name(dst));
		contents = false;
	} else {
		r = dbx__error(-sr, "stat %s: %s", local_dst, strerror(-sr));
		goto out;
	}
	x = calloc(1, sizeof(*x));
	if (!base || !newtop || !x) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	x->basefd = open(base, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (x->basefd < 0) {
		r = dbx__error(errno, "cp: open %s: %s", base, strerror(errno));
		goto out;
	}
	x->tmp_dfd = -1;
	x->base = base;
	x->newtop = newtop;
	x->keep_owner = opts && opts->keep_owner;
	x->verify = !opts || !opts->no_verify;
	bool skip = !opts || !opts->no_skip;
	const char *slash = strrchr(src, '/');
	snprintf(x->top, sizeof(x->top), "%s",
		 (!strcmp(src, ".") || !strcmp(src, "/")) ? "."
		 : slash                                  ? slash + 1
							  : src);
	if (x->verify || skip) {
		r = remote_hashes(c, src, remote_src, &R);
		if (r < 0)
			goto out;
		x->R = &R;
		for (size_t i = 0; i < R.n; i++)
			if (S_ISREG(R.v[i].mode)) {
				prog.files_total++;
				prog.bytes_total += R.v[i].size;
			}
		ldest = *newtop ? join(base, newtop) : strdup(base);
		if (!ldest) {
			r = dbx__error(ENOMEM, "cp: out of memory");
			goto out;
		}
		r = dl_plan(&R, ldest, x->top, skip, &stats, &inc);
		if (r < 0)
			goto out;
		for (size_t i = 0; i < R.n; i++)
			if (S_ISREG(R.v[i].mode) && !R.v[i].send) {
				prog.files_total--;
				prog.bytes_total -= R.v[i].size;
			}
	}
	r = dl_run(c, src, remote_src, inc, x, -1, &prog);
	progress_tick(&prog, atomic_load(&x->bytes_done), atomic_load(&x->files_done), true);
out:
	if (x) {
		uint64_t skipped = stats.skipped;
		stats = x->st;
		stats.skipped = skipped;
		for (size_t i = 0; i < x->ndirs; i++)
			free(x->dirs[i].rel);
		free(x->dirs);
		if (x->basefd > 0)
			close(x->basefd);
		free(x);
	}
	if (ret_stats)
		*ret_stats = stats;
	rlist_free(&R);
	free(src);
	free(dst);
	free(base);
	free(newtop);
	free(ldest);
	free(inc);
	return r;
}

int dbx_cp_download_tar(dbx_client *c, const char *remote_src, int fd,
			const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats)
{
	struct dbx_cp_stats stats = {0};
	struct progress prog = {.opts = opts};
	struct rlist R = {0};
	struct xt *x = NULL;
	bool slash;
	struct dbx_attr sa;
	char *src = strip_slashes(remote_src, &slash);
	int r;
	if (!src) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	norm_remote(src);
	r = remote_stat(c, src, &sa, false);
	if (r < 0)
		goto out;
	/* The tar is checked on the way through: parsed and hashed by the extractor (dry). */
	x = calloc(1, sizeof(*x));
	if (!x) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	x->dry = true;
	x->basefd = -1;
	x->tmp_dfd = -1;
	x->newtop = "";
	x->base = "";
	x->verify = !opts || !opts->no_verify;
	const char *sl = strrchr(src, '/');
	snprintf(x->top, sizeof(x->top), "%s",
		 (!strcmp(src, ".") || !strcmp(src, "/")) ? "."
		 : sl                                     ? sl + 1
							  : src);
	if (x->verify) {
		r = remote_hashes(c, src, remote_src, &R);
		if (r < 0)
			goto out;
		x->R = &R;
		for (size_t i = 0; i < R.n; i++)
			if (S_ISREG(R.v[i].mode)) {
				prog.files_total++;
				prog.bytes_total += R.v[i].size;
			}
	}
	r = dl_run(c, src, remote_src, NULL, x, fd, &prog);
	progress_tick(&prog, atomic_load(&x->bytes_done), atomic_load(&x->files_done), true);
out:
	if (x) {
		stats = x->st;
		free(x);
	}
	if (ret_stats)
		*ret_stats = stats;
	rlist_free(&R);
	free(src);
	return r;
}

/* ---- upload of a tar stream ----------------------------------------------------------------- */

struct spool {
	int fd;
	uint64_t size, off;
};

static la_ssize_t spool_write_cb(struct archive *a, void *ctx, const void *buf, size_t len)
{
	struct spool *s = ctx;
	int r = write_all(s->fd, buf, len, false);
	if (r < 0) {
		archive_set_error(a, -r, "spool: %s", strerror(-r));
		return -1;
	}
	s->size += len;
	return (la_ssize_t)len;
}

static ssize_t spool_source(void *ud, void *buf, size_t len)
{
	struct spool *s = ud;
	ssize_t n = pread(s->fd, buf, len, (off_t)s->off);
	if (n < 0)
		return dbx__error(errno, "cp: read the spooled archive: %s", strerror(errno));
	s->off += (uint64_t)n;
	return n;
}

static int spool_open(void)
{
	const char *dir = getenv("TMPDIR");
	if (!dir || !*dir)
		dir = "/tmp";
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR))
		return fd < 0 ? -errno : fd;
	char *p = NULL;
	if (asprintf(&p, "%s/devbox-cp-XXXXXX", dir) < 0)
		return -ENOMEM;
	fd = mkostemp(p, O_CLOEXEC);
	int e = errno;
	if (fd >= 0)
		unlink(p);
	free(p);
	return fd < 0 ? -e : fd;
}

struct sent {
	char *member;
	uint64_t xxh;
};

int dbx_cp_upload_tar(dbx_client *c, int fd, const char *remote_dir, const struct dbx_cp_opts *opts,
		      struct dbx_cp_stats *ret_stats)
{
	struct dbx_cp_stats stats = {0};
	struct spool sp = {.fd = -1};
	struct archive *in = NULL, *out = NULL;
	struct sent *sent = NULL;
	size_t nsent = 0, capsent = 0;
	char *buf = malloc(CHUNK);
	XXH3_state_t *xs = XXH3_createState();
	cJSON *j = NULL;
	struct dbx_attr da;
	bool slash;
	char *dir = strip_slashes(remote_dir, &slash);
	int r;

	if (!buf || !xs || !dir) {
		r = dbx__error(ENOMEM, "cp: out of memory");
		goto out;
	}
	r = remote_stat(c, dir, &da, false);
	if (r < 0)
		goto out;
	if (!S_ISDIR(da.mode)) {
		r = dbx__error(ENOTDIR,
			       "cp %s: the destination of a tar stream must be a directory",
			       remote_dir);
		goto out;
	}
	sp.fd = spool_open();
	if (sp.fd < 0) {
		r = dbx__error(-sp.fd, "cp: a temporary file for the archive: %s",
			       strerror(-sp.fd));
		goto out;
	}
	/* Re-encode: any tar flavour (compressed too) in, the agent's pax out, hashed. */
	in = archive_read_new();
	out = archive_write_new();
	if (!in || !out || archive_read_support_format_tar(in) != ARCHIVE_OK ||
	    archive_read_support_filter_all(in) != ARCHIVE_OK ||
	    archive_write_set_format_pax(out) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(out, 0) != ARCHIVE_OK ||
	    archive_write_open(out, &sp, NULL, spool_write_cb, NULL) != ARCHIVE_OK) {
		r = dbx__error(ENOMEM, "cp: cannot set up the archive");
		goto out;
	}
	if (archive_read_open_fd(in, fd, 64 << 10) != ARCHIVE_OK) {
		r = dbx__error(EINVAL, "cp: reading the tar stream: %s", archive_error_string(in));
		goto out;
	}
	for (;;) {
		struct archive_entry *e;
		int h = archive_read_next_header(in, &e);
		if (h == ARCHIVE_EOF)
			break;
		if (h < ARCHIVE_WARN) {
			r = dbx__error(archive_errno(in) > 0 ? archive_errno(in) : EINVAL,
				       "cp: reading the tar stream: %s", archive_error_string(in));
			goto out;
		}
		bool reg = archive_entry_filetype(e) == AE_IFREG && !archive_entry_hardlink(e);
		if (archive_write_header(out, e) < ARCHIVE_WARN) {
			r = dbx__error(EIO, "cp: %s: %s", archive_entry_pathname(e),
				       archive_error_string(out));
			goto out;
		}
		if (!reg)
			continue;
		XXH3_64bits_reset(xs);
		for (;;) {
			la_ssize_t n = archive_read_data(in, buf, CHUNK);
			if (n < 0) {
				r = dbx__error(EINVAL, "cp: reading the tar stream: %s",
					       archive_error_string(in));
				goto out;
			}
			if (n == 0)
				break;
			XXH3_64bits_update(xs, buf, (size_t)n);
			if (archive_write_data(out, buf, (size_t)n) < 0) {
				r = dbx__error(archive_errno(out) > 0 ? archive_errno(out) : EIO,
					       "cp: spooling the tar stream: %s",
					       archive_error_string(out));
				goto out;
			}
		}
		char m[PATH_MAX];
		if (nsent == capsent) {
			size_t cap = capsent ? capsent * 2 : 256;
			struct sent *v = realloc(sent, cap * sizeof(*v));
			if (!v) {
				r = dbx__error(ENOMEM, "cp: out of memory");
				goto out;
			}
			sent = v;
			capsent = cap;
		}
		sent[nsent].xxh = XXH3_64bits_digest(xs);
		sent[nsent].member = strdup(member_clean(archive_entry_pathname(e), m) == 0
						    ? m
						    : archive_entry_pathname(e));
		if (!sent[nsent++].member) {
			r = dbx__error(ENOMEM, "cp: out of memory");
			goto out;
		}
	}
	if (archive_write_close(out) != ARCHIVE_OK) {
		r = dbx__error(EIO, "cp: spooling the tar stream: %s", archive_error_string(out));
		goto out;
	}
	struct up u = {
		.c = c, .opts = opts, .st = &stats, .remote_dir = dir, .err_path = remote_dir};
	r = put_archive(&u, spool_source, &sp, sp.size, &j);
	if (r < 0)
		goto out;
	add_reply_counts(&stats, j, false);
	const cJSON *hs = cJSON_GetObjectItemCaseSensitive(j, "hashes");
	const cJSON *h = hs ? hs->child : NULL;
	for (size_t i = 0; i < nsent; i++, h = h ? h->next : NULL) {
		uint64_t got;
		const char *p = h ? dbx__json_str(h, "path") : NULL;
		if (!p || strcmp(p, sent[i].member) ||
		    !parse_hex64(dbx__json_str(h, "xxh3"), &got)) {
			r = dbx__error(EPROTO, "cp %s: the agent did not confirm %s", remote_dir,
				       sent[i].member);
			goto out;
		}
		if (got != sent[i].xxh) {
			r = dbx__error(EIO, "cp %s: %s arrived with a different XXH3", remote_dir,
				       sent[i].member);
			goto out;
		}
		if (!opts || !opts->no_verify)
			stats.verified++;
	}
	if (opts && opts->progress)
		opts->progress(opts->ud, stats.bytes, stats.bytes, stats.files, stats.files);
out:
	if (ret_stats)
		*ret_stats = stats;
	if (in)
		archive_read_free(in);
	if (out)
		archive_write_free(out);
	if (sp.fd >= 0)
		close(sp.fd);
	for (size_t i = 0; i < nsent; i++)
		free(sent[i].member);
	free(sent);
	cJSON_Delete(j);
	XXH3_freeState(xs);
	free(buf);
	free(dir);
	return r;
}
