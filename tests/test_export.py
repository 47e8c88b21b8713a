"""ONNX export (common.commands.export): the file from each framework, run by onnxruntime, computes the
framework's own eval logits and the other frameworks' ones; the command's bad inputs."""
import itertools
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from common.commands import export
from common.frameworks import FRAMEWORKS
from common.core.init import init_weights
from common.core.spec import get_spec
from common.core.weights import canonical_layout, save_weights
from tests.helpers import MODULES, blocks_per_stage

TOL = 1e-5  # max |diff| / max(1, max |logit|), common.commands.export.TOLERANCE


def trained_like(spec, seed: int) -> dict:
    """Seeded weights with BatchNorm parameters and running statistics away from 1 and 0, as
    after training, so that eval mode (running statistics) and train mode (batch ones) differ."""
    rng = np.random.default_rng(seed)
    weights = init_weights(spec, seed)
    for name, value in weights.items():
        if name.endswith(("running_mean", "beta")):
            weights[name] = rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif name.endswith(("running_var", "gamma")):
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return weights


# d2l's ResNet-18, and resnet50's bottleneck (projection with BN, stride on the 3x3) with one
# block per stage and 10 classes, so that tf2onnx converts it in seconds, not in half a minute.
# Odd sizes: every stride-2 layer meets an odd map, where TensorFlow's "same" padding would
# differ from the others' symmetric padding.
RESNET50 = get_spec("resnet50")
CASES = {"d2l_resnet18": (get_spec("d2l_resnet18"), 33),
         "resnet50_one_block_per_stage": (
             blocks_per_stage(RESNET50).with_overrides(num_classes=10), 35)}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request):
    """Per framework: the ONNX graph, onnxruntime's logits and the framework's own eval logits
    (common.frameworks' Adapter, not the exporter's model) on one odd-sized batch of 3."""
    spec, size = CASES[request.param]
    weights = trained_like(spec, 1)
    x = np.random.default_rng(2).normal(size=(3, spec.in_channels, size, size)).astype(np.float32)
    out = {}
    for fw in FRAMEWORKS:
        graph = export.onnx_graph(fw, spec, weights, size)
        out[fw] = {"graph": graph, "onnx": export.onnx_logits(graph.SerializeToString(), x),
                   "own": MODULES[fw].Adapter(spec, weights).logits(x, training=False)}
    return spec, size, out


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_onnx_logits_equal_the_frameworks_own_eval_logits(exported, fw):
    spec, _, out = exported
    assert out[fw]["onnx"].shape == (3, spec.num_classes)
    assert max_rel(out[fw]["onnx"], out[fw]["own"]) <= TOL


def test_onnx_logits_equal_across_frameworks_and_the_other_frameworks_own(exported):
    _, _, out = exported
    for a, b in itertools.permutations(FRAMEWORKS, 2):
        assert max_rel(out[a]["onnx"], out[b]["onnx"]) <= TOL, (a, b)
        assert max_rel(out[a]["onnx"], out[b]["own"]) <= TOL, (a, b)


def test_every_file_takes_nchw_float32_named_input_and_returns_logits(exported):
    spec, size, out = exported
    for fw in FRAMEWORKS:
        g = out[fw]["graph"].graph
        (inp,), (outp,) = g.input, g.output
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert (inp.name, inp.type.tensor_type.elem_type) == ("input", onnx.TensorProto.FLOAT)
        assert dims == ["batch", spec.in_channels, size, size], fw
        assert outp.name == "logits", fw
        assert [o.version for o in out[fw]["graph"].opset_import if o.domain in ("", "ai.onnx")
                ] == [export.OPSET], fw
    # The NCHW -> NHWC transpose before the Keras model is folded into the convolutions.
    assert Counter(n.op_type for n in out["tf"]["graph"].graph.node)["Transpose"] == 0


def test_every_file_holds_one_conv_node_per_convolution_of_the_network(exported):
    """No convolution is exported as something else: JAX's network computes convolutions with
    at most 4 output positions as a matrix product (resnet_jax.model.Conv), its export keeps
    nn.Conv; d2l_resnet18 at 33 px ends in 2x2 maps."""
    spec, _, out = exported
    kernels = sum(len(shape) == 4 for shape in canonical_layout(spec).values())
    for fw in FRAMEWORKS:
        assert Counter(n.op_type for n in out[fw]["graph"].graph.node)["Conv"] == kernels, fw


def test_the_command_writes_a_file_of_the_given_weights(tmp_path):
    """End to end, as a user runs it: a canonical weights file in, the ONNX file out, whose
    logits are those of the weights file, not of the default initialisation."""
    spec = get_spec("cifar_resnet20")
    weights = trained_like(spec, 7)
    save_weights(weights, tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    run = subprocess.run([sys.executable, "-m", "common.commands.export", "--framework", "torch",
                          "--arch", "cifar_resnet20", "--weights", str(tmp_path / "w.safetensors"),
                          "--input-size", "31", "--format", "onnx", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "exported from PyTorch through torch.onnx.export" in run.stdout
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    x = np.random.default_rng(0).normal(size=(5, 3, 31, 31)).astype(np.float32)
    own = MODULES["torch"].Adapter(spec, weights).logits(x)
    assert max_rel(export.onnx_logits(out, x), own) <= TOL


def test_a_graph_that_disagrees_with_the_framework_is_not_written(tmp_path, monkeypatch, capsys):
    """The command's own check: onnxruntime's logits off by 1e-3 (logits near 4: 2.5e-4 of the
    scale) -> exit 1, no file, no temporary file."""
    real = export.onnx_logits
    monkeypatch.setattr(export, "onnx_logits", lambda model, x: real(model, x) + 1e-3)
    out = tmp_path / "m.onnx"
    assert export.main(["--framework", "torch", "--arch", "cifar_resnet20", "--input-size", "9",
                        str(out)]) == 1
    err = capsys.readouterr().err
    assert "differ from PyTorch's eval logits by 1.0" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_the_check_holds_the_graph_to_1e_5_of_the_logit_scale(fw, tmp_path, monkeypatch):
    """export()'s own comparison, at its edge, in every framework: onnxruntime's logits moved by
    5e-5 of the logit scale (max(1, max |logit|)) are refused and nothing is written; moved by
    5e-6, the file is written. A check loosened to 1e-4, or one that compares something else
    (its own logits with themselves), lets the first through."""
    spec, size = get_spec("cifar_resnet20"), 9
    weights = trained_like(spec, 3)
    x = np.random.default_rng(0).normal(size=(2, spec.in_channels, size, size)).astype(np.float32)
    scale = max(1.0, float(np.abs(MODULES[fw].Adapter(spec, weights).logits(x)).max()))
    real = export.onnx_logits
    for shift, written in ((5e-5, False), (5e-6, True)):
        monkeypatch.setattr(export, "onnx_logits",
                            lambda model, x, shift=shift: real(model, x) + shift * scale)
        out = tmp_path / f"{shift}.onnx"
        if written:
            diff, got_scale = export.export(fw, spec, weights, size, out)
            assert out.is_file() and diff == pytest.approx(shift * scale, rel=0.2)
            assert got_scale == pytest.approx(scale, rel=1e-6)
        else:
            with pytest.raises(export.ExportMismatch, match="nothing written"):
                export.export(fw, spec, weights, size, out)
            assert not out.exists()


def test_a_graph_that_parts_in_one_block_is_refused_naming_that_block(tmp_path, monkeypatch):
    """A graph exported from weights whose stage2.1 alone differs (a running variance 1.5x)
    from the model's: the check names stage2.1, not a part before it, from the graph's own
    intermediate tensors (PyTorch's exporter; the search is the same for every graph)."""
    spec, size = get_spec("cifar_resnet20"), 9
    weights = trained_like(spec, 3)
    graph_of = export.module("torch", "export").onnx_graph
    planted = {**weights, "stage2.1.bn1.running_var": weights["stage2.1.bn1.running_var"] * 1.5}
    monkeypatch.setattr(export.module("torch", "export"), "onnx_graph",
                        lambda spec, weights, size: graph_of(spec, planted, size))
    with pytest.raises(export.ExportMismatch, match=r"the first part beyond it: stage2\.1 "):
        export.export("torch", spec, weights, size, tmp_path / "m.onnx")


# --- bad inputs ----------------------------------------------------------------------------

def test_an_unknown_framework_is_refused_with_a_did_you_mean(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        export.main(["--framework", "mxnet", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "expected one of torch, tf, mx, jax, got 'mxnet'; did you mean 'mx'?" in err


def test_weights_of_another_architecture_are_refused_without_a_traceback(tmp_path):
    save_weights(init_weights(get_spec("cifar_resnet20"), 0), tmp_path / "w.safetensors")
    run = subprocess.run([sys.executable, "-m", "common.commands.export", "--framework", "torch",
                          "--arch", "d2l_resnet18", "--weights", str(tmp_path / "w.safetensors"),
                          str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert "stem.conv" in run.stderr  # names what does not fit
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name, expected", [
    ("missing/m.onnx", "expected a file in an existing folder"),
    ("m.pt", "expected a file name ending in .onnx for --format onnx, got"),
    ("m.onnx.tmp", "expected a file name ending in .onnx"),
])
def test_a_bad_output_path_is_refused_before_any_work(tmp_path, capsys, name, expected):
    assert export.main(["--framework", "tf", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: ") and expected in err
    assert list(tmp_path.iterdir()) == []


def test_an_input_size_of_zero_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        export.main(["--framework", "mx", "--input-size", "0", str(tmp_path / "m.onnx")])
    assert exit.value.code == 2
    assert "--input-size: expected a positive integer, got '0'" in capsys.readouterr().err
