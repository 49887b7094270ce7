"""ID overlays: golden images per style, plus properties (input untouched, colours, centres).

Regenerate the golden PNGs after an intended change with ``UPDATE_GOLDEN=1 pytest tests/test_overlay.py``
and look at them before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.geometry import mask_to_rle
from pipeline.labels import contrast_ratio
from pipeline.overlay import STYLES, IdOverlay, id_color, label_center, overlay_video_frame
from pipeline.records import Track

GOLDEN = Path(__file__).parent / "golden"
H, W = 72, 96
BOXES = np.array([[8, 10, 40, 40], [52, 28, 90, 66]], dtype=np.float32)
IDS = np.array([1, 2])


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A grey 96x72 frame with a yellow square (ID 1) and a dark disc (ID 2) and their masks."""
    img = np.full((H, W, 3), 128, np.uint8)
    masks = np.zeros((2, H, W), bool)
    masks[0, 10:40, 8:40] = True
    yy, xx = np.mgrid[:H, :W]
    masks[1] = (xx - 71) ** 2 + (yy - 47) ** 2 < 18**2
    img[masks[0]] = (220, 200, 40)
    img[masks[1]] = (30, 30, 60)
    return img, masks


def nearest_color_distance(img: np.ndarray, center, color, radius: int = 5) -> float:
    """Smallest RGB distance to ``color`` inside a square window around ``center``."""
    cx, cy = round(center[0]), round(center[1])
    win = img[max(cy - radius, 0) : cy + radius + 1, max(cx - radius, 0) : cx + radius + 1]
    return float(np.linalg.norm(win.astype(float) - np.array(color, float), axis=-1).min())


@pytest.mark.parametrize("style", STYLES)
def test_golden(style):
    img, masks = scene()
    out = IdOverlay(style).annotate(img, IDS, BOXES, masks)
    path = GOLDEN / f"overlay_{style.replace('+', '_')}.png"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        cv2.imwrite(str(path), out[:, :, ::-1])
    golden = cv2.imread(str(path))
    assert golden is not None, f"missing {path}; run with UPDATE_GOLDEN=1 to create it"
    diff = np.abs(out.astype(float) - golden[:, :, ::-1].astype(float)).mean()
    assert diff < 1.0, f"{style}: mean abs diff {diff:.2f} vs {path.name}"


@pytest.mark.parametrize("style", [s for s in STYLES if s != "stvg-r1"])
def test_input_unchanged_and_legible_ids_at_the_centre(style):
    img, masks = scene()
    before = img.copy()
    ov = IdOverlay(style)
    out = ov.annotate(img, IDS, BOXES, masks)
    assert np.array_equal(img, before) and out is not img
    # centres: square mask rows 10..39 -> middle row (10 + 39) // 2 = 24, x mean of 8..39 = 23.5;
    # disc centred at (71, 47): middle row 47, mean x 71.
    labels = ov.layout(img, IDS, BOXES, masks)
    assert [lb.track_id for lb in labels] == [1, 2]
    for label, center in zip(labels, [(23.5, 24), (71, 47)]):
        x1, y1, x2, y2 = label.rect
        assert x1 <= center[0] <= x2 and y1 <= center[1] <= y2 and label.leader is None
        assert nearest_color_distance(out, center, label.text_rgb) < 40  # drawn there
        background = img[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
        assert contrast_ratio(label.text_rgb, background) >= 4.5
        assert contrast_ratio(label.text_rgb, label.outline_rgb) >= 4.5
    changed = np.abs(out.astype(int) - img.astype(int)).sum(-1) > 0
    assert not changed[:, :4].any()  # nothing drawn far from the objects
    assert changed[5:15, 20:28].any() == (style != "number")  # the square's top edge: outlined


def test_stvg_r1_style_is_a_red_number_at_the_mask_centre():
    img, masks = scene()
    out = IdOverlay("stvg-r1").annotate(img, IDS, BOXES, masks)
    for center in [(23.5, 24), (71, 47)]:
        assert nearest_color_distance(out, center, (255, 0, 0)) < 40
        assert nearest_color_distance(img, center, (255, 0, 0)) > 100  # not there before
    # no outline: every changed pixel is a blend of red and what was there (anti-aliasing)
    changed = np.abs(out.astype(int) - img.astype(int)).sum(-1) > 0
    p, b = out[changed].astype(float), img[changed].astype(float)
    r = np.array([255.0, 0, 0]) - b
    a = ((p - b) * r).sum(1) / (r * r).sum(1)
    assert changed.sum() > 20 and np.abs(p - b - a[:, None] * r).max() < 12
    # as STVG-R1 draws it: the text starts (bottom-left) at the centre, stroke >= 2, and
    # objects under 1/3 of the largest are not labelled unless asked
    ov = IdOverlay("stvg-r1")
    labels = ov.layout(img, IDS, BOXES, masks)
    assert [lb.origin for lb in labels] == [(24, 24), (71, 47)]
    assert all(lb.thickness >= 2 for lb in labels)
    small = np.array([[8, 10, 40, 40], [60, 50, 66, 56]], np.float32)
    drawn = IdOverlay("stvg-r1").annotate(img, IDS, small)
    assert nearest_color_distance(drawn, (63, 53), (255, 0, 0)) > 100
    assert IdOverlay("stvg-r1", min_relative_area=0.0).min_relative_area == 0.0


def test_label_center_rules():
    # L-shape: rows 0..9 -> middle row 4; row 4 has pixels x = 2..5 -> mean 3.5
    m = np.zeros((12, 12), bool)
    m[0:10, 2:6] = True
    m[8:10, 2:11] = True
    assert label_center(np.array([2, 0, 11, 10]), m) == (3.5, 4.0)
    # ring with an empty middle row: rows 0..4 with row 2 empty -> the nearest non-empty row (1)
    ring = np.zeros((6, 6), bool)
    ring[[0, 1, 3, 4], 1:3] = True
    assert label_center(np.array([1, 0, 3, 5]), ring) == (1.5, 1.0)
    # no mask (or an empty one): the box centre
    assert label_center(np.array([10, 20, 30, 60])) == (20.0, 40.0)
    assert label_center(np.array([10, 20, 30, 60]), np.zeros((70, 70), bool)) == (20.0, 40.0)


def test_font_scale_and_palette():
    ov = IdOverlay()
    assert ov.scale_for(336, 448) == pytest.approx((20 / 30) * 448 / 336)  # 0.889
    assert ov.scale_for(H, W) == 0.35  # (20/30)·96/336 = 0.19, floored for legibility
    assert IdOverlay(font_scale=1.5).scale_for(H, W) == 1.5
    assert id_color(1) != id_color(2) and id_color(1) == id_color(13)
    # one colour for all IDs, moved towards white or black only as far as contrast needs
    (label,) = IdOverlay(color=(255, 0, 0)).layout(scene()[0], [2], BOXES[1:])
    assert label.text_rgb[0] > label.text_rgb[1] == label.text_rgb[2]
    # a label taller than 60% of a small object shrinks, not under the floor
    big = IdOverlay(min_font_scale=0.5)
    assert big._fit_scale(2.0, np.array([0, 0, 100, 200])) == 2.0
    assert big._fit_scale(2.0, np.array([0, 0, 10, 10])) == 0.5
    with pytest.raises(ValueError, match="style"):
        IdOverlay("arrows")


def test_min_relative_area_skips_small_objects():
    # box areas (no masks given): 32x30 = 960, 38x38 = 1444, tiny 4x4 = 16 < 1444 / 3 = 481
    img, _ = scene()
    boxes = np.vstack([BOXES, [[2, 60, 6, 64]]])
    out = IdOverlay("box+number", min_relative_area=1 / 3).annotate(img, [1, 2, 3], boxes)
    assert np.array_equal(out[58:66, 0:8], img[58:66, 0:8])
    out_all = IdOverlay("box+number").annotate(img, [1, 2, 3], boxes)
    assert not np.array_equal(out_all[58:66, 0:8], img[58:66, 0:8])


def test_overlay_video_frame_uses_interpolated_boxes_and_nearest_masks():
    img, masks = scene()
    # Track 1 observed at t=0 and t=1 s, 10 px apart: at t=0.5 its box is halfway.
    t1 = Track(1, "square", [0.0, 1.0], [BOXES[0], BOXES[0] + [10, 0, 10, 0]])
    # Track 2 has a mask at t=0.3 only; 0.3 is nearer to 0.5 than 0.8, so that mask is used.
    t2 = Track(2, "disc", [0.3, 0.8], [BOXES[1]] * 2, masks_rle=[mask_to_rle(masks[1]), None])
    t3 = Track(3, "square", [5.0, 6.0], [BOXES[0], BOXES[0]])  # not present at t=0.5
    ov = IdOverlay("contour+number")
    out = overlay_video_frame(img, [t1, t2, t3], 0.5, 1.0, ov)
    mask_rows = np.stack([np.zeros((H, W), bool), masks[1]])
    expected = ov.annotate(img, [1, 2], np.stack([BOXES[0] + [5, 0, 5, 0], BOXES[1]]), mask_rows)
    assert np.array_equal(out, expected)
    assert np.array_equal(overlay_video_frame(img, [t3], 0.5, 1.0, ov), img)


@pytest.mark.parametrize(
    "sliver",
    [[0, 30, 3, 50], [93, 30, 96, 50], [40, 0, 60, 2], [40, 70, 60, 72], [0, 0, 2, 2]],
    ids=["left", "right", "top", "bottom", "corner"],
)
def test_numbers_on_border_slivers_stay_whole(sliver):
    # An object entering or leaving is a few pixels at the border. Its number, centred on
    # the sliver, would be cut in half; it is moved inside so all of it is drawn: as many
    # pixels change as for the same number in the middle of the frame.
    blank = np.full((H, W, 3), 128, np.uint8)
    overlay = IdOverlay(style="number")

    def changed(box) -> np.ndarray:
        out = overlay.annotate(blank, np.array([7]), np.array([box], np.float32))
        return (out != blank).any(axis=2)

    middle, edge = changed([38, 26, 58, 46]), changed(sliver)
    assert edge.sum() == middle.sum() > 0
    ys, xs = np.nonzero(edge)
    assert ys.min() > 0 and xs.min() > 0 and ys.max() < H - 1 and xs.max() < W - 1
