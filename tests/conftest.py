"""Shared pytest fixtures: start the real devbox-agent binary on an ephemeral port.

The build directory comes from DEVBOX_BUILD_DIR (set by `meson test`), else ./build.
Every agent started here is stopped with SIGTERM at teardown; the test then asserts that it
exited with status 0 and that its output holds no sanitizer report.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import http.client
import json
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("DEVBOX_BUILD_DIR", os.path.join(ROOT, "build"))
AGENT_BIN = os.path.join(BUILD, "agent", "devbox-agent")

SANITIZER_RE = re.compile(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                          r"ERROR: ThreadSanitizer|SUMMARY: UndefinedBehaviorSanitizer)")


class Agent:
    """A running devbox-agent process plus a tiny HTTP client for it."""

    def __init__(self, workspace, token="test-token", extra_args=(), env=None, addr="127.0.0.1:0",
                 raw_args=None):
        """raw_args: the complete argument list (then workspace/token/addr only inform the
        client side: pass token= for the Authorization header)."""
        self.workspace = workspace
        self.token = token
        full_env = dict(os.environ)
        full_env.pop("TOKEN", None)
        full_env.pop("DEVBOX_JWT_SECRET", None)
        if env:
            full_env.update(env)
        if raw_args is not None:
            args = [AGENT_BIN] + list(raw_args)
        else:
            args = [AGENT_BIN, "--addr=" + addr, "--workspace-path=" + workspace]
            if token is not None:
                args.append("--token=" + token)
            args += list(extra_args)
        self.out_lines = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd="/")
        first = self.proc.stdout.readline().decode(errors="replace")
        m = re.match(r"listening on (\S+):(\d+)\s*$", first)
        if not m:
            rest = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
            raise RuntimeError("agent did not start: %r %r" % (first, rest))
        self.host, self.port = m.group(1), int(m.group(2))
        self.out_lines.append(first)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.base = "http://%s:%d" % (self.host, self.port)

    def _drain(self):
        for line in self.proc.stdout:
            self.out_lines.append(line.decode(errors="replace"))

    @property
    def output(self):
        return "".join(self.out_lines)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("agent did not exit within %ds of SIGTERM" % timeout)
        self._reader.join(timeout=5)
        return rc

    # --- HTTP helpers -------------------------------------------------------------------
    def conn(self, timeout=30):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, auth=True, query=None, conn=None):
        """Returns (http_status, headers dict (lower-case keys), body bytes)."""
        h = {}
        if auth and self.token is not None:
            h["Authorization"] = "Bearer " + self.token
        if headers:
            h.update(headers)
        if query:
            path = path + "?" + urllib.parse.urlencode(query)
        own = conn is None
        c = conn or self.conn()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            if own:
                c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post_json(self, path, obj, **kw):
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(kw.pop("headers", {}) or {})
        body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        return self.request("POST", path, body=body, headers=hdrs, **kw)

    def api(self, method, path, obj=None, query=None):
        """Calls a JSON route and returns the decoded envelope (asserting HTTP 200 + JSON)."""
        if method == "GET":
            st, hd, data = self.get(path, query=query)
        else:
            st, hd, data = self.post_json(path, obj if obj is not None else {}, query=query)
        assert st == 200, (st, data)
        assert hd.get("content-type", "").startswith("application/json"), (hd, data)
        return json.loads(data)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long-running test (load, soak)")


def _assert_clean(agent):
    out = agent.output
    m = SANITIZER_RE.search(out)
    assert not m, "sanitizer report in agent output:\n" + out[-8000:]


@pytest.fixture
def workspace():
    d = tempfile.mkdtemp(prefix="dbx-ws-")
    yield os.path.realpath(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agent_factory(workspace):
    started = []

    def make(**kw):
        kw.setdefault("workspace", workspace)
        a = Agent(**kw)
        started.append(a)
        return a

    yield make
    for a in started:
        rc = a.stop()
        _assert_clean(a)
        assert rc == 0, "agent exit status %r\n%s" % (rc, a.output[-4000:])


@pytest.fixture
def agent(agent_factory):
    return agent_factory()


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)
