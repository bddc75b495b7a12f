#!/usr/bin/python3
"""devbox-agent change-event latency benchmark (not a test: it measures and reports).

    python3 tests/bench/events_bench.py [--build build] [--writes 2000] [--json out.json]

Starts the real agent on 127.0.0.1 over a fresh workspace, connects one /fs/v1/events
WebSocket and, 2000 times (after 100 warm-up writes), writes 16 bytes into a file inside the
workspace from this process (open/write/close: what a build or an editor does inside the devbox)
and waits for the `modify` event of that file carrying the new size. The latency is from just
before the write(2) to the frame being parsed by the client: inotify, the watcher thread, the
attr stat, the ring, the post to the service thread and the WebSocket send, end to end. Reports
p50 / p90 / p99 / max in microseconds. Only the standard library plus python3-websocket.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import websocket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_agent(binary, workspace):
    p = subprocess.Popen([binary, "--addr=127.0.0.1:0", "--workspace-path=" + workspace,
                          "--token=bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    m = re.match(r"listening on (\S+):(\d+)", p.stdout.readline().decode())
    if not m:
        p.kill()
        raise SystemExit("agent did not start")
    return p, int(m.group(2))


def pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    binary = os.path.join(args.build, "agent", "devbox-agent")
    ws_dir = tempfile.mkdtemp(prefix="dbx-evbench-")
    agent, port = start_agent(binary, ws_dir)
    try:
        ws = websocket.create_connection("ws://127.0.0.1:%d/fs/v1/events" % port,
                                         header=["Authorization: Bearer bench"], timeout=10)
        hello = json.loads(ws.recv())
        assert hello["kind"] == "hello"
        path = os.path.join(ws_dir, "hot.txt")
        open(path, "w").close()
        while json.loads(ws.recv()).get("path") != "hot.txt":
            pass
        lat = []
        size = 0
        for i in range(100 + args.writes):
            size += 16
            t0 = time.perf_counter_ns()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"0123456789abcdef")
            os.close(fd)
            while True:
                e = json.loads(ws.recv())
                if (e.get("kind") == "modify" and e.get("path") == "hot.txt"
                        and e.get("attr", {}).get("size") == size):
                    break
            t1 = time.perf_counter_ns()
            if i >= 100:
                lat.append((t1 - t0) / 1000.0)
            # drain the close_write echo so the next round starts clean
            ws.settimeout(0.0005)
            try:
                while True:
                    ws.recv()
            except (websocket.WebSocketTimeoutException, TimeoutError, BlockingIOError):
                pass
            ws.settimeout(10)
        ws.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        shutil.rmtree(ws_dir, ignore_errors=True)
    lat.sort()
    res = {"writes": len(lat), "p50_us": pct(lat, 0.50), "p90_us": pct(lat, 0.90),
           "p99_us": pct(lat, 0.99), "max_us": lat[-1], "binary": binary}
    print("event latency over %d writes: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.0f us"
          % (res["writes"], res["p50_us"], res["p90_us"], res["p99_us"], res["max_us"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
