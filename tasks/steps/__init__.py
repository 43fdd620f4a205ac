"""The steps of a deploy and a rollback, one module each; tasks/deploy.py calls them in order."""

from urllib.parse import urlsplit

from .. import testhooks
from ..remote import limits

MARGIN_S = 30  # seconds added to a step's timeout for SSH, process start and bookkeeping


def margin():
    return testhooks.margin(MARGIN_S)


def health_seconds(health, urls=None):
    """The longest a health check with these settings can take, retries included."""
    count = len(urls if urls is not None else health.urls)
    return (health.retries + 1) * count * (health.timeout + limits.HEALTH_RETRY_DELAY)


def origin(url):
    """scheme://host:port of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def protected_urls(host):
    """host.protected as URLs on the origin of its first health URL."""
    return [origin(host.health.urls[0]) + path for path in host.protected] if host.health.urls else []


def health_args(health, urls=None, protected=()):
    """The health settings as the server's health check takes them."""
    return {
        "protected": list(protected),
        "urls": list(urls if urls is not None else health.urls),
        "expect_status": health.expect_status,
        "expect_text": health.expect_text,
        "retries": health.retries,
        "timeout": health.timeout,
    }
