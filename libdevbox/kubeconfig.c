/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Kubeconfig for the sealos provider: find the file, read it whole (the control plane wants the
 * exact text), and follow current-context -> context -> cluster server / user token with
 * libyaml's document loader, so every error can name the line it is about.
 *
 * Pure functions; any thread.
 */
#include "kubeconfig.h"

#include "provider_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define KUBECONFIG_MAX (4u << 20)
/* Real kubeconfigs nest 4 levels deep.  libyaml's scanner is quadratic in the flow nesting
 * depth (a 4 MiB "[[[[..." takes hours), so deeper documents are refused by a first pass
 * that stops at the first event beyond the limit. */
#define KUBECONFIG_MAX_DEPTH 64

struct kdoc {
	const char *label;
	yaml_document_t doc;
};

static unsigned long line_of(const yaml_node_t *n)
{
	return n ? (unsigned long)n->start_mark.line + 1 : 1;
}

/* The value node for key in mapping m, or NULL (also when m is not a mapping). */
static yaml_node_t *map_get(struct kdoc *d, yaml_node_t *m, const char *key)
{
	if (!m || m->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = yaml_document_get_node(&d->doc, p->key);
		if (k && k->type == YAML_SCALAR_NODE &&
		    !strcmp((const char *)k->data.scalar.value, key))
			return yaml_document_get_node(&d->doc, p->value);
	}
	return NULL;
}

static const char *scalar(const yaml_node_t *n)
{
	if (!n || n->type != YAML_SCALAR_NODE || n->data.scalar.length == 0)
		return NULL;
	return (const char *)n->data.scalar.value;
}

/* The entry of list `section` (clusters, contexts, users) whose name is `name`; *ret_entry is
 * the list item (for line numbers), the return value its `section_key` mapping. */
static int find_named(struct kdoc *d, yaml_node_t *root, const char *section,
		      const char *section_key, const char *name, const yaml_node_t *ref,
		      yaml_node_t **ret_entry, yaml_node_t **ret_body)
{
	yaml_node_t *list = map_get(d, root, section);
	if (list && list->type != YAML_SEQUENCE_NODE)
		return dbx__error(EBADMSG, "kubeconfig %s:%lu: '%s' is not a list", d->label,
				  line_of(list), section);
	if (list) {
		for (yaml_node_item_t *it = list->data.sequence.items.start;
		     it < list->data.sequence.items.top; it++) {
			yaml_node_t *e = yaml_document_get_node(&d->doc, *it);
			const char *n = scalar(map_get(d, e, "name"));
			if (!n || strcmp(n, name))
				continue;
			yaml_node_t *body = map_get(d, e, section_key);
			if (!body || body->type != YAML_MAPPING_NODE)
				return dbx__error(EBADMSG,
						  "kubeconfig %s:%lu: %s entry '%s' has no "
						  "'%s' mapping",
						  d->label, line_of(e), section, name, section_key);
			*ret_entry = e;
			*ret_body = body;
			return 0;
		}
	}
	return dbx__error(EBADMSG, "kubeconfig %s:%lu: %s '%s' not found in '%s'", d->label,
			  line_of(ref), section_key, name, section);
}

static int dup_field(char **dst, const char *s)
{
	return dbx__strdup_to(dst, s) < 0 ? dbx__error(ENOMEM, "kubeconfig: out of memory") : 0;
}

static int walk(struct kdoc *d, struct dbx__kubeconfig *kc)
{
	yaml_node_t *root = yaml_document_get_root_node(&d->doc);
	yaml_node_t *ctx_entry, *ctx, *cl_entry, *cl, *u_entry, *u;
	int r;

	if (!root)
		return dbx__error(EBADMSG, "kubeconfig %s:1: empty document", d->label);
	if (root->type != YAML_MAPPING_NODE)
		return dbx__error(EBADMSG, "kubeconfig %s:%lu: the top level is not a mapping",
				  d->label, line_of(root));
	yaml_node_t *cur = map_get(d, root, "current-context");
	if (!cur)
		cur = map_get(d, root, "currentContext");
	const char *cur_name = scalar(cur);
	if (!cur_name)
		return dbx__error(EBADMSG, "kubeconfig %s:%lu: no current-context", d->label,
				  line_of(cur ? cur : root));
	r = find_named(d, root, "contexts", "context", cur_name, cur, &ctx_entry, &ctx);
	if (r < 0)
		return r;
	yaml_node_t *cl_ref = map_get(d, ctx, "cluster");
	const char *cl_name = scalar(cl_ref);
	if (!cl_name)
		return dbx__error(EBADMSG, "kubeconfig %s:%lu: context '%s' names no cluster",
				  d->label, line_of(ctx_entry), cur_name);
	r = find_named(d, root, "clusters", "cluster", cl_name, cl_ref, &cl_entry, &cl);
	if (r < 0)
		return r;
	yaml_node_t *srv = map_get(d, cl, "server");
	const char *server = scalar(srv);
	if (!server)
		return dbx__error(EBADMSG, "kubeconfig %s:%lu: cluster '%s' has no server",
				  d->label, line_of(cl_entry), cl_name);
	if (strncmp(server, "https://", 8) && strncmp(server, "http://", 7))
		return dbx__error(EBADMSG,
				  "kubeconfig %s:%lu: cluster '%s' server '%s' is not an "
				  "http(s) URL",
				  d->label, line_of(srv), cl_name, server);
	yaml_node_t *u_ref = map_get(d, ctx, "user");
	const char *u_name = scalar(u_ref);
	const char *token = NULL;
	if (u_name) {
		r = find_named(d, root, "users", "user", u_name, u_ref, &u_entry, &u);
		if (r < 0)
			return r;
		token = scalar(map_get(d, u, "token"));
	}
	if ((r = dup_field(&kc->context, cur_name)) < 0 ||
	    (r = dup_field(&kc->cluster, cl_name)) < 0 ||
	    (r = dup_field(&kc->server, server)) < 0 ||
	    (r = dup_field(&kc->namespace, scalar(map_get(d, ctx, "namespace")))) < 0 ||
	    (r = dup_field(&kc->user, u_name)) < 0 || (r = dup_field(&kc->token, token)) < 0)
		return r;
	return 0;
}

/* First pass over the events: nesting depth and the number of documents.  Syntax errors are
 * left to the loader, which reports them. */
static int check_shape(const char *label, const char *text, size_t len)
{
	yaml_parser_t parser;
	yaml_event_t ev;
	int depth = 0, docs = 0, r = 0;

	if (!yaml_parser_initialize(&parser))
		return dbx__error(ENOMEM, "kubeconfig %s: out of memory", label);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	for (bool end = false; !end && r == 0;) {
		if (!yaml_parser_parse(&parser, &ev))
			break;
		unsigned long line = (unsigned long)ev.start_mark.line + 1;
		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			end = true;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (++docs > 1)
				r = dbx__error(EBADMSG,
					       "kubeconfig %s:%lu: more than one YAML document",
					       label, line);
			break;
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT:
			if (++depth > KUBECONFIG_MAX_DEPTH)
				r = dbx__error(EBADMSG,
					       "kubeconfig %s:%lu: nested deeper than %d levels",
					       label, line, KUBECONFIG_MAX_DEPTH);
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			depth--;
			break;
		default:
			break;
		}
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&parser);
	return r;
}

int dbx__kubeconfig_parse(const char *label, const char *text, size_t len,
			  struct dbx__kubeconfig **ret_kc)
{
	struct dbx__kubeconfig *kc = NULL;
	struct kdoc d = {.label = label};
	yaml_parser_t parser;
	bool have_doc = false;
	int r;

	*ret_kc = NULL;
	r = check_shape(label, text, len);
	if (r < 0)
		return r;
	if (!yaml_parser_initialize(&parser))
		return dbx__error(ENOMEM, "kubeconfig %s: out of memory", label);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &d.doc)) {
		if (parser.error == YAML_MEMORY_ERROR)
			r = dbx__error(ENOMEM, "kubeconfig %s: out of memory", label);
		else
			r = dbx__error(EBADMSG, "kubeconfig %s:%lu: YAML syntax error: %s%s%s",
				       label, (unsigned long)parser.problem_mark.line + 1,
				       parser.problem ? parser.problem : "invalid YAML",
				       parser.context ? " " : "",
				       parser.context ? parser.context : "");
		goto out;
	}
	have_doc = true;
	kc = calloc(1, sizeof(*kc));
	if (!kc) {
		r = dbx__error(ENOMEM, "kubeconfig %s: out of memory", label);
		goto out;
	}
	r = walk(&d, kc);
	if (r < 0)
		goto out;
	kc->text = malloc(len + 1);
	if (!kc->text || dup_field(&kc->path, label) < 0) {
		r = dbx__error(ENOMEM, "kubeconfig %s: out of memory", label);
		goto out;
	}
	memcpy(kc->text, text, len);
	kc->text[len] = '\0';
	kc->len = len;
	*ret_kc = kc;
	kc = NULL;
out:
	dbx__kubeconfig_free(kc);
	if (have_doc)
		yaml_document_delete(&d.doc);
	yaml_parser_delete(&parser);
	return r;
}

static int read_file(const char *path, char **ret, size_t *ret_len)
{
	struct dbx_strbuf sb;
	char buf[8192];
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return dbx__error(errno, "kubeconfig %s: %s", path, strerror(errno));
	dbx_sb_init(&sb, KUBECONFIG_MAX);
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = dbx__error(errno, "kubeconfig %s: %s", path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (dbx_sb_append(&sb, buf, (size_t)n) < 0) {
			r = dbx__error(EFBIG, "kubeconfig %s: larger than %u bytes", path,
				       KUBECONFIG_MAX);
			break;
		}
	}
	close(fd);
	if (r == 0 && dbx_sb_reserve(&sb, 1) < 0)
		r = dbx__error(ENOMEM, "kubeconfig %s: out of memory", path);
	if (r == 0)
		*ret = dbx_sb_steal(&sb, ret_len);
	dbx_sb_free(&sb);
	return r;
}

int dbx__kubeconfig_load(const char *path, struct dbx__kubeconfig **ret_kc)
{
	char *owned = NULL, *text = NULL;
	size_t len = 0;
	int r;

	*ret_kc = NULL;
	if (!path || !*path) {
		const char *env = getenv("KUBECONFIG");
		if (env)
			env += strspn(env, ":"); /* empty entries are skipped */
		if (env && *env) {
			size_t n = strcspn(env, ":");
			owned = strndup(env, n);
		} else {
			const char *home = getenv("HOME");
			if (!home || !*home)
				return dbx__error(ENOENT,
						  "kubeconfig: no --kubeconfig, $KUBECONFIG "
						  "or $HOME");
			if (asprintf(&owned, "%s/.kube/config", home) < 0)
				owned = NULL;
		}
		if (!owned)
			return dbx__error(ENOMEM, "kubeconfig: out of memory");
		path = owned;
	}
	r = read_file(path, &text, &len);
	if (r == 0)
		r = dbx__kubeconfig_parse(path, text, len, ret_kc);
	free(text);
	free(owned);
	return r;
}

struct dbx__kubeconfig *dbx__kubeconfig_free(struct dbx__kubeconfig *kc)
{
	if (!kc)
		return NULL;
	free(kc->path);
	if (kc->text) {
		explicit_bzero(kc->text, kc->len);
		free(kc->text);
	}
	free(kc->context);
	free(kc->cluster);
	free(kc->server);
	free(kc->namespace);
	free(kc->user);
	if (kc->token) {
		explicit_bzero(kc->token, strlen(kc->token));
		free(kc->token);
	}
	free(kc);
	return NULL;
}

int dbx__devbox_url_from_server(const char *server, char **ret_url)
{
	const char *scheme_end = strstr(server, "://");
	*ret_url = NULL;
	if (!scheme_end)
		return dbx__error(EINVAL, "api url from %s: not an http(s) URL", server);
	size_t slen = (size_t)(scheme_end - server);
	if (!((slen == 5 && !strncmp(server, "https", 5)) ||
	      (slen == 4 && !strncmp(server, "http", 4))))
		return dbx__error(EINVAL, "api url from %s: not an http(s) URL", server);
	const char *host = scheme_end + 3;
	size_t auth_len = strcspn(host, "/?#");
	const char *at = memchr(host, '@', auth_len);
	if (at) {
		auth_len -= (size_t)(at + 1 - host);
		host = at + 1;
	}
	size_t hlen;
	if (host[0] == '[') {
		const char *rb = memchr(host, ']', auth_len);
		if (!rb)
			return dbx__error(EINVAL, "api url from %s: bad IPv6 host", server);
		hlen = (size_t)(rb + 1 - host);
	} else {
		hlen = strcspn(host, ":/?#");
		if (hlen > auth_len)
			hlen = auth_len;
	}
	if (hlen == 0)
		return dbx__error(EINVAL, "api url from %s: no host", server);
	if (host[0] == '[')
		return dbx__error(EINVAL,
				  "api url from %s: cannot derive a devbox host from an "
				  "IPv6 address; set the API URL explicitly",
				  server);
	if (asprintf(ret_url, "%.*s://devbox.%.*s", (int)slen, server, (int)hlen, host) < 0) {
		*ret_url = NULL;
		return dbx__error(ENOMEM, "api url: out of memory");
	}
	return 0;
}

char *dbx__uri_encode_component(const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = malloc(len * 3 + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    (c && strchr("-_.!~*'()", c))) {
			*o++ = (char)c;
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return out;
}
