"""The cross-field checks of :class:`trainer.config.TrainConfig`: every problem of a config,
each message stating the values, so that one error lists them all."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; the config module imports this one
    from trainer.config import TrainConfig


def config_problems(c: TrainConfig) -> list[str]:
    """Every problem of ``c``, each stating the values (empty: valid)."""
    p: list[str] = []
    for f in fields(c):
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            p.append(f"{f.name}={getattr(c, f.name)!r} is not one of {list(choices)}")
    if c.num_generations < 2:
        p.append(
            f"num_generations={c.num_generations} gives zero-variance groups: GRPO needs num_generations >= 2"
        )
    for name in (
        "per_step_prompts",
        "gradient_accumulation_steps",
        "num_iterations",
        "max_new_tokens",
        "max_frames",
        "total_pixels",
        "logging_steps",
    ):
        if getattr(c, name) < 1:
            p.append(f"{name}={getattr(c, name)} must be >= 1")
    if c.max_steps == 0 or c.max_steps < -1:
        p.append(
            f"max_steps={c.max_steps}: use a positive number of steps, or -1 to run num_epochs"
        )
    if c.max_steps == -1 and not c.num_epochs > 0:
        p.append(f"max_steps=-1 runs num_epochs, but num_epochs={c.num_epochs}")
    if not c.learning_rate > 0:
        p.append(f"learning_rate={c.learning_rate} must be > 0")
    if not 0 <= c.warmup_ratio < 1:
        p.append(f"warmup_ratio={c.warmup_ratio} must be in [0, 1)")
    if c.weight_decay < 0 or not c.max_grad_norm > 0:
        p.append(
            f"weight_decay={c.weight_decay} must be >= 0 and max_grad_norm={c.max_grad_norm} > 0"
        )
    if not c.temperature > 0:
        p.append(
            f"temperature={c.temperature} must be > 0 (GRPO needs sampled, varied completions)"
        )
    if not 0 < c.top_p <= 1:
        p.append(f"top_p={c.top_p} must be in (0, 1]")
    if not 0 < c.epsilon_low < 1:
        p.append(f"epsilon_low={c.epsilon_low} must be in (0, 1)")
    if c.epsilon_high < c.epsilon_low:
        p.append(
            f"epsilon_high={c.epsilon_high} < epsilon_low={c.epsilon_low}: the upper clip range must be at least the lower one (DAPO raises it to 0.28)"
        )
    if c.beta < 0:
        p.append(f"beta={c.beta} must be >= 0")
    return p + _setup_problems(c)


def _setup_problems(c: TrainConfig) -> list[str]:
    """Rewards, device, LoRA, vLLM, checkpoints and metric sinks."""
    p: list[str] = []
    weights = c.reward_weights()
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        p.append(f"reward weights must be finite and >= 0, got {weights}")
    elif not any(weights.values()):
        p.append(f"all reward weights are 0 ({weights}): every advantage would be 0")
    if not c.max_gap_s >= 0 or not c.fps > 0:
        p.append(f"max_gap_s={c.max_gap_s} must be >= 0 and fps={c.fps} > 0")
    if c.rollout == "vllm" and c.device == "cpu":
        p.append(
            f"rollout='vllm' needs a CUDA device (device={c.device!r}); use rollout='hf' on CPU"
        )
    if not (
        c.device in ("auto", "cpu", "cuda")
        or (c.device.startswith("cuda:") and c.device[5:].isdigit())
    ):
        p.append(f"device={c.device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if c.device == "cpu" and c.dtype == "float16":
        p.append("dtype='float16' on device='cpu': use float32 (or bfloat16)")
    if c.lora_r < 0 or (
        c.lora_r > 0
        and (not c.lora_alpha > 0 or not 0 <= c.lora_dropout < 1 or not c.lora_target_modules)
    ):
        p.append(
            f"LoRA needs r >= 0, alpha > 0, 0 <= dropout < 1 and target modules, got r={c.lora_r}, alpha={c.lora_alpha}, dropout={c.lora_dropout}, target_modules={c.lora_target_modules}"
        )
    if not 0 < c.vllm_gpu_memory_utilization <= 1:
        p.append(f"vllm_gpu_memory_utilization={c.vllm_gpu_memory_utilization} must be in (0, 1]")
    if c.vllm_tis_cap is not None and not c.vllm_tis_cap >= 1:
        p.append(
            f"vllm_tis_cap={c.vllm_tis_cap} must be >= 1 (or null to turn truncated importance sampling off)"
        )
    if c.save_steps < 0 or c.eval_steps < 0:
        p.append(f"save_steps={c.save_steps} and eval_steps={c.eval_steps} must be >= 0")
    if c.eval_steps > 0 and not c.eval_shards:
        p.append(f"eval_steps={c.eval_steps} needs eval_shards")
    bad_sinks = sorted(set(c.report_to) - {"jsonl", "tensorboard"})
    if bad_sinks:
        p.append(f"report_to has unknown sinks {bad_sinks}; use jsonl and/or tensorboard")
    if c.lora_r > 0 and c.distributed == "fsdp2":
        p.append("distributed='fsdp2' shards full fine-tunes; train LoRA with distributed='ddp'")
    if c.dtype == "float16":
        p.append("dtype='float16' is not supported for training (no loss scaling): use bfloat16")
    if c.pure_bf16 and c.dtype not in ("auto", "bfloat16"):
        p.append(f"pure_bf16 keeps bfloat16 weights, but dtype={c.dtype!r}")
    if c.num_iterations > 1 and c.save_steps > 0 and c.save_steps % c.num_iterations:
        p.append(
            f"save_steps={c.save_steps} must be a multiple of num_iterations={c.num_iterations}: "
            "a checkpoint inside a round would lose that round's remaining optimiser steps on resume"
        )
    if c.rollout == "vllm" and c.vllm_tis_cap is not None and c.top_p < 1:
        p.append(
            f"top_p={c.top_p} with vllm_tis_cap={c.vllm_tis_cap}: vLLM's log-probs are taken after "
            "top-p, the training forward's are not, so the importance weights would be biased; "
            "use top_p 1 or vllm_tis_cap null"
        )
    if c.gpu_memory_gib is not None and not c.gpu_memory_gib > 0:
        p.append(f"gpu_memory_gib={c.gpu_memory_gib} must be > 0 (or null)")
    return p


def is_small_model(model: str) -> bool:
    """A local checkpoint whose language model is tiny (hidden size <= 512)."""
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return "tiny" in str(model).lower()
    data = json.loads(cfg.read_text())
    hidden = data.get("hidden_size") or data.get("text_config", {}).get("hidden_size") or 0
    return 0 < hidden <= 512
