"""The dataset registry: names in ``data/datasets.yaml`` -> adapter, raw root, splits.

    python -m pipeline.datasets                      # list the datasets and whether they are present
    python -m pipeline.datasets synthetic train      # read a split, print counts and problems

``iter_records("mevis", "train")`` is the one call the pipeline makes to read raw data.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.records import VideoRecord
from pipeline.runtime import REPO_ROOT

DATASETS_YAML = REPO_ROOT / "data" / "datasets.yaml"


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``datasets.yaml``.

    Attributes:
        name: the registry key (``synthetic``, ``mevis``, ...).
        format: adapter name, a key of :data:`pipeline.adapters.ADAPTERS`.
        root: raw data root as written (relative paths are relative to the repository).
        splits: the known split names.
        fps: nominal frame rate for JPEG-frame formats (None: the adapter's default or
            the video header).
        download: where to get the data and how to lay it out.
        classes: detector classes to keep for this dataset (None: all).
    """

    name: str
    format: str
    root: Path
    splits: tuple[str, ...]
    fps: float | None = None
    download: str = ""
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        from pipeline.adapters import ADAPTERS

        if self.format not in ADAPTERS:
            raise ValueError(
                f"dataset {self.name!r}: unknown format {self.format!r}; known: {', '.join(ADAPTERS)}"
            )
        if not self.splits:
            raise ValueError(f"dataset {self.name!r}: 'splits' must list at least one split")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"dataset {self.name!r}: fps must be > 0, got {self.fps}")
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "splits", tuple(str(s) for s in self.splits))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def resolved_root(self) -> Path:
        """``root`` made absolute against the repository root."""
        return self.root if self.root.is_absolute() else REPO_ROOT / self.root


_FIELDS = ("format", "root", "splits", "fps", "download", "classes")


def load_specs(path: str | Path = DATASETS_YAML) -> dict[str, DatasetSpec]:
    """Parse ``datasets.yaml`` into specs keyed by name; errors name the entry and field."""
    import yaml

    path = Path(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: top level must map dataset names to entries")
    specs = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {name!r} must be a mapping")
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise ValueError(
                f"{path}: entry {name!r} has unknown fields {sorted(unknown)}; known: {_FIELDS}"
            )
        missing = {"format", "root", "splits"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {name!r} lacks {sorted(missing)}")
        specs[str(name)] = DatasetSpec(name=str(name), **entry)
    return specs


def get_spec(name: str, path: str | Path = DATASETS_YAML) -> DatasetSpec:
    """One spec by name; the error lists the known names."""
    specs = load_specs(path)
    if name not in specs:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(specs)} (see {path})")
    return specs[name]


def iter_records(
    name_or_spec: str | DatasetSpec,
    split: str,
    *,
    root: str | Path | None = None,
    fps: float | None = None,
    limit: int | None = None,
    on_error=None,
) -> Iterator[VideoRecord]:
    """The :class:`VideoRecord` s of one split of a registered dataset.

    The split, root and annotation files are checked when called; videos are read as
    the iterator is consumed, and their ground truth checked
    (:mod:`pipeline.adapters.checks`: invalid boxes dropped, boxes clipped to the frame).

    Args:
        name_or_spec: a name from ``datasets.yaml`` or a :class:`DatasetSpec`.
        split: one of the spec's splits (any name for the ``folder`` format).
        root: overrides the spec's root (relative paths: against the repository root).
        fps: overrides the spec's nominal rate.
        limit: stop after this many records.
        on_error: receives an :class:`~pipeline.adapters.AnnotationProblem` per skipped
            video or query (default: a warning each).

    Raises:
        ValueError: unknown split (the message lists the known ones).
        DatasetNotFoundError: the data is missing (at once, with the download hint).
    """
    from pipeline.adapters import DatasetNotFoundError, get_adapter, warn_problem
    from pipeline.adapters.checks import checked

    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.format != "folder" and split not in spec.splits:
        raise ValueError(
            f"dataset {spec.name!r} has no split {split!r}; known splits: {', '.join(spec.splits)}"
        )
    base = Path(root) if root is not None else spec.root
    base = base if base.is_absolute() else REPO_ROOT / base
    adapter = get_adapter(spec.format)
    rate = fps if fps is not None else spec.fps
    try:
        records = adapter(base, split, fps=rate, dataset=spec.name, on_error=on_error)
    except DatasetNotFoundError as exc:
        hint = f" [{spec.name}] {spec.download}" if spec.download else ""
        raise DatasetNotFoundError(f"{exc}{hint}") from exc
    # ground truth checked in one place for every format (pipeline.adapters.checks)
    records = checked(records, on_error or warn_problem, f"{spec.name}/{split}")
    if limit is None:
        return records
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return itertools.islice(records, limit)


def _summary(spec: DatasetSpec, split: str, root: Path | None, limit: int | None) -> int:
    from tqdm import tqdm

    problems: list = []
    qtypes: Counter = Counter()
    videos = gt_objects = 0
    records = iter_records(spec, split, root=root, limit=limit, on_error=problems.append)
    for record in tqdm(records, desc=f"{spec.name}/{split}", unit="video"):
        videos += 1
        qtypes.update(q.qtype for q in record.queries)
        gt_objects += sum(len(q.gt) for q in record.queries)
    print(f"{spec.name}/{split}: {videos} videos, {sum(qtypes.values())} queries {dict(qtypes)}, "
          f"{gt_objects} target objects, {len(problems)} skipped")  # fmt: skip
    for p in problems[:20]:
        print(f"  {p}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.datasets",
        description="List the registered datasets, or read one split and print its counts "
        "and the videos/queries skipped for malformed annotations.",
    )
    p.add_argument("name", nargs="?", help="dataset name from data/datasets.yaml")
    p.add_argument("split", nargs="?", help="split to read (default: the first listed)")
    p.add_argument("--root", type=Path, help="raw data root (default: from the YAML)")
    p.add_argument("--limit", type=int, help="read at most N videos")
    p.add_argument("--config", type=Path, default=DATASETS_YAML, help="the datasets YAML")
    args = p.parse_args(argv)
    specs = load_specs(args.config)
    if args.name is None:
        for s in specs.values():
            present = "present" if s.resolved_root().exists() else "missing"
            print(
                f"{s.name:18s} {s.format:9s} {present:8s} {s.resolved_root()}  splits: {', '.join(s.splits)}"
            )
        return 0
    if args.name not in specs:
        p.error(f"unknown dataset {args.name!r}; known: {', '.join(specs)}")
    spec = specs[args.name]
    try:
        return _summary(spec, args.split or spec.splits[0], args.root, args.limit)
    except (FileNotFoundError, ValueError) as exc:  # missing data, unknown split, bad JSON
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
