#!/usr/bin/env bash
# The NAT-gateway test (issue 16, item 4): two Linux nftables NAT gateways (llb1 10.0.10.141, llb2
# 10.0.10.88) kept highly available by Tandem in conntrack-only mode (`datapath: false`,
# `conntrack: {mode: inject}` or `hold`), the replacement for keepalived + conntrackd. Each gateway
# SNATs the inside hosts' traffic to the outside network 198.51.100.0/24 to the floating address
# 10.0.10.143, port-forwards 10.0.10.143:2222 (TCP and UDP) from the outside to the inside server
# ep1:9000, and drops (and counts) `ct state invalid` in forward; nf_conntrack_tcp_loose=0, so a
# TCP packet whose entry the gateway lacks is invalid, as on a hardened firewall.
#
#   testbed/natgw.sh [--cloud l2|oci] [--rounds 10] [--tcp 200] [--udp 50] [--forward TCP/8]
#                    [--forward-udp UDP/5] [--down 3] [--hold] [--interval-ms 20] [--stall-limit 5]
#                    [--no-sync]
#
# Long-lived flows (tandem-echo flows: every flow sends every --interval-ms and checks every echoed
# byte) run through the gateway for the whole test: --tcp minus --forward TCP and --udp minus
# --forward-udp UDP flows inside-out (client 10.0.20.10 -> the outside server 198.51.100.10:9000,
# SNATed), --forward TCP and --forward-udp UDP flows outside-in (outside server -> the
# floating address's port forward -> ep1). Then the MASTER gateway is "rebooted" --rounds times in
# a row: its daemon SIGKILLed, its link taken down, what a reboot wipes flushed (its kernel
# conntrack table, and for l2 the VIP address); the BACKUP must take the floating address (l2:
# gratuitous ARP; oci: the fake OCI's private-IP move, which re-points the vcn's routes) and carry
# every flow on with the conntrack entries Tandem replicated into its kernel. After --down seconds
# the old MASTER comes back as BACKUP; the next round starts once it is back in sync (the kernel
# table's replication in sync and, in inject mode, every flow's entry of the MASTER in its kernel
# with the same NAT mapping; in hold mode at least as many entries held). Each round kills whichever node is MASTER.
#
# --no-sync is the control run: the conntrack filter matches nothing, so nothing replicates; the
# TCP flows must break (the new MASTER drops their packets as ct invalid) while the UDP flows
# survive (their entries are simply made anew). It exits 0 only when exactly that happens.
#
# Reports per round and overall: flows survived out of total per direction and protocol, the
# longest stall, the time from the kill to the new MASTER's takeover (the floating address moved),
# the returning node's time to be in sync, and the invalid drops of both gateways. A readable
# summary on stderr, one JSON line on stdout; exits non-zero unless every flow survived every
# round (--no-sync: see above). On failure (or with KEEP_LOGS=1) the logs are kept in
# /tmp/natgw-$TB-logs; KEEP=1 leaves the namespaces up (tear down with TB=... testbed/down.sh).
# Functions below are called through traps and tb_wait_for, which shellcheck 0.9 cannot follow.
# shellcheck disable=SC2317
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

CLOUD=l2 ROUNDS=10 TCP_FLOWS=200 UDP_FLOWS=50 FORWARD="" FORWARD_UDP="" DOWN_SECONDS=3 HOLD=0
INTERVAL_MS=20 STALL_LIMIT=5 NO_SYNC=0
while (($#)); do
    case "$1" in
        --cloud) CLOUD="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --tcp) TCP_FLOWS="$2"; shift 2 ;;
        --udp) UDP_FLOWS="$2"; shift 2 ;;
        --forward) FORWARD="$2"; shift 2 ;;
        --forward-udp) FORWARD_UDP="$2"; shift 2 ;;
        --down) DOWN_SECONDS="$2"; shift 2 ;;
        --hold) HOLD=1; shift ;;
        --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
        --stall-limit) STALL_LIMIT="$2"; shift 2 ;;
        --no-sync) NO_SYNC=1; shift ;;
        -h|--help) sed -n 2,36p "$0"; exit 0 ;;
        *) echo "natgw: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$CLOUD" == l2 || "$CLOUD" == oci ]] || { echo "natgw: --cloud must be l2 or oci" >&2; exit 2; }
for n in "$TCP_FLOWS" "$UDP_FLOWS"; do [[ "$n" =~ ^[0-9]+$ ]] || { echo "natgw: --tcp and --udp must be whole numbers" >&2; exit 2; }; done
# By default an eighth of the TCP flows and a fifth of the UDP flows come in through the port forward.
FORWARD="${FORWARD:-$((TCP_FLOWS / 8))}" FORWARD_UDP="${FORWARD_UDP:-$((UDP_FLOWS / 5))}"
for n in "$ROUNDS" "$TCP_FLOWS" "$UDP_FLOWS" "$FORWARD" "$FORWARD_UDP" "$DOWN_SECONDS" "$INTERVAL_MS" "$STALL_LIMIT"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "natgw: counts and durations must be whole numbers" >&2; exit 2; }
done
((FORWARD <= TCP_FLOWS)) || { echo "natgw: --forward must not exceed --tcp" >&2; exit 2; }
((FORWARD_UDP <= UDP_FLOWS)) || { echo "natgw: --forward-udp must not exceed --udp" >&2; exit 2; }
((TCP_FLOWS + UDP_FLOWS > 0)) || { echo "natgw: no flows" >&2; exit 2; }
((ROUNDS >= 1 && STALL_LIMIT >= 1 && INTERVAL_MS >= 1)) || { echo "natgw: --rounds, --stall-limit and --interval-ms must be at least 1" >&2; exit 2; }
((NO_SYNC == 0 || TCP_FLOWS > 0)) || { echo "natgw: --no-sync needs TCP flows (they are what must break)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "natgw: must run as root" >&2; exit 1; }

# A test bed name of its own (<= 6 chars), unless TB is given.
if [[ -z "${TB:-}" ]]; then
    for _ in $(seq 1 50); do
        TB="ng$(printf '%04d' $((RANDOM % 10000)))"
        [[ -e "/run/tandem-testbed/$TB" ]] || ip netns list 2>/dev/null | grep -q "^$TB-" || break
    done
fi
export TB NODES=2
if [[ "$CLOUD" == l2 ]]; then export TB_NET=l2; else export TB_NET=routed; fi
# Binaries: $TANDEM_BIN (a directory, as for failover.sh), else the release build if it has every
# binary this run needs, else the debug build.
if [[ -n "${TANDEM_BIN:-}" ]]; then BIN="$TANDEM_BIN"
else
    BIN="$REPO/.build/release"
    for b in tandem tandem-echo $([[ "$CLOUD" == oci ]] && echo fake-oci); do
        [[ -x "$BIN/$b" ]] || BIN="$REPO/.build/debug"
    done
fi
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
FAKE_OCI="${FAKE_OCI:-$BIN/fake-oci}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"
for b in "$TANDEM" "$TANDEM_ECHO"; do [[ -x "$b" ]] || { echo "natgw: $b not built (make build)" >&2; exit 1; }; done
for c in nft conntrack python3 timeout; do command -v "$c" >/dev/null || { echo "natgw: $c not installed (make deps)" >&2; exit 1; }; done

FWD_PORT=2222                                   # the port forward on the floating address
OUT_IP="$(tb_ip out)"
INSIDE_SRCS=("10.0.20.0/24" "$(tb_ip ep1)/32" "$(tb_ip ep2)/32")
INSIDE_SET="{ 10.0.20.0/24, $(tb_ip ep1), $(tb_ip ep2) }"
LOGDIR="/tmp/natgw-$TB-logs"
MODE=inject; ((HOLD)) && MODE=hold
IN_TCP=$((TCP_FLOWS - FORWARD)) IN_UDP=$((UDP_FLOWS - FORWARD_UDP))

log() { printf '[natgw %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
now_ms() { date +%s%3N; }
# The CLI against a node's API, bounded (cluster.sh's api, role, in_sync and master_of use api).
api() { timeout 5 ip netns exec "$(tb_ns "$1")" "$TANDEM" get cluster -o json 2>/dev/null; }
ct_sync() { timeout 5 ip netns exec "$(tb_ns "$1")" "$TANDEM" get sync --conntrack -o json 2>/dev/null; }
node_status() { timeout 5 ip netns exec "$(tb_ns "$1")" curl -fsS -m 4 "http://127.0.0.1:11111/netlox/v1/status" 2>/dev/null; }

declare -A FLOW_PID=()
cleanup() {
    local rc=$? n f
    trap - EXIT INT TERM
    for n in "${!FLOW_PID[@]}"; do kill -KILL "${FLOW_PID[$n]}" 2>/dev/null || true; done
    for n in llb1 llb2; do
        if [[ -f "$TB_STATE/$n.pid" ]]; then kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; fi
    done
    sleep 0.3
    if { ((rc != 0)) || [[ "${KEEP_LOGS:-0}" == 1 ]]; } && [[ -d "$TB_STATE" ]]; then
        mkdir -p "$LOGDIR"
        for f in "$TB_STATE"/*.log "$TB_STATE"/*.yaml "$TB_STATE"/*.json "$TB_STATE"/*.txt "$TB_STATE"/oci/fake-oci.log; do
            [[ -f "$f" ]] && cp "$f" "$LOGDIR/" 2>/dev/null
        done
        for n in llb1 llb2; do
            tb_exec "$n" nft list ruleset >"$LOGDIR/$n.nft" 2>&1 || true
            tb_exec "$n" conntrack -L >"$LOGDIR/$n.conntrack" 2>&1 || true
        done
        if ((rc != 0)); then
            for n in llb1 llb2; do echo "--- $n log (tail)" >&2; tail -n 20 "$TB_STATE/$n.log" >&2 2>/dev/null || true; done
            echo "--- flows logs (tail)" >&2; tail -n 12 "$TB_STATE"/flows-*.log >&2 2>/dev/null || true
        fi
        echo "natgw: logs kept in $LOGDIR" >&2
    fi
    [[ "${KEEP:-0}" == 1 ]] || tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# The bed: lib.sh's topology, plus the outside network and the gateways' nftables.

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
touch "$TB_STATE/natgw"            # from now on tb_route_vip moves the outside route too

VCN="$(tb_ns vcn)"
ip -n "$VCN" addr add "$TB_GW_OUTSIDE/32" dev lo
tb_add_host out
tb_start_echo out
tb_wait_for "$TB_WAIT" "tandem-echo on the outside server" tb_check_echo out
# The inside hosts reach the outside only through the gateway that owns the floating address
# (table TB_NATGW_TABLE); nothing falls through to the direct route. The outside host reaches the
# floating address and nothing else of the inside.
for s in "${INSIDE_SRCS[@]}"; do
    ip -n "$VCN" rule add pref 143 from "$s" to "$TB_NATGW_OUTSIDE" lookup "$TB_NATGW_TABLE"
    ip -n "$VCN" rule add pref 144 from "$s" to "$TB_NATGW_OUTSIDE" blackhole
done
ip -n "$VCN" rule add pref 145 iif "$(tb_link out)" to "$TB_VIP/32" lookup main
ip -n "$VCN" rule add pref 146 iif "$(tb_link out)" blackhole
if [[ "$TB_NET" == l2 ]]; then
    # On the LAN the next hop is the floating address itself: ARP (and gratuitous ARP) decide.
    ip -n "$VCN" route replace "$TB_NATGW_OUTSIDE" via "$TB_VIP" dev br0 table "$TB_NATGW_TABLE"
else
    tb_route_vip llb1
fi

natgw_ruleset() {
    cat <<NFT
flush ruleset
table ip natgw {
    counter invalid_drops { }
    counter forwarded { }
    counter refused { }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $TB_VIP tcp dport $FWD_PORT dnat to $(tb_ip ep1):$TB_ECHO_PORT
        ip daddr $TB_VIP udp dport $FWD_PORT dnat to $(tb_ip ep1):$TB_ECHO_PORT
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" ip saddr $INSIDE_SET ip daddr $TB_NATGW_OUTSIDE snat to $TB_VIP
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state invalid counter name "invalid_drops" drop
        counter name "forwarded"
        ct state established,related accept
        ct status dnat accept
        ip saddr $INSIDE_SET ip daddr $TB_NATGW_OUTSIDE accept
        counter name "refused" drop
    }
}
NFT
}
for n in llb1 llb2; do
    tb_sysctl "$n" net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
        net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
    natgw_ruleset >"$TB_STATE/$n-ruleset.nft"
    tb_exec "$n" nft -f "$TB_STATE/$n-ruleset.nft"
    # Strict TCP tracking: a mid-stream packet without an entry is invalid (dropped), not adopted.
    tb_sysctl "$n" net.netfilter.nf_conntrack_tcp_loose=0
done
# counter NODE NAME -> packets
nft_counter() {
    tb_exec "$1" nft list counter ip natgw "$2" 2>/dev/null | awk '$1 == "packets" {print $2; exit}'
}
counters_sum() { # NAME -> the sum over both gateways
    local a b; a="$(nft_counter llb1 "$1")"; b="$(nft_counter llb2 "$1")"; echo $(( ${a:-0} + ${b:-0} ))
}

# The flows' kernel entries on NODE, one per line: proto, original and reply tuple, TCP state
# (ESTABLISHED TCP entries and every UDP entry of the flows: to the outside server, or to the
# port forward).
ct_flows() {
    tb_exec "$1" conntrack -L 2>/dev/null | awk -v out="$OUT_IP" -v vip="$TB_VIP" -v fwd="$FWD_PORT" '
        $1 == "tcp" || $1 == "udp" {
            n = 0; state = ($1 == "tcp") ? $4 : "-"
            for (i = 2; i <= NF; i++) if ($i ~ /^(src|dst|sport|dport)=/) { v[++n] = substr($i, index($i, "=") + 1) }
            if (n < 8) next
            if ($1 == "tcp" && state != "ESTABLISHED") next
            if (v[2] == out || (v[2] == vip && v[4] == fwd)) print $1, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], state
        }' | sort
}
# How many of MASTER's flow entries BACKUP's kernel lacks (exact tuples and NAT mapping).
ct_missing() {
    comm -23 <(ct_flows "$1") <(ct_flows "$2") | wc -l
}
sink_held() { node_status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("conntrack_sink_held", 0))' 2>/dev/null || echo -1; }

# ---------------------------------------------------------------------------------------------
# The two conntrack-only Tandem nodes.

cluster_key
if [[ "$CLOUD" == oci ]]; then
    [[ -x "$FAKE_OCI" ]] || { echo "natgw: $FAKE_OCI not built" >&2; exit 1; }
    # shellcheck source=testbed/oci.sh
    source "$REPO/testbed/oci.sh"
    oci_up   # sets OCI_API, writes $TB_STATE/oci/config, starts fake-oci in the vcn namespace
fi
if ((NO_SYNC)); then
    # The control: an address no entry has, so the filter matches nothing and nothing replicates.
    FILTER="{include: [192.0.2.1/32]}"
else
    # Every TCP and UDP flow through the gateway replicates; the nodes' own traffic (gossip, sync,
    # and on loopback the API calls this script makes) Tandem always leaves out itself.
    FILTER="{protocols: [tcp, udp]}"
fi
write_natgw_config() {
    local node="$1" prio=100
    [[ "$node" == llb1 ]] && prio=110
    cat >"$TB_STATE/$node.yaml" <<YAML
datapath: false
interfaces: [eth0]
cluster:
  peers: [$(tb_ip "$(other "$node")")]
  keyFile: $KEY
  nodeIndex: $(index "$node")
  cloud: $CLOUD
  priority: $prio
  instances: [{name: natgw, vips: [$TB_VIP]}]
conntrack:
  mode: $MODE
  filter: $FILTER
YAML
    if [[ "$CLOUD" == oci ]]; then oci_config_yaml "$node" >>"$TB_STATE/$node.yaml"; fi
}
# "Reboot" NODE: cluster.sh's crash (SIGKILL, link down, VIP address gone), and the kernel
# conntrack table, which a reboot empties. The ruleset stays (a boot loads the same one; its
# counters are the test's).
crash_gateway() {
    crash_node "$1"
    tb_exec "$1" conntrack -F >/dev/null 2>&1 || true
}

# cluster.sh's start, taken out of this shell's job table: a reboot's SIGKILL is no job report.
start_gateway() { start_node "$1"; disown "$(cat "$TB_STATE/$1.pid")" 2>/dev/null || true; }
for n in llb1 llb2; do write_natgw_config "$n"; start_gateway "$n"; done
log "test bed $TB: gateways llb1/llb2 ($CLOUD, conntrack $MODE$( ((NO_SYNC)) && echo ', no-sync control')), waiting for a MASTER and an in-sync BACKUP"
wait_settled 40
MASTER="$(master_of)"
log "MASTER is $MASTER"
t_start="$(now_ms)"

# ---------------------------------------------------------------------------------------------
# The flows, for the whole test: "in" inside-out (masqueraded), "out" outside-in (port forward).

start_flows() { # NAME ROLE TARGET TCP UDP
    local name="$1" role="$2" target="$3" tcp="$4" udp="$5" args
    args=(flows --interval-ms "$INTERVAL_MS" --stall-limit "$STALL_LIMIT" --duration 86400
          --connect-timeout 20 --ready-file "$TB_STATE/flows-$name.ready")
    ((tcp > 0)) && args+=(--tcp-target "$target" --tcp "$tcp")
    ((udp > 0)) && args+=(--udp-target "$target" --udp "$udp")
    ip netns exec "$(tb_ns "$role")" "$TANDEM_ECHO" "${args[@]}" \
        >"$TB_STATE/flows-$name.json" 2>"$TB_STATE/flows-$name.log" &
    FLOW_PID[$name]=$!
}
((IN_TCP + IN_UDP > 0)) && start_flows in client "$OUT_IP:$TB_ECHO_PORT" "$IN_TCP" "$IN_UDP"
((FORWARD + FORWARD_UDP > 0)) && start_flows out out "$TB_VIP:$FWD_PORT" "$FORWARD" "$FORWARD_UDP"
for n in "${!FLOW_PID[@]}"; do
    tb_wait_for 40 "the $n flows to be established" test -f "$TB_STATE/flows-$n.ready"
done
log "flows established: inside-out $IN_TCP TCP + $IN_UDP UDP to $OUT_IP, outside-in $FORWARD TCP + $FORWARD_UDP UDP to $TB_VIP:$FWD_PORT"

# The flows must really be NATed by the MASTER: every one has its entry there, the inside-out ones
# SNATed to the floating address, the forwarded ones DNATed to ep1; and the BACKUP forwards nothing.
ct_flows "$MASTER" >"$TB_STATE/master-flows.txt"
read -r n_snat n_dnat < <(awk -v vip="$TB_VIP" -v ep="$(tb_ip ep1)" '
    $7 == vip { s++ } $6 == ep { d++ } END { print s + 0, d + 0 }' "$TB_STATE/master-flows.txt")
if ((n_snat != IN_TCP + IN_UDP || n_dnat != FORWARD + FORWARD_UDP)); then
    log "the MASTER's conntrack table does not show the NAT as designed: $n_snat SNATed to $TB_VIP (want $((IN_TCP + IN_UDP))), $n_dnat DNATed to ep1 (want $((FORWARD + FORWARD_UDP)))"
    exit 1
fi
backup_fwd_before="$(nft_counter "$(other "$MASTER")" forwarded)"
sleep 1
backup_fwd_after="$(nft_counter "$(other "$MASTER")" forwarded)"
((backup_fwd_after == backup_fwd_before)) ||
    { log "the BACKUP $(other "$MASTER") forwarded $((backup_fwd_after - backup_fwd_before)) packets in 1 s: traffic bypasses the MASTER"; exit 1; }
log "$MASTER NATs every flow ($n_snat SNAT to $TB_VIP, $n_dnat DNAT to ep1); $(other "$MASTER") forwards nothing"

# In sync: the kernel table's replication reports in sync and (inject) BACKUP's kernel holds every
# flow entry of MASTER, with the same tuples and NAT, or (hold) holds that many entries. With
# --no-sync, nothing can replicate: only the replication state is waited for.
back_in_sync() {
    local master="$1" back="$2" want
    ct_sync "$back" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["inSync"] else 1)' || return 1
    in_sync "$back" || return 1
    ((NO_SYNC)) && return 0
    if ((HOLD)); then
        want="$(ct_flows "$master" | wc -l)"
        (($(sink_held "$back") >= want))
    else
        (($(ct_missing "$master" "$back") == 0))
    fi
}
tb_wait_for 30 "the BACKUP to hold every flow's entry" back_in_sync "$MASTER" "$(other "$MASTER")" ||
    { log "the BACKUP never held the flows' entries"; exit 1; }

# Live flows per flows process and protocol: the process's open sockets (a failed flow closes its
# socket and is not reopened), so a round's losses are the difference, exactly.
live_now() { # -> in_tcp in_udp out_tcp out_udp
    local n role pid tcp udp out=()
    for n in in out; do
        pid="${FLOW_PID[$n]:-}"
        if [[ -n "$pid" ]]; then
            if [[ $n == in ]]; then role=client; else role=out; fi
            read -r tcp udp < <(tb_exec "$role" ss -tuanpH 2>/dev/null | awk -v p="pid=$pid," '
                index($0, p) && $1 == "tcp" { t++ } index($0, p) && $1 == "udp" { u++ } END { print t + 0, u + 0 }')
            out+=("$tcp" "$udp")
        else
            out+=(0 0)
        fi
    done
    echo "${out[*]}"
}
read -r l_in_tcp l_in_udp l_out_tcp l_out_udp < <(live_now)
if ((l_in_tcp != IN_TCP || l_in_udp != IN_UDP || l_out_tcp != FORWARD || l_out_udp != FORWARD_UDP)); then
    log "live flow sockets ($l_in_tcp/$l_in_udp inside-out, $l_out_tcp/$l_out_udp outside-in TCP/UDP) do not match the flows started"
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# The rounds.

rounds_json=()
all_ok=1
round_from="$(now_ms)"
for ((round = 1; round <= ROUNDS; round++)); do
    MASTER="$(master_of)"
    [[ -n "$MASTER" ]] || { log "round $round: no MASTER"; all_ok=0; break; }
    KILLED="$MASTER" SURV="$(other "$MASTER")"
    inv_before="$(counters_sum invalid_drops)"
    t_kill="$(now_ms)"
    crash_gateway "$KILLED"
    log "round $round: $KILLED (MASTER) rebooted: killed, link down, conntrack table flushed"
    took_over() { api "$SURV" | python3 -c 'import json,sys; i=json.load(sys.stdin)["instances"][0]; sys.exit(0 if i["role"] == "MASTER" and (i.get("lastTakeoverAtUnixMs") or 0) >= int(sys.argv[1]) else 1)' "$t_kill"; }
    tb_wait_for 20 "$SURV to take over" took_over || all_ok=0
    status="$(api "$SURV" || echo '{}')"
    read -r dead_ms elected_ms takeover_ms provider_ms < <(STATUS="$status" python3 - "$t_kill" "$(tb_ip "$KILLED")" <<'PY'
import json, os, sys
t_kill, dead_ip = int(sys.argv[1]), sys.argv[2]
try:
    s = json.loads(os.environ["STATUS"] or "{}")
    inst = s["instances"][0]
except (ValueError, KeyError, IndexError):
    print(-1, -1, -1, -1); sys.exit(0)
became = [t["atUnixMs"] for t in inst.get("transitions", []) if t["to"] == "MASTER" and t["atUnixMs"] >= t_kill]
elected = min(became) - t_kill if became else -1
declared = [m.get("changedAtUnixMs") for m in s.get("members", []) if m["address"] == dead_ip and m["state"] in ("dead", "left")]
dead = declared[0] - t_kill if declared and declared[0] else -1
take = inst["lastTakeoverAtUnixMs"] - t_kill if (inst.get("lastTakeoverAtUnixMs") or 0) >= t_kill else -1
print(dead, elected, take, round(inst.get("lastTakeoverMs") or -1, 1))
PY
)
    dead_ms="${dead_ms:--1}" elected_ms="${elected_ms:--1}" takeover_ms="${takeover_ms:--1}" provider_ms="${provider_ms:--1}"
    log "round $round: $SURV is MASTER: $KILLED declared dead ${dead_ms} ms after the kill, elected ${elected_ms} ms, floating IP moved ${takeover_ms} ms (provider ${provider_ms} ms)"
    sleep "$DOWN_SECONDS"
    log "round $round: bringing $KILLED back"
    tb_exec "$KILLED" ip link set eth0 up
    tb_exec "$KILLED" ip route replace default via "$TB_GW_HOSTS" dev eth0
    t_back="$(now_ms)"
    start_gateway "$KILLED"
    resync_ok=1
    tb_wait_for 60 "$KILLED to be back in sync" back_in_sync "$SURV" "$KILLED" || { resync_ok=0; all_ok=0; }
    resync_ms=$(( $(now_ms) - t_back ))
    # A flow that lost its path fails after --stall-limit seconds: give every flow that long
    # (and a second) after the kill before the round's failures are counted.
    wait_until=$(( t_kill + STALL_LIMIT * 1000 + 1000 ))
    while (( $(now_ms) < wait_until )); do sleep 0.2; done
    sleep 1
    returned_role="$(role "$KILLED")"
    survivor_role="$(role "$SURV")"
    # Role changes of the survivor since the return: an unasked failover (a false death) if any.
    unasked="$(api "$SURV" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for t in s["instances"][0]["transitions"] if t["atUnixMs"] >= int(sys.argv[1])))' "$t_back" 2>/dev/null || echo -1)"
    entries="$(ct_flows "$SURV" | wc -l)"
    inv=$(( $(counters_sum invalid_drops) - inv_before ))
    read -r n_in_tcp n_in_udp n_out_tcp n_out_udp < <(live_now)
    d_in_tcp=$((l_in_tcp - n_in_tcp)) d_in_udp=$((l_in_udp - n_in_udp)) d_out_tcp=$((l_out_tcp - n_out_tcp)) d_out_udp=$((l_out_udp - n_out_udp))
    round_to="$(now_ms)"
    round_json="$(python3 - <<PY
import json
print(json.dumps({"round": $round, "killed": "$KILLED", "master": "$SURV", "detectedMs": $dead_ms, "electedMs": $elected_ms,
    "takeoverMs": $takeover_ms, "providerMs": $provider_ms, "resyncMs": $resync_ms, "resynced": $resync_ok == 1,
    "returnedAs": "$returned_role", "survivorRole": "$survivor_role", "unaskedRoleChanges": $unasked, "flowEntries": $entries, "invalidDrops": $inv,
    "failed": {"inTcp": $d_in_tcp, "inUdp": $d_in_udp, "outTcp": $d_out_tcp, "outUdp": $d_out_udp},
    "live": {"inTcp": $n_in_tcp, "inUdp": $n_in_udp, "outTcp": $n_out_tcp, "outUdp": $n_out_udp},
    "fromUnixMs": $round_from, "toUnixMs": $round_to}))
PY
)"
    rounds_json+=("$round_json")
    round_ok=1
    [[ "$returned_role" == BACKUP && "$survivor_role" == MASTER && "$takeover_ms" -ge 0 && $resync_ok == 1 && "$unasked" == 0 ]] || round_ok=0
    lost=$((d_in_tcp + d_in_udp + d_out_tcp + d_out_udp))
    ((NO_SYNC)) || ((lost == 0)) || round_ok=0
    ((round_ok)) || all_ok=0
    log "round $round: $( ((round_ok)) && echo OK || echo FAILED ): flows alive (lost this round): inside-out TCP $n_in_tcp/$IN_TCP ($d_in_tcp), UDP $n_in_udp/$IN_UDP ($d_in_udp); outside-in TCP $n_out_tcp/$FORWARD ($d_out_tcp), UDP $n_out_udp/$FORWARD_UDP ($d_out_udp); takeover ${takeover_ms} ms; $KILLED back as $returned_role, in sync ${resync_ms} ms after its restart$( ((resync_ok)) || echo ' (NOT in sync)'); survivor role changes since: $unasked; $entries flow entries on $SURV; invalid drops $inv"
    l_in_tcp=$n_in_tcp l_in_udp=$n_in_udp l_out_tcp=$n_out_tcp l_out_udp=$n_out_udp
    round_from="$round_to"
done

# ---------------------------------------------------------------------------------------------
# The end: stop the flows (bounded), read their reports, summarise.

for n in "${!FLOW_PID[@]}"; do kill -TERM "${FLOW_PID[$n]}" 2>/dev/null || true; done
declare -A FLOW_RC=()
for n in "${!FLOW_PID[@]}"; do
    pid="${FLOW_PID[$n]}"
    for _ in $(seq 1 100); do tb_alive "$pid" || break; sleep 0.1; done
    tb_alive "$pid" && { log "the $n flows did not stop within 10 s; killed"; kill -KILL "$pid" 2>/dev/null || true; }
    rc=0; wait "$pid" || rc=$?
    FLOW_RC[$n]=$rc
    unset "FLOW_PID[$n]"
    tail -n 1 "$TB_STATE/flows-$n.json" >"$TB_STATE/flows-$n.last.json" 2>/dev/null || true
done
inv_total="$(counters_sum invalid_drops)"
refused_total="$(counters_sum refused)"
sink_failures="$(for n in llb1 llb2; do node_status "$n" || echo '{}'; echo; done | python3 -c '
import json, sys
tot = 0
for line in sys.stdin:
    line = line.strip()
    if not line: continue
    try: d = json.loads(line)
    except ValueError: continue
    tot += sum(v for k, v in d.items() if k.startswith("conntrack_sink_failures_"))
print(tot)')"

set +e
python3 - "$all_ok" "$CLOUD" "$MODE" "$NO_SYNC" "$TB_STATE" "${FLOW_RC[in]:-none}" "${FLOW_RC[out]:-none}" \
    "$IN_TCP" "$IN_UDP" "$FORWARD" "$FORWARD_UDP" "$inv_total" "$refused_total" "$sink_failures" "$t_start" \
    "${rounds_json[@]}" <<'PY'
import json, os, sys
(all_ok, cloud, mode, no_sync, state, rc_in, rc_out, in_tcp, in_udp, out_tcp, out_udp, inv, refused, sinkf,
 t_start) = sys.argv[1:16]
rounds = [json.loads(x) for x in sys.argv[16:]]
no_sync = no_sync == "1"
def report(name):
    try:
        return json.loads(open(os.path.join(state, f"flows-{name}.last.json")).read() or "{}")
    except (OSError, ValueError):
        return {}
rep = {"in": report("in"), "out": report("out")}
want = {"in": (int(in_tcp), int(in_udp)), "out": (int(out_tcp), int(out_udp))}
flows = {}
problems = []
for d in ("in", "out"):
    r, (wt, wu) = rep[d], want[d]
    if wt + wu == 0:
        continue
    if not r:
        problems.append(f"no report from the {d} flows")
    for p, w in (("tcp", wt), ("udp", wu)):
        got = r.get(p, {})
        if got.get("total", 0) != w and r:
            problems.append(f"{d} {p}: {got.get('total')} flows reported, {w} started")
        flows[f"{d}{p.capitalize()}"] = {"survived": got.get("survived", 0), "total": w}
        key = f"{d}{p.capitalize()}"
        if rounds and r and got.get("survived", 0) > rounds[-1]["live"][key]:
            problems.append(f"{d} {p}: the report has {got.get('survived')} survivors, only {rounds[-1]['live'][key]} sockets were open")
tot = lambda p: {"survived": sum(v["survived"] for k, v in flows.items() if k.endswith(p)),
                 "total": sum(v["total"] for k, v in flows.items() if k.endswith(p))}
tcp, udp = tot("Tcp"), tot("Udp")
stalls = [s for d in rep.values() for s in d.get("stalls", [])]
for r in rounds:   # the longest stall within the round's window (null: none kept, see below)
    # Each flow's report keeps only its 8 longest stalls: in a run of more than 8 rounds the
    # shortest rounds' stalls may all be dropped, and their figure is a lower bound or null.
    within = [s[3] - s[2] for s in stalls if s[3] > r["fromUnixMs"] and s[2] < r["toUnixMs"]]
    r["longestStallMs"] = round(max(within), 1) if within else None
longest = max([d.get("longestStallMs", -1) for d in rep.values() if d] or [-1])
def stat(key):
    v = sorted(r[key] for r in rounds if r[key] >= 0)
    return {"min": v[0], "median": v[len(v) // 2], "max": v[-1]} if v else None
rounds_ok = all_ok == "1" and len(rounds) > 0 and not problems
if no_sync:
    # The control: every TCP flow must have broken and every UDP flow survived.
    ok = rounds_ok and tcp["total"] > 0 and tcp["survived"] == 0 and udp["survived"] == udp["total"]
    verdict = "TCP broke as expected" if ok else "UNEXPECTED: TCP should have broken and UDP survived"
else:
    ok = rounds_ok and rc_in in ("0", "none") and rc_out in ("0", "none") \
        and tcp["survived"] == tcp["total"] and udp["survived"] == udp["total"]
    verdict = "every flow survived" if ok else "FLOWS LOST OR A ROUND FAILED"
out = {"test": "natgw", "cloud": cloud, "conntrackMode": mode, "noSync": no_sync, "rounds": len(rounds), "ok": ok,
       "tcp": tcp, "udp": udp, "flows": flows, "longestStallMs": longest,
       "takeoverMs": stat("takeoverMs"), "detectedMs": stat("detectedMs"), "electedMs": stat("electedMs"),
       "resyncMs": stat("resyncMs"), "unaskedRoleChanges": sum(max(0, r["unaskedRoleChanges"]) for r in rounds),
       "invalidDrops": int(inv), "refusedDrops": int(refused),
       "sinkFailures": int(sinkf), "problems": problems,
       "flowsClient": {d: {k: rep[d].get(k) for k in ("loopLagMs", "loopCpuPercent", "sendRatePercent")} for d in rep if rep[d]},
       "perRound": rounds}
fmt = lambda s: "-" if not s else f"{s['median']} ms (min {s['min']}, max {s['max']})"
f = lambda k: f"{flows[k]['survived']}/{flows[k]['total']}" if k in flows else "-"
print(f"\nnatgw summary ({cloud}, conntrack {mode}{', NO-SYNC control' if no_sync else ''}, {len(rounds)} reboot(s) of the MASTER):\n"
      f"  flows survived: TCP {tcp['survived']}/{tcp['total']} (inside-out {f('inTcp')}, outside-in {f('outTcp')}), "
      f"UDP {udp['survived']}/{udp['total']} (inside-out {f('inUdp')}, outside-in {f('outUdp')})\n"
      f"  longest stall {longest} ms; takeover (kill to the new MASTER's floating IP) {fmt(out['takeoverMs'])}; "
      f"returning node in sync {fmt(out['resyncMs'])} after its restart\n"
      f"  invalid drops (both gateways, whole run) {inv}; refused by the forward policy {refused}; sink failures {sinkf}\n"
      + "".join(f"  round {r['round']}: {r['killed']} rebooted, {r['master']} took over in {r['takeoverMs']} ms, "
                f"{r['killed']} back as {r['returnedAs'] or '?'} and in sync after {r['resyncMs']} ms{'' if r['resynced'] else ' (NOT in sync)'}; "
                f"failed: inside-out TCP {r['failed']['inTcp']} UDP {r['failed']['inUdp']}, outside-in TCP {r['failed']['outTcp']} "
                f"UDP {r['failed']['outUdp']}; longest stall {'-' if r['longestStallMs'] is None else r['longestStallMs']} ms; "
                f"invalid drops {r['invalidDrops']}; survivor role changes {r['unaskedRoleChanges']}\n" for r in rounds)
      + "".join(f"  problem: {p}\n" for p in problems)
      + f"  {'PASS' if ok else 'FAIL'}: {verdict}", file=sys.stderr)
for name, d in rep.items():
    if d and (d.get("sendRatePercent", 100) < 95 or d.get("loopLagMs", 0) > 50):
        print(f"  note: the {name} flows client was overloaded ({d.get('sendRatePercent')} % of its send ticks ran, timers up to "
              f"{d.get('loopLagMs')} ms late): its stall figures include its own delays", file=sys.stderr)
for d in rep.values():
    for x in d.get("failures", [])[:5]:
        print(f"    failed: {x.get('flow')}: {x.get('reason')}", file=sys.stderr)
print(json.dumps(out))
sys.exit(0 if ok else 1)
PY
rc=$?
set -e
exit "$rc"
