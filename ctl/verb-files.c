/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl file verbs: ls cat rm mkdir mv — one libdevbox /fs/v1 call per step against BOX
 * (a devbox name or an agent URL).  Errors name the verb, the remote path and the reason
 * ("devboxctl: cat a/b: No such file or directory").  Main thread only.
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RM_DEPTH_MAX 256

/* ---- shared helpers ------------------------------------------------------------------------- */

/* Prints "devboxctl: <verb> <path>: <reason>" and returns the exit status for err.  The
 * library's message is "<op> <path>: <reason>"; its own op name is replaced by the verb. */
static int fail_path(const char *verb, const char *path, int err)
{
	const char *msg = dbx_error_last();
	const char *reason = NULL;
	const char *shown = path && *path ? path : ".";

	if (msg && *msg) {
		const char *p = strstr(msg, shown);
		if (p && !strncmp(p + strlen(shown), ": ", 2))
			reason = p + strlen(shown) + 2;
		else
			reason = msg;
	}
	if (!reason || !*reason)
		reason = strerror(err < 0 ? -err : err);
	fprintf(stderr, "devboxctl: %s %s: %s\n", verb, shown, reason);
	return ctl_is_transport_error(err) ? CTL_EXIT_TRANSPORT : CTL_EXIT_FAIL;
}

static const char *type_name(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "file";
	case S_IFDIR:
		return "dir";
	case S_IFLNK:
		return "symlink";
	case S_IFIFO:
		return "fifo";
	case S_IFSOCK:
		return "socket";
	case S_IFCHR:
		return "chr";
	case S_IFBLK:
		return "blk";
	default:
		return "unknown";
	}
}

static char type_char(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR:
		return 'd';
	case S_IFLNK:
		return 'l';
	case S_IFIFO:
		return 'p';
	case S_IFSOCK:
		return 's';
	case S_IFCHR:
		return 'c';
	case S_IFBLK:
		return 'b';
	default:
		return '-';
	}
}

static void mode_string(uint32_t mode, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";
	out[0] = type_char(mode);
	for (int i = 0; i < 9; i++)
		out[1 + i] = (mode & (1u << (8 - i))) ? rwx[i] : '-';
	if (mode & S_ISUID)
		out[3] = (mode & S_IXUSR) ? 's' : 'S';
	if (mode & S_ISGID)
		out[6] = (mode & S_IXGRP) ? 's' : 'S';
	if (mode & S_ISVTX)
		out[9] = (mode & S_IXOTH) ? 't' : 'T';
	out[10] = '\0';
}

static char *join(const char *dir, const char *name)
{
	char *s;
	if (!dir || !*dir || !strcmp(dir, "."))
		return strdup(name);
	size_t l = strlen(dir);
	if (asprintf(&s, "%s%s%s", dir, dir[l - 1] == '/' ? "" : "/", name) < 0)
		return NULL;
	return s;
}

static const char *base_name(const char *path)
{
	size_t l = strlen(path);
	while (l > 1 && path[l - 1] == '/')
		l--;
	const char *p = path + l;
	while (p > path && p[-1] != '/')
		p--;
	return p;
}

/* ---- ls ----------------------------------------------------------------------------------- */

struct ls_entry {
	char *name;
	char *target;
	struct dbx_attr attr;
};

struct ls_list {
	struct ls_entry *v;
	size_t n, cap;
	bool all;
};

static int ls_collect(void *ud, const char *name, const struct dbx_attr *attr, const char *target)
{
	struct ls_list *l = ud;
	if (!l->all && name[0] == '.')
		return 0;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 64;
		struct ls_entry *nv = realloc(l->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	struct ls_entry *e = &l->v[l->n];
	e->name = strdup(name);
	e->target = target ? strdup(target) : NULL;
	e->attr = *attr;
	if (!e->name || (target && !e->target)) {
		free(e->name);
		free(e->target);
		return -ENOMEM;
	}
	l->n++;
	return 0;
}

static void ls_list_free(struct ls_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].name);
		free(l->v[i].target);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int ls_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ls_entry *)a)->name, ((const struct ls_entry *)b)->name);
}

static void fmt_mtime(const struct timespec *t, char *buf, size_t len)
{
	struct tm tm;
	time_t now = time(NULL);
	time_t s = t->tv_sec;
	localtime_r(&s, &tm);
	/* Like ls: the year instead of the time for files older than ~6 months or in the future. */
	if (s > now + 3600 || now - s > 182 * 86400)
		strftime(buf, len, "%b %e  %Y", &tm);
	else
		strftime(buf, len, "%b %e %H:%M", &tm);
}

static void ls_print_long(const struct ls_list *l)
{
	int wl = 1, wu = 1, wg = 1, ws = 1;
	char num[32];
	for (size_t i = 0; i < l->n; i++) {
		const struct dbx_attr *a = &l->v[i].attr;
		int n;
		n = snprintf(num, sizeof(num), "%u", a->nlink);
		wl = n > wl ? n : wl;
		n = snprintf(num, sizeof(num), "%u", a->uid);
		wu = n > wu ? n : wu;
		n = snprintf(num, sizeof(num), "%u", a->gid);
		wg = n > wg ? n : wg;
		n = snprintf(num, sizeof(num), "%llu", (unsigned long long)a->size);
		ws = n > ws ? n : ws;
	}
	for (size_t i = 0; i < l->n; i++) {
		const struct ls_entry *e = &l->v[i];
		char mode[11], when[64];
		mode_string(e->attr.mode, mode);
		fmt_mtime(&e->attr.mtime, when, sizeof(when));
		printf("%s %*u %*u %*u %*llu %s %s", mode, wl, e->attr.nlink, wu, e->attr.uid, wg,
		       e->attr.gid, ws, (unsigned long long)e->attr.size, when, e->name);
		if (e->target)
			printf(" -> %s", e->target);
		putchar('\n');
	}
}

static cJSON *attr_json(const char *name, const char *path, const struct dbx_attr *a,
			const char *target)
{
	char mode[16];
	cJSON *o = cJSON_CreateObject();
	snprintf(mode, sizeof(mode), "%04o", a->mode & 07777);
	cJSON_AddStringToObject(o, "name", name);
	cJSON_AddStringToObject(o, "path", path);
	cJSON_AddStringToObject(o, "type", type_name(a->mode));
	cJSON_AddStringToObject(o, "mode", mode);
	cJSON_AddNumberToObject(o, "size", (double)a->size);
	cJSON_AddNumberToObject(o, "nlink", a->nlink);
	cJSON_AddNumberToObject(o, "uid", a->uid);
	cJSON_AddNumberToObject(o, "gid", a->gid);
	cJSON_AddNumberToObject(o, "ino", (double)a->ino);
	cJSON_AddNumberToObject(o, "mtime",
				(double)a->mtime.tv_sec + (double)a->mtime.tv_nsec / 1e9);
	if (target)
		cJSON_AddStringToObject(o, "target", target);
	return o;
}

static const char ls_help[] =
	"Usage: devboxctl ls [OPTIONS] BOX [PATH...]\n"
	"\n"
	"List directories (or show files) in a devbox's workspace, sorted by name.\n"
	"PATH is relative to the workspace; default: its root.\n"
	"\n"
	"Options:\n"
	"  -l                 long format: mode, links, uid, gid, size, mtime, name\n"
	"  -a                 include names starting with '.'\n"
	"  -d                 list directories themselves, not their contents\n"
	"  -o, --output FMT   table (default) or json: one array of entries\n"
	"  -h, --help         this help\n";

int ctl_cmd_ls(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"output", required_argument, NULL, 'o'},
		{0},
	};
	bool lng = false, all = false, dironly = false;
	dbx_client *c = NULL;
	cJSON *json = NULL;
	int code = 0, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:ladho:", opts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			lng = true;
			break;
		case 'a':
			all = true;
			break;
		case 'd':
			dironly = true;
			break;
		case 'o':
			if ((code = ctl_set_output(g, "ls", optarg)))
				return code;
			break;
		case 'h':
			fputs(ls_help, stdout);
			return 0;
		default:
			return ctl_bad_option("ls", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("ls", "missing BOX");
	code = ctl_connect(g, argv[optind++], &c);
	if (code)
		return code;
	if (g->output == CTL_OUT_JSON)
		json = cJSON_CreateArray();

	const char *root = ".";
	char **paths = optind < argc ? argv + optind : (char **)&root;
	int npaths = optind < argc ? argc - optind : 1;
	for (int i = 0; i < npaths; i++) {
		const char *path = paths[i];
		struct ls_list l = {.all = all};
		struct dbx_attr a;
		char *target = NULL;
		int r = dbx_fs_stat(c, path, &a);
		if (r < 0) {
			int ec = fail_path("ls", path, r);
			code = code == CTL_EXIT_TRANSPORT ? code : ec;
			if (ec == CTL_EXIT_TRANSPORT)
				break;
			continue;
		}
		if (S_ISDIR(a.mode) && !dironly) {
			r = dbx_fs_list(c, path, NULL, ls_collect, &l);
			if (r < 0) {
				int ec = fail_path("ls", path, r);
				code = code == CTL_EXIT_TRANSPORT ? code : ec;
				ls_list_free(&l);
				if (ec == CTL_EXIT_TRANSPORT)
					break;
				continue;
			}
			if (l.n)
				qsort(l.v, l.n, sizeof(*l.v), ls_cmp);
		} else {
			if (S_ISLNK(a.mode) && dbx_fs_readlink(c, path, &target) < 0)
				target = NULL;
			struct ls_list one = {.all = true};
			if (ls_collect(&one, path, &a, target) < 0) {
				free(target);
				code = ctl_fail("ls", -ENOMEM);
				break;
			}
			free(target);
			l = one;
		}
		if (json) {
			for (size_t k = 0; k < l.n; k++) {
				char *p = !S_ISDIR(a.mode) || dironly ? strdup(path)
								      : join(path, l.v[k].name);
				cJSON_AddItemToArray(json, attr_json(l.v[k].name, p ? p : "",
								     &l.v[k].attr, l.v[k].target));
				free(p);
			}
		} else {
			if (npaths > 1 && S_ISDIR(a.mode) && !dironly)
				printf("%s%s:\n", i ? "\n" : "", path);
			if (lng) {
				ls_print_long(&l);
			} else {
				for (size_t k = 0; k < l.n; k++)
					printf("%s\n", l.v[k].name);
			}
		}
		ls_list_free(&l);
	}
	if (json)
		ctl_print_json(json);
	fflush(stdout);
	dbx_client_free(c);
	return code;
}

/* ---- cat ---------------------------------------------------------------------------------- */

static int stdout_sink(void *ud, const void *buf, size_t len)
{
	if (fwrite(buf, 1, len, stdout) != len)
		return -EPIPE;
	return 0;
}

static const char cat_help[] =
	"Usage: devboxctl cat [OPTIONS] BOX PATH...\n"
	"\n"
	"Print files of a devbox's workspace to standard output, one after the other.\n"
	"\n"
	"Options:\n"
	"  -h, --help         this help\n";

int ctl_cmd_cat(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	dbx_client *c = NULL;
	int code = 0, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:o:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'o':
			return ctl_no_output("cat");
		case 'h':
			fputs(cat_help, stdout);
			return 0;
		default:
			return ctl_bad_option("cat", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("cat", "missing BOX");
	if (optind + 1 >= argc)
		return ctl_usage_error("cat", "missing PATH");
	code = ctl_connect(g, argv[optind++], &c);
	if (code)
		return code;
	for (int i = optind; i < argc; i++) {
		int r = dbx_fs_read_stream(c, argv[i], 0, UINT64_MAX, stdout_sink, NULL);
		if (r == -EPIPE) {
			code = CTL_EXIT_FAIL; /* our own stdout closed: stop quietly like cat */
			break;
		}
		if (r < 0) {
			fflush(stdout);
			int ec = fail_path("cat", argv[i], r);
			if (ec == CTL_EXIT_TRANSPORT) {
				code = ec;
				break;
			}
			code = ec;
		}
	}
	if (fflush(stdout) != 0 && code == 0)
		code = CTL_EXIT_FAIL;
	dbx_client_free(c);
	return code;
}

/* ---- rm ----------------------------------------------------------------------------------- */

struct name_list {
	char **v;
	size_t n, cap;
};

static int collect_name(void *ud, const char *name, const struct dbx_attr *attr, const char *target)
{
	struct name_list *l = ud;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 64;
		char **nv = realloc(l->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	/* The type travels as a prefix character: 'd' directory, '-' anything else. */
	char *s = malloc(strlen(name) + 2);
	if (!s)
		return -ENOMEM;
	s[0] = S_ISDIR(attr->mode) ? 'd' : '-';
	strcpy(s + 1, name);
	l->v[l->n++] = s;
	return 0;
}

static void name_list_free(struct name_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

/* Removes the directory path and everything below it.  0 or -errno (message set; *ret_at is
 * the path that failed, owned by the caller). */
static int rm_tree(dbx_client *c, const char *path, int depth, char **ret_at)
{
	struct name_list l = {0};
	int r;

	if (depth > RM_DEPTH_MAX) {
		*ret_at = strdup(path);
		fprintf(stderr, "devboxctl: rm %s: more than %d levels deep\n", path, RM_DEPTH_MAX);
		return -ELOOP;
	}
	r = dbx_fs_list(c, path, NULL, collect_name, &l);
	if (r < 0) {
		*ret_at = strdup(path);
		goto out;
	}
	for (size_t i = 0; i < l.n && r == 0; i++) {
		char *child = join(path, l.v[i] + 1);
		if (!child) {
			r = -ENOMEM;
			break;
		}
		if (l.v[i][0] == 'd')
			r = rm_tree(c, child, depth + 1, ret_at);
		else if ((r = dbx_fs_unlink(c, child)) < 0 && r != -ENOENT)
			*ret_at = strdup(child);
		else
			r = 0;
		free(child);
	}
	if (r == 0 && (r = dbx_fs_rmdir(c, path)) < 0) {
		if (r == -ENOENT)
			r = 0;
		else
			*ret_at = strdup(path);
	}
out:
	name_list_free(&l);
	return r;
}

static bool is_root(const char *path)
{
	const char *p = path;
	/* ".", "./", "", ".//." ... all name the workspace root. */
	while (*p == '.' || *p == '/')
		p++;
	return *p == '\0' && !strstr(path, "..");
}

static const char rm_help[] = "Usage: devboxctl rm [OPTIONS] BOX PATH...\n"
			      "\n"
			      "Remove files (and with -r directories) in a devbox's workspace.\n"
			      "\n"
			      "Options:\n"
			      "  -r, -R, --recursive  remove directories and their contents\n"
			      "  -f, --force          ignore paths that do not exist\n"
			      "  -h, --help           this help\n";

int ctl_cmd_rm(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"recursive", no_argument, NULL, 'r'},
		{"force", no_argument, NULL, 'f'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool rec = false, force = false;
	dbx_client *c = NULL;
	int code = 0, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:rRfo:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'r':
		case 'R':
			rec = true;
			break;
		case 'f':
			force = true;
			break;
		case 'o':
			return ctl_no_output("rm");
		case 'h':
			fputs(rm_help, stdout);
			return 0;
		default:
			return ctl_bad_option("rm", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("rm", "missing BOX");
	if (optind + 1 >= argc && !force)
		return ctl_usage_error("rm", "missing PATH");
	const char *box = argv[optind++];
	for (int i = optind; i < argc; i++)
		if (is_root(argv[i])) {
			fprintf(stderr, "devboxctl: rm %s: refusing to remove the workspace root\n",
				argv[i]);
			return CTL_EXIT_FAIL;
		}
	if (optind >= argc)
		return 0;
	code = ctl_connect(g, box, &c);
	if (code)
		return code;
	for (int i = optind; i < argc; i++) {
		const char *path = argv[i];
		struct dbx_attr a;
		int r = dbx_fs_stat(c, path, &a);
		if (r == 0 && S_ISDIR(a.mode)) {
			if (!rec) {
				fprintf(stderr, "devboxctl: rm %s: Is a directory (use -r)\n",
					path);
				code = CTL_EXIT_FAIL;
				continue;
			}
			char *at = NULL;
			r = rm_tree(c, path, 0, &at);
			if (r < 0) {
				int ec = r == -ELOOP ? CTL_EXIT_FAIL
						     : fail_path("rm", at ? at : path, r);
				free(at);
				code = ec;
				if (ec == CTL_EXIT_TRANSPORT)
					break;
			}
			continue;
		}
		if (r == 0)
			r = dbx_fs_unlink(c, path);
		if (r == -ENOENT && force)
			continue;
		if (r < 0) {
			code = fail_path("rm", path, r);
			if (code == CTL_EXIT_TRANSPORT)
				break;
		}
	}
	dbx_client_free(c);
	return code;
}

/* ---- mkdir -------------------------------------------------------------------------------- */

static int mkdir_p(dbx_client *c, const char *path, uint32_t mode, int depth)
{
	struct dbx_attr a;
	int r = dbx_fs_mkdir(c, path, mode, NULL);
	if (r == -EEXIST) {
		if (dbx_fs_stat(c, path, &a) == 0 && S_ISDIR(a.mode)) {
			dbx_error_clear();
			return 0;
		}
		return dbx_fs_mkdir(c, path, mode, NULL); /* sets the EEXIST message again */
	}
	if (r != -ENOENT || depth > RM_DEPTH_MAX)
		return r;
	/* The parent is missing: create it (0755 like mkdir -p's parents), then retry. */
	char *parent = strdup(path);
	if (!parent)
		return -ENOMEM;
	size_t l = strlen(parent);
	while (l > 1 && parent[l - 1] == '/')
		parent[--l] = '\0';
	char *slash = strrchr(parent, '/');
	if (!slash) {
		free(parent);
		return r;
	}
	*slash = '\0';
	r = *parent ? mkdir_p(c, parent, 0755, depth + 1) : r;
	free(parent);
	if (r < 0)
		return r;
	r = dbx_fs_mkdir(c, path, mode, NULL);
	if (r == -EEXIST && dbx_fs_stat(c, path, &a) == 0 && S_ISDIR(a.mode))
		r = 0;
	return r;
}

static const char mkdir_help[] =
	"Usage: devboxctl mkdir [OPTIONS] BOX DIR...\n"
	"\n"
	"Create directories in a devbox's workspace.\n"
	"\n"
	"Options:\n"
	"  -p, --parents      create missing parents; no error if DIR exists\n"
	"  -m, --mode MODE    octal permissions (default 0755)\n"
	"  -h, --help         this help\n";

int ctl_cmd_mkdir(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"parents", no_argument, NULL, 'p'},
		{"mode", required_argument, NULL, 'm'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool parents = false, mode_given = false;
	uint32_t mode = 0755;
	dbx_client *c = NULL;
	int code = 0, opt;
	char *end;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:pm:o:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'p':
			parents = true;
			break;
		case 'm':
			errno = 0;
			unsigned long m = strtoul(optarg, &end, 8);
			if (errno || *end || !*optarg || m > 07777)
				return ctl_usage_error("mkdir", "-m: '%s' is not an octal mode",
						       optarg);
			mode = (uint32_t)m;
			mode_given = true;
			break;
		case 'o':
			return ctl_no_output("mkdir");
		case 'h':
			fputs(mkdir_help, stdout);
			return 0;
		default:
			return ctl_bad_option("mkdir", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("mkdir", "missing BOX");
	if (optind + 1 >= argc)
		return ctl_usage_error("mkdir", "missing DIR");
	code = ctl_connect(g, argv[optind++], &c);
	if (code)
		return code;
	for (int i = optind; i < argc; i++) {
		int r = parents ? mkdir_p(c, argv[i], mode, 0)
				: dbx_fs_mkdir(c, argv[i], mode, NULL);
		/* mkdir(2) applies the agent's umask; an explicit -m is exact, as in mkdir(1). */
		if (r == 0 && mode_given)
			r = dbx_fs_chmod(c, argv[i], mode, NULL);
		if (r < 0) {
			code = fail_path("mkdir", argv[i], r);
			if (code == CTL_EXIT_TRANSPORT)
				break;
		}
	}
	dbx_client_free(c);
	return code;
}

/* ---- mv ----------------------------------------------------------------------------------- */

static const char mv_help[] =
	"Usage: devboxctl mv [OPTIONS] BOX SOURCE DEST\n"
	"  or:  devboxctl mv [OPTIONS] BOX SOURCE... DIRECTORY\n"
	"\n"
	"Rename SOURCE to DEST, or move SOURCEs into DIRECTORY, within a devbox's workspace.\n"
	"\n"
	"Options:\n"
	"  -n, --no-clobber   do not overwrite an existing file (fail instead)\n"
	"  -T, --no-target-directory  treat DEST as a name even if it is a directory\n"
	"  -h, --help         this help\n";

int ctl_cmd_mv(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"no-clobber", no_argument, NULL, 'n'},
		{"no-target-directory", no_argument, NULL, 'T'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool noclobber = false, no_target_dir = false;
	dbx_client *c = NULL;
	int code = 0, opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:nTo:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'n':
			noclobber = true;
			break;
		case 'T':
			no_target_dir = true;
			break;
		case 'o':
			return ctl_no_output("mv");
		case 'h':
			fputs(mv_help, stdout);
			return 0;
		default:
			return ctl_bad_option("mv", opt, argv);
		}
	}
	if (optind >= argc)
		return ctl_usage_error("mv", "missing BOX");
	if (argc - optind < 3)
		return ctl_usage_error("mv", "missing SOURCE or DEST");
	if (no_target_dir && argc - optind > 3)
		return ctl_usage_error("mv", "-T takes exactly one SOURCE and one DEST");
	code = ctl_connect(g, argv[optind++], &c);
	if (code)
		return code;
	const char *dest = argv[argc - 1];
	int nsrc = argc - 1 - optind;
	struct dbx_attr da;
	bool into = false;
	int r = no_target_dir ? -ENOENT : dbx_fs_stat(c, dest, &da);
	if (r == 0 && S_ISDIR(da.mode))
		into = true;
	else if (r < 0 && r != -ENOENT) {
		code = fail_path("mv", dest, r);
		goto out;
	}
	if (nsrc > 1 && !into) {
		fprintf(stderr, "devboxctl: mv %s: Not a directory (target of several sources)\n",
			dest);
		code = CTL_EXIT_FAIL;
		goto out;
	}
	for (int i = optind; i < argc - 1; i++) {
		const char *src = argv[i];
		char *to = into ? join(dest, base_name(src)) : strdup(dest);
		if (!to) {
			code = ctl_fail("mv", -ENOMEM);
			break;
		}
		r = dbx_fs_rename(c, src, to, noclobber ? RENAME_NOREPLACE : 0, NULL);
		if (r < 0) {
			/* The library names the source: what the user asked to move. */
			code = fail_path("mv", src, r);
		}
		free(to);
		if (code == CTL_EXIT_TRANSPORT)
			break;
	}
out:
	dbx_client_free(c);
	return code;
}
