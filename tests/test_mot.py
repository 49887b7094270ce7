"""MOT metrics (pipeline/mot.py): hand-made counts against motmetrics, sums over videos,
the ground truth on the frames the pipeline processed, and the manifest's ``tracking``
block from a preprocessing run of a small harder synthetic split."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.mot import (
    COUNT_FIELDS,
    MotGroundTruthError,
    accumulate,
    gt_on_frames,
    mot_counts,
    read_mot_gt,
    scores,
    sum_counts,
    tracks_on_frames,
    true_ids_on_detections,
)
from pipeline.records import Track

# one object for 10 frames; the hypothesis box is the ground truth's (IoU 1)
BOX = {k: np.array([10.0 + k, 20, 40.0 + k, 50]) for k in range(10)}
GT = {k: [(1, BOX[k])] for k in range(10)}


def _motmetrics(accs, metrics):
    import motmetrics as mm

    df = mm.metrics.create().compute_many(
        accs, metrics=metrics, names=[f"v{i}" for i in range(len(accs))], generate_overall=True
    )
    return {m: float(df.loc["OVERALL", m]) for m in metrics}


def test_an_id_switch_is_counted_as_motmetrics_counts_it():
    switched = {k: [(7 if k < 5 else 8, BOX[k])] for k in range(10)}
    counts = mot_counts(accumulate(GT, switched, 10))
    # 10 ground-truth boxes, all covered; the hypothesis ID changes once (frame 5): that
    # frame is a SWITCH, the other 9 are MATCHes. The best one-to-one ID assignment gives
    # object 1 to ID 7 (5 frames): IDTP 5, IDFN 5 (frames 5-9), IDFP 5 (ID 8's frames).
    assert counts == dict(num_frames=10, num_objects=10, num_matches=9, num_false_positives=0,
                          num_misses=0, num_switches=1, num_fragmentations=0,
                          idtp=5, idfp=5, idfn=5)  # fmt: skip
    # IDF1 = 2*5 / (2*5 + 5 + 5) = 0.5; MOTA = 1 - (0 + 0 + 1) / 10 = 0.9
    assert scores(counts) == {"idf1": pytest.approx(0.5), "mota": pytest.approx(0.9)}
    want = _motmetrics([accumulate(GT, switched, 10)], ["idf1", "mota"])
    assert scores(counts) == {k: pytest.approx(v) for k, v in want.items()}


def test_a_gap_is_a_fragmentation_and_a_far_box_a_miss():
    gap = {k: [] if k in (3, 4) else [(7, BOX[k])] for k in range(10)}
    counts = mot_counts(accumulate(GT, gap, 10))
    # frames 3-4 missed, the same ID after: 1 fragmentation, 0 switches, IDTP 8, IDFN 2
    assert (counts["num_misses"], counts["num_fragmentations"], counts["num_switches"]) == (2, 1, 0)
    assert (counts["idtp"], counts["idfn"], counts["idfp"]) == (8, 2, 0)
    # shifted 20 px: IoU (30-20)*30 / (2*900 - 300) = 0.2 < 0.5, a miss and a false positive
    far = {k: [(7, BOX[k] + [20, 0, 20, 0])] for k in range(10)}
    counts = mot_counts(accumulate(GT, far, 10))
    assert (counts["num_matches"], counts["num_misses"], counts["num_false_positives"]) == (
        0,
        10,
        10,
    )
    assert scores(counts)["idf1"] == 0.0


def test_counts_summed_over_videos_score_as_motmetrics_overall():
    rng = np.random.default_rng(0)
    accs, counts = [], []
    for _ in range(2):  # two videos: three objects, noisy boxes, IDs that swap and vanish
        gt = {k: [(i, BOX[k] + [60.0 * i, 0, 60.0 * i, 0]) for i in range(3)] for k in range(10)}
        hyp = {}
        for k in range(10):
            hyp[k] = [
                (int(rng.integers(1, 5)), b + rng.normal(0, 4, 4))
                for _, b in gt[k]
                if rng.random() > 0.2
            ]
            hyp[k] = list({i: (i, b) for i, b in hyp[k]}.values())  # one box per ID
        accs.append(accumulate(gt, hyp, 10))
        counts.append(mot_counts(accs[-1]))
    total = sum_counts(counts)
    metrics = ["idf1", "mota", *COUNT_FIELDS]
    want = _motmetrics(accs, metrics)
    assert total["num_switches"] > 0 and total["num_misses"] > 0  # the case is not trivial
    assert {k: float(v) for k, v in total.items()} == {k: want[k] for k in COUNT_FIELDS}
    got = scores(total)
    assert got["idf1"] == pytest.approx(want["idf1"]) and got["mota"] == pytest.approx(want["mota"])
    assert scores(sum_counts([])) == {"idf1": None, "mota": None}  # nothing scored: no NaN
    with pytest.raises(ValueError, match="miss"):
        sum_counts([{"idtp": 1}])


def test_true_ids_on_detections_score_what_no_identity_error_can_beat():
    import supervision as sv

    # two objects 60 px apart for 10 frames; the detector finds both except object 2 in
    # frames 3-4, adds a false box far from both in frame 6, and gives object 1 a box
    # shifted 20 px (IoU 0.2, no match) in frame 8
    gt = {k: [(1, BOX[k]), (2, BOX[k] + [60, 0, 60, 0])] for k in range(10)}
    dets = []
    for k in range(10):
        boxes = [BOX[k] + [60, 0, 60, 0]] if k not in (3, 4) else []
        boxes.insert(0, BOX[k] + ([20, 0, 20, 0] if k == 8 else 0))
        if k == 6:
            boxes.append(np.array([200.0, 200, 230, 230]))
        dets.append(sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4)))
    hyp = true_ids_on_detections(gt, dets)
    assert [len(hyp[k]) for k in range(10)] == [2, 2, 2, 1, 1, 2, 2, 2, 1, 2]
    assert all(i == j for k in hyp for (i, b) in hyp[k] for j, g in gt[k] if np.allclose(b, g))
    counts = mot_counts(accumulate(gt, hyp, 10))
    # 20 boxes, 3 missed (frames 3-4 of object 2, frame 8 of object 1), no switch:
    # IDTP 17, IDFN 3, IDFP 0 (unmatched detections are left out): IDF1 34/37
    assert (counts["idtp"], counts["idfn"], counts["idfp"], counts["num_switches"]) == (17, 3, 0, 0)
    assert scores(counts)["idf1"] == pytest.approx(34 / 37)
    # a tracker that swaps the two IDs halfway does worse on the same detections
    swapped = {k: [(3 - i if k >= 5 else i, b) for i, b in hyp[k]] for k in range(10)}
    assert scores(mot_counts(accumulate(gt, swapped, 10)))["idf1"] < 34 / 37


def test_gt_file_is_read_as_written(tmp_path):
    path = tmp_path / "v.gt.txt"
    path.write_text("1,1,10,20,30,40,1,-1,-1,-1\n2,3,1,2,3,4,1,-1,-1,-1\n2,4,1,2,3,4,0,-1,-1,-1\n")
    gt = read_mot_gt(path)
    assert sorted(gt) == [0, 1] and [i for i, _ in gt[1]] == [3]  # id 4's row is flagged 0
    np.testing.assert_array_equal(gt[0][0][1], [10, 20, 40, 60])  # xywh -> xyxy


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,1,10,20\n", "v.gt.txt:1: expected"),
        ("1,1,a,20,30,40\n", "v.gt.txt:1: expected"),
        ("1,1,1,1,1,1\n0,1,1,1,1,1\n", "v.gt.txt:2: frames count from 1"),
        ("1,1,1,1,-3,1\n", "size -3x1"),
        ("1,1,1,1,1,1\n1,1,5,5,1,1\n", "id 1 twice in frame 1"),
    ],
)
def test_a_bad_gt_file_is_refused_with_its_line(tmp_path, text, message):
    (tmp_path / "v.gt.txt").write_text(text)
    with pytest.raises(MotGroundTruthError, match=message):
        read_mot_gt(tmp_path / "v.gt.txt")


def test_ground_truth_on_subsampled_and_resized_frames():
    # native 10 fps, 320x240; the pipeline tracked at 5 fps (frames 0, 2, 4) at 160x120
    gt = {k: [(1, np.array([100.0 + k, 40, 140 + k, 80]))] for k in range(6)}
    on = gt_on_frames(gt, [0.0, 0.2, 0.4], native_fps=10.0, scale_xy=(0.5, 0.5))
    assert sorted(on) == [0, 1, 2]
    np.testing.assert_allclose(on[1][0][1], [51, 20, 71, 40])  # native frame 2, halved
    # a clip that starts 0.3 s into the video: its frame at 0 s is native frame 3
    on = gt_on_frames(gt, [0.0, 0.2], native_fps=10.0, clip_start_s=0.3)
    np.testing.assert_allclose(on[0][0][1], [103, 40, 143, 80])
    np.testing.assert_allclose(on[1][0][1], [105, 40, 145, 80])
    assert gt_on_frames(gt, [0.8], native_fps=10.0) == {0: []}  # native frame 8: no box


def test_tracks_land_on_the_frame_of_their_time():
    times = [0.0, 0.2, 0.4, 0.6]
    a = Track(1, "circle", [0.0, 0.2, 0.4], [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]])
    b = Track(2, "square", [0.2000001, 0.9], [[5, 5, 9, 9], [6, 6, 9, 9]])  # 0.9: no frame
    on = tracks_on_frames([a, b], times)
    assert {k: [i for i, _ in v] for k, v in on.items()} == {0: [1], 1: [1, 2], 2: [1], 3: []}
    np.testing.assert_array_equal(on[2][0][1], [2, 2, 6, 6])


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def hard_split(tmp_path_factory):
    """One video of each kind of the harder split (MOTChallenge gt.txt beside each mp4),
    and a JPEG folder without ground truth."""
    import cv2

    from pipeline.synthetic.hard import write_hard_split

    root = tmp_path_factory.mktemp("hard")
    write_hard_split(root, seed=0, per_kind=1)
    (root / "clip").mkdir()
    for i in range(3):
        cv2.imwrite(str(root / "clip" / f"{i:05d}.jpg"), np.full((48, 64, 3), 90, np.uint8))
    return root


def test_folder_records_carry_the_gt_file_beside_a_video(hard_split):
    from pipeline.adapters.folder import SyntheticDetectorError, check_weights, iter_videos

    records = {r.video_id: r for r in iter_videos(hard_split)}
    assert records["crowd_000"].mot_gt == hard_split / "crowd_000.gt.txt"
    assert records["clip"].mot_gt is None  # JPEG folders carry none
    # the split's names are no synthetic-set names: the detector must be asked for by name
    with pytest.raises(SyntheticDetectorError):
        check_weights(None, "crowd_000")
    check_weights("synthetic", "crowd_000")


def test_processor_scores_the_tracked_frames_in_the_stored_size(hard_split):
    from pipeline.adapters.folder import iter_videos
    from pipeline.config import PreprocessConfig
    from pipeline.processor import VideoProcessor

    (record,) = [r for r in iter_videos(hard_split) if r.video_id == "crossing_000"]
    gt = read_mot_gt(record.mot_gt)
    native, _ = VideoProcessor(PreprocessConfig(weights="synthetic"))(record)
    assert native["width"] == 320  # 320x240 at 10 fps: every frame, native size
    assert native["mot"]["pipeline"]["num_frames"] == 100
    assert native["mot"]["bytetrack"]["num_objects"] == sum(len(v) for v in gt.values())
    # at 5 fps and 160x120: native frames 0, 2, 4, ... with their boxes halved
    small, _ = VideoProcessor(PreprocessConfig(weights="synthetic", track_fps=5, max_side=160))(
        record
    )
    assert (small["width"], small["height"]) == (160, 120)
    for name in ("bytetrack", "pipeline"):
        counts = small["mot"][name]
        assert counts["num_frames"] == 50
        assert counts["num_objects"] == sum(len(gt.get(k, [])) for k in range(0, 100, 2))
        # unscaled ground truth would overlap no stored box: IDF1 near 0
        assert scores(counts)["idf1"] > 0.8, (name, counts)


def test_rows_without_the_mot_column_read_as_before(tmp_path):
    """A part file of output version 3 (no ``mot`` column): readers give ``mot`` None and
    the folder's tracking block is None."""
    from pipeline.output import summarize_shards, summarize_tracking
    from pipeline.shards import SCHEMA, make_row, read_videos

    row = make_row(video_id="v0", dataset="folder", split="all", width=8, height=8, out_fps=2,
                   track_fps=10, native_fps=10, frame_times_s=[0.0], frames=[b""], tracks=[],
                   queries=[])  # fmt: skip
    assert row["mot"] is None
    old = pa.schema([f for f in SCHEMA if f.name != "mot"])
    del row["mot"]
    pq.write_table(
        pa.Table.from_pylist([row], schema=old), tmp_path / "part-000of001-00000.parquet"
    )
    assert [v.mot for v in read_videos(tmp_path)] == [None]
    assert summarize_tracking(tmp_path) is None
    assert summarize_shards(tmp_path, 0.5)["videos"] == 1
    with pytest.raises(ValueError, match="mot must map"):
        make_row(**{**row, "frames": [b""], "mot": {"pipeline": {"idtp": 1}}})


def test_preprocess_writes_the_tracking_block_and_keeps_it_on_resume(hard_split, tmp_path, capsys):
    from pipeline.mot import TRACKERS
    from pipeline.preprocess import main
    from pipeline.shards import read_videos
    from pipeline.views.summary import folder_summary, format_summary

    out = tmp_path / "out"
    args = ["--dataset", "folder", "--root", str(hard_split), "--out", str(out),
            "--weights", "synthetic", "--no-progress"]  # fmt: skip
    assert main([*args, "--limit", "2"]) == 0
    first = json.loads((out / "_manifest.json").read_text())["tracking"]
    assert first["videos"] == 2
    n_gt = len(json.loads((hard_split / "summary.json").read_text())["videos"])
    assert main(args) == 0  # resumes: the other videos (one of them the JPEG folder)
    printed = capsys.readouterr().out
    assert f"{n_gt + 1} videos, 0 queries, no query with ground truth, failed 0" in printed
    manifest = json.loads((out / "_manifest.json").read_text())
    block = manifest["tracking"]
    assert block["videos"] == n_gt and manifest["counts"]["videos"] == n_gt + 1
    # the block is the sum of the rows' counts, each video once
    videos = list(read_videos(out))
    assert [v.mot is None for v in videos].count(True) == 1  # the JPEG folder
    for name in TRACKERS:
        total = sum_counts(v.mot[name] for v in videos if v.mot is not None)
        assert block[name] == {**scores(total), **total}
    b, p = block["bytetrack"], block["pipeline"]
    assert p["num_switches"] <= b["num_switches"] and p["idf1"] >= b["idf1"]
    line = next(s for s in printed.splitlines() if s.startswith(f"tracking ({n_gt} videos"))
    assert f"ID switches {b['num_switches']} -> {p['num_switches']}" in line
    # the merged view recomputes the same block and shows the same line
    view = folder_summary(out)
    assert view["tracking"] == block
    assert line in format_summary(view).splitlines()


def test_a_gt_file_added_after_its_video_was_stored_is_reported(hard_split, tmp_path, capsys):
    import shutil

    from pipeline.preprocess import main

    root, out = tmp_path / "videos", tmp_path / "out"
    root.mkdir()
    shutil.copy(hard_split / "crossing_000.mp4", root)
    args = ["--dataset", "folder", "--root", str(root), "--out", str(out),
            "--weights", "synthetic", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "_manifest.json").read_text())["tracking_unscored"] == []
    capsys.readouterr()
    shutil.copy(hard_split / "crossing_000.gt.txt", root)  # the gt.txt comes later
    assert main(args) == 0  # the video is stored: skipped, and not scored
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["tracking"] is None and manifest["tracking_unscored"] == ["crossing_000"]
    printed = capsys.readouterr().out
    assert "1 stored video(s) have a gt.txt that was not there" in printed
    assert "(crossing_000); rerun with --overwrite to score them" in printed


def test_the_mot_column_reads_back_from_every_reader(tmp_path):
    import pandas as pd

    from pipeline.shards import make_row, row_to_video, write_shard

    counts = {name: i for i, name in enumerate(COUNT_FIELDS)}
    mot = {"bytetrack": counts, "pipeline": {**counts, "num_switches": 0}}
    row = make_row(video_id="v0", dataset="folder", split="all", width=8, height=8, out_fps=2,
                   track_fps=10, native_fps=10, frame_times_s=[0.0], frames=[b""], tracks=[],
                   queries=[], mot=mot)  # fmt: skip
    path = write_shard(tmp_path / "part-000of001-00000.parquet", [row])
    assert row_to_video(pq.read_table(path).to_pylist()[0]).mot == mot
    assert row_to_video(pd.read_parquet(path).iloc[0]).mot == mot
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert row_to_video(ds[0]).mot == mot


def test_a_malformed_gt_file_fails_its_video_with_the_line(hard_split, tmp_path):
    import shutil

    from pipeline.output import FAILURES
    from pipeline.preprocess import main

    root = tmp_path / "videos"
    root.mkdir()
    video = sorted(hard_split.glob("*.mp4"))[0]
    shutil.copyfile(video, root / video.name)
    (root / f"{video.stem}.gt.txt").write_text("1,1,10,10,5,5,1,-1,-1,-1\n2,1,ten,10,5,5\n")
    out = tmp_path / "out"
    args = ["--dataset", "folder", "--root", str(root), "--out", str(out),
            "--weights", "synthetic", "--no-progress"]  # fmt: skip
    assert main(args) == 0  # the run goes on; the video is recorded as failed
    (entry,) = [json.loads(x) for x in (out / FAILURES).read_text().splitlines()]
    assert entry["video_id"] == video.stem
    assert "MotGroundTruthError" in entry["reason"] and ".gt.txt:2:" in entry["reason"]
