"""The harder synthetic split for ID stability, with object identities in every frame.

Scripted scenes, each built around one way IDs get lost (``KINDS``):

- ``occlusion``: objects pass behind a pillar (part of the background, drawn in front of
  them, not an object) and stay fully hidden for 1-4 s;
- ``reenter``: objects leave through the frame border and come back 1-3 s later;
- ``crossing``: two objects of the same shape and size cross each other's path;
- ``crowd``: 15-18 objects drifting about their places, neighbours passing in front of
  and behind one another, four of them small ones that walk behind a large member of
  their own shape (another colour) and stay fully hidden by it for 1-4 s;
- ``behind``: small objects pass behind a large object of their own shape (another
  colour) and stay fully hidden by it for 1-4 s, as a child behind an adult: the
  occluder is itself tracked and looks like them to a class-trained detector.

and one (``TRAP_KINDS``) where a tracker that links too eagerly gives one ID to two
objects:

- ``newcomer``: an object leaves through the frame border and 1-3 s later a different
  object of the same shape (another colour) comes in, through the other side, through
  the same side at another height, or where the first left, while a third of that shape
  drifts across the frame.

Each video is written as an mp4 with its ground truth in the MOTChallenge ``gt.txt``
layout (``frame, id, x, y, w, h, 1, -1, -1, -1``, frames from 1, one row per object per
frame where any of it is visible), the format ``motmetrics`` reads::

    <out>/<video>.mp4
    <out>/<video>.gt.txt
    <out>/summary.json

``python -m pipeline.synthetic.hard --out data/raw/synthetic-hard``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.runtime import DATA_DIR
from pipeline.synthetic.scene import (
    COLORS_RGB,
    SHAPES,
    Scene,
    SceneConfig,
    SceneObject,
    boxes_from_masks,
    make_background,
    make_stamp,
    render_masks,
)

KINDS = ("occlusion", "reenter", "crossing", "crowd", "behind")
TRAP_KINDS = ("newcomer",)
ALL_KINDS = KINDS + TRAP_KINDS
_STREAMS = {"occlusion": 0, "reenter": 1, "crossing": 2, "crowd": 3, "newcomer": 4, "behind": 5}
"""Each kind's random stream (fixed, so adding a kind leaves the others' scenes as they were)."""
SPLIT_VERSION = 2
"""Written into ``summary.json``; raised when a kind's scenes change (2: crowds hide four
members), so that a split written by an older version is not scored as this one."""
DEFAULT_OUT = DATA_DIR / "raw" / "synthetic-hard"
HARD_CONFIG = SceneConfig(duration_s=10.0)  # 10 s at the default 10 fps and 320x240


PILLAR_RGB = (70, 62, 58)


@dataclass(frozen=True)
class HardScene(Scene):
    """A :class:`Scene` with an optional pillar: columns ``pillar[0]:pillar[1]`` drawn in
    front of every object (the masks and boxes already leave it out)."""

    pillar: tuple[int, int] | None = None

    def frame(self, frame_idx: int) -> np.ndarray:
        img = super().frame(frame_idx)
        if self.pillar is not None:
            img[:, self.pillar[0] : self.pillar[1]] = PILLAR_RGB
        return img


def _obj(oid, shape, color, size_px, depth, centers) -> SceneObject:
    return SceneObject(
        obj_id=oid,
        shape=shape,
        color=color,
        size="large" if size_px >= 40 else "small",
        size_px=size_px,
        depth=depth,
        stamp=make_stamp(shape, size_px),
        centers_xy=np.asarray(centers, np.float32),
        segments=(),
    )


def _line(t: np.ndarray, start, velocity) -> np.ndarray:
    return np.stack([start[0] + velocity[0] * t, start[1] + velocity[1] * t], axis=1)


def _occlusion(rng, cfg: SceneConfig) -> tuple[list[SceneObject], tuple[int, int]]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    cover = int(rng.integers(60, 72))
    x0 = (w - cover) // 2
    objs = []
    for k, y in enumerate((0.3 * h, 0.7 * h)):
        size = int(rng.integers(24, 31))
        hidden_s = rng.uniform(1.0, 4.0)  # fully behind the pillar this long
        speed = (cover - size) / hidden_s
        sign = 1 if k == 0 else -1
        start = w / 2 - sign * (cover / 2 + size / 2 + speed * rng.uniform(1.0, 2.0))
        centers = _line(t, (start, y), (sign * speed, 0.0))
        shape = str(rng.choice(SHAPES))
        color = str(rng.choice(["red", "green", "blue", "purple", "orange", "white"]))
        objs.append(_obj(k, shape, color, size, k, centers))
    return objs, (x0, x0 + cover)


def _reenter(rng, cfg: SceneConfig) -> list[SceneObject]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    objs = []
    for k in range(2):
        size = int(rng.integers(28, 44))
        speed = rng.uniform(60, 90)
        away_s = rng.uniform(1.0, 3.0)
        y = h * (0.3 + 0.4 * k)
        out_x = w + size  # fully outside
        x_start = rng.uniform(0.35, 0.55) * w
        t_exit = (out_x - x_start) / speed
        xs = np.where(
            t <= t_exit,
            x_start + speed * t,
            out_x - speed * np.clip(t - t_exit - away_s, 0, None),
        )
        centers = np.stack([xs, np.full_like(xs, y)], axis=1)
        centers[(t > t_exit) & (t < t_exit + away_s)] = np.nan
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS_RGB)))
        objs.append(_obj(k, shape, color, size, k, centers))
    return objs


def _crossing(rng, cfg: SceneConfig) -> list[SceneObject]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    shape = str(rng.choice(SHAPES))
    size = int(rng.integers(30, 40))
    colors = rng.choice(["red", "green", "blue", "purple", "orange"], size=2, replace=False)
    speed = rng.uniform(25, 45)
    dur = t[-1]
    objs = []
    for k, sign in enumerate((1, -1)):
        start = (w / 2 - sign * speed * dur / 2, h / 2 + sign * rng.uniform(0, 8))
        centers = _line(t, start, (sign * speed, 0.0))
        objs.append(_obj(k, shape, str(colors[k]), size, k, centers))
    return objs


class _HidingPair(NamedTuple):
    """A large object and a small one of its shape (another colour) that hides behind it."""

    shape: str
    big_color: str
    small_color: str
    big_px: int
    small_px: int
    reach: float  # centre offsets (px) at which the small one is inside the large one
    speed: float  # px/s relative to the large one at which it stays hidden 1-4 s


def _hiding_pair(rng, big_px: tuple[int, int], small_px: tuple[int, int]) -> _HidingPair:
    """Draw a :class:`_HidingPair` with sizes in ``[lo, hi)`` (``rng.integers``)."""
    shape = str(rng.choice(["circle", "square"]))  # shapes that can hide a small copy
    big_c, small_c = (str(c) for c in rng.choice(list(COLORS_RGB), size=2, replace=False))
    big, small = int(rng.integers(*big_px)), int(rng.integers(*small_px))
    reach = (big - small) / 2
    hidden_s = rng.uniform(1.0, 4.0)
    return _HidingPair(shape, big_c, small_c, big, small, reach, 2 * reach / hidden_s)


CROWD_HIDERS = 4
"""Members of each crowd that pass behind a larger one and stay fully hidden for 1-4 s."""


def _crowd(rng, cfg: SceneConfig) -> list[SceneObject]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    n = int(rng.integers(15, 19))
    cols = int(np.ceil(np.sqrt(n * w / h)))
    rows = int(np.ceil(n / cols))
    n_drift = n - 2 * CROWD_HIDERS
    order = rng.permutation(rows * cols)
    inner = order % cols > 0
    inner &= order % cols < cols - 1  # large members hiding a small one: off the side borders
    screens = order[inner][:CROWD_HIDERS]
    cells = np.concatenate([order[~np.isin(order, screens)][:n_drift], screens])
    objs = []
    for k, c in enumerate(cells):
        cx = (c % cols + 0.5) * w / cols
        cy = (c // cols + 0.5) * h / rows
        amp = rng.uniform(12, 30, size=2)  # about half a cell: neighbours pass over each other
        phase = rng.uniform(0, 2 * np.pi, size=2)
        freq = rng.uniform(0.05, 0.15, size=2)
        if k >= n_drift:  # a large member that hides a small one: it sways less
            amp = amp / 3
        centers = np.stack(
            [
                cx + amp[0] * np.sin(2 * np.pi * freq[0] * t + phase[0]),
                cy + amp[1] * np.sin(2 * np.pi * freq[1] * t + phase[1]),
            ],
            axis=1,
        )
        if k < n_drift:
            size = int(rng.integers(22, 28))
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS_RGB)))
            objs.append(_obj(k, shape, color, size, CROWD_HIDERS + k, centers))
            continue
        # a large member and a small one of its shape (another colour) that walks up to
        # it, passes behind it fully hidden for 1-4 s, and stands on its other side
        p = _hiding_pair(rng, (46, 53), (18, 22))
        t_mid = t[-1] * rng.uniform(0.4, 0.6)
        walk = p.reach + 0.6 * p.big_px  # it walks from this far on one side to as far on the other
        sign = 1 if rng.random() < 0.5 else -1
        dx = sign * np.clip(p.speed * (t - t_mid), -walk, walk)
        small_xy = centers + np.stack([dx, np.zeros_like(dx)], axis=1)
        j = k - n_drift
        objs.append(_obj(k, p.shape, p.big_color, p.big_px, n + j, centers))  # in front of all
        objs.append(_obj(n - CROWD_HIDERS + j, p.shape, p.small_color, p.small_px, j, small_xy))
    return sorted(objs, key=lambda o: o.obj_id)


def _behind(rng, cfg: SceneConfig) -> list[SceneObject]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    objs = []
    for row, y in enumerate((0.3 * h, 0.7 * h)):
        p = _hiding_pair(rng, (64, 73), (18, 23))
        x_big = w * rng.uniform(0.4, 0.6)
        sign = 1 if row == 0 else -1
        t_mid = t[-1] * rng.uniform(0.4, 0.6)  # when the small one is behind the centre
        drift = rng.uniform(-4.0, 4.0)  # the large one drifts a little
        big_xy = _line(t, (x_big - drift * t_mid, y), (drift, 0.0))
        v_small = sign * p.speed + drift
        small_xy = _line(t, (x_big - v_small * t_mid, y), (v_small, 0.0))
        objs.append(_obj(2 * row, p.shape, p.big_color, p.big_px, 2 * row + 1, big_xy))  # front
        objs.append(_obj(2 * row + 1, p.shape, p.small_color, p.small_px, 2 * row, small_xy))
    return objs


def _newcomer(rng, cfg: SceneConfig) -> list[SceneObject]:
    t = np.arange(cfg.num_frames) / cfg.fps
    w, h = cfg.width, cfg.height
    shape = str(rng.choice(SHAPES))
    colors = [str(c) for c in rng.choice(list(COLORS_RGB), size=3, replace=False)]
    size = int(rng.integers(28, 40))
    # A leaves through the right border
    y_a = h * rng.uniform(0.45, 0.55)
    speed_a = rng.uniform(60, 90)
    x_a = rng.uniform(0.2, 0.45) * w + speed_a * t
    a = np.stack([x_a, np.full_like(t, y_a)], axis=1)
    t_gone = (w + size - x_a[0]) / speed_a
    a[t > t_gone] = np.nan
    # B, another object of A's shape, comes in 1-3 s after A has gone: through the left
    # border, through the right one well below where A left, or where A left
    t_in = t_gone + rng.uniform(1.0, 3.0)
    speed_b = rng.uniform(50, 80)
    way = int(rng.integers(3))
    if way == 0:
        x_b, y_b = -size + speed_b * (t - t_in), h * rng.uniform(0.35, 0.85)
    else:
        x_b = w + size - speed_b * (t - t_in)
        y_b = y_a + (h * rng.uniform(0.3, 0.35) if way == 1 else 0.0)
    b = np.stack([x_b, np.full_like(t, y_b)], axis=1)
    b[t < t_in] = np.nan
    # C, a third of that shape, drifts along the top all along
    c = _line(t, (w * rng.uniform(0.6, 0.8), h * rng.uniform(0.12, 0.15)), (-15.0, 0.0))
    return [_obj(k, shape, colors[k], size, k, p) for k, p in enumerate((a, b, c))]


_BUILDERS = {
    "occlusion": _occlusion,
    "reenter": _reenter,
    "crossing": _crossing,
    "crowd": _crowd,
    "newcomer": _newcomer,
    "behind": _behind,
}


def make_hard_scene(kind: str, seed: int, cfg: SceneConfig | None = None) -> HardScene:
    """One scripted scene of ``kind`` (see ``ALL_KINDS``); deterministic for a seed."""
    if kind not in ALL_KINDS:
        raise ValueError(f"kind must be one of {ALL_KINDS}, got {kind!r}")
    cfg = cfg or HARD_CONFIG
    rng = np.random.default_rng([seed, _STREAMS[kind]])
    built = _BUILDERS[kind](rng, cfg)
    objects, pillar = built if kind == "occlusion" else (built, None)
    objects = tuple(objects)
    masks = render_masks(objects, cfg.num_frames, cfg.height, cfg.width)
    if pillar is not None:
        masks[..., pillar[0] : pillar[1]] = False
    boxes = boxes_from_masks(masks)
    background = make_background(rng, cfg.height, cfg.width)
    masks.setflags(write=False)
    boxes.setflags(write=False)
    vid = f"{kind}_{seed:03d}"
    return HardScene(vid, cfg, background, objects, masks, boxes, events=(), pillar=pillar)


def mot_rows(scene: Scene) -> list[str]:
    """MOTChallenge gt.txt rows: frame (from 1), id (obj_id + 1), x, y, w, h, 1, -1, -1, -1."""
    rows = []
    for f in range(scene.num_frames):
        for obj in scene.objects:
            b = scene.boxes_xyxy[obj.obj_id, f]
            if np.isnan(b[0]):
                continue
            x, y, w, h = float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])
            rows.append(f"{f + 1},{obj.obj_id + 1},{x:g},{y:g},{w:g},{h:g},1,-1,-1,-1")
    return rows


def write_hard_split(out: str | Path, seed: int = 0, per_kind: int = 3) -> dict:
    """Write ``per_kind`` videos of every kind (``ALL_KINDS``) with their gt.txt; returns
    the summary."""
    from pipeline.synthetic.writer import write_mp4

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos = []
    for kind in ALL_KINDS:
        for i in range(per_kind):
            scene = make_hard_scene(kind, seed * 1000 + i)
            write_mp4(
                out / f"{scene.video_id}.mp4",
                (scene.frame(f) for f in range(scene.num_frames)),
                scene.config.fps,
            )
            (out / f"{scene.video_id}.gt.txt").write_text("\n".join(mot_rows(scene)) + "\n")
            videos.append({"video": scene.video_id, "kind": kind, "objects": len(scene.objects)})
    cfg = HARD_CONFIG
    summary = {"version": SPLIT_VERSION, "seed": seed, "per_kind": per_kind, "fps": cfg.fps,
               "width": cfg.width, "height": cfg.height, "videos": videos}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic.hard",
        description="Write the harder synthetic split (occlusion, behind, re-entry, crossing, "
        "crowds, newcomers) "
        "as mp4 videos with MOTChallenge gt.txt identities.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=3, help="videos of each kind")
    args = parser.parse_args(argv)
    summary = write_hard_split(args.out, args.seed, args.per_kind)
    print(f"wrote {len(summary['videos'])} videos to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
