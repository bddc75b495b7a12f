"""devbox-fs: each POSIX operation through the mount compared with the same thing done on (or
seen in) the workspace directory the agent serves."""
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from _fs_helpers import (fs_mount, mount_factory, renameat2, utimensat, stat_tuple,  # noqa: F401
                         RENAME_NOREPLACE, RENAME_EXCHANGE, UTIME_NOW, UTIME_OMIT,
                         assert_clean_exit, poll)


def make_tree(ws):
    os.makedirs(os.path.join(ws, "src/sub/deep"))
    with open(os.path.join(ws, "src/a.c"), "w") as f:
        f.write("int main(void) { return 0; }\n")
    with open(os.path.join(ws, "src/sub/b.txt"), "wb") as f:
        f.write(os.urandom(3000))
    with open(os.path.join(ws, "big.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    os.symlink("../a.c", os.path.join(ws, "src/sub/link"))
    os.symlink("/definitely/outside", os.path.join(ws, "abs-link"))
    os.link(os.path.join(ws, "src/a.c"), os.path.join(ws, "hard"))
    os.mkfifo(os.path.join(ws, "fifo"))
    os.chmod(os.path.join(ws, "src/sub/b.txt"), 0o640)
    os.utime(os.path.join(ws, "src/a.c"), ns=(1500000000123456789, 1600000000987654321))


def walk(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = sorted(dirnames + filenames)
    return out


def test_mount_mirrors_workspace(agent, mount_factory):
    make_tree(agent.workspace)
    m = mount_factory()
    assert walk(m.path) == walk(m.ws)
    for rel in ["", "src", "src/a.c", "src/sub", "src/sub/b.txt", "src/sub/link", "abs-link",
                "hard", "fifo", "big.bin", "src/sub/deep"]:
        assert stat_tuple(os.lstat(m.p(rel))) == stat_tuple(os.lstat(m.w(rel))), rel
    assert os.lstat(m.p("src/a.c")).st_mtime_ns == 1600000000987654321
    assert os.readlink(m.p("src/sub/link")) == "../a.c"
    assert os.readlink(m.p("abs-link")) == "/definitely/outside"
    assert os.lstat(m.p("hard")).st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(m.p("fifo")).st_mode)
    for rel in ["src/a.c", "src/sub/b.txt", "big.bin"]:
        with open(m.p(rel), "rb") as f, open(m.w(rel), "rb") as g:
            assert f.read() == g.read(), rel
    # ranged reads of the big file
    with open(m.p("big.bin"), "rb") as f, open(m.w("big.bin"), "rb") as g:
        for off in (0, 4095, 1 << 20, 3 * 1024 * 1024 + 10, 5 << 20):
            f.seek(off)
            g.seek(off)
            assert f.read(70000) == g.read(70000), off
    with pytest.raises(FileNotFoundError):
        os.stat(m.p("src/nope"))
    with pytest.raises(NotADirectoryError):
        os.stat(m.p("src/a.c/x"))


def test_st_ino_stable_across_remount(agent, mount_factory):
    make_tree(agent.workspace)
    m1 = mount_factory()
    inos = {rel: os.lstat(m1.p(rel)).st_ino for rel in ["src", "src/a.c", "hard", "fifo"]}
    assert_clean_exit(m1, m1.unmount())
    m2 = mount_factory()
    assert {rel: os.lstat(m2.p(rel)).st_ino for rel in inos} == inos
    assert inos["src/a.c"] == os.lstat(m2.w("src/a.c")).st_ino


def test_write_read_back(fs_mount):
    m = fs_mount
    with open(m.p("new.txt"), "w") as f:
        f.write("hello\n")
    with open(m.w("new.txt")) as f:
        assert f.read() == "hello\n"
    with open(m.p("new.txt"), "a") as f:
        f.write("more\n")
    with open(m.w("new.txt")) as f:
        assert f.read() == "hello\nmore\n"
    assert stat_tuple(os.stat(m.p("new.txt"))) == stat_tuple(os.stat(m.w("new.txt")))
    # a big file in many writes (several write-buffer uploads), then ranged overwrite
    data = os.urandom(9 * 1024 * 1024 + 5)
    with open(m.p("big"), "wb") as f:
        for i in range(0, len(data), 128 * 1024):
            f.write(data[i:i + 128 * 1024])
    with open(m.w("big"), "rb") as f:
        assert f.read() == data
    fd = os.open(m.p("big"), os.O_RDWR)
    try:
        os.pwrite(fd, b"XYZ", 1000)
        os.pwrite(fd, b"Q" * 10, len(data) + 100)  # past EOF: a hole
        assert os.fstat(fd).st_size == len(data) + 110
        assert os.pread(fd, 5, 999) == data[999:1000] + b"XYZ" + data[1003:1004]
    finally:
        os.close(fd)
    with open(m.w("big"), "rb") as f:
        got = f.read()
    want = data[:1000] + b"XYZ" + data[1003:] + b"\0" * 100 + b"Q" * 10
    assert got == want
    with open(m.p("big"), "rb") as f:
        assert f.read() == want
    # O_TRUNC rewrite, O_EXCL create
    with open(m.p("new.txt"), "w") as f:
        f.write("x")
    with open(m.w("new.txt")) as f:
        assert f.read() == "x"
    with pytest.raises(FileExistsError):
        os.open(m.p("new.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    fd = os.open(m.p("excl"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(m.w("excl")).st_mode) == 0o600
    # fsync reaches the agent
    fd = os.open(m.p("synced"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    with open(m.w("synced"), "rb") as f:
        assert f.read() == b"durable"
    os.close(fd)


def _replace(m, side, name, how):
    """Removes name on `side` ("mount" or "devbox") and puts a new file there: by rm + create or
    by renaming another file over it."""
    base = m.p if side == "mount" else m.w
    if how == "rm":
        os.unlink(base(name))
        with open(base(name), "w") as f:
            f.write("new file\n")
    else:
        with open(base(name + ".tmp"), "w") as f:
            f.write("new file\n")
        os.rename(base(name + ".tmp"), base(name))
    if side == "devbox":  # wait until the mount has seen it
        poll(lambda: open(m.p(name)).read() == "new file\n", 5, "the replacement")


@pytest.mark.parametrize("side", ["mount", "devbox"])
@pytest.mark.parametrize("how", ["rm", "rename"])
def test_handle_of_replaced_file_never_reaches_its_successor(fs_mount, side, how):
    """A descriptor of a file that was removed or renamed over keeps addressing that file, not
    whatever has its name now: write, ftruncate, fchmod and fsync through it fail with ESTALE,
    and the new file is untouched.  Reads of the old content still work."""
    m = fs_mount
    for op in ("write", "ftruncate", "fchmod", "fsync"):
        name = "victim-%s" % op
        with open(m.p(name), "w") as f:
            f.write("old content\n")
        fd = os.open(m.p(name), os.O_RDWR)
        try:
            assert os.pread(fd, 3, 0) == b"old"
            _replace(m, side, name, how)
            with pytest.raises(OSError) as ei:
                if op == "write":
                    os.pwrite(fd, b"XX", 0)
                    os.fsync(fd)  # a buffered write's failure shows here at the latest
                elif op == "ftruncate":
                    os.ftruncate(fd, 0)
                elif op == "fchmod":
                    os.fchmod(fd, 0o600)
                else:
                    os.fsync(fd)
                    os.pwrite(fd, b"XX", 0)
                    os.fsync(fd)
            assert ei.value.errno == errno.ESTALE, (op, ei.value)
            if side == "mount" and op != "write":
                # The bytes of a file removed through the mount stay readable (pinned), as
                # on a disk.  (Not the refused write's: they may sit in the page cache.)
                assert os.pread(fd, 3, 0) == b"old"
        finally:
            try:
                os.close(fd)
            except OSError:
                pass  # the close may report the write that could not be stored
        for path in (m.w(name), m.p(name)):
            with open(path) as f:
                assert f.read() == "new file\n", (op, path)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, (op, path)
    # Handles that follow their file: a rename of the open file itself keeps writing into it.
    with open(m.p("moved"), "w") as f:
        f.write("0123456789")
    fd = os.open(m.p("moved"), os.O_RDWR)
    os.rename(m.p("moved"), m.p("moved2"))
    os.pwrite(fd, b"AB", 0)
    os.fsync(fd)
    os.close(fd)
    with open(m.w("moved2")) as f:
        assert f.read() == "AB23456789"


def test_namespace_ops(fs_mount):
    m = fs_mount
    os.mkdir(m.p("d"), 0o750)
    assert stat.S_IMODE(os.stat(m.w("d")).st_mode) == 0o750
    assert stat_tuple(os.stat(m.p("d"))) == stat_tuple(os.stat(m.w("d")))
    with open(m.p("d/f"), "w") as f:
        f.write("1")
    assert os.listdir(m.p("d")) == ["f"]
    # nlink of a dir follows subdirectories
    os.mkdir(m.p("d/sub"))
    assert os.stat(m.p("d")).st_nlink == os.stat(m.w("d")).st_nlink == 3
    with pytest.raises(OSError) as ei:
        os.rmdir(m.p("d"))
    assert ei.value.errno == errno.ENOTEMPTY
    os.rmdir(m.p("d/sub"))
    os.unlink(m.p("d/f"))
    assert os.listdir(m.w("d")) == []
    os.rmdir(m.p("d"))
    assert not os.path.exists(m.w("d"))
    assert not os.path.exists(m.p("d"))
    with pytest.raises(FileNotFoundError):
        os.unlink(m.p("gone"))


def test_rename_flags(fs_mount):
    m = fs_mount
    for name, content in (("a", "A"), ("b", "B")):
        with open(m.p(name), "w") as f:
            f.write(content)
    ino_a = os.stat(m.p("a")).st_ino
    renameat2(m.p("a"), m.p("c"), 0)
    assert sorted(os.listdir(m.w("."))) == ["b", "c"]
    assert os.stat(m.p("c")).st_ino == ino_a == os.stat(m.w("c")).st_ino
    with pytest.raises(OSError) as ei:
        renameat2(m.p("c"), m.p("b"), RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    renameat2(m.p("c"), m.p("b"), RENAME_EXCHANGE)
    with open(m.w("b")) as f:
        assert f.read() == "A"
    with open(m.p("c")) as f:
        assert f.read() == "B"
    with pytest.raises(OSError) as ei:
        renameat2(m.p("c"), m.p("none"), RENAME_EXCHANGE)
    assert ei.value.errno == errno.ENOENT
    # replace over an existing file (editor save), with the old one open
    with open(m.p("tmp"), "w") as f:
        f.write("new content")
    fd = os.open(m.p("b"), os.O_RDONLY)
    os.rename(m.p("tmp"), m.p("b"))
    assert os.read(fd, 100) == b"A"
    os.close(fd)
    with open(m.p("b")) as f:
        assert f.read() == "new content"
    # directories move with their children
    os.makedirs(m.p("x/y"))
    with open(m.p("x/y/z"), "w") as f:
        f.write("z")
    os.rename(m.p("x"), m.p("w"))
    with open(m.p("w/y/z")) as f:
        assert f.read() == "z"
    assert os.path.exists(m.w("w/y/z")) and not os.path.exists(m.p("x"))


def test_links_fifo_symlink(fs_mount):
    m = fs_mount
    with open(m.p("f"), "w") as f:
        f.write("data")
    os.link(m.p("f"), m.p("g"))
    assert os.stat(m.p("f")).st_nlink == 2 == os.stat(m.w("g")).st_nlink
    assert os.stat(m.p("f")).st_ino == os.stat(m.p("g")).st_ino == os.stat(m.w("f")).st_ino
    os.unlink(m.p("g"))
    assert os.stat(m.p("f")).st_nlink == 1 == os.stat(m.w("f")).st_nlink
    for name, target in (("s1", "../up"), ("s2", "/abs/x"), ("s3", "a//b/./c"),
                         ("s4", "dangling")):
        os.symlink(target, m.p(name))
        assert os.readlink(m.w(name)) == target
        assert os.readlink(m.p(name)) == target
        assert os.lstat(m.p(name)).st_size == len(target)
    os.mkfifo(m.p("pipe"), 0o600)
    st = os.lstat(m.w("pipe"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat_tuple(os.lstat(m.p("pipe"))) == stat_tuple(st)


def test_setattr(fs_mount):
    m = fs_mount
    with open(m.p("f"), "w") as f:
        f.write("0123456789")
    os.chmod(m.p("f"), 0o4751)
    assert stat.S_IMODE(os.stat(m.w("f")).st_mode) == 0o4751
    os.chmod(m.p("f"), 0o644)
    os.chown(m.p("f"), 1234, 5678)
    st = os.stat(m.w("f"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(m.p("f"), -1, 42)
    assert (os.stat(m.w("f")).st_uid, os.stat(m.w("f")).st_gid) == (1234, 42)
    os.truncate(m.p("f"), 4)
    with open(m.w("f")) as f:
        assert f.read() == "0123"
    os.utime(m.p("f"), ns=(1111111111222222222, 1333333333444444444))
    st = os.stat(m.w("f"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1111111111222222222, 1333333333444444444)
    utimensat(m.p("f"), UTIME_OMIT, (1400000000, 5))
    st = os.stat(m.w("f"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1111111111222222222, 1400000000000000005)
    before = time.time_ns()
    utimensat(m.p("f"), UTIME_NOW, UTIME_OMIT)
    st = os.stat(m.w("f"))
    assert st.st_atime_ns >= before - 10**9 and st.st_mtime_ns == 1400000000000000005
    assert stat_tuple(os.stat(m.p("f"))) == stat_tuple(os.stat(m.w("f")))
    assert os.stat(m.p("f")).st_atime_ns == os.stat(m.w("f")).st_atime_ns
    # symlink times: the link itself
    os.symlink("f", m.p("l"))
    utimensat(m.p("l"), (1000, 1), (2000, 2))
    assert os.lstat(m.w("l")).st_mtime_ns == 2000 * 10**9 + 2
    assert os.stat(m.w("f")).st_mtime_ns == 1400000000000000005



def test_noop_chmod_chown_cost_no_round_trip(fs_mount):
    """tar, cp -a and rsync chmod/chown every file they create, mostly to what it already has:
    those are answered without the agent; real changes (and set-id bits) still reach it."""
    m = fs_mount
    with open(m.p("n"), "w") as f:
        f.write("x")
    os.chmod(m.p("n"), 0o640)
    st = os.stat(m.w("n"))
    poll(lambda: m.stats()["events"]["lag"] == 0, what="event stream caught up")
    s0 = m.stats()
    os.chmod(m.p("n"), 0o640)
    os.chown(m.p("n"), st.st_uid, st.st_gid)
    os.chown(m.p("n"), -1, st.st_gid)
    s1 = m.stats()
    assert s1["remote_calls"] == s0["remote_calls"], (s0, s1)
    assert stat.S_IMODE(os.stat(m.p("n")).st_mode) == 0o640
    os.chmod(m.p("n"), 0o600)
    assert stat.S_IMODE(os.stat(m.w("n")).st_mode) == 0o600
    os.chown(m.p("n"), 4321, -1)
    assert os.stat(m.w("n")).st_uid == 4321
    assert m.stats()["remote_calls"] == s1["remote_calls"] + 2
    # chown clears set-id bits even when the owner stays: never skipped
    os.chmod(m.p("n"), 0o2750)
    os.chown(m.p("n"), 4321, st.st_gid)
    assert stat.S_IMODE(os.stat(m.w("n")).st_mode) == stat.S_IMODE(os.stat(m.p("n")).st_mode)

def test_xattrs(fs_mount):
    m = fs_mount
    with open(m.p("f"), "w") as f:
        f.write("x")
    os.setxattr(m.p("f"), "user.color", b"blue")
    assert os.getxattr(m.w("f"), "user.color") == b"blue"
    assert os.getxattr(m.p("f"), "user.color") == b"blue"
    os.setxattr(m.w("f"), "user.size", b"\0" * 300)
    assert os.getxattr(m.p("f"), "user.size") == b"\0" * 300
    assert sorted(os.listxattr(m.p("f"))) == sorted(os.listxattr(m.w("f"))) == \
        ["user.color", "user.size"]
    with pytest.raises(OSError) as ei:
        os.setxattr(m.p("f"), "user.color", b"red", os.XATTR_CREATE)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(OSError) as ei:
        os.setxattr(m.p("f"), "user.none", b"red", os.XATTR_REPLACE)
    assert ei.value.errno == errno.ENODATA
    os.removexattr(m.p("f"), "user.color")
    assert os.listxattr(m.w("f")) == ["user.size"]
    with pytest.raises(OSError) as ei:
        os.getxattr(m.p("f"), "user.color")
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError) as ei:
        os.setxattr(m.p("f"), "trusted.x", b"1")
    assert ei.value.errno == errno.EOPNOTSUPP


def test_statfs_access(fs_mount):
    m = fs_mount
    a, b = os.statvfs(m.path), os.statvfs(m.ws)
    assert (a.f_bsize, a.f_frsize, a.f_blocks, a.f_files, a.f_namemax) == \
        (b.f_bsize, b.f_frsize, b.f_blocks, b.f_files, b.f_namemax)
    assert abs(a.f_bavail - b.f_bavail) < b.f_blocks // 100 + 1024
    with open(m.p("f"), "w") as f:
        f.write("x")
    os.chmod(m.p("f"), 0o644)
    assert os.access(m.p("f"), os.R_OK | os.W_OK)
    assert not os.access(m.p("f"), os.X_OK)
    assert os.access(m.p("."), os.X_OK)


LOCK_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
print("locked", flush=True)
sys.stdin.read()
"""


def _holder(path, kind):
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path, kind], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"locked\n"
    return p


def _release(p):
    p.stdin.close()
    assert p.wait(10) == 0


def test_flock_conflicts_both_ways(fs_mount):
    m = fs_mount
    with open(m.p("lk"), "w") as f:
        f.write("x")
    # mount holds, workspace side conflicts
    fd = os.open(m.p("lk"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert subprocess.run(["flock", "-n", m.w("lk"), "true"]).returncode == 1
    fcntl.flock(fd, fcntl.LOCK_UN)
    assert subprocess.run(["flock", "-n", m.w("lk"), "true"]).returncode == 0
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    assert subprocess.run(["flock", "-n", "-s", m.w("lk"), "true"]).returncode == 0
    assert subprocess.run(["flock", "-n", "-x", m.w("lk"), "true"]).returncode == 1
    os.close(fd)  # the release (asynchronous in FUSE) drops the flock
    poll(lambda: subprocess.run(["flock", "-n", m.w("lk"), "true"]).returncode == 0,
         timeout=5, what="flock released after close")
    # workspace holds, mount conflicts
    h = _holder(m.w("lk"), "flock")
    fd = os.open(m.p("lk"), os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _release(h)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_posix_locks_conflict_both_ways(fs_mount):
    m = fs_mount
    with open(m.p("pl"), "w") as f:
        f.write("x" * 100)
    fd = os.open(m.p("pl"), os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    probe = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n"
             "try:\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,%d,%d)\nexcept OSError:\n"
             " sys.exit(1)\n")
    assert subprocess.run([sys.executable, "-c", probe % (5, 0), m.w("pl")]).returncode == 1
    assert subprocess.run([sys.executable, "-c", probe % (5, 50), m.w("pl")]).returncode == 0
    os.close(fd)  # close drops the owner's record locks
    assert subprocess.run([sys.executable, "-c", probe % (5, 0), m.w("pl")]).returncode == 0
    h = _holder(m.w("pl"), "posix")
    fd = os.open(m.p("pl"), os.O_RDWR)
    with pytest.raises(OSError) as ei:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    assert ei.value.errno in (errno.EAGAIN, errno.EACCES)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
    _release(h)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    os.close(fd)


def test_blocking_lock_waits_and_is_interruptible(fs_mount):
    m = fs_mount
    with open(m.p("bl"), "w") as f:
        f.write("x")
    h = _holder(m.w("bl"), "flock")
    waiter = ("import fcntl,os,signal,sys,time\n"
              "def boom(*a):\n raise KeyboardInterrupt\n"
              "signal.signal(signal.SIGALRM, boom)\n"
              "fd=os.open(sys.argv[1],os.O_RDWR)\n"
              "signal.alarm(1)\nt=time.monotonic()\n"
              "try:\n fcntl.flock(fd,fcntl.LOCK_EX)\n print('got')\n"
              "except KeyboardInterrupt:\n print('interrupted %.1f' % (time.monotonic()-t))\n")
    out = subprocess.run([sys.executable, "-c", waiter, m.p("bl")], capture_output=True,
                         timeout=20).stdout.decode()
    assert out.startswith("interrupted"), out
    assert float(out.split()[1]) < 5, out
    # a blocking waiter gets the lock once the holder releases it
    w = subprocess.Popen([sys.executable, "-c",
                          "import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n"
                          "fcntl.flock(fd,fcntl.LOCK_EX)\nprint('got',flush=True)\n",
                          m.p("bl")], stdout=subprocess.PIPE)
    # the waiter sits in a FUSE request (the daemon waits on the agent for it)
    poll(lambda: open("/proc/%d/wchan" % w.pid).read() == "request_wait_answer", 10,
         "waiter blocked in flock")
    assert w.poll() is None
    _release(h)
    assert w.communicate(timeout=20)[0] == b"got\n"


def test_sigterm_unmounts_and_exits_zero(agent, mount_factory):
    m = mount_factory()
    with open(m.p("f"), "w") as f:
        f.write("x")
    m.proc.send_signal(signal.SIGTERM)
    rc = m.wait()
    assert_clean_exit(m, rc)
    with open("/proc/self/mountinfo") as f:
        assert (" " + m.path + " ") not in f.read()


def test_bad_usage_and_unreachable_agent(agent, tmp_path):
    from _fs_helpers import FS_BIN
    r = subprocess.run([FS_BIN, "-f"], capture_output=True)
    assert r.returncode != 0 and b"usage" in r.stderr
    r = subprocess.run([FS_BIN, "-f", "http://127.0.0.1:1", str(tmp_path)], capture_output=True,
                       env=dict(os.environ, DEVBOX_TOKEN="x"), timeout=60)
    assert r.returncode != 0 and b"not reachable" in r.stderr
    r = subprocess.run([FS_BIN, "-f", agent.base, str(tmp_path)], capture_output=True,
                       env=dict(os.environ, DEVBOX_TOKEN="wrong"), timeout=60)
    assert r.returncode != 0
    # The daemon never writes into its own mount: log and stats files there are refused.
    sub = tmp_path / "sub"
    sub.mkdir()
    for opt, what in (("log=%s/d.log" % sub, b"log file"), ("stats=%s/s.json" % tmp_path,
                                                             b"stats file")):
        r = subprocess.run([FS_BIN, "-f", "-o", opt, agent.base, str(tmp_path)],
                           capture_output=True, env=dict(os.environ, DEVBOX_TOKEN=agent.token),
                           timeout=60)
        assert r.returncode != 0 and what + b" " in r.stderr and b"inside the mountpoint" in \
            r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["sub"] and not os.listdir(sub)


@pytest.fixture
def small_workspace():
    """A 1 MiB tmpfs as workspace, so the agent runs out of space."""
    import tempfile
    d = tempfile.mkdtemp(prefix="dbx-small-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], check=True)
    yield d
    subprocess.run(["umount", "-l", d], check=True)
    os.rmdir(d)


def test_enospc_reaches_close_and_fsync(agent_factory, small_workspace, mount_factory):
    a = agent_factory(workspace=small_workspace)
    m = mount_factory(agent=a)
    big = os.urandom(2 * 1024 * 1024)
    f = open(m.p("too-big"), "wb")
    f.write(big)  # buffered in the daemon: nothing fails yet
    with pytest.raises(OSError) as ei:
        f.close()
    assert ei.value.errno == errno.ENOSPC
    fd = os.open(m.p("too-big2"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, big)
        with pytest.raises(OSError) as ei:
            os.fsync(fd)
        assert ei.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    # small files still work and the mount carries on
    for name in ("too-big", "too-big2"):
        if os.path.exists(m.p(name)):
            os.unlink(m.p(name))
    with open(m.p("ok"), "w") as f:
        f.write("fits")
    with open(m.w("ok")) as f:
        assert f.read() == "fits"


def test_soft_mount_fails_with_eio_when_agent_hangs(agent_factory, mount_factory):
    a = agent_factory()
    with open(os.path.join(a.workspace, "f"), "w") as f:
        f.write("cached")
    m = mount_factory(agent=a, opts=["timeout=2"])
    assert open(m.p("f")).read() == "cached"
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # metadata and content already here keep answering
        assert os.stat(m.p("f")).st_size == 6
        assert open(m.p("f")).read() == "cached"
        t = time.monotonic()
        with pytest.raises(OSError) as ei:
            with open(m.p("new"), "w") as f:
                f.write("x")
        assert ei.value.errno == errno.EIO
        assert time.monotonic() - t < 10
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    with open(m.p("new2"), "w") as f:
        f.write("y")
    with open(m.w("new2")) as f:
        assert f.read() == "y"


def test_large_sequential_read_uses_read_ahead(agent, mount_factory):
    import hashlib
    data = os.urandom(24 * 1024 * 1024 + 4321)
    with open(os.path.join(agent.workspace, "large"), "wb") as f:
        f.write(data)
    m = mount_factory()
    s0 = m.stats()
    h = hashlib.sha256()
    with open(m.p("large"), "rb") as f:
        while True:
            b = f.read(64 * 1024)
            if not b:
                break
            h.update(b)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    s1 = m.stats()
    # most of the file came from chunks prefetched ahead of the reader, in parallel
    assert s1["cache"]["read_hits"] - s0["cache"]["read_hits"] > 0, s1
    assert s1["bytes"]["fetched"] - s0["bytes"]["fetched"] >= len(data)
    assert s1["bytes"]["fetched"] - s0["bytes"]["fetched"] < 2 * len(data)
    # random reads still see the right bytes (and the file changing under them)
    with open(m.p("large"), "rb") as f:
        for off in (5 << 20, 123457, (24 << 20) + 4000, 17 << 20):
            f.seek(off)
            assert f.read(100000) == data[off:off + 100000], off
    with open(os.path.join(agent.workspace, "large"), "r+b") as f:
        f.seek(20 << 20)
        f.write(b"CHANGED")
    want = data[:20 << 20] + b"CHANGED" + data[(20 << 20) + 7:]
    poll(lambda: open(m.p("large"), "rb").read() == want, 2, "remote change in a big file")
