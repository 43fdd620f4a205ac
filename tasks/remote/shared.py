"""Shared entries: kept under deploy_to/shared/ across releases, symlinked into each release."""

import os
import shutil


def link(layout, release_dir, entries):
    """Make each entry of release_dir a symlink to shared/<entry>; returns what was done per entry."""
    done = {}
    for entry in entries:
        target = layout.shared_entry(entry)
        if not os.path.lexists(target):
            os.makedirs(target)
            done[entry] = "created"
        else:
            done[entry] = "linked"
        path = os.path.join(release_dir, entry)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(path)), path)
    return done
