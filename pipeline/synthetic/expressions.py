"""Referring expressions for synthetic scenes, generated from events and attributes.

Each expression is checked for uniqueness against the scene (its targets are exactly
the objects that satisfy it) and carries its exact truth: targets and time span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.scene import (
    Event,
    SceneConfig,
    SceneObject,
)

# ------------------------------------------------------------------ referring expressions

NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
_FROM_EDGE = {
    "left": "from the left",
    "right": "from the right",
    "top": "from the top",
    "bottom": "from the bottom",
}
_EXIT_EDGE = {
    "left": "to the left",
    "right": "to the right",
    "top": "through the top",
    "bottom": "through the bottom",
}
TEMPLATES = ("attribute", "event", "order", "relation")


@dataclass(frozen=True)
class Desc:
    """An attribute description; ``None`` fields are unconstrained (all None = "object")."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.size, obj.size),
                (self.color, obj.color),
                (self.shape, obj.shape),
            )
        )

    def text(self, plural: bool = False) -> str:
        noun = (self.shape or "object") + ("s" if plural else "")
        return " ".join(w for w in (self.size, self.color, noun) if w)


def event_phrase(kind: str, detail: str | None, plural: bool = False) -> str:
    """Verb phrase for an event key, e.g. ("leave", "top") -> "leaves through the top"."""
    verb = {"move": "move", "stop": "stop", "enter": "enter", "leave": "leave", "turn": "move"}
    verb = verb.get(kind, "pass")
    verb = verb if plural else verb + ("es" if verb == "pass" else "s")
    if kind == "pass":
        return f"{verb} {'in front of' if detail == 'front' else 'behind'}"
    if kind == "move":
        return f"{verb} {detail}"
    if kind == "turn":
        first, then = detail.split(">")
        return f"{verb} {first} and then {then}"
    if kind == "enter" and detail:
        return f"{verb} {_FROM_EDGE[detail]}"
    if kind == "leave" and detail:
        return f"{verb} {_EXIT_EDGE[detail]}"
    return verb


@dataclass(frozen=True)
class Query:
    """The structured meaning of an expression; :func:`resolve` gives its truth.

    ``template``: ``attribute`` ("the red circle", "the two squares"), ``event``
    ("the circle moving left"), ``order`` ("the square that stops last") or
    ``relation`` ("the blue square that stops after the red circle leaves"; ``anchor``
    is the event query naming the other object). ``detail`` None matches any detail.
    For ``kind == "pass"`` (detail ``front``/``behind``), ``other`` describes the
    object passed ("the circle that passes in front of the blue square").
    """

    template: str
    desc: Desc
    kind: str | None = None
    detail: str | None = None
    order: str | None = None
    relation: str | None = None
    anchor: Query | None = None
    participle: bool = False
    other: Desc | None = None

    def text(self, n_targets: int = 1) -> str:
        plural = n_targets > 1
        head = f"the {NUMBER_WORDS[n_targets]} " if plural else "the "
        head += self.desc.text(plural)
        if self.template == "attribute":
            return head
        if self.participle:
            return f"{head} moving {self.detail}"
        phrase = f"{head} that {event_phrase(self.kind, self.detail, plural)}"
        if self.kind == "pass":
            phrase += f" the {self.other.text()}"
        if self.template == "order":
            return f"{phrase} {self.order}"
        if self.template == "relation":
            a = self.anchor
            return f"{phrase} {self.relation} the {a.desc.text()} {event_phrase(a.kind, a.detail)}"
        return phrase


@dataclass(frozen=True)
class Expression:
    """A referring expression with exact truth.

    ``target_ids`` are obj_ids; the span ``start_frame..end_frame`` (inclusive) is the
    described event's interval (for attribute expressions, the targets' visible
    life); ``start_s``/``end_s`` are the times of those two frames.
    """

    text: str
    target_ids: tuple[int, ...]
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    query: Query

    @property
    def template(self) -> str:
        return self.query.template

    @property
    def is_multi(self) -> bool:
        return len(self.target_ids) > 1


def _occurrences(
    query: Query, obj_id: int, objects: Sequence[SceneObject], events: Sequence[Event]
) -> list[Event]:
    out = []
    for e in events:
        if e.obj_id != obj_id or e.kind != query.kind:
            continue
        if e.kind == "pass":
            side, other = e.detail.split(":")
            if side == query.detail and query.other.matches(objects[int(other)]):
                out.append(e)
        elif query.detail is None or e.detail == query.detail:
            out.append(e)
    return out


def resolve(
    query: Query,
    objects: Sequence[SceneObject],
    events: Sequence[Event],
    lives: dict[int, tuple[int, int]],
    margin_frames: int,
) -> tuple[tuple[int, ...], tuple[int, int]] | None:
    """The objects a query refers to and its span (frames), or None if the query is ill-posed.

    Ill-posed: nothing matches; a target does the event more than once (the "when"
    would be ambiguous); "first"/"last" winners closer than ``margin_frames``; a
    relation whose candidates overlap the anchor event in time. ``lives`` maps obj_id
    to its first and last visible frame.
    """
    cands = [o.obj_id for o in objects if query.desc.matches(o)]
    if query.template == "attribute":
        ids = [i for i in cands if i in lives]
        if not ids:
            return None
        return tuple(ids), (min(lives[i][0] for i in ids), max(lives[i][1] for i in ids))
    occ = {i: _occurrences(query, i, objects, events) for i in cands}
    occ = {i: v for i, v in occ.items() if v}
    if query.template == "event":
        if not occ or any(len(v) > 1 for v in occ.values()):
            return None
        evs = [v[0] for v in occ.values()]
        return tuple(sorted(occ)), (min(e.start_frame for e in evs), max(e.end_frame for e in evs))
    if query.template == "order":
        if len(occ) < 2:
            return None
        sign = 1 if query.order == "first" else -1
        key = {i: min(sign * e.start_frame for e in v) for i, v in occ.items()}
        ranked = sorted(occ, key=lambda i: key[i])
        best = ranked[0]
        if key[ranked[1]] - key[best] < margin_frames or len(occ[best]) != 1:
            return None
        e = occ[best][0]
        return (best,), (e.start_frame, e.end_frame)
    if query.template == "relation":
        anchor = resolve(query.anchor, objects, events, lives, margin_frames)
        if anchor is None or len(anchor[0]) != 1 or query.desc.matches(objects[anchor[0][0]]):
            return None
        a0, a1 = anchor[1]
        hits: dict[int, list[Event]] = {}
        other_side = False
        for i, evs in occ.items():
            for e in evs:
                after, before = e.start_frame >= a1, e.end_frame <= a0
                if (after and query.relation == "after") or (before and query.relation == "before"):
                    hits.setdefault(i, []).append(e)
                elif after or before:
                    other_side = True
                else:
                    return None  # overlaps the anchor event in time: "after"/"before" is unclear
        if not hits or not other_side or any(len(v) > 1 for v in hits.values()):
            return None
        evs = [v[0] for v in hits.values()]
        return tuple(sorted(hits)), (min(e.start_frame for e in evs), max(e.end_frame for e in evs))
    raise ValueError(f"unknown template {query.template!r}; expected one of {TEMPLATES}")


def _descs(objects: Sequence[SceneObject]) -> list[Desc]:
    out = set()
    for o in objects:
        for size, color, shape in (
            (None, None, None),
            (None, None, o.shape),
            (None, o.color, None),
            (None, o.color, o.shape),
            (o.size, None, o.shape),
            (o.size, o.color, o.shape),
        ):
            out.add(Desc(size, color, shape))
    return sorted(out, key=lambda d: d.text())


def object_lives(boxes_xyxy: np.ndarray) -> dict[int, tuple[int, int]]:
    """obj_id -> (first, last) visible frame, from (N, T, 4) boxes with NaN rows when hidden."""
    lives = {}
    for i in range(boxes_xyxy.shape[0]):
        f = np.flatnonzero(~np.isnan(boxes_xyxy[i, :, 0]))
        if f.size:
            lives[i] = (int(f[0]), int(f[-1]))
    return lives


def candidate_expressions(
    rng: np.random.Generator,
    objects: Sequence[SceneObject],
    events: Sequence[Event],
    boxes_xyxy: np.ndarray,
    cfg: SceneConfig,
) -> list[Expression]:
    """Every well-posed expression the templates give for a scene (deduplicated, shuffled)."""
    lives = object_lives(boxes_xyxy)
    margin, min_event, min_pass = cfg.frames(0.5), cfg.frames(0.5), cfg.frames(0.2)
    descs = _descs(objects)
    keys = {(e.kind, None if e.kind == "stop" else e.detail) for e in events if e.kind != "pass"}
    keys = sorted(keys | {("enter", None), ("leave", None)}, key=str)
    passed = {int(e.detail.split(":")[1]) for e in events if e.kind == "pass"}
    others = [d for d in descs if sum(d.matches(o) for o in objects) == 1]
    others = [d for d in others if any(d.matches(objects[i]) for i in passed)]
    queries = []
    for d in descs:
        if d != Desc():
            queries.append(Query("attribute", d))
        for side in ("front", "behind"):
            queries += [Query("event", d, "pass", side, other=o) for o in others if o != d]
        for kind, detail in keys:
            queries.append(Query("event", d, kind, detail))
            if kind == "move":
                queries.append(Query("event", d, kind, detail, participle=True))
            if kind != "turn":
                queries += [Query("order", d, kind, detail, order=o) for o in ("first", "last")]
    found = [(q, resolve(q, objects, events, lives, margin)) for q in queries]
    found = [(q, r) for q, r in found if r is not None]
    anchors = [
        q
        for q, r in found
        if q.template == "event"
        and len(r[0]) == 1
        and not q.participle
        and q.kind not in ("turn", "pass")
    ]
    for a_idx in rng.permutation(len(anchors))[:4]:
        for d in descs:
            for kind, detail in (k for k in keys if k[0] != "turn"):
                for rel in ("after", "before"):
                    q = Query("relation", d, kind, detail, relation=rel, anchor=anchors[a_idx])
                    r = resolve(q, objects, events, lives, margin)
                    if r is not None:
                        found.append((q, r))
    out, seen = [], set()
    for i in rng.permutation(len(found)):
        q, (ids, (f0, f1)) = found[i]
        n = len(ids)
        if n > 1 and (q.template in ("order", "relation") or n not in NUMBER_WORDS):
            continue
        if q.template != "attribute" and f1 - f0 + 1 < (
            min_pass if q.kind == "pass" else min_event
        ):
            continue
        key = ("multi" if n > 1 else q.template, ids, f0, f1)
        if key in seen:
            continue
        seen.add(key)
        out.append(Expression(q.text(n), ids, f0, f1, f0 / cfg.fps, f1 / cfg.fps, q))
    return out


def hcstvg_eligible(expr: Expression, boxes_xyxy: np.ndarray, num_frames: int) -> bool:
    """Single target, visible in every frame of its span (HC-STVG needs one box per frame)."""
    if expr.is_multi:
        return False
    span = boxes_xyxy[expr.target_ids[0], expr.start_frame : expr.end_frame + 1, 0]
    return bool(np.all(~np.isnan(span)))


def make_expressions(
    rng: np.random.Generator,
    objects: Sequence[SceneObject],
    events: Sequence[Event],
    boxes_xyxy: np.ndarray,
    cfg: SceneConfig,
) -> tuple[tuple[Expression, ...], int] | None:
    """3-6 expressions of mixed templates (a multi-object one when possible) and the index of
    the HC-STVG query: single-target, preferably an event shorter than the video. None if
    the scene cannot supply them."""
    pool = candidate_expressions(rng, objects, events, boxes_xyxy, cfg)
    T = cfg.num_frames
    ok = [e for e in pool if hcstvg_eligible(e, boxes_xyxy, T)]
    timed = [
        e for e in ok if e.template != "attribute" and e.end_frame - e.start_frame + 1 < 0.9 * T
    ]
    if not (timed or ok):
        return None
    chosen = [(timed or ok)[0]]
    groups: dict[str, list[Expression]] = {}
    for e in pool:
        groups.setdefault("multi" if e.is_multi else e.template, []).append(e)
    order = [g for g in ("multi", *TEMPLATES) if g in groups]
    n_want = int(rng.integers(3, 7))
    names = ["multi"] if "multi" in groups else []
    names += [order[i] for i in rng.permutation(len(order))]
    while len(chosen) < n_want and any(groups.values()):
        for name in names:
            while groups.get(name) and len(chosen) < n_want:
                e = groups[name].pop(0)
                if all(e.text != c.text for c in chosen):
                    chosen.append(e)
                    break
        names = [n for n in names if groups.get(n)]
        if not names:
            break
    if len(chosen) < 3:
        return None
    perm = [int(i) for i in rng.permutation(len(chosen))]
    return tuple(chosen[i] for i in perm), perm.index(0)
