"""Preprocess a dataset into Parquet shards: detect, track, renumber, match, overlay, write.

    python -m pipeline.preprocess --dataset synthetic --split train
    make preprocess DATASET=mevis SPLIT=train

Each video is decoded twice, streaming: once at ``track_fps`` for detection and tracking,
once at ``out_fps`` to burn the final IDs into the stored frames. Nothing holds a whole
video in memory. Finished videos are written in small atomic part files, so a rerun
(after a crash, ``kill -9`` or Ctrl-C) skips them and completes with no duplicate or
partial rows. A video that cannot be processed (missing, corrupt, truncated, no frames)
is listed, once, with the reason in the share's ``_failures.jsonl`` and manifest; the
run goes on, and a rerun retries it (a success removes it from the list). A video in
which nothing is detected is not a failure: its row has no tracks and its queries no
target IDs (counted as unmatched).

Options, the detector and its classes are checked before anything is written. A run
holds the lock of its share of the folder (:mod:`pipeline.locks`) until it ends, and
its manifest is written before the first video, so a folder holding parts made with
other settings is refused even after a crash (see :func:`pipeline.output.prepare_output`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cli import flag_parser
from pipeline.config import PreprocessConfig
from pipeline.locks import OutputLockedError, folder_lock, shard_tag, share_lock
from pipeline.output import (
    FailureLog,
    OutputConflictError,
    failures_name,
    manifest_identity,
    manifest_name,
    next_part,
    package_versions,
    prepare_output,
    read_failures,
    read_mot_cells,
    remove_stray_temps,
    select_records,
    stored_without_mot,
    summarize_shards,
    summarize_tracking,
)
from pipeline.processor import VideoProcessor
from pipeline.records import VideoRecord
from pipeline.runtime import DATA_DIR, resolve
from pipeline.shards import read_video_ids, write_json_atomic, write_shard
from pipeline.workers import Result, run_parallel, run_serial


@dataclass
class RunStats:
    videos: int = 0
    frames_tracked: int = 0
    frames_stored: int = 0
    failures: list[dict] = field(default_factory=list)


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
    executor: Callable[[list[VideoRecord], PreprocessConfig], Iterator[Result]] | None = None,
) -> dict:
    """Process ``records`` into ``out_dir``; returns the manifest (also written to disk).

    ``executor`` runs the videos and yields one result per video (None: this process, or
    ``workers`` processes); e.g. :class:`pipeline.ray_executor.RayExecutor`. Every argument,
    the detector and its classes are checked before anything is written; the share's lock
    (:func:`pipeline.locks.share_lock`) is held for the whole run.

    Raises:
        ValueError: bad arguments, unknown detector classes or duplicate video ids.
        OutputConflictError: ``out_dir`` holds shards made with other settings.
        OutputLockedError: another live run writes this share of ``out_dir``.
    """
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
    _check_folder_weights(records, config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    # loads the detector: a missing checkpoint or an unknown class fails here, before
    # anything is written (the serial run then uses this one)
    processor = VideoProcessor(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    with share_lock(out_dir, num_shards, shard_index) as tag:
        with folder_lock(out_dir):
            prepare_output(out_dir, config, overwrite, meta or {}, tag)
        remove_stray_temps(out_dir, tag)
        selected = select_records(records, num_shards, shard_index, limit)
        done = read_video_ids(out_dir)
        todo = [r for r in selected if r.video_id not in done]
        if executor is not None:
            del processor  # each of the executor's workers loads its own
            results = executor(todo, config)
        elif workers > 1 and len(todo) > 1:
            del processor  # each worker loads its own
            results = run_parallel(todo, config, min(workers, len(todo)))
        else:
            results = run_serial(todo, config, processor)
        t0 = time.perf_counter()
        stats = _write_results(results, out_dir, tag, len(todo), videos_per_file, progress)
        elapsed = time.perf_counter() - t0
        options = {"limit": limit, "workers": workers, "progress": progress,
                   "videos_per_file": videos_per_file}  # fmt: skip
        return _finish(out_dir, config, tag, selected, stats, elapsed, options, meta or {})


def _check_folder_weights(records: Sequence[VideoRecord], config: PreprocessConfig) -> None:
    """The synthetic-shapes detector on arbitrary videos is refused before anything is written."""
    from pipeline.adapters.folder import check_weights

    for record in records:
        if record.dataset == "folder":
            check_weights(config.weights, Path(record.source).stem)


def _write_results(
    results, out_dir: Path, tag: str, total: int, videos_per_file: int, progress: bool
) -> RunStats:
    """The writer loop: finished rows into atomic part files (``videos_per_file`` each),
    failures into the share's failure list; consumes ``results``, an iterator of
    (video_id, row, stats, error) from any executor, and closes it at the end."""
    from tqdm import tqdm

    parts = next_part(out_dir, tag)
    failures = FailureLog(out_dir, tag)
    stats = RunStats()
    pending: list[dict] = []
    t0 = time.perf_counter()

    def flush() -> None:
        if pending:
            write_shard(next(parts), sorted(pending, key=lambda r: r["video_id"]), row_group_size=1)
            failures.succeeded([r["video_id"] for r in pending])
            pending.clear()

    bar = tqdm(total=total, desc=f"preprocess {out_dir.name}", unit="video", disable=not progress)
    try:
        for video_id, row, vstats, error in results:
            if error is not None:
                entry = {"video_id": video_id, "reason": error, "time": time.time()}
                stats.failures.append(entry)
                failures.failed(entry)
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
    return stats


SHARE_NOTE = (
    "counts cover every part file of the folder (all shares written so far); "
    "videos_selected is this share's number of videos (its --num-shards share, then "
    "--limit), and share_done / videos_failed are this share's. `python -m "
    "pipeline.views.summary <folder>` merges all shares."
)


def _finish(out_dir, config, tag, selected, stats, elapsed, options, meta) -> dict:
    """Recount from disk and write the share's completed manifest."""
    finished = read_video_ids(out_dir)
    failures = [f for vid, f in read_failures(out_dir / failures_name(tag)).items()
                if vid not in finished]  # fmt: skip
    index, num_shards = (int(x) for x in tag.split("of"))
    counts = summarize_shards(out_dir, config.max_gap_s)
    mot_cells = read_mot_cells(out_dir)
    counts["videos_selected"] = len(selected)
    counts["share_done"] = sum(r.video_id in finished for r in selected)
    counts["videos_failed"] = len(failures)
    manifest = {
        **meta,
        **manifest_identity(config),
        "status": "complete",
        "num_shards": num_shards,
        "shard_index": index,
        "counts_note": SHARE_NOTE,
        "versions": package_versions(),
        "counts": counts,
        "tracking": summarize_tracking(out_dir, mot_cells),
        # a gt.txt added beside a video already stored: not scored (not in the identity)
        "tracking_unscored": stored_without_mot(
            mot_cells, {r.video_id for r in selected if r.mot_gt is not None}
        ),
        "failures": failures,
        "last_run": {
            "num_shards": num_shards,
            "shard_index": index,
            **options,
            "videos_processed": stats.videos,
            "videos_failed": len(stats.failures),
            "seconds": round(elapsed, 2),
            "videos_per_s": round(stats.videos / max(elapsed, 1e-9), 3),
            "frames_per_s": round(stats.frames_tracked / max(elapsed, 1e-9), 2),
        },
    }
    write_json_atomic(out_dir / manifest_name(tag), manifest)
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
        parents=[flag_parser(PreprocessConfig, "settings (hashed into the manifest)")],
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="a name from data/datasets.yaml (e.g. synthetic, mevis, hcstvg1, vidstg, folder). "
        "folder: any videos; a MOTChallenge <video>.gt.txt beside a video (frames from 1, "
        "native pixels) adds MOT metrics of ByteTrack alone and of the pipeline to the "
        "manifest's tracking block",
    )
    p.add_argument("--split", default="train", help="dataset split (see data/datasets.yaml)")
    p.add_argument("--root", type=Path, help="raw dataset root (default: from data/datasets.yaml)")
    p.add_argument(
        "--out", type=Path, help="output folder (default: data/shards/<dataset>/<split>)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes (each loads the detector)"
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine's processes (--workers); ray: a Ray Data actor pool, on a "
        "Ray cluster (--ray-address) or started on this machine (pip install -e '.[ray]')",
    )
    p.add_argument(
        "--ray-address",
        help="Ray cluster to run on (auto, HOST:PORT); default: start Ray on this machine",
    )
    p.add_argument(
        "--actors",
        type=int,
        help="Ray actors, each loading the detector (default: as many as the cluster's GPUs, "
        "or CPUs without GPUs, allow)",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        help="GPUs each Ray actor reserves (default: 1 if the cluster has GPUs, else 0)",
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


def _executor_from_args(args: argparse.Namespace):
    """The Ray executor ``--executor ray`` asks for (None: the local runners)."""
    if args.executor != "ray":
        return None
    from pipeline.ray_executor import RayExecutor

    return RayExecutor(args.ray_address, args.actors, args.gpus_per_actor)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.adapters import DatasetNotFoundError
    from pipeline.datasets import iter_records, load_specs
    from pipeline.mot import summary_line
    from pipeline.workers import WorkersDyingError

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
            print(f"{'skipped' if problem.skipped else 'repaired'}: {problem.describe()}",
                  file=sys.stderr)  # fmt: skip
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
            executor=_executor_from_args(args),
            meta={
                "dataset": args.dataset,
                "split": args.split,
                "annotation_problems": [p.as_dict() for p in problems],
            },
        )
    except DatasetNotFoundError as exc:
        return _error(
            f"{exc}\n(or pass --root; `python -m pipeline.datasets` lists the expected roots)"
        )
    except (OutputConflictError, OutputLockedError, ValueError, FileNotFoundError) as exc:
        return _error(str(exc))
    except WorkersDyingError as exc:  # the videos in flight are in the failure list
        return _error(f"{exc} (finished videos are kept: a rerun resumes)")
    c = manifest["counts"]
    quality = (
        f"matched {c['matched']}/{c['annotated']} ({100 * c['match_rate']:.1f}%), right IDs "
        f"{100 * c['exact_rate']:.1f}%, mean match IoU {c['mean_match_iou']:.3f}"
        if c["annotated"]
        else "no query with ground truth"
    )
    print(
        f"{out}: {c['videos']} videos, {c['queries']} queries, {quality}, "
        f"failed {c['videos_failed']}"
        + (
            f" (see {out / failures_name(shard_tag(args.num_shards, args.shard_index))})"
            if c["videos_failed"]
            else ""
        )
    )
    tracking = summary_line(manifest["tracking"])
    if tracking:
        print(tracking)
    unscored = manifest["tracking_unscored"]
    if unscored:
        print(
            f"{len(unscored)} stored video(s) have a gt.txt that was not there when they were "
            f"processed, so they have no MOT metrics ({', '.join(unscored[:5])}"
            f"{', ...' if len(unscored) > 5 else ''}); rerun with --overwrite to score them"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
