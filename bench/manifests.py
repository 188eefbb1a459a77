"""Synthetic manifests for the scenarios: Joycaption rows and mixed video rows as JSONL, big
captions CSVs."""

from __future__ import annotations

import json
from pathlib import Path

CAPTION_MODEL = "Qubico/joycaption"
CAPTION_TASK = "joycaption-beta-one"
WAN_MODEL = "Wan"
WAN_TASK = "wan26-txt2video"
KLING_MODEL = "kling"
KLING_TASK = "video_generation"
VIDEO_REAL_S: dict[str, tuple[float, float]] = {"wan": (120.0, 480.0), "kling": (120.0, 480.0)}
"""Each video family's 5 s clip in the emulator: 2 to 8 minutes in real seconds (a 10 s
clip twice that: the emulator scales a family's range by duration / 5)."""
VIDEO_MIX: tuple[tuple[str, str, str, int], ...] = (
    (WAN_MODEL, WAN_TASK, "wan", 5),
    (KLING_MODEL, KLING_TASK, "kling", 5),
    (WAN_MODEL, WAN_TASK, "wan", 10),
    (WAN_MODEL, WAN_TASK, "wan", 5),
    (KLING_MODEL, KLING_TASK, "kling", 10),
)
"""Scenario 2's rows, cycled in this order: (model, task type, emulator family, clip
seconds). Two families and two clip lengths, interleaved, so that in manifest order long
rows are still starting near the end; longest-first ordering has something to order."""
STYLES = ("Descriptive", "Straightforward", "Stable Diffusion Prompt", "MidJourney")


def captions_jsonl(path: Path, rows: int, prefix: str = "img") -> Path:
    """`rows` Joycaption rows, each with its own image URL and a little metadata."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, rows + 1):
            f.write(json.dumps({
                "id": f"{prefix}-{i}", "model": CAPTION_MODEL, "task_type": CAPTION_TASK,
                "input": {"image": f"https://images.example.test/{prefix}/{i:07d}.jpg",
                          "prompt_style": STYLES[i % len(STYLES)]},
                "metadata": {"n": i},
            }) + "\n")
    return path


def video_jsonl(path: Path, rows: int) -> Path:
    """`rows` text-to-video rows of `VIDEO_MIX`, cycled (deterministic)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, rows + 1):
            model, task_type, _, seconds = VIDEO_MIX[(i - 1) % len(VIDEO_MIX)]
            f.write(json.dumps({
                "id": f"vid-{i}", "model": model, "task_type": task_type,
                "input": {"prompt": f"a slow pan over landscape number {i} at dusk",
                          "duration": seconds},
                "metadata": {"n": i},
            }) + "\n")
    return path


def video_real_s(rows: int) -> float:
    """The expected real seconds of `video_jsonl`'s rows, summed: each family's mean 5 s
    clip (`VIDEO_REAL_S`) times its clip's length / 5."""
    total = 0.0
    for i in range(rows):
        _, _, family, seconds = VIDEO_MIX[i % len(VIDEO_MIX)]
        low, high = VIDEO_REAL_S[family]
        total += (low + high) / 2 * seconds / 5
    return total


def captions_csv(path: Path, rows: int) -> Path:
    """A CSV with columns id,image,prompt_style,caption_length (model given on the command line).

    Written in blocks: a million rows take a couple of seconds.
    """
    block = 50_000
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("id,image,prompt_style,caption_length\n")
        for start in range(1, rows + 1, block):
            end = min(rows, start + block - 1)
            f.write("".join(
                f"row-{i},https://images.example.test/csv/{i:08d}.jpg,"
                f"{STYLES[i % len(STYLES)]},{'short' if i % 3 else 'long'}\n"
                for i in range(start, end + 1)
            ))
    return path
