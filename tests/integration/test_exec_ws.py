"""Interactive exec over WebSocket: /exec/v1/start, list, kill and attach (PROTOCOL.md §4)."""
import json
import os

import pytest
import websocket

from conftest import wait_until
from _exec_helpers import Stream, attach, kill, list_execs, recv_frame, send_json, send_stdin, \
    start

MIB = 1 << 20


def run(agent, argv, **kw):
    """Starts @argv, attaches from offset 0 and collects everything until the exit frame."""
    x = start(agent, argv, **kw)
    ws, hello = attach(agent, x["id"])
    assert hello["type"] == "hello" and hello["id"] == x["id"] and hello["pid"] == x["pid"]
    s = Stream(ws)
    s.until_exit()
    ws.close()
    return s


def test_argv_is_exact_and_env_cwd_apply(agent):
    os.mkdir(os.path.join(agent.workspace, "sub"))
    s = run(agent, ["printf", "%s|", "a b", "", "$HOME", "'q'", "*"])
    assert bytes(s.out[1]) == b"a b||$HOME|'q'|*|"
    assert s.exit == {"type": "exit", "exitCode": 0, "signal": None}
    s = run(agent, ["sh", "-c", 'pwd; printf "%s\\n" "$FOO"'], env={"FOO": "x y"}, cwd="sub")
    assert bytes(s.out[1]) == (os.path.join(agent.workspace, "sub") + "\nx y\n").encode()


def test_stdout_stderr_channels_and_offsets(agent):
    s = run(agent, ["sh", "-c", "printf aaa; printf EE >&2; printf bbbb; printf F >&2"])
    assert bytes(s.out[1]) == b"aaabbbb" and bytes(s.out[2]) == b"EEF"
    assert s.next == {1: 7, 2: 3}
    ws, hello = attach(agent, list(list_execs(agent))[0])
    assert hello["offsets"] == {"stdout": [0, 7], "stderr": [0, 3]}
    assert hello["running"] is False and hello["tty"] is False
    ws.close()


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes(agent, code):
    s = run(agent, ["sh", "-c", "exit %d" % code])
    assert s.exit == {"type": "exit", "exitCode": code, "signal": None}


def test_stdin_streams_then_eof(agent):
    x = start(agent, ["cat"])
    ws, _ = attach(agent, x["id"])
    s = Stream(ws)
    send_stdin(ws, b"one\n")
    s.until(lambda s: bytes(s.out[1]) == b"one\n", "first echo")
    send_stdin(ws, b"two\n")
    s.until(lambda s: bytes(s.out[1]) == b"one\ntwo\n", "second echo")
    send_json(ws, {"type": "eof"})
    assert s.until_exit() == {"type": "exit", "exitCode": 0, "signal": None}


def test_stdin_5mib_in_pieces_is_exact(agent):
    x = start(agent, ["wc", "-c"])
    ws, _ = attach(agent, x["id"])
    piece = bytes(range(256)) * 256  # 64 KiB
    for _ in range(80):
        send_stdin(ws, piece)
    send_json(ws, {"type": "eof"})
    s = Stream(ws)
    assert s.until_exit()["exitCode"] == 0
    assert bytes(s.out[1]).strip() == b"5242880"


def test_kill_route_sigkill_reported(agent):
    x = start(agent, ["sleep", "1000"])
    ws, _ = attach(agent, x["id"])
    assert list_execs(agent)[x["id"]]["running"] is True
    st, body = kill(agent, x["id"], "SIGKILL")
    assert st == 200, body
    s = Stream(ws)
    assert s.until_exit() == {"type": "exit", "exitCode": None, "signal": "SIGKILL"}
    e = wait_until(lambda: (lambda e: e if not e["running"] else None)(
        list_execs(agent)[x["id"]]), what="record updated")
    assert e["signal"] == "SIGKILL" and e["exitCode"] is None and e["endTime"] is not None
    st, body = kill(agent, x["id"], "SIGTERM")
    assert st >= 400 and body["error"] == "ESRCH"


def test_sigint_via_ws_ends_sleep(agent):
    x = start(agent, ["sleep", "1000"])
    ws, _ = attach(agent, x["id"])
    send_json(ws, {"type": "signal", "signal": "SIGINT"})
    assert Stream(ws).until_exit() == {"type": "exit", "exitCode": None, "signal": "SIGINT"}


def test_signal_reaches_the_whole_group(agent):
    x = start(agent, ["sh", "-c", "sleep 1000 & echo $!; wait"])
    ws, _ = attach(agent, x["id"])
    s = Stream(ws)
    s.until(lambda s: s.out[1].endswith(b"\n"), "background pid")
    bg = int(s.out[1])
    assert os.path.exists("/proc/%d" % bg)
    assert kill(agent, x["id"])[0] == 200  # SIGTERM by default
    assert s.until_exit()["signal"] == "SIGTERM"
    def gone(pid):
        try:
            return open("/proc/%d/stat" % pid).read().split(")")[1].split()[0] == "Z"
        except (FileNotFoundError, ProcessLookupError):
            return True
    wait_until(lambda: gone(bg), what="background sleep gone")


def test_unknown_signal_is_an_error_frame(agent):
    x = start(agent, ["sleep", "1000"])
    ws, _ = attach(agent, x["id"])
    send_json(ws, {"type": "signal", "signal": "SIGNOPE"})
    f = recv_frame(ws)
    assert f[0] == "text" and f[1]["type"] == "error" and f[1]["error"] == "EINVAL"
    send_json(ws, {"type": "signal", "signal": "KILL"})
    assert Stream(ws).until_exit()["signal"] == "SIGKILL"


def test_pty_tty_is_a_pts(agent):
    s = run(agent, ["tty"], tty=True)
    assert s.out[1].startswith(b"/dev/pts/"), s.out
    assert s.out[2] == b"" and s.exit["exitCode"] == 0
    s = run(agent, ["sh", "-c", 'printf "%s" "$TERM"'], tty=True)
    assert bytes(s.out[1]) == b"xterm-256color"


def test_pty_resize(agent):
    x = start(agent, ["sh", "-c", "stty size; read x; stty size"], tty=True, rows=10, cols=20)
    ws, hello = attach(agent, x["id"])
    assert hello["tty"] is True
    s = Stream(ws)
    s.until(lambda s: b"10 20\r\n" in s.out[1], "initial size")
    send_json(ws, {"type": "resize", "rows": 30, "cols": 100})
    send_stdin(ws, b"\n")
    assert s.until_exit()["exitCode"] == 0
    assert s.out[1].endswith(b"30 100\r\n"), s.out


def test_pty_trap_usr1(agent):
    x = start(agent, ["sh", "-c", "trap 'echo got' USR1; echo ready; "
                      "while :; do sleep 0.05; done"], tty=True)
    ws, _ = attach(agent, x["id"])
    s = Stream(ws)
    s.until(lambda s: b"ready" in s.out[1], "trap installed")
    send_json(ws, {"type": "signal", "signal": "SIGUSR1"})
    s.until(lambda s: b"got" in s.out[1], "trap output")
    send_json(ws, {"type": "signal", "signal": "SIGKILL"})
    assert s.until_exit()["signal"] == "SIGKILL"


def test_reconnect_with_offset_replays_exactly(agent):
    x = start(agent, ["sh", "-c", "printf abcdefghij; read x; printf KLMNOP"])
    ws, _ = attach(agent, x["id"])
    s = Stream(ws)
    s.until(lambda s: len(s.out[1]) == 10, "first output")
    ws.close()
    ws, hello = attach(agent, x["id"], offset=4)
    assert hello["offsets"]["stdout"] == [0, 10]
    s = Stream(ws, start=4)
    s.until(lambda s: len(s.out[1]) == 6, "replay")
    assert bytes(s.out[1]) == b"efghij"
    send_stdin(ws, b"\n")
    assert s.until_exit()["exitCode"] == 0
    assert bytes(s.out[1]) == b"efghijKLMNOP" and s.next[1] == 16


def test_two_clients_both_get_output(agent):
    x = start(agent, ["sh", "-c", 'read x; echo "$x"; echo done >&2'])
    a, _ = attach(agent, x["id"])
    b, _ = attach(agent, x["id"])
    send_stdin(b, b"hello\n")
    for ws in (a, b):
        s = Stream(ws)
        assert s.until_exit()["exitCode"] == 0
        assert bytes(s.out[1]) == b"hello\n" and bytes(s.out[2]) == b"done\n"


def test_slow_reader_skips_to_oldest_kept(agent):
    total = 10 * MIB
    x = start(agent, ["head", "-c", str(total), "/dev/zero"])
    wait_until(lambda: not list_execs(agent)[x["id"]]["running"], what="exit")
    ws, hello = attach(agent, x["id"])
    first = total - 8 * MIB
    assert hello["offsets"]["stdout"] == [first, total]
    s = Stream(ws)
    s.step()
    assert s.texts[0] == {"type": "skipped", "channel": 1, "from": 0, "to": first}
    assert s.until_exit()["exitCode"] == 0
    assert len(s.out[1]) == 8 * MIB and s.next[1] == total


def test_list_shows_running_exec(agent):
    x = start(agent, ["sleep", "1000"])
    e = list_execs(agent)[x["id"]]
    assert e["argv"] == ["sleep", "1000"] and e["pid"] == x["pid"] and e["tty"] is False
    assert e["running"] is True and e["exitCode"] is None and e["signal"] is None
    assert e["endTime"] is None and len(e["startTime"]) == 2
    kill(agent, x["id"], "SIGKILL")


def test_cwd_outside_workspace_refused(agent, tmp_path):
    marker = tmp_path / "ran"
    os.symlink(str(tmp_path), os.path.join(agent.workspace, "out"))
    for cwd in ("..", "/etc", "out"):
        st, hd, data = agent.post_json("/exec/v1/start", {
            "argv": ["sh", "-c", "touch " + str(marker)], "cwd": cwd})
        assert st == 403, (cwd, st, data)
        body = json.loads(data)
        assert body["error"] == "EXDEV" and body["message"]
        assert "x-dbx-boot" in hd
    assert not marker.exists()
    assert list_execs(agent) == {}


def test_bad_requests(agent):
    for body in ({}, {"argv": []}, {"argv": ["a", 1]}, {"argv": ["a"], "env": {"A": 1}},
                 {"argv": ["a"], "tty": "yes"}, "not json"):
        st, _, data = agent.post_json("/exec/v1/start", body)
        assert st == 400 and json.loads(data)["error"] == "EINVAL", (body, st, data)
    st, _, data = agent.post_json("/exec/v1/start", {"argv": ["/no/such/program"]})
    assert st == 404 and json.loads(data)["error"] == "ENOENT"


def test_unknown_id_is_enoent(agent):
    st, body = kill(agent, "nope1234")
    assert st == 404 and body["error"] == "ENOENT"
    ws, hello = attach(agent, "nope1234")
    assert hello["type"] == "error" and hello["error"] == "ENOENT"
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            ws.recv()


def test_live_exec_limit(agent):
    ids = [start(agent, ["sleep", "1000"])["id"] for _ in range(64)]
    st, _, data = agent.post_json("/exec/v1/start", {"argv": ["true"]})
    body = json.loads(data)
    assert st == 409 and body["error"] == "EAGAIN" and "64" in body["message"]
    assert len(list_execs(agent)) == 64
    assert agent.get("/health")[0] == 200
    kill(agent, ids[0], "SIGKILL")
    wait_until(lambda: not list_execs(agent)[ids[0]]["running"], what="one slot free")
    s = run(agent, ["echo", "again"])
    assert bytes(s.out[1]) == b"again\n"
    for i in ids[1:]:
        assert kill(agent, i, "SIGKILL")[0] == 200


def _wchar(pid):
    with open("/proc/%d/io" % pid) as f:
        return int(next(l for l in f if l.startswith("wchar:")).split()[1])


def test_attached_reader_that_falls_behind_blocks_the_command_and_loses_nothing(agent):
    total = 40 * MIB
    x = start(agent, ["head", "-c", str(total), "/dev/zero"])
    ws, _ = attach(agent, x["id"])
    # Not reading: the command must block on its output (like under ssh) instead of the agent
    # dropping bytes or buffering them all. Its write count stops growing well short of total.
    seen = []

    def stalled():
        seen.append(_wchar(x["pid"]))
        return len(seen) > 3 and seen[-1] == seen[-4]
    wait_until(stalled, timeout=30, interval=0.1, what="the command blocked on its output")
    assert seen[-1] < 24 * MIB
    assert list_execs(agent)[x["id"]]["running"] is True
    s = Stream(ws)
    assert s.until_exit()["exitCode"] == 0
    assert [t for t in s.texts if t["type"] == "skipped"] == []
    assert len(s.out[1]) == total and s.next[1] == total


def test_stdin_backpressure_while_child_is_not_reading(agent):
    x = start(agent, ["sh", "-c", "sleep 1; exec wc -c"])
    ws, _ = attach(agent, x["id"])
    piece = b"z" * (64 << 10)
    for _ in range(64):  # 4 MiB: more than the pipe and the agent's queue hold
        send_stdin(ws, piece)
    send_json(ws, {"type": "eof"})
    assert list_execs(agent)[x["id"]]["running"] is True  # the agent keeps serving
    s = Stream(ws)
    assert s.until_exit()["exitCode"] == 0
    assert bytes(s.out[1]).strip() == b"4194304"


def test_timeout_kills_the_group(agent):
    s = run(agent, ["sleep", "1000"], timeout=1)
    assert s.exit == {"type": "exit", "exitCode": None, "signal": "SIGKILL"}


def test_shutdown_kills_live_execs(agent_factory):
    agent = agent_factory()
    pids = [start(agent, ["sleep", "1000"])["pid"],
            start(agent, ["sh", "-c", "sleep 1000"], tty=True)["pid"]]
    ws, _ = attach(agent, start(agent, ["sleep", "1000"])["id"])
    assert agent.stop() == 0

    def gone(pid):
        try:
            return open("/proc/%d/stat" % pid).read().split(")")[1].split()[0] == "Z"
        except (FileNotFoundError, ProcessLookupError):
            return True
    wait_until(lambda: all(gone(p) for p in pids), what="execs killed at shutdown")


def test_kill_reaches_group_after_leader_exit(agent):
    x = start(agent, ["sh", "-c", "sleep 1000 & echo started"])
    ws, _ = attach(agent, x["id"])
    s = Stream(ws)
    s.until(lambda s: b"started" in s.out[1], "leader output")
    wait_until(lambda: not list_execs(agent)[x["id"]]["running"], what="leader exit")
    # The background sleep still holds stdout: no exit frame yet, but the group can be signalled.
    assert kill(agent, x["id"], "SIGTERM")[0] == 200
    assert s.until_exit() == {"type": "exit", "exitCode": 0, "signal": None}
