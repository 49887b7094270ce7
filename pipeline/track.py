"""Online tracking with ByteTrack (or BoT-SORT with ReID), then the offline passes.

:class:`Tracker` streams per-frame detections through Ultralytics' ``BYTETracker``
(configured from ``bytetrack.yaml``'s parameters, see :class:`TrackerConfig`) or its
``BOTSORT`` with the detections' embeddings as ReID (the detector's own features, or a
named ReID model's, :mod:`pipeline.reid`), and returns new ``sv.Detections``
with ``tracker_id``. :class:`pipeline.tracklets.TrackBuilder` collects them into
tracklets and turns those into the small, consecutive IDs drawn on the frames
(:class:`pipeline.records.Track`), linking tracklets of one object across occlusions
(:mod:`pipeline.associate`). :func:`track_frames` runs detect -> track -> finalize over
a frame stream, one detector batch at a time.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import supervision as sv

from pipeline.associate import AssociationConfig, associate
from pipeline.records import Track
from pipeline.runtime import configure_offline
from pipeline.tracklets import TrackBuilder

if TYPE_CHECKING:
    from pipeline.detect import Detector

KALMAN_STATES = ("xywh", "xyah")
TRACKERS = ("bytetrack", "botsort")
__all__ = ["KALMAN_STATES", "TRACKERS", "TrackBuilder", "Tracker", "TrackerConfig"]

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
        duplicate_iou: a track whose boxes overlap those of a longer track, of any
            class, at IoU >= this over at least two shared frames while the two move
            together (and look alike, when both have features) sits on the same object
            (a detector that fires twice on a half-visible shape, or with two classes):
            it is dropped when that covers at least ``duplicate_share`` of its frames,
            otherwise those frames are cut from it
            (:func:`pipeline.tracklets.resolve_duplicates`; 0 = keep every track).
        duplicate_share: see ``duplicate_iou``.
        merged_growth: a box wider or taller than ``1 +`` this times the track's usual
            size around then (a detector's box around two overlapping objects) is replaced
            by the line between its sound neighbours, or, at the track's ends, the line
            through the sound boxes on one side, extended
            (:func:`pipeline.tracklets.repair_merged_boxes`; 0 = off).
        edge_extend_s: a track whose last (first) box touches the frame border and
            whose motion carries it out of the frame is continued (started earlier) on
            the tracked frames with its extrapolated box clipped to the frame, until the
            clipped box is empty, at most this many seconds (0 = off). Objects leaving or
            entering the frame shrink to slivers the detector misses or scores too low
            for ByteTrack, so their IDs would vanish early (appear late); a track that
            ends inside the frame (occlusion, a missed detection) is never extended.
            Extension stops where the visible part would be a sliver (shorter side under
            :data:`pipeline.match.MIN_GT_SIDE` of the frame), which matching ignores.
        tracker: ``"bytetrack"`` (motion only) or ``"botsort"`` (Ultralytics' BoT-SORT with
            the detections' ``data["feature"]`` as ReID, ``model: auto``; no camera-motion
            compensation). With a named ReID model those are its embeddings, computed once
            per box by the detection stage: the same crops and model that
            ``with_reid=True, model=<file>`` would embed again (``tests/test_reid.py``).
        associate_gap_s: link tracklets of one object separated by up to this many
            seconds (occlusion, leaving and re-entering) into one ID, offline over the
            whole clip (:mod:`pipeline.associate`; 0 = off).
        associate_min_sim: least appearance similarity of two tracklets so linked.
        associate_min_color: least colour similarity of two tracklets so linked (a veto;
            -1 = off; :class:`pipeline.associate.AssociationConfig`).
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
    merged_growth: float = 0.15
    edge_extend_s: float = 1.0
    tracker: str = "bytetrack"
    associate_gap_s: float = 8.0
    associate_min_sim: float = 0.6
    associate_min_color: float = 0.5

    @property
    def association(self) -> AssociationConfig | None:
        """The offline association settings (None when ``associate_gap_s`` is 0)."""
        if self.associate_gap_s <= 0:
            return None
        return AssociationConfig(
            max_gap_s=self.associate_gap_s,
            min_similarity=self.associate_min_sim,
            min_color_similarity=self.associate_min_color,
        )

    @property
    def reads_colors(self) -> bool:
        """Whether tracking reads the detections' colour histograms: only the offline
        association's colour check does, with a floor above 0 (a Bhattacharyya
        coefficient never is below)."""
        association = self.association
        return association is not None and association.min_color_similarity > 0

    def __post_init__(self):
        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker must be one of {TRACKERS}, got {self.tracker!r}")
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
            "associate_gap_s": self.associate_gap_s,
        }
        negative = {k: v for k, v in lengths.items() if not v >= 0}
        if negative:
            raise ValueError(f"these must be >= 0: {negative}")
        _ = self.association  # validates the association settings
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


class _Args(types.SimpleNamespace):
    def update(self, **kw) -> None:
        self.__dict__.update(kw)


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

        args = _Args(**{k: getattr(self.config, k) for k in _BYTETRACK_KEYS})
        args.track_buffer = max(1, round(self.config.track_buffer * frame_rate / 30.0))
        if self.config.tracker == "botsort":
            from ultralytics.trackers.bot_sort import BOTSORT

            # the detections' features as ReID (BoT-SORT's ``model: auto``); no camera-motion
            # compensation (it needs the frame, and the supported datasets film mostly still)
            args.update(gmc_method="none", proximity_thresh=0.5, appearance_thresh=0.8)
            args.update(with_reid=True, model="auto")
            tracker_class = BOTSORT
        elif self.config.kalman == "xyah":
            tracker_class = BYTETracker
        else:
            tracker_class = _xywh_tracker_class()
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
        feats = detections.data.get("feature")
        if self.config.tracker == "botsort" and n and (feats is None or not feats.shape[1]):
            raise ValueError("tracker='botsort' needs detections with data['feature']")
        rows = self._bytetrack.update(_ByteTrackInput(conf, cls, xywh), feats=feats)
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
    on_detections: Callable[[float, sv.Detections], None] | None = None,
) -> list[Track]:
    """Detect (``detector.batch_size`` frames per call) and track a stream of RGB frames.

    Holds at most one batch of frames. Boxes and masks are in the frames' size, or
    scaled to ``out_wh`` (width, height) when given. ``on_detections(time_s, detections)``,
    if given, sees every frame's detections in time order (another tracker can run on
    the same detections; it must not modify them).
    """
    config = config or TrackerConfig()
    tracker = Tracker(config, frame_rate)
    builder: TrackBuilder | None = None
    batch: list[tuple[float, np.ndarray]] = []

    def flush() -> None:
        for (time_s, _), dets in zip(batch, detector([f for _, f in batch])):
            if on_detections is not None:
                on_detections(time_s, dets)
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
        link=_linker(config, builder),
        merged_growth=config.merged_growth,
    )


def _linker(config: TrackerConfig, builder: TrackBuilder):
    """The offline association pass for ``finalize`` (None when off)."""
    assoc = config.association
    if assoc is None:
        return None
    wh = builder.out_wh or builder.frame_wh
    return functools.partial(associate, cfg=assoc, wh=wh)
