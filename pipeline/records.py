"""The records every stage passes on: a video, its queries with ground truth, and tracks.

Adapters yield :class:`VideoRecord` (ground truth in the *native* frame size and
seconds from the clip's first stored frame); the pipeline produces :class:`Track` objects
(in the *stored* frame size) and writes both to shards. Arrays are validated on
construction and never mutated afterwards (frozen dataclasses, copies on input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QTYPES = ("referring", "declarative", "interrogative")


def _f32(a, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float32, copy=True)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(
            f"{name} must have shape (N, {', '.join(map(str, shape_tail))}), got {arr.shape}"
        )
    arr.setflags(write=False)
    return arr


def _times(a, name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float32, copy=True).reshape(-1)
    if arr.size and not np.all(np.diff(arr) > 0):
        raise ValueError(f"{name} must be strictly increasing")
    arr.setflags(write=False)
    return arr


def _check_masks(masks_rle: Sequence[str | None] | None, n: int, name: str) -> tuple | None:
    if masks_rle is None:
        return None
    masks = tuple(masks_rle)
    if len(masks) != n:
        raise ValueError(f"{name}: {len(masks)} masks for {n} boxes")
    return masks


@dataclass(frozen=True)
class GTObject:
    """Ground truth of one target object of a query.

    Attributes:
        object: the dataset's object id (MeViS obj_id, VidSTG tid, 0 for HC-STVG).
        times_s: (N,) float32, strictly increasing annotated times in seconds.
        xyxy: (N, 4) float32 boxes in pixels, one per time.
        masks_rle: N COCO RLE counts strings (frame size of the record) or None
            per absent frame; ``None`` when the dataset has no masks.
    """

    object: int
    times_s: np.ndarray
    xyxy: np.ndarray
    masks_rle: tuple[str | None, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "times_s", _times(self.times_s, "GTObject.times_s"))
        object.__setattr__(self, "xyxy", _f32(self.xyxy, (4,), "GTObject.xyxy"))
        if len(self.times_s) != len(self.xyxy):
            raise ValueError(
                f"GTObject {self.object}: {len(self.times_s)} times but {len(self.xyxy)} boxes"
            )
        object.__setattr__(
            self, "masks_rle", _check_masks(self.masks_rle, len(self.times_s), "GTObject")
        )


@dataclass(frozen=True)
class QueryRecord:
    """One sentence about a video and its ground truth.

    Attributes:
        query_id: unique within the video.
        text: the referring expression, caption or question.
        qtype: one of ``QTYPES``.
        span_s: (start, end) seconds of the ground-truth span.
        gt: one :class:`GTObject` per target object (several for MeViS).
        target_ids: track IDs matched to ``gt`` (filled by the pipeline; empty if unmatched).
        match_iou: mean IoU of the matched tracks against ``gt`` (NaN before matching).
    """

    query_id: str
    text: str
    qtype: str
    span_s: tuple[float, float]
    gt: tuple[GTObject, ...] = ()
    target_ids: tuple[int, ...] = ()
    match_iou: float = float("nan")

    def __post_init__(self):
        if self.qtype not in QTYPES:
            raise ValueError(f"qtype must be one of {QTYPES}, got {self.qtype!r}")
        start, end = (float(x) for x in self.span_s)
        if not end >= start:
            raise ValueError(f"query {self.query_id}: span_s end {end} < start {start}")
        object.__setattr__(self, "span_s", (start, end))
        object.__setattr__(self, "gt", tuple(self.gt))
        object.__setattr__(self, "target_ids", tuple(int(i) for i in self.target_ids))


@dataclass(frozen=True)
class VideoRecord:
    """One video as an adapter describes it (nothing decoded yet).

    Attributes:
        video_id, dataset, split: identity.
        source: a video file (mp4/avi/mkv/...) or a folder of JPEG frames.
        fps: native frame rate (for JPEG folders, the dataset's nominal rate).
        width, height: native frame size in pixels (None if unknown before decoding).
        frame_files: for JPEG folders, the frame file names in order (None for files).
        queries: the video's queries; ground truth in native pixels and in seconds
            relative to ``clip_start_s``.
        clip_start_s, clip_end_s: the used segment of a longer video (VidSTG); decoding
            yields only frames inside it, with times relative to its start.
        mot_gt: a MOTChallenge ``gt.txt`` with every object's identity and box per native
            frame (frames from 1, native pixels), or None; with it, the pipeline scores its
            tracks with MOT metrics (:mod:`pipeline.mot`).
    """

    video_id: str
    dataset: str
    split: str
    source: Path
    fps: float
    width: int | None = None
    height: int | None = None
    frame_files: tuple[str, ...] | None = None
    queries: tuple[QueryRecord, ...] = field(default_factory=tuple)
    clip_start_s: float = 0.0
    clip_end_s: float | None = None
    mot_gt: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "source", Path(self.source))
        if self.mot_gt is not None:
            object.__setattr__(self, "mot_gt", Path(self.mot_gt))
        if self.clip_end_s is not None and not self.clip_end_s > self.clip_start_s:
            raise ValueError(
                f"video {self.video_id}: clip_end_s {self.clip_end_s} <= clip_start_s {self.clip_start_s}"
            )
        if not self.fps > 0:
            raise ValueError(f"video {self.video_id}: fps must be > 0, got {self.fps}")
        object.__setattr__(self, "queries", tuple(self.queries))
        if self.frame_files is not None:
            object.__setattr__(self, "frame_files", tuple(self.frame_files))


def frame_file_times(frame_files: Sequence[str], fps: float) -> np.ndarray:
    """Clip-relative times (s) of JPEG-folder frames: 0 at the first stored frame.

    Numeric stems are native frame numbers (Ref-YouTube-VOS steps by 5, and 73 of its
    507 ``valid`` videos start after ``00000``), so a frame sits at ``(number - first
    number) / fps``; otherwise the list position is used. (N,) float64. Adapters and the
    decoder both time frames with this, so ground truth, stored frame times, the
    prompt's duration and the metrics share one clock.
    """
    stems = [Path(f).stem for f in frame_files]
    if stems and all(s.isdigit() for s in stems):
        numbers = np.array([int(s) for s in stems], dtype=np.float64)
        return (numbers - numbers[0]) / fps
    return np.arange(len(stems), dtype=np.float64) / fps


@dataclass(frozen=True)
class Track:
    """One tracked object, in the stored frame size.

    Attributes:
        id: small consecutive ID (1..K by first appearance) drawn on the frames.
        class_name: detector class.
        times_s: (N,) float32 observed times (at ``track_fps``).
        xyxy: (N, 4) float32 boxes.
        masks_rle: N RLE counts strings (or None per frame), or None without masks.
    """

    id: int
    class_name: str
    times_s: np.ndarray
    xyxy: np.ndarray
    masks_rle: tuple[str | None, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "times_s", _times(self.times_s, "Track.times_s"))
        object.__setattr__(self, "xyxy", _f32(self.xyxy, (4,), "Track.xyxy"))
        if len(self.times_s) != len(self.xyxy):
            raise ValueError(
                f"Track {self.id}: {len(self.times_s)} times but {len(self.xyxy)} boxes"
            )
        object.__setattr__(
            self, "masks_rle", _check_masks(self.masks_rle, len(self.times_s), "Track")
        )

    def boxes_at(self, query_times_s: np.ndarray, max_gap_s: float) -> np.ndarray:
        """(M, 4) boxes at the given times; NaN rows where the track is absent."""
        from pipeline.geometry import interpolate_boxes

        return interpolate_boxes(self.times_s, self.xyxy, query_times_s, max_gap_s)
