"""The results file `run` writes without `-o`: never another manifest's."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.results_name import OWNERS, default_output, usual_name


@pytest.mark.parametrize(("manifest", "expected"), [
    ("captions.csv", "captions.results.jsonl"), ("captions.csv.gz", "captions.results.jsonl"),
    ("rows.jsonl", "rows.results.jsonl"), ("photos", "photos.results.jsonl"),
    ("data/a.b.csv", "a.b.results.jsonl")])
def test_the_usual_name_is_the_manifest_stem(manifest: str, expected: str) -> None:
    assert usual_name(Path(manifest)) == Path(expected)


def test_the_current_folder_is_named_by_its_name(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by an exploratory run: `run .` wrote `.results.jsonl`, a hidden file.
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "photos")
    assert usual_name(Path(".")) == Path("photos.results.jsonl")
    monkeypatch.chdir(tmp_path / "photos" / "sub")
    assert usual_name(Path("..")) == Path("photos.results.jsonl")


def test_two_manifests_with_one_stem_never_share_a_results_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / ".piapi-bulk"
    run_dir.mkdir()
    for name in ("bad.csv", "bad.jsonl", "photos.csv"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "photos").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "bad.jsonl").write_text("x\n")

    assert default_output(Path("bad.csv"), run_dir) == (Path("bad.results.jsonl"), None)
    second, note = default_output(Path("bad.jsonl"), run_dir)
    assert second == Path("bad.jsonl.results.jsonl")
    assert note is not None and "bad.results.jsonl" in note and "bad.csv" in note
    # The same manifest gets the same file every time it runs (a resumed run).
    assert default_output(Path("bad.csv"), run_dir) == (Path("bad.results.jsonl"), None)
    assert default_output(Path("bad.jsonl"), run_dir)[0] == second
    assert default_output(other / "bad.jsonl", run_dir)[0] == Path("bad.jsonl.2.results.jsonl")
    # A folder and a file of one stem.
    assert default_output(Path("photos"), run_dir)[0] == Path("photos.results.jsonl")
    assert default_output(Path("photos.csv"), run_dir)[0] == Path("photos.csv.results.jsonl")


def test_an_unreadable_record_of_names_is_started_again(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / OWNERS).write_text("{not json")
    (tmp_path / "a.csv").write_text("x\n")
    assert default_output(Path("a.csv"), tmp_path) == (Path("a.results.jsonl"), None)
    assert str((tmp_path / "a.csv").resolve()) in (tmp_path / OWNERS).read_text()
