"""Masks from box prompts: the SAM 2 loading path (a model built without weights, nothing
downloaded), and masks flowing from the detector into tracks."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.masks as masks_mod
from pipeline.config import PreprocessConfig
from pipeline.geometry import rle_to_mask
from pipeline.masks import BoxPromptSegmenter, resolve_sam_weights


def test_missing_sam_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(masks_mod, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded") as err:
        resolve_sam_weights("sam2.1_b.pt")
    assert str(tmp_path / "sam2.1_b.pt") in str(err.value)
    (tmp_path / "sam2.1_b.pt").write_bytes(b"x")
    assert resolve_sam_weights("sam2.1_b.pt") == tmp_path / "sam2.1_b.pt"


def test_sam2_settings_are_checked():
    with pytest.raises(ValueError, match="sam-weights"):
        PreprocessConfig(masks="sam2")
    with pytest.raises(ValueError, match="sam-weights"):
        PreprocessConfig(sam_weights="data/models/sam2.1_b.pt")
    cfg = PreprocessConfig(masks="sam2", sam_weights="data/models/sam2.1_b.pt")
    assert cfg.masks == "sam2"


def test_the_sam2_file_is_part_of_the_folder_identity(tmp_path):
    weights = tmp_path / "sam2.1_b.pt"
    weights.write_bytes(b"one")
    cfg = PreprocessConfig(masks="sam2", sam_weights=str(weights))
    before = cfg.hash()
    assert "sam_weights_sha256" in cfg.identity()
    assert "sam_weights_sha256" not in PreprocessConfig().identity()
    weights.write_bytes(b"other bytes")  # same path, another model: other rows
    assert cfg.hash() != before


def test_segmenter_masks_flow_from_detection_into_tracks(detection_only_weights):
    from pipeline.detect import Detector
    from pipeline.synthetic import make_scene
    from pipeline.track import TrackerConfig, track_frames

    calls = []

    def box_filler(image, boxes):  # what a box-prompt segmenter returns, here the boxes
        calls.append(len(boxes))
        m = np.zeros((len(boxes), *image.shape[:2]), bool)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
            m[i, y1:y2, x1:x2] = True
        return m

    scene = make_scene(20240611, with_expressions=False)
    det = Detector(detection_only_weights, conf=0.1, iou=0.5, segmenter=box_filler)
    assert not det.has_masks  # a detection checkpoint: the segmenter gives the masks
    frames = [(t / scene.config.fps, scene.frame(t)) for t in range(6)]
    tracks = track_frames(iter(frames), det, TrackerConfig(), scene.config.fps)
    assert calls and tracks
    h, w = scene.config.height, scene.config.width
    for tr in tracks:
        assert tr.masks_rle is not None
        for box, rle in zip(tr.xyxy, tr.masks_rle):
            if rle is None:  # a frame continued to the border has no mask
                continue
            m = rle_to_mask(rle, h, w)
            ys, xs = np.nonzero(m)
            assert abs(xs.min() - round(box[0])) <= 1 and abs(ys.max() + 1 - round(box[3])) <= 1


@pytest.mark.slow
def test_sam2_loads_from_a_local_file_and_segments_boxes(tmp_path):
    """A SAM 2 (tiny) built without weights, saved as a checkpoint file, loaded through the
    real Ultralytics path and prompted with two boxes (random weights: shapes, not quality)."""
    import torch
    from ultralytics.models.sam.build import build_sam2_t

    path = tmp_path / "sam2_t.pt"
    torch.save({"model": build_sam2_t().state_dict()}, path)
    seg = BoxPromptSegmenter(path)
    img = np.full((120, 160, 3), 90, np.uint8)
    out = seg(img, np.array([[20, 20, 60, 60], [80, 40, 150, 110]], np.float32))
    assert out.shape == (2, 120, 160) and out.dtype == bool
    assert seg(img, np.zeros((0, 4))).shape == (0, 120, 160)
    with pytest.raises(ValueError, match="SAM 2 checkpoint"):
        other = tmp_path / "sam_b.pt"
        other.write_bytes(b"x")
        BoxPromptSegmenter(other)


def test_contour_style_draws_the_committed_detectors_masks(records, tmp_path):
    """Offline, with no SAM 2 and no user weights, the contour style has masks to draw:
    the stored frames carry the outline of every track's mask, which a box would not give."""
    import cv2

    from pipeline.config import PreprocessConfig
    from pipeline.preprocess import run
    from pipeline.shards import read_videos
    from trainer.metrics import boundary_map

    frames = {}
    for style in ("number", "contour+number"):
        out = tmp_path / style
        run(records[:1], out, PreprocessConfig(overlay_style=style), progress=False)
        (video,) = read_videos(out)
        frames[style] = video.decode_frames().astype(int)
    changed = np.abs(frames["contour+number"] - frames["number"]).max(axis=3) > 40
    on_outline = outline_px = on_box = box_px = 0
    for k, t in enumerate(video.frame_times_s):
        for tr in video.tracks:
            i = int(np.argmin(np.abs(tr.times_s - t)))
            if abs(tr.times_s[i] - t) > 1e-3 or tr.masks_rle is None or tr.masks_rle[i] is None:
                continue
            mask = rle_to_mask(tr.masks_rle[i], video.height, video.width)
            outline = boundary_map(mask)
            box = np.zeros_like(mask)
            x1, y1, x2, y2 = (round(float(v)) for v in tr.xyxy[i])
            box[y1:y2, x1:x2] = True
            cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # 4-connected growth
            near_mask = cv2.dilate(mask.astype(np.uint8), cross, iterations=3).astype(bool)
            box_only = boundary_map(box) & ~near_mask
            on_outline += int((changed[k] & outline).sum())
            outline_px += int(outline.sum())
            on_box += int((changed[k] & box_only).sum())
            box_px += int(box_only.sum())
    assert outline_px > 0 and box_px > 0  # the committed detector gave the tracks masks
    # the lines follow the masks' outlines, not the boxes' edges
    assert on_outline / outline_px > 0.3  # 0.43 here; some outline pixels lie under labels
    assert on_box / box_px < 0.05  # 0.0005 here
