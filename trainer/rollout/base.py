"""The rollout interface: requests in, G completions per request out, behind one protocol.

Two engines implement it: :class:`trainer.rollout.hf.HFRolloutEngine` (transformers
``generate``; CPU or GPU, the policy generates itself) and
:class:`trainer.rollout.vllm.VLLMRolloutEngine` (vLLM on GPU, weights pushed after
each optimiser step).

``Completion.logprobs`` are the log-probs of the sampled tokens under the engine's
model at the sampling temperature (logits / T): the quantity
:func:`trainer.policy.completion_logprobs` computes with ``temperature=T``, so the two can
be compared for truncated importance sampling. The HF engine applies no top-p and no token
ban to them; vLLM's processed log-probs come after its vision-token ban (negligible: those
tokens are never sampled) and after top-p, which is why the config refuses top_p < 1
together with truncated importance sampling.

Seeds: ``generate(..., seed=...)`` takes one int per request (see :func:`request_seeds`,
which gives every request of every micro-batch, step and rank its own stream) or a single
int from which each request's seed is derived the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from trainer.data import check_video_prompt
from trainer.prompt import STOP_TOKENS, build_messages, render_prompt

FINISH_REASONS = ("stop", "length")


def stop_token_ids(tokenizer) -> list[int]:
    """Ids of :data:`trainer.prompt.STOP_TOKENS`: a completion ends at the first of them."""
    return [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt to complete.

    Attributes:
        prompt: chat-templated text holding exactly one unexpanded
            ``<|vision_start|><|video_pad|><|vision_end|>``.
        frames: (T, H, W, 3) uint8 RGB, already fitted to the pixel budget (H, W multiples of 28).
        fps: rate of ``frames`` (sets the model's temporal positions).
    """

    prompt: str
    frames: np.ndarray
    fps: float

    def __post_init__(self):
        check_video_prompt(self.prompt)
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    Attributes:
        request_index: index of its request in the ``generate`` call.
        token_ids: sampled ids, ending with the stop token (<|im_end|> or <|endoftext|>)
            when ``finish_reason == "stop"``.
        text: decoded ``token_ids`` without special tokens.
        logprobs: one float per token id (see the module docstring), or None.
        finish_reason: "stop" (a stop token was sampled) or "length" (max_new_tokens reached).
    """

    request_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    finish_reason: str

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}"
            )
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"{len(self.logprobs)} logprobs for {len(self.token_ids)} tokens")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generator."""

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
        """Outer list: one entry per request, in order; inner: its ``num_generations`` completions.

        ``seed``: one per request, or one int for all (see :func:`per_request_seeds`)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine generate with ``model``'s current weights."""
        ...

    @property
    def needs_weights(self) -> bool:
        """True when the engine holds no weights (e.g. dropped by a deep sleep): the trainer
        must call :meth:`sync_weights` before the next ``generate`` even if nothing changed."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory between rollouts (no-op where meaningless)."""
        ...

    def wake_up(self) -> None:
        """Undo :meth:`sleep`."""
        ...


def check_sampling(
    num_generations: int, max_new_tokens: int, temperature: float, top_p: float
) -> None:
    """The argument checks every engine's ``generate`` shares (messages state the values)."""
    if num_generations < 1 or max_new_tokens < 1:
        raise ValueError(
            f"num_generations={num_generations}, max_new_tokens={max_new_tokens} must be >= 1"
        )
    if not 0 < top_p <= 1 or temperature < 0:
        raise ValueError(f"need 0 < top_p <= 1 and temperature >= 0, got {top_p}, {temperature}")


def request_seeds(*key: int, n: int) -> list[int]:
    """``n`` independent 63-bit seeds for the requests of one call, from ``key`` (the
    trainer passes seed, step, micro-batch, rank) through ``numpy.random.SeedSequence``:
    different keys or request indices never share a stream."""
    if any(int(k) < 0 for k in key):
        raise ValueError(f"seed keys must be >= 0, got {key}")
    children = np.random.SeedSequence([int(k) for k in key]).spawn(n)
    return [int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for c in children]


def per_request_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    """The seed of each of ``n`` requests: ``None`` (unseeded), a list of ``n`` given
    seeds, or ``request_seeds(seed, n=n)`` for a single int."""
    if seed is None:
        return [None] * n
    if isinstance(seed, int | np.integer):
        return request_seeds(int(seed), n=n)
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} requests")
    return seeds


def build_requests(samples, processor, template: str = "json") -> list:
    """Rollout requests for :class:`trainer.data.GroundingSample` objects: the rendered chat
    prompt (one video placeholder) with the sample's frames and frame rate."""
    return [
        RolloutRequest(
            prompt=render_prompt(
                processor,
                build_messages(s.query.text, duration_s=s.duration_s, template=template, fps=s.fps),
            ),
            frames=s.frames,
            fps=s.fps,
        )
        for s in samples
    ]
