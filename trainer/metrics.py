"""Grounding metrics, defined once for rewards and evaluation: tIoU, vIoU, J&F, summaries.

Conventions (docs/DESIGN.md "Metrics" names the evaluator each one comes from):
- Spans are continuous ``(start_s, end_s)`` in seconds from the clip's first frame;
  tIoU = |P ∩ G| / |P ∪ G|.
- vIoU is the official one (:func:`tube_viou`, the TubeDETR/STCAT/CG-STVG evaluators):
  over the *evaluated frames* (:func:`evaluation_times`), S_u = frames with
  min(starts) <= t < max(ends) and S_i = frames with max(starts) <= t < min(ends);
  vIoU = Σ_{t ∈ S_i, both boxes present} IoU / |S_u|. A frame of S_u without a predicted
  box counts with IoU 0, and so does every frame between two disjoint spans.
- vIoU@R counts a sample when its vIoU is *strictly* greater than R.
- Predicted tubes are read from the stored tracks with :meth:`Track.boxes_at`
  (linear interpolation, nothing across long gaps), so vIoU does not depend on the
  rate at which objects were tracked.
- Several targets (MeViS expressions naming several objects): both tubes are the
  per-time *union box* of their objects. STVG benchmarks are single-target, where this
  is the plain definition; for multi-object queries it is the box analogue of MeViS's
  union mask, and it avoids choosing an assignment between predicted and true objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pipeline.geometry import mask_iou, paired_box_iou
from pipeline.records import QueryRecord, Track
from pipeline.shards import ShardVideo

DEFAULT_MAX_GAP_S = 0.5  # the preprocessing default for interpolating across track gaps
BOUNDARY_TOLERANCE = 0.008  # F-measure tolerance as a fraction of the image diagonal (DAVIS)
FRAME_GRID = (
    "every native frame (k / native fps) in the union of the predicted and ground-truth "
    "spans, half-open; annotated frames at their ground-truth times"
)
JF_GRID = (
    "the stored frames (out_fps) at the stored size: an approximation of the DAVIS/MeViS "
    "toolkit, which scores every annotated frame at native size (submission files are scored "
    "by the benchmark servers that way)"
)
SPAN_TOLERANCE_S = 1e-3  # a frame time this close to a span end is on it (float32 shard times)


def valid_span(span_s) -> tuple[float, float] | None:
    """``(start, end)`` as floats, or None for a missing, non-finite or reversed span."""
    if span_s is None:
        return None
    try:
        start, end = (float(x) for x in span_s)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        return None
    return start, end


def temporal_iou(pred_span_s, gt_span_s) -> float:
    """IoU of two ``(start_s, end_s)`` spans; 0 if either is None, reversed, non-finite
    or if the union has zero length."""
    p, g = valid_span(pred_span_s), valid_span(gt_span_s)
    if p is None or g is None:
        return 0.0
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (p[1] - p[0]) + (g[1] - g[0]) - inter
    return float(inter / union) if union > 0 else 0.0


def _present(box) -> bool:
    if box is None:
        return False
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    return b.size == 4 and bool(np.isfinite(b).all())


def tube_viou(
    pred_span_s,
    pred_xyxy: Mapping[float, np.ndarray | None],
    gt_span_s,
    gt_xyxy: Mapping[float, np.ndarray | None],
    times_s,
) -> float:
    """The official vIoU of one prediction: Σ_{t ∈ S_i, both boxes present} IoU / |S_u|.

    Args:
        pred_span_s, gt_span_s: ``(start_s, end_s)``; ``None`` (or an invalid span) for no
            prediction / no ground truth.
        pred_xyxy, gt_xyxy: box at a time of ``times_s`` (looked up by equal value); a
            missing key, ``None`` or a non-finite box is absent.
        times_s: (T,) the evaluated frame times.

    S_u = times with min(starts) <= t < max(ends), S_i = times with max(starts) <= t <
    min(ends) (half-open, as the evaluators treat frame ids; a time within
    ``SPAN_TOLERANCE_S`` of a span end counts as on it). Returns 0 when S_u is empty or
    either span is missing.
    """
    p, g = valid_span(pred_span_s), valid_span(gt_span_s)
    if p is None or g is None:
        return 0.0
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)  # (T,)
    tol = SPAN_TOLERANCE_S
    in_union = (times >= min(p[0], g[0]) - tol) & (times < max(p[1], g[1]) - tol)  # (T,)
    n_union = int(in_union.sum())
    if n_union == 0:
        return 0.0
    in_inter = (times >= max(p[0], g[0]) - tol) & (times < min(p[1], g[1]) - tol)  # (T,)
    pairs = [
        (pred_xyxy.get(t), gt_xyxy.get(t))
        for t in times[in_inter].tolist()
        if _present(pred_xyxy.get(t)) and _present(gt_xyxy.get(t))
    ]
    if not pairs:
        return 0.0
    a = np.stack([np.asarray(pb, dtype=np.float64).reshape(4) for pb, _ in pairs])  # (K, 4)
    b = np.stack([np.asarray(gb, dtype=np.float64).reshape(4) for _, gb in pairs])  # (K, 4)
    return float(paired_box_iou(a, b).sum() / n_union)


def _union_box(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) -> (4,) smallest box containing every box."""
    return np.array([*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)], dtype=np.float32)


def predicted_tube(
    tracks: Sequence[Track],
    ids: Sequence[int],
    span_s: tuple[float, float] | None,
    times_s: np.ndarray,
    *,
    max_gap_s: float,
) -> dict[float, np.ndarray | None]:
    """The predicted box at each of ``times_s`` (T,): union box of the predicted IDs'
    tracks present at that time, only inside the predicted span; None elsewhere.

    IDs without a track are ignored (they predict nothing); no span or no IDs gives an
    all-None tube.
    """
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    out: dict[float, np.ndarray | None] = {float(t): None for t in times}
    span = valid_span(span_s)
    by_id = {t.id: t for t in tracks}
    chosen = [by_id[i] for i in dict.fromkeys(int(i) for i in ids) if i in by_id]
    if span is None or not chosen or times.size == 0:
        return out
    inside = (times >= span[0]) & (times <= span[1])  # (T,)
    boxes = np.stack([t.boxes_at(times, max_gap_s) for t in chosen]).astype(np.float64)  # (K, T, 4)
    here = np.isfinite(boxes).all(axis=2)  # (K, T)
    lo = np.where(here[..., None], boxes[..., :2], np.inf).min(axis=0)  # (T, 2)
    hi = np.where(here[..., None], boxes[..., 2:], -np.inf).max(axis=0)  # (T, 2)
    union = np.concatenate([lo, hi], axis=1).astype(np.float32)  # (T, 4)
    for j in np.flatnonzero(inside & here.any(axis=0)):
        out[float(times[j])] = union[j]
    return out


def gt_tube(query: QueryRecord) -> dict[float, np.ndarray]:
    """Ground-truth box per annotated time: the union box over the query's objects."""
    per_time: dict[float, list[np.ndarray]] = {}
    for obj in query.gt:
        for t, box in zip(obj.times_s, obj.xyxy):
            if np.isfinite(box).all():
                per_time.setdefault(float(t), []).append(box)
    return {t: _union_box(np.stack(b)) for t, b in sorted(per_time.items())}


def evaluation_times(video: ShardVideo, query: QueryRecord) -> np.ndarray:
    """(T,) float64 evaluated frame times, as the HC-STVG and VidSTG evaluators sample them:
    every native frame ``k / native_fps`` of the clip, with each annotated ground-truth time
    standing in for the native frame it falls on (:data:`FRAME_GRID` says it in words).

    :func:`tube_viou` keeps the ones inside the union of the spans, so predicted frames
    outside the ground-truth span count in |S_u|; the grid ends at the clip's last frame
    (stored frame, track observation or annotation), so a span running past the clip adds
    no frames that do not exist.
    """
    gt_times = np.unique(
        np.concatenate([np.asarray(o.times_s, dtype=np.float32) for o in query.gt] or [[]])
    )
    gt_times = gt_times.astype(np.float64)  # exact float32 values, as gt_tube keys them
    rate = video.native_fps if video.native_fps and video.native_fps > 0 else video.out_fps
    step = 1.0 / float(rate)
    ends = [query.span_s[1]]
    if len(video.frame_times_s):
        ends.append(float(video.frame_times_s[-1]))
    if gt_times.size:
        ends.append(float(gt_times[-1]))
    ends += [float(t.times_s[-1]) for t in video.tracks if len(t.times_s)]
    grid = np.arange(0.0, max(ends) + step / 2, step)  # (G,)
    if gt_times.size:
        ref = np.concatenate([[-np.inf], gt_times, [np.inf]])  # sorted, padded
        i = np.searchsorted(ref, grid)  # in [1, len(ref) - 1]
        dist = np.minimum(grid - ref[i - 1], ref[i] - grid)  # (G,) to the nearest GT time
        grid = grid[dist >= step / 2]
    return np.union1d(grid, gt_times)


def id_score(pred_ids: Iterable[int], target_ids: Iterable[int]) -> float:
    """1/0 exact match for one target; Jaccard of the ID sets for several; 0 without targets."""
    p, t = set(int(i) for i in pred_ids), set(int(i) for i in target_ids)
    if not t or not p:
        return 0.0
    if len(t) == 1:
        return float(p == t)
    return len(p & t) / len(p | t)


def sample_metrics(
    video: ShardVideo,
    query: QueryRecord,
    ids: Sequence[int],
    span_s: tuple[float, float] | None,
    *,
    max_gap_s: float,
) -> dict:
    """tIoU, vIoU and ID correctness of one prediction, as rewards and evaluation use them.

    Returns ``{"tiou", "viou", "id_correct" (exact set match; False when the query has no
    matched target IDs), "id_score" (see :func:`id_score`)}``.
    """
    times = evaluation_times(video, query)
    pred = predicted_tube(video.tracks, ids, span_s, times, max_gap_s=max_gap_s)
    target = set(query.target_ids)
    return {
        "tiou": temporal_iou(span_s, query.span_s),
        "viou": tube_viou(span_s, pred, query.span_s, gt_tube(query), times),
        "id_correct": bool(target) and set(int(i) for i in ids) == target,
        "id_score": id_score(ids, query.target_ids),
    }


def summarize(results: Iterable[Mapping], *, inclusive: bool = False) -> dict:
    """Benchmark numbers in percent: m_tIoU, m_vIoU, vIoU@0.3, vIoU@0.5 (a sample counts
    when its vIoU is *strictly* greater than R, the official evaluators' rule; with
    ``inclusive``, when it is >= R, the STVG-R1 evaluator's), plus ``n``; ``id_acc`` when
    samples carry ``id_correct``; J, F, J&F when they carry ``J`` and ``F``. Empty input
    gives NaN."""
    rows = list(results)
    out: dict = {"n": len(rows)}

    def column(key: str, required: bool) -> np.ndarray | None:
        vals = [r[key] for r in rows if key in r and r[key] is not None]
        if required and len(vals) != len(rows):
            missing = next(i for i, r in enumerate(rows) if r.get(key) is None)
            raise KeyError(
                f"summarize: result {missing} has no {key!r} (keys: {sorted(rows[missing])})"
            )
        return np.asarray(vals, dtype=np.float64) if vals else None

    def pct(x: np.ndarray | None) -> float:
        return float(100.0 * x.mean()) if x is not None and x.size else float("nan")

    tiou, v = column("tiou", True), column("viou", True)
    out["m_tIoU"] = pct(tiou)
    out["m_vIoU"] = pct(v)
    for r in (0.3, 0.5):
        hit = None if v is None else (v >= r if inclusive else v > r).astype(np.float64)
        out[f"vIoU@{r}"] = pct(hit)
    ids = column("id_correct", False)
    if ids is not None:
        out["id_acc"] = pct(ids)
    j, f = column("J", False), column("F", False)
    if j is not None and f is not None:
        out["J"], out["F"] = pct(j), pct(f)
        out["J&F"] = (out["J"] + out["F"]) / 2
    return out


# ------------------------------------------------------------------------ masks: J&F


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose label differs from their right, lower or lower-right
    neighbour (neighbours outside the image are not compared, so the image border is
    not a boundary). This is the boundary definition of the DAVIS/MeViS evaluator,
    implemented here from that description."""
    m = np.asarray(mask, dtype=bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]  # right neighbour
    b[:-1, :] |= m[:-1, :] != m[1:, :]  # lower neighbour
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]  # lower-right neighbour
    return b


def _disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: offsets with dx² + dy² <= r²."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def _dilate(b: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    return cv2.dilate(b.astype(np.uint8), _disk(radius)).astype(bool)


def boundary_f(
    pred_mask: np.ndarray, gt_mask: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE
) -> float:
    """Boundary F-measure of one frame: boundary pixels matched within a disk of radius
    ceil(tolerance × image diagonal) (or ``tolerance`` pixels if >= 1)."""
    p, g = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(
            f"boundary_f: prediction {p.shape} and ground truth {g.shape} differ in size"
        )
    radius = int(tolerance if tolerance >= 1 else math.ceil(tolerance * math.hypot(*p.shape)))
    bp, bg = boundary_map(p), boundary_map(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # precision or recall is 0 (the other is 1 by convention)
    precision = float((bp & _dilate(bg, radius)).sum() / n_p)
    recall = float((bg & _dilate(bp, radius)).sum() / n_g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def j_and_f(pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Region J (mask IoU; two empty masks score 1) and boundary F of one expression,
    each averaged over frames, and J&F = (J + F) / 2. Masks are (H, W) bool per frame."""
    if len(pred_masks) != len(gt_masks):
        raise ValueError(
            f"j_and_f: {len(pred_masks)} predicted masks for {len(gt_masks)} ground-truth frames"
        )
    if not len(gt_masks):
        raise ValueError("j_and_f: no frames to score")
    js, fs = [], []
    for i, (p, g) in enumerate(zip(pred_masks, gt_masks)):
        p, g = np.asarray(p, dtype=bool), np.asarray(g, dtype=bool)
        if p.shape != g.shape:
            raise ValueError(f"j_and_f: frame {i}: prediction {p.shape} vs ground truth {g.shape}")
        js.append(mask_iou(p, g))
        fs.append(boundary_f(p, g))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "J&F": (j + f) / 2}
