"""The small PyTorch adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.

Device (`device="auto"`, resnet_torch.devices): auto takes PyTorch's first CUDA device when it
sees one, else the CPU; "cpu", "gpu", "gpu:N" or a common.core.devices.Device choose; a GPU that
PyTorch does not see is a DeviceError, never the CPU instead. `self.device` is the resolved
common Device. The model is built there, and each batch is copied there once: on a GPU from
pinned host memory with `non_blocking=True`, so the host does not wait for the copy. A training
step waits for the GPU once, to fetch the loss and the correct count together.

Options, all off by default so that the default step is a plain PyTorch step:
- precision="bf16" or "fp16": the forward passes run under `torch.autocast(<device type>,
  dtype=torch.bfloat16 / torch.float16)` (convolutions and the linear layer in the low
  precision, BatchNorm as autocast decides; CPU autocast runs float16 too); the weights stay
  float32 master weights, the loss is taken on float32 logits, and logits come back as float32.
  fp16 adds loss scaling (`torch.amp.GradScaler`: the loss is multiplied by the scale before
  the backward pass, so that small gradients survive float16; a step whose gradients overflow
  is skipped and the scale halved, and it doubles after 2,000 clean steps) with PyTorch's
  fused SGD/Adam, which unscale and skip on the device (the plain optimisers' skip test reads
  the overflow flag on the host, one more wait per step). The scale and its growth counter are
  part of optimizer_state (`grad_scaler.scale`, `grad_scaler.growth_tracker`), so that a
  resumed run keeps them. fp16 is the GPU's mixed precision: on a CPU without native float16
  arithmetic (resnet_torch.devices.cpu_has_float16) it runs, emulated and ~100x slower than
  fp32, and a RuntimeWarning says so; bf16 is the CPU's.
- compile=True: the steps run `torch.compile(self.model)`; `self.model` stays the plain module
  (same parameters), so weights, optimiser and checkpoints do not see the compiled wrapper. The
  first step of each mode (train, eval) pays the compilation.
- channels_last=True: the model's 4-d parameters and every batch in `torch.channels_last`
  memory format (NHWC in memory, NCHW in shape), oneDNN's preferred layout: fewer reorders
  between operators. Same arithmetic as the default (logits within float32 rounding, tested);
  the fastest fp32 option of `resnet-bench --tuned` for PyTorch on the CPU
  (docs/performance.md). Weights, gradients and optimiser state come back as NCHW NumPy.

Data-parallel (`engine=resnet_torch.distributed.join(...)`): the model sits on the engine's
device (the CPU, or this worker's GPU), with synchronised BatchNorm if the engine says so, and
train_step and loss_and_grads run it through DistributedDataParallel, which averages the
workers' gradients: each worker passes its own share of the global batch and gets the update
of the whole batch. logits and eval_step stay local (the plain module, no collective), except
that synchronised BatchNorm in train mode (logits(training=True)) needs every worker.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from common.core.checks import (batch_as, check_dtype, check_precision, labels_as)
from common.core.devices import Device
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec
from common.core.weights import Weights
from resnet_torch import devices
from resnet_torch.devices import for_engine, native, select
from resnet_torch.model import ResNet
from resnet_torch.model import features as model_features
from resnet_torch.model import forward_features as model_forward_features
from resnet_torch.weights import canonical_tensors, from_canonical, to_canonical

if TYPE_CHECKING:
    from resnet_torch.distributed import Engine


class Adapter:
    framework = "torch"

    def __init__(self, spec: ResNetSpec, weights: Weights, *, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                 device: str | Device = "auto", engine: Engine | None = None):
        self.spec = spec
        self.opt = optimizer or OptimizerConfig(lr=lr)  # checked before anything is built
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.engine = engine
        # With an engine, its worker's device; `device` may only agree with it.
        self.device = for_engine(device, engine.device) if engine else select(device)
        self._device = engine.device if engine else native(self.device)
        self._pinned = self._device.type == "cuda"  # asynchronous host-to-GPU copies
        if self.precision == "fp16" and not self._pinned and not devices.cpu_has_float16():
            warnings.warn("precision fp16 on a CPU without native float16 arithmetic: PyTorch "
                          "emulates it, ~100x slower than fp32 (bf16 is the CPU's mixed "
                          "precision, fp16 the GPU's)", RuntimeWarning, stacklevel=2)
        self.model = from_canonical(ResNet(spec), weights).to(self._device,
                                                              getattr(torch, self.dtype))
        self.channels_last = bool(channels_last)
        if self.channels_last:  # before the optimiser and the engine see the parameters
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        if engine:  # before the optimiser: it may swap the BatchNorm layers (same parameters)
            self.model = engine.prepare(self.model, self.compiled)
        self._net = torch.compile(self.model) if self.compiled else self.model
        # Chosen once here, so that the default step calls the plain module and nothing more.
        self._forward = self._autocast(self._net)
        self._train_forward = self._forward
        if engine:
            ddp = engine.replicate(self.model)
            self._train_forward = self._autocast(torch.compile(ddp) if self.compiled else ddp)
        self.scaler = (torch.amp.GradScaler(self._device.type) if self.precision == "fp16"
                       else None)
        fused = {"fused": True} if self.scaler else {}  # unscale and skip on the device
        params = [t for t in canonical_tensors(self.model).values() if t.requires_grad]
        # Keras and Gluon hold the learning rate in float32; so does this adapter, which only
        # shows in float64 runs (in float32 PyTorch rounds it the same way when it applies it).
        lr = float(np.float32(self.opt.lr))
        if self.opt.name == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=self.opt.momentum,
                                             weight_decay=self.opt.weight_decay, **fused)
        else:
            self.optimizer = torch.optim.Adam(params, lr=lr, betas=self.opt.betas,
                                              eps=self.opt.eps, weight_decay=self.opt.weight_decay,
                                              **fused)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the adapter's device: on a GPU through pinned memory, without
        waiting for the copy (the caching host allocator keeps the pinned block until the copy
        is done); on the CPU the tensor itself."""
        if self._pinned:
            return t.pin_memory().to(self._device, non_blocking=True)
        return t

    def _tensor(self, x: np.ndarray, training: bool) -> torch.Tensor:
        X = self._to_device(torch.from_numpy(batch_as(x, self.dtype, self.spec, training)))
        return X.contiguous(memory_format=torch.channels_last) if self.channels_last else X

    def _autocast(self, net):
        """net itself in full precision; under bf16/fp16, net under autocast, returning
        float32 logits (the loss and the caller see float32)."""
        if self.precision == "fp32":
            return net
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        device_type = self._device.type

        def forward(X: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype):
                return net(X).float()
        return forward

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        self.model.train(training)
        with torch.no_grad():
            return self._forward(self._tensor(x, training)).cpu().numpy()  # waits for the device

    eval_step = logits

    def features(self, x: np.ndarray, parts: Sequence[str] | None = None,
                 training: bool = False) -> dict[str, np.ndarray]:
        """Each part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
        batch, in one pass, as NCHW NumPy (the head's: logits); without `parts`, every part's.
        Inference mode; training=True: batch statistics, and the running ones move."""
        with torch.no_grad():
            out = model_features(self.model, self._tensor(x, training), parts, training=training)
        return {name: y.float().cpu().numpy() for name, y in out.items()}

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map (NCHW) before pooling (resnet_torch.model.forward_features)."""
        with torch.no_grad():
            return model_forward_features(self.model, self._tensor(x, False)).float().cpu().numpy()

    def _loss(self, x: np.ndarray, y: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean loss, logits, labels on the device) of a batch in train mode."""
        self.model.train()
        X = self._tensor(x, True)
        Y = self._to_device(torch.from_numpy(labels_as(y, len(X), self.spec.num_classes)).long())
        logits = self._train_forward(X)
        return F.cross_entropy(logits, Y), logits, Y

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name
        (with an engine: the local share's loss, the global batch's gradient). Under fp16 the
        backward pass is loss-scaled as in training and the gradients are divided back (an
        overflow shows as inf)."""
        self.optimizer.zero_grad()
        loss, _, _ = self._loss(x, y)
        self._backward(loss)
        scale = self.scaler.get_scale() if self.scaler else None
        return float(loss.detach()), {n: (t.grad if scale is None else t.grad / scale)
                                      .cpu().numpy().copy()
                                      for n, t in canonical_tensors(self.model).items()
                                      if t.grad is not None}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them). With an
        engine, x and y are this worker's share and the step is the whole batch's."""
        self.optimizer.zero_grad()
        loss, logits, Y = self._loss(x, y)
        self._backward(loss)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped, on the device, if a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.engine:
            self.engine.average_running_stats(self.model)
        # The one wait for the device: loss and correct count in one transfer (both exact in
        # float64: a float32 or float64 loss, a count below 2**53).
        correct = (logits.argmax(1) == Y).sum()
        loss_value, count = torch.stack([loss.detach().double(), correct.double()]).tolist()
        return loss_value, int(count)

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>` (PyTorch's own conventions);
        under fp16 also the loss scale, `grad_scaler.scale` and `grad_scaler.growth_tracker`
        (clean steps since the scale last changed; both exact in float32)."""
        tensors = canonical_tensors(self.model)
        out = {}
        for name, t in tensors.items():
            for slot, value in self.optimizer.state.get(t, {}).items():
                out[f"{name}.{slot}"] = np.asarray(value.detach().cpu().numpy()
                                                   if torch.is_tensor(value)
                                                   else value, np.float32).copy()
        if self.scaler:
            scaler = self.scaler.state_dict()
            out["grad_scaler.scale"] = np.asarray(scaler["scale"], np.float32)
            out["grad_scaler.growth_tracker"] = np.asarray(scaler["_growth_tracker"], np.float32)
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        # Where PyTorch's own load_state_dict puts them: slots in the parameter's dtype on its
        # device; `step` (Adam) a float32 on the CPU, or on the device for a fused optimiser.
        step_on_device = any(g.get("fused") or g.get("capturable")
                             for g in self.optimizer.param_groups)
        for name, t in canonical_tensors(self.model).items():
            slots = {k[len(name) + 1:]: v for k, v in state.items()
                     if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
            if slots:
                self.optimizer.state[t] = {
                    s: torch.tensor(v, dtype=torch.float32,
                                    device=t.device if step_on_device else "cpu")
                    if s == "step" else torch.tensor(v, dtype=t.dtype, device=t.device)
                    for s, v in slots.items()}
        if self.scaler and "grad_scaler.scale" in state:
            self.scaler.load_state_dict(self.scaler.state_dict() | {
                "scale": float(np.asarray(state["grad_scaler.scale"]).item()),
                "_growth_tracker": int(np.asarray(state.get("grad_scaler.growth_tracker", 0))
                                       .item())})
