#!/usr/bin/python3
"""Adds up `meson test` results case by case and prints "N passed, N failed[, N skipped]".

Arguments: build directories, each optionally with ":SUITE" to count only that suite. TAP tests
count their subtests, pytest runs count the cases of their --junitxml report; anything else
(and any test that crashed or timed out without a report) counts as one. Exit status 1 when
anything failed or nothing ran.
"""
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def junit_counts(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    t = f = s = 0
    for su in suites:
        t += int(su.get("tests", 0))
        f += int(su.get("failures", 0)) + int(su.get("errors", 0))
        s += int(su.get("skipped", 0))
    return t - f - s, f, s


def main(args):
    passed = failed = skipped = 0
    for arg in args:
        build, _, suite = arg.partition(":")
        log = os.path.join(build, "meson-logs", "testlog.json")
        if not os.path.exists(log):
            print("summary: %s: no test log" % build)
            failed += 1
            continue
        with open(log) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        for e in entries:
            suites = e.get("suite") or [e.get("name", "").split(" / ")[0]]
            if suite and not any(s.split(":")[-1] == suite for s in suites):
                continue
            res = e.get("result")
            name = "%s/%s" % (os.path.basename(build), e.get("name"))
            cmd = e.get("command", [])
            junit = next((c.split("=", 1)[1] for c in cmd if c.startswith("--junitxml=")), None)
            p = f_ = s = 0
            if junit and os.path.exists(junit) and res not in ("TIMEOUT",):
                p, f_, s = junit_counts(junit)
                if res not in ("OK", "SKIP", "EXPECTEDFAIL") and f_ == 0:
                    f_ = 1  # pytest exited badly without a failed case: collection/crash
            elif e.get("protocol") == "tap" or re.search(r"^1\.\.\d+", e.get("stdout", ""), re.M):
                out = e.get("stdout", "")
                p = len(re.findall(r"^ok \d+", out, re.M))
                f_ = len(re.findall(r"^not ok \d+", out, re.M))
                if res not in ("OK", "EXPECTEDFAIL") and f_ == 0:
                    f_ = 1
            else:
                if res == "OK":
                    p = 1
                elif res == "SKIP":
                    s = 1
                else:
                    f_ = 1
            mark = "ok  " if res in ("OK", "SKIP", "EXPECTEDFAIL") else "FAIL"
            print("%s %-40s %4d passed %3d failed %3d skipped" % (mark, name, p, f_, s))
            passed, failed, skipped = passed + p, failed + f_, skipped + s
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["build"]))
