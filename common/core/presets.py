"""The presets: every named network, one small function per library's family.

Each family lists its presets by name, one line each, so that a name found in a command line or
a file is found here by grepping for it. A new variant is one new line (a new family, one new
function added to `FAMILIES`). The table fills `common.core.spec.PRESETS`, which `get_spec`
reads; `common.core` imports this module first, so the table is full wherever a spec is used.
"""
from __future__ import annotations

from dataclasses import replace

from common.core.spec import (PRESETS, BatchNormSpec, ResNetSpec, SpecError, Stage, Stem,
                              get_spec)

__all__ = ["PRESETS", "get_spec", "FAMILIES", "standard_stages", "DEPTHS", "CONVENTION_OF",
           "convention_of"]

BASIC = (64, 128, 256, 512)
WIDE = (256, 512, 1024, 2048)  # bottleneck outputs (expansion 4)
# The Gluon zoo's resnet_spec: depth -> block kind, blocks per stage.
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
          152: ("bottleneck", (3, 8, 36, 3))}

# torchvision's configuration: 3 input channels, 1000 classes, no conv bias, BN on projections.
IMAGENET = dict(in_channels=3, num_classes=1000, conv_bias=False, shortcut_bn=True)
# Keras's BatchNorm: eps 1.001e-5, momentum 0.99 (0.01 in PyTorch's convention).
KERAS_BN = BatchNormSpec(eps=1.001e-5, momentum=0.01)
# CIFAR ResNets of the ResNet paper (section 4.2): 3x3 stem, 16/32/64 channels, 6n+2 layers,
# parameter-free shortcuts (option A: subsample and zero-pad), as in the paper's counts.
CIFAR_STEM = Stem(channels=16, kernel_size=3, stride=1, pool=False)
# The ResNeXt tutorial's small CIFAR models: 3x3 stem, no pool, [2, 2, 2, 2] blocks.
TUTORIAL_STEM = Stem(channels=64, kernel_size=3, stride=1, pool=False)


def standard_stages(channels: tuple[int, ...], blocks: tuple[int, ...],
                    first_stride: int = 1) -> tuple[Stage, ...]:
    """Stages that halve the resolution after the first; a 1x1 projection exactly where the
    first block changes the channels or the resolution (torchvision's rule)."""
    out, prev = [], None
    for i, (c, n) in enumerate(zip(channels, blocks)):
        stride = first_stride if i == 0 else 2
        out.append(Stage(c, n, stride, project=stride != 1 or (prev is not None and prev != c)))
        prev = c
    return tuple(out)


def _stages(kind: str, blocks: tuple[int, ...]) -> tuple[Stage, ...]:
    stages = standard_stages(BASIC if kind == "basic" else WIDE, blocks)
    # The first bottleneck stage widens 64 -> 256 channels, so it projects at stride 1.
    return (replace(stages[0], project=kind == "bottleneck"),) + stages[1:]


def _resnet(name: str, depth: int, **options) -> ResNetSpec:
    """The ImageNet-shaped network of `depth` (DEPTHS) with `options` (ResNetSpec's fields)."""
    kind, blocks = DEPTHS[depth]
    return ResNetSpec(name, _stages(kind, blocks), block=kind, **options)


def torchvision() -> list[ResNetSpec]:
    """torchvision.models' ResNets (v1.5: the bottleneck strides its 3x3), ResNeXts and wide
    ResNets: the same bottleneck, wider inside (mid_channels)."""
    return [_resnet("resnet18", 18, **IMAGENET),
            _resnet("resnet34", 34, **IMAGENET),
            _resnet("resnet50", 50, **IMAGENET),
            _resnet("resnet101", 101, **IMAGENET),
            _resnet("resnet152", 152, **IMAGENET),
            _resnet("resnext50_32x4d", 50, groups=32, base_width=4, **IMAGENET),
            _resnet("resnext101_32x8d", 101, groups=32, base_width=8, **IMAGENET),
            _resnet("resnext101_64x4d", 101, groups=64, base_width=4, **IMAGENET),
            _resnet("wide_resnet50_2", 50, base_width=128, **IMAGENET),
            _resnet("wide_resnet101_2", 101, base_width=128, **IMAGENET)]


def preactivation() -> list[ResNetSpec]:
    """The pre-activation paper's ResNets (v2) in torchvision's configuration: BN-ReLU-conv
    blocks, projections without BatchNorm, a final BN-ReLU in the head."""
    v2 = IMAGENET | {"shortcut_bn": False, "preact": True}
    return [_resnet("resnet50_v2", 50, **v2),
            _resnet("resnet101_v2", 101, **v2),
            _resnet("resnet152_v2", 152, **v2)]


def d2l() -> list[ResNetSpec]:
    """d2l's configuration: 1 channel, 10 classes, conv biases, projections without BN; the
    bottleneck depths are the chapter's exercise 3."""
    return [_resnet("d2l_resnet18", 18),
            _resnet("d2l_resnet34", 34),
            _resnet("d2l_resnet50", 50),
            _resnet("d2l_resnet101", 101),
            _resnet("d2l_resnet152", 152)]


def keras_applications() -> list[ResNetSpec]:
    """keras.applications.ResNet50/101/152: every convolution has a bias (Keras's default), the
    stride sits on the first 1x1 (the paper's v1), Keras's BatchNorm settings.
    ResNet50V2/101V2/152V2: a stem conv with a bias and without BN or ReLU, its max-pool padded
    with zeros; pre-activation blocks whose LAST block strides (its shortcut a 1x1 max-pool)
    while the first projects at stride 1; biases on the stem, the last 1x1 and the projection;
    stage 4 does not stride."""
    v1 = IMAGENET | {"conv_bias": True, "stride_in_1x1": True, "bn": KERAS_BN}
    v2 = IMAGENET | {"conv_bias": ("stem", "conv3", "conv4"), "shortcut_bn": False,
                     "stem": Stem(norm=False, pool_zeros=True), "preact": True,
                     "stride_at": "last", "bn": KERAS_BN}

    def v2_stages(depth: int) -> tuple[Stage, ...]:
        blocks = DEPTHS[depth][1]
        return tuple(Stage(c, n, s, project=True) for c, n, s in zip(WIDE, blocks, (2, 2, 2, 1)))
    return [_resnet("keras_resnet50", 50, **v1),
            _resnet("keras_resnet101", 101, **v1),
            _resnet("keras_resnet152", 152, **v1),
            ResNetSpec("keras_resnet50_v2", v2_stages(50), block="bottleneck", **v2),
            ResNetSpec("keras_resnet101_v2", v2_stages(101), block="bottleneck", **v2),
            ResNetSpec("keras_resnet152_v2", v2_stages(152), block="bottleneck", **v2)]


def gluon_model_zoo() -> list[ResNetSpec]:
    """Gluon's model zoo. resnet*_v1: torchvision's network, except that the bottleneck strides
    its first 1x1 and gives the two 1x1 convolutions a bias (Gluon's Conv2D default).
    resnet*_v2: pre-activation blocks after a BatchNorm of the raw input (no gamma, beta)."""
    v1_bottleneck = IMAGENET | {"conv_bias": ("conv1", "conv3"), "stride_in_1x1": True}
    v2 = IMAGENET | {"shortcut_bn": False, "preact": True, "input_bn": True}
    return [_resnet("gluon_resnet18_v1", 18, **IMAGENET),
            _resnet("gluon_resnet34_v1", 34, **IMAGENET),
            _resnet("gluon_resnet50_v1", 50, **v1_bottleneck),
            _resnet("gluon_resnet101_v1", 101, **v1_bottleneck),
            _resnet("gluon_resnet152_v1", 152, **v1_bottleneck),
            _resnet("gluon_resnet18_v2", 18, **v2),
            _resnet("gluon_resnet34_v2", 34, **v2),
            _resnet("gluon_resnet50_v2", 50, **v2),
            _resnet("gluon_resnet101_v2", 101, **v2),
            _resnet("gluon_resnet152_v2", 152, **v2)]


def cifar() -> list[ResNetSpec]:
    """The ResNet paper's CIFAR nets (section 4.2): 6n+2 layers, n blocks per stage."""
    options = IMAGENET | {"num_classes": 10, "shortcut_bn": False, "stem": CIFAR_STEM,
                          "shortcut": "pad"}
    return [ResNetSpec(name, standard_stages((16, 32, 64), (n, n, n)), **options)
            for name, n in (("cifar_resnet20", 3), ("cifar_resnet32", 5), ("cifar_resnet44", 7),
                            ("cifar_resnet56", 9), ("cifar_resnet110", 18))]


def resnext26() -> list[ResNetSpec]:
    """The ResNeXt tutorial's small CIFAR models: torchvision's bottleneck, [2, 2, 2, 2] blocks,
    `groups` x `base_width` inside."""
    options = IMAGENET | {"num_classes": 10, "stem": TUTORIAL_STEM, "block": "bottleneck"}
    stages = _stages("bottleneck", (2, 2, 2, 2))
    return [ResNetSpec(name, stages, groups=groups, base_width=width, **options)
            for name, groups, width in (("resnext26_2x64d", 2, 64), ("resnext26_4x32d", 4, 32),
                                        ("resnext26_8x16d", 8, 16), ("resnext26_16x8d", 16, 8),
                                        ("resnext26_32x4d", 32, 4))]


FAMILIES = (torchvision, preactivation, d2l, keras_applications, gluon_model_zoo, cifar,
            resnext26)
# Each family's input convention (common.core.conventions): what its library fed the network.
FAMILY_CONVENTION = {torchvision: "torchvision", preactivation: "torchvision", d2l: "d2l",
                     keras_applications: "caffe", gluon_model_zoo: "torchvision",
                     cifar: "cifar", resnext26: "cifar"}
# Preset name -> its convention's name; Keras's V2 presets take "tf" ([-1, 1]).
CONVENTION_OF: dict[str, str] = {}


def convention_of(spec: ResNetSpec) -> str:
    """The name of the input convention of a preset (by its name), or of another spec by its
    input channels: d2l's grayscale for 1, the project's RGB [0, 1] for 3."""
    name = CONVENTION_OF.get(spec.name)
    if name is None or (name == "d2l") != (spec.in_channels == 1):  # --in-channels changed it
        name = "d2l" if spec.in_channels == 1 else "cifar"
    return name


def _register() -> None:
    for family in FAMILIES:
        for spec in family():
            if spec.name in PRESETS:
                raise SpecError(f"preset {spec.name!r} ({family.__name__}): expected a new "
                                f"name, got one that PRESETS holds already")
            PRESETS[spec.name] = spec
            preact_keras = family is keras_applications and spec.preact
            CONVENTION_OF[spec.name] = "tf" if preact_keras else FAMILY_CONVENTION[family]


_register()
