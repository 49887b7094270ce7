"""Ground a sentence in any video: preprocess it, ask the model, write a highlighted mp4.

    python -m trainer.predict --video clip.mp4 --query "the person who sits down"
    make predict VIDEO=clip.mp4 QUERY="the red circle that stops"

Runs the same pipeline as preprocessing (detect, track, renumber, overlay IDs) on one
video, asks the model which IDs and when, prints the parsed answer as JSON, and writes
a video where the chosen objects are boxed in white during the predicted span.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.runtime import MODELS_DIR, RUNS_DIR, resolve

TRAINED_MODEL = RUNS_DIR / "train" / "final"


def default_model() -> str:
    """The demo's trained model when present, else the tiny random model (built offline
    into ``data/models`` on first use, so that the chain runs before any training)."""
    if TRAINED_MODEL.exists():
        return str(TRAINED_MODEL)
    from trainer.tiny import ensure_tiny_model

    return str(ensure_tiny_model(MODELS_DIR / "tiny-qwen2.5-vl"))


def video_record(path: Path, query: str):
    """A one-query :class:`VideoRecord` for a video file (no ground truth).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty query.
        DecodeError: the file is not a readable video.
    """
    from pipeline.decode import DecodeError
    from pipeline.records import QueryRecord, VideoRecord

    path = Path(path)
    if not query or not query.strip():
        raise ValueError("the query is empty: give a sentence describing the object and event")
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    try:
        import av

        with av.open(str(path)) as c:
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
            duration = float(s.duration * s.time_base) if s.duration else 0.0
    except Exception as exc:  # corrupt header: say so plainly
        raise DecodeError(f"cannot open {path}: {exc}") from exc
    q = QueryRecord(query_id="0", text=query, qtype="referring", span_s=(0.0, max(duration, 0.0)))
    return VideoRecord(
        video_id=path.stem, dataset="folder", split="predict", source=path, fps=fps, queries=(q,)
    )


def highlight_frames(
    record, video, ids: Sequence[int], span_s, *, max_side: int | None, max_gap_s: float, fps: float
):
    """Frames of the source video with every ID drawn and the chosen IDs boxed during the span."""
    import cv2

    from pipeline.decode import iter_frames
    from pipeline.overlay import IdOverlay, overlay_video_frame

    overlay = IdOverlay(style="number")
    chosen = [t for t in video.tracks if t.id in set(ids)]
    for frame in iter_frames(record, fps=fps, max_side=max_side):
        img = overlay_video_frame(frame.image, list(video.tracks), frame.time_s, max_gap_s, overlay)
        active = span_s is not None and span_s[0] <= frame.time_s <= span_s[1]
        if active:
            for t in chosen:
                box = t.boxes_at(np.array([frame.time_s]), max_gap_s)[0]
                if not np.isnan(box).any():
                    x1, y1, x2, y2 = (round(float(v)) for v in box)
                    cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 255), 3)
                    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 0), 1)
        label = f"t={frame.time_s:5.1f}s" + ("  MATCH" if active else "")
        cv2.putText(img, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            img, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        yield img


def predict(
    video_path: Path,
    query: str,
    *,
    model: str | None = None,
    out: Path | None = None,
    weights: str | None = None,
    classes: Sequence[str] | None = None,
    template: str | None = None,
    max_new_tokens: int | None = None,
    track_fps: float | None = None,
    max_side: int | None = 640,
    render_fps: float = 10.0,
) -> dict:
    """Run the whole chain on one video; returns the answer and the output path.

    Returns ``{"video", "query", "ids", "span_s" ([start, end] or None), "format_ok",
    "tracks" (number of tracks found), "completion" (raw model text), "output" (mp4 path)}``.
    Raises ``FileNotFoundError``, ``ValueError`` or ``DecodeError`` (see :func:`video_record`)
    before any model is loaded.
    """

    from pipeline.config import PreprocessConfig
    from pipeline.processor import VideoProcessor
    from pipeline.shards import row_to_video
    from pipeline.video_io import write_mp4
    from trainer.config import inference_settings
    from trainer.data import make_sample
    from trainer.policy import load_policy, resolve_device
    from trainer.prompt import parse_answer
    from trainer.rollout import build_requests, make_engine

    record = video_record(video_path, query)
    config = PreprocessConfig(weights=weights, classes=tuple(classes) if classes else None,
                              track_fps=track_fps, max_side=max_side)  # fmt: skip
    row, _ = VideoProcessor(config)(record)
    video = row_to_video(row)
    model = model or default_model()
    # feed the model as it was trained (template, frame rate, frame and pixel budgets)
    inputs = inference_settings(model, template=template, max_new_tokens=max_new_tokens)
    sample = make_sample(video, video.queries[0], fps=inputs["fps"],
                         max_frames=inputs["max_frames"], total_pixels=inputs["total_pixels"])  # fmt: skip
    device = resolve_device("auto")
    policy, processor = load_policy(model, device=device)
    policy.eval()
    engine = make_engine("hf", policy, processor)
    completion = engine.generate(
        build_requests([sample], processor, inputs["template"]), num_generations=1,
        max_new_tokens=inputs["max_new_tokens"], temperature=0.0,
    )[0][0]  # fmt: skip
    answer = parse_answer(completion.text)
    span = (
        None if answer.start_s is None or answer.end_s is None else (answer.start_s, answer.end_s)
    )
    out = out or RUNS_DIR / "predict" / f"{video_path.stem}.mp4"
    fps = min(render_fps, record.fps)
    write_mp4(out, highlight_frames(record, video, answer.ids, span, max_side=max_side,
                                    max_gap_s=config.max_gap_s, fps=fps), fps)  # fmt: skip
    return {
        "video": str(video_path),
        "query": query,
        "ids": list(answer.ids),
        "span_s": None if span is None else [round(span[0], 2), round(span[1], 2)],
        "format_ok": answer.format_ok,
        "tracks": len(video.tracks),
        "completion": completion.text,
        "output": str(out),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.predict",
        description="Ground a sentence in a video: which tracked object(s) and when. Prints the "
        "answer as JSON and writes an mp4 with the chosen objects highlighted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--video", required=True, type=Path, help="an mp4/avi/mkv/mov file")
    p.add_argument("--query", required=True, help="the sentence to ground")
    p.add_argument(
        "--model",
        help="checkpoint folder or cached hub id (default: data/runs/train/final, else the tiny model)",
    )
    p.add_argument("--out", type=Path, help="output mp4 (default: data/runs/predict/<video>.mp4)")
    p.add_argument("--weights", help="YOLO weights (default: the committed synthetic detector)")
    p.add_argument("--classes", nargs="+", help="detector classes to keep, e.g. person")
    p.add_argument(
        "--template", help="prompt template (default: the model's training config, else json)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, help="default: the model's training config, else 256"
    )
    p.add_argument("--track-fps", type=float, help="tracking rate (default: native)")
    p.add_argument("--max-side", type=int, default=640)
    args = p.parse_args(argv)
    if not args.query.strip():
        raise SystemExit("error: --query is empty: give a sentence describing the object and event")
    from pipeline.decode import DecodeError

    video = resolve(args.video)
    if args.model is None and not TRAINED_MODEL.exists() and video.is_file():
        print(
            f"note: no trained model at {TRAINED_MODEL}; using the untrained tiny model "
            "(pass --model, or train one with `make train`)",
            file=sys.stderr,
        )
    try:
        result = predict(
            video, args.query, model=args.model, out=args.out, weights=args.weights,
            classes=args.classes, template=args.template, max_new_tokens=args.max_new_tokens,
            track_fps=args.track_fps, max_side=args.max_side or None,
        )  # fmt: skip
    except (FileNotFoundError, DecodeError) as err:  # missing or unreadable video or model
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
