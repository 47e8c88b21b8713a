"""Helpers shared by the tests (imported as `tests.helpers`; tests/conftest.py holds only pytest's
hooks and fixtures). Every framework is imported here: one that fails to import fails the
run (collection error); nothing is ever skipped for a missing framework."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from common.frameworks import FRAMEWORKS, load, shape_as_nchw, to_layout  # noqa: E402

MODULES = {fw: load(fw) for fw in FRAMEWORKS}

# RESNET3_MX_NUMPY=1 runs the tests in MXNet's NumPy mode (d2l's `npx.set_np()`), which is
# process-wide state: tests/test_mx_modes.py starts such a run in a child process. It is set
# after resnet_mx is imported, as a user may do: the package reads the mode at call time.
MX_NUMPY = os.environ.get("RESNET3_MX_NUMPY") == "1"
if MX_NUMPY:
    from mxnet import npx
    npx.set_np()


def blocks_per_stage(spec, n: int = 1):
    """`spec` with `n` blocks in every stage: every layer kind of the preset (stem, each block
    kind, the strided and projecting first blocks, the head) in fewer convolutions, for tests
    whose claim does not depend on depth and whose frameworks compile each layer."""
    from dataclasses import replace
    return spec.with_overrides(stages=tuple(replace(s, blocks=n) for s in spec.stages))


def mx_array(x: np.ndarray):
    """x as an MXNet array of the mode the tests run in (mx.np after npx.set_np())."""
    from resnet_mx.modes import array
    return array(x)


def fw_name(module) -> str:
    return module.__name__.removeprefix("resnet_")


def bf16_refused_here(module, make) -> bool:
    """Whether this machine's CPU cannot compute bf16 in the framework: MXNet's oneDNN needs
    AVX-512 (resnet_mx.devices.check_bf16_cpu). Then `make()`, an adapter with bf16, must be
    refused with that reason, and the caller's bf16 checks do not apply here."""
    if fw_name(module) != "mx":
        return False
    from common.core.devices import Device
    from resnet_mx.devices import check_bf16_cpu
    try:
        check_bf16_cpu(Device("cpu"))
        return False
    except ValueError:
        with pytest.raises(ValueError, match=r"^precision: expected a CPU with AVX-512 for bf16 "
                                             r"in MXNet .* without avx512"):
            make()
        return True


class FlaxBlock:
    """A Flax block with the variables its first call makes (a Flax module holds none): called
    on an NHWC batch in training mode, as d2l's JAX tab runs a block; `variables` is what
    resnet_jax.param_counts reads."""

    def __init__(self, module):
        self.module, self.variables = module, {}

    def __call__(self, X):
        import jax
        if not self.variables:
            self.variables = self.module.init(jax.random.PRNGKey(0), X)
        return self.module.apply(self.variables, X, mutable=["batch_stats"])[0]


def make_block(module, in_channels: int, num_channels: int, use_1x1conv: bool = False,
               strides: int = 1, **kwargs):
    """d2l's Residual with each framework's own signature (PyTorch takes input channels first;
    Gluon is told them so that nothing is deferred; Flax's takes its variables on first
    call)."""
    if fw_name(module) == "jax":
        return FlaxBlock(module.Residual(num_channels, use_1x1conv, strides, **kwargs))
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
        return blk(mx_array(x_nchw)).asnumpy()
    out = np.asarray(blk(to_layout(x_nchw, "NHWC")))
    return np.transpose(out, (0, 3, 1, 2))


def part_shapes_nchw(module, model, x_nchw: np.ndarray) -> dict[str, tuple[int, ...]]:
    shapes = module.part_shapes(model, to_layout(x_nchw, module.LAYOUT))
    return {k: shape_as_nchw(v, module.LAYOUT) for k, v in shapes.items()}
