"""The ResNet architecture as data.

A `ResNetSpec` says everything the four frameworks need to build the same network: the stem,
the stages, the block kind, the head, conv bias on or off, BatchNorm settings, input channels
and classes. A new variant is a new line in `common/core/presets.py`, not new code in three
packages.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from common.core.errors import Error

BLOCK_KINDS = ("basic", "bottleneck")
SHORTCUTS = ("conv", "pad")
POOLINGS = ("avg", "max", None)  # the head's global pool (None: headless, the map itself)
BIAS_CONVS = ("stem", "conv1", "conv2", "conv3", "conv4")


class SpecError(Error):
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
    norm: bool = True  # BatchNorm and ReLU after the conv; Keras's ResNetV2 has neither
    pool_zeros: bool = False  # the pool's padding is zeros (Keras's ZeroPadding2D before a
    #                           valid max-pool), not ignored: it shows where the map is < 0

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def validate(self) -> None:
        """Raise SpecError naming the first bad field."""
        _positive_int("stem.channels", self.channels)
        _positive_int("stem.kernel_size", self.kernel_size)
        _require(self.kernel_size % 2 == 1, "stem.kernel_size", "an odd kernel size",
                 self.kernel_size)
        _require(self.stride in (1, 2), "stem.stride", "1 or 2", self.stride)
        _require(isinstance(self.pool, bool), "stem.pool", "True or False", self.pool)
        _require(isinstance(self.norm, bool), "stem.norm", "True or False", self.norm)
        _require(isinstance(self.pool_zeros, bool), "stem.pool_zeros", "True or False",
                 self.pool_zeros)


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
    width: int | None = None  # bottleneck inner width; None: torchvision's rule (see mid_channels)

    def validate(self, where: str = "stage") -> None:
        """`where`: the stage's name in messages (stage1, stage2, ...). Its width is checked by
        the spec: what it may be depends on the block kind."""
        _positive_int(f"{where}.channels", self.channels)
        _positive_int(f"{where}.blocks", self.blocks)
        _require(self.stride in (1, 2), f"{where}.stride", "1 or 2", self.stride)
        _require(isinstance(self.project, bool), f"{where}.project", "True or False",
                 self.project)


@dataclass(frozen=True)
class BatchNormSpec:
    """BatchNorm settings. `momentum` is PyTorch's: running = (1 - momentum) * running +
    momentum * batch. Keras and Gluon take `1 - momentum`."""
    eps: float = 1e-5
    momentum: float = 0.1

    def validate(self) -> None:
        """Raise SpecError naming the first bad field."""
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
    num_classes: int = 10           # 0: headless (no dense layer), pooled features out
    pooling: str | None = "avg"     # the head's global pool: "avg", "max", or None (headless
    #                                 only: the last feature map itself, Keras's pooling=None)
    conv_bias: bool | tuple[str, ...] = True  # every convolution, none, or the named ones:
    #                                 "stem" and a block's "conv1".."conv4" (has_bias)
    input_bn: bool = False          # a BatchNorm of the raw input without gamma and beta
    #                                 (Gluon's v2 model zoo): stem.input_bn, statistics only
    bn: BatchNormSpec = field(default_factory=BatchNormSpec)
    preact: bool = False            # v2: BN-ReLU-conv ordering, final BN-ReLU in the head
    groups: int = 1                 # ResNeXt cardinality (bottleneck 3x3 conv)
    base_width: int = 64            # ResNeXt width per group, torchvision's convention
    stride_in_1x1: bool = False     # bottleneck: stride on the first 1x1 (paper), not the 3x3
    shortcut_bn: bool = False       # BatchNorm after the 1x1 projection (torchvision); d2l: none
    shortcut: str = "conv"          # how a block that changes shape projects: "conv" (1x1,
    #                                 option B) or "pad" (subsample, zero-pad channels: option A)
    zero_init_last_bn: bool = False  # init the last BN gamma of each residual branch to 0
    stride_at: str = "first"        # which block of a stage strides: "first", or "last" (Keras's
    #                                 ResNetV2: its shortcut is a 1x1 max-pool, a subsampling)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if isinstance(self.conv_bias, (list, set, frozenset)):
            object.__setattr__(self, "conv_bias", tuple(sorted(self.conv_bias)))
        self.validate()

    def has_bias(self, conv: str) -> bool:
        """Whether a convolution has a bias: "stem", or a block's "conv1".."conv4" (the
        projection is conv3 in a basic block, conv4 in a bottleneck)."""
        return self.conv_bias if isinstance(self.conv_bias, bool) else conv in self.conv_bias

    def validate(self) -> None:
        """Raise SpecError on the first bad value: each part checks its own fields (Stem,
        BatchNormSpec, Stage); the spec checks its fields and the rules across them."""
        self._check_fields()
        self._check_block_options()
        self.stem.validate()
        self.bn.validate()
        self._check_stages()

    def _check_fields(self) -> None:
        _positive_int("in_channels", self.in_channels)
        _require(isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool)
                 and self.num_classes >= 0, "num_classes",
                 "a positive integer, or 0 for a headless network", self.num_classes)
        _require(self.pooling in POOLINGS, "pooling", f"one of {POOLINGS}", self.pooling)
        _require(self.pooling is not None or self.num_classes == 0, "pooling",
                 "'avg' or 'max' with a classifier (None only with num_classes=0)", self.pooling)
        _require(self.block in BLOCK_KINDS, "block", f"one of {BLOCK_KINDS}", self.block)
        _require(isinstance(self.conv_bias, bool) or (
            isinstance(self.conv_bias, tuple) and set(self.conv_bias) <= set(BIAS_CONVS)),
            "conv_bias", f"True, False or a tuple of names from {BIAS_CONVS}", self.conv_bias)
        for flag in ("input_bn", "preact", "stride_in_1x1", "shortcut_bn", "zero_init_last_bn"):
            _require(isinstance(getattr(self, flag), bool), flag, "True or False",
                     getattr(self, flag))
        _require(self.shortcut in SHORTCUTS, "shortcut", f"one of {SHORTCUTS}", self.shortcut)
        _require(self.stride_at in ("first", "last"), "stride_at", "'first' or 'last'",
                 self.stride_at)

    def _check_block_options(self) -> None:
        """The options that only some kinds of block have."""
        if self.stride_at == "last":
            _require(self.preact and self.block == "bottleneck", "stride_at",
                     "'first' unless the blocks are pre-activation bottlenecks (Keras's "
                     "ResNetV2)", self.stride_at)
        if self.shortcut == "pad":
            _require(self.block == "basic" and not self.preact and not self.shortcut_bn,
                     "shortcut", "'conv' unless the blocks are basic v1 without shortcut_bn "
                     "(the paper's CIFAR nets)", self.shortcut)
        _positive_int("groups", self.groups)
        _positive_int("base_width", self.base_width)
        if self.block == "basic":
            _require(self.groups == 1 and self.base_width == 64, "groups",
                     "1 (and base_width 64) for basic blocks, as torchvision",
                     (self.groups, self.base_width))
            _require(not self.stride_in_1x1, "stride_in_1x1", "False for basic blocks",
                     self.stride_in_1x1)
        if self.preact:
            _require(not self.shortcut_bn, "shortcut_bn",
                     "False with preact (the v2 projection sees pre-activated input)",
                     self.shortcut_bn)
            _require(not self.zero_init_last_bn, "zero_init_last_bn",
                     "False with preact (a v2 branch ends with a convolution)",
                     self.zero_init_last_bn)

    def _check_stages(self) -> None:
        """Each stage checks its own fields; its width and its shortcut depend on the block
        kind and on the channels of the stage before it."""
        _require(len(self.stages) > 0, "stages", "at least one stage", self.stages)
        channels = self.stem.channels
        for i, stage in enumerate(self.stages, start=1):
            where = f"stage{i}"
            _require(isinstance(stage, Stage), where, "a Stage", stage)
            stage.validate(where)
            self._check_width(stage, where)
            self._check_shortcut(stage, where, channels)
            channels = stage.channels

    def _check_width(self, stage: Stage, where: str) -> None:
        if self.block == "basic":
            _require(stage.width is None, f"{where}.width", "None for basic blocks", stage.width)
            return
        _require(stage.channels % 4 == 0, f"{where}.channels",
                 "a multiple of 4 (the bottleneck expansion)", stage.channels)
        if stage.width is not None:
            _positive_int(f"{where}.width", stage.width)
        mid = self.mid_channels(stage)
        _require(mid % self.groups == 0, f"{where}.width", f"a multiple of groups={self.groups}",
                 mid)

    def _check_shortcut(self, stage: Stage, where: str, channels: int) -> None:
        """`channels`: those of the stage's input."""
        if stage.project and self.shortcut == "pad":
            _require(stage.channels >= channels and (stage.channels - channels) % 2 == 0,
                     f"{where}.channels", f"{channels} plus an even number, for a zero-padded "
                     f"shortcut", stage.channels)
        if not stage.project:
            _require((stage.stride == 1 or self.stride_at == "last")
                     and stage.channels == channels, f"{where}.project",
                     f"True, since the identity shortcut cannot change {channels} channels "
                     f"to {stage.channels} or stride by {stage.stride}", stage.project)

    def mid_channels(self, stage: Stage) -> int:
        """Inner width of a bottleneck: given, or torchvision's
        int(channels / 4 * base_width / 64) * groups."""
        if stage.width is not None:
            return stage.width
        return int(stage.channels // 4 * (self.base_width / 64)) * self.groups

    def block_kwargs(self, stage: Stage, momentum_of_old: bool = False) -> dict[str, Any]:
        """The keyword arguments every block of `stage` gets, in the blocks.py signatures.
        momentum_of_old=True gives Keras's and Gluon's BatchNorm momentum (1 - PyTorch's)."""
        momentum = 1 - self.bn.momentum if momentum_of_old else self.bn.momentum
        kw: dict[str, Any] = dict(use_bias=self.conv_bias, bn_eps=self.bn.eps, bn_momentum=momentum)
        if self.block == "bottleneck":
            kw |= dict(width=self.mid_channels(stage), groups=self.groups,
                       stride_in_1x1=self.stride_in_1x1)
        if not self.preact:
            kw["shortcut_bn"] = self.shortcut_bn
        if self.block == "basic" and not self.preact:
            kw["pad_shortcut"] = self.shortcut == "pad"
        return kw

    def block_stride(self, stage: Stage, j: int) -> int:
        """The stride of block j of `stage`: on its first block, or its last (stride_at)."""
        at = 0 if self.stride_at == "first" else stage.blocks - 1
        return stage.stride if j == at else 1

    def part_names(self) -> list[str]:
        """Names of the top-level parts, in order: stem, stage1..stageN, head."""
        return ["stem", *(f"stage{i}" for i in range(1, len(self.stages) + 1)), "head"]

    def with_overrides(self, **overrides: Any) -> "ResNetSpec":
        """A copy with top-level fields replaced (for instance num_classes, in_channels)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        _require(not unknown, "overrides", f"fields of ResNetSpec "
                 f"({', '.join(self.__dataclass_fields__)})", sorted(unknown))
        return replace(self, **overrides)


# Every preset by name: common.core.presets fills it (the package imports that module first).
PRESETS: dict[str, ResNetSpec] = {}


def get_spec(name_or_spec: str | ResNetSpec, **overrides: Any) -> ResNetSpec:
    """The spec for a preset name (or a spec itself), with top-level fields overridden."""
    if isinstance(name_or_spec, ResNetSpec):
        spec = name_or_spec
    else:
        _require(name_or_spec in PRESETS, "arch", f"one of {', '.join(sorted(PRESETS))}",
                 name_or_spec)
        spec = PRESETS[name_or_spec]
    return spec.with_overrides(**overrides) if overrides else spec
