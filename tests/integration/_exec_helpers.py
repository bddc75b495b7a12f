"""Helpers for the /exec/v1 tests (PROTOCOL.md §4)."""
import json
import struct

import websocket


def start(agent, argv, expect=200, **kw):
    """POST /exec/v1/start; returns the decoded reply (asserting the HTTP status)."""
    body = dict(kw)
    body["argv"] = argv
    st, hd, data = agent.post_json("/exec/v1/start", body)
    assert st == expect, (st, data)
    assert hd.get("content-type", "").startswith("application/json"), hd
    return json.loads(data)


def list_execs(agent):
    st, _, data = agent.get("/exec/v1/list")
    assert st == 200, (st, data)
    return {e["id"]: e for e in json.loads(data)["execs"]}


def kill(agent, xid, signal=None):
    q = {"id": xid}
    if signal:
        q["signal"] = signal
    st, _, data = agent.request("POST", "/exec/v1/kill", query=q)
    return st, json.loads(data)


def attach(agent, xid, offset=None, timeout=20):
    url = "ws://%s:%d/exec/v1/attach?id=%s" % (agent.host, agent.port, xid)
    if offset is not None:
        url += "&offset=%d" % offset
    ws = websocket.create_connection(url, header=["Authorization: Bearer " + agent.token],
                                     timeout=timeout)
    hello = json.loads(ws.recv())
    return ws, hello


def recv_frame(ws):
    """One frame: ("data", channel, offset, bytes) or ("text", obj)."""
    op, data = ws.recv_data()
    if op == websocket.ABNF.OPCODE_BINARY:
        ch, off = struct.unpack(">BQ", data[:9])
        return ("data", ch, off, data[9:])
    return ("text", json.loads(data))


class Stream:
    """Collects one client's output per channel, checking offsets are contiguous."""

    def __init__(self, ws, start=0):
        self.ws = ws
        self.out = {1: bytearray(), 2: bytearray()}
        self.next = {1: start, 2: start}
        self.texts = []
        self.exit = None

    def step(self):
        f = recv_frame(self.ws)
        if f[0] == "data":
            _, ch, off, data = f
            assert off == self.next[ch], (ch, off, self.next[ch])
            self.out[ch] += data
            self.next[ch] += len(data)
        else:
            obj = f[1]
            self.texts.append(obj)
            if obj.get("type") == "skipped":
                self.next[obj["channel"]] = obj["to"]
            if obj.get("type") == "exit":
                self.exit = obj
        return f

    def until(self, pred, what="condition"):
        while not pred(self):
            assert self.exit is None, "exited before %s: %r" % (what, self.out)
            self.step()

    def until_exit(self):
        while self.exit is None:
            self.step()
        return self.exit


def send_json(ws, obj):
    ws.send(json.dumps(obj))


def send_stdin(ws, data):
    ws.send_binary(data)
