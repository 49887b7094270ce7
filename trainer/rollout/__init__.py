"""Rollout engines (HF generate, vLLM) behind one interface, and the factory that picks one."""

from trainer.rollout.base import (
    Completion,
    RolloutEngine,
    RolloutRequest,
    build_requests,
    check_sampling,
    per_request_seeds,
    request_seeds,
)

__all__ = [
    "Completion",
    "RolloutEngine",
    "RolloutRequest",
    "build_requests",
    "check_sampling",
    "make_engine",
    "per_request_seeds",
    "request_seeds",
]


def make_engine(name: str, model, processor, **kwargs) -> RolloutEngine:
    """``"hf"`` -> HFRolloutEngine(model, processor, **kwargs); ``"vllm"`` -> VLLMRolloutEngine."""
    if name == "hf":
        from trainer.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model, processor, **kwargs)
    if name == "vllm":
        from trainer.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine.from_policy(model, processor, **kwargs)
    raise ValueError(f"unknown rollout engine {name!r}: use 'hf' or 'vllm'")
