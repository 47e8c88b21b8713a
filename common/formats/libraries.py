"""Weights files of the wider ecosystem, both ways: torchvision's and timm's ResNet state_dicts
(`conv1.weight`, `layer1.0.bn1.running_var`, `layer2.0.downsample.0.weight`, `fc.bias`).

Every kind of weights file that `resnet-convert`, `--weights` and crosscheck read is a `Format`:
its file names, how to tell it from the names a file holds, a reader and a writer to canonical
weights. `FORMATS` here lists the ecosystem's; common.commands.convert adds the project's own (canonical,
torch, tf, mx) and offers them all as `--from`/`--to NAME`. A new format is one more entry:

    FORMATS["keras"] = Format("Keras applications weights", (".weights.h5", ".h5"),
                              detect=..., read=..., write=..., classes=...)

The code is NumPy; only reading and writing a `.pth` needs torch (imported when asked), and a
`.safetensors` needs safetensors.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping

import numpy as np

from common.core.files import atomic_path
from common.core.spec import BIAS_CONVS, ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_values,
                            check_weights, fit_file, layout_problems, unreadable)

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Format:
    """One kind of weights file. `suffixes`: the file names it reads and writes (for a suffix
    that several formats share, the first one registered is the default when writing, and
    `detect` chooses when reading). `detect(names)`: whether the names a file holds are this
    format's. `read(path, spec)` gives canonical weights; `write(weights, path, spec)` writes
    them. `classes(shapes)`: the number of classes of the file's head, from the file's names
    and shapes (None if it cannot tell), so that --weights can say that a head does not fit."""
    what: str
    suffixes: tuple[str, ...]
    detect: Callable[[Collection[str]], bool]
    read: Callable[[Path, ResNetSpec], Weights]
    write: Callable[[Weights, Path, ResNetSpec], None]
    classes: Callable[[Shapes], int | None]


def head_bias(*names: str) -> Callable[[Shapes], int | None]:
    """A Format's `classes`: the length of the first of `names` the file holds."""
    def classes(shapes: Shapes) -> int | None:
        found = [shapes[n] for n in names if n in shapes and len(shapes[n]) == 1]
        return int(found[0][0]) if found else None
    return classes


# --- containers: the names and shapes a file holds --------------------------------------------

TORCH_SUFFIXES = (".pth", ".pt", ".bin")  # .bin: Hugging Face's pytorch_model.bin


def stored_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in a weights file, from its container (.safetensors, .npz,
    .h5, .params, .pt/.pth/.bin), reading as little of the data as the container allows: what
    format detection and a file's number of classes need. Raises what the container's library
    raises for a file it cannot read."""
    name = str(path)
    if name.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(name, framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if name.endswith(".npz"):
        with np.load(name, allow_pickle=False) as data:
            return {k: data[k].shape for k in data.files}
    if name.endswith(".h5"):
        import h5py
        out: dict[str, tuple[int, ...]] = {}
        with h5py.File(name, "r") as f:
            f.visititems(lambda k, obj: out.__setitem__(k, tuple(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
        return out
    if name.endswith(".params"):
        arrays = load_mx_params(name)
        return {k: tuple(a.shape) for k, a in arrays.items()} if isinstance(arrays, dict) else {}
    if name.endswith(TORCH_SUFFIXES):
        try:  # memory-mapped: the tensors are not read (a zip-format file, torch >= 1.6)
            state = load_torch_state(path, mmap=True)
        except WeightsError:
            state = load_torch_state(path)
        return {k: tuple(v.shape) for k, v in state.items()}
    raise ValueError(f"weights file: expected a .safetensors, .npz, .h5, .params, .pt, .pth or "
                     f".bin name, got {name!r}")


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


# --- torchvision and timm ---------------------------------------------------------------------

_BLOCK_PART = re.compile(r"stage(\d+)\.(\d+)\.(conv|bn)(\d)")
_PARAM = {"gamma": "weight", "beta": "bias"}  # BatchNorm's names in PyTorch


def torchvision_structure(spec: ResNetSpec) -> str:
    """Why a spec is not built as torchvision builds ResNets (post-activation blocks, BatchNorm
    after a 1x1 projection, no convolution bias, the stride on the 3x3): "" if it is."""
    why = [text for bad, text in (
        (spec.preact, "pre-activation blocks"), (spec.input_bn, "an input BatchNorm"),
        (spec.shortcut != "conv", "zero-padded shortcuts"),
        (not spec.shortcut_bn, "no BatchNorm on the projection"),
        (any(spec.has_bias(c) for c in BIAS_CONVS), "convolution biases"),
        (spec.stride_in_1x1, "the stride on the first 1x1")) if bad]
    return ", ".join(why)


def torchvision_names(spec: ResNetSpec) -> dict[str, str]:
    """Canonical name -> torchvision's state_dict key, in canonical order (which is
    torchvision's): stem.conv -> conv1, stem.bn -> bn1, stageN.j -> layerN.j, a block's
    projection conv/bn (conv3/bn3 after a basic block's two, conv4/bn4 after a bottleneck's
    three) -> downsample.0/downsample.1, head.fc -> fc; BatchNorm gamma/beta -> weight/bias."""
    why = torchvision_structure(spec)
    if why:
        raise WeightsError(f"torchvision's names: expected a preset built as torchvision builds "
                           f"ResNets (resnet18..152, resnext*, wide_resnet*), got {spec.name!r} "
                           f"with {why}")
    branch = 3 if spec.block == "bottleneck" else 2  # convolutions of the residual branch
    out = {}
    for name in canonical_layout(spec):
        layer, param = name.rsplit(".", 1)
        param = _PARAM.get(param, param)
        block = _BLOCK_PART.fullmatch(layer)
        if layer in ("stem.conv", "stem.bn"):
            key = {"stem.conv": "conv1", "stem.bn": "bn1"}[layer]
        elif layer == "head.fc":
            key = "fc"
        elif block:
            stage, j, kind, k = block.groups()
            key = (f"layer{stage}.{j}.{kind}{k}" if int(k) <= branch else
                   f"layer{stage}.{j}.downsample.{0 if kind == 'conv' else 1}")
        else:  # a layer torchvision does not have; torchvision_structure should have said so
            raise WeightsError(f"torchvision's names: expected no layer {layer!r} in "
                               f"{spec.name!r}")
        out[name] = f"{key}.{param}"
    return out


def torchvision_state(weights: Mapping[str, np.ndarray], spec: ResNetSpec) -> dict[str, np.ndarray]:
    """Canonical weights as torchvision's state_dict, in its order, with every BatchNorm's
    `num_batches_tracked` (0, as a fresh model has; PyTorch uses it only with momentum=None),
    so that torchvision's load_state_dict(strict=True) takes it."""
    check_weights(spec, weights)
    out = {}
    for name, key in torchvision_names(spec).items():
        out[key] = np.asarray(weights[name], dtype=np.float32)
        if key.endswith(".running_var"):
            out[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(0, np.int64)
    return out


def from_torchvision_state(state: Mapping[str, np.ndarray], spec: ResNetSpec,
                           path: str | Path = "(in memory)") -> Weights:
    """Canonical weights from torchvision's state_dict (num_batches_tracked ignored). A state
    that does not fit `spec` is a WeightsError that names the file and a few of its own
    (torchvision) names, with counts; a bad value is named by its torchvision name."""
    names = torchvision_names(spec)
    layout = canonical_layout(spec)
    wanted = {key: layout[name] for name, key in names.items()}
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    problems = layout_problems(wanted, state)
    if problems:
        raise WeightsError(f"weights file {path}: weights do not fit {spec.name!r} "
                           f"(torchvision's names): " + " | ".join(problems))
    try:
        for key in wanted:
            check_values(key, state[key])
    except WeightsError as err:
        raise WeightsError(f"weights file {path}: {err}") from None
    return {name: np.asarray(state[key], dtype=np.float32) for name, key in names.items()}


def read_torchvision(path: Path, spec: ResNetSpec) -> Weights:
    fit_file(path, lambda: torchvision_names(spec))  # a spec of another structure, named first
    return from_torchvision_state(read_state_dict(path), spec, path)


def write_torchvision(weights: Weights, path: Path, spec: ResNetSpec) -> None:
    write_state_dict(fit_file(path, lambda: torchvision_state(weights, spec)), path)


def is_torchvision(names: Collection[str]) -> bool:
    return "conv1.weight" in names or any(n.startswith("layer1.") for n in names)


# --- Keras applications and the Gluon model zoo: read through the library's own network ------

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


def is_gluon_zoo(names: Collection[str]) -> bool:
    return any(re.match(r"(arg:|aux:)?(resnetv\d+_)+", n) or n.startswith("features.")
               for n in names)


def gluon_classes(shapes: Shapes) -> int | None:
    heads = [s for n, s in shapes.items() if len(s) == 1 and
             (n.endswith("dense0_bias") or n == "output.bias")]
    return int(heads[0][0]) if heads else None


def _framework_weights(fw: str):
    from common.frameworks import load
    return load(fw).weights


FORMATS: dict[str, Format] = {
    "torchvision": Format("torchvision/timm state_dict", (*TORCH_SUFFIXES, ".safetensors"),
                          detect=is_torchvision, read=read_torchvision, write=write_torchvision,
                          classes=head_bias("fc.bias")),
    "keras": Format("Keras applications weights (keras_resnet* presets)", (".weights.h5", ".h5"),
                    detect=is_keras_app,
                    read=lambda path, spec: _framework_weights("tf").load_app(spec, str(path)),
                    write=lambda w, path, spec: _write_via(
                        path, lambda tmp: _framework_weights("tf").save_app(spec, w, tmp)),
                    classes=keras_classes),
    "gluon": Format("Gluon model zoo parameters (gluon_resnet* presets)", (".params",),
                    detect=is_gluon_zoo,
                    read=lambda path, spec: _framework_weights("mx").load_zoo(spec, str(path)),
                    write=lambda w, path, spec: _write_via(
                        path, lambda tmp: _framework_weights("mx").save_zoo(spec, w, tmp)),
                    classes=gluon_classes),
}


def _write_via(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))
