#!/bin/sh
# Installs the official TypeScript SDK (@labring/devbox-sdk, pinned in tests/sdk/package-lock.json)
# into tests/sdk/node_modules for tests/integration/test_sdk.py. Needs node + npm and the npm
# registry. The SDK declares engines node>=22; it runs on node 20 (npm prints an EBADENGINE
# warning, which is expected).
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
cd "$here/../tests/sdk"
npm ci --no-audit --no-fund
