#!/usr/bin/env bash
# Partition test: two Tandem nodes on the L2 test bed, the network between them cut one way, the
# other way, and both ways, each followed by healing. What must hold (docs/ha.md, "Partitions"):
#   - one-way cut: the side that stops hearing its peer elects itself with a higher term; the peer
#     hears that term and steps down, but its own probes go unanswered, so it declares the other
#     dead and claims a higher term still, which the other cannot hear: during a one-way cut both
#     may be MASTER (no quorum: with two nodes, neither side can tell a cut from a death);
#   - two-way cut: each side has a MASTER (neither can know the other is alive);
#   - after healing, within seconds: exactly one MASTER (the higher term, ties to priority and
#     node id), the other BACKUP, the VIP reaching the MASTER, curl through the VIP working.
#   TB=pt testbed/partition.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TB="${TB:-pt}" NODES=2 TB_NET=l2
CLOUD=l2
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"

[[ $EUID -eq 0 ]] || { echo "partition: must run as root" >&2; exit 1; }
log() { printf '[partition %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }

cleanup() {
    local rc=$?
    for n in llb1 llb2; do
        [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true
    done
    sleep 0.5
    if ((rc != 0)); then for n in llb1 llb2; do tail -n 20 "$TB_STATE/$n.log" >&2 2>/dev/null || true; done; fi
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# cut FROM TO: TO stops receiving anything from FROM (dropped at TO's input, so FROM's sends still
# succeed locally and nothing but the network "fails").
cut() {
    tb_exec "$2" nft -f - <<NFT
table inet tdmpart {
    chain input { type filter hook input priority -300; ip saddr $(tb_ip "$1") drop; }
}
NFT
}
heal() { local n; for n in llb1 llb2; do tb_exec "$n" nft delete table inet tdmpart 2>/dev/null || true; done; }

masters() { local n out=(); for n in llb1 llb2; do [[ "$(role "$n")" == MASTER ]] && out+=("$n"); done; echo "${out[*]:-}"; }

# After healing: exactly one MASTER, the other BACKUP, the VIP on the MASTER, HTTP through it.
check_healed() {
    local what="$1" m
    one_master() { local m; m="$(masters)"; [[ -n "$m" && "$m" != *" "* && "$(role "$(other "$m")")" == BACKUP ]]; }
    tb_wait_for 15 "one MASTER after $what" one_master || return 1
    m="$(masters)"
    vip_on() { [[ "$(tb_vip_owner)" == "$1" ]]; }
    tb_wait_for 10 "the VIP on $m after $what" vip_on "$m" || return 1
    tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { log "curl through the VIP failed after $what"; return 1; }
    log "$what: healed; MASTER $m (term $(api "$m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["term"])')), VIP on $m"
}

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
wait_settled 30
log "settled: MASTER $(master_of)"

for scenario in "llb1 llb2" "llb2 llb1" "both"; do
    m="$(master_of)"
    if [[ "$scenario" == both ]]; then
        cut llb1 llb2; cut llb2 llb1
        two() { [[ "$(masters)" == "llb1 llb2" ]]; }
        tb_wait_for 10 "both sides MASTER during a two-way cut" two
        log "two-way cut: both MASTER (expected while neither can hear the other)"
    else
        read -r from to <<<"$scenario"
        cut "$from" "$to"
        sleep 2
        during="$(masters)"
        log "one-way cut ($to hears nothing from $from; MASTER was $m): MASTER now '$during'"
        [[ -n "$during" ]] || { log "FAILED: no MASTER at all during a one-way cut"; exit 1; }
    fi
    heal
    check_healed "$scenario cut"
done
log "PASS"
