"""Memory plan: will a training config fit its GPUs? Per-GPU bytes, line by line.

    python -m trainer.plan --config configs/qwen2_5_vl_7b.yaml --gpus 8 --gpu-memory-gib 80
    python -m trainer.plan --config configs/qwen2_5_vl_3b_lora.yaml --gpus 1 --gpu-memory-gib 80

Parameter counts are exact (:mod:`trainer.model_sizes`: the model class built on the meta
device from the checkpoint's config.json, or from the built-in table for Qwen2.5-VL-7B/3B).
Bytes follow the trainer's set-up:

- trained parameters and their gradients in fp32 (master weights), AdamW's two moments in
  fp32; compute in ``dtype`` (bf16). The trainer loads every weight, a LoRA's frozen base too, in the master dtype.
- ``fsdp2`` shards parameters, gradients, optimiser state and the reference model over the
  ranks (divide by N) and all-gathers one layer at a time (plus the prefetched next one and
  the root module's parameters: embeddings, lm_head); ``cpu_offload`` moves the shards to host
  memory. ``ddp`` (and one process) keeps a full copy per GPU; DDP's buckets copy the gradients.
- reference model: none with LoRA (the adapter is disabled instead) or ``beta = 0``; a frozen
  copy in the compute dtype (sharded like the policy) for a full fine-tune with ``beta > 0``.
- vLLM takes ``vllm_gpu_memory_utilization`` of the GPU: its weights, an activation reserve
  and the KV cache in what is left. With sleep mode it frees all of it while the trainer steps.
- activations are an estimate (not measured): per token and decoder layer ``(14h + 3kv + 4i)``
  values without gradient checkpointing, ``h`` with it (plus one layer being recomputed),
  fp32 log-prob rows over the vocabulary for every completion token, and the vision tower
  when it is trained. A prompt is ``total_pixels / (28*28*2)`` video tokens and ~256 text
  tokens; ``per_step_prompts * num_generations`` sequences share one backward pass.
- 2 GiB per GPU for the CUDA context, NCCL and allocator slack (an estimate).

The parameter, gradient and optimiser lines are checked against tensors allocated on CPU
(tests/test_plan.py); the rest is arithmetic on the model's shape.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

GIB = 1024**3
PROMPT_TEXT_TOKENS = 256  # system turn + instruction + query, rounded up
LOGPROB_MICRO_BATCH = 4  # samples per forward in trainer.policy.completion_logprobs
CUDA_OVERHEAD = 2 * GIB
VLLM_PROFILE_TOKENS = 8192  # tokens of vLLM's profiling forward (its activation reserve)
VLLM_MAX_SEQS = 256
STRATEGIES = ("ddp", "fsdp2")
RESIDENT = ("parameters", "optimiser state", "reference model")  # held through rollouts too
WORKING = ("FSDP2 all-gathered layers", "autocast weight copies")


@dataclass(frozen=True)
class Line:
    """One item of the plan: bytes on each GPU and in host memory per rank."""

    name: str
    gpu: float
    host: float = 0.0
    note: str = ""


@dataclass
class MemoryPlan:
    """Per-GPU memory of a run; ``fits`` says whether its peak phase fits the GPU."""

    title: str
    gpu_bytes: float
    lines: list[Line]
    phases: dict[str, float]
    problems: list[str] = field(default_factory=list)
    activations_without_checkpointing: float = 0.0
    activations_with_checkpointing: float = 0.0

    def line(self, name: str) -> Line:
        return next(ln for ln in self.lines if ln.name == name)

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_bytes and not self.problems

    def table(self) -> str:
        rows = [self.title, f"{'':44s}{'GiB/GPU':>9s}{'host GiB/rank':>15s}"]
        for ln in self.lines:
            rows.append(f"{ln.name:44s}{ln.gpu / GIB:9.2f}{ln.host / GIB:15.2f}  {ln.note}")
        rows.append(
            f"activations with / without gradient checkpointing: "
            f"{self.activations_with_checkpointing / GIB:.2f} / "
            f"{self.activations_without_checkpointing / GIB:.2f} GiB"
        )
        for name, b in self.phases.items():
            rows.append(f"phase {name:38s}{b / GIB:9.2f}")
        cap = f"peak {self.peak / GIB:.2f} of {self.gpu_bytes / GIB:.2f} GiB per GPU"
        if self.fits:
            rows.append(f"FITS: {cap}")
        else:
            reasons = ([] if self.peak <= self.gpu_bytes else [cap]) + self.problems
            rows.append("DOES NOT FIT: " + "; ".join(reasons))
        return "\n".join(rows)


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2  # 'auto' is bfloat16 on CUDA


def sequence_tokens(cfg) -> tuple[int, int]:
    """(prompt tokens, prompt + completion tokens) of one rollout sequence (estimate)."""
    video = cfg.total_pixels // (28 * 28 * 2)  # 2x2 patch merge of 14 px patches, 2 frames
    prompt = video + PROMPT_TEXT_TOKENS
    return prompt, prompt + cfg.max_new_tokens


def activation_bytes(cfg, sizes, *, checkpointing: bool) -> float:
    """Estimated bytes the backward pass of one micro-batch keeps (see the module docstring)."""
    b = _dtype_bytes(cfg.dtype)
    seqs = cfg.per_step_prompts * cfg.num_generations
    prompt, seq = sequence_tokens(cfg)
    tokens = seqs * seq
    h, kv = sizes.hidden, sizes.kv_heads * sizes.head_dim
    layer = (14 * h + 3 * kv + 4 * sizes.intermediate) * b  # one token through one layer
    text = (
        tokens * (sizes.layers * h * b + layer) if checkpointing else tokens * sizes.layers * layer
    )
    # fp32 (k, V) rows kept by logsumexp, plus one forward's bf16 logits
    logits = seqs * cfg.max_new_tokens * sizes.vocab * 4
    logits += LOGPROB_MICRO_BATCH * (cfg.max_new_tokens + 1) * sizes.vocab * b
    vision = 0.0
    if cfg.lora_r == 0 and not cfg.freeze_vision:
        patches = (prompt - PROMPT_TEXT_TOKENS) * sizes.merge**2
        encodes = cfg.per_step_prompts * math.ceil(cfg.num_generations / LOGPROB_MICRO_BATCH)
        hv, iv = sizes.vision_hidden, sizes.vision_intermediate
        block = (17 * hv + 4 * iv) * b
        per = sizes.vision_depth * hv * b + block if checkpointing else sizes.vision_depth * block
        vision = encodes * patches * per
    return float(text + logits + vision)


def _vllm_lines(cfg, sizes, gpu_bytes: float, prompt_seq: int) -> tuple[list[Line], list[str]]:
    b = _dtype_bytes(cfg.dtype)
    tp = getattr(cfg, "vllm_tensor_parallel_size", 1)
    level = getattr(cfg, "vllm_sleep_level", 1)
    budget = cfg.vllm_gpu_memory_utilization * gpu_bytes
    weights = (sizes.total - sizes.lora) * b / tp
    reserve = (
        VLLM_PROFILE_TOKENS * (2 * sizes.intermediate + 4 * sizes.hidden) * b / tp
        + VLLM_MAX_SEQS * sizes.vocab * 4
    )
    kv = budget - weights - reserve
    per_token = 2 * sizes.layers * sizes.kv_heads * sizes.head_dim * b / tp
    max_len = cfg.vllm_max_model_len or sizes.max_positions
    problems = []
    if kv < max_len * per_token:
        problems.append(
            f"vLLM's KV cache ({kv / GIB:.2f} GiB) cannot hold one {max_len}-token sequence "
            f"({max_len * per_token / GIB:.2f} GiB): raise vllm_gpu_memory_utilization or set "
            "vllm_max_model_len lower"
        )
    if prompt_seq > max_len:
        problems.append(
            f"a rollout (~{prompt_seq} tokens: video + text + max_new_tokens) is longer than "
            f"vllm_max_model_len={max_len}"
        )
    host = weights if cfg.vllm_enable_sleep_mode and level == 1 else 0.0
    lines = [
        Line("vLLM weights", weights, host, f"{b * 8}-bit, tensor parallel {tp}"),
        Line("vLLM activation reserve", reserve, 0.0, "estimate"),
        Line(
            "vLLM KV cache",
            max(kv, 0.0),
            0.0,
            f"{kv / per_token if kv > 0 else 0:,.0f} tokens; {max_len} per sequence",
        ),
    ]
    return lines, problems


def _state_lines(cfg, sizes, world_size: int, strategy: str, cpu_offload: bool) -> list[Line]:
    """Parameters, gradients, optimiser state, reference model and the unsharded working set."""
    b = _dtype_bytes(cfg.dtype)
    full = cfg.lora_r == 0
    shard = world_size if strategy == "fsdp2" else 1
    P, T = sizes.total, sizes.trainable
    m = 2 if cfg.pure_bf16 else 4  # master weights, gradients, AdamW moments: fp32 unless pure_bf16
    master = "bf16" if cfg.pure_bf16 else "fp32"
    frozen_bytes = m  # the trainer loads every weight (a LoRA's frozen base too) as a master
    ddp_copy = 2 if strategy == "ddp" and world_size > 1 else 1

    def place(name, nbytes, note):  # sharded state: on the GPU, or in host memory when offloaded
        nbytes /= shard
        return Line(name, 0.0, nbytes, note) if cpu_offload else Line(name, nbytes, 0.0, note)

    split = f"/{shard}" if shard > 1 else "one copy per GPU"
    ref = P * b if full and cfg.beta > 0 else 0.0
    why = "frozen copy" if ref else ("LoRA: adapter disabled" if not full else "beta = 0: none")
    lines = [
        place(
            "parameters",
            T * m + (P - T) * frozen_bytes,
            f"{T:,} trained {master}, {P - T:,} frozen; {split}",
        ),
        place(
            "gradients",
            T * m * ddp_copy,
            master + (", DDP buckets copy them" if ddp_copy > 1 else ""),
        ),
        place(
            "optimiser state",
            T * 2 * m + sizes.trainable_tensors * 4,
            f"AdamW exp_avg + exp_avg_sq, {master}",
        ),
        place("reference model", ref, why),
    ]
    if strategy == "fsdp2":
        working = (sizes.root + 2 * sizes.largest_unit) * b + sizes.largest_unit * 4
        lines.append(Line(WORKING[0], working, 0.0, "root + 2 layers, fp32 reduce"))
    else:
        working = P * b if b < 4 else 0.0  # autocast casts every fp32 weight a matmul reads
        lines.append(Line(WORKING[1], working, 0.0, "bf16 casts of the fp32 weights"))
    return lines


def _check_args(cfg, world_size, gpu_memory_gib, strategy, cpu_offload) -> str:
    if world_size < 1 or not gpu_memory_gib > 0:
        raise ValueError(
            f"need world_size >= 1 and gpu_memory_gib > 0, got {world_size}, {gpu_memory_gib}"
        )
    if strategy is None:
        strategy = "fsdp2" if cfg.lora_r == 0 and world_size > 1 else "ddp"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if cpu_offload and strategy != "fsdp2":
        raise ValueError("cpu_offload needs strategy='fsdp2'")
    return strategy


def memory_plan(
    cfg,
    world_size: int,
    gpu_memory_gib: float,
    *,
    strategy: str | None = None,
    cpu_offload: bool = False,
    sizes=None,
) -> MemoryPlan:
    """The per-GPU memory plan of ``cfg`` on ``world_size`` GPUs of ``gpu_memory_gib`` each.

    Args:
        strategy: ``"fsdp2"`` or ``"ddp"``; None: fsdp2 for a full fine-tune on several
            GPUs, ddp otherwise (LoRA, or one process).
        cpu_offload: FSDP2 keeps parameter, gradient and optimiser shards in host memory.
        sizes: a :class:`trainer.model_sizes.ModelSizes` (default: counted from ``cfg.model``).
    """
    from trainer.model_sizes import model_sizes

    strategy = _check_args(cfg, world_size, gpu_memory_gib, strategy, cpu_offload)
    if sizes is None:
        sizes = model_sizes(cfg.model, lora=cfg.lora_kwargs(), freeze_vision=cfg.freeze_vision)
    gpu_bytes = gpu_memory_gib * GIB
    lines = _state_lines(cfg, sizes, world_size, strategy, cpu_offload)
    working = lines[-1].gpu
    with_ckpt = activation_bytes(cfg, sizes, checkpointing=True)
    without = activation_bytes(cfg, sizes, checkpointing=False)
    acts = with_ckpt if cfg.gradient_checkpointing else without
    ckpt = "on" if cfg.gradient_checkpointing else "off"
    lines.append(Line("activations", acts, 0.0, f"estimate, gradient checkpointing {ckpt}"))
    _, seq = sequence_tokens(cfg)
    problems = []
    if cfg.rollout == "vllm":
        tp = getattr(cfg, "vllm_tensor_parallel_size", 1)
        if tp < 1 or world_size % tp:
            problems.append(f"vllm_tensor_parallel_size={tp} does not divide {world_size} GPUs")
        vlines, vproblems = _vllm_lines(cfg, sizes, gpu_bytes, seq)
        lines += vlines
        problems += vproblems
        rollout = cfg.vllm_gpu_memory_utilization * gpu_bytes
        asleep = cfg.vllm_enable_sleep_mode
    else:
        per_token = 2 * sizes.layers * sizes.kv_heads * sizes.head_dim * _dtype_bytes(cfg.dtype)
        kv = cfg.per_step_prompts * cfg.num_generations * seq * per_token
        lines.append(Line("HF generate KV cache", kv, 0.0, "estimate"))
        rollout, asleep = kv + working, True
    lines.append(Line("CUDA context, NCCL, allocator", CUDA_OVERHEAD, 0.0, "estimate"))
    resident = sum(ln.gpu for ln in lines if ln.name in RESIDENT) + CUDA_OVERHEAD
    train = resident + lines[1].gpu + working + acts + (0.0 if asleep else rollout)
    phases = {
        "rollout (trainer state + generation)": resident + rollout,
        "training step" + (" (vLLM asleep)" if cfg.rollout == "vllm" and asleep else ""): train,
    }
    where = f"fsdp2{' + CPU offload' if cpu_offload else ''}" if strategy == "fsdp2" else strategy
    title = (
        f"Memory plan for {cfg.model} (architecture from {sizes.source}): {sizes.total:,} "
        f"parameters, {sizes.trainable:,} trained\n{world_size} GPU(s) x {gpu_memory_gib:g} GiB, "
        f"{where}, {f'LoRA r={cfg.lora_r}' if cfg.lora_r else 'full fine-tune'}, rollouts "
        f"{cfg.rollout}, ~{seq} tokens per sequence, "
        f"{cfg.per_step_prompts * cfg.num_generations} per backward"
    )
    return MemoryPlan(title, gpu_bytes, lines, phases, problems, without, with_ckpt)


def assert_fits(cfg, world_size: int, gpu_memory_gib: float, **kwargs) -> None:
    """Raise ValueError holding the printed :func:`memory_plan` when ``cfg`` does not fit
    ``world_size`` GPUs of ``gpu_memory_gib`` (keyword arguments as :func:`memory_plan`)."""
    plan = memory_plan(cfg, world_size, gpu_memory_gib, **kwargs)
    if not plan.fits:
        raise ValueError("this configuration does not fit its GPUs:\n" + plan.table())


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser(
        prog="python -m trainer.plan",
        description="Print the per-GPU memory plan of a training config and whether it fits "
        "(exit status 1 if it does not).",
    )
    add_config_args(parser)
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (ranks)")
    parser.add_argument(
        "--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)"
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="fsdp2 or ddp (default: the config's `distributed`; auto: fsdp2 for a full "
        "fine-tune on several GPUs, else ddp)",
    )
    parser.add_argument(
        "--cpu-offload",
        action="store_true",
        help="FSDP2 shards in host memory, as ZeRO-3 offload (default: the config's "
        "fsdp_cpu_offload)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:  # a bad key or value: a usage error, not a traceback
        parser.error(str(err))
    plan = memory_plan(
        cfg,
        args.gpus,
        args.gpu_memory_gib,
        strategy=args.strategy or (None if cfg.distributed == "auto" else cfg.distributed),
        cpu_offload=args.cpu_offload or (cfg.fsdp_cpu_offload and args.gpus > 1),
    )
    print(plan.table())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
