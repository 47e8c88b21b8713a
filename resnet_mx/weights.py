"""Gluon <-> canonical weights. Gluon's layout already is the canonical one (OIHW kernels,
(out, in) dense weights; BatchNorm gamma, beta, running_mean, running_var). Gluon's parameter
names are prefixes with counters (`resnet0_conv3_weight`), so parameters are found by walking
the blocks the canonical name spells out: `stage2.0.conv3.bias` is model.stage2[0].conv3.bias.

Both of MXNet's modes (resnet_mx.modes): a model's parameters are of the mode it was built in,
and are set from arrays of that mode. `.params` files are always written
in the classic format, which Gluon reads in both modes (one saved under npx.set_np() cannot be
read without it), and are read whichever mode wrote them. Files of the Gluon model zoo are
read through resnet_mx.library.


A `model` here is this package's ResNet (resnet_mx.model, which imports this module to
initialise it; this module does not import it)."""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import gluon

from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, fit_file,
                                 unreadable)
from resnet_mx.library import is_gluon_zoo, load_mx_params, load_zoo
from resnet_mx.modes import classic, param_array


def canonical_parameters(model: gluon.HybridBlock) -> dict[str, gluon.Parameter]:
    """Canonical name -> the Gluon parameter that holds it (gradients: `.grad()`)."""
    out = {}
    for name in canonical_layout(model.spec):
        *path, param = name.split(".")
        block = model
        for step in path:
            block = block[int(step)] if step.isdigit() else getattr(block, step)
        out[name] = getattr(block, param)
    return out


def to_canonical(model: gluon.HybridBlock) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: p.data().asnumpy().astype(np.float32) for n, p in canonical_parameters(model).items()}


def from_canonical(model: gluon.HybridBlock, weights: Weights) -> gluon.HybridBlock:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    for name, p in canonical_parameters(model).items():
        p.set_data(param_array(p, np.asarray(weights[name], dtype=np.float32)))
    return model


def save_native(model: gluon.HybridBlock, path: str) -> None:
    """Gluon's own format: `save_parameters` to a `.params` file, whose names are the
    canonical ones (stage2.0.conv1.weight). Written in the classic format in both modes, so
    that MXNet reads it with or without npx.set_np()."""
    # save_parameters' own names and arrays, saved by hand: under npx.set_np() Gluon would
    # write NumPy-mode arrays, which MXNet cannot read without it.
    arrays = {name: p.data().as_nd_ndarray()
              for name, p in model._collect_params_with_prefix().items()}  # noqa: SLF001
    with classic():
        mx.nd.save(path, arrays)


def load_native(model: gluon.HybridBlock, path: str) -> gluon.HybridBlock:
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
    if is_gluon_zoo(arrays):  # the model zoo's names: the ecosystem's own format of Gluon
        return from_canonical(model, load_zoo(model.spec, path))
    # Files written by HybridBlock.export name parameters arg:... and aux:...
    weights = {k.split(":", 1)[-1]: v.asnumpy() for k, v in arrays.items()}
    return fit_file(path, lambda: from_canonical(model, weights))
