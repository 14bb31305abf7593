#!/usr/bin/env python3
"""Turns the replication benchmark's JSON lines into the README's markdown table.

Usage: replication-report.py TANDEM.jsonl CONNTRACKD.jsonl "RATE RATE ..." [KERNEL.jsonl]

TANDEM is Tandem replicating its BPF table, KERNEL Tandem replicating the kernel conntrack table
(conntrack-only nodes); with KERNEL rows a second table compares it with conntrackd on the same
kernel entries.
"""
import json
import sys


def load(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def by_phase(rows, phase, **match):
    for r in rows:
        if r.get("phase") == phase and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    else:
        v = f"{v:,}"
    return f"{v}{unit}"


def ratio(a, b, better_low):
    if a is None or b is None or a <= 0 or b <= 0:
        return "n/a"
    return f"{(b / a) if better_low else (a / b):.2f}x"


def rate_rows(a, b, rates):
    """Lag percentiles and counts per rate, then the burst: the rows both tables share."""
    out = []
    for r in rates:
        t, c = by_phase(a, "rate", rate=r), by_phase(b, "rate", rate=r)
        for q in ("p50", "p99"):
            tv = t and t.get(f"lag_{q}_ms")
            cv = c and c.get(f"lag_{q}_ms")
            out.append(f"| lag {q} at {r:,} new flows/s | {fmt(tv, ' ms')} | {fmt(cv, ' ms')} | {ratio(tv, cv, True)} |")
        out.append(f"| replicated/created at {r:,}/s | {counts(t)} | {counts(c)} | |")
    t, c = by_phase(a, "burst"), by_phase(b, "burst")
    tv, cv = t and float(t["entries_per_second"]), c and float(c["entries_per_second"])
    out.append(f"| burst: entries/s until the peer holds all | {fmt(tv)} | {fmt(cv)} | {ratio(tv, cv, False)} |")
    if t or c:
        out.append(f"| burst: replicated/created | {counts(t)} | {counts(c)} | |")
    return out


def cost_rows(a, b, bytes_label):
    t, c = by_phase(a, "cost"), by_phase(b, "cost")
    tv, cv = t and t.get("bytes_per_entry"), c and c.get("bytes_per_entry")
    out = [f"| {bytes_label} | {fmt(tv)} | {fmt(cv)} | {ratio(tv, cv, True)} |"]
    tv, cv = t and t.get("cpu_ms_per_100k"), c and c.get("cpu_ms_per_100k")
    out.append(f"| CPU ms per 100k entries (both nodes) | {fmt(tv)} | {fmt(cv)} | {ratio(tv, cv, True)} |")
    return out


def counts(r):
    return f"{r['replicated']:,}/{r['injected']:,}" if r else "n/a"


def main():
    tandem, ctd = load(sys.argv[1]), load(sys.argv[2])
    rates = [int(r) for r in sys.argv[3].split()]
    out = []
    out.append("| Metric | Tandem | conntrackd FTFW | Tandem advantage |")
    out.append("|---|---|---|---|")
    out.extend(rate_rows(tandem, ctd, rates))
    p = by_phase(tandem, "pipeline")
    if p:
        lost = by_phase(tandem, "pipeline-events-lost")
        out.append(f"| pipeline alone: {p['flows']:,} flows queued in a stopped node 1, entries/s once resumed "
                   f"({p['replicated']:,} arrived, {lost['lost'] if lost else '?'} events lost) | "
                   f"{fmt(float(p['entries_per_second']))} | not measured | |")
    out.extend(cost_rows(tandem, ctd, "UDP payload bytes per entry"))
    t, c = by_phase(tandem, "idle"), by_phase(ctd, "idle")
    if t or c:
        tv, cv = t and float(t["cpu_percent"]), c and float(c["cpu_percent"])
        held = " / ".join(f"{x['connections']:,}" for x in (t, c) if x)
        out.append(f"| idle CPU, % of one core (both nodes holding {held} connections, {(t or c)['seconds']} s, no new flows) | "
                   f"{fmt(tv, ' %')} | {fmt(cv, ' %')} | {ratio(tv, cv, True) if cv else 'conntrackd ~0 (kernel timers expire its entries)'} |")
    for b in [r for r in tandem if r.get("phase") == "bulk"]:
        out.append(f"| bulk resync of {b['connections']:,} connections (restart to in sync) | "
                   f"{fmt(float(b['seconds']), ' s')} | not measured (a restarted conntrackd requests a resend, `-n`) | |")
    out.append("")
    out.append("Authenticated and encrypted: Tandem yes (ChaCha20-Poly1305, replay window); conntrackd no.")
    kernel = load(sys.argv[4]) if len(sys.argv) > 4 else []
    if kernel:
        out.append("")
        out.extend(kernel_table(kernel, ctd, rates))
    print("\n".join(out))


def kernel_table(k, c, rates):
    """Both systems replicate the same kernel entries, created by tandem-ctbench in node 1's table
    and timed on their arrival in node 2's."""
    out = ["Kernel conntrack table, the same entries: Tandem (conntrack-only nodes, inject) and conntrackd FTFW "
           "(DisableExternalCache)", "",
           "| Metric | Tandem | conntrackd FTFW | Tandem advantage |", "|---|---|---|---|"]
    out.extend(rate_rows(k, c, rates))
    out.extend(cost_rows(k, c, "UDP payload bytes per entry (node 1 to node 2)"))
    t, d = by_phase(k, "idle"), by_phase(c, "idle")
    if t or d:
        tv, dv = t and float(t["cpu_percent"]), d and float(d["cpu_percent"])
        held = " / ".join(f"{x['connections']:,} (peer {x.get('peer_connections', 0):,})" for x in (t, d) if x)
        out.append(f"| idle CPU, % of one core (both nodes, tables of {held} entries, {(t or d)['seconds']} s, no new flows) | "
                   f"{fmt(tv, ' %')} | {fmt(dv, ' %')} | {ratio(tv, dv, True)} |")
    out.append("")
    out.append("Authenticated and encrypted: Tandem yes (ChaCha20-Poly1305, replay window); conntrackd no.")
    return out


if __name__ == "__main__":
    main()
