"""Who may read the run page, its JSON and /metrics: anyone on a loopback bind; elsewhere
only with the web token (Bearer or `?token=`) or basic auth. The webhook routes keep their
own per-job checks and are never behind this."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PREFIXES = ("/hooks/", "/healthz")
"""Paths served without the web credentials: PiAPI's webhook calls and the health check."""


@dataclass(frozen=True)
class WebAuth:
    """The credentials the page asks for (neither set: none asked)."""

    token: str | None = None
    basic: str | None = None
    """`user:password`."""

    @property
    def required(self) -> bool:
        return bool(self.token or self.basic)

    def allows(self, headers: Mapping[str, str], query: str) -> bool:
        """Whether a request with these headers (lower-case names) and query string may
        read the page; compared in constant time."""
        if not self.required:
            return True
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if self.token:
            offered = [value.strip()] if scheme.lower() == "bearer" else []
            offered += parse_qs(query).get("token", [])
            if any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered):
                return True
        if self.basic and scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self.basic.encode())
        return False


def bind_problem(host: str, auth: WebAuth) -> str | None:
    """Why the page may not be served on `host` with these credentials (None: it may)."""
    if auth.basic is not None and ":" not in auth.basic:
        return "PIAPI_BULK_WEB_BASIC_AUTH must be user:password"
    if host in LOOPBACK or auth.required:
        return None
    return (f"refusing to serve the run page on {host} without PIAPI_BULK_WEB_TOKEN or "
            "PIAPI_BULK_WEB_BASIC_AUTH=user:password")


class RequireAuth:
    """ASGI middleware: every HTTP path except OPEN_PREFIXES needs `auth`."""

    def __init__(self, app: ASGIApp, auth: WebAuth) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.required or str(
                scope.get("path", "")).startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.auth.allows(headers, scope.get("query_string", b"").decode("latin-1")):
            await self.app(scope, receive, send)
            return
        challenge = 'Basic realm="piapi-bulk"' if self.auth.basic else "Bearer"
        response = PlainTextResponse("authentication required", status_code=401,
                                     headers={"www-authenticate": challenge})
        await response(scope, receive, send)
