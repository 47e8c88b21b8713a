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

from common.core.errors import Error
from common.core.files import atomic_path, path_error
from common.core.oracle import layers
from common.core.spec import ResNetSpec

Weights = dict[str, np.ndarray]


class WeightsError(Error):
    """Weights do not fit the layout: the message lists what is missing, unexpected or mis-shaped."""


def canonical_layout(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name of `spec`, in forward order, with its shape."""
    return {f"{layer.path}.{name}": shape
            for layer in layers(spec, 2 ** (len(spec.stages) + 4))
            for name, shape in layer.params.items()}


def few_names(names: list[str], most: int = 5) -> str:
    """A few names and the count, so that a wrong file does not print thousands of names."""
    shown = ", ".join(names[:most])
    return f"{len(names)}: {shown}" + (f", ... ({len(names) - most} more)" if len(names) > most
                                       else "")


def check_values(name: str, array) -> None:
    """Raise WeightsError unless `array` holds finite floating-point values (and, for a running
    variance, no negative one); the message names the tensor and the first bad value."""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.floating):
        raise WeightsError(f"{name}: expected a floating-point dtype, got {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())
    if not finite:
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise WeightsError(f"{name}: expected finite values, got {a[pos]} at position {pos}")
    if name.endswith(".running_var") and a.size and a.min() < 0:
        pos = tuple(int(i) for i in np.argwhere(a < 0)[0])
        raise WeightsError(f"{name}: expected values >= 0 (a variance), got {a[pos]} at "
                           f"position {pos}")


def layout_problems(layout: Mapping[str, tuple[int, ...]],
                    weights: Mapping[str, object]) -> list[str]:
    """What keeps `weights` (name -> array or shape) from fitting `layout` (name -> shape): the
    missing, unexpected and mis-shaped names, a few of each with their counts; [] if it fits.
    Names are whatever the layout uses: canonical ones, or a foreign file's (torchvision's)."""
    missing = [n for n in layout if n not in weights]
    unexpected = [n for n in weights if n not in layout]
    misshaped = [f"{n}: expected {layout[n]}, got {tuple(np.shape(weights[n]))}"
                 for n in layout if n in weights and tuple(np.shape(weights[n])) != layout[n]]
    problems = []
    if missing:
        problems.append(f"missing {few_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {few_names(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {'; '.join(misshaped[:5])}"
                        + (f"; ... ({len(misshaped) - 5} more)" if len(misshaped) > 5 else ""))
    return problems


def check_weights(spec: ResNetSpec, weights: Mapping[str, np.ndarray]) -> None:
    """Raise WeightsError naming the missing, unexpected and mis-shaped entries (a few of each,
    with their counts), or the first tensor with a non-float dtype, a NaN or an infinity, or a
    negative running variance."""
    layout = canonical_layout(spec)
    problems = layout_problems(layout, weights)
    if problems:
        raise WeightsError(f"weights do not fit {spec.name!r}: " + " | ".join(problems))
    for name in layout:
        check_values(name, weights[name])


def unreadable(path, kind: str, err: BaseException | None = None) -> WeightsError:
    """The error for a weights file that its reader could not read: the path, the format
    expected and (briefly) what the reader said. A reader's message that advises loading the
    file with pickle (torch.load's `weights_only=False`) is left out: never unpickle a file
    you did not write."""
    lines = [line.strip() for line in str(err or "").splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # MXNet's C++ backtrace: its last line
        lines = lines[-1:]
    first = lines[0].removeprefix(f"{type(err).__name__}: ").split(". ")[0][:160] if lines else ""
    said = "" if err is None else (f"{type(err).__name__}: {first}" if first
                                   else type(err).__name__)
    if "weights_only" in said or "pickle" in said.lower():
        said = type(err).__name__
    return WeightsError(f"weights file {path}: expected {kind}, could not read it"
                        + (f" ({said})" if said else "") + "; is it truncated or of another format?")


def fit_file(path, load):
    """load() (a framework's from_canonical of a file's arrays), with the file's path put before
    a WeightsError: which file does not fit is the first thing a user needs to know."""
    try:
        return load()
    except WeightsError as err:
        raise WeightsError(f"weights file {path}: {err}") from None


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
        raise path_error(FileNotFoundError, f"weights file: expected an existing file, got {path}",
                         path)
    if path.suffix not in (".safetensors", ".npz"):
        raise WeightsError(f"weights file: expected a .safetensors or .npz path, got {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            return dict(load_file(str(path)))
        with np.load(path, allow_pickle=False) as data:
            return {n: data[n] for n in data.files}
    except Exception as err:  # noqa: BLE001 - each reader has its own errors for a bad file
        kind = "safetensors" if path.suffix == ".safetensors" else "npz (zip of .npy arrays)"
        raise unreadable(path, f"a {kind} file", err) from None
