"""Evaluate a model or a baseline on shards with the field's metrics.

    python -m trainer.evaluate --model data/runs/train/final --dataset synthetic --split test
    python -m trainer.evaluate --model oracle --dataset synthetic --split test

The predicted IDs become per-frame boxes (and masks, when the shards hold them) taken
from the stored tracks at the ground-truth times; an ID absent in a frame scores 0
there. Writes ``metrics.json``, ``metrics.md`` and ``predictions.jsonl``, with a
breakdown by dataset and query type.

Baselines need no model and go through the same scoring code:
``oracle`` (matched IDs + ground-truth span: the ceiling set by detection and tracking),
``largest`` (the largest track over the whole clip) and ``random`` (a random track and span).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline.records import QueryRecord
from pipeline.runtime import DATA_DIR, RUNS_DIR, resolve
from pipeline.shards import ShardVideo

BASELINES = ("oracle", "largest", "random")


# ------------------------------------------------------------------ baselines


def clip_duration_s(video: ShardVideo) -> float:
    """Length of the clip covered by the shard (stored frames and tracks)."""
    ends = [float(video.frame_times_s[-1]) if len(video.frame_times_s) else 0.0]
    ends += [float(t.times_s[-1]) for t in video.tracks if len(t.times_s)]
    return max(ends) + 1.0 / max(video.out_fps, 1e-6)


def baseline_answer(
    name: str, video: ShardVideo, query: QueryRecord, rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[float, float]]:
    """(ids, span_s) of a model-free baseline."""
    duration = clip_duration_s(video)
    if name == "oracle":
        return tuple(query.target_ids), tuple(query.span_s)
    if not video.tracks:
        return (), (0.0, duration)
    if name == "largest":
        # largest mean box area; ties broken by the longer track
        def size(t):
            wh = np.clip(t.xyxy[:, 2:] - t.xyxy[:, :2], 0, None)
            return (float((wh[:, 0] * wh[:, 1]).mean()), len(t.times_s))

        return (max(video.tracks, key=size).id,), (0.0, duration)
    if name == "random":
        track = video.tracks[int(rng.integers(len(video.tracks)))]
        a, b = np.sort(rng.uniform(0.0, duration, size=2))
        return (track.id,), (float(a), float(b))
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


# ------------------------------------------------------------------ scoring


def score_sample(
    video: ShardVideo,
    query: QueryRecord,
    ids: Sequence[int],
    span_s: tuple[float, float] | None,
    *,
    max_gap_s: float,
) -> dict:
    """tIoU, vIoU, ID correctness (and J&F when masks are stored) for one answer."""
    from trainer.metrics import sample_metrics

    result = dict(sample_metrics(video, query, ids, span_s, max_gap_s=max_gap_s))
    if has_masks(video, query):
        result.update(mask_metrics(video, query, ids, span_s, max_gap_s=max_gap_s))
    return result


def has_masks(video: ShardVideo, query: QueryRecord) -> bool:
    """True when the query's ground truth and every track carry masks (J&F can be scored)."""
    return (
        bool(query.gt)
        and all(g.masks_rle is not None for g in query.gt)
        and bool(video.tracks)
        and all(t.masks_rle is not None for t in video.tracks)
    )


def _mask_at(times_s, masks_rle, t: float, tol: float, hw) -> np.ndarray:
    """(H, W) bool: the mask observed nearest to ``t`` (within ``tol``), else empty."""
    from pipeline.geometry import nearest_index, rle_to_mask

    i = int(nearest_index(times_s, np.array([t]), tol)[0])
    if i < 0 or masks_rle[i] is None:
        return np.zeros(hw, dtype=bool)
    return rle_to_mask(masks_rle[i], *hw)


def _track_mask_at(track, t: float, max_gap_s: float, hw) -> np.ndarray:
    """A track's mask at ``t``: empty wherever its box is absent (outside its life or in a
    gap longer than ``max_gap_s``, as :meth:`Track.boxes_at` decides, so J&F and vIoU agree
    on when an ID is present); otherwise the mask of its nearest observation."""
    if np.isnan(track.boxes_at(np.array([t]), max_gap_s)).any():
        return np.zeros(hw, dtype=bool)
    return _mask_at(track.times_s, track.masks_rle, t, max_gap_s, hw)


def mask_metrics(video, query, ids, span_s, *, max_gap_s: float) -> dict:
    """J&F at the stored frame times: union of the predicted IDs' track masks inside the
    predicted span against the union of the ground-truth masks."""
    from trainer.metrics import j_and_f

    hw = (video.height, video.width)
    gt_tol = 0.5 / max(video.native_fps, 1e-6)
    preds, gts = [], []
    chosen = [t for t in video.tracks if t.id in {int(i) for i in ids}]
    for t in video.frame_times_s.tolist():
        gt = np.zeros(hw, dtype=bool)
        for g in query.gt:
            gt |= _mask_at(g.times_s, g.masks_rle, t, gt_tol, hw)
        pred = np.zeros(hw, dtype=bool)
        if span_s is not None and span_s[0] <= t <= span_s[1]:
            for tr in chosen:
                pred |= _track_mask_at(tr, t, max_gap_s, hw)
        preds.append(pred)
        gts.append(gt)
    return dict(j_and_f(preds, gts))


def summarize_groups(results: Sequence[dict]) -> dict:
    """Overall metrics plus breakdowns by dataset and by query type."""
    from trainer.metrics import summarize

    def with_masks(rows):
        out = dict(summarize(rows))
        jf = [r for r in rows if "J&F" in r]
        if jf:
            for k in ("J", "F", "J&F"):
                out[k] = 100.0 * float(np.mean([r[k] for r in jf]))
        return out

    summary = {"overall": with_masks(results)}
    for key in ("dataset", "qtype"):
        groups = defaultdict(list)
        for r in results:
            groups[r[key]].append(r)
        if len(groups) > 1 or key == "qtype":
            summary[f"by_{key}"] = {k: with_masks(v) for k, v in sorted(groups.items())}
    return summary


def markdown_table(summaries: dict[str, dict]) -> str:
    """One row per model/baseline: the headline metrics in percent."""
    cols = ["m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "id_acc", "J&F", "n"]
    present = [c for c in cols if any(c in s["overall"] for s in summaries.values())]
    lines = ["| model | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for name, s in summaries.items():
        o = s["overall"]
        cells = [
            ("" if c not in o else (str(int(o[c])) if c == "n" else f"{o[c]:.1f}")) for c in present
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ running


def eval_items(
    shards: Path, limit: int | None = None
) -> tuple[list[tuple[ShardVideo, QueryRecord]], int]:
    """The (video, query) pairs to score, in shard order, and how many queries were skipped
    for having no ground truth (e.g. MeViS ``valid``: it cannot be scored here).

    Queries with ground truth but no matched track are kept: they score 0 for the model,
    which is the cost of a detection or tracking miss.
    """
    from pipeline.shards import list_shards, read_videos

    if not list_shards(shards):
        raise SystemExit(f"no shard files (*.parquet) in {shards}")
    items: list[tuple[ShardVideo, QueryRecord]] = []
    skipped = 0
    for video in read_videos(shards):
        for query in video.queries:
            if not query.gt:
                skipped += 1
            elif limit is None or len(items) < limit:
                items.append((video, query))
        if limit is not None and len(items) >= limit:
            break
    return items, skipped


def iter_eval_items(shards: Path, limit: int | None) -> Iterable[tuple[ShardVideo, QueryRecord]]:
    """The annotated (video, query) pairs of :func:`eval_items`."""
    yield from eval_items(shards, limit)[0]


def evaluate(
    model: str,
    shards: Path,
    out_dir: Path,
    *,
    template: str = "json",
    rollout: str = "hf",
    limit: int | None = None,
    max_new_tokens: int = 256,
    fps: float = 2.0,
    max_frames: int | None = 32,
    total_pixels: int = 2048 * 28 * 28,
    max_gap_s: float = 0.5,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score ``model`` (a checkpoint, hub id or baseline name) on every annotated query.

    Writes ``predictions.jsonl`` (one line per scored query), ``metrics.json`` and
    ``metrics.md`` into ``out_dir``. Returns the summary: ``overall`` and ``by_qtype``
    (plus ``by_dataset`` when the shards mix datasets) in percent, ``n_queries`` scored
    and ``n_skipped_no_gt`` (queries without ground truth).
    """
    from tqdm import tqdm

    from pipeline.shards import write_json_atomic

    items, skipped = eval_items(shards, limit)
    if not items:
        raise SystemExit(f"no annotated queries in {shards} ({skipped} without ground truth)")
    rng = np.random.default_rng(seed)
    results = []
    if model in BASELINES:
        answers = [(*baseline_answer(model, v, q, rng), None) for v, q in items]
    else:
        answers = _model_answers(
            model, items, template=template, rollout=rollout, max_new_tokens=max_new_tokens,
            fps=fps, max_frames=max_frames, total_pixels=total_pixels, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w") as f:
        for (video, query), (ids, span, text) in tqdm(
            list(zip(items, answers)), desc="score", disable=not progress
        ):
            r = score_sample(video, query, ids, span, max_gap_s=max_gap_s)
            r.update(
                video_id=video.video_id,
                query_id=query.query_id,
                dataset=video.dataset,
                qtype=query.qtype,
                pred_ids=list(ids),
                pred_span_s=None if span is None else [float(span[0]), float(span[1])],
                gt_ids=list(query.target_ids),
                gt_span_s=list(query.span_s),
            )
            if text is not None:
                r["completion"] = text
            results.append(r)
            f.write(json.dumps(r, default=float) + "\n")
    summary = summarize_groups(results)
    summary.update(model=model, shards=str(shards), n_queries=len(results), n_skipped_no_gt=skipped)
    write_json_atomic(out_dir / "metrics.json", summary)
    (out_dir / "metrics.md").write_text(markdown_table({Path(model).name or model: summary}))
    return summary


def _model_answers(model, items, *, template, rollout, max_new_tokens, fps, max_frames,
                   total_pixels, batch_size, progress):  # fmt: skip
    """Greedy answers of a Qwen2.5-VL checkpoint, parsed with the contract parser."""
    from tqdm import tqdm

    from trainer.data import make_sample
    from trainer.policy import load_policy, resolve_device
    from trainer.prompt import parse_answer
    from trainer.rollout import build_requests, make_engine

    device = resolve_device("auto")
    policy, processor = load_policy(str(model), device=device)
    policy.eval()
    engine = make_engine(rollout, policy, processor)
    out = []
    for start in tqdm(range(0, len(items), batch_size), desc="generate", disable=not progress):
        chunk = items[start : start + batch_size]
        samples = [
            make_sample(v, q, fps=fps, max_frames=max_frames, total_pixels=total_pixels)
            for v, q in chunk
        ]
        requests = build_requests(samples, processor, template)
        groups = engine.generate(
            requests, num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0
        )
        for group in groups:
            text = group[0].text
            a = parse_answer(text)
            span = None if a.start_s is None or a.end_s is None else (a.start_s, a.end_s)
            out.append((tuple(a.ids), span, text))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description=(
            "Score a Qwen2.5-VL checkpoint (local folder or cached hub id) or a baseline "
            f"({', '.join(BASELINES)}) on preprocessed shards: m_tIoU, m_vIoU, vIoU@0.3/0.5, "
            "ID accuracy, and J&F when masks are stored."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder, hub id, or one of " + ", ".join(BASELINES),
    )
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="dataset name (shards in data/shards/<dataset>/<split>)",
    )
    p.add_argument(
        "--split", help="dataset split (default: the last split listed in data/datasets.yaml)"
    )
    p.add_argument("--shards", type=Path, help="shard folder (overrides --dataset/--split)")
    p.add_argument(
        "--out", type=Path, help="output folder (default: data/runs/eval/<model>/<dataset>_<split>)"
    )
    p.add_argument(
        "--template",
        help="prompt template (json, stvg_r1, ...); default: the model's training config, else json",
    )
    p.add_argument("--rollout", default="hf", choices=["hf", "vllm"], help="generation engine")
    p.add_argument("--limit", type=int, help="score at most N queries")
    # model inputs: default to what the checkpoint was trained with (its train_config.yaml)
    p.add_argument("--max-new-tokens", type=int, help="default: training config, else 256")
    p.add_argument(
        "--fps", type=float, help="frames/s given to the model (default: training config, else 2)"
    )
    p.add_argument("--max-frames", type=int, help="default: training config, else 32")
    p.add_argument(
        "--total-pixels",
        type=int,
        help="pixel budget over all frames (default: training config, else 2048*28*28)",
    )
    p.add_argument("--max-gap-s", type=float, default=0.5, help="track interpolation limit")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.split is None and not args.shards:
        from pipeline.datasets import load_specs

        spec = load_specs().get(args.dataset)
        args.split = spec.splits[-1] if spec is not None else "test"
    shards = (
        resolve(args.shards) if args.shards else DATA_DIR / "shards" / args.dataset / args.split
    )
    if not shards.exists():
        raise SystemExit(
            f"error: no shard folder {shards}; write it with `make preprocess DATASET=<name> "
            "SPLIT=<split>` (python -m pipeline.preprocess) or pass --shards"
        )
    if args.model in BASELINES:
        model = name = args.model
    else:
        local = resolve(args.model)
        hub_id = args.model.count("/") == 1 and not args.model.startswith((".", "/", "~"))
        if not local.exists() and not hub_id:
            raise SystemExit(
                f"error: no model folder {local}; train one (`make train`), or pass a hub id "
                f"or a baseline ({', '.join(BASELINES)})"
            )
        model = str(local) if local.exists() else args.model  # else a hub id in the local cache
        name = Path(args.model).name or args.model.replace("/", "_")
        if name in ("final", "model") or name.startswith("checkpoint-"):
            name = f"{Path(args.model).resolve().parent.name}_{name}"  # e.g. train_final
    out = (
        resolve(args.out)
        if args.out
        else RUNS_DIR / "eval" / name / f"{shards.parent.name}_{shards.name}"
    )
    from trainer.config import inference_settings

    inputs = inference_settings(
        None if model in BASELINES else model, template=args.template, fps=args.fps,
        max_frames=args.max_frames, total_pixels=args.total_pixels,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    try:
        summary = evaluate(
            model,
            shards,
            out,
            rollout=args.rollout,
            limit=args.limit,
            **inputs,
            max_gap_s=args.max_gap_s,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except FileNotFoundError as err:  # a model that is neither a folder nor cached
        raise SystemExit(f"error: {err}") from None
    print(markdown_table({name: summary}), end="")
    skipped = summary["n_skipped_no_gt"]
    if skipped:
        print(f"{skipped} quer{'y' if skipped == 1 else 'ies'} without ground truth skipped")
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
