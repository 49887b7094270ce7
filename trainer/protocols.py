"""Scoring answers under each evaluation protocol, the samples each protocol averages, and
the per-protocol summaries and tables.

Two protocols, side by side (docs/DESIGN.md "Metrics" says where each convention comes from):

``official``
    The TubeDETR/STCAT/CG-STVG evaluators: :func:`~trainer.metrics.tube_viou` on the
    evaluated native frames, half-open spans, a frame without a predicted box scores 0,
    vIoU@R counts vIoU > R, and every sample counts (one that fails to evaluate scores 0).
``stvg_r1``
    The STVG-R1 release's evaluator: frames ``int(start·fps) .. int(end·fps)`` with both ends
    counted, no score when the two spans share fewer than two such frames, a fallback box
    where the predicted ID is missing from a frame (:func:`fallback_boxes`), vIoU@R counts
    vIoU >= R, and samples that fail to evaluate are left out of the mean. The frame rate is
    the video's native one (25 when a shard does not know it, the release's default).

tIoU, ID accuracy and J&F are the same under both (the STVG-R1 evaluator has no J&F; it is
reported with the official rows only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.geometry import box_area, box_iou, nearest_index, paired_box_iou
from pipeline.records import QueryRecord
from pipeline.shards import ShardVideo
from trainer.metrics import gt_tube, j_and_f, sample_metrics, summarize, valid_span

PROTOCOLS = ("official", "stvg_r1")
STVG_R1_DEFAULT_FPS = 25.0  # the release's rate when an annotation carries none
MASK_KEYS = ("J", "F", "J&F")


# ------------------------------------------------------------------ the STVG-R1 vIoU


def _largest(cands: np.ndarray) -> np.ndarray | None:
    """(K, 4) -> the box of largest area, or None when K = 0."""
    return cands[int(np.argmax(box_area(cands)))] if len(cands) else None


def _best_overlap(cands: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """The candidate of highest IoU with ``ref`` when that IoU is > 0, else None."""
    if not len(cands):
        return None
    iou = box_iou(cands, ref[None])[:, 0]  # (K,)
    return cands[int(np.argmax(iou))] if iou.max() > 0 else None


def fallback_boxes(id_boxes: list, cands: list[np.ndarray]) -> list:
    """The STVG-R1 evaluator's predicted box per frame of the overlap, filling the frames
    where the predicted ID is missing.

    ``id_boxes[j]`` is the predicted ID's box at frame j (None when missing); ``cands[j]``
    (K_j, 4) every track's box there. Where the ID is missing: the candidate of highest
    IoU (> 0) with the ID's last box, else the frame's largest box; before the ID's first
    frame, the candidate closest to the ID's box at the nearest frame that has it (that box
    itself when none overlaps); a frame without candidates keeps the ID's last box.
    """
    with_id = [j for j, b in enumerate(id_boxes) if b is not None]
    out, current, last_valid = [], None, None
    for j, (box, here) in enumerate(zip(id_boxes, cands)):
        if box is not None:
            current, last_valid = box, j
            out.append(box)
            continue
        pred = None
        if current is not None:
            pred = _best_overlap(here, current)
            if pred is None:
                pred = _largest(here)
            if pred is None and last_valid is not None:
                pred = current = id_boxes[last_valid]
        elif with_id:
            near = min(with_id, key=lambda k: abs(k - j))
            ref = id_boxes[near]
            best = _best_overlap(here, ref)
            pred = current = ref if best is None else best
            last_valid = max((k for k in with_id if k <= j), default=None)
        if pred is None:
            pred = _largest(here)
        out.append(pred)
    return out


def stvg_r1_viou(
    video: ShardVideo,
    query: QueryRecord,
    ids: Sequence[int],
    span_s: tuple[float, float] | None,
    *,
    max_gap_s: float,
) -> float:
    """vIoU as the STVG-R1 release computes it (see the module docstring)."""
    pred, gt = valid_span(span_s), valid_span(query.span_s)
    if pred is None or gt is None:
        return 0.0
    fps = float(video.native_fps) if video.native_fps and video.native_fps > 0 else None
    fps = fps or STVG_R1_DEFAULT_FPS
    (ps, pe), (gs, ge) = ((int(a * fps), int(b * fps)) for a, b in (pred, gt))
    lo, hi = max(ps, gs), min(pe, ge)
    n_union = max(pe, ge) - min(ps, gs) + 1
    if lo >= hi:
        return 0.0
    times = np.arange(lo, hi + 1, dtype=np.float64) / fps  # (F,) both ends counted
    boxes = [t.boxes_at(times, max_gap_s).astype(np.float64) for t in video.tracks]  # K x (F, 4)
    wanted = {int(i) for i in ids}
    id_boxes, cands = [], []
    for j in range(len(times)):
        here = [(t.id, b[j]) for t, b in zip(video.tracks, boxes) if np.isfinite(b[j]).all()]
        mine = [b for i, b in here if i in wanted]
        id_boxes.append(
            None if not mine else np.array([*np.min(mine, 0)[:2], *np.max(mine, 0)[2:]])
        )
        cands.append(np.array([b for _, b in here]).reshape(-1, 4))
    pred_boxes = fallback_boxes(id_boxes, cands)
    gt_boxes = _gt_at(query, times, 0.5 / fps)
    pairs = [(p, g) for p, g in zip(pred_boxes, gt_boxes) if p is not None and g is not None]
    if not pairs:
        return 0.0
    a, b = np.stack([p for p, _ in pairs]), np.stack([g for _, g in pairs])  # (P, 4) each
    return float(paired_box_iou(a, b).sum() / n_union)


def _gt_at(query: QueryRecord, times: np.ndarray, tol: float) -> list:
    """The ground-truth (union) box annotated within ``tol`` of each time, else None."""
    tube = gt_tube(query)
    keys = np.array(sorted(tube), dtype=np.float64)
    picks = nearest_index(keys, times, tol)
    return [None if k < 0 else np.asarray(tube[float(keys[k])], np.float64) for k in picks]


# ------------------------------------------------------------------ masks: J&F


def has_masks(video: ShardVideo, query: QueryRecord) -> bool:
    """True when the query's ground truth and every track carry masks (J&F can be scored)."""
    return (
        bool(query.gt)
        and all(g.masks_rle is not None for g in query.gt)
        and bool(video.tracks)
        and all(t.masks_rle is not None for t in video.tracks)
    )


def _mask_at(times_s, masks_rle, t: float, tol: float, hw) -> np.ndarray:
    """(H, W) bool: the mask observed nearest to ``t`` (within ``tol``), else empty."""
    from pipeline.geometry import nearest_index, rle_to_mask

    i = int(nearest_index(times_s, np.array([t]), tol)[0])
    if i < 0 or masks_rle[i] is None:
        return np.zeros(hw, dtype=bool)
    return rle_to_mask(masks_rle[i], *hw)


def track_mask_at(track, t: float, max_gap_s: float, hw) -> np.ndarray:
    """A track's mask at ``t``: empty wherever its box is absent (outside its life or in a
    gap longer than ``max_gap_s``, as :meth:`Track.boxes_at` decides, so J&F and vIoU agree
    on when an ID is present); otherwise the mask of its nearest observation."""
    if np.isnan(track.boxes_at(np.array([t]), max_gap_s)).any():
        return np.zeros(hw, dtype=bool)
    return _mask_at(track.times_s, track.masks_rle, t, max_gap_s, hw)


def mask_metrics(video, query, ids, span_s, *, max_gap_s: float) -> dict:
    """J&F at the stored frame times: union of the predicted IDs' track masks inside the
    predicted span against the union of the ground-truth masks."""
    hw = (video.height, video.width)
    gt_tol = 0.5 / max(video.native_fps, 1e-6)
    preds, gts = [], []
    chosen = [t for t in video.tracks if t.id in {int(i) for i in ids}]
    for t in video.frame_times_s.tolist():
        gt = np.zeros(hw, dtype=bool)
        for g in query.gt:
            gt |= _mask_at(g.times_s, g.masks_rle, t, gt_tol, hw)
        pred = np.zeros(hw, dtype=bool)
        if span_s is not None and span_s[0] <= t <= span_s[1]:
            for tr in chosen:
                pred |= track_mask_at(tr, t, max_gap_s, hw)
        preds.append(pred)
        gts.append(gt)
    return dict(j_and_f(preds, gts))


# ------------------------------------------------------------------ one answer, all protocols


def check_protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(protocols))
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise ValueError(f"unknown protocol(s) {bad or names}; choose from {PROTOCOLS}")
    return names


def score_sample(
    video: ShardVideo,
    query: QueryRecord,
    ids: Sequence[int],
    span_s: tuple[float, float] | None,
    *,
    max_gap_s: float,
    protocols: Sequence[str] = ("official",),
) -> dict:
    """tIoU, official vIoU, ID correctness (and J&F when masks are stored) for one answer;
    ``viou_stvg_r1`` too when ``protocols`` names it."""
    result = dict(sample_metrics(video, query, ids, span_s, max_gap_s=max_gap_s))
    if has_masks(video, query):
        result.update(mask_metrics(video, query, ids, span_s, max_gap_s=max_gap_s))
    if "stvg_r1" in check_protocols(protocols):
        result["viou_stvg_r1"] = stvg_r1_viou(video, query, ids, span_s, max_gap_s=max_gap_s)
    return result


def failed_sample(error: str, protocols: Sequence[str] = ("official",)) -> dict:
    """The scores of a sample that could not be evaluated: zeros, and the reason."""
    row = {"tiou": 0.0, "viou": 0.0, "id_correct": False, "id_score": 0.0, "error": error}
    if "stvg_r1" in protocols:
        row["viou_stvg_r1"] = 0.0
    return row


def score_answers(items, answers, *, max_gap_s: float, protocols: Sequence[str]) -> list[dict]:
    """One result row per annotated item: its scores under ``protocols`` and its identity. An
    answer that failed (its ``error`` is set) or whose scoring raised gets
    :func:`~trainer.protocols.failed_sample` with the reason."""
    results = []
    for (video, query), (ids, span, text, error) in zip(items, answers, strict=True):
        if not query.gt:
            continue
        try:
            r = None if error else score_sample(video, query, ids, span, max_gap_s=max_gap_s,
                                                protocols=protocols)  # fmt: skip
        except Exception as exc:  # recorded in the row and counted, never silently dropped
            error = f"scoring failed: {exc!r}"
        if error:
            r = failed_sample(error, protocols)
            if has_masks(video, query):  # J&F counts it as 0 too
                r.update({k: 0.0 for k in MASK_KEYS})
        r.update(
            video_id=video.video_id, query_id=query.query_id, dataset=video.dataset,
            qtype=query.qtype, pred_ids=list(ids),
            pred_span_s=None if span is None else [float(span[0]), float(span[1])],
            gt_ids=list(query.target_ids), gt_span_s=list(query.span_s),
        )  # fmt: skip
        if text is not None:
            r["completion"] = text
        results.append(r)
    return results


def protocol_rows(rows: Sequence[dict], protocol: str) -> list[dict]:
    """The samples a protocol averages, each with that protocol's ``viou``: every row for
    ``official`` (a failed one scores 0); for ``stvg_r1`` the rows that did not fail, with
    ``viou_stvg_r1`` as their vIoU and no J&F."""
    if protocol == "official":
        return list(rows)
    if protocol == "stvg_r1":
        return [
            {k: v for k, v in {**r, "viou": r["viou_stvg_r1"]}.items() if k not in MASK_KEYS}
            for r in rows
            if not r.get("error")
        ]
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def thresholds_inclusive(protocol: str) -> bool:
    """Whether vIoU@R counts vIoU >= R (STVG-R1) rather than > R (the official evaluators)."""
    return protocol == "stvg_r1"


# ------------------------------------------------------------------ summaries


def summarize_groups(results: Sequence[dict], *, inclusive: bool = False) -> dict:
    """Overall metrics plus breakdowns by dataset and by query type (``inclusive``: vIoU@R
    counts vIoU >= R, see :func:`trainer.metrics.summarize`)."""

    def with_masks(rows):
        out = dict(summarize(rows, inclusive=inclusive))
        jf = [r for r in rows if "J&F" in r]
        if jf:
            for k in ("J", "F", "J&F"):
                out[k] = 100.0 * float(np.mean([r[k] for r in jf]))
        return out

    summary = {"overall": with_masks(results)}
    for key in ("dataset", "qtype"):
        groups = defaultdict(list)
        for r in results:
            groups[r[key]].append(r)
        if len(groups) > 1 or key == "qtype":
            summary[f"by_{key}"] = {k: with_masks(v) for k, v in sorted(groups.items())}
    return summary


def protocol_summaries(results: Sequence[dict], protocols: Sequence[str]) -> dict[str, dict]:
    """:func:`summarize_groups` of each protocol's samples (see
    :func:`trainer.protocols.protocol_rows`), with ``n_left_out`` (failed samples the
    protocol leaves out of the mean) and its vIoU@R rule."""
    out = {}
    for name in protocols:
        rows = protocol_rows(results, name)
        inclusive = thresholds_inclusive(name)
        s = summarize_groups(rows, inclusive=inclusive) if rows else {"overall": summarize([])}
        s.update(
            n_left_out=len(results) - len(rows), viou_at_r="vIoU >= R" if inclusive else "vIoU > R"
        )
        out[name] = s
    return out


def markdown_table(summaries: dict[str, dict]) -> str:
    """One row per model/baseline and protocol: the headline metrics in percent. The
    ``official`` rows come first; other protocols' rows follow, labelled
    ``<model> (<protocol>)``."""
    rows = []
    for protocol in PROTOCOLS:
        for name, s in summaries.items():
            ps = s.get("protocols", {"official": s}).get(protocol)
            if ps is not None:
                label = name if protocol == "official" else f"{name} ({protocol})"
                rows.append((label, ps["overall"]))
    cols = ["m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "id_acc", "J&F", "n"]
    present = [c for c in cols if any(c in o for _, o in rows)]
    lines = ["| model | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for label, o in rows:
        cells = [
            ("" if c not in o else (str(int(o[c])) if c == "n" else f"{o[c]:.1f}")) for c in present
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
