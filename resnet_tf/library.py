"""Keras's files and arrays, as Keras itself and its applications write them: the layout of
Keras's arrays and the names of its variables (which this package's own weights share,
resnet_tf/weights.py), HDF5 containers (`.h5`, `.weights.h5`), and the files of Keras
applications (keras.applications.ResNet50/101/152 and V2) as a weights format
(`FORMATS["keras"]`).

Importing this module imports no framework: h5py and TensorFlow load when a file is read or
written (through resnet_tf.devices, which loads MXNet first where it is installed).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Collection

import numpy as np

from common.core.spec import ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, fit_file,
                                 unreadable)
from common.formats.libraries import Format, Shapes, written_atomically

if TYPE_CHECKING:
    from tensorflow import keras

# A canonical parameter's name -> the Keras variable's (BatchNorm's statistics differ).
KERAS_NAMES = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
               "running_mean": "moving_mean", "running_var": "moving_variance"}


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


def h5_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every dataset of an HDF5 file (`.weights.h5`, a Keras 2 `.h5`)."""
    import h5py
    out: dict[str, tuple[int, ...]] = {}
    with h5py.File(str(path), "r") as f:
        f.visititems(lambda k, obj: out.__setitem__(k, tuple(obj.shape))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# --- Keras applications' files (keras.applications.ResNet50/101/152) -----------------------

def is_keras_app(names: Collection[str]) -> bool:
    """A Keras 3 file of a functional model names layers by class (layers/conv2d_12/vars/0); a
    Keras 2 .h5 by Keras's layer names (conv2_block1_1_conv/...). The project's own files name
    its parts (layers/stem, head/fc)."""
    return any(n.startswith(("layers/conv2d", "layers/batch_normalization"))
               or "conv2_block1_" in n for n in names)


def keras_classes(shapes: Shapes) -> int | None:
    heads = [s for n, s in shapes.items() if len(s) == 1 and
             (n.startswith("layers/dense/") or "predictions" in n)]
    return int(heads[0][0]) if heads else None


_APP_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


def app_network(spec: ResNetSpec) -> keras.Model:
    """Keras applications' own network for a keras_resnet* spec (no weights downloaded)."""
    depth = _APP_DEPTHS.get(tuple(s.blocks for s in spec.stages))
    if depth is None or not spec.name.startswith("keras_"):
        raise WeightsError(f"Keras applications file: expected a keras_resnet50/101/152 "
                           f"(or _v2) preset, got {spec.name!r}")
    import resnet_tf.devices  # noqa: F401 - MXNet first, then TensorFlow with its device settings
    from tensorflow import keras
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
        out[name] = getattr(model.get_layer(layers[layer]), KERAS_NAMES[param])
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


# The containers this package reads (common.formats.libraries.stored_shapes), and its library's
# formats (common.commands.convert offers them beside the project's own).
CONTAINERS = {".h5": h5_shapes}
FORMATS: dict[str, Format] = {
    "keras": Format("Keras applications weights (keras_resnet* presets)", (".weights.h5", ".h5"),
                    detect=is_keras_app, read=lambda path, spec: load_app(spec, str(path)),
                    write=written_atomically(save_app), classes=keras_classes,
                    # ResNet50/101/152: "caffe"; ResNet*V2 "tf" (preprocess_input of each)
                    convention=lambda spec: "tf" if spec.preact else "caffe"),
}
