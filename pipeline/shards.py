"""Parquet shards: the schema (a contract with the trainer), an atomic writer, a reader.

One row per video, queries nested. Small row groups let the trainer read one video
without touching the others; :class:`ShardIndex` maps (file, row group, row, query)
once at start-up from a light column projection.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.mot import COUNT_FIELDS, TRACKERS
from pipeline.records import GTObject, QueryRecord, Track

BOX = pa.list_(pa.float32(), 4)

TRACK_TYPE = pa.struct(
    [
        ("id", pa.int32()),
        ("class_name", pa.string()),
        ("times_s", pa.list_(pa.float32())),
        ("xyxy", pa.list_(BOX)),
        ("masks_rle", pa.list_(pa.string())),
    ]
)
GT_TYPE = pa.struct(
    [
        ("object", pa.int32()),
        ("times_s", pa.list_(pa.float32())),
        ("xyxy", pa.list_(BOX)),
        ("masks_rle", pa.list_(pa.string())),
    ]
)
QUERY_TYPE = pa.struct(
    [
        ("query_id", pa.string()),
        ("text", pa.string()),
        ("qtype", pa.string()),
        ("target_ids", pa.list_(pa.int32())),
        ("match_iou", pa.float32()),
        ("span_s", pa.list_(pa.float32(), 2)),
        ("gt", pa.list_(GT_TYPE)),
    ]
)
MOT_COUNTS_TYPE = pa.struct([(name, pa.int64()) for name in COUNT_FIELDS])
MOT_TYPE = pa.struct([(name, MOT_COUNTS_TYPE) for name in TRACKERS])
"""Per-video MOT counts (:mod:`pipeline.mot`) of ByteTrack alone and the final tracks."""
SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("out_fps", pa.float32()),
        ("track_fps", pa.float32()),
        ("native_fps", pa.float32()),
        ("frame_times_s", pa.list_(pa.float32())),
        ("frames", pa.list_(pa.binary())),
        ("tracks", pa.list_(TRACK_TYPE)),
        ("queries", pa.list_(QUERY_TYPE)),
        ("mot", MOT_TYPE),  # null: the video has no MOT ground truth
    ]
)


@dataclass(frozen=True)
class ShardVideo:
    """One shard row, decoded into records (boxes and masks in the stored frame size).

    Attributes:
        frames: T JPEG byte strings with the ID overlays burned in.
        frame_times_s: (T,) float32 time of each stored frame.
        tracks: every kept track, IDs 1..K.
        queries: queries with ground truth and matched ``target_ids``.
        mot: ``{"bytetrack": counts, "pipeline": counts}`` (:data:`pipeline.mot.COUNT_FIELDS`)
            against the video's MOTChallenge ground truth on the tracked frames; None
            without one (and in rows written before output version 4).
    """

    video_id: str
    dataset: str
    split: str
    width: int
    height: int
    out_fps: float
    track_fps: float
    native_fps: float
    frame_times_s: np.ndarray
    frames: tuple[bytes, ...]
    tracks: tuple[Track, ...]
    queries: tuple[QueryRecord, ...]
    mot: dict[str, dict[str, int]] | None = None

    def track(self, track_id: int) -> Track | None:
        return next((t for t in self.tracks if t.id == track_id), None)

    def query(self, query_id: str) -> QueryRecord:
        for q in self.queries:
            if q.query_id == query_id:
                return q
        raise KeyError(f"{self.video_id} has no query {query_id!r}")

    def decode_frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames."""
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in self.frames])


# ------------------------------------------------------------------ records <-> rows


def _masks_out(masks):
    return None if masks is None else list(masks)


def track_to_dict(t: Track) -> dict:
    return {
        "id": int(t.id),
        "class_name": t.class_name,
        "times_s": t.times_s.tolist(),
        "xyxy": t.xyxy.tolist(),
        "masks_rle": _masks_out(t.masks_rle),
    }


def query_to_dict(q: QueryRecord) -> dict:
    return {
        "query_id": q.query_id,
        "text": q.text,
        "qtype": q.qtype,
        "target_ids": list(q.target_ids),
        "match_iou": float(q.match_iou),
        "span_s": [float(q.span_s[0]), float(q.span_s[1])],
        "gt": [
            {
                "object": int(g.object),
                "times_s": g.times_s.tolist(),
                "xyxy": g.xyxy.tolist(),
                "masks_rle": _masks_out(g.masks_rle),
            }
            for g in q.gt
        ],
    }


def make_row(
    *,
    video_id: str,
    dataset: str,
    split: str,
    width: int,
    height: int,
    out_fps: float,
    track_fps: float,
    native_fps: float,
    frame_times_s: Sequence[float],
    frames: Sequence[bytes],
    tracks: Sequence[Track],
    queries: Sequence[QueryRecord],
    mot: dict[str, dict[str, int]] | None = None,
) -> dict:
    """Build one shard row (a plain dict matching :data:`SCHEMA`)."""
    if len(frames) != len(frame_times_s):
        raise ValueError(f"{video_id}: {len(frames)} frames but {len(frame_times_s)} frame times")
    if mot is not None:
        given, mot = mot, mot_cell(mot)
        if mot is None:
            raise ValueError(
                f"{video_id}: mot must map {TRACKERS} to counts of {COUNT_FIELDS}, got {given!r}"
            )
    return {
        "video_id": video_id,
        "dataset": dataset,
        "split": split,
        "width": int(width),
        "height": int(height),
        "out_fps": float(out_fps),
        "track_fps": float(track_fps),
        "native_fps": float(native_fps),
        "frame_times_s": [float(t) for t in frame_times_s],
        "frames": list(frames),
        "tracks": [track_to_dict(t) for t in tracks],
        "queries": [query_to_dict(q) for q in queries],
        "mot": mot,
    }


def mot_cell(value) -> dict[str, dict[str, int]] | None:
    """The ``mot`` cell as plain ints, however the reader gave it; None when it is null
    or not a full set of counts."""
    if not isinstance(value, dict) or set(value) != set(TRACKERS):
        return None
    out = {}
    for name in TRACKERS:
        counts = value[name]
        if not isinstance(counts, dict) or set(counts) != set(COUNT_FIELDS):
            return None
        out[name] = {k: int(counts[k]) for k in COUNT_FIELDS}
    return out


def _masks_in(masks):
    return None if masks is None else tuple(None if m is None else str(m) for m in masks)


def _boxes(rows) -> np.ndarray:
    """(N, 4) float32 from a list of boxes or pandas' array of arrays."""
    boxes = [np.asarray(b, dtype=np.float32).reshape(4) for b in _items(rows)]
    return np.stack(boxes) if boxes else np.zeros((0, 4), np.float32)


def _items(value) -> list:
    """A list column's items however the reader gave them: a list (pyarrow, 🤗 datasets),
    a NumPy object array (pandas), or a dict of equal-length lists (🤗 ``Sequence`` of
    structs)."""
    if value is None:
        return []
    if isinstance(value, dict):
        keys = list(value)
        columns = [_items(value[k]) for k in keys]
        return [dict(zip(keys, vals)) for vals in zip(*columns)]
    return list(value)


def row_to_video(row) -> ShardVideo:
    """Inverse of :func:`make_row`, for a row read back by any reader: ``to_pylist()``
    (pyarrow), ``DataFrame.iloc[i]`` / ``to_dict("records")`` (pandas) or ``dataset[i]``
    (🤗 datasets)."""
    row = dict(row)
    tracks = tuple(
        Track(
            id=int(t["id"]),
            class_name=t["class_name"],
            times_s=np.asarray(_items(t["times_s"]), dtype=np.float32),
            xyxy=_boxes(t["xyxy"]),
            masks_rle=_masks_in(t["masks_rle"]),
        )
        for t in _items(row["tracks"])
    )
    queries = tuple(
        QueryRecord(
            query_id=q["query_id"],
            text=q["text"],
            qtype=q["qtype"],
            span_s=tuple(_items(q["span_s"])),
            gt=tuple(
                GTObject(
                    int(g["object"]),
                    np.asarray(_items(g["times_s"]), dtype=np.float32),
                    _boxes(g["xyxy"]),
                    _masks_in(g["masks_rle"]),
                )
                for g in _items(q["gt"])
            ),
            target_ids=tuple(_items(q["target_ids"])),
            match_iou=float("nan") if q["match_iou"] is None else float(q["match_iou"]),
        )
        for q in _items(row["queries"])
    )
    return ShardVideo(
        video_id=row["video_id"],
        dataset=row["dataset"],
        split=row["split"],
        width=int(row["width"]),
        height=int(row["height"]),
        out_fps=float(row["out_fps"]),
        track_fps=float(row["track_fps"]),
        native_fps=float(row["native_fps"]),
        frame_times_s=np.asarray(_items(row["frame_times_s"]), dtype=np.float32),
        frames=tuple(bytes(b) for b in _items(row["frames"])),
        tracks=tracks,
        queries=queries,
        mot=mot_cell(row.get("mot")),  # rows of output version < 4 have no column
    )


# ------------------------------------------------------------------ writing


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    A crash (or ``kill -9``) leaves either the complete old/new file or a stray hidden
    ``.tmp`` file that readers ignore, never a partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a file is the user's umask's
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe; brief)
    os.umask(mask)
    return mask


def write_shard(path: str | Path, rows: Sequence[dict], row_group_size: int = 4) -> Path:
    """Write rows to ``path`` atomically (see :func:`atomic_file`); small row groups let
    readers fetch one video without reading the others."""
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    with atomic_file(path, "wb") as f:
        pq.write_table(table, f, row_group_size=max(1, row_group_size), compression="zstd")
    return Path(path)


def write_json_atomic(path: str | Path, obj) -> Path:
    """Write JSON atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return Path(path)


# ------------------------------------------------------------------ reading


def list_shards(root: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted shard files under ``root`` (a folder, searched recursively, or one file).

    ``recursive=False``: the folder's own files only, as the preprocessing pipeline's
    bookkeeping (resume, counts) reads its output folder; readers of a parent folder of
    several splits (the trainer, evaluation) keep the recursive search.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.exists():
        raise FileNotFoundError(f"no shard folder {root}: run `make preprocess` first")
    found = root.rglob("*.parquet") if recursive else root.glob("*.parquet")
    return sorted(p for p in found if not p.name.startswith("."))


def read_videos(root: str | Path) -> Iterator[ShardVideo]:
    """Iterate over every video of every shard under ``root``, one row group at a time."""
    for path in list_shards(root):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for row in pf.read_row_group(rg).to_pylist():
                yield row_to_video(row)


def read_video_ids(root: str | Path, recursive: bool = False) -> set[str]:
    """Video ids already present in the shards of ``root`` (used to resume): its own
    files only, unless ``recursive`` (see :func:`list_shards`)."""
    ids: set[str] = set()
    if not Path(root).exists():
        return ids
    for path in list_shards(root, recursive=recursive):
        try:
            table = pq.read_table(path, columns=["video_id"])
        except (pa.ArrowException, OSError) as exc:
            raise UnreadableShardError(
                f"{path}: unreadable part file ({exc}). It was not written by a finished "
                "run (those are atomic): delete it and rerun, its videos are processed again."
            ) from exc
        ids.update(table.column("video_id").to_pylist())
    return ids


class UnreadableShardError(ValueError):
    """A part file that Parquet cannot read (cut short, or not a shard)."""


@dataclass(frozen=True)
class QueryRef:
    """Where one query lives: (file, row group, row in group, query index)."""

    file: int
    row_group: int
    row: int
    query: int
    video_id: str
    query_id: str


class ShardIndex:
    """Random access to queries across shards; reads only the row group it needs.

    Built once from the ``video_id`` and ``queries.query_id`` columns.
    """

    def __init__(self, paths: Iterable[str | Path] | str | Path, only_matched: bool = False):
        if isinstance(paths, str | Path):
            paths = list_shards(paths)
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise FileNotFoundError("no shard files given")
        self.refs: list[QueryRef] = []
        for fi, path in enumerate(self.paths):
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                cols = pf.read_row_group(rg, columns=["video_id", "queries"]).to_pylist()
                for ri, row in enumerate(cols):
                    for qi, q in enumerate(row["queries"]):
                        if only_matched and not q["target_ids"]:
                            continue
                        self.refs.append(QueryRef(fi, rg, ri, qi, row["video_id"], q["query_id"]))
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: tuple[tuple[int, int, int], ShardVideo] | None = None

    def __len__(self) -> int:
        return len(self.refs)

    def video(self, ref: QueryRef) -> ShardVideo:
        key = (ref.file, ref.row_group, ref.row)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        pf = self._files.get(ref.file)
        if pf is None:
            pf = self._files[ref.file] = pq.ParquetFile(self.paths[ref.file])
        row = pf.read_row_group(ref.row_group).slice(ref.row, 1).to_pylist()[0]
        video = row_to_video(row)
        self._cache = (key, video)
        return video

    def __getitem__(self, i: int) -> tuple[ShardVideo, QueryRecord]:
        ref = self.refs[i]
        video = self.video(ref)
        return video, video.queries[ref.query]
