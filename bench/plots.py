"""Charts of the benches' raw figures (bench/data/*.json) as PNG files beside RESULTS.md, linked
from its section "Charts".

    pip install -r bench/requirements.txt
    python3 bench/plots.py

Each chart is drawn from the figures its bench last kept; a bench not yet run is skipped and
named. Writes bench/charts/*.png and the section "Charts" of bench/RESULTS.md.
"""

import json
import sys

from common import DATA, PROJECT, percentile, write_section

try:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
except ImportError:
    sys.exit("bench/plots.py needs matplotlib: pip install -r bench/requirements.txt")

CHARTS = PROJECT / "bench" / "charts"
COLORS = {"freeze": "#2b7bb9", "sigstop": "#d9822b"}
STEP_ORDER = (
    "connect",
    "lock",
    "prelink",
    "upload",
    "link",
    "smoke",
    "promote",
    "swap",
    "cleanup",
)  # as a deploy runs them


def _load(name):
    path = DATA / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(fig, name):
    CHARTS.mkdir(exist_ok=True)
    path = CHARTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.relative_to(PROJECT / "bench")


def pause_chart(data):
    """Every deploy's pause, per httpd size and method (points), with p50 and p99 marked."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = []
    for i, case in enumerate(data["cases"]):
        labels.append(f"{case['httpd']}\n({case['processes']} processes)")
        for j, (method, pauses) in enumerate(case["pause_ms"].items()):
            x = i + (j - 0.5) * 0.3
            ax.scatter(
                [x] * len(pauses), pauses, s=9, alpha=0.5, color=COLORS[method], label=method if i == 0 else None
            )
            for p, mark in ((50, "_"), (99, "x")):
                ax.scatter([x + 0.09], [percentile(pauses, p)], marker=mark, s=60, color="black")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("httpd paused (ms, log scale)")
    ax.set_title("Pause per deploy under wrk load: cgroup freeze against SIGSTOP (- p50, x p99)", fontsize=10)
    ax.axhline(0.3, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=8)
    return _save(fig, "pause")


def listen_chart(data):
    """Visitors' latency during a swap held until pause_timeout, per ListenBacklog (CDF)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for case in data["held"]:
        lat = case["latency_quantiles_s"]
        ax.plot(lat, [k / (len(lat) - 1) for k in range(len(lat))],
                label=f"backlog {case['effective']:,}: {case['overflows']:,} overflows, check warned: "
                      f"{'yes' if case['warned'] else 'no'}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("latency of a visit (s, log scale)")
    ax.set_ylabel("fraction of visits")
    ax.set_title(
        f"Open-loop visitors at {data['rate']}/s, swap held {data['pause_timeout_s']} s: "
        "refused SYNs wait for the retry", fontsize=10
    )  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, "listen")


def steps_chart(data):
    """Where the time of a one-file change goes, per site size: each step, and the rest of the
    wall time (fab's start-up, the build check, connecting)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sites = data["sites"]
    recorded = sites[0]["one file"][-1][4]
    names = [n for n in STEP_ORDER if n in recorded] + [n for n in recorded if n not in STEP_ORDER]
    for i, site in enumerate(sites):
        wall, steps = site["one file"][-1][0], site["one file"][-1][4]
        left = 0.0
        for k, name in enumerate(names + ["other"]):
            width = steps.get(name, 0) if name != "other" else max(0.0, wall - sum(steps.values()))
            ax.barh(i, width, left=left, color=plt.cm.tab20(k % 20), label=name if i == 0 else None)
            left += width
    ax.set_yticks(range(len(sites)), [f"{s['files']:,} files" for s in sites])
    ax.set_xlabel("seconds (last one-file change of each site)")
    ax.set_title("Time per step of a one-file change", fontsize=10)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return _save(fig, "steps")


def peers_chart(data):
    """Cutover against its peers: one-file change, rollback and first deploy, per link and site."""
    groups = [(link, size) for link, r in data["results"].items() for size in data["sizes"] if str(size) in r]
    tools = list(data["results"][groups[0][0]][str(groups[0][1])])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    width = 0.8 / len(tools)
    for ax, (action, title) in zip(axes, (("one file", "one-file change"), ("rollback", "rollback"),
                                          ("first", "first deploy (full upload)"))):  # fmt: skip
        for j, tool in enumerate(tools):
            heights = []
            for link, size in groups:
                v = data["results"][link][str(size)][tool][action]
                heights.append(percentile([x[0] for x in v], 50) if action != "first" else (v[0] if v else 0))
            xs = [i + (j - (len(tools) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, heights, width, label=tool, color=plt.cm.tab10(j))
        ax.set_xticks(range(len(groups)), [f"{link}\n{size:,} files" for link, size in groups], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("seconds (median)" if action != "first" else "seconds")
    axes[0].legend(fontsize=7)
    fig.suptitle("Cutover, the rsync floor and Capistrano on one lab server (bench/peers.py)", fontsize=10)
    return _save(fig, "peers")


def scale_chart(data):
    """Cutover's and the floor's time for each step against the number of files (log-log), with
    the spread of the repeats; beside it fab's and the server agent's peak memory."""
    sizes = sorted(int(n) for n in data["results"])
    steps = ("first", "one file", "no change", "rollback")
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for i, step in enumerate(steps):
        for tool, style in (("Cutover", "-o"), ("rsync floor", ":s")):
            runs = [[r[tool][step]["seconds"] for r in data["results"][str(n)]] for n in sizes]
            mid = [percentile(v, 50) for v in runs]
            ax.plot(sizes, mid, style, color=plt.cm.tab10(i), label=f"{tool}: {step}")
            ax.fill_between(sizes, [min(v) for v in runs], [max(v) for v in runs], color=plt.cm.tab10(i), alpha=0.12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("files in the site")
    ax.set_ylabel("seconds (median, band: range)")
    ax.legend(fontsize=7, ncol=2)
    for label, pick in (
        ("fab", lambda r: r.get("fab_kb")),
        ("server: agent", lambda r: r.get("server", {}).get("agent")),
    ):
        peaks = [
            max((pick(r["Cutover"][s]) or 0) for r in data["results"][str(n)] for s in steps) / 1024 for n in sizes
        ]
        mem.plot(sizes, peaks, "-o", label=label)
    mem.set_xscale("log")
    mem.set_xlabel("files in the site")
    mem.set_ylabel("peak RSS (MB)")
    mem.legend(fontsize=8)
    fig.suptitle("Cost against the number of files: Cutover and the rsync floor (bench/scale.py)", fontsize=10)
    return _save(fig, "scale")


def main():
    drawn, missing = [], []
    for name, chart, what in (
        ("pause", pause_chart, "Pause against httpd's size (bench/pause_bench.py)"),
        ("listen", listen_chart, "Listen queue under a held pause (bench/listen_bench.py)"),
        ("speed", steps_chart, "Time per step of a one-file change (bench/speed.py)"),
        ("peers", peers_chart, "Cutover against its peers by site size and link (bench/peers.py)"),
        ("scale", scale_chart, "Cost against the number of files (bench/scale.py)"),
    ):
        data = _load(name)
        if data is None:
            missing.append(f"{what}: no figures yet in bench/data/{name}.json")
            continue
        path = chart(data)
        drawn.append(f"- {what}, measured {data['measured']}: ![{name}]({path})")
    write_section(
        "Charts", ["Command: `python3 bench/plots.py` (from the figures each bench last kept in bench/data/).", "",
                   *drawn, *(f"- {m}" for m in missing)],
    )  # fmt: skip


if __name__ == "__main__":
    main()
