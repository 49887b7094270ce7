"""Benchmark submission files from answered queries.

MeViS ``valid`` and Ref-YouTube-VOS ``valid`` are scored by the benchmarks' servers: they
take a zip of ``Annotations/<video>/<expression>/<frame>.png`` masks (non-zero =
foreground), one per frame of every expression, at the frames' own size. The masks are the
chosen tracks' masks inside the predicted span, or, when the shards hold no masks, the
tracks' boxes filled (a warning says so). HC-STVG and VidSTG predictions are written as JSON:
per query, the IDs, the span and the box of every native frame of the span, so that another
evaluator can score them.

Frame names, frame sizes and the full list of queries come from the raw dataset's records
(shards keep neither the native size nor the frame names).
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.records import VideoRecord, frame_file_times
from pipeline.shards import ShardVideo, atomic_file

FORMAT_NOTE = (
    "per query: ids, span_s [start, end) in seconds from the clip start, span_frames "
    "[first, end) native frame ids (frame_offset + the first frame at or after t: "
    "ceil(t * fps)), boxes {frame id: "
    "[x1, y1, x2, y2]} in native pixels where the chosen tracks have a box"
)


def write_submission(
    path: str | Path,
    records: Sequence[VideoRecord],
    items: Sequence[tuple[ShardVideo, object]],
    answers: Sequence[tuple],
    *,
    max_gap_s: float,
) -> Path:
    """Write the submission for ``records`` (every video and query of the raw split) from
    ``answers`` (``(ids, span_s, ...)`` per item of ``items``). Masks (a ``.zip``) for
    JPEG-folder datasets, boxes (a ``.json``) for video datasets. Queries with no answer
    (not preprocessed, or past ``--limit``) get empty masks / no boxes, with a warning."""
    path = Path(path)
    check_path(path, records)
    masks = records[0].frame_files is not None
    videos = {v.video_id: v for v, _ in items}
    answered = {(v.video_id, q.query_id): (a[0], a[1]) for (v, q), a in zip(items, answers)}
    missing = sum((r.video_id, q.query_id) not in answered for r in records for q in r.queries)
    if missing:
        warnings.warn(
            f"{missing} queries of the split have no answer: written as empty", stacklevel=2
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if masks:
        return _write_masks(path, records, videos, answered, max_gap_s)
    return _write_boxes(path, records, videos, answered, max_gap_s)


def check_path(path: str | Path, records: Sequence[VideoRecord]) -> None:
    """Raise ValueError unless ``path`` names the file kind the records' dataset takes:
    ``.zip`` (mask PNGs) for JPEG-folder datasets, ``.json`` (boxes) for video datasets."""
    if not records:
        raise ValueError("no records: nothing to write a submission for")
    masks = records[0].frame_files is not None
    want = ".zip" if masks else ".json"
    if Path(path).suffix != want:
        kind = "mask PNGs" if masks else "per-frame boxes"
        raise ValueError(f"{records[0].dataset} submissions are {kind}: name the file *{want}")


def native_size(record: VideoRecord) -> tuple[int, int]:
    """(H, W) of the record's frames: from the annotation, else the first JPEG."""
    if record.width and record.height:
        return int(record.height), int(record.width)
    from PIL import Image

    with Image.open(Path(record.source) / record.frame_files[0]) as im:
        return im.height, im.width


def predicted_mask(
    video: ShardVideo | None, ids, span_s, t: float, hw: tuple[int, int], max_gap_s: float
) -> np.ndarray:
    """(H, W) bool at native size: the union of the chosen tracks' masks (or filled boxes
    when they have no masks) at ``t`` inside the closed span; empty elsewhere."""
    import cv2

    from pipeline.geometry import resize_mask
    from trainer.protocols import track_mask_at

    out = np.zeros(hw, dtype=bool)
    if video is None or span_s is None or not span_s[0] <= t <= span_s[1]:
        return out
    stored = (video.height, video.width)
    for track in (tr for tr in video.tracks if tr.id in {int(i) for i in ids}):
        if track.masks_rle is not None:
            m = track_mask_at(track, t, max_gap_s, stored)
            out |= resize_mask(m, *hw) if m.shape != hw else m
            continue
        box = track.boxes_at(np.array([t]), max_gap_s)[0]
        if np.isfinite(box).all():
            sx, sy = hw[1] / video.width, hw[0] / video.height
            x1, y1, x2, y2 = (round(float(v)) for v in box * [sx, sy, sx, sy])
            fill = np.zeros(hw, np.uint8)
            cv2.rectangle(fill, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), 1, thickness=-1)
            out |= fill.astype(bool)
    return out


def _png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_masks(path, records, videos, answered, max_gap_s) -> Path:
    if any(v.tracks and any(t.masks_rle is None for t in v.tracks) for v in videos.values()):
        warnings.warn("the shards hold no track masks: the submission's masks are the chosen "
                      "tracks' boxes, filled", stacklevel=3)  # fmt: skip
    with atomic_file(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for rec in records:
            hw = native_size(rec)
            times = frame_file_times(rec.frame_files, rec.fps)
            video = videos.get(rec.video_id)
            for q in rec.queries:
                ids, span = answered.get((rec.video_id, q.query_id), ((), None))
                for name, t in zip(rec.frame_files, times):
                    mask = predicted_mask(video, ids, span, float(t), hw, max_gap_s)
                    member = f"Annotations/{rec.video_id}/{q.query_id}/{Path(name).stem}.png"
                    zf.writestr(member, _png(mask))
    return path


def _write_boxes(path, records, videos, answered, max_gap_s) -> Path:
    out = {"format": FORMAT_NOTE, "videos": {}}
    for rec in records:
        video = videos.get(rec.video_id)
        offset = round(rec.clip_start_s * rec.fps)
        entry = {"source": Path(rec.source).name, "fps": rec.fps, "frame_offset": offset,
                 "width": rec.width, "height": rec.height, "queries": {}}  # fmt: skip
        for q in rec.queries:
            ids, span = answered.get((rec.video_id, q.query_id), ((), None))
            entry["queries"][q.query_id] = _query_boxes(video, rec, ids, span, offset, max_gap_s)
        out["videos"][rec.video_id] = entry
    with atomic_file(path, "w") as f:
        json.dump(out, f)
    return path


def _query_boxes(video, rec, ids, span, offset: int, max_gap_s: float) -> dict:
    """The JSON of one query: ids, span, and the chosen tracks' (union) box per native
    frame of the half-open span, scaled to the native size."""
    entry = {"ids": [int(i) for i in ids], "span_s": None, "span_frames": None, "boxes": {}}
    if span is None:
        return entry
    entry["span_s"] = [round(float(span[0]), 6), round(float(span[1]), 6)]
    first, end = math.ceil(span[0] * rec.fps - 1e-6), math.ceil(span[1] * rec.fps - 1e-6)
    entry["span_frames"] = [offset + first, offset + end]
    chosen = [] if video is None else [t for t in video.tracks if t.id in set(entry["ids"])]
    if not chosen or end <= first:
        return entry
    times = np.arange(max(first, 0), end) / rec.fps  # (F,)
    boxes = np.stack([t.boxes_at(times, max_gap_s) for t in chosen])  # (K, F, 4)
    here = np.isfinite(boxes).all(axis=2)  # (K, F)
    sx = (rec.width or video.width) / video.width
    sy = (rec.height or video.height) / video.height
    scale = np.array([sx, sy, sx, sy])
    for j in np.flatnonzero(here.any(axis=0)):
        b = boxes[here[:, j], j]  # (k, 4) present tracks
        union = np.array([*b[:, :2].min(0), *b[:, 2:].max(0)]) * scale
        entry["boxes"][str(offset + max(first, 0) + int(j))] = [round(float(v), 2) for v in union]
    return entry
