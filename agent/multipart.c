/* multipart.c: streaming multipart/form-data reader (see multipart.h).
 *
 * The body is read as if it started with "\r\n", so every delimiter, the first included, is
 * "\r\n--BOUNDARY". Part data is returned up to the last position where a delimiter cannot
 * start yet; the tail (dlen - 1 bytes at most) stays in the buffer until more bytes arrive. */
#include "multipart.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MP_BUF (256u << 10)

enum mp_state { MP_PREAMBLE, MP_AFTER_DELIM, MP_DATA, MP_DONE };

struct mp_reader {
	mp_source_fn src;
	void *ctx;
	char *buf;
	size_t cap, pos, end;
	bool eof;
	enum mp_state state;
	char delim[MP_BOUNDARY_MAX + 8];
	size_t dlen;
	struct mp_part part;
	const char *err;
};

int mp_boundary(const char *ct, char *out, size_t outsz)
{
	const char *p = ct;
	while ((p = strchr(p, ';'))) {
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncasecmp(p, "boundary=", 9) != 0)
			continue;
		p += 9;
		size_t n;
		if (*p == '"') {
			const char *q = strchr(p + 1, '"');
			if (!q)
				return -EINVAL;
			p++;
			n = (size_t)(q - p);
		} else {
			n = strcspn(p, "; \t");
		}
		if (n == 0 || n > MP_BOUNDARY_MAX || n >= outsz)
			return -EINVAL;
		memcpy(out, p, n);
		out[n] = '\0';
		return 0;
	}
	return -EINVAL;
}

static void part_clear(struct mp_part *p)
{
	free(p->name);
	free(p->filename);
	free(p->ctype);
	p->name = p->filename = p->ctype = NULL;
}

struct mp_reader *mp_new(const char *boundary, mp_source_fn src, void *ctx)
{
	size_t bl = strlen(boundary);
	if (bl == 0 || bl > MP_BOUNDARY_MAX)
		return NULL;
	struct mp_reader *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->cap = MP_BUF;
	m->buf = malloc(m->cap);
	if (!m->buf) {
		free(m);
		return NULL;
	}
	m->src = src;
	m->ctx = ctx;
	memcpy(m->delim, "\r\n--", 4);
	memcpy(m->delim + 4, boundary, bl);
	m->dlen = 4 + bl;
	memcpy(m->buf, "\r\n", 2);
	m->end = 2;
	return m;
}

void mp_free(struct mp_reader *m)
{
	if (!m)
		return;
	part_clear(&m->part);
	free(m->buf);
	free(m);
}

const char *mp_error(struct mp_reader *m)
{
	return m->err ? m->err : "malformed multipart body";
}

static int bad(struct mp_reader *m, const char *why)
{
	m->err = why;
	return -EBADMSG;
}

/* Reads more bytes behind the unconsumed ones. > 0, 0 at EOF, < 0 error. */
static ssize_t fill(struct mp_reader *m)
{
	if (m->pos) {
		memmove(m->buf, m->buf + m->pos, m->end - m->pos);
		m->end -= m->pos;
		m->pos = 0;
	}
	if (m->end == m->cap)
		return bad(m, "part headers too large");
	if (m->eof)
		return 0;
	ssize_t n = m->src(m->ctx, m->buf + m->end, m->cap - m->end);
	if (n < 0)
		return n;
	if (n == 0)
		m->eof = true;
	m->end += (size_t)n;
	return n;
}

/* Ensures @n unconsumed bytes; 1 if available, 0 at EOF first, < 0 error. */
static int need(struct mp_reader *m, size_t n)
{
	while (m->end - m->pos < n) {
		ssize_t r = fill(m);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return 0;
	}
	return 1;
}

static char *undo_escapes(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n) {
			char h[3] = {s[i + 1], s[i + 2], 0};
			if (strcasecmp(h, "22") == 0) {
				*o++ = '"';
				i += 2;
				continue;
			}
			if (strcasecmp(h, "0D") == 0) {
				*o++ = '\r';
				i += 2;
				continue;
			}
			if (strcasecmp(h, "0A") == 0) {
				*o++ = '\n';
				i += 2;
				continue;
			}
		}
		*o++ = s[i];
	}
	*o = '\0';
	return out;
}

/* Content-Disposition: form-data; name="x"; filename="a/b.txt" */
static void parse_disposition(struct mp_part *part, const char *v, const char *end)
{
	const char *p = v;
	while (p < end && *p != ';')
		p++;
	while (p < end) {
		p++; /* the ';' */
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		const char *k = p;
		while (p < end && *p != '=' && *p != ';')
			p++;
		const char *ke = p;
		while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
			ke--;
		if (p >= end || *p != '=')
			continue;
		p++;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		const char *vs, *ve;
		if (p < end && *p == '"') {
			vs = ++p;
			while (p < end && *p != '"')
				p++;
			ve = p;
			if (p < end)
				p++;
			while (p < end && *p != ';')
				p++;
		} else {
			vs = p;
			while (p < end && *p != ';')
				p++;
			ve = p;
			while (ve > vs && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
		}
		size_t kl = (size_t)(ke - k);
		if (kl == 4 && strncasecmp(k, "name", 4) == 0) {
			free(part->name);
			part->name = strndup(vs, (size_t)(ve - vs));
		} else if (kl == 8 && strncasecmp(k, "filename", 8) == 0) {
			free(part->filename);
			part->filename = undo_escapes(vs, (size_t)(ve - vs));
		}
	}
}

static int parse_headers(struct mp_reader *m, const char *h, size_t len)
{
	const char *p = h, *end = h + len;
	part_clear(&m->part);
	while (p < end) {
		const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!eol)
			eol = end;
		const char *colon = memchr(p, ':', (size_t)(eol - p));
		if (colon) {
			size_t kl = (size_t)(colon - p);
			const char *v = colon + 1;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			if (kl == 19 && strncasecmp(p, "Content-Disposition", 19) == 0)
				parse_disposition(&m->part, v, eol);
			else if (kl == 12 && strncasecmp(p, "Content-Type", 12) == 0) {
				free(m->part.ctype);
				m->part.ctype = strndup(v, (size_t)(eol - v));
			}
		}
		p = eol + 2;
	}
	if (!m->part.name)
		m->part.name = strdup("");
	if (!m->part.ctype)
		m->part.ctype = strdup("");
	if (!m->part.name || !m->part.ctype)
		return -ENOMEM;
	return 0;
}

ssize_t mp_data(struct mp_reader *m, const char **ret)
{
	if (m->state != MP_DATA)
		return 0;
	for (;;) {
		size_t avail = m->end - m->pos;
		const char *s = m->buf + m->pos;
		const char *d = avail >= m->dlen ? memmem(s, avail, m->delim, m->dlen) : NULL;
		if (d) {
			size_t n = (size_t)(d - s);
			if (n) {
				*ret = s;
				m->pos += n;
				return (ssize_t)n;
			}
			m->pos += m->dlen;
			m->state = MP_AFTER_DELIM;
			return 0;
		}
		if (avail >= m->dlen) {
			size_t n = avail - (m->dlen - 1);
			*ret = s;
			m->pos += n;
			return (ssize_t)n;
		}
		ssize_t r = fill(m);
		if (r < 0)
			return r;
		if (r == 0)
			return bad(m, "unexpected end of body inside a part");
	}
}

int mp_next(struct mp_reader *m, struct mp_part *part)
{
	int r;
	const char *dummy;
	ssize_t n;
	if (m->state == MP_DONE)
		return 0;
	while (m->state == MP_DATA)
		if ((n = mp_data(m, &dummy)) < 0)
			return (int)n;
	while (m->state == MP_PREAMBLE) {
		size_t avail = m->end - m->pos;
		const char *s = m->buf + m->pos;
		const char *d = avail >= m->dlen ? memmem(s, avail, m->delim, m->dlen) : NULL;
		if (d) {
			m->pos += (size_t)(d - s) + m->dlen;
			m->state = MP_AFTER_DELIM;
			break;
		}
		if (avail >= m->dlen)
			m->pos += avail - (m->dlen - 1);
		ssize_t f = fill(m);
		if (f < 0)
			return (int)f;
		if (f == 0)
			return bad(m, "no boundary delimiter found");
	}
	/* After a delimiter: "--" ends the body, else transport padding and CRLF. */
	if ((r = need(m, 2)) <= 0)
		return r < 0 ? r : bad(m, "unexpected end of body after a boundary");
	if (m->buf[m->pos] == '-' && m->buf[m->pos + 1] == '-') {
		m->state = MP_DONE;
		/* The epilogue is ignored (but read, so the connection stays in step). */
		m->pos = m->end;
		while ((n = fill(m)) > 0)
			m->pos = m->end;
		return n < 0 ? (int)n : 0;
	}
	for (;;) {
		if ((r = need(m, 2)) <= 0)
			return r < 0 ? r : bad(m, "unexpected end of body after a boundary");
		char c = m->buf[m->pos];
		if (c == ' ' || c == '\t') {
			m->pos++;
			continue;
		}
		if (c != '\r' || m->buf[m->pos + 1] != '\n')
			return bad(m, "garbage after a boundary delimiter");
		break;
	}
	/* Header block: from this CRLF up to the first CRLF CRLF (an empty block is "\r\n\r\n"). */
	size_t start = m->pos;
	for (;;) {
		size_t avail = m->end - start;
		const char *e = memmem(m->buf + start, avail, "\r\n\r\n", 4);
		if (e) {
			size_t hl = (size_t)(e - (m->buf + start));
			if (hl > MP_HEADER_MAX)
				return bad(m, "part headers too large");
			r = parse_headers(m, m->buf + start + 2, hl >= 2 ? hl - 2 : 0);
			if (r < 0)
				return r;
			m->pos = (size_t)(e - m->buf) + 4;
			m->state = MP_DATA;
			*part = m->part;
			return 1;
		}
		if (avail > MP_HEADER_MAX)
			return bad(m, "part headers too large");
		size_t off = start - m->pos;
		ssize_t f = fill(m);
		if (f < 0)
			return (int)f;
		if (f == 0)
			return bad(m, "unexpected end of body inside part headers");
		start = m->pos + off;
	}
}
