"""Masks from box prompts: an Ultralytics SAM 2 model segments the detector's boxes.

A detection checkpoint gives boxes only; with ``--masks sam2 --sam-weights
data/models/sam2.1_b.pt`` every detected box is given to SAM 2 as a prompt on its frame,
so masks flow to the shards (mask IoU, J&F, the contour overlay) with any detector.
The weights are a local file (a path, or a name looked up in ``data/models/`` and
``data/models/ultralytics/``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runtime import MODELS_DIR, configure_offline, find_model_file

MASK_SOURCES = ("detector", "sam2")


def resolve_sam_weights(weights: str | Path) -> Path:
    """The SAM 2 weights file (e.g. ``sam2.1_b.pt`` from Ultralytics' assets), or a clear error
    saying where to put it."""
    return find_model_file(weights, MODELS_DIR, "SAM 2 weights")


class BoxPromptSegmenter:
    """SAM 2 (Ultralytics ``SAM``) prompted with boxes: RGB frame + (N, 4) boxes -> (N, H, W) masks.

    Args:
        weights: a SAM 2 / 2.1 checkpoint file (``sam2_*.pt``, ``sam2.1_*.pt``).
        device: torch device string (None = Ultralytics' choice).
    """

    def __init__(self, weights: str | Path, device: str | None = None):
        self.weights = resolve_sam_weights(weights)
        if "sam2" not in self.weights.stem:
            raise ValueError(
                f"{self.weights.name}: expected a SAM 2 checkpoint named sam2_*.pt or "
                "sam2.1_*.pt (Ultralytics picks the architecture from the name)"
            )
        configure_offline()
        from ultralytics import SAM

        self.model = SAM(str(self.weights))
        self.device = device

    def __call__(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, H, W) bool masks, one per box (all False where SAM returns nothing)."""
        h, w = image_rgb.shape[:2]
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        out = np.zeros((len(boxes), h, w), dtype=bool)
        if not len(boxes):
            return out
        kwargs = {"bboxes": boxes.tolist(), "verbose": False}
        if self.device is not None:
            kwargs["device"] = self.device
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        (result,) = self.model.predict(bgr, **kwargs)
        if result.masks is not None:
            data = result.masks.data.cpu().numpy().astype(bool)
            out[: len(data)] = data[: len(boxes)]
        return out
