"""The ID-stability benchmark's scoring (bench/tracking.py) on hand-made tracks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipeline.runtime import REPO_ROOT

spec = importlib.util.spec_from_file_location("bench_tracking", REPO_ROOT / "bench" / "tracking.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _score(gt, hyp, n):
    import motmetrics as mm

    acc = bench.accumulate(gt, hyp, n)
    df = mm.metrics.create().compute(acc, metrics=["idf1", "num_switches"], name="x")
    return float(df["idf1"].iloc[0]), int(df["num_switches"].iloc[0])


def test_one_id_switch_is_counted_and_idf1_follows():
    # one object for 10 frames (xywh in gt); the hypothesis changes its ID at frame 5
    gt = {k: [(1, np.array([10.0 + k, 20, 30, 30]))] for k in range(10)}
    box = {k: np.array([10.0 + k, 20, 40.0 + k, 50]) for k in range(10)}  # xyxy, IoU 1
    same = {k: [(7, box[k])] for k in range(10)}
    switched = {k: [(7 if k < 5 else 8, box[k])] for k in range(10)}
    assert _score(gt, same, 10) == (pytest.approx(1.0), 0)
    idf1, switches = _score(gt, switched, 10)
    assert switches == 1 and idf1 == pytest.approx(0.5)
    # a box at IoU < 0.5 is a miss, not a match
    far = {k: [(7, box[k] + [20, 0, 20, 0])] for k in range(10)}
    assert _score(gt, far, 10)[0] == pytest.approx(0.0)


def test_gt_file_is_read_as_written(tmp_path):
    (tmp_path / "v.gt.txt").write_text("1,1,10,20,30,40,1,-1,-1,-1\n2,3,1,2,3,4,1,-1,-1,-1\n")
    gt = bench.read_gt(tmp_path / "v.gt.txt")
    assert sorted(gt) == [0, 1] and gt[1][0][0] == 3
    np.testing.assert_array_equal(gt[0][0][1], [10, 20, 30, 40])
