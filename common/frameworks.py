"""The three framework packages by name, and the one place that converts between layouts.

This module imports no framework itself: `load("tf")` imports `resnet_tf` when asked.
Every package declares `LAYOUT` ("NCHW" or "NHWC"); data and shapes in `common` are NCHW.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import numpy as np

FRAMEWORKS = ("torch", "tf", "mx")
NAMES = {"torch": "PyTorch", "tf": "TensorFlow/Keras", "mx": "MXNet Gluon"}


def load(framework: str) -> ModuleType:
    """The package `resnet_<framework>`, with its framework imported (the packages import it
    only on first use); a failed import is an error, never a skip."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
    module = importlib.import_module(f"resnet_{framework}")
    module.Adapter  # noqa: B018 - imports the framework now
    return module


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW batch in `layout` (NHWC for TensorFlow); other ranks pass unchanged."""
    if layout == "NHWC" and np.ndim(x) == 4:
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    return x


def shape_as_nchw(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A shape in `layout` written as NCHW, so shapes from all frameworks compare directly."""
    shape = tuple(int(d) for d in shape)
    if layout == "NHWC" and len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    return shape


# Every framework package's public names and the module of the package that defines each.
EXPORTS = {"Residual": "blocks", "resnet_block": "blocks", "Bottleneck": "blocks",
           "PreActResidual": "blocks", "PreActBottleneck": "blocks", "Adapter": "adapter",
           "ResNet": "model", "build": "model", "param_counts": "model",
           "part_param_counts": "model", "part_shapes": "model", "resnet18": "model",
           "set_threads": "model", "get_threads": "model", "from_canonical": "weights",
           "load_native": "weights", "save_native": "weights", "to_canonical": "weights"}


def import_first(modules: tuple[str, ...], before: str = "tensorflow") -> None:
    """Import those of `modules` that are installed and not yet imported, in order, so that they
    load before `before` (MXNet before TensorFlow, see resnet_tf/__init__.py). Nothing when
    `before` is loaded already: loading them after it is the crash this avoids."""
    if before in sys.modules:
        return
    for module in modules:
        if module not in sys.modules and importlib.util.find_spec(module):
            importlib.import_module(module)


def lazy_exports(package: str, where: dict[str, str], first: tuple[str, ...] = ()):
    """__getattr__ and __dir__ for a framework package that imports its submodules (and so
    its framework) only when one of its names is first used: `python -m resnet_X.train --help`
    answers at once, and --threads can still be set before the framework loads. `first`:
    installed modules to import before the framework (see resnet_tf)."""
    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import_first(first)
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(where))
    return __getattr__, __dir__
