/* fsapi_batch.c: POST /fs/v1/batch (PROTOCOL.md §2.3): many small operations in one round trip.
 *
 * Request: one JSON line {"ops":[...]}, "\n", then a blob the writes point into with
 * "data":[offset,length]. Reply: one JSON line {"results":[...]}, "\n", then the blob holding
 * the bytes of reads (and xattr values). Each op is the same function as its HTTP route (fsapi.c,
 * fsapi_data.c) with its JSON fields as arguments; a JSON number given for "mode" is the mode
 * itself (e.g. 420 or 0o644 in the client's language), a string is octal like in the query.
 *
 * Threads: a worker. Bounds: 1024 ops, 16 MiB of request body, 64 MiB of reply blob. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "fsapi.h"
#include "misc.h"
#include "strbuf.h"

#define NSLOTS 16

/* The JSON fields of one op as strings; numbers are formatted into rotating slots. */
struct jargs {
	cJSON *obj;
	char slot[NSLOTS][48];
	int next;
};

static const char *jget(void *ctx, const char *name)
{
	struct jargs *j = ctx;
	cJSON *v = cJSON_GetObjectItemCaseSensitive(j->obj, name);
	if (!v || cJSON_IsNull(v))
		return NULL;
	if (cJSON_IsString(v))
		return v->valuestring;
	if (cJSON_IsBool(v))
		return cJSON_IsTrue(v) ? "1" : "0";
	if (!cJSON_IsNumber(v))
		return "?"; /* refused by the parsers as malformed */
	char *s = j->slot[j->next++ % NSLOTS];
	double d = v->valuedouble;
	if (d < 0 || d != (double)(unsigned long long)d)
		snprintf(s, 48, "%.17g", d);
	else if (!strcmp(name, "mode"))
		snprintf(s, 48, "%llo", (unsigned long long)d);
	else
		snprintf(s, 48, "%llu", (unsigned long long)d);
	return s;
}

/* "data":[offset,length] inside the request blob. */
static int blob_slice(struct fs_op *o, cJSON *obj, const char *blob, size_t bloblen,
		      const char **ret, size_t *ret_len)
{
	cJSON *d = cJSON_GetObjectItemCaseSensitive(obj, "data");
	*ret = blob;
	*ret_len = 0;
	if (!d)
		return 0;
	cJSON *a = cJSON_GetArrayItem(d, 0), *b = cJSON_GetArrayItem(d, 1);
	if (!cJSON_IsArray(d) || cJSON_GetArraySize(d) != 2 || !cJSON_IsNumber(a) ||
	    !cJSON_IsNumber(b) || a->valuedouble < 0 || b->valuedouble < 0 ||
	    a->valuedouble + b->valuedouble > (double)bloblen)
		return fs_fail(o, EINVAL,
			       "batch: \"data\" must be [offset,length] inside the blob");
	*ret = blob + (size_t)a->valuedouble;
	*ret_len = (size_t)b->valuedouble;
	return 0;
}

/* Ops whose result is a bare attr, wrapped as {"attr":...} in the results. */
static bool returns_attr(const char *op)
{
	static const char *const names[] = {"stat",  "write",   "truncate", "fsync",
					    "mkdir", "symlink", "link",     "chmod",
					    "chown", "utimens", "mknod"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(op, names[i]))
			return true;
	return false;
}

/* Every argument is a string, number, boolean or null ("data" excepted): an array or object
 * must fail the op, never become a placeholder path. */
static const char *bad_arg(cJSON *obj)
{
	cJSON *it;
	cJSON_ArrayForEach(it, obj)
	{
		if ((cJSON_IsArray(it) || cJSON_IsObject(it)) && strcmp(it->string, "data") != 0)
			return it->string;
	}
	return NULL;
}

static cJSON *run_op(struct agent *ag, cJSON *obj, const char *blob, size_t bloblen,
		     struct dbx_strbuf *out, size_t *list_entries)
{
	struct jargs *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->obj = obj;
	struct fs_args a = {jget, j};
	struct fs_op o = {.ag = ag, .a = &a};
	cJSON *opv = cJSON_GetObjectItemCaseSensitive(obj, "op");
	const char *op = cJSON_IsString(opv) ? opv->valuestring : NULL;
	const char *data;
	size_t dlen;
	struct fs_mem m;
	struct fs_src src;
	fs_op_fn fn;
	const char *bad = cJSON_IsObject(obj) ? bad_arg(obj) : NULL;
	size_t budget = out->len >= FS_BATCH_REPLY_MAX ? 0 : FS_BATCH_REPLY_MAX - out->len;
	if (!cJSON_IsObject(obj) || !op) {
		fs_fail(&o, EINVAL, "batch: each op is an object with a string \"op\"");
	} else if (bad) {
		fs_fail(&o, EINVAL, "batch: argument \"%.64s\" must be a string or a number", bad);
	} else if ((!strcmp(op, "read") || !strcmp(op, "xattr")) && budget == 0) {
		fs_fail(&o, EFBIG, "batch: the reply holds %u MiB of data already",
			FS_BATCH_REPLY_MAX >> 20);
	} else if (!strcmp(op, "list") && *list_entries >= FS_BATCH_LIST_MAX) {
		fs_fail(&o, EFBIG, "batch: more than %d list entries in one batch",
			FS_BATCH_LIST_MAX);
	} else if (!strcmp(op, "read")) {
		fs_read_into(&o, out, budget);
	} else if (!strcmp(op, "write") ||
		   (!strcmp(op, "xattr") && cJSON_GetObjectItemCaseSensitive(obj, "data"))) {
		if (blob_slice(&o, obj, blob, bloblen, &data, &dlen) == 0) {
			fs_src_mem(&src, &m, data, dlen);
			o.src = &src;
			cJSON *im = cJSON_GetObjectItemCaseSensitive(obj, "if_match");
			o.if_match = cJSON_IsString(im) ? im->valuestring : NULL;
			if (op[0] == 'w')
				fs_write_op(&o);
			else
				fs_xattr_set_op(&o);
		}
	} else if (!strcmp(op, "xattr")) {
		fs_xattr_get_into(&o, out);
	} else if ((fn = fs_op_find(op))) {
		fn(&o);
	} else {
		fs_fail(&o, EINVAL, "batch: unknown op \"%.64s\"", op);
	}
	free(j);
	if (!o.err && op && !strcmp(op, "list") && o.json)
		*list_entries += (size_t)cJSON_GetArraySize(
			cJSON_GetObjectItemCaseSensitive(o.json, "entries"));
	cJSON *res;
	if (o.err) {
		cJSON_Delete(o.json);
		res = cJSON_CreateObject();
		cJSON_AddStringToObject(res, "error", dbx_errno_name(o.err));
		cJSON_AddStringToObject(res, "message", o.msg);
	} else if (returns_attr(op)) {
		res = cJSON_CreateObject();
		cJSON_AddItemToObject(res, "attr", o.json);
	} else {
		res = o.json ? o.json : cJSON_CreateObject();
	}
	return res;
}

int fs_batch_prepare(struct req *r)
{
	int64_t clen = req_content_length(r);
	if (!agent_ctype_is(req_content_type(r), "application/x-dbx-batch")) {
		fs_reply_error(r, EINVAL, "batch: Content-Type must be application/x-dbx-batch");
		return 1;
	}
	if (clen > (int64_t)FS_BATCH_BODY_MAX) {
		char msg[128];
		snprintf(msg, sizeof(msg), "batch: body of %lld bytes over the limit (%u MiB)",
			 (long long)clen, FS_BATCH_BODY_MAX >> 20);
		fs_reply_error(r, E2BIG, msg);
		return 1;
	}
	req_set_body(r, BODY_BUFFER, FS_BATCH_BODY_MAX);
	return 0;
}

void fs_batch_route(struct req *r)
{
	size_t n = 0;
	const char *body = req_body(r, &n);
	if (!body) {
		body = "";
		n = 0;
	}
	const char *nl = memchr(body, '\n', n);
	size_t jlen = nl ? (size_t)(nl - body) : n;
	const char *blob = nl ? nl + 1 : body + n;
	size_t bloblen = n - (size_t)(blob - body);
	cJSON *req = cJSON_ParseWithLength(body, jlen);
	cJSON *ops = cJSON_GetObjectItemCaseSensitive(req, "ops");
	if (!cJSON_IsArray(ops)) {
		cJSON_Delete(req);
		fs_reply_error(r, EINVAL, "batch: the first line must be {\"ops\":[...]}");
		return;
	}
	if (cJSON_GetArraySize(ops) > FS_BATCH_OPS_MAX) {
		char msg[96];
		snprintf(msg, sizeof(msg), "batch: %d ops, at most %d", cJSON_GetArraySize(ops),
			 FS_BATCH_OPS_MAX);
		cJSON_Delete(req);
		fs_reply_error(r, E2BIG, msg);
		return;
	}
	struct dbx_strbuf out;
	size_t list_entries = 0;
	dbx_sb_init(&out, 0);
	cJSON *reply = cJSON_CreateObject();
	cJSON *results = cJSON_AddArrayToObject(reply, "results");
	cJSON *op;
	cJSON_ArrayForEach(op, ops)
	{
		cJSON *res = run_op(req_agent(r), op, blob, bloblen, &out, &list_entries);
		if (!res) {
			res = cJSON_CreateObject();
			cJSON_AddStringToObject(res, "error", "ENOMEM");
			cJSON_AddStringToObject(res, "message", "batch: out of memory");
		}
		cJSON_AddItemToArray(results, res);
	}
	cJSON_Delete(req);
	char *s = cJSON_PrintUnformatted(reply);
	cJSON_Delete(reply);
	if (!s) {
		free(s);
		dbx_sb_free(&out);
		fs_reply_error(r, ENOMEM, "batch: out of memory");
		return;
	}
	struct dbx_strbuf all;
	dbx_sb_init(&all, 0);
	int e = dbx_sb_reserve(&all, strlen(s) + 1 + out.len);
	if (e == 0) {
		dbx_sb_puts(&all, s);
		dbx_sb_putc(&all, '\n');
		dbx_sb_append(&all, out.data ? out.data : "", out.len);
	}
	free(s);
	dbx_sb_free(&out);
	if (e < 0) {
		dbx_sb_free(&all);
		fs_reply_error(r, ENOMEM, "batch: out of memory");
		return;
	}
	size_t len;
	char *data = dbx_sb_steal(&all, &len);
	events_stamp(r);
	req_reply_raw(r, 200, "application/x-dbx-batch", data, len);
}
