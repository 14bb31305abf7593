#!/usr/bin/env bash
# Cost per unit of work: the whole machine's CPU per UDP datagram, per HTTP request and per new TCP
# connection, at fixed offered loads that no mode saturates, for each way of getting the client's
# traffic to the endpoints (one test bed, modes in turn, rounds interleaved):
#   direct      no load balancer: the client talks to ep1/ep2 at their own addresses, llb1 only
#               routes (both ways), so the path crosses the same namespaces and veths (the baseline)
#   nftables    the kernel: DNAT (numgen round robin) + SNAT to the VIP in llb1 (bench-lib.sh)
#   haproxy     HAProxy mode tcp in llb1 (TCP loads only)
#   tandem      Tandem, TC (bench/tandem-hook.sh)
#   tandem-xdp  Tandem with its XDP fast path; the bed is readied for XDP for every mode of the run
# Loads, paced by bench/pacer/pacer.c (built here with gcc -O2), from the client namespace:
#   udp   UDP_RATE datagrams/s of UDP_SIZE bytes over UDP_FLOWS flows, echoed by the endpoints
#   http  HTTP_RATE requests/s over HTTP_CONNS keep-alive connections to nginx (200s counted)
#   conn  CONN_RATE new TCP connections/s, each: connect, one GET with Connection: close, close
# CPU: /proc/stat's busy time (user+nice+system+irq+softirq; steal apart) over each measurement
# window. Cost of a mode = (its CPU - the direct path's CPU in the same round) / units answered,
# in us of CPU per unit; medians over REPEAT rounds (every mode once per round, order rotated) with
# min-max. A run that missed the offered rate or left units unanswered (more than TOL %), or ran
# on a machine busier than SATURATED % of all cores (the difference could not show), is INVALID
# and never shown as a number. A second table counts only the test bed's own CPU: a cgroup holding
# every process the script starts, plus the ksoftirqd threads (deferred softirq work), which other
# work on a shared machine does not reach (as long as it leaves the bed the CPU it needs). Tandem's BPF programs' own ns per run come from bpf_stats
# (kernel.bpf_stats_enabled, on only for a separate short pass per load; restored on exit).
# Markdown table to stdout and RESULTS, one JSON line to stdout and RESULTS_JSON.
#
# Environment (defaults in brackets):
#   DURATION [5] s per window   WARMUP [1] s at the same rate before it   REPEAT [3] rounds
#   MODES ["direct nftables haproxy tandem tandem-xdp"] (direct is always run)   LOADS ["udp http conn"]
#   UDP_RATE [20000]  UDP_FLOWS [8]  UDP_SIZE [64]   HTTP_RATE [5000]  HTTP_CONNS [16]  HTTP_PATH [/]
#   CONN_RATE [1500]  CONN_REQUEST [1] (0: connect and close only)       TOL [2] % allowed shortfall
#   SATURATED [95] % of all cores busy above which a whole-machine reading is INVALID
#   BPF_STATS [1] (0: skip the bpf_stats pass)  BPF_STATS_SECS [2]       HAPROXY_THREADS [1]
#   TANDEM_BIN  tandem binary [the repo's .build/release, else .build/debug]; copied at the start
#   TANDEM_ECHO tandem-echo (the bed's TCP probe server) [.build/release, else .build/debug]
#   TANDEM_HOOK [bench/tandem-hook.sh]   TB [random cNNNNN]   EP_UDP_PORT [9001] the endpoints' echo
#   RESULTS [bench/results/cost-latest.md]   RESULTS_JSON [bench/results/cost-latest.json]
#   RUNS_OUT [bench/results/cost-runs-latest.jsonl] every generator run's JSON line, for re-analysis
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
REPEAT="${REPEAT:-3}"
MODES="${MODES:-direct nftables haproxy tandem tandem-xdp}"
LOADS="${LOADS:-udp http conn}"
UDP_RATE="${UDP_RATE:-20000}"
UDP_FLOWS="${UDP_FLOWS:-8}"
UDP_SIZE="${UDP_SIZE:-64}"
HTTP_RATE="${HTTP_RATE:-5000}"
HTTP_CONNS="${HTTP_CONNS:-16}"
HTTP_PATH="${HTTP_PATH:-/}"
CONN_RATE="${CONN_RATE:-1500}"
CONN_REQUEST="${CONN_REQUEST:-1}"
TOL="${TOL:-2}"
SATURATED="${SATURATED:-95}"
BPF_STATS="${BPF_STATS:-1}"
BPF_STATS_SECS="${BPF_STATS_SECS:-2}"
RESULTS="${RESULTS:-$BENCH_DIR/results/cost-latest.md}"
RESULTS_JSON="${RESULTS_JSON:-$BENCH_DIR/results/cost-latest.json}"
RUNS_OUT="${RUNS_OUT:-$BENCH_DIR/results/cost-runs-latest.jsonl}"
export EP_UDP_PORT="${EP_UDP_PORT:-9001}"
if [[ -z "${TANDEM_ECHO:-}" ]]; then
    TANDEM_ECHO="$REPO/.build/release/tandem-echo"
    [[ -x "$TANDEM_ECHO" ]] || TANDEM_ECHO="$REPO/.build/debug/tandem-echo"
fi
export TANDEM_ECHO

die() { echo "cost.sh: $*" >&2; exit 2; }
# need_int NAME LO HI: the variable NAME holds an integer in LO..HI, or exit 2.
need_int() {
    local v="${!1}"
    if [[ ! "$v" =~ ^[0-9]+$ ]] || ((v < $2 || v > $3)); then die "$1 must be an integer in $2..$3 (got '$v')"; fi
}
[[ $EUID -eq 0 ]] || { echo "cost.sh: must run as root" >&2; exit 1; }
need_int DURATION 1 600
need_int WARMUP 0 60
need_int REPEAT 1 20
for v in UDP_RATE HTTP_RATE CONN_RATE; do need_int "$v" 1 10000000; done
for v in UDP_FLOWS HTTP_CONNS; do need_int "$v" 1 4096; done
need_int UDP_SIZE 16 1400
need_int BPF_STATS_SECS 1 60
[[ "$TOL" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "TOL must be a percentage"
need_int SATURATED 1 100
[[ "$CONN_REQUEST" == 0 || "$CONN_REQUEST" == 1 ]] || die "CONN_REQUEST must be 0 or 1"
[[ "$BPF_STATS" == 0 || "$BPF_STATS" == 1 ]] || die "BPF_STATS must be 0 or 1"
for l in $LOADS; do [[ $l == udp || $l == http || $l == conn ]] || die "unknown load '$l' (udp http conn)"; done
for m in $MODES; do
    case "$m" in direct | nftables | haproxy | tandem | tandem-xdp) ;; *) die "unknown mode '$m' (direct nftables haproxy tandem tandem-xdp)" ;; esac
done
[[ " $MODES " == *" direct "* ]] || MODES="direct $MODES"
command -v gcc >/dev/null || { echo "cost.sh: gcc not installed (make deps)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "cost.sh: python3 not found" >&2; exit 1; }
[[ -x "$TANDEM_ECHO" ]] || { echo "cost.sh: tandem-echo not found at $TANDEM_ECHO (swift build -c release --product tandem-echo, or set TANDEM_ECHO)" >&2; exit 1; }

BENCH_TB="${TB:-}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=bench/bench-lib.sh
source "$BENCH_DIR/bench-lib.sh"
bench_pick_tb c   # a fresh, unused test bed name (cNNNNN) unless TB is set
TANDEM_HOOK="${TANDEM_HOOK:-$BENCH_DIR/tandem-hook.sh}"
# shellcheck source=bench/tandem-hook.sh
source "$TANDEM_HOOK"
if ! declare -F tandem_setup >/dev/null || ! declare -F tandem_teardown >/dev/null; then
    echo "cost.sh: $TANDEM_HOOK must define tandem_setup and tandem_teardown" >&2
    exit 1
fi

ACTIVE=""
BED_UP=0
BUILD=""
BPF_STATS_SAVED=""
CGROUP=""
CGROUP_PARENT=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$ACTIVE" ]]; then "${ACTIVE}_teardown" >/dev/null 2>&1 || true; ACTIVE=""; fi
    if [[ -n "$BPF_STATS_SAVED" ]]; then sysctl -qw "kernel.bpf_stats_enabled=$BPF_STATS_SAVED" >/dev/null 2>&1 || true; fi
    if [[ $BED_UP == 1 ]]; then bench_log "tearing down test bed $TB"; tb_down; fi
    if [[ -n "$CGROUP" ]]; then
        [[ -n "${CG_FD:-}" ]] && exec {CG_FD}<&-
        echo $$ >"$CGROUP_PARENT/cgroup.procs" 2>/dev/null || true
        rmdir "$CGROUP" 2>/dev/null || bench_log "could not remove $CGROUP"
    fi
    [[ -n "$BUILD" && -d "$BUILD" ]] && rm -rf "$BUILD"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The generator, and a copy of the binary under test (a rebuild during the run does not change it).
BUILD="$(mktemp -d /tmp/tandem-cost.XXXXXX)"
gcc -O2 -Wall -Wextra -o "$BUILD/pacer" "$BENCH_DIR/pacer/pacer.c" -lm
PACER="$BUILD/pacer"
TANDEM_NOTE=""
if [[ " $MODES " == *" tandem"* ]]; then
    src="$(tandem_bin)"
    for _ in $(seq 1 30); do [[ -x "$src" ]] && break; sleep 2; done   # a relink may be in progress
    if [[ -x "$src" ]]; then
        cp "$src" "$BUILD/tandem"
        export TANDEM_BIN="$BUILD/tandem"
        TANDEM_NOTE="$src ($(sha256sum "$BUILD/tandem" | cut -c1-12))"
    else
        TANDEM_NOTE="not found at $src"
    fi
fi
BPFTOOL_OK=0; command -v bpftool >/dev/null && BPFTOOL_OK=1

# A cgroup of the run's own (this script and everything it starts: nginx, the echo servers, the load
# balancers, the generator), so the test bed's CPU can be told apart from other work on the machine.
for d in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [[ -f "$d/cpuacct.usage" || -f "$d/cgroup.controllers" ]]; then
        CGROUP_PARENT="$d"
        mkdir "$d/tandem-cost-$TB" && CGROUP="$d/tandem-cost-$TB"
        break
    fi
done
if [[ -n "$CGROUP" ]]; then
    echo $$ >"$CGROUP/cgroup.procs"
    # `ip netns exec` remounts /sys: the generator reads the group's counter from this descriptor.
    if [[ -f "$CGROUP/cpuacct.usage" ]]; then exec {CG_FD}<"$CGROUP/cpuacct.usage"; else exec {CG_FD}<"$CGROUP/cpu.stat"; fi
    PACER_CG=(--cgroup-fd "$CG_FD")
else
    bench_log "no cgroup for the test bed's CPU (cpuacct v1 or cgroup v2): only the whole machine's is measured"
    PACER_CG=()
fi

bench_log "test bed $TB, modes: $MODES, loads: $LOADS, ${DURATION}s windows, $REPEAT round(s)"
BED_UP=1
bench_bed_up
RAW="$TB_STATE/raw"
mkdir -p "$RAW"
RUNS="$RAW/runs.jsonl"
: >"$RUNS"
# The endpoints' UDP echo: the pacer's own (recvmmsg/sendmmsg), beside the bed's tandem-echo.
for ep in $(tb_endpoints); do
    setsid ip netns exec "$(tb_ns "$ep")" "$PACER" echo --port "$EP_UDP_PORT" </dev/null >"$TB_STATE/$ep/cost-echo.log" 2>&1 &
    echo $! >"$TB_STATE/$ep/cost-echo.pid"
done
XDP_BED=0
if [[ " $MODES " == *" tandem-xdp "* ]]; then
    bench_log "readying the bed for XDP (every mode runs on it)"
    tb_xdp_ready llb1
    XDP_BED=1
fi

# Targets per mode: the VIP, or the endpoints themselves for the direct path.
targets() {
    local mode="$1" load="$2" port ep out=""
    if [[ $mode == direct ]]; then
        if [[ $load == udp ]]; then port="$EP_UDP_PORT"; else port="$EP_HTTP_PORT"; fi
        for ep in $(tb_endpoints); do out="${out:+$out,}$(tb_ip "$ep"):$port"; done
        echo "$out"
    elif [[ $load == udp ]]; then
        echo "$BENCH_VIP:$BENCH_UDP_PORT"
    else
        echo "$BENCH_VIP:$BENCH_TCP_PORT"
    fi
}

# pacer LOAD MODE SECONDS WARMUP [extra args]: one run from the client; prints its JSON line.
pacer() {
    local load="$1" mode="$2" secs="$3" warm="$4" args=()
    shift 4
    case "$load" in
        udp) args=(--rate "$UDP_RATE" --flows "$UDP_FLOWS" --size "$UDP_SIZE") ;;
        http) args=(--rate "$HTTP_RATE" --conns "$HTTP_CONNS" --path "$HTTP_PATH") ;;
        conn) args=(--rate "$CONN_RATE" --path "$HTTP_PATH"); [[ $CONN_REQUEST == 0 ]] && args+=(--no-request) ;;
    esac
    # The userspace load balancer's own CPU over the window, where there is one.
    local pidf="" pid
    case "$mode" in haproxy) pidf="$TB_STATE/bench-haproxy/haproxy.pid" ;; tandem*) pidf="$TB_STATE/tandem.pid" ;; esac
    if [[ -n "$pidf" && -f "$pidf" ]]; then
        pid="$(head -n 1 "$pidf")"
        [[ "$pid" =~ ^[0-9]+$ ]] && args+=(--watch-pid "$pid")
    fi
    timeout -k 5 $((secs + warm + 30)) ip netns exec "$(tb_ns client)" "$PACER" "$load" \
        --target "$(targets "$mode" "$load")" --duration "$secs" --warmup "$warm" "${args[@]}" "${PACER_CG[@]}" "$@"
}

# Checks a mode before measuring it: TCP through the VIP reaches nginx on both endpoints, UDP
# datagrams are all echoed; for the direct path, that its packets cross llb1.
verify() {
    local mode="$1" out rx0 rx1 ep body iss lost
    if [[ $mode == direct ]]; then
        rx0="$(bench_llb1_rx)"
        for ep in $(tb_endpoints); do
            body="$(tb_exec client curl -fsS -m 2 "http://$(tb_ip "$ep")/whoami")" || { bench_log "verify: curl to $ep failed"; return 1; }
            [[ "$body" == "$ep" ]] || { bench_log "verify: $ep answered '$body'"; return 1; }
        done
        rx1="$(bench_llb1_rx)"
        ((rx1 - rx0 >= 8)) || { bench_log "verify: direct traffic does not cross llb1 ($((rx1 - rx0)) packets)"; return 1; }
    elif [[ " $LOADS " == *" http "* || " $LOADS " == *" conn "* ]]; then
        bench_verify_tcp 6 || return 1
    fi
    if [[ $mode != haproxy && " $LOADS " == *" udp "* ]]; then
        out="$(UDP_RATE=200 pacer udp "$mode" 1 0 --drain 0.5)" || { bench_log "verify: UDP probe failed to run"; return 1; }
        echo "$out" >"$RAW/verify-udp.json"
        iss="$(json_num "$RAW/verify-udp.json" issued)"; lost="$(json_num "$RAW/verify-udp.json" lost)"
        [[ -n "$iss" && "$iss" -gt 0 && "$lost" == 0 ]] || { bench_log "verify: UDP datagrams not all echoed: $out"; return 1; }
    fi
}

# Ids of the BPF programs attached to llb1's eth0 (TC and XDP), one per line.
bpf_prog_ids() {
    tb_exec llb1 bpftool -j net show dev eth0 2>/dev/null | python3 -c '
import json, sys
for entry in json.load(sys.stdin):
    for kind in ("xdp", "tc"):
        for p in entry.get(kind, []):
            pid = p.get("id", p.get("prog_id"))
            if pid is not None: print(pid)'
}

# "id name run_time_ns run_cnt" for each id given.
bpf_prog_stats() {
    local id
    for id in "$@"; do
        bpftool -j prog show id "$id" 2>/dev/null | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p["id"], p.get("name", "?"), p.get("run_time_ns", 0), p.get("run_cnt", 0))'
    done
}

# One BPF cost pass of a Tandem mode for one load: bpf_stats on, a short paced run, stats off.
bpf_pass() {
    local mode="$1" load="$2" k="$3" ids before after out
    mapfile -t ids < <(bpf_prog_ids)
    ((${#ids[@]})) || { bench_log "   $mode: no BPF program attached to llb1 eth0"; return 0; }
    sysctl -qw kernel.bpf_stats_enabled=1 >/dev/null
    before="$(bpf_prog_stats "${ids[@]}")"
    out="$(pacer "$load" "$mode" "$BPF_STATS_SECS" 0 --drain 0.5 || true)"
    after="$(bpf_prog_stats "${ids[@]}")"
    sysctl -qw "kernel.bpf_stats_enabled=$BPF_STATS_SAVED" >/dev/null
    python3 - "$mode" "$load" "$k" "$before" "$after" "$out" >>"$RUNS" <<'PY'
import json, sys
mode, load, k, before, after, out = sys.argv[1:7]
def parse(s):
    r = {}
    for line in s.splitlines():
        f = line.split()
        if len(f) == 4: r[f[0]] = (f[1], int(f[2]), int(f[3]))
    return r
b, a = parse(before), parse(after)
progs = [{"id": int(i), "name": a[i][0], "run_time_ns": a[i][1] - b[i][1], "run_cnt": a[i][2] - b[i][2]}
         for i in a if i in b]
try: p = json.loads(out)
except ValueError: p = None
print(json.dumps({"kind": "bpf", "mode": mode, "load": load, "round": int(k), "progs": progs, "pacer": p}))
PY
}

declare -A DEAD=()
declare -A REASON=()
# One round of one mode: set up, check, each load once, (Tandem) the BPF pass, tear down.
run_mode() {
    local mode="$1" k="$2" f load out rx0 rx1
    f="$(bench_mode_fn "$mode")"
    bench_log "== round $k/$REPEAT: $mode"
    if [[ $mode == tandem* && -z "${TANDEM_BIN:-}" ]]; then
        DEAD[$mode]=1; REASON[$mode]="unavailable: tandem binary $TANDEM_NOTE"; return 0
    fi
    ACTIVE="$f"
    if ! "${f}_setup" >"$RAW/$mode-setup-$k.log" 2>&1; then
        cat "$RAW/$mode-setup-$k.log" >&2
        DEAD[$mode]=1; REASON[$mode]="setup failed: $(tail -n 1 "$RAW/$mode-setup-$k.log" 2>/dev/null)"
        "${f}_teardown" >/dev/null 2>&1 || true; ACTIVE=""
        return 0
    fi
    if ! verify "$mode" 2>"$RAW/$mode-verify-$k.log"; then
        cat "$RAW/$mode-verify-$k.log" >&2
        DEAD[$mode]=1; REASON[$mode]="check failed: $(tail -n 1 "$RAW/$mode-verify-$k.log" 2>/dev/null)"
        "${f}_teardown" >/dev/null 2>&1 || true; ACTIVE=""
        return 0
    fi
    for load in $LOADS; do
        [[ $mode == haproxy && $load == udp ]] && continue
        bench_log "   $mode: $load, ${DURATION}s"
        rx0="$(bench_llb1_rx)"
        out="$(pacer "$load" "$mode" "$DURATION" "$WARMUP" 2>"$RAW/$mode-$load-$k.err" || true)"
        rx1="$(bench_llb1_rx)"
        printf '{"kind":"run","mode":"%s","load":"%s","round":%d,"llb1_rx_packets":%d,"pacer":%s}\n' \
            "$mode" "$load" "$k" $((rx1 - rx0)) "${out:-null}" >>"$RUNS"
        [[ -n "$out" ]] || bench_log "   $mode: $load: the generator failed: $(tail -n 1 "$RAW/$mode-$load-$k.err")"
        sleep 1
    done
    if [[ $mode == tandem* && $BPF_STATS == 1 && $BPFTOOL_OK == 1 ]]; then
        for load in $LOADS; do
            bench_log "   $mode: $load, bpf_stats pass, ${BPF_STATS_SECS}s"
            bpf_pass "$mode" "$load" "$k"
        done
    fi
    bench_log "   $mode: teardown"
    "${f}_teardown" >/dev/null 2>&1 || true
    ACTIVE=""
    sleep 1
}

BPF_STATS_SAVED="$(sysctl -n kernel.bpf_stats_enabled)"
read -ra MODE_LIST <<<"$MODES"
n=${#MODE_LIST[@]}
for k in $(seq 1 "$REPEAT"); do
    for i in $(seq 0 $((n - 1))); do
        mode="${MODE_LIST[$(((i + k - 1) % n))]}"   # order rotated by one each round
        [[ -n "${DEAD[$mode]:-}" ]] && continue
        run_mode "$mode" "$k"
    done
done

STATUS="$RAW/status.json"
{
    printf '{'
    sep=""
    for mode in "${MODE_LIST[@]}"; do
        if [[ -n "${REASON[$mode]:-}" ]]; then
            printf '%s"%s":%s' "$sep" "$mode" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${REASON[$mode]}")"
            sep=","
        fi
    done
    printf '}\n'
} >"$STATUS"

mkdir -p "$(dirname "$RESULTS")" "$(dirname "$RESULTS_JSON")" "$(dirname "$RUNS_OUT")"
cp "$RUNS" "$RUNS_OUT"
python3 "$BENCH_DIR/cost-report.py" --runs "$RUNS" --status "$STATUS" --modes "$MODES" --loads "$LOADS" \
    --tol "$TOL" --saturated "$SATURATED" --repeat "$REPEAT" --duration "$DURATION" --warmup "$WARMUP" \
    --udp "$UDP_RATE,$UDP_FLOWS,$UDP_SIZE" --http "$HTTP_RATE,$HTTP_CONNS,$HTTP_PATH" --conn "$CONN_RATE,$CONN_REQUEST" \
    --xdp-bed "$XDP_BED" --tandem "$TANDEM_NOTE" --haproxy-threads "$HAPROXY_THREADS" \
    --md "$RESULTS.tmp" --json "$RESULTS_JSON.tmp"
mv "$RESULTS.tmp" "$RESULTS"
mv "$RESULTS_JSON.tmp" "$RESULTS_JSON"
cat "$RESULTS"
cat "$RESULTS_JSON"
bench_log "written to $RESULTS and $RESULTS_JSON"
