# shellcheck shell=bash
# Hook through which bench/datapath.sh benchmarks Tandem: runs `tandem node run` in llb1 with a
# fullnat TCP service (VIP:56002 -> ep1:80, ep2:80) and a fullnat UDP service (VIP:56003 ->
# ep1:9000, ep2:9000), both round-robin.
#
# Contract (sourced by bench/datapath.sh after testbed/lib.sh and bench/bench-lib.sh):
#   tandem_setup     return 0 once the VIP serves through Tandem; non-zero marks the column unavailable.
#   tandem_teardown  SIGTERM the daemon (it detaches its programs) and wait for it.
# TANDEM_ARGS adds flags to `tandem node run` (e.g. --xdp).
# TANDEM_BIN overrides the binary (default: .build/release/tandem if built, else .build/debug/tandem).

tandem_bin() {
    if [[ -n "${TANDEM_BIN:-}" ]]; then echo "$TANDEM_BIN"; return; fi
    if [[ -x "$TB_REPO/.build/release/tandem" ]]; then echo "$TB_REPO/.build/release/tandem"; else echo "$TB_REPO/.build/debug/tandem"; fi
}

tandem_setup() {
    local bin cfg
    bin="$(tandem_bin)"
    [[ -x "$bin" ]] || { bench_log "tandem binary not found at $bin (make build)"; return 1; }
    cfg="$TB_STATE/tandem-bench.yaml"
    cat >"$cfg" <<YAML
interfaces: [eth0]
services:
  - {externalIP: $BENCH_VIP, port: $BENCH_TCP_PORT, protocol: tcp, mode: fullnat, sel: rr, name: http,
     endpoints: [{ip: $(tb_ip ep1), port: $EP_HTTP_PORT}, {ip: $(tb_ip ep2), port: $EP_HTTP_PORT}]}
  - {externalIP: $BENCH_VIP, port: $BENCH_UDP_PORT, protocol: udp, mode: fullnat, sel: rr, name: udp,
     endpoints: [{ip: $(tb_ip ep1), port: $EP_UDP_PORT}, {ip: $(tb_ip ep2), port: $EP_UDP_PORT}]}
YAML
    setsid ip netns exec "$(tb_ns llb1)" "$bin" node run --config "$cfg" --bpf-object "$TB_REPO/bpf/obj/tandem_lb.o" \
        --log-level warning --no-state ${TANDEM_ARGS:-} </dev/null >"$TB_STATE/tandem.log" 2>&1 &
    echo $! >"$TB_STATE/tandem.pid"
    tb_wait_for 20 "tandem API" tb_exec llb1 "$bin" get lb -o json || { tail -5 "$TB_STATE/tandem.log" >&2; return 1; }
    bench_log "tandem $(basename "$bin") running in $(tb_ns llb1)"
}

tandem_teardown() {
    local pid
    pid="$(cat "$TB_STATE/tandem.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$TB_STATE/tandem.pid"
}

# Mode tandem-xdp: the same daemon with the XDP fast path (--xdp) in front of the TC program.
# bench/datapath.sh readies the bed for it (testbed/lib.sh tb_xdp_ready).
tandem_xdp_setup() {
    TANDEM_ARGS="--xdp ${TANDEM_ARGS:-}" tandem_setup || return 1
    tb_exec llb1 ip -d link show eth0 | grep -q "name tandem_xdp" || { bench_log "no XDP program on llb1 eth0"; return 1; }
}

tandem_xdp_teardown() { tandem_teardown; }
