"""Shards -> frames -> processor tensors: the pixel budget, frame sampling and timing."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import make_row, row_to_video, write_shard
from trainer.data import (
    GroundingDataset,
    fit_to_budget,
    make_sample,
    sample_indices,
    video_inputs,
)

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Which ID?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


def frames_of(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ fit_to_budget


def test_fit_to_budget_downscales_to_multiples_of_28_within_budget():
    frames = frames_of(10, 480, 640)
    out = fit_to_budget(frames, total_pixels=2048 * 28 * 28)
    # Per-frame cap 1,605,632 // 10 = 160,563. Rounded 476x644 is too big, so
    # beta = sqrt(480*640 / 160563) = 1.3832; H = floor(480/1.3832/28)*28 = 12*28 = 336,
    # W = floor(640/1.3832/28)*28 = 16*28 = 448 (3:4 kept exactly).
    assert out.shape == (10, 336, 448, 3)
    assert out.dtype == np.uint8
    assert 10 * 336 * 448 <= 2048 * 28 * 28


def test_fit_to_budget_respects_a_per_frame_cap_and_keeps_aspect():
    out = fit_to_budget(frames_of(2, 360, 640), max_pixels_per_frame=200 * 28 * 28)
    h, w = out.shape[1:3]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 200 * 28 * 28
    assert abs(w / h - 640 / 360) < 0.1


def test_fit_to_budget_upscales_tiny_frames_to_the_minimum():
    out = fit_to_budget(frames_of(2, 20, 30))
    # 28x28 = 784 < 4*784: beta = sqrt(3136/600) = 2.286; H = ceil(45.7/28)*28 = 56, W = ceil(68.6/28)*28 = 84.
    assert out.shape == (2, 56, 84, 3)


def test_fit_to_budget_same_size_is_an_unchanged_copy():
    frames = frames_of(4, 56, 84)
    before = frames.copy()
    out = fit_to_budget(frames)
    assert np.array_equal(out, frames) and out is not frames
    assert np.array_equal(frames, before)


def test_fit_to_budget_rejects_bad_input():
    with pytest.raises(ValueError, match="sample fewer frames"):
        fit_to_budget(frames_of(600, 28, 28), total_pixels=2048 * 28 * 28)  # 2676 px/frame < 3136
    with pytest.raises(ValueError, match="uint8"):
        fit_to_budget(np.zeros((2, 28, 28, 3), np.float32))


# ------------------------------------------------------------------ frame sampling


def test_sample_indices_strides_and_even_counts():
    # 2 fps stored, 2 fps wanted: every frame; 41 frames is odd -> the last is dropped.
    idx, fps = sample_indices(41, 2.0, 2.0)
    assert (len(idx), idx[-1], fps) == (40, 39, 2.0)
    # 1 fps from 2 fps: stride 2 -> 0, 2, ..., 40 is 21 frames -> 20.
    idx, fps = sample_indices(41, 2.0, 1.0)
    assert idx.tolist() == list(range(0, 40, 2)) and fps == 1.0
    # max_frames=8 over 41 frames: stride ceil(41/8) = 6 -> 0..36 (7 frames) -> 6, at 2/6 fps.
    idx, fps = sample_indices(41, 2.0, 2.0, max_frames=8)
    assert idx.tolist() == [0, 6, 12, 18, 24, 30] and fps == pytest.approx(1 / 3)
    # One stored frame is repeated to fill the temporal patch.
    assert sample_indices(1, 2.0)[0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="no stored frames"):
        sample_indices(0, 2.0)


def _jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _video_row(video_id: str, n: int, h: int, w: int, queries) -> dict:
    # Flat colour frames whose red channel encodes the frame number (survives JPEG).
    frames = [np.full((h, w, 3), (10 * k, 100, 50), np.uint8) for k in range(n)]
    times = np.arange(n) / 2.0
    tracks = [
        Track(1, "person", times, np.tile([1, 1, 20, 30], (n, 1))),
        Track(2, "ball", times[:3], np.tile([30, 5, 40, 15], (3, 1))),
    ]
    return make_row(
        video_id=video_id,
        dataset="synthetic",
        split="train",
        width=w,
        height=h,
        out_fps=2.0,
        track_fps=2.0,
        native_fps=10.0,
        frame_times_s=times,
        frames=[_jpeg(f) for f in frames],
        tracks=tracks,
        queries=queries,
    )


def _query(qid: str, target_ids, span=(0.5, 2.0)) -> QueryRecord:
    gt = GTObject(0, [0.5, 1.0], [[1, 1, 20, 30], [2, 2, 21, 31]])
    return QueryRecord(qid, f"query {qid}", "referring", span, (gt,), target_ids, 0.8)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "part-000.parquet"
    rows = [
        _video_row("v0", 9, 60, 90, [_query("a", (1,)), _query("b", ())]),  # "b" unmatched
        _video_row("v1", 5, 60, 90, [_query("c", (2,), (0.0, 1.0))]),
    ]
    return write_shard(path, rows)


def test_make_sample_decodes_the_chosen_frames_with_their_times(shard):
    import pyarrow.parquet as pq

    video = row_to_video(pq.read_table(shard).to_pylist()[0])  # 9 frames at 2 fps
    s = make_sample(video, video.queries[0], fps=1.0, max_frames=None, total_pixels=4 * 56 * 84)
    frames, times = s.frames, s.frame_times_s
    # stride 2 -> frames 0, 2, 4, 6, 8 -> odd -> 0, 2, 4, 6 at 0.0, 1.0, 2.0, 3.0 s.
    assert times.tolist() == [0.0, 1.0, 2.0, 3.0] and s.fps == 1.0
    assert frames.shape == (4, 56, 84, 3)  # 60 x 90 fitted to multiples of 28
    assert [round(int(f[..., 0].mean()) / 10) for f in frames] == [0, 2, 4, 6]


def test_grounding_dataset_over_a_shard(shard):
    ds = GroundingDataset(shard, fps=2.0, max_frames=32, total_pixels=8 * 56 * 84)
    assert len(ds) == 2  # the unmatched query "b" is skipped
    assert len(GroundingDataset([shard], only_matched=False)) == 3
    assert len(GroundingDataset([shard.parent])) == 2  # folders are expanded
    s0, s1 = ds[0], ds[1]
    assert (s0.video.video_id, s0.query.query_id, s0.index) == ("v0", "a", 0)
    assert (s1.video.video_id, s1.query.query_id, s1.query.target_ids) == ("v1", "c", (2,))
    # v0: 9 frames at 2 fps -> 8 frames (even), times 0..3.5 s; duration 9 / 2 = 4.5 s.
    assert s0.frame_times_s.tolist() == [k / 2 for k in range(8)]
    assert (s0.fps, s0.duration_s) == (2.0, 4.5)
    t, h, w, _ = s0.frames.shape
    assert t == 8 and h % 28 == 0 and w % 28 == 0 and t * h * w <= 8 * 56 * 84
    assert s1.frames.shape[0] == 4 and s1.frame_times_s.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert ds[-1].query.query_id == "c"
    with pytest.raises(IndexError):
        ds[2]


# ------------------------------------------------------------------ processor timing


def test_second_per_grid_ts_follows_the_fps_not_the_24fps_default(processor):
    frames = frames_of(8, 56, 56)
    # Bare frames: transformers assumes 24 fps -> 2 / 24 s per temporal patch (the trap).
    bare = processor(text=[PROMPT], videos=[frames], do_resize=False, return_tensors="pt")
    assert bare["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])
    for fps, expected in [(2.0, 1.0), (1.0, 2.0), (4.0, 0.5)]:
        out = video_inputs(processor, PROMPT, frames, fps)
        assert out["second_per_grid_ts"].tolist() == pytest.approx([expected])


def test_grid_times_match_the_frame_times(processor, shard):
    sample = GroundingDataset(shard, total_pixels=8 * 56 * 84)[0]
    out = video_inputs(processor, PROMPT, sample.frames, sample.fps)
    grid_t = int(out["video_grid_thw"][0, 0])
    # Patch k holds frames 2k and 2k+1 and starts at frame 2k's time.
    starts = sample.frame_times_s[::2] - sample.frame_times_s[0]
    assert grid_t == len(starts) == 4
    assert [float(out["second_per_grid_ts"][0]) * k for k in range(grid_t)] == pytest.approx(
        starts.tolist()
    )


def test_video_inputs_keeps_pixels_and_checks_inputs(processor):
    frames = frames_of(2, 28, 56)
    out = video_inputs(processor, PROMPT, frames, 2.0)
    # No resize: 1x2x4 patches of 3*2*14*14 values, pixels only rescaled and normalised.
    assert out["pixel_values_videos"].shape == (8, 1176)
    assert out["video_grid_thw"].tolist() == [[1, 2, 4]]
    mean = np.array(processor.video_processor.image_mean)
    std = np.array(processor.video_processor.image_std)
    first = (
        out["pixel_values_videos"][0].view(3, 2, 14, 14).numpy()
    )  # (C, t, 14, 14) of patch (0, 0)
    expected = (frames[0, :14, :14] / 255.0 - mean) / std  # (14, 14, C)
    assert np.allclose(first[:, 0].transpose(1, 2, 0), expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 28"):
        video_inputs(processor, PROMPT, frames_of(2, 30, 56), 2.0)
    with pytest.raises(ValueError, match="exactly one"):
        video_inputs(
            processor, PROMPT.replace("<|video_pad|>", "<|video_pad|><|video_pad|>"), frames, 2.0
        )
