"""Training config: every shipped YAML loads, overrides coerce, bad values explain themselves."""

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from pipeline.runtime import REPO_ROOT
from trainer.config import (
    LLM_LORA_REGEX,
    TrainConfig,
    UnknownConfigKey,
    add_config_args,
    config_from_args,
    describe_fields,
    load_config,
    main,
)

# Every trainer config, at any depth; configs/accelerate/ holds Accelerate's own launch files.
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def test_the_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny_synthetic.yaml", "qwen2_5_vl_7b.yaml", "qwen2_5_vl_3b_lora.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a tiny-model learning rate on a real checkpoint
        cfg = load_config(path)
    saved = cfg.save_yaml(tmp_path / "config.yaml")
    again = load_config(saved)
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert cfg.total_steps(100) >= 1


def test_shipped_recipes_say_what_they_claim():
    tiny = load_config(REPO_ROOT / "configs/tiny_synthetic.yaml")
    assert (tiny.rollout, tiny.device, tiny.num_generations, tiny.model) == (
        "hf",
        "cpu",
        8,
        "data/models/tiny-qwen2.5-vl",
    )
    paper = load_config(REPO_ROOT / "configs/qwen2_5_vl_7b.yaml")
    assert paper.model == "Qwen/Qwen2.5-VL-7B-Instruct" and paper.rollout == "vllm"
    assert (
        paper.num_generations,
        paper.learning_rate,
        paper.per_step_prompts,
        paper.num_epochs,
    ) == (8, 1e-6, 1, 1.0)
    assert (paper.max_new_tokens, paper.temperature, paper.dtype) == (1024, 1.0, "bfloat16")
    assert paper.reward_weights() == {"format": 1.0, "time": 1.0, "id": 1.0, "viou": 0.0}
    assert paper.require_id_in_span and paper.lora_kwargs() is None
    lora = load_config(REPO_ROOT / "configs/qwen2_5_vl_3b_lora.yaml")
    assert lora.lora_kwargs()["target_modules"] == LLM_LORA_REGEX  # a regex string, as peft expects
    assert lora.engine_kwargs()["enable_sleep_mode"] is True


def test_defaults_are_the_cpu_run():
    cfg = TrainConfig()
    assert (
        cfg.model == "data/models/tiny-qwen2.5-vl"
        and cfg.train_shards == "data/shards/synthetic/train"
    )
    assert cfg.output_dir == "data/runs/train" and cfg.rollout == "hf" and cfg.engine_kwargs() == {}


def test_overrides_are_coerced_to_field_types():
    cfg = load_config(
        None,
        [
            "learning_rate=1e-5",  # YAML would read this as a string
            "max_steps=10",
            "scale_rewards=false",
            "report_to=jsonl,tensorboard",
            "eval_shards=null",
            "reward.time=2",
            "lora.r=8",
            "lora.target_modules=[q_proj, v_proj]",
            "vllm.tis_cap=none",
            "model=Qwen/Qwen2.5-VL-3B-Instruct",
            "output_dir=123",
        ],
    )
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.max_steps == 10 and cfg.scale_rewards is False
    assert cfg.report_to == ["jsonl", "tensorboard"] and cfg.eval_shards is None
    assert cfg.reward_time == 2.0 and cfg.reward_weights()["time"] == 2.0
    assert cfg.lora_kwargs() == {
        "r": 8,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert cfg.vllm_tis_cap is None and cfg.output_dir == "123"


def test_yaml_sections_and_later_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "reward:\n  time: 3\n  id: 0.5\nlora:\n  r: 4\nmax_steps: 7\nlearning_rate: 1e-4\n"
    )
    cfg = load_config(path, ["reward.time=1.5", "reward_id=2"])
    assert (cfg.reward_time, cfg.reward_id, cfg.lora_r, cfg.max_steps, cfg.learning_rate) == (
        1.5,
        2.0,
        4,
        7,
        1e-4,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("learnig_rate=1", "unknown config key 'learnig_rate'; did you mean 'learning_rate'?"),
        ("reward.tme=1", "did you mean 'reward.time'?"),
        ("num_generation=4", "did you mean 'num_generations'?"),
    ],
)
def test_unknown_keys_name_the_closest(override, message):
    with pytest.raises(UnknownConfigKey, match=message.replace("?", r"\?")):
        load_config(None, [override])


def test_a_yaml_value_of_the_wrong_shape_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fps: [1, 2]\n")
    with pytest.raises(
        ValueError, match=r"c.yaml: config key 'fps': cannot read \[1, 2\] as float"
    ):
        load_config(path)
    path.write_text("learning_rate: 1e-5\nscale_rewards: no\nreport_to: [jsonl]\nmax_steps: 3\n")
    cfg = load_config(path)  # YAML 1.1 reads 1e-5 as a string and `no` as False
    assert (cfg.learning_rate, cfg.scale_rewards, cfg.report_to, cfg.max_steps) == (
        1e-5,
        False,
        ["jsonl"],
        3,
    )


def test_unknown_key_in_a_yaml_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  rank: 8\n")
    with pytest.raises(UnknownConfigKey, match=r"c.yaml: unknown config key 'lora.rank'"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_steps=ten", "--set: config key 'max_steps': invalid int value: 'ten'"),
        ("max_steps=2.5", "config key 'max_steps': invalid int value: '2.5'"),
        ("scale_rewards=maybe", "config key 'scale_rewards': Truthy value expected: got maybe"),
        ("learning_rate=fast", "config key 'learning_rate': invalid float value: 'fast'"),
        ("fps=[1, 2]", r"config key 'fps': invalid float value: '\[1, 2\]'"),
        ("noequals", "is not KEY=VALUE"),
    ],
)
def test_bad_values_say_which_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["num_generations=1"],
            "num_generations=1 gives zero-variance groups: GRPO needs num_generations >= 2",
        ),
        (["rollout=vllm", "device=cpu"], r"rollout='vllm' needs a CUDA device \(device='cpu'\)"),
        (["epsilon_high=0.1"], "epsilon_high=0.1 < epsilon_low=0.2"),
        (["loss_type=ppo"], r"loss_type='ppo' is not one of \['grpo', 'dapo', 'dr_grpo'\]"),
        (["template=xml"], "template='xml' is not one of"),
        (["beta=-0.1"], "beta=-0.1 must be >= 0"),
        (["max_steps=0"], "max_steps=0: use a positive number of steps, or -1"),
        (["reward.format=0", "reward.time=0", "reward.id=0"], "all reward weights are 0"),
        (["reward.time=-1"], "reward weights must be finite and >= 0"),
        (["temperature=0"], "temperature=0.0 must be > 0"),
        (["eval_steps=5", "eval_shards=null"], "eval_steps=5 needs eval_shards"),
        (["device=gpu"], "device='gpu' is not"),
        (["report_to=wandb"], r"report_to has unknown sinks \['wandb'\]"),
        (["vllm.tis_cap=0.5"], "vllm_tis_cap=0.5 must be >= 1"),
        (["lora.r=8", "lora.dropout=1"], "LoRA needs"),
        (
            ["num_iterations=2", "save_steps=3"],
            "save_steps=3 must be a multiple of num_iterations=2",
        ),
        (
            ["rollout=vllm", "device=cuda", "top_p=0.9", "vllm.tis_cap=2"],
            r"top_p=0.9 with vllm_tis_cap=2.0: vLLM's log-probs are taken after top-p",
        ),
    ],
)
def test_cross_field_errors_state_the_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as err:
        load_config(None, ["num_generations=1", "epsilon_high=0.1"])
    assert "num_generations=1" in str(err.value) and "epsilon_high=0.1" in str(err.value)


def test_tiny_learning_rate_on_a_real_checkpoint_warns():
    with pytest.warns(UserWarning, match="learning_rate=0.005 is a tiny-model rate"):
        load_config(None, ["model=Qwen/Qwen2.5-VL-7B-Instruct"])


def test_total_steps():
    # no max_steps: ceil(2 epochs * 10 prompts / (2 prompts x 2 micro-batches)) = 5 rounds x 2 iterations
    cfg = load_config(
        None,
        [
            "max_steps=-1",
            "num_epochs=2",
            "per_step_prompts=2",
            "gradient_accumulation_steps=2",
            "num_iterations=2",
        ],
    )
    assert cfg.prompts_per_step == 4 and cfg.total_steps(10) == 10
    assert load_config(None, ["max_steps=3"]).total_steps(10) == 3
    with pytest.raises(ValueError, match="nothing to train on"):
        cfg.total_steps(0)


def test_hash_tracks_values():
    assert TrainConfig().config_hash() == TrainConfig().config_hash()
    assert TrainConfig().config_hash() != load_config(None, ["seed=1"]).config_hash()


def test_cli_helper():
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--config",
            "configs/tiny_synthetic.yaml",
            "--set",
            "learning_rate=1e-5",
            "max_steps=10",
            "--set",
            "reward.time=2",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.learning_rate, cfg.max_steps, cfg.reward_time, cfg.rollout) == (1e-5, 10, 2.0, "hf")
    assert config_from_args(parser.parse_args([])) == TrainConfig()
    with pytest.raises(FileNotFoundError, match=r"no config file nope\.yaml"):
        load_config("nope.yaml")


def test_config_module_cli(capsys):
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert (
        "learning_rate" in listing
        and "reward_time" in listing
        and listing.strip() == describe_fields()
    )
    assert main(["--config", str(Path("configs") / "tiny_synthetic.yaml"), "--set", "seed=7"]) == 0
    assert "seed: 7" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "max_steps=ten"])
    assert exit_.value.code == 2
    assert "--set: config key 'max_steps': invalid int value: 'ten'" in capsys.readouterr().err


def test_config_module_runs_as_a_script():
    # `python -m trainer.config` runs the module as __main__: everything main() needs must be
    # defined before the `if __name__ == "__main__"` block (it once raised NameError).
    out = subprocess.run(
        [sys.executable, "-m", "trainer.config", "--config", "configs/tiny_synthetic.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    shown = TrainConfig.from_dict(yaml.safe_load(out.stdout))
    assert shown == load_config(REPO_ROOT / "configs/tiny_synthetic.yaml")


# ---------------------------------------------------------------- preprocessing flags


def test_preprocess_flags_come_from_the_config_fields():
    from pipeline.config import PreprocessConfig
    from pipeline.preprocess import build_parser
    from pipeline.preprocess import config_from_args as preprocess_config

    parser = build_parser()
    assert preprocess_config(parser.parse_args(["--dataset", "x"])) == PreprocessConfig()
    args = parser.parse_args(
        ["--dataset", "x", "--conf", "0.2", "--no-agnostic-nms", "--fuse-score",
         "--classes", "person", "car", "--max-side", "0", "--kalman", "xyah",
         "--num-shards", "4", "--shard-index", "1"]
    )  # fmt: skip
    cfg = preprocess_config(args)
    assert (cfg.conf, cfg.agnostic_nms, cfg.fuse_score, cfg.classes, cfg.max_side, cfg.kalman) == (
        0.2,
        False,
        True,
        ("person", "car"),  # a tuple, as the frozen config hashes it
        None,  # --max-side 0 keeps the frames' size
        "xyah",
    )
    assert (args.num_shards, args.shard_index) == (4, 1)
    again = parser.parse_args(["--dataset", "x", "--agnostic-nms", "false", "--no-fuse-score"])
    assert not preprocess_config(again).agnostic_nms and not preprocess_config(again).fuse_score
    assert preprocess_config(parser.parse_args(["--dataset", "x"]), ["person"]).classes == (
        "person",
    )  # the dataset's classes when --classes is not given
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "x", "--kalman", "abc"])  # not one of the choices


def test_mapping_reader_on_a_frozen_config_with_tuples_and_optionals():
    from pipeline.cli import UnknownConfigKey, from_mapping
    from pipeline.config import PreprocessConfig

    cfg = from_mapping(
        PreprocessConfig,
        {"classes": "person,car", "imgsz": "null", "max_side": 320, "fuse_score": "yes"},
    )
    assert (cfg.classes, cfg.imgsz, cfg.max_side, cfg.fuse_score) == (
        ("person", "car"),
        None,
        320,
        True,
    )
    with pytest.raises(
        UnknownConfigKey, match="unknown config key 'nms_iuo'; did you mean 'nms_iou'"
    ):
        from_mapping(PreprocessConfig, {"nms_iuo": 0.3})
    with pytest.raises(ValueError, match=r"PreprocessConfig: conf must be in \[0, 1\], got 1.5"):
        from_mapping(PreprocessConfig, {"conf": "1.5"})
