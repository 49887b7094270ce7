"""The two evaluation protocols on a hand-made prediction set: each convention in which the
STVG-R1 release's evaluator differs from the official one moves the number the way it should.

Video "p": native 1 fps, frames 0..9. Tracks: 1 = A on every frame; 2 = C on every frame
(C = [0, 0, 10, 20] holds A = [0, 0, 10, 10]: IoU 100 / 200 = 1/2); 3 = A with a gap at 4, 5
(a second ID on the same object, absent for two frames). Ground truth of every query: A on
frames 2..8, span (2, 8) (the span ends at the last annotated frame, as HC-STVG's times do).

official: frames in [2, 8) = 2..7 (6 frames); stvg_r1: frames int(2)=2 .. int(8)=8, both ends.
"""

import numpy as np
import pytest

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import ShardVideo
from trainer.protocols import fallback_boxes, protocol_summaries, score_answers, stvg_r1_viou

A = [0, 0, 10, 10]
C = [0, 0, 10, 20]  # IoU(A, C) = 1/2
FRAMES = list(range(10))


def track(track_id, box, times):
    return Track(track_id, "shape", times, np.tile(np.float32(box), (len(times), 1)))


def query(qid):
    gt = (GTObject(0, range(2, 9), np.tile(np.float32(A), (7, 1))),)
    return QueryRecord(qid, "the square", "declarative", (2.0, 8.0), gt, (1,))


VIDEO = ShardVideo(
    video_id="p", dataset="hcstvg", split="test", width=64, height=64, out_fps=1.0,
    track_fps=1.0, native_fps=1.0, frame_times_s=np.arange(10, dtype=np.float32),
    frames=(b"",) * 10,
    tracks=(track(1, A, FRAMES), track(2, C, FRAMES), track(3, A, [0, 1, 2, 3, 6, 7, 8, 9])),
    queries=tuple(query(f"q{k}") for k in range(1, 6)),
)  # fmt: skip

# (ids, span, text, error) per query, and the vIoU each protocol gives it:
ANSWERS = [
    # q1 control: the right track over the GT span. official 6/6; stvg_r1 7/7
    ((1,), (2.0, 8.0), None, None),
    # q2 fallback: track 3 misses frames 4, 5. official: 4 of 6 frames -> 2/3. stvg_r1: the
    # box of highest IoU with the ID's last box (track 1's A) fills 4, 5 -> 7/7
    ((3,), (2.0, 8.0), None, None),
    # q3 frame grid: span (1.6, 8). official: no frame in [1.6, 2), S_u = S_i = 2..7 -> 1.
    # stvg_r1: int(1.6) = 1, union 1..8 = 8 frames, overlap 2..8 = 7 of IoU 1 -> 7/8
    ((1,), (1.6, 8.0), None, None),
    # q4 threshold: C over the GT span, IoU 1/2 on every frame -> exactly 0.5 in both
    ((2,), (2.0, 8.0), None, None),
    # q5 a sample that failed to evaluate: 0 in the official mean, left out by stvg_r1
    ((1,), (2.0, 8.0), None, "inputs failed: corrupt frame"),
]
OFFICIAL = [1.0, 2 / 3, 1.0, 0.5, 0.0]
STVG_R1 = [1.0, 1.0, 7 / 8, 0.5]


def test_both_protocols_on_a_hand_made_prediction_set():
    items = [(VIDEO, q) for q in VIDEO.queries]
    rows = score_answers(items, ANSWERS, max_gap_s=0.5, protocols=("official", "stvg_r1"))
    assert [r["viou"] for r in rows] == pytest.approx(OFFICIAL)
    assert [r["viou_stvg_r1"] for r in rows[:4]] == pytest.approx(STVG_R1)
    assert rows[4]["error"] == "inputs failed: corrupt frame"
    assert "J&F" not in rows[4]  # no masks stored here: no J&F to zero
    # each differing convention moves the number the way it should:
    assert rows[1]["viou_stvg_r1"] > rows[1]["viou"]  # fallback boxes fill the ID's gaps
    assert rows[2]["viou_stvg_r1"] < rows[2]["viou"]  # int(t * fps) adds frame 1 to the union
    assert rows[0]["viou_stvg_r1"] == rows[0]["viou"] == 1.0  # no gap, same frames: equal
    s = protocol_summaries(rows, ("official", "stvg_r1"))
    off, r1 = s["official"]["overall"], s["stvg_r1"]["overall"]
    # official: m_vIoU = 100 (1 + 2/3 + 1 + 1/2 + 0) / 5 = 63.33; > 0.3: 4 of 5; > 0.5: 3 of 5
    assert off["n"] == 5 and off["m_vIoU"] == pytest.approx(100 * (19 / 6) / 5)
    assert off["vIoU@0.3"] == pytest.approx(80.0) and off["vIoU@0.5"] == pytest.approx(60.0)
    # stvg_r1: q5 left out; m_vIoU = 100 (1 + 1 + 7/8 + 1/2) / 4 = 84.375; >= 0.5: all 4
    assert r1["n"] == 4 and s["stvg_r1"]["n_left_out"] == 1
    assert r1["m_vIoU"] == pytest.approx(84.375)
    assert r1["vIoU@0.3"] == pytest.approx(100.0) and r1["vIoU@0.5"] == pytest.approx(100.0)
    # >= R counts q4's 0.5 at R = 0.5; > R does not
    assert s["stvg_r1"]["viou_at_r"] == "vIoU >= R" and s["official"]["viou_at_r"] == "vIoU > R"
    # tIoU is the same under both (continuous spans), over the samples each keeps
    assert off["m_tIoU"] == pytest.approx(100 * (1 + 1 + 6 / 6.4 + 1 + 0) / 5)


def test_stvg_r1_needs_two_shared_frames_and_a_prediction():
    q = VIDEO.queries[0]
    # spans sharing only frame 8 (int(8) .. int(9)): overlap start 8 >= end 8 -> 0
    assert stvg_r1_viou(VIDEO, q, [1], (8.0, 9.0), max_gap_s=0.5) == 0.0
    assert stvg_r1_viou(VIDEO, q, [1], None, max_gap_s=0.5) == 0.0
    # an ID with no track: every frame falls back to the largest box (C): 7 x 1/2 / 7
    assert stvg_r1_viou(VIDEO, q, [9], (2.0, 8.0), max_gap_s=0.5) == pytest.approx(0.5)


def test_fallback_boxes_hand_made():
    a, b, far = np.array(A, float), np.array([5, 0, 15, 10], float), np.array([50, 50, 60, 60.0])
    big = np.array([0, 0, 40, 40], float)
    cands = [np.stack([b, far]), np.stack([a]), np.stack([far, big]), np.zeros((0, 4))]
    # frame 0: the ID is first seen at frame 1 (box A): the candidate closest to A (b, IoU 1/3)
    # frame 2: missing; best overlap with the last box A among {far, big} is big (IoU 1/16)
    # frame 3: no candidates: the ID's box at its last frame (A)
    out = fallback_boxes([None, a, None, None], cands)
    assert [o.tolist() for o in out] == [b.tolist(), a.tolist(), big.tolist(), a.tolist()]
    # nothing overlaps the last box: the frame's largest box
    out = fallback_boxes([a, None], [np.stack([a]), np.stack([far, np.array([30, 30, 60, 60.0])])])
    assert out[1].tolist() == [30, 30, 60, 60]
    # the ID never appears: largest box, or None without candidates
    assert fallback_boxes([None], [np.stack([a, big])])[0].tolist() == big.tolist()
    assert fallback_boxes([None], [np.zeros((0, 4))]) == [None]
