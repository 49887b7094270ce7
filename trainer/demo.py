"""The whole chain on the embedded synthetic default, from nothing, on a CPU.

    make demo            # or: python -m trainer.demo

synthetic videos (HC-STVG format) -> preprocess with the committed detector -> a short GRPO
run on the tiny Qwen2.5-VL -> evaluation of the trained model (and of the supervised
cold-start model before GRPO, when the run saved one) with baselines, under the official
protocol and the STVG-R1 release's -> zero-shot evaluation on the synthetic MeViS test
split, whose J&F comes from the masks the committed segmentation detector predicted ->
an overlaid ID video and a prediction video. Every step is idempotent (reruns reuse what is already there), and
everything lands under ``data/runs/demo`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.runtime import DATA_DIR, RUNS_DIR, resolve

DEMO_PROTOCOLS = ("official", "stvg_r1")
MEVIS_NOTE = (
    "Zero-shot on the synthetic MeViS test split (the model was trained on the HC-STVG "
    "format); J&F from the predicted masks of the chosen IDs inside the predicted span."
)
TABLE_NOTE = (
    "vIoU on every native frame of the union of the predicted and ground-truth spans; rows "
    "marked (stvg_r1) follow the STVG-R1 release's evaluator (docs/DESIGN.md, Metrics)."
)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def render_overlay_video(shards: Path, out: Path) -> Path:
    """The stored, overlaid frames of the first video of a shard folder as an mp4."""
    from pipeline.shards import read_videos
    from pipeline.video_io import write_mp4

    video = next(iter(read_videos(shards)))
    return write_mp4(out / f"overlay_{video.video_id}.mp4", video.decode_frames(), video.out_fps)


def evaluated_models(train_dir: Path, final: Path) -> list[tuple[str, str]]:
    """(table label, model) of the demo's trained models: the supervised cold start saved
    at ``<train_dir>/cold_start`` before GRPO (when the run has one), then the final model."""
    cold = Path(train_dir) / "cold_start"
    models = [("cold-start", str(cold))] if (cold / "config.json").is_file() else []
    return [*models, ("grpo-tiny", str(final))]


def _evaluate_models(
    models, shards: Path, out_dir: Path, cfg, protocols, table: Path, note: str
) -> str:
    """Evaluate ``(label, model)`` pairs on ``shards``, fed as ``cfg`` trained the model;
    writes ``<out_dir>/<label>/`` and the markdown table plus ``note`` to ``table``."""
    from trainer.evaluate import evaluate, markdown_table

    summaries = {}
    for label, name in models:
        summaries[label] = evaluate(name, shards, out_dir / label, template=cfg.template,
                                    max_new_tokens=cfg.max_new_tokens, fps=cfg.fps,
                                    max_frames=cfg.max_frames, total_pixels=cfg.total_pixels,
                                    protocols=protocols, progress=False)  # fmt: skip
    text = markdown_table(summaries)
    table.write_text(text + "\n" + note + "\n")
    return text


def evaluate_all(out: Path, final: Path, test_shards: Path, cfg) -> str:
    """Evaluate the trained models and the baselines under both protocols, fed as ``cfg``
    trained them; writes ``<out>/eval/<label>/`` and ``<out>/metrics.md``, returns the table."""
    from trainer.evaluate import BASELINES

    models = [*evaluated_models(out / "train", final), *((b, b) for b in BASELINES)]
    return _evaluate_models(models, test_shards, out / "eval", cfg, DEMO_PROTOCOLS,
                            out / "metrics.md", TABLE_NOTE)  # fmt: skip


def evaluate_zero_shot(out: Path, final: Path, shards: Path, cfg) -> str:
    """The trained model and the baselines on the synthetic MeViS test split (multi-target
    expressions; masks in the ground truth and in every track, so J&F is scored from the
    predicted masks); writes ``<out>/eval-mevis/<label>/`` and ``<out>/metrics-mevis.md``."""
    from trainer.evaluate import BASELINES

    models = [("grpo-tiny", str(final)), *((b, b) for b in BASELINES)]
    return _evaluate_models(models, shards, out / "eval-mevis", cfg, ("official",),
                            out / "metrics-mevis.md", MEVIS_NOTE)  # fmt: skip


def preprocess_splits(
    spec, root: Path, shard_root: Path, *, progress: bool, splits: Sequence[str] | None = None
) -> dict:
    """Shards of ``splits`` (default: every split of ``spec``) under ``shard_root`` (reused when
    already there, rebuilt when made by other settings); prints each split's ID quality.
    Returns the manifests."""
    from pipeline.config import PreprocessConfig
    from pipeline.datasets import iter_records
    from pipeline.output import OutputConflictError
    from pipeline.preprocess import run

    manifests = {}
    for split in splits or spec.splits:
        records = list(iter_records(spec, split, root=root))
        kwargs = dict(progress=progress, meta={"dataset": spec.name, "split": split})
        try:
            manifests[split] = run(records, shard_root / split, PreprocessConfig(), **kwargs)
        except OutputConflictError as err:  # made by other settings: the demo owns them
            print(f"   rebuilding {split}: {err}")
            manifests[split] = run(records, shard_root / split, PreprocessConfig(),
                                   overwrite=True, **kwargs)  # fmt: skip
        c = manifests[split]["counts"]
        print(f"   {split}: {c['videos']} videos, right IDs {100 * c['exact_rate']:.1f}%, "
              f"mean match IoU {c['mean_match_iou']:.3f}, failed {c['videos_failed']}")  # fmt: skip
    return manifests


def run_demo(
    out: Path,
    *,
    data_dir: Path = DATA_DIR,
    train_config: str = "configs/tiny_synthetic.yaml",
    train_overrides: Sequence[str] = (),
    synthetic: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run every step; ``data_dir`` holds raw data, shards and the tiny model."""
    from pipeline.datasets import iter_records, load_specs
    from pipeline.synthetic import generate
    from trainer.config import load_config
    from trainer.predict import predict
    from trainer.tiny import ensure_tiny_model
    from trainer.train import train

    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = _step("1/7 synthetic dataset (HC-STVG + MeViS + YOLO formats)")
    raw = data_dir / "raw" / "synthetic"
    generate(raw, progress=progress, **(synthetic or {}))
    timings["synthetic_s"] = time.perf_counter() - t

    t = _step("2/7 preprocess: detect, track, overlay IDs, match, write shards")
    spec = load_specs()["synthetic"]
    root = raw / "hcstvg"
    shard_root = data_dir / "shards" / "synthetic"
    preprocess_splits(spec, root, shard_root, progress=progress)
    timings["preprocess_s"] = time.perf_counter() - t
    train_split, test_split = spec.splits[0], spec.splits[-1]

    t = _step("3/7 tiny Qwen2.5-VL + GRPO")
    tiny = ensure_tiny_model(data_dir / "models" / "tiny-qwen2.5-vl")
    overrides = [
        f"model={tiny}",
        f"output_dir={out / 'train'}",
        f"train_shards={shard_root / train_split}",
        *train_overrides,
    ]
    cfg = load_config(resolve(train_config), overrides)
    final = train(cfg, progress=progress, overwrite=True)  # a demo run always starts afresh
    timings["train_s"] = time.perf_counter() - t

    t = _step("4/7 evaluation: trained models and baselines")
    test_shards = shard_root / test_split
    table = evaluate_all(out, final, test_shards, cfg)
    timings["eval_s"] = time.perf_counter() - t

    t = _step("5/7 zero-shot evaluation on the synthetic MeViS test split (J&F from masks)")
    mevis = load_specs()["synthetic-mevis"]
    mevis_shards = data_dir / "shards" / "synthetic-mevis"
    mevis_split = mevis.splits[-1]
    preprocess_splits(mevis, raw / "mevis", mevis_shards, progress=progress, splits=[mevis_split])
    mevis_table = evaluate_zero_shot(out, final, mevis_shards / mevis_split, cfg)
    timings["eval_mevis_s"] = time.perf_counter() - t

    t = _step("6/7 overlaid ID video")
    overlay_mp4 = render_overlay_video(test_shards, out)
    timings["overlay_s"] = time.perf_counter() - t

    t = _step("7/7 prediction on a raw synthetic video")
    record = next(iter(iter_records(spec, test_split, root=root)))
    prediction = predict(record.source, record.queries[0].text, model=str(final),
                         out=out / f"predict_{record.video_id}.mp4", max_new_tokens=cfg.max_new_tokens)  # fmt: skip
    (out / "prediction.json").write_text(json.dumps(prediction, indent=2))
    timings["predict_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    summary = {
        "shards": str(shard_root),
        "manifest": str(shard_root / train_split / "_manifest.json"),
        "model": str(final),
        "train_metrics": str(out / "train" / "metrics.jsonl"),
        "metrics_table": str(out / "metrics.md"),
        "metrics_table_mevis": str(out / "metrics-mevis.md"),
        "overlay_video": str(overlay_mp4),
        "prediction_video": prediction["output"],
        "prediction": {k: prediction[k] for k in ("query", "ids", "span_s", "format_ok")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _report(summary, table, mevis_table)
    return summary


def _report(summary: dict, table: str, mevis_table: str) -> None:
    """Every output path, the prediction, the time and the metrics tables."""
    print("\n== demo finished\n")
    paths = ("shards", "manifest", "model", "train_metrics", "metrics_table",
             "metrics_table_mevis", "overlay_video", "prediction_video")  # fmt: skip
    for key in paths:
        print(f"{key:>19}: {summary[key]}")
    print(f"{'prediction':>19}: {json.dumps(summary['prediction'])}")
    print(f"{'time':>19}: {summary['timings_s']['total_s']} s")
    print("\n" + table)
    print("zero-shot, synthetic MeViS test split:\n" + mevis_table)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.demo",
        description="End-to-end demo on the synthetic default (CPU, a few minutes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=RUNS_DIR / "demo", help="where every output goes")
    p.add_argument("--config", default="configs/tiny_synthetic.yaml", help="training config")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="training config overrides, e.g. max_steps=10",
    )
    p.add_argument("--num-train", type=int, default=32, help="synthetic training videos")
    p.add_argument("--num-test", type=int, default=8, help="synthetic test videos")
    args = p.parse_args(argv)
    run_demo(args.out, train_config=args.config, train_overrides=args.set,
             synthetic={"num_train": args.num_train, "num_test": args.num_test})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
