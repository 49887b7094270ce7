"""Parameter counts of a policy checkpoint without its weights: config.json -> a meta-device model.

The architecture comes from the checkpoint's ``config.json`` (a local folder, or a hub id
already in the Hugging Face cache) through ``transformers.AutoConfig``. Model hubs are not
reachable everywhere, so the architectures of ``Qwen/Qwen2.5-VL-7B-Instruct`` and
``Qwen/Qwen2.5-VL-3B-Instruct`` also ship here as a small table (the numbers of their
published ``config.json``) and are used when no config file can be found.

Counts are exact: the model class is built on the ``meta`` device (no memory, no weights)
and its parameters are counted, with peft's LoRA wrapping applied the same way when the
run uses LoRA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_QWEN25_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
}

# Architecture numbers of the published config.json files (text model, vision tower).
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": {
        "text_config": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
        },
        "vision_config": {**_QWEN25_VL_VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
        },
        "vision_config": {**_QWEN25_VL_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
}
# Repeated layers: decoder layers and vision blocks (the units FSDP2 shards one by one,
# and the vLLM weight push gathers one at a time).
UNIT_RE = re.compile(r"^(.*\.(?:layers|blocks)\.\d+)\.")


def load_model_config(model: str | Path):
    """(transformers config, where it came from) for a folder, a cached hub id or a known id."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a model folder")
        return AutoConfig.from_pretrained(path), f"{path / 'config.json'}"
    try:
        return AutoConfig.from_pretrained(str(model), local_files_only=True), "the HF cache"
    except (OSError, ValueError):
        pass
    if str(model) in KNOWN_ARCHITECTURES:
        return Qwen2_5_VLConfig(**KNOWN_ARCHITECTURES[str(model)]), "the built-in table"
    raise FileNotFoundError(
        f"no config.json for {model!r}: not a folder, not in the local Hugging Face cache, and "
        f"not one of the built-in architectures {sorted(KNOWN_ARCHITECTURES)}"
    )


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts and the shapes the memory plan needs.

    Attributes:
        total: every parameter (with LoRA: base + adapters).
        trainable: parameters the optimiser updates (LoRA: the adapters only).
        trainable_tensors: number of trainable parameter tensors (one AdamW ``step`` each).
        lora: LoRA adapter parameters (0 without LoRA).
        vision: parameters of the vision tower (and its merger).
        largest_unit: parameters of the largest decoder layer or vision block.
        root: parameters outside the repeated units (embeddings, lm_head, norms, patch embed).
        hidden, layers, kv_heads, head_dim, intermediate, vocab, max_positions: the text model.
        vision_hidden, vision_intermediate, vision_depth, merge: the vision tower.
        source: where the architecture came from.
    """

    total: int
    trainable: int
    trainable_tensors: int
    lora: int
    vision: int
    largest_unit: int
    root: int
    hidden: int
    layers: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    merge: int
    source: str


def model_sizes(
    model: str | Path, *, lora: dict | None = None, freeze_vision: bool = False
) -> ModelSizes:
    """Count ``model``'s parameters on the meta device, as the trainer would set it up.

    Args:
        lora: ``peft.LoraConfig`` keyword arguments (``TrainConfig.lora_kwargs()``), or None.
        freeze_vision: the vision tower is not trained (full fine-tuning only).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    config, source = load_model_config(model)
    with torch.device("meta"):
        net = AutoModelForImageTextToText.from_config(config)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            net = get_peft_model(net, LoraConfig(task_type="CAUSAL_LM", **lora))
    units: dict[str, int] = {}
    total = trainable = tensors = n_lora = n_vision = 0
    for name, p in net.named_parameters():
        n = p.numel()
        total += n
        is_lora = "lora_" in name
        in_vision = ".visual." in f".{name}"
        n_lora += n * is_lora
        n_vision += n * (in_vision and not is_lora)
        if is_lora or (lora is None and not (freeze_vision and in_vision)):
            trainable += n
            tensors += 1
        unit = UNIT_RE.match(name)
        if unit:
            units[unit.group(1)] = units.get(unit.group(1), 0) + n
    text, vis = config.get_text_config(), config.vision_config
    heads = text.num_attention_heads
    return ModelSizes(
        total=total,
        trainable=trainable,
        trainable_tensors=tensors,
        lora=n_lora,
        vision=n_vision,
        largest_unit=max(units.values(), default=0),
        root=total - sum(units.values()),
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        max_positions=text.max_position_embeddings,
        vision_hidden=vis.hidden_size,
        vision_intermediate=vis.intermediate_size,
        vision_depth=vis.depth,
        merge=vis.spatial_merge_size,
        source=source,
    )
