/* strbuf: a growable byte buffer with a hard size limit.
 *
 * Owns its data; not thread-safe (one owner at a time). Every buffer that grows from network
 * input is created with a limit; an append past the limit fails with -EMSGSIZE and leaves the
 * buffer unchanged. The data is always NUL-terminated (the NUL is not counted in len). */
#pragma once
#include <stdarg.h>
#include <stddef.h>

struct dbx_strbuf {
	char *data;
	size_t len;
	size_t cap;
	size_t limit; /* 0 = no limit */
};

#define DBX_STRBUF_INIT {NULL, 0, 0, 0}

void dbx_sb_init(struct dbx_strbuf *sb, size_t limit);
void dbx_sb_free(struct dbx_strbuf *sb);
void dbx_sb_reset(struct dbx_strbuf *sb);
int dbx_sb_reserve(struct dbx_strbuf *sb, size_t extra);
int dbx_sb_append(struct dbx_strbuf *sb, const void *data, size_t len);
int dbx_sb_puts(struct dbx_strbuf *sb, const char *s);
int dbx_sb_putc(struct dbx_strbuf *sb, char c);
int dbx_sb_printf(struct dbx_strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dbx_sb_vprintf(struct dbx_strbuf *sb, const char *fmt, va_list ap);
/* Takes the data out; the buffer is empty afterwards. The caller frees the result. */
char *dbx_sb_steal(struct dbx_strbuf *sb, size_t *ret_len);
