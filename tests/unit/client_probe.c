/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client_probe: drives libdevbox's client against a real agent for tests/integration/
 * test_client.py.  Usage: client_probe URL COMMAND [ARGS...] with the token in $DEVBOX_TOKEN.
 * Prints one JSON object on stdout: {"rc":<0 or -errno>,"errno":"ENOENT","msg":"...",
 * "ms":<elapsed>,"stats":{...}, ...command-specific fields}.  Exit status 0 unless the probe
 * itself was misused.
 *
 * Commands:
 *   stat-loop N PATH       N stats in a row (connection reuse)
 *   stat PATH              one stat (retries across a restart)
 *   write PATH TEXT        one write (never retried)
 *   cancel-after MS PATH   a stat on another thread cancelled after MS (dbx_client_cancel)
 *   flag-after MS PATH     a stat interrupted through the per-thread cancel flag
 *   deadline MS PATH       a stat with a per-thread deadline MS from now
 *   fs-suite DIR           every dbx_fs_* call in DIR (must exist, empty); fields per step
 *   big-read PATH          read_stream of PATH into memory, reports size
 *   collect PATH           a GET /fs/v1/read collected (not streamed): the 64 MiB cap
 *   call PATH_QUERY        dbx_client_call GET
 *   health                 dbx_client_health
 *   list PATH              dbx_fs_list: entry count (paging)
 *   tree PATH              dbx_fs_tree: entry count and the end line
 *   threads T N PATH       T threads sharing the client, N stats each (pool per thread)
 *
 * Environment: DEVBOX_TOKEN, PROBE_TIMEOUT_MS, PROBE_RETRIES, PROBE_INSECURE=1, PROBE_CA=file,
 * PROBE_LOG=level (the library's log hook to stderr).
 */
#include "internal.h"

#include <errno.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static dbx_client *cl;
static cJSON *out;
static uint64_t t0;

static void result(int rc)
{
	cJSON_AddNumberToObject(out, "rc", rc);
	cJSON_AddStringToObject(out, "errno", rc < 0 ? strerrorname_np(-rc) : "");
	cJSON_AddStringToObject(out, "msg", rc < 0 ? dbx_error_last() : "");
}

static void step(const char *name, long rc)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "rc", (double)rc);
	cJSON_AddStringToObject(o, "errno", rc < 0 ? strerrorname_np((int)-rc) : "");
	cJSON_AddStringToObject(o, "msg", rc < 0 ? dbx_error_last() : "");
	cJSON_AddItemToObject(out, name, o);
}

struct canceller {
	int ms;
	int mode; /* 0 client cancel, 1 flag */
	volatile int *flag;
};

static void *cancel_thread(void *ud)
{
	struct canceller *cc = ud;
	usleep((useconds_t)cc->ms * 1000);
	if (cc->mode == 0)
		dbx_client_cancel(cl);
	else
		__atomic_store_n(cc->flag, 1, __ATOMIC_RELAXED);
	return NULL;
}

struct worker {
	int n;
	const char *path;
	int rc;
	char msg[512]; /* the worker thread's dbx_error_last() */
};

static void *stat_worker(void *ud)
{
	struct worker *w = ud;
	struct dbx_attr a;
	for (int i = 0; i < w->n && w->rc == 0; i++)
		w->rc = dbx_fs_stat(cl, w->path, &a);
	if (w->rc < 0)
		snprintf(w->msg, sizeof(w->msg), "%s", dbx_error_last());
	return NULL;
}

static int count_entry(void *ud, const char *name, const struct dbx_attr *a, const char *t)
{
	(*(int *)ud)++;
	return 0;
}

static int tree_entry(void *ud, const char *path, const struct dbx_attr *a, const char *t,
		      bool partial)
{
	(*(int *)ud)++;
	return 0;
}

struct mem {
	struct dbx_strbuf sb;
};

static int mem_sink(void *ud, const void *buf, size_t len)
{
	struct mem *m = ud;
	return dbx_sb_append(&m->sb, buf, len) < 0 ? -ENOMEM : 0;
}

struct src {
	const char *data;
	size_t len, off;
};

static ssize_t mem_src(void *ud, void *buf, size_t len)
{
	struct src *s = ud;
	size_t n = s->len - s->off < len ? s->len - s->off : len;
	memcpy(buf, s->data + s->off, n);
	s->off += n;
	return (ssize_t)n;
}

static char *path_in(const char *dir, const char *name)
{
	char *p;
	if (asprintf(&p, "%s/%s", dir, name) < 0)
		abort();
	return p;
}

static void fs_suite(const char *dir)
{
	struct dbx_attr a;
	char buf[256], ver[DBX_VER_MAX];
	uint64_t size;
	char *f = path_in(dir, "f.txt"), *g = path_in(dir, "g.txt"), *d = path_in(dir, "sub");
	char *l = path_in(dir, "link"), *h = path_in(dir, "hard"), *p = path_in(dir, "fifo");
	char *s = path_in(dir, "streamed");
	int n = 0;
	ssize_t r;

	struct dbx_write_opts wo = {.mode = 0600};
	step("pwrite", dbx_fs_pwrite(cl, f, "hello world", 11, &wo, &a));
	cJSON_AddNumberToObject(out, "pwrite_size", (double)a.size);
	cJSON_AddNumberToObject(out, "pwrite_mode", a.mode & 07777);
	r = dbx_fs_pread(cl, f, buf, sizeof(buf), 6, ver, &size);
	step("pread", r);
	cJSON_AddStringToObject(out, "pread_data", r >= 0 ? (buf[r] = 0, buf) : "");
	cJSON_AddStringToObject(out, "pread_ver", ver);
	cJSON_AddNumberToObject(out, "pread_size", (double)size);
	struct dbx_write_opts stale = {.if_match = "1.2.3"};
	step("pwrite_stale", dbx_fs_pwrite(cl, f, "x", 1, &stale, NULL));
	struct dbx_write_opts match = {.if_match = ver, .offset = 11};
	step("pwrite_match", dbx_fs_pwrite(cl, f, "!", 1, &match, &a));
	cJSON_AddNumberToObject(out, "match_size", (double)a.size);
	struct dbx_write_opts excl = {.excl = true};
	step("pwrite_excl", dbx_fs_pwrite(cl, f, "x", 1, &excl, NULL));
	struct src sr = {.data = "streamed data", .len = 13};
	step("write_stream", dbx_fs_write_stream(cl, s, mem_src, &sr, 13, NULL, &a));
	struct mem m;
	dbx_sb_init(&m.sb, 0);
	step("read_stream", dbx_fs_read_stream(cl, s, 9, UINT64_MAX, mem_sink, &m));
	cJSON_AddStringToObject(out, "read_stream_data", m.sb.data ? m.sb.data : "");
	dbx_sb_free(&m.sb);
	step("truncate", dbx_fs_truncate(cl, f, 5, &a));
	cJSON_AddNumberToObject(out, "truncate_size", (double)a.size);
	step("fsync", dbx_fs_fsync(cl, f, true, NULL));
	step("stat", dbx_fs_stat(cl, f, &a));
	cJSON_AddNumberToObject(out, "stat_size", (double)a.size);
	step("stat_missing", dbx_fs_stat(cl, g, &a));
	step("mkdir", dbx_fs_mkdir(cl, d, 0750, &a));
	cJSON_AddNumberToObject(out, "mkdir_isdir", S_ISDIR(a.mode));
	step("mkdir_again", dbx_fs_mkdir(cl, d, 0750, NULL));
	step("symlink", dbx_fs_symlink(cl, "f.txt", l, &a));
	cJSON_AddNumberToObject(out, "symlink_islnk", S_ISLNK(a.mode));
	char *target = NULL;
	step("readlink", dbx_fs_readlink(cl, l, &target));
	cJSON_AddStringToObject(out, "readlink_target", target ? target : "");
	free(target);
	step("link", dbx_fs_link(cl, f, h, &a));
	cJSON_AddNumberToObject(out, "link_nlink", a.nlink);
	step("chmod", dbx_fs_chmod(cl, f, 0640, &a));
	cJSON_AddNumberToObject(out, "chmod_mode", a.mode & 07777);
	step("chown", dbx_fs_chown(cl, f, (uid_t)-1, (gid_t)-1, NULL));
	struct timespec tv[2] = {{1000000000, 5}, {1234567890, 123456789}};
	step("utimens", dbx_fs_utimens(cl, f, tv, &a));
	cJSON_AddNumberToObject(out, "utimens_mtime", (double)a.mtime.tv_sec);
	cJSON_AddNumberToObject(out, "utimens_mtime_ns", (double)a.mtime.tv_nsec);
	struct timespec omit[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
	step("utimens_omit", dbx_fs_utimens(cl, f, omit, &a));
	cJSON_AddNumberToObject(out, "omit_mtime", (double)a.mtime.tv_sec);
	step("mknod", dbx_fs_mknod(cl, p, S_IFIFO | 0600, &a));
	cJSON_AddNumberToObject(out, "mknod_isfifo", S_ISFIFO(a.mode));
	step("setxattr", dbx_fs_setxattr(cl, f, "user.k", "value", 5, XATTR_CREATE));
	step("setxattr_create_again", dbx_fs_setxattr(cl, f, "user.k", "v", 1, XATTR_CREATE));
	step("getxattr_probe", dbx_fs_getxattr(cl, f, "user.k", NULL, 0));
	step("getxattr_small", dbx_fs_getxattr(cl, f, "user.k", buf, 2));
	r = dbx_fs_getxattr(cl, f, "user.k", buf, sizeof(buf));
	step("getxattr", r);
	cJSON_AddStringToObject(out, "getxattr_value", r >= 0 ? (buf[r] = 0, buf) : "");
	step("listxattr_probe", dbx_fs_listxattr(cl, f, NULL, 0));
	r = dbx_fs_listxattr(cl, f, buf, sizeof(buf));
	step("listxattr", r);
	cJSON_AddStringToObject(out, "listxattr_first", r > 0 ? buf : "");
	step("removexattr", dbx_fs_removexattr(cl, f, "user.k"));
	step("getxattr_gone", dbx_fs_getxattr(cl, f, "user.k", buf, sizeof(buf)));
	struct dbx_attr dirattr;
	step("list", dbx_fs_list(cl, dir, &dirattr, count_entry, &n));
	cJSON_AddNumberToObject(out, "list_count", n);
	n = 0;
	struct dbx_tree_end end = {0};
	step("tree", dbx_fs_tree(cl, dir, 0, 0, tree_entry, &n, &end));
	cJSON_AddNumberToObject(out, "tree_count", n);
	cJSON_AddNumberToObject(out, "tree_end_entries", (double)end.entries);
	step("rename_noreplace", dbx_fs_rename(cl, f, h, RENAME_NOREPLACE, NULL));
	step("rename", dbx_fs_rename(cl, f, g, 0, &a));
	cJSON_AddNumberToObject(out, "rename_size", (double)a.size);
	step("rename_exchange", dbx_fs_rename(cl, g, d, RENAME_EXCHANGE, NULL));
	step("rename_back", dbx_fs_rename(cl, d, g, RENAME_EXCHANGE, NULL));
	step("rmdir_notempty", dbx_fs_rmdir(cl, dir));
	step("unlink", dbx_fs_unlink(cl, h));
	step("unlink_missing", dbx_fs_unlink(cl, h));
	step("rmdir", dbx_fs_rmdir(cl, d));
	struct statvfs sv;
	step("statfs", dbx_fs_statfs(cl, &sv));
	cJSON_AddNumberToObject(out, "statfs_bsize", (double)sv.f_bsize);
	step("outside", dbx_fs_stat(cl, "../etc", &a));

	dbx_batch *b = NULL;
	dbx_batch_new(&b);
	dbx_batch_mkdir(b, d, 0755);
	int wi = dbx_batch_write(b, f, "batched", 7, NULL);
	int ri = dbx_batch_read(b, f, 0, 100);
	int si = dbx_batch_stat(b, "nope/none");
	int ui = dbx_batch_unlink(b, s);
	step("batch_run", dbx_batch_run(cl, b));
	const void *data;
	size_t len;
	step("batch_write", dbx_batch_result(b, wi, &a, NULL, NULL));
	cJSON_AddNumberToObject(out, "batch_write_size", (double)a.size);
	step("batch_read", dbx_batch_result(b, ri, NULL, &data, &len));
	snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)data);
	cJSON_AddStringToObject(out, "batch_read_data", buf);
	step("batch_stat", dbx_batch_result(b, si, NULL, NULL, NULL));
	step("batch_unlink", dbx_batch_result(b, ui, NULL, NULL, NULL));
	dbx_batch_free(b);

	const struct dbx_reply_meta *meta = dbx_last_reply_meta();
	cJSON_AddBoolToObject(out, "meta_valid", meta->valid);
	cJSON_AddStringToObject(out, "meta_boot", meta->boot);
	cJSON_AddNumberToObject(out, "meta_seq", (double)meta->seq);
	free(f);
	free(g);
	free(d);
	free(l);
	free(h);
	free(p);
	free(s);
	result(0);
}

static void log_hook(int level, const char *msg, void *ud)
{
	fprintf(stderr, "client_probe: [%d] %s\n", level, msg);
}

int main(int argc, char **argv)
{
	struct dbx_client_config cfg = {0};
	struct dbx_attr a;
	int rc = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: client_probe URL COMMAND [ARGS...]\n");
		return 2;
	}
	if (getenv("PROBE_LOG"))
		dbx_set_log_hook(log_hook, atoi(getenv("PROBE_LOG")), NULL);
	cfg.url = argv[1];
	cfg.token = getenv("DEVBOX_TOKEN");
	if (getenv("PROBE_TIMEOUT_MS"))
		cfg.timeout_ms = atoi(getenv("PROBE_TIMEOUT_MS"));
	cfg.insecure = getenv("PROBE_INSECURE") != NULL;
	cfg.ca_file = getenv("PROBE_CA");
	if (getenv("PROBE_RETRIES"))
		cfg.retries = atoi(getenv("PROBE_RETRIES"));
	out = cJSON_CreateObject();
	rc = dbx_client_new(&cfg, &cl);
	if (rc < 0) {
		result(rc);
		goto print;
	}
	t0 = dbx_now_ms();
	const char *cmd = argv[2];
	if (!strcmp(cmd, "stat-loop") && argc == 5) {
		int n = atoi(argv[3]);
		for (int i = 0; i < n && rc == 0; i++)
			rc = dbx_fs_stat(cl, argv[4], &a);
		result(rc);
	} else if (!strcmp(cmd, "stat") && argc == 4) {
		rc = dbx_fs_stat(cl, argv[3], &a);
		result(rc);
	} else if (!strcmp(cmd, "write") && argc == 5) {
		rc = dbx_fs_pwrite(cl, argv[3], argv[4], strlen(argv[4]), NULL, NULL);
		result(rc);
	} else if ((!strcmp(cmd, "cancel-after") || !strcmp(cmd, "flag-after")) && argc == 5) {
		static volatile int flag;
		struct canceller cc = {.ms = atoi(argv[3]), .mode = cmd[0] == 'f', .flag = &flag};
		pthread_t th;
		if (cc.mode == 1)
			dbx_thread_set_cancel_flag(&flag);
		pthread_create(&th, NULL, cancel_thread, &cc);
		rc = dbx_fs_stat(cl, argv[4], &a);
		pthread_join(th, NULL);
		result(rc);
		if (cc.mode == 0) {
			/* Cancelled stays cancelled until uncancel. */
			int again = dbx_fs_stat(cl, argv[4], &a);
			cJSON_AddNumberToObject(out, "again", again);
			dbx_client_uncancel(cl);
		}
		dbx_thread_set_cancel_flag(NULL);
	} else if (!strcmp(cmd, "deadline") && argc == 5) {
		dbx_thread_set_deadline(dbx_now_ms() + (uint64_t)atoi(argv[3]));
		rc = dbx_fs_stat(cl, argv[4], &a);
		dbx_thread_set_deadline(0);
		result(rc);
	} else if (!strcmp(cmd, "fs-suite") && argc == 4) {
		fs_suite(argv[3]);
	} else if (!strcmp(cmd, "big-read") && argc == 4) {
		struct mem m;
		dbx_sb_init(&m.sb, 0);
		rc = dbx_fs_read_stream(cl, argv[3], 0, UINT64_MAX, mem_sink, &m);
		cJSON_AddNumberToObject(out, "size", (double)m.sb.len);
		dbx_sb_free(&m.sb);
		result(rc);
	} else if (!strcmp(cmd, "collect") && argc == 4) {
		struct dbx_strbuf q = DBX_STRBUF_INIT;
		struct dbx__resp resp;
		dbx__query_add(&q, "path", argv[3]);
		struct dbx__req rq = {.method = "GET",
				      .path = "/fs/v1/read",
				      .query = q.data,
				      .idempotent = true,
				      .stream = true,
				      .op = "read",
				      .err_path = argv[3]};
		rc = dbx__request(cl, &rq, &resp);
		cJSON_AddNumberToObject(out, "size", (double)resp.len);
		dbx__resp_free(&resp);
		dbx_sb_free(&q);
		result(rc);
	} else if (!strcmp(cmd, "call") && argc == 4) {
		long status = 0;
		char *body = NULL;
		size_t len = 0;
		rc = dbx_client_call(cl, "GET", argv[3], NULL, NULL, 0, &status, &body, &len);
		cJSON_AddNumberToObject(out, "status", status);
		cJSON_AddStringToObject(out, "body", body ? body : "");
		free(body);
		result(rc);
	} else if (!strcmp(cmd, "threads") && argc == 6) {
		int t = atoi(argv[3]);
		pthread_t th[64];
		struct worker w[64];
		if (t < 1 || t > 64)
			t = 1;
		for (int i = 0; i < t; i++) {
			w[i] = (struct worker){.n = atoi(argv[4]), .path = argv[5]};
			pthread_create(&th[i], NULL, stat_worker, &w[i]);
		}
		for (int i = 0; i < t; i++) {
			pthread_join(th[i], NULL);
			if (w[i].rc < 0)
				rc = dbx__error(-w[i].rc, "%s", w[i].msg);
		}
		result(rc);
	} else if (!strcmp(cmd, "list") && argc == 4) {
		int n = 0;
		rc = dbx_fs_list(cl, argv[3], &a, count_entry, &n);
		cJSON_AddNumberToObject(out, "count", n);
		result(rc);
	} else if (!strcmp(cmd, "tree") && argc == 4) {
		int n = 0;
		struct dbx_tree_end end = {0};
		rc = dbx_fs_tree(cl, argv[3], 0, 0, tree_entry, &n, &end);
		cJSON_AddNumberToObject(out, "count", n);
		cJSON_AddNumberToObject(out, "end_entries", (double)end.entries);
		cJSON_AddBoolToObject(out, "truncated", end.truncated);
		result(rc);
	} else if (!strcmp(cmd, "health") && argc == 3) {
		result(dbx_client_health(cl));
	} else {
		fprintf(stderr, "client_probe: bad command\n");
		cJSON_Delete(out);
		dbx_client_free(cl);
		return 2;
	}
print:;
	struct dbx_client_stats st = {0};
	if (cl)
		dbx_client_get_stats(cl, &st);
	cJSON *s = cJSON_AddObjectToObject(out, "stats");
	cJSON_AddNumberToObject(s, "requests", (double)st.requests);
	cJSON_AddNumberToObject(s, "connects", (double)st.connects);
	cJSON_AddNumberToObject(s, "retries", (double)st.retries);
	cJSON_AddNumberToObject(s, "bytes_up", (double)st.bytes_up);
	cJSON_AddNumberToObject(s, "bytes_down", (double)st.bytes_down);
	cJSON_AddNumberToObject(out, "ms", (double)(dbx_now_ms() - t0));
	char *txt = cJSON_PrintUnformatted(out);
	puts(txt);
	free(txt);
	cJSON_Delete(out);
	dbx_client_free(cl);
	return 0;
}
