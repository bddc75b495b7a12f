"""The /ws WebSocket log-subscription protocol (agent-api.md §3)."""
import json
import os
import socket
import time

import pytest
import websocket

from conftest import wait_until
from _proc_helpers import exec_bg, wait_done


def connect(agent, token=None):
    tok = agent.token if token is None else token
    return websocket.create_connection("ws://%s:%d/ws" % (agent.host, agent.port),
                                       header=["Authorization: Bearer " + tok], timeout=10)


def recv(ws):
    return json.loads(ws.recv())


def send(ws, obj):
    ws.send(json.dumps(obj))


def logs_of(agent, pid):
    return agent.api("GET", "/api/v1/process/%s/logs" % pid)["logs"]


def gated(agent, before, after):
    """A process that prints @before, waits for the file 'go', then prints @after."""
    script = "%s; while [ ! -e go ]; do sleep 0.02; done; %s" % (before, after)
    env = exec_bg(agent, {"command": "sh", "args": ["-c", script]})
    return env["processId"]


def release(agent):
    open(os.path.join(agent.workspace, "go"), "w").close()


def test_upgrade_without_token_is_401(agent):
    for tok in ("", "wrong"):
        with pytest.raises(websocket.WebSocketBadStatusException) as ei:
            connect(agent, token=tok)
        assert ei.value.status_code == 401
    s = socket.create_connection((agent.host, agent.port), timeout=5)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert s.recv(100).split(b"\r\n")[0].split()[1] == b"401"
    s.close()


def test_subscribe_history_then_subscribed_then_live(agent):
    pid = gated(agent, "echo one; echo two >&2; echo three", "echo four; echo five >&2")
    wait_until(lambda: len(logs_of(agent, pid)) == 3, what="three entries")
    ws = connect(agent)
    send(ws, {"action": "subscribe", "type": "process", "targetId": pid,
              "options": {"tail": 2}})
    hist = [recv(ws), recv(ws)]
    for i, m in enumerate(hist):
        assert set(m) == {"type", "dataType", "targetId", "log", "sequence", "isHistory"}
        assert m["type"] == "log" and m["dataType"] == "process" and m["targetId"] == pid
        assert m["isHistory"] is True and m["sequence"] == i
        assert set(m["log"]) == {"level", "content", "timestamp", "sequence", "targetId",
                                 "targetType"}
        assert m["log"]["sequence"] == i and m["log"]["targetId"] == pid
        assert m["log"]["targetType"] == "process"
        assert isinstance(m["log"]["timestamp"], int)
        assert abs(m["log"]["timestamp"] - time.time()) < 60
    got = sorted((m["log"]["level"], m["log"]["content"]) for m in hist)
    stored = logs_of(agent, pid)[-2:]
    want = sorted((e[1:7], e[9:]) for e in stored)
    assert got == want
    sub = recv(ws)
    assert sub["action"] == "subscribed" and sub["type"] == "process"
    assert sub["targetId"] == pid and sub["levels"] == {}
    assert isinstance(sub["timestamp"], int)
    assert set(sub) == {"action", "type", "targetId", "levels", "timestamp"}
    release(agent)
    live = [recv(ws), recv(ws)]
    assert sorted((m["log"]["level"], m["log"]["content"]) for m in live) == \
        [("stderr", "five\n"), ("stdout", "four\n")]
    assert [m["sequence"] for m in live] == [0, 1]
    assert all(m["isHistory"] is False for m in live)
    ws.close()


def test_levels_filter(agent):
    pid = gated(agent, "echo o1; echo e1 >&2", "echo o2; echo e2 >&2; echo e3 >&2")
    wait_until(lambda: len(logs_of(agent, pid)) == 2, what="two entries")
    ws = connect(agent)
    send(ws, {"action": "subscribe", "type": "process", "targetId": pid,
              "options": {"levels": ["stderr"], "tail": 10}})
    m = recv(ws)
    assert m["isHistory"] and m["log"] == {**m["log"], "level": "stderr", "content": "e1\n"}
    sub = recv(ws)
    assert sub["action"] == "subscribed" and sub["levels"] == {"stderr": True}
    release(agent)
    live = [recv(ws), recv(ws)]
    assert [(x["log"]["level"], x["log"]["content"]) for x in live] == \
        [("stderr", "e2\n"), ("stderr", "e3\n")]
    wait_done(agent, pid)
    send(ws, {"action": "list"})
    lst = recv(ws)
    assert lst["type"] == "list", lst  # no stdout message slipped in before it
    ws.close()


def test_errors_duplicate_unknown_unsubscribe(agent):
    pid = exec_bg(agent, {"command": "sleep", "args": ["30"]})["processId"]
    ws = connect(agent)
    send(ws, {"action": "subscribe", "type": "process", "targetId": pid})
    assert recv(ws)["action"] == "subscribed"
    send(ws, {"action": "subscribe", "type": "process", "targetId": pid})
    assert recv(ws) == {"status": 1400, "message": "Subscription already exists"}
    send(ws, {"action": "subscribe", "type": "process", "targetId": "nosuchid"})
    assert recv(ws) == {"status": 1404, "message": "Target not found"}
    send(ws, {"action": "subscribe", "type": "session", "targetId": pid})
    assert recv(ws) == {"status": 1404, "message": "Target not found"}
    send(ws, {"action": "subscribe", "type": "weird", "targetId": pid})
    assert recv(ws) == {"status": 1404, "message": "Target not found"}

    send(ws, {"action": "list"})
    lst = recv(ws)
    assert set(lst) == {"type", "subscriptions"} and lst["type"] == "list"
    assert len(lst["subscriptions"]) == 1
    s = lst["subscriptions"][0]
    assert set(s) == {"id", "type", "targetId", "logLevels", "createdAt", "active"}
    assert s["id"] == "process:" + pid and s["type"] == "process" and s["targetId"] == pid
    assert s["logLevels"] == [] and s["active"] is True and isinstance(s["createdAt"], int)

    send(ws, {"action": "unsubscribe", "type": "process", "targetId": pid})
    m = recv(ws)
    assert m["action"] == "unsubscribed" and m["targetId"] == pid and m["type"] == "process"
    assert set(m) == {"action", "type", "targetId", "timestamp"}
    send(ws, {"action": "unsubscribe", "type": "process", "targetId": pid})
    assert recv(ws) == {"status": 1404, "message": "Subscription not found"}
    send(ws, {"action": "list"})
    assert recv(ws) == {"type": "list", "subscriptions": []}
    agent.api("POST", "/api/v1/process/%s/kill" % pid)
    ws.close()


def test_garbage_is_ignored(agent):
    pid = exec_bg(agent, {"command": "sleep", "args": ["30"]})["processId"]
    ws = connect(agent)
    ws.send("not json at all")
    ws.send("[1,2,3]")
    ws.send_binary(b"\x00\x01binary")
    ws.send_binary(json.dumps({"action": "list"}).encode())
    send(ws, {"action": "subscribe"})
    send(ws, {"action": "subscribe", "type": "process"})
    send(ws, {"action": "unsubscribe", "targetId": pid})
    send(ws, {"action": "dance"})
    send(ws, {"nothing": True})
    ws.ping("p")
    send(ws, {"action": "list"})
    assert recv(ws) == {"type": "list", "subscriptions": []}
    agent.api("POST", "/api/v1/process/%s/kill" % pid)
    ws.close()


def test_session_system_entries(agent):
    os.mkdir(os.path.join(agent.workspace, "d"))
    sid = agent.api("POST", "/api/v1/sessions/create", {"shell": "/bin/sh"})["sessionId"]
    ws = connect(agent)
    send(ws, {"action": "subscribe", "type": "session", "targetId": sid,
              "options": {"levels": ["system", "stdout"]}})
    assert recv(ws)["action"] == "subscribed"
    agent.api("POST", "/api/v1/sessions/%s/exec" % sid, {"command": "echo hi"})
    msgs = [recv(ws), recv(ws)]
    assert [(m["log"]["level"], m["log"]["content"]) for m in msgs] == \
        [("system", "Executing: echo hi"), ("stdout", "hi\n")]
    assert msgs[0]["dataType"] == "session" and msgs[0]["log"]["targetType"] == "session"
    agent.api("POST", "/api/v1/sessions/%s/cd" % sid, {"path": "d"})
    m = recv(ws)
    assert (m["log"]["level"], m["log"]["content"]) == \
        ("system", "Changed directory to: " + os.path.join(agent.workspace, "d"))
    ws.close()


def test_two_connections_are_independent_and_close_cleanly(agent):
    pid = gated(agent, "true", "echo x")
    a, b = connect(agent), connect(agent)
    for ws in (a, b):
        send(ws, {"action": "subscribe", "type": "process", "targetId": pid})
        assert recv(ws)["action"] == "subscribed"
    a.close()
    release(agent)
    m = recv(b)
    assert m["log"]["content"] == "x\n"
    b.close()
    wait_done(agent, pid)
