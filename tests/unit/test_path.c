/* Unit tests for libdevbox/util/path.c: lexical normalisation and kernel confinement. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "path.h"
#include "tap.h"

static const char *norm(const char *root, const char *alias, const char *in, int *err)
{
	static char out[PATH_MAX];
	*err = dbx_path_normalize(root, alias, in, out, sizeof(out));
	return *err ? NULL : out;
}

static void test_normalize(void)
{
	int e;
	is_str(norm("/ws", NULL, "", &e), ".", "empty path is the root");
	is_str(norm("/ws", NULL, ".", &e), ".", "dot is the root");
	is_str(norm("/ws", NULL, "a/b", &e), "a/b", "relative path kept");
	is_str(norm("/ws", NULL, "./a//b/./c/", &e), "a/b/c", "dots and slashes dropped");
	is_str(norm("/ws", NULL, "a/../b", &e), "b", "inner .. pops");
	norm("/ws", NULL, "../etc/passwd", &e);
	ok(e == -EXDEV, "leading .. escapes (-EXDEV)");
	norm("/ws", NULL, "a/../../x", &e);
	ok(e == -EXDEV, "nested .. above the root escapes");
	is_str(norm("/ws", NULL, "/ws/a/b", &e), "a/b", "absolute under root");
	is_str(norm("/ws", NULL, "/ws", &e), ".", "absolute root");
	is_str(norm("/ws", NULL, "/ws/../ws/./a//", &e), "a", "absolute path cleaned first");
	is_str(norm("/ws", NULL, "/../ws/x", &e), "x", "'..' at / stays at / like the kernel");
	norm("/ws", NULL, "/wsx/a", &e);
	ok(e == -EXDEV, "sibling with common prefix is outside");
	norm("/ws", NULL, "/etc/passwd", &e);
	ok(e == -EXDEV, "absolute outside refused");
	norm("/ws", NULL, "/ws/../etc", &e);
	ok(e == -EXDEV, "absolute climbing out refused");
	is_str(norm("/ws", "/home/devbox/project", "/home/devbox/project/x", &e), "x",
	       "alias maps into the root");
	norm("/ws", "/home/devbox/project", "/home/devbox/other", &e);
	ok(e == -EXDEV, "outside the alias refused");
	is_str(norm("/", NULL, "/etc", &e), "etc", "root / accepts every absolute path");
	char longp[PATH_MAX + 10];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	norm("/ws", NULL, longp, &e);
	ok(e == -ENAMETOOLONG, "overlong path refused");
}

static void test_confinement(void)
{
	char tmpl[] = "/tmp/dbx-unit-XXXXXX";
	char *dir = mkdtemp(tmpl);
	ok(dir != NULL, "temp dir");
	char ws[PATH_MAX / 2], outside[PATH_MAX / 2], p[PATH_MAX];
	snprintf(ws, sizeof(ws), "%s/ws", dir);
	snprintf(outside, sizeof(outside), "%s/outside", dir);
	mkdir(ws, 0755);
	mkdir(outside, 0755);
	snprintf(p, sizeof(p), "%s/secret", outside);
	close(open(p, O_CREAT | O_WRONLY, 0600));
	snprintf(p, sizeof(p), "%s/out", ws);
	ok(symlink(outside, p) == 0, "symlink to outside dir");
	snprintf(p, sizeof(p), "%s/abs", ws);
	ok(symlink("/etc/passwd", p) == 0, "absolute symlink");
	snprintf(p, sizeof(p), "%s/in", ws);
	ok(symlink(".", p) == 0, "symlink inside");

	int root = open(ws, O_PATH | O_DIRECTORY | O_CLOEXEC);
	ok(root >= 0, "open root");
	int fd = dbx_path_open(root, "out/secret", O_RDONLY, 0, 0);
	ok(fd == -EXDEV, "symlinked dir pointing outside refused (%d)", fd);
	fd = dbx_path_open(root, "abs", O_RDONLY, 0, 0);
	ok(fd == -EXDEV, "absolute symlink refused (%d)", fd);
	fd = dbx_path_open(root, "in/in/x", O_CREAT | O_WRONLY, 0644, 0);
	ok(fd >= 0, "symlink inside followed (%d)", fd);
	if (fd >= 0)
		close(fd);
	ok(dbx_path_mkdirs(root, "a/b/c", 0755) == 0, "mkdirs");
	fd = dbx_path_open(root, "a/b/c", O_PATH | O_DIRECTORY, 0, 0);
	ok(fd >= 0, "mkdirs made the tree");
	if (fd >= 0)
		close(fd);
	ok(dbx_path_mkdirs(root, "out/newdir", 0755) == -EXDEV, "mkdirs through outside link");
	snprintf(p, sizeof(p), "%s/newdir", outside);
	ok(access(p, F_OK) != 0, "nothing created outside");
	const char *name = NULL;
	fd = dbx_path_open_parent(root, "a/b/c/file", &name);
	ok(fd >= 0 && strcmp(name, "file") == 0, "open_parent splits the name");
	if (fd >= 0)
		close(fd);
	ok(dbx_path_open_parent(root, ".", &name) == -EINVAL, "root has no parent");
	close(root);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ok(system(cmd) == 0, "cleanup");
}

int main(void)
{
	test_normalize();
	test_confinement();
	return tap_done();
}
