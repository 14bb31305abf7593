# shellcheck shell=bash
# Helpers for bench/datapath.sh: the load-balancing modes, the checks and the load tools.
# Sourced after testbed/lib.sh (needs TB, TB_STATE, tb_exec, tb_ip, tb_ns, ...).

BENCH_VIP="${TB_VIP:-10.0.10.143}"
BENCH_TCP_PORT=56002          # VIP:56002/tcp -> ep1:80, ep2:80
BENCH_UDP_PORT=56003          # VIP:56003/udp -> ep1:9000, ep2:9000
EP_HTTP_PORT=80
EP_UDP_PORT=9000

bench_log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

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
