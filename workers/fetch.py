"""One output file fetched into a destination folder (any fsspec file system): streamed to a
temporary name in that folder, hashed and counted on the way, then renamed.

    FetchError                 the file was not stored; `kind` and `retryable` say why
    ├── Gone                   404 / 410: PiAPI deleted the output (final)
    ├── Refused                another 4xx (final)
    ├── Transient              5xx, 429, network errors, a body cut short (retry later)
    └── DestinationError       the destination cannot take the file (final for this run)
        └── DiskFull           ENOSPC / EDQUOT
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
import httpx

from workers.output_files import extension

CHUNK_BYTES = 256 * 1024
"""Read and write in pieces this big: memory stays flat whatever the file's size."""
HASH_CHUNK_BYTES = 1024 * 1024
STALE_PART_S = 900.0
"""A temporary `.part` file untouched this long is a killed fetch's (a live one writes to
it all the time): the next start removes it."""
_PART = re.compile(r"(?:^|/)\.[^/]+\.[0-9a-f]{12}\.part$")
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class FetchError(Exception):
    """A file that was not stored; `kind` is what the record says, `retryable` whether
    trying again later may help (both set per subclass: `class X(FetchError, kind=...)`)."""

    kind = "http"
    retryable = False

    def __init_subclass__(cls, kind: str = "http", retryable: bool = False) -> None:
        super().__init_subclass__()
        cls.kind, cls.retryable = kind, retryable


class Gone(FetchError, kind="gone"):
    """The output is no longer on PiAPI's servers."""


class Refused(FetchError, kind="http"):
    """Another 4xx answer: asking again changes nothing."""


class Transient(FetchError, kind="unavailable", retryable=True):
    """A 5xx, a 429, a network error or a body cut short."""


class DestinationError(FetchError, kind="destination"):
    """The destination refused the write (permissions, a missing bucket...)."""


class DiskFull(DestinationError, kind="disk_full"):
    """No space left at the destination."""


class Interrupted(Exception):
    """The fetch was stopped (the run is ending, or its claim was lost)."""


@dataclass(frozen=True)
class Stored:
    """A fetched file, still under its temporary name."""

    file: str
    tmp: str
    bytes: int
    sha256: str


class Destination:
    """A folder on any fsspec file system: `./out`, `file:///abs/out`, `memory://out`,
    `s3://bucket/prefix` (with s3fs installed)."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/") or "/"
        self.key = self.fs.unstrip_protocol(self.root)
        """The destination as recorded: one spelling per folder."""

    def ensure(self) -> None:
        """Create the folder (DestinationError if that is refused)."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, self.root) from exc

    def full_path(self, file: str) -> str:
        """`file`'s path on the file system."""
        return f"{self.root}/{file}"

    def shown(self, file: str = "") -> str:
        """`file` (default: the folder) as the results show it: a plain path for a local
        folder, else a URL."""
        return shown_path(self.key, file)

    def holds(self, file: str, size: int, sha256: str) -> bool:
        """True when `file` exists with this size and content hash."""
        path = self.full_path(file)
        try:
            if not self.fs.exists(path) or self.fs.size(path) != size:
                return False
            digest = hashlib.sha256()
            with self.fs.open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError:
            return False
        return digest.hexdigest() == sha256

    def listing(self) -> dict[str, tuple[int, float | None]] | None:
        """Every file under the folder: relative path -> (size, modified time when the file
        system says it); None when the folder cannot be listed."""
        try:
            found = self.fs.find(self.root, detail=True)
        except (OSError, ValueError):
            return None
        prefix = self.root.rstrip("/") + "/"
        return {path.removeprefix(prefix): (int(info.get("size") or 0), _mtime(info))
                for path, info in found.items()}

    def stale_parts(self, listing: dict[str, tuple[int, float | None]],
                    now: float) -> list[str]:
        """The temporary files of fetches killed mid-way (`fetch`'s names, untouched for
        `STALE_PART_S`)."""
        return [name for name, (_, mtime) in listing.items()
                if _PART.search(name) and mtime is not None and now - mtime > STALE_PART_S]

    def rename(self, tmp: str, file: str) -> None:
        """Move `tmp` to `file` (atomic on a local disk: same folder)."""
        try:
            self.fs.mv(self.full_path(tmp), self.full_path(file))
        except OSError as exc:
            raise _write_error(exc, self.full_path(file)) from exc

    def remove(self, file: str) -> None:
        """Delete `file` if it is there (best effort)."""
        with contextlib.suppress(OSError, ValueError):
            self.fs.rm(self.full_path(file))


def _mtime(info: dict[str, Any]) -> float | None:
    """A listed file's modified time (local: `mtime`; object stores: `LastModified`)."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, int | float):
        return float(value)
    return value.timestamp() if isinstance(value, datetime) else None


def shown_path(dest_key: str, file: str) -> str:
    """A recorded file as the results show it: a plain path for a local folder."""
    path = f"{dest_key.rstrip('/')}/{file}" if file else dest_key
    return path[len("file://"):] if path.startswith("file://") else path


def _write_error(exc: OSError, where: str) -> DestinationError:
    if exc.errno in FULL_ERRNOS:
        return DiskFull(f"disk full: no space left at {where}")
    return DestinationError(f"cannot write {where}: {exc.strerror or exc}")


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status in (404, 410):
        raise Gone(f"output no longer on PiAPI's servers (HTTP {status})")
    if status == 429 or status >= 500:
        raise Transient(f"HTTP {status}")
    if status >= 400:
        raise Refused(f"HTTP {status}")


def fetch(client: httpx.Client, url: str, dest: Destination, name: str,
          keep_going: Callable[[], bool] = lambda: True) -> Stored:
    """GET `url` into `dest` as `.<name>.<random>.part`; the file's final name is
    `<name>.<ext>` (extension from the URL, else the content type). Raises a FetchError,
    or Interrupted when `keep_going()` (asked before each piece) says no; the temporary
    file is removed either way."""
    try:
        with client.stream("GET", url) as response:
            _check_status(response)
            ext = extension(url, response.headers.get("content-type"))
            tmp = f".{name}.{uuid.uuid4().hex[:12]}.part"
            size, digest = _stream(response, dest, tmp, keep_going)
    except httpx.HTTPError as exc:
        raise Transient(f"network error: {type(exc).__name__}: {exc}") from exc
    expected = response.headers.get("content-length")
    if expected is not None and expected.isdigit() and int(expected) != size:
        dest.remove(tmp)
        raise Transient(f"body cut short: {size} of {expected} bytes")
    return Stored(file=f"{name}.{ext}", tmp=tmp, bytes=size, sha256=digest)


def _stream(response: httpx.Response, dest: Destination, tmp: str,
            keep_going: Callable[[], bool]) -> tuple[int, str]:
    """Write the body to `tmp`: (bytes, sha256)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with dest.fs.open(dest.full_path(tmp), "wb") as out:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                if not keep_going():
                    raise Interrupted(tmp)
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except OSError as exc:
        dest.remove(tmp)
        raise _write_error(exc, dest.full_path(tmp)) from exc
    except BaseException:
        dest.remove(tmp)
        raise
    return size, digest.hexdigest()
