"""The spec and its oracle, with no framework: d2l's published figures and clear spec errors."""
import pytest

from common.oracle import block_layers, conv_out, param_counts, part_table
from common.spec import ResNetSpec, SpecError, Stage, Stem, BatchNormSpec, get_spec

D2L_TABLE_224 = {  # d2l's printed shapes for a 1x1x224x224 input
    "stem": (1, 64, 56, 56), "stage1": (1, 64, 56, 56), "stage2": (1, 128, 28, 28),
    "stage3": (1, 256, 14, 14), "stage4": (1, 512, 7, 7), "head": (1, 10)}


def test_oracle_reproduces_d2l_shape_table():
    rows = part_table(get_spec("d2l_resnet18"), 224)
    assert {r.name: r.out_shape for r in rows} == D2L_TABLE_224


def test_oracle_counts_d2l_resnet18_parameters():
    counts = param_counts(get_spec("d2l_resnet18"))
    assert (counts.trainable, counts.non_trainable, counts.total) == (11_178_378, 7_808, 11_186_186)


def test_part_counts_add_up_to_total():
    spec = get_spec("d2l_resnet18")
    rows = part_table(spec, 96)
    assert sum(r.counts.trainable for r in rows) == param_counts(spec).trainable
    assert sum(r.counts.non_trainable for r in rows) == param_counts(spec).non_trainable


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
