"""The policy: loading a Qwen2.5-VL (tiny dir, local checkpoint or cached hub id) and its log-probs.

:func:`completion_logprobs` is the training forward of GRPO: prompt + completion, one
video per sample, log-prob of every completion token under the current weights, with
gradients. Completions that share a video (the G samples of one prompt) have it
encoded once per micro-batch and the features reused.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainer.config import LLM_LORA_REGEX
from trainer.data import video_inputs

VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _torch_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda_bf16 = str(device).startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_policy(
    name_or_path: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    gradient_checkpointing: bool = False,
    lora: dict | None = None,
    freeze_vision: bool = False,
):
    """Load (model, processor) from a folder or a hub id already in the local HF cache.

    Args:
        lora: ``peft.LoraConfig`` keyword arguments; ``target_modules`` defaults to the
            language model's linear layers.
        freeze_vision: stop gradients into the vision tower (and its merger).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = _torch_dtype(dtype, device)
    path = Path(str(name_or_path)).expanduser()
    local = path.exists()
    if local and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a model folder")
    source = str(path) if local else str(name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=not local)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, local_files_only=not local
        )
    except OSError as err:
        if local:
            raise
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a folder nor a model in the local Hugging Face cache, and "
            "this machine has no hub access. Download it where there is network "
            f"(`huggingface-cli download {name_or_path}`) and copy the folder or cache here."
        ) from err
    model.to(device)
    if freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        kwargs = {"task_type": "CAUSAL_LM", "target_modules": LLM_LORA_REGEX, **lora}
        model = get_peft_model(model, LoraConfig(**kwargs))
    return model, processor


def vision_token_ids(processor_or_tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens, which a completion must never contain."""
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    ids = tok.convert_tokens_to_ids(list(VISION_TOKENS))
    unk = getattr(tok, "unk_token_id", None)
    missing = [t for t, i in zip(VISION_TOKENS, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(f"the tokenizer has no {missing}: not a Qwen2.5-VL tokenizer")
    return sorted(set(ids))


def _same_video_key(frames: np.ndarray, fps: float) -> tuple:
    return (id(frames), frames.shape, float(fps))


def completion_logprobs(
    model,
    processor,
    prompts: Sequence[str],
    videos: Sequence[tuple[np.ndarray, float]],
    completion_ids: Sequence[Sequence[int]],
    *,
    micro_batch: int = 4,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each completion token given its prompt and video (differentiable).

    Args:
        prompts: N chat-templated texts, each with one unexpanded video placeholder.
        videos: N (frames (T, H, W, 3) uint8, fps); pass the *same array object* for
            samples that share a video, so it is processed and encoded once.
        completion_ids: N token-id lists (may end with <|im_end|>).
        micro_batch: samples per forward pass (a multiple of G keeps each video to one
            encoding).
        temperature: the logits are divided by it, as the sampler did, so these are the
            log-probs of the distribution the completions were sampled from.
        device: where the inputs go (default: the parameters' device; FSDP2 with CPU
            offload keeps the parameters on the CPU and computes on the GPU).
    Returns:
        logprobs: (N, L) float32, L = longest completion, right-padded with 0.
        mask: (N, L) float32, 1 on real completion tokens.
    """
    n = len(prompts)
    if not n == len(videos) == len(completion_ids):
        raise ValueError(
            f"got {n} prompts, {len(videos)} videos, {len(completion_ids)} completions"
        )
    tok = processor.tokenizer
    banned = set(vision_token_ids(processor))
    for i, c in enumerate(completion_ids):
        if banned.intersection(c):
            raise ValueError(
                f"completion {i} contains vision placeholder ids {banned.intersection(c)}"
            )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cache: dict[tuple, dict] = {}  # (prompt, video) -> processor output
    for p, (frames, fps) in zip(prompts, videos):
        key = (p, *_same_video_key(frames, fps))
        if key not in cache:
            cache[key] = video_inputs(processor, p, frames, fps)

    width = max((len(c) for c in completion_ids), default=0)
    if width == 0:
        return torch.zeros(n, 0, device=device), torch.zeros(n, 0, device=device)
    rows_out = []
    for start in range(0, n, micro_batch):
        rows = list(range(start, min(n, start + micro_batch)))
        feats = [cache[(prompts[i], *_same_video_key(*videos[i]))] for i in rows]
        comps = [list(completion_ids[i]) for i in rows]
        lp_mb = _micro_batch_logprobs(model, tok, feats, comps, device, temperature)  # (B, w_mb)
        rows_out.append(torch.nn.functional.pad(lp_mb, (0, width - lp_mb.shape[1])))
    lp = torch.cat(rows_out, dim=0)  # (N, width)
    lengths = torch.tensor([len(c) for c in completion_ids], device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()
    return lp * mask, mask


def _micro_batch_logprobs(model, tok, feats, comps, device, temperature=1.0) -> torch.Tensor:
    """(B, w) log-probs for one micro-batch, w = its longest completion. Sequences are
    left-padded so that every completion ends at the last position and one slice of
    logits covers them all."""
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = max(len(c) for c in comps)
    if width == 0:
        return torch.zeros(len(comps), 0, device=device)
    seqs = [f["input_ids"][0].tolist() + c for f, c in zip(feats, comps)]
    types = [f["mm_token_type_ids"][0].tolist() + [0] * len(c) for f, c in zip(feats, comps)]
    seq_len = max(len(s) for s in seqs)
    b = len(seqs)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    attention = torch.zeros(b, seq_len, dtype=torch.long)
    mm_types = torch.zeros(b, seq_len, dtype=torch.long)
    for r, (s, ty) in enumerate(zip(seqs, types)):
        input_ids[r, seq_len - len(s) :] = torch.tensor(s)
        attention[r, seq_len - len(s) :] = 1
        mm_types[r, seq_len - len(s) :] = torch.tensor(ty)

    # Encode each distinct video once; features are reused for every sample showing it.
    unique: dict[int, torch.Tensor] = {}
    per_sample = []
    for f in feats:
        if id(f) not in unique:
            out = model.get_video_features(
                pixel_values_videos=f["pixel_values_videos"].to(device),
                video_grid_thw=f["video_grid_thw"].to(device),
            )
            unique[id(f)] = torch.cat(tuple(out.pooler_output), dim=0)  # (tokens, hidden)
        per_sample.append(unique[id(f)])
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    keep = width + 1  # logits at position p predict token p + 1
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        mm_token_type_ids=mm_types.to(device),
        video_grid_thw=torch.cat([f["video_grid_thw"] for f in feats]).to(device),
        second_per_grid_ts=torch.cat([f["second_per_grid_ts"] for f in feats]).to(device),
        mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=tuple(per_sample))},
        use_cache=False,
        logits_to_keep=keep,
    )
    logits = out.logits  # (B, width + 1, V): the last width + 1 positions
    targets = input_ids[:, seq_len - width :].to(device)  # (B, width): the last width tokens
    rows = []
    for r, c in enumerate(comps):
        # Completion r fills the last k positions; the logits predicting them sit at
        # kept positions width - k .. width - 1. Only those rows go to float32, so the
        # peak is one (k, V) float32 block and left-padding positions are never scored.
        k = len(c)
        lg = logits[r, width - k : width].float()  # (k, V)
        if temperature not in (0.0, 1.0):
            lg = lg / temperature
        tgt = targets[r, width - k :]  # (k,)
        row = lg.gather(-1, tgt[:, None])[:, 0] - lg.logsumexp(-1)  # (k,)
        rows.append(torch.nn.functional.pad(row, (0, width - k)))  # right-padded to (width,)
    return torch.stack(rows)  # (B, width)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def save_model(path: Path, model, processor, cfg=None) -> Path:
    """Save a model (LoRA merged) + processor loadable like any checkpoint, atomically
    (temp folder, then rename); ``cfg`` is saved beside it as ``train_config.yaml``, which
    evaluation and prediction read to feed the model as it was trained."""
    import shutil

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    to_save.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if cfg is not None:
        cfg.save_yaml(tmp / "train_config.yaml")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
