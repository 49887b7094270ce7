import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import (
    ShardIndex,
    make_row,
    read_video_ids,
    read_videos,
    row_to_video,
    write_shard,
)


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _row(video_id: str, n_queries: int = 2) -> dict:
    track = Track(1, "circle", [0.0, 0.5], [[0, 0, 4, 4], [1, 1, 5, 5]], masks_rle=("abc", None))
    gt = GTObject(3, [0.0, 0.5], [[0, 0, 4, 4], [1, 1, 5, 5]])
    queries = [
        QueryRecord(f"q{i}", f"the circle {i}", "referring", (0.0, 0.5), (gt,), (1,), 0.9)
        for i in range(n_queries)
    ]
    return make_row(
        video_id=video_id,
        dataset="synthetic",
        split="train",
        width=12,
        height=8,
        out_fps=2.0,
        track_fps=10.0,
        native_fps=10.0,
        frame_times_s=[0.0, 0.5],
        frames=[_jpeg(10), _jpeg(200)],
        tracks=[track],
        queries=queries,
    )


def test_row_round_trip_through_parquet(tmp_path):
    rows = [_row("v0"), _row("v1", 1)]
    path = write_shard(tmp_path / "part-0.parquet", rows, row_group_size=1)
    videos = list(read_videos(tmp_path))
    assert [v.video_id for v in videos] == ["v0", "v1"]
    v = videos[0]
    assert v.tracks[0].masks_rle == ("abc", None)
    assert v.queries[1].target_ids == (1,)
    assert v.queries[0].gt[0].xyxy.tolist() == [[0, 0, 4, 4], [1, 1, 5, 5]]
    assert v.decode_frames().shape == (2, 8, 12, 3)
    assert row_to_video(rows[0]).video_id == "v0"
    # pandas and HF datasets both read the shard
    df = pd.read_parquet(path)
    assert list(df.video_id) == ["v0", "v1"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds[1]["queries"][0]["text"] == "the circle 0"


def test_index_reads_one_row_group(tmp_path):
    write_shard(tmp_path / "a.parquet", [_row("v0"), _row("v1", 3)], row_group_size=1)
    write_shard(tmp_path / "b.parquet", [_row("v2", 1)])
    index = ShardIndex(tmp_path)
    assert len(index) == 2 + 3 + 1
    video, query = index[4]
    assert (video.video_id, query.query_id) == ("v1", "q2")
    assert index.refs[4].row_group == 1
    assert read_video_ids(tmp_path) == {"v0", "v1", "v2"}


def test_mismatched_frames_and_times_rejected():
    row = _row("v0")
    with pytest.raises(ValueError, match="2 frames but 1 frame times"):
        make_row(**{**_kwargs(row), "frame_times_s": [0.0]})


def _kwargs(row):
    from pipeline.shards import row_to_video

    v = row_to_video(row)
    return dict(
        video_id=v.video_id,
        dataset=v.dataset,
        split=v.split,
        width=v.width,
        height=v.height,
        out_fps=v.out_fps,
        track_fps=v.track_fps,
        native_fps=v.native_fps,
        frame_times_s=v.frame_times_s,
        frames=v.frames,
        tracks=v.tracks,
        queries=v.queries,
    )


def test_kill_during_write_leaves_no_partial_shard(tmp_path):
    # A child writes a large shard and is killed with SIGKILL mid-write: the target file must
    # not exist afterwards (only a hidden temp file may remain, which readers ignore).
    script = textwrap.dedent(
        f"""
        import os, sys, numpy as np
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_shards import _row
        from pipeline.shards import write_shard
        rows = [_row(f"v{{i}}") for i in range(3000)]
        print("ready", flush=True)
        write_shard({str(tmp_path / "big.parquet")!r}, rows)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.parquet.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)  # wait until the writer is inside write_shard
    assert list(tmp_path.glob(".big.parquet.*.tmp")), "writer never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "big.parquet").exists()
    assert read_video_ids(tmp_path) == set()


def test_row_to_video_accepts_every_readers_row(tmp_path):
    """pyarrow's dicts, pandas' object arrays, and the dict-of-lists form a 🤗 ``Sequence``
    of structs gives: one ShardVideo."""
    path = write_shard(tmp_path / "part-0.parquet", [_row("v0")], row_group_size=1)
    want = row_to_video(_row("v0"))
    as_pandas = pd.read_parquet(path).iloc[0]
    columnar = dict(_row("v0"))
    columnar["queries"] = {k: [q[k] for q in columnar["queries"]] for k in columnar["queries"][0]}
    for row in (as_pandas, columnar):
        got = row_to_video(row)
        assert got.frames == want.frames and got.tracks[0].masks_rle == ("abc", None)
        np.testing.assert_array_equal(got.tracks[0].xyxy, want.tracks[0].xyxy)
        assert [q.query_id for q in got.queries] == ["q0", "q1"]
        assert got.queries[0].target_ids == (1,) and got.queries[0].span_s == (0.0, 0.5)
        np.testing.assert_array_equal(got.queries[0].gt[0].xyxy, want.queries[0].gt[0].xyxy)


def test_atomic_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o002)
    try:
        path = write_shard(tmp_path / "p.parquet", [_row("v0")])
        assert path.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_pipeline_bookkeeping_reads_the_folder_not_its_subfolders(tmp_path):
    """Resume and the folder's counts read the output folder's own part files (as its
    identity check and --overwrite do); a reader of a parent folder of splits (the
    trainer) still finds every shard below it."""
    from pipeline.output import summarize_shards
    from pipeline.shards import list_shards

    write_shard(tmp_path / "part-000of001-00000.parquet", [_row("v0")])
    (tmp_path / "old").mkdir()
    write_shard(tmp_path / "old" / "part-000of001-00000.parquet", [_row("v1"), _row("v2")])
    assert read_video_ids(tmp_path) == {"v0"}
    assert summarize_shards(tmp_path, max_gap_s=0.5)["videos"] == 1
    assert [p.name for p in list_shards(tmp_path, recursive=False)] == [
        "part-000of001-00000.parquet"
    ]
    assert read_video_ids(tmp_path, recursive=True) == {"v0", "v1", "v2"}
    assert len(list_shards(tmp_path)) == 2 and len(ShardIndex(tmp_path)) == 3 * 2
