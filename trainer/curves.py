"""Reading and plotting a run's JSONL metrics (used by ``notebooks/training_curves.ipynb``)."""

from __future__ import annotations

import json
from pathlib import Path

# the panels of the training-curve figure: title -> metric keys drawn in it
PANELS = {
    "reward": ["reward/total", "reward/format", "reward/time", "reward/id"],
    "temporal IoU / ID accuracy": ["reward/time", "reward/id"],
    "KL / clip fraction": ["kl", "clip_fraction", "clip_ratio/low", "clip_ratio/high"],
    "completion length (tokens)": ["completion_length"],
}


def read_metrics(path: str | Path):
    """A run's ``metrics.jsonl`` (or its folder) as a DataFrame indexed by step.

    Lines cut short by a crash are skipped, not fatal.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}: run `make train` (or `make demo`) first")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        raise ValueError(f"{path} holds no metrics yet")
    return pd.DataFrame(rows).set_index("step").sort_index()


def plot_curves(df, *, smooth: int = 1):
    """A 2x2 figure of the panels in :data:`PANELS` (only metrics present in ``df``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, (title, keys) in zip(axes.flat, PANELS.items()):
        drawn = False
        for key in keys:
            if key in df.columns and df[key].notna().any():
                series = df[key].rolling(smooth, min_periods=1).mean() if smooth > 1 else df[key]
                ax.plot(series.index, series.values, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes
            )
    fig.tight_layout()
    return fig
