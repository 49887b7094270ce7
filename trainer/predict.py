"""Ground a sentence in any video: preprocess it, ask the model, write a highlighted mp4.

    python -m trainer.predict --video clip.mp4 --query "the person who sits down"
    make predict VIDEO=clip.mp4 QUERY="the red circle that stops"

Runs the same pipeline as preprocessing (detect, track, renumber, overlay IDs) on one
video, asks the model which IDs and when, prints the parsed answer as JSON, and writes
a video where the chosen objects are boxed in white during the predicted span. The span
is clipped to the clip; a frame of the span where a chosen ID is not tracked says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.runtime import MODELS_DIR, RUNS_DIR, resolve

DEMO_MODEL = RUNS_DIR / "demo" / "train" / "final"  # what `make demo` trains
TINY_MODEL = MODELS_DIR / "tiny-qwen2.5-vl"


def resolve_model(model: str | None) -> tuple[str, str]:
    """``(path or hub id, how it was chosen)`` of the model to ask, checked before any work.

    Without ``model``: the demo's trained model when present, else the untrained tiny model
    (built offline on first use, so the chain runs before any training). A given ``model``
    resolves like ``--video`` (as given when it exists, else under the repository root).

    Raises:
        FileNotFoundError: a folder without ``config.json``, a path that does not exist, or an
            ``org/name`` hub id that is not in the local Hugging Face cache.
    """
    if model is None:
        if DEMO_MODEL.is_dir():
            return str(DEMO_MODEL), "the model `make demo` trained"
        from trainer.tiny import ensure_tiny_model

        tiny = ensure_tiny_model(TINY_MODEL)
        return str(tiny), "the untrained tiny model (no trained model at " + str(DEMO_MODEL) + ")"
    local = resolve(model)
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json: not a model folder")
        return str(local.resolve()), "--model"
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if hub_id and _in_hf_cache(model):
        return model, "--model (local Hugging Face cache)"
    where = f"no model folder {local}" + (" and no cached hub model " + model if hub_id else "")
    raise FileNotFoundError(f"{where}; train one (`make demo` or `make train`) or pass a folder")


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def clip_span(span_s, duration_s: float) -> tuple[float, float] | None:
    """The predicted span clipped to the clip ``[0, duration_s]``; None when nothing is left
    (no span, or a span wholly outside the clip)."""
    if span_s is None:
        return None
    start, end = max(0.0, float(span_s[0])), min(float(duration_s), float(span_s[1]))
    return (start, end) if end > start else None


def frame_banner(time_s: float, span_s, ids: Sequence[int], present: set[int]) -> str:
    """The label of one rendered frame: its time, then inside the span ``MATCH`` when every
    chosen ID is tracked in the frame, else which chosen IDs are not (and why nothing is
    boxed)."""
    label = f"t={time_s:5.1f}s"
    if span_s is None or not span_s[0] <= time_s <= span_s[1]:
        return label
    if not ids:
        return label + "  in span, no ID answered"
    missing = [i for i in ids if i not in present]
    if not missing:
        return label + "  MATCH"
    return label + f"  ID {','.join(map(str, missing))} not tracked here"


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
    record,
    video,
    ids: Sequence[int],
    span_s,
    *,
    max_side: int | None,
    max_gap_s: float,
    fps: float,
    track_rate: float | None = None,
):
    """Frames of the source video with every ID drawn, the chosen IDs boxed during the span
    where they are tracked, and each frame's :func:`frame_banner`. With ``track_rate`` (the
    frame rate tracks were made at) a number is drawn only where its track was seen on the
    nearest tracked frame, as preprocessing draws them."""
    import cv2

    from pipeline.decode import iter_frames
    from pipeline.overlay import IdOverlay, overlay_video_frame

    overlay = IdOverlay(style="number")
    chosen = [t for t in video.tracks if t.id in set(ids)]
    for frame in iter_frames(record, fps=fps, max_side=max_side):
        img = overlay_video_frame(
            frame.image, list(video.tracks), frame.time_s, max_gap_s, overlay,
            max_unseen_s=None if track_rate is None else 0.51 / track_rate,
        )  # fmt: skip
        active = span_s is not None and span_s[0] <= frame.time_s <= span_s[1]
        present: set[int] = set()
        for t in chosen:
            box = t.boxes_at(np.array([frame.time_s]), max_gap_s)[0]
            if np.isnan(box).any():
                continue
            present.add(t.id)
            if active:
                x1, y1, x2, y2 = (round(float(v)) for v in box)
                cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 255), 3)
                cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 0), 1)
        label = frame_banner(frame.time_s, span_s, list(ids), present)
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
    render_fps: float | None = None,
) -> dict:
    """Run the whole chain on one video; returns the answer and the output path.

    Returns ``{"video", "query", "model" (path or hub id asked), "model_source" (how it was
    chosen), "ids", "span_s" ([start, end] clipped to the clip, or None), "answered_span_s"
    (the span as the model wrote it), "span_clipped", "duration_s", "format_ok", "tracks" (number of tracks
    found), "completion" (raw model text), "output" (mp4 path)}``. The mp4 keeps the clip's
    frame rate unless ``render_fps`` caps it. Raises ``FileNotFoundError``, ``ValueError`` or
    ``DecodeError`` (see :func:`video_record` and :func:`resolve_model`) before detection.
    """

    from pipeline.config import PreprocessConfig
    from pipeline.processor import VideoProcessor
    from pipeline.shards import row_to_video
    from pipeline.video_io import write_mp4
    from trainer.answer import parse_answer
    from trainer.config import inference_settings
    from trainer.data import make_sample
    from trainer.policy import load_policy, resolve_device
    from trainer.rollout import build_requests, make_engine

    record = video_record(video_path, query)
    model, source = resolve_model(model)
    config = PreprocessConfig(weights=weights, classes=tuple(classes) if classes else None,
                              track_fps=track_fps, max_side=max_side)  # fmt: skip
    row, _ = VideoProcessor(config)(record)
    video = row_to_video(row)
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
    duration = clip_duration(record, video)
    span = clip_span(answer.span_s, duration)
    out = out or RUNS_DIR / "predict" / f"{video_path.stem}.mp4"
    fps = record.fps if render_fps is None else min(render_fps, record.fps)
    track_rate = config.track_fps or record.fps  # as the processor tracked it
    write_mp4(out, highlight_frames(record, video, answer.ids, span, max_side=max_side,
                                    max_gap_s=config.max_gap_s, fps=fps,
                                    track_rate=track_rate), fps)  # fmt: skip
    raw = None if answer.span_s is None else (float(answer.span_s[0]), float(answer.span_s[1]))
    return {
        "video": str(video_path),
        "query": query,
        "model": model,
        "model_source": source,
        "ids": list(answer.ids),
        "span_s": None if span is None else [round(span[0], 2), round(span[1], 2)],
        "answered_span_s": None if raw is None else list(raw),
        "span_clipped": raw is not None and span != raw,
        "duration_s": round(duration, 3),
        "format_ok": answer.format_ok,
        "tracks": len(video.tracks),
        "completion": completion.text,
        "output": str(out),
    }


def clip_duration(record, video) -> float:
    """Length of the clip in seconds: the container's duration, or when the header has none,
    one frame past the last decoded frame."""
    header = float(record.queries[0].span_s[1])
    if header > 0:
        return header
    last = float(video.frame_times_s[-1]) if len(video.frame_times_s) else 0.0
    return last + 1.0 / max(float(video.out_fps), 1e-6)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.predict",
        description="Ground a sentence in a video: which tracked object(s) and when. Prints the "
        "answer as JSON and writes an mp4 with the chosen objects highlighted.",
    )
    p.add_argument("--video", required=True, type=Path, help="an mp4/avi/mkv/mov file")
    p.add_argument("--query", required=True, help="the sentence to ground")
    p.add_argument(
        "--model",
        help="checkpoint folder or cached hub id; a relative path resolves like --video "
        "(default: data/runs/demo/train/final, the model `make demo` trains, when it exists, "
        "else the untrained tiny model)",
    )
    p.add_argument("--out", type=Path, help="output mp4 (default: data/runs/predict/<video>.mp4)")
    p.add_argument(
        "--weights",
        help="YOLO weights: a file in data/models/ (e.g. yolo11x.pt) or a path; 'synthetic' runs "
        "the committed synthetic-shapes detector, which is also the default for the synthetic "
        "set's own videos (other videos need --weights)",
    )
    p.add_argument(
        "--classes", nargs="+", help="detector classes to keep, e.g. person (default: all)"
    )
    p.add_argument(
        "--template", help="prompt template (default: the model's training config, else json)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="longest answer in tokens (default: the model's training config, else 256)",
    )
    p.add_argument("--track-fps", type=float, help="tracking rate (default: the clip's frame rate)")
    p.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="longest frame side for detection and the output video; 0 keeps the clip's size "
        "(default: 640)",
    )
    p.add_argument(
        "--render-fps",
        type=float,
        help="cap the output video's frame rate (default: the clip's frame rate)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.query.strip():
        raise SystemExit("error: --query is empty: give a sentence describing the object and event")
    from pipeline.decode import DecodeError

    video = resolve(args.video)
    try:
        result = predict(
            video, args.query, model=args.model, out=args.out, weights=args.weights,
            classes=args.classes, template=args.template, max_new_tokens=args.max_new_tokens,
            track_fps=args.track_fps, max_side=args.max_side or None, render_fps=args.render_fps,
        )  # fmt: skip
    except (FileNotFoundError, DecodeError) as err:  # missing or unreadable video or model
        raise SystemExit(f"error: {err}") from None
    print(f"model: {result['model']} ({result['model_source']})", file=sys.stderr)
    if result["span_clipped"]:
        print(
            f"note: the answered span {result['answered_span_s']} is clipped to the "
            f"{result['duration_s']} s clip: {result['span_s']}",
            file=sys.stderr,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
