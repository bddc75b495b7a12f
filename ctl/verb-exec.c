/* SPDX-License-Identifier: Apache-2.0 */
/*
 * devboxctl exec: run a command in a devbox, ssh-style.
 *
 * Threads: main polls the exec's event fd and (with -i or -t) stdin, writing output and sending
 * input; a signal thread reads a signalfd and forwards what it gets, so a signal still gets
 * through while main waits in dbx_exec_write_stdin() (libdevbox adds the exec's WebSocket
 * thread).  Both only use the exec's thread-safe calls.  The forwarded signals (SIGINT,
 * SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) and SIGWINCH stay blocked from the start to the
 * end of the process, so none of them can kill devboxctl with the terminal left in raw mode;
 * each one received is sent to the remote process group and the verb keeps waiting for the
 * remote exit.  SIGPIPE is ignored: a closed stdout is noticed as EPIPE.
 *
 * Exit status: the remote status, 128+N when the remote command died of signal N, 127 when it
 * could not be started (no such program or directory), 255 for transport or authentication
 * failures, 141 when our stdout was closed (the remote group is sent SIGPIPE).
 */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#define STDIN_BUF (64u << 10)

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

static void help(FILE *out)
{
	fprintf(out,
		"Usage: devboxctl exec [OPTIONS] BOX [--] COMMAND [ARG...]\n"
		"\n"
		"Runs COMMAND with its arguments exactly as given (no shell is involved unless\n"
		"COMMAND is one) in the devbox BOX and relays its output.\n"
		"\n"
		"Options:\n"
		"  -i, --interactive  send our stdin to the command (EOF closes its stdin);\n"
		"                     without -i or -t its stdin is closed at once\n"
		"  -t, --tty          run it on a terminal; also sends stdin, and puts a local\n"
		"                     terminal in raw mode (Ctrl-C then reaches the remote side)\n"
		"  -T, --no-tty       no terminal (the default)\n"
		"  -w, --workdir DIR  working directory, relative to the workspace\n"
		"  -e, --env K=V      set an environment variable (repeatable); -e K copies ours\n"
		"  -h, --help         this help\n"
		"\n"
		"SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 sent to devboxctl are "
		"forwarded\n"
		"to the remote process group; window size changes follow with -t.\n"
		"\n"
		"Exit status: the command's; 128+N when it died of signal N; 127 when it could "
		"not\n"
		"be started; 255 when the agent could not be reached or refused the "
		"credentials.\n");
}

struct term {
	bool raw; /* stdin is a terminal we put in raw mode */
	struct termios saved;
};

static void term_raw(struct term *t)
{
	struct termios raw;
	if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &t->saved) < 0)
		return;
	raw = t->saved;
	cfmakeraw(&raw);
	if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0)
		t->raw = true;
}

static void term_restore(struct term *t)
{
	if (t->raw)
		tcsetattr(STDIN_FILENO, TCSADRAIN, &t->saved);
	t->raw = false;
}

static bool window_size(unsigned *rows, unsigned *cols)
{
	struct winsize ws;
	int fds[] = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
	for (size_t i = 0; i < 3; i++) {
		if (ioctl(fds[i], TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
			*rows = ws.ws_row;
			*cols = ws.ws_col;
			return true;
		}
	}
	return false;
}

/* Writes everything, waiting when fd is non-blocking.  0 or -errno. */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = {.fd = fd, .events = POLLOUT};
				poll(&pfd, 1, -1);
				continue;
			}
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* -e arguments: "K=V", or "K" to copy our own value (skipped when unset). */
static int add_env(char ***env, size_t *n, const char *arg)
{
	char *v;
	if (strchr(arg, '=')) {
		v = strdup(arg);
	} else {
		const char *ours = getenv(arg);
		if (!ours)
			return 0;
		if (asprintf(&v, "%s=%s", arg, ours) < 0)
			v = NULL;
	}
	char **grown = v ? realloc(*env, (*n + 2) * sizeof(char *)) : NULL;
	if (!grown) {
		free(v);
		return -ENOMEM;
	}
	grown[(*n)++] = v;
	grown[*n] = NULL;
	*env = grown;
	return 0;
}

struct session {
	dbx_exec *x;
	struct term *term;
	bool tty;
	bool read_stdin;
	int status; /* -1 while running */
};

/* Handles every pending event.  Sets s->status when the command ended or the link broke. */
static void drain_events(struct session *s)
{
	struct dbx_exec_event ev;
	while (s->status < 0 && dbx_exec_next(s->x, &ev, 0) == 1) {
		switch (ev.kind) {
		case DBX_EXEC_OUTPUT: {
			int r = write_all(ev.channel == 2 ? STDERR_FILENO : STDOUT_FILENO, ev.data,
					  ev.len);
			if (r == -EPIPE) {
				/* Like a local pipeline: the writer learns its reader has gone. */
				dbx_exec_signal(s->x, SIGPIPE);
				s->status = 128 + SIGPIPE;
			} else if (r < 0 && ev.channel != 2) {
				term_restore(s->term);
				fprintf(stderr, "devboxctl: exec: writing the output: %s\n",
					strerror(-r));
				s->status = CTL_EXIT_FAIL;
			}
			break;
		}
		case DBX_EXEC_SKIPPED:
			fprintf(stderr,
				"devboxctl: exec: %llu bytes of %s were lost (output faster "
				"than it could be read)%s\n",
				(unsigned long long)(ev.to - ev.offset),
				ev.channel == 2 ? "stderr" : "stdout", s->term->raw ? "\r" : "");
			break;
		case DBX_EXEC_EXIT:
			s->status = ev.signal ? 128 + ev.signal : ev.exit_code & 0xff;
			break;
		case DBX_EXEC_CLOSED:
			/* The link broke before the command's end was known: like ssh, 255. */
			term_restore(s->term);
			ctl_fail(NULL, ev.error);
			s->status = CTL_EXIT_TRANSPORT;
			break;
		}
	}
}

static void on_signal(struct session *s, int sfd)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		int sig = (int)si.ssi_signo;
		if (sig == SIGWINCH) {
			unsigned rows, cols;
			if (s->tty && window_size(&rows, &cols))
				dbx_exec_resize(s->x, rows, cols);
			continue;
		}
		/* The command may have just ended (ESRCH): its exit event follows. */
		dbx_exec_signal(s->x, sig);
	}
}

static void on_stdin(struct session *s, char *buf)
{
	ssize_t n = read(STDIN_FILENO, buf, STDIN_BUF);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n > 0) {
		if (dbx_exec_write_stdin(s->x, buf, (size_t)n) == 0)
			return;
		/* The remote stdin is gone (the command closed it or ended): stop reading. */
	} else if (n < 0) {
		fprintf(stderr, "devboxctl: exec: reading stdin: %s%s\n", strerror(errno),
			s->term->raw ? "\r" : "");
	}
	s->read_stdin = false;
	dbx_exec_close_stdin(s->x);
}

/* The signal thread: forwards signals even while the main thread waits in
 * dbx_exec_write_stdin() for a command that does not read its stdin. */
struct sigthread {
	struct session *s;
	int sfd;
	int stopfd;
};

static void *sig_main(void *arg)
{
	struct sigthread *st = arg;
	for (;;) {
		struct pollfd pfd[2] = {{.fd = st->sfd, .events = POLLIN},
					{.fd = st->stopfd, .events = POLLIN}};
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[0].revents)
			on_signal(st->s, st->sfd);
		if (pfd[1].revents)
			break;
	}
	return NULL;
}

static int run(struct session *s, sigset_t *mask)
{
	char *buf = NULL;
	struct sigthread st = {.s = s, .sfd = -1, .stopfd = -1};
	pthread_t thread;
	bool started = false;

	st.sfd = signalfd(-1, mask, SFD_CLOEXEC | SFD_NONBLOCK);
	st.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (st.sfd < 0 || st.stopfd < 0) {
		fprintf(stderr, "devboxctl: exec: %s\n", strerror(errno));
		s->status = CTL_EXIT_FAIL;
		goto out;
	}
	if (s->read_stdin && !(buf = malloc(STDIN_BUF))) {
		fprintf(stderr, "devboxctl: exec: out of memory\n");
		s->status = CTL_EXIT_FAIL;
		goto out;
	}
	int r = pthread_create(&thread, NULL, sig_main, &st);
	if (r) {
		fprintf(stderr, "devboxctl: exec: cannot start a thread: %s\n", strerror(r));
		s->status = CTL_EXIT_FAIL;
		goto out;
	}
	started = true;
	if (!s->read_stdin)
		dbx_exec_close_stdin(s->x);

	while (s->status < 0) {
		struct pollfd pfd[2] = {
			{.fd = dbx_exec_fd(s->x), .events = POLLIN},
			{.fd = s->read_stdin ? STDIN_FILENO : -1, .events = POLLIN},
		};
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "devboxctl: exec: poll: %s\n", strerror(errno));
			s->status = CTL_EXIT_FAIL;
			break;
		}
		/* Output first, so what the command says is never held up by our input. */
		if (pfd[0].revents)
			drain_events(s);
		if (s->status < 0 && s->read_stdin && pfd[1].revents)
			on_stdin(s, buf);
	}
out:
	if (started) {
		uint64_t one = 1;
		if (write(st.stopfd, &one, sizeof(one)) == sizeof(one))
			pthread_join(thread, NULL);
	}
	free(buf);
	if (st.sfd >= 0)
		close(st.sfd);
	if (st.stopfd >= 0)
		close(st.stopfd);
	return s->status;
}

int ctl_cmd_exec(struct ctl_global *g, int argc, char **argv)
{
	static const struct option opts[] = {
		{"interactive", no_argument, NULL, 'i'},
		{"tty", no_argument, NULL, 't'},
		{"no-tty", no_argument, NULL, 'T'},
		{"workdir", required_argument, NULL, 'w'},
		{"env", required_argument, NULL, 'e'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	bool interactive = false, tty = false;
	const char *cwd = NULL;
	char **env = NULL;
	size_t nenv = 0;
	int c, code;
	dbx_client *client = NULL;
	dbx_exec *x = NULL;
	struct term term = {0};

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:itTw:e:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			interactive = true;
			break;
		case 't':
			tty = true;
			break;
		case 'T':
			tty = false;
			break;
		case 'w':
			cwd = optarg;
			break;
		case 'e':
			if (add_env(&env, &nenv, optarg) < 0) {
				fprintf(stderr, "devboxctl: exec: out of memory\n");
				code = CTL_EXIT_FAIL;
				goto out;
			}
			break;
		case 'o':
			code = ctl_no_output("exec");
			goto out;
		case 'h':
			help(stdout);
			code = CTL_EXIT_OK;
			goto out;
		default:
			code = ctl_bad_option("exec", c, argv);
			goto out;
		}
	}
	if (optind >= argc) {
		code = ctl_usage_error("exec", "missing BOX");
		goto out;
	}
	const char *box = argv[optind++];
	if (optind < argc && !strcmp(argv[optind], "--"))
		optind++;
	if (optind >= argc) {
		code = ctl_usage_error("exec", "missing COMMAND");
		goto out;
	}

	/* Blocked before any thread exists, so every thread inherits the mask and the signals
	 * can only arrive through the signalfd. */
	sigset_t mask;
	sigemptyset(&mask);
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
		sigaddset(&mask, forwarded[i]);
	sigaddset(&mask, SIGWINCH);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	code = ctl_connect(g, box, &client);
	if (code)
		goto out;

	struct dbx_exec_config cfg = {
		.argv = (const char *const *)(argv + optind),
		.env = (const char *const *)env,
		.cwd = cwd,
		.tty = tty,
	};
	if (tty)
		window_size(&cfg.rows, &cfg.cols);
	int r = dbx_exec_start(client, &cfg, &x);
	if (r < 0) {
		code = ctl_fail(NULL, r);
		if (r == -ENOENT)
			code = 127; /* like a shell: no such program (or directory) */
		goto out;
	}
	if (tty)
		term_raw(&term);
	struct session s = {
		.x = x, .term = &term, .tty = tty, .read_stdin = interactive || tty, .status = -1};
	code = run(&s, &mask);
out:
	term_restore(&term);
	dbx_exec_free(x);
	dbx_client_free(client);
	for (size_t i = 0; i < nenv; i++)
		free(env[i]);
	free(env);
	/* The blocked signals stay blocked: the process ends right after this verb, and a pending
	 * one must not kill it on the way out. */
	return code;
}
