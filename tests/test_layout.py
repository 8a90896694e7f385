"""The architecture, checked: imports flow one way and no module mixes ClearML with torch."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("components", "pipelines")
HEAVY = ("torch", "transformers", "vllm")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    # ``if TYPE_CHECKING:`` at module level is still the file's head.
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, id(node) in top))
            found += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names]
    return found


def test_no_import_cycles_anywhere():
    known = modules()
    graph = {
        name: {m for m, _ in imports(path) if m in known and m != name}
        for name, path in known.items()
    }
    # A package's __init__ importing its own modules is not a cycle between modules.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*trail, node, dep])
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_step_logic_imports_no_clearml_at_module_level():
    for name, path in modules().items():
        if name.startswith("components"):
            top = [m for m, at_top in imports(path) if at_top]
            assert not any(m.split(".")[0] == "clearml" for m in top), name


def test_only_the_clearml_wing_and_the_cli_know_clearml():
    """Only pipelines/clearml/ and pipelines/cli/ choose between local and ClearML."""
    allowed = ("pipelines.clearml", "pipelines.cli")
    for name, path in modules().items():
        if name.startswith(allowed):
            continue
        for module, _ in imports(path):
            root = module.split(".")[0]
            assert root != "clearml" and not module.startswith("pipelines.clearml"), (name, module)


def test_modules_stay_small():
    """A module does one job: pipelines/ none over 300 lines, components/ none over 350."""
    for name, path in modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = 300 if name.startswith("pipelines") else 350
        assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines"


def test_the_project_s_own_imports_are_at_the_top():
    """A file's dependencies show in its first lines; only heavy third-party modules (and the
    generated step script's one hand-over) are imported inside functions."""
    for name, path in modules().items():
        if name == "pipelines.clearml.step":  # ClearML copies only that function's body
            continue
        for module, at_top in imports(path):
            if not at_top and module.split(".")[0] in PACKAGES:
                raise AssertionError(f"{name}: imports {module} inside a function")


def test_no_module_knows_both_clearml_and_torch():
    for name, path in modules().items():
        roots = {m.split(".")[0] for m, _ in imports(path)}
        assert not ({"clearml"} & roots and set(HEAVY) & roots), name


def test_folders_show_the_architecture():
    """Step logic in components/, the DAG once in pipelines/dag.py, one runner per place
    (local.py, clearml/), thin entry points in pipelines/cli/."""
    pipelines = ROOT / "pipelines"
    assert (pipelines / "dag.py").is_file() and (pipelines / "executor.py").is_file()
    assert {p.stem for p in (pipelines / "cli").glob("*.py")} >= {
        "run",
        "sweep",
        "compare",
        "enqueue",
        "enqueue_sweep",
        "files",
    }
    for path in (pipelines / "cli").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 45, f"{path.name}: {node.name} is not thin"
