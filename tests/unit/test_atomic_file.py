"""Files written whole or not at all, with the mode a plain `open(path, "w")` gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scheduler.atomic_file import atomic_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_takes_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path: Path) -> None:
    saved = os.umask(0o022)
    try:
        with atomic_text(tmp_path / "new.txt") as out:
            out.write("one")
        assert _mode(tmp_path / "new.txt") == 0o644  # not mkstemp's 0600
        (tmp_path / "new.txt").chmod(0o640)
        with atomic_text(tmp_path / "new.txt") as out:
            out.write("two")
        assert _mode(tmp_path / "new.txt") == 0o640
        assert (tmp_path / "new.txt").read_text() == "two"
    finally:
        os.umask(saved)


def test_a_failed_write_leaves_the_file_as_it_was_and_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text("kept")
    with pytest.raises(RuntimeError), atomic_text(tmp_path / "r.jsonl") as out:
        out.write("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "r.jsonl").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
