"""Offline tracklet association: one identity per object across occlusions and exits.

The online tracker (ByteTrack) keeps a lost track for about a second and has no
appearance cue, so an object hidden longer, or one that leaves and comes back, returns
with a new ID. Preprocessing is offline, so after tracking this pass looks at the whole
clip and links tracklets that follow one another in time into one identity when they
are the same object: same class, a gap of at most ``max_gap_s``, similar appearance
(the detector's own features, :class:`pipeline.detect.Detector`, or a named ReID
model's, :mod:`pipeline.reid`), and a plausible place
of return (near where it was last seen or where its motion carries it, or, for one that
left through the frame border, re-entering through the same border near where it left).
All links are chosen at once by a minimum-cost assignment over the clip
(Jonker-Volgenant, the ``lap`` package Ultralytics' trackers use), each tracklet having
at most one successor and one predecessor.

It never links two tracklets that are visible at the same time: a candidate successor
must start after its predecessor's last frame, so an identity is always a sequence of
tracklets disjoint in time (checked again when they are joined,
:func:`pipeline.tracklets.concat`).

The appearance floor is calibrated per clip. Detector features of different objects of
one class can be very alike (cosine 0.78-0.996 between different objects of the harder
synthetic split), so a fixed floor says little. Tracklets visible at the same time are
known to be different objects; a link between ``a`` and ``b`` needs a similarity above
every similarity of ``a`` or ``b`` with a tracklet of their class visible at the same
time as either of them (and above ``min_similarity``): the pair must look more alike
than the clip's known different pairs around them. Where the clip has no such pair,
only the fixed floor and the place of return are left. A look-alike that is itself a
candidate for one end of the link (two alike objects hidden at once) is a rival, decided
between by the assignment, and sets no floor.

Before linking, a tracklet the online tracker carried from one object onto another is
cut where its mask colours change (:func:`split_switches`); the parts are linked like
any tracklets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.tracklets import RawTrack, border_sides

_INFEASIBLE = 1e6


@dataclass(frozen=True)
class AssociationConfig:
    """When two tracklets are one object.

    Attributes:
        max_gap_s: longest time between one tracklet's end and the next one's start.
        min_similarity: least cosine similarity of the two tracklets' mean appearance
            embeddings (not checked when either has none).
            Each link also needs a similarity above those of the two tracklets with any
            tracklet of their class visible at the same time as either of them (see the
            module notes).
        max_distance: how far (in median box diagonals of the earlier tracklet: its
            size, not that of a sliver it left at the edge of an occluder) from its last
            position, or from where its velocity carries it, the next one may start,
            per second of gap plus one (when the pair is not a leave-then-re-enter one).
        border_reach: a tracklet that ends on the frame border and one that starts on it
            link only through a border side both touch, the later one starting within
            this fraction of that side's length of where the earlier one left (or of
            where its velocity along the border carries it over the gap).
        max_cost: a link costs (1 - similarity) + 0.5 * distance / allowed distance +
            0.2 * gap / ``max_gap_s``; links costing more are never made.
        min_color_similarity: least Bhattacharyya coefficient of the two tracklets'
            colour histograms (:func:`pipeline.reid.color_histograms`) for a link (not
            checked when either has none; -1 turns the check off). It only refuses links,
            and tracklets whose colours do not match are not counted as look-alikes
            when the appearance floor is set.
    """

    max_gap_s: float = 8.0
    min_similarity: float = 0.6
    max_distance: float = 1.5
    border_reach: float = 0.25
    max_cost: float = 0.8
    min_color_similarity: float = 0.5

    def __post_init__(self):
        if not (
            self.max_gap_s > 0
            and self.max_distance > 0
            and self.border_reach > 0
            and self.max_cost > 0
        ):
            raise ValueError(
                "max_gap_s, max_distance, border_reach and max_cost must be > 0, got "
                f"{self.max_gap_s}, {self.max_distance}, {self.border_reach}, {self.max_cost}"
            )
        for name in ("min_similarity", "min_color_similarity"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1], got {getattr(self, name)}")


@dataclass
class _Ends:
    """What association needs of a tracklet: class, ends, motion, look."""

    cls: str
    t0: float
    t1: float
    first: np.ndarray
    last: np.ndarray
    velocity_end: np.ndarray  # (2,) px/s of the centre over the last frames
    diagonal: float  # the median box diagonal (px): its size, not a sliver's at an edge
    entered: frozenset[str]  # the border sides the first box touches
    exited: frozenset[str]  # the border sides the last box touches
    embedding: np.ndarray | None
    color: np.ndarray | None  # unit square-root colour histogram (pipeline.reid)


def _centre(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], np.float64)


def _velocity(times: list[float], boxes: list[np.ndarray], n: int = 5) -> np.ndarray:
    t = np.asarray(times[-n:], np.float64)
    if len(t) < 2 or not np.ptp(t) > 0:
        return np.zeros(2)
    c = np.stack([_centre(b) for b in boxes[-n:]])
    return np.polyfit(t - t[-1], c, 1)[0]


def _border_offset(a: _Ends, b: _Ends, gap: float, wh: tuple[int, int]) -> float | None:
    """Least offset, as a fraction of the side's length, between where ``a`` left and
    where ``b`` enters along a border side both touch (None when they share none).
    Along the side, ``a``'s exit point may also have moved at its last velocity."""
    best = None
    for side in a.exited & b.entered:
        axis = 1 if side in ("left", "right") else 0  # the coordinate along the side
        length = float(wh[1] if axis else wh[0])
        left_at = _centre(a.last)[axis]
        enters_at = _centre(b.first)[axis]
        moved = left_at + a.velocity_end[axis] * gap
        d = min(abs(enters_at - left_at), abs(enters_at - moved)) / length
        best = d if best is None else min(best, d)
    return best


def _ends(r: RawTrack, wh: tuple[int, int] | None) -> _Ends:
    return _Ends(
        cls=r.class_name,
        t0=r.times_s[0],
        t1=r.times_s[-1],
        first=np.asarray(r.xyxy[0], np.float64),
        last=np.asarray(r.xyxy[-1], np.float64),
        velocity_end=_velocity(r.times_s, r.xyxy),
        diagonal=float(np.median([np.hypot(b[2] - b[0], b[3] - b[1]) for b in r.xyxy])),
        entered=border_sides(r.xyxy[0], wh),
        exited=border_sides(r.xyxy[-1], wh),
        embedding=r.embedding(),
        color=r.color(),
    )


def color_match(a: _Ends, b: _Ends, min_similarity: float) -> bool:
    """Whether two tracklets' colours may be one object's (True when either has none)."""
    if a.color is None or b.color is None:
        return True
    return float(a.color @ b.color) >= min_similarity


def link_cost(
    a: _Ends,
    b: _Ends,
    cfg: AssociationConfig,
    wh: tuple[int, int] | None = None,
    floor: float | None = None,
) -> float:
    """Cost of ``b`` continuing ``a`` (``_INFEASIBLE`` when it may not).

    ``floor``: the similarity the pair must exceed (default ``cfg.min_similarity``;
    :func:`link_matrix` raises it to what the clip's known-different pairs reach).
    """
    gap = b.t0 - a.t1
    if not 0 < gap <= cfg.max_gap_s or a.cls != b.cls:
        return _INFEASIBLE  # gap <= 0: both visible at once, never the same identity
    if not color_match(a, b, cfg.min_color_similarity):
        return _INFEASIBLE  # another colour: another object, however alike the features
    floor = cfg.min_similarity if floor is None else floor
    if a.embedding is not None and b.embedding is not None:
        sim = float(a.embedding @ b.embedding)
        if sim <= floor:
            return _INFEASIBLE
    else:
        sim = cfg.min_similarity
    if a.exited and b.entered and wh is not None:
        # left through the border and something came in through it: the same object
        # only through the same side, near where it left
        offset = _border_offset(a, b, gap, wh)
        if offset is None or offset > cfg.border_reach:
            return _INFEASIBLE
        dist = offset / cfg.border_reach
    else:
        diag = max(a.diagonal, 1.0)
        start = _centre(b.first)
        moved = _centre(a.last) + a.velocity_end * gap
        d = min(np.hypot(*(start - _centre(a.last))), np.hypot(*(start - moved))) / diag
        allowed = cfg.max_distance * (1.0 + gap)
        if d > allowed:
            return _INFEASIBLE
        dist = d / allowed
    return (1.0 - sim) + 0.5 * dist + 0.2 * gap / cfg.max_gap_s


def similarity_floors(
    ends: list[_Ends],
    min_similarity: float,
    min_color_similarity: float = -1.0,
    max_gap_s: float | None = None,
) -> np.ndarray:
    """(N, N): the similarity a link from tracklet i to a later tracklet j must exceed.

    Tracklets visible at the same time are different objects, so their similarities are
    what different objects reach in this clip: the floor of (i, j) is the highest
    similarity of i or j with any look-alike of its class visible at the same time as i
    or as j, and at least ``min_similarity``. A tracklet whose colours do not match
    (``min_color_similarity``) is told apart by them and is no look-alike: a small object
    hidden behind a large one of its class and another colour is not kept from its own
    earlier tracklet by how alike the two classes' features are.

    With ``max_gap_s``, a look-alike that is itself a candidate for one end of the link
    does not count: one visible with i that ends before j starts (it may be what j
    continues), or one visible with j that starts after i ends (it may continue i), each
    within ``max_gap_s``. Two alike objects hidden at once come back as two alike
    tracklets; appearance cannot tell which is which, and the assignment chooses between
    the rival links by place and motion instead of refusing both. A look-alike in view all
    along (the third object of a newcomer scene) is no rival and still counts.
    """
    n = len(ends)
    emb = [e.embedding for e in ends]
    sim = np.full((n, n), -np.inf)
    for i in range(n):
        for k in range(n):
            if i != k and emb[i] is not None and emb[k] is not None:
                sim[i, k] = float(emb[i] @ emb[k])
    t0 = np.array([e.t0 for e in ends])
    t1 = np.array([e.t1 for e in ends])
    cls = np.array([e.cls for e in ends])
    together = (t0[:, None] <= t1[None, :]) & (t0[None, :] <= t1[:, None])
    together &= cls[:, None] == cls[None, :]  # links are within a class: so is the floor
    for i in range(n):
        for k in range(n):
            if together[i, k] and not color_match(ends[i], ends[k], min_color_similarity):
                together[i, k] = False
    np.fill_diagonal(together, False)
    floors = np.full((n, n), float(min_similarity))
    for i in range(n):
        for j in range(n):
            others = together[i] | together[j]
            others[[i, j]] = False
            if max_gap_s is not None:
                before_j = (t1 < t0[j]) & (t0[j] - t1 <= max_gap_s) & together[i]
                after_i = (t0 > t1[i]) & (t0 - t1[i] <= max_gap_s) & together[j]
                others &= ~(before_j | after_i)
            if others.any():
                reach = max(sim[i, others].max(), sim[j, others].max())
                floors[i, j] = max(floors[i, j], reach)
    return floors


def link_matrix(raws: list[RawTrack], cfg: AssociationConfig, wh) -> np.ndarray:
    """(N, N) cost of tracklet j continuing tracklet i."""
    ends = [_ends(r, wh) for r in raws]
    floors = similarity_floors(ends, cfg.min_similarity, cfg.min_color_similarity, cfg.max_gap_s)
    n = len(ends)
    cost = np.full((n, n), _INFEASIBLE)
    for i in range(n):
        for j in range(n):
            if i != j:
                cost[i, j] = link_cost(ends[i], ends[j], cfg, wh, floors[i, j])
    return cost


SPLIT_MIN_S = 0.5
"""Each part of a tracklet split at an ID switch spans at least this long."""
SPLIT_MIN_FRAMES = 3
"""... and holds at least this many frames with a mask colour (a track's least length)."""
SPLIT_WINDOW_S = 2.0
"""How much of a tracklet on each side of a frame is compared when looking for a switch."""


def split_switches(
    r: RawTrack,
    min_color_similarity: float,
    min_s: float = SPLIT_MIN_S,
    window_s: float = SPLIT_WINDOW_S,
) -> list[RawTrack]:
    """``r`` cut where it moved from one object to another: the parts in time order.

    An online tracker that loses an object can carry its track on to another one nearby
    (a small object hidden behind a large one, its track continued on a neighbour). At
    each frame the mean colour histogram (:func:`pipeline.reid.color_histograms`) of the
    ``window_s`` before it is compared with that of the ``window_s`` from it (a switch
    can take a second: the box slides from one object onto the other); where they are
    less alike than ``min_color_similarity`` (the association would never link two
    tracklets so coloured), the track is cut at the least alike such frame, and each
    part is looked at again on its own. Every part spans at least ``min_s`` and holds
    at least :data:`SPLIT_MIN_FRAMES` frames with a colour. Only
    frames with a mask count (their histogram is of the object's pixels); the others go
    with the part they fall in, and a tracklet without masks is never cut: a box's
    histogram holds the background too, which changes as the object moves, and a cut
    inside one object's track is an ID break the association may not mend.
    The parts go to the association like any tracklets, which links those of one object
    again (a track that moved onto another object and back is cut twice, and its two
    ends linked).
    """
    if min_color_similarity <= -1.0 or not r.times_s:
        return [r]
    t = np.asarray(r.times_s, np.float64)
    if t[-1] - t[0] < 2 * min_s:
        return [r]
    rows = [
        c if c is not None and c.size and c.any() and m is not None else None
        for c, m in zip(r.colors, r.masks_rle)
    ]  # only the object's own pixels: a box's colours follow the background it crosses
    dim = next((c.size for c in rows if c is not None), 0)
    if not dim:
        return [r]
    filled = np.stack([c if c is not None else np.zeros(dim, np.float32) for c in rows])
    csum = np.concatenate([np.zeros((1, dim)), np.cumsum(filled, axis=0, dtype=np.float64)])
    eps = 1e-9
    k = np.arange(1, len(t))
    counted = np.concatenate([[0], np.cumsum([c is not None for c in rows])])
    ok = (t[k - 1] - t[0] >= min_s - eps) & (t[-1] - t[k] >= min_s - eps)
    ok &= (counted[k] >= SPLIT_MIN_FRAMES) & (counted[-1] - counted[k] >= SPLIT_MIN_FRAMES)
    k = k[ok]
    if not len(k):
        return [r]
    lo = np.searchsorted(t, t[k] - window_s, side="left")  # the window before frame k
    hi = np.searchsorted(t, t[k] + window_s, side="left")  # the window from frame k
    before, after = csum[k] - csum[lo], csum[hi] - csum[k]
    norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    sim = np.full(len(k), np.inf)
    has = norms > 0
    sim[has] = np.einsum("ij,ij->i", before[has], after[has]) / norms[has]
    i = int(np.argmin(sim))
    if not sim[i] < min_color_similarity:
        return [r]
    idx = np.arange(len(t))
    return [
        part
        for keep in (idx < k[i], idx >= k[i])
        for part in split_switches(r.select(keep), min_color_similarity, min_s, window_s)
    ]


def associate(
    raws: list[RawTrack], cfg: AssociationConfig, wh: tuple[int, int] | None = None
) -> list[list[RawTrack]]:
    """Tracklets grouped into identities (each group in time order, disjoint in time).

    A tracklet cut at a switch (:func:`split_switches`) comes back as its parts, each in
    the group of its own object; every frame of ``raws`` is in exactly one group.

    ``wh`` (width, height) of the frames lets a tracklet that leaves through the border
    link to one that re-enters through the same side near where it left; without it
    only position counts.
    """
    raws = [part for r in raws for part in split_switches(r, cfg.min_color_similarity)]
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
