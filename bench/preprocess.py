"""Benchmark: the whole preprocessing pipeline against a bare Ultralytics tracking loop.

    python bench/preprocess.py [--seconds 8] [--repeat 10]

Both sides start from the same mp4 and the same detector weights and decode with PyAV:
- baseline: ``model.track(frame, persist=True, tracker="bytetrack.yaml")``, one call per frame;
- pipeline: :class:`pipeline.preprocess.VideoProcessor` (batched detection, ByteTrack,
  renumbering, matching, a second decode at out_fps, ID overlays, JPEG, one shard row).

Prints frames/s of each and their ratio (target >= 0.9, ideally > 1), then peak memory
(max RSS of a fresh process) for the video and for one ``--repeat`` times as long
(target: within 1.2x, i.e. streaming). No wall-clock assertion anywhere.
"""

from __future__ import annotations

import argparse
import json
import resource
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
    from trainer.predict import video_record

    return video_record(path, "benchmark")


def bare_track_loop(path: Path) -> tuple[int, float]:
    from pipeline.decode import iter_frames
    from pipeline.detect import default_weights
    from pipeline.runtime import configure_offline

    configure_offline()
    from ultralytics import YOLO

    model = YOLO(str(default_weights()))
    t0 = time.perf_counter()
    n = 0
    for frame in iter_frames(_record(path)):
        model.track(frame.image[..., ::-1], persist=True, tracker="bytetrack.yaml", verbose=False)
        n += 1
    return n, time.perf_counter() - t0


def pipeline_run(path: Path) -> tuple[int, float]:
    from pipeline.preprocess import PreprocessConfig, VideoProcessor

    processor = VideoProcessor(PreprocessConfig())
    t0 = time.perf_counter()
    _, stats = processor(_record(path))
    return stats["frames_tracked"], time.perf_counter() - t0


def _child(kind: str, path: str) -> None:
    import torch

    torch.set_num_threads(2)
    fn = {"bare": bare_track_loop, "pipeline": pipeline_run}[kind]
    fn(Path(path))  # warm-up: model load, first-call allocations
    n, seconds = fn(Path(path))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": n, "seconds": seconds, "peak_mb": peak_mb}))


def measure(kind: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="length of the short synthetic clip")
    p.add_argument("--repeat", type=int, default=10, help="the long clip is this many times longer")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        short, long = make_videos(Path(tmp), args.seconds, args.repeat)
        bare = measure("bare", short)
        pipe = measure("pipeline", short)
        pipe_long = measure("pipeline", long)
    fps_bare = bare["frames"] / bare["seconds"]
    fps_pipe = pipe["frames"] / pipe["seconds"]
    print(f"bare model.track loop : {fps_bare:8.1f} frames/s ({bare['frames']} frames)")
    print(f"full pipeline         : {fps_pipe:8.1f} frames/s ({pipe['frames']} frames)")
    print(f"ratio pipeline / bare : {fps_pipe / fps_bare:8.2f}x   (target >= 0.9)")
    print(f"peak memory 1x video  : {pipe['peak_mb']:8.0f} MB")
    print(f"peak memory {args.repeat}x video : {pipe_long['peak_mb']:8.0f} MB")
    print(f"ratio {args.repeat}x / 1x          : {pipe_long['peak_mb'] / pipe['peak_mb']:8.2f}x   (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
