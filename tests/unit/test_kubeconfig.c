/* SPDX-License-Identifier: Apache-2.0 */
/* Kubeconfig parsing, control-plane URL derivation and Authorization encoding (TAP). */
#include "kubeconfig.h"
#include "provider_int.h"
#include "tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse(const char *text, struct dbx__kubeconfig **kc)
{
	return dbx__kubeconfig_parse("kc.yaml", text, strlen(text), kc);
}

/* clang-format off */
static const char good[] =
	"apiVersion: v1\n"                              /* 1 */
	"kind: Config\n"                                /* 2 */
	"clusters:\n"                                   /* 3 */
	"- name: east\n"                                /* 4 */
	"  cluster:\n"                                  /* 5 */
	"    server: https://192.168.12.53.nip.io:6443\n" /* 6 */
	"- name: west\n"                                /* 7 */
	"  cluster:\n"                                  /* 8 */
	"    server: https://cloud.example.com/k8s/path\n" /* 9 */
	"contexts:\n"                                   /* 10 */
	"- name: a\n"                                   /* 11 */
	"  context:\n"                                  /* 12 */
	"    cluster: east\n"                           /* 13 */
	"    user: alice\n"                             /* 14 */
	"    namespace: ns-alice\n"                     /* 15 */
	"- name: b\n"                                   /* 16 */
	"  context: {cluster: west, user: bob}\n"       /* 17 */
	"current-context: b\n"                          /* 18 */
	"users:\n"                                      /* 19 */
	"- name: alice\n"                               /* 20 */
	"  user:\n"                                     /* 21 */
	"    token: tok-alice\n"                        /* 22 */
	"- name: bob\n"                                 /* 23 */
	"  user:\n"                                     /* 24 */
	"    token: \"tok-bob\"\n";                     /* 25 */
/* clang-format on */

static void test_good(void)
{
	struct dbx__kubeconfig *kc = NULL;
	int r = parse(good, &kc);
	ok(r == 0 && kc, "good kubeconfig parses (r=%d: %s)", r, dbx_error_last());
	if (!kc)
		return;
	is_str(kc->context, "b", "current-context selects b");
	is_str(kc->cluster, "west", "context b -> cluster west (flow mapping)");
	is_str(kc->server, "https://cloud.example.com/k8s/path", "west's server");
	is_str(kc->user, "bob", "user bob");
	is_str(kc->token, "tok-bob", "bob's token (quoted scalar)");
	ok(kc->namespace == NULL, "no namespace in context b");
	ok(kc->len == strlen(good) && !memcmp(kc->text, good, kc->len), "raw text kept exactly");
	is_str(kc->path, "kc.yaml", "label kept");
	dbx__kubeconfig_free(kc);

	/* Same file, other current context. */
	char *other = strdup(good);
	char *cc = strstr(other, "current-context: b");
	cc[17] = 'a';
	r = parse(other, &kc);
	ok(r == 0, "current-context a parses");
	if (kc) {
		is_str(kc->cluster, "east", "context a -> cluster east");
		is_str(kc->server, "https://192.168.12.53.nip.io:6443", "east's server");
		is_str(kc->token, "tok-alice", "alice's token");
		is_str(kc->namespace, "ns-alice", "namespace of context a");
	}
	dbx__kubeconfig_free(kc);
	free(other);

	/* The SDK also accepts currentContext; a user without token is fine. */
	r = parse("clusters: [{name: c, cluster: {server: 'http://10.0.0.1:6443'}}]\n"
		  "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
		  "users: [{name: u, user: {client-certificate-data: AAAA}}]\n"
		  "currentContext: x\n",
		  &kc);
	ok(r == 0, "currentContext spelling, flow style, http server");
	if (kc) {
		is_str(kc->server, "http://10.0.0.1:6443", "http server kept");
		ok(kc->token == NULL, "user without token -> NULL token");
	}
	dbx__kubeconfig_free(kc);
}

/* A malformed file fails with EBADMSG and exactly this message. */
static void bad(const char *text, const char *want, const char *what)
{
	struct dbx__kubeconfig *kc = NULL;
	dbx_error_clear();
	int r = parse(text, &kc);
	ok(r == -EBADMSG && kc == NULL, "%s: -EBADMSG (r=%d)", what, r);
	ok(!strncmp(dbx_error_last(), want, strlen(want)), "%s: message", what);
	if (strncmp(dbx_error_last(), want, strlen(want)))
		printf("#   got '%s'\n#   want prefix '%s'\n", dbx_error_last(), want);
}

static void test_bad(void)
{
	bad("clusters:\n- name: c\n  cluster:\n    server: [unclosed\n",
	    "kubeconfig kc.yaml:5: YAML syntax error", "YAML syntax error (line of the problem)");
	bad("a: 1\n  b: 2\n", "kubeconfig kc.yaml:2: YAML syntax error", "bad indentation");
	bad("", "kubeconfig kc.yaml:1: empty document", "empty file");
	bad("- a\n- b\n", "kubeconfig kc.yaml:1: the top level is not a mapping", "a list");
	bad("apiVersion: v1\nclusters: []\n", "kubeconfig kc.yaml:1: no current-context",
	    "missing current-context");
	bad("apiVersion: v1\ncurrent-context: \"\"\n", "kubeconfig kc.yaml:2: no current-context",
	    "empty current-context");
	bad("contexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: zz\n",
	    "kubeconfig kc.yaml:4: context 'zz' not found in 'contexts'", "context not found");
	bad("contexts:\n- name: a\n  context: {user: u}\ncurrent-context: a\n",
	    "kubeconfig kc.yaml:2: context 'a' names no cluster", "context without cluster");
	bad("contexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: a\n",
	    "kubeconfig kc.yaml:3: cluster 'c' not found in 'clusters'", "cluster not found");
	bad("clusters:\n- name: c\n  cluster:\n    insecure-skip-tls-verify: true\n"
	    "contexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: a\n",
	    "kubeconfig kc.yaml:2: cluster 'c' has no server", "cluster without server");
	bad("clusters:\n- name: c\n  cluster:\n    server: ftp://x\n"
	    "contexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: a\n",
	    "kubeconfig kc.yaml:4: cluster 'c' server 'ftp://x' is not an http(s) URL",
	    "server not http(s)");
	bad("clusters:\n- name: c\n  cluster: {server: 'https://h'}\n"
	    "contexts:\n- name: a\n  context: {cluster: c, user: nobody}\ncurrent-context: a\n"
	    "users: []\n",
	    "kubeconfig kc.yaml:6: user 'nobody' not found in 'users'", "user not found");
	bad("clusters: {c: 1}\ncontexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: a\n",
	    "kubeconfig kc.yaml:1: 'clusters' is not a list", "clusters not a list");
}

/* libyaml edge cases: aliases resolve, a second document, deep nesting, non-scalar values. */
static void test_yaml_edges(void)
{
	struct dbx__kubeconfig *kc = NULL;
	int r = parse("clusters:\n- name: c\n  cluster: &srv {server: 'https://h:1'}\n"
		      "- name: d\n  cluster: *srv\n"
		      "contexts:\n- name: a\n  context: {cluster: d}\ncurrent-context: a\n",
		      &kc);
	ok(r == 0 && kc && !strcmp(kc->server, "https://h:1"), "alias to an anchored cluster (%s)",
	   dbx_error_last());
	dbx__kubeconfig_free(kc);

	bad("clusters:\n- name: c\n  cluster: {server: 'https://h'}\n"
	    "contexts:\n- name: a\n  context: {cluster: c}\ncurrent-context: a\n"
	    "---\ncurrent-context: b\n",
	    "kubeconfig kc.yaml:8: more than one YAML document", "two documents");
	bad("current-context: [a]\n", "kubeconfig kc.yaml:1: no current-context",
	    "current-context is a list");
	bad("current-context: a\ncontexts:\n- name: a\n  context: [cluster, c]\n",
	    "kubeconfig kc.yaml:3: contexts entry 'a' has no 'context' mapping",
	    "context is a list");

	/* 200000 nested flow sequences: an error or a parse, never a stack overflow. */
	size_t depth = 200000;
	char *deep = malloc(depth * 2 + 64);
	char *o = deep + sprintf(deep, "current-context: a\nx: ");
	memset(o, '[', depth);
	memset(o + depth, ']', depth);
	strcpy(o + 2 * depth, "\n");
	r = dbx__kubeconfig_parse("kc.yaml", deep, strlen(deep), &kc);
	ok(r == -EBADMSG && !kc, "deeply nested document: -EBADMSG (r=%d: %s)", r,
	   dbx_error_last());
	free(deep);
}

static void url(const char *server, const char *want)
{
	char *got = NULL;
	int r = dbx__devbox_url_from_server(server, &got);
	if (want) {
		ok(r == 0, "derive %s", server);
		is_str(got, want, "  -> %s", want);
	} else {
		ok(r == -EINVAL && !got, "derive %s: -EINVAL (%s)", server, dbx_error_last());
	}
	free(got);
}

static void test_urls(void)
{
	url("https://192.168.12.53.nip.io:6443", "https://devbox.192.168.12.53.nip.io");
	url("https://1.2.3.4.nip.io:6443", "https://devbox.1.2.3.4.nip.io");
	url("https://cloud.sealos.io", "https://devbox.cloud.sealos.io");
	url("https://cloud.sealos.io/", "https://devbox.cloud.sealos.io");
	url("https://usw.sealos.io:443/some/path?q=1", "https://devbox.usw.sealos.io");
	url("http://user@10.0.0.1:6443", "http://devbox.10.0.0.1");
	url("ftp://x.example", NULL);
	url("https://", NULL);
	url("not a url", NULL);
	url("https://[::1]:6443", NULL);
}

static void test_encoding(void)
{
	const char in[] = "apiVersion: v1\n name: \"a b\"/c?d=e&f#g%h+i~j*k'l(m)n!o_p.q-r\tä";
	char *e = dbx__uri_encode_component(in, strlen(in));
	is_str(e,
	       "apiVersion%3A%20v1%0A%20name%3A%20%22a%20b%22%2Fc%3Fd%3De%26f%23g%25h%2Bi~j*k'l(m)"
	       "n!"
	       "o_p.q-r%09%C3%A4",
	       "encodeURIComponent semantics");
	free(e);
	e = dbx__uri_encode_component("", 0);
	is_str(e, "", "empty string");
	free(e);
}

static void test_load(void)
{
	char dir[] = "/tmp/dbx-kc-XXXXXX";
	char path[256], path2[256], env[600];
	struct dbx__kubeconfig *kc = NULL;
	if (!mkdtemp(dir)) {
		ok(0, "mkdtemp");
		return;
	}
	snprintf(path, sizeof(path), "%s/config", dir);
	snprintf(path2, sizeof(path2), "%s/other", dir);
	FILE *f = fopen(path, "w");
	fputs(good, f);
	fclose(f);

	/* $KUBECONFIG: the first entry of the colon list is used. */
	snprintf(env, sizeof(env), "%s:%s", path, path2);
	setenv("KUBECONFIG", env, 1);
	int r = dbx__kubeconfig_load(NULL, &kc);
	ok(r == 0 && kc, "load from $KUBECONFIG first entry (%s)", dbx_error_last());
	if (kc)
		is_str(kc->path, path, "path is the first entry");
	dbx__kubeconfig_free(kc);
	kc = NULL;

	/* Empty entries are skipped, as kubectl does. */
	snprintf(env, sizeof(env), "::%s:%s", path, path2);
	setenv("KUBECONFIG", env, 1);
	r = dbx__kubeconfig_load(NULL, &kc);
	ok(r == 0 && kc && !strcmp(kc->path, path), "$KUBECONFIG with empty entries first (%s)",
	   dbx_error_last());
	dbx__kubeconfig_free(kc);
	kc = NULL;

	/* An explicit path wins; a missing one is ENOENT naming the file. */
	r = dbx__kubeconfig_load(path2, &kc);
	ok(r == -ENOENT && !kc, "missing file -> -ENOENT");
	ok(strstr(dbx_error_last(), path2) != NULL, "message names %s: %s", path2,
	   dbx_error_last());

	/* ~/.kube/config when $KUBECONFIG is unset. */
	unsetenv("KUBECONFIG");
	char kdir[300];
	snprintf(kdir, sizeof(kdir), "%s/.kube", dir);
	mkdir(kdir, 0700);
	snprintf(path2, sizeof(path2), "%s/.kube/config", dir);
	rename(path, path2);
	setenv("HOME", dir, 1);
	r = dbx__kubeconfig_load(NULL, &kc);
	ok(r == 0 && kc, "load from ~/.kube/config");
	if (kc)
		is_str(kc->path, path2, "path is ~/.kube/config");
	dbx__kubeconfig_free(kc);
	unlink(path2);
	rmdir(kdir);
	rmdir(dir);
}

static void test_names(void)
{
	ok(dbx__box_name_check("t", "a") == 0, "name 'a'");
	ok(dbx__box_name_check("t", "my-box-1") == 0, "name 'my-box-1'");
	ok(dbx__box_name_check("t", "-a") == -EINVAL, "leading '-' refused");
	ok(dbx__box_name_check("t", "a-") == -EINVAL, "trailing '-' refused");
	ok(dbx__box_name_check("t", "A") == -EINVAL, "upper case refused");
	ok(dbx__box_name_check("t", "a.b") == -EINVAL, "dot refused");
	ok(dbx__box_name_check("t", "../x") == -EINVAL, "path refused");
	ok(dbx__box_name_check("t", "") == -EINVAL, "empty refused");
	char long64[65];
	memset(long64, 'a', 64);
	long64[64] = '\0';
	ok(dbx__box_name_check("t", long64) == -EINVAL, "64 chars refused");
	long64[63] = '\0';
	ok(dbx__box_name_check("t", long64) == 0, "63 chars accepted");
}

int main(void)
{
	test_good();
	test_bad();
	test_yaml_edges();
	test_urls();
	test_encoding();
	test_load();
	test_names();
	return tap_done();
}
