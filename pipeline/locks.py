"""Locks on a shard folder, so that two runs never write the same share of it.

A run holds ``_lock-<index>of<n>`` (its shard index) for its whole length, taken with
:mod:`filelock` (``flock`` on Linux, the platform's own lock elsewhere): the OS
releases it when the process ends, however it ends, so a lock left by a killed run is
simply taken over. Beside it, ``_lock-<index>of<n>.json`` names the holder (PID, host,
start time) for the refusal message. Runs with other shard indexes of the same
``--num-shards`` work alongside; a run with another ``--num-shards`` (whose share
overlaps every other) is refused while any other share is being written. Starts are
serialised by the short-lived ``_lock-folder``, so the checks and the manifest written
after them see a consistent folder. A lock found busy is probed again for a moment
before it counts as held: a summary (or anyone) probing a lock holds it briefly too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PREFIX = "_lock-"
FOLDER_LOCK = "_lock-folder"
_TAG = re.compile(r"^_lock-(\d+)of(\d+)$")


class OutputLockedError(RuntimeError):
    """Another live run holds the shard folder (or an overlapping share of it)."""


def shard_tag(num_shards: int, shard_index: int) -> str:
    """``<index>of<n>``, zero-padded: names the share in part files, locks and manifests."""
    return f"{shard_index:03d}of{num_shards:03d}"


def _lock(path: Path, timeout_s: float = 0.0):
    import filelock

    return filelock.FileLock(str(path), timeout=timeout_s)


def holder(out_dir: Path, tag: str) -> dict:
    """What the holder of ``tag``'s lock wrote about itself (empty if unknown)."""
    try:
        return json.loads((out_dir / f"{LOCK_PREFIX}{tag}.json").read_text())
    except (OSError, ValueError):
        return {}


def _describe(out_dir: Path, tag: str) -> str:
    h = holder(out_dir, tag)
    who = f"PID {h.get('pid', '?')} on host {h.get('host', '?')}"
    since = h.get("started")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"shard {tag} is being written by {who}{when}"


def held_tags(
    out_dir: Path, skip: str | None = None, wait_s: float = 0.5, num_shards: int | None = None
) -> list[str]:
    """Tags of the shares of ``out_dir`` whose lock a live process holds now.

    A lock is probed by taking it without waiting; one that is busy is probed again until
    ``wait_s`` has passed (all locks share that one deadline) before it counts as held,
    since another start or a summary may be probing the same lock for a moment.
    ``num_shards``: probe only the shares of another ``--num-shards`` split than this.
    """
    import filelock

    pending: dict[str, Path] = {}
    for path in sorted(out_dir.glob(f"{LOCK_PREFIX}*of*")):
        m = _TAG.match(path.name)
        if m is None or path.name == f"{LOCK_PREFIX}{skip}":
            continue
        if num_shards is not None and int(m.group(2)) == num_shards:
            continue
        pending[f"{m.group(1)}of{m.group(2)}"] = path
    deadline = time.monotonic() + wait_s
    while True:
        for tag, path in list(pending.items()):
            probe = _lock(path)
            try:
                probe.acquire()
            except filelock.Timeout:
                continue
            probe.release()
            del pending[tag]
        if not pending or time.monotonic() >= deadline:
            return sorted(pending)
        time.sleep(0.02)


@contextlib.contextmanager
def folder_lock(out_dir: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Serialises the start of runs on ``out_dir`` (held for seconds, not for the run)."""
    import filelock

    lock = filelock.FileLock(str(out_dir / FOLDER_LOCK), timeout=timeout_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputLockedError(
            f"{out_dir}: another run has been starting on this folder for {timeout_s:.0f} s "
            f"({FOLDER_LOCK} is held); try again"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def share_lock(out_dir: Path, num_shards: int, shard_index: int) -> Iterator[str]:
    """Hold the lock of this share of ``out_dir`` for the ``with`` block; yields its tag.

    Raises:
        OutputLockedError: a live process holds this share, or holds a share of
            another ``--num-shards`` split (the message names its PID and host).
    """
    import filelock

    from pipeline.shards import write_json_atomic

    tag = shard_tag(num_shards, shard_index)
    # a short wait: another start or a summary may be probing this lock for a moment
    lock = _lock(out_dir / f"{LOCK_PREFIX}{tag}", timeout_s=2.0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputLockedError(
            f"{out_dir}: {_describe(out_dir, tag)}. Wait for it to end, or use another --out "
            "or --shard-index."
        ) from None
    try:
        # inside the folder lock: two starts never probe each other's locks at once
        with folder_lock(out_dir):
            overlapping = held_tags(out_dir, skip=tag, num_shards=num_shards)
            if overlapping:
                raise OutputLockedError(
                    f"{out_dir}: {_describe(out_dir, overlapping[0])}, a share of another "
                    f"--num-shards split that overlaps shard {tag}. Wait for it to end."
                )
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            write_json_atomic(out_dir / f"{LOCK_PREFIX}{tag}.json", owner)
        yield tag
    finally:
        lock.release()
