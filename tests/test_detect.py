"""The detector with the committed synthetic checkpoint, detect -> track on a rendered scene,
and (slow) the detector training script on a tiny set."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.detect import Detector, default_weights
from pipeline.geometry import box_iou, mask_iou
from pipeline.synthetic import SHAPES, make_scene
from pipeline.track import TrackerConfig, track_frames

SEED = 20240611  # a scene not in the detector's training streams


@pytest.fixture(scope="module")
def scene():
    return make_scene(SEED, with_expressions=False)


@pytest.fixture(scope="module")
def detector():
    return Detector()


def count_predict_calls(det: Detector, monkeypatch) -> list[list[np.ndarray]]:
    """Record the batches given to the Ultralytics model (still running the real predict)."""
    calls: list[list[np.ndarray]] = []
    real = det.model.predict

    def spy(source, **kwargs):
        calls.append([np.array(im) for im in source])
        return real(source, **kwargs)

    monkeypatch.setattr(det.model, "predict", spy)
    return calls


def well_visible(scene, t: int, min_side: float = 16.0) -> list[tuple[int, np.ndarray]]:
    """(obj_id, box) of objects clearly visible at frame t (not mostly hidden or off-screen)."""
    out = []
    for obj in scene.objects:
        b = scene.boxes_xyxy[obj.obj_id, t]
        if np.isnan(b[0]) or min(b[2] - b[0], b[3] - b[1]) < min_side:
            continue
        if scene.masks[obj.obj_id, t].sum() < 0.6 * obj.stamp.sum():  # occluded or cut by the edge
            continue
        out.append((obj.obj_id, b))
    return out


def test_default_checkpoint_detects_synthetic_shapes(scene, detector):
    assert default_weights().exists()
    assert list(detector.names.values()) == list(SHAPES) and detector.has_masks
    frames_idx = list(range(0, scene.num_frames, 10))
    results = detector([scene.frame(t) for t in frames_idx])
    found = total = right_class = 0
    mask_ious = []
    h, w = scene.config.height, scene.config.width
    for t, det in zip(frames_idx, results):
        assert det.xyxy.dtype == np.float32
        assert det.mask is not None and det.mask.shape == (len(det), h, w)  # the frame's size
        assert len(det.data["class_name"]) == len(det) == len(det.confidence) == len(det.class_id)
        for oid, box in well_visible(scene, t):
            total += 1
            if len(det) == 0:
                continue
            iou = box_iou(box[None], det.xyxy)[0]
            j = int(iou.argmax())
            if iou[j] >= 0.5:
                found += 1
                right_class += det.data["class_name"][j] == scene.objects[oid].shape
                mask_ious.append(mask_iou(det.mask[j], scene.masks[oid, t]))
    assert total >= 10
    assert found / total >= 0.85, f"recall {found}/{total}"
    assert right_class / max(found, 1) >= 0.85, f"class accuracy {right_class}/{found}"
    # the predicted masks trace the shapes, not their boxes (a box fills a circle at 0.79,
    # a triangle at about 0.5)
    assert np.mean(mask_ious) >= 0.85, f"mean mask IoU {np.mean(mask_ious):.3f}"


def test_batches_rgb_to_bgr_one_call_per_batch(scene, monkeypatch):
    det = Detector(batch_size=2)
    calls = count_predict_calls(det, monkeypatch)
    frames = [scene.frame(t) for t in range(5)]
    out = det(frames)
    assert len(out) == 5
    assert [len(c) for c in calls] == [2, 2, 1]  # ceil(5 / 2) model calls
    np.testing.assert_array_equal(calls[0][1], frames[1][:, :, ::-1])  # BGR for Ultralytics
    single = det([frames[3]])[0]
    np.testing.assert_allclose(single.xyxy, out[3].xyxy, atol=1e-3)
    assert det([]) == []


def test_agnostic_nms_gives_one_box_per_place(scene):
    # At a low threshold the model also scores some shapes as a second class. Per-class
    # NMS keeps both boxes (same place, two classes) and the tracker would give the
    # object two IDs; across classes no two kept boxes overlap more than the NMS IoU.
    frames = [scene.frame(t) for t in range(0, scene.num_frames, 2)]

    def max_cross_class_iou(det: Detector) -> float:
        worst = 0.0
        for d in det(frames):
            iou = box_iou(d.xyxy, d.xyxy)
            different = d.class_id[:, None] != d.class_id[None, :]
            worst = max(worst, float(iou[different].max(initial=0.0)))
        return worst

    assert max_cross_class_iou(Detector(conf=0.05, agnostic_nms=False)) > 0.7
    assert max_cross_class_iou(Detector(conf=0.05)) <= 0.7


def test_class_filter_by_name_or_id(scene, detector):
    frames = [scene.frame(t) for t in range(0, scene.num_frames, 10)]
    every = [set(d.data["class_name"]) for d in detector(frames)]
    present = sorted(set().union(*every))
    assert len(present) >= 2
    keep = present[0]
    by_name = Detector(classes=[keep])(frames)
    by_id = Detector(classes=[SHAPES.index(keep)])(frames)
    assert all(set(d.data["class_name"]) <= {keep} for d in by_name)
    assert sum(len(d) for d in by_name) > 0
    assert [len(d) for d in by_name] == [len(d) for d in by_id]
    with pytest.raises(ValueError, match=r"unknown class 'hexagon'.*circle"):
        Detector(classes=["hexagon"])


def test_missing_weights_name_fails_clearly_without_download():
    with pytest.raises(FileNotFoundError, match=r"yolo11x-absent\.pt.*data/models/ultralytics"):
        Detector("yolo11x-absent.pt")
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        Detector("/nowhere/weights.pt")


def test_rejects_non_rgb_input(detector):
    with pytest.raises(ValueError, match="image 0 must be an RGB"):
        detector([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        detector([np.zeros((32, 32, 3), np.float32)])


def test_track_frames_follows_every_object(scene, monkeypatch):
    # 40 frames at 10 fps through detect (batches of 8) -> ByteTrack -> renumbered tracks.
    det = Detector(batch_size=8)
    calls = count_predict_calls(det, monkeypatch)
    n = 40
    frames = ((t / scene.config.fps, scene.frame(t)) for t in range(n))
    tracks = track_frames(frames, det, TrackerConfig(), scene.config.fps)
    assert len(calls) == 5  # 40 / 8
    assert [t.id for t in tracks] == list(range(1, len(tracks) + 1))
    times = np.arange(n) / scene.config.fps
    for obj in scene.objects:
        visible = [t for t in range(n) if any(o == obj.obj_id for o, _ in well_visible(scene, t))]
        if len(visible) < 10:
            continue
        gt = scene.boxes_xyxy[obj.obj_id, visible]
        # the best track for this object covers it (IoU >= 0.5) on most of its visible frames
        cover = [
            float(np.mean([box_iou(g[None], b[None])[0, 0] >= 0.5 for g, b in zip(gt, boxes)]))
            for boxes in (np.nan_to_num(tr.boxes_at(times[visible], 0.3)) for tr in tracks)
        ]
        assert max(cover) >= 0.8, (
            f"object {obj.obj_id} ({obj.shape}) best coverage {max(cover):.2f}"
        )


@pytest.mark.slow
def test_train_detector_one_epoch_on_a_tiny_set(tmp_path):
    from pipeline.synthetic.train_detector import train

    # 8 train / 4 val frames of synthetic scenes with their YOLO labels.
    root = tmp_path / "yolo"
    for split, seeds in (("train", range(4)), ("val", range(4, 6))):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for s in seeds:
            sc = make_scene(s, with_expressions=False)
            h, w = sc.config.height, sc.config.width
            for t in (10, 40):
                name = f"{s}_{t}"
                cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), sc.frame(t)[:, :, ::-1])
                lines = []
                for o in sc.objects:
                    x1, y1, x2, y2 = sc.boxes_xyxy[o.obj_id, t]
                    if not np.isnan(x1):
                        c = SHAPES.index(o.shape)
                        lines.append(
                            f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
                        )
                (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(SHAPES))
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )
    out = tmp_path / "assets" / "tiny.pt"
    metrics = train(
        root / "data.yaml",
        epochs=1,
        imgsz=96,
        batch=4,
        out=out,
        run_dir=tmp_path / "run",
        workers=0,
    )
    assert out.exists() and out.with_suffix(".json").exists()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["epochs"] == 1 and saved["imgsz"] == 96 and 0.0 <= saved["mAP50"] <= 1.0
    assert saved["data"]["images"] == {"train": 8, "val": 4} and metrics["checkpoint"] == "tiny.pt"
    loaded = Detector(out, conf=0.01)
    assert list(loaded.names.values()) == list(SHAPES)
    assert len(loaded([make_scene(9, with_expressions=False).frame(0)])) == 1


@pytest.mark.slow
def test_train_segmentation_from_the_synthetic_polygons(tmp_path):
    """``--segment`` on the synthetic set's polygon labels: yolo11n-seg carrying the
    committed checkpoint's weights over, one epoch, a segmentation model that gives masks."""
    from pipeline.synthetic import generate
    from pipeline.synthetic.train_detector import train

    generate(tmp_path / "syn", num_train=0, num_test=0, det_train=8, det_val=4,
             formats=("yolo",), progress=False)  # fmt: skip
    out = tmp_path / "seg.pt"
    metrics = train(tmp_path / "syn" / "yolo" / "data.yaml", epochs=1, imgsz=96, batch=4,
                    out=out, run_dir=tmp_path / "run", workers=0, segment=True,
                    init=default_weights())  # fmt: skip
    assert metrics["task"] == "segment" and 0.0 <= metrics["mask_mAP50"] <= 1.0
    assert metrics["init"] == default_weights().name
    seg = Detector(out, conf=0.05)
    assert seg.has_masks and list(seg.names.values()) == list(SHAPES)
    (det,) = seg([make_scene(9, with_expressions=False).frame(0)])
    assert det.mask is not None and det.mask.shape[0] == len(det)
