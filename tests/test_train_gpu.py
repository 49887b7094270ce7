"""The training loop on CUDA: bf16, gradient checkpointing, vLLM rollouts with weight sync.

Marked ``gpu``; runs on a CUDA machine with ``pip install -e '.[gpu]'`` (``make test-gpu``).
"""

import json

import pytest
import torch

from tests.conftest import requires_cuda, requires_vllm
from trainer.config import load_config
from trainer.train import train

pytestmark = [pytest.mark.gpu, requires_cuda]


def _cfg(mini_demo, out, **over):
    overrides = {
        "model": mini_demo["out"] / "train" / "cold_start",
        "cold_start_steps": 0,
        "train_shards": mini_demo["data"] / "shards" / "synthetic" / "train",
        "output_dir": out,
        "device": "cuda",
        "num_generations": 4,
        "per_step_prompts": 2,
        "max_new_tokens": 48,
        "max_steps": 2,
        "save_steps": 2,
        "report_to": "[jsonl]",
        **over,
    }
    return load_config("configs/tiny_synthetic.yaml", [f"{k}={v}" for k, v in overrides.items()])


def _changed(before_dir, after_dir) -> int:
    from safetensors.torch import load_file

    a = {k: v for f in before_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    b = {k: v for f in after_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    return sum(not torch.equal(a[k].float(), b[k].float()) for k in a if k in b)


def test_hf_rollouts_bf16_checkpointing_on_cuda(mini_demo, tmp_path):
    cfg = _cfg(mini_demo, tmp_path / "hf", dtype="bfloat16", gradient_checkpointing=True)
    final = train(cfg, progress=False)
    assert _changed(mini_demo["out"] / "train" / "cold_start", final) > 0
    assert (tmp_path / "hf" / "checkpoint-2" / "trainer_state.pt").exists()


@requires_vllm
def test_vllm_rollouts_train_and_resume(mini_demo, tmp_path):
    cfg = _cfg(mini_demo, tmp_path / "vllm", rollout="vllm", dtype="bfloat16", max_steps=3)
    final = train(cfg, progress=False)
    metrics = [
        json.loads(x) for x in (tmp_path / "vllm" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["tokens_per_s"] > 0 for m in metrics)
    assert _changed(mini_demo["out"] / "train" / "cold_start", final) > 0
    # resume from checkpoint-2 with vLLM: the engine is re-synced to the restored weights
    train(cfg, resume=str(tmp_path / "vllm" / "checkpoint-2"), progress=False)
