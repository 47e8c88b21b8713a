"""The small MXNet Gluon adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from common.checks import batch_as, check_dtype
from common.optim import OptimizerConfig
from common.spec import ResNetSpec
from common.weights import Weights
from resnet_mx.model import build
from resnet_mx.weights import canonical_parameters, from_canonical, to_canonical


class Adapter:
    framework = "mx"

    def __init__(self, spec: ResNetSpec, weights: Weights, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32"):
        self.spec = spec
        self.dtype = check_dtype(dtype)
        self.model = from_canonical(build(spec, init="framework"), weights)
        self.model.cast(self.dtype)
        # One cached graph: the same results as imperative mode (bit for bit on d2l_resnet18;
        # elsewhere up to the order of float32 sums), with fewer Python calls.
        self.model.hybridize()
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

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        X = mx.nd.array(batch_as(x, self.dtype, self.spec.in_channels), dtype=self.dtype)
        if not training:
            return self.model(X).asnumpy()
        with autograd.record(train_mode=True):
            out = self.model(X)
        # MXNet updates BatchNorm's running statistics in the backward pass; a backward pass
        # with a zero head gradient updates them and leaves only zeros in .grad() (no step).
        out.backward(mx.nd.zeros_like(out))
        return out.asnumpy()

    eval_step = logits

    def _loss(self, x: np.ndarray, y: np.ndarray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Mean cross-entropy in train mode, with the gradients in every parameter's .grad()."""
        X = mx.nd.array(batch_as(x, self.dtype, self.spec.in_channels), dtype=self.dtype)
        Y = mx.nd.array(y, dtype=self.dtype)
        with autograd.record(train_mode=True):
            logits = self.model(X)
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
