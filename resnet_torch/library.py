"""PyTorch's files, as the wider PyTorch world writes them: `.pt`/`.pth`/`.bin` state_dict
containers (torch.load with weights_only=True, torch.save), and torchvision's and timm's ResNet
state_dicts as a weights format (`FORMATS["torchvision"]`, also in `.safetensors`; the name
mapping itself is NumPy, in common.formats.libraries).

Importing this module imports no framework: torch loads when a file is read or written.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import numpy as np

from common.core.files import atomic_path
from common.core.spec import ResNetSpec
from common.core.weights import Weights, WeightsError, fit_file, unreadable
from common.formats.libraries import (Format, from_torchvision_state, head_bias, is_torchvision,
                                      torchvision_names, torchvision_state)

TORCH_SUFFIXES = (".pth", ".pt", ".bin")  # .bin: Hugging Face's pytorch_model.bin
TORCH_KIND = "a PyTorch state_dict file (torch.save(model.state_dict(), path))"


def load_torch_state(path: str | Path, mmap: bool = False) -> dict:
    """A `.pt`/`.pth`/`.bin` state_dict as name -> torch tensor, read with torch.load's
    `weights_only=True` (the file cannot run code). A damaged file, or one holding other objects
    than a dict of tensors, is a WeightsError that names it."""
    import torch
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # not only tensors: a whole module, or arbitrary objects
        raise WeightsError(f"weights file {path}: expected {TORCH_KIND}, got other Python "
                           f"objects, which are not unpickled here (that could run code)") from None
    except Exception as err:  # noqa: BLE001 - torch's own errors for a damaged file
        raise unreadable(path, TORCH_KIND, err) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"weights file {path}: expected {TORCH_KIND}, got a "
                           f"{type(state).__name__} that is not a dict of tensors")
    return state


def torch_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a state_dict file, memory-mapped where the file allows
    (a zip-format file, torch >= 1.6), so that the tensors are not read."""
    try:
        state = load_torch_state(path, mmap=True)
    except WeightsError:
        state = load_torch_state(path)
    return {k: tuple(v.shape) for k, v in state.items()}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A state_dict file as name -> NumPy array: `.safetensors` with safetensors, `.pt`/`.pth`/
    `.bin` with torch.load(weights_only=True). bfloat16 tensors become float32 (through torch
    where NumPy has no bfloat16 type)."""
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:  # bfloat16 loads where ml_dtypes (TensorFlow's) has given NumPy the type
            return {k: a.astype(np.float32) if a.dtype.name == "bfloat16" else a
                    for k, a in load_file(str(path)).items()}
        except Exception as err:  # noqa: BLE001 - safetensors' errors for a damaged file
            try:  # a bfloat16 tensor: safetensors reads it into torch, where torch is installed
                from safetensors.torch import load_file as load_torch_file
                state = load_torch_file(str(path))
            except Exception:  # noqa: BLE001 - damaged after all: the NumPy reader's error
                raise unreadable(path, "a safetensors file", err) from None
    else:
        state = load_torch_state(path)
    return {k: _numpy(v) for k, v in state.items()}


def _numpy(tensor) -> np.ndarray:
    import torch
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().numpy()


def write_state_dict(state: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write a state_dict atomically: `.safetensors` with safetensors, otherwise torch.save of a
    dict of tensors (what torch.load(weights_only=True) and load_state_dict take). Scalars stay
    0-d (np.asarray, not np.ascontiguousarray, which makes them 1-d)."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".safetensors"):
            from safetensors.numpy import save_file
            save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(tmp))
        else:
            import torch
            torch.save({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()},
                       str(tmp))


def read_torchvision(path: Path, spec: ResNetSpec) -> Weights:
    fit_file(path, lambda: torchvision_names(spec))  # a spec of another structure, named first
    return from_torchvision_state(read_state_dict(path), spec, path)


def write_torchvision(weights: Weights, path: Path, spec: ResNetSpec) -> None:
    write_state_dict(fit_file(path, lambda: torchvision_state(weights, spec)), path)


# The containers this package reads (common.formats.libraries.stored_shapes), and its library's
# formats (common.commands.convert offers them beside the project's own).
CONTAINERS = {suffix: torch_shapes for suffix in TORCH_SUFFIXES}
FORMATS: dict[str, Format] = {
    "torchvision": Format("torchvision/timm state_dict", (*TORCH_SUFFIXES, ".safetensors"),
                          detect=is_torchvision, read=read_torchvision, write=write_torchvision,
                          classes=head_bias("fc.bias"),
                          convention=lambda spec: "torchvision"),  # timm's ResNets too
}
