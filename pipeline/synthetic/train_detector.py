"""Train the project's small YOLO detector on synthetic detection sets (CPU).

The model is built from ``yolo11n.yaml`` (``yolo11n-seg.yaml`` with ``--segment``) with
random weights (no pretrained checkpoint exists offline) or fine-tuned from a checkpoint
(``--init``), trained on a YOLO ``data.yaml`` (default ``<synthetic root>/yolo/data.yaml``,
whose polygon labels serve both tasks) and copied, optimizer
stripped, to ``pipeline/assets/synthetic-yolo11n-seg.pt`` with its validation metrics and
settings beside it (``synthetic-yolo11n-seg.json``; a fine-tuned model's record nests the
record of the checkpoint it started from). It is the detector used wherever real YOLO
weights are not named. The committed one took four runs (``make detector`` repeats
them): a detector trained 30 epochs from scratch at 192 px on 400 images, 20 more at
320 px, then 15 at 320 px on 1,200 images from 150 scenes; then the segmentation model
started from it (backbone, neck and box/class branches carried over) and trained 10
epochs at 320 px on the same 1,200 images with their mask polygons. Run
``python -m pipeline.synthetic.train_detector --help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import yaml

from pipeline.detect import DEFAULT_WEIGHTS_NAME
from pipeline.runtime import ASSETS_DIR, DATA_DIR, RUNS_DIR, configure_offline, resolve
from pipeline.shards import write_json_atomic

DEFAULT_ROOT = DATA_DIR / "raw" / "synthetic"
DEFAULT_OUT = ASSETS_DIR / DEFAULT_WEIGHTS_NAME
"""Where a segmentation run writes by default: the committed checkpoint."""
DETECTION_OUT = RUNS_DIR / "detector" / "synthetic-yolo11n.pt"
"""Where a detection run writes by default (a stage of ``make detector``, not the asset)."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def ensure_dataset(root: Path) -> Path:
    """``<root>/yolo/data.yaml``, generating the synthetic set there first if it is missing."""
    data_yaml = root / "yolo" / "data.yaml"
    if not data_yaml.exists():
        from pipeline import synthetic

        print(f"{data_yaml} not found: generating the synthetic set in {root}")
        synthetic.generate(root)  # defaults, as `make synthetic`, so the two agree on the root
        if not data_yaml.exists():
            raise FileNotFoundError(
                f"pipeline.synthetic.generate({root}) did not write {data_yaml}"
            )
    return data_yaml


def describe_dataset(data_yaml: Path) -> dict:
    """Class names and image counts per split of a YOLO data.yaml (recorded with the metrics)."""
    cfg = yaml.safe_load(data_yaml.read_text())
    base = Path(cfg.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = data_yaml.parent / base
    counts = {}
    for split in ("train", "val", "test"):
        if cfg.get(split):
            d = base / cfg[split]
            counts[split] = (
                sum(1 for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if d.is_dir()
                else None
            )
    names = cfg.get("names")
    names = list(names.values()) if isinstance(names, dict) else list(names or [])
    out = {"data_yaml": str(data_yaml), "names": names, "images": counts}
    summary = data_yaml.parent.parent / "summary.json"  # written by pipeline.synthetic
    if summary.exists():
        out["synthetic_params"] = json.loads(summary.read_text()).get("params")
    return out


def train(
    data_yaml: Path,
    *,
    epochs: int = 30,
    imgsz: int = 192,
    batch: int = 16,
    out: Path | None = None,
    run_dir: Path = RUNS_DIR / "detector",
    workers: int = 2,
    seed: int = 0,
    device: str = "cpu",
    val_every_epoch: bool = False,
    scale: float = 0.25,
    close_mosaic: int = 15,
    init: Path | None = None,
    segment: bool = False,
) -> dict:
    """Train from ``yolo11n.yaml`` (or fine-tune ``init``), copy the stripped ``best.pt`` to ``out``, write ``out``.json.

    Returns the metrics dict that is written (mAP50 and mAP50-95 on the val split,
    the training settings, wall time and the dataset description). Validation runs
    after the last epoch only unless ``val_every_epoch`` (then ``best.pt`` is the best
    epoch rather than the last), which saves CPU time on the short default schedule.
    The synthetic frames all have one size, so zoom augmentation is milder than
    Ultralytics' defaults (``scale`` 0.25 instead of 0.5, mosaic off for the last
    ``close_mosaic`` epochs instead of 10): at ~200 px strong zoom-out mostly teaches
    objects smaller than the detector ever sees. ``init`` starts from an existing
    checkpoint instead of random weights (e.g. the committed one, to retrain it at a
    larger ``imgsz`` in fewer epochs); its name is recorded in the metrics.
    """
    configure_offline()
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    data_yaml = Path(data_yaml).resolve()
    run_dir = Path(run_dir).resolve()
    if init is not None:
        init = Path(init).resolve()
        if not init.is_file():
            raise FileNotFoundError(f"--init checkpoint {init} does not exist")
    if segment:
        # architecture only (nothing to download); a detection checkpoint's backbone, neck
        # and box/class branches carry over by name, the mask branch starts random
        model = YOLO("yolo11n-seg.yaml")
        if init is not None:
            model.load(str(init))
    elif init is None:
        model = YOLO("yolo11n.yaml")  # architecture only: random init, nothing to download
    else:
        model = YOLO(str(init))
    t0 = time.perf_counter()
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        workers=workers,
        seed=seed,
        deterministic=True,
        pretrained=init is not None,
        amp=False,
        plots=False,
        val=val_every_epoch,
        scale=scale,
        close_mosaic=close_mosaic,
        cache="ram",
        project=str(run_dir.parent),
        name=run_dir.name,
        exist_ok=True,
        verbose=False,
    )
    train_time_s = time.perf_counter() - t0
    best = Path(model.trainer.best)
    if not best.exists():
        raise RuntimeError(f"training finished without a best checkpoint at {best}")
    task = model.task  # "segment" also for a segmentation checkpoint fine-tuned without --segment
    if out is None:
        out = DEFAULT_OUT if task == "segment" else DETECTION_OUT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".pt.tmp")
    shutil.copyfile(best, tmp)
    strip_optimizer(tmp)  # already stripped by Ultralytics; keeps the asset small either way
    tmp.replace(out)

    val = YOLO(str(out)).val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=batch,
        device=device,
        plots=False,
        verbose=False,
        project=str(run_dir.parent),
        name=run_dir.name + "-val",
        exist_ok=True,
    )
    metrics = {
        "checkpoint": out.name,
        "mAP50": round(float(val.box.map50), 4),
        "mAP50-95": round(float(val.box.map), 4),
        **(
            {
                "mask_mAP50": round(float(val.seg.map50), 4),
                "mask_mAP50-95": round(float(val.seg.map), 4),
            }
            if segment
            else {}
        ),
        "task": task,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "seed": seed,
        "val_every_epoch": val_every_epoch,
        "scale": scale,
        "close_mosaic": close_mosaic,
        "init": None if init is None else init.name,
        # the fine-tuned checkpoint's own record (its settings, data and lineage)
        "init_metrics": _read_metrics(init),
        "train_time_s": round(train_time_s, 1),
        "device": device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "size_bytes": out.stat().st_size,
        "data": describe_dataset(data_yaml),
    }
    write_json_atomic(out.with_suffix(".json"), metrics)
    return metrics


def _read_metrics(checkpoint: Path | None) -> dict | None:
    """The metrics JSON written beside a checkpoint by :func:`train`, if there is one."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic.train_detector",
        description="Train the small YOLO detector (yolo11n, random init) on the synthetic set.",
    )
    ap.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="synthetic dataset root holding yolo/data.yaml (generated if missing)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a YOLO data.yaml to train on instead of <root>/yolo/data.yaml",
    )
    ap.add_argument("--epochs", type=int, default=30, help="training epochs")
    ap.add_argument("--imgsz", type=int, default=192, help="training/validation image size (px)")
    ap.add_argument("--batch", type=int, default=16, help="batch size")
    ap.add_argument("--workers", type=int, default=2, help="dataloader workers")
    ap.add_argument(
        "--seed", type=int, default=0, help="training seed (Ultralytics deterministic mode)"
    )
    ap.add_argument("--scale", type=float, default=0.25, help="zoom augmentation gain (+/-)")
    ap.add_argument(
        "--close-mosaic", type=int, default=15, help="final epochs trained without mosaic"
    )
    ap.add_argument(
        "--val-every-epoch",
        action="store_true",
        help="validate after every epoch and keep the best (default: validate once at the end)",
    )
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="fine-tune this checkpoint instead of training yolo11n from random weights",
    )
    ap.add_argument(
        "--segment",
        action="store_true",
        help="train yolo11n-seg (boxes and masks; with --init, a detection checkpoint's weights carry over)",
    )
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or 0")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the checkpoint (metrics go to the same name .json); default: "
        "the committed pipeline/assets/synthetic-yolo11n-seg.pt for a segmentation model, "
        "data/runs/detector/synthetic-yolo11n.pt for a detection one",
    )
    ap.add_argument(
        "--run-dir",
        type=Path,
        default=RUNS_DIR / "detector",
        help="Ultralytics run directory (weights, results.csv)",
    )
    args = ap.parse_args(argv)
    data_yaml = resolve(args.data) if args.data else ensure_dataset(resolve(args.root))
    metrics = train(
        data_yaml,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        out=resolve(args.out) if args.out else None,
        run_dir=resolve(args.run_dir),
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        val_every_epoch=args.val_every_epoch,
        scale=args.scale,
        close_mosaic=args.close_mosaic,
        init=resolve(args.init) if args.init else None,
        segment=args.segment,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
