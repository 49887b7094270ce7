"""Shards -> model inputs: frame sampling, the pixel budget, and processor tensors with correct timing.

Two traps shape this module:

- Timing. Given bare frame arrays, recent transformers assume 24 fps and compute
  ``second_per_grid_ts = 2 / 24``, so Qwen2.5-VL's temporal positions are 12x too
  dense. :func:`video_inputs` always passes explicit video metadata (fps, frame
  indices), giving ``second_per_grid_ts = temporal_patch_size / fps`` (1.0 s at 2 fps).
- Pixels. Frames are resized here, once, to multiples of 28 under a total pixel budget
  (:func:`fit_to_budget`), and the processor's own resize is switched off, so the HF
  and vLLM paths see exactly the same pixels.

Frame selection uses an integer stride over the stored frames (stored at ``out_fps``,
usually 2): the chosen frames are evenly spaced real frames, and the effective rate
``out_fps / stride`` is what the processor is told.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.records import QueryRecord
from pipeline.shards import ShardIndex, ShardVideo, list_shards

DEFAULT_TOTAL_PIXELS = 2048 * 28 * 28  # the paper's budget, ~1.6 M pixels per video
DEFAULT_MIN_PIXELS_PER_FRAME = 4 * 28 * 28
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


def fit_to_budget(
    frames: np.ndarray,
    *,
    total_pixels: int = DEFAULT_TOTAL_PIXELS,
    max_pixels_per_frame: int | None = None,
    min_pixels_per_frame: int = DEFAULT_MIN_PIXELS_PER_FRAME,
    factor: int = 28,
) -> np.ndarray:
    """Resize all frames to one size (H', W'), multiples of ``factor``, with T*H'*W' <= total_pixels.

    The aspect ratio is kept as closely as the rounding allows (the rule of Qwen's
    ``smart_resize``, with the per-frame cap ``total_pixels // T``). Frames already at
    the target size are copied unchanged.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
    Returns:
        (T, H', W', 3) uint8, a new array.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w = frames.shape[:3]
    if t == 0 or h == 0 or w == 0:
        raise ValueError(f"frames must be non-empty, got shape {frames.shape}")
    cap = total_pixels // t
    if max_pixels_per_frame is not None:
        cap = min(cap, max_pixels_per_frame)
    if cap < max(min_pixels_per_frame, factor * factor):
        raise ValueError(
            f"{t} frames leave {cap} pixels per frame under total_pixels={total_pixels}, below the "
            f"minimum {max(min_pixels_per_frame, factor * factor)}: sample fewer frames"
        )
    new_h, new_w = _budget_size(h, w, factor, min_pixels_per_frame, cap)
    if (new_h, new_w) == (h, w):
        return frames.copy()
    import cv2

    interp = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (new_w, new_h), interpolation=interp) for f in frames])


def _budget_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"aspect ratio {max(h, w) / min(h, w):.0f} is above 200 ({h}x{w})")
    new_h = max(factor, round(h / factor) * factor)
    new_w = max(factor, round(w / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        new_h = max(factor, math.floor(h / beta / factor) * factor)
        new_w = max(factor, math.floor(w / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        new_h = math.ceil(h * beta / factor) * factor
        new_w = math.ceil(w * beta / factor) * factor
        if new_h * new_w > max_pixels:
            raise ValueError(f"cannot fit {h}x{w} into [{min_pixels}, {max_pixels}] pixels")
    return new_h, new_w


def sample_indices(
    num_stored: int, out_fps: float, fps: float = 2.0, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """Indices of the stored frames to feed the model, and their effective rate.

    Stride ``round(out_fps / fps)`` (at least 1), widened until at most ``max_frames``
    frames remain; the count is then made even for the temporal patch of 2: an odd
    count drops its last frame, a single frame is repeated.

    Returns:
        (T,) int64 indices (non-decreasing; repeated only when one frame exists) and
        the effective fps ``out_fps / stride``.
    """
    if num_stored <= 0:
        raise ValueError("the video has no stored frames")
    if not (out_fps > 0 and fps > 0):
        raise ValueError(f"out_fps and fps must be > 0, got {out_fps} and {fps}")
    if max_frames is not None and max_frames < 2:
        raise ValueError(f"max_frames must be >= 2 (one temporal patch), got {max_frames}")
    stride = max(1, round(out_fps / fps))
    if max_frames is not None:
        stride = max(stride, math.ceil(num_stored / max_frames))
    idx = np.arange(0, num_stored, stride, dtype=np.int64)
    if len(idx) == 1:
        idx = np.repeat(idx, 2)
    elif len(idx) % 2:
        idx = idx[:-1]
    return idx, float(out_fps) / stride


def _decode(jpegs: Sequence[bytes], idx: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(jpegs[i])).convert("RGB")) for i in idx])


@dataclass(frozen=True)
class GroundingSample:
    """One query with its video, ready for prompting.

    Attributes:
        video: the shard row (tracks, all queries, stored JPEGs).
        query: the query to answer (``target_ids`` = ground-truth IDs, ``span_s`` = time span).
        frames: (T, H', W', 3) uint8 RGB, T even, already fitted to the pixel budget.
        frame_times_s: (T,) float32 time of each frame, seconds from the clip start.
        fps: effective rate of ``frames`` (what the processor is told).
        duration_s: length of the clip covered by the stored frames (count / out_fps).
        index: position in the dataset.
    """

    video: ShardVideo
    query: QueryRecord
    frames: np.ndarray
    frame_times_s: np.ndarray
    fps: float
    duration_s: float
    index: int


class GroundingDataset:
    """Queries of Parquet shards as :class:`GroundingSample` (a map-style torch Dataset).

    ``shards``: a shard file, a folder (searched recursively) or a list of either.

    Use ``DataLoader(..., collate_fn=list)``: samples hold variable-size frames.
    """

    def __init__(
        self,
        shards: str | Path | list,
        *,
        fps: float = 2.0,
        max_frames: int | None = 32,
        total_pixels: int = DEFAULT_TOTAL_PIXELS,
        only_matched: bool = True,
    ):
        if isinstance(shards, list | tuple):  # files or folders, each expanded to its shards
            shards = [path for entry in shards for path in list_shards(entry)]
        self.index = ShardIndex(shards, only_matched=only_matched)
        self.fps = fps
        self.max_frames = max_frames
        self.total_pixels = total_pixels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> GroundingSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} queries")
        i = i % len(self)
        video, query = self.index[i]
        return make_sample(
            video, query, fps=self.fps, max_frames=self.max_frames,
            total_pixels=self.total_pixels, index=i,
        )  # fmt: skip


def make_sample(
    video: ShardVideo,
    query: QueryRecord,
    *,
    fps: float = 2.0,
    max_frames: int | None = 32,
    total_pixels: int = DEFAULT_TOTAL_PIXELS,
    index: int = 0,
) -> GroundingSample:
    """One model input: frames sampled at ``fps`` (at most ``max_frames``), fitted to the
    pixel budget. Shared by training, evaluation and prediction."""
    idx, fps_eff = sample_indices(len(video.frames), video.out_fps, fps, max_frames)
    frames = fit_to_budget(_decode(video.frames, idx), total_pixels=total_pixels)
    times = np.asarray(video.frame_times_s, np.float32)[idx]
    return GroundingSample(
        video=video,
        query=query,
        frames=frames,
        frame_times_s=times,
        fps=fps_eff,
        duration_s=len(video.frames) / float(video.out_fps),
        index=index,
    )


def video_metadata(num_frames: int, fps: float) -> dict:
    """Metadata for frames that are already sampled at ``fps`` (keys of transformers' VideoMetadata)."""
    return {
        "fps": float(fps),
        "total_num_frames": int(num_frames),
        "frames_indices": list(range(int(num_frames))),
        "duration": num_frames / float(fps),
    }


def check_video_prompt(prompt_text: str) -> None:
    """Raise unless ``prompt_text`` holds exactly one unexpanded video placeholder."""
    n = prompt_text.count("<|video_pad|>")
    if n != 1 or VIDEO_PLACEHOLDER not in prompt_text:
        raise ValueError(
            f"the prompt must contain exactly one {VIDEO_PLACEHOLDER!r} (found {n} <|video_pad|>); "
            "build it with the chat template and one {'type': 'video'} content item"
        )


def video_inputs(processor, prompt_text: str, frames: np.ndarray, fps: float):
    """Processor tensors for one chat-templated prompt and its (already fitted) frames.

    Returns a ``BatchFeature`` with input_ids (1, S), attention_mask (1, S),
    mm_token_type_ids (1, S), pixel_values_videos (P, C*2*14*14), video_grid_thw (1, 3)
    and second_per_grid_ts (1,) == temporal_patch_size / fps.
    """
    check_video_prompt(prompt_text)
    frames = np.asarray(frames)
    vp = processor.video_processor
    factor = vp.patch_size * vp.merge_size
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % factor or frames.shape[2] % factor:
        raise ValueError(
            f"frame size {frames.shape[1]}x{frames.shape[2]} is not a multiple of {factor}: "
            "call fit_to_budget first"
        )
    kwargs = {}
    if hasattr(vp, "cap_pixels_per_frame"):
        kwargs["cap_pixels_per_frame"] = False  # irrelevant without resize; silences a warning
    out = processor(
        text=[prompt_text],
        videos=[frames],
        video_metadata=[video_metadata(len(frames), fps)],
        do_resize=False,
        do_sample_frames=False,
        return_tensors="pt",
        **kwargs,
    )
    return out
