"""One view of a shard folder, all shares merged: counts, failures, right-ID rates, MOT metrics.

    python -m pipeline.views.summary data/shards/mevis/train          # text
    python -m pipeline.views.summary data/shards/mevis/train --json   # machine-readable

Counts and rates are recomputed from the part files on disk (every share's, so they are
right whatever ran, crashed or resumed); each share's manifest adds its status, its
selection and whether a live run holds it now; a failure is listed while its video has
no row (a rerun that succeeded removes it), once, whichever share recorded it. Videos
with MOTChallenge ground truth add one line of MOT metrics, ByteTrack alone against the
pipeline (the manifest's ``tracking`` block).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import PreprocessConfig
from pipeline.locks import held_tags
from pipeline.mot import summary_line
from pipeline.output import (
    failure_paths,
    manifest_paths,
    manifest_tag,
    read_failures,
    summarize_shards,
    summarize_tracking,
)
from pipeline.shards import list_shards, read_video_ids


def folder_summary(out_dir: str | Path) -> dict:
    """The merged view of ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no shard folder {out_dir}")
    paths = manifest_paths(out_dir)
    manifests = {p.name: json.loads(p.read_text()) for p in paths}
    tags = {p.name: manifest_tag(p) for p in paths}  # from the name: set from the start
    hashes = sorted({m.get("config_hash") for m in manifests.values()})
    running = set(held_tags(out_dir))
    shares = []
    for name, m in manifests.items():
        tag = tags[name]
        c = m.get("counts", {})
        shares.append({
            "manifest": name,
            "share": tag,
            "status": "running now" if tag in running else m.get("status"),
            "videos_selected": c.get("videos_selected"),
            "share_done": c.get("share_done"),
            "videos_failed": c.get("videos_failed"),
        })  # fmt: skip
    finished = read_video_ids(out_dir)
    failures: dict[str, dict] = {}
    for path in failure_paths(out_dir):
        for vid, entry in read_failures(path).items():
            if vid not in finished:
                failures[vid] = entry
    max_gap_s = next(
        (m["config"]["max_gap_s"] for m in manifests.values() if "config" in m),
        PreprocessConfig.max_gap_s,
    )
    has_parts = bool(list_shards(out_dir, recursive=False))
    counts = summarize_shards(out_dir, max_gap_s) if has_parts else {"videos": 0}
    annotation_problems = next(
        (m["annotation_problems"] for m in manifests.values() if "annotation_problems" in m), []
    )
    return {
        "folder": str(out_dir),
        "config_hashes": hashes,
        "shares": sorted(shares, key=lambda s: s["share"]),
        "counts": counts,
        "tracking": summarize_tracking(out_dir) if has_parts else None,
        "failures": [failures[v] for v in sorted(failures)],
        "annotation_problems": annotation_problems,
    }


def format_summary(s: dict) -> str:
    """The text view printed by the CLI."""
    c = s["counts"]
    lines = [f"{s['folder']}: config hash {', '.join(map(str, s['config_hashes'])) or '-'}"]
    for sh in s["shares"]:
        lines.append(
            f"  share {sh['share']} ({sh['manifest']}): {sh['status']}, "
            f"{sh['share_done']}/{sh['videos_selected']} of its videos done, "
            f"{sh['videos_failed']} failed"
        )
    if c.get("videos") and not c.get("annotated"):
        lines.append(f"videos {c['videos']}, queries {c['queries']}, no query with ground truth")
    elif c.get("videos"):
        lines.append(
            f"videos {c['videos']}, queries {c['queries']}, annotated {c['annotated']}, "
            f"matched {c['matched']} ({100 * c['match_rate']:.1f}%), right IDs {c['exact']} "
            f"({100 * c['exact_rate']:.1f}%), mean match IoU {c['mean_match_iou']:.3f}"
        )
    else:
        lines.append("no finished video yet")
    tracking = summary_line(s.get("tracking"))
    if tracking:
        lines.append(tracking)
    lines.append(f"failed videos (no row): {len(s['failures'])}")
    lines += [f"  {f['video_id']}: {f['reason']}" for f in s["failures"]]
    probs = s["annotation_problems"]
    if probs:
        skipped = sum(bool(p.get("skipped")) for p in probs if isinstance(p, dict))
        lines.append(f"annotation problems: {len(probs)} ({skipped} skipped, the rest repaired)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.views.summary",
        description="Merge every share's manifest of a shard folder into one view: counts "
        "and right-ID rates recomputed from the part files, each share's status, the videos "
        "that failed and still have no row.",
    )
    p.add_argument("folder", type=Path, help="a shard folder written by pipeline.preprocess")
    p.add_argument("--json", action="store_true", help="print the view as JSON")
    args = p.parse_args(argv)
    try:
        s = folder_summary(args.folder)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=2, default=str) if args.json else format_summary(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
