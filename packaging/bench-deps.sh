#!/usr/bin/env bash
# Installs what the benchmark suite (tests/bench/) needs beyond packaging/deps.sh, from Debian 12
# packages only: the peers it compares against (sshfs over a private sshd), the tools its
# workloads run (git, make, a C compiler, tar, rsync, scp) and python3-websocket for the
# event-latency benchmark. Run as root, after packaging/deps.sh.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
pkgs=(
	sshfs fuse3 libfuse3-dev openssh-server openssh-client rsync
	iproute2 procps git make gcc libc6-dev tar curl wrk
	python3 python3-websocket
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "bench-deps: installing ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "bench-deps: ok"
