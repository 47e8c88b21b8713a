"""Every preset's structure against a table typed in by hand from the references' descriptions.

The table (also in docs/presets.md, which must say the same) is not generated from
the spec: each cell is what the preset's reference describes (d2l's ResNet chapter,
torchvision's resnet.py, the ResNet paper's CIFAR nets, the pre-activation paper, the seed
ResNeXt tutorial). It is checked against the oracle (common.core.oracle.layers: which convolution's
output halves the map, which parameters exist, which layers the shortcut has) and against the
layers each framework builds (their own stride, bias and group attributes). So moving the
stride between the first 1x1 and the 3x3 of a bottleneck (v1 / v1.5), which keeps every shape
and count, fails here. The same network, built once, is held to the oracle's shapes and counts
per part and carries the canonical weights through and back: every preset builds in every
framework.
"""
from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from common.core.init import init_weights
from common.core.oracle import layers, part_table
from common.core.spec import PRESETS, get_spec
from common.frameworks import FRAMEWORKS, load
from tests.helpers import blocks_per_stage, part_shapes_nchw

# Columns: reference | block | stride in a downsampling block (stage 2 on, first block) |
# conv bias | projection shortcut of a downsampling block | pre-activation | groups |
# stage-1 inner width (bottleneck) | stem (kernel/stride, channels, pool).
TABLE = {
    "resnet18": ("torchvision", "basic", "conv1", False, "1x1 conv + BN", False, 1, None, "7x7/2, 64, maxpool"),
    "resnet34": ("torchvision", "basic", "conv1", False, "1x1 conv + BN", False, 1, None, "7x7/2, 64, maxpool"),
    "resnet50": ("torchvision v1.5", "bottleneck", "conv2", False, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "resnet101": ("torchvision v1.5", "bottleneck", "conv2", False, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "resnet152": ("torchvision v1.5", "bottleneck", "conv2", False, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "d2l_resnet18": ("d2l", "basic", "conv1", True, "1x1 conv", False, 1, None, "7x7/2, 64, maxpool"),
    "d2l_resnet34": ("d2l", "basic", "conv1", True, "1x1 conv", False, 1, None, "7x7/2, 64, maxpool"),
    "d2l_resnet50": ("d2l + bottleneck (exercise 3)", "bottleneck", "conv2", True, "1x1 conv", False, 1, 64, "7x7/2, 64, maxpool"),
    "d2l_resnet101": ("d2l + bottleneck (exercise 3)", "bottleneck", "conv2", True, "1x1 conv", False, 1, 64, "7x7/2, 64, maxpool"),
    "d2l_resnet152": ("d2l + bottleneck (exercise 3)", "bottleneck", "conv2", True, "1x1 conv", False, 1, 64, "7x7/2, 64, maxpool"),
    "resnet50_v2": ("pre-activation ResNet (v2)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "resnet101_v2": ("pre-activation ResNet (v2)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "resnet152_v2": ("pre-activation ResNet (v2)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "resnext50_32x4d": ("torchvision ResNeXt", "bottleneck", "conv2", False, "1x1 conv + BN", False, 32, 128, "7x7/2, 64, maxpool"),
    "resnext101_32x8d": ("torchvision ResNeXt", "bottleneck", "conv2", False, "1x1 conv + BN", False, 32, 256, "7x7/2, 64, maxpool"),
    "resnext101_64x4d": ("torchvision ResNeXt", "bottleneck", "conv2", False, "1x1 conv + BN", False, 64, 256, "7x7/2, 64, maxpool"),
    "wide_resnet50_2": ("torchvision wide ResNet", "bottleneck", "conv2", False, "1x1 conv + BN", False, 1, 128, "7x7/2, 64, maxpool"),
    "wide_resnet101_2": ("torchvision wide ResNet", "bottleneck", "conv2", False, "1x1 conv + BN", False, 1, 128, "7x7/2, 64, maxpool"),
    "keras_resnet50": ("keras.applications ResNet50 (v1)", "bottleneck", "conv1", True, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "keras_resnet101": ("keras.applications ResNet101 (v1)", "bottleneck", "conv1", True, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "keras_resnet152": ("keras.applications ResNet152 (v1)", "bottleneck", "conv1", True, "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet18_v1": ("Gluon model zoo resnet18_v1", "basic", "conv1", False, "1x1 conv + BN", False, 1, None, "7x7/2, 64, maxpool"),
    "gluon_resnet18_v2": ("Gluon model zoo resnet18_v2 (input BN)", "basic", "conv1", False, "1x1 conv", True, 1, None, "7x7/2, 64, maxpool"),
    "gluon_resnet34_v1": ("Gluon model zoo resnet34_v1", "basic", "conv1", False, "1x1 conv + BN", False, 1, None, "7x7/2, 64, maxpool"),
    "gluon_resnet34_v2": ("Gluon model zoo resnet34_v2 (input BN)", "basic", "conv1", False, "1x1 conv", True, 1, None, "7x7/2, 64, maxpool"),
    "gluon_resnet50_v1": ("Gluon model zoo resnet50_v1", "bottleneck", "conv1", "conv1+conv3", "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet50_v2": ("Gluon model zoo resnet50_v2 (input BN)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet101_v1": ("Gluon model zoo resnet101_v1", "bottleneck", "conv1", "conv1+conv3", "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet101_v2": ("Gluon model zoo resnet101_v2 (input BN)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet152_v1": ("Gluon model zoo resnet152_v1", "bottleneck", "conv1", "conv1+conv3", "1x1 conv + BN", False, 1, 64, "7x7/2, 64, maxpool"),
    "gluon_resnet152_v2": ("Gluon model zoo resnet152_v2 (input BN)", "bottleneck", "conv2", False, "1x1 conv", True, 1, 64, "7x7/2, 64, maxpool"),
    "keras_resnet50_v2": ("keras.applications ResNet50V2", "bottleneck", "conv2, last block", "conv3+conv4+stem", "1x1/1 conv", True, 1, 64, "7x7/2, 64, maxpool, no BN-ReLU"),
    "keras_resnet101_v2": ("keras.applications ResNet101V2", "bottleneck", "conv2, last block", "conv3+conv4+stem", "1x1/1 conv", True, 1, 64, "7x7/2, 64, maxpool, no BN-ReLU"),
    "keras_resnet152_v2": ("keras.applications ResNet152V2", "bottleneck", "conv2, last block", "conv3+conv4+stem", "1x1/1 conv", True, 1, 64, "7x7/2, 64, maxpool, no BN-ReLU"),
    "resnext26_2x64d": ("ResNeXt tutorial + torchvision block", "bottleneck", "conv2", False, "1x1 conv + BN", False, 2, 128, "3x3/1, 64, no pool"),
    "resnext26_4x32d": ("ResNeXt tutorial + torchvision block", "bottleneck", "conv2", False, "1x1 conv + BN", False, 4, 128, "3x3/1, 64, no pool"),
    "resnext26_8x16d": ("ResNeXt tutorial + torchvision block", "bottleneck", "conv2", False, "1x1 conv + BN", False, 8, 128, "3x3/1, 64, no pool"),
    "resnext26_16x8d": ("ResNeXt tutorial + torchvision block", "bottleneck", "conv2", False, "1x1 conv + BN", False, 16, 128, "3x3/1, 64, no pool"),
    "resnext26_32x4d": ("ResNeXt tutorial + torchvision block", "bottleneck", "conv2", False, "1x1 conv + BN", False, 32, 128, "3x3/1, 64, no pool"),
    "cifar_resnet20": ("ResNet paper, CIFAR, option A", "basic", "conv1", False, "zero-pad", False, 1, None, "3x3/1, 16, no pool"),
    "cifar_resnet32": ("ResNet paper, CIFAR, option A", "basic", "conv1", False, "zero-pad", False, 1, None, "3x3/1, 16, no pool"),
    "cifar_resnet44": ("ResNet paper, CIFAR, option A", "basic", "conv1", False, "zero-pad", False, 1, None, "3x3/1, 16, no pool"),
    "cifar_resnet56": ("ResNet paper, CIFAR, option A", "basic", "conv1", False, "zero-pad", False, 1, None, "3x3/1, 16, no pool"),
    "cifar_resnet110": ("ResNet paper, CIFAR, option A", "basic", "conv1", False, "zero-pad", False, 1, None, "3x3/1, 16, no pool"),
}
SIZE = 64  # even at every stage of every preset, so a stride of 2 exactly halves the map


class Conv(NamedTuple):
    kernel: int
    stride: int
    bias: bool
    groups: int
    out: int


class Block(NamedTuple):
    convs: dict[str, Conv]  # conv1, conv2[, conv3][, the projection: conv3 basic, conv4 bottleneck]
    bns: dict[str, int]     # BatchNorm name -> channels
    pad: bool               # zero-padded identity shortcut (option A)
    in_channels: int


class Net(NamedTuple):
    stem: Conv
    pool: bool
    blocks: dict[tuple[int, int], Block]  # (stage, block), both from 1 and 0 as in the names
    head_bn: bool
    stem_norm: bool = True  # BN and ReLU after the stem conv (Keras's ResNetV2: neither)


def describe(net: Net) -> tuple:
    """The row of TABLE (without the reference) that the structure `net` has."""
    bottleneck = "conv3" in net.blocks[1, 1].convs  # a non-first block: conv3 is in the branch
    branch = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    proj, proj_bn = ("conv4", "bn4") if bottleneck else ("conv3", "bn3")
    where = set()
    last = {i: j for i, j in net.blocks}  # the last block of each stage (keys come in order)
    for (i, j), block in net.blocks.items():
        strided = [n for n in branch if block.convs[n].stride != 1]
        if j == last[i] and j > 0 and strided:  # Keras's ResNetV2 strides the last block
            where.add("+".join(strided) + ", last block")
        elif i == 1 or j > 0:
            if strided:
                where.add(f"stray stride in stage{i}.{j}: {strided}")
        elif not any(c.stride != 1 for (k, m), b in net.blocks.items() if m > 0
                     for c in b.convs.values()):
            where.add("+".join(strided) or "none")
    first = net.blocks[2, 0]
    if first.pad:
        shortcut = "zero-pad" if proj not in first.convs else "zero-pad and a conv"
    elif proj in first.convs:
        c = first.convs[proj]
        shortcut = f"{c.kernel}x{c.kernel}" + (" conv" if c.stride == 2 else f"/{c.stride} conv")
        shortcut += " + BN" if proj_bn in first.bns else ""
    else:
        shortcut = "none"
    biases = {c.bias for b in net.blocks.values() for c in b.convs.values()} | {net.stem.bias}
    if len(biases) > 1:  # name the convolutions that have one (Gluon's v1 bottleneck)
        biases = {"+".join(sorted({n for b in net.blocks.values() for n, c in b.convs.items()
                                   if c.bias} | ({"stem"} if net.stem.bias else set())))}
    # v2: a block's first BN normalises its input, not conv1's output (told apart where their
    # channels differ); the head has one BN before pooling.
    preact = {b.bns["bn1"] == b.in_channels for b in net.blocks.values()
              if b.in_channels != b.convs["conv1"].out} | {net.head_bn}
    mid = net.blocks[1, 0].convs["conv2"]
    stem = (f"{net.stem.kernel}x{net.stem.kernel}/{net.stem.stride}, {net.stem.out}, "
            + ("maxpool" if net.pool else "no pool") + ("" if net.stem_norm else ", no BN-ReLU"))
    return ("bottleneck" if bottleneck else "basic", " / ".join(sorted(where)),
            biases.pop() if len(biases) == 1 else "mixed", shortcut,
            preact.pop() if len(preact) == 1 else "inconsistent", mid.groups,
            mid.out if bottleneck else None, stem)


def expected(preset: str) -> tuple:
    return TABLE[preset][1:]


# --- the oracle -------------------------------------------------------------------------------

def oracle_net(preset: str) -> Net:
    spec = get_spec(preset)
    ls = layers(spec, SIZE)
    by_path = {layer.path: layer for layer in ls}
    bottleneck = "stage1.1.conv3" in by_path  # an identity block: conv3 is in the branch
    branch = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    proj = "conv4" if bottleneck else "conv3"

    def conv(path: str, in_shape: tuple[int, ...]) -> Conv:
        layer = by_path[path]
        out, per_group, k, _ = layer.params["weight"]
        return Conv(k, in_shape[2] // layer.out_shape[2], "bias" in layer.params,
                    in_shape[1] // per_group, out)

    inputs = {}  # block -> its input shape: the output of the layer before its first layer
    for before, layer in zip(ls, ls[1:]):
        m = re.fullmatch(r"stage(\d+)\.(\d+)\..*", layer.path)
        if m and (int(m[1]), int(m[2])) not in inputs:
            inputs[int(m[1]), int(m[2])] = before.out_shape
    blocks = {}
    for (i, j), in_shape in inputs.items():
        prefix, convs, shape = f"stage{i}.{j}.", {}, in_shape
        for name in branch:  # each branch conv reads the previous one's output
            convs[name] = conv(prefix + name, shape)
            shape = by_path[prefix + name].out_shape
        if prefix + proj in by_path:  # the projection reads the block's input
            convs[proj] = conv(prefix + proj, in_shape)
        bns = {p.removeprefix(prefix): layer.params["gamma"][0] for p, layer in by_path.items()
               if p.startswith(prefix) and layer.kind == "bn"}
        blocks[i, j] = Block(convs, bns, prefix + "shortcut" in by_path, in_shape[1])
    stem = conv("stem.conv", (1, spec.in_channels, SIZE, SIZE))
    return Net(stem, "stem.pool" in by_path, blocks, "head.bn" in by_path, "stem.bn" in by_path)


def test_table_lists_every_preset():
    assert sorted(TABLE) == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_oracle_structure_matches_the_references(preset):
    assert describe(oracle_net(preset)) == expected(preset)


# --- each framework's layers ------------------------------------------------------------------

MODULES = {fw: load(fw) for fw in FRAMEWORKS}
# TensorFlow builds by running a batch (seconds for a deep net): one preset of each kind.
def size(spec) -> int:
    """The oracle's parameter count, BatchNorm statistics included."""
    return sum(r.counts.trainable + r.counts.non_trainable for r in part_table(spec, 33))


def kind(spec) -> str:
    """What a preset is but for its number of blocks per stage (resnet50, 101 and 152 share it)."""
    return repr(replace(spec, name="", stages=tuple(replace(s, blocks=1) for s in spec.stages)))


BIG = 30_000_000  # parameters: beyond ResNet-50's size (the 101- and 152-layer and wide presets)
# Keras and Flax build networks slowly (a ResNet-152 took 6-14 s, a ResNeXt-101 8 s): there,
# each kind of preset is built once, with two blocks per stage (its stem, its block with and
# without a stride and a projection, its widths and groups, its head: every layer describe()
# reads), and round-trips its weights. At full depth: d2l's ResNet-18 (two blocks per stage
# already), and cifar_resnet110, whose 18 blocks per stage keep block names past "9" in order.
# PyTorch and Gluon build every preset at full depth. The others of a kind are the same code
# with more blocks per stage.
_KINDS: dict[str, list[str]] = {}
for _name, _spec in PRESETS.items():
    _KINDS.setdefault(kind(_spec), []).append(_name)

SLOW_BUILDERS = ("tf", "jax")
FULL_DEPTH = {"d2l_resnet18", "cifar_resnet110"}
SLOW_BUILT = {names[0] for names in _KINDS.values()} | FULL_DEPTH
# Preset by preset, each in every framework one after the other (they share its seeded weights).
CASES = [(fw, p) for p in sorted(PRESETS) for fw in FRAMEWORKS
         if fw not in SLOW_BUILDERS or p in SLOW_BUILT]


def built_spec(fw: str, preset: str):
    """What the test builds of `preset` in `fw`: the preset, or two blocks per stage of it
    where a slow builder stands for the preset's kind (see SLOW_BUILT)."""
    spec = PRESETS[preset]
    return spec if fw not in SLOW_BUILDERS or preset in FULL_DEPTH else blocks_per_stage(spec, 2)


def framework_conv(fw: str, layer) -> Conv:
    if fw == "torch":
        kernel, stride = layer.kernel_size, layer.stride
        bias, groups, out = layer.bias is not None, layer.groups, layer.out_channels
    elif fw == "tf":  # Conv2D or the project's PaddedConv2D, a Conv2D with explicit padding
        kernel, stride = layer.kernel_size, layer.strides
        bias, groups, out = layer.bias is not None, layer.groups, layer.filters
    else:  # Gluon keeps its convolution's arguments in _kwargs
        kw = layer._kwargs
        kernel, stride = kw["kernel"], kw["stride"]
        bias = layer.bias is not None and not kw["no_bias"]
        groups, out = kw["num_group"], kw["num_filter"]
    assert kernel[0] == kernel[1] and stride[0] == stride[1], (kernel, stride)
    return Conv(int(kernel[0]), int(stride[0]), bool(bias), int(groups), int(out))


def framework_bn_channels(fw: str, layer) -> int:
    return int(layer.num_features if fw == "torch" else layer.gamma.shape[0])


def jax_net(model) -> Net:
    """A Flax network's layers, as framework_net reads the others': Flax modules exist only
    while applied, so each module is caught as it is called (flax.linen.intercept_methods),
    with its output's shape, and read by its path; applied under jax.eval_shape, which traces
    the network without computing it."""
    import flax.linen as nn
    import jax
    seen = {}

    def catch(call, args, kwargs, context):
        out = call(*args, **kwargs)
        if context.method_name == "__call__":
            seen[tuple(context.module.scope.path)] = (context.module, np.shape(out))
        return out

    spec = model.spec
    with nn.intercept_methods(catch):
        jax.eval_shape(model.module.apply, model.variables,
                       jax.ShapeDtypeStruct((1, 33, 33, spec.in_channels), np.float32))

    def conv(path) -> Conv:
        m = seen[path][0]
        stride = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides or (1, 1))
        assert m.kernel_size[0] == m.kernel_size[1] and stride[0] == stride[1], path
        return Conv(int(m.kernel_size[0]), int(stride[0]), bool(m.use_bias),
                    int(m.feature_group_count), int(m.features))

    blocks, channels = {}, spec.stem.channels
    for i, stage in enumerate(spec.stages, start=1):
        for j in range(stage.blocks):
            at = (f"stage{i}", str(j))
            convs = {n: conv((*at, n)) for n in ("conv1", "conv2", "conv3", "conv4")
                     if (*at, n) in seen}
            bns = {n: int(seen[(*at, n)][1][-1]) for n in ("bn1", "bn2", "bn3", "bn4")
                   if (*at, n) in seen}
            blocks[i, j] = Block(convs, bns, bool(getattr(seen[at][0], "pad_shortcut", False)),
                                 channels)
            channels = stage.channels
    pooled = seen[("stem",)][1][1] < seen[("stem", "conv")][1][1]  # the stem's output is smaller
    return Net(conv(("stem", "conv")), pooled, blocks, ("head", "bn") in seen,
               ("stem", "bn") in seen)


def framework_net(fw: str, model) -> Net:
    if fw == "jax":
        return jax_net(model)
    blocks, channels = {}, model.spec.stem.channels
    for i in range(1, len(model.spec.stages) + 1):
        stage = getattr(model, f"stage{i}")
        for j in range(len(stage)):
            block = stage[j]
            convs = {n: framework_conv(fw, getattr(block, n))
                     for n in ("conv1", "conv2", "conv3", "conv4")
                     if getattr(block, n, None) is not None}
            bns = {n: framework_bn_channels(fw, getattr(block, n))
                   for n in ("bn1", "bn2", "bn3", "bn4") if getattr(block, n, None) is not None}
            blocks[i, j] = Block(convs, bns, bool(getattr(block, "pad_shortcut", False)), channels)
            channels = model.spec.stages[i - 1].channels
    return Net(framework_conv(fw, model.stem.conv), getattr(model.stem, "pool", None) is not None,
               blocks, getattr(model.head, "bn", None) is not None,
               getattr(model.stem, "bn", None) is not None)


@functools.lru_cache(maxsize=1)
def shared_weights(spec) -> dict:
    """The seeded weights of a network, drawn once for its frameworks' tests, which run one
    after the other (the largest presets take seconds to draw)."""
    return init_weights(spec, 1)


@pytest.mark.parametrize("fw,preset", CASES, ids=[f"{fw}-{p}" for fw, p in CASES])
def test_every_preset_builds_the_references_layers_and_the_oracles_shapes_and_counts(fw, preset):
    """Every preset in every framework, one network built for all of it: its layers against
    the hand-typed table, the output shape and parameter counts of each part against the
    oracle's, and the canonical weights through the framework and back bit for bit. The
    round trip is left out for networks of over 30M parameters (BIG: the 101- and 152-layer
    ones and the wide ones), the half of this file's time that copying their weights took:
    their names come from the same code as their smaller siblings', and cifar_resnet110's 18
    blocks per stage keep block names past "9" in order in every framework. Keras and Flax
    build each kind of preset once, with two blocks per stage (SLOW_BUILT, built_spec)."""
    module = load(fw)
    spec = built_spec(fw, preset)
    # Each framework's quickest build (the values are not read): its own init, but in JAX the
    # shared NumPy one, as Flax's init runs the network op by op and compiles each op on its
    # first use (the commit that made this change has the figures).
    model = module.build(spec, init="common" if fw == "jax" else "framework", seed=1)
    assert describe(framework_net(fw, model)) == expected(preset)
    x = np.zeros((1, spec.in_channels, 33, 33), np.float32)
    oracle = part_table(spec, 33)
    assert part_shapes_nchw(module, model, x) == {r.name: r.out_shape for r in oracle}
    counts = {k: (v.trainable, v.non_trainable)
              for k, v in module.part_param_counts(model).items()}
    assert counts == {r.name: (r.counts.trainable, r.counts.non_trainable) for r in oracle}
    if size(spec) > BIG:
        return
    weights = shared_weights(spec)
    back = module.to_canonical(module.from_canonical(model, weights))
    assert list(back) == list(weights)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


# --- the document says the same ---------------------------------------------------------------

def test_document_table_is_the_test_table():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "presets.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] in PRESETS:
            ref, block, stride, bias, shortcut, preact, groups, width, stem = cells[1:]
            bias = {"yes": True, "no": False}.get(bias, bias)  # or the convolutions that have one
            rows[cells[0]] = (ref, block, stride, bias, shortcut, preact == "yes",
                              int(groups), None if width == "-" else int(width), stem)
    assert rows == TABLE
