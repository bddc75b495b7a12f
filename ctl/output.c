/* SPDX-License-Identifier: Apache-2.0 */
/* devboxctl output: JSON documents, aligned tables, human sizes and ages.  Main thread. */
#include "ctl.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ctl_print_json(cJSON *j)
{
	char *s = j ? cJSON_Print(j) : NULL;
	if (s) {
		fputs(s, stdout);
		fputc('\n', stdout);
		free(s);
	}
	cJSON_Delete(j);
	fflush(stdout);
}

struct ctl_table {
	int ncols;
	size_t nrows, cap; /* rows including the header row */
	char **cells;      /* nrows * ncols, owned */
};

static void table_push(struct ctl_table *t, va_list ap)
{
	if (t->nrows == t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 16;
		char **n = realloc(t->cells, ncap * (size_t)t->ncols * sizeof(*n));
		if (!n)
			abort();
		t->cells = n;
		t->cap = ncap;
	}
	for (int i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		char *d = strdup(s ? s : "-");
		if (!d)
			abort();
		t->cells[t->nrows * (size_t)t->ncols + (size_t)i] = d;
	}
	t->nrows++;
}

struct ctl_table *ctl_table_new(int ncols, ...)
{
	struct ctl_table *t = calloc(1, sizeof(*t));
	va_list ap;
	if (!t)
		abort();
	t->ncols = ncols;
	va_start(ap, ncols);
	table_push(t, ap);
	va_end(ap);
	return t;
}

void ctl_table_add(struct ctl_table *t, ...)
{
	va_list ap;
	va_start(ap, t);
	table_push(t, ap);
	va_end(ap);
}

void ctl_table_print(struct ctl_table *t, FILE *out)
{
	size_t *w = calloc((size_t)t->ncols, sizeof(*w));
	if (!w)
		abort();
	for (size_t r = 0; r < t->nrows; r++)
		for (int c = 0; c < t->ncols; c++) {
			size_t l = strlen(t->cells[r * (size_t)t->ncols + (size_t)c]);
			if (l > w[c])
				w[c] = l;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (int c = 0; c < t->ncols; c++) {
			const char *s = t->cells[r * (size_t)t->ncols + (size_t)c];
			if (c == t->ncols - 1)
				fprintf(out, "%s\n", s);
			else
				fprintf(out, "%-*s  ", (int)w[c], s);
		}
	}
	for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(w);
	free(t);
	fflush(out);
}

const char *ctl_fmt_size(uint64_t n, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)n;
	int u = 0;
	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, len, v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
	return buf;
}

const char *ctl_fmt_age(int64_t ms, char *buf, size_t len)
{
	if (ms <= 0) {
		snprintf(buf, len, "-");
		return buf;
	}
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t d = ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - ms) / 1000;
	if (d < 0)
		d = 0;
	if (d < 60)
		snprintf(buf, len, "%llds ago", (long long)d);
	else if (d < 3600)
		snprintf(buf, len, "%lldm ago", (long long)(d / 60));
	else if (d < 86400 * 2)
		snprintf(buf, len, "%lldh ago", (long long)(d / 3600));
	else
		snprintf(buf, len, "%lldd ago", (long long)(d / 86400));
	return buf;
}
