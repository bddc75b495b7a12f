#!/usr/bin/python3
"""devboxctl benchmark (not a test: it measures and reports; it checks only that copies are
complete).

    python3 tests/bench/ctl_bench.py [--build build] [--n 9] [--runs 3] [--big-mib 256]

Compares, over loopback on this machine:
  * latency: wall time of `devboxctl exec BOX -- true` against `ssh HOST true` (median and
    p90 of --n runs each, fresh process and connection every time, as a user would run them);
  * cp: one --big-mib MiB file and a tree of 2,000 small files (0-8 KiB, 60 nested dirs), each
    way, `devboxctl cp` against `scp -r` and `rsync -a` over ssh (median of --runs, the
    destination emptied before each run), plus an unchanged re-copy (devboxctl and rsync skip).

The ssh side is a private sshd started for the run on a free 127.0.0.1 port with a temporary
host key and user key and its own config file (nothing of the system's ssh configuration is
used or changed); it needs openssh-server, openssh-client and rsync (packaging/deps.sh). The
devbox side is the real devbox-agent on 127.0.0.1 (BOX = its URL, token in $DEVBOX_TOKEN),
started with --max-file-size large enough for the big file.

Prints a table and then one JSON document with every number (seconds).
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "bench-token"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("nothing listens on port %d" % port)


class Sshd:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "ssh")
        os.makedirs(self.dir, mode=0o700)
        hostkey = os.path.join(self.dir, "host_ed25519")
        self.key = os.path.join(self.dir, "user_ed25519")
        for k in (hostkey, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        auth = os.path.join(self.dir, "authorized_keys")
        shutil.copy(self.key + ".pub", auth)
        os.chmod(auth, 0o600)
        self.port = free_port()
        cfg = os.path.join(self.dir, "sshd_config")
        with open(cfg, "w") as f:
            f.write("ListenAddress 127.0.0.1:%d\nHostKey %s\nAuthorizedKeysFile %s\n"
                    "PidFile %s\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                    "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
                    % (self.port, hostkey, auth, os.path.join(self.dir, "sshd.pid")))
        # The privilege-separation directory sshd insists on (runtime state, not config).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)
        self.user = os.environ.get("USER") or "root"
        self.opts = ["-i", self.key, "-o", "StrictHostKeyChecking=no", "-o",
                     "UserKnownHostsFile=" + os.path.join(self.dir, "known_hosts"), "-o",
                     "BatchMode=yes", "-o", "LogLevel=ERROR"]
        self.ssh = ["ssh", "-p", str(self.port)] + self.opts
        self.host = "%s@127.0.0.1" % self.user
        r = subprocess.run(self.ssh + [self.host, "true"], capture_output=True)
        if r.returncode:
            sys.exit("ssh to the private sshd failed: %s" % r.stderr.decode())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Agent:
    def __init__(self, build, ws):
        binpath = os.path.join(build, "agent", "devbox-agent")
        self.proc = subprocess.Popen([binpath, "--addr=127.0.0.1:0", "--workspace-path=" + ws,
                                      "--token=" + TOKEN, "--max-file-size=%d" % (4 << 30)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"listening on (\S+):(\d+)", line)
        if not m:
            self.proc.kill()
            sys.exit("agent did not start: %r" % line)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.url = "http://%s:%s" % (m.group(1), m.group(2))

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=20)


def timed(argv, env=None, check=True):
    t = time.monotonic()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t
    if check and r.returncode:
        sys.exit("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.decode()[-2000:]))
    return dt, r.returncode


def digest_tree(root):
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for n in sorted(files):
            p = os.path.join(d, n)
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def make_small_tree(root, n=2000):
    rnd = random.Random(7)
    dirs = ["."]
    for i in range(60):
        d = os.path.normpath(os.path.join(rnd.choice(dirs), "d%02d" % i))
        os.makedirs(os.path.join(root, d))
        dirs.append(d)
    for i in range(n):
        with open(os.path.join(root, rnd.choice(dirs), "f%04d" % i), "wb") as f:
            f.write(os.urandom(rnd.randint(0, 8192)))


def make_big(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("DEVBOX_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    ap.add_argument("--n", type=int, default=9, help="exec/ssh latency samples")
    ap.add_argument("--runs", type=int, default=3, help="runs per copy measurement")
    ap.add_argument("--big-mib", type=int, default=256)
    args = ap.parse_args()
    ctl = os.path.join(args.build, "ctl", "devboxctl")
    for tool in ("ssh", "scp", "rsync", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit("%s is missing: run packaging/deps.sh" % tool)
    if not os.path.exists("/usr/sbin/sshd"):
        sys.exit("/usr/sbin/sshd is missing: run packaging/deps.sh")

    tmp = tempfile.mkdtemp(prefix="dbx-ctlbench-")
    ws = os.path.join(tmp, "ws")          # the devbox workspace
    remote = os.path.join(tmp, "remote")  # the ssh "remote" side
    local = os.path.join(tmp, "local")    # sources
    out = os.path.join(tmp, "out")        # download destinations
    for d in (ws, remote, local, out):
        os.makedirs(d)
    env = dict(os.environ, DEVBOX_TOKEN=TOKEN)
    sshd = agent = None
    res = {"config": {"n": args.n, "runs": args.runs, "big_mib": args.big_mib,
                      "small_files": 2000}}
    try:
        sshd = Sshd(tmp)
        agent = Agent(args.build, ws)
        ssh_e = " ".join(["ssh", "-p", str(sshd.port)] + sshd.opts)
        scp = ["scp", "-q", "-r", "-P", str(sshd.port)] + sshd.opts
        rsync = ["rsync", "-a", "-e", ssh_e]
        box = agent.url

        # ---- latency ------------------------------------------------------------------------
        lat = {}
        for name, argv in (("devboxctl exec -- true", [ctl, "exec", box, "--", "true"]),
                           ("ssh true", sshd.ssh + [sshd.host, "true"])):
            timed(argv, env)  # warm-up
            xs, rc = [], 0
            for _ in range(args.n):
                dt, rc = timed(argv, env, check=False)
                if rc:
                    break
                xs.append(dt)
            lat[name] = ({"median": statistics.median(xs),
                          "p90": sorted(xs)[int(0.9 * (len(xs) - 1))], "samples": len(xs)}
                         if not rc else {"pending": "exit status %d" % rc})
        res["latency"] = lat

        # ---- copies ---------------------------------------------------------------------------
        make_small_tree(os.path.join(local, "small"))
        make_big(os.path.join(local, "big.bin"), args.big_mib)
        want = {"small": digest_tree(os.path.join(local, "small"))}
        copies = {}

        counter = [0]

        def measure(label, tool, root, argv_for, name, payload, reuse=None):
            """Runs argv_for(dest) --runs times, each into a new directory under root (or into
            reuse, the destination of an earlier copy, for the unchanged re-copy).  New
            directories rather than emptied ones: ext4 is slow to allocate inodes right after
            many were freed, which would measure the file system instead of the tools."""
            xs, dests = [], []
            for _ in range(args.runs):
                if reuse:
                    dest = reuse
                else:
                    counter[0] += 1
                    dest = os.path.join(root, "r%d" % counter[0])
                    os.makedirs(dest)
                dests.append(dest)
                dt, _ = timed(argv_for(dest), env)
                xs.append(dt)
            got = os.path.join(dests[-1], name)
            if payload == "small":
                assert digest_tree(got) == want["small"], "%s %s: incomplete copy" % (label,
                                                                                     tool)
            else:
                assert os.path.getsize(got) == args.big_mib << 20, label
                for d in dests[:-1]:
                    if d != dests[-1]:
                        shutil.rmtree(d)  # one inode each: no allocation effect
            copies.setdefault(label, {})[tool] = statistics.median(xs)
            return dests[-1]

        rel_ws = lambda d: os.path.relpath(d, ws)
        for payload, name in (("small", "small"), ("big", "big.bin")):
            src = os.path.join(local, name)
            slash = "/" if payload == "small" else ""
            # upload: local -> devbox workspace / ssh remote dir
            lbl = "%s upload" % payload
            d_ctl = measure(lbl, "devboxctl", ws, lambda d: [
                ctl, "-q", "cp", src, "%s:%s/%s" % (box, rel_ws(d), name)], name, payload)
            measure(lbl, "scp -r", remote, lambda d: scp + [
                src, "%s:%s/%s" % (sshd.host, d, name)], name, payload)
            d_rs = measure(lbl, "rsync -a", remote, lambda d: rsync + [
                src + slash, "%s:%s/%s" % (sshd.host, d, name)], name, payload)
            # download: devbox workspace / ssh remote dir -> local out
            lbl = "%s download" % payload
            measure(lbl, "devboxctl", out, lambda d: [
                ctl, "-q", "cp", "%s:%s/%s" % (box, rel_ws(d_ctl), name),
                os.path.join(d, name)], name, payload)
            measure(lbl, "scp -r", out, lambda d: scp + [
                "%s:%s/%s" % (sshd.host, d_rs, name), os.path.join(d, name)], name, payload)
            measure(lbl, "rsync -a", out, lambda d: rsync + [
                "%s:%s/%s%s" % (sshd.host, d_rs, name, slash), os.path.join(d, name)], name,
                payload)
            # unchanged re-copy onto the last upload (devboxctl and rsync skip what matches)
            lbl = "%s re-upload, unchanged" % payload
            measure(lbl, "devboxctl", ws, lambda d: [
                ctl, "-q", "cp", src + ("/." if payload == "small" else ""),
                "%s:%s/%s" % (box, rel_ws(d), name if payload == "small" else "")],
                name, payload, reuse=d_ctl)
            measure(lbl, "rsync -a", remote, lambda d: rsync + [
                src + slash, "%s:%s/%s" % (sshd.host, d, name)], name, payload, reuse=d_rs)
        res["copy"] = copies
    finally:
        if agent:
            rc = agent.stop()
            if rc:
                print("warning: the agent exited with status %d" % rc, file=sys.stderr)
        if sshd:
            sshd.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- report -------------------------------------------------------------------------------
    print("\nlatency (wall time of one invocation, %d runs)" % args.n)
    for k, v in res["latency"].items():
        if "pending" in v:
            print("  %-26s pending (%s)" % (k, v["pending"]))
        else:
            print("  %-26s median %7.1f ms   p90 %7.1f ms" % (k, v["median"] * 1e3,
                                                            v["p90"] * 1e3))
    tools = ["devboxctl", "scp -r", "rsync -a"]
    print("\ncopies (median of %d runs, seconds; MiB/s for the big file)" % args.runs)
    print("  %-30s %12s %12s %12s" % ("", *tools))
    for lbl, v in res["copy"].items():
        cells = []
        for t in tools:
            if t not in v:
                cells.append("-")
            elif lbl.startswith("big"):
                cells.append("%.2f (%4.0f)" % (v[t], args.big_mib / v[t]))
            else:
                cells.append("%.3f" % v[t])
        print("  %-30s %12s %12s %12s" % (lbl, *cells))
    print()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
