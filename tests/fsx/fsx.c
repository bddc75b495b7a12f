/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx-fsx — a random-workload file integrity tester in the spirit of the classic fsx.
 *
 * It applies a seeded random sequence of operations (pread, pwrite, ftruncate, mmap read,
 * mmap write, fsync, close + reopen, and optionally fallocate / punch hole / zero range) to one
 * or more files and mirrors every operation in an in-memory model.  Every read is compared
 * with the model, the size is checked with fstat after every operation, and the whole file is
 * compared every -c operations and at the end.  On the first mismatch it prints the seed, the
 * differing bytes, the op that probably wrote the bad byte, the recent op history and the
 * command line that replays the run, writes FILE.fsxgood (the model) next to the file, and
 * exits 1.
 *
 * Single-threaded.  Exit status: 0 no mismatch, 1 mismatch or I/O error, 2 bad command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum op_kind {
	OP_READ,
	OP_WRITE,
	OP_TRUNCATE,
	OP_MAPREAD,
	OP_MAPWRITE,
	OP_FSYNC,
	OP_REOPEN,
	OP_FALLOCATE,
	OP_PUNCH,
	OP_ZERO,
	OP_COUNT,
};

static const char *const op_names[OP_COUNT] = {
	"read",  "write",  "truncate",  "mapread", "mapwrite",
	"fsync", "reopen", "fallocate", "punch",   "zero",
};

/* Default mix, in parts per hundred; fallocate-family ops only with -F. */
static const unsigned default_weight[OP_COUNT] = {
	[OP_READ] = 26, [OP_WRITE] = 30, [OP_TRUNCATE] = 8,  [OP_MAPREAD] = 12, [OP_MAPWRITE] = 12,
	[OP_FSYNC] = 2, [OP_REOPEN] = 3, [OP_FALLOCATE] = 3, [OP_PUNCH] = 3,    [OP_ZERO] = 3,
};

struct rec {
	uint64_t n;   /* op number, from 1 */
	uint8_t kind; /* enum op_kind */
	uint8_t file; /* file index */
	uint8_t flag; /* op-specific: fallocate KEEP_SIZE, write was an append */
	uint64_t off;
	uint64_t len;
	uint64_t size_before;
	uint64_t size_after;
};

struct file {
	char *path;
	int fd;
	uint8_t *model; /* opt.maxlen bytes; beyond size always zero */
	uint64_t size;
};

struct opts {
	uint64_t nops;
	uint64_t seed;
	uint64_t maxlen;
	uint64_t maxoplen;
	uint64_t check_every;
	uint64_t progress;
	unsigned nfiles;
	unsigned history;
	unsigned weight[OP_COUNT];
	bool verbose;
	bool quiet;
};

static struct opts opt;
static struct file *files;
static struct rec *hist;
static uint64_t hist_count;
static uint64_t counts[OP_COUNT];
static uint64_t opnum;
static uint64_t rng_state;
static long pagesize;
static char **saved_argv;
static int saved_argc;
static uint8_t *scratch; /* opt.maxlen bytes for reads and full checks */

/* splitmix64: small, fast, good enough, and the same on every platform. */
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. */
static uint64_t rnd_below(uint64_t n)
{
	return rnd() % n;
}

/* The byte op `n` writes at file offset `off`.  31 is odd, so from a bad byte b at offset x the
 * writer's op number modulo 256 is (b - x) * 31^-1 mod 256 (31^-1 = 223). */
static uint8_t pattern(uint64_t n, uint64_t off)
{
	return (uint8_t)(n * 31 + off);
}

static unsigned writer_guess(uint8_t b, uint64_t off)
{
	return (unsigned)(uint8_t)((uint8_t)(b - (uint8_t)off) * 223u);
}

static void replay_hint(FILE *out)
{
	fprintf(out, "replay: %s -S %" PRIu64, saved_argv[0], opt.seed);
	for (int i = 1; i < saved_argc; i++) {
		if (!strcmp(saved_argv[i], "-S") && i + 1 < saved_argc) {
			i++;
			continue;
		}
		if (!strncmp(saved_argv[i], "-S", 2) || !strncmp(saved_argv[i], "--seed", 6)) {
			if (!strcmp(saved_argv[i], "--seed") && i + 1 < saved_argc)
				i++;
			continue;
		}
		fprintf(out, " %s", saved_argv[i]);
	}
	fputc('\n', out);
}

static void print_rec(FILE *out, const struct rec *r)
{
	fprintf(out, "  #%-8" PRIu64 " f%u %-9s", r->n, r->file, op_names[r->kind]);
	switch (r->kind) {
	case OP_FSYNC:
	case OP_REOPEN:
		break;
	case OP_TRUNCATE:
		fprintf(out, " to 0x%" PRIx64, r->len);
		break;
	default:
		fprintf(out, " 0x%06" PRIx64 " .. 0x%06" PRIx64 " (0x%" PRIx64 " bytes)", r->off,
			r->off + r->len, r->len);
		break;
	}
	if (r->kind == OP_FALLOCATE || r->kind == OP_ZERO)
		fprintf(out, "%s", r->flag ? " keep_size" : "");
	fprintf(out, "  size 0x%" PRIx64, r->size_before);
	if (r->size_after != r->size_before)
		fprintf(out, " -> 0x%" PRIx64, r->size_after);
	fputc('\n', out);
}

static void print_history(FILE *out)
{
	uint64_t n = hist_count < opt.history ? hist_count : opt.history;
	fprintf(out, "last %" PRIu64 " ops (oldest first):\n", n);
	for (uint64_t i = hist_count - n; i < hist_count; i++)
		print_rec(out, &hist[i % opt.history]);
}

static void save_good(const struct file *f)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s.fsxgood", f->path) >= (int)sizeof(path))
		return;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "dbx-fsx: cannot save the model to %s: %s\n", path,
			strerror(errno));
		return;
	}
	uint64_t done = 0;
	while (done < f->size) {
		ssize_t w = write(fd, f->model + done, f->size - done);
		if (w <= 0)
			break;
		done += (uint64_t)w;
	}
	close(fd);
	fprintf(stderr, "expected contents saved to %s\n", path);
}

/* Reports a failure and ends the run. */
static void __attribute__((noreturn, format(printf, 2, 3)))
fail(const struct file *f, const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fprintf(stderr, "dbx-fsx: FAILED at op #%" PRIu64 " (seed %" PRIu64 ") on %s: ", opnum,
		opt.seed, f ? f->path : "-");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	print_history(stderr);
	if (f)
		save_good(f);
	replay_hint(stderr);
	exit(1);
}

static void hexline(FILE *out, const char *label, const uint8_t *p, uint64_t base, uint64_t n)
{
	fprintf(out, "  %s 0x%06" PRIx64 ":", label, base);
	for (uint64_t i = 0; i < n; i++)
		fprintf(out, " %02x", p[i]);
	fputc('\n', out);
}

/* Compares got[0..len) with the model at off; on a mismatch prints the first differing bytes
 * and fails.  what names the operation that read the data. */
static void check_bytes(const struct file *f, const char *what, uint64_t off, const uint8_t *got,
			uint64_t len)
{
	const uint8_t *want = f->model + off;
	if (!memcmp(got, want, len))
		return;
	uint64_t i = 0, bad = 0, last = 0;
	while (got[i] == want[i])
		i++;
	for (uint64_t j = i; j < len; j++) {
		if (got[j] != want[j]) {
			bad++;
			last = j;
		}
	}
	uint64_t from = i & ~(uint64_t)15;
	uint64_t n = len - from < 32 ? len - from : 32;
	fflush(stdout);
	fprintf(stderr,
		"dbx-fsx: %s mismatch in %s: %" PRIu64 " bad bytes, first at 0x%" PRIx64
		", last at 0x%" PRIx64 "\n",
		what, f->path, bad, off + i, off + last);
	hexline(stderr, "want", want + from, off + from, n);
	hexline(stderr, "got ", got + from, off + from, n);
	if (got[i])
		fprintf(stderr,
			"  the bad byte 0x%02x looks written by an op whose number is %u mod 256"
			" (0 here often means a lost write or a stale page)\n",
			got[i], writer_guess(got[i], off + i));
	else
		fprintf(stderr, "  the bad byte is 0 (lost write, stale page or hole)\n");
	fail(f, "%s returned data that differs from the model", what);
}

static void xpread(const struct file *f, uint8_t *buf, uint64_t off, uint64_t len, uint64_t *ret_n)
{
	uint64_t done = 0;
	while (done < len) {
		ssize_t r = pread(f->fd, buf + done, len - done, (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fail(f, "pread 0x%" PRIx64 "+0x%" PRIx64 ": %s", off, len, strerror(errno));
		}
		if (r == 0)
			break;
		done += (uint64_t)r;
	}
	*ret_n = done;
}

static void check_size(const struct file *f, const char *when)
{
	struct stat st;
	if (fstat(f->fd, &st) < 0)
		fail(f, "fstat after %s: %s", when, strerror(errno));
	if ((uint64_t)st.st_size != f->size)
		fail(f, "size after %s is 0x%" PRIx64 ", expected 0x%" PRIx64, when,
		     (uint64_t)st.st_size, f->size);
}

static void check_whole(const struct file *f, const char *when)
{
	uint64_t n;
	check_size(f, when);
	xpread(f, scratch, 0, f->size, &n);
	if (n != f->size)
		fail(f, "full read after %s: got 0x%" PRIx64 " bytes, expected 0x%" PRIx64, when, n,
		     f->size);
	check_bytes(f, "full-file read", 0, scratch, n);
	/* Nothing may follow the end of the file. */
	uint8_t extra;
	xpread(f, &extra, f->size, 1, &n);
	if (n)
		fail(f, "read at EOF 0x%" PRIx64 " returned data", f->size);
}

/* The model's size change: growing exposes zeroes (the model beyond size is kept zero). */
static void model_resize(struct file *f, uint64_t size)
{
	if (size < f->size)
		memset(f->model + size, 0, f->size - size);
	f->size = size;
}

static void open_file(struct file *f, bool create)
{
	int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
	f->fd = open(f->path, flags, 0644);
	if (f->fd < 0)
		fail(f, "open (%s): %s", create ? "create" : "reopen", strerror(errno));
}

/* A random range [off, off+len) with 1 <= len <= maxoplen, off+len <= limit (limit >= 1). */
static void rnd_range(uint64_t limit, uint64_t *ret_off, uint64_t *ret_len)
{
	uint64_t off = rnd_below(limit);
	uint64_t max = limit - off < opt.maxoplen ? limit - off : opt.maxoplen;
	*ret_off = off;
	*ret_len = 1 + rnd_below(max);
}

static void do_read(struct file *f, struct rec *r)
{
	uint64_t n;
	rnd_range(opt.maxlen, &r->off, &r->len);
	/* A third of the reads start inside the file, so that EOF is not hit too often. */
	if (f->size && rnd_below(3) == 0) {
		r->off = rnd_below(f->size);
		if (r->len > opt.maxlen - r->off)
			r->len = opt.maxlen - r->off;
	}
	xpread(f, scratch, r->off, r->len, &n);
	uint64_t want =
		r->off >= f->size ? 0 : (f->size - r->off < r->len ? f->size - r->off : r->len);
	if (n != want)
		fail(f,
		     "read 0x%" PRIx64 "+0x%" PRIx64 " returned 0x%" PRIx64
		     " bytes, expected 0x%" PRIx64 " (size 0x%" PRIx64 ")",
		     r->off, r->len, n, want, f->size);
	check_bytes(f, "read", r->off, scratch, n);
}

static void do_write(struct file *f, struct rec *r)
{
	rnd_range(opt.maxlen, &r->off, &r->len);
	/* Appends are common in real workloads; make a fifth of the writes start at EOF. */
	if (rnd_below(5) == 0 && f->size < opt.maxlen) {
		r->off = f->size;
		r->flag = 1;
		if (r->len > opt.maxlen - r->off)
			r->len = opt.maxlen - r->off;
	}
	for (uint64_t i = 0; i < r->len; i++)
		scratch[i] = pattern(r->n, r->off + i);
	uint64_t done = 0;
	while (done < r->len) {
		ssize_t w = pwrite(f->fd, scratch + done, r->len - done, (off_t)(r->off + done));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			fail(f, "pwrite 0x%" PRIx64 "+0x%" PRIx64 ": %s", r->off, r->len,
			     strerror(errno));
		}
		if (w == 0)
			fail(f, "pwrite 0x%" PRIx64 "+0x%" PRIx64 " wrote nothing", r->off, r->len);
		done += (uint64_t)w;
	}
	memcpy(f->model + r->off, scratch, r->len);
	if (r->off + r->len > f->size)
		model_resize(f, r->off + r->len);
}

static void do_truncate(struct file *f, struct rec *r)
{
	uint64_t size = rnd_below(opt.maxlen + 1);
	r->len = size;
	if (ftruncate(f->fd, (off_t)size) < 0)
		fail(f, "ftruncate to 0x%" PRIx64 ": %s", size, strerror(errno));
	model_resize(f, size);
}

static void do_mapread(struct file *f, struct rec *r)
{
	if (!f->size) {
		r->kind = OP_READ;
		do_read(f, r);
		return;
	}
	rnd_range(f->size, &r->off, &r->len);
	uint64_t pg = r->off & ~(uint64_t)(pagesize - 1);
	size_t maplen = (size_t)(r->off + r->len - pg);
	uint8_t *p = mmap(NULL, maplen, PROT_READ, MAP_SHARED, f->fd, (off_t)pg);
	if (p == MAP_FAILED)
		fail(f, "mmap(PROT_READ) 0x%" PRIx64 "+0x%zx: %s", pg, maplen, strerror(errno));
	memcpy(scratch, p + (r->off - pg), r->len);
	if (munmap(p, maplen) < 0)
		fail(f, "munmap: %s", strerror(errno));
	check_bytes(f, "mmap read", r->off, scratch, r->len);
}

static void do_mapwrite(struct file *f, struct rec *r)
{
	rnd_range(opt.maxlen, &r->off, &r->len);
	uint64_t end = r->off + r->len;
	/* A mapping cannot extend a file: grow it first, as an editor or a database would. */
	if (end > f->size) {
		if (ftruncate(f->fd, (off_t)end) < 0)
			fail(f, "ftruncate to 0x%" PRIx64 " before mmap write: %s", end,
			     strerror(errno));
		model_resize(f, end);
	}
	uint64_t pg = r->off & ~(uint64_t)(pagesize - 1);
	size_t maplen = (size_t)(end - pg);
	uint8_t *p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, (off_t)pg);
	if (p == MAP_FAILED)
		fail(f, "mmap(PROT_WRITE) 0x%" PRIx64 "+0x%zx: %s", pg, maplen, strerror(errno));
	for (uint64_t i = 0; i < r->len; i++) {
		uint8_t b = pattern(r->n, r->off + i);
		p[r->off - pg + i] = b;
		f->model[r->off + i] = b;
	}
	if (msync(p, maplen, MS_SYNC) < 0)
		fail(f, "msync 0x%" PRIx64 "+0x%zx: %s", pg, maplen, strerror(errno));
	if (munmap(p, maplen) < 0)
		fail(f, "munmap: %s", strerror(errno));
}

static void do_fsync(struct file *f, struct rec *r)
{
	if (fsync(f->fd) < 0)
		fail(f, "fsync: %s", strerror(errno));
}

static void do_reopen(struct file *f, struct rec *r)
{
	if (close(f->fd) < 0)
		fail(f, "close: %s", strerror(errno));
	f->fd = -1;
	open_file(f, false);
}

/* The fallocate family.  Returns false if the filesystem does not support this mode (the
 * caller then stops choosing the op). */
static bool do_falloc(struct file *f, struct rec *r)
{
	int mode;
	rnd_range(opt.maxlen, &r->off, &r->len);
	switch (r->kind) {
	case OP_FALLOCATE:
		r->flag = (uint8_t)rnd_below(2);
		mode = r->flag ? FALLOC_FL_KEEP_SIZE : 0;
		break;
	case OP_PUNCH:
		mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
		break;
	default:
		r->flag = (uint8_t)rnd_below(2);
		mode = FALLOC_FL_ZERO_RANGE | (r->flag ? FALLOC_FL_KEEP_SIZE : 0);
		break;
	}
	if (fallocate(f->fd, mode, (off_t)r->off, (off_t)r->len) < 0) {
		if (errno == EOPNOTSUPP || errno == ENOSYS)
			return false;
		fail(f, "fallocate(%s) 0x%" PRIx64 "+0x%" PRIx64 ": %s", op_names[r->kind], r->off,
		     r->len, strerror(errno));
	}
	uint64_t end = r->off + r->len;
	if (r->kind != OP_FALLOCATE) {
		uint64_t zend = end < f->size ? end : f->size;
		if (r->off < zend)
			memset(f->model + r->off, 0, zend - r->off);
	}
	if (!(mode & FALLOC_FL_KEEP_SIZE) && end > f->size)
		model_resize(f, end);
	return true;
}

static enum op_kind pick_op(void)
{
	unsigned total = 0;
	for (int k = 0; k < OP_COUNT; k++)
		total += opt.weight[k];
	uint64_t x = rnd_below(total);
	for (int k = 0; k < OP_COUNT; k++) {
		if (x < opt.weight[k])
			return (enum op_kind)k;
		x -= opt.weight[k];
	}
	return OP_READ;
}

static void run(void)
{
	for (opnum = 1; opnum <= opt.nops; opnum++) {
		struct file *f = &files[opt.nfiles > 1 ? rnd_below(opt.nfiles) : 0];
		struct rec *r = &hist[hist_count % opt.history];
		*r = (struct rec){.n = opnum, .file = (uint8_t)(f - files), .size_before = f->size};
		r->kind = (uint8_t)pick_op();
		switch (r->kind) {
		case OP_READ:
			do_read(f, r);
			break;
		case OP_WRITE:
			do_write(f, r);
			break;
		case OP_TRUNCATE:
			do_truncate(f, r);
			break;
		case OP_MAPREAD:
			do_mapread(f, r);
			break;
		case OP_MAPWRITE:
			do_mapwrite(f, r);
			break;
		case OP_FSYNC:
			do_fsync(f, r);
			break;
		case OP_REOPEN:
			do_reopen(f, r);
			break;
		default:
			if (!do_falloc(f, r)) {
				fprintf(stderr,
					"dbx-fsx: %s not supported here; not used further\n",
					op_names[r->kind]);
				opt.weight[r->kind] = 0;
				r->kind = OP_READ;
				do_read(f, r);
			}
			break;
		}
		r->size_after = f->size;
		hist_count++;
		counts[r->kind]++;
		if (opt.verbose)
			print_rec(stdout, r);
		check_size(f, op_names[r->kind]);
		if (opt.check_every && opnum % opt.check_every == 0)
			for (unsigned i = 0; i < opt.nfiles; i++)
				check_whole(&files[i], "periodic check");
		if (opt.progress && opnum % opt.progress == 0 && !opt.quiet)
			fprintf(stderr, "dbx-fsx: %" PRIu64 " ops\n", opnum);
	}
	opnum = opt.nops;
	for (unsigned i = 0; i < opt.nfiles; i++) {
		check_whole(&files[i], "the last op");
		/* A fresh descriptor must see the same bytes: nothing may live only in a handle. */
		do_reopen(&files[i], &(struct rec){0});
		check_whole(&files[i], "the final reopen");
	}
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: dbx-fsx [OPTIONS] FILE\n"
		"Random read/write/truncate/mmap workload on FILE, checked against an in-memory\n"
		"model.  FILE is created (truncated).  With -n N > 1 the files are FILE.0 ..\n"
		"FILE.N-1.\n"
		"\n"
		"  -N, --ops N          number of operations (default 10000)\n"
		"  -S, --seed N         PRNG seed (default: from the clock; always printed)\n"
		"  -l, --max-size N     largest file size (default 262144)\n"
		"  -o, --max-op N       largest single read/write (default 65536)\n"
		"  -n, --files N        number of files, 1-64 (default 1)\n"
		"  -c, --check-every N  compare whole files every N ops (default 1000; 0: at the\n"
		"                       end only)\n"
		"  -H, --history N      ops kept for the failure report (default 200)\n"
		"  -p, --progress N     print a progress line every N ops\n"
		"  -F, --fallocate      also fallocate, punch holes and zero ranges\n"
		"  -M, --no-mmap        no mmap reads or writes\n"
		"  -R, --no-reopen      no close + reopen\n"
		"  -T, --no-truncate    no ftruncate\n"
		"  -Y, --no-fsync       no fsync\n"
		"  -v, --verbose        print every op\n"
		"  -q, --quiet          only the summary line and failures\n"
		"  -h, --help           this help\n"
		"\n"
		"Exit status: 0 no mismatch; 1 a mismatch or an I/O error (details, the op\n"
		"history and a replay command on stderr); 2 bad command line.\n");
}

static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return false;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end || v < min || v > max)
		return false;
	*ret = v;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{"ops", required_argument, NULL, 'N'},
		{"seed", required_argument, NULL, 'S'},
		{"max-size", required_argument, NULL, 'l'},
		{"max-op", required_argument, NULL, 'o'},
		{"files", required_argument, NULL, 'n'},
		{"check-every", required_argument, NULL, 'c'},
		{"history", required_argument, NULL, 'H'},
		{"progress", required_argument, NULL, 'p'},
		{"fallocate", no_argument, NULL, 'F'},
		{"no-mmap", no_argument, NULL, 'M'},
		{"no-reopen", no_argument, NULL, 'R'},
		{"no-truncate", no_argument, NULL, 'T'},
		{"no-fsync", no_argument, NULL, 'Y'},
		{"verbose", no_argument, NULL, 'v'},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool have_seed = false, fallocate_on = false;
	uint64_t v;
	int c, status = 1;

	saved_argc = argc;
	saved_argv = argv;
	opt = (struct opts){.nops = 10000,
			    .maxlen = 262144,
			    .maxoplen = 65536,
			    .check_every = 1000,
			    .nfiles = 1,
			    .history = 200};
	memcpy(opt.weight, default_weight, sizeof(opt.weight));
	while ((c = getopt_long(argc, argv, "N:S:l:o:n:c:H:p:FMRTYvqh", lopts, NULL)) != -1) {
		const char *what = NULL;
		switch (c) {
		case 'N':
			if (!parse_u64(optarg, 1, UINT64_MAX, &opt.nops))
				what = "--ops";
			break;
		case 'S':
			if (!parse_u64(optarg, 0, UINT64_MAX, &opt.seed))
				what = "--seed";
			have_seed = true;
			break;
		case 'l':
			if (!parse_u64(optarg, 1, 1ULL << 31, &opt.maxlen))
				what = "--max-size";
			break;
		case 'o':
			if (!parse_u64(optarg, 1, 1ULL << 31, &opt.maxoplen))
				what = "--max-op";
			break;
		case 'n':
			if (!parse_u64(optarg, 1, 64, &v))
				what = "--files";
			opt.nfiles = (unsigned)v;
			break;
		case 'c':
			if (!parse_u64(optarg, 0, UINT64_MAX, &opt.check_every))
				what = "--check-every";
			break;
		case 'H':
			if (!parse_u64(optarg, 1, 1000000, &v))
				what = "--history";
			opt.history = (unsigned)v;
			break;
		case 'p':
			if (!parse_u64(optarg, 1, UINT64_MAX, &opt.progress))
				what = "--progress";
			break;
		case 'F':
			fallocate_on = true;
			break;
		case 'M':
			opt.weight[OP_MAPREAD] = opt.weight[OP_MAPWRITE] = 0;
			break;
		case 'R':
			opt.weight[OP_REOPEN] = 0;
			break;
		case 'T':
			opt.weight[OP_TRUNCATE] = 0;
			break;
		case 'Y':
			opt.weight[OP_FSYNC] = 0;
			break;
		case 'v':
			opt.verbose = true;
			break;
		case 'q':
			opt.quiet = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Try 'dbx-fsx --help'.\n");
			return 2;
		}
		if (what) {
			fprintf(stderr, "dbx-fsx: %s: bad value '%s'\nTry 'dbx-fsx --help'.\n",
				what, optarg);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "dbx-fsx: expected exactly one FILE\nTry 'dbx-fsx --help'.\n");
		return 2;
	}
	if (!fallocate_on)
		opt.weight[OP_FALLOCATE] = opt.weight[OP_PUNCH] = opt.weight[OP_ZERO] = 0;
	if (opt.maxoplen > opt.maxlen)
		opt.maxoplen = opt.maxlen;
	if (!have_seed) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		opt.seed = ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^
			   ((uint64_t)getpid() << 32);
	}
	rng_state = opt.seed;
	pagesize = sysconf(_SC_PAGESIZE);

	const char *base = argv[optind];
	files = calloc(opt.nfiles, sizeof(*files));
	hist = calloc(opt.history, sizeof(*hist));
	scratch = malloc(opt.maxlen);
	if (!files || !hist || !scratch) {
		fprintf(stderr, "dbx-fsx: out of memory\n");
		goto out;
	}
	for (unsigned i = 0; i < opt.nfiles; i++) {
		struct file *f = &files[i];
		f->fd = -1;
		if (opt.nfiles == 1)
			f->path = strdup(base);
		else if (asprintf(&f->path, "%s.%u", base, i) < 0)
			f->path = NULL;
		f->model = calloc(1, opt.maxlen);
		if (!f->path || !f->model) {
			fprintf(stderr, "dbx-fsx: out of memory\n");
			goto out;
		}
		open_file(f, true);
	}
	if (!opt.quiet)
		printf("dbx-fsx: seed %" PRIu64 ", %" PRIu64 " ops, %u file(s), max size %" PRIu64
		       ", max op %" PRIu64 "\n",
		       opt.seed, opt.nops, opt.nfiles, opt.maxlen, opt.maxoplen);
	fflush(stdout);
	run();
	for (unsigned i = 0; i < opt.nfiles; i++) {
		if (close(files[i].fd) < 0)
			fail(&files[i], "close: %s", strerror(errno));
		files[i].fd = -1;
	}
	printf("dbx-fsx: ok: %" PRIu64 " ops, seed %" PRIu64 ", 0 mismatches (", opt.nops,
	       opt.seed);
	for (int k = 0, first = 1; k < OP_COUNT; k++) {
		if (!counts[k])
			continue;
		printf("%s%s %" PRIu64, first ? "" : ", ", op_names[k], counts[k]);
		first = 0;
	}
	printf(")\n");
	status = 0;
out:
	if (files) {
		for (unsigned i = 0; i < opt.nfiles; i++) {
			if (files[i].fd >= 0)
				close(files[i].fd);
			free(files[i].path);
			free(files[i].model);
		}
	}
	free(files);
	free(hist);
	free(scratch);
	return status;
}
