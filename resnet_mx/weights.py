"""Gluon <-> canonical weights. Gluon's layout already is the canonical one (OIHW kernels,
(out, in) dense weights; BatchNorm gamma, beta, running_mean, running_var). Gluon's parameter
names are prefixes with counters (`resnet0_conv3_weight`), so parameters are found by walking
the blocks the canonical name spells out: `stage2.0.conv3.bias` is model.stage2[0].conv3.bias.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import gluon

from common.weights import Weights, canonical_layout, check_weights
from resnet_mx.model import ResNet


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
        p.set_data(mx.nd.array(np.asarray(weights[name], dtype=np.float32), dtype=p.dtype))
    return model


def save_native(model: ResNet, path: str) -> None:
    """Gluon's own format: `save_parameters` to a `.params` file, whose names are the
    canonical ones (stage2.0.conv1.weight)."""
    model.save_parameters(path)


def load_native(model: ResNet, path: str) -> ResNet:
    """Load a `.params` file; MXNet's NDArray format, not pickle, so the file cannot run code."""
    model.load_parameters(path)
    return model
