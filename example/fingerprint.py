"""Fingerprint the example site's assets, as a site's build tool does: each `NAME.HASH.EXT` under
assets/ is renamed to the hash of its content, and index.html refers to the new name.

    python3 example/fingerprint.py [example/site]

Run it after changing such an asset: the new release then asks for a name the old one does not
have, which is what Cutover's asset fallback is for (a page served just before a switch still
gets its own stylesheet).
"""

import hashlib
import re
import sys
from pathlib import Path

FINGERPRINTED = re.compile(r"^(?P<name>[^.]+)\.(?P<hash>[0-9a-f]{8})\.(?P<ext>[a-z0-9]+)$")


def fingerprint(site):
    """Rename each fingerprinted asset to its content's hash; returns {old name: new name}."""
    page = site / "index.html"
    html = page.read_text()
    renamed = {}
    for asset in sorted((site / "assets").iterdir()):
        m = FINGERPRINTED.match(asset.name)
        if not m:
            continue
        digest = hashlib.sha256(asset.read_bytes()).hexdigest()[:8]
        new = f"{m['name']}.{digest}.{m['ext']}"
        if new != asset.name:
            asset.rename(asset.with_name(new))
            html = html.replace(f"assets/{asset.name}", f"assets/{new}")
            renamed[asset.name] = new
    page.write_text(html)
    return renamed


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "site")
    for old, new in fingerprint(root).items():
        print(f"{old} -> {new}")
