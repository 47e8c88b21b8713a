"""Each framework's blocks and models against d2l's printed examples and the spec's oracle."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from common.core.checks import InputError
from common.frameworks import to_layout
from common.core.oracle import ParamCounts, block_layers, param_counts, part_table
from common.core.spec import ResNetSpec, Stage, Stem, get_spec
from tests.helpers import make_block, mx_array, part_shapes_nchw, run_block

D2L_COUNTS = (11_178_378, 7_808, 11_186_186)
D2L_TABLE_224 = {"stem": (1, 64, 56, 56), "stage1": (1, 64, 56, 56), "stage2": (1, 128, 28, 28),
                 "stage3": (1, 256, 14, 14), "stage4": (1, 512, 7, 7), "head": (1, 10)}


def counts(c: ParamCounts) -> tuple[int, int, int]:
    return c.trainable, c.non_trainable, c.total


def test_identity_block_keeps_d2l_shape(fw):
    x = np.random.default_rng(0).uniform(size=(4, 3, 6, 6)).astype(np.float32)
    assert run_block(fw, make_block(fw, 3, 3), x).shape == (4, 3, 6, 6)


def test_projecting_block_halves_resolution_as_in_d2l(fw):
    x = np.random.default_rng(0).uniform(size=(4, 3, 6, 6)).astype(np.float32)
    blk = make_block(fw, 3, 6, use_1x1conv=True, strides=2)
    assert run_block(fw, blk, x).shape == (4, 6, 3, 3)


def test_resnet18_shapes_match_d2l_table_and_oracle(fw):
    model = fw.resnet18()
    shapes = part_shapes_nchw(fw, model, np.zeros((1, 1, 224, 224), np.float32))
    assert shapes == D2L_TABLE_224
    assert shapes == {r.name: r.out_shape for r in part_table(get_spec("d2l_resnet18"), 224)}


def test_resnet18_parameter_counts_match_d2l_and_oracle_per_part(fw):
    model = fw.resnet18()
    assert counts(fw.param_counts(model)) == D2L_COUNTS
    oracle = {r.name: counts(r.counts) for r in part_table(get_spec("d2l_resnet18"))}
    assert {k: counts(v) for k, v in fw.part_param_counts(model).items()} == oracle


def test_resnet18_factory_takes_classes_and_channels(fw):
    model = fw.resnet18(num_classes=7, in_channels=3)
    shapes = part_shapes_nchw(fw, model, np.zeros((2, 3, 64, 64), np.float32))
    assert shapes["head"] == (2, 7)
    assert fw.param_counts(model) == param_counts(get_spec("d2l_resnet18", num_classes=7, in_channels=3))


def test_resnet18_is_the_d2l_preset_with_the_shared_initial_weights(fw):
    """resnet18() is d2l's network (names and shapes of the canonical layout, which a
    torchvision-style preset without conv biases would not have) holding the shared seeded
    initialisation, bit for bit; seed= and the overrides reach it."""
    from common.core.init import init_weights
    from common.core.weights import canonical_layout
    for kwargs, spec, seed in (({}, get_spec("d2l_resnet18"), 0),
                               ({"num_classes": 7, "in_channels": 3, "seed": 5},
                                get_spec("d2l_resnet18", num_classes=7, in_channels=3), 5)):
        got = fw.to_canonical(fw.resnet18(**kwargs))
        want = init_weights(spec, seed)
        assert {n: a.shape for n, a in got.items()} == canonical_layout(spec)
        assert all(np.array_equal(got[n], want[n]) for n in want), kwargs


# --- property tests: random small specs and single blocks -----------------------------------

small_specs = st.builds(
    lambda stem_c, k, stem_s, pool, stages, bias, in_c, classes: ResNetSpec(
        "random", tuple(Stage(c, n, stride=s, project=p or s == 2 or c != prev)
                        for (c, n, s, p), prev in zip(stages, [stem_c] + [x[0] for x in stages])),
        stem=Stem(stem_c, k, stem_s, pool), conv_bias=bias, in_channels=in_c,
        num_classes=classes),
    st.integers(1, 6), st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 2]), st.booleans(),
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 2), st.sampled_from([1, 2]),
                       st.booleans()), min_size=1, max_size=3),
    st.booleans(), st.integers(1, 3), st.integers(2, 5))

FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FAST
@given(spec=small_specs, size=st.integers(5, 24), batch=st.integers(1, 3))
def test_random_specs_match_oracle_shapes_and_counts(fw, spec, size, batch):
    model = fw.build(spec)
    x = np.random.default_rng(size).normal(size=(batch, spec.in_channels, size, size + 1))
    shapes = part_shapes_nchw(fw, model, x.astype(np.float32))
    assert shapes == {r.name: r.out_shape for r in part_table(spec, (size, size + 1), batch)}
    assert {k: counts(v) for k, v in fw.part_param_counts(model).items()} == \
        {r.name: counts(r.counts) for r in part_table(spec)}


@FAST
@given(c_in=st.integers(1, 5), c_out=st.integers(1, 6), strides=st.sampled_from([1, 2]),
       project=st.booleans(), size=st.integers(1, 11), bias=st.booleans())
def test_random_blocks_match_oracle(fw, c_in, c_out, strides, project, size, bias):
    project = project or strides == 2 or c_in != c_out
    blk = make_block(fw, c_in, c_out, project, strides, use_bias=bias)
    x = np.random.default_rng(size).normal(size=(2, c_in, size, size)).astype(np.float32)
    out = run_block(fw, blk, x)
    oracle = block_layers("b", x.shape, c_out, strides, project, bias)
    assert out.shape == oracle[-1].out_shape
    expected = sum((layer.counts for layer in oracle), ParamCounts(0, 0))
    assert fw.param_counts(blk) == expected


# --- bad input -------------------------------------------------------------------------------

def _feed(fw, model, x):
    """Call the model as its users do, on the framework's own tensor type."""
    name = fw.__name__
    if name == "resnet_torch":
        import torch
        return model(torch.from_numpy(x))
    if name == "resnet_mx":
        return model(mx_array(x))
    return model(x)


@pytest.mark.parametrize("hybridize", [False, True])
def test_wrong_channel_count_names_expected_and_given(fw, hybridize):
    model = fw.resnet18()
    if hybridize and hasattr(model, "hybridize"):
        model.hybridize()
    x = to_layout(np.zeros((2, 3, 32, 32), np.float32), fw.LAYOUT)
    with pytest.raises(InputError, match=r"expected 1 channel\(s\).*got 3"):
        _feed(fw, model, x)


def test_wrong_rank_names_expected_and_given(fw):
    with pytest.raises(InputError, match=r"expected a 4-d batch.*got 3-d shape \(1, 32, 32\)"):
        _feed(fw, fw.resnet18(), np.zeros((1, 32, 32), np.float32))


def test_integer_input_is_refused_with_its_dtype(fw):
    x = to_layout(np.zeros((1, 1, 32, 32), np.int32), fw.LAYOUT)
    with pytest.raises(InputError, match=r"expected a floating-point dtype.*got int32"):
        _feed(fw, fw.resnet18(), x)


def test_build_rejects_invalid_spec_values(fw):
    from common.core.spec import SpecError
    with pytest.raises(SpecError, match=r"num_classes: expected a positive integer, or 0 for "
                                        r"a headless network, got -1"):
        fw.build("d2l_resnet18", num_classes=-1)
    with pytest.raises(SpecError, match=r"init: expected one of"):
        fw.build("d2l_resnet18", init="xavier")
