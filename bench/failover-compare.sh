#!/usr/bin/env bash
# Failover benchmark: Tandem against keepalived (VRRP, the alternative an on-premises user would
# pick), side by side in one run on one L2 test bed. Both move the floating IP 10.0.10.143 between
# llb1 and llb2 by address + gratuitous ARP; both are "rebooted" the same way (SIGKILL, link down,
# VIP address flushed); both are measured the same way: from the kill to the moment the survivor
# holds the VIP (polled every 5 ms). keepalived runs twice: its defaults (advert_int 1 s) and tuned
# (VRRPv3, advert_int 0.1 s); nopreempt on both, like Tandem's sticky mastership.
#   bench/failover-compare.sh [--rounds 5]      writes bench/results/failover-compare-latest.md
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=5
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        *) echo "failover-compare: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "failover-compare: --rounds must be a positive number" >&2; exit 2; }
export TB="${TB:-fcmp}" NODES=2 TB_NET=l2
CLOUD=l2
BIN="${TANDEM_BIN:-$REPO/.build/release}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"
[[ $EUID -eq 0 ]] || { echo "failover-compare: must run as root" >&2; exit 1; }
command -v keepalived >/dev/null || { echo "failover-compare: keepalived not installed (make deps)" >&2; exit 1; }
OUT="$REPO/bench/results"
mkdir -p "$OUT"

cleanup() {
    local rc=$?
    for n in llb1 llb2; do
        [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true
        keepalived_stop "$n"
    done
    sleep 0.5
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log() { printf '[failover-compare %s] %s\n' "$(date +%T)" "$*" >&2; }
now_ms() { date +%s%3N; }
has_vip() { tb_exec "$1" ip -4 -o addr show dev eth0 | grep -q " $TB_VIP/"; }

# Polls (5 ms) until NODE holds the VIP; prints milliseconds since T0, or -1 after 20 s.
wait_vip_ms() {
    local node="$1" t0="$2" deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        if has_vip "$node"; then echo $(( $(now_ms) - t0 )); return 0; fi
        sleep 0.005
    done
    echo -1
}

reboot_node() { # NODE: kill everything the node runs, link down, flush the VIP (as a reboot would)
    local node="$1"
    ip netns pids "$(tb_ns "$node")" | xargs -r kill -KILL 2>/dev/null || true
    tb_exec "$node" ip link set eth0 down
    tb_exec "$node" tc qdisc del dev eth0 clsact 2>/dev/null || true
    tb_exec "$node" ip addr del "$TB_VIP/32" dev eth0 2>/dev/null || true
    rm -f "$TB_STATE/$node.pid" "$TB_STATE/ka-$node.pid" "$TB_STATE/ka-$node-vrrp.pid" "$TB_STATE/ka-$node-chk.pid"
}
link_up() {
    tb_exec "$1" ip link set eth0 up
    tb_exec "$1" ip route replace default via "$TB_GW_HOSTS" dev eth0
}

keepalived_conf() { # NODE ADVERT VERSION
    local node="$1" prio=100
    [[ "$node" == llb1 ]] && prio=110
    cat >"$TB_STATE/ka-$node.conf" <<CONF
global_defs {
    router_id $node
    vrrp_version $3
    enable_script_security
    vrrp_garp_master_repeat 3
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority $prio
    advert_int $2
    virtual_ipaddress {
        $TB_VIP/32 dev eth0
    }
}
CONF
}
keepalived_start() { # NODE
    local n="$1"
    ip netns exec "$(tb_ns "$n")" keepalived -f "$TB_STATE/ka-$n.conf" -p "$TB_STATE/ka-$n.pid" \
        -r "$TB_STATE/ka-$n-vrrp.pid" -c "$TB_STATE/ka-$n-chk.pid" -l -D >"$TB_STATE/ka-$n.log" 2>&1
}
keepalived_stop() {
    local n="$1" f
    for f in "$TB_STATE/ka-$n.pid" "$TB_STATE/ka-$n-vrrp.pid"; do
        [[ -f "$f" ]] && kill -KILL "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    [[ -d "$TB_STATE" ]] && tb_exec "$n" ip addr del "$TB_VIP/32" dev eth0 2>/dev/null || true
}
owner() { local n; for n in llb1 llb2; do has_vip "$n" && echo "$n"; done; return 0; }

# One system, ROUNDS reboots of whoever holds the VIP; prints the takeover times.
run_keepalived() { # ADVERT VERSION
    local r m s t0 ms times=()
    for n in llb1 llb2; do keepalived_conf "$n" "$1" "$2"; keepalived_start "$n"; done
    only_one() { [[ "$(owner)" == llb1 || "$(owner)" == llb2 ]]; }
    tb_wait_for 30 "keepalived to elect a master" only_one >&2
    sleep 2
    for ((r = 1; r <= ROUNDS; r++)); do
        m="$(owner)"; s="$(other "$m")"
        t0="$(now_ms)"
        reboot_node "$m"
        ms="$(wait_vip_ms "$s" "$t0")"
        times+=("$ms")
        log "keepalived advert_int $1: round $r: $m rebooted, $s holds the VIP after $ms ms"
        link_up "$m"; keepalived_start "$m"
        tb_wait_for 20 "keepalived on $m to rejoin as BACKUP" grep -q "Entering BACKUP STATE" "$TB_STATE/ka-$m.log" >&2
        sleep 2
    done
    for n in llb1 llb2; do keepalived_stop "$n"; done
    echo "${times[*]}"
}

run_tandem() {
    local r m s t0 ms times=()
    for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
    wait_settled 30 >&2
    for ((r = 1; r <= ROUNDS; r++)); do
        m="$(master_of)"; s="$(other "$m")"
        t0="$(now_ms)"
        reboot_node "$m"
        ms="$(wait_vip_ms "$s" "$t0")"
        times+=("$ms")
        log "tandem: round $r: $m rebooted, $s holds the VIP after $ms ms"
        link_up "$m"; start_node "$m"
        back() { [[ "$(role "$1")" == BACKUP ]] && in_sync "$1"; }
        tb_wait_for 30 "$m back" back "$m" >&2
        sleep 1
    done
    for n in llb1 llb2; do [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; done
    sleep 2
    echo "${times[*]}"
}

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key
log "tandem ($ROUNDS reboots)"
tandem="$(run_tandem)"
log "keepalived defaults, advert_int 1 s ($ROUNDS reboots)"
ka1="$(run_keepalived 1 2)"
log "keepalived tuned, VRRPv3 advert_int 0.1 s ($ROUNDS reboots)"
ka01="$(run_keepalived 0.1 3)"

python3 - "$tandem" "$ka1" "$ka01" "$ROUNDS" "$OUT/failover-compare-latest.md" <<'PY'
import json, statistics, sys
tandem, ka1, ka01 = ([int(x) for x in a.split()] for a in sys.argv[1:4])
rounds, path = sys.argv[4], sys.argv[5]
def s(v):
    ok = [x for x in v if x >= 0]
    return (statistics.median(ok) if ok else float("nan"), max(ok) if ok else float("nan"), len(v) - len(ok))
t, k1, k01 = s(tandem), s(ka1), s(ka01)
rows = [("Tandem (SWIM 50 ms, l2 provider)", t), ("keepalived VRRP defaults (advert_int 1 s)", k1),
        ("keepalived VRRPv3 tuned (advert_int 0.1 s)", k01)]
out = [f"Failover: kill of the VIP holder -> survivor holds the VIP, {rounds} reboots each, one L2 test bed, one run",
       "", "| system | median ms | max ms | failed | median vs Tandem |", "|---|---:|---:|---:|---:|"]
for name, (med, mx, failed) in rows:
    out.append(f"| {name} | {med:.0f} | {mx:.0f} | {failed} | {med / t[0]:.1f}x |")
out += ["", "raw (ms): tandem " + " ".join(map(str, tandem)) + "; keepalived 1 s " + " ".join(map(str, ka1))
        + "; keepalived 0.1 s " + " ".join(map(str, ka01))]
text = "\n".join(out) + "\n"
open(path, "w").write(text)
print(text)
print(json.dumps({"tandemMs": tandem, "keepalived1sMs": ka1, "keepalived100msMs": ka01}))
PY
