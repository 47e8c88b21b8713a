"""The ResNet architecture as data.

A `ResNetSpec` says everything the three frameworks need to build the same network: the stem,
the stages, the block kind, the head, conv bias on or off, BatchNorm settings, input channels
and classes. A new variant is a new row in `PRESETS`, not new code in three packages.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

BLOCK_KINDS = ("basic",)


class SpecError(ValueError):
    """A spec value is out of range; the message names the field, what was expected and given."""


def _require(ok: bool, where: str, expected: str, given: Any) -> None:
    if not ok:
        raise SpecError(f"{where}: expected {expected}, got {given!r}")


def _positive_int(where: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             where, "a positive integer", value)


@dataclass(frozen=True)
class Stem:
    """First layers (d2l's b1): conv kernel_size/stride, BatchNorm, ReLU, optional 3x3/2 max-pool."""
    channels: int = 64
    kernel_size: int = 7
    stride: int = 2
    pool: bool = True  # 3x3 max-pool, stride 2, padding 1

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def validate(self) -> None:
        _positive_int("stem.channels", self.channels)
        _positive_int("stem.kernel_size", self.kernel_size)
        _require(self.kernel_size % 2 == 1, "stem.kernel_size", "an odd kernel size",
                 self.kernel_size)
        _require(self.stride in (1, 2), "stem.stride", "1 or 2", self.stride)
        _require(isinstance(self.pool, bool), "stem.pool", "True or False", self.pool)


@dataclass(frozen=True)
class Stage:
    """A stage (d2l's `resnet_block`): `blocks` residual blocks of `channels` channels.

    Only the first block may change the resolution (`stride`) or project the shortcut with a 1x1
    convolution (`project`, d2l's `use_1x1conv`); the others keep shape and use the identity.
    """
    channels: int
    blocks: int
    stride: int = 1
    project: bool = False


@dataclass(frozen=True)
class BatchNormSpec:
    """BatchNorm settings. `momentum` is PyTorch's: running = (1 - momentum) * running +
    momentum * batch. Keras and Gluon take `1 - momentum`."""
    eps: float = 1e-5
    momentum: float = 0.1

    def validate(self) -> None:
        _require(isinstance(self.eps, (int, float)) and self.eps > 0, "bn.eps",
                 "a positive number", self.eps)
        _require(isinstance(self.momentum, (int, float)) and 0 < self.momentum < 1,
                 "bn.momentum", "a number in (0, 1)", self.momentum)


@dataclass(frozen=True)
class ResNetSpec:
    name: str
    stages: tuple[Stage, ...]
    stem: Stem = field(default_factory=Stem)
    block: str = "basic"
    in_channels: int = 1
    num_classes: int = 10
    conv_bias: bool = True
    bn: BatchNormSpec = field(default_factory=BatchNormSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        self.validate()

    def validate(self) -> None:
        _positive_int("in_channels", self.in_channels)
        _positive_int("num_classes", self.num_classes)
        _require(self.block in BLOCK_KINDS, "block", f"one of {BLOCK_KINDS}", self.block)
        _require(isinstance(self.conv_bias, bool), "conv_bias", "True or False", self.conv_bias)
        self.stem.validate()
        self.bn.validate()
        _require(len(self.stages) > 0, "stages", "at least one stage", self.stages)
        channels = self.stem.channels
        for i, stage in enumerate(self.stages, start=1):
            where = f"stage{i}"
            _require(isinstance(stage, Stage), where, "a Stage", stage)
            _positive_int(f"{where}.channels", stage.channels)
            _positive_int(f"{where}.blocks", stage.blocks)
            _require(stage.stride in (1, 2), f"{where}.stride", "1 or 2", stage.stride)
            _require(isinstance(stage.project, bool), f"{where}.project", "True or False",
                     stage.project)
            if not stage.project:
                _require(stage.stride == 1 and stage.channels == channels, f"{where}.project",
                         f"True, since the identity shortcut cannot change {channels} channels "
                         f"to {stage.channels} or stride by {stage.stride}", stage.project)
            channels = stage.channels

    def part_names(self) -> list[str]:
        """Names of the top-level parts, in order: stem, stage1..stageN, head."""
        return ["stem", *(f"stage{i}" for i in range(1, len(self.stages) + 1)), "head"]

    def with_overrides(self, **overrides: Any) -> "ResNetSpec":
        """A copy with top-level fields replaced (for instance num_classes, in_channels)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        _require(not unknown, "overrides", f"fields of ResNetSpec "
                 f"({', '.join(self.__dataclass_fields__)})", sorted(unknown))
        return replace(self, **overrides)


def d2l_stages(channels: tuple[int, ...], blocks: tuple[int, ...]) -> tuple[Stage, ...]:
    """d2l's rule: the first stage keeps shape; every later stage halves the resolution and
    projects its first block's shortcut (`first_block=True` only for the first)."""
    return tuple(Stage(c, n, stride=1 if i == 0 else 2, project=i > 0)
                 for i, (c, n) in enumerate(zip(channels, blocks)))


PRESETS: dict[str, ResNetSpec] = {
    # Exactly d2l's ResNet-18: 1 input channel (Fashion-MNIST), 10 classes, conv biases on.
    "d2l_resnet18": ResNetSpec("d2l_resnet18", d2l_stages((64, 128, 256, 512), (2, 2, 2, 2))),
}


def get_spec(name_or_spec: str | ResNetSpec, **overrides: Any) -> ResNetSpec:
    """The spec for a preset name (or a spec itself), with top-level fields overridden."""
    if isinstance(name_or_spec, ResNetSpec):
        spec = name_or_spec
    else:
        _require(name_or_spec in PRESETS, "arch", f"one of {', '.join(sorted(PRESETS))}",
                 name_or_spec)
        spec = PRESETS[name_or_spec]
    return spec.with_overrides(**overrides) if overrides else spec
