"""The compat file routes /api/v1/files/* against the real agent (agent-api.md §2.2).

Shapes, status numbers and messages follow the official agent; where it is unsafe the agent
keeps the wire shape and does the safe thing (test_files_safety.py covers the escapes)."""
import email.parser
import email.policy
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import urllib.parse

import pytest

from _files_helpers import (ALIAS, api_raw, batch_upload, multipart, sha256_file, undici_name,
                            write_json, write_multipart, write_raw)

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def put(ws, rel, data=b"x", mode=None):
    p = os.path.join(ws, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(p, mode)
    return p


def read(ws, rel):
    with open(os.path.join(ws, rel), "rb") as f:
        return f.read()


def leftovers(ws):
    """Temp files of atomic writes that were not cleaned up."""
    return [os.path.join(d, n) for d, _, fs in os.walk(ws) for n in fs if ".dbx-" in n]


# ---- list --------------------------------------------------------------------------------------

def test_list_shape_and_defaults(agent, workspace):
    put(workspace, "a.txt", b"hello", 0o640)
    os.mkdir(os.path.join(workspace, "dir"))
    put(workspace, ".hidden", b"h")
    os.symlink("dir", os.path.join(workspace, "link"))
    r = agent.api("GET", "/api/v1/files/list")
    assert set(r) == {"status", "message", "files"}
    assert r["status"] == 0 and r["message"] == "success"
    by = {f["name"]: f for f in r["files"]}
    assert set(by) == {"a.txt", "dir", "link"}  # dotfiles hidden by default
    a = by["a.txt"]
    assert set(a) == {"name", "path", "size", "isDir", "permissions", "modified"}
    assert a["path"] == os.path.join(workspace, "a.txt")
    assert a["size"] == 5 and a["isDir"] is False and a["permissions"] == "0640"
    assert TIME_RE.match(a["modified"])
    assert by["dir"]["isDir"] is True
    assert by["link"]["isDir"] is False  # symlinks are not followed for metadata
    r = agent.api("GET", "/api/v1/files/list", query={"path": ".", "showHidden": "true"})
    assert ".hidden" in {f["name"] for f in r["files"]}


def test_list_paging(agent, workspace):
    for i in range(120):
        put(workspace, "many/f%03d" % i)
    r = agent.api("GET", "/api/v1/files/list", query={"path": "many"})
    assert len(r["files"]) == 100  # default limit
    first = agent.api("GET", "/api/v1/files/list", query={"path": "many", "limit": "50"})
    rest = agent.api("GET", "/api/v1/files/list",
                     query={"path": "many", "limit": "1000", "offset": "50"})
    names = [f["name"] for f in first["files"]] + [f["name"] for f in rest["files"]]
    assert len(first["files"]) == 50 and sorted(names) == ["f%03d" % i for i in range(120)]


def test_list_absolute_and_alias(agent, workspace):
    put(workspace, "sub/x")
    for p in (os.path.join(workspace, "sub"), ALIAS + "/sub", "./sub/../sub"):
        r = agent.api("GET", "/api/v1/files/list", query={"path": p})
        assert [f["name"] for f in r["files"]] == ["x"], p


@pytest.mark.parametrize("q,needle", [({"showHidden": "1"}, "showHidden"),
                                      ({"limit": "abc"}, "limit"),
                                      ({"offset": "-1"}, "offset")])
def test_list_bad_query_is_400_text(agent, q, needle):
    st, hd, data = agent.get("/api/v1/files/list", query=q)
    assert st == 400 and hd["content-type"].startswith("text/plain")
    assert needle in data.decode()


def test_list_errors(agent, workspace):
    put(workspace, "file")
    r = agent.api("GET", "/api/v1/files/list", query={"path": "missing"})
    assert r["status"] == 1404 and "No such file or directory" in r["message"]
    r = agent.api("GET", "/api/v1/files/list", query={"path": "file"})
    assert r["status"] == 1500 and "Not a directory" in r["message"]


# ---- read / download ---------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["read", "download"])
def test_read_bytes_and_headers(agent, workspace, route):
    data = bytes(range(256)) * 1000 + b"{\"json\": 1}"
    put(workspace, "dir/bin.dat", data)
    st, hd, body = agent.get("/api/v1/files/" + route, query={"path": "dir/bin.dat"})
    assert st == 200 and body == data
    assert hd["content-type"] == "application/octet-stream"
    assert int(hd["content-length"]) == len(data)
    assert hd["content-disposition"] == 'attachment; filename="bin.dat"'


def test_read_space_encodings_and_extra_params(agent, workspace):
    put(workspace, "with space.txt", b"sp")
    # URLSearchParams style (+) and encodeURIComponent style (%20); extra params ignored
    for raw in ("path=with+space.txt&encoding=utf8&offset=3", "path=with%20space.txt"):
        st, hd, body = agent.get("/api/v1/files/read?" + raw)
        assert st == 200 and body == b"sp", raw


def test_read_empty_file_and_head(agent, workspace):
    put(workspace, "empty", b"")
    st, hd, body = agent.get("/api/v1/files/download", query={"path": "empty"})
    assert st == 200 and body == b"" and hd["content-length"] == "0"
    put(workspace, "h.txt", b"12345")
    st, hd, body = agent.request("HEAD", "/api/v1/files/read", query={"path": "h.txt"})
    assert st == 200 and body == b"" and hd["content-length"] == "5"
    # the connection is still usable after HEAD
    c = agent.conn()
    try:
        for _ in range(2):
            st, hd, body = agent.request("HEAD", "/api/v1/files/read", query={"path": "h.txt"},
                                         conn=c)
            assert st == 200
        st, hd, body = agent.get("/api/v1/files/read", query={"path": "h.txt"}, conn=c)
        assert body == b"12345"
    finally:
        c.close()


def test_read_errors(agent, workspace):
    os.mkdir(os.path.join(workspace, "d"))
    st, hd, body = agent.get("/api/v1/files/read")
    assert st == 400 and hd["content-type"].startswith("text/plain") and b"path" in body
    r = agent.api("GET", "/api/v1/files/read", query={"path": "nope"})
    assert r == {"status": 1404, "message": "File not found"}
    r = agent.api("GET", "/api/v1/files/download", query={"path": "d"})
    assert r == {"status": 1422, "message": "Path is a directory, not a file"}
    os.mkfifo(os.path.join(workspace, "fifo"))
    r = agent.api("GET", "/api/v1/files/read", query={"path": "fifo"})  # must not hang
    assert r["status"] == 1422


# ---- write: JSON ---------------------------------------------------------------------------------

def test_write_json_shape_and_content(agent, workspace):
    text = "héllo wörld ✓ 日本語\n"
    r = write_json(agent, "new/dir/u.txt", text)
    assert r == {"status": 0, "message": "success",
                 "path": os.path.join(workspace, "new/dir/u.txt"),
                 "size": len(text.encode())}
    assert read(workspace, "new/dir/u.txt") == text.encode()
    # absolute (workspace and alias) paths, unknown fields ignored, non-base64 encoding = utf8
    r = write_json(agent, os.path.join(workspace, "abs.txt"), "A", permissions="0600")
    assert r["status"] == 0 and read(workspace, "abs.txt") == b"A"
    r = write_json(agent, ALIAS + "/alias.txt", "B", encoding="utf8")
    assert r["path"] == os.path.join(workspace, "alias.txt") and read(workspace, "alias.txt") == b"B"
    assert leftovers(workspace) == []


def test_write_json_base64_binary_over_1mib(agent, workspace):
    import base64
    data = os.urandom(3 * 1024 * 1024 + 7)
    r = write_json(agent, "b64.bin", base64.b64encode(data).decode(), encoding="base64")
    assert r["status"] == 0 and r["size"] == len(data)
    assert read(workspace, "b64.bin") == data
    big = "x" * (2 * 1024 * 1024 + 3)
    r = write_json(agent, "big.txt", big)
    assert r["size"] == len(big) and read(workspace, "big.txt") == big.encode()


@pytest.mark.parametrize("content", ["abc", "YQ", "YQ==\n", "Y Q==", "YR==", "@@@@"])
def test_write_json_bad_base64(agent, workspace, content):
    put(workspace, "keep", b"old")
    r = write_json(agent, "keep", content, encoding="base64")
    assert r["status"] == 1422 and r["message"].startswith("Invalid base64"), r
    assert read(workspace, "keep") == b"old"


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b'{"content":"x"}', b'{"path":"a"}',
                                  b'{"path":1,"content":"x"}', b""])
def test_write_json_errors_are_envelopes(agent, workspace, body):
    st, hd, data = agent.post_json("/api/v1/files/write", body)
    r = json.loads(data)
    assert st == 200 and hd["content-type"].startswith("application/json")
    assert r["status"] == 1422, r
    assert os.listdir(workspace) == []


def test_write_keeps_mode_and_replaces_atomically(agent, workspace):
    p = put(workspace, "script.sh", b"old", 0o751)
    ino = os.stat(p).st_ino
    write_json(agent, "script.sh", "new")
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o751 and read(workspace, "script.sh") == b"new"
    assert st.st_ino != ino  # replaced by rename, not rewritten in place
    write_raw(agent, "script.sh", b"raw")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o751
    # a new file gets the default mode (umask applied), not the temp file's 0600
    write_json(agent, "fresh", "f")
    assert stat.S_IMODE(os.stat(os.path.join(workspace, "fresh")).st_mode) & 0o044 == 0o044
    assert leftovers(workspace) == []


def test_write_through_symlink_inside_workspace(agent, workspace):
    put(workspace, "real/target.txt", b"old")
    os.symlink("real/target.txt", os.path.join(workspace, "ln"))
    r = write_json(agent, "ln", "via link")
    assert r["status"] == 0
    assert os.path.islink(os.path.join(workspace, "ln"))
    assert read(workspace, "real/target.txt") == b"via link"


def test_write_onto_directory_fails(agent, workspace):
    os.mkdir(os.path.join(workspace, "d"))
    r = write_json(agent, "d", "x")
    assert r["status"] == 1500 and "Is a directory" in r["message"]
    r = write_raw(agent, "", b"x")
    assert r["status"] != 0
    assert os.listdir(workspace) == ["d"]


# ---- write: raw ----------------------------------------------------------------------------------

def test_write_raw_binary_over_1mib(agent, workspace):
    data = os.urandom(5 * 1024 * 1024 + 11)
    r = write_raw(agent, "raw/bin.dat", data)
    assert r == {"status": 0, "message": "success",
                 "path": os.path.join(workspace, "raw/bin.dat"), "size": len(data)}
    assert read(workspace, "raw/bin.dat") == data
    r = write_raw(agent, "png.png", b"\x89PNG\r\n", ctype="image/png")
    assert r["size"] == 6
    r = write_raw(agent, "noct", b"abc", ctype=None)
    assert r["size"] == 3 and read(workspace, "noct") == b"abc"
    r = write_raw(agent, "empty", b"")
    assert r["size"] == 0 and read(workspace, "empty") == b""


def test_write_raw_needs_path(agent, workspace):
    r = write_raw(agent, None, b"data")
    assert r == {"status": 1422, "message": "Path parameter required"}
    assert os.listdir(workspace) == []


def test_write_over_max_size_keeps_old_file(agent_factory, workspace):
    agent = agent_factory(extra_args=["--max-file-size=1000"])
    put(workspace, "f", b"original")
    # exactly max is allowed (check is size > max)
    assert write_raw(agent, "exact", b"e" * 1000)["size"] == 1000
    for fn in (lambda: write_raw(agent, "f", b"y" * 1001),
               lambda: write_json(agent, "f", "y" * 1001),
               lambda: write_multipart(agent, [("path", None, b"f", None),
                                               ("file", "f", b"y" * 5000, None)])):
        r = fn()
        assert r == {"status": 1422, "message": "File too large"}, r
        assert read(workspace, "f") == b"original"
    assert leftovers(workspace) == []
    r = batch_upload(agent, [("f", b"z" * 1001), ("ok.txt", b"ok")])
    assert [x["success"] for x in r["results"]] == [False, True]
    assert "too large" in r["results"][0]["error"]
    assert read(workspace, "f") == b"original" and leftovers(workspace) == []


def test_write_over_max_streamed_without_content_length_check(agent_factory, workspace):
    """The limit also holds for bytes counted while streaming (multipart: the Content-Length
    covers several parts, so only the per-file count can decide)."""
    agent = agent_factory(extra_args=["--max-file-size=100000"])
    put(workspace, "f", b"original")
    r = write_multipart(agent, [("file", "f", os.urandom(300000), None)])
    assert r["status"] == 1422 and read(workspace, "f") == b"original"
    assert leftovers(workspace) == []


# ---- write: multipart ---------------------------------------------------------------------------

def test_write_multipart_path_field_first(agent, workspace):
    data = os.urandom(2 * 1024 * 1024 + 5)
    r = write_multipart(agent, [("path", None, b"mp/target.bin", None),
                                ("file", "ignored-name.bin", data, None)])
    assert r == {"status": 0, "message": "success",
                 "path": os.path.join(workspace, "mp/target.bin"), "size": len(data)}
    assert read(workspace, "mp/target.bin") == data
    assert not os.path.exists(os.path.join(workspace, "ignored-name.bin"))


def test_write_multipart_filename_when_no_path_before(agent, workspace):
    # the path field comes after the file: the file goes to its filename
    r = write_multipart(agent, [("files", "by/name.txt", b"one", None),
                                ("path", None, b"later.txt", None)])
    assert r["path"] == os.path.join(workspace, "by/name.txt")
    assert read(workspace, "by/name.txt") == b"one"
    assert not os.path.exists(os.path.join(workspace, "later.txt"))


def test_write_multipart_every_file_part_last_wins(agent, workspace):
    r = write_multipart(agent, [("other", None, b"ignored", None),
                                ("path", None, b"same.txt", None),
                                ("file", "a", b"first", None),
                                ("upload", "zzz", b"not a file field", None),
                                ("file", "b", b"second!", None)])
    assert r["size"] == 7 and read(workspace, "same.txt") == b"second!"
    assert sorted(os.listdir(workspace)) == ["same.txt"]


def test_write_multipart_boundary_like_content(agent, workspace):
    ct, body = multipart([("path", None, b"t.bin", None),
                          ("file", "t.bin", b"\r\n--not-the-boundary\r\n--", None)],
                         boundary="XyZ")
    r = api_raw(agent, "POST", "/api/v1/files/write", body=body, headers={"Content-Type": ct})
    assert r["status"] == 0 and read(workspace, "t.bin") == b"\r\n--not-the-boundary\r\n--"


def test_multipart_wire_variants(agent, workspace):
    """Preamble and epilogue, a quoted boundary parameter, transport padding after the
    delimiter, header names in any case, ';' and '=' inside a quoted filename, no part
    Content-Type, and a lone epilogue-free close."""
    body = (b"this is a preamble\r\n"
            b"--q b\t \r\n"
            b"content-disposition: form-data; filename=\"a;b=c.txt\"; name=\"files\"\r\n"
            b"\r\n"
            b"semi\r\n"
            b"--q b\r\n"
            b"Content-Disposition: form-data; name=file; filename=plain.txt\r\n"
            b"Content-Type: text/plain\r\n"
            b"\r\n"
            b"\r\n\r\n"
            b"--q b--\r\nepilogue here")
    r = api_raw(agent, "POST", "/api/v1/files/batch-upload", body=body,
                headers={"Content-Type": 'multipart/form-data; charset=utf-8; boundary="q b"'})
    assert r["successCount"] == 2, r
    assert read(workspace, "a;b=c.txt") == b"semi"
    assert read(workspace, "plain.txt") == b"\r\n"


def test_write_multipart_errors(agent, workspace):
    r = write_multipart(agent, [("path", None, b"x.txt", None)])
    assert r == {"status": 1422, "message": "No file found in multipart form"}
    r = api_raw(agent, "POST", "/api/v1/files/write", body=b"--b\r\nContent-Disposition: "
                b"form-data; name=\"file\"; filename=\"t\"\r\n\r\ntruncated",
                headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r["status"] == 1422 and "multipart" in r["message"]
    r = api_raw(agent, "POST", "/api/v1/files/write", body=b"whatever",
                headers={"Content-Type": "multipart/form-data"})
    assert r["status"] == 1422
    assert os.listdir(workspace) == [] and leftovers(workspace) == []


def test_keepalive_after_unconsumed_body_errors(agent, workspace):
    """Error replies that come before the body was used still leave the connection usable."""
    c = agent.conn()
    try:
        big = os.urandom(3 * 1024 * 1024)
        hdr = {"Content-Type": "application/octet-stream"}
        for q in ({}, {"path": "../outside.bin"}):
            st, hd, data = agent.request("POST", "/api/v1/files/write", body=big, headers=hdr,
                                         query=q, conn=c)
            assert st == 200 and json.loads(data)["status"] in (1422, 1403)
        st, hd, data = agent.request("POST", "/api/v1/files/write", body=b"fine", headers=hdr,
                                     query={"path": "ok.txt"}, conn=c)
        assert json.loads(data)["status"] == 0 and read(workspace, "ok.txt") == b"fine"
    finally:
        c.close()


# ---- delete ---------------------------------------------------------------------------------------

def test_delete(agent, workspace):
    put(workspace, "f.txt")
    put(workspace, "full/a/b/c.txt")
    os.mkdir(os.path.join(workspace, "emptydir"))
    ok = {"status": 0, "message": "success", "success": True}
    assert agent.api("POST", "/api/v1/files/delete", {"path": "f.txt"}) == ok
    assert agent.api("POST", "/api/v1/files/delete", {"path": "emptydir"}) == ok
    r = agent.api("POST", "/api/v1/files/delete", {"path": "full"})
    assert r["status"] == 1500 and "not empty" in r["message"]
    assert agent.api("POST", "/api/v1/files/delete", {"path": "full", "recursive": True}) == ok
    assert os.listdir(workspace) == []
    r = agent.api("POST", "/api/v1/files/delete", {"path": "nope"})
    assert r == {"status": 1404, "message": "File not found"}
    r = agent.api("POST", "/api/v1/files/delete", {"path": "nope/deeper"})
    assert r == {"status": 1404, "message": "File not found"}


@pytest.mark.parametrize("path", ["", ".", "./", "a/..", "/", "WS", "WS/", "ALIAS"])
def test_delete_never_removes_the_workspace(agent, workspace, path):
    put(workspace, "precious/data.txt", b"keep")
    path = path.replace("WS", workspace).replace("ALIAS", ALIAS)
    r = agent.api("POST", "/api/v1/files/delete", {"path": path, "recursive": True})
    assert r["status"] in (1403,), r
    assert read(workspace, "precious/data.txt") == b"keep"


def test_delete_shape_errors(agent):
    st, hd, data = agent.post_json("/api/v1/files/delete", {})
    assert st == 422 and b"missing field `path`" in data
    st, hd, data = agent.request("POST", "/api/v1/files/delete", body=b'{"path":"x"}')
    assert st == 415


# ---- move / rename --------------------------------------------------------------------------------

def test_move(agent, workspace):
    ok = {"status": 0, "message": "success", "success": True}
    put(workspace, "src.txt", b"S")
    assert agent.api("POST", "/api/v1/files/move",
                     {"source": "src.txt", "destination": "deep/er/dst.txt"}) == ok
    assert read(workspace, "deep/er/dst.txt") == b"S"
    put(workspace, "other.txt", b"O")
    r = agent.api("POST", "/api/v1/files/move",
                  {"source": "other.txt", "destination": "deep/er/dst.txt"})
    assert r == {"status": 1409, "message": "Destination already exists"}
    assert read(workspace, "deep/er/dst.txt") == b"S"
    assert agent.api("POST", "/api/v1/files/move", {"source": "other.txt",
                     "destination": "deep/er/dst.txt", "overwrite": True}) == ok
    assert read(workspace, "deep/er/dst.txt") == b"O"
    # directory over a non-empty directory with overwrite
    put(workspace, "d1/x", b"1")
    put(workspace, "d2/y", b"2")
    assert agent.api("POST", "/api/v1/files/move",
                     {"source": "d1", "destination": "d2", "overwrite": True}) == ok
    assert os.listdir(os.path.join(workspace, "d2")) == ["x"]
    r = agent.api("POST", "/api/v1/files/move", {"source": "gone", "destination": "z"})
    assert r == {"status": 1404, "message": "Source file not found"}
    # same source and destination with overwrite: nothing is lost
    assert agent.api("POST", "/api/v1/files/move",
                     {"source": "d2", "destination": "./d2", "overwrite": True}) == ok
    assert read(workspace, "d2/x") == b"1"
    r = agent.api("POST", "/api/v1/files/move",
                  {"source": "d2", "destination": "d2/inner", "overwrite": True})
    assert r["status"] == 1422 and read(workspace, "d2/x") == b"1"


def test_rename(agent, workspace):
    ok = {"status": 0, "message": "success", "success": True}
    put(workspace, "old.txt", b"o")
    put(workspace, "taken.txt", b"t")
    assert agent.api("POST", "/api/v1/files/rename",
                     {"oldPath": "old.txt", "newPath": "new/sub/new.txt"}) == ok
    assert read(workspace, "new/sub/new.txt") == b"o"
    r = agent.api("POST", "/api/v1/files/rename",
                  {"oldPath": "new/sub/new.txt", "newPath": "taken.txt"})
    assert r == {"status": 1409, "message": "New path already exists"}
    assert read(workspace, "taken.txt") == b"t"
    r = agent.api("POST", "/api/v1/files/rename", {"oldPath": "missing", "newPath": "x"})
    assert r == {"status": 1404, "message": "Old path not found"}
    assert agent.api("POST", "/api/v1/files/rename", {"oldPath": "new", "newPath": "dir2"}) == ok
    assert read(workspace, "dir2/sub/new.txt") == b"o"
    st, hd, data = agent.post_json("/api/v1/files/rename", {"oldPath": "x"})
    assert st == 422


# ---- chmod ------------------------------------------------------------------------------------------

def test_chmod(agent, workspace):
    ok = {"status": 0, "message": "success", "success": True}
    p = put(workspace, "f", b"", 0o600)
    for mode, want in (("755", 0o755), ("0644", 0o644), ("0o700", 0o700), ("4755", 0o755)):
        assert agent.api("POST", "/api/v1/files/chmod", {"path": "f", "mode": mode}) == ok
        assert stat.S_IMODE(os.stat(p).st_mode) == want, mode
    put(workspace, "tree/a/b.txt", b"", 0o600)
    assert agent.api("POST", "/api/v1/files/chmod",
                     {"path": "tree", "mode": "750", "recursive": True}) == ok
    for rel in ("tree", "tree/a", "tree/a/b.txt"):
        assert stat.S_IMODE(os.stat(os.path.join(workspace, rel)).st_mode) == 0o750, rel
    uid, gid = os.getuid(), os.getgid()
    assert agent.api("POST", "/api/v1/files/chmod",
                     {"path": "f", "mode": "640", "owner": "%d:%d" % (uid, gid)}) == ok
    import pwd
    assert agent.api("POST", "/api/v1/files/chmod",
                     {"path": "f", "mode": "640", "owner": pwd.getpwuid(uid).pw_name}) == ok


def test_chmod_errors(agent, workspace):
    put(workspace, "f")
    for mode in ("", "9", "rwx", "0o", "-1"):
        r = agent.api("POST", "/api/v1/files/chmod", {"path": "f", "mode": mode})
        assert r["status"] == 1422 and "mode" in r["message"], mode
    r = agent.api("POST", "/api/v1/files/chmod", {"path": "nope", "mode": "644"})
    assert r == {"status": 1404, "message": "Path not found"}
    r = agent.api("POST", "/api/v1/files/chmod",
                  {"path": "f", "mode": "644", "owner": "no-such-user-dbx"})
    assert r["status"] == 1422


# ---- batch-upload ------------------------------------------------------------------------------------

def test_batch_upload(agent, workspace):
    files = [("./batch/sub/file4.txt", b"four"),
             ("top.txt", b"top"),
             (os.path.join(workspace, "abs/a.bin"), bytes(range(256))),
             (ALIAS + "/aliased.txt", b"al"),
             ('we"ird\nname.txt', b"q")]
    r = batch_upload(agent, files, extra_parts=[("targetDir", None, b"/somewhere", None)])
    assert set(r) == {"status", "message", "results", "totalFiles", "successCount"}
    assert r["status"] == 0 and r["totalFiles"] == 5 and r["successCount"] == 5
    want = ["batch/sub/file4.txt", "top.txt", "abs/a.bin", "aliased.txt", 'we"ird\nname.txt']
    assert [x["path"] for x in r["results"]] == [os.path.join(workspace, w) for w in want]
    for (name, data), x, w in zip(files, r["results"], want):
        assert set(x) == {"path", "success", "size"} and x["success"] is True
        assert x["size"] == len(data) and read(workspace, w) == data
    assert not os.path.exists(os.path.join(workspace, "somewhere"))


def test_batch_upload_partial_failure_and_edge_parts(agent, workspace):
    parts = [("files", "good1.txt", b"1", None),
             ("files", "/invalid/path/file.txt", b"2", None),
             ("file", "../escape.txt", b"3", None),
             ("files", None, b"no filename", None),
             ("other", "skipped.txt", b"ignored field", None),
             ("file", "good2.txt", b"22", None)]
    ct, body = multipart(parts)
    r = api_raw(agent, "POST", "/api/v1/files/batch-upload", body=body,
                headers={"Content-Type": ct})
    assert r["totalFiles"] == 5 and r["successCount"] == 2
    res = r["results"]
    assert [x["success"] for x in res] == [True, False, False, False, True]
    assert res[1]["path"] == "/invalid/path/file.txt" and res[2]["path"] == "../escape.txt"
    for x in res[1:4]:
        assert set(x) == {"path", "success", "error"} and x["error"]
    assert "workspace" in res[1]["error"]
    assert sorted(os.listdir(workspace)) == ["good1.txt", "good2.txt"]


def test_batch_upload_requires_multipart(agent):
    st, hd, data = agent.post_json("/api/v1/files/batch-upload", {"x": 1})
    assert st == 400 and hd["content-type"].startswith("text/plain")
    r = api_raw(agent, "POST", "/api/v1/files/batch-upload", body=b"garbage",
                headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r["status"] == 1422


def test_batch_upload_empty_form(agent):
    ct, body = multipart([("targetDir", None, b".", None)])
    r = api_raw(agent, "POST", "/api/v1/files/batch-upload", body=body,
                headers={"Content-Type": ct})
    assert r == {"status": 0, "message": "success", "results": [], "totalFiles": 0,
                 "successCount": 0}


# ---- batch-download -------------------------------------------------------------------------------

def _download_tree(ws):
    put(ws, "proj/a.txt", b"alpha")
    put(ws, "proj/sub/b.bin", bytes(range(256)) * 10)
    os.mkdir(os.path.join(ws, "proj/emptydir"))
    os.symlink("a.txt", os.path.join(ws, "proj/ln"))
    put(ws, "single.txt", b"one")


def _bd(agent, obj):
    return agent.post_json("/api/v1/files/batch-download", obj)


def _members(tf):
    return {m.name: m for m in tf.getmembers()}


@pytest.mark.parametrize("fmt,ctype,fname", [(None, "application/gzip", "download.tar.gz"),
                                             ("tar.gz", "application/gzip", "download.tar.gz"),
                                             ("direct", "application/gzip", "download.tar.gz"),
                                             ("tar", "application/x-tar", "download.tar")])
def test_batch_download_tar(agent, workspace, fmt, ctype, fname):
    _download_tree(workspace)
    obj = {"paths": ["proj", os.path.join(workspace, "single.txt")]}
    if fmt:
        obj["format"] = fmt
    st, hd, data = _bd(agent, obj)
    assert st == 200 and hd["content-type"] == ctype, data[:200]
    assert hd["content-disposition"] == 'attachment; filename="%s"' % fname
    if ctype == "application/gzip":
        data = gzip.decompress(data)
    tf = tarfile.open(fileobj=io.BytesIO(data))
    m = _members(tf)
    assert set(m) == {"proj", "proj/a.txt", "proj/sub", "proj/sub/b.bin", "proj/emptydir",
                      "proj/ln", "single.txt"}
    assert tf.extractfile(m["proj/a.txt"]).read() == b"alpha"
    assert tf.extractfile(m["proj/sub/b.bin"]).read() == bytes(range(256)) * 10
    assert m["proj/ln"].issym() and m["proj/ln"].linkname == "a.txt"
    assert m["proj/emptydir"].isdir()


def test_batch_download_whole_workspace(agent, workspace):
    _download_tree(workspace)
    st, hd, data = _bd(agent, {"paths": ["."], "format": "tar"})
    names = set(_members(tarfile.open(fileobj=io.BytesIO(data))))
    assert "single.txt" in names and "proj/sub/b.bin" in names
    assert not any(n.startswith("./") or n.startswith("/") for n in names)


def test_batch_download_multipart(agent, workspace):
    _download_tree(workspace)
    st, hd, data = _bd(agent, {"paths": ["proj", "single.txt"], "format": "multipart"})
    assert st == 200 and hd["content-type"].startswith("multipart/mixed; boundary=")
    assert hd["content-disposition"] == 'attachment; filename="download.multipart"'
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + hd["content-type"].encode() + b"\r\n\r\n" + data)
    got = {}
    for part in msg.iter_parts():
        assert part.get_content_type() == "application/octet-stream"
        fn = part.get_param("filename", header="content-disposition")
        got[fn] = part.get_payload(decode=True)
    j = lambda rel: os.path.join(workspace, rel)
    assert got == {j("proj/a.txt"): b"alpha", j("proj/sub/b.bin"): bytes(range(256)) * 10,
                   j("proj/ln"): b"alpha", j("single.txt"): b"one"}
    assert data.endswith(b"--\r\n")
    st, hd, data2 = _bd(agent, {"paths": ["single.txt"], "format": "mixed"})
    assert hd["content-type"].startswith("multipart/mixed")


def test_batch_download_errors(agent, workspace):
    put(workspace, "x")
    r = json.loads(_bd(agent, {"paths": []})[2])
    assert r == {"status": 1422, "message": "No paths provided"}
    r = json.loads(_bd(agent, {"paths": ["x", "./missing.txt"]})[2])
    assert r == {"status": 1404, "message": "File not found: ./missing.txt"}
    st, hd, data = _bd(agent, {"format": "tar"})
    assert st == 422
    st, hd, data = _bd(agent, {"paths": "x"})
    assert st == 422


# ---- search / find / replace ---------------------------------------------------------------------

def _search_tree(ws):
    put(ws, "src/Config.ts", b"export const config = 1;\n")
    put(ws, "src/app/myconfig.json", b'{"k": "needle"}')
    put(ws, "README.md", b"Project needle readme\n")
    put(ws, ".hiddenconfig", b"needle")            # hidden files are included
    put(ws, "node_modules/pkg/config.js", b"needle")  # skipped dir
    put(ws, ".git/config", b"needle")                 # hidden dir skipped
    put(ws, "build/config.out", b"needle")            # skipped dir
    put(ws, "img.png", b"\x89PNG\r\n\x1a\n\x00\x00needle")  # binary
    put(ws, "latin1.txt", "café needle".encode("latin-1"))  # not UTF-8
    put(ws, "ctrl.txt", b"\x01\x02\x03\x04needle")          # too many control chars
    put(ws, "empty.txt", b"")
    put(ws, "big.txt", b"line\n" * 20000 + b"the needle is here\n")  # > 32 KiB, line scan
    put(ws, "bigbad.txt", b"a" * 40000 + b"\n\xff\xfe\nneedle\n")     # invalid line first
    put(ws, "ÜBER.txt", b"umlaut")
    os.symlink("README.md", os.path.join(ws, "config-link"))


def test_search(agent, workspace):
    _search_tree(workspace)
    r = agent.api("POST", "/api/v1/files/search", {"dir": "", "pattern": "CONFIG"})
    assert set(r) == {"status", "message", "files"}
    j = lambda rel: os.path.join(workspace, rel)
    assert sorted(r["files"]) == sorted([j("src/Config.ts"), j("src/app/myconfig.json"),
                                         j(".hiddenconfig")])
    r = agent.api("POST", "/api/v1/files/search", {"dir": "  src/app ", "pattern": "JSON"})
    assert r["files"] == [j("src/app/myconfig.json")]
    r = agent.api("POST", "/api/v1/files/search", {"dir": ".", "pattern": "über"})
    assert r["files"] == [j("ÜBER.txt")]
    r = agent.api("POST", "/api/v1/files/search", {"dir": ALIAS, "pattern": "nothing-matches"})
    assert r["files"] == []


def test_search_errors(agent, workspace):
    put(workspace, "f")
    r = agent.api("POST", "/api/v1/files/search", {"dir": ".", "pattern": ""})
    assert r == {"status": 1422, "message": "Pattern cannot be empty"}
    r = agent.api("POST", "/api/v1/files/search", {"dir": "nope", "pattern": "x"})
    assert r == {"status": 1404,
                 "message": "Directory not found: " + os.path.join(workspace, "nope")}
    r = agent.api("POST", "/api/v1/files/search", {"dir": "f", "pattern": "x"})
    assert r == {"status": 1422,
                 "message": "Path is not a directory: " + os.path.join(workspace, "f")}
    st, hd, data = agent.post_json("/api/v1/files/search", {"pattern": "x"})
    assert st == 422


def test_find(agent, workspace):
    _search_tree(workspace)
    r = agent.api("POST", "/api/v1/files/find", {"dir": ".", "keyword": "needle"})
    j = lambda rel: os.path.join(workspace, rel)
    assert sorted(r["files"]) == sorted([j("src/app/myconfig.json"), j("README.md"),
                                         j(".hiddenconfig"), j("big.txt")])
    r = agent.api("POST", "/api/v1/files/find", {"dir": "src", "keyword": "Needle"})
    assert r["files"] == []  # case-sensitive
    r = agent.api("POST", "/api/v1/files/find", {"dir": ".", "keyword": "line\nline"})
    assert r["files"] == []  # only in the big file, which is scanned line by line
    r = agent.api("POST", "/api/v1/files/find", {"dir": ".", "keyword": ""})
    assert r == {"status": 1422, "message": "Keyword cannot be empty"}
    r = agent.api("POST", "/api/v1/files/find", {"dir": "nope", "keyword": "x"})
    assert r["status"] == 1404


def test_replace(agent, workspace):
    put(workspace, "a.txt", b"foo bar foo foofoo", 0o640)
    put(workspace, "u.txt", "naïve café naïve".encode())
    put(workspace, "none.txt", b"nothing here")
    put(workspace, "bin.png", b"\x89PNG\x00\x00foo")
    put(workspace, "latin.txt", "foo café".encode("latin-1"))
    os.mkdir(os.path.join(workspace, "dir"))
    os.symlink("a.txt", os.path.join(workspace, "link.txt"))
    files = ["./a.txt", "u.txt", "none.txt", "missing.txt", "dir", "bin.png", "latin.txt"]
    r = agent.api("POST", "/api/v1/files/replace", {"files": files, "from": "foo", "to": "X"})
    assert set(r) == {"status", "message", "results"}
    res = {x["file"]: x for x in r["results"]}
    assert [x["file"] for x in r["results"]] == files
    assert res["./a.txt"] == {"file": "./a.txt", "status": "success", "replacements": 4}
    assert read(workspace, "a.txt") == b"X bar X XX"
    assert stat.S_IMODE(os.stat(os.path.join(workspace, "a.txt")).st_mode) == 0o640
    assert res["u.txt"] == {"file": "u.txt", "status": "skipped", "replacements": 0}
    assert res["none.txt"] == {"file": "none.txt", "status": "skipped", "replacements": 0}
    assert res["missing.txt"] == {"file": "missing.txt", "status": "error", "replacements": 0,
                                  "error": "File not found"}
    assert res["dir"] == {"file": "dir", "status": "error", "replacements": 0,
                          "error": "Path is not a file"}
    assert res["bin.png"]["status"] == "skipped" and "Binary" in res["bin.png"]["error"]
    assert res["latin.txt"] == {"file": "latin.txt", "status": "skipped", "replacements": 0,
                                "error": "Non-UTF-8 text file"}
    r = agent.api("POST", "/api/v1/files/replace",
                  {"files": ["u.txt", "link.txt"], "from": "naïve", "to": "ñ"})
    assert [x["status"] for x in r["results"]] == ["success", "skipped"]
    assert r["results"][0]["replacements"] == 2
    assert read(workspace, "u.txt") == "ñ café ñ".encode()
    # through a symlink inside the workspace: the target is rewritten, the link stays
    r = agent.api("POST", "/api/v1/files/replace", {"files": ["link.txt"], "from": "bar",
                                                    "to": "BAR"})
    assert r["results"][0]["status"] == "success"
    assert os.path.islink(os.path.join(workspace, "link.txt"))
    assert read(workspace, "a.txt") == b"X BAR X XX"
    assert leftovers(workspace) == []


def test_replace_errors_and_size(agent_factory, workspace):
    agent = agent_factory(extra_args=["--max-file-size=100"])
    put(workspace, "big.txt", b"a" * 101)
    r = agent.api("POST", "/api/v1/files/replace", {"files": ["big.txt"], "from": "a", "to": "b"})
    assert r["results"] == [{"file": "big.txt", "status": "skipped", "replacements": 0,
                             "error": "File too large (101 bytes, max 100 bytes)"}]
    r = agent.api("POST", "/api/v1/files/replace", {"files": ["big.txt"], "from": "", "to": "b"})
    assert r == {"status": 1422, "message": "'from' string cannot be empty"}
    st, hd, data = agent.post_json("/api/v1/files/replace", {"files": "big.txt", "from": "a",
                                                             "to": "b"})
    assert st == 422


# ---- big transfers -------------------------------------------------------------------------------

def test_64mib_roundtrip_sha256(agent, workspace, tmp_path):
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(64):
            blk = hashlib.sha256(b"%d" % i).digest() * (1 << 15)  # 1 MiB, not constant
            f.write(blk)
            h.update(blk)
    want = h.hexdigest()
    size = 64 << 20
    c = agent.conn(timeout=120)
    try:
        with open(src, "rb") as f:
            c.request("POST", "/api/v1/files/write?path=big%2Fraw.bin", body=f,
                      headers={"Authorization": "Bearer " + agent.token,
                               "Content-Type": "application/octet-stream",
                               "Content-Length": str(size)})
            r = json.loads(c.getresponse().read())
        assert r["status"] == 0 and r["size"] == size
        assert sha256_file(os.path.join(workspace, "big/raw.bin")) == want
        c.request("GET", "/api/v1/files/download?path=big%2Fraw.bin",
                  headers={"Authorization": "Bearer " + agent.token})
        resp = c.getresponse()
        assert resp.status == 200 and int(resp.getheader("content-length")) == size
        dh = hashlib.sha256()
        while True:
            blk = resp.read(1 << 20)
            if not blk:
                break
            dh.update(blk)
        assert dh.hexdigest() == want
    finally:
        c.close()
    # the same file through batch-upload (multipart, streamed)
    with open(src, "rb") as f:
        data = f.read()
    r = batch_upload(agent, [("big/mp.bin", data)])
    assert r["successCount"] == 1 and r["results"][0]["size"] == size
    assert sha256_file(os.path.join(workspace, "big/mp.bin")) == want
    # and back through batch-download (tar)
    st, hd, tdata = _bd(agent, {"paths": ["big/mp.bin"], "format": "tar"})
    tf = tarfile.open(fileobj=io.BytesIO(tdata))
    assert hashlib.sha256(tf.extractfile("big/mp.bin").read()).hexdigest() == want
