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
