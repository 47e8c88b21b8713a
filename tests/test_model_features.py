"""Features on each framework's own model (its layout, its tensors): features(model, x, parts),
forward_features(model, x), a headless build(spec, num_classes=0, pooling=...) and
reset_classifier(model, n), in every framework of the registry. Outputs agree across the
frameworks (as NCHW) to 1e-5 of their scale, shapes and parameter counts are the oracle's, and
a headless canonical file round-trips."""
from __future__ import annotations

import numpy as np
import pytest

from common.core.init import init_weights
from common.core.oracle import param_counts, part_table
from common.core.spec import POOLINGS, ResNetSpec, SpecError, Stage, Stem, get_spec
from common.core.weights import WeightsError, load_weights, save_weights
from common.frameworks import FRAMEWORKS, to_layout
from tests.helpers import MODULES, fw_name, mx_array

SIZE = 16
# Tiny nets, one per head kind: v1 (basic, biases) and v2 (pre-activation: BN-ReLU in the head).
BASE = dict(stem=Stem(channels=8, kernel_size=3, stride=1, pool=False), in_channels=3,
            num_classes=5, stages=(Stage(8, 1), Stage(16, 1, stride=2, project=True)))
SPECS = {"v1": ResNetSpec("tiny_v1", **BASE), "v2": ResNetSpec("tiny_v2", preact=True, **BASE)}
X = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)


def native(module, x: np.ndarray):
    """An NCHW NumPy batch as the framework's own input, in its layout."""
    if fw_name(module) == "torch":
        import torch
        return torch.from_numpy(x)
    return mx_array(x) if fw_name(module) == "mx" else to_layout(x, module.LAYOUT)


def as_nchw(module, y) -> np.ndarray:
    """A framework's output as NCHW NumPy."""
    y = y.asnumpy() if hasattr(y, "asnumpy") else (
        y.detach().numpy() if hasattr(y, "detach") else np.asarray(y))
    return np.transpose(y, (0, 3, 1, 2)) if module.LAYOUT == "NHWC" and y.ndim == 4 else y


def run(module, spec: ResNetSpec, pooling) -> dict:
    """One framework's headless net for `spec`: its counts, every part, forward_features, and the
    net after reset_classifier to 7 classes and back to 0 (their counts, logits, head weights)."""
    model = module.build(spec, num_classes=0, pooling=pooling)
    parts = {k: as_nchw(module, v) for k, v in module.features(model, native(module, X)).items()}
    last = as_nchw(module, module.forward_features(model, native(module, X)))
    seven = module.reset_classifier(model, 7, seed=3)
    back = module.reset_classifier(seven, 0)
    return dict(counts=module.param_counts(model), parts=parts, last=last,
                canonical=module.to_canonical(model), seven_counts=module.param_counts(seven),
                seven=module.to_canonical(seven), back_counts=module.param_counts(back),
                seven_logits=as_nchw(module, module.features(seven, native(module, X),
                                                             ("head",))["head"]),
                still=module.param_counts(model))


CASES = [(kind, pooling) for kind in SPECS for pooling in POOLINGS]


@pytest.fixture(scope="module")
def results():
    return {(kind, pooling, fw): run(MODULES[fw], SPECS[kind], pooling)
            for kind, pooling in CASES for fw in FRAMEWORKS}


def close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(float(np.abs(b).max()), 1e-30),
                               err_msg=what)


@pytest.mark.parametrize("kind,pooling", CASES)
def test_headless_parts_agree_across_frameworks_with_the_oracles_shapes_and_counts(
        results, kind, pooling):
    spec = SPECS[kind].with_overrides(num_classes=0, pooling=pooling)
    shapes = {row.name: row.out_shape for row in part_table(spec, SIZE, batch=2)}
    reference = results[kind, pooling, "torch"]
    for fw in FRAMEWORKS:
        got = results[kind, pooling, fw]
        assert got["counts"] == param_counts(spec), fw
        assert list(got["parts"]) == spec.part_names(), fw
        for name, y in got["parts"].items():
            assert y.shape == shapes[name], (fw, name, y.shape)
            close(y, reference["parts"][name], f"{fw} {name}")
        close(got["last"], reference["last"], f"{fw} forward_features")
        # The head pools forward_features' map as Keras's include_top=False, pooling= does.
        pooled = {"avg": got["last"].mean(axis=(2, 3)), "max": got["last"].max(axis=(2, 3)),
                  None: got["last"]}[pooling]
        close(got["parts"]["head"], pooled, f"{fw} head")
        if not spec.preact:
            np.testing.assert_array_equal(got["last"], got["parts"]["stage2"])


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_reset_classifier_gives_the_oracles_counts_and_commons_new_head(results, kind):
    spec = SPECS[kind].with_overrides(num_classes=0)
    seven = spec.with_overrides(num_classes=7)
    fresh = init_weights(seven, 3)
    reference = results[kind, "avg", "torch"]
    for fw in FRAMEWORKS:
        got = results[kind, "avg", fw]
        assert got["seven_counts"] == param_counts(seven), fw
        assert got["back_counts"] == got["still"] == param_counts(spec), fw
        for name, value in got["seven"].items():  # the new head is init's; the rest is kept
            expected = fresh[name] if name.startswith("head.fc.") else got["canonical"][name]
            np.testing.assert_array_equal(value, expected, err_msg=f"{fw} {name}")
        assert got["seven_logits"].shape == (2, 7)
        close(got["seven_logits"], reference["seven_logits"], f"{fw} logits")


def test_headless_canonical_file_round_trips_and_a_headed_file_is_refused(results, tmp_path):
    spec = SPECS["v2"].with_overrides(num_classes=0)
    path = tmp_path / "headless.safetensors"
    save_weights(results["v2", "avg", "torch"]["canonical"], path)
    for fw in FRAMEWORKS:
        module = MODULES[fw]
        model = module.from_canonical(module.build(spec, seed=9), load_weights(path, spec))
        again = module.to_canonical(model)
        for name, value in results["v2", "avg", "torch"]["canonical"].items():
            np.testing.assert_array_equal(again[name], value, err_msg=f"{fw} {name}")
        assert set(again) == set(results["v2", "avg", "torch"]["canonical"]), fw
    headed = tmp_path / "headed.safetensors"
    save_weights(init_weights(SPECS["v2"]), headed)
    with pytest.raises(WeightsError, match="head.fc"):
        load_weights(headed, spec)


def test_pooling_none_needs_a_headless_net():
    with pytest.raises(SpecError, match=r"^pooling: expected 'avg' or 'max' with a classifier"):
        get_spec("d2l_resnet18", pooling=None)
    with pytest.raises(SpecError, match=r"^pooling: expected one of"):
        get_spec("d2l_resnet18", num_classes=0, pooling="mean")
