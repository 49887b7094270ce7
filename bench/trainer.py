"""Benchmark: the trainer's data path, the split of a GRPO step, and vLLM vs HF rollouts.

    python bench/trainer.py [--steps 5] [--model PATH] [--gpu | --no-gpu] [--parts data,grpo,rollout]
    python bench/trainer.py --parts scaling --no-gpu     # 2 processes (gloo) against 1

Every number is printed next to a baseline measured in the same run; nothing is asserted.

1. data: samples/s of ``GroundingDataset.__getitem__`` (shard row read, JPEG decode, frame
   sampling, ``fit_to_budget``) and of the processor step (``video_inputs``), as a ratio to
   bare PIL decoding of the same JPEG bytes; then a DataLoader with 2 workers against 0.
2. grpo: a few steps of ``trainer.train.train`` on the configured model; the shares of
   rollout / reward / forward-backward / other in each step (from its metrics.jsonl) and
   samples/s. ``skip_zero_variance_groups`` is off so that the forward-backward runs even
   when a random model's rewards are all equal (the work is the same, the advantages are 0).
3. rollout (CUDA only): tokens/s of the vLLM engine against HF ``generate`` on the same
   requests and sampling settings (target >= 5x).
4. scaling (asked for with ``--parts scaling``): the median step time of ``trainer.train``
   under ``torchrun --nproc_per_node 2`` (``per_step_prompts`` each) against one process at
   the same global batch (twice the prompts) and at the same per-process batch. Speedup =
   t(1 process, same global batch) / t(2 processes); efficiency = speedup / 2; weak-scaling
   efficiency = t(1 process, same per-process batch) / t(2 processes) (1.0 is perfect).

Missing inputs are built offline in the work folder: synthetic shards (4 videos of 4 s by
default) and the tiny Qwen2.5-VL (reused from data/models/tiny-qwen2.5-vl when built).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import add_config_args  # noqa: E402  (cheap: no torch/transformers)

DEFAULT_CONFIG = "configs/tiny_synthetic.yaml"
PARTS = ("data", "grpo", "rollout", "scaling")
DEFAULT_PARTS = ("data", "grpo", "rollout")


# ------------------------------------------------------------------ inputs


def build_shards(work: Path, *, num_videos: int = 4, duration_s: float = 4.0) -> Path:
    """Synthetic HC-STVG videos -> preprocessed shards in ``work/shards`` (reused if present)."""
    from pipeline.config import PreprocessConfig
    from pipeline.datasets import iter_records, load_specs
    from pipeline.preprocess import run
    from pipeline.runtime import configure_offline
    from pipeline.synthetic import generate

    configure_offline()
    raw = work / "raw"
    generate(raw, num_train=num_videos, num_test=1, det_train=0, det_val=0, duration_s=duration_s,
             formats=("hcstvg",), progress=False, seed=3)  # fmt: skip
    records = list(iter_records(load_specs()["synthetic"], "train", root=raw / "hcstvg"))
    out = work / "shards"
    run(records, out, PreprocessConfig(), progress=False, meta={"dataset": "synthetic"})
    return out


def tiny_model(work: Path) -> Path:
    """The committed-location tiny model if built, else one built into ``work``."""
    from trainer.tiny import TINY_DIR, ensure_tiny_model, is_complete

    return TINY_DIR if is_complete(TINY_DIR) else ensure_tiny_model(work / "tiny-qwen2.5-vl")


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


# ------------------------------------------------------------------ 1. data path


def _order(size: int, num_samples: int, seed: int) -> list[int]:
    """Shuffled passes over the dataset (like the training sampler), ``num_samples`` long."""
    import numpy as np

    rng = np.random.default_rng(seed)
    passes = -(-num_samples // size)
    return [int(i) for _ in range(passes) for i in rng.permutation(size)][:num_samples]


def _best(fn, repeat: int) -> float:
    """Fastest of ``repeat`` runs of ``fn() -> seconds``: the run least disturbed by other load."""
    return min(fn() for _ in range(max(1, repeat)))


def bench_data(
    shards: Path,
    processor,
    cfg,
    *,
    num_samples: int = 200,
    workers: int = 2,
    repeat: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> list[tuple[str, float]]:
    """(label, samples/s) rows, each the best of ``repeat`` runs. The first row is the
    baseline (bare decode); the next two split ``__getitem__``'s other work out of it."""
    import io

    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from trainer.data import GroundingDataset, fit_to_budget, sample_indices, video_inputs
    from trainer.rollout import build_requests

    def dataset():  # a fresh one per run: no warm row cache or open files carried over
        return GroundingDataset(
            shards, fps=cfg.fps, max_frames=cfg.max_frames, total_pixels=cfg.total_pixels
        )

    def bar(it, desc):
        return tqdm(it, desc=desc, leave=False, disable=not progress)

    order = _order(len(dataset()), num_samples, seed)
    n = len(order)
    jpegs = []  # the exact JPEG bytes __getitem__ decodes for each sample

    def rows_read() -> float:
        ds, t0 = dataset(), time.perf_counter()
        jpegs.clear()
        for i in bar(order, "shard rows"):
            video, _ = ds.index[i]
            idx, _ = sample_indices(len(video.frames), video.out_fps, cfg.fps, cfg.max_frames)
            jpegs.append([video.frames[k] for k in idx])
        return time.perf_counter() - t0

    def decode() -> list[np.ndarray]:
        return [
            np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
            for blobs in bar(jpegs, "bare decode")
        ]

    def timed(fn, *a) -> float:
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    t_rows = _best(rows_read, repeat)
    t_decode = _best(lambda: timed(decode), repeat)
    stacks = decode()[: len(dataset())]  # a pass worth of samples is enough to time the resize
    t_fit = _best(
        lambda: timed(lambda: [fit_to_budget(f, total_pixels=cfg.total_pixels) for f in stacks]),
        repeat,
    )
    t_fit *= n / len(stacks)
    samples = []

    def getitem() -> float:
        ds, t0 = dataset(), time.perf_counter()
        samples[:] = [ds[i] for i in bar(order, "__getitem__")]
        return time.perf_counter() - t0

    t_item = _best(getitem, repeat)
    requests = build_requests(samples, processor, cfg.template)
    del samples[:]
    t_proc = _best(
        lambda: timed(lambda: [video_inputs(processor, r.prompt, r.frames, r.fps)
                               for r in bar(requests, "video_inputs")]), repeat
    )  # fmt: skip
    rows = [
        ("bare JPEG decode (baseline)", _rate(n, t_decode)),
        ("  shard row read (ShardIndex)", _rate(n, t_rows)),
        ("  fit_to_budget (resize)", _rate(n, t_fit)),
        ("GroundingDataset.__getitem__", _rate(n, t_item)),
        ("processor step (video_inputs)", _rate(n, t_proc)),
        ("__getitem__ + video_inputs", _rate(n, t_item + t_proc)),
    ]

    def loader_run(w: int) -> float:
        loader = DataLoader(dataset(), sampler=order, batch_size=1, num_workers=w, collate_fn=list)
        t0 = time.perf_counter()  # worker start-up included: it is paid on every epoch
        got = sum(len(b) for b in bar(loader, f"DataLoader({w})"))
        if got != n:
            raise RuntimeError(f"the DataLoader gave {got} samples, expected {n}")
        return time.perf_counter() - t0

    for w in (0, workers):
        rows.append(
            (f"DataLoader, {w} workers", _rate(n, _best(lambda w=w: loader_run(w), repeat)))
        )
    return rows


def print_data(rows: list[tuple[str, float]], workers: int) -> None:
    base = rows[0][1]
    print(f"{'':32s} {'samples/s':>10s} {'vs bare decode':>15s}")
    for label, rate in rows:
        print(f"{label:32s} {rate:10.1f} {rate / base:14.2f}x")
    loaders = dict(rows)
    r0, rw = loaders["DataLoader, 0 workers"], loaders[f"DataLoader, {workers} workers"]
    print(f"DataLoader {workers} workers / 0 workers: {rw / r0:.2f}x")


# ------------------------------------------------------------------ 2. GRPO step split


def bench_grpo(cfg, *, progress: bool = True) -> list[dict]:
    """Run ``trainer.train.train(cfg)`` and return its metrics.jsonl rows (one per step)."""
    from trainer.train import train

    train(cfg, progress=progress)
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def step_split(m: dict, prompts: int, generations: int) -> dict:
    """Shares of one step's wall time; "other" is data loading, prompts and weight sync."""
    step = m["time/step_s"]
    parts = {k: m[f"time/{k}_s"] for k in ("rollout", "reward", "forward_backward")}
    parts["other"] = max(step - sum(parts.values()), 0.0)
    return {
        **{f"{k}%": 100 * v / step for k, v in parts.items()},
        "step_s": step,
        "prompts/s": prompts / step,
        "completions/s": prompts * generations / step,
        "rollout tok/s": m["tokens_per_s"],
    }


def print_grpo(metrics: list[dict], prompts: int, generations: int) -> None:
    rows = [(str(m["step"]), step_split(m, prompts, generations)) for m in metrics]
    if len(rows) > 1:  # the first step pays one-off warm-up; a median shrugs off other load
        later = sorted(rows[1:], key=lambda row: row[1]["step_s"])
        name, median = later[(len(later) - 1) // 2]  # a real step, so its shares add up to 100
        rows.append((f"median={name}", median))
    cols = list(rows[0][1])
    heads = [c.replace("forward_backward", "fwd+bwd") for c in cols]
    print(f"{'step':>10s} " + " ".join(f"{h:>13s}" for h in heads))
    for name, r in rows:
        print(f"{name:>10s} " + " ".join(f"{r[c]:13.2f}" for c in cols))


# ------------------------------------------------------------------ 3. rollout engines


def rollout_skip_reason() -> str | None:
    """Why the vLLM comparison cannot run here, or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (vLLM rollouts need one); run this part on a GPU machine"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e '.[gpu]')"
    return None


def bench_rollout(shards: Path, model: str, cfg, *, num_prompts: int = 8) -> dict:
    """Tokens/s of HF generate and of vLLM on the same requests and sampling settings.

    The HF model is freed before vLLM starts, so each engine has the GPU to itself; vLLM
    takes ``cfg.vllm_gpu_memory_utilization`` of it (and ``cfg.vllm_max_model_len``).
    """
    import gc

    import torch

    from trainer.data import GroundingDataset
    from trainer.policy import load_policy
    from trainer.rollout import build_requests
    from trainer.rollout.hf import HFRolloutEngine
    from trainer.rollout.vllm import VLLMRolloutEngine

    ds = GroundingDataset(
        shards, fps=cfg.fps, max_frames=cfg.max_frames, total_pixels=cfg.total_pixels
    )
    policy, processor = load_policy(model, device="cuda", dtype="bfloat16")
    requests = build_requests(
        [ds[i % len(ds)] for i in range(num_prompts)], processor, cfg.template
    )
    sampling = dict(num_generations=cfg.num_generations, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)  # fmt: skip

    def timed(engine) -> tuple[int, float]:
        engine.generate(requests[:1], **{**sampling, "max_new_tokens": 8})  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        groups = engine.generate(requests, **sampling)
        torch.cuda.synchronize()
        return sum(len(c.token_ids) for g in groups for c in g), time.perf_counter() - t0

    hf_tokens, hf_s = timed(HFRolloutEngine(policy, processor))
    del policy  # vLLM gets the memory the HF model held
    gc.collect()
    torch.cuda.empty_cache()
    extra = {"max_model_len": cfg.vllm_max_model_len} if cfg.vllm_max_model_len else {}
    engine = VLLMRolloutEngine(
        str(model), processor, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        dtype="bfloat16", enable_sleep_mode=False, seed=cfg.seed, **extra,
    )  # fmt: skip
    vllm_tokens, vllm_s = timed(engine)
    del engine  # give the GPU back to whatever runs next in this process
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "requests": len(requests), **sampling,
        "hf_tokens": hf_tokens, "hf_s": hf_s, "hf_tok_s": _rate(hf_tokens, hf_s),
        "vllm_tokens": vllm_tokens, "vllm_s": vllm_s, "vllm_tok_s": _rate(vllm_tokens, vllm_s),
    }  # fmt: skip


def print_rollout(r: dict) -> None:
    print(f"{r['requests']} requests x {r['num_generations']} samples, at most "
          f"{r['max_new_tokens']} new tokens, temperature {r['temperature']}, top_p {r['top_p']}")  # fmt: skip
    print(
        f"HF generate : {r['hf_tok_s']:10.1f} tokens/s ({r['hf_tokens']} tokens, {r['hf_s']:.2f} s)"
    )
    print(
        f"vLLM        : {r['vllm_tok_s']:10.1f} tokens/s ({r['vllm_tokens']} tokens, {r['vllm_s']:.2f} s)"
    )
    print(f"ratio vLLM / HF: {r['vllm_tok_s'] / r['hf_tok_s']:.2f}x   (target >= 5)")


# ------------------------------------------------------------------ 4. scaling over processes


def median_step_s(rows: list[dict]) -> float:
    """Median ``time/step_s`` of the steps after the first (warm-up)."""
    import statistics

    later = [r["time/step_s"] for r in rows[1:]] or [r["time/step_s"] for r in rows]
    return statistics.median(later)


def scaling_summary(one_same_global: float, one_same_local: float, two: float) -> dict:
    """Ratios of median step times (s): speedup and efficiency at the same global batch,
    weak-scaling efficiency at the same per-process batch."""
    speedup = one_same_global / two
    return {"speedup": speedup, "efficiency": speedup / 2, "weak_efficiency": one_same_local / two}


def bench_scaling(cfg, work: Path, *, progress: bool = False) -> dict:
    """Run ``trainer.train`` three times (subprocesses, CPU): 2 processes with
    ``per_step_prompts`` each, 1 process with twice that, 1 process with the same."""
    import os
    import subprocess

    config = cfg.save_yaml(work / "scaling-config.yaml")
    prompts = cfg.per_step_prompts
    runs = {
        "two": (2, prompts),
        "one_same_global": (1, 2 * prompts),
        "one_same_local": (1, prompts),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    times = {}
    for name, (procs, per_rank) in runs.items():
        out = work / f"scaling-{name}"
        launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                    if procs > 1 else [])  # fmt: skip
        cmd = [sys.executable, *launcher, "-m", "trainer.train", "--config", str(config),
               "--set", f"per_step_prompts={per_rank}", f"output_dir={out}", "device=cpu",
               *([] if progress else ["--no-progress"])]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"scaling run {name} failed:\n{done.stderr[-4000:]}")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        times[name] = median_step_s(rows)
    return {"prompts": prompts, **{f"{k}_s": v for k, v in times.items()},
            **scaling_summary(times["one_same_global"], times["one_same_local"], times["two"])}  # fmt: skip


def print_scaling(r: dict) -> None:
    p = r["prompts"]
    print(f"1 process,  {2 * p} prompts/step : {r['one_same_global_s']:8.2f} s/step")
    print(f"1 process,  {p} prompts/step : {r['one_same_local_s']:8.2f} s/step")
    print(f"2 processes, {p} prompts each: {r['two_s']:8.2f} s/step")
    print(f"same global batch: speedup {r['speedup']:.2f}x, efficiency {r['efficiency']:.2f}")
    print(f"weak-scaling efficiency (same batch per process): {r['weak_efficiency']:.2f}")


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/trainer.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="policy checkpoint (folder or cached hub id) for grpo and "
                   "rollout; default: the tiny offline Qwen2.5-VL")  # fmt: skip
    p.add_argument("--steps", type=int, default=5, help="GRPO steps to time (default 5; the "
                   "first is warm-up, left out of the median)")  # fmt: skip
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="run the GRPO steps on CUDA and compare vLLM with HF rollouts "
                   "(default: on when CUDA is present; --no-gpu forces the CPU)")  # fmt: skip
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma list of {', '.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})")  # fmt: skip
    p.add_argument(
        "--shards", type=Path, help="shard folder to read (default: build synthetic ones)"
    )
    p.add_argument("--videos", type=int, default=4, help="synthetic videos to build (default 4)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each synthetic video")
    p.add_argument("--data-samples", type=int, default=200, help="samples read in the data part")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers compared with 0")
    p.add_argument(
        "--repeat", type=int, default=3, help="data part: keep the best of this many runs"
    )
    p.add_argument("--rollout-prompts", type=int, default=8, help="requests in the rollout part")
    p.add_argument(
        "--workdir", type=Path, help="keep built inputs and runs here (default: a temp dir)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_args(p)
    p.set_defaults(config=DEFAULT_CONFIG)
    return p


def run(args: argparse.Namespace, work: Path) -> None:
    import torch

    from pipeline.runtime import configure_offline
    from trainer.config import load_config

    configure_offline()  # no hub or Ultralytics network calls; tokenizers safe to fork
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    gpu = torch.cuda.is_available() if args.gpu is None else args.gpu
    if gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here; the GRPO steps run on the CPU")
        gpu = False
    shards = args.shards or build_shards(work, num_videos=args.videos, duration_s=args.seconds)
    model = args.model or str(tiny_model(work))
    overrides = [
        f"model={model}", f"train_shards={shards}", f"output_dir={work / 'grpo'}",
        f"max_steps={args.steps}", "cold_start_steps=0", "save_steps=0", "eval_steps=0",
        "report_to=[jsonl]", "skip_zero_variance_groups=false", f"device={'cuda' if gpu else 'cpu'}",
        *args.overrides,
    ]  # fmt: skip
    cfg = load_config(args.config, overrides)
    print(
        f"shards: {shards}\nmodel: {model}\nconfig: {args.config} (+ {' '.join(args.overrides) or 'no --set'})"
    )

    if "data" in parts:
        print(f"\n== data path ({args.data_samples} samples, {cfg.max_frames} frames max, "
              f"{cfg.total_pixels} pixels per video)")  # fmt: skip
        rows = bench_data(shards, _processor(model), cfg, num_samples=args.data_samples,
                          workers=args.workers, repeat=args.repeat,
                          progress=not args.no_progress)  # fmt: skip
        print_data(rows, args.workers)
    if "grpo" in parts:
        print(f"\n== GRPO step split ({args.steps} steps, {cfg.prompts_per_step} prompts x "
              f"{cfg.num_generations} generations, {cfg.rollout} rollouts on {cfg.device})")  # fmt: skip
        metrics = bench_grpo(cfg, progress=not args.no_progress)
        print_grpo(metrics, cfg.prompts_per_step, cfg.num_generations)
    if "rollout" in parts:
        print("\n== rollout engines: vLLM vs HF generate")
        reason = "--no-gpu given" if args.gpu is False else rollout_skip_reason()
        if reason:
            print(f"skipped: {reason}")
        else:
            print_rollout(bench_rollout(shards, model, cfg, num_prompts=args.rollout_prompts))
    if "scaling" in parts:
        print(f"\n== 2 processes (gloo, CPU) against 1 ({args.steps} steps each, median after "
              f"the first; {cfg.num_generations} generations per prompt)")  # fmt: skip
        print_scaling(bench_scaling(cfg, work, progress=not args.no_progress))


def _processor(model: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
            run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
