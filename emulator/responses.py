"""HTTP answers the emulator gives: JSON errors, edge faults, fake files, a dropped connection."""

from __future__ import annotations

import contextvars
import logging
import math
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from emulator.faults import EdgeFault
from emulator.tasks import dump_json

JSON = "application/json"
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
FILE_BODIES: dict[str, tuple[str, bytes]] = {
    "png": ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01"),
    "mp4": ("video/mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"),
    "mp3": ("audio/mpeg", b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00"),
    "jpeg": ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\xff\xd9"),
    "glb": ("model/gltf-binary", b"glTF\x02\x00\x00\x00\x14\x00\x00\x00"),
}
"""A few plausible bytes per extension an output URL can end in."""

_dropping: contextvars.ContextVar[bool] = contextvars.ContextVar("dropping", default=False)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer."""
    return Response(dump_json(body), status_code=status, media_type=JSON, headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """PiAPI's error shape: `{"code": <http status>, "message": ...}`."""
    return json_response({"code": status, "message": message}, status, headers)


GENERIC_FAILURE = "failed to do request"
"""PiAPI's top-level message when the real reason is only inside `data`."""


def refusal(
    status: int, reason: str, message: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """A refused create: `message` (default: the reason itself) and the reason again where
    PiAPI puts it, in `data.error` and `data.logs` (REFERENCE.md §4)."""
    return json_response({
        "code": status,
        "data": {
            "logs": [reason],
            "error": {"code": status, "raw_message": reason, "message": reason,
                      "detail": None},
        },
        "message": reason if message is None else message,
    }, status, headers)


def rate_limited(wait_s: float, message: str = "rate limit exceeded") -> Response:
    """429 with Retry-After in whole seconds (at least 1) and the exact wait beside it."""
    wait_ms = math.ceil(wait_s * 1000)  # round up: retrying at either value must succeed
    return error(429, message, {
        "Retry-After": str(max(1, math.ceil(wait_ms / 1000))),
        "x-ratelimit-reset-after": f"{wait_ms / 1000:.3f}",
    })


def fault_response(fault: EdgeFault) -> Response:
    """The answer for an injected edge fault: Cloudflare-like HTML or a JSON error."""
    if fault.status == 429:
        return error(429, "too many requests", {"Retry-After": str(fault.retry_after_s or 1)})
    if fault.html:
        reason = _REASONS.get(fault.status, "Error")
        html = (
            f"<html>\r\n<head><title>{fault.status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{fault.status} {reason}</h1></center>\r\n"
            "<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
        )
        return Response(html, status_code=fault.status, media_type="text/html")
    return error(fault.status, "internal error")


class DroppedResponse(Response):
    """Starts a 200 response, then closes the connection without a body.

    The client sees a protocol error after its request arrived: an ambiguous create.
    """

    def __init__(self) -> None:
        super().__init__(b"", media_type=JSON)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the status line and headers promising a body that never comes."""
        _dropping.set(True)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", JSON.encode()), (b"content-length", b"1024")],
        })
        # Returning here makes uvicorn close the transport mid-response.


class _IntentionalDropFilter(logging.Filter):
    """Silences uvicorn's complaint about the responses this emulator drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_dropping.get() and "without completing response" in record.getMessage())


def install_drop_log_filter() -> None:
    """Add the filter to uvicorn's error logger once."""
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _IntentionalDropFilter) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_IntentionalDropFilter())
