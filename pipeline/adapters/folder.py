"""Any folder of videos and/or JPEG frame folders: records without queries, for inference.

Every video file (mp4/avi/mkv/mov/webm) below ``root`` becomes a record with the rate
from its header, and every folder directly holding JPEG frames becomes a record whose
frame times are ``frame number / fps`` (numeric names) or ``position / fps``. ``root``
may also be one video file or one frame folder. ``video_id`` is the path relative to
``root`` without its extension. The split is only written into the records.

A video file ``<stem>.<ext>`` with a MOTChallenge ``<stem>.gt.txt`` beside it (``frame,
id, x, y, w, h, ...``, frames from 1 at the video's native rate, boxes in native pixels;
the layout :mod:`pipeline.synthetic.hard` writes) carries it as ground-truth identities
(:attr:`pipeline.records.VideoRecord.mot_gt`): the pipeline then scores its tracks and
ByteTrack alone against it, and the manifest sums the scores (``tracking``). JPEG
folders carry none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipeline.adapters.base import (
    JPEG_EXTS,
    VIDEO_EXTS,
    DatasetNotFoundError,
    OnError,
    list_frame_files,
    probe_fps,
)
from pipeline.records import VideoRecord

DEFAULT_JPEG_FPS = 30.0
HINT = "Point it at a video file or a directory of videos (mp4/avi/mkv/mov/webm) or JPEG folders."


class SyntheticDetectorError(ValueError):
    """The synthetic-shapes detector was about to run on arbitrary videos."""


SYNTHETIC_VIDEO_NAME = re.compile(r"syn_(train|valid)_\d{4}")
"""How :mod:`pipeline.synthetic.writer` names the synthetic set's videos."""


def check_weights(weights: str | None, video_name: str | None = None) -> None:
    """Refuse the default (synthetic-shapes) detector for arbitrary videos.

    Raises :class:`SyntheticDetectorError` when ``weights`` is None and ``video_name`` (a
    file stem or folder name) is not a synthetic-set video; ``"synthetic"`` asks for that
    detector on purpose, any other name or path is a real checkpoint.
    """
    if video_name is not None and SYNTHETIC_VIDEO_NAME.fullmatch(video_name):
        return
    if weights is None:
        raise SyntheticDetectorError(
            "the folder dataset holds arbitrary videos, but no --weights was given: the "
            "default detector is trained on synthetic shapes only and would call every object "
            "a circle, square, triangle or star. Pass a real checkpoint, e.g. --weights "
            "yolo11x.pt (put the file in data/models/ultralytics/ or data/models/; nothing is "
            "downloaded), or --weights synthetic to run the synthetic detector anyway."
        )


def _sources(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTS:
            raise DatasetNotFoundError(
                f"{root} is not a video file ({', '.join(VIDEO_EXTS)}). {HINT}"
            )
        return [root]
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    frame_dirs = sorted({p.parent for p in files if p.suffix.lower() in JPEG_EXTS})
    return videos + frame_dirs


def iter_videos(
    root: Path,
    split: str = "all",
    *,
    fps: float | None = None,
    dataset: str = "folder",
    on_error: OnError | None = None,
) -> Iterator[VideoRecord]:
    """One query-less :class:`VideoRecord` per video file or JPEG folder below ``root``.

    Args:
        fps: rate of JPEG folders (default 30); also used for a video whose header
            gives none. Videos otherwise keep their own rate.
        on_error: unused (nothing here is annotated); accepted for a uniform signature.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetNotFoundError(f"folder not found: {root}. {HINT}")
    sources = _sources(root)
    if not sources:
        raise DatasetNotFoundError(f"no videos or JPEG frame folders below {root}. {HINT}")
    jpeg_fps = float(fps or DEFAULT_JPEG_FPS)

    def rel(src: Path) -> Path:
        return src.relative_to(root) if src != root else Path(src.name)

    short = [
        rel(s).as_posix() if s.is_dir() else rel(s).with_suffix("").as_posix() for s in sources
    ]
    # a.mp4 beside a.mkv or a frame folder a/: such videos keep their extension in the id
    counts = Counter(short)
    ids = [
        rel(s).as_posix() if s.is_file() and counts[v] > 1 else v for s, v in zip(sources, short)
    ]

    def records() -> Iterator[VideoRecord]:
        for src, vid in zip(sources, ids):
            if src.is_dir():
                frames = list_frame_files(src, JPEG_EXTS)
                yield VideoRecord(vid, dataset, split, src, jpeg_fps, frame_files=frames)
            else:
                rate = probe_fps(src) or jpeg_fps  # unreadable: decoding will fail, saying why
                gt = src.with_name(f"{src.stem}.gt.txt")
                mot_gt = gt if gt.is_file() else None
                yield VideoRecord(vid, dataset, split, src, rate, mot_gt=mot_gt)

    return records()
