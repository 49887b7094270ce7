"""Ground truth -> track IDs: which of the drawn numbers is the query's answer.

For each ground-truth object, at every annotated time, the track with the highest
IoU against the GT box is that frame's vote (tracks are asked for their box at the
GT's times, :meth:`pipeline.records.Track.boxes_at`, so GT and tracks need not share
a frame rate; an absent track scores 0). The object's ID is the majority of the
votes, as in STVG-R1. Frames whose best IoU is below ``min_iou`` do not vote: a
frame where no track covers the target (missed detection, occlusion) should not
elect whichever track happens to overlap a little. Ties in votes go to the track
with the larger summed IoU, then the smaller ID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.geometry import mask_iou, nearest_index, paired_box_iou, rle_to_mask
from pipeline.records import GTObject, QueryRecord, Track

SAME_BOX_IOU = 0.7
"""Two tracks' boxes overlapping at least this much in a frame where both were observed
sit on one object there (a duplicate), whichever fits the ground truth better; see
:func:`match_quality`."""

MIN_GT_SIDE = 0.05
"""GT boxes with a shorter side under this share of the frame's shorter side (12 px at
240 p, 36 px at 720 p) are too small to carry a legible ID; see :func:`match_quality`."""


@dataclass(frozen=True)
class TargetMatch:
    """The track chosen for one GT object.

    Attributes:
        object: the GT object's dataset id.
        track_id: chosen track ID, or None when no frame voted.
        iou: (T,) float64 IoU of the chosen track against the GT at each annotated
            time (0 where the track is absent or nothing was chosen).
        votes: frames that voted for the chosen track.
    """

    object: int
    track_id: int | None
    iou: np.ndarray
    votes: int


def _iou_matrix(
    gt: GTObject,
    tracks: Sequence[Track],
    max_gap_s: float,
    use_masks: bool,
    frame_hw: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(T, M) IoU of every track against the GT at its annotated times, and the valid-time mask."""
    valid = ~np.isnan(gt.xyxy).any(axis=1)  # (T,) frames where the GT box is known
    times = gt.times_s[valid]
    gt_xyxy = gt.xyxy[valid]
    iou = np.zeros((len(times), len(tracks)), dtype=np.float64)
    for m, tr in enumerate(tracks):
        iou[:, m] = paired_box_iou(tr.boxes_at(times, max_gap_s), gt_xyxy)
    if use_masks and gt.masks_rle is not None:
        h, w = frame_hw
        gt_rle = [r for r, v in zip(gt.masks_rle, valid) if v]
        for m, tr in enumerate(tracks):
            if tr.masks_rle is None:
                continue
            near = nearest_index(tr.times_s, times, max_gap_s)
            for t in np.flatnonzero(iou[:, m] > 0):  # masks only where the boxes overlap
                j = near[t]
                if gt_rle[t] is not None and j >= 0 and tr.masks_rle[j] is not None:
                    iou[t, m] = mask_iou(
                        rle_to_mask(gt_rle[t], h, w), rle_to_mask(tr.masks_rle[j], h, w)
                    )
    return iou, valid


def match_targets(
    query: QueryRecord,
    tracks: Sequence[Track],
    *,
    max_gap_s: float,
    min_iou: float = 0.3,
    use_masks: bool = False,
    frame_hw: tuple[int, int] | None = None,
) -> list[TargetMatch]:
    """One :class:`TargetMatch` per GT object of the query (see the module docstring).

    ``use_masks`` scores frames by mask IoU where both the GT and the track (its
    nearest observed frame within ``max_gap_s``) have a mask, box IoU elsewhere; it
    needs ``frame_hw`` (height, width) of the stored frames to decode the RLEs.
    """
    return [
        m for m, _, _ in _match_with_iou(query, tracks, max_gap_s, min_iou, use_masks, frame_hw)
    ]


def _match_with_iou(
    query: QueryRecord,
    tracks: Sequence[Track],
    max_gap_s: float,
    min_iou: float,
    use_masks: bool,
    frame_hw: tuple[int, int] | None,
) -> list[tuple[TargetMatch, np.ndarray, np.ndarray]]:
    """Per GT object: its match, the (T, M) IoU of every track and the valid-time mask."""
    if use_masks and frame_hw is None:
        raise ValueError("use_masks=True needs frame_hw=(height, width) to decode masks")
    ids = np.array([tr.id for tr in tracks], dtype=np.int64)
    out = []
    for gt in query.gt:
        iou, valid = _iou_matrix(gt, tracks, max_gap_s, use_masks, frame_hw)
        none = TargetMatch(gt.object, None, np.zeros(len(iou)), 0)
        if iou.size == 0:
            out.append((none, iou, valid))
            continue
        best = iou.argmax(axis=1)  # (T,)
        voting = iou[np.arange(len(iou)), best] >= min_iou
        votes = np.bincount(best[voting], minlength=len(tracks))  # (M,)
        if votes.max() == 0:
            out.append((none, iou, valid))
            continue
        # most votes, then larger summed IoU, then smaller ID
        key = np.lexsort((ids, -iou.sum(axis=0), -votes))
        m = int(key[0])
        match = TargetMatch(gt.object, int(ids[m]), iou[:, m].copy(), int(votes[m]))
        out.append((match, iou, valid))
    return out


def match_query(
    query: QueryRecord,
    tracks: Sequence[Track],
    *,
    max_gap_s: float,
    min_iou: float = 0.3,
    use_masks: bool = False,
    frame_hw: tuple[int, int] | None = None,
) -> QueryRecord:
    """A new record with ``target_ids`` (sorted, unique) and ``match_iou``.

    ``match_iou`` is the mean, over all annotated frames of all GT objects, of the
    chosen track's IoU with the GT (0 where it is absent or nothing matched); NaN
    when the query has no annotated frame. Unmatched objects add no ID; the query is
    never dropped and nothing raises for lack of a match.
    """
    matches = match_targets(
        query, tracks, max_gap_s=max_gap_s, min_iou=min_iou, use_masks=use_masks, frame_hw=frame_hw
    )
    ids = sorted({m.track_id for m in matches if m.track_id is not None})
    all_iou = np.concatenate([m.iou for m in matches]) if matches else np.zeros(0)
    match_iou = float(all_iou.mean()) if all_iou.size else float("nan")
    return dataclasses.replace(query, target_ids=tuple(ids), match_iou=match_iou)


def match_quality(
    query: QueryRecord,
    tracks: Sequence[Track],
    max_gap_s: float,
    *,
    min_iou: float = 0.3,
    iou_thresh: float = 0.5,
    min_coverage: float = 0.9,
    min_side: float = MIN_GT_SIDE,
    use_masks: bool = False,
    frame_hw: tuple[int, int] | None = None,
    same_box_iou: float = SAME_BOX_IOU,
) -> dict:
    """Whether the query's IDs are exactly right, for the pipeline's "right IDs" rate.

    An ID is "on" the target in an annotated frame when its track's box (mask) has
    IoU >= ``iou_thresh`` with the GT there. The query is ``exact`` when, for every GT
    object, the chosen ID is on it in >= ``min_coverage`` of its frames, no second ID is
    ever on it (a duplicate track or an ID switch makes the answer ambiguous), and
    distinct objects got distinct IDs. Another ID on the target in a frame where its track
    was observed is a second ID when the chosen ID is not on it there, or fits it at least
    as well, or the two boxes coincide where both were observed (IoU >= ``same_box_iou``:
    two boxes on one object). Another object passing over the target (its own box, a
    worse fit, apart from the chosen one) or hidden behind it is not: a
    tracker that follows every object perfectly is exact on every query
    (``tests/test_match.py`` scores the synthetic scenes' own boxes). With
    ``frame_hw`` (height, width), GT boxes whose shorter side is under ``min_side`` of
    the frame's shorter side (slivers of objects entering, leaving or nearly hidden)
    do not count towards coverage, as KITTI ignores boxes under 25 px; they still count
    for "no other ID". A query without ground truth is never exact.

    Returns ``{"exact": bool, "coverage": [per object], "track_ids": [per object, None
    if unmatched], "other_ids": [per object: second IDs seen on it], "distinct": bool,
    "match_iou": float}``.
    """
    per_object = _match_with_iou(query, tracks, max_gap_s, min_iou, use_masks, frame_hw)
    matches = [m for m, _, _ in per_object]
    ids = np.array([tr.id for tr in tracks], dtype=np.int64)
    coverage, others = [], []
    half_step = 0.5 * _tracking_step(tracks) + 1e-6  # "observed": this near an observation
    for gt, (m, iou, valid) in zip(query.gt, per_object):
        on = iou >= iou_thresh  # (T, M)
        times = gt.times_s[valid]
        second = _second_ids(on, iou, times, tracks, ids, m.track_id, max_gap_s, same_box_iou,
                             half_step)  # fmt: skip
        others.append(sorted(int(i) for i in ids[second]))
        if m.track_id is None or not len(on):
            coverage.append(0.0)
            continue
        counted = np.ones(len(on), dtype=bool)
        if frame_hw is not None and min_side > 0:
            box = gt.xyxy[valid]
            sides = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
            big = sides >= min_side * min(frame_hw)
            counted = big if big.any() else counted  # only slivers: count them all
        coverage.append(float(on[counted][:, ids == m.track_id].mean()))
    chosen = [m.track_id for m in matches]
    distinct = len(set(chosen)) == len(chosen)
    exact = (
        bool(matches) and distinct and all(c >= min_coverage for c in coverage) and not any(others)
    )
    all_iou = np.concatenate([m.iou for m in matches]) if matches else np.zeros(0)
    return {
        "exact": exact,
        "coverage": coverage,
        "track_ids": chosen,
        "other_ids": others,
        "distinct": distinct,
        "match_iou": float(all_iou.mean()) if all_iou.size else float("nan"),
    }


def _second_ids(
    on: np.ndarray,
    iou: np.ndarray,
    times: np.ndarray,
    tracks: Sequence[Track],
    ids: np.ndarray,
    chosen: int | None,
    max_gap_s: float,
    same_box_iou: float,
    half_step: float,
) -> np.ndarray:
    """(M,) bool: tracks other than ``chosen`` that are a second ID on the GT object in some
    frame (see :func:`match_quality`); ``on``/``iou`` are (T, M) at its valid ``times``.

    Only frames where the other track was observed count (within ``half_step``, half the
    tracking step):
    across a gap nothing of it is drawn, and an object hidden behind the target is
    interpolated right onto it. For the same reason two boxes coincide (a duplicate: two
    numbers drawn on one object) only where both tracks were observed."""

    def observed(m: int) -> np.ndarray:
        return nearest_index(tracks[m].times_s, times, half_step) >= 0

    other = on & (ids != chosen)[None, :]  # (T, M)
    for m in np.flatnonzero(other.any(axis=0)):
        other[:, m] &= observed(m)
    if chosen is None or not other.any():
        return other.any(axis=0)
    c = int(np.flatnonzero(ids == chosen)[0])
    chosen_box = tracks[c].boxes_at(times, max_gap_s)  # (T, 4), NaN where absent
    chosen_seen = observed(c)
    second = np.zeros_like(other)
    for m in np.flatnonzero(other.any(axis=0)):
        overlap = paired_box_iou(tracks[m].boxes_at(times, max_gap_s), chosen_box)
        coincide = chosen_seen & (overlap >= same_box_iou)
        second[:, m] = other[:, m] & (~on[:, c] | (iou[:, m] >= iou[:, c]) | coincide)
    return second.any(axis=0)


def _tracking_step(tracks: Sequence[Track]) -> float:
    """The shortest time between two observations of one track (the tracking period); 0
    when no track has two."""
    steps = [np.diff(tr.times_s) for tr in tracks if len(tr.times_s) > 1]
    steps = np.concatenate(steps) if steps else np.zeros(0)
    steps = steps[steps > 0]
    return float(steps.min()) if steps.size else 0.0
