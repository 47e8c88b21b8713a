"""Weights files between frameworks, and the crosscheck command."""
import itertools

import numpy as np
import pytest

from common.commands import convert
from common.commands import crosscheck
from common.core.init import init_weights
from common.core.spec import get_spec
from common.core.weights import WeightsError, load_weights, save_weights
from common.frameworks import FRAMEWORKS


def test_weights_travel_through_every_native_format_bit_exact(tmp_path):
    spec = get_spec("d2l_resnet18")
    w = init_weights(spec, 7)
    save_weights(w, tmp_path / "start.safetensors")
    chain = ["start.safetensors", "a.pt", "b.weights.h5", "c.params", "d.npz", "e.safetensors"]
    for src, dst in zip(chain, chain[1:]):
        assert convert.main([str(tmp_path / src), str(tmp_path / dst)]) == 0
    end = convert.read(tmp_path / "e.safetensors", spec)
    assert list(end) == list(w) and all(np.array_equal(end[k], w[k]) for k in w)


def test_convert_refuses_unknown_format_and_wrong_architecture(tmp_path, capsys):
    save_weights(init_weights(get_spec("d2l_resnet18"), 0), tmp_path / "w.safetensors")
    assert convert.main([str(tmp_path / "w.safetensors"), str(tmp_path / "w.onnx")]) == 2
    assert "expected a name ending in .pt" in capsys.readouterr().err
    with pytest.raises(WeightsError, match=r"mis-shaped 2: head.fc.weight: expected \(7, 512\), got \(10, 512\)"):
        convert.read(tmp_path / "w.safetensors", get_spec("d2l_resnet18", num_classes=7))


def test_missing_and_unexpected_weights_are_named(tmp_path):
    w = init_weights(get_spec("d2l_resnet18"), 0)
    del w["stage3.1.bn2.running_var"]
    w["stage9.0.conv1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"missing 1: stage3.1.bn2.running_var \| unexpected 1: stage9"):
        from resnet_tf import build, from_canonical
        from_canonical(build("d2l_resnet18"), w)


PAIRS = sorted(f"{a} vs {b}" for a, b in itertools.combinations(FRAMEWORKS, 2))


def crosscheck_rows(out: str) -> dict[str, list[float]]:
    """pair -> [eval logits, train logits, loss, gradient] differences from the printed table."""
    rows = {}
    for line in out.splitlines():
        if " vs " in line and not line.startswith("pair"):
            a, vs, b, *rest = line.split()
            rows[f"{a} {vs} {b}"] = [float(v) for v in rest[:4]]
    return rows


def test_crosscheck_in_float64_agrees_to_float64_rounding(capsys):
    assert crosscheck.main(["--input-size", "33", "--batch", "2", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    rows = crosscheck_rows(out)
    assert sorted(rows) == PAIRS
    for pair, (eval_, train, loss, grad) in rows.items():
        assert max(eval_, train, loss) <= 1e-12 and grad <= 1e-10, (pair, out)
    assert "computed in float64" in out and "within tolerance: yes" in out


def test_crosscheck_in_float32_reports_logits_within_float32_rounding(capsys):
    """Gradients are printed but not asserted here: in float32 a ReLU input within rounding of
    0 can move one by 1e-3 on some CPUs (docs/framework-differences.md, 'ReLU kinks')."""
    crosscheck.main(["--input-size", "33", "--batch", "2"])
    out = capsys.readouterr().out
    rows = crosscheck_rows(out)
    assert sorted(rows) == PAIRS
    for pair, (eval_, train, loss, grad) in rows.items():
        assert max(eval_, train) <= 1e-5 and loss <= 1e-5 and grad < 1e-2, (pair, out)
    assert "computed in float32" in out


def test_crosscheck_catches_a_framework_that_differs(monkeypatch, capsys):
    from tests.helpers import MODULES
    real = MODULES["tf"].Adapter.logits
    monkeypatch.setattr(MODULES["tf"].Adapter, "logits",
                        lambda self, x, training=False: real(self, x, training) + 1e-3)
    assert crosscheck.main(["--input-size", "33", "--batch", "2"]) == 1
    assert "within tolerance: NO" in capsys.readouterr().out


def test_keras_file_converts_to_gluon_in_a_fresh_process(tmp_path):
    """In a new process TensorFlow loads first here (the Keras file is read first); MXNet 1.9
    crashed when it loaded after TensorFlow (docs/framework-differences.md, row 23)."""
    import subprocess
    import sys
    save_weights(init_weights(get_spec("cifar_resnet20"), 0), tmp_path / "w.safetensors")
    steps = [("w.safetensors", "w.weights.h5"), ("w.weights.h5", "w.params"),
             ("w.params", "back.safetensors")]
    for src, dst in steps:
        done = subprocess.run([sys.executable, "-m", "common.commands.convert", str(tmp_path / src),
                               str(tmp_path / dst), "--arch", "cifar_resnet20"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (src, dst, done.returncode, done.stderr[-500:])
    a = load_weights(tmp_path / "w.safetensors")
    b = load_weights(tmp_path / "back.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
