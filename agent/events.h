/* events.h: the workspace change-event stream (events.c, watch.c) and the lock sessions tied to it.
 *
 * Owns: the boot id, the event sequence counter, the recursive inotify watcher, the event ring
 * and the /fs/v1/events WebSocket clients. Threads: events_stamp() and events_session_alive()
 * may be called from any thread; the rest from the service thread. See PROTOCOL.md §3. */
#pragma once
#include <sys/stat.h>

#include "agent.h"

/* Files up to this size travel with their create/modify events to clients that asked (data=1). */
#define EVENTS_DATA_FILE_MAX (64u << 10)

/* Service thread, after the vhost exists / before the context is destroyed. */
int events_start(struct agent *ag);
void events_stop(struct agent *ag);

/* Any thread: the last assigned sequence number. */
uint64_t events_seq(struct agent *ag);
/* Any thread, before the reply: adds X-Dbx-Boot and X-Dbx-Seq to @r's reply. The seq is the
 * one read when the handler was dispatched (req_seq0), before the operation: events are
 * numbered by the watcher thread asynchronously, so a later seq could include a change made by
 * someone else that the reply does not reflect. A client that applied events up to it has seen
 * every change the reply reflects (PROTOCOL.md §1). */
void events_stamp(struct req *r);
/* Any thread, around a write through the API to the file @st: while it runs, and for the
 * version it leaves (@st at the end, NULL if it failed), events carry no content: the client
 * has the bytes.  begin returns a token for end (0: nothing to do). */
uintptr_t events_write_begin(const struct stat *st);
void events_write_end(uintptr_t token, const struct stat *st);
/* Any thread: is @session an open lock session (an events WebSocket that is still open)? */
bool events_session_alive(struct agent *ag, const char *session);

/* Implemented by the lock module (fsapi): release every lock held by @session. Called (on the
 * service thread) when the session's events WebSocket closes, and at shutdown. */
void locks_session_end(struct agent *ag, const char *session);

extern const struct ws_handler events_ws_handler;
