"""The shard folder's bookkeeping: part files, manifests, failure lists, sharding.

A folder holds ``part-<tag>-<seq>.parquet`` files written atomically (``<tag>`` is the
share, ``<index>of<n>``), one manifest per share (``_manifest.json`` for an unsharded
run, ``_manifest-<tag>.json`` otherwise; written before the first video with
``status: running``, completed at the end), one list of the share's currently failed
videos (``_failures.jsonl`` / ``_failures-<tag>.jsonl``, a line per video) and an
append-only ``_failure_history.jsonl``. Counts in a manifest are recomputed from the
part files on disk, so they stay right across resumed runs, and so is the ``tracking``
block (MOT metrics summed over the videos with MOTChallenge ground truth, see
:func:`summarize_tracking`); ``python -m pipeline.views.summary <folder>`` merges all
shares' manifests into one view.
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

from pipeline.locks import shard_tag
from pipeline.records import VideoRecord
from pipeline.shards import atomic_file, write_json_atomic

if TYPE_CHECKING:
    from pipeline.config import PreprocessConfig

PART_PREFIX = "part"
# underscore names: Arrow, pandas and HF datasets skip them when reading the folder
MANIFEST = "_manifest.json"
FAILURES = "_failures.jsonl"
FAILURE_HISTORY = "_failure_history.jsonl"  # every failure of every run, appended


class OutputConflictError(RuntimeError):
    """The output folder holds shards made with other settings (or of unknown origin)."""


UNSHARDED = shard_tag(1, 0)  # the tag of a run that does not split the dataset


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
    for path in list_shards(out_dir, recursive=False):  # the folder's own parts
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


TRACKING_NOTE = (
    "motmetrics at IoU >= 0.5 on the tracked frames of the folder's videos that have a "
    "MOTChallenge gt.txt (videos: how many), counts summed over them: bytetrack is "
    "Ultralytics' ByteTrack alone (bytetrack.yaml, IDs as it outputs them) on the "
    "pipeline's detections, pipeline the stored tracks; idf1 = 2 idtp / (2 idtp + idfp + "
    "idfn), mota = 1 - (num_misses + num_false_positives + num_switches) / num_objects"
)


def read_mot_cells(out_dir: Path) -> dict[str, dict | None]:
    """Video id -> its stored row's MOT counts (:func:`pipeline.shards.mot_cell`; None for
    a row without them, also in part files written before output version 4)."""
    import pyarrow.parquet as pq

    from pipeline.shards import list_shards, mot_cell

    cells: dict[str, dict | None] = {}
    for path in list_shards(out_dir, recursive=False):
        has_mot = "mot" in pq.read_schema(path).names
        table = pq.read_table(path, columns=["video_id", "mot"] if has_mot else ["video_id"])
        ids = table.column("video_id").to_pylist()
        column = table.column("mot").to_pylist() if has_mot else [None] * len(ids)
        cells.update(zip(ids, map(mot_cell, column)))
    return cells


def summarize_tracking(out_dir: Path, cells: dict[str, dict | None] | None = None) -> dict | None:
    """The manifest's ``tracking`` block, recomputed from the folder's own part files (or
    from their :func:`read_mot_cells`, when the caller has read them): per tracker
    (:data:`pipeline.mot.TRACKERS`) the summed counts with their IDF1 and MOTA, and the
    number of videos scored; None when no video has MOT ground truth."""
    from pipeline.mot import MOT_IOU, TRACKERS, scores, sum_counts

    cells = [c for c in (read_mot_cells(out_dir) if cells is None else cells).values() if c]
    if not cells:
        return None
    block: dict = {"videos": len(cells), "iou": MOT_IOU, "note": TRACKING_NOTE}
    for name in TRACKERS:
        total = sum_counts(c[name] for c in cells)
        block[name] = {**scores(total), **total}
    return block


def stored_without_mot(cells: dict[str, dict | None], video_ids: set[str]) -> list[str]:
    """Those of ``video_ids`` stored without MOT counts (``cells`` from
    :func:`read_mot_cells`): videos whose ``gt.txt`` appeared after they were processed."""
    return sorted(v for v, c in cells.items() if v in video_ids and c is None)


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


# ------------------------------------------------------------------ per-share file names


def manifest_name(tag: str) -> str:
    """``_manifest.json`` for an unsharded run, ``_manifest-<tag>.json`` for a share."""
    return MANIFEST if tag == UNSHARDED else f"_manifest-{tag}.json"


def failures_name(tag: str) -> str:
    """``_failures.jsonl`` for an unsharded run, ``_failures-<tag>.jsonl`` for a share."""
    return FAILURES if tag == UNSHARDED else f"_failures-{tag}.jsonl"


def manifest_paths(out_dir: Path) -> list[Path]:
    """Every share's manifest in ``out_dir``."""
    return sorted({*out_dir.glob("_manifest.json"), *out_dir.glob("_manifest-*.json")})


def failure_paths(out_dir: Path) -> list[Path]:
    """Every share's current-failures file in ``out_dir`` (not :data:`FAILURE_HISTORY`)."""
    return sorted({*out_dir.glob(FAILURES), *out_dir.glob("_failures-*.jsonl")})


def remove_stray_temps(out_dir: Path, tag: str) -> list[Path]:
    """Delete temporary files a killed run of this share left (``.part-<tag>-*.tmp``, a
    half-written manifest or failure list); other shares' files are left alone."""
    patterns = (
        f".{PART_PREFIX}-{tag}-*.tmp",
        f".{manifest_name(tag)}.*.tmp",
        f".{failures_name(tag)}.*.tmp",
    )
    stray = sorted({p for pat in patterns for p in out_dir.glob(pat)})
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


class FailureLog:
    """One current line per failed video of a share, rewritten atomically; a video that
    later succeeds is removed. Every failure is also appended to :data:`FAILURE_HISTORY`."""

    def __init__(self, out_dir: Path, tag: str):
        self.path = out_dir / failures_name(tag)
        self.history = out_dir / FAILURE_HISTORY
        self.current = read_failures(self.path)

    def failed(self, entry: dict) -> None:
        self.current[entry["video_id"]] = entry
        with self.history.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self._write()

    def succeeded(self, video_ids) -> None:
        """Forget the failures of videos now stored in a part file."""
        gone = [v for v in video_ids if self.current.pop(v, None) is not None]
        if gone:
            self._write()

    def _write(self) -> None:
        if not self.current:
            self.path.unlink(missing_ok=True)
            return
        with atomic_file(self.path, "w") as f:
            for vid in sorted(self.current):
                f.write(json.dumps(self.current[vid]) + "\n")


# ------------------------------------------------------------------ the folder's identity


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(diffs) or "(same fields, different hash)"


def manifest_tag(manifest: Path) -> str:
    """The share a manifest file belongs to, from its name (``000of001`` for ``_manifest.json``)."""
    return UNSHARDED if manifest.name == MANIFEST else manifest.stem.split("-", 1)[1]


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: treated as a manifest of unknown settings


def _clear(out_dir: Path) -> None:
    """``--overwrite``: delete every part, manifest and failure list of the folder."""
    for p in [
        *out_dir.glob(f"{PART_PREFIX}-*.parquet"),
        *manifest_paths(out_dir),
        *failure_paths(out_dir),
        out_dir / FAILURE_HISTORY,
    ]:
        p.unlink(missing_ok=True)


def prepare_output(
    out_dir: Path, config: PreprocessConfig, overwrite: bool, meta: dict, tag: str = UNSHARDED
) -> None:
    """Check the folder against ``config`` and mark this share as running.

    Called with the share's lock held (:func:`pipeline.locks.share_lock`) and inside
    :func:`pipeline.locks.folder_lock`. The folder's identity is the config hash of its
    manifests, binding only while a part file exists or another share is running: a
    folder holding no finished part (a run that failed its checks, or was killed before
    its first part) is reused with the new settings, its stale manifests removed.
    """
    from pipeline.locks import held_tags

    parts = sorted(out_dir.glob(f"{PART_PREFIX}-*.parquet"))
    running = held_tags(out_dir, skip=tag)
    if overwrite:
        if running:
            raise OutputConflictError(
                f"{out_dir}: --overwrite would delete the work of shard {running[0]}, "
                "which is running now"
            )
        _clear(out_dir)
        parts = []
    mine = config.hash()
    manifests = {p: _read_manifest(p) for p in manifest_paths(out_dir)}
    binding = bool(parts) or bool(running)
    for path, old in list(manifests.items()):
        if old.get("config_hash") == mine:
            continue
        if binding:
            before = old.get("identity", old.get("config", {}))
            raise OutputConflictError(
                f"{out_dir} holds shards made with other settings or another pipeline version "
                f"(config hash {old.get('config_hash')} != {mine}; "
                f"{_config_diff(before, config.identity())}). "
                "Use another --out, or --overwrite to delete them and start again."
            )
        path.unlink()  # describes no part: stale, and so is its failure list
        (out_dir / failures_name(manifest_tag(path))).unlink(missing_ok=True)
        del manifests[path]
    if parts and not manifests:
        raise OutputConflictError(
            f"{out_dir} holds {len(parts)} part files but no {MANIFEST}, so the settings that "
            "made them are unknown. Use another --out, or --overwrite to delete them."
        )
    path = out_dir / manifest_name(tag)
    index, num_shards = (int(x) for x in tag.split("of"))
    started = {
        **manifests.get(path, {}),
        **meta,
        **manifest_identity(config),
        "status": "running",
        "num_shards": num_shards,
        "shard_index": index,
    }
    write_json_atomic(path, started)


IDENTITY_NOTE = (
    "identity: every setting that changes the rows, the output version and the detector "
    "file's SHA-256; config_hash is its hash, and a run into this folder with another "
    "hash is refused while the folder holds a part file. config also records the "
    "settings that cannot change a row (not_in_identity) and last_run the run's own "
    "options (workers, progress); neither is compared."
)


def manifest_identity(config: PreprocessConfig) -> dict:
    """The manifest's identity block: settings, identity, hash and what the hash leaves out."""
    from pipeline.config import NOT_IN_IDENTITY

    return {
        "config": dataclasses.asdict(config),
        "identity": config.identity(),
        "config_hash": config.hash(),
        "not_in_identity": list(NOT_IN_IDENTITY),
        "identity_note": IDENTITY_NOTE,
    }
