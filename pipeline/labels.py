"""Legible ID labels: colour against the local background, and places that never overlap.

Contrast follows WCAG 2: relative luminance of sRGB colours and the ratio
``(L_light + 0.05) / (L_dark + 0.05)``; 4.5 is the threshold for normal text. A label's
background is the mean colour of the frame under its rectangle before anything is
drawn; its text colour is the ID's palette colour moved towards white or black until the
ratio is at least ``min_contrast``, and its outline is the opposite extreme (black
around light text, white around dark text).

:func:`place_labels` puts each label at its object's centre when that spot is free,
otherwise elsewhere inside the object's box, then beside the box (drawn with a leader
line to the object), then at the nearest free spot of the frame; no two label
rectangles ever intersect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0-255 channels), in [0, 1]."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours, in [1, 21]."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def legible_color(base, background, min_contrast: float = 4.5) -> tuple[int, int, int]:
    """``base`` mixed towards white or black (the side with more room) just enough to reach
    ``min_contrast`` against ``background``; every background reaches 4.5 with one of them."""
    base = np.asarray(base, np.float64)
    if contrast_ratio(base, background) >= min_contrast:
        return tuple(int(v) for v in base)
    targets = sorted((WHITE, BLACK), key=lambda t: -contrast_ratio(t, background))
    for target in targets:
        for w in np.linspace(0.05, 1.0, 20):
            c = np.round((1 - w) * base + w * np.asarray(target, np.float64))
            if contrast_ratio(c, background) >= min_contrast:
                return tuple(int(v) for v in c)
    return targets[0]


def outline_color(text_rgb) -> tuple[int, int, int]:
    """Black around light text, white around dark text (the larger contrast)."""
    return BLACK if contrast_ratio(text_rgb, BLACK) >= contrast_ratio(text_rgb, WHITE) else WHITE


@dataclass(frozen=True)
class Placement:
    """Where one label goes: its rectangle (x1, y1, x2, y2, exclusive ends) and whether it
    sits outside its object (then a leader line joins it to the object)."""

    rect: tuple[int, int, int, int]
    leader: bool


def _free(rect, placed: Sequence[tuple[int, int, int, int]], gap: int) -> bool:
    x1, y1, x2, y2 = rect
    return all(
        x1 >= b[2] + gap or b[0] >= x2 + gap or y1 >= b[3] + gap or b[1] >= y2 + gap for b in placed
    )


def clamped_rect(cx: float, cy: float, size, frame_wh) -> tuple[int, int, int, int]:
    """A (width, height) ``size`` rectangle centred on (cx, cy), moved inside the frame."""
    w, h = size
    fw, fh = frame_wh
    x1 = round(min(max(cx - w / 2, 0), fw - w))
    y1 = round(min(max(cy - h / 2, 0), fh - h))
    return (x1, y1, x1 + w, y1 + h)


def _inside(anchor, size, box) -> list[tuple[float, float]]:
    """Label centres: the anchor, then (when the label fits in ``box``) the box's corners,
    side middles and centre."""
    w, h = size
    bx1, by1, bx2, by2 = box
    xs = [bx1 + w / 2, (bx1 + bx2) / 2, bx2 - w / 2]
    ys = [by1 + h / 2, (by1 + by2) / 2, by2 - h / 2]
    fits = bx2 - bx1 >= w and by2 - by1 >= h
    return [anchor] + ([(x, y) for y in ys for x in xs] if fits else [])


def _beside(size, box, ring: int, gap: int) -> list[tuple[float, float]]:
    """Label centres around ``box`` at ``ring`` label heights away: above, below, left, right,
    then the corners."""
    w, h = size
    bx1, by1, bx2, by2 = box
    cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
    d = gap + (ring - 1) * h
    up, down = by1 - d - h / 2, by2 + d + h / 2
    left, right = bx1 - d - w / 2, bx2 + d + w / 2
    return [
        (cx, up),
        (cx, down),
        (left, cy),
        (right, cy),
        (left, up),
        (right, up),
        (left, down),
        (right, down),
    ]


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[int, int]],
    boxes: np.ndarray,
    frame_wh: tuple[int, int],
    gap: int = 1,
    rings: int = 3,
) -> list[Placement | None]:
    """Non-overlapping label rectangles, one per object, in the given order of priority.

    Args:
        anchors: (x, y) preferred label centre per object (its mask or box centre).
        sizes: (width, height) of each label's rectangle (text plus outline).
        boxes: (N, 4) object boxes.
        frame_wh: (width, height); every rectangle lies inside the frame.
        gap: least free pixels between two rectangles.
        rings: how far beside the box to look, in label heights.

    Returns:
        One :class:`Placement` per object, or None for a label larger than the frame or
        one for which the frame has no free spot left.
    """
    fw, fh = frame_wh
    placed: list[tuple[int, int, int, int]] = []
    out: list[Placement | None] = []
    for anchor, size, box in zip(anchors, sizes, np.asarray(boxes, np.float64).reshape(-1, 4)):
        if size[0] > fw or size[1] > fh:
            out.append(None)
            continue
        found = None
        for spot in _inside(anchor, size, box):
            rect = clamped_rect(*spot, size, frame_wh)
            if _free(rect, placed, gap):
                found = Placement(rect, leader=False)
                break
        for ring in range(1, rings + 1):
            if found is not None:
                break
            for spot in _beside(size, box, ring, gap + 1):
                rect = clamped_rect(*spot, size, frame_wh)
                if _free(rect, placed, gap):
                    found = Placement(rect, leader=True)
                    break
        if found is None:
            found = _nearest_free(anchor, size, frame_wh, placed, gap)
        out.append(found)
        if found is not None:
            placed.append(found.rect)
    return out


def _nearest_free(anchor, size, frame_wh, placed, gap) -> Placement | None:
    """The free spot of the frame nearest to ``anchor`` (a grid of half-label steps)."""
    w, h = size
    fw, fh = frame_wh
    xs = np.arange(0, fw - w + 1, max(1, w // 2))
    ys = np.arange(0, fh - h + 1, max(1, h // 2))
    spots = [(x, y) for y in ys for x in xs]
    spots.sort(key=lambda p: (p[0] + w / 2 - anchor[0]) ** 2 + (p[1] + h / 2 - anchor[1]) ** 2)
    for x, y in spots:
        rect = (int(x), int(y), int(x) + w, int(y) + h)
        if _free(rect, placed, gap):
            return Placement(rect, leader=True)
    return None


def rects_intersect(a, b) -> bool:
    """Whether two (x1, y1, x2, y2) rectangles (exclusive ends) share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
