#!/usr/bin/env bash
# The ECMP test (issue 17, item 4): three active-active Tandem nodes (llb1 10.0.10.141, llb2
# 10.0.10.88, llb3 10.0.10.89; cluster.election: false, bgp.mode: active-active) announce the VIP
# 10.0.10.143/32 over BGP to a real BGP router in the vcn namespace (BIRD 2, testbed/bgp-lib.sh:
# AS 65000 against the nodes' AS 65001, multipath into the kernel, L4 hashing with
# fib_multipath_hash_policy=1), which spreads the client's flows over every node.
#
#   testbed/ecmp.sh [--tcp 300] [--udp 60] [--down 5] [--bfd | --no-bfd] [--hold 3]
#                   [--interval-ms 20] [--stall-limit 5] [--vip-source]
#                   [--system tandem|nftables] [--expect-breaks]
#
# Long-lived flows (tandem-echo flows: every flow sends every --interval-ms from its own source
# port and checks every echoed byte; UDP flows also check they stay on one endpoint) from the
# client to the VIP's fullnat TCP echo (56004) and UDP echo (56003) services on ep1/ep2 (sel hash),
# for the whole test. An nftables table in the vcn records which node link each flow's packets
# leave by (a dynamic set per node of saddr . proto . sport, 2 s timeout), so the spread of flows
# over the nodes is read from the router's own forwarding. Then:
#   1. kill: llb1 dies silently (its link taken down, then its daemon SIGKILLed, its TC programs
#      flushed, as a reboot; its BIRD must die with the daemon, a BIRD that outlives it is a
#      failure). Measured: the time until the router's kernel route for the VIP no longer has
#      llb1 as a next hop, and what ended the session (BFD or the hold timer). llb1 stays down for
#      --down seconds (at least --stall-limit + 1 s, so every flow the kill broke has failed).
#   2. return: link up, daemon started. Measured: the time until the router has llb1 as a next hop
#      again; it must announce only once in sync (its API must say in sync once the route is there).
#   3. drain: `tandem node drain` on llb2 (a build without it fails the test). Measured: the time
#      until the router drops llb2's next hop, and until llb2 receives no more of the flows'
#      packets (its link's counter still for 1 s); the drained node's BGP session stays up.
# Each phase reports flows survived (the flows process's open sockets: a failed flow closes its
# socket), its longest stall, and the spread of flows per node before and after (and how many
# flows changed node). --bfd (default): BFD on every session, 100 ms x 3; --no-bfd: the BGP hold
# timer (--hold seconds, the nodes' holdSeconds) alone detects a death. The nodes source their
# fullnat flows from their own addresses (bgp.snatAddresses 10.0.10.201-203, announced by the
# owner with MED 10 and by the others with MED 20: replies return to the node that made the flow,
# and a dead node's replies to the survivors); --vip-source keeps the VIP as the source, so the
# router hashes replies over the nodes like requests.
#
# --system nftables (bench/ecmp.sh's alternative): the same bed, router, flows and phases, but each
# node is what a user would build without Tandem: nftables fullnat in the node's namespace (DNAT to
# ep1/ep2 by a jhash of the client's address and port with a fixed seed, so every node picks the
# same endpoint for a flow; SNAT to the node's own source address 10.0.10.201-203; kernel
# conntrack, tcp_loose on, no state sync between the nodes) and a BIRD per node started by this
# script with the announcements Tandem makes (static /32 blackhole routes for the VIP with MED 10,
# the node's own source address with MED 10 and its peers' with MED 20, the same community, hold
# time and BFD). The kill takes the link down, SIGKILLs that BIRD and wipes the ruleset and the
# conntrack table (a reboot); the return loads both again and starts BIRD (no sync to wait for);
# the drain is `birdc disable vips` (the VIP and the peers' source addresses, as Tandem's drain
# gives up, the node's own source address stays). --expect-breaks: flows that fail are the
# measured outcome, not a failure of the test (every other check still counts).
#
# A readable summary on stderr, one JSON line on stdout; exit status 0 only if every flow survived
# every phase (unless --expect-breaks) and nothing else failed (spread, timings found, drain,
# BIRD's death). On failure (or with KEEP_LOGS=1) the logs, configs, the router's view and
# rulesets are kept in /tmp/ecmp-$TB-logs; KEEP=1 leaves the bed up (tear down with TB=...
# testbed/down.sh).
# Functions below are called through traps and tb_wait_for, which shellcheck 0.9 cannot follow.
# shellcheck disable=SC2317
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TCP_FLOWS=300 UDP_FLOWS=60 DOWN_SECONDS=5 BFD=1 HOLD=3 INTERVAL_MS=20 STALL_LIMIT=5 VIP_SOURCE=0
SYSTEM=tandem EXPECT_BREAKS=0
while (($#)); do
    case "$1" in
        --tcp) TCP_FLOWS="$2"; shift 2 ;;
        --udp) UDP_FLOWS="$2"; shift 2 ;;
        --down) DOWN_SECONDS="$2"; shift 2 ;;
        --bfd) BFD=1; shift ;;
        --no-bfd) BFD=0; shift ;;
        --hold) HOLD="$2"; shift 2 ;;
        --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
        --stall-limit) STALL_LIMIT="$2"; shift 2 ;;
        --vip-source) VIP_SOURCE=1; shift ;;
        --system) SYSTEM="$2"; shift 2 ;;
        --expect-breaks) EXPECT_BREAKS=1; shift ;;
        -h|--help) sed -n 2,54p "$0"; exit 0 ;;
        *) echo "ecmp: unknown argument $1" >&2; exit 2 ;;
    esac
done
for n in "$TCP_FLOWS" "$UDP_FLOWS" "$DOWN_SECONDS" "$HOLD" "$INTERVAL_MS" "$STALL_LIMIT"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "ecmp: counts and durations must be whole numbers" >&2; exit 2; }
done
((TCP_FLOWS + UDP_FLOWS > 0)) || { echo "ecmp: no flows" >&2; exit 2; }
((HOLD >= 3 && HOLD <= 65535)) || { echo "ecmp: --hold must be 3-65535 (BGP)" >&2; exit 2; }
((STALL_LIMIT >= 1 && INTERVAL_MS >= 1)) || { echo "ecmp: --stall-limit and --interval-ms must be at least 1" >&2; exit 2; }
[[ "$SYSTEM" == tandem || "$SYSTEM" == nftables ]] || { echo "ecmp: --system must be tandem or nftables" >&2; exit 2; }
((VIP_SOURCE)) && [[ "$SYSTEM" == nftables ]] && { echo "ecmp: --vip-source is for --system tandem" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "ecmp: must run as root" >&2; exit 1; }

# A test bed name of its own (<= 6 chars), unless TB is given.
if [[ -z "${TB:-}" ]]; then
    for _ in $(seq 1 50); do
        TB="ec$(printf '%04d' $((RANDOM % 10000)))"
        [[ -e "/run/tandem-testbed/$TB" ]] || ip netns list 2>/dev/null | grep -q "^$TB-" || break
    done
fi
export TB NODES=3 TB_NET=routed
# Binaries: from $TANDEM_BIN (a directory) if given, else each the newer of its release and debug
# builds (a stale release build predating BGP would ignore the bgp section; the release
# tandem-echo, when current, keeps the flows client from being the bottleneck).
newest_build() {
    local r="$REPO/.build/release/$1" d="$REPO/.build/debug/$1"
    if [[ -x "$r" && ( ! -x "$d" || "$r" -nt "$d" ) ]]; then echo "$r"; else echo "$d"; fi
}
if [[ -n "${TANDEM_BIN:-}" ]]; then
    export TANDEM_ECHO="${TANDEM_ECHO:-$TANDEM_BIN/tandem-echo}"
    TANDEM="${TANDEM:-$TANDEM_BIN/tandem}"
else
    TANDEM_ECHO="${TANDEM_ECHO:-$(newest_build tandem-echo)}"
    export TANDEM_ECHO
    TANDEM="${TANDEM:-$(newest_build tandem)}"
fi
export BGP_BFD="$BFD"
# shellcheck source=testbed/lib.sh disable=SC1091
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh disable=SC1091
source "$REPO/testbed/cluster.sh"
# shellcheck source=testbed/bgp-lib.sh disable=SC1091
source "$REPO/testbed/bgp-lib.sh"
[[ -x "$TANDEM_ECHO" ]] || { echo "ecmp: $TANDEM_ECHO not built (make build)" >&2; exit 1; }
if [[ "$SYSTEM" == tandem ]]; then
    [[ -x "$TANDEM" ]] || { echo "ecmp: $TANDEM not built (make build)" >&2; exit 1; }
    "$TANDEM" get bgp --help >/dev/null 2>&1 || { echo "ecmp: $TANDEM has no BGP support (no 'tandem get bgp'): build the current tree" >&2; exit 1; }
else
    command -v conntrack >/dev/null || { echo "ecmp: conntrack not installed (conntrack; make deps)" >&2; exit 1; }
fi
for c in bird birdc nft python3 timeout ss; do
    command -v "$c" >/dev/null || { echo "ecmp: $c not installed (bird2, nftables, iproute2; make deps)" >&2; exit 1; }
done

ALL=(llb1 llb2 llb3)
KILLED=llb1 DRAINED=llb2
VIP="$TB_VIP"
COMMUNITY="65000:100"
LOGDIR="/tmp/ecmp-$TB-logs"
VCN="$(tb_ns vcn)"

log() { printf '[ecmp %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
now_ms() { date +%s%3N; }
sleep_until_ms() { while (($(now_ms) < $1)); do sleep 0.05; done; }
# The CLI against a node's API, bounded. Without an election `get cluster` has nothing to show;
# the replication's own state (`get sync`) says whether the node is in sync.
api_sync() { timeout 5 ip netns exec "$(tb_ns "$1")" "$TANDEM" get sync -o json 2>/dev/null; }
api_bgp() { timeout 5 ip netns exec "$(tb_ns "$1")" "$TANDEM" get bgp -o json 2>/dev/null; }
# sync_state NODE -> true, false, or unknown (no answer, or no inSync in it)
sync_state() {
    { api_sync "$1" || true; } | python3 -c 'import json,sys
try: v = json.load(sys.stdin).get("inSync")
except ValueError: v = None
print("unknown" if v is None else str(bool(v)).lower())' 2>/dev/null || echo unknown
}
node_index() { case "$1" in llb1) echo 0 ;; llb2) echo 1 ;; *) echo 2 ;; esac; }

FLOWS_PID=""
cleanup() {
    local rc=$? n
    trap - EXIT INT TERM
    [[ -n "$FLOWS_PID" ]] && kill -KILL "$FLOWS_PID" 2>/dev/null
    if { ((rc != 0)) || [[ "${KEEP_LOGS:-0}" == 1 ]]; } && [[ -d "$TB_STATE" ]]; then
        mkdir -p "$LOGDIR"
        {
            birdc_vcn show protocols all
            birdc_vcn show route all
            birdc_vcn show bfd sessions
        } >"$LOGDIR/router-view.txt" 2>&1 || true
        ip -n "$VCN" route >"$LOGDIR/vcn-routes.txt" 2>&1 || true
        tb_exec vcn nft list ruleset >"$LOGDIR/vcn.nft" 2>&1 || true
        for n in "${ALL[@]}"; do
            if [[ "$SYSTEM" == tandem ]]; then
                api_bgp "$n" >"$LOGDIR/$n-bgp.json" 2>&1 || true
                api_sync "$n" >"$LOGDIR/$n-sync.json" 2>&1 || true
            else
                { nft_birdc "$n" show protocols all; nft_birdc "$n" show route all; } >"$LOGDIR/$n-bird-view.txt" 2>&1 || true
                tb_exec "$n" nft list ruleset >"$LOGDIR/$n.nft" 2>&1 || true
                tb_exec "$n" conntrack -L >"$LOGDIR/$n-conntrack.txt" 2>&1 || true
            fi
        done
    fi
    for n in "${ALL[@]}"; do
        if [[ -f "$TB_STATE/$n.pid" ]]; then kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true; fi
    done
    sleep 0.5
    if { ((rc != 0)) || [[ "${KEEP_LOGS:-0}" == 1 ]]; } && [[ -d "$TB_STATE" ]]; then
        # Everything of the bed's state dir but sockets and the BPF filesystem.
        tar -C "$TB_STATE" --exclude=./bpffs -cf - . 2>/dev/null | tar -C "$LOGDIR" -xf - 2>/dev/null || true
        if ((rc != 0)); then
            for n in "${ALL[@]}"; do
                echo "--- $n log (tail)" >&2
                if [[ "$SYSTEM" == tandem ]]; then tail -n 15 "$TB_STATE/$n.log" >&2 2>/dev/null || true
                else tail -n 15 "$TB_STATE/$n-bird/bird.log" >&2 2>/dev/null || true; fi
            done
            echo "--- router log (tail)" >&2; tail -n 15 "$BGP_LOG" >&2 2>/dev/null || true
            echo "--- flows log (tail)" >&2; tail -n 12 "$TB_STATE/flows.log" >&2 2>/dev/null || true
        fi
        echo "ecmp: logs kept in $LOGDIR" >&2
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then
        bgp_router_down
        tb_down
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# The bed: lib.sh's topology with three nodes, the BGP router, the spread counters.

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
# Across veth a TCP packet keeps its socket's hash (sk_txhash), and the vcn's L4 multipath hash
# uses a hash the packet already has; a retransmission timeout draws a new one (net.core.txrehash),
# so a flow that stalled would change node for no reason a real router has. Keep each flow's hash.
for r in client $(tb_endpoints); do tb_sysctl "$r" net.core.txrehash=0; done
bgp_router_up "${ALL[@]}"

# Per node link: the flows' packets to the VIP (from the client) that leave by it, as a counter
# and a set of flows (saddr . proto . sport) that forgets a flow 2 s after its last packet.
{
    echo "table ip ecmp {"
    for n in "${ALL[@]}"; do
        echo "  set f_$n { type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; timeout 2s; size 65536; }"
        echo "  counter p_$n { }"
    done
    echo "  chain spread {"
    echo "    type filter hook forward priority -10; policy accept;"
    for n in "${ALL[@]}"; do
        echo "    iifname \"$(tb_link client)\" ip daddr $VIP oifname \"$(tb_link "$n")\" counter name p_$n update @f_$n { ip saddr . meta l4proto . th sport }"
    done
    echo "  }"
    echo "}"
} >"$TB_STATE/vcn-ecmp.nft"
tb_exec vcn nft -f "$TB_STATE/vcn-ecmp.nft"
link_packets() { tb_exec vcn nft list counter ip ecmp "p_$1" 2>/dev/null | awk '$1 == "packets" {print $2; exit}'; }
# spread NAME: the flows per node now (the sets' elements), kept as $TB_STATE/spread-NAME.json.
spread() {
    local n
    for n in "${ALL[@]}"; do
        printf '%s ' "$n"; tb_exec vcn nft -j list set ip ecmp "f_$n" 2>/dev/null | tr -d '\n'; echo
    done | python3 -c '
import json, sys
out = {}
for line in sys.stdin:
    node, _, text = line.strip().partition(" ")
    flows = []
    try:
        for o in json.loads(text or "{}").get("nftables", []):
            for e in o.get("set", {}).get("elem", []):
                v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                _, proto, sport = v["concat"]
                flows.append([proto, sport])
    except (ValueError, KeyError, TypeError):
        pass
    out[node] = sorted(flows)
print(json.dumps(out))' >"$TB_STATE/spread-$1.json"
}

cluster_key
write_ecmp_config() {
    local node="$1" peers=() n
    for n in "${ALL[@]}"; do [[ "$n" == "$node" ]] || peers+=("$(tb_ip "$n")"); done
    cat >"$TB_STATE/$node.yaml" <<YAML
interfaces: [eth0]
cluster:
  peers: [${peers[0]}, ${peers[1]}]
  keyFile: $KEY
  self: $(node_index "$node")
  nodeIndex: $(node_index "$node")
  nodeCount: 3
  election: false
$(BGP_HOLD="$HOLD" BGP_COMMUNITIES="$COMMUNITY" bgp_node_yaml "$node" active-active)
$( ((VIP_SOURCE)) || echo "  snatAddresses: [10.0.10.201, 10.0.10.202, 10.0.10.203]")
services:
  - {externalIP: $VIP, port: 56004, protocol: tcp, mode: fullnat, sel: hash, name: echo-tcp,
     endpoints: [{ip: $(tb_ip ep1), port: $TB_ECHO_PORT}, {ip: $(tb_ip ep2), port: $TB_ECHO_PORT}]}
  - {externalIP: $VIP, port: 56003, protocol: udp, mode: fullnat, sel: hash, name: echo-udp,
     endpoints: [{ip: $(tb_ip ep1), port: $TB_ECHO_PORT}, {ip: $(tb_ip ep2), port: $TB_ECHO_PORT}]}
YAML
}
# cluster.sh's start, taken out of this shell's job table: the kill's SIGKILL is no job report.
start_ecmp_node() { start_node "$1"; disown "$(cat "$TB_STATE/$1.pid")" 2>/dev/null || true; }
# The BIRD processes in NODE's namespace (the daemon's speaker), pids one a line.
node_birds() {
    local p
    for p in $(ip netns pids "$(tb_ns "$1")" 2>/dev/null); do
        [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == bird ]] && tb_alive "$p" && echo "$p"
    done
    return 0
}

# ---------------------------------------------------------------------------------------------
# --system nftables: a node without Tandem. The kernel does the fullnat (nftables + conntrack), a
# BIRD of its own (config and process from here, files in $TB_STATE/NODE-bird/) announces what a
# Tandem node announces, with the same attributes and timers as Tandem's generated BIRD config.
SNAT_ADDRS=(10.0.10.201 10.0.10.202 10.0.10.203)
# A fixed seed: the kernel draws a random one per rule otherwise, and each node would hash a flow
# to its own choice of endpoint.
NFT_SEED=0x54444d31
nft_bird_dir() { echo "$TB_STATE/$1-bird"; }
nft_birdc() { local node="$1"; shift; timeout 5 birdc -s "$(nft_bird_dir "$node")/bird.ctl" "$@"; }
nft_node_ruleset() {
    local node="$1" own eps
    own="${SNAT_ADDRS[$(node_index "$node")]}"
    eps="0 : $(tb_ip ep1), 1 : $(tb_ip ep2)"
    cat <<EOF
table ip ecmp_lb {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $VIP tcp dport 56004 dnat ip to jhash ip saddr . th sport mod 2 seed $NFT_SEED map { $eps } : $TB_ECHO_PORT
    ip daddr $VIP udp dport 56003 dnat ip to jhash ip saddr . th sport mod 2 seed $NFT_SEED map { $eps } : $TB_ECHO_PORT
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip daddr { $(tb_ip ep1), $(tb_ip ep2) } snat ip to $own
  }
  # A reply to a source address this node holds no NAT state for (another node's, or its own
  # from before a reboot) would go back to the router and loop between the nodes: drop it.
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip daddr { ${SNAT_ADDRS[0]}, ${SNAT_ADDRS[1]}, ${SNAT_ADDRS[2]} } drop
  }
}
EOF
}
nft_node_bird_conf() {
    local node="$1" own a peers=() c="${COMMUNITY%%:*},${COMMUNITY#*:}"
    own="${SNAT_ADDRS[$(node_index "$node")]}"
    for a in "${SNAT_ADDRS[@]}"; do [[ "$a" == "$own" ]] || peers+=("$a"); done
    cat <<EOF
# Generated by testbed/ecmp.sh --system nftables: $node's BIRD, as Tandem's would be.
router id $(tb_ip "$node");
log "$(nft_bird_dir "$node")/bird.log" all;
timeformat protocol "%FT%T";
protocol device { scan time 10; }
# What a drain gives up: the VIP and the backup routes of the peers' source addresses.
protocol static vips {
  ipv4;
  route $VIP/32 blackhole;
  route ${peers[0]}/32 blackhole;
  route ${peers[1]}/32 blackhole;
}
# This node's own source address: its established flows' replies.
protocol static own_source {
  ipv4;
  route $own/32 blackhole;
}
filter ecmp_export {
  if net = $VIP/32 then { bgp_med = 10; bgp_community.add(($c)); accept; }
  if net = $own/32 then { bgp_med = 10; bgp_community.add(($c)); accept; }
  if net = ${peers[0]}/32 || net = ${peers[1]}/32 then { bgp_med = 20; bgp_community.add(($c)); accept; }
  reject;
}
EOF
    ((BFD)) && cat <<EOF
protocol bfd {
  interface "*" { interval ${BGP_BFD_MS} ms; multiplier ${BGP_BFD_MULT}; };
}
EOF
    cat <<EOF
protocol bgp upstream {
  local as $BGP_NODE_ASN;
  neighbor $TB_GW_HOSTS as $BGP_ROUTER_ASN;
  hold time $HOLD;
  keepalive time $((HOLD / 3 > 1 ? HOLD / 3 : 1));
  connect delay time 0;
  connect retry time 1;
  error wait time 1, 16;
  $( ((BFD)) && echo "bfd on;" )
  ipv4 { import none; export filter ecmp_export; next hop self; };
}
EOF
}
# Boots an nftables node: forwarding, the ruleset, an empty conntrack table, its BIRD.
start_nft_node() {
    local node="$1" dir
    dir="$(nft_bird_dir "$node")"
    mkdir -p "$dir"
    nft_node_ruleset "$node" >"$TB_STATE/$node-lb.nft"
    tb_exec "$node" nft -f "$TB_STATE/$node-lb.nft"
    # (the conntrack sysctls exist once the ruleset's NAT has conntrack loaded in the namespace)
    tb_sysctl "$node" net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
        net.netfilter.nf_conntrack_tcp_loose=1
    tb_exec "$node" conntrack -F >/dev/null 2>&1 || true
    nft_node_bird_conf "$node" >"$dir/bird.conf"
    bird -p -c "$dir/bird.conf" || { log "BIRD refuses $dir/bird.conf"; return 1; }
    rm -f "$dir/bird.ctl"
    tb_exec "$node" bird -c "$dir/bird.conf" -s "$dir/bird.ctl" -P "$dir/bird.pid" </dev/null >>"$dir/bird.out" 2>&1
}
# A reboot of an nftables node: its BIRD dies (SIGKILL), the ruleset and the conntrack table go.
crash_nft_node() {
    local node="$1" p
    for p in $(node_birds "$node"); do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "$(nft_bird_dir "$node")/bird.pid"
    tb_exec "$node" nft flush ruleset
    tb_exec "$node" conntrack -F >/dev/null 2>&1 || true
}

if [[ "$SYSTEM" == tandem ]]; then
    for n in "${ALL[@]}"; do write_ecmp_config "$n"; start_ecmp_node "$n"; done
    nodes_desc="3 active-active Tandem nodes"
else
    for n in "${ALL[@]}"; do start_nft_node "$n"; done
    nodes_desc="3 nftables nodes (conntrack, no state sync)"
fi
log "test bed $TB: $nodes_desc, BGP router in $VCN (AS $BGP_ROUTER_ASN, $( ((BFD)) && echo "BFD ${BGP_BFD_MS} ms x $BGP_BFD_MULT" || echo "no BFD"), hold ${HOLD} s); $( [[ "$SYSTEM" == tandem ]] && echo "$TANDEM, " )$TANDEM_ECHO; waiting for every session and route"
all_announced() {
    local n
    for n in "${ALL[@]}"; do
        [[ "$(bgp_session_state "$n")" == Established ]] || return 1
        bgp_has_nexthop "$VIP" "$n" || return 1
    done
}
if ! tb_wait_for 90 "every node's session Established and its route to $VIP in the vcn" all_announced; then
    for n in "${ALL[@]}"; do log "  $n: session $(bgp_session_state "$n") $(bgp_session_error "$n")$( [[ "$SYSTEM" == tandem ]] && echo ", in sync $(sync_state "$n")")"; done
    log "the nodes never all announced $VIP"; exit 1
fi
if [[ "$SYSTEM" == tandem ]]; then
    for n in "${ALL[@]}"; do
        s="$(sync_state "$n")"
        [[ "$s" != false ]] || { log "$n announces $VIP but says it is not in sync"; exit 1; }
    done
fi
log "router: $(bgp_nexthops "$VIP" | wc -l) next hops for $VIP ($(bgp_nexthops "$VIP" | tr '\n' ' '))"
bgp_routes "$VIP" >"$TB_STATE/routes-initial.txt"
problems=()
grep -q "communities=.*(${COMMUNITY/:/,})" "$TB_STATE/routes-initial.txt" ||
    problems+=("the router's paths lack the community $COMMUNITY: $(tr '\n' ';' <"$TB_STATE/routes-initial.txt")")

# ---------------------------------------------------------------------------------------------
# The flows, for the whole test. Started directly (not through a shell function): $! is the flows
# process, whose open sockets are the live flows.

flow_args=(flows --interval-ms "$INTERVAL_MS" --stall-limit "$STALL_LIMIT" --duration 86400 --connect-timeout 30
           --ready-file "$TB_STATE/flows.ready")
((TCP_FLOWS)) && flow_args+=(--tcp-target "$VIP:56004" --tcp "$TCP_FLOWS")
((UDP_FLOWS)) && flow_args+=(--udp-target "$VIP:56003" --udp "$UDP_FLOWS")
ip netns exec "$(tb_ns client)" "$TANDEM_ECHO" "${flow_args[@]}" >"$TB_STATE/flows.json" 2>"$TB_STATE/flows.log" &
FLOWS_PID=$!
t_flows="$(now_ms)"
tb_wait_for 40 "the flows to be established" test -f "$TB_STATE/flows.ready" ||
    { log "the flows were not all established through the VIP"; exit 1; }
t_ready="$(now_ms)"
log "flows established in $((t_ready - t_flows)) ms: $TCP_FLOWS TCP to $VIP:56004, $UDP_FLOWS UDP to $VIP:56003"

live_now() { # -> tcp udp: the flows process's open sockets
    tb_exec client ss -tuanpH 2>/dev/null | awk -v p="pid=$FLOWS_PID," '
        index($0, p) && $1 == "tcp" { t++ } index($0, p) && $1 == "udp" { u++ } END { print t + 0, u + 0 }'
}
read -r live_tcp live_udp < <(live_now)
((live_tcp == TCP_FLOWS && live_udp == UDP_FLOWS)) ||
    { log "live flow sockets ($live_tcp TCP, $live_udp UDP) do not match the flows started"; exit 1; }
sleep 2.5                       # every flow has refreshed its set element since the start
spread initial
phases_json=()
# phase_end NAME FROM_MS PREVIOUS: counts the live flows, reads the spread (compared with the
# PREVIOUS phase's), records the phase.
phase_end() {
    local name="$1" from="$2" prev="$3" t tcp udp
    t="$(now_ms)"
    spread "$name"
    read -r tcp udp < <(live_now)
    phases_json+=("{\"phase\":\"$name\",\"fromUnixMs\":$from,\"toUnixMs\":$t,\"spreadBefore\":\"$prev\",\"liveTcp\":$tcp,\"liveUdp\":$udp,\"lostTcp\":$((live_tcp - tcp)),\"lostUdp\":$((live_udp - udp)),\"nexthops\":\"$(bgp_nexthops "$VIP" | tr '\n' ' ' | sed 's/ $//')\",\"extra\":$PHASE_EXTRA}")
    log "$name: flows alive TCP $tcp/$TCP_FLOWS (lost $((live_tcp - tcp))), UDP $udp/$UDP_FLOWS (lost $((live_udp - udp))); spread $(spread_line "$name")"
    live_tcp=$tcp live_udp=$udp
}
spread_line() {
    python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
c = lambda v, proto: sum(1 for p, _ in v if p == proto)
print(", ".join(f"{n} {len(v)} ({c(v, sys.argv[2])} tcp, {c(v, sys.argv[3])} udp)" for n, v in d.items()))' \
        "$TB_STATE/spread-$1.json" tcp udp
}
log "initial spread: $(spread_line initial)"

# ---------------------------------------------------------------------------------------------
# 1. Kill: a silent death (link down first, so no FIN or Cease reaches the router), then the
#    daemon; its BIRD must go with it. (nftables: the link, then BIRD, ruleset and conntrack.)

birds_before="$(node_birds "$KILLED" | tr '\n' ' ')"
[[ -n "${birds_before// /}" ]] || problems+=("no BIRD process in $KILLED's namespace before the kill")
if [[ "$SYSTEM" == tandem ]]; then
    pid="$(cat "$TB_STATE/$KILLED.pid")"
    t_kill="$(now_ms)"
    tb_exec "$KILLED" ip link set eth0 down
    kill -KILL "$pid" 2>/dev/null || true
    while tb_alive "$pid"; do sleep 0.01; done
    rm -f "$TB_STATE/$KILLED.pid"
    log "kill: $KILLED's link down, daemon (pid $pid) SIGKILLed"
else
    t_kill="$(now_ms)"
    tb_exec "$KILLED" ip link set eth0 down
    crash_nft_node "$KILLED"
    log "kill: $KILLED's link down, its BIRD (pid ${birds_before% }) SIGKILLed, ruleset and conntrack table flushed"
fi
bird_outlived=false
bird_death_ms=-1
deadline=$(( $(now_ms) + 2000 ))
left="$birds_before"
while :; do
    left=""
    for p in $birds_before; do tb_alive "$p" && left+="$p "; done
    [[ -z "$left" ]] && { bird_death_ms=$(( $(now_ms) - t_kill )); break; }
    (($(now_ms) < deadline)) || break
    sleep 0.01
done
if [[ -n "$left" ]]; then
    bird_outlived=true
    problems+=("$KILLED's BIRD (pid $left) outlived its SIGKILLed daemon by more than 2 s")
    log "kill: FAILURE: $KILLED's BIRD (pid $left) outlived its daemon; killing it"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
fi
tb_exec "$KILLED" tc qdisc del dev eth0 clsact 2>/dev/null || true
drop_deadline=$(( t_kill + (HOLD + 10) * 1000 ))
t_drop=""
while (($(now_ms) < drop_deadline)); do
    bgp_has_nexthop "$VIP" "$KILLED" || { t_drop="$(now_ms)"; break; }
    sleep 0.01
done
kill_cause="$(bgp_session_error "$KILLED")"
case "$kill_cause" in
    *BFD*) detected_by=bfd ;;
    *"Hold timer"*) detected_by=hold-timer ;;
    "") detected_by=unknown ;;
    *) detected_by=other ;;
esac
if [[ -n "$t_drop" ]]; then
    drop_ms=$((t_drop - t_kill))
    log "kill: the router dropped $KILLED's next hop ${drop_ms} ms after the kill ($detected_by: $kill_cause)"
else
    drop_ms=-1
    problems+=("the router kept $KILLED as a next hop of $VIP $((HOLD + 10)) s after the kill")
    log "kill: the router still routes $VIP to $KILLED after $((HOLD + 10)) s"
    t_drop="$(now_ms)"
fi
((BFD)) && [[ "$detected_by" != bfd ]] && problems+=("BFD is on but the session ended by: ${kill_cause:-nothing recorded}")
# Down for --down seconds, and until every flow the kill broke has failed (--stall-limit + 1 s)
# and the sets have forgotten the moved flows' old path (2 s).
sleep_until_ms $(( t_kill + STALL_LIMIT * 1000 + 1000 > t_drop + 2500 ? t_kill + STALL_LIMIT * 1000 + 1000 : t_drop + 2500 ))
PHASE_EXTRA="{\"node\":\"$KILLED\",\"routeDroppedMs\":$drop_ms,\"detectedBy\":\"$detected_by\",\"cause\":$(printf '%s' "$kill_cause" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),\"birdOutlived\":$bird_outlived,\"birdDeathMs\":$bird_death_ms}"
phase_end kill "$t_kill" initial
sleep_until_ms $(( t_kill + DOWN_SECONDS * 1000 ))

# ---------------------------------------------------------------------------------------------
# 2. Return: it must announce again, but only once it is in sync.

tb_exec "$KILLED" ip link set eth0 up
tb_exec "$KILLED" ip route replace default via "$TB_GW_HOSTS" dev eth0
t_back="$(now_ms)"
if [[ "$SYSTEM" == tandem ]]; then
    start_ecmp_node "$KILLED"
    log "return: $KILLED's link up, daemon started"
else
    start_nft_node "$KILLED"
    log "return: $KILLED's link up, ruleset loaded, BIRD started (nothing to sync)"
fi
t_route="" t_sync="" sync_at_route="" early=false
back_deadline=$(( t_back + 90000 ))
while (($(now_ms) < back_deadline)); do
    if bgp_has_nexthop "$VIP" "$KILLED"; then
        t_route="$(now_ms)"
        [[ "$SYSTEM" == tandem ]] || break
        # Asked after the route was seen: "false" now means it announced before it was in sync.
        sync_at_route="$(sync_state "$KILLED")"
        [[ "$sync_at_route" == false ]] && early=true
        [[ -z "$t_sync" && "$sync_at_route" == true ]] && t_sync="$t_route"
        break
    fi
    if [[ "$SYSTEM" == tandem && -z "$t_sync" && "$(sync_state "$KILLED")" == true ]]; then t_sync="$(now_ms)"; fi
    sleep 0.05
done
if [[ -n "$t_route" ]]; then
    announce_ms=$((t_route - t_back))
    if [[ "$SYSTEM" == tandem ]]; then
        log "return: the router routes $VIP to $KILLED again ${announce_ms} ms after its start (in sync seen at $( [[ -n "$t_sync" ]] && echo "$((t_sync - t_back)) ms" || echo never); in sync when the route appeared: $sync_at_route)"
    else
        log "return: the router routes $VIP to $KILLED again ${announce_ms} ms after its start (no sync: its conntrack table is empty)"
    fi
else
    announce_ms=-1
    problems+=("$KILLED never announced $VIP again within 90 s of its return (session $(bgp_session_state "$KILLED"))")
    t_route="$(now_ms)"
fi
[[ "$early" == true ]] && problems+=("$KILLED announced $VIP before it was in sync (its API said not in sync once the route was there)")
sleep_until_ms $(( t_route + STALL_LIMIT * 1000 + 1000 > t_route + 2500 ? t_route + STALL_LIMIT * 1000 + 1000 : t_route + 2500 ))
PHASE_EXTRA="{\"node\":\"$KILLED\",\"announcedMs\":$announce_ms,\"inSyncSeenMs\":$( [[ -n "$t_sync" ]] && echo $((t_sync - t_back)) || echo null ),\"inSyncWhenAnnounced\":\"${sync_at_route:-}\",\"announcedBeforeSync\":$early,\"session\":\"$(bgp_session_state "$KILLED")\"}"
phase_end return "$t_back" kill

# ---------------------------------------------------------------------------------------------
# 3. Drain: `tandem node drain` on another node; the router must drop it, its flows move.

t_drain="$(now_ms)"
drain_pkts0="$(link_packets "$DRAINED")"
if [[ "$SYSTEM" == tandem ]]; then
    timeout 90 ip netns exec "$(tb_ns "$DRAINED")" "$TANDEM" node drain >"$TB_STATE/drain.out" 2>&1 &
else
    nft_birdc "$DRAINED" disable vips >"$TB_STATE/drain.out" 2>&1 &
fi
drain_pid=$!
# One loop watches the router's route, the drained link's counter and the command: the route must
# go, and the flows' packets to the drained node stop (its link's counter still for 1 s).
t_withdrawn="" drain_exited="" quiet_ms=-1 last_change="$t_drain" last_pkts="$drain_pkts0"
while (($(now_ms) < t_drain + 30000)); do
    if [[ -z "$t_withdrawn" ]] && ! bgp_has_nexthop "$VIP" "$DRAINED"; then t_withdrawn="$(now_ms)"; fi
    p="$(link_packets "$DRAINED")"
    if [[ "$p" != "$last_pkts" ]]; then last_pkts="$p"; last_change="$(now_ms)"; fi
    if [[ -n "$t_withdrawn" ]] && (($(now_ms) - last_change >= 1000)); then quiet_ms=$((last_change - t_drain)); break; fi
    # A drain command that failed withdraws nothing: give up 1 s after it exited.
    if [[ -z "$drain_exited" ]] && ! tb_alive "$drain_pid"; then drain_exited="$(now_ms)"; fi
    [[ -z "$t_withdrawn" && -n "$drain_exited" ]] && (($(now_ms) - drain_exited > 1000)) && break
    sleep 0.02
done
drain_rc=0
wait "$drain_pid" || drain_rc=$?
drain_out="$(tr '\n' ' ' <"$TB_STATE/drain.out")"
drain_cmd=ok
if ((drain_rc != 0)) && [[ "$SYSTEM" == nftables ]]; then
    drain_cmd=failed
    problems+=("birdc disable vips on $DRAINED exited $drain_rc: $drain_out")
    log "drain: 'birdc disable vips' on $DRAINED exited $drain_rc: $drain_out"
elif ((drain_rc != 0)); then
    if ! timeout 10 "$TANDEM" node --help 2>/dev/null | grep -qw drain; then
        drain_cmd=missing
        problems+=("tandem node drain: this build has no such command ($TANDEM)")
        log "drain: FAILURE: 'tandem node drain' does not exist in this build: $drain_out"
    else
        drain_cmd=failed
        problems+=("tandem node drain on $DRAINED exited $drain_rc: $drain_out")
        log "drain: 'tandem node drain' on $DRAINED exited $drain_rc: $drain_out"
    fi
else
    log "drain: $( [[ "$SYSTEM" == tandem ]] && echo "tandem node drain" || echo "birdc disable vips") on $DRAINED: $drain_out"
fi
if [[ -n "$t_withdrawn" ]]; then
    withdrawn_ms=$((t_withdrawn - t_drain))
    log "drain: the router dropped $DRAINED's next hop ${withdrawn_ms} ms after the drain command"
else
    withdrawn_ms=-1
    [[ "$drain_cmd" == ok ]] && problems+=("the router still routes $VIP to $DRAINED after its drain")
    t_withdrawn="$(now_ms)"
fi
if ((quiet_ms >= 0)); then
    log "drain: $DRAINED received the flows' last packet ${quiet_ms} ms after the drain command; $((last_pkts - drain_pkts0)) packets since the drain"
else
    [[ "$drain_cmd" == ok ]] && problems+=("$DRAINED still receives the flows' packets 30 s after its drain")
fi
drained_session="$(bgp_session_state "$DRAINED")"
sleep_until_ms $(( t_withdrawn + STALL_LIMIT * 1000 + 1000 > t_withdrawn + 2500 ? t_withdrawn + STALL_LIMIT * 1000 + 1000 : t_withdrawn + 2500 ))
PHASE_EXTRA="{\"node\":\"$DRAINED\",\"command\":\"$drain_cmd\",\"commandExit\":$drain_rc,\"commandOutput\":$(printf '%s' "$drain_out" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),\"withdrawnMs\":$withdrawn_ms,\"lastPacketMs\":$quiet_ms,\"packetsAfterDrain\":$(( ${last_pkts:-0} - ${drain_pkts0:-0} )),\"sessionAfter\":\"$drained_session\"}"
phase_end drain "$t_drain" return

# ---------------------------------------------------------------------------------------------
# The end: stop the flows (bounded), read their report, summarise.

kill -TERM "$FLOWS_PID" 2>/dev/null || true
for _ in $(seq 1 100); do tb_alive "$FLOWS_PID" || break; sleep 0.1; done
tb_alive "$FLOWS_PID" && { log "the flows did not stop within 10 s; killed"; kill -KILL "$FLOWS_PID" 2>/dev/null || true; }
flows_rc=0
wait "$FLOWS_PID" || flows_rc=$?
FLOWS_PID=""
tail -n 1 "$TB_STATE/flows.json" >"$TB_STATE/flows.last.json" 2>/dev/null || true
[[ -s "$TB_STATE/flows.last.json" ]] || echo '{}' >"$TB_STATE/flows.last.json"

set +e
VIP_SOURCE="$VIP_SOURCE" SYSTEM="$SYSTEM" EXPECT_BREAKS="$EXPECT_BREAKS" python3 - "$TB_STATE" "$flows_rc" "$TCP_FLOWS" "$UDP_FLOWS" "$BFD" "$HOLD" "$t_ready" "$((t_ready - t_flows))" \
    "$KILLED" "$DRAINED" "${phases_json[@]}" <<'PY' 3<<<"$(printf '%s\n' "${problems[@]}")"
import json, os, sys
state, flows_rc, tcp_n, udp_n, bfd, hold, t_ready, est_ms, killed, drained = sys.argv[1:11]
phases = [json.loads(x) for x in sys.argv[11:]]
problems = [p for p in os.fdopen(3).read().split("\n") if p]
system = os.environ.get("SYSTEM", "tandem")
expect_breaks = os.environ.get("EXPECT_BREAKS") == "1"
breaks = []   # flows lost: a failure, or with --expect-breaks the measured outcome
tcp_n, udp_n = int(tcp_n), int(udp_n)
nodes = ["llb1", "llb2", "llb3"]
def load(name):
    try:
        return json.load(open(os.path.join(state, name)))
    except (OSError, ValueError):
        return {}
rep = load("flows.last.json")
spreads = {n: load(f"spread-{n}.json") for n in ("initial", "kill", "return", "drain")}
def counts(s):
    return {n: {"tcp": sum(1 for p, _ in s.get(n, []) if p == "tcp"), "udp": sum(1 for p, _ in s.get(n, []) if p == "udp"),
                "total": len(s.get(n, []))} for n in nodes}
def owner(s):
    m = {}
    for n in nodes:
        for p, port in s.get(n, []):
            m.setdefault((p, port), []).append(n)
    return m
stalls = rep.get("stalls", [])
expect = {"initial": set(nodes), "kill": set(nodes) - {killed}, "return": set(nodes), "drain": set(nodes) - {drained}}
def check_spread(name):
    c = counts(spreads[name])
    for n in nodes:
        if n in expect[name] and c[n]["total"] == 0:
            problems.append(f"{name}: no flow goes through {n} (ECMP does not spread over it)")
        if n not in expect[name] and c[n]["total"] > 0:
            problems.append(f"{name}: {c[n]['total']} flows still go through {n}")
    m = owner(spreads[name])
    dup = sum(1 for v in m.values() if len(v) > 1)
    return c, len(m), dup
initial, seen0, dup0 = check_spread("initial")
if seen0 != tcp_n + udp_n:
    problems.append(f"initial: the router saw {seen0} flows, {tcp_n + udp_n} were started")
out_phases = []
for ph in phases:
    name = ph["phase"]
    after, seen, dup = check_spread(name)
    a, b = owner(spreads[ph["spreadBefore"]]), owner(spreads[name])
    moved = sum(1 for k, v in b.items() if k in a and a[k] != v)
    within = [s[3] - s[2] for s in stalls if s[3] > ph["fromUnixMs"] and s[2] < ph["toUnixMs"]]
    lost = ph["lostTcp"] + ph["lostUdp"]
    if lost:
        (breaks if expect_breaks else problems).append(f"{name}: {ph['lostTcp']} TCP and {ph['lostUdp']} UDP flows failed")
    out_phases.append(dict(phase=name, **ph["extra"], nexthops=ph["nexthops"].split(), survived={"tcp": ph["liveTcp"], "udp": ph["liveUdp"]},
                           lost={"tcp": ph["lostTcp"], "udp": ph["lostUdp"]},
                           longestStallMs=round(max(within), 1) if within else None,
                           spreadBefore=counts(spreads[ph["spreadBefore"]]), spreadAfter=after, flowsMoved=moved,
                           flowsSeen=seen, flowsOnTwoNodes=dup))
tcp = rep.get("tcp", {}); udp = rep.get("udp", {})
if not rep:
    problems.append("no report from the flows")
if expect_breaks:
    # Broken flows are the result; the flows client must still have run and reported (exit 1 means
    # flows failed, 2 a client that could not run).
    ok = not problems and flows_rc in ("0", "1") and bool(rep)
else:
    ok = (not problems and flows_rc == "0" and tcp.get("survived") == tcp_n and udp.get("survived") == udp_n
          and all(p["lost"]["tcp"] == 0 and p["lost"]["udp"] == 0 for p in out_phases))
ph = {p["phase"]: p for p in out_phases}
g = lambda name, key: ph.get(name, {}).get(key)
out = {"test": "ecmp", "system": system, "expectBreaks": expect_breaks, "ok": ok, "nodes": 3, "bfd": bfd == "1", "holdSeconds": int(hold),
       "source": "vip" if os.environ.get("VIP_SOURCE") == "1" else "per-node",
       "tcp": {"survived": tcp.get("survived", 0), "total": tcp_n}, "udp": {"survived": udp.get("survived", 0), "total": udp_n},
       "longestStallMs": rep.get("longestStallMs"), "flowsEstablishedMs": int(est_ms),
       "killRouteDroppedMs": g("kill", "routeDroppedMs"), "detectedBy": g("kill", "detectedBy"),
       "returnAnnouncedMs": g("return", "announcedMs"), "drainWithdrawnMs": g("drain", "withdrawnMs"),
       "drainLastPacketMs": g("drain", "lastPacketMs"),
       "spreadInitial": initial, "phases": out_phases, "problems": problems, "breaks": breaks,
       "flowsClient": {k: rep.get(k) for k in ("loopLagMs", "loopCpuPercent", "sendRatePercent", "udpEndpoints")}}
fmt = lambda c: " ".join(f"{n} {v['total']} ({v['tcp']}/{v['udp']})" for n, v in c.items())
st = lambda v: "-" if v is None else f"{v} ms"
ms = lambda v: "never" if v is None or v < 0 else f"{v} ms"
nodes_desc = "3 active-active Tandem nodes" if system == "tandem" else "3 nftables nodes, conntrack without state sync"
lines = [f"\necmp summary ({nodes_desc}, BGP {'with BFD 100 ms x 3' if bfd == '1' else 'without BFD'}, hold {hold} s):",
         f"  flows survived: TCP {out['tcp']['survived']}/{tcp_n}, UDP {out['udp']['survived']}/{udp_n}; longest stall {rep.get('longestStallMs')} ms; "
         f"established through the VIP in {est_ms} ms",
         f"  spread per node (flows: tcp/udp): initial {fmt(initial)}"]
for p in out_phases:
    extra = {"kill": lambda p: f"{p['node']} killed: route dropped after {ms(p['routeDroppedMs'])} ({p['detectedBy']}: {p['cause'] or '-'}); "
                               f"its BIRD {'OUTLIVED it' if p['birdOutlived'] else 'died with it'}",
             "return": lambda p: (f"{p['node']} back: announced {ms(p['announcedMs'])} after its start (in sync seen at {st(p['inSyncSeenMs'])}, "
                                  f"{'BEFORE in sync' if p['announcedBeforeSync'] else 'in sync'})" if system == "tandem" else
                                  f"{p['node']} back: announced {ms(p['announcedMs'])} after its start (no state to sync)"),
             "drain": lambda p: f"{p['node']} drained (command {p['command']}): route withdrawn {ms(p['withdrawnMs'])} after the command, "
                                f"last packet to it at {ms(p['lastPacketMs'])}; session {p['sessionAfter']}"}[p["phase"]](p)
    lines.append(f"  {p['phase']}: {extra}")
    lines.append(f"    flows lost TCP {p['lost']['tcp']} UDP {p['lost']['udp']}; longest stall {st(p['longestStallMs'])}; "
                 f"spread {fmt(p['spreadBefore'])} -> {fmt(p['spreadAfter'])}; {p['flowsMoved']} flows changed node")
lines += [f"  problem: {x}" for x in problems]
lines += [f"  flows broke (expected, measured): {x}" for x in breaks]
if expect_breaks:
    lost_t, lost_u = tcp_n - out["tcp"]["survived"], udp_n - out["udp"]["survived"]
    lines.append(f"  {'PASS' if ok else 'FAIL'}: {f'{lost_t} TCP and {lost_u} UDP flows broke (--expect-breaks: measured, not a failure)' if ok else 'A CHECK FAILED'}")
else:
    lines.append(f"  {'PASS' if ok else 'FAIL'}: {'every flow survived' if ok else 'FLOWS LOST OR A CHECK FAILED'}")
if rep and (rep.get("sendRatePercent", 100) < 95 or rep.get("loopLagMs", 0) > 50):
    lines.append(f"  note: the flows client was overloaded ({rep.get('sendRatePercent')} % of its send ticks ran, timers up to "
                 f"{rep.get('loopLagMs')} ms late): its stall figures include its own delays")
for x in rep.get("failures", [])[:5]:
    lines.append(f"    failed: {x.get('flow')}: {x.get('reason')}")
print("\n".join(lines), file=sys.stderr)
print(json.dumps(out))
sys.exit(0 if ok else 1)
PY
rc=$?
set -e
exit "$rc"
