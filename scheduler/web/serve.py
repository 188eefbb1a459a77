"""Starting the server for `piapi-bulk web` and `piapi-bulk webhook` (the same app): the
engines, the credentials checked against the bind address, the fleet's Redis, uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
import uvicorn

from scheduler.web.app import WebConfig, create_web_app
from scheduler.web.auth import WebAuth, bind_problem
from scheduler.webhook_server import webhook_routes
from workers.db import create_tables, make_engine, make_read_engine
from workers.fleet import Fleet
from workers.settings import ConfigError, Settings
from workers.webhook_signing import WebhookSigner

logger = logging.getLogger(__name__)


def web_auth(settings: Settings) -> WebAuth:
    """The page's credentials from the settings."""
    token = settings.web_token.get_secret_value() if settings.web_token else None
    basic = settings.web_basic_auth.get_secret_value() if settings.web_basic_auth else None
    return WebAuth(token=token or None, basic=basic or None)


def web_secrets(settings: Settings) -> list[str]:
    """The page's credentials, for the log redaction filter."""
    auth = web_auth(settings)
    return [s for s in (auth.token, auth.basic) if s]


def receiver_signer(settings: Settings) -> WebhookSigner:
    """The signer `piapi-bulk webhook` checks calls with (it needs only the secret)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if len(secret) < 16:
        raise ConfigError("PIAPI_BULK_WEBHOOK_SECRET must be set (16 characters or more)")
    return WebhookSigner(settings.webhook_url or "http://127.0.0.1/hooks", secret)


class FleetLookup:
    """The fleet's Redis, found again at each call (a `run`'s private Redis comes and goes:
    `redis_url` reads it from the run folder)."""

    def __init__(self, redis_url: Callable[[], str | None]) -> None:
        self.redis_url = redis_url
        self._fleet: tuple[str, Fleet] | None = None

    def __call__(self) -> Fleet | None:
        url = self.redis_url()
        if not url:
            return None
        if self._fleet is None or self._fleet[0] != url:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            self._fleet = (url, Fleet(client))
        return self._fleet[1]


def serve(settings: Settings, host: str, port: int, redis_url: Callable[[], str | None], *,
          hooks: bool) -> None:
    """Serve the app until stopped. `hooks`: started as `piapi-bulk webhook` (the receiver
    is required; the page is left out, with a warning, where its credentials are missing).
    As `piapi-bulk web`, missing credentials off loopback are a usage error, and the
    receiver is mounted when webhooks are configured."""
    signer = receiver_signer(settings) if hooks else settings.webhook_signer()
    auth = web_auth(settings)
    problem = bind_problem(host, auth)
    if problem and not hooks:
        raise ConfigError(problem)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    lookup = FleetLookup(redis_url)
    routes = webhook_routes(engine, signer, lookup()) if signer is not None else None
    cfg = None
    if problem:
        logger.warning("serving only the webhook receiver on %s: %s", host, problem)
    else:
        cfg = WebConfig(reader=make_read_engine(settings.database_url), fleet=lookup,
                        flower_url=settings.flower_url, auth=auth)
    served = ["the run page at /, its JSON at /api/batches, /metrics"] if cfg else []
    if routes is not None:
        served.append("webhooks at /hooks/")
    logger.info("serving %s on http://%s:%d", " and ".join(served), host, port)
    uvicorn.run(create_web_app(cfg, routes), host=host, port=port, log_level="warning",
                access_log=False)
