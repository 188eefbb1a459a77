"""Captions as sidecar files (`--captions-as-sidecar`): for each completed captioning row
whose input image is a local file, the caption written as `<image name without extension>.txt`
next to the image, the layout LoRA training tools read.

A captioning row is one whose output carries its text in `output.text` (Joycaption's).
Each file is written atomically (temp file + rename) and only when its text differs, so
writing again (run end, interrupt, export, a re-run) changes nothing that is already right.

Nothing of the user's is lost to a sidecar:
- A `.txt` already there with other text (captions edited by hand, another tool's) is left
  as it is and counted, unless the caller asks to replace (`--overwrite-sidecars`).
- Images of one folder that share a name apart from the extension (`dup.png`, `dup.gif`)
  would share `dup.txt`: each gets `<name>.<extension>.txt` instead (`dup.png.txt`), and the
  report says so.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

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
        kind, _ = mimetypes.guess_type(name)
        if kind is not None and kind.startswith("image/"):
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    query = (select(JOBS.c.model, JOBS.c.task_type, JOBS.c.input_json, JOBS.c.output_json)
             .where(JOBS.c.batch_id == batch_id, JOBS.c.state == JobState.COMPLETED.value)
             .order_by(JOBS.c.seq))
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=5000).execute(query)
        for model, task_type, input_json, output_json in rows:
            text = caption(json.loads(output_json or "null"))
            files = local_files(model, task_type, json.loads(input_json or "{}"))
            if text is None or len(files) != 1:
                continue
            image = Path(files[0].path)
            if image.parent not in shared:
                shared[image.parent] = shared_stems(image.parent)
            path = sidecar_path(files[0].path, shared[image.parent])
            try:
                done = write_text_atomic(path, text, replace)
            except OSError as exc:
                logger.warning("cannot write caption sidecar %s: %s", path, exc)
                continue
            _count(report, path, done, renamed=path.stem == image.name)
    return report


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
