"""Data integrity of a devbox-fs mount under a random workload: dbx-fsx (tests/fsx) runs
pread/pwrite/ftruncate/mmap read+write/fsync/reopen on files on the mount, checks every read
against its in-memory model, and the final bytes are compared with the agent's side."""
import os
import subprocess
import threading
import time

import pytest

from conftest import BUILD
from _fs_helpers import fs_mount, mount_factory  # noqa: F401 (fixtures)

FSX = os.path.join(BUILD, "tests", "fsx", "dbx-fsx")


def run_fsx(args, timeout):
    p = subprocess.run([FSX] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def brief(err):
    """The failure report: its head (what differs) and tail (history end, replay line)."""
    return err if len(err) < 8000 else err[:4000] + "\n[...]\n" + err[-4000:]


@pytest.fixture
def mnt(fs_mount):
    return fs_mount


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def test_fsx_100k_ops_on_the_mount(mnt, workspace):
    path = os.path.join(mnt.path, "fsx.dat")
    rc, out, err = run_fsx(["-q", "-N", "100000", "-S", "20261122", "-p", "20000", path],
                           timeout=540)
    assert rc == 0, "dbx-fsx failed:\n" + out + brief(err)
    assert "100000 ops, seed 20261122, 0 mismatches" in out, out
    # The agent's side holds exactly what the mount returned.
    assert same_bytes(path, os.path.join(workspace, "fsx.dat"))


def test_fsx_second_seed_four_files_with_fallocate(mnt, workspace):
    base = os.path.join(mnt.path, "multi")
    rc, out, err = run_fsx(["-q", "-N", "20000", "-S", "977", "-n", "4", "-F", "-c", "500",
                            "-l", "1048576", "-o", "262144", base], timeout=400)
    assert rc == 0, "dbx-fsx failed:\n" + out + brief(err)
    assert "20000 ops, seed 977, 0 mismatches" in out, out
    for i in range(4):
        name = "multi.%d" % i
        assert same_bytes(os.path.join(mnt.path, name), os.path.join(workspace, name)), name


# --- the tester itself (plain directory: it must be able to fail, and be reproducible) ---

def test_fsx_detects_a_change_behind_its_back(tmp_path):
    """A file modified by someone else while dbx-fsx runs must make it fail with the seed, the
    op history and a replay command (proves the checks can fail)."""
    path = str(tmp_path / "victim")
    p = subprocess.Popen([FSX, "-q", "-N", "100000000", "-S", "5", "-c", "50", path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()

    def scribble():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, b"\xee" * 64, 4096)
                finally:
                    os.close(fd)
            except OSError:
                pass
            stop.wait(0.002)

    t = threading.Thread(target=scribble, daemon=True)
    t.start()
    try:
        out, err = p.communicate(timeout=120)
    finally:
        stop.set()
        t.join()
        if p.poll() is None:
            p.kill()
            p.wait()
    err = err.decode(errors="replace")
    assert p.returncode == 1, err[-4000:]
    assert "FAILED at op #" in err and "(seed 5)" in err, err[-4000:]
    assert "ops (oldest first):" in err, err[-4000:]
    assert "replay: " in err and "-S 5" in err, err[-4000:]
    assert os.path.exists(path + ".fsxgood")


def test_fsx_same_seed_same_ops(tmp_path):
    a = run_fsx(["-v", "-N", "300", "-S", "31337", "-F", str(tmp_path / "a")], timeout=60)
    b = run_fsx(["-v", "-N", "300", "-S", "31337", "-F", str(tmp_path / "b")], timeout=60)
    c = run_fsx(["-v", "-N", "300", "-S", "31338", "-F", str(tmp_path / "c")], timeout=60)
    assert a[0] == b[0] == c[0] == 0, (a, b, c)
    assert a[1].count("\n") > 300
    assert a[1] == b[1]
    assert a[1] != c[1]
    with open(tmp_path / "a", "rb") as fa, open(tmp_path / "b", "rb") as fb:
        assert fa.read() == fb.read()


def test_fsx_bad_command_line():
    rc, out, err = run_fsx(["-N", "zero", "x"], timeout=10)
    assert rc == 2 and "--ops" in err
    rc, out, err = run_fsx([], timeout=10)
    assert rc == 2
    rc, out, err = run_fsx(["--help"], timeout=10)
    assert rc == 0 and "Usage: dbx-fsx" in out
