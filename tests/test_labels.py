"""Legible labels: WCAG contrast, placement without overlaps, and crowd frames of the hard split."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.labels import (
    contrast_ratio,
    legible_color,
    outline_color,
    place_labels,
    rects_intersect,
    relative_luminance,
)
from pipeline.overlay import PALETTE, IdOverlay
from pipeline.synthetic.hard import make_hard_scene


def test_wcag_definitions():
    assert relative_luminance((255, 255, 255)) == pytest.approx(1.0)
    assert relative_luminance((0, 0, 0)) == 0.0
    assert contrast_ratio((255, 255, 255), (0, 0, 0)) == pytest.approx(21.0)
    assert contrast_ratio((119, 119, 119), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)


def test_every_palette_colour_is_made_legible_on_any_background():
    rng = np.random.default_rng(0)
    for bg in [*rng.integers(0, 256, size=(60, 3)), (118, 118, 118), (0, 0, 0), (255, 255, 255)]:
        for base in PALETTE:
            c = legible_color(base, bg)
            assert contrast_ratio(c, bg) >= 4.5
            assert contrast_ratio(c, outline_color(c)) >= 4.5
    # already legible: unchanged
    assert legible_color((255, 225, 25), (0, 0, 0)) == (255, 225, 25)


def test_crowded_labels_never_overlap_and_stay_in_the_frame():
    rng = np.random.default_rng(1)
    centres = rng.uniform(10, 110, size=(25, 2))
    boxes = np.concatenate([centres - 6, centres + 6], axis=1)  # 25 small boxes in 120x120
    sizes = [(14, 12)] * 25
    places = place_labels([tuple(c) for c in centres], sizes, boxes, (120, 120))
    rects = [p.rect for p in places]
    assert all(p is not None for p in places)
    for i, a in enumerate(rects):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= 120 and a[3] <= 120
        assert not any(rects_intersect(a, b) for b in rects[i + 1 :])
    # an uncrowded label stays on its object, without a leader
    (alone,) = place_labels([(50, 50)], [(14, 12)], np.array([[30, 30, 70, 70]]), (120, 120))
    assert alone.rect == (43, 44, 57, 56) and not alone.leader


@pytest.mark.parametrize("seed", [0, 1])
def test_crowd_frames_have_separate_legible_labels(seed):
    """Every stored frame (2 fps) of a crowd scene (15-18 objects): no two drawn labels
    intersect, and each number's WCAG contrast against the frame under it is >= 4.5."""
    scene = make_hard_scene("crowd", seed)
    assert len(scene.objects) >= 15
    ov = IdOverlay("number")
    step = round(scene.config.fps / 2)
    for f in range(0, scene.num_frames, step):
        img = scene.frame(f)
        seen = [o.obj_id for o in scene.objects if not np.isnan(scene.boxes_xyxy[o.obj_id, f, 0])]
        ids = np.array(seen) + 1
        labels = ov.layout(img, ids, scene.boxes_xyxy[seen, f], scene.masks[seen, f])
        out = ov.annotate(img, ids, scene.boxes_xyxy[seen, f], scene.masks[seen, f])
        assert sorted(lb.track_id for lb in labels) == sorted(ids.tolist())
        for i, lb in enumerate(labels):
            assert not any(rects_intersect(lb.rect, other.rect) for other in labels[i + 1 :])
            x1, y1, x2, y2 = lb.rect
            background = img[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
            assert contrast_ratio(lb.text_rgb, background) >= 4.5, (f, lb)
            drawn = out[y1:y2, x1:x2].reshape(-1, 3).astype(int)
            assert np.abs(drawn - lb.text_rgb).sum(axis=1).min() <= 30  # the text is there
