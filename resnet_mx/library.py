"""Gluon's files, as MXNet and its model zoo write them: `.params` containers (mx.nd.save,
save_parameters; read in either of MXNet's modes), and the files of the Gluon model zoo
(mxnet.gluon.model_zoo.vision.resnet*_v1 and _v2) as a weights format (`FORMATS["gluon"]`).
The model zoo's networks use classic operators only, so they are built and run in the classic
mode (resnet_mx.modes).

Importing this module imports no framework: MXNet loads when a file is read or written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Collection

import numpy as np

from common.core.spec import ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, few_names,
                                 fit_file, unreadable)
from common.formats.libraries import Format, Shapes, written_atomically

if TYPE_CHECKING:
    from mxnet import gluon


def load_mx_params(path: str | Path) -> dict | list:
    """The arrays of an MXNet `.params` file (mx.nd.save, save_parameters) as classic NDArrays,
    whichever mode the file was written in and whichever mode the caller is in. MXNet stamps a
    file with the shape semantics in force when it was saved (npx.set_np() turns NumPy's on) and
    reads it only under the same: so it is read under the classic one, then under NumPy's.
    Raises MXNet's error for the classic reading when neither reads it (a damaged file)."""
    import mxnet as mx
    from mxnet.util import np_array, np_shape
    with np_array(False):  # nd.load makes classic arrays; only the shape semantics matter
        try:
            with np_shape(False):
                return mx.nd.load(str(path))
        except mx.MXNetError as err:
            first = err
        try:
            with np_shape(True):
                return mx.nd.load(str(path))
        except mx.MXNetError:
            raise first from None


def params_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of a `.params` file (none for a list of unnamed arrays)."""
    arrays = load_mx_params(path)
    return {k: tuple(a.shape) for k, a in arrays.items()} if isinstance(arrays, dict) else {}


# --- the Gluon model zoo's files (mxnet.gluon.model_zoo.vision.resnet*_v1 and _v2) ----------

def is_gluon_zoo(names: Collection[str]) -> bool:
    return any(re.match(r"(arg:|aux:)?(resnetv\d+_)+", n) or n.startswith("features.")
               for n in names)


def gluon_classes(shapes: Shapes) -> int | None:
    heads = [s for n, s in shapes.items() if len(s) == 1 and
             (n.endswith("dense0_bias") or n == "output.bias")]
    return int(heads[0][0]) if heads else None


_ZOO_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
               ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
               ("bottleneck", (3, 8, 36, 3)): 152}


def zoo_network(spec: ResNetSpec) -> gluon.HybridBlock:
    """The model zoo's own network for a gluon_resnet*_v1/_v2 spec, parameters initialised.
    Classic NDArrays in both modes: its layers call classic operators (F.Activation), so
    callers use it inside modes.classic()."""
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    from resnet_mx.modes import classic
    depth = _ZOO_DEPTHS.get((spec.block, tuple(s.blocks for s in spec.stages)))
    if depth is None or spec.name.split("_")[0] != "gluon":
        raise WeightsError(f"Gluon model zoo file: expected a gluon_resnet*_v1/_v2 preset, got "
                           f"{spec.name!r}")
    with classic():
        net = vision.get_resnet(2 if spec.preact else 1, depth, classes=spec.num_classes)
        net.initialize()
        net(mx.nd.zeros((1, spec.in_channels, 32, 32)))  # shapes of deferred parameters
    return net


def zoo_parameters(net: gluon.HybridBlock, spec: ResNetSpec) -> dict[str, gluon.Parameter]:
    """Canonical name -> the zoo network's parameter, walking its structure: v1 keeps each
    block's layers in `body` (conv, BN, ReLU, ...) and its projection in `downsample`; v2 names
    them (bn1, conv1, ..., downsample) after an input BatchNorm in features[0]."""
    f, out = net.features, {}
    v2 = spec.preact
    stem = {"stem.input_bn": f[0], "stem.conv": f[1], "stem.bn": f[2]} if v2 else \
        {"stem.conv": f[0], "stem.bn": f[1]}
    first_stage = 5 if v2 else 4
    layers = dict(stem, **{"head.fc": net.output}, **({"head.bn": f[-4]} if v2 else {}))
    bottleneck = spec.block == "bottleneck"
    n_convs = 3 if bottleneck else 2
    for i in range(len(spec.stages)):
        for j, block in enumerate(f[first_stage + i]):
            at = f"stage{i + 1}.{j}."
            if v2:
                for k in range(1, n_convs + 1):
                    layers[f"{at}bn{k}"] = getattr(block, f"bn{k}")
                    layers[f"{at}conv{k}"] = getattr(block, f"conv{k}")
                if block.downsample is not None:
                    layers[f"{at}conv{n_convs + 1}"] = block.downsample
            else:
                for k in range(n_convs):  # body: conv, BN, ReLU, conv, BN[, ReLU, conv, BN]
                    layers[f"{at}conv{k + 1}"] = block.body[3 * k]
                    layers[f"{at}bn{k + 1}"] = block.body[3 * k + 1]
                if block.downsample is not None:
                    layers[f"{at}conv{n_convs + 1}"] = block.downsample[0]
                    layers[f"{at}bn{n_convs + 1}"] = block.downsample[1]
    for name in canonical_layout(spec):
        layer, param = name.rsplit(".", 1)
        if layer not in layers:
            raise WeightsError(f"Gluon model zoo: expected a layer for {name}, found none")
        out[name] = getattr(layers[layer], param)
    return out


def _zoo_key(name: str) -> str:
    """A parameter's name without the network's counter prefix: resnetv10_stage1_conv0_weight
    and resnetv13_stage1_conv0_weight are the same parameter of two instances."""
    return re.sub(r"^(resnetv\d+_)+", "", name.split(":", 1)[-1])


def load_zoo(spec: ResNetSpec, path: str) -> Weights:
    """Canonical weights from a model zoo `.params` file, by its names: the zoo's own
    (`resnetv10_conv0_weight`, as its pretrained files have them) or Gluon's structural ones
    (`features.0.weight`, as save_parameters writes them)."""
    net = zoo_network(spec)
    try:
        arrays = load_mx_params(path)
    except Exception as err:  # noqa: BLE001 - MXNetError and others for a damaged file
        raise unreadable(path, "a Gluon model zoo .params file", err) from None
    by_key = {_zoo_key(p.name): p for p in net.collect_params().values()}
    by_key |= net._collect_params_with_prefix()  # noqa: SLF001 - Gluon's structural names
    found = {name: by_key.get(_zoo_key(name)) or by_key.get(name) for name in arrays}
    unexpected = [name for name, p in found.items() if p is None]
    missing = [p.name for p in by_key.values() if p not in found.values()]
    if unexpected or missing:
        raise WeightsError(f"weights file {path}: expected the model zoo's {spec.name} "
                           f"parameters, got " + " | ".join(
                               f"{what} {few_names(names)}"
                               for what, names in (("unexpected", unexpected),
                                                   ("missing", missing)) if names))
    for name, p in found.items():
        if p.shape != arrays[name].shape:
            raise WeightsError(f"weights file {path}: {name}: expected shape {p.shape}, got "
                               f"{arrays[name].shape}")
        p.set_data(arrays[name])  # classic arrays into the classic network
    weights = {name: p.data().asnumpy().astype(np.float32)
               for name, p in zoo_parameters(net, spec).items()}
    return fit_file(path, lambda: check_weights(spec, weights) or weights)


def save_zoo(spec: ResNetSpec, weights: Weights, path: str) -> None:
    """A `.params` file that the model zoo's own network loads with load_parameters."""
    from resnet_mx.modes import classic, param_array
    check_weights(spec, weights)
    net = zoo_network(spec)
    for name, p in zoo_parameters(net, spec).items():
        p.set_data(param_array(p, weights[name]))
    with classic():  # the file format MXNet reads in both modes
        net.save_parameters(path)


# The containers this package reads (common.formats.libraries.stored_shapes), and its library's
# formats (common.commands.convert offers them beside the project's own).
CONTAINERS = {".params": params_shapes}
FORMATS: dict[str, Format] = {
    "gluon": Format("Gluon model zoo parameters (gluon_resnet* presets)", (".params",),
                    detect=is_gluon_zoo, read=lambda path, spec: load_zoo(spec, str(path)),
                    write=written_atomically(save_zoo), classes=gluon_classes,
                    convention=lambda spec: "torchvision"),  # the zoo's ImageNet transform
}
