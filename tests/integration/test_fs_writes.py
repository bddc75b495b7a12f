"""devbox-fs writes: pipelined background uploads (the default) and -o async_close.

What a user sees: big sequential writes and overlapping rewrites land byte for byte; ENOSPC
reaches close() and fsync(); with async_close, close() returns while the agent is stopped and
the data lands once it runs again, a failed upload is logged and reported by the next fsync or
close of the file, SIGTERM stores what is queued before the daemon exits (0), data that cannot
be stored makes it exit 1 naming the file, and an agent restart loses nothing fsync confirmed."""
import errno
import hashlib
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import Agent, BUILD, SANITIZER_RE, wait_until
from _fs_helpers import Mount, _mounted, assert_clean_exit, mount_factory  # noqa: F401

MiB = 1 << 20
FSX = os.path.join(BUILD, "tests", "fsx", "dbx-fsx")


def rnd_bytes(seed, n):
    return random.Random(seed).randbytes(n)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def write_all(fd, data, off=None):
    view = memoryview(data)
    pos = off
    while view:
        n = os.write(fd, view) if pos is None else os.pwrite(fd, view, pos)
        view = view[n:]
        if pos is not None:
            pos += n


def run_with_timeout(fn, timeout):
    """Runs fn in a thread: (finished, result or exception)."""
    box = {}

    def target():
        try:
            box["r"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the caller
            box["r"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("r")


class Stopped:
    """SIGSTOP the agent for the with-block; SIGCONT always."""

    def __init__(self, agent):
        self.agent = agent

    def __enter__(self):
        self.agent.proc.send_signal(signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        self.agent.proc.send_signal(signal.SIGCONT)
        return False


def finish(m, expect_rc=0):
    """Unmounts a Mount made without the fixture and checks its exit."""
    try:
        rc = m.unmount(timeout=120)
        assert not SANITIZER_RE.search(m.output), "sanitizer report:\n" + m.output[-8000:]
        assert rc == expect_rc, "devbox-fs exit status %r\n%s" % (rc, m.output[-4000:])
    finally:
        m.cleanup()


@pytest.fixture
def big_agent(agent_factory):
    """An agent that takes files bigger than its default 100 MB limit."""
    return agent_factory(extra_args=["--max-file-size=1073741824"])


@pytest.fixture
def small_workspace():
    """A 1 MiB tmpfs as workspace, so the agent runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tempfile.mkdtemp(prefix="dbx-small-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], check=True)
    yield d
    subprocess.run(["umount", "-l", d], check=True)
    os.rmdir(d)


# ---- default mode: pipelined uploads ------------------------------------------------------

@pytest.mark.parametrize("opts", [[], ["async_close"]], ids=["default", "async_close"])
def test_big_sequential_write_lands_byte_for_byte(big_agent, mount_factory, opts):
    m = mount_factory(agent=big_agent, opts=opts)
    h = hashlib.sha256()
    size = 0
    fd = os.open(m.p("big.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(96):  # 96 MiB in 1 MiB writes, plus an odd tail
            block = rnd_bytes(i, MiB)
            write_all(fd, block)
            h.update(block)
            size += len(block)
        tail = rnd_bytes(1000, 12345)
        write_all(fd, tail)
        h.update(tail)
        size += len(tail)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.path.getsize(m.w("big.bin")) == size
    assert file_sha(m.w("big.bin")) == h.hexdigest()
    assert os.stat(m.p("big.bin")).st_size == size
    assert file_sha(m.p("big.bin")) == h.hexdigest()
    st = m.stats()
    assert st["bytes"]["uploaded"] >= size
    assert st["writes"]["jobs"] >= size // (4 * MiB)  # chunks, not one request per write
    assert st["writes"]["queued"] == 0 and st["writes"]["failed"] == 0


@pytest.mark.parametrize("opts", [[], ["async_close"]], ids=["default", "async_close"])
def test_overlapping_rewrites_before_close(agent, mount_factory, opts):
    """Write A, rewrite parts with B and C (across chunk boundaries) before close: later bytes
    win even though chunks go up in parallel."""
    m = mount_factory(opts=opts)
    model = bytearray(rnd_bytes(1, 10 * MiB + 777))
    fd = os.open(m.p("ow.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(model), MiB):
            write_all(fd, model[off:off + MiB], off)
        b = rnd_bytes(2, 5 * MiB)  # over the first chunks, still in flight
        write_all(fd, b, 3 * MiB + 5)
        model[3 * MiB + 5:3 * MiB + 5 + len(b)] = b
        c = rnd_bytes(3, 3 * MiB)
        write_all(fd, c, 2 * MiB)
        model[2 * MiB:2 * MiB + len(c)] = c
        d = b"D" * 100
        write_all(fd, d, len(model) - 50)  # extends the file
        model[len(model) - 50:] = d
    finally:
        os.close(fd)
    if "async_close" in opts:
        assert read_file(m.p("ow.bin")) == model  # the mount waits for its own uploads
        wait_until(lambda: read_file(m.w("ow.bin")) == model, timeout=30,
                   what="the rewritten file on the agent")
    else:
        assert read_file(m.w("ow.bin")) == model
        assert read_file(m.p("ow.bin")) == model


@pytest.mark.parametrize("opts", [[], ["async_close"]], ids=["default", "async_close"])
def test_random_order_pwrites_match_the_model(agent, mount_factory, opts):
    m = mount_factory(opts=opts)
    rng = random.Random(20261122)
    size = 8 * MiB
    model = bytearray(size)
    fd = os.open(m.p("rnd.bin"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for k in range(400):
            n = rng.choice([1, 17, 4096, 65536, 300000, 1500000])
            off = rng.randrange(0, size - n)
            data = rng.randbytes(n)
            write_all(fd, data, off)
            model[off:off + n] = data
            if k % 97 == 0:
                os.fsync(fd)
                assert read_file(m.w("rnd.bin")) == model
            if k % 61 == 0:  # a read in between sees every write made so far
                assert os.pread(fd, n, off) == data
    finally:
        os.close(fd)
    wait_until(lambda: read_file(m.w("rnd.bin")) == model, timeout=30,
               what="the agent's copy to match the model")
    assert read_file(m.p("rnd.bin")) == model


def test_parallel_writers_to_many_files(agent, mount_factory):
    m = mount_factory()
    files = {"f%02d.bin" % i: rnd_bytes(100 + i, (i + 1) * 700001) for i in range(12)}
    errors = []

    def writer(name, data):
        try:
            with open(m.p(name), "wb") as f:
                for off in range(0, len(data), 128 * 1024):
                    f.write(data[off:off + 128 * 1024])
        except OSError as e:
            errors.append(e)

    ts = [threading.Thread(target=writer, args=kv) for kv in files.items()]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors
    for name, data in files.items():
        assert sha(read_file(m.w(name))) == sha(data), name


# ---- errors ---------------------------------------------------------------------------------

def test_enospc_reaches_write_close_and_fsync(agent_factory, small_workspace, mount_factory):
    a = agent_factory(workspace=small_workspace)
    m = mount_factory(agent=a)
    big = rnd_bytes(7, 2 * MiB)
    f = open(m.p("too-big"), "wb")
    f.write(big)  # buffered in the daemon
    with pytest.raises(OSError) as ei:
        f.close()
    assert ei.value.errno == errno.ENOSPC
    fd = os.open(m.p("too-big2"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, big)
        with pytest.raises(OSError) as ei:
            os.fsync(fd)
        assert ei.value.errno == errno.ENOSPC
        os.fsync(fd)  # reported once: nothing is pending any more
    finally:
        os.close(fd)
    # A stat waits for the uploads but leaves the error to close().
    fd = os.open(m.p("too-big3"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, big)
        os.fstat(fd)  # succeeds (the size is the agent's: what was refused is not there)
    finally:
        with pytest.raises(OSError) as ei:
            os.close(fd)
        assert ei.value.errno == errno.ENOSPC
    # A long stream: some write or the close fails with ENOSPC (the uploads run behind it).
    fd = os.open(m.p("stream"), os.O_CREAT | os.O_WRONLY, 0o644)
    err = None
    try:
        for i in range(32):
            os.write(fd, big[:MiB])
    except OSError as e:
        err = e
    finally:
        try:
            os.close(fd)
        except OSError as e:
            err = err or e
    assert err is not None and err.errno == errno.ENOSPC
    for name in ("too-big", "too-big2", "too-big3", "stream"):
        if os.path.exists(m.p(name)):
            os.unlink(m.p(name))
    with open(m.p("ok"), "w") as f:
        f.write("fits")
    assert read_file(m.w("ok")) == b"fits"
    assert m.stats()["writes"]["failed"] >= 3


# ---- async_close --------------------------------------------------------------------------

def test_async_close_returns_while_agent_stopped(agent, mount_factory):
    m = mount_factory(opts=["async_close", "timeout=30"])
    with open(m.p("f.txt"), "wb") as f:
        f.write(b"old\n")
    wait_until(lambda: read_file(m.w("f.txt")) == b"old\n", timeout=10, what="the first version")
    data = rnd_bytes(5, 3 * MiB + 11)
    fd = os.open(m.p("f.txt"), os.O_WRONLY)  # no round trip: attributes from the mirror
    with Stopped(agent):
        write_all(fd, data)
        # A waiting close would block until the agent runs again (or EIO after 30 s).
        done, r = run_with_timeout(lambda: os.close(fd), 10)
        assert done, "close() waited for the stopped agent"
        assert not isinstance(r, Exception), r
        assert read_file(m.w("f.txt")) == b"old\n"  # nothing can have landed yet
    # After SIGCONT the queued data lands by itself.
    wait_until(lambda: read_file(m.w("f.txt")) == data, timeout=60,
               what="the queued data on the agent")
    st = os.stat(m.p("f.txt"))
    assert st.st_size == len(data)
    assert read_file(m.p("f.txt")) == data



def test_queued_data_lands_after_the_kernel_forgets_the_file(agent, mount_factory):
    """With -o async_close the kernel may forget a closed file's node (here: drop_caches) while
    its data still waits for the agent: the data still lands, in that file."""
    m = mount_factory(opts=["async_close", "timeout=1"])
    os.mkdir(m.p("d"))
    with open(m.p("d", "f.bin"), "wb") as f:
        f.write(b"old\n")
    wait_until(lambda: read_file(m.w("d", "f.bin")) == b"old\n", timeout=10, what="first version")
    data = rnd_bytes(6, 2 * MiB + 5)
    forgets = m.stats()["ops"]["forget"]
    with Stopped(agent):
        fd = os.open(m.p("d", "f.bin"), os.O_WRONLY)
        write_all(fd, data)
        done, r = run_with_timeout(lambda: os.close(fd), 10)
        assert done and not isinstance(r, Exception), r
        # Nothing holds the node now: dropping the dentry and inode caches forgets it.
        def forgotten():
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("2")
            return m.stats()["ops"]["forget"] > forgets
        wait_until(forgotten, timeout=10, what="the kernel to forget the file")
        time.sleep(2.5)  # upload attempts time out (1 s) and are queued again meanwhile
    wait_until(lambda: read_file(m.w("d", "f.bin")) == data, timeout=60,
               what="the queued data on the agent")
    assert read_file(m.p("d", "f.bin")) == data
    assert m.stats()["writes"]["lost_bytes"] == 0

def test_async_close_setattr_queued_behind_the_data(agent, mount_factory):
    """tar x / cp -a: chmod and utimens right after close wait for nothing, and land after the
    data (so the mtime they set is the file's final one)."""
    m = mount_factory(opts=["async_close", "timeout=30"])
    with open(m.p("t.bin"), "wb") as f:
        f.write(b"old")
    wait_until(lambda: read_file(m.w("t.bin")) == b"old", timeout=10, what="t.bin")
    data = rnd_bytes(11, MiB + 3)
    mtime_ns = 1234567890123456789
    fd = os.open(m.p("t.bin"), os.O_WRONLY)
    with Stopped(agent):
        write_all(fd, data)

        def close_chmod_utime():
            os.close(fd)
            os.chmod(m.p("t.bin"), 0o600)
            os.utime(m.p("t.bin"), ns=(mtime_ns, mtime_ns))
        done, r = run_with_timeout(close_chmod_utime, 10)
        assert done, "chmod/utime waited for the stopped agent"
        assert not isinstance(r, Exception), r
    wait_until(lambda: os.stat(m.w("t.bin")).st_mtime_ns == mtime_ns, timeout=60,
               what="the queued utimens on the agent")
    st = os.stat(m.w("t.bin"))
    assert st.st_mode & 0o777 == 0o600 and st.st_size == len(data)
    assert read_file(m.w("t.bin")) == data
    st = os.stat(m.p("t.bin"))
    assert (st.st_mode & 0o777, st.st_mtime_ns, st.st_size) == (0o600, mtime_ns, len(data))


def test_async_close_tar_pattern_on_an_open_file_waits_for_nothing(agent, mount_factory):
    """GNU tar x: write, futimens, fchown (to the owner it has), fchmod, then close, all on the
    open descriptor; with -o async_close none of them waits for the agent, and the file ends
    up exactly as asked."""
    m = mount_factory(opts=["async_close", "timeout=30"])
    with open(m.p("x.c"), "wb") as f:
        f.write(b"old")
    wait_until(lambda: read_file(m.w("x.c")) == b"old", timeout=10, what="x.c")
    me = os.stat(m.p("x.c"))
    data = rnd_bytes(12, 5000)
    mtime_ns = 1600000000000000007
    fd = os.open(m.p("x.c"), os.O_WRONLY | os.O_TRUNC)
    with Stopped(agent):
        def tar_steps():
            write_all(fd, data)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fchown(fd, me.st_uid, me.st_gid)
            os.fchmod(fd, 0o640)
            st = os.fstat(fd)
            os.close(fd)
            return st
        done, r = run_with_timeout(tar_steps, 10)
        assert done, "tar's steps waited for the stopped agent"
        assert not isinstance(r, Exception), r
        assert (r.st_size, r.st_mtime_ns, r.st_mode & 0o777) == (len(data), mtime_ns, 0o640)
    wait_until(lambda: os.stat(m.w("x.c")).st_mode & 0o777 == 0o640, timeout=60,
               what="the queued chmod on the agent")
    st = os.stat(m.w("x.c"))
    assert (st.st_size, st.st_mtime_ns) == (len(data), mtime_ns)
    assert read_file(m.w("x.c")) == data


def test_async_close_queued_data_visible_to_the_mount(agent, mount_factory):
    m = mount_factory(opts=["async_close"])
    rows = []
    for i in range(40):
        data = rnd_bytes(200 + i, 1000 + i * 5000)
        with open(m.p("q%02d" % i), "wb") as f:
            f.write(data)
        rows.append(data)
        # at once: size and content through the mount, whatever the agent holds yet
        assert os.stat(m.p("q%02d" % i)).st_size == len(data)
        assert read_file(m.p("q%02d" % i)) == data
    # appending after an async close keeps the order
    with open(m.p("q00"), "ab") as f:
        f.write(b"tail")
    rows[0] += b"tail"
    os.rename(m.p("q01"), m.p("q01.renamed"))
    os.unlink(m.p("q02"))
    for i, data in enumerate(rows):
        name = "q%02d" % i if i != 1 else "q01.renamed"
        if i == 2:
            continue
        wait_until(lambda: os.path.exists(m.w(name)) and read_file(m.w(name)) == data,
                   timeout=30, what=name + " on the agent")
    assert not os.path.exists(m.w("q02"))
    st = m.stats()
    assert st["writes"]["failed"] == 0


def test_async_queue_bound_makes_writers_wait(agent, mount_factory):
    m = mount_factory(opts=["async_close", "async_max=1", "timeout=30"])
    for name in ("a.bin", "b.bin"):
        with open(m.p(name), "wb") as f:
            f.write(b"")
    wait_until(lambda: os.path.exists(m.w("b.bin")), timeout=10, what="the empty files")
    a_data, b_data = rnd_bytes(21, 2 * MiB), rnd_bytes(22, MiB)
    with Stopped(agent):
        fd = os.open(m.p("a.bin"), os.O_WRONLY)
        write_all(fd, a_data)
        done, r = run_with_timeout(lambda: os.close(fd), 10)
        assert done and r is None  # the queue takes one run whatever its size
        box = {}

        def write_b():
            fd = os.open(m.p("b.bin"), os.O_WRONLY)
            write_all(fd, b_data)
            os.close(fd)  # the queue is full: waits for room
            box["done"] = True
        t = threading.Thread(target=write_b, daemon=True)
        t.start()
        t.join(1.5)
        assert t.is_alive() and "done" not in box, "a writer went past a full queue"
    t.join(60)
    assert box.get("done")
    wait_until(lambda: read_file(m.w("a.bin")) == a_data and read_file(m.w("b.bin")) == b_data,
               timeout=30, what="both files on the agent")
    assert m.stats()["writes"]["queued_max"] < 4 * MiB


def test_async_failure_reported_by_next_fsync_and_close(agent_factory, small_workspace):
    a = agent_factory(workspace=small_workspace)
    m = Mount(a, opts=["async_close"])
    try:
        big = rnd_bytes(9, 2 * MiB)
        with open(m.p("a.bin"), "wb") as f:
            f.write(big)  # close returns 0: the upload has not run yet
        with open(m.p("b.bin"), "wb") as f:
            f.write(big)
        # fsync waits for what is queued for the file and reports its failure
        fd = os.open(m.p("a.bin"), os.O_WRONLY)
        try:
            with pytest.raises(OSError) as ei:
                os.fsync(fd)
            assert ei.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        # close reports a failure that happened after the file was closed
        wait_until(lambda: m.stats()["writes"]["failed"] >= 2, timeout=30,
                   what="the second upload to fail")
        fd = os.open(m.p("b.bin"), os.O_RDONLY)
        os.close(fd)  # a read-only open has no flush to report it
        fd = os.open(m.p("b.bin"), os.O_WRONLY)
        with pytest.raises(OSError) as ei:
            os.close(fd)
        assert ei.value.errno == errno.ENOSPC
        # reported once
        fd = os.open(m.p("b.bin"), os.O_WRONLY)
        os.close(fd)
        out = m.output
        assert "a.bin" in out and "b.bin" in out and "No space left" in out, out[-3000:]
        st = m.stats()
        assert st["writes"]["lost_bytes"] >= 2 * len(big)
        for name in ("a.bin", "b.bin"):
            os.unlink(m.p(name))
    finally:
        # data accepted by close() was lost: the daemon says so with its exit status
        finish(m, expect_rc=1)
    assert "closed files were not stored" in m.output


def test_sigterm_drains_the_queue(agent, workspace):
    m = Mount(agent, opts=["async_close", "timeout=30"])
    files = {"d%02d.bin" % i: rnd_bytes(300 + i, 50000 + i * 70001) for i in range(20)}
    try:
        with open(m.p("x"), "wb") as f:
            f.write(b"x")
        for name in files:
            with open(m.p(name), "wb") as f:
                f.write(b"")
        wait_until(lambda: all(os.path.exists(m.w(n)) for n in files), timeout=10,
                   what="the empty files on the agent")
        with Stopped(agent):
            for name, data in files.items():
                with open(m.p(name), "r+b") as f:
                    f.write(data)
            m.proc.send_signal(signal.SIGTERM)
            # it must wait for the agent rather than exit and lose the queue...
            with pytest.raises(subprocess.TimeoutExpired):
                m.proc.wait(timeout=1.5)
            # ...but unmounted first: nobody serves the mount while the queue drains, and a
            # process touching it must not hang until then.
            wait_until(lambda: not _mounted(m.path), timeout=5, what="the unmount")
            os.listdir(m.path)  # the directory underneath, at once
            assert m.proc.poll() is None
        rc = m.proc.wait(timeout=60)
        m._reader.join(5)
        m.unmounted = True
        assert not SANITIZER_RE.search(m.output), m.output[-8000:]
        assert rc == 0, m.output[-4000:]
        for name, data in files.items():
            assert read_file(os.path.join(workspace, name)) == data, name
    finally:
        m.cleanup()


def test_lost_data_exits_1_naming_the_file(workspace):
    agent = Agent(workspace=workspace)  # killed below: not the fixture's (it wants exit 0)
    m = Mount(agent, opts=["async_close", "soft", "timeout=1"])
    try:
        with open(m.p("lost.bin"), "wb") as f:
            f.write(b"v1")
        wait_until(lambda: os.path.exists(m.w("lost.bin")) and read_file(m.w("lost.bin")) == b"v1",
                   timeout=10, what="lost.bin")
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        fd = os.open(m.p("lost.bin"), os.O_WRONLY)
        write_all(fd, b"y" * 100000)
        os.close(fd)  # queued: no error yet
        m.proc.send_signal(signal.SIGTERM)
        rc = m.proc.wait(timeout=60)  # retries for 10 x timeout, then gives up
        m._reader.join(5)
        m.unmounted = True
        assert not SANITIZER_RE.search(m.output), m.output[-8000:]
        assert rc == 1, m.output[-4000:]
        lines = [ln for ln in m.output.splitlines() if "lost.bin" in ln]
        assert lines and any("100000" in ln for ln in lines), m.output[-4000:]
    finally:
        m.cleanup()
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def restart_agent(agent_factory, workspace, port, token):
    deadline = time.monotonic() + 20
    while True:
        try:
            return agent_factory(workspace=workspace, token=token, addr="127.0.0.1:%d" % port)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_agent_restart_during_async_writes_loses_nothing_fsynced(agent_factory, workspace):
    a1 = Agent(workspace=workspace)
    port, token = a1.port, a1.token
    m = Mount(a1, opts=["async_close", "soft", "timeout=3"])
    acked, failed, lock, stop = {}, [], threading.Lock(), threading.Event()
    os.mkdir(m.p("w"))

    def loop():
        i = 0
        while not stop.is_set():
            data = rnd_bytes(i, 1 + (i * 7919) % 400000)
            name = m.p("w", "%05d.bin" % i)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with lock:
                    acked[i] = data
            except OSError as e:
                failed.append(e.errno)
            i += 1

    t = threading.Thread(target=loop, daemon=True)
    try:
        t.start()
        wait_until(lambda: len(acked) >= 20, timeout=60, what="20 fsynced files")
        a1.proc.send_signal(signal.SIGKILL)
        a1.proc.wait(10)
        a1._reader.join(5)
        wait_until(lambda: failed, timeout=60, what="the writer to run into the outage")
        n = len(acked)
        restart_agent(agent_factory, workspace, port, token)
        wait_until(lambda: len(acked) >= n + 20, timeout=120, what="20 more fsynced files")
        stop.set()
        t.join(120)
        with lock:
            items = sorted(acked.items())
        for i, data in items:
            assert read_file(os.path.join(workspace, "w", "%05d.bin" % i)) == data, i
    finally:
        stop.set()
        t.join(120)
        if a1.proc.poll() is None:
            a1.proc.kill()
            a1.proc.wait()
        finish(m)


def test_fsx_with_async_close(agent, mount_factory, workspace):
    m = mount_factory(opts=["async_close"])
    path = m.p("fsx.dat")
    p = subprocess.run([FSX, "-q", "-N", "20000", "-S", "4242", "-p", "5000", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=400)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert p.returncode == 0, "dbx-fsx failed:\n" + out + err[-6000:]
    assert "20000 ops, seed 4242, 0 mismatches" in out, out
    want = read_file(path)
    wait_until(lambda: read_file(os.path.join(workspace, "fsx.dat")) == want, timeout=30,
               what="the agent's copy to match")


def test_bad_async_max_is_refused(agent, tmp_path):
    from _fs_helpers import FS_BIN
    r = subprocess.run([FS_BIN, "-f", "-o", "async_close,async_max=0", agent.base,
                        str(tmp_path)], capture_output=True, timeout=60,
                       env=dict(os.environ, DEVBOX_TOKEN=agent.token))
    assert r.returncode != 0 and b"async_max" in r.stderr
