"""The shard folder's bookkeeping: part files, the manifest, the failure log, sharding.

A folder holds ``part-<shard>-<seq>.parquet`` files written atomically, a
``_manifest.json`` (written before the first video with ``status: running``, completed
at the end) and an append-only ``_failures.jsonl``. Counts in the manifest are always
recomputed from what is on disk, so they stay right across resumed runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.records import VideoRecord
from pipeline.shards import write_json_atomic

if TYPE_CHECKING:
    from pipeline.config import PreprocessConfig

PART_PREFIX = "part"
# underscore names: Arrow, pandas and HF datasets skip them when reading the folder
MANIFEST = "_manifest.json"
FAILURES = "_failures.jsonl"


class OutputConflictError(RuntimeError):
    """The output folder holds shards made with other settings (or of unknown origin)."""


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard a video belongs to: SHA-1 of its id, so any machine agrees, in any run."""
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def select_records(
    records: Sequence[VideoRecord], num_shards: int, shard_index: int, limit: int | None
) -> list[VideoRecord]:
    """This machine's share (stable: by a hash of the video id), then ``--limit``."""
    mine = [r for r in records if shard_of(r.video_id, num_shards) == shard_index]
    return mine[:limit] if limit is not None else mine


def next_part(out_dir: Path, shard_tag: str) -> Iterator[Path]:
    seqs = [
        int(p.stem.rsplit("-", 1)[-1])
        for p in out_dir.glob(f"{PART_PREFIX}-{shard_tag}-*.parquet")
        if p.stem.rsplit("-", 1)[-1].isdigit()
    ]
    seq = max(seqs, default=-1) + 1
    while True:
        yield out_dir / f"{PART_PREFIX}-{shard_tag}-{seq:05d}.parquet"
        seq += 1


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("stvg-id", "torch", "ultralytics", "supervision", "av", "pyarrow", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def read_failures(path: Path) -> dict[str, dict]:
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
    """Counts recomputed from what is on disk (so they stay right across resumed runs).

    ``inexact_queries`` lists every matched query whose IDs are not exactly right
    (:func:`pipeline.match.match_quality`), with the coverage of each target, the other
    IDs seen on it and whether distinct targets got distinct IDs, so a low ``exact_rate`` can be looked into query by query.
    """
    import pyarrow.parquet as pq

    from pipeline.match import match_quality
    from pipeline.shards import list_shards, row_to_video

    c = dict(videos=0, queries=0, annotated=0, matched=0, exact=0, frames=0, tracks=0)
    ious, no_tracks, inexact = [], [], []
    for path in list_shards(out_dir):
        table = pq.read_table(path, columns=list(_SUMMARY_COLUMNS))
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
                    quality = match_quality(
                        q, v.tracks, max_gap_s=max_gap_s, frame_hw=(v.height, v.width)
                    )
                    c["exact"] += bool(quality["exact"])
                    if not quality["exact"]:
                        inexact.append(_inexact_entry(v.video_id, q, quality))
    ann = max(c["annotated"], 1)
    c["match_rate"] = c["matched"] / ann
    c["exact_rate"] = c["exact"] / ann
    c["mean_match_iou"] = float(np.mean(ious)) if ious else 0.0
    c["tracks_per_video"] = c["tracks"] / max(c["videos"], 1)
    c["videos_without_tracks"] = sorted(no_tracks)
    # which matched queries miss "exact", and why (unmatched ones lack target_ids)
    c["inexact_queries"] = sorted(inexact, key=lambda e: (e["video_id"], e["query_id"]))
    return c


def _inexact_entry(video_id: str, query, quality: dict) -> dict:
    return {
        "video_id": video_id,
        "query_id": query.query_id,
        "target_ids": list(query.target_ids),
        "coverage": [round(x, 3) for x in quality["coverage"]],
        "other_ids": quality["other_ids"],
        "distinct": quality["distinct"],
    }


_SUMMARY_COLUMNS = (
    "video_id", "dataset", "split", "width", "height", "out_fps", "track_fps",
    "native_fps", "frame_times_s", "tracks", "queries",
)  # fmt: skip


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(diffs) or "(same fields, different hash)"


def prepare_output(out_dir: Path, config: PreprocessConfig, overwrite: bool, meta: dict) -> None:
    """Refuse a folder made with other settings (unless ``overwrite``: then empty it), and
    mark the run as started in the manifest before any part file is written."""
    manifest_path = out_dir / MANIFEST
    parts = sorted(out_dir.glob(f"{PART_PREFIX}-*.parquet"))
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if overwrite:
        for p in [*parts, out_dir / FAILURES, manifest_path]:
            p.unlink(missing_ok=True)
        old = None
    elif old is not None and old.get("config_hash") != config.hash():
        before = old.get("identity", old.get("config", {}))
        raise OutputConflictError(
            f"{out_dir} holds shards made with other settings or another pipeline version "
            f"(config hash {old.get('config_hash')} != {config.hash()}; "
            f"{_config_diff(before, config.identity())}). "
            "Use another --out, or --overwrite to delete them and start again."
        )
    elif old is None and parts:
        raise OutputConflictError(
            f"{out_dir} holds {len(parts)} part files but no {MANIFEST}, so the settings that "
            "made them are unknown. Use another --out, or --overwrite to delete them."
        )
    started = {
        **(old or {}),
        **meta,
        "config": dataclasses.asdict(config),
        "identity": config.identity(),
        "config_hash": config.hash(),
        "status": "running",
    }
    write_json_atomic(manifest_path, started)
