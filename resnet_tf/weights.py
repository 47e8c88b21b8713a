"""Keras <-> canonical weights. Keras keeps convolution kernels as (kh, kw, in, out) and dense
weights as (in, out); the canonical layout is (out, in, kh, kw) and (out, in). BatchNorm's names
differ (moving_mean, moving_variance); a canonical name spells the path to its layer:
`stage2.0.conv1.weight` is model.stage2[0].conv1.kernel."""
from __future__ import annotations

import numpy as np
from tensorflow import keras

from common.weights import Weights, canonical_layout, check_weights
from resnet_tf.model import ResNet

_KERAS_NAMES = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
                "running_mean": "moving_mean", "running_var": "moving_variance"}


def canonical_variables(model: ResNet) -> dict[str, keras.Variable]:
    """Canonical name -> the Keras variable that holds it (in Keras's layout; see to_keras_layout)."""
    out = {}
    for name in canonical_layout(model.spec):
        *path, param = name.split(".")
        layer = model
        for step in path:
            layer = getattr(layer, step)
        out[name] = getattr(layer, _KERAS_NAMES[param])
    return out


def to_canonical_layout(array: np.ndarray) -> np.ndarray:
    """A Keras kernel (kh, kw, in, out) or dense weight (in, out) in the canonical layout
    (out, in, kh, kw) or (out, in), as a copy of the same dtype; vectors are copied as they are."""
    array = np.asarray(array)
    if array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:
        array = array.T
    return np.array(array, order="C")


def to_keras_layout(array: np.ndarray) -> np.ndarray:
    """The inverse of to_canonical_layout."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def to_canonical(model: ResNet) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: to_canonical_layout(v.numpy().astype(np.float32))
            for n, v in canonical_variables(model).items()}


def from_canonical(model: ResNet, weights: Weights) -> ResNet:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    for name, variable in canonical_variables(model).items():
        variable.assign(to_keras_layout(weights[name]))
    return model


def save_native(model: ResNet, path: str) -> None:
    """Keras's own format: `save_weights` to a `.weights.h5` file (HDF5, paths like
    stage2/0/conv1/vars)."""
    model.save_weights(path)


def load_native(model: ResNet, path: str) -> ResNet:
    """Load a `.weights.h5` file: arrays in HDF5, no pickle, so the file cannot run code."""
    model.load_weights(path)
    return model
