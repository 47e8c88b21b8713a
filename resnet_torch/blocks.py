"""The residual blocks of d2l's ResNet chapter, in PyTorch, and the ones its exercises ask for.

Imports only torch and the standard library: copy this one file into your coursework.
`Residual` and `resnet_block` are d2l's. `Residual` takes both editions' calls: the classic
one's `Residual(input_channels, num_channels, use_1x1conv=False, strides=1)` and d2l-en 1.x's
`Residual(num_channels, use_1x1conv=False, strides=1)`, whose convolutions infer their input
channels on the first call (`nn.LazyConv2d`). The keyword-only arguments after `strides` are this
project's additions, with defaults that keep d2l's behaviour:
- `use_bias`: torchvision-style networks turn conv biases off (or name the convolutions
  that keep one);
- `shortcut_bn`: BatchNorm after the 1x1 projection (torchvision), d2l has none;
- `pad_shortcut`: the ResNet paper's CIFAR shortcut (option A): subsample, zero-pad channels;
- `bn_eps`, `bn_momentum`: the same BatchNorm in all four frameworks of this project.
`Bottleneck` (exercise 3, ResNeXt with `groups`), `PreActResidual` and `PreActBottleneck`
(exercise 4: BN, ReLU, then convolution) follow the same pattern.
"""
from torch import nn
from torch.nn import functional as F



def _has_bias(use_bias, conv):
    """use_bias is True or False for every convolution, or the names of those with a bias
    (Gluon's v1 bottleneck: ("conv1", "conv3"))."""
    return use_bias if isinstance(use_bias, bool) else conv in use_bias

def pad_shortcut(X, num_channels, strides):
    """Option A of the ResNet paper: X[:, :, ::s, ::s] with zero channels on both sides."""
    X = X[:, :, ::strides, ::strides]
    extra = num_channels - X.shape[1]
    return F.pad(X, (0, 0, 0, 0, extra // 2, extra - extra // 2))


def _bn(num_channels, eps, momentum):
    # PyTorch's defaults already are the project's: eps 1e-5, new = 0.9 old + 0.1 batch.
    return nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum)


def _editions(input_channels, num_channels, use_1x1conv, strides):
    """(input_channels, num_channels, use_1x1conv, strides) from either edition's call.
    d2l-en 1.x's Residual(6, use_1x1conv=True, strides=2) arrives here as input_channels=6 and
    no num_channels; its positional Residual(6, True, 2) one place to the left."""
    if num_channels is None:
        return None, input_channels, use_1x1conv, strides
    if isinstance(num_channels, bool):
        return None, input_channels, num_channels, strides if use_1x1conv is False else use_1x1conv
    return input_channels, num_channels, use_1x1conv, strides


def _conv(input_channels, num_channels, **kwargs):
    """nn.Conv2d, or nn.LazyConv2d where the input channels come with the first batch."""
    if input_channels is None:
        return nn.LazyConv2d(num_channels, **kwargs)
    return nn.Conv2d(input_channels, num_channels, **kwargs)


class Residual(nn.Module):
    """The Residual block of ResNet."""
    def __init__(self, input_channels, num_channels=None, use_1x1conv=False, strides=1, *,
                 use_bias=True, shortcut_bn=False, pad_shortcut=False, bn_eps=1e-5,
                 bn_momentum=0.1):
        super().__init__()
        input_channels, num_channels, use_1x1conv, strides = _editions(
            input_channels, num_channels, use_1x1conv, strides)
        self.conv1 = _conv(input_channels, num_channels, kernel_size=3, padding=1,
                           stride=strides, bias=_has_bias(use_bias, "conv1"))
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=_has_bias(use_bias, "conv2"))
        if use_1x1conv:
            self.conv3 = _conv(input_channels, num_channels, kernel_size=1,
                               stride=strides, bias=_has_bias(use_bias, "conv3"))
        else:
            self.conv3 = None
        self.bn1 = _bn(num_channels, bn_eps, bn_momentum)
        self.bn2 = _bn(num_channels, bn_eps, bn_momentum)
        self.bn3 = _bn(num_channels, bn_eps, bn_momentum) if use_1x1conv and shortcut_bn else None
        self.pad_shortcut = pad_shortcut and not use_1x1conv
        self.num_channels, self.strides = num_channels, strides

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
            if self.bn3:
                X = self.bn3(X)
        elif self.pad_shortcut:
            X = pad_shortcut(X, self.num_channels, self.strides)
        Y += X
        return F.relu(Y)


class Bottleneck(nn.Module):
    """1x1 (reduce), 3x3 (grouped for ResNeXt), 1x1 (expand); the projection is conv4.
    The stride sits on the 3x3, as torchvision; stride_in_1x1=True puts it on the first 1x1,
    as the ResNet paper."""
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *,
                 width=None, groups=1, stride_in_1x1=False, use_bias=True, shortcut_bn=False,
                 bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        self.conv1 = nn.Conv2d(input_channels, width, kernel_size=1, stride=s1,
                               bias=_has_bias(use_bias, "conv1"))
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, stride=s2,
                               groups=groups, bias=_has_bias(use_bias, "conv2"))
        self.conv3 = nn.Conv2d(width, num_channels, kernel_size=1,
                               bias=_has_bias(use_bias, "conv3"))
        if use_1x1conv:
            self.conv4 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides, bias=_has_bias(use_bias, "conv4"))
        else:
            self.conv4 = None
        self.bn1 = _bn(width, bn_eps, bn_momentum)
        self.bn2 = _bn(width, bn_eps, bn_momentum)
        self.bn3 = _bn(num_channels, bn_eps, bn_momentum)
        self.bn4 = _bn(num_channels, bn_eps, bn_momentum) if use_1x1conv and shortcut_bn else None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.conv4(X)
            if self.bn4:
                X = self.bn4(X)
        Y += X
        return F.relu(Y)


class PreActResidual(nn.Module):
    """ResNet v2's basic block: BN and ReLU before each convolution, nothing after the sum.
    The identity shortcut carries X itself; a projection (conv3) sees the pre-activated X."""
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *,
                 use_bias=True, bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        self.bn1 = _bn(input_channels, bn_eps, bn_momentum)
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides, bias=_has_bias(use_bias, "conv1"))
        self.bn2 = _bn(num_channels, bn_eps, bn_momentum)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=_has_bias(use_bias, "conv2"))
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides, bias=_has_bias(use_bias, "conv3"))
        else:
            self.conv3 = None

    def forward(self, X):
        Y = F.relu(self.bn1(X))
        if self.conv3:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.Module):
    """ResNet v2's bottleneck: BN-ReLU-conv three times; the projection is conv4."""
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *,
                 width=None, groups=1, stride_in_1x1=False, use_bias=True, bn_eps=1e-5,
                 bn_momentum=0.1):
        super().__init__()
        width = width or num_channels // 4
        s1, s2 = (strides, 1) if stride_in_1x1 else (1, strides)
        self.bn1 = _bn(input_channels, bn_eps, bn_momentum)
        self.conv1 = nn.Conv2d(input_channels, width, kernel_size=1, stride=s1,
                               bias=_has_bias(use_bias, "conv1"))
        self.bn2 = _bn(width, bn_eps, bn_momentum)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, stride=s2,
                               groups=groups, bias=_has_bias(use_bias, "conv2"))
        self.bn3 = _bn(width, bn_eps, bn_momentum)
        self.conv3 = nn.Conv2d(width, num_channels, kernel_size=1,
                               bias=_has_bias(use_bias, "conv3"))
        if use_1x1conv:
            self.conv4 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides, bias=_has_bias(use_bias, "conv4"))
        else:
            self.conv4 = None
        self.strides = strides

    def forward(self, X):
        Y = F.relu(self.bn1(X))
        if self.conv4:
            X = self.conv4(Y)
        elif self.strides > 1:  # Keras's ResNetV2 strides a block without projecting: a 1x1
            X = X[:, :, ::self.strides, ::self.strides]  # max-pool, which subsamples
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
        return Y + X


def resnet_block(input_channels, num_channels, num_residuals, first_block=False, **kwargs):
    """d2l's stage: a list of residual blocks; all but the first stage halve the resolution."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels,
                                use_1x1conv=True, strides=2, **kwargs))
        else:
            blk.append(Residual(num_channels, num_channels, **kwargs))
    return blk
