#!/usr/bin/env bash
# The seed's story on one machine: two Tandem nodes (llb1 MASTER, llb2 BACKUP) for the floating IP
# 10.0.10.143 with the seed's fullnat service on :56002 (nginx on ep1 and ep2), the OCI subnet
# imitated by the vcn router and the fake OCI (every request signature verified; a move rewrites
# the vcn's route for the floating IP). It curls the VIP, "reboots" the MASTER, curls again, brings
# the old master back as BACKUP, then runs long-lived flows through another reboot and reports
# whether every flow survived. Tears everything down at the end.
#   DEMO_CLOUD=l2 testbed/demo.sh   runs the on-premises variant (bridge, gratuitous ARP) instead.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLOUD="${DEMO_CLOUD:-oci}"
[[ "$CLOUD" == oci || "$CLOUD" == l2 ]] || { echo "demo: DEMO_CLOUD must be oci or l2" >&2; exit 2; }
export TB="${TB:-demo}" NODES=2
[[ "$CLOUD" == l2 ]] && export TB_NET=l2 || export TB_NET=routed
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
FAKE_OCI="${FAKE_OCI:-$BIN/fake-oci}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"

[[ $EUID -eq 0 ]] || { echo "demo: must run as root" >&2; exit 1; }
for b in "$TANDEM" "$TANDEM_ECHO" "$FAKE_OCI"; do [[ -x "$b" ]] || { echo "demo: $b not built (make build)" >&2; exit 1; }; done

FLOWS_PID=""
cleanup() {
    local rc=$?
    [[ -n "$FLOWS_PID" ]] && kill -KILL "$FLOWS_PID" 2>/dev/null || true
    for n in llb1 llb2; do [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; done
    sleep 0.5
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
curl_vip() {
    local out ep title
    out="$(tb_exec client curl -sS -m 3 -D - "http://$TB_VIP:56002/")" || { echo "curl $1: FAILED"; return 1; }
    ep="$(grep -i '^X-Tandem-Endpoint' <<<"$out" | awk '{print $2}' | tr -d '\r')"
    title="$(grep -o '<title>[^<]*</title>' <<<"$out")"
    echo "curl $1: $title served by $ep"
}

FORCE=1 bash "$REPO/testbed/up.sh"
cluster_key
if [[ "$CLOUD" == oci ]]; then
    # shellcheck source=testbed/oci.sh
    source "$REPO/testbed/oci.sh"
    oci_up
    say "fake OCI listening at $OCI_API (IMDS per node at $OCI_API/imds/<node>); the VIP's private IP is on llb1's VNIC"
fi
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
say "starting tandem in $(tb_ns llb1) and $(tb_ns llb2) (cloud: $CLOUD)"
wait_settled 40
MASTER="$(master_of)"; BACKUP="$(other "$MASTER")"
tb_exec "$MASTER" "$TANDEM" get cluster

say "curl http://$TB_VIP:56002 from the client (nginx's page; endpoints alternate)"
for i in 1 2 3 4; do curl_vip "$i"; done
say "tandem get lb on $MASTER"
tb_exec "$MASTER" "$TANDEM" get lb
say "tandem get ct on $BACKUP (flows learned from $MASTER are marked (peer))"
tb_exec "$BACKUP" "$TANDEM" get ct | head -8

say "rebooting the MASTER ($MASTER): daemon killed, link down"
t0="$(date +%s%3N)"
crash_node "$MASTER"
took() { [[ "$(role "$BACKUP")" == MASTER ]] && [[ "$(tb_vip_owner)" == "$BACKUP" ]]; }
tb_wait_for 20 "$BACKUP to take the floating IP" took
echo "$BACKUP is MASTER and owns $TB_VIP $(( $(date +%s%3N) - t0 )) ms after the kill (as seen from this script)"
tb_exec "$BACKUP" "$TANDEM" get cluster
say "curl again"
for i in 1 2; do curl_vip "$i"; done

say "bringing $MASTER back: it rejoins as BACKUP and resyncs"
tb_exec "$MASTER" ip link set eth0 up
tb_exec "$MASTER" ip route replace default via "$TB_GW_HOSTS" dev eth0
start_node "$MASTER"
back() { [[ "$(role "$MASTER")" == BACKUP ]] && in_sync "$MASTER"; }
tb_wait_for 30 "$MASTER back in sync" back
tb_exec "$BACKUP" "$TANDEM" get cluster

say "long-lived flows: 50 TCP + 10 UDP through $TB_VIP, each echoing continuously; then reboot the MASTER ($BACKUP)"
ready="$TB_STATE/demo-flows.ready"
ip netns exec "$(tb_ns client)" "$TANDEM_ECHO" flows --tcp-target "$TB_VIP:56004" --tcp 50 \
    --udp-target "$TB_VIP:56003" --udp 10 --interval-ms 50 --duration 600 --ready-file "$ready" \
    >"$TB_STATE/demo-flows.json" 2>"$TB_STATE/demo-flows.log" &
FLOWS_PID=$!
tb_wait_for 30 "the flows" test -f "$ready"
sleep 1
crash_node "$BACKUP"
became() { [[ "$(role "$MASTER")" == MASTER ]]; }
tb_wait_for 20 "$MASTER to take the floating IP" became
sleep 3
kill -TERM "$FLOWS_PID"
rc=0; wait "$FLOWS_PID" || rc=$?
FLOWS_PID=""
cat "$TB_STATE/demo-flows.log" >&2
result="$(tail -n 1 "$TB_STATE/demo-flows.json")"
say "summary"
python3 -c 'import json,sys; f=json.loads(sys.argv[1]); print("flows survived: TCP %d/%d, UDP %d/%d; longest stall %.0f ms" % (f["tcp"]["survived"], f["tcp"]["total"], f["udp"]["survived"], f["udp"]["total"], f["longestStallMs"]))' "$result"
[[ $rc == 0 ]] || { echo "demo: FAILED (a flow did not survive)" >&2; exit 1; }
echo "demo: OK (tearing the test bed down)"
