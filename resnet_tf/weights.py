"""Keras <-> canonical weights. Keras keeps convolution kernels as (kh, kw, in, out) and dense
weights as (in, out); the canonical layout is (out, in, kh, kw) and (out, in). BatchNorm's names
differ (moving_mean, moving_variance); a canonical name spells the path to its layer:
`stage2.0.conv1.weight` is model.stage2[0].conv1.kernel. Keras's layout and names, and the files
of Keras applications, are in resnet_tf.library.

A `model` here is this package's ResNet (resnet_tf.model, which imports this module to
initialise it; this module does not import it)."""
from __future__ import annotations

import numpy as np
from tensorflow import keras

from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, fit_file,
                                 unreadable)
from resnet_tf.library import (KERAS_NAMES, is_keras_app, load_app, to_canonical_layout,
                               to_keras_layout)

__all__ = ["canonical_variables", "to_canonical_layout", "to_keras_layout", "to_canonical",
           "from_canonical", "save_native", "load_native"]


def canonical_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """Canonical name -> the Keras variable that holds it (in Keras's layout; see to_keras_layout)."""
    out = {}
    for name in canonical_layout(model.spec):
        *path, param = name.split(".")
        layer = model
        for step in path:
            layer = getattr(layer, step)
        out[name] = getattr(layer, KERAS_NAMES[param])
    return out


def to_canonical(model: keras.Model) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: to_canonical_layout(v.numpy().astype(np.float32))
            for n, v in canonical_variables(model).items()}


def from_canonical(model: keras.Model, weights: Weights) -> keras.Model:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    for name, variable in canonical_variables(model).items():
        variable.assign(to_keras_layout(weights[name]))
    return model


def save_native(model: keras.Model, path: str) -> None:
    """Keras's own format: `save_weights` to a `.weights.h5` file (HDF5, paths like
    stage2/0/conv1/vars)."""
    model.save_weights(path)


def load_native(model: keras.Model, path: str) -> keras.Model:
    """Load a `.weights.h5` file: arrays in HDF5, no pickle, so the file cannot run code. A
    damaged or foreign file is a WeightsError naming the path; the weights of another network
    give the counts of arrays on both sides and Keras's first complaint."""
    import h5py  # Keras's own HDF5 reader

    kind = "a Keras .weights.h5 file (save_weights)"
    try:
        with h5py.File(path, "r") as f:
            found = {}  # visititems stops at the first callback that returns anything
            f.visititems(lambda name, obj: found.__setitem__(name, obj.shape)
                         if isinstance(obj, h5py.Dataset) else None)
            names, arrays = list(found), list(found.values())
    except Exception as err:  # noqa: BLE001 - h5py's OSError and others for a damaged file
        raise unreadable(path, kind, err) from None
    if is_keras_app(names):  # Keras applications' file: the ecosystem's own format of Keras
        return from_canonical(model, load_app(model.spec, path))
    # Keras loads what matches and, for a deeper network's file, ignores the rest without a
    # word: the arrays are counted and their shapes compared first.
    expected = sorted(tuple(v.shape) for v in model.weights)
    said = ""
    if sorted(tuple(s) for s in arrays) == expected:
        try:
            model.load_weights(path)
        except Exception as err:  # noqa: BLE001 - Keras's errors for weights of another network
            said = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
    if said or sorted(tuple(s) for s in arrays) != expected:
        raise WeightsError(f"weights file {path}: expected {kind} of {model.spec.name!r} "
                           f"({len(expected)} arrays), got {len(arrays)} arrays that do not fit "
                           f"it" + (f" (Keras: {said})" if said else "")) from None
    fit_file(path, lambda: check_weights(model.spec, to_canonical(model)))
    return model
