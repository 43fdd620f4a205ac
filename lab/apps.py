"""Real PHP applications for the lab, from Debian's packages: MediaWiki (SQLite) and WordPress
(MariaDB), each copied into a build directory the way a site owner keeps their own copy, and
driven as their users drive them: the installer, an edit, an upload.

Debian installs each app for one site per machine, with symlinks from the code into /etc and
/var/lib (the config, the uploads, the extensions) and into its shared libraries. A site deployed
with Cutover keeps its code in the build and its data in shared/ on the server, so the copy
resolves or replaces every such symlink: the build holds no symlink at all.
"""

import os
import re
import shlex
import shutil
import xmlrpc.client
from pathlib import Path

from .visitor import Visitor, form

MEDIAWIKI = Path("/usr/share/mediawiki")
WORDPRESS = Path("/usr/share/wordpress")


def _self_contained(dest):
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise RuntimeError(f"lab: {os.path.join(root, name)} is a symlink; a site's build holds none")


# --- MediaWiki on SQLite --------------------------------------------------------------------------

# The site's settings: images/ (uploads) and data/ (the SQLite databases, which MediaWiki's installer
# would put in <deploy_to>/data, outside shared/ and so outside backups) are shared and writable by
# the web server; data/ is never served.
MEDIAWIKI_DATABASES = ("wiki", "wiki_jobqueue", "wiki_l10n_cache", "wikicache")
MEDIAWIKI_SETTINGS = {
    "shared": ["images", "data"],
    "writable": ["images", "data"],
    "protected": ["/data/wiki.sqlite", "/includes/Setup.php", "/maintenance/update.php"],
    "smoke": {"commands": ["php -l index.php", "test ! -e LocalSettings.php || php -l LocalSettings.php"]},
    "migrate": {"command": "php maintenance/update.php --quick", "user": "www-data"},
    "backups": {
        "databases": [{"name": n, "kind": "sqlite", "path": f"shared/data/{n}.sqlite"} for n in MEDIAWIKI_DATABASES]
    },
}
# in its VirtualHost (the lab's AllowOverride All for MediaWiki's own .htaccess files)
MEDIAWIKI_SITE_CONF = """
<Directory "@@deploy_to@@/current/data">
    Require all denied
</Directory>
<Directory "@@deploy_to@@/current/images">
    php_admin_flag engine off
</Directory>
"""


def mediawiki_build(dest):
    """A site's own copy of Debian's MediaWiki at dest: the code, no LocalSettings.php (the installer
    writes it, the site then keeps it), no images/ and config/ (the server's data), the bundled
    extensions in extensions/ as upstream ships them (Debian keeps them in extensions-core/,
    linked one by one from /var/lib/mediawiki/extensions)."""
    dest = Path(dest)
    shutil.copytree(MEDIAWIKI, dest, symlinks=True)
    for name in ("LocalSettings.php", "config", "images", "extensions"):
        (dest / name).unlink()
    (dest / "extensions-core").rename(dest / "extensions")
    _self_contained(dest)
    return dest


def mediawiki_install(deploy_to, url, password, name="Cutover Wiki", admin="Admin"):
    """The installer, as `fab run` runs it in the live release: the databases in shared/data, and
    LocalSettings.php written there too (the one place the web server's user may write) for the
    site to take into its build."""
    data = f"{deploy_to}/shared/data"
    return shlex.join(
        ["php", "maintenance/install.php", "--dbtype=sqlite", f"--dbpath={data}", "--dbname=wiki", f"--server={url}",
         "--scriptpath=", "--lang=en", f"--pass={password}", f"--confpath={data}", name, admin]
    )  # fmt: skip


def mediawiki_release(build, installed, label, extensions=()):
    """The site's release `label`: the installer's LocalSettings.php with the site's own lines (uploads
    on, its logo, its extensions, a mark of the release in every page), and its logo."""
    own = [
        "",
        "# This site's own settings.",
        "$wgEnableUploads = true;",
        "$wgLogos = [ '1x' => \"$wgResourceBasePath/site/logo.svg\" ];",
        *(f"wfLoadExtension( '{e}' );" for e in extensions),
        "$wgHooks['BeforePageDisplay'][] = static function ( $out ) {",
        f"\t$out->addMeta( 'site-release', '{label}' );",
        "};",
    ]
    (Path(build) / "LocalSettings.php").write_text(installed.rstrip("\n") + "\n" + "\n".join(own) + "\n")
    (Path(build) / "site").mkdir(exist_ok=True)
    logo = f'<svg xmlns="http://www.w3.org/2000/svg" width="135" height="135"><text y="70">{label}</text></svg>\n'
    (Path(build) / "site" / "logo.svg").write_text(logo)


def mediawiki_edit(visitor, title, text):
    """Save a page through its edit form, as a visitor (anonymous editing is on by default)."""
    page = visitor.get(f"/index.php?title={title}&action=edit")
    fields = dict(form(page, "editform"), wpTextbox1=text, wpSummary="edited in the lab", wpSave="Save page")
    return visitor.post(f"/index.php?title={title}&action=submit", fields)


def mediawiki_login(visitor, user, password):
    """Log in through Special:UserLogin; the visitor keeps the session's cookies."""
    page = visitor.get("/index.php?title=Special:UserLogin")
    fields = dict(form(page, "userlogin"), wpName=user, wpPassword=password, wploginattempt="Log in")
    return visitor.post("/index.php?title=Special:UserLogin", fields)


def mediawiki_upload(visitor, name, data, kind="image/png"):
    """Upload a file through Special:Upload (a logged-in visitor)."""
    page = visitor.get("/index.php?title=Special:Upload")
    fields = dict(form(page, "mw-upload-form"), wpDestFile=name, wpUploadDescription="uploaded in the lab",
                  wpIgnoreWarning="1", wpUpload="Upload file")  # fmt: skip
    return visitor.post_files("/index.php?title=Special:Upload", fields, {"wpUploadFile": (name, data, kind)})


def mediawiki_image_path(name):
    """Where MediaWiki keeps an upload under images/ (its hashed directories)."""
    import hashlib

    digest = hashlib.md5(name.encode()).hexdigest()
    return f"{digest[0]}/{digest[:2]}/{name}"


# --- WordPress on MariaDB -------------------------------------------------------------------------

WORDPRESS_SETTINGS = {
    "shared": ["wp-content/uploads", "wp-secrets.php"],
    "writable": ["wp-content/uploads"],
    "protected": ["/wp-secrets.php", "/scripts/migrate.php"],
    "smoke": {"commands": ["php -l wp-config.php", "php -l scripts/migrate.php"]},
    "migrate": {"command": "php scripts/migrate.php", "user": "www-data"},
}
WORDPRESS_SITE_CONF = """
<Files "wp-secrets.php">
    Require all denied
</Files>
<Directory "@@deploy_to@@/current/wp-content/uploads">
    <FilesMatch "\\.php$">
        SetHandler none
    </FilesMatch>
</Directory>
"""

# WordPress's rewrite rules for pretty permalinks, as its own settings page writes them into
# .htaccess (Debian links an all-comments file from /etc/wordpress instead).
WORDPRESS_HTACCESS = """\
# BEGIN WordPress
<IfModule mod_rewrite.c>
RewriteEngine On
RewriteBase /
RewriteRule ^index\\.php$ - [L]
RewriteCond %{REQUEST_FILENAME} !-f
RewriteCond %{REQUEST_FILENAME} !-d
RewriteRule . /index.php [L]
</IfModule>
# END WordPress
"""

# The site's wp-config.php: code and settings in the build; the secrets (the database's password,
# keys and salts) in a file of the server's, shared/wp-secrets.php, never in the build.
WORDPRESS_CONFIG = """\
<?php
// This site's settings. The secrets (database credentials, keys and salts) are the server's:
// wp-secrets.php, a shared file that no deploy overwrites.
require __DIR__ . '/wp-secrets.php';

$table_prefix = 'wp_';

define( 'WP_DEBUG', false );
// Code changes arrive by deploy, never through the admin pages.
define( 'DISALLOW_FILE_MODS', true );
define( 'AUTOMATIC_UPDATER_DISABLED', true );

if ( ! defined( 'ABSPATH' ) ) {
	define( 'ABSPATH', __DIR__ . '/' );
}
require_once ABSPATH . 'wp-settings.php';
"""

# The site's migration (migrate.command): WordPress's own database upgrade, as wp-admin/upgrade.php
# runs it, then the site's schema changes. Command line only.
WORDPRESS_MIGRATION = """\
<?php
if ( PHP_SAPI !== 'cli' ) {
	http_response_code( 404 );
	exit;
}
define( 'WP_INSTALLING', true );
$_SERVER['HTTP_HOST'] = 'localhost';
require dirname( __DIR__ ) . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
wp_upgrade();
global $wpdb;
foreach ( glob( __DIR__ . '/schema/*.sql' ) as $change ) {
	dbDelta( str_replace( '{prefix}', $wpdb->prefix, file_get_contents( $change ) ) );
	echo 'applied ', basename( $change ), "\\n";
}
echo 'database version ', get_option( 'db_version' ), "\\n";
"""

# a must-use plugin of the site's: the release in every page's head
WORDPRESS_MARK = """\
<?php
add_action( 'wp_head', function () {
	echo '<meta name="site-release" content="@@label@@">', "\\n";
} );
"""


def wordpress_build(dest):
    """A site's own copy of Debian's WordPress at dest: Debian's symlinks to its shared libraries
    (getID3, underscore, cropper, the CA bundle) copied as files, the site's own wp-config.php
    (Debian's reads /etc/wordpress), .htaccess and migration; no uploads (shared)."""
    dest = Path(dest)
    shutil.copytree(WORDPRESS, dest, symlinks=False)
    (dest / ".htaccess").write_text(WORDPRESS_HTACCESS)
    (dest / "wp-config.php").write_text(WORDPRESS_CONFIG)
    (dest / "scripts" / "schema").mkdir(parents=True)
    (dest / "scripts" / "migrate.php").write_text(WORDPRESS_MIGRATION)
    (dest / "scripts" / ".htaccess").write_text("Require all denied\n")
    (dest / "wp-content" / "mu-plugins").mkdir()
    _self_contained(dest)
    return dest


def wordpress_release(build, label, schema=None):
    """The site's release `label`: its mark in every page, its stylesheet, and a schema change for
    its migration (SQL with {prefix} for the table prefix) if given."""
    build = Path(build)
    (build / "wp-content" / "mu-plugins" / "site-release.php").write_text(WORDPRESS_MARK.replace("@@label@@", label))
    style = build / "wp-content" / "themes" / "twentytwentythree" / "style.css"
    text = re.sub(r"\n/\* site release .* \*/\n$", "\n", style.read_text())
    style.write_text(text + f"\n/* site release {label} */\n")
    if schema:
        (build / "scripts" / "schema" / f"{label}.sql").write_text(schema)


def wordpress_secrets(database, user, password, socket, keys):
    """The server's wp-secrets.php: the database over a local socket, and the keys and salts."""
    values = {"DB_NAME": database, "DB_USER": user, "DB_PASSWORD": password, "DB_HOST": f"localhost:{socket}",
              "DB_CHARSET": "utf8mb4", "DB_COLLATE": "", **keys}  # fmt: skip
    quoted = {k: "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for k, v in values.items()}
    return "<?php\n" + "".join(f"define( '{k}', {v} );\n" for k, v in quoted.items())


def wordpress_install(base, title, user, password, email):
    """WordPress's installer (wp-admin/install.php), its form posted as its first visitor does."""
    fields = {"weblog_title": title, "user_name": user, "admin_password": password, "admin_password2": password,
              "pw_weak": "1", "admin_email": email, "blog_public": "0", "language": "", "Submit": "Install WordPress"}  # fmt: skip
    return Visitor(base).post("/wp-admin/install.php?step=2", fields)


def wordpress_client(base, user, password):
    """An author's blogging client (WordPress's XML-RPC API over HTTP): post(title, text) publishes,
    upload(name, bytes, type) puts a file into the media library (wp-content/uploads)."""
    server = xmlrpc.client.ServerProxy(base.rstrip("/") + "/xmlrpc.php")

    class Author:
        @staticmethod
        def post(title, content):
            fields = {"post_title": title, "post_content": content, "post_status": "publish"}
            return int(server.wp.newPost(1, user, password, fields))

        @staticmethod
        def upload(name, data, kind="image/png"):
            return server.wp.uploadFile(
                1, user, password, {"name": name, "type": kind, "bits": xmlrpc.client.Binary(data)}
            )

    return Author
