"""Process routes: /api/v1/process/{exec,exec-sync,sync-stream,list,ID/status,ID/kill,ID/logs}
(agent-api.md §2.3) against the real agent, plus the safety rules of DESIGN §1.4."""
import json
import os
import re
import signal
import socket
import tempfile
import time
import uuid

import pytest

from conftest import wait_until
from _proc_helpers import (ID_RE, TS_RE, RawHTTP, exec_bg, exec_sync, group_members, pid_alive,
                           lean_asan_env, rss_kib, sse_events, status, wait_done, wait_file, wait_gone)

STATUS_KEYS = {"status", "message", "processId", "pid", "command", "processStatus", "startTime",
               "endTime", "exitCode"}
SYNC_KEYS = {"status", "message", "stdout", "stderr", "exitCode", "durationMs", "startTime",
             "endTime"}


# ---- exec / status / list -----------------------------------------------------------------

def test_exec_status_list_shapes(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "echo hi; sleep 0.2"]})
    assert set(env) == {"status", "message", "processId", "pid", "processStatus"}
    assert env["message"] == "success"
    assert ID_RE.match(env["processId"])
    assert isinstance(env["pid"], int) and env["pid"] > 0
    assert env["processStatus"] == "running"

    st = status(agent, env["processId"])
    assert set(st) == STATUS_KEYS
    assert st["processId"] == env["processId"] and st["pid"] == env["pid"]
    # Deliberate divergence: the whole command line is recorded.
    assert st["command"] == "sh -c echo hi; sleep 0.2"
    assert re.fullmatch(TS_RE, st["startTime"])
    if st["processStatus"] == "running":
        assert st["endTime"] is None and st["exitCode"] is None

    st = wait_done(agent, env["processId"])
    assert st["processStatus"] == "completed"
    assert st["exitCode"] == 0
    assert re.fullmatch(TS_RE, st["endTime"])

    lst = agent.api("GET", "/api/v1/process/list")
    assert set(lst) == {"status", "message", "processes"}
    mine = [p for p in lst["processes"] if p["processId"] == env["processId"]]
    assert len(mine) == 1
    assert set(mine[0]) == STATUS_KEYS - {"status", "message"}
    assert mine[0]["processStatus"] == "completed"


def test_exec_failed_status_and_exit_code(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "exit 3"]})
    st = wait_done(agent, env["processId"])
    assert st["processStatus"] == "failed"
    assert st["exitCode"] == 3


def test_exec_signalled_status(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "kill -TERM $$"]})
    st = wait_done(agent, env["processId"])
    assert st["processStatus"] == "killed"
    assert st["exitCode"] == 128 + signal.SIGTERM


def test_unknown_process_id(agent):
    for method, path in (("GET", "status"), ("POST", "kill"), ("GET", "logs")):
        env = agent.api(method, "/api/v1/process/nosuchid/%s" % path)
        assert env == {"status": 1404, "message": "Process not found"}


# ---- argv, env, cwd, stdin ------------------------------------------------------------------

def test_exec_argv_is_exact_no_shell(agent):
    args = ["a b", "it's", '"q"', "$HOME", "x;y", "back\\slash", "*", "`id`", "", "tab\there"]
    env = exec_sync(agent, {"command": "printf", "args": ["[%s]\\n"] + args})
    assert env["status"] == 0, env
    assert env["stdout"] == "".join("[%s]\n" % a for a in args)


def test_command_is_split_like_a_shell_without_expansion(agent):
    env = exec_sync(agent, {"command": "printf '[%s]' 'a b' \"c d\" e\\ f $HOME x;y a#b # comment"})
    assert env["status"] == 0, env
    # '#' starts a comment only at the beginning of a word (shell-words, like upstream).
    assert env["stdout"] == "[a b][c d][e f][$HOME][x;y][a#b]"
    env = exec_sync(agent, {"command": "echo hi; echo there  # comment"})
    assert env["stdout"] == "hi; echo there\n"


def test_unbalanced_quote_is_the_program_name(agent):
    env = exec_sync(agent, {"command": "echo \"unterminated"})
    assert env["status"] == 1600
    assert "message" not in env
    assert env["stderr"] == 'exec: "echo "unterminated": executable file not found in $PATH'


def test_env_is_added(agent):
    env = exec_sync(agent, {"command": "sh", "args": ["-c", "printf '%s|%s' \"$FOO\" \"$HOME\""],
                            "env": {"FOO": "bar baz", "HOME": "/nowhere"}})
    assert env["stdout"] == "bar baz|/nowhere"


def test_token_not_visible_to_children(agent_factory):
    tok = "tok-" + uuid.uuid4().hex
    a = agent_factory(token=tok, env={"DEVBOX_JWT_SECRET": tok, "TOKEN": tok})
    env = exec_sync(a, {"command": "env"})
    assert env["status"] == 0 and env["exitCode"] == 0
    names = [ln.split("=", 1)[0] for ln in env["stdout"].splitlines()]
    assert "PATH" in names
    assert "TOKEN" not in names and "DEVBOX_JWT_SECRET" not in names
    assert tok not in env["stdout"]
    env = exec_sync(a, {"command": "cat", "args": ["/proc/self/environ"]})
    assert env["status"] == 0 and tok not in env["stdout"]
    with open("/proc/%d/cmdline" % a.proc.pid, "rb") as f:
        assert tok.encode() not in f.read()


def test_default_cwd_is_workspace(agent):
    env = exec_sync(agent, {"command": "pwd"})
    assert env["stdout"] == agent.workspace + "\n"


def test_cwd_relative_absolute_and_alias(agent):
    os.makedirs(os.path.join(agent.workspace, "sub", "deep"))
    sub = os.path.join(agent.workspace, "sub")
    assert exec_sync(agent, {"command": "pwd", "cwd": "sub"})["stdout"] == sub + "\n"
    assert exec_sync(agent, {"command": "pwd", "cwd": sub})["stdout"] == sub + "\n"
    assert exec_sync(agent, {"command": "pwd", "cwd": "sub/deep/.."})["stdout"] == sub + "\n"
    assert exec_sync(agent, {"command": "pwd", "cwd": "/home/devbox/project/sub"})["stdout"] \
        == sub + "\n"
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "pwd > here.txt"], "cwd": "sub"})
    wait_done(agent, env["processId"])
    with open(os.path.join(sub, "here.txt")) as f:
        assert f.read() == sub + "\n"


@pytest.mark.parametrize("route", ["exec", "exec-sync"])
def test_cwd_outside_is_refused_and_nothing_runs(agent, route):
    outside = tempfile.mkdtemp(prefix="dbx-outside-")
    os.symlink(outside, os.path.join(agent.workspace, "link-out"))
    os.symlink("/", os.path.join(agent.workspace, "link-root"))
    marker = "marker-" + uuid.uuid4().hex
    for cwd in ("..", "../..", outside, "/etc", "link-out", "link-root/tmp", "link-out/."):
        env = agent.api("POST", "/api/v1/process/" + route,
                        {"command": "touch", "args": [marker], "cwd": cwd})
        assert env["status"] == 1403, (cwd, env)
        assert "workspace" in env["message"], env
    time.sleep(0.2)
    for d in (outside, os.path.dirname(agent.workspace), "/etc", "/", "/tmp", agent.workspace):
        assert not os.path.exists(os.path.join(d, marker)), d
    os.rmdir(outside)


def test_cwd_missing_is_a_spawn_failure(agent):
    env = agent.api("POST", "/api/v1/process/exec", {"command": "true", "cwd": "nope"})
    assert env["status"] == 1600
    assert env["message"].startswith(
        "Failed to spawn process: No such file or directory (os error 2)"), env
    env = exec_sync(agent, {"command": "true", "cwd": "nope"})
    assert env["status"] == 1600 and "message" not in env
    assert env["exitCode"] == 127 and "No such file or directory" in env["stderr"]


def test_stdin_is_dev_null(agent):
    t0 = time.monotonic()
    env = exec_sync(agent, {"command": "cat", "timeout": 10})
    assert env["status"] == 0, env
    assert env["stdout"] == "" and env["exitCode"] == 0
    assert time.monotonic() - t0 < 5
    env = exec_sync(agent, {"command": "readlink", "args": ["/proc/self/fd/0"]})
    assert env["stdout"] == "/dev/null\n"


def test_no_agent_fd_leaks_into_children(agent):
    env = exec_sync(agent, {"command": "ls", "args": ["/proc/self/fd"]})
    fds = sorted(int(x) for x in env["stdout"].split())
    # 0, 1, 2 and the one ls opened to read the directory.
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4, fds


def test_children_get_own_session_and_process_group(agent):
    env = exec_bg(agent, {"command": "sleep", "args": ["30"]})
    pid = env["pid"]
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    pgid, sid = int(rest[2]), int(rest[3])
    assert pgid == pid and sid == pid
    assert pgid != os.getpgid(agent.proc.pid)
    agent.api("POST", "/api/v1/process/%s/kill" % env["processId"])
    wait_gone([pid])


def test_child_signal_mask_and_dispositions_are_clean(agent):
    env = exec_sync(agent, {"command": "grep", "args": ["-E", "^Sig(Blk|Ign)", "/proc/self/status"]})
    lines = dict(ln.split(":\t") for ln in env["stdout"].splitlines())
    assert int(lines["SigBlk"], 16) == 0
    ign = int(lines["SigIgn"], 16)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        assert not ign & (1 << (s - 1)), s


# ---- kill ------------------------------------------------------------------------------------

def test_kill_kills_the_whole_group(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "sleep 1000 & sleep 1000"]})
    pid = env["pid"]
    members = wait_until(lambda: (lambda m: m if len(m) >= 3 else None)(group_members(pid)),
                         what="sh and its two sleeps")
    r = agent.api("POST", "/api/v1/process/%s/kill" % env["processId"])
    assert r == {"status": 0, "message": "success", "success": True}
    wait_gone(members)
    st = status(agent, env["processId"])
    assert st["processStatus"] == "killed"
    st = wait_until(lambda: (lambda s: s if s["exitCode"] is not None else None)(
        status(agent, env["processId"])), what="exit code")
    assert st["exitCode"] == 137
    r = agent.api("POST", "/api/v1/process/%s/kill" % env["processId"])
    assert r == {"status": 1409, "message": "Process is not running"}


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGHUP", 129),
                                      ("SIGFOO", 137), ("", 137)])
def test_kill_signals(agent, sig, code):
    env = exec_bg(agent, {"command": "sleep", "args": ["1000"]})
    q = "?signal=" + sig if sig else ""
    r = agent.api("POST", "/api/v1/process/%s/kill%s" % (env["processId"], q))
    assert r["status"] == 0, r
    st = wait_until(lambda: (lambda s: s if s["exitCode"] is not None else None)(
        status(agent, env["processId"])), what="exit")
    assert st["processStatus"] == "killed" and st["exitCode"] == code


def test_kill_sigterm_handled_by_child(agent):
    env = exec_bg(agent, {"command": "sh", "args": [
        "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done"]})
    wait_until(lambda: agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])["logs"],
               what="ready")
    agent.api("POST", "/api/v1/process/%s/kill?signal=SIGTERM" % env["processId"])
    st = wait_done(agent, env["processId"])
    assert st["processStatus"] == "failed" and st["exitCode"] == 7


# ---- request validation ------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["exec", "exec-sync", "sync-stream"])
def test_bad_requests_are_framework_rejections(agent, route):
    path = "/api/v1/process/" + route
    st, hd, body = agent.request("POST", path, body='{"command":"true"}',
                                 headers={"Content-Type": "text/plain"})
    assert st == 415 and hd["content-type"].startswith("text/plain")
    assert body == b"Expected request with `Content-Type: application/json`"
    st, hd, body = agent.post_json(path, b'{"command":')
    assert st == 400 and body.startswith(b"Failed to parse the request body as JSON")
    cases = [({}, b"missing field `command`"),
             ({"command": 5}, b"command"),
             ({"command": "true", "args": "x"}, b"args"),
             ({"command": "true", "args": [1]}, b"args"),
             ({"command": "true", "env": {"A": 1}}, b"env"),
             ({"command": "true", "env": []}, b"env"),
             ({"command": "true", "cwd": 3}, b"cwd"),
             ({"command": "true", "timeout": -1}, b"timeout"),
             ({"command": "true", "timeout": "x"}, b"timeout")]
    for obj, frag in cases:
        st, hd, body = agent.post_json(path, obj)
        assert st == 422, (obj, st, body)
        assert body.startswith(b"Failed to deserialize the JSON body into the target type: ")
        assert frag in body, (obj, body)


def test_spawn_failures(agent):
    env = agent.api("POST", "/api/v1/process/exec", {"command": "no-such-program-xyz"})
    assert env == {"status": 1600,
                   "message": "Failed to spawn process: No such file or directory (os error 2)"}
    env = agent.api("POST", "/api/v1/process/exec", {"command": ""})
    assert env["status"] == 1600 and env["message"].startswith("Failed to spawn process: ")
    with open(os.path.join(agent.workspace, "noexec.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    env = agent.api("POST", "/api/v1/process/exec", {"command": "./noexec.sh"})
    assert env == {"status": 1600,
                   "message": "Failed to spawn process: Permission denied (os error 13)"}

    env = exec_sync(agent, {"command": "no-such-program-xyz", "args": ["a"]})
    assert set(env) == SYNC_KEYS - {"message"}
    assert env["status"] == 1600
    assert env["stdout"] == "" and env["exitCode"] == 127
    assert env["stderr"] == 'exec: "no-such-program-xyz": executable file not found in $PATH'
    assert re.fullmatch(TS_RE, env["startTime"]) and re.fullmatch(TS_RE, env["endTime"])
    env = exec_sync(agent, {"command": "./noexec.sh"})
    assert env["status"] == 1600 and "Permission denied" in env["stderr"]


def test_path_lookup_uses_the_request_path(agent):
    d = os.path.join(agent.workspace, "bin")
    os.mkdir(d)
    with open(os.path.join(d, "hello-dbx"), "w") as f:
        f.write("#!/bin/sh\necho from-path\n")
    os.chmod(os.path.join(d, "hello-dbx"), 0o755)
    env = exec_sync(agent, {"command": "hello-dbx", "env": {"PATH": d + ":/usr/bin:/bin"}})
    assert env["stdout"] == "from-path\n"


# ---- exec-sync ---------------------------------------------------------------------------------

def test_exec_sync_success_shape(agent):
    env = exec_sync(agent, {"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]})
    assert set(env) == SYNC_KEYS
    assert env["status"] == 0 and env["message"] == "success"
    assert env["stdout"] == "out\n" and env["stderr"] == "err\n"
    assert env["exitCode"] == 3
    assert isinstance(env["durationMs"], int) and env["durationMs"] >= 0
    assert re.fullmatch(TS_RE, env["startTime"]) and re.fullmatch(TS_RE, env["endTime"])


def test_exec_sync_signalled_exit_code_is_null(agent):
    env = exec_sync(agent, {"command": "sh", "args": ["-c", "kill -9 $$"]})
    assert env["status"] == 0 and env["exitCode"] is None


def test_exec_sync_timeout_kills_the_group(agent):
    pidfile = os.path.join(agent.workspace, "bg.pid")
    t0 = time.monotonic()
    env = exec_sync(agent, {"command": "sh", "args": [
        "-c", "sleep 1000 & echo $! > bg.pid; echo $$ >> bg.pid; sleep 1000"], "timeout": 1})
    assert env == {"status": 1500, "message": "Process execution timed out"}
    assert time.monotonic() - t0 < 10
    pids = [int(x) for x in wait_file(pidfile).split()]
    wait_gone(pids)


def test_exec_sync_client_disconnect_kills_the_group(agent):
    c = RawHTTP(agent)
    c.send("POST", "/api/v1/process/exec-sync",
           {"command": "sh", "args": ["-c", "sleep 1000 & echo $! > d.pid; echo $$ >> d.pid; wait"],
            "timeout": 600})
    pids = [int(x) for x in wait_file(os.path.join(agent.workspace, "d.pid")).split()]
    assert all(pid_alive(p) for p in pids)
    c.close()
    wait_gone(pids)
    assert agent.api("GET", "/api/v1/process/list")["status"] == 0


def test_exec_sync_output_limit(agent):
    env = exec_sync(agent, {"command": "sh", "args": [
        "-c", "echo $$ > big.pid; head -c 40000000 /dev/zero; sleep 1000"], "timeout": 120})
    assert env["status"] == 1500
    assert "limit" in env["message"] and "16 MiB" in env["message"], env
    pid = int(wait_file(os.path.join(agent.workspace, "big.pid")))
    wait_gone([pid])
    assert exec_sync(agent, {"command": "echo", "args": ["still serving"]})["stdout"] \
        == "still serving\n"


def test_non_utf8_output(agent):
    env = exec_sync(agent, {"command": "printf", "args": ["a\\377\\376b\\n\\351t\\351\\n"]})
    assert env["status"] == 0
    assert env["stdout"] == "a\ufffd\ufffdb\n\ufffdt\ufffd\n"
    env = exec_bg(agent, {"command": "sh", "args": [
        "-c", "printf 'bad \\377\\n'; printf 'good\\n'; printf '\\377' >&2; echo after >&2"]})
    wait_done(agent, env["processId"])
    logs = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])["logs"]
    assert logs.count("[stdout] bad \ufffd\n") == 1
    assert "[stdout] good\n" in logs
    assert "[stderr] \ufffdafter\n" in logs


# ---- logs -------------------------------------------------------------------------------------

def test_logs_json_shape_and_tail(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "echo one; echo two >&2; printf three"]})
    wait_done(agent, env["processId"])
    logs = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])
    assert set(logs) == {"status", "message", "processId", "pid", "processStatus", "exitCode",
                         "logs"}
    assert logs["processId"] == env["processId"] and logs["pid"] == env["pid"]
    assert logs["processStatus"] == "completed" and logs["exitCode"] == 0
    assert sorted(logs["logs"]) == sorted(["[stdout] one\n", "[stderr] two\n", "[stdout] three"])
    t = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"], query={"tail": "1"})
    assert t["logs"] == logs["logs"][-1:]
    t = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"], query={"tail": "0"})
    assert t["logs"] == []
    st, _, body = agent.get("/api/v1/process/%s/logs?tail=x" % env["processId"])
    assert st == 400 and body.startswith(b"Failed to deserialize query string")


def test_long_lines_are_split(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "head -c 100000 /dev/zero | tr '\\0' a; echo"]})
    wait_done(agent, env["processId"])
    logs = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])["logs"]
    assert logs == ["[stdout] " + "a" * 65536, "[stdout] " + "a" * (100000 - 65536) + "\n"]


@pytest.mark.parametrize("how", ["query", "accept"])
def test_logs_sse_stored_then_live_and_stays_open(agent, how):
    env = exec_bg(agent, {"command": "sh", "args": [
        "-c", "echo one; while [ ! -e go ]; do sleep 0.02; done; echo two >&2; echo three"]})
    pid = env["processId"]
    wait_until(lambda: agent.api("GET", "/api/v1/process/%s/logs" % pid)["logs"], what="one")
    c = RawHTTP(agent)
    if how == "query":
        c.send("GET", "/api/v1/process/%s/logs?stream=true" % pid)
    else:
        c.send("GET", "/api/v1/process/%s/logs" % pid, headers={"Accept": "text/event-stream"})
    assert c.read_head() == 200
    assert c.headers["content-type"] == "text/event-stream"
    assert c.headers["cache-control"] == "no-cache"
    assert c.chunked
    body = c.read_until(lambda b: b"one" in b)
    assert body == b"data: [stdout] one\ndata: \n\n"
    open(os.path.join(agent.workspace, "go"), "w").close()
    body = c.read_until(lambda b: b.count(b"\n\n") >= 3)
    # stdout and stderr are separate pipes: their relative order is not defined.
    blocks = body.split(b"\n\n")
    assert blocks[0] == b"data: [stdout] one\ndata: "
    assert sorted(blocks[1:3]) == [b"data: [stderr] two\ndata: ", b"data: [stdout] three\ndata: "]
    assert blocks[3:] == [b""]
    assert sorted(d for _, d in sse_events(body)) == ["[stderr] two\n", "[stdout] one\n",
                                                      "[stdout] three\n"]
    wait_done(agent, pid)
    assert c.quiet_for(0.5), "the stream must stay open after the process exits"
    assert not c.eof
    c.close()
    # The agent notices the gone client and keeps serving.
    assert status(agent, pid)["processStatus"] == "completed"


def test_logs_sse_tail(agent):
    env = exec_bg(agent, {"command": "sh", "args": ["-c", "echo a; echo b; echo c"]})
    wait_done(agent, env["processId"])
    c = RawHTTP(agent)
    c.send("GET", "/api/v1/process/%s/logs?stream=true&tail=2" % env["processId"])
    assert c.read_head() == 200
    body = c.read_until(lambda b: b.count(b"\n\n") >= 2)
    assert body == b"data: [stdout] b\ndata: \n\ndata: [stdout] c\ndata: \n\n"
    c.close()


# ---- sync-stream ------------------------------------------------------------------------------

def sse_post(agent, obj, timeout=30):
    c = RawHTTP(agent, timeout=timeout)
    c.send("POST", "/api/v1/process/sync-stream", obj,
           headers={"Accept": "text/event-stream"})
    assert c.read_head() == 200
    assert c.headers["content-type"] == "text/event-stream"
    assert c.headers["cache-control"] == "no-cache"
    body = c.read_all(timeout=timeout)
    c.close()
    return body


def test_sync_stream_framing_is_byte_exact(agent):
    body = sse_post(agent, {"command": "sh", "args": ["-c", "echo a; printf 'b\"c'; exit 3"]})
    ts = r'"timestamp":"' + TS_RE + '"'
    pat = (r'event: start\ndata: \{' + ts + r'\}\n\n'
           r'event: stdout\ndata: \{"output":"a\\n",' + ts + r'\}\n\n'
           r'event: stdout\ndata: \{"output":"b\\"c",' + ts + r'\}\n\n'
           r'event: complete\ndata: \{"exitCode":3,"duration":\d+,' + ts + r'\}\n\n')
    assert re.fullmatch(pat.encode(), body), body


def test_sync_stream_stderr_and_signal(agent):
    body = sse_post(agent, {"command": "sh", "args": ["-c", "echo e >&2; kill -9 $$"]})
    ev = sse_events(body)
    assert ev[0][0] == "start"
    assert ("stderr", json.dumps({"output": "e\n", "timestamp": json.loads(ev[1][1])["timestamp"]},
                                 separators=(",", ":"))) == ev[1]
    assert ev[-1][0] == "complete"
    assert json.loads(ev[-1][1])["exitCode"] is None


def test_sync_stream_spawn_failure(agent):
    body = sse_post(agent, {"command": "no-such-program-xyz"})
    ev = sse_events(body)
    assert [e for e, _ in ev] == ["start", "error"]
    err = json.loads(ev[1][1])
    assert set(err) == {"error", "durationMs", "timestamp"}
    assert err["durationMs"] == 0
    assert err["error"] == "Failed to spawn process: No such file or directory (os error 2)"
    body = sse_post(agent, {"command": "true", "cwd": "/etc"})
    ev = sse_events(body)
    assert [e for e, _ in ev] == ["start", "error"]
    assert "workspace" in json.loads(ev[1][1])["error"]


def test_sync_stream_timeout_kills_the_group(agent):
    t0 = time.monotonic()
    body = sse_post(agent, {"command": "sh", "args": [
        "-c", "sleep 1000 & echo $! > s.pid; echo $$ >> s.pid; echo started; wait"], "timeout": 1})
    assert time.monotonic() - t0 < 10
    ev = sse_events(body)
    assert [e for e, _ in ev] == ["start", "stdout", "error"]
    err = json.loads(ev[-1][1])
    assert err["error"] == "Execution timeout"
    assert err["durationMs"] >= 900
    wait_gone([int(x) for x in wait_file(os.path.join(agent.workspace, "s.pid")).split()])


def test_sync_stream_client_disconnect_kills_the_group(agent):
    c = RawHTTP(agent)
    c.send("POST", "/api/v1/process/sync-stream",
           {"command": "sh", "args": ["-c", "echo $$ > ss.pid; sleep 1000 & wait"]})
    assert c.read_head() == 200
    c.read_until(lambda b: b"event: start" in b)
    pid = int(wait_file(os.path.join(agent.workspace, "ss.pid")))
    members = wait_until(lambda: (lambda m: m if len(m) >= 2 else None)(group_members(pid)),
                         what="group")
    c.close()
    wait_gone(members)


def test_sync_stream_slow_client_is_bounded(agent_factory):
    agent = agent_factory(env=lean_asan_env())
    # ~150 MB of SSE: without backpressure the agent would queue it all while we stall.
    c = RawHTTP(agent, timeout=120)
    c.send("POST", "/api/v1/process/sync-stream",
           {"command": "sh", "args": ["-c", "head -c 100000000 /dev/zero | tr '\\0' a | fold -w 99"],
            "timeout": 600})
    assert c.read_head() == 200
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    base = rss_kib(agent.proc.pid)
    time.sleep(2.0)
    grown = rss_kib(agent.proc.pid) - base
    assert grown < 64 * 1024, "agent RSS grew by %d KiB for a stalled client" % grown
    n = 0
    tail = b""
    c.sock.settimeout(60)
    done = False
    # Count events without keeping the whole body.
    while not done:
        c._decode()
        data = tail + c.body
        c.body = b""
        n += data.count(b"event: stdout\n")
        tail = data[-64:]
        if b"event: complete" in data:
            break
        if not c._fill():
            break
    c.close()
    assert n == 100000000 // 99 + 1


# ---- limits and shutdown ------------------------------------------------------------------

def test_running_process_limit(agent):
    ids = []
    try:
        for _ in range(256):
            env = agent.api("POST", "/api/v1/process/exec", {"command": "sleep", "args": ["300"]})
            assert env["status"] == 0, env
            ids.append(env["processId"])
        env = agent.api("POST", "/api/v1/process/exec", {"command": "sleep", "args": ["1"]})
        assert env == {"status": 1600, "message":
                       "Failed to spawn process: too many running processes (limit 256)"}
        env = exec_sync(agent, {"command": "true"})
        assert env["status"] == 1600 and "too many running processes" in env["stderr"]
        st, _, body = agent.get("/health")
        assert st == 200 and json.loads(body)["healthStatus"] == "ok"
        assert len(agent.api("GET", "/api/v1/process/list")["processes"]) == 256
    finally:
        for i in ids:
            agent.api("POST", "/api/v1/process/%s/kill" % i)
    wait_until(lambda: exec_sync(agent, {"command": "true"})["status"] == 0, what="slots freed")


def test_background_timeout_kills(agent):
    env = exec_bg(agent, {"command": "sleep", "args": ["100"], "timeout": 1})
    st = wait_done(agent, env["processId"])
    assert st["processStatus"] == "killed" and st["exitCode"] == 137


def test_shutdown_kills_children(agent_factory):
    a = agent_factory()
    env = exec_bg(a, {"command": "sh", "args": ["-c", "sleep 1000 & sleep 1000"]})
    members = wait_until(lambda: (lambda m: m if len(m) >= 3 else None)(group_members(env["pid"])),
                         what="group")
    c = RawHTTP(a)
    c.send("GET", "/api/v1/process/%s/logs?stream=true" % env["processId"])
    assert c.read_head() == 200
    assert a.stop() == 0
    wait_gone(members)
    c.close()


def test_log_ring_is_bounded(agent):
    env = exec_bg(agent, {"command": "seq", "args": ["1", "20000"]})
    wait_done(agent, env["processId"])
    logs = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])["logs"]
    assert len(logs) == 10000
    assert logs[0] == "[stdout] 10001\n" and logs[-1] == "[stdout] 20000\n"
    # 8 MiB per process: 20 MB of 1000-byte lines keeps only the newest ~8 MiB.
    env = exec_bg(agent, {"command": "sh", "args": [
        "-c", "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 999; echo; echo last"]})
    wait_done(agent, env["processId"])
    logs = agent.api("GET", "/api/v1/process/%s/logs" % env["processId"])["logs"]
    total = sum(len(x.encode()) for x in logs)
    assert 7 * 2**20 < total <= 8 * 2**20
    assert logs[-1] == "[stdout] last\n"


def test_record_count_is_bounded(agent):
    first = [exec_bg(agent, {"command": "true"})["processId"] for _ in range(20)]
    for pid in first:
        wait_done(agent, pid)
    for _ in range(1024 - 20 + 10):
        exec_bg(agent, {"command": "true"})
    lst = agent.api("GET", "/api/v1/process/list")["processes"]
    assert len(lst) == 1024
    gone = [p for p in first if status(agent, p)["status"] == 1404]
    assert len(gone) == 10, gone
    assert gone == first[:10]


def test_logs_sse_lagging_client_is_bounded(agent_factory):
    agent = agent_factory(env=lean_asan_env())
    env = exec_bg(agent, {"command": "sh", "args": [
        "-c", "while [ ! -e go ]; do sleep 0.02; done; "
              "head -c 80000000 /dev/zero | tr '\\0' y | fold -w 199"]})
    c = RawHTTP(agent, timeout=60)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send("GET", "/api/v1/process/%s/logs?stream=true" % env["processId"])
    assert c.read_head() == 200
    base = rss_kib(agent.proc.pid)
    open(os.path.join(agent.workspace, "go"), "w").close()
    wait_done(agent, env["processId"], timeout=60)
    grown = rss_kib(agent.proc.pid) - base
    # The log ring keeps 8 MiB; the stream queue is capped near 4 MiB.
    assert grown < 48 * 1024, "agent RSS grew by %d KiB" % grown
    seen = b""
    deadline = time.monotonic() + 60
    while b"event: error\ndata: stream error\n\n" not in seen:
        assert time.monotonic() < deadline
        c._decode()
        seen = seen[-100:] + c.body
        c.body = b""
        if not c.buf or c.buf.count(b"\r\n") < 2:
            assert c._fill()
    c.close()


@pytest.mark.slow
def test_sse_keepalive_comments(agent):
    # One slow test (15 s keep-alive period) covering both SSE routes.
    env = exec_bg(agent, {"command": "sleep", "args": ["60"]})
    logs = RawHTTP(agent, timeout=30)
    logs.send("GET", "/api/v1/process/%s/logs?stream=true" % env["processId"])
    assert logs.read_head() == 200
    ss = RawHTTP(agent, timeout=30)
    ss.send("POST", "/api/v1/process/sync-stream", {"command": "sleep", "args": ["60"]})
    assert ss.read_head() == 200
    ss.read_until(lambda b: b"event: start" in b)
    t0 = time.monotonic()
    assert logs.read_until(lambda b: b":\n\n" in b, timeout=25) == b":\n\n"
    assert ss.read_until(lambda b: b":\n\n" in b, timeout=25).endswith(b"\n\n:\n\n")
    assert 13 < time.monotonic() - t0 < 25
    logs.close()
    ss.close()
    agent.api("POST", "/api/v1/process/%s/kill" % env["processId"])
