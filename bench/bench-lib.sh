# shellcheck shell=bash
# Helpers for bench/datapath.sh and bench/cost.sh: the test bed, the load-balancing modes, the
# checks and the load tools. Sourced after testbed/lib.sh (needs TB, TB_STATE, tb_exec, tb_ip, ...).

BENCH_VIP="${TB_VIP:-10.0.10.143}"
BENCH_TCP_PORT=56002          # VIP:56002/tcp -> ep1:80, ep2:80
BENCH_UDP_PORT=56003          # VIP:56003/udp -> ep1:$EP_UDP_PORT, ep2:$EP_UDP_PORT
EP_HTTP_PORT=80
EP_UDP_PORT="${EP_UDP_PORT:-9000}"   # tandem-echo's port; bench/cost.sh runs its own echo on 9001

bench_log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# The bed and the run.

# Picks a fresh, unused test bed name PREFIX + 5 digits unless TB is set, and points TB_STATE at it.
bench_pick_tb() {
    local prefix="$1"
    if [[ -z "${BENCH_TB:-}" ]]; then
        for _ in 1 2 3 4 5 6 7 8; do
            BENCH_TB="$prefix$(printf '%05d' $(((RANDOM * 32768 + RANDOM + $$) % 100000)))"
            [[ ! -d "$TB_STATE_ROOT/$BENCH_TB" ]] && ! ip netns list | grep -q "^$BENCH_TB-" && break
        done
    fi
    TB="$BENCH_TB"
    TB_STATE="$TB_STATE_ROOT/$TB"
    export TB NODES=1
}

# Builds the one-node bed (testbed/up.sh), tunes client and llb1 for many short connections and
# routes the VIP to llb1. The caller tears it down (tb_down) on every exit path.
bench_bed_up() {
    "$TB_REPO/testbed/up.sh" >&2
    local r
    for r in client llb1; do
        tb_exec "$r" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 >/dev/null
    done
    tb_route_vip llb1
}

# Mode names to function prefixes (tandem-xdp -> tandem_xdp_setup).
bench_mode_fn() { echo "${1//-/_}"; }

# Median of the numeric arguments; "(failed)" if any run produced no number.
bench_median() {
    local x
    for x in "$@"; do [[ "$x" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || { echo "(failed)"; return 0; }; done
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {
        if (NR % 2) m = v[(NR+1)/2]; else m = (v[NR/2] + v[NR/2+1]) / 2
        if (m == int(m)) printf "%d", m; else printf "%.2f", m }'
}

# ---------------------------------------------------------------------------------------------
# Mode (a): the kernel, nftables DNAT (numgen round robin) + SNAT to the VIP, in llb1.

nftables_setup() {
    local dir="$TB_STATE/bench-nftables" e1 e2
    e1="$(tb_ip ep1)"; e2="$(tb_ip ep2)"
    # Called where errexit is off: every step checks its own status.
    mkdir -p "$dir" || return 1
    tb_exec llb1 sysctl -n net.ipv4.ip_forward >"$dir/ip_forward.saved" || return 1
    tb_exec llb1 sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
        net.ipv4.conf.eth0.send_redirects=0 >/dev/null || return 1
    cat >"$dir/ruleset.nft" <<EOF
table ip tandem_bench {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $BENCH_VIP tcp dport $BENCH_TCP_PORT dnat ip to numgen inc mod 2 map { 0 : $e1 . $EP_HTTP_PORT, 1 : $e2 . $EP_HTTP_PORT }
        ip daddr $BENCH_VIP udp dport $BENCH_UDP_PORT dnat ip to numgen inc mod 2 map { 0 : $e1 . $EP_UDP_PORT, 1 : $e2 . $EP_UDP_PORT }
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        # Full NAT: replies come back to the VIP, which the vcn routes to llb1.
        ct status dnat ip daddr { $e1, $e2 } snat ip to $BENCH_VIP
    }
}
EOF
    tb_exec llb1 nft -f "$dir/ruleset.nft" || { bench_log "nft rejected $dir/ruleset.nft"; return 1; }
}

nftables_teardown() {
    local dir="$TB_STATE/bench-nftables" fwd=0
    tb_exec llb1 nft delete table ip tandem_bench 2>/dev/null || true
    [[ -f "$dir/ip_forward.saved" ]] && fwd="$(cat "$dir/ip_forward.saved")"
    tb_exec llb1 sysctl -qw "net.ipv4.ip_forward=$fwd" >/dev/null 2>&1 || true
    bench_flush_conntrack
    return 0
}

bench_flush_conntrack() {
    if command -v conntrack >/dev/null; then
        tb_exec llb1 conntrack -F >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------------------------------------
# Mode (b): HAProxy, mode tcp, roundrobin, VIP on llb1's lo. No UDP.

HAPROXY_THREADS="${HAPROXY_THREADS:-1}"

haproxy_setup() {
    local dir="$TB_STATE/bench-haproxy"
    command -v haproxy >/dev/null || { bench_log "haproxy not installed (apt-get install -y haproxy)"; return 1; }
    mkdir -p "$dir" || return 1
    cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 8000
    nbthread $HAPROXY_THREADS

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend vip
    bind $BENCH_VIP:$BENCH_TCP_PORT
    default_backend endpoints

backend endpoints
    balance roundrobin
    server ep1 $(tb_ip ep1):$EP_HTTP_PORT
    server ep2 $(tb_ip ep2):$EP_HTTP_PORT
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" || { bench_log "haproxy config invalid"; return 1; }
    tb_exec llb1 ip addr add "$BENCH_VIP/32" dev lo || return 1
    tb_exec llb1 haproxy -D -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid" </dev/null ||
        { bench_log "haproxy did not start"; return 1; }
    tb_wait_for 10 "haproxy listening" \
        tb_exec client curl -fsS -m 1 -o /dev/null "http://$BENCH_VIP:$BENCH_TCP_PORT/"
}

haproxy_teardown() {
    local dir="$TB_STATE/bench-haproxy" pid i
    if [[ -f "$dir/haproxy.pid" ]]; then
        for pid in $(cat "$dir/haproxy.pid"); do
            if [[ "$pid" =~ ^[0-9]+$ ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
        done
        for i in $(seq 1 30); do
            local alive=0
            for pid in $(cat "$dir/haproxy.pid"); do kill -0 "$pid" 2>/dev/null && alive=1; done
            [[ $alive == 0 ]] && break
            sleep 0.1
        done
        rm -f "$dir/haproxy.pid"
    fi
    tb_exec llb1 ip addr del "$BENCH_VIP/32" dev lo 2>/dev/null || true
    return 0
}

# ---------------------------------------------------------------------------------------------
# Mode "direct" (bench/cost.sh's baseline): no load balancer; the client reaches ep1 and ep2 at
# their own addresses through llb1 acting as a plain router, both ways, so a packet crosses the same
# namespaces and veths as through a load balancer in llb1 (client -> vcn -> llb1 -> vcn -> ep and
# back the same way). The vcn's policy routes (table BENCH_DIRECT_TABLE) send client -> ep and
# ep -> client traffic to llb1; llb1 forwards it (ip_forward=1, no redirects, no rp_filter).

BENCH_DIRECT_TABLE=100

direct_setup() {
    local dir="$TB_STATE/bench-direct" c ep ip
    c="$(tb_ip client)"
    mkdir -p "$dir" || return 1
    tb_exec llb1 sysctl -n net.ipv4.ip_forward >"$dir/ip_forward.saved" || return 1
    tb_exec llb1 sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
        net.ipv4.conf.eth0.send_redirects=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 >/dev/null || return 1
    for ep in $(tb_endpoints); do
        ip="$(tb_ip "$ep")"
        ip -n "$(tb_ns vcn)" route replace "$ip/32" via "$(tb_ip llb1)" dev "$(tb_link llb1)" onlink table "$BENCH_DIRECT_TABLE" || return 1
        ip -n "$(tb_ns vcn)" rule add iif "$(tb_link client)" to "$ip/32" lookup "$BENCH_DIRECT_TABLE" pref 1000 || return 1
        ip -n "$(tb_ns vcn)" rule add iif "$(tb_link "$ep")" to "$c/32" lookup "$BENCH_DIRECT_TABLE" pref 1000 || return 1
    done
    ip -n "$(tb_ns vcn)" route replace "$c/32" via "$(tb_ip llb1)" dev "$(tb_link llb1)" onlink table "$BENCH_DIRECT_TABLE" || return 1
}

direct_teardown() {
    local dir="$TB_STATE/bench-direct" fwd=0
    while ip -n "$(tb_ns vcn)" rule del pref 1000 2>/dev/null; do :; done
    ip -n "$(tb_ns vcn)" route flush table "$BENCH_DIRECT_TABLE" 2>/dev/null || true
    [[ -f "$dir/ip_forward.saved" ]] && fwd="$(cat "$dir/ip_forward.saved")"
    tb_exec llb1 sysctl -qw "net.ipv4.ip_forward=$fwd" >/dev/null 2>&1 || true
    return 0
}

# Packets llb1's eth0 has received (every mode's traffic must cross it).
bench_llb1_rx() { tb_exec llb1 cat /sys/class/net/eth0/statistics/rx_packets; }

# ---------------------------------------------------------------------------------------------
# Checks through the VIP from the client.

# Succeeds if N requests through the VIP return nginx's welcome page and both endpoints answered.
bench_verify_tcp() {
    local n="${1:-6}" i hdrs seen="" out="$TB_STATE/verify.out"
    for i in $(seq 1 "$n"); do
        if ! tb_exec client curl -fsS -m 2 -D "$out.hdr" -o "$out" "http://$BENCH_VIP:$BENCH_TCP_PORT/"; then
            bench_log "verify: request $i through the VIP failed"
            return 1
        fi
        grep -q "Welcome to nginx" "$out" || { bench_log "verify: not nginx's page"; return 1; }
        hdrs="$(tr -d '\r' <"$out.hdr" | awk -F': ' 'tolower($1)=="x-tandem-endpoint" {print $2}')"
        seen="$seen $hdrs"
    done
    bench_log "verify: endpoints seen through the VIP:$seen"
    [[ "$seen" == *ep1* && "$seen" == *ep2* ]] || { bench_log "verify: not both endpoints"; return 1; }
}

bench_verify_udp() {
    tb_exec client "$TANDEM_ECHO" probe --udp --target "$BENCH_VIP:$BENCH_UDP_PORT" --timeout 2 >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Load tools. Each prints one number (or nothing on failure) and leaves its raw output in a file.

# wrk through the VIP. bench_wrk OUTFILE [extra wrk args...]
bench_wrk() {
    local out="$1"; shift
    timeout -k 5 $((DURATION + 30)) ip netns exec "$(tb_ns client)" \
        wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d "${DURATION}s" --latency "$@" \
        "http://$BENCH_VIP:$BENCH_TCP_PORT/" >"$out" 2>&1 || true
}

# Requests/sec from wrk output.
wrk_rps() { awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$1"; }

# A latency percentile (50%, 99%) from `wrk --latency` output, in ms.
wrk_pct_ms() {
    awk -v p="$2" '$1 == p {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
        printf "%.2f", v }' "$1"
}

# Error summary ("" if none): socket errors and non-2xx responses.
wrk_errors() {
    local e
    e="$(grep -E '^ +Socket errors:|^ +Non-2xx' "$1" | sed 's/^ *//' | tr '\n' ';' || true)"
    echo "${e%;}"
}

# UDP flood through the VIP; prints the JSON line.
bench_flood() {
    local out="$1"
    timeout -k 5 $((DURATION + 30)) ip netns exec "$(tb_ns client)" \
        "$TANDEM_ECHO" flood --target "$BENCH_VIP:$BENCH_UDP_PORT" --size "$UDP_SIZE" \
        --duration "$DURATION" --rate "$UDP_RATE" --flows "$UDP_FLOWS" --window "$UDP_WINDOW" \
        >"$out" 2>&1 || true
}

json_num() { sed -n "s/.*\"$2\":\([0-9.eE+-]*\).*/\1/p" "$1" | head -1; }
