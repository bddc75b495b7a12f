"""Path safety of the file routes (DESIGN.md §1.4, agent-api.md §6).

Every route is driven with paths that try to leave the workspace: `..`, absolute paths
outside it, and symlinks inside it that point outside (to a file and to a directory). Each
must be refused with a clear error (or, for walks, never look through the link), and a sentinel
directory outside the workspace must be exactly as before: same names, contents, modes, owners
and mtimes. Absolute paths under the workspace and under /home/devbox/project are accepted."""
import gzip
import io
import json
import os
import tarfile

import pytest

from _files_helpers import (ALIAS, SECRET, api_raw, batch_upload, multipart, sentinel, snapshot,
                            write_json, write_multipart, write_raw)

assert sentinel  # the fixture is used by name


@pytest.fixture
def env(agent, workspace, sentinel):
    """The workspace holds links out: lnfile -> sentinel/secret, lndir -> sentinel,
    relout -> ../<sentinel>/secret (relative), and an ordinary file."""
    os.symlink(os.path.join(sentinel, "secret"), os.path.join(workspace, "lnfile"))
    os.symlink(sentinel, os.path.join(workspace, "lndir"))
    rel = os.path.relpath(os.path.join(sentinel, "secret"), workspace)
    os.symlink(rel, os.path.join(workspace, "relout"))
    os.makedirs(os.path.join(workspace, "inner"))
    with open(os.path.join(workspace, "inner", "ok.txt"), "wb") as f:
        f.write(b"inside needle\n")
    before = snapshot(sentinel)
    yield agent, workspace, sentinel
    assert snapshot(sentinel) == before, "something outside the workspace was touched"


def escapes(sentinel, name="secret"):
    """Paths that name something outside (or through a link out of) the workspace."""
    depth = "../" * 8
    return [depth + sentinel.lstrip("/") + "/" + name,   # .. climbing
            "inner/../../" + os.path.basename(sentinel) + "/" + name,
            os.path.join(sentinel, name),                  # absolute outside
            ALIAS + "/../../../" + sentinel.lstrip("/") + "/" + name,
            "lndir/" + name]                               # through a dir symlink


def refused(r):
    assert r["status"] == 1403, r
    msg = r["message"].lower()
    assert "workspace" in msg or "symbolic link" in msg, r
    assert SECRET.decode() not in r["message"]


# ---- reading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["read", "download"])
def test_read_refused(env, route):
    agent, ws, sen = env
    for p in escapes(sen) + ["lnfile", "relout"]:
        st, hd, body = agent.get("/api/v1/files/" + route, query={"path": p})
        assert SECRET not in body, p
        refused(json.loads(body))


def test_list_refused(env):
    agent, ws, sen = env
    for p in ["..", "../..", "/", sen, "lndir", "lndir/sub", "inner/../.."]:
        r = agent.api("GET", "/api/v1/files/list", query={"path": p})
        refused(r)
    # the links themselves are listed as entries, not followed
    r = agent.api("GET", "/api/v1/files/list")
    by = {f["name"]: f for f in r["files"]}
    assert by["lndir"]["isDir"] is False
    assert by["lnfile"]["size"] == len(os.path.join(sen, "secret"))  # the link's own size
    assert "secret" not in by


def test_absolute_inside_accepted(env):
    agent, ws, sen = env
    for p in (os.path.join(ws, "inner/ok.txt"), ALIAS + "/inner/ok.txt",
              ALIAS + "/inner/../inner/ok.txt"):
        st, hd, body = agent.get("/api/v1/files/read", query={"path": p})
        assert body == b"inside needle\n", p


# ---- writing ------------------------------------------------------------------------------------

def test_write_refused_all_modes(env):
    agent, ws, sen = env
    targets = escapes(sen, "secret") + escapes(sen, "newfile") + \
        ["lnfile", "relout", "lndir/sub/deep.txt", "lndir/newdir/x"]
    for p in targets:
        refused(write_json(agent, p, "pwned"))
        refused(write_raw(agent, p, b"pwned"))
        refused(write_multipart(agent, [("path", None, p.encode(), None),
                                        ("file", "x", b"pwned", None)]))
        refused(write_multipart(agent, [("file", p, b"pwned", None)]))
    assert not os.path.exists(os.path.join(ws, "newdir"))


def test_batch_upload_outside_is_per_file_error(env):
    agent, ws, sen = env
    names = escapes(sen, "up") + ["lnfile", "lndir/sub/deep.txt", "relout"]
    r = batch_upload(agent, [("good.txt", b"g")] + [(n, b"pwned") for n in names] +
                     [("inner/good2.txt", b"g2")])
    assert r["status"] == 0
    assert r["totalFiles"] == len(names) + 2 and r["successCount"] == 2
    res = r["results"]
    assert res[0]["success"] and res[-1]["success"]
    for x, n in zip(res[1:-1], names):
        assert x["success"] is False and x["path"] == n and x["error"]
        assert "workspace" in x["error"].lower() or "symbolic link" in x["error"].lower()


# ---- delete / move / rename / chmod ------------------------------------------------------------

def test_delete_refused(env):
    agent, ws, sen = env
    for p in escapes(sen) + escapes(sen, "sub") + ["lndir/sub"]:
        for rec in (False, True):
            refused(agent.api("POST", "/api/v1/files/delete", {"path": p, "recursive": rec}))


def test_delete_removes_links_not_targets(env):
    agent, ws, sen = env
    os.makedirs(os.path.join(ws, "tree/a"))
    os.symlink(sen, os.path.join(ws, "tree/a/out"))
    os.symlink(os.path.join(sen, "secret"), os.path.join(ws, "tree/out-file"))
    ok = {"status": 0, "message": "success", "success": True}
    assert agent.api("POST", "/api/v1/files/delete", {"path": "tree", "recursive": True}) == ok
    assert not os.path.lexists(os.path.join(ws, "tree"))
    assert agent.api("POST", "/api/v1/files/delete", {"path": "lndir", "recursive": True}) == ok
    assert agent.api("POST", "/api/v1/files/delete", {"path": "lnfile"}) == ok
    assert not os.path.lexists(os.path.join(ws, "lndir"))


def test_move_and_rename_refused(env):
    agent, ws, sen = env
    with open(os.path.join(ws, "mine.txt"), "wb") as f:
        f.write(b"mine")
    for p in escapes(sen) + escapes(sen, "sub"):
        refused(agent.api("POST", "/api/v1/files/move", {"source": p, "destination": "got"}))
        refused(agent.api("POST", "/api/v1/files/move",
                          {"source": "mine.txt", "destination": p, "overwrite": True}))
        refused(agent.api("POST", "/api/v1/files/rename", {"oldPath": p, "newPath": "got"}))
        refused(agent.api("POST", "/api/v1/files/rename",
                          {"oldPath": "mine.txt", "newPath": p}))
    assert not os.path.exists(os.path.join(ws, "got"))
    # moving the workspace root, or over it, is refused too
    for src, dst in (("", "x"), ("mine.txt", "."), ("mine.txt", ws)):
        r = agent.api("POST", "/api/v1/files/move",
                      {"source": src, "destination": dst, "overwrite": True})
        assert r["status"] == 1403, (src, dst, r)
    # a link out may itself be moved (only the link changes)
    ok = {"status": 0, "message": "success", "success": True}
    assert agent.api("POST", "/api/v1/files/rename", {"oldPath": "lnfile", "newPath": "ln2"}) == ok
    assert os.readlink(os.path.join(ws, "ln2")) == os.path.join(sen, "secret")
    with open(os.path.join(ws, "mine.txt"), "rb") as f:
        assert f.read() == b"mine"


def test_chmod_refused_and_walk_stays_inside(env):
    agent, ws, sen = env
    for p in escapes(sen) + ["lnfile", "lndir", "relout"]:
        refused(agent.api("POST", "/api/v1/files/chmod", {"path": p, "mode": "777"}))
    uid = os.getuid()
    r = agent.api("POST", "/api/v1/files/chmod",
                  {"path": ".", "mode": "700", "recursive": True, "owner": str(uid)})
    assert r["status"] == 0
    assert os.stat(os.path.join(ws, "inner", "ok.txt")).st_mode & 0o777 == 0o700
    os.chmod(ws, 0o755)


# ---- archives -----------------------------------------------------------------------------------

def test_batch_download_refused(env):
    agent, ws, sen = env
    for p in escapes(sen) + escapes(sen, "sub") + ["lndir/sub"]:
        for fmt in ("tar.gz", "tar", "multipart"):
            st, hd, data = agent.post_json("/api/v1/files/batch-download",
                                           {"paths": ["inner", p], "format": fmt})
            assert SECRET not in data
            refused(json.loads(data))


def test_batch_download_stores_links_not_targets(env):
    agent, ws, sen = env
    for fmt in ("tar.gz", "tar"):
        st, hd, data = agent.post_json("/api/v1/files/batch-download",
                                       {"paths": [".", "lnfile", "lndir"], "format": fmt})
        raw = gzip.decompress(data) if fmt == "tar.gz" else data
        assert SECRET not in raw
        m = {x.name: x for x in tarfile.open(fileobj=io.BytesIO(raw)).getmembers()}
        assert m["lnfile"].issym() and m["lndir"].issym() and m["relout"].issym()
        assert "lndir/secret" not in m and "inner/ok.txt" in m
    st, hd, data = agent.post_json("/api/v1/files/batch-download",
                                   {"paths": [".", "lnfile", "relout"], "format": "multipart"})
    assert SECRET not in data and b"inside needle" in data


# ---- search / find / replace --------------------------------------------------------------------

def test_search_find_stay_inside(env):
    agent, ws, sen = env
    for route, key in (("search", "pattern"), ("find", "keyword")):
        for d in ["..", sen, "lndir", "lndir/sub", "inner/../.."]:
            refused(agent.api("POST", "/api/v1/files/" + route, {"dir": d, key: "secret"}))
    r = agent.api("POST", "/api/v1/files/search", {"dir": ".", "pattern": "t"})
    assert all(p.startswith(ws + "/") for p in r["files"]) and r["files"]
    assert not any("secret" in p or "deep" in p for p in r["files"])
    r = agent.api("POST", "/api/v1/files/find", {"dir": ".", "keyword": "TOP-SECRET"})
    assert r["files"] == []
    r = agent.api("POST", "/api/v1/files/find", {"dir": ".", "keyword": "needle"})
    assert r["files"] == [os.path.join(ws, "inner/ok.txt")]


def test_replace_refused_per_file(env):
    agent, ws, sen = env
    files = escapes(sen) + ["lnfile", "relout", "inner/ok.txt"]
    r = agent.api("POST", "/api/v1/files/replace",
                  {"files": files, "from": "TOP", "to": "PWNED"})
    res = {x["file"]: x for x in r["results"]}
    for p in files[:-1]:
        assert res[p]["status"] == "error" and res[p]["replacements"] == 0, res[p]
        assert "workspace" in res[p]["error"].lower() or \
            "symbolic link" in res[p]["error"].lower(), res[p]
    assert res["inner/ok.txt"]["status"] == "skipped"
