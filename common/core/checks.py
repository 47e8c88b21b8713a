"""Input checks shared by the four frameworks, so that bad input reads the same everywhere."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from common.core.errors import Error

from common.core.oracle import min_input_size, smallest_bn_map
from common.core.spec import ResNetSpec


DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16", "fp16")


class InputError(Error):
    """An input batch has the wrong rank, channel count or dtype."""


def check_batch(shape: Sequence[int | None], dtype: str, is_float: bool, channels: int,
                layout: str = "NCHW") -> None:
    """Raise InputError unless `shape` is a 4-d `layout` batch of `channels` float channels."""
    shape = tuple(shape)
    example = "(" + ", ".join(str(channels) if axis == "C" else axis for axis in layout) + ")"
    if len(shape) != 4:
        raise InputError(f"input: expected a 4-d batch in {layout} layout ({example}), "
                         f"got {len(shape)}-d shape {shape}")
    given = shape[layout.index("C")]
    if given is not None and given != channels:
        raise InputError(f"input: expected {channels} channel(s) on axis {layout.index('C')} "
                         f"({layout}), got {given} in shape {shape}")
    if not is_float:
        raise InputError(f"input: expected a floating-point dtype (float32), got {dtype}")


def check_geometry(spec: ResNetSpec, shape: Sequence[int | None], layout: str = "NCHW",
                   training: bool = False) -> None:
    """Raise InputError unless a batch of `shape` (already of the right rank) can run through
    `spec`: at least one example; height and width at least the oracle's minimum for the spec;
    and in training, more than one value per channel at every BatchNorm (batch x pixels of its
    map), which BatchNorm needs for a batch variance. Unknown (None) sizes are not checked."""
    n, h, w = (shape[layout.index(axis)] for axis in "NHW")
    if n == 0:
        raise InputError(f"input: expected at least one example, got shape {tuple(shape)}")
    if h is None or w is None:
        return
    least = min_input_size(spec)
    if h < least or w < least:
        raise InputError(f"input: expected height and width of at least {least} for "
                         f"{spec.name} (smaller inputs vanish before the head), got {h}x{w}")
    if training and n is not None:
        bh, bw, path = smallest_bn_map(spec, h, w)
        if n * bh * bw < 2:
            raise InputError(f"train mode: expected more than one value per channel for "
                             f"BatchNorm, got a batch of {n} with a {bh}x{bw} map at {path}; "
                             f"use a batch of 2 or more, or inference mode")


def check_dtype(dtype: str) -> str:
    """The compute dtype of an adapter: float32 (the default, as the models are stored) or
    float64 (for checks of many training steps, free of float32 rounding)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def check_precision(precision: str, dtype: str) -> str:
    """The arithmetic of an adapter's forward and backward passes: fp32 (the default, in the
    compute `dtype`), bf16 or fp16 (mixed precision: convolutions and matrix products in
    bfloat16 or float16, weights, optimiser step and loss in float32; fp16 also scales the loss,
    as float16's range needs). Both are speed options over float32 weights, so they are refused
    with float64, whose purpose is to be free of rounding."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and dtype != "float32":
        raise InputError(f"precision: expected dtype float32 with {precision} (mixed precision "
                         f"keeps float32 weights), got dtype {dtype!r}")
    return precision


def check_finite(x: np.ndarray, what: str = "input") -> None:
    """Raise InputError naming the first NaN or infinity of x and its position."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(x.sum()):  # the fast path: a NaN or an infinity makes the sum one too
            return
    bad = ~np.isfinite(x)
    if bad.any():  # else the sum only overflowed
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what}: expected finite values, got {x[pos]} at position {pos}")


def batch_as(x, dtype: str, spec: ResNetSpec, training: bool = False) -> np.ndarray:
    """An adapter's NCHW NumPy batch in its compute dtype, after the input checks: an integer
    batch is refused, not silently converted, and so is a NaN or an infinity, an input too
    small for the network and (in training) a batch BatchNorm cannot normalise."""
    x = np.asarray(x)
    check_batch(x.shape, x.dtype.name, np.issubdtype(x.dtype, np.floating), spec.in_channels)
    check_geometry(spec, x.shape, "NCHW", training)
    check_finite(x)
    return x.astype(dtype, copy=False)


def labels_as(y, batch: int, num_classes: int) -> np.ndarray:
    """An adapter's labels after the checks every framework shares: integer class indices, one
    per example of the batch, each in [0, num_classes). (MXNet would train on a label outside
    the range without a word; PyTorch and TensorFlow would stop with a traceback.)"""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels: expected integer class indices, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise InputError(f"labels: expected one per example, shape ({batch},), got shape "
                         f"{y.shape}")
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        i = int(np.argmax(outside))
        raise InputError(f"labels: expected class indices in [0, {num_classes}), got {y[i]} "
                         f"at position {i}")
    return y


def feature_parts(spec: ResNetSpec, parts: Sequence[str] | None = None) -> tuple[str, ...]:
    """The parts features() returns (a model's or an adapter's): `parts` (names of
    spec.part_names(), or of a stage's blocks, "stage2.0", in any order), or every part (timm's
    features_only: each stage's)."""
    names = spec.part_names()
    wanted = tuple(names) if parts is None else tuple(parts)
    unknown = [p for p in wanted if p not in names and p not in block_names(spec)]
    if not wanted or unknown:
        raise InputError(f"parts: expected names from {', '.join(names)}, got "
                         f"{unknown[0] if unknown else 'none'!r}")
    return wanted


def block_names(spec: ResNetSpec) -> list[str]:
    """Every block's name in forward order: stage1.0, stage1.1, ..., as the canonical weights."""
    return [f"stage{i}.{j}" for i, stage in enumerate(spec.stages, start=1)
            for j in range(stage.blocks)]


def parts_and_blocks(spec: ResNetSpec) -> list[str]:
    """Every part and, after each stage's blocks, the stage: stem, stage1.0, ..., stage1, ...,
    head (the order in which the network computes them)."""
    out = ["stem"]
    for i, stage in enumerate(spec.stages, start=1):
        out += [f"stage{i}.{j}" for j in range(stage.blocks)] + [f"stage{i}"]
    return out + ["head"]
