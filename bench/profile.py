"""py-spy profiles of a system run: one worker and the dispatcher, sampled mid-run.

`python -m bench --profile` (on by default for a full run) adds one run after scenario 1:
scenario 1 on SQLite with a quarter of its rows (at least 500), variant `profiled`, whose
figures are kept but not judged (py-spy shares the two cores; the measured runs are never
profiled). During it `Profiler` starts `py-spy record --format raw --nonblocking --gil` on the
first worker and on the dispatcher once `START_FRACTION` of the rows have finished, and
stops them (SIGINT, by PID: py-spy then writes what it has) once `STOP_FRACTION` have, when
the run ends, or at its own `--duration` bound, whichever comes first. py-spy is a process
the harness started, sampled under the role `profiler`, which `bench.metrics` does not count
as ours (its CPU shows in `by_role`).

The raw output is collapsed stacks (`frame;frame;...;leaf count`, root first, a frame being
`function (file:line)` with the file shortened to its package path). `summarise_collapsed`
attributes each sample to the leaf-most frame that belongs to one of `LIBRARIES` (our own
packages included), else to `other`, and counts our functions inclusively. With `--gil`
only the thread running Python is sampled; should a sample still show a `concurrent.futures`
pool thread waiting for work (its leaf `_worker` itself, blocked in C: py-spy's idle
heuristic misses it), it is counted apart as idle and left out of the percentages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import manifests
from bench.procs import REPO, Proc, Stack, command_output, source
from bench.targets import unjudged

if TYPE_CHECKING:
    from bench.metrics import Sampler
    from bench.runs import RunSpec
    from bench.scenarios import Env

ROLE = "profiler"
"""The sampler's role for py-spy: measured, not counted as ours (bench.metrics.NOT_OURS)."""
RATE_HZ = 200
FLAGS = ("--nonblocking", "--gil")
"""--nonblocking: never pause the profiled process. --gil: only the thread holding the GIL,
the one running Python, so threads waiting on a socket, a lock or a queue are not counted
(py-spy's idle detection alone misses many of those with --nonblocking)."""
START_FRACTION = 0.1
"""Start sampling once this share of the rows has finished (workers busy, start-up over)."""
STOP_FRACTION = 0.9
"""Stop once this share has: the tail (the last tasks draining) is not what we profile."""
MAX_DURATION_S = 120.0
"""py-spy's own --duration bound (also never past the run's deadline)."""
STOP_TIMEOUT_S = 15.0
PROFILED_MIN_ROWS = 500
TOP_FUNCTIONS = 12
TOP_OTHER_LEAVES = 4

LIBRARIES: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("http", "httpx/httpcore/h11 (HTTP client)", frozenset({"httpx", "httpcore", "h11"})),
    ("messaging", "celery/kombu/redis (messaging)",
     frozenset({"celery", "kombu", "redis", "billiard", "amqp", "vine"})),
    ("db", "sqlalchemy/psycopg/sqlite (DB layer)",
     frozenset({"sqlalchemy", "sqlmodel", "psycopg", "psycopg_pool", "sqlite3", "alembic"})),
    ("ours", "piapi-bulk code (self)", frozenset({"workers", "scheduler"})),
)
"""(key, label, top-level packages) of each library a sample can be attributed to."""
OTHER = ("other", "other (threads, stdlib)")
LABELS = dict([(key, label) for key, label, _ in LIBRARIES] + [OTHER])
IDLE_LEAVES = frozenset({("concurrent/futures/thread.py", "_worker")})
"""(file, function) of leaves that are a pool thread waiting for work, not work."""


@dataclass(frozen=True)
class Frame:
    """One frame of a collapsed stack: `function (file:line)`."""

    function: str
    file: str
    line: int | None = None

    @property
    def name(self) -> str:
        """`file:function`, without the line (how our functions are listed)."""
        return f"{self.file}:{self.function}" if self.file else self.function


def parse_frame(text: str) -> Frame:
    """`Dispatcher.tick (scheduler/dispatcher.py:120)` -> Frame; a frame without a
    `(file)` part keeps its text as the function and an empty file."""
    text = text.strip()
    head, sep, tail = text.partition(" (")  # a Python function's name has no space
    if not sep or not tail.endswith(")"):
        return Frame(text, "")
    where = tail[:-1]
    file, colon, line = where.rpartition(":")
    if colon and line.isdigit():
        return Frame(head, file, int(line))
    return Frame(head, where)


def package_of(file: str) -> str:
    """The top-level package (or module) of a shortened py-spy file name:
    `sqlalchemy/engine/base.py` -> `sqlalchemy`, `threading.py` -> `threading`. A full path
    is cut after `site-packages/` (or `dist-packages/`) when it has one."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in file:
            file = file.rsplit(marker, 1)[1]
    first = file.lstrip("/").split("/", 1)[0]
    return first.removesuffix(".py")


def library_of(frame: Frame) -> str | None:
    """The key in `LIBRARIES` a frame belongs to, None for anything else."""
    package = package_of(frame.file) if frame.file else ""
    for key, _label, packages in LIBRARIES:
        if package in packages:
            return key
    return None


def parse_collapsed(text: str) -> list[tuple[list[Frame], int]]:
    """Collapsed stacks (`root;...;leaf count` per line) -> [(frames root first, count)];
    blank or malformed lines are skipped."""
    stacks: list[tuple[list[Frame], int]] = []
    for raw in text.splitlines():
        stack, _, count = raw.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in stack.split(";")], int(count)))
    return stacks


def _fraction(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0


def summarise_collapsed(text: str, top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """One process's profile in numbers.

    `samples`: the samples counted (idle ones left out); `idle_samples`: those whose leaf is
    in `IDLE_LEAVES`; `libraries`: key -> fraction of `samples` attributed to it by its
    leaf-most frame in a library (every key of `LIBRARIES` and `other`, largest first);
    `other_leaves`: the leaves most seen among `other`'s samples, [name, fraction];
    `ours_inclusive`: our functions (file:function) by the fraction of samples with them on
    the stack (counted once per sample however often they recur), the `top` largest.
    """
    by_library: Counter[str] = Counter({key: 0 for key, _, _ in LIBRARIES} | {OTHER[0]: 0})
    other_leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = idle = 0
    for frames, count in parse_collapsed(text):
        leaf = frames[-1]
        if (leaf.file, leaf.function) in IDLE_LEAVES:
            idle += count
            continue
        samples += count
        owner = next((key for f in reversed(frames) if (key := library_of(f))), None)
        if owner is None:
            by_library[OTHER[0]] += count
            other_leaves[leaf.name] += count
        else:
            by_library[owner] += count
        for name in {f.name for f in frames if library_of(f) == "ours"}:
            ours[name] += count
    return {
        "samples": samples,
        "idle_samples": idle,
        "libraries": {k: _fraction(n, samples)
                      for k, n in sorted(by_library.items(), key=lambda kv: (-kv[1], kv[0]))},
        "other_leaves": [[name, _fraction(n, samples)]
                         for name, n in other_leaves.most_common(TOP_OTHER_LEAVES)],
        "ours_inclusive": [[name, _fraction(n, samples)]
                           for name, n in sorted(ours.items(), key=lambda kv: (-kv[1], kv[0]))
                           [:top]],
    }


def _pct(fraction: float) -> str:
    return f"{100 * fraction:6.1f}%"


def format_process(title: str, summary: dict[str, Any]) -> list[str]:
    """The text block of one process (see bench/results/profile-s1.txt)."""
    idle = summary["idle_samples"]
    head = f"== {title}: {summary['samples']} samples"
    if idle:
        head += f" (+ {idle} of idle pool threads, left out: leaf _worker, concurrent.futures)"
    lines = [head]
    lines += [f"  {_pct(f)}  {LABELS[k]}" for k, f in summary["libraries"].items()]
    leaves = ", ".join(f"{name} {100 * f:.1f}%" for name, f in summary["other_leaves"])
    lines.append(f"  -- top leaves in other: {leaves or '-'}")
    lines.append(f"  -- inclusive, our functions (top {TOP_FUNCTIONS})")
    lines += [f"  {_pct(f)}  {name}" for name, f in summary["ours_inclusive"]]
    return lines


def format_text(header: Sequence[str], processes: dict[str, dict[str, Any]]) -> str:
    """The whole profile text: `header` lines, then a block per process (title -> summary)."""
    lines = list(header)
    for title, summary in processes.items():
        lines += format_process(title, summary)
    return "\n".join(lines) + "\n"


def py_spy() -> str | None:
    """The py-spy beside this Python (the dev extra installs it), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    from shutil import which

    return which("py-spy")


@dataclass
class _Target:
    title: str
    pid: int
    raw: Path
    proc: Proc | None = None


@dataclass
class Profiler:
    """py-spy on some of a run's processes for a window in its middle (module docstring).

    Call `poll(t, finished)` from the run's watch loop (the main thread: the harness starts
    its children from there), `stop(t, finished)` when the run ends, then `result(...)`.
    """

    rows: int
    deadline_s: float
    targets: list[tuple[str, int]]
    """(title, pid) of each process to profile."""
    out: Path
    stem: str
    logs: Path
    stack: Stack
    sampler: Sampler
    rate_hz: int = RATE_HZ
    window: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    _running: list[_Target] = field(default_factory=list)
    _state: str = "waiting"

    def poll(self, t: float, finished: int) -> None:
        """Start when START_FRACTION of the rows have finished, stop at STOP_FRACTION."""
        if self._state == "waiting" and finished >= START_FRACTION * self.rows:
            self._start(t, finished)
        elif self._state == "running" and (finished >= STOP_FRACTION * self.rows
                                           or not any(x.proc and x.proc.alive()
                                                      for x in self._running)):
            self.stop(t, finished)

    def _start(self, t: float, finished: int) -> None:
        self._state = "running"
        exe = py_spy()
        if exe is None:
            self._state, self.error = "done", "py-spy is not installed (pip install py-spy)"
            return
        duration = max(1, int(min(MAX_DURATION_S, self.deadline_s - t)))
        self.out.mkdir(parents=True, exist_ok=True)
        self.window = {"start_s": round(t, 3), "finished_at_start": finished,
                       "max_duration_s": duration}
        for title, pid in self.targets:
            raw = self.out / f"{self.stem}-{title}.raw.txt"
            argv = [exe, "record", "--pid", str(pid), "--rate", str(self.rate_hz),
                    "--duration", str(duration), "--format", "raw", "--output", str(raw),
                    *FLAGS]
            proc = self.stack.add(Proc(f"py-spy-{title}", ROLE, argv, dict(os.environ),
                                       self.logs / f"py-spy-{title}.log"))
            self.sampler.watch(proc)
            self._running.append(_Target(title, pid, raw, proc))

    def stop(self, t: float, finished: int) -> None:
        """SIGINT every py-spy still sampling (it writes its output), reap it; idempotent."""
        if self._state != "running":
            self._state = "done"
            return
        self._state = "done"
        self.window.update(end_s=round(t, 3), finished_at_end=finished)
        for target in self._running:
            proc = target.proc
            if proc is not None and proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        for target in self._running:
            if target.proc is not None and target.proc.wait(STOP_TIMEOUT_S) is None:
                target.proc.stop(5)

    def result(self, header: Sequence[str]) -> dict[str, Any]:
        """Summarise the raw files, write the text; the JSON summary for the result."""
        out: dict[str, Any] = {"rate_hz": self.rate_hz, "window": self.window,
                               "error": self.error, "processes": {}}
        if self._state == "waiting":
            out["error"] = "the run ended before the profile's window began"
        texts: dict[str, dict[str, Any]] = {}
        problems = []
        for target in self._running:
            proc = target.proc
            cpu = proc.usage.cpu_s if proc is not None and proc.usage is not None else None
            if not target.raw.exists():
                tail = proc.log_tail(3) if proc is not None else ""
                problems.append(f"{target.title}: no output (py-spy exited "
                                f"{proc.returncode if proc else None}: {tail})")
                continue
            summary = summarise_collapsed(target.raw.read_text(errors="replace"))
            texts[f"{target.title} (pid {target.pid}, {target.raw.name})"] = summary
            out["processes"][target.title] = {"pid": target.pid, "raw": str(target.raw),
                                              "py_spy_cpu_s": cpu, **summary}
        if problems:
            out["error"] = "; ".join(filter(None, [out["error"], *problems]))
        if texts:
            path = self.out / f"{self.stem}.txt"
            path.write_text(format_text(header, texts))
            out["text"] = str(path)
        return out


def profiler_for(spec: RunSpec, out: Path, stamp: str, logs: Path, stack: Stack,
                 sampler: Sampler, targets: list[tuple[str, int]]) -> Profiler:
    """The profiler of a run: files `profile-<scenario>-<db>-<stamp>*` in `out`."""
    stem = f"profile-{spec.scenario}-{spec.db}-{stamp}"
    return Profiler(rows=spec.rows, deadline_s=spec.deadline_s, targets=targets, out=out,
                    stem=stem, logs=logs, stack=stack, sampler=sampler)


def profile_header(spec: RunSpec, profiler: Profiler, started: str) -> list[str]:
    """The first lines of a profile text: what was sampled, when, on which code."""
    w = profiler.window
    commit = command_output(["git", "rev-parse", "--short", "HEAD"]) or "?"
    if source() != REPO:  # --at REV: the measured code is a `git archive` of REV
        commit = source().name
    return [
        f"py-spy record -r {profiler.rate_hz} {' '.join(FLAGS)} (raw: only the thread holding "
        f"the GIL, i.e. Python CPU, not waits) of one worker and the dispatcher during the "
        f"bench run {spec.scenario} "
        f"{spec.variant or ''} on {spec.db} ({spec.rows} rows, C = {spec.concurrency}) at "
        f"{commit}, {started}.",
        f"Window: {w.get('start_s')} s -> {w.get('end_s')} s after the dispatcher's start, "
        f"rows finished {w.get('finished_at_start')} -> {w.get('finished_at_end')}.",
        "Summarised by library (leaf-most library frame; our own code counts as a library) "
        "and by our functions (inclusive).",
    ]


def profiled_s1(env: Env, out: Path) -> None:
    """Scenario 1 with a quarter of its rows (at least 500), profiled, not judged; on SQLite
    (else on the first database chosen)."""
    from bench.runs import run_system
    from bench.scenarios import _s1_spec, skipped

    if not env.dbs:
        return
    db = "sqlite" if "sqlite" in env.dbs else env.dbs[0]
    if db in env.skipped_dbs:
        env.add(skipped("s1_captions", "profiled", db, env.skipped_dbs[db]))
        return
    rows = max(PROFILED_MIN_ROWS, env.plan.s1_rows // 4)
    manifest = env.ctx.workdir / "s1_profiled.jsonl"
    if not manifest.exists():
        manifests.captions_jsonl(manifest, rows)
    base = _s1_spec(env, db)
    spec = replace(base, variant="profiled", manifest=manifest, rows=rows, profile=True,
                   deadline_s=max(120.0, base.deadline_s * rows / base.rows))
    result = run_system(spec, replace(env.ctx, out=out))
    env.add(unjudged(result))  # profiled: kept, not judged


def with_profiled_run(steps: list[tuple[str, Callable[[], None]]], env: Env, out: Path,
                      wanted: bool | None, quick: bool) -> list[tuple[str, Callable[[], None]]]:
    """`steps` with the profiled run right after scenario 1's, when `wanted` (None: on for a
    full run, off for --quick) and scenario 1 is among them."""
    on = (not quick) if wanted is None else wanted
    at = next((i for i, (label, _) in enumerate(steps) if label == "1"), None)
    if not on or at is None:
        return steps
    return [*steps[:at + 1], ("1 (profiled)", lambda: profiled_s1(env, out)), *steps[at + 1:]]


def stamp_now() -> tuple[str, str]:
    """(ISO UTC time, compact stamp for file names)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return started, started.replace("-", "").replace(":", "")
