/* attr.c: the attribute JSON of PROTOCOL.md §1.1 (see attr.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attr.h"
#include "misc.h"

const char *fs_type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
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
		return "file";
	}
}

void fs_ver(const struct stat *st, char out[FS_VER_MAX])
{
	unsigned long long ns = (unsigned long long)st->st_mtim.tv_sec * 1000000000ull +
				(unsigned long long)st->st_mtim.tv_nsec;

	snprintf(out, FS_VER_MAX, "%llx.%llu.%llu", (unsigned long long)st->st_ino, ns,
		 (unsigned long long)st->st_size);
}

/* Times are [sec, nsec] pairs: seconds can exceed 2^53 in theory, never in one double. */
static cJSON *time_pair(const struct timespec *ts)
{
	cJSON *a = cJSON_CreateArray();

	if (!a)
		return NULL;
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_sec));
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_nsec));
	return a;
}

cJSON *fs_attr_json(const struct stat *st, const char *symlink_target)
{
	char ver[FS_VER_MAX];
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "ino", (double)st->st_ino);
	cJSON_AddStringToObject(o, "type", fs_type_name(st->st_mode));
	cJSON_AddNumberToObject(o, "mode", (double)st->st_mode);
	cJSON_AddNumberToObject(o, "nlink", (double)st->st_nlink);
	cJSON_AddNumberToObject(o, "uid", (double)st->st_uid);
	cJSON_AddNumberToObject(o, "gid", (double)st->st_gid);
	cJSON_AddNumberToObject(o, "size", (double)st->st_size);
	cJSON_AddNumberToObject(o, "blocks", (double)st->st_blocks);
	cJSON_AddNumberToObject(o, "blksize", (double)st->st_blksize);
	cJSON_AddNumberToObject(o, "rdev", (double)st->st_rdev);
	cJSON_AddItemToObject(o, "atime", time_pair(&st->st_atim));
	cJSON_AddItemToObject(o, "mtime", time_pair(&st->st_mtim));
	cJSON_AddItemToObject(o, "ctime", time_pair(&st->st_ctim));
	fs_ver(st, ver);
	cJSON_AddStringToObject(o, "ver", ver);
	if (symlink_target && S_ISLNK(st->st_mode)) {
		size_t len = strlen(symlink_target);

		if (dbx_utf8_valid(symlink_target, len, false)) {
			cJSON_AddStringToObject(o, "target", symlink_target);
		} else {
			char *lossy = dbx_utf8_lossy(symlink_target, len, NULL);

			cJSON_AddStringToObject(o, "target", lossy ? lossy : "");
			free(lossy);
		}
	}
	return o;
}
