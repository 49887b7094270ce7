"""Benchmark: ID stability on the harder synthetic split, ByteTrack alone vs the pipeline.

    python bench/tracking.py [--data data/raw/synthetic-hard] [--per-kind 3] [--json out.json]

Writes the split first when ``--data`` does not hold it (``pipeline.synthetic.hard``).
Every video is decoded and detected once (the committed detector, the pipeline's
settings); the same detections then go to
- ``bytetrack``: Ultralytics' ByteTrack with ``bytetrack.yaml`` as it is (IDs as it
  outputs them, no cleaning);
- ``pipeline``: the preprocessing tracker (``PreprocessConfig`` defaults: ByteTrack plus
  the cleaning, border extension, duplicate resolution and offline association);
- ``pipeline-no-assoc``: the same with the offline association off;
- ``pipeline-no-color``: the association without its colour check (``associate_min_color=-1``);
- ``pipeline-no-repair``: boxes around two overlapping objects left as the detector gave
  them (``merged_growth=0``);
- ``pipeline-botsort``: the pipeline with BoT-SORT (detector features as ReID) online;
- ``true-ids``: each frame's detections given the identity of the ground-truth box they
  match (:func:`pipeline.mot.true_ids_on_detections`): a tracker that never errs on
  identity, the most IDF1 these detections allow (only boxes the tracker adds where the
  detector missed, such as the border extension, can score above it).
Metrics come from ``motmetrics`` (IDF1, ID switches, fragmentations, MOTA; IoU >= 0.5;
the reading, matching and ByteTrack-alone tracker of :mod:`pipeline.mot`, which
preprocessing also uses to put them in a shard folder's manifest), accumulated over all videos, per kind and in total; ratios of the pipeline to ByteTrack
alone are printed. No assertion on the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.mot import (  # noqa: E402
    accumulate,
    bytetrack_alone,
    read_mot_gt,
    tracks_on_frames,
    true_ids_on_detections,
)

METRICS = ["idf1", "num_switches", "num_fragmentations", "mota", "num_unique_objects"]


def detect_video(path: Path, detector) -> list[tuple[float, object]]:
    """(time_s, detections) for every frame of an mp4."""
    from pipeline.decode import iter_frames, probe
    from pipeline.records import VideoRecord

    bare = VideoRecord(path.stem, "bench", "bench", path, 1.0)
    record = VideoRecord(path.stem, "bench", "bench", path, probe(bare).fps)
    frames = list(iter_frames(record, max_side=None))
    dets = detector([f.image for f in frames])
    return [(f.time_s, d) for f, d in zip(frames, dets)]


def pipeline_tracks(frames, fps: float, wh, **overrides) -> dict[int, list]:
    """frame -> [(id, xyxy)] of the preprocessing tracker's final tracks."""
    from pipeline.config import PreprocessConfig
    from pipeline.processor import tracker_config
    from pipeline.track import collect_tracks

    cfg = tracker_config(PreprocessConfig(**overrides))
    tracks = collect_tracks(frames, cfg, fps, frame_wh=wh)
    return tracks_on_frames(tracks, [t for t, _ in frames])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from pipeline.synthetic.hard import DEFAULT_OUT

    parser.add_argument("--data", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-kind", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    import motmetrics as mm

    from pipeline.detect import Detector
    from pipeline.runtime import configure_offline
    from pipeline.synthetic.hard import ALL_KINDS, SPLIT_VERSION, write_hard_split

    configure_offline()
    if not (args.data / "summary.json").exists():
        write_hard_split(args.data, args.seed, args.per_kind)
    summary = json.loads((args.data / "summary.json").read_text())
    if (summary["seed"], summary["per_kind"]) != (args.seed, args.per_kind):
        parser.error(
            f"{args.data} holds the split of --seed {summary['seed']} --per-kind "
            f"{summary['per_kind']}; pass those, or another --data for a new split"
        )
    missing = sorted(set(ALL_KINDS) - {v["kind"] for v in summary["videos"]})
    version = summary.get("version", 1)  # summaries without one: the first version
    if missing or version != SPLIT_VERSION:
        what = f"has no {', '.join(missing)} videos" if missing else "holds other scenes"
        parser.error(
            f"{args.data} {what} (written by an older version, split version "
            f"{version}, this one is {SPLIT_VERSION}); "
            f"rewrite it: python -m pipeline.synthetic.hard --out {args.data}"
        )
    detector = Detector(conf=0.1, iou=0.5)  # PreprocessConfig's detector settings
    accs: dict[str, list] = {
        "bytetrack": [],
        "pipeline": [],
        "pipeline-no-assoc": [],
        "pipeline-no-color": [],
        "pipeline-no-repair": [],
        "pipeline-botsort": [],
        "true-ids": [],
    }
    names = []
    for v in summary["videos"]:
        path = args.data / f"{v['video']}.mp4"
        frames = detect_video(path, detector)
        gt = read_mot_gt(args.data / f"{v['video']}.gt.txt")
        fps = 1.0 / float(frames[1][0] - frames[0][0])
        w, h = summary.get("width", 320), summary.get("height", 240)
        hyps = {
            "bytetrack": bytetrack_alone(frames, fps),
            "pipeline": pipeline_tracks(frames, fps, (w, h)),
            "pipeline-no-assoc": pipeline_tracks(frames, fps, (w, h), associate_gap_s=0),
            "pipeline-no-color": pipeline_tracks(frames, fps, (w, h), associate_min_color=-1),
            "pipeline-no-repair": pipeline_tracks(frames, fps, (w, h), merged_growth=0),
            "pipeline-botsort": pipeline_tracks(frames, fps, (w, h), tracker="botsort"),
            "true-ids": true_ids_on_detections(gt, [d for _, d in frames]),
        }
        for name, hyp in hyps.items():
            accs[name].append(accumulate(gt, hyp, len(frames)))
        names.append(f"{v['kind']}/{v['video']}")
    mh = mm.metrics.create()
    result = {}
    kinds = sorted({v["kind"] for v in summary["videos"]})
    for name, acc_list in accs.items():
        rows = {}
        for kind in [*kinds, "all"]:
            sel = [a for a, n in zip(acc_list, names) if kind == "all" or n.startswith(kind)]
            df = mh.compute_many(sel, metrics=METRICS, generate_overall=True)
            rows[kind] = {m: float(df.loc["OVERALL", m]) for m in METRICS}
        result[name] = rows
    print("| tracker | kind | IDF1 | ID switches | fragmentations | MOTA |")
    print("|---|---|---|---|---|---|")
    for name, rows in result.items():
        for kind, r in rows.items():
            print(
                f"| {name} | {kind} | {100 * r['idf1']:.1f} | {r['num_switches']:.0f} | "
                f"{r['num_fragmentations']:.0f} | {100 * r['mota']:.1f} |"
            )
    a, b = result["bytetrack"]["all"], result["pipeline"]["all"]
    ratio = b["num_switches"] / max(a["num_switches"], 1)
    print(f"ID switches pipeline / ByteTrack alone: {ratio:.2f} (target <= 0.5)")
    print(f"IDF1 pipeline - ByteTrack alone: {100 * (b['idf1'] - a['idf1']):+.1f} points")
    c = result["true-ids"]["all"]
    print(
        f"IDF1 true IDs on the same detections - ByteTrack alone: "
        f"{100 * (c['idf1'] - a['idf1']):+.1f} points (the most any tracker could gain)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
