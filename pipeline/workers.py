"""Running a :class:`~pipeline.processor.VideoProcessor` over many videos: in this process, or
in a pool of worker processes that survives a worker's death. Both yield one
:data:`Result` per video, in completion order; an exception inside a video is a result,
never a crash of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from pipeline.config import PreprocessConfig
from pipeline.processor import VideoProcessor
from pipeline.records import VideoRecord

Result = tuple[str, dict | None, dict | None, str | None]  # video_id, row, stats, error
_worker: VideoProcessor | None = None  # one per worker process


def _process(processor: VideoProcessor, record: VideoRecord) -> Result:
    try:
        row, stats = processor(record)
        return record.video_id, row, stats, None
    except Exception as exc:  # recorded per video; the run goes on
        return record.video_id, None, None, f"{type(exc).__name__}: {exc}"


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this worker when the process that started it ends, even by SIGKILL.

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``,
    through :mod:`ctypes`); everywhere a daemon thread also polls the parent's PID
    and exits when the worker has been handed to another parent. With the workers
    gone, the pipe of multiprocessing's resource tracker closes and it exits too.
    """
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still applies

    def watch() -> None:
        import time

        while True:
            if os.getppid() != parent_pid:  # the parent is gone (the race with prctl, too)
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(config: PreprocessConfig, threads: int, parent_pid: int | None = None) -> None:
    global _worker
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)
    _worker = VideoProcessor(config)


def _run_one(record: VideoRecord) -> Result:
    assert _worker is not None, "_init_worker did not run in this process"
    return _process(_worker, record)


def run_serial(
    todo: Sequence[VideoRecord], config: PreprocessConfig, processor: VideoProcessor | None = None
) -> Iterator[Result]:
    """Results in order, in this process (``processor``: one already loaded for ``config``)."""
    processor = processor or VideoProcessor(config)  # released when the run ends
    for record in todo:
        yield _process(processor, record)


WORKER_DIED = (
    "WorkerDied: the worker process died while processing this video or one processed "
    "alongside it (killed, or out of memory?)"
)


class WorkersDyingError(RuntimeError):
    """The worker processes die before finishing any video, pool after pool."""


def run_parallel(
    todo: Sequence[VideoRecord], config: PreprocessConfig, workers: int
) -> Iterator[Result]:
    """Results in completion order from ``workers`` processes, one video in flight per
    worker. A worker that dies (killed, out of memory) fails the videos then in flight
    (a rerun retries them) and the pool is restarted for the rest; a plain
    ``multiprocessing.Pool`` would wait for the lost video forever. When two pools in a
    row break before returning anything, their videos are failed the same way and then
    :class:`WorkersDyingError` stops the run."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(reversed(todo))
    fruitless = 0  # consecutive pools that broke before returning anything
    while queue:
        pool = ProcessPoolExecutor(
            workers,
            mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(config, threads, os.getpid()),
        )
        running: dict = {}  # future -> record
        returned, broken = 0, False
        try:
            while (queue or running) and not broken:
                while queue and len(running) < workers:
                    record = queue.pop()
                    running[pool.submit(_run_one, record)] = record
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    del running[fut]
                    returned += 1
                    yield result
        finally:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()  # Ctrl-C or an error: do not wait for running videos
            pool.shutdown(wait=True, cancel_futures=True)
        if broken:
            fruitless = 0 if returned else fruitless + 1
            for record in running.values():  # recorded as failed before any stop below
                yield record.video_id, None, None, WORKER_DIED
            if fruitless >= 2:
                raise WorkersDyingError(
                    "the worker processes keep dying before finishing any video; "
                    "run with --workers 1 to see the error"
                )
