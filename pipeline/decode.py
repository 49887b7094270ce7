"""Decode a :class:`VideoRecord` into RGB frames, streaming: video files or JPEG folders.

Conventions:

* Times are seconds from the record's clip start (``clip_start_s``; 0 for whole
  videos). For video files they come from each frame's ``pts * time_base`` (relative
  to the stream's start), never from counting; for JPEG folders from
  :func:`pipeline.records.frame_file_times` ((frame number - first frame number) / nominal fps).
* A frame belongs to the clip ``[clip_start_s, clip_end_s)`` when its time lies in it,
  within a quarter of a frame interval of tolerance (so ``begin_fid / fps`` is in,
  ``end_fid / fps`` is out, whatever the rounding of the pts).
* ``fps=None`` yields every native frame of the clip. Otherwise, for each point of the
  grid ``0, 1/fps, 2/fps, ...`` before the clip's end, the native frame NEAREST to it
  is yielded (ties go to the earlier frame), and a native frame is never yielded twice,
  so asking for more than the native rate yields each native frame once.
* ``frame_idx`` is the native frame index: the decode position in the file (after a
  seek, ``round(t * fps)``), or the position in the JPEG folder's frame list.
* ``max_side`` shrinks frames (never enlarges) with ``cv2.INTER_AREA`` so the longer
  side is at most ``max_side``, both sides rounded down to even numbers.
* Errors raise :class:`DecodeError` naming the path and the reason: missing file,
  unopenable or corrupt file, no video stream, no frames (in the clip), unreadable JPEG.
  A file that breaks partway (decoder error, or decoding that ends well before the
  duration in the header) yields the frames that decoded, then raises: a truncated
  video is a failed video, and the caller records it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.records import VideoRecord, frame_file_times

SEEK_MIN_S = 2.0  # seek (to the keyframe before) only when the clip starts this late
_EPS = 1e-9


class DecodeError(RuntimeError):
    """A video or frame folder could not be decoded; the message names the path and why."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        frame_idx: native frame index (see the module docstring).
        time_s: seconds from the clip start.
        image: (H, W, 3) uint8 RGB.
    """

    frame_idx: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about the clip a record describes (nothing decoded).

    Attributes:
        fps: native rate (for JPEG folders: the rate of the frames present, e.g. 6 for
            Ref-YouTube-VOS's every-5th frame of 30 fps video).
        num_frames: native frames in the clip (exact for whole videos whose header
            counts frames and for JPEG folders; ``round(duration * fps)`` otherwise).
        width, height: native frame size in pixels.
        duration_s: length of the clip in seconds.
    """

    fps: float
    num_frames: int
    width: int
    height: int
    duration_s: float


def sample_times(duration_s: float, fps: float) -> np.ndarray:
    """The sampling grid ``0, 1/fps, ...`` strictly before ``duration_s``: (N,) float64."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    n = max(0, math.ceil(duration_s * fps - 1e-6))
    return np.arange(n, dtype=np.float64) / fps


def resized_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after shrinking so the longer side is <= max_side, even sides."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, int(width * scale + 1e-6) // 2 * 2), max(2, int(height * scale + 1e-6) // 2 * 2)


# ------------------------------------------------------------------ JPEG folders


def _frame_list(record: VideoRecord) -> tuple[Path, tuple[str, ...], np.ndarray]:
    from pipeline.adapters.base import list_frame_files

    folder = record.source
    if not folder.is_dir():
        raise DecodeError(f"{folder}: frame folder not found")
    files = record.frame_files if record.frame_files is not None else list_frame_files(folder)
    if not files:
        raise DecodeError(f"{folder}: no frame files")
    return folder, tuple(files), frame_file_times(files, record.fps)


def _clip_mask(times: np.ndarray, record: VideoRecord, interval_s: float) -> np.ndarray:
    tol = 0.25 * interval_s
    keep = times >= record.clip_start_s - tol
    if record.clip_end_s is not None:
        keep &= times < record.clip_end_s - tol
    return keep


def _frame_interval(times: np.ndarray, fps: float) -> float:
    """Typical spacing of a folder's frames in seconds: a whole number of native frames
    (1 for MeViS, 5 for Ref-YouTube-VOS), so the effective rate comes out exact."""
    if len(times) < 2:
        return 1.0 / fps
    step = round(float(np.median(np.diff(times))) * fps, 6)
    return step / fps if step > 0 else 1.0 / fps


def _jpeg_native(record: VideoRecord) -> Iterator[tuple[int, float, Path]]:
    folder, files, times = _frame_list(record)
    keep = _clip_mask(times, record, _frame_interval(times, record.fps))
    for i in np.flatnonzero(keep):
        yield int(i), max(float(times[i]) - record.clip_start_s, 0.0), folder / files[i]


def _read_jpeg(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise DecodeError(f"{path}: frame file not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DecodeError(f"{path}: unreadable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _probe_jpeg(record: VideoRecord) -> VideoInfo:
    from PIL import Image

    folder, files, times = _frame_list(record)
    interval = _frame_interval(times, record.fps)
    keep = np.flatnonzero(_clip_mask(times, record, interval))
    if keep.size == 0:
        raise DecodeError(
            f"{folder}: no frames in the clip [{record.clip_start_s}, {record.clip_end_s})"
        )
    w, h = record.width, record.height
    if not (w and h):
        try:
            with Image.open(folder / files[keep[0]]) as img:
                w, h = img.size
        except OSError as exc:
            raise DecodeError(f"{folder / files[keep[0]]}: unreadable image ({exc})") from exc
    if record.clip_end_s is not None:
        duration = record.clip_end_s - record.clip_start_s
    else:
        duration = float(times[keep[-1]]) - record.clip_start_s + interval
    fps = record.fps / round(interval * record.fps, 6)  # e.g. 30 / 5 = 6 for every 5th frame
    return VideoInfo(fps, int(keep.size), int(w), int(h), duration)


# ------------------------------------------------------------------ video files


def _open(path: Path):
    import av

    if not path.is_file():
        raise DecodeError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(f"{path}: cannot open ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream")
    return container, container.streams.video[0]


def _stream_fps(stream, record: VideoRecord) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else float(record.fps)


def _header_duration(container, stream, trust_container: bool) -> float | None:
    """Video length from the header: the stream's, else the container's if trusted or if
    the file has no other stream (an audio track may outlast the video)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration and (trust_container or len(container.streams) == 1):
        return container.duration / 1_000_000
    return None


def _probe_video(record: VideoRecord) -> VideoInfo:
    import av

    path = record.source
    container, stream = _open(path)
    with container:
        fps = _stream_fps(stream, record)
        w, h = stream.codec_context.width, stream.codec_context.height
        full = _header_duration(container, stream, trust_container=True)
        if full is None and stream.frames:
            full = stream.frames / fps
        if full is None:  # no duration in the header: count packets (no decoding)
            try:
                full = sum(1 for p in container.demux(stream) if p.pts is not None) / fps
            except av.FFmpegError as exc:
                raise DecodeError(f"{path}: cannot read packets ({exc})") from exc
        header_frames = int(stream.frames)  # PyAV >= 18 refuses stream reads once closed
    if not (w and h):
        raise DecodeError(f"{path}: no frame size in the header")
    start = record.clip_start_s
    end = full if record.clip_end_s is None else min(record.clip_end_s, full)
    duration = end - start
    if not duration > 0:
        raise DecodeError(
            f"{path}: clip [{start}, {record.clip_end_s}) lies past the end ({full:.3f} s)"
        )
    whole = start == 0 and end == full and header_frames
    num = header_frames if whole else max(1, round(duration * fps))
    return VideoInfo(fps, num, int(w), int(h), duration)


def _seek_or_reopen(container, stream, path: Path, start_s: float, fps: float):
    """Seek to the keyframe before ``start_s``; if the file cannot seek, reopen it.
    Returns (container, stream, seeked)."""
    import av

    if start_s < SEEK_MIN_S or stream.start_time is None:
        return container, stream, False
    target = stream.start_time + int((start_s - 1.0 / fps) / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True)
        return container, stream, True
    except av.FFmpegError:  # decode from the start instead
        container.close()
        container, stream = _open(path)
        return container, stream, False


def _video_native(record: VideoRecord) -> Iterator[tuple[int, float, object]]:
    import av

    path, start, end = record.source, record.clip_start_s, record.clip_end_s
    container, stream = _open(path)
    try:
        fps = _stream_fps(stream, record)
        container, stream, seeked = _seek_or_reopen(container, stream, path, start, fps)
        stream.thread_type = "AUTO"
        tb, tol, origin = stream.time_base, 0.25 / fps, stream.start_time
        count, last_t, yielded = 0, 0.0, 0
        try:
            for frame in container.decode(stream):
                if origin is None:
                    origin = frame.pts or 0
                t = float((frame.pts - origin) * tb) if frame.pts is not None else count / fps
                idx = round(t * fps) if seeked else count
                count, last_t = count + 1, t
                if t < start - tol:
                    continue
                if end is not None and t >= end - tol:
                    return
                yielded += 1
                yield idx, max(t - start, 0.0), frame
        except av.FFmpegError as exc:
            raise DecodeError(f"{path}: decoding failed after {count} frames ({exc})") from exc
        if count == 0:
            raise DecodeError(f"{path}: no frames decoded")
        expected = _header_duration(container, stream, trust_container=False)
        if expected is not None and last_t + 1.0 / fps < expected - 1.5 / fps:
            raise DecodeError(
                f"{path}: truncated: decoding stopped at {last_t:.3f} s of {expected:.3f} s"
            )
        if yielded == 0:
            raise DecodeError(
                f"{path}: no frames in the clip [{start}, {end}) (last frame at {last_t:.3f} s)"
            )
    finally:
        container.close()


# ------------------------------------------------------------------ public


def _is_frame_folder(record: VideoRecord) -> bool:
    return record.frame_files is not None or record.source.is_dir()


def probe(record: VideoRecord) -> VideoInfo:
    """Frame rate, frame count, size and duration of the record's clip, from headers only."""
    return _probe_jpeg(record) if _is_frame_folder(record) else _probe_video(record)


def _nearest_on_grid(native, fps: float, end_s: float, interval_s: float):
    """For each grid time ``j / fps < end_s``, the nearest native item (never one twice)."""
    prev, pos, emitted, j = None, -1, -1, 0
    for item in native:
        pos += 1
        while (g := j / fps) <= item[1] + _EPS:
            if g >= end_s - _EPS:
                return
            use_prev = prev is not None and g - prev[1] <= item[1] - g + _EPS
            pick, pick_pos = (prev, pos - 1) if use_prev else (item, pos)
            if pick_pos != emitted:
                emitted = pick_pos
                yield pick
            j += 1
        prev = item
    # grid points after the last frame (but before the clip's end) are nearest to it
    if prev is not None and emitted != pos and j / fps < min(end_s, prev[1] + interval_s) - _EPS:
        yield prev


def iter_frames(
    record: VideoRecord, *, fps: float | None = None, max_side: int | None = None
) -> Iterator[Frame]:
    """Stream the clip's frames as RGB arrays; see the module docstring for the rules.

    Args:
        record: the video (file or JPEG folder) and its clip segment.
        fps: sampling rate (nearest native frame per grid point); None for every frame.
        max_side: shrink so the longer side is at most this (None: native size).

    Raises:
        DecodeError: on any decoding failure (possibly after yielding the frames that
            decoded, for a file that breaks partway).
    """
    import cv2

    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 or None, got {fps}")
    info = probe(record)
    folder = _is_frame_folder(record)
    native = _jpeg_native(record) if folder else _video_native(record)
    chosen = (
        native if fps is None else _nearest_on_grid(native, fps, info.duration_s, 1.0 / info.fps)
    )
    try:
        for idx, t, payload in chosen:
            image = _read_jpeg(payload) if folder else payload.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            size = resized_size(w, h, max_side)
            if size != (w, h):
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            yield Frame(idx, t, image)
    finally:
        native.close()
