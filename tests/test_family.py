"""Every preset of the family builds in all three frameworks and equals its oracle."""
import functools

import numpy as np
import pytest

from common.frameworks import FRAMEWORKS
from common.core.init import init_weights
from common.core.oracle import part_table
from common.core.spec import PRESETS
from tests.helpers import MODULES, part_shapes_nchw


@functools.lru_cache(maxsize=1)
def shared_weights(name: str) -> dict:
    """The seeded weights of a preset, made once for its three frameworks' tests, which run
    one after the other (the largest presets take seconds to draw)."""
    return init_weights(PRESETS[name], 1)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_oracle_in_every_framework(framework, name):
    fw = MODULES[framework]
    spec = PRESETS[name]
    model = fw.build(name, init="framework")
    x = np.zeros((1, spec.in_channels, 33, 33), np.float32)
    oracle = part_table(spec, 33)
    assert part_shapes_nchw(fw, model, x) == {r.name: r.out_shape for r in oracle}
    counts = {k: (v.trainable, v.non_trainable) for k, v in fw.part_param_counts(model).items()}
    assert counts == {r.name: (r.counts.trainable, r.counts.non_trainable) for r in oracle}
    weights = shared_weights(name)
    back = fw.to_canonical(fw.from_canonical(model, weights))
    assert list(back) == list(weights) and all(np.array_equal(back[k], weights[k]) for k in weights)
