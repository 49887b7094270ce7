"""The evaluator on hand-built shards: baselines, breakdowns, J&F, the model path, the CLI.

Every shard here is written with ``make_row`` + ``write_shard``; expected numbers are worked
out in the comments (boxes in pixels, times in seconds, native rate 1 fps unless stated).
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import mask_to_rle
from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import make_row, read_videos, write_shard
from trainer.answer import parse_answer
from trainer.evaluate import clip_duration_s, evaluate, main, score_sample
from trainer.metrics import FRAME_GRID, JF_GRID, temporal_iou

SIDE = 64
SQUARE = [10, 10, 30, 30]  # 20 x 20, area 400
SHIFTED = [20, 10, 40, 30]  # SQUARE moved right by half its width: 200 / (400 + 400 - 200) = 1/3
BIG = [0, 0, 60, 60]  # area 3600, contains SQUARE: IoU 400 / 3600 = 1/9
CORNER = [0, 0, 20, 20]
FAR = [30, 30, 50, 50]  # disjoint from CORNER: IoU 0
OFF = [40, 40, 60, 60]  # overlaps FAR by 10 x 10: 100 / (400 + 400 - 100) = 1/7


def jpeg(width: int, height: int, grey: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), grey, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def track(track_id, box, times, masks=None):
    return Track(track_id, "shape", times, np.tile(np.float32(box), (len(times), 1)), masks)


def gt(box, times, masks=None):
    return (GTObject(0, times, np.tile(np.float32(box), (len(times), 1)), masks),)


def row(video_id, dataset, frame_times_s, tracks, queries, *, side=SIDE, fps=1.0):
    return make_row(
        video_id=video_id,
        dataset=dataset,
        split="test",
        width=side,
        height=side,
        out_fps=fps,
        track_fps=fps,
        native_fps=fps,
        frame_times_s=frame_times_s,
        frames=[jpeg(side, side) for _ in frame_times_s],
        tracks=tracks,
        queries=queries,
    )


# Video "a" (VidSTG-like), frames at 0..4 s. Tracks: 1 = SQUARE at 0..4, 2 = SHIFTED at 0..4,
# 3 = BIG at 0 and 1 only (absent from 2 s on).
VIDEO_A = row(
    "a",
    "vidstg",
    [0, 1, 2, 3, 4],
    [track(1, SQUARE, [0, 1, 2, 3, 4]), track(2, SHIFTED, [0, 1, 2, 3, 4]), track(3, BIG, [0, 1])],
    [
        QueryRecord("a1", "the square moves", "declarative", (1, 3), gt(SQUARE, [1, 2, 3]), (1,)),
        QueryRecord(
            "a2", "what moves right?", "interrogative", (2, 4), gt(SQUARE, [2, 3, 4]), (2,)
        ),
        QueryRecord("a3", "no ground truth here", "declarative", (0, 0)),  # skipped, counted
    ],
)
# Video "b" (HC-STVG-like), frames at 0..3 s. Tracks: 1 = CORNER at 0 and 1 only, 2 = FAR at 0..3.
VIDEO_B = row(
    "b",
    "hcstvg",
    [0, 1, 2, 3],
    [track(1, CORNER, [0, 1]), track(2, FAR, [0, 1, 2, 3])],
    [
        QueryRecord("b1", "the corner one", "declarative", (0, 3), gt(CORNER, [0, 1, 2, 3]), (1,)),
        # ground truth that no track matched: scored (and counted in n) with no target IDs
        QueryRecord("b2", "who is in the corner?", "interrogative", (2, 3), gt(OFF, [2, 3])),
    ],
)

# vIoU is the official one: spans are half-open on the evaluated frames (native 1 fps here),
# S_u = frames in [min start, max end), S_i = frames in [max start, min end).
# Oracle (matched IDs + ground-truth span, so tIoU = 1 everywhere):
#   a1: span (1, 3) holds frames 1, 2; track 1 == GT there            -> vIoU 1
#   a2: span (2, 4) holds 2, 3; track 2 vs GT: IoU 1/3 each            -> vIoU 1/3
#   b1: span (0, 3) holds 0, 1, 2; track 1 at 0, 1 (IoU 1), gone at 2  -> vIoU 2/3
#   b2: no target IDs: empty tube                                      -> vIoU 0, ID wrong
ORACLE = {
    "a1": (1.0, 1.0, True),
    "a2": (1.0, 1 / 3, True),
    "b1": (1.0, 2 / 3, True),
    "b2": (1.0, 0.0, False),
}
# Largest (largest mean box area over the clip, span = whole clip):
#   video a: track 3 (3600 > 400), clip 0..4 + one frame = (0, 5); frames 0..4
#     a1: tIoU (1, 3) vs (0, 5) = 2/5; S_u = {0..4}, S_i = {1, 2}: IoU 1/9 at 1, track 3
#         gone at 2 -> vIoU (1/9) / 5 = 1/45
#     a2: tIoU 2/5; S_i = {2, 3}, track 3 gone -> vIoU 0
#   video b: tracks tie on area 400, the longer one wins: track 2, clip (0, 4)
#     b1: tIoU 3/4; FAR vs CORNER IoU 0 -> vIoU 0
#     b2: tIoU 1/4; S_u = {0, 1, 2, 3}, S_i = {2}: FAR vs OFF IoU 1/7 -> vIoU (1/7) / 4 = 1/28
LARGEST = {
    "a1": (0.4, 1 / 45, False),
    "a2": (0.4, 0.0, False),
    "b1": (0.75, 0.0, False),
    "b2": (0.25, 1 / 28, False),
}


@pytest.fixture(scope="module")
def box_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("box_shards")
    write_shard(folder / "part-000.parquet", [VIDEO_A, VIDEO_B], row_group_size=1)
    return folder


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_rows(rows, expected):
    assert [r["query_id"] for r in rows] == list(expected)
    for r in rows:
        tiou, v, ok = expected[r["query_id"]]
        assert r["tiou"] == pytest.approx(tiou, abs=1e-6), r["query_id"]
        assert r["viou"] == pytest.approx(v, abs=1e-6), r["query_id"]
        assert r["id_correct"] is ok, r["query_id"]


def test_oracle_on_hand_built_shards(box_shards, tmp_path):
    s = evaluate("oracle", box_shards, tmp_path, progress=False)
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    check_rows(rows, ORACLE)  # one line per scored query, a3 (no ground truth) left out
    assert s["n_queries"] == 4 and s["n_skipped_no_gt"] == 1
    o = s["overall"]
    # m_vIoU = 100 (1 + 1/3 + 2/3 + 0) / 4 = 50; vIoU > 0.3: a1, a2, b1; > 0.5: a1, b1
    assert o["n"] == 4 and o["m_tIoU"] == pytest.approx(100.0)
    assert o["m_vIoU"] == pytest.approx(50.0)
    assert o["vIoU@0.3"] == pytest.approx(75.0) and o["vIoU@0.5"] == pytest.approx(50.0)
    assert o["id_acc"] == pytest.approx(75.0)
    assert "J&F" not in o  # no masks in these shards
    # by query type: declarative {a1, b1}: (1 + 2/3) / 2; interrogative {a2, b2}: (1/3 + 0) / 2
    q = s["by_qtype"]
    assert set(q) == {"declarative", "interrogative"}
    assert q["declarative"]["m_vIoU"] == pytest.approx(250 / 3) and q["declarative"]["n"] == 2
    assert q["interrogative"]["m_vIoU"] == pytest.approx(100 / 6)
    assert q["interrogative"]["id_acc"] == pytest.approx(50.0)
    # by dataset: vidstg {a1, a2}: (1 + 1/3) / 2; hcstvg {b1, b2}: (2/3 + 0) / 2
    d = s["by_dataset"]
    assert d["vidstg"]["m_vIoU"] == pytest.approx(200 / 3)
    assert d["hcstvg"]["m_vIoU"] == pytest.approx(100 / 3)
    assert json.loads((tmp_path / "metrics.json").read_text())["overall"] == pytest.approx(o)
    table = (tmp_path / "metrics.md").read_text().splitlines()
    assert table == [
        "| model | m_tIoU | m_vIoU | vIoU@0.3 | vIoU@0.5 | id_acc | n |",
        "|---|---|---|---|---|---|---|",
        "| oracle | 100.0 | 50.0 | 75.0 | 50.0 | 75.0 | 4 |",
        "",
        f"vIoU frames: {FRAME_GRID}.",  # the evaluated frames are stated with the numbers
        f"J&F frames: {JF_GRID}.",
    ]
    assert s["frame_grid"] == FRAME_GRID and s["protocol"] == "official"
    assert s["jf_frames"] == JF_GRID
    assert s["n_failed"] == 0 and s["protocols"]["official"]["n_left_out"] == 0
    first = rows[0]
    assert first["pred_ids"] == [1] and first["pred_span_s"] == [1.0, 3.0]
    assert first["gt_ids"] == [1] and first["gt_span_s"] == [1.0, 3.0]
    assert (first["video_id"], first["dataset"], first["qtype"]) == ("a", "vidstg", "declarative")
    assert "completion" not in first  # baselines write no text


def test_largest_baseline(box_shards, tmp_path):
    s = evaluate("largest", box_shards, tmp_path, progress=False)
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    check_rows(rows, LARGEST)
    assert [r["pred_ids"] for r in rows] == [[3], [3], [2], [2]]
    assert [r["pred_span_s"] for r in rows] == [[0, 5], [0, 5], [0, 4], [0, 4]]
    # m_tIoU = 100 (0.4 + 0.4 + 0.75 + 0.25) / 4 = 45; m_vIoU = 100 (1/45 + 1/28) / 4 = 1.45
    assert s["overall"]["m_tIoU"] == pytest.approx(45.0)
    assert s["overall"]["m_vIoU"] == pytest.approx(100 * (1 / 45 + 1 / 28) / 4)
    assert s["overall"]["id_acc"] == 0.0


def test_random_baseline_is_seeded_and_uses_the_same_scoring(box_shards, tmp_path):
    """The random baseline draws one track index then two sorted uniform times on the clip,
    per query in shard order, from ``default_rng(seed)``; replaying the draws gives its answers."""
    videos = {v.video_id: v for v in read_videos(box_shards)}
    rng = np.random.default_rng(7)
    expected = []
    for vid, qid in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]:
        v = videos[vid]
        k = int(rng.integers(len(v.tracks)))
        lo, hi = np.sort(rng.uniform(0.0, clip_duration_s(v), size=2))
        expected.append((vid, qid, v.tracks[k].id, float(lo), float(hi)))
    evaluate("random", box_shards, tmp_path / "r7", seed=7, progress=False)
    rows = read_jsonl(tmp_path / "r7" / "predictions.jsonl")
    for r, (vid, qid, tid, lo, hi) in zip(rows, expected, strict=True):
        assert r["pred_ids"] == [tid] and r["pred_span_s"] == pytest.approx([lo, hi])
        q = videos[vid].query(qid)
        assert r["tiou"] == pytest.approx(temporal_iou((lo, hi), q.span_s))
        assert r["viou"] == pytest.approx(
            score_sample(videos[vid], q, [tid], (lo, hi), max_gap_s=0.5)["viou"]
        )
    evaluate("random", box_shards, tmp_path / "again", seed=7, progress=False)
    assert read_jsonl(tmp_path / "again" / "predictions.jsonl") == rows


# ------------------------------------------------------------------------------ J&F


def square_mask(side=20):
    m = np.zeros((side, side), dtype=bool)
    m[5:15, 5:15] = True  # box [5, 5, 15, 15]
    return m


S_RLE = mask_to_rle(square_mask())
SQ20 = [5, 5, 15, 15]
# Video "c" (MeViS-like), 20 x 20, frames at 4 fps: 0, 0.25, 0.5, 0.75 s.
# Track 1: the square at every frame; track 2: the square at 0 s only, then gone.
VIDEO_C = row(
    "c",
    "mevis",
    [0, 0.25, 0.5, 0.75],
    [
        track(1, SQ20, [0, 0.25, 0.5, 0.75], [S_RLE] * 4),
        track(2, SQ20, [0], [S_RLE]),
    ],
    [
        # c1: the ground truth is exactly track 1 -> J = F = 1 on every frame: J&F 100
        QueryRecord(
            "c1",
            "the square",
            "referring",
            (0, 0.75),
            gt(SQ20, [0, 0.25, 0.5, 0.75], [S_RLE] * 4),
            (1,),
        ),
        # c2: the object is there at 0 and 0.25 s; track 2 only sees it at 0 s. Frames:
        #   0     pred = GT = square          J 1, F 1
        #   0.25  track 2 gone: empty vs GT   J 0, F 0 (an absent ID scores 0, as for boxes)
        #   0.5, 0.75  both empty             J 1, F 1 (DAVIS convention)
        # -> J = F = 3/4, J&F 75; vIoU on boxes: the span (0, 0.25) holds frame 0 only
        # (half-open), where track 2 is right -> 1
        QueryRecord(
            "c2",
            "the square that vanishes",
            "referring",
            (0, 0.25),
            gt(SQ20, [0, 0.25], [S_RLE] * 2),
            (2,),
        ),
        # c3: the ground truth is the square moved right by half its width (cols 10..19)
        # while track 1 stays at cols 5..14: 10 x 5 = 50 px shared of 150 -> J = 1/3 per frame
        QueryRecord(
            "c3",
            "the square on the right",
            "referring",
            (0, 0.75),
            gt(
                [10, 5, 20, 15],
                [0, 0.25, 0.5, 0.75],
                [mask_to_rle(np.roll(square_mask(), 5, 1))] * 4,
            ),
            (1,),
        ),
    ],
    side=20,
    fps=4.0,
)


def test_j_and_f_from_track_masks(tmp_path):
    shards = tmp_path / "masks"
    write_shard(shards / "part-000.parquet", [VIDEO_C])
    s = evaluate("oracle", shards, tmp_path / "out", progress=False)
    rows = {r["query_id"]: r for r in read_jsonl(tmp_path / "out" / "predictions.jsonl")}
    assert rows["c1"]["J"] == rows["c1"]["F"] == rows["c1"]["J&F"] == 1.0
    assert rows["c2"]["J"] == pytest.approx(0.75) and rows["c2"]["F"] == pytest.approx(0.75)
    assert rows["c2"]["viou"] == pytest.approx(1.0)
    assert rows["c3"]["J"] == pytest.approx(1 / 3) and 0.0 < rows["c3"]["F"] < 1.0
    # summary in percent: J = 100 (1 + 3/4 + 1/3) / 3 = 69.44; J&F = (J + F) / 2
    o = s["overall"]
    assert o["J"] == pytest.approx(100 * (1 + 0.75 + 1 / 3) / 3)
    assert o["F"] == pytest.approx(100 * (1 + 0.75 + rows["c3"]["F"]) / 3)
    assert o["J&F"] == pytest.approx((o["J"] + o["F"]) / 2)
    assert s["by_qtype"]["referring"]["J&F"] == pytest.approx(o["J&F"])
    header, _, line, *_ = (tmp_path / "out" / "metrics.md").read_text().splitlines()
    assert header.endswith("| J&F | n |") and line.endswith(f"| {o['J&F']:.1f} | 3 |")


# ------------------------------------------------------------------------------ answers


@pytest.mark.parametrize(
    "qid, ids, start, end, expected_viou",
    [
        ("a1", [1], 1.0, 3.0, 1.0),  # the oracle answer
        ("a2", [2], 2.0, 4.0, 1 / 3),
        ("b1", [1], 0.0, 3.0, 2 / 3),
        # right ID, a third of the span ((0, 1) of (0, 3)): tIoU 1/3; S_u = {0, 1, 2},
        # S_i = {0} with IoU 1 -> 1/3
        ("b1", [1], 0.0, 1.0, 1 / 3),
        # both tracks of video a: the union box of SQUARE and SHIFTED is [10, 10, 40, 30]
        # (area 600) vs SQUARE (400): IoU 2/3 at 1, 2, 3 -> vIoU 2/3; ID set wrong
        ("a1", [1, 2], 1.0, 3.0, 2 / 3),
    ],
)
def test_stvg_r1_answer_scores_like_json(box_shards, qid, ids, start, end, expected_viou):
    video = next(v for v in read_videos(box_shards) if v.video_id == qid[0])
    query = video.query(qid)
    as_json = f'<think>x</think><answer>{{"ids": {ids}, "start": {start}, "end": {end}}}</answer>'
    id_text = ", ".join(map(str, ids))
    as_r1 = f"<think>x</think><answer>Target ID: {id_text}, Time range: {start:.2f} to {end:.2f}</answer>"
    scores = []
    for text, form in ((as_json, "json"), (as_r1, "stvg_r1")):
        a = parse_answer(text)
        assert (a.form, a.ids, a.span_s) == (form, tuple(ids), (start, end))
        scores.append(score_sample(video, query, a.ids, a.span_s, max_gap_s=0.5))
    assert scores[0] == scores[1]
    assert scores[0]["viou"] == pytest.approx(expected_viou)
    assert scores[0]["tiou"] == pytest.approx(temporal_iou((start, end), query.span_s))
    assert scores[0]["id_correct"] is (set(ids) == set(query.target_ids))


@pytest.mark.parametrize(
    "text, tiou, id_correct",
    [
        ("", 0.0, False),
        ("I cannot tell.", 0.0, False),
        ("<answer>{ids: [1], start: 1}</answer>", 0.0, False),  # neither JSON nor the text form
        ("<answer>Target ID: , Time range: to</answer>", 0.0, False),
        # a reversed span is no span: nothing is predicted in time, so no boxes either; the ID
        # is still read and is right
        ('<answer>{"ids": [1], "start": 3, "end": 1}</answer>', 0.0, True),
        # an ID without a track predicts no boxes; the span (1, 3) is the ground truth
        ('<answer>{"ids": [99], "start": 1, "end": 3}</answer>', 1.0, False),
    ],
)
def test_unusable_answers_score_zero_without_raising(box_shards, text, tiou, id_correct):
    video = next(read_videos(box_shards))
    query = video.query("a1")
    a = parse_answer(text)
    s = score_sample(video, query, a.ids, a.span_s, max_gap_s=0.5)
    assert s == {"tiou": tiou, "viou": 0.0, "id_correct": id_correct, "id_score": float(id_correct)}


# ------------------------------------------------------------------------------ model path


def test_tiny_model_path(box_shards, tiny_dir, tmp_path):
    """Real generation with the tiny random model (4096-token vocabulary): every answer
    is kept verbatim, parsed with the contract parser and scored like a baseline's."""
    s = evaluate(str(tiny_dir), box_shards, tmp_path, max_new_tokens=12, progress=False)
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["query_id"] for r in rows] == ["a1", "a2", "b1", "b2"] and s["n_queries"] == 4
    videos = {v.video_id: v for v in read_videos(box_shards)}
    unparsed = 0
    for r in rows:
        assert isinstance(r["completion"], str)
        a = parse_answer(r["completion"])
        assert r["pred_ids"] == list(a.ids)
        assert r["pred_span_s"] == (None if a.span_s is None else list(a.span_s))
        expect = score_sample(
            videos[r["video_id"]], videos[r["video_id"]].query(r["query_id"]), a.ids, a.span_s,
            max_gap_s=0.5,
        )  # fmt: skip
        assert {k: r[k] for k in expect} == expect
        if not a.ids and a.span_s is None:
            unparsed += 1
            assert r["tiou"] == r["viou"] == 0.0 and r["id_correct"] is False
    assert unparsed >= 1  # random weights write no answer block
    assert (tmp_path / "metrics.md").read_text().splitlines()[2].startswith(f"| {tiny_dir.name} |")


# ------------------------------------------------------------------------------ CLI


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--model", "--shards", "--out", "--template", "--limit", "--protocol",
                 "--export-submission"):  # fmt: skip
        assert flag in out.stdout
    assert "oracle" in out.stdout and "(default: None)" not in out.stdout
    from trainer.evaluate import build_parser

    parser = build_parser()
    for action in parser._actions:  # every option has help and says its default once
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        assert text.strip() and text.count("default") <= 1, (action.option_strings, text)


def test_cli_oracle_writes_three_files(box_shards, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--model", "oracle", "--shards", str(box_shards), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    for name in ("metrics.json", "metrics.md", "predictions.jsonl"):
        assert (out / name).exists(), name
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    printed = capsys.readouterr().out
    assert "| oracle | 100.0 | 50.0 |" in printed
    assert "1 query without ground truth skipped" in printed


def test_cli_limit(box_shards, tmp_path):
    main(["--model", "largest", "--shards", str(box_shards), "--out", str(tmp_path),
          "--limit", "3", "--no-progress"])  # fmt: skip
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["query_id"] for r in rows] == ["a1", "a2", "b1"]


def test_cli_missing_shard_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_split"
    out = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--model", "oracle", "--shards", str(missing),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert str(missing) in out.stderr and "preprocess" in out.stderr
    assert not (tmp_path / "o").exists()


def test_cli_empty_shard_folder_and_missing_model_are_clear_errors(box_shards, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no shard files"):
        main(["--model", "oracle", "--shards", str(tmp_path / "empty"), "--no-progress"])
    missing = tmp_path / "runs" / "train" / "final"  # never trained
    with pytest.raises(SystemExit, match=r"no model folder .*final"):
        main(["--model", str(missing), "--shards", str(box_shards), "--out", str(tmp_path / "o"),
              "--no-progress"])  # fmt: skip
    # an "org/name" hub id that is not in the (offline) cache: the loader's message
    with pytest.raises(SystemExit, match="neither a folder nor a model in the local Hugging Face"):
        main(["--model", "nobody/no-such-model", "--shards", str(box_shards),
              "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert not (tmp_path / "o").exists()  # nothing written before the model loads


def test_a_failed_sample_scores_zero_everywhere_in_the_official_rows():
    """A query whose answer failed (e.g. its frames could not be read) counts as 0 in the
    official means, J&F included; the STVG-R1 protocol leaves it out."""
    from pipeline.shards import row_to_video
    from trainer.protocols import protocol_summaries, score_answers

    video = row_to_video(VIDEO_C)
    items = [(video, video.query("c1")), (video, video.query("c3"))]
    answers = [((1,), (0.0, 0.75), None, None), ((1,), (0.0, 0.75), None, "inputs failed: x")]
    rows = score_answers(items, answers, max_gap_s=0.5, protocols=("official", "stvg_r1"))
    assert rows[0]["J&F"] == 1.0 and rows[1]["error"] == "inputs failed: x"
    assert rows[1]["J"] == rows[1]["F"] == rows[1]["J&F"] == rows[1]["viou"] == 0.0
    s = protocol_summaries(rows, ("official", "stvg_r1"))
    assert s["official"]["overall"]["J&F"] == pytest.approx(50.0)  # (100 + 0) / 2
    assert s["official"]["overall"]["m_vIoU"] == pytest.approx(50.0)
    assert s["stvg_r1"]["overall"]["n"] == 1 and s["stvg_r1"]["n_left_out"] == 1
