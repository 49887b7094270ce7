"""The synthetic dataset: scene truth, expression semantics and the on-disk formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from ultralytics.data.utils import polygon2mask
from ultralytics.utils.ops import segments2boxes

from pipeline.synthetic import (
    SHAPES,
    Desc,
    Event,
    Query,
    SceneConfig,
    SceneObject,
    generate,
    hcstvg_entry,
    make_scene,
    resolve,
    scene_seed,
    video_id,
)
from pipeline.synthetic.__main__ import main
from pipeline.synthetic.expressions import Expression
from pipeline.synthetic.motion import derive_events, pass_events
from pipeline.synthetic.scene import (
    Scene,
    Segment,
    boxes_from_masks,
    make_stamp,
    render_masks,
)
from pipeline.synthetic.writer import VIDEO_SPLITS, mask_polygon

# pycocotools' decode trips numpy 2's copy= deprecation on every call; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL = dict(
    num_train=3, num_test=2, det_train=20, det_val=10, width=160, height=120, duration_s=4.0
)
CFG = SceneConfig(width=160, height=120, fps=10.0, duration_s=4.0)
T = 40  # 4 s x 10 fps


def _tight_xyxy(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file; the two files holding absolute paths get the root masked out."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name in ("summary.json", "data.yaml"):
                data = data.replace(str(root.resolve()).encode(), b"<ROOT>")
            out[str(f.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(out, seed=0, progress=False, **SMALL)
    return out


@pytest.fixture(scope="module")
def scenes() -> dict[str, Scene]:
    """The fixture dataset's scenes, regenerated through the public API (same seeds)."""
    out = {}
    for split, _, stream in VIDEO_SPLITS:
        for i in range(SMALL["num_train"] if split == "train" else SMALL["num_test"]):
            vid = video_id(split, i)
            out[vid] = make_scene(scene_seed(0, stream, i), CFG, video_id=vid)
    return out


# ------------------------------------------------------------------ hand-made scenes


def _obj(obj_id, shape, color, size_px, depth, centers, segments=(), size="small") -> SceneObject:
    c = np.asarray(centers, dtype=np.float32)
    return SceneObject(
        obj_id, shape, color, size, size_px, depth, make_stamp(shape, size_px), c, tuple(segments)
    )


def test_square_box_occlusion_and_hcstvg_entry_by_hand():
    # A 10 px square centred at (20, 30) on frames 0-5: top-left = floor(20 - 5 + 0.5) = 15,
    # floor(30 - 5 + 0.5) = 25 -> columns 15..24, rows 25..34, xyxy (15, 25, 25, 35).
    # On frame 2 a 12 px square in front centred at (28, 30) covers columns 22..33 and rows
    # 24..35, hiding columns 22..24 (30 px): the back square keeps box (15, 25, 22, 35).
    # On frame 4 a 12 px square centred at (20, 30) (columns 14..25) hides it fully: no box.
    cfg = SceneConfig(width=64, height=64, fps=10.0, duration_s=2.0)  # 20 frames
    n = cfg.num_frames
    back = np.full((n, 2), np.nan)
    back[0:6] = (20, 30)
    small_front = np.full((n, 2), np.nan)
    small_front[2] = (28, 30)
    cover = np.full((n, 2), np.nan)
    cover[4] = (20, 30)
    objects = (
        _obj(0, "square", "red", 10, 0, back),
        _obj(1, "square", "blue", 12, 1, small_front),
        _obj(2, "square", "white", 12, 2, cover),
    )
    masks = render_masks(objects, n, cfg.height, cfg.width)
    boxes = boxes_from_masks(masks)
    assert boxes[0, 0].tolist() == [15, 25, 25, 35]
    assert boxes[0, 2].tolist() == [15, 25, 22, 35]
    assert masks[0, 2].sum() == 100 - 30
    assert not masks[0, 4].any() and np.isnan(boxes[0, 4]).all()
    assert np.isnan(boxes[0, 6]).all()  # absent after frame 5
    # Frames 1..3 as the span: st_frame is 1-based (2), times are the frames' times (0.1, 0.3).
    expr = Expression("the red square", (0,), 1, 3, 0.1, 0.3, Query("attribute", Desc(color="red")))
    bg = np.zeros((cfg.height, cfg.width, 3), np.uint8)
    scene = Scene("hand", cfg, bg, objects, masks, boxes, (), (expr,), 0)
    entry = hcstvg_entry(scene)
    assert entry["st_frame"] == 2 and entry["img_num"] == 20
    assert (entry["st_time"], entry["ed_time"]) == (0.1, 0.3)
    assert entry["bbox"] == [[15, 25, 10, 10], [15, 25, 7, 10], [15, 25, 10, 10]]
    # The rendered frame shows the front object's colour where they overlap.
    img = scene.frame(2)
    assert tuple(img[30, 23]) == (40, 80, 225) and tuple(img[30, 16]) == (220, 40, 40)
    ((frames, xyxy, m),) = scene.truth(expr).values()
    assert (
        frames.tolist() == [1, 2, 3]
        and xyxy[1].tolist() == [15, 25, 22, 35]
        and m.shape == (3, 64, 64)
    )


def test_derive_events_by_hand():
    # right 0-10, up 10-20 (a turn spanning 0-20), stop 20-30, leave left 30-38.
    segs = [
        Segment("move", "right", 0, 10),
        Segment("move", "up", 10, 20),
        Segment("stop", "", 20, 30),
        Segment("leave", "left", 30, 38),
    ]
    obj = _obj(0, "circle", "red", 10, 0, np.zeros((40, 2)), segs)
    got = {(e.kind, e.detail, e.start_frame, e.end_frame) for e in derive_events(obj)}
    assert got == {
        ("move", "right", 0, 10),
        ("move", "up", 10, 20),
        ("turn", "right>up", 0, 20),
        ("stop", "", 20, 30),
        ("leave", "left", 30, 38),
        ("move", "left", 30, 38),
    }


def test_pass_events_by_hand():
    # A 10 px circle moves right along y=20 (centre x = 5 + 2t, so columns 2t..2t+9; its
    # outermost columns hold rows 3..6 of the stamp) in front of a still 10 px square at
    # columns 25..34, same rows. Pixels overlap iff 2t + 9 >= 25 and 2t <= 34: t = 8..17.
    # The circle passes in front over frames 8..17; the square does not move: no event.
    cfg = SceneConfig(width=64, height=64, fps=10.0, duration_s=2.0)
    t = np.arange(20)
    circle = np.stack([5 + 2 * t, np.full(20, 20)], axis=1)
    square = np.tile([30, 20], (20, 1))
    objects = (_obj(0, "circle", "red", 10, 1, circle), _obj(1, "square", "blue", 10, 0, square))
    events = pass_events(objects, cfg)
    assert [(e.obj_id, e.kind, e.detail) for e in events] == [(0, "pass", "front:1")]
    assert (events[0].start_frame, events[0].end_frame) == (8, 17)
    masks = render_masks(objects, 20, 64, 64)
    hidden = [f for f in range(20) if masks[1, f].sum() < 100]  # square partly hidden
    assert hidden == list(range(8, 18))


def _two_circles_and_square():
    objs = (
        _obj(0, "circle", "red", 10, 0, np.zeros((40, 2))),
        _obj(1, "circle", "blue", 10, 1, np.zeros((40, 2))),
        _obj(2, "square", "red", 10, 2, np.zeros((40, 2))),
    )
    lives = {0: (0, 39), 1: (0, 39), 2: (5, 30)}
    return objs, lives


def test_resolve_semantics_by_hand():
    objs, lives = _two_circles_and_square()
    ev = (
        Event(0, "move", "left", 0, 8),
        Event(1, "move", "left", 20, 30),
        Event(2, "stop", "", 10, 15),
    )
    circle = Desc(shape="circle")
    # Both circles move left once: "the two circles moving left", span = hull 0..30.
    assert resolve(Query("event", circle, "move", "left"), objs, ev, lives, 5) == ((0, 1), (0, 30))
    # Circle 0 starts at 0, circle 1 at 20: 20 >= margin 5 -> first = 0, last = 1.
    assert resolve(Query("order", circle, "move", "left", order="first"), objs, ev, lives, 5) == (
        (0,),
        (0, 8),
    )
    assert (
        resolve(Query("order", circle, "move", "left", order="last"), objs, ev, lives, 25) is None
    )
    # After the square stops (ends at 15): only circle 1 (starts 20); circle 0 ends at 8 <= 10
    # is clearly before, so the relation is informative.
    anchor = Query("event", Desc(shape="square"), "stop")
    after = Query("relation", circle, "move", "left", relation="after", anchor=anchor)
    assert resolve(after, objs, ev, lives, 5) == ((1,), (20, 30))
    before = Query("relation", circle, "move", "left", relation="before", anchor=anchor)
    assert resolve(before, objs, ev, lives, 5) == ((0,), (0, 8))
    # A circle moving left during the stop (12..18) makes "after"/"before" unclear: ill-posed.
    overlapping = (*ev[:1], Event(1, "move", "left", 12, 18), ev[2])
    assert resolve(after, objs, overlapping, lives, 5) is None
    # An anchor that matches the subject's description is refused ("the red ... the red ...").
    red_anchor = Query(
        "relation", Desc(color="red"), "move", "left", relation="before", anchor=anchor
    )
    assert resolve(red_anchor, objs, ev, lives, 5) is None
    # A target doing the event twice makes "when" ambiguous.
    twice = (*ev, Event(0, "move", "left", 32, 39))
    assert (
        resolve(
            Query("event", Desc(color="red", shape="circle"), "move", "left"), objs, twice, lives, 5
        )
        is None
    )
    # Attribute span = visible life.
    assert resolve(Query("attribute", Desc(shape="square")), objs, ev, lives, 5) == ((2,), (5, 30))
    assert Query("event", circle, "move", "left").text(2) == "the two circles that move left"
    assert after.text() == "the circle that moves left after the square stops"


# ------------------------------------------------------------------ generated scenes


def _satisfying(scene: Scene, q: Query) -> set[int]:
    """Objects that satisfy a query, checked directly against the scene's events."""

    def does(obj_id: int) -> list[Event]:
        out = []
        for e in scene.events:
            if e.obj_id != obj_id or e.kind != q.kind:
                continue
            if q.kind == "pass":
                side, other = e.detail.split(":")
                if side == q.detail and q.other.matches(scene.objects[int(other)]):
                    out.append(e)
            elif q.detail is None or q.detail == e.detail:
                out.append(e)
        return out

    matching = [o.obj_id for o in scene.objects if q.desc.matches(o)]
    if q.template == "attribute":
        return set(matching)
    if q.template == "event":
        return {i for i in matching if does(i)}
    if q.template == "order":
        starts = {i: [e.start_frame for e in does(i)] for i in matching if does(i)}
        pick = min if q.order == "first" else max
        best = pick(starts, key=lambda i: pick(starts[i]))
        return {best}
    (anchor,) = _satisfying(scene, q.anchor)
    anchor_events = [
        e for e in scene.events if e.obj_id == anchor and e.kind == q.anchor.kind
        and (q.anchor.detail is None or e.detail == q.anchor.detail)
    ]  # fmt: skip
    (a,) = anchor_events
    ok = set()
    for i in matching:
        for e in does(i):
            if (q.relation == "after" and e.start_frame >= a.end_frame) or (
                q.relation == "before" and e.end_frame <= a.start_frame
            ):
                ok.add(i)
    return ok


def test_expressions_are_unique_and_spans_follow_events(scenes):
    # 200 random scenes' worth of templates would be slow; the 5 fixture scenes plus 15 more.
    more = [make_scene([7, 7, i], CFG) for i in range(15)]
    templates, multi = set(), 0
    for scene in [*scenes.values(), *more]:
        assert 3 <= len(scene.expressions) <= 6
        for e in scene.expressions:
            templates.add(e.template)
            multi += e.is_multi
            assert set(e.target_ids) == _satisfying(scene, e.query), e.text
            for oid in e.target_ids:
                if e.template == "attribute":
                    vis = scene.visible_frames(oid)
                    assert e.start_frame <= vis[0] and vis[-1] <= e.end_frame
                    continue
                occ = [
                    ev for ev in scene.events
                    if ev.obj_id == oid and ev.kind == e.query.kind
                    and e.start_frame <= ev.start_frame and ev.end_frame <= e.end_frame
                ]  # fmt: skip
                assert occ, e.text
            if not e.is_multi and e.template != "attribute":
                ev = next(
                    ev
                    for ev in scene.events
                    if ev.obj_id == e.target_ids[0]
                    and (ev.start_frame, ev.end_frame) == (e.start_frame, e.end_frame)
                    and ev.kind == e.query.kind
                )
                assert ev.num_frames >= 2
            assert e.start_s == pytest.approx(e.start_frame / 10) and e.end_s == pytest.approx(
                e.end_frame / 10
            )
    assert templates == {"attribute", "event", "order", "relation"}
    assert multi >= 3


def test_events_match_the_motion(scenes):
    """Every event agrees with the drawn centres: strict motion inside, none beyond its ends."""
    axis = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
    checked = set()
    for scene in scenes.values():
        for e in scene.events:
            obj = scene.objects[e.obj_id]
            # Rounded top-left corner, exactly what the masks were drawn at.
            c = np.floor(obj.centers_xy - obj.size_px / 2 + 0.5)
            span = c[e.start_frame : e.end_frame + 1]
            assert not np.isnan(span).any()
            s = obj.size_px
            inside = [bool(np.all(p >= 0) and p[0] + s <= 160 and p[1] + s <= 120) for p in c]
            if e.kind == "move":
                ax, sign = axis[e.detail]
                assert np.all(sign * np.diff(span[:, ax]) > 0), e  # strictly moving that way
                assert np.all(np.diff(span[:, 1 - ax]) == 0), e
                # Runs are maximal: no motion that way just before or just after.
                for t_out, t_in in (
                    (e.start_frame - 1, e.start_frame),
                    (e.end_frame + 1, e.end_frame),
                ):
                    if 0 <= t_out < T and not np.isnan(c[t_out, 0]):
                        step = (
                            c[t_in, ax] - c[t_out, ax]
                            if t_out < t_in
                            else c[t_out, ax] - c[t_in, ax]
                        )
                        assert sign * step <= 0, ("moves that way beyond its span", e)
            elif e.kind == "turn":
                first, then = (axis[d] for d in e.detail.split(">"))
                assert first[0] != then[0] or first[1] != then[1]
            elif e.kind == "stop":
                assert np.all(span == span[0]), e
                assert not np.array_equal(c[e.start_frame - 1], c[e.start_frame]), e
            elif e.kind == "enter":  # appears at the edge, ends fully inside
                assert e.start_frame == 0 or np.isnan(c[e.start_frame - 1, 0]), e
                assert not inside[e.start_frame] and inside[e.end_frame], e
            elif e.kind == "leave":  # starts fully inside, gone after its end
                assert e.end_frame == T - 1 or np.isnan(c[e.end_frame + 1, 0]), e
                assert inside[e.start_frame] and not inside[e.end_frame], e
            elif e.kind == "pass":
                other = scene.objects[int(e.detail.split(":")[1])]
                front, back = (obj, other) if e.detail.startswith("front") else (other, obj)
                assert front.depth > back.depth
                for t in range(e.start_frame, e.end_frame + 1):  # the back one is partly hidden
                    assert scene.masks[back.obj_id, t].sum() < back.stamp.sum() or not inside[t]
            checked.add(e.kind)
    assert {"move", "stop", "turn"} <= checked


def test_moving_left_span_via_box_centres(data, scenes):
    """For "moving left/right", the written masks' box centre moves that way across the span,
    on frames where the target is unoccluded, and is not moving that way just outside it."""
    found = 0
    for scene in [*scenes.values(), *(make_scene([3, 3, i], CFG) for i in range(10))]:
        for e in scene.expressions:
            if e.query.kind != "move" or e.is_multi or e.query.detail not in ("left", "right"):
                continue
            oid = e.target_ids[0]
            full_area = scene.objects[oid].stamp.sum()
            sign = -1 if e.query.detail == "left" else 1
            frames = [
                t for t in range(e.start_frame, e.end_frame + 1)
                if scene.masks[oid, t].sum() == full_area
            ]  # fmt: skip
            cx = [(scene.boxes_xyxy[oid, t, 0] + scene.boxes_xyxy[oid, t, 2]) / 2 for t in frames]
            assert np.all(sign * np.diff(cx) > 0), e.text
            for t_out, t_in in ((e.start_frame - 1, e.start_frame), (e.end_frame + 1, e.end_frame)):
                if (
                    0 <= t_out < T
                    and scene.masks[oid, t_out].sum() == full_area == scene.masks[oid, t_in].sum()
                ):
                    out = (scene.boxes_xyxy[oid, t_out, 0] + scene.boxes_xyxy[oid, t_out, 2]) / 2
                    inside = (scene.boxes_xyxy[oid, t_in, 0] + scene.boxes_xyxy[oid, t_in, 2]) / 2
                    moved_on = (
                        sign * (inside - out) > 0 if t_out < t_in else sign * (out - inside) > 0
                    )
                    assert not moved_on, ("still moving that way outside the span", e.text)
            found += 1
    assert found >= 3


# ------------------------------------------------------------------ files on disk


def test_mevis_files_parse_and_match_masks(data, scenes):
    for split, n in (("train", 3), ("valid_u", 2)):
        root = data / "mevis" / split
        meta = json.loads((root / "meta_expressions.json").read_text())["videos"]
        masks = json.loads((root / "mask_dict.json").read_text())
        assert sorted(meta) == [video_id(split, i) for i in range(n)]
        for vid, v in meta.items():
            scene = scenes[vid]
            assert v["frames"] == [f"{t:05d}" for t in range(T)]
            files = sorted(p.name for p in (root / "JPEGImages" / vid).iterdir())
            assert files == [f"{t:05d}.jpg" for t in range(T)]
            img = cv2.imread(str(root / "JPEGImages" / vid / "00007.jpg"))
            assert img.shape == (120, 160, 3)
            assert np.abs(img[..., ::-1].astype(int) - scene.frame(7)).mean() < 6  # JPEG noise only
            assert [x["exp"] for x in v["expressions"].values()] == [
                e.text for e in scene.expressions
            ]
            for exp, e in zip(v["expressions"].values(), scene.expressions):
                assert exp["obj_id"] == list(e.target_ids)
                for oid, aid in zip(exp["obj_id"], exp["anno_id"]):
                    rles = masks[str(aid)]
                    assert len(rles) == T
                    for t, rle in enumerate(rles):
                        if rle is None:
                            assert not scene.masks[oid, t].any()
                            continue
                        assert rle["size"] == [120, 160]
                        m = mask_utils.decode(
                            {"size": rle["size"], "counts": rle["counts"].encode()}
                        )
                        assert m.shape == (120, 160)
                        assert np.array_equal(m.astype(bool), scene.masks[oid, t])
                        assert _tight_xyxy(m) == tuple(int(x) for x in scene.boxes_xyxy[oid, t])


def test_multi_object_expressions_have_union_masks(data):
    meta = json.loads((data / "mevis" / "train" / "meta_expressions.json").read_text())["videos"]
    multi = [x for v in meta.values() for x in v["expressions"].values() if len(x["obj_id"]) >= 2]
    assert multi
    for x in multi:
        assert len(set(x["anno_id"])) == len(x["anno_id"]) == len(x["obj_id"])


def test_hcstvg_annotations_match_masks(data, scenes):
    for split, hc_split in (("train", "train"), ("valid_u", "test")):
        anno = json.loads((data / "hcstvg" / "anno" / f"{hc_split}.json").read_text())
        masks = json.loads((data / "mevis" / split / "mask_dict.json").read_text())
        meta = json.loads((data / "mevis" / split / "meta_expressions.json").read_text())["videos"]
        truth = json.loads((data / "mevis" / split / "synthetic_truth.json").read_text())["videos"]
        assert sorted(anno) == sorted(f"{v}.mp4" for v in meta)
        for key, a in anno.items():
            vid = key[: -len(".mp4")]
            exp_id = truth[vid]["hcstvg_exp_id"]
            exp = meta[vid]["expressions"][exp_id]
            assert a["caption"] == exp["exp"] and len(exp["obj_id"]) == 1
            assert (a["width"], a["height"], a["img_num"]) == (160, 120, T)
            first = round(a["st_time"] * 10)
            last = round(a["ed_time"] * 10)
            assert a["st_frame"] == first + 1  # 1-based
            assert len(a["bbox"]) == last - first + 1
            assert (
                last - first + 1 < T or truth[vid]["expressions"][exp_id]["template"] == "attribute"
            )
            rles = masks[str(exp["anno_id"][0])]
            for k, (x, y, w, h) in enumerate(a["bbox"]):
                rle = rles[a["st_frame"] - 1 + k]
                m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
                assert (x, y, x + w, y + h) == _tight_xyxy(m)
            with av.open(str(data / "hcstvg" / "video" / key)) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            assert len(frames) == T and frames[0].shape == (120, 160, 3)
            diff = np.abs(frames[5].astype(int) - scenes[vid].frame(5)).mean()
            assert diff < 8  # H.264 + yuv420p chroma subsampling only


def test_yolo_labels_match_masks(data):
    root = data / "yolo"
    yaml_text = (root / "data.yaml").read_text()
    assert f"path: {root.resolve()}\n" in yaml_text
    assert "train: images/train\nval: images/val\n" in yaml_text
    assert all(f"  {i}: {name}\n" in yaml_text for i, name in enumerate(SHAPES))
    for split, n, stream in (("train", 20, 2), ("val", 10, 3)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        for lbl in labels:
            _, j, t = lbl.stem.split("_")
            scene = make_scene(scene_seed(0, stream, int(j)), CFG, with_expressions=False)
            rows = [line.split() for line in lbl.read_text().splitlines()]
            visible = [o for o in scene.objects if scene.masks[o.obj_id, int(t)].any()]
            assert len(rows) == len(visible)
            for row, obj in zip(rows, visible):
                # Ultralytics' segmentation format: class, then a normalised polygon
                cls, xy = int(row[0]), np.array(row[1:], dtype=np.float64).reshape(-1, 2)
                assert cls == SHAPES.index(obj.shape)
                assert len(xy) >= 3 and ((xy >= 0) & (xy <= 1)).all()
                pixels = xy * [160, 120]
                mask = scene.masks[obj.obj_id, int(t)]
                # Ultralytics' own rasteriser redraws the visible mask from the label
                drawn = polygon2mask((120, 160), [np.round(pixels).reshape(-1)]).astype(bool)
                assert (drawn & mask).sum() / (drawn | mask).sum() > 0.85
                # and the box its detection training takes from the polygon is the mask's
                x1, y1, x2, y2 = _tight_xyxy(mask)
                bx1, by1, bx2, by2 = (float(v) for v in segments2boxes([pixels])[0][:4])
                box = (bx1 - bx2 / 2, by1 - by2 / 2, bx1 + bx2 / 2, by1 + by2 / 2)
                assert box == pytest.approx((x1, y1, x2 - 1, y2 - 1), abs=1e-3)


def test_mask_polygon_joins_the_pieces_of_a_split_mask():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:20, 5:15] = True  # two pieces of one object (an occluder between them)
    mask[5:20, 30:45] = True
    poly = mask_polygon(mask)
    drawn = polygon2mask((40, 60), [poly.reshape(-1)]).astype(bool)
    assert drawn[mask].all()  # both pieces, in one polygon
    assert (drawn & ~mask).sum() <= 2 * 15  # plus at most a thin bridge between them
    whole = np.zeros((40, 60), dtype=bool)
    whole[10:30, 10:30] = True
    assert (polygon2mask((40, 60), [mask_polygon(whole).reshape(-1)]).astype(bool) == whole).all()


def test_an_older_generator_version_is_rewritten(tmp_path):
    out = tmp_path / "y"
    kw = dict(
        num_train=0, num_test=0, det_train=2, det_val=1, width=160, height=120, duration_s=2.0
    )
    generate(out, formats=("yolo",), progress=False, **kw)
    summary = json.loads((out / "summary.json").read_text())
    summary["params"]["generator_version"] -= 1
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "yolo" / "labels" / "train" / "stale.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    again = generate(out, formats=("yolo",), progress=False, **kw)
    assert again["params"]["generator_version"] == summary["params"]["generator_version"] + 1
    assert not (out / "yolo" / "labels" / "train" / "stale.txt").exists()


def test_same_seed_same_bytes_and_other_seed_differs(data, tmp_path):
    again = tmp_path / "b"
    generate(again, seed=0, progress=False, **SMALL)
    first, second = _hash_tree(data), _hash_tree(again)
    assert first == second
    other = tmp_path / "c"
    generate(other, seed=1, progress=False, formats=("mevis",), **SMALL)
    third = _hash_tree(other)
    key = "mevis/train/meta_expressions.json"
    assert third[key] != first[key]
    jpg = "mevis/train/JPEGImages/syn_train_0000/00000.jpg"
    assert third[jpg] != first[jpg]


def test_idempotent_mismatch_and_force(tmp_path):
    out = tmp_path / "y"
    kw = dict(
        num_train=0, num_test=0, det_train=3, det_val=2, width=160, height=120, duration_s=2.0
    )
    s1 = generate(out, formats=("yolo",), progress=False, **kw)
    label = next((out / "yolo" / "labels" / "train").glob("*.txt"))
    stamp = label.stat().st_mtime_ns
    assert generate(out, formats=("yolo",), progress=False, **kw) == s1
    assert label.stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(FileExistsError, match="seed"):
        generate(out, seed=5, formats=("yolo",), progress=False, **kw)
    with pytest.raises(SystemExit) as err:  # the CLI turns it into a usage error
        main(["--out", str(out), "--seed", "5", "--formats", "yolo", "--no-progress"])
    assert err.value.code == 2
    s2 = generate(out, seed=5, formats=("yolo",), progress=False, force=True, **kw)
    assert s2["params"]["seed"] == 5
    assert json.loads((out / "summary.json").read_text())["params"]["seed"] == 5
    with pytest.raises(ValueError, match="formats"):
        generate(tmp_path / "z", formats=("coco",), progress=False)
    with pytest.raises(ValueError, match="even"):
        SceneConfig(width=161)


def test_hard_split_scenes_hide_exit_cross_and_crowd():
    from pipeline.synthetic.hard import CROWD_HIDERS, KINDS, make_hard_scene, mot_rows

    fps = 10.0
    occ = make_hard_scene("occlusion", 0)
    for obj in occ.objects:  # fully hidden behind the pillar (not an object) for 1-4 s
        hidden = np.diff(occ.visible_frames(obj.obj_id)).max() - 1
        assert 1.0 <= hidden / fps <= 4.5
        col = occ.frame(50)[:, occ.pillar[0] : occ.pillar[1]]
        assert (col == col[0, 0]).all()  # the pillar is drawn over everything
    re = make_hard_scene("reenter", 0)
    for obj in re.objects:  # leaves (no pixel in view) and comes back
        gone = np.isnan(re.boxes_xyxy[obj.obj_id, :, 0])
        first, last = re.visible_frames(obj.obj_id)[[0, -1]]
        assert gone[first:last].sum() >= fps  # at least 1 s away
    cross = make_hard_scene("crossing", 0)
    a, b = cross.objects
    assert (a.shape, a.size_px) == (b.shape, b.size_px) and a.color != b.color
    dx = cross.objects[0].centers_xy[:, 0] - cross.objects[1].centers_xy[:, 0]
    assert dx[0] * dx[-1] < 0  # their order swaps: they cross
    for seed in range(4):  # 15+ objects; four small ones each hidden behind a large one
        crowd = make_hard_scene("crowd", seed)
        assert len(crowd.objects) >= 15
        smalls = crowd.objects[-CROWD_HIDERS:]
        larges = crowd.objects[-2 * CROWD_HIDERS : -CROWD_HIDERS]
        for big, small in zip(larges, smalls):
            assert big.shape == small.shape and big.color != small.color
            assert big.size_px > 2 * small.size_px and big.depth > small.depth
            seen = crowd.visible_frames(small.obj_id)
            assert 1.0 <= (np.diff(seen).max() - 1) / fps <= 4.5  # other members may add a little
            assert len(crowd.visible_frames(big.obj_id)) == crowd.num_frames
    rows = mot_rows(occ)  # MOTChallenge gt.txt: one row per visible object per frame
    assert len(rows) == int((~np.isnan(occ.boxes_xyxy[..., 0])).sum())
    frame, oid, x, y, w, h = (float(v) for v in rows[0].split(",")[:6])
    x1, y1, x2, y2 = occ.boxes_xyxy[0, 0]
    assert (frame, oid, x, y, w, h) == (1, 1, x1, y1, x2 - x1, y2 - y1)
    assert (
        make_hard_scene("crowd", 3).frame(7).tobytes()
        == make_hard_scene("crowd", 3).frame(7).tobytes()
    )
    for seed in range(8):
        beh = make_hard_scene("behind", seed)
        for big, small in zip(beh.objects[0::2], beh.objects[1::2]):
            # a small object of the large one's shape, another colour, behind it for 1-4 s
            assert big.shape == small.shape and big.color != small.color
            assert big.size_px > 2 * small.size_px and big.depth > small.depth
            seen = beh.visible_frames(small.obj_id)
            assert 1.0 <= (np.diff(seen).max() - 1) / fps <= 4.0
            assert len(beh.visible_frames(big.obj_id)) == beh.num_frames  # in view throughout
    assert set(KINDS) == {"occlusion", "reenter", "crossing", "crowd", "behind"}
    # adding a kind left the other kinds' scenes as they were (one random stream each)
    first = make_hard_scene("newcomer", 0).objects[0]
    assert (first.color, first.size_px) == ("blue", 35)  # as before "behind" was added


def test_tracking_bench_refuses_a_hard_split_written_by_an_older_version(tmp_path, capsys):
    import importlib.util

    from pipeline.runtime import REPO_ROOT
    from pipeline.synthetic.hard import ALL_KINDS, SPLIT_VERSION

    spec = importlib.util.spec_from_file_location("bench_tracking", REPO_ROOT / "bench/tracking.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    videos = [{"video": f"{k}_000", "kind": k, "objects": 2} for k in ALL_KINDS]
    old = {"seed": 0, "per_kind": 3, "videos": videos}  # no version: the first crowds
    (tmp_path / "summary.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit) as err:
        bench.main(["--data", str(tmp_path)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert f"split version 1, this one is {SPLIT_VERSION}" in msg
    assert "python -m pipeline.synthetic.hard --out" in msg
