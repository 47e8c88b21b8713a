"""Canonical weights: one flat, ordered mapping from framework-neutral names to NumPy arrays.

Names come from the spec (`stem.conv.weight`, `stage2.0.bn1.gamma`, `head.fc.bias`) and are the
same in all three frameworks. Layout: convolution kernels (out, in, kh, kw); dense weights
(out, in); BatchNorm `gamma`, `beta`, `running_mean`, `running_var`, each (channels,). All
arrays are float32. Files are `.safetensors` or `.npz` (read with `allow_pickle=False`), so
loading a weights file never runs code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from common.files import atomic_path
from common.oracle import layers
from common.spec import ResNetSpec

Weights = dict[str, np.ndarray]


class WeightsError(ValueError):
    """Weights do not fit the layout: the message lists what is missing, unexpected or mis-shaped."""


def canonical_layout(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name of `spec`, in forward order, with its shape."""
    return {f"{layer.path}.{name}": shape
            for layer in layers(spec, 2 ** (len(spec.stages) + 4))
            for name, shape in layer.params.items()}


def check_weights(spec: ResNetSpec, weights: Mapping[str, np.ndarray]) -> None:
    """Raise WeightsError naming every missing, unexpected and mis-shaped entry."""
    layout = canonical_layout(spec)
    missing = [n for n in layout if n not in weights]
    unexpected = [n for n in weights if n not in layout]
    misshaped = [f"{n}: expected {layout[n]}, got {tuple(np.shape(weights[n]))}"
                 for n in layout if n in weights and tuple(np.shape(weights[n])) != layout[n]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {'; '.join(misshaped)}")
    if problems:
        raise WeightsError(f"weights do not fit {spec.name!r}: " + " | ".join(problems))


def save_weights(weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write weights to `.safetensors` or `.npz`, atomically (temporary file, then rename)."""
    path = Path(path)
    arrays = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in weights.items()}
    if path.suffix not in (".safetensors", ".npz"):
        raise WeightsError(f"weights file: expected a .safetensors or .npz path, got {path}")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(tmp))
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path


def load_weights(path: str | os.PathLike) -> Weights:
    """Read a `.safetensors` or `.npz` weights file; never unpickles, so never runs code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file: expected an existing file, got {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {n: data[n] for n in data.files}
    raise WeightsError(f"weights file: expected a .safetensors or .npz path, got {path}")
