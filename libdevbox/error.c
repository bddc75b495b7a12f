/* SPDX-License-Identifier: Apache-2.0 */
/*
 * error: the thread-local last-error message, the debug log hook and the version string.
 *
 * Threads: the message is per thread (no locking).  The log hook is a process-wide setting
 * written once before any handle exists and only read afterwards (documented in common.h);
 * the fields are atomics so a late dbx_set_log_hook() is not a data race either.
 */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define ERR_MSG_MAX 1024
#define LOG_MSG_MAX 2048

static _Thread_local char err_msg[ERR_MSG_MAX];

static _Atomic(dbx_log_fn) log_fn;
static _Atomic int log_max_level;
static void *_Atomic log_ud;

const char *dbx_error_last(void)
{
	return err_msg;
}

void dbx_error_clear(void)
{
	err_msg[0] = '\0';
}

int dbx__error(int err, const char *fmt, ...)
{
	va_list ap;
	char tmp[ERR_MSG_MAX];

	if (err < 0)
		err = -err;
	if (err == 0)
		err = EIO;
	/* Format into a temporary first: fmt's arguments may point into err_msg itself. */
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	memcpy(err_msg, tmp, sizeof(err_msg));
	dbx__log(3, "error %s: %s", dbx_errno_name(err), err_msg);
	return -err;
}

void dbx_set_log_hook(dbx_log_fn fn, int max_level, void *ud)
{
	atomic_store(&log_ud, ud);
	atomic_store(&log_max_level, max_level);
	atomic_store(&log_fn, fn);
}

void dbx__log(int level, const char *fmt, ...)
{
	dbx_log_fn fn = atomic_load(&log_fn);
	char msg[LOG_MSG_MAX];
	va_list ap;

	if (!fn || level > atomic_load(&log_max_level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fn(level, msg, atomic_load(&log_ud));
}

const char *dbx_version(void)
{
	return DEVBOX_VERSION;
}
