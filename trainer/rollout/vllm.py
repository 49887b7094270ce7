"""Rollouts with vLLM on GPU: one engine per rank, colocated with the trainer (vLLM is imported lazily).

Written against vLLM 0.33 (the ``gpu`` extra's pin); every vLLM call below exists there.

- **One engine per rank.** Under ``torchrun`` / ``accelerate launch`` each rank builds its own
  ``vllm.LLM`` with ``distributed_executor_backend="external_launcher"``, which joins the
  trainer's process group instead of spawning workers. ``tensor_parallel_size`` ranks share
  one engine: they all submit the same prompts (gathered over their group), get the same
  outputs (same seed: ``seed + rank // tensor_parallel_size``), and each keeps its own share.
- **Videos** go in as ``(frames, metadata)`` with the metadata :func:`trainer.data.video_inputs`
  gives the HF processor (fps, frame indices), and with the processor's resize and frame
  sampling off, so vLLM sees the pixels and temporal positions of the training forward.
  vLLM 0.33's Qwen2.5-VL parser requires the tuple; ``metadata_via="kwargs"`` (metadata in
  ``mm_processor_kwargs``) is for older releases that dropped it.
- **Log-probs** are vLLM's ``processed_logprobs``: after temperature and the vision-token ban
  (``SamplingParams.allowed_token_ids``), so they describe the distribution actually sampled
  from; the trainer divides its logits by the same temperature.
- **Weights.** :meth:`VLLMRolloutEngine.sync_weights` pushes the policy through the vLLM
  model's own ``load_weights`` (which maps HF names and fuses qkv / gate-up), one layer at a
  time: FSDP2 shards (DTensors) are all-gathered with ``full_tensor()`` per layer, so the
  push never holds more than one full layer; LoRA adapters are merged first. Then the prefix
  cache and the encoder cache (vision embeddings of the old weights) are dropped.
- **Sleep.** :meth:`sleep` frees the engine's GPU memory while the trainer steps (level 1:
  weights to host memory, KV cache dropped; level 2: both dropped, the next push restores
  the weights); :meth:`wake_up` (or the next ``generate`` / ``sync_weights``) undoes it.
  After a level-2 sleep, ``generate`` refuses to run until weights have been pushed.
- A vLLM API the engine needs and cannot find raises at construction, never silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data import video_metadata
from trainer.model_sizes import UNIT_RE
from trainer.policy import vision_token_ids
from trainer.rollout.base import (
    Completion,
    RolloutRequest,
    check_sampling,
    per_request_seeds,
    stop_token_ids,
)

_WRAPPERS = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")
REQUIRED_LLM_API = ("generate", "sleep", "wake_up", "reset_prefix_cache", "apply_model")
REQUIRED_ENGINE_API = ("reset_encoder_cache",)


@dataclass(frozen=True)
class ColocateLayout:
    """Where a rank sits among the engines: ``tp`` consecutive ranks share one engine."""

    rank: int
    world_size: int
    tp: int

    def __post_init__(self):
        if self.tp < 1 or self.world_size < 1 or self.world_size % self.tp:
            raise ValueError(
                f"vllm_tensor_parallel_size={self.tp} must divide the number of ranks ({self.world_size})"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")

    @property
    def group_index(self) -> int:
        """Which engine this rank belongs to (also the engine's seed offset, as in TRL)."""
        return self.rank // self.tp

    @property
    def rank_in_group(self) -> int:
        return self.rank % self.tp

    @property
    def groups(self) -> list[list[int]]:
        """Every engine's ranks, for ``torch.distributed.new_subgroups_by_enumeration``."""
        return [
            list(range(g * self.tp, (g + 1) * self.tp)) for g in range(self.world_size // self.tp)
        ]


def llm_kwargs(
    model_path: str,
    layout: ColocateLayout,
    *,
    seed: int = 0,
    gpu_memory_utilization: float = 0.4,
    max_model_len: int | None = None,
    dtype: str = "bfloat16",
    enable_sleep_mode: bool = True,
    enforce_eager: bool = False,
    **extra,
) -> dict:
    """Keyword arguments of ``vllm.LLM`` for one colocated engine.

    ``max_model_len=None`` leaves vLLM to take the model's own limit. Ranks of one tensor
    parallel group get the same seed; different groups get different ones.
    """
    kw = {
        "model": str(model_path),
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "tensor_parallel_size": layout.tp,
        "seed": seed + layout.group_index,
        "limit_mm_per_prompt": {"image": 0, "video": 1},
        "enable_sleep_mode": enable_sleep_mode,
        "enforce_eager": enforce_eager,
        "logprobs_mode": "processed_logprobs",
    }
    if layout.world_size > 1:
        kw["distributed_executor_backend"] = "external_launcher"
    return {**kw, **extra}


def vllm_weight_name(name: str) -> str:
    """The HF checkpoint name of a (peft-, checkpoint- or compile-wrapped) parameter name."""
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def weight_batches(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The model's weights as HF-named full tensors, one decoder layer / vision block at a time.

    DTensor parameters (FSDP2 shards) are all-gathered with ``full_tensor()`` (a collective:
    every rank must iterate together); plain tensors pass through without a copy. Parameters
    outside the repeated units (embeddings, lm_head, norms) come one per batch. LoRA
    adapter weights are skipped: merge them into the base weights first. Nothing is kept
    between batches, so at most one batch is materialised while the caller holds it.
    """
    batch: list[tuple[str, torch.Tensor]] = []
    unit = None
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        name = vllm_weight_name(name)
        match = UNIT_RE.match(name)
        key = match.group(1) if match else name
        if batch and key != unit:
            yield batch
            batch = []
        unit = key
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):
            mesh_device = tensor.device_mesh.device_type
            if tensor.device.type != mesh_device:  # FSDP2 CPU offload: gather on the mesh's device
                tensor = tensor.to(mesh_device)
            tensor = tensor.full_tensor()
        batch.append((name, tensor))
    if batch:
        yield batch


def hf_weights_for_vllm(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) for every weight, in :func:`weight_batches` order."""
    for batch in weight_batches(model):
        yield from batch


def _require(owner, names: tuple[str, ...], what: str) -> None:
    """Raise naming the vLLM version when ``owner`` lacks a method the engine calls."""
    missing = [n for n in names if not callable(getattr(owner, n, None))]
    if missing:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("vllm")
        except PackageNotFoundError:
            found = "?"
        raise RuntimeError(
            f"vLLM {found}: {what} lacks {missing}; this engine is written for vllm==0.33 "
            "(pip install -e '.[gpu]')"
        )


def _dist_layout(tp: int) -> ColocateLayout:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return ColocateLayout(torch.distributed.get_rank(), torch.distributed.get_world_size(), tp)
    return ColocateLayout(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), tp)


class VLLMRolloutEngine:
    """Samples G completions per request with this rank's colocated ``vllm.LLM``."""

    def __init__(
        self,
        model_path: str,
        processor,
        *,
        suppress_token_ids: list[int] | None = None,
        tensor_parallel_size: int = 1,
        sleep_level: int = 1,
        metadata_via: str = "tuple",
        enable_sleep_mode: bool = True,
        **kwargs,
    ):
        if metadata_via not in ("tuple", "kwargs"):
            raise ValueError(f"metadata_via must be 'tuple' or 'kwargs', got {metadata_via!r}")
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        self.layout = _dist_layout(tensor_parallel_size)
        self.tp_group = None
        if self.layout.world_size > 1:
            if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
                raise RuntimeError(
                    "vLLM's external launcher needs MASTER_ADDR and MASTER_PORT (torchrun / accelerate set them)"
                )
            os.environ.setdefault("RANK", str(self.layout.rank))
            os.environ.setdefault("WORLD_SIZE", str(self.layout.world_size))
            os.environ.setdefault(
                "LOCAL_RANK", str(self.layout.rank % max(1, torch.cuda.device_count()))
            )
        if self.layout.tp > 1:  # a collective: every rank constructs its engine at the same time
            self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(self.layout.groups)
        # In-process engine: the weight push hands tensors over without serialisation.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.metadata_via = metadata_via
        self.processor = processor
        tok = processor.tokenizer
        banned = set(
            vision_token_ids(processor) if suppress_token_ids is None else suppress_token_ids
        )
        self.allowed_token_ids = [i for i in range(len(tok)) if i not in banned]
        self.stop_ids = stop_token_ids(tok)
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        self._sleeping = False
        self._weights_dropped = False
        self.llm = LLM(
            **llm_kwargs(model_path, self.layout, enable_sleep_mode=enable_sleep_mode, **kwargs)
        )
        _require(self.llm, REQUIRED_LLM_API, "LLM")
        _require(self.llm.llm_engine, REQUIRED_ENGINE_API, "LLMEngine")

    @classmethod
    def from_policy(cls, model, processor, *, model_path: str | None = None, **kwargs):
        """Start vLLM on the checkpoint ``model`` came from; call :meth:`sync_weights` before use
        if the weights have changed since loading."""
        return cls(model_path or policy_source(model), processor, **kwargs)

    def generate(
        self,
        requests: list[RolloutRequest],
        *,
        num_generations: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``seed``: one per request, or one int for all (:func:`per_request_seeds`); vLLM
        gives child k of a request the seed ``seed + k``."""
        check_sampling(num_generations, max_new_tokens, temperature, top_p)
        if self._weights_dropped:
            raise RuntimeError(
                "a level-2 sleep dropped vLLM's weights: call sync_weights(model) before generate"
            )
        self.wake_up()
        n = num_generations if temperature > 0 else 1  # greedy: one path, copied G times
        prompts = [self._prompt(req) for req in requests]
        seeds = per_request_seeds(seed, len(requests))
        prompts, seeds, mine = self._gather_group(prompts, seeds)
        params = [self._sampling(n, max_new_tokens, temperature, top_p, s) for s in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)[mine]
        return [self._completions(r, out) * (num_generations // n) for r, out in enumerate(outputs)]

    def _sampling(self, n, max_new_tokens, temperature, top_p, seed):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            logprobs=0,
            seed=seed,  # vLLM gives child k of a request the seed `seed + k`: requests stay apart
            stop_token_ids=self.stop_ids,
            allowed_token_ids=self.allowed_token_ids,
            repetition_penalty=1.0,
            skip_special_tokens=True,
        )

    def _gather_group(self, prompts: list, seeds: list) -> tuple[list, list, slice]:
        """With tensor parallelism every rank of the group must submit the same batch: gather
        the group's prompts and seeds; the slice picks this rank's outputs."""
        if self.tp_group is None:
            return prompts, seeds, slice(None)
        gathered: list = [None] * self.layout.tp
        torch.distributed.all_gather_object(gathered, (prompts, seeds), group=self.tp_group)
        counts = [len(p) for p, _ in gathered]
        start = sum(counts[: self.layout.rank_in_group])
        mine = slice(start, start + counts[self.layout.rank_in_group])
        return [x for p, _ in gathered for x in p], [x for _, q in gathered for x in q], mine

    def _prompt(self, req: RolloutRequest) -> dict:
        frames = np.ascontiguousarray(req.frames)
        meta = video_metadata(len(frames), req.fps)
        kwargs = {"do_resize": False, "do_sample_frames": False}
        if self.metadata_via == "tuple":
            video = (frames, meta)
        else:
            video, kwargs["video_metadata"] = frames, [meta]
        return {
            "prompt": req.prompt,
            "multi_modal_data": {"video": video},
            "mm_processor_kwargs": kwargs,
        }

    def _completions(self, r: int, out) -> list[Completion]:
        comps = []
        for c in out.outputs:
            ids = list(c.token_ids)
            lps = None
            if c.logprobs is not None:
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs, ids)]
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"request {r}: vLLM finished with {c.finish_reason!r}")
            if c.finish_reason == "stop" and (not ids or ids[-1] not in self.stop_ids):
                # The stop token must be trained on; add it back (its log-prob is unknown).
                ids.append(c.stop_reason if isinstance(c.stop_reason, int) else self.stop_ids[0])
                lps = None
            comps.append(Completion(r, ids, c.text, lps, c.finish_reason))
        return comps

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push ``model``'s current weights (LoRA merged; FSDP2 shards gathered one layer at a
        time) into this rank's engine, then drop the caches computed with the old ones.
        Every rank must call it together when the model is sharded."""
        if self._sleeping:
            torch.cuda.empty_cache()  # hand the trainer's cached blocks back for vLLM's weights
            self.llm.wake_up(tags=["weights"])
        peft = hasattr(model, "merge_adapter")
        if peft:
            model.merge_adapter()
        try:
            for batch in weight_batches(model):
                self.llm.apply_model(lambda vllm_model, b=batch: vllm_model.load_weights(b))
                del batch
        finally:
            if peft:
                model.unmerge_adapter()
        self._weights_dropped = False
        if self._sleeping:
            torch.cuda.empty_cache()
            self._check_awake(self.llm.wake_up(tags=["kv_cache"]))
        self.reset_caches()

    @property
    def needs_weights(self) -> bool:
        """After a level-2 sleep the engine holds no weights until :meth:`sync_weights`."""
        return self._weights_dropped

    def reset_caches(self) -> None:
        """Forget KV blocks and vision-encoder outputs computed with the previous weights
        (the processor's cache of preprocessed pixels does not depend on them and stays)."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests still running?)")
        self.llm.llm_engine.reset_encoder_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory until the next round (no-op without sleep mode)."""
        if self.enable_sleep_mode and not self._sleeping:
            self.llm.sleep(level=self.sleep_level)
            self._sleeping = True
            self._weights_dropped = self.sleep_level == 2

    def wake_up(self) -> None:
        if self._sleeping:
            torch.cuda.empty_cache()
            self._check_awake(self.llm.wake_up())

    def _check_awake(self, fully_awake: bool) -> None:
        # vLLM 0.33: LLM.wake_up returns whether all of the engine's memory is resident again
        # (EngineCore.wake_up); a partial wake (tags=["weights"]) returns False by design.
        if not fully_awake:
            raise RuntimeError("vLLM did not wake up fully (some of its memory is still asleep)")
        self._sleeping = False


def policy_source(model) -> str:
    """The folder or hub id a (possibly peft-wrapped) HF model was loaded from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
    if not path:
        raise ValueError("cannot tell where the model was loaded from: pass model_path=...")
    return str(path)
