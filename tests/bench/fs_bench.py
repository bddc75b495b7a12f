#!/usr/bin/python3
"""File-system benchmark: devbox-fs against its peers (not a test: it measures and reports).

    packaging/bench-deps.sh      # once, as root: sshfs, sshd, ssh, rsync, ...
    /usr/bin/python3 tests/bench/fs_bench.py --build build --rtt 0,20 --json out.json
    /usr/bin/python3 tests/bench/fs_bench.py --build build --quick        # 1-2 minute smoke run

Runs as root (mounts, drop_caches). Peers, each over its own copy of the same data:
  native       the directory itself (the physical limit)
  passthrough  tests/bench/passthrough.c over a local directory (the FUSE-overhead limit)
  sshfs        sshfs against a private sshd on 127.0.0.1 (key auth; ctl_bench.Sshd), defaults
  sshfs-cache  sshfs with aggressive caching (kernel_cache, 1 h dcache and kernel TTLs, ...)
  devbox-fs    devbox-fs against a devbox-agent serving the directory
  dfs-async    the same with -o async_close (opt-in: close() does not wait for the upload)
For an --rtt above 0 the remote peers (sshfs, devbox-fs) reach sshd/agent through
bench-delay-proxy (tests/bench/delay_proxy.c), which holds every chunk for RTT/2 each way and
caps the link at --bw-mbit; the RTT (TCP ping) and the link bandwidth (one TCP stream each way)
are measured through it and reported. native and passthrough involve no link: they are run once
and shown in every RTT section.

"cold" means: the FUSE peer unmounted, the page/dentry/inode caches dropped, mounted again (the
mount time is reported separately); for native only the caches are dropped. Each workload runs
--repeats times (fewer when one peer's runs exceed --budget seconds) and one run is cut off after
--run-timeout seconds: its result is then shown as ">T" (a bound; ratios become bounds too).

Also runs the agent micro-benchmarks (agent_bench.py, events_bench.py) and devboxctl exec/cp
against ssh/scp/rsync (ctl_bench.py), and prints one table; --json writes every number.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
TOKEN = "bench-fs-token"
MiB = 1 << 20
PY = "/usr/bin/python3"


class Unavailable(Exception):
    """A peer could not be set up or mounted; it is reported as unavailable."""


class Timeout(Exception):
    """A run was cut off; frac (0..1) is the share of the work done by then, if known."""

    def __init__(self, frac=None):
        super().__init__()
        self.frac = frac


def count_files(top):
    n = 0
    for _, _, files in os.walk(top):
        n += len(files)
    return n


# ------------------------------------------------------------------------------ processes
class Procs:
    """Every process and mount this run started, torn down on every exit path."""

    def __init__(self):
        self.items = []  # ("proc", Popen) or ("mount", path)

    def add(self, p):
        self.items.append(("proc", p))
        return p

    def add_mount(self, path):
        self.items.append(("mount", path))

    def stop(self, p, timeout=15):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.items = [i for i in self.items if i[1] is not p]
        return p.returncode

    def umount(self, path):
        if os.path.ismount(path):
            r = subprocess.run(["fusermount3", "-u", path], capture_output=True)
            if r.returncode:
                subprocess.run(["fusermount3", "-uz", path], capture_output=True)
        self.items = [i for i in self.items if i != ("mount", path)]

    def cleanup(self):
        for kind, x in reversed(list(self.items)):
            try:
                if kind == "mount":
                    self.umount(x)
                else:
                    self.stop(x, timeout=5)
            except Exception as e:  # keep going: everything must be stopped
                print("cleanup: %s" % e, file=sys.stderr)
        self.items = []


PROCS = Procs()


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def wait_for(pred, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise Unavailable("%s: process exited with status %d" % (what, proc.returncode))
        time.sleep(0.01)
    raise Unavailable("%s: not ready after %.0f s" % (what, timeout))


def tail(path, n=600):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------ link emulation
class LinkServer:
    """Echo/sink/source server for measuring RTT and bandwidth through a proxy.
    Protocol: first byte 'P' = echo one byte per byte; 'U' + u64 n = sink n bytes, answer 'D';
    'G' + u64 n = send n bytes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _recv_exact(c, n):
        buf = b""
        while len(buf) < n:
            d = c.recv(n - len(buf))
            if not d:
                raise EOFError
            buf += d
        return buf

    def _serve(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            kind = self._recv_exact(c, 1)
            if kind == b"P":
                while True:
                    c.sendall(self._recv_exact(c, 1))
            n = struct.unpack("<Q", self._recv_exact(c, 8))[0]
            if kind == b"U":
                got = 0
                while got < n:
                    d = c.recv(MiB)
                    if not d:
                        raise EOFError
                    got += len(d)
                c.sendall(b"D")
            elif kind == b"G":
                chunk = b"\0" * MiB
                while n > 0:
                    c.sendall(chunk[:min(n, MiB)])
                    n -= min(n, MiB)
        except (EOFError, OSError):
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def start_proxy(build, target_port, rtt_ms, bw_mbit):
    binary = os.path.join(build, "tests", "bench", "bench-delay-proxy")
    argv = [binary, "--connect", "127.0.0.1:%d" % target_port, "--delay-ms", str(rtt_ms / 2.0)]
    if bw_mbit:
        argv += ["--rate-mbit", str(bw_mbit)]
    p = PROCS.add(subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", p.stdout.readline().decode())
    if not m:
        PROCS.stop(p)
        raise SystemExit("bench-delay-proxy did not start (built? ninja -C %s)" % build)
    return p, int(m.group(1))


def measure_link(port, mib):
    """TCP ping (median of 20 one-byte round trips) and one-stream bandwidth each way."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"P")
    xs = []
    for _ in range(21):
        t = time.perf_counter()
        s.sendall(b"x")
        s.recv(1)
        xs.append(time.perf_counter() - t)
    s.close()
    rtt = statistics.median(xs[1:]) * 1e3
    n = mib * MiB
    s = socket.create_connection(("127.0.0.1", port))
    buf = b"\0" * MiB
    t = time.perf_counter()
    s.sendall(b"U" + struct.pack("<Q", n))
    for _ in range(mib):
        s.sendall(buf)
    s.recv(1)
    up = n / (time.perf_counter() - t) / 1e6
    s.close()
    s = socket.create_connection(("127.0.0.1", port))
    t = time.perf_counter()
    s.sendall(b"G" + struct.pack("<Q", n))
    got = 0
    while got < n:
        d = s.recv(MiB)
        if not d:
            break
        got += len(d)
    down = n / (time.perf_counter() - t) / 1e6
    s.close()
    return {"rtt_ms": rtt, "up_MBps": up, "down_MBps": down, "bytes": n}


# ------------------------------------------------------------------------------ data sets
def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make_datasets(src, cfg):
    """The data every peer gets a copy of (created natively, once)."""
    rnd = random.Random(42)
    os.makedirs(os.path.join(src, "files4k"))
    for i in range(cfg["n4k"]):
        write_file(os.path.join(src, "files4k", "f%05d" % i), rnd.randbytes(4096))
    # walk tree: 10 x 10 dirs x N/100 files
    per = max(1, cfg["tree"] // 100)
    for a in range(10):
        for b in range(10):
            d = os.path.join(src, "tree", "a%d" % a, "b%d" % b)
            os.makedirs(d)
            for i in range(per):
                write_file(os.path.join(d, "f%04d.txt" % i), b"x" * (i % 200))
    # git repo: files in nested dirs, committed
    repo = os.path.join(src, "repo")
    dirs = [""]
    for i in range(max(1, cfg["repo"] // 20)):
        dirs.append(os.path.join(rnd.choice(dirs[:1 + len(dirs) // 2]), "d%03d" % i))
    for d in dirs:
        os.makedirs(os.path.join(repo, d), exist_ok=True)
    for i in range(cfg["repo"]):
        write_file(os.path.join(repo, rnd.choice(dirs), "src%05d.c" % i),
                   ("int f%d(void) { return %d; }\n" % (i, i)).encode() * rnd.randint(1, 40))
    write_file(os.path.join(repo, ".gitignore"), b"*.o\nbuild/\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
           "-c", "init.defaultBranch=main", "-c", "gc.auto=0"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(git + argv, cwd=repo, check=True, stdout=subprocess.DEVNULL)
    # make project
    mk = os.path.join(src, "make")
    os.makedirs(mk)
    write_file(os.path.join(mk, "common.h"), b"#include <stddef.h>\nint helper(int);\n")
    for i in range(cfg["make"]):
        write_file(os.path.join(mk, "m%03d.c" % i), (
            "#include \"common.h\"\nstatic int t[64];\nint fn%d(int x)\n{\n"
            "\tfor (size_t i = 0; i < 64; i++)\n\t\tt[i] = (int)i * x + %d;\n"
            "\treturn t[x & 63];\n}\n" % (i, i)).encode())
    write_file(os.path.join(mk, "Makefile"), (
        "OBJDIR ?= obj\nSRCS := $(wildcard *.c)\nOBJS := $(SRCS:%.c=$(OBJDIR)/%.o)\n"
        "all: $(OBJS)\n$(OBJDIR):\n\tmkdir -p $@\n"
        "$(OBJDIR)/%.o: %.c common.h | $(OBJDIR)\n\t$(CC) -O0 -c -o $@ $<\n").encode())
    # sequential read source
    with open(os.path.join(src, "big.bin"), "wb") as f:
        block = rnd.randbytes(MiB)
        for i in range(cfg["big_mib"]):
            f.write(block[i % 997:] + block[:i % 997])
    os.makedirs(os.path.join(src, "edit"))
    write_file(os.path.join(src, "edit", "doc.txt"), b"hello\n" * 1000)
    os.makedirs(os.path.join(src, "vis"))
    write_file(os.path.join(src, "vis", "watched.txt"), b"initial\n")
    os.makedirs(os.path.join(src, "out"))


def make_tarball(path, n):
    import tarfile
    rnd = random.Random(7)
    tmp = path + ".d"
    dirs = ["."]
    for i in range(60):
        d = os.path.normpath(os.path.join(rnd.choice(dirs), "d%02d" % i))
        os.makedirs(os.path.join(tmp, d))
        dirs.append(d)
    for i in range(n):
        write_file(os.path.join(tmp, rnd.choice(dirs), "f%04d" % i),
                   rnd.randbytes(rnd.randint(0, 8192)))
    with tarfile.open(path, "w") as t:
        t.add(tmp, arcname="t")
    shutil.rmtree(tmp)


def copy_dataset(src, dst):
    subprocess.run(["cp", "-a", src, dst], check=True)
    # refresh the copy's git index so its stat data is native (the inodes differ from src's)
    subprocess.run(["git", "-c", "safe.directory=*", "status", "--porcelain"],
                   cwd=os.path.join(dst, "repo"), check=True, stdout=subprocess.DEVNULL)


# ------------------------------------------------------------------------------ peers
class Peer:
    remote = False
    fuse = True

    def __init__(self, name, tmp):
        self.name = name
        self.backing = os.path.join(tmp, "data-" + name)
        self.mnt = os.path.join(tmp, "mnt-" + name)
        self.root = self.mnt
        self.proc = None
        self.log = os.path.join(tmp, name + ".log")
        self.mount_times = []

    def _argv(self):
        raise NotImplementedError

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        t = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = PROCS.add(subprocess.Popen(self._argv(), stdout=log, stderr=log,
                                                   stdin=subprocess.DEVNULL,
                                                   env=self.env()))
        PROCS.add_mount(self.mnt)
        try:
            wait_for(lambda: os.path.ismount(self.mnt), 30, self.name + " mount", self.proc)
            os.stat(os.path.join(self.mnt, "out"))
        except (Unavailable, OSError) as e:
            self.unmount()
            raise Unavailable("%s (%s)" % (e, tail(self.log)))
        self.mount_times.append(time.perf_counter() - t)

    def env(self):
        return None

    def unmount(self):
        PROCS.umount(self.mnt)
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            PROCS.stop(self.proc)
            self.proc = None

    def cold(self):
        self.unmount()
        drop_caches()
        self.mount()

    def stats(self):
        return None


class Native(Peer):
    fuse = False

    def __init__(self, tmp):
        super().__init__("native", tmp)
        self.root = self.backing

    def mount(self):
        pass

    def unmount(self):
        pass

    def cold(self):
        drop_caches()


class Passthrough(Peer):
    def __init__(self, tmp, build):
        super().__init__("passthrough", tmp)
        self.binary = os.path.join(build, "tests", "bench", "bench-passthrough")

    def _argv(self):
        return [self.binary, self.backing, self.mnt, "-f"]


class Sshfs(Peer):
    remote = True
    CACHED = ("kernel_cache,dcache_timeout=3600,dcache_max_size=1000000,entry_timeout=3600,"
              "attr_timeout=3600,negative_timeout=3600,remember=3600")

    def __init__(self, tmp, sshd, cached):
        super().__init__("sshfs-cache" if cached else "sshfs", tmp)
        self.sshd, self.cached, self.port = sshd, cached, None

    def _argv(self):
        opts = ("IdentityFile=%s,StrictHostKeyChecking=no,UserKnownHostsFile=%s,BatchMode=yes,"
                "LogLevel=ERROR" % (self.sshd.key, os.path.join(self.sshd.dir, "known_hosts")))
        if self.cached:
            opts += "," + self.CACHED
        return ["sshfs", "-f", "%s:%s" % (self.sshd.host, self.backing), self.mnt,
                "-p", str(self.port), "-o", opts]


class DevboxFs(Peer):
    remote = True

    def __init__(self, tmp, build, token_file, name="devbox-fs", opts=""):
        super().__init__(name, tmp)
        self.binary = os.path.join(build, "fs", "devbox-fs")
        self.token_file = token_file
        self.statsfile = os.path.join(tmp, name + "-stats.json")
        self.opts = opts
        self.port = None

    def _argv(self):
        if not os.path.exists(self.binary):
            raise Unavailable("%s not built" % self.binary)
        return [self.binary, "-f", "-o", "stats=" + self.statsfile + self.opts,
                "--token-file", self.token_file, "http://127.0.0.1:%d" % self.port, self.mnt]

    def stats(self):
        """The daemon's counters, fresh (SIGUSR1 makes it rewrite the file at once)."""
        if not self.proc or self.proc.poll() is not None:
            return None
        before = None
        try:
            with open(self.statsfile) as f:
                before = json.load(f).get("updated")
        except (OSError, ValueError):
            pass
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                with open(self.statsfile) as f:
                    s = json.load(f)
                if s.get("updated") != before:
                    return s
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        return None


def counters_delta(a, b):
    """b - a for the interesting devbox-fs counters (remote round trips first)."""
    if not a or not b:
        return None
    out = {}
    for k in ("remote_calls", "requests", "connects", "bytes_up", "bytes_down"):
        if isinstance(b.get(k), (int, float)) and isinstance(a.get(k), (int, float)):
            out[k] = b[k] - a[k]
    for group in ("ops", "cache", "events"):
        ga, gb = a.get(group) or {}, b.get(group) or {}
        d = {k: gb[k] - ga.get(k, 0) for k in gb
             if isinstance(gb[k], (int, float)) and gb[k] - ga.get(k, 0)}
        if d:
            out[group] = d
    return out


# ------------------------------------------------------------------------------ workloads
class Ctx:
    counter = 0  # unique output names across peers and RTT settings (backing dirs persist)

    def __init__(self, peer, cfg, tarball, rtt):
        self.peer, self.cfg, self.tarball, self.rtt = peer, cfg, tarball, rtt

    def next(self):
        Ctx.counter += 1
        return Ctx.counter

    def fresh(self, tag):
        name = "%s%d" % (tag, self.next())
        os.mkdir(os.path.join(self.peer.root, "out", name))
        return os.path.join(self.peer.root, "out", name)

    def deadline(self):
        return time.perf_counter() + self.cfg["run_timeout"]


def run_cmd(argv, cwd, ctx, progress=None):
    """Runs argv; on timeout progress() (if given) tells the share of the work done."""
    t = time.perf_counter()
    try:
        r = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=ctx.cfg["run_timeout"])
    except subprocess.TimeoutExpired:
        raise Timeout(progress() if progress else None)
    dt = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv[:3]), r.returncode,
                                                r.stderr.decode(errors="replace")[-300:]))
    return dt


def wl_create(ctx):
    d = ctx.fresh("cw")
    data = os.urandom(4096)
    dl = ctx.deadline()
    t = time.perf_counter()
    for i in range(ctx.cfg["n4k"]):
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        if time.perf_counter() > dl:
            raise Timeout((i + 1) / ctx.cfg["n4k"])
    return time.perf_counter() - t


def wl_read4k(ctx):
    d = os.path.join(ctx.peer.root, "files4k")
    dl = ctx.deadline()
    t = time.perf_counter()
    for i in range(ctx.cfg["n4k"]):
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_RDONLY)
        n = len(os.read(fd, 8192))
        os.close(fd)
        if n != 4096:
            raise RuntimeError("short read %d" % n)
        if time.perf_counter() > dl:
            raise Timeout((i + 1) / ctx.cfg["n4k"])
    return time.perf_counter() - t


def wl_walk(ctx):
    return run_cmd(["find", ".", "-printf", "%i %s %T@\\n"], os.path.join(ctx.peer.root, "tree"),
                   ctx)


def wl_git(ctx):
    return run_cmd(["git", "-c", "safe.directory=*", "-c", "gc.auto=0", "status", "--porcelain"],
                   os.path.join(ctx.peer.root, "repo"), ctx)


def wl_git_nolock(ctx):
    """What editors' git integrations run (VS Code sets GIT_OPTIONAL_LOCKS=0): no index.lock."""
    return run_cmd(["git", "--no-optional-locks", "-c", "safe.directory=*", "-c", "gc.auto=0",
                    "status", "--porcelain"], os.path.join(ctx.peer.root, "repo"), ctx)


def wl_seqwrite(ctx):
    d = ctx.fresh("sw")
    path = os.path.join(d, "big.bin")
    buf = os.urandom(MiB)
    dl = ctx.deadline()
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(ctx.cfg["big_mib"]):
            os.write(fd, buf)
            if time.perf_counter() > dl:
                raise Timeout()  # throughput bound from the timeout
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    # delete on the remote side (one event, no per-peer cost) to keep the disk small
    try:
        os.unlink(os.path.join(ctx.peer.backing, "out", os.path.basename(d), "big.bin"))
    except OSError:
        pass
    return ctx.cfg["big_mib"] * MiB / dt / 1e6


def wl_seqread(ctx):
    buf = bytearray(MiB)
    dl = ctx.deadline()
    total = 0
    t = time.perf_counter()
    with open(os.path.join(ctx.peer.root, "big.bin"), "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
            if time.perf_counter() > dl:
                raise Timeout()
    dt = time.perf_counter() - t
    if total != ctx.cfg["big_mib"] * MiB:
        raise RuntimeError("read %d bytes" % total)
    return total / dt / 1e6


def wl_untar(ctx):
    d = ctx.fresh("tar")
    remote = os.path.join(ctx.peer.backing, "out", os.path.basename(d))
    return run_cmd(["tar", "-xf", ctx.tarball, "-C", d], d, ctx,
                   lambda: count_files(remote) / ctx.cfg["untar"])


def wl_make(ctx):
    obj = "obj%d" % ctx.next()
    remote = os.path.join(ctx.peer.backing, "out", obj)
    return run_cmd(["make", "-s", "-j2", "OBJDIR=../out/" + obj],
                   os.path.join(ctx.peer.root, "make"), ctx,
                   lambda: (len([n for n in os.listdir(remote) if n.endswith(".o")])
                            if os.path.isdir(remote) else 0) / ctx.cfg["make"])


def wl_save(ctx):
    """Editor-style atomic save: stat, write a temp file, fsync, rename over the original.
    Returns the median time of one save."""
    target = os.path.join(ctx.peer.root, "edit", "doc.txt")
    xs = []
    dl = ctx.deadline()
    for i in range(ctx.cfg["saves"]):
        data = (b"line %d\n" % i) * 1000
        t = time.perf_counter()
        os.stat(target)
        tmp = target + ".tmp%d" % i
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, target)
        xs.append(time.perf_counter() - t)
        if time.perf_counter() > dl:
            break  # the median of the saves done so far stands
    with open(target, "rb") as f:
        if f.read() != data:
            raise RuntimeError("saved content differs")
    return statistics.median(xs)


def wl_visible(ctx):
    """Change a file on the remote side, poll through the mount until the new bytes show.
    Returns ms, or None ("stale") when not visible within the stale limit."""
    rel = os.path.join("vis", "watched.txt")
    through = os.path.join(ctx.peer.root, rel)
    remote = os.path.join(ctx.peer.backing, rel)
    with open(through, "rb") as f:  # cache the old version first
        f.read()
    time.sleep(0.05)
    n = ctx.next()
    new = (b"version %d %s\n" % (n, b"x" * (n % 50)))
    limit = ctx.cfg["stale_s"]
    t = time.perf_counter()
    with open(remote, "r+b") as f:
        f.truncate(0)
        f.write(new)
    while True:
        try:
            with open(through, "rb") as f:
                if f.read() == new:
                    return (time.perf_counter() - t) * 1e3
        except OSError:
            pass
        if time.perf_counter() - t > limit:
            return None


# name, function, unit, cold?, higher-is-better
WORKLOADS = [
    ("create+write 4 KiB", wl_create, "ms", False),
    ("read 4 KiB cold", wl_read4k, "ms", True),
    ("read 4 KiB warm", wl_read4k, "ms", False),
    ("walk+lstat cold", wl_walk, "ms", True),
    ("walk+lstat warm", wl_walk, "ms", False),
    ("git status first", wl_git, "ms", True),
    ("git status warm", wl_git, "ms", False),
    ("git st warm nolocks", wl_git_nolock, "ms", False),
    ("seq write+fsync", wl_seqwrite, "MB/s", False),
    ("seq read cold", wl_seqread, "MB/s", True),
    ("seq read warm", wl_seqread, "MB/s", False),
    ("untar", wl_untar, "ms", False),
    ("make -j2", wl_make, "ms", False),
    ("atomic save", wl_save, "ms", False),
]


def run_workload(ctx, name, fn, unit, cold, stats_peer):
    """Runs one workload --repeats times (fewer if over --budget); medians."""
    cfg, peer = ctx.cfg, ctx.peer
    runs, timeouts, counters, estimated = [], 0, [], False
    spent = 0.0
    err = None
    for _ in range(cfg["repeats"]):
        if cold:
            peer.cold()
        elif name.endswith("warm") and not runs and not timeouts:
            try:  # prime the caches: the first run is the warm-up
                fn(ctx)
            except Timeout:
                timeouts += 1  # a warm-up that cannot finish: the row is a bound
                break
            except Exception:
                pass
        s0 = stats_peer.stats() if stats_peer else None
        t = time.perf_counter()
        try:
            v = fn(ctx)
        except Timeout as e:
            v = None
            if e.frac:
                # cut off: extrapolate from the share done (rows marked '~')
                v = (time.perf_counter() - t) / e.frac
                estimated = True
                timeouts += 1
            else:
                timeouts += 1
        except Exception as e:
            err = "%s: %s" % (type(e).__name__, e)
            break
        spent += time.perf_counter() - t
        s1 = stats_peer.stats() if stats_peer else None
        d = counters_delta(s0, s1)
        if d is not None:
            counters.append(d)
        if v is not None:
            runs.append(v * 1e3 if unit == "ms" else v)
        if timeouts or spent > cfg["budget"]:
            break
    r = {"unit": unit, "runs": runs}
    if estimated and runs:
        r["median"] = statistics.median(runs)
        r["estimated_from_timeout_s"] = cfg["run_timeout"]
        r["bound"] = "~"
    elif timeouts:
        r["timeout_s"] = cfg["run_timeout"]
        r["median"] = (cfg["run_timeout"] * 1e3 if unit == "ms" else
                       cfg["big_mib"] * MiB / cfg["run_timeout"] / 1e6)
        r["bound"] = ">" if unit == "ms" else "<"
    elif runs:
        r["median"] = statistics.median(runs)
    if err:
        r["error"] = err
    if counters:
        r["devbox_fs_counters"] = counters[len(counters) // 2]
    return r


def run_visibility(ctx):
    xs, stale = [], 0
    for _ in range(ctx.cfg["vis_trials"]):
        v = wl_visible(ctx)
        if v is None:
            stale += 1
        else:
            xs.append(v)
    r = {"unit": "ms", "runs": xs, "stale": stale, "trials": ctx.cfg["vis_trials"],
         "stale_limit_s": ctx.cfg["stale_s"]}
    if xs:
        r["median"] = statistics.median(xs)
        r["max"] = max(xs)
    return r


def run_peer(peer, cfg, tarball, rtt, stats_peer=None):
    print("  %-12s" % peer.name, end="", flush=True)
    res = {"workloads": {}}
    t0 = time.perf_counter()
    try:
        peer.mount()
    except Unavailable as e:
        print(" unavailable: %s" % e, flush=True)
        return {"unavailable": str(e)}
    ctx = Ctx(peer, cfg, tarball, rtt)
    try:
        for name, fn, unit, cold in WORKLOADS:
            r = run_workload(ctx, name, fn, unit, cold, stats_peer)
            res["workloads"][name] = r
            print(" .", end="", flush=True)
        res["workloads"]["remote change visible"] = run_visibility(ctx)
        if peer.fuse:
            res["mount_s"] = statistics.median(peer.mount_times)
        if stats_peer:
            res["final_counters"] = stats_peer.stats()
    except Unavailable as e:
        res["error"] = str(e)
    finally:
        peer.unmount()
    print(" %.0f s" % (time.perf_counter() - t0), flush=True)
    return res


# ------------------------------------------------------------------------------ micro-benchmarks
def run_micro(args, cfg, tmp):
    """agent_bench.py, events_bench.py and ctl_bench.py, each a subprocess with its own agent."""
    out = {}
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    jobs = [
        ("agent", [PY, os.path.join(HERE, "agent_bench.py"), "--build", args.build,
                   "--json", os.path.join(tmp, "agent.json")] + cfg["agent_args"],
         os.path.join(tmp, "agent.json")),
        ("events", [PY, os.path.join(HERE, "events_bench.py"), "--build", args.build,
                    "--json", os.path.join(tmp, "events.json")] + cfg["events_args"],
         os.path.join(tmp, "events.json")),
        ("ctl", [PY, os.path.join(HERE, "ctl_bench.py"), "--build", args.build]
         + cfg["ctl_args"], None),
    ]
    for name, argv, jpath in jobs:
        if not os.path.exists(argv[1]):
            out[name] = {"unavailable": "%s missing" % argv[1]}
            continue
        print("  %-12s" % name, end="", flush=True)
        t = time.perf_counter()
        p = None
        try:
            p = PROCS.add(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           env=env, start_new_session=True))
            so, se = p.communicate(timeout=900)
            PROCS.stop(p)
            if jpath:
                with open(jpath) as f:
                    out[name] = json.load(f)
            else:
                text = so.decode()
                i = text.rfind("\n{\n")
                out[name] = json.loads(text[i + 1:])
            if p.returncode:
                out[name]["exit_status"] = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            PROCS.stop(p)
            out[name] = {"unavailable": "timed out"}
        except (OSError, ValueError) as e:
            out[name] = {"unavailable": "%s; %s" % (e, (se or b"").decode()[-400:]
                                                    if p else "")}
        print(" %.0f s" % (time.perf_counter() - t), flush=True)
    return out


def find_num(obj, *keys):
    """obj[k1][k2]... or None."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj if isinstance(obj, (int, float)) else None


# ------------------------------------------------------------------------------ report
PEERS = ["native", "passthrough", "sshfs", "sshfs-cache", "devbox-fs", "dfs-async"]
DFS_PEERS = ("devbox-fs", "dfs-async")  # dfs-async: devbox-fs -o async_close (opt-in)


def fmt_val(r, unit=None):
    if r is None or "median" not in r:
        if r and "unavailable" in r:
            return "n/a"
        if r and "error" in r:
            return "error"
        if r and r.get("stale"):
            return "stale"
        return "-"
    v = r["median"]
    s = ("%.0f" % v) if v >= 100 else ("%.1f" % v) if v >= 1 else ("%.2f" % v)
    s = r.get("bound", "") + s
    if r.get("stale"):
        s = "stale %d/%d" % (r["stale"], r["trials"])
    return s


def ratio(a, b):
    """(value, bound) of a/b for two results; bound is '', '<' or '>'."""
    if not a or not b or "median" not in a or "median" not in b or not b["median"]:
        return None, ""
    v = a["median"] / b["median"]
    ba, bb = a.get("bound", ""), b.get("bound", "")
    # a > x means a/b > v; b > y means a/b < v; for MB/s bounds are '<'
    lo = (ba == ">" or bb == "<")
    hi = (ba == "<" or bb == ">")
    if lo or hi:
        return v, (">" if lo and not hi else "<" if hi and not lo else "?")
    return v, "~" if "~" in (ba, bb) else ""


def targets_for(wl, rtt, link, me="devbox-fs"):
    """(description, check(peers_dict) -> (ok, note)) for the devbox-fs peer `me`, or None."""
    def vs(peer, limit, le=True):
        def check(p):
            v, b = ratio(p.get(me), p.get(peer))
            if v is None:
                return None, ""
            if le:
                ok = v <= limit and b != ">" or (b == "<" and v <= limit)
            else:
                ok = v >= limit and b != "<" or (b == ">" and v >= limit)
            if b == "?":
                return None, "both cut off"
            return ok, "%s%.2fx" % (b, v)
        return check

    if wl in ("walk+lstat warm", "git status warm", "read 4 KiB warm", "git st warm nolocks"):
        return "<= 1.5x native", vs("native", 1.5)
    if wl in ("walk+lstat cold", "git status first"):
        lim = 0.5 if rtt == 0 else 0.1
        return "<= %gx sshfs" % lim, vs("sshfs", lim)
    if wl in ("create+write 4 KiB", "untar", "make -j2", "atomic save"):
        return "<= 0.7x sshfs", vs("sshfs", 0.7)
    if wl.startswith("seq "):
        if rtt == 0:
            return ">= 3x sshfs", vs("sshfs", 3.0, le=False)
        bw = min(link["up_MBps"], link["down_MBps"]) if link else None
        direction = "up_MBps" if "write" in wl else "down_MBps"
        bw = link[direction] if link else None

        def check(p):
            r = p.get(me)
            if not r or "median" not in r or not bw:
                return None, ""
            return r["median"] >= 0.8 * bw, "%.0f%% of link" % (100 * r["median"] / bw)
        return ">= 80%% link (%.0f MB/s)" % (0.8 * bw if bw else 0), check
    if wl == "remote change visible":
        lim = 10 if rtt == 0 else rtt + 10

        def check(p):
            r = p.get(me)
            if not r or "trials" not in r:
                return None, ""
            if r["stale"]:
                return False, "%d stale" % r["stale"]
            return r["max"] <= lim, "max %.1f ms" % r["max"]
        return "<= %g ms, never stale" % lim, check
    return None


# rows where -o async_close changes what devbox-fs does (closes, setattrs after writes)
ASYNC_ROWS = ("create+write 4 KiB", "untar", "make -j2", "atomic save", "seq write+fsync")


def build_table(res):
    lines = []
    hdr = "%-22s" % "workload" + "".join("%13s" % p for p in PEERS) + \
        "%10s%10s  %-24s %s" % ("dfs/sshfs", "dfs/ssc", "target (devbox-fs)", "verdict")
    misses = []
    for rtt_key, sec in res["rtt"].items():
        rtt = float(rtt_key)
        link = sec.get("link")
        title = "RTT %s ms" % rtt_key
        if link:
            title += " (measured: TCP ping %.2f ms, link %.0f MB/s up, %.0f MB/s down)" % (
                link["rtt_ms"], link["up_MBps"], link["down_MBps"])
        lines += ["", title, hdr, "-" * len(hdr)]
        peers = sec["peers"]
        names = [n for n, *_ in WORKLOADS] + ["remote change visible"]
        for wl in names:
            vals = {p: (peers.get(p) or {}).get("workloads", {}).get(wl)
                    if "unavailable" not in (peers.get(p) or {}) else {"unavailable": 1}
                    for p in PEERS}
            unit = next((v["unit"] for v in vals.values() if v and "unit" in v), "ms")
            row = "%-22s" % ("%s [%s]" % (wl, unit))
            row += "".join("%13s" % fmt_val(vals[p]) for p in PEERS)
            for other in ("sshfs", "sshfs-cache"):
                v, b = ratio(vals["devbox-fs"], vals[other])
                row += "%10s" % ("-" if v is None else "?" if b == "?" else "%s%.2f" % (b, v))
            t = targets_for(wl, rtt, link)
            if t:
                ok, note = t[1](vals)
                verdict = {True: "ok", False: "MISS", None: "?"}[ok] + (
                    " (%s)" % note if note else "")
                ok_a, note_a = targets_for(wl, rtt, link, "dfs-async")[1](vals)
                if ok_a is not None and (ok_a != ok or wl in ASYNC_ROWS):
                    verdict += "; async %s (%s)" % ({True: "ok", False: "MISS"}[ok_a], note_a)
                row += "  %-24s %s" % (t[0], verdict)
                if ok is False:
                    misses.append((rtt_key, wl, t[0], note))
            lines.append(row)
        mt = "%-22s" % "mount [ms]" + "".join(
            "%13s" % ("%.0f" % ((peers.get(p) or {}).get("mount_s") * 1e3)
                      if (peers.get(p) or {}).get("mount_s") else "-") for p in PEERS)
        lines.append(mt)
        for p in PEERS:
            if "unavailable" in (peers.get(p) or {}):
                lines.append("  %s unavailable: %s" % (p, peers[p]["unavailable"][:300]))
    m = res.get("micro") or {}
    if m:
        lines += ["", "agent micro-benchmarks (loopback)"]
        a, e, c = m.get("agent") or {}, m.get("events") or {}, m.get("ctl") or {}
        lat = a.get("latency") or {}
        agent_rows = [
            ("start (ms)", find_num(a, "cold_start", "median_ms"), "< 10", lambda v: v < 10),
            ("idle RSS (MiB)", find_num(a, "rss_idle_mib"), "< 8", lambda v: v < 8),
            ("4 KiB read p50 (ms)", find_num(lat, "read 4 KiB", "p50_us"), "< 0.3",
             lambda v: v < 0.3),
            ("4 KiB write p50 (ms)", find_num(lat, "write 4 KiB raw", "p50_us"), "< 0.3",
             lambda v: v < 0.3),
            ("256 MiB up (MiB/s)", find_num(a, "big_transfer", "upload_mib_s", "median"),
             ">= 1024", lambda v: v >= 1024),
            ("256 MiB down (MiB/s)", find_num(a, "big_transfer", "download_mib_s", "median"),
             ">= 1024", lambda v: v >= 1024),
            ("event latency p50 (ms)", find_num(e, "p50_us"), "", None),
            ("event latency p99 (ms)", find_num(e, "p99_us"), "", None),
        ]
        agent_rows = [(lbl, v / 1e3 if v is not None and "(ms)" in lbl and lbl != "start (ms)"
                       else v, t, c) for lbl, v, t, c in agent_rows]
        for label, v, tgt, chk in agent_rows:
            verdict = "" if v is None or chk is None else ("ok" if chk(v) else "MISS")
            lines.append("  %-26s %10s  %-8s %s" % (label, "-" if v is None else "%.3g" % v,
                                                     tgt, verdict))
            if verdict == "MISS":
                misses.append(("agent", label, tgt, "%.3g" % v))
        if "unavailable" in a:
            lines.append("  agent_bench: %s" % a["unavailable"][:200])
        if c and "latency" in c:
            lines += ["", "devboxctl vs ssh/scp/rsync (loopback, seconds)"]
            for k, v in c["latency"].items():
                lines.append("  %-34s %s" % (k, "%.3f" % v["median"] if "median" in v else v))
            for lbl, tools in c.get("copy", {}).items():
                lines.append("  %-34s %s" % (lbl, "  ".join("%s %.3f" % (t, s)
                                                          for t, s in tools.items())))
        elif c:
            lines.append("  ctl_bench: %s" % str(c.get("unavailable", c))[:200])
    if misses:
        lines += ["", "devbox-fs misses:"]
        for rtt_key, wl, tgt, note in misses:
            lines.append("  [%s] %s: %s, got %s" % (
                rtt_key if rtt_key == "agent" else "RTT %s ms" % rtt_key, wl, tgt, note))
    return "\n".join(lines), misses


# ------------------------------------------------------------------------------ main
FULL = {"n4k": 500, "tree": 10000, "repo": 3000, "big_mib": 256, "untar": 2000, "make": 200,
        "saves": 30, "vis_trials": 5, "stale_s": 3.0, "repeats": 3, "budget": 12.0,
        "run_timeout": 30.0, "link_mib": 128,
        "agent_args": ["--cold-runs", "20", "--requests", "2000", "--big-runs", "3"],
        "events_args": ["--writes", "1000"],
        "ctl_args": ["--n", "9", "--runs", "2", "--big-mib", "128"]}
QUICK = {"n4k": 100, "tree": 2000, "repo": 500, "big_mib": 32, "untar": 300, "make": 30,
         "saves": 10, "vis_trials": 3, "stale_s": 1.5, "repeats": 2, "budget": 3.0,
         "run_timeout": 6.0, "link_mib": 32,
         "agent_args": ["--cold-runs", "5", "--requests", "300", "--warmup", "50",
                        "--big-mib", "32", "--big-runs", "1", "--wrk-seconds", "1"],
         "events_args": ["--writes", "200"],
         "ctl_args": ["--n", "3", "--runs", "1", "--big-mib", "16"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("DEVBOX_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    ap.add_argument("--rtt", default="0,20", help="comma-separated emulated RTTs in ms")
    ap.add_argument("--bw-mbit", type=float, default=1000,
                    help="link cap for RTT > 0 in Mbit/s (0: none); loopback is never capped")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--quick", action="store_true", help="small sizes: a 1-2 minute smoke run")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--no-micro", action="store_true",
                    help="skip agent_bench/events_bench/ctl_bench")
    ap.add_argument("--repeats", type=int, help="runs per workload (3; --quick 2)")
    ap.add_argument("--budget", type=float,
                    help="stop repeating a workload once its runs took this many s (12)")
    ap.add_argument("--run-timeout", type=float, help="cut one run after this many s (30)")
    ap.add_argument("--tmpdir", default=None, help="where the data lives (default: $TMPDIR)")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    if os.geteuid() != 0:
        sys.exit("fs_bench: run as root (FUSE mounts, drop_caches, a private sshd)")
    cfg = dict(QUICK if args.quick else FULL)
    for k in ("repeats", "budget", "run_timeout"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    rtts = [float(x) for x in args.rtt.split(",") if x.strip()]
    want = [p.strip() for p in args.peers.split(",") if p.strip()]
    for tool in ("sshfs", "ssh", "ssh-keygen", "git", "make", "tar", "fusermount3"):
        if not shutil.which(tool) and (tool != "sshfs" or "sshfs" in want):
            sys.exit("fs_bench: %s is missing: run packaging/bench-deps.sh" % tool)
    for b in ("bench-delay-proxy", "bench-passthrough"):
        if not os.path.exists(os.path.join(args.build, "tests", "bench", b)):
            sys.exit("fs_bench: %s/tests/bench/%s is missing: ninja -C %s" % (
                args.build, b, args.build))

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    tmp = tempfile.mkdtemp(prefix="dbx-fsbench-", dir=args.tmpdir)
    res = {"config": {k: v for k, v in cfg.items() if not k.endswith("_args")},
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release},
           "build": args.build, "rtt": {}}
    res["config"]["bw_mbit"] = args.bw_mbit
    t_start = time.perf_counter()
    sshd = None
    agents = {}
    try:
        print("preparing data in %s ..." % tmp, flush=True)
        src = os.path.join(tmp, "src")
        make_datasets(src, cfg)
        tarball = os.path.join(tmp, "untar.tar")
        make_tarball(tarball, cfg["untar"])
        token_file = os.path.join(tmp, "token")
        write_file(token_file, TOKEN.encode())

        native = Native(tmp)
        peers = {"native": native, "passthrough": Passthrough(tmp, args.build)}
        unavailable = {}
        if "sshfs" in want or "sshfs-cache" in want:
            try:
                import ctl_bench
                sshd = ctl_bench.Sshd(tmp)
                PROCS.add(sshd.proc)
                peers["sshfs"] = Sshfs(tmp, sshd, False)
                peers["sshfs-cache"] = Sshfs(tmp, sshd, True)
            except (SystemExit, Exception) as e:
                unavailable["sshfs"] = unavailable["sshfs-cache"] = "sshd: %s" % e
        peers["devbox-fs"] = DevboxFs(tmp, args.build, token_file)
        peers["dfs-async"] = DevboxFs(tmp, args.build, token_file, "dfs-async",
                                      ",async_close")
        for name, p in peers.items():
            if name in want:
                copy_dataset(src, p.backing)
        agent_bin = os.path.join(args.build, "agent", "devbox-agent")
        agent_ports = {}
        for name in DFS_PEERS:
            if name not in want:
                continue
            a = agents[name] = PROCS.add(subprocess.Popen(
                [agent_bin, "--addr=127.0.0.1:0", "--workspace-path=" + peers[name].backing,
                 "--token=" + TOKEN, "--max-file-size=%d" % (4 << 30)],
                stdout=subprocess.PIPE,
                stderr=open(os.path.join(tmp, "agent-%s.log" % name), "wb"),
                stdin=subprocess.DEVNULL))
            m = re.match(r"listening on \S+:(\d+)", a.stdout.readline().decode())
            if not m:
                unavailable[name] = "agent did not start"
            else:
                agent_ports[name] = int(m.group(1))
                threading.Thread(target=lambda a=a: [None for _ in a.stdout],
                                 daemon=True).start()

        # The data sets just written are still being flushed to disk: let that finish so it
        # does not weigh on what follows (the agent's 256 MiB upload read 314 MiB/s in a run
        # without this, 1092 standalone).
        os.sync()
        if not args.no_micro:
            print("micro-benchmarks ...", flush=True)
            res["micro"] = run_micro(args, cfg, tmp)

        linksrv = LinkServer()
        local_done = {}
        for rtt in rtts:
            key = "%g" % rtt
            sec = res["rtt"][key] = {"peers": {}}
            proxies = []
            if rtt > 0:
                pp, lport = start_proxy(args.build, linksrv.port, rtt, args.bw_mbit)
                proxies.append(pp)
            else:
                lport = linksrv.port
            sec["link"] = measure_link(lport, cfg["link_mib"])
            print("RTT %s ms: TCP ping %.2f ms, %.0f/%.0f MB/s up/down" % (
                key, sec["link"]["rtt_ms"], sec["link"]["up_MBps"], sec["link"]["down_MBps"]),
                flush=True)
            if sshd:
                if rtt > 0:
                    pp, sport = start_proxy(args.build, sshd.port, rtt, args.bw_mbit)
                    proxies.append(pp)
                else:
                    sport = sshd.port
                for n in ("sshfs", "sshfs-cache"):
                    peers[n].port = sport
            for name, agent_port in agent_ports.items():
                if rtt > 0:
                    pp, aport = start_proxy(args.build, agent_port, rtt, args.bw_mbit)
                    proxies.append(pp)
                else:
                    aport = agent_port
                peers[name].port = aport
            for name in PEERS:
                if name not in want:
                    continue
                if name in unavailable:
                    sec["peers"][name] = {"unavailable": unavailable[name]}
                    continue
                p = peers[name]
                if not p.remote and name in local_done:
                    sec["peers"][name] = dict(local_done[name], reused_from_rtt=
                                              local_done[name + "@"])
                    continue
                r = run_peer(p, cfg, tarball, rtt,
                             stats_peer=p if name in DFS_PEERS else None)
                sec["peers"][name] = r
                if not p.remote:
                    local_done[name], local_done[name + "@"] = r, key
            for pp in proxies:
                PROCS.stop(pp)
        linksrv.close()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        res["interrupted"] = True
    finally:
        PROCS.cleanup()
        for name, a in agents.items():
            if a.returncode not in (0, None):
                print("warning: the agent of %s exited with status %s" % (name, a.returncode),
                      file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    res["elapsed_s"] = time.perf_counter() - t_start
    table, misses = build_table(res)
    res["misses"] = [{"rtt": a, "workload": b, "target": c, "got": d} for a, b, c, d in misses]
    print(table)
    print("\nelapsed %.0f s" % res["elapsed_s"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print("JSON: %s" % os.path.abspath(args.json))
    return 130 if res.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
