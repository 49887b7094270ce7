"""The notebooks are stored without outputs and executed here so they cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == kind
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_inspect_overlays_runs(mini_demo, monkeypatch):
    monkeypatch.setenv("STVG_SHARDS", str(mini_demo["data"] / "shards" / "synthetic" / "train"))
    nb = _execute("inspect_overlays.ipynb")
    html = [o for o in _outputs(nb, "display_data") if "text/html" in o.data]
    assert any("data:video/mp4;base64," in o.data["text/html"] for o in html)
    assert any("image/png" in o.data for o in _outputs(nb, "display_data"))  # timeline, frames


def test_training_curves_runs(mini_demo, monkeypatch):
    monkeypatch.setenv("STVG_RUN", str(mini_demo["out"] / "train"))
    nb = _execute("training_curves.ipynb")
    assert any("image/png" in o.data for o in _outputs(nb, "display_data"))
    md = [o for o in _outputs(nb, "display_data") if "text/markdown" in o.data]
    assert md and "| oracle |" in md[0].data["text/markdown"]
