"""A plain Keras ResNet and training step: the yardstick that `resnet-bench` holds the project to.

Written as a Keras user writes d2l's ResNet, straight from tf.keras: convolutions and the
max-pool with padding='same' (d2l's choice; it pads strided layers bottom-right only, which is a
slightly different function from the project's symmetric padding, at the same cost), a
GradientTape step compiled with tf.function, random tensors made in NHWC. It imports nothing
from this project; it reads the values of a spec (stem, stages, block kind, ...) and nothing
else. The bench runs it interleaved with the project's `Adapter` step on the same network, batch
and threads, so that any difference is the cost of the project's code.
"""
import contextlib
import os
import time

import tensorflow as tf
from tensorflow import keras

VERSION = f"{tf.__version__} (Keras {keras.__version__})"
# resnet-bench --tuned: TensorFlow's documented speed options, as make_step's keywords.
SPEED_OPTIONS = {"XLA (jit_compile)": {"compile": True},
                 "bf16 (mixed_bfloat16)": {"precision": "bf16"}}
# resnet-bench --tuned: switches TensorFlow reads once, when it is imported, so each is tried in
# a process of its own, started with this environment (name -> variables). "oneDNN off":
# TensorFlow's own Eigen kernels in place of oneDNN's, which TF 2.17 uses by default on Linux x86.
PROCESS_OPTIONS = {"oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"}}


class Block(keras.layers.Layer):
    """One residual block of any kind the spec can ask for: basic or bottleneck, v1 or
    pre-activation, 1x1 projection (with or without BatchNorm) or zero-padded shortcut."""
    def __init__(self, spec, c_in, c_out, stride, project, width):
        super().__init__()
        if spec.block == "basic":
            convs = [(c_out, 3, stride, 1), (c_out, 3, 1, 1)]
        else:
            s1, s2 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
            convs = [(width, 1, s1, 1), (width, 3, s2, spec.groups), (c_out, 1, 1, 1)]
        bn = dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)
        self.convs = [keras.layers.Conv2D(o, k, s, padding="same", groups=g,
                                          use_bias=spec.has_bias(f"conv{n}"))
                      for n, (o, k, s, g) in enumerate(convs, start=1)]
        self.bns = [keras.layers.BatchNormalization(**bn) for _ in convs]
        self.proj, self.pad, self.preact, self.stride = None, 0, spec.preact, stride
        if project and spec.shortcut == "conv":
            self.proj = [keras.layers.Conv2D(c_out, 1, stride,
                                             use_bias=spec.has_bias(f"conv{len(convs) + 1}"))]
            if spec.shortcut_bn:
                self.proj.append(keras.layers.BatchNormalization(**bn))
        elif project:
            self.pad = c_out - c_in

    def shortcut(self, X):
        if self.proj is not None:
            for layer in self.proj:
                X = layer(X)
        elif self.pad:
            s, p = self.stride, self.pad
            X = tf.pad(X[:, ::s, ::s, :], [[0, 0], [0, 0], [0, 0], [p // 2, p - p // 2]])
        return X

    def call(self, X):
        if self.preact:
            Y = tf.nn.relu(self.bns[0](X))
            if self.proj is not None:
                X = self.shortcut(Y)
            for i, conv in enumerate(self.convs):
                Y = conv(Y if i == 0 else tf.nn.relu(self.bns[i](Y)))
            return Y + X
        Y = X
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            Y = bn(conv(Y))
            if i < len(self.convs) - 1:
                Y = tf.nn.relu(Y)
        return tf.nn.relu(Y + self.shortcut(X))


def network(spec) -> keras.Sequential:
    """The spec's network as one keras.Sequential, with Keras's own initialisation, built."""
    st, bn = spec.stem, dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)
    layers = [keras.layers.Conv2D(st.channels, st.kernel_size, st.stride, padding="same",
                                  use_bias=spec.has_bias("stem")),
              keras.layers.BatchNormalization(**bn), keras.layers.ReLU()]
    if st.pool:
        layers.append(keras.layers.MaxPool2D(3, 2, padding="same"))
    c = st.channels
    for stage in spec.stages:
        for j in range(stage.blocks):
            layers.append(Block(spec, c, stage.channels, stage.stride if j == 0 else 1,
                                j == 0 and stage.project, spec.mid_channels(stage)))
            c = stage.channels
    if spec.preact:
        layers += [keras.layers.BatchNormalization(**bn), keras.layers.ReLU()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(spec.num_classes)]
    net = keras.Sequential(layers)
    net.build((None, 32, 32, spec.in_channels))
    return net


def count_params(net) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of the reference network."""
    count = lambda ws: sum(int(w.shape.num_elements()) for w in ws)  # noqa: E731
    return count(net.trainable_weights), count(net.non_trainable_weights)


def make_step(spec, phase, batch_size, input_size, precision="fp32", compile=False, lr=0.05,
              device="cpu", channels_last=False):
    """A no-argument function running one training step (forward, loss, backward, SGD step; returns
    the loss and the correct count, as d2l's train_ch6 adds them up) or one inference step
    (returns the logits), on a random batch made once, in NHWC. bf16 and fp16 use Keras's
    mixed_bfloat16 and mixed_float16 policies (fp16 with a LossScaleOptimizer, as Keras's
    mixed-precision guide writes it); compile=True compiles the step with XLA. device: where the
    network, the batch and the step live ("cpu", "gpu:N" or a TensorFlow name such as "/GPU:0";
    the CPU by default, as in the other frameworks' reference steps); None leaves it to
    TensorFlow (its first GPU if it has one). channels_last changes nothing (Keras's layers
    compute NHWC always)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected fp32, bf16 or fp16, got {precision!r}")
    place = contextlib.nullcontext if device is None else lambda: tf.device(_tf_name(device))
    keras.utils.set_random_seed(0)  # Keras 3 initialisers follow its seed, not tf.random's
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy({"bf16": "mixed_bfloat16",
                                   "fp16": "mixed_float16"}.get(precision, "float32"))
    try:
        with place():
            net = network(spec)
    finally:
        keras.config.set_dtype_policy(policy)
    with place():
        X = tf.random.uniform((batch_size, input_size, input_size, spec.in_channels))
        y = tf.random.uniform((batch_size,), 0, spec.num_classes, dtype=tf.int64)
    if phase == "infer":
        predict = tf.function(lambda X: tf.cast(net(X, training=False), tf.float32),
                              jit_compile=compile)

        def infer():
            with place():
                return predict(X).numpy()
        return infer
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with place():
        optimizer = keras.optimizers.SGD(learning_rate=lr)
        if precision == "fp16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(net.trainable_variables)

    @tf.function(jit_compile=compile)
    def train_step(X, y):
        with tf.GradientTape() as tape:
            y_hat = tf.cast(net(X, training=True), tf.float32)
            l = loss(y, y_hat)
            scaled = optimizer.scale_loss(l) if precision == "fp16" else l
        grads = tape.gradient(scaled, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return l, tf.reduce_sum(tf.cast(tf.argmax(y_hat, 1) == y, tf.int32))

    def train():
        with place():
            l, correct = train_step(X, y)
        return float(l), int(correct)
    return train


def _tf_name(device) -> str:
    """TensorFlow's name for "cpu", "gpu" or "gpu:N" (also what str() of this project's
    common.core.devices.Device gives); a TensorFlow name passes unchanged."""
    kind, _, index = str(device).lower().partition(":")
    if kind in ("cpu", "gpu") and (index.isdigit() or not index):
        return f"/{kind.upper()}:{index or 0}"
    return str(device)


def sync():
    """Nothing to wait for: TensorFlow runs eager operators and tf.functions before it
    returns."""


def matmul_gflops(n=1024, seconds=0.5):
    """The best float32 matrix-multiply rate (GFLOP/s) of a short probe: an n x n product,
    repeated for about `seconds`."""
    a, b = tf.random.uniform((n, n)), tf.random.uniform((n, n))
    tf.matmul(a, b).numpy()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        tf.matmul(a, b).numpy()  # eager: runs the product and waits for it
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def kernel_libraries() -> dict[str, str]:
    """The libraries under TensorFlow's operators: oneDNN (built in on x86, switched by
    TF_ENABLE_ONEDNN_OPTS), Eigen for the rest, XLA; CUDA and cuDNN of a GPU build. TensorFlow
    exposes none of their versions but CUDA's and cuDNN's."""
    from tensorflow.python.util import _pywrap_util_port as port
    switch = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    libs = {"oneDNN": (("on" if port.IsMklEnabled() else "off") + " (version not exposed"
                       + (f"; TF_ENABLE_ONEDNN_OPTS={switch})" if switch else ")")),
            "Eigen": "built in (version not exposed)",
            "XLA": "built in" if port.IsBuiltWithXLA() else "not built in"}
    info = tf.sysconfig.get_build_info()
    for key, name in (("cuda_version", "CUDA"), ("cudnn_version", "cuDNN")):
        if info.get(key):
            libs[name] = str(info[key])
    return libs


def call_mode(compile=False) -> str:
    """Graph: the adapter's forward pass is a tf.function, one call into TensorFlow's runtime;
    XLA-compiled (jit_compile) with compile."""
    return "graph (tf.function, XLA)" if compile else "graph (tf.function)"
