#!/usr/bin/env python3
"""bench/cost.sh's report: CPU cost per unit of work from the generator's runs.

Reads the runs (one JSON line per generator run: kind "run" for measurements, "bpf" for the
bpf_stats passes), checks each run (offered rate reached, units answered, within --tol %), and
writes the Markdown table and one JSON line. A mode's cost in a round is
(its busy CPU - the direct path's busy CPU in the same round) / units answered per second;
cells show the median over rounds and min-max. A cell with any invalid round is INVALID.
"""
import argparse
import json
import statistics
import sys
import time

LB_MODES = ["nftables", "haproxy", "tandem", "tandem-xdp"]
UNIT = {"udp": "datagram", "http": "request", "conn": "new connection"}


def fmt(x, nd=2):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    for a in ("runs", "status", "modes", "loads", "udp", "http", "conn", "tandem", "md", "json"):
        ap.add_argument("--" + a, required=a not in ("tandem",), default="")
    ap.add_argument("--tol", type=float, default=2.0)
    ap.add_argument("--saturated", type=float, default=95.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--xdp-bed", default="0")
    ap.add_argument("--haproxy-threads", default="1")
    o = ap.parse_args()

    modes = o.modes.split()
    loads = o.loads.split()
    status = json.load(open(o.status))
    udp_rate, udp_flows, udp_size = o.udp.split(",")
    http_rate, http_conns, http_path = o.http.split(",", 2)
    conn_rate, conn_request = o.conn.split(",")
    rate = {"udp": float(udp_rate), "http": float(http_rate), "conn": float(conn_rate)}
    desc = {
        "udp": f"UDP {udp_size} B echo, {int(rate['udp'])}/s, {udp_flows} flows",
        "http": f"HTTP keep-alive, {int(rate['http'])} req/s, {http_conns} conns, GET {http_path}",
        "conn": f"new TCP connections, {int(rate['conn'])}/s, "
        + ("connect + GET + close" if conn_request == "1" else "connect + close"),
    }
    tol = o.tol / 100.0

    runs, bpf = {}, {}
    for line in open(o.runs):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        key = (r["load"], r["mode"], r["round"])
        (runs if r["kind"] == "run" else bpf)[key] = r

    # Per run: validity and CPU.
    def check(r):
        p = r.get("pacer")
        if not p:
            return None, "generator failed"
        load, R = r["load"], rate[r["load"]]
        why = []
        if p["achieved_rate"] < R * (1 - tol):
            why.append(f"offered {p['achieved_rate']:.0f}/s of {R:.0f}/s")
        if p["answered_rate"] < R * (1 - tol):
            why.append(f"answered {p['answered_rate']:.0f}/s of {R:.0f}/s")
        if p["issued"] and p["answered"] < p["issued"] * (1 - tol):
            why.append(f"{p['issued'] - p['answered']} of {p['issued']} unanswered")
        if r["mode"] == "direct" and r.get("llb1_rx_packets", 0) < 2 * p["answered"]:
            why.append(f"only {r.get('llb1_rx_packets', 0)} packets crossed llb1")
        if p["cpu_total_ticks"] <= 0 or p["window_s"] <= 0:
            why.append("no CPU counters")
        hz = p["cpu_hz"]
        cores = p["cpu_busy_ticks"] / hz / p["window_s"]
        steal = 100.0 * p["cpu_steal_ticks"] / p["cpu_total_ticks"] if p["cpu_total_ticks"] else 0
        bed = None
        if p.get("cgroup_cpu_ns"):
            bed = (p["cgroup_cpu_ns"] / 1e9 + p.get("ksoftirqd_ticks", 0) / hz) / p["window_s"]
        busy_pct = 100.0 * p["cpu_busy_ticks"] / p["cpu_total_ticks"] if p["cpu_total_ticks"] else 100
        lb_us = None
        if p.get("watch_pid") and p["answered"]:
            lb_us = 1e6 * p["watch_ticks"] / hz / p["window_s"] / p["answered_rate"]
        info = {"lb_us": lb_us, "cores": cores, "bed_cores": bed, "steal_pct": steal, "busy_pct": busy_pct, "answered_rate": p["answered_rate"],
                "achieved_rate": p["achieved_rate"], "self_cpu_us": 1e6 * p["self_cpu_s"] / max(p["answered"], 1),
                "p50_us": p["p50_us"], "p99_us": p["p99_us"]}
        return info, "; ".join(why)

    checked = {k: check(r) for k, r in runs.items()}
    rounds = sorted({k[2] for k in runs})

    # Cells: cost per unit (us) per (load, mode), for a metric: "machine" (/proc/stat) or "bed"
    # (the test bed's cgroup + ksoftirqd). A whole-machine reading of a saturated machine is invalid.
    def run_ok(info, why, metric):
        if info is None or why:
            return why or "generator failed"
        if metric == "machine" and info["busy_pct"] >= o.saturated:
            return f"machine saturated ({info['busy_pct']:.0f} % of all cores busy)"
        if metric == "bed" and info["bed_cores"] is None:
            return "no cgroup reading"
        return ""

    def compute(metric):
        key = "cores" if metric == "machine" else "bed_cores"
        cells, direct_cell, notes = {}, {}, []
        for load in loads:
            d_cores, d_bad = [], []
            for k in rounds:
                c = checked.get((load, "direct", k))
                if c is None:
                    continue
                why = run_ok(c[0], c[1], metric)
                if why:
                    d_bad.append(f"round {k}: {why}")
                else:
                    d_cores.append(c[0][key])
            if "direct" in status:
                direct_cell[load] = {"status": status["direct"]}
            elif d_bad:
                direct_cell[load] = {"status": "INVALID"}
                notes.append(f"{load}, direct: " + "; ".join(d_bad))
            elif d_cores:
                direct_cell[load] = {"median": 100 * statistics.median(d_cores), "min": 100 * min(d_cores),
                                     "max": 100 * max(d_cores)}
            else:
                direct_cell[load] = {"status": "not run"}
            for mode in modes:
                if mode == "direct":
                    continue
                if mode == "haproxy" and load == "udp":
                    cells[(load, mode)] = {"status": "n/a (no UDP)"}
                    continue
                if mode in status and not any((load, mode, k) in runs for k in rounds):
                    cells[(load, mode)] = {"status": status[mode]}
                    continue
                costs, bad = [], []
                for k in rounds:
                    c = checked.get((load, mode, k))
                    if c is None:
                        continue
                    why = run_ok(c[0], c[1], metric)
                    if why:
                        bad.append(f"round {k}: {why}")
                        continue
                    dc = checked.get((load, "direct", k))
                    if dc is None or run_ok(dc[0], dc[1], metric):
                        bad.append(f"round {k}: no valid direct baseline")
                        continue
                    costs.append(1e6 * (c[0][key] - dc[0][key]) / c[0]["answered_rate"])
                if mode in status:
                    bad.append(status[mode])
                if bad:
                    cells[(load, mode)] = {"status": "INVALID"}
                    notes.append(f"{load}, {mode}: " + "; ".join(bad))
                elif costs:
                    cells[(load, mode)] = {"median": statistics.median(costs), "min": min(costs), "max": max(costs),
                                           "rounds": costs}
                else:
                    cells[(load, mode)] = {"status": "not run"}
        return cells, direct_cell, notes

    sanity = []
    for load in loads:
        for mode in modes:
            infos = [checked[(load, mode, k)][0] for k in rounds
                     if (load, mode, k) in checked and checked[(load, mode, k)][0]]
            if infos:
                med = lambda f: statistics.median(i[f] for i in infos)
                bed = [i["bed_cores"] for i in infos if i["bed_cores"] is not None]
                lb = [i["lb_us"] for i in infos if i["lb_us"] is not None]
                sanity.append((load, mode, med("achieved_rate"), med("answered_rate"), 100 * med("cores"),
                               100 * statistics.median(bed) if bed else None,
                               max(i["steal_pct"] for i in infos), med("self_cpu_us"), med("p50_us"), med("p99_us"),
                               statistics.median(lb) if lb else None))

    def cellstr(c):
        if "status" in c:
            return c["status"]
        return f"{fmt(c['median'])} ({fmt(c['min'])} to {fmt(c['max'])})"

    def ratio(cells, load, a, b):
        ca, cb = cells.get((load, a)), cells.get((load, b))
        if not ca or not cb or "median" not in ca or "median" not in cb:
            return None
        if cb["median"] <= 0 or ca["median"] < 0:
            return None
        return ca["median"] / cb["median"]

    lbs = [m for m in LB_MODES if m in modes]
    pairs = [(t, b) for t in ("tandem", "tandem-xdp") if t in modes for b in ("nftables", "haproxy") if b in modes]

    # Targets (issue 18): per datagram and per new connection, Tandem <= 1/2 nftables, <= 1/5 HAProxy.
    def targets_of(cells):
        out = []
        for load in ("udp", "conn"):
            if load not in loads:
                continue
            for t in ("tandem", "tandem-xdp"):
                if t not in modes:
                    continue
                for b, lim in (("nftables", 0.5), ("haproxy", 0.2)):
                    if b not in modes or (b == "haproxy" and load == "udp"):
                        continue
                    r = ratio(cells, load, t, b)
                    ct, cb = cells.get((load, t), {}), cells.get((load, b), {})
                    if r is not None:
                        verdict = "met" if r <= lim else "not met"
                    elif "median" in ct and "median" in cb:
                        verdict = "cannot tell (a cost at or below zero: within the noise)"
                    else:
                        verdict = "cannot tell (" + (ct.get("status") or cb.get("status") or "no data") + ")"
                    out.append({"load": load, "mode": t, "against": b, "limit": lim, "ratio": r, "verdict": verdict})
        return out

    # BPF programs' own cost (bpf_stats pass).
    bpf_rows = []
    for load in loads:
        for mode in ("tandem", "tandem-xdp"):
            per, units = {}, 0
            for k in rounds:
                b = bpf.get((load, mode, k))
                if not b or not b.get("pacer"):
                    continue
                units += b["pacer"]["answered"]
                for pr in b["progs"]:
                    acc = per.setdefault(pr["name"], [0, 0])
                    acc[0] += pr["run_time_ns"]
                    acc[1] += pr["run_cnt"]
            for name, (ns, cnt) in sorted(per.items()):
                if cnt:
                    bpf_rows.append({"load": load, "mode": mode, "prog": name, "ns_per_run": ns / cnt, "runs": cnt,
                                     "runs_per_unit": cnt / units if units else None,
                                     "ns_per_unit": ns / units if units else None})

    steal_max = max((x[6] for x in sanity), default=0.0)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md, out_tables = [], {}

    def table(metric, title):
        cells, direct_cell, notes = compute(metric)
        md.append(title)
        md.append("")
        head = ["Load", "Unit", "direct CPU %"] + [f"{m} us/unit" for m in lbs] + [f"{a}/{b}" for a, b in pairs] + ["valid"]
        md.append("| " + " | ".join(head) + " |")
        md.append("| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 3) + ["---"]) + " |")
        rows = []
        for load in loads:
            dc = direct_cell.get(load, {"status": "not run"})
            dstr = dc["status"] if "status" in dc else f"{fmt(dc['median'], 1)} ({fmt(dc['min'], 1)} to {fmt(dc['max'], 1)})"
            invalid = [m for m in lbs if cells.get((load, m), {}).get("status") == "INVALID"]
            if dc.get("status") == "INVALID":
                invalid.insert(0, "direct")
            row = [desc[load], UNIT[load], dstr] + [cellstr(cells.get((load, m), {"status": "not run"})) for m in lbs]
            row += [fmt(ratio(cells, load, a, b)) for a, b in pairs]
            row.append("INVALID: " + ", ".join(invalid) if invalid else "yes")
            md.append("| " + " | ".join(row) + " |")
            for m in lbs:
                rows.append({"load": load, "mode": m, "unit": UNIT[load], **cells.get((load, m), {})})
            rows.append({"load": load, "mode": "direct", "cpu_pct_one_core": dc})
        md.append("")
        tg = targets_of(cells)
        if tg:
            md.append("Targets (issue 18: Tandem's cost per datagram and per new connection at most 1/2 of "
                      "nftables', at most 1/5 of HAProxy's):")
            md.append("")
            for t in tg:
                r = f"{t['ratio']:.2f}" if t["ratio"] is not None else "-"
                md.append(f"- per {UNIT[t['load']]}: {t['mode']}/{t['against']} = {r} (target <= {t['limit']:g}): {t['verdict']}")
            md.append("")
        if notes:
            md.append("Invalid cells:")
            for n in dict.fromkeys(notes):
                md.append(f"- {n}")
            md.append("")
        out_tables[metric] = {"rows": rows, "targets": tg, "invalid": notes,
                              "ratios": {f"{a}/{b}": {load: ratio(cells, load, a, b) for load in loads} for a, b in pairs}}

    md.append("# Cost per unit of work")
    md.append("")
    md.append(f"- date: {date}; {o.repeat} round(s) of {o.duration} s windows after {o.warmup} s warm-up, "
              "every mode once per round, order rotated")
    md.append("- cost = (the mode's CPU - the direct path's CPU in the same round) / units answered per second; "
              "median (min to max) over rounds, in us of CPU per unit; direct CPU in % of one core")
    md.append(f"- a run is valid if it offered and answered at least {100 - o.tol:g} % of the rate and "
              f"left at most {o.tol:g} % unanswered (whole machine: and the machine was below {o.saturated:g} % "
              "busy); any invalid round makes the cell INVALID")
    md.append("- direct: no load balancer, client -> ep1/ep2 at their addresses, routed through llb1 both ways "
              "(the same namespaces and veths as through the VIP)")
    md.append(f"- nftables DNAT+SNAT; haproxy mode tcp, nbthread {o.haproxy_threads}; tandem fullnat rr (TC), "
              "tandem-xdp the same with --xdp" + (f"; binary {o.tandem}" if o.tandem else ""))
    if o.xdp_bed == "1":
        md.append("- XDP-ready bed for every mode (TX checksum offload off in client/ep1/ep2, XDP pass program "
                  "on the vcn side of llb1's link, forwarding on in llb1)")
    md.append(f"- {ncpu_note(runs)}; highest steal in any run: {steal_max:.1f} %")
    md.append("")
    table("machine", "## Whole machine (/proc/stat: user+nice+system+irq+softirq)")
    table("bed", "## The test bed's own CPU (a cgroup holding every process the benchmark starts, "
                 "plus the ksoftirqd threads)")
    if bpf_rows:
        md.append("## Tandem's BPF programs (bpf_stats)")
        md.append("")
        md.append("A separate pass per load at the same rate with kernel.bpf_stats_enabled=1 (off during the "
                  "CPU windows); all rounds together:")
        md.append("")
        md.append("| Load | mode | program | ns per run | runs per unit | ns per unit |")
        md.append("| --- | --- | --- | ---: | ---: | ---: |")
        for b in bpf_rows:
            md.append(f"| {b['load']} | {b['mode']} | {b['prog']} | {b['ns_per_run']:.0f} | "
                      f"{fmt(b['runs_per_unit'])} | {fmt(b['ns_per_unit'], 0)} |")
        md.append("")
    md.append("## Per run")
    md.append("")
    md.append("Medians over rounds: offered and answered rate, busy CPU (whole machine; test bed), the worst "
              "steal, the generator's own CPU per unit (its sends carry the packets through the namespaces: "
              "softirq work in its context counts as its CPU), the userspace load balancer process's CPU per "
              "unit (HAProxy; Tandem's daemon), latency from the scheduled send to the answer:")
    md.append("")
    md.append("| Load | mode | offered/s | answered/s | machine CPU % of one core | bed CPU % | steal % (max) | generator us/unit | LB process us/unit | p50 us | p99 us |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in sanity:
        bed = f"{x[5]:.1f}" if x[5] is not None else "-"
        lb = fmt(x[10]) if x[10] is not None else "-"
        md.append(f"| {x[0]} | {x[1]} | {x[2]:.0f} | {x[3]:.0f} | {x[4]:.1f} | {bed} | {x[6]:.1f} | {x[7]:.2f} | {lb} | {x[8]:.0f} | {x[9]:.0f} |")
    md.append("")
    if status:
        md.append("Modes not measured:")
        for m, why in status.items():
            md.append(f"- {m}: {why}")
        md.append("")
    md.append("A cost can come out at or below zero when a mode's extra work is smaller than the run-to-run noise; "
              "ratios are shown only when both costs are positive.")
    text = "\n".join(md) + "\n"
    open(o.md, "w").write(text)

    out = {"bench": "cost", "date": date, "repeat": o.repeat, "duration_s": o.duration, "warmup_s": o.warmup,
           "tol_pct": o.tol, "saturated_pct": o.saturated, "rates": rate, "modes": modes, "loads": loads,
           "machine": out_tables["machine"], "bed": out_tables["bed"], "bpf": bpf_rows,
           "steal_pct_max": steal_max, "status": status}
    open(o.json, "w").write(json.dumps(out) + "\n")


def ncpu_note(runs):
    for r in runs.values():
        p = r.get("pacer")
        if p:
            return f"{p['ncpu']} cores (generator, load balancer, router and endpoints share them)"
    return "no runs"


if __name__ == "__main__":
    sys.exit(main())
