"""A visitor of a lab site over HTTP, as a browser would be: cookies kept, forms read from the page and
sent back with their hidden fields, files uploaded as multipart/form-data. Loopback only."""

import html
import http.cookiejar
import re
import struct
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass

TIMEOUT = 60  # seconds per request: an app's first page after an install builds its caches


@dataclass
class Page:
    status: int
    url: str  # after redirects
    text: str


class Visitor:
    """One browser session on the site at `base` (http://127.0.0.x:PORT)."""

    def __init__(self, base):
        host = urllib.parse.urlsplit(base).hostname or ""
        if not host.startswith("127."):
            raise ValueError(f"a lab visitor visits loopback only, not {host}")
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path, data=None, headers=None):
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=TIMEOUT) as r:
                return Page(r.status, r.geturl(), r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            return Page(e.code, e.geturl(), e.read().decode("utf-8", "replace"))

    def get(self, path):
        return self.request(path)

    def post(self, path, fields):
        body = urllib.parse.urlencode(fields).encode()
        return self.request(path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def post_files(self, path, fields, files):
        """A multipart/form-data POST: fields {name: text}, files {name: (filename, bytes, content type)}."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        for name, (filename, data, kind) in files.items():
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            parts.append(f"{head}Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def form(page, name):
    """The hidden fields of the form with that id or name on the page (what a browser sends back)."""
    found = re.search(rf'<form[^>]*\b(?:id|name)="{re.escape(name)}".*?</form>', page.text, re.S)
    if found is None:
        raise AssertionError(f"no form {name!r} on {page.url} ({page.status})")
    fields = {}
    for tag in re.findall(r"<input\b[^>]*>", found.group(0)):
        kind = re.search(r'\btype="([^"]*)"', tag)
        field = re.search(r'\bname="([^"]*)"', tag)
        value = re.search(r'\bvalue="([^"]*)"', tag)
        if field and (kind is None or kind.group(1) == "hidden"):
            fields[html.unescape(field.group(1))] = html.unescape(value.group(1)) if value else ""
    return fields


def png(rgb=(255, 0, 0), size=2):
    """A small valid PNG of one colour: an image upload that apps' file checks accept."""
    row = b"\x00" + bytes(rgb) * size

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")
    )
