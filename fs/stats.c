/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Counters, written as one JSON object to the stats file (outside the mount) about once a
 * second and at once on SIGUSR1.  The file is replaced atomically (temp + rename), so a reader
 * always sees a complete object; "updated" counts the writes.  The counters themselves are
 * relaxed atomics bumped by any thread; this module's own thread only reads them.
 */
#include "dfs.h"

#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static sem_t kick;
static uint64_t updates;

static const char *const op_names[OP__N] = {
	[OP_LOOKUP] = "lookup",
	[OP_FORGET] = "forget",
	[OP_GETATTR] = "getattr",
	[OP_SETATTR] = "setattr",
	[OP_READLINK] = "readlink",
	[OP_MKNOD] = "mknod",
	[OP_MKDIR] = "mkdir",
	[OP_UNLINK] = "unlink",
	[OP_RMDIR] = "rmdir",
	[OP_SYMLINK] = "symlink",
	[OP_RENAME] = "rename",
	[OP_LINK] = "link",
	[OP_OPEN] = "open",
	[OP_READ] = "read",
	[OP_WRITE] = "write",
	[OP_FLUSH] = "flush",
	[OP_RELEASE] = "release",
	[OP_FSYNC] = "fsync",
	[OP_OPENDIR] = "opendir",
	[OP_READDIR] = "readdir",
	[OP_READDIRPLUS] = "readdirplus",
	[OP_RELEASEDIR] = "releasedir",
	[OP_STATFS] = "statfs",
	[OP_SETXATTR] = "setxattr",
	[OP_GETXATTR] = "getxattr",
	[OP_LISTXATTR] = "listxattr",
	[OP_REMOVEXATTR] = "removexattr",
	[OP_ACCESS] = "access",
	[OP_CREATE] = "create",
	[OP_GETLK] = "getlk",
	[OP_SETLK] = "setlk",
	[OP_FLOCK] = "flock",
	[OP_INTERRUPTED] = "interrupted",
};

const char *dfs_op_name(enum dfs_op op)
{
	return op < OP__N ? op_names[op] : "?";
}

void stats_kick(void)
{
	sem_post(&kick);
}

#define LD(x) ((unsigned long long)atomic_load(&(x)))

static int write_stats(struct dfs *d)
{
	struct dbx_client_stats cs;
	uint64_t ev = atomic_load(&d->st.last_event_seq), as = atomic_load(&d->st.agent_seq);
	size_t inodes, entries;
	char *tmp = NULL;
	FILE *f = NULL;
	int fd, r = 0;

	dbx_client_get_stats(d->client, &cs);
	pthread_mutex_lock(&d->itab.lock);
	inodes = d->itab.n;
	pthread_mutex_unlock(&d->itab.lock);
	pthread_mutex_lock(&d->mirror.lock);
	entries = d->mirror.entries;
	pthread_mutex_unlock(&d->mirror.lock);
	if (asprintf(&tmp, "%s.tmp", d->stats_path) < 0)
		return -ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		goto out;
	}
	fprintf(f, "{\"pid\":%d,\"box\":\"%s\",\"updated\":%llu,\"uptime_ms\":%llu,", (int)getpid(),
		d->box, (unsigned long long)++updates,
		(unsigned long long)(now_ms() - d->start_ms));
	fprintf(f, "\"healthy\":%s,\"ops\":{", atomic_load(&d->healthy) ? "true" : "false");
	for (int i = 0; i < OP__N; i++)
		fprintf(f, "%s\"%s\":%llu", i ? "," : "", op_names[i], LD(d->st.ops[i]));
	fprintf(f, "},\"remote_calls\":%llu,\"remote_errors\":%llu,", LD(d->st.remote_calls),
		LD(d->st.remote_errors));
	fprintf(f,
		"\"requests\":%llu,\"connects\":%llu,\"retries\":%llu,\"bytes_up\":%llu,"
		"\"bytes_down\":%llu,",
		(unsigned long long)cs.requests, (unsigned long long)cs.connects,
		(unsigned long long)cs.retries, (unsigned long long)cs.bytes_up,
		(unsigned long long)cs.bytes_down);
	fprintf(f,
		"\"cache\":{\"lookup_hits\":%llu,\"negative_hits\":%llu,\"getattr_hits\":%llu,"
		"\"readdir_hits\":%llu,\"readlink_hits\":%llu,\"read_hits\":%llu,"
		"\"read_misses\":%llu,\"data_bytes\":%llu},",
		LD(d->st.lookup_hits), LD(d->st.negative_hits), LD(d->st.getattr_hits),
		LD(d->st.readdir_hits), LD(d->st.readlink_hits), LD(d->st.read_cache_hits),
		LD(d->st.read_cache_misses), LD(d->cache_bytes));
	fprintf(f, "\"bytes\":{\"read\":%llu,\"written\":%llu,\"fetched\":%llu,\"uploaded\":%llu},",
		LD(d->st.bytes_read), LD(d->st.bytes_written), LD(d->st.bytes_fetched),
		LD(d->st.bytes_uploaded));
	fprintf(f,
		"\"events\":{\"received\":%llu,\"echoes\":%llu,\"last_seq\":%llu,"
		"\"agent_seq\":%llu,\"lag\":%llu,\"resyncs\":%llu,\"downs\":%llu,"
		"\"reconnects\":%llu,\"invalidations\":%llu,\"replayed\":%llu,\"data\":%llu},",
		LD(d->st.events), LD(d->st.events_echo), (unsigned long long)ev,
		(unsigned long long)as, (unsigned long long)(as > ev ? as - ev : 0),
		LD(d->st.resyncs), LD(d->st.stream_downs),
		(unsigned long long)(d->watch ? dbx_watch_reconnects(d->watch) : 0),
		LD(d->st.invalidations), LD(d->st.echoes_replayed), LD(d->st.events_data));
	fprintf(f,
		"\"writes\":{\"queued\":%llu,\"queued_max\":%llu,\"jobs\":%llu,\"retries\":%llu,"
		"\"failed\":%llu,\"lost_bytes\":%llu},",
		LD(d->st.wq_bytes), LD(d->st.wq_bytes_max), LD(d->st.wq_jobs), LD(d->st.wq_retries),
		LD(d->st.wq_failed), LD(d->st.wq_lost_bytes));
	fprintf(f, "\"inodes\":%zu,\"mirror_entries\":%zu}\n", inodes, entries);
	if (fclose(f) != 0) {
		r = -errno;
		goto out;
	}
	if (rename(tmp, d->stats_path) < 0)
		r = -errno;
out:
	if (r < 0)
		unlink(tmp);
	free(tmp);
	return r;
}

static void *stats_main(void *arg)
{
	struct dfs *d = arg;
	bool warned = false;

	for (;;) {
		struct timespec ts;
		bool stop;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		while (sem_timedwait(&kick, &ts) < 0 && errno == EINTR)
			;
		pthread_mutex_lock(&d->stats_lock);
		stop = d->stats_stop;
		pthread_mutex_unlock(&d->stats_lock);
		if (stop)
			break;
		int r = write_stats(d);

		if (r < 0 && !warned) {
			dfs_log(DFS_WARN, "stats file %s: %s", d->stats_path, strerror(-r));
			warned = true;
		}
	}
	return NULL;
}

int stats_start(struct dfs *d)
{
	sigset_t all, old;
	int r;

	if (sem_init(&kick, 0, 0) < 0)
		return -errno;
	pthread_mutex_init(&d->stats_lock, NULL);
	write_stats(d);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = -pthread_create(&d->stats_thread, NULL, stats_main, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	d->stats_running = r == 0;
	return r;
}

void stats_stop(struct dfs *d)
{
	if (!d->stats_running)
		return;
	pthread_mutex_lock(&d->stats_lock);
	d->stats_stop = true;
	pthread_mutex_unlock(&d->stats_lock);
	sem_post(&kick);
	pthread_join(d->stats_thread, NULL);
	d->stats_running = false;
	unlink(d->stats_path);
	pthread_mutex_destroy(&d->stats_lock);
	sem_destroy(&kick);
}
