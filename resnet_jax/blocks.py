"""The residual blocks of d2l's ResNet chapter, in JAX/Flax (linen), and the ones its exercises ask for.

Imports only jax, flax and the standard library: copy this one file into your coursework.
Batches are NHWC, Flax's layout. `Residual` and `resnet_block` are d2l's JAX tab's: a block is a
Flax module whose fields are `num_channels`, `use_1x1conv`, `strides` (a pair, as d2l writes it;
an int is taken too) and `training`, and whose weights live outside it (`blk.init(key, X)`, then
`blk.apply(variables, X, mutable=["batch_stats"])` in training). The fields after `training` are
this project's additions, with defaults that keep d2l's behaviour:
- `use_bias`: torchvision-style networks turn conv biases off (or name the convolutions
  that keep one);
- `shortcut_bn`: BatchNorm after the 1x1 projection (torchvision), d2l has none;
- `pad_shortcut`: the ResNet paper's CIFAR shortcut (option A): subsample, zero-pad channels;
- `bn_eps`, `bn_momentum`: the same BatchNorm in all four frameworks of this project;
- `conv`, `norm`: the layer classes, Flax's `nn.Conv` and `nn.BatchNorm`; this project's
  network passes its faster subclasses of the two, which compute the same functions
  (resnet_jax.model.Conv and BatchNorm).
Two departures from d2l's JAX code, each for the same numbers as PyTorch:
- padding is explicit and symmetric, `((1, 1), (1, 1))`: Flax's padding='same' puts the extra
  pixel of a strided convolution bottom-right only, as TensorFlow's does;
- BatchNorm uses momentum 0.9 (Flax weights the old value: new = 0.9 old + 0.1 batch, PyTorch's
  momentum 0.1) and computes the batch variance in two passes (`use_fast_variance=False`),
  not as E[x^2] - E[x]^2, which loses digits in float32.
`Bottleneck` (exercise 3, ResNeXt with `groups`), `PreActResidual` and `PreActBottleneck`
(exercise 4: BN, ReLU, then convolution) follow the same pattern.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

SAME_3X3 = ((1, 1), (1, 1))  # symmetric: one pixel on every side


def _has_bias(use_bias, conv):
    """use_bias is True or False for every convolution, or the names of those with a bias
    (Gluon's v1 bottleneck: ("conv1", "conv3"))."""
    return use_bias if isinstance(use_bias, bool) else conv in use_bias


def _pair(strides):
    """d2l's JAX tab writes strides=(2, 2); the other tabs write strides=2. Both are taken."""
    return (strides, strides) if isinstance(strides, int) else tuple(strides)


def subsample(X, s):
    """X[:, ::s[0], ::s[1], :], written as a strided slice: jnp's strided indexing becomes a
    gather, which jax2tf cannot convert to plain TensorFlow operators (ONNX export)."""
    return lax.slice(X, (0, 0, 0, 0), X.shape, (1, s[0], s[1], 1))


def pad_shortcut(X, num_channels, strides):
    """Option A of the ResNet paper: X[:, ::s, ::s, :] with zero channels on both sides."""
    s = _pair(strides)
    X = subsample(X, s)
    extra = num_channels - X.shape[-1]
    return jnp.pad(X, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def _bn(norm, training, eps, momentum, **kwargs):
    # Flax's momentum weights the old value (default 0.99); 0.9 is PyTorch's 0.1.
    return norm(not training, momentum=momentum, epsilon=eps, use_fast_variance=False, **kwargs)


def _conv(conv, num_channels, kernel, strides=(1, 1), bias=True, groups=1):
    """A kxk convolution (of the layer class `conv`) with symmetric padding k // 2 (none for
    1x1)."""
    p = kernel // 2
    return conv(num_channels, kernel_size=(kernel, kernel), strides=_pair(strides),
                padding=((p, p), (p, p)), use_bias=bias, feature_group_count=groups)


class Residual(nn.Module):
    """The Residual block of ResNet models."""
    num_channels: int
    use_1x1conv: bool = False
    strides: Any = (1, 1)
    training: bool = True
    use_bias: Any = True
    shortcut_bn: bool = False
    pad_shortcut: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    conv: Any = nn.Conv
    norm: Any = nn.BatchNorm

    def setup(self):
        # d2l writes padding='same', which pads a strided conv on the bottom-right only.
        self.conv1 = self.conv(self.num_channels, kernel_size=(3, 3), padding=SAME_3X3,
                               strides=_pair(self.strides),
                               use_bias=_has_bias(self.use_bias, "conv1"))
        self.conv2 = self.conv(self.num_channels, kernel_size=(3, 3), padding=SAME_3X3,
                               use_bias=_has_bias(self.use_bias, "conv2"))
        if self.use_1x1conv:
            self.conv3 = self.conv(self.num_channels, kernel_size=(1, 1),
                                   strides=_pair(self.strides),
                                   use_bias=_has_bias(self.use_bias, "conv3"))
        else:
            self.conv3 = None
        self.bn1 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.bn2 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        if self.use_1x1conv and self.shortcut_bn:
            self.bn3 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        else:
            self.bn3 = None

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
            if self.bn3:
                X = self.bn3(X)
        elif self.pad_shortcut:
            X = pad_shortcut(X, self.num_channels, self.strides)
        Y += X
        return nn.relu(Y)


class Bottleneck(nn.Module):
    """1x1 (reduce), 3x3 (grouped for ResNeXt), 1x1 (expand); the projection is conv4.
    The stride sits on the 3x3, as torchvision; stride_in_1x1=True puts it on the first 1x1,
    as the ResNet paper."""
    num_channels: int
    use_1x1conv: bool = False
    strides: Any = (1, 1)
    training: bool = True
    width: Any = None
    groups: int = 1
    stride_in_1x1: bool = False
    use_bias: Any = True
    shortcut_bn: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    conv: Any = nn.Conv
    norm: Any = nn.BatchNorm

    def setup(self):
        width = self.width or self.num_channels // 4
        s1, s2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        bias = lambda conv: _has_bias(self.use_bias, conv)  # noqa: E731
        self.conv1 = _conv(self.conv, width, 1, s1, bias("conv1"))
        self.conv2 = _conv(self.conv, width, 3, s2, bias("conv2"), self.groups)
        self.conv3 = _conv(self.conv, self.num_channels, 1, 1, bias("conv3"))
        self.conv4 = (_conv(self.conv, self.num_channels, 1, self.strides, bias("conv4"))
                      if self.use_1x1conv else None)
        self.bn1 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.bn2 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.bn3 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.bn4 = (_bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
                    if self.use_1x1conv and self.shortcut_bn else None)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.conv4(X)
            if self.bn4:
                X = self.bn4(X)
        return nn.relu(Y + X)


class PreActResidual(nn.Module):
    """ResNet v2's basic block: BN and ReLU before each convolution, nothing after the sum.
    The identity shortcut carries X itself; a projection (conv3) sees the pre-activated X."""
    num_channels: int
    use_1x1conv: bool = False
    strides: Any = (1, 1)
    training: bool = True
    use_bias: Any = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    conv: Any = nn.Conv
    norm: Any = nn.BatchNorm

    def setup(self):
        bias = lambda conv: _has_bias(self.use_bias, conv)  # noqa: E731
        self.bn1 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.conv1 = _conv(self.conv, self.num_channels, 3, self.strides, bias("conv1"))
        self.bn2 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.conv2 = _conv(self.conv, self.num_channels, 3, 1, bias("conv2"))
        self.conv3 = (_conv(self.conv, self.num_channels, 1, self.strides, bias("conv3"))
                      if self.use_1x1conv else None)

    def __call__(self, X):
        Y = nn.relu(self.bn1(X))
        if self.conv3:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.Module):
    """ResNet v2's bottleneck: BN-ReLU-conv three times; the projection is conv4."""
    num_channels: int
    use_1x1conv: bool = False
    strides: Any = (1, 1)
    training: bool = True
    width: Any = None
    groups: int = 1
    stride_in_1x1: bool = False
    use_bias: Any = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    conv: Any = nn.Conv
    norm: Any = nn.BatchNorm

    def setup(self):
        width = self.width or self.num_channels // 4
        s1, s2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        bias = lambda conv: _has_bias(self.use_bias, conv)  # noqa: E731
        self.bn1 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.conv1 = _conv(self.conv, width, 1, s1, bias("conv1"))
        self.bn2 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.conv2 = _conv(self.conv, width, 3, s2, bias("conv2"), self.groups)
        self.bn3 = _bn(self.norm, self.training, self.bn_eps, self.bn_momentum)
        self.conv3 = _conv(self.conv, self.num_channels, 1, 1, bias("conv3"))
        self.conv4 = (_conv(self.conv, self.num_channels, 1, self.strides, bias("conv4"))
                      if self.use_1x1conv else None)

    def __call__(self, X):
        Y = nn.relu(self.bn1(X))
        s = _pair(self.strides)
        if self.conv4:
            X = self.conv4(Y)
        elif s != (1, 1):  # Keras's ResNetV2 strides a block without projecting: a 1x1
            X = subsample(X, s)  # max-pool, which subsamples
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        Y = self.conv3(nn.relu(self.bn3(Y)))
        return Y + X


def resnet_block(num_channels, num_residuals, first_block=False, training=True, **kwargs):
    """d2l's stage (its `block`): residual blocks in an nn.Sequential; all but the first stage
    halve the resolution. Keyword arguments go to every Residual."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2),
                                training=training, **kwargs))
        else:
            blk.append(Residual(num_channels, training=training, **kwargs))
    return nn.Sequential(blk)
