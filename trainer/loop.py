"""The two halves of a GRPO step: collect a round of rollouts, optimise on it.

:func:`collect_round` turns this rank's prompts into :class:`RolloutBatch` records
(rollouts, rewards, group advantages); :func:`optimise` takes one optimiser step on them.
Both take the :class:`trainer.train.Run` built by :func:`trainer.train.setup_run`; the
distributed parts are calls into :mod:`trainer.distributed`.

Which completions are in the loss: all of them, except that with
``skip_zero_variance_groups`` and ``beta == 0`` a group whose rewards are all equal
(advantage 0, nothing to learn) is left out. With ``beta > 0`` such groups stay in for their
KL term (as TRL does). The loss normalisers (tokens for ``dapo``, completions for ``grpo`` and
``dr_grpo``) count exactly the completions in the loss over every micro-batch and rank, so
the step equals one taken on the whole global batch at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.checkpoint import TrainState
from trainer.distributed import average_gradients, clip_grad_norm, sum_over_ranks


class PromptSampler:
    """Epoch-wise shuffled order over the dataset, resumable from (epoch, position).

    Every rank draws the same global order; :meth:`take` hands rank ``r`` of ``W`` the
    ``r``-th of ``W`` consecutive slices, so the ranks' prompts are disjoint.
    """

    def __init__(self, size: int, seed: int, state: TrainState):
        if size == 0:
            raise ValueError("the training shards hold no matched queries: check the manifest")
        self.size, self.seed, self.state = size, seed, state

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.size)

    def take(self, n: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """``n`` dataset indices for ``rank`` (``n * world_size`` drawn in all)."""
        out = []
        order = self._order(self.state.epoch)
        while len(out) < n * world_size:
            if self.state.position >= self.size:
                self.state.epoch += 1
                self.state.position = 0
                order = self._order(self.state.epoch)
            out.append(int(order[self.state.position]))
            self.state.position += 1
        return out[rank * n : (rank + 1) * n]


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts on one rank, ready for the loss.

    B = ``per_step_prompts`` prompts, G = ``num_generations``; N rows = B·G, or fewer when
    rows outside the loss were dropped (one process and DDP drop them; FSDP2 keeps them,
    with ``in_loss`` 0, so that every rank runs the same forward passes); L = the longest
    completion in tokens (at most ``max_new_tokens``).

    Attributes:
        prompts: N chat-templated texts, each with one unexpanded video placeholder.
        videos: N (frames (T, H, W, 3) uint8, fps); rows of one prompt share one array.
        completion_ids: N token-id lists (ragged, lengths <= L).
        advantages: (N,) float32, group-relative.
        in_loss: (N,) float32, 1 for rows whose tokens count in the loss, else 0.
        rollout_logp: N lists of the engine's per-token log-probs (or None).
        old_logp: (N, L) float32 log-probs under the weights that sampled; set by the
            first :func:`optimise` pass on this batch.
    """

    prompts: list[str]
    videos: list[tuple[np.ndarray, float]]
    completion_ids: list[list[int]]
    advantages: torch.Tensor
    in_loss: torch.Tensor
    rollout_logp: list[list[float] | None]
    old_logp: torch.Tensor | None = None


@dataclass
class Round:
    """A generation round: this rank's micro-batches and the global loss normalisers."""

    batches: list[RolloutBatch]
    stats: dict[str, list[float]]  # this rank's values, reduced over ranks when logged
    times: dict[str, float]
    num_tokens: float = 0.0  # completion tokens in the loss, all ranks and micro-batches
    num_sequences: float = 0.0  # completions in the loss, all ranks and micro-batches
    prompt_ids: list[int] = field(default_factory=list)  # dataset indices this rank drew


def _add(stats: dict, key: str, values) -> None:
    stats.setdefault(key, []).extend(float(v) for v in np.atleast_1d(values))


def make_batch(run, requests, completions, rewards, components, stats) -> RolloutBatch:
    """The rollout batch of one micro-batch: G ``completions`` per request (request-major)
    with their ``rewards`` (B*G,); reward terms and group statistics go to ``stats``."""
    from trainer.grpo import group_advantages

    cfg, G = run.cfg, run.cfg.num_generations
    r = torch.as_tensor(rewards, dtype=torch.float32)  # (B*G,)
    advantages, zero_var = group_advantages(r, G, scale_std=cfg.scale_rewards)
    in_loss = torch.ones(len(completions))
    if cfg.skip_zero_variance_groups and cfg.beta == 0:
        in_loss = (~zero_var).repeat_interleave(G).float()
    for k, v in components.items():
        _add(stats, f"reward/{k}", v)
    _add(stats, "reward/total", rewards)
    _add(stats, "zero_variance_groups", zero_var.float().mean())
    _add(stats, "completion_length", [len(c.token_ids) for c in completions])
    rows = range(len(completions))
    if run.dist.strategy != "fsdp2":  # leave out what adds nothing; FSDP2 needs equal passes
        rows = [i for i in rows if in_loss[i] > 0]
    return RolloutBatch(
        prompts=[requests[i // G].prompt for i in rows],
        videos=[(requests[i // G].frames, requests[i // G].fps) for i in rows],
        completion_ids=[completions[i].token_ids for i in rows],
        advantages=advantages[list(rows)],
        in_loss=in_loss[list(rows)],
        rollout_logp=[completions[i].logprobs for i in rows],
    )


def collect_round(run) -> Round:
    """Rollouts and rewards for ``gradient_accumulation_steps`` micro-batches of this rank's
    prompts; each request gets its own seed stream over (seed, step, micro-batch, rank, request)."""
    from trainer.rollout import build_requests, request_seeds

    cfg, dist, G = run.cfg, run.dist, run.cfg.num_generations
    rnd = Round([], {}, {"rollout": 0.0, "reward": 0.0})
    # no wake_up() here: a push wakes the engine in stages (weights first, then the KV
    # cache), and generate() wakes it when nothing is pushed
    if run.weights_changed or run.engine.needs_weights:
        run.engine.sync_weights(run.model)
        run.weights_changed = False
    run.model.eval()
    for m in range(cfg.gradient_accumulation_steps):
        ids = run.sampler.take(cfg.per_step_prompts, dist.rank, dist.world_size)
        rnd.prompt_ids.extend(ids)
        samples = [run.dataset[i] for i in ids]
        requests = build_requests(samples, run.processor, cfg.template)
        seeds = request_seeds(cfg.seed, run.state.step, m, dist.rank, n=len(requests))
        t0 = time.perf_counter()
        with run.compute():
            groups = run.engine.generate(requests, num_generations=G,
                                         max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature, top_p=cfg.top_p,
                                         seed=seeds)  # fmt: skip
        t1 = time.perf_counter()
        completions = [c for group in groups for c in group]  # (B*G,)
        rewards, components = run.reward_fn(
            [c.text for c in completions],
            [s.video for s in samples for _ in range(G)],
            [s.query for s in samples for _ in range(G)],
        )
        rnd.batches.append(make_batch(run, requests, completions, rewards, components, rnd.stats))
        rnd.times["rollout"] += t1 - t0
        rnd.times["reward"] += time.perf_counter() - t1
    run.engine.sleep()
    return count_loss_terms(rnd, dist)


def count_loss_terms(rnd: Round, dist) -> Round:
    """Fill the round's loss normalisers: tokens and completions in the loss, summed over
    micro-batches and ranks (collective)."""
    tokens = sum(len(c) * float(w) for b in rnd.batches
                 for c, w in zip(b.completion_ids, b.in_loss))  # fmt: skip
    rows = sum(float(b.in_loss.sum()) for b in rnd.batches)
    rnd.num_tokens, rnd.num_sequences = sum_over_ranks([tokens, rows], dist)
    rnd.times["tokens"] = float(sum(len(c) for b in rnd.batches for c in b.completion_ids))
    return rnd


def _pad(rows: list[list[float]], shape: tuple[int, int], device) -> torch.Tensor:
    """Right-pad ragged per-token values to ``shape`` (N, L) with zeros."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        n = min(len(row), shape[1])
        out[i, :n] = torch.as_tensor(row[:n], dtype=torch.float32)
    return out


def _reference_logprobs(run, b: RolloutBatch) -> torch.Tensor | None:
    """Log-probs under the reference: the frozen copy, or the policy with its LoRA
    adapter disabled; None when ``beta == 0``."""
    from trainer.policy import completion_logprobs

    if run.cfg.beta == 0:
        return None
    args = (run.processor, b.prompts, b.videos, b.completion_ids)
    kw = {"temperature": run.cfg.temperature, "device": run.dist.device}
    with torch.no_grad(), run.compute():
        if run.ref_model is not None:
            return completion_logprobs(run.ref_model, *args, **kw)[0]
        with run.model.disable_adapter():
            return completion_logprobs(run.model, *args, **kw)[0]


def _batch_loss(run, rnd: Round, b: RolloutBatch) -> tuple[torch.Tensor, dict]:
    from trainer.grpo import grpo_loss, truncated_is_weights
    from trainer.policy import completion_logprobs

    cfg = run.cfg
    with run.compute():
        logp, mask = completion_logprobs(run.model, run.processor, b.prompts, b.videos,
                                         b.completion_ids, temperature=cfg.temperature,
                                         device=run.dist.device)  # fmt: skip
    mask = mask * b.in_loss.to(mask.device)[:, None]  # (N, L): only rows in the loss
    if b.old_logp is None:
        b.old_logp = logp.detach()  # the weights that sampled = these, before any update
    is_weights = None
    if cfg.rollout == "vllm" and cfg.vllm_tis_cap and None not in b.rollout_logp:
        # vLLM's sampler and the trainer's forward differ slightly: correct for it
        rollout_logp = _pad(b.rollout_logp, logp.shape, logp.device)  # (N, L)
        is_weights = truncated_is_weights(b.old_logp, rollout_logp, cfg.vllm_tis_cap, mask)
    return grpo_loss(
        logp, b.old_logp, b.advantages.to(logp.device), mask,
        epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
        ref_logp=_reference_logprobs(run, b), loss_type=cfg.loss_type,
        max_completion_length=cfg.max_new_tokens, importance_weights=is_weights,
        num_tokens=rnd.num_tokens, num_sequences=rnd.num_sequences,
    )  # fmt: skip


def optimise(run, rnd: Round) -> dict[str, list[float]]:
    """One optimiser step on a round's batches; returns this rank's loss statistics.

    Each rank's loss is scaled by the number of ranks because the gradients are averaged
    over ranks (DDP all-reduce, FSDP2 reduce-scatter): the result is the gradient of the
    loss over the global batch. A round with nothing in the loss on any rank takes no
    backward pass and no optimiser step, so every weight stays as it is under any strategy
    (DDP's zero-filled gradients would still let AdamW's momentum and decay move them).
    """
    stats: dict[str, list[float]] = {}
    run.model.train()
    t0 = time.perf_counter()
    total = 0.0
    for b in rnd.batches if rnd.num_sequences > 0 else []:
        if not b.completion_ids:
            continue
        loss, lstats = _batch_loss(run, rnd, b)
        (loss * run.dist.world_size).backward()
        total += float(loss.detach())
        for k, v in lstats.items():
            _add(stats, k, v)
    _add(stats, "loss", total * run.dist.world_size)  # averaged over ranks: the global loss
    grad_norm = 0.0
    if rnd.num_sequences > 0:  # global, so every rank takes the same branch
        average_gradients(run.params, run.dist)
        grad_norm = clip_grad_norm(run.params, run.cfg.max_grad_norm)
        run.optimizer.step()  # nothing in the loss: no step (AdamW's momentum would move weights)
        run.scheduler.step()  # as transformers' Trainer: the schedule follows the steps taken
        run.weights_changed = True
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    _add(stats, "grad_norm", grad_norm)
    _add(stats, "time/forward_backward_s", time.perf_counter() - t0)
    return stats
