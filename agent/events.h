/* events.h: the workspace change-event stream (events.c, watch.c) and the lock sessions tied to it.
 *
 * Owns: the boot id, the event sequence counter, the recursive inotify watcher, the event ring
 * and the /fs/v1/events WebSocket clients. Threads: events_stamp() and events_session_alive()
 * may be called from any thread; the rest from the service thread. See PROTOCOL.md §3. */
#pragma once

#include "agent.h"

/* Service thread, after the vhost exists / before the context is destroyed. */
int events_start(struct agent *ag);
void events_stop(struct agent *ag);

/* Any thread: the boot id (32 hex chars) and the last assigned sequence number. */
const char *events_boot(struct agent *ag);
uint64_t events_seq(struct agent *ag);
/* Any thread, before the reply: adds X-Dbx-Boot and X-Dbx-Seq to @r's reply. events_stamp()
 * uses the current seq; events_stamp_at() a seq read with events_seq() BEFORE the operation, which
 * is what "a client that applied events up to n has seen every change the reply reflects" needs:
 * events are numbered by the watcher thread, asynchronously, so a change made by someone else
 * while the operation ran may already have a seq <= the current one without being reflected. */
void events_stamp(struct req *r);
void events_stamp_at(struct req *r, uint64_t seq);
/* Any thread: is @session an open lock session (an events WebSocket that is still open)? */
bool events_session_alive(struct agent *ag, const char *session);

/* Implemented by the lock module (fsapi): release every lock held by @session. Called (on the
 * service thread) when the session's events WebSocket closes, and at shutdown. */
void locks_session_end(struct agent *ag, const char *session);

extern const struct ws_handler events_ws_handler;
