#!/usr/bin/env bash
# The seed's story on one machine: two Tandem nodes (llb1 MASTER, llb2 BACKUP) for the floating IP
# 10.0.10.143 with the seed's fullnat service on :56002 (nginx on ep1 and ep2), the OCI subnet
# imitated by the vcn router and the fake OCI (every request signature verified; a move rewrites
# the vcn's route for the floating IP). It curls the VIP, "reboots" the MASTER, curls again, brings
# the old master back as BACKUP, then runs long-lived flows through another reboot and reports
# whether every flow survived. Before that reboot it restarts the MASTER's daemon alone, as
# `systemctl restart tandem` would (the nodes run with persistDatapath): the datapath keeps
# forwarding, the BACKUP holds its fire, no role changes. Tears everything down at the end.
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
PERSIST=1
PIN_DIR="$(tb_bpffs)"
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

# flows NAME: 50 TCP + 10 UDP long-lived flows through the VIP, each echoing every 50 ms.
flows() {
    local ready="$TB_STATE/demo-$1.ready"
    ip netns exec "$(tb_ns client)" "$TANDEM_ECHO" flows --tcp-target "$TB_VIP:56004" --tcp 50 \
        --udp-target "$TB_VIP:56003" --udp 10 --interval-ms 50 --duration 600 --ready-file "$ready" \
        >"$TB_STATE/demo-$1.json" 2>"$TB_STATE/demo-$1.log" &
    FLOWS_PID=$!
    tb_wait_for 30 "the flows" test -f "$ready"
    sleep 1
}
flows_report() {
    python3 -c 'import json,sys; f=json.loads(sys.argv[1]); print("flows survived: TCP %d/%d, UDP %d/%d; longest stall %.0f ms" % (f["tcp"]["survived"], f["tcp"]["total"], f["udp"]["survived"], f["udp"]["total"], f["longestStallMs"]))' "$(tail -n 1 "$TB_STATE/demo-$1.json")"
}

say "long-lived flows: 50 TCP + 10 UDP through $TB_VIP; restart the MASTER's daemon ($BACKUP) as systemctl restart would"
flows restart
term_before="$(term "$BACKUP")"
pid="$(cat "$TB_STATE/$BACKUP.pid")"
t0="$(date +%s%3N)"
kill -TERM "$pid"
while tb_alive "$pid"; do sleep 0.01; done
start_node "$BACKUP"
tb_wait_for 30 "$BACKUP's daemon to answer" bash -c "ip netns exec $(tb_ns "$BACKUP") $TANDEM get cluster >/dev/null 2>&1"
echo "$BACKUP's daemon was gone for $(( $(date +%s%3N) - t0 )) ms; its datapath forwarded meanwhile"
sleep 3
kill -TERM "$FLOWS_PID"
rc=0; wait "$FLOWS_PID" || rc=$?
FLOWS_PID=""
term_after="$(term "$BACKUP")"
echo "$BACKUP is $(role "$BACKUP") (term $term_before before, $term_after after), $MASTER is $(role "$MASTER"): $( [[ "$term_before" == "$term_after" && "$(role "$BACKUP")" == MASTER ]] && echo "no role change" || echo "ROLES CHANGED")"
restart_summary="$(flows_report restart)"
echo "$restart_summary"
[[ $rc == 0 && "$term_before" == "$term_after" ]] || { echo "demo: FAILED (the graceful restart lost a flow or changed a role)" >&2; exit 1; }

say "long-lived flows again; now reboot the MASTER ($BACKUP)"
flows reboot
crash_node "$BACKUP"
became() { [[ "$(role "$MASTER")" == MASTER ]]; }
tb_wait_for 20 "$MASTER to take the floating IP" became
sleep 3
kill -TERM "$FLOWS_PID"
rc=0; wait "$FLOWS_PID" || rc=$?
FLOWS_PID=""
cat "$TB_STATE/demo-reboot.log" >&2
say "summary"
echo "daemon restart of the MASTER: $restart_summary; no role change"
echo "reboot of the MASTER:         $(flows_report reboot)"
[[ $rc == 0 ]] || { echo "demo: FAILED (a flow did not survive)" >&2; exit 1; }
echo "demo: OK (tearing the test bed down)"
