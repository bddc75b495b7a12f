"""devbox-fs -o echo: changes made inside the devbox raise inotify events on the mount, so local
editors and file watchers notice them (DESIGN.md §2.9)."""
import ctypes
import os
import select
import struct
import time

from _fs_helpers import fs_mount, mount_factory, poll  # noqa: F401

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_ISDIR = 0x40000000
ALL = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE

_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        self.wds = {}
        self.seen = []

    def watch(self, path):
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), ALL)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        self.wds[wd] = path

    def _drain(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return
        data = os.read(self.fd, 65536)
        off = 0
        while off < len(data):
            wd, mask, _cookie, ln = struct.unpack_from("iIII", data, off)
            name = data[off + 16:off + 16 + ln].rstrip(b"\0").decode()
            self.seen.append((self.wds.get(wd), mask, name))
            off += 16 + ln

    def wait_for(self, mask, name, timeout=2.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, m, n) in enumerate(self.seen):
                if m & mask and n == name:
                    del self.seen[:i + 1]
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no inotify event 0x%x for %r; seen %r"
                                     % (mask, name, self.seen))
            self._drain(left)

    def close(self):
        os.close(self.fd)


def test_remote_changes_raise_inotify_events(agent, mount_factory):
    os.mkdir(os.path.join(agent.workspace, "sub"))
    m = mount_factory(opts=["echo"])
    ino = Inotify()
    try:
        ino.watch(m.path)
        ino.watch(m.p("sub"))
        with open(m.w("new.txt"), "w") as f:
            f.write("hello")
        ino.wait_for(IN_CREATE, "new.txt")
        ino.wait_for(IN_MODIFY, "new.txt")
        poll(lambda: open(m.p("new.txt")).read() == "hello", 1, "content")
        with open(m.w("new.txt"), "a") as f:
            f.write(" world")
        ino.wait_for(IN_MODIFY, "new.txt")
        os.chmod(m.w("new.txt"), 0o600)
        ino.wait_for(IN_ATTRIB, "new.txt")
        os.mkdir(m.w("dir2"))
        ino.wait_for(IN_CREATE | IN_ISDIR, "dir2")
        os.rename(m.w("new.txt"), m.w("sub/moved.txt"))
        ino.wait_for(IN_MOVED_FROM, "new.txt")
        ino.wait_for(IN_MOVED_TO, "moved.txt")
        os.symlink("moved.txt", m.w("sub/link"))
        ino.wait_for(IN_CREATE, "link")
        os.unlink(m.w("sub/moved.txt"))
        ino.wait_for(IN_DELETE, "moved.txt")
        os.rmdir(m.w("dir2"))
        ino.wait_for(IN_DELETE, "dir2")
        # the replays changed nothing in the workspace
        assert sorted(os.listdir(m.ws)) == ["sub"]
        assert os.listdir(m.w("sub")) == ["link"]
        assert os.readlink(m.p("sub/link")) == "moved.txt"
        assert sorted(os.listdir(m.p("."))) == ["sub"]
        # our own changes through the mount raise their events once (no replay loop)
        with open(m.p("local.txt"), "w") as f:
            f.write("x")
        ino.wait_for(IN_CREATE, "local.txt")
        s = m.stats()
        assert s["events"]["replayed"] >= 8, s["events"]
    finally:
        ino.close()
