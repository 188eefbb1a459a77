"""Manifest-wide mistakes caught before a batch exists: one usage error, not a row error each.

`run` and `submit` call `preflight` before ingest, so a mistake that would make every row
invalid creates no batch and sends nothing. It reads only the header and the first
`SAMPLE_ROWS` data rows; per-row problems stay per-row (validation makes them `invalid`).

What is a usage error (`problem` says which, in one line):
- `--model` unknown to the catalogue but close to a name PiAPI has (a typo: "did you mean");
  with `--strict`, any `--model` not in the catalogue. A name close to none (a model
  piapi-bulk does not know yet) is passed through unchecked, as for rows.
- `--task-type` that no known model of the rows it applies to has ("did you mean", or the
  model's task types).
- no model (no `--model`, and the sampled rows have no `model`), and likewise no task type.
- columns of which none is an input field of the model or a reserved field (`id`, `model`,
  `input`...), or that lack a field the model requires with no `input` to give it (a
  `--set` field counts as a column).
- a `--set` field that `--model` with `--task-type` (known models) does not take.
- a folder as the manifest without `--model` and `--task-type`, or for a model with no
  single required image field (`scheduler/folder.py`).
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.folder import image_field
from scheduler.manifest import RawRow, open_manifest
from scheduler.validate import RESERVED
from workers.catalog import ACTIVE_FAMILIES, HISTORY_FAMILIES, MODELS, TaskSpec, lookup, task_types
from workers.settings import ConfigError

SAMPLE_ROWS = 20
"""How many data rows (from the top) stand for the manifest."""
CLOSE_RATIO = 0.8
"""difflib's similarity from which an unknown name may be a typo of a known one..."""
KNOWN_NAMES: frozenset[str] = MODELS | frozenset(HISTORY_FAMILIES) | frozenset(ACTIVE_FAMILIES)
"""Model names PiAPI has: the catalogue's and those of its documented families (not typos,
though not checked)."""
SHOW_NAMES = 12
"""Most column names a message lists."""


@dataclass(frozen=True)
class Sample:
    """The top of a manifest: its columns (the CSV header, or the keys of the sampled JSONL
    rows in order of appearance) and its first readable data rows."""

    columns: tuple[str, ...]
    rows: tuple[RawRow, ...]


def read_sample(path: str | os.PathLike[str], rows: int = SAMPLE_ROWS) -> Sample:
    """The header and the first `rows` data rows of the manifest at `path` (rows that could
    not be read are left out); raises `ManifestError` when the file is unusable."""
    with open_manifest(path) as manifest:
        raw = tuple(i for i in itertools.islice(manifest, rows) if isinstance(i, RawRow))
        columns = manifest.columns
    if not columns:
        columns = tuple(dict.fromkeys(k for row in raw for k in row.fields))
    return Sample(columns, raw)


def require_manifest(path: Path, folder: bool = True) -> None:
    """ConfigError unless `path` is a file (or, with `folder`, a folder) to read rows from.
    A pipe or a device is refused: a batch is its manifest's content, read again when a run
    resumes."""
    if path.is_file() or (folder and path.is_dir()):
        return
    if not path.exists():
        raise ConfigError(f"cannot read manifest {path}: no such file")
    if path.is_dir():
        raise ConfigError(f"cannot read manifest {path}: a folder, where a file is needed")
    raise ConfigError(f"cannot read manifest {path}: not a regular file (a pipe or a device: "
                      "save it to a file first, which a resumed run reads again)")


def preflight(path: str | os.PathLike[str], model: str | None, task_type: str | None,
              strict: bool = False, fields: Sequence[str] = ()) -> None:
    """Raise `ConfigError` (exit 2, one line) when the manifest (or folder) with these
    command-line options (`fields`: the `--set` names) would make a batch of which no row
    can be sent."""
    found = model_problem(model, strict) if model else None
    found = found or set_problem(model, task_type, fields)
    if found is None and Path(path).is_dir():
        taken = image_field(model, task_type)  # raises the folder's usage error
        if taken in fields:
            raise ConfigError(f"--set {taken}: a folder's rows take their {taken} from the "
                              "folder's files")
        return
    if found is None:
        sample = read_sample(path)
        if fields:
            sample = Sample(tuple(dict.fromkeys((*sample.columns, *fields))), sample.rows)
        found = problem(sample, model or None, task_type or None, strict)
    if found is not None:
        raise ConfigError(found)


def set_problem(model: str | None, task_type: str | None, fields: Sequence[str]) -> str | None:
    """A `--set` field that the model and task type given (when known) do not take."""
    spec = lookup(model, task_type) if model and task_type else None
    if spec is None or spec.open_fields:
        return None
    unknown = [f for f in fields if f not in spec.fields]
    if not unknown:
        return None
    return (f"--set {unknown[0]}: not an input field of {spec.model} {spec.task_type} "
            f"(known: {', '.join(spec.fields)})")


def problem(sample: Sample, model: str | None, task_type: str | None,
            strict: bool = False) -> str | None:
    """The manifest-wide mistake in these options and this sample, or None (pure)."""
    if model is not None and (found := model_problem(model, strict)) is not None:
        return found
    kinds = [(_name(r, "model") or model, _name(r, "task_type")) for r in sample.rows]
    if kinds and all(m is None for m, _ in kinds):
        return "no model: give --model or a model column"
    if task_type is not None:
        found = _task_type_problem(task_type, [m for m, t in kinds if t is None] or [model])
        if found is not None:
            return found
    elif kinds and all(t is None for _, t in kinds):
        known = sorted({t for m, _ in kinds if m in MODELS for t in task_types(m)})
        hint = f" (known for these rows: {', '.join(known)})" if known else ""
        return f"no task type: give --task-type or a task_type column{hint}"
    return _columns_problem(sample, [(m, t or task_type) for m, t in kinds] or
                            [(model, task_type)])


def model_problem(model: str, strict: bool = False) -> str | None:
    """Why `--model` cannot be meant as given: a typo of a known name, or (strict) not in
    the catalogue; None when it is known, or close to no known name (passed through)."""
    if model in MODELS:
        return None
    near = close_name(model, KNOWN_NAMES)
    if near is not None:
        return f"unknown model {model} (did you mean {near}?)"
    if strict:
        return (f"unknown model {model}: --strict takes only models in piapi-bulk's "
                f"catalogue ({', '.join(sorted(MODELS, key=str.lower))})")
    return None


def close_name(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is most likely a typo of, or None: the same but for case or a
    missing `Owner/` prefix, or similar by difflib with at most a slip or two of the keys
    (so a sibling such as `flux1-pro` for `flux1-dev` is not taken for a typo)."""
    if name in known:
        return None
    by_lower: dict[str, str] = {}
    for k in sorted(known):
        by_lower.setdefault(k.lower(), k)
        by_lower.setdefault(k.lower().rsplit("/", 1)[-1], k)
    lower = name.strip().lower()
    if lower in by_lower:
        return by_lower[lower]
    for near in difflib.get_close_matches(lower, list(by_lower), n=3, cutoff=CLOSE_RATIO):
        if edit_distance(lower, near) <= max(1, len(near) // 8):
            return by_lower[near]
    return None


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            cur.append(cost)
        prev2, prev = prev, cur
    return prev[-1]


def _name(row: RawRow, field: str) -> str | None:
    value = row.fields.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else str(value)


def _task_type_problem(task_type: str, models: Sequence[str | None]) -> str | None:
    """A `--task-type` none of the known models of the rows that take it has."""
    known = sorted({m for m in models if m in MODELS})
    if not known or any(lookup(m, task_type) is not None for m in known):
        return None
    types = task_types(known[0])
    near = difflib.get_close_matches(task_type, types, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(types)}"
    return f"unknown task type {task_type} for model {known[0]} ({hint})"


def _columns_problem(sample: Sample,
                     kinds: Sequence[tuple[str | None, str | None]]) -> str | None:
    """Columns that cannot give the model its input, when every sampled row is of one known
    model: none is a field of it (nor reserved), or one it requires is missing."""
    models = {m for m, _ in kinds}
    if len(models) != 1 or (model := models.pop()) not in MODELS or not sample.columns:
        return None
    specs = [s for s in (lookup(model, t) for t in sorted({t for _, t in kinds if t})) if s]
    if not specs:
        return None  # an unknown task type: said by _task_type_problem, or per row
    columns = set(sample.columns)
    fields = list(dict.fromkeys(f for s in specs for f in s.fields))
    found = _names(sample.columns)
    if not any(s.open_fields for s in specs) and not columns & (RESERVED | set(fields)):
        what = specs[0].model if len(specs) > 1 else f"{model} {specs[0].task_type}"
        return (f"no column is an input field of {what}: found {found}; expected "
                f"{', '.join(fields)} (or {', '.join(sorted(RESERVED))})")
    if len(specs) != 1 or "input" in columns:
        return None
    spec = specs[0]
    missing = _missing(spec, columns)
    if missing is None:
        return None
    return (f"no column gives {missing}, which {spec.model} {spec.task_type} needs: found "
            f"{found}; expected {', '.join(spec.fields)}")


def _missing(spec: TaskSpec, columns: set[str]) -> str | None:
    """The required field (or `one_of` set) no column gives, as words; None when all are."""
    for name in spec.required:
        if name not in columns:
            return name
    if spec.one_of and not columns & set(spec.one_of):
        return " or ".join(spec.one_of)
    return None


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(n if len(n) <= 40 else n[:37] + "..." for n in names[:SHOW_NAMES])
    return shown + (f" and {len(names) - SHOW_NAMES} more" if len(names) > SHOW_NAMES else "")
