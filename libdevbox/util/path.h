/* path: confine client-supplied paths beneath a workspace root.
 *
 * Two steps, always both: dbx_path_normalize() turns what the client sent into a clean relative
 * path (lexically, no file system access), then the dbx_path_open*() helpers let the kernel
 * resolve it with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) against an O_PATH fd of the
 * root, so a symlink pointing outside can never be followed. No string-prefix check decides
 * anything about the file system. Pure functions; safe from any thread. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Normalise @input (absolute or relative) into a path relative to the workspace.
 * @root: the workspace's absolute path, normalised, without trailing slash ("/" allowed).
 * @alias: NULL or a second absolute path accepted as meaning the root (the official SDK's
 *         /home/devbox/project when the workspace lives elsewhere).
 * Writes "." for the root itself. "." components are dropped, ".." pops one component;
 * climbing above the root, or an absolute path outside root/alias, gives -EXDEV.
 * -ENAMETOOLONG when the result does not fit in @outsz (PATH_MAX is plenty). */
int dbx_path_normalize(const char *root, const char *alias, const char *input, char *out,
		       size_t outsz);

/* openat2(rootfd, rel, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | @resolve).
 * O_CLOEXEC is always added. Returns an fd or -errno (-EXDEV: the path escapes the root). */
int dbx_path_open(int rootfd, const char *rel, int flags, mode_t mode, uint64_t resolve);

/* Opens the parent directory of @rel (O_PATH | O_DIRECTORY, confined) and points *ret_name at
 * the last component inside @rel. @rel must not be "." (the root has no parent here): -EINVAL. */
int dbx_path_open_parent(int rootfd, const char *rel, const char **ret_name);

/* mkdir -p of @rel_dir beneath the root (each component resolved confined). 0 or -errno. */
int dbx_path_mkdirs(int rootfd, const char *rel_dir, mode_t mode);

/* Like dbx_path_mkdirs() for the parent of @rel (no-op for a top-level name). */
int dbx_path_mkparents(int rootfd, const char *rel, mode_t mode);

/* Joins @root and @rel into an absolute path ("." gives the root). Caller frees. */
char *dbx_path_join_abs(const char *root, const char *rel);
