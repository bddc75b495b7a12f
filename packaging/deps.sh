#!/usr/bin/env bash
# Installs everything devbox needs to build and test, from Debian 12 packages only
# (plus the official TypeScript SDK from npm for the compatibility test). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
pkgs=(
	build-essential pkg-config meson ninja-build
	libwebsockets-dev libcjson-dev libarchive-dev zlib1g-dev
	libcurl4-openssl-dev libyaml-dev libxxhash-dev libfuse3-dev fuse3
	python3 python3-pytest python3-websocket python3-requests python3-xxhash
	curl wrk iproute2 procps psmisc git tar gzip ca-certificates rsync
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v node >/dev/null 2>&1; then
	missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The official SDK for the compatibility test (tests/sdk); failure here only skips that test.
if [ -x packaging/sdk-deps.sh ]; then
	packaging/sdk-deps.sh || echo "deps: warning: could not install the TypeScript SDK; its test will be skipped" >&2
fi
echo "deps: ok"
