"""PiAPI's upload endpoint (`POST /api/ephemeral_resource`): files kept in memory, served
back at the URL the answer gives, and recorded in the ledger (time, URL, name, size).

As documented (REFERENCE.md §1): a JSON body `{file_name, file_data: <base64>}` →
`{"code":200,"data":{"url"},"message":"success"}`; at most 10 MB; a plan below Creator gets
403 "Insufficient plan level" (`upload_plan="free"`); bad input 400 "Invalid request
parameters". `upload_fail_first` answers the first N uploads 503 (nothing stored).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

from emulator.clock import format_time

UPLOAD_PATH = "/api/ephemeral_resource"
FILES_PATH = "/uploads"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
BAD_INPUT = "Invalid request parameters"
PLAN_REFUSED = "Insufficient plan level"


@dataclass(frozen=True)
class Upload:
    """One stored file."""

    url: str
    file_name: str
    data: bytes
    at: float

    def ledger_row(self) -> dict[str, Any]:
        """The upload as /_emulator/ledger reports it."""
        return {"url": self.url, "file_name": self.file_name, "size": len(self.data),
                "uploaded_at": format_time(self.at)}


class UploadStore:
    """Uploaded files by id, in upload order; forgotten on reset."""

    def __init__(self) -> None:
        self.files: dict[str, Upload] = {}
        self.seen = 0
        """Upload requests that reached the handler (for `upload_fail_first`)."""

    def reset(self) -> None:
        """Forget every file."""
        self.files = {}
        self.seen = 0

    def add(self, name: str, data: bytes, base_url: str, now: float) -> Upload:
        """Store a file; the Upload with the URL it is served at."""
        file_id = str(uuid.uuid4())
        stored = Upload(f"{base_url}{FILES_PATH}/{file_id}/{name}", name, data, now)
        self.files[file_id] = stored
        return stored

    def ledger(self) -> list[dict[str, Any]]:
        """Every upload, oldest first."""
        return [u.ledger_row() for u in self.files.values()]


def decode_body(raw: bytes) -> tuple[str, bytes] | None:
    """(file name, bytes) of a well-formed upload body (at most MAX_UPLOAD_BYTES), else
    None (answered 400 "Invalid request parameters")."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    name, data = body.get("file_name"), body.get("file_data")
    if not isinstance(name, str) or not name.strip() or "/" in name or not isinstance(data, str):
        return None
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return (name, decoded) if 0 < len(decoded) <= MAX_UPLOAD_BYTES else None
