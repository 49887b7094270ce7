"""GRPO trainer."""
