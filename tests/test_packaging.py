"""Packaging: `pip install .[all]` alone gives everything the commands in `common/` import,
the packages that ship the embedded data sets included."""
import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_modules(folder: Path) -> set[str]:
    """Top-level names of every module imported anywhere in folder's files (also inside
    functions), and of packages whose files are read with importlib.resources.files("...")."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "files"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    local = {"common", "resnet_torch", "resnet_tf", "resnet_mx", "resnet_jax"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def declared(extras=("torch", "tf", "mx", "onnx")) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def test_every_import_of_common_is_a_declared_dependency():
    modules = third_party_modules(ROOT / "common")
    assert {"numpy", "safetensors", "matplotlib", "sklearn", "mlxtend"} <= modules
    dists = packages_distributions()
    missing = {m: dists.get(m) for m in modules
               if not {_norm(d) for d in dists.get(m, [m])} & declared()}
    assert not missing, f"imported by common/ but not in pyproject's dependencies: {missing}"


def test_requirements_pin_every_declared_dependency():
    pinned = {_norm(line.split("==")[0]) for line in (ROOT / "requirements.txt").read_text()
              .splitlines() if "==" in line}
    every = declared(("torch", "tf", "mx", "jax", "onnx", "dev"))  # dev: the tests' own (nbclient, ...)
    assert every <= pinned, every - pinned


def test_the_gpu_requirements_are_the_cpu_ones_with_the_four_gpu_builds():
    def pins(name):
        return {line.split("==")[0]: line.split("==")[1].split()[0]
                for line in (ROOT / name).read_text().splitlines() if "==" in line}
    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    # JAX's GPU build is jaxlib plus jax[cuda12]'s two plugins, of jaxlib's release.
    plugins = {"jax-cuda12-plugin[with_cuda]", "jax-cuda12-pjrt"}
    assert {gpu.pop(k) for k in plugins} == {cpu["jaxlib"]}
    swapped = {"tensorflow-cpu": "tensorflow", "mxnet": "mxnet-cu117"}
    assert {swapped.get(k, k): v for k, v in cpu.items()} == gpu
    assert gpu["torch"] == cpu["torch"] and gpu["tensorflow"] == cpu["tensorflow-cpu"]
