"""Appearance embeddings from a named ReID model: Ultralytics' ``ReID`` on every detected box.

By default the embeddings that link tracklets (:mod:`pipeline.associate`), tell duplicates
apart (:mod:`pipeline.tracklets`) and feed ``--tracker botsort`` are the detector's own
features (:class:`pipeline.detect.Detector`). With ``--reid-weights`` they come from a
separate model instead: any file Ultralytics' ``ReID`` class loads, a ``.pt`` YOLO model run
through its embedding predictor (e.g. ``yolo11n-cls.pt``) or an exported model that outputs
the embedding (e.g. ``yolo26s-reid.onnx``). The file is local (a path, or a name looked up in
``data/models/`` and ``data/models/ultralytics/``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runtime import MODELS_DIR, configure_offline, find_model_file


def resolve_reid_weights(weights: str | Path) -> Path:
    """The ReID model file, or a clear error saying where to put it."""
    return find_model_file(weights, MODELS_DIR, "ReID weights")


class ReIDEmbedder:
    """Ultralytics' ``ReID`` on box crops: RGB frame + (N, 4) xyxy boxes -> (N, D) embeddings.

    The rows are float32 and L2-normalised (the ``data["feature"]`` contract of
    :class:`pipeline.detect.Detector`); a box whose crop is empty (it lies outside the
    frame) gets a zero row. ``dim`` is D, read from one embedding made at load time.

    Args:
        weights: a ReID model file: ``.pt`` (a YOLO model; embeddings from its
            second-to-last layer) or an exported model (``.onnx``, ``.torchscript``, ...).
        device: torch device string (None = Ultralytics' choice: CUDA if available).
    """

    def __init__(self, weights: str | Path, device: str | None = None):
        # The resolved, existing path: ReID passes the names of Ultralytics' own ReID
        # models (yolo26*-reid.onnx) to its asset download, which returns a file that exists.
        self.weights = resolve_reid_weights(weights)
        configure_offline()
        from ultralytics.trackers.utils.reid import ReID

        self.encoder = ReID(str(self.weights), device=device)
        probe = self(np.zeros((32, 32, 3), np.uint8), np.array([[0, 0, 32, 32]], np.float32))
        self.dim = probe.shape[1]

    def __call__(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit rows, one per box, from the crops of ``image_rgb``."""
        from ultralytics.utils.ops import xyxy2xywh

        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])  # ReID crops BGR frames
        feats = self.encoder(bgr, xyxy2xywh(boxes))  # centre xywh, as Ultralytics' trackers pass
        dim = next((np.asarray(f).size for f in feats if f is not None), getattr(self, "dim", 0))
        out = np.zeros((len(boxes), dim), np.float32)
        for i, f in enumerate(feats):
            if f is not None:
                out[i] = np.asarray(f, np.float32).reshape(-1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
