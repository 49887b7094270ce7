"""The offline tiny Qwen2.5-VL: tokenizer, ids vs config, template, build/load, a video forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.tiny import ADDED_TOKENS, build_tiny_model, build_tokenizer, ensure_tiny_model, main


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_dir), AutoProcessor.from_pretrained(
        tiny_dir
    )


TEXTS = [
    "The man in the red shirt who picks up the ball.",
    '<think>ID 3 moves left</think><answer>{"ids": [3], "start": 12.5, "end": 17.8}</answer>',
    "Target ID: 3, Time range: 12.54 to 17.83",
    "  spaces\ttabs\nnew lines, ünïcödé, 中文, emoji 🙂 ",
]


def test_truncated_tokenizer_round_trips_text(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < 4096  # plain text only uses BPE tokens, never the added ones
        assert tok.decode(ids) == text


def test_full_vocab_tokenizer_has_the_real_ids():
    tok = build_tokenizer(None)
    # Real Qwen2 ids: "Hello" = 9707, " world" = 1879; added tokens start at 151643.
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|video_pad|>"]) == [
        151652,
        151655,
        151656,
    ]
    assert len(tok) == 151665


def test_special_token_ids_match_the_config(loaded):
    model, processor = loaded
    tok, cfg = processor.tokenizer, model.config
    # Truncated vocab: 4096 BPE tokens, then the 22 added tokens at 4096..4117 in order.
    assert tok.convert_tokens_to_ids(list(ADDED_TOKENS)) == list(range(4096, 4118))
    assert len(tok) == cfg.text_config.vocab_size == 4118
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>") == 4105
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>") == 4106
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == 4108
    assert (
        cfg.video_token_id
        == tok.convert_tokens_to_ids("<|video_pad|>")
        == processor.video_token_id
        == 4109
    )
    assert cfg.text_config.eos_token_id == tok.eos_token_id == 4098  # <|im_end|>
    assert tok.pad_token_id == cfg.text_config.pad_token_id == 4096  # <|endoftext|>
    assert model.generation_config.eos_token_id == [4098, 4096]
    # Special tokens are dropped when decoding with skip_special_tokens.
    assert tok.decode([4097, 4105, 4109, 4106, 4098], skip_special_tokens=True) == ""


def test_chat_template_renders_the_video_placeholder(loaded):
    _, processor = loaded
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Which ID?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    text = processor.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert not text.endswith("<|im_start|>assistant\n")


def test_auto_classes_load_the_saved_folder(loaded, tiny_dir):
    model, processor = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    vp = processor.video_processor
    assert (vp.patch_size, vp.merge_size, vp.temporal_patch_size) == (14, 2, 2)
    assert np.allclose(vp.image_mean, [0.48145466, 0.4578275, 0.40821073])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2_000_000


def test_ensure_rebuilds_only_an_incomplete_folder(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_model(tiny_dir) == tiny_dir
    assert weights.stat().st_mtime_ns == stamp  # complete: left alone


def test_cli_build_is_deterministic(tmp_path, loaded):
    from transformers import AutoModelForImageTextToText

    model, _ = loaded
    out = tmp_path / "tiny"
    main(["--out", str(out), "--seed", "0"])
    again = AutoModelForImageTextToText.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    main(["--out", str(out)])  # complete: the CLI leaves it alone
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "config.json").unlink()  # incomplete -> ensure_tiny_model rebuilds it
    ensure_tiny_model(out)
    assert (out / "config.json").exists()
    with pytest.raises(FileExistsError):
        build_tiny_model(out)  # the function refuses to overwrite without overwrite=True


def test_video_forward_and_temporal_positions(loaded):
    from trainer.data import video_inputs

    model, processor = loaded
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    frames = np.random.default_rng(0).integers(0, 256, (6, 56, 84, 3), dtype=np.uint8)
    inputs = video_inputs(processor, prompt, frames, fps=2.0)
    # 6 frames -> 3 temporal patches; 56x84 -> 4x6 patches of 14 -> 2x3 after the 2x2 merge.
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 6]]
    video = inputs["input_ids"][0] == model.config.video_token_id
    assert int(video.sum()) == 3 * 2 * 3
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 4118)
    assert torch.isfinite(logits).all()
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
    )
    t_pos = pos[0, 0, video].view(3, 6)[:, 0]  # temporal id of each patch
    # 2 fps -> 1.0 s per patch, tokens_per_second = 2 -> temporal ids 2 apart.
    assert (t_pos - t_pos[0]).tolist() == [0, 2, 4]
