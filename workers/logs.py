"""Logging set-up with a redaction filter: a second line of defence for secrets."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

REDACTED = "***"


class RedactFilter(logging.Filter):
    """Replaces every given secret in a record's final message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, REDACTED)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self._secrets:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        return True


def install_redaction(secrets: Iterable[str]) -> None:
    """Add the redaction filter to every handler of the root logger (present and future)."""
    flt = RedactFilter(list(secrets))
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(flt)
    _FILTERS.append(flt)


_FILTERS: list[RedactFilter] = []


def setup_logging(
    level: str = "INFO", secrets: Iterable[str] = (), log_file: Path | None = None
) -> None:
    """Log to stderr (or `log_file`) with timestamps; quiet HTTP libraries; redact secrets."""
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction(secrets)
