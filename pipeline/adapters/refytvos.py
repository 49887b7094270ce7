"""Ref-YouTube-VOS: MeViS's JPEG layout, one target per expression, palette-PNG masks.

Layout::

    <root>/<split>/JPEGImages/<vid>/<00000>.jpg         (frame names step by 5)
    <root>/<split>/Annotations/<vid>/<00000>.png        (palette PNG: pixel value = obj id)
    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {vid: {"frames": [...], "expressions": {exp_id: {"exp", "obj_id": "1"}}}}}

``obj_id`` is a single string. Frames are every 5th frame of 30 fps videos, so with the
nominal ``fps=30`` a frame named ``00035`` sits at 35 / 30 s. Splits without
``Annotations`` (``valid``, ``test``) give queries without ground truth spanning the video.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.adapters.base import (
    AnnotationError,
    AnnotationProblem,
    DatasetNotFoundError,
    OnError,
    Skip,
    get_key,
    load_json,
    require_dir,
    require_file,
    warn_problem,
)
from pipeline.adapters.mevis import span_of, video_frames
from pipeline.records import GTObject, QueryRecord, VideoRecord, frame_file_times

DEFAULT_FPS = 30.0
NO_MASK_SPLITS = ("valid", "test")


def _read_palette_png(path: Path) -> np.ndarray:
    """(H, W) integer object ids from a palette (or greyscale) PNG."""
    from PIL import Image

    if not path.is_file():
        raise Skip(f"mask file {path} is missing")
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise Skip(f"mask {path} has mode {img.mode}, expected a palette PNG")
        return np.asarray(img)


def _object_tracks(mask_dir: Path, frame_files, times, obj_ids: set[int]):
    """{obj: (times, xyxy, counts)} from one pass over the video's mask PNGs; and (h, w)."""
    from pipeline.geometry import mask_to_rle, mask_to_xyxy

    acc = {o: ([], [], []) for o in obj_ids}
    size = ()
    for name, t in zip(frame_files, times):
        ids = _read_palette_png(mask_dir / (Path(name).stem + ".png"))
        size = size or ids.shape[:2]
        for o in obj_ids:
            m = ids == o
            box = mask_to_xyxy(m)
            if box is None:
                continue
            acc[o][0].append(t)
            acc[o][1].append(box)
            acc[o][2].append(mask_to_rle(m))
    return acc, size


def _video(vid, entry, split_dir, has_masks, fps, dataset, split, report) -> VideoRecord:
    jpeg_dir = split_dir / "JPEGImages" / vid
    frame_files = video_frames(entry, jpeg_dir)
    times = frame_file_times(frame_files, fps)
    expressions = get_key(entry, "expressions", dict)
    parsed = []
    for exp_id, exp in expressions.items():
        try:
            text = get_key(exp, "exp", str)
            obj = None
            if has_masks:
                raw = get_key(exp, "obj_id")
                try:
                    obj = int(raw)
                except (TypeError, ValueError) as exc:
                    raise Skip(f"obj_id must be an integer string, got {raw!r}") from exc
            parsed.append((str(exp_id), text, obj))
        except Skip as exc:
            report(vid, str(exc), str(exp_id))
    tracks, size = {}, ()
    if has_masks:
        wanted = {obj for _, _, obj in parsed}
        tracks, size = _object_tracks(split_dir / "Annotations" / vid, frame_files, times, wanted)
    queries = []
    for exp_id, text, obj in parsed:
        if obj is None:
            queries.append(QueryRecord(exp_id, text, "referring", (times[0], times[-1])))
            continue
        t, boxes, counts = tracks[obj]
        gt = GTObject(obj, np.array(t), np.array(boxes).reshape(-1, 4), tuple(counts))
        span = span_of([np.array(t)])
        if span is None:
            report(vid, f"object {obj} is absent from every mask", exp_id)
            continue
        queries.append(QueryRecord(exp_id, text, "referring", span, (gt,)))
    if not queries:
        raise Skip("no usable query")
    h, w = size if size else (None, None)
    return VideoRecord(vid, dataset, split, jpeg_dir, fps, w, h, frame_files, tuple(queries))


def iter_videos(
    root: Path,
    split: str,
    *,
    fps: float | None = None,
    dataset: str = "refytvos",
    on_error: OnError | None = None,
    require_masks: bool | None = None,
) -> Iterator[VideoRecord]:
    """One :class:`VideoRecord` per Ref-YouTube-VOS video of ``split``.

    Args:
        fps: nominal rate of the frame numbers (default 30: names step by 5 at 30 fps).
        dataset: name written into the records.
        on_error: receives an :class:`AnnotationProblem` per skipped video or query.
        require_masks: fail if ``<split>/Annotations`` is missing (default: required
            unless the split is ``valid`` or ``test``).
    """
    root, report_to = Path(root), on_error or warn_problem
    fps = float(fps or DEFAULT_FPS)
    hint = (
        "Download Ref-YouTube-VOS (youtube-vos.org) and unpack it so that "
        f"{root}/{split}/JPEGImages/, {root}/{split}/Annotations/ and "
        f"{root}/meta_expressions/{split}/meta_expressions.json exist."
    )
    require_dir(root, "Ref-YouTube-VOS root", hint)
    split_dir = require_dir(root / split, f"Ref-YouTube-VOS split {split!r}", hint)
    require_dir(split_dir / "JPEGImages", "Ref-YouTube-VOS frames", hint)
    meta_path = require_file(
        [root / "meta_expressions" / split / "meta_expressions.json"],
        "Ref-YouTube-VOS expressions",
        hint,
    )
    has_masks = (split_dir / "Annotations").is_dir()
    if require_masks is None:
        require_masks = split not in NO_MASK_SPLITS
    if require_masks and not has_masks:
        raise DatasetNotFoundError(
            f"Ref-YouTube-VOS masks not found: expected {split_dir / 'Annotations'}. {hint}"
        )
    videos = load_json(meta_path, dict).get("videos")
    if not isinstance(videos, dict):
        raise AnnotationError(f"{meta_path}: missing or malformed top-level key 'videos'")

    def report(vid: str, reason: str, query_id: str | None = None) -> None:
        report_to(AnnotationProblem(meta_path, vid, reason, query_id))

    def records() -> Iterator[VideoRecord]:
        for vid, entry in videos.items():
            try:
                record = _video(str(vid), entry, split_dir, has_masks, fps, dataset, split, report)
            except AnnotationError:  # a strict on_error
                raise
            except (Skip, ValueError) as exc:  # ValueError: a record failed its own checks
                report(str(vid), str(exc))
                continue
            yield record

    return records()
