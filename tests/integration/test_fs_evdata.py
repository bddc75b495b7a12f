"""devbox-fs: a small file changed inside the devbox arrives with its event (agent `data=1`),
so reading it through the mount right after costs no round trip (PROTOCOL.md §3)."""
import os
import time

from _fs_helpers import fs_mount, mount_factory, poll  # noqa: F401


def rewrite(path, data):
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def wait_events(m, what):
    """Until the daemon applied everything the agent published."""
    poll(lambda: (lambda s: s["events"]["lag"] == 0 and s["events"]["last_seq"] > 0)(m.stats()),
         timeout=10, what=what)


def test_remote_rewrite_is_read_without_a_fetch(fs_mount):
    m = fs_mount
    with open(m.w("f.txt"), "wb") as f:
        f.write(b"first version\n")
    poll(lambda: os.path.exists(m.p("f.txt")), timeout=5, what="f.txt on the mount")
    assert read(m.p("f.txt")) == b"first version\n"  # cached by the mount
    for n in range(5):
        new = b"version %d %s\n" % (n, b"x" * (n * 100))
        s0 = m.stats()
        rewrite(m.w("f.txt"), new)
        poll(lambda: m.stats()["events"]["data"] > s0["events"]["data"], timeout=5,
             what="content of version %d kept" % n)
        wait_events(m, "events applied")
        s1 = m.stats()
        assert read(m.p("f.txt")) == new
        assert os.stat(m.p("f.txt")).st_size == len(new)
        s2 = m.stats()
        assert s2["remote_calls"] == s1["remote_calls"], (s1, s2)
        assert s2["cache"]["read_hits"] > s1["cache"]["read_hits"]


def test_quick_successive_changes_end_with_the_last_bytes(fs_mount):
    m = fs_mount
    with open(m.w("g.txt"), "wb") as f:
        f.write(b"start")
    poll(lambda: os.path.exists(m.p("g.txt")), timeout=5, what="g.txt on the mount")
    read(m.p("g.txt"))
    for n in range(50):
        rewrite(m.w("g.txt"), b"%d" % n * (n % 7 + 1))
    last = b"%d" % 49 * (49 % 7 + 1)
    poll(lambda: read(m.p("g.txt")) == last, timeout=5, what="the last version")
    wait_events(m, "events applied")
    assert read(m.p("g.txt")) == last


def test_own_writes_are_not_sent_back(fs_mount):
    """Versions written through the mount do not come back as content: the daemon has them
    (an event seen while the file was still empty may carry that emptiness)."""
    m = fs_mount
    blobs = [os.urandom(30000) for _ in range(20)]
    s0 = m.stats()
    for n, b in enumerate(blobs):
        with open(m.p("own%d" % n), "wb") as f:
            f.write(b)
    with open(m.w("marker"), "wb") as f:
        f.write(b"m")
    poll(lambda: os.path.exists(m.p("marker")), timeout=5, what="marker")
    wait_events(m, "events applied")
    s1 = m.stats()
    # 600 KB went up; had it come back in events that would be 800 KB of base64 down
    assert s1["bytes_down"] - s0["bytes_down"] < 200000, (s0, s1)
    assert s1["bytes"]["fetched"] == s0["bytes"]["fetched"], (s0, s1)
    for n, b in enumerate(blobs):
        assert read(m.p("own%d" % n)) == b


def test_directories_made_remotely_are_listed_without_a_round_trip(fs_mount):
    """The agent reports every entry of a new directory after its mkdir event, so the mount
    knows the listing: ls, find and negative lookups in it cost nothing."""
    m = fs_mount
    os.makedirs(m.w("new/a/b"))
    for n in range(5):
        with open(m.w("new/a/b/f%d" % n), "w") as f:
            f.write("x")
    with open(m.w("new/a/top"), "w") as f:
        f.write("y")
    with open(m.w("marker2"), "w") as f:
        f.write("m")
    poll(lambda: os.path.exists(m.p("marker2")), timeout=5, what="marker")
    wait_events(m, "events applied")
    s0 = m.stats()
    assert sorted(os.listdir(m.p("new/a/b"))) == ["f%d" % n for n in range(5)]
    assert sorted(os.listdir(m.p("new/a"))) == ["b", "top"]
    assert not os.path.exists(m.p("new/a/b/missing"))
    s1 = m.stats()
    assert s1["remote_calls"] == s0["remote_calls"], (s0, s1)


def test_new_remote_files_opened_at_once_keep_later_content(fs_mount):
    """Files made inside the devbox and read through the mount as soon as they show stay known
    to the kernel, so their next versions arrive with their events and are read with no fetch.
    (The invalidation of a new name, queued by its create event, used to reach the kernel
    after a lookup had already found the file: the kernel dropped the entry, forgot the node,
    and the next version's bytes had nowhere to go.)"""
    m = fs_mount
    names = ["n%02d.txt" % k for k in range(20)]
    for k, name in enumerate(names):
        with open(m.w(name), "wb") as f:
            f.write(b"made %d\n" % k)
        # (it may show empty first: its create event comes before the write's)
        poll(lambda: read(m.p(name)) == b"made %d\n" % k, timeout=5, what=name)
    wait_events(m, "events applied")
    s0 = m.stats()
    for k, name in enumerate(names):
        rewrite(m.w(name), b"changed %d\n" % k)
    poll(lambda: m.stats()["events"]["data"] >= s0["events"]["data"] + len(names), timeout=10,
         what="the content of %d changes kept" % len(names))
    wait_events(m, "events applied")
    s1 = m.stats()
    for k, name in enumerate(names):
        assert read(m.p(name)) == b"changed %d\n" % k
    s2 = m.stats()
    assert s2["remote_calls"] == s1["remote_calls"], (s1, s2)
    assert s2["ops"]["forget"] == s0["ops"]["forget"], (s0, s2)
