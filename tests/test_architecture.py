"""The package's layout rules (docs/architecture.md): imports flow one way, layers/ stands alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kronsearch.errors import BadInput, KronsearchError, RunFailure
from kronsearch.schema import SpaceError
from kronsearch.storage import StorageError, StudyNotFound

PACKAGE = Path(__file__).resolve().parents[1] / "kronsearch"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the kronsearch modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kronsearch"):
                found |= {t for t in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if t in modules}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name}
    return graph


def pipeline_stages() -> list[list[str]]:
    """The stages of docs/architecture.md's diagram, top first: each a list of folders ("layers/") and modules
    ("cli.py"). A line starting with "|" separates stages; a line starting with names adds them to the stage."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    diagram = text.split("\n```\n", 1)[1].split("\n```", 1)[0]
    stages: list[list[str]] = [[]]
    for line in diagram.splitlines():
        if line.strip().startswith("|"):
            if stages[-1]:
                stages.append([])
            continue
        names = re.match(r"((?:[\w]+(?:/|\.py)\s)+)", line + " ")
        if names:
            stages[-1] += names.group(1).split()
    return [s for s in stages if s]


def pipeline_stage(module: str, stages: list[list[str]]) -> int | None:
    """The stage of a module ("kronsearch.backends.ray" is in "backends/", "kronsearch.cli" in "cli.py")."""
    parts = module.split(".")[1:]
    names = {f"{parts[0]}/", f"{parts[0]}.py"} if parts else set()
    return next((i for i, stage in enumerate(stages) if names & set(stage)), None)


def test_the_architecture_page_names_every_module_in_its_pipeline():
    stages = pipeline_stages()
    missing = sorted(m for m in imports() if m != "kronsearch" and pipeline_stage(m, stages) is None)
    assert missing == [], f"add these to the pipeline in docs/architecture.md, at the stage of their imports: {missing}"


def test_every_import_points_down_the_pipeline_of_the_architecture_page():
    stages = pipeline_stages()
    upward = sorted(f"{m} -> {t}" for m, targets in imports().items() if m != "kronsearch" for t in targets
                    if t != "kronsearch" and (pipeline_stage(t, stages) or 0) > (pipeline_stage(m, stages) or 0))
    assert upward == [], f"imports from a later stage of docs/architecture.md's pipeline: {upward}"


def test_layers_import_nothing_of_kronsearch_outside_layers():
    graph = imports()
    outside = {m: sorted(t for t in targets if not t.startswith("kronsearch.layers"))
               for m, targets in graph.items() if m.startswith("kronsearch.layers")}
    assert {m: t for m, t in outside.items() if t} == {}


def test_no_module_imports_itself_back_through_others():
    """No import cycles between modules (the package's __init__ re-exports are not modules' imports)."""
    graph = {m: t - {"kronsearch"} for m, t in imports().items() if m != "kronsearch"}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [nxt]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, [m]) for m in sorted(graph) if m not in state), " -> ".join(cycle)


def test_backends_import_their_base_and_the_base_imports_no_backend():
    graph = imports()
    assert "kronsearch.backends.base" in graph["kronsearch.backends.local"]
    assert "kronsearch.backends.base" in graph["kronsearch.backends.ray"]
    assert not {t for t in graph["kronsearch.backends.base"] if t.startswith("kronsearch.backends.")}


def test_every_module_fits_one_sitting():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_errors_sort_into_bad_input_and_run_failure():
    assert issubclass(SpaceError, BadInput) and issubclass(StudyNotFound, BadInput)
    assert issubclass(StorageError, RunFailure)
    assert issubclass(BadInput, KronsearchError) and issubclass(RunFailure, KronsearchError)
    assert issubclass(BadInput, ValueError) and not issubclass(RunFailure, ValueError)
