"""The residual block of d2l's ResNet chapter, in MXNet Gluon.

Imports only mxnet and the standard library: copy this one file into your coursework.
d2l's MXNet tab writes this block with MXNet's NumPy interface (`npx.set_np()`, `npx.relu`);
this file uses Gluon's classic HybridBlock interface (`hybrid_forward(self, F, X)`, `F.relu`),
which is the same computation and leaves MXNet's global state alone. Differences from d2l, all
keyword-only with defaults that keep d2l's behaviour: `use_bias` (torchvision-style nets turn conv
biases off), the BatchNorm settings, which are the same in all three frameworks of this project,
and `in_channels`: 0 lets Gluon infer it from the first batch, as in d2l; a builder that knows it
passes it, so that every parameter exists as soon as the block is initialised.
"""
from mxnet.gluon import nn


class Residual(nn.HybridBlock):
    """The Residual block of ResNet."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, use_bias=True,
                 bn_eps=1e-5, bn_momentum=0.9, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():  # parameter names read residual0_conv0_weight, not conv7_weight
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                   use_bias=use_bias, in_channels=in_channels)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1,
                                   use_bias=use_bias, in_channels=num_channels)
            if use_1x1conv:
                self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides,
                                       use_bias=use_bias, in_channels=in_channels)
            else:
                self.conv3 = None
            # Gluon's momentum weights the old value: 0.9 is PyTorch's 0.1 (new = 0.9 old + 0.1 batch).
            self.bn1 = nn.BatchNorm(epsilon=bn_eps, momentum=bn_momentum, in_channels=num_channels)
            self.bn2 = nn.BatchNorm(epsilon=bn_eps, momentum=bn_momentum, in_channels=num_channels)

    def hybrid_forward(self, F, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


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
