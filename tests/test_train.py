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


def test_fp32_master_weights_move_at_lr_1e6_and_pure_bf16_does_not(tiny_dir):
    """bf16 compute over float32 master weights: one AdamW step at lr 1e-6 changes the
    weights. Pure bf16 (the opt-in option) loses nearly every such update to rounding."""
    from trainer.distributed import Dist, compute_context
    from trainer.policy import completion_logprobs, load_policy
    from trainer.train import precision

    frames = np.random.default_rng(0).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    prompt = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Which ID?"
              "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    results = {}
    for pure in (False, True):
        cfg = load_config(None, ["dtype=bfloat16", "device=cpu", f"pure_bf16={pure}"])
        if pure:
            with pytest.warns(UserWarning, match=r"pure_bf16.*rounds away"):
                compute, master = precision(cfg, "cpu")
        else:
            compute, master = precision(cfg, "cpu")
        assert compute == torch.bfloat16 and master == (torch.bfloat16 if pure else torch.float32)
        model, processor = load_policy(tiny_dir, dtype=master)
        before = {k: v.clone() for k, v in model.named_parameters()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        with compute_context(Dist(), compute, master):
            logp, mask = completion_logprobs(model, processor, [prompt] * 2, [(frames, 2.0)] * 2,
                                             [[11, 12, 13], [14, 15]])  # fmt: skip
        assert model.model.language_model.layers[0].mlp.up_proj.weight.dtype == master
        (-(logp * mask).sum()).backward()
        opt.step()
        changed = sum(int((p != before[k]).sum()) for k, p in model.named_parameters())
        results[pure] = changed / sum(p.numel() for p in model.parameters())
    assert results[False] > 0.5, results  # the step moved most weights
    assert results[True] < 0.05, results  # in bf16 almost all of it rounded away


def test_checkpoint_faults_through_train(mini_demo, tmp_path, monkeypatch, capsys):
    """A kill during a save, a truncated latest checkpoint, a fresh run into the folder:
    the fresh run is refused untouched; --resume cleans the partial save, names the broken
    checkpoint, falls back to the previous one and cuts metrics.jsonl back to it."""
    import trainer.checkpoint as ck

    class Killed(Exception):
        pass

    def die(*args):
        raise Killed

    real_save = ck.save_checkpoint

    def save_or_die(path, blob, model, opt, dist, cfg):
        if blob["step"] == 3:  # dies after the shards and trainer state, before the rename
            monkeypatch.setattr(type(cfg), "save_yaml", die)
        real_save(path, blob, model, opt, dist, cfg)

    monkeypatch.setattr(ck, "save_checkpoint", save_or_die)
    out = tmp_path / "run"
    cfg = _cfg(mini_demo, out, max_steps=3, save_steps=1, num_generations=2, max_new_tokens=8)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    monkeypatch.undo()
    assert (out / "checkpoint-3.tmp" / "trainer_state.pt").exists()
    metrics = (out / "metrics.jsonl").read_text()
    assert [json.loads(x)["step"] for x in metrics.splitlines()] == [1, 2, 3]

    with pytest.raises(SystemExit, match=r"--resume.*--overwrite"):
        train(cfg, progress=False)
    assert (out / "metrics.jsonl").read_text() == metrics  # refused before touching anything

    shard = out / "checkpoint-2" / "state" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    train(cfg, resume="latest", progress=False)
    err = capsys.readouterr().err
    assert "checkpoint-3.tmp" in err and not (out / "checkpoint-3.tmp").exists()
    assert "checkpoint-2" in err and "__0_0.distcp" in err and "falling back to" in err
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # rows 2 and 3 written again after resuming at step 1, once
    assert (out / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("strategy", ["none", "fsdp2"])
def test_zero_variance_groups_leave_the_loss_only_without_kl(beta, strategy):
    """Group 2 has equal rewards. With beta = 0 it is out of the loss (dropped, or kept
    with weight 0 under FSDP2 so every rank runs the same passes); with beta > 0 it stays
    in for its KL term. The normalisers count exactly the rows and tokens in the loss."""
    from types import SimpleNamespace

    from trainer.distributed import Dist
    from trainer.loop import Round, count_loss_terms, make_batch
    from trainer.rollout import Completion, RolloutRequest

    cfg = load_config(None, ["num_generations=2", f"beta={beta}"])
    run = SimpleNamespace(cfg=cfg, dist=Dist(strategy=strategy))
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>?<|im_end|>\n"
    reqs = [RolloutRequest(prompt, np.zeros((2, 28, 28, 3), np.uint8), 2.0) for _ in range(2)]
    comps = [Completion(i // 2, [1] * n, "", None, "stop") for i, n in enumerate((2, 3, 4, 5))]
    rnd = Round([], {}, {})
    batch = make_batch(run, reqs, comps, np.array([1.0, 0.0, 0.5, 0.5]), {}, rnd.stats)
    rnd.batches.append(batch)
    count_loss_terms(rnd, run.dist)
    kept = beta > 0
    rows = 4 if kept or strategy == "fsdp2" else 2
    assert len(batch.completion_ids) == len(batch.advantages) == rows
    assert batch.in_loss.tolist() == [1.0, 1.0, *([1.0, 1.0] if kept else [0.0, 0.0])[: rows - 2]]
    assert (rnd.num_sequences, rnd.num_tokens) == ((4, 14) if kept else (2, 5))
    assert rnd.stats["zero_variance_groups"] == [0.5]


def test_eval_steps_log_evaluation_metrics_next_to_training_metrics(mini_demo, tmp_path):
    """eval_steps=2 over 2 steps: trainer.evaluate scores the weights of step 2 on the
    validation shards; its overall metrics sit in step 2's row as eval/<name>."""
    eval_shards = mini_demo["data"] / "shards" / "synthetic" / "test"
    cfg = _cfg(mini_demo, tmp_path / "run", max_steps=2, eval_steps=2, eval_shards=eval_shards,
               num_generations=2, max_new_tokens=48)  # fmt: skip
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("eval/") for k in rows[0])
    scored = json.loads((tmp_path / "run" / "eval" / "step-2" / "metrics.json").read_text())
    evals = {k[5:]: v for k, v in rows[1].items() if k.startswith("eval/")}
    assert evals and evals == pytest.approx(
        {k: v for k, v in scored["overall"].items() if isinstance(v, int | float)}
    )
    assert {"m_tIoU", "m_vIoU", "n"} <= evals.keys() and evals["n"] > 0


def test_a_round_with_nothing_in_the_loss_moves_no_weight_under_ddp():
    """All groups skipped (equal rewards, beta = 0): no optimiser step, so AdamW's momentum
    and weight decay cannot move the weights through DDP's zero-filled gradients (a real
    one-rank gloo group runs the all-reduce); the step counter advances, the schedule
    follows the optimiser steps taken (as transformers' Trainer)."""
    import socket
    from types import SimpleNamespace

    import torch.distributed as td

    from trainer.checkpoint import TrainState
    from trainer.distributed import Dist
    from trainer.loop import Round, optimise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
        model(torch.ones(1, 4)).sum().backward()  # one real step: AdamW now has momentum
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        before = [p.detach().clone() for p in params]
        run = SimpleNamespace(cfg=load_config(None, ["num_generations=2"]), model=model,
                              dist=Dist(strategy="ddp"), params=params, optimizer=opt,
                              scheduler=sched, state=TrainState(), weights_changed=False)  # fmt: skip
        stats = optimise(run, Round([], {}, {}, num_tokens=0.0, num_sequences=0.0))
        assert all(torch.equal(a, b) for a, b in zip(before, params))
        assert run.state.step == 1 and not run.weights_changed and stats["grad_norm"] == [0.0]
        assert sched.last_epoch == 0  # no optimiser step, no schedule step
    finally:
        td.destroy_process_group()
