"""Preprocessing settings: :class:`PreprocessConfig`, one dataclass whose fields are the CLI's
flags, and the folder identity derived from it (:data:`OUTPUT_VERSION`, the detector's hash).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.masks import MASK_SOURCES
from pipeline.overlay import STYLES as OVERLAY_STYLES
from pipeline.track import KALMAN_STATES, TRACKERS


def _opt(default, help: str, **cli):
    """A config field with its command-line help (and ``choices`` / ``metavar``); how the
    text is read follows from the annotation (:mod:`pipeline.cli`)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that change what is written (hashed into the manifest; each is a CLI flag).

    ``conf`` is the detector's threshold, i.e. the lowest score ByteTrack sees. It is
    ByteTrack's ``track_low_thresh`` (0.1, as in Ultralytics' ``model.track``), so that
    low-score boxes (objects entering, leaving or half hidden) extend existing tracks in
    ByteTrack's second association; new tracks still need a score of 0.25. With
    ``fuse_score`` (IoU multiplied by the detection score in the first association) a
    well-overlapping box of a partly visible object fails the cost threshold and its
    track breaks into a new ID, so it is off. NMS is class-agnostic at IoU 0.5, the
    Kalman state is XYWH, and tracks are continued to the frame border and cleaned of
    duplicates (see :class:`pipeline.track.TrackerConfig`).
    (README's right-IDs table holds the measured effect of these choices.)
    """

    weights: str | None = _opt(
        None,
        "YOLO weights: a name such as yolo11x.pt / yolo11x-seg.pt (put it in data/models/) "
        "or a path; default: the committed synthetic detector",
    )
    conf: float = _opt(
        0.1,
        "detector threshold = the lowest score ByteTrack sees (0.1-0.25 boxes only extend "
        "tracks; new tracks need 0.25)",
    )
    nms_iou: float = _opt(0.5, "detector NMS IoU threshold")
    agnostic_nms: bool = _opt(
        True,
        "NMS across classes: one box per object, so a half-confused object (a circle also "
        "scored as a square) does not get two tracks and two IDs",
    )
    classes: tuple[str, ...] | None = _opt(
        None, "keep only these detector classes (names or ids), e.g. person"
    )
    imgsz: int | None = _opt(None, "detector input size (default: the checkpoint's)")
    batch_size: int = _opt(16, "frames per detector call")
    track_fps: float | None = _opt(
        None, "rate at which frames are detected and tracked (default: native)"
    )
    out_fps: float = _opt(2.0, "rate of the stored, overlaid frames")
    max_side: int | None = _opt(640, "shrink frames so the longer side is at most this (0: keep)")
    min_track_frames: int = _opt(3, "drop tracks observed in fewer frames")
    max_gap_s: float = _opt(
        1.0,
        "interpolate a track's box across gaps up to this long when matching ground truth to "
        "IDs (an object hidden that long behind another keeps its ID; numbers are drawn only "
        "where the track was observed)",
    )
    overlay_style: str = _opt(
        "number",
        "how IDs are drawn: legible numbers (outlined, contrasting, never overlapping) alone or "
        "with boxes or mask contours, or stvg-r1 (STVG-R1's red number at the mask centre)",
        choices=OVERLAY_STYLES,
    )
    jpeg_quality: int = _opt(90, "JPEG quality of the stored frames")
    min_match_iou: float = _opt(0.3, "GT frames whose best track IoU is below this do not vote")
    match_thresh: float = _opt(0.8, "ByteTrack first-association cost threshold (1 - IoU)")
    track_buffer: int = _opt(
        30, "ByteTrack: frames (at 30 fps) a lost track waits to be found again"
    )
    fuse_score: bool = _opt(
        False,
        "ByteTrack: multiply IoU by the detection score in the first association",
    )
    kalman: str = _opt(
        "xywh",
        "ByteTrack's Kalman state: xywh (BoT-SORT's; keeps the ID of objects entering or "
        "leaving the frame) or xyah (ByteTrack's original)",
        choices=KALMAN_STATES,
    )
    duplicate_iou: float = _opt(
        0.5,
        "one ID per object at a time: a track moving with a longer one (any class, alike "
        "in look) at IoU >= this is cut for those frames, dropped if that is 60%% of its "
        "frames (0: keep all)",
    )
    merged_growth: float = _opt(
        0.15,
        "repair a box wider or taller than 1 + this times the track's usual size within 1 s "
        "(a detector's box around two overlapping objects) from its neighbours (0: off)",
    )
    edge_extend_s: float = _opt(
        1.0,
        "continue a track that leaves (enters) through the frame border at its velocity, "
        "clipped to the frame, until it is gone, at most this long (0: off)",
    )
    # ---- identity across occlusion, labels, masks
    tracker: str = _opt(
        "bytetrack",
        "online tracker: bytetrack (motion only) or botsort (Ultralytics BoT-SORT with the "
        "detector's own features, or those of --reid-weights, as ReID)",
        choices=TRACKERS,
    )
    associate_gap_s: float = _opt(
        8.0,
        "after tracking, link tracklets of one object (same class, similar look, plausible "
        "place) that are apart by up to this many seconds into one ID; never two tracklets "
        "seen at the same time (0: off)",
    )
    associate_min_sim: float = _opt(
        0.6, "least appearance similarity (cosine) of two tracklets linked into one ID"
    )
    associate_min_color: float = _opt(
        0.5,
        "least colour similarity (Bhattacharyya coefficient of the mask's, or box's, HSV "
        "histograms) of two tracklets linked into one ID; it only refuses links, and a track "
        "whose mask colours change this much is cut there before linking (-1: both off)",
    )
    masks: str = _opt(
        "detector",
        "where masks come from: detector (segmentation weights give them, detection weights "
        "none) or sam2 (every detected box prompts the SAM 2 model of --sam-weights)",
        choices=MASK_SOURCES,
    )
    sam_weights: str | None = _opt(
        None, "SAM 2 weights for --masks sam2, e.g. data/models/sam2.1_b.pt (never downloaded)"
    )
    reid_weights: str | None = _opt(
        None,
        "ReID model whose embeddings replace the detector's own features (association, "
        "duplicates, --tracker botsort): a file Ultralytics' ReID loads, e.g. "
        "data/models/yolo11n-cls.pt or yolo26s-reid.onnx (a bare name is looked up in "
        "data/models/; never downloaded)",
    )
    fps: float | None = _opt(
        None,
        "frame rate of JPEG-frame folders (folder dataset; default: the dataset's, 30 for folder)",
    )

    def __post_init__(self):
        problems = []
        if not 0.0 <= self.conf <= 1.0:
            problems.append(f"conf must be in [0, 1], got {self.conf}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.track_fps is not None and not self.track_fps > 0:
            problems.append(f"track_fps must be > 0 or None, got {self.track_fps}")
        if not self.out_fps > 0:
            problems.append(f"out_fps must be > 0, got {self.out_fps}")
        if self.max_side is not None and self.max_side < 2:
            problems.append(f"max_side must be >= 2 or None, got {self.max_side}")
        if self.min_track_frames < 1 or self.track_buffer < 0:
            problems.append(
                f"min_track_frames must be >= 1 and track_buffer >= 0, got "
                f"{self.min_track_frames} and {self.track_buffer}"
            )
        if self.max_gap_s < 0 or self.edge_extend_s < 0 or self.merged_growth < 0:
            problems.append(
                f"max_gap_s, edge_extend_s and merged_growth must be >= 0, got "
                f"{self.max_gap_s}, {self.edge_extend_s} and {self.merged_growth}"
            )
        if not (0.0 <= self.nms_iou <= 1.0 and 0.0 <= self.duplicate_iou <= 1.0):
            problems.append(
                f"nms_iou ({self.nms_iou}) and duplicate_iou ({self.duplicate_iou}) must be "
                "in [0, 1]"
            )
        if self.kalman not in KALMAN_STATES:
            problems.append(f"kalman must be one of {KALMAN_STATES}, got {self.kalman!r}")
        if self.overlay_style not in OVERLAY_STYLES:
            problems.append(
                f"overlay_style must be one of {OVERLAY_STYLES}, got {self.overlay_style!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0.0 <= self.min_match_iou <= 1.0 or not 0.0 <= self.match_thresh <= 1.0:
            problems.append(
                f"min_match_iou ({self.min_match_iou}) and match_thresh ({self.match_thresh}) "
                "must be in [0, 1]"
            )
        # ---- identity across occlusion, labels, masks
        if self.tracker not in TRACKERS:
            problems.append(f"tracker must be one of {TRACKERS}, got {self.tracker!r}")
        if self.masks not in MASK_SOURCES or (self.masks == "sam2") != bool(self.sam_weights):
            problems.append(
                f"masks must be one of {MASK_SOURCES}, and --sam-weights is needed with (and "
                f"only with) --masks sam2; got masks={self.masks!r}, sam_weights={self.sam_weights!r}"
            )
        if self.reid_weights is not None and not str(self.reid_weights).strip():
            problems.append(f"reid_weights must name a file or be None, got {self.reid_weights!r}")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"fps must be > 0 or None, got {self.fps}")
        if not self.associate_gap_s >= 0 or not -1.0 <= self.associate_min_sim <= 1.0:
            problems.append(
                f"associate_gap_s must be >= 0 and associate_min_sim in [-1, 1], got "
                f"{self.associate_gap_s} and {self.associate_min_sim}"
            )
        if not -1.0 <= self.associate_min_color <= 1.0:
            problems.append(
                f"associate_min_color must be in [-1, 1], got {self.associate_min_color}"
            )
        if problems:
            raise ValueError("PreprocessConfig: " + "; ".join(problems))

    def identity(self) -> dict:
        """Everything that decides the rows: the settings but :data:`NOT_IN_IDENTITY`,
        :data:`OUTPUT_VERSION` and the detector file's SHA-256 (``weights`` None names
        whatever checkpoint is committed), and those of the SAM 2 and ReID files in use."""
        from pipeline.detect import resolve_weights

        settings = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        for name in NOT_IN_IDENTITY:
            settings.pop(name, None)
        identity = {
            **settings,
            "output_version": OUTPUT_VERSION,
            "weights_sha256": _file_digest(resolve_weights(self.weights)),
        }
        if self.masks == "sam2":  # the masks come from this file: other bytes, other rows
            from pipeline.masks import resolve_sam_weights

            identity["sam_weights_sha256"] = _file_digest(resolve_sam_weights(self.sam_weights))
        if self.reid_weights is not None:  # the embeddings come from this file
            from pipeline.reid import resolve_reid_weights

            identity["reid_weights_sha256"] = _file_digest(resolve_reid_weights(self.reid_weights))
        return identity

    def hash(self) -> str:
        """Hash of :meth:`identity`: a shard folder only ever holds rows of one identity."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


NOT_IN_IDENTITY = ("batch_size",)
"""Settings that cannot change a row, left out of :meth:`PreprocessConfig.identity`: the
detector's batch is cut every ``batch_size`` frames from the video's start, and rows
made with batches of 1 and 16 agree to 1e-3 px (tests/test_faults.py), so a resume
with another batch size is accepted. (Workers and the progress bar are run options,
not settings.)"""

OUTPUT_VERSION = 5
"""Bumped whenever a code change alters the rows written for the same settings, so that
a resumed run never mixes rows of two pipeline versions (2: agnostic NMS, tracks continued
to the frame border, duplicate tracks dropped, XYWH Kalman state, numbers kept inside
the frame).
3: tracklets of one object linked across occlusions and exits (offline association),
duplicates resolved across classes and cut for the overlapping period, border extension
stopped at the sliver size, numbers only where the object was seen, legible labels;
JPEG-folder clips timed from their first stored frame; ground-truth boxes checked and
clipped to the frame.
4: the ``mot`` column (MOT counts of videos with MOTChallenge ground truth); masks of
segmentation weights predicted at the frame's resolution (``retina_masks``); links
between tracklets whose colours differ refused.
5: tracks carried from one object onto another cut where their mask colours change;
alike tracklets hidden at once are rivals, not a bar to each other's links; link
distances in the tracklet's median box diagonal."""


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _digest(path.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _digest(path: Path, mtime_ns: int, size: int) -> str:  # keyed on the file's state
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
