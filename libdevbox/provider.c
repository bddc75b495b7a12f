/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_provider: dispatch to the local or sealos provider, the info/list/strv destructors,
 * wait-until-ready (like the official SDK), dbx_box_connect, and the blocking libcurl helper
 * both providers use for the control plane and agent health checks.
 *
 * Threads: a provider handle is used by one thread at a time; dbx__http_do is reentrant.
 */
#include "provider_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WAIT_DEFAULT_MS  180000
#define WAIT_FIRST_MS    200
#define WAIT_MAX_STEP_MS 5000
#define HTTP_MAX_BODY    (16u << 20)

int64_t dbx__wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dbx__strdup_to(char **dst, const char *s)
{
	*dst = NULL;
	if (!s)
		return 0;
	*dst = strdup(s);
	return *dst ? 0 : -ENOMEM;
}

int dbx__box_name_check(const char *op, const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n == 0)
		return dbx__error(EINVAL, "%s: a devbox name is required", op);
	if (n > 63)
		return dbx__error(EINVAL,
				  "%s %.63s...: invalid devbox name: longer than 63 characters", op,
				  name);
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  (c == '-' && i > 0 && i < n - 1);
		if (!ok)
			return dbx__error(
				EINVAL,
				"%s %s: invalid devbox name: use lower-case letters, digits "
				"and '-' (not first or last), at most 63 characters",
				op, name);
	}
	return 0;
}

/* ---- HTTP helper ----------------------------------------------------------------------- */

struct collect {
	struct dbx_strbuf sb;
	bool overflow;
};

static size_t collect_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct collect *c = ud;
	size_t n = size * nmemb;
	if (dbx_sb_append(&c->sb, ptr, n) < 0) {
		c->overflow = true;
		return 0;
	}
	return n;
}

static int curl_errno(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_CONNECT:
		return ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		return ETIMEDOUT;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
		return ECONNRESET;
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return EINVAL;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
		return EPROTO;
	default:
		return EIO;
	}
}

/* A URL on this machine (a local box's agent): never through a proxy from the environment,
 * which could not reach it and would be handed the token. */
static bool loopback_url(const char *url)
{
	const char *h = strstr(url, "://");
	if (!h)
		return false;
	h += 3;
	size_t n = strcspn(h, ":/?#");
	return !strncmp(h, "127.", 4) || !strncmp(h, "[::1]", 5) ||
	       (n == 9 && !strncmp(h, "localhost", 9));
}

static int http_once(const struct dbx__http *rq, long timeout_ms, long *ret_status,
		     struct collect *col, char *err, size_t errlen)
{
	CURL *h = curl_easy_init();
	struct curl_slist *hdrs = NULL;
	char ebuf[CURL_ERROR_SIZE] = "";
	int r = 0;

	if (!h)
		return -ENOMEM;
	for (const char *const *hp = rq->headers; hp && *hp; hp++) {
		struct curl_slist *n = curl_slist_append(hdrs, *hp);
		if (!n) {
			r = -ENOMEM;
			goto out;
		}
		hdrs = n;
	}
	curl_easy_setopt(h, CURLOPT_URL, rq->url);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
	if (!strcmp(rq->method, "GET"))
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	if (rq->body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, rq->body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)(rq->connect_timeout_ms > 0 ? rq->connect_timeout_ms : 5000));
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	if (loopback_url(rq->url))
		curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_USERAGENT, "libdevbox/" DEVBOX_VERSION);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, col);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
	if (rq->insecure) {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	CURLcode cc = curl_easy_perform(h);
	if (cc != CURLE_OK) {
		if (col->overflow) {
			snprintf(err, errlen, "reply larger than %zu bytes", col->sb.limit);
			r = -EMSGSIZE;
		} else {
			snprintf(err, errlen, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
			r = -curl_errno(cc);
		}
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, ret_status);
out:
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(h);
	return r;
}

/* 500/502/503/504 from something in front of the server (no JSON "code" in the body): worth
 * another attempt.  A JSON error with a numeric code is the server's answer (§5.1). */
static bool server_busy(long status, const struct dbx_strbuf *body)
{
	if (status != 500 && status != 502 && status != 503 && status != 504)
		return false;
	cJSON *j = body->len ? cJSON_ParseWithLength(body->data, body->len) : NULL;
	bool coded = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "code"));
	cJSON_Delete(j);
	return !coded;
}

int dbx__http_do(const struct dbx__http *rq, long *ret_status, char **ret_body, size_t *ret_len,
		 char *err, size_t errlen)
{
	struct collect col;
	int delay_ms = 1000;
	int r;

	*ret_body = NULL;
	*ret_status = 0;
	err[0] = '\0';
	for (int attempt = 0;; attempt++) {
		long timeout_ms = rq->timeout_ms > 0 ? rq->timeout_ms : 30000;
		if (rq->deadline_ms) {
			uint64_t now = dbx_now_ms();
			if (now >= rq->deadline_ms) {
				snprintf(err, errlen, "no time left");
				return -ETIMEDOUT;
			}
			if (rq->deadline_ms - now < (uint64_t)timeout_ms)
				timeout_ms = (long)(rq->deadline_ms - now);
		}
		dbx_sb_init(&col.sb, rq->max_body ? rq->max_body : HTTP_MAX_BODY);
		col.overflow = false;
		long status = 0;
		r = http_once(rq, timeout_ms, &status, &col, err, errlen);
		bool again = false;
		if (r == -ECONNREFUSED || r == -ECONNRESET || r == -EHOSTUNREACH)
			again = true;
		else if (r == -ETIMEDOUT)
			again = rq->retry_timeouts;
		else if (r == 0)
			again = server_busy(status, &col.sb);
		if (again && rq->deadline_ms &&
		    dbx_now_ms() + (uint64_t)delay_ms >= rq->deadline_ms)
			again = false; /* the next attempt would start too late */
		if (!again || attempt >= rq->retries) {
			if (r == 0) {
				if (dbx_sb_reserve(&col.sb, 1) < 0) {
					dbx_sb_free(&col.sb);
					snprintf(err, errlen, "out of memory");
					return -ENOMEM;
				}
				*ret_status = status;
				*ret_body = dbx_sb_steal(&col.sb, ret_len);
			}
			dbx_sb_free(&col.sb);
			return r;
		}
		dbx_sb_free(&col.sb);
		dbx__log(2, "%s %s: %s, retrying in %d ms", rq->method, rq->url,
			 r ? err : "server busy", delay_ms);
		struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		delay_ms *= 2;
	}
}

int dbx__agent_health(const char *agent_url, const char *token, bool insecure, int timeout_ms)
{
	char *url = NULL, *auth = NULL, *body = NULL;
	char err[256];
	long status;
	size_t len;
	int r;

	if (asprintf(&url, "%s/health", agent_url) < 0) {
		url = NULL;
		return -ENOMEM;
	}
	if (token && *token && asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
		auth = NULL;
		r = -ENOMEM;
		goto out;
	}
	const char *hdrs[] = {auth, NULL};
	struct dbx__http rq = {
		.method = "GET",
		.url = url,
		.headers = hdrs,
		.timeout_ms = timeout_ms,
		.connect_timeout_ms = timeout_ms,
		.insecure = insecure,
		.max_body = 64 << 10,
	};
	r = dbx__http_do(&rq, &status, &body, &len, err, sizeof(err));
	if (r < 0)
		goto out;
	r = -EIO;
	if (status == 200) {
		cJSON *j = cJSON_ParseWithLength(body, len);
		const cJSON *hs = cJSON_GetObjectItemCaseSensitive(j, "healthStatus");
		if (cJSON_IsString(hs) && !strcmp(hs->valuestring, "ok"))
			r = 0;
		cJSON_Delete(j);
	}
out:
	free(body);
	free(auth);
	free(url);
	return r;
}

/* ---- handle ---------------------------------------------------------------------------- */

int dbx_provider_open(const struct dbx_provider_config *cfg, dbx_provider **ret_p)
{
	static const struct dbx_provider_config none;
	const struct dbx__provider_ops *ops;
	dbx_provider *p;
	int r;

	*ret_p = NULL;
	if (!cfg)
		cfg = &none;
	const char *name = cfg->name;
	if (!name || !*name)
		name = getenv("DEVBOX_PROVIDER");
	if (!name || !*name)
		name = "local";
	if (!strcmp(name, "local"))
		ops = &dbx__local_ops;
	else if (!strcmp(name, "sealos"))
		ops = &dbx__sealos_ops;
	else
		return dbx__error(EINVAL, "open provider %s: unknown provider (local or sealos)",
				  name);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return dbx__error(ENOMEM, "open provider %s: libcurl initialisation failed", name);
	p = calloc(1, sizeof(*p));
	if (!p) {
		curl_global_cleanup();
		return dbx__error(ENOMEM, "open provider %s: out of memory", name);
	}
	p->ops = ops;
	p->insecure = cfg->insecure;
	p->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 30000;
	r = ops->open(p, cfg);
	if (r < 0) {
		free(p);
		curl_global_cleanup();
		return r;
	}
	*ret_p = p;
	return 0;
}

dbx_provider *dbx_provider_free(dbx_provider *p)
{
	if (!p)
		return NULL;
	p->ops->close(p);
	free(p);
	curl_global_cleanup();
	return NULL;
}

const char *dbx_provider_name(const dbx_provider *p)
{
	return p ? p->ops->name : NULL;
}

/* ---- info objects ---------------------------------------------------------------------- */

struct dbx_box_info *dbx__box_info_new(const char *name)
{
	struct dbx_box_info *i = calloc(1, sizeof(*i));
	if (!i)
		return NULL;
	if (name && dbx__strdup_to(&i->name, name) < 0) {
		free(i);
		return NULL;
	}
	return i;
}

struct dbx_box_info *dbx_box_info_free(struct dbx_box_info *info)
{
	if (!info)
		return NULL;
	free(info->name);
	free(info->status);
	free(info->reason);
	free(info->runtime);
	free(info->agent_url);
	free(info->agent_token);
	free(info->workspace);
	for (size_t i = 0; i < info->n_ports; i++) {
		free(info->ports[i].protocol);
		free(info->ports[i].public_url);
	}
	free(info->ports);
	free(info);
	return NULL;
}

void dbx_box_list_free(struct dbx_box_info **list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++)
		dbx_box_info_free(list[i]);
	free(list);
}

void dbx_strv_free(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* ---- lifecycle dispatch ---------------------------------------------------------------- */

int dbx_box_create(dbx_provider *p, const struct dbx_box_spec *spec, struct dbx_box_info **ret_info)
{
	struct dbx_box_info *info = NULL;
	int r;

	if (ret_info)
		*ret_info = NULL;
	if (!p || !spec)
		return dbx__error(EINVAL, "create: no provider or spec");
	r = dbx__box_name_check("create", spec->name);
	if (r < 0)
		return r;
	r = p->ops->create(p, spec, &info);
	if (r < 0)
		return r;
	if (!spec->no_wait) {
		struct dbx_box_info *ready = NULL;
		r = dbx_box_wait_ready(p, spec->name, spec->wait_timeout_ms, &ready);
		if (r < 0) {
			dbx_box_info_free(info);
			return r;
		}
		dbx_box_info_free(info);
		info = ready;
	}
	if (ret_info)
		*ret_info = info;
	else
		dbx_box_info_free(info);
	return 0;
}

int dbx_box_list(dbx_provider *p, struct dbx_box_info ***ret_list, size_t *ret_n)
{
	*ret_list = NULL;
	*ret_n = 0;
	return p->ops->list(p, ret_list, ret_n);
}

int dbx_box_get(dbx_provider *p, const char *name, struct dbx_box_info **ret_info)
{
	*ret_info = NULL;
	int r = dbx__box_name_check("get", name);
	return r < 0 ? r : p->ops->get(p, name, ret_info);
}

#define DISPATCH(verb, field)                                                                      \
	int dbx_box_##verb(dbx_provider *p, const char *name)                                      \
	{                                                                                          \
		int r = dbx__box_name_check(#verb, name);                                          \
		return r < 0 ? r : p->ops->field(p, name);                                         \
	}
DISPATCH(start, start)
DISPATCH(pause, pause)
DISPATCH(restart, restart)
DISPATCH(shutdown, shutdown)
DISPATCH(delete, remove)
#undef DISPATCH

int dbx_box_monitor(dbx_provider *p, const char *name, int64_t since_ms,
		    struct dbx_monitor_sample **ret_samples, size_t *ret_n)
{
	*ret_samples = NULL;
	*ret_n = 0;
	int r = dbx__box_name_check("monitor", name);
	return r < 0 ? r : p->ops->monitor(p, name, since_ms, ret_samples, ret_n);
}

int dbx_templates_list(dbx_provider *p, char ***ret_names, size_t *ret_n)
{
	*ret_names = NULL;
	*ret_n = 0;
	return p->ops->templates(p, ret_names, ret_n);
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int dbx_box_wait_ready(dbx_provider *p, const char *name, int timeout_ms,
		       struct dbx_box_info **ret_info)
{
	char last[64] = "unknown";
	double step = WAIT_FIRST_MS;
	int r;

	if (ret_info)
		*ret_info = NULL;
	r = dbx__box_name_check("wait", name);
	if (r < 0)
		return r;
	if (timeout_ms <= 0)
		timeout_ms = WAIT_DEFAULT_MS;
	uint64_t deadline = dbx_now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		struct dbx_box_info *info = NULL;
		p->deadline_ms = deadline; /* a hanging control plane does not stretch the wait */
		r = p->ops->get(p, name, &info);
		p->deadline_ms = 0;
		if (r == -EKEYREJECTED || r == -EACCES || r == -EINVAL || r == -EPROTO)
			return r; /* credentials or configuration: waiting does not help */
		if (r == 0) {
			uint64_t now = dbx_now_ms();
			int health_ms = now >= deadline         ? 0
					: now + 5000 < deadline ? 5000
								: (int)(deadline - now);
			snprintf(last, sizeof(last), "%s", info->status ? info->status : "unknown");
			if (info->status && !strcmp(info->status, "Running") && info->agent_url &&
			    health_ms > 0 &&
			    dbx__agent_health(info->agent_url, info->agent_token, p->insecure,
					      health_ms) == 0) {
				if (ret_info)
					*ret_info = info;
				else
					dbx_box_info_free(info);
				dbx_error_clear();
				return 0;
			}
			/* A local box in Error has no agent; nothing will change by waiting. */
			if (p->ops == &dbx__local_ops && info->status &&
			    !strcmp(info->status, "Error")) {
				r = dbx__error(EIO, "wait %s: devbox is in Error: %s", name,
					       info->reason ? info->reason : "unknown reason");
				dbx_box_info_free(info);
				return r;
			}
			dbx_box_info_free(info);
		} else if (dbx_now_ms() < deadline || !strcmp(last, "unknown")) {
			/* a call cut short by the deadline does not hide the status seen before */
			snprintf(last, sizeof(last), "%s", dbx_error_last());
		}
		uint64_t now = dbx_now_ms();
		if (now >= deadline)
			break;
		uint64_t left = deadline - now;
		sleep_ms((int)((uint64_t)step < left ? (uint64_t)step : left));
		step = step * 1.5 > WAIT_MAX_STEP_MS ? WAIT_MAX_STEP_MS : step * 1.5;
	}
	return dbx__error(ETIMEDOUT, "wait %s: devbox did not become ready within %d ms (last: %s)",
			  name, timeout_ms, last);
}

int dbx_box_connect(dbx_provider *p, const char *name, dbx_client **ret_client)
{
	struct dbx_box_info *info = NULL;
	int r;

	*ret_client = NULL;
	r = dbx_box_get(p, name, &info);
	if (r < 0)
		return r;
	if (!info->status || strcmp(info->status, "Running") || !info->agent_url) {
		r = dbx__error(EAGAIN, "connect %s: devbox is %s%s%s, not Running", name,
			       info->status ? info->status : "not ready", info->reason ? ": " : "",
			       info->reason ? info->reason : "");
		goto out;
	}
	struct dbx_client_config cfg = {
		.url = info->agent_url,
		.token = info->agent_token,
		.timeout_ms = p->timeout_ms,
		.insecure = p->insecure,
	};
	r = dbx_client_new(&cfg, ret_client);
out:
	dbx_box_info_free(info);
	return r;
}
