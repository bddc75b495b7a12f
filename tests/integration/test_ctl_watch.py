"""devboxctl watch against a real agent: changes made in the workspace (by a process on the
machine, as inside a devbox) appear as "<seq> <kind> <path> [-> to]" lines or NDJSON, --count
and PATH work, SIGINT/SIGTERM end it with status 0, and it reconnects when the agent restarts
on the same port.  $DEVBOX_CTL overrides the binary."""
import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BUILD, SANITIZER_RE, wait_until

CTL = os.environ.get("DEVBOX_CTL") or os.path.join(BUILD, "ctl", "devboxctl")
LINE_RE = re.compile(r"^(\d+) (create|modify|attrib|delete|rename|mkdir|rmdir|overflow)"
                     r"(?: (.+?))?(?: -> (.+))?$")


def ctl_env(agent, token=None):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token if token is None else token
    return env


class Watch:
    """A running `devboxctl watch`, its stdout lines collected by a thread."""

    def __init__(self, agent, args=(), base=None, gopts=()):
        self.proc = subprocess.Popen([CTL] + list(gopts) + ["watch"] + list(args) +
                                     [base or agent.base], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=ctl_env(agent))
        self.lines = queue.Queue()
        self.seen = []
        self.err = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        self.errq = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errq), daemon=True).start()

    @staticmethod
    def _read(f, q):
        for line in f:
            q.put(line.decode())
        q.put(None)

    def next_line(self, timeout):
        line = self.lines.get(timeout=timeout)
        assert line is not None, "watch ended early: %r" % self.stderr()
        line = line.rstrip("\n")
        self.seen.append(line)
        return line

    def until(self, pred, timeout=20, what="a line"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %s; seen %r; stderr %r"
                                     % (what, self.seen[-20:], self.stderr()))
            try:
                line = self.next_line(left)
            except queue.Empty:
                continue
            if pred(line):
                return line

    def stderr(self):
        while True:
            try:
                item = self.errq.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.err.append(item)
        return "".join(self.err)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return rc

    def check_clean(self):
        self.proc.wait(timeout=20)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                item = self.errq.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if item is None:
                break
            self.err.append(item)
        text = "".join(self.err)
        assert not SANITIZER_RE.search(text), "sanitizer report from devboxctl:\n" + text


@pytest.fixture
def watch_factory(agent):
    made = []

    def make(*args, **kw):
        w = Watch(agent, *args, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(signal.SIGKILL)
        w.check_clean()


def sync_with(w, workspace, prefix="probe-", timeout=20):
    """Creates new probe files until the watch reports one: from then on it is live."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        name = "%s%d" % (prefix, n)
        while os.path.exists(os.path.join(workspace, name)):
            n += 1
            name = "%s%d" % (prefix, n)
        open(os.path.join(workspace, name), "w").close()
        try:
            w.until(lambda l: l.endswith(" create " + name) or
                    ('"kind":"create","path":"%s"' % name) in l, timeout=0.5, what="probe")
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        n += 1


def parse(line):
    m = LINE_RE.match(line)
    assert m, line
    return int(m.group(1)), m.group(2), m.group(3), m.group(4)


def test_watch_prints_changes(agent, watch_factory):
    w = watch_factory()
    sync_with(w, agent.workspace)
    ws = agent.workspace
    with open(os.path.join(ws, "a.txt"), "w") as f:
        f.write("hello")
    os.rename(os.path.join(ws, "a.txt"), os.path.join(ws, "b.txt"))
    os.mkdir(os.path.join(ws, "dir"))
    os.unlink(os.path.join(ws, "b.txt"))
    os.rmdir(os.path.join(ws, "dir"))
    got = []
    w.until(lambda l: got.append(parse(l)) or (got[-1][1], got[-1][2]) == ("rmdir", "dir"),
            what="rmdir dir")
    kinds = [(k, p, to) for _, k, p, to in got]
    assert ("create", "a.txt", None) in kinds
    assert ("rename", "a.txt", "b.txt") in kinds
    assert ("mkdir", "dir", None) in kinds
    assert ("delete", "b.txt", None) in kinds
    assert any(k == "modify" and p == "a.txt" for k, p, _ in kinds)
    order = [k for k, _, _ in kinds]
    assert order.index("create") < order.index("rename") < order.index("delete")
    seqs = [s for s, _, _, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert w.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("where", ["global", "verb"])
def test_watch_json_lines(agent, watch_factory, where):
    w = watch_factory(gopts=["-o", "json"]) if where == "global" else watch_factory(["-o", "json"])
    sync_with(w, agent.workspace)
    ws = agent.workspace
    with open(os.path.join(ws, "j.txt"), "wb") as f:
        f.write(b"12345")
    os.symlink("j.txt", os.path.join(ws, "link"))
    objs = []
    # Renamed only once the link is reported: the create's attr is taken when the agent sees
    # the event, and must find the file still there.
    w.until(lambda l: objs.append(json.loads(l)) or objs[-1]["path"] == "link",
            what="the symlink")
    os.rename(os.path.join(ws, "j.txt"), os.path.join(ws, "k.txt"))
    w.until(lambda l: objs.append(json.loads(l)) or objs[-1]["kind"] == "rename",
            what="the rename")
    for o in objs:
        assert isinstance(o["seq"], int) and o["kind"] and isinstance(o["path"], str)
    created = [o for o in objs if o["kind"] == "create" and o["path"] == "j.txt"]
    assert created and created[0]["attr"]["type"] == "file"
    link = [o for o in objs if o["path"] == "link"]
    assert link and link[0]["attr"]["type"] == "symlink" and link[0]["attr"]["target"] == "j.txt"
    assert objs[-1]["path"] == "j.txt" and objs[-1]["to"] == "k.txt"
    assert objs[-1]["attr"]["size"] == 5
    assert w.stop(signal.SIGINT) == 0


def test_watch_path_filter_and_count(agent, watch_factory):
    ws = agent.workspace
    os.mkdir(os.path.join(ws, "sub"))
    os.mkdir(os.path.join(ws, "subway"))
    p = subprocess.Popen([CTL, "watch", "--count", "4", agent.base, "sub/"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctl_env(agent))
    lines = queue.Queue()
    threading.Thread(target=Watch._read, args=(p.stdout, lines), daemon=True).start()
    # Probe until the filtered watch is live, then make exactly the interesting changes.
    n = 0
    first = None
    deadline = time.monotonic() + 20
    while first is None:
        assert time.monotonic() < deadline, "the watch never reported sub/"
        open(os.path.join(ws, "subway", "x%d" % n), "w").close()
        open(os.path.join(ws, "sub", "probe%d" % n), "w").close()
        try:
            first = lines.get(timeout=0.5)
        except queue.Empty:
            pass
        n += 1
    # Only sub/ shows (never subway/), and the process exits 0 by itself after 4 events.
    open(os.path.join(ws, "top.txt"), "w").close()
    for i in range(5):
        open(os.path.join(ws, "sub", "f%d" % i), "w").close()
    rc = p.wait(timeout=20)
    out = [first] + [l for l in iter(lambda: lines.get(timeout=5), None)]
    err = p.stderr.read().decode()
    assert not SANITIZER_RE.search(err), err
    assert rc == 0, err
    assert len(out) == 4, out
    for line in out:
        _, kind, path, _ = parse(line.rstrip("\n"))
        assert path.startswith("sub/"), out


def test_watch_reports_overflow_and_carries_on(agent_factory, workspace):
    # A watcher that stops reading (SIGSTOP) falls behind: the agent sends overflow and drops
    # it; the watch prints the overflow line, reconnects and keeps reporting.
    ag = agent_factory(env={"DEVBOX_AGENT_EVENT_CLIENT_MAX": "4096"})
    w = Watch(ag)
    try:
        sync_with(w, workspace)
        os.mkdir(os.path.join(workspace, "many"))
        w.proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(30000):  # far more than the socket buffers hold
                open(os.path.join(workspace, "many", "f%05d-with-a-longer-name" % i), "w").close()
        finally:
            w.proc.send_signal(signal.SIGCONT)
        w.until(lambda l: parse(l)[1] == "overflow", timeout=60, what="the overflow line")
        # Live again once the backlog is through (the kernel's own inotify queue may have
        # overflowed too and dropped a change made meanwhile: probe until one shows).
        sync_with(w, workspace, prefix="after-overflow-")
        assert w.stop(signal.SIGTERM) == 0
    finally:
        w.stop(signal.SIGKILL)
        w.check_clean()


def test_watch_unreachable_and_wrong_token_255(agent):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.run([CTL, "watch", "http://127.0.0.1:%d" % port], stdin=subprocess.DEVNULL,
                       capture_output=True, env=ctl_env(agent), timeout=60)
    assert p.returncode == 255, p.stderr
    assert p.stderr.decode().startswith("devboxctl:") and p.stderr.count(b"\n") == 1
    p = subprocess.run([CTL, "watch", agent.base], stdin=subprocess.DEVNULL,
                       capture_output=True, env=ctl_env(agent, token="nope"), timeout=60)
    assert p.returncode == 255, p.stderr
    assert b"401" in p.stderr or b"token" in p.stderr, p.stderr
    assert not SANITIZER_RE.search(p.stderr.decode(errors="replace"))


def test_watch_reconnects_after_agent_restart(agent_factory, workspace):
    first = agent_factory()
    port = first.port
    w = Watch(first)
    try:
        sync_with(w, workspace)
        assert first.stop() == 0
        second = agent_factory(addr="127.0.0.1:%d" % port)
        # A new boot: the watch comes back by itself and says events may have been missed.
        sync_with(w, workspace)
        open(os.path.join(workspace, "after-restart"), "w").close()
        w.until(lambda l: l.endswith(" create after-restart"), what="an event after restart")
        err = w.stderr()
        assert "connection lost" in err and "reconnected" in err, err
        assert w.stop(signal.SIGINT) == 0
        assert second.port == port
    finally:
        w.stop(signal.SIGKILL)
        w.check_clean()


class CuttableProxy:
    """A TCP proxy in front of the agent whose connections can be cut while the port is kept
    closed, so changes happen while the watch is disconnected from a still-running agent."""

    def __init__(self, target_port):
        self.target = target_port
        self.conns = []
        self.lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.open()

    def open(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Stops listening and drops every connection."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_watch_resumes_without_loss_or_duplicates(agent):
    proxy = CuttableProxy(agent.port)
    w = Watch(agent, base="http://127.0.0.1:%d" % proxy.port)
    try:
        sync_with(w, agent.workspace)
        proxy.cut()
        wait_until(lambda: "connection lost" in w.stderr(), timeout=20,
                   what="the watch noticing the cut")
        # Changes while disconnected (the agent keeps numbering them in its ring) ...
        names = ["while-down-%d" % i for i in range(20)]
        for n in names:
            open(os.path.join(agent.workspace, n), "w").close()
        proxy.open()
        # ... are all replayed after the reconnect, once each, in order, then live ones follow.
        open(os.path.join(agent.workspace, "after"), "w").close()
        w.until(lambda l: l.endswith(" create after"), what="the live event after the replay")
        creates = [parse(l) for l in w.seen if " create while-down-" in l]
        assert [c[2] for c in creates] == names, w.seen
        seqs = [parse(l)[0] for l in w.seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), w.seen
        # stderr has its own reader thread: the line may trail the stdout seen so far.
        wait_until(lambda: "reconnected" in w.stderr(), timeout=10, what="the reconnect note")
        err = w.stderr()
        assert "may not have been reported" not in err, err
        assert w.stop(signal.SIGTERM) == 0
    finally:
        w.stop(signal.SIGKILL)
        w.check_clean()
        proxy.cut()


def _fake_events_server(frames):
    """A listening socket that answers /fs/v1/events with a WebSocket carrying `frames` (JSON
    objects), then holds the connection; anything else gets `{}`.  Returns (port, close)."""
    import base64
    import hashlib
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []

    def serve(c):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                return
            data += chunk
        head = data.decode(errors="replace").split("\r\n")
        if "/fs/v1/events" not in head[0]:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 2\r\n\r\n{}")
            return
        key = [h.split(":", 1)[1].strip() for h in head
               if h.lower().startswith("sec-websocket-key:")][0]
        acc = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % acc).encode())
        for f in frames:
            b = json.dumps(f).encode()
            c.sendall(bytes([0x81, len(b)]) + b)  # unmasked text frames, all < 126 bytes

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()

    def close():
        srv.close()
        for c in conns:
            c.close()
    return srv.getsockname()[1], close


def test_watch_turns_impossible_event_paths_into_overflow(agent):
    """An agent (or something posing as one) sending paths that cannot name a workspace object
    ("..", empty components, a directory renamed into itself) must not be trusted: each such
    event reaches the client as an overflow (revalidate everything), and the stream goes on."""
    b = {"boot": "b1"}
    frames = [{"kind": "hello", "boot": "b1", "seq": 0, "session": "s", "resumed": True},
              dict(b, seq=1, kind="create", path="a"),
              dict(b, seq=2, kind="rename", path="d", to="d/x"),
              dict(b, seq=3, kind="create", path="../etc/passwd"),
              dict(b, seq=4, kind="delete", path="x//y"),
              dict(b, seq=5, kind="rename", path=".", to="y"),
              dict(b, seq=6, kind="create", path="b")]
    port, close = _fake_events_server(frames)
    w = Watch(agent, base="http://127.0.0.1:%d" % port)
    try:
        got = [w.next_line(10) for _ in range(6)]
        assert got == ["1 create a", "2 overflow", "3 overflow", "4 overflow", "5 overflow",
                       "6 create b"], got
        assert w.stop(signal.SIGTERM) == 0
    finally:
        close()
        w.stop(signal.SIGKILL)
        w.check_clean()
