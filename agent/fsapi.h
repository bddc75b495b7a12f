/* fsapi.h: internals shared by the /fs/v1 modules (PROTOCOL.md §2): fsapi.c (helpers, metadata
 * operations, route table), fsapi_data.c (read, write, tree, xattr values), fsapi_batch.c and
 * locks.c. Internal to the agent.
 *
 * Threads: everything here runs on workers (it blocks on the file system). An operation touches
 * the file system only through ag->rootfd with openat2(RESOLVE_BENEATH) (dbx_path_open*) and
 * *at() calls on directory fds obtained that way. Metadata operations act on the last component
 * itself (never followed); data operations follow it while it stays inside the workspace. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "agent.h"
#include "attr.h"
#include "strbuf.h"

/* Bounds: each is answered with a clear error (PROTOCOL.md §2). */
#define FS_LIST_DEFAULT       10000
#define FS_LIST_MAX           10000
#define FS_BATCH_LIST_MAX     20000 /* list entries across one batch */
#define FS_TREE_DEPTH_DEFAULT 64
#define FS_TREE_MAX_DEFAULT   200000
#define FS_TREE_MAX_LIMIT     1000000
#define FS_BATCH_OPS_MAX      1024
#define FS_BATCH_BODY_MAX     (16u << 20)
#define FS_BATCH_REPLY_MAX    (64u << 20) /* bytes of reads in one batch reply */
#define FS_XATTR_MAX          (64u << 10)
#define FS_MSG_MAX            512

/* The arguments of one operation as strings: the query (HTTP) or the JSON fields (batch). */
struct fs_args {
	const char *(*get)(void *ctx, const char *name); /* NULL when absent */
	void *ctx;
};

/* A source of bytes for write/xattr-set: the streamed request body or a batch blob slice.
 * read() returns bytes, 0 at the end, or -errno. */
struct fs_src {
	ssize_t (*read)(void *ctx, void *buf, size_t len);
	void *ctx;
	uint64_t len; /* announced length (for the size check) */
};

/* A source over memory (batch blob slices, buffered bodies). */
struct fs_mem {
	const char *p;
	size_t left;
};
void fs_src_mem(struct fs_src *src, struct fs_mem *m, const void *data, size_t len);

/* One operation: its inputs and outcome. err/msg on failure, json on success (owned). */
struct fs_op {
	struct agent *ag;
	const struct fs_args *a;
	const char *if_match; /* If-Match header (write) */
	struct fs_src *src;   /* write and xattr-set bodies */
	cJSON *json;
	/* The directories whose names the op changed, as they are after it (replies carry them as
	 * X-Dbx-Dir: the parent of `to`, or of `path`; X-Dbx-From-Dir: the parent of `path`
	 * when the op also had a `to`) */
	struct stat dir, from_dir;
	bool has_dir, has_from_dir;
	int err; /* positive errno */
	char msg[FS_MSG_MAX];
};

/* Records a failure: "<what>: <strerror>" and returns -err (err may be negative or positive). */
int fs_fail(struct fs_op *o, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Argument parsers: 0, or an EINVAL failure recorded in @o naming the argument. */
int fs_arg_path(struct fs_op *o, const char *name, char rel[PATH_MAX]);
int fs_arg_u64(struct fs_op *o, const char *name, uint64_t def, uint64_t *out);
int fs_arg_bool(struct fs_op *o, const char *name, bool def, bool *out);
int fs_arg_mode(struct fs_op *o, const char *name, mode_t def, mode_t *out);

/* Records the directory @dfd as the op left it, for X-Dbx-Dir (@from: X-Dbx-From-Dir). */
void fs_note_dir(struct fs_op *o, int dfd, bool from);
/* attr of @name in @dfd without following it (reads a symlink's target). NULL on error
 * (errno set). */
cJSON *fs_attr_at(int dfd, const char *name, const struct stat *st_or_null);
/* fs_ver() of attr.h as an expression. */
const char *fs_verstr(const struct stat *st, char buf[FS_VER_MAX]);

/* Opens the parent of @rel (O_PATH) and gives the last name; the root is (rootfd dup, "."). */
int fs_parent(struct agent *ag, const char *rel, const char **ret_name);

/* HTTP status of an errno (PROTOCOL.md §1). */
int fs_http_status(int err);
/* Replies: stamp (events_stamp) then the error JSON / a JSON object (consumed). */
void fs_reply_error(struct req *r, int err, const char *msg);
void fs_reply_error_http(struct req *r, int http_status, int err, const char *msg);
void fs_reply_json(struct req *r, cJSON *obj);
void fs_reply_op(struct req *r, struct fs_op *o); /* error or o->json */

/* The generic operations (JSON result): NULL when @name is none of them. */
typedef int (*fs_op_fn)(struct fs_op *o);
fs_op_fn fs_op_find(const char *name);

/* fsapi_data.c */
int fs_write_op(struct fs_op *o); /* PUT write with o->src */
int fs_xattr_set_op(struct fs_op *o);
/* Reads up to @max bytes of a file (batch): appends to @blob, fills *ret_ver/size. */
int fs_read_into(struct fs_op *o, struct dbx_strbuf *blob, uint64_t max);
int fs_xattr_get_into(struct fs_op *o, struct dbx_strbuf *blob);
void fs_read_route(struct req *r);
void fs_write_route(struct req *r);
int fs_write_prepare(struct req *r);
void fs_tree_route(struct req *r);
void fs_xattr_get_route(struct req *r);
void fs_xattr_set_route(struct req *r);
int fs_xattr_prepare(struct req *r);

/* fsapi_batch.c */
void fs_batch_route(struct req *r);
int fs_batch_prepare(struct req *r);

/* locks.c */
void fs_lock_route(struct req *r);

/* fsapi_archive.c */
void fs_archive_get_route(struct req *r);
void fs_archive_post_route(struct req *r);
int fs_archive_post_prepare(struct req *r);
void fs_archive_put_route(struct req *r);
int fs_archive_put_prepare(struct req *r);
void fs_hashes_route(struct req *r);
