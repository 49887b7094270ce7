"""Procedural scenes for the synthetic STVG dataset: moving shapes with exact ground truth.

A :class:`Scene` is a short video of 2-6 flat-coloured shapes over a textured
background. Each object follows a plan of motion segments (enter from an edge,
move left/right/up/down, stop, turn, leave through an edge); the per-frame visible
masks account for occlusion (z-order), so a hidden object has an empty mask. Events
(:class:`Event`) are derived from the plan; referring expressions with their truth
come from templates in :func:`pipeline.synthetic.expressions.make_expressions`, which keeps an expression only if
exactly the intended objects satisfy it.

Everything is a pure function of the seed: the same seed gives the same scene.
Frame indices are 0-based; an event's ``start_frame``/``end_frame`` are inclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
"""Shape names; also the synthetic detector's class names, in this order."""

COLORS_RGB = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 140, 30),
    "white": (248, 248, 248),
}
SIZES = ("small", "large")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
EDGES = ("left", "right", "top", "bottom")
_INWARD = {"left": "right", "right": "left", "top": "down", "bottom": "up"}
_OUTWARD = {"left": "left", "right": "right", "top": "up", "bottom": "down"}


@dataclass(frozen=True)
class SceneConfig:
    """Size, rate and length of the generated videos, and how many objects they hold."""

    width: int = 320
    height: int = 240
    fps: float = 10.0
    duration_s: float = 8.0
    min_objects: int = 2
    max_objects: int = 6

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 64 and v % 2 == 0):
                raise ValueError(
                    f"SceneConfig.{name} must be an even int >= 64 (H.264 yuv420p), got {v!r}"
                )
        if not self.fps > 0:
            raise ValueError(f"SceneConfig.fps must be > 0, got {self.fps}")
        if self.num_frames < 20:
            raise ValueError(
                f"SceneConfig: duration_s={self.duration_s} x fps={self.fps} gives {self.num_frames} "
                "frames; need at least 20"
            )
        if not 2 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"SceneConfig: need 2 <= min_objects <= max_objects <= 6, got "
                f"{self.min_objects}, {self.max_objects}"
            )

    @property
    def num_frames(self) -> int:
        return round(self.duration_s * self.fps)

    @property
    def scale(self) -> float:
        """Linear size relative to 320x240, the size the object sizes are tuned for."""
        return min(self.width / 320, self.height / 240)

    def frames(self, seconds: float) -> int:
        """A duration in whole frames (at least 1)."""
        return max(1, round(seconds * self.fps))


@dataclass(frozen=True)
class Segment:
    """One piece of an object's motion plan over frames ``start_frame..end_frame`` (inclusive).

    ``kind`` is ``enter`` / ``leave`` (detail: the edge), ``move`` (detail: the
    direction), ``stop`` (came to rest after moving) or ``still`` (at rest from the
    start). Consecutive segments share their boundary frame.
    """

    kind: str
    detail: str
    start_frame: int
    end_frame: int


@dataclass(frozen=True)
class Event:
    """Something an object does, as expressions refer to it.

    ``kind``: ``move`` (detail: direction; a maximal run of motion that way),
    ``stop``, ``enter`` / ``leave`` (detail: edge), ``turn`` (detail ``"up>right"``:
    a run one way directly followed by a run another way; spans both runs).
    """

    obj_id: int
    kind: str
    detail: str
    start_frame: int
    end_frame: int

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


@dataclass(frozen=True)
class SceneObject:
    """One moving shape.

    Attributes:
        obj_id: 0-based index in the scene (the MeViS ``obj_id``).
        shape, color, size: attributes (``SHAPES``, ``COLORS_RGB`` keys, ``SIZES``).
        size_px: side of the square stamp the shape is drawn in.
        depth: draw order, 0 is the back.
        stamp: (size_px, size_px) bool, the shape's pixels.
        centers_xy: (T, 2) float32 stamp centre per frame; NaN when off screen.
        segments: the motion plan.
    """

    obj_id: int
    shape: str
    color: str
    size: str
    size_px: int
    depth: int
    stamp: np.ndarray
    centers_xy: np.ndarray
    segments: tuple[Segment, ...]

    def present(self) -> np.ndarray:
        """(T,) bool: frames where some of the shape is inside the frame (occlusion ignored)."""
        return ~np.isnan(self.centers_xy[:, 0])


@dataclass(frozen=True)
class Scene:
    """A generated video with exact ground truth.

    Attributes:
        video_id: name used in every written format.
        config: frame size, rate and length.
        background: (H, W, 3) uint8 RGB.
        objects: the shapes, ``objects[i].obj_id == i``.
        masks: (N, T, H, W) bool visible masks (occlusion applied).
        boxes_xyxy: (N, T, 4) float32 tight boxes of ``masks`` (x2/y2 exclusive), NaN when hidden.
        events: what the objects do, from their plans.
        expressions: referring expressions with truth (empty for detection-only scenes).
        hcstvg_index: index into ``expressions`` of the single-target query used for
            HC-STVG (-1 if none).
    """

    video_id: str
    config: SceneConfig
    background: np.ndarray
    objects: tuple[SceneObject, ...]
    masks: np.ndarray
    boxes_xyxy: np.ndarray
    events: tuple[Event, ...]
    expressions: tuple = field(default_factory=tuple)
    hcstvg_index: int = -1

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    def frame(self, frame_idx: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame: background, then objects back to front."""
        img = self.background.copy()
        for obj in sorted(self.objects, key=lambda o: o.depth):
            full = _full_mask(obj, frame_idx, self.config.height, self.config.width)
            img[full] = COLORS_RGB[obj.color]
        return img

    def visible_frames(self, obj_id: int) -> np.ndarray:
        """(K,) int64 frame indices where the object has visible pixels."""
        return np.flatnonzero(~np.isnan(self.boxes_xyxy[obj_id, :, 0]))

    def truth(self, expression) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per target: (frame_idx (K,), xyxy (K, 4), masks (K, H, W)) inside the span, visible frames only."""
        out = {}
        for oid in expression.target_ids:
            f = np.arange(expression.start_frame, expression.end_frame + 1)
            f = f[~np.isnan(self.boxes_xyxy[oid, f, 0])]
            out[oid] = (f, self.boxes_xyxy[oid, f].copy(), self.masks[oid, f].copy())
        return out


# ------------------------------------------------------------------ drawing


def make_stamp(shape: str, size_px: int) -> np.ndarray:
    """(size_px, size_px) bool mask of a shape centred in its square."""
    import cv2

    s = int(size_px)
    c = (s - 1) / 2
    if shape == "circle":
        yy, xx = np.mgrid[:s, :s]
        return (xx - c) ** 2 + (yy - c) ** 2 <= (s / 2) ** 2
    if shape == "square":
        return np.ones((s, s), dtype=bool)
    canvas = np.zeros((s, s), dtype=np.uint8)
    if shape == "triangle":
        pts = np.array([[round(c), 0], [0, s - 1], [s - 1, s - 1]], dtype=np.int32)
    elif shape == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, c, 0.45 * c)
        ang = -np.pi / 2 + k * np.pi / 5
        pts = np.stack([c + r * np.cos(ang), c + r * np.sin(ang)], axis=1).round().astype(np.int32)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    cv2.fillPoly(canvas, [pts], 1)
    return canvas.astype(bool)


def _top_left(cx: float, cy: float, s: int) -> tuple[int, int]:
    return math.floor(cx - s / 2 + 0.5), math.floor(cy - s / 2 + 0.5)


def _full_mask(obj: SceneObject, frame_idx: int, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the object's pixels in the frame ignoring occlusion (empty if absent)."""
    out = np.zeros((height, width), dtype=bool)
    cx, cy = obj.centers_xy[frame_idx]
    if np.isnan(cx):
        return out
    s = obj.size_px
    x0, y0 = _top_left(float(cx), float(cy), s)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, width), min(y0 + s, height)
    if xa < xb and ya < yb:
        out[ya:yb, xa:xb] = obj.stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


def render_masks(
    objects: Sequence[SceneObject], num_frames: int, height: int, width: int
) -> np.ndarray:
    """(N, T, H, W) bool visible masks: each object's pixels minus those of objects in front."""
    masks = np.zeros((len(objects), num_frames, height, width), dtype=bool)
    front_to_back = sorted(objects, key=lambda o: -o.depth)
    for t in range(num_frames):
        covered = np.zeros((height, width), dtype=bool)
        for obj in front_to_back:
            full = _full_mask(obj, t, height, width)
            masks[obj.obj_id, t] = full & ~covered
            covered |= full
    return masks


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, T, H, W) bool -> (N, T, 4) float32 tight xyxy boxes (x2/y2 exclusive), NaN if empty.

    The same convention as :func:`pipeline.geometry.mask_to_xyxy`, vectorised.
    """
    rows, cols = masks.any(axis=3), masks.any(axis=2)  # (N, T, H), (N, T, W)
    h, w = rows.shape[-1], cols.shape[-1]
    y1, x1 = rows.argmax(axis=-1), cols.argmax(axis=-1)
    y2, x2 = h - rows[..., ::-1].argmax(axis=-1), w - cols[..., ::-1].argmax(axis=-1)
    boxes = np.stack([x1, y1, x2, y2], axis=-1).astype(np.float32)
    boxes[~rows.any(axis=-1)] = np.nan
    return boxes


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 muted texture: smooth noise, a gradient or stripes, plus fine grain."""
    import cv2

    def muted() -> np.ndarray:
        return rng.uniform(60, 160) + rng.uniform(-25, 25, size=3)

    kind = rng.choice(["noise", "gradient", "stripes"])
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    if kind == "noise":
        cells = int(rng.integers(3, 8))
        low = np.stack([muted() for _ in range(cells * cells)]).reshape(cells, cells, 3)
        img = cv2.resize(low.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        theta = rng.uniform(0, np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        if kind == "gradient":
            w = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
        else:
            period = rng.uniform(16, 64) * min(width / 320, height / 240)
            w = 0.5 + 0.5 * np.sin(2 * np.pi * proj / max(period, 4.0))
        c1, c2 = muted(), muted()
        img = (1 - w)[..., None] * c1 + w[..., None] * c2
    img = img + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(img, 30, 190).round().astype(np.uint8)
