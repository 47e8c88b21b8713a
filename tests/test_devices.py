"""--device and device=, the part written once in common/core/devices.py, and the commands' errors:
a GPU the framework does not see is one clear error, never a traceback or a fall-back to the
CPU. Each framework's own placement is tested in tests/test_devices_<fw>.py."""
from __future__ import annotations

import json

import pytest

from common.commands import crosscheck
from common.core.devices import Device, DeviceError, parse, resolve
from common.frameworks import FRAMEWORKS
from common.commands.train import main as train_main

ENGINE = {"torch": "PyTorch", "tf": "TensorFlow", "mx": "MXNet", "jax": "JAX"}  # what sees (or not) a GPU


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("cpu", "cpu"), ("gpu", "gpu"),
                                            ("gpu:3", "gpu:3"), (" GPU:0 ", "gpu:0")])
def test_well_formed_devices_are_read(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text", ["cuda", "cuda:0", "gpu:-1", "cpu:1", "gpu:x", "", "auto:0"])
def test_malformed_devices_are_refused_naming_the_forms(text):
    with pytest.raises(DeviceError) as err:
        parse(text)
    assert str(err.value) == f"device: expected one of auto, cpu, gpu, gpu:N, got {text!r}"


def test_auto_takes_the_first_gpu_when_there_is_one_and_the_cpu_otherwise():
    assert resolve("auto", "PyTorch", []) == Device("cpu")
    assert resolve("auto", "PyTorch", ["H200", "H200"]) == Device("gpu", 0)
    assert resolve("gpu", "PyTorch", ["A100"]) == Device("gpu", 0)
    assert resolve("gpu:1", "PyTorch", ["A100", "V100"]) == Device("gpu", 1)
    assert resolve("cpu", "PyTorch", ["A100"]) == Device("cpu")
    assert str(Device("gpu", 1)) == "gpu:1" and str(Device("cpu")) == "cpu"


@pytest.mark.parametrize("requested, gpus, seen", [
    ("gpu", [], "no GPU"),
    ("gpu:0", [], "no GPU"),
    ("gpu:1", ["NVIDIA H200"], "1 GPU: gpu:0 (NVIDIA H200)"),
    ("gpu:2", ["A", "B"], "2 GPUs: gpu:0 (A), gpu:1 (B)"),
])
def test_a_gpu_the_framework_does_not_see_is_an_error_never_the_cpu(requested, gpus, seen):
    with pytest.raises(DeviceError) as err:
        resolve(requested, "MXNet Gluon", gpus)
    assert str(err.value) == (f"device: expected a GPU that MXNet Gluon sees, got "
                              f"{requested!r}; MXNet Gluon sees {seen}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_refuses_a_missing_gpu_with_one_line(framework, tmp_path, capsys):
    assert train_main(framework, ["--dataset", "digits", "--device", "gpu", "--epochs", "1",
                                  "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    # one line; PyTorch adds why it sees none (a CPU-only build, or no usable CUDA device)
    name = ENGINE[framework]
    assert err.startswith(f"error: device: expected a GPU that {name} sees, got 'gpu'; {name} "
                          f"sees no GPU") and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_malformed_device_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main("torch", ["--device", "cuda:0"])
    assert exit_.value.code == 2
    assert ("argument --device: expected one of auto, cpu, gpu, gpu:N, got 'cuda:0'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_run_says_and_records_the_device_it_used(framework, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(framework, ["--dataset", "digits", "--limit", "64", "--resize", "0",
                                  "--batch-size", "32", "--epochs", "1",
                                  "--arch", "cifar_resnet20", "--device", "cpu",
                                  "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["device"] == "cpu"
    assert " examples/sec on cpu (" in capsys.readouterr().out


def test_crosscheck_refuses_a_missing_gpu_before_computing(capsys):
    assert crosscheck.main(["--arch", "cifar_resnet20", "--input-size", "8", "--device",
                            "gpu"]) == 2
    assert capsys.readouterr().err.startswith("error: device: expected a GPU that PyTorch "
                                              "sees, got 'gpu'; PyTorch sees no GPU")


def test_crosscheck_says_where_each_framework_computed(capsys):
    assert crosscheck.main(["--arch", "cifar_resnet20", "--input-size", "8", "--device",
                            "cpu"]) == 0
    assert "on torch cpu, tf cpu, mx cpu" in capsys.readouterr().out


# On a GPU: the four frameworks' eval logits agree within 1e-4 with each other and with the
# CPU's, with each framework's deterministic algorithms and no TensorFloat-32. In a child
# process, so that MXNet's switches are set before it loads.
GPU_CHILD = """
import json, sys
import numpy as np
from resnet_mx.devices import set_deterministic
set_deterministic()  # before anything loads MXNet
from common.frameworks import FRAMEWORKS, load
from common.core.init import init_weights
from common.core.spec import get_spec
spec = get_spec("d2l_resnet18")
weights = init_weights(spec, 0)
x = np.random.default_rng(0).normal(size=(4, 1, 64, 64)).astype(np.float32)
out = {}
for fw in FRAMEWORKS:
    __import__(f"resnet_{fw}.devices", fromlist=["x"]).set_deterministic()
    for device in ("gpu", "cpu"):
        adapter = load(fw).Adapter(spec, weights, device=device)
        assert str(adapter.device) == ("gpu:0" if device == "gpu" else "cpu"), adapter.device
        out[f"{fw} {device}"] = adapter.logits(x).tolist()
print(json.dumps(out))
"""


@pytest.mark.gpu("torch")
@pytest.mark.gpu("tf")
@pytest.mark.gpu("mx")
def test_eval_logits_agree_across_frameworks_on_the_gpu_and_with_the_cpu():
    import subprocess
    import sys

    import numpy as np
    run = subprocess.run([sys.executable, "-c", GPU_CHILD], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = {k: np.array(v) for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}
    scale = max(1.0, max(float(np.abs(v).max()) for v in out.values()))
    for fw in FRAMEWORKS:
        assert np.abs(out[f"{fw} gpu"] - out[f"{fw} cpu"]).max() <= 1e-4 * scale, fw
        assert np.abs(out[f"{fw} gpu"] - out["torch gpu"]).max() <= 1e-4 * scale, fw
