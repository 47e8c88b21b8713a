"""The small TensorFlow/Keras adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. This one transposes each batch to NHWC once, on the way in, and runs its
forward pass and its training step as TensorFlow graphs (tf.function).

device= ("auto", "cpu", "gpu", "gpu:N"; resnet_tf.devices.select): the variables (model and
optimiser) are made under `tf.device`, each batch is copied there once, as it is converted, and
the tf.functions run under the same `tf.device`, so that an op without a placement of its own
runs there too (TensorFlow's default is its first GPU). The copy is TensorFlow's own eager
host-to-device copy; overlapping it with the previous step would take tf.data's
`prefetch_to_device`, and the adapter is handed one NumPy batch at a time. The step returns the
loss and the correct count, computed on the device: two scalars come back to the host, not the
logits.

Three options, all off by default so that the default step is a plain Keras step:
- precision="bf16" or "fp16": the layers are made under Keras's `mixed_bfloat16` or
  `mixed_float16` dtype policy, so they compute in bfloat16 or float16 and keep float32
  variables; the loss is taken on logits cast to float32 (the last Dense layer returns the
  compute dtype under that policy), and logits come back as float32. fp16 also scales the
  loss, as Keras's mixed-precision guide does: the optimiser is wrapped in a
  `keras.optimizers.LossScaleOptimizer` (dynamic scale, 2**15 at first, halved and the step
  skipped where a gradient is not finite, doubled after 2,000 finite steps) whose scale and
  counter travel in optimizer_state (`loss_scale`, `loss_scale.good_steps`).
- compile=True: the adapter's tf.functions are compiled by XLA (`jit_compile=True`). The
  first call of each function and input shape pays the compilation.
- channels_last: accepted, so that the option means the same in every framework, and changes
  nothing: Keras's layers here compute in NHWC (channels last) always.

engine= (resnet_tf.distributed.join): data-parallel training on MultiWorkerMirroredStrategy.
The model and optimiser are made in the strategy's scope (mirrored variables) and train_step
runs in `strategy.run` on this worker's share of the global batch. Keras divides each worker's
mean loss by the number of workers and the optimiser sums their gradients, so the step is one
process's step on the global batch where BatchNorm's statistics are frozen or synchronised
(engine.sync_bn: every BatchNormalization is `synchronized`, its mean and variance summed over
the workers). Without sync_bn each worker normalises with its own share's statistics and keeps
its own running statistics: not the single-process function. With an engine the strategy
places the variables and the step (its worker device: this worker's GPU, else its CPU):
`device=` is then "auto" or that same device, anything else is a DeviceError, and
`adapter.device` is the strategy's device.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

import numpy as np
import tensorflow as tf
from tensorflow import keras

from common.core.checks import (batch_as, check_dtype, check_precision, labels_as)
from common.core.devices import Device, DeviceError, parse
from common.frameworks import to_layout
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec
from common.core.weights import Weights
from resnet_tf.devices import native, select
from resnet_tf.model import ResNet
from resnet_tf.model import features as model_features
from resnet_tf.model import forward_features as model_forward_features
from resnet_tf.weights import (canonical_variables, from_canonical, to_canonical,
                               to_canonical_layout, to_keras_layout)

if TYPE_CHECKING:
    from resnet_tf.distributed import Engine


class Adapter:
    framework = "tf"

    def __init__(self, spec: ResNetSpec, weights: Weights, *, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                 device: str | Device = "auto", engine: Engine | None = None):
        self.spec = spec
        self.opt = optimizer or OptimizerConfig(lr=lr)  # checked before anything is built
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.compiled = bool(compile)
        self.channels_last = True  # NHWC always (see the module's doc)
        self.engine = engine
        # One replica per worker (resnet_tf.distributed.join checks it).
        self.replicas = engine.strategy.num_replicas_in_sync if engine else 1
        self.device = _strategy_device(engine, device) if engine else select(device)
        with engine.strategy.scope() if engine else self._on_device():
            self._make(weights)
        graph = dict(reduce_retracing=True, autograph=False,
                     jit_compile=True if self.compiled else None)  # None: TensorFlow's default
        self._forward = tf.function(self._forward_fn, **graph)
        self._grads = tf.function(self._grads_fn, **graph)
        self._step = tf.function(self._replicated_step_fn if engine else self._step_fn, **graph)

    def _make(self, weights: Weights) -> None:
        """The model, its optimiser and loss (in the strategy's scope where there is one)."""
        spec = self.spec
        policy = keras.config.dtype_policy()
        # Layers take their dtype policy when they are made; the global one is restored after.
        keras.config.set_dtype_policy(MIXED.get(self.precision, self.dtype))
        try:
            self.model = from_canonical(ResNet(spec), weights)
        finally:
            keras.config.set_dtype_policy(policy)
        if self.engine is not None and self.engine.sync_bn:
            # Read by BatchNormalization at call time (its moments), so setting it on the
            # built layers is enough; blocks.py and model.py stay free of distribution.
            for layer in self.model._flatten_layers():
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        self.trainable = {n: v for n, v in canonical_variables(self.model).items() if v.trainable}
        if self.opt.name == "sgd":
            self.optimizer = keras.optimizers.SGD(learning_rate=self.opt.lr,
                                                  momentum=self.opt.momentum)
        else:
            self.optimizer = keras.optimizers.Adam(learning_rate=self.opt.lr,
                                                   beta_1=self.opt.betas[0],
                                                   beta_2=self.opt.betas[1],
                                                   epsilon=self.opt.eps)
        if self.precision == "fp16":
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
        # Slot i of the optimiser belongs to trainable variable i (see optimizer_state).
        self.optimizer.build(list(self.trainable.values()))
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=self.dtype)

    def _forward_fn(self, X: tf.Tensor, training: bool) -> tf.Tensor:
        # The casts to the variables' dtype are no-ops (dropped when traced) unless mixed.
        return tf.cast(self.model(X, training=training), self.dtype)

    def _scaled_grads_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list]:
        """Mean cross-entropy in train mode, its logits and the gradients (trainable order) of
        the loss times the loss scale (fp16; 1 otherwise, and then no multiplication)."""
        variables = list(self.trainable.values())
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(X, training=True), self.dtype)
            loss = self.loss(y, logits)
            scaled = self.optimizer.scale_loss(loss) if self.precision == "fp16" else loss
        return loss, logits, tape.gradient(scaled, variables)

    def _grads_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list]:
        """Mean cross-entropy in train mode, its logits and its gradients (trainable order)."""
        loss, logits, grads = self._scaled_grads_fn(X, y)
        if self.precision == "fp16":
            grads = [g / self.optimizer.dynamic_scale for g in grads]
        return loss, logits, grads

    def _step_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One optimiser step; the loss and the correct count of the forward pass before it."""
        loss, logits, grads = self._scaled_grads_fn(X, y)
        variables = list(self.trainable.values())
        if self.opt.weight_decay:  # L2 on the gradient, as PyTorch; Keras's own is decoupled
            # Under a strategy the optimiser sums the replicas' gradients: each adds its share.
            decay = self.opt.weight_decay / self.replicas
            if self.precision == "fp16":  # the gradients are scaled (by a power of two, so
                decay = decay * self.optimizer.dynamic_scale  # the unscaling is exact)
            grads = [g + decay * v for g, v in zip(grads, variables)]
        # fp16: LossScaleOptimizer divides by the scale, and skips a step that is not finite.
        self.optimizer.apply(grads, variables)
        if self.replicas > 1:
            # Keras's loss is the local mean divided by the replicas (so that the summed
            # gradients are the global mean's); train_step reports the local mean.
            loss = loss * self.replicas
        predicted = tf.argmax(logits, 1, output_type=tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y, tf.int64)), tf.int64))
        return loss, correct

    def _replicated_step_fn(self, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """_step_fn on this worker's replica (the optimiser all-reduces inside it)."""
        strategy = self.engine.strategy
        loss, correct = strategy.run(self._step_fn, args=(X, y))
        return (strategy.experimental_local_results(loss)[0],
                strategy.experimental_local_results(correct)[0])

    def _on_device(self):
        """`tf.device` of the adapter's device; nothing under a strategy, which places."""
        return contextlib.nullcontext() if self.engine else tf.device(native(self.device))

    def _inputs(self, x: np.ndarray, training: bool = True) -> tf.Tensor:
        """The batch in NHWC, copied to the adapter's device (once: the functions take it
        there)."""
        x = to_layout(batch_as(x, self.dtype, self.spec, training), "NHWC")
        with self._on_device():  # an eager tensor is made on the host, then copied there
            return tf.convert_to_tensor(x)

    def _labels(self, y: np.ndarray, X: tf.Tensor) -> tf.Tensor:
        y = labels_as(y, X.shape[0], self.spec.num_classes)
        with self._on_device():
            return tf.convert_to_tensor(y)

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        X = self._inputs(x, bool(training))
        with self._on_device():
            return self._forward(X, bool(training)).numpy()

    eval_step = logits

    def features(self, x: np.ndarray, parts: Sequence[str] | None = None,
                 training: bool = False) -> dict[str, np.ndarray]:
        """Each part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
        batch, in one pass, as NCHW NumPy (the head's: logits); without `parts`, every part's.
        Inference mode; training=True: batch statistics, and the running ones move."""
        with self._on_device():
            out = model_features(self.model, self._inputs(x, training), parts, training=training)
        return {name: np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y
                for name, y in ((name, y.numpy().astype(np.float32)) for name, y in out.items())}

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map (NCHW) before pooling (resnet_tf.model.forward_features)."""
        with self._on_device():
            y = model_forward_features(self.model, self._inputs(x, False)).numpy()
        return np.ascontiguousarray(y.astype(np.float32).transpose(0, 3, 1, 2))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        X = self._inputs(x)
        Y = self._labels(y, X)
        with self._on_device():
            loss, _, grads = self._grads(X, Y)
        return float(loss), {n: to_canonical_layout(g.numpy())
                             for n, g in zip(self.trainable, grads)}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        X = self._inputs(x)
        Y = self._labels(y, X)
        with self._on_device():
            loss, correct = self._step(X, Y)
        return float(loss), int(correct)

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)

    def _slots(self) -> dict[str, list]:
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # fp16's is wrapped
        if self.opt.name == "sgd":
            return {"momentum": inner.momentums} if self.opt.momentum else {}
        return {"momentum": inner._momentums, "velocity": inner._velocities}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>`, in the canonical layout and
        Keras's own conventions: SGD `momentum` (= -lr * PyTorch's momentum_buffer), Adam
        `momentum`, `velocity` and `step` (Keras counts steps once for all variables); fp16
        adds the loss scale, `loss_scale`, and its count of finite steps since it last grew,
        `loss_scale.good_steps`."""
        out = {}
        if self.precision == "fp16":  # also where every step so far was skipped (not finite)
            scale, good = self.optimizer.dynamic_scale.numpy(), self.optimizer.step_counter.numpy()
            if scale != self.optimizer.initial_scale or good or self.optimizer.iterations.numpy():
                out = {"loss_scale": np.asarray(scale, np.float32),
                       "loss_scale.good_steps": np.asarray(good, np.float32)}
        # .numpy(): int() of a Keras variable fails when it is mirrored (engine=).
        if int(self.optimizer.iterations.numpy()) == 0:
            return out
        for slot, variables in self._slots().items():
            for name, v in zip(self.trainable, variables):
                out[f"{name}.{slot}"] = to_canonical_layout(v.numpy())
        if self.opt.name == "adam":
            step = np.asarray(int(self.optimizer.iterations.numpy()), np.float32)
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
        if self.precision == "fp16" and "loss_scale" in state:
            self.optimizer.dynamic_scale.assign(float(state["loss_scale"]))
            self.optimizer.step_counter.assign(int(state.get("loss_scale.good_steps", 0)))


# Keras's mixed-precision dtype policies: float32 variables, the compute in the named type.
MIXED = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def _strategy_device(engine: Engine, requested: str | Device) -> Device:
    """The device the strategy put this worker's replica on; `requested` must be "auto" or
    that device (the strategy places, and the adapter does not contradict it silently)."""
    spec = tf.DeviceSpec.from_string(engine.strategy.extended.worker_devices[0])
    device = Device("gpu", spec.device_index or 0) if spec.device_type == "GPU" else Device("cpu")
    if parse(str(requested)) != "auto" and select(requested) != device:
        raise DeviceError(f"device: expected auto or {device} with engine= (the strategy places "
                          f"this worker on {device}), got {str(requested)!r}")
    return device
