"""Preprocessing with ``--executor ray`` (Ray Data actor pool) on a local Ray cluster, on the
real code path (committed detector, ByteTrack, PyAV), on three 2 s synthetic videos plus
one corrupt file.

One Ray cluster is started for the module (Ray's start-up is the slow part); runs reuse
it, and the killed driver's subprocess joins it with ``--ray-address``. Rows are compared
exactly (JPEG bytes included) with a single-process run, as in test_preprocess.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")

from pipeline.config import PreprocessConfig
from pipeline.output import FAILURES, MANIFEST
from pipeline.preprocess import main, run
from pipeline.processor import VideoProcessor
from pipeline.ray_executor import ACTOR_DIED, RayExecutor
from pipeline.runtime import REPO_ROOT
from tests.conftest import cuda_available, requires_cuda
from tests.test_preprocess import assert_same_rows, hcstvg_entry, part_ids, rows_of

N_GOOD = 3
# actors compute where the reference run does: on CUDA when there is one (two share it)
GPUS = 0.5 if cuda_available() else 0.0


@pytest.fixture(scope="module")
def hc_root(tmp_path_factory) -> Path:
    """The synthetic set in the HC-STVG layout, plus ``corrupt.mp4`` (random bytes)."""
    from pipeline.synthetic import generate

    raw = tmp_path_factory.mktemp("raw")
    generate(raw, seed=5, num_train=N_GOOD, num_test=0, det_train=0, det_val=0,
             duration_s=2.0, formats=("hcstvg",), progress=False)  # fmt: skip
    root = raw / "hcstvg"
    (root / "video" / "corrupt.mp4").write_bytes(os.urandom(4096))
    anno_path = root / "anno" / "train.json"
    anno = json.loads(anno_path.read_text())
    anno["corrupt.mp4"] = hcstvg_entry(20)
    anno_path.write_text(json.dumps(anno))
    return root


@pytest.fixture(scope="module")
def reference(records, tmp_path_factory):
    """One uninterrupted single-process run: the folder every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "train"
    manifest = run(records, out, PreprocessConfig(), progress=False, meta={"split": "train"})
    assert manifest["counts"]["videos"] == N_GOOD and manifest["counts"]["videos_failed"] == 1
    return out, manifest, rows_of(out)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module: 4 logical CPUs (2 actors + the killed driver's)."""
    import ray

    from pipeline.ray_executor import start_ray

    assert not ray.is_initialized(), "Ray was already running in the test process"
    try:
        start_ray(None, num_cpus=4)  # Ray picks free ports for a local cluster
    except Exception:  # a port taken meanwhile by another cluster on this machine: once more
        ray.shutdown()
        start_ray(None, num_cpus=4)
    import ray.cloudpickle

    # the processors defined below travel to the actors by value (the actors cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def same_manifest(got: dict, want: dict) -> None:
    for key in ("config", "identity", "config_hash", "status", "num_shards", "counts"):
        assert got[key] == want[key], key
    reasons = lambda m: {f["video_id"]: f["reason"] for f in m["failures"]}  # noqa: E731
    assert reasons(got) == reasons(want)


# --------------------------------------------------------------------------- tests


def test_ray_does_not_load_with_the_package():
    code = (
        "import sys, pipeline, pipeline.preprocess, pipeline.ray_executor\n"
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_a_local_instance_listens_on_loopback_only(ray_cluster):
    """The run's own Ray instance binds 127.0.0.1 (nothing outside the machine needs it, and
    an offline machine's guard allows only loopback); the setting is not left behind."""
    import ray
    from ray._private import ray_constants

    assert ray_cluster.startswith("127.0.0.1:")
    assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"
    # restored for later connections (the default this platform's Ray started with)
    default = ray_constants.env_bool(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX
    )
    assert default == ray_constants.ENABLE_RAY_CLUSTER
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    # a second driver joining it by that address connects through loopback too
    from pipeline.ray_executor import _is_loopback

    assert _is_loopback(ray_cluster) and _is_loopback("localhost:6379")
    assert (
        _is_loopback("[::1]:6379") and _is_loopback("::1") and _is_loopback("ray://127.0.0.1:10001")
    )
    assert not _is_loopback("10.0.0.2:6379") and not _is_loopback("auto")


def test_bad_ray_settings_are_refused(hc_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="actors must be >= 1"):
        RayExecutor(actors=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RayExecutor(max_retries=-1)
    code = main(["--dataset", "synthetic", "--root", str(hc_root), "--out", str(tmp_path / "o"),
                 "--executor", "ray", "--gpus-per-actor", "-1"])  # fmt: skip
    assert code == 2 and "--gpus-per-actor must be >= 0" in capsys.readouterr().err


def test_ray_and_local_runs_resume_each_other_and_give_the_same_folder(
    ray_cluster, reference, records, tmp_path
):
    """A local run stopped after 2 videos, finished by 2 Ray actors: the same rows (every
    column, JPEG bytes included) and manifest as one uninterrupted local run; the corrupt
    video, which raises inside an actor, is recorded and the others finish. A local rerun
    then takes the Ray run's folder as its own: nothing to redo but the failed video."""
    import ray.data

    _, ref_manifest, ref_rows = reference
    out = tmp_path / "train"
    run(records, out, PreprocessConfig(), limit=2, progress=False, meta={"split": "train"})
    first = set(part_ids(out))
    assert len(first) == 2
    ctx = ray.data.DataContext.get_current()
    names = ("max_errored_blocks", "enable_progress_bars", "print_on_execution_start")
    before = {name: getattr(ctx, name) for name in names}
    manifest = run(records, out, PreprocessConfig(), progress=False, meta={"split": "train"},
                   executor=RayExecutor(actors=2, gpus_per_actor=GPUS), videos_per_file=1)  # fmt: skip
    # Ray Data's process-wide settings are the caller's again
    assert {name: getattr(ctx, name) for name in names} == before
    assert manifest["last_run"]["videos_processed"] == N_GOOD - 2
    assert manifest["last_run"]["videos_failed"] == 1
    ids = part_ids(out)
    assert len(ids) == len(set(ids)) == N_GOOD
    assert_same_rows(rows_of(out), ref_rows)
    same_manifest(manifest, ref_manifest)
    logged = [json.loads(x) for x in (out / FAILURES).read_text().splitlines()]
    assert [e["video_id"] for e in logged] == ["corrupt"]
    assert logged[0]["reason"].startswith("DecodeError")

    again = run(records, out, PreprocessConfig(), progress=False, meta={"split": "train"})
    assert (again["last_run"]["videos_processed"], again["last_run"]["videos_failed"]) == (0, 1)
    assert_same_rows(rows_of(out), ref_rows)


def test_killed_ray_driver_rerun_gives_every_video_once(ray_cluster, reference, hc_root, tmp_path):
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "pipeline.preprocess", "--dataset", "synthetic",
           "--root", str(hc_root), "--out", str(out), "--videos-per-file", "1", "--no-progress",
           "--executor", "ray", "--ray-address", ray_cluster, "--actors", "1",
           "--gpus-per-actor", str(GPUS)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not list(out.glob("part-*.parquet")):
        assert time.monotonic() < deadline, "no part file after 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    killed_ids = part_ids(out)
    assert 1 <= len(killed_ids) < N_GOOD  # interrupted part-way; every part file readable
    assert json.loads((out / MANIFEST).read_text())["status"] == "running"

    code = main(cmd[3:])  # the same command again, in this process (on the same cluster)
    assert code == 0
    ids = part_ids(out)
    assert len(ids) == len(set(ids)) == N_GOOD
    assert_same_rows(rows_of(out), reference[2])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["last_run"]["videos_processed"] == N_GOOD - len(killed_ids)
    same_manifest(manifest, reference[1])


class DiesOnFirstTries(VideoProcessor):
    """Kills its actor's process on the first ``die_on[video_id]`` tries of a video, as the
    OOM killer would; marker files in ``marks`` count the tries across actor restarts."""

    def __init__(self, config, die_on: dict[str, int], marks: Path):
        super().__init__(config)
        self.die_on, self.marks = die_on, marks

    def __call__(self, record):
        limit = self.die_on.get(record.video_id, 0)
        mark = self.marks / record.video_id
        tries = int(mark.read_text()) if mark.exists() else 0
        if tries < limit:
            mark.write_text(str(tries + 1))
            os._exit(1)
        return super().__call__(record)


@pytest.mark.slow  # ~60 s: actor restarts reload the detector
def test_dead_actor_is_replaced_and_its_video_retried(ray_cluster, reference, records, tmp_path):
    """Video 0 kills its actor once: Ray restarts it and the video succeeds. Video 1 kills
    its actor on every try: after 1 + max_retries deaths it is recorded, the rest finish."""
    import functools

    good = sorted(r.video_id for r in records if r.video_id != "corrupt")
    once, always = good[0], good[1]
    make = functools.partial(DiesOnFirstTries, die_on={once: 1, always: 99}, marks=tmp_path)
    executor = RayExecutor(actors=2, gpus_per_actor=GPUS, max_retries=1, make_processor=make)
    out = tmp_path / "train"
    manifest = run(records, out, PreprocessConfig(), progress=False, executor=executor)
    reasons = {f["video_id"]: f["reason"] for f in manifest["failures"]}
    assert reasons[always] == ACTOR_DIED.format(tries=2)
    assert (tmp_path / always).read_text() == "2" and (tmp_path / once).read_text() == "1"
    assert sorted(reasons) == sorted([always, "corrupt"])
    want = [r for r in reference[2] if r["video_id"] != always]
    assert_same_rows(rows_of(out), want)


def processor_on_cuda(config: PreprocessConfig) -> VideoProcessor:
    """The processor, after checking Ray gave this actor a CUDA device."""
    import torch

    assert torch.cuda.is_available(), "the actor sees no GPU"
    return VideoProcessor(config)


@pytest.mark.gpu
@requires_cuda
def test_gpu_actors_process_every_video(ray_cluster, records, tmp_path):
    """Two actors sharing one GPU (0.5 each): every video is processed, on CUDA."""
    executor = RayExecutor(actors=2, gpus_per_actor=0.5, make_processor=processor_on_cuda)
    manifest = run(records, tmp_path / "train", PreprocessConfig(), progress=False,
                   executor=executor)  # fmt: skip
    assert manifest["counts"]["videos"] == N_GOOD
    assert [f["video_id"] for f in manifest["failures"]] == ["corrupt"]


def test_bench_throughput_hand_computed():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_pre", REPO_ROOT / "bench" / "preprocess.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # start at t=10; videos of 30, 50, 20 frames finish at t=12, 14, 16
    got = bench.throughput(10.0, [(12.0, 30), (14.0, 50), (16.0, 20)])
    # end to end 100 frames / 6 s; after start-up (50 + 20) frames / (16 - 12) s
    assert got == pytest.approx({"frames": 100, "videos": 3, "seconds": 6.0,
                                 "end_to_end": 100 / 6, "steady": 70 / 4})  # fmt: skip
    assert bench.throughput(0.0, [(2.0, 10)])["steady"] is None  # one video: no steady rate
