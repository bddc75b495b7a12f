"""POST /fs/v1/lock (PROTOCOL.md §2.2): real kernel locks, seen by processes in the devbox."""
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import wait_until
from _fsapi_helpers import Fs, open_session


@pytest.fixture
def fs(agent):
    f = Fs(agent)
    yield f
    f.close()


def flock_free(path, shared=False):
    """Can another process take the flock now? (flock(1) from util-linux)"""
    args = ["flock", "-n"] + (["-s"] if shared else []) + [path, "true"]
    return subprocess.run(args, timeout=10).returncode == 0


POSIX_PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
kind = fcntl.LOCK_SH if sys.argv[4] == "sh" else fcntl.LOCK_EX
try:
    fcntl.lockf(fd, kind | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
except OSError:
    sys.exit(1)
sys.exit(0)
"""


HOLD_FLOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
time.sleep(60)
"""


def posix_free(path, start, length, kind="ex"):
    """Can another process take a POSIX (fcntl) lock on [start, start+length)?"""
    r = subprocess.run([sys.executable, "-c", POSIX_PROBE, path, str(start), str(length), kind],
                       timeout=10)
    return r.returncode == 0


def test_flock_seen_by_processes(fs, agent, workspace):
    f = os.path.join(workspace, "f")
    open(f, "w").close()
    ws, sess = open_session(agent)
    try:
        assert fs.post("lock", session=sess, path="f", kind="flock", op="ex") == {}
        assert not flock_free(f)
        assert not flock_free(f, shared=True)
        assert fs.post("lock", session=sess, path="f", kind="flock", op="un") == {}
        assert flock_free(f)
        fs.post("lock", session=sess, path="f", kind="flock", op="sh")
        assert flock_free(f, shared=True) and not flock_free(f)
        # re-locking converts (same descriptor): ex again
        fs.post("lock", session=sess, path="f", kind="flock", op="ex")
        assert not flock_free(f, shared=True)
    finally:
        ws.close()
    # the session's WebSocket closed: every lock it held is released
    wait_until(lambda: flock_free(f), what="flock released at session end")


def test_flock_conflict_between_sessions(fs, agent, workspace):
    open(os.path.join(workspace, "f"), "w").close()
    ws1, s1 = open_session(agent)
    ws2, s2 = open_session(agent)
    try:
        fs.post("lock", session=s1, path="f", kind="flock", op="sh")
        fs.post("lock", session=s2, path="f", kind="flock", op="sh")
        assert fs.err("POST", "lock", session=s2, path="f", kind="flock", op="ex") == (
            "EAGAIN", 409)
        fs.post("lock", session=s1, path="f", kind="flock", op="un")
        fs.post("lock", session=s2, path="f", kind="flock", op="ex")
    finally:
        ws1.close()
        ws2.close()


def test_posix_ranges_vs_fcntl(fs, agent, workspace):
    f = os.path.join(workspace, "f")
    open(f, "wb").write(b"x" * 100)
    ws, sess = open_session(agent)
    try:
        fs.post("lock", session=sess, path="f", kind="posix", op="ex", start=0, len=10,
                owner="o1")
        assert not posix_free(f, 0, 10)
        assert not posix_free(f, 9, 1)
        assert posix_free(f, 10, 10)
        # another owner of the same session is another lock owner: it conflicts
        assert fs.err("POST", "lock", session=sess, path="f", kind="posix", op="ex", start=5,
                      len=1, owner="o2") == ("EAGAIN", 409)
        fs.post("lock", session=sess, path="f", kind="posix", op="ex", start=50, len=0,
                owner="o2")
        assert not posix_free(f, 1000, 1)  # len 0 = to EOF (and beyond)
        # a partial unlock leaves the rest locked
        fs.post("lock", session=sess, path="f", kind="posix", op="un", start=0, len=5,
                owner="o1")
        assert posix_free(f, 0, 5) and not posix_free(f, 5, 5)
        fs.post("lock", session=sess, path="f", kind="posix", op="sh", start=20, len=5,
                owner="o1")
        assert posix_free(f, 20, 5, "sh") and not posix_free(f, 20, 5, "ex")
    finally:
        ws.close()
    wait_until(lambda: posix_free(f, 0, 0), what="posix locks released at session end")


def test_process_lock_blocks_client(fs, agent, workspace):
    f = os.path.join(workspace, "f")
    open(f, "w").close()
    ws, sess = open_session(agent)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FLOCK, f])
    try:
        wait_until(lambda: not flock_free(f), what="the holder has the lock")
        assert fs.err("POST", "lock", session=sess, path="f", kind="flock", op="ex") == (
            "EAGAIN", 409)
        t0 = time.monotonic()
        assert fs.err("POST", "lock", session=sess, path="f", kind="flock", op="ex", wait=1,
                      timeout=300) == ("ETIMEDOUT", 409)
        assert time.monotonic() - t0 >= 0.25
        # wait=1 is granted once the holder goes away
        threading.Timer(0.5, holder.kill).start()
        t0 = time.monotonic()
        assert fs.post("lock", session=sess, path="f", kind="flock", op="ex", wait=1,
                       timeout=10000) == {}
        assert time.monotonic() - t0 >= 0.3
        assert not flock_free(f)
    finally:
        holder.kill()
        holder.wait()
        ws.close()


def test_posix_wait_granted_after_release(fs, agent, workspace):
    f = os.path.join(workspace, "f")
    open(f, "wb").write(b"x" * 10)
    ws1, s1 = open_session(agent)
    ws2, s2 = open_session(agent)
    try:
        fs.post("lock", session=s1, path="f", kind="posix", op="ex", start=0, len=4, owner="a")
        res = {}

        def waiter():
            f2 = Fs(agent)
            try:
                res["r"] = f2.post("lock", session=s2, path="f", kind="posix", op="ex", start=2,
                                   len=4, owner="b", wait=1, timeout=10000)
            finally:
                f2.close()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        assert "r" not in res
        fs.post("lock", session=s1, path="f", kind="posix", op="un", start=0, len=4, owner="a")
        t.join(10)
        assert res.get("r") == {}
        assert not posix_free(f, 2, 4)
    finally:
        ws1.close()
        ws2.close()


def test_lock_argument_errors(fs, agent, workspace):
    open(os.path.join(workspace, "f"), "w").close()
    assert fs.err("POST", "lock", session="nosuch", path="f", kind="flock", op="ex") == (
        "EINVAL", 400)
    ws, sess = open_session(agent)
    try:
        assert fs.err("POST", "lock", session=sess, path="f", kind="x", op="ex")[0] == "EINVAL"
        assert fs.err("POST", "lock", session=sess, path="f", kind="flock", op="x")[0] == "EINVAL"
        assert fs.err("POST", "lock", session=sess, path="nope", kind="flock", op="ex") == (
            "ENOENT", 404)
        assert fs.err("POST", "lock", session=sess, path="../f", kind="flock", op="ex") == (
            "EXDEV", 403)
        # unlocking what was never locked is fine
        assert fs.post("lock", session=sess, path="f", kind="flock", op="un") == {}
    finally:
        ws.close()


def test_locks_held_at_shutdown(agent_factory, workspace):
    """An agent stopped while sessions hold locks exits cleanly (no leak, status 0)."""
    agent = agent_factory()
    f = os.path.join(workspace, "f")
    open(f, "w").close()
    fs = Fs(agent)
    ws, sess = open_session(agent)
    fs.post("lock", session=sess, path="f", kind="flock", op="ex")
    fs.post("lock", session=sess, path="f", kind="posix", op="ex", owner="x")
    assert not flock_free(f)
    fs.close()
    assert agent.stop() == 0
    ws.close()
    assert flock_free(f)
