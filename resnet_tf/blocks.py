"""The residual blocks of d2l's ResNet chapter, in TensorFlow/Keras, and the ones its exercises ask for.

Imports only tensorflow and the standard library: copy this one file into your coursework.
Batches are NHWC, TensorFlow's layout. `Residual`, `ResnetBlock` and `resnet_block` are d2l's;
the keyword-only arguments after `strides` are this project's additions, with defaults that keep
d2l's behaviour:
- `use_bias`: torchvision-style networks turn conv biases off (or name the convolutions
  that keep one);
- `shortcut_bn`: BatchNorm after the 1x1 projection (torchvision), d2l has none;
- `pad_shortcut`: the ResNet paper's CIFAR shortcut (option A): subsample, zero-pad channels;
- `bn_eps`, `bn_momentum`: the same BatchNorm in all four frameworks of this project.
Two departures from d2l's TensorFlow code, each for the same numbers as PyTorch and Gluon:
- padding is symmetric, as PyTorch's (`PaddedConv2D(..., padding=1)`): Keras's padding='same'
  where it is symmetric (stride 1); strided convolutions pad explicitly, or in training run
  'same' on reversed axes, which gives the symmetric windows faster (see PaddedConv2D);
- BatchNorm uses epsilon 1e-5 and momentum 0.9, not Keras's 1e-3 and 0.99.
`Bottleneck` (exercise 3, ResNeXt with `groups`), `PreActResidual` and `PreActBottleneck`
(exercise 4: BN, ReLU, then convolution) follow the same pattern.
"""
import tensorflow as tf



def _has_bias(use_bias, conv):
    """use_bias is True or False for every convolution, or the names of those with a bias
    (Gluon's v1 bottleneck: ("conv1", "conv3"))."""
    return use_bias if isinstance(use_bias, bool) else conv in use_bias

def _pad(X, padding, value=0.0):
    if not padding:
        return X
    return tf.pad(X, [[0, 0], [padding, padding], [padding, padding], [0, 0]],
                  constant_values=value)


def _padded_shape(input_shape, padding):
    n, h, w, c = input_shape
    return (n, None if h is None else h + 2 * padding, None if w is None else w + 2 * padding, c)


def _same_on(n, k, s, p):
    """How padding='same' can give the windows of symmetric padding p along an axis of n pixels
    (kernel k, stride s): "same" as it is, "flip" on the reversed axis ('same' puts its odd
    pixel of padding at the end, which reversing moves to the start), None if neither."""
    out = -(-n // s) if n else None
    if out is None or out != (n + 2 * p - k) // s + 1:
        return None
    total = max((out - 1) * s + k - n, 0)
    return "same" if total // 2 == p else "flip" if total - total // 2 == p else None


def _symmetric_by_same(X, kernel, strides, padding, same_op):
    """same_op(X, axes), a 'same' convolution or pool, run on X reversed along the axes where
    that gives the windows of symmetric padding, and reversed back; None where it cannot."""
    how = [_same_on(X.shape[a], kernel[a - 1], strides[a - 1], padding) for a in (1, 2)]
    if None in how:
        return None
    axes = [a for a, h in zip((1, 2), how) if h == "flip"]
    if not axes:
        return same_op(X, axes)
    return tf.reverse(same_op(tf.reverse(X, axes), axes), axes)


class PaddedConv2D(tf.keras.layers.Conv2D):
    """Conv2D with PyTorch's `padding`: that many zeros on every side.
    Keras's padding='same' pads kernel_size // 2 on every side for stride 1 (used as it is), but
    puts the extra pixel of a strided convolution on the bottom-right only. So a strided
    convolution pads explicitly, then uses 'valid'; but in training, where the pad's gradient
    covers the padding too (4x the work on a 2x2 map), `flip=True` runs 'same' on the input
    reversed along each axis where 'same' would be asymmetric (the kernel reversed too), and
    reverses the output back: the windows of symmetric padding, at the speed of 'same'.
    Both routes compute the same function; `flip=True` is the faster in training."""
    def __init__(self, filters, kernel_size, strides=1, padding=0, flip=True, **kwargs):
        ks = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
        same = strides in (1, (1, 1)) and all(k % 2 == 1 and padding == k // 2 for k in ks)
        super().__init__(filters, kernel_size, strides=strides,
                         padding="same" if same else "valid", **kwargs)
        self.explicit_padding, self.flip = (0 if same else padding), flip

    def same(self, X, axes=()):
        kernel = tf.reverse(self.kernel, [a - 1 for a in axes]) if axes else self.kernel
        Y = tf.keras.ops.conv(X, kernel, strides=self.strides, padding="same")
        return Y + self.bias if self.use_bias else Y

    def call(self, X, training=None):
        p = self.explicit_padding
        Y = (_symmetric_by_same(X, self.kernel_size, self.strides, p, self.same)
             if p and self.flip and training else None)
        return super().call(_pad(X, p)) if Y is None else Y

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self.explicit_padding))


class PaddedMaxPool2D(tf.keras.layers.MaxPool2D):
    """MaxPool2D with PyTorch's `padding`: that many -inf on every side (a pad never wins the
    max, whatever the sign of the input), then 'valid'. TensorFlow's 'same' pool never lets a
    pad win either, so in training the pool runs 'same' on reversed axes, as PaddedConv2D."""
    def __init__(self, pool_size, strides=None, padding=0, **kwargs):
        super().__init__(pool_size, strides, padding="valid", **kwargs)
        self.explicit_padding = padding

    def same(self, X, axes=()):
        return tf.nn.max_pool2d(X, self.pool_size, self.strides, "SAME")

    def call(self, X, training=None):
        p = self.explicit_padding
        Y = (_symmetric_by_same(X, self.pool_size, self.strides, p, self.same)
             if p and training else None)
        return super().call(_pad(X, p, float("-inf"))) if Y is None else Y

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self.explicit_padding))


def pad_shortcut(X, num_channels, strides):
    """Option A of the ResNet paper: X[:, ::s, ::s, :] with zero channels on both sides."""
    X = X[:, ::strides, ::strides, :]
    extra = num_channels - X.shape[-1]
    return tf.pad(X, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])


def _bn(eps, momentum):
    # Keras's defaults (epsilon 1e-3, momentum 0.99) differ from PyTorch's; momentum 0.9 weights
    # the old value (new = 0.9 old + 0.1 batch), so it is PyTorch's momentum 0.1.
    return tf.keras.layers.BatchNormalization(epsilon=eps, momentum=momentum)


class Residual(tf.keras.layers.Layer):
    """The Residual block of ResNet."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, use_bias=True,
                 shortcut_bn=False, pad_shortcut=False, bn_eps=1e-5, bn_momentum=0.9,
                 **kwargs):
        super().__init__(**kwargs)
        # d2l writes padding='same', which pads a strided conv on the bottom-right only.
        self.conv1 = PaddedConv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                  use_bias=_has_bias(use_bias, "conv1"))
        self.conv2 = PaddedConv2D(num_channels, kernel_size=3, padding=1,
                                  use_bias=_has_bias(use_bias, "conv2"))
        if use_1x1conv:
            self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides,
                                                use_bias=_has_bias(use_bias, "conv3"))
        else:
            self.conv3 = None
        self.bn1 = _bn(bn_eps, bn_momentum)
        self.bn2 = _bn(bn_eps, bn_momentum)
        self.bn3 = _bn(bn_eps, bn_momentum) if use_1x1conv and shortcut_bn else None
        self.pad_shortcut = pad_shortcut and not use_1x1conv
        self.num_channels, self.strides = num_channels, strides

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        elif self.pad_shortcut:
            X = pad_shortcut(X, self.num_channels, self.strides)
        Y += X
        return tf.keras.activations.relu(Y)


class Bottleneck(tf.keras.layers.Layer):
    """1x1 (reduce), 3x3 (grouped for ResNeXt), 1x1 (expand); the projection is conv4.
    The stride sits on the 3x3, as torchvision; stride_in_1x1=True puts it on the first 1x1,
    as the ResNet paper."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, width=None, groups=1,
                 stride_in_1x1=False, use_bias=True, shortcut_bn=False, bn_eps=1e-5,
                 bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        self.conv1 = tf.keras.layers.Conv2D(width, kernel_size=1, strides=s1,
                                            use_bias=_has_bias(use_bias, "conv1"))
        self.conv2 = PaddedConv2D(width, kernel_size=3, padding=1, strides=s2, groups=groups,
                                  use_bias=_has_bias(use_bias, "conv2"))
        self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1,
                                            use_bias=_has_bias(use_bias, "conv3"))
        if use_1x1conv:
            self.conv4 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides,
                                                use_bias=_has_bias(use_bias, "conv4"))
        else:
            self.conv4 = None
        self.bn1 = _bn(bn_eps, bn_momentum)
        self.bn2 = _bn(bn_eps, bn_momentum)
        self.bn3 = _bn(bn_eps, bn_momentum)
        self.bn4 = _bn(bn_eps, bn_momentum) if use_1x1conv and shortcut_bn else None

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = tf.keras.activations.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.conv4(X)
            if self.bn4 is not None:
                X = self.bn4(X)
        Y += X
        return tf.keras.activations.relu(Y)


class PreActResidual(tf.keras.layers.Layer):
    """ResNet v2's basic block: BN and ReLU before each convolution, nothing after the sum.
    The identity shortcut carries X itself; a projection (conv3) sees the pre-activated X."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, use_bias=True,
                 bn_eps=1e-5, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.bn1 = _bn(bn_eps, bn_momentum)
        self.conv1 = PaddedConv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                  use_bias=_has_bias(use_bias, "conv1"))
        self.bn2 = _bn(bn_eps, bn_momentum)
        self.conv2 = PaddedConv2D(num_channels, kernel_size=3, padding=1,
                                  use_bias=_has_bias(use_bias, "conv2"))
        if use_1x1conv:
            self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides,
                                                use_bias=_has_bias(use_bias, "conv3"))
        else:
            self.conv3 = None

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(X))
        if self.conv3 is not None:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(tf.keras.activations.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(tf.keras.layers.Layer):
    """ResNet v2's bottleneck: BN-ReLU-conv three times; the projection is conv4."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, width=None, groups=1,
                 stride_in_1x1=False, use_bias=True, bn_eps=1e-5, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        self.bn1 = _bn(bn_eps, bn_momentum)
        self.conv1 = tf.keras.layers.Conv2D(width, kernel_size=1, strides=s1,
                                            use_bias=_has_bias(use_bias, "conv1"))
        self.bn2 = _bn(bn_eps, bn_momentum)
        self.conv2 = PaddedConv2D(width, kernel_size=3, padding=1, strides=s2, groups=groups,
                                  use_bias=_has_bias(use_bias, "conv2"))
        self.bn3 = _bn(bn_eps, bn_momentum)
        self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1,
                                            use_bias=_has_bias(use_bias, "conv3"))
        if use_1x1conv:
            self.conv4 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides,
                                                use_bias=_has_bias(use_bias, "conv4"))
        else:
            self.conv4 = None
        self.strides = strides

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(X))
        if self.conv4 is not None:
            X = self.conv4(Y)
        elif self.strides > 1:  # Keras's ResNetV2 strides a block without projecting: a 1x1
            X = X[:, ::self.strides, ::self.strides, :]  # max-pool, which subsamples
        Y = self.conv1(Y)
        Y = self.conv2(tf.keras.activations.relu(self.bn2(Y)))
        Y = self.conv3(tf.keras.activations.relu(self.bn3(Y)))
        return Y + X


class ResnetBlock(tf.keras.layers.Layer):
    """d2l's stage: residual blocks in order; all but the first stage halve the resolution.
    Keyword arguments go to every Residual (`name` names the stage)."""
    def __init__(self, num_channels, num_residuals, first_block=False, *, name=None, **kwargs):
        super().__init__(name=name)
        self.residual_layers = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                self.residual_layers.append(
                    Residual(num_channels, use_1x1conv=True, strides=2, **kwargs))
            else:
                self.residual_layers.append(Residual(num_channels, **kwargs))

    def call(self, X):
        for layer in self.residual_layers:
            X = layer(X)
        return X


def resnet_block(num_channels, num_residuals, first_block=False, **kwargs):
    """d2l's stage as a layer (PyTorch's and Gluon's return a list and a sequence)."""
    return ResnetBlock(num_channels, num_residuals, first_block, **kwargs)
