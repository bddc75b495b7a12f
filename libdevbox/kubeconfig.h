/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Kubeconfig loading (libyaml) for the sealos provider: the current context's cluster server,
 * namespace and user token, plus the raw text (the control plane authenticates with the whole
 * file).  Errors name "kubeconfig FILE:LINE: reason".  Pure functions, any thread.
 */
#pragma once
#include <stddef.h>

struct dbx__kubeconfig {
	char *path; /* the file it came from */
	char *text; /* exact file contents, NUL-terminated */
	size_t len;
	char *context;   /* current-context */
	char *cluster;   /* the context's cluster name */
	char *server;    /* that cluster's server URL */
	char *namespace; /* the context's namespace, or NULL */
	char *user;      /* the context's user name, or NULL */
	char *token;     /* that user's token, or NULL */
};

/* path NULL: $KUBECONFIG (first non-empty entry of the colon list), else ~/.kube/config. */
int dbx__kubeconfig_load(const char *path, struct dbx__kubeconfig **ret_kc);
/* Parses text (len bytes); label names the file in error messages. */
int dbx__kubeconfig_parse(const char *label, const char *text, size_t len,
			  struct dbx__kubeconfig **ret_kc);
struct dbx__kubeconfig *dbx__kubeconfig_free(struct dbx__kubeconfig *kc);

/* The devbox control-plane base URL for a cluster server (agent-api.md §5.1):
 * "https://1.2.3.4.nip.io:6443/x" -> "https://devbox.1.2.3.4.nip.io".  -EINVAL if not an
 * http(s) URL with a host. */
int dbx__devbox_url_from_server(const char *server, char **ret_url);

/* encodeURIComponent(): every byte except A-Z a-z 0-9 - _ . ! ~ * ' ( ) as %XX (upper case).
 * NULL on ENOMEM. */
char *dbx__uri_encode_component(const char *s, size_t len);
