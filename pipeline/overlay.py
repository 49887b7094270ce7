"""Burn track IDs into frames: the visual prompt the policy reads.

:class:`IdOverlay` keeps the style (what to draw, sizes, colours) and
:meth:`IdOverlay.annotate` takes the data (IDs, boxes, optional masks) of one
frame, always drawing on a copy. Numbers are legible (:mod:`pipeline.labels`): a
colour with WCAG contrast >= 4.5 against the frame under the label, an outline of the
opposite extreme, and places that never overlap; ``"stvg-r1"`` draws STVG-R1's plain
red number at the mask centre instead, for ablations. :func:`overlay_video_frame` draws
every track seen at a time, using :meth:`pipeline.records.Track.boxes_at`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.geometry import nearest_index, rle_to_mask
from pipeline.labels import (
    Placement,
    legible_color,
    outline_color,
    place_labels,
)
from pipeline.records import Track

STYLES = ("number", "box+number", "contour+number", "stvg-r1")
STVG_R1_RED = (255, 0, 0)

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
        style: one of ``STYLES``: ``"number"`` (the number at the object's centre, moved
            where it would cover another), ``"box+number"``, ``"contour+number"`` (mask
            contour; the box where an object has no mask), ``"stvg-r1"`` (STVG-R1's look:
            a red number whose text starts (bottom-left) at the mask centre, stroke
            ``max(2, int(2 * scale))``, no outline, no moving, objects under 1/3 of the
            frame's largest not labelled).
        font_scale: OpenCV font scale; None = STVG-R1's (20/30)·(max(H, W)/336),
            floored at ``min_font_scale`` so numbers stay legible on tiny frames; a
            label taller than 60% of its object shrinks towards the floor.
        min_font_scale: floor of the automatic font scale.
        color: one RGB colour for every ID (``"stvg-r1"``: red); None = :func:`id_color`
            per ID. Except for ``"stvg-r1"`` it is moved towards white or black where
            needed for contrast.
        min_contrast: least WCAG contrast ratio of a number against the frame under it.
        min_relative_area: objects whose area (mask pixels, else box) is below this
            fraction of the frame's largest object are not drawn. None = STVG-R1's 1/3
            for ``"stvg-r1"`` (to reduce clutter), else 0.0: every object is drawn,
            because an unlabelled target can never be named by the model and small
            targets are common.
    """

    def __init__(
        self,
        style: str = "number",
        *,
        font_scale: float | None = None,
        min_font_scale: float = 0.35,
        color: tuple[int, int, int] | None = None,
        min_relative_area: float | None = None,
        min_contrast: float = 4.5,
    ):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if min_relative_area is None:
            min_relative_area = 1 / 3 if style == "stvg-r1" else 0.0
        if not 0.0 <= min_relative_area <= 1.0:
            raise ValueError(f"min_relative_area must be in [0, 1], got {min_relative_area}")
        if font_scale is not None and not font_scale > 0:
            raise ValueError(f"font_scale must be > 0, got {font_scale}")
        self.style = style
        self.font_scale = font_scale
        self.min_font_scale = float(min_font_scale)
        if color is None and style == "stvg-r1":
            color = STVG_R1_RED
        self.color = None if color is None else tuple(int(c) for c in color)
        self.min_relative_area = float(min_relative_area)
        self.min_contrast = float(min_contrast)

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
            elif self.style in ("box+number", "contour+number"):
                p1 = (round(boxes[i, 0]), round(boxes[i, 1]))
                p2 = (round(boxes[i, 2]) - 1, round(boxes[i, 3]) - 1)
                cv2.rectangle(out, p1, p2, color, line, cv2.LINE_AA)
        labels = self.layout(out, ids, boxes, masks, keep=keep)  # contrast vs what is drawn
        for label in labels:  # leaders first, so no line crosses a number
            _draw_leader(out, label)
        for label in labels:
            _draw_text(out, label)
        return out

    def layout(self, image, ids, boxes, masks=None, keep=None) -> list[Label]:
        """The labels :meth:`annotate` draws: text, place, colours (``keep``: which objects)."""
        h, w = image.shape[:2]
        ids = np.asarray(ids).reshape(-1).astype(int)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        keep = np.ones(len(ids), bool) if keep is None else np.asarray(keep, bool)
        idx = np.flatnonzero(keep)
        if not idx.size:
            return []
        base = self.scale_for(h, w)
        anchors, sizes, metrics = [], [], []
        for i in idx:
            has = masks is not None and masks[i].any()
            anchors.append(label_center(boxes[i], masks[i] if has else None))
            scale = base if self.style == "stvg-r1" else self._fit_scale(base, boxes[i])
            # an outlined 1 px anti-aliased stroke is all blend: it never shows its colour
            if self.style == "stvg-r1":
                thickness = max(2, int(2 * scale))  # as STVG-R1 draws it
            else:
                thickness = max(2, round(2 * scale))
            (tw, th), base_line = cv2.getTextSize(str(ids[i]), _FONT, scale, thickness)
            pad = 0 if self.style == "stvg-r1" else thickness + 1  # the outline
            sizes.append((tw + 2 * pad, th + base_line + 2 * pad))
            metrics.append((scale, thickness, pad, th))
        if self.style == "stvg-r1":  # the text's bottom-left at the centre, overlaps allowed
            places = []
            for (ax, ay), (tw, th_all), (_, _, _, th) in zip(anchors, sizes, metrics):
                x1, y1 = round(ax), round(ay) - th
                places.append(Placement((x1, y1, x1 + tw, y1 + th_all), False))
        else:  # smaller objects first: they have fewer free spots inside themselves
            area = (boxes[idx, 2] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 1])
            order = np.lexsort((ids[idx], area))
            placed = place_labels(
                [anchors[k] for k in order], [sizes[k] for k in order], boxes[idx][order], (w, h)
            )
            places = [None] * len(idx)
            for k, p in zip(order, placed):
                places[k] = p
        labels = []
        for k, i in enumerate(idx):
            if places[k] is None:
                continue
            x1, y1, x2, y2 = places[k].rect
            color = self.color or id_color(ids[i])
            if self.style == "stvg-r1":
                text_rgb, outline = color, None
            else:
                background = image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
                text_rgb = legible_color(color, background, self.min_contrast)
                outline = outline_color(text_rgb)
            scale, thickness, pad, th = metrics[k]
            labels.append(
                Label(
                    int(ids[i]), places[k].rect, (x1 + pad, y1 + pad + th), scale, thickness,
                    text_rgb, outline, anchors[k] if places[k].leader else None,
                )
            )  # fmt: skip
        return labels

    def _fit_scale(self, base: float, box: np.ndarray) -> float:
        """``base``, shrunk (not under ``min_font_scale``) so the text is at most 60% of the
        object's height."""
        if self.font_scale is not None:
            return base
        _, th = cv2.getTextSize("0", _FONT, 1.0, 2)[0]
        fit = 0.6 * max(float(box[3] - box[1]), 0.0) / th
        return max(self.min_font_scale, min(base, fit))


_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Label:
    """One drawn number: ``rect`` (x1, y1, x2, y2) holds text and outline; ``origin`` is
    OpenCV's text origin; ``leader`` the object point a leader line joins (None inside)."""

    track_id: int
    rect: tuple[int, int, int, int]
    origin: tuple[int, int]
    scale: float
    thickness: int
    text_rgb: tuple[int, int, int]
    outline_rgb: tuple[int, int, int] | None
    leader: tuple[float, float] | None


def _draw_leader(img: np.ndarray, label: Label) -> None:
    """A line from the object to the nearest point of its label's rectangle."""
    if label.leader is None:
        return
    x1, y1, x2, y2 = label.rect
    end = (min(max(label.leader[0], x1), x2 - 1), min(max(label.leader[1], y1), y2 - 1))
    a, b = (round(label.leader[0]), round(label.leader[1])), (round(end[0]), round(end[1]))
    cv2.line(img, a, b, label.outline_rgb, 3, cv2.LINE_AA)
    cv2.line(img, a, b, label.text_rgb, 1, cv2.LINE_AA)


def _draw_text(img: np.ndarray, label: Label) -> None:
    text = str(label.track_id)
    if label.outline_rgb is not None:
        cv2.putText(
            img, text, label.origin, _FONT, label.scale, label.outline_rgb,
            label.thickness + 2, cv2.LINE_AA,
        )  # fmt: skip
    cv2.putText(
        img, text, label.origin, _FONT, label.scale, label.text_rgb, label.thickness, cv2.LINE_AA
    )


def overlay_video_frame(
    image: np.ndarray,
    tracks: Sequence[Track],
    time_s: float,
    max_gap_s: float,
    overlay: IdOverlay,
    max_unseen_s: float | None = None,
) -> np.ndarray:
    """Draw every track present at ``time_s`` on a copy of ``image`` (stored frame size),
    as :func:`tracks_at` selects them."""
    h, w = image.shape[:2]
    ids, boxes, masks = tracks_at(tracks, time_s, max_gap_s, (h, w), max_unseen_s)
    if not len(ids):
        return image.copy()
    return overlay.annotate(image, ids, boxes, masks)


def tracks_at(
    tracks: Sequence[Track],
    time_s: float,
    max_gap_s: float,
    frame_hw: tuple[int, int],
    max_unseen_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """IDs (N,), boxes (N, 4) and masks ((N, H, W) or None) of the tracks drawn at ``time_s``.

    Boxes are interpolated (:meth:`Track.boxes_at`); a track's mask comes from its
    observed frame nearest to ``time_s`` (within ``max_gap_s``), when it has one. With
    ``max_unseen_s``, a track is drawn only if it was observed (detected, or continued
    to the frame border) within that many seconds of ``time_s``: across a gap (the
    object hidden behind another, a missed detection) no number is drawn where nothing
    may be visible.
    """
    h, w = frame_hw
    ids, boxes, masks = [], [], []
    any_mask = False
    at = np.array([time_s])
    for tr in tracks:
        box = tr.boxes_at(at, max_gap_s)[0]
        if np.isnan(box).any():
            continue
        if max_unseen_s is not None and nearest_index(tr.times_s, at, max_unseen_s)[0] < 0:
            continue
        mask = np.zeros((h, w), dtype=bool)
        if tr.masks_rle is not None:
            j = int(nearest_index(tr.times_s, at, max_gap_s)[0])
            if j >= 0 and tr.masks_rle[j] is not None:
                mask = rle_to_mask(tr.masks_rle[j], h, w)
                any_mask = True
        ids.append(tr.id)
        boxes.append(box)
        masks.append(mask)
    return (
        np.array(ids, dtype=np.int64),
        np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
        np.stack(masks) if any_mask else None,
    )
