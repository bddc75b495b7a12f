"""devboxctl lifecycle verbs with the local provider: the real devboxctl, real devbox-agent
daemons it starts, a --home in a temporary directory.

Every box is deleted at teardown; before that each agent log is checked for sanitizer reports.
Processes inside a box are started through the agent's own HTTP API with the URL and token
that `devboxctl get -o json` reports.
"""
import http.client
import json
import os
import signal
import stat
import subprocess
import time
import urllib.parse

import pytest

from conftest import AGENT_BIN, BUILD, SANITIZER_RE, wait_until

CTL = os.path.join(BUILD, "ctl", "devboxctl")


class Ctl:
    def __init__(self, home):
        self.home = home

    def run(self, *args, check=None, timeout=90):
        env = dict(os.environ)
        for k in ("DEVBOX_HOME", "DEVBOX_PROVIDER", "DEVBOX_AGENT", "TOKEN"):
            env.pop(k, None)
        p = subprocess.run([CTL, "--home", self.home] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=timeout)
        p.out = p.stdout.decode(errors="replace")
        p.err = p.stderr.decode(errors="replace")
        assert not SANITIZER_RE.search(p.err), p.err
        if check is not None:
            assert p.returncode == check, "devboxctl %s -> %d\nstdout: %s\nstderr: %s" % (
                " ".join(args), p.returncode, p.out, p.err)
        return p

    def json(self, *args):
        p = self.run(*args, "-o", "json", check=0)
        return json.loads(p.out)

    def get(self, name):
        return self.json("get", name)


@pytest.fixture
def ctl(tmp_path):
    home = str(tmp_path / "home")
    c = Ctl(home)
    yield c
    if not os.path.isdir(home):
        return
    reports = []
    for name in sorted(os.listdir(home)):
        log = os.path.join(home, name, "agent.log")
        if os.path.exists(log):
            text = open(log, errors="replace").read()
            if SANITIZER_RE.search(text):
                reports.append("%s:\n%s" % (name, text[-6000:]))
            c.run("delete", name)
    assert not reports, "sanitizer report in agent logs:\n" + "\n".join(reports)


class AgentApi:
    """The agent's compat API at the box's URL with its token."""

    def __init__(self, info):
        u = urllib.parse.urlsplit(info["agentUrl"])
        self.host, self.port, self.token = u.hostname, u.port, info["token"]

    def call(self, method, path, obj=None, auth=True, timeout=30):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = {"Content-Type": "application/json"}
            if auth:
                h["Authorization"] = "Bearer " + self.token
            c.request(method, path, body=json.dumps(obj) if obj is not None else None,
                      headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def sh(self, script):
        st, body = self.call("POST", "/api/v1/process/exec-sync",
                             {"command": "sh", "args": ["-c", script], "timeout": 20})
        assert st == 200, (st, body)
        return json.loads(body)

    def background(self, script):
        st, body = self.call("POST", "/api/v1/process/exec",
                             {"command": "sh", "args": ["-c", script]})
        assert st == 200, (st, body)
        return json.loads(body)["pid"]

    def healthy(self):
        try:
            st, body = self.call("GET", "/health", auth=False, timeout=2)
            return st == 200 and json.loads(body).get("healthStatus") == "ok"
        except OSError:
            return False


def proc_state(pid):
    """State letter from /proc/PID/stat, or None when the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return s[s.rindex(")") + 2]


def gone(pid):
    return proc_state(pid) in (None, "Z", "X")


def test_create_exec_pause_start_restart_shutdown_delete(ctl):
    info = ctl.json("create", "demo")
    assert info["name"] == "demo" and info["status"] == "Running", info
    assert info["agentUrl"].startswith("http://127.0.0.1:"), info
    assert info["token"] and len(info["token"]) >= 16, info
    assert info["runtime"] == "local" and info["reason"] is None
    home = os.path.realpath(ctl.home)
    assert info["workspace"] == os.path.join(home, "demo", "workspace")
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    st_file = os.path.join(home, "demo", "state.json")
    assert stat.S_IMODE(os.stat(st_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(home, "demo", "agent.log")).st_mode) == 0o600
    assert json.load(open(st_file))["token"] == info["token"]

    api = AgentApi(info)
    assert api.healthy()
    assert api.call("GET", "/api/v1/process/list", auth=False)[0] == 401  # token required
    r = api.sh("echo hello > f.txt && cat f.txt && pwd")
    assert r["exitCode"] == 0 and r["stdout"].split() == ["hello", info["workspace"]], r
    assert open(os.path.join(info["workspace"], "f.txt")).read() == "hello\n"
    # The token is not handed to processes inside the box.
    assert "TOKEN=" not in api.sh("env")["stdout"]

    agent_pid = info["agentPid"]
    sleeper = api.background("exec sleep 300")
    wait_until(lambda: proc_state(sleeper) in ("S", "R"), what="sleeper running")

    # pause: the agent and its descendants are frozen (state T) until start.
    ctl.run("pause", "demo", check=0)
    assert proc_state(agent_pid) == "T" and proc_state(sleeper) == "T"
    g = ctl.get("demo")
    assert g["status"] == "Paused" and g["agentPid"] == agent_pid, g
    ctl.run("start", "demo", check=0)
    assert proc_state(agent_pid) in ("S", "R") and proc_state(sleeper) in ("S", "R")
    assert ctl.get("demo")["status"] == "Running"
    assert api.sh("cat f.txt")["stdout"] == "hello\n"

    # restart: a new agent (new pid and port), the old processes are gone, files stay.
    ctl.run("restart", "demo", check=0)
    g = ctl.get("demo")
    assert g["status"] == "Running" and g["agentPid"] != agent_pid, g
    assert g["token"] == info["token"]
    assert gone(agent_pid) and gone(sleeper)
    api = AgentApi(g)
    assert api.sh("cat f.txt")["stdout"] == "hello\n"

    # shutdown: Stopped, no agent, no URL; the log shows both runs and no sanitizer report.
    pid2 = g["agentPid"]
    ctl.run("shutdown", "demo", check=0)
    g = ctl.get("demo")
    assert g["status"] == "Stopped" and g["agentUrl"] is None and g["agentPid"] == 0, g
    assert gone(pid2)
    log = open(os.path.join(home, "demo", "agent.log")).read()
    assert log.count("listening on 127.0.0.1:") == 2, log
    assert not SANITIZER_RE.search(log), log
    assert ctl.run("pause", "demo").returncode == 1  # nothing to pause

    ctl.run("start", "demo", check=0)
    g = ctl.get("demo")
    assert g["status"] == "Running" and AgentApi(g).healthy()

    p = ctl.run("delete", "demo", check=0)
    assert "deleted demo" in p.out
    assert not os.path.exists(os.path.join(home, "demo"))
    assert gone(g["agentPid"])
    assert ctl.json("list") == []


def test_state_kept_across_invocations_list_and_get(ctl):
    a = ctl.json("create", "beta")
    b = ctl.json("create", "alpha")
    boxes = ctl.json("list")
    assert [x["name"] for x in boxes] == ["alpha", "beta"]
    assert all(x["status"] == "Running" for x in boxes), boxes
    # Each devboxctl run is a new process: what it reports comes from the state file + /proc.
    assert ctl.get("beta")["agentUrl"] == a["agentUrl"]
    assert ctl.get("alpha")["agentPid"] == b["agentPid"]
    table = ctl.run("list", check=0).out.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATUS", "RUNTIME"]
    assert [ln.split()[:2] for ln in table[1:]] == [["alpha", "Running"], ["beta", "Running"]]
    detail = ctl.run("get", "alpha", check=0).out
    assert "Status:     Running" in detail and a["token"] not in detail
    # A taken name.
    p = ctl.run("create", "alpha")
    assert p.returncode == 1 and "devbox 'alpha' already exists" in p.err, p.err
    assert ctl.get("alpha")["agentPid"] == b["agentPid"]  # untouched


def test_stale_agent_detected_and_repaired(ctl):
    info = ctl.json("create", "stale")
    os.kill(info["agentPid"], signal.SIGKILL)
    wait_until(lambda: gone(info["agentPid"]), what="agent gone")
    g = ctl.get("stale")
    assert g["status"] == "Error", g
    assert "agent exited" in g["reason"] and str(info["agentPid"]) in g["reason"], g
    assert g["agentUrl"] is None
    assert [x["status"] for x in ctl.json("list")] == ["Error"]
    assert "Reason:     agent exited" in ctl.run("get", "stale", check=0).out
    p = ctl.run("exec", "stale", "--", "true")
    assert p.returncode == 1 and "devbox is Error: agent exited" in p.err, p.err
    ctl.run("start", "stale", check=0)  # repairs: a new agent
    g = ctl.get("stale")
    assert g["status"] == "Running" and g["reason"] is None and g["agentPid"] != info["agentPid"]
    assert AgentApi(g).sh("echo back")["stdout"] == "back\n"


def test_stale_pid_reused_is_not_trusted(ctl):
    """The state records the agent's start time: a live process with the same pid but another
    start time is not the agent."""
    info = ctl.json("create", "reuse")
    st_file = os.path.join(ctl.home, "reuse", "state.json")
    st = json.load(open(st_file))
    os.kill(info["agentPid"], signal.SIGKILL)
    wait_until(lambda: gone(info["agentPid"]), what="agent gone")
    st["agent_pid"] = os.getpid()  # alive, but not started at agent_start
    with open(st_file + ".new", "w") as f:
        json.dump(st, f)
    os.chmod(st_file + ".new", 0o600)
    os.rename(st_file + ".new", st_file)
    g = ctl.get("reuse")
    assert g["status"] == "Error" and "agent exited" in g["reason"], g
    ctl.run("shutdown", "reuse", check=0)  # must not signal pytest itself
    assert ctl.get("reuse")["status"] == "Stopped"


def test_env_given_at_create_reaches_every_agent(ctl):
    info = ctl.json("create", "envbox", "--env", "FOO=bar baz", "--env", "HOME=/nowhere",
                    "--env", "EMPTY=")
    script = 'printf "%s|%s|%s" "$FOO" "$HOME" "${EMPTY-unset}"'
    assert AgentApi(info).sh(script)["stdout"] == "bar baz|/nowhere|"
    ctl.run("restart", "envbox", check=0)
    assert AgentApi(ctl.get("envbox")).sh(script)["stdout"] == "bar baz|/nowhere|"
    p = ctl.run("create", "envbad", "--env", "TOKEN=x")
    assert p.returncode == 1 and "env TOKEN is the agent's own setting" in p.err, p.err
    assert ctl.run("create", "envbad", "--env", "NOEQUALS").returncode == 2
    assert [b["name"] for b in ctl.json("list")] == ["envbox"]


def test_unknown_box_bad_names_and_usage(ctl):
    for verb in ("get", "start", "pause", "restart", "shutdown", "delete", "monitor"):
        p = ctl.run(verb, "nope")
        assert p.returncode == 1, (verb, p.returncode, p.err)
        assert "devbox 'nope' not found" in p.err, (verb, p.err)
    for bad in ("Bad_Name", "a.b", "x" * 64, "end-", "a/b"):
        p = ctl.run("create", bad)
        assert p.returncode == 1 and "invalid devbox name" in p.err, (bad, p.returncode, p.err)
        assert ctl.run("get", bad).returncode == 1
    assert ctl.run("create", "-x").returncode == 2  # an option, not a name
    p = ctl.run("create", "Bad_Name")
    assert p.returncode == 1 and "create Bad_Name: invalid devbox name" in p.err
    assert ctl.run("create").returncode == 2
    assert ctl.run("get").returncode == 2
    assert ctl.run("start").returncode == 2
    assert ctl.run("create", "x", "--bogus").returncode == 2
    assert ctl.run("create", "x", "--port", "99999").returncode == 2
    assert ctl.run("list", "-o", "yaml").returncode == 2
    assert not os.path.exists(os.path.join(ctl.home, "x"))
    # Several names: one failure makes the exit status 1, the others still happen.
    ctl.json("create", "one")
    p = ctl.run("shutdown", "one", "nope")
    assert p.returncode == 1 and "stopped one" in p.out and "'nope' not found" in p.err
    assert ctl.get("one")["status"] == "Stopped"


def test_monitor_measures_box_processes(ctl):
    info = ctl.json("create", "busy")
    api = AgentApi(info)
    idle = ctl.json("monitor", "busy")
    assert len(idle) == 1 and idle[0]["processes"] == 1, idle
    assert idle[0]["memoryBytes"] > 1 << 20
    api.background("exec sh -c 'while :; do :; done'")
    api.background("exec sleep 300")
    wait_until(lambda: ctl.json("monitor", "busy")[0]["processes"] >= 3, what="3 processes")
    # One spinning shell is ~100 % of a core; on a loaded 2-core CI machine one 200 ms sample
    # may see much less, so take the first of several samples to show it.
    s = wait_until(lambda: (lambda s: s if s["cpuPercent"] > 20 else None)(
        ctl.json("monitor", "busy")[0]), timeout=30, what="the spinning shell's CPU")
    assert s["memoryBytes"] > idle[0]["memoryBytes"], (s, idle)
    assert 0 < s["memoryPercent"] < 100 and abs(s["timeMs"] / 1000 - time.time()) < 60
    t = ctl.run("monitor", "busy", check=0).out.splitlines()
    assert t[0].split() == ["TIME", "CPU%", "MEM%", "MEMORY", "PROCESSES"]
    # Paused: the processes are still there, using no CPU.
    ctl.run("pause", "busy", check=0)
    s = ctl.json("monitor", "busy")[0]
    assert s["processes"] >= 3 and s["cpuPercent"] < 5, s
    ctl.run("delete", "busy", check=0)


def test_concurrent_creates_of_one_name(ctl):
    procs = [subprocess.Popen([CTL, "--home", ctl.home, "create", "race"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    results = [(p.wait(timeout=90), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(rc for rc, _ in results) == [0, 1, 1, 1], results
    assert all("already exists" in err for rc, err in results if rc), results
    assert [b["name"] for b in ctl.json("list")] == ["race"]


def test_devboxctl_exec_reaches_the_box(ctl):
    """dbx_box_connect: devboxctl exec BOX resolves the box's agent URL and token."""
    info = ctl.json("create", "ex")
    p = ctl.run("exec", "ex", "--", "sh", "-c", "pwd; echo out; echo err >&2; exit 3")
    assert p.returncode == 3, (p.returncode, p.err)
    assert p.out.split() == [info["workspace"], "out"] and "err" in p.err
    ctl.run("pause", "ex", check=0)
    p = ctl.run("exec", "ex", "--", "true")
    assert p.returncode == 1 and "connect ex: devbox is Paused, not Running" in p.err, p.err
    ctl.run("shutdown", "ex", check=0)
    p = ctl.run("exec", "ex", "--", "true")
    assert p.returncode == 1 and "devbox is Stopped" in p.err, p.err


def test_templates_and_help(ctl):
    assert ctl.json("templates") == ["local"]
    assert ctl.run("templates", check=0).out.split() == ["RUNTIME", "local"]
    for verb in ("create", "list", "get", "start", "pause", "restart", "shutdown", "delete",
                 "monitor", "templates"):
        p = ctl.run(verb, "--help", check=0)
        assert p.out.startswith("Usage: devboxctl") and verb in p.out, (verb, p.out)


def test_agent_binary_resolution(ctl, tmp_path):
    bad = ctl.run("--agent", str(tmp_path / "no-such-agent"), "create", "noagent")
    assert bad.returncode == 1 and "no-such-agent: not an executable file" in bad.err, bad.err
    assert ctl.json("list") == []
    # A program that exits at once: the error shows the last line it printed.
    fake = tmp_path / "fake-agent"
    fake.write_text("#!/bin/sh\necho 'fake agent: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    p = ctl.run("--agent", str(fake), "create", "noagent")
    assert p.returncode == 1 and "fake agent: cannot start" in p.err, p.err
    assert not os.path.exists(os.path.join(ctl.home, "noagent"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "huge-pid", "bad-status",
                                    "too-large"])
def test_damaged_state_file_is_reported_and_deletable(ctl, damage):
    """A state file that cannot be used shows the box as Error with the file named (not
    hidden from list, no crash), and delete still removes the box so the name is free again."""
    info = ctl.json("create", "dmg")
    st_file = os.path.join(os.path.realpath(ctl.home), "dmg", "state.json")
    text = open(st_file).read()
    if damage == "truncated":
        text = text[:len(text) // 2]
    elif damage == "empty":
        text = ""
    elif damage == "huge-pid":
        st = json.loads(text)
        st["agent_pid"] = 1e300
        text = json.dumps(st)
    elif damage == "bad-status":
        st = json.loads(text)
        st["status"] = "Deleted"
        text = json.dumps(st)
    else:
        text = " " * (1 << 20)
    with open(st_file, "w") as f:
        f.write(text)
    g = ctl.get("dmg")
    assert g["status"] == "Error" and g["agentUrl"] is None, g
    assert g["reason"] == "unusable state file %s; delete the devbox" % st_file, g
    assert [(b["name"], b["status"]) for b in ctl.json("list")] == [("dmg", "Error")]
    p = ctl.run("start", "dmg")
    assert p.returncode == 1 and p.err.startswith("devboxctl: start dmg: ") and \
        st_file in p.err, p.err
    ctl.run("delete", "dmg", check=0)
    assert ctl.json("list") == []
    # The agent the lost state file pointed to is not known any more; end it here.
    os.kill(info["agentPid"], signal.SIGTERM)
    wait_until(lambda: gone(info["agentPid"]), what="old agent gone")
    assert ctl.json("create", "dmg")["status"] == "Running"


def test_agent_output_before_its_port_line(ctl, tmp_path):
    """The port is found after any amount of earlier output (here 20 KiB on stderr), not only
    in the first 4 KiB of the log."""
    chatty = tmp_path / "chatty-agent"
    chatty.write_text("#!/bin/sh\nhead -c 20000 /dev/zero | tr '\\\\0' 'w' >&2\necho >&2\n"
                      "exec '%s' \"$@\"\n" % AGENT_BIN)
    chatty.chmod(0o755)
    p = ctl.run("--agent", str(chatty), "create", "chatty", "-o", "json", check=0)
    info = json.loads(p.out)
    assert info["status"] == "Running" and AgentApi(info).healthy(), info


def test_delete_does_not_reach_into_mounts(ctl, tmp_path):
    """Something mounted inside a box (another box's FUSE mount, a bind mount) is not emptied
    by delete: the delete fails naming the directory, and a later delete, once the mount is
    gone, removes the rest."""
    if subprocess.run(["unshare", "-rm", "true"], stderr=subprocess.DEVNULL).returncode:
        pytest.skip("no unprivileged user and mount namespaces")
    info = ctl.json("create", "mnt")
    ws = info["workspace"]
    script = ('mkdir -p "$1/mnt" && mount -t tmpfs none "$1/mnt" && echo precious > "$1/mnt/f"'
              ' && "$2" --home "$3" delete mnt; echo "rc=$?"; cat "$1/mnt/f"')
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", ws, CTL, ctl.home],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert "rc=1\nprecious\n" in p.stdout, (p.stdout, p.stderr)
    assert "delete mnt: remove %s/mnt" % os.path.realpath(ctl.home) in p.stderr, p.stderr
    assert gone(info["agentPid"])
    assert os.path.isdir(os.path.join(ws, "mnt"))  # the mount point outlived the namespace
    ctl.run("delete", "mnt", check=0)  # no state file any more: the leftover still goes
    assert not os.path.exists(os.path.join(ctl.home, "mnt"))
    assert ctl.run("delete", "mnt").returncode == 1


def test_agent_daemon_inherits_nothing_from_devboxctl(ctl):
    """The agent is a daemon: its own session, stdin /dev/null, none of devboxctl's other fds,
    and neither devboxctl's blocked nor its ignored signals."""
    r, w = os.pipe()

    def pre():
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})

    env = dict(os.environ)
    env.pop("DEVBOX_HOME", None)
    try:
        p = subprocess.run([CTL, "--home", ctl.home, "create", "dmn", "-o", "json"],
                           stdin=subprocess.DEVNULL, capture_output=True, env=env,
                           pass_fds=(w,), preexec_fn=pre, timeout=90)
    finally:
        os.close(w)
    assert p.returncode == 0, p.stderr
    pid = json.loads(p.stdout)["agentPid"]
    status = dict(ln.split(":\t", 1) for ln in open("/proc/%d/status" % pid).read().splitlines()
                  if ":\t" in ln)
    blocked, ignored = int(status["SigBlk"], 16), int(status["SigIgn"], 16)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        assert not blocked & (1 << (sig - 1)), status["SigBlk"]
    assert not ignored & (1 << (signal.SIGQUIT - 1)), status["SigIgn"]
    fds = {int(fd): os.readlink("/proc/%d/fd/%s" % (pid, fd)) for fd in os.listdir(
        "/proc/%d/fd" % pid)}
    assert fds[0] == "/dev/null", fds
    assert not any(t.startswith("pipe:") for t in fds.values()), fds
    stat_fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    assert stat_fields[3] != str(os.getsid(0)) and stat_fields[4] == "0", stat_fields  # sid, tty
    os.close(r)


def test_proxy_from_environment_is_not_used_for_local_agents(ctl):
    """With http_proxy / all_proxy set (a dead proxy here), the local agent on 127.0.0.1 is
    still checked directly: the box is Running, and its token never goes to a proxy."""
    ctl.json("create", "px")
    env = dict(os.environ)
    env.pop("DEVBOX_HOME", None)
    env.update({"http_proxy": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
                "no_proxy": ""})
    p = subprocess.run([CTL, "--home", ctl.home, "get", "px", "-o", "json"],
                       stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    g = json.loads(p.stdout)
    assert g["status"] == "Running" and g["reason"] is None, g
