#!/usr/bin/python3
"""/fs/v1 benchmark (not a test: it measures and reports, it checks only correctness).

    python3 tests/bench/fsapi_bench.py [--build build] [--n 2000]

Starts the real devbox-agent on 127.0.0.1 over a temporary workspace and measures:
  * small-op latency (p50/p90/p99) of GET stat, GET list (20 entries), GET read (4 KiB) and
    PUT write (4 KiB at offset 0), --n requests each after 200 warm-up requests, over ONE
    keep-alive connection with Python's http.client (so the numbers include Python's own
    per-request overhead, typically 30-60 us: compare runs, not absolute values);
  * tree throughput: entries/s of GET tree on a 10,000-file workspace (100 dirs x 100 files),
    median of 5 walks;
  * ranged read throughput: MB/s of 8 MiB `Range` reads over a 256 MiB file, whole file once,
    plus one full streamed read.
Standard library only.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "bench-token"


def start_agent(build, ws):
    binpath = os.path.join(build, "agent", "devbox-agent")
    p = subprocess.Popen([binpath, "--addr=127.0.0.1:0", "--workspace-path=" + ws,
                          "--token=" + TOKEN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    m = re.match(r"listening on (\S+):(\d+)", line)
    if not m:
        p.kill()
        sys.exit("agent did not start: %r" % line)
    # keep draining its output so it never blocks on a full pipe
    import threading
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, m.group(1), int(m.group(2))


class Client:
    def __init__(self, host, port):
        self.c = http.client.HTTPConnection(host, port, timeout=60)
        self.h = {"Authorization": "Bearer " + TOKEN}

    def req(self, method, route, body=None, headers=None, **q):
        url = "/fs/v1/" + route + ("?" + urllib.parse.urlencode(q) if q else "")
        h = dict(self.h)
        if headers:
            h.update(headers)
        self.c.request(method, url, body=body, headers=h)
        r = self.c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError("%s %s: %d %r" % (method, url, r.status, data[:200]))
        return r, data


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def lat(c, n, fn):
    for _ in range(200):
        fn()
    xs = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        xs.append((time.perf_counter_ns() - t0) / 1000)
    return pct(xs, 50), pct(xs, 90), pct(xs, 99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    ws = tempfile.mkdtemp(prefix="dbx-fsbench-")
    p, host, port = start_agent(args.build, ws)
    try:
        c = Client(host, port)
        os.mkdir(os.path.join(ws, "small"))
        for i in range(20):
            with open(os.path.join(ws, "small", "f%02d" % i), "wb") as f:
                f.write(os.urandom(4096))
        blk = os.urandom(4096)
        print("small ops over one keep-alive connection (Python http.client), us:")
        print("  %-10s %8s %8s %8s" % ("op", "p50", "p90", "p99"))
        ops = [
            ("stat", lambda: c.req("GET", "stat", path="small/f00")),
            ("list", lambda: c.req("GET", "list", path="small")),
            ("read-4K", lambda: c.req("GET", "read", path="small/f01")),
            ("write-4K", lambda: c.req("PUT", "write", body=blk, path="small/w")),
        ]
        for name, fn in ops:
            p50, p90, p99 = lat(c, args.n, fn)
            print("  %-10s %8.0f %8.0f %8.0f" % (name, p50, p90, p99))
        _, data = c.req("GET", "read", path="small/w")
        assert data == blk

        os.mkdir(os.path.join(ws, "tree"))
        for d in range(100):
            dd = os.path.join(ws, "tree", "d%02d" % d)
            os.mkdir(dd)
            for f in range(100):
                open(os.path.join(dd, "f%02d" % f), "w").close()
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            _, data = c.req("GET", "tree", path="tree")
            dt = time.perf_counter() - t0
            end = json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])
            assert end["entries"] == 10101, end
            rates.append(end["entries"] / dt)
        print("tree: %.0f entries/s (10,101 entries, median of 5)" % statistics.median(rates))

        big = os.path.join(ws, "big")
        size = 256 << 20
        with open(big, "wb") as f:
            for _ in range(size // (8 << 20)):
                f.write(os.urandom(8 << 20))
        t0 = time.perf_counter()
        for off in range(0, size, 8 << 20):
            r, data = c.req("GET", "read", path="big",
                            headers={"Range": "bytes=%d-%d" % (off, off + (8 << 20) - 1)})
            assert r.status == 206 and len(data) == 8 << 20
        dt = time.perf_counter() - t0
        print("ranged read: %.0f MB/s (8 MiB ranges over 256 MiB)" % (size / dt / 1e6))
        t0 = time.perf_counter()
        _, data = c.req("GET", "read", path="big")
        dt = time.perf_counter() - t0
        assert len(data) == size
        print("full read: %.0f MB/s (256 MiB, one streamed reply)" % (size / dt / 1e6))
    finally:
        p.terminate()
        p.wait(20)
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
