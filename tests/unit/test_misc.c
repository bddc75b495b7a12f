/* Unit tests for libdevbox/util/misc.c and strbuf.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "misc.h"
#include "strbuf.h"
#include "tap.h"

int main(void)
{
	char id[9];
	dbx_random_id(id, 8);
	ok(strlen(id) == 8 && strspn(id, "_-0123456789abcdefghijklmnopqrstuvwxyz") == 8,
	   "random id uses the official alphabet (%s)", id);
	char id2[9];
	dbx_random_id(id2, 8);
	ok(strcmp(id, id2) != 0, "two ids differ");

	char ts[21];
	dbx_fmt_time(0, ts);
	is_str(ts, "1970-01-01T00:00:00Z", "timestamp format");
	dbx_fmt_time((time_t)99999999999999999LL, ts);
	is_str(ts, "9999-12-31T23:59:59Z", "a time past year 9999 is clamped");

	ok(dbx_ct_equal("abc", 3, "abc", 3), "equal tokens");
	ok(!dbx_ct_equal("abc", 3, "abd", 3), "different tokens");
	ok(!dbx_ct_equal("abc", 3, "abcd", 4), "longer candidate");
	ok(!dbx_ct_equal("abcd", 4, "abc", 3), "shorter candidate");
	ok(dbx_ct_equal("", 0, "", 0), "empty token matches empty");
	ok(!dbx_ct_equal("", 0, "x", 1), "empty token rejects non-empty");

	ok(dbx_utf8_valid("h\xc3\xa9llo", 6, false), "valid UTF-8");
	ok(!dbx_utf8_valid("\xff", 1, false), "0xff invalid");
	ok(!dbx_utf8_valid("\xc0\xaf", 2, false), "overlong invalid");
	ok(!dbx_utf8_valid("\xed\xa0\x80", 3, false), "surrogate invalid");
	ok(dbx_utf8_valid("ab\xe2\x82", 4, true), "truncated tail tolerated when asked");
	ok(!dbx_utf8_valid("ab\xe2\x82", 4, false), "truncated tail refused otherwise");
	size_t n;
	char *l = dbx_utf8_lossy("a\xff" "b", 3, &n);
	is_str(l, "a\xef\xbf\xbd" "b", "lossy replaces with U+FFFD");
	ok(n == 5, "lossy length");
	free(l);

	is_str(dbx_errno_name(ENOENT), "ENOENT", "errno name");
	is_str(dbx_errno_name(-ENOTEMPTY), "ENOTEMPTY", "negative errno name");
	ok(dbx_errno_from_name("EXDEV") == EXDEV, "errno from name");
	ok(dbx_errno_from_name("bogus") == EIO, "unknown name is EIO");

	struct dbx_strbuf sb;
	dbx_sb_init(&sb, 8);
	ok(dbx_sb_puts(&sb, "12345678") == 0, "fill to the limit");
	ok(dbx_sb_putc(&sb, 'x') == -EMSGSIZE, "past the limit fails");
	ok(sb.len == 8 && strcmp(sb.data, "12345678") == 0, "buffer unchanged after failure");
	dbx_sb_reset(&sb);
	ok(dbx_sb_printf(&sb, "%d-%s", 42, "ok") == 0 && strcmp(sb.data, "42-ok") == 0, "printf");
	dbx_sb_free(&sb);
	return tap_done();
}
