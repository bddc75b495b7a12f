/* files_write.c: POST /api/v1/files/write (JSON, multipart and raw modes) and
 * POST /api/v1/files/batch-upload (agent-api.md §2.2.3, §2.2.8).
 *
 * Threads: the prepare hooks run on the service thread (they only choose the body mode); the
 * handlers run on a worker and pull streamed bodies with req_body_read(). Every file is written
 * atomically through struct afile (temp file + rename), so a failed or oversized upload leaves
 * the old file as it was. A handler that fails before the body is consumed reads the rest of it
 * first and replies afterwards, so the connection stays usable for the next request. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "files.h"
#include "misc.h"
#include "multipart.h"
#include "path.h"

/* ---- body source ------------------------------------------------------------------------- */

struct body_src {
	struct req *r;
	int64_t clen; /* < 0: no Content-Length (empty body, see server.c) */
	uint64_t got;
};

static void body_src_init(struct body_src *b, struct req *r)
{
	b->r = r;
	b->clen = req_content_length(r);
	b->got = 0;
}

/* Stops at Content-Length by itself instead of waiting for the engine's end-of-body mark. */
static ssize_t body_read(void *ctx, void *buf, size_t len)
{
	struct body_src *b = ctx;
	if (b->clen <= 0 || b->got >= (uint64_t)b->clen)
		return 0;
	if (len > (uint64_t)b->clen - b->got)
		len = (size_t)((uint64_t)b->clen - b->got);
	ssize_t n = req_body_read(b->r, buf, len);
	if (n > 0)
		b->got += (uint64_t)n;
	return n;
}

/* body_read() without a copy: *p points into the engine's buffer until the next call. */
static ssize_t body_next(struct body_src *b, const char **p)
{
	if (b->clen <= 0 || b->got >= (uint64_t)b->clen)
		return 0;
	const void *d;
	ssize_t n = req_body_next(b->r, &d, (size_t)((uint64_t)b->clen - b->got));
	if (n > 0) {
		b->got += (uint64_t)n;
		*p = d;
	}
	return n;
}

/* Reads and drops the rest of the body. */
static void body_drain(struct body_src *b)
{
	char *buf = malloc(64 << 10);
	if (!buf)
		return;
	while (body_read(b, buf, 64 << 10) > 0)
		;
	free(buf);
}

static void add_str_lossy(cJSON *o, const char *key, const char *s)
{
	char *c = dbx_utf8_lossy(s, strlen(s), NULL);
	cJSON_AddStringToObject(o, key, c ? c : "");
	free(c);
}

static void reply_written(struct req *r, const char *rel, uint64_t size)
{
	char *abs = agent_abs(req_agent(r), rel);
	cJSON *o = cJSON_CreateObject();
	add_str_lossy(o, "path", abs ? abs : rel);
	cJSON_AddNumberToObject(o, "size", (double)size);
	free(abs);
	req_reply_ok(r, o);
}

/* The path error replies of req_resolve(), for code that must drain the body first. */
static void reply_norm_err(struct req *r, int e, const char *input)
{
	struct agent *ag = req_agent(r);
	if (e == -EXDEV)
		req_reply_err(r, ST_FORBIDDEN, "Path escapes the workspace %s: %s",
			      ag->cfg.workspace, input);
	else
		req_reply_err(r, ST_INVALID, "Path too long: %.64s...", input);
}

static void reply_write_err(struct req *r, int e, const char *rel)
{
	if (e == -EFBIG || e == -EMSGSIZE)
		req_reply_err(r, ST_INVALID, "File too large");
	else
		files_reply_errno(r, e, "write", rel);
}

/* ---- prepare hooks (service thread) --------------------------------------------------------- */

static bool is_multipart(const char *ct)
{
	return agent_ctype_is(ct, "multipart/form-data");
}

int files_write_prepare(struct req *r)
{
	uint64_t max = req_agent(r)->cfg.max_file_size;
	const char *ct = req_content_type(r);
	if (strncasecmp(ct, "application/json", 16) == 0) {
		/* base64 of a max-size file plus JSON overhead; bounded, and counted by the engine
		 * against AGENT_JSON_BUFFERED_MAX. */
		uint64_t lim = max / 3 * 4 + 4 + (1u << 20);
		req_set_body(r, BODY_BUFFER, lim);
	} else if (is_multipart(ct)) {
		req_set_body(r, BODY_STREAM, 0);
	} else {
		/* Raw: the body is the file, so Content-Length > max is refused before it is read.
		 */
		req_set_body(r, BODY_STREAM, max);
	}
	return 0;
}

int files_upload_prepare(struct req *r)
{
	char b[MP_BOUNDARY_MAX + 1];
	if (!is_multipart(req_content_type(r)) ||
	    mp_boundary(req_content_type(r), b, sizeof(b)) < 0) {
		req_reply_text(r, 400, "Invalid `boundary` for `multipart/form-data` request");
		return 1;
	}
	req_set_body(r, BODY_STREAM, 0);
	return 0;
}

/* ---- JSON mode --------------------------------------------------------------------------------
 */

static int write_all(struct agent *ag, const char *rel, const void *data, size_t len)
{
	struct afile af;
	int e = af_open(&af, ag, rel);
	if (e < 0)
		return e;
	e = af_write(&af, data, len);
	if (e < 0) {
		af_abort(&af);
		return e;
	}
	return af_commit(&af);
}

static void write_json(struct req *r)
{
	struct agent *ag = req_agent(r);
	size_t blen;
	const char *body = req_body(r, &blen);
	const char *end = NULL;
	unsigned char *dec = NULL;
	char rel[PATH_MAX];
	cJSON *j = cJSON_ParseWithLengthOpts(body, blen, &end, 0);
	if (!j || !cJSON_IsObject(j)) {
		req_reply_err(r, ST_INVALID, "Invalid JSON body: %s at byte %zu",
			      j ? "expected an object" : "syntax error",
			      j || !end ? 0 : (size_t)(end - body));
		goto out;
	}
	cJSON *path = cJSON_GetObjectItemCaseSensitive(j, "path");
	cJSON *content = cJSON_GetObjectItemCaseSensitive(j, "content");
	cJSON *enc = cJSON_GetObjectItemCaseSensitive(j, "encoding");
	if (!cJSON_IsString(path) || !cJSON_IsString(content)) {
		const char *f = !cJSON_IsString(path) ? "path" : "content";
		cJSON *it = !cJSON_IsString(path) ? path : content;
		req_reply_err(r, ST_INVALID, "Invalid JSON body: %s field `%s`",
			      it ? "invalid type, expected a string for" : "missing", f);
		goto out;
	}
	if (enc && !cJSON_IsNull(enc) && !cJSON_IsString(enc)) {
		req_reply_err(r, ST_INVALID,
			      "Invalid JSON body: invalid type, expected a string for field "
			      "`encoding`");
		goto out;
	}
	const char *data = content->valuestring;
	size_t len = strlen(data);
	if (cJSON_IsString(enc) && strcmp(enc->valuestring, "base64") == 0) {
		char why[128];
		dec = malloc(len / 4 * 3 + 3);
		if (!dec) {
			req_reply_errno(r, ENOMEM, "write");
			goto out;
		}
		if (dbx_b64_decode(data, len, dec, &len, why, sizeof(why)) < 0) {
			req_reply_err(r, ST_INVALID, "Invalid base64: %s", why);
			goto out;
		}
		data = (const char *)dec;
	}
	if (len > ag->cfg.max_file_size) {
		req_reply_err(r, ST_INVALID, "File too large");
		goto out;
	}
	if (req_resolve(r, path->valuestring, rel))
		goto out;
	int e = write_all(ag, rel, data, len);
	if (e < 0)
		reply_write_err(r, e, rel);
	else
		reply_written(r, rel, len);
out:
	free(dec);
	cJSON_Delete(j);
}

/* ---- raw mode ------------------------------------------------------------------------------ */

/* Streams the body (or the current multipart part when @mp) into @rel. */
static int stream_to(struct agent *ag, const char *rel, struct body_src *b, struct mp_reader *mp,
		     uint64_t *ret_size)
{
	struct afile af;
	int e = af_open(&af, ag, rel);
	if (e < 0)
		return e;
	for (;;) {
		const char *p = NULL;
		ssize_t n = mp ? mp_data(mp, &p) : body_next(b, &p);
		if (n == 0)
			break;
		e = n < 0 ? (int)n : af_write(&af, p, (size_t)n);
		if (e < 0) {
			af_abort(&af);
			return e;
		}
	}
	*ret_size = af.size;
	return af_commit(&af);
}

static void write_raw(struct req *r, struct body_src *b)
{
	struct agent *ag = req_agent(r);
	const char *path = req_query(r, "path");
	char rel[PATH_MAX];
	uint64_t size = 0;
	int e;
	if (!path) {
		body_drain(b);
		req_reply_err(r, ST_INVALID, "Path parameter required");
		return;
	}
	if ((e = files_norm(ag, path, rel)) < 0) {
		body_drain(b);
		reply_norm_err(r, e, path);
		return;
	}
	e = stream_to(ag, rel, b, NULL, &size);
	if (e < 0) {
		if (e != -EMSGSIZE)
			body_drain(b);
		reply_write_err(r, e, rel);
		return;
	}
	reply_written(r, rel, size);
}

/* ---- multipart mode ---------------------------------------------------------------------- */

static bool is_file_field(const struct mp_part *p)
{
	return p->filename && (strcmp(p->name, "file") == 0 || strcmp(p->name, "files") == 0);
}

/* A small text field's value (bounded); -EMSGSIZE when longer than @max. */
static int read_field(struct mp_reader *mp, char *out, size_t max)
{
	size_t len = 0;
	const char *p;
	ssize_t n;
	while ((n = mp_data(mp, &p)) > 0) {
		if (len + (size_t)n >= max)
			return -EMSGSIZE;
		memcpy(out + len, p, (size_t)n);
		len += (size_t)n;
	}
	out[len] = '\0';
	return n < 0 ? (int)n : 0;
}

static void write_multipart(struct req *r, struct body_src *b)
{
	struct agent *ag = req_agent(r);
	char boundary[MP_BOUNDARY_MAX + 1];
	char *path = NULL, rel[PATH_MAX], last[PATH_MAX] = "";
	uint64_t size = 0;
	struct mp_part part;
	struct mp_reader *mp = NULL;
	int e = 0;
	bool wrote = false;
	if (mp_boundary(req_content_type(r), boundary, sizeof(boundary)) < 0) {
		body_drain(b);
		req_reply_err(r, ST_INVALID, "Invalid multipart body: missing boundary");
		return;
	}
	mp = mp_new(boundary, body_read, b);
	path = malloc(PATH_MAX);
	if (!mp || !path) {
		body_drain(b);
		req_reply_errno(r, ENOMEM, "write");
		goto out;
	}
	path[0] = '\0';
	while ((e = mp_next(mp, &part)) == 1) {
		const char *target;
		if (!part.filename && strcmp(part.name, "path") == 0) {
			e = read_field(mp, path, PATH_MAX);
			if (e == -EMSGSIZE) {
				body_drain(b);
				req_reply_err(r, ST_INVALID, "Path too long");
				goto out;
			}
			if (e < 0)
				break;
			continue;
		}
		if (!is_file_field(&part))
			continue;
		/* A path field seen before the file wins over the part's filename. */
		target = path[0] ? path : part.filename;
		if ((e = files_norm(ag, target, rel)) < 0) {
			body_drain(b);
			reply_norm_err(r, e, target);
			goto out;
		}
		e = stream_to(ag, rel, b, mp, &size);
		if (e == -EBADMSG || e == -EPIPE)
			break;
		if (e < 0) {
			body_drain(b);
			reply_write_err(r, e, rel);
			goto out;
		}
		snprintf(last, sizeof(last), "%s", rel);
		wrote = true;
	}
	if (e < 0) {
		body_drain(b);
		req_reply_err(r, ST_INVALID, "Invalid multipart body: %s",
			      e == -EBADMSG ? mp_error(mp) : strerror(-e));
	} else if (!wrote) {
		req_reply_err(r, ST_INVALID, "No file found in multipart form");
	} else {
		reply_written(r, last, size);
	}
out:
	free(path);
	mp_free(mp);
}

void files_write(struct req *r)
{
	const char *ct = req_content_type(r);
	struct body_src b;
	body_src_init(&b, r);
	if (strncasecmp(ct, "application/json", 16) == 0)
		write_json(r);
	else if (is_multipart(ct))
		write_multipart(r, &b);
	else
		write_raw(r, &b);
}

/* ---- POST /api/v1/files/batch-upload -------------------------------------------------------- */

static void add_result_err(cJSON *results, const char *path, int err)
{
	char buf[160];
	cJSON *o = cJSON_CreateObject();
	add_str_lossy(o, "path", path);
	cJSON_AddBoolToObject(o, "success", false);
	cJSON_AddStringToObject(o, "error", files_strerror(err, buf));
	cJSON_AddItemToArray(results, o);
}

void files_batch_upload(struct req *r)
{
	struct agent *ag = req_agent(r);
	char boundary[MP_BOUNDARY_MAX + 1], rel[PATH_MAX];
	struct body_src b;
	struct mp_part part;
	struct mp_reader *mp;
	cJSON *results = cJSON_CreateArray();
	int total = 0, ok = 0, e;
	body_src_init(&b, r);
	mp_boundary(req_content_type(r), boundary, sizeof(boundary)); /* checked in prepare */
	mp = mp_new(boundary, body_read, &b);
	if (!mp) {
		body_drain(&b);
		req_reply_errno(r, ENOMEM, "batch-upload");
		goto out;
	}
	while ((e = mp_next(mp, &part)) == 1) {
		if (strcmp(part.name, "file") != 0 && strcmp(part.name, "files") != 0)
			continue;
		total++;
		if (!part.filename || !part.filename[0]) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "path", part.filename ? part.filename : "");
			cJSON_AddBoolToObject(o, "success", false);
			cJSON_AddStringToObject(
				o, "error", "Missing filename in the part's Content-Disposition");
			cJSON_AddItemToArray(results, o);
			continue;
		}
		uint64_t size = 0;
		e = files_norm(ag, part.filename, rel);
		if (e == 0)
			e = stream_to(ag, rel, &b, mp, &size);
		if (e == -EBADMSG || e == -EPIPE || e == -ENOMEM)
			break;
		if (e < 0) {
			add_result_err(results, part.filename, e);
			continue;
		}
		char *abs = agent_abs(ag, rel);
		cJSON *o = cJSON_CreateObject();
		add_str_lossy(o, "path", abs ? abs : rel);
		cJSON_AddBoolToObject(o, "success", true);
		cJSON_AddNumberToObject(o, "size", (double)size);
		cJSON_AddItemToArray(results, o);
		free(abs);
		ok++;
	}
	if (e < 0) {
		body_drain(&b);
		req_reply_err(r, ST_INVALID, "Invalid multipart body: %s",
			      e == -EBADMSG ? mp_error(mp) : strerror(-e));
		goto out;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "results", results);
	cJSON_AddNumberToObject(o, "totalFiles", total);
	cJSON_AddNumberToObject(o, "successCount", ok);
	results = NULL;
	req_reply_ok(r, o);
out:
	cJSON_Delete(results);
	mp_free(mp);
}
