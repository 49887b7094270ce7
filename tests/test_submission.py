"""Benchmark submission files: a MeViS-format zip written for synthetic MeViS shards and read
back, masks from track masks at the native size, and the HC-STVG/VidSTG box JSON."""

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import mask_to_rle
from pipeline.records import QueryRecord, Track, VideoRecord
from pipeline.shards import ShardVideo
from trainer.evaluate import evaluate, main
from trainer.submission import predicted_mask, write_submission


@pytest.fixture(scope="module")
def mevis_valid(tmp_path_factory, detection_only_weights):
    """Synthetic MeViS data laid out as MeViS ``valid`` (frames and expressions, no masks:
    scored by the server) and its shards, made by the real preprocessing with a
    detection-only checkpoint (tracks without masks: the filled-box fallback), and
    ``seg_shards`` made with the committed segmentation detector (tracks with masks)."""
    from pipeline.adapters.mevis import iter_videos
    from pipeline.config import PreprocessConfig
    from pipeline.preprocess import run
    from pipeline.synthetic import generate

    root = tmp_path_factory.mktemp("mevis_sub")
    generate(root / "raw", num_train=1, num_test=2, det_train=0, det_val=0, duration_s=2.0,
             formats=("mevis",), progress=False, seed=5)  # fmt: skip
    mevis = root / "raw" / "mevis"
    shutil.copytree(mevis / "valid_u", mevis / "valid", ignore=shutil.ignore_patterns("mask*"))
    records = list(iter_videos(mevis, "valid", fps=10, dataset="synthetic-mevis"))
    assert records and all(not q.gt for r in records for q in r.queries)  # nothing to score
    run(records, root / "shards", PreprocessConfig(weights=str(detection_only_weights)),
        progress=False)  # fmt: skip
    run(records, root / "seg_shards", PreprocessConfig(), progress=False)
    return {"root": root, "mevis": mevis, "records": records, "shards": root / "shards",
            "seg_shards": root / "seg_shards"}  # fmt: skip


def read_back(zip_path, records):
    """{member: (H, W) bool} after checking every expression of every video is present,
    with one PNG per frame at the frame's size."""
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        expected = set()
        masks = {}
        for rec in records:
            with Image.open(rec.source / rec.frame_files[0]) as im:
                size = im.size
            for q in rec.queries:
                for f in rec.frame_files:
                    member = f"Annotations/{rec.video_id}/{q.query_id}/{f.rsplit('.', 1)[0]}.png"
                    expected.add(member)
                    img = Image.open(io.BytesIO(zf.read(member)))
                    assert img.size == size, member  # the frame's own size
                    masks[member] = np.asarray(img) > 0
    assert names == expected  # every expression of every video, nothing else
    return masks


def test_mevis_submission_reads_back(mevis_valid, tmp_path):
    out = tmp_path / "sub.zip"
    records = mevis_valid["records"]
    with pytest.warns(UserWarning, match="boxes, filled"):  # a detection checkpoint: no masks
        s = evaluate("largest", mevis_valid["shards"], tmp_path / "eval", progress=False,
                     submission={"path": out, "records": records})  # fmt: skip
    assert s["submission"] == str(out) and s["n_queries"] == 0  # nothing scored locally
    assert s["n_skipped_no_gt"] == sum(len(r.queries) for r in records)
    masks = read_back(out, records)
    assert sum(m.any() for m in masks.values()) > 0  # the largest track is drawn
    assert (tmp_path / "eval" / "predictions.jsonl").read_text() == ""  # nothing scored
    # a filled box is the chosen track's box: check one frame of each video's first query
    from pipeline.shards import read_videos
    from trainer.evaluate import baseline_answer

    for video in read_videos(mevis_valid["shards"]):
        rec = next(r for r in records if r.video_id == video.video_id)
        (tid,), _ = baseline_answer("largest", video, video.queries[0], None)
        tr = video.track(tid)
        t = float(tr.times_s[len(tr.times_s) // 2])
        x1, y1, x2, y2 = (round(float(v)) for v in tr.boxes_at(np.array([t]), 0.5)[0])
        k = round(t * rec.fps)
        m = masks[f"Annotations/{rec.video_id}/{video.queries[0].query_id}/{k:05d}.png"]
        ys, xs = np.nonzero(m)  # stored and native sizes are equal here (320 x 240)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


def test_mevis_submission_uses_the_predicted_masks(mevis_valid, tmp_path):
    """With the committed segmentation detector the PNGs are the chosen track's masks
    (native and stored sizes are equal here), and no filled-box warning is given."""
    import warnings

    from pipeline.geometry import rle_to_mask
    from pipeline.shards import read_videos
    from trainer.evaluate import baseline_answer

    out, records = tmp_path / "sub.zip", mevis_valid["records"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*boxes, filled.*")
        evaluate("largest", mevis_valid["seg_shards"], tmp_path / "eval", progress=False,
                 submission={"path": out, "records": records})  # fmt: skip
    masks = read_back(out, records)
    checked = 0
    for video in read_videos(mevis_valid["seg_shards"]):
        rec = next(r for r in records if r.video_id == video.video_id)
        (tid,), _ = baseline_answer("largest", video, video.queries[0], None)
        tr = video.track(tid)
        i = next(j for j, m in enumerate(tr.masks_rle) if m is not None)
        k = round(float(tr.times_s[i]) * rec.fps)
        got = masks[f"Annotations/{rec.video_id}/{video.queries[0].query_id}/{k:05d}.png"]
        want = rle_to_mask(tr.masks_rle[i], video.height, video.width)
        assert (got == want).all() and want.any()
        checked += 1
    assert checked == len(records)


def test_cli_export_submission(mevis_valid, tmp_path, capsys):
    out = tmp_path / "cli.zip"
    # the registered split with the same videos and expressions (valid_u, whose masks the
    # answers do not use) gives the frame names, sizes and the list of expressions
    with pytest.warns(UserWarning, match="boxes, filled"):
        main(["--model", "largest", "--shards", str(mevis_valid["shards"]), "--dataset",
              "synthetic-mevis", "--split", "valid_u", "--raw-root", str(mevis_valid["mevis"]),
              "--out", str(tmp_path / "o"), "--export-submission", str(out),
              "--no-progress"])  # fmt: skip
    assert "wrote " + str(out) in capsys.readouterr().out
    read_back(out, mevis_valid["records"])
    with pytest.raises(SystemExit, match=r"submissions are mask PNGs: name the file \*\.zip"):
        main(["--model", "largest", "--shards", str(mevis_valid["shards"]), "--dataset",
              "synthetic-mevis", "--split", "valid_u", "--raw-root", str(mevis_valid["mevis"]),
              "--export-submission", str(tmp_path / "sub.json")])  # fmt: skip
    with pytest.raises(SystemExit, match="needs the raw synthetic-mevis/nope"):
        main(["--model", "largest", "--shards", str(mevis_valid["shards"]), "--dataset",
              "synthetic-mevis", "--split", "nope", "--export-submission", str(out)])  # fmt: skip


def test_masks_come_from_track_masks_at_the_native_size():
    # stored 20 x 20; the native frames are 40 x 40: the 10 x 10 square becomes 20 x 20
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    tr = Track(1, "shape", [0.0, 0.5], np.float32([[5, 5, 15, 15]] * 2), (mask_to_rle(m),) * 2)
    video = ShardVideo("v", "mevis", "valid", 20, 20, 2.0, 2.0, 2.0, np.float32([0, 0.5]),
                       (b"", b""), (tr,), ())  # fmt: skip
    big = predicted_mask(video, [1], (0.0, 0.5), 0.5, (40, 40), 0.5)
    assert big.sum() == 400 and big[10:30, 10:30].all()
    assert not predicted_mask(video, [1], (0.0, 0.4), 0.5, (40, 40), 0.5).any()  # past the span
    assert not predicted_mask(video, [2], (0.0, 0.5), 0.5, (40, 40), 0.5).any()  # no such track


def test_box_json_for_video_datasets(tmp_path):
    # a VidSTG-like clip starting at native frame 30 of its video, 10 fps, native 128 x 128,
    # stored at 64 x 64: boxes double; the span (0.25, 0.6) holds frames 3, 4, 5 (t = k / 10)
    tr = Track(1, "person", np.arange(10) / 10, np.float32([[10, 10, 20, 20]] * 10))
    video = ShardVideo("v_30_40", "vidstg", "test", 64, 64, 2.0, 10.0, 10.0,
                       np.float32([0, 0.5]), (b"", b""), (tr,), ())  # fmt: skip
    q = QueryRecord("7-d0", "a man", "declarative", (0.0, 1.0))
    rec = VideoRecord("v_30_40", "vidstg", "test", tmp_path / "v.mp4", 10.0, 128, 128,
                      queries=(q, QueryRecord("7-i0", "who?", "interrogative", (0, 1))),
                      clip_start_s=3.0, clip_end_s=4.0)  # fmt: skip
    with pytest.warns(UserWarning, match="1 queries of the split have no answer"):
        path = write_submission(tmp_path / "pred.json", [rec], [(video, q)],
                                [((1,), (0.25, 0.6), None, None)], max_gap_s=0.5)  # fmt: skip
    got = json.loads(path.read_text())["videos"]["v_30_40"]
    assert (got["source"], got["frame_offset"], got["width"]) == ("v.mp4", 30, 128)
    d0 = got["queries"]["7-d0"]
    assert d0["ids"] == [1] and d0["span_s"] == [0.25, 0.6] and d0["span_frames"] == [33, 36]
    assert d0["boxes"] == {str(f): [20.0, 20.0, 40.0, 40.0] for f in (33, 34, 35)}
    # a query that was not answered is present, empty
    assert got["queries"]["7-i0"] == {"ids": [], "span_s": None, "span_frames": None, "boxes": {}}
    with pytest.raises(ValueError, match=r"name the file \*\.json"):
        write_submission(tmp_path / "pred.zip", [rec], [], [], max_gap_s=0.5)
