import numpy as np
import pytest

from pipeline import geometry as g


def test_xywh_xyxy_round_trip():
    xywh = np.array([[10, 20, 30, 40]], dtype=np.float32)
    xyxy = g.xywh_to_xyxy(xywh)
    assert xyxy.tolist() == [[10, 20, 40, 60]]
    assert g.xyxy_to_xywh(xyxy).tolist() == xywh.tolist()


def test_box_iou_hand_computed():
    # a = [0,0,10,10], b = [5,0,15,10]: overlap 5x10 = 50, union 100+100-50 = 150 -> 1/3
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]])
    iou = g.box_iou(a, b)
    assert iou.shape == (1, 2)
    assert iou[0, 0] == pytest.approx(1 / 3)
    assert iou[0, 1] == 0.0


def test_paired_iou_nan_rows_score_zero():
    a = np.array([[0, 0, 10, 10], [np.nan] * 4])
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    assert g.paired_box_iou(a, b).tolist() == [1.0, 0.0]


def test_degenerate_boxes_have_zero_iou():
    a = np.array([[5, 5, 5, 5]])  # zero area, union 0 -> 0 by convention
    assert g.box_iou(a, a)[0, 0] == 0.0


def test_interpolate_boxes_inside_gap_and_outside_life():
    times = np.array([0.0, 1.0, 3.0])
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [30, 0, 40, 10]], dtype=np.float32)
    q = np.array([-0.5, 0.0, 0.5, 2.0, 3.0, 3.5])
    out = g.interpolate_boxes(times, boxes, q, max_gap_s=1.5)
    assert np.isnan(out[0]).all()  # before the track starts
    assert out[1].tolist() == [0, 0, 10, 10]  # exact observation
    assert out[2].tolist() == [5, 0, 15, 10]  # halfway between t=0 and t=1
    assert np.isnan(out[3]).all()  # inside the 2 s gap, longer than max_gap_s
    assert out[4].tolist() == [30, 0, 40, 10]
    assert np.isnan(out[5]).all()  # after the track ends
    # with a larger gap limit the middle of the gap interpolates: t=2 is halfway 1 -> 3
    out2 = g.interpolate_boxes(times, boxes, np.array([2.0]), max_gap_s=2.5)
    assert out2[0].tolist() == [20, 0, 30, 10]


def test_interpolate_does_not_mutate_inputs():
    times = np.array([1.0, 0.0])
    boxes = np.array([[1, 1, 2, 2], [0, 0, 1, 1]], dtype=np.float32)
    before = boxes.copy()
    g.interpolate_boxes(times, boxes, np.array([0.5]), max_gap_s=2)
    assert np.array_equal(boxes, before) and times.tolist() == [1.0, 0.0]


def test_nearest_index_tolerance():
    idx = g.nearest_index(np.array([0.0, 0.5, 1.0]), np.array([0.49, 0.8, 5.0]), tolerance_s=0.3)
    assert idx.tolist() == [1, 2, -1]


def test_mask_rle_round_trip_and_tight_box():
    m = np.zeros((6, 8), dtype=bool)
    m[1:4, 2:7] = True  # rows 1..3, cols 2..6 -> xyxy [2, 1, 7, 4] with exclusive ends
    counts = g.mask_to_rle(m)
    assert isinstance(counts, str)
    assert np.array_equal(g.rle_to_mask(counts, 6, 8), m)
    assert g.mask_to_xyxy(m).tolist() == [2, 1, 7, 4]
    assert g.mask_to_xyxy(np.zeros((3, 3), bool)) is None


def test_mask_iou_conventions():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert g.mask_iou(a, b) == 1.0  # both empty: DAVIS convention
    a[0, :2] = True  # 2 pixels
    b[0, 1:4] = True  # 3 pixels, 1 shared -> 1 / 4
    assert g.mask_iou(a, b) == pytest.approx(0.25)


def test_resize_mask_nearest():
    m = np.zeros((2, 2), bool)
    m[0, 0] = True
    r = g.resize_mask(m, 4, 4)
    assert r.shape == (4, 4) and r[:2, :2].all() and r.sum() == 4
