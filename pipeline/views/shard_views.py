"""Looking at shards: inline videos, track timelines, query tables, shard summaries.

Used by ``notebooks/inspect_overlays.ipynb`` and ``make figures``; plain functions so
they are tested like the rest of the code.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.shards import ShardVideo


def video_html(video: ShardVideo, *, width: int = 480) -> str:
    """The stored overlaid frames as an inline H.264 ``<video>`` element (base64 mp4)."""
    from pipeline.video_io import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        path = write_mp4(Path(tmp) / "v.mp4", video.decode_frames(), video.out_fps)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<video width="{width}" controls loop autoplay muted playsinline>'
        f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>'
    )


def track_color(track_id: int) -> tuple[float, float, float]:
    """The overlay colour of an ID, as matplotlib RGB floats."""
    from pipeline.overlay import id_color

    return tuple(c / 255.0 for c in id_color(track_id))


def plot_timeline(video: ShardVideo, ax=None, *, max_gap_s: float = 0.5):
    """One row per track ID (coloured as in the overlay), observed spans as bars; each
    query's ground-truth span drawn on the rows of its matched IDs."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * max(len(video.tracks), 1) + 1.2))
    for row, track in enumerate(video.tracks):
        t = track.times_s.astype(float)
        # split the observations where the gap exceeds max_gap_s
        breaks = np.nonzero(np.diff(t) > max_gap_s)[0]
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(t) - 1]])
        for s, e in zip(starts, ends):
            ax.barh(row, max(t[e] - t[s], 0.05), left=t[s], height=0.5, color=track_color(track.id))
    rows = {track.id: i for i, track in enumerate(video.tracks)}
    for qi, q in enumerate(video.queries):
        for tid in q.target_ids:
            if tid in rows:
                ax.plot(q.span_s, [rows[tid] + 0.32] * 2, color="black", lw=2)
                ax.text(q.span_s[1], rows[tid] + 0.32, f" q{qi}", va="center", fontsize=7)
    ax.set_yticks(range(len(video.tracks)), [f"ID {t.id} ({t.class_name})" for t in video.tracks])
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(f"{video.video_id}: tracks (bars) and query spans (black, on matched IDs)")
    return ax


def queries_table(video: ShardVideo):
    """A DataFrame of the video's queries with their matched IDs and match IoU."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "query": q.query_id,
                "text": q.text,
                "type": q.qtype,
                "span_s": f"{q.span_s[0]:.1f}-{q.span_s[1]:.1f}",
                "target_ids": list(q.target_ids),
                "match_iou": round(float(q.match_iou), 3),
            }
            for q in video.queries
        ]
    )


def frame_grid(video: ShardVideo, n: int = 6, cols: int = 3):
    """A matplotlib figure with ``n`` evenly spaced stored frames."""
    import matplotlib.pyplot as plt

    frames = video.decode_frames()
    idx = np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int)
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        ax.imshow(frames[i])
        ax.set_title(f"t = {video.frame_times_s[i]:.1f} s", fontsize=9)
    fig.tight_layout()
    return fig


def shard_summary(videos: Sequence[ShardVideo]) -> dict:
    """Videos, queries, match rate, tracks per video, mean match IoU."""
    queries = [q for v in videos for q in v.queries]
    annotated = [q for q in queries if q.gt]
    matched = [q for q in annotated if q.target_ids]
    return {
        "videos": len(videos),
        "queries": len(queries),
        "annotated": len(annotated),
        "match_rate": len(matched) / max(len(annotated), 1),
        "mean_match_iou": float(np.mean([q.match_iou for q in matched])) if matched else 0.0,
        "tracks_per_video": float(np.mean([len(v.tracks) for v in videos])) if videos else 0.0,
        "frames_per_video": float(np.mean([len(v.frames) for v in videos])) if videos else 0.0,
    }
