"""The small PyTorch adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.

Two options, both off by default so that the default step is a plain PyTorch step:
- precision="bf16": the forward passes run under `torch.autocast("cpu", dtype=torch.bfloat16)`
  (convolutions and the linear layer in bfloat16, BatchNorm as autocast decides); the weights
  stay float32 master weights, the loss is taken on float32 logits, the backward pass and the
  optimiser step are float32, and logits come back as float32.
- compile=True: the steps run `torch.compile(self.model)`; `self.model` stays the plain module
  (same parameters), so weights, optimiser and checkpoints do not see the compiled wrapper. The
  first step of each mode (train, eval) pays the compilation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from common.checks import batch_as, check_dtype, check_precision, labels_as
from common.optim import OptimizerConfig
from common.spec import ResNetSpec
from common.weights import Weights
from resnet_torch.model import ResNet
from resnet_torch.weights import canonical_tensors, from_canonical, to_canonical


class Adapter:
    framework = "torch"

    def __init__(self, spec: ResNetSpec, weights: Weights, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False):
        self.spec = spec
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.model = from_canonical(ResNet(spec), weights).to(getattr(torch, self.dtype))
        self.compiled = bool(compile)
        self._net = torch.compile(self.model) if self.compiled else self.model
        # Chosen once here, so that the default step calls the plain module and nothing more.
        self._forward = self._bf16_forward if self.precision == "bf16" else self._net
        self.opt = optimizer or OptimizerConfig(lr=lr)
        params = [t for t in canonical_tensors(self.model).values() if t.requires_grad]
        # Keras and Gluon hold the learning rate in float32; so does this adapter, which only
        # shows in float64 runs (in float32 PyTorch rounds it the same way when it applies it).
        lr = float(np.float32(self.opt.lr))
        if self.opt.name == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=self.opt.momentum,
                                             weight_decay=self.opt.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=lr, betas=self.opt.betas,
                                              eps=self.opt.eps, weight_decay=self.opt.weight_decay)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch_as(x, self.dtype, self.spec.in_channels))

    def _bf16_forward(self, X: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self._net(X).float()  # the loss and the caller see float32 logits

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        self.model.train(training)
        with torch.no_grad():
            return self._forward(self._tensor(x)).numpy()

    eval_step = logits

    def _loss(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        X = self._tensor(x)
        Y = torch.from_numpy(labels_as(y, len(X), self.spec.num_classes)).long()
        logits = self._forward(X)
        return F.cross_entropy(logits, Y), logits

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        self.optimizer.zero_grad()
        loss, _ = self._loss(x, y)
        loss.backward()
        return float(loss.detach()), {n: t.grad.numpy().copy()
                                      for n, t in canonical_tensors(self.model).items()
                                      if t.grad is not None}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        self.optimizer.zero_grad()
        loss, logits = self._loss(x, y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), int((logits.argmax(1).numpy() == y).sum())

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>` (PyTorch's own conventions)."""
        tensors = canonical_tensors(self.model)
        out = {}
        for name, t in tensors.items():
            for slot, value in self.optimizer.state.get(t, {}).items():
                out[f"{name}.{slot}"] = np.asarray(value.detach().numpy() if torch.is_tensor(value)
                                                   else value, np.float32).copy()
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for name, t in canonical_tensors(self.model).items():
            slots = {k[len(name) + 1:]: v for k, v in state.items()
                     if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
            if slots:
                self.optimizer.state[t] = {s: torch.tensor(v) for s, v in slots.items()}
