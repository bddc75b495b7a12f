/* multipart.h: a streaming (pull) reader for multipart/form-data bodies (RFC 7578 / 2046).
 *
 * The reader pulls bytes from a source callback into one fixed buffer and hands part data out
 * zero-copy, so memory stays bounded whatever the body size; header blocks are limited to
 * MP_HEADER_MAX bytes. Not thread-safe: one reader belongs to one worker. The Content-
 * Disposition parameters are parsed from the raw header (quoted values taken literally, no
 * backslash escapes, "filename*" ignored) and the filename gets undici's %22 %0D %0A escapes
 * undone, so a client's "dir/sub/a.txt" arrives byte-exact (agent-api.md §2.2.8). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define MP_HEADER_MAX   (16u << 10)
#define MP_BOUNDARY_MAX 200

/* Returns bytes read (> 0), 0 at the end of the body, or -errno. */
typedef ssize_t (*mp_source_fn)(void *ctx, void *buf, size_t len);

struct mp_part {
	char *name;     /* form field name ("" when absent) */
	char *filename; /* NULL when the part has no filename= parameter */
	char *ctype;    /* "" when absent */
};

struct mp_reader;

/* Extracts the boundary parameter of a multipart Content-Type into @out. 0 or -EINVAL. */
int mp_boundary(const char *content_type, char *out, size_t outsz);

struct mp_reader *mp_new(const char *boundary, mp_source_fn src, void *ctx);
void mp_free(struct mp_reader *m); /* NULL-safe */

/* Moves to the next part, skipping the rest of the current one. 1: *part describes it (valid
 * until the next mp_next()/mp_free()); 0: the closing delimiter was reached; < 0: -EBADMSG for
 * a malformed body (see mp_error()) or the source's error. */
int mp_next(struct mp_reader *m, struct mp_part *part);

/* The current part's next bytes, zero-copy (valid until the next call): > 0, 0 at the end of
 * the part, < 0 as for mp_next(). */
ssize_t mp_data(struct mp_reader *m, const char **ret_data);

/* A short text for the last -EBADMSG. */
const char *mp_error(struct mp_reader *m);
