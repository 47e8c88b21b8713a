"""The frameworks, one record each: the only place that names a framework package.

Everything in `common` reaches a framework package through `load(key)` (the package, with its
framework imported) or `module(key, name)` (one of its modules by its contract name, such as
"devices", "launch" or "export"; light modules import their framework only when used). A new
framework is one record here plus its package (docs/architecture.md says what it provides).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType

from common.core.errors import Error


@dataclass(frozen=True)
class Framework:
    """What `common` knows of a framework without importing it.

    key: the short name on the command line (`--framework tf`); name: the display name in
    reports and tables; short: the framework's own name in messages ("TensorFlow sees no GPU");
    package: the Python package that implements the contract; layout: the layout its models
    take ("NCHW" or "NHWC"), equal to the package's `LAYOUT`; distribution: the pip
    distribution that installs the framework; imports: the module that imports it;
    notebook: the file stem of its notebook in notebooks/ (resnet_<stem>.ipynb)."""
    key: str
    name: str
    short: str
    package: str
    layout: str
    distribution: str
    imports: str
    notebook: str


RECORDS: dict[str, Framework] = {f.key: f for f in (
    Framework("torch", "PyTorch", "PyTorch", "resnet_torch", "NCHW", "torch", "torch",
              "pytorch"),
    Framework("tf", "TensorFlow/Keras", "TensorFlow", "resnet_tf", "NHWC", "tensorflow-cpu",
              "tensorflow", "tensorflow"),
    Framework("mx", "MXNet Gluon", "MXNet", "resnet_mx", "NCHW", "mxnet", "mxnet", "mxnet"),
    Framework("jax", "JAX/Flax", "JAX", "resnet_jax", "NHWC", "jax", "jax", "jax"),
)}

FRAMEWORKS: tuple[str, ...] = tuple(RECORDS)
NAMES: dict[str, str] = {key: f.name for key, f in RECORDS.items()}


def record(framework: str) -> Framework:
    """The record of `framework`; an unknown key is an Error naming the known ones."""
    if framework not in RECORDS:
        raise Error(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
    return RECORDS[framework]


def module(framework: str, name: str) -> ModuleType:
    """The module `name` of `framework`'s package (resnet_<fw>.<name>), imported as it is: the
    contract's light modules (launch, devices' hooks) do not import the framework."""
    return importlib.import_module(f"{record(framework).package}.{name}")


def load(framework: str) -> ModuleType:
    """The package of `framework`, with its framework imported (the packages import it only on
    first use); a failed import is an error, never a skip."""
    package = importlib.import_module(record(framework).package)
    package.Adapter  # noqa: B018 - imports the framework now
    return package


def import_first(modules: tuple[str, ...], before: str = "tensorflow") -> None:
    """Import those of `modules` that are installed and not yet imported, in order, so that they
    load before `before` (MXNet before TensorFlow, see resnet_tf/__init__.py). Nothing when
    `before` is loaded already: loading them after it is the crash this avoids."""
    if before in sys.modules:
        return
    for name in modules:
        if name not in sys.modules and importlib.util.find_spec(name):
            importlib.import_module(name)
