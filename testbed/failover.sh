#!/usr/bin/env bash
# The reboot-the-master test: two Tandem nodes (llb1 10.0.10.141, llb2 10.0.10.88) in MASTER/BACKUP
# for the floating IP 10.0.10.143, long-lived TCP and UDP flows from the client through it, then the
# MASTER is "rebooted": its daemon is SIGKILLed and its link taken down, and the kernel state a
# reboot would wipe (its TC programs and, for l2, the VIP address) is flushed. The BACKUP must take
# the floating IP and keep every flow going; the old master comes back later as BACKUP and resyncs.
#
#   testbed/failover.sh [--tcp 200] [--udp 50] [--rounds 1] [--cloud l2|oci|bgp] [--down 3] [--victim master|backup]
#                       [--slow-start] [--plot FILE.svg|FILE.png]
#
# --cloud bgp is the master-backup form over BGP (issue 17): a BIRD router in the vcn (bgp-lib.sh,
# BFD 100 ms x 3 unless BGP_BFD=0) peers with both nodes; each node's own BIRD announces the VIP,
# the MASTER with MED 10, the BACKUP with MED 20, so the router's FIB holds the MASTER only. The
# floating IP has moved once the router's FIB sends the VIP to the survivor alone ("route moved").
# --plot writes a timeline of the first round (every flow's stalls as bars, the kill, death
# declared, election, floating IP moved, the return marked) with matplotlib, installed if missing.
# --victim backup reboots the BACKUP instead: the MASTER must keep its role and every flow.
# --slow-start makes each return slow, as a real reboot can be: the vcn router answers the
# returning node's ARP after a random 0-800 ms (Linux's default proxy_delay), its ARP cache starts
# empty, and everything it sends in its first second is dropped. The survivor must stay MASTER.
#
# Each round kills whichever node is MASTER. Reports per round and overall: flows survived out of
# total (TCP, UDP, and the flows opened 50 ms before the kill), the longest stall of any flow, the
# time from the kill to the survivor's takeover (and to its detection of the death), and the time
# the returning node took to be in sync. Prints a readable summary and one JSON line; exits
# non-zero unless every flow of every round survived.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TCP_FLOWS=200 UDP_FLOWS=50 ROUNDS=1 CLOUD=l2 DOWN_SECONDS=3 LATE_TCP=5 LATE_UDP=5 INTERVAL_MS=20 VICTIM=master SLOW_START=0 PLOT=""
while (($#)); do
    case "$1" in
        --tcp) TCP_FLOWS="$2"; shift 2 ;;
        --udp) UDP_FLOWS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --cloud) CLOUD="$2"; shift 2 ;;
        --down) DOWN_SECONDS="$2"; shift 2 ;;
        --late) LATE_TCP="$2"; LATE_UDP="$2"; shift 2 ;;
        --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
        --victim) VICTIM="$2"; shift 2 ;;
        --slow-start) SLOW_START=1; shift ;;
        --plot) PLOT="$2"; shift 2 ;;
        -h|--help) sed -n 2,20p "$0"; exit 0 ;;
        *) echo "failover: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$CLOUD" == l2 || "$CLOUD" == oci || "$CLOUD" == bgp ]] || { echo "failover: --cloud must be l2, oci or bgp" >&2; exit 2; }
[[ "$VICTIM" == master || "$VICTIM" == backup ]] || { echo "failover: --victim must be master or backup" >&2; exit 2; }
for n in "$TCP_FLOWS" "$UDP_FLOWS" "$ROUNDS" "$DOWN_SECONDS" "$LATE_TCP" "$INTERVAL_MS"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "failover: counts must be whole numbers" >&2; exit 2; }
done

export TB="${TB:-fo}" NODES=2
[[ "$CLOUD" == l2 ]] && export TB_NET=l2 || export TB_NET=routed
BIN="${TANDEM_BIN:-$REPO/.build/debug}"
export TANDEM_ECHO="${TANDEM_ECHO:-$BIN/tandem-echo}"
TANDEM="${TANDEM:-$BIN/tandem}"
FAKE_OCI="${FAKE_OCI:-$BIN/fake-oci}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
# shellcheck source=testbed/cluster.sh
source "$REPO/testbed/cluster.sh"
if [[ "$CLOUD" == bgp ]]; then
    export BGP_BFD="${BGP_BFD:-1}"
    # shellcheck source=testbed/bgp-lib.sh
    source "$REPO/testbed/bgp-lib.sh"
fi

[[ $EUID -eq 0 ]] || { echo "failover: must run as root" >&2; exit 1; }
for b in "$TANDEM" "$TANDEM_ECHO"; do [[ -x "$b" ]] || { echo "failover: $b not built (make build)" >&2; exit 1; }; done

log() { printf '[failover %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
now_ms() { date +%s%3N; }

FLOWS_PID=""
cleanup() {
    local rc=$?
    [[ -n "$FLOWS_PID" ]] && kill -KILL "$FLOWS_PID" 2>/dev/null || true
    for n in llb1 llb2; do
        [[ -f "$TB_STATE/$n.pid" ]] && kill -TERM "$(cat "$TB_STATE/$n.pid")" 2>/dev/null || true
    done
    sleep 0.5
    if [[ "$CLOUD" == bgp ]]; then bgp_router_down; fi
    if ((rc != 0)); then
        for n in llb1 llb2; do echo "--- $n log (tail)" >&2; tail -n 25 "$TB_STATE/$n.log" >&2 2>/dev/null || true; done
        echo "--- flows log (tail)" >&2; tail -n 15 "$TB_STATE"/flows-*.log >&2 2>/dev/null || true
    fi
    [[ "${KEEP:-0}" == 1 ]] || tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FORCE=1 bash "$REPO/testbed/up.sh" >/dev/null
cluster_key

if [[ "$CLOUD" == oci ]]; then
    [[ -x "$FAKE_OCI" ]] || { echo "failover: $FAKE_OCI not built" >&2; exit 1; }
    source "$REPO/testbed/oci.sh"
    oci_up   # sets OCI_API, writes $TB_STATE/oci/config, starts fake-oci in the vcn namespace
    # The operator commands against the same fake, before any daemon runs: the preflight passes,
    # and broken setups fail clearly without moving anything.
    oci_flags=(--cloud=oci --oci-config "$TB_STATE/oci/config" --api-endpoint "$OCI_API" --imds-endpoint "$OCI_API/imds/llb2")
    tb_exec llb2 "$TANDEM" cloud check "${oci_flags[@]}" --vip "$TB_VIP" >"$TB_STATE/oci/check.out" 2>&1 ||
        { cat "$TB_STATE/oci/check.out" >&2; log "tandem cloud check failed on a good setup"; exit 1; }
    if tb_exec llb2 "$TANDEM" cloud check "${oci_flags[@]}" --profile NOPE --vip "$TB_VIP" >"$TB_STATE/oci/bad.out" 2>&1; then
        log "tandem cloud check passed with an unknown profile"; exit 1
    fi
    grep -qi "NOPE" "$TB_STATE/oci/bad.out" || { cat "$TB_STATE/oci/bad.out" >&2; log "unknown profile not named"; exit 1; }
    if tb_exec llb2 "$TANDEM" cloud assign-vip "${oci_flags[@]}" --vip 192.168.9.9 >"$TB_STATE/oci/bad2.out" 2>&1; then
        log "assign-vip moved a VIP outside every subnet"; exit 1
    fi
    [[ "$(tb_vip_owner)" == llb1 ]] || { log "a failed assign-vip moved the VIP"; exit 1; }
    log "tandem cloud check passes; unknown profile and a VIP outside every subnet fail clearly, nothing moved"
fi

if [[ "$CLOUD" == bgp ]]; then bgp_router_up llb1 llb2; fi
for n in llb1 llb2; do write_config "$n"; start_node "$n"; done
log "waiting for a MASTER and an in-sync BACKUP"
wait_settled 30
MASTER="$(master_of)"
log "MASTER is $MASTER"
tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { log "curl through the VIP failed before any failover"; exit 1; }

rounds_json=()
all_ok=1
for ((round = 1; round <= ROUNDS; round++)); do
    MASTER="$(master_of)"
    [[ -n "$MASTER" ]] || { log "round $round: no MASTER"; all_ok=0; break; }
    if [[ "$VICTIM" == master ]]; then KILLED="$MASTER"; SURV="$(other "$MASTER")"; else SURV="$MASTER"; KILLED="$(other "$MASTER")"; fi
    log "round $round: $TCP_FLOWS TCP + $UDP_FLOWS UDP flows through $TB_VIP, MASTER $MASTER"
    ready="$TB_STATE/flows-$round.ready"
    rm -f "$ready" "$ready.late"
    # Started directly (not through a shell function), so $! is the flows process and SIGUSR1 reaches it.
    ip netns exec "$(tb_ns client)" "$TANDEM_ECHO" flows --tcp-target "$TB_VIP:56004" --tcp "$TCP_FLOWS" \
        --udp-target "$TB_VIP:56003" --udp "$UDP_FLOWS" --late-tcp "$LATE_TCP" --late-udp "$LATE_UDP" \
        --interval-ms "$INTERVAL_MS" --duration 600 --ready-file "$ready" \
        >"$TB_STATE/flows-$round.json" 2>"$TB_STATE/flows-$round.log" &
    FLOWS_PID=$!
    tb_wait_for 30 "the flows to be established" test -f "$ready"
    sleep 1
    kill -USR1 "$FLOWS_PID"          # late flows, opened 50 ms before the kill
    sleep 0.05
    t_kill="$(now_ms)"
    # Over BGP the link goes first: a daemon killed first takes its BIRD along, whose closing
    # socket tells the router at once; a machine that loses power tells nobody (BFD or the hold
    # timer must notice).
    if [[ "$CLOUD" == bgp ]]; then tb_exec "$KILLED" ip link set eth0 down; fi
    crash_node "$KILLED"
    log "round $round: $KILLED rebooted (killed, link down)"
    took_over() { api "$SURV" | python3 -c 'import json,sys; i=json.load(sys.stdin)["instances"][0]; sys.exit(0 if i["role"] == "MASTER" and (i.get("lastTakeoverAtUnixMs") or 0) >= int(sys.argv[1]) else 1)' "$t_kill"; }
    if [[ "$VICTIM" == master ]]; then
        tb_wait_for 20 "$SURV to take over" took_over || { all_ok=0; }
    else
        # The BACKUP died: the MASTER notices and must simply go on.
        sleep 1
    fi
    status="$(api "$SURV")"
    read -r dead_ms detect_ms takeover_ms provider_ms < <(STATUS="$status" python3 - "$t_kill" "$(tb_ip "$KILLED")" <<'PY'
import json, os, sys
t_kill, dead_ip = int(sys.argv[1]), sys.argv[2]
s = json.loads(os.environ["STATUS"] or "{}")
inst = s["instances"][0]
became = [t["atUnixMs"] for t in inst["transitions"] if t["to"] == "MASTER" and t["atUnixMs"] >= t_kill]
elected = min(became) - t_kill if became else -1
declared = [m.get("changedAtUnixMs") for m in s["members"] if m["address"] == dead_ip and m["state"] in ("dead", "left")]
dead = declared[0] - t_kill if declared and declared[0] else -1
take = inst["lastTakeoverAtUnixMs"] - t_kill if (inst.get("lastTakeoverAtUnixMs") or 0) >= t_kill else -1
print(dead, elected, take, round(inst.get("lastTakeoverMs") or -1, 1))
PY
)
    if [[ "$CLOUD" == bgp && "$VICTIM" == master ]]; then
        # The provider has the survivor's primary route with BIRD; the move is done when the
        # router's FIB sends the VIP to the survivor alone (the dead node's path gone by BFD or
        # the hold timer, the survivor's MED 10 route best).
        route_alone() { [[ "$(bgp_nexthops)" == "$(tb_ip "$SURV")" ]]; }
        if tb_wait_for 20 "the router's route to the VIP to reach $SURV alone" route_alone; then
            takeover_ms=$(( $(now_ms) - t_kill ))
        else
            takeover_ms=-1; all_ok=0
        fi
        log "round $round: router: $(bgp_routes "$TB_VIP" | tr '\n' ';')"
    fi
    log "round $round: $SURV is MASTER; $KILLED declared dead ${dead_ms} ms after the kill, elected ${detect_ms} ms, floating IP moved ${takeover_ms} ms after the kill (provider ${provider_ms} ms)"
    sleep "$DOWN_SECONDS"
    log "round $round: bringing $KILLED back"
    if ((SLOW_START)); then
        [[ "$TB_NET" == l2 ]] || tb_sysctl vcn "net.ipv4.neigh.$(tb_link "$KILLED").proxy_delay=80"
        tb_exec "$KILLED" ip neigh flush all
        tb_exec "$KILLED" nft 'add table inet tdmslow; add chain inet tdmslow out { type filter hook output priority 0; }; add rule inet tdmslow out oifname eth0 drop'
    fi
    tb_exec "$KILLED" ip link set eth0 up
    tb_exec "$KILLED" ip route replace default via "$TB_GW_HOSTS" dev eth0
    reasserts_before="$(grep -c "re-asserting the floating IPs" "$TB_STATE/$SURV.log" || true)"
    t_back="$(now_ms)"
    start_node "$KILLED"
    if ((SLOW_START)); then
        sleep 1
        tb_exec "$KILLED" nft delete table inet tdmslow
    fi
    tb_wait_for 30 "$KILLED to rejoin in sync" bash -c "ip netns exec $(tb_ns "$KILLED") $TANDEM get cluster -o json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s[\"inSync\"] else 1)'" || all_ok=0
    resync_ms=$(( $(now_ms) - t_back ))
    returned_role="$(role "$KILLED")"
    survivor_role="$(role "$SURV")"
    sleep 1
    # Role changes of the survivor after the return (an unasked failover if any).
    unasked="$(api "$SURV" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for t in s["instances"][0]["transitions"] if t["atUnixMs"] >= int(sys.argv[1])))' "$t_back" 2>/dev/null || echo -1)"
    returned_role="$(role "$KILLED")"
    survivor_role="$(role "$SURV")"
    # A peer that merely returned is no conflict: the MASTER must not move the floating IP again.
    reasserts=$(( $(grep -c "re-asserting the floating IPs" "$TB_STATE/$SURV.log" || true) - reasserts_before ))
    log "round $round: $SURV re-asserted the floating IPs $reasserts time(s) on the return"
    log "round $round: $KILLED back as $returned_role, in sync ${resync_ms} ms after its restart; $SURV is $survivor_role; survivor role changes since the return: $unasked"
    kill -TERM "$FLOWS_PID"
    flows_rc=0
    wait "$FLOWS_PID" || flows_rc=$?
    FLOWS_PID=""
    # The report goes to python as a file: with thousands of stalls it outgrows the 128 KiB an
    # environment variable may hold.
    flows_file="$TB_STATE/flows-$round.last.json"
    tail -n 1 "$TB_STATE/flows-$round.json" >"$flows_file"
    [[ -s "$flows_file" ]] || echo '{}' >"$flows_file"
    round_json="$(FLOWS_FILE="$flows_file" python3 - "$round" "$detect_ms" "$takeover_ms" "$provider_ms" "$resync_ms" "$returned_role" "$survivor_role" "$flows_rc" "$KILLED" "$SURV" "$dead_ms" "$VICTIM" "$unasked" "$reasserts" <<'PY'
import json, os, sys
r, detect, take, prov, resync, back_role, surv_role, rc, killed, survivor, dead, victim, unasked, reasserts = sys.argv[1:]
f = json.loads(open(os.environ["FLOWS_FILE"]).read() or "{}")
ok = rc == "0" and back_role == "BACKUP" and surv_role == "MASTER" and (victim == "backup" or int(take) >= 0) and unasked == "0" \
    and reasserts == "0"
print(json.dumps({"round": int(r), "victim": victim, "killed": killed, "master": survivor, "detectedMs": int(dead), "electedMs": int(detect),
                  "takeoverMs": int(take), "providerMs": float(prov), "resyncMs": int(resync),
                  "returnedAs": back_role, "survivorRole": surv_role, "unaskedRoleChanges": int(unasked),
                  "reassertsOnReturn": int(reasserts), "flows": f, "ok": ok}))
PY
)"
    rounds_json+=("$round_json")
    # The round's events, on the flows' clock (Unix ms), for the timeline plot.
    python3 - "$t_kill" "$dead_ms" "$detect_ms" "$takeover_ms" "$t_back" "$resync_ms" "$KILLED" "$SURV" \
        >"$TB_STATE/failover-$round.events.json" <<'PY'
import json, sys
t_kill, dead, elected, take, t_back, resync = (int(x) for x in sys.argv[1:7])
killed, surv = sys.argv[7:9]
ev = [{"label": f"{killed} killed", "atUnixMs": t_kill}]
if dead >= 0: ev.append({"label": f"{killed} declared dead", "atUnixMs": t_kill + dead})
if elected >= 0: ev.append({"label": f"{surv} elected", "atUnixMs": t_kill + elected})
if take >= 0: ev.append({"label": "floating IP moved", "atUnixMs": t_kill + take})
ev.append({"label": f"{killed} back", "atUnixMs": t_back})
if resync >= 0: ev.append({"label": f"{killed} in sync", "atUnixMs": t_back + resync})
print(json.dumps(ev))
PY
    if [[ -n "$PLOT" && $round == 1 ]]; then
        tb_need_matplotlib
        "$TB_PLOT_PYTHON" "$REPO/testbed/plot_timeline.py" "$TB_STATE/flows-$round.json" "$TB_STATE/failover-$round.events.json" "$PLOT" \
            --title "failover.sh ($CLOUD): $KILLED rebooted, $TCP_FLOWS TCP + $UDP_FLOWS UDP flows" || all_ok=0
    fi
    summary="$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); f=r["flows"]; print("tcp %s/%s udp %s/%s late %s/%s longest stall %s ms" % (f.get("tcp",{}).get("survived","?"), f.get("tcp",{}).get("total","?"), f.get("udp",{}).get("survived","?"), f.get("udp",{}).get("total","?"), f.get("late",{}).get("survived","?"), f.get("late",{}).get("tcp",0)+f.get("late",{}).get("udp",0), f.get("longestStallMs","?")))' "$round_json")"
    if python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$round_json"; then
        log "round $round: OK: $summary"
    else
        log "round $round: FAILED: $summary (flows exit $flows_rc, returned $returned_role, survivor $survivor_role)"
        all_ok=0
        python3 -c 'import json,sys; [print("  ", x) for x in json.loads(sys.argv[1])["flows"].get("failures", [])[:10]]' "$round_json" >&2 || true
    fi
done

# Final: curl again through the VIP.
curl_ok=true
tb_exec client curl -fsS -m 3 -o /dev/null "http://$TB_VIP:56002/" || { curl_ok=false; all_ok=0; }

python3 - "$all_ok" "$curl_ok" "$CLOUD" "${rounds_json[@]}" <<'PY'
import json, sys
all_ok, curl_ok, cloud = sys.argv[1] == "1", sys.argv[2] == "true", sys.argv[3]
rounds = [json.loads(x) for x in sys.argv[4:]]
def stat(key):
    v = [r[key] for r in rounds if r[key] >= 0]
    return {"min": min(v), "median": sorted(v)[len(v) // 2], "max": max(v)} if v else None
tot = lambda p, k: sum(r["flows"].get(p, {}).get(k, 0) for r in rounds)
out = {"cloud": cloud, "rounds": len(rounds), "ok": all_ok,
       "unaskedRoleChanges": sum(max(0, r.get("unaskedRoleChanges", 0)) for r in rounds),
       "reassertsOnReturn": sum(r.get("reassertsOnReturn", 0) for r in rounds),
       "tcp": {"survived": tot("tcp", "survived"), "total": tot("tcp", "total")},
       "udp": {"survived": tot("udp", "survived"), "total": tot("udp", "total")},
       "late": {"survived": sum(r["flows"].get("late", {}).get("survived", 0) for r in rounds),
                "total": sum(r["flows"].get("late", {}).get("tcp", 0) + r["flows"].get("late", {}).get("udp", 0) for r in rounds)},
       "longestStallMs": max([r["flows"].get("longestStallMs", -1) for r in rounds] or [-1]),
       "detectedMs": stat("detectedMs"), "electedMs": stat("electedMs"), "takeoverMs": stat("takeoverMs"),
       "resyncMs": stat("resyncMs"),
       "curlAfter": curl_ok, "perRound": rounds}
print(f"\nfailover summary ({cloud}, {len(rounds)} round(s)): "
      f"TCP {out['tcp']['survived']}/{out['tcp']['total']}, UDP {out['udp']['survived']}/{out['udp']['total']}, "
      f"late {out['late']['survived']}/{out['late']['total']} flows survived; longest stall {out['longestStallMs']} ms; "
      f"dead declared {out['detectedMs']} ms, elected {out['electedMs']} ms, takeover {out['takeoverMs']} ms after the kill; "
      f"returning node in sync {out['resyncMs']} ms after restart; unasked role changes {out['unaskedRoleChanges']}; "
      f"curl after: {'ok' if curl_ok else 'FAILED'}; "
      f"{'PASS' if all_ok else 'FAIL'}", file=sys.stderr)
print(json.dumps(out))
PY
[[ $all_ok == 1 ]]
