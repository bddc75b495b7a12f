"""devbox-fs write-back shadow of small files (fs/shadow.c): while a file of at most 512 KiB is
written, the daemon keeps its whole content, answers reads and fstat from it and uploads the
changed span in one write at close/fsync.  Every test compares what the mount shows with a
local model and with the workspace the agent serves, and counts the agent's requests (its
--access-log) and the daemon's counters (the stats file)."""
import errno
import mmap
import os
import shutil
import subprocess

import pytest

from conftest import BUILD
from _fs_helpers import mount_factory, poll  # noqa: F401 (fixtures)

SMALL = 512 * 1024
FSX = os.path.join(BUILD, "tests", "fsx", "dbx-fsx")


@pytest.fixture
def logged(agent_factory):
    """An agent printing one line per request ("PUT /fs/v1/write 200 0.1ms")."""
    return agent_factory(extra_args=["--access-log"])


def requests(agent):
    """The agent's request lines so far, as (method, route) pairs."""
    out = []
    for line in agent.output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("GET", "PUT", "POST", "DELETE") and \
                parts[1].startswith("/"):
            out.append((parts[0], parts[1].split("?")[0]))
    return out


class Counter:
    """Agent requests of some kinds since it was made; settles first, since the access log is
    written after each reply."""

    def __init__(self, agent):
        self.agent = agent
        self.base = len(requests(agent))

    def since(self, method, route):
        return sum(1 for r in requests(self.agent)[self.base:] if r == (method, route))

    def writes(self):
        return self.since("PUT", "/fs/v1/write")

    def reads(self):
        return self.since("GET", "/fs/v1/read")


def settle(m):
    """Waits until every request the daemon has made is in the agent's log (which is written
    after each reply): the stats file counts the daemon's HTTP requests."""
    poll(lambda: len(requests(m.agent)) >= m.stats()["requests"], timeout=10,
         what="agent log caught up")


def ws_bytes(m, name):
    with open(m.w(name), "rb") as f:
        return f.read()


def mnt_bytes(m, name):
    with open(m.p(name), "rb") as f:
        return f.read()


def pwrite_model(model, data, off):
    if off > len(model):
        model.extend(b"\0" * (off - len(model)))
    model[off:off + len(data)] = data


# The order GNU as writes a small object in (offsets from a real `gcc -c` trace).
AS_PATTERN = [(272, 37), (64, 56), (120, 40), (288, 112), (176, 96), (312, 90), (0, 64),
              (400, 88), (488, 60)]


def test_scattered_writes_fstat_and_read_back_while_open(logged, mount_factory):
    m = mount_factory(agent=logged)
    c = Counter(logged)
    model = bytearray()
    fd = os.open(m.p("obj.o"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for n, (off, size) in enumerate(AS_PATTERN):
            data = bytes([n + 1]) * size
            assert os.pwrite(fd, data, off) == size
            pwrite_model(model, data, off)
            st = os.fstat(fd)
            assert st.st_size == len(model)
            assert os.pread(fd, len(model) + 100, 0) == bytes(model)
            assert os.pread(fd, 50, 100) == bytes(model[100:150])
        # nothing has reached the agent yet: no write beyond the create
        assert os.path.getsize(m.w("obj.o")) == 0
        # another process sees the same through the mount while it is open
        assert os.stat(m.p("obj.o")).st_size == len(model)
        assert mnt_bytes(m, "obj.o") == bytes(model)
    finally:
        os.close(fd)
    assert ws_bytes(m, "obj.o") == bytes(model)
    settle(m)
    assert c.writes() == 2, requests(logged)[c.base:]  # the create and one upload
    assert c.reads() == 0, requests(logged)[c.base:]
    # after close: the agent's attributes, and the content without a fetch
    st, wst = os.stat(m.p("obj.o")), os.stat(m.w("obj.o"))
    assert (st.st_size, st.st_mtime_ns, st.st_ino) == (wst.st_size, wst.st_mtime_ns, wst.st_ino)
    assert mnt_bytes(m, "obj.o") == bytes(model)
    settle(m)
    assert c.reads() == 0


def test_async_close_hands_the_span_to_the_write_queue(logged, mount_factory):
    """-o async_close: close() does not wait, the bytes still travel in one write, and the
    mount shows them at once."""
    m = mount_factory(agent=logged, opts=["async_close"])
    c = Counter(logged)
    model = bytearray()
    fd = os.open(m.p("obj.o"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for n, (off, size) in enumerate(AS_PATTERN):
            data = bytes([n + 1]) * size
            os.pwrite(fd, data, off)
            pwrite_model(model, data, off)
            assert os.fstat(fd).st_size == len(model)
            assert os.pread(fd, len(model), 0) == bytes(model)
    finally:
        os.close(fd)
    assert os.stat(m.p("obj.o")).st_size == len(model)
    assert mnt_bytes(m, "obj.o") == bytes(model)
    poll(lambda: ws_bytes(m, "obj.o") == bytes(model), timeout=10, what="the upload")
    settle(m)
    assert c.writes() == 2, requests(logged)[c.base:]


def test_fstat_mtime_is_the_local_write_time(logged, mount_factory):
    import time
    m = mount_factory(agent=logged)
    fd = os.open(m.p("t"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        t0 = time.time_ns()
        os.pwrite(fd, b"abc", 10)
        st = os.fstat(fd)
        t1 = time.time_ns()
        assert st.st_size == 13
        assert t0 - 10**6 <= st.st_mtime_ns <= t1 + 10**6
    finally:
        os.close(fd)
    assert ws_bytes(m, "t") == b"\0" * 10 + b"abc"


def test_existing_file_is_fetched_once(logged, mount_factory):
    orig = os.urandom(100000)
    with open(os.path.join(logged.workspace, "data"), "wb") as f:
        f.write(orig)
    m = mount_factory(agent=logged)
    c = Counter(logged)
    model = bytearray(orig)
    fd = os.open(m.p("data"), os.O_RDWR)
    try:
        for off in (50000, 10, 99990, 120000, 70000):
            data = os.urandom(777)
            os.pwrite(fd, data, off)
            pwrite_model(model, data, off)
            assert os.fstat(fd).st_size == len(model)
            assert os.pread(fd, 2000, off - 10) == bytes(model[off - 10:off + 1990])
        assert ws_bytes(m, "data") == orig
    finally:
        os.close(fd)
    assert ws_bytes(m, "data") == bytes(model)
    settle(m)
    assert c.reads() == 1, requests(logged)[c.base:]
    assert c.writes() == 1, requests(logged)[c.base:]


@pytest.mark.parametrize("size", [SMALL - 1, SMALL, SMALL + 1])
def test_sizes_around_the_limit(logged, mount_factory, size):
    m = mount_factory(agent=logged)
    c = Counter(logged)
    data = os.urandom(size)
    model = bytearray(size)
    fd = os.open(m.p("f"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # the tail first, then the rest back to front in 64 KiB pieces
        chunk = 65536
        offs = list(range(0, size, chunk))[::-1]
        for off in offs:
            piece = data[off:off + chunk]
            os.pwrite(fd, piece, off)
            model[off:off + len(piece)] = piece
            assert os.fstat(fd).st_size == size
        assert os.pread(fd, size + 10, 0) == bytes(model)
    finally:
        os.close(fd)
    assert ws_bytes(m, "f") == data
    assert mnt_bytes(m, "f") == data
    settle(m)
    if size <= SMALL:
        assert c.writes() == 2, requests(logged)[c.base:]


def test_growing_past_the_limit_while_open(logged, mount_factory):
    m = mount_factory(agent=logged)
    model = bytearray()
    fd = os.open(m.p("grow"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off, size in ((1000, 5000), (0, 100), (SMALL - 100, 100), (SMALL - 10, 4000),
                          (3000, 50), (SMALL + 100000, 10), (200, 20)):
            data = os.urandom(size)
            os.pwrite(fd, data, off)
            pwrite_model(model, data, off)
            assert os.fstat(fd).st_size == len(model)
            assert os.pread(fd, 300, max(off - 100, 0)) == \
                bytes(model[max(off - 100, 0):max(off - 100, 0) + 300])
    finally:
        os.close(fd)
    assert ws_bytes(m, "grow") == bytes(model)
    assert mnt_bytes(m, "grow") == bytes(model)


def test_two_handles_share_the_content(logged, mount_factory):
    m = mount_factory(agent=logged)
    a = os.open(m.p("two"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    b = os.open(m.p("two"), os.O_RDWR)
    try:
        os.pwrite(a, b"A" * 100, 0)
        assert os.pread(b, 200, 0) == b"A" * 100
        assert os.fstat(b).st_size == 100
        os.pwrite(b, b"B" * 10, 50)
        assert os.pread(a, 200, 0) == b"A" * 50 + b"B" * 10 + b"A" * 40
        os.close(a)
        a = -1
        assert ws_bytes(m, "two") == b"A" * 50 + b"B" * 10 + b"A" * 40
        os.pwrite(b, b"C" * 5, 200)
        assert os.fstat(b).st_size == 205
        assert os.pread(b, 300, 0) == b"A" * 50 + b"B" * 10 + b"A" * 40 + b"\0" * 100 + b"C" * 5
    finally:
        if a >= 0:
            os.close(a)
        os.close(b)
    assert ws_bytes(m, "two") == b"A" * 50 + b"B" * 10 + b"A" * 40 + b"\0" * 100 + b"C" * 5


def test_truncate_while_open(logged, mount_factory):
    m = mount_factory(agent=logged)
    fd = os.open(m.p("tr"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"x" * 1000, 0)
        os.ftruncate(fd, 100)
        assert os.fstat(fd).st_size == 100
        assert ws_bytes(m, "tr") == b"x" * 100
        os.pwrite(fd, b"y" * 10, 200)
        assert os.fstat(fd).st_size == 210
        assert os.pread(fd, 500, 0) == b"x" * 100 + b"\0" * 100 + b"y" * 10
        os.ftruncate(fd, 300)
        os.pwrite(fd, b"z", 5)
        assert os.pread(fd, 500, 0) == b"x" * 5 + b"z" + b"x" * 94 + b"\0" * 100 + b"y" * 10 + \
            b"\0" * 90
        # another opener truncating it to nothing
        os.close(os.open(m.p("tr"), os.O_WRONLY | os.O_TRUNC))
        assert os.fstat(fd).st_size == 0
        os.pwrite(fd, b"end", 0)
    finally:
        os.close(fd)
    assert ws_bytes(m, "tr") == b"end"
    assert mnt_bytes(m, "tr") == b"end"


def test_rename_and_link_send_the_bytes_first(logged, mount_factory):
    m = mount_factory(agent=logged)
    fd = os.open(m.p("tmp"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"saved", 0)
        os.rename(m.p("tmp"), m.p("final"))
        assert ws_bytes(m, "final") == b"saved"
        os.pwrite(fd, b"!", 5)
        os.link(m.p("final"), m.p("other"))
        assert ws_bytes(m, "other") == b"saved!"
        os.pwrite(fd, b"?", 6)
        assert os.stat(m.p("other")).st_size == 7
    finally:
        os.close(fd)
    assert ws_bytes(m, "final") == b"saved!?"
    assert mnt_bytes(m, "other") == b"saved!?"


def test_mmap_writes(logged, mount_factory):
    with open(os.path.join(logged.workspace, "map"), "wb") as f:
        f.write(b"." * 20000)
    m = mount_factory(agent=logged)
    fd = os.open(m.p("map"), os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 20000)
        mm[5000:5005] = b"hello"
        mm[19990:20000] = b"0123456789"
        mm.flush()
        assert os.pread(fd, 5, 5000) == b"hello"
        mm.close()
        os.pwrite(fd, b"tail", 20000)
    finally:
        os.close(fd)
    want = b"." * 5000 + b"hello" + b"." * 14985 + b"0123456789" + b"tail"
    assert ws_bytes(m, "map") == want
    assert mnt_bytes(m, "map") == want


def test_change_on_the_agent_while_open_is_not_hidden(logged, mount_factory):
    """A file changed inside the devbox while it is written here: the local span wins (as with
    plain offset writes) and afterwards the mount shows the agent's bytes, not a stale copy."""
    with open(os.path.join(logged.workspace, "both"), "wb") as f:
        f.write(b"r" * 1000)
    m = mount_factory(agent=logged)
    fd = os.open(m.p("both"), os.O_RDWR)
    try:
        os.pwrite(fd, b"L" * 10, 100)
        with open(m.w("both"), "r+b") as f:
            f.seek(500)
            f.write(b"R" * 10)
        # the event has reached the daemon
        poll(lambda: m.stats()["events"]["lag"] == 0 and
             m.stats()["events"]["received"] >= 1, timeout=5, what="the remote change")
    finally:
        os.close(fd)
    got = ws_bytes(m, "both")
    assert got[100:110] == b"L" * 10
    assert got[500:510] == b"R" * 10
    assert mnt_bytes(m, "both") == got


@pytest.fixture
def small_workspace():
    """A 1 MiB tmpfs as workspace, so the agent runs out of space."""
    import tempfile
    d = tempfile.mkdtemp(prefix="dbx-small-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], check=True)
    yield d
    subprocess.run(["umount", "-l", d], check=True)
    os.rmdir(d)


def test_enospc_of_the_upload_reaches_close_and_fsync(agent_factory, small_workspace,
                                                       mount_factory):
    a = agent_factory(workspace=small_workspace)
    with open(os.path.join(small_workspace, "filler"), "wb") as f:
        f.write(b"f" * (800 * 1024))
    m = mount_factory(agent=a)
    data = os.urandom(300 * 1024)
    fd = os.open(m.p("w1"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), 65536)[::-1]:
            os.pwrite(fd, data[off:off + 65536], off)  # kept in the daemon: no error yet
        assert os.fstat(fd).st_size == len(data)
    finally:
        with pytest.raises(OSError) as ei:
            os.close(fd)
    assert ei.value.errno == errno.ENOSPC
    fd = os.open(m.p("w2"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        with pytest.raises(OSError) as ei:
            os.fsync(fd)
        assert ei.value.errno == errno.ENOSPC
        # the refused bytes are gone: the mount shows the agent's file again
        assert os.fstat(fd).st_size == os.path.getsize(os.path.join(small_workspace, "w2"))
    finally:
        os.close(fd)
    # after freeing space the mount carries on
    os.unlink(os.path.join(small_workspace, "filler"))
    fd = os.open(m.p("w3"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"fits", 10)
        os.pwrite(fd, b"now", 0)
    finally:
        os.close(fd)
    with open(os.path.join(small_workspace, "w3"), "rb") as f:
        assert f.read() == b"now" + b"\0" * 7 + b"fits"


C_SRC = """#include <stdio.h>
static int table[64];
const char *greeting = "hello from the mount";
int fn(int x)
{
	for (int i = 0; i < 64; i++)
		table[i] = i * x;
	return table[x & 63];
}
int main(void)
{
	printf("%s %d\\n", greeting, fn(3));
	return 0;
}
"""


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_gcc_object_costs_two_agent_writes(logged, mount_factory, tmp_path):
    with open(os.path.join(logged.workspace, "x.c"), "w") as f:
        f.write(C_SRC)
    os.mkdir(os.path.join(logged.workspace, "obj"))
    m = mount_factory(agent=logged)
    assert os.listdir(m.p("obj")) == []
    settle(m)
    c = Counter(logged)
    s0 = m.stats()
    subprocess.run(["gcc", "-O0", "-c", "x.c", "-o", "obj/x.o"], cwd=m.path, check=True,
                   timeout=120)
    s1 = m.stats()
    settle(m)
    # as writes the object in ~9 scattered pieces with fstats and read-backs between them
    assert s1["ops"]["write"] - s0["ops"]["write"] >= 4
    assert c.writes() <= 2, requests(logged)[c.base:]
    # the source read, the create, the upload, and the refresh of obj/'s attributes
    assert s1["remote_calls"] - s0["remote_calls"] <= 4, (s0, s1)
    # the object is the one gcc makes on a local disk
    shutil.copy(os.path.join(logged.workspace, "x.c"), tmp_path / "x.c")
    os.mkdir(tmp_path / "obj")
    subprocess.run(["gcc", "-O0", "-c", "x.c", "-o", "obj/x.o"], cwd=tmp_path, check=True,
                   timeout=120)
    want = (tmp_path / "obj" / "x.o").read_bytes()
    assert ws_bytes(m, "obj/x.o") == want
    # and it links and runs from the mount, reading it without a fetch
    r0 = c.reads()
    subprocess.run(["gcc", "-o", str(tmp_path / "prog"), "obj/x.o"], cwd=m.path, check=True,
                   timeout=120)
    out = subprocess.run([str(tmp_path / "prog")], capture_output=True, timeout=30).stdout
    assert out == b"hello from the mount 9\n"
    settle(m)
    assert c.reads() == r0


def test_fsx_across_the_limit(logged, mount_factory):
    """dbx-fsx with files growing and shrinking across 512 KiB (shadow on and off)."""
    m = mount_factory(agent=logged)
    path = m.p("fsx.dat")
    p = subprocess.run([FSX, "-q", "-N", "20000", "-S", "4242", "-l", str(SMALL + 200000),
                        "-o", "100000", "-c", "200", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=400)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert p.returncode == 0, out + err[-6000:]
    assert "20000 ops, seed 4242, 0 mismatches" in out, out
    assert ws_bytes(m, "fsx.dat") == mnt_bytes(m, "fsx.dat")
