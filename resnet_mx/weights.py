"""Gluon <-> canonical weights. Gluon's layout already is the canonical one (OIHW kernels,
(out, in) dense weights; BatchNorm gamma, beta, running_mean, running_var). Gluon's parameter
names are prefixes with counters (`resnet0_conv3_weight`), so parameters are found by walking
the blocks the canonical name spells out: `stage2.0.conv3.bias` is model.stage2[0].conv3.bias.

Both of MXNet's modes (resnet_mx.modes): a model's parameters are of the mode it was built in,
and are set from arrays of that mode. `.params` files are always written
in the classic format, which Gluon reads in both modes (one saved under npx.set_np() cannot be
read without it), and are read whichever mode wrote them. The model zoo's networks use classic
operators only, so they are built and run in the classic mode.
"""
from __future__ import annotations

import re

import mxnet as mx
import numpy as np
from mxnet import gluon

from common.formats.libraries import load_mx_params
from common.core.spec import ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, few_names,
                            fit_file, unreadable)
from resnet_mx.model import ResNet
from resnet_mx.modes import classic, param_array


def canonical_parameters(model: ResNet) -> dict[str, gluon.Parameter]:
    """Canonical name -> the Gluon parameter that holds it (gradients: `.grad()`)."""
    out = {}
    for name in canonical_layout(model.spec):
        *path, param = name.split(".")
        block = model
        for step in path:
            block = block[int(step)] if step.isdigit() else getattr(block, step)
        out[name] = getattr(block, param)
    return out


def to_canonical(model: ResNet) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: p.data().asnumpy().astype(np.float32) for n, p in canonical_parameters(model).items()}


def from_canonical(model: ResNet, weights: Weights) -> ResNet:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    for name, p in canonical_parameters(model).items():
        p.set_data(param_array(p, np.asarray(weights[name], dtype=np.float32)))
    return model


def save_native(model: ResNet, path: str) -> None:
    """Gluon's own format: `save_parameters` to a `.params` file, whose names are the
    canonical ones (stage2.0.conv1.weight). Written in the classic format in both modes, so
    that MXNet reads it with or without npx.set_np()."""
    # save_parameters' own names and arrays, saved by hand: under npx.set_np() Gluon would
    # write NumPy-mode arrays, which MXNet cannot read without it.
    arrays = {name: p.data().as_nd_ndarray()
              for name, p in model._collect_params_with_prefix().items()}  # noqa: SLF001
    with classic():
        mx.nd.save(path, arrays)


def load_native(model: ResNet, path: str) -> ResNet:
    """Load a `.params` file; MXNet's NDArray format, not pickle, so the file cannot run code.
    A damaged or foreign file is a WeightsError naming the path; the parameters of another
    network list a few of their names and the counts (common.core.weights.check_weights)."""
    kind = "a Gluon .params file (save_parameters)"
    try:
        arrays = load_mx_params(path)
    except Exception as err:  # noqa: BLE001 - MXNetError and others for a damaged file
        raise unreadable(path, kind, err) from None
    if not isinstance(arrays, dict):
        raise WeightsError(f"weights file {path}: expected {kind}, got a list of "
                           f"{len(arrays)} unnamed arrays")
    from common.formats.libraries import is_gluon_zoo
    if is_gluon_zoo(arrays):  # the model zoo's names: the ecosystem's own format of Gluon
        return from_canonical(model, load_zoo(model.spec, path))
    # Files written by HybridBlock.export name parameters arg:... and aux:...
    weights = {k.split(":", 1)[-1]: v.asnumpy() for k, v in arrays.items()}
    return fit_file(path, lambda: from_canonical(model, weights))


# --- the Gluon model zoo's files (mxnet.gluon.model_zoo.vision.resnet*_v1 and _v2) ----------

_ZOO_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
               ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
               ("bottleneck", (3, 8, 36, 3)): 152}


def zoo_network(spec: ResNetSpec) -> gluon.HybridBlock:
    """The model zoo's own network for a gluon_resnet*_v1/_v2 spec, parameters initialised.
    Classic NDArrays in both modes: its layers call classic operators (F.Activation), so
    callers use it inside modes.classic()."""
    from mxnet.gluon.model_zoo import vision
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
    check_weights(spec, weights)
    net = zoo_network(spec)
    for name, p in zoo_parameters(net, spec).items():
        p.set_data(param_array(p, weights[name]))
    with classic():  # the file format MXNet reads in both modes
        net.save_parameters(path)
