#!/usr/bin/env bash
# Datapath benchmark: VIP 10.0.10.143:56002/tcp -> ep1:80, ep2:80 (and :56003/udp -> :9000/udp),
# load from the client namespace, load balanced in llb1 by each mode in turn, on one test bed:
#   nftables  the kernel: nftables DNAT (numgen inc round robin) + SNAT to the VIP, ip_forward=1
#   haproxy   HAProxy, mode tcp, roundrobin, VIP on llb1's lo (TCP only)
#   tandem    Tandem, through tandem_setup / tandem_teardown in bench/tandem-hook.sh
#   tandem-xdp  Tandem with its XDP fast path (--xdp), tandem_xdp_setup / tandem_xdp_teardown; when
#             it is among MODES every mode runs on a bed readied for XDP (testbed/lib.sh tb_xdp_ready)
# Metrics: HTTP req/s with keepalive (wrk), new connections/s (wrk, Connection: close),
# small UDP datagrams/s echoed (tandem-echo flood). Markdown table to stdout and to
# bench/results/datapath-latest.md.
#
# Environment (defaults in brackets):
#   DURATION [5]       seconds per measurement        WARMUP [1]      seconds of warm-up per mode
#   REPEAT [1]         rounds (every mode once per round, interleaved); the table shows the median
#   WRK_THREADS [2]    WRK_CONNS [50]                  MODES ["nftables haproxy tandem"]
#   UDP_SIZE [64]      UDP_FLOWS [8]   UDP_RATE [0 = max]   UDP_WINDOW [256 in flight, 0 = open loop]
#   HAPROXY_THREADS [1]
#   TANDEM_ECHO        echo/flood binary [.build/release/tandem-echo if present, else .build/debug]
#   TANDEM_HOOK        file defining tandem_setup / tandem_teardown [bench/tandem-hook.sh]
#   TB                 test bed prefix [random bNNNNN]; the script builds and removes its own bed
#   RESULTS            output file [bench/results/datapath-latest.md]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
REPEAT="${REPEAT:-1}"
WRK_THREADS="${WRK_THREADS:-2}"
WRK_CONNS="${WRK_CONNS:-50}"
UDP_SIZE="${UDP_SIZE:-64}"
UDP_FLOWS="${UDP_FLOWS:-8}"
UDP_RATE="${UDP_RATE:-0}"
UDP_WINDOW="${UDP_WINDOW:-256}"
MODES="${MODES:-nftables haproxy tandem}"
RESULTS="${RESULTS:-$BENCH_DIR/results/datapath-latest.md}"
if [[ -z "${TANDEM_ECHO:-}" ]]; then
    TANDEM_ECHO="$REPO/.build/release/tandem-echo"
    [[ -x "$TANDEM_ECHO" ]] || TANDEM_ECHO="$REPO/.build/debug/tandem-echo"
fi
export TANDEM_ECHO

[[ $EUID -eq 0 ]] || { echo "datapath.sh: must run as root" >&2; exit 1; }
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] ||
    { echo "DURATION must be 1..600 seconds" >&2; exit 1; }
[[ "$REPEAT" =~ ^[0-9]+$ && "$REPEAT" -ge 1 && "$REPEAT" -le 20 ]] || { echo "REPEAT must be 1..20" >&2; exit 1; }
[[ "$WARMUP" =~ ^[0-9]+$ && "$WARMUP" -le 60 ]] || { echo "WARMUP must be 0..60 seconds" >&2; exit 1; }
[[ -x "$TANDEM_ECHO" ]] || { echo "tandem-echo not found at $TANDEM_ECHO: build it (swift build -c release --product tandem-echo) or set TANDEM_ECHO" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not installed: apt-get install -y wrk" >&2; exit 1; }

BENCH_TB="${TB:-}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=bench/bench-lib.sh
source "$BENCH_DIR/bench-lib.sh"
bench_pick_tb b   # a fresh, unused test bed name (bNNNNN) unless TB is set
TANDEM_HOOK="${TANDEM_HOOK:-$BENCH_DIR/tandem-hook.sh}"
# shellcheck source=bench/tandem-hook.sh
source "$TANDEM_HOOK"
if ! declare -F tandem_setup >/dev/null || ! declare -F tandem_teardown >/dev/null; then
    echo "$TANDEM_HOOK must define tandem_setup and tandem_teardown" >&2
    exit 1
fi

ACTIVE_MODE=""
BED_UP=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$ACTIVE_MODE" ]]; then
        "${ACTIVE_MODE}_teardown" >/dev/null 2>&1 || true
        ACTIVE_MODE=""
    fi
    if [[ $BED_UP == 1 ]]; then
        bench_log "tearing down test bed $TB"
        tb_down
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_log "test bed $TB, modes: $MODES, DURATION=${DURATION}s, echo: $TANDEM_ECHO"
BED_UP=1
bench_bed_up

RAW="$TB_STATE/raw"
mkdir -p "$RAW"

declare -A RES=()   # RES[mode,metric] = number, or a status word in parentheses
declare -A NOTE=()  # NOTE[mode] = free text
METRICS=(http_rps http_p50 http_p99 conn_rps udp_pps udp_loss)
declare -A METRIC_NAME=(
    [http_rps]="HTTP requests/s, keepalive (wrk -t$WRK_THREADS -c$WRK_CONNS)"
    [http_p50]="HTTP latency p50 ms, keepalive (lower is better)"
    [http_p99]="HTTP latency p99 ms, keepalive (lower is better)"
    [conn_rps]="New TCP connections/s (HTTP, Connection: close)"
    [udp_pps]="UDP echo datagrams/s received (${UDP_SIZE} B, ${UDP_FLOWS} flows)"
    [udp_loss]="UDP loss % (sent but not echoed)"
)

mark_all() { local mode="$1" what="$2" m; for m in "${METRICS[@]}"; do RES[$mode,$m]="$what"; done; }
addnote() { NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$2"; }

declare -A SAMPLES=()  # SAMPLES[mode,metric] = space-separated values, one per round
declare -A DEAD=()     # DEAD[mode] = 1 once a mode failed its setup or check (no further rounds)
sample() { SAMPLES[$1,$2]="${SAMPLES[$1,$2]:-}${SAMPLES[$1,$2]:+ }$3"; }

# One round of one mode: set up, check, measure each metric once, tear down. Rounds interleave
# the modes (round 1 of every mode, then round 2, ...), so a slow spell of the shared machine
# lands on every mode rather than on whichever ran then.
run_round() {
    local mode="$1" k="$2" f v e
    f="$(bench_mode_fn "$mode")"
    bench_log "== $mode, round $k/$REPEAT: setup"
    ACTIVE_MODE="$f"
    if ! "${f}_setup" >"$RAW/$mode-setup-$k.log" 2>&1; then
        cat "$RAW/$mode-setup-$k.log" >&2
        if [[ $mode == tandem* ]]; then mark_all "$mode" "(unavailable)"; else mark_all "$mode" "(setup failed)"; fi
        addnote "$mode" "setup failed: $(tail -n 1 "$RAW/$mode-setup-$k.log" 2>/dev/null)"
        "${f}_teardown" >/dev/null 2>&1 || true
        ACTIVE_MODE=""; DEAD[$mode]=1
        return 0
    fi
    if ! bench_verify_tcp 6; then
        mark_all "$mode" "(verify failed)"
        addnote "$mode" "curl through the VIP did not reach both endpoints"
        "${f}_teardown" >/dev/null 2>&1 || true
        ACTIVE_MODE=""; DEAD[$mode]=1
        return 0
    fi
    if ((WARMUP > 0)); then
        DURATION="$WARMUP" bench_wrk "$RAW/$mode-warmup-$k.txt"
    fi
    bench_log "   $mode: HTTP keepalive, ${DURATION}s"
    bench_wrk "$RAW/$mode-keepalive-$k.txt"
    sample "$mode" http_rps "$(wrk_rps "$RAW/$mode-keepalive-$k.txt")"
    sample "$mode" http_p50 "$(wrk_pct_ms "$RAW/$mode-keepalive-$k.txt" 50%)"
    sample "$mode" http_p99 "$(wrk_pct_ms "$RAW/$mode-keepalive-$k.txt" 99%)"
    e="$(wrk_errors "$RAW/$mode-keepalive-$k.txt")"; [[ -n "$e" ]] && addnote "$mode" "keepalive run $k: $e"
    sleep 1
    bench_log "   $mode: new connections, ${DURATION}s"
    bench_wrk "$RAW/$mode-close-$k.txt" -H "Connection: close"
    sample "$mode" conn_rps "$(wrk_rps "$RAW/$mode-close-$k.txt")"
    e="$(wrk_errors "$RAW/$mode-close-$k.txt")"; [[ -n "$e" ]] && addnote "$mode" "close run $k: $e"
    sleep 1
    if [[ $mode == haproxy ]]; then
        RES[$mode,udp_pps]="(n/a: no UDP)"; RES[$mode,udp_loss]="(n/a: no UDP)"
    elif bench_verify_udp; then
        bench_log "   $mode: UDP flood, ${DURATION}s"
        bench_flood "$RAW/$mode-udp-$k.json"
        v="$(json_num "$RAW/$mode-udp-$k.json" recv_pps)"
        sample "$mode" udp_pps "${v:+$(printf '%.0f' "$v")}"
        v="$(json_num "$RAW/$mode-udp-$k.json" loss)"
        sample "$mode" udp_loss "${v:+$(awk -v x="$v" 'BEGIN{printf "%.2f", x*100}')}"
    else
        sample "$mode" udp_pps "(verify failed)"; sample "$mode" udp_loss "(verify failed)"
        addnote "$mode" "UDP probe through the VIP failed (round $k)"
    fi
    bench_log "   $mode: teardown"
    "${f}_teardown" >/dev/null 2>&1 || true
    ACTIVE_MODE=""
    sleep 1
}

for mode in $MODES; do
    case "$mode" in
        nftables | haproxy | tandem | tandem-xdp) ;;
        *) bench_log "unknown mode '$mode' (known: nftables haproxy tandem tandem-xdp)"; exit 1 ;;
    esac
done
# The XDP fast path needs the bed readied (full checksums from the senders, an XDP program on the
# node link's vcn side, forwarding on): done for every mode of the run, so they share one topology.
XDP_BED=0
[[ " $MODES " == *" tandem-xdp "* || "${BENCH_XDP_BED:-0}" == 1 ]] && XDP_BED=1
if [[ $XDP_BED == 1 ]]; then
    bench_log "readying the bed for XDP (every mode runs on it)"
    tb_xdp_ready llb1
fi
for k in $(seq 1 "$REPEAT"); do
    for mode in $MODES; do
        [[ -n "${DEAD[$mode]:-}" ]] && continue
        run_round "$mode" "$k"
    done
done
for mode in $MODES; do
    [[ -n "${DEAD[$mode]:-}" ]] && continue
    for m in "${METRICS[@]}"; do
        [[ -n "${SAMPLES[$mode,$m]:-}" ]] || continue
        # shellcheck disable=SC2086 # one value per word
        RES[$mode,$m]="$(bench_median ${SAMPLES[$mode,$m]})"
    done
done

# ---------------------------------------------------------------------------------------------
# Report.
isnum() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
cell() { local v="${RES[$1,$2]:-(not run)}"; echo "$v"; }
ratio() {
    local a b; a="$(cell "$1" "$3")"; b="$(cell "$2" "$3")"
    if isnum "$a" && isnum "$b" && awk -v b="$b" 'BEGIN{exit !(b > 0)}'; then
        awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}'
    else
        echo "-"
    fi
}

report() {
    echo "# Datapath benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) cores (load generator, load balancer and endpoints share them)"
    echo "- VIP $BENCH_VIP:$BENCH_TCP_PORT/tcp -> ep1:80, ep2:80 (nginx, 1 worker each); :$BENCH_UDP_PORT/udp -> ep1:9000, ep2:9000 (tandem-echo)"
    echo "- load from the client ns through the vcn router ns to llb1; ${DURATION}s per measurement after ${WARMUP}s warm-up; median of $REPEAT round(s), modes interleaved round by round"
    [[ $XDP_BED == 1 ]] && echo "- XDP-ready bed for every mode: TX checksum offload off in client, ep1, ep2; an XDP pass program on the vcn side of llb1's link; forwarding on in llb1"
    echo "- wrk -t$WRK_THREADS -c$WRK_CONNS; UDP: tandem-echo flood --size $UDP_SIZE --flows $UDP_FLOWS --rate $UDP_RATE --window $UDP_WINDOW"
    echo "- nftables: DNAT numgen inc mod 2 + SNAT to the VIP; haproxy: $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}'), mode tcp, roundrobin, nbthread $HAPROXY_THREADS; tandem: $(basename "$TANDEM_HOOK")"
    echo
    local m
    if [[ " $MODES " == *" tandem-xdp "* ]]; then
        echo "| Metric | nftables | haproxy | tandem | tandem-xdp | tandem/nftables | tandem/haproxy | tandem-xdp/tandem |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for m in "${METRICS[@]}"; do
            echo "| ${METRIC_NAME[$m]} | $(cell nftables "$m") | $(cell haproxy "$m") | $(cell tandem "$m") | $(cell tandem-xdp "$m") | $(ratio tandem nftables "$m") | $(ratio tandem haproxy "$m") | $(ratio tandem-xdp tandem "$m") |"
        done
    else
        echo "| Metric | nftables | haproxy | tandem | tandem/nftables | tandem/haproxy |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        for m in "${METRICS[@]}"; do
            echo "| ${METRIC_NAME[$m]} | $(cell nftables "$m") | $(cell haproxy "$m") | $(cell tandem "$m") | $(ratio tandem nftables "$m") | $(ratio tandem haproxy "$m") |"
        done
    fi
    echo
    local mode any=0
    for mode in nftables haproxy tandem tandem-xdp; do
        if [[ -n "${NOTE[$mode]:-}" ]]; then
            [[ $any == 0 ]] && { echo "Notes:"; any=1; }
            echo "- $mode: ${NOTE[$mode]}"
        fi
    done
    [[ $any == 1 ]] && echo
    echo "Values in parentheses are not measurements: the mode was unavailable, failed its check, or does not apply."
}

mkdir -p "$(dirname "$RESULTS")"
report >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
bench_log "written to $RESULTS"
