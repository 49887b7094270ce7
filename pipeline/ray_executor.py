"""Running a :class:`~pipeline.processor.VideoProcessor` over many videos with Ray Data,
on this machine or on a Ray cluster.

The driver (the process running :func:`pipeline.preprocess.run`) lists the videos; Ray
Data maps them, one whole video per call, through a fixed pool of actors that each hold
one loaded processor (detector, tracker settings, overlay). Each result comes back to the
driver, which writes it with the project's own writer, so the output folder is the one a
local run makes. :class:`RayExecutor` yields the same :data:`~pipeline.workers.Result`
tuples as :func:`~pipeline.workers.run_serial`, in completion order.

Faults: an exception inside a video is a result (the driver records it in
``_failures.jsonl``). An actor that dies (killed, out of memory, a lost node) is replaced
by Ray and its video retried up to ``max_retries`` times; a video that still does not come
back is yielded as a failure and the run goes on. Ray's own progress bars are turned off:
the driver's bar is the one progress display.

Ray is imported only when a run starts, so the core install does not need it
(``pip install -e '.[ray]'`` adds it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pipeline.config import PreprocessConfig
from pipeline.processor import VideoProcessor
from pipeline.records import VideoRecord
from pipeline.workers import Result, _process

ACTOR_DIED = (
    "ActorDied: the Ray actor processing this video died on each of {tries} tries "
    "(killed, out of memory, or its node lost?)"
)


class ProcessorActor:
    """One Ray Data actor: one loaded processor, whole videos in, pickled results out.

    Records and results cross Ray as pickled bytes, so a row reaches the driver exactly
    as :class:`VideoProcessor` made it (no conversion through Arrow types on the way).
    """

    def __init__(
        self,
        config: PreprocessConfig,
        threads: int,
        make_processor: Callable[[PreprocessConfig], VideoProcessor] = VideoProcessor,
    ):
        import torch

        torch.set_num_threads(threads)
        self.processor = make_processor(config)

    def __call__(self, batch):
        import pyarrow as pa

        results = [
            pickle.dumps(_process(self.processor, pickle.loads(blob)), protocol=5)
            for blob in batch.column("record").to_pylist()
        ]
        return pa.table({"result": pa.array(results, pa.binary())})


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray instance starts: its processes bind 127.0.0.1, not this machine's
    network address (nothing outside the machine needs to reach a run's own instance).

    Ray picks a node's address from ``ENABLE_RAY_CLUSTER``, loopback when it is off (what
    Ray does on macOS and Windows); the environment variable it is read from sets it in
    the processes started now, and the driver's copy, read when ``ray`` was imported,
    is switched for the start. Both are restored after.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    env, before = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = env


def _is_loopback(address: str) -> bool:
    """Whether a ``HOST:PORT`` (or ``ray://HOST:PORT``) Ray address names this machine's
    loopback interface, where :func:`start_ray` puts a local instance."""
    import ipaddress

    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_ray(address: str | None, num_cpus: int) -> bool:
    """Connects to ``address`` or starts Ray on this machine (listening on loopback only,
    so another driver joins it with ``--ray-address 127.0.0.1:<port>``); False if already
    connected."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage reports
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # no per-run INFO lines
    import ray
    import ray.data

    # turning Ray Data's bars off (the driver has its own) would log a warning saying so
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)

    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING)
    if address:
        # a driver finds its node's raylet by address: on a loopback instance, by loopback
        local = _is_loopback(address)
        with _loopback_only() if local else contextlib.nullcontext():
            ray.init(address=address, **quiet)
    else:
        with _loopback_only():
            ray.init(address="local", num_cpus=num_cpus, **quiet)
    return True


@dataclass(frozen=True)
class RayExecutor:
    """Runs videos through a Ray Data actor pool; call it with (todo, config).

    Args:
        address: a Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts
            Ray on this machine for the run (and stops it after).
        actors: processors in the pool; None = as many as the cluster's GPUs (or, with
            no GPU asked for, its CPUs) allow.
        gpus_per_actor: GPUs each actor reserves (fractions share a GPU); None = 1 if
            the cluster has GPUs, else 0.
        cpus_per_actor: CPUs each actor reserves and its torch threads; None = this
            machine's cores split over the actors in local mode, 1 on a cluster.
        max_retries: times a video is retried after its actor died.
        make_processor: builds the per-actor processor (``VideoProcessor`` unless a
            caller wraps it).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: int | None = None
    max_retries: int = 2
    make_processor: Callable[[PreprocessConfig], VideoProcessor] = VideoProcessor

    def __post_init__(self):
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError("--executor ray needs Ray: pip install -e '.[ray]'")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--actors must be >= 1, got {self.actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor is not None and self.cpus_per_actor < 1:
            raise ValueError(f"cpus_per_actor must be >= 1, got {self.cpus_per_actor}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def _pool_size(self, todo: int) -> tuple[int, float, int]:
        """(actors, gpus per actor, cpus per actor) for this run and cluster."""
        import ray

        total = ray.cluster_resources()
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
        actors = self.actors
        if actors is None:
            per_cpu = self.cpus_per_actor or 1
            actors = int(
                total.get("GPU", 0) // gpus if gpus > 0 else total.get("CPU", 0) // per_cpu
            )
            if actors < 1:
                raise ValueError(
                    f"the Ray cluster has {total.get('GPU', 0):g} GPUs and "
                    f"{total.get('CPU', 0):g} CPUs: not enough for one actor of {gpus:g} GPU "
                    f"and {per_cpu} CPU"
                )
        actors = min(actors, todo)
        cpus = self.cpus_per_actor
        if cpus is None:  # this machine's cores shared out; on a cluster, one each
            cpus = 1 if self.address else max(1, int(total.get("CPU", 1)) // actors)
        return actors, gpus, cpus

    def __call__(self, todo: Sequence[VideoRecord], config: PreprocessConfig) -> Iterator[Result]:
        if not todo:
            return
        local_cpus = max(os.cpu_count() or 1, (self.actors or 1) * (self.cpus_per_actor or 1))
        started = start_ray(self.address, local_cpus)
        try:
            yield from self._run(todo, config)
        finally:
            if started:
                import ray

                ray.shutdown()

    def _run(self, todo: Sequence[VideoRecord], config: PreprocessConfig) -> Iterator[Result]:
        import ray.data

        actors, gpus, cpus = self._pool_size(len(todo))
        ctx = ray.data.DataContext.get_current()
        # Ray Data's settings are process-wide: changed for this run only, restored after
        changed = {
            "enable_progress_bars": False,  # the driver's bar is the progress display
            "print_on_execution_start": False,
            "max_errored_blocks": -1,  # a video whose retries ran out is reported below
        }
        saved = {name: getattr(ctx, name) for name in changed}
        for name, value in changed.items():
            setattr(ctx, name, value)
        try:
            yield from self._execute(todo, config, actors, gpus, cpus)
        finally:
            for name, value in saved.items():
                setattr(ctx, name, value)

    def _execute(
        self,
        todo: Sequence[VideoRecord],
        config: PreprocessConfig,
        actors: int,
        gpus: float,
        cpus: int,
    ) -> Iterator[Result]:
        import ray.data

        items = [{"video_id": r.video_id, "record": pickle.dumps(r, protocol=5)} for r in todo]
        with warnings.catch_warnings():
            # Ray 2.60 takes an actor's restart and retry limits only as plain remote
            # arguments (deprecated there, with no named replacement yet)
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ProcessorActor,
                batch_size=1,
                batch_format="pyarrow",
                # one video in flight per actor: an actor's death costs only its own video
                compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_cpus=cpus,
                num_gpus=gpus,
                fn_constructor_kwargs={
                    "config": config,
                    "threads": cpus,
                    "make_processor": self.make_processor,
                },
                max_restarts=-1,  # a dead actor is always replaced
                max_task_retries=self.max_retries,  # and its video retried this many times
            )
        returned: set[str] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for blob in batch.column("result").to_pylist():
                result: Result = pickle.loads(blob)
                returned.add(result[0])
                yield result
        for record in todo:  # blocks dropped after their retries ran out
            if record.video_id not in returned:
                yield record.video_id, None, None, ACTOR_DIED.format(tries=self.max_retries + 1)
