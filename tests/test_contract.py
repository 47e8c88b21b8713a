"""The declared contract (common/frameworks/protocols.py) holds: every framework package provides
each protocol's members with the protocol's signatures, the three Adapter constructors are
identical and keyword-only after `weights`, each package agrees with its registry record, and
`common` reaches the packages only through the registry."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.core.init import init_weights
from common.core.spec import get_spec
from common.frameworks import EXPORTS, FRAMEWORKS, RECORDS, module, protocols, record
from tests.helpers import MODULES

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "common" / "frameworks" / "registry.py"
EMPTY = inspect.Parameter.empty


def members(proto: type) -> tuple[list[str], dict[str, object]]:
    """A protocol's declared attributes and its methods (without the `self` of the protocol)."""
    attributes = [n for n in vars(proto).get("__annotations__", {})]
    methods = {n: f for n, f in vars(proto).items() if inspect.isfunction(f)
               and f.__qualname__.startswith(f"{proto.__name__}.")  # not typing's own __init__
               and (not n.startswith("_") or n == "__init__")}
    return attributes, methods


def parameters(fn, drop_self: bool) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if drop_self else params


def same_default(a, b) -> bool:
    return a is b if EMPTY in (a, b) else type(a) is type(b) and a == b


def mismatches(declared, given, given_is_method: bool) -> list[str]:
    """How `given`'s signature departs from the protocol's `declared`, [] if it does not.
    Each declared parameter must be there, of the same kind and with the same default; required
    positional ones may be named in the framework's terms (`module`, `layer`, `block`) but sit
    at the same position; parameters the protocol does not name must have defaults. A protocol
    that takes *args and **kwargs declares the name only."""
    want = parameters(declared, drop_self=True)
    have = parameters(given, drop_self=given_is_method)
    if {p.kind for p in want} >= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
        return []
    out = []
    by_name = {p.name: p for p in have}
    for i, p in enumerate(want):
        positional_required = p.default is EMPTY and p.kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        q = have[i] if positional_required and i < len(have) else by_name.get(p.name)
        if q is None:
            out.append(f"{p.name}: missing")
        elif q.kind != p.kind:
            out.append(f"{p.name}: expected {p.kind.description}, got {q.kind.description}")
        elif not same_default(p.default, q.default):
            out.append(f"{p.name}: expected default {p.default!r}, got {q.default!r}")
    named = {p.name for p in want}
    for i, q in enumerate(have):
        extra = q.name not in named and i >= len(want)
        if extra and q.default is EMPTY and q.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                           inspect.Parameter.VAR_KEYWORD):
            out.append(f"{q.name}: expected a default (the protocol does not pass it)")
    return out


def check(proto: type, thing, what: str, methods_of_class: bool = False) -> list[str]:
    """Every departure of `thing` (a module or a class) from `proto`, each naming the member.
    A class's attributes are its instances': the caller checks those on an instance."""
    attributes, methods = members(proto)
    out = [f"{what}.{n}: missing" for n in attributes
           if not methods_of_class and not hasattr(thing, n)]
    for name, declared in methods.items():
        given = getattr(thing, name, None)
        if not callable(given):
            out.append(f"{what}.{name}: missing")
            continue
        out += [f"{what}.{name}({problem})" for problem in
                mismatches(declared, given, given_is_method=methods_of_class)]
    return out


def exists(fw: str, name: str) -> bool:
    return importlib.util.find_spec(f"{record(fw).package}.{name}") is not None


# --- the packages against the protocols ------------------------------------------------------

def test_the_package_protocol_covers_every_exported_name():
    attributes, methods = members(protocols.Package)
    assert set(EXPORTS) | {"LAYOUT"} == set(attributes) | set(methods)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_package_provides_the_package_protocol(fw):
    assert check(protocols.Package, MODULES[fw], record(fw).package) == []


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_adapter_provides_the_adapter_protocol(fw):
    adapter = MODULES[fw].Adapter
    assert check(protocols.Adapter, adapter, f"{fw} Adapter", methods_of_class=True) == []
    assert adapter.framework == fw
    spec = get_spec("cifar_resnet20")
    made = adapter(spec, init_weights(spec, 0))
    assert [n for n in members(protocols.Adapter)[0] if not hasattr(made, n)] == []


def test_the_adapter_constructors_are_identical_and_keyword_only_after_weights():
    signatures = {fw: inspect.signature(MODULES[fw].Adapter.__init__) for fw in FRAMEWORKS}
    shapes = {fw: [(p.name, p.kind, p.default) for p in s.parameters.values()]
              for fw, s in signatures.items()}
    first = shapes[FRAMEWORKS[0]]
    assert {fw: shape for fw, shape in shapes.items() if shape != first} == {}
    names = [name for name, _, _ in first]
    assert names[:3] == ["self", "spec", "weights"]
    assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in first[3:]), first
    assert mismatches(protocols.Adapter.__init__, MODULES[FRAMEWORKS[0]].Adapter.__init__,
                      given_is_method=True) == []


@pytest.mark.parametrize("name", sorted(protocols.MODULES))
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_module_of_the_contract_provides_its_protocol(fw, name):
    if not any(exists(other, name) for other in FRAMEWORKS):
        pytest.skip(f"no package has `{name}` yet")  # being written: then every package must
    assert exists(fw, name), f"{record(fw).package}.{name}: missing"
    assert check(protocols.MODULES[name], module(fw, name), f"{record(fw).package}.{name}") == []


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_engine_class_provides_the_engine_methods(fw):
    engine = module(fw, "distributed").Engine
    # Its attributes (workers, rank, sync_bn) are set on the instance, which needs a group.
    assert check(protocols.Engine, engine, f"{fw} Engine", methods_of_class=True) == []


def test_the_signature_check_sees_a_changed_default():
    """The check itself: a package whose Adapter defaults differ is caught."""
    def __init__(self, spec, weights, *, lr=0.1, optimizer=None, dtype="float32",
                 precision="fp32", compile=False, channels_last=False, device="auto",
                 engine=None):
        pass

    def positional(self, spec, weights, lr=0.05, optimizer=None, dtype="float32",
                   precision="fp32", compile=False, channels_last=False, device="auto",
                   engine=None):
        pass
    assert mismatches(protocols.Adapter.__init__, __init__, True) == [
        "lr: expected default 0.05, got 0.1"]
    assert "lr: expected keyword-only, got positional or keyword" in mismatches(
        protocols.Adapter.__init__, positional, True)


# --- the packages against their records ------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_record_agrees_with_its_package(fw):
    r = record(fw)
    assert r.key == fw and MODULES[fw].__name__ == r.package
    assert MODULES[fw].LAYOUT == r.layout
    assert module(fw, "devices").NAME == r.short


def test_every_devices_hook_runs_before_its_framework_loads():
    """crosscheck's GPU hooks, in a fresh process: each runs while its framework is not loaded
    yet, so that MXNet's determinism switches are in the environment before MXNet starts."""
    code = ("import os\n"
            "from common.commands.crosscheck import before_gpu_crosscheck\n"
            "from resnet_mx.devices import DETERMINISM\n"
            "before_gpu_crosscheck()\n"
            "print({k: os.environ.get(k) for k in DETERMINISM})\n"
            "assert all(os.environ.get(k) == v for k, v in DETERMINISM.items())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MXNET_", "NVIDIA_TF32"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# --- common reaches the packages only through the registry ------------------------------------

def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def package_names_in(path: Path) -> list[str]:
    """Where `path` names a framework package in code: a string (not a docstring) that is a
    package or starts with one (`resnet_mx.devices`, `resnet_tf/blocks.py`), or an f-string
    that makes one (`f"resnet_{fw}.devices"`)."""
    packages = tuple(r.package for r in RECORDS.values())
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree)
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and str(head.value).endswith("resnet_"):
                found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in skip
              and any(node.value == p or node.value.startswith((f"{p}.", f"{p}/"))
                      for p in packages)):
            found.append((node.lineno, repr(node.value)))
    return [f"{where}:{line}: {text}" for line, text in sorted(found)]


def test_common_names_no_framework_package_outside_the_registry():
    found = [hit for path in sorted((ROOT / "common").rglob("*.py")) if path != REGISTRY
             for hit in package_names_in(path)]
    assert found == [], "use common.frameworks.record/module/load:\n" + "\n".join(found)


def test_the_scan_finds_a_package_name(tmp_path):
    """The scan itself: each way of naming a package is found, a docstring is not."""
    path = tmp_path / "probe.py"
    source = ('"""resnet_mx.devices in a docstring is prose."""\n'
              'from importlib import import_module\n'
              'a = import_module(f"resnet_{fw}.devices")\n'
              'b = import_module("resnet_mx.devices")\n'
              'c = "resnet_torch"\n'
              'd = "resnet_tf/blocks.py"\n')
    path.write_text(source)
    assert [hit.split(": ", 1)[1] for hit in package_names_in(path)] == [
        "f'resnet_{fw}.devices'", "'resnet_mx.devices'", "'resnet_torch'",
        "'resnet_tf/blocks.py'"]
