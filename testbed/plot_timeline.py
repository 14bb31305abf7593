#!/usr/bin/env python3
"""Timeline plot of a test-bed run: one row per long-lived flow, a bar for every stall (a gap of
three send intervals or more between echoes, from tandem-echo flows' JSON), and the run's events as
vertical lines (kill, death declared, elected, floating IP moved, node back, ...).

    plot_timeline.py FLOWS_JSON EVENTS_JSON OUT.(svg|png) [--title TEXT]

FLOWS_JSON is the flows report (its last line is used); EVENTS_JSON a list of
{"label": str, "atUnixMs": number}. Matplotlib (Debian's python3-matplotlib) draws it.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def last_json_line(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    if not lines:
        raise SystemExit(f"plot: {path} is empty")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("flows")
    ap.add_argument("events")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    flows = last_json_line(a.flows)
    with open(a.events) as f:
        events = json.load(f)
    stalls = flows.get("stalls", [])
    tcp_total = flows.get("tcp", {}).get("total", 0)
    udp_total = flows.get("udp", {}).get("total", 0)
    origin = flows.get("readyAtUnixMs") or flows.get("startedAtUnixMs") or 0
    end = (flows.get("endedAtUnixMs") or origin) - origin
    rel = lambda ms: (ms - origin) / 1000.0

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    # Flows are indexed in opening order; the report says which are TCP. Rows: as indexed.
    colors = {1: "#d62728", 0: "#1f77b4"}
    seen = set()
    for flow, tcp, start, stop in stalls:
        label = None
        if tcp not in seen:
            label = "TCP stall" if tcp else "UDP stall"
            seen.add(tcp)
        ax.barh(flow, (stop - start) / 1000.0, left=rel(start), height=0.9, color=colors[tcp], label=label, linewidth=0)
    styles = ["--", ":", "-.", "-"]
    for i, e in enumerate(sorted(events, key=lambda e: e["atUnixMs"])):
        x = rel(e["atUnixMs"])
        ax.axvline(x, color="0.25", linestyle=styles[i % len(styles)], linewidth=1)
        ax.annotate(e["label"], xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -4 - 11 * (i % 4)),
                    textcoords="offset points", fontsize=8, va="top", ha="left")
    n = max(tcp_total + udp_total, 1)
    ax.set_ylim(-1, n)
    ax.set_xlim(0, max(end / 1000.0, 0.1))
    ax.set_xlabel("seconds since the flows were established")
    ax.set_ylabel(f"flow ({tcp_total} TCP, {udp_total} UDP)")
    longest = flows.get("longestStallMs", 0)
    survived = flows.get("tcp", {}).get("survived", 0) + flows.get("udp", {}).get("survived", 0)
    sub = f"{survived}/{n} flows survived, longest stall {longest:.0f} ms"
    ax.set_title(f"{a.title}\n{sub}" if a.title else sub, fontsize=10)
    if seen:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", color="0.9")
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"plot: wrote {a.out} ({len(stalls)} stalls, {len(events)} events)", file=sys.stderr)


if __name__ == "__main__":
    main()
