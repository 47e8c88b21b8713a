"""Optimiser settings shared by the three adapters, with one validation.

SGD: PyTorch's formulation (v = momentum * v + g + weight_decay * w; w -= lr * v), which Gluon's
and Keras's SGD equal for a constant learning rate; weight decay is L2 added to the gradient in
all three (Keras's own `weight_decay` is decoupled, so the Keras adapter adds it itself).
Adam: betas (0.9, 0.999), eps 1e-8 everywhere; PyTorch adds eps to sqrt(v_hat), Keras and Gluon
to sqrt(v) (see docs/framework-differences.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.core.errors import Error

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise Error(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise Error(f"--lr: expected a positive learning rate, got {self.lr}")
        if not 0 <= self.momentum < 1:  # NaN fails this too
            raise Error(f"--momentum: expected a value in [0, 1), got {self.momentum}")
        if self.momentum and self.name != "sgd":
            raise Error(f"--momentum: expected 0 with --optimizer {self.name} "
                             f"(Adam has its own betas), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise Error(f"--weight-decay: expected a value >= 0, got {self.weight_decay}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise Error(f"betas: expected two values in [0, 1), got {self.betas}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise Error(f"eps: expected a finite number > 0, got {self.eps}")
        for flag, value, below in (("--lr", self.lr, None), ("--momentum", self.momentum, 1),
                                   ("--weight-decay", self.weight_decay, None),
                                   ("betas", self.betas[0], 1), ("betas", self.betas[1], 1),
                                   ("eps", self.eps, None)):
            check_float32(flag, value, below)


def check_float32(flag: str, value: float, below: float | None = None) -> None:
    """Refuse a hyperparameter that float32, in which every framework holds it, turns into
    something else: infinity (--lr 1e300: PyTorch and MXNet fail, TensorFlow trains into NaN),
    0 from a value that is not 0 (--lr 1e-50), or the bound it must stay below (momentum
    0.9999999999 is 1.0 in float32)."""
    with np.errstate(over="ignore"):
        single = float(np.float32(value))
    if math.isfinite(single) and (single != 0 or value == 0) and (below is None or single < below):
        return
    holds = "a number that float32 holds" + (f" below {below}" if below is not None else "")
    raise Error(f"{flag}: expected {holds}, got {value!r}, which is {single!r} in float32 "
                f"(every framework keeps hyperparameters in float32)")
