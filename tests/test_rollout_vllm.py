"""vLLM rollouts: the pure parts on CPU (colocated layout, engine arguments, the layer-by-layer
weight gather from FSDP2 shards in a 2-process gloo group), and on CUDA machines the engine itself.

The gpu tier runs with ``pip install -e '.[gpu]'`` and ``pytest -m gpu tests/test_rollout_vllm.py``;
the 2-GPU test launches this file under ``torchrun`` (see ``_gpu_worker``).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import load_config
from trainer.plan import memory_plan
from trainer.policy import completion_logprobs, load_policy
from trainer.rollout import RolloutRequest
from trainer.rollout.vllm import (
    ColocateLayout,
    VLLMRolloutEngine,
    llm_kwargs,
    vllm_weight_name,
    weight_batches,
)
from trainer.tiny import ensure_tiny_model


def gpu_test(fn=None, *, gpus: int = 1):
    """Mark a test for the gpu tier: CUDA with ``gpus`` devices and vLLM installed."""

    def mark(f):
        f = pytest.mark.gpu(f)
        f = pytest.mark.skipif(
            not torch.cuda.is_available() or torch.cuda.device_count() < gpus,
            reason=f"needs {gpus} CUDA device(s)",
        )(f)
        return pytest.mark.skipif(
            importlib.util.find_spec("vllm") is None, reason="needs vLLM: pip install -e '.[gpu]'"
        )(f)

    return mark(fn) if fn is not None else mark


VISION_IDS = {4105, 4106, 4107, 4108, 4109}


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """The tiny model with sharpened attention and logits, so that temporal positions matter."""
    tiny = ensure_tiny_model(tmp_path_factory.getbasetemp() / "tiny-qwen2.5-vl")
    model, processor = load_policy(tiny, dtype="float32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and (".q_proj." in name or ".k_proj." in name):
                p.mul_(6.0)
        model.lm_head.weight.mul_(4.0)
    out = tmp_path_factory.mktemp("sharp") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    processor.video_processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(sharp_dir):
    return load_policy(sharp_dir, device="cuda", dtype="bfloat16")


@pytest.fixture(scope="module")
def engine(sharp_dir, hf):
    return VLLMRolloutEngine(
        str(sharp_dir),
        hf[1],
        gpu_memory_utilization=0.3,
        max_model_len=2048,
        dtype="bfloat16",
        enforce_eager=True,
    )


@pytest.fixture(scope="module")
def requests(hf):
    _, processor = hf
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(0)
    # 16 frames -> 8 temporal patches: temporal ids 0, 2, ..., 14 at 2 fps (0 or 1 at "24 fps").
    return [
        RolloutRequest(prompt, rng.integers(0, 256, (16, 56, 56, 3), dtype=np.uint8), 2.0),
        RolloutRequest(prompt, rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8), 1.0),
    ]


def _mean_abs_diff(hf_lp: torch.Tensor, mask: torch.Tensor, completions) -> float:
    vllm_lp = torch.zeros_like(hf_lp)
    for i, c in enumerate(completions):
        vllm_lp[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
    return float(((hf_lp - vllm_lp).abs() * mask).sum() / mask.sum())


def _hf_logprobs(model, processor, requests, completions, fps=None):
    per_request = len(completions) // len(requests)
    reqs = [r for r in requests for _ in range(per_request)]
    with torch.no_grad():
        lp, mask = completion_logprobs(
            model,
            processor,
            [r.prompt for r in reqs],
            [(r.frames, fps or r.fps) for r in reqs],
            [c.token_ids for c in completions],
        )
    return lp.float().cpu(), mask.cpu()


@gpu_test
def test_vllm_logprobs_agree_with_the_hf_training_forward(engine, hf, requests):
    model, processor = hf
    out = engine.generate(requests, num_generations=3, max_new_tokens=16, seed=0)
    assert [len(g) for g in out] == [3, 3]
    flat = [c for g in out for c in g]
    for c in flat:
        assert not VISION_IDS & set(c.token_ids)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    lp, mask = _hf_logprobs(model, processor, requests, flat)
    err = _mean_abs_diff(lp, mask, flat)
    assert err < 0.1, err  # bf16 on both sides
    # vLLM must use the real frame timing, not the 24 fps default of bare frame arrays.
    lp_trap, _ = _hf_logprobs(model, processor, requests, flat, fps=24.0)
    assert err < _mean_abs_diff(lp_trap, mask, flat)
    # Seeded sampling is reproducible.
    again = engine.generate(requests, num_generations=3, max_new_tokens=16, seed=0)
    assert [c.token_ids for g in again for c in g] == [c.token_ids for c in flat]


@gpu_test
def test_processed_logprobs_follow_the_sampling_temperature(engine, hf, requests):
    """vLLM's log-probs are taken after temperature: at T=2 they equal the training
    forward's log-softmax of logits / T (lm_head has no bias, so scaling its weight by 1/T
    divides the logits), and differ clearly from the untempered ones."""
    model, processor = hf
    temperature = 2.0  # a power of 2: dividing the bf16 weight by it is exact
    out = engine.generate(
        requests[:1], num_generations=3, max_new_tokens=16, temperature=temperature, seed=1
    )[0]
    assert model.lm_head.bias is None
    lp_t1, mask = _hf_logprobs(model, processor, requests[:1], out)
    weight = model.lm_head.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.div_(temperature)
    try:
        lp_t, _ = _hf_logprobs(model, processor, requests[:1], out)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    err = _mean_abs_diff(lp_t, mask, out)
    assert err < 0.1, err
    assert err < 0.5 * _mean_abs_diff(lp_t1, mask, out)


@gpu_test
def test_sync_pushes_new_weights_and_survives_sleep(engine, hf, requests):
    model, processor = hf
    greedy = {"num_generations": 1, "max_new_tokens": 12, "temperature": 0.0}
    before = engine.generate(requests[:1], **greedy)[0][0]
    engine.sleep()
    engine.wake_up()
    assert engine.generate(requests[:1], **greedy)[0][0].token_ids == before.token_ids
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p))
        model.lm_head.weight.copy_(0.5 * torch.randn(model.lm_head.weight.shape, generator=gen))
    engine.sleep()  # the trainer's step happens here; sync wakes the engine up
    engine.sync_weights(model)
    after = engine.generate(requests[:1], **greedy)[0][0]
    assert after.token_ids != before.token_ids
    lp, mask = _hf_logprobs(model, processor, requests[:1], [after])
    assert _mean_abs_diff(lp, mask, [after]) < 0.1


@gpu_test
def test_sync_merges_lora_adapters(engine, sharp_dir, requests):
    model, processor = load_policy(
        sharp_dir, device="cuda", dtype="bfloat16", lora={"r": 8, "lora_alpha": 16}
    )
    gen = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter do something
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    q_proj = next(
        p
        for n, p in model.named_parameters()
        if n.endswith("layers.0.self_attn.q_proj.base_layer.weight")
    )
    base_before = q_proj.detach().clone()
    engine.sync_weights(model)
    # The adapter is unmerged again after the push (up to bf16 rounding of merge + unmerge).
    assert torch.allclose(q_proj.detach().float(), base_before.float(), atol=0.02)
    out = engine.generate(requests[:1], num_generations=2, max_new_tokens=12, seed=3)[0]
    lp, mask = _hf_logprobs(model, processor, requests[:1], out)
    assert _mean_abs_diff(lp, mask, out) < 0.1


# --------------------------------------------------------------------------- CPU: the pure parts

REPO = Path(__file__).resolve().parents[1]


def test_tensor_parallel_groups_share_a_seed_and_split_the_world():
    layouts = [ColocateLayout(rank, 8, 2) for rank in range(8)]
    assert [x.group_index for x in layouts] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [x.rank_in_group for x in layouts] == [0, 1] * 4
    assert layouts[0].groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    seeds = [llm_kwargs("m", x, seed=42)["seed"] for x in layouts]
    assert seeds == [42, 42, 43, 43, 44, 44, 45, 45]
    with pytest.raises(ValueError, match="must divide"):
        ColocateLayout(0, 6, 4)
    with pytest.raises(ValueError, match="outside"):
        ColocateLayout(8, 8, 1)


def test_llm_kwargs_use_the_external_launcher_only_with_several_ranks():
    one = llm_kwargs("/m", ColocateLayout(0, 1, 1), max_model_len=None, enforce_eager=True)
    assert "distributed_executor_backend" not in one
    assert one["max_model_len"] is None  # vLLM then takes the model's own limit
    assert one["logprobs_mode"] == "processed_logprobs"  # after temperature, as the trainer scores
    assert one["limit_mm_per_prompt"] == {"image": 0, "video": 1} and one["enforce_eager"] is True
    many = llm_kwargs("/m", ColocateLayout(3, 4, 2), max_model_len=4096, swap_space=0)
    assert many["distributed_executor_backend"] == "external_launcher"
    assert many["tensor_parallel_size"] == 2 and many["max_model_len"] == 4096
    assert many["swap_space"] == 0  # extra vLLM arguments pass through


def test_config_engine_kwargs_are_all_accepted_by_the_engine():
    cfg = load_config(
        "configs/qwen2_5_vl_7b.yaml",
        ["vllm.tensor_parallel_size=2", "vllm.sleep_level=2", "vllm.max_model_len=null"],
    )
    kw = cfg.engine_kwargs()
    assert kw["tensor_parallel_size"] == 2 and kw["sleep_level"] == 2
    assert kw["max_model_len"] is None and kw["metadata_via"] == "tuple"
    accepted = set(inspect.signature(VLLMRolloutEngine).parameters) | set(
        inspect.signature(llm_kwargs).parameters
    )
    assert set(kw) <= accepted, set(kw) - accepted


def test_a_missing_vllm_api_fails_loudly():
    from types import SimpleNamespace

    from trainer.rollout.vllm import REQUIRED_ENGINE_API, REQUIRED_LLM_API, _require

    complete = SimpleNamespace(**{n: lambda *a, **k: None for n in REQUIRED_LLM_API})
    _require(complete, REQUIRED_LLM_API, "LLM")
    with pytest.raises(RuntimeError, match=r"lacks \['reset_encoder_cache'\]"):
        _require(SimpleNamespace(reset_encoder_cache=None), REQUIRED_ENGINE_API, "LLMEngine")
    with pytest.raises(RuntimeError, match="reset_prefix_cache"):
        _require(SimpleNamespace(generate=print, sleep=print), REQUIRED_LLM_API, "LLM")


def test_weight_names_map_back_to_the_checkpoint():
    for wrapped, hf_name in [
        ("base_model.model.model.language_model.layers.0.mlp.up_proj.base_layer.weight",
         "model.language_model.layers.0.mlp.up_proj.weight"),
        ("model.language_model.layers.3._checkpoint_wrapped_module.self_attn.q_proj.bias",
         "model.language_model.layers.3.self_attn.q_proj.bias"),
        ("_orig_mod.lm_head.weight", "lm_head.weight"),
    ]:  # fmt: skip
        assert vllm_weight_name(wrapped) == hf_name


def test_plain_weights_pass_through_one_layer_per_batch(tiny_dir):
    model, _ = load_policy(tiny_dir, dtype="float32")
    params = dict(model.named_parameters())
    batches = list(weight_batches(model))
    assert [n for b in batches for n, _ in b] == list(params)
    for batch in batches:
        units = {_unit(n) for n, _ in batch}
        assert len(units) == 1 and (units != {None} or len(batch) == 1)
        for name, t in batch:  # no copy
            assert t.data_ptr() == params[name].data_ptr() and not t.requires_grad


def _unit(name: str) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str], out: Path, timeout: int) -> list[dict]:
    """Run this file's ``__main__`` under torchrun; each rank writes ``out/rank<r>.json``.
    A fresh rendezvous port per attempt and one retry: about one gloo launch in five aborts
    at start-up on the development machines."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = None
    for _attempt in range(2):
        for f in out.glob("rank*.json"):
            f.unlink()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               __file__, *args, str(out)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        files = sorted(out.glob("rank*.json"))
        if proc.returncode == 0 and len(files) == nproc:
            return [json.loads(f.read_text()) for f in files]
    raise AssertionError(f"torchrun failed twice:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def test_fsdp2_shards_are_gathered_one_layer_at_a_time_and_match_the_plan(tiny_dir, tmp_path):
    """2 gloo ranks, FSDP2 per decoder layer / vision block: the push's weights equal the
    unsharded model's, no earlier batch is alive when the next is gathered, and the shards
    of parameters, gradients and AdamW state after a real step match the memory plan; a
    tensor-parallel group gathers its ranks' prompts and each rank keeps its own outputs."""
    results = _torchrun(2, ["fsdp2-cpu", str(tiny_dir)], tmp_path, timeout=300)
    cfg = load_config("configs/tiny_synthetic.yaml", [f"model={tiny_dir}"])
    plan = memory_plan(cfg, 2, 80, strategy="fsdp2")
    for rank, r in enumerate(results):
        mine = ["p00"] if rank == 0 else ["p10", "p11"]
        assert r["tp_gather"] == [["p00", "p10", "p11"], [0, 10, 11], mine]
        assert r["mismatched"] == [] and r["alive_when_next_gathered"] == 0
        assert r["names"] == results[0]["names"] and len(r["names"]) == r["num_params"]
        assert all(len(units) == 1 for units in r["batch_units"])
        assert r["largest_batch"] <= max(r["largest_unit"], r["largest_root_param"])
        for name, real in r["bytes"].items():
            planned = plan.line(name).gpu
            assert abs(planned - real) <= 0.10 * real, (name, planned, real)


def _fsdp2_cpu_worker(tiny_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, _ = load_policy(tiny_dir, dtype="float32", freeze_vision=True)
    plain = {n: p.detach().clone() for n, p in model.named_parameters()}
    mesh = init_device_mesh("cpu", (world,))
    units = [*model.model.language_model.layers, *model.model.visual.blocks]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    res = {"names": [], "mismatched": [], "batch_units": [], "alive_when_next_gathered": 0}
    res["num_params"] = len(plain)
    res["largest_unit"] = max(sum(p.numel() for p in u.parameters()) for u in units)
    res["largest_root_param"] = max(p.numel() for n, p in plain.items() if _unit(n) is None)
    refs: list = []
    res["largest_batch"] = 0
    for batch in weight_batches(model):
        res["alive_when_next_gathered"] += sum(r() is not None for r in refs)
        refs = [weakref.ref(t) for _, t in batch]
        res["batch_units"].append(sorted({str(_unit(n)) for n, _ in batch}))
        res["largest_batch"] = max(res["largest_batch"], sum(t.numel() for _, t in batch))
        for name, tensor in batch:
            res["names"].append(name)
            if type(tensor) is not torch.Tensor or not torch.equal(tensor, plain[name]):
                res["mismatched"].append(name)
        del batch, tensor
    # Tensor parallelism: both ranks form one engine and submit the group's whole batch.
    engine = VLLMRolloutEngine.__new__(VLLMRolloutEngine)  # the gather needs no vLLM
    engine.layout = ColocateLayout(rank, world, 2)
    engine.tp_group, _ = dist.new_subgroups_by_enumeration(engine.layout.groups)
    mine = [f"p{rank}{i}" for i in range(rank + 1)]  # rank 0: 1 prompt, rank 1: 2
    prompts, seeds, part = engine._gather_group(mine, [10 * rank + i for i in range(rank + 1)])
    res["tp_gather"] = [prompts, seeds, prompts[part]]
    # One real optimiser step, then the bytes this rank holds.
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-3)
    ids = torch.randint(0, 4000, (2, 16), generator=torch.Generator().manual_seed(rank))
    model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean().backward()
    opt.step()

    def nbytes(ts):
        local = [t.to_local() if hasattr(t, "to_local") else t for t in ts]
        return sum(t.numel() * t.element_size() for t in local)

    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    res["bytes"] = {
        "parameters": nbytes(model.parameters()),
        "gradients": nbytes(p.grad for p in trained),
        "optimiser state": nbytes(state),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


# --------------------------------------------------------------------------- gpu: 2 GPUs, torchrun


@gpu_test(gpus=2)
@pytest.mark.parametrize("tp", [1, 2])
def test_two_gpu_colocated_engines_take_pushed_fsdp2_weights_and_sleep(sharp_dir, tmp_path, tp):
    """Each of 2 ranks runs its own engine (external launcher; tp=2: one engine over both).
    After a push from FSDP2 shards vLLM's greedy output changes and equals HF's for the pushed
    weights; sleep() frees GPU memory; a level-2 sleep refuses to generate until the next push."""
    results = _torchrun(2, ["vllm-gpu", str(sharp_dir), str(tp)], tmp_path, timeout=900)
    for r in results:
        assert r["after"] != r["before"], "the push did not change vLLM's output"
        assert r["after"] == r["hf_greedy"], "vLLM and HF disagree on the pushed weights"
        assert r["freed_by_sleep"] > 0.5 * r["vllm_budget"], r
        assert r["refused_after_level2"] and r["after_level2_push"] == r["after"]
    if tp == 2:  # one engine: both ranks see the same outputs
        assert results[0]["after"] == results[1]["after"]


def _gpu_requests(processor) -> list[RolloutRequest]:
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which ID?"}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    frames = np.random.default_rng(0).integers(0, 256, (16, 56, 56, 3), dtype=np.uint8)
    return [RolloutRequest(prompt, frames, 2.0)]


def _vllm_gpu_worker(sharp_dir: str, tp: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from trainer.rollout.hf import HFRolloutEngine

    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, processor = load_policy(sharp_dir, device=f"cuda:{local}", dtype="float32")
    mesh = init_device_mesh("cuda", (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in [*model.model.language_model.layers, *model.model.visual.blocks]:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    engine = VLLMRolloutEngine(
        sharp_dir, processor, tensor_parallel_size=int(tp), gpu_memory_utilization=0.25,
        max_model_len=2048, dtype="bfloat16", enforce_eager=True, enable_sleep_mode=True,
    )  # fmt: skip
    requests = _gpu_requests(processor)
    greedy = {"num_generations": 1, "max_new_tokens": 12, "temperature": 0.0}
    res = {"before": engine.generate(requests, **greedy)[0][0].token_ids}
    gen = torch.Generator(device="cpu").manual_seed(100 + rank)
    with torch.no_grad():  # every rank changes its own shard
        for p in model.parameters():
            shard = p.to_local()
            shard.add_(0.02 * torch.randn(shard.shape, generator=gen).to(shard))
        lm_head = model.lm_head.weight.to_local()
        lm_head.copy_(0.5 * torch.randn(lm_head.shape, generator=gen).to(lm_head))
    torch.cuda.synchronize()
    free_awake, total = torch.cuda.mem_get_info()
    engine.sleep()
    res["freed_by_sleep"] = torch.cuda.mem_get_info()[0] - free_awake
    res["vllm_budget"] = 0.25 * total
    engine.sync_weights(model)
    res["after"] = engine.generate(requests, **greedy)[0][0].token_ids
    full = {n: t.cpu() for batch in weight_batches(model) for n, t in batch}
    reference, _ = load_policy(sharp_dir, device=f"cuda:{local}", dtype="bfloat16")
    missing, unexpected = reference.load_state_dict(full, strict=False)
    assert not unexpected and not set(missing) & set(dict(reference.named_parameters()))
    hf = HFRolloutEngine(reference, processor).generate(requests, **greedy)
    res["hf_greedy"] = hf[0][0].token_ids
    engine.sleep_level = 2
    engine.sleep()
    try:
        engine.generate(requests, **greedy)
        res["refused_after_level2"] = False
    except RuntimeError:
        res["refused_after_level2"] = True
    engine.sync_weights(model)
    res["after_level2_push"] = engine.generate(requests, **greedy)[0][0].token_ids
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


if __name__ == "__main__":  # the torchrun workers of the multi-process tests above
    workers = {"fsdp2-cpu": _fsdp2_cpu_worker, "vllm-gpu": _vllm_gpu_worker}
    workers[sys.argv[1]](*sys.argv[2:])
