"""The spec and its oracle, with no framework: d2l's published figures and clear spec errors."""
import pytest

from common.core.oracle import block_layers, conv_out, param_counts, part_table
from common.core.spec import ResNetSpec, SpecError, Stage, Stem, BatchNormSpec, get_spec

D2L_TABLE_224 = {  # d2l's printed shapes for a 1x1x224x224 input
    "stem": (1, 64, 56, 56), "stage1": (1, 64, 56, 56), "stage2": (1, 128, 28, 28),
    "stage3": (1, 256, 14, 14), "stage4": (1, 512, 7, 7), "head": (1, 10)}


def test_oracle_reproduces_d2l_shape_table():
    rows = part_table(get_spec("d2l_resnet18"), 224)
    assert {r.name: r.out_shape for r in rows} == D2L_TABLE_224


def test_oracle_counts_d2l_resnet18_parameters():
    counts = param_counts(get_spec("d2l_resnet18"))
    assert (counts.trainable, counts.non_trainable, counts.total) == (11_178_378, 7_808, 11_186_186)


def _conv(c_in, c_out, k):  # d2l's convolutions carry a bias
    return c_out * c_in * k * k + c_out


def _basic(c_in, c_out, project):  # two 3x3 convs, two BNs (gamma, beta), a 1x1 projection
    return (_conv(c_in, c_out, 3) + _conv(c_out, c_out, 3) + 4 * c_out
            + (_conv(c_in, c_out, 1) if project else 0))


# d2l's ResNet-18 (1 channel, 10 classes) by hand, part by part: (trainable, BN statistics).
D2L_PARTS = {"stem": (_conv(1, 64, 7) + 2 * 64, 2 * 64),
             "stage1": (2 * _basic(64, 64, False), 2 * 2 * 2 * 64),
             "stage2": (_basic(64, 128, True) + _basic(128, 128, False), 2 * 2 * 2 * 128),
             "stage3": (_basic(128, 256, True) + _basic(256, 256, False), 2 * 2 * 2 * 256),
             "stage4": (_basic(256, 512, True) + _basic(512, 512, False), 2 * 2 * 2 * 512),
             "head": (512 * 10 + 10, 0)}


def test_part_counts_equal_a_count_by_hand():
    """Each part's count from the oracle equals the one written out above from d2l's
    description, and the parts add up to the published total (11,178,378 + 7,808)."""
    spec = get_spec("d2l_resnet18")
    assert {r.name: (r.counts.trainable, r.counts.non_trainable)
            for r in part_table(spec, 96)} == D2L_PARTS
    assert tuple(map(sum, zip(*D2L_PARTS.values()))) == (11_178_378, 7_808)


@pytest.mark.parametrize("size,k,s,p,expected", [(224, 7, 2, 3, 112), (95, 7, 2, 3, 48),
                                                 (48, 3, 2, 1, 24), (3, 3, 2, 1, 2), (5, 1, 2, 0, 3)])
def test_conv_out_is_floor_mode(size, k, s, p, expected):
    assert conv_out(size, k, s, p) == expected


def test_block_oracle_matches_d2l_examples():
    identity = block_layers("b", (4, 3, 6, 6), 3)
    assert identity[-1].out_shape == (4, 3, 6, 6)
    projected = block_layers("b", (4, 3, 6, 6), 6, stride=2, project=True)
    assert projected[-1].out_shape == (4, 6, 3, 3)


@pytest.mark.parametrize("make,field,given", [
    (lambda: ResNetSpec("x", (Stage(0, 1),)), "stage1.channels", "0"),
    (lambda: ResNetSpec("x", (Stage(64, 1, stride=3, project=True),)), "stage1.stride", "3"),
    (lambda: ResNetSpec("x", (Stage(64, -1),)), "stage1.blocks", "-1"),
    (lambda: ResNetSpec("x", (Stage(128, 1, stride=2),)), "stage1.project", "False"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), stem=Stem(channels=0)), "stem.channels", "0"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), stem=Stem(kernel_size=4)), "stem.kernel_size", "4"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), in_channels=0), "in_channels", "0"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), num_classes=2.5), "num_classes", "2.5"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), block="fancy"), "block", "'fancy'"),
    (lambda: ResNetSpec("x", (Stage(64, 1),), bn=BatchNormSpec(momentum=0.9 + 0.2)), "bn.momentum", "1.1"),
    (lambda: ResNetSpec("x", ()), "stages", "()"),
    (lambda: get_spec("resnet9000"), "arch", "'resnet9000'"),
    (lambda: get_spec("d2l_resnet18", num_klasses=3), "overrides", "num_klasses"),
])
def test_invalid_spec_values_name_field_expected_and_given(make, field, given):
    with pytest.raises(SpecError) as err:
        make()
    message = str(err.value)
    assert message.startswith(field) and "expected" in message and given in message



@pytest.mark.parametrize("size", [0, -3, (5,), (5, 0), 2.5])
def test_bad_input_size_is_rejected_by_the_oracle(size):
    with pytest.raises(SpecError, match="input_size: expected"):
        part_table(get_spec("d2l_resnet18"), size)


# --- the family (issue 5): published parameter counts ----------------------------------------

TORCHVISION = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
               "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904}
CIFAR_PAPER_MILLIONS = {"cifar_resnet20": 0.27, "cifar_resnet32": 0.46, "cifar_resnet44": 0.66,
                        "cifar_resnet56": 0.85, "cifar_resnet110": 1.7}


@pytest.mark.parametrize("name,published", TORCHVISION.items())
def test_oracle_matches_torchvision_documented_counts(name, published):
    # torchvision counts trainable parameters (its BN statistics are buffers)
    assert param_counts(get_spec(name)).trainable == published


@pytest.mark.parametrize("name,millions", CIFAR_PAPER_MILLIONS.items())
def test_oracle_matches_resnet_paper_cifar_table(name, millions):
    trainable = param_counts(get_spec(name)).trainable
    digits = 1 if millions >= 1 else 2
    assert round(trainable / 1e6, digits) == millions, trainable


def test_d2l_and_torchvision_presets_differ_only_in_their_stated_choices():
    d2l, tv = get_spec("d2l_resnet18"), get_spec("resnet18")
    assert d2l.stages == tv.stages and d2l.stem == tv.stem
    assert (d2l.in_channels, d2l.num_classes, d2l.conv_bias, d2l.shortcut_bn) == (1, 10, True, False)
    assert (tv.in_channels, tv.num_classes, tv.conv_bias, tv.shortcut_bn) == (3, 1000, False, True)


def test_every_preset_is_valid_and_its_shapes_shrink_to_the_head():
    from common.core.spec import PRESETS
    for name, spec in PRESETS.items():
        rows = part_table(spec, 32)
        assert rows[-1].out_shape == (1, spec.num_classes), name
        assert [r.name for r in rows] == spec.part_names()


@pytest.mark.parametrize("overrides,field,given", [
    (dict(groups=3, stages=(Stage(256, 1, 1, True, width=64),)), "stage1.width", "64"),
    (dict(groups=0), "groups", "0"),
    (dict(preact=True, shortcut_bn=True), "shortcut_bn", "True"),
    (dict(shortcut="pad"), "shortcut", "'pad'"),
    (dict(shortcut="zeros"), "shortcut", "'zeros'"),
])
def test_family_spec_errors_name_field_expected_and_given(overrides, field, given):
    with pytest.raises(SpecError) as err:
        get_spec("resnet50", **overrides)
    assert str(err.value).startswith(field) and given in str(err.value)


def test_grouped_block_with_indivisible_channels_is_refused():
    from common.core.oracle import BlockConfig
    with pytest.raises(SpecError, match=r"stage1.0.conv2.groups: expected a divisor of 30 input"):
        block_layers("stage1.0", (1, 64, 8, 8), 128, project=True, width=30,
                     config=BlockConfig(kind="bottleneck", groups=4))


def test_bottleneck_oracle_puts_stride_where_asked():
    from common.core.oracle import BlockConfig
    tv = block_layers("b", (1, 64, 8, 8), 256, 2, True, width=64, config=BlockConfig("bottleneck"))
    paper = block_layers("b", (1, 64, 8, 8), 256, 2, True, width=64,
                         config=BlockConfig("bottleneck", stride_in_1x1=True))
    assert tv[0].out_shape == (1, 64, 8, 8) and paper[0].out_shape == (1, 64, 4, 4)
    assert tv[-1].out_shape == paper[-1].out_shape == (1, 256, 4, 4)


# --- FLOPs on non-square inputs ------------------------------------------------------------------

def _resnet20_macs_by_hand(h, w):
    """cifar_resnet20 (3x3 stem, no pool; stages of 16, 32, 64 channels, strides 1, 2, 2;
    zero-padded shortcuts, so no 1x1 convolution) on an h x w image, written out by hand."""
    k = 3 * 3
    return (16 * 3 * k * h * w                                              # stem
            + 6 * 16 * 16 * k * h * w                                       # stage1
            + (32 * 16 * k + 5 * 32 * 32 * k) * (h // 2) * (w // 2)         # stage2
            + (64 * 32 * k + 5 * 64 * 64 * k) * (h // 4) * (w // 4)         # stage3
            + 64 * 10)                                                      # head


def _d2l_resnet18_macs_by_hand():
    """d2l's ResNet-18 on a 96 x 64 image: 7x7/2 stem to 48x32, 3x3/2 pool to 24x16, then
    24x16, 12x8, 6x4, 3x2 in the four stages (each later stage with a 1x1 projection)."""
    def stage(c_in, c, hw, project=True):
        return (c * c_in * 9 + 3 * c * c * 9 + (c * c_in if project else 0)) * hw
    return (64 * 1 * 49 * 48 * 32 + 4 * 64 * 64 * 9 * 24 * 16 + stage(64, 128, 12 * 8)
            + stage(128, 256, 6 * 4) + stage(256, 512, 3 * 2) + 512 * 10)


def test_flops_on_non_square_inputs_equal_a_count_by_hand():
    """Each convolution's weights times its output height times its output width: on a
    non-square image, a count that used one side twice would differ."""
    from common.core.oracle import flops
    r20 = get_spec("cifar_resnet20")
    for h, w in ((32, 16), (16, 32), (32, 32), (24, 8)):
        assert flops(r20, (h, w)) == 2 * _resnet20_macs_by_hand(h, w), (h, w)
    d2l = get_spec("d2l_resnet18")
    assert flops(d2l, (96, 64)) == 2 * _d2l_resnet18_macs_by_hand()
    assert flops(d2l, (64, 96)) == flops(d2l, (96, 64))  # square kernels: the sides commute
    assert flops(d2l, (96, 64), "train") == 3 * 2 * _d2l_resnet18_macs_by_hand()
