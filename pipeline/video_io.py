"""Writing H.264 mp4 files with PyAV (decoding lives in :mod:`pipeline.decode`)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_mp4(
    path: str | Path,
    frames_rgb: Iterable[np.ndarray],
    fps: float,
    *,
    crf: int = 23,
    threads: int = 1,
) -> Path:
    """Encode RGB frames (H, W, 3) uint8 into an H.264/yuv420p mp4 playable in browsers.

    Odd sizes are padded by one pixel (yuv420p needs even sides). With ``threads=1`` the
    same frames give the same bytes: the muxer is bit-exact and x264's macroblock-tree
    rate control, which gave different bytes from call to call even on one thread, is off.
    Written to a temp file and renamed, so a crash never leaves a half-written video at
    ``path``.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    try:
        # faststart is a muxer option: the index goes first, so browsers play while loading
        options = {"movflags": "+faststart", "fflags": "+bitexact"}
        with av.open(str(tmp), mode="w", format="mp4", options=options) as container:
            stream = None
            for rgb in frames_rgb:
                img = np.asarray(rgb, dtype=np.uint8)
                h, w = img.shape[:2]
                if h % 2 or w % 2:
                    img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.width, stream.height = img.shape[1], img.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.thread_count = threads
                    stream.options = {
                        "crf": str(crf),
                        "preset": "veryfast",
                        "threads": str(threads),
                        "x264-params": "no-mbtree=1",
                    }
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = n, 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
                n += 1
            if stream is None:
                raise ValueError(f"no frames to write to {path}")
            for packet in stream.encode():
                container.mux(packet)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
