"""Box and mask geometry: the bottom floor shared by matching, overlays and metrics.

Conventions: ``xyxy`` boxes are ``(x1, y1, x2, y2)`` in pixels, ``xywh`` are
``(x, y, w, h)`` with ``(x, y)`` the top-left corner. Masks travel as COCO RLE
``counts`` strings with the frame's ``(height, width)`` given alongside.
Every function is pure: inputs are never modified.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(N, 4) xywh -> (N, 4) xyxy, float32."""
    b = np.asarray(xywh, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) xywh, float32."""
    b = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def box_area(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) -> (N,) area; degenerate or reversed boxes have area 0."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU, (N, 4) x (M, 4) -> (N, M) float64. Empty unions give 0."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xyxy, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def paired_box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) arrays -> (N,). Rows with a NaN box score 0."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xyxy, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 2], b[:, 2])
    y2 = np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box_area(a) + box_area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(iou, nan=0.0)


def scale_xyxy(xyxy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Scale boxes by (sx, sy), e.g. from native to stored frame size."""
    b = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    return b * np.array([sx, sy, sx, sy], dtype=np.float32)


def interpolate_boxes(
    times_s: np.ndarray,
    xyxy: np.ndarray,
    query_times_s: np.ndarray,
    max_gap_s: float,
    tolerance_s: float = 1e-3,
) -> np.ndarray:
    """A track's boxes at arbitrary times: the one place that answers "where is it at t?".

    Linear interpolation between the track's observed times ``times_s`` (N,) with
    boxes ``xyxy`` (N, 4). Returns (M, 4) float32; rows are NaN outside the track's
    life (beyond ``tolerance_s``) or inside a gap between observations longer than
    ``max_gap_s``, so an object that is truly absent contributes nothing.
    """
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    q = np.asarray(query_times_s, dtype=np.float64).reshape(-1)
    out = np.full((q.size, 4), np.nan, dtype=np.float32)
    if t.size == 0 or q.size == 0:
        return out
    order = np.argsort(t, kind="stable")
    t, b = t[order], b[order]
    hi = np.searchsorted(t, q, side="left").clip(0, t.size - 1)
    lo = (hi - 1).clip(0, t.size - 1)
    near_hi = np.abs(t[hi] - q) <= tolerance_s
    near_lo = np.abs(t[lo] - q) <= tolerance_s
    exact = near_hi | near_lo
    exact_idx = np.where(near_hi, hi, lo)
    out[exact] = b[exact_idx[exact]]
    between = ~exact & (q > t[lo]) & (q < t[hi]) & ((t[hi] - t[lo]) <= max_gap_s + tolerance_s)
    if between.any():
        w = ((q - t[lo]) / np.maximum(t[hi] - t[lo], 1e-12))[:, None]
        out[between] = ((1 - w) * b[lo] + w * b[hi])[between]
    return out


def nearest_index(times_s: np.ndarray, query_times_s: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index of the nearest observed time for each query time, or -1 if none within tolerance."""
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    q = np.asarray(query_times_s, dtype=np.float64).reshape(-1)
    if t.size == 0:
        return np.full(q.size, -1, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    hi = np.searchsorted(ts, q).clip(0, ts.size - 1)
    lo = (hi - 1).clip(0, ts.size - 1)
    pick = np.where(np.abs(ts[lo] - q) <= np.abs(ts[hi] - q), lo, hi)
    ok = np.abs(ts[pick] - q) <= tolerance_s
    return np.where(ok, order[pick], -1)


# --------------------------------------------------------------------------- masks


def mask_to_rle(mask: np.ndarray) -> str:
    """(H, W) bool/uint8 mask -> COCO RLE ``counts`` string (size is the mask's shape)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def rle_to_mask(counts: str, height: int, width: int) -> np.ndarray:
    """COCO RLE ``counts`` string (compressed) -> (H, W) bool mask."""
    rle = {"size": [int(height), int(width)], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_to_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """Tight box of a mask as float32 xyxy (x2/y2 exclusive pixel edges), None if empty."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) masks; two empty masks score 1 (the DAVIS convention)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to (height, width)."""
    m = np.asarray(mask, dtype=bool)
    if m.shape == (height, width):
        return m.copy()
    ys = (np.arange(height) * m.shape[0] / height).astype(np.int64).clip(0, m.shape[0] - 1)
    xs = (np.arange(width) * m.shape[1] / width).astype(np.int64).clip(0, m.shape[1] - 1)
    return m[ys][:, xs]
