"""The residual blocks of d2l's ResNet chapter, in MXNet Gluon, and the ones its exercises ask for.

Imports only mxnet and the standard library: copy this one file into your coursework.
It works in both of MXNet's modes, whichever is on when a block runs. d2l's MXNet tab calls
`npx.set_np()`, which makes Gluon create parameters and outputs as `mx.np.ndarray`, and those
only MXNet's NumPy operators accept (`npx.relu`, `np.pad`; the classic `F.relu` raises a
TypeError). Without it, arrays are the classic `mx.nd.NDArray`. The blocks are written in Gluon's
HybridBlock interface (`hybrid_forward(self, F, X)`), so they can be hybridized, and `_ops(F)`
picks the operators of the mode in force: `F.npx` after `npx.set_np()`, `F` itself otherwise.
The computation is the same in both modes; this file never changes the mode itself.
`Residual` and `resnet_block` are d2l's; the keyword-only arguments after `strides` are this
project's additions, with defaults that keep d2l's behaviour:
- `use_bias`: torchvision-style networks turn conv biases off (or name the convolutions
  that keep one);
- `shortcut_bn`: BatchNorm after the 1x1 projection (torchvision), d2l has none;
- `pad_shortcut`: the ResNet paper's CIFAR shortcut (option A): subsample, zero-pad channels;
- `bn_eps`, `bn_momentum`: the same BatchNorm in all four frameworks of this project;
- `in_channels`: 0 lets Gluon infer it from the first batch, as in d2l; a builder that knows it
  passes it, so that every parameter exists as soon as the block is initialised.
`Bottleneck` (exercise 3, ResNeXt with `groups`), `PreActResidual` and `PreActBottleneck`
(exercise 4: BN, ReLU, then convolution) follow the same pattern.
"""
from mxnet.gluon import nn
from mxnet.util import is_np_array


def _ops(F):
    """The operators of the mode MXNet is in now (relu and slice have the same names and
    arguments in both). npx.set_np() is global state that a user may switch at any time, so
    it is read on every call, never at import."""
    return F.npx if is_np_array() else F


def _has_bias(use_bias, conv):
    """use_bias is True or False for every convolution, or the names of those with a bias
    (Gluon's v1 bottleneck: ("conv1", "conv3"))."""
    return use_bias if isinstance(use_bias, bool) else conv in use_bias

def pad_shortcut(F, X, in_channels, num_channels, strides):
    """Option A of the ResNet paper: X[:, :, ::s, ::s] with zero channels on both sides."""
    X = _ops(F).slice(X, begin=(None,) * 4, end=(None,) * 4, step=(1, 1, strides, strides))
    extra = num_channels - in_channels
    channels = (extra // 2, extra - extra // 2)
    if is_np_array():  # NumPy's pad takes any axis
        return F.np.pad(X, ((0, 0), channels, (0, 0), (0, 0)), mode="constant")
    # The classic pad takes only the last two axes of a 4-d array: channels last, pad, back.
    X = F.pad(F.transpose(X, (0, 2, 3, 1)), mode="constant", pad_width=(0,) * 6 + channels)
    return F.transpose(X, (0, 3, 1, 2))


def _bn(num_channels, eps, momentum):
    # Gluon's defaults already are the project's: eps 1e-5, momentum 0.9 weights the old
    # value (new = 0.9 old + 0.1 batch), so it is PyTorch's momentum 0.1.
    return nn.BatchNorm(epsilon=eps, momentum=momentum, in_channels=num_channels)


class Residual(nn.HybridBlock):
    """The Residual block of ResNet."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, use_bias=True,
                 shortcut_bn=False, pad_shortcut=False, bn_eps=1e-5, bn_momentum=0.9,
                 in_channels=0, **kwargs):
        super().__init__(**kwargs)
        if pad_shortcut and not use_1x1conv and not in_channels:
            raise ValueError("in_channels: expected the input channels with pad_shortcut=True "
                             "(the zero padding needs them), got 0")
        with self.name_scope():  # parameter names read residual0_conv0_weight, not conv7_weight
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                   use_bias=_has_bias(use_bias, "conv1"), in_channels=in_channels)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1,
                                   use_bias=_has_bias(use_bias, "conv2"), in_channels=num_channels)
            if use_1x1conv:
                self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides,
                                       use_bias=_has_bias(use_bias, "conv3"),
                                       in_channels=in_channels)
            else:
                self.conv3 = None
            self.bn1 = _bn(num_channels, bn_eps, bn_momentum)
            self.bn2 = _bn(num_channels, bn_eps, bn_momentum)
            self.bn3 = (_bn(num_channels, bn_eps, bn_momentum) if use_1x1conv and shortcut_bn
                        else None)
        self.pad_shortcut = pad_shortcut and not use_1x1conv
        self.in_channels, self.num_channels, self.strides = in_channels, num_channels, strides

    def hybrid_forward(self, F, X):
        relu = _ops(F).relu
        Y = relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
            if self.bn3:
                X = self.bn3(X)
        elif self.pad_shortcut:
            X = pad_shortcut(F, X, self.in_channels, self.num_channels, self.strides)
        return relu(Y + X)


class Bottleneck(nn.HybridBlock):
    """1x1 (reduce), 3x3 (grouped for ResNeXt), 1x1 (expand); the projection is conv4.
    The stride sits on the 3x3, as torchvision; stride_in_1x1=True puts it on the first 1x1,
    as the ResNet paper."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, width=None, groups=1,
                 stride_in_1x1=False, use_bias=True, shortcut_bn=False, bn_eps=1e-5,
                 bn_momentum=0.9, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        with self.name_scope():
            self.conv1 = nn.Conv2D(width, kernel_size=1, strides=s1,
                                   use_bias=_has_bias(use_bias, "conv1"),
                                   in_channels=in_channels)
            self.conv2 = nn.Conv2D(width, kernel_size=3, padding=1, strides=s2, groups=groups,
                                   use_bias=_has_bias(use_bias, "conv2"), in_channels=width)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1,
                                   use_bias=_has_bias(use_bias, "conv3"),
                                   in_channels=width)
            if use_1x1conv:
                self.conv4 = nn.Conv2D(num_channels, kernel_size=1, strides=strides,
                                       use_bias=_has_bias(use_bias, "conv4"),
                                       in_channels=in_channels)
            else:
                self.conv4 = None
            self.bn1 = _bn(width, bn_eps, bn_momentum)
            self.bn2 = _bn(width, bn_eps, bn_momentum)
            self.bn3 = _bn(num_channels, bn_eps, bn_momentum)
            self.bn4 = (_bn(num_channels, bn_eps, bn_momentum) if use_1x1conv and shortcut_bn
                        else None)

    def hybrid_forward(self, F, X):
        relu = _ops(F).relu
        Y = relu(self.bn1(self.conv1(X)))
        Y = relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.conv4(X)
            if self.bn4:
                X = self.bn4(X)
        return relu(Y + X)


class PreActResidual(nn.HybridBlock):
    """ResNet v2's basic block: BN and ReLU before each convolution, nothing after the sum.
    The identity shortcut carries X itself; a projection (conv3) sees the pre-activated X."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, use_bias=True,
                 bn_eps=1e-5, bn_momentum=0.9, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn1 = _bn(in_channels, bn_eps, bn_momentum)
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                   use_bias=_has_bias(use_bias, "conv1"), in_channels=in_channels)
            self.bn2 = _bn(num_channels, bn_eps, bn_momentum)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1,
                                   use_bias=_has_bias(use_bias, "conv2"), in_channels=num_channels)
            if use_1x1conv:
                self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides,
                                       use_bias=_has_bias(use_bias, "conv3"),
                                       in_channels=in_channels)
            else:
                self.conv3 = None

    def hybrid_forward(self, F, X):
        relu = _ops(F).relu
        Y = relu(self.bn1(X))
        if self.conv3:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.HybridBlock):
    """ResNet v2's bottleneck: BN-ReLU-conv three times; the projection is conv4."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, width=None, groups=1,
                 stride_in_1x1=False, use_bias=True, bn_eps=1e-5, bn_momentum=0.9,
                 in_channels=0, **kwargs):
        super().__init__(**kwargs)
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        with self.name_scope():
            self.bn1 = _bn(in_channels, bn_eps, bn_momentum)
            self.conv1 = nn.Conv2D(width, kernel_size=1, strides=s1,
                                   use_bias=_has_bias(use_bias, "conv1"),
                                   in_channels=in_channels)
            self.bn2 = _bn(width, bn_eps, bn_momentum)
            self.conv2 = nn.Conv2D(width, kernel_size=3, padding=1, strides=s2, groups=groups,
                                   use_bias=_has_bias(use_bias, "conv2"), in_channels=width)
            self.bn3 = _bn(width, bn_eps, bn_momentum)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1,
                                   use_bias=_has_bias(use_bias, "conv3"),
                                   in_channels=width)
            if use_1x1conv:
                self.conv4 = nn.Conv2D(num_channels, kernel_size=1, strides=strides,
                                       use_bias=_has_bias(use_bias, "conv4"),
                                       in_channels=in_channels)
            else:
                self.conv4 = None
        self.strides = strides

    def hybrid_forward(self, F, X):
        relu = _ops(F).relu
        Y = relu(self.bn1(X))
        if self.conv4:
            X = self.conv4(Y)
        elif self.strides > 1:  # Keras's ResNetV2 strides a block without projecting: its
            pool = F.npx.pooling if is_np_array() else F.Pooling  # shortcut is a 1x1 max-pool
            X = pool(X, kernel=(1, 1), stride=(self.strides, self.strides), pool_type="max")
        Y = self.conv1(Y)
        Y = self.conv2(relu(self.bn2(Y)))
        Y = self.conv3(relu(self.bn3(Y)))
        return Y + X


def resnet_block(num_channels, num_residuals, first_block=False, *, in_channels=0, **kwargs):
    """d2l's stage: residual blocks in a sequence; all but the first stage halve the resolution.
    `in_channels` is the stage's input; the later blocks' input is `num_channels`."""
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2,
                             in_channels=in_channels, **kwargs))
        else:
            blk.add(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels,
                             **kwargs))
    return blk
