"""`fab check`'s look for private files the site serves: every file of the live release (inside
`serve`) whose name looks private is requested over HTTP on this server, and any that answers is
a problem. A deploy leaves version control and the hosts file out of a release
(tasks/buildfiles.py); a database dump or a key copied into the build is still the site's own
file, and only Apache's answer tells whether a visitor gets it.

Standard library only; this file runs on the server.
"""

import fnmatch
import os
import urllib.parse

# Names (matched without regard to case) of files that hold secrets or data, never a page: the
# hosts file (hosts, ports, SSH user and key path), keys and credentials, database files and
# dumps, copies of files (wp-config.php.bak, LocalSettings.php~: PHP source served as text) and
# backup archives; tokens of package managers and clouds (Composer's auth.json, .pypirc, .s3cfg),
# Terraform's state, shell and editor histories, logs (a query or a path in an error). Public keys
# (.pub) are not among them, nor a plain `*.sql` (applications ship their schema as such: MediaWiki
# has hundreds), only one named or compressed as a dump; nor composer.lock (the versions
# composer.json names, public in any case).
PRIVATE_NAMES = (
    "hosts.yaml", "hosts.yml",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.ppk", "*.p12", "*.pfx", "*.jks",
    "*.kdbx", "known_hosts", "authorized_keys",
    ".env*", ".netrc", ".npmrc", ".pgpass", ".my.cnf", ".git-credentials", ".htpasswd",
    "*dump*.sql", "*backup*.sql", "*.sql.*", "*.dump", "*.sqlite", "*.sqlite3", "*.db",
    "*.bak", "*.old", "*.orig", "*.save", "*~", "*.swp",
    "*backup*.zip", "*backup*.tar", "*backup*.tar.*", "*backup*.tgz", "*backup*.gz", "*backup*.7z", "*backup*.rar",
    "auth.json", ".pypirc", ".s3cfg", ".boto", ".dockercfg", ".vault_pass*", "*.tfstate", "*.tfstate.*",
    ".*_history", ".viminfo", ".lesshst", "*.log", "error_log",
)  # fmt: skip
# Folders of a home directory that hold nothing but secrets: every file in them looks private.
PRIVATE_DIRS = (".ssh", ".aws", ".gnupg", ".docker", ".kube")
VCS = (".git", ".hg", ".svn", ".bzr", "_darcs")  # left out of releases since; an older deploy may have uploaded them
PROBED = 30  # private-looking files requested at most
WALKED = 100000  # entries of the live release looked at, at most


def looks_private(name):
    lower = name.lower()
    return not lower.endswith(".pub") and any(fnmatch.fnmatchcase(lower, p) for p in PRIVATE_NAMES)


def find(root):
    """(private-looking files, version-control directories, whether the walk stopped early) of the
    tree at root, paths relative to it. A symlink is a file here by its own name (Apache may follow
    it); a symlink to a directory (a shared entry) is not walked into."""
    files, vcs, seen = [], [], 0
    for top, dirs, names in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = "" if rel == "." else rel + "/"
        dirs.sort()
        for d in list(dirs):
            if d in VCS:
                vcs.append(prefix + d)
                dirs.remove(d)  # its files are no page either: never served (never_serve)
        secret_dir = any(part in PRIVATE_DIRS for part in prefix.split("/"))
        for name in sorted(names):  # files, and symlinks other than to directories: Apache may follow them
            if secret_dir or looks_private(name):
                files.append(prefix + name)
        seen += len(dirs) + len(names)
        if seen >= WALKED:
            return files, vcs, True
    return files, vcs, False


def probe(root, origin, timeout):
    """Each private-looking file under root (the live release's document root) requested as
    origin/<path>: {"served": {url: status} of those answered 2xx, "probed": n, "more": not probed,
    "vcs": [...], "stopped": bool}."""
    from . import health

    files, vcs, stopped = find(root)
    served = {}
    for rel in files[:PROBED]:
        url = origin + "/" + urllib.parse.quote(rel)
        status = health.status_of(url, timeout)
        if isinstance(status, int) and 200 <= status < 300:
            served[url] = status
    return {"served": served, "probed": min(len(files), PROBED), "more": max(len(files) - PROBED, 0),
            "vcs": vcs[:5], "stopped": stopped}
