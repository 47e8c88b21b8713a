"""The starting weights against the initialisation rule itself, not against common/core/init.py's code.

The rule (common/core/init.py's docstring, torchvision's ResNet conventions):
- convolutions: Kaiming normal, fan_out, ReLU gain: N(0, 2 / (out_channels * kh * kw));
- conv biases 0; BatchNorm gamma 1, beta 0, running mean 0, running variance 1;
- with zero_init_last_bn, the gamma of each residual branch's last BN is 0 (bn2 in basic
  blocks, bn3 in bottlenecks; stages only, never a shortcut BN, the stem's or the head's);
- dense head: PyTorch's nn.Linear, weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Expectations are computed here from each array's shape. The statistical checks pool a layer's
values over many seeds and allow Z standard errors of the estimate under the rule, so a correct
init passes with overwhelming probability (and the seeds are fixed), while the usual mistakes
(fan_in for fan_out, a missing gain of 2, uniform for normal, a wrong dense bound) miss by
tens to thousands of standard errors.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from common.frameworks import FRAMEWORKS, load
from common.core.init import init_weights
from common.core.spec import get_spec

Z = 6.0  # standard errors allowed: a false alarm per check has probability ~2e-9
TAIL = 0.04550026  # P(|N(0, 1)| > 2)

# (preset, seeds): small nets over many seeds, large ones over few; every conv layer gets
# at least 17,000 values. d2l_resnet18 has 1 input channel (stem fan_in 49, fan_out 3136);
# resnext26_32x4d has grouped 3x3 convs (fan_out counts all out channels, not out / groups).
SAMPLES = {"cifar_resnet20": 40, "d2l_resnet18": 3, "resnext26_32x4d": 1}


@lru_cache(maxsize=None)
def pooled(preset: str) -> dict[str, np.ndarray]:
    """Every array of the preset's init over SAMPLES[preset] seeds, stacked on a new first axis."""
    draws = [init_weights(get_spec(preset), seed) for seed in range(SAMPLES[preset])]
    return {name: np.stack([d[name] for d in draws]) for name in draws[0]}


def conv_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: a for n, a in weights.items() if n.endswith(".weight") and a.ndim == 5}


def kaiming_fan_out_std(shape: tuple[int, ...]) -> float:
    out_channels, _, kh, kw = shape
    return float(np.sqrt(2.0 / (out_channels * kh * kw)))


@pytest.mark.parametrize("preset", sorted(SAMPLES))
def test_conv_weights_are_kaiming_normal_fan_out_per_layer(preset):
    failures = []
    for name, stacked in conv_weights(pooled(preset)).items():
        sigma = kaiming_fan_out_std(stacked.shape[1:])
        x = stacked.astype(np.float64).ravel()
        n = x.size
        mean = x.mean()
        var_ratio = np.mean(x * x) / sigma**2           # E x^2 / sigma^2: SE sqrt(2/n) if normal
        tail = np.mean(np.abs(x) > 2 * sigma)           # 0 for a uniform of the same variance
        kurtosis = np.mean(x**4) / np.mean(x * x) ** 2  # 3 normal, 1.8 uniform; SE ~ sqrt(24/n)
        if abs(mean) > Z * sigma / np.sqrt(n):
            failures.append(f"{name}: mean {mean:.3g}, expected 0 +- {Z * sigma / np.sqrt(n):.3g}")
        if abs(var_ratio - 1) > Z * np.sqrt(2 / n):
            failures.append(f"{name}: std {np.sqrt(var_ratio) * sigma:.5g}, expected {sigma:.5g} "
                            f"(sqrt(2 / fan_out)); ratio of variances {var_ratio:.4f}")
        if abs(tail - TAIL) > Z * np.sqrt(TAIL * (1 - TAIL) / n):
            failures.append(f"{name}: {tail:.4f} of values beyond 2 sigma, expected {TAIL:.4f} "
                            f"(normal)")
        if abs(kurtosis - 3) > Z * np.sqrt(24 / n):
            failures.append(f"{name}: kurtosis {kurtosis:.3f}, expected 3 (normal)")
    assert not failures, "\n".join(failures)


def test_statistical_bounds_catch_the_usual_mistakes():
    """The bounds above are tight enough: each wrong rule, drawn for the smallest layer checked
    (the CIFAR stem, 16x3x3x3, over its 40 seeds), lies outside them."""
    rng = np.random.default_rng(0)
    shape = (40 * 16, 3, 3, 3)
    n = int(np.prod(shape))
    sigma = kaiming_fan_out_std((16, 3, 3, 3))
    fan_in_sigma = np.sqrt(2.0 / (3 * 3 * 3))
    wrong = {"fan_in": rng.normal(0, fan_in_sigma, n),
             "no gain 2": rng.normal(0, sigma / np.sqrt(2), n),
             "uniform": rng.uniform(-np.sqrt(3) * sigma, np.sqrt(3) * sigma, n)}
    for what, x in wrong.items():
        var_off = abs(np.mean(x * x) / sigma**2 - 1) > Z * np.sqrt(2 / n)
        tail_off = abs(np.mean(np.abs(x) > 2 * sigma) - TAIL) > Z * np.sqrt(TAIL * (1 - TAIL) / n)
        assert var_off or tail_off, what


@pytest.mark.parametrize("preset", sorted(SAMPLES))
def test_dense_head_is_uniform_within_one_over_sqrt_fan_in(preset):
    weights = pooled(preset)
    fan_in = weights["head.fc.weight"].shape[2]  # stacked (seeds, out, in)
    bound = 1.0 / np.sqrt(fan_in)
    for name in ("head.fc.weight", "head.fc.bias"):
        x = weights[name].astype(np.float64).ravel()
        n = x.size
        assert np.abs(x).max() <= bound * (1 + 1e-6), f"{name}: {np.abs(x).max()} > {bound}"
        near_edge = 21 / n  # n uniform draws all stay under (1 - e) bound: (1 - e)^n < e^-21
        if near_edge < 0.5:
            assert np.abs(x).max() >= bound * (1 - near_edge), \
                f"{name}: largest |value| {np.abs(x).max():.5g}, expected close to {bound:.5g}"
        assert abs(x.mean()) <= Z * bound / np.sqrt(3 * n), f"{name}: mean {x.mean():.3g}"
        var_ratio = np.mean(x * x) / (bound**2 / 3)  # SE of E x^2 for a uniform: sqrt(0.8 / n)
        assert abs(var_ratio - 1) <= Z * np.sqrt(0.8 / n), f"{name}: variance ratio {var_ratio:.4f}"
        inner = np.mean(np.abs(x) < bound / 2)  # 1/2 for a uniform
        assert abs(inner - 0.5) <= Z * np.sqrt(0.25 / n), f"{name}: {inner:.3f} within bound / 2"


def expected_constant(name: str, block: str, zero_init_last_bn: bool) -> float | None:
    """The rule's value for a constant array (None for the random ones)."""
    layer, param = name.rsplit(".", 1)
    if param == "bias" and not layer.startswith("head."):
        return 0.0  # conv bias
    if param in ("beta", "running_mean"):
        return 0.0
    if param == "running_var":
        return 1.0
    if param == "gamma":
        last_of_branch = "bn2" if block == "basic" else "bn3"
        branch_end = layer.startswith("stage") and layer.rsplit(".", 1)[1] == last_of_branch
        return 0.0 if zero_init_last_bn and branch_end else 1.0
    return None


# No preset sets zero_init_last_bn, so the flag is tested by overriding it: a basic net with a
# BatchNorm on its projection (resnet18: that BN is bn3, and must stay 1), a CIFAR net, d2l's
# net with conv biases, a bottleneck with a projection BN (bn4, stays 1), and v2 (preact).
CONSTANT_CASES = [("d2l_resnet18", {}), ("resnet50_v2", {}), ("cifar_resnet20", {}),
                  ("resnet18", {"zero_init_last_bn": True}),
                  ("cifar_resnet20", {"zero_init_last_bn": True}),
                  ("d2l_resnet18", {"zero_init_last_bn": True}),
                  ("resnet50", {"zero_init_last_bn": True})]


def test_no_preset_sets_zero_init_last_bn():
    """If one ever does, add it to CONSTANT_CASES as it is."""
    from common.core.spec import PRESETS
    assert not [n for n, s in PRESETS.items() if s.zero_init_last_bn]


@pytest.mark.parametrize("preset,overrides", CONSTANT_CASES,
                         ids=[f"{p}{'-zero_init' if o else ''}" for p, o in CONSTANT_CASES])
def test_biases_and_batchnorm_follow_the_rule(preset, overrides):
    spec = get_spec(preset, **overrides)
    weights = init_weights(spec, seed=11)
    wrong, zero_gammas, conv_biases = [], 0, 0
    for name, array in weights.items():
        assert array.dtype == np.float32, f"{name}: {array.dtype}"
        value = expected_constant(name, spec.block, spec.zero_init_last_bn)
        if value is None:
            continue
        if not np.all(array == value):
            wrong.append(f"{name}: expected all {value}, "
                         f"got values in [{array.min()}, {array.max()}]")
        zero_gammas += name.endswith(".gamma") and value == 0.0
        conv_biases += name.endswith(".bias") and not name.startswith("head.")
    assert not wrong, "\n".join(wrong)
    blocks = sum(stage.blocks for stage in spec.stages)
    assert zero_gammas == (blocks if spec.zero_init_last_bn else 0)
    if spec.conv_bias:  # so that the zero-bias check above checked something
        assert conv_biases > 0


def test_zero_init_leaves_shortcut_stem_and_head_batchnorm_at_one():
    w = init_weights(get_spec("resnet18", zero_init_last_bn=True), seed=0)
    assert np.all(w["stage2.0.bn3.gamma"] == 1)  # the projection's BN in a basic block
    assert np.all(w["stage2.0.bn2.gamma"] == 0) and np.all(w["stage1.1.bn2.gamma"] == 0)
    assert np.all(w["stem.bn.gamma"] == 1) and np.all(w["stage2.0.bn1.gamma"] == 1)
    w = init_weights(get_spec("resnet50", zero_init_last_bn=True), seed=0)
    assert np.all(w["stage1.0.bn4.gamma"] == 1) and np.all(w["stage1.0.bn2.gamma"] == 1)
    assert np.all(w["stage4.2.bn3.gamma"] == 0)


def test_same_seed_same_weights_other_seed_other_weights():
    spec = get_spec("cifar_resnet20")
    a, b, c = init_weights(spec, 5), init_weights(spec, 5), init_weights(spec, 6)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["stem.conv.weight"], c["stem.conv.weight"])


# --- every framework loads exactly these weights ----------------------------------------------

MODULES = {fw: load(fw) for fw in FRAMEWORKS}
BUILD_CASES = [("cifar_resnet20", {}, 0), ("d2l_resnet18", {}, 3),
               ("resnext26_32x4d", {"zero_init_last_bn": True}, 7), ("resnet50_v2", {}, 1)]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("preset,overrides,seed", BUILD_CASES,
                         ids=[f"{p}-seed{s}" for p, _, s in BUILD_CASES])
def test_common_init_in_every_framework_is_init_weights_bit_for_bit(fw, preset, overrides, seed):
    module = MODULES[fw]
    spec = get_spec(preset, **overrides)
    got = module.to_canonical(module.build(spec, init="common", seed=seed))
    want = init_weights(spec, seed)
    assert list(got) == list(want)
    differ = [n for n in want if got[n].shape != want[n].shape or got[n].dtype != np.float32
              or not np.array_equal(bits(got[n]), bits(want[n]))]
    assert not differ, f"{fw}: {len(differ)} arrays differ from init_weights, e.g. {differ[:5]}"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_framework_init_is_the_frameworks_own_not_the_rule(fw):
    """init="framework" keeps PyTorch's Kaiming uniform (a=sqrt 5), Keras's Glorot uniform,
    Gluon's Xavier: not init_weights for any seed tried, and for some conv layer a standard
    deviation far from the rule's sqrt(2 / fan_out)."""
    module = MODULES[fw]
    spec = get_spec("d2l_resnet18")
    got = module.to_canonical(module.build(spec, init="framework", seed=0))
    for seed in (0, 1):
        want = init_weights(spec, seed)
        assert any(not np.array_equal(got[n], want[n]) for n in conv_weights_2d(want))
    ratios = {n: float(np.std(a) / kaiming_fan_out_std(a.shape))
              for n, a in conv_weights_2d(got).items() if a.size >= 10_000}
    assert any(not 0.8 < r < 1.25 for r in ratios.values()), ratios


def conv_weights_2d(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: a for n, a in weights.items() if n.endswith(".weight") and a.ndim == 4}


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_framework_init_follows_the_seed(fw):
    """init="framework" draws the framework's own initialiser from `seed`: the same seed gives
    the same weights bit for bit (also after other draws from the framework's and Python's
    generators in between), another seed other conv and dense weights."""
    import random
    module = MODULES[fw]
    spec = get_spec("cifar_resnet20")
    first = module.to_canonical(module.build(spec, init="framework", seed=5))
    random.random()
    module.build(spec, init="framework", seed=9)  # moves whatever generator it uses
    again = module.to_canonical(module.build(spec, init="framework", seed=5))
    other = module.to_canonical(module.build(spec, init="framework", seed=6))
    drawn = [n for n in first if n.endswith(".weight") and first[n].ndim in (2, 4)]
    assert all(np.array_equal(bits(first[n]), bits(again[n])) for n in first), fw
    assert all(not np.array_equal(first[n], other[n]) for n in drawn), fw


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_train_with_framework_init_starts_from_the_seeds_weights(fw, tmp_path):
    """`--init framework --seed S`: the training loop starts from build(init="framework",
    seed=S), so two runs with the same seed start alike and runs with other seeds do not."""
    from types import SimpleNamespace
    from common.commands.train import initial_weights, parser
    module = MODULES[fw]
    spec = get_spec("cifar_resnet20")
    starts = {}
    for seed in ("3", "4"):
        args = parser("x").parse_args(["--seed", seed, "--init", "framework"])
        run = SimpleNamespace(args=args, spec=spec, package=module, engine=None)
        starts[seed] = initial_weights(run)  # the loop's start of a fresh run
    for seed, got in starts.items():
        want = module.to_canonical(module.build(spec, init="framework", seed=int(seed)))
        assert all(np.array_equal(bits(got[n]), bits(want[n])) for n in want), (fw, seed)
    assert not np.array_equal(starts["3"]["stem.conv.weight"], starts["4"]["stem.conv.weight"])
