#!/usr/bin/env bash
# False-positive resistance: two Tandem nodes on the L2 test bed while every core is saturated by
# ordinary work (busy loops at nice 0, twice as many as cores) for DURATION seconds (default 120).
# Passes if no member was ever declared dead and no role changed: a node starved of CPU must not
# declare a live peer dead, and no MASTER may be replaced. Prints one JSON line.
#   testbed/saturate.sh [--duration 120]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION=120
while (($#)); do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        *) echo "saturate: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] || { echo "saturate: --duration must be whole seconds" >&2; exit 2; }
export TB="${TB:-sat}" NODES=2 TB_NET=l2
CLOUD=l2
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"
[[ $EUID -eq 0 ]] || { echo "saturate: must run as root" >&2; exit 1; }

HOGS=()
cleanup() {
    local rc=$?
    ((${#HOGS[@]})) && kill -KILL "${HOGS[@]}" 2>/dev/null || true
    for n in llb1 llb2; do [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; done
    sleep 0.5
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log() { printf '[saturate %s] %s\n' "$(date +%T)" "$*" >&2; }

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
wait_settled 30
snapshot() { # deaths and transitions, summed over both nodes
    local n total=0 v
    for n in llb1 llb2; do
        v="$(api "$n" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["counters"].get("deathsDeclared",0) + sum(len(i["transitions"]) for i in s["instances"]))')"
        total=$((total + v))
    done
    echo "$total"
}
suspicions() {
    local n total=0 v
    for n in llb1 llb2; do
        v="$(api "$n" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"].get("suspicionsRaised",0))')"
        total=$((total + v))
    done
    echo "$total"
}
before="$(snapshot)"; sus_before="$(suspicions)"; master="$(master_of)"
cores="$(nproc)"
log "MASTER $master; saturating $cores core(s) with $((cores * 2)) busy loops for ${DURATION}s"
for ((i = 0; i < cores * 2; i++)); do
    bash -c 'while :; do :; done' &
    HOGS+=("$!")
done
sleep "$DURATION"
kill -KILL "${HOGS[@]}" 2>/dev/null || true
HOGS=()
sleep 1
after="$(snapshot)"; sus_after="$(suspicions)"; master_after="$(master_of)"
ok=true
[[ "$after" == "$before" && "$master_after" == "$master" ]] || ok=false
printf '{"durationS":%d,"cores":%d,"hogs":%d,"deathsAndTransitions":%d,"suspicionsRaised":%d,"masterBefore":"%s","masterAfter":"%s","ok":%s}\n' \
    "$DURATION" "$cores" "$((cores * 2))" "$((after - before))" "$((sus_after - sus_before))" "$master" "$master_after" "$ok"
log "deaths/transitions during saturation: $((after - before)); suspicions raised (and refuted): $((sus_after - sus_before)); MASTER $master -> $master_after"
[[ "$ok" == true ]]
