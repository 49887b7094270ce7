"""What every adapter shares: its errors, per-video problem reporting, and file look-ups.

Two kinds of bad input, two behaviours:

* Something that makes the whole split unusable (a missing root, a missing or
  unparsable annotation file, a top-level structure of the wrong type) raises at
  once: :class:`DatasetNotFoundError` (what to download and where to put it) or
  :class:`AnnotationError` (which file, which key).
* A problem confined to one video or one query (a malformed entry, a target with no
  boxes, a missing mask file) skips that video or query and is reported as an
  :class:`AnnotationProblem` to the adapter's ``on_error`` callback. The default
  callback, :func:`warn_problem`, issues an :class:`AnnotationWarning`; pass
  ``problems.append`` to collect them, or :func:`raise_problem` to be strict.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
JPEG_EXTS = (".jpg", ".jpeg")
IMAGE_EXTS = (*JPEG_EXTS, ".png")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or annotation file is missing; the message says what to fetch."""


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and the key or video."""


class AnnotationWarning(UserWarning):
    """A video or query was skipped because its annotation is malformed."""


@dataclass(frozen=True)
class AnnotationProblem:
    """One skipped video (``query_id`` None) or query, and why; or, with ``skipped``
    False, a kept query whose ground truth was repaired (``counts``: what was dropped,
    clipped or missing, see :mod:`pipeline.adapters.checks`)."""

    path: Path | str
    video_id: str
    reason: str
    query_id: str | None = None
    skipped: bool = True
    counts: dict | None = None

    def describe(self) -> str:
        """``<file>: video '<id>'[, query '<id>']: <reason>``."""
        query = f", query {self.query_id!r}" if self.query_id is not None else ""
        return f"{self.path}: video {self.video_id!r}{query}: {self.reason}"

    def as_dict(self) -> dict:
        """The manifest's entry (``annotation_problems``)."""
        return {
            "source": str(self.path),
            "video_id": self.video_id,
            "query_id": self.query_id,
            "reason": self.reason,
            "skipped": self.skipped,
            "counts": dict(self.counts or {}),
        }

    def __str__(self) -> str:
        return f"{self.describe()} ({'skipped' if self.skipped else 'kept'})"


OnError = Callable[[AnnotationProblem], None]


def warn_problem(problem: AnnotationProblem) -> None:
    """Default ``on_error``: a warning per skipped item."""
    warnings.warn(str(problem), AnnotationWarning, stacklevel=2)


def raise_problem(problem: AnnotationProblem) -> None:
    """Strict ``on_error``: the first problem raises :class:`AnnotationError`."""
    raise AnnotationError(problem.describe())


class Skip(Exception):
    """Raised inside an adapter to skip the current video or query with a reason."""


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found: {path} is not a directory. {hint}")
    return path


def require_file(candidates: Iterable[Path], what: str, hint: str) -> Path:
    """The first existing candidate, else a :class:`DatasetNotFoundError` listing them all."""
    cands = list(candidates)
    for c in cands:
        if c.is_file():
            return c
    tried = " or ".join(str(c) for c in cands)
    raise DatasetNotFoundError(f"{what} not found: expected {tried}. {hint}")


def load_json(path: Path, expect: type) -> dict | list:
    """Parse a JSON file whose top level must be ``expect`` (dict or list)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, expect):
        raise AnnotationError(
            f"{path}: top level must be a JSON {expect.__name__}, got {type(data).__name__}"
        )
    return data


def get_key(entry: dict, key: str, kind: type | tuple[type, ...] | None = None):
    """``entry[key]`` checked for presence (and type); raises :class:`Skip` otherwise."""
    if not isinstance(entry, dict):
        raise Skip(f"entry must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise Skip(f"missing key {key!r}")
    value = entry[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise Skip(f"key {key!r} has type {type(value).__name__}")
    return value


def index_files(root: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """One recursive walk: basename -> path and stem -> path, for files with ``exts``.

    Basenames win over stems, and the first path in sorted order wins a tie, so
    look-ups are deterministic.
    """
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in exts and p.is_file():
                by_name.setdefault(p.name, p)
                by_stem.setdefault(p.stem, p)
    return {**by_stem, **by_name}


def lookup_file(index: dict[str, Path], name: str) -> Path | None:
    """A file by basename (``a/b.mp4`` -> ``b.mp4``), else by stem (another extension)."""
    base = Path(name).name
    return index.get(base) or index.get(Path(base).stem)


def _frame_order(name: str) -> tuple:
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def list_frame_files(folder: Path, exts: tuple[str, ...] = IMAGE_EXTS) -> tuple[str, ...]:
    """Frame file names of a folder in frame order (numeric stems by value, then by name)."""
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file()]
    return tuple(sorted(names, key=_frame_order))


def probe_fps(path: Path) -> float | None:
    """Frame rate from a video container's header (PyAV, no decoding); None if unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return float(rate) if rate else None
    except (av.FFmpegError, IndexError, OSError):
        return None
