"""The HF rollout engine (CPU): G completions per request, seeds, bans, stops, log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import video_inputs
from trainer.policy import completion_logprobs, load_policy
from trainer.rollout import Completion, RolloutEngine, RolloutRequest, make_engine
from trainer.rollout.hf import HFRolloutEngine


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir, dtype="float32")


@pytest.fixture(scope="module")
def requests(policy):
    _, processor = policy
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(0)
    return [
        RolloutRequest(prompt, rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), 2.0),
        RolloutRequest(prompt, rng.integers(0, 256, (2, 28, 84, 3), dtype=np.uint8), 1.0),
    ]


def test_hf_engine_returns_g_completions_with_training_logprobs(policy, requests):
    model, processor = policy
    engine = make_engine("hf", model, processor)
    assert isinstance(engine, HFRolloutEngine) and isinstance(engine, RolloutEngine)
    out = engine.generate(requests, num_generations=3, max_new_tokens=12, seed=0)
    assert [len(group) for group in out] == [3, 3]
    assert [c.request_index for group in out for c in group] == [0, 0, 0, 1, 1, 1]
    flat = [c for group in out for c in group]
    for c in flat:
        assert isinstance(c, Completion)
        assert 1 <= len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
        assert all(np.isfinite(c.logprobs))
        assert c.finish_reason == ("length" if len(c.token_ids) == 12 else "stop")
    # The sampled tokens' log-probs are those of the training forward (raw, temperature 1).
    videos = [(r.frames, r.fps) for r in requests for _ in range(3)]
    with torch.no_grad():
        lp, _ = completion_logprobs(
            model,
            processor,
            [r.prompt for r in requests for _ in range(3)],
            videos,
            [c.token_ids for c in flat],
        )
    for i, c in enumerate(flat):
        assert torch.allclose(lp[i, : len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)


def test_hf_engine_is_deterministic_with_a_seed(policy, requests):
    engine = HFRolloutEngine(*policy)
    ids = lambda out: [c.token_ids for group in out for c in group]  # noqa: E731
    a = engine.generate(requests, num_generations=4, max_new_tokens=8, seed=7)
    b = engine.generate(requests, num_generations=4, max_new_tokens=8, seed=7)
    c = engine.generate(requests, num_generations=4, max_new_tokens=8, seed=8)
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # The G samples of one request differ from one another (8 tokens from ~4118 choices).
    assert len({tuple(x.token_ids) for x in a[0]}) == 4
    # Greedy: every sample is the argmax path, hence identical.
    greedy = engine.generate(requests[:1], num_generations=3, max_new_tokens=6, temperature=0.0)
    assert len({tuple(x.token_ids) for x in greedy[0]}) == 1


@pytest.fixture()
def biased_policy(tiny_dir):
    """A policy whose most likely next tokens are vision placeholders, then <|im_end|>."""
    model, processor = load_policy(tiny_dir, dtype="float32")
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[4109], bias[4105], bias[4098] = (
        50.0,
        40.0,
        30.0,
    )  # <|video_pad|>, <|vision_start|>, <|im_end|>
    model.lm_head.register_forward_hook(lambda module, args, logits: logits + bias)
    return model, processor


def test_vision_tokens_are_never_sampled_and_stop_is_kept(biased_policy, requests):
    model, processor = biased_policy
    inputs = video_inputs(processor, requests[0].prompt, requests[0].frames, requests[0].fps)
    with torch.no_grad():  # without the ban, greedy decoding emits <|video_pad|>
        raw = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert raw[0, -1].item() == 4109
    engine = HFRolloutEngine(model, processor)
    out = engine.generate(requests, num_generations=4, max_new_tokens=5, seed=0)
    for c in (c for group in out for c in group):
        assert not {4105, 4106, 4107, 4108, 4109} & set(c.token_ids)
        # Next best is <|im_end|>: a one-token completion that stops, the stop token kept.
        assert c.token_ids == [4098] and c.finish_reason == "stop" and c.text == ""
        # Raw log-prob of <|im_end|>: logits 50 / 40 / 30 (+ ~0.1) -> about 30 - 50 = -20.
        assert c.logprobs[0] == pytest.approx(-20.0, abs=0.5)


def test_bad_requests_and_engine_names(policy, requests):
    model, processor = policy
    prompt = requests[0].prompt
    with pytest.raises(ValueError, match="exactly one"):
        RolloutRequest(
            prompt.replace("Which", "<|vision_start|><|video_pad|><|vision_end|>"),
            requests[0].frames,
            2.0,
        )
    with pytest.raises(ValueError, match="uint8"):
        RolloutRequest(prompt, requests[0].frames.astype(np.float32), 2.0)
    with pytest.raises(ValueError, match="fps"):
        RolloutRequest(prompt, requests[0].frames, 0.0)
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("sglang", model, processor)
    with pytest.raises(ValueError, match="logprobs"):
        Completion(0, [1, 2], "x", [0.0], "stop")
    engine = HFRolloutEngine(model, processor)
    engine.sleep(), engine.wake_up(), engine.sync_weights(model)  # no-ops for the HF engine
    assert engine.model is model


def test_vllm_helpers_map_peft_names_back_without_importing_vllm(tiny_dir):
    import sys

    from trainer.rollout.vllm import hf_weights_for_vllm, policy_source

    base, _ = load_policy(tiny_dir, dtype="float32")
    lora, _ = load_policy(tiny_dir, dtype="float32", lora={"r": 4})
    assert "vllm" not in sys.modules  # imported lazily, inside the engine
    base_names = [n for n, _ in base.named_parameters()]
    # peft's "base_model.model.<name>" / "<name>.base_layer.weight" map back to the HF names
    # that vLLM's own load_weights maps (e.g. "model.language_model.layers.0.self_attn.q_proj.weight").
    assert [n for n, _ in hf_weights_for_vllm(lora)] == base_names
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in base_names
    assert policy_source(lora) == policy_source(base) == str(tiny_dir)


def test_vllm_request_carries_the_frame_timing(requests):
    from trainer.rollout.vllm import VLLMRolloutEngine

    engine = VLLMRolloutEngine.__new__(VLLMRolloutEngine)  # the prompt builder needs no GPU
    req = requests[1]  # 2 frames at 1 fps
    meta = {"fps": 1.0, "total_num_frames": 2, "frames_indices": [0, 1], "duration": 2.0}
    engine.metadata_via = "tuple"
    prompt = engine._prompt(req)
    frames, sent = prompt["multi_modal_data"]["video"]
    assert prompt["prompt"] == req.prompt and np.array_equal(frames, req.frames) and sent == meta
    assert prompt["mm_processor_kwargs"] == {"do_resize": False, "do_sample_frames": False}
    engine.metadata_via = "kwargs"
    prompt = engine._prompt(req)
    assert prompt["mm_processor_kwargs"]["video_metadata"] == [meta]
    assert np.array_equal(prompt["multi_modal_data"]["video"], req.frames)
