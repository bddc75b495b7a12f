/* SPDX-License-Identifier: Apache-2.0 */
/*
 * wsclient: the libwebsockets client plumbing shared by dbx_exec and dbx_watch.
 *
 * One struct dbx__ws = one lws context with its own service thread and at most one WebSocket
 * connection at a time (a watch reconnects on the same context).  A context per exec or watch
 * keeps them independent (no shared lock, no shared lifetime) and costs ~100 KiB and a thread;
 * Debian's lws 4.1.6 has one service thread per context anyway (LWS_MAX_SMP 1).
 *
 * Threads: the ops callbacks, dbx__ws_after() timers and everything that touches lws run on the
 * service thread.  dbx__ws_connect/send/close/rx_pause may be called from any thread (they
 * queue the request and wake the loop with lws_cancel_service()).  dbx__ws_free() must not be
 * called from the service thread (it joins it).
 *
 * Bounds: an inbound message larger than max_msg closes the connection with -EMSGSIZE; outbound
 * messages wait in a queue whose size senders bound with block_above.
 */
#pragma once
#include "internal.h"

struct dbx__ws;

struct dbx__ws_ops {
	/* The handshake completed. */
	void (*open)(void *ud);
	/* One complete (reassembled) message.  A negative return closes the connection with that
	 * error. */
	int (*message)(void *ud, bool binary, const void *data, size_t len);
	/* The connection, or the attempt to make it, ended: err is -errno (-ECONNRESET when the
	 * peer closed, -ECONNREFUSED, -EACCES for a 401, -ENOENT for a 404, -ETIMEDOUT ...) and
	 * why a one-line reason.  Not called by dbx__ws_free(). */
	void (*closed)(void *ud, int err, const char *why);
};

struct dbx__ws_config {
	const struct dbx__ws_ops *ops;
	void *ud;
	size_t max_msg;   /* largest inbound message */
	int timeout_ms;   /* connect + handshake limit of each attempt */
	const char *what; /* "exec", "watch": names the thread and log lines */
};

/* Creates the context and starts its service thread; no connection yet. */
int dbx__ws_new(dbx_client *c, const struct dbx__ws_config *cfg, struct dbx__ws **ret_ws);
/* Stops the thread (dropping any connection without callbacks) and frees.  NULL-safe. */
void dbx__ws_free(struct dbx__ws *w);

/* Starts a connection to path_query ("/fs/v1/events?since=1") on the client's agent.
 * -EBUSY while a connection exists. */
int dbx__ws_connect(struct dbx__ws *w, const char *path_query);
/* Queues one message.  With block_above > 0, first waits while more than that many bytes are
 * queued.  -EPIPE when there is no open connection (or it closes while waiting). */
int dbx__ws_send(struct dbx__ws *w, bool binary, const void *data, size_t len, size_t block_above);
/* Closes the connection normally once the queued messages are written. */
void dbx__ws_close(struct dbx__ws *w);
/* Stops (true) or resumes reading from the connection. */
void dbx__ws_rx_pause(struct dbx__ws *w, bool pause);
/* Service thread only: calls fn(ud) after ms milliseconds (one timer; rescheduling replaces). */
void dbx__ws_after(struct dbx__ws *w, int ms, void (*fn)(void *ud));
