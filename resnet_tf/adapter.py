"""The small TensorFlow/Keras adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. This one transposes each batch to NHWC once, on the way in, and runs its
forward pass and its training step as TensorFlow graphs (tf.function).

Two options, both off by default so that the default step is a plain Keras step:
- precision="bf16": the layers are made under Keras's `mixed_bfloat16` dtype policy, so they
  compute in bfloat16 and keep float32 variables; the loss is taken on logits cast to float32
  (the last Dense layer returns bfloat16 under that policy), and logits come back as float32.
- compile=True: the adapter's tf.functions are compiled by XLA (`jit_compile=True`). The
  first call of each function and input shape pays the compilation.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow import keras

from common.checks import batch_as, check_dtype, check_precision, labels_as
from common.frameworks import to_layout
from common.optim import OptimizerConfig
from common.spec import ResNetSpec
from common.weights import Weights
from resnet_tf.model import ResNet
from resnet_tf.weights import (canonical_variables, from_canonical, to_canonical,
                               to_canonical_layout, to_keras_layout)


class Adapter:
    framework = "tf"

    def __init__(self, spec: ResNetSpec, weights: Weights, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False):
        self.spec = spec
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.compiled = bool(compile)
        policy = keras.config.dtype_policy()
        # Layers take their dtype policy when they are made; the global one is restored after.
        keras.config.set_dtype_policy("mixed_bfloat16" if self.precision == "bf16" else self.dtype)
        try:
            self.model = from_canonical(ResNet(spec), weights)
        finally:
            keras.config.set_dtype_policy(policy)
        self.opt = optimizer or OptimizerConfig(lr=lr)
        self.trainable = {n: v for n, v in canonical_variables(self.model).items() if v.trainable}
        if self.opt.name == "sgd":
            self.optimizer = keras.optimizers.SGD(learning_rate=self.opt.lr,
                                                  momentum=self.opt.momentum)
        else:
            self.optimizer = keras.optimizers.Adam(learning_rate=self.opt.lr,
                                                   beta_1=self.opt.betas[0],
                                                   beta_2=self.opt.betas[1],
                                                   epsilon=self.opt.eps)
        # Slot i of the optimiser belongs to trainable variable i (see optimizer_state).
        self.optimizer.build(list(self.trainable.values()))
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=self.dtype)
        graph = dict(reduce_retracing=True, autograph=False,
                     jit_compile=True if self.compiled else None)  # None: TensorFlow's default
        self._forward = tf.function(self._forward_fn, **graph)
        self._grads = tf.function(self._grads_fn, **graph)
        self._step = tf.function(self._step_fn, **graph)

    def _forward_fn(self, X: tf.Tensor, training: bool) -> tf.Tensor:
        # The casts to the variables' dtype are no-ops (dropped when traced) unless bf16.
        return tf.cast(self.model(X, training=training), self.dtype)

    def _grads_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list]:
        """Mean cross-entropy in train mode, its logits and its gradients (trainable order)."""
        variables = list(self.trainable.values())
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(X, training=True), self.dtype)
            loss = self.loss(y, logits)
        return loss, logits, tape.gradient(loss, variables)

    def _step_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, logits, grads = self._grads_fn(X, y)
        variables = list(self.trainable.values())
        if self.opt.weight_decay:  # L2 on the gradient, as PyTorch; Keras's own is decoupled
            grads = [g + self.opt.weight_decay * v for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, variables)
        return loss, logits

    def _inputs(self, x: np.ndarray) -> tf.Tensor:
        return tf.convert_to_tensor(to_layout(batch_as(x, self.dtype, self.spec.in_channels),
                                              "NHWC"))

    def _labels(self, y: np.ndarray, X: tf.Tensor) -> tf.Tensor:
        return tf.convert_to_tensor(labels_as(y, X.shape[0], self.spec.num_classes))

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        return self._forward(self._inputs(x), bool(training)).numpy()

    eval_step = logits

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        X = self._inputs(x)
        loss, _, grads = self._grads(X, self._labels(y, X))
        return float(loss), {n: to_canonical_layout(g.numpy())
                             for n, g in zip(self.trainable, grads)}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        X = self._inputs(x)
        loss, logits = self._step(X, self._labels(y, X))
        return float(loss), int((logits.numpy().argmax(1) == y).sum())

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    def _slots(self) -> dict[str, list]:
        if self.opt.name == "sgd":
            return {"momentum": self.optimizer.momentums} if self.opt.momentum else {}
        return {"momentum": self.optimizer._momentums, "velocity": self.optimizer._velocities}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>`, in the canonical layout and
        Keras's own conventions: SGD `momentum` (= -lr * PyTorch's momentum_buffer), Adam
        `momentum`, `velocity` and `step` (Keras counts steps once for all variables)."""
        if int(self.optimizer.iterations) == 0:
            return {}
        out = {}
        for slot, variables in self._slots().items():
            for name, v in zip(self.trainable, variables):
                out[f"{name}.{slot}"] = to_canonical_layout(v.numpy())
        if self.opt.name == "adam":
            step = np.asarray(int(self.optimizer.iterations), np.float32)
            out |= {f"{name}.step": step for name in self.trainable}
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for slot, variables in self._slots().items():
            for name, v in zip(self.trainable, variables):
                if f"{name}.{slot}" in state:
                    v.assign(to_keras_layout(state[f"{name}.{slot}"]))
        steps = [int(v) for k, v in state.items() if k.endswith(".step")]
        if steps:
            self.optimizer.iterations.assign(max(steps))
