"""Training configuration: one dataclass with defaults and help, YAML files, CLI overrides.

    python -m trainer.train --config configs/tiny_synthetic.yaml --set learning_rate=1e-5 max_steps=10
    python -m trainer.train --config configs/qwen2_5_vl_7b.yaml --set reward.time=2 lora.r=16
    python -m trainer.config --list                    # every key with its help
    python -m trainer.config --config configs/x.yaml   # the resolved configuration

Keys are flat (``reward_time``, ``lora_r``, ``vllm_gpu_memory_utilization``); the
sections ``reward``, ``lora`` and ``vllm`` may also be written nested in YAML or dotted
on the command line (``reward.time=2``). Values are read as the field's type by
:mod:`pipeline.cli` (transformers' ``HfArgumentParser``, shared with the preprocessing
CLI), unknown keys are an error naming the closest valid key, and cross-field checks
run on construction. Defaults are the CPU run: the tiny model on the synthetic shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from pipeline.cli import UnknownConfigKey, closest_key, read_values
from trainer.config_checks import config_problems, is_small_model
from trainer.prompt import TEMPLATES

SECTIONS = ("reward", "lora", "vllm")  # nested YAML / dotted CLI spelling of prefixed keys
# The vision tower's MLP also names its layers gate/up/down_proj: this regex keeps LoRA on the LLM.
LLM_LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _f(default, help: str, choices: Sequence | None = None):
    """A field with its help text (and allowed values), TRL-style; immutable defaults only."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a GRPO run needs; see each field's help (``python -m trainer.config --list``)."""

    # ---- model and data
    model: str = _f(
        "data/models/tiny-qwen2.5-vl",
        "policy checkpoint: a local folder or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct",
    )
    train_shards: str = _f("data/shards/synthetic/train", "folder (or file) of training shards")
    eval_shards: str | None = _f(
        "data/shards/synthetic/test", "shards evaluated every eval_steps (null: none)"
    )
    output_dir: str = _f(
        "data/runs/train", "checkpoints, metrics.jsonl, config.yaml and the final model go here"
    )
    template: str = _f(
        "json",
        "prompt template / answer form (trainer.prompt.TEMPLATES)",
        tuple(TEMPLATES),
    )
    fps: float = _f(2.0, "frames per second given to the model (the paper: 2)")
    max_frames: int = _f(16, "at most this many frames per video (uniformly subsampled beyond)")
    total_pixels: int = _f(
        128 * 28 * 28, "pixel budget over all frames of a video (the paper: 2048*28*28)"
    )

    # ---- rollouts
    rollout: str = _f(
        "hf",
        "rollout engine: 'hf' (transformers generate, CPU/GPU) or 'vllm' (CUDA)",
        ("hf", "vllm"),
    )
    num_generations: int = _f(8, "completions sampled per prompt (the GRPO group size G)")
    per_step_prompts: int = _f(
        2,
        "prompts per micro-batch and rank; one optimiser step sees per_step_prompts x ranks x gradient_accumulation_steps prompts",
    )
    gradient_accumulation_steps: int = _f(
        1, "micro-batches of per_step_prompts prompts accumulated into one optimiser step"
    )
    temperature: float = _f(1.0, "sampling temperature (the paper: 1.0)")
    top_p: float = _f(1.0, "nucleus sampling threshold (1.0: off)")
    max_new_tokens: int = _f(64, "maximum completion length in tokens (the paper: 1024)")

    # ---- optimisation
    max_steps: int = _f(30, "optimiser steps; -1: run num_epochs over the training queries")
    num_epochs: float = _f(1.0, "passes over the training queries when max_steps is -1")
    learning_rate: float = _f(5e-3, "AdamW learning rate (tiny model: ~1e-3..1e-2; 7B: 1e-6)")
    lr_scheduler: str = _f("constant", "learning-rate schedule", ("constant", "cosine", "linear"))
    warmup_ratio: float = _f(0.0, "fraction of the steps spent warming the learning rate up")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    cold_start_steps: int = _f(
        0,
        "supervised steps on ground-truth answers before GRPO (0: off). A model that never "
        "writes a parsable answer gets zero-variance groups and no GRPO update; see trainer.sft",
    )
    cold_start_learning_rate: float = _f(3e-3, "AdamW learning rate of the cold start")
    cold_start_batch_size: int = _f(4, "queries per cold-start step")

    # ---- GRPO
    epsilon_low: float = _f(
        0.2, "lower clip range: ratios below 1 - epsilon_low are clipped (TRL's epsilon)"
    )
    epsilon_high: float = _f(
        0.2, "upper clip range: ratios above 1 + epsilon_high are clipped (DAPO: 0.28)"
    )
    beta: float = _f(
        0.0, "KL coefficient against the reference policy (0: no reference model is loaded)"
    )
    loss_type: str = _f(
        "dapo",
        "loss normalisation: grpo (per sequence), dapo (per token), dr_grpo (constant)",
        ("grpo", "dapo", "dr_grpo"),
    )
    scale_rewards: bool = _f(True, "divide advantages by the group's reward std (false: Dr. GRPO)")
    num_iterations: int = _f(1, "optimiser steps taken on each batch of rollouts (GRPO's mu)")
    skip_zero_variance_groups: bool = _f(
        True, "leave groups whose rewards are all equal (zero advantage) out of the backward pass"
    )

    # ---- reward (section `reward`)
    reward_format: float = _f(1.0, "weight of the format term")
    reward_time: float = _f(1.0, "weight of the temporal IoU term")
    reward_id: float = _f(1.0, "weight of the ID term (exact match; Jaccard for several targets)")
    reward_viou: float = _f(
        0.0, "weight of the optional vIoU term (predicted track vs ground-truth boxes)"
    )
    require_id_in_span: bool = _f(
        False,
        "an ID only counts if its track is present inside the ground-truth span (the paper's definition)",
    )
    max_gap_s: float = _f(
        0.5, "longest track gap (s) interpolated when reading boxes for rewards and metrics"
    )

    # ---- model runtime
    dtype: str = _f(
        "auto",
        "compute dtype ('auto': bfloat16 on CUDA, float32 on CPU); trained weights and AdamW "
        "state stay float32 unless pure_bf16",
        ("auto", "float32", "bfloat16", "float16"),
    )
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    gradient_checkpointing: bool = _f(
        False, "recompute activations in the backward pass (saves memory)"
    )
    freeze_vision: bool = _f(True, "keep the vision encoder frozen")

    # ---- LoRA (section `lora`)
    lora_r: int = _f(0, "LoRA rank; 0 trains the full model")
    lora_alpha: int = _f(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] = field(
        default_factory=lambda: [LLM_LORA_REGEX],
        metadata={
            "help": "modules LoRA wraps: names, or one regex (full match) or 'all-linear' (peft's target_modules)"
        },
    )

    # ---- vLLM (section `vllm`)
    vllm_gpu_memory_utilization: float = _f(
        0.3, "fraction of GPU memory vLLM may take (colocated with training)"
    )
    vllm_enable_sleep_mode: bool = _f(
        False, "offload vLLM weights and KV cache between rollout rounds"
    )
    vllm_max_model_len: int | None = _f(None, "vLLM context length (null: the model's)")
    vllm_tis_cap: float | None = _f(
        2.0, "truncated importance-sampling cap for the vLLM/trainer mismatch (null: off)"
    )
    vllm_tensor_parallel_size: int = _f(
        1,
        "GPUs that share one colocated vLLM engine (tensor parallel); must divide the number of ranks",
    )
    vllm_sleep_level: int = _f(
        1,
        "what vLLM's sleep frees while the trainer steps: 1 offloads its weights to host memory "
        "and drops the KV cache; 2 drops both (the weights are pushed again before each round)",
        (1, 2),
    )
    vllm_metadata_via: str = _f(
        "tuple",
        "how vLLM receives each video's fps and frame indices: 'tuple' ((frames, metadata)) or "
        "'kwargs' (mm_processor_kwargs; for releases older than the pinned vLLM 0.33, which needs the tuple)",
        ("tuple", "kwargs"),
    )

    # ---- run
    seed: int = _f(42, "random seed (prompt order, sampling, initialisation)")
    logging_steps: int = _f(1, "log metrics every this many steps")
    save_steps: int = _f(0, "checkpoint every this many steps (0: only the final model)")
    eval_steps: int = _f(0, "evaluate on eval_shards every this many steps (0: never)")
    report_to: list[str] = field(
        default_factory=lambda: ["jsonl"],
        metadata={"help": "metric sinks: jsonl (always useful), tensorboard"},
    )

    # ---- distributed, precision and memory
    distributed: str = _f(
        "auto",
        "with several processes (torchrun / accelerate launch): ddp (whole model per rank, "
        "gradients averaged) or fsdp2 (parameters, gradients and optimiser state sharded per "
        "layer); auto: fsdp2 when accelerate launch has an FSDP config, else ddp",
        ("auto", "ddp", "fsdp2"),
    )
    fsdp_cpu_offload: bool = _f(
        False,
        "fsdp2 on CUDA: keep the parameter and optimiser-state shards in CPU memory "
        "(the paper's ZeRO-3 offload)",
    )
    pure_bf16: bool = _f(
        False,
        "keep weights and AdamW state in bfloat16 (no float32 master copy; warns): half the "
        "memory, but updates smaller than half a bf16 step (lr 1e-6) round away. Default: "
        "float32 master weights, compute in `dtype`",
    )
    gpu_memory_gib: float | None = _f(
        None,
        "check the memory plan against this much memory per device before loading; default: "
        "the CUDA device's total memory, no check on CPU",
    )

    def __post_init__(self):
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        self.report_to = list(self.report_to)
        self.lora_target_modules = list(self.lora_target_modules)
        problems = config_problems(self)
        if problems:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))
        if self.learning_rate > 1e-4 and not is_small_model(self.model):
            warnings.warn(
                f"learning_rate={self.learning_rate} is a tiny-model rate; real checkpoints "
                f"({self.model}) are trained with ~1e-6 (full) or ~1e-5 (LoRA)",
                stacklevel=2,
            )

    # ---- views used by the training loop
    def reward_weights(self) -> dict[str, float]:
        return {
            "format": self.reward_format,
            "time": self.reward_time,
            "id": self.reward_id,
            "viou": self.reward_viou,
        }

    def lora_kwargs(self) -> dict | None:
        """``peft.LoraConfig`` keyword arguments, or None for full fine-tuning."""
        if self.lora_r == 0:
            return None
        modules = self.lora_target_modules
        single = len(modules) == 1 and not modules[0].isidentifier()  # 'all-linear' or a regex
        return {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": modules[0] if single else list(modules),
        }

    def engine_kwargs(self) -> dict:
        """Extra keyword arguments for the rollout engine (vLLM options; none for 'hf')."""
        if self.rollout != "vllm":
            return {}
        kw = {
            "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
            "enable_sleep_mode": self.vllm_enable_sleep_mode,
            "dtype": "bfloat16" if self.dtype == "auto" else self.dtype,
            "seed": self.seed,
        }
        kw["max_model_len"] = self.vllm_max_model_len  # None: the model's own limit
        kw["tensor_parallel_size"] = self.vllm_tensor_parallel_size
        kw["sleep_level"] = self.vllm_sleep_level
        kw["metadata_via"] = self.vllm_metadata_via
        return kw

    @property
    def prompts_per_step(self) -> int:
        return self.per_step_prompts * self.gradient_accumulation_steps

    def total_steps(self, num_prompts: int) -> int:
        """Optimiser steps of the run for a training set of ``num_prompts`` queries."""
        if self.max_steps > 0:
            return self.max_steps
        if num_prompts <= 0:
            raise ValueError(
                f"num_epochs={self.num_epochs} over {num_prompts} training queries: nothing to train on"
            )
        rounds = math.ceil(self.num_epochs * num_prompts / self.prompts_per_step)
        return max(1, rounds) * self.num_iterations

    # ---- (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    def config_hash(self) -> str:
        """12 hex digits identifying every value (for run folders and manifests)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        import yaml

        header = f"# trainer.config.TrainConfig (config_hash {self.config_hash()})\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save_yaml(self, path: str | Path) -> Path:
        """Write the config atomically (temp file + rename); loadable with :func:`load_config`."""
        from pipeline.shards import atomic_file

        with atomic_file(path, "w") as f:
            f.write(self.to_yaml())
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "dict") -> TrainConfig:
        """Build from a (possibly sectioned) mapping, reading values as the fields' types."""
        return cls(**read_values(cls, _flatten(data, source), source))


# ------------------------------------------------------------------ loading

_FIELDS = [f.name for f in fields(TrainConfig)]
_DOTTED = [f"{s}.{n[len(s) + 1 :]}" for n in _FIELDS for s in SECTIONS if n.startswith(s + "_")]


def _flatten(data: Mapping, source: str) -> dict:
    """Sections (``reward: {time: 2}`` or ``reward.time``) -> flat keys; unknown keys raise."""
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{source}: the configuration must be a mapping of keys to values, got {type(data).__name__}"
        )
    out: dict = {}
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                out.update(_flatten({f"{key}.{sub}": v}, source))
            continue
        name = key.replace(".", "_", 1) if key.split(".", 1)[0] in SECTIONS else key
        if name not in _FIELDS:
            hint = closest_key(key, [*_FIELDS, *_DOTTED])
            raise UnknownConfigKey(f"{source}: unknown config key {key!r}; {hint}")
        out[name] = value
    return out


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["learning_rate=1e-5", "reward.time=2"]`` -> flat, unread ``{key: text}``."""
    out = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"override {item!r} is not KEY=VALUE (e.g. learning_rate=1e-5, reward.time=2)"
            )
        out.update(_flatten({key.strip(): value.strip()}, "--set"))
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- YAML file ``path`` <- ``key=value`` overrides (later wins)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        import yaml

        from pipeline.runtime import resolve

        file = resolve(path)
        if not file.is_file():
            raise FileNotFoundError(f"no config file {path} (looked for {file})")
        loaded = yaml.safe_load(file.read_text()) or {}
        source = str(path)
        data = read_values(TrainConfig, _flatten(loaded, source), source)
    return TrainConfig(**(data | read_values(TrainConfig, parse_overrides(overrides), "--set")))


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config FILE`` and ``--set KEY=VALUE ...`` (repeatable; dotted section keys allowed)."""
    group = parser.add_argument_group(
        "configuration (python -m trainer.config --list shows every key)"
    )
    group.add_argument(
        "--config", help="YAML file of TrainConfig keys (e.g. configs/tiny_synthetic.yaml)"
    )
    group.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set learning_rate=1e-5 max_steps=10 reward.time=2 report_to=jsonl,tensorboard",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return load_config(getattr(args, "config", None), getattr(args, "overrides", None) or ())


def describe_fields() -> str:
    """One line per key: name, type, default, help."""
    types = typing.get_type_hints(TrainConfig)
    lines = []
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        t = types[f.name]
        tp = str(t) if typing.get_args(t) else t.__name__
        lines.append(f"{f.name:30s} {tp:14s} default {default!r:32s} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.config",
        description="Show the training configuration keys or a resolved config.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--list", action="store_true", help="list every key with its type, default and help"
    )
    args = parser.parse_args(argv)
    if args.list:
        print(describe_fields())
        return 0
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))  # exits 2 with the message, no traceback
    print(cfg.to_yaml(), end="")
    return 0


# ------------------------------------------------------------------ inference defaults

INFERENCE_KEYS = ("template", "fps", "max_frames", "total_pixels", "max_new_tokens")


def inference_settings(model: str | Path | None, **explicit) -> dict:
    """How to feed ``model`` at evaluation/prediction time.

    A model trained here carries its ``train_config.yaml``; its template, frame rate,
    frame and pixel budgets and completion length are what the model saw in training.
    Values given explicitly (not None) win; anything still unset takes the paper's
    defaults (``json`` template, 2 fps, 32 frames, 2048·28·28 pixels, 256 tokens).
    """
    settings = {"template": "json", "fps": 2.0, "max_frames": 32, "total_pixels": 2048 * 28 * 28,
                "max_new_tokens": 256}  # fmt: skip
    saved = Path(model) / "train_config.yaml" if model is not None else None
    if saved is not None and saved.is_file():
        cfg = load_config(saved)
        settings.update({k: getattr(cfg, k) for k in INFERENCE_KEYS})
    settings.update({k: v for k, v in explicit.items() if v is not None})
    return settings


if __name__ == "__main__":
    sys.exit(main())
