"""Everything that differs between one process and many: process group, sharding, reductions.

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny_synthetic.yaml
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m trainer.train --config ...

Both launchers set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_distributed` joins the process group from them (NCCL on CUDA, gloo on CPU) and
gives each rank its own device. ``accelerate launch`` with an FSDP config also sets
``ACCELERATE_USE_FSDP`` and ``FSDP_OFFLOAD_PARAMS``, which pick the strategy here when the
config's ``distributed`` is ``auto``.

Strategies (``TrainConfig.distributed``):

- ``ddp``: every rank holds the whole model; after the backward passes of a step the
  gradients are averaged with bucketed ``all_reduce`` calls (:func:`average_gradients`).
  torch's ``DistributedDataParallel`` wrapper is not used: the training forward encodes the
  video outside the model's ``forward`` and several forward chunks share one backward,
  which its reducer does not support.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder layer, every vision
  block and the root, with ``MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)``
  over float32 master weights, optionally offloaded to CPU (``fsdp_cpu_offload``).

One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) creates no process group at all.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch

STRATEGIES = ("auto", "ddp", "fsdp2")
# modules sharded one by one under FSDP2 (class-name suffixes of Qwen2.5-VL's blocks)
SHARDED_BLOCKS = ("DecoderLayer", "VisionBlock", "VisionTransformerPretrainedModel")
BUCKET_ELEMENTS = 2**25  # gradients averaged per all_reduce call (DDP mode)
WAIT = timedelta(hours=3)  # how long ranks wait in a collective for rank 0


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world_size``, its ``device`` and strategy."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    strategy: str = "none"  # "none" (one process), "ddp" or "fsdp2"
    cpu_offload: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def init_distributed(device: str, strategy: str = "auto", cpu_offload: bool = False) -> Dist:
    """Join the process group described by the launcher's environment (if any).

    ``device`` is the config's (``auto``/``cpu``/``cuda``/``cuda:N``); with several ranks
    on CUDA each takes ``cuda:LOCAL_RANK``. ``strategy`` ``auto`` means ``fsdp2`` when
    ``accelerate launch`` was given an FSDP config, else ``ddp``.
    """
    from trainer.policy import resolve_device

    if strategy not in STRATEGIES:
        raise ValueError(f"distributed={strategy!r}: choose one of {STRATEGIES}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)
    if world <= 1:
        return Dist(device=device)
    if strategy == "auto":
        strategy = "fsdp2" if _env_flag("ACCELERATE_USE_FSDP") else "ddp"
    # offloading means CUDA -> CPU; on CPU the shards already sit in CPU memory
    cpu_offload = (cpu_offload or _env_flag("FSDP_OFFLOAD_PARAMS")) and device.startswith("cuda")
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not torch.distributed.is_initialized():
        # rank 0 alone runs the cold start and the evaluations while the others wait
        torch.distributed.init_process_group(backend=backend, timeout=WAIT)
    return Dist(rank, world, local, device, strategy, cpu_offload)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


# ------------------------------------------------------------------ models


def prepare_model(model, dist: Dist, compute_dtype: torch.dtype, *, trainable: bool = True):
    """Shard (FSDP2) or synchronise (DDP) ``model`` in place; returns it.

    DDP: trainable parameters are broadcast from rank 0 (a LoRA adapter's random init is
    then the same everywhere). FSDP2: ``fully_shard`` per decoder layer and vision block,
    then the vision tower (its patch embedding and merger), then the root, with
    ``generate`` and ``get_video_features`` (which the training forward calls apart)
    registered as entry points that gather the root's parameters like ``forward``.
    """
    if dist.strategy == "ddp":
        if trainable:
            for p in model.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, src=0)
        return model
    if dist.strategy != "fsdp2":
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    mesh = init_device_mesh(torch.device(dist.device).type, (dist.world_size,))
    kwargs = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if dist.cpu_offload else OffloadPolicy(),
    }
    for module in reversed(list(model.modules())):  # inner blocks before what holds them
        if type(module).__name__.endswith(SHARDED_BLOCKS):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    for method in ("generate", "get_video_features"):  # entry points besides forward
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    return model


def compute_context(dist: Dist, compute_dtype: torch.dtype, master_dtype: torch.dtype):
    """Autocast to the compute dtype when the weights are kept wider (one process, DDP);
    FSDP2 casts through its mixed-precision policy instead."""
    if dist.strategy == "fsdp2" or compute_dtype == master_dtype:
        return nullcontext()
    return torch.autocast(torch.device(dist.device).type, dtype=compute_dtype)


def average_gradients(params, dist: Dist) -> None:
    """DDP mode: mean of every trainable parameter's gradient over the ranks (missing
    gradients count as zeros, so every rank sends the same buckets)."""
    if dist.strategy != "ddp":
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in [*params, None]:
        if p is not None:
            bucket.append(p.grad)
            size += p.grad.numel()
        if bucket and (p is None or size >= BUCKET_ELEMENTS):
            flat = torch._utils._flatten_dense_tensors(bucket)
            torch.distributed.all_reduce(flat)
            flat /= dist.world_size
            for g, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)
            bucket, size = [], 0


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip in place; the total norm over all ranks' shards (DTensor under FSDP2)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(model, dist: Dist) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (rank 0 gets it; other ranks get ``{}`` under
    FSDP2). Collective under FSDP2: every rank must call it."""
    if dist.strategy != "fsdp2":
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ------------------------------------------------------------------ reductions


def sum_over_ranks(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sum of a list of numbers over the ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.enabled:
        if dist.device.startswith("cuda"):
            t = t.to(dist.device)
        torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def mean_over_ranks(stats: dict[str, list[float]], dist: Dist) -> dict[str, float]:
    """Mean of every key's values pooled over all ranks (each value counts once)."""
    local = {k: (float(sum(v)), len(v)) for k, v in stats.items() if len(v)}
    pooled: dict[str, list[float]] = {}
    for part in gather_objects(local, dist):
        for k, (s, n) in part.items():
            acc = pooled.setdefault(k, [0.0, 0])
            acc[0] += s
            acc[1] += n
    return {k: s / n for k, (s, n) in pooled.items()}


def gather_objects(obj, dist: Dist) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` with one process)."""
    if not dist.enabled:
        return [obj]
    out: list = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out
