"""Supervised cold start: teach the answer format on ground-truth answers before GRPO.

    python -m trainer.sft --config configs/tiny_synthetic.yaml --steps 40 --out data/runs/sft

GRPO learns only from groups whose rewards differ. A model that never writes a
parsable answer (a random tiny model, or a base model with a new answer format) gets
reward 0 on every sample, every group has zero variance, and no update happens. A few
supervised steps on ``format_answer(target_ids, span)`` targets (the R1-style cold
start) give GRPO a starting point. Real 7B runs usually skip this: Qwen2.5-VL-Instruct
follows the format from the prompt alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig, add_config_args, config_from_args


def sft_targets(samples, template: str, eos: str) -> list[str]:
    """The contract answer of each sample's ground truth, closed by the end-of-turn token."""
    from trainer.answer import format_answer

    return [
        format_answer(s.query.target_ids, *s.query.span_s, template=template) + eos for s in samples
    ]


def cold_start(
    cfg: TrainConfig,
    out: Path,
    *,
    steps: int = 40,
    batch_size: int = 4,
    learning_rate: float | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune ``cfg.model`` on ground-truth answers of ``cfg.train_shards``; save to ``out``."""
    from tqdm import tqdm

    from trainer.data import GroundingDataset
    from trainer.policy import (
        completion_logprobs,
        load_policy,
        resolve_device,
        save_model,
        seed_everything,
    )
    from trainer.prompt import STOP_TOKENS
    from trainer.rollout import build_requests

    seed_everything(cfg.seed)
    model, processor = load_policy(
        cfg.model,
        device=resolve_device(cfg.device),
        dtype=cfg.dtype,
        freeze_vision=cfg.freeze_vision,
    )
    dataset = GroundingDataset(
        cfg.train_shards, fps=cfg.fps, max_frames=cfg.max_frames, total_pixels=cfg.total_pixels
    )
    if len(dataset) == 0:
        raise SystemExit(f"no matched queries in {cfg.train_shards}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate or cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    eos = STOP_TOKENS[0]  # the chat template's end of turn
    model.train()
    bar = tqdm(range(steps), desc="sft", unit="step", disable=not progress)
    for _ in bar:
        samples = [dataset[int(i)] for i in rng.choice(len(dataset), size=batch_size)]
        requests = build_requests(samples, processor, cfg.template)
        targets = processor.tokenizer(
            sft_targets(samples, cfg.template, eos), add_special_tokens=False
        )
        logp, mask = completion_logprobs(
            model,
            processor,
            [r.prompt for r in requests],
            [(r.frames, r.fps) for r in requests],
            targets["input_ids"],
        )  # (B, L), (B, L)
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        bar.set_postfix(nll=f"{loss.item():.3f}")
    save_model(out, model, processor, cfg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.sft",
        description="Supervised cold start on ground-truth answers (the model, shards and "
        "template come from the training config).",
    )
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="where to save the fine-tuned model")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, help="learning rate (default: the config's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:  # a bad key or value: a usage error, not a traceback
        p.error(str(err))
    out = cold_start(cfg, args.out, steps=args.steps, batch_size=args.batch_size,
                     learning_rate=args.lr, progress=not args.no_progress)  # fmt: skip
    print(f"cold-start model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
