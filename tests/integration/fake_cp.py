"""A tiny fake Sealos devbox control plane, enough for the official TypeScript SDK to find an agent.

The SDK (`@labring/devbox-sdk` 1.1.2) resolves an agent like this (dist/index.mjs,
`ContainerUrlResolver`): `GET <baseUrl>/api/v1/devbox/<name>` with header
`Authorization: encodeURIComponent(<kubeconfig YAML>)`; from the detail's `data` it takes
`agentServer.url` (if non-empty it builds `https://devbox-<url>-agent.<domain>`, which we must
avoid), else `ports[0].publicAddress`, else `ports[0].privateAddress`; the bearer token is
`base64decode(agentServer.token)`.  So we answer with an empty `agentServer.url`, put the
agent's `http://127.0.0.1:PORT` into `ports[0].publicAddress` and base64(token) into
`agentServer.token` (agent-api.md §4.1, §5.4).

Only the routes the SDK test needs are implemented; everything else answers the control-plane
error envelope with HTTP 404.  Binds to 127.0.0.1 only.

Use in-process (`FakeControlPlane(...).start()`), or standalone:
    python3 fake_cp.py --name box --agent-url http://127.0.0.1:9757 --token T [--kubeconfig FILE]
which prints `listening on 127.0.0.1:PORT` and serves until SIGTERM/SIGINT.
"""
import base64
import http.server
import json
import signal
import sys
import threading
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


def devbox_detail(name, agent_url, token, status="Running"):
    """The `data` object of GET /api/v1/devbox/{name} (agent-api.md §5.4)."""
    host_port = urllib.parse.urlsplit(agent_url).netloc
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


class FakeControlPlane:
    """Serves devboxes registered with add(); records every request in self.requests."""

    def __init__(self, kubeconfig=None):
        # kubeconfig: the exact YAML the client must send (URL-encoded) in Authorization.
        # None accepts any non-empty Authorization header.
        self.kubeconfig = kubeconfig
        self.devboxes = {}
        self.requests = []  # (method, path, authorization_ok)
        self.auth_failures = 0
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
            return urllib.parse.unquote(header) == self.kubeconfig
        except Exception:
            return False

    def _make_handler(self):
        cp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "fake-sealos-cp/1"

            def log_message(self, fmt, *args):  # keep test output quiet
                pass

            def _reply(self, code, data, message=""):
                body = json.dumps({"code": code, "statusText": "", "message": message,
                                   "data": data}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = urllib.parse.urlsplit(self.path).path
                ok = cp._auth_ok(self.headers.get("Authorization"))
                with cp._lock:
                    cp.requests.append((self.command, path, ok))
                    if not ok:
                        cp.auth_failures += 1
                if not ok:
                    return self._reply(401, None, "invalid kubeconfig")
                parts = [p for p in path.split("/") if p]
                if parts[:3] != ["api", "v1", "devbox"]:
                    return self._reply(404, None, "not found")
                rest = [urllib.parse.unquote(p) for p in parts[3:]]
                with cp._lock:
                    if self.command == "GET" and not rest:
                        items = [{"name": d["name"], "uid": d["uid"], "resourceType": "devbox",
                                  "runtime": d["runtime"], "status": d["status"],
                                  "resources": {"cpu": 1000, "memory": 2048}}
                                 for d in cp.devboxes.values()]
                        return self._reply(200, items)
                    if self.command == "GET" and len(rest) == 1:
                        d = cp.devboxes.get(rest[0])
                        if d is None:
                            return self._reply(404, None, "Devbox not found")
                        return self._reply(200, d)
                return self._reply(404, None, "not implemented by the fake control plane")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler

    def start(self):
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


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--agent-url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--kubeconfig", help="file whose exact content clients must send")
    a = ap.parse_args(argv)
    kc = open(a.kubeconfig).read() if a.kubeconfig else None
    cp = FakeControlPlane(kubeconfig=kc).start()
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
