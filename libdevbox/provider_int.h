/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Provider internals: the vtable behind dbx_provider and a small blocking HTTP helper used
 * for the control plane and agent health checks (own libcurl easy handle per call, so it does
 * not depend on a dbx_client).
 *
 * Threads: a provider handle belongs to one thread at a time (provider.h); the HTTP helper is
 * reentrant.  Lifetime: ops->close() releases priv; dbx_provider_free() releases the rest.
 */
#pragma once
#include "internal.h"

struct dbx__provider_ops {
	const char *name;
	int (*open)(dbx_provider *p, const struct dbx_provider_config *cfg);
	void (*close)(dbx_provider *p);
	/* Starts creating; the caller (provider.c) validates the name and waits if asked. */
	int (*create)(dbx_provider *p, const struct dbx_box_spec *spec,
		      struct dbx_box_info **ret_info);
	int (*list)(dbx_provider *p, struct dbx_box_info ***ret_list, size_t *ret_n);
	int (*get)(dbx_provider *p, const char *name, struct dbx_box_info **ret_info);
	int (*start)(dbx_provider *p, const char *name);
	int (*pause)(dbx_provider *p, const char *name);
	int (*restart)(dbx_provider *p, const char *name);
	int (*shutdown)(dbx_provider *p, const char *name);
	int (*remove)(dbx_provider *p, const char *name);
	int (*monitor)(dbx_provider *p, const char *name, int64_t since_ms,
		       struct dbx_monitor_sample **ret_samples, size_t *ret_n);
	int (*templates)(dbx_provider *p, char ***ret_names, size_t *ret_n);
};

struct dbx_provider {
	const struct dbx__provider_ops *ops;
	void *priv;           /* the provider's own state, owned by ops */
	bool insecure;        /* TLS verification off towards control plane and agents */
	int timeout_ms;       /* per control-plane request */
	uint64_t deadline_ms; /* dbx_now_ms() by which control-plane calls end (wait-until-ready),
			       * 0: none */
};

extern const struct dbx__provider_ops dbx__local_ops;
extern const struct dbx__provider_ops dbx__sealos_ops;

/* 0 when name is a DNS label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, 1-63 chars); else -EINVAL with
 * the message "<op> <name>: ...". */
int dbx__box_name_check(const char *op, const char *name);

/* Wall clock in ms since the epoch. */
int64_t dbx__wall_ms(void);

struct dbx__http {
	const char *method;
	const char *url;
	const char *const *headers; /* "Name: value", NULL-terminated, may be NULL */
	const char *body;           /* may be NULL */
	size_t body_len;
	int timeout_ms;         /* total per attempt; 0: 30000 */
	int connect_timeout_ms; /* 0: 5000 */
	int retries;            /* extra attempts on network errors and 500/502/503/504
				 * whose body has no JSON "code" */
	bool retry_timeouts;    /* also retry timeouts (idempotent requests only) */
	bool insecure;
	size_t max_body;      /* 0: 16 MiB */
	uint64_t deadline_ms; /* dbx_now_ms() after which no attempt runs (-ETIMEDOUT), 0: none */
};

/* Performs the request (retrying with 1 s, 2 s, 4 s ... back-off).  0 on any HTTP status with
 * *ret_status and the NUL-terminated body (caller frees) set; on a transport failure -errno
 * with *ret_body NULL and the curl reason in err (at least 256 bytes). */
int dbx__http_do(const struct dbx__http *rq, long *ret_status, char **ret_body, size_t *ret_len,
		 char *err, size_t errlen);

/* GET <agent_url>/health: 0 when the reply is 200 with healthStatus "ok", else -errno
 * (no error message set; used for polling). */
int dbx__agent_health(const char *agent_url, const char *token, bool insecure, int timeout_ms);

/* Info object helpers. */
struct dbx_box_info *dbx__box_info_new(const char *name);
int dbx__strdup_to(char **dst, const char *s); /* NULL s stores NULL; -ENOMEM */
