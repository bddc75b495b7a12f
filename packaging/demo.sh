#!/usr/bin/env bash
# The main job, as far as it is built today: a local devbox (a workspace directory served by
# devbox-agent on 127.0.0.1 with a random token) used over the agent's HTTP API.
# devbox-fs (the mount) and devboxctl arrive with their issues; this script grows with them.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x build/agent/devbox-agent ] || { meson setup build >/dev/null 2>&1 || true; }
ninja -C build >/dev/null

ws=$(mktemp -d /tmp/devbox-demo-XXXXXX)
token=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
out=$(mktemp)
build/agent/devbox-agent --addr=127.0.0.1:0 --workspace-path="$ws" --token="$token" >"$out" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent 2>/dev/null; rm -rf "$ws" "$out"' EXIT
for _ in $(seq 100); do grep -q '^listening on' "$out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out")
api() { curl -sS -H "Authorization: Bearer $token" "$@"; echo; }

echo "== local devbox: workspace $ws, agent on $addr"
echo "-- health";              curl -sS "http://$addr/health"; echo
echo "-- write hello.c";       api -H 'Content-Type: application/json' \
	-d '{"path":"hello.c","content":"#include <stdio.h>\nint main(void){puts(\"hello from the devbox\");return 0;}\n"}' \
	"http://$addr/api/v1/files/write"
echo "-- list";                api "http://$addr/api/v1/files/list?path=."
echo "-- build and run it";    api -H 'Content-Type: application/json' \
	-d '{"command":"sh","args":["-c","cc -o hello hello.c && ./hello"]}' \
	"http://$addr/api/v1/process/exec-sync"
echo "-- read it back";        api "http://$addr/api/v1/files/read?path=hello.c"
echo "-- a path outside the workspace is refused"
api "http://$addr/api/v1/files/read?path=../../etc/passwd"
kill -TERM $agent
wait $agent && echo "== agent stopped cleanly (exit 0)"
trap 'rm -rf "$ws" "$out"' EXIT
