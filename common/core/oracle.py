"""Shapes and parameter counts computed from a spec alone, with no framework.

The frameworks are tested against this oracle: the output shape after every part (stem, each
stage, head) for any input size, and parameter counts per layer, per part and in all.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple

from common.core.spec import ResNetSpec, SpecError

BN_STATS = ("running_mean", "running_var")


class ParamCounts(NamedTuple):
    """Trainable parameters, non-trainable ones (BatchNorm running statistics), and their sum."""
    trainable: int
    non_trainable: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __add__(self, other: "ParamCounts") -> "ParamCounts":  # type: ignore[override]
        return ParamCounts(self.trainable + other.trainable,
                           self.non_trainable + other.non_trainable)


@dataclass(frozen=True)
class Layer:
    """One layer of the network: where it sits (`stage2.0.conv1`), what it is, its parameters in
    the canonical layout, and the output shape (NCHW, or (N, classes) after the head)."""
    path: str
    kind: str  # conv | bn | relu | maxpool | avgpool | dense | identity (a headless head)
    params: dict[str, tuple[int, ...]]
    out_shape: tuple[int, ...]

    @property
    def part(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the forward pass: each weight of a convolution is used once per
        output pixel, each weight of a dense layer once. BatchNorm, ReLU, pools and additions are
        left out, as torchvision's and fvcore's counts do (they are under 1% of a ResNet's)."""
        if self.kind == "conv":
            return _prod(self.params["weight"]) * self.out_shape[2] * self.out_shape[3]
        if self.kind == "dense":
            return _prod(self.params["weight"])
        return 0

    @property
    def counts(self) -> ParamCounts:
        sizes = {name: _prod(shape) for name, shape in self.params.items()}
        stats = sum(size for name, size in sizes.items() if name in BN_STATS)
        return ParamCounts(sum(sizes.values()) - stats, stats)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pool with symmetric padding (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _input_hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (input_size, input_size) if isinstance(input_size, (int, float)) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(d, int) and d > 0 for d in hw):
        raise SpecError(f"input_size: expected a positive int or (height, width), "
                        f"got {input_size!r}")
    return hw  # type: ignore[return-value]


def layers(spec: ResNetSpec, input_size: int | tuple[int, int] = 224,
           batch: int = 1) -> list[Layer]:
    """Every layer of `spec` in forward order, with output shapes for `input_size`."""
    return list(_walk(spec, *_input_hw(input_size), batch))


def _conv(path: str, shape: tuple[int, ...], c_out: int, k: int, s: int, p: int,
          bias: bool, groups: int = 1) -> Layer:
    n, c_in, h, w = shape
    if c_in % groups or c_out % groups:
        raise SpecError(f"{path}.groups: expected a divisor of {c_in} input and {c_out} output "
                        f"channels, got {groups}")
    oh, ow = conv_out(h, k, s, p), conv_out(w, k, s, p)
    if oh < 1 or ow < 1:
        raise SpecError(f"input_size: expected enough pixels to reach {path}, got {h}x{w} "
                        f"there, which a {k}x{k}/{s} convolution shrinks to {oh}x{ow}")
    params = {"weight": (c_out, c_in // groups, k, k)}
    if bias:
        params["bias"] = (c_out,)
    return Layer(path, "conv", params, (n, c_out, oh, ow))


def _bn(path: str, shape: tuple[int, ...]) -> Layer:
    return Layer(path, "bn", {name: (shape[1],) for name in ("gamma", "beta", *BN_STATS)}, shape)


@dataclass(frozen=True)
class BlockConfig:
    """What every block of a network shares (taken from its spec)."""
    kind: str = "basic"
    preact: bool = False
    groups: int = 1
    stride_in_1x1: bool = False
    shortcut_bn: bool = False
    conv_bias: bool | tuple[str, ...] = True  # as ResNetSpec.conv_bias
    shortcut: str = "conv"
    stride_at: str = "first"

    def has_bias(self, conv: str) -> bool:
        return self.conv_bias if isinstance(self.conv_bias, bool) else conv in self.conv_bias

    @classmethod
    def of(cls, spec: ResNetSpec) -> "BlockConfig":
        return cls(spec.block, spec.preact, spec.groups, spec.stride_in_1x1, spec.shortcut_bn,
                   spec.conv_bias, spec.shortcut, spec.stride_at)


def block_layers(path: str, in_shape: tuple[int, ...], channels: int, stride: int = 1,
                 project: bool = False, conv_bias: bool | tuple[str, ...] = True, *,
                 width: int | None = None,
                 config: BlockConfig | None = None) -> list[Layer]:
    """The layers of one residual block in forward order, the shortcut projection last:
    basic (d2l's `Residual`): conv1 bn1 conv2 bn2 [conv3 (bn3) | shortcut];
    bottleneck: conv1 bn1 conv2 bn2 conv3 bn3 [conv4 (bn4)], `width` inner channels;
    pre-activation (v2) puts each BN before its conv: bn1 conv1 bn2 conv2 ..."""
    cfg = config or BlockConfig(conv_bias=conv_bias)
    if cfg.kind == "basic":  # (kernel, out channels, stride, groups) per conv
        convs = [(3, channels, stride, 1), (3, channels, 1, 1)]
    else:
        mid = width or channels // 4
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        convs = [(1, mid, s1, 1), (3, mid, s3, cfg.groups), (1, channels, 1, 1)]
    out, shape = [], in_shape
    for i, (k, c, s, g) in enumerate(convs, start=1):
        conv = _conv(f"{path}.conv{i}", shape, c, k, s, k // 2, cfg.has_bias(f"conv{i}"), g)
        bn = _bn(f"{path}.bn{i}", shape if cfg.preact else conv.out_shape)
        out += [bn, conv] if cfg.preact else [conv, bn]
        shape = conv.out_shape
    if project and cfg.shortcut == "pad":  # option A: x[:, :, ::s, ::s], zero channels around
        n, c_in, h, w = in_shape
        out.append(Layer(f"{path}.shortcut", "pad", {},
                         (n, channels, conv_out(h, 1, stride, 0), conv_out(w, 1, stride, 0))))
    elif project:
        i = len(convs) + 1
        conv = _conv(f"{path}.conv{i}", in_shape, channels, 1, stride, 0, cfg.has_bias(f"conv{i}"))
        out += [conv] + ([_bn(f"{path}.bn{i}", conv.out_shape)] if cfg.shortcut_bn else [])
    elif stride != 1 and in_shape[1] == channels and cfg.stride_at == "last":
        n, c_in, h, w = in_shape  # Keras's ResNetV2: a 1x1 max-pool, x[:, :, ::s, ::s]
        out.append(Layer(f"{path}.shortcut", "subsample", {},
                         (n, c_in, conv_out(h, 1, stride, 0), conv_out(w, 1, stride, 0))))
    elif (in_shape[1], stride) != (channels, 1):
        raise SpecError(f"{path}: expected use_1x1conv=True to change {in_shape[1]} channels "
                        f"to {channels} or stride by {stride}, got use_1x1conv=False")
    return out


def block_output(layers_: list[Layer], config: BlockConfig) -> tuple[int, ...]:
    """The output shape of a block from its layers (the last layer of the residual branch)."""
    return layers_[2 * (2 if config.kind == "basic" else 3) - 1].out_shape


def _walk(spec: ResNetSpec, h: int, w: int, n: int) -> Iterator[Layer]:
    st, cfg = spec.stem, BlockConfig.of(spec)
    if spec.input_bn:  # normalises the raw input with running statistics only
        yield Layer("stem.input_bn", "bn", {name: (spec.in_channels,) for name in BN_STATS},
                    (n, spec.in_channels, h, w))
    conv = _conv("stem.conv", (n, spec.in_channels, h, w), st.channels, st.kernel_size,
                 st.stride, st.padding, spec.has_bias("stem"))
    shape = conv.out_shape
    yield conv
    if st.norm:
        yield from (_bn("stem.bn", shape), Layer("stem.relu", "relu", {}, shape))
    if st.pool:
        shape = shape[:2] + (conv_out(shape[2], 3, 2, 1), conv_out(shape[3], 3, 2, 1))
        yield Layer("stem.pool", "maxpool", {}, shape)
    for i, stage in enumerate(spec.stages, start=1):
        for j in range(stage.blocks):
            first = j == 0
            block = block_layers(f"stage{i}.{j}", shape, stage.channels,
                                 spec.block_stride(stage, j), first and stage.project,
                                 width=spec.mid_channels(stage), config=cfg)
            yield from block
            shape = block_output(block, cfg)
    if spec.preact:  # v2 blocks end un-normalised: one BN and ReLU before pooling
        yield from (_bn("head.bn", shape), Layer("head.relu", "relu", {}, shape))
    if spec.pooling is not None:  # global pool, flattened: (N, C)
        yield Layer("head.pool", f"{spec.pooling}pool", {}, shape[:2])
    elif not spec.preact:  # headless without pooling: the head passes the map on
        yield Layer("head.identity", "identity", {}, shape)
    if spec.num_classes:  # num_classes=0: headless, the pooled features are the output
        yield Layer("head.fc", "dense", {"weight": (spec.num_classes, shape[1]),
                                         "bias": (spec.num_classes,)}, (n, spec.num_classes))


class PartRow(NamedTuple):
    name: str
    out_shape: tuple[int, ...]
    counts: ParamCounts


def part_table(spec: ResNetSpec, input_size: int | tuple[int, int] = 224,
               batch: int = 1) -> list[PartRow]:
    """One row per part (stem, stage1..N, head): output shape (NCHW) and parameter counts."""
    rows: dict[str, PartRow] = {}
    for layer in layers(spec, input_size, batch):
        prev = rows.get(layer.part)
        counts = layer.counts + (prev.counts if prev else ParamCounts(0, 0))
        rows[layer.part] = PartRow(layer.part, layer.out_shape, counts)
    return list(rows.values())


def param_counts(spec: ResNetSpec) -> ParamCounts:
    """Parameter counts of the whole network (they do not depend on the input size)."""
    total = ParamCounts(0, 0)
    # Counts do not depend on the input; take one large enough to survive every stride.
    for layer in layers(spec, 2 ** (len(spec.stages) + 4)):
        total = total + layer.counts
    return total


def zero_gradient_biases(spec: ResNetSpec) -> set[str]:
    """Conv biases whose gradient is exactly 0 in train mode: every path from them meets a
    BatchNorm that subtracts the batch mean first. In v1 nets, the convs followed by a BN; in
    v2 nets, every conv (each feeds a BN or the residual stream, which only BNs read)."""
    ls = layers(spec, 2 ** (len(spec.stages) + 4))
    if spec.preact:
        return {f"{a.path}.bias" for a in ls if a.kind == "conv" and "bias" in a.params}
    return {f"{a.path}.bias" for a, b in zip(ls, ls[1:])
            if a.kind == "conv" and b.kind == "bn" and "bias" in a.params}


@lru_cache(maxsize=64)
def min_input_size(spec: ResNetSpec) -> int:
    """The smallest height (and width: the network treats both axes alike) for which every
    layer keeps at least one pixel, so that a batch reaches the head."""
    for size in range(1, 4097):
        try:
            _walk_all(spec, size, size)
            return size
        except SpecError:
            if size == 4096:
                raise
    raise AssertionError("unreachable")


def _walk_all(spec: ResNetSpec, h: int, w: int) -> list[Layer]:
    return list(_walk(spec, h, w, 1))


@lru_cache(maxsize=256)
def smallest_bn_map(spec: ResNetSpec, height: int, width: int) -> tuple[int, int, str]:
    """(height, width, path) of the BatchNorm that sees the fewest pixels per example for this
    input size: in train mode it needs more than one value per channel from the whole batch."""
    maps = [(layer.out_shape[2] * layer.out_shape[3], i, layer)
            for i, layer in enumerate(_walk_all(spec, height, width)) if layer.kind == "bn"]
    _, _, layer = min(maps)
    return layer.out_shape[2], layer.out_shape[3], layer.path


def flops(spec: ResNetSpec, input_size: int | tuple[int, int] = 224, phase: str = "infer") -> int:
    """Floating-point operations per image: 2 per multiply-accumulate of the convolutions and
    dense layers (torchvision's "GFLOPS" column counts multiply-accumulates, half of this).
    phase="train" counts a training step as 3 forward passes: the forward pass, the gradient
    with respect to each layer's input and the one with respect to its weights (each costs as
    many multiply-accumulates as the forward pass)."""
    if phase not in ("infer", "train"):
        raise SpecError(f"phase: expected 'infer' or 'train', got {phase!r}")
    forward = 2 * sum(layer.macs for layer in layers(spec, input_size))
    return forward * (3 if phase == "train" else 1)
