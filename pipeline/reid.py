"""Appearance embeddings from a named ReID model: Ultralytics' ``ReID`` on every detected box.

By default the embeddings that link tracklets (:mod:`pipeline.associate`), tell duplicates
apart (:mod:`pipeline.tracklets`) and feed ``--tracker botsort`` are the detector's own
features (:class:`pipeline.detect.Detector`). With ``--reid-weights`` they come from a
separate model instead: any file Ultralytics' ``ReID`` class loads, a ``.pt`` YOLO model run
through its embedding predictor (e.g. ``yolo11n-cls.pt``) or an exported model that outputs
the embedding (e.g. ``yolo26s-reid.onnx``). The file is local (a path, or a name looked up in
``data/models/`` and ``data/models/ultralytics/``); nothing is downloaded.

Either way each detection also gets a colour histogram (:func:`color_histograms`) of its
mask, or of its box without one. Features trained to name a class see two objects of one
class alike whatever their colour (a red and a blue square, two people in different
clothes); the association uses the histograms only to refuse links (a tracklet whose
colours do not match is not the same object), never to make one.
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


COLOR_BINS = (16, 4, 4)
"""Hue, saturation and value bins of :func:`color_histograms` (OpenCV's HSV ranges)."""


def color_histograms(
    image_rgb: np.ndarray, boxes_xyxy: np.ndarray, masks: np.ndarray | None = None
) -> np.ndarray:
    """(N, 256) float32: the HSV colour histogram of each object, as unit vectors of the
    square roots of the normalised counts, so the dot product of two rows is their
    Bhattacharyya coefficient (1 for the same colours, 0 for none in common; the
    similarity OpenCV's ``compareHist`` turns into its Bhattacharyya distance).

    The pixels are the object's mask (``masks`` (N, H, W) bool), or its box when there
    is no mask or the mask is empty; counted by OpenCV's ``calcHist`` over
    :data:`COLOR_BINS`. An object with no pixel in the frame gets a zero row.
    """
    import cv2

    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    out = np.zeros((len(boxes), int(np.prod(COLOR_BINS))), np.float32)
    if not len(boxes):
        return out
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2HSV)
    h, w = hsv.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c1, r1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        c2, r2 = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
        if c2 <= c1 or r2 <= r1:
            continue
        crop = hsv[r1:r2, c1:c2]
        sel = None
        if masks is not None and masks[i][r1:r2, c1:c2].any():
            sel = masks[i][r1:r2, c1:c2].astype(np.uint8)
        hist = cv2.calcHist([crop], [0, 1, 2], sel, list(COLOR_BINS), [0, 180, 0, 256, 0, 256])
        root = np.sqrt(hist.reshape(-1) / max(float(hist.sum()), 1.0))
        out[i] = root / max(float(np.linalg.norm(root)), 1e-12)
    return out
