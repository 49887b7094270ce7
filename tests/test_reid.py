"""A named ReID model (``--reid-weights``): the local-file lookup, the folder identity, the
embeddings it gives the detections, BoT-SORT on them, and a preprocessing run.

The ``.pt`` model is ``yolo11n-cls`` built without weights and saved as a checkpoint (random
weights: shapes and plumbing are checked, not re-identification quality); it runs through
Ultralytics' real ``ReID`` class.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import pipeline.reid as reid_mod
from pipeline.config import PreprocessConfig
from pipeline.runtime import MODELS_DIR, configure_offline

CLS_DIM = 256  # yolo11n-cls: the Classify head's input channels


@pytest.fixture(scope="module")
def cls_weights(tmp_path_factory) -> Path:
    from ultralytics import YOLO

    configure_offline()
    model = YOLO("yolo11n-cls.yaml")
    model.ckpt = {"train_args": {"task": "classify", "imgsz": 224}}  # a trained -cls file's size
    path = tmp_path_factory.mktemp("reid") / "yolo11n-cls.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def embedder(cls_weights):
    return reid_mod.ReIDEmbedder(cls_weights)


@pytest.fixture(scope="module")
def scene_frames():
    from pipeline.synthetic import make_scene

    scene = make_scene(20240611, with_expressions=False)
    return [(t / scene.config.fps, scene.frame(t)) for t in range(12)], scene.config.fps


def no_download(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args} {kwargs}")


# --------------------------------------------------------------------------- files, identity


def test_a_missing_reid_model_says_where_to_put_it(monkeypatch):
    import ultralytics.utils.downloads as downloads

    monkeypatch.setattr(downloads, "safe_download", no_download)
    for make in (reid_mod.resolve_reid_weights, reid_mod.ReIDEmbedder):
        with pytest.raises(FileNotFoundError, match="Nothing is downloaded") as err:
            make("yolo26s-reid.onnx")  # a name Ultralytics' ReID would download
        assert str(MODELS_DIR / "ultralytics" / "yolo26s-reid.onnx") in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape("ReID weights 'yolo26s-reid.onnx'")):
        PreprocessConfig(reid_weights="yolo26s-reid.onnx").hash()


def test_the_cli_refuses_a_missing_reid_model_before_writing(hc_root, tmp_path, capsys):
    from pipeline.preprocess import main

    out = tmp_path / "shards"
    argv = ["--dataset", "synthetic", "--root", str(hc_root), "--out", str(out)]
    assert main([*argv, "--reid-weights", "nowhere-reid.pt", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ReID weights 'nowhere-reid.pt' not found" in err and str(MODELS_DIR) in err
    assert not out.exists() or not list(out.glob("part-*"))


def test_the_reid_file_is_part_of_the_folder_identity(tmp_path):
    weights = tmp_path / "my-reid.pt"
    weights.write_bytes(b"one")
    cfg = PreprocessConfig(reid_weights=str(weights))
    before = cfg.hash()
    assert "reid_weights_sha256" in cfg.identity()
    assert "reid_weights_sha256" not in PreprocessConfig().identity()
    assert before != PreprocessConfig().hash()
    weights.write_bytes(b"other bytes")  # same path, another model: other rows
    assert cfg.hash() != before
    with pytest.raises(ValueError, match="reid_weights must name a file"):
        PreprocessConfig(reid_weights=" ")


def test_an_exported_model_named_like_ultralytics_assets_is_read_locally(tmp_path, monkeypatch):
    """``yolo26s-reid.onnx`` in data/models/ loads from there: the path handed to ReID is
    the local file, so its asset download is never reached. (onnxruntime is not installed
    here: a stand-in backend takes AutoBackend's place and returns an 8-d embedding.)"""
    import torch
    import ultralytics.trackers.utils.reid as ul_reid
    import ultralytics.utils.downloads as downloads

    loaded = []

    class Backend:
        fp16 = False

        def __init__(self, weights, **kwargs):
            loaded.append(weights)

        def __call__(self, batch):  # (N, 3, 224, 224) -> (N, 8)
            return batch.mean(dim=(2, 3)).repeat(1, 3)[:, :8] + torch.arange(8.0)

    monkeypatch.setattr(reid_mod, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(downloads, "safe_download", no_download)
    monkeypatch.setattr(ul_reid, "AutoBackend", Backend)
    (tmp_path / "yolo26s-reid.onnx").write_bytes(b"x")
    emb = reid_mod.ReIDEmbedder("yolo26s-reid.onnx")
    assert loaded == [str(tmp_path / "yolo26s-reid.onnx")] and emb.dim == 8
    image = np.full((120, 160, 3), 200, np.uint8)
    out = emb(image, np.array([[10, 10, 50, 60], [80, 20, 150, 100]], np.float32))
    assert out.shape == (2, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert emb(image, np.zeros((0, 4))).shape == (0, 8)


# --------------------------------------------------------------------------- embeddings


def test_the_detector_with_a_reid_model_gives_its_embeddings(embedder, scene_frames):
    from pipeline.detect import Detector

    frames, _ = scene_frames
    images = [im for _, im in frames[:4]]
    assert embedder.dim == CLS_DIM
    own = Detector(conf=0.1, iou=0.5)(images)
    named = Detector(conf=0.1, iou=0.5, embedder=embedder)(images)
    assert sum(len(d) for d in named) > 0
    head_dim = own[0].data["feature"].shape[1]  # 64 for a yolo11n detector
    assert 0 < head_dim != CLS_DIM
    for a, b in zip(own, named):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)  # the same detections
        assert a.data["feature"].shape == (len(a), head_dim)
        feats = b.data["feature"]
        assert feats.shape == (len(b), CLS_DIM) and feats.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    assert Detector(embedder=embedder, features=False)(images[:1])[0].data.get("feature") is None


def test_botsort_on_the_embeddings_is_botsort_with_the_named_model(
    embedder, cls_weights, scene_frames
):
    """BoT-SORT reads the embeddings the detection stage computed (``model: auto``); Ultralytics'
    BoT-SORT given the model file (``with_reid=True, model=<path>``) crops and embeds the same
    boxes itself. Both give the same IDs to the same detections on every frame."""
    import copy

    from ultralytics.trackers.bot_sort import BOTSORT

    from pipeline.detect import Detector
    from pipeline.track import Tracker, TrackerConfig, _ByteTrackInput

    frames, fps = scene_frames
    detections = Detector(conf=0.1, iou=0.5, embedder=embedder)([im for _, im in frames])
    ours = Tracker(TrackerConfig(tracker="botsort"), fps)
    args = copy.copy(ours._bytetrack.args)
    args.model = str(cls_weights)
    theirs = BOTSORT(args)
    n_ids = 0
    for (t, image), det in zip(frames, detections):
        got = ours.update(det, t)
        xyxy = det.xyxy
        xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        cls = det.class_id.astype(np.float32)
        rows = theirs.update(_ByteTrackInput(det.confidence, cls, xywh), img=image[:, :, ::-1])
        rows = np.asarray(rows).reshape(-1, 8)
        np.testing.assert_array_equal(got.tracker_id, rows[:, 4].astype(int))
        np.testing.assert_array_equal(got.xyxy, det.xyxy[rows[:, 7].astype(int)])
        n_ids += len(rows)
    assert n_ids > 0


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_preprocessing_with_a_reid_model_stores_tracks(records, cls_weights, tracker, tmp_path):
    from pipeline.preprocess import run
    from pipeline.shards import read_videos

    config = PreprocessConfig(reid_weights=str(cls_weights), tracker=tracker)
    manifest = run(records[:1], tmp_path / "shards", config, progress=False)
    assert manifest["status"] == "complete" and manifest["counts"]["videos_failed"] == 0
    assert manifest["identity"]["reid_weights_sha256"]
    (video,) = read_videos(tmp_path / "shards")
    assert video.tracks and [t.id for t in video.tracks] == list(range(1, len(video.tracks) + 1))


def test_the_processor_takes_its_features_from_the_reid_model(cls_weights, scene_frames):
    from pipeline.processor import VideoProcessor

    detector = VideoProcessor(PreprocessConfig(reid_weights=str(cls_weights))).detector
    (det,) = detector([scene_frames[0][0][1]])
    assert len(det) and det.data["feature"].shape == (len(det), CLS_DIM)
    assert VideoProcessor(PreprocessConfig()).detector.embedder is None
