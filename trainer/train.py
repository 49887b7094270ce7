"""GRPO training of Qwen2.5-VL to answer *which* instance IDs and *when*.

    python -m trainer.train --config configs/tiny_synthetic.yaml [--set key=value ...] [--resume]
    accelerate launch --num_processes 8 -m trainer.train --config configs/qwen2_5_vl_7b.yaml

One readable loop: sample prompts -> rollouts (HF generate or vLLM) -> rewards ->
group-normalised advantages -> clipped token-level loss -> optimiser step -> push
weights to the rollout engine -> log -> checkpoint. The math lives in
:mod:`trainer.grpo`, the rewards in :mod:`trainer.rewards`, model I/O in
:mod:`trainer.policy` and :mod:`trainer.rollout`.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig, add_config_args, config_from_args


@dataclass
class TrainState:
    """Everything beyond model/optimizer/scheduler needed to continue exactly."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0
    position: int = 0  # next index into this epoch's order


class PromptSampler:
    """Epoch-wise shuffled order over the dataset, resumable from (epoch, position)."""

    def __init__(self, size: int, seed: int, state: TrainState):
        if size == 0:
            raise ValueError("the training shards hold no matched queries: check the manifest")
        self.size, self.seed, self.state = size, seed, state

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.size)

    def take(self, n: int) -> list[int]:
        out = []
        order = self._order(self.state.epoch)
        while len(out) < n:
            if self.state.position >= self.size:
                self.state.epoch += 1
                self.state.position = 0
                order = self._order(self.state.epoch)
            out.append(int(order[self.state.position]))
            self.state.position += 1
        return out


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    path: Path, model, processor, optimizer, scheduler, state: TrainState, cfg
) -> None:
    """Write to a temp folder, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": vars(state),
            "rng": _rng_state(),
        },
        tmp / "trainer_state.pt",
    )
    cfg.save_yaml(tmp / "config.yaml")
    tmp.rename(path)


class MetricsLogger:
    """JSONL always; TensorBoard when asked for."""

    def __init__(self, output_dir: Path, report_to: Sequence[str]):
        self.path = output_dir / "metrics.jsonl"
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"))

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


def train(cfg: TrainConfig, resume: str | bool | None = None, progress: bool = True) -> Path:
    """Run GRPO as configured; returns the folder of the final model."""
    from tqdm import tqdm
    from transformers import get_scheduler

    from trainer.data import GroundingDataset
    from trainer.grpo import group_advantages, grpo_loss, truncated_is_weights
    from trainer.policy import (
        completion_logprobs,
        load_policy,
        resolve_device,
        save_model,
        seed_everything,
    )
    from trainer.rewards import TaskReward
    from trainer.rollout import build_requests, make_engine

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(output_dir) if resume in (True, "latest") else Path(resume)
        if ckpt is None or not (ckpt / "trainer_state.pt").exists():
            raise SystemExit(f"--resume: no complete checkpoint-* folder in {output_dir}")
    # a full-model checkpoint is loaded by transformers itself (its own key mapping);
    # a LoRA checkpoint holds only the adapter, put on top of the base model below
    full_ckpt = ckpt is not None and not (ckpt / "model" / "adapter_config.json").exists()
    base = cfg.model
    if cfg.cold_start_steps > 0:
        from trainer.sft import cold_start

        base = str(output_dir / "cold_start")
        # a fresh run redoes it (shards or settings may have changed); a resumed run keeps it
        if ckpt is None or not (Path(base) / "config.json").exists():
            cold_start(cfg, Path(base), steps=cfg.cold_start_steps, batch_size=cfg.cold_start_batch_size,
                       learning_rate=cfg.cold_start_learning_rate, progress=progress)  # fmt: skip
            seed_everything(cfg.seed)
    model, processor = load_policy(
        str(ckpt / "model") if full_ckpt else base,
        device=device,
        dtype=cfg.dtype,
        gradient_checkpointing=cfg.gradient_checkpointing,
        lora=cfg.lora_kwargs(),
        freeze_vision=cfg.freeze_vision,
    )
    ref_model = None
    if cfg.beta > 0:
        ref_model, _ = load_policy(base, device=device, dtype=cfg.dtype)
        ref_model.eval().requires_grad_(False)
    dataset = GroundingDataset(
        cfg.train_shards, fps=cfg.fps, max_frames=cfg.max_frames, total_pixels=cfg.total_pixels
    )
    engine = make_engine(cfg.rollout, model, processor, **cfg.engine_kwargs())
    reward_fn = TaskReward(
        weights=cfg.reward_weights(),
        template=cfg.template,
        require_in_span=cfg.require_id_in_span,
        use_viou=cfg.reward_viou > 0,
        max_gap_s=cfg.max_gap_s,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total_steps = cfg.total_steps(len(dataset))
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    state = TrainState()
    if ckpt is not None:
        _load_checkpoint(ckpt, model, optimizer, scheduler, state)
        engine.sync_weights(model)
        print(f"resumed from {ckpt} at step {state.step}")
    else:
        (output_dir / "metrics.jsonl").unlink(missing_ok=True)
    cfg.save_yaml(output_dir / "config.yaml")
    sampler = PromptSampler(len(dataset), cfg.seed, state)
    logger = MetricsLogger(output_dir, cfg.report_to)
    G = cfg.num_generations
    bar = tqdm(
        total=total_steps, initial=state.step, desc="grpo", unit="step", disable=not progress
    )

    while state.step < total_steps:
        # ---- rollouts for one generation round (grad_accum micro-batches of prompts)
        t_start = time.perf_counter()
        micro = []
        stats: dict[str, list[float]] = {}
        t_rollout = t_reward = 0.0
        n_tokens = 0
        for _ in range(cfg.gradient_accumulation_steps):
            samples = [dataset[i] for i in sampler.take(cfg.per_step_prompts)]
            requests = build_requests(samples, processor, cfg.template)
            t0 = time.perf_counter()
            model.eval()
            groups = engine.generate(
                requests,
                num_generations=G,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=cfg.seed + state.step,
            )
            t1 = time.perf_counter()
            completions = [c for group in groups for c in group]  # (B*G,)
            texts = [c.text for c in completions]
            videos = [s.video for s in samples for _ in range(G)]
            queries = [s.query for s in samples for _ in range(G)]
            rewards_np, components = reward_fn(texts, videos, queries)
            rewards = torch.as_tensor(rewards_np, dtype=torch.float32)  # (B*G,)
            advantages, zero_var = group_advantages(rewards, G, scale_std=cfg.scale_rewards)
            t_reward += time.perf_counter() - t1
            t_rollout += t1 - t0
            keep = torch.ones(len(completions), dtype=torch.bool)
            if cfg.skip_zero_variance_groups:
                keep = ~zero_var.repeat_interleave(G)
            for k, v in components.items():
                stats.setdefault(f"reward/{k}", []).extend(np.asarray(v, dtype=float).tolist())
            stats.setdefault("reward/total", []).extend(rewards_np.tolist())
            stats.setdefault("zero_variance_groups", []).append(float(zero_var.float().mean()))
            lengths = [len(c.token_ids) for c in completions]
            stats.setdefault("completion_length", []).extend(lengths)
            n_tokens += sum(lengths)
            idx = keep.nonzero().flatten().tolist()
            if idx:
                micro.append(
                    {
                        "prompts": [requests[i // G].prompt for i in idx],
                        "videos": [(requests[i // G].frames, requests[i // G].fps) for i in idx],
                        "completion_ids": [completions[i].token_ids for i in idx],
                        "advantages": advantages[idx],
                        "rollout_logp": [completions[i].logprobs for i in idx],
                        "old_logp": None,
                    }
                )

        # ---- num_iterations optimiser steps on this round's rollouts
        round_tokens = sum(len(ids) for mb in micro for ids in mb["completion_ids"])
        t_fb = 0.0
        model.train()
        for _iteration in range(cfg.num_iterations):
            if state.step >= total_steps:
                break
            t0 = time.perf_counter()
            for mb in micro:
                logp, mask = completion_logprobs(
                    model, processor, mb["prompts"], mb["videos"], mb["completion_ids"]
                )  # (N, L), (N, L)
                if mb["old_logp"] is None:
                    mb["old_logp"] = (
                        logp.detach()
                    )  # the policy that sampled = this one, before any update
                is_weights = None
                if cfg.rollout == "vllm" and cfg.vllm_tis_cap and None not in mb["rollout_logp"]:
                    # vLLM's sampler and the trainer's forward differ slightly: correct for it
                    rollout_logp = _pad(mb["rollout_logp"], logp.shape, logp.device)  # (N, L)
                    is_weights = truncated_is_weights(
                        mb["old_logp"], rollout_logp, cfg.vllm_tis_cap, mask
                    )
                ref_logp = None
                if ref_model is not None:
                    with torch.no_grad():
                        ref_logp, _ = completion_logprobs(
                            ref_model, processor, mb["prompts"], mb["videos"], mb["completion_ids"]
                        )
                loss, lstats = grpo_loss(
                    logp,
                    mb["old_logp"],
                    mb["advantages"].to(logp.device),
                    mask,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    beta=cfg.beta,
                    ref_logp=ref_logp,
                    loss_type=cfg.loss_type,
                    max_completion_length=cfg.max_new_tokens,
                    importance_weights=is_weights,
                    # dapo normalises by the tokens of the whole round, so accumulation is exact
                    num_tokens=round_tokens if cfg.loss_type == "dapo" else None,
                )
                (loss if cfg.loss_type == "dapo" else loss / len(micro)).backward()
                stats.setdefault("loss", []).append(float(loss.detach()))
                for k, v in lstats.items():
                    stats.setdefault(k, []).append(float(v))
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if micro
                else torch.tensor(0.0)
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            t_fb += time.perf_counter() - t0
            engine.sync_weights(model)

            step_time = time.perf_counter() - t_start
            metrics = {k: float(np.mean(v)) for k, v in stats.items() if len(v)}
            metrics.update(
                {
                    "grad_norm": float(grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": state.epoch + state.position / len(dataset),
                    "time/rollout_s": t_rollout,
                    "time/reward_s": t_reward,
                    "time/forward_backward_s": t_fb,
                    "time/step_s": step_time,
                    "tokens_per_s": n_tokens / max(t_rollout, 1e-9),
                }
            )
            if state.step % cfg.logging_steps == 0 or state.step == total_steps:
                logger.log(state.step, metrics)
            bar.set_postfix(
                reward=f"{metrics.get('reward/total', 0):.3f}", loss=f"{metrics.get('loss', 0):.4f}"
            )
            bar.update()
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                save_checkpoint(
                    output_dir / f"checkpoint-{state.step}",
                    model,
                    processor,
                    optimizer,
                    scheduler,
                    state,
                    cfg,
                )
    bar.close()
    logger.close()
    final = output_dir / "final"
    save_model(final, model, processor, cfg)
    return final


def _pad(rows: list[list[float]], shape: tuple[int, int], device) -> torch.Tensor:
    """Right-pad ragged per-token values to ``shape`` (N, L) with zeros."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        n = min(len(row), shape[1])
        out[i, :n] = torch.as_tensor(row[:n], dtype=torch.float32)
    return out


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, state: TrainState) -> None:
    """Optimizer, scheduler, data position and RNG (and LoRA adapter weights) of ``ckpt``."""
    if (ckpt / "model" / "adapter_config.json").exists():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(ckpt / "model" / "adapter_model.safetensors"))
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    for k, v in blob["state"].items():
        setattr(state, k, v)
    _set_rng_state(blob["rng"])


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description="GRPO training of Qwen2.5-VL on instance-ID overlaid video shards.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue from the latest checkpoint in output_dir (or from the given checkpoint folder)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    final = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"final model: {final}")
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
