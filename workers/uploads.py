"""Local files in a row's input: found, uploaded to PiAPI just before the row's create, and
the URLs used recorded with its attempt.

Ingest stores a local file as its absolute path in a field the catalogue types as a URL
(`workers.catalog.Kind.URL`, array items included); validation lets nothing else but an
http(s) URL into such a field, so a value starting with `/` there is a local file. Rows of
models the catalogue does not know are sent as given: nothing is uploaded for them.

The upload happens after the claim and before the POST, so a link (kept 24 hours by PiAPI)
cannot expire while the row waits, and every retry uploads again. An upload that fails
happened before the POST: the create was provably not sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import filetype
from sqlalchemy import and_, bindparam
from sqlalchemy.engine import Engine

from workers.catalog import Kind, lookup
from workers.db import transaction
from workers.models import ATTEMPTS, JOBS
from workers.piapi import MAX_UPLOAD_BYTES, PiAPIClient
from workers.states import JobState

logger = logging.getLogger(__name__)

_ITEM_KEY = re.compile(r"^(\w+)\[(\d+)\]\.(\w+)$")


MEDIA = ("image", "video", "audio")
"""The kinds of file PiAPI's models fetch."""
HEAD_BYTES = 8192
"""How much of a file's start `filetype` needs to recognise every type it knows."""


def media_kind(head: bytes) -> str | None:
    """`image`, `video` or `audio` for a file starting with these bytes; None otherwise."""
    kind = filetype.guess(head)
    if kind is None:
        return None
    top = str(kind.mime).split("/", 1)[0]
    return top if top in MEDIA else None


class LocalFileGone(Exception):
    """A local file that passed the checks at ingest cannot be uploaded now (deleted,
    unreadable, grown past 10 MB): the row fails, nothing was sent."""


@dataclass(frozen=True)
class LocalFile:
    """One local file of a row: where it sits in the input, and its absolute path."""

    key: str
    """The input field (`image`), or an array item's (`control_net_settings[0].control_image`)."""
    path: str


def _is_local(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/")


def local_files(model: str, task_type: str, data: Mapping[str, Any]) -> list[LocalFile]:
    """The row's local files, in field order (none for a model not in the catalogue)."""
    spec = lookup(model, task_type)
    if spec is None:
        return []
    found: list[LocalFile] = []
    for name, value in data.items():
        field = spec.fields.get(name)
        if field is None:
            continue
        if field.kind is Kind.URL and _is_local(value):
            found.append(LocalFile(name, value))
        elif field.items and isinstance(value, list):
            found.extend(_item_files(name, value, field.items))
    return found


def _item_files(name: str, items: list[Any], specs: Mapping[str, Any]) -> Iterator[LocalFile]:
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        for key, value in item.items():
            spec = specs.get(key)
            if spec is not None and spec.kind is Kind.URL and _is_local(value):
                yield LocalFile(f"{name}[{i}].{key}", value)


def with_urls(data: Mapping[str, Any], urls: Mapping[str, str]) -> dict[str, Any]:
    """The input as sent: each local file's value replaced by the URL it was uploaded to."""
    sent = dict(data)
    for key, url in urls.items():
        match = _ITEM_KEY.match(key)
        if match is None:
            sent[key] = url
            continue
        name, i, item_key = match.group(1), int(match.group(2)), match.group(3)
        items = [dict(x) if isinstance(x, Mapping) else x for x in sent.get(name) or []]
        if i < len(items) and isinstance(items[i], dict):
            items[i][item_key] = url
        sent[name] = items
    return sent


def as_sent(data: Mapping[str, Any], upload_urls: str | None) -> dict[str, Any]:
    """The input an attempt sent, from the stored input and the attempt's `upload_urls`."""
    if not upload_urls:
        return dict(data)
    return with_urls(data, json.loads(upload_urls))


def read_local(path: str) -> bytes:
    """The file's bytes, checked again (it passed at ingest: still there, at most 10 MB, still
    an image, video or audio file); LocalFileGone when not."""
    try:
        size = os.stat(path).st_size
        if size > MAX_UPLOAD_BYTES:
            raise LocalFileGone(f"local file {path} is {size / 1e6:.1f} MB now; "
                                "PiAPI uploads take at most 10 MB")
        with open(path, "rb") as f:
            data = f.read(MAX_UPLOAD_BYTES + 1)
    except OSError as exc:
        raise LocalFileGone(f"cannot read local file {path}: {exc.strerror or exc}") from exc
    if media_kind(data[:HEAD_BYTES]) is None:  # replaced since: never pay for it
        raise LocalFileGone(f"local file {path} is no longer an image, video or audio file "
                            "(by its content)")
    return data


def upload_all(client: PiAPIClient, files: list[LocalFile],
               spend: Callable[[str], None]) -> dict[str, str]:
    """Upload each file (one request of the fleet's budget each): key -> URL. Raises
    LocalFileGone, or the client's errors (nothing was created either way)."""
    urls: dict[str, str] = {}
    for f in files:
        data = read_local(f.path)
        spend("upload")
        urls[f.key] = client.upload_file(os.path.basename(f.path), data)
    return urls


_ATTEMPT_UPLOADS = ATTEMPTS.update().where(
    and_(ATTEMPTS.c.job_id == bindparam("p_job"), ATTEMPTS.c.n == bindparam("p_n"))
).values(upload_urls=bindparam("p_urls"))
_RENEW_LEASE = JOBS.update().where(
    and_(JOBS.c.id == bindparam("p_job"), JOBS.c.state == JobState.SUBMITTING.value,
         JOBS.c.posts == bindparam("p_n"))
).values(lease_until=bindparam("p_lease_until"))


def record_uploads(engine: Engine, job_id: int, attempt_n: int, urls: Mapping[str, str],
                   now: float, lease_s: float) -> bool:
    """Record the URLs with the attempt and renew the job's lease (the uploads took some
    of it), before the POST. False when the job is no longer this claim's (its lease ran
    out meanwhile and it was taken back): the create must then not be sent."""
    with transaction(engine) as conn:
        conn.execute(_ATTEMPT_UPLOADS, {"p_job": job_id, "p_n": attempt_n,
                                        "p_urls": json.dumps(dict(urls))})
        renewed = conn.execute(_RENEW_LEASE, {"p_job": job_id, "p_n": attempt_n,
                                              "p_lease_until": now + lease_s}).rowcount
    if renewed != 1:
        logger.warning("job %s: taken back while its files uploaded; its create is not sent",
                       job_id)
    return renewed == 1
