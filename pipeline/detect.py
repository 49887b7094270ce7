"""Object detection with Ultralytics YOLO, batched, returning ``supervision.Detections``.

The detector is the first stage of the ID pipeline: every frame's objects become
boxes (and masks for ``*-seg`` weights) that the tracker links over time, each with an
appearance embedding read from the detector's own feature maps (as Ultralytics BoT-SORT's
``model: auto`` ReID does; or from a named ReID model, :mod:`pipeline.reid`) for
re-identification across occlusions. Without
named weights the project's own small checkpoint trained on the synthetic set is
used (``pipeline/assets/synthetic-yolo11n-seg.pt``, a segmentation model, so the
synthetic set's tracks carry masks), so nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import supervision as sv

from pipeline.reid import color_histograms
from pipeline.runtime import ASSETS_DIR, MODELS_DIR, configure_offline, find_model_file

DEFAULT_WEIGHTS_NAME = "synthetic-yolo11n-seg.pt"
SYNTHETIC_ALIAS = "synthetic"
"""``--weights synthetic``: the committed checkpoint, asked for by name."""


def default_weights() -> Path:
    """The committed checkpoint trained on the synthetic set (``make detector`` rebuilds it)."""
    return ASSETS_DIR / DEFAULT_WEIGHTS_NAME


def resolve_weights(weights: str | Path | None) -> Path:
    """A weights file that exists locally, or a clear error saying where to put it.

    ``None`` or ``"synthetic"`` -> :func:`default_weights`. A path (absolute, or relative to the working
    directory or the repository) is used as is; a bare name such as ``yolo11x.pt`` is
    also looked up in ``data/models/ultralytics/`` and ``data/models/``. Ultralytics
    would try to download a missing bare name; this project never does.
    """
    if weights is None or str(weights) == SYNTHETIC_ALIAS:
        path = default_weights()
        if not path.exists():
            raise FileNotFoundError(
                f"the default detector checkpoint {path} is missing; "
                "train it with `make detector` (python -m pipeline.synthetic.train_detector)"
            )
        return path
    return find_model_file(weights, MODELS_DIR, "detector weights")


class Detector:
    """Batched YOLO detector: RGB uint8 frames in, one ``sv.Detections`` per frame out.

    Each output carries ``xyxy`` (N, 4) float32 pixels, ``confidence`` (N,),
    ``class_id`` (N,) int, ``data["class_name"]`` (N,) str, ``mask`` (N, H, W) bool
    when the weights are a segmentation model, and ``data["feature"]`` (N, D) float32
    L2-normalised appearance embeddings when ``features`` is on and the model has a
    YOLO detection head (or an ``embedder`` is given).

    Args:
        weights: path or bare file name of Ultralytics weights; None = the project's
            synthetic checkpoint.
        conf: minimum confidence kept.
        iou: NMS IoU threshold.
        agnostic_nms: suppress overlapping boxes across classes, so one object gets
            one box. With per-class NMS an object the model half-confuses (a circle also
            scored as a square) keeps two boxes, and the tracker gives it two IDs.
        classes: keep only these classes (names or ids of the model); None = all.
        imgsz: inference size (None = the size the weights were trained at).
        device: torch device string (None = Ultralytics' choice: CUDA if available).
        batch_size: frames per model call.
        segmenter: a callable (RGB frame, (N, 4) boxes) -> (N, H, W) bool masks, such
            as :class:`pipeline.masks.BoxPromptSegmenter`, that gives a detection-only
            checkpoint's boxes masks (ignored for segmentation weights).
        features: attach appearance embeddings: the inputs of the detection head at each
            kept box's anchor, averaged to one vector (Ultralytics' ``get_obj_feats``, the
            features its BoT-SORT ``model: auto`` ReID uses), so any YOLO checkpoint gives
            them offline and at no extra model call.
        embedder: a callable (RGB frame, (N, 4) boxes) -> (N, D) float32 L2-normalised
            embeddings, such as :class:`pipeline.reid.ReIDEmbedder` (a named ReID model),
            whose output replaces the detection head's features when ``features`` is on.
        colors: attach colour histograms (below) when ``features`` is on.

    With ``colors`` on (and ``features``), detections also carry ``data["color"]`` (N, 256):
    each object's colour histogram inside its mask, or its box
    (:func:`pipeline.reid.color_histograms`); off where nothing reads them.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        conf: float = 0.25,
        iou: float = 0.7,
        agnostic_nms: bool = True,
        classes: list[str | int] | None = None,
        imgsz: int | None = None,
        device: str | None = None,
        batch_size: int = 16,
        segmenter=None,
        features: bool = True,
        embedder=None,
        colors: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
            raise ValueError(f"conf and iou must be in [0, 1], got conf={conf}, iou={iou}")
        self.weights = resolve_weights(weights)
        configure_offline()
        from ultralytics import YOLO

        self.model = YOLO(str(self.weights))
        self.conf = float(conf)
        self.iou = float(iou)
        self.agnostic_nms = bool(agnostic_nms)
        self.imgsz = imgsz
        self.device = device
        self.batch_size = int(batch_size)
        self.class_ids = self._class_ids(classes)
        self.embedder = embedder if features else None
        self.features = bool(features) and (self.embedder is not None or self._hook_head_inputs())
        self.colors = bool(colors) and self.features
        self.segmenter = None if self.has_masks else segmenter

    @property
    def names(self) -> dict[int, str]:
        """Class id -> class name of the loaded weights."""
        return {int(k): str(v) for k, v in self.model.names.items()}

    @property
    def has_masks(self) -> bool:
        """True for segmentation weights (detections then carry ``mask``)."""
        return self.model.task == "segment"

    def _hook_head_inputs(self) -> bool:
        """Make the predictor return per-box features (``Results.feats``): a pre-hook on the
        detection head hands its input maps to the predictor, whose postprocess then keeps
        the NMS indices and gathers the features (the hook Ultralytics registers itself
        only in ``mode="track"``). False when the model has no such head."""
        from ultralytics.nn.modules.head import Detect

        net = getattr(self.model, "model", None)
        head = getattr(net, "model", [None])[-1] if net is not None else None
        if not isinstance(head, Detect) or getattr(head, "end2end", False):
            return False

        def pre_hook(module, inputs):
            predictor = self.model.predictor
            if predictor is not None:
                predictor._feats = list(inputs[0])

        head.register_forward_pre_hook(pre_hook)
        return True

    def _class_ids(self, classes: list[str | int] | None) -> list[int] | None:
        if classes is None:
            return None
        by_name = {name: i for i, name in self.names.items()}
        ids = []
        for c in classes:
            if isinstance(c, str) and c in by_name:
                ids.append(by_name[c])
            elif isinstance(c, (int, np.integer)) and int(c) in self.names:
                ids.append(int(c))
            else:
                raise ValueError(
                    f"unknown class {c!r} for weights {self.weights.name}; "
                    f"available: {sorted(by_name)} (ids 0..{len(by_name) - 1})"
                )
        return sorted(set(ids))

    def _predict(self, bgr_batch: list[np.ndarray]):
        kwargs = {
            "conf": self.conf,
            "iou": self.iou,
            "agnostic_nms": self.agnostic_nms,
            "classes": self.class_ids,
            "verbose": False,
        }
        if self.has_masks:  # masks at the frame's own resolution, not the 1/4 prototypes'
            kwargs["retina_masks"] = True
        if self.imgsz is not None:
            kwargs["imgsz"] = self.imgsz
        if self.device is not None:
            kwargs["device"] = self.device
        return self.model.predict(bgr_batch, **kwargs)

    def __call__(self, images: Sequence[np.ndarray]) -> list[sv.Detections]:
        """Detect objects in RGB uint8 (H, W, 3) frames, ``batch_size`` frames per model call."""
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3):
                shape = getattr(im, "shape", type(im).__name__)
                raise ValueError(f"image {i} must be an RGB (H, W, 3) array, got {shape}")
            if im.dtype != np.uint8:
                raise ValueError(f"image {i} must be uint8, got {im.dtype}")
        out: list[sv.Detections] = []
        for start in range(0, len(images), self.batch_size):
            # Ultralytics reads numpy frames as BGR; the reversed view is copied by its loader.
            batch = [
                np.ascontiguousarray(im[:, :, ::-1])
                for im in images[start : start + self.batch_size]
            ]
            dets = [self._to_detections(r) for r in self._predict(batch)]
            if self.segmenter is not None:
                for im, det in zip(images[start : start + self.batch_size], dets):
                    det.mask = self.segmenter(im, det.xyxy)
            for im, det in zip(images[start : start + self.batch_size], dets):
                if self.embedder is not None:
                    det.data["feature"] = self.embedder(im, det.xyxy)
                if self.colors:
                    det.data["color"] = color_histograms(im, det.xyxy, det.mask)
            out.extend(dets)
        return out

    def _to_detections(self, result) -> sv.Detections:
        det = sv.Detections.from_ultralytics(result)
        names = self.names
        class_id = det.class_id.astype(int) if det.class_id is not None else np.zeros(len(det), int)
        mask = det.mask if self.has_masks else None
        if self.has_masks and mask is None:  # a segmentation model that found nothing
            h, w = result.orig_shape
            mask = np.zeros((len(det), h, w), dtype=bool)
        data = {"class_name": np.array([names[int(c)] for c in class_id], dtype=str)}
        if self.features and self.embedder is None:
            data["feature"] = _unit_rows(getattr(result, "feats", None), len(det))
        return sv.Detections(
            xyxy=det.xyxy.astype(np.float32).reshape(-1, 4),
            mask=None if mask is None else np.asarray(mask, dtype=bool),
            confidence=(
                det.confidence.astype(np.float32)
                if det.confidence is not None
                else np.ones(len(det), np.float32)
            ),
            class_id=class_id,
            data=data,
        )


def _unit_rows(feats, n: int) -> np.ndarray:
    """(n, D) float32 L2-normalised rows of the predictor's per-box features ((n, 0) if none)."""
    if feats is None or n == 0 or len(feats) == 0:
        return np.zeros((n, 0), np.float32)
    f = feats.detach().float().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats)
    f = f.reshape(n, -1).astype(np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
