/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl internals: global options, the verb table, output and error helpers.
 *
 * Single-threaded except where a verb says otherwise.  Every verb is
 *   int ctl_cmd_<verb>(struct ctl_global *g, int argc, char **argv)
 * with argv[0] = the verb name; it parses its own options (getopt_long with "+:", or ":"
 * where options may follow the arguments, and opterr = 0; errors reported by
 * ctl_bad_option(); -h/--help; -o/--output where the verb prints data) and returns the process
 * exit status.  Help texts share one layout: "Usage: devboxctl VERB [OPTIONS] ARGS", a blank
 * line, the description, a blank line, "Options:" (always with "-h, --help"), and an "Exit
 * status:" line only where it differs from the global one.
 *
 * Exit statuses (documented in `devboxctl --help` and ctl/README.md):
 *   0   success
 *   1   the operation failed (unknown box, no such file, permission, disk full, ...)
 *   2   bad command line
 *   255 transport or authentication failure (agent or control plane unreachable, wrong token,
 *       bad kubeconfig), like ssh
 *   exec only: the remote command's status, 128+N when it died of signal N.
 */
#pragma once
#include <cjson/cJSON.h>
#include <devbox/devbox.h>
#include <stdio.h>

enum ctl_output { CTL_OUT_TABLE, CTL_OUT_JSON };

enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_FAIL = 1,
	CTL_EXIT_USAGE = 2,
	CTL_EXIT_TRANSPORT = 255,
};

struct ctl_global {
	const char *provider;   /* --provider, NULL: default */
	const char *kubeconfig; /* --kubeconfig */
	const char *api_url;    /* --api-url */
	const char *home;       /* --home (local provider root) */
	const char *agent;      /* --agent (local provider: devbox-agent binary) */
	bool insecure;          /* --insecure */
	enum ctl_output output; /* -o json|table */
	int timeout_ms;         /* --timeout SECONDS, 0: library default */
	bool quiet;             /* -q */
};

struct ctl_verb {
	const char *name;
	int (*run)(struct ctl_global *g, int argc, char **argv);
	const char *summary; /* one line for `devboxctl --help` */
};

/* Opens the configured provider; on failure prints the error and returns the exit status
 * (nonzero).  *ret_p is the caller's. */
int ctl_provider(struct ctl_global *g, dbx_provider **ret_p);
/* A client for BOX: a box name resolved by the provider, or an agent URL (http[s]://...) with
 * the token from $DEVBOX_TOKEN.  Prints the error and returns the exit status on failure. */
int ctl_connect(struct ctl_global *g, const char *box, dbx_client **ret_client);

/* Prints "devboxctl: <op>: <dbx_error_last() or strerror(-err)>" to stderr and returns the exit
 * status for err (-errno): CTL_EXIT_TRANSPORT for transport/auth errnos, else CTL_EXIT_FAIL.
 * op may be NULL when the library message already names the operation. */
int ctl_fail(const char *op, int err);
/* Prints "devboxctl <verb>: <message>" and "Try 'devboxctl <verb> --help'." and returns 2. */
int ctl_usage_error(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* getopt_long returned '?' or ':' (optstring "+:...", opterr = 0): prints "unknown option
 * '-x'" or "option '--foo' needs an argument" the ctl_usage_error() way and returns 2. */
int ctl_bad_option(const char *verb, int c, char **argv);
/* -o/--output after the verb: sets g->output from "json" or "table"; 0 or 2 (error printed). */
int ctl_set_output(struct ctl_global *g, const char *verb, const char *arg);
/* -o given to a verb that prints no table or JSON: the usage error, 2. */
int ctl_no_output(const char *verb);
/* True for the errnos that mean "could not reach or authenticate". */
bool ctl_is_transport_error(int err);

/* Output.  JSON goes to stdout as one document (pretty-printed, newline-terminated); the
 * function takes ownership of j.  Tables: columns separated by two spaces, padded. */
void ctl_print_json(cJSON *j);
struct ctl_table;
struct ctl_table *ctl_table_new(int ncols, ...); /* column headers */
void ctl_table_add(struct ctl_table *t, ...);     /* ncols strings (NULL prints "-") */
void ctl_table_print(struct ctl_table *t, FILE *out); /* prints and frees */

/* "1.5 KiB", "12 MiB"; buf >= 16 bytes. */
const char *ctl_fmt_size(uint64_t n, char *buf, size_t len);
/* "3m ago" style relative time, or "-" for 0. */
const char *ctl_fmt_age(int64_t ms, char *buf, size_t len);

/* Verbs (ctl/verb-*.c). */
int ctl_cmd_create(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_list(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_get(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_start(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_pause(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_restart(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_shutdown(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_delete(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_monitor(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_templates(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_exec(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_cp(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_ls(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_cat(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_rm(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_mkdir(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_mv(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_watch(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_ps(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_logs(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_kill(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_ports(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_mount(struct ctl_global *g, int argc, char **argv);
int ctl_cmd_umount(struct ctl_global *g, int argc, char **argv);
