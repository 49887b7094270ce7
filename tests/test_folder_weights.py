"""The folder dataset and detector weights: no synthetic detector on real videos unless asked,
named weights looked up in data/models/, and the JPEG-folder frame rate."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.detect as detect
from pipeline.adapters.folder import SyntheticDetectorError, check_weights, iter_videos
from pipeline.config import PreprocessConfig
from pipeline.detect import default_weights, resolve_weights


def test_default_detector_is_refused_for_arbitrary_videos_unless_named():
    with pytest.raises(SyntheticDetectorError, match="--weights synthetic") as err:
        check_weights(None)
    assert "data/models" in str(err.value) and "yolo11x.pt" in str(err.value)
    check_weights("synthetic")  # asked for by name
    check_weights("yolo11x.pt")
    check_weights(None, "syn_valid_0003")  # a video of the synthetic set itself
    with pytest.raises(SyntheticDetectorError):
        check_weights(None, "syn_valid_0003_my_holiday")
    assert resolve_weights("synthetic") == resolve_weights(None) == default_weights()


def test_named_weights_are_looked_up_in_data_models(tmp_path, monkeypatch):
    monkeypatch.setattr(detect, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded") as err:
        resolve_weights("yolo11x.pt")
    assert str(tmp_path / "ultralytics" / "yolo11x.pt") in str(err.value)
    (tmp_path / "yolo11x.pt").write_bytes(b"weights")
    assert resolve_weights("yolo11x.pt") == tmp_path / "yolo11x.pt"


def test_processor_refuses_the_synthetic_detector_on_a_folder_video(tmp_path):
    import cv2

    from pipeline.processor import VideoProcessor

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), np.full((48, 64, 3), 90, np.uint8))
    (record,) = iter_videos(tmp_path, fps=12.5)
    assert record.fps == 12.5  # the adapter's rate
    with pytest.raises(SyntheticDetectorError):
        VideoProcessor(PreprocessConfig())(record)
    # asked for by name, it runs; --fps sets the JPEG folder's rate (default 30)
    row, stats = VideoProcessor(PreprocessConfig(weights="synthetic", fps=5.0))(
        next(iter_videos(tmp_path))
    )
    assert row["native_fps"] == 5.0 and stats["frames_tracked"] == 3


def test_fps_setting_is_checked():
    assert PreprocessConfig(fps=12.5).fps == 12.5
    with pytest.raises(ValueError, match="fps must be > 0"):
        PreprocessConfig(fps=0)


def test_preprocess_refuses_the_synthetic_detector_on_a_folder_before_writing(tmp_path, capsys):
    import cv2

    from pipeline.preprocess import main

    videos = tmp_path / "videos" / "clip"
    videos.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(videos / f"{i:05d}.jpg"), np.full((48, 64, 3), 90, np.uint8))
    out = tmp_path / "out"
    args = ["--dataset", "folder", "--root", str(tmp_path / "videos"), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 2
    assert "--weights synthetic" in capsys.readouterr().err
    assert not out.exists()  # nothing written, so the corrected command starts clean
    assert main([*args, "--weights", "synthetic", "--no-progress"]) == 0
    assert len(list(out.glob("part-*.parquet"))) == 1
