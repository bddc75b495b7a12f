/* search.c: POST /api/v1/files/search (file names), /find (contents) and /replace
 * (agent-api.md §2.2.10-12).
 *
 * Threads: handlers run on a worker, one file at a time (the official agent reads up to
 * MAX_CONCURRENT_READS files at once; results are unordered either way). Walks go through
 * walk_dir(): symlinks are neither followed nor reported, so a link out of the workspace is
 * never read. Replace follows a named symlink only beneath the workspace root and rewrites the
 * file atomically (struct afile), keeping its mode. Memory: find reads files up to 32 KiB whole
 * and larger ones line by line; replace holds one file (<= MAX_FILE_SIZE) and its result. */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>
#include <wctype.h>

#include "files.h"
#include "misc.h"
#include "path.h"

#define FIND_WHOLE_MAX (32u << 10) /* files up to this size are read whole */
#define SNIFF_LEN      256

static const char *const skip_dirs[] = {
	"node_modules", "target", "dist",     "build", "__pycache__",
	"venv",         "vendor", "coverage", "out",   NULL,
};

/* Directories the official walk never enters: hidden ones, the names above (the hidden names
 * of its list, .git .cache .venv ..., are covered by the dot rule). */
static bool skip_dir(const char *name)
{
	if (name[0] == '.')
		return true;
	for (int i = 0; skip_dirs[i]; i++)
		if (strcmp(name, skip_dirs[i]) == 0)
			return true;
	return false;
}

/* Opens the directory to search. Replies and returns < 0 on failure. */
static int open_search_dir(struct req *r, const char *dir, char rel[PATH_MAX])
{
	struct agent *ag = req_agent(r);
	char trimmed[PATH_MAX];
	size_t n;
	while (*dir == ' ' || *dir == '\t' || *dir == '\n' || *dir == '\r')
		dir++;
	n = strlen(dir);
	while (n && (dir[n - 1] == ' ' || dir[n - 1] == '\t' || dir[n - 1] == '\n' ||
		     dir[n - 1] == '\r'))
		n--;
	if (n >= sizeof(trimmed)) {
		req_reply_err(r, ST_INVALID, "Path too long: %.64s...", dir);
		return -1;
	}
	memcpy(trimmed, dir, n);
	trimmed[n] = '\0';
	if (req_resolve(r, n ? trimmed : ".", rel))
		return -1;
	int fd = dbx_path_open(ag->rootfd, rel, O_RDONLY | O_DIRECTORY, 0, 0);
	if (fd == -ENOENT || fd == -ENOTDIR) {
		char *abs = agent_abs(ag, rel);
		if (fd == -ENOENT)
			req_reply_err(r, ST_NOT_FOUND, "Directory not found: %s", abs ? abs : rel);
		else
			req_reply_err(r, ST_INVALID, "Path is not a directory: %s",
				      abs ? abs : rel);
		free(abs);
	} else if (fd < 0) {
		files_reply_errno(r, fd, "search", rel);
	}
	return fd;
}

static void add_abs(struct agent *ag, cJSON *arr, const char *rel)
{
	char *abs = agent_abs(ag, rel);
	char *c = abs ? dbx_utf8_lossy(abs, strlen(abs), NULL) : NULL;
	if (c)
		cJSON_AddItemToArray(arr, cJSON_CreateString(c));
	free(c);
	free(abs);
}

struct search_ctx {
	struct req *r;
	struct agent *ag;
	cJSON *files;
	const char *keyword; /* find */
	size_t klen;
	wchar_t *pattern; /* search: lower-cased */
	char *line;       /* find: getline buffer */
	size_t linecap;
};

static int walk_skip_error(struct walk *w, int err)
{
	return 0;
}

/* ---- search: case-insensitive substring of the file name ---------------------------------- */

static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;

static void utf8_locale_init(void)
{
	utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

/* Lower-cased wide copy of a UTF-8 name; undecodable bytes map to U+DC80.. (kept distinct). */
static wchar_t *lower_wide(const char *s)
{
	size_t n = strlen(s), o = 0;
	wchar_t *w = malloc((n + 1) * sizeof(*w));
	if (!w)
		return NULL;
	pthread_once(&utf8_once, utf8_locale_init);
	locale_t old = utf8_locale ? uselocale(utf8_locale) : (locale_t)0;
	mbstate_t st;
	memset(&st, 0, sizeof(st));
	while (*s) {
		wchar_t c;
		size_t k = mbrtowc(&c, s, n, &st);
		if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
			memset(&st, 0, sizeof(st));
			unsigned char b = (unsigned char)*s;
			w[o++] = b < 0x80 ? (wchar_t)towlower(b) : (wchar_t)(0xDC00 + b);
			k = 1;
		} else {
			w[o++] = (wchar_t)towlower((wint_t)c);
		}
		s += k;
		n -= k;
	}
	w[o] = 0;
	if (old)
		uselocale(old);
	return w;
}

static int search_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	struct search_ctx *c = w->ctx;
	if (req_gone(c->r))
		return -EPIPE;
	if (S_ISDIR(st->st_mode))
		return skip_dir(name) ? WALK_NEXT : WALK_DESCEND;
	if (!S_ISREG(st->st_mode))
		return WALK_NEXT;
	wchar_t *lw = lower_wide(name);
	if (!lw)
		return -ENOMEM;
	if (wcsstr(lw, c->pattern))
		add_abs(c->ag, c->files, w->path);
	free(lw);
	return WALK_NEXT;
}

/* Runs a walk over the directory in @fd and replies {"files": [...]}. */
static void run_walk(struct req *r, struct search_ctx *c, int fd, const char *rel,
		     int (*visit)(struct walk *, int, const char *, const struct stat *))
{
	struct walk *w = calloc(1, sizeof(*w));
	c->files = cJSON_CreateArray();
	if (!w) {
		close(fd);
		req_reply_errno(r, ENOMEM, "search");
		goto out;
	}
	snprintf(w->path, sizeof(w->path), "%s", rel);
	w->len = strlen(w->path);
	w->visit = visit;
	w->error = walk_skip_error;
	w->ctx = c;
	int e = walk_dir(w, fd);
	if (e < 0) {
		files_reply_errno(r, e, "search", rel);
		goto out;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "files", c->files);
	c->files = NULL;
	req_reply_ok(r, o);
out:
	cJSON_Delete(c->files);
	free(w);
}

void files_search(struct req *r)
{
	cJSON *j = req_json(r);
	const char *dir, *pattern;
	char rel[PATH_MAX];
	struct search_ctx c = {.r = r, .ag = req_agent(r)};
	if (json_get_str(r, j, "dir", true, &dir) || json_get_str(r, j, "pattern", true, &pattern))
		return;
	if (!*pattern) {
		req_reply_err(r, ST_INVALID, "Pattern cannot be empty");
		return;
	}
	int fd = open_search_dir(r, dir, rel);
	if (fd < 0)
		return;
	c.pattern = lower_wide(pattern);
	if (!c.pattern) {
		close(fd);
		req_reply_errno(r, ENOMEM, "search");
		return;
	}
	run_walk(r, &c, fd, rel, search_visit);
	free(c.pattern);
}

/* ---- find: keyword in the contents of text files -------------------------------------------- */

static ssize_t read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Like Rust's BufRead::lines(): each line without "\n" / "\r\n"; a line that is not UTF-8 ends
 * the scan. */
static bool find_in_lines(struct search_ctx *c, int fd)
{
	FILE *f = fdopen(fd, "r");
	bool hit = false;
	if (!f) {
		close(fd);
		return false;
	}
	ssize_t n;
	while (!hit && (n = getline(&c->line, &c->linecap, f)) > 0) {
		size_t l = (size_t)n;
		if (l && c->line[l - 1] == '\n') {
			l--;
			if (l && c->line[l - 1] == '\r')
				l--;
		}
		if (!dbx_utf8_valid(c->line, l, false))
			break;
		hit = memmem(c->line, l, c->keyword, c->klen) != NULL;
	}
	fclose(f);
	return hit;
}

static bool find_in_file(struct search_ctx *c, int dirfd, const char *name, const struct stat *st)
{
	unsigned char head[SNIFF_LEN];
	uint64_t size = (uint64_t)st->st_size;
	if (size == 0 || size > c->ag->cfg.max_file_size)
		return false;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return false;
	struct stat fst;
	if (fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode)) {
		close(fd);
		return false;
	}
	ssize_t hn = read_full(fd, (char *)head, size < SNIFF_LEN ? (size_t)size : SNIFF_LEN);
	if (hn <= 0 || files_looks_binary(head, (size_t)hn)) {
		close(fd);
		return false;
	}
	if (size > FIND_WHOLE_MAX) {
		if (lseek(fd, 0, SEEK_SET) < 0) {
			close(fd);
			return false;
		}
		return find_in_lines(c, fd); /* consumes fd */
	}
	char *buf = malloc(FIND_WHOLE_MAX + 1);
	bool hit = false;
	if (buf) {
		memcpy(buf, head, (size_t)hn);
		ssize_t rest = read_full(fd, buf + hn, FIND_WHOLE_MAX + 1 - (size_t)hn);
		if (rest >= 0) {
			size_t len = (size_t)hn + (size_t)rest;
			hit = len <= FIND_WHOLE_MAX && dbx_utf8_valid(buf, len, false) &&
			      memmem(buf, len, c->keyword, c->klen) != NULL;
		}
	}
	free(buf);
	close(fd);
	return hit;
}

static int find_visit(struct walk *w, int dirfd, const char *name, const struct stat *st)
{
	struct search_ctx *c = w->ctx;
	if (req_gone(c->r))
		return -EPIPE;
	if (S_ISDIR(st->st_mode))
		return skip_dir(name) ? WALK_NEXT : WALK_DESCEND;
	if (S_ISREG(st->st_mode) && find_in_file(c, dirfd, name, st))
		add_abs(c->ag, c->files, w->path);
	return WALK_NEXT;
}

void files_find(struct req *r)
{
	cJSON *j = req_json(r);
	const char *dir, *keyword;
	char rel[PATH_MAX];
	struct search_ctx c = {.r = r, .ag = req_agent(r)};
	if (json_get_str(r, j, "dir", true, &dir) || json_get_str(r, j, "keyword", true, &keyword))
		return;
	if (!*keyword) {
		req_reply_err(r, ST_INVALID, "Keyword cannot be empty");
		return;
	}
	int fd = open_search_dir(r, dir, rel);
	if (fd < 0)
		return;
	c.keyword = keyword;
	c.klen = strlen(keyword);
	run_walk(r, &c, fd, rel, find_visit);
	free(c.line);
}

/* ---- replace ------------------------------------------------------------------------------ */

static void add_replace_result(cJSON *results, const char *file, const char *status, long count,
			       const char *error)
{
	cJSON *o = cJSON_CreateObject();
	char *c = dbx_utf8_lossy(file, strlen(file), NULL);
	cJSON_AddStringToObject(o, "file", c ? c : "");
	free(c);
	cJSON_AddStringToObject(o, "status", status);
	cJSON_AddNumberToObject(o, "replacements", (double)count);
	if (error)
		cJSON_AddStringToObject(o, "error", error);
	cJSON_AddItemToArray(results, o);
}

/* Counts non-overlapping occurrences; builds the result into *ret when @ret is not NULL. */
static size_t replace_all(const char *s, size_t len, const char *from, size_t flen, const char *to,
			  size_t tlen, char *out)
{
	size_t count = 0, o = 0;
	const char *p = s, *end = s + len, *hit;
	while ((hit = memmem(p, (size_t)(end - p), from, flen))) {
		if (out) {
			memcpy(out + o, p, (size_t)(hit - p));
			o += (size_t)(hit - p);
			memcpy(out + o, to, tlen);
			o += tlen;
		}
		count++;
		p = hit + flen;
	}
	if (out)
		memcpy(out + o, p, (size_t)(end - p));
	return count;
}

static void replace_one(struct agent *ag, cJSON *results, const char *file, const char *from,
			const char *to)
{
	char rel[PATH_MAX], msg[160];
	char *buf = NULL, *out = NULL;
	uint64_t max = ag->cfg.max_file_size;
	int e = files_norm(ag, file, rel), fd = -1;
	struct stat st;
	if (e == 0)
		e = fd = dbx_path_open(ag->rootfd, rel, O_RDONLY | O_NONBLOCK, 0, 0);
	if (e == -ENOENT || e == -ENOTDIR) {
		add_replace_result(results, file, "error", 0, "File not found");
		goto out;
	}
	if (e < 0 || fstat(fd, &st) < 0) {
		add_replace_result(results, file, "error", 0,
				   files_strerror(e < 0 ? e : -errno, msg));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		add_replace_result(results, file, "error", 0, "Path is not a file");
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		snprintf(msg, sizeof(msg), "File too large (%llu bytes, max %llu bytes)",
			 (unsigned long long)st.st_size, (unsigned long long)max);
		add_replace_result(results, file, "skipped", 0, msg);
		goto out;
	}
	/* One byte more than the size: a file that grew past max is caught below. */
	size_t cap = (size_t)st.st_size + 1;
	buf = malloc(cap);
	ssize_t n = buf ? read_full(fd, buf, cap) : -ENOMEM;
	if (n < 0) {
		add_replace_result(results, file, "error", 0, files_strerror((int)n, msg));
		goto out;
	}
	size_t len = (size_t)n;
	if (len > max) {
		snprintf(msg, sizeof(msg), "File too large (%zu bytes, max %llu bytes)", len,
			 (unsigned long long)max);
		add_replace_result(results, file, "skipped", 0, msg);
		goto out;
	}
	if (files_looks_binary((unsigned char *)buf, len < SNIFF_LEN ? len : SNIFF_LEN)) {
		add_replace_result(results, file, "skipped", 0, "Binary file");
		goto out;
	}
	if (!dbx_utf8_valid(buf, len, false)) {
		add_replace_result(results, file, "skipped", 0, "Non-UTF-8 text file");
		goto out;
	}
	size_t flen = strlen(from), tlen = strlen(to);
	size_t count = replace_all(buf, len, from, flen, to, tlen, NULL);
	if (count == 0) {
		add_replace_result(results, file, "skipped", 0, NULL);
		goto out;
	}
	uint64_t newlen = (uint64_t)len - (uint64_t)count * flen + (uint64_t)count * tlen;
	if (newlen > max) {
		snprintf(msg, sizeof(msg),
			 "File too large after replacement (%llu bytes, max %llu "
			 "bytes)",
			 (unsigned long long)newlen, (unsigned long long)max);
		add_replace_result(results, file, "error", 0, msg);
		goto out;
	}
	out = malloc((size_t)newlen + 1);
	if (!out) {
		add_replace_result(results, file, "error", 0, files_strerror(-ENOMEM, msg));
		goto out;
	}
	replace_all(buf, len, from, flen, to, tlen, out);
	struct afile af;
	e = af_open(&af, ag, rel);
	if (e == 0 && (e = af_write(&af, out, (size_t)newlen)) < 0)
		af_abort(&af);
	else if (e == 0)
		e = af_commit(&af);
	if (e < 0)
		add_replace_result(results, file, "error", 0, files_strerror(e, msg));
	else
		add_replace_result(results, file, "success", (long)count, NULL);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	free(out);
}

void files_replace(struct req *r)
{
	cJSON *j = req_json(r);
	cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files"), *it;
	const char *from, *to;
	if (!files || cJSON_IsNull(files)) {
		req_reply_shape(r, "missing field `files`");
		return;
	}
	if (!cJSON_IsArray(files)) {
		req_reply_shape(r, "files: invalid type, expected a sequence");
		return;
	}
	cJSON_ArrayForEach(it, files)
	{
		if (!cJSON_IsString(it)) {
			req_reply_shape(r, "files: invalid type, expected a string");
			return;
		}
	}
	if (json_get_str(r, j, "from", true, &from) || json_get_str(r, j, "to", true, &to))
		return;
	if (!*from) {
		req_reply_err(r, ST_INVALID, "'from' string cannot be empty");
		return;
	}
	cJSON *results = cJSON_CreateArray();
	cJSON_ArrayForEach(it, files)
	{
		if (req_gone(r))
			break;
		replace_one(req_agent(r), results, it->valuestring, from, to);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "results", results);
	req_reply_ok(r, o);
}
