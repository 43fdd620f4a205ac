"""PHP sites: what Cutover's Apache rules cost per request, and httpd's pause, with mod_php
(prefork MPM) and with php-fpm through proxy_fcgi (event MPM).

    python3 bench/php_bench.py [--seconds 5] [--rounds 3] [--deploys 30]

One lab server per PHP mode, the test app (tests/phpapp) deployed. Requests per second of a
static file and of a PHP page, with three versions of the rules, alternating rounds: none
(plain Apache), pinning without the access check, and Cutover's rules (pinning gated by the -U
subrequest). Then `--deploys` deploys under wrk load on the PHP page: the pause and failed
requests. Writes the section "PHP sites" of bench/RESULTS.md.
"""

import argparse
import os
import re
import sys
from pathlib import Path

from common import PROJECT, Wrk, fab, history, lab, median, percentile, start_lab, stop_lab, write_section

sys.path.insert(0, str(PROJECT))
from tests.conftest import LabHandle  # noqa: E402
from tests.test_php import SITE_CONF, build, configure_app  # noqa: E402

PATHS = {"static": "/assets/app.css", "php": "/products/7"}


def rules_variants(text):
    """{name: rules text}: none, pinning without the -U access check, Cutover's rules."""
    without_check = "\n".join(line for line in text.splitlines() if not re.search(r"\} -U$", line))
    return {"none": "", "pin, no access check": without_check, "Cutover's rules": text}


def rps(server, path, seconds):
    result = Wrk(server.url.rstrip("/") + path, seconds=seconds, threads=2, connections=8).result()
    assert result["errors"] == 0, result["raw"]
    return result["requests"] / seconds


def measure(php, work, seconds, rounds, deploys):
    the_lab, parent = start_lab(1, php=php, site_conf=SITE_CONF, serve="public")
    handle = LabHandle(the_lab)
    server = the_lab.servers[0]
    try:
        app = build(work, f"{php}-1")
        configure_app(handle, app, f"{php}-1")
        seconds_, result = fab(the_lab.hosts_file, "deploy")
        assert result.returncode == 0, result.stderr
        conf = Path(server.deploy_to, ".cutover", "apache.conf")
        variants = rules_variants(conf.read_text())
        figures = {(v, p): [] for v in variants for p in PATHS}
        for i in range(rounds):
            order = list(variants.items())
            for name, text in order if i % 2 else order[::-1]:
                conf.write_text(text)
                lab.graceful_restart(server)
                for kind, path in PATHS.items():
                    figures[(name, kind)].append(rps(server, path, seconds))
        conf.write_text(variants["Cutover's rules"])
        lab.graceful_restart(server)
        load = Wrk(server.url.rstrip("/") + PATHS["php"], seconds=max(20, deploys * 2), threads=2, connections=8)
        for i in range(deploys):
            page = app / "src" / "App.php"
            page.write_text(page.read_text() + f"// {i}\n")
            _, result = fab(the_lab.hosts_file, "deploy")
            assert result.returncode == 0, result.stderr
        seen = load.result()
        pauses = [e["pause_ms"] for e in history(server)[-deploys:]]
        return {k: median(v) for k, v in figures.items()}, pauses, seen
    finally:
        stop_lab(the_lab, parent)


def _added_us(rate, base):
    """CPU time a request costs more than with no rules: the machine's cores over the rates (wrk
    keeps both cores busy), in microseconds."""
    cores = os.cpu_count()
    return (cores / rate - cores / base) * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deploys", type=int, default=30)
    args = parser.parse_args()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="cutover-php-"))
    lines = [
        f"Command: `python3 bench/php_bench.py --seconds {args.seconds} --rounds {args.rounds} --deploys "
        f"{args.deploys}` (one lab server per mode, the test app of tests/phpapp; wrk -t2 -c8; requests per second "
        f"are medians of {args.rounds} alternating rounds of {args.seconds} s).",
        "",
        "| mode | rules | static file (req/s) | PHP page (req/s) | static vs none | PHP vs none | CPU added per request, static / PHP |",
        "|---|---|---|---|---|---|---|",
    ]
    pause_rows = []
    for php, label in (("mod_php", "mod_php, prefork"), ("fpm", "php-fpm, event")):
        rates, pauses, seen = measure(php, work, args.seconds, args.rounds, args.deploys)
        for name in ("none", "pin, no access check", "Cutover's rules"):
            s, p = rates[(name, "static")], rates[(name, "php")]
            s0, p0 = rates[("none", "static")], rates[("none", "php")]
            lines.append(
                f"| {label} | {name} | {s:,.0f} | {p:,.0f} | {s / s0:.2f} | {p / p0:.2f} | "
                f"{_added_us(s, s0):.0f} / {_added_us(p, p0):.0f} us |"
            )
        pause_rows.append(
            f"| {label} | {len(pauses)} | {percentile(pauses, 50):.3f} | {percentile(pauses, 99):.3f} | "
            f"{max(pauses):.3f} | {seen['requests']:,} | {seen['errors']} |"
        )
    lines += [
        "",
        "Pause of httpd while `current` switches, over the deploys, under wrk load on the PHP page:",
        "",
        "| mode | deploys | pause p50 (ms) | p99 (ms) | max (ms) | requests | failed |",
        "|---|---|---|---|---|---|---|",
        *pause_rows,
    ]
    write_section("PHP sites", lines)


if __name__ == "__main__":
    main()
