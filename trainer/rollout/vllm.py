"""Rollouts with vLLM on GPU, colocated with the trainer (vLLM is imported lazily).

- Videos go in as ``(frames, metadata)`` with the same metadata :func:`trainer.data.video_inputs`
  gives the HF processor (fps, frame indices), and with the processor's resize and frame
  sampling off, so vLLM sees the same pixels and temporal positions as the training forward.
  vLLM releases that predate Qwen2.5-VL metadata forwarding drop the tuple's metadata
  (and fall back to 24 fps); for those, ``metadata_via="kwargs"`` hands it to the HF
  processor through ``mm_processor_kwargs`` instead. The GPU test checks the timing.
- Vision placeholder ids are banned through ``SamplingParams.allowed_token_ids``.
- ``logprobs=0`` returns the sampled tokens' log-probs; vLLM's default ``raw_logprobs``
  mode takes them before temperature / top-p / bans, like :func:`trainer.policy.completion_logprobs`.
- After each optimiser step :meth:`VLLMRolloutEngine.sync_weights` pushes the HF weights
  through the vLLM model's own ``load_weights`` (which maps HF names and fuses qkv /
  gate-up), merging LoRA adapters first, then drops the prefix and encoder caches.
- The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the weight push
  hands over tensors without serialisation; ``sleep``/``wake_up`` free its GPU memory
  (level 1: weights to CPU, KV cache dropped) while the trainer steps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from trainer.data import video_metadata
from trainer.policy import vision_token_ids
from trainer.rollout.base import Completion, RolloutRequest, check_sampling, stop_token_ids


def policy_source(model) -> str:
    """The folder or hub id a (possibly peft-wrapped) HF model was loaded from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
    if not path:
        raise ValueError("cannot tell where the model was loaded from: pass model_path=...")
    return str(path)


def hf_weights_for_vllm(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every parameter; LoRA adapters must already be merged.

    peft names are mapped back to the base model's (prefix ``base_model.model.`` and
    ``.base_layer`` removed, ``lora_`` parameters skipped).
    """
    peft = hasattr(model, "get_base_model")
    for name, param in model.named_parameters():
        if peft:
            if "lora_" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name, param.detach()


class VLLMRolloutEngine:
    """Samples G completions per request with a colocated ``vllm.LLM``."""

    def __init__(
        self,
        model_path: str,
        processor,
        *,
        suppress_token_ids: list[int] | None = None,
        gpu_memory_utilization: float = 0.4,
        max_model_len: int = 4096,
        dtype: str = "bfloat16",
        enable_sleep_mode: bool = True,
        sleep_level: int = 1,
        enforce_eager: bool = False,
        seed: int = 0,
        metadata_via: str = "tuple",
        **llm_kwargs,
    ):
        if metadata_via not in ("tuple", "kwargs"):
            raise ValueError(f"metadata_via must be 'tuple' or 'kwargs', got {metadata_via!r}")
        self.metadata_via = metadata_via
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

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
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": 0, "video": 1},
            enable_sleep_mode=enable_sleep_mode,
            enforce_eager=enforce_eager,
            seed=seed,
            **llm_kwargs,
        )

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
        seed: int | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        check_sampling(num_generations, max_new_tokens, temperature, top_p)
        self.wake_up()
        n = num_generations if temperature > 0 else 1  # greedy: one path, copied G times
        prompts, params = [], []
        for r, req in enumerate(requests):
            prompts.append(self._prompt(req))
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    logprobs=0,
                    # vLLM gives child k of a request the seed `seed + k`: keep requests apart.
                    seed=None if seed is None else seed + r * num_generations,
                    stop_token_ids=self.stop_ids,
                    allowed_token_ids=self.allowed_token_ids,
                    repetition_penalty=1.0,
                    skip_special_tokens=True,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._completions(r, out) * (num_generations // n) for r, out in enumerate(outputs)]

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
        """Push ``model``'s current weights (LoRA merged) into the vLLM model."""
        self.wake_up()
        peft = hasattr(model, "merge_adapter")
        if peft:
            model.merge_adapter()
        try:
            weights = list(hf_weights_for_vllm(model))
            self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        finally:
            if peft:
                model.unmerge_adapter()
        self.reset_caches()

    def reset_caches(self) -> None:
        """Forget KV blocks and encoder outputs computed with the previous weights."""
        self.llm.reset_prefix_cache()
        for owner in (self.llm, self.llm.llm_engine):
            reset = getattr(owner, "reset_encoder_cache", None)
            if reset is not None:
                reset()
                break

    def sleep(self) -> None:
        if self.enable_sleep_mode and not self._sleeping:
            self.llm.sleep(level=self.sleep_level)
            self._sleeping = True

    def wake_up(self) -> None:
        if self._sleeping:
            self.llm.wake_up()
            self._sleeping = False
