"""Preprocess a dataset into Parquet shards: detect, track, renumber, match, overlay, write.

    python -m pipeline.preprocess --dataset synthetic --split train
    make preprocess DATASET=mevis SPLIT=train

Each video is decoded twice, streaming: once at ``track_fps`` for detection and tracking,
once at ``out_fps`` to burn the final IDs into the stored frames. Nothing holds a whole
video in memory. Finished videos are written in small atomic part files, so a rerun
(after a crash, ``kill -9`` or Ctrl-C) skips them and completes with no duplicate or
partial rows. Failures are appended to ``_failures.jsonl`` and summarised in
``_manifest.json`` together with the config, its hash, package versions and counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.records import GTObject, QueryRecord, VideoRecord
from pipeline.runtime import DATA_DIR, resolve
from pipeline.shards import make_row, read_video_ids, write_json_atomic, write_shard

PART_PREFIX = "part"
# underscore names: Arrow, pandas and HF datasets skip them when reading the folder
MANIFEST = "_manifest.json"
FAILURES = "_failures.jsonl"


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that change what is written (hashed into the manifest)."""

    weights: str | None = None  # None: the committed synthetic detector
    conf: float = 0.25
    classes: tuple[str, ...] | None = None
    imgsz: int | None = None
    batch_size: int = 16
    track_fps: float | None = None  # None: every native frame
    out_fps: float = 2.0
    max_side: int | None = 640
    min_track_frames: int = 3
    max_gap_s: float = 0.5
    overlay_style: str = "number"
    jpeg_quality: int = 90
    min_match_iou: float = 0.3

    def hash(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
            classes=list(config.classes) if config.classes else None,
            imgsz=config.imgsz,
            batch_size=config.batch_size,
        )
        self.overlay = IdOverlay(style=config.overlay_style)
        # short tracks are dropped before renumbering, so IDs stay consecutive 1..K
        self.tracker_config = TrackerConfig(min_frames=config.min_track_frames)

    def __call__(self, record: VideoRecord) -> tuple[dict, dict]:
        from pipeline.decode import iter_frames, probe
        from pipeline.match import match_query, match_quality
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
                n_exact += bool(match_quality(matched, tracks, max_gap_s=cfg.max_gap_s)["exact"])
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

_worker: VideoProcessor | None = None


def _init_worker(config: PreprocessConfig, threads: int) -> None:
    global _worker
    import torch

    torch.set_num_threads(threads)
    _worker = VideoProcessor(config)


def _run_one(record: VideoRecord) -> tuple[str, dict | None, dict | None, str | None]:
    assert _worker is not None
    try:
        row, stats = _worker(record)
        return record.video_id, row, stats, None
    except Exception as exc:  # recorded per video; the run goes on
        return record.video_id, None, None, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ the run


def select_records(
    records: Sequence[VideoRecord], num_shards: int, shard_index: int, limit: int | None
) -> list[VideoRecord]:
    """This machine's share (stable: by a hash of the video id), then ``--limit``."""
    mine = [r for r in records if zlib.crc32(r.video_id.encode()) % num_shards == shard_index]
    return mine[:limit] if limit is not None else mine


def _next_part(out_dir: Path, shard_tag: str) -> Iterator[Path]:
    seqs = [
        int(p.stem.rsplit("-", 1)[-1])
        for p in out_dir.glob(f"{PART_PREFIX}-{shard_tag}-*.parquet")
        if p.stem.rsplit("-", 1)[-1].isdigit()
    ]
    seq = max(seqs, default=-1) + 1
    while True:
        yield out_dir / f"{PART_PREFIX}-{shard_tag}-{seq:05d}.parquet"
        seq += 1


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("stvg-id", "torch", "ultralytics", "supervision", "av", "pyarrow", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _read_failures(path: Path) -> dict[str, dict]:
    last: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            last[entry["video_id"]] = entry
    return last


def summarize_shards(out_dir: Path, max_gap_s: float) -> dict:
    """Counts recomputed from what is on disk (so they stay right across resumed runs)."""
    import pyarrow.parquet as pq

    from pipeline.match import match_quality
    from pipeline.shards import list_shards, row_to_video

    c = dict(videos=0, queries=0, annotated=0, matched=0, exact=0, frames=0, tracks=0)
    ious, no_tracks = [], []
    for path in list_shards(out_dir):
        table = pq.read_table(path, columns=[n for n in _SUMMARY_COLUMNS])
        for row in table.to_pylist():
            v = row_to_video({**row, "frames": [b""] * len(row["frame_times_s"])})
            c["videos"] += 1
            c["frames"] += len(v.frame_times_s)
            c["tracks"] += len(v.tracks)
            if not v.tracks:
                no_tracks.append(v.video_id)
            for q in v.queries:
                c["queries"] += 1
                if not q.gt:
                    continue
                c["annotated"] += 1
                if q.target_ids:
                    c["matched"] += 1
                    ious.append(q.match_iou)
                    c["exact"] += bool(match_quality(q, v.tracks, max_gap_s=max_gap_s)["exact"])
    ann = max(c["annotated"], 1)
    c["match_rate"] = c["matched"] / ann
    c["exact_rate"] = c["exact"] / ann
    c["mean_match_iou"] = float(np.mean(ious)) if ious else 0.0
    c["tracks_per_video"] = c["tracks"] / max(c["videos"], 1)
    c["videos_without_tracks"] = no_tracks
    return c


_SUMMARY_COLUMNS = (
    "video_id", "dataset", "split", "width", "height", "out_fps", "track_fps",
    "native_fps", "frame_times_s", "tracks", "queries",
)  # fmt: skip


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
    """Process ``records`` into ``out_dir``; returns the manifest (also written to disk)."""
    from tqdm import tqdm

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("config_hash") != config.hash():
            raise SystemExit(
                f"{out_dir} holds shards made with other settings (config hash "
                f"{old.get('config_hash')} != {config.hash()}); use another --out or --overwrite"
            )
    if overwrite:
        for p in [*out_dir.glob(f"{PART_PREFIX}-*.parquet"), out_dir / FAILURES]:
            p.unlink(missing_ok=True)

    selected = select_records(records, num_shards, shard_index, limit)
    done = read_video_ids(out_dir)
    todo = [r for r in selected if r.video_id not in done]
    shard_tag = f"{shard_index:03d}of{num_shards:03d}"
    parts = _next_part(out_dir, shard_tag)
    failures_path = out_dir / FAILURES
    stats = RunStats()
    pending: list[dict] = []
    t0 = time.perf_counter()

    def flush() -> None:
        if pending:
            write_shard(next(parts), sorted(pending, key=lambda r: r["video_id"]), row_group_size=1)
            pending.clear()

    if workers > 1:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = mp.get_context("spawn").Pool(workers, _init_worker, (config, threads))
        results = pool.imap_unordered(_run_one, todo)
    else:
        pool = None
        _init_worker(config, max(1, os.cpu_count() or 1))
        results = map(_run_one, todo)

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
        flush()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        flush()

    elapsed = time.perf_counter() - t0
    finished = read_video_ids(out_dir)
    failures = [f for vid, f in _read_failures(failures_path).items() if vid not in finished]
    counts = summarize_shards(out_dir, config.max_gap_s)
    counts["videos_selected"] = len(selected)
    counts["videos_failed"] = len(failures)
    manifest = {
        **(meta or {}),
        "config": dataclasses.asdict(config),
        "config_hash": config.hash(),
        "num_shards": num_shards,
        "shard_index": shard_index,
        "versions": _versions(),
        "counts": counts,
        "failures": failures,
        "last_run": {
            "videos_processed": stats.videos,
            "videos_failed": len(stats.failures),
            "seconds": round(elapsed, 2),
            "videos_per_s": round(stats.videos / max(elapsed, 1e-9), 3),
            "frames_per_s": round(stats.frames_tracked / max(elapsed, 1e-9), 2),
        },
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.preprocess",
        description=(
            "Detect every object (YOLO), track it (ByteTrack), renumber tracks 1..K, burn the IDs "
            "into frames sampled at --out-fps, match each query's ground truth to track IDs, and "
            "write Parquet shards + _manifest.json. Reruns resume: finished videos are skipped."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    p.add_argument(
        "--weights",
        help="YOLO weights: a name such as yolo11x.pt / yolo11x-seg.pt (put it in data/models/) or a path; default: the committed synthetic detector",
    )
    p.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold")
    p.add_argument(
        "--classes", nargs="+", help="keep only these detector classes (names or ids), e.g. person"
    )
    p.add_argument("--imgsz", type=int, help="detector input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per detector call")
    p.add_argument(
        "--track-fps",
        type=float,
        help="rate at which frames are detected and tracked (default: native)",
    )
    p.add_argument("--out-fps", type=float, default=2.0, help="rate of the stored, overlaid frames")
    p.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="resize frames so the longer side is at most this (0: keep)",
    )
    p.add_argument(
        "--min-track-frames", type=int, default=3, help="drop tracks observed in fewer frames"
    )
    p.add_argument(
        "--max-gap-s",
        type=float,
        default=0.5,
        help="interpolate a track's box across gaps up to this long",
    )
    p.add_argument(
        "--overlay-style", default="number", choices=["number", "box+number", "contour+number"]
    )
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes (each loads the detector)"
    )
    p.add_argument("--videos-per-file", type=int, default=4, help="videos per atomic part file")
    p.add_argument("--limit", type=int, help="process at most N videos (after sharding)")
    p.add_argument("--num-shards", type=int, default=1, help="split the dataset over N machines")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's share, in [0, N)")
    p.add_argument("--overwrite", action="store_true", help="delete existing shards in --out first")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.datasets import iter_records, load_specs

    specs = load_specs()
    if args.dataset not in specs:
        raise SystemExit(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(specs))}")
    spec = specs[args.dataset]
    out = resolve(args.out) if args.out else DATA_DIR / "shards" / args.dataset / args.split
    classes = args.classes or getattr(spec, "classes", None)
    config = PreprocessConfig(
        weights=args.weights,
        conf=args.conf,
        classes=tuple(classes) if classes else None,
        imgsz=args.imgsz,
        batch_size=args.batch_size,
        track_fps=args.track_fps,
        out_fps=args.out_fps,
        max_side=args.max_side or None,
        min_track_frames=args.min_track_frames,
        max_gap_s=args.max_gap_s,
        overlay_style=args.overlay_style,
        jpeg_quality=args.jpeg_quality,
    )
    records = list(iter_records(spec, args.split, root=args.root))
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
        meta={"dataset": args.dataset, "split": args.split},
    )
    c = manifest["counts"]
    print(
        f"{out}: {c['videos']} videos, {c['queries']} queries, matched {c['matched']}/{c['annotated']} "
        f"({100 * c['match_rate']:.1f}%), right IDs {100 * c['exact_rate']:.1f}%, "
        f"mean match IoU {c['mean_match_iou']:.3f}, failed {c['videos_failed']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
