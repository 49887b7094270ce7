"""One video to one shard row: decode, detect, track, match, overlay, encode.

:class:`VideoProcessor` holds the loaded detector and overlay and composes the stages in
data-flow order; :mod:`pipeline.preprocess` runs it over a dataset. A video with MOT
ground truth (:attr:`pipeline.records.VideoRecord.mot_gt`) is also scored
(:mod:`pipeline.mot`): ByteTrack alone runs on the same detections, and both it and the
final tracks are counted against the ground truth on the tracked frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.records import GTObject, QueryRecord, VideoRecord
from pipeline.shards import make_row


def scale_query(query: QueryRecord, sx: float, sy: float, size_hw: tuple[int, int]) -> QueryRecord:
    """Ground truth from native to stored frame size (boxes scaled, masks resized)."""
    if sx == 1.0 and sy == 1.0:
        return query
    from pipeline.geometry import mask_to_rle, resize_mask, rle_to_mask, scale_xyxy

    h, w = size_hw
    native_hw = (round(h / sy), round(w / sx))
    gts = []
    for g in query.gt:
        masks = g.masks_rle
        if masks is not None:
            masks = tuple(
                None if m is None else mask_to_rle(resize_mask(rle_to_mask(m, *native_hw), h, w))
                for m in masks
            )
        gts.append(GTObject(g.object, g.times_s, scale_xyxy(g.xyxy, sx, sy), masks))
    return dataclasses.replace(query, gt=tuple(gts))


def _encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image_rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _segmenter(config: PreprocessConfig):
    """The SAM 2 box-prompt segmenter for ``--masks sam2`` (None otherwise)."""
    if config.masks != "sam2":
        return None
    from pipeline.masks import BoxPromptSegmenter

    return BoxPromptSegmenter(config.sam_weights)


def _embedder(config: PreprocessConfig):
    """The named ReID model of ``--reid-weights`` (None: the detector's own features)."""
    if config.reid_weights is None:
        return None
    from pipeline.reid import ReIDEmbedder

    return ReIDEmbedder(config.reid_weights)


def tracker_config(config: PreprocessConfig):
    """The :class:`pipeline.track.TrackerConfig` that ``config``'s flags describe."""
    from pipeline.track import TrackerConfig

    # short tracks are dropped before renumbering, so IDs stay consecutive 1..K
    return TrackerConfig(
        track_low_thresh=min(config.conf, 0.25),
        match_thresh=config.match_thresh,
        track_buffer=config.track_buffer,
        fuse_score=config.fuse_score,
        min_frames=config.min_track_frames,
        edge_extend_s=config.edge_extend_s,
        duplicate_iou=config.duplicate_iou,
        merged_growth=config.merged_growth,
        kalman=config.kalman,
        tracker=config.tracker,
        associate_gap_s=config.associate_gap_s,
        associate_min_sim=config.associate_min_sim,
        associate_min_color=config.associate_min_color,
    )


class VideoProcessor:
    """Turns one :class:`VideoRecord` into one shard row. Holds the detector and overlay."""

    def __init__(self, config: PreprocessConfig):
        from pipeline.detect import Detector
        from pipeline.overlay import IdOverlay

        self.config = config
        self.tracker_config = tracker_config(config)
        self.detector = Detector(
            config.weights,
            conf=config.conf,
            iou=config.nms_iou,
            agnostic_nms=config.agnostic_nms,
            classes=list(config.classes) if config.classes else None,
            imgsz=config.imgsz,
            batch_size=config.batch_size,
            segmenter=_segmenter(config),
            embedder=_embedder(config),
            colors=self.tracker_config.reads_colors,
        )
        self.overlay = IdOverlay(style=config.overlay_style)

    def __call__(self, record: VideoRecord) -> tuple[dict, dict]:
        from pipeline.decode import iter_frames, probe
        from pipeline.match import match_quality, match_query
        from pipeline.overlay import overlay_video_frame
        from pipeline.track import track_frames

        cfg = self.config
        if record.dataset == "folder":
            from pipeline.adapters.folder import check_weights

            check_weights(cfg.weights, Path(record.source).stem)
            if cfg.fps is not None and record.frame_files is not None:  # --fps: JPEG folders
                record = dataclasses.replace(record, fps=cfg.fps)
        info = probe(record)
        track_rate = cfg.track_fps or info.fps
        tracked_times: list[float] = []
        stored_hw: tuple[int, int] | None = None
        mot_gt = bytetrack = None
        if record.mot_gt is not None:  # scored below; ByteTrack alone sees the same detections
            from pipeline.mot import ByteTrackAlone, read_mot_gt

            mot_gt = read_mot_gt(record.mot_gt)
            bytetrack = ByteTrackAlone(track_rate)

        def tracked_frames() -> Iterator[tuple[float, np.ndarray]]:
            nonlocal stored_hw
            for frame in iter_frames(record, fps=cfg.track_fps, max_side=cfg.max_side):
                tracked_times.append(frame.time_s)
                stored_hw = frame.image.shape[:2]
                yield frame.time_s, frame.image

        tracks = track_frames(
            tracked_frames(),
            self.detector,
            self.tracker_config,
            frame_rate=track_rate,
            on_detections=None if bytetrack is None else bytetrack.update,
        )
        if stored_hw is None:
            raise RuntimeError("the video decoded to no frames")
        h, w = stored_hw
        sx, sy = w / info.width, h / info.height
        mot = None
        if mot_gt is not None:
            from pipeline.mot import gt_on_frames, tracks_on_frames, video_counts

            # on the tracked frames only, in the stored size
            gt = gt_on_frames(mot_gt, tracked_times, info.fps, (sx, sy), record.clip_start_s)
            hyps = {
                "bytetrack": bytetrack.boxes,
                "pipeline": tracks_on_frames(tracks, tracked_times),
            }
            mot = video_counts(gt, hyps, len(tracked_times))

        queries, n_exact = [], 0
        for q in record.queries:
            q = scale_query(q, sx, sy, (h, w))
            matched = match_query(q, tracks, max_gap_s=cfg.max_gap_s, min_iou=cfg.min_match_iou)
            if q.gt:
                quality = match_quality(matched, tracks, max_gap_s=cfg.max_gap_s, frame_hw=(h, w))
                n_exact += bool(quality["exact"])
            queries.append(matched)

        frames, times = [], []
        for frame in iter_frames(record, fps=cfg.out_fps, max_side=cfg.max_side):
            drawn = overlay_video_frame(
                frame.image, tracks, frame.time_s, cfg.max_gap_s, self.overlay,
                max_unseen_s=0.51 / track_rate,  # seen on the nearest tracked frame
            )  # fmt: skip
            frames.append(_encode_jpeg(drawn, cfg.jpeg_quality))
            times.append(frame.time_s)
        row = make_row(
            video_id=record.video_id,
            dataset=record.dataset,
            split=record.split,
            width=w,
            height=h,
            out_fps=cfg.out_fps,
            track_fps=track_rate,
            native_fps=info.fps,
            frame_times_s=times,
            frames=frames,
            tracks=tracks,
            queries=queries,
            mot=mot,
        )
        stats = {
            "frames_tracked": len(tracked_times),
            "frames_stored": len(frames),
            "exact": n_exact,
        }
        return row, stats
