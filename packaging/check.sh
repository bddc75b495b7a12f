#!/usr/bin/env bash
# Builds devbox and runs the whole test suite.
#   build/      the normal build (warnings are errors), C unit tests
#   build-san/  AddressSanitizer + UndefinedBehaviorSanitizer build: the full suite
# Ends with one line "N passed, N failed" (pytest cases and TAP subtests counted one by one).
set -uo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/bin:$PATH" # Debian's python3 + pytest-3, not a pyenv shim
jobs=$(nproc 2>/dev/null || echo 2)

setup() { # dir, options...
	local dir=$1
	shift
	if [ -d "$dir/meson-private" ]; then
		meson configure "$dir" "$@" >/dev/null
	else
		meson setup "$dir" "$@" >/dev/null
	fi
}

fail=0
setup build -Dwerror=true || fail=1
ninja -C build >/dev/null || { ninja -C build; fail=1; }
setup build-san -Dwerror=true -Dbuildtype=debug -Db_sanitize=address,undefined \
	-Db_lundef=false || fail=1
ninja -C build-san >/dev/null || { ninja -C build-san; fail=1; }

if [ "$fail" -ne 0 ]; then
	echo "build failed"
	echo "0 passed, 1 failed"
	exit 1
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
meson test -C build --suite unit --num-processes "$jobs" --print-errorlogs >/dev/null
meson test -C build-san --num-processes "$jobs" --print-errorlogs
/usr/bin/python3 tests/summarize.py build:unit build-san
