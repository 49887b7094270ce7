"""Prediction on one raw video: the whole chain into a playable mp4, the highlight, bad inputs."""

import subprocess
import sys
from dataclasses import replace

import av
import numpy as np
import pytest

from pipeline.decode import DecodeError
from pipeline.records import Track
from pipeline.shards import ShardVideo
from pipeline.synthetic import generate
from trainer import predict as predict_module
from trainer.predict import (
    build_parser,
    clip_span,
    frame_banner,
    highlight_frames,
    main,
    predict,
    resolve_model,
    video_record,
)

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


@pytest.fixture(scope="module")
def video_25fps(raw_video, tmp_path_factory):
    """The synthetic clip's 40 frames re-encoded at 25 fps (1.6 s)."""
    from pipeline.video_io import write_mp4

    with av.open(str(raw_video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return write_mp4(tmp_path_factory.mktemp("fast") / "fast.mp4", frames, 25.0)


def test_cli_help_gives_every_option_help_and_each_default_once():
    out = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--video", "--query", "--model", "--out", "--weights", "--classes",
                 "--render-fps"):  # fmt: skip
        assert flag in out.stdout
    assert "(default: None)" not in out.stdout
    parser = build_parser()
    for action in parser._actions:
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        assert text.strip(), f"{action.option_strings} has no help"
        assert text.count("default") <= 1, f"{action.option_strings}: {text!r}"


def test_predict_writes_a_playable_mp4_at_the_clip_rate(video_25fps, tiny_dir, tmp_path):
    out = tmp_path / "pred.mp4"
    # not a synthetic-set video name: the synthetic detector runs only when asked for by name
    r = predict(video_25fps, "the red circle that stops", model=str(tiny_dir), out=out,
                max_new_tokens=12, weights="synthetic")  # fmt: skip
    assert set(r) == {"video", "query", "model", "model_source", "ids", "span_s",
                      "answered_span_s", "span_clipped", "duration_s", "format_ok", "tracks",
                      "completion", "output"}  # fmt: skip
    assert r["output"] == str(out) and r["video"] == str(video_25fps)
    assert (r["model"], r["model_source"]) == (str(tiny_dir), "--model")
    assert r["tracks"] >= 1  # the committed detector finds the synthetic shapes
    assert isinstance(r["completion"], str) and isinstance(r["format_ok"], bool)
    assert all(isinstance(i, int) for i in r["ids"])
    assert r["duration_s"] == pytest.approx(1.6, abs=0.01)  # 40 frames at 25 fps
    if r["span_s"] is not None:  # clipped to the clip
        assert 0.0 <= r["span_s"][0] < r["span_s"][1] <= r["duration_s"]
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)  # max_side 640 keeps 320 x 240
        assert float(stream.average_rate) == pytest.approx(25.0)  # the clip's rate, not capped
        n = sum(1 for _ in c.decode(video=0))
    assert n == N_FRAMES  # every one of the 40 frames


def test_the_span_is_clipped_to_the_clip():
    # the answer seen on a 6.67 s clip: [0.7, 7.8] -> [0.7, 6.67]
    assert clip_span((0.7, 7.8), 6.67) == (0.7, 6.67)
    assert clip_span((-1.0, 2.0), 6.67) == (0.0, 2.0)
    assert clip_span((7.0, 9.0), 6.67) is None  # wholly past the end: nothing left
    assert clip_span(None, 6.67) is None
    assert clip_span((1.0, 2.0), 6.67) == (1.0, 2.0)


def test_frame_banner_says_match_only_when_the_chosen_ids_are_tracked():
    span = (1.0, 2.0)
    assert frame_banner(0.5, span, [3], {3}) == "t=  0.5s"  # outside the span: time only
    assert frame_banner(1.5, span, [3], {3}) == "t=  1.5s  MATCH"
    assert frame_banner(1.5, span, [3], set()) == "t=  1.5s  ID 3 not tracked here"
    assert frame_banner(1.5, span, [3, 4], {3}) == "t=  1.5s  ID 4 not tracked here"
    assert frame_banner(1.5, span, [], set()) == "t=  1.5s  in span, no ID answered"
    assert frame_banner(1.5, None, [3], {3}) == "t=  1.5s"


def test_default_model_is_the_demo_model_and_says_so(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module, "DEMO_MODEL", tiny_dir)
    assert resolve_model(None) == (str(tiny_dir), "the model `make demo` trained")
    monkeypatch.setattr(predict_module, "DEMO_MODEL", tmp_path / "demo" / "train" / "final")
    monkeypatch.setattr(predict_module, "TINY_MODEL", tiny_dir)  # already built: no rebuild
    path, source = resolve_model(None)
    assert path == str(tiny_dir) and source.startswith("the untrained tiny model")


def test_model_paths_resolve_like_video_and_fail_before_detection(
    raw_video, tiny_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tiny_dir.parent)
    assert resolve_model(tiny_dir.name) == (str(tiny_dir), "--model")  # relative to the cwd
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        resolve_model(str(tmp_path))  # a folder without config.json
    with pytest.raises(FileNotFoundError, match="no cached hub model nobody/none"):
        resolve_model("nobody/none")

    class NoDetection:
        def __init__(self, *a, **k):
            raise AssertionError("detection started before the model was checked")

    monkeypatch.setattr("pipeline.processor.VideoProcessor", NoDetection)
    with pytest.raises(SystemExit, match=r"no model folder .*runs/nope"):
        main(["--video", str(raw_video), "--query", "the red circle", "--model", "runs/nope"])


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
    # a track last seen at 1.5 s: boxed on frames 10..15 only; 16..20 of the span draw no
    # box (their banner says "ID 1 not tracked here", see test_frame_banner_...)
    short = Track(1, "circle", times[:16], np.tile(np.float32(box), (16, 1)))
    gone = list(highlight_frames(record, replace(video, tracks=(short,)), [1], (0.95, 2.05), **kw))
    unlit = list(highlight_frames(record, replace(video, tracks=(short,)), [], None, **kw))
    boxed = [k for k in range(N_FRAMES) if not np.array_equal(gone[k][30:], unlit[k][30:])]
    assert boxed == list(range(10, 16))


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
