"""The steps of a deploy and a rollback, one module each; tasks/deploy.py calls them in order."""

from ..remote import limits

MARGIN = 30  # seconds added to a step's timeout for SSH, process start and bookkeeping


def health_seconds(health, urls=None):
    """The longest a health check with these settings can take, retries included."""
    count = len(urls if urls is not None else health.urls)
    return (health.retries + 1) * count * (health.timeout + limits.HEALTH_RETRY_DELAY)


def health_args(health, urls=None):
    """The health settings as the server's health check takes them."""
    return {
        "urls": list(urls if urls is not None else health.urls),
        "expect_status": health.expect_status,
        "expect_text": health.expect_text,
        "retries": health.retries,
        "timeout": health.timeout,
    }
