"""Local files at ingest: naming (paths, file:// URLs), the checks (present, readable, at
most 10 MB, media by content), validation with a resolver and `--set`, and a folder read as
a manifest (which files become rows, in what order, with what identity)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.folder import FolderManifest, image_field, scan
from scheduler.ingest import open_source
from scheduler.local_files import LocalFileProblem, LocalFiles, check_file, to_path
from scheduler.manifest import ManifestError, RawRow
from scheduler.options import parse_set
from scheduler.sidecars import caption, shared_stems, sidecar_path, write_text_atomic
from scheduler.validate import Defaults, Invalid, JobSpec, validate_row
from tests.helpers import png_bytes
from workers.piapi import MAX_UPLOAD_BYTES
from workers.settings import ConfigError
from workers.uploads import LocalFileGone, media_kind, read_local

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\0" * 64
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\0" * 64
JOY = Defaults("Qubico/joycaption", "joycaption-beta-one")


@pytest.mark.parametrize(("head", "kind"), [
    (png_bytes(), "image"), (JPEG, "image"), (b"GIF89a" + b"\0" * 16, "image"),
    (MP4, "video"), (WAV, "audio"), (b"ID3\x03\x00" + b"\0" * 32, "audio"),
    (b"hello, not media", None), (b"PK\x03\x04" + b"\0" * 32, None), (b"", None),
])
def test_media_kind_by_content(head: bytes, kind: str | None) -> None:
    assert media_kind(head) == kind


def test_a_name_is_not_a_kind(tmp_path: Path) -> None:
    fake = tmp_path / "cat.png"
    fake.write_text("a text file named like an image")
    with pytest.raises(LocalFileProblem, match="is not an image, video or audio file"):
        check_file(fake, "cat.png")
    real = tmp_path / "cat.txt"
    real.write_bytes(png_bytes())
    assert check_file(real, "cat.txt") == "image"


@pytest.mark.parametrize(("value", "expected"), [
    ("cat.png", "/base/cat.png"), ("./img/cat.png", "/base/img/cat.png"),
    ("/abs/cat.png", "/abs/cat.png"), ("file:///abs/my%20cat.png", "/abs/my cat.png"),
    ("file://localhost/abs/cat.png", "/abs/cat.png"), ("FILE:cat.png", "/base/cat.png"),
])
def test_to_path(value: str, expected: str) -> None:
    assert os.path.normpath(to_path(value, Path("/base"))) == expected


def test_a_file_url_on_another_host_is_refused() -> None:
    with pytest.raises(LocalFileProblem, match="names a file on another host"):
        to_path("file://nas/photos/cat.png", Path("/base"))


def test_the_checks(tmp_path: Path) -> None:
    with pytest.raises(LocalFileProblem, match=r"^local file x.png: no such file$"):
        check_file(tmp_path / "x.png", "x.png")
    with pytest.raises(LocalFileProblem, match="is not a file"):
        check_file(tmp_path, "the folder")
    big = tmp_path / "big.png"
    with big.open("wb") as f:  # sparse: 10 MB + 1 byte that take no disk
        f.write(png_bytes())
        f.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(LocalFileProblem, match=r"is 10.5 MB; PiAPI uploads take at most 10 MB"):
        check_file(big, "big.png")
    big.write_bytes(png_bytes())
    with big.open("r+b") as f:
        f.truncate(MAX_UPLOAD_BYTES)
    assert check_file(big, "big.png") == "image"  # exactly 10 MB is fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(png_bytes())
    locked.chmod(0)
    with pytest.raises(LocalFileProblem, match=r"cannot read local file locked\.png"):
        check_file(locked, "locked.png")


def _row(fields: dict[str, object], from_csv: bool = True) -> RawRow:
    return RawRow(1, 2, fields, from_csv)


def test_validation_resolves_and_checks_local_files(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(png_bytes())
    defaults = Defaults(JOY.model, JOY.task_type, local=LocalFiles(tmp_path))
    spec = validate_row(_row({"image": "img/cat.png"}), defaults)
    assert isinstance(spec, JobSpec)
    assert spec.input == {"image": str(tmp_path / "img" / "cat.png")}
    spec = validate_row(_row({"input": {"image": (tmp_path / "img/cat.png").as_uri()}},
                             from_csv=False), defaults)
    assert isinstance(spec, JobSpec) and spec.input["image"] == str(tmp_path / "img/cat.png")
    bad = validate_row(_row({"image": "img/dog.png"}), defaults)
    assert isinstance(bad, Invalid)
    assert bad.reason == "field 'image': local file img/dog.png: no such file"
    url = validate_row(_row({"image": "https://x.test/a.png"}), defaults)
    assert isinstance(url, JobSpec) and url.input == {"image": "https://x.test/a.png"}


def test_local_files_in_array_items(tmp_path: Path) -> None:
    (tmp_path / "depth.png").write_bytes(png_bytes())
    defaults = Defaults("Qubico/flux1-dev-advanced", "controlnet-lora",
                        local=LocalFiles(tmp_path))
    items = [{"control_type": "depth", "control_image": "depth.png"}]
    spec = validate_row(_row({"prompt": "p", "control_net_settings": items}, False), defaults)
    assert isinstance(spec, JobSpec)
    assert spec.input["control_net_settings"][0]["control_image"] == str(tmp_path / "depth.png")


def test_set_fields_fill_what_a_row_leaves_empty() -> None:
    defaults = Defaults(JOY.model, JOY.task_type, fields={"prompt_style": "descriptive",
                                                          "caption_length": "short"})
    row = {"image": "https://x.test/a.png", "caption_length": "long"}
    spec = validate_row(_row(row), defaults)
    assert isinstance(spec, JobSpec)
    assert spec.input == {**row, "prompt_style": "descriptive"}  # the row's own value wins
    spec = validate_row(_row({"input": {"image": "https://x.test/a.png",
                                        "prompt_style": "casual"}}, False), defaults)
    assert isinstance(spec, JobSpec) and spec.input["prompt_style"] == "casual"


@pytest.mark.parametrize(("values", "error"), [
    (["a"], "--set takes KEY=VALUE, got 'a'"), (["=x"], "--set takes KEY=VALUE, got '=x'"),
    (["model=x"], "--set model: not an input field (give it as --model or in the manifest)"),
    (["a=1", "a=2"], "--set a given twice"),
])
def test_parse_set_refuses(values: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=f"^{error}$".replace("(", r"\(").replace(")", r"\)")):
        parse_set(values)


def test_parse_set() -> None:
    assert parse_set(["prompt_style=descriptive", "x= a=b "]) == {
        "prompt_style": "descriptive", "x": " a=b "}


@pytest.mark.parametrize(("model", "task_type", "field"), [
    ("Qubico/joycaption", "joycaption-beta-one", "image"),
    ("Wan", "wan26-img2video", "image"),
    ("Qubico/image-toolkit", "upscale", "image"),
    ("Qubico/trellis", "image-to-3d", "image"),
])
def test_image_field(model: str, task_type: str, field: str) -> None:
    assert image_field(model, task_type) == field


@pytest.mark.parametrize(("model", "task_type", "error"), [
    (None, None, "needs --model and --task-type"),
    ("Qubico/image-toolkit", "face-swap", "has no single required image field"),
    ("Qubico/tts", "zero-shot", "has no single required image field"),
    ("Wan", "wan26-txt2video", "has no single required image field"),
    ("Qubico/diffrhythm", "txt2audio-base", "only with models piapi-bulk knows"),
])
def test_image_field_refuses(model: str | None, task_type: str | None, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        image_field(model, task_type)


def test_a_folder_as_rows(tmp_path: Path) -> None:
    for rel in ("b.png", "a/c.jpg", "a/b/d.png", ".hidden.png", ".cache/e.png", "notes.txt",
                "clip.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        data = {".jpg": JPEG, ".txt": b"text", ".mp4": MP4}.get(Path(rel).suffix, png_bytes())
        (tmp_path / rel).write_bytes(data)
    folder = FolderManifest(tmp_path, "image")
    rows = list(folder)
    assert [r.fields["id"] for r in rows] == ["a/b/d.png", "a/c.jpg", "b.png"]
    assert [(r.seq, r.line) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    assert rows[0].fields["image"] == str(tmp_path / "a/b/d.png")
    assert folder.skipped == 3  # .hidden.png, notes.txt, clip.mp4 (.cache is not read)
    assert folder.note == f"{tmp_path}: 3 images, 3 files skipped (hidden, or not an image)"
    same = FolderManifest(tmp_path, "image").content_hash()
    assert same == folder.content_hash()
    (tmp_path / "z.png").write_bytes(png_bytes())
    assert FolderManifest(tmp_path, "image").content_hash() != same


def test_an_image_written_again_at_the_same_size_makes_another_batch(tmp_path: Path) -> None:
    # Found by an exploratory run: an uncompressed image (BMP, TIFF) keeps its size when
    # edited, so the folder resumed its old batch and the image kept its old caption.
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    os.utime(image, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    before = FolderManifest(tmp_path, "image").content_hash()
    assert FolderManifest(tmp_path, "image").content_hash() == before  # resumed as it is
    edited = bytearray(image.read_bytes())
    edited[-20] ^= 0xFF
    image.write_bytes(bytes(edited))  # the same size, another picture
    assert FolderManifest(tmp_path, "image").content_hash() != before


NAMES = st.text(alphabet="ab.", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=3), st.booleans()),
                max_size=8))
def test_scan_keeps_exactly_the_visible_images_sorted(
        files: list[tuple[list[str], bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written: dict[str, bool] = {}
        for parts, is_image in files:
            path = root.joinpath(*parts)
            rel = "/".join(parts)
            if any(rel.startswith(w + "/") or w.startswith(rel + "/") for w in written) \
                    or rel in written:
                continue  # a name already taken by a file or a folder
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes() if is_image else b"plain text")
            written[rel] = is_image
        found, skipped = scan(root)
        visible = {r for r in written if not any(p.startswith(".") for p in r.split("/"))}
        hidden_dirs = {r for r in written if any(p.startswith(".") for p in r.split("/")[:-1])}
        assert [rel for rel, _, _ in found] == sorted(r for r in visible if written[r])
        # Files under hidden folders are never looked at; the rest not taken are counted.
        assert skipped == len(written) - len(found) - len(hidden_dirs)


def test_a_folder_without_images_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(ManifestError, match=r"no image files in .* \(1 other files skipped\)"):
        open_source(tmp_path, "Qubico/joycaption", "joycaption-beta-one")


def test_sidecars(tmp_path: Path) -> None:
    assert caption({"text": "a cat"}) == "a cat"
    assert caption({"image_url": "https://x"}) is None and caption(None) is None
    image = tmp_path / "cat.photo.png"
    assert sidecar_path(str(image)) == tmp_path / "cat.photo.txt"
    assert write_text_atomic(tmp_path / "cat.txt", "a cat")
    assert not write_text_atomic(tmp_path / "cat.txt", "a cat")  # already right
    assert write_text_atomic(tmp_path / "cat.txt", "a black cat")
    assert (tmp_path / "cat.txt").read_text() == "a black cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.txt"]  # no temp files left
    # Not asked to replace: other text is left as it is (None); the same text is no news.
    assert write_text_atomic(tmp_path / "cat.txt", "a white cat", replace=False) is None
    assert write_text_atomic(tmp_path / "cat.txt", "a black cat", replace=False) is False
    assert write_text_atomic(tmp_path / "new.txt", "a dog", replace=False) is True
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe not utf-8")
    assert write_text_atomic(tmp_path / "bin.txt", "a bird", replace=False) is None
    assert (tmp_path / "bin.txt").read_bytes() == b"\xff\xfe not utf-8"
    assert write_text_atomic(tmp_path / "bin.txt", "a bird") is True


@pytest.mark.parametrize(("files", "shared"), [
    ([], set()),
    (["a.png", "b.jpg", "a.txt"], set()),
    (["dup.png", "dup.gif", "one.webp"], {"dup"}),
    (["dup.png", "dup.txt", "dup.csv"], set()),  # only images count
    (["x.tar.png", "x.tar.jpg", "x.png"], {"x.tar"}),
])
def test_shared_stems(tmp_path: Path, files: list[str], shared: set[str]) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    found = shared_stems(tmp_path)
    assert found == shared
    for name in files:
        expected = f"{name}.txt" if Path(name).stem in shared else f"{Path(name).stem}.txt"
        assert sidecar_path(str(tmp_path / name), found) == tmp_path / expected
    assert shared_stems(tmp_path / "missing") == frozenset()


def test_shared_stems_know_an_image_by_its_content(tmp_path: Path) -> None:
    """A folder manifest takes `e.dat` holding a PNG as an image, so its sidecar must not
    be `e.txt`, `e.png`'s; a `.txt` or a file that is no image shares no name."""
    from tests.helpers import png_bytes

    (tmp_path / "e.png").write_bytes(png_bytes())
    (tmp_path / "e.dat").write_bytes(png_bytes(shade=9))
    (tmp_path / "f.png").write_bytes(png_bytes())
    (tmp_path / "f.dat").write_bytes(b"not an image")
    (tmp_path / "f.txt").write_bytes(png_bytes())
    assert shared_stems(tmp_path) == {"e"}


def test_a_sidecar_report_with_nothing_to_write_says_why() -> None:
    from scheduler.sidecars import SidecarReport

    assert SidecarReport().lines() == [
        "captions: no sidecar written: no completed row has a caption of a local image "
        "(sidecars go next to local images; URLs have none)"]
    assert SidecarReport(same=2).lines() == [
        "captions: 0 sidecar .txt files written, 2 already up to date"]


def test_a_local_file_is_checked_again_just_before_its_upload(tmp_path: Path) -> None:
    # Found by an exploratory run: a file replaced by text after ingest was uploaded and
    # its task paid for.
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    assert read_local(str(image)) == png_bytes()
    image.write_text("notes, not a picture")
    with pytest.raises(LocalFileGone, match="no longer an image, video or audio file"):
        read_local(str(image))
    image.unlink()
    with pytest.raises(LocalFileGone, match="cannot read local file"):
        read_local(str(image))
