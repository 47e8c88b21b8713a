"""Shapes and parameter counts computed from a spec alone, with no framework.

The frameworks are tested against this oracle: the output shape after every part (stem, each
stage, head) for any input size, and parameter counts per layer, per part and in all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

from common.spec import ResNetSpec, SpecError

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
    kind: str  # conv | bn | relu | maxpool | avgpool | dense
    params: dict[str, tuple[int, ...]]
    out_shape: tuple[int, ...]

    @property
    def part(self) -> str:
        return self.path.split(".", 1)[0]

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
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(d, int) and d > 0 for d in hw):
        raise SpecError(f"input_size: expected a positive int or (height, width), "
                        f"got {input_size!r}")
    return hw  # type: ignore[return-value]


def layers(spec: ResNetSpec, input_size: int | tuple[int, int] = 224,
           batch: int = 1) -> list[Layer]:
    """Every layer of `spec` in forward order, with output shapes for `input_size`."""
    return list(_walk(spec, *_input_hw(input_size), batch))


def _walk(spec: ResNetSpec, h: int, w: int, n: int) -> Iterator[Layer]:
    c = spec.in_channels
    shape = (n, c, h, w)

    def conv(path: str, c_in: int, c_out: int, k: int, s: int, p: int) -> Layer:
        nonlocal shape
        oh, ow = conv_out(shape[2], k, s, p), conv_out(shape[3], k, s, p)
        if oh < 1 or ow < 1:
            raise SpecError(f"input_size: expected at least enough pixels to reach {path}, "
                            f"got an input of {h}x{w} that shrinks to {oh}x{ow} there")
        params = {"weight": (c_out, c_in, k, k)}
        if spec.conv_bias:
            params["bias"] = (c_out,)
        shape = (n, c_out, oh, ow)
        return Layer(path, "conv", params, shape)

    def bn(path: str, ch: int) -> Layer:
        names = ("gamma", "beta", *BN_STATS)
        return Layer(path, "bn", {name: (ch,) for name in names}, shape)

    st = spec.stem
    yield conv("stem.conv", c, st.channels, st.kernel_size, st.stride, st.padding)
    yield bn("stem.bn", st.channels)
    yield Layer("stem.relu", "relu", {}, shape)
    if st.pool:
        shape = (n, st.channels, conv_out(shape[2], 3, 2, 1), conv_out(shape[3], 3, 2, 1))
        yield Layer("stem.pool", "maxpool", {}, shape)
    c = st.channels
    for i, stage in enumerate(spec.stages, start=1):
        for j in range(stage.blocks):
            first = j == 0
            stride = stage.stride if first else 1
            block_in, path = shape, f"stage{i}.{j}"
            yield conv(f"{path}.conv1", c, stage.channels, 3, stride, 1)
            yield bn(f"{path}.bn1", stage.channels)
            yield conv(f"{path}.conv2", stage.channels, stage.channels, 3, 1, 1)
            yield bn(f"{path}.bn2", stage.channels)
            if first and stage.project:
                out = shape
                shape = block_in
                yield conv(f"{path}.conv3", c, stage.channels, 1, stride, 0)
                assert shape == out, (shape, out)
            c = stage.channels
    shape = (n, c)
    yield Layer("head.pool", "avgpool", {}, shape)
    yield Layer("head.fc", "dense", {"weight": (spec.num_classes, c), "bias": (spec.num_classes,)},
                (n, spec.num_classes))


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


def layer_table(spec: ResNetSpec, input_size: int | tuple[int, int] = 224,
                batch: int = 1) -> list[Layer]:
    """Alias of `layers` for reports: one row per layer."""
    return layers(spec, input_size, batch)


def param_counts(spec: ResNetSpec) -> ParamCounts:
    """Parameter counts of the whole network (they do not depend on the input size)."""
    total = ParamCounts(0, 0)
    # Counts do not depend on the input; take one large enough to survive every stride.
    for layer in layers(spec, 2 ** (len(spec.stages) + 4)):
        total = total + layer.counts
    return total
