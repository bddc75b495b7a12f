"""libdevbox's agent client (libdevbox/client.c, fs.c, batch.c) against a real agent.

The C program tests/unit/client_probe drives the library and prints one JSON object per run:
connection reuse, retries of idempotent calls only, cancellation / interrupt / deadline
against a frozen (SIGSTOP) agent, authentication errors, the collect cap and every /fs/v1 call.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import BUILD, SANITIZER_RE, Agent, wait_until

PROBE = os.path.join(BUILD, "tests", "unit", "client_probe")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def dead_url():
    """A URL whose port is bound but not listening: connections are refused, and no other
    process (an agent of a test running in parallel) can take the port meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield "http://127.0.0.1:%d" % s.getsockname()[1]
    s.close()


def probe_env(token="test-token", **extra):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = token
    for k, v in extra.items():
        env[k] = str(v)
    return env


def run_probe(url, *args, token="test-token", timeout=60, **extra):
    p = subprocess.run([PROBE, url] + [str(a) for a in args], capture_output=True,
                       env=probe_env(token, **extra), timeout=timeout)
    err = p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(err), err
    assert p.returncode == 0, (p.returncode, err)
    return json.loads(p.stdout)


@pytest.fixture(autouse=True)
def _need_probe():
    if not os.path.exists(PROBE):
        pytest.fail("client_probe not built: " + PROBE)


def test_connection_reused_across_calls(agent):
    r = run_probe(agent.base, "stat-loop", 100, ".")
    assert r["rc"] == 0, r
    assert r["stats"]["requests"] == 100
    # One TCP connection for 100 sequential calls: the easy handle and its keep-alive
    # connection are reused.
    assert r["stats"]["connects"] == 1, r["stats"]


def test_health_and_raw_call(agent):
    assert run_probe(agent.base, "health")["rc"] == 0
    r = run_probe(agent.base, "call", "/api/v1/process/nosuch/status")
    # The escape hatch returns the reply as it is, envelope error included.
    assert r["rc"] == 0 and r["status"] == 200
    assert json.loads(r["body"])["status"] == 1404


def test_wrong_token_is_ekeyrejected_with_clear_message(agent):
    r = run_probe(agent.base, "stat", ".", token="not-the-token")
    assert r["errno"] == "EKEYREJECTED"
    assert "authentication failed (wrong token?)" in r["msg"]
    assert r["stats"]["retries"] == 0


def test_errors_name_op_path_and_reason(agent, workspace):
    r = run_probe(agent.base, "stat", "no/such")
    assert r["errno"] == "ENOENT"
    assert r["msg"] == "stat no/such: No such file or directory"
    r = run_probe(agent.base, "stat", "../outside")
    assert r["errno"] == "EXDEV"
    assert r["msg"] == "stat ../outside: path leads outside the workspace"


def test_refused_connection_names_url_and_is_retried_with_backoff(dead_url):
    url = dead_url
    r = run_probe(url, "stat", ".", PROBE_RETRIES=2)
    assert r["errno"] == "ECONNREFUSED"
    assert url in r["msg"] and "connection refused" in r["msg"]
    assert r["stats"]["requests"] == 3 and r["stats"]["retries"] == 2
    # Backoff 100 ms then 200 ms between the attempts.
    assert r["ms"] >= 250


def test_write_is_never_retried(dead_url):
    r = run_probe(dead_url, "write", "f.txt", "data", PROBE_RETRIES=3)
    assert r["errno"] == "ECONNREFUSED"
    assert r["stats"]["requests"] == 1 and r["stats"]["retries"] == 0


def test_idempotent_call_retried_across_agent_restart(workspace):
    port = free_port()
    addr = "127.0.0.1:%d" % port
    first = Agent(workspace, addr=addr)
    assert first.stop() == 0
    # The probe starts against the stopped agent and keeps retrying (backoff up to 2 s).
    p = subprocess.Popen([PROBE, "http://" + addr, "stat", "."], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=probe_env(PROBE_RETRIES=8, PROBE_LOG=2))
    second = None
    try:
        # Wait until it has failed at least once (it logs the retry), then restart the agent.
        line = p.stderr.readline().decode(errors="replace")
        assert "retrying" in line, line
        second = Agent(workspace, addr=addr)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if second is not None:
            assert second.stop() == 0
    assert not SANITIZER_RE.search(err.decode(errors="replace"))
    r = json.loads(out)
    assert r["rc"] == 0, r
    assert r["stats"]["retries"] >= 1
    assert not SANITIZER_RE.search(second.output)


@pytest.fixture
def frozen_agent(agent):
    """An agent that accepts connections (kernel backlog) but never answers."""
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        yield agent
    finally:
        agent.proc.send_signal(signal.SIGCONT)


def test_cancel_returns_promptly_against_frozen_agent(frozen_agent):
    r = run_probe(frozen_agent.base, "cancel-after", 300, ".")
    assert r["errno"] == "ECANCELED", r
    assert r["ms"] < 2000, r
    # Cancelled stays cancelled until uncancel.
    assert r["again"] == r["rc"]
    assert "cancelled" in r["msg"]


def test_thread_cancel_flag_interrupts(frozen_agent):
    r = run_probe(frozen_agent.base, "flag-after", 300, ".")
    assert r["errno"] == "EINTR", r
    assert r["ms"] < 2000, r


def test_thread_deadline(frozen_agent):
    r = run_probe(frozen_agent.base, "deadline", 400, ".")
    assert r["errno"] == "ETIMEDOUT", r
    assert 350 <= r["ms"] < 2000, r


def test_total_timeout_names_url(frozen_agent):
    r = run_probe(frozen_agent.base, "stat", ".", PROBE_TIMEOUT_MS=500, PROBE_RETRIES=-1)
    assert r["errno"] == "ETIMEDOUT", r
    assert frozen_agent.base in r["msg"] and "timed out" in r["msg"]
    assert r["ms"] < 3000


def test_collect_cap_and_streaming(agent, workspace):
    big = os.path.join(workspace, "big.bin")
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)
    r = run_probe(agent.base, "collect", "big.bin")
    assert r["errno"] == "EMSGSIZE", r
    assert "larger than" in r["msg"]
    r = run_probe(agent.base, "big-read", "big.bin")
    assert r["rc"] == 0 and r["size"] == (64 << 20) + 1


def test_every_fs_call(agent, workspace):
    os.mkdir(os.path.join(workspace, "suite"))
    r = run_probe(agent.base, "fs-suite", "suite")
    ok = ["pwrite", "pread", "pwrite_match", "write_stream", "read_stream", "truncate",
          "fsync", "stat", "mkdir", "symlink", "readlink", "link", "chmod", "chown",
          "utimens", "utimens_omit", "mknod", "setxattr", "getxattr", "listxattr",
          "removexattr", "list", "tree", "rename", "rename_exchange", "rename_back",
          "unlink", "rmdir", "statfs", "batch_run", "batch_write", "batch_read",
          "batch_unlink"]
    for name in ok:
        assert r[name]["rc"] >= 0, (name, r[name])
    fails = {"pwrite_stale": "ESTALE", "pwrite_excl": "EEXIST", "stat_missing": "ENOENT",
             "mkdir_again": "EEXIST", "setxattr_create_again": "EEXIST",
             "getxattr_small": "ERANGE", "getxattr_gone": "ENODATA",
             "rename_noreplace": "EEXIST", "rmdir_notempty": "ENOTEMPTY",
             "unlink_missing": "ENOENT", "outside": "EXDEV", "batch_stat": "ENOENT"}
    for name, err in fails.items():
        assert r[name]["errno"] == err, (name, r[name])
    assert r["stat_missing"]["msg"] == "stat suite/g.txt: No such file or directory"
    assert r["pwrite_size"] == 11 and r["pwrite_mode"] == 0o600
    assert r["pread"]["rc"] == 5 and r["pread_data"] == "world"
    st = os.stat(os.path.join(workspace, "suite", "g.txt"))
    assert r["pread_ver"].startswith("%x." % st.st_ino)
    assert r["pread_size"] == 11
    assert r["match_size"] == 12
    assert r["read_stream_data"] == "data"
    assert r["truncate_size"] == 5 and r["stat_size"] == 5
    assert r["mkdir_isdir"] == 1 and r["symlink_islnk"] == 1
    assert r["readlink_target"] == "f.txt" and r["link_nlink"] == 2
    assert r["chmod_mode"] == 0o640
    assert r["utimens_mtime"] == 1234567890 and r["utimens_mtime_ns"] == 123456789
    assert r["omit_mtime"] == 1234567890
    assert r["mknod_isfifo"] == 1
    assert r["getxattr_probe"]["rc"] == 5 and r["getxattr_value"] == "value"
    assert r["listxattr_probe"]["rc"] == len("user.k") + 1
    assert r["listxattr_first"] == "user.k"
    # f.txt, streamed, sub, link, hard, fifo
    assert r["list_count"] == 6
    assert r["tree_count"] == 7 and r["tree_end_entries"] == 7
    assert r["rename_size"] == 5
    assert r["statfs_bsize"] > 0
    assert r["batch_write_size"] == 7 and r["batch_read_data"] == "batched"
    assert r["meta_valid"] and len(r["meta_boot"]) == 32 and r["meta_seq"] > 0
    # What the calls did, seen directly in the workspace.
    with open(os.path.join(workspace, "suite", "f.txt"), "rb") as f:
        assert f.read() == b"batched"
    assert os.path.isdir(os.path.join(workspace, "suite", "sub"))
    assert not os.path.exists(os.path.join(workspace, "suite", "streamed"))
    assert r["stats"]["connects"] == 1


def test_threads_share_a_client_with_one_connection_each(agent):
    r = run_probe(agent.base, "threads", 8, 50, ".")
    assert r["rc"] == 0, r
    assert r["stats"]["requests"] == 400
    # Each concurrently calling thread gets its own handle (and connection), reused.
    assert 1 <= r["stats"]["connects"] <= 8, r["stats"]


# ---- TLS: verification is on by default -----------------------------------------------------

@pytest.fixture
def tls_server(tmp_path):
    """A tiny HTTPS server answering GET /health like the agent, with a self-signed cert."""
    import http.server
    import shutil
    import ssl
    import threading
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) not installed")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status":0,"message":"success","healthStatus":"ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield "https://127.0.0.1:%d" % srv.server_address[1], cert
    finally:
        srv.shutdown()
        srv.server_close()


def test_tls_verified_by_default(tls_server):
    url, cert = tls_server
    r = run_probe(url, "health", PROBE_RETRIES=-1)
    assert r["errno"] == "EPROTO", r
    assert url in r["msg"]
    assert run_probe(url, "health", PROBE_INSECURE=1)["rc"] == 0
    assert run_probe(url, "health", PROBE_CA=cert)["rc"] == 0


def test_list_pages_and_tree_streams_large_directories(agent, workspace):
    d = os.path.join(workspace, "many")
    os.mkdir(d)
    n = 10050  # more than one list page (10000 entries)
    for i in range(n):
        open(os.path.join(d, "file-with-a-longish-name-%06d" % i), "w").close()
    r = run_probe(agent.base, "list", "many")
    assert r["rc"] == 0 and r["count"] == n, r
    assert r["stats"]["requests"] == 2  # two pages
    r = run_probe(agent.base, "tree", "many")
    assert r["rc"] == 0, r
    assert r["count"] == n + 1 and r["end_entries"] == n + 1 and not r["truncated"]
    r = run_probe(agent.base, "tree", "nope")
    assert r["errno"] == "ENOENT" and r["msg"].startswith("tree nope: ")


@pytest.fixture
def flaky_server():
    """A plain HTTP server that answers 503 to the first two requests of each route, then
    like the agent; it counts what it received."""
    import http.server
    import threading
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self):
            n = self.headers.get("Content-Length")
            if n:
                self.rfile.read(int(n))
            route = self.path.split("?")[0]
            seen.append((self.command, route))
            if sum(1 for s in seen if s[1] == route) <= 2:
                body, st = b"", 503  # like a proxy in front of a busy agent
            else:
                body, st = b'{"ino":7,"type":"file","mode":33188,"size":1}', 200
            self.send_response(st)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = reply

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield "http://127.0.0.1:%d" % srv.server_address[1], seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_503_retried_for_reads_only(flaky_server):
    url, seen = flaky_server
    r = run_probe(url, "stat", "f")
    assert r["rc"] == 0, r
    assert r["stats"]["retries"] == 2 and seen.count(("GET", "/fs/v1/stat")) == 3
    r = run_probe(url, "write", "f", "data")
    # The write reached the server once and was not repeated, whatever the status.
    assert r["errno"] == "EHOSTUNREACH", r
    assert r["msg"] == "write f: %s: HTTP 503: service unavailable" % url
    assert seen.count(("PUT", "/fs/v1/write")) == 1 and r["stats"]["retries"] == 0
