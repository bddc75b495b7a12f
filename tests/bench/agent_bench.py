#!/usr/bin/python3
"""devbox-agent benchmark (not a test: it measures and reports, it asserts only correctness).

    python3 tests/bench/agent_bench.py [--build build] [--json out.json]

Measures, against the real binary on 127.0.0.1:
  * cold start: fork/exec of devbox-agent until the first `GET /health` answered 200
    (median / min / max of 20 runs; the client polls connect+request);
  * idle RSS, and peak RSS under each load phase (VmRSS from /proc, sampled every 50 ms);
  * latency (p50/p90/p99) of GET /health, 4 KiB raw write, 4 KiB JSON write and 4 KiB read,
    2000 requests each after 200 warm-up requests, over ONE keep-alive connection, using the
    small C client tests/bench/ka_client.c (compiled here with `cc -O2`; if no compiler is
    found a Python raw-socket client is used instead, and the report says so);
  * throughput with many connections: `wrk` (64 connections, 2 threads) on /health and on a
    4 KiB read;
  * 256 MiB upload (`POST /api/v1/files/write?path=`, application/octet-stream, streamed by
    `curl -T`) and 256 MiB download (`GET /api/v1/files/read?path=`) with curl over loopback,
    speeds from curl's `%{speed_upload}` / `%{speed_download}`, median of 3; the uploaded file
    is verified by size and SHA-256;
  * whether the agent answers `Expect: 100-continue` (curl otherwise stalls 1 s per upload).

Prints a table and writes everything as JSON (--json). Uses only the standard library plus the
`cc`, `curl` and `wrk` binaries. All traffic stays on 127.0.0.1.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKEN = "bench-token"
MiB = 1024 * 1024


class BenchError(Exception):
    """A phase could not be measured (wrong answer, tool failure); recorded, others go on."""


# ------------------------------------------------------------------------------ helpers
def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Samples VmRSS of pid every `interval` s while active; .peak_kib afterwards."""

    def __init__(self, pid, interval=0.05):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()

    def _run(self):
        while True:
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        try:
            self.samples.append(rss_kib(self.pid))
        except (OSError, RuntimeError):
            pass

    @property
    def peak_kib(self):
        return max(self.samples) if self.samples else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def agent_cmd(binary, workspace, port, extra=()):
    return [binary, "--addr=127.0.0.1:%d" % port, "--workspace-path=" + workspace,
            "--token=" + TOKEN] + list(extra)


def clean_env():
    env = dict(os.environ)
    env.pop("TOKEN", None)
    env.pop("DEVBOX_JWT_SECRET", None)
    return env


class Agent:
    def __init__(self, binary, workspace, extra=()):
        self.proc = subprocess.Popen(agent_cmd(binary, workspace, 0, extra),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=clean_env(), cwd="/")
        first = self.proc.stdout.readline().decode(errors="replace")
        m = re.match(r"listening on (\S+):(\d+)\s*$", first)
        if not m:
            raise SystemExit("agent did not start: %r" % first)
        self.port = int(m.group(2))
        self.tail = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.tail.append(line)
            del self.tail[:-50]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "did not exit within 20 s of SIGTERM"


def http_once(port, raw, timeout=5.0):
    """One request on a fresh connection; returns (status, body) or raises OSError."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        return status, data.partition(b"\r\n\r\n")[2]
    finally:
        s.close()


def pct(sorted_vals, p):
    return sorted_vals[int(round((len(sorted_vals) - 1) * p / 100.0))]


# ------------------------------------------------------------------------------ phases
def bench_cold_start(binary, workspace, runs):
    health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    times = []
    for _ in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        p = subprocess.Popen(agent_cmd(binary, workspace, port), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             env=clean_env(), cwd="/")
        deadline = t0 + 10
        while True:
            try:
                st, _ = http_once(port, health)
                if st == 200:
                    break
            except OSError:
                pass
            if p.poll() is not None:
                raise BenchError("agent exited with %r during cold start" % p.returncode)
            if time.perf_counter() > deadline:
                p.kill()
                raise BenchError("agent did not answer /health within 10 s")
            time.sleep(0.0002)
        times.append((time.perf_counter() - t0) * 1000)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=20)
        if rc != 0:
            raise BenchError("agent exited %r after SIGTERM" % rc)
    times.sort()
    return {"runs": runs, "median_ms": statistics.median(times), "min_ms": times[0],
            "max_ms": times[-1]}


def build_c_client(tmp):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    out = os.path.join(tmp, "ka_client")
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "ka_client.c")], check=True)
    return out


def py_keepalive(port, raw, warmup, count, expect, body_len):
    """Fallback client: raw socket, one connection, Content-Length responses only."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    lat = []
    for i in range(warmup + count):
        t0 = time.perf_counter_ns()
        s.sendall(raw)
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchError("bad response: %r" % head[:100])
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if not m:
            raise BenchError("python client needs Content-Length")
        n = int(m.group(1))
        while len(buf) < n:
            buf += s.recv(65536)
        body, buf = buf[:n], buf[n:]
        t1 = time.perf_counter_ns()
        if expect and expect.encode() not in body or body_len >= 0 and len(body) != body_len:
            raise BenchError("unexpected body: %r" % body[:200])
        if i >= warmup:
            lat.append(t1 - t0)
    s.close()
    lat.sort()
    us = [x / 1000 for x in lat]
    return {"n": count, "min_us": us[0], "p50_us": pct(us, 50), "p90_us": pct(us, 90),
            "p99_us": pct(us, 99), "max_us": us[-1], "mean_us": sum(us) / len(us)}


def bench_latency(client, port, tmp, warmup, count):
    auth = "Authorization: Bearer %s\r\n" % TOKEN
    payload = bytes((i * 31 + 7) & 0xFF for i in range(4096))
    json_payload = json.dumps({"path": "bench/lat-json.txt", "content": "x" * 4096}).encode()
    cases = [
        ("GET /health", ("GET /health HTTP/1.1\r\nHost: b\r\n\r\n").encode(),
         '"healthStatus":"ok"', -1),
        ("write 4 KiB raw", ("POST /api/v1/files/write?path=bench/lat.bin HTTP/1.1\r\nHost: b\r\n"
                             + auth + "Content-Type: application/octet-stream\r\n"
                             "Content-Length: 4096\r\n\r\n").encode() + payload,
         '"status":0', -1),
        ("write 4 KiB JSON", ("POST /api/v1/files/write HTTP/1.1\r\nHost: b\r\n" + auth
                              + "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                              % len(json_payload)).encode() + json_payload,
         '"status":0', -1),
        ("read 4 KiB", ("GET /api/v1/files/read?path=bench/lat.bin HTTP/1.1\r\nHost: b\r\n"
                        + auth + "\r\n").encode(), "-", 4096),
    ]
    results = {}
    for name, raw, expect, blen in cases:
        try:
            results[name] = latency_case(client, port, tmp, warmup, count, name, raw, expect,
                                         blen)
        except (BenchError, OSError) as e:
            results[name] = {"error": str(e)}
    return results


def latency_case(client, port, tmp, warmup, count, name, raw, expect, blen):
    if client:
        f = os.path.join(tmp, "req.bin")
        with open(f, "wb") as fh:
            fh.write(raw)
        p = subprocess.run([client, "127.0.0.1", str(port), str(warmup), str(count), f,
                            expect, str(blen)], capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError("ka_client failed on %s: %s" % (name, p.stderr.strip()))
        return json.loads(p.stdout)
    return py_keepalive(port, raw, warmup, count, None if expect == "-" else expect, blen)


def bench_wrk(port, seconds):
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk not installed"}
    out = {}
    for name, path in (("GET /health", "/health"),
                       ("read 4 KiB", "/api/v1/files/read?path=bench/lat.bin")):
        p = subprocess.run([wrk, "-t2", "-c64", "-d%ds" % seconds, "--latency",
                            "-H", "Authorization: Bearer " + TOKEN,
                            "http://127.0.0.1:%d%s" % (port, path)],
                           capture_output=True, text=True)
        text = p.stdout
        r = {"connections": 64, "threads": 2, "seconds": seconds}
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        r["req_per_s"] = float(m.group(1)) if m else None
        for q in ("50", "99"):
            m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % q, text, re.M)
            if m:
                r["p%s_us" % q] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
        m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        r["non_2xx"] = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors:(.*)", text)
        r["socket_errors"] = m.group(1).strip() if m else "none"
        if p.returncode != 0 or r["req_per_s"] is None:
            r["error"] = (p.stderr or text)[-500:]
        elif r["non_2xx"] or r["socket_errors"] != "none":
            r["error"] = "%d non-2xx responses, socket errors: %s" % (r["non_2xx"],
                                                                     r["socket_errors"])
        out[name] = r
    return out


def curl_upload(port, src, dest, expect_header=False):
    cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{speed_upload} %{http_code} %{size_upload} "
           "%{time_total}", "-X", "POST", "-T", src,
           "-H", "Content-Type: application/octet-stream",
           "-H", "Authorization: Bearer " + TOKEN,
           "http://127.0.0.1:%d/api/v1/files/write?path=%s" % (port, dest)]
    if not expect_header:
        cmd[cmd.index("-T"):cmd.index("-T")] = ["-H", "Expect:"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    body, _, stats = p.stdout.rpartition("\n")
    speed, code, size, total = stats.split()
    if p.returncode != 0 or code != "200":
        raise BenchError("upload failed: curl rc %d http %s %s %s" % (
            p.returncode, code, body[:300], p.stderr[:300]))
    env = json.loads(body)
    if env.get("status") != 0:
        raise BenchError("upload rejected by the agent: %r" % env)
    return float(speed), int(size), float(total), env


def curl_download(port, path):
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w",
                        "%{speed_download} %{http_code} %{size_download} %{content_type}",
                        "-H", "Authorization: Bearer " + TOKEN,
                        "http://127.0.0.1:%d/api/v1/files/read?path=%s" % (port, path)],
                       capture_output=True, text=True)
    parts = p.stdout.split(" ", 3)
    if p.returncode != 0 or parts[1] != "200":
        raise BenchError("download failed: %r %r" % (p.stdout, p.stderr))
    return float(parts[0]), int(parts[2]), parts[3] if len(parts) > 3 else ""


def bench_big(agent, workspace, tmp, size_mib, runs):
    src = os.path.join(tmp, "big-src.bin")
    h = hashlib.sha256()
    with open(src, "wb") as f:
        chunk = os.urandom(MiB)
        for i in range(size_mib):
            block = bytes([i & 0xFF]) + chunk[1:]
            h.update(block)
            f.write(block)
    want_sha = h.hexdigest()
    size = size_mib * MiB
    dest_rel = "bench/big.bin"
    dest = os.path.join(workspace, dest_rel)
    up, down = [], []
    with RssSampler(agent.proc.pid) as rss_up:
        for _ in range(runs):
            speed, sent, _, env = curl_upload(agent.port, src, dest_rel)
            if sent != size or env.get("size") != size or os.path.getsize(dest) != size:
                raise BenchError("upload size mismatch: sent %d, agent %r, disk %d" % (
                    sent, env.get("size"), os.path.getsize(dest)))
            up.append(speed / MiB)
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    if h.hexdigest() != want_sha:
        raise BenchError("uploaded file differs from the source (SHA-256)")
    with RssSampler(agent.proc.pid) as rss_down:
        for _ in range(runs):
            speed, got, ctype = curl_download(agent.port, dest_rel)
            if got != size:
                raise BenchError("download size %d, expected %d" % (got, size))
            if ctype.startswith("application/json"):
                raise BenchError("file content labelled %s" % ctype)
            down.append(speed / MiB)
    os.unlink(src)
    return {
        "size_mib": size_mib, "runs": runs,
        "upload_mib_s": {"median": statistics.median(up), "all": up},
        "download_mib_s": {"median": statistics.median(down), "all": down},
        "rss_peak_upload_mib": rss_up.peak_kib / 1024,
        "rss_peak_download_mib": rss_down.peak_kib / 1024,
        "sha256_verified": True,
    }


def check_expect_continue(port, tmp):
    """curl sends `Expect: 100-continue` for bodies > 1 MiB and waits 1 s for the 100."""
    src = os.path.join(tmp, "expect.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(2 * MiB))
    _, _, total, _ = curl_upload(port, src, "bench/expect.bin", expect_header=True)
    os.unlink(src)
    return {"upload_2mib_with_expect_s": total, "answered_100_continue": total < 0.9}


# ------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description="devbox-agent benchmark")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="meson build dir")
    ap.add_argument("--json", help="write results as JSON to this file")
    ap.add_argument("--cold-runs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--big-runs", type=int, default=3)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--tmpdir", help="where the workspace and the 256 MiB source live "
                    "(default: /dev/shm if it has room, to keep the disk out of the numbers)")
    a = ap.parse_args()

    binary = os.path.join(a.build, "agent", "devbox-agent")
    if not os.access(binary, os.X_OK):
        raise SystemExit("no agent binary at %s (build first: ninja -C %s)" % (binary, a.build))
    for tool in ("curl",):
        if not shutil.which(tool):
            raise SystemExit("%s is required" % tool)
    base = a.tmpdir
    if base is None:
        st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
        need = (3 * a.big_mib + 256) * MiB
        base = "/dev/shm" if st and st.f_bavail * st.f_frsize > need else None
    tmp = tempfile.mkdtemp(prefix="dbx-bench-", dir=base)
    workspace = os.path.join(tmp, "ws")
    os.mkdir(workspace)
    res = {
        "agent": os.path.realpath(binary),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "tmpdir": tmp,
    }
    errors = res["errors"] = {}

    def phase(key, fn, *args):
        """Runs one measurement; a BenchError is recorded and the next phase goes on."""
        try:
            res[key] = fn(*args)
        except (BenchError, OSError, ValueError, subprocess.SubprocessError) as e:
            errors[key] = "%s: %s" % (type(e).__name__, e)
            print("  %s failed: %s" % (key, errors[key]), file=sys.stderr)

    try:
        client = build_c_client(tmp)
        res["latency_client"] = ("C (tests/bench/ka_client.c), one keep-alive connection, "
                                 "TCP_NODELAY" if client else
                                 "Python raw socket, one keep-alive connection (no cc found)")
        print("cold start (%d runs)..." % a.cold_runs, file=sys.stderr)
        phase("cold_start", bench_cold_start, binary, workspace, a.cold_runs)

        agent = Agent(binary, workspace,
                      extra=["--max-file-size=%d" % (max(a.big_mib, 1) * MiB * 2)])
        try:
            st, _ = http_once(agent.port, b"GET /health HTTP/1.1\r\nHost: b\r\n"
                                          b"Connection: close\r\n\r\n")
            if st != 200:
                raise SystemExit("GET /health answered %d" % st)
            time.sleep(0.5)  # let start-up allocations settle before reading idle RSS
            res["rss_idle_mib"] = rss_kib(agent.proc.pid) / 1024

            print("latency (%d requests each)..." % a.requests, file=sys.stderr)
            with RssSampler(agent.proc.pid) as r:
                phase("latency", bench_latency, client, agent.port, tmp, a.warmup, a.requests)
            res["rss_peak_latency_mib"] = r.peak_kib / 1024

            print("wrk...", file=sys.stderr)
            with RssSampler(agent.proc.pid) as r:
                phase("wrk", bench_wrk, agent.port, a.wrk_seconds)
            res["rss_peak_wrk_mib"] = r.peak_kib / 1024

            phase("expect_100_continue", check_expect_continue, agent.port, tmp)
            if a.big_mib > 0:
                print("%d MiB upload/download x%d..." % (a.big_mib, a.big_runs), file=sys.stderr)
                phase("big_transfer", bench_big, agent, workspace, tmp, a.big_mib, a.big_runs)
            res["rss_after_mib"] = rss_kib(agent.proc.pid) / 1024
        finally:
            rc = agent.stop()
        res["agent_exit_status"] = rc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for key in ("latency", "wrk"):
        for r in (res.get(key) or {}).values():
            if isinstance(r, dict) and "error" in r:
                errors.setdefault(key, "one or more cases failed")
    print_table(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        print("\nwrote %s" % a.json)
    return 0 if res.get("agent_exit_status") == 0 and not errors else 1


def print_table(res):
    rows = []
    errors = res.get("errors", {})

    def row(key, label, fmt):
        if key in errors and key not in ("latency", "wrk"):
            rows.append((label, "FAILED: " + errors[key]))
        elif key in res:
            rows.append((label, fmt(res[key])))

    row("cold_start", "cold start to first /health 200",
        lambda cs: "%.2f ms median (min %.2f, max %.2f, n=%d)"
        % (cs["median_ms"], cs["min_ms"], cs["max_ms"], cs["runs"]))
    row("rss_idle_mib", "RSS idle", lambda v: "%.1f MiB" % v)
    for name, r in (res.get("latency") or {}).items():
        if "error" in r:
            rows.append(("latency %s" % name, "FAILED: " + r["error"]))
        else:
            rows.append(("latency %s" % name, "p50 %.0f us, p90 %.0f us, p99 %.0f us (n=%d)"
                         % (r["p50_us"], r["p90_us"], r["p99_us"], r["n"])))
    row("rss_peak_latency_mib", "RSS peak during latency runs", lambda v: "%.1f MiB" % v)
    for name, r in (res.get("wrk") or {}).items():
        if not isinstance(r, dict):
            rows.append(("wrk", str(r)))
            continue
        rows.append(("wrk %s (64 conns)" % name,
                     "%s req/s, p50 %s us, p99 %s us, non-2xx %s, socket errors %s%s"
                     % (r.get("req_per_s"), r.get("p50_us"), r.get("p99_us"), r.get("non_2xx"),
                        r.get("socket_errors"), ", ERROR " + r["error"] if "error" in r else "")))
    row("rss_peak_wrk_mib", "RSS peak during wrk", lambda v: "%.1f MiB" % v)
    row("expect_100_continue", "Expect: 100-continue",
        lambda e: "%s (2 MiB upload took %.3f s)"
        % ("answered" if e["answered_100_continue"] else "NOT answered (curl stalls 1 s)",
           e["upload_2mib_with_expect_s"]))
    b = res.get("big_transfer")
    if b:
        rows.append(("%d MiB upload (curl, raw write)" % b["size_mib"], "%.0f MiB/s median of %d"
                     % (b["upload_mib_s"]["median"], b["runs"])))
        rows.append(("%d MiB download (curl, read)" % b["size_mib"], "%.0f MiB/s median of %d"
                     % (b["download_mib_s"]["median"], b["runs"])))
        rows.append(("RSS peak during upload / download", "%.1f / %.1f MiB"
                     % (b["rss_peak_upload_mib"], b["rss_peak_download_mib"])))
    else:
        row("big_transfer", "big upload/download", lambda v: "")
    row("rss_after_mib", "RSS at the end", lambda v: "%.1f MiB" % v)
    row("agent_exit_status", "agent exit status after SIGTERM", str)
    w = max(len(k) for k, _ in rows)
    print("devbox-agent benchmark — %s" % res["agent"])
    print("latency client: %s; files in %s" % (res.get("latency_client"), res["tmpdir"]))
    print("-" * (w + 60))
    for k, v in rows:
        print("%-*s  %s" % (w, k, v))


if __name__ == "__main__":
    sys.exit(main())
