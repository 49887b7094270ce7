"""Regenerate the README images from the synthetic shards (`make figures`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.runtime import DATA_DIR, resolve


def make_figures(shards: Path, out: Path, video_index: int = 0) -> list[Path]:
    """An overlaid frame (PNG) and a track timeline (PNG) of one video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from pipeline.shards import read_videos
    from pipeline.views.shard_views import plot_timeline

    videos = list(read_videos(shards))
    if not videos:
        raise SystemExit(f"no videos in {shards}: run `make preprocess DATASET=synthetic` first")
    video = videos[min(video_index, len(videos) - 1)]
    out.mkdir(parents=True, exist_ok=True)
    frames = video.decode_frames()
    frame_png = out / "overlay_frame.png"
    Image.fromarray(frames[len(frames) // 2]).save(frame_png)
    ax = plot_timeline(video)
    timeline_png = out / "timeline.png"
    ax.figure.savefig(timeline_png, dpi=110, bbox_inches="tight")
    plt.close(ax.figure)
    return [frame_png, timeline_png]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.views.figures", description=__doc__)
    p.add_argument("--shards", type=Path, default=DATA_DIR / "shards" / "synthetic" / "train")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--video-index", type=int, default=0)
    args = p.parse_args(argv)
    for path in make_figures(resolve(args.shards), resolve(args.out), args.video_index):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
