"""A fault battery for preprocessing, as a user with real data meets faults: concurrent runs,
a killed parent, a bad option, settings that cannot change a row, another account's
umask, other readers, late-starting JPEG clips, bad boxes, huge numbers in answers,
reruns of failures; and the faults that were already handled (kill -9 and rerun with
1 and 2 workers, a truncated part file, a missing and an unreadable video).

Each ``test_caseN_*`` is the numbered case of the fault trial. Every run's folder is
checked with pyarrow AND pandas: every video present exactly once, and the manifest's
counts agree with the rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import PreprocessConfig
from pipeline.output import FAILURES, MANIFEST, OutputConflictError
from pipeline.preprocess import main, run
from pipeline.runtime import REPO_ROOT

N_VIDEOS = 4  # the videos of conftest's hc_root


# --------------------------------------------------------------------------- helpers


def assert_folder_consistent(out: Path, want_ids) -> None:
    """pyarrow and pandas both see each wanted video exactly once, and every share's
    manifest counts the rows that are there."""
    import pandas as pd

    files = sorted(out.glob("part-*.parquet"))
    by_arrow = [
        v for f in files for v in pq.read_table(f, columns=["video_id"])["video_id"].to_pylist()
    ]
    by_pandas = pd.read_parquet(out, columns=["video_id"])["video_id"].tolist()
    for ids in (by_arrow, by_pandas):
        assert sorted(ids) == sorted(want_ids), "each video exactly once"
    manifests = {p.name: json.loads(p.read_text()) for p in out.glob("_manifest*.json")}
    for name, m in manifests.items():
        assert m["status"] == "complete", name
        assert {f["video_id"] for f in m["failures"]}.isdisjoint(by_arrow), name
    if list(manifests) == [MANIFEST]:
        assert manifests[MANIFEST]["counts"]["videos"] == len(by_arrow)
    else:  # each share's manifest counts the folder as it was when that share ended
        from pipeline.views.summary import folder_summary

        assert folder_summary(out)["counts"]["videos"] == len(by_arrow)


def cli(hc_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.preprocess", "--dataset", "synthetic",
            "--root", str(hc_root), "--out", str(out), "--no-progress", *extra]  # fmt: skip


def popen(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(predicate, what: str, timeout_s: float = 180.0, proc=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stdout.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.02)


def rows_of(folder: Path) -> dict[str, dict]:
    return {r["video_id"]: r for f in sorted(folder.glob("part-*.parquet"))
            for r in pq.read_table(f).to_pylist()}  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference(records, tmp_path_factory):
    """One uninterrupted run (umask 022, one video per part file)."""
    out = tmp_path_factory.mktemp("ref") / "train"
    old = os.umask(0o022)
    try:
        run(records, out, PreprocessConfig(), videos_per_file=1, progress=False)
    finally:
        os.umask(old)
    return out, rows_of(out)


# --------------------------------------------------------------------------- 1: concurrency


@pytest.mark.slow  # ~20-60 s: three preprocessing processes
def test_case1_one_share_one_run_and_shares_run_side_by_side(reference, records, hc_root, tmp_path):
    """While a share's run holds its lock (stopped with SIGSTOP, so it surely does), another
    share of the folder runs to the end, and a second run of the held share is refused at
    once with the holder's PID and host. The union is every video once, with the single
    run's rows; the folder summary merges both manifests."""
    import socket

    out = tmp_path / "shards"
    # the 4 ids hash to shares [1, 1, 0, 2] of 3
    a = popen(
        cli(hc_root, out, "--num-shards", "3", "--shard-index", "1", "--videos-per-file", "1")
    )
    owner = out / "_lock-001of003.json"
    wait_for(lambda: owner.exists() and json.loads(owner.read_text())["pid"] == a.pid,
             "the lock taken by the first run", proc=a)  # fmt: skip
    manifest = out / "_manifest-001of003.json"
    wait_for(manifest.exists, "the first run's manifest", proc=a)
    time.sleep(0.3)  # past the start (the folder lock), well before its last video
    a.send_signal(signal.SIGSTOP)
    try:
        b = subprocess.run(cli(hc_root, out, "--num-shards", "3", "--shard-index", "0"),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert b.returncode == 0, b.stderr[-2000:]
        t0 = time.monotonic()
        again = subprocess.run(
            cli(hc_root, out, "--num-shards", "3", "--shard-index", "1", "--videos-per-file", "3"),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        refused_in = time.monotonic() - t0
    finally:
        a.send_signal(signal.SIGCONT)
    assert again.returncode == 2, again.stderr[-2000:]
    assert (
        f"shard 001of003 is being written by PID {a.pid} on host {socket.gethostname()}"
        in again.stderr
    )
    assert refused_in < 60  # it did not wait for the holder (stopped for good otherwise)
    assert a.wait(timeout=300) == 0, a.stdout.read()[-2000:]
    run(records, out, PreprocessConfig(), num_shards=3, shard_index=2, progress=False)
    assert_folder_consistent(out, [r.video_id for r in records])
    assert rows_of(out) == reference[1]  # the shares give the single run's rows

    from pipeline.views.summary import folder_summary, format_summary
    from pipeline.views.summary import main as summary_main

    m = json.loads((out / "_manifest-001of003.json").read_text())
    assert m["counts"]["videos_selected"] == m["counts"]["share_done"] == 2
    assert "videos_selected is this share's" in m["counts_note"]
    s = folder_summary(out)
    assert [sh["share"] for sh in s["shares"]] == ["000of003", "001of003", "002of003"]
    assert sum(sh["videos_selected"] for sh in s["shares"]) == N_VIDEOS
    assert s["counts"]["videos"] == N_VIDEOS and s["failures"] == []
    assert f"videos {N_VIDEOS}," in format_summary(s)
    assert summary_main([str(out), "--json"]) == 0


_HOLD = """import pathlib, sys, time
from pipeline.locks import share_lock
with share_lock(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_case1_overlapping_split_refused_and_a_dead_holder_taken_over(records, tmp_path):
    """A run of another --num-shards overlaps every share: refused while one is held; a
    lock left by a process killed with SIGKILL is taken over by the next run."""
    from pipeline.locks import OutputLockedError

    out = tmp_path / "shards"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), "4", "2"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputLockedError, match=rf"shard 002of004 .*PID {holder.pid}.*overlaps"
        ):
            run(records[:1], out, PreprocessConfig(), progress=False)
        with pytest.raises(OutputLockedError, match=rf"shard 002of004 .*PID {holder.pid}"):
            run(records[:1], out, PreprocessConfig(), num_shards=4, shard_index=2, progress=False)
        assert not list(out.glob("part-*")) and not list(out.glob("_manifest*"))
    finally:
        holder.kill()
        holder.wait()
    m = run(records, out, PreprocessConfig(), num_shards=4, shard_index=2, progress=False)
    assert json.loads((out / "_lock-002of004.json").read_text())["pid"] == os.getpid()
    assert m["counts"]["share_done"] == m["counts"]["videos_selected"] == 1  # shares [0, 2, 0, 0]


def _probe_briefly(path: Path, hold_s: float) -> threading.Thread:
    """Take ``path``'s lock in another thread for ``hold_s``, as another start's (or a
    summary's) probe does; returns once it is held."""
    import filelock

    held = threading.Event()

    def probe() -> None:
        lock = filelock.FileLock(str(path), timeout=0)
        lock.acquire()
        held.set()
        time.sleep(hold_s)
        lock.release()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    held.wait(5)
    return thread


def test_case1_a_brief_probe_of_a_left_lock_is_not_a_live_holder(tmp_path):
    """The lock an earlier unsharded run left, probed for a moment by someone else, does
    not refuse a share of a 16-share split; one held for longer does."""
    from pipeline.locks import OutputLockedError, held_tags, share_lock

    out = tmp_path / "shards"
    out.mkdir()
    with share_lock(out, 1, 0):
        pass  # an earlier unsharded run: its lock file stays
    left = out / "_lock-000of001"
    probe = _probe_briefly(left, 0.1)
    with share_lock(out, 16, 3) as tag:
        assert tag == "003of016"
    probe.join()
    probe = _probe_briefly(left, 0.1)
    assert held_tags(out) == []  # nor is it "running now" in a summary
    probe.join()
    probe = _probe_briefly(left, 2.0)  # a live holder
    try:
        assert held_tags(out) == ["000of001"]
        refused = pytest.raises(OutputLockedError, match=r"000of001 .*overlaps shard 003of016")
        with refused, share_lock(out, 16, 3):
            pass
    finally:
        probe.join()


def _start_share(out: Path, n: int, i: int, t0: float, q) -> None:
    from pipeline.locks import OutputLockedError, share_lock

    while time.time() < t0:
        pass
    try:
        with share_lock(out, n, i):
            q.put("ok")
    except OutputLockedError as exc:
        q.put(f"refused: {exc}")


def test_case1_shares_started_at_once_beside_a_left_lock_all_start(tmp_path):
    """16 shares of a split started at the same moment in a folder holding an earlier
    unsharded run's lock: none mistakes another's probe of that lock for a live run."""
    import multiprocessing as mp

    from pipeline.locks import share_lock

    out = tmp_path / "shards"
    out.mkdir()
    with share_lock(out, 1, 0):
        pass
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    results = []
    for _ in range(2):
        t0 = time.time() + 0.5
        procs = [ctx.Process(target=_start_share, args=(out, 16, i, t0, q)) for i in range(16)]
        for proc in procs:
            proc.start()
        results += [q.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(10)
    assert [r for r in results if r != "ok"] == []


def test_case1_the_summary_names_a_running_share_from_its_start(records, tmp_path):
    """A share of 4 that is running: its start-of-run manifest says which share it is,
    and the summary lists it as that share, running now."""
    from pipeline.locks import folder_lock, share_lock
    from pipeline.output import prepare_output
    from pipeline.views.summary import folder_summary

    out = tmp_path / "shards"
    out.mkdir()
    with share_lock(out, 4, 1) as tag:
        with folder_lock(out):
            prepare_output(out, PreprocessConfig(), False, {}, tag)
        m = json.loads((out / "_manifest-001of004.json").read_text())
        assert (m["status"], m["num_shards"], m["shard_index"]) == ("running", 4, 1)
        shares = folder_summary(out)["shares"]
        assert [(s["share"], s["status"]) for s in shares] == [("001of004", "running now")]
    assert [s["status"] for s in folder_summary(out)["shares"]] == ["running"]  # killed


# --------------------------------------------------------------------------- 2: dead parent


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow  # ~40-130 s: two pools of two spawned workers
def test_case2_workers_die_with_a_killed_parent_and_a_rerun_completes(
    reference, records, hc_root, tmp_path
):
    """kill -9 of a --workers 2 run: no worker (nor the resource tracker) outlives it by
    more than a few seconds; a rerun with 2 workers completes with identical rows."""
    import psutil

    out = tmp_path / "shards"
    proc = popen(cli(hc_root, out, "--workers", "2", "--videos-per-file", "1"))
    wait_for(lambda: sum("spawn_main" in " ".join(c.cmdline()) for c in _descendants(proc.pid)) >= 2,
             "two worker processes", proc=proc)  # fmt: skip
    wait_for(lambda: list(out.glob("part-*.parquet")), "a part file", proc=proc)
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]

    assert len(rows_of(out)) >= 1
    m = run(records, out, PreprocessConfig(), workers=2, progress=False)
    assert m["last_run"]["workers"] == 2
    assert_folder_consistent(out, [r.video_id for r in records])
    assert rows_of(out) == reference[1]


def test_kill9_and_rerun_with_one_worker(reference, records, hc_root, tmp_path):
    out = tmp_path / "shards"
    proc = popen(cli(hc_root, out, "--videos-per-file", "1"))
    wait_for(lambda: list(out.glob("part-*.parquet")), "a part file", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / MANIFEST).read_text())["status"] == "running"
    killed = len(rows_of(out))
    m = run(records, out, PreprocessConfig(), progress=False)
    assert m["last_run"]["videos_processed"] == N_VIDEOS - killed
    assert_folder_consistent(out, [r.video_id for r in records])
    assert rows_of(out) == reference[1]


class _DyingPool:
    """A process pool whose workers die at once, pool after pool (as when each is
    killed while loading the detector)."""

    _processes: ClassVar[dict] = {}

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, fn, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        future = Future()
        future.set_exception(BrokenProcessPool("a worker died"))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_workers_that_keep_dying_fail_their_videos_and_stop_the_run(
    records, hc_root, tmp_path, monkeypatch, capsys
):
    """Pools that break before finishing anything: the videos in flight are recorded as
    failed before the run stops, and the CLI says why (exit 2, no traceback)."""
    import concurrent.futures

    from pipeline.workers import WORKER_DIED, run_parallel

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _DyingPool)
    got = []
    with pytest.raises(RuntimeError, match="keep dying"):
        for result in run_parallel(records, PreprocessConfig(), 2):
            got.append(result)
    assert sorted(r[0] for r in got) == sorted(r.video_id for r in records)  # 2 pools of 2
    assert {r[3] for r in got} == {WORKER_DIED}

    out = tmp_path / "shards"
    code = main(["--dataset", "synthetic", "--root", str(hc_root), "--out", str(out),
                 "--workers", "2", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "error: the worker processes keep dying" in err, err
    assert "Traceback" not in err
    listed = [json.loads(x) for x in (out / FAILURES).read_text().splitlines()]
    assert sorted(e["video_id"] for e in listed) == sorted(r.video_id for r in records)
    assert {e["reason"] for e in listed} == {WORKER_DIED}


# --------------------------------------------------------------------------- 3, 4: identity


def test_case3_a_run_that_fails_its_checks_writes_nothing(records, hc_root, tmp_path, capsys):
    out = tmp_path / "shards"
    code = main(["--dataset", "synthetic", "--root", str(hc_root), "--out", str(out),
                 "--classes", "no-such-class", "--no-progress"])  # fmt: skip
    assert code == 2 and "unknown class 'no-such-class'" in capsys.readouterr().err
    assert not out.exists()
    code = main(["--dataset", "synthetic", "--root", str(tmp_path / "nowhere"), "--out", str(out)])
    assert code == 2 and not out.exists()

    # a folder left by a run killed before its first part, with other settings: reused
    run(records[:1], out, PreprocessConfig(conf=0.3), limit=0, progress=False)
    assert json.loads((out / MANIFEST).read_text())["config"]["conf"] == 0.3
    m = run(records[:1], out, PreprocessConfig(), progress=False)
    assert m["config"]["conf"] == 0.1
    assert_folder_consistent(out, [records[0].video_id])
    with pytest.raises(OutputConflictError, match=r"conf: 0\.1 -> 0\.3"):  # now it holds a part
        run(records[:1], out, PreprocessConfig(conf=0.3), progress=False)


def test_case4_batch_size_is_recorded_not_compared(reference, records, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(reference[0], out)
    last = sorted(out.glob("part-*.parquet"))[-1]
    (redo,) = pq.read_table(last, columns=["video_id"])["video_id"].to_pylist()
    last.unlink()
    m = run(records, out, PreprocessConfig(batch_size=1), progress=False)
    assert m["last_run"]["videos_processed"] == 1 and m["config"]["batch_size"] == 1
    assert "batch_size" not in m["identity"] and "batch_size" in m["not_in_identity"]
    assert PreprocessConfig(batch_size=1).hash() == PreprocessConfig().hash()
    assert PreprocessConfig(conf=0.2).hash() != PreprocessConfig().hash()
    assert_folder_consistent(out, [r.video_id for r in records])
    got, want = rows_of(out)[redo], reference[1][redo]
    assert got["frame_times_s"] == want["frame_times_s"]
    assert [t["id"] for t in got["tracks"]] == [t["id"] for t in want["tracks"]]
    for g, w in zip(got["tracks"], want["tracks"]):  # batches of 1 and 16: same boxes
        np.testing.assert_allclose(g["xyxy"], w["xyxy"], atol=1e-3)
    assert [q["target_ids"] for q in got["queries"]] == [q["target_ids"] for q in want["queries"]]


# --------------------------------------------------------------------------- 5, 6: readers


def test_case5_files_follow_the_umask(reference, records, tmp_path):
    out = reference[0]
    for p in [*out.glob("part-*.parquet"), out / MANIFEST]:
        assert p.stat().st_mode & 0o777 == 0o644, p.name  # made under umask 022
    from pipeline.shards import write_json_atomic

    old = os.umask(0o027)
    try:
        assert write_json_atomic(tmp_path / "x.json", {}).stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_case6_row_to_video_reads_pyarrow_pandas_and_hf_rows(reference, tmp_path):
    import datasets
    import pandas as pd

    from pipeline.shards import row_to_video

    out = reference[0]
    by_arrow = {r["video_id"]: row_to_video(r) for r in pq.read_table(out).to_pylist()}
    df = pd.read_parquet(out)
    by_pandas = {r["video_id"]: row_to_video(r) for _, r in df.iterrows()}
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train",
                               cache_dir=str(tmp_path))  # fmt: skip
    by_hf = {r["video_id"]: row_to_video(r) for r in ds}
    assert sorted(by_arrow) == sorted(by_pandas) == sorted(by_hf) and len(by_arrow) == N_VIDEOS
    for vid, a in by_arrow.items():
        for b in (by_pandas[vid], by_hf[vid]):
            assert a.frames == b.frames and (a.width, a.height) == (b.width, b.height)
            np.testing.assert_array_equal(a.frame_times_s, b.frame_times_s)
            assert [t.id for t in a.tracks] == [t.id for t in b.tracks]
            for ta, tb in zip(a.tracks, b.tracks):
                np.testing.assert_array_equal(ta.xyxy, tb.xyxy)
                np.testing.assert_array_equal(ta.times_s, tb.times_s)
            for qa, qb in zip(a.queries, b.queries):
                assert (qa.query_id, qa.span_s, qa.target_ids) == (
                    qb.query_id,
                    qb.span_s,
                    qb.target_ids,
                )
                np.testing.assert_array_equal(qa.gt[0].xyxy, qb.gt[0].xyxy)


# --------------------------------------------------------------------------- 7: clip time


def _refytvos_late_clip(root: Path, first: int = 110, n: int = 12) -> list[str]:
    """A Ref-YouTube-VOS ``train`` clip whose frames are 00110, 00115, ...: a white square
    moving right on grey, its palette mask object 1."""
    from PIL import Image

    names = [f"{first + 5 * k:05d}" for k in range(n)]
    jpegs, masks = root / "train" / "JPEGImages" / "v", root / "train" / "Annotations" / "v"
    jpegs.mkdir(parents=True)
    masks.mkdir(parents=True)
    for k, name in enumerate(names):
        img = np.full((96, 128, 3), 90, np.uint8)
        ids = np.zeros((96, 128), np.uint8)
        x = 10 + 4 * k
        img[30:70, x : x + 40] = 255
        ids[30:70, x : x + 40] = 1
        Image.fromarray(img).save(jpegs / f"{name}.jpg", quality=95)
        pal = Image.fromarray(ids, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
        pal.save(masks / f"{name}.png")
    meta = {
        "videos": {
            "v": {"frames": names, "expressions": {"0": {"exp": "the square", "obj_id": "1"}}}
        }
    }
    path = root / "meta_expressions" / "train" / "meta_expressions.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(meta))
    return names


def test_case7_late_starting_jpeg_clip_is_timed_from_its_first_frame(tmp_path):
    from pipeline.datasets import DatasetSpec, iter_records
    from pipeline.processor import VideoProcessor
    from pipeline.shards import row_to_video
    from trainer.data import make_sample
    from trainer.metrics import evaluation_times, sample_metrics

    _refytvos_late_clip(tmp_path)
    spec = DatasetSpec("rytvos", "refytvos", tmp_path, ("train",))
    (record,) = iter_records(spec, "train")
    (q,) = record.queries
    np.testing.assert_allclose(q.gt[0].times_s, np.arange(12) * 5 / 30, atol=1e-6)
    assert q.span_s == pytest.approx((0.0, 55 / 30))

    row, _ = VideoProcessor(PreprocessConfig(out_fps=6.0))(record)
    video = row_to_video(row)
    (q,) = video.queries
    assert video.frame_times_s[0] == 0.0
    np.testing.assert_allclose(video.frame_times_s, q.gt[0].times_s, atol=1e-6)  # one clock
    sample = make_sample(video, q, fps=6.0, max_frames=None)
    assert q.span_s[1] <= sample.duration_s == pytest.approx(2.0)  # the prompt's duration
    assert evaluation_times(video, q).max() <= sample.duration_s
    perfect = sample_metrics(video, q, q.target_ids, q.span_s, max_gap_s=0.5)
    assert perfect["tiou"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- 8: bad boxes


def test_case8_bad_boxes_are_dropped_clipped_and_counted(hc_root, tmp_path):
    from pipeline.datasets import iter_records

    root = tmp_path / "hc"
    (root / "video").mkdir(parents=True)
    src = json.loads((hc_root / "anno" / "train.json").read_text())
    names = sorted(src)[:3]
    anno = {}
    for name in names:
        (root / "video" / name).symlink_to(hc_root / "video" / name)
        anno[name] = dict(src[name])
    nan = [float("nan")] * 4
    boxes = [list(b) for b in anno[names[0]]["bbox"]]
    boxes[0], boxes[1], boxes[2] = (
        nan,
        [50, 50, -10, 20],
        [300, 200, 60, 60],
    )  # NaN, negative w, over the edge
    anno[names[0]]["bbox"] = boxes[:-5]  # and 5 frames short of ed_time
    anno[names[1]]["bbox"] = [nan] * len(anno[names[1]]["bbox"])  # nothing valid
    (root / "anno").mkdir()
    (root / "anno" / "train.json").write_text(json.dumps(anno))

    problems: list = []
    recs = {
        r.video_id: r for r in iter_records("hcstvg1", "train", root=root, on_error=problems.append)
    }
    v0, v1, v2 = (Path(n).stem for n in names)
    assert sorted(recs) == sorted([v0, v2])  # v1's only query has no valid box: skipped
    by_video = {p.video_id: p for p in problems if p.query_id is not None}
    assert by_video[v1].skipped and "no valid box" in by_video[v1].reason
    assert by_video[v1].counts["nan"] == len(anno[names[1]]["bbox"])
    c = by_video[v0].counts
    assert not by_video[v0].skipped
    # 5 boxes cut from a list whose last box sat at ed_time: 4 frames lie between
    assert (c["nan"], c["inverted"], c["clipped"], c["short_frames"]) == (1, 1, 1, 4)
    gt = recs[v0].queries[0].gt[0]
    assert len(gt.xyxy) == len(boxes) - 5 - 2 and np.isfinite(gt.xyxy).all()
    assert gt.xyxy[:, [0, 2]].max() <= 320 and gt.xyxy[:, [1, 3]].max() <= 240  # clipped to 320x240
    assert v2 not in by_video and recs[v2].queries[0].gt[0].xyxy.shape[0] > 0
    from pipeline.adapters.checks import check_boxes

    keep, _, counts = check_boxes(np.array([[1, 2, 3, 4], [5, 5, 4, 9]]), None)  # size unknown
    assert keep.tolist() == [True, False] and counts["inverted"] == 1

    # the manifest lists them per query
    out = tmp_path / "shards"
    assert main(["--dataset", "hcstvg1", "--root", str(root), "--out", str(out), "--no-progress",
                 "--limit", "1", "--classes", "circle", "square", "star", "triangle"]) == 0  # fmt: skip
    listed = json.loads((out / MANIFEST).read_text())["annotation_problems"]
    entry = next(p for p in listed if p["video_id"] == v0)
    assert entry["query_id"] == "0" and entry["counts"]["nan"] == 1 and entry["skipped"] is False
    assert any(p["video_id"] == v1 and p["skipped"] for p in listed)


# --------------------------------------------------------------------------- 9: answers


def test_case9_a_time_that_does_not_parse_keeps_the_ids():
    from trainer.answer import parse_answer

    huge = "1" + "0" * 400
    for payload in (f'{{"ids": [1], "start": {huge}, "end": 2}}',
                    '{"ids": [1], "start": 1e400, "end": 2}',
                    f"Target IDs: 1, Time range: {huge} to 2",
                    '{"ids": [1], "start": 1, "end": 99999999}'):  # fmt: skip
        a = parse_answer(f"<think>x</think><answer>{payload}</answer>")
        assert a.ids == (1,) and a.span_s is None, payload


# --------------------------------------------------------------------------- 10: reruns


def test_case10_failures_listed_once_and_cleared_by_a_success(hc_root, tmp_path):
    """A missing and an unreadable video fail, once each however often rerun; the missing
    one, once in place, succeeds and leaves the list; stray temporary parts go at start;
    a truncated part file is a clear error naming it."""
    from pipeline.datasets import iter_records

    root = tmp_path / "hc"
    (root / "video").mkdir(parents=True)
    src = json.loads((hc_root / "anno" / "train.json").read_text())
    a, b = sorted(src)[:2]
    anno = {a: src[a], "broken.mp4": src[b], b: src[b]}
    (root / "video" / a).symlink_to(hc_root / "video" / a)
    (root / "video" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "anno").mkdir()
    (root / "anno" / "train.json").write_text(json.dumps(anno))
    recs = list(iter_records("hcstvg1", "train", root=root))
    out = tmp_path / "shards"
    out.mkdir()
    stray = out / ".part-000of001-00007.parquet.x1y2.tmp"
    stray.write_bytes(b"half a part")
    for _ in range(2):
        m = run(recs, out, PreprocessConfig(), progress=False)
        assert not stray.exists()
        assert sorted(f["video_id"] for f in m["failures"]) == ["broken", Path(b).stem]
        assert len((out / FAILURES).read_text().splitlines()) == 2  # one line per video
    assert_folder_consistent(out, [Path(a).stem])

    (root / "video" / b).symlink_to(hc_root / "video" / b)  # the missing video arrives
    m = run(recs, out, PreprocessConfig(), progress=False)
    assert [f["video_id"] for f in m["failures"]] == ["broken"]
    assert [json.loads(x)["video_id"] for x in (out / FAILURES).read_text().splitlines()] == [
        "broken"
    ]
    assert len((out / "_failure_history.jsonl").read_text().splitlines()) == 5  # 2 + 2 + 1
    assert_folder_consistent(out, [Path(a).stem, Path(b).stem])

    from pipeline.shards import UnreadableShardError

    part = sorted(out.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:200])
    with pytest.raises(
        UnreadableShardError, match=rf"{part.name}: unreadable part file.*delete it"
    ):
        run(recs, out, PreprocessConfig(), progress=False)
    part.unlink()
    run(recs, out, PreprocessConfig(), progress=False)
    assert_folder_consistent(out, [Path(a).stem, Path(b).stem])
