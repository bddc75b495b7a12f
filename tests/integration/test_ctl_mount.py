"""devboxctl mount / umount with the real devbox-fs and a real agent: start detached, list,
counters, errors (wrong token, unreachable agent, daemon failure), a crashed daemon's mount,
busy and lazy unmounts, --foreground, and the mount-helper path (`mount -t fuse.devbox-fs`,
what /etc/fstab uses)."""
import errno
import json
import re
import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import BUILD, SANITIZER_RE, wait_until

CTL = os.path.join(BUILD, "ctl", "devboxctl")
FS_BIN = os.path.join(BUILD, "fs", "devbox-fs")


def mount_type(path):
    """fstype of the topmost mount at path, or None (never touches the mount itself)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == path:
                found = right.split()[0]
    return found


def daemons_for(path):
    """PIDs of devbox-fs processes with path among their arguments."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                args = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"devbox-fs" and \
                os.fsencode(path) in [a.rstrip(b"/") for a in args[1:]]:
            pids.append(int(d))
    return pids


def pid_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


@pytest.fixture
def ctl(agent, tmp_path):
    """Runs devboxctl with the agent's token and a private state dir; unmounts leftovers."""
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.pop("DEVBOX_FS", None)
    dirs = []

    def run(*args, check=None, env_extra=None, timeout=60):
        e = dict(env)
        if env_extra:
            e.update(env_extra)
        p = subprocess.run([CTL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=e, timeout=timeout)
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if check is not None:
            assert p.returncode == check, "devboxctl %s: rc %d\n%s%s" % (
                " ".join(args), p.returncode, out, err)
        return p.returncode, out, err

    run.env = env
    run.dirs = dirs
    run.url = agent.base
    yield run
    for d in dirs:
        if mount_type(d):
            subprocess.run(["fusermount3", "-u", "-z", d])
        for pid in daemons_for(d):
            wait_until(lambda: pid_gone(pid), timeout=20, what="devbox-fs %d to exit" % pid)
    logs = tmp_path / "state" / "devbox-fs"
    if logs.is_dir():
        for name in os.listdir(logs):
            if name.endswith(".log"):
                text = (logs / name).read_text(errors="replace")
                assert not SANITIZER_RE.search(text), "sanitizer report in %s:\n%s" % (
                    name, text[-8000:])


def new_dir(ctl, tmp_path, name="mnt"):
    d = str(tmp_path / name)
    os.mkdir(d)
    ctl.dirs.append(d)
    return d


def test_mount_list_stats_umount(ctl, tmp_path, workspace):
    d = new_dir(ctl, tmp_path)
    with open(os.path.join(workspace, "hello.txt"), "w") as f:
        f.write("from the devbox\n")
    rc, out, err = ctl("-o", "json", "mount", ctl.url, d, check=0)
    info = json.loads(out)
    assert info["mountpoint"] == d
    pid = info["pid"]
    # The log lives apart from the local provider's root ($XDG_STATE_HOME/devbox): a box named
    # like it cannot collide, and deleting a box cannot take a live mount's log with it.
    state = tmp_path / "state"
    assert info["log"] == str(state / "devbox-fs" / (d.lstrip("/").replace("/", "_") + ".log"))
    assert not (state / "devbox").exists()
    assert mount_type(d) == "fuse.devbox-fs"
    assert daemons_for(d) == [pid]
    # The token reaches the daemon through its environment, never its command line.
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        assert b"test-token" not in f.read()
    assert open(os.path.join(d, "hello.txt")).read() == "from the devbox\n"
    with open(os.path.join(d, "back.txt"), "w") as f:
        f.write("from here\n")
    assert open(os.path.join(workspace, "back.txt")).read() == "from here\n"

    rc, out, err = ctl("mount", check=0)
    assert out.splitlines()[0].split()[:3] == ["MOUNTPOINT", "SOURCE", "OPTIONS"]
    assert any(line.split()[0] == d for line in out.splitlines()[1:]), out
    rc, out, err = ctl("-o", "json", "mount", check=0)
    assert [m for m in json.loads(out) if m["mountpoint"] == d], out
    rc, out2, err = ctl("mount", "-o", "json", check=0)
    mine = lambda text: [m for m in json.loads(text) if m["mountpoint"] == d]  # noqa: E731
    assert mine(out2) == mine(out)  # other mounts on this machine may come and go meanwhile

    rc, out, err = ctl("mount", "--stats", d, check=0)
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert rows["mountpoint"].strip() == d
    assert int(rows["pid"]) == pid
    assert int(rows["ops.create"]) >= 1
    rc, out, err = ctl("-o", "json", "mount", "--stats", d, check=0)
    s = json.loads(out)
    assert s["pid"] == pid and s["ops"]["create"] >= 1 and "remote_calls" in s

    # Mounting again on the same directory is refused.
    rc, out, err = ctl("mount", ctl.url, d)
    assert rc == 1 and "already" in err

    ctl("umount", d, check=0)
    assert mount_type(d) is None
    wait_until(lambda: pid_gone(pid), timeout=20, what="the daemon to exit after umount")
    rc, out, err = ctl("umount", d)
    assert rc == 1 and "not mounted" in err


def test_mount_a_box_by_name(ctl, tmp_path):
    """BOX as a devbox name: the local provider resolves its agent URL and token."""
    home = str(tmp_path / "home")
    agent_bin = os.path.join(BUILD, "agent", "devbox-agent")
    g = ["--home", home, "--agent", agent_bin]
    env = {"DEVBOX_TOKEN": ""}
    ctl(*g, "create", "fsbox", check=0, env_extra=env, timeout=120)
    try:
        ws = os.path.join(home, "fsbox", "workspace")
        assert os.path.isdir(ws), os.listdir(os.path.join(home, "fsbox"))
        with open(os.path.join(ws, "inside.txt"), "w") as f:
            f.write("inside fsbox\n")
        d = new_dir(ctl, tmp_path)
        rc, out, err = ctl(*g, "-o", "json", "mount", "fsbox", d, check=0, env_extra=env)
        pid = json.loads(out)["pid"]
        assert open(os.path.join(d, "inside.txt")).read() == "inside fsbox\n"
        rc, out, err = ctl("mount", check=0)
        assert d in out
        ctl("umount", d, check=0)
        wait_until(lambda: pid_gone(pid), timeout=20, what="the daemon to exit")
        assert ctl(*g, "mount", "no-such-box", d, env_extra=env)[0] == 1
    finally:
        ctl(*g, "delete", "fsbox", check=0, env_extra=env, timeout=120)


def test_mount_errors(ctl, tmp_path, agent):
    d = new_dir(ctl, tmp_path)
    rc, out, err = ctl("mount", ctl.url, d, env_extra={"DEVBOX_TOKEN": "wrong"})
    assert rc == 255 and "authentication" in err, err
    # An agent that is not there (a port nobody listens on).
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc, out, err = ctl("mount", "http://127.0.0.1:%d" % port, d)
    assert rc == 255, err
    rc, out, err = ctl("mount", ctl.url, str(tmp_path / "missing"))
    assert rc == 1 and "No such file or directory" in err
    f = tmp_path / "file"
    f.write_text("x")
    rc, out, err = ctl("mount", ctl.url, str(f))
    assert rc == 1 and "not a directory" in err
    assert ctl("mount", ctl.url)[0] == 2
    assert ctl("mount", "--bogus", ctl.url, d)[0] == 2
    assert ctl("mount", "--wait", "0", ctl.url, d)[0] == 2
    assert ctl("umount")[0] == 2
    assert mount_type(d) is None and daemons_for(d) == []


def test_daemon_failure_is_reported(ctl, tmp_path):
    d = new_dir(ctl, tmp_path)
    fake = tmp_path / "failing-fs"
    fake.write_text("#!/bin/sh\necho 'devbox-fs: cannot do it: reason given by the daemon' >&2\n"
                    "exit 3\n")
    os.chmod(fake, 0o755)
    rc, out, err = ctl("mount", ctl.url, d, env_extra={"DEVBOX_FS": str(fake)})
    assert rc == 1
    assert "exited with status 3" in err and "reason given by the daemon" in err, err
    rc, out, err = ctl("mount", ctl.url, d,
                       env_extra={"DEVBOX_FS": str(tmp_path / "no-such-binary")})
    assert rc == 1 and "cannot run devbox-fs" in err, err
    assert mount_type(d) is None


def test_umount_cleans_up_a_crashed_daemon(ctl, tmp_path, workspace):
    d = new_dir(ctl, tmp_path)
    rc, out, err = ctl("-o", "json", "mount", ctl.url, d, check=0)
    pid = json.loads(out)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid_gone(pid), timeout=10, what="the killed daemon")
    with pytest.raises(OSError) as e:
        os.stat(d)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    rc, out, err = ctl("mount", ctl.url, d)
    assert rc == 1 and "umount" in err, err
    rc, out, err = ctl("umount", d, check=0)
    assert "gone" in err
    assert mount_type(d) is None
    assert stat.S_ISDIR(os.stat(d).st_mode)
    # And the directory can be mounted again.
    ctl("mount", ctl.url, d, check=0)
    with open(os.path.join(workspace, "again.txt"), "w") as f:
        f.write("again\n")
    wait_until(lambda: os.path.exists(os.path.join(d, "again.txt")), timeout=5,
               what="a file through the new mount")
    ctl("umount", d, check=0)


def test_umount_busy_then_lazy(ctl, tmp_path):
    d = new_dir(ctl, tmp_path)
    rc, out, err = ctl("-o", "json", "mount", ctl.url, d, check=0)
    pid = json.loads(out)["pid"]
    f = open(os.path.join(d, "held.txt"), "w")
    try:
        rc, out, err = ctl("umount", d)
        assert rc == 1 and "--lazy" in err, err
        assert mount_type(d) is not None
        ctl("umount", "--lazy", d, check=0)
        assert mount_type(d) is None
        f.write("still writable after the lazy detach\n")
    finally:
        f.close()
    wait_until(lambda: pid_gone(pid), timeout=20, what="the daemon to exit after the last user")


def test_mount_foreground(ctl, tmp_path):
    d = new_dir(ctl, tmp_path)
    p = subprocess.Popen([CTL, "mount", "--foreground", "-o", "soft", ctl.url, d],
                         env=ctl.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: mount_type(d) is not None or p.poll() is not None, timeout=20,
                   what="the foreground mount")
        assert p.poll() is None, p.stdout.read().decode(errors="replace")
        with open("/proc/%d/comm" % p.pid) as f:
            assert f.read().strip() == "devbox-fs"  # devboxctl became the daemon
        os.listdir(d)
        ctl("umount", d, check=0)
        out = p.communicate(timeout=20)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    assert not SANITIZER_RE.search(out), out


@pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) needs root")
def test_mount_t_fuse_devbox_fs(ctl, tmp_path, workspace, agent):
    """The mount-helper path: mount(8) runs /sbin/mount.fuse3, which runs
    `devbox-fs BOX DIR -o OPTS` found in $PATH (type fuse.devbox-fs), or the program named
    before '#' in the source (type fuse), as /etc/fstab lines do."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(FS_BIN, bindir / "devbox-fs")
    token = tmp_path / "token"
    token.write_text(agent.token + "\n")
    os.chmod(token, 0o600)
    with open(os.path.join(workspace, "via-helper.txt"), "w") as f:
        f.write("helper\n")
    env = dict(os.environ)
    env.pop("DEVBOX_TOKEN", None)
    env["PATH"] = str(bindir) + ":" + env["PATH"]
    opts = "soft,token_file=%s,_netdev,nofail,x-systemd.automount" % token

    # 1. `mount -t fuse.devbox-fs URL DIR -o OPTS`: mount(8) resets $PATH for its helpers, so
    #    run the helper it runs, /sbin/mount.fuse3, with the same arguments.
    d1 = new_dir(ctl, tmp_path, "m1")
    log = tmp_path / "m1.log"
    subprocess.run(["mount.fuse3", ctl.url, d1, "-t", "fuse.devbox-fs", "-o",
                    opts + ",log=%s" % log], env=env, check=True, timeout=60)
    assert mount_type(d1) == "fuse.devbox-fs"
    assert open(os.path.join(d1, "via-helper.txt")).read() == "helper\n"
    # the detached daemon's stderr is /dev/null: -o log=FILE keeps its log, with times
    wait_until(lambda: "info: mounted" in log.read_text(), timeout=10, what="the log line")
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z devbox-fs\[\d+\]: info: mounted ",
                     log.read_text(), re.M), log.read_text()
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600

    # 2. mount(8) itself, as for the fstab line
    #    /path/to/devbox-fs#URL  DIR  fuse  OPTS  0  0
    d2 = new_dir(ctl, tmp_path, "m2")
    subprocess.run(["mount", "-t", "fuse", "%s#%s" % (bindir / "devbox-fs", ctl.url), d2,
                    "-o", opts], env=env, check=True, timeout=60)
    assert open(os.path.join(d2, "via-helper.txt")).read() == "helper\n"
    rc, out, err = ctl("-o", "json", "mount", check=0)
    listed = {m["mountpoint"] for m in json.loads(out)}
    assert {d1, d2} <= listed, out
    rc, out, err = ctl("mount", "--stats", d2, check=0)
    assert "ops.read" in out

    for d in (d1, d2):
        pids = daemons_for(d)
        assert len(pids) == 1, pids
        ctl("umount", d, check=0)
        assert mount_type(d) is None
        wait_until(lambda: pid_gone(pids[0]), timeout=20, what="the helper-started daemon")


def test_help_and_usage(ctl):
    rc, out, err = ctl("mount", "--help", check=0)
    assert out.startswith("Usage: devboxctl mount") and "--foreground" in out \
        and "fuse.devbox-fs" in out
    rc, out, err = ctl("umount", "--help", check=0)
    assert out.startswith("Usage: devboxctl umount") and "--lazy" in out
    rc, out, err = ctl("mount", "-o", "soft")
    assert rc == 2
