"""The agent's HTTP engine: configuration, authentication, framing, limits, shutdown.

Every test drives the real devbox-agent binary over real sockets."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import AGENT_BIN, Agent  # noqa: E402


def raw(agent, data, timeout=10, read_until_close=False):
    """Sends raw bytes, returns what came back (until the reply is complete or closed)."""
    s = socket.create_connection((agent.host, agent.port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            if not read_until_close and b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if m and len(body) >= int(m.group(1)) and not head.startswith(b"HTTP/1.1 100"):
                    break
        return buf
    finally:
        s.close()


def test_health_is_public_and_exact(agent):
    st, hd, body = agent.get("/health", auth=False)
    assert st == 200
    assert hd["content-type"] == "application/json"
    j = json.loads(body)
    assert list(j.keys()) == ["status", "message", "healthStatus", "uptime", "version"]
    assert j["status"] == 0 and j["message"] == "success" and j["healthStatus"] == "ok"
    assert re.fullmatch(r"\d+s", j["uptime"])
    assert j["version"] == "0.1.0"
    assert b" " not in body  # compact JSON


def test_ready_reports_workspace(agent, workspace):
    j = json.loads(agent.get("/health/ready", auth=False)[2])
    assert j == {"status": 0, "message": "success", "readinessStatus": "ready", "workspace": True}
    os.rmdir(workspace)
    j = json.loads(agent.get("/health/ready", auth=False)[2])
    assert j["readinessStatus"] == "not_ready" and j["workspace"] is False
    os.mkdir(workspace)  # for the fixture's clean-up


def test_health_live_is_exempt_but_unrouted(agent):
    assert agent.get("/health/live", auth=False)[0] == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", "bearer test-token", "Bearer  test-token",
                                    "Basic test-token", "Bearer test-token2", "Bearer test-toke"])
def test_bad_token_is_bare_401(agent, header):
    h = {"Authorization": header} if header else {}
    st, hd, body = agent.request("GET", "/api/v1/files/list", headers=h, auth=False)
    assert st == 401
    assert body == b""
    assert "content-type" not in hd


def test_unknown_path_needs_auth_first(agent):
    assert agent.get("/no/such/route", auth=False)[0] == 401
    st, hd, body = agent.get("/no/such/route")
    assert st == 404 and body == b""
    assert agent.get("/api/v1/files/list/")[0] == 404  # no trailing-slash tolerance


def test_wrong_method_is_405(agent):
    st, _, body = agent.request("POST", "/health", body=b"{}",
                                headers={"Content-Type": "application/json"})
    assert st == 405 and body == b""
    assert agent.request("DELETE", "/api/v1/files/list")[0] == 405


def test_head_has_no_body_and_keeps_connection(agent):
    c = agent.conn()
    c.request("HEAD", "/health")
    r = c.getresponse()
    assert r.status == 200
    assert int(r.getheader("content-length")) > 0
    assert r.read() == b""
    # the same connection still works: no stray body bytes were sent
    st, _, body = agent.request("GET", "/health", conn=c)
    assert st == 200 and json.loads(body)["healthStatus"] == "ok"
    c.close()


def test_keepalive_reuses_one_connection(agent):
    c = agent.conn()
    c.connect()
    local = c.sock.getsockname()
    for _ in range(200):
        st, _, _ = agent.request("GET", "/health", conn=c)
        assert st == 200
    assert c.sock.getsockname() == local
    c.close()


def test_expect_100_continue_is_answered(agent):
    body = b'{"dir":".","pattern":"zzz"}'
    req = (b"POST /api/v1/files/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
           b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body))
    s = socket.create_connection((agent.host, agent.port), timeout=10)
    s.sendall(req)
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(body)
    buf = first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    while b"}" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    s.close()
    assert buf.startswith(b"HTTP/1.1 200")
    assert b'"status":0' in buf


def test_chunked_request_body_refused_with_411(agent):
    req = (b"POST /api/v1/files/write?path=x HTTP/1.1\r\nHost: x\r\n"
           b"Authorization: Bearer test-token\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
    out = raw(agent, req, read_until_close=True)
    assert out.startswith(b"HTTP/1.1 411")
    assert b"Content-Length" in out
    assert not os.path.exists(os.path.join(agent.workspace, "x"))
    assert agent.get("/health")[0] == 200


def test_h2c_upgrade_refused(agent):
    req = (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    out = raw(agent, req, read_until_close=True)
    assert not out.startswith(b"HTTP/1.1 101")
    assert agent.get("/health")[0] == 200


def test_oversized_headers_get_431_and_agent_keeps_serving(agent):
    st, _, body = agent.get("/health", headers={"User-Agent": "a" * 20000})
    assert st == 431
    assert b"too large" in body
    # past lws's own budget the connection is dropped without a status; still serving
    try:
        agent.get("/health", headers={"X-Huge": "a" * 40000})
    except Exception:
        pass
    assert agent.get("/health")[0] == 200


def test_json_route_rejections_are_plain_text(agent):
    st, hd, body = agent.request("POST", "/api/v1/files/search", body=b"{}",
                                 headers={"Content-Type": "text/plain"})
    assert st == 415 and hd["content-type"].startswith("text/plain")
    assert b"application/json" in body
    st, hd, body = agent.post_json("/api/v1/files/search", b"{not json")
    assert st == 400 and b"JSON" in body
    deep = b"[" * 100 + b"]" * 100
    st, hd, body = agent.post_json("/api/v1/files/search", b'{"dir":' + deep + b"}")
    assert st == 400 and b"nesting" in body
    st, hd, body = agent.post_json("/api/v1/files/search", b"[1,2]")
    assert st == 422
    big = b'{"dir":"' + b"a" * (3 << 20) + b'","pattern":"x"}'
    st, hd, body = agent.post_json("/api/v1/files/search", big)
    assert st == 413
    assert agent.get("/health")[0] == 200


def test_post_without_content_length_is_answered(agent):
    req = (b"POST /api/v1/process/list HTTP/1.1\r\nHost: x\r\n"
           b"Authorization: Bearer test-token\r\n\r\n")
    out = raw(agent, req, read_until_close=True)
    assert out.startswith(b"HTTP/1.1 405")  # list is GET; answered, connection closed


def test_binds_only_the_requested_address(agent):
    with open("/proc/net/tcp") as f:
        rows = f.read().splitlines()[1:]
    mine = [r.split() for r in rows if r.split()[1].endswith(":%04X" % agent.port)
            and r.split()[3] == "0A"]
    assert mine, "listening socket not found"
    assert all(r[1].startswith("0100007F:") for r in mine)  # 127.0.0.1 only
    with open("/proc/net/tcp6") as f:
        assert ":%04X " % agent.port not in f.read()


def test_env_configuration_and_flag_precedence(agent_factory, workspace, tmp_path):
    other = str(tmp_path / "other-ws")
    a = agent_factory(token=None, workspace=other, raw_args=[],
                      env={"TOKEN": "from-env", "WORKSPACE_PATH": other, "ADDR": "127.0.0.1:0"})
    assert os.path.isdir(other)  # created at start
    assert ("workspace %s" % os.path.realpath(other)) in a.output
    assert a.get("/api/v1/files/list", headers={"Authorization": "Bearer from-env"},
                 auth=False)[0] == 200
    assert "from-env" not in a.output
    b = agent_factory(token=None, env={"DEVBOX_JWT_SECRET": "jwt-secret"})
    assert b.get("/api/v1/files/list", headers={"Authorization": "Bearer jwt-secret"},
                 auth=False)[0] == 200
    c = agent_factory(token="flag-wins", env={"TOKEN": "env-loses"})
    assert c.get("/api/v1/files/list", headers={"Authorization": "Bearer env-loses"},
                 auth=False)[0] == 401
    assert c.get("/api/v1/files/list")[0] == 200


def test_generated_token_is_printed_and_works(agent_factory):
    a = agent_factory(token=None)
    m = re.search(r"^token (\S+)$", a.output, re.M)
    assert m, a.output
    tok = m.group(1)
    assert len(tok) >= 16
    assert a.get("/api/v1/files/list", headers={"Authorization": "Bearer " + tok},
                 auth=False)[0] == 200
    assert a.get("/api/v1/files/list", auth=False)[0] == 401


def test_supplied_token_masked_and_scrubbed_from_cmdline(agent_factory):
    a = agent_factory(token="supersecret-token-123")
    assert "supersecret-token-123" not in a.output
    with open("/proc/%d/cmdline" % a.proc.pid, "rb") as f:
        assert b"supersecret-token-123" not in f.read()


def test_empty_token_accepts_bare_bearer(agent_factory):
    a = agent_factory(token="")
    assert a.get("/api/v1/files/list", headers={"Authorization": "Bearer "}, auth=False)[0] == 200
    assert a.get("/api/v1/files/list", headers={"Authorization": "Bearer x"}, auth=False)[0] == 401


def run_agent(args, env=None, timeout=10):
    e = dict(os.environ)
    e.pop("TOKEN", None)
    e.pop("DEVBOX_JWT_SECRET", None)
    e.update(env or {})
    return subprocess.run([AGENT_BIN] + args, capture_output=True, text=True, timeout=timeout,
                          env=e, stdin=subprocess.DEVNULL)


def test_help_version_and_bad_arguments(workspace):
    r = run_agent(["--help"])
    assert r.returncode == 0 and "--workspace-path=" in r.stdout
    r = run_agent(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == "0.1.0"
    r = run_agent(["--bogus", "--workspace-path=" + workspace])
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr
    r = run_agent(["--addr=nonsense", "--workspace-path=" + workspace])
    assert r.returncode == 2 and "bad listen address" in r.stderr
    r = run_agent(["--max-file-size=lots", "--workspace-path=" + workspace])
    assert r.returncode == 2 and "--max-file-size" in r.stderr


def test_busy_port_is_a_clear_error(agent, workspace):
    r = run_agent(["--addr=127.0.0.1:%d" % agent.port, "--workspace-path=" + workspace,
                   "--token=x"])
    assert r.returncode != 0
    assert "cannot listen on 127.0.0.1:%d" % agent.port in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_status_0(workspace, sig):
    a = Agent(workspace)
    c = a.conn()
    c.request("GET", "/health")
    c.getresponse().read()  # an idle keep-alive connection is open during shutdown
    a.proc.send_signal(sig)
    assert a.proc.wait(timeout=10) == 0
    c.close()
