"""The site's <Directory current/...> blocks written again for releases/*/... (tasks/remote/siteconf.py),
read in this process from Apache configuration trees written here: Include and IncludeOptional
(wildcards, directories, symlinks, relative to ServerRoot), conditional sections, Define, continued
lines, VirtualHosts of this site and of others, regular expressions, and the drift `fab check` reports."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks.remote import siteconf
from tasks.remote.paths import Layout
from tasks.remote.protocol import Refused

DEPLOY_TO = "/var/www/shop"


def tree(root, files):
    """Write {relative path: text} under root; a text starting with -> makes a symlink."""
    for rel, text in files.items():
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            path.symlink_to(text[2:])
        else:
            path.write_text(text)
    return Path(root)


def rendered(root, config="httpd.conf"):
    text, found = siteconf.render(
        DEPLOY_TO, config=str(Path(root, config)), rules_path=f"{DEPLOY_TO}/.cutover/apache.conf"
    )
    assert found == str(Path(root, config))
    return text


def blocks(text, preview=False):
    """The mirrored blocks of a rendered apache-site.conf, without the comment lines: each block's
    mirror for releases/*/... (or, preview, the one for next/..., which is checked to be the same
    block for another path)."""
    out = []
    for chunk in text.split("\n" + siteconf.MARK)[1:]:
        lines = chunk.partition("\n")[2].strip("\n").split("\n")
        half = len(lines) // 2
        twice = len(lines) % 2 == 0 and sum(a != b for a, b in zip(lines[:half], lines[half:])) == 1
        if twice:
            changed = next(i for i in range(half) if lines[i] != lines[half + i])
            assert "/next" in lines[half + changed] and "/releases/" in lines[changed], lines
        out.append("\n".join(lines[half:] if twice and preview else lines[:half] if twice else lines))
    return out


MAIN = """ServerRoot "{root}"
Define SITE /var/www/shop
<Directory />
    Require all denied
</Directory>
<Directory /var/www/shop>
    AllowOverride None
</Directory>
<IfModule php_module>
    <Directory "${{SITE}}/current/static">
        php_admin_flag engine off
        <Files "x.php">
            Require all denied
        </Files>
    </Directory>
</IfModule>
<DirectoryMatch "^/var/www/shop/current/(gen|build)/">
    Header set X-Generated \\
        yes
</DirectoryMatch>
<Directory /var/www/shop/current/../current//dl>
    ForceType application/octet-stream
</Directory>
<Directory /var/www/other/current/private>
    Require all denied
</Directory>
IncludeOptional sites-enabled/*.conf
IncludeOptional missing/*.conf
"""
SHOP = """<VirtualHost *:80>
    DocumentRoot /var/www/shop/current/public
    <Directory /var/www/shop/current/public/uploads>
        php_admin_flag engine off
    </Directory>
    Include conf.d
</VirtualHost>
"""
OTHER = """<VirtualHost *:8080>
    DocumentRoot /srv/other
    <Directory /var/www/shop/current/public/admin>
        Require all granted
    </Directory>
</VirtualHost>
"""


def test_the_blocks_for_current_are_written_for_every_release_inside_their_conditions(tmp_path):
    root = tree(tmp_path, {
        "httpd.conf": MAIN.format(root=tmp_path),
        "sites-available/shop.conf": SHOP,
        "sites-enabled/shop.conf": "->../sites-available/shop.conf",  # Debian's a2ensite
        "sites-enabled/other.conf": OTHER,
        "conf.d/headers.conf": '<Directory "/var/www/shop/current/public/css">\n    Header set X-Css yes\n</Directory>\n',
    })  # fmt: skip
    assert blocks(rendered(root)) == [
        '<IfModule php_module>\n    <Directory "/var/www/shop/releases/*/static">\n        php_admin_flag engine off\n'
        '        <Files "x.php">\n            Require all denied\n        </Files>\n    </Directory>\n</IfModule>',
        '<DirectoryMatch "^/var/www/shop/releases/[^/]+/(gen|build)/">\n    Header set X-Generated         yes\n'
        "</DirectoryMatch>",
        '<Directory "/var/www/shop/releases/*/dl">\n    ForceType application/octet-stream\n</Directory>',
        # this site's VirtualHost (its DocumentRoot is under current), with what it includes; not the other's
        '<Directory "/var/www/shop/releases/*/public/uploads">\n    php_admin_flag engine off\n</Directory>',
        '<Directory "/var/www/shop/releases/*/public/css">\n    Header set X-Css yes\n</Directory>',
    ]


def test_the_blocks_are_written_for_the_release_the_smoke_preview_serves_too(tmp_path):
    root = tree(tmp_path, {
        "httpd.conf": MAIN.format(root=tmp_path),
        "sites-enabled/shop.conf": SHOP,
        "conf.d/x.conf": '<DirectoryMatch "/current/public/(js|css)/">\n    Header set X-Asset yes\n</DirectoryMatch>\n',
    })  # fmt: skip
    assert [b.split("\n")[0:2] for b in blocks(rendered(root), preview=True)] == [
        ["<IfModule php_module>", '    <Directory "/var/www/shop/next/static">'],
        ['<DirectoryMatch "^/var/www/shop/next/(gen|build)/">', "    Header set X-Generated         yes"],
        ['<Directory "/var/www/shop/next/dl">', "    ForceType application/octet-stream"],
        ['<Directory "/var/www/shop/next/public/uploads">', "    php_admin_flag engine off"],
        ['<DirectoryMatch "/next/public/(js|css)/">', "    Header set X-Asset yes"],
    ]


def test_a_regular_expression_with_escaped_slashes_and_dots_is_mirrored(tmp_path):
    deploy_to = "/srv/shop.example"
    conf = tree(
        tmp_path,
        {
            "httpd.conf": '<Directory ~ "^\\/srv\\/shop\\.example\\/current\\/private">\nRequire all denied\n</Directory>\n'
        },
    )
    text, _ = siteconf.render(deploy_to, config=str(conf / "httpd.conf"))
    assert blocks(text) == [
        '<Directory ~ "^/srv/shop\\.example/releases/[^/]+\\/private">\n    Require all denied\n</Directory>'
    ]


def test_virtualhosts_of_the_site_with_different_blocks_are_refused(tmp_path):
    second = SHOP.replace(":80", ":443").replace("engine off", "engine on")
    root = tree(tmp_path, {"httpd.conf": MAIN.format(root=tmp_path), "sites-enabled/a.conf": SHOP,
                           "sites-enabled/b.conf": second, "conf.d/empty.conf": "\n"})  # fmt: skip
    with pytest.raises(Refused, match="have different <Directory /var/www/shop/current/...> blocks"):
        rendered(root)
    # the same blocks in both (http and https of one site): one set, written once
    tree(tmp_path, {"sites-enabled/b.conf": SHOP.replace(":80", ":443")})
    assert len(blocks(rendered(root))) == 4


def test_no_configuration_found_writes_none_and_says_so(tmp_path):
    text, found = siteconf.render(DEPLOY_TO, pidfile=str(tmp_path / "no.pid"), config=str(tmp_path / "none.conf"))
    if found is None:  # neither given nor at a well-known path on this machine
        assert blocks(text) == [] and "(no Apache configuration found)" in text
    else:
        assert found in siteconf.WELL_KNOWN


def test_check_names_each_block_changed_added_or_removed_since_setup(tmp_path):
    layout = Layout(str(tmp_path / "site"))
    Path(layout.meta).mkdir(parents=True)
    conf = tree(tmp_path, {"httpd.conf": MAIN.format(root=tmp_path), "conf.d/x.conf": "\n"}) / "httpd.conf"
    assert siteconf.problems(layout, config=str(conf)) == [
        f"{layout.apache_site} is missing: rerun `fab setup` (and reload Apache)"
    ]
    Path(layout.apache_site).write_text(siteconf.render(layout.deploy_to, config=str(conf))[0])
    assert siteconf.problems(layout, config=str(conf)) == []
    site = layout.deploy_to
    text = MAIN.format(root=tmp_path).replace("/var/www/shop", site)
    conf.write_text(text)
    Path(layout.apache_site).write_text(siteconf.render(site, config=str(conf))[0])
    assert siteconf.problems(layout, config=str(conf)) == []
    # the operator turns PHP on again in static/, adds a rule for private/ and drops the one for dl/
    changed = text.replace("engine off", "engine on").replace(
        f"<Directory {site}/current/../current//dl>\n    ForceType application/octet-stream\n</Directory>\n", ""
    )
    conf.write_text(changed + f"<Directory {site}/current/private>\n    Require all denied\n</Directory>\n")
    lines = siteconf.problems(layout, config=str(conf))
    again = "; rerun `fab setup` and reload Apache"
    assert lines == [
        f'the site\'s block at {conf}:10 <Directory "${{SITE}}/current/static"> changed since `fab setup`' + again,
        f"the site's block at {conf}:26 <Directory {site}/current/private> is new since `fab setup`" + again,
        f"the site's block that was at {conf}:21 <Directory {site}/current/../current//dl> is gone since `fab setup`"
        + again,
    ]


def test_a_configuration_that_includes_itself_is_refused(tmp_path):
    root = tree(
        tmp_path, {"httpd.conf": f"ServerRoot {tmp_path}\nInclude loop.conf\n", "loop.conf": "Include loop.conf\n"}
    )
    with pytest.raises(Refused, match="Include nested deeper than 32 files"):
        rendered(root)


def test_a_script_alias_into_current_makes_its_pinned_scripts_run(tmp_path):
    root = tree(tmp_path, {"httpd.conf": """<IfModule alias_module>
    ScriptAlias /cgi-bin/ "/var/www/shop/current/cgi bin/"
</IfModule>
ScriptAlias /system/ /usr/lib/cgi-bin/
<VirtualHost *:80>
    DocumentRoot /var/www/shop/current
    ScriptAliasMatch "^/jobs/(.+\\.sh)$" "/var/www/shop/current/jobs/$1"
    <Location "/one.cgi">
        ScriptAlias "/var/www/shop/current/one.cgi"
    </Location>
</VirtualHost>
"""})  # fmt: skip
    pinned = "<If \"-n reqenv('CUTOVER_RELEASE')\">\n        SetHandler cgi-script\n        Options +ExecCGI\n    </If>"
    assert blocks(rendered(root)) == [
        f'<IfModule alias_module>\n<Location "/cgi-bin/">\n    {pinned}\n</Location>\n</IfModule>',
        f'<LocationMatch "^/jobs/(.+\\.sh)$">\n    {pinned}\n</LocationMatch>',
        f'<Location "/one.cgi">\n    {pinned}\n</Location>',
    ]


SPELLINGS = """ServerRoot "{root}"
Define ROOT /var/www/shop
Define CURRENT ${{ROOT}}/current
<Directory "${{CURRENT}}/defined">
    Header set X-A 1
</Directory>
<Directory /var/www/*/current/public/wild>
    Header set X-B 1
</Directory>
<Directory "//var/www/shop/current/doubled">
    Header set X-C 1
</Directory>
<DirectoryMatch "/current/(public/)?unanchored/">
    Header set X-D 1
</DirectoryMatch>
<Directory /var/www/*>
    Header set X-E 1
</Directory>
<Directory "${{FROM_ENVVARS}}/public/env">
    Header set X-F 1
</Directory>
Include sites
"""


def test_blocks_spelled_with_wildcards_defines_envvars_and_unanchored_regexes_are_mirrored(tmp_path):
    root = tree(tmp_path, {
        "httpd.conf": SPELLINGS.format(root=tmp_path),
        "envvars": "unset HOME\nexport APACHE_RUN_USER=www-data\nexport SHOP=/var/www/shop\nFROM_ENVVARS=\"$SHOP/current\"\n",
        "sites/shop.conf": "<VirtualHost *:80>\n    DocumentRoot /var/www/shop/current/public\n    Include more\n</VirtualHost>\n",
        "more/below/deep.conf": "<Directory /var/www/shop/current/public/deep>\n    Header set X-G 1\n</Directory>\n",
    })  # fmt: skip
    assert [b.split("\n")[0] for b in blocks(rendered(root))] == [
        '<Directory "/var/www/shop/releases/*/defined">',
        '<Directory "/var/www/shop/releases/*/public/wild">',
        '<Directory "/var/www/shop/releases/*/doubled">',
        '<DirectoryMatch "/releases/[^/]+/(public/)?unanchored/">',
        # /var/www/* names releases/ as well as current/: it holds for pinned requests already
        '<Directory "/var/www/shop/releases/*/public/env">',
        '<Directory "/var/www/shop/releases/*/public/deep">',
    ]


def test_variables_are_those_of_the_running_httpd(tmp_path):
    """httpd's environment (apachectl sourced envvars into it), not this process's."""
    fake = tmp_path / "httpd"  # a process named httpd, as the pidfile check wants
    fake.write_bytes(Path("/bin/sleep").read_bytes())
    fake.chmod(0o755)
    process = subprocess.Popen([str(fake), "30"], env={"SHOP_ROOT": "/var/www/shop"})
    try:
        deadline = time.monotonic() + 10  # exec'd: its name and environment are httpd's, not the fork's
        while Path(f"/proc/{process.pid}/comm").read_text().strip() != "httpd":
            assert time.monotonic() < deadline, "the fake httpd never started"
            time.sleep(0.01)
        (tmp_path / "httpd.pid").write_text(f"{process.pid}\n")
        conf = tree(
            tmp_path, {"httpd.conf": '<Directory "${SHOP_ROOT}/current/x">\n    Header set X-H 1\n</Directory>\n'}
        )
        text, _ = siteconf.render(DEPLOY_TO, pidfile=str(tmp_path / "httpd.pid"), config=str(conf / "httpd.conf"))
    finally:
        process.kill()
        process.wait()
    assert "SHOP_ROOT" not in os.environ
    assert blocks(text) == ['<Directory "/var/www/shop/releases/*/x">\n    Header set X-H 1\n</Directory>']


@pytest.mark.parametrize("spelling", ["/var/www/shop/releases", "/var/www/shop/releases/*/static", "/var/www/shop/r*",
                                      "~ ^/var/www/shop/releases/"])  # fmt: skip
def test_a_block_for_the_releases_is_refused_naming_it(tmp_path, spelling):
    """It would hold for every pinned request and for none through current: the site's rules would
    differ with Cutover's (a `Require all denied` there, for releases never to be served directly,
    would deny the whole site)."""
    conf = tree(tmp_path, {"httpd.conf": f"<Directory {spelling}>\n    Require all denied\n</Directory>\n"})
    with pytest.raises(Refused) as refused:
        rendered(conf)
    assert str(refused.value) == (
        "the site's configuration has blocks for /var/www/shop/releases/..., which apply to every pinned request and "
        f"to none through current: {conf}/httpd.conf:1 <Directory {spelling}>"
    )
    assert refused.value.hint == "write them for /var/www/shop/current (or for /var/www/shop, both)"


def test_cutovers_own_files_are_not_read_as_the_sites(tmp_path):
    """The site includes Cutover's rules, which include the blocks setup wrote for releases/*/..."""
    deploy_to = str(tmp_path / "shop")
    layout = Layout(deploy_to)
    block = f'<Directory "{deploy_to}/current/static">\n    Header set X-S 1\n</Directory>\n'
    conf = tree(tmp_path, {"httpd.conf": f"<VirtualHost *:80>\n    DocumentRoot {deploy_to}/current\n    {block}"
                                         f"    Include {layout.apache_conf}\n</VirtualHost>\n",
                           layout.apache_conf: f"Include {layout.apache_site}\n"})  # fmt: skip
    Path(layout.apache_site).write_text(siteconf.render(deploy_to, config=str(conf / "httpd.conf"))[0])
    again, _ = siteconf.render(deploy_to, config=str(conf / "httpd.conf"))
    assert blocks(again) == [f'<Directory "{deploy_to}/releases/*/static">\n    Header set X-S 1\n</Directory>']
    assert again == Path(layout.apache_site).read_text()


@pytest.mark.parametrize("root", ["/srv/www/shop/current", "/var/www/shop", None])
def test_a_virtualhost_with_cutovers_rules_and_another_document_root_is_refused(tmp_path, root):
    """/srv/www a symlink to /var/www: Apache maps every URL to /srv/www/shop/current/..., which the
    rules never pin (torn answers again), and setup would take the VirtualHost for another site's."""
    document_root = f"    DocumentRoot {root}\n" if root else ""
    conf = tree(tmp_path, {"httpd.conf": f"<VirtualHost *:80>\n{document_root}"
                                         "    Include /var/www/shop/.cutover/apache.conf\n</VirtualHost>\n"})  # fmt: skip
    with pytest.raises(Refused) as refused:
        rendered(conf)
    assert str(refused.value) == (
        f"the VirtualHost at {conf}/httpd.conf:1 includes Cutover's rules, but its DocumentRoot {root or '(none)'} is "
        "not /var/www/shop/current or a folder in it: none of its requests would be pinned"
    )
    # the server config's own, as a VirtualHost without one has it, with a trailing slash
    tree(tmp_path, {"httpd.conf": "DocumentRoot /var/www/shop/current/\n<VirtualHost *:80>\n"
                                  "    Include /var/www/shop/.cutover/apache.conf\n</VirtualHost>\n"})  # fmt: skip
    assert blocks(rendered(conf)) == []
