#!/usr/bin/env bash
# The main job on the embedded default: create a local devbox, mount its workspace here, and use
# it with ordinary tools on both sides — then clean everything up.
#   a local devbox = a workspace directory served by devbox-agent on 127.0.0.1 with a random token
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d build/meson-private ] || meson setup build >/dev/null
ninja -C build >/dev/null

ctl=build/ctl/devboxctl
export DEVBOX_HOME=$(mktemp -d /tmp/devbox-demo-home-XXXXXX)
mnt=$(mktemp -d /tmp/devbox-demo-mnt-XXXXXX)
box=demo
cleanup() {
	$ctl umount "$mnt" >/dev/null 2>&1 || true
	$ctl delete "$box" >/dev/null 2>&1 || true
	rmdir "$mnt" 2>/dev/null || true
	rm -rf "$DEVBOX_HOME"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }

step "create a local devbox (DEVBOX_HOME=$DEVBOX_HOME)"
run $ctl create $box
run $ctl list

step "run commands in it (argv passed exactly, exit status kept)"
run $ctl exec $box -- sh -c 'echo "hello from $(hostname) in $PWD"'
run $ctl exec $box -- printf '[%s]\n' 'two words' '$HOME' '*'
set +e; $ctl exec $box -- sh -c 'exit 42'; echo "exit status: $?"; set -e

step "mount its workspace at $mnt"
run $ctl mount $box "$mnt"
run $ctl mount

step "work on the mount with local tools: write a C project, git, make"
mkdir -p "$mnt/hello/src"
cat >"$mnt/hello/src/main.c" <<'EOF'
#include <stdio.h>
int main(void) { puts("hello from a devbox"); return 0; }
EOF
printf 'hello: src/main.c\n\tcc -O2 -o $@ $<\n' >"$mnt/hello/Makefile"
run git -C "$mnt/hello" -c init.defaultBranch=main init -q
run git -C "$mnt/hello" add -A
run git -C "$mnt/hello" -c user.name=demo -c user.email=demo@example.com commit -qm "first commit"
run git -C "$mnt/hello" status --short --branch
run make -s -C "$mnt/hello"
run "$mnt/hello/hello"

step "the devbox sees the same files (build there too)"
run $ctl exec $box -- sh -c 'cd hello && git log --oneline && make -s -B && ./hello'

step "a change made inside the devbox shows through the mount at once (no TTL)"
run $ctl exec $box -- sh -c 'echo "written inside the devbox at $(date +%T.%N)" > hello/NEWS'
run cat "$mnt/hello/NEWS"
run ls -l "$mnt/hello"

step "copy files in and out (tar streams, modes and symlinks kept, XXH3-checked)"
run $ctl cp "$mnt/hello/src" $box:copy-of-src
run $ctl ls -l $box copy-of-src
run $ctl cat $box copy-of-src/main.c

step "a path outside the workspace is refused"
set +e; $ctl cat $box ../../etc/passwd; echo "exit status: $?"; set -e

step "clean up"
run $ctl umount "$mnt"
run $ctl delete $box
echo "done"
