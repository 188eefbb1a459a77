"""Local files named in a manifest, checked at ingest: resolved against the manifest's folder
(or given as `file://` URLs), then present, readable, at most 10 MB, and an image, video or
audio file by its content (magic bytes, read with `filetype`), before anything is paid for.

A file that passes is stored in the row's input as its absolute path; the worker uploads
it just before the row's create (`workers.uploads`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from workers.piapi import MAX_UPLOAD_BYTES
from workers.uploads import HEAD_BYTES, media_kind


class LocalFileProblem(ValueError):
    """Why a local file cannot be used (one line, for the row's reason)."""


def to_path(value: str, base: Path) -> Path:
    """The file a manifest cell names: a `file://` URL (host empty or localhost), or a path,
    relative to `base` (the manifest's folder) unless absolute; `~` is the home folder."""
    text = value.strip()
    if text[:5].lower() == "file:":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise LocalFileProblem(f"{value!r} names a file on another host ({parts.netloc})")
        text = unquote(parts.path)
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def check_file(path: Path, shown: str) -> str:
    """The media kind of the file at `path`; LocalFileProblem when it cannot be uploaded
    (`shown` is how the manifest named it, for the reason)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise LocalFileProblem(f"local file {shown} is not a file")
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        raise LocalFileProblem(f"local file {shown}: no such file") from None
    except OSError as exc:
        raise LocalFileProblem(f"cannot read local file {shown}: "
                               f"{exc.strerror or exc}") from None
    if size > MAX_UPLOAD_BYTES:
        raise LocalFileProblem(f"local file {shown} is {size / 1e6:.1f} MB; PiAPI uploads "
                               "take at most 10 MB")
    kind = media_kind(head)
    if kind is None:
        raise LocalFileProblem(f"local file {shown} is not an image, video or audio file "
                               "(by its content)")
    return kind


def content_digest(path: str) -> str:
    """SHA-256 (hex) of the file's bytes: what makes a row with a local file a twin of
    another (`scheduler.ingest.fingerprint`), since its path says nothing of its content.
    LocalFileProblem when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise LocalFileProblem(f"cannot read local file {path}: {exc.strerror or exc}") from None


class LocalFiles:
    """The resolver ingest gives validation: a cell naming a local file -> its absolute
    path, checked (a `LocalFileProblem` when it cannot be used)."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()

    def __call__(self, value: str) -> str:
        # A long path keeps its end: the file's name is what the reader needs.
        shown = value if len(value) <= 80 else "..." + value[-77:]
        path = to_path(value, self.base)
        check_file(path, shown)
        return os.path.abspath(path)
