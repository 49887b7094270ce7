"""Project paths and an offline-safe runtime for Ultralytics and matplotlib.

Ultralytics probes the network on import unless told otherwise, and fetches
``Arial.ttf`` the first time it plots. :func:`configure_offline` points its config,
runs and weights folders inside the project's ignored ``data/`` tree, disables sync,
and hands it a local font, so nothing ever reaches for the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("STVG_DATA", REPO_ROOT / "data"))
CACHE_DIR = DATA_DIR / "cache"
MODELS_DIR = DATA_DIR / "models"
RUNS_DIR = DATA_DIR / "runs"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

_configured = False


def resolve(path: str | Path) -> Path:
    """A path relative to the repository root unless absolute (or existing as given)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def find_model_file(weights: str | Path, models_dir: Path, what: str) -> Path:
    """A model file that exists locally, or a clear error saying where to put it.

    A path (absolute, or relative to the working directory or the repository) is used as
    is; a bare name such as ``yolo11x.pt`` is also looked up in ``models_dir/ultralytics/``
    and ``models_dir/``. Nothing is ever downloaded (Ultralytics would try for a bare name).
    """
    given = Path(weights).expanduser()
    candidates = [resolve(given)]
    if given.parent == Path("."):
        candidates += [models_dir / "ultralytics" / given.name, models_dir / given.name]
    for cand in candidates:
        if cand.is_file():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{what} {str(weights)!r} not found (looked in: {tried}). Nothing is downloaded at run "
        f"time: copy the file to {models_dir / 'ultralytics' / given.name} or pass its path."
    )


def _local_font() -> Path | None:
    try:
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return font if font.exists() else None
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None


def configure_offline() -> None:
    """Set env defaults before Ultralytics is imported; idempotent."""
    global _configured
    if _configured:
        return
    yolo_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics")))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yolo_dir.mkdir(parents=True, exist_ok=True)
    Path(os.environ["MPLCONFIGDIR"]).mkdir(parents=True, exist_ok=True)
    font = _local_font()
    if font is not None:
        # Ultralytics looks these names up in <YOLO_CONFIG_DIR>/Ultralytics before downloading them.
        (yolo_dir / "Ultralytics").mkdir(parents=True, exist_ok=True)
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            target = yolo_dir / "Ultralytics" / name
            if not target.exists():
                shutil.copyfile(font, target)
    from ultralytics.utils import SETTINGS

    SETTINGS.update(
        {
            "sync": False,
            "runs_dir": str(RUNS_DIR / "ultralytics"),
            "weights_dir": str(MODELS_DIR / "ultralytics"),
            "datasets_dir": str(DATA_DIR / "raw"),
        }
    )
    _configured = True
