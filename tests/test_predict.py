"""Prediction on one raw video: the whole chain into a playable mp4, the highlight, bad inputs."""

import subprocess
import sys

import av
import numpy as np
import pytest

from pipeline.decode import DecodeError
from pipeline.records import Track
from pipeline.shards import ShardVideo
from pipeline.synthetic import generate
from trainer.predict import highlight_frames, main, predict, video_record

# The synthetic generator's defaults: 320 x 240 at 10 fps; duration_s=4.0 gives 40 frames.
WIDTH, HEIGHT, FPS, N_FRAMES = 320, 240, 10.0, 40


@pytest.fixture(scope="module")
def raw_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    generate(root, num_train=1, num_test=1, det_train=0, det_val=0, duration_s=4.0,
             formats=("hcstvg",), progress=False)  # fmt: skip
    videos = sorted((root / "hcstvg" / "video").glob("*.mp4"))
    assert len(videos) == 2
    return videos[-1]


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--video", "--query", "--model", "--out", "--weights", "--classes"):
        assert flag in out.stdout


def test_predict_writes_a_playable_mp4(raw_video, tiny_dir, tmp_path):
    out = tmp_path / "pred.mp4"
    r = predict(raw_video, "the red circle that stops", model=str(tiny_dir), out=out,
                max_new_tokens=12)  # fmt: skip
    assert set(r) == {"video", "query", "ids", "span_s", "format_ok", "tracks", "completion",
                      "output"}  # fmt: skip
    assert r["output"] == str(out) and r["video"] == str(raw_video)
    assert r["tracks"] >= 1  # the committed detector finds the synthetic shapes
    assert isinstance(r["completion"], str) and isinstance(r["format_ok"], bool)
    assert all(isinstance(i, int) for i in r["ids"])
    assert r["span_s"] is None or r["span_s"][0] <= r["span_s"][1]
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)  # max_side 640 keeps 320 x 240
        n = sum(1 for _ in c.decode(video=0))
    # rendered at min(render_fps 10, native 10) = 10 fps over 4 s: every one of the 40 frames
    assert n == N_FRAMES


def test_highlight_boxes_the_chosen_id_only_during_the_span(raw_video):
    """Track 1 holds [100, 60, 200, 160] all clip long. With span (0.95, 2.05) s the frames at
    1.0 .. 2.0 s (indices 10..20) get a white 5 px outline with a 1 px black centre line on the
    box edges; every other frame equals the render without a prediction."""
    record = video_record(raw_video, "anything")
    times = np.round(np.arange(0.0, 4.0, 0.1), 3)
    box = [100, 60, 200, 160]
    video = ShardVideo(
        video_id="v", dataset="folder", split="predict", width=WIDTH, height=HEIGHT, out_fps=FPS,
        track_fps=FPS, native_fps=FPS, frame_times_s=np.zeros(0, np.float32), frames=(),
        tracks=(Track(1, "circle", times, np.tile(np.float32(box), (len(times), 1))),), queries=(),
    )  # fmt: skip
    kw = dict(max_side=640, max_gap_s=0.5, fps=FPS)
    lit = list(highlight_frames(record, video, [1], (0.95, 2.05), **kw))
    plain = list(highlight_frames(record, video, [], None, **kw))
    assert len(lit) == len(plain) == N_FRAMES
    changed = [k for k in range(N_FRAMES) if not np.array_equal(lit[k], plain[k])]
    assert changed == list(range(10, 21))
    for k in changed:
        img = lit[k]
        assert img[110, 100].tolist() == [0, 0, 0]  # on the left edge x = 100
        assert img[110, 98].tolist() == img[110, 102].tolist() == [255, 255, 255]
        assert img[60, 150].tolist() == [0, 0, 0]  # top edge y = 60
        diff = np.any(img != plain[k], axis=2)
        diff[:30] = False  # the time label ("... MATCH") in the top-left corner
        ys, xs = np.nonzero(diff)
        assert ys.min() >= 58 and ys.max() <= 162 and xs.min() >= 98 and xs.max() <= 202
        inner = diff[63:158, 103:198]  # strictly inside the outline nothing changes
        assert not inner.any()
    # a chosen ID that has no track draws nothing
    ghost = list(highlight_frames(record, video, [7], (0.0, 4.0), **kw))
    assert all(np.array_equal(g[30:], p[30:]) for g, p in zip(ghost, plain))


def test_missing_and_corrupt_videos_are_clear_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="no such video"):
        predict(tmp_path / "nope.mp4", "a query", model=str(tiny_dir))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError, match=r"cannot open .*bad\.mp4"):
        predict(bad, "a query", model=str(tiny_dir))
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(DecodeError, match="cannot open"):
        video_record(empty, "a query")
    with pytest.raises(ValueError, match="query is empty"):
        video_record(bad, "  ")


def test_cli_refuses_empty_query_and_reports_bad_video(raw_video, tmp_path):
    with pytest.raises(SystemExit, match="--query is empty"):
        main(["--video", str(raw_video), "--query", "   "])
    with pytest.raises(SystemExit, match="no such video"):
        main(["--video", str(tmp_path / "nope.mp4"), "--query", "the red circle"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(SystemExit, match="cannot open"):
        main(["--video", str(bad), "--query", "the red circle", "--model", "unused"])
