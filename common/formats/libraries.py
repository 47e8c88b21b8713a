"""Weights files of other libraries, the framework-free part: the `Format` record that every
kind of weights file is, the names and shapes a file holds (`.safetensors` and `.npz` headers),
and torchvision's and timm's ResNet state_dict names (`conv1.weight`, `layer1.0.bn1.running_var`,
`layer2.0.downsample.0.weight`, `fc.bias`) as NumPy.

Every kind of weights file that `resnet-convert`, `--weights` and crosscheck read is a `Format`:
its file names, how to tell it from the names a file holds, a reader and a writer to canonical
weights. Each framework package registers its library's formats and containers in its module
`library` (`FORMATS`, `CONTAINERS`: torchvision's `.pth` in resnet_torch, Keras applications in
resnet_tf, the Gluon model zoo in resnet_mx); common.commands.convert adds the project's own
(canonical, torch, tf, mx, jax) and offers them all as `--from`/`--to NAME`. A new format is one
more entry in a package's `FORMATS`:

    FORMATS["keras"] = Format("Keras applications weights", (".weights.h5", ".h5"),
                              detect=..., read=..., write=..., classes=...)

Nothing here imports a framework; a `.safetensors` needs safetensors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping

import numpy as np

from common.core.files import atomic_path
from common.core.spec import BIAS_CONVS, ResNetSpec
from common.core.weights import (Weights, WeightsError, canonical_layout, check_values,
                                 check_weights, layout_problems, npz_entries,
                                 safetensors_entries)

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Format:
    """One kind of weights file. `suffixes`: the file names it reads and writes (for a suffix
    that several formats share, the first one registered is the default when writing, and
    `detect` chooses when reading). `detect(names)`: whether the names a file holds are this
    format's. `read(path, spec)` gives canonical weights; `write(weights, path, spec)` writes
    them. `classes(shapes)`: the number of classes of the file's head, from the file's names
    and shapes (None if it cannot tell), so that --weights can say that a head does not fit.
    `convention(spec)`: the name of the input convention (common.core.conventions) that the
    library's files of `spec` expect; None where the file's own metadata or the preset says
    it (the project's formats)."""
    what: str
    suffixes: tuple[str, ...]
    detect: Callable[[Collection[str]], bool]
    read: Callable[[Path, ResNetSpec], Weights]
    write: Callable[[Weights, Path, ResNetSpec], None]
    classes: Callable[[Shapes], int | None]
    convention: Callable[[ResNetSpec], str | None] = lambda spec: None


def head_bias(*names: str) -> Callable[[Shapes], int | None]:
    """A Format's `classes`: the length of the first of `names` the file holds."""
    def classes(shapes: Shapes) -> int | None:
        found = [shapes[n] for n in names if n in shapes and len(shapes[n]) == 1]
        return int(found[0][0]) if found else None
    return classes


# --- containers: the names and shapes a file holds --------------------------------------------

def written_atomically(save: Callable[[ResNetSpec, Weights, str], None]
                       ) -> Callable[[Weights, Path, ResNetSpec], None]:
    """A Format's `write` from a library's `save(spec, weights, path)`, which writes in place:
    it writes a temporary file and renames it (core.files.atomic_path)."""
    def write(weights: Weights, path: Path, spec: ResNetSpec) -> None:
        with atomic_path(path) as tmp:
            save(spec, weights, str(tmp))
    return write


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a `.safetensors` file, from its header."""
    return {k: e.shape for k, e in safetensors_entries(Path(path)).items()}


def npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of a `.npz` file, from each member's .npy header (the data
    is not read: a member of compressed zeros may inflate to gigabytes)."""
    return {k: e.shape for k, e in npz_entries(Path(path)).items()}


# Suffix -> the lister of a container's names and shapes; the packages' `library.CONTAINERS`
# add theirs (.pt, .h5, .params), and common.commands.convert passes them all to stored_shapes.
CONTAINERS: dict[str, Callable[[str | Path], dict[str, tuple[int, ...]]]] = {
    ".safetensors": safetensors_shapes, ".npz": npz_shapes}


def stored_shapes(path: str | Path, containers: Mapping[str, Callable] = CONTAINERS
                  ) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in a weights file, from its container (by the file's
    suffix, among `containers`), reading as little of the data as the container allows: what
    format detection and a file's number of classes need. Raises what the container's library
    raises for a file it cannot read."""
    for suffix, shapes in containers.items():
        if str(path).endswith(suffix):
            return shapes(path)
    *most, last = containers
    raise WeightsError(f"weights file: expected a {', '.join(most)} or {last} name, "
                       f"got {str(path)!r}")


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


def is_torchvision(names: Collection[str]) -> bool:
    return "conv1.weight" in names or any(n.startswith("layer1.") for n in names)
