"""devboxctl exec against a real agent: argv passed exactly, stdin streaming, exit statuses
(remote status, 128+N for a remote signal, 127, 255 for transport/auth failures), terminals
(pty in the test: raw mode, resize, Ctrl-C) and signal forwarding.

BOX is the agent URL with the token in $DEVBOX_TOKEN.  $DEVBOX_CTL overrides the binary."""
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest

from conftest import BUILD, SANITIZER_RE, wait_until

CTL = os.environ.get("DEVBOX_CTL") or os.path.join(BUILD, "ctl", "devboxctl")


def ctl_env(agent, token=None):
    env = dict(os.environ)
    env["DEVBOX_TOKEN"] = agent.token if token is None else token
    return env


def check_clean(stderr):
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert not SANITIZER_RE.search(text), "sanitizer report from devboxctl:\n" + text[-8000:]


def run_ctl(agent, args, input=None, token=None, timeout=120, base=None):
    p = subprocess.run([CTL] + list(args), input=input,
                       stdin=None if input is not None else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=ctl_env(agent, token), timeout=timeout)
    check_clean(p.stderr)
    return p


def exec_ctl(agent, cmd, opts=(), **kw):
    return run_ctl(agent, ["exec"] + list(opts) + [agent.base, "--"] + list(cmd), **kw)


def read_until(fd, pred, buf, timeout=20, what="output"):
    """Reads fd (non-blocking use via select) into buf until pred(buf) holds."""
    deadline = time.monotonic() + timeout
    while not pred(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for %s; got %r" % (what, bytes(buf[-2000:])))
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            raise AssertionError("EOF while waiting for %s; got %r" % (what, bytes(buf[-2000:])))
        buf += chunk
    return buf


# ---- argv, output, stdin -----------------------------------------------------------------

ODD_ARGS = ["plain", "two words", "  lead and trail  ", "'single'", '"double"', "$HOME", "${PATH}",
            "*", "?", "[a]", "", "line\nbreak", "tab\there", "back\\slash", "semi;colon",
            "`uname`", "$(id)", "-n", "--", "ünïcödé"]


def test_argv_is_passed_exactly(agent):
    p = exec_ctl(agent, ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]
                 + ODD_ARGS)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == ODD_ARGS
    assert p.stderr == b""


def test_argv_with_printf_and_no_double_dash(agent):
    args = ["a b", "", "*", "$HOME", "x\ny"]
    p = run_ctl(agent, ["exec", agent.base, "printf", "<%s>\\n"] + args)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"".join(b"<" + a.encode() + b">\n" for a in args)


def test_stdout_and_stderr_are_separate_and_binary_exact(agent):
    blob = bytes(range(256)) * 4096 + b"\x00\r\n\xff"  # 1 MiB and a bit, every byte value
    with open(os.path.join(agent.workspace, "blob.bin"), "wb") as f:
        f.write(blob)
    p = exec_ctl(agent, ["sh", "-c", "cat blob.bin; printf 'to stderr\\n' >&2"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == blob
    assert p.stderr == b"to stderr\n"


def test_exit_comes_after_all_output(agent):
    # 3 MB of numbered lines, then the exit status: nothing may be missing or late.
    p = exec_ctl(agent, ["sh", "-c", "seq 1 400000; exit 3"])
    assert p.returncode == 3, p.stderr
    assert p.stdout == b"".join(b"%d\n" % i for i in range(1, 400001))


def test_stdin_50mib_with_i(agent):
    data = os.urandom(50 << 20)
    p = exec_ctl(agent, ["sha256sum"], opts=["-i"], input=data, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_round_trip_and_eof(agent):
    data = os.urandom(4 << 20) + b"tail without newline"
    p = exec_ctl(agent, ["cat"], opts=["-i"], input=data)
    assert p.returncode == 0, p.stderr
    assert p.stdout == data


def test_without_i_stdin_is_not_read(agent):
    # Our stdin is a pipe that stays open and holds data: without -i the remote cat must see
    # EOF at once and devboxctl must leave the data unread.
    r, w = os.pipe()
    os.write(w, b"must stay here\n")
    try:
        p = subprocess.run([CTL, "exec", agent.base, "--", "cat"], stdin=r,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=ctl_env(agent), timeout=30)
        check_clean(p.stderr)
        assert p.returncode == 0, p.stderr
        assert p.stdout == b""
        os.set_blocking(r, False)
        assert os.read(r, 100) == b"must stay here\n"
    finally:
        os.close(r)
        os.close(w)


def test_workdir_and_env(agent):
    os.mkdir(os.path.join(agent.workspace, "sub dir"))
    p = exec_ctl(agent, ["sh", "-c", 'pwd; printf "%s|%s|%s\\n" "$FOO" "$EQ" "$EMPTY"'],
                 opts=["-w", "sub dir", "-e", "FOO=bar baz", "-e", "EQ=a=b", "-e", "EMPTY="])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert os.path.realpath(lines[0]) == os.path.join(agent.workspace, "sub dir")
    assert lines[1] == "bar baz|a=b|"


def test_env_k_copies_our_value(agent):
    env = ctl_env(agent)
    env["DBX_TEST_COPY"] = "copied value"
    env.pop("DBX_TEST_UNSET", None)
    p = subprocess.run([CTL, "exec", "-e", "DBX_TEST_COPY", "-e", "DBX_TEST_UNSET", agent.base,
                        "--", "sh", "-c", 'echo "$DBX_TEST_COPY|${DBX_TEST_UNSET-unset}"'],
                       stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60)
    check_clean(p.stderr)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"copied value|unset\n"


def test_closed_stdout_ends_remote_command(agent):
    # `devboxctl exec BOX -- yes | head -2`: when our reader goes, so does the remote writer.
    p = subprocess.Popen([CTL, "exec", agent.base, "--", "yes"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctl_env(agent))
    assert p.stdout.read(4) == b"y\ny\n"
    p.stdout.close()
    assert p.wait(timeout=30) == 128 + signal.SIGPIPE
    check_clean(p.stderr.read())

    def none_running():
        st, _, body = agent.get("/exec/v1/list")
        return not any(e["running"] for e in json.loads(body)["execs"])

    wait_until(none_running, timeout=20, what="the remote yes to end")


# ---- exit statuses -------------------------------------------------------------------------

@pytest.mark.parametrize("script,status", [
    ("exit 0", 0),
    ("exit 1", 1),
    ("exit 42", 42),
    ("kill -INT $$", 130),
    ("kill -TERM $$", 143),
    ("kill -KILL $$", 137),
])
def test_exit_status(agent, script, status):
    p = exec_ctl(agent, ["sh", "-c", script])
    assert p.returncode == status, p.stderr
    assert p.stderr == b""


def test_missing_program_is_127(agent):
    p = exec_ctl(agent, ["no-such-program-xyz"])
    assert p.returncode == 127
    assert b"no-such-program-xyz" in p.stderr


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_agent_is_255(agent):
    p = run_ctl(agent, ["exec", "http://127.0.0.1:%d" % closed_port(), "--", "true"])
    assert p.returncode == 255
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devboxctl:"), p.stderr


def test_wrong_token_is_255(agent):
    p = exec_ctl(agent, ["true"], token="wrong-token")
    assert p.returncode == 255
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devboxctl:"), p.stderr


def test_bad_command_line_is_2(agent):
    assert run_ctl(agent, ["exec"]).returncode == 2
    assert run_ctl(agent, ["exec", agent.base]).returncode == 2
    assert run_ctl(agent, ["exec", "--bogus", agent.base, "true"]).returncode == 2


# ---- signals (no terminal) -----------------------------------------------------------------

def start_ctl(agent, cmd, opts=()):
    return subprocess.Popen([CTL, "exec"] + list(opts) + [agent.base, "--"] + list(cmd),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ctl_env(agent))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                                 signal.SIGQUIT])
def test_signal_is_forwarded(agent, sig):
    name = signal.Signals(sig).name[3:]
    script = ("trap 'echo trapped %s; exit 7' %s; echo ready; "
              "while :; do sleep 0.05; done" % (name, name))
    p = start_ctl(agent, ["sh", "-c", script])
    try:
        buf = read_until(p.stdout.fileno(), lambda b: b"ready\n" in b, bytearray(),
                         what="ready")
        p.send_signal(sig)
        out = buf + p.stdout.read()
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    check_clean(err)
    assert out == b"ready\ntrapped %s\n" % name.encode(), (out, err)
    assert rc == 7, err


def test_sigint_kills_remote_and_exits_130(agent):
    p = start_ctl(agent, ["sh", "-c", "echo ready; exec sleep 100"])
    try:
        read_until(p.stdout.fileno(), lambda b: b"ready\n" in b, bytearray(), what="ready")
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check_clean(p.stderr.read())
    assert rc == 130


def test_signal_gets_through_while_stdin_is_blocked(agent):
    # The remote command never reads its stdin: our input piles up until devboxctl has to
    # wait, and SIGINT must still reach the command.
    p = subprocess.Popen([CTL, "exec", "-i", agent.base, "--", "sh", "-c",
                          "echo ready; exec sleep 100"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=ctl_env(agent))
    written = [0]

    def feed():
        chunk = b"x" * 65536
        try:
            while written[0] < (64 << 20):
                p.stdin.write(chunk)
                p.stdin.flush()
                written[0] += len(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        read_until(p.stdout.fileno(), lambda b: b"ready\n" in b, bytearray(), what="ready")
        wait_until(lambda: written[0] >= (2 << 20), timeout=20, what="devboxctl taking input")
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check_clean(p.stderr.read())
    assert rc == 130
    assert written[0] < (64 << 20)


# ---- terminals -----------------------------------------------------------------------------

class PtyCtl:
    """devboxctl running on a fresh pty as its controlling terminal (like an ssh session)."""

    def __init__(self, args, env, rows=24, cols=80):
        self.master, self.slave = os.openpty()
        self.set_size(rows, cols)
        self.before = termios.tcgetattr(self.slave)

        def become_session_leader():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([CTL] + args, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=env,
                                     preexec_fn=become_session_leader)
        self.buf = bytearray()

    def set_size(self, rows, cols):
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, pred, what, timeout=20):
        if isinstance(pred, bytes):
            needle = pred
            pred = lambda b: needle in b  # noqa: E731
        return read_until(self.master, pred, self.buf, timeout=timeout, what=what)

    def write(self, data):
        os.write(self.master, data)

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.drain()

    def drain(self):
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.buf += chunk

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.drain()
        check_clean(bytes(self.buf))
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_ctl(agent):
    made = []

    def make(cmd, opts=("-t",), **kw):
        p = PtyCtl(["exec"] + list(opts) + [agent.base, "--"] + list(cmd), ctl_env(agent), **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_tty_gets_a_pts_and_terminal_is_restored(pty_ctl):
    p = pty_ctl(["sh", "-c", "tty; echo ready; read line; echo got:$line"])
    p.expect(b"ready", "ready")
    # While it runs, the local terminal is raw (no echo, no line editing, no signals) ...
    during = termios.tcgetattr(p.slave)
    assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
    p.write(b"hello\r")
    p.expect(b"got:hello", "the line read remotely")
    assert p.wait() == 0
    out = bytes(p.buf).decode(errors="replace")
    assert "/dev/pts/" in out.splitlines()[0], out
    # ... and afterwards exactly as before.
    assert termios.tcgetattr(p.slave) == p.before


def test_tty_initial_size_and_resize(pty_ctl):
    p = pty_ctl(["sh", "-c", "while :; do stty size; sleep 0.05; done"], rows=33, cols=97)
    p.expect(b"33 97", "the initial window size")
    p.set_size(41, 123)  # the kernel sends SIGWINCH to devboxctl, the foreground process
    p.expect(b"41 123", "the new window size")
    p.write(b"\x03")
    assert p.wait() == 130
    assert termios.tcgetattr(p.slave) == p.before


def test_tty_ctrl_c_interrupts_remote_sleep(pty_ctl):
    p = pty_ctl(["sh", "-c", "echo ready; exec sleep 100"])
    p.expect(b"ready", "ready")
    p.write(b"\x03")
    assert p.wait() == 130
    assert termios.tcgetattr(p.slave) == p.before


def test_tty_exit_status_and_restore_on_transport_loss(agent, pty_ctl):
    p = pty_ctl(["sh", "-c", "echo ready; exec sleep 100"])
    p.expect(b"ready", "ready")
    assert agent.stop() == 0  # the agent goes away under the session
    assert p.wait() == 255
    assert termios.tcgetattr(p.slave) == p.before
    assert re.search(rb"devboxctl: exec \S+: ", bytes(p.buf)), p.buf


def test_signal_forwarded_with_tty(pty_ctl):
    p = pty_ctl(["sh", "-c", "trap 'echo trapped; exit 9' USR2; echo ready; "
                             "while :; do sleep 0.05; done"])
    p.expect(b"ready", "ready")
    p.proc.send_signal(signal.SIGUSR2)
    p.expect(b"trapped", "the trap's output")
    assert p.wait() == 9
    assert termios.tcgetattr(p.slave) == p.before
