"""A field PiAPI fetches by URL holds a local path: the row is invalid before anything is
sent (uploads do not exist yet), and the rest of the batch runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.e2e import RunRows, caption_rows

pytestmark = pytest.mark.integration


def test_local_paths_are_invalid_and_never_sent(tmp_path: Path, database_url: str,
                                                run_rows: RunRows) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = caption_rows(4)
    local = {"img-2": "./images/cat.jpg", "img-3": str(tmp_path / "images" / "cat.jpg"),
             "img-4": (tmp_path / "images" / "cat.jpg").as_uri()}
    for row in rows:
        if row["id"] in local:
            row["input"]["image"] = local[row["id"]]
    outcome = run_rows(database_url, rows, ["--time-scale", "0.01"], 120)
    assert outcome.code == 1  # some rows invalid
    by_id = {r["id"]: r for r in outcome.results}
    assert by_id["img-1"]["status"] == "completed"
    for key, path in local.items():
        assert by_id[key]["status"] == "invalid"
        assert by_id[key]["error"]["kind"] == "invalid"
        assert "local files are not uploaded yet; give an http(s) URL" in \
            by_id[key]["error"]["message"]
        assert f"got '{path[:20]}" in by_id[key]["error"]["message"]  # (long ones cut)
    # Only the URL row reached PiAPI.
    assert [t["task_id"] for t in outcome.ledger] == [by_id["img-1"]["task_id"]]
    assert outcome.stats["creates"] == 1
