"""The whole chain on the embedded synthetic default, from nothing, on a CPU.

    make demo            # or: python -m trainer.demo

synthetic videos (HC-STVG format) -> preprocess with the committed detector -> a short GRPO
run on the tiny Qwen2.5-VL -> evaluation with baselines -> an overlaid ID video and a
prediction video. Every step is idempotent (reruns reuse what is already there), and
everything lands under ``data/runs/demo`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.runtime import DATA_DIR, RUNS_DIR


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def render_overlay_video(shards: Path, out: Path) -> Path:
    """The stored, overlaid frames of the first video of a shard folder as an mp4."""
    from pipeline.shards import read_videos
    from pipeline.video_io import write_mp4

    video = next(iter(read_videos(shards)))
    return write_mp4(out / f"overlay_{video.video_id}.mp4", video.decode_frames(), video.out_fps)


def run_demo(out: Path, *, train_config: str, train_steps: int | None, num_train: int, num_test: int) -> dict:
    from pipeline.datasets import iter_records, load_specs
    from pipeline.preprocess import PreprocessConfig, run
    from pipeline.synthetic import generate
    from trainer.config import load_config
    from trainer.evaluate import BASELINES, evaluate, markdown_table
    from trainer.predict import predict
    from trainer.tiny import ensure_tiny_model
    from trainer.train import train

    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = _step("1/6 synthetic dataset (HC-STVG + MeViS + YOLO formats)")
    raw = DATA_DIR / "raw" / "synthetic"
    generate(raw, num_train=num_train, num_test=num_test)
    timings["synthetic_s"] = time.perf_counter() - t

    t = _step("2/6 preprocess: detect, track, overlay IDs, match, write shards")
    spec = load_specs()["synthetic"]
    manifests = {}
    for split in spec.splits:
        shards = DATA_DIR / "shards" / "synthetic" / split
        manifests[split] = run(
            list(iter_records(spec, split)), shards, PreprocessConfig(),
            meta={"dataset": "synthetic", "split": split},
        )  # fmt: skip
        c = manifests[split]["counts"]
        print(f"   {split}: {c['videos']} videos, right IDs {100 * c['exact_rate']:.1f}%, "
              f"mean match IoU {c['mean_match_iou']:.3f}, failed {c['videos_failed']}")  # fmt: skip
    timings["preprocess_s"] = time.perf_counter() - t
    train_split, test_split = spec.splits[0], spec.splits[-1]

    t = _step("3/6 tiny Qwen2.5-VL + GRPO")
    ensure_tiny_model()
    overrides = [f"output_dir={out / 'train'}", f"train_shards={DATA_DIR / 'shards' / 'synthetic' / train_split}"]
    if train_steps is not None:
        overrides.append(f"max_steps={train_steps}")
    cfg = load_config(train_config, overrides)
    final = train(cfg)
    timings["train_s"] = time.perf_counter() - t

    t = _step("4/6 evaluation: trained model and baselines")
    test_shards = DATA_DIR / "shards" / "synthetic" / test_split
    summaries = {}
    for name in (str(final), *BASELINES):
        label = "grpo-tiny" if name == str(final) else name
        summaries[label] = evaluate(name, test_shards, out / "eval" / label, template=cfg.template,
                                    max_new_tokens=cfg.max_new_tokens, progress=False)  # fmt: skip
    table = markdown_table(summaries)
    (out / "metrics.md").write_text(table)
    timings["eval_s"] = time.perf_counter() - t

    t = _step("5/6 overlaid ID video")
    overlay_mp4 = render_overlay_video(test_shards, out)
    timings["overlay_s"] = time.perf_counter() - t

    t = _step("6/6 prediction on a raw synthetic video")
    record = next(iter(iter_records(spec, test_split)))
    prediction = predict(record.source, record.queries[0].text, model=str(final),
                         out=out / f"predict_{record.video_id}.mp4", max_new_tokens=cfg.max_new_tokens)  # fmt: skip
    (out / "prediction.json").write_text(json.dumps(prediction, indent=2))
    timings["predict_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    summary = {
        "shards": str(DATA_DIR / "shards" / "synthetic"),
        "manifest": str(DATA_DIR / "shards" / "synthetic" / train_split / "manifest.json"),
        "model": str(final),
        "train_metrics": str(out / "train" / "metrics.jsonl"),
        "metrics_table": str(out / "metrics.md"),
        "overlay_video": str(overlay_mp4),
        "prediction_video": prediction["output"],
        "prediction": {k: prediction[k] for k in ("query", "ids", "span_s", "format_ok")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== demo finished\n")
    for key in ("shards", "manifest", "model", "train_metrics", "metrics_table", "overlay_video", "prediction_video"):
        print(f"{key:>17}: {summary[key]}")
    print(f"{'prediction':>17}: {json.dumps(summary['prediction'])}")
    print(f"{'time':>17}: {summary['timings_s']['total_s']} s")
    print("\n" + table)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.demo",
        description="End-to-end demo on the synthetic default (CPU, a few minutes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=RUNS_DIR / "demo", help="where every output goes")
    p.add_argument("--config", default="configs/tiny_synthetic.yaml", help="training config")
    p.add_argument("--train-steps", type=int, help="override the config's max_steps")
    p.add_argument("--num-train", type=int, default=32, help="synthetic training videos")
    p.add_argument("--num-test", type=int, default=8, help="synthetic test videos")
    args = p.parse_args(argv)
    run_demo(args.out, train_config=args.config, train_steps=args.train_steps,
             num_train=args.num_train, num_test=args.num_test)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
