"""GRPO training of Qwen2.5-VL to answer *which* instance IDs and *when*.

    python -m trainer.train --config configs/tiny_synthetic.yaml [--set key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny_synthetic.yaml
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m trainer.train --config ...

The loop, step by step (:func:`train`): set up a run (process group, model, engine, data,
resume); then per round: collect rollouts and rewards into rollout batches
(:func:`trainer.loop.collect_round`), take ``num_iterations`` optimiser steps on them
(:func:`trainer.loop.optimise`), log, evaluate, checkpoint; finally save the model as a
Hugging Face folder. The math lives in :mod:`trainer.grpo`, the rewards in
:mod:`trainer.rewards`, model I/O in :mod:`trainer.policy` and :mod:`trainer.rollout`,
multi-process code in :mod:`trainer.distributed`, checkpoints in :mod:`trainer.checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.checkpoint import TrainState
from trainer.config import TrainConfig, add_config_args, config_from_args


class MetricsLogger:
    """JSONL always; TensorBoard when asked for (``purge_step`` drops events logged after
    a resumed checkpoint)."""

    def __init__(self, output_dir: Path, report_to: Sequence[str], purge_step: int | None = None):
        self.path = output_dir / "metrics.jsonl"
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge_step)

    def log(self, step: int, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class Run:
    """What one training run holds; built by :func:`setup_run`."""

    cfg: TrainConfig
    dist: object  # trainer.distributed.Dist
    output_dir: Path
    model: torch.nn.Module  # sharded under FSDP2
    processor: object
    ref_model: torch.nn.Module | None  # None: no KL, or LoRA (adapter disabled)
    engine: object
    reward_fn: object
    dataset: object
    sampler: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    total_steps: int
    compute_dtype: torch.dtype
    master_dtype: torch.dtype
    logger: MetricsLogger | None = None  # rank 0 only
    weights_changed: bool = False  # the engine must be given the weights before generating
    params: list = field(default_factory=list)

    def compute(self):
        from trainer.distributed import compute_context

        return compute_context(self.dist, self.compute_dtype, self.master_dtype)


def precision(cfg: TrainConfig, device: str) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, master dtype): weights and optimiser state stay float32 unless
    ``pure_bf16`` (which warns: small updates round away in bfloat16)."""
    from trainer.policy import _torch_dtype

    compute = _torch_dtype(cfg.dtype, device)
    if not cfg.pure_bf16:
        return compute, torch.float32
    warnings.warn("pure_bf16: weights and AdamW state in bfloat16, so an update below half "
                  "a bfloat16 step (lr 1e-6 on weights ~0.02) rounds away", stacklevel=2)  # fmt: skip
    return torch.bfloat16, torch.bfloat16


def _check_memory(cfg: TrainConfig, dist) -> None:
    """The memory plan's verdict before anything is loaded (CUDA, or gpu_memory_gib given)."""
    gpu_gib = cfg.gpu_memory_gib
    if gpu_gib is None and dist.device.startswith("cuda"):
        gpu_gib = torch.cuda.get_device_properties(dist.device).total_memory / 2**30
    if gpu_gib:
        from trainer.plan import assert_fits

        strategy = "fsdp2" if dist.strategy == "fsdp2" else "ddp"
        offload = strategy == "fsdp2" and dist.cpu_offload  # the config's or the launcher's
        assert_fits(cfg, dist.world_size, gpu_gib, strategy=strategy, cpu_offload=offload)


def _base_model(cfg: TrainConfig, dist, resume, progress: bool) -> str:
    """The weights GRPO starts from: ``cfg.model``, or the cold-start model that rank 0
    trains into ``<output_dir>/cold_start`` (kept on resume)."""
    from trainer.distributed import barrier

    if cfg.cold_start_steps <= 0:
        return cfg.model
    base = Path(cfg.output_dir) / "cold_start"
    if dist.is_main and (not resume or not (base / "config.json").exists()):
        from trainer.sft import cold_start

        cold_start(cfg, base, steps=cfg.cold_start_steps, batch_size=cfg.cold_start_batch_size,
                   learning_rate=cfg.cold_start_learning_rate, progress=progress)  # fmt: skip
    barrier(dist)
    return str(base)


def _load_models(cfg: TrainConfig, dist, base: str, compute, master):
    from trainer.distributed import prepare_model
    from trainer.policy import load_policy, seed_everything

    seed_everything(cfg.seed)  # the same initial weights (a LoRA adapter's too) on every rank
    model, processor = load_policy(base, device=dist.device, dtype=master,
                                   gradient_checkpointing=cfg.gradient_checkpointing,
                                   lora=cfg.lora_kwargs(), freeze_vision=cfg.freeze_vision)  # fmt: skip
    model = prepare_model(model, dist, compute)
    ref = None
    if cfg.beta > 0 and cfg.lora_r == 0:  # LoRA: the policy with its adapter disabled
        ref, _ = load_policy(base, device=dist.device, dtype=compute)
        ref = prepare_model(ref.eval().requires_grad_(False), dist, compute, trainable=False)
    return model, processor, ref


def setup_run(cfg: TrainConfig, resume=None, overwrite: bool = False, progress: bool = True) -> Run:
    """Process group, output folder checks, model(s), engine, data, optimiser; resume."""
    from transformers import get_scheduler

    from trainer import checkpoint as ck
    from trainer.data import GroundingDataset
    from trainer.distributed import barrier, init_distributed
    from trainer.policy import seed_everything
    from trainer.rewards import TaskReward
    from trainer.rollout import make_engine

    dist = init_distributed(cfg.device, cfg.distributed, cfg.fsdp_cpu_offload)
    if dist.strategy == "fsdp2" and cfg.lora_r > 0:  # `auto` under an FSDP accelerate config
        raise ValueError(
            f"LoRA (lora_r={cfg.lora_r}) runs under DDP, not FSDP2 (chosen by distributed="
            f"{cfg.distributed!r} and the launcher): launch with configs/accelerate/ddp.yaml or set "
            "distributed: ddp"
        )
    if dist.enabled and dist.is_main:
        offload = ", parameters and optimiser state on CPU" if dist.cpu_offload else ""
        print(f"{dist.world_size} processes, {dist.strategy}{offload}, {dist.device} ({cfg.per_step_prompts}"
              f" prompts each per micro-batch)", flush=True)  # fmt: skip
    out = Path(cfg.output_dir)
    if not resume:
        # refuse before touching anything; rank 0 deletes what --overwrite replaces
        ck.check_fresh_output(out, overwrite, delete=dist.is_main)
    barrier(dist)
    _check_memory(cfg, dist)
    compute, master = precision(cfg, dist.device)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    base = _base_model(cfg, dist, resume, progress)
    model, processor, ref = _load_models(cfg, dist, base, compute, master)
    dataset = GroundingDataset(
        cfg.train_shards, fps=cfg.fps, max_frames=cfg.max_frames, total_pixels=cfg.total_pixels
    )
    engine_kwargs = ({"synced_gpus": dist.strategy == "fsdp2", "device": dist.device}
                     if cfg.rollout == "hf" else {})  # fmt: skip
    engine = make_engine(cfg.rollout, model, processor, **cfg.engine_kwargs(), **engine_kwargs)
    reward_fn = TaskReward(weights=cfg.reward_weights(), template=cfg.template,
                           require_in_span=cfg.require_id_in_span, use_viou=cfg.reward_viou > 0,
                           max_gap_s=cfg.max_gap_s)  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(dataset) // dist.world_size)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_training_steps=total,
                              num_warmup_steps=int(cfg.warmup_ratio * total))  # fmt: skip
    seed_everything(cfg.seed + dist.rank)  # dropout etc. differ per rank; sampling is seeded apart
    state = TrainState()
    run = Run(cfg, dist, out, model, processor, ref, engine, reward_fn, dataset, None, optimizer,
              scheduler, state, total, compute, master, params=params)  # fmt: skip
    if resume:
        _resume(run, resume)
    elif dist.is_main:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    from trainer.loop import PromptSampler

    run.sampler = PromptSampler(len(dataset), cfg.seed, state)
    if dist.is_main:
        cfg.save_yaml(out / "config.yaml")
        run.logger = MetricsLogger(
            out, cfg.report_to, purge_step=state.step + 1 if resume else None
        )
    return run


def _resume(run: Run, resume) -> None:
    from trainer import checkpoint as ck

    if run.dist.is_main:
        ck.clean_partial(run.output_dir)
    candidates = ck.find_resumable(run.output_dir, resume)
    ckpt, blob = ck.resume_from(candidates, run.model, run.optimizer, run.dist)
    run.scheduler.load_state_dict(blob["scheduler"])
    for k in ("step", "epoch", "position"):
        setattr(run.state, k, int(blob[k]))
    run.weights_changed = True
    if run.dist.is_main:
        ck.cut_metrics(run.output_dir / "metrics.jsonl", run.state.step)
        print(f"resumed from {ckpt} at step {run.state.step}")


def log_step(run: Run, rnd, stats: dict, t_start: float) -> dict:
    """Training metrics of the step just taken, averaged over ranks (collective)."""
    from trainer.distributed import mean_over_ranks

    pooled = {**rnd.stats, **stats}
    pooled.update({"time/rollout_s": [rnd.times["rollout"]], "time/reward_s": [rnd.times["reward"]],
                   "time/step_s": [time.perf_counter() - t_start],
                   "tokens_per_s": [rnd.times["tokens"] / max(rnd.times["rollout"], 1e-9)]})  # fmt: skip
    metrics = mean_over_ranks(pooled, run.dist)
    metrics["lr"] = run.scheduler.get_last_lr()[0]
    metrics["epoch"] = run.state.epoch + run.state.position / len(run.dataset)
    return metrics


def maybe_evaluate(run: Run) -> dict:
    """Every ``eval_steps``: score the current weights on ``eval_shards`` with
    :func:`trainer.evaluate.evaluate` (rank 0); returns ``eval/<metric>`` values."""
    from trainer.checkpoint import save_hf_model
    from trainer.distributed import barrier

    cfg, step = run.cfg, run.state.step
    if not cfg.eval_steps or step % cfg.eval_steps:
        return {}
    folder = run.output_dir / "eval"
    save_hf_model(folder / "model", run.model, run.processor, cfg, run.dist, run.compute_dtype)
    out = {}
    if run.dist.is_main:
        from trainer.evaluate import evaluate

        summary = evaluate(str(folder / "model"), Path(cfg.eval_shards), folder / f"step-{step}",
                           template=cfg.template, max_new_tokens=cfg.max_new_tokens, fps=cfg.fps,
                           max_frames=cfg.max_frames, total_pixels=cfg.total_pixels,
                           max_gap_s=cfg.max_gap_s, seed=cfg.seed, progress=False)  # fmt: skip
        out = {f"eval/{k}": float(v) for k, v in summary["overall"].items()
               if isinstance(v, int | float)}  # fmt: skip
    barrier(run.dist)
    return out


def maybe_checkpoint(run: Run) -> None:
    from trainer.checkpoint import save_checkpoint

    cfg, state = run.cfg, run.state
    if cfg.save_steps and state.step % cfg.save_steps == 0:
        blob = {"step": state.step, "epoch": state.epoch, "position": state.position,
                "scheduler": run.scheduler.state_dict()}  # fmt: skip
        save_checkpoint(run.output_dir / f"checkpoint-{state.step}", blob, run.model,
                        run.optimizer, run.dist, cfg)  # fmt: skip


def train(
    cfg: TrainConfig,
    resume: str | bool | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Run GRPO as configured; returns the folder of the final model."""
    from tqdm import tqdm

    from trainer.checkpoint import save_hf_model
    from trainer.loop import collect_round, optimise

    run = setup_run(cfg, resume, overwrite, progress)
    bar = tqdm(total=run.total_steps, initial=run.state.step, desc="grpo", unit="step",
               disable=not (progress and run.dist.is_main))  # fmt: skip
    while run.state.step < run.total_steps:
        t_start = time.perf_counter()
        rnd = collect_round(run)
        for _ in range(cfg.num_iterations):
            if run.state.step >= run.total_steps:
                break
            metrics = log_step(run, rnd, optimise(run, rnd), t_start)
            metrics.update(maybe_evaluate(run))
            if run.logger and (run.state.step % cfg.logging_steps == 0
                               or run.state.step == run.total_steps):  # fmt: skip
                run.logger.log(run.state.step, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward/total', 0):.3f}",
                            loss=f"{metrics.get('loss', 0):.4f}")  # fmt: skip
            bar.update()
            maybe_checkpoint(run)
    bar.close()
    if run.logger:
        run.logger.close()
    final = run.output_dir / "final"
    save_hf_model(final, run.model, run.processor, cfg, run.dist, run.compute_dtype)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from trainer.distributed import shutdown

    parser = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description="GRPO training of Qwen2.5-VL on instance-ID overlaid video shards "
        "(one process, or several under torchrun / accelerate launch).",
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue from the latest complete checkpoint in output_dir (or from the given "
        "checkpoint folder); needs the same number of processes as the run that wrote it",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output_dir that holds checkpoints (deletes them, the "
        "metrics and the final model); without it such a run is refused",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:  # a bad key or value: a usage error, not a traceback
        parser.error(str(err))
    try:
        final = train(cfg, resume=args.resume, progress=not args.no_progress,
                      overwrite=args.overwrite)  # fmt: skip
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}")
        print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
