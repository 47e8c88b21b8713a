"""float16 and bfloat16 weights files are read as float32, the same in every framework
(docs/weights-and-formats.md promises it). The files are written by other libraries'
writers (safetensors.torch from torch's bfloat16 and float16 tensors, np.savez from NumPy's
float16), and the expected float32 values come from those libraries' own widening
(torch's .float(), NumPy's astype), not from the reader under test."""
from __future__ import annotations

import numpy as np
import pytest

from common.commands import convert
from common.core.init import init_weights
from common.core.spec import get_spec
from common.core.weights import load_weights
from tests.helpers import MODULES

SPEC = get_spec("cifar_resnet20")


def half_file(tmp_path, kind: str):
    """The shared initial weights (with a few values that need every exponent bit: tiny,
    huge, negative zero) stored in half precision; returns the path and the float32 values
    each tensor must be read as."""
    import torch
    weights = init_weights(SPEC, 0)
    weights["head.fc.bias"] = np.array([0.0, -0.0, 1e-3, -2.5, 1e4, 6e4, 1.5e-5, 3.0, -7.0, 1.0],
                                       np.float32)
    if kind == "npz-f16":
        half = {n: a.astype(np.float16) for n, a in weights.items()}
        path = tmp_path / "w.npz"
        np.savez(path, **half)
        return path, {n: a.astype(np.float32) for n, a in half.items()}
    from safetensors.torch import save_file
    dtype = {"safetensors-bf16": torch.bfloat16, "safetensors-f16": torch.float16}[kind]
    half = {n: torch.from_numpy(a).to(dtype) for n, a in weights.items()}
    path = tmp_path / "w.safetensors"
    save_file(half, str(path))
    return path, {n: t.float().numpy() for n, t in half.items()}


KINDS = ["safetensors-bf16", "safetensors-f16", "npz-f16"]


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_files_load_as_exact_float32_in_every_framework(tmp_path, kind):
    path, expected = half_file(tmp_path, kind)
    read = load_weights(path)
    assert all(a.dtype == np.float32 for a in read.values())
    for name, values in expected.items():
        assert np.array_equal(read[name], values), name
    assert np.signbit(read["head.fc.bias"][1])  # -0.0 stays negative
    for fw, module in MODULES.items():
        back = module.to_canonical(module.from_canonical(module.build(SPEC), load_weights(path)))
        for name, values in expected.items():
            assert np.array_equal(back[name], values), (fw, name)


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_files_convert_to_every_native_format(tmp_path, kind):
    """resnet-convert (and --weights, which reads through it) from a half-precision file to
    each framework's own file: that framework reads back the float32 values."""
    path, expected = half_file(tmp_path, kind)
    for fw, suffix in (("torch", ".pt"), ("tf", ".weights.h5"), ("mx", ".params")):
        out = tmp_path / f"out{suffix}"
        assert convert.main([str(path), str(out), "--arch", SPEC.name]) == 0
        module = MODULES[fw]
        back = module.to_canonical(module.load_native(module.build(SPEC), str(out)))
        assert all(np.array_equal(back[n], v) for n, v in expected.items()), fw


def test_a_half_precision_pt_file_loads_in_pytorch(tmp_path):
    """PyTorch's own .pt state_dict in bfloat16 (model.bfloat16() then torch.save)."""
    import torch
    module = MODULES["torch"]
    model = module.build(SPEC)
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    back = module.to_canonical(module.load_native(module.build(SPEC), str(tmp_path / "w.pt")))
    assert np.array_equal(back["stem.conv.weight"],
                          state["stem.conv.weight"].float().numpy())
    assert back["stem.conv.weight"].dtype == np.float32
