"""Builds a process's working parts from the settings: engine, Redis, rate limiter, client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from workers.db import create_tables, make_engine
from workers.durations import DurationCache
from workers.fleet import Fleet
from workers.keys import RATE_BUCKET_KEY
from workers.metering import RequestMeter, metered_transport
from workers.piapi import PiAPIClient
from workers.ratelimit import Budget
from workers.settings import Settings
from workers.work import WorkerContext


def build_client(
    settings: Settings,
    meter: RequestMeter | None = None,
    before_request: Callable[[str], None] | None = None,
) -> PiAPIClient:
    """The PiAPI client for this process (one connection pool, shared by its threads), with
    the configured timeouts; its requests counted by `meter` when given, and each request's
    kind passed to `before_request` before it is sent."""
    return PiAPIClient(
        settings.base_url,
        settings.require_api_key(),
        timeout=httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                              write=settings.write_timeout_s, pool=settings.pool_timeout_s),
        before_request=before_request,
        upload_url=settings.upload_url,
        transport=metered_transport(meter) if meter is not None else None,
    )


def build_budget(settings: Settings, client: redis.Redis, fleet: Fleet) -> Budget:
    """The fleet-wide request budget: the configured rpm, lowered by AIMD after 429s."""
    return Budget(client, RATE_BUCKET_KEY, settings.rpm, override=fleet.rate)


def build_context(settings: Settings) -> WorkerContext:
    """Everything a worker process needs to run `submit` and `poll`."""
    engine = make_engine(settings.database_url)
    create_tables(engine)
    redis_client = redis.Redis.from_url(settings.require_redis_url())
    fleet = Fleet(redis_client)
    meter = RequestMeter()
    return WorkerContext(
        engine=engine,
        client=build_client(settings, meter),
        meter=meter,
        lease_s=settings.lease_s,
        max_tries=settings.max_tries,
        budget=build_budget(settings, redis_client, fleet),
        fleet=fleet,
        durations=DurationCache(engine),
        webhooks=settings.webhook_signer(),
        reconcile_timeout_s=settings.reconcile_timeout_s,
        on_stuck=settings.on_stuck,
        handoff=settings.handoff,
        poll_gap=settings.poll_gap,
        http_pool=ThreadPoolExecutor(max_workers=settings.http_concurrency,
                                     thread_name_prefix="piapi-http"),
    )


def lazy_context(settings: Settings) -> Callable[[], WorkerContext]:
    """A function that builds the context on first use (after any fork) and reuses it."""
    lock = threading.Lock()
    holder: list[WorkerContext] = []

    def get() -> WorkerContext:
        if not holder:
            with lock:
                if not holder:
                    holder.append(build_context(settings))
        return holder[0]

    return get
