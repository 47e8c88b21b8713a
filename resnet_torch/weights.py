"""PyTorch <-> canonical weights. PyTorch's layout already is the canonical one (OIHW kernels,
(out, in) dense weights); only BatchNorm's names differ (weight -> gamma, bias -> beta)."""
from __future__ import annotations

import numpy as np
import torch

from common.weights import Weights, canonical_layout, check_weights
from resnet_torch.model import ResNet

_BN_NAMES = {"gamma": "weight", "beta": "bias"}


def canonical_tensors(model: ResNet) -> dict[str, torch.Tensor]:
    """Canonical name -> the torch parameter or buffer that holds it."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    out = {}
    for name in canonical_layout(model.spec):
        layer, param = name.rsplit(".", 1)
        out[name] = state[f"{layer}.{_BN_NAMES.get(param, param)}"]
    return out


def to_canonical(model: ResNet) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: t.detach().cpu().numpy().astype(np.float32) for n, t in canonical_tensors(model).items()}


def from_canonical(model: ResNet, weights: Weights) -> ResNet:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    with torch.no_grad():
        for name, tensor in canonical_tensors(model).items():
            tensor.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float32)))
    return model


def save_native(model: ResNet, path: str) -> None:
    """PyTorch's own format: the state_dict in a `.pt` file."""
    torch.save(model.state_dict(), path)


def load_native(model: ResNet, path: str) -> ResNet:
    """Load a `.pt` state_dict; `weights_only=True`, so the file cannot run code."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
