"""Offline tracklet association: detections made for it (through the real ByteTrack), and
the real detector on scenes of the harder synthetic split."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from pipeline.associate import AssociationConfig, associate
from pipeline.geometry import box_iou
from pipeline.overlay import tracks_at
from pipeline.track import TrackerConfig, collect_tracks, track_frames
from pipeline.tracklets import RawTrack

FPS = 10.0
WH = (320, 240)


def look(k: int, dim: int = 16) -> np.ndarray:
    """A distinct unit appearance vector per object."""
    v = np.random.default_rng(k).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def dets(boxes, feats, classes=None) -> sv.Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return sv.Detections(
        xyxy=xyxy,
        confidence=np.full(n, 0.9, np.float32),
        class_id=np.zeros(n, int),
        data={
            "class_name": np.array(classes or ["circle"] * n, dtype=str),
            "feature": np.array(feats, np.float32).reshape(n, -1),
        },
    )


def hidden_for(seconds: float, n: int = 80):
    """Object A walks right at 10 px/s, hidden (no detection) from t=2 s for ``seconds``;
    object B stands still elsewhere, seen throughout."""
    frames = []
    for k in range(n):
        t = k / FPS
        a = [40 + 10 * t, 100, 70 + 10 * t, 130]
        b = [240, 30, 270, 60]
        if 2.0 <= t < 2.0 + seconds:
            frames.append((t, dets([b], [look(2)])))
        else:
            frames.append((t, dets([a, b], [look(1), look(2)])))
    return frames


def test_object_hidden_for_3_s_keeps_its_id():
    frames = hidden_for(3.0)
    off = collect_tracks(frames, TrackerConfig(associate_gap_s=0), FPS, frame_wh=WH)
    assert len(off) == 3  # ByteTrack alone: A comes back with a new ID
    tracks = collect_tracks(frames, TrackerConfig(), FPS, frame_wh=WH)
    assert len(tracks) == 2
    a = next(t for t in tracks if t.xyxy[0][1] == 100)
    assert len(a.times_s) == 50 and np.ptp(np.diff(a.times_s)) > 2.9  # one ID, one 3 s gap
    # longer than associate_gap_s: not linked
    assert len(collect_tracks(hidden_for(3.0), TrackerConfig(associate_gap_s=2.5), FPS)) == 3


def test_returning_object_that_looks_different_or_is_far_away_is_not_linked():
    frames = hidden_for(3.0)
    other = [(t, d) for t, d in frames]
    for i, (t, d) in enumerate(other):
        if t >= 5.0 and len(d) == 2:  # what comes back looks like something else
            other[i] = (t, dets(d.xyxy, [look(7), look(2)]))
    assert len(collect_tracks(other, TrackerConfig(), FPS, frame_wh=WH)) == 3
    far = [(t, dets(d.xyxy + ([200, 0, 200, 0] if t >= 5.0 and len(d) == 2 else 0), d.data["feature"]))
           for t, d in frames]  # fmt: skip
    far = [(t, d) for t, d in far]
    assert len(collect_tracks(far, TrackerConfig(), FPS, frame_wh=WH)) == 3


def test_two_objects_visible_together_never_share_an_id():
    # A and B look the same and stand side by side; each is seen on alternating halves of
    # the clip with some overlap in time: never one ID, however alike they are.
    frames = []
    for k in range(60):
        t = k / FPS
        boxes, feats = [], []
        if t < 3.5:
            boxes.append([100, 100, 130, 130])
            feats.append(look(1))
        if t >= 2.5:
            boxes.append([135, 100, 165, 130])
            feats.append(look(1))
        frames.append((t, dets(boxes, feats)))
    tracks = collect_tracks(frames, TrackerConfig(), FPS, frame_wh=WH)
    assert len(tracks) == 2
    for t in np.arange(0, 6, 0.1):  # at no time do two boxes carry one ID
        ids, _, _ = tracks_at(tracks, float(t), 0.5, (240, 320))
        assert len(ids) == len(set(ids.tolist()))


def _raw(t0, t1, x0, vx, feat, cls="circle") -> RawTrack:
    times = list(np.arange(t0, t1 + 1e-9, 0.1))
    boxes = [
        np.array([x0 + vx * (t - t0), 100, x0 + vx * (t - t0) + 30, 130], np.float32) for t in times
    ]
    n = len(times)
    return RawTrack(times, boxes, [None] * n, [cls] * n, [feat] * n)  # fmt: skip


def test_links_are_chosen_jointly_not_greedily():
    # Two objects hidden behind one spot, coming back in swapped order of time. Greedy
    # pairing in time order would give the first returner to whichever ended last; the
    # joint assignment pairs by look (and motion) for the lowest total cost.
    a1 = _raw(0.0, 2.0, 40, 20, look(1))
    b1 = _raw(0.0, 2.5, 40, 20, look(2))
    a2 = _raw(4.0, 6.0, 120, 20, look(1))
    b2 = _raw(3.5, 6.0, 110, 20, look(2))
    groups = associate([a1, b1, a2, b2], AssociationConfig(), WH)
    as_sets = {frozenset(id(r) for r in g) for g in groups}
    assert as_sets == {frozenset({id(a1), id(a2)}), frozenset({id(b1), id(b2)})}
    # another class never links
    c2 = _raw(4.0, 6.0, 120, 20, look(1), cls="star")
    assert len(associate([a1, c2], AssociationConfig(), WH)) == 2
    with pytest.raises(ValueError, match="max_gap_s"):
        AssociationConfig(max_gap_s=0)


@pytest.fixture(scope="module")
def detector():
    from pipeline.detect import Detector

    return Detector(conf=0.1, iou=0.5)


def _frames(scene):
    return ((f / scene.config.fps, scene.frame(f)) for f in range(scene.num_frames))


def _id_per_object(scene, tracks, obj_id: int) -> set[int]:
    """IDs of the tracks on the object (IoU >= 0.5) over the frames where it is visible."""
    seen = set()
    for f in scene.visible_frames(obj_id):
        t = f / scene.config.fps
        ids, boxes, _ = tracks_at(tracks, t, 0.5, (scene.config.height, scene.config.width))
        if len(ids):
            iou = box_iou(scene.boxes_xyxy[obj_id, f][None], boxes)[0]
            seen |= {int(i) for i in ids[iou >= 0.5]}
    return seen


def test_detected_object_hidden_behind_a_pillar_keeps_its_id(detector):
    from pipeline.synthetic.hard import make_hard_scene

    scene = make_hard_scene("occlusion", 0)  # hidden 2.9 s (object 0) and 1.4 s (object 1)
    cfg = TrackerConfig(track_low_thresh=0.1, fuse_score=False)
    tracks = track_frames(_frames(scene), detector, cfg, scene.config.fps)
    for obj in scene.objects:
        gaps = np.diff(scene.visible_frames(obj.obj_id)) / scene.config.fps
        assert gaps.max() >= 1.0  # really hidden for a while
        assert len(_id_per_object(scene, tracks, obj.obj_id)) == 1


def test_object_that_leaves_is_not_labelled_after_it_has_gone(detector):
    from pipeline.synthetic.hard import make_hard_scene

    scene = make_hard_scene("reenter", 0)
    cfg = TrackerConfig(track_low_thresh=0.1, fuse_score=False)
    tracks = track_frames(_frames(scene), detector, cfg, scene.config.fps)
    fps, hw = scene.config.fps, (scene.config.height, scene.config.width)
    for obj in scene.objects:
        (tid,) = _id_per_object(scene, tracks, obj.obj_id)  # and it keeps one ID
        gone = np.flatnonzero(np.isnan(scene.boxes_xyxy[obj.obj_id, :, 0]))  # no pixel in view
        assert len(gone) >= 10
        for f in gone:  # as the processor draws: only tracks seen on the nearest tracked frame
            ids, _, _ = tracks_at(tracks, f / fps, 0.5, hw, max_unseen_s=0.51 / fps)
            assert tid not in ids.tolist(), f"ID {tid} drawn at frame {f} after it left"


def test_botsort_with_detector_features_is_selectable():
    frames = hidden_for(0.5)  # a short gap BoT-SORT bridges online
    tracks = collect_tracks(frames, TrackerConfig(tracker="botsort"), FPS, frame_wh=WH)
    assert len(tracks) == 2 and sorted(len(t.times_s) for t in tracks) == [75, 80]
    no_feats = [(t, sv.Detections(xyxy=d.xyxy, confidence=d.confidence)) for t, d in frames]
    with pytest.raises(ValueError, match="needs detections with data"):
        collect_tracks(no_feats, TrackerConfig(tracker="botsort"), FPS)
    with pytest.raises(ValueError, match="tracker must be one of"):
        TrackerConfig(tracker="sort")
