"""Captions as sidecar files (`--captions-as-sidecar`): for each completed captioning row
whose input image is a local file, the caption written as `<image name without extension>.txt`
next to the image, the layout LoRA training tools read.

A captioning row is one whose output carries its text in `output.text` (Joycaption's).
Each file is written atomically (temp file + rename) and only when its text differs, so
writing again (run end, interrupt, export, a re-run) changes nothing that is already right.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from workers.models import JOBS
from workers.states import JobState
from workers.uploads import local_files

logger = logging.getLogger(__name__)

CAPTION_KEY = "text"
"""Where a captioning model's output holds the caption (`output.text`)."""


def caption(output: Any) -> str | None:
    """The caption of a completed row's output, or None when it is no caption."""
    if isinstance(output, dict) and isinstance(text := output.get(CAPTION_KEY), str):
        return text
    return None


def sidecar_path(image: str) -> Path:
    """`/photos/cat.png` -> `/photos/cat.txt`."""
    return Path(image).with_suffix(".txt")


def write_text_atomic(path: Path, text: str) -> bool:
    """`text` in `path` (temp file + rename) unless it holds it already; True if written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def write_sidecars(engine: Engine, batch_id: str) -> tuple[int, int]:
    """Write the batch's caption sidecars; (written, already right). A sidecar that cannot
    be written is logged and skipped (the results file has the caption anyway)."""
    written = same = 0
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
            path = sidecar_path(files[0].path)
            try:
                if write_text_atomic(path, text):
                    written += 1
                else:
                    same += 1
            except OSError as exc:
                logger.warning("cannot write caption sidecar %s: %s", path, exc)
    return written, same
