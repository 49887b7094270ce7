"""Process body for the multi-process tests (run by ``python`` or ``torchrun``).

    python tests/dist_worker.py step  CONFIG.json OUT_DIR   # one optimiser step on fixed rollouts
    python tests/dist_worker.py train CONFIG.json OUT_DIR [--resume] [--kill-in-save N]

``step`` builds a run with :func:`trainer.train.setup_run`, gives this rank its share of a
fixed global round of completions and rewards, takes one :func:`trainer.loop.optimise`
step and has rank 0 save the full weights to ``OUT_DIR/weights.pt``. ``train`` runs
:func:`trainer.train.train` and records, per rank, the dataset indices it drew into
``OUT_DIR/prompts-rank<r>.json`` (the test's own bookkeeping, outside the run folder),
with a stand-in reward that a random tiny model's completions vary on (a hash of the
text: the task reward is 0 for every completion of an untrained model, so nothing would
be learned); rollouts, loss, optimiser and checkpoints are the real ones;
``--kill-in-save N`` kills the process (SIGKILL) in the middle of step N's checkpoint
(its shards and trainer state written, not yet renamed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import TrainConfig  # noqa: E402

PROMPTS, G, LENGTHS = 4, 4, (3, 7, 5, 9)  # global round: 4 prompts x 4 completions


def fixed_round(run):
    """This rank's slice of a fixed global round (completions, rewards) as a Round."""
    from trainer.loop import Round, count_loss_terms, make_batch
    from trainer.rollout import build_requests
    from trainer.rollout.base import Completion

    dist, per_rank = run.dist, PROMPTS // run.dist.world_size
    mine = range(dist.rank * per_rank, (dist.rank + 1) * per_rank)
    samples = [run.dataset[i % len(run.dataset)] for i in mine]
    requests = build_requests(samples, run.processor, run.cfg.template)
    completions, rewards = [], []
    for p in mine:
        rng = np.random.default_rng(100 + p)
        for g in range(G):
            ids = rng.integers(10, 4000, size=LENGTHS[(p + g) % 4]).tolist()
            completions.append(Completion(p, ids, "", None, "length"))
            # prompt 3's group has zero variance: it is left out of the loss (beta = 0)
            rewards.append(1.0 if p == 3 else float(rng.random()))
    rnd = Round([], {}, {"rollout": 0.0, "reward": 0.0})
    rnd.batches.append(make_batch(run, requests, completions, np.array(rewards), {}, rnd.stats))
    return count_loss_terms(rnd, dist)


def step(cfg: TrainConfig, out: Path) -> None:
    from trainer.distributed import full_state_dict
    from trainer.loop import optimise
    from trainer.train import setup_run

    run = setup_run(cfg, progress=False)
    optimise(run, fixed_round(run))
    state = full_state_dict(run.model, run.dist)
    if run.dist.is_main:
        torch.save(state, out / "weights.pt")  # as trained: the float32 master weights


def train_run(cfg: TrainConfig, out: Path, resume: bool, kill_in_save: int | None) -> None:
    import trainer.checkpoint as ck
    import trainer.loop as loop
    import trainer.train as tt

    rank = int(os.environ.get("RANK", "0"))
    drawn: list[list[int]] = []
    collect = loop.collect_round

    def recording_collect(run):
        rnd = collect(run)
        drawn.append(rnd.prompt_ids)
        (out / f"prompts-rank{rank}.json").write_text(json.dumps(drawn))
        return rnd

    save = ck.save_checkpoint

    def save_or_die(path, run_state, model, optimizer, dist, cfg):
        if run_state["step"] == kill_in_save:
            cfg = Dying(cfg)
        save(path, run_state, model, optimizer, dist, cfg)

    setup = tt.setup_run

    def setup_with_text_reward(*args, **kwargs):
        run = setup(*args, **kwargs)
        run.reward_fn = text_reward
        return run

    loop.collect_round = recording_collect
    ck.save_checkpoint = save_or_die
    tt.setup_run = setup_with_text_reward
    tt.train(cfg, resume="latest" if resume else None, progress=False)


def text_reward(texts, videos, queries):
    """A reward in [0, 1] that differs between random completions (a hash of the text)."""
    rewards = np.array([sum(t.encode()) % 11 / 10 for t in texts], dtype=float)
    return rewards, {"text": rewards}


class Dying:
    """A config whose ``save_yaml`` (the last write before the rename) kills the process."""

    def __init__(self, cfg):
        self.cfg = cfg

    def save_yaml(self, path):
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    from trainer.distributed import shutdown

    mode, config, out = argv[0], Path(argv[1]), Path(argv[2])
    cfg = TrainConfig.from_dict(json.loads(config.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    try:
        if mode == "step":
            step(cfg, out)
        else:
            stop = int(argv[argv.index("--kill-in-save") + 1]) if "--kill-in-save" in argv else None
            train_run(cfg, out, "--resume" in argv, stop)
    finally:
        shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
