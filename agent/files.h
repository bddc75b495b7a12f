/* files.h: helpers shared by the compat file routes (files.c, files_write.c, archive.c,
 * search.c). Internal to the agent.
 *
 * Every helper here runs on a worker thread (never the service thread: they block on the file
 * system) and touches the file system only through ag->rootfd with openat2(RESOLVE_BENEATH) or
 * *at() calls relative to directory fds obtained that way, so nothing outside the workspace can
 * be reached, whatever symlinks the workspace holds. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "agent.h"

#define FILES_WALK_DEPTH_MAX 256 /* deeper trees give -ELOOP: one fd per level is held */

/* Normalise a client path (no reply): 0, -EXDEV (outside the workspace) or -ENAMETOOLONG. */
int files_norm(struct agent *ag, const char *input, char rel[PATH_MAX]);

/* A text explaining an error for per-file results (batch-upload, replace); returns @buf. */
const char *files_strerror(int err, char buf[160]);

/* Reply for a failed file-system call on @rel: EXDEV/ELOOP = 1403 (symlink or path out of the
 * workspace), ENOENT 1404, EACCES/EPERM 1403, else 1500; the message names the absolute path. */
void files_reply_errno(struct req *r, int err, const char *op, const char *rel);

/* The official 256-byte "binary" heuristic (agent-api.md §2.2.11): NUL byte, > 10 % control
 * characters other than TAB/CR/LF, or invalid UTF-8 (a cut trailing sequence is tolerated). */
bool files_looks_binary(const unsigned char *s, size_t n);

/* ---- atomic file replacement ---------------------------------------------------------- */

/* Writes go to a temp file ".NAME.dbx-XXXXXX" in the target's directory, created O_EXCL, and
 * are renamed over the target on commit: a reader sees the old or the new file, never a part.
 * A final-component symlink is followed while it stays inside the workspace (the official agent
 * writes through symlinks); one pointing outside gives -EXDEV/-ELOOP. An existing file's mode
 * (and, when we may, owner) is kept. Over @max bytes af_write() fails with -EFBIG. */
struct afile {
	int dirfd; /* O_PATH directory holding the target */
	int fd;    /* the temp file, -1 when none */
	char name[NAME_MAX + 1];
	char tmp[NAME_MAX + 1];
	char rel[PATH_MAX]; /* workspace-relative path of the real target */
	bool exists;
	struct stat old; /* valid when exists */
	uint64_t size, max;
	bool sync; /* af_commit() fsyncs the data and then the directory (set after af_open) */
};

/* Creates parents, resolves the target and opens the temp file. @rel from files_norm(). */
int af_open(struct afile *af, struct agent *ag, const char *rel);
int af_write(struct afile *af, const void *buf, size_t len);
/* Renames the temp file over the target. Releases everything either way. */
int af_commit(struct afile *af);
/* Removes the temp file; the target is untouched. NULL-safe, idempotent. */
void af_abort(struct afile *af);

/* ---- tree walks ------------------------------------------------------------------------ */

/* A depth-first walk that never follows symlinks: directories are opened with
 * openat(O_NOFOLLOW | O_DIRECTORY) relative to their parent's fd, entries are stat'ed with
 * AT_SYMLINK_NOFOLLOW. w->path holds the workspace-relative path of the current entry. */
enum { WALK_NEXT = 0, WALK_DESCEND = 1 };

struct walk {
	char path[PATH_MAX];
	size_t len;
	int depth;
	/* Called for every entry; returns WALK_NEXT, WALK_DESCEND (directories) or < 0 to stop. */
	int (*visit)(struct walk *w, int dirfd, const char *name, const struct stat *st);
	/* Optional: after a descended directory's entries (post-order). < 0 stops. */
	int (*leave)(struct walk *w, int dirfd, const char *name);
	/* Optional: a subdirectory could not be opened/read; return < 0 to stop, 0 to go on. */
	int (*error)(struct walk *w, int err);
	void *ctx;
};

/* Walks the entries of the directory @dirfd (consumed: closed on return); w->path must hold
 * its relative path ("." for the root) and w->len its length. */
int walk_dir(struct walk *w, int dirfd);

/* rm -rf of the entry @name in @dirfd without following symlinks. */
int files_remove_tree(int dirfd, const char *name);

/* ---- route handlers from the other files ------------------------------------------------ */

int files_write_prepare(struct req *r);
void files_write(struct req *r);
int files_upload_prepare(struct req *r);
void files_batch_upload(struct req *r);
void files_batch_download(struct req *r);
void files_search(struct req *r);
void files_find(struct req *r);
void files_replace(struct req *r);
