"""200 concurrent keep-alive clients against one devbox-agent for 30 s (DBX_CONCURRENCY_SECONDS).

Each client owns a directory and loops over small mixed requests, checking every answer:
health, JSON-mode 4 KiB write + read-back, raw-mode 4 KiB write + read-back, list (stat of the
written files), exec-sync `echo`, filename search.  Meanwhile the agent's VmRSS is sampled once a
second.  The test asserts zero errors (wrong status, wrong body, dropped connection, timeout),
that every client made progress, that the agent stays healthy afterwards, and that its memory is
bounded: final RSS < 64 MiB and no growth in the last third of the run beyond a small margin.

Stdlib only; run with /usr/bin/python3 (pytest-3).  It reports request count, rate and the RSS
samples on stdout (pytest -s shows them).
"""
import http.client
import json
import os
import random
import threading
import time
import urllib.parse

import pytest

from _helpers_sdk import rss_kib, sanitizer_of

CLIENTS = 200
DURATION = float(os.environ.get("DBX_CONCURRENCY_SECONDS", "30"))
RSS_LIMIT_KIB = 64 * 1024
RSS_GROWTH_MARGIN_KIB = 8 * 1024
# Under AddressSanitizer (shadow memory + a quarantine of freed blocks that fills up during the
# run) only a loose bound means anything, and growth is expected.
RSS_LIMIT_SANITIZED_KIB = 768 * 1024
MAX_ERROR_DETAILS = 30


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.details = []
        self.per_op = {}

    def ok(self, op):
        with self.lock:
            self.requests += 1
            self.per_op[op] = self.per_op.get(op, 0) + 1

    def fail(self, client, op, what):
        with self.lock:
            self.requests += 1
            self.errors += 1
            if len(self.details) < MAX_ERROR_DETAILS:
                self.details.append("client %d %s: %s" % (client, op, what))


class Client:
    """One keep-alive connection; every check failure raises AssertionError."""

    def __init__(self, agent, idx, stats):
        self.agent = agent
        self.idx = idx
        self.stats = stats
        self.conn = None
        self.dir = "conc/c%03d" % idx
        self.abs_dir = os.path.join(agent.workspace, self.dir)
        self.auth = {"Authorization": "Bearer " + agent.token}
        self.rng = random.Random(idx)
        self.cycles = 0

    def _connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.agent.host, self.agent.port, timeout=30)
        return self.conn

    def req(self, method, path, body=None, headers=None, query=None, auth=True):
        h = dict(self.auth) if auth else {}
        if headers:
            h.update(headers)
        if query:
            path += "?" + urllib.parse.urlencode(query)
        c = self._connect()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
        except Exception:
            c.close()
            self.conn = None
            raise
        if r.getheader("Connection", "").lower() == "close":
            raise AssertionError("agent closed a keep-alive connection (Connection: close)")
        return r.status, (r.getheader("Content-Type") or ""), data

    def api(self, method, path, obj=None, query=None):
        if method == "GET":
            st, ct, data = self.req("GET", path, query=query)
        else:
            st, ct, data = self.req(method, path, body=json.dumps(obj),
                                    headers={"Content-Type": "application/json"}, query=query)
        assert st == 200, "HTTP %d %r" % (st, data[:200])
        assert ct.startswith("application/json"), "content-type %r" % ct
        env = json.loads(data)
        assert env.get("status") == 0, "envelope %r" % (env,)
        assert env.get("message") == "success", "envelope %r" % (env,)
        return env

    # ---- the operations -------------------------------------------------------------------
    def op_health(self):
        st, ct, data = self.req("GET", "/health", auth=False)
        assert st == 200, st
        env = json.loads(data)
        assert env["healthStatus"] == "ok", env

    def op_write_json(self):
        self.json_content = "".join(self.rng.choice("abcdefghij\u00e9\n") for _ in range(4096))
        self.json_bytes = self.json_content.encode()
        env = self.api("POST", "/api/v1/files/write",
                       {"path": self.dir + "/j.txt", "content": self.json_content})
        assert env["size"] == len(self.json_bytes), env
        assert env["path"] == self.abs_dir + "/j.txt", env

    def op_read_json(self):
        self._read_back("j.txt", self.json_bytes)

    def op_write_raw(self):
        self.raw_bytes = self.rng.randbytes(4096)
        st, ct, data = self.req("POST", "/api/v1/files/write", body=self.raw_bytes,
                                headers={"Content-Type": "application/octet-stream"},
                                query={"path": self.dir + "/r.bin"})
        assert st == 200 and ct.startswith("application/json"), (st, ct, data[:200])
        env = json.loads(data)
        assert env["status"] == 0 and env["size"] == 4096, env

    def op_read_raw(self):
        self._read_back("r.bin", self.raw_bytes)

    def _read_back(self, name, want):
        st, ct, data = self.req("GET", "/api/v1/files/read", query={"path": self.dir + "/" + name})
        assert st == 200, st
        assert not ct.startswith("application/json"), "file content labelled %r: %r" % (ct, data[:200])
        assert data == want, "read %s: %d bytes, expected %d (content differs)" % (
            name, len(data), len(want))

    def op_list(self):
        env = self.api("GET", "/api/v1/files/list", query={"path": self.dir})
        by = {f["name"]: f for f in env["files"]}
        assert set(by) == {"j.txt", "r.bin"}, sorted(by)
        assert by["r.bin"]["size"] == 4096 and by["r.bin"]["isDir"] is False, by["r.bin"]
        assert by["j.txt"]["size"] == len(self.json_bytes), by["j.txt"]
        assert by["j.txt"]["path"] == self.abs_dir + "/j.txt", by["j.txt"]

    def op_exec(self):
        word = "c%d-%d" % (self.idx, self.cycles)
        env = self.api("POST", "/api/v1/process/exec-sync", {"command": "echo", "args": [word]})
        assert env["stdout"] == word + "\n" and env["exitCode"] == 0, env

    def op_search(self):
        env = self.api("POST", "/api/v1/files/search", {"dir": self.dir, "pattern": "R.B"})
        assert env["files"] == [self.abs_dir + "/r.bin"], env

    CYCLE = ("health", "write_json", "read_json", "write_raw", "read_raw", "list", "exec",
             "search")

    def setup(self):
        # Files exist before the timed loop, so `list` always sees both.
        self.op_write_json()
        self.op_write_raw()

    def run(self, start_barrier, timing):
        try:
            start_barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            self.stats.fail(self.idx, "start", "barrier broken")
            return
        deadline = timing["deadline"]  # set by the main thread before it joins the barrier
        while time.monotonic() < deadline:
            for op in self.CYCLE:
                try:
                    getattr(self, "op_" + op)()
                    self.stats.ok(op)
                except Exception as e:  # every failure is counted, none is fatal to the run
                    self.stats.fail(self.idx, op, "%s: %s" % (type(e).__name__, e))
            self.cycles += 1
        if self.conn:
            self.conn.close()


def sample_rss(pid, samples, stop):
    t0 = time.monotonic()
    while True:
        try:
            samples.append((time.monotonic() - t0, rss_kib(pid)))
        except (OSError, RuntimeError):
            return
        if stop.wait(1.0):
            return


@pytest.mark.slow
def test_200_concurrent_clients(agent):
    stats = Stats()
    clients = [Client(agent, i, stats) for i in range(CLIENTS)]
    for c in clients:
        c.setup()
        c.conn.close()
        c.conn = None

    barrier = threading.Barrier(CLIENTS + 1)
    timing = {}
    threads = [threading.Thread(target=c.run, args=(barrier, timing), daemon=True)
               for c in clients]
    for t in threads:
        t.start()

    samples = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(agent.proc.pid, samples, stop),
                               daemon=True)
    idle_rss = rss_kib(agent.proc.pid)
    t_start = time.monotonic()
    timing["deadline"] = t_start + DURATION
    sampler.start()
    barrier.wait(timeout=60)
    for t in threads:
        t.join(timeout=DURATION + 120)
    elapsed = time.monotonic() - t_start
    stop.set()
    sampler.join(timeout=5)
    hung = sum(t.is_alive() for t in threads)

    rate = stats.requests / elapsed if elapsed else 0
    print("\nconcurrency: %d clients, %.1f s, %d requests, %.0f req/s, %d errors"
          % (CLIENTS, elapsed, stats.requests, rate, stats.errors))
    print("per operation: " + ", ".join("%s=%d" % kv for kv in sorted(stats.per_op.items())))
    print("agent RSS idle before load: %.1f MiB" % (idle_rss / 1024))
    print("agent RSS samples (s: MiB): " +
          " ".join("%.0f:%.1f" % (t, kib / 1024) for t, kib in samples))
    for d in stats.details:
        print("  " + d)

    assert hung == 0, "%d client threads still running after the deadline" % hung
    assert stats.errors == 0, "%d of %d requests failed; first ones:\n%s" % (
        stats.errors, stats.requests, "\n".join(stats.details))
    slow = [c.idx for c in clients if c.cycles == 0]
    assert not slow, "clients that never completed a cycle: %s" % slow[:20]
    assert agent.proc.poll() is None, "agent died"

    # Every client's files are intact on disk (the agent wrote where it said it did).
    for c in clients:
        with open(os.path.join(c.abs_dir, "r.bin"), "rb") as f:
            assert f.read() == c.raw_bytes, c.idx
        with open(os.path.join(c.abs_dir, "j.txt"), "rb") as f:
            assert f.read() == c.json_bytes, c.idx

    env = agent.api("GET", "/api/v1/files/list", query={"path": "conc"})
    assert env["status"] == 0

    assert len(samples) >= 3, samples
    final = samples[-1][1]
    sanitizer = sanitizer_of(agent.proc.args[0])
    if sanitizer:
        print("agent built with the %s sanitizer: only the loose bound %d MiB is checked"
              % (sanitizer, RSS_LIMIT_SANITIZED_KIB // 1024))
        assert final < RSS_LIMIT_SANITIZED_KIB, "agent RSS %.1f MiB" % (final / 1024)
        return
    assert final < RSS_LIMIT_KIB, "agent RSS %.1f MiB >= %d MiB" % (final / 1024,
                                                                    RSS_LIMIT_KIB // 1024)
    cut = samples[(2 * len(samples)) // 3][1]
    last_third_max = max(kib for _, kib in samples[(2 * len(samples)) // 3:])
    assert last_third_max - cut <= RSS_GROWTH_MARGIN_KIB, (
        "agent RSS still growing in the last third of the run: %.1f MiB -> %.1f MiB"
        % (cut / 1024, last_third_max / 1024))
