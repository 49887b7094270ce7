"""MOT metrics against MOTChallenge ground truth: IDF1, ID switches, fragmentations.

Scores come from ``motmetrics`` (its accumulator and metrics host); a hypothesis box
matches a ground-truth box at IoU >= 0.5 (:data:`MOT_IOU`). Per video, only counts are
kept (:data:`COUNT_FIELDS`: ``idtp``, ``idfp``, ``idfn``, switches, fragmentations, ...), so
that videos scored apart can be summed and scored together: IDF1 =
2 IDTP / (2 IDTP + IDFP + IDFN) and MOTA = 1 - (misses + false positives + switches) /
objects over the sum are what ``motmetrics``' ``compute_many(..., generate_overall=True)``
gives for the same videos. Boxes are ``(id, xyxy)`` pairs per frame index
(:data:`FrameBoxes`).

Two trackers are scored on the same detections: ``bytetrack``, Ultralytics' ByteTrack as
``bytetrack.yaml`` configures it with its own Kalman state, IDs as it outputs them
(:class:`ByteTrackAlone`); and ``pipeline``, the preprocessing's final tracks
(:func:`tracks_on_frames`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import motmetrics
    import supervision as sv

    from pipeline.records import Track

MOT_IOU = 0.5
"""A hypothesis box matches a ground-truth box at IoU >= this (as in MOTChallenge)."""

COUNT_FIELDS = (
    "num_frames",
    "num_objects",
    "num_matches",
    "num_false_positives",
    "num_misses",
    "num_switches",
    "num_fragmentations",
    "idtp",
    "idfp",
    "idfn",
)
"""The per-video counts (``motmetrics`` metric names); each sums over videos."""

TRACKERS = ("bytetrack", "pipeline")
"""What is scored per video: ByteTrack alone, and the pipeline's final tracks."""

FrameBoxes = dict[int, list[tuple[int, np.ndarray]]]
"""frame index -> [(object or track id, (4,) float64 xyxy box in pixels)]."""


class MotGroundTruthError(ValueError):
    """A MOTChallenge gt.txt that cannot be read."""


def read_mot_gt(path: str | Path) -> FrameBoxes:
    """Frame index (0-based) -> [(id, xyxy)] from a MOTChallenge ``gt.txt``.

    Rows are ``frame, id, x, y, w, h[, conf, ...]`` with frames from 1; a row whose 7th
    field is below 1 is left out (MOTChallenge's "ignore" flag, as ``motmetrics``'
    ``min_confidence=1``). Coordinates are taken as written (``motmetrics``' loader
    subtracts 1 from x and y for 1-based pixels; :mod:`pipeline.synthetic.hard` writes
    0-based ones). Raises :class:`MotGroundTruthError` naming the file and line of a
    malformed row, a frame below 1, a negative size or an id twice in one frame.
    """
    path = Path(path)
    out: FrameBoxes = {}
    seen: set[tuple[int, int]] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            values = [float(v) for v in fields[:7]]
        except ValueError:
            values = []
        if len(values) < 6 or not np.all(np.isfinite(values)):
            raise MotGroundTruthError(
                f"{path}:{n}: expected 'frame, id, x, y, w, h, ...' numbers, got {line!r}"
            )
        f, i, x, y, w, h = values[:6]
        if f < 1 or w < 0 or h < 0:
            raise MotGroundTruthError(
                f"{path}:{n}: frames count from 1 and sizes are >= 0, got frame {f:g}, "
                f"size {w:g}x{h:g}"
            )
        if len(values) > 6 and values[6] < 1:
            continue
        key = (int(f) - 1, int(i))
        if key in seen:
            raise MotGroundTruthError(f"{path}:{n}: id {key[1]} twice in frame {int(f)}")
        seen.add(key)
        out.setdefault(key[0], []).append((key[1], np.array([x, y, x + w, y + h])))
    return out


def accumulate(gt: FrameBoxes, hyp: FrameBoxes, n_frames: int) -> motmetrics.MOTAccumulator:
    """A ``motmetrics`` accumulator over frames ``0 .. n_frames - 1``; a pair matches at
    IoU >= :data:`MOT_IOU`.

    The distance is 1 - IoU, NaN below the threshold (what
    ``motmetrics.distances.iou_matrix`` computes; that function calls ``np.asfarray``,
    gone in NumPy 2, so the IoU comes from :func:`pipeline.geometry.box_iou`).
    """
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for k in range(n_frames):
        g = gt.get(k, [])
        h = hyp.get(k, [])
        dist = _iou_distance([b for _, b in g], [b for _, b in h])
        dist[dist > 1.0 - MOT_IOU] = np.nan
        acc.update([i for i, _ in g], [i for i, _ in h], dist)
    return acc


def _iou_distance(gt_boxes, hyp_boxes) -> np.ndarray:
    """(G, H) 1 - IoU between two lists of xyxy boxes."""
    from pipeline.geometry import box_iou

    gb = np.array(gt_boxes, dtype=np.float64).reshape(-1, 4)
    hb = np.array(hyp_boxes, dtype=np.float64).reshape(-1, 4)
    return 1.0 - box_iou(gb, hb)


def mot_counts(acc: motmetrics.MOTAccumulator) -> dict[str, int]:
    """:data:`COUNT_FIELDS` of one accumulator, from ``motmetrics``' metrics host."""
    import motmetrics as mm

    df = mm.metrics.create().compute(acc, metrics=list(COUNT_FIELDS), name="video")
    return {name: int(df[name].iloc[0]) for name in COUNT_FIELDS}


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Field-wise sum of per-video counts (every :data:`COUNT_FIELDS` entry required)."""
    total = dict.fromkeys(COUNT_FIELDS, 0)
    for c in counts:
        missing = [name for name in COUNT_FIELDS if name not in c]
        if missing:
            raise ValueError(f"MOT counts miss {missing}: {dict(c)}")
        for name in COUNT_FIELDS:
            total[name] += int(c[name])
    return total


def scores(counts: Mapping[str, int]) -> dict[str, float | None]:
    """IDF1 and MOTA of (summed) counts; None where the denominator is 0.

    IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN); MOTA = 1 - (misses + false positives +
    switches) / objects (``motmetrics``' definitions).
    """
    ids = 2 * counts["idtp"] + counts["idfp"] + counts["idfn"]
    errors = counts["num_misses"] + counts["num_false_positives"] + counts["num_switches"]
    return {
        "idf1": 2 * counts["idtp"] / ids if ids else None,
        "mota": 1.0 - errors / counts["num_objects"] if counts["num_objects"] else None,
    }


# ------------------------------------------------------------------ the two trackers


class ByteTrackAlone:
    """Ultralytics' ByteTrack as ``bytetrack.yaml`` configures it (its XYAH Kalman state,
    no cleaning, IDs as it outputs them), fed one frame at a time; ``boxes`` is what it
    output on each frame so far (frame index = order of :meth:`update` calls)."""

    def __init__(self, frame_rate: float):
        from pipeline.track import Tracker, TrackerConfig

        self._tracker = Tracker(TrackerConfig.from_bytetrack_yaml(kalman="xyah"), frame_rate)
        self.boxes: FrameBoxes = {}

    def update(self, time_s: float, detections: sv.Detections) -> None:
        tracked = self._tracker.update(detections, time_s)
        self.boxes[len(self.boxes)] = [
            (int(i), np.asarray(b, np.float64)) for i, b in zip(tracked.tracker_id, tracked.xyxy)
        ]


def bytetrack_alone(frames: Iterable[tuple[float, sv.Detections]], fps: float) -> FrameBoxes:
    """frame -> [(id, xyxy)] of :class:`ByteTrackAlone` over ``(time_s, detections)``."""
    tracker = ByteTrackAlone(fps)
    for t, d in frames:
        tracker.update(t, d)
    return tracker.boxes


def tracks_on_frames(tracks: Sequence[Track], frame_times_s: Sequence[float]) -> FrameBoxes:
    """frame -> [(track id, xyxy)]: each track box on the frame nearest its time.

    A box half the shortest frame interval or more from every frame (one frame: 0.5 s)
    is on none of them.
    """
    times = np.asarray(frame_times_s, dtype=np.float64)
    out: FrameBoxes = {k: [] for k in range(len(times))}
    if not len(times):
        return out
    tol = 0.5 * float(np.min(np.diff(times))) if len(times) > 1 else 0.5
    from pipeline.geometry import nearest_index

    for tr in tracks:
        t = np.asarray(tr.times_s, dtype=np.float64)
        k = nearest_index(times, t, np.inf)
        for kk, dt, box in zip(k, np.abs(times[k] - t), tr.xyxy):
            if dt < tol:
                out[int(kk)].append((tr.id, np.asarray(box, np.float64)))
    return out


def true_ids_on_detections(gt: FrameBoxes, detections: Sequence[sv.Detections]) -> FrameBoxes:
    """frame -> [(ground-truth id, detection box)]: what a tracker that never errs on
    identity outputs from these detections, the most IDF1 any tracker on them can score.

    Each frame's detections are matched one to one to its ground-truth boxes at IoU >=
    :data:`MOT_IOU`, for the least total 1 - IoU (the distance :func:`accumulate` gives
    ``motmetrics``; Jonker-Volgenant from ``lap``); a matched detection takes the
    identity of its ground-truth box and the others are left out. Only a tracker that
    adds boxes the detector missed (interpolation, the border extension) can score above it.
    """
    import lap

    out: FrameBoxes = {}
    for k, dets in enumerate(detections):
        g = gt.get(k, [])
        boxes = np.asarray(dets.xyxy, np.float64).reshape(-1, 4)
        out[k] = []
        if not g or not len(boxes):
            continue
        dist = _iou_distance([b for _, b in g], boxes)
        _, x, _ = lap.lapjv(dist, extend_cost=True, cost_limit=1.0 - MOT_IOU + 1e-9)
        keep = [(i, j) for i, j in enumerate(x) if j >= 0 and dist[i, j] <= 1.0 - MOT_IOU]
        out[k] = [(g[i][0], boxes[j]) for i, j in keep]
    return out


def gt_on_frames(
    gt: FrameBoxes,
    frame_times_s: Sequence[float],
    native_fps: float,
    scale_xy: tuple[float, float] = (1.0, 1.0),
    clip_start_s: float = 0.0,
) -> FrameBoxes:
    """Native-rate ground truth on the processed frames: frame k (at ``frame_times_s[k]``
    seconds from ``clip_start_s``) gets the native frame ``round((clip_start_s + t) *
    native_fps)``'s boxes, scaled by ``scale_xy`` (stored over native size). Native frames
    that were not processed are not scored."""
    sx, sy = scale_xy
    scale = np.array([sx, sy, sx, sy])
    out: FrameBoxes = {}
    for k, t in enumerate(frame_times_s):
        native = round((clip_start_s + float(t)) * native_fps)
        out[k] = [(i, b * scale) for i, b in gt.get(native, [])]
    return out


def video_counts(gt: FrameBoxes, hyps: Mapping[str, FrameBoxes], n_frames: int) -> dict:
    """{tracker: :func:`mot_counts`} of each hypothesis against ``gt`` on ``n_frames``."""
    return {name: mot_counts(accumulate(gt, hyp, n_frames)) for name, hyp in hyps.items()}


def summary_line(block: Mapping | None) -> str | None:
    """One line of a manifest's ``tracking`` block (None without one)."""
    if not block:
        return None

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    b, p = block["bytetrack"], block["pipeline"]
    return (
        f"tracking ({block['videos']} videos with MOT ground truth, ByteTrack alone -> "
        f"pipeline): IDF1 {pct(b['idf1'])} -> {pct(p['idf1'])}, ID switches "
        f"{b['num_switches']} -> {p['num_switches']}, fragmentations "
        f"{b['num_fragmentations']} -> {p['num_fragmentations']}"
    )
