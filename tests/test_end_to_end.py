"""The demo chain, scaled down, on the real code path (no stand-ins)."""

import json

import av
import numpy as np
import pandas as pd
import pytest


def test_demo_writes_every_output(mini_demo):
    s = mini_demo["summary"]
    out = mini_demo["out"]
    for key in ("metrics_table", "metrics_table_mevis", "overlay_video", "prediction_video",
                "train_metrics"):  # fmt: skip
        assert (out / "x").parent.exists()
        assert __import__("pathlib").Path(s[key]).exists(), key
    table = (out / "metrics.md").read_text()
    for name in ("grpo-tiny", "oracle", "largest", "random"):
        assert f"| {name} |" in table and f"| {name} (stvg_r1) |" in table
    # the supervised model before GRPO gets its row when the run saved it
    cold = (out / "train" / "cold_start" / "config.json").is_file()
    assert ("| cold-start |" in table) is cold
    assert json.loads((out / "summary.json").read_text())["model"] == s["model"]


def test_zero_shot_mevis_table_scores_j_and_f_from_predicted_masks(mini_demo):
    """The synthetic MeViS test split is scored with J&F, and the masks are the
    segmentation detector's: the tracks' masks are not their boxes filled in."""
    from pipeline.geometry import rle_to_mask
    from pipeline.shards import read_videos

    out = mini_demo["out"]
    table = (out / "metrics-mevis.md").read_text()
    header = [c.strip() for c in table.splitlines()[0].split("|")]
    jf = header.index("J&F")
    for name in ("grpo-tiny", "oracle", "largest", "random"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        float(row.split("|")[jf])  # every row has a J&F
    oracle = json.loads((out / "eval-mevis" / "oracle" / "metrics.json").read_text())
    assert oracle["overall"]["J&F"] > 50.0  # the matched tracks' masks against the truth
    shards = mini_demo["data"] / "shards" / "synthetic-mevis" / "valid_u"
    fills = []
    for video in read_videos(shards):
        for tr in video.tracks:
            assert tr.masks_rle is not None
            for box, rle in zip(tr.xyxy, tr.masks_rle):
                if rle is None:
                    continue
                m = rle_to_mask(rle, video.height, video.width)
                x1, y1, x2, y2 = (round(float(v)) for v in box)
                fills.append(m.sum() / max((x2 - x1) * (y2 - y1), 1))
    assert fills and np.median(fills) < 0.95  # shapes, not rectangles


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
    """Oracle: m_tIoU is 100 (the GT span) and m_vIoU is the official vIoU of the matched
    track computed from first principles: the synthetic clips annotate every native frame
    of the span, so per query it is the sum of IoU(track, GT) over the native frames k / fps
    in [start, end) divided by their number (0 for a query without a matched track)."""
    import math

    import numpy as np

    from pipeline.geometry import box_iou
    from pipeline.shards import read_videos

    metrics = json.loads((mini_demo["out"] / "eval" / "oracle" / "metrics.json").read_text())
    vious = []
    for v in read_videos(mini_demo["data"] / "shards" / "synthetic" / "test"):
        for q in v.queries:
            if not q.target_ids:
                vious.append(0.0)
                continue
            (track,) = [t for t in v.tracks if t.id == q.target_ids[0]]
            (obj,) = q.gt
            start, end = q.span_s
            frames = range(
                math.ceil(start * v.native_fps - 1e-3), math.ceil(end * v.native_fps - 1e-3)
            )
            total = 0.0
            for k in frames:
                t = k / v.native_fps
                g = obj.xyxy[np.argmin(np.abs(obj.times_s - t))]  # annotated at every frame
                p = track.boxes_at(np.array([t]), 0.5)[0]
                total += 0.0 if np.isnan(p).any() else float(box_iou(p[None], g[None])[0, 0])
            vious.append(total / len(frames))
    assert metrics["overall"]["m_tIoU"] == 100.0
    assert metrics["overall"]["m_vIoU"] == pytest.approx(100 * sum(vious) / len(vious), abs=1e-4)
    assert metrics["overall"]["n"] == len(vious)


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


def test_the_cold_start_model_is_evaluated_when_the_run_saved_it(tmp_path):
    from trainer.demo import evaluated_models

    train, final = tmp_path / "train", tmp_path / "train" / "final"
    assert evaluated_models(train, final) == [("grpo-tiny", str(final))]
    (train / "cold_start").mkdir(parents=True)  # an empty folder is not a model
    assert evaluated_models(train, final) == [("grpo-tiny", str(final))]
    (train / "cold_start" / "config.json").write_text("{}")
    assert evaluated_models(train, final) == [
        ("cold-start", str(train / "cold_start")),
        ("grpo-tiny", str(final)),
    ]
