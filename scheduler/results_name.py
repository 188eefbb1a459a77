"""The results file `run` writes when no `-o` is given: `<manifest stem>.results.jsonl`.

Two manifests may share a stem (`bad.csv` and `bad.jsonl`, or `photos/` and `photos.csv`),
and the second one's results would silently replace the first's. So the run folder keeps
which manifest each default name was chosen for (`results-owners.json`); a manifest whose
usual name another one holds gets `<manifest name>.results.jsonl` (`bad.jsonl.results.jsonl`),
and `run` says so. The same manifest run again gets the same name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from scheduler.atomic_file import atomic_text
from workers.settings import ConfigError

logger = logging.getLogger(__name__)

OWNERS = "results-owners.json"
"""In the run folder: {results file (absolute): manifest it was chosen for (absolute)}."""
MAX_NAMES = 100


def _name(manifest: Path) -> str:
    """The manifest's name (a folder given as `.` or `..` by its own)."""
    return manifest.name if manifest.name not in ("", ".", "..") else manifest.resolve().name


def usual_name(manifest: Path) -> Path:
    """`captions.csv.gz` -> `captions.results.jsonl` in the current directory."""
    name = _name(manifest)
    if name.endswith(".gz"):
        name = name[:-3]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return Path(f"{stem}.results.jsonl")


def _names(manifest: Path) -> list[Path]:
    """The names to try, in order: the usual one, then the manifest's whole name."""
    whole = _name(manifest)
    return [usual_name(manifest), Path(f"{whole}.results.jsonl"),
            *(Path(f"{whole}.{n}.results.jsonl") for n in range(2, MAX_NAMES))]


def _load(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def default_output(manifest: Path, run_dir: Path) -> tuple[Path, str | None]:
    """The results file for `manifest` without `-o`, and a note when it is not the usual
    name (another manifest's results have that name). The choice is kept in `run_dir`."""
    owners_file = run_dir / OWNERS
    owners = _load(owners_file)
    source = str(manifest.resolve())
    usual = usual_name(manifest)
    for name in _names(manifest):
        key = str(name.resolve())
        holder = owners.get(key)
        if holder is None or holder == source:
            if holder is None:
                owners[key] = source
                try:
                    with atomic_text(owners_file) as out:
                        json.dump(owners, out, indent=1, sort_keys=True)
                except OSError as exc:  # the name is still right for this run
                    logger.warning("could not record the results name %s: %s", name, exc)
            if name == usual:
                return name, None
            return name, (f"results in {name}: {usual} holds those of "
                          f"{owners.get(str(usual.resolve()), 'another manifest')}")
    raise ConfigError(f"no free results file name for {manifest}: give one with -o")
