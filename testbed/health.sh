#!/usr/bin/env bash
# Endpoint health through the real daemon: steady HTTP load through the VIP (a new connection every
# 20 ms), then ep1's nginx is stopped and started again (refused), then ep1 silently drops every
# packet and the drop is lifted (dropped); once per probe kind. Then LOSS % of the packets to and
# from ep2 (healthy) are dropped for FLAP_SECS seconds while the load runs, and its state changes
# are counted (must be 0).
#
#   testbed/health.sh [--probes tcp,http:/whoami:200] [--flap-seconds 60] [--loss 20]
#
# Reports per kind and round: time from the failure to ep1 leaving the rotation (as the API shows
# it), requests failed, requests sent to ep1 after it was marked down (must be 0), time back in
# rotation after recovery; and the flap count. One JSON line on stdout, a readable summary on
# stderr; exits non-zero unless every round met the targets (down in < 1 s, nothing sent to a down
# endpoint, no flap). Builds its own test bed (one node) and removes it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROBES="tcp,http:/whoami:200" FLAP_SECS=60 LOSS=20
while (($#)); do
    case "$1" in
        --probes) PROBES="$2"; shift 2 ;;
        --flap-seconds) FLAP_SECS="$2"; shift 2 ;;
        --loss) LOSS="$2"; shift 2 ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "health: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$FLAP_SECS" =~ ^[0-9]+$ && "$LOSS" =~ ^[0-9]+$ ]] || { echo "health: --flap-seconds and --loss are whole numbers" >&2; exit 2; }
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
TANDEM="$BIN/tandem"
export TANDEM_ECHO="$BIN/tandem-echo"
export TB="${TB:-hs$(printf '%04d' $((RANDOM % 10000)))}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
[[ $EUID -eq 0 ]] || { echo "health: must run as root" >&2; exit 1; }
[[ -x "$TANDEM" && -x "$TANDEM_ECHO" ]] || { echo "health: build first (make build)" >&2; exit 1; }

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

results=()
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
done

# Flaps: LOSS % of ep2's packets dropped both ways for FLAP_SECS, load running on the first rule.
log "flap run: $LOSS % loss to and from ep2 for $FLAP_SECS s"
first_port=56011
declare -A before
for ((p = first_port; p <= port; p++)); do before[$p]="$(transitions "$p" "$EP2")"; done
load="$TB_STATE/load-flap.jsonl"
start_load "$first_port" "$load"
lossy ep2
sleep "$FLAP_SECS"
lift ep2
stop_load
flaps=0
for ((p = first_port; p <= port; p++)); do flaps=$((flaps + $(transitions "$p" "$EP2") - ${before[$p]})); done

python3 - "$flaps" "$FLAP_SECS" "$LOSS" "$load" "${results[@]}" <<'PY'
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
