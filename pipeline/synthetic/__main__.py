"""``python -m pipeline.synthetic``: write the synthetic dataset (see :mod:`pipeline.synthetic.writer`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.synthetic.writer import DEFAULT_OUT, FORMATS, generate


def _dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic",
        description=(
            "Generate the procedural synthetic STVG dataset (moving shapes with templated referring "
            "expressions and exact boxes, masks and time spans) in the real MeViS and HC-STVG "
            "layouts, plus a YOLO detection set. Deterministic for a seed; re-running with the "
            "same parameters is a no-op."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root")
    parser.add_argument("--seed", type=int, default=0, help="master seed")
    parser.add_argument(
        "--num-train", type=int, default=32, help="videos in MeViS train / HC-STVG train"
    )
    parser.add_argument(
        "--num-test", type=int, default=8, help="videos in MeViS valid_u / HC-STVG test"
    )
    parser.add_argument("--det-train", type=int, default=400, help="YOLO training images")
    parser.add_argument("--det-val", type=int, default=80, help="YOLO validation images")
    parser.add_argument("--width", type=int, default=320, help="frame width (even)")
    parser.add_argument("--height", type=int, default=240, help="frame height (even)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate")
    parser.add_argument("--duration-s", type=float, default=8.0, help="video length in seconds")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"comma-separated subset of {','.join(FORMATS)}",
    )
    parser.add_argument(
        "--force", action="store_true", help="delete and regenerate an existing dataset"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(
            args.out,
            seed=args.seed,
            num_train=args.num_train,
            num_test=args.num_test,
            det_train=args.det_train,
            det_val=args.det_val,
            width=args.width,
            height=args.height,
            fps=args.fps,
            duration_s=args.duration_s,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            progress=not args.no_progress,
            force=args.force,
        )
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    elapsed = time.perf_counter() - start
    print(json.dumps(summary["counts"], indent=2, sort_keys=True))
    mb = _dir_size_bytes(args.out) / 1e6
    print(f"wrote {args.out} ({mb:.1f} MB) in {elapsed:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
