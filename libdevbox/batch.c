/* SPDX-License-Identifier: Apache-2.0 */
/*
 * batch: many small /fs/v1 operations in one POST /fs/v1/batch (agent/PROTOCOL.md §2.3).
 *
 * A batch collects ops as a cJSON array plus the blob their write data lives in; run() sends
 * "<json>\n<blob>" and keeps the reply, whose blob the read results point into (borrowed by
 * dbx_batch_result()).  One thread per batch; no locking.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_OPS_MAX   1024
#define BATCH_BODY_MAX  ((size_t)16 << 20)
#define BATCH_REPLY_MAX ((size_t)80 << 20) /* 64 MiB of data plus the results line */

struct bres {
	int err; /* 0 or -errno */
	bool has_attr;
	struct dbx_attr attr;
	const char *data; /* into reply */
	size_t len;
	const char *msg; /* the agent's message for err, borrowed from reply_json */
};

struct dbx_batch {
	cJSON *ops;             /* the request's "ops" array */
	int n;                  /* ops added */
	bool readonly;          /* only stat/read ops: the batch may be retried */
	struct dbx_strbuf blob; /* write data, bounded by BATCH_BODY_MAX */
	char *reply;            /* the last run's reply body (owned) */
	size_t reply_len;
	cJSON *reply_json; /* the parsed results line (owns the messages) */
	struct bres *res;  /* n results after a successful run */
	bool ran;
};

int dbx_batch_new(dbx_batch **ret_batch)
{
	dbx_batch *b = calloc(1, sizeof(*b));
	*ret_batch = NULL;
	if (!b)
		return dbx__error(ENOMEM, "batch: out of memory");
	b->ops = cJSON_CreateArray();
	if (!b->ops) {
		free(b);
		return dbx__error(ENOMEM, "batch: out of memory");
	}
	b->readonly = true;
	dbx_sb_init(&b->blob, BATCH_BODY_MAX);
	*ret_batch = b;
	return 0;
}

dbx_batch *dbx_batch_free(dbx_batch *b)
{
	if (!b)
		return NULL;
	cJSON_Delete(b->ops);
	dbx_sb_free(&b->blob);
	free(b->reply);
	cJSON_Delete(b->reply_json);
	free(b->res);
	free(b);
	return NULL;
}

int dbx__batch_count(const dbx_batch *b)
{
	return b->n;
}

/* A new op object {"op":name,"path":path} appended to the batch, or NULL (error set). */
static cJSON *add_op(dbx_batch *b, const char *name, const char *path, int *ret_err)
{
	cJSON *o;
	*ret_err = 0;
	if (b->n >= BATCH_OPS_MAX) {
		*ret_err = dbx__error(E2BIG, "batch: more than %d operations", BATCH_OPS_MAX);
		return NULL;
	}
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "op", name) ||
	    !cJSON_AddStringToObject(o, "path", path && *path ? path : ".")) {
		cJSON_Delete(o);
		*ret_err = dbx__error(ENOMEM, "batch: out of memory");
		return NULL;
	}
	return o;
}

static int commit_op(dbx_batch *b, cJSON *o)
{
	if (!cJSON_AddItemToArray(b->ops, o)) {
		cJSON_Delete(o);
		return dbx__error(ENOMEM, "batch: out of memory");
	}
	return b->n++;
}

static bool num(cJSON *o, const char *k, double v)
{
	return cJSON_AddNumberToObject(o, k, v) != NULL;
}

int dbx_batch_stat(dbx_batch *b, const char *path)
{
	int r;
	cJSON *o = add_op(b, "stat", path, &r);
	return o ? commit_op(b, o) : r;
}

int dbx_batch_read(dbx_batch *b, const char *path, uint64_t off, size_t len)
{
	int r;
	cJSON *o = add_op(b, "read", path, &r);
	if (!o)
		return r;
	if (!num(o, "offset", (double)off) || !num(o, "length", (double)len)) {
		cJSON_Delete(o);
		return dbx__error(ENOMEM, "batch: out of memory");
	}
	return commit_op(b, o);
}

int dbx_batch_write(dbx_batch *b, const char *path, const void *data, size_t len,
		    const struct dbx_write_opts *opts)
{
	static const struct dbx_write_opts defaults = {0};
	size_t at = b->blob.len;
	int r;

	if (!opts)
		opts = &defaults;
	if (len > BATCH_BODY_MAX - at)
		return dbx__error(E2BIG, "batch: write %s: more than %zu MiB of data in one batch",
				  path && *path ? path : ".", BATCH_BODY_MAX >> 20);
	cJSON *o = add_op(b, "write", path, &r);
	if (!o)
		return r;
	cJSON *d = cJSON_AddArrayToObject(o, "data");
	bool ok = d && cJSON_AddItemToArray(d, cJSON_CreateNumber((double)at)) &&
		  cJSON_AddItemToArray(d, cJSON_CreateNumber((double)len)) &&
		  num(o, "offset", (double)opts->offset) &&
		  cJSON_AddBoolToObject(o, "truncate", opts->truncate) &&
		  cJSON_AddBoolToObject(o, "create", !opts->no_create) &&
		  cJSON_AddBoolToObject(o, "excl", opts->excl) &&
		  cJSON_AddBoolToObject(o, "atomic", opts->atomic) &&
		  cJSON_AddBoolToObject(o, "fsync", opts->fsync) &&
		  num(o, "mode", (double)(opts->mode ? opts->mode & 07777 : 0644)) &&
		  (!opts->if_match || cJSON_AddStringToObject(o, "if_match", opts->if_match));
	if (!ok || dbx_sb_append(&b->blob, data ? data : "", len) < 0) {
		b->blob.len = at;
		cJSON_Delete(o);
		return dbx__error(ENOMEM, "batch: out of memory");
	}
	r = commit_op(b, o);
	if (r < 0)
		b->blob.len = at;
	else
		b->readonly = false;
	return r;
}

int dbx_batch_mkdir(dbx_batch *b, const char *path, uint32_t mode)
{
	int r;
	cJSON *o = add_op(b, "mkdir", path, &r);
	if (!o)
		return r;
	if (!num(o, "mode", (double)(mode ? mode & 07777 : 0755))) {
		cJSON_Delete(o);
		return dbx__error(ENOMEM, "batch: out of memory");
	}
	r = commit_op(b, o);
	if (r >= 0)
		b->readonly = false;
	return r;
}

int dbx_batch_unlink(dbx_batch *b, const char *path)
{
	int r;
	cJSON *o = add_op(b, "unlink", path, &r);
	if (!o)
		return r;
	r = commit_op(b, o);
	if (r >= 0)
		b->readonly = false;
	return r;
}

int dbx__batch_parse_reply(dbx_batch *b, const char *body, size_t len)
{
	const char *nl = memchr(body, '\n', len);
	size_t jlen = nl ? (size_t)(nl - body) : len;
	const char *blob = nl ? nl + 1 : body + len;
	size_t bloblen = len - (size_t)(blob - body);
	cJSON *j = cJSON_ParseWithLength(body, jlen), *e;
	const cJSON *results = cJSON_GetObjectItemCaseSensitive(j, "results");
	struct bres *res = NULL;
	int i = 0, r = 0;

	if (!cJSON_IsArray(results) || cJSON_GetArraySize(results) != b->n) {
		r = dbx__error(EPROTO, "batch: the agent's reply does not hold %d results", b->n);
		goto out;
	}
	res = calloc(b->n > 0 ? (size_t)b->n : 1, sizeof(*res));
	if (!res) {
		r = dbx__error(ENOMEM, "batch: out of memory");
		goto out;
	}
	cJSON_ArrayForEach(e, results)
	{
		struct bres *x = &res[i++];
		const char *err = dbx__json_str(e, "error");
		const cJSON *attr = cJSON_GetObjectItemCaseSensitive(e, "attr");
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(e, "data");

		if (!cJSON_IsObject(e)) {
			r = dbx__error(EPROTO, "batch: result %d is not an object", i - 1);
			goto out;
		}
		if (err) {
			x->err = -dbx_errno_from_name(err);
			x->msg = dbx__json_str(e, "message");
			continue;
		}
		if (attr) {
			r = dbx__attr_from_json(attr, &x->attr, NULL);
			if (r < 0)
				goto out;
			x->has_attr = true;
		}
		if (data) {
			const cJSON *a = cJSON_GetArrayItem(data, 0),
				    *l = cJSON_GetArrayItem(data, 1);
			if (!cJSON_IsArray(data) || cJSON_GetArraySize(data) != 2 ||
			    !cJSON_IsNumber(a) || !cJSON_IsNumber(l) || a->valuedouble < 0 ||
			    l->valuedouble < 0 ||
			    a->valuedouble + l->valuedouble > (double)bloblen) {
				r = dbx__error(EPROTO,
					       "batch: result %d points outside the reply "
					       "data",
					       i - 1);
				goto out;
			}
			x->data = blob + (size_t)a->valuedouble;
			x->len = (size_t)l->valuedouble;
		}
	}
	free(b->res);
	b->res = res;
	res = NULL;
	cJSON_Delete(b->reply_json);
	b->reply_json = j;
	j = NULL;
	b->ran = true;
out:
	free(res);
	cJSON_Delete(j);
	return r;
}

int dbx_batch_run(dbx_client *c, dbx_batch *b)
{
	cJSON *req = NULL;
	char *line = NULL;
	struct dbx_strbuf body = DBX_STRBUF_INIT;
	struct dbx__resp resp = {0};
	int r;

	b->ran = false;
	free(b->reply);
	b->reply = NULL;
	b->reply_len = 0;
	req = cJSON_CreateObject();
	if (!req || !cJSON_AddItemReferenceToObject(req, "ops", b->ops)) {
		r = dbx__error(ENOMEM, "batch: out of memory");
		goto out;
	}
	line = cJSON_PrintUnformatted(req);
	if (!line) {
		r = dbx__error(ENOMEM, "batch: out of memory");
		goto out;
	}
	dbx_sb_init(&body, BATCH_BODY_MAX);
	if (dbx_sb_puts(&body, line) < 0 || dbx_sb_putc(&body, '\n') < 0 ||
	    dbx_sb_append(&body, b->blob.data ? b->blob.data : "", b->blob.len) < 0) {
		r = dbx__error(E2BIG, "batch: the request exceeds %zu MiB", BATCH_BODY_MAX >> 20);
		goto out;
	}
	struct dbx__req rq = {
		.method = "POST",
		.path = "/fs/v1/batch",
		.content_type = "application/x-dbx-batch",
		.body = body.data,
		.body_len = body.len,
		.idempotent = b->readonly,
		.stream = body.len > ((size_t)1 << 20),
		.max_body = BATCH_REPLY_MAX,
		.op = "batch",
	};
	r = dbx__request(c, &rq, &resp);
	if (r < 0)
		goto out;
	b->reply = resp.body;
	b->reply_len = resp.len;
	resp.body = NULL;
	r = dbx__batch_parse_reply(b, b->reply, b->reply_len);
out:
	dbx__resp_free(&resp);
	dbx_sb_free(&body);
	free(line);
	cJSON_Delete(req);
	return r;
}

int dbx_batch_result(dbx_batch *b, int index, struct dbx_attr *ret_attr, const void **ret_data,
		     size_t *ret_len)
{
	if (!b->ran)
		return dbx__error(EINVAL, "batch: no results (the batch has not run)");
	if (index < 0 || index >= b->n)
		return dbx__error(EINVAL, "batch: no operation %d (the batch has %d)", index, b->n);
	const struct bres *x = &b->res[index];
	if (ret_attr) {
		if (x->has_attr)
			*ret_attr = x->attr;
		else
			memset(ret_attr, 0, sizeof(*ret_attr));
	}
	if (ret_data)
		*ret_data = x->data;
	if (ret_len)
		*ret_len = x->len;
	if (x->err)
		return dbx__error(-x->err, "%s", x->msg && *x->msg ? x->msg : strerror(-x->err));
	return 0;
}
