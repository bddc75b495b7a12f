"""devboxctl --provider sealos against the fake control plane (fake_cp.py), which runs a real
devbox-agent behind every devbox it creates and checks the Authorization header against the
exact kubeconfig text.

At teardown every agent the fake started must have exited 0 on SIGTERM with no sanitizer report.
"""
import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse

import pytest

import fake_cp
from conftest import AGENT_BIN, BUILD, SANITIZER_RE, wait_until

CTL = os.path.join(BUILD, "ctl", "devboxctl")


def run(args, env_extra=None, timeout=120):
    env = dict(os.environ)
    for k in ("DEVBOX_HOME", "DEVBOX_PROVIDER", "DEVBOX_API_URL", "KUBECONFIG", "TOKEN"):
        env.pop(k, None)
    env.update(env_extra or {})
    p = subprocess.run([CTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=timeout)
    p.out = p.stdout.decode(errors="replace")
    p.err = p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(p.err), p.err
    return p


class Sealos:
    def __init__(self, cp, kubeconfig):
        self.cp = cp
        self.kubeconfig = kubeconfig

    def run(self, *args, check=None, timeout=120):
        p = run(["--provider", "sealos", "--kubeconfig", self.kubeconfig, "--api-url",
                 self.cp.url] + list(args), timeout=timeout)
        if check is not None:
            assert p.returncode == check, "devboxctl %s -> %d\nstdout: %s\nstderr: %s" % (
                " ".join(args), p.returncode, p.out, p.err)
        return p

    def json(self, *args):
        return json.loads(self.run(*args, "-o", "json", check=0).out)


def start_cp(tmp_path, pending_s=0.6):
    kc = tmp_path / "kubeconfig.yaml"
    kc.write_text(fake_cp.KUBECONFIG_TEMPLATE)
    cp = fake_cp.FakeControlPlane(kubeconfig=fake_cp.KUBECONFIG_TEMPLATE, agent_path=AGENT_BIN,
                                  workdir=str(tmp_path), pending_s=pending_s).start()
    return cp, str(kc)


def check_agents(cp):
    cp.stop()
    for name, rc, out in cp.agent_exits:
        assert not SANITIZER_RE.search(out), "sanitizer report in %s's agent:\n%s" % (name, out)
        assert rc == 0, "agent of %s exited %r\n%s" % (name, rc, out[-4000:])


@pytest.fixture
def sealos(tmp_path):
    cp, kc = start_cp(tmp_path)
    s = Sealos(cp, kc)
    yield s
    check_agents(cp)


def agent_call(info, method, path, obj=None, timeout=30):
    u = urllib.parse.urlsplit(info["agentUrl"])
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(obj) if obj is not None else None,
                  headers={"Authorization": "Bearer " + info["token"],
                           "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def agent_sh(info, script):
    st, body = agent_call(info, "POST", "/api/v1/process/exec-sync",
                          {"command": "sh", "args": ["-c", script], "timeout": 20})
    assert st == 200, (st, body)
    return json.loads(body)


def detail_gets(cp, name):
    return sum(1 for m, p, ok in cp.requests if m == "GET" and p == "/api/v1/devbox/" + name)


def proc_state(pid):
    try:
        s = open("/proc/%d/stat" % pid).read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return s[s.rindex(")") + 2]


def test_full_lifecycle(sealos):
    cp = sealos.cp
    assert "python" in sealos.json("templates")
    assert sealos.run("templates", check=0).out.split()[:2] == ["RUNTIME", "node.js"]

    info = sealos.json("create", "web", "--runtime", "python", "--cpu", "0.5", "--memory", "1",
                       "--port", "8080", "--env", "FOO=bar baz", "--env", "EMPTY=")
    # Waited like the SDK: polled the detail while Pending, then the agent's /health.
    assert info["status"] == "Running", info
    assert detail_gets(cp, "web") >= 2
    box = cp.managed["web"]
    assert info["agentUrl"] == box.agent_url and info["token"] == box.token
    assert info["cpu"] == 0.5 and info["memoryGiB"] == 1 and info["runtime"] == "python"
    assert [p["number"] for p in info["ports"]] == [9757, 8080]
    assert info["workspace"] == box.workspace
    # What the control plane received: env as the ARRAY the server expects.
    body = [b for m, p, b in cp.bodies if m == "POST" and p == "/api/v1/devbox"][-1]
    assert body == {"name": "web", "runtime": "python", "resource": {"cpu": 0.5, "memory": 1},
                    "ports": [{"number": 8080, "protocol": "HTTP"}],
                    "env": [{"name": "FOO", "value": "bar baz"},
                            {"name": "EMPTY", "value": ""}]}, body
    # The box's processes see the env; files land in the box's workspace.
    r = agent_sh(info, 'printf "%s|%s" "$FOO" "${EMPTY-unset}" > env.txt; cat env.txt')
    assert r["stdout"] == "bar baz|", r
    assert open(os.path.join(box.workspace, "env.txt")).read() == "bar baz|"

    boxes = sealos.json("list")
    assert [(b["name"], b["status"], b["cpu"], b["memoryGiB"]) for b in boxes] == \
        [("web", "Running", 0.5, 1)]
    g = sealos.json("get", "web")
    assert g["status"] == "Running" and g["token"] == box.token

    pid = box.proc.pid
    sealos.run("pause", "web", check=0)
    assert sealos.json("get", "web")["status"] == "Stopped"
    wait_until(lambda: proc_state(pid) == "T", what="agent stopped")
    sealos.run("start", "web", check=0)  # waits until Running + healthy
    assert sealos.json("get", "web")["status"] == "Running" and proc_state(pid) in ("S", "R")
    assert agent_sh(info, "cat env.txt")["stdout"] == "bar baz|"

    sealos.run("restart", "web", check=0)
    g = sealos.json("get", "web")
    assert g["status"] == "Running" and g["agentUrl"] != info["agentUrl"]
    assert agent_sh(g, "cat env.txt")["stdout"] == "bar baz|"

    mon = sealos.json("monitor", "web")
    assert mon and all(s["cpuPercent"] == 1.5 and s["memoryPercent"] == 12.25 for s in mon)
    q = [p for m, p, ok in cp.requests if p == "/api/v1/devbox/web/monitor"]
    assert q, cp.requests
    assert "CPU%" in sealos.run("monitor", "web", check=0).out

    sealos.run("shutdown", "web", check=0)
    g = sealos.json("get", "web")
    assert g["status"] == "Shutdown" and g["agentUrl"] is None, g
    p = sealos.run("delete", "web", check=0)
    assert "deleted web" in p.out
    p = sealos.run("get", "web")
    assert p.returncode == 1 and "devbox 'web' not found" in p.err, p.err
    assert sealos.json("list") == []
    assert cp.auth_failures == 0
    assert len(cp.agent_exits) == 2  # shut down for restart, shut down at the end


def test_create_validation_and_no_wait(sealos):
    cp = sealos.cp
    p = sealos.run("create", "nort")
    assert p.returncode == 1 and "a runtime is required" in p.err, p.err
    p = sealos.run("create", "bad-rt", "--runtime", "cobol")
    assert p.returncode == 1 and "Runtime not found (HTTP 404" in p.err, p.err
    p = sealos.run("create", "bad-cpu", "--runtime", "go", "--cpu", "3")
    assert p.returncode == 1 and "resource.cpu" in p.err and "HTTP 400" in p.err, p.err
    p = sealos.run("create", "Bad_Name", "--runtime", "go")
    assert p.returncode == 1 and "invalid devbox name" in p.err
    assert not cp.managed
    info = sealos.json("create", "quick", "--runtime", "go", "--no-wait")
    assert info["status"] == "Pending", info
    p = sealos.run("create", "quick", "--runtime", "go")
    assert p.returncode == 1 and "Devbox already exists (HTTP 409" in p.err, p.err
    wait_until(lambda: sealos.json("get", "quick")["status"] == "Running", what="Running")
    sealos.run("delete", "quick", check=0)


def test_env_object_is_rejected_by_the_fake(sealos):
    """The fake validates like the server: env as an object (what the SDK sends) is a 400."""
    import urllib.request
    req = urllib.request.Request(
        sealos.cp.url + "/api/v1/devbox", method="POST",
        data=json.dumps({"name": "obj", "runtime": "go", "resource": {"cpu": 1, "memory": 2},
                         "env": {"FOO": "bar"}}).encode(),
        headers={"Authorization": urllib.parse.quote(fake_cp.KUBECONFIG_TEMPLATE, safe=""),
                 "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
    assert "env: Expected array" in json.loads(e.value.read())["message"]


def test_wrong_kubeconfig_is_refused(sealos, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(fake_cp.KUBECONFIG_TEMPLATE.replace("fake-kube-token", "stolen"))
    p = run(["--provider", "sealos", "--kubeconfig", str(other), "--api-url", sealos.cp.url,
             "list"])
    assert p.returncode == 255, (p.returncode, p.err)
    assert "invalid kubeconfig (HTTP 401" in p.err, p.err
    assert sealos.cp.auth_failures == 1  # 401 is not retried


@pytest.mark.parametrize("text,line,reason", [
    ("apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: [oops\n", 6,
     "YAML syntax error"),
    ("apiVersion: v1\nkind: Config\nclusters: []\n", 1, "no current-context"),
    ("current-context: nowhere\ncontexts: []\n", 1, "context 'nowhere' not found"),
    ("clusters:\n- name: c\n  cluster: {}\ncontexts:\n- name: x\n  context: {cluster: c}\n"
     "current-context: x\n", 2, "cluster 'c' has no server"),
])
def test_malformed_kubeconfig(tmp_path, text, line, reason):
    kc = tmp_path / "bad.yaml"
    kc.write_text(text)
    p = run(["--provider", "sealos", "--kubeconfig", str(kc), "--api-url",
             "http://127.0.0.1:9", "list"])
    assert p.returncode == 255, (p.returncode, p.err)
    lines = p.err.strip().splitlines()
    assert len(lines) == 1, p.err
    assert lines[0].startswith("devboxctl: kubeconfig %s:%d: %s" % (kc, line, reason)), p.err


def test_missing_kubeconfig(tmp_path):
    p = run(["--provider", "sealos", "list"],
            env_extra={"HOME": str(tmp_path), "DEVBOX_API_URL": "http://127.0.0.1:9"})
    assert p.returncode == 255
    assert "kubeconfig %s/.kube/config: No such file or directory" % tmp_path in p.err, p.err


def test_kubeconfig_and_api_url_from_environment(sealos, tmp_path):
    """$KUBECONFIG (first entry of the list) and $DEVBOX_API_URL instead of the options."""
    p = run(["--provider", "sealos", "list", "-o", "json"],
            env_extra={"KUBECONFIG": sealos.kubeconfig + ":" + str(tmp_path / "unused"),
                       "DEVBOX_API_URL": sealos.cp.url + "/"})
    assert p.returncode == 0, p.err
    assert json.loads(p.out) == []
    p = run(["list"], env_extra={"DEVBOX_PROVIDER": "sealos", "KUBECONFIG": sealos.kubeconfig,
                                 "DEVBOX_API_URL": sealos.cp.url})
    assert p.returncode == 0 and p.out.split()[0] == "NAME", p.err
    assert sealos.cp.auth_failures == 0


def test_wait_until_ready_times_out(tmp_path):
    cp, kc = start_cp(tmp_path, pending_s=3600)
    try:
        s = Sealos(cp, kc)
        p = s.run("create", "slow", "--runtime", "go", "--wait-timeout", "2")
        assert p.returncode == 255, (p.returncode, p.err)
        assert "did not become ready within 2000 ms (last: Pending)" in p.err, p.err
        # the poll backs off: 200 ms x1.5 ... -> a handful of polls in 2 s, not hundreds
        n = detail_gets(cp, "slow")
        assert 3 <= n <= 12, n
        s.run("delete", "slow", check=0)
    finally:
        check_agents(cp)


def test_wait_until_ready_bounds_hanging_requests(sealos):
    """A control plane that stalls does not stretch --wait-timeout: the detail request in flight is
    cut at the deadline instead of running its own 30 s (and being retried)."""
    cp = sealos.cp
    sealos.run("create", "hang", "--runtime", "go", "--no-wait", check=0)
    cp.detail_delay_s = 60
    t0 = time.monotonic()
    p = sealos.run("start", "hang", "--timeout", "2")  # the alias of --wait-timeout
    elapsed = time.monotonic() - t0
    assert p.returncode == 255 and "did not become ready within 2000 ms" in p.err, p.err
    assert elapsed < 20, elapsed  # unbounded, the first request alone would take 30 s
    cp.detail_delay_s = 0
    sealos.run("delete", "hang", check=0)


def test_unreachable_control_plane(tmp_path):
    kc = tmp_path / "kc.yaml"
    kc.write_text(fake_cp.KUBECONFIG_TEMPLATE)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    p = run(["--provider", "sealos", "--kubeconfig", str(kc), "--api-url",
             "http://127.0.0.1:%d" % port, "get", "x"])
    assert p.returncode == 255, (p.returncode, p.err)
    assert "get x: control plane http://127.0.0.1:%d:" % port in p.err, p.err


def test_gateway_errors_are_retried(sealos):
    """502/503/504 without the JSON envelope are retried after 1 s, 2 s, ...; the 4th failure
    in a row is reported as unreachable (exit 255)."""
    cp = sealos.cp
    cp.fail_next = [503, 502]
    p = sealos.run("list", "-o", "json", check=0)
    assert json.loads(p.out) == [] and cp.fail_next == []
    assert sum(1 for m, path, ok in cp.requests if path == "/api/v1/devbox") == 3
    cp.fail_next = [504] * 4
    p = sealos.run("templates")
    assert p.returncode == 255, (p.returncode, p.err)  # the control plane is unreachable
    assert "templates: request failed (HTTP 504" in p.err, p.err
    assert cp.fail_next == []


def test_retry_depends_on_the_envelope_code(sealos):
    """§5.1: a 500 without the JSON envelope is retried like 502/503/504; an error the control
    plane answered itself (JSON with a numeric code) is not, whatever its status."""
    cp = sealos.cp
    cp.fail_next = [500]
    assert sealos.json("list") == [] and cp.fail_next == []
    n = len(cp.requests)
    cp.fail_next = [(503, {"code": 503, "statusText": "", "message": "quota busy",
                           "data": None})] + [500] * 3
    p = sealos.run("templates")
    assert p.returncode == 255 and "templates: quota busy (HTTP 503" in p.err, p.err
    assert len(cp.requests) == n + 1 and len(cp.fail_next) == 3, cp.requests[n:]
    cp.fail_next = [(500, {"code": 500, "message": "internal"})]
    p = sealos.run("list")
    assert p.returncode == 1 and "list devboxes: internal (HTTP 500" in p.err, p.err
    assert cp.fail_next == [] and len(cp.requests) == n + 2


def test_agent_url_and_token_resolution(sealos):
    """§5.5: base64-decoded agentServer.token; agentServer.url, when set, names the agent
    host under the control plane's domain; else ports[0].publicAddress."""
    cp = sealos.cp
    cp.add("plain", "http://127.0.0.1:1234", "tok+/=en")
    cp.add("named", "http://127.0.0.1:1234", "t2")
    cp.devboxes["named"]["agentServer"]["url"] = "abc123"
    g = sealos.json("get", "plain")
    assert g["agentUrl"] == "http://127.0.0.1:1234" and g["token"] == "tok+/=en", g
    assert g["workspace"] == "/home/devbox/project" and g["cpu"] == 1 and g["memoryGiB"] == 2
    g = sealos.json("get", "named")
    assert g["agentUrl"] == "https://devbox-abc123-agent.127.0.0.1" and g["token"] == "t2", g
    cp.devboxes["plain"]["agentServer"]["token"] = "!!not base64!!"
    p = sealos.run("get", "plain")
    assert p.returncode == 255 and "agentServer.token is not base64" in p.err, p.err


@pytest.mark.parametrize("token", [
    "YWJj=ZGVm",                                # data after the padding
    "YWJjZ",                                    # a dangling 6 bits
    "====",                                     # padding only
    "dG9rCkV2aWw6IHg=",                         # "tok\nEvil: x": a header line injected
    "dG9rAGVu",                                 # "tok\0en": silently truncated before
])
def test_agent_token_must_be_strict_base64_without_control_characters(sealos, token):
    sealos.cp.add("tk", "http://127.0.0.1:1234", "x")
    sealos.cp.devboxes["tk"]["agentServer"]["token"] = token
    p = sealos.run("get", "tk")
    assert p.returncode == 255 and "get tk: agentServer.token is not base64" in p.err, p.err


def test_agent_server_url_must_be_a_host_label(sealos):
    """agentServer.url becomes part of the agent's host name, and the token is sent there: a
    value with '/', '@', '.' or ':' would let the reply pick another host."""
    cp = sealos.cp
    cp.add("ev", "http://127.0.0.1:1234", "t")
    for bad in ("evil.example/x", "a@evil.example", "x:1", "a b"):
        cp.devboxes["ev"]["agentServer"]["url"] = bad
        p = sealos.run("get", "ev", "-o", "json")
        assert p.returncode == 255 and "agentServer.url '%s' is not a host name label" % bad \
            in p.err, (bad, p.returncode, p.out, p.err)
    cp.devboxes["ev"]["agentServer"]["url"] = "Ab-12"
    assert sealos.json("get", "ev")["agentUrl"] == "https://devbox-Ab-12-agent.127.0.0.1"


def test_out_of_range_numbers_in_replies(sealos):
    cp = sealos.cp
    cp.add("big", "http://127.0.0.1:1234", "t")
    cp.devboxes["big"]["ports"][0]["number"] = 1e300
    g = sealos.json("get", "big")
    assert g["ports"][0]["number"] == 0, g
