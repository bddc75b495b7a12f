"""The documentation stays true to the code.

- every command `devboxctl --help` lists has a `--help` that exits 0 and prints "Usage:", and
  is described in ctl/devboxctl.1 with every long option its --help names;
- the man page has no command that devboxctl does not know;
- the libdevbox README example (libdevbox/examples/hello.c) runs against a real agent.
"""
import os
import re
import subprocess

import pytest

from conftest import BUILD, ROOT, SANITIZER_RE

CTL = os.path.join(BUILD, "ctl", "devboxctl")
EXAMPLE = os.path.join(BUILD, "libdevbox", "dbx-example-hello")
MAN = os.path.join(ROOT, "ctl", "devboxctl.1")
# Sections of the man page whose .TP/.TQ labels are commands.
COMMAND_SECTIONS = ("LIFECYCLE COMMANDS", "COMMANDS INSIDE A DEVBOX", "MOUNTS")


def run(args, env=None, timeout=60):
    p = subprocess.run(args, capture_output=True, env=env, timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(err), err
    return p.returncode, out, err


def listed_commands():
    rc, out, err = run([CTL, "--help"])
    assert rc == 0, err
    block = out.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    names = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert len(names) >= 20, out
    return names


def man_text():
    with open(MAN, encoding="utf-8") as f:
        return f.read()


def man_commands(text):
    """First word of each .TP/.TQ label in the command sections, roff escapes removed."""
    cmds = set()
    section = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            section = line[4:].strip().strip('"')
            continue
        if section not in COMMAND_SECTIONS or line not in (".TP", ".TQ"):
            continue
        label = lines[i + 1]
        m = re.match(r"\.(?:B|BI|BR)\s+(\S+)", label)
        if m and re.fullmatch(r"[a-z]+", m.group(1)):
            cmds.add(m.group(1))
    return cmds


def man_plain(text):
    """The page's words with roff font escapes and \\- removed, for option lookups."""
    return re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\&", "")


def test_every_command_help_and_man_page():
    names = listed_commands()
    text = man_text()
    plain = man_plain(text)
    documented = man_commands(text)
    problems = []
    for name in names:
        rc, out, err = run([CTL, name, "--help"])
        if rc != 0 or "Usage:" not in out:
            problems.append("%s --help: exit %d, stdout %r, stderr %r" % (name, rc, out, err))
        if name not in documented:
            problems.append("%s: not described in ctl/devboxctl.1" % name)
        for opt in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", out))):
            if opt not in plain:
                problems.append("%s: option %s of --help missing from ctl/devboxctl.1"
                                % (name, opt))
    extra = documented - set(names)
    if extra:
        problems.append("ctl/devboxctl.1 describes unknown commands: %s" % sorted(extra))
    assert not problems, "\n".join(problems)


def test_global_options_in_man_page():
    rc, out, err = run([CTL, "--help"])
    assert rc == 0, err
    plain = man_plain(man_text())
    opts = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", out.split("\nCommands:\n", 1)[0]))
    assert {"--provider", "--home", "--timeout", "--output"} <= opts, out
    missing = sorted(o for o in opts if o not in plain)
    assert not missing, missing


def test_unknown_command_is_a_usage_error():
    rc, out, err = run([CTL, "no-such-command"])
    assert rc == 2
    assert "unknown command 'no-such-command'" in err


def test_libdevbox_readme_example(agent):
    env = dict(os.environ, DEVBOX_TOKEN=agent.token)
    rc, out, err = run([EXAMPLE, agent.base], env=env)
    assert rc == 0, (out, err)
    assert "hello from libdevbox\n" in out
    assert "cat exited with status 0 (signal 0)" in out
    with open(os.path.join(agent.workspace, "hello.txt")) as f:
        assert f.read() == "hello from libdevbox\n"

    env["DEVBOX_TOKEN"] = "wrong"
    rc, out, err = run([EXAMPLE, agent.base], env=env)
    assert rc == 1
    assert "authentication failed" in err
