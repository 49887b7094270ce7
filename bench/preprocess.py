"""Benchmark: the whole preprocessing pipeline against a bare Ultralytics tracking loop.

    python bench/preprocess.py [--seconds 8] [--repeat 10] [--trials 3] [--profile]

Both sides start from the same mp4 and the same detector weights (same confidence
threshold, 0.1, and input size) and decode with PyAV:
- baseline: ``model.track(frame, persist=True, tracker="bytetrack.yaml")``, one call per frame;
- pipeline: :class:`pipeline.processor.VideoProcessor` (batched detection, ByteTrack,
  renumbering, matching, a second decode at out_fps, ID overlays, JPEG, one shard row).

Speed: each side runs in ``--trials`` fresh processes, alternating; each process warms
up (model load, first-call allocations) and keeps the best of ``--runs`` timed runs.
Prints the median frames/s of each and their ratio (target >= 0.9, ideally > 1).
Memory: peak RSS of a fresh process that processes the video once, for the video and
for one ``--repeat`` times as long (target: within 1.2x, i.e. streaming), and what the
video adds over the process with its model loaded (the part that would grow if frames
were held).
``--profile`` prints the pipeline's cProfile top functions. No wall-clock assertion anywhere.

``--executor ray`` benchmarks the Ray executor instead: ``--videos`` synthetic clips run
through :func:`pipeline.preprocess.run` in one process (the baseline), then through a
Ray Data pool of 1 and 2 actors (``--actors``) on a local Ray cluster started once, and
the frames/s of each are printed with their ratio to the baseline: end to end (model
loading and actor start-up included) and after start-up (from the first finished video
to the last, that video's frames left out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_videos(tmp: Path, seconds: float, repeat: int) -> tuple[Path, Path]:
    """A synthetic mp4 and the same clip looped ``repeat`` times."""
    from pipeline.decode import iter_frames
    from pipeline.synthetic import generate
    from pipeline.video_io import write_mp4

    generate(tmp / "raw", num_train=1, num_test=1, det_train=0, det_val=0, duration_s=seconds,
             formats=("hcstvg",), progress=False)  # fmt: skip
    short = next((tmp / "raw" / "hcstvg" / "video").glob("*.mp4"))
    record = _record(short)
    frames = [f.image for f in iter_frames(record)]
    long = write_mp4(tmp / "long.mp4", (f for _ in range(repeat) for f in frames), record.fps)
    return short, long


def _record(path: Path):
    """A query-less record of a video file."""
    from pipeline.decode import probe
    from pipeline.records import VideoRecord

    bare = VideoRecord(path.stem, "benchmark", "bench", path, 1.0)
    return VideoRecord(path.stem, "benchmark", "bench", path, probe(bare).fps)


_model = None


def bare_track_loop(path: Path) -> tuple[int, float]:
    """Ultralytics' own tracking loop; one model per process, its tracker reset per video."""
    global _model
    from pipeline.decode import iter_frames
    from pipeline.detect import default_weights
    from pipeline.runtime import configure_offline

    configure_offline()
    from ultralytics import YOLO

    if _model is None:
        _model = YOLO(str(default_weights()))
    for tracker in getattr(_model.predictor, "trackers", None) or []:
        tracker.reset()
    t0 = time.perf_counter()
    n = 0
    for frame in iter_frames(_record(path)):
        _model.track(frame.image[..., ::-1], persist=True, tracker="bytetrack.yaml", verbose=False)
        n += 1
    return n, time.perf_counter() - t0


_processor = None


def pipeline_run(path: Path) -> tuple[int, float]:
    """The whole per-video pipeline; one processor (detector) per process."""
    global _processor
    from pipeline.config import PreprocessConfig
    from pipeline.processor import VideoProcessor

    if _processor is None:
        _processor = VideoProcessor(PreprocessConfig())
    t0 = time.perf_counter()
    _, stats = _processor(_record(path))
    return stats["frames_tracked"], time.perf_counter() - t0


def _child(kind: str, path: str, runs: int, profile: bool) -> None:
    import torch

    torch.set_num_threads(2)
    fn = {"bare": bare_track_loop, "pipeline": pipeline_run, "memory": pipeline_run}[kind]
    best = None
    if kind == "memory":  # load the model first, to see what one video adds on top
        global _processor
        from pipeline.config import PreprocessConfig
        from pipeline.processor import VideoProcessor

        _processor = VideoProcessor(PreprocessConfig())
    else:
        fn(Path(path))  # warm-up: model load, first-call allocations
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(runs):
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            n, seconds = prof.runcall(fn, Path(path))
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        else:
            n, seconds = fn(Path(path))
        best = seconds if best is None else min(best, seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": n, "seconds": best, "peak_mb": peak_mb, "base_mb": base_mb}))


def measure(kind: str, path: Path, runs: int = 1, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), str(runs)]
    out = subprocess.run(
        cmd + (["--profile"] if profile else []), check=True, capture_output=True, text=True
    )
    if profile:
        print(out.stderr, file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(executor, clock: list):
    """Wraps an executor so that each result's arrival time and frame count are noted."""

    def run(todo, config):
        for result in executor(todo, config):
            stats = result[2] or {}
            clock.append((time.perf_counter(), stats.get("frames_tracked", 0)))
            yield result

    return run


def throughput(start: float, clock: list[tuple[float, int]]) -> dict:
    """frames/s end to end (from ``start``) and after start-up (first result to last, the
    first video's frames left out)."""
    frames = sum(n for _, n in clock)
    first, last = clock[0][0], clock[-1][0]
    steady = (frames - clock[0][1]) / (last - first) if len(clock) > 1 and last > first else None
    return {"frames": frames, "videos": len(clock), "seconds": last - start,
            "end_to_end": frames / (last - start), "steady": steady}  # fmt: skip


def executor_bench(args) -> None:
    """Single process against Ray Data pools of each ``--actors`` size, on the same videos."""
    from pipeline.config import PreprocessConfig
    from pipeline.datasets import iter_records
    from pipeline.preprocess import run
    from pipeline.ray_executor import RayExecutor, start_ray
    from pipeline.synthetic import generate
    from pipeline.workers import run_serial

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "raw", num_train=args.videos, num_test=0, det_train=0,
                 det_val=0, duration_s=args.seconds, formats=("hcstvg",), progress=False)  # fmt: skip
        records = list(iter_records("synthetic", "train", root=Path(tmp) / "raw" / "hcstvg"))
        t0 = time.perf_counter()
        start_ray(None, max(os.cpu_count() or 1, max(args.actors)))
        print(f"ray.init (local cluster)  : {time.perf_counter() - t0:6.1f} s, not counted below")
        sides = [("single process", run_serial)]
        sides += [(f"ray, {k} actor(s)", RayExecutor(actors=k)) for k in args.actors]
        results = {}
        for name, executor in sides:
            clock: list = []
            start = time.perf_counter()
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            run(records, out, PreprocessConfig(), progress=False, executor=_timed(executor, clock))
            results[name] = throughput(start, clock)
    base = results["single process"]
    print(f"{len(records)} videos of {args.seconds:g} s, {base['frames']} frames tracked; "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    print(f"{'':24s} {'frames/s':>9s} {'ratio':>6s} {'after start-up':>15s} {'ratio':>6s} {'wall s':>7s}")  # fmt: skip
    for name, r in results.items():
        steady = r["steady"] or float("nan")
        print(f"{name:24s} {r['end_to_end']:9.2f} {r['end_to_end'] / base['end_to_end']:5.2f}x "
              f"{steady:15.2f} {steady / (base['steady'] or float('nan')):5.2f}x {r['seconds']:7.1f}")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=8.0, help="length of the short synthetic clip")
    p.add_argument("--repeat", type=int, default=10, help="the long clip is this many times longer")
    p.add_argument("--trials", type=int, default=3, help="fresh processes per side (median)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per process (best)")
    p.add_argument("--profile", action="store_true", help="cProfile one pipeline run")
    p.add_argument(
        "--executor",
        choices=("ray",),
        help="benchmark the Ray executor against a single process instead (needs the ray extra)",
    )
    p.add_argument("--videos", type=int, default=8, help="--executor ray: synthetic videos")
    p.add_argument(
        "--actors",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="--executor ray: pool sizes, comma-separated",
    )
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.executor == "ray":
        executor_bench(args)
        return 0
    if args.child:
        kind, path, runs = args.child
        _child(kind, path, int(runs), args.profile)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        short, long = make_videos(Path(tmp), args.seconds, args.repeat)
        if args.profile:
            measure("pipeline", short, 1, profile=True)
        fps = {"bare": [], "pipeline": []}
        for _ in range(args.trials):
            for kind in fps:  # alternate, so a busy spell hits both sides
                r = measure(kind, short, args.runs)
                fps[kind].append(r["frames"] / r["seconds"])
        mem_short = measure("memory", short)
        mem_long = measure("memory", long)
    bare, pipe = statistics.median(fps["bare"]), statistics.median(fps["pipeline"])
    ratios = ", ".join(f"{p / b:.2f}" for b, p in zip(fps["bare"], fps["pipeline"]))
    n = mem_short["frames"]
    print(f"bare model.track loop : {bare:8.1f} frames/s (median of {args.trials}; {n} frames)")
    print(f"full pipeline         : {pipe:8.1f} frames/s")
    print(f"ratio pipeline / bare : {pipe / bare:8.2f}x   (target >= 0.9; per trial: {ratios})")
    print(f"peak memory 1x video  : {mem_short['peak_mb']:8.0f} MB ({n} frames)")
    print(f"peak memory {args.repeat}x video : {mem_long['peak_mb']:8.0f} MB ({mem_long['frames']} frames)")  # fmt: skip
    ratio = mem_long["peak_mb"] / mem_short["peak_mb"]
    print(f"ratio {args.repeat}x / 1x          : {ratio:8.2f}x   (target <= 1.2)")
    added = [m["peak_mb"] - m["base_mb"] for m in (mem_short, mem_long)]
    print(f"added by the video    : {added[0]:8.0f} MB (1x), {added[1]:.0f} MB ({args.repeat}x), "
          "over the process with its model loaded")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
