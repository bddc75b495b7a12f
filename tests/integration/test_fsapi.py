"""/fs/v1 routes (agent/PROTOCOL.md §1-2) against the real file system of the workspace."""
import errno
import json
import os
import re
import stat
import tempfile

import pytest

from _fsapi_helpers import BOOT_RE, Fs, FsError, check_attr


@pytest.fixture
def fs(agent):
    f = Fs(agent)
    yield f
    f.close()


def P(ws, *parts):
    return os.path.join(ws, *parts)


# ---- common rules ---------------------------------------------------------------------------

def test_stamp_headers_on_success_and_error(fs, workspace):
    fs.get("stat", path=".")
    h = fs.last_headers
    assert re.match(BOOT_RE, h["x-dbx-boot"]) and int(h["x-dbx-seq"]) >= 0
    boot = h["x-dbx-boot"]
    e, st = fs.err("GET", "stat", path="nope")
    assert (e, st) == ("ENOENT", 404)
    assert fs.last_headers["x-dbx-boot"] == boot and "x-dbx-seq" in fs.last_headers
    fs.write("f", b"x")
    assert fs.last_headers["x-dbx-boot"] == boot
    fs.read("f")
    assert fs.last_headers["x-dbx-boot"] == boot


def test_auth_required(agent):
    st, _, _ = agent.request("GET", "/fs/v1/stat", query={"path": "."}, auth=False)
    assert st == 401


# ---- stat / list -----------------------------------------------------------------------------

def test_stat_matches_lstat(fs, workspace):
    with open(P(workspace, "f"), "wb") as f:
        f.write(b"hello")
    os.mkdir(P(workspace, "d"))
    os.symlink("f", P(workspace, "ln"))
    os.mkfifo(P(workspace, "fifo"))
    for name in ("f", "d", "ln", "fifo"):
        check_attr(fs.get("stat", path=name), P(workspace, name))
    check_attr(fs.get("stat", path="."), workspace)
    check_attr(fs.get("stat", path=""), workspace)
    # absolute paths under the workspace are accepted
    check_attr(fs.get("stat", path=P(workspace, "f")), P(workspace, "f"))
    # a hard link shows nlink 2
    os.link(P(workspace, "f"), P(workspace, "f2"))
    a = fs.get("stat", path="f")
    assert a["nlink"] == 2
    check_attr(a, P(workspace, "f"))


def test_stat_escapes_are_exdev(fs, workspace):
    outside = tempfile.mkdtemp(prefix="dbx-out-")
    try:
        open(os.path.join(outside, "secret"), "w").close()
        os.symlink(outside, P(workspace, "out"))
        os.symlink("/etc/passwd", P(workspace, "abs"))
        assert fs.err("GET", "stat", path="../x") == ("EXDEV", 403)
        assert fs.err("GET", "stat", path="a/../../x") == ("EXDEV", 403)
        assert fs.err("GET", "stat", path="/etc/passwd") == ("EXDEV", 403)
        assert fs.err("GET", "stat", path="out/secret") == ("EXDEV", 403)
        # the symlink itself is fine (lstat), and readlink shows its target verbatim
        a = fs.get("stat", path="out")
        assert a["type"] == "symlink" and a["target"] == outside
        assert fs.get("readlink", path="out") == {"target": outside}
        assert fs.get("readlink", path="abs") == {"target": "/etc/passwd"}
        # data through it is refused
        assert fs.err("GET", "read", path="abs") == ("EXDEV", 403)
        assert fs.err("GET", "read", path="out/secret") == ("EXDEV", 403)
        assert fs.err("PUT", "write", body=b"x", path="out/new") == ("EXDEV", 403)
        assert not os.path.exists(os.path.join(outside, "new"))
    finally:
        import shutil
        shutil.rmtree(outside)


def test_errno_paths(fs, workspace):
    open(P(workspace, "f"), "w").close()
    os.mkdir(P(workspace, "d"))
    open(P(workspace, "d", "x"), "w").close()
    os.symlink("loop", P(workspace, "loop"))
    assert fs.err("GET", "stat", path="f/x") == ("ENOTDIR", 400)
    assert fs.err("GET", "stat", path="nope/x") == ("ENOENT", 404)
    assert fs.err("POST", "mkdir", path="d") == ("EEXIST", 409)
    assert fs.err("POST", "rmdir", path="d") == ("ENOTEMPTY", 409)
    assert fs.err("POST", "rmdir", path="f") == ("ENOTDIR", 400)
    assert fs.err("POST", "unlink", path="d") == ("EISDIR", 400)
    assert fs.err("GET", "read", path="d") == ("EISDIR", 400)
    assert fs.err("GET", "read", path="loop") == ("ELOOP", 400)
    assert fs.err("GET", "stat", path="loop/x") == ("ELOOP", 400)
    assert fs.err("GET", "readlink", path="f") == ("EINVAL", 400)
    assert fs.err("POST", "rmdir", path=".") == ("EBUSY", 409)
    assert fs.err("GET", "list", path="f") == ("ENOTDIR", 400)
    assert fs.err("GET", "stat", path="x" * 300) == ("ENAMETOOLONG", 400)
    assert fs.err("GET", "stat") == ("EINVAL", 400)
    assert fs.err("GET", "list", path=".", limit="abc") == ("EINVAL", 400)
    assert fs.err("GET", "list", path=".", limit="100001") == ("EINVAL", 400)
    assert os.path.isdir(P(workspace, "d"))


def test_statfs(fs, workspace):
    s = fs.get("statfs")
    v = os.statvfs(workspace)
    assert s["bsize"] > 0 and s["blocks"] == v.f_blocks and s["namemax"] == v.f_namemax
    assert s["files"] == v.f_files


def test_list_paged(fs, workspace):
    os.mkdir(P(workspace, "d"))
    names = ["n%03d" % i for i in range(250)]
    for n in names:
        open(P(workspace, "d", n), "w").close()
    os.symlink("n000", P(workspace, "d", "sl"))
    got = []
    off = 0
    while True:
        page = fs.get("list", path="d", offset=off, limit=100)
        check_attr(page["attr"], P(workspace, "d"))
        got += page["entries"]
        if page["next"] is None:
            break
        assert page["next"] == off + len(page["entries"])
        off = page["next"]
    assert sorted(e["name"] for e in got) == sorted(names + ["sl"])
    for e in got:
        check_attr(e["attr"], P(workspace, "d", e["name"]))
    # readdir order: the same as os.listdir's
    assert [e["name"] for e in got] == os.listdir(P(workspace, "d"))


# ---- read / write ---------------------------------------------------------------------------

def test_write_read_offsets(fs, workspace):
    a = fs.write("f", b"hello world")
    check_attr(a, P(workspace, "f"))
    assert open(P(workspace, "f"), "rb").read() == b"hello world"
    a = fs.write("f", b"WORLD", offset=6)
    assert open(P(workspace, "f"), "rb").read() == b"hello WORLD"
    fs.write("f", b"!", offset=15)
    assert open(P(workspace, "f"), "rb").read() == b"hello WORLD\0\0\0\0!"
    fs.write("f", b"HE", truncate=1)
    assert open(P(workspace, "f"), "rb").read() == b"HE"
    assert fs.read("f") == b"HE"
    st = os.stat(P(workspace, "f"))
    h = fs.last_headers
    assert h["x-dbx-size"] == "2"
    assert h["x-dbx-version"] == "%x.%d.%d" % (st.st_ino, st.st_mtime_ns, st.st_size)
    fs.write("g", b"0123456789")
    assert fs.read("g", offset=3, length=4) == b"3456"
    assert fs.read("g", offset=8, length=100) == b"89"  # short read at EOF
    assert fs.read("g", offset=20) == b""


def test_write_flags_and_mode(fs, workspace):
    a = fs.write("m", b"x", mode="600")
    assert stat.S_IMODE(os.stat(P(workspace, "m")).st_mode) == 0o600 & ~_umask()
    assert fs.err("PUT", "write", body=b"y", path="m", excl=1) == ("EEXIST", 409)
    assert fs.err("PUT", "write", body=b"y", path="nx", create=0) == ("ENOENT", 404)
    assert fs.err("PUT", "write", body=b"y", path="nodir/x") == ("ENOENT", 404)
    assert not os.path.exists(P(workspace, "nx"))
    os.mkdir(P(workspace, "d"))
    assert fs.err("PUT", "write", body=b"y", path="d") == ("EISDIR", 400)
    fs.write("m", b"z", fsync=1)
    assert open(P(workspace, "m"), "rb").read() == b"z"
    assert a["type"] == "file"


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_write_through_inside_symlink(fs, workspace):
    open(P(workspace, "real"), "wb").write(b"old")
    os.symlink("real", P(workspace, "ln"))
    a = fs.write("ln", b"new", truncate=1)
    assert open(P(workspace, "real"), "rb").read() == b"new"
    check_attr(a, P(workspace, "real"))
    assert fs.read("ln") == b"new"


def test_if_match(fs, workspace):
    a = fs.write("f", b"one")
    ver = a["ver"]
    assert fs.err("PUT", "write", body=b"XX", path="f", headers={"If-Match": "1.2.3"}) == (
        "ESTALE", 412)
    assert open(P(workspace, "f"), "rb").read() == b"one"
    assert fs.err("PUT", "write", body=b"XX", path="f", atomic=1,
                  headers={"If-Match": "1.2.3"}) == ("ESTALE", 412)
    assert open(P(workspace, "f"), "rb").read() == b"one"
    assert fs.err("PUT", "write", body=b"XX", path="nope", headers={"If-Match": ver}) == (
        "ESTALE", 412)
    assert not os.path.exists(P(workspace, "nope"))
    b = fs.write("f", b"two", headers={"If-Match": ver})
    assert open(P(workspace, "f"), "rb").read() == b"two"
    assert b["ver"] != ver or b["size"] != a["size"] or True
    # the connection is still usable after a refused body
    assert fs.read("f") == b"two"


def test_write_only_to_the_same_file(fs, workspace):
    """`ino=`: an offset write lands only in the file with that ino (a handle of a file that
    was replaced must not write into its successor); no file is created for it."""
    a = fs.write("f", b"one")
    b = fs.write("f", b"ONE", ino=a["ino"], create=0)
    assert b["ino"] == a["ino"] and open(P(workspace, "f"), "rb").read() == b"ONE"
    os.rename(P(workspace, "f"), P(workspace, "f.old"))
    open(P(workspace, "g"), "wb").write(b"another")
    os.rename(P(workspace, "g"), P(workspace, "f"))
    assert os.stat(P(workspace, "f")).st_ino != a["ino"]
    assert fs.err("PUT", "write", body=b"XX", path="f", ino=a["ino"]) == ("ESTALE", 412)
    assert open(P(workspace, "f"), "rb").read() == b"another"
    assert fs.err("PUT", "write", body=b"XX", path="gone", ino=a["ino"]) == ("ESTALE", 412)
    assert not os.path.exists(P(workspace, "gone"))
    assert fs.err("PUT", "write", body=b"XX", path="f", ino="x")[0] == "EINVAL"
    assert fs.err("PUT", "write", body=b"XX", path="f", ino=1, atomic=1)[0] == "EINVAL"
    assert fs.read("f") == b"another"


def test_atomic_write(fs, workspace):
    open(P(workspace, "f"), "wb").write(b"old content")
    os.chmod(P(workspace, "f"), 0o640)
    ino = os.stat(P(workspace, "f")).st_ino
    a = fs.write("f", b"new", atomic=1)
    assert open(P(workspace, "f"), "rb").read() == b"new"
    st = os.stat(P(workspace, "f"))
    assert st.st_ino != ino and stat.S_IMODE(st.st_mode) == 0o640
    check_attr(a, P(workspace, "f"))
    assert [n for n in os.listdir(workspace) if n.startswith(".")] == []
    a = fs.write("n", b"fresh", atomic=1, mode="600")
    assert stat.S_IMODE(os.stat(P(workspace, "n")).st_mode) == 0o600
    assert fs.err("PUT", "write", body=b"x", path="n", atomic=1, excl=1) == ("EEXIST", 409)
    assert fs.err("PUT", "write", body=b"x", path="n", atomic=1, offset=3) == ("EINVAL", 400)
    assert fs.err("PUT", "write", body=b"x", path="q", atomic=1, create=0) == ("ENOENT", 404)
    assert fs.err("PUT", "write", body=b"x", path="nodir/q", atomic=1) == ("ENOENT", 404)
    assert not os.path.exists(P(workspace, "nodir"))


def test_write_over_limit(agent_factory, workspace):
    agent = agent_factory(env={"MAX_FILE_SIZE": "1000"})
    fs = Fs(agent)
    assert fs.err("PUT", "write", body=b"x" * 1001, path="big") == ("EFBIG", 507)
    assert fs.err("PUT", "write", body=b"x" * 10, path="big", offset=995) == ("EFBIG", 507)
    fs.write("ok", b"x" * 1000)
    fs.close()


def test_range_header(fs, workspace):
    open(P(workspace, "f"), "wb").write(bytes(range(100)))
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=10-19"}, path="f")
    assert st == 206 and data == bytes(range(10, 20))
    assert hd["content-range"] == "bytes 10-19/100"
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=90-"}, path="f")
    assert st == 206 and data == bytes(range(90, 100))
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=-5"}, path="f")
    assert st == 206 and data == bytes(range(95, 100))
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=95-200"}, path="f")
    assert st == 206 and data == bytes(range(95, 100))
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=100-"}, path="f")
    assert st == 416 and json.loads(data)["error"] == "EINVAL"
    st, hd, data = fs.raw("GET", "read", headers={"Range": "bytes=1-2,5-6"}, path="f")
    assert st == 400


def test_fifo_read_refused(fs, workspace):
    os.mkfifo(P(workspace, "p"))
    assert fs.err("GET", "read", path="p") == ("EINVAL", 400)


# ---- namespace operations --------------------------------------------------------------------

def test_mkdir_rmdir_unlink(fs, workspace):
    a = fs.post("mkdir", path="d", mode="700")
    check_attr(a, P(workspace, "d"))
    assert stat.S_IMODE(os.stat(P(workspace, "d")).st_mode) == 0o700 & ~_umask()
    assert fs.post("rmdir", path="d") == {}
    assert not os.path.exists(P(workspace, "d"))
    open(P(workspace, "f"), "w").close()
    assert fs.post("unlink", path="f") == {}
    assert not os.path.exists(P(workspace, "f"))
    os.symlink("/nonexistent", P(workspace, "dangling"))
    fs.post("unlink", path="dangling")
    assert not os.path.lexists(P(workspace, "dangling"))
    assert fs.err("POST", "unlink", path="f") == ("ENOENT", 404)


def test_rename_flags(fs, workspace):
    open(P(workspace, "a"), "wb").write(b"A")
    open(P(workspace, "b"), "wb").write(b"B")
    assert fs.err("POST", "rename", path="a", to="b", flags="noreplace") == ("EEXIST", 409)
    r = fs.post("rename", path="a", to="b", flags="exchange")
    assert open(P(workspace, "a"), "rb").read() == b"B"
    assert open(P(workspace, "b"), "rb").read() == b"A"
    check_attr(r["attr"], P(workspace, "b"))
    r = fs.post("rename", path="a", to="c", flags="noreplace")
    assert not os.path.exists(P(workspace, "a")) and open(P(workspace, "c"), "rb").read() == b"B"
    fs.post("rename", path="c", to="b")
    assert open(P(workspace, "b"), "rb").read() == b"B"
    assert fs.err("POST", "rename", path="b", to="../b") == ("EXDEV", 403)
    assert fs.err("POST", "rename", path="b", to="x", flags="bogus") == ("EINVAL", 400)
    assert fs.err("POST", "rename", path="nope", to="x") == ("ENOENT", 404)
    os.mkdir(P(workspace, "d"))
    open(P(workspace, "d", "x"), "w").close()
    os.mkdir(P(workspace, "e"))
    open(P(workspace, "e", "y"), "w").close()
    assert fs.err("POST", "rename", path="d", to="e") == ("ENOTEMPTY", 409)
    assert fs.err("POST", "rename", path="d", to="b") == ("ENOTDIR", 400)


def test_symlink_readlink_link(fs, workspace):
    a = fs.post("symlink", path="ln", target="../../outside/x")
    check_attr(a, P(workspace, "ln"))
    assert os.readlink(P(workspace, "ln")) == "../../outside/x"
    assert fs.get("readlink", path="ln") == {"target": "../../outside/x"}
    assert fs.err("POST", "symlink", path="ln", target="y") == ("EEXIST", 409)
    assert fs.err("POST", "symlink", path="ln2") == ("EINVAL", 400)
    open(P(workspace, "f"), "wb").write(b"data")
    a = fs.post("link", path="f", to="g")
    assert a["nlink"] == 2 and a["ino"] == os.stat(P(workspace, "f")).st_ino
    check_attr(a, P(workspace, "g"))
    # link of a symlink links the symlink itself
    a = fs.post("link", path="ln", to="ln-hard")
    assert a["type"] == "symlink"
    assert fs.err("POST", "link", path="f", to="g") == ("EEXIST", 409)


def test_chmod_chown_symlink_not_followed(fs, workspace):
    open(P(workspace, "f"), "w").close()
    a = fs.post("chmod", path="f", mode="4751")
    assert stat.S_IMODE(os.stat(P(workspace, "f")).st_mode) == 0o4751
    check_attr(a, P(workspace, "f"))
    os.symlink("f", P(workspace, "ln"))
    e, _ = fs.err("POST", "chmod", path="ln", mode="777")
    assert e in ("EOPNOTSUPP", "ENOTSUP")
    assert stat.S_IMODE(os.stat(P(workspace, "f")).st_mode) == 0o4751
    assert fs.err("POST", "chmod", path="f") == ("EINVAL", 400)
    assert fs.err("POST", "chmod", path="f", mode="9") == ("EINVAL", 400)
    if os.geteuid() == 0:
        a = fs.post("chown", path="f", uid=1234, gid=-1)
        st = os.stat(P(workspace, "f"))
        assert st.st_uid == 1234 and a["uid"] == 1234 and st.st_gid == os.getegid()
        a = fs.post("chown", path="ln", gid=4321)
        assert os.lstat(P(workspace, "ln")).st_gid == 4321
        assert os.stat(P(workspace, "f")).st_gid == os.getegid()
    else:
        assert fs.err("POST", "chown", path="f", uid=0)[0] == "EPERM"


def test_utimens_ns(fs, workspace):
    open(P(workspace, "f"), "w").close()
    a = fs.post("utimens", path="f", atime="1700000000.123456789", mtime="1600000000.000000001")
    st = os.stat(P(workspace, "f"))
    assert st.st_atime_ns == 1700000000123456789
    assert st.st_mtime_ns == 1600000000000000001
    assert a["mtime"] == [1600000000, 1]
    fs.post("utimens", path="f", atime="omit", mtime="5")
    st2 = os.stat(P(workspace, "f"))
    assert st2.st_atime_ns == st.st_atime_ns and st2.st_mtime_ns == 5 * 10**9
    fs.post("utimens", path="f", mtime="now")
    assert os.stat(P(workspace, "f")).st_mtime > 1700000000
    os.symlink("f", P(workspace, "ln"))
    fs.post("utimens", path="ln", mtime="1000.5")
    assert os.lstat(P(workspace, "ln")).st_mtime_ns == 1000500000000
    assert os.stat(P(workspace, "f")).st_mtime > 1700000000
    assert fs.err("POST", "utimens", path="f", mtime="yesterday") == ("EINVAL", 400)


def test_truncate_fsync(fs, workspace):
    open(P(workspace, "f"), "wb").write(b"0123456789")
    a = fs.post("truncate", path="f", size=4)
    assert open(P(workspace, "f"), "rb").read() == b"0123"
    check_attr(a, P(workspace, "f"))
    fs.post("truncate", path="f", size=8)
    assert open(P(workspace, "f"), "rb").read() == b"0123\0\0\0\0"
    a = fs.post("fsync", path="f")
    check_attr(a, P(workspace, "f"))
    fs.post("fsync", path="f", datasync=1)
    fs.post("fsync", path=".")
    os.mkdir(P(workspace, "d"))
    assert fs.err("POST", "truncate", path="d", size=0) == ("EISDIR", 400)
    assert fs.err("POST", "truncate", path="f") == ("EINVAL", 400)


def test_mknod_fifo(fs, workspace):
    a = fs.post("mknod", path="p", mode="%o" % (stat.S_IFIFO | 0o600))
    assert stat.S_ISFIFO(os.lstat(P(workspace, "p")).st_mode)
    assert a["type"] == "fifo"
    check_attr(a, P(workspace, "p"))
    assert fs.err("POST", "mknod", path="c", mode="%o" % (stat.S_IFCHR | 0o600))[0] == "EPERM"
    assert fs.err("POST", "mknod", path="r", mode="%o" % (stat.S_IFREG | 0o600))[0] == "EPERM"


# ---- xattrs ---------------------------------------------------------------------------------

def _xattrs_supported(path):
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def test_xattrs(fs, workspace):
    open(P(workspace, "f"), "w").close()
    if not _xattrs_supported(P(workspace, "f")):
        pytest.skip("no user xattrs on this file system")
    val = bytes(range(256)) * 4
    assert fs.call("PUT", "xattr", body=val, path="f", name="user.a") == {}
    assert os.getxattr(P(workspace, "f"), "user.a") == val
    assert fs.call("GET", "xattr", path="f", name="user.a") == val
    fs.call("PUT", "xattr", body=b"", path="f", name="user.empty")
    assert fs.call("GET", "xattr", path="f", name="user.empty") == b""
    assert sorted(fs.get("xattrs", path="f")["names"]) == ["user.a", "user.empty"]
    assert fs.err("PUT", "xattr", body=b"x", path="f", name="user.a", flags="create") == (
        "EEXIST", 409)
    assert fs.err("PUT", "xattr", body=b"x", path="f", name="user.b", flags="replace") == (
        "ENODATA", 400)
    assert fs.err("GET", "xattr", path="f", name="user.none") == ("ENODATA", 400)
    assert fs.err("GET", "xattr", path="f", name="trusted.x")[0] == "EOPNOTSUPP"
    assert fs.err("PUT", "xattr", body=b"x", path="f", name="security.x")[0] == "EOPNOTSUPP"
    big = b"v" * (64 * 1024)
    try:
        os.setxattr(P(workspace, "f"), "user.probe", big)
        os.removexattr(P(workspace, "f"), "user.probe")
        fs.call("PUT", "xattr", body=big, path="f", name="user.big")
        assert fs.call("GET", "xattr", path="f", name="user.big") == big
    except OSError:  # ext4 keeps values within one block: the kernel's ENOSPC, passed on
        assert fs.err("PUT", "xattr", body=big, path="f", name="user.big") == ("ENOSPC", 507)
    assert fs.err("PUT", "xattr", body=big + b"v", path="f", name="user.big2") == ("E2BIG", 400)
    assert fs.post("xattr-remove", path="f", name="user.a") == {}
    assert fs.err("POST", "xattr-remove", path="f", name="user.a") == ("ENODATA", 400)
    assert "user.a" not in os.listxattr(P(workspace, "f"))
    # a symlink's own xattrs: user.* is not allowed on symlinks (kernel), never the target's
    os.symlink("f", P(workspace, "ln"))
    e, _ = fs.err("PUT", "xattr", body=b"x", path="ln", name="user.s")
    assert e == "EPERM"
    assert "user.s" not in os.listxattr(P(workspace, "f"))


# ---- tree -----------------------------------------------------------------------------------

def _tree(fs, **q):
    st, hd, data = fs.raw("GET", "tree", **q)
    assert st == 200, data
    assert hd["content-type"] == "application/x-ndjson"
    assert hd.get("transfer-encoding") == "chunked"
    lines = [json.loads(x) for x in data.decode().splitlines()]
    assert lines[-1]["end"] is True
    assert lines[-1]["seq"] == int(hd["x-dbx-seq"])
    return lines[:-1], lines[-1]


def test_tree_small(fs, workspace):
    os.makedirs(P(workspace, "a", "b", "c"))
    open(P(workspace, "a", "f"), "w").close()
    open(P(workspace, "a", "b", "c", "deep"), "w").close()
    os.symlink("a", P(workspace, "ln"))
    ents, end = _tree(fs, path=".")
    paths = [e["path"] for e in ents]
    assert paths[0] == "."
    assert set(paths) == {".", "a", "a/b", "a/b/c", "a/b/c/deep", "a/f", "ln"}
    assert end["entries"] == 7 and end["truncated"] is False
    # parents before children, symlinks not followed
    for i, p in enumerate(paths):
        if "/" in p:
            assert os.path.dirname(p) in paths[:i]
    for e in ents:
        check_attr(e["attr"], P(workspace, e["path"]))
        assert "partial" not in e
    ents, end = _tree(fs, path="a", depth=1)
    by = {e["path"]: e for e in ents}
    assert set(by) == {"a", "a/b", "a/f"}
    assert by["a/b"].get("partial") is True and "partial" not in by["a"]
    ents, end = _tree(fs, path="a", depth=0)
    assert [e["path"] for e in ents] == ["a"] and ents[0]["partial"] is True
    ents, end = _tree(fs, path="a/f")
    assert [e["path"] for e in ents] == ["a/f"]
    assert fs.err("GET", "tree", path="nope") == ("ENOENT", 404)
    assert fs.err("GET", "tree", path="..") == ("EXDEV", 403)
    assert fs.err("GET", "tree", path=".", max=0) == ("EINVAL", 400)


def test_tree_unreadable_dir_partial(fs, workspace):
    if os.geteuid() == 0:
        pytest.skip("root reads any directory")
    os.mkdir(P(workspace, "locked"))
    os.chmod(P(workspace, "locked"), 0)
    try:
        ents, end = _tree(fs, path=".")
        assert any(e["path"] == "locked" and e.get("partial") for e in ents)
    finally:
        os.chmod(P(workspace, "locked"), 0o755)


def test_tree_10000(fs, workspace):
    n = 0
    for d in range(100):
        dd = P(workspace, "d%02d" % d)
        os.mkdir(dd)
        for f in range(99):
            open(os.path.join(dd, "f%02d" % f), "w").close()
            n += 1
    ents, end = _tree(fs, path=".")
    assert end["entries"] == len(ents) == 1 + 100 + n == 10001
    assert end["truncated"] is False
    assert len({e["path"] for e in ents}) == len(ents)
    ents, end = _tree(fs, path=".", max=5000)
    assert end["truncated"] is True and end["entries"] == len(ents) == 5000


# ---- batch ----------------------------------------------------------------------------------

def test_batch_mixed(fs, workspace):
    open(P(workspace, "r"), "wb").write(b"0123456789")
    blob = b"AAAABBBBBB"
    res, rblob = fs.batch([
        {"op": "stat", "path": "r"},
        {"op": "read", "path": "r", "offset": 2, "length": 4},
        {"op": "write", "path": "w1", "data": [0, 4]},
        {"op": "unlink", "path": "missing"},
        {"op": "write", "path": "w2", "offset": 3, "data": [4, 6], "truncate": True},
        {"op": "mkdir", "path": "d", "mode": 0o700},
        {"op": "read", "path": "w1"},
        {"op": "rename", "path": "w2", "to": "d/w2"},
        {"op": "list", "path": "d"},
        {"op": "tree", "path": "."},
        {"op": "bogus"},
        {"op": "write", "path": "w3", "data": [8, 100]},
        {"op": "write", "path": "w1", "data": [0, 1], "if_match": "0.0.0"},
        {"op": "read", "path": "r", "offset": 9, "length": 100},
    ], blob)
    assert len(res) == 14
    check_attr(res[0]["attr"], P(workspace, "r"))
    o, l = res[1]["data"]
    assert rblob[o:o + l] == b"2345"
    assert res[1]["size"] == 10 and res[1]["ver"] == res[0]["attr"]["ver"]
    assert open(P(workspace, "w1"), "rb").read() == b"AAAA"
    assert res[3]["error"] == "ENOENT" and "missing" in res[3]["message"]
    assert open(P(workspace, "d", "w2"), "rb").read() == b"\0\0\0BBBBBB"
    assert stat.S_IMODE(os.stat(P(workspace, "d")).st_mode) == 0o700 & ~_umask()
    o, l = res[6]["data"]
    assert rblob[o:o + l] == b"AAAA"
    check_attr(res[7]["attr"], P(workspace, "d", "w2"))
    assert [e["name"] for e in res[8]["entries"]] == ["w2"]
    assert res[9]["error"] == "EINVAL" and res[10]["error"] == "EINVAL"
    assert res[11]["error"] == "EINVAL" and not os.path.exists(P(workspace, "w3"))
    assert res[12]["error"] == "ESTALE"
    assert open(P(workspace, "w1"), "rb").read() == b"AAAA"
    o, l = res[13]["data"]
    assert rblob[o:o + l] == b"9"


def test_batch_limits(fs, workspace):
    res, _ = fs.batch([{"op": "statfs"}] * 1024)
    assert len(res) == 1024 and all("bsize" in r for r in res)
    body = json.dumps({"ops": [{"op": "statfs"}] * 1025}).encode() + b"\n"
    e = fs.err("POST", "batch", body=body, headers={"Content-Type": "application/x-dbx-batch"})
    assert e == ("E2BIG", 400)
    body = b'{"ops":[]}\n' + b"x" * (16 * 1024 * 1024)
    e = fs.err("POST", "batch", body=body, headers={"Content-Type": "application/x-dbx-batch"})
    assert e == ("E2BIG", 400)
    e = fs.err("POST", "batch", body=b'{"ops":[]}\n', headers={"Content-Type": "text/plain"})
    assert e == ("EINVAL", 400)
    e = fs.err("POST", "batch", body=b'not json\n',
               headers={"Content-Type": "application/x-dbx-batch"})
    assert e == ("EINVAL", 400)


def test_batch_many_small_files(fs, workspace):
    ops = [{"op": "write", "path": "s%d" % i, "data": [i * 3, 3]} for i in range(300)]
    blob = b"".join(b"%03d" % i for i in range(300))
    res, _ = fs.batch(ops, blob)
    assert all("attr" in r for r in res)
    res, rblob = fs.batch([{"op": "read", "path": "s%d" % i} for i in range(300)])
    for i, r in enumerate(res):
        o, l = r["data"]
        assert rblob[o:o + l] == b"%03d" % i


def test_batch_arguments_of_the_wrong_type_fail_the_op(fs, workspace):
    res, _ = fs.batch([{"op": "write", "path": ["q"], "data": [0, 1]},
                       {"op": "unlink", "path": {"x": 1}},
                       {"op": "stat", "path": "."}], b"z")
    assert res[0]["error"] == "EINVAL" and "path" in res[0]["message"]
    assert res[1]["error"] == "EINVAL"
    assert "attr" in res[2]
    assert not os.path.exists(os.path.join(workspace, "?"))


def test_batch_list_entries_are_bounded(fs, workspace):
    os.mkdir(os.path.join(workspace, "d"))
    for i in range(3000):
        open(os.path.join(workspace, "d", "f%d" % i), "w").close()
    res, _ = fs.batch([{"op": "list", "path": "d"}] * 10)
    ok = [r for r in res if "entries" in r]
    assert len(ok) == 7 and all(len(r["entries"]) == 3000 for r in ok)
    assert all(r.get("error") == "EFBIG" for r in res[7:])


def test_early_errors_keep_the_connection_usable(agent):
    """Refusals sent before the body was read (wrong type, too big) leave the keep-alive
    connection working for the next request."""
    c = agent.conn()
    for i in range(40):
        st, hd, data = agent.request("POST", "/fs/v1/batch", body=b'{"ops":[]}\n' + b"x" * 11,
                                     headers={"Content-Type": "text/plain"}, conn=c)
        assert st == 400 and json.loads(data)["error"] == "EINVAL"
    st, hd, data = agent.request("GET", "/fs/v1/stat", query={"path": "."}, conn=c)
    assert st == 200 and json.loads(data)["type"] == "dir"
    c.close()


def test_changes_report_their_directories(fs, workspace):
    """Every change of names says how it left the directories involved (X-Dbx-Dir: the parent
    of `to`, or of `path`; X-Dbx-From-Dir: the parent of a rename's `path`), so a client
    keeping their attributes needs no stat after its own changes."""
    os.mkdir(P(workspace, "a"))
    os.mkdir(P(workspace, "b"))

    def dirs():
        h = fs.last_headers
        return (json.loads(h["x-dbx-dir"]) if "x-dbx-dir" in h else None,
                json.loads(h["x-dbx-from-dir"]) if "x-dbx-from-dir" in h else None)

    fs.post("mkdir", path="a/sub")
    d, f = dirs()
    check_attr(d, P(workspace, "a"))
    assert d["nlink"] == 3 and f is None
    fs.post("rmdir", path="a/sub")
    check_attr(dirs()[0], P(workspace, "a"))
    fs.write("a/new", b"x", excl="1", dir="1")
    check_attr(dirs()[0], P(workspace, "a"))
    fs.write("a/new", b"y")  # not asked: no directory stat on the data path
    assert dirs() == (None, None)
    fs.post("rename", path="a/new", to="b/moved")
    d, f = dirs()
    check_attr(d, P(workspace, "b"))
    check_attr(f, P(workspace, "a"))
    fs.post("link", path="b/moved", to="a/hard")
    d, f = dirs()
    check_attr(d, P(workspace, "a"))
    assert f is None
    fs.post("symlink", path="b/ln", target="moved")
    check_attr(dirs()[0], P(workspace, "b"))
    fs.post("mknod", path="b/fifo", mode="10644")
    check_attr(dirs()[0], P(workspace, "b"))
    fs.post("unlink", path="a/hard")
    check_attr(dirs()[0], P(workspace, "a"))
    # a failed change reports nothing
    assert fs.err("POST", "unlink", path="a/hard") == ("ENOENT", 404)
    assert dirs() == (None, None)
