"""Which output URLs are files to keep, and the names they get (table tests)."""

from __future__ import annotations

from typing import Any

import pytest

from workers.fetch import shown_path
from workers.output_files import extension, file_name, output_files, safe_stem

VIDEO = "https://img.theapi.app/ephemeral/v.mp4"
IMAGE = "https://x.test/i.png"
AUDIO = "https://x.test/a.mp3"


@pytest.mark.parametrize(("output", "files"), [
    (None, []),
    ({"text": "AUDIO cat. See https://x.test/i.png"}, []),  # a caption is text, never a file
    ({"text": "https://x.test/i.png"}, []),  # even when the text is a bare URL
    ({"video": ""}, []),  # Kling 3.0's placeholder while running
    ({"video_url": "", "cover_url": "", "percent": 0}, []),  # Hailuo's
    ({"video_url": VIDEO}, [VIDEO]),  # Wan
    ({"image_url": IMAGE}, [IMAGE]),  # Flux
    ({"image_urls": [IMAGE, "https://x.test/j.png"]}, [IMAGE, "https://x.test/j.png"]),
    ({"audio_url": AUDIO}, [AUDIO]),  # F5-TTS
    ({"works": [{"video": {"resource": VIDEO}}]}, [VIDEO]),  # Kling 2.x
    ({"video_url": VIDEO, "download_url": "https://x.test/d.mp4", "cover_url": IMAGE},
     [VIDEO, IMAGE]),
    ({"download_url": "https://x.test/d.mp4"}, ["https://x.test/d.mp4"]),
    ({"image_url": IMAGE, "image_urls": ["https://x.test/1.png", "https://x.test/2.png"],
      "temporary_image_urls": ["https://cdn.test/1.png", "https://cdn.test/2.png"]},
     [IMAGE, "https://x.test/1.png", "https://x.test/2.png"]),  # Midjourney: no CDN copies
    ({"clips": {"e": {}, "c1": {"audio_url": AUDIO, "video_url": VIDEO, "title": "x",
                               "metadata": {"prompt": "https://not.a/file"}}}}, [AUDIO, VIDEO]),
    ({"image_url": IMAGE, "thumb": IMAGE}, [IMAGE]),  # no repeats
    ({"model_file": "https://x.test/m.glb", "no_background_image": " " + IMAGE}, [
        "https://x.test/m.glb", IMAGE]),
])
def test_output_files(output: Any, files: list[str]) -> None:
    assert output_files(output) == files


@pytest.mark.parametrize(("row_key", "stem"), [
    ("img-0001", "img-0001"),
    ("42", "42"),
    ("a.b_c-D", "a.b_c-D"),
    ("a/b", "a_b-c14cddc0"),  # changed: a hash of the id after it
    ("../../etc/passwd", "_.._etc_passwd-3754d6cb"),
    (".hidden", "hidden-16924190"),
    ("", "row-e3b0c442"),
    ("café", "caf_-850f7dc4"),
])
def test_safe_stem(row_key: str, stem: str) -> None:
    assert safe_stem(row_key) == stem


def test_sanitised_ids_never_share_a_name() -> None:
    keys = ["a/b", "a_b", "a b", "a:b", "a\\b", "AUDIO/B"]
    assert len({safe_stem(k) for k in keys}) == len(keys)
    assert len(safe_stem("x" * 1000)) <= 130


@pytest.mark.parametrize(("key", "n", "count", "name"), [
    ("flux-1", 0, 1, "flux-1"),
    ("mj-7", 0, 5, "mj-7_1"),
    ("mj-7", 4, 5, "mj-7_5"),
])
def test_file_name(key: str, n: int, count: int, name: str) -> None:
    assert file_name(key, n, count) == name


@pytest.mark.parametrize(("url", "content_type", "ext"), [
    ("https://x.test/ephemeral/abc.mp4", None, "mp4"),
    ("https://x.test/a/b.PNG?sig=1", None, "png"),
    ("https://x.test/a/b", "image/jpeg", "jpg"),
    ("https://x.test/a/b", "video/mp4; charset=binary", "mp4"),
    ("https://x.test/a/b", None, "bin"),
    ("https://x.test/a/b.this-is-no-ext", "audio/mpeg", "mp3"),
])
def test_extension(url: str, content_type: str | None, ext: str) -> None:
    assert extension(url, content_type) == ext


@pytest.mark.parametrize(("dest", "file", "shown"), [
    ("file:///data/out", "a.png", "/data/out/a.png"),
    ("memory:///out", "a.png", "memory:///out/a.png"),
    ("s3://bucket/prefix", "a.png", "s3://bucket/prefix/a.png"),
    ("file:///data/out", "", "/data/out"),
])
def test_shown_path(dest: str, file: str, shown: str) -> None:
    assert shown_path(dest, file) == shown
