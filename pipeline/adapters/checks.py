"""Ground-truth checks shared by every adapter, applied by :func:`pipeline.datasets.iter_records`.

Per target object of a query, in native pixels:

* a box with a NaN or infinite coordinate is dropped (``nan``);
* a box whose right (bottom) edge does not lie right of (below) its left (top) edge,
  e.g. a negative or zero width in HC-STVG's xywh, is dropped (``inverted``), whether
  or not the frame size is known;
* a box is clipped to the frame (``clipped``, kept); one left with no area inside the
  frame is dropped (``outside``);
* an object with no box left is dropped, and a query with no object left is skipped,
  with the reason; an object that had no box at all (e.g. a MeViS object whose masks
  are empty in every frame) is dropped and counted (``empty_objects``);
* annotated times that end more than one frame before the span's end are counted
  (``short_frames``: real HC-STVG files end their boxes a few frames before
  ``ed_time``), the query is kept.

Each query with something to report gives one :class:`AnnotationProblem` (``skipped``
False when the query is kept) whose ``counts`` hold the numbers above; the pipeline
lists them in the manifest's ``annotation_problems``. The frame size comes from the
record, or from the video's header (:func:`pipeline.decode.probe`) when the adapter
does not know it (only to clip; the record is left as it is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from pipeline.adapters.base import AnnotationProblem, OnError
from pipeline.records import GTObject, QueryRecord, VideoRecord

DROPPED = ("nan", "inverted", "outside")


def check_boxes(
    xyxy: np.ndarray, size_wh: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(keep mask (N,), boxes clipped to the frame (N, 4), counts) for one object's boxes."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(xyxy).all(axis=1)
    with np.errstate(invalid="ignore"):
        inverted = finite & ((xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1]))
    ok = finite & ~inverted
    clipped = np.where(ok[:, None], xyxy, 0.0)
    outside = np.zeros(len(xyxy), bool)
    n_clipped = 0
    if size_wh is not None:
        w, h = size_wh
        lo, hi = np.array([0.0, 0.0, 0.0, 0.0]), np.array([w, h, w, h], dtype=np.float64)
        inside = np.clip(clipped, lo, hi)
        changed = ok & (inside != clipped).any(axis=1)
        outside = ok & ((inside[:, 2] <= inside[:, 0]) | (inside[:, 3] <= inside[:, 1]))
        n_clipped = int((changed & ~outside).sum())
        clipped = inside
    keep = ok & ~outside
    counts = {
        "nan": int((~finite).sum()),
        "inverted": int(inverted.sum()),
        "outside": int(outside.sum()),
        "clipped": n_clipped,
    }
    return keep, clipped.astype(np.float32), counts


def _check_object(g: GTObject, size_wh) -> tuple[GTObject | None, dict]:
    keep, boxes, counts = check_boxes(g.xyxy, size_wh)
    counts["empty_objects"] = int(len(keep) == 0)
    if not keep.any():  # no box left, or none to begin with
        return None, counts
    if keep.all() and not counts["clipped"]:
        return g, counts
    masks = None if g.masks_rle is None else tuple(m for m, k in zip(g.masks_rle, keep) if k)
    return GTObject(g.object, g.times_s[keep], boxes[keep], masks), counts


def _short_frames(q: QueryRecord, fps: float) -> int:
    """Frames between the last annotated time and the span's end, beyond one frame."""
    last = max((float(g.times_s[-1]) for g in q.gt if len(g.times_s)), default=None)
    if last is None:
        return 0
    missing = (q.span_s[1] - last) * fps - 1.0
    return max(round(missing), 0)


def check_query(q: QueryRecord, size_wh, fps: float) -> tuple[QueryRecord | None, dict, str]:
    """(the cleaned query or None when nothing valid is left, counts, reason)."""
    if not q.gt:
        return q, {}, ""
    total = {"boxes": 0, "nan": 0, "inverted": 0, "outside": 0, "clipped": 0, "empty_objects": 0}
    kept = []
    for g in q.gt:
        cleaned, counts = _check_object(g, size_wh)
        total["boxes"] += len(g.xyxy)
        for k, v in counts.items():
            total[k] += v
        if cleaned is not None:
            kept.append(cleaned)
    dropped = sum(total[k] for k in DROPPED) + total["empty_objects"]
    if not kept:
        return None, total, f"no valid box ({_describe(total)})"
    q = dataclasses.replace(q, gt=tuple(kept)) if dropped or total["clipped"] else q
    total["short_frames"] = _short_frames(q, fps)
    return q, total, _describe(total)


def _describe(counts: dict) -> str:
    parts = [f"{counts[k]} {k}" for k in (*DROPPED, "clipped") if counts.get(k)]
    out = f"of {counts['boxes']} boxes: " + ", ".join(parts) if parts else ""
    empty = counts.get("empty_objects")
    if empty:
        out += ("; " if out else "") + f"{empty} object{'s' * (empty > 1)} with no box"
    short = counts.get("short_frames")
    if short:
        out += ("; " if out else "") + f"boxes end {short} frames before the span's end"
    return out


def _frame_size(record: VideoRecord) -> tuple[int, int] | None:
    if record.width and record.height:
        return record.width, record.height
    from pipeline.decode import DecodeError, probe

    try:
        info = probe(record)
    except (DecodeError, OSError):
        return None  # the video fails when decoded, and is recorded then
    return info.width, info.height


def check_record(record: VideoRecord, report: OnError, source: str) -> VideoRecord | None:
    """The record with its ground truth checked (None: no query left, reported)."""
    if not any(q.gt for q in record.queries):
        return record
    size = _frame_size(record)
    queries = []
    for q in record.queries:
        cleaned, counts, reason = check_query(q, size, record.fps)
        if reason:
            report(AnnotationProblem(source, record.video_id, reason, q.query_id,
                                     skipped=cleaned is None, counts=counts))  # fmt: skip
        if cleaned is not None:
            queries.append(cleaned)
    if not queries:
        report(AnnotationProblem(source, record.video_id, "no query with valid ground truth"))
        return None
    return dataclasses.replace(record, queries=tuple(queries))


def checked(records: Iterable[VideoRecord], report: OnError, source: str) -> Iterator[VideoRecord]:
    """:func:`check_record` over an adapter's records, lazily."""
    for record in records:
        out = check_record(record, report, source)
        if out is not None:
            yield out
