"""Evaluate a model or a baseline on shards with the field's metrics.

    python -m trainer.evaluate --model data/runs/train/final --dataset synthetic --split test
    python -m trainer.evaluate --model oracle --dataset synthetic --split test
    python -m trainer.evaluate --model oracle --protocol official stvg_r1
    python -m trainer.evaluate --model M --dataset mevis --split valid --export-submission s.zip

The predicted IDs become per-frame boxes (and masks, when the shards hold them) taken
from the stored tracks on every native frame of the spans; an ID absent in a frame scores
0 there (the official vIoU, :func:`trainer.metrics.tube_viou`; ``--protocol stvg_r1`` adds
the STVG-R1 release's conventions, :mod:`trainer.protocols`). Writes ``metrics.json``,
``metrics.md`` and ``predictions.jsonl``, with a breakdown by dataset and query type, and
with ``--export-submission`` a benchmark submission file (:mod:`trainer.submission`).

Baselines need no model and go through the same scoring code:
``oracle`` (matched IDs + ground-truth span: the ceiling set by detection and tracking),
``largest`` (the largest track over the whole clip) and ``random`` (a random track and span).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.records import QueryRecord
from pipeline.runtime import DATA_DIR, RUNS_DIR, resolve
from pipeline.shards import ShardVideo
from trainer.protocols import (
    PROTOCOLS,
    markdown_table,
    protocol_summaries,
    score_answers,
    score_sample,
)

__all__ = ["BASELINES", "baseline_answer", "evaluate", "main", "markdown_table", "score_sample"]

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


# ------------------------------------------------------------------ running


def eval_items(
    shards: Path, limit: int | None = None, *, unannotated: bool = False
) -> tuple[list[tuple[ShardVideo, QueryRecord]], int]:
    """The (video, query) pairs to answer, in shard order, and how many queries have no
    ground truth (e.g. MeViS ``valid``: scored by the benchmark's server, not here). Those
    are left out unless ``unannotated`` (a submission needs every query answered).

    Queries with ground truth but no matched track are kept: they score 0 for the model,
    which is the cost of a detection or tracking miss.
    """
    from pipeline.shards import list_shards, read_videos

    if not list_shards(shards):
        raise SystemExit(f"no shard files (*.parquet) in {shards}")
    items: list[tuple[ShardVideo, QueryRecord]] = []
    no_gt = 0
    for video in read_videos(shards):
        for query in video.queries:
            no_gt += not query.gt
            if (query.gt or unannotated) and (limit is None or len(items) < limit):
                items.append((video, query))
        if limit is not None and len(items) >= limit:
            break
    return items, no_gt


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
    protocols: Sequence[str] = ("official",),
    submission: dict | None = None,
) -> dict:
    """Score ``model`` (a checkpoint, hub id or baseline name) on every annotated query.

    Writes ``predictions.jsonl`` (one line per scored query), ``metrics.json`` and
    ``metrics.md`` into ``out_dir``. Returns the summary of the first of ``protocols``:
    ``overall`` and ``by_qtype`` (plus ``by_dataset`` when the shards mix datasets) in
    percent, with ``protocols`` (every protocol's summary), ``frame_grid`` and ``native_fps``
    (the evaluated frames), ``n_queries`` scored, ``n_failed`` and ``n_skipped_no_gt``.

    ``submission`` (``{"path", "records"}``, see :func:`trainer.submission.write_submission`)
    also answers the queries without ground truth and writes the benchmark file.
    """
    from pipeline.shards import write_json_atomic
    from trainer.metrics import FRAME_GRID, JF_GRID
    from trainer.protocols import check_protocols

    protocols = check_protocols(protocols)
    items, no_gt = eval_items(shards, limit, unannotated=submission is not None)
    n_annotated = sum(bool(q.gt) for _, q in items)
    if not items or (not n_annotated and submission is None):
        raise SystemExit(f"no annotated queries in {shards} ({no_gt} without ground truth)")
    rng = np.random.default_rng(seed)
    if model in BASELINES:
        answers = [(*baseline_answer(model, v, q, rng), None, None) for v, q in items]
    else:
        answers = _model_answers(
            model, items, template=template, rollout=rollout, max_new_tokens=max_new_tokens,
            fps=fps, max_frames=max_frames, total_pixels=total_pixels, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"model": model, "shards": str(shards)}
    if submission is not None:
        from trainer.submission import write_submission

        summary["submission"] = str(write_submission(submission["path"], submission["records"],
                                                     items, answers, max_gap_s=max_gap_s))  # fmt: skip
    results = score_answers(items, answers, max_gap_s=max_gap_s, protocols=protocols)
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r, default=float) + "\n")
    if results:
        by_protocol = protocol_summaries(results, protocols)
        summary.update(by_protocol[protocols[0]], protocol=protocols[0], protocols=by_protocol)
    summary.update(
        frame_grid=FRAME_GRID, native_fps=sorted({float(v.native_fps) for v, _ in items}),
        jf_frames=JF_GRID,
        n_queries=len(results),
        n_failed=sum(bool(r.get("error")) for r in results), n_skipped_no_gt=no_gt,
    )  # fmt: skip
    write_json_atomic(out_dir / "metrics.json", summary)
    if results:
        table = markdown_table({Path(model).name or model: summary})
        (out_dir / "metrics.md").write_text(
            table + f"\nvIoU frames: {FRAME_GRID}.\nJ&F frames: {JF_GRID}.\n"
        )
    return summary


def _model_answers(model, items, *, template, rollout, max_new_tokens, fps, max_frames,
                   total_pixels, batch_size, progress):  # fmt: skip
    """Greedy answers ``(ids, span_s, text, error)`` of a Qwen2.5-VL checkpoint, parsed with
    the contract parser; a sample whose inputs cannot be built gets ``error`` instead."""
    from tqdm import tqdm

    from trainer.answer import parse_answer
    from trainer.data import make_sample
    from trainer.policy import load_policy, resolve_device
    from trainer.rollout import build_requests, make_engine

    device = resolve_device("auto")
    policy, processor = load_policy(str(model), device=device)
    policy.eval()
    engine = make_engine(rollout, policy, processor)
    out: list = [None] * len(items)
    for start in tqdm(range(0, len(items), batch_size), desc="generate", disable=not progress):
        good, samples = [], []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                v, q = items[i]
                samples.append(make_sample(v, q, fps=fps, max_frames=max_frames,
                                           total_pixels=total_pixels))  # fmt: skip
                good.append(i)
            except (ValueError, OSError) as exc:  # e.g. a corrupt stored frame
                out[i] = ((), None, None, f"inputs failed: {exc!r}")
        if not samples:
            continue
        requests = build_requests(samples, processor, template)
        groups = engine.generate(
            requests, num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0
        )
        for i, group in zip(good, groups):
            text = group[0].text
            a = parse_answer(text)
            out[i] = (a.ids, a.span_s, text, None)
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: …)`` only where the help does not already say the default, and never
    for an unset (None) default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description=(
            "Score a Qwen2.5-VL checkpoint (local folder or cached hub id) or a baseline "
            f"({', '.join(BASELINES)}) on preprocessed shards: m_tIoU, m_vIoU, vIoU@0.3/0.5, "
            "ID accuracy, and J&F when masks are stored; under the official protocol and/or "
            "the STVG-R1 release's; optionally write a benchmark submission file."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder, hub id, or one of " + ", ".join(BASELINES),
    )
    p.add_argument(
        "--dataset",
        help="dataset name (shards in data/shards/<dataset>/<split>; default: synthetic, or "
        "the name above the --shards folder)",
    )
    p.add_argument(
        "--split", help="dataset split (default: the last split listed in data/datasets.yaml)"
    )
    p.add_argument("--shards", type=Path, help="shard folder (overrides --dataset/--split)")
    p.add_argument(
        "--out", type=Path, help="output folder (default: data/runs/eval/<model>/<dataset>_<split>)"
    )
    p.add_argument(
        "--protocol",
        nargs="+",
        default=["official"],
        choices=list(PROTOCOLS),
        help="official: the TubeDETR/STCAT/CG-STVG evaluators' conventions; stvg_r1: the "
        "STVG-R1 release's (frames at int(t*fps) with both ends, fallback boxes, vIoU >= R, "
        "failed samples left out). Several give one table row each; the first is metrics.json's",
    )
    p.add_argument(
        "--export-submission",
        type=Path,
        help="also answer the queries without ground truth and write a submission: a .zip of "
        "Annotations/<video>/<expression>/<frame>.png masks for MeViS and Ref-YouTube-VOS, a "
        ".json of per-frame boxes and spans otherwise (needs the raw dataset for frame names "
        "and sizes)",
    )
    p.add_argument("--raw-root", type=Path, help="raw dataset root for --export-submission "
                   "(default: the one in data/datasets.yaml)")  # fmt: skip
    p.add_argument(
        "--template",
        help="prompt template (json, stvg_r1, ...); default: the model's training config, else json",
    )
    p.add_argument("--rollout", default="hf", choices=["hf", "vllm"], help="generation engine")
    p.add_argument("--limit", type=int, help="score at most N queries")
    # model inputs: default to what the checkpoint was trained with (its train_config.yaml)
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="longest answer in tokens (default: training config, else 256)",
    )
    p.add_argument(
        "--fps", type=float, help="frames/s given to the model (default: training config, else 2)"
    )
    p.add_argument(
        "--max-frames",
        type=int,
        help="frames given to the model (default: training config, else 32)",
    )
    p.add_argument(
        "--total-pixels",
        type=int,
        help="pixel budget over all frames (default: training config, else 2048*28*28)",
    )
    p.add_argument("--max-gap-s", type=float, default=0.5, help="track interpolation limit")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per generate call")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _model_and_name(arg: str) -> tuple[str, str]:
    """(what to load, its name in tables) for ``--model``."""
    if arg in BASELINES:
        return arg, arg
    local = resolve(arg)
    hub_id = arg.count("/") == 1 and not arg.startswith((".", "/", "~"))
    if not local.exists() and not hub_id:
        raise SystemExit(
            f"error: no model folder {local}; train one (`make train`), or pass a hub id "
            f"or a baseline ({', '.join(BASELINES)})"
        )
    model = str(local) if local.exists() else arg  # else a hub id in the local cache
    name = Path(arg).name or arg.replace("/", "_")
    if name in ("final", "model", "cold_start") or name.startswith("checkpoint-"):
        name = f"{Path(arg).resolve().parent.name}_{name}"  # e.g. train_final
    return model, name


def _submission_records(dataset: str, split: str, raw_root: Path | None) -> list:
    """Every video record of the raw split (frame names, sizes, every query)."""
    from pipeline.datasets import iter_records

    try:
        return list(iter_records(dataset, split, root=raw_root))
    except (FileNotFoundError, KeyError, ValueError) as err:  # missing data, name or split
        raise SystemExit(
            f"error: --export-submission needs the raw {dataset}/{split}: {err}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dataset = args.dataset or (resolve(args.shards).parent.name if args.shards else "synthetic")
    if args.split is None:
        from pipeline.datasets import load_specs

        spec = load_specs().get(dataset)
        args.split = (resolve(args.shards).name if args.shards else None) or (
            spec.splits[-1] if spec is not None else "test"
        )
    shards = resolve(args.shards) if args.shards else DATA_DIR / "shards" / dataset / args.split
    if not shards.exists():
        raise SystemExit(
            f"error: no shard folder {shards}; write it with `make preprocess DATASET=<name> "
            "SPLIT=<split>` (python -m pipeline.preprocess) or pass --shards"
        )
    model, name = _model_and_name(args.model)
    out = (
        resolve(args.out)
        if args.out
        else RUNS_DIR / "eval" / name / f"{shards.parent.name}_{shards.name}"
    )
    submission = None
    if args.export_submission:
        from trainer.submission import check_path

        records = _submission_records(dataset, args.split, args.raw_root)
        try:
            check_path(args.export_submission, records)
        except ValueError as err:
            raise SystemExit(f"error: --export-submission: {err}") from None
        submission = {"path": resolve(args.export_submission), "records": records}
    from trainer.config import inference_settings

    inputs = inference_settings(
        None if model in BASELINES else model, template=args.template, fps=args.fps,
        max_frames=args.max_frames, total_pixels=args.total_pixels,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    try:
        summary = evaluate(
            model, shards, out, rollout=args.rollout, limit=args.limit, **inputs,
            max_gap_s=args.max_gap_s, batch_size=args.batch_size, seed=args.seed,
            progress=not args.no_progress, protocols=args.protocol, submission=submission,
        )  # fmt: skip
    except FileNotFoundError as err:  # a model that is neither a folder nor cached
        raise SystemExit(f"error: {err}") from None
    if summary["n_queries"]:
        print(markdown_table({name: summary}), end="")
        print(f"vIoU frames: {summary['frame_grid']}")
    for key, what in (("n_failed", "failed to evaluate (see 'error' in predictions.jsonl)"),
                      ("n_skipped_no_gt", "without ground truth skipped")):  # fmt: skip
        if summary[key]:
            print(f"{summary[key]} quer{'y' if summary[key] == 1 else 'ies'} {what}")
    if "submission" in summary:
        print(f"wrote {summary['submission']}")
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
