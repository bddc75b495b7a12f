"""A fake Sealos devbox control plane (agent-api.md §5) for the SDK test and the sealos provider.

The SDK (`@labring/devbox-sdk` 1.1.2) resolves an agent like this (dist/index.mjs,
`ContainerUrlResolver`): `GET <baseUrl>/api/v1/devbox/<name>` with header
`Authorization: encodeURIComponent(<kubeconfig YAML>)`; from the detail's `data` it takes
`agentServer.url` (if non-empty it builds `https://devbox-<url>-agent.<domain>`, which we must
avoid), else `ports[0].publicAddress`, else `ports[0].privateAddress`; the bearer token is
`base64decode(agentServer.token)`.  So we answer with an empty `agentServer.url`, put the
agent's `http://127.0.0.1:PORT` into `ports[0].publicAddress` and base64(token) into
`agentServer.token` (agent-api.md §4.1, §5.4).  libdevbox's sealos provider resolves the same
way.

Two kinds of devboxes:
  * registered with add(name, agent_url, token): an agent someone else runs (the SDK test);
    lifecycle calls only change the reported status;
  * created with POST /api/v1/devbox when the fake was given `agent_path`: the fake runs a REAL
    devbox-agent per box (workspace under `workdir`, random token, the create request's env in
    the agent's environment so processes inside see it).  Status goes Pending -> Running after
    `pending_s`; pause SIGSTOPs the agent (status Stopped), start SIGCONTs it or starts a new
    one, shutdown SIGTERMs it (status Shutdown), restart = shutdown + start, delete SIGTERMs it
    and forgets the box.  Every agent's exit status and output are kept in `agent_exits`.

Routes (§5.3): list, detail, create (validated like the server: DNS-label name, runtime from a
fixed list, cpu/memory from the allowed sets, ports, env must be an ARRAY of {name, value}),
start, pause, restart, shutdown, delete, monitor (bare array), templates.  Errors use the
control-plane envelope with HTTP status == code.  Every request needs the exact kubeconfig in
Authorization (URL-encoded) when one was given.  Binds to 127.0.0.1 only.

Use in-process (`FakeControlPlane(...).start()`), or standalone:
    python3 fake_cp.py [--name box --agent-url URL --token T] [--agent-path BIN --workdir DIR]
                       [--kubeconfig FILE]
which prints `listening on 127.0.0.1:PORT` and serves until SIGTERM/SIGINT.
"""
import base64
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

KUBECONFIG_TEMPLATE = """apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://127.0.0.1:6443
  name: fake
contexts:
- context:
    cluster: fake
    user: fake-user
    namespace: ns-fake
  name: fake
current-context: fake
users:
- name: fake-user
  user:
    token: fake-kube-token
"""

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RUNTIMES = ["node.js", "python", "go", "next.js", "react", "ubuntu", "debian-ssh", "rust",
            "java", "c"]
CPU_SET = {0.1, 0.2, 0.5, 1, 2, 4, 8, 16}
MEMORY_SET = {0.1, 0.5, 1, 2, 4, 8, 16, 32}


def devbox_detail(name, agent_url, token, status="Running"):
    """The `data` object of GET /api/v1/devbox/{name} (agent-api.md §5.4)."""
    host_port = urllib.parse.urlsplit(agent_url).netloc if agent_url else ""
    return {
        "name": name,
        "uid": "00000000-0000-0000-0000-000000000000",
        "resourceType": "devbox",
        "runtime": "node.js",
        "image": "fake/devbox:latest",
        "status": status,
        "resources": {"cpu": 1, "memory": 2},
        "ssh": {"host": "127.0.0.1", "port": 0, "user": "devbox",
                "workingDir": "/home/devbox/project"},
        "env": [],
        "ports": [{
            "number": 9757,
            "portName": "agent",
            "protocol": "HTTP",
            "serviceName": name,
            "privateAddress": agent_url,
            "privateHost": host_port,
            "publicHost": host_port,
            "publicAddress": agent_url,
        }],
        "pods": [{"name": name + "-0", "status": "Running"}],
        "operationalStatus": {"phase": status},
        "agentServer": {
            "url": "",
            "token": base64.b64encode(token.encode()).decode("ascii"),
        },
    }


class ApiError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class ManagedBox:
    """A created devbox with a real devbox-agent behind it."""

    def __init__(self, cp, body):
        self.cp = cp
        self.name = body["name"]
        self.runtime = body["runtime"]
        self.cpu = body["resource"]["cpu"]
        self.memory = body["resource"]["memory"]
        self.ports = body.get("ports") or []
        self.env = body.get("env") or []
        self.body = body
        self.token = secrets.token_urlsafe(18)
        self.dir = tempfile.mkdtemp(prefix="box-%s-" % self.name, dir=cp.workdir)
        self.workspace = os.path.join(self.dir, "workspace")
        os.mkdir(self.workspace)
        self.proc = None
        self.agent_url = ""
        self.log_path = None
        self.status = "Pending"
        self.ready_at = 0.0
        self.runs = 0
        self.drain = None

    def spawn(self):
        self.runs += 1
        self.log_path = os.path.join(self.dir, "agent-%d.log" % self.runs)
        env = dict(os.environ)
        for k in ("TOKEN", "DEVBOX_JWT_SECRET", "ADDR", "WORKSPACE_PATH"):
            env.pop(k, None)
        for e in self.env:
            env[e["name"]] = e["value"]
        env.update({"ADDR": "127.0.0.1:0", "WORKSPACE_PATH": self.workspace,
                    "DEVBOX_JWT_SECRET": self.token})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.cp.agent_path], stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workspace)
        log.close()
        first = self.proc.stdout.readline().decode(errors="replace")
        m = re.match(r"listening on (\S+):(\d+)\s*$", first)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise ApiError(500, "devbox agent did not start: %r" % first)
        self.agent_url = "http://127.0.0.1:%s" % m.group(2)
        proc, path = self.proc, self.log_path

        def drain():
            with open(path, "ab") as f:
                f.write(first.encode())
                for line in proc.stdout:
                    f.write(line)

        self.drain = threading.Thread(target=drain, daemon=True)
        self.drain.start()
        self.status = "Pending"
        self.ready_at = time.monotonic() + self.cp.pending_s

    def stop(self):
        """SIGTERM the agent (continuing it first if paused); records the exit status."""
        if self.proc is None:
            return
        proc = self.proc
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = "no exit within 20 s of SIGTERM (killed, %r)" % rc
        self.drain.join(timeout=5)  # the agent's stdout is at EOF now
        try:
            with open(self.log_path, "rb") as f:
                out = f.read().decode(errors="replace")
        except OSError:
            out = ""
        self.cp.agent_exits.append((self.name, rc, out))
        self.agent_url = ""

    def refresh(self):
        if self.proc is not None and self.proc.poll() is not None and self.status != "Error":
            self.status = "Error"
        if self.status == "Pending" and self.proc is not None and \
                time.monotonic() >= self.ready_at:
            self.status = "Running"

    def detail(self):
        self.refresh()
        d = devbox_detail(self.name, self.agent_url, self.token, self.status)
        d["runtime"] = self.runtime
        d["resources"] = {"cpu": self.cpu, "memory": self.memory}
        d["env"] = self.env
        d["ssh"]["workingDir"] = self.workspace
        d["operationalStatus"] = {"phase": self.status}
        for p in self.ports:
            d["ports"].append({"number": p["number"], "portName": "p%d" % p["number"],
                               "protocol": p.get("protocol", "HTTP"), "serviceName": self.name,
                               "privateAddress": "http://%s.ns-fake:%d" % (self.name,
                                                                           p["number"]),
                               "publicAddress": "https://%s-%d.fake.example" % (self.name,
                                                                               p["number"])})
        return d


class FakeControlPlane:
    """Serves devboxes registered with add() or created through the API; records every
    request in self.requests ((method, path, authorization_ok)) and every JSON request body in
    self.bodies ((method, path, body))."""

    def __init__(self, kubeconfig=None, agent_path=None, workdir=None, pending_s=0.3):
        # kubeconfig: the exact YAML the client must send (URL-encoded) in Authorization.
        # None accepts any non-empty Authorization header.
        self.kubeconfig = kubeconfig
        self.agent_path = agent_path
        self.workdir = workdir
        self._own_workdir = False
        self.pending_s = pending_s
        self.devboxes = {}  # name -> detail dict (add())
        self.managed = {}   # name -> ManagedBox (created through the API)
        self.requests = []
        self.bodies = []
        self.agent_exits = []  # (name, exit status, agent output)
        self.auth_failures = 0
        # HTTP statuses to answer the next requests with, as a gateway would (text body), or
        # (status, object) tuples answered with that JSON body.
        self.fail_next = []
        # Seconds a detail GET stalls before it is answered (a hanging control plane).
        self.detail_delay_s = 0
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None
        self.port = None

    def add(self, name, agent_url, token, status="Running"):
        with self._lock:
            self.devboxes[name] = devbox_detail(name, agent_url, token, status)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _auth_ok(self, header):
        if not header:
            return False
        if self.kubeconfig is None:
            return True
        try:
            return urllib.parse.unquote(header, errors="strict") == self.kubeconfig
        except Exception:
            return False

    # --- routes (called with self._lock held) ----------------------------------------------
    def _validate_create(self, b):
        if not isinstance(b, dict):
            raise ApiError(400, "body must be a JSON object")
        name = b.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 63:
            raise ApiError(400, "name: must be a DNS label (lower-case letters, digits, '-')")
        rt = b.get("runtime")
        if not isinstance(rt, str) or not rt:
            raise ApiError(400, "runtime: Required")
        if rt not in RUNTIMES:
            raise ApiError(404, "Runtime not found")
        res = b.get("resource")
        if not isinstance(res, dict):
            raise ApiError(400, "resource: Required")
        if res.get("cpu") not in CPU_SET:
            raise ApiError(400, "resource.cpu: must be one of %s" % sorted(CPU_SET))
        if res.get("memory") not in MEMORY_SET:
            raise ApiError(400, "resource.memory: must be one of %s" % sorted(MEMORY_SET))
        ports = b.get("ports", [])
        if not isinstance(ports, list):
            raise ApiError(400, "ports: Expected array")
        for p in ports:
            if not isinstance(p, dict) or not isinstance(p.get("number"), int) or \
                    not 1 <= p["number"] <= 65535 or \
                    p.get("protocol", "HTTP") not in ("HTTP", "GRPC", "WS"):
                raise ApiError(400, "ports: invalid port %r" % (p,))
        env = b.get("env", [])
        if not isinstance(env, list):
            raise ApiError(400, "env: Expected array, received %s" % type(env).__name__)
        for e in env:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or \
                    not e["name"] or not isinstance(e.get("value"), str):
                raise ApiError(400, "env: each entry must be {name, value}")
        if name in self.devboxes or name in self.managed:
            raise ApiError(409, "Devbox already exists")

    def _create(self, b):
        self._validate_create(b)
        if not self.agent_path:
            raise ApiError(500, "this fake control plane was started without an agent")
        box = ManagedBox(self, b)
        box.spawn()
        self.managed[box.name] = box
        return {"name": box.name, "sshPort": 0, "base64PrivateKey": "", "userName": "devbox",
                "workingDir": box.workspace, "domain": "fake.example",
                "ports": box.detail()["ports"][1:],
                "summary": {"totalPorts": len(box.ports), "successfulPorts": len(box.ports),
                            "failedPorts": 0}}

    def _verb(self, name, verb):
        box = self.managed.get(name)
        if box is None:
            d = self.devboxes.get(name)
            if d is None:
                raise ApiError(404, "Devbox not found")
            st = {"start": "Running", "restart": "Running", "pause": "Stopped",
                  "shutdown": "Shutdown"}[verb]
            d["status"] = st
            return {"message": "success", "devboxName": name}
        box.refresh()
        if verb == "pause":
            if box.proc is not None:
                box.proc.send_signal(signal.SIGSTOP)
            box.status = "Stopped"
        elif verb == "start":
            if box.status == "Stopped" and box.proc is not None:
                box.proc.send_signal(signal.SIGCONT)
                box.status = "Pending"
                box.ready_at = time.monotonic() + self.pending_s
            elif box.proc is None or box.status == "Error":
                box.stop()
                box.spawn()
        elif verb == "shutdown":
            box.stop()
            box.status = "Shutdown"
        elif verb == "restart":
            box.stop()
            box.spawn()
        return {"message": "success", "devboxName": name}

    def _delete(self, name):
        box = self.managed.pop(name, None)
        if box is not None:
            box.stop()
            shutil.rmtree(box.dir, ignore_errors=True)
        elif self.devboxes.pop(name, None) is None:
            raise ApiError(404, "Devbox not found")
        return "success delete devbox"

    def _list(self):
        items = [{"name": d["name"], "uid": d["uid"], "resourceType": "devbox",
                  "runtime": d["runtime"], "status": d["status"],
                  "resources": {"cpu": 1000, "memory": 2048}}
                 for d in self.devboxes.values()]
        for b in self.managed.values():
            b.refresh()
            items.append({"name": b.name, "uid": "uid-" + b.name, "resourceType": "devbox",
                          "runtime": b.runtime, "status": b.status,
                          "resources": {"cpu": int(b.cpu * 1000),
                                        "memory": int(b.memory * 1024)}})
        return items

    def _monitor(self, name, query):
        if name not in self.managed and name not in self.devboxes:
            raise ApiError(404, "Devbox not found")
        q = urllib.parse.parse_qs(query)
        now = int(time.time())
        try:
            start = int(q.get("start", [now * 1000 - 3600 * 1000])[0])
            end = int(q.get("end", [now * 1000])[0])
        except ValueError:
            raise ApiError(400, "start/end must be numbers")
        start, end = (start // 1000 if start > 10**11 else start,
                      end // 1000 if end > 10**11 else end)
        if end < start:
            raise ApiError(400, "end before start")
        pts = []
        t = max(start, end - 4 * 120)
        while t <= end:
            pts.append({"timestamp": t, "readableTime": time.strftime(
                "%Y/%m/%d %H:%M", time.gmtime(t)), "cpu": 1.5, "memory": 12.25})
            t += 120
        return pts

    def _templates(self):
        return {"runtime": [{"uid": "tpl-" + r, "iconId": r, "seriesName": r,
                             "kind": "FRAMEWORK"} for r in RUNTIMES],
                "config": []}

    def _make_handler(self):
        cp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "fake-sealos-cp/1"

            def log_message(self, fmt, *args):  # keep test output quiet
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _reply(self, code, data, message=""):
                self._send(code, {"code": code, "statusText": "", "message": message,
                                  "data": data})

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                split = urllib.parse.urlsplit(self.path)
                path = split.path
                ok = cp._auth_ok(self.headers.get("Authorization"))
                body = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = ValueError
                with cp._lock:
                    cp.requests.append((self.command, path, ok))
                    if body is not None and body is not ValueError:
                        cp.bodies.append((self.command, path, body))
                    if not ok:
                        cp.auth_failures += 1
                    fail = cp.fail_next.pop(0) if cp.fail_next else None
                if not ok:
                    return self._reply(401, None, "invalid kubeconfig")
                if isinstance(fail, tuple):  # (status, JSON body)
                    return self._send(*fail)
                if fail:
                    text = b"upstream unavailable\n"
                    self.send_response(fail)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                if body is ValueError:
                    return self._reply(400, None, "body is not JSON")
                parts = [p for p in path.split("/") if p]
                if self.command == "GET" and len(parts) == 4 and parts[3] != "templates" and \
                        cp.detail_delay_s:
                    time.sleep(cp.detail_delay_s)  # the server being slow, not a test wait
                if parts[:3] != ["api", "v1", "devbox"]:
                    return self._reply(404, None, "not found")
                rest = [urllib.parse.unquote(p) for p in parts[3:]]
                m = self.command
                try:
                    with cp._lock:
                        if m == "GET" and not rest:
                            return self._reply(200, cp._list())
                        if m == "POST" and not rest:
                            return self._reply(200, cp._create(body))
                        if m == "GET" and rest == ["templates"]:
                            return self._reply(200, cp._templates())
                        if m == "GET" and len(rest) == 1:
                            if rest[0] in cp.managed:
                                return self._reply(200, cp.managed[rest[0]].detail())
                            d = cp.devboxes.get(rest[0])
                            if d is None:
                                return self._reply(404, None, "Devbox not found")
                            return self._reply(200, d)
                        if m == "POST" and len(rest) == 2 and \
                                rest[1] in ("start", "pause", "restart", "shutdown"):
                            return self._reply(200, cp._verb(rest[0], rest[1]))
                        if m == "DELETE" and len(rest) == 2 and rest[1] == "delete":
                            return self._reply(200, cp._delete(rest[0]))
                        if m == "GET" and len(rest) == 2 and rest[1] == "monitor":
                            # a bare array, no envelope (§5.3)
                            return self._send(200, cp._monitor(rest[0], split.query))
                except ApiError as e:
                    return self._reply(e.code, None, e.message)
                return self._reply(404, None, "not implemented by the fake control plane")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler

    def start(self):
        if self.agent_path and self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="fake-cp-")
            self._own_workdir = True
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None
        with self._lock:
            for box in self.managed.values():
                box.stop()
            self.managed.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name")
    ap.add_argument("--agent-url")
    ap.add_argument("--token")
    ap.add_argument("--agent-path", help="devbox-agent binary: created boxes run real agents")
    ap.add_argument("--workdir", help="where created boxes' workspaces live")
    ap.add_argument("--kubeconfig", help="file whose exact content clients must send")
    a = ap.parse_args(argv)
    kc = open(a.kubeconfig).read() if a.kubeconfig else None
    cp = FakeControlPlane(kubeconfig=kc, agent_path=a.agent_path, workdir=a.workdir).start()
    if a.name:
        cp.add(a.name, a.agent_url, a.token)
    print("listening on 127.0.0.1:%d" % cp.port, flush=True)
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    done.wait()
    cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
