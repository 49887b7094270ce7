"""Rollout engines (HF generate, vLLM) behind one interface."""

from trainer.rollout.base import Completion, RolloutEngine, RolloutRequest, make_engine

__all__ = ["Completion", "RolloutEngine", "RolloutRequest", "make_engine"]
