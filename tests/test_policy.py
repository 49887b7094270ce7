"""Policy loading and the training forward (completion log-probs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import video_inputs
from trainer.policy import completion_logprobs, load_policy, vision_token_ids


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir, dtype="float32")


def prompt_for(processor, question: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def reference_logprobs(model, processor, prompt, frames, fps, completion) -> torch.Tensor:
    """One sample, plain forward over prompt + completion with the raw video pixels."""
    inputs = video_inputs(processor, prompt, frames, fps)
    n = len(completion)
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion])], dim=1)  # (1, S + n)
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, n, dtype=torch.long)], dim=1)
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=types,
        pixel_values_videos=inputs["pixel_values_videos"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
    )
    s = inputs["input_ids"].shape[1]
    logp = out.logits[0, s - 1 : -1].log_softmax(-1)  # (n, V): position p predicts token p + 1
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="module")
def batch(policy):
    _, processor = policy
    rng = np.random.default_rng(0)
    video_a = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    video_b = rng.integers(0, 256, (6, 28, 84, 3), dtype=np.uint8)
    p_short = prompt_for(processor, "Which ID?")
    p_long = prompt_for(processor, "Which object moves left at the start of the clip?")
    prompts = [p_short, p_short, p_long, p_long, p_short]
    videos = [(video_a, 2.0), (video_a, 2.0), (video_b, 1.0), (video_b, 1.0), (video_a, 4.0)]
    completions = [list(range(100, 130)), [5, 6, 7], [9], [*range(300, 310), 4098], []]
    return prompts, videos, completions


def test_completion_logprobs_equal_a_plain_forward(policy, batch):
    model, processor = policy
    prompts, videos, completions = batch
    with torch.no_grad():
        lp, mask = completion_logprobs(
            model, processor, prompts, videos, completions, micro_batch=3
        )
    # N = 5 samples, L = longest completion = 30; mask counts 30, 3, 1, 11, 0 tokens.
    assert lp.shape == mask.shape == (5, 30)
    assert mask.sum(1).tolist() == [30, 3, 1, 11, 0]
    assert (lp[mask == 0] == 0).all()
    for i, (p, (frames, fps), c) in enumerate(zip(prompts, videos, completions)):
        if not c:
            continue
        with torch.no_grad():
            ref = reference_logprobs(model, processor, p, frames, fps, c)
        assert torch.allclose(lp[i, : len(c)], ref, atol=1e-5), i
    # A random tiny model is nearly uniform over 4118 tokens: log-probs near -log(4118) = -8.32.
    assert lp[mask == 1].mean().item() == pytest.approx(-8.32, abs=0.5)
    # The fps changes the temporal positions, hence the log-probs (same frames, 2 vs 4 fps).
    with torch.no_grad():
        lp_2fps, _ = completion_logprobs(
            model, processor, [prompts[0]], [(videos[0][0], 2.0)], [completions[0]]
        )
        lp_4fps, _ = completion_logprobs(
            model, processor, [prompts[0]], [(videos[0][0], 4.0)], [completions[0]]
        )
    assert (lp_2fps - lp_4fps).abs().max() > 1e-6


def test_gradients_flow_into_text_and_vision(tiny_dir, batch):
    model, processor = load_policy(tiny_dir, dtype="float32")
    prompts, videos, completions = batch
    lp, mask = completion_logprobs(model, processor, prompts[:3], videos[:3], completions[:3])
    assert lp.requires_grad
    (-(lp * mask).sum() / mask.sum()).backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    frozen, processor = load_policy(tiny_dir, dtype="float32", freeze_vision=True)
    lp, mask = completion_logprobs(frozen, processor, prompts[:1], videos[:1], completions[:1])
    (-(lp * mask).sum()).backward()
    assert frozen.model.visual.patch_embed.proj.weight.grad is None
    assert frozen.lm_head.weight.grad.abs().sum() > 0


def test_lora_policy_trains_only_adapters(tiny_dir, batch):
    model, processor = load_policy(tiny_dir, dtype="float32", lora={"r": 4, "lora_alpha": 8})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    prompts, videos, completions = batch
    lp, mask = completion_logprobs(model, processor, prompts[:2], videos[:2], completions[:2])
    (-(lp * mask).sum()).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_vision_token_ids_and_bad_completions(policy, batch):
    model, processor = policy
    # <|vision_start|> 4105, <|vision_end|> 4106, <|vision_pad|> 4107, <|image_pad|> 4108, <|video_pad|> 4109
    assert vision_token_ids(processor) == [4105, 4106, 4107, 4108, 4109]
    assert vision_token_ids(processor.tokenizer) == [4105, 4106, 4107, 4108, 4109]
    prompts, videos, _ = batch
    with pytest.raises(ValueError, match="vision placeholder"):
        completion_logprobs(model, processor, prompts[:1], videos[:1], [[10, 4109, 11]])
    with pytest.raises(ValueError, match="got 1 prompts, 2 videos"):
        completion_logprobs(model, processor, prompts[:1], videos[:2], [[1]])


def test_load_policy_errors_clearly_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_policy("stvg-tests/no-such-model")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        load_policy(tmp_path, dtype="float8")


def test_a_few_steps_raise_the_likelihood_of_a_target(tiny_dir, batch):
    # The training path end to end: maximise one completion's log-prob with Adam, with
    # gradient checkpointing on (the setting for real models).
    model, processor = load_policy(tiny_dir, dtype="float32", gradient_checkpointing=True)
    model.train()
    prompts, videos, _ = batch
    target = [[7, 8, 9, 4098]]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(8):
        lp, mask = completion_logprobs(model, processor, prompts[:1], videos[:1], target)
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(-loss.item())
    # Starts near uniform (-log 4118 = -8.3 per token) and must climb well above it.
    assert history[0] == pytest.approx(-8.32, abs=0.5)
    assert history[-1] > history[0] + 4


def test_logprobs_at_a_temperature_match_the_sampler(policy, batch):
    """completion_logprobs(temperature=T) is log softmax(logits / T), and equals what the
    HF engine reports for the tokens it sampled at T (old, rollout and new log-probs then
    describe one distribution at any temperature)."""
    from trainer.rollout import RolloutRequest, make_engine

    model, processor = policy
    prompts, videos, _completions = batch
    frames, fps = videos[0]
    with torch.no_grad():
        lp1, _ = completion_logprobs(model, processor, [prompts[0]], [videos[0]], [[5, 6, 7]])
        lp2, _ = completion_logprobs(model, processor, [prompts[0]], [videos[0]], [[5, 6, 7]],
                                     temperature=2.0)  # fmt: skip
        inputs = video_inputs(processor, prompts[0], frames, fps)
        ids = torch.cat([inputs["input_ids"], torch.tensor([[5, 6, 7]])], dim=1)
        types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, 3, dtype=torch.long)], 1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                       pixel_values_videos=inputs["pixel_values_videos"],
                       video_grid_thw=inputs["video_grid_thw"],
                       second_per_grid_ts=inputs["second_per_grid_ts"]).logits[0, -4:-1]  # fmt: skip
    expected = (logits / 2.0).log_softmax(-1).gather(-1, torch.tensor([[5], [6], [7]]))[:, 0]
    torch.testing.assert_close(lp2[0], expected, atol=1e-5, rtol=1e-5)
    assert (lp2 - lp1).abs().max() > 1e-4  # the temperature does change them
    engine = make_engine("hf", model, processor)
    request = RolloutRequest(prompts[0], frames, fps)
    (group,) = engine.generate([request], num_generations=2, max_new_tokens=4, temperature=1.7,
                               seed=3)  # fmt: skip
    with torch.no_grad():
        lp, _mask = completion_logprobs(model, processor, [prompts[0]] * 2, [videos[0]] * 2,
                                       [c.token_ids for c in group], temperature=1.7)  # fmt: skip
    for i, c in enumerate(group):
        torch.testing.assert_close(lp[i, : len(c.token_ids)], torch.tensor(c.logprobs),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
