"""Checkpoints that survive faults: sharded state, safe loading, exact resume.

A checkpoint folder ``checkpoint-<step>/`` holds

- ``state/``: the trainable parameters and the optimiser state, written with
  ``torch.distributed.checkpoint`` (each rank writes its own shards; read back under the
  same number of ranks);
- ``trainer_state.pt``: scheduler, step, data position and every rank's RNG state, as
  tensors and plain numbers only, so it is read with ``torch.load(weights_only=True)``
  (a checkpoint from elsewhere cannot run code);
- ``config.yaml`` and ``checkpoint.json`` (every file's size, written last).

It is written into ``checkpoint-<step>.tmp`` and renamed when complete; leftover ``.tmp``
folders (a kill during a save) are ignored and removed on resume. A checkpoint whose files
do not match ``checkpoint.json`` (a truncated file) or whose ``trainer_state.pt`` does not
load is named in a message and the previous complete one is used.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.distributed import Dist, barrier, gather_objects

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)$")
RUN_FILES = ("metrics.jsonl", "tensorboard", "final", "config.yaml", "eval")


@dataclass
class TrainState:
    """Everything beyond model/optimizer/scheduler needed to continue exactly."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0
    position: int = 0  # next index into this epoch's order


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (the message names it and why)."""


# ------------------------------------------------------------------ RNG as tensors


def rng_state() -> dict:
    """This process's RNG states as tensors and plain numbers (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ finding checkpoints


def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders, oldest first (``.tmp`` and other names ignored)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def clean_partial(output_dir: Path) -> list[Path]:
    """Remove ``checkpoint-*.tmp`` folders left by a kill during a save; returns them."""
    partial = [p for p in Path(output_dir).glob("checkpoint-*.tmp") if p.is_dir()]
    for p in partial:
        print(f"removing the incomplete checkpoint {p} (a save was interrupted)", file=sys.stderr)
        shutil.rmtree(p)
    return partial


def check_fresh_output(output_dir: Path, overwrite: bool, delete: bool = True) -> None:
    """A fresh run may not start in a folder holding checkpoints, unless ``overwrite``
    (then, where ``delete``, the previous run's checkpoints, metrics and final model are
    removed: one rank deletes, the others only check)."""
    output_dir = Path(output_dir)
    old = list_checkpoints(output_dir) + sorted(output_dir.glob("checkpoint-*.tmp"))
    if not old:
        return
    if not overwrite:
        raise SystemExit(
            f"{output_dir} already holds {len(old)} checkpoint(s) ({old[-1].name}): "
            "continue it with --resume, or start again with --overwrite (deletes them)"
        )
    if not delete:
        return
    for p in old:
        shutil.rmtree(p)
    for name in RUN_FILES:
        p = output_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _manifest(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "checkpoint.json"
    }


def verify(ckpt: Path) -> dict:
    """Raise :class:`CheckpointError` unless ``ckpt`` is complete; return its trainer state."""
    info = ckpt / "checkpoint.json"
    if not info.is_file():
        raise CheckpointError(f"{ckpt} has no checkpoint.json (not a complete checkpoint)")
    expected = json.loads(info.read_text())["files"]
    actual = _manifest(ckpt)
    bad = [f"{k} ({actual.get(k, 'missing')} bytes, expected {v})"
           for k, v in expected.items() if actual.get(k) != v]  # fmt: skip
    if bad:
        raise CheckpointError(f"{ckpt}: truncated or missing files: {', '.join(bad)}")
    try:
        return torch.load(ckpt / "trainer_state.pt", weights_only=True)
    except Exception as err:  # a damaged pickle raises many kinds
        raise CheckpointError(f"{ckpt}/trainer_state.pt cannot be read: {err}") from err


def find_resumable(output_dir: Path, resume: str | bool) -> list[Path]:
    """Checkpoints to try, best first: the given folder, or every complete-looking one of
    ``output_dir`` newest first (the caller falls back along the list)."""
    if resume not in (True, "latest"):
        return [Path(resume)]
    found = list_checkpoints(output_dir)[::-1]
    if not found:
        raise SystemExit(f"--resume: no checkpoint-* folder in {output_dir}")
    return found


# ------------------------------------------------------------------ save / load


@contextmanager
def _single_process_quiet():
    """torch.distributed.checkpoint warns when one process saves alone: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    return get_state_dict(model, optimizer, options=options), options


def save_checkpoint(path: Path, run_state: dict, model, optimizer, dist: Dist, cfg) -> None:
    """Collective: every rank writes its shards of ``state/``; rank 0 the rest, then renames."""
    import torch.distributed.checkpoint as dcp

    tmp = path.with_name(path.name + ".tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    (model_sd, optim_sd), _ = _dcp_state(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "state"))
    rngs = gather_objects(rng_state(), dist)
    barrier(dist)
    if dist.is_main:
        torch.save({**run_state, "rng": rngs, "world_size": dist.world_size},
                   tmp / "trainer_state.pt")  # fmt: skip
        cfg.save_yaml(tmp / "config.yaml")
        (tmp / "checkpoint.json").write_text(json.dumps({"files": _manifest(tmp)}, indent=1))
        if path.exists():  # a broken one this run fell back from
            shutil.rmtree(path)
        tmp.rename(path)
    barrier(dist)


def load_checkpoint(ckpt: Path, model, optimizer, dist: Dist) -> dict:
    """Load ``ckpt`` into ``model``/``optimizer`` and this rank's RNG; return the trainer
    state (``step``, ``epoch``, ``position``, ``scheduler``). Raises :class:`CheckpointError`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    blob = verify(ckpt)
    if blob["world_size"] != dist.world_size:
        raise SystemExit(
            f"{ckpt} was written by {blob['world_size']} rank(s); resume it with the same "
            f"number (this run has {dist.world_size})"
        )
    (model_sd, optim_sd), _ = _dcp_state(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(ckpt / "state"))
    except Exception as err:
        raise CheckpointError(f"{ckpt}/state cannot be read: {err}") from err
    # frozen parameters are not in the checkpoint: they keep the weights loaded from the base
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=options)  # fmt: skip
    set_rng_state(blob["rng"][dist.rank])
    return blob


def resume_from(candidates: list[Path], model, optimizer, dist: Dist) -> tuple[Path, dict]:
    """Load the first usable checkpoint of ``candidates``, saying why others were skipped."""
    for i, ckpt in enumerate(candidates):
        try:
            return ckpt, load_checkpoint(ckpt, model, optimizer, dist)
        except CheckpointError as err:
            rest = candidates[i + 1 :]
            if not rest:
                raise SystemExit(f"--resume: no usable checkpoint; last problem: {err}") from err
            if dist.is_main:
                print(f"{err}\nfalling back to {rest[0]}", file=sys.stderr)
    raise SystemExit("--resume: no checkpoint to resume from")


def cut_metrics(path: Path, step: int) -> None:
    """Keep only the metric rows up to ``step`` (rows logged after the checkpoint are
    produced again by the resumed run)."""
    if not path.is_file():
        return
    from pipeline.shards import atomic_file

    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]  # fmt: skip
    with atomic_file(path, "w") as f:
        f.writelines(line + "\n" for line in keep)


# ------------------------------------------------------------------ the model as HF folder


def _merged_lora_state(model) -> dict[str, torch.Tensor]:
    """The base model's weights with the LoRA adapter merged in, without unloading it."""
    model.merge_adapter()
    try:
        base = model.get_base_model()
        return {k.replace(".base_layer.", "."): v.detach().cpu().clone()
                for k, v in base.state_dict().items() if "lora_" not in k}  # fmt: skip
    finally:
        model.unmerge_adapter()


def save_hf_model(path: Path, model, processor, cfg, dist: Dist, dtype: torch.dtype) -> Path:
    """Save the model as a Hugging Face folder (LoRA merged, floating weights in ``dtype``)
    that :func:`trainer.policy.load_policy` and ``trainer.evaluate`` load; atomically, by
    rank 0. Collective under FSDP2 (the shards are gathered)."""
    from trainer.distributed import full_state_dict

    path = Path(path)
    if hasattr(model, "merge_adapter"):
        state = _merged_lora_state(model) if dist.is_main else {}
        target = model.get_base_model()
    else:
        state = full_state_dict(model, dist) if dist.strategy == "fsdp2" or dist.is_main else {}
        target = model
    if dist.is_main:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        target.save_pretrained(tmp, state_dict=state)
        processor.save_pretrained(tmp)
        cfg.save_yaml(tmp / "train_config.yaml")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    barrier(dist)
    return path
