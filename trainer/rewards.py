"""The task reward (docs/DESIGN.md "reward"): R = w_format·format + w_time·tIoU + w_id·id (+ w_viou·vIoU).

Every term is a pure function of a parsed :class:`~trainer.answer.Answer` and plain
records, in [0, 1]; anything unparsable scores 0 and nothing here raises on a
completion's content. :class:`TaskReward` applies them to a batch of completions and
returns the weighted total together with each raw term for logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.records import QueryRecord, Track
from pipeline.shards import ShardVideo
from trainer.answer import Answer, parse_answer
from trainer.metrics import DEFAULT_MAX_GAP_S, id_score, sample_metrics, temporal_iou
from trainer.prompt import get_template

REWARD_TERMS = ("format", "time", "id", "viou")
DEFAULT_WEIGHTS = {"format": 1.0, "time": 1.0, "id": 1.0, "viou": 0.0}


def format_reward(answer: Answer) -> float:
    """1 when the completion follows the template exactly (see ``Answer.format_ok``)."""
    return 1.0 if answer.format_ok else 0.0


def temporal_reward(answer: Answer, query: QueryRecord) -> float:
    """tIoU of the predicted span with the ground-truth span (0 without a valid span)."""
    return temporal_iou(answer.span_s, query.span_s)


def present_in_span(track: Track | None, query: QueryRecord, *, max_gap_s: float) -> bool:
    """Whether ``track`` has a box at some ground-truth time inside the query's span
    (or at the span's ends), interpolating across gaps up to ``max_gap_s``."""
    if track is None:
        return False
    start, end = query.span_s
    times = [start, end]
    for obj in query.gt:
        t = np.asarray(obj.times_s, dtype=np.float64)
        times.extend(t[(t >= start) & (t <= end)].tolist())
    boxes = track.boxes_at(np.asarray(times, dtype=np.float64), max_gap_s)  # (M, 4), NaN = absent
    return bool(np.isfinite(boxes).all(axis=1).any())


def id_reward(
    answer: Answer,
    query: QueryRecord,
    *,
    tracks: Sequence[Track] | None = None,
    require_in_span: bool = False,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> float:
    """1 for the exact ID on single-target queries, Jaccard of ID sets on multi-target ones.

    With ``require_in_span`` (the paper's definition) a predicted ID only counts as
    correct when its track is present inside the ground-truth span; it still counts in
    the union, so an absent ID lowers the score. Queries without matched target IDs
    score 0 (they stay in the batch: the term is then uninformative, not dropped).
    """
    if not answer.ids or not query.target_ids:
        return 0.0
    if not require_in_span:
        return id_score(answer.ids, query.target_ids)
    if tracks is None:
        raise ValueError("id_reward(require_in_span=True) needs the video's tracks (tracks=...)")
    by_id = {t.id: t for t in tracks}
    pred, target = set(answer.ids), set(query.target_ids)
    hits = {i for i in pred & target if present_in_span(by_id.get(i), query, max_gap_s=max_gap_s)}
    if len(target) == 1:
        return float(pred == target and bool(hits))
    return len(hits) / len(pred | target)


def viou_reward(
    answer: Answer, video: ShardVideo, query: QueryRecord, *, max_gap_s: float = DEFAULT_MAX_GAP_S
) -> float:
    """The official vIoU (:func:`~trainer.metrics.tube_viou`) of the predicted IDs' tracks
    over the predicted span, on the evaluated frames that evaluation uses."""
    if not answer.ids or answer.span_s is None:
        return 0.0
    return sample_metrics(video, query, answer.ids, answer.span_s, max_gap_s=max_gap_s)["viou"]


class TaskReward:
    """Batch reward: ``reward(completions, videos, queries) -> (total (N,), {term: (N,)})``.

    Picklable (plain attributes), so it can be sent to data-loader or reward workers.

    Args:
        weights: any of ``format``, ``time``, ``id``, ``viou``; missing ones take the
            defaults 1/1/1/0 (the paper's weights).
        template: prompt template the completions answer; sets what the format term checks.
        require_in_span: the paper's ID definition (ID must be present in the GT span).
        use_viou: compute the vIoU term (also for logging when its weight is 0); by
            default it is computed only when its weight is non-zero.
        max_gap_s: longest track gap interpolated when reading boxes.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        template: str = "json",
        require_in_span: bool = False,
        use_viou: bool | None = None,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
    ):
        unknown = set(weights or {}) - set(REWARD_TERMS)
        if unknown:
            raise ValueError(
                f"unknown reward terms {sorted(unknown)}; valid terms: {list(REWARD_TERMS)}"
            )
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        bad = {k: v for k, v in self.weights.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"reward weights must be finite, got {bad}")
        get_template(template)  # validates the name
        self.template = template
        self.require_in_span = bool(require_in_span)
        self.use_viou = self.weights["viou"] != 0 if use_viou is None else bool(use_viou)
        if self.weights["viou"] != 0 and not self.use_viou:
            raise ValueError(f"reward weight viou={self.weights['viou']} but use_viou=False")
        self.max_gap_s = float(max_gap_s)

    def __repr__(self) -> str:
        return (
            f"TaskReward(weights={self.weights}, template={self.template!r}, "
            f"require_in_span={self.require_in_span}, use_viou={self.use_viou}, max_gap_s={self.max_gap_s})"
        )

    def score(self, completion: str, video: ShardVideo, query: QueryRecord) -> dict[str, float]:
        """Raw terms of one completion."""
        answer = parse_answer(completion, template=self.template)
        terms = {
            "format": format_reward(answer),
            "time": temporal_reward(answer, query),
            "id": id_reward(
                answer,
                query,
                tracks=video.tracks,
                require_in_span=self.require_in_span,
                max_gap_s=self.max_gap_s,
            ),
        }
        if self.use_viou:
            terms["viou"] = viou_reward(answer, video, query, max_gap_s=self.max_gap_s)
        return terms

    def __call__(
        self,
        completions: Sequence[str],
        videos: Sequence[ShardVideo],
        queries: Sequence[QueryRecord],
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not len(completions) == len(videos) == len(queries):
            raise ValueError(
                f"TaskReward: {len(completions)} completions, {len(videos)} videos, {len(queries)} queries"
            )
        names = [*REWARD_TERMS[:3], *(("viou",) if self.use_viou else ())]
        comps = {k: np.zeros(len(completions), dtype=np.float64) for k in names}
        for i, (c, v, q) in enumerate(zip(completions, videos, queries)):
            for k, val in self.score(c, v, q).items():
                comps[k][i] = val
        total = sum(self.weights[k] * comps[k] for k in names)
        return np.asarray(total, dtype=np.float64).reshape(len(completions)), comps
