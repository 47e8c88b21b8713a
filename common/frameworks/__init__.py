"""The framework packages: their records (registry.py), the contract they fulfil
(protocols.py), and the one place that converts between layouts.

Nothing here imports a framework: `load("tf")` imports `resnet_tf` when asked.
Every package declares `LAYOUT` ("NCHW" or "NHWC"); data and shapes in `common` are NCHW.
"""
from __future__ import annotations

import importlib

import numpy as np

from common.frameworks.registry import (FRAMEWORKS, NAMES, RECORDS, Framework, import_first,
                                        load, module, record)

__all__ = ["FRAMEWORKS", "NAMES", "RECORDS", "Framework", "import_first", "load", "module",
           "record", "to_layout", "shape_as_nchw", "EXPORTS", "lazy_exports"]


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
           "set_threads": "model", "get_threads": "model", "features": "model",
           "forward_features": "model", "reset_classifier": "model", "from_canonical": "weights",
           "load_native": "weights", "save_native": "weights", "to_canonical": "weights"}


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
