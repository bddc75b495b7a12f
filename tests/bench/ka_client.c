/*
 * ka_client — time N identical HTTP/1.1 requests over one keep-alive TCP connection.
 *
 * Used by agent_bench.py (which compiles it with `cc -O2` into a temporary directory) to
 * measure per-request latency without interpreter overhead in the client.
 *
 *   ka_client HOST PORT WARMUP COUNT REQFILE EXPECT BODYLEN
 *
 * REQFILE holds one complete raw request (headers + body). Each response must be HTTP 200,
 * its body must contain EXPECT (unless EXPECT is "-") and be BODYLEN bytes long (unless
 * BODYLEN is -1). Content-Length and chunked bodies are understood. The first WARMUP requests
 * are not timed. Prints one JSON object with latency percentiles in microseconds; exit 1 on
 * any error (with a message on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char *rbuf;
static size_t rcap, rlen, rpos;

static void die(const char *what)
{
	fprintf(stderr, "ka_client: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
	exit(1);
}

static int fill(int fd)
{
	if (rpos > 0 && rpos == rlen)
		rpos = rlen = 0;
	if (rlen == rcap) {
		if (rpos > 0) {
			memmove(rbuf, rbuf + rpos, rlen - rpos);
			rlen -= rpos;
			rpos = 0;
		} else {
			rcap *= 2;
			rbuf = realloc(rbuf, rcap);
			if (!rbuf)
				die("out of memory");
		}
	}
	ssize_t n = read(fd, rbuf + rlen, rcap - rlen);
	if (n < 0)
		die("read");
	if (n == 0) {
		errno = 0;
		die("connection closed by the server");
	}
	rlen += (size_t)n;
	return 0;
}

/* Returns a pointer to a line (terminated by CRLF, replaced by NUL) in the buffer. */
static char *getline_crlf(int fd)
{
	for (;;) {
		char *s = rbuf + rpos;
		char *e = memmem(s, rlen - rpos, "\r\n", 2);
		if (e) {
			*e = 0;
			rpos = (size_t)(e - rbuf) + 2;
			return s;
		}
		fill(fd);
	}
}

/* Appends n body bytes to body (if not NULL), consuming them from the socket/buffer. */
static void take(int fd, size_t n, char **body, size_t *blen, size_t *bcap)
{
	while (n > 0) {
		if (rpos == rlen)
			fill(fd);
		size_t k = rlen - rpos < n ? rlen - rpos : n;
		if (*blen + k + 1 > *bcap) {
			while (*blen + k + 1 > *bcap)
				*bcap *= 2;
			*body = realloc(*body, *bcap);
			if (!*body)
				die("out of memory");
		}
		memcpy(*body + *blen, rbuf + rpos, k);
		*blen += k;
		rpos += k;
		n -= k;
	}
	(*body)[*blen] = 0;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: ka_client HOST PORT WARMUP COUNT REQFILE EXPECT BODYLEN\n");
		return 2;
	}
	const char *host = argv[1];
	int port = atoi(argv[2]), warmup = atoi(argv[3]), count = atoi(argv[4]);
	const char *expect = strcmp(argv[6], "-") ? argv[6] : NULL;
	long long want_len = atoll(argv[7]);

	FILE *f = fopen(argv[5], "rb");
	if (!f)
		die("open request file");
	fseek(f, 0, SEEK_END);
	long reqlen = ftell(f);
	rewind(f);
	char *req = malloc((size_t)reqlen);
	if (!req || fread(req, 1, (size_t)reqlen, f) != (size_t)reqlen)
		die("read request file");
	fclose(f);

	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		die("bad IPv4 address");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");

	rcap = 1 << 16;
	rbuf = malloc(rcap);
	size_t bcap = 1 << 16, blen;
	char *body = malloc(bcap);
	long long *lat = calloc((size_t)count, sizeof(*lat));
	if (!rbuf || !body || !lat)
		die("out of memory");

	for (int i = 0; i < warmup + count; i++) {
		long long t0 = now_ns();
		for (long off = 0; off < reqlen;) {
			ssize_t n = write(fd, req + off, (size_t)(reqlen - off));
			if (n < 0)
				die("write");
			off += n;
		}
		char *status = getline_crlf(fd);
		int code = 0;
		if (sscanf(status, "HTTP/1.%*d %d", &code) != 1 || code != 200) {
			fprintf(stderr, "ka_client: request %d: bad status line '%s'\n", i, status);
			return 1;
		}
		long long clen = -1;
		int chunked = 0;
		for (;;) {
			char *h = getline_crlf(fd);
			if (!*h)
				break;
			if (!strncasecmp(h, "Content-Length:", 15))
				clen = atoll(h + 15);
			else if (!strncasecmp(h, "Transfer-Encoding:", 18) && strcasestr(h, "chunked"))
				chunked = 1;
			else if (!strncasecmp(h, "Connection:", 11) && strcasestr(h, "close")) {
				fprintf(stderr, "ka_client: server sent Connection: close\n");
				return 1;
			}
		}
		blen = 0;
		body[0] = 0;
		if (chunked) {
			for (;;) {
				long long n = strtoll(getline_crlf(fd), NULL, 16);
				if (n == 0) {
					while (*getline_crlf(fd)) /* trailers */
						;
					break;
				}
				take(fd, (size_t)n, &body, &blen, &bcap);
				getline_crlf(fd);
			}
		} else if (clen >= 0) {
			take(fd, (size_t)clen, &body, &blen, &bcap);
		} else {
			fprintf(stderr, "ka_client: response without length\n");
			return 1;
		}
		long long t1 = now_ns();
		if (expect && !memmem(body, blen, expect, strlen(expect))) {
			fprintf(stderr, "ka_client: request %d: body lacks '%s': %.200s\n", i, expect, body);
			return 1;
		}
		if (want_len >= 0 && (long long)blen != want_len) {
			fprintf(stderr, "ka_client: request %d: body %zu bytes, expected %lld\n", i, blen,
				want_len);
			return 1;
		}
		if (i >= warmup)
			lat[i - warmup] = t1 - t0;
	}
	close(fd);

	qsort(lat, (size_t)count, sizeof(*lat), cmp_ll);
	double sum = 0;
	for (int i = 0; i < count; i++)
		sum += (double)lat[i];
#define PCT(p) (lat[(size_t)((count - 1) * (p) / 100.0 + 0.5)] / 1000.0)
	printf("{\"n\":%d,\"min_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
	       "\"max_us\":%.1f,\"mean_us\":%.1f}\n",
	       count, lat[0] / 1000.0, PCT(50), PCT(90), PCT(99), lat[count - 1] / 1000.0,
	       sum / count / 1000.0);
	return 0;
}
