"""Session routes: /api/v1/sessions/* (agent-api.md §2.4)."""
import os
import re
import tempfile

from conftest import wait_until
from _proc_helpers import ID_RE, TS_RE, group_members, wait_gone

SESSION_KEYS = {"sessionId", "shell", "cwd", "env", "sessionStatus", "createdAt", "lastUsedAt"}


def create(agent, obj=None):
    env = agent.api("POST", "/api/v1/sessions/create", obj or {})
    assert env["status"] == 0, env
    return env


def logs(agent, sid, **q):
    return agent.api("GET", "/api/v1/sessions/%s/logs" % sid, query=q or None)


def wait_log(agent, sid, entry):
    return wait_until(lambda: entry in logs(agent, sid)["logs"], what=repr(entry))


def test_create_shape_and_defaults(agent):
    env = create(agent)
    assert set(env) == {"status", "message", "sessionId", "shell", "cwd", "sessionStatus"}
    assert ID_RE.match(env["sessionId"])
    assert env["shell"] == "/bin/bash"
    assert env["cwd"] == agent.workspace
    assert env["sessionStatus"] == "active"


def test_get_and_list_shapes(agent):
    sid = create(agent, {"env": {"A": "1"}, "shell": "/bin/sh"})["sessionId"]
    one = agent.api("GET", "/api/v1/sessions/" + sid)
    assert set(one) == SESSION_KEYS | {"status", "message"}
    assert one["sessionId"] == sid and one["shell"] == "/bin/sh"
    assert one["env"] == {"A": "1"}
    assert one["sessionStatus"] == "active"
    assert re.fullmatch(TS_RE, one["createdAt"]) and re.fullmatch(TS_RE, one["lastUsedAt"])
    lst = agent.api("GET", "/api/v1/sessions")
    assert set(lst) == {"status", "message", "sessions"}
    mine = [s for s in lst["sessions"] if s["sessionId"] == sid]
    assert len(mine) == 1 and set(mine[0]) == SESSION_KEYS


def test_exec_output_goes_to_logs(agent):
    sid = create(agent, {"env": {"FOO": "bar"}})["sessionId"]
    r = agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "echo $FOO; echo e >&2"})
    assert r == {"status": 0, "message": "success", "exitCode": 0, "stdout": "", "stderr": "",
                 "duration": 0}
    wait_log(agent, sid, "[stdout] bar\n")
    wait_log(agent, sid, "[stderr] e\n")
    lg = logs(agent, sid)
    assert set(lg) == {"status", "message", "sessionId", "logs"}
    assert lg["logs"][0] == "[exec] echo $FOO; echo e >&2"
    assert logs(agent, sid, tail="1")["logs"] == lg["logs"][-1:]
    # State persists between commands: it is one shell.
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "X=42"})
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "echo x=$X"})
    wait_log(agent, sid, "[stdout] x=42\n")


def test_env_is_exported_quoted(agent):
    sid = create(agent)["sessionId"]
    val = "a b 'c' \"d\" $HOME `id`"
    r = agent.api("POST", "/api/v1/sessions/%s/env" % sid, {"env": {"V": val}})
    assert r == {"status": 0, "message": "success", "success": True}
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "printf '<%s>\\n' \"$V\""})
    wait_log(agent, sid, "[stdout] <%s>\n" % val)
    assert agent.api("GET", "/api/v1/sessions/" + sid)["env"] == {"V": val}
    r = agent.api("POST", "/api/v1/sessions/%s/env" % sid, {"env": {"BAD NAME": "x"}})
    assert r["status"] == 1422
    st, _, body = agent.post_json("/api/v1/sessions/%s/env" % sid, {})
    assert st == 422 and b"missing field `env`" in body


def test_cd(agent):
    os.makedirs(os.path.join(agent.workspace, "a b", "c"))
    sid = create(agent)["sessionId"]
    r = agent.api("POST", "/api/v1/sessions/%s/cd" % sid, {"path": "a b"})
    assert r == {"status": 0, "message": "success",
                 "workingDir": os.path.join(agent.workspace, "a b")}
    r = agent.api("POST", "/api/v1/sessions/%s/cd" % sid, {"path": "c"})
    assert r["workingDir"] == os.path.join(agent.workspace, "a b", "c")
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "pwd"})
    wait_log(agent, sid, "[stdout] %s\n" % os.path.join(agent.workspace, "a b", "c"))
    assert "[cd] " + os.path.join(agent.workspace, "a b") in logs(agent, sid)["logs"]
    r = agent.api("POST", "/api/v1/sessions/%s/cd" % sid, {"path": agent.workspace})
    assert r["workingDir"] == agent.workspace
    for bad in ("..", "/etc", "a b/../../x"):
        r = agent.api("POST", "/api/v1/sessions/%s/cd" % sid, {"path": bad})
        assert r["status"] == 1403, (bad, r)
    assert agent.api("GET", "/api/v1/sessions/" + sid)["cwd"] == agent.workspace


def test_terminate(agent):
    sid = create(agent, {"env": {"DBX_SESSION_MARK": "x"}})["sessionId"]
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "sleep 1000 & echo $$"})
    out = wait_until(lambda: [l for l in logs(agent, sid)["logs"] if l.startswith("[stdout]")],
                     what="pid")
    pid = int(out[0].split()[1])
    members = wait_until(lambda: (lambda m: m if len(m) >= 2 else None)(group_members(pid)),
                         what="shell and sleep")
    r = agent.api("POST", "/api/v1/sessions/%s/terminate" % sid)
    assert r == {"status": 0, "message": "success", "success": True}
    assert agent.api("GET", "/api/v1/sessions/" + sid)["sessionStatus"] == "terminated"
    wait_gone(members)
    for path, body in (("exec", {"command": "true"}), ("cd", {"path": "."}),
                       ("env", {"env": {"A": "b"}})):
        r = agent.api("POST", "/api/v1/sessions/%s/%s" % (sid, path), body)
        assert r == {"status": 1409, "message": "Session is not active"}, path
    r = agent.api("POST", "/api/v1/sessions/%s/terminate" % sid)
    assert r == {"status": 1409, "message": "Session is not active"}
    assert logs(agent, sid)["status"] == 0


def test_shell_exit_marks_terminated(agent):
    sid = create(agent)["sessionId"]
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "exit 0"})
    wait_until(lambda: agent.api("GET", "/api/v1/sessions/" + sid)["sessionStatus"]
               == "terminated", what="terminated")


def test_unknown_session(agent):
    for method, path, body in (("GET", "", None), ("GET", "/logs", None),
                               ("POST", "/exec", {"command": "x"}), ("POST", "/cd", {"path": "."}),
                               ("POST", "/env", {"env": {}}), ("POST", "/terminate", None)):
        r = agent.api(method, "/api/v1/sessions/nosuchid" + path, body)
        assert r == {"status": 1404, "message": "Session not found"}, path


def test_create_failures(agent):
    outside = tempfile.mkdtemp(prefix="dbx-outside-")
    os.symlink(outside, os.path.join(agent.workspace, "out"))
    for wd in ("..", "/etc", "out"):
        r = agent.api("POST", "/api/v1/sessions/create", {"workingDir": wd})
        assert r["status"] == 1403, (wd, r)
    r = agent.api("POST", "/api/v1/sessions/create", {"workingDir": "missing"})
    assert r["status"] == 1500 and r["message"].startswith("Failed to spawn shell: No such file")
    r = agent.api("POST", "/api/v1/sessions/create", {"shell": "/no/such/shell"})
    assert r == {"status": 1500,
                 "message": "Failed to spawn shell: No such file or directory (os error 2)"}
    st, _, body = agent.request("POST", "/api/v1/sessions/create", body="{}")
    assert st == 415
    st, _, body = agent.post_json("/api/v1/sessions/create", {"env": {"A": 1}})
    assert st == 422
    st, _, body = agent.post_json("/api/v1/sessions/create", {"shell": 1})
    assert st == 422
    assert agent.api("GET", "/api/v1/sessions")["sessions"] == []
    os.rmdir(outside)


def test_working_dir_and_own_group(agent):
    os.mkdir(os.path.join(agent.workspace, "w"))
    env = create(agent, {"workingDir": "w", "env": {"DBX_SESSION_MARK": "y"}})
    assert env["cwd"] == os.path.join(agent.workspace, "w")
    sid = env["sessionId"]
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid,
              {"command": "pwd; ps -o pgid= -p $$; ps -o sid= -p $$; echo $$"})
    out = wait_until(lambda: (lambda l: l if len(l) >= 4 else None)(
        [x for x in logs(agent, sid)["logs"] if x.startswith("[stdout]")]), what="output")
    vals = [x.split(" ", 1)[1].strip() for x in out]
    assert vals[0] == os.path.join(agent.workspace, "w")
    assert vals[1] == vals[3] and vals[2] == vals[3]


def test_session_limit(agent):
    made = []
    try:
        for _ in range(64):
            made.append(create(agent, {"shell": "/bin/sh"})["sessionId"])
        r = agent.api("POST", "/api/v1/sessions/create", {"shell": "/bin/sh"})
        assert r == {"status": 1500, "message": "Failed to spawn shell: too many sessions (limit 64)"}
    finally:
        for sid in made:
            agent.api("POST", "/api/v1/sessions/%s/terminate" % sid)
    wait_until(lambda: agent.api("POST", "/api/v1/sessions/create", {"shell": "/bin/sh"})["status"]
               == 0, what="a free session slot")


def test_full_stdin_is_a_clear_error(agent):
    sid = create(agent, {"shell": "/bin/sh"})["sessionId"]
    # The shell sleeps and never reads: the pipe fills up, the agent does not block.
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "sleep 1000"})
    line = "x" * 200000
    seen_full = False
    for _ in range(40):
        r = agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "#" + line})
        if r["status"] != 0:
            assert r["status"] == 1500 and "input is full" in r["message"], r
            seen_full = True
            break
    assert seen_full
    st, _, _ = agent.get("/health")
    assert st == 200
    agent.api("POST", "/api/v1/sessions/%s/terminate" % sid)
