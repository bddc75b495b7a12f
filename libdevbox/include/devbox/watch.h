/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_watch — the change-event stream of a devbox (/fs/v1/events, agent/PROTOCOL.md §3).
 *
 * A watch owns one thread that keeps the WebSocket up: it reconnects with backoff and resumes
 * from the last seq it delivered.  All callbacks run on that thread, in seq order, and must not
 * call dbx_watch_free() on their own watch.
 */
#ifndef DEVBOX_WATCH_H
#define DEVBOX_WATCH_H

#include <devbox/fs.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbx_watch dbx_watch;

enum dbx_event_kind {
	DBX_EV_CREATE = 1,
	DBX_EV_MODIFY,
	DBX_EV_ATTRIB,
	DBX_EV_DELETE,
	DBX_EV_RENAME,
	DBX_EV_MKDIR,
	DBX_EV_RMDIR,
	DBX_EV_OVERFLOW, /* revalidate everything */
};
DBX_API const char *dbx_event_kind_name(enum dbx_event_kind k);

struct dbx_event {
	uint64_t seq;
	enum dbx_event_kind kind;
	const char *path;  /* borrowed for the callback's duration */
	const char *to;    /* rename only */
	bool has_attr;
	struct dbx_attr attr;
	const char *target; /* symlink target when has_attr and it is a symlink */
	/* With dbx_watch_config.want_data: the file's bytes as of attr (create/modify of a small
	 * regular file; optional, see PROTOCOL.md §3).  Borrowed for the callback's duration. */
	bool has_data;
	const void *data;
	size_t data_len;
};

struct dbx_watch_hello {
	char boot[33];
	uint64_t seq;
	char session[64]; /* lock session for dbx_fs_lock(); new on every connection */
	bool resumed;     /* false: events may have been missed, revalidate */
};

struct dbx_watch_callbacks {
	void (*hello)(void *ud, const struct dbx_watch_hello *h); /* every (re)connect */
	void (*event)(void *ud, const struct dbx_event *ev);
	void (*down)(void *ud, int err); /* the connection dropped; a reconnect follows */
};

struct dbx_watch_config {
	const char *boot;   /* resume point; NULL/0: start from now */
	uint64_t since;
	int backoff_max_ms; /* 0: 5000 */
	bool no_reconnect;  /* deliver down() once and stop */
	bool want_data;     /* ask for the content of small files in their events */
};

/* Connects before returning: fails with -errno if the first connection cannot be made within
 * the client's connect timeout. */
DBX_API int dbx_watch_start(dbx_client *c, const struct dbx_watch_config *cfg,
			    const struct dbx_watch_callbacks *cb, void *ud, dbx_watch **ret_watch);
DBX_API dbx_watch *dbx_watch_free(dbx_watch *w);
/* The current lock session, or "" while disconnected.  Copies into buf (64 bytes). */
DBX_API void dbx_watch_session(dbx_watch *w, char buf[64]);
DBX_API bool dbx_watch_connected(dbx_watch *w);
/* Reconnects so far. */
DBX_API uint64_t dbx_watch_reconnects(dbx_watch *w);

#ifdef __cplusplus
}
#endif
#endif
