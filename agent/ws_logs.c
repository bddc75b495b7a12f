/* ws_logs.c: the /ws WebSocket log-subscription protocol (agent-api.md §3).
 *
 * Each connection keeps its own subscriptions (one per type + target id); each subscription is
 * a proc_listener on a process record or a session (proc.h). Everything runs on the service
 * thread. A subscriber whose outbound queue is full (AGENT_WS_OUT_MAX) is dropped silently,
 * like a lagging subscriber of the official agent; a purged target drops its subscriptions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proc.h"

enum { LV_STDOUT = 1, LV_STDERR = 2, LV_SYSTEM = 4, LV_UNKNOWN = 8 };

struct wssub {
	struct proc_listener l;
	struct wsconn *c;
	struct wssub *next; /* in the connection's list */
	char *type;
	char *target;
	cJSON *levels; /* the requested level names (array of strings) */
	unsigned mask; /* 0 = every level */
	time_t created;
	uint64_t seq;
};

struct wsstate {
	struct wssub *subs;
};

static void sub_unlink(struct wssub *s)
{
	struct wsstate *st = ws_data(s->c);
	for (struct wssub **pp = &st->subs; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
}

static void sub_free(struct wssub *s)
{
	proc_unlisten(&s->l);
	free(s->type);
	free(s->target);
	cJSON_Delete(s->levels);
	free(s);
}

static unsigned level_bit(const char *name)
{
	if (strcmp(name, "stdout") == 0)
		return LV_STDOUT;
	if (strcmp(name, "stderr") == 0)
		return LV_STDERR;
	if (strcmp(name, "system") == 0)
		return LV_SYSTEM;
	if (strcmp(name, "unknown") == 0)
		return LV_UNKNOWN;
	return 0;
}

/* Splits a stored entry into its level and the text shown to clients (malloc'd). */
static char *classify(const struct log_entry *e, unsigned *bit, const char **level)
{
	static const struct {
		const char *prefix, *level, *shown;
		unsigned bit;
	} map[] = {
		{"[stdout] ", "stdout", "", LV_STDOUT},
		{"[stderr] ", "stderr", "", LV_STDERR},
		{"[exec] ", "system", "Executing: ", LV_SYSTEM},
		{"[cd] ", "system", "Changed directory to: ", LV_SYSTEM},
	};
	const char *text = e->text;
	size_t len = e->len;
	const char *shown = "";
	*bit = LV_UNKNOWN;
	*level = "unknown";
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		size_t pl = strlen(map[i].prefix);
		if (len >= pl && memcmp(text, map[i].prefix, pl) == 0) {
			text += pl;
			len -= pl;
			shown = map[i].shown;
			*bit = map[i].bit;
			*level = map[i].level;
			break;
		}
	}
	size_t sl = strlen(shown);
	char *out = malloc(sl + len + 1);
	if (!out)
		return NULL;
	memcpy(out, shown, sl);
	memcpy(out + sl, text, len);
	out[sl + len] = '\0';
	return out;
}

/* Sends one log message; false if the connection's queue is full. */
static bool send_log(struct wssub *s, const struct log_entry *e, bool history, uint64_t *seq)
{
	unsigned bit;
	const char *level;
	char *content = classify(e, &bit, &level);
	if (!content)
		return true;
	if (s->mask && !(s->mask & bit)) {
		free(content);
		return true;
	}
	time_t now = time(NULL);
	cJSON *log = cJSON_CreateObject();
	cJSON_AddStringToObject(log, "level", level);
	cJSON_AddItemToObject(log, "content", proc_json_str(content, strlen(content)));
	free(content);
	cJSON_AddNumberToObject(log, "timestamp", (double)now);
	cJSON_AddNumberToObject(log, "sequence", (double)*seq);
	cJSON_AddStringToObject(log, "targetId", s->target);
	cJSON_AddStringToObject(log, "targetType", s->type);
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "type", "log");
	cJSON_AddStringToObject(m, "dataType", s->type);
	cJSON_AddStringToObject(m, "targetId", s->target);
	cJSON_AddItemToObject(m, "log", log);
	cJSON_AddNumberToObject(m, "sequence", (double)*seq);
	cJSON_AddBoolToObject(m, "isHistory", history);
	(*seq)++;
	return ws_send_json(s->c, m) == 0;
}

static void sub_entry(struct proc_listener *l, const struct log_entry *e)
{
	struct wssub *s = lws_container_of(l, struct wssub, l);
	if (send_log(s, e, false, &s->seq))
		return;
	/* Too far behind: the subscription stops silently. */
	sub_unlink(s);
	sub_free(s);
}

static void sub_detach(struct proc_listener *l)
{
	struct wssub *s = lws_container_of(l, struct wssub, l);
	sub_unlink(s);
	sub_free(s);
}

static struct wssub *sub_find(struct wsstate *st, const char *type, const char *target)
{
	for (struct wssub *s = st->subs; s; s = s->next)
		if (strcmp(s->type, type) == 0 && strcmp(s->target, target) == 0)
			return s;
	return NULL;
}

static void send_status(struct wsconn *c, int status, const char *message)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "status", status);
	cJSON_AddStringToObject(o, "message", message);
	ws_send_json(c, o);
}

static void do_subscribe(struct wsconn *c, struct wsstate *st, const char *type, const char *target,
			 cJSON *msg)
{
	if (sub_find(st, type, target)) {
		send_status(c, ST_VALIDATION, "Subscription already exists");
		return;
	}
	struct agent *ag = ws_agent(c);
	struct proc *p = NULL;
	if (strcmp(type, "process") == 0)
		p = proc_find(ag, PK_EXEC, target);
	else if (strcmp(type, "session") == 0)
		p = proc_find(ag, PK_SESSION, target);
	if (!p) {
		send_status(c, ST_NOT_FOUND, "Target not found");
		return;
	}
	struct wssub *s = calloc(1, sizeof(*s));
	if (!s)
		return;
	s->c = c;
	s->type = strdup(type);
	s->target = strdup(target);
	s->levels = cJSON_CreateArray();
	s->created = time(NULL);
	s->l.entry = sub_entry;
	s->l.detach = sub_detach;
	if (!s->type || !s->target || !s->levels) {
		sub_free(s);
		return;
	}
	cJSON *opts = cJSON_GetObjectItemCaseSensitive(msg, "options");
	cJSON *levels =
		cJSON_IsObject(opts) ? cJSON_GetObjectItemCaseSensitive(opts, "levels") : NULL;
	cJSON *tail = cJSON_IsObject(opts) ? cJSON_GetObjectItemCaseSensitive(opts, "tail") : NULL;
	cJSON *lv_obj = cJSON_CreateObject();
	if (cJSON_IsArray(levels)) {
		cJSON *it;
		cJSON_ArrayForEach(it, levels)
		{
			if (!cJSON_IsString(it))
				continue;
			cJSON_AddItemToArray(s->levels, cJSON_CreateString(it->valuestring));
			if (!cJSON_GetObjectItemCaseSensitive(lv_obj, it->valuestring))
				cJSON_AddBoolToObject(lv_obj, it->valuestring, true);
			/* A name we do not know matches nothing (but still filters). */
			s->mask |=
				level_bit(it->valuestring) ? level_bit(it->valuestring) : 1u << 31;
		}
	}
	/* History first, then the confirmation (as the official agent does). */
	if (cJSON_IsNumber(tail) && tail->valuedouble >= 1) {
		uint64_t hseq = 0;
		int64_t n = tail->valuedouble > 1e9 ? 1000000000 : (int64_t)tail->valuedouble;
		for (const struct log_entry *e = proc_log_from(p, n); e; e = e->next) {
			if (!send_log(s, e, true, &hseq)) {
				cJSON_Delete(lv_obj);
				sub_free(s);
				return;
			}
		}
	}
	s->next = st->subs;
	st->subs = s;
	proc_listen(p, &s->l);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "action", "subscribed");
	cJSON_AddStringToObject(o, "type", type);
	cJSON_AddStringToObject(o, "targetId", target);
	cJSON_AddItemToObject(o, "levels", lv_obj);
	cJSON_AddNumberToObject(o, "timestamp", (double)time(NULL));
	ws_send_json(c, o);
}

static void do_unsubscribe(struct wsconn *c, struct wsstate *st, const char *type,
			   const char *target)
{
	struct wssub *s = sub_find(st, type, target);
	if (!s) {
		send_status(c, ST_NOT_FOUND, "Subscription not found");
		return;
	}
	sub_unlink(s);
	sub_free(s);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "action", "unsubscribed");
	cJSON_AddStringToObject(o, "type", type);
	cJSON_AddStringToObject(o, "targetId", target);
	cJSON_AddNumberToObject(o, "timestamp", (double)time(NULL));
	ws_send_json(c, o);
}

static void do_list(struct wsconn *c, struct wsstate *st)
{
	cJSON *arr = cJSON_CreateArray();
	for (struct wssub *s = st->subs; s; s = s->next) {
		cJSON *o = cJSON_CreateObject();
		char id[512];
		snprintf(id, sizeof(id), "%s:%s", s->type, s->target);
		cJSON_AddStringToObject(o, "id", id);
		cJSON_AddStringToObject(o, "type", s->type);
		cJSON_AddStringToObject(o, "targetId", s->target);
		cJSON_AddItemToObject(o, "logLevels", cJSON_Duplicate(s->levels, true));
		cJSON_AddNumberToObject(o, "createdAt", (double)s->created);
		cJSON_AddBoolToObject(o, "active", true);
		cJSON_AddItemToArray(arr, o);
	}
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "type", "list");
	cJSON_AddItemToObject(m, "subscriptions", arr);
	ws_send_json(c, m);
}

static void ws_open(struct wsconn *c)
{
	ws_set_data(c, calloc(1, sizeof(struct wsstate)));
}

static void ws_message(struct wsconn *c, const char *data, size_t len, bool binary)
{
	struct wsstate *st = ws_data(c);
	if (binary || !st)
		return; /* binary frames are ignored, like unparseable ones */
	cJSON *msg = cJSON_ParseWithLength(data, len);
	if (!cJSON_IsObject(msg)) {
		cJSON_Delete(msg);
		return;
	}
	const char *action = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "action"));
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "type"));
	const char *target =
		cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "targetId"));
	if (!action) {
		/* ignored */
	} else if (strcmp(action, "list") == 0) {
		do_list(c, st);
	} else if (strcmp(action, "subscribe") == 0) {
		if (type && target)
			do_subscribe(c, st, type, target, msg);
	} else if (strcmp(action, "unsubscribe") == 0) {
		if (type && target)
			do_unsubscribe(c, st, type, target);
	}
	cJSON_Delete(msg);
}

static void logs_ws_close(struct wsconn *c)
{
	struct wsstate *st = ws_data(c);
	if (!st)
		return;
	while (st->subs) {
		struct wssub *s = st->subs;
		st->subs = s->next;
		sub_free(s);
	}
	free(st);
	ws_set_data(c, NULL);
}

const struct ws_handler logs_ws_handler = {
	.path = "/ws",
	.open = ws_open,
	.message = ws_message,
	.close = logs_ws_close,
	.msg_max = AGENT_WS_MSG_MAX,
};
