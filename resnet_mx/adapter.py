"""The small MXNet Gluon adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.

device= ("auto", "cpu", "gpu", "gpu:N"; resnet_mx.devices): the model's Parameters live on that
context (`mx.gpu(N)` or `mx.cpu()`) from the start, and each batch goes to it once, as
`mx.nd.array(x, ctx=)`: MXNet's engine copies it on its own copy worker, beside the previous
step's backward pass and update still queued on the device. `adapter.device` is the resolved
common.core.devices.Device, `adapter.ctx` MXNet's context. A step waits for the device only where it
returns: the loss and the logits of the correct count (both ready after the forward pass), and
with fp16, the loss scaler's overflow check (below), which waits for the gradients.

Options, all off by default so that the default step is a plain Gluon step:
- precision="bf16": MXNet 1.9.1's AMP rewrites this adapter's graph
  (`mxnet.contrib.amp.convert_symbol`, the pass behind `amp.convert_hybrid_block`): an
  `amp_cast` to bfloat16 before every Convolution and FullyConnected (inputs and weights), so
  those run in bfloat16 on oneDNN, and so do the BatchNorm, ReLU, pooling and residual sums
  after them (operators AMP lists as dtype-neutral; one it keeps in float32, such as the Pad of
  a zero-padding shortcut, gets a cast back). BatchNorm keeps float32 parameters and running
  statistics; the output is cast back to float32.
  The rewritten graph runs as a SymbolBlock that *shares* the model's float32 Parameters, so
  the Trainer updates float32 master weights (the gradient flows back through `amp_cast` as
  float32) and get/set_weights see them unchanged. Training and inference both work on CPU.
  `amp.init()` is deliberately not used: it replaces `mx.nd.*` and `mx.sym.*` operator
  functions for the whole process, for good (MXNet has no way to undo it), so every Gluon
  network afterwards, the fp32 adapters' included, would compute in bfloat16 (tried: an fp32
  adapter made after it returned bfloat16 logits). The graph rewrite touches nothing outside
  this adapter. In a process where someone else called `amp.init()`, no adapter can compute in
  float32 any more, so every adapter refuses to be made there (RuntimeError) rather than
  silently computing in lower precision.
- precision="fp16": the same rewrite with target float16, for GPUs (cuDNN's float16 kernels,
  on tensor cores): AMP's float16 lists put Convolution and FullyConnected in float16, and the
  BatchNorm, ReLU, pooling, padding and residual sums after them follow their input; float32
  master weights, shared as above. Loss scaling: AMP's dynamic loss scaler
  (`mxnet.contrib.amp.loss_scaler.LossScaler`, attached to the Trainer as `amp.init_trainer`
  attaches it; init_trainer itself insists on amp.init()): the loss is multiplied by the scale
  before the backward pass (`amp.scale_loss`), the step divides the gradients by it, and a
  step whose gradients hold an infinity or NaN is skipped and halves the scale; 2000 good
  steps in a row double it (from 2**16, at most 2**24). Checking for overflow reads one flag
  from the device each step. The scaler's state is part of optimizer_state (`amp.loss_scale`,
  `amp.next_loss_scale`, `amp.unskipped`), so a resumed run goes on with the same scale.
  Refused on the CPU (ValueError): MXNet 1.9's CPU has no float16 matrix product (tried: a
  float16 Convolution fails with "FP16 gemm on cpu not implemented!",
  src/operator/linalg_impl.h), so fp16's arithmetic runs on GPUs only; its loss scaling is
  tested on the CPU over a float32 graph. bf16 on a GPU is not refused, and not tried: MXNet
  1.9's bfloat16 support was written for oneDNN, its CPU backend.
- compile=True: `hybridize(static_alloc=True, static_shape=True)`: memory planned once and
  the graph assumed to keep its input shape, instead of the plain `hybridize()`.
- channels_last: accepted, so that the option means the same in every framework, and changes
  nothing: Gluon 1.9's CPU convolutions take NCHW, and its oneDNN backend already keeps
  activations in oneDNN's own blocked layout between operators.

engine= (resnet_mx.distributed.join): data-parallel training on a KVStore `dist_sync`. The
Trainer pushes each worker's gradient and pulls the workers' sum (update_on_kvstore=False),
then runs the single process's optimiser on it; train_step takes this worker's share of the
global batch, and `step(workers)` makes the mean of the workers' mean losses the loss that is
differentiated, as one process's mean over the whole batch. Works in both modes: NumPy-mode
workers match a classic single process as classic ones do (tests/test_distributed_mx.py).

Both of MXNet's modes (resnet_mx.modes): an adapter made after `npx.set_np()` builds its model
with mx.np parameters and hands it mx.np batches; the NumPy it takes and returns is the same.
The optimiser's slots are classic NDArrays in both modes (Gluon's Updater hands the optimiser
classic views of the weights). bf16 and fp16 are refused in NumPy mode: AMP's operator lists
name the classic operators, and a NumPy-mode graph's ReLUs and sums (_npx_relu, _npi_add) are
on none of them, so its rewrite is not the documented one above (docs/performance.md,
"Measurements behind the code").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.contrib import amp
from mxnet.contrib.amp.loss_scaler import LossScaler

from common.core.errors import Error
from common.core.checks import (batch_as, check_dtype, check_precision, labels_as)
from common.core.devices import Device
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec
from common.core.weights import Weights
from resnet_mx.devices import check_bf16_cpu, native, select
from resnet_mx.model import features as model_features
from resnet_mx.model import forward_features as model_forward_features
from resnet_mx.model import to_load
from resnet_mx.modes import array, numpy_mode, zeros_like
from resnet_mx.weights import canonical_parameters, from_canonical, to_canonical

if TYPE_CHECKING:  # not imported here: importing it as a KVStore server runs the server
    from resnet_mx.distributed import Engine

# The low-precision type of each mixed precision, as AMP names it.
_TARGET = {"bf16": "bfloat16", "fp16": "float16"}


class Adapter:
    framework = "mx"

    def __init__(self, spec: ResNetSpec, weights: Weights, *, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                 device: str | Device = "auto", engine: Engine | None = None):
        self.spec = spec
        self.opt = optimizer or OptimizerConfig(lr=lr)  # checked before anything is built
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        if amp.amp._amp_initialized:  # set by amp.init(), which nothing undoes
            raise RuntimeError("precision: expected MXNet's own operators, got a process in "
                               "which mxnet.contrib.amp.init() was called (it makes every network "
                               "compute in float16 or bfloat16, and cannot be undone); make "
                               "adapters in a process that does not call it")
        if self.precision != "fp32" and numpy_mode():
            raise Error(f"precision: expected fp32 under npx.set_np() (MXNet 1.9's AMP "
                        f"lists only classic operators), got {self.precision!r}; use "
                        f"{self.precision} in a process without npx.set_np()")
        self.device = select(device)
        self.ctx = native(self.device)
        if self.precision == "bf16":
            check_bf16_cpu(self.device)
        if self.precision == "fp16" and not self.device.is_gpu:
            raise Error(f"precision: expected fp32 or bf16 on the CPU, got 'fp16' on "
                        f"device {self.device}; MXNet 1.9 has no float16 matrix product "
                        f"on the CPU (its float16 Convolution fails with 'FP16 gemm on "
                        f"cpu not implemented!'): use fp16 on a GPU, or bf16 on the CPU")
        self.compiled = bool(compile)
        self.channels_last = False  # NCHW in Gluon, oneDNN's blocked layout inside
        self.model = from_canonical(to_load(spec), weights)
        self.model.cast(self.dtype)
        # Built and loaded on the CPU, then moved (a copy of each Parameter and a fresh
        # gradient buffer on the device); the Trainer and the hybridized graph see only the
        # device's copy.
        self.model.collect_params().reset_ctx(self.ctx)
        # One cached graph: the same results as imperative mode (bit for bit on d2l_resnet18;
        # elsewhere up to the order of float32 sums), with fewer Python calls.
        graph = dict(static_alloc=True, static_shape=True) if self.compiled else {}
        self.model.hybridize(**graph)
        self._net = self._mixed_net(graph) if self.precision in _TARGET else self.model
        self.trainable = {n: p for n, p in canonical_parameters(self.model).items()
                          if p.grad_req != "null"}
        if self.opt.name == "sgd":
            settings = dict(learning_rate=self.opt.lr, momentum=self.opt.momentum,
                            wd=self.opt.weight_decay)
        else:
            settings = dict(learning_rate=self.opt.lr, beta1=self.opt.betas[0],
                            beta2=self.opt.betas[1], epsilon=self.opt.eps,
                            wd=self.opt.weight_decay)
        self.engine = engine
        # Parameter i of this list is the optimiser's index i (see optimizer_state), and the
        # KVStore's key i.
        self.trainer = gluon.Trainer(list(self.trainable.values()), self.opt.name, settings,
                                     kvstore=engine.kvstore if engine else None,
                                     update_on_kvstore=False if engine else None)
        self.loss_scaler = None
        if self.precision == "fp16":  # what amp.init_trainer does, without amp.init()
            self.loss_scaler = LossScaler()
            self.trainer._amp_loss_scaler = self.loss_scaler
            self.trainer._amp_original_scale = self.trainer._scale
        if engine is not None:
            engine.attach(self.trainer)
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def _mixed_net(self, graph: dict) -> gluon.SymbolBlock:
        """The model's graph rewritten by AMP for bfloat16 or float16, on the model's own
        Parameters."""
        data = mx.sym.var("data", dtype="float32")
        rewritten = amp.convert_symbol(self.model(data), target_dtype=_TARGET[self.precision],
                                       data_names=["data"])
        net = gluon.SymbolBlock(rewritten, data, params=self.model.collect_params())
        net.hybridize(**graph)
        return net

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        X = array(batch_as(x, self.dtype, self.spec, training), dtype=self.dtype, ctx=self.ctx)
        if not training:
            return self._net(X).asnumpy()
        with autograd.record(train_mode=True):
            out = self._net(X)
        # MXNet updates BatchNorm's running statistics in the backward pass; a backward pass
        # with a zero head gradient updates them and leaves only zeros in .grad() (no step).
        out.backward(zeros_like(out))
        return out.asnumpy()

    eval_step = logits

    def features(self, x: np.ndarray, parts: Sequence[str] | None = None,
                 training: bool = False) -> dict[str, np.ndarray]:
        """Each part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
        batch, in one pass, as NCHW NumPy (the head's: logits); without `parts`, every part's.
        Inference mode; training=True: batch statistics, and the running ones move."""
        X = array(batch_as(x, self.dtype, self.spec, training), dtype=self.dtype, ctx=self.ctx)
        out = model_features(self.model, X, parts, training=training)
        return {name: y.asnumpy().astype(np.float32) for name, y in out.items()}

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map (NCHW) before pooling (resnet_mx.model.forward_features)."""
        X = array(batch_as(x, self.dtype, self.spec, False), dtype=self.dtype, ctx=self.ctx)
        return model_forward_features(self.model, X).asnumpy().astype(np.float32)

    def _loss(self, x: np.ndarray, y: np.ndarray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Mean cross-entropy in train mode, with the gradients in every parameter's .grad()."""
        X = array(batch_as(x, self.dtype, self.spec, True), dtype=self.dtype, ctx=self.ctx)
        Y = array(labels_as(y, X.shape[0], self.spec.num_classes), dtype=self.dtype,
                  ctx=self.ctx)
        with autograd.record(train_mode=True):
            logits = self._net(X)
            loss = self.loss(logits, Y).mean()
            head = loss if self.loss_scaler is None else self._scaled(loss)
        head.backward()
        return loss, logits

    def _scaled(self, loss: mx.nd.NDArray) -> mx.nd.NDArray:
        """fp16: the loss times the loss scale (recorded), and the Trainer told to divide the
        gradients by that scale in its next step (AMP's scale_loss)."""
        with amp.scale_loss(loss, self.trainer) as scaled:
            return scaled

    def _grad_scale(self) -> float:
        """What the gradients in .grad() are multiplied by: the loss scale under fp16."""
        return 1.0 if self.loss_scaler is None else self.loss_scaler.loss_scale

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        loss, _ = self._loss(x, y)
        scale = self._grad_scale()
        grads = {n: p.grad().asnumpy() for n, p in self.trainable.items()}
        if scale != 1:  # a power of two: dividing is exact
            grads = {n: g / np.float32(scale) for n, g in grads.items()}
        return loss.asnumpy().item(), grads

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        loss, logits = self._loss(x, y)
        # The loss already is a batch mean; step(batch_size) would divide the gradient again.
        # dist_sync sums the workers' gradients of their mean losses: divide by the workers.
        self.trainer.step(self.engine.workers if self.engine else 1)
        # .item(): mx.np arrays have no asscalar; a classic mean has shape (1,), NumPy's ().
        return loss.asnumpy().item(), int((logits.asnumpy().argmax(1) == y).sum())

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    # Gluon's public save_states/load_states pickle the optimiser; checkpoints hold arrays only,
    # so the slots are read from and written to the trainer's one updater (one device) directly.
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>`, in Gluon's own conventions:
        SGD `momentum` (= -lr * PyTorch's momentum_buffer), Adam `mean`, `var` and `step`;
        under fp16 also the loss scaler's `amp.loss_scale` (this step's scale),
        `amp.next_loss_scale` and `amp.unskipped` (good steps since the scale last changed)."""
        updater, opt = self.trainer._updaters[0], self.trainer.optimizer
        out = {}
        if self.loss_scaler is not None:  # powers of two and counts < 2000: exact in float32
            ls = self.loss_scaler
            out |= {"amp.loss_scale": np.asarray(ls._loss_scale, np.float32),
                    "amp.next_loss_scale": np.asarray(ls._next_loss_scale, np.float32),
                    "amp.unskipped": np.asarray(ls._unskipped, np.float32)}
        for i, name in enumerate(self.trainable):
            state = updater.states.get(i)
            if state is None:  # not stepped yet, or SGD without momentum: no slots
                continue
            if self.opt.name == "sgd":
                out[f"{name}.momentum"] = state.asnumpy()
            else:
                out[f"{name}.mean"], out[f"{name}.var"] = (s.asnumpy() for s in state)
                out[f"{name}.step"] = np.asarray(opt._index_update_count[i], np.float32)
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        updater, opt = self.trainer._updaters[0], self.trainer.optimizer
        if self.loss_scaler is not None and "amp.loss_scale" in state:
            ls = self.loss_scaler
            ls._loss_scale = float(state["amp.loss_scale"])
            ls._next_loss_scale = float(state["amp.next_loss_scale"])
            ls._unskipped = int(state["amp.unskipped"])
        # Classic arrays in both modes, as the optimiser makes its own (see the module's doc),
        # on the weights' device.
        for i, name in enumerate(self.trainable):
            if self.opt.name == "sgd" and f"{name}.momentum" in state:
                updater.states[i] = mx.nd.array(state[f"{name}.momentum"], dtype=self.dtype,
                                                ctx=self.ctx)
            elif self.opt.name == "adam" and f"{name}.mean" in state:
                updater.states[i] = tuple(mx.nd.array(state[f"{name}.{s}"], dtype=self.dtype,
                                                      ctx=self.ctx) for s in ("mean", "var"))
                opt._index_update_count[i] = int(state[f"{name}.step"])
                opt.num_update = max(opt.num_update, opt._index_update_count[i])
            else:
                continue
            updater.states_synced[i] = True
