"""VidSTG: VidOR videos, declarative captions and interrogative questions about one object.

Layout::

    <root>/annotations/{train,val,test}_annotations.json     (VidSTG, a list of records)
    <root>/vidor/annotation/{training,validation}/<dir>/<vid>.json   (VidOR boxes)
    <root>/video/<dir>/<vid>.mp4                             (VidOR videos)

A record: ``{"vid", "fps", "frame_count", "width", "height", "used_segment": {"begin_fid",
"end_fid"}, "temporal_gt": {"begin_fid", "end_fid"}, "subject/objects", "captions":
[{"description", "type", "target_id"}], "questions": [...]}``. Train and val videos come
from VidOR's training set, test videos from its validation set. A VidOR file's
``trajectories`` holds one list per frame of ``{"tid", "bbox": {"xmin", "ymin", "xmax",
"ymax"}}``.

Conventions (frame ids at the native ``fps``; ``end_fid`` is exclusive, as in VidOR's
relation instances, which VidSTG's segments come from):

* One :class:`VideoRecord` per (video, used segment), gathering every record that shares
  them; ``video_id = f"{vid}_{begin}_{end}"``; ``clip_start_s = begin / fps`` and
  ``clip_end_s = min(end, frame_count) / fps``, so decoding yields frames
  ``begin .. end - 1``.
* ``temporal_gt`` is clipped to the used segment (some ends run past it). ``span_s`` =
  ``((gt_begin - begin) / fps, (gt_end - begin) / fps)``: seconds from the clip start,
  end exclusive, so a span of n frames lasts n / fps.
* Boxes are the target's VidOR boxes on frames ``gt_begin .. gt_end - 1`` at times
  ``(fid - begin) / fps``; frames where VidOR has no box for it are left out.
* Captions -> ``declarative``, questions -> ``interrogative``; query ids are
  ``"<record index>-d<k>"`` / ``"<record index>-i<k>"`` (index in the annotation file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.adapters.base import (
    AnnotationError,
    AnnotationProblem,
    OnError,
    Skip,
    get_key,
    load_json,
    require_dir,
    require_file,
    warn_problem,
)
from pipeline.records import GTObject, QueryRecord, VideoRecord

Number = (int, float)
QUERY_KINDS = (("captions", "declarative", "d"), ("questions", "interrogative", "i"))


def vidor_subset(split: str) -> str:
    """VidOR annotation folder for a VidSTG split (test comes from VidOR validation)."""
    return "validation" if split == "test" else "training"


def _fid_pair(entry: dict, key: str) -> tuple[int, int]:
    seg = get_key(entry, key, dict)
    try:
        return int(seg["begin_fid"]), int(seg["end_fid"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Skip(f"{key!r} needs integer 'begin_fid' and 'end_fid' ({exc!r})") from exc


def _target_boxes(trajectories: list, tid: int, lo: int, hi: int) -> tuple[list[int], list]:
    """Frames in [lo, hi) where VidOR has a box for ``tid``, and those boxes (xyxy)."""
    fids, boxes = [], []
    for fid in range(lo, min(hi, len(trajectories))):
        for obj in trajectories[fid]:
            if obj.get("tid") == tid:
                b = obj["bbox"]
                fids.append(fid)
                boxes.append([b["xmin"], b["ymin"], b["xmax"], b["ymax"]])
                break
    return fids, boxes


def _queries(i: int, entry: dict, traj: list, begin: int, end: int, fps: float, report, vid_id):
    gt_b, gt_e = _fid_pair(entry, "temporal_gt")
    lo, hi = max(gt_b, begin), min(gt_e, end)
    if hi <= lo:
        raise Skip(f"temporal_gt [{gt_b}, {gt_e}) lies outside the used segment [{begin}, {end})")
    span = ((lo - begin) / fps, (hi - begin) / fps)
    out = []
    for key, qtype, tag in QUERY_KINDS:
        sentences = entry.get(key) or []
        if not isinstance(sentences, list):
            raise Skip(f"{key!r} must be a list")
        for k, sent in enumerate(sentences):
            qid = f"{i}-{tag}{k}"
            try:
                text = get_key(sent, "description", str)
                tid = int(get_key(sent, "target_id", (int, str)))
                fids, boxes = _target_boxes(traj, tid, lo, hi)
                if not fids:
                    raise Skip(f"target {tid} has no VidOR box in frames [{lo}, {hi})")
                times = (np.array(fids) - begin) / fps
                gt = GTObject(tid, times, np.array(boxes, dtype=np.float32))
                out.append(QueryRecord(qid, text, qtype, span, (gt,)))
            except (Skip, ValueError, KeyError, TypeError) as exc:
                report(vid_id, f"{type(exc).__name__}: {exc}", qid)
    return out


class _VidorFiles:
    """VidOR box files by video id, keeping the last one parsed (a video's segments are
    visited one after another)."""

    def __init__(self, box_dir: Path):
        self.box_dir = box_dir
        self.paths = {p.stem: p for p in sorted(box_dir.glob("*/*.json"))}
        self._last: tuple[Path, dict] | None = None

    def load(self, vid: str) -> tuple[Path, dict]:
        path = self.paths.get(vid)
        if path is None:
            raise Skip(f"no VidOR box file {vid}.json under {self.box_dir}/<dir>/")
        if self._last is None or self._last[0] != path:
            try:
                self._last = (path, load_json(path, dict))
            except AnnotationError as exc:
                raise Skip(str(exc)) from exc
        return self._last


def _video(vid, begin, end, entries, root, vidor_files, dataset, split, report):
    video_id = f"{vid}_{begin}_{end}"
    first = entries[0][1]
    fps = float(get_key(first, "fps", Number))
    frame_count = first.get("frame_count")
    end_c = min(end, int(frame_count)) if isinstance(frame_count, int) and frame_count > 0 else end
    if end_c <= begin:
        raise Skip(f"empty used segment [{begin}, {end}) (frame_count {frame_count})")
    box_path, vidor = vidor_files.load(vid)
    traj = get_key(vidor, "trajectories", list)
    rel = first.get("video_path") or vidor.get("video_path") or f"{box_path.parent.name}/{vid}.mp4"
    queries = []
    for i, entry in entries:
        try:
            queries += _queries(i, entry, traj, begin, end_c, fps, report, video_id)
        except Skip as exc:
            report(video_id, str(exc), str(i))
    if not queries:
        raise Skip("no usable query")
    w, h = first.get("width"), first.get("height")
    return VideoRecord(
        video_id, dataset, split, root / "video" / rel, fps,
        int(w) if w else None, int(h) if h else None,
        queries=tuple(queries), clip_start_s=begin / fps, clip_end_s=end_c / fps,
    )  # fmt: skip


def iter_videos(
    root: Path,
    split: str,
    *,
    fps: float | None = None,
    dataset: str = "vidstg",
    on_error: OnError | None = None,
) -> Iterator[VideoRecord]:
    """One :class:`VideoRecord` per (video, used segment) of ``split`` (train/val/test).

    Files are checked at once; videos are read lazily. ``fps`` is ignored (each record
    carries its native rate). ``on_error`` receives an :class:`AnnotationProblem` per
    skipped video or query.
    """
    root, report_to = Path(root), on_error or warn_problem
    hint = (
        "Download the VidSTG annotations (github.com/Guaranteer/VidSTG-Dataset) into "
        f"{root}/annotations/ and VidOR (xdshang.github.io/docs/vidor.html): its videos "
        f"under {root}/video/<dir>/<vid>.mp4 and its annotations under "
        f"{root}/vidor/annotation/{{training,validation}}/<dir>/<vid>.json."
    )
    require_dir(root, "VidSTG root", hint)
    anno_path = require_file(
        [root / "annotations" / f"{split}_annotations.json"], "VidSTG annotations", hint
    )
    box_dir = require_dir(root / "vidor" / "annotation" / vidor_subset(split), "VidOR boxes", hint)
    require_dir(root / "video", "VidOR videos", hint)
    data = load_json(anno_path, list)
    vidor_files = _VidorFiles(box_dir)

    def report(vid: str, reason: str, query_id: str | None = None) -> None:
        report_to(AnnotationProblem(anno_path, vid, reason, query_id))

    groups: dict[str, dict[tuple[int, int], list]] = {}  # vid -> segment -> [(index, entry)]
    for i, entry in enumerate(data):
        try:
            vid = str(get_key(entry, "vid", (str, int)))
            segment = _fid_pair(entry, "used_segment")
        except Skip as exc:
            vid = str(entry.get("vid", f"#{i}")) if isinstance(entry, dict) else f"#{i}"
            report(vid, str(exc), str(i))
            continue
        groups.setdefault(vid, {}).setdefault(segment, []).append((i, entry))

    def records() -> Iterator[VideoRecord]:
        for vid, segments in groups.items():
            for (begin, end), entries in segments.items():
                try:
                    record = _video(
                        vid, begin, end, entries, root, vidor_files, dataset, split, report
                    )
                except AnnotationError:  # a strict on_error
                    raise
                except (Skip, ValueError) as exc:
                    report(f"{vid}_{begin}_{end}", str(exc))
                    continue
                yield record

    return records()
