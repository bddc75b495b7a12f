"""Helpers for the change-event tests: a small client for the /fs/v1/events WebSocket."""
import json
import os
import stat
import time

import websocket


class Events:
    """One /fs/v1/events connection. Frames are read with a deadline, never with sleeps."""

    def __init__(self, agent, since=None, boot=None, timeout=10, data=False):
        q = ["data=1"] if data else []
        if since is not None:
            q.append("since=%s" % since)
        if boot is not None:
            q.append("boot=%s" % boot)
        url = "ws://%s:%d/fs/v1/events%s" % (agent.host, agent.port,
                                             ("?" + "&".join(q)) if q else "")
        self.ws = websocket.create_connection(
            url, header=["Authorization: Bearer " + agent.token], timeout=timeout)
        self.hello = self.recv(timeout)
        assert self.hello["kind"] == "hello", self.hello
        self.seen = []

    def recv(self, timeout=10):
        """The next frame as a dict; {"kind": "closed"} once the agent closed the socket."""
        self.ws.settimeout(timeout)
        try:
            data = self.ws.recv()
        except websocket.WebSocketConnectionClosedException:
            data = ""
        if not data:
            return {"kind": "closed"}
        return json.loads(data)

    def until(self, pred, timeout=10, what="event"):
        """Reads events until pred(event) is true; returns every event read (the last matches)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %s; got %r" % (what, got[-20:]))
            try:
                ev = self.recv(left)
            except (websocket.WebSocketTimeoutException, TimeoutError):
                raise AssertionError("timed out waiting for %s; got %r" % (what, got[-20:]))
            got.append(ev)
            if ev["kind"] != "closed":
                self.seen.append(ev)
            if pred(ev):
                return got
            if ev["kind"] == "closed":
                raise AssertionError("closed while waiting for %s; got %r" % (what, got[-20:]))

    def until_marker(self, workspace, timeout=20):
        """Creates a unique marker file and reads until its create event: everything caused
        before it has been delivered by then (events are in seq order)."""
        name = ".marker-%d" % time.monotonic_ns()
        open(os.path.join(workspace, name), "w").close()
        got = self.until(lambda e: e.get("kind") == "create" and e.get("path") == name,
                         timeout, "marker " + name)
        os.unlink(os.path.join(workspace, name))
        return [e for e in got if not e.get("path", "").startswith(".marker-")]

    def settled_seq(self, workspace, agent, tries=20):
        """The seq once everything done so far is numbered, even if this (live) client gets
        overflowed by a tiny ring: retried on fresh connections."""
        for _ in range(tries):
            try:
                self.until_marker(workspace)
                return max(e["seq"] for e in self.seen)
            except AssertionError:
                self.close()
                fresh = Events(agent)
                self.ws, self.hello, self.seen = fresh.ws, fresh.hello, []
        raise AssertionError("the event stream never settled")

    def close(self):
        self.ws.close()


def check_attr(attr, path):
    """The event's attr matches os.lstat(path) for the fields that cannot drift."""
    st = os.lstat(path)
    assert attr["ino"] == st.st_ino
    assert attr["mode"] == st.st_mode
    assert attr["uid"] == st.st_uid and attr["gid"] == st.st_gid
    assert attr["nlink"] == st.st_nlink
    assert attr["size"] == st.st_size
    assert attr["mtime"] == [st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9]
    kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
    assert attr["type"] == kind[stat.S_IFMT(st.st_mode)]
    assert attr["ver"] == "%x.%d.%d" % (st.st_ino, st.st_mtime_ns, st.st_size)
    if stat.S_ISLNK(st.st_mode):
        assert attr["target"] == os.readlink(path)


def paths_of(events, kinds):
    out = set()
    for e in events:
        if e.get("kind") in kinds:
            out.add(e.get("to") or e.get("path"))
    return out
