/* Unit tests for agent/multipart.c: the streaming multipart/form-data reader, fed in pieces of
 * every size so that delimiters split across reads are exercised. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "multipart.h"
#include "tap.h"

struct src {
	const char *data;
	size_t len, off, piece;
};

static ssize_t src_read(void *ctx, void *buf, size_t len)
{
	struct src *s = ctx;
	size_t n = s->len - s->off;
	if (n > s->piece)
		n = s->piece;
	if (n > len)
		n = len;
	memcpy(buf, s->data + s->off, n);
	s->off += n;
	return (ssize_t)n;
}

/* Reads every part: "name|filename|data;" concatenated into out. Returns mp_next's last rc. */
static int read_all(const char *body, size_t piece, char *out, size_t outsz)
{
	struct src s = {body, strlen(body), 0, piece};
	struct mp_reader *m = mp_new("XyZ", src_read, &s);
	struct mp_part part;
	int rc;
	out[0] = '\0';
	while ((rc = mp_next(m, &part)) == 1) {
		size_t o = strlen(out);
		snprintf(out + o, outsz - o, "%s|%s|", part.name,
			 part.filename ? part.filename : "(none)");
		const char *d;
		ssize_t n;
		while ((n = mp_data(m, &d)) > 0) {
			o = strlen(out);
			if (o + (size_t)n + 1 < outsz) {
				memcpy(out + o, d, (size_t)n);
				out[o + (size_t)n] = '\0';
			}
		}
		if (n < 0) {
			rc = (int)n;
			break;
		}
		o = strlen(out);
		snprintf(out + o, outsz - o, ";");
	}
	mp_free(m);
	return rc;
}

static const char body1[] =
	"preamble to ignore\r\n"
	"--XyZ\r\n"
	"Content-Disposition: form-data; name=\"targetDir\"\r\n\r\n"
	"/x\r\n"
	"--XyZ\r\n"
	"Content-Disposition: form-data; name=\"files\"; filename=\"./d/sub/a%22b;c.txt\"\r\n"
	"Content-Type: application/octet-stream\r\n\r\n"
	"line1\r\n-XyZ\r\n--Xy\r\n--XY\r\nend\r\n"
	"--XyZ--\r\n"
	"epilogue";

int main(void)
{
	char out[4096];
	static const size_t pieces[] = {1, 2, 3, 7, 13, 64, 4096};
	const char *want = "targetDir|(none)|/x;files|./d/sub/a\"b;c.txt|"
			   "line1\r\n-XyZ\r\n--Xy\r\n--XY\r\nend;";
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		int rc = read_all(body1, pieces[i], out, sizeof(out));
		ok(rc == 0, "pieces of %zu: clean end (rc %d)", pieces[i], rc);
		is_str(out, want, "pieces of %zu: parts, names, filename and bytes exact", pieces[i]);
	}

	static const char truncated[] = "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n"
					"data without an end";
	int rc = read_all(truncated, 5, out, sizeof(out));
	ok(rc == -EBADMSG, "a body without its closing delimiter is malformed (%d)", rc);

	static const char empty_parts[] = "--XyZ--\r\n";
	rc = read_all(empty_parts, 3, out, sizeof(out));
	ok(rc == 0 && out[0] == '\0', "no parts at all");

	char *big = malloc(MP_HEADER_MAX + 200);
	strcpy(big, "--XyZ\r\nX-Pad: ");
	memset(big + strlen(big), 'a', MP_HEADER_MAX);
	strcpy(big + 14 + MP_HEADER_MAX, "\r\n\r\nx\r\n--XyZ--\r\n");
	rc = read_all(big, 4096, out, sizeof(out));
	ok(rc == -EBADMSG, "a part header block over %u bytes is refused (%d)", MP_HEADER_MAX, rc);
	free(big);

	char b[MP_BOUNDARY_MAX + 1];
	ok(mp_boundary("multipart/form-data; boundary=abc123", b, sizeof(b)) == 0 &&
		   strcmp(b, "abc123") == 0,
	   "boundary parameter");
	ok(mp_boundary("multipart/form-data; charset=x; boundary=\"a b;c\"", b, sizeof(b)) == 0 &&
		   strcmp(b, "a b;c") == 0,
	   "quoted boundary parameter");
	ok(mp_boundary("multipart/form-data", b, sizeof(b)) == -EINVAL, "missing boundary refused");
	return tap_done();
}
