"""The synthetic STVG dataset, written in the real on-disk formats.

``python -m pipeline.synthetic --out data/raw/synthetic`` renders procedural scenes
(:mod:`pipeline.synthetic.motion`, :mod:`pipeline.synthetic.expressions`) and writes, under ``--out``:

- ``mevis/{train,valid_u}/``: ``JPEGImages/<vid>/<00000>.jpg``, ``meta_expressions.json``,
  ``mask_dict.json`` (one anno_id per object, COCO RLE or null per frame), plus
  ``synthetic_truth.json`` (span and template of every expression; not part of MeViS);
- ``hcstvg/``: ``video/<vid>.mp4`` (H.264, yuv420p, the same frames) and
  ``anno/{train,test}.json`` (one single-target query per video, 1-based ``st_frame``,
  one xywh box per frame of the span);
- ``yolo/``: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` (one polygon of
  the visible mask per object, Ultralytics' segmentation format) and ``data.yaml``
  (classes = ``SHAPES``) from separately seeded scenes;
- ``summary.json``: parameters, counts and paths. A second call with the same
  parameters returns it at once; different parameters are an error unless ``force``.

The same seed gives byte-identical files (single-threaded x264, bit-exact muxing,
sorted JSON), except ``summary.json`` and ``yolo/data.yaml``, which hold absolute paths.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.geometry import mask_to_rle
from pipeline.runtime import DATA_DIR
from pipeline.shards import atomic_file
from pipeline.synthetic.motion import make_scene
from pipeline.synthetic.scene import SHAPES, Scene, SceneConfig
from pipeline.video_io import write_mp4

GENERATOR_VERSION = 2
FORMATS = ("mevis", "hcstvg", "yolo")
DEFAULT_OUT = DATA_DIR / "raw" / "synthetic"
# (MeViS split, HC-STVG split, seed stream); detection splits use streams 2 and 3.
VIDEO_SPLITS = (("train", "train", 0), ("valid_u", "test", 1))
DET_SPLITS = (("train", 2), ("val", 3))
DET_FRAMES_PER_SCENE = 8
JPEG_QUALITY = 90


def video_id(mevis_split: str, index: int) -> str:
    """Video name shared by every format, e.g. ``syn_train_0003``, ``syn_valid_0000``."""
    return f"syn_{'train' if mevis_split == 'train' else 'valid'}_{index:04d}"


def scene_seed(seed: int, stream: int, index: int) -> list[int]:
    """Seed of one scene: independent streams for the video splits and detection splits."""
    return [int(seed), int(stream), int(index)]


# ------------------------------------------------------------------ encoders


def encode_jpeg(frame_rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes at a fixed quality (deterministic)."""
    import cv2

    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(frame_rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for a frame of shape {frame_rgb.shape}")
    return buf.tobytes()


def _write_json(path: Path, obj) -> None:
    """Compact JSON with sorted keys, written atomically."""
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


# ------------------------------------------------------------------ per-format entries


def mevis_entries(scene: Scene, first_anno_id: int) -> tuple[dict, dict, dict]:
    """(meta_expressions video entry, mask_dict part, truth entry) of one scene.

    anno_ids are ``first_anno_id + obj_id``; each covers the object's whole video.
    """
    h, w = scene.config.height, scene.config.width
    masks = {}
    for obj in scene.objects:
        per_frame = []
        for t in range(scene.num_frames):
            m = scene.masks[obj.obj_id, t]
            per_frame.append({"size": [h, w], "counts": mask_to_rle(m)} if m.any() else None)
        masks[str(first_anno_id + obj.obj_id)] = per_frame
    exps, truth = {}, {}
    for k, e in enumerate(scene.expressions):
        ids = [int(i) for i in e.target_ids]
        exps[str(k)] = {"exp": e.text, "obj_id": ids, "anno_id": [first_anno_id + i for i in ids]}
        truth[str(k)] = {
            "template": e.template,
            "obj_id": ids,
            "start_frame": e.start_frame,
            "end_frame": e.end_frame,
            "start_s": round(e.start_s, 6),
            "end_s": round(e.end_s, 6),
        }
    meta = {"frames": [f"{t:05d}" for t in range(scene.num_frames)], "expressions": exps}
    truth_entry = {
        "fps": scene.config.fps,
        "hcstvg_exp_id": str(scene.hcstvg_index),
        "expressions": truth,
    }
    return meta, masks, truth_entry


def hcstvg_entry(scene: Scene) -> dict:
    """The scene's HC-STVG annotation: its chosen single-target expression, boxes in xywh."""
    if scene.hcstvg_index < 0:
        raise ValueError(f"scene {scene.video_id!r} has no HC-STVG expression")
    e = scene.expressions[scene.hcstvg_index]
    boxes = scene.boxes_xyxy[e.target_ids[0], e.start_frame : e.end_frame + 1]
    if np.isnan(boxes).any():
        raise ValueError(f"scene {scene.video_id!r}: HC-STVG target hidden inside its span")
    xywh = [[int(x1), int(y1), int(x2 - x1), int(y2 - y1)] for x1, y1, x2, y2 in boxes]
    return {
        "bbox": xywh,
        "st_time": round(e.start_s, 6),
        "ed_time": round(e.end_s, 6),
        "st_frame": e.start_frame + 1,
        "img_num": scene.num_frames,
        "caption": e.text,
        "width": scene.config.width,
        "height": scene.config.height,
    }


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """(K, 2) float pixel polygon (x, y) tracing a visible mask, pieces joined into one.

    The outer contours (OpenCV) of every connected piece are joined into one polygon at
    their closest points by Ultralytics' ``merge_multi_segment``, the converter its
    COCO-to-YOLO tool uses, because a YOLO segmentation label holds one polygon per
    object. Points are pixel indices, so ``cv2.fillPoly`` (what Ultralytics rasterises
    labels with) redraws the mask's pixels; the box Ultralytics derives from them is
    ``(x1, y1, x2 - 1, y2 - 1)`` of the mask's exclusive box, one pixel short on the right
    and bottom. A piece too small to outline (fewer than three contour points)
    contributes its box corners.
    """
    import cv2
    from ultralytics.data.converter import merge_multi_segment

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    pieces = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
            pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
        pieces.append(pts)
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate([np.asarray(p).reshape(-1, 2) for p in merge_multi_segment(pieces)])


def yolo_label_lines(scene: Scene, frame_idx: int) -> list[str]:
    """``class x1 y1 x2 y2 ...`` (normalised polygon) per visible object.

    Ultralytics' segmentation label format; its detection training reads the same
    files and takes each polygon's box, so one set trains either task.
    """
    w, h = scene.config.width, scene.config.height
    lines = []
    for obj in scene.objects:
        mask = scene.masks[obj.obj_id, frame_idx]
        if not mask.any():
            continue
        cls = SHAPES.index(obj.shape)
        poly = mask_polygon(mask) / np.array([w, h], dtype=np.float64)
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in poly.reshape(-1)))
    return lines


# ------------------------------------------------------------------ generation


def _params(**kw) -> dict:
    formats = kw.pop("formats")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
    for name in ("num_train", "num_test", "det_train", "det_val"):
        if int(kw[name]) < 0:
            raise ValueError(f"{name} must be >= 0, got {kw[name]}")
    return {
        "generator_version": GENERATOR_VERSION,
        "formats": sorted(set(formats)),
        **{k: (float(v) if k in ("fps", "duration_s") else int(v)) for k, v in kw.items()},
    }


def _prepare_out(out: Path, params: dict, force: bool) -> dict | None:
    """The existing summary if ``out`` already holds these parameters; else clear the way."""
    summary_path = out / "summary.json"
    ours = [out / f for f in FORMATS if (out / f).exists()]
    if summary_path.exists() and not force:
        old = json.loads(summary_path.read_text())
        if old.get("params") == params:
            return old
        diff = sorted(
            k
            for k in set(params) | set(old.get("params", {}))
            if old.get("params", {}).get(k) != params.get(k)
        )
        if diff == ["generator_version"]:  # same settings, older writer: regenerate
            print(f"{out}: written by generator version {old['params'].get('generator_version')}, "
                  f"rewriting it with version {params['generator_version']}")  # fmt: skip
            force = True
    if summary_path.exists() and not force:
        raise FileExistsError(
            f"{out} holds a synthetic dataset generated with different parameters ({', '.join(diff)}: "
            f"{ {k: old.get('params', {}).get(k) for k in diff} } there, "
            f"{ {k: params.get(k) for k in diff} } asked); pass --force to regenerate or pick another --out"
        )
    if ours and not force:
        raise FileExistsError(
            f"{out} has {', '.join(p.name for p in ours)} but no summary.json (an interrupted run?); "
            "pass --force to regenerate"
        )
    for p in ours:
        shutil.rmtree(p)
    summary_path.unlink(missing_ok=True)
    return None


def _write_video_split(
    out: Path, mevis_split: str, hc_split: str, stream: int, n: int, p: dict, cfg: SceneConfig, bar
) -> dict:
    formats = p["formats"]
    mevis_dir, hc_dir = out / "mevis" / mevis_split, out / "hcstvg"
    videos, mask_dict, truth, hc_anno = {}, {}, {}, {}
    next_anno = 0
    n_exp = n_multi = 0
    for i in range(n):
        vid = video_id(mevis_split, i)
        scene = make_scene(scene_seed(p["seed"], stream, i), cfg, video_id=vid)
        frames = [scene.frame(t) for t in range(scene.num_frames)]
        if "mevis" in formats:
            jpg_dir = mevis_dir / "JPEGImages" / vid
            jpg_dir.mkdir(parents=True, exist_ok=True)
            for t, img in enumerate(frames):
                (jpg_dir / f"{t:05d}.jpg").write_bytes(encode_jpeg(img))
            videos[vid], masks, truth[vid] = mevis_entries(scene, next_anno)
            mask_dict.update(masks)
            next_anno += len(scene.objects)
        if "hcstvg" in formats:
            (hc_dir / "video").mkdir(parents=True, exist_ok=True)
            write_mp4(hc_dir / "video" / f"{vid}.mp4", frames, cfg.fps, crf=18)
            hc_anno[f"{vid}.mp4"] = hcstvg_entry(scene)
        n_exp += len(scene.expressions)
        n_multi += sum(e.is_multi for e in scene.expressions)
        bar.update(1)
    counts = {"videos": n, "expressions": n_exp, "multi_object_expressions": n_multi}
    if "mevis" in formats:
        mevis_dir.mkdir(parents=True, exist_ok=True)
        _write_json(mevis_dir / "meta_expressions.json", {"videos": videos})
        _write_json(mevis_dir / "mask_dict.json", mask_dict)
        _write_json(mevis_dir / "synthetic_truth.json", {"videos": truth})
        counts["annotations"] = next_anno
    if "hcstvg" in formats:
        (hc_dir / "anno").mkdir(parents=True, exist_ok=True)
        _write_json(hc_dir / "anno" / f"{hc_split}.json", hc_anno)
    return counts


def _write_yolo(out: Path, p: dict, cfg: SceneConfig, progress: bool) -> dict:
    from tqdm import tqdm

    root = out / "yolo"
    counts = {}
    for split, stream in DET_SPLITS:
        n_images = p["det_train"] if split == "train" else p["det_val"]
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        k = min(DET_FRAMES_PER_SCENE, cfg.num_frames)
        n_scenes = math.ceil(n_images / k)
        written = boxes = 0
        for j in tqdm(
            range(n_scenes), desc=f"detection {split}", disable=not progress, unit="scene"
        ):
            scene = make_scene(scene_seed(p["seed"], stream, j), cfg, with_expressions=False)
            pick = np.random.default_rng([*scene_seed(p["seed"], stream, j), 1])
            frame_ids = sorted(
                int(t)
                for t in pick.choice(cfg.num_frames, min(k, n_images - written), replace=False)
            )
            for t in frame_ids:
                name = f"{split}_{j:04d}_{t:05d}"
                (img_dir / f"{name}.jpg").write_bytes(encode_jpeg(scene.frame(t)))
                lines = yolo_label_lines(scene, t)
                (lbl_dir / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
                written += 1
                boxes += len(lines)
        counts[split] = {"images": written, "boxes": boxes, "scenes": n_scenes}
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(SHAPES))
    (root / "data.yaml").write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )
    return counts


def generate(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    seed: int = 0,
    num_train: int = 32,
    num_test: int = 8,
    det_train: int = 400,
    det_val: int = 80,
    width: int = 320,
    height: int = 240,
    fps: float = 10.0,
    duration_s: float = 8.0,
    formats: Sequence[str] = FORMATS,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write the synthetic dataset under ``out_dir``; returns the summary (also ``summary.json``).

    Idempotent: if ``out_dir`` already holds a dataset made with the same parameters it is
    left alone and its summary returned; other parameters raise ``FileExistsError`` unless
    ``force``, which deletes and rewrites the ``mevis``/``hcstvg``/``yolo`` folders. A
    dataset that an older :data:`GENERATOR_VERSION` wrote with the same parameters is
    rewritten (it is derived data; nothing is lost).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    p = _params(
        seed=seed, num_train=num_train, num_test=num_test, det_train=det_train, det_val=det_val,
        width=width, height=height, fps=fps, duration_s=duration_s, formats=formats,
    )  # fmt: skip
    cfg = SceneConfig(width=width, height=height, fps=fps, duration_s=duration_s)
    existing = _prepare_out(out, p, force)
    if existing is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    counts: dict = {}
    n_videos = num_train + num_test if {"mevis", "hcstvg"} & set(p["formats"]) else 0
    with tqdm(total=n_videos, desc="synthetic videos", disable=not progress, unit="video") as bar:
        for mevis_split, hc_split, stream in VIDEO_SPLITS if n_videos else ():
            n = num_train if mevis_split == "train" else num_test
            counts[mevis_split] = _write_video_split(
                out, mevis_split, hc_split, stream, n, p, cfg, bar
            )
    if "yolo" in p["formats"]:
        counts["yolo"] = _write_yolo(out, p, cfg, progress)
    paths = {}
    if "mevis" in p["formats"]:
        paths["mevis"] = str((out / "mevis").resolve())
    if "hcstvg" in p["formats"]:
        paths["hcstvg"] = str((out / "hcstvg").resolve())
    if "yolo" in p["formats"]:
        paths["yolo_data_yaml"] = str((out / "yolo" / "data.yaml").resolve())
    summary = {"params": p, "counts": counts, "paths": paths, "classes": list(SHAPES)}
    _write_json(out / "summary.json", summary)
    return summary
