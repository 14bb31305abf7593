#!/usr/bin/env bash
# Replication benchmark: a connection created in node 1's table -> present in node 2's table.
#   tandem      two `tandem node run` daemons (llb1, llb2) on a test bed. tandem-syncbench creates
#               flows by running llb1's own loaded datapath over synthetic SYNs (BPF_PROG_TEST_RUN:
#               the same entries and ring-buffer events real traffic makes) and times each flow's
#               arrival in llb2's tdm_ct when llb2's daemon has just written its tables (syscall
#               tracepoints, bpf/bench_arrivals.c), as the kernel rows' driver hears of entries
#               from ctnetlink NEW events, rather than polling on an interval.
#   conntrackd  conntrack-tools in FTFW mode between the same two namespaces, straight into the
#               peer's kernel table (DisableExternalCache), driven by tandem-ctbench through
#               libnetfilter_conntrack (bench/conntrackd-lib.sh).
#   kernel      Tandem replicating the same kernel entries: two conntrack-only nodes (datapath:
#               false, conntrack mode inject) in the same namespaces, same driver, same filter.
# Metrics: lag p50/p99/max at rising new-flow rates, entries/s in a burst, bytes on the wire per
# entry, CPU per 100k entries (both daemons), and for Tandem the bulk resync time of a restarted
# node for 100k and 1M connections. Markdown to stdout and bench/results/replication-latest.md.
# The service has 64 endpoints (addresses in the vcn with no host behind them: the synthetic SYNs
# are never sent anywhere) because fullnat to the VIP allows one connection per endpoint and port,
# and 1M connections need more than two endpoints' 64k ports each.
#
# Environment (defaults in brackets):
#   RATES ["1000 5000 10000 20000"]  new flows/s     RATE_SECONDS [5]    BURST [100000]
#   PIPELINE [200000]                flows queued in node 1 while its daemon is stopped, then released
#   BULK ["100000 1000000"]          connections in node 1 when node 2 restarts
#   IDLE_SECONDS [30]                CPU of both daemons holding the table after the burst, no new flows
#   IDLE_TABLE [1000000]             kernel rows: node 1's table filled to this many entries before the idle phase
#   SYSTEMS ["tandem kernel conntrackd"]    TB [random]     RESULTS [bench/results/replication-latest.md]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
RATES="${RATES:-1000 5000 10000 20000}"
RATE_SECONDS="${RATE_SECONDS:-5}"
BURST="${BURST:-100000}"
PIPELINE="${PIPELINE:-200000}"  # flows queued in a stopped node 1, then released (the nodes get a 32 MiB event ring)
BULK="${BULK:-100000 1000000}"
IDLE_SECONDS="${IDLE_SECONDS:-30}"  # after the burst: both daemons' CPU while they only hold the table
IDLE_TABLE="${IDLE_TABLE:-1000000}"  # kernel rows: node 1's conntrack table filled to this before the idle phase
SYSTEMS="${SYSTEMS:-tandem kernel conntrackd}"
RESULTS="${RESULTS:-$BENCH_DIR/results/replication-latest.md}"
export TB="${TB:-r$(tr -dc 'a-z0-9' </dev/urandom | head -c 5)}" NODES=2

[[ $EUID -eq 0 ]] || { echo "replication.sh: must run as root" >&2; exit 1; }
pick() { if [[ -x "$REPO/.build/release/$1" ]]; then echo "$REPO/.build/release/$1"; else echo "$REPO/.build/debug/$1"; fi; }
TANDEM="$(pick tandem)"
SYNCBENCH="$(pick tandem-syncbench)"
CTBENCH="$(pick tandem-ctbench)"
ARRIVALS="$REPO/bpf/obj/bench_arrivals.o"   # times node 2's map writes for tandem-syncbench
export TANDEM_ECHO="${TANDEM_ECHO:-$(pick tandem-echo)}"
for b in "$TANDEM" "$SYNCBENCH" "$TANDEM_ECHO"; do
    [[ -x "$b" ]] || { echo "replication.sh: $b not built (make build)" >&2; exit 1; }
done

# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
OUT="$TB_STATE/replication"
MAX_BULK=0
for n in $BULK; do (( n > MAX_BULK )) && MAX_BULK=$n; done
# Two map entries per connection, plus the rate and burst phases' flows, plus headroom.
CT_SIZE=$(( (MAX_BULK + BURST + PIPELINE + 200000) * 2 + 65536 ))

cleanup() {
    set +e
    tandem_stop kt-llb2; tandem_stop kt-llb1
    tandem_stop llb2; tandem_stop llb1
    if declare -F ctd_teardown >/dev/null; then ctd_teardown "$OUT/ctd"; fi
    bash "$REPO/testbed/down.sh" >/dev/null 2>&1
    if [[ -n "${SAVED_CT_MAX:-}" ]]; then echo "$SAVED_CT_MAX" >/proc/sys/net/netfilter/nf_conntrack_max; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$REPO/testbed/up.sh" >/dev/null
mkdir -p "$OUT"
# tandem-syncbench attaches to syscall tracepoints, which libbpf finds through tracefs.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
"$TANDEM" cluster keygen >"$OUT/cluster.key"
chmod 600 "$OUT/cluster.key"

tandem_config() { # ROLE PEER_ROLE
    cat >"$OUT/$1.yaml" <<YAML
interfaces: [eth0]
connectionTableSize: $CT_SIZE
eventRingBytes: 33554432   # room for PIPELINE events while node 1 is stopped
timeouts: {tcpSyn: 3600}
cluster:
  peers: [$(tb_ip "$2")]
  keyFile: $OUT/cluster.key
  election: false   # replication only: the injector drives both nodes directly
services:
  - externalIP: 10.0.10.143
    port: 56002
    protocol: tcp
    mode: fullnat
    sel: rr
    name: svc
    endpoints:
$(for i in $(seq 160 223); do echo "      - {ip: 10.0.10.$i, port: 80}"; done)
YAML
}

tandem_start() { # ROLE
    # In the benchmark's session, as conntrackd is: with autogroup scheduling (on by default) a
    # new session is a scheduling group of its own, and the two nodes' groups then share the two
    # cores evenly whatever their threads' priorities, which a node on a machine of its own never
    # meets (measured: a replication loop waiting 63-246 ms behind the other node's table scan).
    ip netns exec "$(tb_ns "$1")" "$TANDEM" node run --config "$OUT/$1.yaml" \
        --bpf-object "$REPO/bpf/obj/tandem_lb.o" --log-level warning --no-state </dev/null >"$OUT/$1.log" 2>&1 &
    echo $! >"$OUT/$1.pid"
}

tandem_stop() { # ROLE
    local pid
    pid="$(cat "$OUT/$1.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$OUT/$1.pid"
}

sync_json() { tb_exec "$1" "$TANDEM" get sync "${@:2}" -o json 2>/dev/null; }   # ROLE [--conntrack]
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }
in_sync() { [[ "$(sync_json "$@" | jget '["inSync"]' 2>/dev/null)" == True ]]; }
wait_in_sync() { # ROLE TIMEOUT_S [--conntrack]
    local t0=$SECONDS
    until in_sync "$1" "${@:3}"; do (( SECONDS - t0 < $2 )) || return 1; sleep 0.05; done
}
prog_id() { tb_exec "$1" bpftool -j net show dev eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["tc"][0]["id"])'; }
ct_map_id() {
    bpftool -j prog show id "$(prog_id "$1")" | python3 -c '
import json, subprocess, sys
for m in json.load(sys.stdin)["map_ids"]:
    if json.loads(subprocess.check_output(["bpftool", "-j", "map", "show", "id", str(m)]))["name"] == "tdm_ct":
        print(m)'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
daemon_pid() { pgrep -f "node run --config $OUT/$1.yaml" | head -1; }
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------------------------------
run_tandem() {
    tandem_config llb1 llb2
    tandem_config llb2 llb1
    tandem_start llb1
    tandem_start llb2
    wait_in_sync llb1 20 && wait_in_sync llb2 20 || { log "tandem nodes did not come up"; tail "$OUT"/llb*.log >&2; return 1; }
    local prog watch next=0 p1 p2 c1 c2 b0 b1 s0 s1
    prog="$(prog_id llb1)"; watch="$(ct_map_id llb2)"
    log "tandem: llb1 program $prog, llb2 tdm_ct map $watch"
    for r in $RATES; do
        "$SYNCBENCH" rates --prog "$prog" --watch "$watch" --arrivals "$ARRIVALS" --watch-pid "$(daemon_pid llb2)" --rates "$r" --duration "$RATE_SECONDS" --first "$next" \
            | tee -a "$OUT/tandem.jsonl"
        next=$(( next + r * RATE_SECONDS ))
    done
    p1="$(daemon_pid llb1)"; p2="$(daemon_pid llb2)"
    c1="$(cpu_ticks "$p1")"; c2="$(cpu_ticks "$p2")"
    b0="$(sync_json llb1 | jget '["bytesSent"]')"; s0="$(sync_json llb1 | jget '["counters"]["entriesSent"]')"
    "$SYNCBENCH" burst --prog "$prog" --watch "$watch" --arrivals "$ARRIVALS" --watch-pid "$(daemon_pid llb2)" --count "$BURST" --first "$next" | tee -a "$OUT/tandem.jsonl"
    next=$(( next + BURST ))
    sleep 0.5
    b1="$(sync_json llb1 | jget '["bytesSent"]')"; s1="$(sync_json llb1 | jget '["counters"]["entriesSent"]')"
    echo "{\"phase\":\"cost\",\"cpu_ms_per_100k\":$(( ( $(cpu_ticks "$p1") - c1 + $(cpu_ticks "$p2") - c2 ) * 10 * 100000 / BURST )),\"bytes_per_entry\":$(python3 -c "print(round(($b1-$b0)/max(1,$s1-$s0),1))"),\"entries_sent\":$(( s1 - s0 ))}" \
        | tee -a "$OUT/tandem.jsonl"
    # Idle: what holding the table costs once the flows stop (scans, timers), both daemons.
    if (( IDLE_SECONDS > 0 )); then
        c1="$(cpu_ticks "$p1")"; c2="$(cpu_ticks "$p2")"
        sleep "$IDLE_SECONDS"
        echo "{\"phase\":\"idle\",\"seconds\":$IDLE_SECONDS,\"connections\":$(( $("$SYNCBENCH" count --map "$(ct_map_id llb1)") / 2 )),\"cpu_percent\":$(python3 -c "print(round(($(cpu_ticks "$p1") - $c1 + $(cpu_ticks "$p2") - $c2) * 100 / $(getconf CLK_TCK) / $IDLE_SECONDS, 2))")}" \
            | tee -a "$OUT/tandem.jsonl"
    fi
    # The pipeline alone: node 1's daemon stopped while PIPELINE flows are created (their events
    # wait in its ring buffer), then resumed; the injector no longer shares the CPU with it.
    if (( PIPELINE > 0 )); then
        local lost0 lost1
        lost0="$(tb_exec llb1 curl -s -m 3 http://127.0.0.1:11111/netlox/v1/status | jget '["events_lost"]' 2>/dev/null || echo 0)"
        kill -STOP "$p1"
        "$SYNCBENCH" fill --prog "$prog" --count "$PIPELINE" --first "$next" >>"$OUT/tandem.jsonl" || kill -CONT "$p1"
        "$SYNCBENCH" release --watch "$watch" --source "$(ct_map_id llb1)" --first "$next" --count "$PIPELINE" --pid "$p1" \
            | tee -a "$OUT/tandem.jsonl"
        kill -CONT "$p1" 2>/dev/null || true
        next=$(( next + PIPELINE ))
        lost1="$(tb_exec llb1 curl -s -m 3 http://127.0.0.1:11111/netlox/v1/status | jget '["events_lost"]' 2>/dev/null || echo 0)"
        echo "{\"phase\":\"pipeline-events-lost\",\"lost\":$(( lost1 - lost0 ))}" | tee -a "$OUT/tandem.jsonl"
    fi
    sync_json llb2 >"$OUT/llb2-sync.json"
    # Bulk resync: node 2 restarts with an empty table while node 1 holds N connections.
    local have n t0 t1
    for n in $BULK; do
        tandem_stop llb2
        have=$(( $("$SYNCBENCH" count --map "$(ct_map_id llb1)") / 2 ))
        if (( have < n )); then
            "$SYNCBENCH" fill --prog "$prog" --count $(( n - have )) --first "$next" >>"$OUT/tandem.jsonl"
            next=$(( next + n - have ))
        fi
        have=$(( $("$SYNCBENCH" count --map "$(ct_map_id llb1)") / 2 ))
        sleep 1
        t0=$(now_ms)
        tandem_start llb2
        wait_in_sync llb2 120 || { log "llb2 did not get in sync with $have connections"; continue; }
        t1=$(now_ms)
        local at_sync; at_sync="$("$SYNCBENCH" count --map "$(ct_map_id llb2)")"
        sleep 2
        echo "{\"phase\":\"bulk\",\"connections\":$have,\"seconds\":$(python3 -c "print(($t1-$t0)/1000)"),\"node2_entries\":$at_sync,\"node2_entries_2s_later\":$("$SYNCBENCH" count --map "$(ct_map_id llb2)"),\"node1_entries\":$("$SYNCBENCH" count --map "$(ct_map_id llb1)"),\"node1_replica_live\":$(sync_json llb1 | jget '["liveEntries"]'),\"node2_replica_live\":$(sync_json llb2 | jget '["liveEntries"]'),\"node2_install_failures\":$(sync_json llb2 | jget '["installFailures"]'),\"node1_events_lost\":$(tb_exec llb1 curl -s -m 3 http://127.0.0.1:11111/netlox/v1/status | jget '["events_lost"]')}" \
            | tee -a "$OUT/tandem.jsonl"
    done
    tandem_stop llb2
    tandem_stop llb1
}

run_conntrackd() {
    [[ -x "$CTBENCH" ]] || { log "tandem-ctbench not built"; return 1; }
    [[ -f "$BENCH_DIR/conntrackd-lib.sh" ]] || { log "bench/conntrackd-lib.sh missing"; return 1; }
    command -v conntrackd >/dev/null || { log "conntrackd not installed (apt-get install -y conntrackd)"; return 1; }
    # shellcheck source=bench/conntrackd-lib.sh
    source "$BENCH_DIR/conntrackd-lib.sh"
    ctd_setup "$(tb_ns llb1)" "$(tb_ip llb1)" "$(tb_ns llb2)" "$(tb_ip llb2)" "$OUT/ctd" || return 1
    kernel_table_room
    CTBENCH="$CTBENCH" CTD_IDLE_SECONDS="$IDLE_SECONDS" CTD_IDLE_TABLE="$IDLE_TABLE" ctd_measure "$(tb_ns llb1)" "$(tb_ns llb2)" "$(echo "$RATES" | tr ' ' ,)" "$RATE_SECONDS" "$BURST" \
        | tee -a "$OUT/conntrackd.jsonl"
    ctd_teardown "$OUT/ctd"
}

# ------------------------------------------------------------------------------------------
# Tandem replicating the kernel conntrack table: two conntrack-only nodes (datapath: false) in
# the same namespaces, on the same entries tandem-ctbench creates for conntrackd, with the same
# filter (TCP, not loopback or the nodes' own addresses) and netlink buffer sizes as conntrackd's.
kt_config() { # ROLE PEER_ROLE
    cat >"$OUT/kt-$1.yaml" <<YAML
datapath: false   # a conntrack-only node: no BPF datapath, no services
interfaces: [eth0]
cluster:
  peers: [$(tb_ip "$2")]
  keyFile: $OUT/cluster.key
  election: false   # replication only, as conntrackd's config here has no keepalived
conntrack:
  mode: inject      # as conntrackd's DisableExternalCache: straight into the peer's table
  netlinkBufferBytes: 67108864      # conntrackd's NetlinkBufferSize here
  netlinkBufferMaxBytes: 268435456  # and NetlinkBufferSizeMaxGrowth
  filter: {protocols: [tcp]}   # loopback and the nodes' addresses Tandem leaves out itself
YAML
}
kt_start() { # ROLE
    ip netns exec "$(tb_ns "$1")" "$TANDEM" node run --config "$OUT/kt-$1.yaml" --log-level warning --no-state \
        </dev/null >"$OUT/kt-$1.log" 2>&1 &
    echo $! >"$OUT/kt-$1.pid"
}
kt_sync() { sync_json "$1" --conntrack; }
kt_count() { "$CTBENCH" count --ns "$(tb_ns "$1")"; }

run_kernel() {
    [[ -x "$CTBENCH" ]] || { log "tandem-ctbench not built"; return 1; }
    # shellcheck source=bench/conntrackd-lib.sh
    source "$BENCH_DIR/conntrackd-lib.sh"
    kernel_table_room
    local n ns1 ns2 p1 p2 c0 c1 b0 b1 s0 s1 line next=0 hz
    ns1="$(tb_ns llb1)"; ns2="$(tb_ns llb2)"; hz="$(getconf CLK_TCK)"
    for n in llb1 llb2; do tb_exec "$n" conntrack -F >/dev/null 2>&1 || true; done
    kt_config llb1 llb2; kt_config llb2 llb1
    kt_start llb1; kt_start llb2
    { wait_in_sync llb1 20 --conntrack && wait_in_sync llb2 20 --conntrack; } || { log "tandem conntrack-only nodes did not come up"; tail "$OUT"/kt-llb*.log >&2; return 1; }
    p1="$(cat "$OUT/kt-llb1.pid")"; p2="$(cat "$OUT/kt-llb2.pid")"
    for r in $RATES; do
        "$CTBENCH" rates --source-ns "$ns1" --watch-ns "$ns2" --rates "$r" --duration "$RATE_SECONDS" \
            --first "$next" --wait 10 | tee -a "$OUT/kernel.jsonl" || log "tandem-ctbench rates $r failed"
        next=$(( next + r * RATE_SECONDS ))
    done
    sleep 1
    c0=$(( $(cpu_ticks "$p1") + $(cpu_ticks "$p2") ))
    b0="$(kt_sync llb1 | jget '["bytesSent"]')"; s0="$(kt_sync llb1 | jget '["counters"]["entriesSent"]')"
    line="$("$CTBENCH" burst --source-ns "$ns1" --watch-ns "$ns2" --count "$BURST" --first "$next" --wait 60)" \
        || log "tandem-ctbench burst failed"
    next=$(( next + BURST ))
    [[ -n "$line" ]] && echo "$line" | tee -a "$OUT/kernel.jsonl"
    sleep 1
    c1=$(( $(cpu_ticks "$p1") + $(cpu_ticks "$p2") ))
    b1="$(kt_sync llb1 | jget '["bytesSent"]')"; s1="$(kt_sync llb1 | jget '["counters"]["entriesSent"]')"
    # Per created entry, as conntrackd's row: bytesSent is the sealed datagrams' UDP payload.
    echo "{\"phase\":\"cost\",\"cpu_ms_per_100k\":$(( (c1 - c0) * 1000 * 100000 / hz / BURST )),\"bytes_per_entry\":$(python3 -c "print(round(($b1-$b0)/$BURST,1))"),\"entries_sent\":$(( s1 - s0 ))}" \
        | tee -a "$OUT/kernel.jsonl"
    next="$(ctd_fill_table "$ns1" "$ns2" "$IDLE_TABLE" "$next")"
    if (( IDLE_SECONDS > 0 )); then
        c0=$(( $(cpu_ticks "$p1") + $(cpu_ticks "$p2") ))
        sleep "$IDLE_SECONDS"
        c1=$(( $(cpu_ticks "$p1") + $(cpu_ticks "$p2") ))
        echo "{\"phase\":\"idle\",\"seconds\":$IDLE_SECONDS,\"connections\":$(kt_count llb1),\"peer_connections\":$(kt_count llb2),\"cpu_percent\":$(python3 -c "print(round(($c1 - $c0) * 100 / $hz / $IDLE_SECONDS, 2))")}" \
            | tee -a "$OUT/kernel.jsonl"
    fi
    kt_sync llb2 >"$OUT/kt-llb2-sync.json"
    tandem_stop kt-llb2; tandem_stop kt-llb1
    for n in llb1 llb2; do tb_exec "$n" conntrack -F >/dev/null 2>&1 || true; done
}

# The kernel's conntrack limit is global: room for IDLE_TABLE entries in each of the two tables
# and the rate phases; restored on exit.
kernel_table_room() {
    local want=$(( IDLE_TABLE + BURST + 400000 ))
    [[ -w /proc/sys/net/netfilter/nf_conntrack_max ]] || return 0
    [[ -n "${SAVED_CT_MAX:-}" ]] || SAVED_CT_MAX="$(cat /proc/sys/net/netfilter/nf_conntrack_max)"
    if (( $(cat /proc/sys/net/netfilter/nf_conntrack_max) < want )); then echo "$want" >/proc/sys/net/netfilter/nf_conntrack_max; fi
}

# CPU time the hypervisor took from this VM (the steal column of /proc/stat), and all CPU time.
cpu_steal_total() { awk '/^cpu / {s=0; for (i=2;i<=NF;i++) s+=$i; print $9, s}' /proc/stat; }

: >"$OUT/tandem.jsonl"; : >"$OUT/conntrackd.jsonl"; : >"$OUT/kernel.jsonl"
steal_notes=""
for s in $SYSTEMS; do
    log "system: $s"
    read -r st0 tot0 < <(cpu_steal_total)
    "run_$s" || log "$s: measurement failed"
    read -r st1 tot1 < <(cpu_steal_total)
    steal_notes+="$s $(python3 -c "print(round(100*($st1-$st0)/max(1,$tot1-$tot0),1))")% "
done

{
    python3 "$BENCH_DIR/replication-report.py" "$OUT/tandem.jsonl" "$OUT/conntrackd.jsonl" "$RATES" "$OUT/kernel.jsonl"
    echo
    echo "CPU time taken by the hypervisor (steal) during each system's run: $steal_notes(both systems slow down together when it is high)."
} | tee "$RESULTS"
