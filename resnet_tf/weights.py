"""Keras <-> canonical weights. Keras keeps convolution kernels as (kh, kw, in, out) and dense
weights as (in, out); the canonical layout is (out, in, kh, kw) and (out, in). BatchNorm's names
differ (moving_mean, moving_variance); a canonical name spells the path to its layer:
`stage2.0.conv1.weight` is model.stage2[0].conv1.kernel."""
from __future__ import annotations

import numpy as np
from tensorflow import keras

from common.core.spec import ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, fit_file,
                            unreadable)
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
    """Load a `.weights.h5` file: arrays in HDF5, no pickle, so the file cannot run code. A
    damaged or foreign file is a WeightsError naming the path; the weights of another network
    give the counts of arrays on both sides and Keras's first complaint."""
    import h5py  # Keras's own HDF5 reader

    from common.formats.libraries import is_keras_app

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


# --- Keras applications' files (keras.applications.ResNet50/101/152) -----------------------

_APP_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


def app_network(spec: ResNetSpec) -> keras.Model:
    """Keras applications' own network for a keras_resnet* spec (no weights downloaded)."""
    depth = _APP_DEPTHS.get(tuple(s.blocks for s in spec.stages))
    if depth is None or not spec.name.startswith("keras_"):
        raise WeightsError(f"Keras applications file: expected a keras_resnet50/101/152 "
                           f"(or _v2) preset, got {spec.name!r}")
    make = getattr(keras.applications, f"ResNet{depth}" + ("V2" if spec.preact else ""))
    return make(weights=None, classes=spec.num_classes, input_shape=(64, 64, spec.in_channels),
                classifier_activation=None)


def app_variables(model: keras.Model, spec: ResNetSpec) -> dict[str, keras.Variable]:
    """Canonical name -> the application's variable, by Keras's layer names: conv1_conv,
    conv1_bn, conv{stage + 1}_block{block + 1}_{1,2,3}_conv/_bn (the branch), _0_conv/_bn (the
    projection), predictions (the dense head). In V2 each BN comes before its conv: the
    block's preact_bn is bn1, _1_bn is bn2, _2_bn is bn3, and post_bn is the head's."""
    layers = {"stem.conv": "conv1_conv", "stem.bn": "conv1_bn", "head.fc": "predictions",
              "head.bn": "post_bn"}
    for i, stage in enumerate(spec.stages, start=1):
        for j in range(stage.blocks):
            at = f"conv{i + 1}_block{j + 1}_"
            for k, keras_k in ((1, 1), (2, 2), (3, 3), (4, 0)):
                layers[f"stage{i}.{j}.conv{k}"] = f"{at}{keras_k}_conv"
                layers[f"stage{i}.{j}.bn{k}"] = (f"{at}{keras_k}_bn" if not spec.preact else
                                                 f"{at}preact_bn" if k == 1 else f"{at}{k - 1}_bn")
    out = {}
    for name in canonical_layout(spec):
        layer, param = name.rsplit(".", 1)
        out[name] = getattr(model.get_layer(layers[layer]), _KERAS_NAMES[param])
    return out


def load_app(spec: ResNetSpec, path: str) -> Weights:
    """Canonical weights from a Keras applications weights file (`.weights.h5`, or a legacy
    Keras 2 `.h5` such as resnet50_weights_tf_dim_ordering_tf_kernels.h5): the application's
    own network loads it, then its variables are read by layer name."""
    model = app_network(spec)
    try:
        model.load_weights(path)
    except Exception as err:  # noqa: BLE001 - Keras's and h5py's errors for a bad file
        raise unreadable(path, f"a Keras applications weights file of {spec.name!r}",
                         err) from None
    weights = {n: to_canonical_layout(v.numpy().astype(np.float32))
               for n, v in app_variables(model, spec).items()}
    return fit_file(path, lambda: check_weights(spec, weights) or weights)


def save_app(spec: ResNetSpec, weights: Weights, path: str) -> None:
    """A `.weights.h5` file that keras.applications' own network loads with load_weights."""
    check_weights(spec, weights)
    model = app_network(spec)
    for name, variable in app_variables(model, spec).items():
        variable.assign(to_keras_layout(weights[name]))
    model.save_weights(path)
