/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The sealos provider: the Sealos Devbox REST API (shared/reference/agent-api.md §5).
 *
 * Authentication is the user's whole kubeconfig, URL-encoded (encodeURIComponent) into the
 * Authorization header; the base URL is cfg->api_url, $DEVBOX_API_URL, or derived from the
 * current context's cluster server ("https://1.2.3.4.nip.io:6443" -> "https://devbox.1.2.3.4
 * .nip.io").  Replies are the envelope {code, message, data} (HTTP status == code) except the
 * monitor series, a bare array.  Each request has a total timeout and is retried after 1 s,
 * 2 s, 4 s on network errors and on 500/502/503/504 without the JSON envelope's code (a
 * control-plane error with a code is never retried; timeouts only for GET).
 *
 * Threads: one per provider handle.
 */
#include "kubeconfig.h"
#include "provider_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CP_RETRIES 3

struct sealos {
	struct dbx__kubeconfig *kc;
	char *base;      /* control-plane base URL, no trailing slash */
	char *auth;      /* "Authorization: <encoded kubeconfig>" */
	char *agent_dom; /* base host without "devbox.", for agentServer.url names */
};

static struct sealos *S(dbx_provider *p)
{
	return p->priv;
}

static int sealos_open(dbx_provider *p, const struct dbx_provider_config *cfg)
{
	struct sealos *s = calloc(1, sizeof(*s));
	const char *api = cfg->api_url;
	char *enc = NULL;
	int r;

	if (!s)
		return dbx__error(ENOMEM, "open provider sealos: out of memory");
	r = dbx__kubeconfig_load(cfg->kubeconfig, &s->kc);
	if (r < 0)
		goto fail;
	if (!api || !*api)
		api = getenv("DEVBOX_API_URL");
	if (api && *api) {
		if (strncmp(api, "http://", 7) && strncmp(api, "https://", 8)) {
			r = dbx__error(EINVAL,
				       "open provider sealos: API URL %s: not an http(s) URL", api);
			goto fail;
		}
		size_t n = strlen(api);
		while (n > 0 && api[n - 1] == '/')
			n--;
		s->base = strndup(api, n);
		if (!s->base) {
			r = dbx__error(ENOMEM, "open provider sealos: out of memory");
			goto fail;
		}
	} else {
		r = dbx__devbox_url_from_server(s->kc->server, &s->base);
		if (r < 0)
			goto fail;
	}
	const char *host = strstr(s->base, "://") + 3;
	size_t hlen = strcspn(host, ":/");
	if (hlen > 7 && !strncmp(host, "devbox.", 7)) {
		host += 7;
		hlen -= 7;
	}
	enc = dbx__uri_encode_component(s->kc->text, s->kc->len);
	if (!enc || !(s->agent_dom = strndup(host, hlen)) ||
	    asprintf(&s->auth, "Authorization: %s", enc) < 0) {
		s->auth = NULL;
		r = dbx__error(ENOMEM, "open provider sealos: out of memory");
		goto fail;
	}
	free(enc);
	p->priv = s;
	return 0;
fail:
	free(enc);
	free(s->agent_dom);
	free(s->base);
	dbx__kubeconfig_free(s->kc);
	free(s);
	return r;
}

static void sealos_close(dbx_provider *p)
{
	struct sealos *s = S(p);
	if (!s)
		return;
	dbx__kubeconfig_free(s->kc);
	free(s->base);
	if (s->auth) {
		explicit_bzero(s->auth, strlen(s->auth));
		free(s->auth);
	}
	free(s->agent_dom);
	free(s);
	p->priv = NULL;
}

static int status_errno(long status)
{
	switch (status) {
	case 400:
	case 422:
		return EINVAL;
	case 401:
		return EKEYREJECTED; /* the kubeconfig was refused */
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 409:
		return EEXIST;
	case 429:
		return EAGAIN;
	case 502:
	case 503:
	case 504:
		return EHOSTUNREACH;
	default:
		return EIO;
	}
}

/* One control-plane call.  On success *ret_json (may be NULL) gets the envelope's data (or,
 * with bare, the whole reply).  what names the object for messages ("box" or ""). */
static int cp_call(dbx_provider *p, const char *op, const char *what, const char *method,
		   const char *path, cJSON *body, bool bare, cJSON **ret_json)
{
	struct sealos *s = S(p);
	char *url = NULL, *text = NULL, *reply = NULL;
	char err[512];
	const char *hdrs[] = {s->auth, "Content-Type: application/json", "Accept: application/json",
			      NULL};
	cJSON *j = NULL;
	long status;
	size_t len;
	int r;

	if (ret_json)
		*ret_json = NULL;
	const char *sp = *what ? " " : "";
	if (asprintf(&url, "%s%s", s->base, path) < 0) {
		url = NULL;
		return dbx__error(ENOMEM, "%s%s%s: out of memory", op, sp, what);
	}
	if (body && !(text = cJSON_PrintUnformatted(body))) {
		r = dbx__error(ENOMEM, "%s%s%s: out of memory", op, sp, what);
		goto out;
	}
	struct dbx__http rq = {
		.method = method,
		.url = url,
		.headers = hdrs,
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.timeout_ms = p->timeout_ms,
		.retries = CP_RETRIES,
		.retry_timeouts = !strcmp(method, "GET"),
		.insecure = p->insecure,
		.deadline_ms = p->deadline_ms,
	};
	r = dbx__http_do(&rq, &status, &reply, &len, err, sizeof(err));
	if (r < 0) {
		r = dbx__error(-r, "%s%s%s: control plane %s: %s", op, sp, what, s->base, err);
		goto out;
	}
	j = cJSON_ParseWithLength(reply, len);
	if (status < 200 || status > 299) {
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
		const char *msg = cJSON_IsString(m) && *m->valuestring   ? m->valuestring
				  : cJSON_IsString(e) && *e->valuestring ? e->valuestring
									 : NULL;
		if (status == 404 && !strcmp(op, "get"))
			r = dbx__error(ENOENT, "get %s: devbox '%s' not found%s%s%s", what, what,
				       msg ? " (" : "", msg ? msg : "", msg ? ")" : "");
		else
			r = dbx__error(status_errno(status), "%s%s%s: %s (HTTP %ld from %s)", op,
				       sp, what, msg ? msg : "request failed", status, s->base);
		goto out;
	}
	if (!j) {
		r = dbx__error(EPROTO, "%s%s%s: control plane %s answered HTTP %ld without JSON",
			       op, sp, what, s->base, status);
		goto out;
	}
	if (ret_json) {
		if (bare) {
			*ret_json = j;
			j = NULL;
		} else {
			*ret_json = cJSON_DetachItemFromObjectCaseSensitive(j, "data");
			if (!*ret_json) {
				r = dbx__error(EPROTO, "%s%s%s: control plane reply without data",
					       op, sp, what);
				goto out;
			}
		}
	}
	r = 0;
out:
	cJSON_Delete(j);
	free(reply);
	free(text);
	free(url);
	return r;
}

static int b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/* A bearer token decoded from standard or URL-safe base64 (padding optional): -EINVAL for
 * bad base64 (bad characters, anything but '=' after the first '=', a dangling 6 bits) and
 * for a token with control characters, since it goes into an HTTP header line. */
static int b64decode_token(const char *in, char **ret)
{
	size_t n = strlen(in), i;
	char *out = malloc(n / 4 * 3 + 4), *o = out;
	unsigned acc = 0;
	int bits = 0, r = -EINVAL;

	*ret = NULL;
	if (!out)
		return -ENOMEM;
	for (i = 0; i < n && in[i] != '='; i++) {
		int v = b64val((unsigned char)in[i]);
		if (v < 0)
			goto out;
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			unsigned char c = (acc >> bits) & 0xff;
			if (c < ' ' || c == 0x7f) /* NUL, CR, LF ...: header injection */
				goto out;
			*o++ = (char)c;
		}
	}
	if (bits >= 6 || i == 0 || strspn(in + i, "=") != n - i)
		goto out;
	*o = '\0';
	*ret = out;
	out = NULL;
	r = 0;
out:
	free(out);
	return r;
}

/* agentServer.url becomes part of a host name: letters, digits and '-' only, so that the
 * token is never sent to a host the reply chose freely. */
static bool host_label(const char *s)
{
	size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
	return n > 0 && n <= 63 && s[n] == '\0';
}

static const char *jstr(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

/* A number (or numeric string) within [-1e15, 1e15], else 0: safe to convert to an integer. */
static double jnum(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double d = 0;
	if (cJSON_IsNumber(v))
		d = v->valuedouble;
	else if (cJSON_IsString(v))
		d = strtod(v->valuestring, NULL);
	return d >= -1e15 && d <= 1e15 ? d : 0;
}

/* The devbox detail (§5.4) as an info; agent URL and token per §5.5. */
static int detail_info(struct sealos *s, const char *name, const cJSON *d,
		       struct dbx_box_info **ret)
{
	struct dbx_box_info *i = dbx__box_info_new(jstr(d, "name") ? jstr(d, "name") : name);
	const cJSON *res = cJSON_GetObjectItemCaseSensitive(d, "resources");
	const cJSON *agent = cJSON_GetObjectItemCaseSensitive(d, "agentServer");
	const cJSON *ssh = cJSON_GetObjectItemCaseSensitive(d, "ssh");
	const cJSON *ports = cJSON_GetObjectItemCaseSensitive(d, "ports");
	const cJSON *first = cJSON_IsArray(ports) ? cJSON_GetArrayItem(ports, 0) : NULL;
	const char *aurl = jstr(agent, "url"), *atok = jstr(agent, "token");

	*ret = NULL;
	if (!i)
		goto nomem;
	if (dbx__strdup_to(&i->status, jstr(d, "status") ? jstr(d, "status") : "Pending") < 0 ||
	    dbx__strdup_to(&i->runtime, jstr(d, "runtime")) < 0 ||
	    dbx__strdup_to(&i->workspace, jstr(ssh, "workingDir")) < 0)
		goto nomem;
	i->cpu = jnum(res, "cpu");
	i->memory_gib = jnum(res, "memory");
	if (aurl && !host_label(aurl)) {
		dbx_box_info_free(i);
		return dbx__error(EPROTO, "get %s: agentServer.url '%s' is not a host name label",
				  name, aurl);
	}
	if (aurl) {
		if (asprintf(&i->agent_url, "https://devbox-%s-agent.%s", aurl, s->agent_dom) < 0) {
			i->agent_url = NULL;
			goto nomem;
		}
	} else if (first) {
		const char *u = jstr(first, "publicAddress") ? jstr(first, "publicAddress")
							     : jstr(first, "privateAddress");
		if (dbx__strdup_to(&i->agent_url, u) < 0)
			goto nomem;
	}
	if (atok) {
		int r = b64decode_token(atok, &i->agent_token);
		if (r == -ENOMEM)
			goto nomem;
		if (r < 0) {
			dbx_box_info_free(i);
			return dbx__error(EPROTO,
					  "get %s: agentServer.token is not base64 of a token "
					  "without control characters",
					  name);
		}
	}
	int np = cJSON_IsArray(ports) ? cJSON_GetArraySize(ports) : 0;
	if (np > 0) {
		i->ports = calloc((size_t)np, sizeof(*i->ports));
		if (!i->ports)
			goto nomem;
		for (int k = 0; k < np; k++) {
			const cJSON *pt = cJSON_GetArrayItem(ports, k);
			struct dbx_port *o = &i->ports[i->n_ports++];
			double num = jnum(pt, "number");
			o->number = num >= 1 && num <= 65535 ? (int)num : 0;
			if (dbx__strdup_to(&o->protocol, jstr(pt, "protocol")) < 0 ||
			    dbx__strdup_to(&o->public_url, jstr(pt, "publicAddress")) < 0)
				goto nomem;
		}
	}
	*ret = i;
	return 0;
nomem:
	dbx_box_info_free(i);
	return dbx__error(ENOMEM, "get %s: out of memory", name);
}

static int sealos_get(dbx_provider *p, const char *name, struct dbx_box_info **ret_info)
{
	char path[128];
	cJSON *d = NULL;
	snprintf(path, sizeof(path), "/api/v1/devbox/%s", name);
	int r = cp_call(p, "get", name, "GET", path, NULL, false, &d);
	if (r == 0)
		r = cJSON_IsObject(d) ? detail_info(S(p), name, d, ret_info)
				      : dbx__error(EPROTO,
						   "get %s: control plane data is not an "
						   "object",
						   name);
	cJSON_Delete(d);
	return r;
}

static int sealos_create(dbx_provider *p, const struct dbx_box_spec *spec,
			 struct dbx_box_info **ret_info)
{
	const char *name = spec->name;
	cJSON *b = cJSON_CreateObject(), *res, *ports, *env, *data = NULL;
	int r;

	*ret_info = NULL;
	if (!spec->runtime || !*spec->runtime) {
		r = dbx__error(EINVAL, "create %s: a runtime is required (see `templates`)", name);
		goto out;
	}
	if (!b || !cJSON_AddStringToObject(b, "name", name) ||
	    !cJSON_AddStringToObject(b, "runtime", spec->runtime) ||
	    !(res = cJSON_AddObjectToObject(b, "resource")) ||
	    !cJSON_AddNumberToObject(res, "cpu", spec->cpu > 0 ? spec->cpu : 1) ||
	    !cJSON_AddNumberToObject(res, "memory", spec->memory_gib > 0 ? spec->memory_gib : 2) ||
	    !(ports = cJSON_AddArrayToObject(b, "ports")) ||
	    !(env = cJSON_AddArrayToObject(b, "env")))
		goto nomem;
	for (size_t i = 0; i < spec->n_ports; i++) {
		if (spec->ports[i] < 1 || spec->ports[i] > 65535) {
			r = dbx__error(EINVAL, "create %s: port %d out of range 1-65535", name,
				       spec->ports[i]);
			goto out;
		}
		cJSON *pt = cJSON_CreateObject();
		if (!pt)
			goto nomem;
		if (!cJSON_AddItemToArray(ports, pt)) {
			cJSON_Delete(pt);
			goto nomem;
		}
		if (!cJSON_AddNumberToObject(pt, "number", spec->ports[i]) ||
		    !cJSON_AddStringToObject(pt, "protocol", "HTTP"))
			goto nomem;
	}
	/* The server expects env as an array of {name, value} (§5.3), not an object. */
	for (const char *const *e = spec->env; e && *e; e++) {
		const char *eq = strchr(*e, '=');
		if (!eq || eq == *e) {
			r = dbx__error(EINVAL, "create %s: env '%s' is not NAME=VALUE", name, *e);
			goto out;
		}
		cJSON *o = cJSON_CreateObject();
		if (!o)
			goto nomem;
		if (!cJSON_AddItemToArray(env, o)) {
			cJSON_Delete(o);
			goto nomem;
		}
		char *k = strndup(*e, (size_t)(eq - *e));
		bool ok = k && cJSON_AddStringToObject(o, "name", k) &&
			  cJSON_AddStringToObject(o, "value", eq + 1);
		free(k);
		if (!ok)
			goto nomem;
	}
	r = cp_call(p, "create", name, "POST", "/api/v1/devbox", b, false, &data);
	if (r < 0)
		goto out;
	/* The create reply is not the detail; fetch that (a fresh box may not be visible yet). */
	r = sealos_get(p, name, ret_info);
	if (r < 0) {
		struct dbx_box_info *i = dbx__box_info_new(name);
		if (!i || dbx__strdup_to(&i->status, "Pending") < 0 ||
		    dbx__strdup_to(&i->runtime, spec->runtime) < 0) {
			dbx_box_info_free(i);
			goto nomem;
		}
		i->cpu = spec->cpu > 0 ? spec->cpu : 1;
		i->memory_gib = spec->memory_gib > 0 ? spec->memory_gib : 2;
		*ret_info = i;
		dbx_error_clear();
		r = 0;
	}
	goto out;
nomem:
	r = dbx__error(ENOMEM, "create %s: out of memory", name);
out:
	cJSON_Delete(data);
	cJSON_Delete(b);
	return r;
}

static int sealos_list(dbx_provider *p, struct dbx_box_info ***ret_list, size_t *ret_n)
{
	cJSON *d = NULL;
	struct dbx_box_info **v = NULL;
	size_t n = 0;
	int r = cp_call(p, "list", "devboxes", "GET", "/api/v1/devbox", NULL, false, &d);
	if (r < 0)
		return r;
	if (!cJSON_IsArray(d)) {
		r = dbx__error(EPROTO, "list: control plane data is not an array");
		goto out;
	}
	v = calloc((size_t)cJSON_GetArraySize(d) + 1, sizeof(*v));
	if (!v)
		goto nomem;
	const cJSON *it;
	cJSON_ArrayForEach(it, d)
	{
		const char *name = jstr(it, "name");
		if (!name)
			continue;
		const cJSON *res = cJSON_GetObjectItemCaseSensitive(it, "resources");
		struct dbx_box_info *i = dbx__box_info_new(name);
		if (!i)
			goto nomem;
		v[n++] = i;
		if (dbx__strdup_to(&i->status,
				   jstr(it, "status") ? jstr(it, "status") : "Pending") < 0 ||
		    dbx__strdup_to(&i->runtime, jstr(it, "runtime")) < 0)
			goto nomem;
		/* The list gives millicores and MiB (§5.3); the detail gives cores and GiB. */
		i->cpu = jnum(res, "cpu") / 1000.0;
		i->memory_gib = jnum(res, "memory") / 1024.0;
	}
	*ret_list = v;
	*ret_n = n;
	v = NULL;
	goto out;
nomem:
	r = dbx__error(ENOMEM, "list: out of memory");
out:
	dbx_box_list_free(v, n);
	cJSON_Delete(d);
	return r;
}

static int post_verb(dbx_provider *p, const char *op, const char *name)
{
	char path[160];
	cJSON *empty = cJSON_CreateObject();
	if (!empty)
		return dbx__error(ENOMEM, "%s %s: out of memory", op, name);
	snprintf(path, sizeof(path), "/api/v1/devbox/%s/%s", name, op);
	int r = cp_call(p, op, name, "POST", path, empty, false, NULL);
	cJSON_Delete(empty);
	return r;
}

static int sealos_start(dbx_provider *p, const char *name)
{
	return post_verb(p, "start", name);
}
static int sealos_pause(dbx_provider *p, const char *name)
{
	return post_verb(p, "pause", name);
}
static int sealos_restart(dbx_provider *p, const char *name)
{
	return post_verb(p, "restart", name);
}
static int sealos_shutdown(dbx_provider *p, const char *name)
{
	return post_verb(p, "shutdown", name);
}

static int sealos_remove(dbx_provider *p, const char *name)
{
	char path[160];
	snprintf(path, sizeof(path), "/api/v1/devbox/%s/delete", name);
	return cp_call(p, "delete", name, "DELETE", path, NULL, false, NULL);
}

static int sealos_monitor(dbx_provider *p, const char *name, int64_t since_ms,
			  struct dbx_monitor_sample **ret_samples, size_t *ret_n)
{
	char path[256];
	cJSON *a = NULL;
	struct dbx_monitor_sample *v = NULL;
	size_t n = 0;
	int64_t now = dbx__wall_ms();
	if (since_ms <= 0 || since_ms > now)
		since_ms = now - 3600 * 1000;
	snprintf(path, sizeof(path), "/api/v1/devbox/%s/monitor?start=%lld&end=%lld", name,
		 (long long)since_ms, (long long)now);
	int r = cp_call(p, "monitor", name, "GET", path, NULL, true, &a);
	if (r < 0)
		return r;
	if (!cJSON_IsArray(a)) {
		r = dbx__error(EPROTO, "monitor %s: control plane reply is not an array", name);
		goto out;
	}
	v = calloc((size_t)cJSON_GetArraySize(a) + 1, sizeof(*v));
	if (!v) {
		r = dbx__error(ENOMEM, "monitor %s: out of memory", name);
		goto out;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, a)
	{
		double ts = jnum(it, "timestamp");
		v[n].time_ms = (int64_t)(ts < 1e11 ? ts * 1000 : ts); /* seconds or ms */
		v[n].cpu_percent = jnum(it, "cpu");
		v[n].memory_percent = jnum(it, "memory");
		n++;
	}
	*ret_samples = v;
	*ret_n = n;
	v = NULL;
out:
	free(v);
	cJSON_Delete(a);
	return r;
}

/* A runtime's name from a template entry: a string, or an object's iconId / name. */
static const char *template_name(const cJSON *t)
{
	if (cJSON_IsString(t))
		return t->valuestring;
	const char *s = jstr(t, "iconId");
	if (!s)
		s = jstr(t, "name");
	if (!s)
		s = jstr(t, "runtime");
	return s;
}

static int sealos_templates(dbx_provider *p, char ***ret_names, size_t *ret_n)
{
	cJSON *d = NULL;
	char **v = NULL;
	size_t n = 0;
	int r = cp_call(p, "templates", "", "GET", "/api/v1/devbox/templates", NULL, false, &d);
	if (r < 0)
		return r;
	/* Shapes seen: {runtime:[...], config:[...]} and [{runtime, config}] (§5.3). */
	const cJSON *list = cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, "runtime") : d;
	if (!cJSON_IsArray(list)) {
		r = dbx__error(EPROTO, "templates: unexpected reply from the control plane");
		goto out;
	}
	v = calloc((size_t)cJSON_GetArraySize(list) + 1, sizeof(*v));
	if (!v)
		goto nomem;
	const cJSON *it;
	cJSON_ArrayForEach(it, list)
	{
		const cJSON *rt =
			cJSON_IsObject(it) && cJSON_GetObjectItemCaseSensitive(it, "runtime")
				? cJSON_GetObjectItemCaseSensitive(it, "runtime")
				: it;
		const char *name = template_name(rt);
		if (!name)
			continue;
		if (!(v[n] = strdup(name)))
			goto nomem;
		n++;
	}
	*ret_names = v;
	*ret_n = n;
	v = NULL;
	goto out;
nomem:
	r = dbx__error(ENOMEM, "templates: out of memory");
out:
	dbx_strv_free(v, n);
	cJSON_Delete(d);
	return r;
}

const struct dbx__provider_ops dbx__sealos_ops = {
	.name = "sealos",
	.open = sealos_open,
	.close = sealos_close,
	.create = sealos_create,
	.list = sealos_list,
	.get = sealos_get,
	.start = sealos_start,
	.pause = sealos_pause,
	.restart = sealos_restart,
	.shutdown = sealos_shutdown,
	.remove = sealos_remove,
	.monitor = sealos_monitor,
	.templates = sealos_templates,
};
