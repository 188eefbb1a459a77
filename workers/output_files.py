"""Which URLs of a completed task's output are files to keep, and the names they get (pure).

PiAPI's output shapes (REFERENCE.md §8): `video_url`, `image_url(s)`, `audio_url`, Kling's
`works[].video.resource`, Udio's map of clips, Midjourney's grid and its four images,
Trellis's model file. Text (Joycaption's caption) is never a file, and placeholders
(`{"video": ""}`) are not an output yet.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from workers.piapi import has_content

DUPLICATE_KEYS = frozenset({"temporary_image_urls", "download_url"})
"""Keys whose URLs repeat files found under another key: Midjourney's temporary (CDN)
copies of `image_urls`, Hailuo's `download_url` beside its `video_url`. Taken only when
the output has no other URL."""
TEXT_KEYS = frozenset({"text", "caption", "content", "prompt", "title"})
"""Keys holding text, never a file, even when the text is a bare URL."""
MAX_STEM = 120
"""Characters of a row id kept in a file name (file systems allow 255 bytes)."""
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXT = re.compile(r"^[A-Za-z0-9]{1,8}$")
DEFAULT_EXT = "bin"


def _walk(value: Any, key: str, found: list[str], skipped: list[str]) -> None:
    if isinstance(value, str):
        url = value.strip()
        if url.startswith(("http://", "https://")) and key not in TEXT_KEYS:
            (skipped if key in DUPLICATE_KEYS else found).append(url)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, str(k), found, skipped)
    elif isinstance(value, list):
        for v in value:
            _walk(v, key, found, skipped)


def output_files(output: Any) -> list[str]:
    """The file URLs of a completed task's `output`, in document order, without repeats;
    none for text outputs and empty placeholders."""
    if not has_content(output):
        return []
    found: list[str] = []
    skipped: list[str] = []
    _walk(output, "", found, skipped)
    return list(dict.fromkeys(found or skipped))


def safe_stem(row_key: str) -> str:
    """A row id as a file name: letters, digits, `.`, `_` and `-` only, no leading dot,
    at most MAX_STEM characters. An id changed on the way gets a short hash of itself, so
    `a/b` and `a_b` never share a name."""
    stem = _SAFE.sub("_", row_key).lstrip(".")[:MAX_STEM] or "row"
    if stem != row_key:
        stem += "-" + hashlib.sha256(row_key.encode()).hexdigest()[:8]
    return stem


def file_name(row_key: str, n: int, count: int) -> str:
    """The name (without extension) of output file `n` of `count` for a row:
    `<row id>` for a row's only file, `<row id>_<n+1>` when it has several."""
    stem = safe_stem(row_key)
    return stem if count == 1 else f"{stem}_{n + 1}"


def extension(url: str, content_type: str | None = None) -> str:
    """The file extension (without the dot) from the URL's path, else the content type,
    else `bin`."""
    path = unquote(urlsplit(url).path)
    last = path.rsplit("/", 1)[-1]
    if "." in last:
        ext = last.rsplit(".", 1)[1].lower()
        if _EXT.match(ext):
            return ext
    if content_type:
        guessed = mimetypes.guess_extension(content_type.split(";")[0].strip().lower())
        if guessed:
            return guessed.lstrip(".")
    return DEFAULT_EXT
