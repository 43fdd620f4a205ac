"""The lab's link profiles as a tool sees them (lab/link.py): a small request's round trip, a
20 MB transfer's rate, an SSH login.

    python3 bench/links.py [--profiles loopback,lan,wan]

One lab server per profile; the round trip is a small HTTP GET on an open connection (median of
10), the rate 20 MB from `head -c` over ssh (less the login's time), the login `ssh HOST true`.
Writes the section "Link profiles" of bench/RESULTS.md.
"""

import argparse

from common import start_lab, stop_lab, write_section
from peers import link_figures

from lab.link import PROFILES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=",".join(PROFILES))
    args = parser.parse_args()
    rows = []
    for name in args.profiles.split(","):
        the_lab, parent = start_lab(1, link=name)
        try:
            got = link_figures(the_lab, the_lab.servers[0])
        finally:
            stop_lab(the_lab, parent)
        profile = PROFILES[name]
        meant = f"{profile.mbit} Mbit/s, {2 * profile.delay_ms:g} ms, MTU {profile.mtu}" if profile else "-"
        rows.append(
            f"| {name} | {meant} | {got['rtt_ms']:.2f} ms | {got['mbit']:,.0f} Mbit/s | {got['ssh_login_s']:.3f} s |"
        )
    write_section(
        "Link profiles",
        [
            f"Command: `python3 bench/links.py --profiles {args.profiles}` (one lab server each; lab/link.py: a "
            "network namespace behind two TUN devices, tbf for the rate, the lab's delay element for the round "
            "trip; loopback is the machine's own).",
            "",
            "| profile | set | round trip (small HTTP request) | rate (20 MB over ssh) | ssh login |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "The delay element is one Python process per link: it adds about 0.5 ms of its own to a round "
            "trip (lan: 1.5 ms measured for 1 ms set) and carries 700-800 Mbit/s at most, with jumbo frames "
            "(MTU 9000) on lan to keep its packet rate down; ssh itself carries about 1 Gbit/s here "
            "(loopback). wan is what it was made for: 100 Mbit/s and 20 ms, as set.",
        ],
    )


if __name__ == "__main__":
    main()
