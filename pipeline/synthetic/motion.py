"""Motion plans for synthetic scenes, the events they produce, and :func:`make_scene`.

Each object follows a plan of motion segments (enter from an edge, move, stop, turn,
leave); :func:`derive_events` and :func:`pass_events` read the events off the plan and
the rendered masks, and :func:`make_scene` retries plans until the scene has enough
visible objects and expressions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.geometry import mask_to_xyxy
from pipeline.synthetic.expressions import make_expressions
from pipeline.synthetic.scene import (
    _INWARD,
    _OUTWARD,
    COLORS_RGB,
    DIRECTIONS,
    EDGES,
    SHAPES,
    SIZES,
    Event,
    Scene,
    SceneConfig,
    SceneObject,
    Segment,
    _full_mask,
    _top_left,
    boxes_from_masks,
    make_background,
    make_stamp,
    render_masks,
)


@dataclass
class _Plan:
    """Mutable builder of one object's centres (T, 2) and segments."""

    centers: np.ndarray
    segments: list[Segment]

    def add(self, kind: str, detail: str, f0: int, n: int, start_xy, step_xy) -> None:
        k = np.arange(n + 1, dtype=np.float64)[:, None]
        self.centers[f0 : f0 + n + 1] = np.asarray(start_xy) + k * np.asarray(step_xy)
        last = self.segments[-1] if self.segments else None
        if kind in ("stop", "still") and last is not None and last.kind in ("stop", "still"):
            self.segments[-1] = Segment(last.kind, "", last.start_frame, f0 + n)  # one rest period
        else:
            self.segments.append(Segment(kind, detail, f0, f0 + n))


def _extent(stamp: np.ndarray) -> tuple[int, int, int, int]:
    b = mask_to_xyxy(stamp)
    return int(b[0]), int(b[1]), int(b[2]), int(b[3])


def _tight_box(cx: float, cy: float, s: int, ext) -> tuple[int, int, int, int]:
    x0, y0 = _top_left(cx, cy, s)
    return x0 + ext[0], y0 + ext[1], x0 + ext[2], y0 + ext[3]


def plan_motion(
    rng: np.random.Generator, cfg: SceneConfig, stamp: np.ndarray, speed_px_s: float
) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """A random motion plan: (T, 2) float32 centres (NaN off screen) and its segments.

    Moves stay inside the frame; an object may enter from an edge (partly visible in
    its first frame) and may leave through an edge (partly visible in its last).
    """
    W, H, T = cfg.width, cfg.height, cfg.num_frames
    s = stamp.shape[0]
    ext = _extent(stamp)
    step = max(speed_px_s / cfg.fps, 1.0)  # px per frame, >= 1 so rounded positions move
    lo = np.array([s / 2 + 2, s / 2 + 2])
    hi = np.array([W - s / 2 - 2, H - s / 2 - 2])
    min_move, max_move = cfg.frames(0.8), cfg.frames(2.5)
    min_stop, max_stop = cfg.frames(0.8), cfg.frames(2.0)
    plan = _Plan(np.full((T, 2), np.nan), [])

    def room(pos, d: str) -> int:
        dx, dy = DIRECTIONS[d]
        if dx:
            free = (hi[0] - pos[0]) if dx > 0 else (pos[0] - lo[0])
        else:
            free = (hi[1] - pos[1]) if dy > 0 else (pos[1] - lo[1])
        return int(max(free, 0) // step)

    t, moving = 0, None
    if rng.random() < 0.3:
        edge = str(rng.choice(EDGES))
        d = _INWARD[edge]
        dx, dy = DIRECTIONS[d]
        inside = math.ceil(step)
        if edge in ("left", "right"):
            x0 = inside - ext[2] if edge == "left" else W - inside - ext[0]
            start = np.array([x0 + s / 2, rng.uniform(lo[1], hi[1])])
            target = (lo[0] if edge == "left" else hi[0]) + dx * rng.uniform(0, 0.3 * W)
            n = math.ceil(abs(target - start[0]) / step)
        else:
            y0 = inside - ext[3] if edge == "top" else H - inside - ext[1]
            start = np.array([rng.uniform(lo[0], hi[0]), y0 + s / 2])
            target = (lo[1] if edge == "top" else hi[1]) + dy * rng.uniform(0, 0.3 * H)
            n = math.ceil(abs(target - start[1]) / step)
        latest = T - 1 - n - min_stop
        if latest >= 0:
            t = int(rng.integers(0, max(1, min(T // 3, latest) + 1)))
            plan.add("enter", edge, t, n, start, (dx * step, dy * step))
            t, moving = t + n, d
    if not plan.segments:
        pos = rng.uniform(lo, hi)
        if rng.random() < 0.3:
            n = min(int(rng.integers(min_stop, max_stop + 1)), T - 1)
            plan.add("still", "", 0, n, pos, (0.0, 0.0))
            t = n
        else:
            plan.centers[0] = pos
    while t < T - 1:
        pos = plan.centers[t].copy()
        remaining = T - 1 - t
        if (
            t >= 0.35 * T
            and rng.random() < 0.3
            and _try_leave(rng, plan, t, pos, step, s, ext, cfg)
        ):
            return plan.centers.astype(np.float32), tuple(plan.segments)
        options = [d for d in DIRECTIONS if d != moving and room(pos, d) >= min_move]
        if (moving is not None and rng.random() < 0.4) or not options:
            n = min(int(rng.integers(min_stop, max_stop + 1)), remaining)
            plan.add("stop" if plan.segments and moving else "still", "", t, n, pos, (0.0, 0.0))
            moving = None
        else:
            d = str(rng.choice(options))
            n = min(int(rng.integers(min_move, max_move + 1)), room(pos, d), remaining)
            dx, dy = DIRECTIONS[d]
            plan.add("move", d, t, n, pos, (dx * step, dy * step))
            moving = d
        t += n
    return plan.centers.astype(np.float32), tuple(plan.segments)


def _try_leave(rng, plan: _Plan, t: int, pos, step: float, s: int, ext, cfg: SceneConfig) -> bool:
    """Append a segment that takes the object out through an edge, if one fits in time."""
    W, H, T = cfg.width, cfg.height, cfg.num_frames
    fits = []
    for edge in EDGES:
        dx, dy = DIRECTIONS[_OUTWARD[edge]]
        n = 1
        while True:  # n = first frame offset at which the shape is fully outside
            x1, y1, x2, y2 = _tight_box(pos[0] + dx * step * n, pos[1] + dy * step * n, s, ext)
            if x2 <= 0 or y2 <= 0 or x1 >= W or y1 >= H:
                break
            n += 1
        if n - 1 >= cfg.frames(0.5) and t + n - 1 <= T - 1:
            fits.append((edge, n))
    if not fits:
        return False
    edge, n = fits[int(rng.integers(len(fits)))]
    dx, dy = DIRECTIONS[_OUTWARD[edge]]
    plan.add("leave", edge, t, n - 1, pos, (dx * step, dy * step))
    return True


def overlap_ok(a: SceneObject, b: SceneObject, cfg: SceneConfig) -> bool:
    """True if two plans keep the objects apart except for brief overlaps (short occlusions)."""
    pa, pb = a.present(), b.present()
    both = np.flatnonzero(pa & pb)
    hit = np.zeros(cfg.num_frames, dtype=bool)
    pad = 2
    for t in both:
        ax0, ay0 = _top_left(*map(float, a.centers_xy[t]), a.size_px)
        bx0, by0 = _top_left(*map(float, b.centers_xy[t]), b.size_px)
        hit[t] = (
            ax0 - pad < bx0 + b.size_px
            and bx0 - pad < ax0 + a.size_px
            and ay0 - pad < by0 + b.size_px
            and by0 - pad < ay0 + a.size_px
        )
    if hit[0]:
        return False
    longest = max((f1 - f0 + 1 for f0, f1 in _runs(hit)), default=0)
    return longest <= cfg.frames(1.0) and hit.sum() <= cfg.frames(2.0)


def derive_events(obj: SceneObject) -> tuple[Event, ...]:
    """Events of one object from its plan: direction runs, stops, entries, exits, turns."""
    events: list[Event] = []
    runs: list[list] = []  # [direction, f0, f1]
    for seg in obj.segments:
        if seg.kind in ("enter", "leave"):
            events.append(Event(obj.obj_id, seg.kind, seg.detail, seg.start_frame, seg.end_frame))
        if seg.kind == "stop":
            events.append(Event(obj.obj_id, "stop", "", seg.start_frame, seg.end_frame))
        d = {"enter": _INWARD, "leave": _OUTWARD}.get(seg.kind, {}).get(seg.detail)
        d = seg.detail if seg.kind == "move" else d
        if d is None:
            runs.append([None, seg.start_frame, seg.end_frame])
        elif runs and runs[-1][0] == d and runs[-1][2] == seg.start_frame:
            runs[-1][2] = seg.end_frame
        else:
            runs.append([d, seg.start_frame, seg.end_frame])
    for d, f0, f1 in runs:
        if d is not None:
            events.append(Event(obj.obj_id, "move", d, f0, f1))
    for (d1, a0, a1), (d2, b0, b1) in itertools.pairwise(runs):
        if d1 is not None and d2 is not None and a1 == b0:
            events.append(Event(obj.obj_id, "turn", f"{d1}>{d2}", a0, b1))
    return tuple(sorted(events, key=lambda e: (e.start_frame, e.kind, e.detail)))


def pass_events(objects: Sequence[SceneObject], cfg: SceneConfig) -> tuple[Event, ...]:
    """Passing events: runs of frames where two shapes overlap (one occludes the other).

    The moving front object gets ``pass`` with detail ``front:<other id>``, the moving
    back one ``behind:<other id>``; a subject that stays put during the run passes nothing.
    """
    events = []
    for a in objects:
        for b in objects:
            if a.depth <= b.depth:
                continue  # a is in front of b
            hit = np.zeros(cfg.num_frames, dtype=bool)
            for t in np.flatnonzero(a.present() & b.present()):
                ax, ay = _top_left(*map(float, a.centers_xy[t]), a.size_px)
                bx, by = _top_left(*map(float, b.centers_xy[t]), b.size_px)
                if max(ax, bx) >= min(ax + a.size_px, bx + b.size_px) or max(ay, by) >= min(
                    ay + a.size_px, by + b.size_px
                ):
                    continue  # stamp squares apart
                ma = _full_mask(a, t, cfg.height, cfg.width)
                hit[t] = bool((ma & _full_mask(b, t, cfg.height, cfg.width)).any())
            for f0, f1 in _runs(hit):
                for subj, side, other in ((a, "front", b), (b, "behind", a)):
                    if not np.array_equal(subj.centers_xy[f0], subj.centers_xy[f1]):
                        events.append(Event(subj.obj_id, "pass", f"{side}:{other.obj_id}", f0, f1))
    return tuple(sorted(events, key=lambda e: (e.start_frame, e.obj_id, e.detail)))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index pairs of the True runs of a (T,) bool array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist()))


def plan_objects(rng: np.random.Generator, cfg: SceneConfig) -> tuple[SceneObject, ...]:
    """2-6 objects with attributes and motion plans that keep them mostly apart."""
    n_target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shape_pool = list(rng.choice(SHAPES, size=int(rng.integers(2, len(SHAPES) + 1)), replace=False))
    colors = list(COLORS_RGB)
    color_pool = list(rng.choice(colors, size=int(rng.integers(3, len(colors) + 1)), replace=False))
    depths = rng.permutation(n_target)
    objects: list[SceneObject] = []
    for i in range(n_target):
        for _ in range(40):
            size = str(rng.choice(SIZES))
            lo_px, hi_px = (24, 30) if size == "small" else (40, 50)
            size_px = max(8, round(rng.uniform(lo_px, hi_px) * cfg.scale))
            shape = str(rng.choice(shape_pool))
            stamp = make_stamp(shape, size_px)
            centers, segments = plan_motion(rng, cfg, stamp, rng.uniform(30, 55) * cfg.scale)
            obj = SceneObject(
                obj_id=len(objects),
                shape=shape,
                color=str(rng.choice(color_pool)),
                size=size,
                size_px=size_px,
                depth=int(depths[i]),
                stamp=stamp,
                centers_xy=centers,
                segments=segments,
            )
            if all(overlap_ok(obj, o, cfg) for o in objects):
                objects.append(obj)
                break
    return tuple(objects)


def make_scene(
    seed: int | Sequence[int],
    cfg: SceneConfig | None = None,
    video_id: str = "",
    with_expressions: bool = True,
    max_attempts: int = 200,
) -> Scene:
    """A scene from a seed (an int or a sequence of ints, as ``numpy.random.default_rng`` takes).

    Retries the plan until there are at least ``cfg.min_objects`` visible objects and,
    with ``with_expressions``, at least 3 expressions including an HC-STVG one.
    """
    cfg = cfg or SceneConfig()
    rng = np.random.default_rng(seed)
    for _ in range(max_attempts):
        objects = plan_objects(rng, cfg)
        if len(objects) < cfg.min_objects:
            continue
        masks = render_masks(objects, cfg.num_frames, cfg.height, cfg.width)
        boxes = boxes_from_masks(masks)
        if np.isnan(boxes[..., 0]).all(axis=1).any():
            continue
        events = tuple(e for o in objects for e in derive_events(o)) + pass_events(objects, cfg)
        background = make_background(rng, cfg.height, cfg.width)
        expressions, hc_index = (), -1
        if with_expressions:
            made = make_expressions(rng, objects, events, boxes, cfg)
            if made is None:
                continue
            expressions, hc_index = made
        masks.setflags(write=False)
        boxes.setflags(write=False)
        return Scene(
            video_id, cfg, background, objects, masks, boxes, events, expressions, hc_index
        )
    raise RuntimeError(f"no valid scene for seed {seed!r} after {max_attempts} attempts ({cfg})")
