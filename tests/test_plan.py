"""The memory plan: its numbers against tensors actually allocated, refusals, the shipped configs."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.model_sizes import KNOWN_ARCHITECTURES, load_model_config, model_sizes
from trainer.plan import assert_fits, main, memory_plan
from trainer.policy import load_policy


def _tiny_cfg(tiny_dir, **overrides):
    sets = [f"model={tiny_dir}", *(f"{k}={v}" for k, v in overrides.items())]
    return load_config("configs/tiny_synthetic.yaml", sets)


def _allocated_after_adamw_step(model) -> dict[str, int]:
    """Bytes of parameters, gradients and AdamW state after one real optimiser step."""
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-3)
    loss = sum(p.float().square().sum() for p in trained)
    loss.backward()
    opt.step()

    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "parameters": nbytes(model.parameters()),
        "gradients": nbytes(p.grad for p in trained),
        "optimiser state": nbytes(state),
    }


@pytest.mark.parametrize("lora_r", [0, 8])
def test_plan_matches_bytes_allocated_by_the_tiny_model(tiny_dir, lora_r):
    cfg = _tiny_cfg(tiny_dir, lora_r=lora_r)
    plan = memory_plan(cfg, world_size=1, gpu_memory_gib=80)
    model, _ = load_policy(
        tiny_dir, dtype="float32", lora=cfg.lora_kwargs(), freeze_vision=cfg.freeze_vision
    )
    measured = _allocated_after_adamw_step(model)
    for name, real in measured.items():
        planned = plan.line(name).gpu
        assert real > 0 and abs(planned - real) <= 0.10 * real, (name, planned, real)
    sizes = model_sizes(tiny_dir, lora=cfg.lora_kwargs(), freeze_vision=cfg.freeze_vision)
    assert sizes.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sizes.total == sum(p.numel() for p in model.parameters())
    assert plan.line("reference model").gpu == 0  # beta = 0 (and LoRA): no copy


def test_sharding_and_offload_divide_the_state(tiny_dir):
    cfg = _tiny_cfg(tiny_dir, beta=0.04)
    one = memory_plan(cfg, 1, 80, strategy="fsdp2")
    four = memory_plan(cfg, 4, 80, strategy="fsdp2")
    off = memory_plan(cfg, 4, 80, strategy="fsdp2", cpu_offload=True)
    for name in ("parameters", "gradients", "optimiser state", "reference model"):
        assert one.line(name).gpu > 0
        assert four.line(name).gpu == pytest.approx(one.line(name).gpu / 4)
        assert off.line(name).gpu == 0 and off.line(name).host == pytest.approx(four.line(name).gpu)
    ddp = memory_plan(cfg, 4, 80, strategy="ddp")
    assert ddp.line("parameters").gpu == one.line("parameters").gpu
    assert ddp.line("gradients").gpu == pytest.approx(2 * one.line("gradients").gpu)  # buckets
    with pytest.raises(ValueError, match="cpu_offload"):
        memory_plan(cfg, 4, 80, strategy="ddp", cpu_offload=True)


def test_checkpointing_shrinks_activations_and_beta_zero_drops_the_reference(tiny_dir):
    plan = memory_plan(_tiny_cfg(tiny_dir, beta=0.04, gradient_checkpointing=True), 1, 80)
    assert 0 < plan.activations_with_checkpointing < plan.activations_without_checkpointing
    assert plan.line("activations").gpu == plan.activations_with_checkpointing
    assert plan.line("reference model").gpu == plan.line("parameters").gpu  # fp32 tiny model


def test_known_architectures_count_the_published_parameters():
    # Qwen2.5-VL-7B-Instruct has 8,292,166,656 parameters, the 3B 3,754,622,976 (model cards).
    for hub_id, total in [
        ("Qwen/Qwen2.5-VL-7B-Instruct", 8_292_166_656),
        ("Qwen/Qwen2.5-VL-3B-Instruct", 3_754_622_976),
    ]:
        _, source = load_model_config(hub_id)
        assert source in ("the built-in table", "the HF cache")
        assert model_sizes(hub_id).total == total
    assert set(KNOWN_ARCHITECTURES) == {
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "Qwen/Qwen2.5-VL-3B-Instruct",
    }
    with pytest.raises(FileNotFoundError, match="built-in architectures"):
        load_model_config("nobody/no-such-model")


def test_a_config_that_cannot_fit_is_refused_with_the_numbers():
    cfg = load_config("configs/qwen2_5_vl_7b.yaml")
    with pytest.raises(ValueError) as err:
        assert_fits(cfg, world_size=1, gpu_memory_gib=80)
    text = str(err.value)
    assert "DOES NOT FIT" in text and "optimiser state" in text and "parameters" in text
    # 8.29e9 fp32 weights + fp32 gradients + two fp32 moments on one GPU: 124 GiB before anything else.
    plan = memory_plan(cfg, 1, 80)
    state = sum(plan.line(n).gpu for n in ("parameters", "gradients", "optimiser state"))
    assert state == pytest.approx(8_292_166_656 * 16, rel=1e-3)
    # vLLM cannot start when its KV cache cannot hold one sequence of the model's full length.
    small = ["vllm.gpu_memory_utilization=0.25"]
    fitted = load_config("configs/qwen2_5_vl_7b.yaml", [*small, "vllm.max_model_len=16384"])
    assert memory_plan(fitted, 8, 80).fits
    full_length = load_config("configs/qwen2_5_vl_7b.yaml", [*small, "vllm.max_model_len=null"])
    refused = memory_plan(full_length, 8, 80)
    assert not refused.fits and any("128000-token" in p for p in refused.problems)


@pytest.mark.parametrize(
    ("config", "gpus"), [("configs/qwen2_5_vl_7b.yaml", 8), ("configs/qwen2_5_vl_3b_lora.yaml", 1)]
)
def test_shipped_configs_fit_their_stated_hardware(config, gpus, capsys):
    assert main(["--config", config, "--gpus", str(gpus), "--gpu-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "vLLM KV cache" in out
    assert main(["--config", config, "--gpus", str(gpus), "--gpu-memory-gib", "16"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_train_refuses_a_config_the_plan_says_cannot_fit_before_loading(tiny_dir, tmp_path):
    from trainer.train import train

    out = tmp_path / "run"
    cfg = load_config(
        "configs/tiny_synthetic.yaml",
        [f"model={tiny_dir}", f"output_dir={out}", "gpu_memory_gib=0.001", "max_steps=1"],
    )
    with pytest.raises(ValueError, match="DOES NOT FIT") as err:
        train(cfg, progress=False)
    assert "optimiser state" in str(err.value)
    assert not out.exists()  # refused before the run folder, the model or the shards were touched


def test_plan_follows_pure_bf16(tiny_dir):
    cfg = load_config("configs/tiny_synthetic.yaml", [f"model={tiny_dir}"])
    bf16 = load_config(
        "configs/tiny_synthetic.yaml", [f"model={tiny_dir}", "pure_bf16=true", "dtype=bfloat16"]
    )
    full, half = memory_plan(cfg, 1, 80), memory_plan(bf16, 1, 80)
    for name in ("parameters", "gradients", "optimiser state"):
        # optimiser state also holds AdamW's 4-byte step counter per tensor, so not exactly 1/2
        assert half.line(name).gpu == pytest.approx(full.line(name).gpu / 2, rel=0.02)
