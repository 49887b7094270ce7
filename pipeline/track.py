"""Tracking with ByteTrack, then ID cleaning: short tracks dropped, IDs renumbered 1..K.

:class:`Tracker` streams per-frame detections through Ultralytics' ``BYTETracker``
(configured from ``bytetrack.yaml``'s parameters, see :class:`TrackerConfig`) and
returns new ``sv.Detections`` with ``tracker_id``. :class:`TrackBuilder` collects
them into raw tracks and :meth:`TrackBuilder.finalize` turns those into the small,
consecutive IDs drawn on the frames (:class:`pipeline.records.Track`).
:func:`track_frames` runs detect -> track -> finalize over a frame stream, one
detector batch at a time.
"""

from __future__ import annotations

import functools
import types
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import supervision as sv

from pipeline.geometry import mask_to_rle, paired_box_iou, resize_mask, scale_xyxy
from pipeline.records import Track
from pipeline.runtime import configure_offline

if TYPE_CHECKING:
    from pipeline.detect import Detector

KALMAN_STATES = ("xywh", "xyah")

_BYTETRACK_KEYS = (
    "track_high_thresh",
    "track_low_thresh",
    "new_track_thresh",
    "track_buffer",
    "match_thresh",
    "fuse_score",
)


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack parameters (defaults = Ultralytics' ``bytetrack.yaml``, with BoT-SORT's Kalman
    state, see ``kalman``) and ID cleaning.

    Attributes:
        track_high_thresh: detections at or above this score join the first association.
        track_low_thresh: detections above this (and below high) join the second one.
        new_track_thresh: an unmatched detection starts a track at or above this score.
        track_buffer: frames (at 30 fps, as in ByteTrack) a lost track is kept for
            re-identification; scaled by ``frame_rate / 30`` so it means ~1 s at any rate.
        match_thresh: first-association cost threshold (1 - IoU, fused with score).
        kalman: the Kalman state: ``"xywh"`` (centre, width, height, as in BoT-SORT) or
            ``"xyah"`` (centre, aspect ratio, height: ByteTrack's). A box that grows
            or shrinks along one side only (an object entering or leaving the frame)
            changes its aspect ratio fast; the constant-velocity XYAH prediction then
            overshoots, the next box no longer overlaps it, and the object gets a new ID.
        fuse_score: fuse detection score into the association cost.
        min_frames: tracks observed on fewer frames are dropped (noise, flicker).
        min_duration_s: tracks spanning less time are dropped (0 = no limit).
        merge_gap_s: join a track that ends and a same-class track that starts within
            this many seconds near where the first ended (0 = off; ByteTrack already
            bridges gaps up to ``track_buffer``, and a wrong merge would give one ID to
            two objects, which is worse for grounding than a split).
        merge_max_dist: "near" for merging: centre distance at most this many box
            diagonals (the larger of the two boxes).
        duplicate_iou: a track whose boxes overlap those of a longer track of the same
            class at IoU >= this on at least ``duplicate_share`` of its frames is a second
            ID on one object (a detector that fires twice on a half-visible shape) and is
            dropped (0 = keep every track).
        duplicate_share: see ``duplicate_iou``.
        edge_extend_s: a track whose last (first) box touches the frame border and
            whose motion carries it out of the frame is continued (started earlier) on
            the tracked frames with its extrapolated box clipped to the frame, until the
            clipped box is empty, at most this many seconds (0 = off). Objects leaving or
            entering the frame shrink to slivers the detector misses or scores too low
            for ByteTrack, so their IDs would vanish early (appear late); a track that
            ends inside the frame (occlusion, a missed detection) is never extended.
    """

    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    track_buffer: int = 30
    match_thresh: float = 0.8
    fuse_score: bool = True
    kalman: str = "xywh"
    min_frames: int = 3
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0
    merge_max_dist: float = 1.0
    duplicate_iou: float = 0.5
    duplicate_share: float = 0.6
    edge_extend_s: float = 1.0

    def __post_init__(self):
        if self.kalman not in KALMAN_STATES:
            raise ValueError(f"kalman must be one of {KALMAN_STATES}, got {self.kalman!r}")
        if not 0.0 <= self.track_low_thresh <= self.track_high_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= track_low_thresh ({self.track_low_thresh}) <= "
                f"track_high_thresh ({self.track_high_thresh}) <= 1"
            )
        if self.track_buffer < 0 or self.min_frames < 1:
            raise ValueError(
                f"track_buffer must be >= 0 and min_frames >= 1, got {self.track_buffer}, {self.min_frames}"
            )
        lengths = {
            "min_duration_s": self.min_duration_s,
            "merge_gap_s": self.merge_gap_s,
            "merge_max_dist": self.merge_max_dist,
            "edge_extend_s": self.edge_extend_s,
        }
        negative = {k: v for k, v in lengths.items() if not v >= 0}
        if negative:
            raise ValueError(f"these must be >= 0: {negative}")
        if not (0.0 <= self.duplicate_iou <= 1.0 and 0.0 < self.duplicate_share <= 1.0):
            raise ValueError(
                f"duplicate_iou must be in [0, 1] and duplicate_share in (0, 1], got "
                f"{self.duplicate_iou} and {self.duplicate_share}"
            )

    @classmethod
    def from_bytetrack_yaml(cls, path: str | Path | None = None, **overrides) -> TrackerConfig:
        """Read ByteTrack parameters from a tracker YAML (None = Ultralytics' ``bytetrack.yaml``)."""
        import yaml

        if path is None:
            configure_offline()
            import ultralytics

            path = Path(ultralytics.__file__).parent / "cfg" / "trackers" / "bytetrack.yaml"
        cfg = yaml.safe_load(Path(path).read_text())
        if cfg.get("tracker_type", "bytetrack") != "bytetrack":
            raise ValueError(
                f"{path}: tracker_type is {cfg['tracker_type']!r}, expected 'bytetrack'"
            )
        known = {f.name for f in fields(cls)}
        params = {k: cfg[k] for k in _BYTETRACK_KEYS if k in cfg}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(
                f"unknown TrackerConfig fields {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**{**params, **overrides})


@dataclass
class _ByteTrackInput:
    """The results-like object ``BYTETracker.update`` reads: conf (N,), cls (N,), xywh (N, 4) centre."""

    conf: np.ndarray
    cls: np.ndarray
    xywh: np.ndarray

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index) -> _ByteTrackInput:
        return _ByteTrackInput(self.conf[index], self.cls[index], self.xywh[index])


@functools.cache
def _xywh_tracker_class() -> type:
    """Ultralytics' ``BYTETracker`` with BoT-SORT's XYWH Kalman state (and nothing else of
    BoT-SORT: no camera-motion compensation, no appearance features). Built on first use,
    so importing this module does not import Ultralytics."""
    from ultralytics.trackers.bot_sort import BOTrack
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYWH

    class ByteTrackXYWH(BYTETracker):
        track_class = BOTrack

        def get_kalmanfilter(self) -> KalmanFilterXYWH:
            return KalmanFilterXYWH()

        def multi_predict(self, tracks: list) -> None:
            BOTrack.multi_predict(tracks)

    return ByteTrackXYWH


class Tracker:
    """Streaming ByteTrack: ``update(detections, time_s)`` once per frame, in time order.

    Returns a new ``sv.Detections`` per frame holding the tracked detections with
    ``tracker_id``; boxes, masks and ``data`` are the detector's (selected by the
    detection index ByteTrack reports), not the Kalman-smoothed boxes. ByteTrack
    confirms a new track (after the first frame) only on its second detection; the
    first one is kept and handed out by :meth:`pop_births` so tracks start on time.
    """

    def __init__(self, config: TrackerConfig | None = None, frame_rate: float = 30.0):
        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
        self.config = config or TrackerConfig()
        configure_offline()
        from ultralytics.trackers.byte_tracker import BYTETracker

        args = types.SimpleNamespace(**{k: getattr(self.config, k) for k in _BYTETRACK_KEYS})
        args.track_buffer = max(1, round(self.config.track_buffer * frame_rate / 30.0))
        tracker_class = BYTETracker if self.config.kalman == "xyah" else _xywh_tracker_class()
        self._bytetrack = tracker_class(args)
        self._last_time_s = -np.inf
        self._pending: dict[int, tuple[float, sv.Detections]] = {}
        self._births: list[tuple[float, sv.Detections]] = []

    def update(self, detections: sv.Detections, time_s: float) -> sv.Detections:
        """Track one frame; the input is never modified."""
        if not time_s > self._last_time_s:
            raise ValueError(f"frame times must increase: got {time_s} after {self._last_time_s}")
        self._last_time_s = float(time_s)
        n = len(detections)
        xyxy = np.asarray(detections.xyxy, dtype=np.float32).reshape(-1, 4)
        conf = (
            np.ones(n, np.float32)
            if detections.confidence is None
            else np.asarray(detections.confidence, np.float32)
        )
        cls = (
            np.zeros(n, np.float32)
            if detections.class_id is None
            else np.asarray(detections.class_id, np.float32)
        )
        xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        # (M, 8) rows: x1 y1 x2 y2 track_id score cls detection_idx
        rows = self._bytetrack.update(_ByteTrackInput(conf, cls, xywh))
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
        ids = rows[:, 4].astype(np.int64)
        out = detections.select(rows[:, 7].astype(np.int64))
        out.tracker_id = ids
        for tid in ids:
            if int(tid) in self._pending:
                self._births.append(self._pending[int(tid)])
        self._pending = {}
        for st in self._bytetrack.tracked_stracks:
            if not st.is_activated:  # born this frame, confirmed (or dropped) next frame
                first = detections.select([int(st.idx)])
                first.tracker_id = np.array([st.track_id], dtype=np.int64)
                self._pending[int(st.track_id)] = (float(time_s), first)
        return out

    def pop_births(self) -> list[tuple[float, sv.Detections]]:
        """First observations (time_s, 1-row detections) of tracks confirmed since the last call."""
        births, self._births = self._births, []
        return births


@dataclass
class _RawTrack:
    times_s: list[float]
    xyxy: list[np.ndarray]
    masks_rle: list[str | None]
    class_names: list[str]


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
        self._tracks: dict[int, _RawTrack] = {}
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
        for i, tid in enumerate(np.asarray(detections.tracker_id).astype(int)):
            raw = self._tracks.setdefault(int(tid), _RawTrack([], [], [], []))
            if float(time_s) in raw.times_s:
                raise ValueError(f"track {tid} observed twice at t={time_s}")
            raw.times_s.append(float(time_s))
            raw.xyxy.append(xyxy[i])
            raw.class_names.append(str(names[i]))
            raw.masks_rle.append(self._mask_rle(detections.mask, i))

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
    ) -> list[Track]:
        """Merge fragments (optional), drop short tracks, extend tracks to the frame border
        (optional, see :attr:`TrackerConfig.edge_extend_s`; needs ``frame_wh``), drop
        duplicates (optional, see :attr:`TrackerConfig.duplicate_iou`) and renumber 1..K
        by first appearance.

        Ties in first appearance go left to right (box centre x, then y). The class is
        the majority over the track's frames. Masks stay aligned with boxes (extended
        frames have none); ``masks_rle`` is None for tracks without any mask.
        """
        raws = [self._sorted(r) for _, r in sorted(self._tracks.items())]
        if merge_gap_s > 0:
            raws = _merge_fragments(raws, merge_gap_s, merge_max_dist)
        kept = [
            r
            for r in raws
            if len(r.times_s) >= min_frames and r.times_s[-1] - r.times_s[0] >= min_duration_s
        ]
        size = self.out_wh or self.frame_wh
        if edge_extend_s > 0 and size is not None:
            frame_times = np.asarray(self._frame_times)
            kept = [_extend_to_edges(r, frame_times, size, edge_extend_s) for r in kept]
        if duplicate_iou > 0:  # after extending: a track born on a leaving one's sliver
            kept = _drop_duplicates(kept, duplicate_iou, duplicate_share)

        def first_key(r: _RawTrack) -> tuple[float, float, float]:
            b = r.xyxy[0]
            return (r.times_s[0], float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)

        kept.sort(key=first_key)
        tracks = []
        for new_id, r in enumerate(kept, start=1):
            has_masks = any(m is not None for m in r.masks_rle)
            tracks.append(
                Track(
                    id=new_id,
                    class_name=_majority(r.class_names),
                    times_s=np.array(r.times_s),
                    xyxy=np.stack(r.xyxy),
                    masks_rle=tuple(r.masks_rle) if has_masks else None,
                )
            )
        return tracks

    @staticmethod
    def _sorted(r: _RawTrack) -> _RawTrack:
        order = np.argsort(r.times_s, kind="stable")
        return _RawTrack(*([seq[i] for i in order] for seq in _columns(r)))


def _columns(r: _RawTrack) -> tuple[list, list, list, list]:
    return r.times_s, r.xyxy, r.masks_rle, r.class_names


_EXTENDED = ""  # class name of an extrapolated frame: no detector vote


def _majority(names: list[str]) -> str:
    votes = Counter(n for n in names if n != _EXTENDED)
    return votes.most_common(1)[0][0]  # ties: the class seen first


def _merge_fragments(raws: list[_RawTrack], gap_s: float, max_dist: float) -> list[_RawTrack]:
    """Greedily append each track to the closest same-class track that ended just before it."""
    order = sorted(range(len(raws)), key=lambda i: raws[i].times_s[0])
    chains: list[_RawTrack] = []
    for i in order:
        r = raws[i]
        cls = _majority(r.class_names)
        best, best_key = None, (np.inf, np.inf)
        for c in chains:
            gap = r.times_s[0] - c.times_s[-1]
            if not 0 < gap <= gap_s or _majority(c.class_names) != cls:
                continue
            a, b = c.xyxy[-1], r.xyxy[0]
            diag = max(np.hypot(*(a[2:] - a[:2])), np.hypot(*(b[2:] - b[:2])), 1e-6)
            dist = np.hypot(*((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2)) / diag
            if dist <= max_dist and (gap, dist) < best_key:  # the shortest gap, then the nearest
                best, best_key = c, (gap, dist)
        if best is None:
            chains.append(_RawTrack(*(list(s) for s in _columns(r))))
        else:
            for dst, src in zip(_columns(best), _columns(r)):
                dst.extend(src)
    return chains


def _drop_duplicates(raws: list[_RawTrack], min_iou: float, share: float) -> list[_RawTrack]:
    """``raws`` without tracks that sit on a longer same-class track (longest kept first)."""
    order = sorted(range(len(raws)), key=lambda i: (-len(raws[i].times_s), raws[i].times_s[0]))
    kept: list[int] = []
    for i in order:
        r = raws[i]
        cls = _majority(r.class_names)
        by_time = dict(zip(r.times_s, r.xyxy))
        for j in kept:
            other = raws[j]
            if _majority(other.class_names) != cls:
                continue
            pairs = [(by_time[t], b) for t, b in zip(other.times_s, other.xyxy) if t in by_time]
            if not pairs:
                continue
            mine, theirs = (np.stack(x) for x in zip(*pairs))
            overlapping = int((paired_box_iou(mine, theirs) >= min_iou).sum())
            if overlapping >= share * len(r.times_s):
                break
        else:
            kept.append(i)
    return [raws[i] for i in sorted(kept)]


def _touches_border(box: np.ndarray, wh: tuple[int, int]) -> bool:
    margin = max(1.0, 0.01 * max(wh))
    w, h = wh
    return bool(
        box[0] <= margin or box[1] <= margin or box[2] >= w - margin or box[3] >= h - margin
    )


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
    frame. Nothing is returned unless the box touches the border and becomes empty within
    ``max_s``: a track that ends for another reason is left alone.
    """
    n = min(fit_frames, len(times))
    if n < 2 or not _touches_border(boxes[0], wh):
        return [], []
    t = np.asarray(times[:n], np.float64)
    dt = t - t[0]
    if not np.ptp(dt) > 0:
        return [], []
    design = np.stack([dt, np.ones_like(dt)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.asarray(boxes[:n], np.float64), rcond=None)
    velocity, start = coef[0], coef[1]  # (4,) px/s, (4,) fitted box at the end time
    w, h = wh
    out_t, out_b = [], []
    for tt in later_times:
        step = float(tt) - float(t[0])
        if abs(step) > max_s:
            return [], []  # still inside the frame after max_s: not leaving
        b = start + velocity * step
        b = np.array([max(b[0], 0.0), max(b[1], 0.0), min(b[2], w), min(b[3], h)])
        if b[2] - b[0] < 1.0 or b[3] - b[1] < 1.0:
            return out_t, out_b  # gone
        out_t.append(float(tt))
        out_b.append(b.astype(np.float32))
    return [], []  # the video ended first: no evidence that it left


def _extend_to_edges(
    r: _RawTrack, frame_times: np.ndarray, wh: tuple[int, int], max_s: float
) -> _RawTrack:
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
    return _RawTrack(
        times_s=before_t[::-1] + list(r.times_s) + after_t,
        xyxy=before_b[::-1] + list(r.xyxy) + after_b,
        masks_rle=[None] * nb + list(r.masks_rle) + [None] * na,
        class_names=[_EXTENDED] * nb + list(r.class_names) + [_EXTENDED] * na,
    )


def collect_tracks(
    frames: Iterable[tuple[float, sv.Detections]],
    config: TrackerConfig | None = None,
    frame_rate: float = 30.0,
    *,
    frame_wh: tuple[int, int] | None = None,
    out_wh: tuple[int, int] | None = None,
) -> list[Track]:
    """Track precomputed per-frame detections ``(time_s, detections)`` and finalize."""
    config = config or TrackerConfig()
    tracker = Tracker(config, frame_rate)
    builder = TrackBuilder(frame_wh, out_wh)
    for time_s, dets in frames:
        _feed(tracker, builder, time_s, dets)
    return _finish(builder, config)


def track_frames(
    frames_iter: Iterable[tuple[float, np.ndarray]],
    detector: Detector,
    config: TrackerConfig | None = None,
    frame_rate: float = 30.0,
    *,
    out_wh: tuple[int, int] | None = None,
) -> list[Track]:
    """Detect (``detector.batch_size`` frames per call) and track a stream of RGB frames.

    Holds at most one batch of frames. Boxes and masks are in the frames' size, or
    scaled to ``out_wh`` (width, height) when given.
    """
    config = config or TrackerConfig()
    tracker = Tracker(config, frame_rate)
    builder: TrackBuilder | None = None
    batch: list[tuple[float, np.ndarray]] = []

    def flush() -> None:
        for (time_s, _), dets in zip(batch, detector([f for _, f in batch])):
            _feed(tracker, builder, time_s, dets)
        batch.clear()

    for time_s, frame in frames_iter:
        if builder is None:
            builder = TrackBuilder((frame.shape[1], frame.shape[0]), out_wh)
        batch.append((float(time_s), frame))
        if len(batch) >= detector.batch_size:
            flush()
    if batch:
        flush()
    return [] if builder is None else _finish(builder, config)


def _feed(tracker: Tracker, builder: TrackBuilder, time_s: float, dets: sv.Detections) -> None:
    builder.add(time_s, tracker.update(dets, time_s))
    for birth_s, first in tracker.pop_births():
        builder.add(birth_s, first)


def _finish(builder: TrackBuilder, config: TrackerConfig) -> list[Track]:
    return builder.finalize(
        min_frames=config.min_frames,
        min_duration_s=config.min_duration_s,
        merge_gap_s=config.merge_gap_s,
        merge_max_dist=config.merge_max_dist,
        edge_extend_s=config.edge_extend_s,
        duplicate_iou=config.duplicate_iou,
        duplicate_share=config.duplicate_share,
    )
