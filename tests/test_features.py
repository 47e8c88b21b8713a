"""Features through the Adapter (NCHW NumPy in and out), in every framework of the registry:
each part's output agrees with PyTorch's to 1e-5 of its scale, its shape is the oracle's, and
forward_features is the last stage's map (a pre-activation net's after the head's BN-ReLU)."""
from __future__ import annotations

import numpy as np
import pytest

from common.core.checks import InputError
from common.core.init import init_weights
from common.core.oracle import part_table
from common.core.spec import get_spec
from common.frameworks import FRAMEWORKS
from tests.helpers import MODULES

SIZE = 32
SPECS = {"d2l_resnet18": get_spec("d2l_resnet18"),  # basic blocks, biases, 1 channel
         "gluon_resnet18_v2": get_spec("gluon_resnet18_v2", num_classes=10)}  # v2, input BN


@pytest.fixture(scope="module", params=sorted(SPECS))
def outputs(request):
    spec = SPECS[request.param]
    x = np.random.default_rng(0).random((2, spec.in_channels, SIZE, SIZE), dtype=np.float32)
    weights = init_weights(spec, 0)
    out = {}
    for fw in FRAMEWORKS:
        adapter = MODULES[fw].Adapter(spec, weights, device="cpu")
        out[fw] = (adapter.features(x, spec.part_names()), adapter.forward_features(x),
                   adapter.logits(x))
    return spec, out


def test_every_part_agrees_across_frameworks_with_the_oracles_shapes(outputs):
    spec, out = outputs
    shapes = {row.name: row.out_shape for row in part_table(spec, SIZE, batch=2)}
    reference = out["torch"][0]
    for fw, (parts, last, logits) in out.items():
        assert list(parts) == spec.part_names(), fw
        for name, y in parts.items():
            assert y.shape == shapes[name] and y.dtype == np.float32, (fw, name, y.shape)
            scale = float(np.abs(reference[name]).max())
            np.testing.assert_allclose(y, reference[name], rtol=0, atol=1e-5 * scale,
                                       err_msg=f"{fw} {name}")
        stage = parts[spec.part_names()[-2]]
        if spec.preact:  # after the head's final BN-ReLU, as timm's forward_features
            assert last.shape == stage.shape and last.min() >= 0 and not np.allclose(last, stage)
        else:
            np.testing.assert_array_equal(last, stage)
        np.testing.assert_allclose(last, out["torch"][1], rtol=0,
                                   atol=1e-5 * float(np.abs(out["torch"][1]).max()), err_msg=fw)
        np.testing.assert_allclose(parts["head"], logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_unknown_parts_are_refused_alike(fw):
    spec = SPECS["d2l_resnet18"]
    x = np.zeros((1, 1, 16, 16), np.float32)
    adapter = MODULES[fw].Adapter(spec, init_weights(spec, 0), device="cpu")
    with pytest.raises(InputError, match=r"^parts: expected names from stem, stage1, stage2, "
                                         r"stage3, stage4, head, got 'stage5'$"):
        adapter.features(x, ("stage1", "stage5"))
    assert list(adapter.features(x, ("stage2", "stem"))) == ["stage2", "stem"]
