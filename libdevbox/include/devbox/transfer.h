/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Transfers between the local machine and a devbox with `docker cp` semantics: files and whole
 * trees travel as tar streams (libarchive), modes, mtimes (ns) and symlinks are kept, every
 * regular file is checked with XXH3-64 after it arrived, and files whose size and hash already
 * match at the destination are skipped.  A failed copy leaves no partial file behind: each file
 * is written to a temporary name and renamed into place once complete.
 */
#ifndef DEVBOX_TRANSFER_H
#define DEVBOX_TRANSFER_H

#include <devbox/client.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called from the calling thread at most ~10 times per second and once at the end. */
typedef void (*dbx_progress_fn)(void *ud, uint64_t bytes_done, uint64_t bytes_total,
				uint64_t files_done, uint64_t files_total);

struct dbx_cp_opts {
	bool no_verify;      /* skip the XXH3 check of what arrived */
	bool no_skip;        /* send every file even when the destination already matches */
	dbx_progress_fn progress;
	void *ud;
	bool keep_owner;     /* -a: keep uid/gid (needs the privilege to chown at the destination) */
};

struct dbx_cp_stats {
	uint64_t files, dirs, symlinks, others;
	uint64_t bytes;    /* regular-file bytes sent */
	uint64_t skipped;  /* files not sent because they matched */
	uint64_t verified; /* files whose hash was checked */
};

/* docker cp rules: if dst is an existing directory, src is copied into it under its own name;
 * otherwise src is copied to dst (a trailing '/' on dst requires a directory). */
DBX_API int dbx_cp_upload(dbx_client *c, const char *local_src, const char *remote_dst,
			  const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats);
DBX_API int dbx_cp_download(dbx_client *c, const char *remote_src, const char *local_dst,
			    const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats);
/* Tar streams: extract the tar read from fd into remote_dir; write a tar of remote_src to fd. */
DBX_API int dbx_cp_upload_tar(dbx_client *c, int fd, const char *remote_dir,
			      const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats);
DBX_API int dbx_cp_download_tar(dbx_client *c, const char *remote_src, int fd,
				const struct dbx_cp_opts *opts, struct dbx_cp_stats *ret_stats);

#ifdef __cplusplus
}
#endif
#endif
