"""The official Sealos devbox TypeScript SDK (@labring/devbox-sdk 1.1.2) against devbox-agent.

A real agent (conftest fixture) plus a fake control plane (fake_cp.py, in a thread on
127.0.0.1) that hands the SDK the agent's URL and base64(token); tests/sdk/sdk_test.mjs then
drives every SDK agent method and prints TAP. We assert node exits 0, the TAP plan is complete
and every line is `ok`.

Skipped (with the reason) only when node or tests/sdk/node_modules is missing; install the
latter with packaging/sdk-deps.sh.
"""
import os
import subprocess

import pytest

import fake_cp
from _helpers_sdk import SDK_DIR, SDK_SCRIPT, parse_tap, sdk_skip_reason

# The SDK sends base64decode(agentServer.token) as the bearer; the fake CP encodes this one.
TOKEN = "sdk-test-token-7Zq+/="
MAX_FILE_SIZE = 16 << 20  # above the largest ordinary write in sdk_test.mjs (5 MiB)


@pytest.fixture
def control_plane(tmp_path):
    kubeconfig = fake_cp.KUBECONFIG_TEMPLATE
    kc_file = tmp_path / "kubeconfig.yaml"
    kc_file.write_text(kubeconfig)
    cp = fake_cp.FakeControlPlane(kubeconfig=kubeconfig).start()
    cp.kubeconfig_file = str(kc_file)
    yield cp
    cp.stop()


def test_official_sdk_against_agent(agent_factory, workspace, control_plane):
    reason = sdk_skip_reason()
    if reason:
        pytest.skip(reason)
    # Like a real devbox: the token arrives in DEVBOX_JWT_SECRET (no --token flag), which also
    # makes sdk_test.mjs's "token not passed to children" check meaningful.
    agent = agent_factory(token=None, env={"DEVBOX_JWT_SECRET": TOKEN},
                          extra_args=["--max-file-size=%d" % MAX_FILE_SIZE])
    agent_url = "http://127.0.0.1:%d" % agent.port
    assert agent.host in ("127.0.0.1", "localhost"), agent.host
    control_plane.add("sdk-box", agent_url, TOKEN)
    control_plane.add("sdk-bad-token", agent_url, TOKEN + "-wrong")

    env = dict(os.environ)
    for k in ("MOCK_SERVER_URL", "LOG_LEVEL", "NODE_OPTIONS", "HTTP_PROXY", "HTTPS_PROXY",
              "http_proxy", "https_proxy"):
        env.pop(k, None)
    env.update({
        "DBX_CP_URL": control_plane.url,
        "DBX_DEVBOX": "sdk-box",
        "DBX_BAD_DEVBOX": "sdk-bad-token",
        "DBX_KUBECONFIG_FILE": control_plane.kubeconfig_file,
        "DBX_WORKSPACE": workspace,
        "DBX_MAX_FILE_SIZE": str(MAX_FILE_SIZE),
        "NO_PROXY": "127.0.0.1",
    })
    try:
        p = subprocess.run(["node", SDK_SCRIPT], cwd=SDK_DIR, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail("sdk_test.mjs did not finish within 600 s; output so far:\n%s"
                    % (e.stdout or b"").decode(errors="replace"))
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    print(out)
    if err.strip():
        print("--- node stderr ---\n" + err)

    plan, results, bail = parse_tap(out)
    failures = [r for r in results if not r[0]]
    report = "\n".join("not ok %d - %s" % (num, desc) for _, num, desc in failures)
    assert bail is None, bail + "\n" + out[-4000:]
    assert results, "no TAP output from sdk_test.mjs (exit %d)\n%s\n%s" % (p.returncode, out, err)
    assert not failures, "%d SDK check(s) failed:\n%s" % (len(failures), report)
    assert plan == len(results), "TAP plan %r but %d results (script died?)\n%s" % (
        plan, len(results), err[-4000:])
    assert [r[1] for r in results] == list(range(1, len(results) + 1)), "TAP numbering"
    assert p.returncode == 0, "node exited %d\n%s" % (p.returncode, err[-4000:])
    assert len(results) >= 40, "expected at least 40 SDK checks, got %d" % len(results)

    # The SDK really went through the control plane with the kubeconfig, and the agent
    # is still healthy after the whole run.
    assert control_plane.auth_failures == 0
    assert ("GET", "/api/v1/devbox/sdk-box", True) in control_plane.requests
    st, _, body = agent.get("/health", auth=False)
    assert st == 200 and b'"healthStatus":"ok"' in body, (st, body)
