/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbx-example-hello — the libdevbox README example: connect to a devbox-agent, stat the
 * workspace root, write a file, run a command that reads it.
 *
 *   DEVBOX_TOKEN=T dbx-example-hello http://127.0.0.1:9757
 *
 * Exits 0 on success, 1 on a library error (the message on stderr), 2 on a bad command line.
 * Threads: main only.
 */
#include <devbox/devbox.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* dbx_sink_fn: relays the command's output to our stdout or stderr. */
static int to_file(void *ud, const void *buf, size_t len)
{
	return fwrite(buf, 1, len, ud) == len ? 0 : -EIO;
}

static int to_stderr(void *ud, const void *buf, size_t len)
{
	(void)ud;
	return to_file(stderr, buf, len);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: DEVBOX_TOKEN=TOKEN %s AGENT_URL\n", argv[0]);
		return 2;
	}

	struct dbx_client_config cfg = {
		.url = argv[1],
		.token = getenv("DEVBOX_TOKEN"),
		.timeout_ms = 10000,
	};
	dbx_client *c = NULL;
	struct dbx_attr attr;
	int code = 1, r, exit_code = 0, sig = 0;

	r = dbx_client_new(&cfg, &c); /* does not contact the agent yet */
	if (r < 0)
		goto fail;

	r = dbx_fs_stat(c, ".", &attr); /* "." is the workspace root */
	if (r < 0)
		goto fail;
	printf("workspace root: inode %llu, mode %o\n", (unsigned long long)attr.ino,
	       (unsigned)(attr.mode & 07777));

	static const char text[] = "hello from libdevbox\n";
	struct dbx_write_opts wo = {.truncate = true, .mode = 0644};
	r = dbx_fs_pwrite(c, "hello.txt", text, sizeof(text) - 1, &wo, &attr);
	if (r < 0)
		goto fail;
	printf("wrote hello.txt: %llu bytes\n", (unsigned long long)attr.size);

	/* argv is exec'd as given (no shell); cwd is relative to the workspace. */
	const char *const cmd[] = {"cat", "hello.txt", NULL};
	struct dbx_exec_config ec = {.argv = cmd, .timeout_s = 30};
	r = dbx_exec_run(c, &ec, to_file, to_stderr, stdout, &exit_code, &sig);
	if (r < 0)
		goto fail;
	printf("cat exited with status %d (signal %d)\n", exit_code, sig);
	code = exit_code == 0 && sig == 0 ? 0 : 1;
	goto out;

fail:
	/* The thread-local message names the operation, the path and the reason. */
	fprintf(stderr, "dbx-example-hello: %s\n", *dbx_error_last() ? dbx_error_last() :
			strerror(-r));
out:
	dbx_client_free(c);
	return code;
}
