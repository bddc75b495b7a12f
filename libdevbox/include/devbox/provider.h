/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx_provider — devbox lifecycle.  Two providers behind one interface:
 *
 *  - "local" (default): a devbox is a directory $DEVBOX_HOME/<name>/ (default
 *    $XDG_STATE_HOME/devbox, else ~/.local/state/devbox) holding `workspace/`, a 0600 state
 *    file and the agent's log, served by a devbox-agent the provider starts on 127.0.0.1 with an
 *    ephemeral port and a random token.  Not a security boundary.
 *  - "sealos": the Sealos Devbox REST API (shared/reference/agent-api.md §5), authenticated with
 *    the user's kubeconfig.
 *
 * A provider handle is not thread-safe; use one per thread.
 */
#ifndef DEVBOX_PROVIDER_H
#define DEVBOX_PROVIDER_H

#include <devbox/client.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbx_provider dbx_provider;

struct dbx_provider_config {
	const char *name;       /* "local" or "sealos"; NULL: $DEVBOX_PROVIDER, else "local" */
	/* local */
	const char *home;       /* NULL: $DEVBOX_HOME, else $XDG_STATE_HOME/devbox, else ~/.local/state/devbox */
	const char *agent_path; /* NULL: $DEVBOX_AGENT, else devbox-agent next to the program, else $PATH */
	/* sealos */
	const char *kubeconfig; /* NULL: $KUBECONFIG (first file), else ~/.kube/config */
	const char *api_url;    /* NULL: $DEVBOX_API_URL, else derived from the kubeconfig server */
	bool insecure;          /* skip TLS verification towards control plane and agents */
	int timeout_ms;         /* per control-plane request; 0: 30000 */
};

DBX_API int dbx_provider_open(const struct dbx_provider_config *cfg, dbx_provider **ret_p);
DBX_API dbx_provider *dbx_provider_free(dbx_provider *p);
DBX_API const char *dbx_provider_name(const dbx_provider *p);

struct dbx_port {
	int number;
	char *protocol;   /* "HTTP" ... */
	char *public_url; /* may be NULL */
};

struct dbx_box_info {
	char *name;
	char *status;      /* "Running", "Paused", "Stopped", "Shutdown", "Pending", "Error", ... */
	char *reason;      /* why the status is Error (e.g. "agent exited"), else NULL */
	char *runtime;     /* template / runtime name; local: "local" */
	double cpu;        /* cores, 0 unknown */
	double memory_gib; /* 0 unknown */
	char *agent_url;   /* NULL while not reachable */
	char *agent_token; /* NULL if none */
	char *workspace;   /* local: absolute path of the workspace; sealos: the working dir */
	pid_t agent_pid;   /* local only, 0 otherwise */
	int64_t created_ms;
	struct dbx_port *ports;
	size_t n_ports;
};
DBX_API struct dbx_box_info *dbx_box_info_free(struct dbx_box_info *info);
DBX_API void dbx_box_list_free(struct dbx_box_info **list, size_t n);

struct dbx_box_spec {
	const char *name;             /* DNS label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, <= 63 chars */
	const char *runtime;          /* sealos: template name (required); local: ignored */
	double cpu;                   /* sealos cores; 0: 1 */
	double memory_gib;            /* sealos GiB; 0: 2 */
	const int *ports;             /* n_ports numbers exposed over HTTP */
	size_t n_ports;
	const char *const *env;       /* NULL-terminated "K=V", or NULL */
	bool no_wait;                 /* return at once instead of waiting until Running+healthy */
	int wait_timeout_ms;          /* 0: 180000 */
};

/* -EEXIST when the name is taken, -EINVAL for a bad name. */
DBX_API int dbx_box_create(dbx_provider *p, const struct dbx_box_spec *spec,
			   struct dbx_box_info **ret_info);
DBX_API int dbx_box_list(dbx_provider *p, struct dbx_box_info ***ret_list, size_t *ret_n);
/* -ENOENT for an unknown box.  A local box whose agent died is reported with status "Error"
 * and a reason, not as a failure. */
DBX_API int dbx_box_get(dbx_provider *p, const char *name, struct dbx_box_info **ret_info);
DBX_API int dbx_box_start(dbx_provider *p, const char *name);
DBX_API int dbx_box_pause(dbx_provider *p, const char *name);
DBX_API int dbx_box_restart(dbx_provider *p, const char *name);
DBX_API int dbx_box_shutdown(dbx_provider *p, const char *name);
DBX_API int dbx_box_delete(dbx_provider *p, const char *name);
/* Polls until Running and the agent answers /health (like the official SDK). */
DBX_API int dbx_box_wait_ready(dbx_provider *p, const char *name, int timeout_ms,
			       struct dbx_box_info **ret_info);

struct dbx_monitor_sample {
	int64_t time_ms;
	double cpu_percent;    /* of one core */
	double memory_percent; /* of the box's limit (sealos) or of the machine (local) */
	uint64_t memory_bytes; /* local: RSS of the box's processes; 0 if unknown */
	unsigned processes;    /* local: agent and its descendants; 0 if unknown */
};
/* sealos: the control plane's series for [since_ms, now]; local: one sample measured now
 * over a short interval. */
DBX_API int dbx_box_monitor(dbx_provider *p, const char *name, int64_t since_ms,
			    struct dbx_monitor_sample **ret_samples, size_t *ret_n);

/* Runtime templates ("local" has one: "local"). */
DBX_API int dbx_templates_list(dbx_provider *p, char ***ret_names, size_t *ret_n);
DBX_API void dbx_strv_free(char **v, size_t n);

/* A client for the box's agent (the box must be Running). */
DBX_API int dbx_box_connect(dbx_provider *p, const char *name, dbx_client **ret_client);

#ifdef __cplusplus
}
#endif
#endif
