"""GRPO math: group-relative advantages, per-token log-probs, the clipped loss, TIS weights.

Shapes: B prompts, G generations each, N = B·G completions, L completion tokens
(right-padded; ``mask`` marks real tokens), V vocabulary size.

Normalisations follow TRL's GRPO trainer (``loss_type``):
- ``"grpo"``: mean over each sequence's tokens, then mean over sequences (length-biased);
- ``"dapo"``: sum over all tokens / number of tokens;
- ``"dr_grpo"``: sum over all tokens / (N · max_completion_length), a constant.
With gradient accumulation or several ranks, pass the whole step's counts of what is in the
loss (``num_tokens`` for ``dapo``, ``num_sequences`` for ``grpo``/``dr_grpo``): the losses of
the pieces then add up to the loss of the whole batch, so accumulation is exact.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def group_advantages(
    rewards: torch.Tensor, num_generations: int, *, scale_std: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage of each completion against its group: (r - mean_g) [/ (std_g + eps)].

    ``rewards`` (B·G,) are grouped as consecutive runs of ``num_generations``. The std is
    the unbiased one (Bessel), as ``torch.std`` and TRL use. ``scale_std=False`` is
    Dr. GRPO (no division by the std). Zero-variance groups get exactly 0 advantage.

    Returns:
        advantages (B·G,) float32, zero_variance (B,) bool.
    """
    r = torch.as_tensor(rewards).detach().float().reshape(-1)  # (B*G,)
    G = int(num_generations)
    if G < 2:
        raise ValueError(
            f"num_generations={num_generations}: group advantages need at least 2 per group"
        )
    if r.numel() % G:
        raise ValueError(f"{r.numel()} rewards do not split into groups of num_generations={G}")
    if not torch.isfinite(r).all():
        raise ValueError(f"rewards must be finite, got {r.tolist()}")
    grouped = r.view(-1, G)  # (B, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (B, 1)
    std = grouped.std(dim=1, keepdim=True)  # (B, 1), unbiased
    zero_var = (grouped.max(dim=1).values - grouped.min(dim=1).values) == 0  # (B,)
    adv = grouped - mean  # (B, G)
    if scale_std:
        adv = adv / (std + eps)
    adv = torch.where(zero_var[:, None], torch.zeros_like(adv), adv)
    return adv.reshape(-1), zero_var


def truncated_is_weights(
    logp_train: torch.Tensor,
    logp_rollout: torch.Tensor,
    cap: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Truncated importance sampling weights min(π_train / π_rollout, cap) per token.

    Corrects for the mismatch between the engine that sampled (vLLM) and the training
    forward pass: (N, L), (N, L) -> (N, L), detached. Padding (``mask`` 0) gets 1.
    """
    if not cap > 0:
        raise ValueError(f"truncated importance sampling cap must be > 0, got {cap}")
    if logp_train.shape != logp_rollout.shape:
        raise ValueError(
            f"logp_train {tuple(logp_train.shape)} vs logp_rollout {tuple(logp_rollout.shape)}"
        )
    w = torch.exp(logp_train.detach().float() - logp_rollout.detach().float()).clamp(
        max=cap
    )  # (N, L)
    w = torch.nan_to_num(w, nan=0.0)  # inf - inf: count nothing rather than poison the batch
    if mask is not None:
        w = torch.where(mask.bool(), w, torch.ones_like(w))
    return w


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((x * mask).sum() / n) if n > 0 else 0.0


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    importance_weights: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped token-level policy loss (+ β·KL), normalised as ``loss_type`` says.

    Per token: ratio ρ = exp(logp - old_logp), loss = -min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A),
    times ``importance_weights`` (truncated IS, detached) if given, plus β·KL with the
    k3 estimator KL = exp(ref - logp) - (ref - logp) - 1.

    Args:
        logp: (N, L) log-probs of the sampled tokens under the current policy (grad).
        old_logp: (N, L) under the policy that produced the rollouts; ``None`` means the
            same as ``logp`` (one update per rollout batch: ρ = 1, gradient unchanged).
        advantages: (N,) per completion.
        mask: (N, L) 1 for completion tokens, 0 for padding.
        num_tokens: ``dapo`` normaliser (defaults to ``mask.sum()``).
        num_sequences: ``grpo``/``dr_grpo`` number of completions (defaults to N).

    Returns:
        loss (scalar) and stats: ``clip_low`` (fraction of tokens with ρ < 1-ε_low and
        A < 0), ``clip_high`` (ρ > 1+ε_high and A > 0), ``ratio_mean``, ``kl`` (when
        ``ref_logp`` is given), all token-averaged over the mask.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {LOSS_TYPES}")
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} must both be (N, L)"
        )
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp (reference-model log-probs)")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError(
            "loss_type='dr_grpo' needs max_completion_length (the constant normaliser)"
        )
    mask = mask.to(logp.dtype)  # (N, L)
    old = logp.detach() if old_logp is None else old_logp.detach()  # (N, L)
    adv = advantages.detach().to(logp.dtype).reshape(-1, 1)  # (N, 1)
    if adv.shape[0] != logp.shape[0]:
        raise ValueError(f"{adv.shape[0]} advantages for {logp.shape[0]} completions")

    ratio = torch.exp(logp - old)  # (N, L)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)  # (N, L)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (N, L)
    if importance_weights is not None:
        per_token = per_token * importance_weights.detach().to(logp.dtype)
    kl = None
    if ref_logp is not None:
        delta = ref_logp.detach() - logp  # (N, L)
        kl = torch.exp(delta) - delta - 1  # (N, L), k3 >= 0
        if beta != 0.0:
            per_token = per_token + beta * kl

    seqs = logp.shape[0] if num_sequences is None else max(float(num_sequences), 1.0)
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N,)
        loss = per_seq.sum() / max(seqs, 1)
    elif loss_type == "dapo":
        denom = mask.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
        loss = (per_token * mask).sum() / denom
    else:  # dr_grpo
        loss = (per_token * mask).sum() / (seqs * max_completion_length)

    with torch.no_grad():
        stats = {
            "clip_low": _masked_mean(((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype), mask),
            "clip_high": _masked_mean(
                ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype), mask
            ),
            "ratio_mean": _masked_mean(ratio, mask),
        }
        if kl is not None:
            stats["kl"] = _masked_mean(kl, mask)
    return loss, stats
