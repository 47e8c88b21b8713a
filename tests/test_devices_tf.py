"""TensorFlow's devices (resnet_tf.devices, Adapter(device=)) and its fp16 precision.

Run on the CPU, with the CPU as the device: resolution and its errors, what `native` names,
memory growth, and that the variables, the batches and the step really are where the adapter
was told. A second CPU (TensorFlow splits the host into two logical CPUs, in a child process)
stands in for a second device, so that a placement the adapter forgets shows. The tests marked
gpu("tf") run where TensorFlow sees a GPU and are skipped, with that reason, elsewhere.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from common.core.devices import Device, DeviceError
from common.core.init import init_weights
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec, Stage, Stem
from resnet_tf import devices
from resnet_tf.adapter import Adapter

ROOT = Path(__file__).resolve().parents[1]
# Small and quick: two stages (the second strided and projected), 3 channels, 8x8 images.
SPEC = ResNetSpec("tiny", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=3, num_classes=5)


def batch(seed: int = 0, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3, 8, 8)).astype(np.float32),
            rng.integers(0, SPEC.num_classes, n).astype(np.int64))


def rel_max(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def rel_norm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """|a - b| / |b| over all of b's arrays as one vector (a conv bias before a BatchNorm has
    a zero gradient, which float32 rounding alone makes nonzero: no array alone compares)."""
    a, b = (np.concatenate([d[k].ravel() for k in b]) for d in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def on(tensor_or_variable, device: str) -> bool:
    """Whether TensorFlow placed it on `device` ("CPU:0", "GPU:1")."""
    v = getattr(tensor_or_variable, "value", tensor_or_variable)  # a Keras variable's tf one
    return v.device.endswith(f"device:{device}")


# --- selection -------------------------------------------------------------------------------

def test_visible_gpus_are_the_gpus_tensorflow_lists_and_auto_takes_the_first_or_the_cpu():
    seen = tf.config.list_physical_devices("GPU")
    assert len(devices.visible_gpus()) == len(seen)
    assert devices.select() == devices.select("auto") == (Device("gpu", 0) if seen
                                                          else Device("cpu"))
    assert devices.select("cpu") == devices.select(" CPU ") == Device("cpu")


def test_a_gpu_tensorflow_does_not_see_is_refused_naming_what_it_sees():
    n = len(tf.config.list_physical_devices("GPU"))  # 0 here: "gpu" and "gpu:1" both refused
    for request in (["gpu", "gpu:0", "gpu:1"] if n == 0 else [f"gpu:{n}"]):
        with pytest.raises(DeviceError) as err:
            devices.select(request)
        sees = "TensorFlow sees no GPU" if n == 0 else f"TensorFlow sees {n} GPU"
        assert str(err.value).startswith(f"device: expected a GPU that TensorFlow sees, got "
                                         f"{request!r}; {sees}"), err.value
        # The adapter refuses it too, before it makes anything: no fall-back to the CPU.
        with pytest.raises(DeviceError, match=sees):
            Adapter(SPEC, init_weights(SPEC, 0), device=request)


@pytest.mark.parametrize("text", ["tpu", "cuda:0", "gpu:-1", "gpu:x", "cpu:1", "auto:0", "",
                                  "gpu0", "/GPU:0"])
def test_malformed_devices_are_refused_naming_the_forms(text):
    with pytest.raises(DeviceError, match=r"device: expected one of auto, cpu, gpu, gpu:N, "
                                          r"got "):
        devices.select(text)


def test_with_gpus_pretended_resolution_picks_the_index_and_native_names_it(monkeypatch):
    grown = []
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["Fake A100", "Fake H100"])
    monkeypatch.setattr(devices, "enable_memory_growth", lambda: grown.append(1) or [])
    assert devices.select() == devices.select("gpu") == devices.select("gpu:0") == Device("gpu")
    assert devices.select("gpu:1") == Device("gpu", 1)
    assert devices.select("cpu") == Device("cpu")
    assert len(grown) == 4  # memory growth before any GPU is used (idempotent)
    with pytest.raises(DeviceError, match=r"got 'gpu:2'; TensorFlow sees 2 GPUs: gpu:0 "
                                          r"\(Fake A100\), gpu:1 \(Fake H100\)"):
        devices.select("gpu:2")
    assert devices.native(Device("gpu", 1)) == "/GPU:1"
    assert devices.native(Device("gpu")) == "/GPU:0"
    assert devices.native(Device("cpu")) == "/CPU:0"
    spec = tf.DeviceSpec.from_string(devices.native(Device("gpu", 1)))  # a name tf.device takes
    assert (spec.device_type, spec.device_index) == ("GPU", 1)


def test_memory_growth_is_set_on_every_gpu_and_too_late_is_said(monkeypatch):
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    calls = []
    monkeypatch.setattr(devices, "_gpus", lambda: gpus)
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda gpu, on: calls.append((gpu.name, on)))
    assert devices.enable_memory_growth() == [g.name for g in gpus]
    assert calls == [(g.name, True) for g in gpus]
    # Names: TensorFlow's details where it has them, else the device's own name.
    assert devices.visible_gpus() == [g.name for g in gpus]

    def initialised(gpu, on):
        raise RuntimeError("Physical devices cannot be modified after being initialized")
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", initialised)
    with pytest.warns(RuntimeWarning, match=r"TensorFlow initialised its GPUs "
                                            r"\(/physical_device:GPU:0, /physical_device:GPU:1\) "
                                            r"before memory growth could be set"):
        assert devices.enable_memory_growth() == []


def test_memory_growth_set_on_import_is_idempotent_and_silent():
    # No GPU here: nothing to do. With one: set when resnet_tf.devices was imported, before
    # TensorFlow started, so setting it again is a no-op, not a too-late warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.enable_memory_growth() == [g.name for g in devices._gpus()]


def test_set_deterministic_turns_on_op_determinism_for_this_process_and_its_children():
    # Run in a child: the switch is process-wide and never undone.
    code = ("import os; import tensorflow as tf; from resnet_tf import devices; "
            "from tensorflow.python.framework import config; "
            "assert not config.is_op_determinism_enabled(); devices.set_deterministic(); "
            "assert config.is_op_determinism_enabled(); "
            "assert os.environ['TF_DETERMINISTIC_OPS'] == '1'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- the adapter on a device -----------------------------------------------------------------

def test_adapter_on_the_cpu_holds_its_variables_and_batches_there_and_computes_as_default():
    w, (x, y) = init_weights(SPEC, 0), batch()
    opt = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
    a, default = Adapter(SPEC, w, optimizer=opt, device="cpu"), Adapter(SPEC, w, optimizer=opt)
    assert a.device == Device("cpu") and default.device == devices.select("auto")
    variables = a.model.variables + a.optimizer.variables
    assert len(variables) > 2 * len(a.trainable)  # weights, statistics, momentum, iterations
    assert all(on(v, "CPU:0") for v in variables), [v.value.device for v in variables]
    X = a._inputs(x)
    assert on(X, "CPU:0") and on(a._labels(y, X), "CPU:0")
    if default.device.is_gpu:
        return  # the comparison with the default is the gpu tests' (1e-4, not bit for bit)
    assert np.array_equal(a.logits(x), default.logits(x))
    for _ in range(2):
        assert a.train_step(x, y) == default.train_step(x, y)
    assert all(np.array_equal(v, default.get_weights()[k]) for k, v in a.get_weights().items())
    assert all(np.array_equal(v, default.optimizer_state()[k])
               for k, v in a.optimizer_state().items())


def test_adapter_on_a_second_cpu_places_variables_batches_and_steps_there():
    """TensorFlow split into two logical CPUs; the adapter told to use /CPU:1 (as it would be
    told /GPU:1). Anything made or run without the adapter's tf.device lands on /CPU:0."""
    script = textwrap.dedent("""
        import numpy as np
        import resnet_tf.adapter as adapter_module
        from tensorflow.python.eager import context
        # Importing the adapter (and resnet_tf.devices) leaves TensorFlow's devices
        # uninitialised, so memory growth (set on that import) and this split still apply.
        assert context.context()._context_handle is None
        import tensorflow as tf
        cpu, = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tests.test_devices_tf import SPEC, batch, on
        from common.core.init import init_weights
        from common.core.optim import OptimizerConfig
        w, (x, y) = init_weights(SPEC, 0), batch()
        opt = OptimizerConfig("sgd", lr=0.1, momentum=0.9)
        first = adapter_module.Adapter(SPEC, w, optimizer=opt, device="cpu")
        adapter_module.native = lambda device: "/CPU:1"
        a = adapter_module.Adapter(SPEC, w, optimizer=opt, device="cpu")
        variables = a.model.variables + a.optimizer.variables
        assert all(on(v, "CPU:1") for v in variables), [v.value.device for v in variables]
        assert all(on(v, "CPU:0") for v in first.model.variables + first.optimizer.variables)
        X = a._inputs(x); Y = a._labels(y, X)
        assert on(X, "CPU:1") and on(Y, "CPU:1"), (X.device, Y.device)
        # The same function on either CPU, bit for bit.
        assert np.array_equal(a.logits(x), first.logits(x))
        assert a.train_step(x, y) == first.train_step(x, y)
        assert all(np.array_equal(v, first.get_weights()[k]) for k, v in a.get_weights().items())
        # The functions' results are made on /CPU:1: their ops ran there.
        with a._on_device():
            assert on(a._forward(X, False), "CPU:1")
            assert all(on(t, "CPU:1") for t in a._step(X, Y))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_with_an_engine_the_strategy_places_and_device_must_agree(monkeypatch):
    from types import SimpleNamespace

    from resnet_tf.adapter import _strategy_device

    def engine(worker_device):
        return SimpleNamespace(strategy=SimpleNamespace(
            extended=SimpleNamespace(worker_devices=(worker_device,))))
    on_cpu = engine("/job:worker/replica:0/task:1/device:CPU:0")
    assert _strategy_device(on_cpu, "auto") == _strategy_device(on_cpu, "cpu") == Device("cpu")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(DeviceError, match="TensorFlow sees no GPU"):
            _strategy_device(on_cpu, "gpu")
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["Fake A100", "Fake H100"])
    monkeypatch.setattr(devices, "enable_memory_growth", lambda: [])
    on_gpu1 = engine("/job:worker/replica:0/task:1/device:GPU:1")
    assert _strategy_device(on_gpu1, "auto") == _strategy_device(on_gpu1, "gpu:1") == \
        Device("gpu", 1)
    for other in ("cpu", "gpu", "gpu:0"):
        with pytest.raises(DeviceError, match=rf"device: expected auto or gpu:1 with engine= "
                                              rf"\(the strategy places this worker on gpu:1\), "
                                              rf"got '{other}'"):
            _strategy_device(on_gpu1, other)


# --- fp16 ------------------------------------------------------------------------------------

def test_fp16_computes_in_float16_on_float32_weights_close_to_fp32_with_a_loss_scale():
    w, (x, y) = init_weights(SPEC, 0), batch()
    opt = OptimizerConfig("sgd", lr=0.05, momentum=0.9, weight_decay=0.5)
    fp32, a = Adapter(SPEC, w, optimizer=opt), Adapter(SPEC, w, optimizer=opt, precision="fp16")
    assert a.precision == "fp16" and a.model.dtype_policy.name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy restored
    conv = a.model.stem.conv
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert conv(tf.zeros((1, 8, 8, 3))).dtype == tf.float16
    assert isinstance(a.optimizer, keras.optimizers.LossScaleOptimizer)
    # float16 rounds at 2**-11 ~ 5e-4: far above float32's rounding, far below the logits.
    lo = a.logits(x)
    assert lo.dtype == np.float32 and 1e-5 < rel_max(lo, fp32.logits(x)) < 1e-2
    # Gradients come back unscaled (the loss scale is 2**15). Measured: 2.7e-2 apart, as
    # BatchNorm's backward pass subtracts near-equal float16 terms.
    loss, grads = a.loss_and_grads(x, y)
    loss32, grads32 = fp32.loss_and_grads(x, y)
    assert 0 < abs(loss - loss32) < 1e-3 * abs(loss32)
    assert rel_norm(grads, grads32) < 0.1
    # A step: its weight decay (0.5) is unscaled with the gradients, so the update is fp32's
    # to float16 rounding (measured 4e-3 apart), and the weights stay float32.
    before = a.get_weights()
    assert abs(a.train_step(x, y)[0] - fp32.train_step(x, y)[0]) < 1e-3 * loss32
    after, after32 = a.get_weights(), fp32.get_weights()
    assert all(v.dtype == np.float32 for v in after.values())
    updates = {k: after[k] - before[k] for k in a.trainable}
    assert rel_norm(updates, {k: after32[k] - before[k] for k in a.trainable}) < 2e-2
    state = a.optimizer_state()
    assert state["loss_scale"] == 2.0 ** 15 and state["loss_scale.good_steps"] == 1
    assert all(v.dtype == tf.float32 for v in a.model.trainable_variables)


def test_fp16_skips_a_step_whose_gradients_overflow_halves_the_scale_and_resumes_with_it():
    w, (x, y) = init_weights(SPEC, 0), batch()
    a = Adapter(SPEC, w, precision="fp16")
    before = a.get_weights()
    # A scale of 2**40 takes the scaled gradients past float16's 65,504: not finite.
    a.optimizer.dynamic_scale.assign(2.0 ** 40)
    assert np.isfinite(a.train_step(x, y)[0])  # the forward pass is finite
    assert all(np.array_equal(v, before[k]) for k, v in a.get_weights().items()
               if k in a.trainable)  # the step was skipped (BatchNorm's statistics moved)
    assert a.optimizer.iterations.numpy() == 0
    assert a.optimizer_state() == {"loss_scale": 2.0 ** 39, "loss_scale.good_steps": 0}
    a.optimizer.dynamic_scale.assign(2.0 ** 10)
    a.train_step(x, y)
    state = a.optimizer_state()
    assert state["loss_scale"] == 2.0 ** 10 and state["loss_scale.good_steps"] == 1
    assert not np.array_equal(a.get_weights()["stem.conv.weight"], w["stem.conv.weight"])
    resumed = Adapter(SPEC, a.get_weights(), precision="fp16")
    resumed.set_optimizer_state(state)
    assert resumed.optimizer_state() == state
    assert float(resumed.optimizer.dynamic_scale.numpy()) == 2.0 ** 10


def test_fp16_is_refused_with_float64():
    with pytest.raises(ValueError, match="precision: expected dtype float32"):
        Adapter(SPEC, init_weights(SPEC, 0), dtype="float64", precision="fp16")


# --- on a GPU (skipped where TensorFlow sees none) -------------------------------------------

@pytest.mark.gpu("tf")
def test_gpu_eval_logits_and_a_step_match_the_cpu():
    w, (x, y) = init_weights(SPEC, 0), batch(n=8)
    gpu, cpu = Adapter(SPEC, w, device="gpu"), Adapter(SPEC, w, device="cpu")
    assert gpu.device == Device("gpu", 0)
    assert all(on(v, "GPU:0") for v in gpu.model.variables)
    assert on(gpu._inputs(x), "GPU:0")
    assert np.abs(gpu.logits(x) - cpu.logits(x)).max() < 1e-4
    (l_gpu, c_gpu), (l_cpu, c_cpu) = gpu.train_step(x, y), cpu.train_step(x, y)
    assert abs(l_gpu - l_cpu) < 1e-4 and c_gpu == c_cpu
    after, after_cpu = gpu.get_weights(), cpu.get_weights()
    assert max(float(np.abs(after[k] - after_cpu[k]).max()) for k in after) < 1e-4
    assert np.abs(gpu.logits(x) - cpu.logits(x)).max() < 1e-4


@pytest.mark.gpu("tf")
def test_gpu_fp16_step_runs_with_a_loss_scale():
    w, (x, y) = init_weights(SPEC, 0), batch(n=8)
    a = Adapter(SPEC, w, device="gpu", precision="fp16")
    loss, _ = a.train_step(x, y)
    assert np.isfinite(loss) and a.optimizer_state()["loss_scale"] == 2.0 ** 15
    assert rel_max(a.logits(x), Adapter(SPEC, w, device="cpu", precision="fp16").logits(x)) < 1e-2
