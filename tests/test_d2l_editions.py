"""Both editions of d2l's ResNet chapter run on a copied blocks.py, in each framework.

The classic edition (the one this project's seed is translated from) and d2l-en 1.x write the
blocks' calls differently: PyTorch's classic `Residual(input_channels, num_channels, ...)` on
`nn.Conv2d` against 1.x's `Residual(num_channels, ...)` on `nn.LazyConv2d`, and 1.x builds
ResNet-18 as `ResNet(arch, lr, num_classes)` on its `d2l.Classifier`. Each test copies one
`blocks.py` alone into a folder, beside a stand-in for the few names of the `d2l` package that
the chapter's cells use (written here from d2l's documented behaviour: `add_to_class`,
`save_hyperparameters`, `layer_summary`, `init_cnn`, `randn`/`normal`), and runs the chapter's
cells as d2l prints them: the two shape examples and the ResNet-18 shape table, in both editions
(JAX in d2l-en 1.x only: the classic edition has no JAX tab).
One change to d2l's own code: d2l-en 1.x's TensorFlow tab passes a Sequential to
`tf.keras.models.Sequential(...)`, which Keras 3 refuses for any block ('Sequential' object is not
iterable); it is given as a list here (docs/coursework.md).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.frameworks import FRAMEWORKS
from common.frameworks.registry import record

ROOT = Path(__file__).resolve().parents[1]

SAVE_HYPERPARAMETERS = '''
import inspect
def add_to_class(Class):
    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
    return wrapper
class HyperParameters:
    def save_hyperparameters(self, ignore=()):
        frame = inspect.currentframe().f_back
        for k, v in inspect.getargvalues(frame).locals.items():
            if k not in ignore and k != "self" and not k.startswith("_"):
                setattr(self, k, v)
'''

SHIM = {
    "torch": SAVE_HYPERPARAMETERS + '''
import torch
from torch import nn
class Classifier(nn.Module, HyperParameters):
    def layer_summary(self, X_shape):
        X = torch.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
def init_cnn(module):
    if type(module) == nn.Linear or type(module) == nn.Conv2d:
        nn.init.xavier_uniform_(module.weight)
def randn(*size):
    return torch.randn(*size)
''',
    "tf": SAVE_HYPERPARAMETERS + '''
import tensorflow as tf
class Classifier(tf.keras.Model, HyperParameters):
    def layer_summary(self, X_shape):
        X = tf.random.normal(X_shape)
        for layer in self.net.layers:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
def normal(shape):
    return tf.random.normal(shape)
''',
    "mx": SAVE_HYPERPARAMETERS + '''
from mxnet import np
from mxnet.gluon import nn
class Classifier(nn.Block, HyperParameters):
    def layer_summary(self, X_shape):
        X = np.random.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
def randn(*size):
    return np.random.randn(*size)
''',
    "jax": SAVE_HYPERPARAMETERS + '''
import jax
from flax import linen as nn
def get_key():
    return jax.random.PRNGKey(0)
class Classifier(nn.Module):
    def __call__(self, X):
        return self.net(X)
    def layer_summary(self, X_shape, key=get_key()):
        X = jax.numpy.zeros(X_shape)
        params = self.init(key, X)
        bound = self.bind(params, mutable=["batch_stats"])
        _ = bound(X)
        for layer in bound.net.layers:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
''',
}

CLASSIC = {
    "torch": '''
import torch
from torch import nn
from blocks import Residual
blk = Residual(3, 3)
X = torch.rand(4, 3, 6, 6)
print(blk(X).shape)
blk = Residual(3, 6, use_1x1conv=True, strides=2)
print(blk(X).shape)
b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                   nn.BatchNorm2d(64), nn.ReLU(),
                   nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk
b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
b3 = nn.Sequential(*resnet_block(64, 128, 2))
b4 = nn.Sequential(*resnet_block(128, 256, 2))
b5 = nn.Sequential(*resnet_block(256, 512, 2))
net = nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                    nn.Linear(512, 10))
X = torch.rand(size=(1, 1, 224, 224))
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape:\\t', X.shape)
''',
    "tf": '''
import tensorflow as tf
from blocks import Residual, ResnetBlock
blk = Residual(3)
X = tf.random.uniform((4, 6, 6, 3))
Y = blk(X)
print(Y.shape)
blk = Residual(6, use_1x1conv=True, strides=2)
print(blk(X).shape)
def net():
    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(64, kernel_size=7, strides=2, padding='same'),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.Activation('relu'),
        tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same'),
        ResnetBlock(64, 2, first_block=True),
        ResnetBlock(128, 2),
        ResnetBlock(256, 2),
        ResnetBlock(512, 2),
        tf.keras.layers.GlobalAvgPool2D(),
        tf.keras.layers.Dense(units=10)])
X = tf.random.uniform(shape=(1, 224, 224, 1))
for layer in net().layers:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape:\\t', X.shape)
''',
    "mx": '''
from mxnet import np, npx
from mxnet.gluon import nn
from blocks import Residual
npx.set_np()
blk = Residual(3)
blk.initialize()
X = np.random.uniform(size=(4, 3, 6, 6))
print(blk(X).shape)
blk = Residual(6, use_1x1conv=True, strides=2)
blk.initialize()
print(blk(X).shape)
net = nn.Sequential()
net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
        nn.BatchNorm(), nn.Activation('relu'),
        nn.MaxPool2D(pool_size=3, strides=2, padding=1))
def resnet_block(num_channels, num_residuals, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk
net.add(resnet_block(64, 2, first_block=True),
        resnet_block(128, 2),
        resnet_block(256, 2),
        resnet_block(512, 2))
net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
X = np.random.uniform(size=(1, 1, 224, 224))
net.initialize()
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape:\\t', X.shape)
''',
}

EDITION_1X = {
    "torch": '''
import torch
from torch import nn
import d2l
from blocks import Residual
blk = Residual(3)
X = d2l.randn(4, 3, 6, 6)
print(blk(X).shape)
blk = Residual(6, use_1x1conv=True, strides=2)
print(blk(X).shape)
class ResNet(d2l.Classifier):
    def b1(self):
        return nn.Sequential(
            nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels))
    return nn.Sequential(*blk)
@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(self.b1())
    for i, b in enumerate(arch):
        self.net.add_module(f'b{i+2}', self.block(*b, first_block=(i==0)))
    self.net.add_module('last', nn.Sequential(
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.LazyLinear(num_classes)))
    self.net.apply(d2l.init_cnn)
class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)),
                       lr, num_classes)
ResNet18().layer_summary((1, 1, 96, 96))
''',
    "tf": '''
import tensorflow as tf
import d2l
from blocks import Residual
blk = Residual(3)
X = d2l.normal((4, 6, 6, 3))
Y = blk(X)
print(Y.shape)
blk = Residual(6, use_1x1conv=True, strides=2)
print(blk(X).shape)
class ResNet(d2l.Classifier):
    def b1(self):
        return tf.keras.models.Sequential([
            tf.keras.layers.Conv2D(64, kernel_size=7, strides=2,
                                   padding='same'),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation('relu'),
            tf.keras.layers.MaxPool2D(pool_size=3, strides=2,
                                      padding='same')])
@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = tf.keras.models.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk
@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = tf.keras.models.Sequential([self.b1()])  # d2l: Sequential(self.b1()), see above
    for i, b in enumerate(arch):
        self.net.add(self.block(*b, first_block=(i==0)))
    self.net.add(tf.keras.models.Sequential([
        tf.keras.layers.GlobalAvgPool2D(),
        tf.keras.layers.Dense(units=num_classes)]))
class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)),
                       lr, num_classes)
ResNet18().layer_summary((1, 96, 96, 1))
''',
    "mx": '''
from mxnet import init, np, npx
from mxnet.gluon import nn
import d2l
from blocks import Residual
npx.set_np()
blk = Residual(3)
blk.initialize()
X = d2l.randn(4, 3, 6, 6)
print(blk(X).shape)
blk = Residual(6, use_1x1conv=True, strides=2)
blk.initialize()
print(blk(X).shape)
class ResNet(d2l.Classifier):
    def b1(self):
        net = nn.Sequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
                nn.BatchNorm(), nn.Activation('relu'),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        return net
@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk
@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential()
    self.net.add(self.b1())
    for i, b in enumerate(arch):
        self.net.add(self.block(*b, first_block=(i==0)))
    self.net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
    self.net.initialize(init.Xavier())
class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)),
                       lr, num_classes)
ResNet18().layer_summary((1, 1, 96, 96))
''',
    "jax": '''
import jax
from flax import linen as nn
import d2l
from blocks import Residual
blk = Residual(3)
X = jax.random.normal(d2l.get_key(), (4, 6, 6, 3))
print(blk.init_with_output(d2l.get_key(), X)[0].shape)
blk = Residual(6, use_1x1conv=True, strides=(2, 2))
print(blk.init_with_output(d2l.get_key(), X)[0].shape)
class ResNet(d2l.Classifier):
    arch: tuple
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True
    def setup(self):
        self.net = self.create_net()
    def b1(self):
        return nn.Sequential([
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding='same'),
            nn.BatchNorm(not self.training), nn.relu,
            lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2),
                                  padding='same')])
@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True,
                                strides=(2, 2), training=self.training))
        else:
            blk.append(Residual(num_channels, training=self.training))
    return nn.Sequential(blk)
@d2l.add_to_class(ResNet)
def create_net(self):
    net = nn.Sequential([self.b1()])
    for i, b in enumerate(self.arch):
        net.layers.extend([self.block(*b, first_block=(i==0))])
    net.layers.extend([nn.Sequential([
        # Flax does not provide a GlobalAvg2D layer
        lambda x: nn.avg_pool(x, window_shape=x.shape[1:3],
                              strides=x.shape[1:3], padding='valid'),
        lambda x: x.reshape((x.shape[0], -1)),
        nn.Dense(self.num_classes)])])
    return net
class ResNet18(ResNet):
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    lr: float = 0.1
    num_classes: int = 10
ResNet18(training=False).layer_summary((1, 96, 96, 1))
''',
}


def layout(fw: str, n: int, c: int, s: int) -> tuple[int, ...]:
    """A batch's shape in the framework's layout (TensorFlow's and JAX's are NHWC)."""
    return (n, s, s, c) if record(fw).layout == "NHWC" else (n, c, s, s)


def expected(fw: str, size: int, stem_split: bool, head: list) -> list[tuple[int, ...]]:
    """The shapes d2l prints: the two blocks' outputs, then each part of ResNet-18 for a
    1-channel size x size image: the stem as one part or as its four layers (conv, BN, ReLU,
    pool), the four stages, then the head's layers."""
    blocks = [layout(fw, 4, 3, 6), layout(fw, 4, 6, 3)]
    stem = [layout(fw, 1, 64, size // 4)]
    if stem_split:
        stem = [layout(fw, 1, 64, size // 2)] * 3 + stem
    stages = [layout(fw, 1, c, size // d) for c, d in ((64, 4), (128, 8), (256, 16), (512, 32))]
    return blocks + stem + stages + head


# The head's layers as each edition's cells list them.
CLASSIC_HEAD = {"torch": [(1, 512, 1, 1), (1, 512), (1, 10)], "tf": [(1, 512), (1, 10)],
                "mx": [(1, 512, 1, 1), (1, 10)]}
HEAD_1X = {"torch": [(1, 10)], "tf": [(1, 10)], "mx": [(1, 512, 1, 1), (1, 10)],
           "jax": [(1, 10)]}


def shapes(stdout: str) -> list[tuple[int, ...]]:
    """The shapes printed, from lines like 'torch.Size([4, 3, 6, 6])' or 'Sequential output
    shape:\\t (1, 64, 24, 24)'."""
    import re
    found = []
    for line in stdout.splitlines():
        m = re.search(r"(?:torch\.Size\(\[|\()([0-9, ]+)[\])]", line)
        if m:
            found.append(tuple(int(v) for v in m.group(1).split(",") if v.strip()))
    return found


def run_cells(fw: str, tmp_path: Path, code: str) -> str:
    blocks = ROOT / record(fw).package / "blocks.py"
    (tmp_path / "blocks.py").write_text(blocks.read_text())
    (tmp_path / "d2l.py").write_text(SHIM[fw])
    (tmp_path / "cells.py").write_text(code)
    # -E: no PYTHONPATH; the script's own folder (the copy) comes first on the path.
    done = subprocess.run([sys.executable, "-E", "cells.py"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("fw", [fw for fw in FRAMEWORKS if fw != "jax"])  # no JAX tab then
def test_the_classic_editions_cells_run_on_a_copied_blocks_file(fw, tmp_path):
    """The classic edition: PyTorch's Residual(input_channels, num_channels, ...), the stages
    from resnet_block (TensorFlow's ResnetBlock), the table at 224 px."""
    out = run_cells(fw, tmp_path, CLASSIC[fw])
    assert shapes(out) == expected(fw, 224, fw != "torch", CLASSIC_HEAD[fw]), out


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_d2l_1x_cells_run_on_a_copied_blocks_file(fw, tmp_path):
    """d2l-en 1.x: Residual(num_channels, ...) without input channels, and ResNet18() built by
    ResNet(arch, lr, num_classes) on d2l.Classifier, its layer_summary at 96 px."""
    out = run_cells(fw, tmp_path, EDITION_1X[fw])
    assert shapes(out) == expected(fw, 96, False, HEAD_1X[fw]), out


def test_pytorch_residual_reads_either_editions_positional_call():
    """Residual(6, True, 2) is d2l-en 1.x's Residual(6, use_1x1conv=True, strides=2), lazy;
    Residual(3, 6, True, 2) the classic one with 3 input channels; Residual(6) 1.x's plain block."""
    import torch
    from torch import nn

    from resnet_torch.blocks import Residual
    lazy, classic, plain = Residual(6, True, 2), Residual(3, 6, True, 2), Residual(6)
    assert isinstance(lazy.conv3, nn.LazyConv2d) and lazy.conv3.stride == (2, 2)
    assert isinstance(lazy.conv1, nn.LazyConv2d) and lazy.conv1.out_channels == 6
    assert classic.conv1.in_channels == 3 and not isinstance(classic.conv1, nn.LazyConv2d)
    assert classic.conv3.stride == (2, 2) and plain.conv3 is None
    X = torch.rand(4, 3, 6, 6)
    assert lazy(X).shape == classic(X).shape == (4, 6, 3, 3)
    assert Residual(6, False, 2).conv1.stride == (2, 2)
