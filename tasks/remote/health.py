"""The health check on the server: every URL answers the expected status (and text), from the
expected release when Cutover's Apache rules say which one answered, and is not PHP's source.

Only http and https URLs are fetched, and every field is checked here, since the sudo helper
runs this as root for a caller it does not trust.
"""

import re
import time

from . import limits
from .protocol import Refused

RELEASE_HEADER = "X-Cutover-Release"  # set by Cutover's Apache rules for loopback clients
DENIED = (401, 403, 404)  # what a protected URL may answer


def _http_urls(urls, what):
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise Refused("%s must be a list of URLs" % what)
    for url in urls:
        if not url.lower().startswith(("http://", "https://")) or any(c.isspace() or ord(c) < 32 for c in url):
            raise Refused("health url %r is not an http:// or https:// URL" % url[:80])
    return urls


def checked(verify):
    """verify, with every field of the right type and bounds; Refused otherwise."""
    if not isinstance(verify, dict):
        raise Refused("health settings must be a mapping")
    urls = _http_urls(verify.get("urls"), "health urls")
    if not urls:
        raise Refused("health urls must not be empty")
    protected = _http_urls(verify.get("protected") or [], "protected urls")
    text = verify.get("expect_text")
    if text is not None and not isinstance(text, str):
        raise Refused("health expect_text must be text")
    status = verify.get("expect_status")
    if isinstance(status, bool) or not isinstance(status, int) or not limits.within(status, limits.EXPECT_STATUS):
        raise Refused("health expect_status must be a status code from 100 to 599")
    retries = verify.get("retries")
    if isinstance(retries, bool) or not isinstance(retries, int) or not limits.within(retries, limits.HEALTH_RETRIES):
        raise Refused("health retries must be a whole number from 0 to 100")
    if not limits.within(verify.get("timeout"), limits.HEALTH_TIMEOUT):
        raise Refused("health timeout must be from 0.5 to 120 seconds")
    return {"urls": urls, "expect_status": status, "expect_text": text, "retries": retries,
            "timeout": verify["timeout"], "protected": protected}


def _get(url, timeout):
    """(status, release header, start of the body) of a GET."""
    status, headers, body = get(url, timeout)
    return status, headers.get(RELEASE_HEADER), body


def _origin(url):
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _same_origin_redirects():
    """A redirect handler that follows a redirect only within the URL's own scheme, host and port.
    The sudo helper fetches as root a URL the deploy user's site answers: a redirect elsewhere
    would have root ask any address of the site's choosing (one a firewall lets only root reach)."""
    import urllib.error
    import urllib.request

    class SameOrigin(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if _origin(newurl) != _origin(req.full_url):
                raise urllib.error.URLError(
                    "redirected to %s, another origin: not followed (health urls must answer themselves, or "
                    "redirect within their own scheme, host and port)" % newurl[:200])
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return SameOrigin()


def get(url, timeout):
    """(status, headers, start of the body) of a GET."""
    import urllib.request  # only the steps that fetch a URL pay for this import

    # Only the http and https handlers: a file://, ftp:// or data: URL, given or redirected
    # to, finds no opener ("unknown url type"); a redirect is followed within its origin only.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(), _same_origin_redirects(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.HTTPDefaultErrorHandler()):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"Cache-Control": "no-cache", "Connection": "close"})
    try:
        with opener.open(request, timeout=timeout) as r:
            return r.status, r.headers, r.read(limits.HEALTH_BODY_READ).decode("utf-8", "replace")
    except urllib.request.HTTPError as exc:
        return exc.code, exc.headers, exc.read(limits.HEALTH_BODY_READ).decode("utf-8", "replace")


PHP_NEAR = 1024  # characters at the start of an answer where "<?php" means PHP's source
PHP_NOT_RUNNING = ("PHP is not running for it (mod_php not enabled, or no handler for .php files: "
                   "a2enmod php8.2, or a SetHandler to php-fpm through proxy_fcgi)")


PHP_URL = re.compile(r"\.(php\d*|pht|phtml|phar|phps|inc)$", re.I)  # what a PHP handler takes, by name
PHP_TAG = re.compile(r"<\?(php\b|=|\s)", re.I)  # <?php, <?= and a short open tag (not <?xml)


def php_source(url, headers, body):
    """Why this answer is a PHP file's source rather than what PHP prints, or None: Apache without
    PHP serves index.php as it is (a 200, the site's secrets included), with no Content-Type where
    its mime.types names none for .php (Debian's), or one that says PHP."""
    import urllib.parse

    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if "php" in ctype:  # application/x-httpd-php*, text/x-php ...: PHP's own output is never typed so
        return "served as %s" % ctype
    start = body.lstrip("\ufeff \t\r\n")
    tag = PHP_TAG.match(start)
    if tag:
        return "the answer starts with %s" % tag.group(0).strip()
    if "<?php" in body[:PHP_NEAR].lower():
        return "<?php near its start"
    anywhere = PHP_TAG.search(body)
    if not ctype and anywhere:  # PHP gives what it prints a type (text/html unless told otherwise)
        return "%s with no content type" % anywhere.group(0).strip()
    extension = PHP_URL.search(urllib.parse.urlsplit(url).path)
    if extension and ctype in ("", "text/plain") and "<?" in body:
        return "a .%s URL answered as %s" % (extension.group(1).lower(), ctype or "no content type")
    return None


def _answer_problem(verify, url, release_id, text):
    """What is wrong with one health URL's answer, or None."""
    status, headers, body = get(url, verify["timeout"])
    served_by = headers.get(RELEASE_HEADER)
    if status != verify["expect_status"]:
        hint = _backend_hint(status, headers, body)
        return "%s answered %d, expected %d%s" % (url, status, verify["expect_status"], hint)
    source = php_source(url, headers, body)
    if source:
        return "%s answered PHP source (%s): %s" % (url, source, PHP_NOT_RUNNING)
    if served_by and served_by != release_id:
        return "%s answered from release %s, not %s" % (url, served_by, release_id)
    if text and text not in body:
        return "%s answered %d without the text %r" % (url, status, text)
    return None


def _backend_hint(status, headers, body):
    """For Apache's own 503 (no Retry-After, so not a maintenance page): what a PHP site behind
    proxy_fcgi gets when php-fpm does not answer."""
    if status == 503 and not headers.get("Retry-After") and "<title>503 Service Unavailable</title>" in body:
        return (" (Apache's own 503: with PHP behind proxy_fcgi, php-fpm does not answer; is it running, and is "
                "its socket the one the SetHandler names?)")
    return ""


def problem(verify, release_id):
    """None when every URL answers as expected; else the last problem seen, after the retries."""
    verify = checked(verify)
    found = None
    text = verify["expect_text"]
    if text:
        text = text.replace("{release}", release_id)
    for attempt in range(verify["retries"] + 1):
        if attempt:
            time.sleep(limits.HEALTH_RETRY_DELAY)
        found = None
        for url in verify["urls"]:
            try:
                found = _answer_problem(verify, url, release_id, text)
            except (OSError, ValueError) as exc:
                found = "%s: %s" % (url, getattr(exc, "reason", exc))
            if found:
                break
        if found is None:
            found = denied_problem(verify["protected"], verify["timeout"])
        if found is None:
            return None
    return found


def denied_problem(urls, timeout):
    """None when every protected URL answers 401, 403 or 404; else the first that does not."""
    for url in urls:
        status = status_of(url, timeout)
        if status not in DENIED:
            return "%s answered %s: it is protected (protected:) and must answer 401, 403 or 404" % (url, status)
    return None


def status_of(url, timeout):
    """The status of a GET, or the error that prevented one (as text)."""
    try:
        return _get(url, timeout)[0]
    except (OSError, ValueError) as exc:
        return "no answer (%s)" % getattr(exc, "reason", exc)


def release_of(url, timeout):
    """The release Cutover's Apache rules say answered url, or None (the rules are not active)."""
    try:
        return _get(url, timeout)[1]
    except (OSError, ValueError):
        return None
