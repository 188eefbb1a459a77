"""The `output` of a completed task, in each model's PiAPI shape, with URLs on the fake files.

Every URL and id is derived from the task id (never from the random stream), so when a task
completes cannot change what later creates draw.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable
from typing import Any

Output = dict[str, Any]
MJ_GRID = 4
"""A Midjourney imagine makes four images."""


class Minter:
    """Deterministic ids and output file URLs for one task."""

    def __init__(self, task_id: str, base_url: str) -> None:
        self.task_id = task_id
        self.base_url = base_url
        self._counter = itertools.count()

    def uuid(self) -> str:
        """The next id of this task's sequence (a UUID v4 in form)."""
        digest = hashlib.sha256(f"{self.task_id}/{next(self._counter)}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def url(self, ext: str) -> str:
        """A new file on the emulator's `/ephemeral/` route, served with type `ext`."""
        return f"{self.base_url}/ephemeral/{self.uuid()}.{ext}"


OutputBuilder = Callable[[dict[str, Any], Minter], Output]
"""(normalised input, minter) -> output."""


def caption(input_: dict[str, Any], mint: Minter) -> Output:
    """Joycaption: `{"text"}` mentioning the style, length and image it describes."""
    return {"text": (
        f"{input_['prompt_style']} caption ({input_['caption_length']} length) of the image "
        f"at {input_['image']}: a clearly lit subject in the foreground against a softly "
        "blurred background, in natural colours."
    )}


def one_file(key: str, ext: str) -> OutputBuilder:
    """An output of one file URL under `key` (`{"image_url"}`, `{"video"}`, ...)."""
    return lambda _input, mint: {key: mint.url(ext)}


def hailuo(input_: dict[str, Any], mint: Minter) -> Output:
    """Hailuo: the video twice (view and download), its cover and the progress."""
    return {"video_url": mint.url("mp4"), "download_url": mint.url("mp4"),
            "cover_url": mint.url("png"), "percent": 100}


def kling(input_: dict[str, Any], mint: Minter) -> Output:
    """Kling 3.0 answers `{"video"}`; older versions `{"video_url"}`."""
    key = "video" if input_.get("version") == "3.0" else "video_url"
    return {key: mint.url("mp4")}


def midjourney(input_: dict[str, Any], mint: Minter) -> Output:
    """Imagine: the grid image, its four images, and their temporary (CDN) copies."""
    return {
        "image_url": mint.url("png"),
        "image_urls": [mint.url("png") for _ in range(MJ_GRID)],
        "temporary_image_urls": [mint.url("png") for _ in range(MJ_GRID)],
    }


def trellis(input_: dict[str, Any], mint: Minter) -> Output:
    """Image to 3D: the model, a turntable video and the input without its background."""
    return {"model_file": mint.url("glb"), "combined_video": mint.url("mp4"),
            "no_background_image": mint.url("png")}


def _clip(clip_id: str, input_: dict[str, Any], mint: Minter, n: int) -> Output:
    description = str(input_.get("gpt_description_prompt") or "")
    return {
        "id": clip_id, "video_url": mint.url("mp4"), "audio_url": mint.url("mp3"),
        "image_url": mint.url("jpeg"), "image_large_url": mint.url("jpeg"),
        "is_video_pending": False, "major_model_version": "v1.5", "model_name": "udio",
        "metadata": {
            "tags": "", "prompt": str(input_.get("lyrics") or ""),
            "gpt_description_prompt": description, "audio_prompt_id": "", "history": None,
            "concat_history": None, "type": "gen", "duration": 130 + 2 * n,
            "refund_credits": False, "stream": True, "error_type": "", "error_message": "",
        },
        "is_liked": False, "user_id": "", "display_name": "", "handle": "",
        "is_handle_updated": False, "is_trashed": False, "reaction": None, "created_at": "",
        "status": "complete", "title": f"{description[:40] or 'Untitled'} ({n + 1})",
        "play_count": 0, "upvote_count": 0, "is_public": False,
    }


def song(input_: dict[str, Any], mint: Minter) -> Output:
    """Udio: `{"clips": {id: clip}}`, a map, its first entry an empty `{}` as the docs show
    (least generous: always there) and then two real clips."""
    clips: dict[str, Any] = {mint.uuid(): {}}
    for n in range(2):
        clip_id = mint.uuid()
        clips[clip_id] = _clip(clip_id, input_, mint, n)
    return {"clips": clips}
