"""The demo chain, scaled down, on the real code path (no stand-ins)."""

import json

import av
import pandas as pd


def test_demo_writes_every_output(mini_demo):
    s = mini_demo["summary"]
    out = mini_demo["out"]
    for key in ("metrics_table", "overlay_video", "prediction_video", "train_metrics"):
        assert (out / "x").parent.exists()
        assert __import__("pathlib").Path(s[key]).exists(), key
    table = (out / "metrics.md").read_text()
    for name in ("grpo-tiny", "oracle", "largest", "random"):
        assert f"| {name} |" in table
    assert json.loads((out / "summary.json").read_text())["model"] == s["model"]


def test_videos_are_playable(mini_demo):
    s = mini_demo["summary"]
    for key in ("overlay_video", "prediction_video"):
        with av.open(s[key]) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264"
            n = sum(1 for _ in c.decode(video=0))
        assert n >= 4, key


def test_manifest_counts_and_shards_readable(mini_demo):
    shards = mini_demo["data"] / "shards" / "synthetic"
    for split in ("train", "test"):
        manifest = json.loads((shards / split / "_manifest.json").read_text())
        c = manifest["counts"]
        assert c["videos"] == {"train": 4, "test": 2}[split]
        assert c["videos_failed"] == 0
        assert 0.0 <= c["exact_rate"] <= 1.0
        df = pd.read_parquet(shards / split)
        assert len(df) == c["videos"]


def test_oracle_baseline_reproduces_first_principles(mini_demo):
    """Oracle: m_tIoU is 100 (the GT span) and m_vIoU equals the mean match IoU of the
    matched queries (the chosen track against the GT boxes over the GT frames)."""
    from pipeline.shards import read_videos

    metrics = json.loads((mini_demo["out"] / "eval" / "oracle" / "metrics.json").read_text())
    queries = [
        q
        for v in read_videos(mini_demo["data"] / "shards" / "synthetic" / "test")
        for q in v.queries
    ]
    expected_viou = 100 * sum(q.match_iou if q.target_ids else 0.0 for q in queries) / len(queries)
    assert metrics["overall"]["m_tIoU"] == 100.0
    assert abs(metrics["overall"]["m_vIoU"] - expected_viou) < 0.5


def test_training_checkpoint_resumes(mini_demo):
    from trainer.config import load_config
    from trainer.train import train

    run = mini_demo["out"] / "train"
    assert (run / "checkpoint-1").exists() and (run / "checkpoint-2").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    cfg = load_config(run / "config.yaml", ["max_steps=3"])
    train(cfg, resume="latest", progress=False)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
