"""Helpers for the /fs/v1 tests (test_fsapi*.py): a small client over one keep-alive connection."""
import json
import os
import stat as pystat

import websocket

BOOT_RE = r"^[0-9a-f]{32}$"


class FsError(Exception):
    def __init__(self, status, body, headers):
        self.status = status
        self.headers = headers
        try:
            self.body = json.loads(body)
        except ValueError:
            self.body = {"error": None, "raw": body}
        self.errno = self.body.get("error")
        super().__init__("%s %s" % (status, self.body))


class Fs:
    """Calls /fs/v1 routes; raises FsError on a non-2xx reply."""

    def __init__(self, agent):
        self.agent = agent
        self.c = agent.conn()
        self.last_headers = None

    def close(self):
        self.c.close()

    def raw(self, method, route, body=None, headers=None, **query):
        q = {k: v for k, v in query.items() if v is not None}
        st, hd, data = self.agent.request(method, "/fs/v1/" + route, body=body,
                                          headers=headers, query=q or None, conn=self.c)
        self.last_headers = hd
        return st, hd, data

    def call(self, method, route, body=None, headers=None, **query):
        st, hd, data = self.raw(method, route, body=body, headers=headers, **query)
        if st >= 300:
            raise FsError(st, data, hd)
        ct = hd.get("content-type", "")
        if ct.startswith("application/json"):
            return json.loads(data)
        return data

    def get(self, route, **q):
        return self.call("GET", route, **q)

    def post(self, route, **q):
        return self.call("POST", route, body=b"", **q)

    def write(self, path, data, headers=None, **q):
        return self.call("PUT", "write", body=data, headers=headers, path=path, **q)

    def read(self, path, headers=None, **q):
        return self.call("GET", "read", headers=headers, path=path, **q)

    def err(self, method, route, body=None, headers=None, **q):
        """Expects a failure; returns (errno name, http status)."""
        st, hd, data = self.raw(method, route, body=body, headers=headers, **q)
        assert st >= 400, (st, data)
        assert hd.get("content-type", "").startswith("application/json"), (hd, data)
        j = json.loads(data)
        assert set(j) == {"error", "message"}, j
        assert j["message"], j
        return j["error"], st

    def batch(self, ops, blob=b""):
        body = json.dumps({"ops": ops}).encode() + b"\n" + blob
        st, hd, data = self.raw("POST", "batch", body=body,
                                headers={"Content-Type": "application/x-dbx-batch"})
        assert st == 200, (st, data)
        line, _, rblob = data.partition(b"\n")
        return json.loads(line)["results"], rblob


def check_attr(attr, path, follow=False):
    """Compares an attr object with os.lstat (or os.stat) of the real file."""
    st = os.stat(path) if follow else os.lstat(path)
    assert attr["ino"] == st.st_ino
    assert attr["mode"] == st.st_mode
    assert attr["nlink"] == st.st_nlink
    assert attr["uid"] == st.st_uid and attr["gid"] == st.st_gid
    assert attr["size"] == st.st_size
    assert attr["blocks"] == st.st_blocks
    assert attr["rdev"] == st.st_rdev
    for k in ("mtime", "ctime"):
        ns = getattr(st, "st_" + k + "_ns")
        assert attr[k] == [ns // 10**9, ns % 10**9], (k, attr[k], ns)
    types = {pystat.S_IFREG: "file", pystat.S_IFDIR: "dir", pystat.S_IFLNK: "symlink",
             pystat.S_IFIFO: "fifo", pystat.S_IFSOCK: "socket"}
    assert attr["type"] == types[pystat.S_IFMT(st.st_mode)]
    assert attr["ver"] == "%x.%d.%d" % (st.st_ino, st.st_mtime_ns, st.st_size)
    if pystat.S_ISLNK(st.st_mode):
        assert attr["target"] == os.readlink(path)
    else:
        assert "target" not in attr


def open_session(agent, timeout=10):
    """Opens an events WebSocket; returns (ws, session id) from the hello frame."""
    ws = websocket.create_connection(
        "ws://%s:%d/fs/v1/events" % (agent.host, agent.port),
        header=["Authorization: Bearer " + agent.token], timeout=timeout)
    hello = json.loads(ws.recv())
    assert hello["kind"] == "hello", hello
    return ws, hello["session"]
