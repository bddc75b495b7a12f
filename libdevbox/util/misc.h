/* misc: small pure helpers shared by the agent and the client side. Thread-safe. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* @n random characters from the official id alphabet "_-0123456789abcdefghijklmnopqrstuvwxyz",
 * NUL-terminated (out must hold n + 1 bytes). Uses getrandom(2). */
void dbx_random_id(char *out, size_t n);

/* "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds); out must hold 21 bytes. */
void dbx_fmt_time(time_t t, char out[21]);

/* Constant-time comparison: runs over the whole of @b whatever the contents. */
bool dbx_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Valid UTF-8? With @allow_trunc_tail a sequence cut off by the end of the buffer is accepted. */
bool dbx_utf8_valid(const char *s, size_t len, bool allow_trunc_tail);

/* Copy of @s with every invalid UTF-8 sequence replaced by U+FFFD; NUL-terminated, *ret_len
 * excludes the NUL. NULL on ENOMEM. Caller frees. */
char *dbx_utf8_lossy(const char *s, size_t len, size_t *ret_len);

/* errno <-> wire name ("ENOENT"). Unknown errno gives "EIO"; unknown name gives EIO.
 * Part of libdevbox's public API (devbox/common.h), hence exported; the rest of util is
 * hidden inside libdevbox.so. */
__attribute__((visibility("default"))) const char *dbx_errno_name(int err);
__attribute__((visibility("default"))) int dbx_errno_from_name(const char *name);

/* Monotonic clock in nanoseconds / milliseconds. */
uint64_t dbx_now_ns(void);
uint64_t dbx_now_ms(void);
