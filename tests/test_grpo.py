"""GRPO math with expected numbers worked out by hand (in the style of torchtune's loss tests)."""

import math

import pytest
import torch

from trainer.grpo import LOSS_TYPES, group_advantages, grpo_loss, truncated_is_weights

LN = math.log


# ------------------------------------------------------------------------- advantages


def test_group_advantages_hand_computed():
    # group 1: [1, 0, 0, 0] -> mean 0.25, deviations [.75, -.25, -.25, -.25],
    #   unbiased var = (.5625 + 3 * .0625) / 3 = .25 -> std .5, A = dev / (.5 + 1e-4)
    # group 2: [1, 1, 1, 1] -> zero variance -> A = 0
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1])
    adv, zero = group_advantages(rewards, 4)
    d = 0.5 + 1e-4
    assert adv.tolist() == pytest.approx([0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d, 0, 0, 0, 0])
    assert zero.tolist() == [False, True]
    # Dr. GRPO: no division by the std
    adv, _ = group_advantages(rewards, 4, scale_std=False)
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_group_advantages_two_generations_and_constant_groups():
    # [3, 1]: mean 2, deviations ±1, unbiased std sqrt(2) -> ±1 / (1.41421 + 1e-4)
    adv, zero = group_advantages(torch.tensor([3.0, 1.0, 0.3, 0.3]), 2)
    s = math.sqrt(2) + 1e-4
    assert adv.tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0])
    assert adv[2:].tolist() == [0.0, 0.0]  # exactly 0, not (0.3 - 0.3000001) / 1e-4
    assert zero.tolist() == [False, True]


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="groups of num_generations=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)


# ----------------------------------------------------------------------------- loss


def test_on_policy_loss_normalisations():
    # ratio = 1 everywhere. A = [1, -0.5]; mask row 0 has 2 tokens, row 1 has 1 token.
    # per-token loss = -A: row 0 -> [-1, -1], row 1 -> [0.5]; the padded entries hold junk.
    logp = torch.tensor([[-1.0, -2.0, 50.0], [-0.5, 50.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -0.5])
    # dapo: (-1 - 1 + 0.5) / 3 tokens = -0.5
    loss, stats = grpo_loss(logp, None, adv, mask, loss_type="dapo")
    assert loss.item() == pytest.approx(-0.5)
    assert (
        stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_low"] == stats["clip_high"] == 0.0
    )
    loss.backward()  # d/dlogp of -A·ratio = -A / 3 on real tokens, 0 on padding
    assert logp.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, 0, 1 / 6, 0, 0])
    # grpo: mean over sequences of per-sequence means: (-1 + 0.5) / 2 = -0.25
    assert grpo_loss(logp, None, adv, mask, loss_type="grpo")[0].item() == pytest.approx(-0.25)
    # dr_grpo: sum / (N · max_completion_length) = -1.5 / (2 · 4) = -0.1875
    loss = grpo_loss(logp, None, adv, mask, loss_type="dr_grpo", max_completion_length=4)[0]
    assert loss.item() == pytest.approx(-0.1875)
    # dapo over a larger accumulated step: -1.5 / 10 tokens
    assert grpo_loss(logp, None, adv, mask, num_tokens=10)[0].item() == pytest.approx(-0.15)


def test_ratio_clipping_on_both_sides():
    # old logp 0; ratios: row 0 (A = +1) [1.5, 0.5]; row 1 (A = -1) [0.5, 1.5]; eps 0.2
    #   (0,0) A>0, ρ 1.5 > 1.2: min(1.5, 1.2) = 1.2 -> loss -1.2, clipped (no gradient)
    #   (0,1) A>0, ρ 0.5:       min(0.5, 0.8) = 0.5 -> loss -0.5, gradient flows
    #   (1,0) A<0, ρ 0.5 < 0.8: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped
    #   (1,1) A<0, ρ 1.5:       min(-1.5, -1.2) = -1.5 -> loss 1.5, gradient flows (pessimistic)
    # dapo: (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15
    logp = torch.tensor([[LN(1.5), LN(0.5)], [LN(0.5), LN(1.5)]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logp, old, adv, torch.ones(2, 2))
    assert loss.item() == pytest.approx(0.15)
    assert stats == pytest.approx({"clip_low": 0.25, "clip_high": 0.25, "ratio_mean": 1.0})
    loss.backward()  # unclipped tokens: d(-A·ρ)/dlogp = -A·ρ, over 4 tokens
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 4, 0.0, 1.5 / 4])
    # grpo gives the same here (equal lengths): row means (-1.7/2 + 2.3/2) / 2 = 0.15
    assert grpo_loss(logp, old, adv, torch.ones(2, 2), loss_type="grpo")[0].item() == pytest.approx(
        0.15
    )


def test_asymmetric_clip_range():
    # ρ = 1.25 with A = 1: clipped by epsilon_high 0.2 (loss -1.2), not by 0.28 (loss -1.25)
    logp, old, adv, mask = (
        torch.tensor([[LN(1.25)]]),
        torch.zeros(1, 1),
        torch.tensor([1.0]),
        torch.ones(1, 1),
    )
    assert grpo_loss(logp, old, adv, mask, epsilon_high=0.2)[0].item() == pytest.approx(-1.2)
    loss, stats = grpo_loss(logp, old, adv, mask, epsilon_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and stats["clip_high"] == 0.0


def test_kl_k3_term():
    # ref - logp = ln 2: k3 = 2 - ln 2 - 1 = 0.30685; ref - logp = -ln 2: 0.5 + ln 2 - 1 = 0.19315
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[LN(2), -LN(2)]])
    k = [1 - LN(2), LN(2) - 0.5]
    loss, stats = grpo_loss(logp, None, torch.zeros(1), torch.ones(1, 2), beta=0.1, ref_logp=ref)
    assert stats["kl"] == pytest.approx(sum(k) / 2)
    assert loss.item() == pytest.approx(
        0.1 * sum(k) / 2
    )  # A = 0: only β·KL, dapo mean over 2 tokens
    loss.backward()  # d k3 / d logp = 1 - exp(ref - logp): [1 - 2, 1 - 0.5] · 0.1 / 2
    assert logp.grad.tolist()[0] == pytest.approx([-0.05, 0.025])
    # KL is logged without entering the loss when beta = 0
    loss, stats = grpo_loss(logp, None, torch.zeros(1), torch.ones(1, 2), ref_logp=ref)
    assert loss.item() == 0.0 and stats["kl"] == pytest.approx(sum(k) / 2)


def test_importance_weights_scale_token_losses():
    # on-policy, A = 1: per-token loss -1 times weights [2, 0.5] -> dapo (-2 - 0.5) / 2 = -1.25
    w = torch.tensor([[2.0, 0.5]])
    loss, _ = grpo_loss(
        torch.zeros(1, 2), None, torch.tensor([1.0]), torch.ones(1, 2), importance_weights=w
    )
    assert loss.item() == pytest.approx(-1.25)


def test_loss_rejects_bad_arguments():
    x, m, a = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1)
    with pytest.raises(ValueError, match=r"beta=0\.1 needs ref_logp"):
        grpo_loss(x, None, a, m, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(x, None, a, m, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        grpo_loss(x, None, a, m, loss_type="ppo")
    with pytest.raises(ValueError, match="2 advantages for 1"):
        grpo_loss(x, None, torch.zeros(2), m)


# ---------------------------------------------------------------------- TIS weights


def test_truncated_is_weights():
    # ratios exp(ln 3 - 0) = 3 -> capped at 2; exp(ln .5) = .5; padded position -> 1
    train = torch.tensor([[LN(3), LN(0.5), 7.0]], requires_grad=True)
    rollout = torch.zeros(1, 3)
    w = truncated_is_weights(train, rollout, cap=2.0, mask=torch.tensor([[1, 1, 0]]))
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 1.0])
    assert not w.requires_grad
    # a -inf rollout log-prob (a token vLLM deemed impossible) is capped, -inf vs -inf counts 0
    inf = float("inf")
    w = truncated_is_weights(torch.tensor([[0.0, -inf]]), torch.tensor([[-inf, -inf]]), cap=2.0)
    assert w.tolist()[0] == [2.0, 0.0]
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(rollout, rollout, cap=0)


# ------------------------------------------------------------- accumulation and seeds


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_pieces_with_global_counts_add_up_to_the_whole_batch(loss_type):
    """Micro-batches (or ranks) that pass the whole step's counts of what is in the loss
    give losses whose sum has the gradient of the loss over the whole batch."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)  # stands in for the policy
    logp = torch.log_softmax(logits, -1)  # (6, 5)
    old = logp.detach() + 0.05 * torch.randn(6, 5)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])
    mask = torch.ones(6, 5)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    mask[5] = 0  # a row outside the loss (a skipped zero-variance group)
    kw = {"loss_type": loss_type, "max_completion_length": 5}
    n_tok, n_seq = float(mask.sum()), 5.0
    whole, _ = grpo_loss(logp, old, adv, mask, num_tokens=n_tok, num_sequences=n_seq, **kw)
    (g_whole,) = torch.autograd.grad(whole, logits, retain_graph=True)
    parts = sum(
        grpo_loss(logp[s], old[s], adv[s], mask[s], num_tokens=n_tok, num_sequences=n_seq, **kw)[0]
        for s in (slice(0, 2), slice(2, 6))
    )
    (g_parts,) = torch.autograd.grad(parts, logits)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(g_parts, g_whole)
    if loss_type == "grpo":  # the mean over the 5 completions in the loss, not over 6 rows
        per_seq = [(-(adv[i]) * mask[i]).sum() / mask[i].sum() for i in range(5)]
        ratio_one, _ = grpo_loss(logp, logp.detach(), adv, mask, num_sequences=n_seq, **kw)
        assert float(ratio_one.detach()) == pytest.approx(float(sum(per_seq) / 5), rel=1e-5)


def test_request_seeds_give_every_request_its_own_stream():
    from trainer.rollout import per_request_seeds, request_seeds

    seeds = {
        (step, micro, rank, r): s
        for step in range(3)
        for micro in range(2)
        for rank in range(2)
        for r, s in enumerate(request_seeds(42, step, micro, rank, n=3))
    }
    assert len(set(seeds.values())) == len(seeds) == 36  # no two requests share a seed
    assert seeds[(0, 0, 0, 1)] != seeds[(1, 0, 0, 0)]  # step s request r+1 != step s+1 request r
    assert seeds[(0, 0, 0, 0)] != seeds[(0, 1, 0, 0)]  # micro-batches 0 and 1 differ
    assert request_seeds(42, 1, 0, 0, n=3) == request_seeds(42, 1, 0, 0, n=3)  # reproducible
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert per_request_seeds(7, 2) == request_seeds(7, n=2)
    assert per_request_seeds([5, 6], 2) == [5, 6] and per_request_seeds(None, 2) == [None, None]
    with pytest.raises(ValueError, match="3 seeds for 2 requests"):
        per_request_seeds([1, 2, 3], 2)
