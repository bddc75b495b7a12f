/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libdevbox — common conventions, errors and callbacks.
 *
 * Every call that can fail returns an int: 0 (or a count) on success, -errno on failure, and
 * then sets a thread-local one-line message (dbx_error_last()) that names the operation, the
 * path and the reason ("stat a/b: No such file or directory").  An agent or control plane
 * refusing the credentials (HTTP 401) gives -EKEYREJECTED; -EACCES is always a permission
 * denied on a file or resource.  "**ret_x" out-parameters are
 * owned by the caller and freed with the matching *_free(); every destructor accepts NULL and
 * returns NULL.  A returned `const char *` is borrowed from the object it came from.
 *
 * Threads: unless a function says otherwise, a handle may be used from any thread, but the
 * caller must not free it while another thread is still inside a call on it.
 */
#ifndef DEVBOX_COMMON_H
#define DEVBOX_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DBX_BUILDING_LIBRARY) && defined(__GNUC__)
#define DBX_API __attribute__((visibility("default")))
#else
#define DBX_API
#endif

/* The last error message set on this thread by a failing libdevbox call ("" if none).  The
 * string stays valid until the next libdevbox call on this thread. */
DBX_API const char *dbx_error_last(void);
DBX_API void dbx_error_clear(void);

/* errno <-> wire name ("ENOENT"), the table shared with the agent.  Unknown errno gives "EIO";
 * an unknown name gives EIO. */
DBX_API const char *dbx_errno_name(int err);
DBX_API int dbx_errno_from_name(const char *name);

/* Library version, "0.1.0". */
DBX_API const char *dbx_version(void);

/* libdevbox never prints.  Debug messages (requests, retries, reconnects) go to this hook when
 * set; level is 0 error, 1 warning, 2 info, 3 debug.  Set it before creating any handle. */
typedef void (*dbx_log_fn)(int level, const char *msg, void *ud);
DBX_API void dbx_set_log_hook(dbx_log_fn fn, int max_level, void *ud);

/* Streaming: a source fills buf and returns the byte count, 0 at end, or -errno.  A sink
 * consumes len bytes and returns 0 or -errno (which aborts the transfer with that error). */
typedef ssize_t (*dbx_source_fn)(void *ud, void *buf, size_t len);
typedef int (*dbx_sink_fn)(void *ud, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
