"""A small HTTP load generator for the lab: keeps requests flowing and records every answer.

Used by the tests and the benchmarks to prove that a deploy or rollback fails no request and
that every response is one complete release. Loopback targets only; bounded in time and count.
"""

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Sample:
    path: str
    status: int  # 0 when the request failed (connection refused, reset, timeout)
    body: bytes
    latency: float
    at: float
    error: str = ""


@dataclass
class LoadGen:
    """Threads that GET `paths` from `url` in a loop until stop() (or max_seconds/max_requests)."""

    url: str
    paths: tuple = ("/",)
    threads: int = 4
    max_seconds: float = 120
    max_requests: int = 2_000_000
    new_connections: bool = False  # one new TCP connection per request (Connection: close)
    source: str | None = None  # the loopback address requests come from (127.0.0.2: a visitor, not maintenance.allow)
    samples: list = field(default_factory=list)

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.hostname not in ("127.0.0.1", "localhost") and not (parts.hostname or "").startswith("127."):
            raise ValueError(f"the load generator targets loopback only, not {parts.hostname}")
        if self.source is not None and not self.source.startswith("127."):
            raise ValueError(f"the load generator sends from loopback only, not {self.source}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = []
        self._bodies = {}  # identical bodies share one object: a soak keeps millions of samples

    def _work(self):
        deadline = time.monotonic() + self.max_seconds
        conn = None
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.samples) < self.max_requests:
            path = self.paths[i % len(self.paths)]
            i += 1
            t0 = time.monotonic()
            try:
                if conn is None:
                    source = (self.source, 0) if self.source else None
                    conn = http.client.HTTPConnection(self._host, self._port, timeout=10, source_address=source)
                conn.request("GET", path, headers={"Connection": "close"} if self.new_connections else {})
                response = conn.getresponse()
                body = response.read()
                body = self._bodies.setdefault(body, body)
                sample = Sample(path, response.status, body, time.monotonic() - t0, t0)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                sample = Sample(path, 0, b"", time.monotonic() - t0, t0, f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.samples.append(sample)
        if conn is not None:
            conn.close()

    def start(self):
        for _ in range(self.threads):
            worker = threading.Thread(target=self._work, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self):
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what was seen -----------------------------------------------------------------------

    def failures(self):
        """Samples that are not a 200 (connection errors included)."""
        return [s for s in self.samples if s.status != 200]

    def unknown(self, known):
        """Samples whose body is not exactly one known version of that path (known: {path: {label: bytes}})."""
        out = []
        for s in self.samples:
            if s.status == 200 and s.body not in known.get(s.path, {}).values():
                out.append(s)
        return out

    def labels(self, known):
        """How many responses came from each release label."""
        seen = Counter()
        for s in self.samples:
            for label, body in known.get(s.path, {}).items():
                if s.body == body:
                    seen[label] += 1
        return seen

    def worst_latency(self):
        return max((s.latency for s in self.samples), default=0.0)
