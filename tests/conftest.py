"""Shared test helpers. All three frameworks are imported here: one that fails to import fails
the run (collection error); nothing is ever skipped for a missing framework."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from common.frameworks import FRAMEWORKS, load, shape_as_nchw, to_layout

MODULES = {fw: load(fw) for fw in FRAMEWORKS}


@pytest.fixture(params=FRAMEWORKS)
def fw(request):
    """Each framework package in turn (resnet_torch, resnet_tf, resnet_mx)."""
    return MODULES[request.param]


def fw_name(module) -> str:
    return module.__name__.removeprefix("resnet_")


def make_block(module, in_channels: int, num_channels: int, use_1x1conv: bool = False,
               strides: int = 1, **kwargs):
    """d2l's Residual with each framework's own signature (PyTorch takes input channels first;
    Gluon is told them so that nothing is deferred)."""
    if fw_name(module) == "torch":
        return module.Residual(in_channels, num_channels, use_1x1conv, strides, **kwargs)
    if fw_name(module) == "mx":
        blk = module.Residual(num_channels, use_1x1conv, strides, in_channels=in_channels,
                              **kwargs)
        blk.initialize()
        return blk
    return module.Residual(num_channels, use_1x1conv, strides, **kwargs)


def run_block(module, blk, x_nchw: np.ndarray) -> np.ndarray:
    """The block's output for an NCHW batch, returned as NCHW NumPy."""
    name = fw_name(module)
    if name == "torch":
        import torch
        return blk(torch.from_numpy(x_nchw)).detach().numpy()
    if name == "mx":
        import mxnet as mx
        return blk(mx.nd.array(x_nchw)).asnumpy()
    out = np.asarray(blk(to_layout(x_nchw, "NHWC")))
    return np.transpose(out, (0, 3, 1, 2))


def part_shapes_nchw(module, model, x_nchw: np.ndarray) -> dict[str, tuple[int, ...]]:
    shapes = module.part_shapes(model, to_layout(x_nchw, module.LAYOUT))
    return {k: shape_as_nchw(v, module.LAYOUT) for k, v in shapes.items()}
