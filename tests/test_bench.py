"""The trainer benchmark: its functions on tiny inputs, and the structure of what it prints.

No timing is asserted; only the bookkeeping (shares that add up, rows that are there).
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from pipeline.runtime import REPO_ROOT


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_trainer", REPO_ROOT / "bench" / "trainer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_help_explains_the_main_options():
    text = bench.build_parser().format_help()
    for option in ("--model", "--steps", "--gpu", "--no-gpu", "--parts", "--set"):
        assert option in text, option


def test_step_split_hand_computed():
    m = {"time/step_s": 2.0, "time/rollout_s": 1.0, "time/reward_s": 0.1,
         "time/forward_backward_s": 0.5, "tokens_per_s": 100.0}  # fmt: skip
    out = bench.step_split(m, prompts=2, generations=4)
    # rollout 1.0/2.0 = 50 %, reward 0.1/2.0 = 5 %, fwd-bwd 0.5/2.0 = 25 %,
    # other = 2.0 - 1.6 = 0.4 s = 20 %; 2 prompts / 2 s = 1/s, x4 generations = 4 completions/s.
    assert out == pytest.approx({"rollout%": 50.0, "reward%": 5.0, "forward_backward%": 25.0,
                                 "other%": 20.0, "step_s": 2.0, "prompts/s": 1.0,
                                 "completions/s": 4.0, "rollout tok/s": 100.0})  # fmt: skip


def test_unknown_part_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--parts", "data,speed", "--workdir", str(tmp_path), "--shards", str(tmp_path)])


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line)]


def test_benchmark_runs_end_to_end_on_tiny_inputs(tmp_path, tiny_dir, capsys):
    """Builds 2 synthetic 2 s videos into shards, times the data path, runs 2 GRPO steps."""
    code = bench.main([
        "--workdir", str(tmp_path), "--model", str(tiny_dir), "--videos", "2", "--seconds", "2",
        "--steps", "2", "--data-samples", "6", "--repeat", "1", "--no-gpu", "--no-progress",
        "--set", "num_generations=2", "per_step_prompts=1", "max_new_tokens=4",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()

    # data part: the baseline row is 1.00x, every other row carries a ratio to it
    data = lines[lines.index(next(x for x in lines if x.startswith("== data path"))) :]
    labels = ["bare JPEG decode (baseline)", "  shard row read (ShardIndex)",
              "  fit_to_budget (resize)", "GroundingDataset.__getitem__",
              "processor step (video_inputs)", "__getitem__ + video_inputs",
              "DataLoader, 0 workers", "DataLoader, 2 workers"]  # fmt: skip
    rows = {lab: next(x for x in data if x.startswith(lab)) for lab in labels}
    assert rows["bare JPEG decode (baseline)"].rstrip().endswith("1.00x")
    for lab, line in rows.items():
        rate, ratio = _numbers(line[len(lab) :])
        assert rate > 0 and ratio > 0, line
    assert any(x.startswith("DataLoader 2 workers / 0 workers:") for x in data)

    # GRPO part: one row per step, then the step of median time among steps 2..; shares sum to 100
    i = lines.index(next(x for x in lines if x.startswith("== GRPO step split")))
    head = lines[i + 1].split()
    assert head[:5] == ["step", "rollout%", "reward%", "fwd+bwd%", "other%"]
    table = [x.split() for x in lines[i + 2 : i + 5]]
    assert [r[0] for r in table] == ["1", "2", "median=2"]
    assert table[2][1:] == table[1][1:]  # the only step after the warm-up is the median one
    for r in table:
        values = [float(v) for v in r[-8:]]
        assert sum(values[:4]) == pytest.approx(100.0, abs=0.05)
        # 2 completions per prompt; both printed to 2 decimals, so each may be off by 0.005
        assert values[6] == pytest.approx(2 * values[5], abs=0.016)
    metrics = (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in metrics] == [1, 2]

    # rollout part: skipped, with the reason
    assert "skipped: --no-gpu given" in out


@pytest.mark.gpu
@pytest.mark.skipif(
    bench.rollout_skip_reason() is not None, reason=str(bench.rollout_skip_reason())
)
def test_rollout_comparison_on_cuda(tmp_path, tiny_dir):
    from trainer.config import load_config

    shards = bench.build_shards(tmp_path, num_videos=2, duration_s=2.0)
    cfg = load_config("configs/tiny_synthetic.yaml", ["num_generations=2", "max_new_tokens=8"])
    r = bench.bench_rollout(shards, str(tiny_dir), cfg, num_prompts=2)
    assert r["requests"] == 2
    for engine in ("hf", "vllm"):  # at most 2 requests x 2 samples x 8 tokens each
        assert 0 < r[f"{engine}_tokens"] <= 2 * 2 * 8 and r[f"{engine}_tok_s"] > 0
