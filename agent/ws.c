/* ws.c: WebSocket plumbing of the engine (struct wsconn): per-connection queues of outbound
 * messages (one lws_write per WRITEABLE), reassembly of inbound fragments up to the route's
 * limit, and dispatch to the ws_handler chosen by the upgrade's path. Authentication and the
 * upgrade itself are checked in server.c (HTTP_CONFIRM_UPGRADE). Service thread only. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "http_int.h"
#include "strbuf.h"

struct wsmsg {
	struct wsmsg *next;
	size_t len;
	bool binary;
	unsigned char buf[]; /* LWS_PRE + len */
};

struct wsconn {
	struct agent *ag;
	struct lws *wsi;
	const struct ws_handler *h;
	void *data;
	struct dbx_strbuf rx;
	bool rx_binary;
	bool rx_too_big;
	struct wsmsg *head, *tail;
	size_t queued;
	struct qargs q;
	bool closing;
};

const char *ws_query(struct wsconn *c, const char *name)
{
	return qargs_get(&c->q, name);
}

void ws_rx_pause(struct wsconn *c, bool pause)
{
	lws_rx_flow_control(c->wsi, pause ? 0 : 1);
}

void ws_close(struct wsconn *c, int status, const char *reason)
{
	if (c->closing)
		return;
	c->closing = true;
	lws_close_reason(c->wsi, (enum lws_close_status)status, (unsigned char *)reason,
			 strlen(reason));
	lws_callback_on_writable(c->wsi);
}

int ws_send(struct wsconn *c, bool binary, const void *data, size_t len)
{
	if (c->queued + len > AGENT_WS_OUT_MAX)
		return -ENOBUFS;
	struct wsmsg *m = malloc(sizeof(*m) + LWS_PRE + len);
	if (!m)
		return -ENOMEM;
	m->next = NULL;
	m->len = len;
	m->binary = binary;
	memcpy(m->buf + LWS_PRE, data, len);
	if (c->tail)
		c->tail->next = m;
	else
		c->head = m;
	c->tail = m;
	c->queued += len;
	lws_callback_on_writable(c->wsi);
	return 0;
}

int ws_send_json(struct wsconn *c, cJSON *obj)
{
	char *s = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	if (!s)
		return -ENOMEM;
	int r = ws_send(c, false, s, strlen(s));
	free(s);
	return r;
}

size_t ws_queued(struct wsconn *c)
{
	return c->queued;
}

void ws_set_data(struct wsconn *c, void *data)
{
	c->data = data;
}

void *ws_data(struct wsconn *c)
{
	return c->data;
}

struct agent *ws_agent(struct wsconn *c)
{
	return c->ag;
}

static const struct ws_handler *const ws_routes[] = {&logs_ws_handler, &events_ws_handler,
						     &exec_ws_handler};

const struct ws_handler *ws_find(const char *uri)
{
	for (size_t i = 0; i < sizeof(ws_routes) / sizeof(ws_routes[0]); i++)
		if (strcmp(ws_routes[i]->path, uri) == 0)
			return ws_routes[i];
	return NULL;
}

int ws_callback(struct agent *ag, struct lws *wsi, enum lws_callback_reasons reason,
		struct pss *pss, void *in, size_t len)
{
	struct wsconn *c = pss ? pss->ws : NULL;
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED: {
		char uri[256];
		if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0)
			return -1;
		const struct ws_handler *h = ws_find(uri);
		if (!h || !pss)
			return -1;
		c = calloc(1, sizeof(*c));
		if (!c)
			return -1;
		c->ag = ag;
		c->wsi = wsi;
		c->h = h;
		dbx_sb_init(&c->rx, h->msg_max ? h->msg_max : AGENT_WS_MSG_MAX);
		if (qargs_parse(&c->q, wsi) < 0) {
			qargs_free(&c->q);
			dbx_sb_free(&c->rx);
			free(c);
			return -1;
		}
		pss->ws = c;
		if (h->open)
			h->open(c);
		return 0;
	}
	case LWS_CALLBACK_RECEIVE: {
		if (!c)
			return -1;
		if (lws_is_first_fragment(wsi)) {
			dbx_sb_reset(&c->rx);
			c->rx_binary = lws_frame_is_binary(wsi);
			c->rx_too_big = false;
		}
		if (!c->rx_too_big && dbx_sb_append(&c->rx, in, len) < 0)
			c->rx_too_big = true;
		if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
			return 0;
		if (c->rx_too_big) {
			static const char why[] = "message too large";
			lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
					 (unsigned char *)why, sizeof(why) - 1);
			return -1;
		}
		if (c->h->message)
			c->h->message(c, c->rx.data ? c->rx.data : "", c->rx.len, c->rx_binary);
		return 0;
	}
	case LWS_CALLBACK_SERVER_WRITEABLE: {
		if (c && c->closing && !c->head)
			return -1; /* queued messages sent; lws sends the close frame */
		if (!c || !c->head)
			return 0;
		struct wsmsg *m = c->head;
		c->head = m->next;
		if (!c->head)
			c->tail = NULL;
		c->queued -= m->len;
		int w = lws_write(wsi, m->buf + LWS_PRE, m->len,
				  m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
		free(m);
		if (w < 0)
			return -1;
		if (!c->head && !c->closing && c->h->drain)
			c->h->drain(c);
		if (c->head || c->closing)
			lws_callback_on_writable(wsi);
		return 0;
	}
	case LWS_CALLBACK_CLOSED:
		if (c) {
			if (c->h->close)
				c->h->close(c);
			while (c->head) {
				struct wsmsg *m = c->head;
				c->head = m->next;
				free(m);
			}
			dbx_sb_free(&c->rx);
			qargs_free(&c->q);
			free(c);
			pss->ws = NULL;
		}
		return 0;
	default:
		return 0;
	}
}

