#!/usr/bin/env bash
# Health probe measurement: detection time of a dead endpoint per probe kind (refusing, and
# silently dropping via nftables), time back up, and flaps of a healthy endpoint during a run
# with random packet loss on the probe path. Not a CI test: run it by hand, as root.
#
#   swift build --product tandem-healthbench --product tandem-echo
#   sudo bench/health-probes.sh            # ROUNDS=5 LOSS=20 LOSS_SECS=60
#
# Builds its own test bed (testbed/up.sh, unique TB=hNNNNN, one node). tandem-healthbench runs in
# llb1 and probes ep1: tcp (tandem-echo :9000), udp with an expected reply (echo :9000), udp
# without one (LoxiLB's rule), http (nginx :80 /whoami), https (a second nginx :8443, self-signed,
# insecure), ping. Each of ROUNDS rounds stops the servers (refused), starts them again, then
# drops everything in ep1 (nftables policy drop), and lifts the drop. Then LOSS % of packets are
# dropped in ep1, both directions (nftables numgen random), for LOSS_SECS seconds.
# Prints one JSON line (and a readable summary on stderr). TIMING_ARGS passes --interval-ms etc.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TANDEM_BIN_DIR:-$REPO/.build/debug}"
export TB="${TB:-h$(printf '%05d' $((RANDOM % 100000)))}"
export TANDEM_ECHO="$BIN/tandem-echo"
ROUNDS="${ROUNDS:-5}"
LOSS="${LOSS:-20}"
LOSS_SECS="${LOSS_SECS:-60}"
TIMING_ARGS="${TIMING_ARGS:-}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"

[[ $EUID -eq 0 ]] || { echo "health-probes.sh: must run as root" >&2; exit 1; }
[[ -x "$BIN/tandem-healthbench" && -x "$TANDEM_ECHO" ]] ||
    { echo "build first: swift build --product tandem-healthbench --product tandem-echo" >&2; exit 1; }

log() { printf '[health %s] %s\n' "$(date +%T.%N | cut -c1-12)" "$*" >&2; }
now() { date +%s.%N; }

EVENTS=""
BENCH_PID=""
cleanup() {
    [[ -n "$BENCH_PID" ]] && kill "$BENCH_PID" 2>/dev/null || true
    bash "$REPO/testbed/down.sh" >/dev/null 2>&1 || true
    # KEEP=1 keeps the raw event lines (every transition with its reason) for a closer look.
    if [[ -n "$EVENTS" && "${KEEP:-0}" != 1 ]]; then rm -f "$EVENTS" "$EVENTS.marks"; fi
    [[ -n "$EVENTS" && "${KEEP:-0}" == 1 ]] && echo "events kept: $EVENTS $EVENTS.marks" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$REPO/testbed/up.sh" >/dev/null
EP="$(tb_ip ep1)"
TLS="$TB_STATE/ep1/tls"
mkdir -p "$TLS/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ep1 -keyout "$TLS/key.pem" -out "$TLS/cert.pem" 2>/dev/null
cat >"$TLS/nginx.conf" <<CONF
pid $TLS/nginx.pid;
error_log $TLS/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $TLS/body; proxy_temp_path $TLS/proxy; fastcgi_temp_path $TLS/fcgi;
    uwsgi_temp_path $TLS/uwsgi; scgi_temp_path $TLS/scgi;
    server {
        listen 8443 ssl;
        ssl_certificate $TLS/cert.pem; ssl_certificate_key $TLS/key.pem;
        location = /whoami { default_type text/plain; return 200 "ep1\n"; }
    }
}
CONF
start_tls() { tb_exec ep1 nginx -e "$TLS/logs/error.log" -p "$TLS/" -c "$TLS/nginx.conf"; }
start_tls

wait_gone() { local f="$1" i; for i in $(seq 100); do [[ -e "$f" ]] || return 0; sleep 0.02; done; return 1; }
stop_servers() {
    kill -TERM "$(cat "$TB_STATE/ep1/nginx.pid")" "$(cat "$TLS/nginx.pid")" "$(cat "$TB_STATE/ep1/echo.pid")" 2>/dev/null || true
    wait_gone "$TB_STATE/ep1/nginx.pid" || true
    wait_gone "$TLS/nginx.pid" || true
}
start_servers() {
    local i
    for i in $(seq 50); do tb_start_nginx ep1 2>/dev/null && break; sleep 0.1; done
    for i in $(seq 50); do start_tls 2>/dev/null && break; sleep 0.1; done
    tb_start_echo ep1
}
# The drops sit on ep1's eth0 (netdev ingress and egress hooks), below the sockets: an inet
# output-hook drop would fail the servers' sends with EPERM instead (NIO's UDP echo server then
# closes its socket), which is not what a lossy or dead link does.
drop_all() {
    tb_exec ep1 nft "add table netdev hbench; add chain netdev hbench in { type filter hook ingress device eth0 priority 0; policy drop; }; add chain netdev hbench out { type filter hook egress device eth0 priority 0; policy drop; }"
}
lossy() {
    tb_exec ep1 nft "add table netdev hbench; add chain netdev hbench in { type filter hook ingress device eth0 priority 0; }; add chain netdev hbench out { type filter hook egress device eth0 priority 0; }; add rule netdev hbench in numgen random mod 100 < $LOSS drop; add rule netdev hbench out numgen random mod 100 < $LOSS drop"
}
lift() { tb_exec ep1 nft delete table netdev hbench; }

EVENTS="$(mktemp /tmp/health-probes.XXXXXX)"
TOTAL=$(( ROUNDS * 12 + LOSS_SECS + 10 ))
# shellcheck disable=SC2086
tb_exec llb1 "$BIN/tandem-healthbench" --duration "$TOTAL" $TIMING_ARGS \
    "tcp=tcp@$EP:9000" "udp-reply=udp::hello:hello@$EP:9000" "udp=udp@$EP:9000" \
    "http=http:/whoami:200@$EP:80" "https=https:/whoami:200:insecure@$EP:8443" "ping=ping@$EP:0" >"$EVENTS" &
BENCH_PID=$!
mark() { echo "$1 $(now)" >>"$EVENTS.marks"; }
sleep 3
for r in $(seq "$ROUNDS"); do
    log "round $r: servers stopped (refusing)"
    mark "refuse$r"; stop_servers; sleep 2.5
    mark "restart$r"; start_servers; sleep 3.5
    log "round $r: ep1 drops every packet"
    mark "drop$r"; drop_all; sleep 2.5
    mark "undrop$r"; lift; sleep 3.5
done
log "${LOSS}% loss both directions for ${LOSS_SECS}s"
mark "loss"; lossy; sleep "$LOSS_SECS"; mark "lossend"; lift
sleep 1
kill -TERM "$BENCH_PID" 2>/dev/null || true  # it prints its summary and exits
wait "$BENCH_PID" 2>/dev/null || true
BENCH_PID=""

python3 - "$EVENTS" "$EVENTS.marks" "$ROUNDS" "$LOSS" "$LOSS_SECS" <<'PY'
import json, sys, statistics
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
marks = dict((l.split()[0], float(l.split()[1])) for l in open(sys.argv[2]))
rounds, loss, loss_secs = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = next((e for e in events if e["event"] == "start"), {})
trans = [e for e in events if e["event"] == "transition"]
kinds = ["tcp", "udp-reply", "udp", "http", "https", "ping"]
def first(kind, to, t0, t1):
    for e in trans:
        if e["endpoint"] == kind and e["to"] == to and t0 <= e["wall"] < t1:
            return e["wall"] - t0
    return None
out = {"bench": "health-probes", "timing": start.get("timing", {}),
       "rounds": rounds, "loss_percent": loss, "loss_seconds": loss_secs, "kinds": {}}
lines = []
for k in kinds:
    res = {}
    for fault, back in (("refuse", "restart"), ("drop", "undrop")):
        det, rec = [], []
        for r in range(1, rounds + 1):
            t0, t1 = marks[f"{fault}{r}"], marks[f"{back}{r}"]
            nxt = marks.get(f"refuse{r+1}" if fault == "drop" else f"drop{r}", marks["loss"])
            d = first(k, "down", t0, t1)
            det.append(None if d is None else round(d * 1000))
            u = first(k, "up", t1, nxt)
            rec.append(None if u is None else round(u * 1000))
        got = [x for x in det if x is not None]
        res[fault] = {"detect_ms": det, "detect_ms_max": max(got) if got else None,
                      "detect_ms_median": statistics.median(got) if got else None, "missed": det.count(None),
                      "recover_ms_median": statistics.median([x for x in rec if x is not None]) if any(x is not None for x in rec) else None}
    flaps = sum(1 for e in trans if e["endpoint"] == k and marks["loss"] <= e["wall"] <= marks["lossend"] + 0.5)
    res["loss_flaps"] = flaps
    out["kinds"][k] = res
    lines.append(f"  {k:10s} refused: median {res['refuse']['detect_ms_median']} ms, max {res['refuse']['detect_ms_max']} ms, missed {res['refuse']['missed']}/{rounds};"
                 f" dropped: median {res['drop']['detect_ms_median']} ms, max {res['drop']['detect_ms_max']} ms, missed {res['drop']['missed']}/{rounds};"
                 f" flaps at {loss}% loss over {loss_secs}s: {flaps}")
stats = [e for e in events if e["event"] == "stats"]
def at(t):
    # The last counters taken at or before t.
    best = None
    for e in stats:
        if e["wall"] <= t: best = e
    return best["probes"] if best else {}
a, b = at(marks["loss"] + 1.0), at(marks["lossend"])
out["loss_probe_failure"] = {}
for k in kinds:
    if k in a and k in b and b[k][0] > a[k][0]:
        sent, failed = b[k][0] - a[k][0], b[k][1] - a[k][1]
        out["loss_probe_failure"][k] = {"probes": sent, "failed": failed, "rate": round(failed / sent, 5)}
for k, v in out["loss_probe_failure"].items():
    lines.append(f"  {k:10s} probes during loss: {v['probes']}, failed {v['failed']} ({100 * v['rate']:.2f} %)")
print(json.dumps(out, sort_keys=True))
print("health probes (timing per kind in the JSON line):", file=sys.stderr)
print("\n".join(lines), file=sys.stderr)
PY
