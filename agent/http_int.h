/* http_int.h: what server.c (HTTP engine) and ws.c (WebSocket plumbing) share. Internal to
 * the engine; route modules use agent.h. Service thread only. */
#pragma once

#include "agent.h"

/* Decoded query arguments, first occurrence wins (lws-notes T13). */
struct qargs {
	int n;
	char **k, **v;
};

int qargs_parse(struct qargs *q, struct lws *wsi);
const char *qargs_get(const struct qargs *q, const char *name);
void qargs_free(struct qargs *q);

/* Per-connection user data of the "http" and "dbx" protocols: one HTTP transaction's request,
 * or the WebSocket connection after an upgrade. */
struct pss {
	struct req *req;
	struct wsconn *ws;
};

/* The WebSocket route for @uri, or NULL. */
const struct ws_handler *ws_find(const char *uri);
/* The WebSocket callbacks (ESTABLISHED, RECEIVE, SERVER_WRITEABLE, CLOSED). */
int ws_callback(struct agent *ag, struct lws *wsi, enum lws_callback_reasons reason,
		struct pss *pss, void *in, size_t len);
