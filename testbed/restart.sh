#!/usr/bin/env bash
# Restarts without disruption: two Tandem nodes with a pinned datapath (persistDatapath), long-lived
# TCP and UDP flows through the floating IP, then
#   1. the MASTER's daemon restarted gracefully (SIGTERM, started again) --graceful times,
#   2. the MASTER's daemon killed (SIGKILL, the machine stays up) and started again --crash times,
#   3. the BACKUP's daemon restarted gracefully --backup times,
# all under the same flows. A graceful restart must cause no role change and no flow loss: the
# datapath forwards while no daemon runs, and the peer holds its fire. A crash is noticed by the
# peer, which takes over (a failover, hitless through replication); the crashed daemon's datapath
# keeps forwarding until the floating IP has moved.
#
#   testbed/restart.sh [--tcp 200] [--udp 50] [--graceful 10] [--crash 10] [--backup 1]
#                      [--cloud l2|oci] [--interval-ms 20] [--settle 2] [--baseline 1] [--plot FILE]
#
# --plot writes a timeline of the graceful MASTER restarts (every flow's stalls, each SIGTERM and
# return marked) with matplotlib, installed if missing.
# --baseline N first runs the same flows for N x 10 s with nothing restarted: the noise floor of
# stalls on this machine.
#
# Reports flows survived, the longest stall of any flow, per phase the role changes (MASTER term
# changes and transitions of either node) and the floating IP's owners sampled every 50 ms, and per
# graceful restart how long the daemon was gone (SIGTERM to the new process answering). Prints a
# readable summary and one JSON line; exits non-zero unless every flow survived and no graceful
# restart changed a role.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TCP_FLOWS=200 UDP_FLOWS=50 GRACEFUL=10 CRASH=10 BACKUP_RESTARTS=1 CLOUD=l2 INTERVAL_MS=20 SETTLE=2 BASELINE=1 PLOT=""
while (($#)); do
    case "$1" in
        --tcp) TCP_FLOWS="$2"; shift 2 ;;
        --udp) UDP_FLOWS="$2"; shift 2 ;;
        --graceful) GRACEFUL="$2"; shift 2 ;;
        --crash) CRASH="$2"; shift 2 ;;
        --backup) BACKUP_RESTARTS="$2"; shift 2 ;;
        --cloud) CLOUD="$2"; shift 2 ;;
        --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
        --settle) SETTLE="$2"; shift 2 ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        --plot) PLOT="$2"; shift 2 ;;
        -h|--help) sed -n 2,27p "$0"; exit 0 ;;
        *) echo "restart: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$CLOUD" == l2 || "$CLOUD" == oci ]] || { echo "restart: --cloud must be l2 or oci" >&2; exit 2; }
for n in "$TCP_FLOWS" "$UDP_FLOWS" "$GRACEFUL" "$CRASH" "$BACKUP_RESTARTS" "$INTERVAL_MS" "$SETTLE" "$BASELINE"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "restart: counts must be whole numbers" >&2; exit 2; }
done

export TB="${TB:-rs}" NODES=2
[[ "$CLOUD" == l2 ]] && export TB_NET=l2 || export TB_NET=routed
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
FAKE_OCI="${FAKE_OCI:-$BIN/fake-oci}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"

[[ $EUID -eq 0 ]] || { echo "restart: must run as root" >&2; exit 1; }
for b in "$TANDEM" "$TANDEM_ECHO"; do [[ -x "$b" ]] || { echo "restart: $b not built (make build)" >&2; exit 1; }; done

log() { printf '[restart %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
now_ms() { date +%s%3N; }

FLOWS_PID="" OWNER_PID=""
cleanup() {
    local rc=$?
    [[ -n "$FLOWS_PID" ]] && kill -KILL "$FLOWS_PID" 2>/dev/null || true
    [[ -n "$OWNER_PID" ]] && kill -KILL "$OWNER_PID" 2>/dev/null || true
    for n in llb1 llb2; do
        [[ -f "$TB_STATE/$n.pid" ]] && kill -INT "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true
    done
    sleep 0.5
    if ((rc != 0)); then
        for n in llb1 llb2; do echo "--- $n log (tail)" >&2; tail -n 30 "$TB_STATE/$n.log" >&2 2>/dev/null || true; done
        echo "--- flows log (tail)" >&2; tail -n 15 "$TB_STATE"/flows.log >&2 2>/dev/null || true
    fi
    [[ "${KEEP:-0}" == 1 ]] || tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key
PERSIST=1
PIN_DIR="$(tb_bpffs)"
if [[ "$CLOUD" == oci ]]; then
    [[ -x "$FAKE_OCI" ]] || { echo "restart: $FAKE_OCI not built" >&2; exit 1; }
    source "$REPO/testbed/oci.sh"
    oci_up
fi
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
log "waiting for a MASTER and an in-sync BACKUP"
wait_settled 30
tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { log "curl through the VIP failed before any restart"; exit 1; }

# transitions NODE SINCE_MS -> role changes recorded since then, resumptions after a graceful
# restart excluded (they are the same role and term carried over, not a change)
transitions() {
    api "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(1 for t in s["instances"][0]["transitions"] if t["atUnixMs"] >= int(sys.argv[1]) and "resumed" not in t["reason"]))' "$2" 2>/dev/null || echo -1
}
pid_of() { cat "$TB_STATE/$1.pid"; }
api_up() { tb_exec "$1" "$TANDEM" get cluster >/dev/null 2>&1; }

# The floating IP's owner every 250 ms (each sample forks a few processes), with the time.
: >"$TB_STATE/owners.txt"
( while :; do echo "$(now_ms) $(tb_vip_owner)"; sleep 0.25; done ) >>"$TB_STATE/owners.txt" 2>/dev/null &
OWNER_PID=$!

# The upgrade check against the live pins: this build adopts them; a build (here: a config) whose
# connection table differs would not, and says so with exit 3.
for n in llb1 llb2; do
    tb_exec "$n" "$TANDEM" node layout --config "$TB_STATE/$n.yaml" >"$TB_STATE/layout-$n.out" 2>&1 ||
        { cat "$TB_STATE/layout-$n.out" >&2; log "tandem node layout: $n's pins not adoptable by this build"; exit 1; }
done
sed 's/^interfaces:/connectionTableSize: 131072\ninterfaces:/' "$TB_STATE/llb1.yaml" >"$TB_STATE/llb1-other.yaml"
layout_rc=0
tb_exec llb1 "$TANDEM" node layout --config "$TB_STATE/llb1-other.yaml" >"$TB_STATE/layout-other.out" 2>&1 || layout_rc=$?
((layout_rc == 3)) && grep -q "NOT adopt" "$TB_STATE/layout-other.out" ||
    { cat "$TB_STATE/layout-other.out" >&2; log "tandem node layout did not refuse another table size (exit $layout_rc)"; exit 1; }
log "tandem node layout: both nodes' pins adoptable; another table size refused (exit 3)"

# start_flows PHASE: long-lived flows for one phase (each phase gets its own, so each reports its
# own longest stall); stop_flows prints their JSON report.
start_flows() {
    local ready="$TB_STATE/flows-$1.ready"
    rm -f "$ready"
    ip netns exec "$(tb_ns client)" "$TANDEM_ECHO" flows --tcp-target "$TB_VIP:56004" --tcp "$TCP_FLOWS" \
        --udp-target "$TB_VIP:56003" --udp "$UDP_FLOWS" --late-tcp 0 --late-udp 0 \
        --interval-ms "$INTERVAL_MS" --duration 1200 --ready-file "$ready" \
        >"$TB_STATE/flows-$1.json" 2>"$TB_STATE/flows-$1.log" &
    FLOWS_PID=$!
    tb_wait_for 30 "the flows to be established" test -f "$ready"
    sleep 1
}
stop_flows() {   # sets FLOWS_REPORT (not a subshell: the flows process is this shell's child)
    local rc=0
    kill -TERM "$FLOWS_PID"
    wait "$FLOWS_PID" || rc=$?
    FLOWS_PID=""
    FLOWS_REPORT="$(tail -n 1 "$TB_STATE/flows-$1.json")"
    [[ -n "$FLOWS_REPORT" && $rc -eq 0 ]] || FLOWS_REPORT='{"failed": true}'
}

# restart_once NODE graceful|crash -> prints "gone_ms": SIGTERM/SIGKILL to the new daemon's API
restart_once() {
    local node="$1" how="$2" pid t0
    pid="$(pid_of "$node")"
    t0="$(now_ms)"
    if [[ "$how" == graceful ]]; then kill -TERM "$pid"; else kill -KILL "$pid"; fi
    echo "{\"label\": \"$node $([[ "$how" == graceful ]] && echo SIGTERM || echo SIGKILL)\", \"atUnixMs\": $t0}" >>"$EVENTS"
    while tb_alive "$pid"; do sleep 0.01; done
    rm -f "$TB_STATE/$node.pid"
    start_node "$node"
    local deadline=$((SECONDS + 30))
    until api_up "$node"; do
        ((SECONDS < deadline)) || { log "$node did not come back within 30 s"; echo -1; return 0; }
        sleep 0.02
    done
    local t1; t1="$(now_ms)"
    echo "{\"label\": \"$node back\", \"atUnixMs\": $t1}" >>"$EVENTS"
    echo $(( t1 - t0 ))
}

phases_json=()
all_ok=1
# phase NAME HOW WHO COUNT: restarts WHO's daemon (master|backup) COUNT times.
phase() {
    local name="$1" how="$2" who="$3" count="$4" i node other_node t_start term_before gone=() masters
    ((count > 0)) || return 0
    log "$name: $TCP_FLOWS TCP + $UDP_FLOWS UDP flows through $TB_VIP"
    EVENTS="$TB_STATE/events-$name.jsonl"
    : >"$EVENTS"
    start_flows "$name"
    t_start="$(now_ms)"
    masters="$(master_of)"
    term_before="$(term "$masters")"
    for ((i = 1; i <= count; i++)); do
        local m; m="$(master_of)"
        [[ -n "$m" ]] || { log "$name $i: no MASTER"; all_ok=0; return 0; }
        if [[ "$who" == master ]]; then node="$m"; else node="$(other "$m")"; fi
        local g
        if [[ "$how" == none ]]; then sleep 10; g=0; else g="$(restart_once "$node" "$how")"; fi
        gone+=("$g")
        log "$name $i/$count: $node ($([[ "$who" == master ]] && echo MASTER || echo BACKUP)) daemon back after ${g} ms"
        # The next restart only once both nodes are settled again (a crash moves MASTER).
        wait_settled 30 || { all_ok=0; return 0; }
        sleep "$SETTLE"
    done
    stop_flows "$name"
    # To python as a file: with thousands of stalls the report outgrows an environment variable.
    local flows_file="$TB_STATE/flows-$name.last.json"
    printf '%s\n' "$FLOWS_REPORT" >"$flows_file"
    if [[ -n "$PLOT" && "$name" == graceful-master ]]; then
        tb_need_matplotlib
        python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1]) if l.strip()]))' "$EVENTS" \
            >"$TB_STATE/events-$name.json"
        "$TB_PLOT_PYTHON" "$REPO/testbed/plot_timeline.py" "$TB_STATE/flows-$name.json" "$TB_STATE/events-$name.json" "$PLOT" \
            --title "restart.sh ($CLOUD): the MASTER's daemon restarted gracefully $count times, $TCP_FLOWS TCP + $UDP_FLOWS UDP flows" ||
            all_ok=0
    fi
    local m_after; m_after="$(master_of)"
    local term_after; term_after="$(term "$m_after")"
    local changes=0 n c
    for n in llb1 llb2; do
        c="$(transitions "$n" "$t_start")"
        ((c < 0)) && c=0
        changes=$((changes + c))
    done
    local owners
    owners="$(awk -v t="$t_start" '$1 >= t && $2 != "" {print $2}' "$TB_STATE/owners.txt" | sort | uniq -c | awk '{printf "%s%s:%s", (NR>1?",":""), $2, $1}')"
    local pj
    pj="$(FLOWS_FILE="$flows_file" python3 - "$name" "$how" "$who" "$count" "$term_before" "$term_after" "$changes" "$masters" "$m_after" "$owners" "${gone[@]}" <<'PY'
import json, os, sys
name, how, who, count, tb, ta, changes, m0, m1, owners, *gone = sys.argv[1:]
f = json.loads(open(os.environ["FLOWS_FILE"]).read())
tcp, udp = f.get("tcp", {}), f.get("udp", {})
g = sorted(int(x) for x in gone if int(x) >= 0)
owner_counts = {}
for part in filter(None, owners.split(",")):
    k, v = part.split(":")
    owner_counts[k] = int(v)
term_changes = (int(ta) - int(tb)) if tb.isdigit() and ta.isdigit() else -1
ok = len(g) == int(count) and not f.get("failed") and tcp.get("survived") == tcp.get("total") and udp.get("survived") == udp.get("total")
if how == "graceful":
    ok = ok and term_changes == 0 and int(changes) == 0 and m0 == m1 and len(owner_counts) == 1
print(json.dumps({"phase": name, "restart": how, "node": who, "count": int(count),
                  "goneMs": {"min": g[0], "median": g[len(g) // 2], "max": g[-1]} if g else None,
                  "termChanges": term_changes, "roleChanges": int(changes), "masterBefore": m0, "masterAfter": m1,
                  "vipOwnerSamples": owner_counts,
                  "tcp": {"survived": tcp.get("survived"), "total": tcp.get("total")},
                  "udp": {"survived": udp.get("survived"), "total": udp.get("total")},
                  "longestStallMs": f.get("longestStallMs"), "ok": ok}))
PY
)"
    phases_json+=("$pj")
    python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$pj" || all_ok=0
    log "$name: $pj"
}

# The noise floor: the same flows for as long, with nothing restarted (this machine's generator,
# echo servers and datapath share two cores: a stall here is not the restart's).
phase baseline none master "$BASELINE"
phase graceful-master graceful master "$GRACEFUL"
phase crash-master crash master "$CRASH"
phase graceful-backup graceful backup "$BACKUP_RESTARTS"

{ kill -KILL "$OWNER_PID"; wait "$OWNER_PID"; } 2>/dev/null || true
OWNER_PID=""
curl_ok=true
tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { curl_ok=false; all_ok=0; }

# A real stop through the API: `tandem node stop --release` on the BACKUP detaches everything and
# removes its pins; the MASTER goes on serving.
backup="$(other "$(master_of)")"
pid="$(pid_of "$backup")"
tb_exec "$backup" "$TANDEM" node stop --release >/dev/null || { log "tandem node stop --release failed on $backup"; all_ok=0; }
for _ in $(seq 100); do tb_alive "$pid" || break; sleep 0.05; done
pins="$PIN_DIR/eth0-$(tb_ip "$backup" | tr . _)"
if tb_alive "$pid" || [[ -e "$pins" ]] || ! grep -q "tandem node stopped; datapath detached" "$TB_STATE/$backup.log"; then
    log "tandem node stop --release: $backup still running, its pins left, or no release logged"; all_ok=0
else
    rm -f "$TB_STATE/$backup.pid"
    log "tandem node stop --release: $backup detached, pins removed"
fi
tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { log "the MASTER stopped serving after the BACKUP's release"; curl_ok=false; all_ok=0; }

python3 - "$all_ok" "$curl_ok" "$CLOUD" "${phases_json[@]}" <<'PY'
import json, sys
all_ok, curl_ok, cloud = sys.argv[1] == "1", sys.argv[2] == "true", sys.argv[3]
phases = [json.loads(x) for x in sys.argv[4:]]
tot = lambda p, k: sum((x.get(p) or {}).get(k) or 0 for x in phases)
ok = all_ok and all(x["ok"] for x in phases)
graceful = [x for x in phases if x["restart"] == "graceful"]
baseline = [x for x in phases if x["restart"] == "none"]
out = {"cloud": cloud, "ok": ok,
       "tcp": {"survived": tot("tcp", "survived"), "total": tot("tcp", "total")},
       "udp": {"survived": tot("udp", "survived"), "total": tot("udp", "total")},
       "longestStallGracefulMs": max([x["longestStallMs"] or -1 for x in graceful] or [-1]),
       "longestStallMs": max([x["longestStallMs"] or -1 for x in phases] or [-1]),
       "longestStallBaselineMs": max([x["longestStallMs"] or -1 for x in baseline] or [-1]),
       "gracefulRoleChanges": sum(x["roleChanges"] + max(0, x["termChanges"]) for x in graceful),
       "curlAfter": curl_ok, "phases": phases}
lines = [f"\nrestart summary ({cloud}): TCP {out['tcp']['survived']}/{out['tcp']['total']}, UDP {out['udp']['survived']}/{out['udp']['total']} flows survived; "
         f"longest stall in graceful restarts {out['longestStallGracefulMs']} ms (with no restart: {out['longestStallBaselineMs']} ms); role changes in graceful restarts {out['gracefulRoleChanges']}; "
         f"curl after: {'ok' if curl_ok else 'FAILED'}; {'PASS' if ok else 'FAIL'}"]
for p in phases:
    g = p["goneMs"] or {}
    lines.append(f"  {p['phase']}: {p['count']} restart(s), flows {p['tcp']['survived']}/{p['tcp']['total']} TCP {p['udp']['survived']}/{p['udp']['total']} UDP, "
                 f"longest stall {p['longestStallMs']} ms, daemon gone {g.get('min')}-{g.get('max')} ms (median {g.get('median')}), "
                 f"term changes {p['termChanges']}, role changes {p['roleChanges']}, MASTER {p['masterBefore']} -> {p['masterAfter']}, "
                 f"VIP owner samples {p['vipOwnerSamples']}")
print("\n".join(lines), file=sys.stderr)
print(json.dumps(out))
sys.exit(0 if ok else 1)
PY
