#!/usr/bin/env bash
# Endpoint health through the real daemon: steady HTTP load through the VIP (a new connection every
# 20 ms), then ep1's nginx is stopped and started again (refused), then ep1 silently drops every
# packet and the drop is lifted (dropped); once per probe kind. Then LOSS % of the packets to and
# from ep2 (healthy) are dropped for FLAP_SECS seconds while the load runs, and its state changes
# are counted (must be 0).
#
#   testbed/health.sh [--probes tcp,http:/whoami:200] [--flap-seconds 60] [--loss 20]
#                     [--plot FILE.png|FILE.svg]
#
# --plot writes a timeline of the run with matplotlib, installed if missing: the requests by the
# endpoint that answered them and the failed ones, per 100 ms, one row per probe kind with each
# failure, ep1 shown down by the API, the recovery and ep1 shown up marked; a last row, per second,
# for the flap run.
#
# Reports per kind and round: time from the failure to ep1 leaving the rotation (as the API shows
# it), requests failed, requests sent to ep1 after it was marked down (must be 0), time back in
# rotation after recovery; and the flap count. One JSON line on stdout, a readable summary on
# stderr; exits non-zero unless every round met the targets (down in < 1 s, nothing sent to a down
# endpoint, no flap), or if a plot asked for could not be written. Builds its own test bed (one
# node) and removes it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROBES="tcp,http:/whoami:200" FLAP_SECS=60 LOSS=20 PLOT=""
while (($#)); do
    case "$1" in
        --probes) PROBES="$2"; shift 2 ;;
        --flap-seconds) FLAP_SECS="$2"; shift 2 ;;
        --loss) LOSS="$2"; shift 2 ;;
        --plot) PLOT="$2"; shift 2 ;;
        -h|--help) sed -n 2,21p "$0"; exit 0 ;;
        *) echo "health: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$FLAP_SECS" =~ ^[0-9]+$ && "$LOSS" =~ ^[0-9]+$ ]] || { echo "health: --flap-seconds and --loss are whole numbers" >&2; exit 2; }
if [[ -n "$PLOT" ]]; then
    [[ "$PLOT" == *.png || "$PLOT" == *.svg ]] || { echo "health: --plot FILE must end in .png or .svg" >&2; exit 2; }
    [[ -d "$(dirname "$PLOT")" ]] || { echo "health: --plot $PLOT: no directory $(dirname "$PLOT")" >&2; exit 2; }
fi
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
TANDEM="$BIN/tandem"
export TANDEM_ECHO="$BIN/tandem-echo"
export TB="${TB:-hs$(printf '%04d' $((RANDOM % 10000)))}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
[[ $EUID -eq 0 ]] || { echo "health: must run as root" >&2; exit 1; }
[[ -x "$TANDEM" && -x "$TANDEM_ECHO" ]] || { echo "health: build first (make build)" >&2; exit 1; }
[[ -z "$PLOT" ]] || tb_need_matplotlib   # sets TB_PLOT_PYTHON; before the run, so a failure costs nothing

log() { printf '[health %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
now() { date +%s.%N; }
NODE_PID="" LOAD_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$LOAD_PID" ]]; then kill "$LOAD_PID" 2>/dev/null || true; fi
    if [[ -n "$NODE_PID" ]]; then kill -TERM "$NODE_PID" 2>/dev/null || true; fi
    sleep 0.3
    ((rc == 0)) || { echo "--- node log (tail)" >&2; tail -n 30 "$TB_STATE/llb1.log" >&2 2>/dev/null || true; }
    [[ "${KEEP:-0}" == 1 ]] || bash "$REPO/testbed/down.sh" >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$REPO/testbed/up.sh" >/dev/null
cat >"$TB_STATE/llb1.yaml" <<YAML
interfaces: [eth0]
services: []
YAML
setsid ip netns exec "$(tb_ns llb1)" "$TANDEM" node run --config "$TB_STATE/llb1.yaml" --no-state </dev/null \
    >"$TB_STATE/llb1.log" 2>&1 &
NODE_PID=$!
tb_wait_for 20 "the node's API" tb_exec llb1 curl -fsS -m 1 -o /dev/null http://127.0.0.1:11111/netlox/v1

# The API as seen from the node; the poller waits for an endpoint state and prints when it came.
api() { tb_exec llb1 curl -sS -m 3 "$@"; }
wait_state() {  # PORT HOST STATE TIMEOUT_S -> epoch seconds when seen, or nothing
    tb_exec llb1 python3 - "$@" <<'PY'
import json, sys, time, urllib.request
port, host, want, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
end = time.time() + limit
while time.time() < end:
    try:
        body = json.load(urllib.request.urlopen("http://127.0.0.1:11111/netlox/v1/config/endpoint/all", timeout=1))
        for e in body.get("Attr", []):
            if e["hostName"] == host and e["name"].endswith(":%s/tcp" % port) and e["currState"] == want:
                print("%.6f" % time.time()); sys.exit(0)
    except Exception:
        pass
    time.sleep(0.01)
PY
}
transitions() {  # PORT HOST -> health transitions so far
    api http://127.0.0.1:11111/netlox/v1/config/loadbalancer/all | python3 -c '
import json, sys
port, host = int(sys.argv[1]), sys.argv[2]
for r in json.load(sys.stdin)["lbAttr"]:
    if r["serviceArguments"]["port"] == port:
        for e in r["endpoints"]:
            if e["endpointIP"] == host: print(e.get("healthTransitions", 0)); sys.exit(0)
print(0)' "$@"
}

# Load: one HTTP request on a new connection every 20 ms, each logged with its send time,
# outcome and the endpoint that answered (nginx's /whoami says ep1 or ep2).
start_load() {  # PORT OUTFILE
    ip netns exec "$(tb_ns client)" python3 - "$1" "$2" "$TB_VIP" <<'PY' &
import json, socket, sys, time
port, path, vip = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = open(path, "w", buffering=1)
while True:
    t = time.time()
    rec = {"t": t}
    try:
        s = socket.create_connection((vip, port), timeout=1)
        s.settimeout(1)
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d: break
            data += d
        s.close()
        rec["ok"] = data.startswith(b"HTTP/1.1 200")
        rec["ep"] = "ep1" if b"ep1" in data else "ep2" if b"ep2" in data else "?"
    except Exception as e:
        rec["ok"] = False
        rec["err"] = type(e).__name__
    out.write(json.dumps(rec) + "\n")
    time.sleep(max(0.0, 0.02 - (time.time() - t)))
PY
    LOAD_PID=$!
}
stop_load() { [[ -n "$LOAD_PID" ]] && kill "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=""; }

EP1="$(tb_ip ep1)" EP2="$(tb_ip ep2)"
wait_gone() { for _ in $(seq 100); do [[ -e "$1" ]] || return 0; sleep 0.02; done; return 1; }
stop_nginx() { kill -TERM "$(cat "$TB_STATE/ep1/nginx.pid")"; wait_gone "$TB_STATE/ep1/nginx.pid"; }
start_nginx() { for _ in $(seq 50); do tb_start_nginx ep1 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# Drops on the endpoint's own device (netdev hooks), below its sockets, as a dead link would.
drop_all() { tb_exec "$1" nft "add table netdev tdmh; add chain netdev tdmh in { type filter hook ingress device eth0 priority 0; policy drop; }; add chain netdev tdmh out { type filter hook egress device eth0 priority 0; policy drop; }"; }
lossy() { tb_exec "$1" nft "add table netdev tdmh; add chain netdev tdmh in { type filter hook ingress device eth0 priority 0; }; add chain netdev tdmh out { type filter hook egress device eth0 priority 0; }; add rule netdev tdmh in numgen random mod 100 < $LOSS drop; add rule netdev tdmh out numgen random mod 100 < $LOSS drop"; }
lift() { tb_exec "$1" nft delete table netdev tdmh; }

# --plot: one line per phase (its requests, events and ep1's time out of rotation) for
# testbed/plot_requests.py; the per-kind result gives the numbers in the row's title.
plot_kind() {  # KIND LOAD RESULT_JSON ROUND:T0:T_DOWN:T_FIX:T_UP...
    python3 - "$@" >>"$TB_STATE/plot-phases.jsonl" <<'PY'
import json, sys
kind, load, res, marks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
how = {"refused": ("ep1's nginx stopped", "nginx started"), "dropped": ("ep1 drops all packets", "drop lifted")}
ms = lambda t: t * 1000.0
events, bands, parts = [], [], []
for m in marks:
    name, t0, t_down, t_fix, t_up = m.split(":")
    t0, t_down, t_fix, t_up = float(t0), float(t_down), float(t_fix), float(t_up)
    fail, fix = how.get(name, (name, "recovered"))
    x = res[name]
    events.append({"label": fail, "atUnixMs": ms(t0), "kind": "failure"})
    if t_down > 0:
        events.append({"label": f"API: ep1 down, +{x['detectMs']} ms", "atUnixMs": ms(t_down), "kind": "detected"})
    events.append({"label": fix, "atUnixMs": ms(t_fix), "kind": "recovery"})
    if t_up > 0:
        events.append({"label": f"API: ep1 up, +{x['returnMs']} ms", "atUnixMs": ms(t_up), "kind": "restored"})
    if t_down > 0:
        bands.append({"label": "ep1 out of rotation (API)", "fromUnixMs": ms(t_down),
                      "toUnixMs": ms(t_up if t_up > 0 else t_fix + 10)})
    never = "" if x["detectMs"] is not None else ", ep1 never shown down"
    parts.append(f"{name}: {x['failed']} of {x['requests']} requests failed, {x['toEp1AfterDown']} sent to ep1 while down{never}")
print(json.dumps({"title": f"probe {kind}  |  " + "  |  ".join(parts), "load": load, "binMs": 100,
                  "events": events, "bands": bands}))
PY
}
plot_flap() {  # LOAD T_LOSS T_LIFT FLAPS
    python3 - "$@" "$LOSS" "$FLAP_SECS" "${kinds[0]}" >>"$TB_STATE/plot-phases.jsonl" <<'PY'
import json, sys
load, loss, secs, kind = sys.argv[1], sys.argv[5], sys.argv[6], sys.argv[7]
t_loss, t_lift, flaps = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
reqs = [json.loads(l) for l in open(load) if l.strip()]
failed = sum(1 for r in reqs if not r["ok"])
kept = "stayed in rotation" if flaps == 0 else "flapped"
print(json.dumps({"title": f"flap run: {loss} % loss to and from ep2 for {secs} s, load on the {kind} rule  |  "
                           f"ep2 state changes: {flaps}, {kept}  |  {failed} of {len(reqs)} requests failed",
                  "load": load, "binMs": 1000,
                  "events": [{"label": f"{loss} % loss on ep2", "atUnixMs": t_loss * 1000, "kind": "failure"},
                             {"label": "loss lifted", "atUnixMs": t_lift * 1000, "kind": "recovery"}],
                  "bands": [{"label": "ep2 lossy", "fromUnixMs": t_loss * 1000, "toUnixMs": t_lift * 1000,
                             "color": "#fde3c8"}]}))
PY
}

results=() plot_ok=1
port=56010
IFS=',' read -r -a kinds <<<"$PROBES"
for kind in "${kinds[@]}"; do
    port=$((port + 1))
    body="$(python3 -c 'import json,sys; print(json.dumps({"serviceArguments":{"externalIP":sys.argv[1],"port":int(sys.argv[2]),"protocol":"tcp","sel":0,"mode":2,"Monitor":True,"probe":sys.argv[3]},"endpoints":[{"endpointIP":sys.argv[4],"targetPort":80,"weight":1},{"endpointIP":sys.argv[5],"targetPort":80,"weight":1}]}))' "$TB_VIP" "$port" "$kind" "$EP1" "$EP2")"
    answer="$(api -X POST -H 'Content-Type: application/json' --data-binary "$body" http://127.0.0.1:11111/netlox/v1/config/loadbalancer)"
    [[ "$answer" == *Success* ]] || { log "rule for probe $kind refused: $answer"; exit 1; }
    [[ -n "$(wait_state "$port" "$EP1" up 5)" && -n "$(wait_state "$port" "$EP2" up 5)" ]] || { log "$kind: endpoints never up"; exit 1; }
    load="$TB_STATE/load-$port.jsonl"
    start_load "$port" "$load"
    sleep 1
    marks=()
    for round in refused dropped; do
        t0="$(now)"
        if [[ "$round" == refused ]]; then stop_nginx; else drop_all ep1; fi
        t_down="$(wait_state "$port" "$EP1" down 5)"
        [[ -n "$t_down" ]] || t_down=-1
        sleep 2
        t_fix="$(now)"
        if [[ "$round" == refused ]]; then start_nginx; else lift ep1; fi
        t_up="$(wait_state "$port" "$EP1" up 10)"
        [[ -n "$t_up" ]] || t_up=-1
        sleep 1
        marks+=("$round:$t0:$t_down:$t_fix:$t_up")
        log "$kind $round: down $(python3 -c "print(round(($t_down-$t0)*1000) if $t_down>0 else 'never')") ms after the failure, back $(python3 -c "print(round(($t_up-$t_fix)*1000) if $t_up>0 else 'never')") ms after recovery"
    done
    stop_load
    results+=("$(python3 - "$kind" "$load" "${marks[@]}" <<'PY'
import json, sys
kind, path, marks = sys.argv[1], sys.argv[2], sys.argv[3:]
reqs = [json.loads(l) for l in open(path) if l.strip()]
out = {"probe": kind, "requests": len(reqs)}
for m in marks:
    name, t0, t_down, t_fix, t_up = m.split(":")
    t0, t_down, t_fix, t_up = float(t0), float(t_down), float(t_fix), float(t_up)
    end = (t_up if t_up > 0 else t_fix + 10) + 1.0
    window = [r for r in reqs if t0 <= r["t"] <= end]
    out[name] = {
        "detectMs": round((t_down - t0) * 1000) if t_down > 0 else None,
        "failed": sum(1 for r in window if not r["ok"]),
        "failedAfterDown": sum(1 for r in window if not r["ok"] and t_down > 0 and r["t"] > t_down and (t_up < 0 or r["t"] < t_fix)),
        "toEp1AfterDown": sum(1 for r in window if r.get("ep") == "ep1" and t_down > 0 and t_down < r["t"] < t_fix),
        "returnMs": round((t_up - t_fix) * 1000) if t_up > 0 else None,
        "requests": len(window),
    }
print(json.dumps(out))
PY
)")
    [[ -z "$PLOT" ]] || plot_kind "$kind" "$load" "${results[-1]}" "${marks[@]}" || plot_ok=0
done

# Flaps: LOSS % of ep2's packets dropped both ways for FLAP_SECS, load running on the first rule.
log "flap run: $LOSS % loss to and from ep2 for $FLAP_SECS s"
first_port=56011
declare -A before
for ((p = first_port; p <= port; p++)); do before[$p]="$(transitions "$p" "$EP2")"; done
load="$TB_STATE/load-flap.jsonl"
start_load "$first_port" "$load"
t_loss="$(now)"
lossy ep2
sleep "$FLAP_SECS"
t_lift="$(now)"
lift ep2
stop_load
flaps=0
for ((p = first_port; p <= port; p++)); do flaps=$((flaps + $(transitions "$p" "$EP2") - ${before[$p]})); done
[[ -z "$PLOT" ]] || plot_flap "$load" "$t_loss" "$t_lift" "$flaps" || plot_ok=0

rc=0
python3 - "$flaps" "$FLAP_SECS" "$LOSS" "$load" "${results[@]}" <<'PY' || rc=$?
import json, sys
flaps, secs, loss, load = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kinds = [json.loads(x) for x in sys.argv[5:]]
reqs = [json.loads(l) for l in open(load) if l.strip()]
ok = flaps == 0
for k in kinds:
    for r in ("refused", "dropped"):
        x = k[r]
        ok = ok and x["detectMs"] is not None and x["detectMs"] < 1000 and x["toEp1AfterDown"] == 0 and x["returnMs"] is not None
out = {"kinds": kinds, "flap": {"seconds": secs, "lossPercent": loss, "transitions": flaps,
       "requests": len(reqs), "failedRequests": sum(1 for r in reqs if not r["ok"])}, "ok": ok}
for k in kinds:
    for r in ("refused", "dropped"):
        x = k[r]
        print(f"{k['probe']:>18} {r:>8}: out of rotation {x['detectMs']} ms after the failure, "
              f"{x['failed']} of {x['requests']} requests failed ({x['failedAfterDown']} after it was marked down), "
              f"{x['toEp1AfterDown']} sent to it while down, back {x['returnMs']} ms after recovery", file=sys.stderr)
print(f"flaps of a healthy endpoint at {loss} % loss for {secs} s: {flaps} "
      f"({out['flap']['failedRequests']} of {len(reqs)} requests through the lossy endpoint failed)", file=sys.stderr)
print(f"health: {'PASS' if ok else 'FAIL'}", file=sys.stderr)
print(json.dumps(out))
sys.exit(0 if ok else 1)
PY
# The plot comes after the verdict and the JSON line, and changes neither; a plot asked for and not
# written (or missing a phase) makes the exit status non-zero.
if [[ -n "$PLOT" ]]; then
    verdict=PASS; ((rc == 0)) || verdict=FAIL
    { python3 -c 'import json,sys; print(json.dumps({"phases": [json.loads(l) for l in open(sys.argv[1]) if l.strip()]}))' \
        "$TB_STATE/plot-phases.jsonl" >"$TB_STATE/plot-run.json" &&
        "$TB_PLOT_PYTHON" "$REPO/testbed/plot_requests.py" "$TB_STATE/plot-run.json" "$PLOT" \
            --title "health.sh: ep1 fails under a request every 20 ms through the VIP, then $LOSS % loss on ep2: $verdict"; } ||
        plot_ok=0
    ((plot_ok)) || { log "--plot: $PLOT not written, or a phase is missing from it"; ((rc != 0)) || rc=1; }
fi
((rc == 0)) || exit "$rc"
