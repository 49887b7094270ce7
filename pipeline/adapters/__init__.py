"""Dataset adapters: one per on-disk format, all yielding :class:`pipeline.records.VideoRecord`.

Each adapter is ``iter_videos(root, split, *, fps=None, dataset=<format>, on_error=None,
**format_options) -> Iterator[VideoRecord]``. It checks the root and the annotation
files when called (raising :class:`DatasetNotFoundError` or :class:`AnnotationError` at
once) and reads videos lazily as the iterator is consumed. Ground truth is in native
pixels and in seconds from the clip start. Videos or queries with malformed
annotations are skipped and reported to ``on_error`` (default: a warning each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pipeline.adapters import folder, hcstvg, mevis, refytvos, vidstg
from pipeline.adapters.base import (
    AnnotationError,
    AnnotationProblem,
    AnnotationWarning,
    DatasetNotFoundError,
    OnError,
    raise_problem,
    warn_problem,
)
from pipeline.records import VideoRecord

Adapter = Callable[..., Iterator[VideoRecord]]

ADAPTERS: dict[str, Adapter] = {
    "mevis": mevis.iter_videos,
    "refytvos": refytvos.iter_videos,
    "hcstvg1": hcstvg.iter_videos_v1,
    "hcstvg2": hcstvg.iter_videos_v2,
    "vidstg": vidstg.iter_videos,
    "folder": folder.iter_videos,
}


def get_adapter(format_name: str) -> Adapter:
    """The adapter for a format name (a key of ``ADAPTERS``)."""
    if format_name not in ADAPTERS:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown dataset format {format_name!r}; known formats: {known}")
    return ADAPTERS[format_name]


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnnotationError",
    "AnnotationProblem",
    "AnnotationWarning",
    "DatasetNotFoundError",
    "OnError",
    "get_adapter",
    "raise_problem",
    "warn_problem",
]
