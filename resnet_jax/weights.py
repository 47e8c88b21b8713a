"""Flax <-> canonical weights. Flax keeps convolution kernels as (kh, kw, in, out) (HWIO) and
dense kernels as (in, out); the canonical layout is (out, in, kh, kw) and (out, in). Names:
a canonical `stage2.0.conv1.weight` is variables["params"]["stage2"]["0"]["conv1"]["kernel"];
BatchNorm's gamma and beta are Flax's `scale` and `bias` (in "params"), its running mean and
variance `mean` and `var` (in "batch_stats").

The native file is Flax's own serialisation of the variables (`flax.serialization`, msgpack):
arrays and nested dicts, read with `msgpack_restore`, which builds no objects but those, so
loading a file never runs code.

A `model` here is this package's Network (resnet_jax.model, which imports this module to
initialise it; this module does not import it).
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from common.core.files import atomic_path
from common.core.weights import Weights, canonical_layout, check_weights, fit_file, unreadable

# canonical parameter name -> (Flax collection, Flax leaf name)
FLAX_NAMES = {"weight": ("params", "kernel"), "bias": ("params", "bias"),
              "gamma": ("params", "scale"), "beta": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
CANONICAL_NAMES = {v: k for k, v in FLAX_NAMES.items() if k != "beta"}
NATIVE = "a Flax msgpack file (flax.serialization of the variables)"


def to_flax_layout(a: np.ndarray) -> np.ndarray:
    """A canonical array in Flax's layout: OIHW kernels to HWIO, (out, in) to (in, out)."""
    if a.ndim == 4:
        return np.transpose(a, (2, 3, 1, 0))
    return a.T if a.ndim == 2 else a


def to_canonical_layout(a: np.ndarray) -> np.ndarray:
    """A Flax array in the canonical layout: HWIO kernels to OIHW, (in, out) to (out, in)."""
    if a.ndim == 4:
        return np.transpose(a, (3, 2, 0, 1))
    return a.T if a.ndim == 2 else a


def flax_path(name: str) -> tuple[str, ...]:
    """The path of a canonical name in Flax's variables: stage2.0.bn1.gamma ->
    ("params", "stage2", "0", "bn1", "scale")."""
    *layer, param = name.split(".")
    collection, leaf = FLAX_NAMES[param]
    return (collection, *layer, leaf)


def canonical_name(path: tuple[str, ...]) -> str:
    """The canonical name of a path in Flax's variables (the inverse of flax_path); a leaf this
    package does not write keeps its own name, so that it shows as unexpected."""
    collection, *layer, leaf = path
    param = CANONICAL_NAMES.get((collection, leaf), leaf)
    if (collection, leaf) == ("params", "bias") and _is_bn(layer):
        param = "beta"
    return ".".join([*layer, param])


def _is_bn(layer: list[str]) -> bool:
    return bool(layer) and (layer[-1].startswith("bn") or layer[-1] == "input_bn")


def to_canonical(model) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    flat = traverse_util.flatten_dict(model.variables)
    return {name: np.array(to_canonical_layout(np.asarray(flat[flax_path(name)])), np.float32)
            for name in canonical_layout(model.spec)}


def variables_of(weights: Weights, names, dtype=jnp.float32) -> dict:
    """Flax's variables dict holding canonical `weights` (names in `names`' order), as JAX
    arrays of `dtype`."""
    flat = {flax_path(n): jnp.asarray(to_flax_layout(np.asarray(weights[n], np.float32)), dtype)
            for n in names}
    return traverse_util.unflatten_dict(flat)


def from_canonical(model, weights: Weights):
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    model.variables = variables_of(weights, canonical_layout(model.spec))
    return model


def save_native(model, path: str) -> None:
    """Flax's own format: `flax.serialization.msgpack_serialize` of the variables (NumPy
    arrays in nested dicts), written atomically."""
    state = serialization.to_state_dict(model.variables)
    data = serialization.msgpack_serialize(
        traverse_util.unflatten_dict({k: np.asarray(v) for k, v in
                                      traverse_util.flatten_dict(state).items()}))
    with atomic_path(Path(path), len(data)) as tmp:
        tmp.write_bytes(data)


def load_native(model, path: str):
    """Load a Flax msgpack file: `msgpack_restore` reads nested dicts of arrays and builds
    nothing else, so the file cannot run code. A damaged or foreign file is a WeightsError
    naming the path; the variables of another network list what is missing, unexpected or
    mis-shaped, in canonical names."""
    try:
        state = serialization.msgpack_restore(Path(path).read_bytes())
        flat = traverse_util.flatten_dict(state)
    except Exception as err:  # noqa: BLE001 - msgpack's own errors, or no such file
        raise unreadable(path, NATIVE, err) from None
    if not all(len(p) >= 2 and isinstance(v, np.ndarray) for p, v in flat.items()):
        raise unreadable(path, NATIVE)  # msgpack, but not of a network's variables
    weights = {canonical_name(p): to_canonical_layout(a) for p, a in flat.items()}
    return fit_file(path, lambda: from_canonical(model, weights))
