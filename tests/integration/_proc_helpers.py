"""Helpers for the process, session, WebSocket and ports tests (stdlib only)."""
import json
import os
import re
import socket
import time

TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
ID_RE = re.compile(r"^[_\-0-9a-z]{8}$")


def exec_bg(agent, obj):
    """POST /process/exec; returns the envelope (asserting success)."""
    env = agent.api("POST", "/api/v1/process/exec", obj)
    assert env["status"] == 0, env
    return env


def exec_sync(agent, obj):
    return agent.api("POST", "/api/v1/process/exec-sync", obj)


def status(agent, pid):
    return agent.api("GET", "/api/v1/process/%s/status" % pid)


def wait_done(agent, pid, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(agent, pid)
        if st["processStatus"] != "running":
            return st
        time.sleep(0.02)
    raise AssertionError("process %s still running" % pid)


def pid_alive(pid):
    """True while @pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: exiting while being read
        return False
    state = data[data.rindex(")") + 2]
    return state not in "ZX"


def group_members(pgid):
    """Live pids whose process group is @pgid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        if rest[0] in "ZX":
            continue
        if int(rest[2]) == pgid:
            out.append(int(d))
    return out


def wait_gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return
        time.sleep(0.02)
    raise AssertionError("still alive: %r" % [p for p in pids if pid_alive(p)])


def wait_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                data = f.read()
            if data.endswith("\n"):
                return data
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError("file %s never written" % path)


class RawHTTP:
    """A raw HTTP/1.1 client over one socket: sends a request and reads the (chunked) response
    incrementally, so tests can watch a stream that never ends or disconnect on purpose."""

    def __init__(self, agent, timeout=10.0):
        self.sock = socket.create_connection((agent.host, agent.port), timeout=timeout)
        self.agent = agent
        self.buf = b""
        self.status = None
        self.headers = {}
        self.chunked = False
        self.body = b""
        self.eof = False

    def send(self, method, path, body=None, headers=None, auth=True):
        h = {"Host": "x"}
        if auth:
            h["Authorization"] = "Bearer " + self.agent.token
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        req = "%s %s HTTP/1.1\r\n" % (method, path)
        req += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        self.sock.sendall(req.encode() + (body or b""))

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError("connection closed before the response headers")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "") == "chunked"
        return self.status

    def _decode(self):
        """Moves complete chunks from buf to body; returns False at the last chunk."""
        while True:
            if not self.chunked:
                self.body += self.buf
                self.buf = b""
                return True
            if b"\r\n" not in self.buf:
                return True
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return True
            if size == 0:
                self.buf = rest
                return False
            self.body += rest[:size]
            self.buf = rest[size + 2:]

    def read_until(self, pred, timeout=10.0):
        """Reads until pred(body) is true; returns the body so far."""
        deadline = time.monotonic() + timeout
        while not pred(self.body):
            if not self._decode():
                break
            if pred(self.body):
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise AssertionError("timed out; body so far: %r" % self.body[-2000:])
            if not self._fill():
                break
        return self.body

    def read_all(self, timeout=30.0):
        """Reads to the end of the response (last chunk or EOF)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._decode():
                return self.body
            if time.monotonic() > deadline:
                raise AssertionError("response did not end; body so far: %r" % self.body[-2000:])
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not self._fill():
                return self.body

    def quiet_for(self, secs):
        """True if nothing (no data, no EOF) arrives within @secs."""
        self.sock.settimeout(secs)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        self.buf += data
        return False

    def close(self):
        self.sock.close()


def sse_events(body):
    """Parses an SSE body into [(event or None, data)], joining data lines with '\\n'."""
    out = []
    text = body.decode()
    for block in text.split("\n\n"):
        if not block:
            continue
        event, data, comment = None, [], True
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            comment = False
            k, _, v = line.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "event":
                event = v
            elif k == "data":
                data.append(v)
        if not comment:
            out.append((event, "\n".join(data)))
    return out


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def lean_asan_env():
    """Agent environment for RSS-bound tests: in a sanitizer build, a small quarantine so that
    freed memory is reused (ASan's default 256 MiB quarantine looks like growth). No effect on
    a normal build."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":") if o]
    opts += ["quarantine_size_mb=1", "thread_local_quarantine_size_kb=64"]
    return {"ASAN_OPTIONS": ":".join(opts)}
