/* attr.h: the attribute JSON of PROTOCOL.md §1.1, shared by the /fs/v1 routes (fsapi.c) and the
 * change events (events.c) so both send exactly the same object.
 *
 * Pure functions; any thread. */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>
#include <sys/stat.h>

/* The wire name of st_mode's file type: "file" "dir" "symlink" "fifo" "socket" "chr" "blk". */
const char *fs_type_name(mode_t mode);

/* The content version "<ino hex>.<mtime ns>.<size>" of @st; @out must hold FS_VER_MAX bytes. */
#define FS_VER_MAX 64
void fs_ver(const struct stat *st, char out[FS_VER_MAX]);

/* The attr object of @st. @symlink_target: the link's target for a symlink (shown lossily as
 * UTF-8; omitted when NULL). Returns NULL on ENOMEM. The caller owns the result. */
cJSON *fs_attr_json(const struct stat *st, const char *symlink_target);
