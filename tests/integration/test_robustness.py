"""Hostile and unlucky clients: each case is answered (or cut off) and the agent keeps serving.

Regression tests for problems found in review: bodies without a length, stalled uploads,
padded Content-Length, huge batch requests, children that outlive their exec-sync timeout."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import wait_until  # noqa: E402


def send_raw(agent, data, timeout=10):
    s = socket.create_connection((agent.host, agent.port), timeout=timeout)
    s.sendall(data)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        pass
    finally:
        s.close()
    return buf


def test_json_body_without_length_is_refused_not_raced(agent):
    body = json.dumps({"path": "x.txt", "content": "y" * (1 << 20)}).encode()
    req = (b"POST /api/v1/files/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
           b"Content-Type: application/json\r\n\r\n" + body)
    out = send_raw(agent, req)
    assert out.startswith(b"HTTP/1.1 411"), out[:200]
    assert not os.path.exists(os.path.join(agent.workspace, "x.txt"))
    assert agent.get("/health")[0] == 200


def test_padded_content_length_is_rejected(agent):
    req = (b"POST /api/v1/files/write?path=p HTTP/1.1\r\nHost: x\r\n"
           b"Authorization: Bearer test-token\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Length: 0000000000000000000000000000000010\r\n\r\n0123456789")
    out = send_raw(agent, req)
    assert out.startswith(b"HTTP/1.1 400"), out[:200]
    assert agent.get("/health")[0] == 200


def test_stalled_uploads_do_not_starve_other_requests(agent):
    """70 uploads that announce a body and never send it: short requests still answer."""
    socks = []
    try:
        for i in range(70):
            s = socket.create_connection((agent.host, agent.port), timeout=10)
            s.sendall(b"POST /api/v1/files/write?path=stall%d HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer test-token\r\n"
                      b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n" % i)
            socks.append(s)
        t0 = time.monotonic()
        st, _, body = agent.get("/api/v1/files/list", query={"path": "."})
        assert st == 200 and json.loads(body)["status"] == 0
        st, _, body = agent.post_json("/api/v1/process/exec-sync",
                                      {"command": "echo", "args": ["alive"]})
        assert json.loads(body)["stdout"] == "alive\n"
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()
    # nothing half-written is left behind once the clients are gone
    wait_until(lambda: not [n for n in os.listdir(agent.workspace) if n.startswith(".stall")],
               what="temp files removed")
    assert not [n for n in os.listdir(agent.workspace) if n.startswith("stall")]


def test_batch_download_path_count_is_bounded(agent):
    with open(os.path.join(agent.workspace, "a"), "w") as f:
        f.write("a")
    j = agent.api("POST", "/api/v1/files/batch-download", {"paths": ["a"] * 5000})
    assert j["status"] == 1422 and "Too many paths" in j["message"]
    st, hd, body = agent.post_json("/api/v1/files/batch-download",
                                   {"paths": ["a"], "format": "tar"})
    assert st == 200 and hd["content-type"] == "application/x-tar" and len(body) >= 1024


def test_env_variable_count_is_bounded(agent):
    env = {"V%d" % i: "x" for i in range(5000)}
    st, _, body = agent.post_json("/api/v1/process/exec-sync",
                                  {"command": "true", "env": env})
    assert st == 422 and b"more than" in body


def test_exec_sync_timeout_holds_when_a_background_child_keeps_stdout(agent):
    t0 = time.monotonic()
    j = agent.api("POST", "/api/v1/process/exec-sync",
                  {"command": "sh", "args": ["-c", "sleep 300 & echo started"], "timeout": 2})
    took = time.monotonic() - t0
    assert j["status"] == 1500 and j["message"] == "Process execution timed out"
    assert took < 10, took
    # the background sleep (same process group) was killed with the group
    def no_sleep():
        out = os.popen("pgrep -f '^sleep 300$' || true").read().strip()
        return out == ""
    wait_until(no_sleep, what="the background child to be killed")


def test_websocket_upgrade_token_is_case_insensitive(agent):
    req = (b"GET /ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
           b"Upgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    s = socket.create_connection((agent.host, agent.port), timeout=5)
    s.sendall(req)
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 101"), head[:100]


def test_early_errors_keep_a_keepalive_connection_usable(agent_factory):
    """Replies sent before the body was read (over the size limit) must not wedge the
    connection for the next request (lws 4.1.6 spins on DISCARD_BODY + pipelined data)."""
    a = agent_factory(extra_args=["--max-file-size=5"])
    c = a.conn(timeout=10)
    for i in range(60):
        body = b"y" * 300000 if i % 2 else b"x" * 11
        st, _, data = a.request("POST", "/api/v1/files/write", query={"path": "f"}, body=body,
                                headers={"Content-Type": "application/octet-stream"}, conn=c)
        assert st == 200 and json.loads(data) == {"status": 1422, "message": "File too large"}
    st, _, data = a.request("POST", "/api/v1/files/write", query={"path": "f"}, body=b"ok",
                            headers={"Content-Type": "application/octet-stream"}, conn=c)
    assert st == 200 and json.loads(data)["status"] == 0
    c.close()
    with open(os.path.join(a.workspace, "f"), "rb") as f:
        assert f.read() == b"ok"


def test_early_error_with_expect_continue_answers_without_the_body(agent_factory):
    a = agent_factory(extra_args=["--max-file-size=5"])
    s = socket.create_connection((a.host, a.port), timeout=10)
    s.sendall(b"POST /api/v1/files/write?path=g HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer test-token\r\nContent-Type: application/octet-stream\r\n"
              b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 200") and b"File too large" in head
    assert a.get("/health")[0] == 200
