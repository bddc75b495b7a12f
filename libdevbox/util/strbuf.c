#include "strbuf.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void dbx_sb_init(struct dbx_strbuf *sb, size_t limit)
{
	sb->data = NULL;
	sb->len = 0;
	sb->cap = 0;
	sb->limit = limit;
}

void dbx_sb_free(struct dbx_strbuf *sb)
{
	free(sb->data);
	sb->data = NULL;
	sb->len = sb->cap = 0;
}

void dbx_sb_reset(struct dbx_strbuf *sb)
{
	sb->len = 0;
	if (sb->data)
		sb->data[0] = '\0';
}

int dbx_sb_reserve(struct dbx_strbuf *sb, size_t extra)
{
	if (extra > SIZE_MAX / 2 - sb->len)
		return -EMSGSIZE;
	size_t need = sb->len + extra + 1;
	if (sb->limit && need - 1 > sb->limit)
		return -EMSGSIZE;
	if (need <= sb->cap)
		return 0;
	size_t cap = sb->cap ? sb->cap : 256;
	while (cap < need)
		cap *= 2;
	char *p = realloc(sb->data, cap);
	if (!p)
		return -ENOMEM;
	sb->data = p;
	sb->cap = cap;
	return 0;
}

int dbx_sb_append(struct dbx_strbuf *sb, const void *data, size_t len)
{
	int r = dbx_sb_reserve(sb, len);
	if (r < 0)
		return r;
	if (len)
		memcpy(sb->data + sb->len, data, len);
	sb->len += len;
	sb->data[sb->len] = '\0';
	return 0;
}

int dbx_sb_puts(struct dbx_strbuf *sb, const char *s)
{
	return dbx_sb_append(sb, s, strlen(s));
}

int dbx_sb_putc(struct dbx_strbuf *sb, char c)
{
	return dbx_sb_append(sb, &c, 1);
}

int dbx_sb_vprintf(struct dbx_strbuf *sb, const char *fmt, va_list ap)
{
	va_list ap2;
	va_copy(ap2, ap);
	int n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0)
		return -EINVAL;
	int r = dbx_sb_reserve(sb, (size_t)n);
	if (r < 0)
		return r;
	vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
	sb->len += (size_t)n;
	return 0;
}

int dbx_sb_printf(struct dbx_strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = dbx_sb_vprintf(sb, fmt, ap);
	va_end(ap);
	return r;
}

char *dbx_sb_steal(struct dbx_strbuf *sb, size_t *ret_len)
{
	char *p = sb->data;
	if (!p) {
		p = calloc(1, 1);
	}
	if (ret_len)
		*ret_len = sb->len;
	sb->data = NULL;
	sb->len = sb->cap = 0;
	return p;
}
