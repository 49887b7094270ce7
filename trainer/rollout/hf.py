"""Rollouts with transformers ``generate``: the policy samples its own completions (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.data import video_inputs
from trainer.policy import vision_token_ids
from trainer.rollout.base import (
    Completion,
    RolloutRequest,
    check_sampling,
    per_request_seeds,
    stop_token_ids,
)


class HFRolloutEngine:
    """Samples G completions per request with ``model.generate``.

    Vision placeholder ids are suppressed (a random or young policy samples them, and a
    completion holding ``<|video_pad|>`` breaks the training forward). Generation stops
    at <|im_end|> or <|endoftext|>. Requests are generated one at a time (each has its
    own video); the G samples of a request share one prefill and one video encoding.

    ``synced_gpus``: keep stepping until every rank has finished (needed when the model
    is sharded with FSDP2, whose forward passes are collective). ``device``: where inputs
    go (default: the parameters' device).
    """

    def __init__(
        self,
        model,
        processor,
        suppress_token_ids: list[int] | None = None,
        synced_gpus: bool = False,
        device: str | None = None,
    ):
        self.model = model
        self.synced_gpus = synced_gpus
        self.device = device
        self.processor = processor
        self.suppress_token_ids = (
            vision_token_ids(processor) if suppress_token_ids is None else list(suppress_token_ids)
        )
        tok = processor.tokenizer
        self.stop_ids = stop_token_ids(tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[-1]

    @property
    def needs_weights(self) -> bool:
        """Never: generation runs on the policy's own weights."""
        return False

    def _generation_config(self, g: int, max_new_tokens: int, temperature: float, top_p: float):
        from transformers import GenerationConfig

        # Every sampling knob is set explicitly: unset ones would be filled from the
        # checkpoint's generation_config.json (Qwen2.5-VL ships top_k=1, repetition_penalty=1.05).
        sampling = temperature > 0
        return GenerationConfig(
            do_sample=sampling,
            temperature=temperature if sampling else 1.0,
            top_p=top_p if sampling else 1.0,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            num_return_sequences=g if sampling else 1,  # greedy: one path, copied G times
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            suppress_tokens=self.suppress_token_ids or None,
            output_logits=True,
            return_dict_in_generate=True,
        )

    @torch.no_grad()
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
        check_sampling(num_generations, max_new_tokens, temperature, top_p)
        seeds = per_request_seeds(seed, len(requests))
        device = torch.device(self.device or next(self.model.parameters()).device)
        config = self._generation_config(num_generations, max_new_tokens, temperature, top_p)
        was_training = self.model.training
        self.model.eval()
        try:
            results = []
            for r, req in enumerate(requests):
                inputs = video_inputs(self.processor, req.prompt, req.frames, req.fps).to(device)
                devices = [device] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, enabled=seeds[r] is not None):
                    if seeds[r] is not None:
                        torch.manual_seed(seeds[r])
                    out = self.model.generate(
                        **inputs, generation_config=config, synced_gpus=self.synced_gpus
                    )
                prompt_len = inputs["input_ids"].shape[1]
                comps = self._completions(r, out, prompt_len, temperature)
                results.append(comps * (num_generations // len(comps)))
            return results
        finally:
            self.model.train(was_training)

    def _completions(self, r: int, out, prompt_len: int, temperature: float) -> list[Completion]:
        new = out.sequences[:, prompt_len:]  # (G, steps)
        logits = torch.stack(out.logits, dim=1).float()  # (G, steps, V) raw, before any processor
        if temperature > 0:
            logits = logits / temperature  # the distribution sampled from (top-p aside)
        token_lp = logits.log_softmax(-1).gather(-1, new[..., None])[..., 0]  # (G, steps)
        comps = []
        for g in range(new.shape[0]):
            ids = new[g].tolist()
            stop = next((k for k, t in enumerate(ids) if t in self.stop_ids), None)
            end = len(ids) if stop is None else stop + 1
            ids = ids[:end]
            comps.append(
                Completion(
                    request_index=r,
                    token_ids=ids,
                    text=self.processor.tokenizer.decode(ids, skip_special_tokens=True),
                    logprobs=token_lp[g, :end].tolist(),
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return comps

    def sync_weights(self, model) -> None:
        """No-op when ``model`` is the generating model; otherwise switch to it."""
        self.model = model

    def sleep(self) -> None:
        """Nothing to free: the policy itself generates."""

    def wake_up(self) -> None:
        """Nothing to restore."""
