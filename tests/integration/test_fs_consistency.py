"""devbox-fs consistency (DESIGN.md §2): remote changes reach the mount through the event
stream within a fraction of a second although the kernel caches hold entries and attributes for
an hour; warm metadata walks cost no agent round trip; counters are readable while mounted."""
import json
import os
import shutil
import subprocess
import threading
import time

from conftest import Agent, wait_until
from _fs_helpers import fs_mount, mount_factory, poll, stat_tuple  # noqa: F401

VISIBLE_S = 1.0  # the default kernel TTL is 3600 s: anything seen sooner came from an event


def write(path, data):
    with open(path, "w") as f:
        f.write(data)


def read(path):
    with open(path) as f:
        return f.read()


def test_remote_content_and_attr_changes_visible(fs_mount):
    m = fs_mount
    write(m.w("f"), "one")
    poll(lambda: read(m.p("f")) == "one", VISIBLE_S, "remote create")
    # the mount now holds it in the kernel caches (stat, page cache)
    assert os.stat(m.p("f")).st_size == 3
    write(m.w("f"), "second version")
    poll(lambda: os.stat(m.p("f")).st_size == 14, VISIBLE_S, "size after remote write")
    poll(lambda: read(m.p("f")) == "second version", VISIBLE_S, "content after remote write")
    # same size, new bytes: the page cache must be dropped too
    write(m.w("f"), "SECOND VERSION")
    poll(lambda: read(m.p("f")) == "SECOND VERSION", VISIBLE_S, "same-size rewrite")
    os.chmod(m.w("f"), 0o600)
    poll(lambda: os.stat(m.p("f")).st_mode & 0o777 == 0o600, VISIBLE_S, "remote chmod")
    os.utime(m.w("f"), ns=(10**18, 10**18 + 7))
    poll(lambda: os.stat(m.p("f")).st_mtime_ns == 10**18 + 7, VISIBLE_S, "remote utime")
    assert stat_tuple(os.stat(m.p("f"))) == stat_tuple(os.stat(m.w("f")))


def test_remote_namespace_changes_visible(fs_mount):
    m = fs_mount
    os.mkdir(m.w("d"))
    poll(lambda: os.path.isdir(m.p("d")), VISIBLE_S, "remote mkdir")
    assert os.listdir(m.p("d")) == []
    # negative entry cached, then created remotely
    assert not os.path.exists(m.p("d/new"))
    write(m.w("d/new"), "hi")
    poll(lambda: os.path.exists(m.p("d/new")), VISIBLE_S, "remote create after ENOENT")
    poll(lambda: os.listdir(m.p("d")) == ["new"], VISIBLE_S, "listing after remote create")
    assert read(m.p("d/new")) == "hi"
    os.rename(m.w("d/new"), m.w("d/renamed"))
    poll(lambda: os.listdir(m.p("d")) == ["renamed"], VISIBLE_S, "listing after rename")
    assert not os.path.exists(m.p("d/new"))
    assert read(m.p("d/renamed")) == "hi"
    os.unlink(m.w("d/renamed"))
    poll(lambda: not os.path.exists(m.p("d/renamed")), VISIBLE_S, "remote unlink")
    assert os.listdir(m.p("d")) == []
    # a whole subtree appears and disappears
    os.makedirs(m.w("t/a/b"))
    write(m.w("t/a/b/c.txt"), "deep")
    poll(lambda: read(m.p("t/a/b/c.txt")) == "deep", VISIBLE_S, "new subtree")
    os.symlink("a/b/c.txt", m.w("t/link"))
    poll(lambda: os.readlink(m.p("t/link")) == "a/b/c.txt", VISIBLE_S, "remote symlink")
    shutil.rmtree(m.w("t"))
    poll(lambda: not os.path.exists(m.p("t")), VISIBLE_S, "remote rm -rf")
    assert sorted(os.listdir(m.p("."))) == ["d"]
    s = m.stats()
    assert s["healthy"] is True and s["events"]["received"] > 0


def _names(root):
    got = set()
    for d, dirs, files in os.walk(root):
        got.update(os.path.relpath(os.path.join(d, n), root) for n in dirs + files)
    return got


def test_listings_racing_remote_changes_converge(fs_mount):
    """Walkers list the mount while the devbox side creates thousands of names and git renames
    and removes its temp objects.  A listing made before a change but answered after that
    change's event must not undo it: the mount ends up with exactly the workspace's names
    (before the fix, a file went missing and a removed temp file stayed, until a remount)."""
    m = fs_mount
    for rnd in range(2):
        base = "race%d" % rnd
        stop = threading.Event()
        errors = []

        def walker():
            try:
                while not stop.is_set():
                    _names(m.p(base))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        walkers = [threading.Thread(target=walker) for _ in range(3)]
        for t in walkers:
            t.start()
        try:
            ws = m.w(base)
            for i in range(1500):
                d = os.path.join(ws, "d%02d" % (i % 40), "s%d" % (i % 3))
                os.makedirs(d, exist_ok=True)
                write(os.path.join(d, "f%04d.c" % i), "int x%d;\n" % i)
            subprocess.run(["git", "init", "-q", ws], check=True)
            subprocess.run(["git", "-C", ws, "add", "-A"], check=True)
        finally:
            stop.set()
            for t in walkers:
                t.join()
        assert not errors, errors
        want = _names(m.w(base))
        last = [None]

        def same():
            last[0] = _names(m.p(base))
            return last[0] == want
        try:
            wait_until(same, timeout=15, interval=0.1, what="the mount to list what the "
                       "workspace holds")
        except AssertionError:
            raise AssertionError("round %d: missing %r, extra %r" % (
                rnd, sorted(want - last[0])[:10], sorted(last[0] - want)[:10]))


def test_changes_via_agent_api_visible(fs_mount):
    m = fs_mount
    assert not os.path.exists(m.p("api.txt"))
    st, _, body = m.agent.request("PUT", "/fs/v1/write", body=b"from the api",
                                  query={"path": "api.txt"})
    assert st == 200, body
    poll(lambda: read(m.p("api.txt")) == "from the api", VISIBLE_S, "file written by the API")


def test_own_changes_cost_no_invalidation_storm(fs_mount):
    m = fs_mount
    for i in range(20):
        write(m.p("f%d" % i), "x" * i)
    before = m.stats()
    assert sorted(os.listdir(m.p("."))) == sorted("f%d" % i for i in range(20))
    # our own events come back as echoes and change nothing
    wait_until(lambda: m.stats()["events"]["echoes"] > 0, timeout=5, what="echo events")
    for i in range(20):
        assert os.stat(m.p("f%d" % i)).st_size == i
    assert before["healthy"]



def test_own_changes_leave_exact_directory_attrs_at_one_call_each(fs_mount):
    """A directory changed through the mount shows its new mtime, ctime, nlink and size at once,
    exactly as in the devbox, and each change costs its one agent call: the agent's reply
    says how it left the directory (X-Dbx-Dir), so no stat follows."""
    m = fs_mount
    os.mkdir(m.p("a"))
    os.mkdir(m.p("b"))
    write(m.p("a", "seed"), "s")

    def same(*rel):
        want, got = os.stat(m.w(*rel)), os.stat(m.p(*rel))
        for f in ("st_ino", "st_mode", "st_nlink", "st_size", "st_mtime_ns", "st_ctime_ns"):
            assert getattr(got, f) == getattr(want, f), (rel, f, got, want)

    steps = [
        ("create", lambda: os.close(os.open(m.p("a", "new"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)),
         [("a",)]),
        ("mkdir", lambda: os.mkdir(m.p("a", "sub")), [("a",)]),
        ("rename", lambda: os.rename(m.p("a", "new"), m.p("b", "moved")), [("a",), ("b",)]),
        ("rename dir", lambda: os.rename(m.p("a", "sub"), m.p("b", "sub")), [("a",), ("b",)]),
        ("symlink", lambda: os.symlink("moved", m.p("b", "ln")), [("b",)]),
        ("link", lambda: os.link(m.p("b", "moved"), m.p("a", "hard")), [("a",)]),
        ("unlink", lambda: os.unlink(m.p("a", "hard")), [("a",)]),
        ("rmdir", lambda: os.rmdir(m.p("b", "sub")), [("b",)]),
    ]
    for what, op, dirs in steps:
        s0 = m.stats()
        op()
        s1 = m.stats()
        for rel in dirs:
            same(*rel)
        time.sleep(0.05)  # a background stat, if one were queued, would have run
        s2 = m.stats()
        assert s1["remote_calls"] - s0["remote_calls"] == 1, (what, s0, s1)
        assert s2["remote_calls"] == s1["remote_calls"], (what, s1, s2)


def test_names_removed_through_the_mount_show_when_made_again_inside(fs_mount):
    """A name removed through the mount (unlink, rename away, rmdir) and then made inside the
    devbox shows at once: the mount invalidates a new name only where the kernel may hold it
    as absent, and what the kernel keeps after our own removals must not hide it."""
    m = fs_mount
    for how in ("unlink", "rename", "rmdir"):
        name = "gone_" + how
        if how == "rmdir":
            os.mkdir(m.p(name))
        else:
            write(m.p(name), "mine")
        os.stat(m.p(name))
        if how == "unlink":
            os.unlink(m.p(name))
        elif how == "rename":
            os.rename(m.p(name), m.p(name + ".away"))
        else:
            os.rmdir(m.p(name))
        wait_until(lambda: m.stats()["events"]["lag"] == 0, timeout=5, what="own events")
        write(m.w(name), "made inside")
        # (it may show empty first: its create event comes before the write's)
        poll(lambda: read(m.p(name)) == "made inside", VISIBLE_S, "%s, then made inside" % how)


def test_own_removal_stays_removed_while_its_events_arrive(fs_mount):
    """vim's probe (create "4913" exclusively, close, unlink) again and again: once unlink
    returned, the name is gone for this mount, although events about the file, stat'ed by the
    agent before the unlink ran, are published after it."""
    m = fs_mount
    probe = m.p("4913")
    for i in range(300):
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.unlink(probe)
        assert not os.path.exists(probe), i
    wait_until(lambda: m.stats()["events"]["lag"] == 0, timeout=5, what="the events")
    assert not os.path.exists(probe)
    assert "4913" not in os.listdir(m.p("."))

def make_tree(root, dirs=12, files=15):
    for d in range(dirs):
        sub = os.path.join(root, "dir%02d" % d, "sub")
        os.makedirs(sub)
        for f in range(files):
            write(os.path.join(root, "dir%02d" % d, "file%02d.c" % f), "x" * f)
        os.symlink("../file00.c", os.path.join(sub, "link"))


def test_warm_find_and_stat_need_no_round_trip(agent, mount_factory):
    make_tree(agent.workspace)
    m = mount_factory()

    def walk():
        out = subprocess.run(["find", m.path, "-printf", "%p %i %s %T@ %m\n"],
                             capture_output=True, check=True).stdout
        for dirpath, dirnames, filenames in os.walk(m.path):
            for n in dirnames + filenames:
                os.lstat(os.path.join(dirpath, n))
        for missing in ("nope", "dir00/nope", "dir03/sub/nope"):
            assert not os.path.exists(m.p(missing))
        return out

    first = walk()
    s0 = m.stats()
    again = walk()
    s1 = m.stats()
    assert again == first
    assert s1["requests"] == s0["requests"], json.dumps([s0, s1])
    assert s1["remote_calls"] == s0["remote_calls"], (s0, s1)
    # the tree loaded at mount answered even the first walk
    assert s0["remote_calls"] <= 2, s0
    assert s0["mirror_entries"] == 12 * (15 + 2) + 12
    # ... and it matches what the workspace holds
    ws = subprocess.run(["find", m.ws, "-printf", "%P %i %s %T@ %m\n"], capture_output=True,
                        check=True).stdout
    mnt = subprocess.run(["find", m.path, "-printf", "%P %i %s %T@ %m\n"], capture_output=True,
                         check=True).stdout
    assert sorted(ws.splitlines()) == sorted(mnt.splitlines())


def test_stats_file_counters(fs_mount):
    m = fs_mount
    write(m.p("a"), "hello")
    assert read(m.p("a")) == "hello"
    s = m.stats()
    assert s["pid"] == m.proc.pid and s["box"] == m.agent.base
    for k in ("lookup", "getattr", "create", "write", "flush", "release"):
        assert k in s["ops"]
    assert s["ops"]["create"] >= 1 and s["ops"]["write"] >= 1
    assert s["bytes"]["written"] >= 5 and s["bytes"]["uploaded"] >= 5
    assert s["requests"] >= s["remote_calls"] > 0
    for k in ("received", "echoes", "last_seq", "agent_seq", "lag", "reconnects", "resyncs"):
        assert k in s["events"]
    for k in ("lookup_hits", "negative_hits", "getattr_hits", "readdir_hits", "read_hits"):
        assert k in s["cache"]
    json.dumps(s)


def test_agent_restart_resyncs(agent_factory, workspace, mount_factory):
    a1 = agent_factory()
    write(os.path.join(workspace, "keep"), "k")
    write(os.path.join(workspace, "old"), "o")
    m = mount_factory(agent=a1)  # loads the tree: both files are there at once
    assert read(m.p("old")) == "o"
    assert not os.path.exists(m.p("later"))
    port = a1.port
    assert a1.stop() == 0
    # changes while the agent is down (no events can report them)
    os.unlink(os.path.join(workspace, "old"))
    write(os.path.join(workspace, "later"), "new file")
    write(os.path.join(workspace, "keep"), "changed!")
    a2 = agent_factory(addr="127.0.0.1:%d" % port)
    assert a2.port == port
    # a new agent boot: the stream cannot resume, so the daemon reloads and invalidates
    poll(lambda: os.path.exists(m.p("later")), 15, "file created while the agent was down")
    assert not os.path.exists(m.p("old"))
    assert read(m.p("keep")) == "changed!"
    # the stream reconnects (with backoff) and, finding a new boot id, resynchronises
    s = wait_until(lambda: (lambda s: s if s["events"]["resyncs"] >= 1 and s["healthy"] else
                            None)(m.stats()), timeout=15, what="resync after the restart")
    assert s["events"]["reconnects"] >= 1
    # and live events flow again
    write(os.path.join(workspace, "after"), "a")
    poll(lambda: os.path.exists(m.p("after")), VISIBLE_S, "event after the resync")


def test_writes_during_overflow_resyncs_are_kept(agent_factory, workspace, mount_factory):
    """The agent drops an event client that falls 4 KiB behind, so a burst made inside the
    devbox forces overflow and tree reloads while files are being written through the mount.
    The reloads run beside those writes (they are not held up), and nothing the mount wrote,
    nor anything made inside, is missing or stale afterwards."""
    a = agent_factory(env={"DEVBOX_AGENT_EVENT_CLIENT_MAX": "4096"})
    m = mount_factory(agent=a)
    os.mkdir(m.p("mine"))
    stop = threading.Event()
    written = []
    errors = []

    def writer():
        i = 0
        try:
            while not stop.is_set() or i < 50:
                name = "f%04d" % i
                write(m.p("mine", name), "content %d" % i)
                if i % 7 == 3:
                    os.rename(m.p("mine", name), m.p("mine", name + ".moved"))
                    name += ".moved"
                elif i % 7 == 5:
                    os.unlink(m.p("mine", name))
                    name = None
                if name:
                    written.append((name, "content %d" % i))
                i += 1
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    try:
        for burst in range(3):
            d = os.path.join(workspace, "burst%d" % burst)
            os.mkdir(d)
            for i in range(3000):
                open(os.path.join(d, "n%04d-with-a-long-enough-name" % i), "w").close()
            time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    wait_until(lambda: m.stats()["events"]["resyncs"] >= 1, timeout=20, what="a resync")
    names = sorted(n for n, _ in written)
    assert sorted(os.listdir(os.path.join(workspace, "mine"))) == names
    wait_until(lambda: sorted(os.listdir(m.p("mine"))) == names, timeout=15,
               what="the mount to list what was written through it")
    for n, data in written:
        assert read(m.p("mine", n)) == data
    want = _names(workspace)
    wait_until(lambda: _names(m.path) == want, timeout=20, what="the mount to match the "
               "workspace after the bursts")


def test_mount_by_local_provider_name(tmp_path):
    """BOX as a devbox name: the local provider starts the agent, devbox-fs resolves it."""
    from conftest import BUILD
    from _fs_helpers import FS_BIN, Mount, assert_clean_exit  # noqa: F401
    env = dict(os.environ, DEVBOX_HOME=str(tmp_path / "home"),
               DEVBOX_AGENT=os.path.join(BUILD, "agent", "devbox-agent"))
    ctl = os.path.join(BUILD, "ctl", "devboxctl")
    if not os.path.exists(ctl):
        raise AssertionError("devboxctl not built")
    r = subprocess.run([ctl, "create", "fsbox"], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        ws = str(tmp_path / "home" / "fsbox" / "workspace")
        write(os.path.join(ws, "hello"), "from local box")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        p = subprocess.Popen([FS_BIN, "-f", "-o", "stats=" + str(tmp_path / "s.json"), "fsbox",
                              str(mnt)], env=env, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: os.path.ismount(str(mnt)) or p.poll() is not None, timeout=20,
                       what="mount")
            assert p.poll() is None, p.stderr.read()
            assert read(str(mnt / "hello")) == "from local box"
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)])
            assert p.wait(20) == 0
            p.stderr.close()
    finally:
        subprocess.run([ctl, "delete", "fsbox"], env=env, capture_output=True, timeout=60)
