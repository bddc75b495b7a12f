/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl cp: copy files and trees between here and a devbox, `docker cp` style.
 *
 *   devboxctl cp [-a] [-q] [--no-verify] [--no-skip] [-o json|table] SRC DST
 *
 * Exactly one of SRC and DST is BOX:PATH.  "-" as SRC reads a tar from stdin and extracts it
 * into BOX:DIR; "-" as DST writes a tar of BOX:PATH to stdout.
 *
 * Threads: main, plus a signal thread that turns SIGINT/SIGTERM/SIGHUP into
 * dbx_client_cancel() so the transfer stops cleanly (temp files removed) and exits 130/143.
 * SIGPIPE is ignored: a closed stdout shows up as EPIPE.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROGRESS_MIN_BYTES (4u << 20)

static void help(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl cp [OPTIONS] SRC DST\n"
		"\n"
		"Copy files or directories between the local machine and a devbox, like\n"
		"`docker cp`.  Exactly one of SRC and DST is BOX:PATH (PATH relative to the\n"
		"workspace).\n"
		"  - a directory DST that exists receives SRC under its own name; SRC/.\n"
		"    copies the contents of SRC instead;\n"
		"  - otherwise DST is created (its parent must exist); a trailing '/' on DST\n"
		"    requires an existing directory;\n"
		"  - '-' as SRC: a tar archive on stdin is extracted into the directory BOX:DIR;\n"
		"    '-' as DST: a tar of BOX:PATH is written to stdout.\n"
		"Modes, nanosecond mtimes and symlinks (verbatim) are kept.  Every file is\n"
		"written under a temporary name, renamed when complete, and checked with\n"
		"XXH3-64 after it arrived.  A regular file is skipped when the destination\n"
		"already has a regular file with the same size, permission bits, mtime (to the\n"
		"nanosecond) and XXH3-64 (never with '-' as SRC or DST).\n"
		"\n"
		"Options:\n"
		"  -a, --archive      keep uid/gid too (needs the right to chown there)\n"
		"      --no-verify    do not check the hashes of what arrived\n"
		"      --no-skip      send every file even when the destination matches\n"
		"  -q, --quiet        no progress bar and no summary\n"
		"  -o, --output FMT   table (default: a summary line on stderr) or json: the\n"
		"                     statistics as a JSON object on stdout (on stderr when\n"
		"                     the tar goes to stdout)\n"
		"  -h, --help         this help\n"
		"\n"
		"Exit status: 0 copied; 1 failed (no such file, outside the workspace, disk\n"
		"full, checksum mismatch ...); 2 bad command line; 255 the agent could not be\n"
		"reached or refused the token; 130/143 interrupted; 141 stdout closed under a\n"
		"tar.\n");
}

/* ---- BOX:PATH ------------------------------------------------------------------------------ */

/* Splits a remote operand.  Local: "-", anything starting with '/' or '.', or without a ':'
 * before the first '/'.  An agent URL box keeps its scheme, host and port:
 * "http://127.0.0.1:9757:dir" → box "http://127.0.0.1:9757", path "dir". */
static bool split_remote(const char *arg, char **ret_box, const char **ret_path)
{
	const char *colon = NULL;
	if (!strcmp(arg, "-") || arg[0] == '/' || arg[0] == '.')
		return false;
	if (!strncmp(arg, "http://", 7) || !strncmp(arg, "https://", 8)) {
		const char *p = strstr(arg, "://") + 3;
		if (*p == '[') {
			p = strchr(p, ']');
			if (!p)
				return false;
			p++;
		} else {
			p += strcspn(p, ":/");
		}
		if (*p == ':' && p[1] >= '0' && p[1] <= '9') {
			p++;
			p += strspn(p, "0123456789");
		}
		if (*p == '/')
			p = strchr(p, ':') ? strchr(p, ':') : p + strlen(p);
		if (*p != ':')
			return false;
		colon = p;
	} else {
		colon = strchr(arg, ':');
		const char *slash = strchr(arg, '/');
		if (!colon || colon == arg || (slash && slash < colon))
			return false;
	}
	*ret_box = strndup(arg, (size_t)(colon - arg));
	*ret_path = colon[1] ? colon + 1 : ".";
	return *ret_box != NULL;
}

/* ---- progress ------------------------------------------------------------------------------ */

struct bar {
	bool on; /* stderr is a terminal and the user did not ask for quiet */
	bool drawn;
	struct timespec t0;
};

static double since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void on_progress(void *ud, uint64_t done, uint64_t total, uint64_t fdone, uint64_t ftotal)
{
	struct bar *b = ud;
	if (!b->on || total < PROGRESS_MIN_BYTES)
		return;
	char d[16], t[16], rate[16];
	double secs = since(&b->t0);
	ctl_fmt_size(done, d, sizeof(d));
	ctl_fmt_size(total, t, sizeof(t));
	ctl_fmt_size(secs > 0 ? (uint64_t)((double)done / secs) : 0, rate, sizeof(rate));
	unsigned pct = total ? (unsigned)(done * 100 / total) : 100;
	fprintf(stderr, "\r\033[K%3u%% %s / %s  %llu/%llu files  %s/s", pct > 100 ? 100 : pct, d, t,
		(unsigned long long)fdone, (unsigned long long)ftotal, rate);
	fflush(stderr);
	b->drawn = true;
}

static void bar_clear(struct bar *b)
{
	if (b->drawn)
		fprintf(stderr, "\r\033[K");
	b->drawn = false;
}

/* ---- signals ------------------------------------------------------------------------------- */

struct sigctx {
	sigset_t set;
	dbx_client *c;
	volatile sig_atomic_t got;
};

static void *sig_thread(void *arg)
{
	struct sigctx *s = arg;
	int sig;
	if (sigwait(&s->set, &sig) == 0 && sig != SIGUSR2) {
		s->got = sig;
		dbx_client_cancel(s->c);
	}
	return NULL;
}

/* ---- the verb ------------------------------------------------------------------------------ */

static const char *plural(uint64_t n)
{
	return n == 1 ? "" : "s";
}

static void print_summary(struct ctl_global *g, const struct dbx_cp_stats *st, bool upload,
			  const char *dst, double secs, bool json_to_stderr)
{
	if (g->output == CTL_OUT_JSON) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "direction", upload ? "upload" : "download");
		cJSON_AddNumberToObject(j, "files", (double)st->files);
		cJSON_AddNumberToObject(j, "dirs", (double)st->dirs);
		cJSON_AddNumberToObject(j, "symlinks", (double)st->symlinks);
		cJSON_AddNumberToObject(j, "others", (double)st->others);
		cJSON_AddNumberToObject(j, "bytes", (double)st->bytes);
		cJSON_AddNumberToObject(j, "skipped", (double)st->skipped);
		cJSON_AddNumberToObject(j, "verified", (double)st->verified);
		cJSON_AddNumberToObject(j, "seconds", secs);
		if (json_to_stderr) {
			char *s = cJSON_Print(j);
			if (s)
				fprintf(stderr, "%s\n", s);
			free(s);
			cJSON_Delete(j);
		} else {
			ctl_print_json(j);
		}
		return;
	}
	if (g->quiet)
		return;
	char sz[16], rate[16];
	ctl_fmt_size(st->bytes, sz, sizeof(sz));
	ctl_fmt_size(secs > 0 ? (uint64_t)((double)st->bytes / secs) : 0, rate, sizeof(rate));
	fprintf(stderr,
		"copied %llu file%s (%s), %llu dir%s, %llu symlink%s to %s in %.2f s (%s/s); "
		"skipped %llu unchanged, verified %llu\n",
		(unsigned long long)st->files, plural(st->files), sz, (unsigned long long)st->dirs,
		plural(st->dirs), (unsigned long long)st->symlinks, plural(st->symlinks), dst, secs,
		rate, (unsigned long long)st->skipped, (unsigned long long)st->verified);
}

int ctl_cmd_cp(struct ctl_global *g, int argc, char **argv)
{
	enum { O_NO_VERIFY = 256, O_NO_SKIP };
	static const struct option opts[] = {
		{"archive", no_argument, NULL, 'a'},
		{"no-verify", no_argument, NULL, O_NO_VERIFY},
		{"no-skip", no_argument, NULL, O_NO_SKIP},
		{"quiet", no_argument, NULL, 'q'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct dbx_cp_opts o = {0};
	struct bar bar = {0};
	int c, code;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:aqo:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			o.keep_owner = true;
			break;
		case O_NO_VERIFY:
			o.no_verify = true;
			break;
		case O_NO_SKIP:
			o.no_skip = true;
			break;
		case 'q':
			g->quiet = true;
			break;
		case 'o':
			if ((code = ctl_set_output(g, "cp", optarg)))
				return code;
			break;
		case 'h':
			help(stdout);
			return CTL_EXIT_OK;
		default:
			return ctl_bad_option("cp", c, argv);
		}
	}
	if (argc - optind != 2)
		return ctl_usage_error("cp", "expected SRC and DST");
	const char *src = argv[optind], *dst = argv[optind + 1];
	char *sbox = NULL, *dbox = NULL;
	const char *spath = NULL, *dpath = NULL;
	bool sremote = split_remote(src, &sbox, &spath);
	bool dremote = split_remote(dst, &dbox, &dpath);
	if (sremote == dremote) {
		free(sbox);
		free(dbox);
		return ctl_usage_error("cp", sremote ? "only one of SRC and DST may be BOX:PATH"
						     : "one of SRC and DST must be BOX:PATH");
	}
	bool upload = dremote;
	dbx_client *cl = NULL;
	code = ctl_connect(g, upload ? dbox : sbox, &cl);
	if (code) {
		free(sbox);
		free(dbox);
		return code;
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigctx sc = {.c = cl};
	sigemptyset(&sc.set);
	sigaddset(&sc.set, SIGINT);
	sigaddset(&sc.set, SIGTERM);
	sigaddset(&sc.set, SIGHUP);
	sigaddset(&sc.set, SIGUSR2); /* wakes the signal thread at the end */
	pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
	pthread_t th;
	bool th_ok = pthread_create(&th, NULL, sig_thread, &sc) == 0;

	bar.on = !g->quiet && isatty(STDERR_FILENO);
	o.progress = on_progress;
	o.ud = &bar;
	clock_gettime(CLOCK_MONOTONIC, &bar.t0);
	struct dbx_cp_stats st = {0};
	int r;
	if (upload && !strcmp(src, "-"))
		r = dbx_cp_upload_tar(cl, STDIN_FILENO, dpath, &o, &st);
	else if (upload)
		r = dbx_cp_upload(cl, src, dpath, &o, &st);
	else if (!strcmp(dst, "-"))
		r = dbx_cp_download_tar(cl, spath, STDOUT_FILENO, &o, &st);
	else
		r = dbx_cp_download(cl, spath, dst, &o, &st);
	double secs = since(&bar.t0);
	bar_clear(&bar);

	if (th_ok) {
		pthread_kill(th, SIGUSR2);
		pthread_join(th, NULL);
	}
	if (sc.got) {
		fprintf(stderr, "devboxctl: cp: interrupted\n");
		code = 128 + sc.got;
	} else if (r < 0) {
		/* Library messages about the copy itself already start with "cp". */
		char m[1024];
		snprintf(m, sizeof(m), "%s", dbx_error_last());
		code = ctl_fail(strncmp(m, "cp ", 3) && strncmp(m, "cp:", 3) ? "cp" : NULL, r);
		/* A closed stdout is SIGPIPE's. */
		if (r == -EPIPE && !strcmp(dst, "-") && strstr(m, "write the archive"))
			code = 128 + SIGPIPE;
	} else {
		print_summary(g, &st, upload, dst, secs, !strcmp(dst, "-"));
		code = CTL_EXIT_OK;
	}
	dbx_client_free(cl);
	free(sbox);
	free(dbox);
	return code;
}
