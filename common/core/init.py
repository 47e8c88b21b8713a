"""Seeded initialisation in NumPy, loaded into every framework.

The same seed gives bit-identical starting weights in PyTorch, Keras and Gluon. Rules:
- convolutions: Kaiming normal, fan_out, ReLU gain: N(0, 2 / (out_channels * kh * kw)),
  as torchvision's ResNet; conv biases zero;
- BatchNorm: gamma 1, beta 0, running mean 0, running variance 1; with `zero_init_last_bn`, the
  gamma of each residual branch's last BN is 0 (each block starts as the identity);
- dense: PyTorch's nn.Linear default, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
Arrays are drawn in canonical order from one `numpy.random.Generator(PCG64(seed))`.
"""
from __future__ import annotations

import numpy as np

from common.core.spec import ResNetSpec
from common.core.weights import Weights, canonical_layout

INIT_CHOICES = ("common", "framework")


def init_weights(spec: ResNetSpec, seed: int = 0) -> Weights:
    """Canonical starting weights for `spec`, a pure function of (spec, seed)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    last_bn = ".bn3" if spec.block == "bottleneck" else ".bn2"
    out: Weights = {}
    for name, shape in canonical_layout(spec).items():
        layer, param = name.rsplit(".", 1)
        if param == "weight" and len(shape) == 4:
            std = np.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
            value = rng.normal(0.0, std, size=shape)
        elif layer.startswith("head.") and param in ("weight", "bias"):
            bound = 1.0 / np.sqrt(spec.stages[-1].channels)  # fan_in of the dense head
            value = rng.uniform(-bound, bound, size=shape)
        elif param == "gamma" and spec.zero_init_last_bn and layer.endswith(last_bn) \
                and layer.startswith("stage"):
            value = np.zeros(shape)
        elif param in ("gamma", "running_var"):
            value = np.ones(shape)
        else:  # conv bias, beta, running_mean
            value = np.zeros(shape)
        out[name] = value.astype(np.float32)
    return out


def new_head(spec: ResNetSpec, weights: Weights, num_classes: int, seed: int = 0
             ) -> tuple[ResNetSpec, Weights]:
    """The spec and weights of a network whose head is replaced by a `num_classes`-class one
    (0: headless, pooled features out): every weight but head.fc's kept, the new head.fc
    from init_weights of the new spec with `seed` (what train's --new-head and each model's
    reset_classifier do). A classifier on a net without pooling gets the average pool."""
    pooling = "avg" if num_classes and spec.pooling is None else spec.pooling
    new = spec.with_overrides(num_classes=num_classes, pooling=pooling)
    kept = {k: v for k, v in weights.items() if not k.startswith("head.fc.")}
    fresh = init_weights(new, seed) if num_classes else {}
    return new, kept | {k: v for k, v in fresh.items() if k.startswith("head.fc.")}


def build_spec(name_or_spec, init: str = "common", **overrides) -> ResNetSpec:
    """The spec a framework's `build()` makes, after checking its `init` choice."""
    from common.core.spec import SpecError, get_spec
    if init not in INIT_CHOICES:
        raise SpecError(f"init: expected one of {INIT_CHOICES}, got {init!r}")
    return get_spec(name_or_spec, **overrides)
