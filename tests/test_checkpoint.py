"""Checkpoints under faults: interrupted saves, truncated files, reused output folders.

The checkpoint functions run on a small torch model (the same code path as the policy:
``torch.distributed.checkpoint`` for weights and AdamW state, ``trainer_state.pt`` read
with ``weights_only=True``); one test drives the faults through ``trainer.train``.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from trainer import checkpoint as ck
from trainer.config import TrainConfig
from trainer.distributed import Dist

ONE = Dist()


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)  # frozen: left out of the checkpoint
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, opt


def _step(model, opt):
    model(torch.randn(3, 4)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def _save(out, step, model, opt):
    blob = {"step": step, "epoch": 0, "position": step, "scheduler": {"last_epoch": step}}
    ck.save_checkpoint(out / f"checkpoint-{step}", blob, model, opt, ONE, TrainConfig())


@pytest.fixture
def two_checkpoints(tmp_path):
    """checkpoint-1 and checkpoint-2 of a short run, and the weights at each."""
    model, opt = _model_and_optimizer()
    weights = {}
    for step in (1, 2):
        _step(model, opt)
        _save(tmp_path, step, model, opt)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return tmp_path, weights


def test_round_trip_restores_weights_optimiser_rng_and_loads_safely(tmp_path):
    model, opt = _model_and_optimizer()
    _step(model, opt)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _save(tmp_path, 1, model, opt)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    _step(model, opt)  # then the run moves on ...
    after_two = {k: v.clone() for k, v in model.state_dict().items()}
    # ... a new process loads the base weights (trainable ones set apart here) and resumes
    fresh, fresh_opt = _model_and_optimizer()
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.add_(1.0)
    blob = ck.load_checkpoint(tmp_path / "checkpoint-1", fresh, fresh_opt, ONE)
    assert (blob["step"], blob["position"], blob["world_size"]) == (1, 1, 1)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    _step(fresh, fresh_opt)  # the same second step (RNG restored, Adam moments restored)
    for k, v in after_two.items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
    # the trainer state holds tensors and plain numbers only: the safe loader reads it
    state = torch.load(tmp_path / "checkpoint-1" / "trainer_state.pt", weights_only=True)
    assert set(state) >= {"step", "epoch", "position", "scheduler", "rng", "world_size"}


def test_interrupted_save_is_ignored_and_cleaned(two_checkpoints, capsys):
    out, _ = two_checkpoints
    partial = out / "checkpoint-3.tmp"  # a kill during the save of step 3
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "__0_0.distcp").write_bytes(b"\0" * 10)
    assert [p.name for p in ck.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert ck.find_resumable(out, True)[0].name == "checkpoint-2"
    assert ck.clean_partial(out) == [partial] and not partial.exists()
    assert "checkpoint-3.tmp" in capsys.readouterr().err


@pytest.mark.parametrize("victim", ["trainer_state.pt", "state/__0_0.distcp"])
def test_truncated_latest_checkpoint_falls_back_to_the_previous(two_checkpoints, capsys, victim):
    out, weights = two_checkpoints
    path = out / "checkpoint-2" / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model, opt = _model_and_optimizer(seed=1)
    used, blob = ck.resume_from(ck.find_resumable(out, "latest"), model, opt, ONE)
    assert used.name == "checkpoint-1" and blob["step"] == 1
    err = capsys.readouterr().err
    assert "checkpoint-2" in err and victim in err and "falling back to" in err
    assert torch.equal(model.state_dict()["1.weight"], weights[1]["1.weight"])


def test_unreadable_trainer_state_is_named(two_checkpoints):
    out, _ = two_checkpoints
    ckpt = out / "checkpoint-2"
    # a pickle that is not plain tensors/numbers: the safe loader refuses to run it
    torch.save({"step": 2, "evil": TrainConfig}, ckpt / "trainer_state.pt")
    info = json.loads((ckpt / "checkpoint.json").read_text())
    info["files"]["trainer_state.pt"] = (ckpt / "trainer_state.pt").stat().st_size
    (ckpt / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(ck.CheckpointError, match=r"checkpoint-2/trainer_state\.pt cannot be read"):
        ck.verify(ckpt)
    model, opt = _model_and_optimizer()
    with pytest.raises(SystemExit, match="no usable checkpoint"):
        ck.resume_from([ckpt], model, opt, ONE)


def test_fresh_run_into_a_folder_with_checkpoints_refuses_unless_overwrite(two_checkpoints):
    out, _ = two_checkpoints
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit, match=r"--resume.*--overwrite"):
        ck.check_fresh_output(out, overwrite=False)
    assert (out / "metrics.jsonl").exists() and len(ck.list_checkpoints(out)) == 2  # untouched
    ck.check_fresh_output(out, overwrite=True, delete=False)  # another rank: checks only
    assert len(ck.list_checkpoints(out)) == 2
    ck.check_fresh_output(out, overwrite=True)
    assert not ck.list_checkpoints(out) and not (out / "metrics.jsonl").exists()


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6)))
    ck.cut_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_resume_with_another_number_of_ranks_is_refused(two_checkpoints):
    out, _ = two_checkpoints
    model, opt = _model_and_optimizer()
    with pytest.raises(SystemExit, match=r"written by 1 rank.*same number"):
        ck.load_checkpoint(out / "checkpoint-2", model, opt, Dist(world_size=2, strategy="ddp"))
