"""The MeViS mask index: same values as ``json.load``, bounded memory, reuse, bad files.

Every test runs the real build (ijson -> SQLite) on files written here in the exact
``mask_dict.json`` format; the cache directory is always a temporary one.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import pickle
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline import runtime
from pipeline.adapters import AnnotationError, AnnotationProblem, get_adapter, mevis_masks
from pipeline.adapters import mevis as mevis_adapter
from pipeline.adapters.mevis_masks import MaskStore, default_cache_dir
from pipeline.geometry import mask_to_rle

MASKS = {
    "10": [{"size": [8, 10], "counts": "R1;5O2N0000"}, None, {"size": [8, 10], "counts": [3, 4, 73]}],
    "11": [None, None, None],
    "12": None,
    "7": [],
    "0": [{"size": [480, 854], "counts": "a\\b`c{|}~ \"quoted\" \u00e9"}, None, None],
}  # fmt: skip


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def index_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.sqlite")) if cache.exists() else []


def test_values_equal_json_load(tmp_path):
    path = write_json(tmp_path / "train" / "mask_dict.json", MASKS)
    expected = json.loads(path.read_text())
    store = MaskStore(path, cache_dir=tmp_path / "cache", progress=False)
    for key, value in expected.items():
        assert key in store and store[key] == value
    assert dict(store) == expected and list(store) == list(expected) and len(store) == 5
    assert "99" not in store and store.get("99") is None and 10 not in store
    with pytest.raises(KeyError):
        store["99"]
    with pytest.raises(KeyError):
        store[10]  # like a dict with string keys
    assert store["12"] is None  # a null value is a value, not a missing key
    # picklable: the copy reopens the same index read-only
    copy = pickle.loads(pickle.dumps(store))
    assert copy["10"] == expected["10"] and copy.index_path == store.index_path
    store.close()
    assert store["0"] == expected["0"]  # reopens after close
    assert index_files(tmp_path / "cache") == [store.index_path]


def _big_mask_file(path: Path, n_annos: int, frames: int, counts_len: int) -> int:
    """A mask_dict.json of ``n_annos`` ids x ``frames`` RLEs with long counts strings."""
    rng = np.random.default_rng(0)
    # 256 distinct counts strings in the RLE alphabet (chars 48..111), reused across frames
    pool = [
        rng.integers(48, 112, counts_len, dtype=np.uint8).tobytes().decode("ascii")
        for _ in range(256)
    ]
    with open(path, "w") as f:
        f.write("{")
        for a in range(n_annos):
            rles = [
                None
                if (a + t) % 7 == 0
                else {"size": [720, 1280], "counts": pool[(a * 31 + t) % 256]}
                for t in range(frames)
            ]
            f.write(("," if a else "") + json.dumps(str(a)) + ":" + json.dumps(rles))
        f.write("}")
    return path.stat().st_size


def _peak_bytes(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_far_below_the_file_size(tmp_path):
    path = tmp_path / "mask_dict.json"
    size = _big_mask_file(path, n_annos=1800, frames=20, counts_len=1000)  # ~33 MB
    assert size > 25e6

    def json_load():
        with open(path) as f:
            assert len(json.load(f)) == 1800

    store = MaskStore(path, cache_dir=tmp_path / "cache", progress=False)

    def build_and_look_up():
        store.ensure_index()
        assert len(store["1234"]) == 20

    baseline = _peak_bytes(json_load)
    peak = _peak_bytes(build_and_look_up)
    print(f"file {size / 1e6:.1f} MB; json.load peak {baseline / size:.2f}x the file size; "
          f"index build + look-up peak {peak / size:.4f}x ({peak / 1e6:.2f} MB)")  # fmt: skip
    assert baseline > size  # the whole-file load needs more than the file itself
    assert peak < 0.25 * size


def test_index_is_reused_and_rebuilt_when_the_file_changes(tmp_path):
    path = write_json(tmp_path / "mask_dict.json", MASKS)
    cache = tmp_path / "cache"
    first = MaskStore(path, cache_dir=cache, progress=False)
    index = first.ensure_index()
    before = index.stat()
    second = MaskStore(path, cache_dir=cache, progress=False)
    assert second.ensure_index() == index and second["10"] == MASKS["10"]
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rebuilt

    changed = {**MASKS, "10": None, "13": [None]}
    write_json(path, changed)
    os.utime(path, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))  # a new mtime
    third = MaskStore(path, cache_dir=cache, progress=False)
    new_index = third.ensure_index()
    assert new_index != index and dict(third) == changed
    assert index_files(cache) == [new_index]  # the stale index of this file is gone
    assert first["10"] == MASKS["10"]  # an open store keeps reading the index it opened


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"10": [{"size": [8, 10], "counts": "R1;5"}, nu', "not valid JSON"),  # truncated
        ('[{"size": [8, 10], "counts": "R1;5"}]', "top level must be a JSON dict, got list"),
        ('{"10": [null], "11": {"size": [8, 10]}}', "'11' must map to a list .* got dict"),
        ("", "not valid JSON"),
    ],
)
def test_malformed_files_raise_and_leave_no_index(tmp_path, text, reason):
    path = tmp_path / "train" / "mask_dict.json"
    path.parent.mkdir()
    path.write_text(text)
    cache = tmp_path / "cache"
    store = MaskStore(path, cache_dir=cache, progress=False)
    with pytest.raises(AnnotationError, match=re.escape(str(path)) + ".*" + reason):
        store.ensure_index()
    with pytest.raises(AnnotationError):
        "10" in store  # noqa: B015 - a look-up builds on first use, and fails the same way
    assert index_files(cache) == [] and (not cache.exists() or not any(cache.iterdir()))


# ------------------------------------------------------------------ the MeViS adapter


def _plain(obj):
    """A record as nested tuples of plain values, so two record lists compare with ==."""
    if dataclasses.is_dataclass(obj):
        return tuple((f.name, _plain(getattr(obj, f.name))) for f in dataclasses.fields(obj))
    if isinstance(obj, np.ndarray):
        return (str(obj.dtype), obj.shape, obj.tolist())
    if isinstance(obj, tuple | list):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj


def test_mevis_adapter_gives_the_records_of_a_whole_file_load(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "DATA_DIR", tmp_path / "data")
    cache = default_cache_dir()  # the real function (the session patch is on the module)
    assert cache == tmp_path / "data" / "cache" / "mevis-masks"
    monkeypatch.setattr(mevis_masks, "default_cache_dir", lambda: cache)
    from PIL import Image

    h, w, names = 8, 10, ["00000", "00001", "00002", "00003"]
    split = tmp_path / "mevis" / "train"
    for vid in ("v1", "v2"):
        (split / "JPEGImages" / vid).mkdir(parents=True)
        for n in names:
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
                split / "JPEGImages" / vid / f"{n}.jpg"
            )

    def rle(x1, y1, x2, y2):
        m = np.zeros((h, w), bool)
        m[y1:y2, x1:x2] = True
        return {"size": [h, w], "counts": mask_to_rle(m)}

    write_json(split / "mask_dict.json", {
        "1": [rle(1, 1, 4, 3), rle(2, 1, 5, 4), None, None],
        "2": [None, rle(6, 2, 9, 8), rle(6, 2, 9, 8), {"size": [h, w], "counts": [80]}],
        "3": [None] * 4,
        "4": [rle(0, 0, 2, 2)] * 4,
    })  # fmt: skip
    write_json(split / "meta_expressions.json", {"videos": {
        "v1": {"frames": names, "expressions": {
            "0": {"exp": "both squares", "obj_id": [1, 2], "anno_id": [1, 2]},
            "1": {"exp": "a ghost", "obj_id": [3], "anno_id": [3]},  # never present: skipped
            "2": {"exp": "not annotated", "obj_id": [5], "anno_id": [99]},  # skipped
        }},
        "v2": {"frames": names, "expressions": {
            "0": {"exp": "the corner", "obj_id": [0], "anno_id": ["4"]},
            "1": {"exp": "the left one", "obj_id": [1], "anno_id": 1},
        }},
    }})  # fmt: skip

    problems: list[AnnotationProblem] = []
    records = list(get_adapter("mevis")(split.parent, "train", fps=10, on_error=problems.append))
    assert [r.video_id for r in records] == ["v1", "v2"]
    assert [len(r.queries) for r in records] == [1, 2]
    assert sorted((p.video_id, p.query_id) for p in problems) == [("v1", "1"), ("v1", "2")]
    assert any("anno_id 99 not in mask_dict.json" in p.reason for p in problems)
    (index,) = index_files(cache)  # the adapter used the default cache dir

    # the same records as the adapter's per-video code fed the whole-file json.load
    whole = json.loads((split / "mask_dict.json").read_text())
    videos = json.loads((split / "meta_expressions.json").read_text())["videos"]
    expected = [
        mevis_adapter._video(vid, entry, split, whole, 10.0, "mevis", "train", lambda *a: None)
        for vid, entry in videos.items()
    ]
    assert _plain(records) == _plain(expected)
    # a second read reuses the index and gives the same records again
    again = list(get_adapter("mevis")(split.parent, "train", fps=10, on_error=problems.append))
    assert _plain(again) == _plain(records) and index_files(cache) == [index]
