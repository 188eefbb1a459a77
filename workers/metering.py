"""A worker process's PiAPI requests by endpoint and status, and their latency buckets,
counted in memory by an httpx transport and added to the fleet's Redis totals once per
message (`Tally.report` → `Fleet.report`), for `piapi-bulk web`'s /metrics.

Counting only on the request path: a lock, a bisect and three dict increments; no
formatting, no I/O. The field names the Redis hashes use are built once, at import.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the latency histogram's buckets (seconds); one more bucket, +Inf, above."""
ENDPOINTS = ("create", "get", "cancel", "account", "history", "other")
NO_ANSWER = "error"
"""The status of a request that got no HTTP answer (connect error, timeout, reset)."""
SEP = " "
"""Joins the parts of a Redis hash field: `endpoint status` or `endpoint le`."""
SUM_MS = "sum_ms"
"""The latency hash's field (after the endpoint) holding the summed latency, milliseconds."""
_LE = (*(f"{b:g}" for b in LATENCY_BUCKETS_S), "+Inf")
_BUCKET_FIELDS = {e: tuple(f"{e}{SEP}{le}" for le in _LE) for e in ENDPOINTS}
_SUM_FIELDS = {e: f"{e}{SEP}{SUM_MS}" for e in ENDPOINTS}


def endpoint_of(method: str, path: str) -> str:
    """Which PiAPI endpoint a request is for: create, get, cancel, account, history, other."""
    if path.startswith("/api/v1/task"):
        if method == "POST":
            return "create"
        return "cancel" if method == "DELETE" else "get"
    if path.startswith("/account/"):
        return "account"
    return "history" if path.startswith("/api/open/tasks/histories") else "other"


class RequestMeter:
    """Process-wide request counts since the last `drain`, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._latency: dict[str, int] = {}

    def observe(self, endpoint: str, status: str, seconds: float) -> None:
        """Count one request (called on the request path: counting only)."""
        bucket = _BUCKET_FIELDS[endpoint][bisect.bisect_left(LATENCY_BUCKETS_S, seconds)]
        field = f"{endpoint}{SEP}{status}"
        ms = int(seconds * 1000)
        with self._lock:
            self._counts[field] = self._counts.get(field, 0) + 1
            self._latency[bucket] = self._latency.get(bucket, 0) + 1
            total = _SUM_FIELDS[endpoint]
            self._latency[total] = self._latency.get(total, 0) + ms

    def drain(self) -> tuple[dict[str, int], dict[str, int]]:
        """What was counted since the last drain: (requests by `endpoint status`, latency
        by `endpoint le` and `endpoint sum_ms`); the meter starts again from zero."""
        with self._lock:
            counts, latency = self._counts, self._latency
            self._counts, self._latency = {}, {}
        return counts, latency


class MeteredTransport(httpx.BaseTransport):
    """An httpx transport that counts each request (time to the response's headers) in a
    `RequestMeter` and hands it to the transport underneath."""

    def __init__(self, meter: RequestMeter, inner: httpx.BaseTransport) -> None:
        self.meter, self.inner = meter, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = endpoint_of(request.method, request.url.path)
        start = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.meter.observe(endpoint, NO_ANSWER, time.perf_counter() - start)
            raise
        self.meter.observe(endpoint, str(response.status_code), time.perf_counter() - start)
        return response

    def close(self) -> None:
        self.inner.close()


def metered_transport(meter: RequestMeter, max_connections: int = 100) -> MeteredTransport:
    """httpx's own transport with the client's pool limits, counted by `meter`."""
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return MeteredTransport(meter, httpx.HTTPTransport(limits=limits))


@dataclass(frozen=True)
class RequestTotals:
    """The fleet's request totals as read back from Redis (`Fleet.request_totals`)."""

    requests: dict[tuple[str, str], int]
    """(endpoint, status) -> requests."""
    buckets: dict[str, list[tuple[str, int]]]
    """endpoint -> cumulative (le, count) pairs, +Inf last, as Prometheus wants them."""
    sum_s: dict[str, float]
    limited: dict[str, int]
    """429 answers by scope (`rate`, `concurrency`)."""

    @classmethod
    def parse(cls, requests: Mapping[str, int], latency: Mapping[str, int],
              limited: Mapping[str, int]) -> RequestTotals:
        """From the three hashes' contents (decoded field -> integer)."""
        pairs = {}
        for key, n in requests.items():
            endpoint, _, status = key.partition(SEP)
            pairs[(endpoint, status)] = n
        buckets: dict[str, list[tuple[str, int]]] = {}
        sums: dict[str, float] = {}
        for endpoint in sorted({k.partition(SEP)[0] for k in latency}):
            running = 0
            cumulative = []
            for le in _LE:
                running += latency.get(f"{endpoint}{SEP}{le}", 0)
                cumulative.append((le, running))
            buckets[endpoint] = cumulative
            sums[endpoint] = latency.get(f"{endpoint}{SEP}{SUM_MS}", 0) / 1000.0
        return cls(pairs, buckets, sums, dict(limited))
