"""The small MXNet Gluon adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.

Two options, both off by default so that the default step is a plain Gluon step:
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
- compile=True: `hybridize(static_alloc=True, static_shape=True)`: memory planned once and
  the graph assumed to keep its input shape, instead of the plain `hybridize()`.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.contrib import amp

from common.checks import batch_as, check_dtype, check_precision, labels_as
from common.optim import OptimizerConfig
from common.spec import ResNetSpec
from common.weights import Weights
from resnet_mx.model import build
from resnet_mx.weights import canonical_parameters, from_canonical, to_canonical


class Adapter:
    framework = "mx"

    def __init__(self, spec: ResNetSpec, weights: Weights, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False):
        self.spec = spec
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        if amp.amp._amp_initialized:  # set by amp.init(), which nothing undoes
            raise RuntimeError("precision: expected MXNet's own operators, got a process in "
                               "which mxnet.contrib.amp.init() was called (it makes every network "
                               "compute in float16 or bfloat16, and cannot be undone); make "
                               "adapters in a process that does not call it")
        self.compiled = bool(compile)
        self.model = from_canonical(build(spec, init="framework"), weights)
        self.model.cast(self.dtype)
        # One cached graph: the same results as imperative mode (bit for bit on d2l_resnet18;
        # elsewhere up to the order of float32 sums), with fewer Python calls.
        graph = dict(static_alloc=True, static_shape=True) if self.compiled else {}
        self.model.hybridize(**graph)
        self._net = self._bf16_net(graph) if self.precision == "bf16" else self.model
        self.opt = optimizer or OptimizerConfig(lr=lr)
        self.trainable = {n: p for n, p in canonical_parameters(self.model).items()
                          if p.grad_req != "null"}
        if self.opt.name == "sgd":
            settings = dict(learning_rate=self.opt.lr, momentum=self.opt.momentum,
                            wd=self.opt.weight_decay)
        else:
            settings = dict(learning_rate=self.opt.lr, beta1=self.opt.betas[0],
                            beta2=self.opt.betas[1], epsilon=self.opt.eps,
                            wd=self.opt.weight_decay)
        # Parameter i of this list is the optimiser's index i (see optimizer_state).
        self.trainer = gluon.Trainer(list(self.trainable.values()), self.opt.name, settings,
                                     kvstore=None)
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def _bf16_net(self, graph: dict) -> gluon.SymbolBlock:
        """The model's graph rewritten by AMP for bfloat16, on the model's own Parameters."""
        data = mx.sym.var("data", dtype="float32")
        rewritten = amp.convert_symbol(self.model(data), target_dtype="bfloat16",
                                       data_names=["data"])
        net = gluon.SymbolBlock(rewritten, data, params=self.model.collect_params())
        net.hybridize(**graph)
        return net

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        X = mx.nd.array(batch_as(x, self.dtype, self.spec.in_channels), dtype=self.dtype)
        if not training:
            return self._net(X).asnumpy()
        with autograd.record(train_mode=True):
            out = self._net(X)
        # MXNet updates BatchNorm's running statistics in the backward pass; a backward pass
        # with a zero head gradient updates them and leaves only zeros in .grad() (no step).
        out.backward(mx.nd.zeros_like(out))
        return out.asnumpy()

    eval_step = logits

    def _loss(self, x: np.ndarray, y: np.ndarray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Mean cross-entropy in train mode, with the gradients in every parameter's .grad()."""
        X = mx.nd.array(batch_as(x, self.dtype, self.spec.in_channels), dtype=self.dtype)
        Y = mx.nd.array(labels_as(y, X.shape[0], self.spec.num_classes), dtype=self.dtype)
        with autograd.record(train_mode=True):
            logits = self._net(X)
            loss = self.loss(logits, Y).mean()
        loss.backward()
        return loss, logits

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        loss, _ = self._loss(x, y)
        return float(loss.asscalar()), {n: p.grad().asnumpy() for n, p in self.trainable.items()}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        loss, logits = self._loss(x, y)
        # The loss already is a batch mean; step(batch_size) would divide the gradient again.
        self.trainer.step(1)
        return float(loss.asscalar()), int((logits.asnumpy().argmax(1) == y).sum())

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    # Gluon's public save_states/load_states pickle the optimiser; checkpoints hold arrays only,
    # so the slots are read from and written to the trainer's one updater (one device) directly.
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>`, in Gluon's own conventions:
        SGD `momentum` (= -lr * PyTorch's momentum_buffer), Adam `mean`, `var` and `step`."""
        updater, opt = self.trainer._updaters[0], self.trainer.optimizer
        out = {}
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
        for i, name in enumerate(self.trainable):
            if self.opt.name == "sgd" and f"{name}.momentum" in state:
                updater.states[i] = mx.nd.array(state[f"{name}.momentum"], dtype=self.dtype)
            elif self.opt.name == "adam" and f"{name}.mean" in state:
                updater.states[i] = tuple(mx.nd.array(state[f"{name}.{s}"], dtype=self.dtype)
                                          for s in ("mean", "var"))
                opt._index_update_count[i] = int(state[f"{name}.step"])
                opt.num_update = max(opt.num_update, opt._index_update_count[i])
            else:
                continue
            updater.states_synced[i] = True
