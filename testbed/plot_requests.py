#!/usr/bin/env python3
"""Timeline plot of a request-load run (testbed/health.sh): one subplot per phase, the requests sent
in each time bin stacked by the endpoint that answered (failed requests in red, on top), shaded
bands (an endpoint out of rotation) and the phase's events as vertical lines (failure injected,
API shows it down, recovery injected, API shows it up, ...).

    plot_requests.py RUN_JSON OUT.(svg|png) [--title TEXT]

RUN_JSON: {"phases": [{"title": str, "load": path, "binMs": 100,
                       "events": [{"label": str, "atUnixMs": number, "kind": KIND}],
                       "bands": [{"label": str, "fromUnixMs": number, "toUnixMs": number,
                                  "color": str (optional)}]}]}
"load" is a JSON-lines file of requests, {"t": unix seconds sent, "ok": bool, "ep": "ep1"}, one a
line. KIND (line style) is one of failure, detected, recovery, restored; anything else is drawn
grey. A phase's time axis starts at its first request or event, whichever is first. Matplotlib
(Debian's python3-matplotlib) draws it.
"""
import argparse
import json
import os
import sys

KINDS = {  # kind: (legend text, colour, line style)
    "failure": ("failure injected", "#d62728", "--"),
    "detected": ("API shows it down", "#d62728", "-"),
    "recovery": ("recovery injected", "#2ca02c", "--"),
    "restored": ("API shows it up", "#2ca02c", "-"),
}
EP_COLORS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]
FAILED_COLOR = "#d62728"


def die(msg):
    raise SystemExit(f"plot: {msg}")


def number(obj, key, where):
    v = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        die(f"{where}: '{key}' must be a number, got {v!r}")
    return float(v)


def read_load(path, where):
    if not isinstance(path, str) or not path:
        die(f"{where}: 'load' must be a file path")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        die(f"{where}: cannot read {path}: {e.strerror}")
    reqs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            # The load generator is killed at the end of a phase: its last line may be cut short.
            if n == len(lines):
                continue
            die(f"{path} line {n} is not JSON: {line[:60]!r}")
        number(r, "t", f"{path} line {n}")
        reqs.append(r)
    return reqs


def read_run(path):
    try:
        with open(path) as f:
            run = json.load(f)
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}")
    except ValueError as e:
        die(f"{path} is not JSON: {e}")
    phases = run.get("phases") if isinstance(run, dict) else None
    if not isinstance(phases, list) or not phases:
        die(f"{path}: no phases (expected {{\"phases\": [...]}} with at least one)")
    out = []
    for i, p in enumerate(phases, 1):
        where = f"{path} phase {i}"
        if not isinstance(p, dict):
            die(f"{where} is not an object")
        bin_ms = number(p, "binMs", where) if "binMs" in p else 100.0
        if bin_ms <= 0:
            die(f"{where}: 'binMs' must be positive")
        events = p.get("events", [])
        bands = p.get("bands", [])
        if not isinstance(events, list) or not isinstance(bands, list):
            die(f"{where}: 'events' and 'bands' must be lists")
        for j, e in enumerate(events, 1):
            number(e, "atUnixMs", f"{where} event {j}")
        for j, b in enumerate(bands, 1):
            number(b, "fromUnixMs", f"{where} band {j}")
            number(b, "toUnixMs", f"{where} band {j}")
        out.append({"title": str(p.get("title", "")), "reqs": read_load(p.get("load"), where),
                    "bin": bin_ms / 1000.0, "events": events, "bands": bands})
    return out


def load_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import is_color_like
    except ImportError as e:
        die(f"no matplotlib for {sys.executable} ({e}): apt-get install python3-matplotlib and use /usr/bin/python3 "
            "(testbed/lib.sh's tb_need_matplotlib does both)")
    return plt, is_color_like


def draw_phase(ax, phase, ep_color, handles, is_color_like):
    reqs, width = phase["reqs"], phase["bin"]
    times = [r["t"] for r in reqs] + [e["atUnixMs"] / 1000.0 for e in phase["events"]]
    origin = min(times) if times else 0.0
    end = max(times + [b["toUnixMs"] / 1000.0 for b in phase["bands"]] + [origin + width]) - origin
    nbins = int(end / width) + 1
    # Per bin: requests answered by each endpoint, and failed ones (whoever they went to).
    counts = {}
    for r in reqs:
        key = "failed" if not r.get("ok") else str(r.get("ep") or "?")
        b = min(int((r["t"] - origin) / width), nbins - 1)
        counts.setdefault(key, [0] * nbins)[b] += 1
    lefts = [i * width for i in range(nbins)]
    bottom = [0] * nbins
    eps = sorted(k for k in counts if k != "failed")
    for key in eps + (["failed"] if "failed" in counts else []):
        if key not in ep_color:
            ep_color[key] = FAILED_COLOR if key == "failed" else EP_COLORS[len(ep_color) % len(EP_COLORS)]
        label = "failed request" if key == "failed" else f"answered by {key}"
        h = ax.bar(lefts, counts[key], width=width, bottom=bottom, align="edge", color=ep_color[key],
                   linewidth=0, label=label)
        handles.setdefault(("failed" if key == "failed" else "ep", label), h)
        bottom = [a + b for a, b in zip(bottom, counts[key])]
    top = max(bottom) if reqs else 1
    for b in phase["bands"]:
        lo, hi = b["fromUnixMs"] / 1000.0 - origin, b["toUnixMs"] / 1000.0 - origin
        label = str(b.get("label", "band"))
        color = str(b.get("color", "0.85"))
        color = color if is_color_like(color) else "0.85"
        h = ax.axvspan(lo, hi, color=color, zorder=0, linewidth=0, label=label)
        handles.setdefault(("band", label), h)
    xmax = max(end, width)
    axes_pt = ax.bbox.width * 72.0 / ax.figure.dpi
    for i, e in enumerate(sorted(phase["events"], key=lambda e: e["atUnixMs"])):
        x = e["atUnixMs"] / 1000.0 - origin
        # A label that would run past the right edge goes to the left of its line (7.5 pt text).
        right = x / xmax + (len(str(e.get("label", ""))) * 4.3 + 4) / axes_pt > 1.0
        text, color, style = KINDS.get(e.get("kind"), ("other event", "0.4", ":"))
        h = ax.axvline(x, color=color, linestyle=style, linewidth=1.2)
        handles.setdefault(("line", text), h)
        ax.annotate(str(e.get("label", "")), xy=(x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-2 if right else 2, -3 - 10 * (i % 4)), textcoords="offset points", fontsize=7.5,
                    va="top", ha="right" if right else "left", color=color,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    if not reqs:
        ax.text(0.5, 0.5, "no requests recorded", transform=ax.transAxes, ha="center", va="center",
                color="0.4")
    # Head room above the bars for the four rows of event labels.
    ax.set_ylim(0, max(top, 1) * 1.8 + 1)
    ax.set_xlim(0, xmax)
    ax.set_ylabel(f"requests / {width:g} s" if width >= 1 else f"requests / {width * 1000:.0f} ms")
    title = ax.set_title(phase["title"], fontsize=9, loc="left")  # shrunk to fit in main() if need be
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    return len(reqs), title


def main():
    ap = argparse.ArgumentParser(description="Timeline plot of a request-load run (testbed/health.sh).")
    ap.add_argument("run", help="the run's JSON: phases, each with its load file, events and bands")
    ap.add_argument("out", help="the image to write: .png or .svg")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    ext = os.path.splitext(a.out)[1].lower()
    if ext not in (".png", ".svg"):
        die(f"{a.out}: the output must end in .png or .svg")
    phases = read_run(a.run)
    plt, is_color_like = load_matplotlib()

    fig, axes = plt.subplots(len(phases), 1, figsize=(10, 1.2 + 2.6 * len(phases)), dpi=100, squeeze=False)
    handles, ep_color, total, titles = {}, {}, 0, []
    for ax, phase in zip(axes[:, 0], phases):
        n, title = draw_phase(ax, phase, ep_color, handles, is_color_like)
        total += n
        titles.append((ax, title))
    axes[-1, 0].set_xlabel("seconds since the phase began (bars: requests by the time they were sent)")
    if a.title:
        fig.suptitle(a.title, fontsize=10)
    # Legend: endpoints, failed, bands, then the event kinds in KINDS' order.
    rank = {"ep": 0, "failed": 1, "band": 2, "line": 3}
    kind_order = [t for t, _, _ in KINDS.values()]
    order = sorted(handles, key=lambda k: (rank[k[0]], kind_order.index(k[1]) if k[1] in kind_order else 99))
    fig.legend([handles[k] for k in order], [k[1] for k in order], loc="lower center", ncol=4, fontsize=8,
               frameon=False)
    rows = (len(order) + 3) // 4
    fig.tight_layout(rect=(0, (0.25 + 0.17 * rows) / fig.get_figheight(), 1, 1))
    # A title wider than its subplot is shrunk until it fits (long probe specs).
    renderer = fig.canvas.get_renderer()
    for ax, t in titles:
        size = 9.0
        while size > 6 and t.get_window_extent(renderer).width > ax.get_window_extent(renderer).width:
            size -= 0.5
            t.set_fontsize(size)
    try:
        fig.savefig(a.out)
    except OSError as e:
        die(f"cannot write {a.out}: {e.strerror}")
    print(f"plot: wrote {a.out} ({len(phases)} phase(s), {total} requests)", file=sys.stderr)


if __name__ == "__main__":
    main()
