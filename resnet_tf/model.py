"""ResNet built from a `common` spec in TensorFlow/Keras, with parameter counts read from Keras itself.

Batches are NHWC, TensorFlow's layout; every other package of this project takes NCHW.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow import keras

from common.core.errors import Error
from common.core.checks import check_batch, check_geometry, feature_parts
from common.core.init import build_spec, init_weights, new_head
from common.core.oracle import ParamCounts, min_input_size
from common.core.spec import ResNetSpec
from resnet_tf.blocks import (Bottleneck, PaddedConv2D, PaddedMaxPool2D, PreActBottleneck,
                              PreActResidual, Residual, _same_on)
from resnet_tf.weights import from_canonical, to_canonical

BLOCKS = {("basic", False): Residual, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


def check_input(X, spec: ResNetSpec, training: bool = False) -> None:
    """Raise common.core.checks.InputError unless X (NumPy, TensorFlow or Keras symbolic) is an NHWC
    floating-point batch of the spec's channels that the network can run (common.core.checks)."""
    if not (hasattr(X, "shape") and hasattr(X, "dtype")):
        X = np.asarray(X)
    dtype = tf.as_dtype(X.dtype)
    check_batch(tuple(X.shape), dtype.name, dtype.is_floating, spec.in_channels, "NHWC")
    check_geometry(spec, tuple(X.shape), "NHWC", bool(training))


class Part(keras.layers.Layer):
    """Layers applied in order, each an attribute named as in the canonical weights: stem.conv,
    head.fc, and a stage's blocks "0", "1", ... (also stage2[0])."""

    def __init__(self, layers: dict[str, keras.layers.Layer], name: str):
        super().__init__(name=name)
        self.order = tuple(layers)
        for key, layer in layers.items():
            setattr(self, key, layer)

    def __getitem__(self, i: int) -> keras.layers.Layer:
        return getattr(self, self.order[i])

    def __len__(self) -> int:
        return len(self.order)

    def build(self, input_shape):
        """Nothing to create: each layer builds on its first call (see ResNet.build)."""
        self.built = True

    def call(self, X):
        for key in self.order:
            X = getattr(self, key)(X)
        return X


class ZeroPaddedMaxPool2D(keras.layers.MaxPool2D):
    """Keras's ResNetV2 stem pool: ZeroPadding2D(1), then a valid max-pool (the zeros win where
    the un-normalised map is negative)."""
    def call(self, X):
        return super().call(tf.pad(X, [[0, 0], [1, 1], [1, 1], [0, 0]]))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return super().compute_output_shape((n, None if h is None else h + 2,
                                             None if w is None else w + 2, c))


class Stem(Part):
    """stem.conv, bn, relu and pool. Where TensorFlow's 'same' gives PyTorch's symmetric windows
    on the same reversed axes for both the strided convolution and the max-pool (even sizes),
    the stem runs on the reversed input: it reverses the small input before the convolution and
    the pooled map after, instead of padding the large map the pool reads (BatchNorm and ReLU
    act on each pixel alone, so the order of the pixels is theirs to ignore). Why: padding the
    large map costs a measurable share of a step (docs/performance.md, "Measurements behind
    the code")."""

    def reversed_axes(self, shape) -> list[int] | None:
        if ("pool" not in self.order or "bn" not in self.order
                or not isinstance(self.pool, PaddedMaxPool2D) or not self.conv.explicit_padding):
            return None
        conv, pool = self.conv, self.pool
        how = [_same_on(shape[a], conv.kernel_size[a - 1], conv.strides[a - 1],
                        conv.explicit_padding) for a in (1, 2)]
        if None in how or "flip" not in how:
            return None
        out = [-(-shape[a] // conv.strides[a - 1]) for a in (1, 2)]
        if how != [_same_on(n, pool.pool_size[i], pool.strides[i], pool.explicit_padding)
                   for i, n in enumerate(out)]:
            return None
        return [a for a, h in zip((1, 2), how) if h == "flip"]

    def call(self, X):
        axes = self.reversed_axes(X.shape)
        if axes is None or not self.conv.built:  # Keras builds a layer on its first __call__
            return super().call(X)
        if "input_bn" in self.order:  # per pixel: the same before or after the reversal
            X = self.input_bn(X)
        Y = self.relu(self.bn(self.conv.same(tf.reverse(X, axes), axes)))
        return tf.reverse(self.pool.same(Y, axes), axes)


class ResNet(keras.Model):
    """stem (d2l's b1), stage1..stageN (b2..b5), head: named parts, so that the model reads
    `model.stage2[0].conv1`. Takes NHWC batches. Every weight exists once the model is made."""

    def __init__(self, spec: ResNetSpec):
        super().__init__(name=spec.name)
        self.spec = spec
        bn = dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)  # Keras weights the old value
        st = spec.stem
        # flip=False: where the stem cannot run whole on reversed axes (see Stem), its input,
        # which needs no gradient, is padded: a copy of a small input, cheaper than reversing
        # the large output.
        stem = {}
        if spec.input_bn:  # Gluon v2: the raw input normalised, no gamma or beta
            stem["input_bn"] = keras.layers.BatchNormalization(center=False, scale=False, **bn)
        stem["conv"] = PaddedConv2D(st.channels, st.kernel_size, strides=st.stride,
                                    padding=st.padding, use_bias=spec.has_bias("stem"),
                                    flip=False)
        if st.norm:
            stem |= dict(bn=keras.layers.BatchNormalization(**bn), relu=keras.layers.ReLU())
        if st.pool and st.pool_zeros:  # Keras's ResNetV2: zeros around a map that may be < 0
            stem["pool"] = ZeroPaddedMaxPool2D(3, strides=2)
        elif st.pool:
            stem["pool"] = PaddedMaxPool2D(3, strides=2, padding=1)
        self.stem = Stem(stem, "stem")
        block = BLOCKS[spec.block, spec.preact]
        for i, stage in enumerate(spec.stages, start=1):
            blocks = {str(j): block(stage.channels,
                                    use_1x1conv=j == 0 and stage.project and spec.shortcut == "conv",
                                    strides=spec.block_stride(stage, j),
                                    **spec.block_kwargs(stage, momentum_of_old=True))
                      for j in range(stage.blocks)}
            setattr(self, f"stage{i}", Part(blocks, f"stage{i}"))
        head = {}
        if spec.preact:  # v2 blocks end un-normalised: one BN and ReLU before pooling
            head |= dict(bn=keras.layers.BatchNormalization(**bn), relu=keras.layers.ReLU())
        if spec.pooling is not None:  # None: headless, the map itself (an empty Part)
            head["pool"] = (keras.layers.GlobalAveragePooling2D() if spec.pooling == "avg"
                            else keras.layers.GlobalMaxPooling2D())
        if spec.num_classes:  # 0: headless, the pooled features are the output
            head["fc"] = keras.layers.Dense(spec.num_classes)
        self.head = Part(head, "head")
        # Keras creates weights on the first batch; one small batch (in inference mode, so no
        # statistics move) creates them all now. Any size works with symmetric padding.
        size = max(8, min_input_size(spec))
        self(tf.zeros((1, size, size, spec.in_channels)), training=False)

    def build(self, input_shape):
        self.built = True

    def __call__(self, X, *args, **kwargs):
        # Checked here, before Keras converts the batch, so the message is ours alone.
        check_input(X, self.spec, kwargs.get("training", args[0] if args else False))
        return super().__call__(X, *args, **kwargs)

    def call(self, X):
        for name in self.spec.part_names():
            X = getattr(self, name)(X)
        return X


def build(name_or_spec: str | ResNetSpec = "d2l_resnet18", *, init: str = "common",
          seed: int = 0, **overrides) -> ResNet:
    """The network of a preset name or spec, with every weight created. `init="common"` loads
    the seeded NumPy initialisation shared by all four frameworks; `init="framework"` keeps
    Keras's own (Glorot uniform kernels, zero biases, BatchNorm gamma 1, beta 0, mean 0, var 1),
    seeded with `seed`: Keras gives each initialiser a seed from Python's `random` when a layer
    is made, so that module is seeded here and its state restored afterwards."""
    spec = build_spec(name_or_spec, init, **overrides)
    state = random.getstate()
    random.seed(seed)
    try:
        model = ResNet(spec)
    finally:
        random.setstate(state)
    if init == "common":
        from_canonical(model, init_weights(spec, seed))
    return model


def resnet18(num_classes: int = 10, in_channels: int = 1, **kwargs) -> ResNet:
    """d2l's ResNet-18 (conv biases on; 1 channel and 10 classes by default)."""
    return build("d2l_resnet18", num_classes=num_classes, in_channels=in_channels, **kwargs)


def param_counts(layer: keras.layers.Layer) -> ParamCounts:
    """Trainable weights and non-trainable ones (BatchNorm moving mean and variance), read from
    Keras's own lists."""
    if not layer.built:
        raise ValueError(f"{layer.name}: expected a built layer, got one whose weights do not "
                         f"exist yet; call it on a batch first")
    count = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
    return ParamCounts(count(layer.trainable_weights), count(layer.non_trainable_weights))


def part_param_counts(model: ResNet) -> dict[str, ParamCounts]:
    """Parameter counts per part: stem, stage1..stageN, head."""
    return {name: param_counts(getattr(model, name)) for name in model.spec.part_names()}


def part_shapes(model: ResNet, X: np.ndarray | tf.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (NHWC, TensorFlow's layout) after each part for the NHWC batch X, in
    inference mode (BatchNorm statistics are not touched)."""
    check_input(X, model.spec)
    X = tf.convert_to_tensor(X)
    shapes = {}
    for name in model.spec.part_names():
        X = getattr(model, name)(X, training=False)
        shapes[name] = tuple(X.shape)
    return shapes


def features(model: ResNet, X, parts: Sequence[str] | None = None, *,
             training: bool = False) -> dict[str, tf.Tensor]:
    """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
    NHWC batch X, NHWC, in one pass in inference mode (training=True: batch statistics, and
    the running ones move); without `parts`, every part's (common.core.checks.feature_parts)."""
    check_input(X, model.spec, training)
    wanted, out, X = feature_parts(model.spec, parts), {}, tf.convert_to_tensor(X)
    for name in model.spec.part_names():
        part = getattr(model, name)
        if any(w.startswith(name + ".") for w in wanted):  # block by block
            for j in range(len(part)):
                X = out[f"{name}.{j}"] = part[j](X, training=training)
        else:
            X = part(X, training=training)
        out[name] = X
        if all(w in out for w in wanted):
            break
    return {name: out[name] for name in wanted}


def forward_features(model: ResNet, X) -> tf.Tensor:
    """The last feature map (NHWC) before pooling, in inference mode: the last stage's output,
    or for pre-activation nets after the head's final BN-ReLU (timm's forward_features)."""
    check_input(X, model.spec)
    X = tf.convert_to_tensor(X)
    for name in model.spec.part_names()[:-1]:
        X = getattr(model, name)(X, training=False)
    for key in ("bn", "relu"):
        if key in model.head.order:
            X = getattr(model.head, key)(X, training=False)
    return X


def reset_classifier(model: ResNet, num_classes: int, *, seed: int = 0) -> ResNet:
    """A network with the weights of `model` and a new `num_classes`-class head (0: headless,
    pooled features out), initialised as common's init of that spec with `seed` (what train's
    --new-head does); `model` is left as it was."""
    spec, weights = new_head(model.spec, to_canonical(model), num_classes, seed)
    return from_canonical(ResNet(spec), weights)


def set_threads(n: int) -> None:
    """Use n CPU threads: n inside each TensorFlow operator and n for running independent
    operators side by side (TensorFlow's default for both is all cores). TensorFlow fixes its
    thread pools when its runtime starts (at the first operation); after that a different n is
    refused rather than silently ignored."""
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(n)
        threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        current = threading.get_intra_op_parallelism_threads() or os.cpu_count()  # 0: all cores
        if n != current or n != (threading.get_inter_op_parallelism_threads() or os.cpu_count()):
            raise Error(f"threads: expected {current} (TensorFlow fixed its threads when it "
                             f"started), got {n}; call set_threads before the first TensorFlow "
                             f"operation") from None


def get_threads() -> int:
    """The CPU threads TensorFlow's operators use (its intra-op pool; 0 there means all cores)."""
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
