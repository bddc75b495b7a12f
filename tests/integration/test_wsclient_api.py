"""libdevbox's WebSocket clients through their C API (tests/unit/ws_probe.c) against a real
agent: dbx_exec_run, dbx_exec_attach with an offset, the event/fd contract of dbx_exec_next,
and dbx_watch's hello, session, connected state, down callback, reconnect counter and resume
from a configured boot/seq."""
import json
import os
import queue
import socket
import subprocess
import threading
import time

from conftest import BUILD, SANITIZER_RE, wait_until
from test_ctl_watch import CuttableProxy

PROBE = os.path.join(BUILD, "tests", "unit", "ws_probe")


def probe(agent, *args, base=None, timeout=60):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token
    p = subprocess.run([PROBE, base or agent.base] + list(args), capture_output=True, env=env,
                       timeout=timeout)
    err = p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(err), err
    assert p.returncode == 0, err
    return json.loads(p.stdout)


def test_exec_run_separates_output_and_reports_status(agent):
    r = probe(agent, "run", "sh", "-c", "printf 'to out'; printf 'to err' >&2; exit 5")
    assert r["rc"] == 0, r
    assert (r["out"], r["err"], r["exit"], r["signal"]) == ("to out", "to err", 5, 0)
    r = probe(agent, "run", "sh", "-c", "kill -TERM $$")
    assert (r["rc"], r["exit"], r["signal"]) == (0, -1, 15), r


def test_exec_run_missing_program(agent):
    r = probe(agent, "run", "no-such-program-xyz")
    assert r["rc"] < 0 and r["errno"] == "ENOENT", r
    assert "no-such-program-xyz" in r["msg"]


def start_finished(agent, argv):
    st, _, data = agent.post_json("/exec/v1/start", {"argv": argv})
    assert st == 200, data
    xid = json.loads(data)["id"]

    def finished():
        st, _, body = agent.get("/exec/v1/list")
        return any(e["id"] == xid and not e["running"] for e in json.loads(body)["execs"])

    wait_until(finished, timeout=20, what="the exec to finish")
    return xid


def test_exec_attach_replays_from_offset(agent):
    xid = start_finished(agent, ["sh", "-c", "printf abcdefghij; printf XY >&2; exit 3"])
    r = probe(agent, "attach", xid, "0")
    assert r["rc"] == 0 and r["pid"] > 0, r
    assert (r["out"], r["err"], r["exit"]) == ("abcdefghij", "XY", 3)
    r = probe(agent, "attach", xid, "4")
    assert (r["out"], r["err"], r["exit"]) == ("efghij", "", 3), r
    outs = [e for e in r["events"] if e["kind"] == "output"]
    assert outs[0]["off"] == 4 and outs[0]["ch"] == 1, r
    # The exit comes last, after every output event.
    assert r["events"][-1]["kind"] == "exit"


def test_exec_attach_unknown_id(agent):
    r = probe(agent, "attach", "nosuchid", "0")
    assert r["rc"] < 0 and r["errno"] == "ENOENT", r
    assert "nosuchid" in r["msg"]


def test_exec_event_and_fd_contract(agent):
    r = probe(agent, "api")
    assert r["rc"] == 0, r
    assert r["id_set"] and r["pid_set"]
    assert r["next_idle"] == 0 and r["fd_idle"] is False, r
    assert r["write"] == 0 and r["fd_ready"] and r["got"], r
    assert r["resize_bad"] < 0 and r["signal_bad"] < 0
    assert r["signal"] == 0 and r["exit_by_sigterm"], r
    assert r["exit_again"] and r["fd_after_exit"], r


def test_exec_with_high_fd_numbers(agent):
    # A library user such as devbox-fs has many fds open: the WebSocket's socket then gets a
    # high number, which the small per-context lws fd table must still accept.
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(700)]
    try:
        env = dict(os.environ)
        env["DEVBOX_TOKEN"] = agent.token
        p = subprocess.run([PROBE, agent.base, "api"], capture_output=True, env=env,
                           timeout=60, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert not SANITIZER_RE.search(p.stderr.decode(errors="replace")), p.stderr
    r = json.loads(p.stdout)
    assert r["rc"] == 0 and r["got"] and r["exit_by_sigterm"], r


def test_exec_wrong_token_is_eacces(agent):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = "wrong"
    p = subprocess.run([PROBE, agent.base, "run", "true"], capture_output=True, env=env,
                       timeout=60)
    r = json.loads(p.stdout)
    assert r["errno"] == "EKEYREJECTED", r


class WatchProbe:
    def __init__(self, agent, *args, base=None):
        env = dict(os.environ)
        env["DEVBOX_TOKEN"] = agent.token
        self.proc = subprocess.Popen([PROBE, base or agent.base, "watch"] + list(args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.q = queue.Queue()
        self.backlog = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(json.loads(line))
        self.q.put(None)

    def expect(self, pred, what, timeout=20):
        """The first message (in arrival order) matching pred; the others stay queued."""
        for i, o in enumerate(self.backlog):
            if pred(o):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for %s; backlog %r" % (what, self.backlog)
            try:
                o = self.q.get(timeout=left)
            except queue.Empty:
                continue
            assert o is not None, "probe ended while waiting for " + what
            if pred(o):
                return o
            self.backlog.append(o)

    def state(self):
        """dbx_watch_session/connected/reconnects, asked from the main thread."""
        self.proc.stdin.write(b"state\n")
        self.proc.stdin.flush()
        return self.expect(lambda o: o["ev"] == "state", "state")

    def end(self):
        self.proc.stdin.close()
        self.expect(lambda o: o["ev"] == "end", "end")
        assert self.proc.wait(timeout=20) == 0
        err = self.proc.stderr.read().decode(errors="replace")
        assert not SANITIZER_RE.search(err), err


def test_watch_state_down_and_reconnect(agent):
    proxy = CuttableProxy(agent.port)
    w = WatchProbe(agent, base="http://127.0.0.1:%d" % proxy.port)
    try:
        started = w.expect(lambda o: o["ev"] in ("started",), "started")
        assert started["rc"] == 0, started
        hello = w.expect(lambda o: o["ev"] == "hello", "hello")
        assert len(hello["boot"]) == 32 and hello["session"] and not hello["resumed"]
        s = w.state()
        assert s["connected"] and s["session"] == hello["session"] and s["reconnects"] == 0
        with open(os.path.join(agent.workspace, "one"), "w") as f:
            f.write("12345")
        ev = w.expect(lambda o: o["ev"] == "event" and o["path"] == "one", "event one")
        assert ev["seq"] > hello["seq"]

        proxy.cut()
        w.expect(lambda o: o["ev"] == "down", "down")
        s = w.state()
        assert not s["connected"] and s["session"] == ""
        open(os.path.join(agent.workspace, "two"), "w").close()
        proxy.open()
        again = w.expect(lambda o: o["ev"] == "hello", "the second hello")
        assert again["resumed"] and again["boot"] == hello["boot"]
        assert again["session"] != hello["session"]
        two = w.expect(lambda o: o["ev"] == "event" and o["path"] == "two", "event two")
        assert two["seq"] > ev["seq"]
        s = w.state()
        assert s["connected"] and s["reconnects"] == 1 and s["session"] == again["session"]
        w.end()
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        proxy.cut()


def test_watch_resumes_from_configured_position(agent):
    first = WatchProbe(agent)
    hello = first.expect(lambda o: o["ev"] == "hello", "hello")
    first.end()
    for n in ("r1", "r2", "r3"):
        open(os.path.join(agent.workspace, n), "w").close()
    w = WatchProbe(agent, hello["boot"], str(hello["seq"]))
    h = w.expect(lambda o: o["ev"] == "hello", "hello")
    assert h["resumed"], h
    creates = [w.expect(lambda o: o["ev"] == "event" and o["kind"] == "create", "a create")
               for _ in range(3)]
    assert [c["path"] for c in creates] == ["r1", "r2", "r3"]
    assert all(c["seq"] > hello["seq"] for c in creates)
    w.end()


def test_watch_unreachable_fails_at_start(agent):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    w = WatchProbe(agent, base="http://127.0.0.1:%d" % port)
    started = w.expect(lambda o: o["ev"] == "started", "started")
    assert started["errno"] == "ECONNREFUSED", started
    assert w.proc.wait(timeout=20) == 0
