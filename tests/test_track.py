"""ByteTrack wrapper and ID cleaning, on synthetic detections through the real BYTETracker."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from pipeline.geometry import mask_to_xyxy, rle_to_mask
from pipeline.track import TrackBuilder, Tracker, TrackerConfig, collect_tracks

FPS = 30.0
H, W = 120, 160


def dets(boxes, classes=None, masks=False, conf=0.9) -> sv.Detections:
    """Detections for boxes (N, 4); optional filled-box masks at (H, W)."""
    xyxy = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(xyxy)
    names = np.array(classes if classes is not None else ["square"] * n, dtype=str)
    mask = None
    if masks:
        mask = np.zeros((n, H, W), dtype=bool)
        for i, (x1, y1, x2, y2) in enumerate(xyxy.astype(int)):
            mask[i, y1:y2, x1:x2] = True
    return sv.Detections(
        xyxy=xyxy,
        mask=mask,
        confidence=np.full(n, conf, np.float32),
        class_id=np.zeros(n, int),
        data={"class_name": names},
    )


def two_movers(k: int) -> list[list[float]]:
    """Object A moves right 2 px/frame at the top, B moves left at the bottom (never overlap)."""
    return [[10 + 2 * k, 10, 30 + 2 * k, 30], [120 - 2 * k, 70, 140 - 2 * k, 95]]


def test_config_defaults_are_bytetrack_yaml():
    from_yaml = TrackerConfig.from_bytetrack_yaml()
    assert from_yaml == TrackerConfig()
    assert TrackerConfig.from_bytetrack_yaml(track_buffer=10).track_buffer == 10
    with pytest.raises(ValueError, match="track_low_thresh"):
        TrackerConfig(track_low_thresh=0.5, track_high_thresh=0.2)


def test_ids_are_consistent_and_input_untouched():
    tracker = Tracker(TrackerConfig(), FPS)
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for k in range(15):
        d = dets(two_movers(k), masks=True)
        before = d.xyxy.copy()
        out = tracker.update(d, k / FPS)
        assert d.tracker_id is None and np.array_equal(d.xyxy, before)  # input not mutated
        assert out is not d and len(out) == 2
        for row in range(2):
            # which input object this output row is: match on x1
            obj = int(np.argmin(np.abs(np.array(two_movers(k))[:, 0] - out.xyxy[row, 0])))
            seen[obj].add(int(out.tracker_id[row]))
            np.testing.assert_array_equal(out.mask[row], d.mask[obj])  # masks follow their rows
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[0] != seen[1]


def test_rejects_non_increasing_time():
    tracker = Tracker()
    tracker.update(dets(two_movers(0)), 0.0)
    with pytest.raises(ValueError, match="increase"):
        tracker.update(dets(two_movers(1)), 0.0)


def test_renumber_first_appearance_ties_left_to_right_and_drop_short():
    # Frame 0: B (right) is listed first, so ByteTrack gives it raw ID 1 and A raw ID 2.
    # A flicker object C exists only on frames 3-4 (2 frames < min_frames=3): dropped.
    # D appears at frame 6 and lives on: it becomes ID 3 (not 4).
    frames = []
    for k in range(12):
        a, b = two_movers(k)
        boxes = [b, a]
        if k in (3, 4):
            boxes.append([70, 40, 85, 55])
        if k >= 6:
            boxes.append([60, 100, 80, 118])
        frames.append((k / FPS, dets(boxes)))
    tracks = collect_tracks(frames, TrackerConfig(min_frames=3), FPS)
    assert [t.id for t in tracks] == [1, 2, 3]
    # ID 1 = A (left at frame 0, x1 = 10), ID 2 = B (x1 = 120), ID 3 = D from frame 6
    assert tracks[0].xyxy[0, 0] == 10 and tracks[1].xyxy[0, 0] == 120
    np.testing.assert_allclose(tracks[2].times_s[0], 6 / FPS, atol=1e-6)  # first detection kept
    assert len(tracks[2].times_s) == 6  # frames 6..11
    assert all(len(t.times_s) == 12 for t in tracks[:2])


def test_masks_aligned_and_scaled_to_out_size():
    frames = [(k / FPS, dets(two_movers(k), masks=True)) for k in range(6)]
    tracks = collect_tracks(frames, TrackerConfig(), FPS, frame_wh=(W, H), out_wh=(W // 2, H // 2))
    assert len(tracks) == 2
    for tr in tracks:
        assert tr.masks_rle is not None and len(tr.masks_rle) == len(tr.times_s)
        for box, rle in zip(tr.xyxy, tr.masks_rle):
            m = rle_to_mask(rle, H // 2, W // 2)
            # boxes halved (e.g. A at frame 0: 10,10,30,30 -> 5,5,15,15); the filled-box mask,
            # resized by nearest neighbour, has exactly the halved box as its extent
            np.testing.assert_allclose(mask_to_xyxy(m), box, atol=1.0)
    np.testing.assert_allclose(tracks[0].xyxy[0], [5, 5, 15, 15])


def test_class_majority_vote():
    frames = []
    for k in range(5):
        a, b = two_movers(k)
        frames.append((k / FPS, dets([a, b], classes=["circle" if k == 2 else "square", "star"])))
    tracks = collect_tracks(frames, TrackerConfig(), FPS)
    assert [t.class_name for t in tracks] == ["square", "star"]  # 4 of 5 frames say square


def _fragmented(gap_frames: int, second_class: str = "square", jump_px: float = 0.0):
    """One object seen on frames 0-9, gone for gap_frames, seen again for 10 frames."""
    frames = []
    for k in range(20 + gap_frames):
        if 10 <= k < 10 + gap_frames:
            frames.append((k / FPS, dets(np.zeros((0, 4)))))
            continue
        x = 10 + 1.0 * k + (jump_px if k >= 10 else 0)
        cls = "square" if k < 10 else second_class
        frames.append((k / FPS, dets([[x, 40, x + 24, 64]], classes=[cls])))
    return frames


def test_fragments_merged_only_when_enabled_and_plausible():
    # track_buffer 3 (at 30 fps) < gap of 12 frames (0.4 s): ByteTrack starts a new track.
    # (the offline association is off here: it is tested in tests/test_associate.py)
    base = TrackerConfig(track_buffer=3, associate_gap_s=0)
    frames = _fragmented(12)
    split = collect_tracks(frames, base, FPS)
    assert [len(t.times_s) for t in split] == [10, 10]
    cfg = TrackerConfig(track_buffer=3, merge_gap_s=0.5, associate_gap_s=0)
    merged = collect_tracks(frames, cfg, FPS)
    assert len(merged) == 1 and merged[0].id == 1 and len(merged[0].times_s) == 20
    # gap 0.4 s > merge_gap_s 0.3 s: kept apart
    short = TrackerConfig(track_buffer=3, merge_gap_s=0.3, associate_gap_s=0)
    assert len(collect_tracks(frames, short, FPS)) == 2
    # another class, or reappearing 100 px away (> 1 box diagonal = 34 px): kept apart
    assert len(collect_tracks(_fragmented(12, second_class="star"), cfg, FPS)) == 2
    assert len(collect_tracks(_fragmented(12, jump_px=100), cfg, FPS)) == 2


def test_builder_requires_tracker_ids():
    with pytest.raises(ValueError, match="tracker_id"):
        TrackBuilder().add(0.0, dets(two_movers(0)))


def _clip(box) -> list[float]:
    x1, y1, x2, y2 = box
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(W)), min(y2, float(H))]


def _edge_frames(x1_at, n: int, detect_min_w: float = 12.0, y: float = 50.0):
    """A 20x20 object at x1_at(k); detected (clipped to the frame) only while >= 12 px wide.

    Returns the frames for collect_tracks and the true clipped box per frame (None when
    nothing of it is inside the frame).
    """
    frames, truth = [], []
    for k in range(n):
        box = _clip([x1_at(k), y, x1_at(k) + 20, y + 20])
        width = box[2] - box[0]
        truth.append(box if width >= 1 else None)
        shown = [box] if width >= detect_min_w else np.zeros((0, 4))
        frames.append((k / FPS, dets(shown)))
    return frames, truth


def test_tracks_are_continued_to_the_frame_border():
    # Leaving through the left edge at 3 px/frame: x2 = 60 - 3k. Detected while x2 >= 12
    # (k <= 16); k = 17, 18 (x2 = 9, 6) are extrapolated from the last 4 boxes; at k = 19
    # only 3 px are left, under the 6 px sliver (5% of the 120 px side) that matching
    # ignores and that cannot carry a number: the track ends.
    frames, truth = _edge_frames(lambda k: 40.0 - 3 * k, 30)
    (tr,) = collect_tracks(frames, TrackerConfig(), FPS, frame_wh=(W, H))
    assert np.allclose(tr.times_s * FPS, np.arange(19), atol=1e-3)
    np.testing.assert_allclose(tr.xyxy[17:], [truth[k] for k in (17, 18)], atol=0.5)
    # Entering through the right edge: x1 = 163 - 3k, 3 px visible at k = 2, 6 px at
    # k = 3, detected from k = 5; the track now starts at k = 3 with the slivers' boxes.
    frames, truth = _edge_frames(lambda k: 163.0 - 3 * k, 15)
    (tr,) = collect_tracks(frames, TrackerConfig(), FPS, frame_wh=(W, H))
    assert round(float(tr.times_s[0]) * FPS) == 3
    np.testing.assert_allclose(tr.xyxy[:2], [truth[k] for k in (3, 4)], atol=0.5)
    assert len(tr.times_s) == 12  # k = 3..14
    # off: the detector's frames only; without the frame size there is no border to use
    off = collect_tracks(frames, TrackerConfig(edge_extend_s=0), FPS, frame_wh=(W, H))
    assert round(float(off[0].times_s[0]) * FPS) == 5
    assert round(float(collect_tracks(frames, TrackerConfig(), FPS)[0].times_s[0]) * FPS) == 5


def test_tracks_that_do_not_leave_are_not_continued():
    # Lost in the middle of the frame (occluded, missed): no extension.
    frames, _ = _edge_frames(lambda k: 100.0 - 3 * k, 20)
    cut = [(t, d if k <= 10 else dets(np.zeros((0, 4)))) for k, (t, d) in enumerate(frames)]
    (tr,) = collect_tracks(cut, TrackerConfig(), FPS, frame_wh=(W, H))
    assert len(tr.times_s) == 11

    # Touching the top border but moving along it (x1 = 10 + 3k), lost at k = 10: it would
    # be gone through the right edge at k = 50 (x1 >= 159), 1.33 s later, more than
    # edge_extend_s = 1 s: no extension.
    def along(n: int):
        boxes = [[10.0 + 3 * k, 0.0, 30.0 + 3 * k, 20.0] for k in range(n)]
        return [(k / FPS, dets([b] if k <= 10 else np.zeros((0, 4)))) for k, b in enumerate(boxes)]

    (tr,) = collect_tracks(along(60), TrackerConfig(), FPS, frame_wh=(W, H))
    assert len(tr.times_s) == 11
    # allowed 2 s, it is continued while at least 6 px are left: k = 0..47 (9 px), and
    # k = 48 (6 px on the nose, extrapolated: floating point decides)
    cfg = TrackerConfig(edge_extend_s=2.0)
    (tr,) = collect_tracks(along(60), cfg, FPS, frame_wh=(W, H))
    assert len(tr.times_s) in (48, 49) and tr.xyxy[-1][2] == W
    assert tr.xyxy[-1][2] - tr.xyxy[-1][0] >= 6 - 1e-3
    # a video that ends (40 frames) before the object has left gives no evidence it left
    (tr,) = collect_tracks(along(40), cfg, FPS, frame_wh=(W, H))
    assert len(tr.times_s) == 11


def _with_duplicate(dup_class: str, dup_frames: range, n: int = 20):
    """Object A (square) on every frame; a second box 2 px off A on ``dup_frames``."""
    frames = []
    for k in range(n):
        a = [20.0 + 2 * k, 30.0, 50.0 + 2 * k, 60.0]
        boxes, classes = [a], ["square"]
        if k in dup_frames:
            boxes.append([a[0] + 2, a[1] + 2, a[2] + 2, a[3] + 2])  # IoU 784/1016 = 0.77
            classes.append(dup_class)
        frames.append((k / FPS, dets(boxes, classes=classes)))
    return frames


def test_duplicate_tracks_are_dropped():
    # ByteTrack matches one of the two boxes to A's track and starts a second track on
    # the other: two IDs on one object. It lies on A (IoU 0.77) on all its frames.
    frames = _with_duplicate("square", range(5, 15))
    assert len(collect_tracks(frames, TrackerConfig(duplicate_iou=0), FPS)) == 2
    (kept,) = collect_tracks(frames, TrackerConfig(), FPS)
    assert len(kept.times_s) == 20 and kept.id == 1
    # another class on the same spot moving with it is the same object scored twice:
    # dropped too
    (kept,) = collect_tracks(_with_duplicate("star", range(5, 15)), TrackerConfig(), FPS)
    assert kept.class_name == "square" and len(kept.times_s) == 20


def test_objects_crossing_briefly_are_not_duplicates():
    # A moves right, B moves left on the same row, 6k - 120 px apart: IoU >= 0.5 needs
    # |6k - 120| <= 6.7 px, frames 19-21 only (3 of 40): two objects, two tracks.
    frames = []
    for k in range(40):
        a = [10.0 + 3 * k, 40.0, 30.0 + 3 * k, 60.0]
        b = [130.0 - 3 * k, 40.0, 150.0 - 3 * k, 60.0]
        frames.append((k / FPS, dets([a, b])))
    tracks = collect_tracks(frames, TrackerConfig(), FPS)
    assert len(tracks) >= 2
    assert sum(len(t.times_s) for t in tracks) == 80  # every detection kept in some track


def _entering_from_top(speed: float, n: int = 30) -> list:
    """A 26x26 box sliding in through the top edge at ``speed`` px/frame (10 fps), seen
    from 4 px tall: it grows along one side only, so its aspect ratio changes fast."""
    frames = []
    for k in range(n):
        box = [100.0, max(speed * k - 26, 0.0), 126.0, min(speed * k, float(H))]
        shown = [box] if box[3] - box[1] >= 4 else np.zeros((0, 4))
        frames.append((k / 10, dets(shown)))
    return frames


@pytest.mark.parametrize("speed", [2.5, 5.0])
def test_xywh_kalman_keeps_one_id_while_an_object_enters(speed):
    # ByteTrack's (centre, aspect, height) state extrapolates the fast-changing aspect
    # ratio, the prediction stops overlapping the next box, and the object is split into
    # two IDs; the (centre, width, height) state follows it (measured: both speeds split).
    cfg = dict(edge_extend_s=0, associate_gap_s=0)  # tracks as ByteTrack made them
    xyah = collect_tracks(_entering_from_top(speed), TrackerConfig(kalman="xyah", **cfg), 10)
    xywh = collect_tracks(_entering_from_top(speed), TrackerConfig(**cfg), 10)
    assert len(xyah) == 2
    assert len(xywh) == 1 and len(xywh[0].times_s) == 28
    with pytest.raises(ValueError, match="kalman must be one of"):
        TrackerConfig(kalman="xyz")


def _raw_track(boxes, fps: float = 10.0):
    from pipeline.tracklets import RawTrack

    n = len(boxes)
    times = [k / fps for k in range(n)]
    boxes = [np.array(b, np.float32) for b in boxes]
    return RawTrack(times, boxes, ["m"] * n, ["square"] * n, [np.ones(2)] * n, [np.ones(3)] * n)


def test_a_box_around_two_overlapping_objects_is_repaired_from_its_neighbours():
    from pipeline.tracklets import merged_frames, repair_merged_boxes

    # A 20x20 square moving right 2 px/frame; at frame 5 the detector boxes it together
    # with a neighbour below (height 20 -> 32 > 1.15 x 20, the 75th percentile of the
    # heights within 1 s), at frame 6 too. Frames 5 and 6 become the line between frames
    # 4 ([8, 0, 28, 20]) and 7 ([14, 0, 34, 20]): [10, 0, 30, 20] and [12, 0, 32, 20], the
    # square's own boxes.
    boxes = [[2.0 * k, 0, 2.0 * k + 20, 20] for k in range(12)]
    boxes[5] = [10.0, 0, 30, 32]
    boxes[6] = [12.0, 0, 32, 30]
    r = _raw_track(boxes)
    assert np.flatnonzero(merged_frames(r, 0.15)).tolist() == [5, 6]
    fixed = repair_merged_boxes(r, 0.15)
    assert fixed.times_s == r.times_s  # still seen there: its number is drawn
    np.testing.assert_allclose(fixed.xyxy[5], [10, 0, 30, 20])
    np.testing.assert_allclose(fixed.xyxy[6], [12, 0, 32, 20])
    assert fixed.masks_rle[5] is None and fixed.features[6] is None and fixed.colors[5] is None
    assert fixed.masks_rle[4] == "m" and fixed.features[7] is not None
    # a merged last box has no sound box after it: the line through the last 4 sound ones
    # (2 px/frame) is extended to it, [16, 0, 36, 20] (the border extension would otherwise
    # take its growth for the exit speed)
    end = _raw_track([[2.0 * k, 0, 2.0 * k + 20, 20] for k in range(8)] + [[16.0, 0, 50, 20]])
    fixed_end = repair_merged_boxes(end, 0.15)
    assert len(fixed_end.times_s) == 9
    np.testing.assert_allclose(fixed_end.xyxy[8], [16, 0, 36, 20], atol=1e-4)


def test_objects_growing_on_their_own_are_left_alone():
    from pipeline.tracklets import merged_frames

    # Entering through the left border (width 4 -> 40 by 4 px/frame), then steady; a square
    # coming out from behind another (height 6 -> 30 by 3 px/frame); 10% detector jitter;
    # and a box shrunk by an occluder for a moment. None is a spike above the usual size.
    entering = [[0, 50, min(4.0 * (k + 1), 40), 90] for k in range(20)]
    revealed = [[50, 50, 80, 50 + min(6.0 + 3 * k, 30)] for k in range(20)]
    rng = np.random.default_rng(0)
    jitter = [[50, 50, 80 + 3 * rng.uniform(-1, 1), 80 + 3 * rng.uniform(-1, 1)] for _ in range(30)]
    shrunk = [[50, 50, 80, 80]] * 5 + [[50, 50, 80, 60]] * 3 + [[50, 50, 80, 80]] * 5
    for boxes in (entering, revealed, jitter, shrunk):
        assert not merged_frames(_raw_track(boxes), 0.15).any()
    # a track of 4 boxes is too short to know its usual size
    assert not merged_frames(_raw_track([[0, 0, 10, 10]] * 3 + [[0, 0, 30, 30]]), 0.15).any()
