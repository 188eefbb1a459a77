"""Synthetic manifests for the scenarios: Joycaption and Wan rows as JSONL, big captions CSVs."""

from __future__ import annotations

import json
from pathlib import Path

CAPTION_MODEL = "Qubico/joycaption"
CAPTION_TASK = "joycaption-beta-one"
WAN_MODEL = "Wan"
WAN_TASK = "wan26-txt2video"
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


def wan_jsonl(path: Path, rows: int) -> Path:
    """`rows` Wan text-to-video rows of 5 s clips (the emulator's duration factor 1)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, rows + 1):
            f.write(json.dumps({
                "id": f"vid-{i}", "model": WAN_MODEL, "task_type": WAN_TASK,
                "input": {"prompt": f"a slow pan over landscape number {i} at dusk",
                          "duration": 5},
                "metadata": {"n": i},
            }) + "\n")
    return path


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
