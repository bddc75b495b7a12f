/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json: decoding of the agent's JSON replies (attributes, list pages, tree lines, readlink,
 * xattr names, ports, process lists).  Pure functions of their input; any thread.  Every
 * decoder checks types and treats a malformed reply as -EPROTO with a message.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Largest integer a double carries exactly. */
#define JSON_INT_MAX 9007199254740992.0

bool dbx__json_u64(const cJSON *obj, const char *key, uint64_t *ret)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > JSON_INT_MAX)
		return false;
	*ret = (uint64_t)v->valuedouble;
	return true;
}

bool dbx__json_i64(const cJSON *obj, const char *key, int64_t *ret)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!cJSON_IsNumber(v) || v->valuedouble < -JSON_INT_MAX || v->valuedouble > JSON_INT_MAX)
		return false;
	*ret = (int64_t)v->valuedouble;
	return true;
}

const char *dbx__json_str(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

bool dbx__json_timespec(const cJSON *j, struct timespec *ret)
{
	if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 2)
		return false;
	const cJSON *s = cJSON_GetArrayItem(j, 0), *ns = cJSON_GetArrayItem(j, 1);
	if (!cJSON_IsNumber(s) || !cJSON_IsNumber(ns) || ns->valuedouble < 0 ||
	    ns->valuedouble >= 1e9 || s->valuedouble < -JSON_INT_MAX ||
	    s->valuedouble > JSON_INT_MAX)
		return false;
	ret->tv_sec = (time_t)s->valuedouble;
	ret->tv_nsec = (long)ns->valuedouble;
	return true;
}

static uint32_t type_bits(const char *type)
{
	static const struct {
		const char *name;
		uint32_t bits;
	} types[] = {
		{"file", S_IFREG},    {"dir", S_IFDIR}, {"symlink", S_IFLNK}, {"fifo", S_IFIFO},
		{"socket", S_IFSOCK}, {"chr", S_IFCHR}, {"blk", S_IFBLK},
	};
	if (!type)
		return 0;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (!strcmp(types[i].name, type))
			return types[i].bits;
	return 0;
}

int dbx__attr_from_json(const cJSON *j, struct dbx_attr *a, const char **ret_target)
{
	uint64_t v;

	memset(a, 0, sizeof(*a));
	if (ret_target)
		*ret_target = NULL;
	if (!cJSON_IsObject(j))
		return dbx__error(EPROTO, "attr: the agent sent no attribute object");
	if (!dbx__json_u64(j, "ino", &a->ino) || !dbx__json_u64(j, "mode", &v) || v > UINT32_MAX)
		return dbx__error(EPROTO, "attr: the agent's attributes lack ino or mode");
	a->mode = (uint32_t)v;
	if (!(a->mode & S_IFMT))
		a->mode |= type_bits(dbx__json_str(j, "type"));
	if (dbx__json_u64(j, "nlink", &v))
		a->nlink = (uint32_t)v;
	if (dbx__json_u64(j, "uid", &v))
		a->uid = (uint32_t)v;
	if (dbx__json_u64(j, "gid", &v))
		a->gid = (uint32_t)v;
	dbx__json_u64(j, "size", &a->size);
	dbx__json_u64(j, "blocks", &a->blocks);
	if (dbx__json_u64(j, "blksize", &v))
		a->blksize = (uint32_t)v;
	dbx__json_u64(j, "rdev", &a->rdev);
	dbx__json_timespec(cJSON_GetObjectItemCaseSensitive(j, "atime"), &a->atime);
	dbx__json_timespec(cJSON_GetObjectItemCaseSensitive(j, "mtime"), &a->mtime);
	dbx__json_timespec(cJSON_GetObjectItemCaseSensitive(j, "ctime"), &a->ctime);
	const char *ver = dbx__json_str(j, "ver");
	if (ver)
		snprintf(a->ver, sizeof(a->ver), "%s", ver);
	if (ret_target)
		*ret_target = dbx__json_str(j, "target");
	return 0;
}

int dbx__list_page_parse(const cJSON *j, struct dbx_attr *ret_dir, dbx_dirent_fn fn, void *ud,
			 uint64_t *ret_next, bool *ret_more)
{
	const cJSON *entries, *e, *next;
	int r;

	*ret_more = false;
	if (!cJSON_IsObject(j))
		return dbx__error(EPROTO, "list: the agent's reply is not an object");
	if (ret_dir) {
		r = dbx__attr_from_json(cJSON_GetObjectItemCaseSensitive(j, "attr"), ret_dir, NULL);
		if (r < 0)
			return r;
	}
	entries = cJSON_GetObjectItemCaseSensitive(j, "entries");
	if (!cJSON_IsArray(entries))
		return dbx__error(EPROTO, "list: the agent's reply has no entries array");
	next = cJSON_GetObjectItemCaseSensitive(j, "next");
	if (cJSON_IsNumber(next)) {
		if (!dbx__json_u64(j, "next", ret_next))
			return dbx__error(EPROTO, "list: bad next offset in the agent's reply");
		*ret_more = true;
	} else if (next && !cJSON_IsNull(next)) {
		return dbx__error(EPROTO, "list: bad next offset in the agent's reply");
	}
	cJSON_ArrayForEach(e, entries)
	{
		struct dbx_attr a;
		const char *target;
		const char *name = dbx__json_str(e, "name");
		if (!name || !*name || strchr(name, '/'))
			return dbx__error(EPROTO, "list: an entry without a valid name");
		r = dbx__attr_from_json(cJSON_GetObjectItemCaseSensitive(e, "attr"), &a, &target);
		if (r < 0)
			return r;
		if (fn) {
			r = fn(ud, name, &a, target);
			if (r)
				return r;
		}
	}
	return 0;
}

int dbx__tree_line(const char *line, size_t len, dbx_tree_fn fn, void *ud,
		   struct dbx_tree_end *ret_end, bool *ret_done)
{
	cJSON *j;
	int r = 0;

	*ret_done = false;
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	if (len == 0)
		return 0;
	j = cJSON_ParseWithLength(line, len);
	if (!cJSON_IsObject(j)) {
		r = dbx__error(EPROTO, "tree: the agent sent a line that is not a JSON object");
		goto out;
	}
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "end"))) {
		struct dbx_tree_end end = {0};
		dbx__json_u64(j, "entries", &end.entries);
		dbx__json_u64(j, "seq", &end.seq);
		end.truncated = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "truncated"));
		if (ret_end)
			*ret_end = end;
		*ret_done = true;
		goto out;
	}
	const char *path = dbx__json_str(j, "path");
	if (!path) {
		r = dbx__error(EPROTO, "tree: an entry without a path");
		goto out;
	}
	struct dbx_attr a;
	const char *target;
	r = dbx__attr_from_json(cJSON_GetObjectItemCaseSensitive(j, "attr"), &a, &target);
	if (r < 0)
		goto out;
	if (fn)
		r = fn(ud, path, &a, target,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "partial")));
out:
	cJSON_Delete(j);
	return r;
}

int dbx__readlink_parse(const cJSON *j, char **ret_target)
{
	*ret_target = NULL;
	const char *t = dbx__json_str(j, "target");
	if (!t)
		return dbx__error(EPROTO, "readlink: the agent's reply has no target");
	*ret_target = strdup(t);
	if (!*ret_target)
		return dbx__error(ENOMEM, "readlink: out of memory");
	return 0;
}

ssize_t dbx__xattr_names_parse(const cJSON *j, char *buf, size_t size)
{
	const cJSON *names = cJSON_GetObjectItemCaseSensitive(j, "names"), *e;
	size_t need = 0;

	if (!cJSON_IsArray(names))
		return dbx__error(EPROTO, "listxattr: the agent's reply has no names array");
	cJSON_ArrayForEach(e, names)
	{
		if (!cJSON_IsString(e) || !*e->valuestring)
			return dbx__error(EPROTO, "listxattr: a name that is not a string");
		need += strlen(e->valuestring) + 1;
	}
	if (size == 0)
		return (ssize_t)need;
	if (need > size)
		return dbx__error(ERANGE, "listxattr: %zu bytes needed, buffer has %zu", need,
				  size);
	size_t off = 0;
	cJSON_ArrayForEach(e, names)
	{
		size_t l = strlen(e->valuestring) + 1;
		memcpy(buf + off, e->valuestring, l);
		off += l;
	}
	return (ssize_t)need;
}

int dbx__ports_parse(const cJSON *j, int **ret_ports, size_t *ret_n)
{
	const cJSON *ports = cJSON_GetObjectItemCaseSensitive(j, "ports"), *e;
	int *out = NULL;
	size_t n = 0;

	*ret_ports = NULL;
	*ret_n = 0;
	if (!cJSON_IsArray(ports))
		return dbx__error(EPROTO, "ports: the agent's reply has no ports array");
	int count = cJSON_GetArraySize(ports);
	out = calloc(count > 0 ? (size_t)count : 1, sizeof(*out));
	if (!out)
		return dbx__error(ENOMEM, "ports: out of memory");
	cJSON_ArrayForEach(e, ports)
	{
		if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble > 65535) {
			free(out);
			return dbx__error(EPROTO, "ports: a port that is not a number in 1-65535");
		}
		out[n++] = (int)e->valuedouble;
	}
	*ret_ports = out;
	*ret_n = n;
	return 0;
}

/* "SIGTERM", "TERM", "SIGRTMIN+2" → number, 0 if unknown. */
static int signal_from_name(const char *name)
{
	if (!strncmp(name, "SIG", 3))
		name += 3;
	if (!strncmp(name, "RTMIN", 5) || !strncmp(name, "RTMAX", 5)) {
		int base = name[3] == 'I' ? SIGRTMIN : SIGRTMAX;
		int off = 0;
		if (name[5] == '+' || name[5] == '-')
			off = atoi(name + 5);
		else if (name[5])
			return 0;
		int sig = base + off;
		return sig >= SIGRTMIN && sig <= SIGRTMAX ? sig : 0;
	}
	for (int s = 1; s < SIGRTMIN; s++) {
		const char *abbrev = sigabbrev_np(s);
		if (abbrev && !strcmp(abbrev, name))
			return s;
	}
	return 0;
}

/* "YYYY-MM-DDTHH:MM:SSZ" → ms since the epoch, 0 if unparsable. */
static int64_t parse_iso_ms(const char *s)
{
	struct tm tm = {0};
	if (!s)
		return 0;
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end || (*end && *end != 'Z'))
		return 0;
	return (int64_t)timegm(&tm) * 1000;
}

static int list_grow(struct dbx_process **list, size_t n, size_t extra)
{
	struct dbx_process *nl = realloc(*list, (n + extra + 1) * sizeof(**list));
	if (!nl)
		return -ENOMEM;
	*list = nl;
	return 0;
}

int dbx__processes_parse_compat(const cJSON *j, struct dbx_process **list, size_t *n)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processes"), *e;

	if (!cJSON_IsArray(arr))
		return dbx__error(EPROTO, "ps: the agent's process list has no processes array");
	if (list_grow(list, *n, (size_t)cJSON_GetArraySize(arr)) < 0)
		return dbx__error(ENOMEM, "ps: out of memory");
	cJSON_ArrayForEach(e, arr)
	{
		struct dbx_process *p = &(*list)[*n];
		const char *id = dbx__json_str(e, "processId");
		const char *cmd = dbx__json_str(e, "command");
		const char *st = dbx__json_str(e, "processStatus");
		int64_t v;

		if (!id || !st)
			return dbx__error(EPROTO, "ps: a process without processId or status");
		memset(p, 0, sizeof(*p));
		p->id = strdup(id);
		p->command = strdup(cmd ? cmd : "");
		p->status = strdup(st);
		if (!p->id || !p->command || !p->status) {
			free(p->id);
			free(p->command);
			free(p->status);
			return dbx__error(ENOMEM, "ps: out of memory");
		}
		(*n)++;
		if (dbx__json_i64(e, "pid", &v))
			p->pid = (pid_t)v;
		p->running = !strcmp(st, "running");
		p->start_ms = parse_iso_ms(dbx__json_str(e, "startTime"));
		if (!p->running && dbx__json_i64(e, "exitCode", &v)) {
			/* A compat process killed by signal N reports 128+N and "killed". */
			if (!strcmp(st, "killed") && v > 128 && v < 128 + 65)
				p->signal = (int)(v - 128);
			else
				p->exit_code = (int)v;
		}
	}
	return 0;
}

int dbx__processes_parse_exec(const cJSON *j, struct dbx_process **list, size_t *n)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "execs"), *e;

	if (!cJSON_IsArray(arr))
		return dbx__error(EPROTO, "ps: the agent's exec list has no execs array");
	if (list_grow(list, *n, (size_t)cJSON_GetArraySize(arr)) < 0)
		return dbx__error(ENOMEM, "ps: out of memory");
	cJSON_ArrayForEach(e, arr)
	{
		struct dbx_process *p = &(*list)[*n];
		const char *id = dbx__json_str(e, "id");
		const cJSON *argv = cJSON_GetObjectItemCaseSensitive(e, "argv"), *a;
		struct dbx_strbuf cmd;
		struct timespec ts;
		int64_t v;

		if (!id || !cJSON_IsArray(argv))
			return dbx__error(EPROTO, "ps: an exec without id or argv");
		memset(p, 0, sizeof(*p));
		dbx_sb_init(&cmd, 0);
		cJSON_ArrayForEach(a, argv)
		{
			if (!cJSON_IsString(a))
				continue;
			if (cmd.len)
				dbx_sb_putc(&cmd, ' ');
			dbx_sb_puts(&cmd, a->valuestring);
		}
		p->command = dbx_sb_steal(&cmd, NULL);
		p->id = strdup(id);
		p->running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "running"));
		p->is_exec = true;
		if (dbx__json_i64(e, "pid", &v))
			p->pid = (pid_t)v;
		if (dbx__json_timespec(cJSON_GetObjectItemCaseSensitive(e, "startTime"), &ts))
			p->start_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		const char *sig = dbx__json_str(e, "signal");
		if (!p->running) {
			if (sig)
				p->signal = signal_from_name(sig);
			else if (dbx__json_i64(e, "exitCode", &v))
				p->exit_code = (int)v;
		}
		const char *st = p->running          ? "running"
				 : p->signal         ? "killed"
				 : p->exit_code == 0 ? "completed"
						     : "failed";
		p->status = strdup(st);
		if (!p->command)
			p->command = strdup("");
		if (!p->id || !p->status || !p->command) {
			free(p->id);
			free(p->command);
			free(p->status);
			return dbx__error(ENOMEM, "ps: out of memory");
		}
		(*n)++;
	}
	return 0;
}

/* ---- query strings ------------------------------------------------------------------------- */

int dbx__query_add(struct dbx_strbuf *q, const char *key, const char *value)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t start = q->len;
	int r = 0;

	if (q->len)
		r = dbx_sb_putc(q, '&');
	if (!r)
		r = dbx_sb_puts(q, key);
	if (!r)
		r = dbx_sb_putc(q, '=');
	for (const unsigned char *p = (const unsigned char *)(value ? value : ""); !r && *p; p++) {
		unsigned char ch = *p;
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~' ||
		    ch == '/') {
			r = dbx_sb_putc(q, (char)ch);
		} else {
			char enc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
			r = dbx_sb_append(q, enc, 3);
		}
	}
	if (r < 0) {
		/* Leave the buffer as it was. */
		q->len = start;
		if (q->data)
			q->data[start] = '\0';
		return dbx__error(ENOMEM, "query: out of memory");
	}
	return 0;
}

int dbx__query_addu(struct dbx_strbuf *q, const char *key, uint64_t value)
{
	char num[24];
	snprintf(num, sizeof(num), "%llu", (unsigned long long)value);
	return dbx__query_add(q, key, num);
}
