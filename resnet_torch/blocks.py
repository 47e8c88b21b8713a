"""The residual block of d2l's ResNet chapter, in PyTorch.

Imports only torch and the standard library: copy this one file into your coursework.
Differences from d2l, all keyword-only with defaults that keep d2l's behaviour except where a
comment says why: `use_bias` (torchvision-style nets turn conv biases off) and the BatchNorm
settings, which are the same in all three frameworks of this project.
"""
from torch import nn
from torch.nn import functional as F


class Residual(nn.Module):
    """The Residual block of ResNet."""
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *,
                 use_bias=True, bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides, bias=use_bias)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=use_bias)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides, bias=use_bias)
        else:
            self.conv3 = None
        # PyTorch's defaults already are the project's: eps 1e-5, new = 0.9 old + 0.1 batch.
        self.bn1 = nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)
        self.bn2 = nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


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
