"""Captions as sidecar files (`--captions-as-sidecar`): for each completed captioning row
whose input image is a local file, the caption written as `<image name without extension>.txt`
next to the image, the layout LoRA training tools read.

A captioning row is one whose output carries its text in `output.text` (Joycaption's).
Each file is written atomically (temp file + rename) and only when its text differs, so
writing again (run end, interrupt, export, a re-run) changes nothing that is already right.

Nothing of the user's is lost to a sidecar:
- A `.txt` already there with other text (captions edited by hand, another tool's) is left
  as it is and counted, unless the caller asks to replace (`--overwrite-sidecars`). Text
  that is the caption of another completed row for the same image (an earlier batch's, the
  image since edited) was written by piapi-bulk and is replaced by the new caption.
- Images of one folder that share a name apart from the extension (`dup.png`, `dup.gif`)
  would share `dup.txt`: each gets `<name>.<extension>.txt` instead (`dup.png.txt`), and the
  report says so. An image is known by its name's extension or, as a folder manifest knows
  it, by its content (`e.dat` holding a PNG).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from scheduler.atomic_file import atomic_text
from scheduler.folder import is_image_file
from workers.models import JOBS
from workers.states import JobState
from workers.uploads import local_files

logger = logging.getLogger(__name__)

class Sidecars(StrEnum):
    """Whether to write captions as sidecars over files holding other text."""

    KEEP = "keep"
    """Write the missing ones (those already right stay); leave a `.txt` holding other
    text as it is."""
    REPLACE = "replace"
    """`--overwrite-sidecars`: write over it too."""


CAPTION_KEY = "text"
"""Where a captioning model's output holds the caption (`output.text`)."""


def caption(output: Any) -> str | None:
    """The caption of a completed row's output, or None when it is no caption."""
    if isinstance(output, dict) and isinstance(text := output.get(CAPTION_KEY), str):
        return text
    return None


def sidecar_path(image: str, shared: frozenset[str] = frozenset()) -> Path:
    """`/photos/cat.png` -> `/photos/cat.txt`; `/photos/dup.png` -> `/photos/dup.png.txt`
    when `dup` is in `shared` (another image in the folder is `dup.<something>`)."""
    path = Path(image)
    return path.with_name(path.name + ".txt") if path.stem in shared else path.with_suffix(".txt")


def _is_image(path: Path) -> bool:
    """An image by its name's extension or, failing that, as a folder manifest knows one,
    by its content (`e.dat` holding a PNG); a `.txt` is a sidecar, not read."""
    kind, _ = mimetypes.guess_type(path.name)
    if kind is not None:
        return kind.startswith("image/")
    return path.suffix.lower() != ".txt" and path.is_file() and is_image_file(path)


def shared_stems(folder: Path) -> frozenset[str]:
    """The names (without extension) that more than one image file in `folder` has; none
    when the folder cannot be listed."""
    seen: set[str] = set()
    shared: set[str] = set()
    try:
        names = os.listdir(folder)
    except OSError:
        return frozenset()
    for name in names:
        if _is_image(folder / name):
            stem = Path(name).stem
            (shared if stem in seen else seen).add(stem)
    return frozenset(shared)


def write_text_atomic(path: Path, text: str, replace: bool = True) -> bool | None:
    """`text` in `path` (temp file + rename) unless it holds it already: True if written,
    False if it held it, None if it held other text and `replace` is False (left as is)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
        if not replace:
            return None
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        if not replace and path.exists():
            return None
    with atomic_text(path) as out:
        out.write(text)
    return True


@dataclass
class SidecarReport:
    """What writing a batch's sidecars did."""

    written: int = 0
    same: int = 0
    """Already held the caption."""
    kept: int = 0
    """Held other text and were left as they are (not asked to replace)."""
    first_kept: Path | None = None
    renamed: int = 0
    """Captions written as `<name>.<extension>.txt`: another image shares the name."""
    first_renamed: Path | None = None

    def lines(self) -> list[str]:
        """What to tell the user: the counts, and a line each for files left as they were
        and for images that share a name."""
        if not (self.written or self.same or self.kept):
            return ["captions: no sidecar written: no completed row has a caption of a local "
                    "image (sidecars go next to local images; URLs have none)"]
        lines = [f"captions: {self.written} sidecar .txt files written, {self.same} already "
                 "up to date"]
        if self.kept:
            lines.append(f"captions: {self.kept} left as they were, a .txt with other text "
                         f"being there already ({self.first_kept}{', ...' if self.kept > 1 else ''}"
                         "); --overwrite-sidecars replaces them")
        if self.renamed:
            lines.append(f"captions: {self.renamed} written as <image file name>.txt "
                         f"({self.first_renamed}{', ...' if self.renamed > 1 else ''}), as "
                         "another image in the folder has the same name apart from its "
                         "extension; rename one of them for tools that read <name>.txt")
        return lines


def write_sidecars(engine: Engine, batch_id: str, replace: bool = False) -> SidecarReport:
    """Write the batch's caption sidecars (see the module docstring); `replace`: also over
    a `.txt` holding other text. A sidecar that cannot be written is logged and skipped
    (the results file has the caption anyway)."""
    report = SidecarReport()
    shared: dict[Path, frozenset[str]] = {}
    held: dict[str, tuple[Path, str, bool]] = {}
    """Image -> (sidecar, caption, renamed) of the sidecars that held other text."""
    for image, text in _captions(engine, JOBS.c.batch_id == batch_id):
        path = Path(image)
        if path.parent not in shared:
            shared[path.parent] = shared_stems(path.parent)
        renamed = path.stem in shared[path.parent]
        sidecar = sidecar_path(image, shared[path.parent])
        try:
            done = write_text_atomic(sidecar, text, replace)
        except OSError as exc:
            logger.warning("cannot write caption sidecar %s: %s", sidecar, exc)
            continue
        if done is None:
            held[image] = (sidecar, text, renamed)
        else:
            _count(report, sidecar, done, renamed)
    own = _written_before(engine, batch_id, held)
    for image, (sidecar, text, renamed) in held.items():
        try:
            done = write_text_atomic(sidecar, text) if image in own else None
        except OSError as exc:
            logger.warning("cannot write caption sidecar %s: %s", sidecar, exc)
            continue
        _count(report, sidecar, done, renamed)
    return report


def _captions(engine: Engine, where: Any) -> Iterator[tuple[str, str]]:
    """(local image, caption) of the completed captioning rows `where` selects."""
    query = (select(JOBS.c.model, JOBS.c.task_type, JOBS.c.input_json, JOBS.c.output_json)
             .where(where, JOBS.c.state == JobState.COMPLETED.value).order_by(JOBS.c.id))
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=5000).execute(query)
        for model, task_type, input_json, output_json in rows:
            text = caption(json.loads(output_json or "null"))
            files = local_files(model, task_type, json.loads(input_json or "{}"))
            if text is not None and len(files) == 1:
                yield files[0].path, text


def _written_before(engine: Engine, batch_id: str,
                    held: dict[str, tuple[Path, str, bool]]) -> set[str]:
    """The images of `held` whose sidecar holds a caption piapi-bulk wrote: the caption
    another batch's completed row gave the same image (since edited, it is captioned
    again). One pass over the other batches' rows, made only when a sidecar held other
    text."""
    if not held:
        return set()
    found: dict[str, str | None] = {image: _read(sidecar) for image, (sidecar, _, _) in
                                    held.items()}
    return {image for image, text in _captions(engine, JOBS.c.batch_id != batch_id)
            if image in found and found[image] == text}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _count(report: SidecarReport, path: Path, done: bool | None, renamed: bool) -> None:
    if done is None:
        report.kept += 1
        report.first_kept = report.first_kept or path
        return
    if done:
        report.written += 1
    else:
        report.same += 1
    if renamed:
        report.renamed += 1
        report.first_renamed = report.first_renamed or path
