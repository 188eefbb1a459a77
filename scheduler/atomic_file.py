"""Files written whole or not at all: a temp file beside the target, renamed over it.

`tempfile.mkstemp` makes its file readable by its owner only (0600); a results file or a
caption a training job running as another user must read would be unreadable. The file
takes the mode of the one it replaces, else what the umask gives a new file (0644 under
the usual 022), as `open(path, "w")` would have.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _new_file_mode() -> int:
    umask = os.umask(0o022)  # read it (it can only be read by setting it) and put it back
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_text(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A UTF-8 text file that becomes `path` when the block ends without an exception;
    on one, `path` is as it was and the temp file is gone."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_problem(path: Path) -> str | None:
    """Why `atomic_text` could not write `path` (None: it can, as far as can be told
    before writing): asked before any work whose result would go there is paid for."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    parent = path.parent
    if not parent.is_dir():
        return f"cannot write {path}: no folder {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {path}: the folder {parent} is not writable"
    return None
