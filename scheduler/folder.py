"""A folder as the manifest: one row per image file in it (recursive, sorted), the row id its
path relative to the folder, the file in the model's image field.

Hidden files and folders (a name starting with `.`) and files that are not images (by
their content) are skipped and counted. The batch's identity is the folder's absolute path
and its listing (each image's relative path, size and modification time), so the same
folder with the same options is the same batch, and re-running resumes it; an image added,
removed or written again (an edit keeps the size of an uncompressed image) makes another
batch, whose rows done before are reused (`workers.transitions.reuse`: by the file's
content, so an image only touched or copied is not paid for again).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from scheduler.manifest import Item, RawRow
from workers.catalog import MODELS, Kind, lookup
from workers.settings import ConfigError
from workers.uploads import HEAD_BYTES, media_kind

IMAGE_FIELD_WORD = "image"
"""A required URL field whose name holds this takes an image (`image`, `image_url`)."""


def image_field(model: str | None, task_type: str | None) -> str:
    """The input field a folder's images go in: the model's single required URL field of
    an image kind (Joycaption's `image`); ConfigError (a usage error) when there is none."""
    if not model or not task_type:
        raise ConfigError("a folder as the manifest needs --model and --task-type")
    spec = lookup(model, task_type)
    if spec is None:
        known = "" if model in MODELS else " (a folder works only with models piapi-bulk knows)"
        raise ConfigError(f"no model {model} with task type {task_type} in piapi-bulk's "
                          f"catalogue{known}")
    names = [n for n in spec.required
             if (f := spec.fields.get(n)) is not None and f.kind is Kind.URL
             and IMAGE_FIELD_WORD in n]
    if len(names) != 1:
        raise ConfigError(f"{model} {task_type} has no single required image field to put a "
                          "folder's files in; give a manifest instead")
    return names[0]


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def is_image_file(path: Path) -> bool:
    """True for an image by its first bytes; a file that cannot be read counts (its row
    then says why it cannot be used)."""
    try:
        with path.open("rb") as f:
            return media_kind(f.read(HEAD_BYTES)) == "image"
    except OSError:
        return True


def scan(folder: Path) -> tuple[list[tuple[str, int, int]], int]:
    """The folder's images as (relative POSIX path, size, modification time in ns), sorted
    by path, and how many files were skipped (hidden, or not an image; an image's caption
    sidecar, `cat.txt` or `cat.png.txt`, is no file skipped)."""
    found: list[tuple[str, int, int]] = []
    skipped: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(folder)
            if _hidden(rel) or not path.is_file() or not is_image_file(path):
                skipped.append(rel)
                continue
            info = path.stat()
            found.append((rel.as_posix(), info.st_size, info.st_mtime_ns))
    found.sort()
    sidecars = {Path(rel).with_suffix(".txt") for rel, _, _ in found} | {
        Path(rel + ".txt") for rel, _, _ in found}
    return found, sum(rel not in sidecars for rel in skipped)


class FolderManifest:
    """A folder read as a manifest: its image files as rows (see the module docstring);
    the same interface as `scheduler.manifest.Manifest` for ingest."""

    def __init__(self, folder: str | os.PathLike[str], field: str) -> None:
        self.path = Path(folder).resolve()
        self.field = field
        self.columns: tuple[str, ...] = ("id", field)
        self.files, self.skipped = scan(self.path)

    def content_hash(self) -> str:
        """SHA-256 (hex) of the folder's absolute path and its listing."""
        listing = json.dumps([str(self.path), self.files], separators=(",", ":"))
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def note(self) -> str | None:
        """The one line that says what was skipped, if anything."""
        if not self.skipped:
            return None
        plural = "s" if self.skipped > 1 else ""
        return (f"{self.path}: {len(self.files)} images, {self.skipped} file{plural} skipped "
                "(hidden, or not an image)")

    def __iter__(self) -> Iterator[Item]:
        for seq, (rel, _size, _mtime) in enumerate(self.files, 1):
            yield RawRow(seq, seq, {"id": rel, self.field: str(self.path / rel)},
                         from_csv=True)

    def close(self) -> None:
        """Nothing to close (the interface of a file manifest)."""

    def __enter__(self) -> FolderManifest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
