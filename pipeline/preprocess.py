"""Preprocess a dataset into Parquet shards: detect, track, renumber, match, overlay, write.

    python -m pipeline.preprocess --dataset synthetic --split train
    make preprocess DATASET=mevis SPLIT=train

Each video is decoded twice, streaming: once at ``track_fps`` for detection and tracking,
once at ``out_fps`` to burn the final IDs into the stored frames. Nothing holds a whole
video in memory. Finished videos are written in small atomic part files, so a rerun
(after a crash, ``kill -9`` or Ctrl-C) skips them and completes with no duplicate or
partial rows. A video that cannot be processed (missing, corrupt, truncated, no frames)
is appended to ``_failures.jsonl`` with the reason and listed in ``_manifest.json``
(config, config hash, package versions, counts); the run goes on, and a rerun retries it.
A video in which nothing is detected is not a failure: its row has no tracks and its
queries no target IDs (counted as unmatched). The manifest is written before the first
video, so a folder made with other settings is refused even after a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.output import (  # noqa: F401  (re-exported: the folder layout is part of the CLI)
    FAILURES,
    MANIFEST,
    PART_PREFIX,
    OutputConflictError,
    next_part,
    package_versions,
    prepare_output,
    read_failures,
    select_records,
    shard_of,
    summarize_shards,
)
from pipeline.overlay import STYLES as OVERLAY_STYLES
from pipeline.records import GTObject, QueryRecord, VideoRecord
from pipeline.runtime import DATA_DIR, resolve
from pipeline.shards import make_row, read_video_ids, write_json_atomic, write_shard
from pipeline.track import KALMAN_STATES


def _opt(default, help: str, **cli):
    """A config field with its command-line help (and argparse extras such as ``type``)."""
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
    duplicates (see :class:`pipeline.track.TrackerConfig`). Measured on the default
    synthetic set (40 queries, ``exact_rate`` in the manifest): 38/40 right IDs, against
    31/40 with Ultralytics' tracking defaults and the same detector definition.
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
        type=float,
    )
    nms_iou: float = _opt(0.5, "detector NMS IoU threshold", type=float)
    agnostic_nms: bool = _opt(
        True,
        "NMS across classes: one box per object, so a half-confused object (a circle also "
        "scored as a square) does not get two tracks and two IDs",
        action=argparse.BooleanOptionalAction,
    )
    classes: tuple[str, ...] | None = _opt(
        None, "keep only these detector classes (names or ids), e.g. person", nargs="+"
    )
    imgsz: int | None = _opt(None, "detector input size (default: the checkpoint's)", type=int)
    batch_size: int = _opt(16, "frames per detector call", type=int)
    track_fps: float | None = _opt(
        None, "rate at which frames are detected and tracked (default: native)", type=float
    )
    out_fps: float = _opt(2.0, "rate of the stored, overlaid frames", type=float)
    max_side: int | None = _opt(
        640, "shrink frames so the longer side is at most this (0: keep)", type=int
    )
    min_track_frames: int = _opt(3, "drop tracks observed in fewer frames", type=int)
    max_gap_s: float = _opt(
        0.5, "interpolate a track's box across gaps up to this long", type=float
    )
    overlay_style: str = _opt("number", "how IDs are drawn", choices=OVERLAY_STYLES)
    jpeg_quality: int = _opt(90, "JPEG quality of the stored frames", type=int)
    min_match_iou: float = _opt(
        0.3, "GT frames whose best track IoU is below this do not vote", type=float
    )
    match_thresh: float = _opt(
        0.8, "ByteTrack first-association cost threshold (1 - IoU)", type=float
    )
    track_buffer: int = _opt(
        30, "ByteTrack: frames (at 30 fps) a lost track waits to be found again", type=int
    )
    fuse_score: bool = _opt(
        False,
        "ByteTrack: multiply IoU by the detection score in the first association",
        action=argparse.BooleanOptionalAction,
    )
    kalman: str = _opt(
        "xywh",
        "ByteTrack's Kalman state: xywh (BoT-SORT's; keeps the ID of objects entering or "
        "leaving the frame) or xyah (ByteTrack's original)",
        choices=KALMAN_STATES,
    )
    duplicate_iou: float = _opt(
        0.5,
        "drop a track lying on a longer same-class track at IoU >= this on 60%% of its "
        "frames (a second ID on one object; 0: keep all)",
        type=float,
    )
    edge_extend_s: float = _opt(
        1.0,
        "continue a track that leaves (enters) through the frame border at its velocity, "
        "clipped to the frame, until it is gone, at most this long (0: off)",
        type=float,
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
        if self.max_gap_s < 0 or self.edge_extend_s < 0:
            problems.append(
                f"max_gap_s and edge_extend_s must be >= 0, got {self.max_gap_s} and "
                f"{self.edge_extend_s}"
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
        if problems:
            raise ValueError("PreprocessConfig: " + "; ".join(problems))

    def identity(self) -> dict:
        """Everything that decides the rows: the settings, :data:`OUTPUT_VERSION` and the
        detector file's SHA-256 (``weights`` None names whatever checkpoint is committed)."""
        from pipeline.detect import resolve_weights

        settings = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        return {
            **settings,
            "output_version": OUTPUT_VERSION,
            "weights_sha256": _file_digest(resolve_weights(self.weights)),
        }

    def hash(self) -> str:
        """Hash of :meth:`identity`: a shard folder only ever holds rows of one identity."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


OUTPUT_VERSION = 2
"""Bumped whenever a code change alters the rows written for the same settings, so that
a resumed run never mixes rows of two pipeline versions (2: agnostic NMS, tracks continued
to the frame border, duplicate tracks dropped, XYWH Kalman state, numbers kept inside
the frame)."""


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


@dataclass
class RunStats:
    videos: int = 0
    frames_tracked: int = 0
    frames_stored: int = 0
    failures: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------ one video


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


class VideoProcessor:
    """Turns one :class:`VideoRecord` into one shard row. Holds the detector and overlay."""

    def __init__(self, config: PreprocessConfig):
        from pipeline.detect import Detector
        from pipeline.overlay import IdOverlay
        from pipeline.track import TrackerConfig

        self.config = config
        self.detector = Detector(
            config.weights,
            conf=config.conf,
            iou=config.nms_iou,
            agnostic_nms=config.agnostic_nms,
            classes=list(config.classes) if config.classes else None,
            imgsz=config.imgsz,
            batch_size=config.batch_size,
        )
        self.overlay = IdOverlay(style=config.overlay_style)
        # short tracks are dropped before renumbering, so IDs stay consecutive 1..K
        self.tracker_config = TrackerConfig(
            track_low_thresh=min(config.conf, 0.25),
            match_thresh=config.match_thresh,
            track_buffer=config.track_buffer,
            fuse_score=config.fuse_score,
            min_frames=config.min_track_frames,
            edge_extend_s=config.edge_extend_s,
            duplicate_iou=config.duplicate_iou,
            kalman=config.kalman,
        )

    def __call__(self, record: VideoRecord) -> tuple[dict, dict]:
        from pipeline.decode import iter_frames, probe
        from pipeline.match import match_quality, match_query
        from pipeline.overlay import overlay_video_frame
        from pipeline.track import track_frames

        cfg = self.config
        info = probe(record)
        track_rate = cfg.track_fps or info.fps
        n_tracked = 0
        stored_hw: tuple[int, int] | None = None

        def tracked_frames() -> Iterator[tuple[float, np.ndarray]]:
            nonlocal n_tracked, stored_hw
            for frame in iter_frames(record, fps=cfg.track_fps, max_side=cfg.max_side):
                n_tracked += 1
                stored_hw = frame.image.shape[:2]
                yield frame.time_s, frame.image

        tracks = track_frames(
            tracked_frames(), self.detector, self.tracker_config, frame_rate=track_rate
        )
        if stored_hw is None:
            raise RuntimeError("the video decoded to no frames")
        h, w = stored_hw
        sx, sy = w / info.width, h / info.height

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
                frame.image, tracks, frame.time_s, cfg.max_gap_s, self.overlay
            )
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
        )
        stats = {"frames_tracked": n_tracked, "frames_stored": len(frames), "exact": n_exact}
        return row, stats


# ------------------------------------------------------------------ workers

Result = tuple[str, dict | None, dict | None, str | None]  # video_id, row, stats, error
_worker: VideoProcessor | None = None  # one per worker process


def _process(processor: VideoProcessor, record: VideoRecord) -> Result:
    try:
        row, stats = processor(record)
        return record.video_id, row, stats, None
    except Exception as exc:  # recorded per video; the run goes on
        return record.video_id, None, None, f"{type(exc).__name__}: {exc}"


def _init_worker(config: PreprocessConfig, threads: int) -> None:
    global _worker
    import torch

    torch.set_num_threads(threads)
    _worker = VideoProcessor(config)


def _run_one(record: VideoRecord) -> Result:
    assert _worker is not None, "_init_worker did not run in this process"
    return _process(_worker, record)


def _run_serial(todo: Sequence[VideoRecord], config: PreprocessConfig) -> Iterator[Result]:
    processor = VideoProcessor(config)  # released when the run ends
    for record in todo:
        yield _process(processor, record)


WORKER_DIED = (
    "WorkerDied: the worker process died while processing this video or one processed "
    "alongside it (killed, or out of memory?)"
)


def _run_parallel(
    todo: Sequence[VideoRecord], config: PreprocessConfig, workers: int
) -> Iterator[Result]:
    """Results in completion order from ``workers`` processes, one video in flight per
    worker. A worker that dies (killed, out of memory) fails the videos then in flight
    (a rerun retries them) and the pool is restarted for the rest; a plain
    ``multiprocessing.Pool`` would wait for the lost video forever."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(reversed(todo))
    fruitless = 0  # consecutive pools that broke before returning anything
    while queue:
        pool = ProcessPoolExecutor(
            workers, mp.get_context("spawn"), initializer=_init_worker, initargs=(config, threads)
        )
        running: dict = {}  # future -> record
        returned, broken = 0, False
        try:
            while (queue or running) and not broken:
                while queue and len(running) < workers:
                    record = queue.pop()
                    running[pool.submit(_run_one, record)] = record
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    del running[fut]
                    returned += 1
                    yield result
        finally:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()  # Ctrl-C or an error: do not wait for running videos
            pool.shutdown(wait=True, cancel_futures=True)
        if broken:
            fruitless = 0 if returned else fruitless + 1
            if fruitless >= 2:
                raise RuntimeError(
                    "the worker processes keep dying before finishing any video; "
                    "run with --workers 1 to see the error"
                )
            for record in running.values():
                yield record.video_id, None, None, WORKER_DIED


# ------------------------------------------------------------------ the run


def run(
    records: Sequence[VideoRecord],
    out_dir: Path,
    config: PreprocessConfig,
    *,
    workers: int = 1,
    videos_per_file: int = 4,
    num_shards: int = 1,
    shard_index: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: dict | None = None,
) -> dict:
    """Process ``records`` into ``out_dir``; returns the manifest (also written to disk).

    Raises:
        ValueError: bad arguments or duplicate video ids.
        OutputConflictError: ``out_dir`` holds shards made with other settings.
    """
    from tqdm import tqdm

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    if workers < 1 or videos_per_file < 1 or (limit is not None and limit < 0):
        raise ValueError(
            f"need workers >= 1, videos_per_file >= 1 and limit >= 0; got {workers}, "
            f"{videos_per_file}, {limit}"
        )
    dups = sorted(v for v, n in Counter(r.video_id for r in records).items() if n > 1)
    if dups:
        raise ValueError(f"duplicate video ids in the records: {dups[:10]}")
    from pipeline.detect import resolve_weights

    resolve_weights(config.weights)  # a missing checkpoint fails here, not in every worker
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_output(out_dir, config, overwrite, meta or {})

    selected = select_records(records, num_shards, shard_index, limit)
    done = read_video_ids(out_dir)
    todo = [r for r in selected if r.video_id not in done]
    shard_tag = f"{shard_index:03d}of{num_shards:03d}"
    parts = next_part(out_dir, shard_tag)
    failures_path = out_dir / FAILURES
    stats = RunStats()
    pending: list[dict] = []
    t0 = time.perf_counter()

    def flush() -> None:
        if pending:
            write_shard(next(parts), sorted(pending, key=lambda r: r["video_id"]), row_group_size=1)
            pending.clear()

    if workers > 1 and len(todo) > 1:
        results = _run_parallel(todo, config, min(workers, len(todo)))
    else:
        results = _run_serial(todo, config)
    bar = tqdm(
        total=len(todo), desc=f"preprocess {out_dir.name}", unit="video", disable=not progress
    )
    try:
        for video_id, row, vstats, error in results:
            if error is not None:
                entry = {"video_id": video_id, "reason": error, "time": time.time()}
                stats.failures.append(entry)
                with failures_path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                bar.write(f"failed {video_id}: {error}")
            else:
                pending.append(row)
                stats.videos += 1
                stats.frames_tracked += vstats["frames_tracked"]
                stats.frames_stored += vstats["frames_stored"]
                if len(pending) >= videos_per_file:
                    flush()
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                videos_s=f"{stats.videos / elapsed:.2f}",
                frames_s=f"{stats.frames_tracked / elapsed:.1f}",
                failed=len(stats.failures),
            )
            bar.update()
    finally:
        bar.close()
        try:
            flush()  # finished videos are kept whatever happened
        finally:
            results.close()  # stops the workers on an error or Ctrl-C

    elapsed = time.perf_counter() - t0
    finished = read_video_ids(out_dir)
    failures = [f for vid, f in read_failures(failures_path).items() if vid not in finished]
    counts = summarize_shards(out_dir, config.max_gap_s)
    counts["videos_selected"] = len(selected)
    counts["videos_failed"] = len(failures)
    manifest = {
        **(meta or {}),
        "config": dataclasses.asdict(config),
        "identity": config.identity(),
        "config_hash": config.hash(),
        "status": "complete",
        "num_shards": num_shards,
        "shard_index": shard_index,
        "versions": package_versions(),
        "counts": counts,
        "failures": failures,
        "last_run": {
            "num_shards": num_shards,
            "shard_index": shard_index,
            "limit": limit,
            "workers": workers,
            "videos_processed": stats.videos,
            "videos_failed": len(stats.failures),
            "seconds": round(elapsed, 2),
            "videos_per_s": round(stats.videos / max(elapsed, 1e-9), 3),
            "frames_per_s": round(stats.frames_tracked / max(elapsed, 1e-9), 2),
        },
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


# ------------------------------------------------------------------ CLI


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (the help text says what None means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.preprocess",
        description=(
            "Detect every object (YOLO), track it (ByteTrack), renumber tracks 1..K, burn the IDs "
            "into frames sampled at --out-fps, match each query's ground truth to track IDs, and "
            "write Parquet shards + _manifest.json + _failures.jsonl. Reruns resume: finished "
            "videos are skipped, failed ones retried."
        ),
        epilog="Read the shards with pandas.read_parquet(<out>) or "
        'datasets.load_dataset("parquet", data_files="<out>/*.parquet").',
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="a name from data/datasets.yaml (e.g. synthetic, mevis, hcstvg1, vidstg, folder)",
    )
    p.add_argument("--split", default="train", help="dataset split (see data/datasets.yaml)")
    p.add_argument("--root", type=Path, help="raw dataset root (default: from data/datasets.yaml)")
    p.add_argument(
        "--out", type=Path, help="output folder (default: data/shards/<dataset>/<split>)"
    )
    for f in dataclasses.fields(PreprocessConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **f.metadata)
    p.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes (each loads the detector)"
    )
    p.add_argument("--videos-per-file", type=int, default=4, help="videos per atomic part file")
    p.add_argument("--limit", type=int, help="process at most N videos (after sharding)")
    p.add_argument("--num-shards", type=int, default=1, help="split the dataset over N machines")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's share, in [0, N)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete existing shards in --out first (without it, shards written with other "
        "settings, another pipeline version or another detector file are refused)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def config_from_args(args: argparse.Namespace, spec_classes=None) -> PreprocessConfig:
    """The config named by the command line (``--classes`` defaults to the dataset's)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreprocessConfig)}
    classes = values["classes"] or spec_classes
    values["classes"] = tuple(classes) if classes else None
    values["max_side"] = values["max_side"] or None
    return PreprocessConfig(**values)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.adapters import DatasetNotFoundError
    from pipeline.datasets import iter_records, load_specs

    specs = load_specs()
    if args.dataset not in specs:
        return _error(
            f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(specs))} "
            "(add it to data/datasets.yaml)"
        )
    spec = specs[args.dataset]
    out = resolve(args.out) if args.out else DATA_DIR / "shards" / args.dataset / args.split
    problems: list = []
    try:
        config = config_from_args(args, spec.classes)
        records = list(iter_records(spec, args.split, root=args.root, on_error=problems.append))
        for problem in problems:
            print(f"skipped: {problem}", file=sys.stderr)
        manifest = run(
            records,
            out,
            config,
            workers=args.workers,
            videos_per_file=args.videos_per_file,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            limit=args.limit,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            meta={
                "dataset": args.dataset,
                "split": args.split,
                "annotation_problems": [str(p) for p in problems],
            },
        )
    except DatasetNotFoundError as exc:
        return _error(
            f"{exc}\n(or pass --root; `python -m pipeline.datasets` lists the expected roots)"
        )
    except (OutputConflictError, ValueError, FileNotFoundError) as exc:
        return _error(str(exc))
    c = manifest["counts"]
    print(
        f"{out}: {c['videos']} videos, {c['queries']} queries, matched {c['matched']}/{c['annotated']} "
        f"({100 * c['match_rate']:.1f}%), right IDs {100 * c['exact_rate']:.1f}%, "
        f"mean match IoU {c['mean_match_iou']:.3f}, failed {c['videos_failed']}"
        + (f" (see {out / FAILURES})" if c["videos_failed"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
