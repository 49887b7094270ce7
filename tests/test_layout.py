"""The package structure: no import cycles, dependencies pointing one way, docs that match the tree.

Imports are read with :mod:`ast`, so imports inside functions (the lazy ones) count too:
a cycle hidden behind a function-level import is still a cycle a reader has to untangle.
Imports under ``if TYPE_CHECKING:`` do not count: they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline.runtime import REPO_ROOT

PACKAGES = ("pipeline", "trainer")
# The preprocessing core may not reach into these (they build on it, not the other way).
OUTSIDE_CORE = ("pipeline.synthetic", "pipeline.views")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for pkg in PACKAGES
        for p in sorted((REPO_ROOT / pkg).rglob("*.py"))
        if "assets" not in p.parts
    }


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an import names (``pipeline.shards.write`` -> ``pipeline.shards``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its body (module or function level)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {  # `if TYPE_CHECKING:` imports never run: annotations only
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in names:
                target = _resolve(name, known)
                if target is not None and target != mod:
                    deps.add(target)
        graph[mod] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_find_cycles_sees_a_cycle():
    # the checker itself: a -> b -> c -> a is one cycle, d hangs off it
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_pipeline_never_imports_trainer():
    bad = {
        m: sorted(d for d in deps if d.startswith("trainer"))
        for m, deps in import_graph().items()
        if m.startswith("pipeline")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_preprocessing_core_does_not_import_the_synthetic_world_or_views():
    def outside(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in OUTSIDE_CORE)

    bad = {
        m: sorted(d for d in deps if outside(d))
        for m, deps in import_graph().items()
        if m.startswith("pipeline") and not outside(m)
    }
    assert not {m: d for m, d in bad.items() if d}


def test_import_graph_reads_lazy_and_relative_imports(tmp_path, monkeypatch):
    # the graph must see a function-level import, or the cycle test could not fail on one
    graph = import_graph()
    assert "pipeline.geometry" in graph["pipeline.records"]  # imported inside a method
    assert "trainer.rollout.hf" in graph["trainer.rollout"]  # inside make_engine
    # annotations-only imports are not edges: config_checks names TrainConfig for types only
    assert "trainer.config" not in graph["trainer.config_checks"]
    assert "trainer.config_checks" in graph["trainer.config"]


def _project_modules() -> set[str]:
    """Every module file as a path relative to the repository (``pipeline/synthetic/scene.py``)."""
    return {
        str(p.relative_to(REPO_ROOT))
        for pkg in PACKAGES
        for p in (REPO_ROOT / pkg).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }


def _block_entries(text: str, first_line: str) -> dict[str, str]:
    """The fenced block starting with ``first_line``: {package path: its text, continuations joined}."""
    block = next(
        b
        for b in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
        if b.startswith(first_line)
    )
    entries: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            key, _, rest = line.partition(" ")
            entries[key] = entries.get(key, "") + " " + rest
        elif key is not None:
            entries[key] += " " + line
    return entries


def test_readme_layout_names_every_module_and_nothing_else():
    entries = _block_entries((REPO_ROOT / "README.md").read_text(), "pipeline/")
    named = set()
    for pkg, text in entries.items():
        if not pkg.startswith(PACKAGES):
            continue
        # "rollout/ (base, hf, vllm)": the names in brackets are modules of rollout/
        for sub, inner in re.findall(r"(\w+)/ \(([^)]*)\)", text):
            named |= {f"{pkg}{sub}/{m.strip()}.py" for m in inner.split(",")}
        text = re.sub(r"\w+/ \([^)]*\)", "", text)
        named |= {f"{pkg}{m}.py" for m in re.findall(r"\b(\w+)\b", text)}
    modules = _project_modules()
    assert not named - modules, f"README names modules that do not exist: {sorted(named - modules)}"
    assert not modules - named, f"README's layout misses: {sorted(modules - named)}"


def test_design_module_map_names_every_module_and_nothing_else():
    entries = _block_entries((REPO_ROOT / "docs/DESIGN.md").read_text(), "pipeline/runtime.py")
    modules = _project_modules()
    named = set()
    for path, text in entries.items():
        if path.endswith(".py"):
            named.add(path)
        else:  # a package line names its modules as words: "scene (model, rendering), motion ..."
            words = set(re.findall(r"\b(\w+)\b", text))
            named |= {m for m in modules if m.startswith(path) and Path(m).stem in words}
            assert (REPO_ROOT / path).is_dir(), f"DESIGN names a missing package {path}"
    assert not named - modules, f"DESIGN names modules that do not exist: {sorted(named - modules)}"
    assert not modules - named, f"DESIGN's module map misses: {sorted(modules - named)}"
