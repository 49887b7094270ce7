"""The GRPO loop: exact resume, and a learning signal on the tiny model."""

import json

import numpy as np
import pytest
import torch

from trainer.config import load_config
from trainer.train import train


def _cfg(mini_demo, out, **over):
    overrides = {
        "model": mini_demo["out"] / "train" / "cold_start",  # writes parsable answers
        "cold_start_steps": 0,
        "train_shards": mini_demo["data"] / "shards" / "synthetic" / "train",
        "output_dir": out,
        "num_generations": 4,
        "per_step_prompts": 2,
        "max_new_tokens": 48,  # the answer is ~41 tokens
        "report_to": "[jsonl]",
        **over,
    }
    return load_config("configs/tiny_synthetic.yaml", [f"{k}={v}" for k, v in overrides.items()])


def _weights(path):
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_resume_continues_exactly(mini_demo, tmp_path):
    """Run 3 steps with a checkpoint at step 2; resume from that checkpoint: step 3's
    metrics and the final weights equal those of the uninterrupted run."""
    # warm sampling, 8 per group: the cold-started model has memorised the 4 training videos;
    # with 4 samples at temperature 1 a group is often all-correct (zero variance, no update)
    cfg = _cfg(
        mini_demo, tmp_path / "run", max_steps=3, save_steps=2, temperature=1.3, num_generations=8
    )
    final = train(cfg, progress=False)
    straight = _weights(final)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    step3 = json.loads(lines[2])
    # crash after step 2: only checkpoint-2 and the first two metric lines survive
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    train(cfg, resume="latest", progress=False)
    resumed = _weights(final)
    assert straight.keys() == resumed.keys()
    changed = 0
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6)
    again = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in again] == [1, 2, 3]
    for key in ("reward/total", "completion_length", "loss"):
        if key in step3:
            assert again[2][key] == pytest.approx(step3[key], abs=1e-6), key
    # and training did change the weights relative to the initial model
    assert min(m["zero_variance_groups"] for m in again) < 1.0, "no group had reward variance"
    initial = _weights(mini_demo["out"] / "train" / "cold_start")
    changed = sum(not torch.equal(initial[k], straight[k]) for k in straight if k in initial)
    assert changed > 0


def test_learning_signal_on_easy_reward(mini_demo):
    """Real rollouts, log-probs, advantages and loss; reward = share of completion tokens
    whose id is a multiple of 4. A correct update sign and scale raise it clearly."""
    from trainer.data import GroundingDataset
    from trainer.grpo import group_advantages, grpo_loss
    from trainer.policy import completion_logprobs, load_policy
    from trainer.rollout import build_requests, make_engine

    torch.manual_seed(0)
    model, processor = load_policy(str(mini_demo["data"] / "models" / "tiny-qwen2.5-vl"))
    ds = GroundingDataset(
        mini_demo["data"] / "shards" / "synthetic" / "train",
        max_frames=4,
        total_pixels=4 * 28 * 28 * 4,
    )
    requests = build_requests([ds[0], ds[1]], processor, "json")
    engine = make_engine("hf", model, processor)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    G, history = 8, []
    for step in range(25):
        groups = engine.generate(
            requests, num_generations=G, max_new_tokens=6, temperature=1.0, seed=step
        )
        comps = [c for g in groups for c in g]
        # ~1/4 of the vocabulary qualifies, so the start is ~0.25 and every group has variance
        rewards = torch.tensor(
            [np.mean([t % 4 == 0 for t in c.token_ids]) if c.token_ids else 0.0 for c in comps]
        )
        history.append(float(rewards.mean()))
        adv, _ = group_advantages(rewards, G)
        model.train()
        logp, mask = completion_logprobs(
            model,
            processor,
            [requests[i // G].prompt for i in range(len(comps))],
            [(requests[i // G].frames, requests[i // G].fps) for i in range(len(comps))],
            [c.token_ids for c in comps],
        )
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    early, late = np.mean(history[:3]), np.mean(history[-3:])
    assert late > early + 0.3, history
