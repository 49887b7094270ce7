"""vLLM rollouts on a CUDA machine: agreement with the HF training forward, and weight sync.

Run with ``pip install -e '.[gpu]'`` and ``pytest -m gpu tests/test_rollout_vllm.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from trainer.policy import completion_logprobs, load_policy
from trainer.rollout import RolloutRequest
from trainer.tiny import ensure_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="needs vLLM: pip install -e '.[gpu]'"
    ),
]

VISION_IDS = {4105, 4106, 4107, 4108, 4109}


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """The tiny model with sharpened attention and logits, so that temporal positions matter."""
    tiny = ensure_tiny_model(tmp_path_factory.getbasetemp() / "tiny-qwen2.5-vl")
    model, processor = load_policy(tiny, dtype="float32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and (".q_proj." in name or ".k_proj." in name):
                p.mul_(6.0)
        model.lm_head.weight.mul_(4.0)
    out = tmp_path_factory.mktemp("sharp") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    processor.video_processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(sharp_dir):
    return load_policy(sharp_dir, device="cuda", dtype="bfloat16")


@pytest.fixture(scope="module")
def engine(sharp_dir, hf):
    from trainer.rollout.vllm import VLLMRolloutEngine

    return VLLMRolloutEngine(
        str(sharp_dir),
        hf[1],
        gpu_memory_utilization=0.3,
        max_model_len=2048,
        dtype="bfloat16",
        enforce_eager=True,
    )


@pytest.fixture(scope="module")
def requests(hf):
    _, processor = hf
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(0)
    # 16 frames -> 8 temporal patches: temporal ids 0, 2, ..., 14 at 2 fps (0 or 1 at "24 fps").
    return [
        RolloutRequest(prompt, rng.integers(0, 256, (16, 56, 56, 3), dtype=np.uint8), 2.0),
        RolloutRequest(prompt, rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8), 1.0),
    ]


def _mean_abs_diff(hf_lp: torch.Tensor, mask: torch.Tensor, completions) -> float:
    vllm_lp = torch.zeros_like(hf_lp)
    for i, c in enumerate(completions):
        vllm_lp[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
    return float(((hf_lp - vllm_lp).abs() * mask).sum() / mask.sum())


def _hf_logprobs(model, processor, requests, completions, fps=None):
    per_request = len(completions) // len(requests)
    reqs = [r for r in requests for _ in range(per_request)]
    with torch.no_grad():
        lp, mask = completion_logprobs(
            model,
            processor,
            [r.prompt for r in reqs],
            [(r.frames, fps or r.fps) for r in reqs],
            [c.token_ids for c in completions],
        )
    return lp.float().cpu(), mask.cpu()


def test_vllm_logprobs_agree_with_the_hf_training_forward(engine, hf, requests):
    model, processor = hf
    out = engine.generate(requests, num_generations=3, max_new_tokens=16, seed=0)
    assert [len(g) for g in out] == [3, 3]
    flat = [c for g in out for c in g]
    for c in flat:
        assert not VISION_IDS & set(c.token_ids)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    lp, mask = _hf_logprobs(model, processor, requests, flat)
    err = _mean_abs_diff(lp, mask, flat)
    assert err < 0.1, err  # bf16 on both sides
    # vLLM must use the real frame timing, not the 24 fps default of bare frame arrays.
    lp_trap, _ = _hf_logprobs(model, processor, requests, flat, fps=24.0)
    assert err < _mean_abs_diff(lp_trap, mask, flat)
    # Seeded sampling is reproducible.
    again = engine.generate(requests, num_generations=3, max_new_tokens=16, seed=0)
    assert [c.token_ids for g in again for c in g] == [c.token_ids for c in flat]


def test_sync_pushes_new_weights_and_survives_sleep(engine, hf, requests):
    model, processor = hf
    greedy = {"num_generations": 1, "max_new_tokens": 12, "temperature": 0.0}
    before = engine.generate(requests[:1], **greedy)[0][0]
    engine.sleep()
    engine.wake_up()
    assert engine.generate(requests[:1], **greedy)[0][0].token_ids == before.token_ids
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p))
        model.lm_head.weight.copy_(0.5 * torch.randn(model.lm_head.weight.shape, generator=gen))
    engine.sleep()  # the trainer's step happens here; sync wakes the engine up
    engine.sync_weights(model)
    after = engine.generate(requests[:1], **greedy)[0][0]
    assert after.token_ids != before.token_ids
    lp, mask = _hf_logprobs(model, processor, requests[:1], [after])
    assert _mean_abs_diff(lp, mask, [after]) < 0.1


def test_sync_merges_lora_adapters(engine, sharp_dir, requests):
    model, processor = load_policy(
        sharp_dir, device="cuda", dtype="bfloat16", lora={"r": 8, "lora_alpha": 16}
    )
    gen = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter do something
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    q_proj = next(
        p
        for n, p in model.named_parameters()
        if n.endswith("layers.0.self_attn.q_proj.base_layer.weight")
    )
    base_before = q_proj.detach().clone()
    engine.sync_weights(model)
    # The adapter is unmerged again after the push (up to bf16 rounding of merge + unmerge).
    assert torch.allclose(q_proj.detach().float(), base_before.float(), atol=0.02)
    out = engine.generate(requests[:1], num_generations=2, max_new_tokens=12, seed=3)[0]
    lp, mask = _hf_logprobs(model, processor, requests[:1], out)
    assert _mean_abs_diff(lp, mask, out) < 0.1
