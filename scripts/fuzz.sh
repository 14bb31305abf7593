#!/usr/bin/env bash
# Builds the libFuzzer target for the sync protocol's decoders (Fuzz/FuzzSyncDecode.swift) and runs
# it for a bounded time over a copy of the regression corpus (Fuzz/corpus).
#
#   scripts/fuzz.sh [seconds]      default 30
#
# Exits non-zero if the fuzzer finds a crash; the crashing input is left in .build-fuzz/artifacts/.
# After fixing the bug, copy it into Fuzz/corpus/ so the unit tests replay it forever.
#
# The two modules it needs (TandemCore, TandemSyncWire) have no dependencies, so they are compiled
# directly with swiftc and -sanitize=fuzzer,address (libFuzzer ships in the Swift toolchain's
# clang runtime); no SwiftPM build, so it does not touch .build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Inside the test suite this runs beside timing-sensitive tests: build and fuzz at low priority.
renice -n 10 -p $$ >/dev/null 2>&1 || true

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [seconds]" >&2
    exit 2
fi
out=.build-fuzz
bin="$out/fuzz-sync-decode"
swiftc="${SWIFTC:-$(command -v swiftc || true)}"
if [[ -z "$swiftc" ]]; then
    echo "fuzz: swiftc not found on PATH (set SWIFTC)" >&2
    exit 1
fi

sources=(Sources/TandemCore/*.swift Sources/TandemSyncWire/*.swift Fuzz/FuzzSyncDecode.swift scripts/fuzz.sh)
# -O: the fuzzer runs many more inputs per second; Swift's bounds and overflow checks stay on.
flags=(-sanitize=fuzzer,address -parse-as-library -swift-version 6 -O -g -use-ld=lld)

rebuild=0
if [[ ! -x "$bin" ]]; then
    rebuild=1
else
    for f in "${sources[@]}"; do
        if [[ "$f" -nt "$bin" ]]; then rebuild=1; break; fi
    done
fi
# Concurrent runs (the test suite and a developer, say) share the binary: build under a lock.
mkdir -p "$out"
exec 9>"$out/build.lock"
flock 9
if (( rebuild )); then
    echo "fuzz: building $bin"
    rm -rf "$out/modules" "$bin"
    mkdir -p "$out/modules"
    "$swiftc" "${flags[@]}" -module-name TandemCore -emit-module \
        -emit-module-path "$out/modules/TandemCore.swiftmodule" -wmo -num-threads 0 \
        -c Sources/TandemCore/*.swift -o "$out/modules/TandemCore.o"
    "$swiftc" "${flags[@]}" -module-name TandemSyncWire -I "$out/modules" -emit-module \
        -emit-module-path "$out/modules/TandemSyncWire.swiftmodule" -wmo -num-threads 0 \
        -c Sources/TandemSyncWire/*.swift -o "$out/modules/TandemSyncWire.o"
    "$swiftc" "${flags[@]}" -module-name FuzzSyncDecode -I "$out/modules" \
        Fuzz/FuzzSyncDecode.swift "$out/modules/TandemCore.o" "$out/modules/TandemSyncWire.o" -o "$bin"
fi
flock -u 9

# The fuzzer adds what it finds to its corpus directory; work on a private copy so the committed
# corpus only grows by hand and concurrent runs do not interfere.
run="$out/run-$$"
rm -rf "$run" && mkdir -p "$run/corpus" "$out/artifacts"
trap 'rm -rf "$run"' EXIT
cp Fuzz/corpus/* "$run/corpus/"

echo "fuzz: running $bin for ${seconds}s"
status=0
"$bin" "$run/corpus" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$out/artifacts/" -print_final_stats=1 || status=$?
if (( status != 0 )); then
    echo "fuzz: FAILED (exit $status); crashing inputs:" >&2
    ls -l "$out/artifacts/" >&2 || true
fi
exit "$status"
