"""Metrics with hand-computed expectations: tIoU, vIoU, tubes, summaries, J&F."""

import math

import numpy as np
import pytest

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import ShardVideo
from trainer.metrics import (
    boundary_f,
    boundary_map,
    evaluation_times,
    gt_tube,
    j_and_f,
    predicted_tube,
    sample_metrics,
    summarize,
    temporal_iou,
    tube_viou,
)

BOX_A = np.array([0, 0, 10, 10], dtype=np.float32)
BOX_B = np.array([5, 0, 15, 10], dtype=np.float32)  # overlaps A by 5x10: IoU 50 / 150 = 1/3


def video_with(tracks, queries=(), native_fps=1.0, last_frame_s=4.0):
    times = np.arange(0.0, last_frame_s + 1e-9, 1.0, dtype=np.float32)
    return ShardVideo(
        video_id="v",
        dataset="synthetic",
        split="train",
        width=32,
        height=32,
        out_fps=1.0,
        track_fps=native_fps,
        native_fps=native_fps,
        frame_times_s=times,
        frames=tuple(b"" for _ in times),
        tracks=tuple(tracks),
        queries=tuple(queries),
    )


def still_track(track_id, box, times=(0, 1, 2, 3, 4)):
    return Track(
        track_id, "shape", np.array(times, dtype=np.float32), np.tile(box, (len(times), 1))
    )


# ------------------------------------------------------------------------------ tIoU


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ((0, 10), (5, 15), 1 / 3),  # overlap 5, union 15
        ((2, 4), (0, 10), 0.2),  # contained: 2 / 10
        ((0, 10), (0, 10), 1.0),
        ((0, 1), (2, 3), 0.0),  # disjoint
        ((0, 2), (2, 4), 0.0),  # touching: zero overlap
        (None, (0, 1), 0.0),
        ((5, 2), (0, 10), 0.0),  # reversed prediction
        ((1, 1), (1, 1), 0.0),  # zero-length union: 0 by convention
        ((0, float("nan")), (0, 1), 0.0),
        ((0, float("inf")), (0, 1), 0.0),
        (("a", "b"), (0, 1), 0.0),
    ],
)
def test_temporal_iou(pred, gt, expected):
    assert temporal_iou(pred, gt) == pytest.approx(expected)


# ------------------------------------------------------------------------------ vIoU


TIMES_5 = [0.0, 1.0, 2.0, 3.0, 4.0]  # evaluated frames at 1 fps


def tube(box, times):
    return {float(t): np.asarray(box, dtype=np.float32) for t in times}


def test_tube_viou_identical_tubes_score_one():
    # spans (0, 5) half-open hold all 5 frames; IoU 1 at each: 5 / 5
    gt = tube(BOX_A, TIMES_5)
    assert tube_viou((0, 5), gt, (0, 5), gt, TIMES_5) == pytest.approx(1.0)


def test_tube_viou_track_missing_on_half_the_span():
    # spans (0, 4): S_u = S_i = {0, 1, 2, 3}. The chosen track has a box at 0 (BOX_B, IoU 1/3)
    # and 1 (BOX_A, IoU 1) only: sum 4/3 over |S_u| 4 = 1/3 = 0.5 x mean IoU (2/3)
    times = [0.0, 1.0, 2.0, 3.0]
    gt = tube(BOX_A, times)
    pred = {0.0: BOX_B, 1.0: BOX_A, 2.0: None, 3.0: np.full(4, np.nan)}  # None and NaN: absent
    assert tube_viou((0, 4), pred, (0, 4), gt, times) == pytest.approx(0.5 * (1 / 3 + 1) / 2)


def test_tube_viou_disjoint_spans_and_the_gap_between_them():
    times = [float(t) for t in range(10)]
    gt = tube(BOX_A, times[:2])  # GT span (0, 2): frames 0, 1
    pred = tube(BOX_A, times)  # the track is right on every frame, but the span is elsewhere
    # disjoint: S_i is empty -> 0, although the track's boxes match GT at 0 and 1
    assert tube_viou((5, 7), pred, (0, 2), gt, times) == 0.0
    # overlapping by one frame, with a gap of predicted frames the track misses:
    # pred span (1, 6), GT (0, 2): S_u = {0..5} (6 frames), S_i = {1}: IoU 1 -> 1/6
    holes = {1.0: BOX_A}  # the track is absent at 2..5, which still count in |S_u|
    assert tube_viou((1, 6), holes, (0, 2), gt, times) == pytest.approx(1 / 6)


def test_tube_viou_predicted_span_inside_the_gt_span():
    # GT (0, 10) on 10 frames, prediction (2, 6): S_u = 10 frames, S_i = {2, 3, 4, 5} -> 4/10
    times = [float(t) for t in range(10)]
    gt = tube(BOX_A, times)
    assert tube_viou((2, 6), gt, (0, 10), gt, times) == pytest.approx(0.4)
    # GT frames without a box (VidSTG frames VidOR left unannotated) still count in |S_u|:
    # GT boxes only at 0..4, spans (0, 10): sum 5 over 10 frames
    assert tube_viou((0, 10), gt, (0, 10), tube(BOX_A, times[:5]), times) == pytest.approx(0.5)


def test_tube_viou_no_prediction_scores_zero():
    gt = tube(BOX_A, TIMES_5)
    assert tube_viou(None, gt, (0, 5), gt, TIMES_5) == 0.0  # no span predicted
    assert tube_viou((4, 2), gt, (0, 5), gt, TIMES_5) == 0.0  # reversed: no span
    assert tube_viou((0, 5), {}, (0, 5), gt, TIMES_5) == 0.0  # a span but no box: 0 / 5
    assert tube_viou((0, 5), gt, None, gt, TIMES_5) == 0.0  # no ground truth
    assert tube_viou((0, 5), gt, (0, 5), gt, []) == 0.0  # no evaluated frame: S_u empty
    assert tube_viou((7, 9), gt, (6, 9), gt, TIMES_5) == 0.0  # both spans past the frames


def test_tube_viou_half_open_ends():
    gt = tube(BOX_A, TIMES_5)
    # GT (1, 3) holds frames 1, 2 (3 excluded); prediction (3, 5) holds 3, 4. They touch:
    # S_u = {1, 2, 3, 4}, S_i = [3, 3) empty -> 0
    assert tube_viou((3, 5), gt, (1, 3), gt, TIMES_5) == 0.0
    # prediction (2, 4): S_u = [1, 4) = {1, 2, 3}, S_i = [2, 3) = {2} -> 1/3 (closed ends
    # would give S_i = {2, 3} over {1, 2, 3, 4}: 2/4)
    assert tube_viou((2, 4), gt, (1, 3), gt, TIMES_5) == pytest.approx(1 / 3)
    # a zero-length prediction holds no frame: S_u = GT's {1, 2}, S_i empty -> 0
    assert tube_viou((2, 2), gt, (1, 3), gt, TIMES_5) == 0.0
    # shard times are float32: an end of float32(0.3) (0.30000001) still excludes the frame
    # at 0.3; grid 0, 0.1, 0.2, 0.3 at 10 fps, spans (0, 0.3): S_u = S_i = 3 frames -> 3/3
    times = [0.0, 0.1, 0.2, 0.3]
    g = tube(BOX_A, times)
    end = float(np.float32(0.3))
    p = {**g, 0.3: BOX_B}  # a wrong box on the excluded frame changes nothing
    assert tube_viou((0, end), p, (0, end), g, times) == pytest.approx(1.0)


def test_gt_tube_is_the_union_box_of_the_objects():
    q = QueryRecord(
        "q",
        "two shapes",
        "referring",
        (0.0, 1.0),
        gt=(GTObject(1, [0.0, 1.0], [BOX_A, BOX_A]), GTObject(2, [0.0], [[20, 20, 30, 30]])),
        target_ids=(1, 2),
    )
    tube = gt_tube(q)
    assert sorted(tube) == [0.0, 1.0]
    assert tube[0.0].tolist() == [0, 0, 30, 30]  # union of [0,0,10,10] and [20,20,30,30]
    assert tube[1.0].tolist() == [0, 0, 10, 10]  # only object 1 annotated at t=1


def test_predicted_tube_inside_span_interpolated_and_unioned():
    t3 = Track(
        3,
        "shape",
        np.array([0.0, 1.0, 2.0], dtype=np.float32),
        [[0, 0, 10, 10], [10, 0, 20, 10], [10, 0, 20, 10]],
    )
    t4 = still_track(4, np.array([30, 30, 40, 40], dtype=np.float32), times=(1.0, 2.0))
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    tube = predicted_tube([t3, t4], [3], (0.5, 2.0), times, max_gap_s=1.0)
    assert tube[0.0] is None  # before the predicted span
    assert tube[0.5].tolist() == [5, 0, 15, 10]  # halfway between the t=0 and t=1 boxes
    assert tube[1.0].tolist() == [10, 0, 20, 10]
    assert tube[2.5] is None  # after the span (and the track's life)
    both = predicted_tube(
        [t3, t4], [3, 4, 99], (0.5, 2.0), times, max_gap_s=1.0
    )  # 99: no such track
    assert both[0.5].tolist() == [5, 0, 15, 10]  # track 4 not alive at 0.5
    assert both[1.5].tolist() == [10, 0, 40, 40]  # union of [10,0,20,10] and [30,30,40,40]
    assert all(v is None for v in predicted_tube([t3], [3], None, times, max_gap_s=1.0).values())
    assert all(v is None for v in predicted_tube([t3], [], (0, 2), times, max_gap_s=1.0).values())


def test_evaluation_times_cover_the_clip_with_gt_times_in_place():
    # native 2 fps, frames up to 3 s; GT at 1.2, 1.7 (off the grid)
    q = QueryRecord(
        "q", "x", "referring", (1.2, 1.7), gt=(GTObject(0, [1.2, 1.7], [BOX_A, BOX_A]),)
    )
    v = video_with([], native_fps=2.0, last_frame_s=3.0)
    t = evaluation_times(v, q)
    g12, g17 = float(np.float32(1.2)), float(np.float32(1.7))
    # grid 0, .5, ..., 3.0; 1.0 (0.2 from 1.2) and 1.5 (0.2 from 1.7) give way to the GT times;
    # 2.0 is 0.3 from 1.7 >= half a step (0.25), so it stays
    assert t.tolist() == pytest.approx([0.0, 0.5, g12, g17, 2.0, 2.5, 3.0])
    assert g12 in t.tolist() and g17 in t.tolist()  # exact GT keys, so the tubes line up


def test_sample_metrics_hand_computed():
    # GT: object at [0,0,10,10] for t = 1, 2, 3, 4 (span (1, 4): frames 1..3 half-open),
    # native 1 fps, clip 0..4 s. Track 1 sits on the object all clip long, track 2 beside it.
    q = QueryRecord(
        "q",
        "x",
        "referring",
        (1.0, 4.0),
        gt=(GTObject(0, [1, 2, 3, 4], [BOX_A] * 4),),
        target_ids=(1,),
    )
    v = video_with([still_track(1, BOX_A), still_track(2, BOX_B)], [q])
    m = sample_metrics(v, q, [1], (1.0, 4.0), max_gap_s=1.0)
    assert m == {"tiou": 1.0, "viou": 1.0, "id_correct": True, "id_score": 1.0}
    # span (0, 4): tIoU 3/4; S_u = {0, 1, 2, 3}, S_i = {1, 2, 3} with IoU 1 -> 3/4
    m = sample_metrics(v, q, [1], (0.0, 4.0), max_gap_s=1.0)
    assert (m["tiou"], m["viou"]) == (pytest.approx(3 / 4), pytest.approx(0.75))
    # span (2, 5): tIoU 2/4 (overlap 2..4, union 1..5); S_u = [1, 5) = {1, 2, 3, 4} (the grid
    # ends at the clip's last frame, 4 s), S_i = {2, 3} -> 2/4
    m = sample_metrics(v, q, [1], (2.0, 5.0), max_gap_s=1.0)
    assert (m["tiou"], m["viou"]) == (pytest.approx(0.5), pytest.approx(0.5))
    # wrong object over the right span: 3 frames of IoU 1/3 over |S_u| = 3 -> 1/3
    m = sample_metrics(v, q, [2], (1.0, 4.0), max_gap_s=1.0)
    assert m["viou"] == pytest.approx(1 / 3) and m["id_correct"] is False and m["id_score"] == 0.0
    # a track last seen at 1 s: present on {1} of S_u = {1, 2, 3} -> 1/3; frames 2, 3 count
    # with IoU 0 although the track is gone
    short = still_track(3, BOX_A, times=(0, 1))
    m = sample_metrics(video_with([short], [q]), q, [3], (1.0, 4.0), max_gap_s=0.5)
    assert m["viou"] == pytest.approx(1 / 3)
    # nothing predicted
    m = sample_metrics(v, q, [], None, max_gap_s=1.0)
    assert m == {"tiou": 0.0, "viou": 0.0, "id_correct": False, "id_score": 0.0}


def test_viou_does_not_depend_on_track_fps():
    # the same linear motion tracked at 1 fps or at 4 fps gives the same boxes at the GT times
    q = QueryRecord(
        "q",
        "x",
        "referring",
        (0.5, 1.5),
        gt=(GTObject(0, [0.5, 1.0, 1.5], [[5, 0, 15, 10], [10, 0, 20, 10], [15, 0, 25, 10]]),),
        target_ids=(1,),
    )
    slow = Track(1, "s", [0.0, 1.0, 2.0], [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]])
    fast_t = np.arange(0, 2.01, 0.25)
    fast = Track(
        1, "s", fast_t, np.stack([fast_t * 10, 0 * fast_t, fast_t * 10 + 10, 0 * fast_t + 10], 1)
    )
    a = sample_metrics(
        video_with([slow], native_fps=2.0, last_frame_s=2.0), q, [1], (0.5, 1.5), max_gap_s=1.0
    )
    b = sample_metrics(
        video_with([fast], native_fps=2.0, last_frame_s=2.0), q, [1], (0.5, 1.5), max_gap_s=1.0
    )
    assert a["viou"] == pytest.approx(1.0) and b["viou"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- summary


def test_summarize_hand_computed():
    rows = [
        {"tiou": 0.0, "viou": 0.3, "id_correct": False},  # 0.3 is NOT > 0.3
        {"tiou": 0.5, "viou": 0.5, "id_correct": True},  # 0.5 is > 0.3 but NOT > 0.5
        {"tiou": 0.5, "viou": 0.51, "id_correct": True},
        {"tiou": 1.0, "viou": 1.0, "id_correct": True},
    ]
    s = summarize(rows)
    assert s["n"] == 4
    assert s["m_tIoU"] == pytest.approx(50.0)  # (0 + .5 + .5 + 1) / 4
    assert s["m_vIoU"] == pytest.approx(57.75)  # (.3 + .5 + .51 + 1) / 4 = 2.31 / 4
    assert s["vIoU@0.3"] == pytest.approx(75.0)  # 3 of 4 strictly above 0.3
    assert s["vIoU@0.5"] == pytest.approx(50.0)  # 2 of 4 strictly above 0.5
    assert s["id_acc"] == pytest.approx(75.0)
    assert "J&F" not in summarize(rows[:1]) and "id_acc" not in summarize([{"tiou": 1, "viou": 1}])
    assert summarize([{"tiou": 1, "viou": 1, "J": 0.5, "F": 0.7}])["J&F"] == pytest.approx(60.0)


def test_summarize_empty_and_missing_keys():
    s = summarize([])
    assert s["n"] == 0 and math.isnan(s["m_vIoU"])
    with pytest.raises(KeyError, match="result 1 has no 'viou'"):
        summarize([{"tiou": 1, "viou": 1}, {"tiou": 1}])


# ------------------------------------------------------------------------------ J&F


def test_boundary_map_of_a_square_hand_computed():
    # A pixel is boundary when it differs from its right, lower or lower-right neighbour
    # (neighbours outside the image are not compared).
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0],  # (0,0): lower-right is inside; (0,1), (0,2): lower is inside
            [
                1,
                0,
                1,
                0,
            ],  # (1,0): right is inside; (1,1): all 3 neighbours inside; (1,2): right is outside
            [1, 1, 1, 0],  # (2,1), (2,2): lower is outside
            [0, 0, 0, 0],  # last row compares only to the right: all equal
        ],
        bool,
    )
    assert np.array_equal(boundary_map(m), expected)
    # the same square against the right border: the border itself is not a boundary
    m2 = np.zeros((4, 4), bool)
    m2[1:3, 2:4] = True
    assert boundary_map(m2).sum() == 7  # rows: [0,1,1,1], [0,1,0,0], [0,1,1,1], [0,0,0,0]


def test_j_and_f_hand_computed():
    # 10x10: tolerance radius ceil(0.008 * 14.14) = 1 (a plus-shaped disk)
    gt = np.zeros((10, 10), bool)
    gt[1:4, 1:4] = True  # 3x3 square: boundary = 4x4 block rows 0-3 minus its 2x2 interior = 12
    pred = gt.copy()
    pred[7, 7] = True  # a far single pixel: 4 more boundary pixels (rows 6-7, cols 6-7)
    # J = 9 / 10. Precision = 12 / 16 (the far blob matches nothing), recall = 12 / 12 -> F = 2*.75/1.75
    f1 = 2 * 0.75 / 1.75
    one = j_and_f([pred], [gt])
    assert one["J"] == pytest.approx(0.9) and one["F"] == pytest.approx(f1)
    assert one["J&F"] == pytest.approx((0.9 + f1) / 2)
    # add a frame where both are empty: J = F = 1 there; averages over the 2 frames
    empty = np.zeros((10, 10), bool)
    two = j_and_f([pred, empty], [gt, empty])
    assert two["J"] == pytest.approx(0.95) and two["F"] == pytest.approx((f1 + 1) / 2)
    # a miss: prediction empty, ground truth not -> J = 0, F = 0
    assert j_and_f([empty], [gt]) == {"J": 0.0, "F": 0.0, "J&F": 0.0}


def test_boundary_tolerance_scales_with_the_diagonal():
    # single pixels 3 columns apart; each boundary is a 2x2 block (the pixel, its left,
    # upper and upper-left neighbours): closest pairs are 2 px apart, the others 3+
    def pair(size, r, c):
        a, b = np.zeros((size, size), bool), np.zeros((size, size), bool)
        a[r, c], b[r, c + 3] = True, True
        return a, b

    # 100x100: radius ceil(0.008 * 141.4) = 2 -> 2 of 4 boundary pixels matched each way: F = 0.5
    assert boundary_f(*pair(100, 50, 50)) == pytest.approx(0.5)
    # 50x50: radius ceil(0.008 * 70.7) = 1 -> nothing within 1 px: F = 0
    assert boundary_f(*pair(50, 25, 25)) == 0.0
    # an explicit tolerance >= 1 is in pixels
    assert boundary_f(*pair(50, 25, 25), tolerance=3) == pytest.approx(1.0)


def test_j_and_f_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 predicted masks for 1"):
        j_and_f([np.zeros((2, 2), bool)] * 2, [np.zeros((2, 2), bool)])
    with pytest.raises(ValueError, match="frame 0"):
        j_and_f([np.zeros((2, 2), bool)], [np.zeros((3, 2), bool)])
    with pytest.raises(ValueError, match="no frames"):
        j_and_f([], [])
