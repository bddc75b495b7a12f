// SPDX-License-Identifier: Apache-2.0
/*
 * bench-delay-proxy: a TCP forwarder that emulates a WAN link for tests/bench/fs_bench.py
 * (this kernel has no sch_netem).
 *
 *     bench-delay-proxy --connect HOST:PORT [--listen HOST:PORT] [--delay-ms MS] [--rate-mbit R]
 *
 * Every accepted connection is forwarded to --connect. Each chunk read from one side is held
 * for --delay-ms (the one-way delay, RTT/2) before it is written to the other side, so a
 * request/response pair costs one RTT; order is preserved and the chunks of one direction
 * queue behind each other without extra delay, so bulk throughput is not cut by the delay.
 * --rate-mbit caps the link: all connections share one serialisation clock per direction, as
 * on a real link. Each direction buffers at most QUEUE_CAP bytes (then it stops reading, and
 * TCP flow control pushes back on the sender).
 *
 * The first line on stdout is "listening on HOST:PORT". SIGTERM/SIGINT end it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define QUEUE_CAP (8 * 1024 * 1024)

struct link {
	pthread_mutex_t lock;
	int64_t free_at; /* ns, CLOCK_MONOTONIC: when the link is idle again */
};

struct chunk {
	struct chunk *next;
	int64_t due; /* ns: when it may be written */
	size_t len;  /* 0: end of stream */
	char data[];
};

struct pipe {
	struct conn *conn;
	struct link *link;
	int from, to;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct chunk *head, *tail;
	size_t queued;
	bool dead;
};

struct conn {
	pthread_mutex_t lock;
	int refs;
	int fds[2];
	struct pipe pipes[2];
};

static int64_t delay_ns;
static double rate_bps; /* bytes per second, 0: unlimited */
static struct link links[2] = {
	{ PTHREAD_MUTEX_INITIALIZER, 0 },
	{ PTHREAD_MUTEX_INITIALIZER, 0 },
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t t)
{
	struct timespec ts = { .tv_sec = t / 1000000000, .tv_nsec = t % 1000000000 };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void conn_put(struct conn *c)
{
	int refs, i;

	pthread_mutex_lock(&c->lock);
	refs = --c->refs;
	pthread_mutex_unlock(&c->lock);
	if (refs)
		return;
	for (i = 0; i < 2; i++) {
		struct chunk *ch = c->pipes[i].head;

		while (ch) {
			struct chunk *next = ch->next;

			free(ch);
			ch = next;
		}
		pthread_mutex_destroy(&c->pipes[i].lock);
		pthread_cond_destroy(&c->pipes[i].cond);
		close(c->fds[i]);
	}
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* When the chunk of len bytes read now may be delivered. */
static int64_t due_time(struct link *l, size_t len)
{
	int64_t t = now_ns(), out;

	if (rate_bps <= 0)
		return t + delay_ns;
	pthread_mutex_lock(&l->lock);
	if (l->free_at < t)
		l->free_at = t;
	l->free_at += (int64_t)((double)len * 1e9 / rate_bps);
	out = l->free_at + delay_ns;
	pthread_mutex_unlock(&l->lock);
	return out;
}

static void *reader(void *arg)
{
	struct pipe *p = arg;

	for (;;) {
		struct chunk *ch = malloc(sizeof(*ch) + CHUNK);
		ssize_t n;

		if (!ch) {
			fprintf(stderr, "bench-delay-proxy: out of memory\n");
			exit(1);
		}
		n = read(p->from, ch->data, CHUNK);
		if (n < 0 && errno == EINTR) {
			free(ch);
			continue;
		}
		ch->len = n > 0 ? (size_t)n : 0;
		ch->next = NULL;
		ch->due = due_time(p->link, ch->len);
		pthread_mutex_lock(&p->lock);
		while (p->queued >= QUEUE_CAP && !p->dead)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->dead) {
			pthread_mutex_unlock(&p->lock);
			free(ch);
			break;
		}
		if (p->tail)
			p->tail->next = ch;
		else
			p->head = ch;
		p->tail = ch;
		p->queued += ch->len;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		if (n <= 0)
			break;
	}
	conn_put(p->conn);
	return NULL;
}

static bool write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		buf += n;
		len -= (size_t)n;
	}
	return true;
}

static void *writer(void *arg)
{
	struct pipe *p = arg;

	for (;;) {
		struct chunk *ch;
		bool ok;

		pthread_mutex_lock(&p->lock);
		while (!p->head)
			pthread_cond_wait(&p->cond, &p->lock);
		ch = p->head;
		p->head = ch->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);

		sleep_until(ch->due);
		ok = ch->len ? write_all(p->to, ch->data, ch->len) : false;
		pthread_mutex_lock(&p->lock);
		p->queued -= ch->len;
		if (!ok)
			p->dead = true;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		if (!ok) {
			/* end of stream or a dead peer: pass the EOF on, stop the reader */
			shutdown(p->to, SHUT_WR);
			shutdown(p->from, SHUT_RD);
			free(ch);
			break;
		}
		free(ch);
	}
	conn_put(p->conn);
	return NULL;
}

static int resolve(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	size_t hl;
	int r;

	if (!colon || (hl = (size_t)(colon - spec)) >= sizeof(host))
		return -EINVAL;
	memcpy(host, spec, hl);
	host[hl] = '\0';
	r = getaddrinfo(host, colon + 1, &hints, &ai);
	if (r)
		return -EINVAL;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int start_conn(int cfd, const struct sockaddr_storage *up, socklen_t uplen)
{
	struct conn *c;
	pthread_attr_t attr;
	int ufd, i, started = 0;

	ufd = socket(up->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ufd < 0 || connect(ufd, (const struct sockaddr *)up, uplen) < 0) {
		perror("bench-delay-proxy: connect upstream");
		if (ufd >= 0)
			close(ufd);
		close(cfd);
		return -1;
	}
	nodelay(cfd);
	nodelay(ufd);
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(ufd);
		close(cfd);
		return -1;
	}
	pthread_mutex_init(&c->lock, NULL);
	c->fds[0] = cfd;
	c->fds[1] = ufd;
	c->refs = 5; /* four threads + this function */
	for (i = 0; i < 2; i++) {
		struct pipe *p = &c->pipes[i];

		p->conn = c;
		p->link = &links[i];
		p->from = c->fds[i];
		p->to = c->fds[1 - i];
		pthread_mutex_init(&p->lock, NULL);
		pthread_cond_init(&p->cond, NULL);
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	for (i = 0; i < 2; i++) {
		pthread_t t;

		if (pthread_create(&t, &attr, reader, &c->pipes[i]) == 0)
			started++;
		if (pthread_create(&t, &attr, writer, &c->pipes[i]) == 0)
			started++;
	}
	pthread_attr_destroy(&attr);
	if (started != 4) {
		fprintf(stderr, "bench-delay-proxy: cannot start threads\n");
		exit(1);
	}
	conn_put(c);
	return 0;
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s --connect HOST:PORT [--listen HOST:PORT] [--delay-ms MS] "
		"[--rate-mbit R]\n", prog);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "connect", required_argument, NULL, 'c' },
		{ "delay-ms", required_argument, NULL, 'd' },
		{ "rate-mbit", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_spec = "127.0.0.1:0", *connect_spec = NULL;
	struct sockaddr_storage la, ua, ba;
	socklen_t lalen, ualen, balen = sizeof(ba);
	char host[64];
	int lfd, one = 1, o;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'c':
			connect_spec = optarg;
			break;
		case 'd':
			delay_ns = (int64_t)(atof(optarg) * 1e6);
			break;
		case 'r':
			rate_bps = atof(optarg) * 1e6 / 8;
			break;
		default:
			usage(argv[0]);
		}
	}
	if (!connect_spec || optind != argc || delay_ns < 0)
		usage(argv[0]);
	if (resolve(listen_spec, &la, &lalen) || resolve(connect_spec, &ua, &ualen)) {
		fprintf(stderr, "bench-delay-proxy: bad address\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	lfd = socket(la.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&la, lalen) < 0 || listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&ba, &balen) < 0) {
		perror("bench-delay-proxy: listen");
		return 1;
	}
	if (ba.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ba;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		printf("listening on %s:%d\n", host, ntohs(in->sin_port));
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ba;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		printf("listening on [%s]:%d\n", host, ntohs(in6->sin6_port));
	}
	fflush(stdout);
	for (;;) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
				continue;
			perror("bench-delay-proxy: accept");
			close(lfd);
			return 1;
		}
		start_conn(cfd, &ua, ualen);
	}
}
