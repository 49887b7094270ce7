"""Shared test set-up: offline runtime, CPU threads, and skip helpers for the gpu tier."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.runtime import configure_offline  # noqa: E402

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
