"""Adapters and the registry, on tiny fixtures written here in each dataset's exact format.

Each test states the format's trap it covers and works the expected values out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.adapters import (
    ADAPTERS,
    AnnotationError,
    AnnotationProblem,
    AnnotationWarning,
    DatasetNotFoundError,
    get_adapter,
    raise_problem,
)
from pipeline.datasets import DatasetSpec, iter_records, load_specs
from pipeline.decode import iter_frames
from pipeline.geometry import mask_to_rle, mask_to_xyxy
from pipeline.runtime import REPO_ROOT


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_video(path: Path, n: int, fps: int = 10, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 8 * i, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def write_jpegs(folder: Path, names: list[str], w: int = 10, h: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / f"{n}.jpg")


def box_mask(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


# ------------------------------------------------------------------ HC-STVG


def test_hcstvg1_one_based_st_frame_and_xywh(tmp_path):
    write_video(tmp_path / "video" / "part1" / "clip_a.mp4", 20, fps=10)  # found recursively
    write_json(
        tmp_path / "anno" / "train.json",
        {
            "clip_a.mp4": {
                "bbox": [[10, 20, 30, 40], [12, 20, 30, 40]], "st_frame": 3,
                "st_time": 0.2, "ed_time": 0.35, "img_num": 20, "caption": "the man sits",
                "width": 64, "height": 48,
            },
            "clip_b.mkv": {  # no video file: still yielded, fps = img_num / 20 = 25
                "bbox": [[0, 0, 5, 5]], "st_frame": 1, "st_time": 0.0, "ed_time": 0.04,
                "img_num": 500, "caption": "a woman", "width": 64, "height": 48,
            },
            "clip_c.mp4": {"bbox": [[1, 2, 3]], "st_frame": 1, "st_time": 0, "ed_time": 1,
                           "img_num": 20, "caption": "bad box"},
        },
    )  # fmt: skip
    problems: list[AnnotationProblem] = []
    recs = list(get_adapter("hcstvg1")(tmp_path, "train", on_error=problems.append))
    assert [r.video_id for r in recs] == ["clip_a", "clip_b"]
    a, b = recs
    assert a.source == tmp_path / "video" / "part1" / "clip_a.mp4"
    assert a.fps == 10.0 and (a.width, a.height) == (64, 48)
    (q,) = a.queries
    assert (q.text, q.qtype, q.span_s) == ("the man sits", "declarative", (0.2, 0.35))
    (gt,) = q.gt
    # st_frame 3 is 1-based: boxes at native frames 2 and 3 -> 0.2 s and 0.3 s
    np.testing.assert_allclose(gt.times_s, [0.2, 0.3])
    # xywh [10, 20, 30, 40] -> xyxy [10, 20, 40, 60]
    np.testing.assert_allclose(gt.xyxy, [[10, 20, 40, 60], [12, 20, 42, 60]])
    assert b.source == tmp_path / "video" / "clip_b.mkv" and b.fps == 25.0
    np.testing.assert_allclose(b.queries[0].gt[0].times_s, [0.0])
    assert len(problems) == 1 and problems[0].video_id == "clip_c.mp4"
    assert "bbox" in problems[0].reason and problems[0].path.name == "train.json"
    # the adapter's times land on the decoded frames' times
    frames = {f.frame_idx: f.time_s for f in iter_frames(a)}
    assert frames[2] == pytest.approx(gt.times_s[0]) and frames[3] == pytest.approx(gt.times_s[1])


def test_hcstvg1_annotation_beside_root(tmp_path):
    (tmp_path / "videos").mkdir()  # the other accepted folder name
    write_json(tmp_path / "test.json", {"x.mp4": {"bbox": [[0, 0, 1, 1]], "st_frame": 1,
               "st_time": 0, "ed_time": 1, "img_num": 20, "caption": "c"}})  # fmt: skip
    (r,) = list(get_adapter("hcstvg1")(tmp_path, "test"))
    assert r.fps == 1.0 and r.width is None  # 20 frames / 20 s, no size given


def test_hcstvg2_keys_and_nested_names(tmp_path):
    write_video(tmp_path / "videos" / "v2_a.mp4", 10, fps=5)
    write_json(
        tmp_path / "anno" / "valv2.json",
        {"sub/dir/v2_a.mp4": {"bbox": [[4, 4, 2, 6]], "st_frame": 2, "st_time": 0.2,
                              "ed_time": 0.4, "img_num": 10, "img_size": [48, 64],
                              "English": "he waves"}},
    )  # fmt: skip
    (r,) = list(get_adapter("hcstvg2")(tmp_path, "val"))
    assert r.video_id == "v2_a" and r.source == tmp_path / "videos" / "v2_a.mp4"
    assert (r.width, r.height) == (64, 48)  # img_size is [h, w]
    (q,) = r.queries
    assert q.text == "he waves"
    # st_frame 2 at 5 fps -> (2 - 1) / 5 = 0.2 s; xywh [4, 4, 2, 6] -> [4, 4, 6, 10]
    np.testing.assert_allclose(q.gt[0].times_s, [0.2])
    np.testing.assert_allclose(q.gt[0].xyxy, [[4, 4, 6, 10]])


# ------------------------------------------------------------------ VidSTG


def vidstg_fixture(root: Path) -> None:
    traj = []
    for fid in range(40):  # tid 0 everywhere but frame 20; tid 1 everywhere
        objs = [{"tid": 1, "bbox": {"xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}}]
        if fid != 20:
            box = {"xmin": fid, "ymin": 1, "xmax": fid + 10, "ymax": 11}
            objs.append({"tid": 0, "bbox": box, "generated": 0, "tracker": "x"})
        traj.append(objs)
    write_json(root / "vidor" / "annotation" / "training" / "0001" / "111.json",
               {"video_id": "111", "video_path": "0001/111.mp4", "frame_count": 40,
                "fps": 10, "width": 64, "height": 48, "trajectories": traj})  # fmt: skip
    base = {"vid": "111", "fps": 10, "frame_count": 40, "width": 64, "height": 48,
            "subject/objects": [{"tid": 0, "category": "adult"}, {"tid": 1, "category": "ball"}]}  # fmt: skip
    write_json(
        root / "annotations" / "train_annotations.json",
        [
            {**base, "used_segment": {"begin_fid": 10, "end_fid": 30},
             "temporal_gt": {"begin_fid": 15, "end_fid": 40},  # runs past the segment
             "captions": [{"description": "an adult walks", "type": "adult", "target_id": 0}],
             "questions": [{"description": "who walks?", "type": "adult", "target_id": 0}]},
            {**base, "used_segment": {"begin_fid": 10, "end_fid": 30},
             "temporal_gt": {"begin_fid": 12, "end_fid": 14},
             "captions": [{"description": "a ball", "type": "ball", "target_id": 1}],
             "questions": []},
            {**base, "used_segment": {"begin_fid": 0, "end_fid": 10},
             "temporal_gt": {"begin_fid": 20, "end_fid": 25},  # outside: skipped
             "captions": [{"description": "late", "type": "adult", "target_id": 0}],
             "questions": []},
        ],
    )  # fmt: skip


def test_vidstg_segments_clipping_qtypes_and_vidor_boxes(tmp_path):
    vidstg_fixture(tmp_path)
    (tmp_path / "video").mkdir()
    problems: list[AnnotationProblem] = []
    (r,) = list(get_adapter("vidstg")(tmp_path, "train", on_error=problems.append))
    # records 0 and 1 share (vid, segment) -> one VideoRecord; record 2's segment has no query
    assert r.video_id == "111_10_30" and r.source == tmp_path / "video" / "0001" / "111.mp4"
    assert (r.fps, r.clip_start_s, r.clip_end_s) == (10.0, 1.0, 3.0)
    assert [(q.query_id, q.qtype) for q in r.queries] == [
        ("0-d0", "declarative"), ("0-i0", "interrogative"), ("1-d0", "declarative")]  # fmt: skip
    cap, ques, ball = r.queries
    # temporal_gt [15, 40) clipped to the segment [10, 30): 0.5 s .. 2.0 s from the clip start
    assert cap.span_s == ques.span_s == (0.5, 2.0)
    (gt,) = cap.gt
    assert gt.object == 0
    # frames 15..29 except 20 (no VidOR box there): 14 boxes at (fid - 10) / 10
    expected_fids = [f for f in range(15, 30) if f != 20]
    np.testing.assert_allclose(gt.times_s, (np.array(expected_fids) - 10) / 10, rtol=1e-6)
    np.testing.assert_allclose(gt.xyxy[0], [15, 1, 25, 11])
    assert ball.span_s == pytest.approx((0.2, 0.4)) and len(ball.gt[0].times_s) == 2
    assert len(problems) == 2  # record 2 lies outside its segment; then its video has no query
    assert problems[0].query_id == "2" and "outside" in problems[0].reason
    assert problems[1].video_id == "111_0_10"


def test_vidstg_test_split_reads_vidor_validation(tmp_path):
    vidstg_fixture(tmp_path)
    (tmp_path / "annotations" / "train_annotations.json").rename(
        tmp_path / "annotations" / "test_annotations.json"
    )
    with pytest.raises(DatasetNotFoundError, match="validation"):
        get_adapter("vidstg")(tmp_path, "test")
    (tmp_path / "vidor" / "annotation" / "training").rename(
        tmp_path / "vidor" / "annotation" / "validation"
    )
    with pytest.raises(DatasetNotFoundError, match="VidOR videos"):
        get_adapter("vidstg")(tmp_path, "test")
    (tmp_path / "video").mkdir()
    problems: list[AnnotationProblem] = []
    (r,) = list(get_adapter("vidstg")(tmp_path, "test", on_error=problems.append))
    assert (
        len(problems) == 2
        and r.split == "test"
        and r.source == tmp_path / "video" / "0001" / "111.mp4"
    )


# ------------------------------------------------------------------ MeViS


def test_mevis_multi_object_null_masks_and_uncompressed_rle(tmp_path):
    h, w = 8, 10
    split = tmp_path / "train"
    write_jpegs(split / "JPEGImages" / "vid1", ["00000", "00001", "00002", "00003"], w, h)
    m_a = [box_mask(h, w, 1, 1, 4, 3), box_mask(h, w, 2, 1, 5, 4)]  # anno 10, frames 0-1
    m_b = [box_mask(h, w, 6, 2, 9, 8)] * 3  # anno 11, frames 1-3

    def rle(m, compressed=True):
        if compressed:
            return {"size": [h, w], "counts": mask_to_rle(m)}
        flat = m.flatten(order="F").astype(int)  # uncompressed: run lengths, zeros first
        runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat, -1]) != 0))
        counts = ([0] if flat[0] else []) + runs.tolist()
        return {"size": [h, w], "counts": counts}

    write_json(split / "mask_dict.json", {
        "10": [rle(m_a[0]), rle(m_a[1], compressed=False), None, None],
        "11": [None] + [rle(m) for m in m_b],
        "12": [None, None, None, None],
    })  # fmt: skip
    write_json(split / "meta_expressions.json", {"videos": {"vid1": {
        "frames": ["00000", "00001", "00002", "00003"],
        "expressions": {
            "0": {"exp": "the two moving squares", "obj_id": [1, 2], "anno_id": [10, 11]},
            "1": {"exp": "the left square", "obj_id": [1], "anno_id": [10]},
            "2": {"exp": "a ghost", "obj_id": [3], "anno_id": [12]},
        },
    }}})  # fmt: skip
    problems: list[AnnotationProblem] = []
    (r,) = list(get_adapter("mevis")(tmp_path, "train", fps=10, on_error=problems.append))
    assert (r.width, r.height, r.fps) == (10, 8, 10.0) and r.source == split / "JPEGImages" / "vid1"
    assert r.frame_files == ("00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg")
    both, left = r.queries
    assert both.qtype == "referring" and [g.object for g in both.gt] == [1, 2]
    a, b = both.gt
    np.testing.assert_allclose(a.times_s, [0.0, 0.1])  # null masks -> absent
    np.testing.assert_allclose(b.times_s, [0.1, 0.2, 0.3])
    # tight boxes equal geometry.mask_to_xyxy: rows 1..2, cols 1..3 -> [1, 1, 4, 3]
    np.testing.assert_allclose(a.xyxy, [mask_to_xyxy(m) for m in m_a])
    np.testing.assert_allclose(a.xyxy[0], [1, 1, 4, 3])
    assert a.masks_rle == tuple(mask_to_rle(m) for m in m_a)  # list RLE compressed
    assert both.span_s == pytest.approx((0.0, 0.3))  # earliest to latest over both targets
    assert left.span_s == pytest.approx((0.0, 0.1))
    assert len(problems) == 1 and problems[0].query_id == "2"


def test_mevis_valid_split_has_no_gt_and_train_needs_masks(tmp_path):
    for split in ("valid", "train"):
        write_jpegs(tmp_path / split / "JPEGImages" / "v", ["00000", "00001", "00002"])
        write_json(tmp_path / split / "meta_expressions.json", {"videos": {"v": {
            "frames": ["00000", "00001", "00002"], "expressions": {"0": {"exp": "it"}}}}})  # fmt: skip
    (r,) = list(get_adapter("mevis")(tmp_path, "valid"))  # default 6 fps
    (q,) = r.queries
    assert q.gt == () and q.span_s == pytest.approx((0.0, 2 / 6))
    with pytest.raises(DatasetNotFoundError, match=r"mask_dict\.json"):
        get_adapter("mevis")(tmp_path, "train")


# ------------------------------------------------------------------ Ref-YouTube-VOS


def test_refytvos_string_obj_id_palette_pngs_step_five(tmp_path):
    names = ["00000", "00005", "00010"]
    write_jpegs(tmp_path / "train" / "JPEGImages" / "abc", names)
    ann = tmp_path / "train" / "Annotations" / "abc"
    ann.mkdir(parents=True)
    for k, n in enumerate(names):
        ids = np.zeros((8, 10), np.uint8)
        ids[0:2, 0:3] = 1  # object 1 in every frame
        if k > 0:
            ids[4:8, 5 : 5 + k] = 2  # object 2 from the second frame, growing
        img = Image.fromarray(ids, mode="P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        img.save(ann / f"{n}.png")
    write_json(tmp_path / "meta_expressions" / "train" / "meta_expressions.json", {"videos": {
        "abc": {"frames": names, "expressions": {"0": {"exp": "a cat", "obj_id": "1"},
                                                 "1": {"exp": "a dog", "obj_id": "2"}}}}})  # fmt: skip
    (r,) = list(get_adapter("refytvos")(tmp_path, "train"))  # default fps 30
    cat, dog = r.queries
    assert cat.gt[0].object == 1 and dog.gt[0].object == 2
    # frame names step by 5 at 30 fps: 0, 5/30, 10/30 s
    np.testing.assert_allclose(cat.gt[0].times_s, [0, 5 / 30, 10 / 30], rtol=1e-6)
    np.testing.assert_allclose(dog.gt[0].times_s, [5 / 30, 10 / 30], rtol=1e-6)
    np.testing.assert_allclose(dog.gt[0].xyxy, [[5, 4, 6, 8], [5, 4, 7, 8]])
    assert dog.span_s == pytest.approx((5 / 30, 10 / 30))
    mask = box_mask(8, 10, 5, 4, 7, 8)
    assert dog.gt[0].masks_rle[1] == mask_to_rle(mask)
    assert (r.width, r.height) == (10, 8)


# ------------------------------------------------------------------ folder


def test_folder_videos_and_jpeg_folders(tmp_path):
    write_video(tmp_path / "a.mp4", 5, fps=5)
    write_jpegs(tmp_path / "sub" / "frames", ["00000", "00001"])
    (tmp_path / "notes.txt").write_text("ignored")
    recs = list(get_adapter("folder")(tmp_path, "anything"))
    assert [(r.video_id, r.fps, r.queries) for r in recs] == [
        ("a", 5.0, ()),
        ("sub/frames", 30.0, ()),
    ]
    assert recs[1].frame_files == ("00000.jpg", "00001.jpg")
    (one,) = list(get_adapter("folder")(tmp_path / "a.mp4", "x"))  # a single video
    assert (one.video_id, one.source) == ("a", tmp_path / "a.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no videos"):
        get_adapter("folder")(tmp_path / "empty", "x")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("fmt", sorted(ADAPTERS))
def test_missing_root_fails_at_once_saying_what_to_get(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="nowhere") as info:
        ADAPTERS[fmt](missing, "train")  # at the call, before any iteration
    assert isinstance(info.value, FileNotFoundError)


def test_malformed_annotations(tmp_path):
    (tmp_path / "video").mkdir()
    write_json(tmp_path / "anno" / "train.json", ["not", "a", "dict"])
    with pytest.raises(AnnotationError, match=r"train\.json.*dict"):
        get_adapter("hcstvg1")(tmp_path, "train")
    (tmp_path / "anno" / "train.json").write_text("{broken")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        get_adapter("hcstvg1")(tmp_path, "train")
    bad = {
        "v.mp4": {"bbox": [[0, 0, 1, 1]], "st_frame": 0, "st_time": 0, "ed_time": 1, "caption": "c"}
    }
    write_json(tmp_path / "anno" / "train.json", bad)
    with pytest.warns(AnnotationWarning, match="st_frame"):
        assert list(get_adapter("hcstvg1")(tmp_path, "train")) == []
    with pytest.raises(AnnotationError, match=r"train\.json: video 'v\.mp4'.*st_frame"):
        list(get_adapter("hcstvg1")(tmp_path, "train", on_error=raise_problem))
    (tmp_path / "m" / "train" / "JPEGImages").mkdir(parents=True)
    write_json(tmp_path / "m" / "train" / "meta_expressions.json", {"vids": {}})
    write_json(tmp_path / "m" / "train" / "mask_dict.json", {})
    with pytest.raises(AnnotationError, match="'videos'"):
        get_adapter("mevis")(tmp_path / "m", "train")


# ------------------------------------------------------------------ registry


def test_shipped_registry_loads():
    specs = load_specs()
    assert {s.format for s in specs.values()} <= set(ADAPTERS)
    assert specs["synthetic"].format == "hcstvg1" and specs["synthetic"].splits == ("train", "test")
    assert specs["synthetic-mevis"].format == "mevis" and specs["synthetic-mevis"].fps == 10
    assert specs["refytvos"].fps == 30


def test_iter_records_checks_split_resolves_root_and_limits(tmp_path):
    spec = DatasetSpec("tiny", "hcstvg1", tmp_path, ("train",), download="get it from X")
    entry = {"bbox": [[0, 0, 1, 1]], "st_frame": 1, "st_time": 0, "ed_time": 1, "caption": "c"}
    write_json(tmp_path / "anno" / "train.json", {f"v{i}.mp4": entry for i in range(3)})
    (tmp_path / "video").mkdir()
    assert [r.video_id for r in iter_records(spec, "train", limit=2)] == ["v0", "v1"]
    assert all(r.dataset == "tiny" for r in iter_records(spec, "train"))
    with pytest.raises(ValueError, match="known splits: train"):
        iter_records(spec, "val")
    rel = DatasetSpec(
        "rel", "mevis", Path("data/raw/__absent__"), ("train",), download="get it from Y"
    )
    with pytest.raises(DatasetNotFoundError, match="get it from Y") as info:
        iter_records(rel, "train")
    assert str(REPO_ROOT / "data" / "raw" / "__absent__") in str(info.value)
    with pytest.raises(ValueError, match="unknown format"):
        DatasetSpec("bad", "nope", tmp_path, ("train",))


def test_synthetic_dataset_reads_through_the_real_adapters(tmp_path):
    synthetic = pytest.importorskip("pipeline.synthetic")
    synthetic.generate(tmp_path, num_train=2, num_test=1, duration_s=3.0,
                       formats=("mevis", "hcstvg"), progress=False)  # fmt: skip
    truth = json.loads((tmp_path / "mevis" / "train" / "synthetic_truth.json").read_text())
    hc = list(iter_records("synthetic", "train", root=tmp_path / "hcstvg", on_error=raise_problem))
    me = list(
        iter_records("synthetic-mevis", "train", root=tmp_path / "mevis", on_error=raise_problem)
    )
    assert [r.video_id for r in hc] == [r.video_id for r in me] and len(hc) == 2
    for h, m in zip(hc, me):
        t = truth["videos"][h.video_id]
        exp = t["expressions"][t["hcstvg_exp_id"]]
        (q,) = h.queries
        # the HC-STVG copy states the same span and first box time as the truth file
        assert q.span_s == pytest.approx((exp["start_s"], exp["end_s"]))
        assert q.gt[0].times_s[0] == pytest.approx(exp["start_frame"] / t["fps"])
        # every ground-truth time is the time of a decoded frame (both adapters)
        video_times = [f.time_s for f in iter_frames(h)]
        jpeg_times = [f.time_s for f in iter_frames(m)]
        np.testing.assert_allclose(video_times, jpeg_times, atol=1e-6)
        for rec_ in (h, m):
            for query in rec_.queries:
                for g in query.gt:
                    gap = np.abs(g.times_s[:, None] - np.array(video_times)[None]).min(1)
                    assert gap.max() < 1e-5  # float32 storage of exact frame times
        assert [q.gt and [g.object for g in q.gt] for q in m.queries] == [
            e["obj_id"] for e in t["expressions"].values()
        ]


def test_refytvos_clip_starting_late_is_timed_from_its_first_frame(tmp_path):
    names = ["00110", "00115", "00120"]
    write_jpegs(tmp_path / "valid" / "JPEGImages" / "late", names)
    write_json(tmp_path / "meta_expressions" / "valid" / "meta_expressions.json", {"videos": {
        "late": {"frames": names, "expressions": {"0": {"exp": "a cat"}}}}})  # fmt: skip
    (r,) = list(get_adapter("refytvos")(tmp_path, "valid"))
    assert r.queries[0].span_s == pytest.approx((0.0, 10 / 30))  # not (110 / 30, 120 / 30)
    from pipeline.decode import iter_frames

    assert [round(f.time_s, 4) for f in iter_frames(r)] == [
        0.0,
        round(5 / 30, 4),
        round(10 / 30, 4),
    ]


def test_checks_drop_nan_inverted_and_outside_boxes_and_clip_the_rest():
    from pipeline.adapters.checks import check_query
    from pipeline.records import GTObject, QueryRecord

    boxes = [[1, 1, 5, 5], [np.nan] * 4, [6, 1, 2, 5], [-3, 2, 4, 20], [30, 30, 40, 40]]
    gt = GTObject(0, [0.0, 0.1, 0.2, 0.3, 0.4], boxes, ("a", "b", "c", "d", "e"))
    q = QueryRecord("0", "x", "referring", (0.0, 1.0), (gt,))
    cleaned, counts, reason = check_query(q, (10, 10), fps=10.0)  # frame 10x10
    assert counts == {
        "boxes": 5,
        "nan": 1,
        "inverted": 1,
        "outside": 1,
        "clipped": 1,
        "empty_objects": 0,
        "short_frames": 6,
    }  # fmt: skip  (0.4 .. 0.9 s)
    g = cleaned.gt[0]
    assert g.xyxy.tolist() == [[1, 1, 5, 5], [0, 2, 4, 10]] and g.masks_rle == ("a", "d")
    assert "1 nan" in reason and "6 frames before the span's end" in reason
    none, _, why = check_query(
        QueryRecord("1", "y", "referring", (0.0, 0.1), (GTObject(0, [0.0], [[np.nan] * 4]),)),
        (10, 10), fps=10.0,
    )  # fmt: skip
    assert none is None and why.startswith("no valid box")


def test_checks_drop_zero_area_boxes_and_objects_with_no_box():
    """A zero-area box is dropped as inverted whether the frame size is known or not; an
    object with no box at all is dropped and counted, and a query left with nothing is
    skipped with the reason (no error that would stop the run)."""
    from pipeline.adapters.checks import check_boxes, check_query
    from pipeline.records import GTObject, QueryRecord

    boxes = np.array([[1, 1, 5, 5], [3, 1, 3, 5], [1, 4, 5, 4]], float)  # 2nd, 3rd: no area
    for size in ((10, 10), None):
        keep, _, counts = check_boxes(boxes, size)
        assert keep.tolist() == [True, False, False], size
        assert (counts["inverted"], counts["outside"]) == (2, 0), size

    empty = GTObject(7, np.zeros(0), np.zeros((0, 4)))
    good = GTObject(1, [0.0, 0.1], [[1, 1, 5, 5], [2, 2, 6, 6]])
    q = QueryRecord("0", "x", "referring", (0.0, 0.1), (empty, good))
    cleaned, counts, reason = check_query(q, (10, 10), fps=10.0)
    assert [g.object for g in cleaned.gt] == [1]
    assert counts["empty_objects"] == 1 and "1 object with no box" in reason
    nan = GTObject(2, [0.0], [[np.nan] * 4])
    none, counts, why = check_query(
        QueryRecord("1", "y", "referring", (0.0, 0.1), (empty, nan)), (10, 10), fps=10.0
    )
    assert none is None and why.startswith("no valid box") and counts["empty_objects"] == 1


def test_mevis_object_with_empty_masks_in_every_frame_is_dropped_and_reported(tmp_path):
    h, w = 8, 10
    split = tmp_path / "train"
    write_jpegs(split / "JPEGImages" / "vid1", ["00000", "00001"], w, h)
    full = {"size": [h, w], "counts": mask_to_rle(box_mask(h, w, 1, 1, 4, 3))}
    blank = {"size": [h, w], "counts": mask_to_rle(np.zeros((h, w), bool))}
    write_json(split / "mask_dict.json", {"10": [full, full], "12": [blank, None]})
    write_json(split / "meta_expressions.json", {"videos": {"vid1": {
        "frames": ["00000", "00001"],
        "expressions": {"0": {"exp": "the square", "obj_id": [1, 3], "anno_id": [10, 12]}},
    }}})  # fmt: skip
    spec = DatasetSpec("m", "mevis", tmp_path, ("train",), download="-")
    problems: list[AnnotationProblem] = []
    (r,) = list(iter_records(spec, "train", on_error=problems.append))
    assert [g.object for g in r.queries[0].gt] == [1]
    (p,) = problems
    assert not p.skipped and p.counts["empty_objects"] == 1
