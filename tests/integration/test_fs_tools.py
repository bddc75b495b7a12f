"""Ordinary Unix tools on a real devbox-fs mount of a real agent: git, make, tar, rsync, cp -a,
find/grep, editor saves, chmod +x, symlinks, hard links, touch -d, df.  Each result is compared
with what the agent's side (the workspace directory) holds.  Also: changes made inside the
devbox show through the mount without a TTL wait, and a warm `git status` on 3,000 files is
counted in agent round trips (the daemon's counters)."""
import hashlib
import os
import shutil
import stat
import subprocess
import time

import pytest

from conftest import BUILD, wait_until
from _fs_helpers import fs_mount, mount_factory  # noqa: F401 (fixtures)

CTL = os.path.join(BUILD, "ctl", "devboxctl")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "dbx test", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "dbx test", "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


@pytest.fixture
def mnt(fs_mount):
    return fs_mount


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(GIT_ENV)
    e["HOME"] = str(tmp_path / "home")
    e["LC_ALL"] = "C"
    os.makedirs(e["HOME"], exist_ok=True)
    return e


def sh(args, cwd=None, env=None, check=True, timeout=300, input=None):
    p = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError("%r failed (%d):\n%s\n%s" % (args, p.returncode,
                             p.stdout.decode(errors="replace")[-3000:],
                             p.stderr.decode(errors="replace")[-3000:]))
    return p.stdout.decode(errors="replace")


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def snapshot(root, skip=(), times=True):
    """relpath -> what a user would compare: type, permission bits, size, content digest,
    symlink target, nanosecond mtime of non-directories."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.normpath(os.path.join(rel_dir, d)) not in skip)
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                continue
            st = os.lstat(p)
            e = {"mode": oct(stat.S_IMODE(st.st_mode))}
            if stat.S_ISLNK(st.st_mode):
                e["type"] = "link"
                e["target"] = os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                e["type"] = "dir"
            else:
                e["type"] = "file"
                e["size"] = st.st_size
                e["sha"] = digest(p)
                e["nlink"] = st.st_nlink
            if times and e["type"] != "dir":
                e["mtime_ns"] = st.st_mtime_ns
            out[rel] = e
    return out


def assert_same_tree(a, b, **kw):
    sa, sb = snapshot(a, **kw), snapshot(b, **kw)
    if sa != sb:
        diff = ["%s: %r != %r" % (k, sa.get(k), sb.get(k))
                for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
        raise AssertionError("%s and %s differ:\n%s" % (a, b, "\n".join(diff[:40])))
    return sa


def make_sample_tree(root):
    """Files of several sizes, an empty file, an executable, nested dirs, relative, absolute and
    dangling symlinks, odd names, nanosecond mtimes."""
    os.makedirs(os.path.join(root, "a", "b", "c"))
    os.makedirs(os.path.join(root, "empty-dir"))
    sizes = [0, 1, 4095, 4096, 4097, 65536, 300000, 1 << 20, (1 << 20) + 13]
    for i, n in enumerate(sizes):
        with open(os.path.join(root, "a" if i % 2 else ".", "f%d.bin" % i), "wb") as f:
            f.write(bytes((i * 7 + j * 13) & 0xFF for j in range(min(n, 4096))) * (n // 4096)
                    + bytes((j * 3) & 0xFF for j in range(n % 4096)))
    with open(os.path.join(root, "a", "b", "c", "deep.txt"), "w") as f:
        f.write("deep\n" * 100)
    with open(os.path.join(root, "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod(os.path.join(root, "run.sh"), 0o755)
    with open(os.path.join(root, "name with spaces & ünïcode.txt"), "w") as f:
        f.write("odd name\n")
    os.chmod(os.path.join(root, "a", "f1.bin"), 0o600)
    os.symlink("a/b/c/deep.txt", os.path.join(root, "rel-link"))
    os.symlink("/etc/hostname", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))
    os.symlink("../..", os.path.join(root, "a", "b", "up"))
    t = 1_500_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + [d for d in dirnames
                                        if os.path.islink(os.path.join(dirpath, d))]):
            p = os.path.join(dirpath, name)
            os.utime(p, ns=(t, t), follow_symlinks=False)
            t += 1_000_000_007


# --- git --------------------------------------------------------------------------------

def test_git_clone_status_add_commit_checkout(mnt, workspace, tmp_path, env):
    src = tmp_path / "src"
    src.mkdir()
    sh(["git", "init", "-q", "-b", "main", str(src)], env=env)
    for i in range(30):
        d = src / ("d%d" % (i % 5))
        d.mkdir(exist_ok=True)
        (d / ("f%d.txt" % i)).write_text("line %d\n" % i * (i + 1))
    (src / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    os.chmod(src / "tool.sh", 0o755)
    os.symlink("d0/f0.txt", src / "link")
    sh(["git", "add", "-A"], cwd=src, env=env)
    sh(["git", "commit", "-q", "-m", "first"], cwd=src, env=env)
    sh(["git", "checkout", "-q", "-b", "feature"], cwd=src, env=env)
    (src / "d1" / "f1.txt").write_text("changed on feature\n")
    os.unlink(src / "d2" / "f2.txt")
    (src / "new-on-feature.txt").write_text("new\n")
    sh(["git", "add", "-A"], cwd=src, env=env)
    sh(["git", "commit", "-q", "-m", "feature"], cwd=src, env=env)
    sh(["git", "checkout", "-q", "main"], cwd=src, env=env)
    bare = tmp_path / "bare.git"
    sh(["git", "clone", "-q", "--bare", str(src), str(bare)], env=env)

    repo = mnt.p("repo")
    ws_repo = os.path.join(workspace, "repo")
    sh(["git", "clone", "-q", str(bare), repo], env=env)
    assert sh(["git", "status", "--porcelain"], cwd=repo, env=env) == ""
    sh(["git", "fsck", "--no-progress"], cwd=repo, env=env)
    assert os.access(os.path.join(repo, "tool.sh"), os.X_OK)
    assert os.readlink(os.path.join(repo, "link")) == "d0/f0.txt"

    with open(os.path.join(repo, "d3", "f3.txt"), "a") as f:
        f.write("appended through the mount\n")
    assert sh(["git", "status", "--porcelain"], cwd=repo, env=env) == " M d3/f3.txt\n"
    sh(["git", "add", "d3/f3.txt"], cwd=repo, env=env)
    sh(["git", "commit", "-q", "-m", "edit through the mount"], cwd=repo, env=env)
    head = sh(["git", "rev-parse", "HEAD"], cwd=repo, env=env)
    # The agent's side sees the same repository, clean.
    assert sh(["git", "rev-parse", "HEAD"], cwd=ws_repo, env=env) == head
    assert sh(["git", "status", "--porcelain"], cwd=ws_repo, env=env) == ""

    sh(["git", "checkout", "-q", "feature"], cwd=repo, env=env)
    assert open(os.path.join(repo, "d1", "f1.txt")).read() == "changed on feature\n"
    assert not os.path.exists(os.path.join(repo, "d2", "f2.txt"))
    assert os.path.exists(os.path.join(repo, "new-on-feature.txt"))
    assert sh(["git", "status", "--porcelain"], cwd=repo, env=env) == ""
    assert_same_tree(repo, ws_repo, skip={".git"})
    assert sh(["git", "status", "--porcelain"], cwd=ws_repo, env=env) == ""
    sh(["git", "checkout", "-q", "main"], cwd=repo, env=env)
    assert "appended through the mount" in open(os.path.join(ws_repo, "d3", "f3.txt")).read()
    assert not os.path.exists(os.path.join(ws_repo, "new-on-feature.txt"))


def test_git_status_3000_files_warm_round_trips(mnt, workspace, env, agent):
    """The repository is made inside the devbox; the mount's second `git status` must be
    answered from caches.  The agent round trips of that run are printed (target 0)."""
    ws_repo = os.path.join(workspace, "big")
    os.makedirs(ws_repo)
    for i in range(3000):
        d = os.path.join(ws_repo, "dir%02d" % (i % 60), "sub%d" % (i % 3))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "file%04d.c" % i), "w") as f:
            f.write("int f%d(void) { return %d; }\n" % (i, i))
    sh(["git", "init", "-q", "-b", "main"], cwd=ws_repo, env=env)
    sh(["git", "add", "-A"], cwd=ws_repo, env=env)
    sh(["git", "commit", "-q", "-m", "3000 files"], cwd=ws_repo, env=env)
    repo = mnt.p("big")
    n_ws = sum(len(f) for _, _, f in os.walk(ws_repo))
    wait_until(lambda: sum(len(f) for _, _, f in os.walk(repo)) == n_ws, timeout=10,
               what="the new repository through the mount")
    t0 = time.monotonic()
    assert sh(["git", "status", "--porcelain"], cwd=repo, env=env) == ""
    t1 = time.monotonic()

    def counted(args):
        before = mnt.stats()
        t = time.monotonic()
        assert sh(args, cwd=repo, env=env) == ""
        t = time.monotonic() - t
        after = mnt.stats()
        by_op = {k: v - before["ops"].get(k, 0) for k, v in after["ops"].items()
                 if v != before["ops"].get(k, 0)}
        return (after["requests"] - before["requests"],
                after["remote_calls"] - before["remote_calls"], t, by_op)

    # Plain `git status` takes index.lock (an exclusive create and an unlink reach the agent:
    # they are writes); what editors and prompts run, --no-optional-locks, writes nothing.
    plain = counted(["git", "status", "--porcelain"])
    nolock = counted(["git", "--no-optional-locks", "status", "--porcelain"])
    print("\ngit status on 3000 files: first %.3fs; second: %d agent requests (%d remote calls) "
          "in %.3fs, FUSE ops %s; warm --no-optional-locks: %d agent requests in %.3fs, "
          "FUSE ops %s" % (t1 - t0, plain[0], plain[1], plain[2], plain[3], nolock[0],
                           nolock[2], nolock[3]))
    assert nolock[0] == 0 and nolock[1] == 0, \
        "warm read-only git status made %d agent requests" % nolock[0]
    # The plain run's requests are the lock file's own (create, write, unlink): none per file.
    assert plain[0] < 10, plain


# --- build tools ------------------------------------------------------------------------

def write_c_project(root, n=50):
    os.makedirs(os.path.join(root, "src"))
    os.makedirs(os.path.join(root, "include"))
    with open(os.path.join(root, "include", "funcs.h"), "w") as f:
        for i in range(n):
            f.write("int func%d(int x);\n" % i)
    for i in range(n):
        with open(os.path.join(root, "src", "f%02d.c" % i), "w") as f:
            f.write('#include "funcs.h"\nint func%d(int x) { return x + %d; }\n' % (i, i))
    with open(os.path.join(root, "src", "main.c"), "w") as f:
        f.write('#include <stdio.h>\n#include "funcs.h"\nint main(void) {\n\tint s = 0;\n')
        for i in range(n):
            f.write("\ts = func%d(s);\n" % i)
        f.write('\tprintf("sum=%d\\n", s);\n\treturn 0;\n}\n')
    with open(os.path.join(root, "Makefile"), "w") as f:
        f.write("SRCS := $(wildcard src/*.c)\nOBJS := $(SRCS:src/%.c=obj/%.o)\n"
                "app: $(OBJS)\n\tcc -o $@ $(OBJS)\n"
                "obj/%.o: src/%.c include/funcs.h | obj\n\tcc -Iinclude -O1 -c $< -o $@\n"
                "obj:\n\tmkdir -p obj\n")


def test_make_j2_generated_project(mnt, workspace, env):
    proj = mnt.p("proj")
    write_c_project(proj)
    sh(["make", "-j2"], cwd=proj, env=env)
    assert sh([os.path.join(proj, "app")], env=env) == "sum=%d\n" % sum(range(50))
    ws = os.path.join(workspace, "proj")
    assert_same_tree(proj, ws)
    assert os.access(os.path.join(ws, "app"), os.X_OK)
    # Up to date: make trusts the mount's (nanosecond) mtimes.
    assert subprocess.run(["make", "-q"], cwd=proj, env=env).returncode == 0
    src = os.path.join(proj, "src", "f07.c")
    with open(src, "a") as f:
        f.write("/* touched */\n")
    assert subprocess.run(["make", "-q"], cwd=proj, env=env).returncode == 1
    out = sh(["make", "-j2"], cwd=proj, env=env)
    assert out.count("cc -Iinclude") == 1, out
    assert_same_tree(proj, ws)


# --- archives and copies ----------------------------------------------------------------

def test_tar_extract_and_create_round_trip(mnt, workspace, tmp_path):
    src = str(tmp_path / "src")
    make_sample_tree(src)
    tarball = str(tmp_path / "t.tar")
    sh(["tar", "--format=posix", "-cf", tarball, "-C", src, "."])
    dst = mnt.p("tarx")
    os.mkdir(dst)
    sh(["tar", "-xpf", tarball, "-C", dst])
    want = assert_same_tree(src, dst)
    assert_same_tree(src, os.path.join(workspace, "tarx"))
    back_tar = str(tmp_path / "back.tar")
    sh(["tar", "--format=posix", "-cf", back_tar, "-C", dst, "."])
    back = str(tmp_path / "back")
    os.mkdir(back)
    sh(["tar", "-xpf", back_tar, "-C", back])
    assert snapshot(back) == want


def test_rsync_a_both_ways(mnt, workspace, tmp_path):
    if not shutil.which("rsync"):
        pytest.fail("rsync is not installed (packaging/deps.sh installs it)")
    src = str(tmp_path / "src")
    make_sample_tree(src)
    dst = mnt.p("rs")
    sh(["rsync", "-a", src + "/", dst + "/"])
    assert_same_tree(src, dst)
    assert_same_tree(src, os.path.join(workspace, "rs"))
    # A second run finds nothing to do (sizes and nanosecond mtimes match).
    assert sh(["rsync", "-a", "-i", src + "/", dst + "/"]) == ""
    # Changes made inside the devbox come back with rsync from the mount.
    ws = os.path.join(workspace, "rs")
    with open(os.path.join(ws, "a", "b", "made-remotely.txt"), "w") as f:
        f.write("remote\n")
    with open(os.path.join(ws, "f0.bin"), "wb") as f:
        f.write(b"rewritten remotely" * 1000)
    os.unlink(os.path.join(ws, "a", "f3.bin"))
    back = str(tmp_path / "back")
    sh(["rsync", "-a", "--delete", dst + "/", back + "/"])
    assert_same_tree(back, ws)
    sh(["rsync", "-a", "--delete", src + "/", dst + "/"])
    assert_same_tree(src, ws)


def test_cp_a_both_ways(mnt, workspace, tmp_path):
    src = str(tmp_path / "src")
    make_sample_tree(src)
    dst = mnt.p("cpa")
    sh(["cp", "-a", src, dst])
    assert_same_tree(src, dst)
    assert_same_tree(src, os.path.join(workspace, "cpa"))
    back = str(tmp_path / "back")
    sh(["cp", "-a", dst, back])
    assert_same_tree(src, back)


def test_find_and_grep_r(mnt, workspace):
    root = os.path.join(workspace, "search")
    for i in range(200):
        d = os.path.join(root, "m%d" % (i % 7), "n%d" % (i % 3))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "file%d.txt" % i), "w") as f:
            f.write("alpha\n" * (i % 5) + ("needle %d\n" % i if i % 11 == 0 else "hay\n"))
    os.symlink("m0", os.path.join(root, "link-to-m0"))
    fmt = "%y %P %s %m %n\n"
    mroot = mnt.p("search")
    # 200 files, 7 + 21 directories, the link and the root itself: made on the agent's side
    # just now, they arrive through the event stream.
    wait_until(lambda: os.path.isdir(mroot) and
               sh(["find", mroot, "-printf", fmt]).count("\n") == 230,
               timeout=5, what="the whole new tree through the mount")
    assert sorted(sh(["find", mroot, "-printf", fmt]).splitlines()) == \
        sorted(sh(["find", root, "-printf", fmt]).splitlines())
    g_mnt = sh(["grep", "-rn", "needle", "."], cwd=mroot)
    assert sorted(g_mnt.splitlines()) == sorted(sh(["grep", "-rn", "needle", "."],
                                                   cwd=root).splitlines())
    assert len(g_mnt.splitlines()) == len(range(0, 200, 11))
    assert sh(["grep", "-rlc", "alpha", "."], cwd=mroot).count("\n") == 160


# --- editors ----------------------------------------------------------------------------

def test_editor_save_patterns(mnt, workspace, env):
    path = mnt.p("doc.txt")
    ws_path = os.path.join(workspace, "doc.txt")
    with open(path, "w") as f:
        f.write("version A\n")
    os.chmod(path, 0o640)
    with open(path) as held:
        # 1. write a temp file, fsync it, rename it over the original
        tmp = mnt.p(".doc.txt.swp-new")
        with open(tmp, "w") as f:
            f.write("version B\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        assert open(path).read() == "version B\n"
        assert open(ws_path).read() == "version B\n"
        assert not os.path.exists(tmp)
        assert held.read() == "version A\n", \
            "a handle opened before a rename over its file must still read the old file"
    # 2. vim's probe: create "4913" exclusively, unlink it, then rewrite the file in place
    probe = mnt.p("4913")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    os.unlink(probe)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"version C\n")
    os.fsync(fd)
    os.close(fd)
    assert not os.path.exists(probe) and not os.path.exists(os.path.join(workspace, "4913"))
    assert open(ws_path).read() == "version C\n"
    # 3. the real vim: probes with "4913", renames the original to the backup, writes a new
    #    file and gives it the original's mode
    os.chmod(path, 0o640)
    sh(["vim", "-Nu", "NONE", "-i", "NONE", "-n", "-es",
        "-c", "set backup backupext=.bak backupskip=",
        "-c", "call setline(1, 'edited by vim')",
        "-c", "wq", path], env=env, timeout=60)
    assert open(ws_path).read() == "edited by vim\n"
    assert open(os.path.join(workspace, "doc.txt.bak")).read() == "version C\n"
    assert stat.S_IMODE(os.stat(ws_path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_chmod_x_and_run_a_script(mnt, workspace):
    path = mnt.p("hello.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho \"hello from $(basename \"$0\")\"\n")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o111 == 0
    sh(["chmod", "+x", path])
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o111 == 0o111
    assert stat.S_IMODE(os.stat(os.path.join(workspace, "hello.sh")).st_mode) & 0o111 == 0o111
    assert sh([path]) == "hello from hello.sh\n"
    sh(["chmod", "a-x", path])
    assert stat.S_IMODE(os.stat(os.path.join(workspace, "hello.sh")).st_mode) & 0o111 == 0
    with pytest.raises(PermissionError):
        subprocess.run([path])


# --- links, times, statfs ---------------------------------------------------------------

def test_symlinks_pass_through_verbatim(mnt, workspace):
    with open(mnt.p("target.txt"), "w") as f:
        f.write("target\n")
    links = {"rel": "target.txt", "abs": "/etc/hostname", "dangling": "no/such/file",
             "up": "../../outside", "dir-link": "."}
    for name, target in links.items():
        os.symlink(target, mnt.p(name))
    for name, target in links.items():
        assert os.readlink(mnt.p(name)) == target
        assert os.readlink(os.path.join(workspace, name)) == target
        assert stat.S_ISLNK(os.lstat(mnt.p(name)).st_mode)
    assert open(mnt.p("rel")).read() == "target\n"
    assert not os.path.exists(mnt.p("dangling"))
    assert "rel -> target.txt" in sh(["ls", "-l", mnt.path])
    # A link made inside the devbox.
    os.symlink("target.txt", os.path.join(workspace, "made-remotely"))
    wait_until(lambda: os.path.islink(mnt.p("made-remotely")), timeout=1,
               what="a remote symlink through the mount")
    assert os.readlink(mnt.p("made-remotely")) == "target.txt"
    os.unlink(mnt.p("rel"))
    assert not os.path.lexists(os.path.join(workspace, "rel"))
    assert os.path.exists(os.path.join(workspace, "target.txt"))


def test_hard_links(mnt, workspace):
    a, b = mnt.p("a.txt"), mnt.p("b.txt")
    with open(a, "w") as f:
        f.write("one\n")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_nlink == sb.st_nlink == 2
    assert sa.st_ino == sb.st_ino
    wa = os.stat(os.path.join(workspace, "a.txt"))
    assert wa.st_nlink == 2
    assert os.stat(os.path.join(workspace, "b.txt")).st_ino == wa.st_ino
    assert sa.st_ino == wa.st_ino, "st_ino is the remote inode"
    with open(b, "a") as f:
        f.write("two\n")
    assert open(a).read() == "one\ntwo\n"
    os.unlink(a)
    assert os.stat(b).st_nlink == 1
    assert os.stat(os.path.join(workspace, "b.txt")).st_nlink == 1
    assert open(b).read() == "one\ntwo\n"


def test_touch_d_nanoseconds(mnt, workspace):
    path = mnt.p("t.txt")
    open(path, "w").close()
    sh(["touch", "-m", "-d", "2001-02-03 04:05:06.123456789 UTC", path])
    want = 981173106123456789
    assert os.stat(path).st_mtime_ns == want
    assert os.stat(os.path.join(workspace, "t.txt")).st_mtime_ns == want
    sh(["touch", "-a", "-d", "1999-12-31 23:59:59.5 UTC", path])
    assert os.stat(os.path.join(workspace, "t.txt")).st_atime_ns == 946684799500000000
    assert os.stat(path).st_atime_ns == 946684799500000000
    assert os.stat(path).st_mtime_ns == want


def test_df_reports_the_workspace_filesystem(mnt, workspace):
    out = sh(["df", "-P", "-B1", mnt.path]).splitlines()
    assert len(out) == 2 and out[1].split()[-1] == mnt.path, out
    total = int(out[1].split()[1])
    vm, vw = os.statvfs(mnt.path), os.statvfs(workspace)
    assert total == vm.f_blocks * vm.f_frsize
    assert vm.f_blocks * vm.f_frsize == vw.f_blocks * vw.f_frsize
    free_m, free_w = vm.f_bavail * vm.f_frsize, vw.f_bavail * vw.f_frsize
    assert abs(free_m - free_w) <= max(64 << 20, free_w // 20), (free_m, free_w)


# --- remote changes ---------------------------------------------------------------------

def exec_in_box(agent, script, workdir=None):
    """Runs sh -c SCRIPT inside the devbox: `devboxctl exec URL [-w DIR] -- sh -c SCRIPT`."""
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token
    args = [CTL, "exec"] + (["-w", workdir] if workdir else []) + \
        [agent.base, "--", "sh", "-c", script]
    p = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)


def test_remote_changes_visible_without_ttl(mnt, workspace, agent):
    os.makedirs(os.path.join(workspace, "w"))
    with open(os.path.join(workspace, "w", "edit.txt"), "w") as f:
        f.write("old contents\n")
    with open(os.path.join(workspace, "w", "gone.txt"), "w") as f:
        f.write("x\n")
    d = mnt.p("w")
    wait_until(lambda: os.path.exists(os.path.join(d, "gone.txt")), timeout=5,
               what="initial files through the mount")
    # Warm every cache: attributes, contents, the listing, a negative entry.
    assert open(os.path.join(d, "edit.txt")).read() == "old contents\n"
    st0 = os.stat(os.path.join(d, "edit.txt"))
    assert sorted(os.listdir(d)) == ["edit.txt", "gone.txt"]
    assert not os.path.exists(os.path.join(d, "new.txt"))

    exec_in_box(agent, "printf 'new contents, longer\\n' > edit.txt && echo hi > new.txt && "
                "rm gone.txt && mkdir sub && touch -d @1000000000 sub/stamp", workdir="w")
    wait_until(lambda: os.stat(os.path.join(d, "edit.txt")).st_size == 21, timeout=1,
               what="the new size through stat")
    assert os.stat(os.path.join(d, "edit.txt")).st_mtime_ns >= st0.st_mtime_ns
    wait_until(lambda: open(os.path.join(d, "edit.txt")).read() == "new contents, longer\n",
               timeout=1, what="the new contents through read")
    wait_until(lambda: sorted(os.listdir(d)) == ["edit.txt", "new.txt", "sub"], timeout=1,
               what="the new listing through readdir")
    wait_until(lambda: os.path.exists(os.path.join(d, "new.txt")), timeout=1,
               what="the negative entry dropped")
    assert not os.path.exists(os.path.join(d, "gone.txt"))
    assert open(os.path.join(d, "new.txt")).read() == "hi\n"
    wait_until(lambda: os.path.exists(os.path.join(d, "sub", "stamp")), timeout=1,
               what="a new subdirectory's file")
    assert os.stat(os.path.join(d, "sub", "stamp")).st_mtime == 1000000000

    # And a change made directly in the workspace directory (no agent API involved).
    with open(os.path.join(workspace, "w", "new.txt"), "a") as f:
        f.write("more\n")
    wait_until(lambda: open(os.path.join(d, "new.txt")).read() == "hi\nmore\n", timeout=1,
               what="an append made in the workspace")
