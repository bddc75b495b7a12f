"""The archive routes behind `devboxctl cp` (agent/PROTOCOL.md §2.4), driven over real HTTP:
GET/POST/PUT /fs/v1/archive and GET /fs/v1/hashes.

Covers round trips (modes, ns mtimes, symlinks verbatim, nested dirs), the hash listing, and
the confinement of uploads: `..`, absolute names, writing through symlinks (from the archive or
already there), hard links out of the directory, no partial file after an aborted upload or a
full disk, size limits.
"""
import io
import json
import os
import socket
import subprocess
import tarfile
import tempfile
import urllib.parse

import pytest
import xxhash

from conftest import wait_until


def h(data):
    return xxhash.xxh3_64(data).hexdigest()


def put_tar(agent, path, data, query=None):
    q = {"path": path}
    q.update(query or {})
    st, hd, body = agent.request("PUT", "/fs/v1/archive", body=data, query=q,
                                 headers={"Content-Type": "application/x-tar"})
    return st, json.loads(body) if body else None


def make_tar(members):
    """members: list of (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def ti(name, typ=tarfile.REGTYPE, mode=0o644, linkname="", mtime=1700000000):
    t = tarfile.TarInfo(name)
    t.type = typ
    t.mode = mode
    t.linkname = linkname
    t.mtime = mtime
    return t


def temps(root):
    out = []
    for d, dirs, files in os.walk(root):
        out += [os.path.join(d, f) for f in files + dirs if ".dbx-" in f]
    return out


def build_tree(root):
    os.makedirs(os.path.join(root, "src/sub/deep"))
    files = {
        "src/a.txt": (b"hello\n", 0o600, (1600000000, 123456789)),
        "src/exec.sh": (b"#!/bin/sh\necho hi\n", 0o755, (1600000001, 1)),
        "src/ro": (b"read only", 0o444, (1600000002, 999999999)),
        "src/sub/big.bin": (os.urandom(3 << 20), 0o640, (1650000000, 500)),
        "src/sub/deep/empty": (b"", 0o644, (1500000000, 0)),
    }
    for rel, (data, mode, (s, ns)) in files.items():
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.utime(p, ns=(s * 10**9 + ns, s * 10**9 + ns))
    os.symlink("a.txt", os.path.join(root, "src/rel"))
    os.symlink("/etc/passwd", os.path.join(root, "src/abs"))
    os.symlink("../nowhere", os.path.join(root, "src/sub/dangling"))
    for d, t in (("src/sub/deep", 1400000000), ("src/sub", 1400000001), ("src", 1400000002)):
        os.utime(os.path.join(root, d), ns=(t * 10**9 + 42, t * 10**9 + 42), follow_symlinks=False)
    return files


def snapshot(root):
    """relpath -> (type, perm, mtime_ns, content or target) without following symlinks."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files + ["."] if d == root else dirs + files:
            p = os.path.normpath(os.path.join(d, n))
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                val = ("l", os.readlink(p))
            elif os.path.isdir(p):
                val = ("d", None)
            else:
                with open(p, "rb") as f:
                    val = ("f", h(f.read()))
            out[rel] = (val, st.st_mode & 0o7777 if val[0] != "l" else None, st.st_mtime_ns)
    return out


def test_round_trip_keeps_modes_mtimes_and_symlinks(agent, workspace):
    files = build_tree(workspace)
    st, hd, body = agent.get("/fs/v1/archive", query={"path": "src"})
    assert st == 200, body
    assert hd["content-type"] == "application/x-tar"
    assert "x-dbx-boot" in hd
    names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert names[0] == "src"
    assert set(names) >= {"src/a.txt", "src/sub/deep/empty", "src/rel", "src/abs"}
    t = tarfile.open(fileobj=io.BytesIO(body))
    m = t.getmember("src/a.txt")
    assert m.mode == 0o600 and m.pax_headers["mtime"] == "1600000000.123456789"
    assert t.getmember("src/abs").linkname == "/etc/passwd"

    os.mkdir(os.path.join(workspace, "copy"))
    st, rep = put_tar(agent, "copy", body)
    assert st == 200, rep
    assert rep["files"] == len(files) and rep["symlinks"] == 3 and rep["dirs"] == 3
    assert rep["bytes"] == sum(len(d) for d, _, _ in files.values())
    got = {e["path"]: e["xxh3"] for e in rep["hashes"]}
    assert got == {rel: h(d) for rel, (d, _, _) in files.items()}
    assert snapshot(os.path.join(workspace, "src")) == snapshot(
        os.path.join(workspace, "copy/src"))
    assert temps(workspace) == []


def test_get_single_file_and_root(agent, workspace):
    os.makedirs(os.path.join(workspace, "d"))
    with open(os.path.join(workspace, "d/f"), "wb") as f:
        f.write(b"x" * 1000)
    st, _, body = agent.get("/fs/v1/archive", query={"path": "d/f"})
    assert st == 200
    t = tarfile.open(fileobj=io.BytesIO(body))
    assert t.getnames() == ["f"]
    assert t.extractfile("f").read() == b"x" * 1000
    st, _, body = agent.get("/fs/v1/archive", query={"path": "."})
    assert st == 200
    assert tarfile.open(fileobj=io.BytesIO(body)).getnames() == [".", "./d", "./d/f"]


def test_post_include_lists_members(agent, workspace):
    build_tree(workspace)
    st, _, body = agent.post_json("/fs/v1/archive", {"include": ["src/sub", "src/a.txt"]},
                                  query={"path": "src"})
    assert st == 200, body
    assert tarfile.open(fileobj=io.BytesIO(body)).getnames() == ["src/sub", "src/a.txt"]
    st, _, body = agent.post_json("/fs/v1/archive", {"include": ["other/x"]},
                                  query={"path": "src"})
    assert st == 400 and json.loads(body)["error"] == "EINVAL"
    st, _, body = agent.post_json("/fs/v1/archive", {"include": ["src/../../etc"]},
                                  query={"path": "src"})
    assert st == 400


def test_archive_of_missing_or_outside_path(agent, workspace):
    st, _, body = agent.get("/fs/v1/archive", query={"path": "nope"})
    assert st == 404 and json.loads(body)["error"] == "ENOENT"
    st, _, body = agent.get("/fs/v1/archive", query={"path": "../"})
    assert st == 403 and json.loads(body)["error"] == "EXDEV"
    st, _, body = agent.get("/fs/v1/hashes", query={"path": "/etc"})
    assert st == 403 and json.loads(body)["error"] == "EXDEV"


def test_hashes_lists_every_entry(agent, workspace):
    files = build_tree(workspace)
    st, hd, body = agent.get("/fs/v1/hashes", query={"path": "src"})
    assert st == 200 and hd["content-type"] == "application/x-ndjson"
    lines = [json.loads(l) for l in body.decode().splitlines()]
    assert lines[-1] == {"end": True, "entries": len(lines) - 1}
    ents = {e["path"]: e for e in lines[:-1]}
    assert lines[0]["path"] == "." and lines[0]["type"] == "dir"
    for rel, (data, mode, (s, ns)) in files.items():
        e = ents[rel[len("src/"):]]
        assert e["type"] == "file" and e["xxh3"] == h(data) and e["size"] == len(data)
        assert e["mode"] & 0o7777 == mode and e["mtime"] == [s, ns]
    assert ents["rel"]["type"] == "symlink" and ents["rel"]["target"] == "a.txt"
    assert "xxh3" not in ents["abs"]
    assert len(ents) == len(files) + 3 + 3
    # A single file: its own line as ".".
    st, _, body = agent.get("/fs/v1/hashes", query={"path": "src/a.txt"})
    lines = [json.loads(l) for l in body.decode().splitlines()]
    assert lines[0]["path"] == "." and lines[0]["xxh3"] == h(b"hello\n")


def test_put_rejects_dotdot_and_absolute_names(agent, workspace):
    os.mkdir(os.path.join(workspace, "dst"))
    outside = tempfile.mkdtemp(prefix="dbx-outside-")
    try:
        for name in ("../evil", "a/../../evil", os.path.join(outside, "evil")):
            data = make_tar([(ti("ok"), b"fine"), (ti(name), b"bad")])
            st, rep = put_tar(agent, "dst", data)
            assert st == 403 and rep["error"] == "EXDEV", rep
            assert "evil" in rep["message"]
        assert os.listdir(outside) == []
        assert not os.path.exists(os.path.join(workspace, "evil"))
        assert sorted(os.listdir(os.path.join(workspace, "dst"))) == ["ok"]
    finally:
        os.rmdir(outside)


def test_put_never_writes_through_symlinks(agent, workspace):
    outside = tempfile.mkdtemp(prefix="dbx-outside-")
    try:
        os.mkdir(os.path.join(workspace, "dst"))
        # A symlink from the archive itself, then a member through it.
        for target in (outside, "../..", "."):
            data = make_tar([(ti("l", tarfile.SYMTYPE, linkname=target), None),
                             (ti("l/x"), b"through")])
            st, rep = put_tar(agent, "dst", data)
            assert st == 400 and rep["error"] == "ELOOP", rep
            assert "symbolic link" in rep["message"]
            # The link itself was kept verbatim.
            assert os.readlink(os.path.join(workspace, "dst/l")) == target
        # A symlink already in the destination pointing elsewhere in the workspace.
        os.mkdir(os.path.join(workspace, "other"))
        os.symlink("../other", os.path.join(workspace, "dst/pre"))
        st, rep = put_tar(agent, "dst", make_tar([(ti("pre/y"), b"through")]))
        assert st == 400 and rep["error"] == "ELOOP"
        assert os.listdir(os.path.join(workspace, "other")) == []
        assert os.listdir(outside) == []
        # A hard link to something outside the directory.
        data = make_tar([(ti("hl", tarfile.LNKTYPE, linkname="../other"), None)])
        st, rep = put_tar(agent, "dst", data)
        assert st == 403 and rep["error"] == "EXDEV"
        # A regular file replaces a symlink instead of writing through it.
        with open(os.path.join(workspace, "victim"), "wb") as f:
            f.write(b"keep")
        os.symlink("../victim", os.path.join(workspace, "dst/t"))
        st, rep = put_tar(agent, "dst", make_tar([(ti("t", mode=0o600), b"new")]))
        assert st == 200, rep
        assert not os.path.islink(os.path.join(workspace, "dst/t"))
        assert open(os.path.join(workspace, "dst/t"), "rb").read() == b"new"
        assert open(os.path.join(workspace, "victim"), "rb").read() == b"keep"
        assert temps(workspace) == []
    finally:
        subprocess.run(["rm", "-rf", outside])


def test_put_into_missing_or_outside_dir(agent, workspace):
    st, rep = put_tar(agent, "nope", make_tar([(ti("a"), b"x")]))
    assert st == 404 and rep["error"] == "ENOENT"
    st, rep = put_tar(agent, "..", make_tar([(ti("a"), b"x")]))
    assert st == 403 and rep["error"] == "EXDEV"
    st, rep = put_tar(agent, ".", b"this is not a tar archive at all" * 40)
    assert st >= 400
    assert os.listdir(workspace) == []


def test_put_defers_directory_modes_and_creates_parents(agent, workspace):
    data = make_tar([(ti("ro", tarfile.DIRTYPE, mode=0o555, mtime=1111111111), None),
                     (ti("ro/f", mode=0o644), b"inside"),
                     (ti("implicit/parents/g", mode=0o600), b"g")])
    st, rep = put_tar(agent, ".", data)
    assert st == 200, rep
    s = os.stat(os.path.join(workspace, "ro"))
    assert s.st_mode & 0o7777 == 0o555 and s.st_mtime == 1111111111
    assert open(os.path.join(workspace, "ro/f"), "rb").read() == b"inside"
    assert open(os.path.join(workspace, "implicit/parents/g"), "rb").read() == b"g"
    os.chmod(os.path.join(workspace, "ro"), 0o755)


def test_put_requires_content_length(agent, workspace):
    s = socket.create_connection((agent.host, agent.port))
    try:
        s.sendall(b"PUT /fs/v1/archive?path=. HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + agent.token.encode() +
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 411")
    finally:
        s.close()


def test_put_over_the_file_size_limit(agent_factory, workspace):
    a = agent_factory(extra_args=["--max-file-size=1000"])
    st, rep = put_tar(a, ".", make_tar([(ti("small"), b"s"), (ti("big"), b"b" * 2000)]))
    assert st == 507 and rep["error"] == "EFBIG", rep
    assert "big" in rep["message"]
    assert os.listdir(workspace) == ["small"]


def test_aborted_upload_leaves_no_partial_file(agent, workspace):
    data = make_tar([(ti("first"), b"1"), (ti("big"), os.urandom(8 << 20))])
    s = socket.create_connection((agent.host, agent.port))
    try:
        s.sendall(("PUT /fs/v1/archive?path=. HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
                   % (agent.token, len(data))).encode())
        s.sendall(data[:len(data) // 2])
        # The agent is writing "big" under its temp name ...
        wait_until(lambda: any("big" in p for p in temps(workspace)), timeout=20,
                   what="the temp file of big")
    finally:
        s.close()
    # ... and removes it once the client is gone.
    wait_until(lambda: temps(workspace) == [], timeout=20, what="temp file removal")
    assert sorted(os.listdir(workspace)) == ["first"]
    # The agent still serves.
    st, rep = put_tar(agent, ".", make_tar([(ti("after"), b"ok")]))
    assert st == 200


@pytest.fixture
def tiny_workspace():
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tempfile.mkdtemp(prefix="dbx-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d], check=True)
    yield d
    subprocess.run(["umount", d], check=True)
    os.rmdir(d)


def test_full_disk_leaves_nothing_half_written(tiny_workspace, agent_factory):
    a = agent_factory(workspace=tiny_workspace)
    with open(os.path.join(tiny_workspace, "keep"), "wb") as f:
        f.write(b"old content")
    data = make_tar([(ti("small"), b"fits"), (ti("keep"), os.urandom(3 << 20))])
    st, rep = put_tar(a, ".", data)
    assert st == 507 and rep["error"] == "ENOSPC", rep
    assert "keep" in rep["message"]
    assert temps(tiny_workspace) == []
    assert open(os.path.join(tiny_workspace, "keep"), "rb").read() == b"old content"
    assert open(os.path.join(tiny_workspace, "small"), "rb").read() == b"fits"
