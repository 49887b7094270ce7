"""Shared test set-up: offline runtime, CPU threads, and skip helpers for the gpu tier."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.runtime import configure_offline

configure_offline()


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
requires_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install -e '.[gpu]')"
)


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="session", autouse=True)
def mask_index_cache(tmp_path_factory):
    """MeViS mask indexes built by tests go to a temp dir, not the repository's data/cache."""
    from pipeline.adapters import mevis_masks

    cache = tmp_path_factory.mktemp("mevis-masks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mevis_masks, "default_cache_dir", lambda: cache)
        yield cache


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny offline Qwen2.5-VL (truncated vocabulary), built once per session."""
    from trainer.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.getbasetemp() / "tiny-qwen2.5-vl")


SMALL_SYNTHETIC = dict(num_train=4, num_test=2, det_train=0, det_val=0, duration_s=4.0, seed=3)


@pytest.fixture(scope="session")
def detection_only_weights(tmp_path_factory) -> Path:
    """A detection checkpoint made from the committed segmentation one: ``yolo11n.yaml``
    takes its backbone, neck and box/class branches by name (Ultralytics' ``load``)."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    from pipeline.detect import default_weights

    configure_offline()
    folder = tmp_path_factory.mktemp("detector")
    seg = YOLO(str(default_weights()))
    arch = {**yaml_model_load("yolo11n.yaml"), "nc": len(seg.names)}
    (folder / "yolo11n.yaml").write_text(yaml.safe_dump(arch))
    model = YOLO(str(folder / "yolo11n.yaml")).load(str(default_weights()))
    model.model.names = seg.names
    path = folder / "synthetic-yolo11n-det.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def mini_demo(tmp_path_factory):
    """The whole demo chain, scaled down: synthetic data -> shards -> 2 GRPO steps ->
    evaluation with baselines -> overlay and prediction videos. Shared by the end-to-end,
    evaluation and notebook tests so the chain runs once per session."""
    from trainer.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    summary = run_demo(
        root / "out",
        data_dir=root / "data",
        train_overrides=[
            "max_steps=2",
            "num_generations=4",
            "per_step_prompts=2",
            "save_steps=1",
            "cold_start_steps=150",
        ],
        synthetic=SMALL_SYNTHETIC,
        progress=False,
    )
    return {"root": root, "data": root / "data", "out": root / "out", "summary": summary}


# ------------------------------------------------- a small synthetic set in the HC-STVG layout


@pytest.fixture(scope="module")
def hc_root(tmp_path_factory):
    """4 synthetic videos of 4 s in the HC-STVG layout (a module may override it)."""
    from pipeline.synthetic import generate

    root = tmp_path_factory.mktemp("raw")
    generate(root, seed=3, num_train=4, num_test=0, det_train=0, det_val=0,
             duration_s=4.0, formats=("hcstvg",), progress=False)  # fmt: skip
    return root / "hcstvg"


@pytest.fixture(scope="module")
def records(hc_root):
    """The records of ``hc_root``'s train split, read by the real adapter."""
    from pipeline.datasets import iter_records

    return list(iter_records("synthetic", "train", root=hc_root))
