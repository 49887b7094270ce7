"""MeViS: JPEG folders, referring expressions with one or several targets, COCO RLE masks.

Layout (``henghuiding/MeViS``)::

    <root>/<split>/JPEGImages/<vid>/<00000>.jpg
    <root>/<split>/meta_expressions.json   {"videos": {vid: {"frames": [...],
                                             "expressions": {exp_id: {"exp", "obj_id": [..],
                                                                       "anno_id": [..]}}}}}
    <root>/<split>/mask_dict.json          {str(anno_id): [RLE or null, one per frame]}

``obj_id`` and ``anno_id`` are parallel lists: an expression's targets are one
:class:`GTObject` per ``anno_id`` (``object`` = its ``obj_id``), observed only on frames
whose mask is present and non-empty (``null`` and empty masks mean absent). Boxes are
the masks' tight boxes (``x2``/``y2`` exclusive, as :func:`pipeline.geometry.mask_to_xyxy`),
read from the RLE without decoding it. ``span_s`` runs from the earliest to the latest
frame time at which any target is present. The ``valid`` split has no ``mask_dict.json``:
its queries carry no ground truth and span the whole video (first to last frame time).

``mask_dict.json`` is never loaded whole (the train file is gigabytes): masks are looked up
through a :class:`~pipeline.adapters.mevis_masks.MaskStore`, an on-disk index built by one
streaming pass on first use and reused while the file is unchanged.

Frame times are ``frame number / fps`` with the dataset's nominal rate (6 for MeViS).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from pipeline.adapters.base import (
    AnnotationError,
    AnnotationProblem,
    DatasetNotFoundError,
    OnError,
    Skip,
    get_key,
    list_frame_files,
    load_json,
    require_dir,
    require_file,
    warn_problem,
)
from pipeline.adapters.mevis_masks import MaskStore
from pipeline.records import GTObject, QueryRecord, VideoRecord, frame_file_times

DEFAULT_FPS = 6.0
NO_MASK_SPLITS = ("valid",)


def video_frames(entry: dict, jpeg_dir: Path) -> tuple[str, ...]:
    """Frame file names of one video: the annotation's ``frames`` (+ ``.jpg``), else the folder."""
    frames = entry.get("frames") if isinstance(entry, dict) else None
    if frames is None:
        if not jpeg_dir.is_dir():
            raise Skip(f"no 'frames' list and no frame folder {jpeg_dir}")
        files = list_frame_files(jpeg_dir)
    else:
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise Skip("'frames' must be a list of frame names")
        files = tuple(f if Path(f).suffix else f + ".jpg" for f in frames)
    if not files:
        raise Skip("the video has no frames")
    return tuple(files)


def as_id_list(value, key: str) -> list[int]:
    """MeViS ids come as lists (sometimes a bare int or numeric string): -> list of ints."""
    items = value if isinstance(value, list) else [value]
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise Skip(f"{key!r} must hold integer ids, got {value!r}") from exc


def span_of(times_s: list[np.ndarray]) -> tuple[float, float] | None:
    """(earliest, latest) present time over all targets' (float64) times; None if none is
    ever present. (GTObject stores float32; the span keeps the exact frame times.)"""
    times = [t for t in times_s if len(t)]
    if not times:
        return None
    return float(min(t[0] for t in times)), float(max(t[-1] for t in times))


def _rle_track(rles, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str], tuple]:
    """Per-frame RLEs -> (times (N,), xyxy (N, 4), counts strings, (h, w) or ())."""
    from pycocotools import mask as mask_utils

    if not isinstance(rles, list) or len(rles) != len(times_s):
        n = len(rles) if isinstance(rles, list) else type(rles).__name__
        raise Skip(f"mask list has {n} entries for {len(times_s)} frames")
    keep_t, boxes, counts, size = [], [], [], ()
    for t, rle in zip(times_s, rles):
        if rle is None:
            continue
        try:
            h, w = (int(v) for v in rle["size"])
            c = rle["counts"]
            if isinstance(c, list):  # uncompressed RLE -> compressed
                coded = mask_utils.frPyObjects({"size": [h, w], "counts": c}, h, w)
            else:
                coded = {"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c}
            area = float(mask_utils.area(coded))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(coded))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Skip(f"malformed RLE ({exc})") from exc
        size = size or (h, w)
        if area == 0:
            continue
        keep_t.append(t)
        boxes.append([x, y, x + bw, y + bh])  # toBbox's w/h are pixel counts: x2 exclusive
        c_out = coded["counts"]
        counts.append(c_out.decode("ascii") if isinstance(c_out, bytes) else c_out)
    return np.array(keep_t), np.array(boxes, dtype=np.float32).reshape(-1, 4), counts, size


def _video(
    vid: str,
    entry,
    split_dir: Path,
    masks: Mapping[str, list | None] | None,
    fps: float,
    dataset: str,
    split: str,
    report,
) -> VideoRecord:
    jpeg_dir = split_dir / "JPEGImages" / vid
    frame_files = video_frames(entry, jpeg_dir)
    times = frame_file_times(frame_files, fps)
    expressions = get_key(entry, "expressions", dict)
    cache: dict[int, tuple] = {}
    size: tuple = ()
    queries = []
    for exp_id, exp in expressions.items():
        try:
            text = get_key(exp, "exp", str)
            if masks is None:
                queries.append(QueryRecord(str(exp_id), text, "referring", (times[0], times[-1])))
                continue
            anno_ids = as_id_list(get_key(exp, "anno_id"), "anno_id")
            obj_ids = as_id_list(get_key(exp, "obj_id"), "obj_id")
            if len(anno_ids) != len(obj_ids) or not anno_ids:
                raise Skip(
                    f"anno_id {anno_ids} and obj_id {obj_ids} must be equal-length, non-empty"
                )
            objects, obj_times = [], []
            for anno, obj in zip(anno_ids, obj_ids):
                if anno not in cache:
                    if str(anno) not in masks:
                        raise Skip(f"anno_id {anno} not in mask_dict.json")
                    cache[anno] = _rle_track(masks[str(anno)], times)
                t, xyxy, counts, hw = cache[anno]
                size = size or hw
                objects.append(GTObject(obj, t, xyxy, tuple(counts)))
                obj_times.append(t)
            span = span_of(obj_times)
            if span is None:
                raise Skip("no target is present in any frame")
            queries.append(QueryRecord(str(exp_id), text, "referring", span, tuple(objects)))
        except (Skip, ValueError) as exc:
            report(vid, str(exc), str(exp_id))
    if not queries:
        raise Skip("no usable query")
    h, w = size if size else (None, None)
    return VideoRecord(vid, dataset, split, jpeg_dir, fps, w, h, frame_files, tuple(queries))


def iter_videos(
    root: Path,
    split: str,
    *,
    fps: float | None = None,
    dataset: str = "mevis",
    on_error: OnError | None = None,
    require_masks: bool | None = None,
) -> Iterator[VideoRecord]:
    """One :class:`VideoRecord` per MeViS video of ``split``.

    Args:
        fps: nominal frame rate (default 6, MeViS's).
        dataset: name written into the records.
        on_error: receives an :class:`AnnotationProblem` per skipped video or query.
        require_masks: fail if ``mask_dict.json`` is missing (default: required unless
            the split is ``valid``).
    """
    root, report_to = Path(root), on_error or warn_problem
    fps = float(fps or DEFAULT_FPS)
    hint = (
        "Download MeViS (github.com/henghuiding/MeViS) and unpack it so that "
        f"{root}/{split}/JPEGImages/<video>/ and {root}/{split}/meta_expressions.json exist."
    )
    require_dir(root, "MeViS root", hint)
    split_dir = require_dir(root / split, f"MeViS split {split!r}", hint)
    require_dir(split_dir / "JPEGImages", "MeViS frames", hint)
    meta_path = require_file([split_dir / "meta_expressions.json"], "MeViS expressions", hint)
    mask_path = split_dir / "mask_dict.json"
    if require_masks is None:
        require_masks = split not in NO_MASK_SPLITS
    if require_masks and not mask_path.is_file():
        raise DatasetNotFoundError(f"MeViS masks not found: expected {mask_path}. {hint}")
    videos = load_json(meta_path, dict).get("videos")
    if not isinstance(videos, dict):
        raise AnnotationError(f"{meta_path}: missing or malformed top-level key 'videos'")
    masks = None
    if mask_path.is_file():
        masks = MaskStore(mask_path)
        masks.ensure_index()  # a malformed file fails here, not at the first video

    def report(vid: str, reason: str, query_id: str | None = None) -> None:
        report_to(AnnotationProblem(meta_path, vid, reason, query_id))

    def records() -> Iterator[VideoRecord]:
        for vid, entry in videos.items():
            try:
                record = _video(str(vid), entry, split_dir, masks, fps, dataset, split, report)
            except AnnotationError:  # a strict on_error
                raise
            except (Skip, ValueError) as exc:  # ValueError: a record failed its own checks
                report(str(vid), str(exc))
                continue
            yield record

    return records()
