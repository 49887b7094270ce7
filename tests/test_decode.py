"""Decoding: frame-accurate times, nearest-frame sampling, clips, resizing, and failures.

Fixture videos are written here with PyAV; frame ``i`` is a flat grey of level
``20 + 5 * i``, so the mean intensity of a decoded frame tells which native frame it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.decode import (
    DecodeError,
    Frame,
    VideoInfo,
    iter_frames,
    probe,
    resized_size,
    sample_times,
)
from pipeline.records import VideoRecord


def level(i: int) -> int:
    return 20 + 5 * i


def write_video(
    path: Path, n: int, fps: int = 10, w: int = 64, h: int = 48, noisy: bool = False, **options
) -> Path:
    """n frames of flat grey level(i) (or of noise, which compresses badly, so that half
    a file holds several frames); options go to the muxer (e.g. movflags)."""
    rng = np.random.default_rng(0)
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(n):
        img = np.full((h, w, 3), level(i), np.uint8)
        if noisy:
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def which(frame: Frame) -> int:
    """Native frame number encoded in a frame's grey level."""
    return round((float(frame.image.mean()) - 20) / 5)


def rec(source: Path, fps: float = 10.0, **kw) -> VideoRecord:
    return VideoRecord("v", "test", "train", source, fps, **kw)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    out = {
        "mp4": write_video(d / "a.mp4", 20),  # 10 fps, 2.0 s
        "long": write_video(d / "long.mp4", 40),  # 4.0 s, for seeking
        "mkv": write_video(d / "a.mkv", 20),
    }
    # cut in half, a plain mp4 loses its index (at the end) and cannot open; a faststart
    # mp4 (index first) and an mkv open, decode a few frames, then break or stop early
    write_video(d / "noisy.mp4", 20, noisy=True, movflags="faststart")
    write_video(d / "noisy.mkv", 20, noisy=True)
    for name in ("a.mp4", "noisy.mp4", "noisy.mkv"):
        data = (d / name).read_bytes()
        (d / f"half_{name}").write_bytes(data[: len(data) // 2])
        out[f"half_{name}"] = d / f"half_{name}"
    (d / "random.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    out["random"] = d / "random.mp4"
    c = av.open(str(d / "empty.mp4"), "w")  # header only, no frames
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    out["empty"] = d / "empty.mp4"
    jpegs = d / "jpegs"
    jpegs.mkdir()
    for k in range(6):  # Ref-YouTube-VOS style names: every 5th native frame
        cv2.imwrite(str(jpegs / f"{5 * k:05d}.jpg"), np.full((30, 40, 3), level(k), np.uint8))
    out["jpegs"] = jpegs
    return out


def test_sample_times_is_the_grid_before_the_end():
    np.testing.assert_allclose(sample_times(2.0, 2.0), [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(sample_times(2.1, 2.0), [0.0, 0.5, 1.0, 1.5, 2.0])
    assert sample_times(0.0, 2.0).size == 0


def test_resized_size_shrinks_to_even_sides():
    assert resized_size(1920, 1080, 640) == (640, 360)
    # 50/101 = 0.495: 101 -> 50, 51 -> 25.2 -> 24 (even, floor)
    assert resized_size(101, 51, 50) == (50, 24)
    assert resized_size(64, 48, 100) == (64, 48)  # never enlarged
    assert resized_size(64, 48, None) == (64, 48)


def test_probe_reads_the_header(media):
    assert probe(rec(media["mp4"])) == VideoInfo(10.0, 20, 64, 48, 2.0)
    info = probe(rec(media["mkv"]))
    assert (info.fps, info.width, info.height, info.duration_s) == (10.0, 64, 48, 2.0)
    clip = probe(rec(media["long"], clip_start_s=0.5, clip_end_s=1.2))
    assert clip.duration_s == pytest.approx(0.7) and clip.num_frames == 7


def test_every_native_frame_when_fps_is_none(media):
    frames = list(iter_frames(rec(media["mp4"])))
    assert [f.frame_idx for f in frames] == list(range(20))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(20) / 10, atol=1e-9)
    assert [which(f) for f in frames] == list(range(20))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8


def test_two_fps_from_ten_fps_lands_on_the_grid(media):
    for key in ("mp4", "mkv"):
        frames = list(iter_frames(rec(media[key]), fps=2.0))
        # grid 0, .5, 1, 1.5 (2.0 is the end): native frames 0, 5, 10, 15 exactly
        np.testing.assert_allclose([f.time_s for f in frames], [0.0, 0.5, 1.0, 1.5], atol=1e-9)
        assert [f.frame_idx for f in frames] == [0, 5, 10, 15]
        assert [which(f) for f in frames] == [0, 5, 10, 15]


def test_nearest_frame_and_no_repeats(media):
    # grid at 3 fps: 0, .333, .667, 1.0, 1.333, 1.667 -> nearest of 0.1 s frames: 0, 3, 7, 10, 13, 17
    frames = list(iter_frames(rec(media["mp4"]), fps=3.0))
    assert [f.frame_idx for f in frames] == [0, 3, 7, 10, 13, 17]
    assert [which(f) for f in frames] == [0, 3, 7, 10, 13, 17]  # held-back frames stay intact
    # above the native rate every native frame comes once
    assert [f.frame_idx for f in iter_frames(rec(media["mp4"]), fps=25.0)] == list(range(20))


def test_clip_segment_is_honoured(media):
    # [0.5, 1.2): native frames 5..11, times from the clip start
    frames = list(iter_frames(rec(media["long"], clip_start_s=0.5, clip_end_s=1.2)))
    assert [f.frame_idx for f in frames] == list(range(5, 12))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(7) / 10, atol=1e-9)
    assert [which(f) for f in frames] == list(range(5, 12))
    # a late start seeks; indices and times stay exact: [2.5, 3.5) -> frames 25..34
    late = rec(media["long"], clip_start_s=2.5, clip_end_s=3.5)
    frames = list(iter_frames(late))
    assert [f.frame_idx for f in frames] == list(range(25, 35))
    assert [which(f) for f in frames] == list(range(25, 35))
    assert [f.frame_idx for f in iter_frames(late, fps=2.0)] == [25, 30]  # grid 0, .5
    past = rec(media["mp4"], clip_start_s=5.0, clip_end_s=6.0)
    with pytest.raises(DecodeError, match=r"a\.mp4"):
        list(iter_frames(past))


def test_max_side_resizes_keeping_aspect(media):
    frames = list(iter_frames(rec(media["mp4"]), fps=1.0, max_side=33))
    # 64x48 * 33/64 = 33 x 24.75 -> even floor: 32 x 24
    assert [f.image.shape for f in frames] == [(24, 32, 3)] * 2
    assert [which(f) for f in frames] == [0, 10]


def test_jpeg_folder_times_from_frame_numbers(media):
    folder = rec(media["jpegs"], fps=30.0)
    frames = list(iter_frames(folder))
    assert [f.frame_idx for f in frames] == list(range(6))
    # names 00000, 00005, ... at 30 fps: k * 5 / 30 s
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(6) * 5 / 30)
    assert [which(f) for f in frames] == list(range(6))
    # grid at 3 fps: 0, .333, .667 -> frames at 0, 10/30, 20/30 -> positions 0, 2, 4
    assert [f.frame_idx for f in iter_frames(folder, fps=3.0)] == [0, 2, 4]
    info = probe(folder)
    assert (info.num_frames, info.width, info.height) == (6, 40, 30)
    assert info.fps == pytest.approx(6.0) and info.duration_s == pytest.approx(1.0)
    clip = rec(media["jpegs"], fps=30.0, clip_start_s=10 / 30, clip_end_s=25 / 30)
    frames = list(iter_frames(clip))
    assert [f.frame_idx for f in frames] == [2, 3, 4]
    np.testing.assert_allclose([f.time_s for f in frames], [0.0, 5 / 30, 10 / 30], atol=1e-9)
    with_list = rec(media["jpegs"], fps=30.0, frame_files=("00005.jpg", "00010.jpg"))
    assert [which(f) for f in iter_frames(with_list)] == [1, 2]


@pytest.mark.parametrize("key", ["random", "half_a.mp4", "empty"])
def test_unusable_files_raise_with_the_path(media, key):
    path = media[key]
    with pytest.raises(DecodeError, match=re.escape(path.name)):
        probe(rec(path))
    with pytest.raises(DecodeError, match=re.escape(path.name)):
        list(iter_frames(rec(path)))


@pytest.mark.parametrize("key", ["half_noisy.mp4", "half_noisy.mkv"])
def test_file_that_breaks_partway_yields_then_raises(media, key):
    got = []
    with pytest.raises(DecodeError, match=re.escape(key)):
        for frame in iter_frames(rec(media[key])):
            got.append(frame.frame_idx)
    assert 0 < len(got) < 20 and got == list(range(len(got)))


def test_missing_sources_and_bad_jpegs(media, tmp_path):
    with pytest.raises(DecodeError, match=r"nope\.mp4"):
        list(iter_frames(rec(tmp_path / "nope.mp4")))
    with pytest.raises(DecodeError, match="not_there"):
        probe(rec(tmp_path / "not_there", frame_files=("00000.jpg",)))
    bad = tmp_path / "bad"
    bad.mkdir()
    cv2.imwrite(str(bad / "00000.jpg"), np.zeros((8, 8, 3), np.uint8))
    (bad / "00001.jpg").write_bytes(b"not a jpeg at all")
    got = []
    with pytest.raises(DecodeError, match=r"00001\.jpg"):
        for frame in iter_frames(rec(bad)):
            got.append(frame.frame_idx)
    assert got == [0]
