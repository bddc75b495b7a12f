"""Helpers shared by test_sdk.py and test_concurrency.py (stdlib only).

Not a test module (leading underscore); the fixtures themselves live in tests/conftest.py.
"""
import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SDK_DIR = os.path.join(ROOT, "tests", "sdk")
SDK_SCRIPT = os.path.join(SDK_DIR, "sdk_test.mjs")
SDK_PACKAGE = os.path.join(SDK_DIR, "node_modules", "@labring", "devbox-sdk", "package.json")

TAP_RE = re.compile(r"^(ok|not ok) (\d+)(?: - (.*))?$")
PLAN_RE = re.compile(r"^1\.\.(\d+)$")


def sdk_skip_reason():
    """None if the SDK test can run, else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.exists(SDK_PACKAGE):
        return ("tests/sdk/node_modules is missing: run packaging/sdk-deps.sh "
                "(npm ci in tests/sdk) to install @labring/devbox-sdk")
    return None


def parse_tap(text):
    """Returns (plan or None, [(ok: bool, number, description)], bail_out line or None)."""
    plan = None
    results = []
    bail = None
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = TAP_RE.match(line)
        if m:
            results.append((m.group(1) == "ok", int(m.group(2)), m.group(3) or ""))
            continue
        m = PLAN_RE.match(line)
        if m:
            plan = int(m.group(1))
            continue
        if line.startswith("Bail out!"):
            bail = line
    return plan, results, bail


def rss_kib(pid):
    """Resident set size of a process in KiB, from /proc/PID/status (VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def sanitizer_of(binary):
    """'address' / 'thread' / 'memory' if the executable is built with that sanitizer, else None.

    Sanitizer runtimes inflate RSS (shadow memory, quarantine), so memory bounds only hold for
    a plain build."""
    with open(binary, "rb") as f:
        data = f.read()
    for name, sym in (("address", b"__asan_init"), ("thread", b"__tsan_init"),
                      ("memory", b"__msan_init")):
        if sym in data:
            return name
    return None
