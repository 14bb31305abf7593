# shellcheck shell=bash
# Tandem test bed: a BGP router in the vcn namespace (BIRD 2), for the nodes' BGP announcements
# (issue 17). Source after lib.sh; it defines functions and defaults only.
#
#   bgp_router_up [NODE...]     BIRD in ${TB}-vcn peering with every node (default: tb_nodes)
#   bgp_router_down             stops it, removes its routes and the peering addresses
#   bgp_node_yaml NODE [MODE]   the bgp: section of a node's config for this router
#   bgp_routes [VIP]            BIRD's paths for VIP/32, one line per path:
#                                 ROLE NEIGHBOR_IP via=NEXT_HOP best|alt as_path=.. med=.. communities=..
#   bgp_nexthops [VIP]          the kernel's next hops for VIP/32 in the vcn, sorted, one per line
#   bgp_session_state NODE      the router's BGP state of the session to NODE (a role or its IP):
#                                 Established, Active, Connect, Idle, OpenSent, ...
#   bgp_session_error NODE      the session's last error ("BGP Error: Hold timer expired", ...)
#   birdc_vcn ARGS...           birdc against the router
#
# The router: ASN BGP_ROUTER_ASN (65000), router id TB_GW_HOSTS (10.0.10.1), one eBGP session per
# node (to AS BGP_NODE_ASN, 65001; protocol named after the role, llb1..llb3), import all, export
# none. Its kernel protocol has `merge paths on`: equal BGP paths for a VIP go into the vcn's FIB as
# one multipath route, and net.ipv4.fib_multipath_hash_policy=1 makes the kernel spread flows over
# them by the L4 5-tuple. It exports only BGP routes, so the vcn's own routes (a /32 per host) are
# never touched; BIRD's kernel routes have metric 32 (BIRD's default), which a static route of the
# same prefix (metric 0, tb_route_vip's) would shadow, so bgp_router_up removes the static /32 of
# every VIP in BGP_VIPS (default TB_VIP): from then on BGP alone routes the VIPs.
#
# How the next hop resolves (routed bed). The vcn has no connected subnet to the nodes: 10.0.10.1/32
# sits on lo and each host is a /32 device route with proxy ARP. BIRD only accepts a direct
# (single-hop) eBGP neighbor that lies in a prefix of one of its interface addresses, so with the
# bed as it is every session stays Idle ("waiting for ... to become my neighbor"). Two ways out:
#  - multihop with a BIRD static device route per node for recursive next-hop resolution: works
#    for BGP, but a multihop session asks for multihop BFD (UDP 4784) while the nodes, to which the
#    router is a connected neighbor, run single-hop BFD (3784): BFD would never come up.
#  - what this file does: a point-to-point address `10.0.10.1 peer NODE_IP/32 noprefixroute` on
#    each node link v-NODE. BIRD then sees the node as a connected neighbor of that interface
#    (direct session, `interface "v-NODE"`, next hop on-link, single-hop BFD like the node's);
#    noprefixroute keeps the kernel from adding a route, so the vcn's routing is what it was (the
#    address is already local on lo; a second copy on the link changes nothing for forwarding).
# On TB_NET=l2 the nodes share br0's 10.0.10.0/24 with the router: direct sessions on br0, no
# extra addresses.
#
# `check link off`: a direct session otherwise drops the moment the node's link loses carrier,
# which a veth peer always sees when the node takes eth0 down; behind a real switch the router
# sees nothing and must rely on BFD or the hold timer, which is what the tests measure. The
# session's timers are the router's defaults except: hold time 240 s offered (the negotiated hold
# time is the lower of both ends, so the node's holdSeconds governs), and a fast reconnect
# (connect delay 1 s, retry 2 s, error wait 1-2 s; BIRD refuses a node's incoming connection
# while it waits after an error, 60 s by default), so a returning node's session comes back within
# seconds. Graceful restart stays BIRD's default (helper, "aware"): a router keeping a dead node's
# routes stale means the node asked for it.
#
# Environment: BGP_ROUTER_ASN (65000), BGP_NODE_ASN (65001), BGP_BFD (0; 1 adds a bfd protocol,
# 100 ms x 3 as BGP_BFD_MS x BGP_BFD_MULT, and `bfd on` on every session), BGP_VIPS (TB_VIP).
# Files (socket, config, log, pid) under $TB_STATE/bgp/; tb_down stops the router through its pid
# file ($TB_STATE/bgp/bird.pid) and the vcn namespace's processes, as any other.

BGP_ROUTER_ASN="${BGP_ROUTER_ASN:-65000}"
BGP_NODE_ASN="${BGP_NODE_ASN:-65001}"
BGP_BFD="${BGP_BFD:-0}"
BGP_BFD_MS="${BGP_BFD_MS:-100}"
BGP_BFD_MULT="${BGP_BFD_MULT:-3}"
BGP_VIPS="${BGP_VIPS:-$TB_VIP}"
BGP_DIR="$TB_STATE/bgp"
BGP_SOCK="$BGP_DIR/bird.ctl"
BGP_CONF="$BGP_DIR/bird.conf"
BGP_LOG="$BGP_DIR/bird.log"
BGP_PID="$BGP_DIR/bird.pid"

birdc_vcn() { timeout 5 birdc -s "$BGP_SOCK" "$@"; }

# The role of a node given as a role or an IP (empty if none).
bgp_role() {
    local r
    for r in llb1 llb2 llb3; do
        [[ "$1" == "$r" || "$1" == "$(tb_ip "$r")" ]] && { echo "$r"; return 0; }
    done
    return 1
}

# The link on which the router reaches the nodes' sessions.
bgp_iface() { if [[ "$TB_NET" == l2 ]]; then echo br0; else tb_link "$1"; fi; }

bgp_router_conf() {
    local n bfd=off
    ((BGP_BFD)) && bfd=on
    cat <<EOF
# Generated by testbed/bgp-lib.sh for test bed $TB: the vcn's BGP router.
log "$BGP_LOG" all;
router id $TB_GW_HOSTS;
debug protocols { states, routes, events };
timeformat log iso long ms;
timeformat protocol iso long ms;

protocol device { scan time 10; }

# ECMP into the kernel: equal paths merge into one multipath route. Only BGP routes go out, so the
# vcn's own routes stay as they are.
protocol kernel {
    ipv4 { import none; export filter { if source = RTS_BGP then accept; reject; }; };
    merge paths on;
    scan time 10;
}
EOF
    if ((BGP_BFD)); then
        cat <<EOF

protocol bfd {
    interface "$( [[ "$TB_NET" == l2 ]] && echo br0 || echo 'v-llb*' )" {
        min rx interval $BGP_BFD_MS ms; min tx interval $BGP_BFD_MS ms; multiplier $BGP_BFD_MULT;
    };
}
EOF
    fi
    cat <<EOF

template bgp tandem_node {
    local $TB_GW_HOSTS as $BGP_ROUTER_ASN;
    direct;
    check link off;
    bfd $bfd;
    hold time 240;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 2;
    ipv4 { import all; export none; };
}
EOF
    for n in "$@"; do
        printf 'protocol bgp %s from tandem_node { neighbor %s as %s; interface "%s"; }\n' \
            "$n" "$(tb_ip "$n")" "$BGP_NODE_ASN" "$(bgp_iface "$n")"
    done
}

# bgp_router_up [NODE...]: starts the router (fails if one runs already for this TB).
bgp_router_up() {
    local n vns vip nodes=("$@")
    ((${#nodes[@]})) || read -r -a nodes <<<"$(tb_nodes)"
    if ! command -v bird >/dev/null || ! command -v birdc >/dev/null; then
        tb_die "BIRD 2 not installed (apt-get install -y bird2)"; return 1
    fi
    [[ -f "$BGP_PID" ]] && tb_alive "$(cat "$BGP_PID")" && { tb_die "a BGP router already runs ($BGP_PID)"; return 1; }
    vns="$(tb_ns vcn)"
    mkdir -p "$BGP_DIR"
    tb_sysctl vcn net.ipv4.fib_multipath_hash_policy=1
    if [[ "$TB_NET" != l2 ]]; then
        for n in "${nodes[@]}"; do
            ip -n "$vns" addr replace "$TB_GW_HOSTS" peer "$(tb_ip "$n")/32" dev "$(tb_link "$n")" noprefixroute
        done
    fi
    printf '%s\n' "${nodes[@]}" >"$BGP_DIR/nodes"
    bgp_router_conf "${nodes[@]}" >"$BGP_CONF"
    bird -p -c "$BGP_CONF" || { tb_die "BIRD refuses $BGP_CONF"; return 1; }
    rm -f "$BGP_SOCK"
    # BIRD daemonizes and writes its pid file itself; the pid is BIRD's own.
    ip netns exec "$vns" bird -c "$BGP_CONF" -s "$BGP_SOCK" -P "$BGP_PID" </dev/null >>"$BGP_DIR/bird.out" 2>&1 ||
        { tb_die "BIRD did not start in $vns ($BGP_DIR/bird.out)"; return 1; }
    tb_wait_for 10 "the BGP router's control socket" birdc_vcn show status || return 1
    # BGP routes the VIPs from now on: a static /32 (metric 0) would shadow BIRD's (metric 32).
    for vip in $BGP_VIPS; do tb_unroute_vip "$vip"; done
}

# Stops the router; BIRD withdraws its kernel routes on a clean shutdown, and whatever a killed one
# left (proto bird) is flushed. Never fails.
bgp_router_down() {
    local vns pid n _
    vns="$(tb_ns vcn)"
    if [[ -f "$BGP_PID" ]]; then
        pid="$(cat "$BGP_PID" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && tb_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 30); do tb_alive "$pid" || break; sleep 0.1; done
            tb_alive "$pid" && kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$BGP_PID"
    fi
    rm -f "$BGP_SOCK"
    tb_ns_exists "$vns" || return 0
    ip -n "$vns" route flush proto bird 2>/dev/null || true
    if [[ "$TB_NET" != l2 && -f "$BGP_DIR/nodes" ]]; then
        # Deleting the address also deletes the kernel's routes through that link whose source it
        # was: the host's /32 goes with it. Put back what tb_add_host made.
        while read -r n; do
            ip -n "$vns" addr del "$TB_GW_HOSTS" peer "$(tb_ip "$n")/32" dev "$(tb_link "$n")" 2>/dev/null || true
            ip -n "$vns" route replace "$(tb_ip "$n")/32" dev "$(tb_link "$n")" src "$TB_GW_HOSTS" 2>/dev/null || true
        done <"$BGP_DIR/nodes"
    fi
    return 0
}

# The bgp: section of NODE's config, for the router bgp_router_up starts: mode active-active
# (cluster.election: false) or master-backup (cluster.cloud: bgp, election on), the nodes' BIRD
# files under $TB_STATE/NODE-bgp/. BGP_HOLD (3) is holdSeconds, BGP_BFD turns BFD on,
# BGP_COMMUNITIES ("65000:100 ...", default none) are added to every announcement.
#   bgp_node_yaml NODE [MODE] >>"$TB_STATE/NODE.yaml"
bgp_node_yaml() {
    local node="$1" mode="${2:-active-active}" c list=()
    cat <<YAML
bgp:
  asn: $BGP_NODE_ASN
  routerId: $(tb_ip "$node")
  mode: $mode
  holdSeconds: ${BGP_HOLD:-3}
  bfd: $( ((BGP_BFD)) && echo true || echo false )
  runDirectory: $TB_STATE/$node-bgp
  neighbors:
    - {address: $TB_GW_HOSTS, asn: $BGP_ROUTER_ASN}
YAML
    for c in ${BGP_COMMUNITIES:-}; do list+=("\"$c\""); done
    if ((${#list[@]})); then local IFS=,; echo "  communities: [${list[*]}]"; fi
}

# BIRD's view of VIP/32: one line per path (the protocol is the node's role).
bgp_routes() {
    local vip="${1:-$TB_VIP}"
    birdc_vcn show route "$vip/32" all 2>/dev/null | awk -v tbl=0 '
        function flush() { if (proto != "") printf "%s %s via=%s %s as_path=%s med=%s communities=%s\n", proto, nbr[proto], via, best, aspath, med, comm; proto = "" }
        BEGIN { split("llb1 '"$(tb_ip llb1)"' llb2 '"$(tb_ip llb2)"' llb3 '"$(tb_ip llb3)"'", a, " "); for (i = 1; i < 6; i += 2) nbr[a[i]] = a[i + 1] }
        /^Table / { next }
        / unicast \[/ {
            flush()
            s = $0; sub(/^.* unicast \[/, "", s); split(s, w, " "); proto = w[1]
            best = ($0 ~ /\] \* \(/) ? "best" : "alt"; via = "-"; aspath = "-"; med = "-"; comm = "-"
            next
        }
        $1 == "via" && proto != "" { via = $2 }
        $1 == "BGP.as_path:" { aspath = $2; for (i = 3; i <= NF; i++) aspath = aspath "," $i }
        $1 == "BGP.med:" { med = $2 }
        $1 == "BGP.community:" { comm = $2; for (i = 3; i <= NF; i++) comm = comm $i }
        END { flush() }'
}

# The vcn kernel's next hops for VIP/32 (one multipath route, or one single-path route).
bgp_nexthops() {
    local vip="${1:-$TB_VIP}"
    ip -n "$(tb_ns vcn)" route show "$vip/32" 2>/dev/null |
        awk '{ for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1) }' | sort -V
}

# bgp_has_nexthop VIP NODE: the kernel sends VIP (also) to NODE.
bgp_has_nexthop() { bgp_nexthops "$1" | grep -qx "$(tb_ip "$(bgp_role "$2")")"; }

bgp_session_state() {
    local role; role="$(bgp_role "$1")" || { tb_die "bgp_session_state: unknown node '$1'"; return 1; }
    birdc_vcn show protocols all "$role" 2>/dev/null | awk '$1 == "BGP" && $2 == "state:" { print $3; exit }'
}

bgp_session_error() {
    local role; role="$(bgp_role "$1")" || { tb_die "bgp_session_error: unknown node '$1'"; return 1; }
    birdc_vcn show protocols all "$role" 2>/dev/null | sed -n 's/^ *Last error: *//p' | head -n 1
}
