"""The server side's start-up, before and after in one run: from opening its SSH channel to its
first answer, and one more answer on the open channel, for an older commit and this tree.

    python3 bench/agent_start.py --before COMMIT [--rounds 60]

One lab server; both versions connect to it over SSH, in batches that alternate, so that both
see the same machine noise. Writes the section "Agent start-up" of bench/RESULTS.md.
"""

import argparse
import json
import subprocess
import sys

from common import PROJECT, before_tree, median, start_lab, stop_lab, write_section

BATCHES = 6

# Run inside each version's tree: connect once, then `rounds` times start the agent and ask it
# twice (the first answer includes the start-up, the second is one step on the open channel).
CHILD = """
import json, sys, time
sys.path.insert(0, ".")
from tasks import hostsfile, ssh
hosts_file, rounds = sys.argv[1], int(sys.argv[2])
found = hostsfile.load(hosts_file).resolve("lab1")
host = found.hosts[0] if hasattr(found, "hosts") else found[0]
try:
    from tasks import agent  # this tree: the bundle over stdin

    def fresh(conn):
        conn._cutover_channel = None

    def ask(conn):
        return agent.call(conn, host.name, host.python, "state", "state", {"deploy_to": host.deploy_to}, 30)
except ImportError:  # before: the agent's source as one -c argument
    from tasks.layout import Layout

    def fresh(conn):
        conn._cutover_agent = None

    def ask(conn):
        return ssh.agent(conn, "state", "state", python=host.python, layout=Layout(host.deploy_to).as_dict())
start, step = [], []
with ssh.connect(host) as conn:
    for _ in range(rounds):
        fresh(conn)
        t0 = time.perf_counter()
        ask(conn)
        t1 = time.perf_counter()
        ask(conn)
        t2 = time.perf_counter()
        start.append(t1 - t0)
        step.append(t2 - t1)
print(json.dumps({"start": start, "step": step}))
"""


def measure(tree, hosts_file, rounds):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(hosts_file), str(rounds)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the older commit to compare with")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    figures = {"before": {"start": [], "step": []}, "after": {"start": [], "step": []}}
    with before_tree(args.before, "cutover-agent-") as (commit, _, old_tree):
        the_lab, parent = start_lab(1)
        try:
            versions = [("before", old_tree), ("after", PROJECT)]
            for batch in range(BATCHES):
                for name, tree in versions if batch % 2 else versions[::-1]:
                    got = measure(tree, the_lab.hosts_file, args.rounds // BATCHES)
                    for key in ("start", "step"):
                        figures[name][key] += got[key]
        finally:
            stop_lab(the_lab, parent)
    bundle = sum(len((PROJECT / "tasks" / "remote" / f"{m}.py").read_bytes()) for m in _bundle())
    rows = []
    for name in ("before", "after"):
        f = figures[name]
        rows.append(
            f"| {name} ({commit if name == 'before' else 'this tree'}) | {len(f['start'])} | "
            f"{median(f['start']) * 1000:.1f} ms | {min(f['start']) * 1000:.1f} ms | {median(f['step']) * 1000:.2f} ms |"
        )
    ratio = median(figures["after"]["start"]) / median(figures["before"]["start"])
    write_section(
        "Agent start-up",
        [
            f"Command: `python3 bench/agent_start.py --before {commit} --rounds {args.rounds}` (one lab server; both "
            f"versions connect over SSH in {BATCHES} alternating batches; the server's root login shell is the "
            "machine's own).",
            "",
            "| version | starts | start to first answer, median | fastest | one more step, median |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"After / before, median start: {ratio:.2f}. Before: agent.py's 40 KB source as one `-c` argument. After: "
            f"a {len(_bootstrap())} byte bootstrap as `-c`, and the {len(_bundle())} modules of tasks/remote/ "
            f"({bundle / 1024:.0f} KB) as one bundle over the channel's stdin.",
        ],
    )
    print(json.dumps({k: {m: median(v[m]) for m in v} for k, v in figures.items()}))


def _bundle():
    sys.path.insert(0, str(PROJECT))
    from tasks.agent import BUNDLE

    return BUNDLE


def _bootstrap():
    from tasks.agent import BOOTSTRAP

    return BOOTSTRAP


if __name__ == "__main__":
    main()
