"""Tracklets: the online tracker's output collected per track, cleaned, and renumbered.

:class:`TrackBuilder` collects tracked detections (boxes, masks, appearance features) into
raw tracklets; :meth:`TrackBuilder.finalize` drops short ones, continues those that leave
(enter) through the frame border until the visible part is a sliver, gives each object
one ID at a time (:func:`resolve_duplicates`), links tracklets of one object across
occlusions and exits (:mod:`pipeline.associate`), and renumbers 1..K by first appearance
(:class:`pipeline.records.Track`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import supervision as sv

from pipeline.geometry import mask_to_rle, paired_box_iou, resize_mask, scale_xyxy
from pipeline.match import MIN_GT_SIDE
from pipeline.records import Track

EXTENDED = ""  # class name of an extrapolated frame: no detector vote


@dataclass
class RawTrack:
    """One tracklet: per observed frame its time, box, mask RLE, class, feature and colour
    histogram (``colors``, :func:`pipeline.reid.color_histograms`; None where unknown)."""

    times_s: list[float]
    xyxy: list[np.ndarray]
    masks_rle: list[str | None]
    class_names: list[str]
    features: list[np.ndarray | None]
    colors: list[np.ndarray | None] = None  # None: no frame has one

    def __post_init__(self):
        if self.colors is None:
            self.colors = [None] * len(self.times_s)

    def columns(self) -> tuple[list, list, list, list, list, list]:
        return self.times_s, self.xyxy, self.masks_rle, self.class_names, self.features, self.colors

    def select(self, keep: np.ndarray) -> RawTrack:
        """The frames where ``keep`` (bool, per frame) is True."""
        idx = np.flatnonzero(keep)
        return RawTrack(*([col[i] for i in idx] for col in self.columns()))

    def sorted(self) -> RawTrack:
        order = np.argsort(self.times_s, kind="stable")
        return RawTrack(*([col[i] for i in order] for col in self.columns()))

    @property
    def class_name(self) -> str:
        return majority(self.class_names)

    def embedding(self) -> np.ndarray | None:
        """Mean of the frames' unit features, normalised (None without features)."""
        return _mean_direction(f for f in self.features if f is not None and f.size)

    def color(self) -> np.ndarray | None:
        """Mean of the frames' colour histograms (unit square-root rows), normalised; None
        without any."""
        return _mean_direction(c for c in self.colors if c is not None and c.size and c.any())


def _mean_direction(rows) -> np.ndarray | None:
    """The normalised mean of unit rows (None when there are none)."""
    rows = list(rows)
    if not rows:
        return None
    m = np.mean(rows, axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def majority(names: list[str]) -> str:
    votes = Counter(n for n in names if n != EXTENDED)
    return votes.most_common(1)[0][0] if votes else EXTENDED  # ties: the class seen first


class TrackBuilder:
    """Accumulates tracked detections into raw tracks, then cleans and renumbers them.

    Args:
        frame_wh: (width, height) of the frames the detections were made on; needed
            only with ``out_wh``.
        out_wh: (width, height) of the stored frames; boxes and masks are scaled to it
            (None = keep the detection frame size).
    """

    def __init__(
        self, frame_wh: tuple[int, int] | None = None, out_wh: tuple[int, int] | None = None
    ):
        if out_wh is not None and frame_wh is None:
            raise ValueError("out_wh needs frame_wh (the detection frame size) to scale from")
        self.frame_wh = frame_wh
        self.out_wh = out_wh
        self._tracks: dict[int, RawTrack] = {}
        self._frame_times: list[float] = []

    def add(self, time_s: float, detections: sv.Detections) -> None:
        """Add one frame's tracked detections (``tracker_id`` required).

        Call it for every tracked frame, also those without detections: the frame
        times are where :meth:`finalize` may extend tracks to the frame border.
        """
        if not self._frame_times or time_s > self._frame_times[-1]:
            self._frame_times.append(float(time_s))
        if len(detections) == 0:
            return
        if detections.tracker_id is None:
            raise ValueError(
                f"detections at t={time_s:.3f}s have no tracker_id; run a Tracker first"
            )
        xyxy = np.asarray(detections.xyxy, dtype=np.float32).reshape(-1, 4)
        if self.out_wh is not None:
            (fw, fh), (ow, oh) = self.frame_wh, self.out_wh
            xyxy = scale_xyxy(xyxy, ow / fw, oh / fh)
        names = detections.data.get("class_name")
        if names is None:
            cids = detections.class_id if detections.class_id is not None else np.zeros(len(xyxy))
            names = [str(int(c)) for c in cids]
        feats, colors = detections.data.get("feature"), detections.data.get("color")
        for i, tid in enumerate(np.asarray(detections.tracker_id).astype(int)):
            raw = self._tracks.setdefault(int(tid), RawTrack([], [], [], [], [], []))
            if float(time_s) in raw.times_s:
                raise ValueError(f"track {tid} observed twice at t={time_s}")
            raw.times_s.append(float(time_s))
            raw.xyxy.append(xyxy[i])
            raw.class_names.append(str(names[i]))
            raw.masks_rle.append(self._mask_rle(detections.mask, i))
            f = None if feats is None else np.asarray(feats[i], np.float32)
            raw.features.append(f if f is not None and f.size else None)
            c = None if colors is None else np.asarray(colors[i], np.float32)
            raw.colors.append(c if c is not None and c.size else None)

    def _mask_rle(self, masks, i: int) -> str | None:
        if masks is None:
            return None
        m = np.asarray(masks[i], dtype=bool)
        if self.out_wh is not None:
            m = resize_mask(m, self.out_wh[1], self.out_wh[0])
        return mask_to_rle(m)

    def finalize(
        self,
        min_frames: int = 3,
        min_duration_s: float = 0.0,
        merge_gap_s: float = 0.0,
        merge_max_dist: float = 1.0,
        edge_extend_s: float = 0.0,
        duplicate_iou: float = 0.0,
        duplicate_share: float = 0.6,
        link=None,
        merged_growth: float = 0.0,
    ) -> list[Track]:
        """Merge fragments (optional), drop short tracks, repair boxes that grew onto another
        object for a moment (optional, see :func:`repair_merged_boxes`), extend tracks to
        the frame border (optional, see :attr:`pipeline.track.TrackerConfig.edge_extend_s`; needs
        ``frame_wh``), give each object one ID at a time (optional, see
        :func:`resolve_duplicates`), link tracklets of one object over time (optional:
        ``link`` maps the tracklets to groups of one identity, such as
        :func:`pipeline.associate.associate`) and renumber 1..K by first appearance.

        Ties in first appearance go left to right (box centre x, then y). The class is
        the majority over the track's frames. Masks stay aligned with boxes (extended
        frames have none); ``masks_rle`` is None for tracks without any mask.
        """
        raws = [r.sorted() for _, r in sorted(self._tracks.items())]
        if merge_gap_s > 0:
            raws = merge_fragments(raws, merge_gap_s, merge_max_dist)
        kept = [
            r
            for r in raws
            if len(r.times_s) >= min_frames and r.times_s[-1] - r.times_s[0] >= min_duration_s
        ]
        if merged_growth > 0:  # before extending: a merged last box would set the exit speed
            kept = [repair_merged_boxes(r, merged_growth) for r in kept]
        size = self.out_wh or self.frame_wh
        if edge_extend_s > 0 and size is not None:
            frame_times = np.asarray(self._frame_times)
            kept = [extend_to_edges(r, frame_times, size, edge_extend_s) for r in kept]
        if duplicate_iou > 0:  # after extending: a track born on a leaving one's sliver
            kept = resolve_duplicates(kept, duplicate_iou, duplicate_share, min_frames)
        groups = [[r] for r in kept] if link is None else link(kept)
        return renumber([concat(g) for g in groups])


def concat(parts: list[RawTrack]) -> RawTrack:
    """Tracklets of one identity joined in time order (they never share a time)."""
    if len(parts) == 1:
        return parts[0]
    joined = RawTrack([], [], [], [], [], [])
    for p in sorted(parts, key=lambda p: p.times_s[0]):
        for dst, src in zip(joined.columns(), p.columns()):
            dst.extend(src)
    if np.any(np.diff(joined.times_s) <= 0):
        raise AssertionError("linked tracklets overlap in time: two objects would share an ID")
    return joined


def renumber(raws: list[RawTrack]) -> list[Track]:
    """:class:`Track` objects numbered 1..K by first appearance (ties left to right)."""

    def first_key(r: RawTrack) -> tuple[float, float, float]:
        b = r.xyxy[0]
        return (r.times_s[0], float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)

    tracks = []
    for new_id, r in enumerate(sorted(raws, key=first_key), start=1):
        has_masks = any(m is not None for m in r.masks_rle)
        tracks.append(
            Track(
                id=new_id,
                class_name=r.class_name,
                times_s=np.array(r.times_s),
                xyxy=np.stack(r.xyxy),
                masks_rle=tuple(r.masks_rle) if has_masks else None,
            )
        )
    return tracks


def merge_fragments(raws: list[RawTrack], gap_s: float, max_dist: float) -> list[RawTrack]:
    """Greedily append each track to the closest same-class track that ended just before it."""
    order = sorted(range(len(raws)), key=lambda i: raws[i].times_s[0])
    chains: list[RawTrack] = []
    for i in order:
        r = raws[i]
        best, best_key = None, (np.inf, np.inf)
        for c in chains:
            gap = r.times_s[0] - c.times_s[-1]
            if not 0 < gap <= gap_s or c.class_name != r.class_name:
                continue
            a, b = c.xyxy[-1], r.xyxy[0]
            diag = max(np.hypot(*(a[2:] - a[:2])), np.hypot(*(b[2:] - b[:2])), 1e-6)
            dist = np.hypot(*((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2)) / diag
            if dist <= max_dist and (gap, dist) < best_key:  # the shortest gap, then the nearest
                best, best_key = c, (gap, dist)
        if best is None:
            chains.append(RawTrack(*(list(s) for s in r.columns())))
        else:
            for dst, src in zip(best.columns(), r.columns()):
                dst.extend(src)
    return chains


def merged_frames(
    r: RawTrack, growth: float, window_s: float = 1.0, min_frames: int = 4
) -> np.ndarray:
    """(T,) bool: frames where ``r``'s box is wider or taller than ``1 + growth`` times what
    the track usually is around then (the 75th percentile of the widths, and of the heights,
    of its other boxes within ``window_s``, needing ``min_frames`` of them).

    When two objects overlap, a detector often gives one of them, for a frame or a few, a
    box (and mask) around both: a spike in size the object itself does not make. Objects
    that grow on their own (entering the frame, coming out from behind another, nearing
    the camera) grow over many frames, which the window follows; boxes shrunk by an
    occluder or the frame border are smaller, never flagged."""
    t = np.asarray(r.times_s, np.float64)
    b = np.stack(r.xyxy).astype(np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    out = np.zeros(len(t), bool)
    if len(t) <= min_frames:
        return out
    lo = np.searchsorted(t, t - window_s - 1e-9, side="left")  # times are sorted
    hi = np.searchsorted(t, t + window_s + 1e-9, side="right")
    for i in range(len(t)):
        near = np.r_[lo[i] : i, i + 1 : hi[i]]  # the window without frame i
        if near.size < min_frames:
            continue
        ref_w, ref_h = np.percentile(w[near], 75), np.percentile(h[near], 75)
        out[i] = w[i] > (1 + growth) * ref_w or h[i] > (1 + growth) * ref_h
    return out


def repair_merged_boxes(
    r: RawTrack, growth: float, window_s: float = 1.0, fit_frames: int = 4
) -> RawTrack:
    """``r`` with its merged boxes (:func:`merged_frames`) replaced from the track's sound
    boxes within ``window_s``: the line between the nearest one on either side, or, where
    one side has none (the track's ends), the least-squares line through the nearest
    ``fit_frames`` on the other side, extended; a merged box with fewer than two sound
    boxes within reach is dropped. Repaired frames keep their time and class (the object
    was seen there, so its number is drawn) but lose the mask, appearance feature and
    colour, which were of both objects."""
    bad = merged_frames(r, growth, window_s)
    if not bad.any():
        return r
    t = np.asarray(r.times_s, np.float64)
    boxes = np.stack(r.xyxy).astype(np.float64)
    sound = np.flatnonzero(~bad)
    keep = np.ones(len(t), bool)
    out = RawTrack(*(list(col) for col in r.columns()))
    for i in np.flatnonzero(bad):
        near = sound[np.searchsorted(t[sound], t[i] - window_s - 1e-9) :]
        near = near[: np.searchsorted(t[near], t[i] + window_s + 1e-9, side="right")]
        before, after = near[near < i], near[near > i]
        if before.size and after.size:
            lo, hi = before[-1], after[0]
            a = (t[i] - t[lo]) / (t[hi] - t[lo])
            box = (1 - a) * boxes[lo] + a * boxes[hi]
        elif max(before.size, after.size) >= 2:
            side = before[-fit_frames:] if before.size else after[:fit_frames]
            _, box = _fit_line(t[side] - t[i], boxes[side])  # the line's value at t[i]
        else:
            keep[i] = False
            continue
        out.xyxy[i] = box.astype(np.float32)
        out.masks_rle[i] = out.features[i] = out.colors[i] = None
    return out.select(keep)


def _fit_line(dt: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line through (N,) times and (N, 4) boxes: (velocity per second, the
    box at dt = 0)."""
    design = np.stack([dt, np.ones_like(dt)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.asarray(boxes, np.float64), rcond=None)
    return coef[0], coef[1]


def _similar(a: RawTrack, b: RawTrack, min_sim: float) -> bool:
    ea, eb = a.embedding(), b.embedding()
    return ea is None or eb is None or float(ea @ eb) >= min_sim


def _moving_together(mine: np.ndarray, theirs: np.ndarray, max_drift: float) -> bool:
    """Whether two box sequences keep their relative place (one object: the offset between
    the boxes stays put; two objects crossing: it sweeps through zero)."""
    offset = (mine[:, :2] + mine[:, 2:]) / 2 - (theirs[:, :2] + theirs[:, 2:]) / 2
    diag = np.hypot(*(theirs[:, 2:] - theirs[:, :2]).T).mean()
    drift = np.hypot(*(offset - offset[0]).T).max()
    return bool(drift <= max_drift * max(float(diag), 1.0))


def _same_object_frames(r: RawTrack, other: RawTrack, min_iou: float, max_drift: float):
    """(T,) bool over ``r``'s frames: those where ``other`` is on the same object."""
    same = np.zeros(len(r.times_s), bool)
    if other.times_s[0] > r.times_s[-1] or other.times_s[-1] < r.times_s[0]:
        return same
    by_time = dict(zip(other.times_s, other.xyxy))
    idx = np.array([k for k, t in enumerate(r.times_s) if t in by_time], dtype=int)
    if not idx.size:
        return same
    mine = np.stack([r.xyxy[k] for k in idx])
    theirs = np.stack([by_time[r.times_s[k]] for k in idx])
    hit = paired_box_iou(mine, theirs) >= min_iou
    if hit.sum() >= 2 and _moving_together(mine[hit], theirs[hit], max_drift):
        same[idx[hit]] = True
    return same


def resolve_duplicates(
    raws: list[RawTrack],
    min_iou: float,
    share: float,
    min_frames: int = 1,
    min_sim: float = 0.5,
    max_drift: float = 0.25,
) -> list[RawTrack]:
    """One ID per object at a time: ``raws`` where no two tracks sit on one object at once.

    Two tracks (of any classes) are on one object over the frames they share where their
    boxes overlap at IoU >= ``min_iou``, when over those frames (at least two) the offset
    between the boxes drifts by at most ``max_drift`` box diagonals and their appearance
    embeddings (when both have them) have cosine similarity >= ``min_sim``. Two objects
    crossing also overlap for a few frames, but their offset sweeps through zero (and they
    may look different). Longer tracks win. A shorter track on a longer one in >=
    ``share`` of its frames is a second ID on one object (a detector firing twice, or
    twice with two classes) and is dropped; otherwise those frames are cut from it, and
    it is dropped if fewer than ``min_frames`` detected frames remain.
    """
    order = sorted(range(len(raws)), key=lambda i: (-len(raws[i].times_s), raws[i].times_s[0]))
    kept: list[RawTrack] = []
    for i in order:
        r = raws[i]
        for other in kept:
            same = _same_object_frames(r, other, min_iou, max_drift)
            if not same.any() or not _similar(r, other, min_sim):
                continue
            if same.sum() >= share * len(r.times_s):
                r = None
                break
            r = r.select(~same)
            if sum(n != EXTENDED for n in r.class_names) < min_frames:
                r = None
                break
        if r is not None:
            kept.append(r)
    return sorted(kept, key=lambda r: r.times_s[0])


def border_sides(b: np.ndarray, wh: tuple[int, int] | None) -> frozenset[str]:
    """The frame border sides box ``b`` touches ("left", "top", "right", "bottom"), within
    1% of the frame's longer side; none when the frame size is unknown."""
    if wh is None:
        return frozenset()
    margin = max(1.0, 0.01 * max(wh))
    touch = {
        "left": b[0] <= margin,
        "top": b[1] <= margin,
        "right": b[2] >= wh[0] - margin,
        "bottom": b[3] >= wh[1] - margin,
    }
    return frozenset(k for k, v in touch.items() if v)


def _exit_boxes(
    times: np.ndarray,
    boxes: np.ndarray,
    later_times: np.ndarray,
    wh: tuple[int, int],
    max_s: float,
    fit_frames: int = 4,
) -> tuple[list[float], list[np.ndarray]]:
    """Boxes at ``later_times`` (sorted away from the track) until the track has left the frame.

    ``times``/``boxes`` run from the track's end inwards. Each box side moves at its own
    least-squares velocity over the ``fit_frames`` observations nearest the end (a side
    pinned at the border stays there; the far side closes in); the box is clipped to the
    frame. It stops where the clipped box's shorter side falls below
    :data:`pipeline.match.MIN_GT_SIDE` of the frame's shorter side (a sliver, which
    matching ignores and which cannot carry a legible number). Nothing is returned unless
    the box touches the border and becomes a sliver within ``max_s``: a track that ends
    for another reason is left alone.
    """
    n = min(fit_frames, len(times))
    if n < 2 or not border_sides(boxes[0], wh):
        return [], []
    t = np.asarray(times[:n], np.float64)
    dt = t - t[0]
    if not np.ptp(dt) > 0:
        return [], []
    velocity, start = _fit_line(dt, boxes[:n])  # (4,) px/s, (4,) fitted box at the end time
    w, h = wh
    sliver = max(1.0, MIN_GT_SIDE * min(w, h))
    out_t, out_b = [], []
    for tt in later_times:
        step = float(tt) - float(t[0])
        if abs(step) > max_s:
            return [], []  # still inside the frame after max_s: not leaving
        b = start + velocity * step
        b = np.array([max(b[0], 0.0), max(b[1], 0.0), min(b[2], w), min(b[3], h)])
        if min(b[2] - b[0], b[3] - b[1]) < sliver:
            return out_t, out_b  # gone, or too little left to see
        out_t.append(float(tt))
        out_b.append(b.astype(np.float32))
    return [], []  # the video ended first: no evidence that it left


def extend_to_edges(
    r: RawTrack, frame_times: np.ndarray, wh: tuple[int, int], max_s: float
) -> RawTrack:
    """``r`` continued past its last box and before its first one while it leaves/enters."""
    times = np.asarray(r.times_s)
    eps = 1e-6
    after_t, after_b = _exit_boxes(
        times[::-1], np.stack(r.xyxy[::-1]), frame_times[frame_times > times[-1] + eps], wh, max_s
    )
    before_t, before_b = _exit_boxes(
        times, np.stack(r.xyxy), frame_times[frame_times < times[0] - eps][::-1], wh, max_s
    )
    if not after_t and not before_t:
        return r
    nb, na = len(before_t), len(after_t)
    return RawTrack(
        times_s=before_t[::-1] + list(r.times_s) + after_t,
        xyxy=before_b[::-1] + list(r.xyxy) + after_b,
        masks_rle=[None] * nb + list(r.masks_rle) + [None] * na,
        class_names=[EXTENDED] * nb + list(r.class_names) + [EXTENDED] * na,
        features=[None] * nb + list(r.features) + [None] * na,
        colors=[None] * nb + list(r.colors) + [None] * na,
    )
