"""Prometheus `/metrics`: a prometheus-client collector that reads the database and the
fleet's Redis at scrape time (nothing is kept in this process).

From the database, for the newest `data.MAX_BATCHES` batches: `piapi_bulk_rows{batch,model,
state}` (the same counts as `status --json`: for a batch of one model, they are its status's;
only a batch of several models is grouped by model too) and `piapi_bulk_usd_spent{batch}`;
fleet-wide,
`piapi_bulk_in_flight`. From Redis (what every worker process added once per message, see
`workers/metering.py`): `piapi_bulk_requests_total{endpoint,status}`,
`piapi_bulk_429_total{scope}` and the `piapi_bulk_request_seconds{endpoint}` histogram. With
no Redis reachable the Redis metrics are left out rather than failing the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from scheduler.web.data import IN_FLIGHT, ModelCache, newest_batches
from workers.db import transaction
from workers.fleet import Fleet
from workers.halt import get_halt
from workers.models import JOBS

logger = logging.getLogger(__name__)
j = JOBS.c


class RunCollector(Collector):
    """Everything /metrics shows, read when scraped."""

    def __init__(self, engine: Engine, fleet: Callable[[], Fleet | None],
                 models: ModelCache) -> None:
        self.engine, self.fleet, self.models = engine, fleet, models

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._requests()

    def _database(self) -> Iterator[Metric]:
        rows = GaugeMetricFamily("piapi_bulk_rows", "Rows of a batch by model and state.",
                                 labels=["batch", "model", "state"])
        usd = GaugeMetricFamily("piapi_bulk_usd_spent",
                                "US dollars PiAPI charged for a batch so far.", labels=["batch"])
        statuses = newest_batches(self.engine)
        mixed = []
        for st in statuses:
            usd.add_metric([st.id], st.usd)
            models = {m for m, _, _ in self.models.get(self.engine, st)}
            if len(models) == 1:  # the usual case: the status's counts are the model's
                (model,) = models
                for state, n in st.counts.items():
                    if n:
                        rows.add_metric([st.id, model, state], n)
            else:
                mixed.append(st.id)
        with transaction(self.engine) as conn:
            if mixed:
                for batch, model, state, n in conn.execute(
                        select(j.batch_id, j.model, j.state, func.count())
                        .where(j.batch_id.in_(mixed))
                        .group_by(j.batch_id, j.model, j.state)).all():
                    rows.add_metric([str(batch), str(model or "?"), str(state)], int(n))
            flying = conn.execute(select(func.count()).where(j.state.in_(IN_FLIGHT))).scalar_one()
        in_flight = GaugeMetricFamily("piapi_bulk_in_flight",
                                      "Rows with a PiAPI task being created or running.")
        in_flight.add_metric([], int(flying))
        halted = GaugeMetricFamily("piapi_bulk_fleet_halted",
                                   "1 while the fleet creates nothing because PiAPI refused "
                                   "the key or the credit (see piapi-bulk status).")
        halted.add_metric([], 1 if get_halt(self.engine) else 0)
        yield from (rows, usd, in_flight, halted)

    def _requests(self) -> Iterator[Metric]:
        fleet = self.fleet()
        if fleet is None:
            return
        try:
            totals = fleet.request_totals()
        except redis.RedisError as exc:
            logger.info("no request metrics: the fleet's Redis is unreachable (%s)", exc)
            return
        requests = CounterMetricFamily("piapi_bulk_requests",
                                       "PiAPI requests by endpoint and HTTP status (error: "
                                       "no answer).", labels=["endpoint", "status"])
        for (endpoint, status), n in sorted(totals.requests.items()):
            requests.add_metric([endpoint, status], n)
        limited = CounterMetricFamily("piapi_bulk_429", "429 answers from PiAPI by scope.",
                                      labels=["scope"])
        for scope in ("rate", "concurrency"):
            limited.add_metric([scope], totals.limited.get(scope, 0))
        latency = HistogramMetricFamily("piapi_bulk_request_seconds",
                                        "PiAPI request latency (to the response headers).",
                                        labels=["endpoint"])
        for endpoint, buckets in sorted(totals.buckets.items()):
            latency.add_metric([endpoint], buckets, sum_value=totals.sum_s[endpoint])
        yield from (requests, limited, latency)


def registry(engine: Engine, fleet: Callable[[], Fleet | None],
             models: ModelCache) -> CollectorRegistry:
    """A registry holding only the run's collector (no process metrics of this server)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RunCollector(engine, fleet, models))
    return reg
