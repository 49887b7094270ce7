"""Offline tracklet association: one identity per object across occlusions and exits.

The online tracker (ByteTrack) keeps a lost track for about a second and has no
appearance cue, so an object hidden longer, or one that leaves and comes back, returns
with a new ID. Preprocessing is offline, so after tracking this pass looks at the whole
clip and links tracklets that follow one another in time into one identity when they
are the same object: same class, a gap of at most ``max_gap_s``, similar appearance
(the detector's own features, :class:`pipeline.detect.Detector`), and a plausible place
of return (near where it was last seen or where its motion carries it, or leaving then
re-entering through the frame border). All links are chosen at once by a minimum-cost
assignment over the clip (Jonker-Volgenant, the ``lap`` package Ultralytics' trackers
use), each tracklet having at most one successor and one predecessor.

It never links two tracklets that are visible at the same time: a candidate successor
must start after its predecessor's last frame, so an identity is always a sequence of
tracklets disjoint in time (checked again when they are joined,
:func:`pipeline.tracklets.concat`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.tracklets import RawTrack

_INFEASIBLE = 1e6


@dataclass(frozen=True)
class AssociationConfig:
    """When two tracklets are one object.

    Attributes:
        max_gap_s: longest time between one tracklet's end and the next one's start.
        min_similarity: least cosine similarity of the two tracklets' mean appearance
            embeddings (not checked when either has none).
        max_distance: how far (in box diagonals of the earlier tracklet) from its last
            position, or from where its velocity carries it, the next one may start,
            per second of gap plus one (not checked for a leave-then-re-enter pair).
        max_cost: a link costs (1 - similarity) + 0.5 * distance / allowed distance +
            0.2 * gap / ``max_gap_s``; links costing more are never made.
    """

    max_gap_s: float = 8.0
    min_similarity: float = 0.6
    max_distance: float = 1.5
    max_cost: float = 0.8

    def __post_init__(self):
        if not (self.max_gap_s > 0 and self.max_distance > 0 and self.max_cost > 0):
            raise ValueError(
                f"max_gap_s, max_distance and max_cost must be > 0, got {self.max_gap_s}, "
                f"{self.max_distance}, {self.max_cost}"
            )
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")


@dataclass
class _Ends:
    """What association needs of a tracklet: class, ends, motion, look."""

    cls: str
    t0: float
    t1: float
    first: np.ndarray
    last: np.ndarray
    velocity_end: np.ndarray  # (2,) px/s of the centre over the last frames
    entered: bool
    exited: bool
    embedding: np.ndarray | None


def _centre(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], np.float64)


def _velocity(times: list[float], boxes: list[np.ndarray], n: int = 5) -> np.ndarray:
    t = np.asarray(times[-n:], np.float64)
    if len(t) < 2 or not np.ptp(t) > 0:
        return np.zeros(2)
    c = np.stack([_centre(b) for b in boxes[-n:]])
    return np.polyfit(t - t[-1], c, 1)[0]


def _on_border(b: np.ndarray, wh: tuple[int, int] | None) -> bool:
    if wh is None:
        return False
    margin = max(1.0, 0.01 * max(wh))
    return bool(
        b[0] <= margin or b[1] <= margin or b[2] >= wh[0] - margin or b[3] >= wh[1] - margin
    )


def _ends(r: RawTrack, wh: tuple[int, int] | None) -> _Ends:
    return _Ends(
        cls=r.class_name,
        t0=r.times_s[0],
        t1=r.times_s[-1],
        first=np.asarray(r.xyxy[0], np.float64),
        last=np.asarray(r.xyxy[-1], np.float64),
        velocity_end=_velocity(r.times_s, r.xyxy),
        entered=_on_border(r.xyxy[0], wh),
        exited=_on_border(r.xyxy[-1], wh),
        embedding=r.embedding(),
    )


def link_cost(a: _Ends, b: _Ends, cfg: AssociationConfig) -> float:
    """Cost of ``b`` continuing ``a`` (``_INFEASIBLE`` when it may not)."""
    gap = b.t0 - a.t1
    if not 0 < gap <= cfg.max_gap_s or a.cls != b.cls:
        return _INFEASIBLE  # gap <= 0: both visible at once, never the same identity
    if a.embedding is not None and b.embedding is not None:
        sim = float(a.embedding @ b.embedding)
        if sim < cfg.min_similarity:
            return _INFEASIBLE
    else:
        sim = cfg.min_similarity
    if a.exited and b.entered:
        dist = 0.5  # left and came back: where it re-enters says little
    else:
        diag = max(float(np.hypot(*(a.last[2:] - a.last[:2]))), 1.0)
        start = _centre(b.first)
        moved = _centre(a.last) + a.velocity_end * gap
        d = min(np.hypot(*(start - _centre(a.last))), np.hypot(*(start - moved))) / diag
        allowed = cfg.max_distance * (1.0 + gap)
        if d > allowed:
            return _INFEASIBLE
        dist = d / allowed
    return (1.0 - sim) + 0.5 * dist + 0.2 * gap / cfg.max_gap_s


def link_matrix(raws: list[RawTrack], cfg: AssociationConfig, wh) -> np.ndarray:
    """(N, N) cost of tracklet j continuing tracklet i."""
    ends = [_ends(r, wh) for r in raws]
    n = len(ends)
    cost = np.full((n, n), _INFEASIBLE)
    for i in range(n):
        for j in range(n):
            if i != j:
                cost[i, j] = link_cost(ends[i], ends[j], cfg)
    return cost


def associate(
    raws: list[RawTrack], cfg: AssociationConfig, wh: tuple[int, int] | None = None
) -> list[list[RawTrack]]:
    """Tracklets grouped into identities (each group in time order, disjoint in time).

    ``wh`` (width, height) of the frames lets a tracklet that leaves through the border
    link to one that re-enters anywhere on it; without it only position counts.
    """
    n = len(raws)
    if n < 2:
        return [[r] for r in raws]
    import lap

    cost = link_matrix(raws, cfg, wh)
    _, succ, _ = lap.lapjv(cost, extend_cost=True, cost_limit=cfg.max_cost)
    nxt = {i: int(j) for i, j in enumerate(succ) if j >= 0 and cost[i, j] <= cfg.max_cost}
    has_pred = set(nxt.values())
    groups = []
    for start in range(n):
        if start in has_pred:
            continue
        chain, i = [raws[start]], start
        while i in nxt:
            i = nxt[i]
            chain.append(raws[i])
        groups.append(chain)
    if sum(len(g) for g in groups) != n:  # unreachable with a time-ordered cost matrix
        raise AssertionError("association produced a cycle")
    return groups
