"""The layers of the code (docs/architecture.md), checked from the source and in a child process:
no import circle among the project's modules; `common.core` and `common.formats` import no
deep-learning framework and no `resnet_*` package; each layer imports only the layers below it;
the copyable `blocks.py` files import nothing of the project."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "resnet_torch", "resnet_tf", "resnet_mx")
FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "mxnet", "jax", "flax", "tf2onnx", "onnx",
                     "onnxruntime", "h5py")

# What each layer of `common` may import from the project (besides itself).
ALLOWED = {"common.core": {"common.core"},
           "common.formats": {"common.core", "common.formats"},
           "common.frameworks": {"common.core", "common.formats", "common.frameworks"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules that `path` imports anywhere in it, in a function too (a lazy import
    is still an edge), and constant `import_module("...")` calls. `from X import y` counts as
    importing X.y when that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id",
                                                                                  "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            targets = [node.args[0].value]
        for target in targets:
            while target and target not in known:  # `import common.core.spec as s` and friends
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_project_has_no_import_circle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_circle_finder_finds_a_planted_circle():
    graph = import_graph()
    graph["common.core.files"] = graph["common.core.files"] | {"common.core.spec"}
    graph["common.core.spec"] = graph["common.core.spec"] | {"common.core.files"}
    assert find_cycle(graph) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_a_lazy_import_is_an_edge_of_the_graph():
    """model.py <-> weights.py through an import inside build() was a circle; the graph sees
    imports in functions too."""
    source = "def f():\n    from common.core.spec import get_spec\n"
    path = ROOT / "tests" / ".lazy_probe.py"
    try:
        path.write_text(source)
        assert imports_of(path, "x", {"common.core.spec"}) == {"common.core.spec"}
    finally:
        path.unlink()


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_of_common_imports_only_the_layers_below_it(layer):
    wrong = {f"{name} imports {target}"
             for name, targets in import_graph().items()
             if name == layer or name.startswith(layer + ".")
             for target in targets
             if not any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[layer])}
    assert not wrong, sorted(wrong)


def test_core_and_formats_never_reach_a_framework_package():
    wrong = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                   if name.startswith(("common.core", "common.formats"))
                   for target in targets if target.startswith("resnet_"))
    assert not wrong


def test_the_blocks_files_import_nothing_of_the_project():
    """`blocks.py` is copied alone into coursework: it imports its framework and the standard
    library only."""
    graph = import_graph()
    for package in PACKAGES[1:]:
        assert graph[f"{package}.blocks"] == set(), package


CHILD = """
import importlib, json, pkgutil, sys
import common.core, common.formats
names = []
for package in (common.core, common.formats):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def test_core_and_formats_import_no_framework_in_a_child_process():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert {"common.core.spec", "common.core.data", "common.formats.libraries"} <= set(
        report["imported"])
    loaded = report["loaded"]
    assert not [m for m in loaded if m.split(".")[0] in FRAMEWORK_MODULES]
    assert not [m for m in loaded if m.startswith("resnet_")]
