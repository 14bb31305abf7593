#!/usr/bin/env bash
# External control (kube-loxilb's cistate) on a two-node cluster (L2 test bed):
#   1. bad cistate requests get 400 and change nothing;
#   2. POST {"state":"MASTER"} to the BACKUP: it claims a new term, the old MASTER steps down, the
#      VIP follows, and the forced MASTER stays (sticky);
#   3. POST {"state":"BACKUP"} to that MASTER: it steps down and stays out, the other node takes
#      over; GET cistate/all reports both;
#   4. POST {"state":"MASTER"} to it again: it returns as MASTER.
# Every step checks exactly one MASTER and the VIP on it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TB="${TB:-cis}" NODES=2 TB_NET=l2
CLOUD=l2
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"
[[ $EUID -eq 0 ]] || { echo "cistate: must run as root" >&2; exit 1; }
log() { printf '[cistate %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }

cleanup() {
    local rc=$?
    for n in llb1 llb2; do [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; done
    sleep 0.5
    if ((rc != 0)); then for n in llb1 llb2; do tail -n 15 "$TB_STATE/$n.log" >&2 2>/dev/null || true; done; fi
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# post NODE BODY -> prints the HTTP status
post() { tb_exec "$1" curl -sS -m 5 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "$2" http://127.0.0.1:11111/netlox/v1/config/cistate; }
expect_master() { # NODE WHAT
    is() { [[ "$(master_of)" == "$1" && "$(role "$(other "$1")")" == BACKUP && "$(tb_vip_owner)" == "$1" ]]; }
    tb_wait_for 10 "$1 MASTER (only) with the VIP after $2" is "$1"
    log "$2: $1 is MASTER, $(other "$1") BACKUP, VIP on $1"
}

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
wait_settled 30
m="$(master_of)"; b="$(other "$m")"
log "settled: MASTER $m"

before="$(api "$m" | python3 -c 'import json,sys; i=json.load(sys.stdin)["instances"][0]; print(i["role"], i["term"])')"
for body in '{"instance":"llb-inst0","state":"LEADER"}' '{"instance":"nope","state":"MASTER"}' \
            '{"state":"MASTER"}' '{"instance":"llb-inst0","state":"MASTER","vip":"x"}' 'not json'; do
    code="$(post "$m" "$body")"
    [[ "$code" == 400 ]] || { log "FAILED: $body answered $code, expected 400"; exit 1; }
done
after="$(api "$m" | python3 -c 'import json,sys; i=json.load(sys.stdin)["instances"][0]; print(i["role"], i["term"])')"
[[ "$before" == "$after" ]] || { log "FAILED: bad requests changed state ($before -> $after)"; exit 1; }
log "bad requests: 400 each, nothing changed"

code="$(post "$b" '{"instance":"llb-inst0","state":"MASTER","vip":"0.0.0.0"}')"
[[ "$code" == 200 ]] || { log "FAILED: cistate MASTER answered $code"; exit 1; }
expect_master "$b" "cistate MASTER on $b"
sleep 2
expect_master "$b" "2 s later (sticky)"

code="$(post "$b" '{"instance":"llb-inst0","state":"BACKUP","vip":"0.0.0.0"}')"
[[ "$code" == 200 ]] || { log "FAILED: cistate BACKUP answered $code"; exit 1; }
expect_master "$m" "cistate BACKUP on $b"
all="$(tb_exec "$b" curl -sS -m 5 http://127.0.0.1:11111/netlox/v1/config/cistate/all)"
python3 -c 'import json,sys; a=json.loads(sys.argv[1])["Attr"]; sys.exit(0 if a and a[0]["instance"]=="llb-inst0" and a[0]["state"]=="BACKUP" else 1)' "$all" ||
    { log "FAILED: cistate/all on $b said $all"; exit 1; }
log "cistate/all on $b: $all"

code="$(post "$b" '{"instance":"llb-inst0","state":"MASTER","vip":"0.0.0.0"}')"
[[ "$code" == 200 ]] || { log "FAILED: cistate MASTER answered $code"; exit 1; }
expect_master "$b" "cistate MASTER on $b again"

# The takeovers are timed in the Prometheus export too.
metrics="$(tb_exec "$b" curl -sS -m 5 http://127.0.0.1:11111/netlox/v1/metrics)"
grep -q '^tandem_takeover_duration_seconds_count{instance="llb-inst0",provider="l2"} [1-9]' <<<"$metrics" ||
    { log "FAILED: no takeover timings in /netlox/v1/metrics"; exit 1; }
grep -q '^tandem_ha_role{instance="llb-inst0"} 1.0' <<<"$metrics" || { log "FAILED: tandem_ha_role is not MASTER"; exit 1; }
log "metrics: takeover durations and role exported"
log "PASS"
