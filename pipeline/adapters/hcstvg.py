"""HC-STVG v1 and v2: 20 s movie clips, one declarative caption and one person tube each.

v1: ``<root>/anno/{train,test}.json`` (or ``<root>/{split}.json``), a dict keyed by the
video file name::

    {"5_abc.mp4": {"bbox": [[x, y, w, h], ...], "st_frame": 31, "st_time": 1.2,
                   "ed_time": 6.8, "img_num": 500, "caption": "...",
                   "width": 640, "height": 360}}

v2: ``<root>/anno/{trainv2,valv2}.json`` (splits ``train``/``val``), the caption under
``English`` and the frame size as ``img_size`` = [h, w]; keys may be nested paths.

Traps handled here: ``st_frame`` is 1-based and there is one box per frame from it, so
box ``k`` sits at ``(st_frame - 1 + k) / fps``; boxes are xywh. The rate comes from the
video header; if the video is missing the record is still yielded (decoding will fail
and be recorded) with ``fps = img_num / 20`` (every clip is 20 s). ``span_s`` is
``(st_time, ed_time)``. Videos live under ``<root>/video/`` (or ``videos/``), looked up
by file name anywhere below it; a missing folder fails at once, a missing video does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.adapters.base import (
    VIDEO_EXTS,
    AnnotationError,
    AnnotationProblem,
    DatasetNotFoundError,
    OnError,
    Skip,
    get_key,
    index_files,
    load_json,
    lookup_file,
    probe_fps,
    require_dir,
    require_file,
    warn_problem,
)
from pipeline.geometry import xywh_to_xyxy
from pipeline.records import GTObject, QueryRecord, VideoRecord

CLIP_S = 20.0  # every HC-STVG clip lasts 20 s

Number = (int, float)


def _boxes(entry: dict) -> np.ndarray:
    raw = get_key(entry, "bbox", list)
    try:
        xywh = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Skip(f"'bbox' must be a list of [x, y, w, h], ({exc})") from exc
    if xywh.ndim != 2 or xywh.shape[1] != 4 or len(xywh) == 0:
        raise Skip(f"'bbox' must be a non-empty list of [x, y, w, h], got shape {xywh.shape}")
    return xywh_to_xyxy(xywh)


def _size(entry: dict, version: int) -> tuple[int | None, int | None]:
    if version == 1:
        w, h = entry.get("width"), entry.get("height")
    else:
        hw = entry.get("img_size")
        h, w = hw if isinstance(hw, list) and len(hw) == 2 else (None, None)
    return (int(w) if w else None), (int(h) if h else None)


def _video(key: str, entry, version: int, video_dir: Path, index, dataset, split) -> VideoRecord:
    text = get_key(entry, "caption" if version == 1 else "English", str)
    st_frame = get_key(entry, "st_frame", Number)
    if st_frame != int(st_frame) or st_frame < 1:
        raise Skip(f"'st_frame' must be a 1-based frame number, got {st_frame}")
    st_time, ed_time = get_key(entry, "st_time", Number), get_key(entry, "ed_time", Number)
    xyxy = _boxes(entry)
    img_num = entry.get("img_num")
    path = lookup_file(index, key) or video_dir / key
    fps = probe_fps(path) if path.is_file() else None
    if fps is None:
        ok = isinstance(img_num, Number) and img_num > 0
        fps = img_num / CLIP_S if ok else 1.0
    times = (int(st_frame) - 1 + np.arange(len(xyxy))) / fps
    gt = GTObject(0, times, xyxy)
    query = QueryRecord("0", text, "declarative", (st_time, ed_time), (gt,))
    w, h = _size(entry, version)
    return VideoRecord(Path(key).stem, dataset, split, path, fps, w, h, queries=(query,))


def _iter(root, split, version: int, dataset: str, on_error: OnError | None):
    """Checks the files at once (not on the first ``next``), then returns the generator."""
    root, report = Path(root), on_error or warn_problem
    stem = split if version == 1 else f"{split}v2"
    name = "HC-STVG v1" if version == 1 else "HC-STVG v2"
    hint = (
        f"Download {name} and put the annotations at {root}/anno/{stem}.json and the "
        f"videos under {root}/video/."
    )
    require_dir(root, f"{name} root", hint)
    anno_path = require_file(
        [root / "anno" / f"{stem}.json", root / f"{stem}.json"], f"{name} annotations", hint
    )
    video_dir = next((d for d in (root / "video", root / "videos") if d.is_dir()), None)
    if video_dir is None:
        raise DatasetNotFoundError(f"{name} videos not found: no folder {root}/video/. {hint}")
    data = load_json(anno_path, dict)
    index = index_files(video_dir, VIDEO_EXTS)

    def records() -> Iterator[VideoRecord]:
        seen: set[str] = set()
        for key, entry in data.items():
            try:
                if Path(key).stem in seen:
                    raise Skip(f"duplicate video id {Path(key).stem!r}")
                record = _video(key, entry, version, video_dir, index, dataset, split)
            except AnnotationError:  # a strict on_error
                raise
            except (Skip, ValueError) as exc:  # ValueError: a record failed its own checks
                report(AnnotationProblem(anno_path, key, str(exc)))
                continue
            seen.add(record.video_id)
            yield record

    return records()


def iter_videos_v1(
    root: Path,
    split: str,
    *,
    fps: float | None = None,
    dataset: str = "hcstvg1",
    on_error: OnError | None = None,
) -> Iterator[VideoRecord]:
    """Yield one :class:`VideoRecord` per HC-STVG v1 video (``fps`` is ignored: the
    rate comes from each video's header)."""
    return _iter(root, split, 1, dataset, on_error)


def iter_videos_v2(
    root: Path,
    split: str,
    *,
    fps: float | None = None,
    dataset: str = "hcstvg2",
    on_error: OnError | None = None,
) -> Iterator[VideoRecord]:
    """Yield one :class:`VideoRecord` per HC-STVG v2 video (splits ``train``/``val``;
    ``fps`` is ignored: the rate comes from each video's header)."""
    return _iter(root, split, 2, dataset, on_error)
