"""PyTorch <-> canonical weights. PyTorch's layout already is the canonical one (OIHW kernels,
(out, in) dense weights); only BatchNorm's names differ (weight -> gamma, bias -> beta).

A `model` here is this package's ResNet (resnet_torch.model, which imports this module to
initialise it; this module does not import it)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.core.weights import Weights, canonical_layout, check_weights, fit_file
from common.formats.libraries import from_torchvision_state, is_torchvision
from resnet_torch.library import load_torch_state

_BN_NAMES = {"gamma": "weight", "beta": "bias"}


def canonical_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> the torch parameter or buffer that holds it."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    out = {}
    for name in canonical_layout(model.spec):
        out[name] = state[_torch_name(name)]
    return out


def to_canonical(model: nn.Module) -> Weights:
    """The model's weights as canonical float32 NumPy arrays (copies)."""
    return {n: t.detach().cpu().numpy().astype(np.float32) for n, t in canonical_tensors(model).items()}


def from_canonical(model: nn.Module, weights: Weights) -> nn.Module:
    """Load canonical weights into the model, after checking every name and shape."""
    check_weights(model.spec, weights)
    with torch.no_grad():
        for name, tensor in canonical_tensors(model).items():
            tensor.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float32)))
    return model


def save_native(model: nn.Module, path: str) -> None:
    """PyTorch's own format: the state_dict in a `.pt` file."""
    torch.save(model.state_dict(), path)


def load_native(model: nn.Module, path: str) -> nn.Module:
    """Load a `.pt` state_dict; `weights_only=True`, so the file cannot run code. A damaged or
    foreign file is a WeightsError naming the path; a state_dict of another network lists a
    few of its names and the counts (common.core.weights.check_weights)."""
    state = load_torch_state(path)  # the one reader of .pt files
    if is_torchvision(state) and not any(k.startswith("stem.") for k in state):
        # torchvision's or timm's names: the ecosystem's own format of PyTorch
        return from_canonical(model, from_torchvision_state(
            {k: _numpy(v) for k, v in state.items()}, model.spec, path))
    names = {_torch_name(n): n for n in canonical_layout(model.spec)}
    weights = {names.get(k, k): _numpy(v) for k, v in state.items()
               if not k.endswith("num_batches_tracked")}
    return fit_file(path, lambda: from_canonical(model, weights))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A state_dict tensor as NumPy; float16 and bfloat16 (which NumPy lacks) as float32,
    exactly, as every weights file is read."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.detach().numpy()


def _torch_name(canonical: str) -> str:
    layer, param = canonical.rsplit(".", 1)
    return f"{layer}.{_BN_NAMES.get(param, param)}"
