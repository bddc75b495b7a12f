"""devboxctl file and process verbs (ls cat rm mkdir mv ps logs kill ports) against a real agent.

BOX is the agent's URL with the token in $DEVBOX_TOKEN, so these tests need no provider.
They assert what a user sees: output, -o json documents, files in the workspace, error
messages naming the verb, the path and the reason, and the exit statuses of ctl/ctl.h.
"""
import json
import os
import re
import socket
import stat
import subprocess

import pytest

from conftest import BUILD, SANITIZER_RE, wait_until

CTL = os.path.join(BUILD, "ctl", "devboxctl")


def ctl(*args, token="test-token", input=None, timeout=60):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = token
    env["TZ"] = "UTC"  # ls -l dates
    p = subprocess.run([CTL] + [str(a) for a in args], capture_output=True, env=env,
                       input=input, timeout=timeout)
    err = p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(err), err
    return p.returncode, p.stdout, err


def ok(*args, **kw):
    rc, out, err = ctl(*args, **kw)
    assert rc == 0, (args, rc, err)
    return out


def write(ws, rel, data=b"", mode=None):
    p = os.path.join(ws, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(p, mode)
    return p


@pytest.fixture
def box(agent):
    return agent.base


VERBS = ["ls", "cat", "rm", "mkdir", "mv", "ps", "logs", "kill", "ports"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    rc, out, err = ctl(verb, "--help")
    assert rc == 0 and out.decode().startswith("Usage: devboxctl " + verb), (out, err)


@pytest.mark.parametrize("args", [["ls"], ["cat", "http://127.0.0.1:1"], ["rm"],
                                  ["mkdir", "http://127.0.0.1:1"], ["mv", "B", "x"],
                                  ["logs", "B"], ["kill", "B"], ["ports"], ["ls", "-Z", "B"],
                                  ["kill", "-s", "NOPE", "B", "x"], ["mkdir", "-m", "9", "B", "d"]])
def test_usage_errors_exit_2(args):
    rc, out, err = ctl(*args)
    assert rc == 2, (args, rc, err)
    assert "Try 'devboxctl " + args[0] + " --help'" in err


@pytest.mark.parametrize("args,msg", [
    (["ls", "-Z", "B"], "devboxctl ls: unknown option '-Z'"),
    (["cp", "--bogus=1", "a", "B:b"], "devboxctl cp: unknown option '--bogus'"),
    (["create", "--bogus", "n"], "devboxctl create: unknown option '--bogus'"),
    (["watch", "-n"], "devboxctl watch: option '-n' needs an argument"),
    (["mount", "--wait"], "devboxctl mount: option '--wait' needs an argument"),
    (["umount", "-x", "d"], "devboxctl umount: unknown option '-x'"),
    (["exec", "--workdir"], "devboxctl exec: option '--workdir' needs an argument"),
    (["rm", "-o", "json", "B", "x"], "devboxctl rm: -o does not apply"),
    (["start", "-o", "json", "n"], "devboxctl start: -o does not apply"),
])
def test_usage_errors_one_style(args, msg):
    rc, out, err = ctl(*args)
    lines = err.splitlines()
    assert rc == 2 and out == b"", (args, rc, err)
    assert lines[0].startswith(msg) and lines[1:] == ["Try 'devboxctl %s --help'." % args[0]], err


def test_output_option_after_the_verb(box):
    rc, out, err = ctl("ls", "-o", "json", box)
    assert rc == 0 and isinstance(json.loads(out), list), err
    rc, out, err = ctl("ports", "--output=json", box)
    assert rc == 0 and isinstance(json.loads(out), list), err


# ---- ls ----------------------------------------------------------------------------------------

def test_ls_names_sorted_hidden_only_with_a(box, workspace):
    write(workspace, "b.txt", b"bb")
    write(workspace, "a.txt", b"a")
    write(workspace, ".hidden", b"")
    os.mkdir(os.path.join(workspace, "dir"))
    assert ok("ls", box).decode().split("\n") == ["a.txt", "b.txt", "dir", ""]
    assert ok("ls", "-a", box).decode().split() == [".hidden", "a.txt", "b.txt", "dir"]
    assert ok("ls", box, "dir") == b""


def test_ls_long_format(box, workspace):
    write(workspace, "d/file", b"12345", mode=0o640)
    os.symlink("file", os.path.join(workspace, "d", "link"))
    os.utime(os.path.join(workspace, "d", "file"), (1_600_000_000, 1_600_000_000))
    lines = ok("ls", "-l", box, "d").decode().splitlines()
    assert len(lines) == 2
    st = os.stat(os.path.join(workspace, "d", "file"))
    assert re.match(r"^-rw-r----- +1 +%d +%d +5 Sep 13 +2020 file$" % (st.st_uid, st.st_gid),
                    lines[0]), lines[0]
    assert re.match(r"^lrwxrwxrwx +1 .* link -> file$", lines[1]), lines[1]
    # -d: the directory itself; a symlink argument is shown, not followed.
    lines = ok("ls", "-ld", box, "d", "d/link").decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("d") and lines[0].endswith(" d")
    assert lines[1].endswith(" d/link -> file")


def test_ls_json(box, workspace):
    write(workspace, "d/f", b"xyz", mode=0o600)
    os.mkdir(os.path.join(workspace, "d", "sub"))
    doc = json.loads(ok("ls", "-o", "json", box, "d"))
    by = {e["name"]: e for e in doc}
    assert set(by) == {"f", "sub"}
    assert by["f"]["type"] == "file" and by["f"]["size"] == 3 and by["f"]["mode"] == "0600"
    assert by["f"]["path"] == "d/f"
    assert by["f"]["ino"] == os.stat(os.path.join(workspace, "d", "f")).st_ino
    assert by["sub"]["type"] == "dir"
    # The global -o works too; a file argument lists the file itself.
    doc = json.loads(ok("-o", "json", "ls", box, "d/f"))
    assert [e["path"] for e in doc] == ["d/f"]


def test_ls_missing_and_outside(box, workspace):
    rc, out, err = ctl("ls", box, "nope")
    assert rc == 1
    assert err == "devboxctl: ls nope: No such file or directory\n"
    rc, out, err = ctl("ls", box, "../..")
    assert rc == 1
    assert "devboxctl: ls ../..: path leads outside the workspace" in err
    rc, out, err = ctl("ls", box, "/etc")
    assert rc == 1 and "outside the workspace" in err


# ---- cat ---------------------------------------------------------------------------------------

def test_cat_several_files_exact_bytes(box, workspace):
    data = bytes(range(256)) * 1000
    write(workspace, "bin", data)
    write(workspace, "t", b"tail\n")
    assert ok("cat", box, "bin", "t") == data + b"tail\n"


def test_cat_errors(box, workspace):
    write(workspace, "t", b"ok\n")
    os.mkdir(os.path.join(workspace, "dir"))
    rc, out, err = ctl("cat", box, "a/b", "t")
    assert rc == 1
    assert out == b"ok\n"  # the other files are still printed
    assert err == "devboxctl: cat a/b: No such file or directory\n"
    rc, out, err = ctl("cat", box, "dir")
    assert rc == 1 and err.startswith("devboxctl: cat dir: ")
    rc, out, err = ctl("cat", box, "../../etc/passwd")
    assert rc == 1 and out == b""
    assert "cat ../../etc/passwd: path leads outside the workspace" in err


def test_wrong_token_and_unreachable_exit_255(box, workspace):
    write(workspace, "t", b"secret")
    rc, out, err = ctl("cat", box, "t", token="wrong")
    assert rc == 255 and out == b""
    assert "authentication failed (wrong token?)" in err
    # Bound but not listening: connections are refused and no other process can take it.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    for args in (["ls", dead], ["cat", dead, "x"], ["ps", dead], ["ports", dead],
                 ["rm", dead, "x"], ["mkdir", dead, "x"], ["mv", dead, "a", "b"]):
        rc, out, err = ctl(*args)
        assert rc == 255, (args, rc, err)
        assert "connection refused" in err and dead in err, err
    s.close()


# ---- rm / mkdir / mv ---------------------------------------------------------------------------

def test_rm(box, workspace):
    write(workspace, "f", b"x")
    write(workspace, "tree/a/b/c.txt", b"x")
    write(workspace, "tree/.dot", b"x")
    os.symlink("/etc", os.path.join(workspace, "tree", "a", "link"))
    ok("rm", box, "f")
    assert not os.path.exists(os.path.join(workspace, "f"))
    rc, out, err = ctl("rm", box, "tree")
    assert rc == 1 and "rm tree: Is a directory" in err
    assert os.path.isdir(os.path.join(workspace, "tree"))
    ok("rm", "-r", box, "tree")
    assert not os.path.lexists(os.path.join(workspace, "tree"))
    assert os.path.isdir("/etc")  # the symlink was removed, not followed
    rc, out, err = ctl("rm", box, "gone")
    assert rc == 1 and err == "devboxctl: rm gone: No such file or directory\n"
    ok("rm", "-f", box, "gone")
    rc, out, err = ctl("rm", "-rf", box, ".")
    assert rc == 1 and "refusing to remove the workspace root" in err
    assert os.path.isdir(workspace)


def test_mkdir(box, workspace):
    ok("mkdir", box, "d1")
    assert os.path.isdir(os.path.join(workspace, "d1"))
    rc, out, err = ctl("mkdir", box, "d1")
    assert rc == 1 and err == "devboxctl: mkdir d1: File exists\n"
    rc, out, err = ctl("mkdir", box, "x/y/z")
    assert rc == 1 and "mkdir x/y/z: No such file or directory" in err
    ok("mkdir", "-p", box, "x/y/z", "d1")
    assert os.path.isdir(os.path.join(workspace, "x", "y", "z"))
    ok("mkdir", "-m", "700", box, "private")
    assert stat.S_IMODE(os.stat(os.path.join(workspace, "private")).st_mode) == 0o700
    write(workspace, "file", b"")
    rc, out, err = ctl("mkdir", "-p", box, "file")
    assert rc == 1 and "mkdir file: File exists" in err
    rc, out, err = ctl("mkdir", box, "../escape")
    assert rc == 1 and "outside the workspace" in err
    assert not os.path.exists(os.path.join(os.path.dirname(workspace), "escape"))


def test_mv(box, workspace):
    write(workspace, "a", b"A")
    write(workspace, "b", b"B")
    write(workspace, "c", b"C")
    os.mkdir(os.path.join(workspace, "dir"))
    ok("mv", box, "a", "renamed")
    assert open(os.path.join(workspace, "renamed"), "rb").read() == b"A"
    ok("mv", box, "renamed", "dir")
    assert os.path.exists(os.path.join(workspace, "dir", "renamed"))
    ok("mv", box, "b", "c", "dir")
    assert sorted(os.listdir(os.path.join(workspace, "dir"))) == ["b", "c", "renamed"]
    write(workspace, "x", b"X")
    write(workspace, "y", b"Y")
    rc, out, err = ctl("mv", "-n", box, "x", "y")
    assert rc == 1 and "mv x: File exists" in err
    assert open(os.path.join(workspace, "y"), "rb").read() == b"Y"
    ok("mv", box, "x", "y")
    assert open(os.path.join(workspace, "y"), "rb").read() == b"X"
    rc, out, err = ctl("mv", box, "missing", "z")
    assert rc == 1 and err == "devboxctl: mv missing: No such file or directory\n"
    rc, out, err = ctl("mv", box, "y", "../../y")
    assert rc == 1 and "outside the workspace" in err
    assert os.path.exists(os.path.join(workspace, "y"))


# ---- ps / logs / kill / ports ------------------------------------------------------------------

def start_compat(agent, cmd):
    r = agent.api("POST", "/api/v1/process/exec", {"command": "sh", "args": ["-c", cmd]})
    assert r["status"] == 0, r
    return r["processId"]


def start_exec(agent, argv):
    st, hd, data = agent.post_json("/exec/v1/start", {"argv": argv})
    assert st == 200, data
    return json.loads(data)["id"]


def ps_json(box):
    return {p["id"]: p for p in json.loads(ok("ps", "-o", "json", box))}


def test_ps_lists_compat_processes_and_execs(agent, box):
    pid_c = start_compat(agent, "exec sleep 30")
    pid_e = start_exec(agent, ["sleep", "30"])
    ps = ps_json(box)
    assert ps[pid_c]["kind"] == "process" and ps[pid_c]["running"] is True
    assert ps[pid_c]["status"] == "running" and ps[pid_c]["exitCode"] is None
    assert ps[pid_e]["kind"] == "exec" and ps[pid_e]["command"] == "sleep 30"
    assert ps[pid_e]["pid"] > 0
    table = ok("ps", box).decode().splitlines()
    assert table[0].split() == ["ID", "PID", "KIND", "STATUS", "EXIT", "STARTED", "COMMAND"]
    assert any(l.startswith(pid_c) and "running" in l for l in table[1:])
    ok("kill", "-s", "KILL", box, pid_c, pid_e)
    wait_until(lambda: not any(p["running"] for p in ps_json(box).values()), what="killed")
    ps = ps_json(box)
    assert ps[pid_c]["status"] == "killed"
    assert ps[pid_e]["signal"] == "SIGKILL" and ps[pid_e]["exitCode"] is None


def test_kill_default_term_and_errors(agent, box):
    pid_c = start_compat(agent, "exec sleep 30")
    ok("kill", box, pid_c)
    wait_until(lambda: ps_json(box)[pid_c]["status"] != "running", what="terminated")
    assert ps_json(box)[pid_c]["signal"] == "SIGTERM"
    rc, out, err = ctl("kill", box, pid_c)
    assert rc == 1 and err == "devboxctl: kill %s: the process is not running\n" % pid_c
    rc, out, err = ctl("kill", box, "nosuchid")
    assert rc == 1 and "kill nosuchid: Process not found" in err
    pid_c = start_compat(agent, "exec sleep 30")
    rc, out, err = ctl("kill", "-s", "USR1", box, pid_c)
    assert rc == 1 and "can only be sent SIGTERM, SIGINT, SIGHUP or SIGKILL" in err
    assert ps_json(box)[pid_c]["running"]  # nothing was sent
    # An exec's group accepts any signal.
    pid_e = start_exec(agent, ["sh", "-c",
                               "trap 'exit 7' USR1; touch trap-set; while :; do sleep 0.05; done"])
    wait_until(lambda: os.path.exists(os.path.join(agent.workspace, "trap-set")), what="trap")
    ok("kill", "-s", "SIGUSR1", box, pid_e)
    wait_until(lambda: not ps_json(box)[pid_e]["running"], what="exec exited")
    assert ps_json(box)[pid_e]["exitCode"] == 7
    ok("kill", "-s", "9", box, pid_c)


def test_logs(agent, box):
    pid_c = start_compat(agent, "echo out1; echo err1 >&2; echo out2")
    wait_until(lambda: not ps_json(box)[pid_c]["running"], what="process done")
    out = ok("logs", box, pid_c).decode()
    assert sorted(out.splitlines()) == ["err1", "out1", "out2"]
    pid_e = start_exec(agent, ["sh", "-c", "printf 'exec says hi\\n'; echo e >&2"])
    wait_until(lambda: not ps_json(box)[pid_e]["running"], what="exec done")
    out = ok("logs", box, pid_e).decode()
    assert "exec says hi\n" in out and "e\n" in out
    rc, out, err = ctl("logs", box, "nosuchid")
    assert rc == 1 and "logs nosuchid: Process not found" in err
    rc, out, err = ctl("logs", box, "bad/id")
    assert rc == 1 and "not a process id" in err


def test_ports(box):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        wait_until(lambda: port in json.loads(ok("ports", "-o", "json", box)), what="port")
        table = ok("ports", box).decode().split()
        assert table[0] == "PORT" and str(port) in table[1:]
    finally:
        s.close()
    wait_until(lambda: port not in json.loads(ok("ports", "-o", "json", box)),
               what="port gone")
