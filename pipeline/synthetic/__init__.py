"""The synthetic world: procedural scenes with exact truth, written in the real dataset formats.

- :mod:`~pipeline.synthetic.scene`: the scene model (objects, events) and rendering;
- :mod:`~pipeline.synthetic.motion`: motion plans, events and :func:`make_scene`;
- :mod:`~pipeline.synthetic.expressions`: referring expressions checked for uniqueness;
- :mod:`~pipeline.synthetic.writer`: the MeViS, HC-STVG and YOLO layouts on disk
  (``python -m pipeline.synthetic``);
- :mod:`~pipeline.synthetic.train_detector`: the small detector trained on it.

Nothing in the preprocessing core imports this package; it only writes files that the
real adapters read.
"""

from pipeline.synthetic.expressions import Desc, Expression, Query, resolve
from pipeline.synthetic.motion import make_scene
from pipeline.synthetic.scene import COLORS_RGB, SHAPES, Event, Scene, SceneConfig, SceneObject
from pipeline.synthetic.writer import (
    FORMATS,
    generate,
    hcstvg_entry,
    mevis_entries,
    scene_seed,
    video_id,
    yolo_label_lines,
)

__all__ = [
    "COLORS_RGB",
    "FORMATS",
    "SHAPES",
    "Desc",
    "Event",
    "Expression",
    "Query",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "generate",
    "hcstvg_entry",
    "make_scene",
    "mevis_entries",
    "resolve",
    "scene_seed",
    "video_id",
    "yolo_label_lines",
]
