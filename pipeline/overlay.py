"""Burn track IDs into frames: the visual prompt the policy reads.

:class:`IdOverlay` keeps the style (what to draw, sizes, colours) and
:meth:`IdOverlay.annotate` takes the data (IDs, boxes, optional masks) of one
frame, always drawing on a copy. :func:`overlay_video_frame` draws every track
present at a time, using :meth:`pipeline.records.Track.boxes_at`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.geometry import nearest_index, rle_to_mask
from pipeline.records import Track

STYLES = ("number", "box+number", "contour+number")

# 12 well-separated colours (RGB); ID k uses PALETTE[(k - 1) % 12].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)


def id_color(track_id: int) -> tuple[int, int, int]:
    """The fixed RGB colour of an ID (the palette cycles every 12 IDs)."""
    return PALETTE[(int(track_id) - 1) % len(PALETTE)]


def _outline_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark outline around light text, light outline around dark text."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma >= 100 else (255, 255, 255)


def label_center(xyxy: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Where an object's number goes: (x, y) pixels.

    With a non-empty mask (as in STVG-R1): the middle row of the mask's vertical
    extent, at the mean x of the mask pixels on that row (the nearest row that has
    pixels if that one is empty). Otherwise the box centre.
    """
    if mask is not None:
        ys, xs = np.nonzero(mask)
        if ys.size:
            mid = (int(ys.min()) + int(ys.max())) // 2
            row = int(ys[np.argmin(np.abs(ys - mid))])
            return float(xs[ys == row].mean()), float(row)
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return (x1 + x2) / 2, (y1 + y2) / 2


class IdOverlay:
    """Draws ID numbers (and optionally boxes or mask contours) in one colour per ID.

    Args:
        style: one of ``STYLES``: ``"number"`` (the number at the object's centre, as in
            STVG-R1), ``"box+number"``, ``"contour+number"`` (mask contour; the box
            where an object has no mask).
        font_scale: OpenCV font scale; None = STVG-R1's (20/30)·(max(H, W)/336),
            floored at ``min_font_scale`` so numbers stay legible on tiny frames.
        min_font_scale: floor of the automatic font scale.
        color: one RGB colour for every ID (STVG-R1 draws all numbers red); None =
            :func:`id_color` per ID.
        min_relative_area: objects whose area (mask pixels, else box) is below this
            fraction of the frame's largest object are not drawn. STVG-R1 uses 1/3 to
            reduce clutter; the default 0.0 draws every object, because an unlabelled
            target can never be named by the model and small targets are common.
    """

    def __init__(
        self,
        style: str = "number",
        *,
        font_scale: float | None = None,
        min_font_scale: float = 0.35,
        color: tuple[int, int, int] | None = None,
        min_relative_area: float = 0.0,
    ):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if not 0.0 <= min_relative_area <= 1.0:
            raise ValueError(f"min_relative_area must be in [0, 1], got {min_relative_area}")
        if font_scale is not None and not font_scale > 0:
            raise ValueError(f"font_scale must be > 0, got {font_scale}")
        self.style = style
        self.font_scale = font_scale
        self.min_font_scale = float(min_font_scale)
        self.color = None if color is None else tuple(int(c) for c in color)
        self.min_relative_area = float(min_relative_area)

    def scale_for(self, height: int, width: int) -> float:
        """Font scale used on an (height, width) frame."""
        if self.font_scale is not None:
            return self.font_scale
        return max(self.min_font_scale, (20 / 30) * max(height, width) / 336)

    def annotate(
        self,
        image: np.ndarray,
        ids: np.ndarray,
        xyxy: np.ndarray,
        masks: np.ndarray | None = None,
    ) -> np.ndarray:
        """A new RGB uint8 image with the objects drawn; ``image`` is left unchanged.

        Args:
            image: (H, W, 3) uint8 RGB.
            ids: (N,) int track IDs.
            xyxy: (N, 4) float boxes in pixels.
            masks: (N, H, W) bool, or None; an all-False row means "no mask" for that object.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        ids = np.asarray(ids).reshape(-1).astype(int)
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        if len(ids) != len(boxes):
            raise ValueError(f"{len(ids)} ids but {len(boxes)} boxes")
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.shape != (len(ids), h, w):
                raise ValueError(f"masks must have shape {(len(ids), h, w)}, got {masks.shape}")
        out = image.copy()
        if len(ids) == 0:
            return out
        has_mask = (
            masks.reshape(len(ids), -1).any(axis=1)
            if masks is not None
            else np.zeros(len(ids), bool)
        )
        areas = np.array(
            [
                masks[i].sum() if has_mask[i] else max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
                for i, b in enumerate(boxes)
            ],
            dtype=np.float64,
        )
        keep = areas >= self.min_relative_area * areas.max()
        line = max(1, round(max(h, w) / 320))
        for i in np.flatnonzero(keep):  # shapes first, so every number stays on top
            color = self.color or id_color(ids[i])
            if self.style == "contour+number" and has_mask[i]:
                contours, _ = cv2.findContours(
                    masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
                )
                cv2.drawContours(out, contours, -1, color, line, cv2.LINE_AA)
            elif self.style != "number":
                p1 = (round(boxes[i, 0]), round(boxes[i, 1]))
                p2 = (round(boxes[i, 2]) - 1, round(boxes[i, 3]) - 1)
                cv2.rectangle(out, p1, p2, color, line, cv2.LINE_AA)
        scale = self.scale_for(h, w)
        thickness = max(1, round(2 * scale))
        for i in np.flatnonzero(keep):
            cx, cy = label_center(boxes[i], masks[i] if has_mask[i] else None)
            self._put_number(
                out, str(ids[i]), cx, cy, scale, thickness, self.color or id_color(ids[i])
            )
        return out

    @staticmethod
    def _put_number(img, text, cx, cy, scale, thickness, color) -> None:
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
        # text box centred on (cx, cy), moved inside the frame: an object entering or
        # leaving is a sliver at the border, and half a numeral is not a readable ID
        h, w = img.shape[:2]
        pad = thickness + 1  # the outline's width
        x = min(max(cx - tw / 2, pad), w - tw - pad)
        y = min(max(cy + th / 2, th + pad), h - pad)
        org = (round(x), round(y))
        outline = _outline_color(color)
        cv2.putText(img, text, org, font, scale, outline, thickness + 2, cv2.LINE_AA)
        cv2.putText(img, text, org, font, scale, color, thickness, cv2.LINE_AA)


def overlay_video_frame(
    image: np.ndarray,
    tracks: Sequence[Track],
    time_s: float,
    max_gap_s: float,
    overlay: IdOverlay,
) -> np.ndarray:
    """Draw every track present at ``time_s`` on a copy of ``image`` (stored frame size).

    Boxes are interpolated (:meth:`Track.boxes_at`); a track's mask comes from its
    observed frame nearest to ``time_s`` (within ``max_gap_s``), when it has one.
    """
    h, w = image.shape[:2]
    ids, boxes, masks = [], [], []
    any_mask = False
    for tr in tracks:
        box = tr.boxes_at(np.array([time_s]), max_gap_s)[0]
        if np.isnan(box).any():
            continue
        mask = np.zeros((h, w), dtype=bool)
        if tr.masks_rle is not None:
            j = int(nearest_index(tr.times_s, np.array([time_s]), max_gap_s)[0])
            if j >= 0 and tr.masks_rle[j] is not None:
                mask = rle_to_mask(tr.masks_rle[j], h, w)
                any_mask = True
        ids.append(tr.id)
        boxes.append(box)
        masks.append(mask)
    if not ids:
        return image.copy()
    return overlay.annotate(
        image, np.array(ids), np.stack(boxes), np.stack(masks) if any_mask else None
    )
