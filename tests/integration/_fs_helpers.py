"""Shared fixtures for the devbox-fs tests (test_fs_*.py): a real FUSE mount of a real agent.

Usage in a test file:

    from _fs_helpers import fs_mount, mount_factory, Mount, renameat2   # noqa: F401 (fixtures)

    def test_x(fs_mount):
        m = fs_mount                 # a Mount: m.path (mountpoint), m.ws (workspace dir),
        ...                          # m.agent (conftest Agent), m.stats() (counters dict)

`fs_mount` mounts the `agent` fixture's workspace at a fresh temp dir with default options.
`mount_factory(**kw)` mounts with options (opts=["ttl=5", ...], agent=another_agent) and may be
called several times.  At teardown every mount is unmounted with `fusermount3 -u` (unless the
test already did it), the daemon must exit 0 and its stderr must hold no sanitizer report.

The daemon is started with `-f` and a stats file in the mount's temp dir (outside the mount).
`Mount.stats()` sends SIGUSR1 and returns the refreshed JSON (see fs/README.md).
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BUILD, SANITIZER_RE, wait_until

FS_BIN = os.path.join(BUILD, "fs", "devbox-fs")


def _mounted(path):
    """True while path is a FUSE mountpoint (read from /proc, never touching the mount)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and parts[4] == path:
                sep = parts.index("-")
                return parts[sep + 1].startswith("fuse")
    return False


class Mount:
    def __init__(self, agent, opts=(), env=None, box=None, args=()):
        self.agent = agent
        self.ws = agent.workspace
        self.tmp = tempfile.mkdtemp(prefix="dbx-fs-")
        self.path = os.path.join(self.tmp, "mnt")
        os.mkdir(self.path)
        self.stats_path = os.path.join(self.tmp, "stats.json")
        full_env = dict(os.environ)
        full_env["DEVBOX_TOKEN"] = agent.token or ""
        if env:
            full_env.update(env)
        o = ["stats=" + self.stats_path] + list(opts)
        cmd = [FS_BIN, "-f", "-o", ",".join(o)] + list(args) + [box or agent.base, self.path]
        self.err_lines = []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=full_env, cwd="/")
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while not _mounted(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.poll() is None and self.proc.kill()
                self.proc.wait()
                self._reader.join(5)
                raise RuntimeError("devbox-fs did not mount: rc=%r\n%s"
                                   % (self.proc.returncode, self.output))
            time.sleep(0.01)
        self.unmounted = False

    def _drain(self):
        for line in self.proc.stdout:
            self.err_lines.append(line.decode(errors="replace"))

    @property
    def output(self):
        return "".join(self.err_lines)

    def p(self, *names):
        """Path inside the mount."""
        return os.path.join(self.path, *names)

    def w(self, *names):
        """Same path inside the workspace (what the agent sees)."""
        return os.path.join(self.ws, *names)

    def stats(self, timeout=10):
        """Fresh counters: SIGUSR1, then wait until the file's "updated" count moves."""
        def read():
            try:
                with open(self.stats_path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None
        before = (read() or {}).get("updated", 0)
        self.proc.send_signal(signal.SIGUSR1)
        return wait_until(lambda: (lambda s: s if s and s["updated"] > before else None)(read()),
                          timeout=timeout, what="stats file refresh")

    def unmount(self, timeout=20):
        """fusermount3 -u, then the daemon's exit status."""
        if not self.unmounted:
            r = subprocess.run(["fusermount3", "-u", self.path], timeout=timeout)
            if r.returncode != 0:  # busy (a failed test left a file open): detach lazily
                subprocess.run(["fusermount3", "-u", "-z", self.path], check=True,
                               timeout=timeout)
            self.unmounted = True
        return self.wait(timeout)

    def wait(self, timeout=20):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("devbox-fs did not exit:\n" + self.output[-4000:])
        self._reader.join(5)
        self.unmounted = True
        return rc

    def cleanup(self):
        if self.proc.poll() is None:
            if _mounted(self.path):
                subprocess.run(["fusermount3", "-u", "-z", self.path], timeout=20)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def assert_clean_exit(m, rc):
    assert not SANITIZER_RE.search(m.output), "sanitizer report:\n" + m.output[-8000:]
    assert rc == 0, "devbox-fs exit status %r\n%s" % (rc, m.output[-4000:])


@pytest.fixture
def mount_factory(agent):
    made = []

    def make(**kw):
        a = kw.pop("agent", agent)
        m = Mount(a, **kw)
        made.append(m)
        return m

    yield make
    try:
        for m in made:
            if m.proc.poll() is None or not m.unmounted:
                rc = m.unmount()
            else:
                rc = m.proc.returncode
            assert_clean_exit(m, rc)
    finally:
        for m in made:
            m.cleanup()


@pytest.fixture
def fs_mount(mount_factory):
    return mount_factory()


# ---- syscalls Python lacks ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def renameat2(src, dst, flags):
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                        ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime):
    """atime/mtime: (sec, nsec) tuples, or UTIME_NOW / UTIME_OMIT."""
    def ts(v):
        return _Timespec(0, v) if isinstance(v, int) else _Timespec(*v)
    arr = (_Timespec * 2)(ts(atime), ts(mtime))
    r = _libc.utimensat(AT_FDCWD, os.fsencode(path), arr, 0x100)  # AT_SYMLINK_NOFOLLOW
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def poll(pred, timeout=1.0, what="condition"):
    """Polls pred every 5 ms; returns (value, seconds taken) or fails after timeout."""
    t0 = time.monotonic()
    while True:
        try:
            v = pred()
        except OSError:
            v = None
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("not visible within %.1fs: %s" % (timeout, what))
        time.sleep(0.005)


STAT_FIELDS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns",
               "st_ctime_ns")


def stat_tuple(st):
    return tuple(getattr(st, f) for f in STAT_FIELDS)
