"""Where `--download` keeps output files: a destination that cannot be used is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.downloader import open_destination
from tests.helpers import free_port
from workers.settings import ConfigError


def test_a_local_folder_is_made(tmp_path: Path) -> None:
    open_destination(str(tmp_path / "out" / "videos"))
    assert (tmp_path / "out" / "videos").is_dir()


@pytest.mark.parametrize("make", [
    lambda tmp: f"ftp://127.0.0.1:{free_port()}/x",  # nothing listens there: refused
    lambda tmp: str(tmp / "file.txt" / "sub"),  # a file where a folder should be
    lambda tmp: "nosuchscheme://bucket/x",
])
def test_a_destination_that_cannot_be_used_is_a_usage_error(tmp_path: Path, make: object) -> None:
    # Found by an exploratory run: an unreachable host was a traceback, not one line.
    (tmp_path / "file.txt").write_text("x")
    url = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=f"cannot download to {url}: "):
        open_destination(url)
