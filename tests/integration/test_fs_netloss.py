"""devbox-fs when the agent goes away: killed and restarted on the same port and workspace
during a write loop (every acknowledged byte is there afterwards), stopped with SIGSTOP (a soft
mount answers EIO within its deadline, cached data stays readable, and everything carries on
after SIGCONT), and open handles that live across a reconnect."""
import errno
import hashlib
import os
import signal
import threading
import time

import pytest

from conftest import Agent, SANITIZER_RE, wait_until
from _fs_helpers import Mount, assert_clean_exit, mount_factory  # noqa: F401 (fixture)

DEADLINE_S = 3  # -o timeout=: the per-operation deadline of a soft mount


def restart_agent(agent_factory, workspace, port, token):
    """A new agent on the same port and workspace (retried while the old socket lingers)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return agent_factory(workspace=workspace, token=token,
                                 addr="127.0.0.1:%d" % port)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def kill_agent(a):
    """SIGKILL (a crash); the agent's own output must still be clean."""
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=10)
    a._reader.join(timeout=5)
    assert not SANITIZER_RE.search(a.output), a.output[-4000:]


def unmount(m):
    """Unmounts a Mount made without the fixture; the daemon must exit 0, clean."""
    try:
        rc = m.unmount()
        assert_clean_exit(m, rc)
    finally:
        m.cleanup()


def payload(i, n):
    seed = hashlib.sha256(b"%d" % i).digest()
    return (seed * (n // len(seed) + 1))[:n]


class WriteLoop(threading.Thread):
    """Writes w/<i>.bin (open, write, close) until stopped; remembers what was acknowledged
    (close() returned 0) and what failed."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.acked = {}
        self.failed = {}
        self.attempts = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        i = 0
        while not self.stop.is_set():
            n = 1 + (i * 7919) % 300000
            data = payload(i, n)
            name = os.path.join(self.root, "%05d.bin" % i)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                with self.lock:
                    self.acked[i] = data
            except OSError as e:
                with self.lock:
                    self.failed[i] = e.errno
            with self.lock:
                self.attempts += 1
            i += 1

    def counts(self):
        with self.lock:
            return len(self.acked), len(self.failed), self.attempts


def test_agent_killed_and_restarted_during_write_loop(agent_factory, workspace, tmp_path):
    a1 = Agent(workspace=workspace)
    port, token = a1.port, a1.token
    m = Mount(a1, opts=["soft", "timeout=%d" % DEADLINE_S])
    loop = None
    try:
        os.mkdir(m.p("w"))
        loop = WriteLoop(m.p("w"))
        loop.start()
        wait_until(lambda: loop.counts()[0] >= 20, timeout=60, what="20 acknowledged files")
        kill_agent(a1)
        # The loop must run into the outage (a write fails) before the agent comes back.
        wait_until(lambda: loop.counts()[1] >= 1, timeout=DEADLINE_S * 20,
                   what="a write failing while the agent is down")
        a2 = restart_agent(agent_factory, workspace, port, token)
        acked_at_restart = loop.counts()[0]
        wait_until(lambda: loop.counts()[0] >= acked_at_restart + 20, timeout=120,
                   what="20 more acknowledged files after the restart")
        loop.stop.set()
        loop.join(timeout=120)
        assert not loop.is_alive()
        assert loop.acked
        for i, data in sorted(loop.acked.items()):
            ws = os.path.join(workspace, "w", "%05d.bin" % i)
            with open(ws, "rb") as f:
                got = f.read()
            assert got == data, "acknowledged file %d differs on the agent (%d vs %d bytes)" \
                % (i, len(got), len(data))
            with open(m.p("w", "%05d.bin" % i), "rb") as f:
                assert f.read() == data
        assert sorted(os.listdir(m.p("w"))) == sorted(os.listdir(os.path.join(workspace, "w")))
        print("\nwrite loop: %d acknowledged, %d failed (%s)" % (
            len(loop.acked), len(loop.failed), sorted(set(loop.failed.values()))))
        # A soft mount reports an unreachable agent as EIO, nothing else.
        assert set(loop.failed.values()) == {errno.EIO}, \
            "writes failed with %s" % {os.strerror(e) for e in loop.failed.values()}
        assert a2.proc.poll() is None
    finally:
        if loop:
            loop.stop.set()
            loop.join(timeout=120)
        if a1.proc.poll() is None:
            kill_agent(a1)
        unmount(m)


def run_with_timeout(fn, timeout):
    """Runs fn in a thread; returns (finished, result or exception, seconds)."""
    box = {}

    def target():
        t0 = time.monotonic()
        try:
            box["r"] = fn()
        except Exception as e:  # noqa: BLE001 - reported to the caller
            box["r"] = e
        box["t"] = time.monotonic() - t0

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), box.get("r"), box.get("t")


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


@pytest.fixture
def soft_mnt(mount_factory):
    return mount_factory(opts=["soft", "timeout=%d" % DEADLINE_S])


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return True


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def test_stopped_agent_gives_eio_within_deadline_then_recovers(soft_mnt, agent, workspace):
    m = soft_mnt
    write_file(m.p("before.txt"), b"before\n")
    with Stopped(agent):
        done, r, secs = run_with_timeout(lambda: write_file(m.p("during.txt"), b"x" * 1000),
                                         DEADLINE_S * 4 + 10)
        assert done, "an operation on a soft mount hung while the agent was stopped"
        assert isinstance(r, OSError) and r.errno == 5, "expected EIO, got %r" % (r,)
        print("\nEIO after %.2fs (deadline %ds)" % (secs, DEADLINE_S))
        done, r, secs = run_with_timeout(lambda: os.listdir(m.p("never-seen-dir")),
                                         DEADLINE_S * 4 + 10)
        assert done, "lookup of an unknown name hung while the agent was stopped"
    # After SIGCONT the mount carries on by itself.
    wait_until(lambda: run_with_timeout(lambda: write_file(m.p("after.txt"), b"after\n"),
                                        DEADLINE_S * 4)[1] is True,
               timeout=60, what="writes to succeed again after SIGCONT")
    assert read_file(os.path.join(workspace, "after.txt")) == b"after\n"
    assert read_file(m.p("before.txt")) == b"before\n"
    # A request that timed out may still have been carried out by the agent once it ran
    # again: the mount must then show the same names as the agent (by its events).
    wait_until(lambda: sorted(os.listdir(m.path)) == sorted(os.listdir(workspace)),
               timeout=5, what="the mount's listing to match the agent's")


def test_cached_data_readable_while_agent_stopped(soft_mnt, agent, workspace):
    m = soft_mnt
    os.makedirs(os.path.join(workspace, "d"))
    big = payload(1, 3 << 20)
    small = b"small and cached\n"
    write_file(os.path.join(workspace, "d", "small.txt"), small)
    write_file(os.path.join(workspace, "d", "big.bin"), big)
    wait_until(lambda: os.path.exists(m.p("d", "big.bin")), timeout=5,
               what="the files through the mount")
    assert read_file(m.p("d", "small.txt")) == small
    assert read_file(m.p("d", "big.bin")) == big
    names = sorted(os.listdir(m.p("d")))
    st = os.stat(m.p("d", "small.txt"))
    with Stopped(agent):
        done, r, secs = run_with_timeout(
            lambda: (read_file(m.p("d", "small.txt")), sorted(os.listdir(m.p("d"))),
                     os.stat(m.p("d", "small.txt")).st_size, read_file(m.p("d", "big.bin"))),
            DEADLINE_S * 4 + 10)
        assert done, "reading cached data hung while the agent was stopped"
        assert not isinstance(r, Exception), "cached data unreadable while stopped: %r" % (r,)
        assert r[0] == small and r[1] == names and r[2] == st.st_size and r[3] == big
    assert read_file(m.p("d", "small.txt")) == small


def test_open_handles_survive_reconnect(agent_factory, workspace, tmp_path):
    a1 = Agent(workspace=workspace)
    port, token = a1.port, a1.token
    big = payload(2, 4 << 20)
    write_file(os.path.join(workspace, "big.bin"), big)
    m = Mount(a1)
    try:
        rfd = os.open(m.p("big.bin"), os.O_RDONLY)
        wfd = os.open(m.p("out.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            assert os.pread(rfd, 65536, 0) == big[:65536]
            assert os.write(wfd, b"part one\n") == 9
            kill_agent(a1)
            restart_agent(agent_factory, workspace, port, token)
            # Ranged reads of a region never read before, through the old handle.
            off = 3 << 20
            wait_until(lambda: run_with_timeout(lambda: os.pread(rfd, 65536, off), 30)[1]
                       == big[off:off + 65536], timeout=60,
                       what="a read through a handle opened before the restart")
            assert os.write(wfd, b"part two\n") == 9
            os.fsync(wfd)
        finally:
            os.close(rfd)
            os.close(wfd)
        assert read_file(os.path.join(workspace, "out.txt")) == b"part one\npart two\n"
    finally:
        if a1.proc.poll() is None:
            kill_agent(a1)
        unmount(m)
