/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests: libdevbox's errno <-> wire map, error replies and the decoding of every agent
 * reply the client reads (attr, list page, tree lines, readlink, xattr names, process lists,
 * ports, batch), plus query encoding and the error/log plumbing. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tap.h"

static cJSON *js(const char *s)
{
	cJSON *j = cJSON_Parse(s);
	if (!j) {
		printf("# bad test JSON: %s\n", s);
		abort();
	}
	return j;
}

static void test_errno_map(void)
{
	static const int errs[] = {
		ENOENT, EACCES,  EPERM,  EXDEV,      EROFS,  EEXIST, ENOTEMPTY,    EBUSY,   ETXTBSY,
		EAGAIN, ESTALE,  EFBIG,  ENOSPC,     EDQUOT, EINVAL, ENAMETOOLONG, ENOTDIR, EISDIR,
		ELOOP,  ENODATA, ERANGE, EOPNOTSUPP, EIO,    ENOMEM, ETIMEDOUT,    ESRCH,   E2BIG};
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		const char *n = dbx_errno_name(errs[i]);
		ok(n && n[0] == 'E' && dbx_errno_from_name(n) == errs[i], "errno %d <-> %s",
		   errs[i], n ? n : "(null)");
	}
	is_str(dbx_errno_name(ENOENT), "ENOENT", "ENOENT's wire name");
	is_str(dbx_errno_name(-ENOTEMPTY), "ENOTEMPTY", "a negative errno is accepted");
	ok(dbx_errno_from_name("EWHATEVER") == EIO, "an unknown name gives EIO");
	is_str(dbx_errno_name(9999), "EIO", "an unknown errno gives EIO");
}

static void test_reply_error(void)
{
	char reason[256];
	const char *b;
	int e;

	b = "{\"error\":\"ENOENT\",\"message\":\"stat a/b: No such file or directory\"}";
	e = dbx__reply_error(404, b, strlen(b), false, reason, sizeof(reason));
	ok(e == ENOENT, "fs error body gives its errno");
	is_str(reason, "No such file or directory", "reason is the part after the agent's op path");

	b = "{\"error\":\"EXDEV\",\"message\":\"read ../x: path leads outside the workspace\"}";
	e = dbx__reply_error(403, b, strlen(b), false, reason, sizeof(reason));
	ok(e == EXDEV, "EXDEV from a 403");
	is_str(reason, "path leads outside the workspace", "EXDEV reason");

	b = "{\"error\":\"ENOTEMPTY\",\"message\":\"\"}";
	e = dbx__reply_error(409, b, strlen(b), false, reason, sizeof(reason));
	ok(e == ENOTEMPTY && !strcmp(reason, strerror(ENOTEMPTY)), "empty message: strerror");

	e = dbx__reply_error(401, "", 0, false, reason, sizeof(reason));
	ok(e == EKEYREJECTED, "401 gives EKEYREJECTED");
	is_str(reason, "authentication failed (wrong token?)", "401 reason");

	b = "{\"status\":1404,\"message\":\"Process not found\"}";
	e = dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason));
	ok(e == ENOENT, "compat envelope 1404 in a 200 gives ENOENT");
	is_str(reason, "Process not found", "compat message kept");
	e = dbx__reply_error(200, b, strlen(b), false, reason, sizeof(reason));
	ok(e == 0, "a 200 of a non-compat route is success whatever the body");

	b = "{\"status\":0,\"message\":\"success\",\"ports\":[]}";
	ok(dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason)) == 0,
	   "compat status 0 is success");
	b = "{\"status\":1409,\"message\":\"Process is not running\"}";
	ok(dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason)) == EEXIST,
	   "compat 1409 gives EEXIST");
	b = "{\"status\":1422,\"message\":\"bad\"}";
	ok(dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason)) == EINVAL,
	   "compat 1422 gives EINVAL");
	b = "{\"status\":1403,\"message\":\"no\"}";
	ok(dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason)) == EACCES,
	   "compat 1403 gives EACCES");
	b = "{\"status\":1500,\"message\":\"boom\"}";
	ok(dbx__reply_error(200, b, strlen(b), true, reason, sizeof(reason)) == EIO,
	   "compat 1500 gives EIO");

	b = "Failed to deserialize query string: missing field `path`\nmore";
	e = dbx__reply_error(400, b, strlen(b), true, reason, sizeof(reason));
	ok(e == EINVAL, "plain-text 400 gives EINVAL");
	is_str(reason, "HTTP 400: Failed to deserialize query string: missing field `path`",
	       "plain-text reason is its first line");

	ok(dbx__reply_error(404, "", 0, false, reason, sizeof(reason)) == ENOENT,
	   "bare 404 gives ENOENT");
	ok(dbx__reply_error(413, "", 0, false, reason, sizeof(reason)) == EFBIG, "413 gives EFBIG");
	ok(dbx__reply_error(502, "", 0, false, reason, sizeof(reason)) == EHOSTUNREACH,
	   "502 gives EHOSTUNREACH");
	ok(dbx__reply_error(504, "", 0, false, reason, sizeof(reason)) == ETIMEDOUT,
	   "504 gives ETIMEDOUT");
	ok(dbx__reply_error(500, "{", 1, false, reason, sizeof(reason)) == EIO,
	   "malformed JSON 500 gives EIO");
	b = "{\"error\":\"ENOSPC\",\"message\":\"write f: No space left on device\"}";
	ok(dbx__reply_error(507, b, strlen(b), false, reason, sizeof(reason)) == ENOSPC,
	   "507 ENOSPC");
}

static void test_attr(void)
{
	struct dbx_attr a;
	const char *target;
	cJSON *j = js("{\"ino\":1234,\"type\":\"symlink\",\"mode\":41471,\"nlink\":1,\"uid\":1000,"
		      "\"gid\":1001,\"size\":4,\"blocks\":8,\"blksize\":4096,\"rdev\":0,"
		      "\"atime\":[1763791234,123456789],\"mtime\":[1763791235,5],"
		      "\"ctime\":[1763791236,999999999],\"ver\":\"4d2.1763791234123456789.5\","
		      "\"target\":\"../x\"}");
	ok(dbx__attr_from_json(j, &a, &target) == 0, "attr decodes");
	ok(a.ino == 1234 && S_ISLNK(a.mode) && (a.mode & 07777) == 0777, "ino and mode");
	ok(a.nlink == 1 && a.uid == 1000 && a.gid == 1001, "nlink uid gid");
	ok(a.size == 4 && a.blocks == 8 && a.blksize == 4096 && a.rdev == 0, "sizes");
	ok(a.atime.tv_sec == 1763791234 && a.atime.tv_nsec == 123456789, "atime pair");
	ok(a.mtime.tv_sec == 1763791235 && a.mtime.tv_nsec == 5, "mtime pair");
	ok(a.ctime.tv_nsec == 999999999, "ctime pair");
	is_str(a.ver, "4d2.1763791234123456789.5", "version");
	is_str(target, "../x", "symlink target");
	cJSON_Delete(j);

	j = js("{\"ino\":5,\"type\":\"dir\",\"mode\":493}");
	ok(dbx__attr_from_json(j, &a, &target) == 0 && S_ISDIR(a.mode) && target == NULL,
	   "type bits from \"type\" when mode lacks them; no target");
	cJSON_Delete(j);
	j = js("{\"type\":\"file\",\"mode\":33188}");
	ok(dbx__attr_from_json(j, &a, NULL) == -EPROTO, "an attr without ino is EPROTO");
	cJSON_Delete(j);
	j = js("[1,2]");
	ok(dbx__attr_from_json(j, &a, NULL) == -EPROTO, "a non-object is EPROTO");
	cJSON_Delete(j);
	j = js("{\"ino\":5,\"mode\":33188,\"mtime\":[1,2000000000]}");
	ok(dbx__attr_from_json(j, &a, NULL) == 0 && a.mtime.tv_sec == 0,
	   "an out-of-range nsec is ignored");
	cJSON_Delete(j);
}

struct seen {
	int n;
	char names[8][32];
	bool partial[8];
	int stop_at;
};

static int dirent_cb(void *ud, const char *name, const struct dbx_attr *attr, const char *target)
{
	struct seen *s = ud;
	if (s->n < 8)
		snprintf(s->names[s->n], sizeof(s->names[0]), "%s%s%s", name, target ? ">" : "",
			 target ? target : "");
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 42 : 0;
}

static void test_list_page(void)
{
	struct dbx_attr dir;
	struct seen s = {0};
	uint64_t next = 0;
	bool more = true;
	cJSON *j = js("{\"attr\":{\"ino\":2,\"mode\":16877},\"entries\":["
		      "{\"name\":\"a\",\"attr\":{\"ino\":3,\"mode\":33188}},"
		      "{\"name\":\"l\",\"attr\":{\"ino\":4,\"mode\":41471,\"target\":\"a\"}}],"
		      "\"next\":null}");
	ok(dbx__list_page_parse(j, &dir, dirent_cb, &s, &next, &more) == 0, "list page parses");
	ok(dir.ino == 2 && S_ISDIR(dir.mode), "directory attr");
	ok(s.n == 2 && !strcmp(s.names[0], "a") && !strcmp(s.names[1], "l>a"),
	   "entries in order with target");
	ok(!more, "next null: last page");
	cJSON_Delete(j);

	j = js("{\"attr\":{\"ino\":2,\"mode\":16877},\"entries\":[],\"next\":10000}");
	ok(dbx__list_page_parse(j, NULL, dirent_cb, &s, &next, &more) == 0 && more && next == 10000,
	   "next offset");
	cJSON_Delete(j);

	memset(&s, 0, sizeof(s));
	s.stop_at = 1;
	j = js("{\"entries\":[{\"name\":\"a\",\"attr\":{\"ino\":3,\"mode\":33188}},"
	       "{\"name\":\"b\",\"attr\":{\"ino\":5,\"mode\":33188}}],\"next\":null}");
	ok(dbx__list_page_parse(j, NULL, dirent_cb, &s, &next, &more) == 42 && s.n == 1,
	   "callback's nonzero value stops the walk and is returned");
	cJSON_Delete(j);

	j = js("{\"entries\":[{\"name\":\"a/b\",\"attr\":{\"ino\":3,\"mode\":33188}}]}");
	ok(dbx__list_page_parse(j, NULL, NULL, NULL, &next, &more) == -EPROTO,
	   "a name with a slash is EPROTO");
	cJSON_Delete(j);
	j = js("{\"attr\":{\"ino\":2,\"mode\":16877}}");
	ok(dbx__list_page_parse(j, NULL, NULL, NULL, &next, &more) == -EPROTO,
	   "no entries array is EPROTO");
	cJSON_Delete(j);
	j = js("{\"entries\":[],\"next\":\"x\"}");
	ok(dbx__list_page_parse(j, NULL, NULL, NULL, &next, &more) == -EPROTO,
	   "a non-number next is EPROTO");
	cJSON_Delete(j);
}

static int tree_cb(void *ud, const char *path, const struct dbx_attr *attr, const char *target,
		   bool partial)
{
	struct seen *s = ud;
	if (s->n < 8) {
		snprintf(s->names[s->n], sizeof(s->names[0]), "%s", path);
		s->partial[s->n] = partial;
	}
	s->n++;
	return 0;
}

static void test_tree_line(void)
{
	struct seen s = {0};
	struct dbx_tree_end end = {0};
	bool done = true;
	const char *l1 = "{\"path\":\".\",\"attr\":{\"ino\":2,\"mode\":16877}}\n";
	const char *l2 = "{\"path\":\"d\",\"attr\":{\"ino\":3,\"mode\":16877},\"partial\":true}";
	const char *l3 = "{\"end\":true,\"entries\":2,\"truncated\":true,\"seq\":77}\r\n";

	ok(dbx__tree_line(l1, strlen(l1), tree_cb, &s, &end, &done) == 0 && !done,
	   "tree entry line");
	ok(dbx__tree_line(l2, strlen(l2), tree_cb, &s, &end, &done) == 0 && !done, "partial entry");
	ok(s.n == 2 && !strcmp(s.names[0], ".") && !s.partial[0] && !strcmp(s.names[1], "d") &&
		   s.partial[1],
	   "paths and partial flags delivered");
	ok(dbx__tree_line(l3, strlen(l3), tree_cb, &s, &end, &done) == 0 && done, "end line");
	ok(end.entries == 2 && end.truncated && end.seq == 77, "end line fields");
	ok(dbx__tree_line("", 0, tree_cb, &s, &end, &done) == 0 && !done, "empty line ignored");
	ok(dbx__tree_line("nope", 4, tree_cb, &s, &end, &done) == -EPROTO, "garbage is EPROTO");
	ok(dbx__tree_line("{\"attr\":{}}", 11, tree_cb, &s, &end, &done) == -EPROTO,
	   "an entry without path is EPROTO");
}

static void test_small_replies(void)
{
	char *t = NULL;
	char buf[64];
	cJSON *j = js("{\"target\":\"../some where\"}");
	ok(dbx__readlink_parse(j, &t) == 0 && t && !strcmp(t, "../some where"), "readlink");
	free(t);
	cJSON_Delete(j);
	j = js("{}");
	ok(dbx__readlink_parse(j, &t) == -EPROTO && t == NULL, "readlink without target");
	cJSON_Delete(j);

	j = js("{\"names\":[\"user.a\",\"user.bc\"]}");
	ok(dbx__xattr_names_parse(j, NULL, 0) == 15, "listxattr size probe");
	ok(dbx__xattr_names_parse(j, buf, 15) == 15 && !memcmp(buf, "user.a\0user.bc\0", 15),
	   "listxattr names NUL-separated");
	ok(dbx__xattr_names_parse(j, buf, 14) == -ERANGE, "listxattr buffer too small: ERANGE");
	cJSON_Delete(j);
	j = js("{\"names\":[]}");
	ok(dbx__xattr_names_parse(j, buf, sizeof(buf)) == 0, "no xattrs");
	cJSON_Delete(j);

	int *ports = NULL;
	size_t n = 0;
	j = js("{\"status\":0,\"message\":\"success\",\"ports\":[3000,8080],\"lastUpdatedAt\":1}");
	ok(dbx__ports_parse(j, &ports, &n) == 0 && n == 2 && ports[0] == 3000 && ports[1] == 8080,
	   "ports");
	free(ports);
	cJSON_Delete(j);
	j = js("{\"ports\":[0]}");
	ok(dbx__ports_parse(j, &ports, &n) == -EPROTO && ports == NULL, "port 0 is EPROTO");
	cJSON_Delete(j);
}

static void test_processes(void)
{
	struct dbx_process *list = NULL;
	size_t n = 0;
	cJSON *j = js(
		"{\"status\":0,\"message\":\"success\",\"processes\":["
		"{\"processId\":\"ab-_1234\",\"pid\":10,\"command\":\"sleep\",\"processStatus\":"
		"\"running\",\"startTime\":\"2026-01-02T03:04:05Z\",\"endTime\":null,"
		"\"exitCode\":null},"
		"{\"processId\":\"k1\",\"pid\":11,\"command\":\"sh\",\"processStatus\":\"killed\","
		"\"startTime\":\"2026-01-02T03:04:05Z\",\"endTime\":\"2026-01-02T03:04:06Z\","
		"\"exitCode\":143},"
		"{\"processId\":\"f1\",\"pid\":null,\"command\":\"false\",\"processStatus\":"
		"\"failed\",\"startTime\":\"x\",\"exitCode\":1}]}");
	ok(dbx__processes_parse_compat(j, &list, &n) == 0 && n == 3, "compat process list");
	ok(!strcmp(list[0].id, "ab-_1234") && list[0].pid == 10 && list[0].running &&
		   !list[0].is_exec && !strcmp(list[0].command, "sleep"),
	   "running compat process");
	ok(list[0].start_ms == 1767323045000LL, "ISO start time to ms");
	ok(!list[1].running && list[1].signal == SIGTERM && !strcmp(list[1].status, "killed"),
	   "killed: 128+15 gives SIGTERM");
	ok(list[2].exit_code == 1 && list[2].signal == 0 && list[2].pid == 0 &&
		   list[2].start_ms == 0,
	   "failed with exit 1; null pid; bad time gives 0");
	cJSON_Delete(j);

	j = js("{\"execs\":[{\"id\":\"e1\",\"pid\":20,\"argv\":[\"sh\",\"-c\",\"x y\"],\"tty\":"
	       "false,\"running\":true,\"exitCode\":null,\"signal\":null,\"startTime\":[100,"
	       "500000000],\"endTime\":null},"
	       "{\"id\":\"e2\",\"pid\":21,\"argv\":[\"sleep\"],\"tty\":true,\"running\":false,"
	       "\"exitCode\":null,\"signal\":\"SIGKILL\",\"startTime\":[1,0],\"endTime\":[2,0]},"
	       "{\"id\":\"e3\",\"pid\":22,\"argv\":[\"true\"],\"tty\":false,\"running\":false,"
	       "\"exitCode\":0,\"signal\":null,\"startTime\":[1,0],\"endTime\":[2,0]},"
	       "{\"id\":\"e4\",\"pid\":23,\"argv\":[],\"running\":false,\"exitCode\":null,"
	       "\"signal\":\"SIGRTMIN+2\",\"startTime\":[1,0]}]}");
	ok(dbx__processes_parse_exec(j, &list, &n) == 0 && n == 7, "exec list appended");
	ok(list[3].is_exec && !strcmp(list[3].id, "e1") && list[3].running &&
		   !strcmp(list[3].command, "sh -c x y") && list[3].start_ms == 100500,
	   "running exec: argv joined, start ms");
	ok(list[4].signal == SIGKILL && !strcmp(list[4].status, "killed"), "exec killed by KILL");
	ok(list[5].exit_code == 0 && !strcmp(list[5].status, "completed"), "exec completed");
	ok(list[6].signal == SIGRTMIN + 2, "real-time signal names");
	dbx_process_list_free(list, n);
	cJSON_Delete(j);

	list = NULL;
	n = 0;
	j = js("{\"execs\":[{\"pid\":1}]}");
	ok(dbx__processes_parse_exec(j, &list, &n) == -EPROTO && n == 0, "exec without id");
	dbx_process_list_free(list, n);
	cJSON_Delete(j);
	list = NULL;
	n = 0;
	j = js("{\"status\":0}");
	ok(dbx__processes_parse_compat(j, &list, &n) == -EPROTO, "no processes array");
	dbx_process_list_free(list, n);
	cJSON_Delete(j);
}

static void test_batch(void)
{
	dbx_batch *b = NULL;
	struct dbx_attr a;
	const void *data;
	size_t len;
	ok(dbx_batch_new(&b) == 0, "batch new");
	ok(dbx_batch_stat(b, "a") == 0, "stat is op 0");
	ok(dbx_batch_read(b, "b", 0, 4096) == 1, "read is op 1");
	ok(dbx_batch_write(b, "c", "hello", 5, NULL) == 2, "write is op 2");
	ok(dbx_batch_unlink(b, "e") == 3, "unlink is op 3");
	ok(dbx__batch_count(b) == 4, "4 ops");
	ok(dbx_batch_result(b, 0, NULL, NULL, NULL) == -EINVAL, "no result before a run");

	static const char reply[] =
		"{\"results\":[{\"attr\":{\"ino\":7,\"mode\":33188,\"size\":3}},"
		"{\"data\":[0,4],\"ver\":\"v\"},{\"attr\":{\"ino\":8,\"mode\":33188,\"size\":5}},"
		"{\"error\":\"ENOENT\",\"message\":\"unlink e: No such file or directory\"}]}\n"
		"DATA";
	ok(dbx__batch_parse_reply(b, reply, sizeof(reply) - 1) == 0, "batch reply parses");
	ok(dbx_batch_result(b, 0, &a, NULL, NULL) == 0 && a.ino == 7 && a.size == 3, "stat result");
	ok(dbx_batch_result(b, 1, NULL, &data, &len) == 0 && len == 4 && !memcmp(data, "DATA", 4),
	   "read result points into the reply blob");
	ok(dbx_batch_result(b, 2, &a, NULL, NULL) == 0 && a.ino == 8, "write result");
	ok(dbx_batch_result(b, 3, NULL, NULL, NULL) == -ENOENT, "failed op's errno");
	is_str(dbx_error_last(), "unlink e: No such file or directory", "failed op's message");
	ok(dbx_batch_result(b, 4, NULL, NULL, NULL) == -EINVAL, "index out of range");

	static const char bad1[] = "{\"results\":[{}]}\n";
	ok(dbx__batch_parse_reply(b, bad1, sizeof(bad1) - 1) == -EPROTO, "wrong result count");
	static const char bad2[] = "{\"results\":[{},{\"data\":[2,4]},{},{}]}\nDATA";
	ok(dbx__batch_parse_reply(b, bad2, sizeof(bad2) - 1) == -EPROTO,
	   "data outside the blob is EPROTO");
	b = dbx_batch_free(b);
	ok(b == NULL, "batch free returns NULL");

	ok(dbx_batch_new(&b) == 0, "second batch");
	int r = 0;
	for (int i = 0; i < 1024 && r >= 0; i++)
		r = dbx_batch_stat(b, "x");
	ok(r == 1023, "1024 ops accepted");
	ok(dbx_batch_stat(b, "x") == -E2BIG, "op 1025 is E2BIG");
	dbx_batch_free(b);
}

static void test_query(void)
{
	struct dbx_strbuf q = DBX_STRBUF_INIT;
	ok(dbx__query_add(&q, "path", "a b/ü&=?#%") == 0, "query add");
	ok(dbx__query_addu(&q, "offset", 18446744073709551615ULL) == 0, "query addu");
	is_str(q.data, "path=a%20b/%C3%BC%26%3D%3F%23%25&offset=18446744073709551615",
	       "query encoding");
	dbx_sb_free(&q);
}

static int hook_calls;
static void hook(int level, const char *msg, void *ud)
{
	if (strstr(msg, "ENOENT"))
		hook_calls++;
	(void)ud;
}

static void test_errors(void)
{
	dbx_set_log_hook(hook, 3, NULL);
	ok(dbx__error(ENOENT, "stat %s: %s", "a/b", strerror(ENOENT)) == -ENOENT,
	   "dbx__error returns -err");
	is_str(dbx_error_last(), "stat a/b: No such file or directory", "message kept");
	ok(hook_calls == 1, "debug hook sees the error");
	ok(dbx__error(-EIO, "%s", dbx_error_last()) == -EIO, "negative err accepted");
	is_str(dbx_error_last(), "stat a/b: No such file or directory",
	       "message may be formatted from itself");
	dbx_error_clear();
	is_str(dbx_error_last(), "", "cleared");
	dbx_set_log_hook(NULL, 0, NULL);
	is_str(dbx_version(), DEVBOX_VERSION, "version");
}

int main(void)
{
	test_errno_map();
	test_reply_error();
	test_attr();
	test_list_page();
	test_tree_line();
	test_small_replies();
	test_processes();
	test_batch();
	test_query();
	test_errors();
	return tap_done();
}
