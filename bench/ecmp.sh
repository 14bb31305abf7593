#!/usr/bin/env bash
# ECMP benchmark: Tandem against the alternative a user would build without it, side by side in
# one invocation: three nodes behind the same BIRD router with ECMP (L4 hash), the same 300 TCP +
# 60 UDP long-lived flows through the VIP 10.0.10.143, the same phases (one node killed silently,
# brought back, another drained). testbed/ecmp.sh runs each system on a fresh bed:
#   tandem    three active-active Tandem nodes (replication, per-node source addresses, BIRD
#             started by the daemon); every flow must survive (a lost flow fails this script)
#   nftables  three Linux nodes with nftables fullnat (DNAT by a jhash of the client's address and
#             port that is the same on every node, SNAT to the node's own source address), kernel
#             conntrack with no state sync, and a BIRD per node announcing what Tandem announces;
#             flows that break are the measured outcome (ecmp.sh --expect-breaks)
# Reported side by side: flows survived per phase (TCP, UDP), the longest stall, the time for the
# router to drop the dead node (and to take the returning one back, to drop the drained one), and
# ratios Tandem/nftables. Markdown table on stderr and in RESULTS, one JSON line on stdout and in
# RESULTS_JSON; each run's own JSON line and log in bench/results/ecmp-SYSTEM-latest.{json,log}.
#
#   bench/ecmp.sh [ECMP.SH OPTIONS]    e.g. --tcp 300 --udp 60 --no-bfd --hold 3 (passed to both runs)
#
# Environment: TANDEM_BIN [the repo's .build/release], SYSTEMS ["tandem nftables"],
#   RESULTS [bench/results/ecmp-latest.md], RESULTS_JSON [bench/results/ecmp-latest.json].
# Exit status 0 if the Tandem run passed (every flow survived) and the nftables run's checks
# passed (its broken flows are not a failure); 1 otherwise (the table is printed anyway).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
SYSTEMS="${SYSTEMS:-tandem nftables}"
OUT="$BENCH_DIR/results"
RESULTS="${RESULTS:-$OUT/ecmp-latest.md}"
RESULTS_JSON="${RESULTS_JSON:-$OUT/ecmp-latest.json}"
export TANDEM_BIN="${TANDEM_BIN:-$REPO/.build/release}"

[[ $EUID -eq 0 ]] || { echo "bench/ecmp.sh: must run as root" >&2; exit 1; }
for a in "$@"; do
    case "$a" in
        --system|--system=*|--expect-breaks|--vip-source)
            echo "bench/ecmp.sh: $a is chosen per run by this script" >&2; exit 2 ;;
    esac
done
for s in $SYSTEMS; do
    [[ "$s" == tandem || "$s" == nftables ]] || { echo "bench/ecmp.sh: SYSTEMS: unknown system $s" >&2; exit 2; }
done
mkdir -p "$OUT" "$(dirname "$RESULTS")" "$(dirname "$RESULTS_JSON")"
log() { printf '[bench ecmp %s] %s\n' "$(date +%T)" "$*" >&2; }

declare -A RC
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
for s in $SYSTEMS; do
    extra=()
    [[ "$s" == nftables ]] && extra=(--expect-breaks)
    log "$s: testbed/ecmp.sh --system $s ${extra[*]} $*"
    rc=0
    # A fresh bed per run (ecmp.sh picks its own TB); its summary goes to the log and to stderr.
    env -u TB bash "$REPO/testbed/ecmp.sh" --system "$s" "${extra[@]}" "$@" \
        >"$OUT/ecmp-$s-latest.json" 2> >(tee "$OUT/ecmp-$s-latest.log" >&2) || rc=$?
    RC[$s]=$rc
    [[ -s "$OUT/ecmp-$s-latest.json" ]] || echo '{}' >"$OUT/ecmp-$s-latest.json"
    log "$s: exit $rc"
done
sleep 0.2   # the tee of the last run's stderr

set +e
python3 - "$OUT" "$RESULTS" "$RESULTS_JSON" "$started" "${RC[tandem]:-}" "${RC[nftables]:-}" "$*" "$SYSTEMS" <<'PY'
import json, os, sys
out_dir, md_path, json_path, started, rc_t, rc_n, args, systems = sys.argv[1:9]
systems = systems.split()
def load(s):
    try:
        with open(os.path.join(out_dir, f"ecmp-{s}-latest.json")) as f:
            line = [l for l in f.read().splitlines() if l.strip()]
        return json.loads(line[-1]) if line else {}
    except (OSError, ValueError):
        return {}
runs = {s: (load(s) if s in systems else {}) for s in ("tandem", "nftables")}
def phase(r, name):
    return next((p for p in r.get("phases", []) if p.get("phase") == name), {})
def alive_before(p, proto):
    s, l = p.get("survived", {}).get(proto), p.get("lost", {}).get(proto)
    return None if s is None or l is None else s + l
def cnt(r, name, proto):
    p = phase(r, name)
    s, b = p.get("survived", {}).get(proto), alive_before(p, proto)
    return (s, b)
def frac(v):
    s, b = v
    return "-" if s is None else f"{s}/{b}"
def pct(v):
    s, b = v
    return None if s is None or not b else s / b
def ratio(a, b, fmt="{:.2f}x"):
    if a is None or b is None:
        return "-"
    if b == 0:
        return "-" if a == 0 else "inf"
    return fmt.format(a / b)
def ms(v):
    return "-" if v is None or v < 0 else f"{v:g}"
t, n = runs["tandem"], runs["nftables"]
rows = []   # (metric, tandem text, nftables text, ratio text)
def total_row(proto, label):
    a, b = t.get(proto, {}), n.get(proto, {})
    av = (a.get("survived"), a.get("total")); bv = (b.get("survived"), b.get("total"))
    rows.append((f"{label} flows survived, whole run", frac(av), frac(bv), ratio(av[0], bv[0])))
total_row("tcp", "TCP")
total_row("udp", "UDP")
labels = {"kill": "kill (llb1 dies silently)", "return": "return (llb1 back)", "drain": "drain (llb2)"}
for name in ("kill", "return", "drain"):
    for proto in ("tcp", "udp"):
        a, b = cnt(t, name, proto), cnt(n, name, proto)
        rows.append((f"{labels[name]}: {proto.upper()} flows survived (of those alive before)", frac(a), frac(b), ratio(pct(a), pct(b))))
    pa, pb = phase(t, name), phase(n, name)
    rows.append((f"{labels[name]}: longest stall ms (any flow, until it failed; lower is better)",
                 ms(pa.get("longestStallMs")), ms(pb.get("longestStallMs")), ratio(pa.get("longestStallMs"), pb.get("longestStallMs"))))
    rows.append((f"{labels[name]}: surviving flows the router moved to another node",
                 str(pa.get("flowsMoved", "-")), str(pb.get("flowsMoved", "-")), ""))
rows.append(("longest stall ms, whole run (lower is better)", ms(t.get("longestStallMs")), ms(n.get("longestStallMs")),
             ratio(t.get("longestStallMs"), n.get("longestStallMs"))))
rows.append(("router drops the dead node, ms after the kill", ms(t.get("killRouteDroppedMs")), ms(n.get("killRouteDroppedMs")),
             ratio(t.get("killRouteDroppedMs"), n.get("killRouteDroppedMs"))))
rows.append(("router routes to the returning node, ms after its start", ms(t.get("returnAnnouncedMs")), ms(n.get("returnAnnouncedMs")),
             ratio(t.get("returnAnnouncedMs"), n.get("returnAnnouncedMs"))))
rows.append(("router drops the drained node, ms after the drain command", ms(t.get("drainWithdrawnMs")), ms(n.get("drainWithdrawnMs")),
             ratio(t.get("drainWithdrawnMs"), n.get("drainWithdrawnMs"))))
rows.append(("dead node detected by", str(t.get("detectedBy", "-")), str(n.get("detectedBy", "-")), ""))
def status(r, rc, want_all):
    if rc == "":
        return "not run"
    if not r:
        return "no result"
    if rc not in ("0", ""):
        return f"FAIL (exit {rc})"
    return "pass" if want_all else "pass (breaks measured)"
rows.append(("run", status(t, rc_t, True), status(n, rc_n, False), ""))
bfd = t.get("bfd", n.get("bfd"))
title = (f"ECMP: Tandem against nftables nodes ({started}; 3 nodes behind one BIRD router, L4-hash ECMP, "
         f"{'BFD 100 ms x 3' if bfd else 'no BFD'}, hold {t.get('holdSeconds', n.get('holdSeconds', '-'))} s; "
         f"{t.get('tcp', n.get('tcp', {})).get('total', '-')} TCP + {t.get('udp', n.get('udp', {})).get('total', '-')} UDP flows"
         f"{'; ecmp.sh ' + args if args else ''})")
md = [title, "", "| Metric | Tandem | nftables | Tandem/nftables |", "| --- | ---: | ---: | ---: |"]
md += [f"| {m} | {a} | {b} | {r} |" for m, a, b, r in rows]
for s, r in runs.items():
    for p in r.get("problems", []):
        md.append(f"\n{s} problem: {p}")
text = "\n".join(md) + "\n"
with open(md_path, "w") as f:
    f.write(text)
print(text, file=sys.stderr)
def brief(r):
    keys = ("ok", "tcp", "udp", "longestStallMs", "killRouteDroppedMs", "detectedBy", "returnAnnouncedMs",
            "drainWithdrawnMs", "drainLastPacketMs", "problems", "breaks")
    d = {k: r.get(k) for k in keys}
    d["phases"] = [{k: p.get(k) for k in ("phase", "survived", "lost", "longestStallMs", "flowsMoved")} for p in r.get("phases", [])]
    return d
ok = all({"tandem": rc_t, "nftables": rc_n}[s] == "0" and runs[s] for s in systems)
summary = {"bench": "ecmp", "started": started, "ok": ok, "args": args, "tandem": brief(t) if t else None,
           "nftables": brief(n) if n else None,
           "ratios": {"tcpSurvived": ratio(t.get("tcp", {}).get("survived"), n.get("tcp", {}).get("survived"), "{:.2f}"),
                      "udpSurvived": ratio(t.get("udp", {}).get("survived"), n.get("udp", {}).get("survived"), "{:.2f}"),
                      "longestStall": ratio(t.get("longestStallMs"), n.get("longestStallMs"), "{:.2f}"),
                      "killRouteDropped": ratio(t.get("killRouteDroppedMs"), n.get("killRouteDroppedMs"), "{:.2f}")}}
line = json.dumps(summary)
with open(json_path, "w") as f:
    f.write(line + "\n")
print(line)
sys.exit(0 if ok else 1)
PY
rc=$?
set -e
log "written to $RESULTS and $RESULTS_JSON"
exit "$rc"
