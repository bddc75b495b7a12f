"""`devboxctl cp` end to end: the real devboxctl against a real agent (BOX given as the agent's
URL with the token in $DEVBOX_TOKEN).

A 2,000-file tree with nested directories, symlinks (relative, absolute, dangling), modes and
nanosecond mtimes goes both ways and is compared entry by entry (content hash + lstat); single
files both ways, into existing directories; re-copies skip unchanged files and resend a changed
one; tar on stdin/stdout; -o json; and the errors a user meets (missing file, outside the
workspace, full disk on either side, wrong token, unreachable agent, bad command lines).
"""
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile

import pytest
import xxhash

from conftest import BUILD, SANITIZER_RE

CTL = os.path.join(BUILD, "ctl", "devboxctl")


def run(agent, *args, token=None, input=None, timeout=120):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token if token is None else token
    env.pop("DEVBOX_PROVIDER", None)
    r = subprocess.run([CTL] + list(args), env=env, input=input, capture_output=True,
                       timeout=timeout)
    err = r.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(err), "sanitizer report from devboxctl:\n" + err[-8000:]
    return r


def box(agent, path):
    return "%s:%s" % (agent.base, path)


def snapshot(root):
    """relpath -> (kind, content hash or link target, perm, mtime_ns), never following links."""
    out = {}
    for d, dirs, files in os.walk(root):
        names = dirs + files + (["."] if d == root else [])
        for n in names:
            p = os.path.normpath(os.path.join(d, n))
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p), None, st.st_mtime_ns)
            elif os.path.isdir(p):
                out[rel] = ("d", None, st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", xxhash.xxh3_64(f.read()).hexdigest(),
                                st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def temps(root):
    return [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs if ".dbx-" in n]


MODES = [0o600, 0o644, 0o755, 0o444, 0o640, 0o700, 0o400]


def make_tree(root, nfiles=2000):
    rnd = random.Random(1234)
    dirs = ["."]
    for i in range(60):
        parent = rnd.choice(dirs)
        d = os.path.normpath(os.path.join(parent, "d%02d" % i))
        os.makedirs(os.path.join(root, d))
        dirs.append(d)
    for i in range(nfiles):
        d = rnd.choice(dirs)
        p = os.path.join(root, d, "f%04d.txt" % i)
        with open(p, "wb") as f:
            f.write(os.urandom(rnd.randint(0, 9000)))
        os.chmod(p, rnd.choice(MODES))
        t = rnd.randint(10**9, 17 * 10**8) * 10**9 + rnd.randint(0, 10**9 - 1)
        os.utime(p, ns=(t, t))
    os.symlink("f0001.txt", os.path.join(root, "rel-link"))
    os.symlink("../" + os.path.basename(root), os.path.join(root, "d00", "up-link"))
    os.symlink("/etc/hostname", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))
    os.chmod(os.path.join(root, "d01"), 0o750)
    for d in reversed(dirs):
        t = rnd.randint(10**9, 17 * 10**8) * 10**9 + rnd.randint(0, 10**9 - 1)
        os.utime(os.path.join(root, d), ns=(t, t), follow_symlinks=False)
    return root


@pytest.fixture
def local():
    d = tempfile.mkdtemp(prefix="dbx-local-")
    yield os.path.realpath(d)
    subprocess.run(["chmod", "-R", "u+rwX", d])
    shutil.rmtree(d, ignore_errors=True)


def test_tree_both_ways(agent, workspace, local):
    src = make_tree(os.path.join(local, "tree"))
    want = snapshot(src)
    assert len([v for v in want.values() if v[0] == "f"]) == 2000

    r = run(agent, "-o", "json", "cp", src, box(agent, "up"))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["direction"] == "upload"
    assert st["files"] == 2000 and st["verified"] == 2000 and st["skipped"] == 0
    assert st["symlinks"] == 4
    assert snapshot(os.path.join(workspace, "up")) == want
    assert temps(workspace) == []

    # Into an existing directory: under its own name.
    r = run(agent, "cp", src, box(agent, "up"))
    assert r.returncode == 0, r.stderr
    assert snapshot(os.path.join(workspace, "up", "tree")) == want
    assert "copied 2000 files" in r.stderr.decode()

    r = run(agent, "cp", "-o", "json", box(agent, "up"), os.path.join(local, "down"))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["direction"] == "download" and st["files"] == 4000 and st["verified"] == 4000
    assert snapshot(os.path.join(local, "down", "tree")) == want
    down = snapshot(os.path.join(local, "down"))
    # "up" itself gained "tree" after the first copy: its mtime moved on.
    rest = {k: v for k, v in down.items() if k != "tree" and not k.startswith("tree/")}
    assert rest.pop(".")[:3] == want.pop(".")[:3]
    assert rest == want
    assert temps(local) == []

    # SRC/. copies the contents into an existing directory.
    os.mkdir(os.path.join(local, "contents"))
    r = run(agent, "cp", box(agent, "up/tree/."), os.path.join(local, "contents"))
    assert r.returncode == 0, r.stderr
    got = snapshot(os.path.join(local, "contents"))
    assert {k: v for k, v in got.items() if k != "."} == {
        k: v for k, v in want.items() if k != "."}


def test_single_file_both_ways(agent, workspace, local):
    p = os.path.join(local, "one.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(100000))
    os.chmod(p, 0o640)
    os.utime(p, ns=(1234567890123456789, 1234567890123456789))
    want = snapshot(local)["one.bin"]
    os.mkdir(os.path.join(workspace, "dir"))

    assert run(agent, "cp", p, box(agent, "renamed.bin")).returncode == 0
    assert run(agent, "cp", p, box(agent, "dir")).returncode == 0
    assert run(agent, "cp", p, box(agent, "dir/")).returncode == 0
    ws = snapshot(workspace)
    assert ws["renamed.bin"] == want and ws["dir/one.bin"] == want
    # Overwriting an existing file.
    with open(os.path.join(workspace, "renamed.bin"), "wb") as f:
        f.write(b"old")
    assert run(agent, "cp", p, box(agent, "renamed.bin")).returncode == 0
    assert snapshot(workspace)["renamed.bin"] == want

    os.mkdir(os.path.join(local, "in"))
    assert run(agent, "cp", box(agent, "dir/one.bin"), os.path.join(local, "in")).returncode == 0
    assert run(agent, "cp", box(agent, "dir/one.bin"), os.path.join(local, "x.bin")).returncode == 0
    loc = snapshot(local)
    assert loc["in/one.bin"] == want and loc["x.bin"] == want
    # A trailing slash on a missing destination requires a directory.
    r = run(agent, "cp", p, box(agent, "missing/"))
    assert r.returncode == 1 and b"no such directory" in r.stderr


def test_recopy_skips_unchanged_files(agent, workspace, local):
    src = make_tree(os.path.join(local, "tree"), nfiles=300)
    assert run(agent, "cp", src, box(agent, "t")).returncode == 0
    r = run(agent, "-o", "json", "cp", src + "/.", box(agent, "t"))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["skipped"] == 300 and st["files"] == 0 and st["bytes"] == 0
    changed = os.path.join(src, "f0007.txt") if os.path.exists(
        os.path.join(src, "f0007.txt")) else None
    if changed is None:
        changed = next(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
                       if f.endswith(".txt"))
    os.chmod(changed, 0o644)
    with open(changed, "ab") as f:
        f.write(b"changed")
    r = run(agent, "-o", "json", "cp", src + "/.", box(agent, "t"))
    st = json.loads(r.stdout)
    assert st["skipped"] == 299 and st["files"] == 1 and st["verified"] == 1
    assert snapshot(os.path.join(workspace, "t")) == snapshot(src)
    r = run(agent, "-o", "json", "cp", "--no-skip", src + "/.", box(agent, "t"))
    assert json.loads(r.stdout)["files"] == 300

    # Downloads skip too, and resend what changed remotely.
    assert run(agent, "cp", box(agent, "t"), os.path.join(local, "back")).returncode == 0
    r = run(agent, "-o", "json", "cp", box(agent, "t/."), os.path.join(local, "back"))
    st = json.loads(r.stdout)
    assert st["skipped"] == 300 and st["files"] == 0
    rel = os.path.relpath(changed, src)
    with open(os.path.join(workspace, "t", rel), "ab") as f:
        f.write(b"remote change")
    r = run(agent, "-o", "json", "cp", box(agent, "t/."), os.path.join(local, "back"))
    st = json.loads(r.stdout)
    assert st["skipped"] == 299 and st["files"] == 1 and st["verified"] == 1
    assert snapshot(os.path.join(local, "back")) == snapshot(os.path.join(workspace, "t"))


def test_tar_on_stdin_and_stdout(agent, workspace, local):
    src = make_tree(os.path.join(local, "tree"), nfiles=200)
    tar = subprocess.run(["tar", "c", "-C", local, "tree"], capture_output=True,
                         check=True).stdout
    os.mkdir(os.path.join(workspace, "in"))
    r = run(agent, "-o", "json", "cp", "-", box(agent, "in"), input=tar)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["files"] == 200 and st["verified"] == 200
    want = snapshot(src)
    got = snapshot(os.path.join(workspace, "in", "tree"))
    # GNU tar's default format keeps whole-second mtimes only.
    strip = lambda s: {k: (v[0], v[1], v[2]) for k, v in s.items()}
    assert strip(got) == strip(want)

    r = run(agent, "cp", box(agent, "in/tree"), "-")
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("copied 200 files")
    out = os.path.join(local, "out")
    os.mkdir(out)
    subprocess.run(["tar", "x", "-C", out], input=r.stdout, check=True)
    assert strip(snapshot(os.path.join(out, "tree"))) == strip(want)
    names = tarfile.open(fileobj=io.BytesIO(r.stdout)).getnames()
    assert names[0] == "tree" and all(n.startswith("tree") for n in names)

    # With -o json the statistics go to stderr: stdout carries the tar.
    r = run(agent, "-o", "json", "cp", box(agent, "in/tree"), "-")
    assert r.returncode == 0 and r.stdout[:4] == b"tree"
    assert json.loads(r.stderr)["files"] == 200

    # A reader that goes away: exit status 141 like SIGPIPE, nothing else.
    with open(os.path.join(workspace, "in", "big"), "wb") as f:
        f.write(os.urandom(16 << 20))
    p = subprocess.Popen([CTL, "cp", box(agent, "in/big"), "-"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, DEVBOX_TOKEN=agent.token))
    assert len(p.stdout.read(10)) == 10
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141, err
    assert not SANITIZER_RE.search(err.decode(errors="replace"))

    # The destination of a tar stream must be a directory.
    r = run(agent, "cp", "-", box(agent, "nope"), input=tar)
    assert r.returncode == 1 and b"nope" in r.stderr


def test_errors(agent, workspace, local):
    r = run(agent, "cp", "./x", box(agent, "y"))
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "devboxctl: cp: stat ./x: No such file or directory"
    with open(os.path.join(local, "f"), "wb") as f:
        f.write(b"data")
    r = run(agent, "cp", os.path.join(local, "f"), box(agent, "../escape"))
    assert r.returncode == 1 and b"outside the workspace" in r.stderr
    r = run(agent, "cp", box(agent, "/etc/passwd"), local)
    assert r.returncode == 1 and b"outside the workspace" in r.stderr
    r = run(agent, "cp", box(agent, "missing"), local)
    assert r.returncode == 1 and b"stat missing: No such file or directory" in r.stderr
    r = run(agent, "cp", os.path.join(local, "f"), box(agent, "x"), token="wrong")
    assert r.returncode == 255 and b"authentication failed" in r.stderr
    r = run(agent, "cp", os.path.join(local, "f"), "http://127.0.0.1:1:x")
    assert r.returncode == 255 and b"connection refused" in r.stderr
    assert run(agent, "cp", os.path.join(local, "f")).returncode == 2
    assert run(agent, "cp", os.path.join(local, "f"), local).returncode == 2
    assert run(agent, "cp", box(agent, "a"), box(agent, "b")).returncode == 2
    os.mkdir(os.path.join(workspace, "d"))
    r = run(agent, "cp", box(agent, "d"), os.path.join(local, "f"))
    assert r.returncode == 1 and b"cannot copy a directory onto a file" in r.stderr
    assert os.listdir(workspace) == ["d"]


@pytest.fixture
def tmpfs():
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts = []

    def make():
        d = tempfile.mkdtemp(prefix="dbx-tmpfs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d], check=True)
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_disk_full_on_either_side(tmpfs, agent_factory, local):
    src = os.path.join(local, "src")
    os.mkdir(src)
    with open(os.path.join(src, "small"), "wb") as f:
        f.write(b"small")
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(os.urandom(3 << 20))

    # The agent's disk is full.
    ws = tmpfs()
    a = agent_factory(workspace=ws)
    r = run(a, "cp", src, box(a, "dst"))
    assert r.returncode == 1
    assert b"No space left on device" in r.stderr and b"big" in r.stderr
    assert temps(ws) == [] and not os.path.exists(os.path.join(ws, "dst", "big"))

    # The local disk is full.
    shutil.copy(os.path.join(src, "big"), os.path.join(local, "remote-big"))
    os.mkdir(os.path.join(a.workspace, "r"))
    with open(os.path.join(a.workspace, "r", "big"), "wb") as f:
        f.write(os.urandom(1500 << 10))
    dst = tmpfs()
    with open(os.path.join(dst, "big"), "wb") as f:
        f.write(b"previous")
    with open(os.path.join(dst, "filler"), "wb") as f:
        f.write(os.urandom(1 << 20))
    r = run(a, "cp", box(a, "r/big"), dst)
    assert r.returncode == 1, r.stderr
    assert b"No space left on device" in r.stderr
    assert temps(dst) == []
    assert open(os.path.join(dst, "big"), "rb").read() == b"previous"


def test_progress_bar_only_on_a_terminal(agent, workspace, local):
    import pty
    big = os.path.join(local, "big")
    with open(big, "wb") as f:
        f.write(os.urandom(24 << 20))
    env = dict(os.environ, DEVBOX_TOKEN=agent.token)

    def on_pty(*args):
        master, slave = pty.openpty()
        p = subprocess.Popen([CTL] + list(args), env=env, stdout=subprocess.DEVNULL,
                             stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        assert p.wait(timeout=60) == 0, out
        return out

    out = on_pty("cp", big, box(agent, "big"))
    assert b"100% 24 MiB / 24 MiB" in out and b"\r\x1b[K" in out
    assert b"copied 1 file (24 MiB)" in out
    out = on_pty("-q", "cp", box(agent, "big"), os.path.join(local, "big2"))
    assert out == b""
    # Not a terminal: no bar, the summary only.
    r = run(agent, "cp", box(agent, "big"), os.path.join(local, "big3"))
    assert r.returncode == 0 and b"%" not in r.stderr and r.stderr.startswith(b"copied 1 file")
    # Small transfers draw no bar even on a terminal.
    with open(os.path.join(local, "small"), "wb") as f:
        f.write(b"tiny")
    out = on_pty("cp", os.path.join(local, "small"), box(agent, "small"))
    assert b"%" not in out and b"copied 1 file" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_archive_flag_keeps_owners(agent, workspace, local):
    src = os.path.join(local, "own")
    os.mkdir(src)
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"x")
    os.symlink("f", os.path.join(src, "l"))
    for p in (src, os.path.join(src, "f")):
        os.chown(p, 1234, 5678)
    os.lchown(os.path.join(src, "l"), 1234, 5678)
    ids = lambda p: (os.lstat(p).st_uid, os.lstat(p).st_gid)
    assert run(agent, "cp", src, box(agent, "plain")).returncode == 0
    assert ids(os.path.join(workspace, "plain", "f")) == (os.geteuid(), os.getegid())
    assert run(agent, "cp", "-a", src, box(agent, "kept")).returncode == 0
    for n in (".", "f", "l"):
        assert ids(os.path.join(workspace, "kept", n)) == (1234, 5678), n
    assert run(agent, "cp", box(agent, "kept"), os.path.join(local, "back")).returncode == 0
    assert ids(os.path.join(local, "back", "f")) == (os.geteuid(), os.getegid())
    assert run(agent, "cp", "-a", box(agent, "kept"), os.path.join(local, "back2")).returncode == 0
    for n in (".", "f", "l"):
        assert ids(os.path.join(local, "back2", n)) == (1234, 5678), n
