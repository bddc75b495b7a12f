/* base64 (RFC 4648 standard alphabet, padded): shared by the agent and libdevbox. */
#pragma once
#include <stddef.h>

/* Characters needed to encode @n bytes, without the NUL. */
#define DBX_B64_LEN(n) (((n) + 2) / 3 * 4)

/* Writes DBX_B64_LEN(n) characters and a NUL into out. */
void dbx_b64_encode(const void *in, size_t n, char *out);

/* Strict decoding: padding required, no whitespace, canonical trailing bits (like Rust's
 * base64::STANDARD).  out needs n / 4 * 3 bytes.  -EINVAL on bad input, with *why (if given)
 * describing it. */
int dbx_b64_decode(const char *s, size_t n, unsigned char *out, size_t *ret_len, char *why,
		   size_t whysz);
