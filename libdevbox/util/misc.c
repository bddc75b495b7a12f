#include "misc.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const char id_alphabet[] = "_-0123456789abcdefghijklmnopqrstuvwxyz";

void dbx_random_id(char *out, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char rnd[64];
		ssize_t got = getrandom(rnd, sizeof(rnd), 0);
		if (got <= 0)
			continue;
		for (ssize_t k = 0; k < got && i < n; k++) {
			/* 38 symbols: reject 228..255 so every symbol is equally likely. */
			if (rnd[k] >= 228)
				continue;
			out[i++] = id_alphabet[rnd[k] % 38];
		}
	}
	out[n] = '\0';
}

void dbx_fmt_time(time_t t, char out[21])
{
	struct tm tm;
	/* Years past 9999 (or before 0) do not fit the wire format: clamp. */
	if (!gmtime_r(&t, &tm) || tm.tm_year > 9999 - 1900 || tm.tm_year < -1900) {
		snprintf(out, 21, "%s", t < 0 ? "0000-01-01T00:00:00Z" : "9999-12-31T23:59:59Z");
		return;
	}
	if (strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, 21, "9999-12-31T23:59:59Z");
}

bool dbx_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
	const volatile unsigned char *pa = a, *pb = b;
	unsigned char diff = (unsigned char)(alen != blen);
	for (size_t i = 0; i < blen; i++) {
		unsigned char ca = alen ? pa[i % alen] : 0;
		diff |= (unsigned char)(ca ^ pb[i]);
	}
	return diff == 0 && alen == blen;
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 if invalid, -1 if truncated by the end. */
static int utf8_seq(const unsigned char *s, size_t left)
{
	unsigned char c = s[0];
	int n;
	unsigned int cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	for (int i = 1; i < n; i++) {
		if ((size_t)i >= left)
			return -1;
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

bool dbx_utf8_valid(const char *s, size_t len, bool allow_trunc_tail)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		int n = utf8_seq(p + i, len - i);
		if (n == -1)
			return allow_trunc_tail;
		if (n == 0)
			return false;
		i += (size_t)n;
	}
	return true;
}

char *dbx_utf8_lossy(const char *s, size_t len, size_t *ret_len)
{
	const unsigned char *p = (const unsigned char *)s;
	if (len > (SIZE_MAX - 1) / 3)
		return NULL;
	char *out = malloc(len * 3 + 1);
	if (!out)
		return NULL;
	size_t o = 0, i = 0;
	while (i < len) {
		if (p[i] < 0x80) {
			out[o++] = (char)p[i++];
			continue;
		}
		int n = utf8_seq(p + i, len - i);
		if (n > 0) {
			memcpy(out + o, p + i, (size_t)n);
			o += (size_t)n;
			i += (size_t)n;
		} else {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		}
	}
	out[o] = '\0';
	if (ret_len)
		*ret_len = o;
	return out;
}

static const struct {
	int err;
	const char *name;
} errno_names[] = {
	{EPERM, "EPERM"},         {ENOENT, "ENOENT"},       {ESRCH, "ESRCH"},
	{EINTR, "EINTR"},         {EIO, "EIO"},             {ENXIO, "ENXIO"},
	{E2BIG, "E2BIG"},         {ENOEXEC, "ENOEXEC"},     {EBADF, "EBADF"},
	{ECHILD, "ECHILD"},       {EAGAIN, "EAGAIN"},       {ENOMEM, "ENOMEM"},
	{EACCES, "EACCES"},       {EFAULT, "EFAULT"},       {EBUSY, "EBUSY"},
	{EEXIST, "EEXIST"},       {EXDEV, "EXDEV"},         {ENODEV, "ENODEV"},
	{ENOTDIR, "ENOTDIR"},     {EISDIR, "EISDIR"},       {EINVAL, "EINVAL"},
	{ENFILE, "ENFILE"},       {EMFILE, "EMFILE"},       {ENOTTY, "ENOTTY"},
	{ETXTBSY, "ETXTBSY"},     {EFBIG, "EFBIG"},         {ENOSPC, "ENOSPC"},
	{ESPIPE, "ESPIPE"},       {EROFS, "EROFS"},         {EMLINK, "EMLINK"},
	{EPIPE, "EPIPE"},         {ERANGE, "ERANGE"},       {EDEADLK, "EDEADLK"},
	{ENAMETOOLONG, "ENAMETOOLONG"}, {ENOLCK, "ENOLCK"}, {ENOSYS, "ENOSYS"},
	{ENOTEMPTY, "ENOTEMPTY"}, {ELOOP, "ELOOP"},         {ENODATA, "ENODATA"},
	{EOVERFLOW, "EOVERFLOW"}, {EOPNOTSUPP, "EOPNOTSUPP"}, {ETIMEDOUT, "ETIMEDOUT"},
	{ECONNREFUSED, "ECONNREFUSED"}, {ECONNRESET, "ECONNRESET"}, {ECANCELED, "ECANCELED"},
	{EDQUOT, "EDQUOT"},       {ESTALE, "ESTALE"},       {EMSGSIZE, "EMSGSIZE"},
	{ENOTSUP, "ENOTSUP"},     {EPROTO, "EPROTO"},       {EBADMSG, "EBADMSG"},
	{EWOULDBLOCK, "EWOULDBLOCK"}, {EHOSTUNREACH, "EHOSTUNREACH"}, {ENETUNREACH, "ENETUNREACH"},
	{ECONNABORTED, "ECONNABORTED"}, {ENOTCONN, "ENOTCONN"}, {EKEYREJECTED, "EKEYREJECTED"},
};

const char *dbx_errno_name(int err)
{
	if (err < 0)
		err = -err;
	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (errno_names[i].err == err)
			return errno_names[i].name;
	return "EIO";
}

int dbx_errno_from_name(const char *name)
{
	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (strcmp(errno_names[i].name, name) == 0)
			return errno_names[i].err;
	return EIO;
}

uint64_t dbx_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t dbx_now_ms(void)
{
	return dbx_now_ns() / 1000000ull;
}
