"""Several processes (gloo on CPU, the tiny model): the same step as one process, exact resume.

Each test launches ``tests/dist_worker.py`` under ``torchrun --standalone`` (a fresh
rendezvous port every launch). About one launch in five of a gloo process group aborts
at start-up on this kind of machine (SIGABRT before any work), so a launch that fails
is retried once; a second failure fails the test with both outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.runtime import REPO_ROOT
from pipeline.shards import make_row, write_shard

WORKER = REPO_ROOT / "tests" / "dist_worker.py"


def _row(k: int) -> dict:
    n, h, w = 6, 56, 84
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), (20 * k, 10 * i, 90), np.uint8)
        f[10:30, 10 + 5 * k : 30 + 5 * k] = 255
        from io import BytesIO

        from PIL import Image

        buf = BytesIO()
        Image.fromarray(f).save(buf, format="JPEG")
        frames.append(buf.getvalue())
    times = np.arange(n) / 2.0
    tracks = [Track(1, "person", times, np.tile([10, 10, 30, 30], (n, 1))),
              Track(2, "ball", times, np.tile([40, 5, 60, 25], (n, 1)))]  # fmt: skip
    gt = GTObject(0, [0.5, 1.0], [[10, 10, 30, 30], [10, 10, 30, 30]])
    query = QueryRecord(f"q{k}", f"the object number {k}", "referring", (0.5, 1.5), (gt,),
                        (1 + k % 2,), 0.9)  # fmt: skip
    return make_row(video_id=f"v{k}", dataset="synthetic", split="train", width=w, height=h,
                    out_fps=2.0, track_fps=2.0, native_fps=2.0, frame_times_s=times,
                    frames=frames, tracks=tracks, queries=[query])  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist-shards")
    write_shard(folder / "part-000.parquet", [_row(k) for k in range(8)])
    return folder


def config(tiny_dir, shards, out, **over) -> dict:
    return {"model": str(tiny_dir), "train_shards": str(shards), "eval_shards": None,
            "output_dir": str(out), "device": "cpu", "dtype": "float32", "num_generations": 4,
            "per_step_prompts": 2, "max_new_tokens": 8, "max_frames": 4,
            "total_pixels": 4 * 28 * 28 * 4, "learning_rate": 1e-2, "temperature": 1.0,
            "cold_start_steps": 0, "report_to": ["jsonl"], "max_steps": 3, **over}  # fmt: skip


def launch(nproc: int, mode: str, cfg: dict, out, *extra: str, expect_ok: bool = True):
    """Run the worker under ``nproc`` processes (plain python for 1); retry a failed launch once."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / f"config-{mode}.json"
    cfg_file.write_text(json.dumps(cfg))
    args = [str(WORKER), mode, str(cfg_file), str(out), *extra]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *args]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    outputs = []
    for _attempt in range(2):
        p = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        outputs.append(p.stdout[-3000:] + p.stderr[-6000:])
        if p.returncode == 0 or not expect_ok:
            return p
    raise AssertionError("worker failed twice:\n" + "\n----\n".join(outputs))


LR = 1e-2


@pytest.fixture(scope="module")
def one_process_step(tiny_dir, shards, tmp_path_factory):
    """Weights after one step on the fixed round in one process (all 4 prompts)."""
    out = tmp_path_factory.mktemp("one-process")
    base = config(tiny_dir, shards, out / "run", freeze_vision=False, learning_rate=LR)
    launch(1, "step", {**base, "per_step_prompts": 4}, out)
    return base, torch.load(out / "weights.pt")


@pytest.mark.parametrize(
    "strategy",
    [pytest.param("ddp", marks=pytest.mark.slow), "fsdp2"],  # ~1 min each
)
def test_one_step_on_fixed_rollouts_equals_one_process(one_process_step, tiny_dir, tmp_path,
                                                       strategy):  # fmt: skip
    """4 prompts x 4 completions (one zero-variance group, left out of the loss), one AdamW
    step: 1 process with all 4 prompts and 2 processes with 2 each give the same weights."""
    base, one = one_process_step
    launch(2, "step", {**base, "per_step_prompts": 2, "distributed": strategy}, tmp_path)
    two = torch.load(tmp_path / "weights.pt")
    from trainer.policy import load_policy

    initial = load_policy(tiny_dir, dtype="float32")[0].state_dict()
    assert one.keys() == two.keys() == initial.keys()
    moved = 0
    for k in one:
        # Adam's first step is ~lr * sign(grad): where a gradient is near Adam's eps, fp32
        # rounding of the summation order moves a weight by a sliver of lr. Nearly all
        # weights agree to fp32 precision; none differs by more than 1e-3 of an update.
        diff = (two[k] - one[k]).abs()
        assert float(diff.max()) <= 1e-3 * LR, k
        assert float((diff > 1e-6).float().mean()) < 1e-3, k
        moved += not torch.equal(one[k], initial[k])
    assert moved > len(one) // 2  # the step did change the weights (text and vision)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_process_run_killed_in_a_save_resumes_exactly(tiny_dir, shards, tmp_path):
    """2 processes, 3 steps with real rollouts and a checkpoint every step. A run killed
    in the middle of saving step 3 and resumed ends with the weights and metrics of an
    uninterrupted run; the ranks drew disjoint prompts; rank 0 alone wrote the logs."""
    base = config(tiny_dir, shards, tmp_path / "unused", max_steps=3, save_steps=1, per_step_prompts=1,
                  distributed="ddp", temperature=1.5)  # fmt: skip
    straight = {**base, "output_dir": str(tmp_path / "straight" / "run")}
    launch(2, "train", straight, tmp_path / "straight")
    broken = {**base, "output_dir": str(tmp_path / "broken" / "run")}
    p = launch(2, "train", broken, tmp_path / "broken", "--kill-in-save", "3", expect_ok=False)
    run = tmp_path / "broken" / "run"
    if p.returncode == 0 or not (run / "checkpoint-2").exists():  # a start-up abort: again
        p = launch(2, "train", broken, tmp_path / "broken", "--kill-in-save", "3",
                   expect_ok=False)  # fmt: skip
    assert p.returncode != 0 and (run / "checkpoint-3.tmp").exists()
    assert not (run / "final").exists()
    launch(2, "train", broken, tmp_path / "broken", "--resume")

    from safetensors.torch import load_file

    w_straight = load_file(tmp_path / "straight" / "run" / "final" / "model.safetensors")
    w_resumed = load_file(run / "final" / "model.safetensors")
    assert w_straight.keys() == w_resumed.keys()
    for k in w_straight:
        torch.testing.assert_close(w_resumed[k], w_straight[k], rtol=0, atol=1e-6, msg=k)
    m_straight = _rows(tmp_path / "straight" / "run" / "metrics.jsonl")
    m_resumed = _rows(run / "metrics.jsonl")
    assert [m["step"] for m in m_resumed] == [m["step"] for m in m_straight] == [1, 2, 3]
    for x, y in zip(m_straight, m_resumed):
        for key in ("reward/total", "loss", "grad_norm", "completion_length"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), key
    assert any(m["grad_norm"] > 0 for m in m_straight)  # the weights did move
    # disjoint prompts: per round, the two ranks drew different dataset indices
    r0 = json.loads((tmp_path / "straight" / "prompts-rank0.json").read_text())
    r1 = json.loads((tmp_path / "straight" / "prompts-rank1.json").read_text())
    assert len(r0) == len(r1) == 3
    for a, b in zip(r0, r1):
        assert not set(a) & set(b)
    # one writer: one metrics row per step, one final model; both ranks' shards per checkpoint
    names = sorted(p.name for p in (run / "checkpoint-3" / "state").iterdir())
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_bench_scaling_ratios_hand_computed():
    """bench/trainer.py --parts scaling: ratios of median step times (no timing asserted)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_trainer", REPO_ROOT / "bench" / "trainer.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # 1 process: 10 s/step with the global batch, 6 s with half of it; 2 processes: 8 s.
    # speedup 10 / 8 = 1.25, efficiency 1.25 / 2 = 0.625, weak-scaling 6 / 8 = 0.75
    assert bench.scaling_summary(10.0, 6.0, 8.0) == pytest.approx(
        {"speedup": 1.25, "efficiency": 0.625, "weak_efficiency": 0.75}
    )
    rows = [{"time/step_s": t} for t in (30.0, 4.0, 9.0, 5.0)]  # the first is warm-up
    assert bench.median_step_s(rows) == 5.0
    assert "scaling" in bench.PARTS and "scaling" not in bench.DEFAULT_PARTS


@pytest.mark.slow
def test_lora_under_ddp_uses_the_policy_without_adapter_as_reference(tiny_dir, shards, tmp_path):
    """LoRA + beta > 0 on 2 processes: the KL against the adapter-disabled policy is 0 at
    the first step (the adapter starts as a no-op) and grows after; the final folder is a
    plain model in which only the LoRA-wrapped projections changed."""
    cfg = config(tiny_dir, shards, tmp_path / "run", lora_r=4, beta=0.04, learning_rate=0.05,
                 per_step_prompts=1, temperature=1.5, distributed="ddp")  # fmt: skip
    launch(2, "train", cfg, tmp_path)
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0 and rows[0]["grad_norm"] > 0
    from trainer.policy import load_policy

    final = load_policy(tmp_path / "run" / "final", dtype="float32")[0].state_dict()
    initial = load_policy(tiny_dir, dtype="float32")[0].state_dict()
    assert final.keys() == initial.keys()
    changed = {k for k in final if not torch.equal(final[k], initial[k])}
    assert changed and all("language_model" in k and k.endswith("proj.weight") for k in changed)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"
)
def test_fsdp2_with_cpu_offload_on_two_gpus_matches_one_gpu(tiny_dir, shards, tmp_path):
    """NCCL, one GPU per rank (LOCAL_RANK), shards and AdamW state offloaded to CPU, bf16
    compute over float32 master weights: the step on 2 GPUs matches the step on 1."""
    base = config(tiny_dir, shards, tmp_path / "run", freeze_vision=False, learning_rate=LR,
                  device="cuda", dtype="bfloat16")  # fmt: skip
    launch(1, "step", {**base, "per_step_prompts": 4}, tmp_path / "one")
    launch(2, "step", {**base, "per_step_prompts": 2, "distributed": "fsdp2",
                       "fsdp_cpu_offload": True}, tmp_path / "two")  # fmt: skip
    one = torch.load(tmp_path / "one" / "weights.pt")
    two = torch.load(tmp_path / "two" / "weights.pt")
    assert one.keys() == two.keys()
    for k in one:
        assert one[k].dtype == torch.float32  # the master copy
        # bf16 compute: a gradient near Adam's eps may change sign between reduction orders
        far = ((two[k] - one[k]).abs() > 0.1 * LR).float().mean()
        assert float(far) < 0.01, k
