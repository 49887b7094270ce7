"""MeViS ``mask_dict.json`` as a read-only mapping backed by an on-disk index.

The real MeViS train ``mask_dict.json`` is several gigabytes of
``{str(anno_id): [COCO RLE {"size": [h, w], "counts": str} or null, one per frame]}``;
``json.load`` needs many times that in RAM. :class:`MaskStore` instead streams the file
once with ``ijson`` (the C backend when it is installed) into a SQLite table
``anno_id -> compact JSON of its value`` and answers look-ups from it, so memory stays
bounded by one anno_id's value. ``store[anno_id]`` returns exactly what ``json.load``
would have held under that key.

The index lives in ``<DATA_DIR>/cache/mevis-masks/`` under a name hashed from the mask
file's resolved path, size and mtime, so an unchanged file reuses its index across runs
and an edited one gets a new index (the old one is deleted). It is built into a temporary
file and renamed into place only when complete: an interrupted build or a malformed file
never leaves an index that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from pipeline import runtime
from pipeline.adapters.base import AnnotationError

INDEX_VERSION = 1  # part of the index name: a change of layout never reads an old index
BATCH_ROWS = 1000  # rows per executemany / commit during the build ...
BATCH_BYTES = 2 << 20  # ... or fewer, once their values reach this many bytes

# First ijson event -> the JSON type it starts, worded like ``load_json``'s message.
_TOP_LEVEL_KIND = {
    "start_map": "dict",
    "start_array": "list",
    "string": "str",
    "number": "number",
    "boolean": "bool",
    "null": "null",
}


def default_cache_dir() -> Path:
    """``<DATA_DIR>/cache/mevis-masks`` (read at call time, so ``STVG_DATA`` is honoured)."""
    return runtime.DATA_DIR / "cache" / "mevis-masks"


def _ijson_backend():
    """(the yajl2 C backend, several times faster on gigabyte files, else ijson's default;
    ijson's parse error class)."""
    import ijson

    try:
        return ijson.get_backend("yajl2_c"), ijson.JSONError
    except ImportError:
        return ijson, ijson.JSONError


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


class _CountingReader:
    """A binary file whose ``read`` advances a progress bar by the bytes it returns."""

    def __init__(self, f: BinaryIO, bar) -> None:
        self._f, self._bar = f, bar

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._bar.update(len(data))
        return data


class MaskStore(Mapping):
    """Read-only ``{anno_id (str): list | None}`` over a MeViS ``mask_dict.json``.

    Behaves like the dict ``json.load`` would return for the keys MeViS uses: ``key in
    store``, ``store[key]`` (``KeyError`` when absent, including for non-``str`` keys, as a
    dict with string keys), ``get``, ``len`` and iteration in file order (a repeated key
    keeps its last value, as with ``json.load``, at its last position). Each look-up
    decodes one value; nothing is cached in memory.

    The index is built (or found) on first use; call :meth:`ensure_index` to do it up
    front and surface a malformed file at once. The store pickles (the connection is
    reopened on demand) and reopens its connection in a forked child.

    Args:
        mask_path: the ``mask_dict.json`` file.
        cache_dir: where indexes live (default :func:`default_cache_dir`).
        progress: show a progress bar over the bytes read while building.

    Raises:
        AnnotationError: (from the first use) the file is not valid JSON, its top level is
            not an object, or a value is neither a list nor ``null``.
    """

    def __init__(
        self, mask_path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.mask_path = Path(mask_path)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress
        self._index: Path | None = None
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    # ------------------------------------------------------------------ index

    @property
    def index_path(self) -> Path | None:
        """The SQLite index in use, or None before the first use."""
        return self._index

    def _index_name(self) -> tuple[str, str, os.stat_result]:
        """(file name for the current state of the mask file, its path-only prefix, stat)."""
        resolved = self.mask_path.resolve()
        st = resolved.stat()
        prefix = f"{resolved.parent.name or 'masks'}-{_digest(str(resolved), 12)}"
        state = _digest(f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}\0v{INDEX_VERSION}", 16)
        return f"{prefix}-{state}.sqlite", prefix, st

    def ensure_index(self) -> Path:
        """Find or build the index for this state of the mask file and open it; its path.

        Once open, the store keeps reading that index even if the mask file changes.
        """
        self._connection()
        assert self._index is not None
        return self._index

    def _find_or_build(self) -> Path:
        name, prefix, st = self._index_name()
        index = self.cache_dir / name
        if not index.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._build(index, st)
            for stale in self.cache_dir.glob(f"{prefix}-*.sqlite"):  # older states of this file
                if stale != index:  # (a store that has one open keeps reading it)
                    stale.unlink(missing_ok=True)
        return index

    def _build(self, index: Path, st: os.stat_result) -> None:
        """One streaming pass over the mask file into ``<tmp>``, renamed to ``index`` at the end."""
        # A unique name next to the index (os.replace needs the same file system); SQLite
        # creates it with the usual permissions, so a shared cache stays readable.
        tmp = self.cache_dir / f".{index.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            conn = sqlite3.connect(tmp)
            try:
                # The temp file is discarded on any failure, so no journal or syncs are needed.
                conn.execute("PRAGMA journal_mode=OFF")
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute("CREATE TABLE masks (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                n = self._fill(conn, st.st_size)
                meta = {
                    "source": str(self.mask_path.resolve()),
                    "size": str(st.st_size),
                    "mtime_ns": str(st.st_mtime_ns),
                    "entries": str(n),
                    "version": str(INDEX_VERSION),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                conn.commit()
            finally:
                conn.close()
            now = self.mask_path.stat()
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise AnnotationError(
                    f"{self.mask_path}: the file changed while it was being indexed; run again"
                )
            with open(tmp, "rb+") as f:  # durable before it becomes visible under its name
                os.fsync(f.fileno())
            os.replace(tmp, index)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _fill(self, conn: sqlite3.Connection, size: int) -> int:
        """Stream ``(anno_id, value)`` pairs into ``masks``; returns the number of keys."""
        from tqdm import tqdm

        backend, json_error = _ijson_backend()
        path = self.mask_path
        with open(path, "rb") as f:
            try:
                first = next(backend.basic_parse(f), None)
            except json_error as exc:
                raise AnnotationError(f"{path}: not valid JSON ({_short(exc)})") from exc
            if first is None or first[0] != "start_map":
                got = _TOP_LEVEL_KIND.get(first[0], first[0]) if first else "nothing"
                raise AnnotationError(f"{path}: top level must be a JSON dict, got {got}")
            f.seek(0)
            bar = tqdm(
                total=size,
                desc=f"indexing {path.name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not self.progress,
            )
            batch: list[tuple[str, str]] = []
            batch_bytes = 0
            insert = "INSERT OR REPLACE INTO masks VALUES (?, ?)"  # a repeated key: last wins
            try:
                pairs = backend.kvitems(_CountingReader(f, bar), "", use_float=True)
                for key, value in pairs:
                    if value is not None and not isinstance(value, list):
                        raise AnnotationError(
                            f"{path}: anno_id {key!r} must map to a list of per-frame masks "
                            f"or null, got {type(value).__name__}"
                        )
                    text = json.dumps(value, separators=(",", ":"))
                    batch.append((key, text))
                    batch_bytes += len(text)
                    if len(batch) >= BATCH_ROWS or batch_bytes >= BATCH_BYTES:
                        conn.executemany(insert, batch)
                        conn.commit()
                        batch.clear()
                        batch_bytes = 0
            except json_error as exc:
                raise AnnotationError(f"{path}: not valid JSON ({_short(exc)})") from exc
            finally:
                bar.close()
            conn.executemany(insert, batch)
            conn.commit()
        return conn.execute("SELECT COUNT(*) FROM masks").fetchone()[0]

    # ------------------------------------------------------------------ look-ups

    def _connection(self) -> sqlite3.Connection:
        """A read-only connection owned by this process (reopened after fork or unpickling)."""
        if self._conn is None or self._pid != os.getpid():
            if self._index is None:
                self._index = self._find_or_build()
            elif not self._index.is_file():
                raise FileNotFoundError(
                    f"MeViS mask index {self._index} of {self.mask_path} is gone (the mask file "
                    "changed and a newer index replaced it); open a new MaskStore"
                )
            index = self._index
            # A URI so that mode=ro applies; as_uri() percent-encodes any odd characters.
            uri = f"{index.resolve().as_uri()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._pid = os.getpid()
        return self._conn

    def __getitem__(self, key: str) -> list | None:
        if not isinstance(key, str):
            raise KeyError(key)
        row = self._connection().execute("SELECT value FROM masks WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        sql = "SELECT 1 FROM masks WHERE key = ?"
        return self._connection().execute(sql, (key,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        cursor = self._connection().execute("SELECT key FROM masks ORDER BY rowid")
        for (key,) in cursor:
            yield key

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM masks").fetchone()[0]

    def close(self) -> None:
        """Close the connection (a later look-up reopens it)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = self._pid = None

    def __enter__(self) -> MaskStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_conn"] = state["_pid"] = None  # connections do not pickle; reopen on demand
        return state

    def __repr__(self) -> str:
        return f"MaskStore({str(self.mask_path)!r}, index={str(self._index) if self._index else None!r})"


def _short(exc: Exception) -> str:
    """yajl's parse errors span several lines (a caret under the context, sometimes as
    bytes): keep the first line."""
    msg = exc.args[0] if exc.args else ""
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    lines = str(msg).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
