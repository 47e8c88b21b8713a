"""MXNet's two modes, handled in one place for the package (blocks.py has its own two lines,
so that it can be copied alone).

`npx.set_np()` (d2l's MXNet tab) is process-wide state: Gluon then creates parameters and
outputs as `mx.np.ndarray`, and only MXNet's NumPy operators accept those; without it they are
the classic `mx.nd.NDArray`. A user may switch at any time, so the mode is read when a function
runs (`mxnet.util.is_np_array()`), never at import. Arrays handed to a model are of the mode in
force, so that what the model returns is what the user's mode expects.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.util import is_np_array, np_array, np_shape


def numpy_mode() -> bool:
    """Whether `npx.set_np()` is in force now."""
    return is_np_array()


def array(x: np.ndarray, dtype: str | None = None, ctx: mx.Context | None = None) -> mx.nd.NDArray:
    """x as an MXNet array of the mode in force (mx.np.ndarray after npx.set_np()), on `ctx`
    (MXNet's current context, the CPU unless set, when None): one copy from NumPy, straight
    to the device."""
    x = np.asarray(x)
    return (mx.np.array if is_np_array() else mx.nd.array)(x, dtype=dtype or x.dtype, ctx=ctx)


def param_array(param: gluon.Parameter, x: np.ndarray) -> mx.nd.NDArray:
    """x as an array for param.set_data: of the mode the parameter was made in (a model keeps
    the mode it was built in), in its dtype. Not NumPy itself: copying NumPy into a weight that
    oneDNN keeps in its own layout (after a forward pass) fails."""
    kind = mx.np.array if isinstance(param.data(), mx.np.ndarray) else mx.nd.array
    return kind(np.asarray(x), dtype=param.dtype)


def zeros_like(x: mx.nd.NDArray) -> mx.nd.NDArray:
    """Zeros of x's shape and type, in x's mode."""
    return mx.np.zeros_like(x) if isinstance(x, mx.np.ndarray) else mx.nd.zeros_like(x)


@contextmanager
def classic() -> Iterator[None]:
    """MXNet's classic mode for the code inside, whatever the caller's: for networks written
    with classic operators only (the Gluon model zoo's), and for files that MXNet without
    npx.set_np() must be able to read. Both scopes restore the caller's mode on exit."""
    with np_array(False), np_shape(False):
        yield
