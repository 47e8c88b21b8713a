"""MXNet's devices (resnet_mx.devices, Adapter(device=)), tested with the CPU as the device.

What needs a GPU is marked `gpu("mx")` (tests/conftest.py skips it, with that reason, where
MXNet sees none): those tests run in a child process whose environment turns off TF32
(NVIDIA_TF32_OVERRIDE=0: cuDNN 8 otherwise rounds float32 convolutions' inputs to 10 bits on
Ampere and later GPUs) and sets MXNet's determinism switches before MXNet loads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import resnet_mx
import resnet_mx.adapter
import resnet_mx.devices
from common.core.devices import Device, DeviceError
from common.core.init import init_weights
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec, Stage, Stem
from resnet_mx.devices import native, select, set_deterministic, visible_gpus

ROOT = Path(__file__).resolve().parents[1]
MX_NUMPY = os.environ.get("RESNET3_MX_NUMPY") == "1"  # as tests/conftest.py reads it
SPEC = ResNetSpec("tiny", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=1, num_classes=4)
OPT = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
NO_GPU = "device: expected a GPU that MXNet sees, got {!r}; MXNet sees no GPU"


def batch(seed: int = 0, n: int = 6, side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1, side, side)).astype(np.float32),
            rng.integers(0, SPEC.num_classes, n))


@pytest.fixture
def two_gpus(monkeypatch):
    """resnet_mx.devices pretends that MXNet sees two GPUs (nothing runs on them)."""
    monkeypatch.setattr(resnet_mx.devices, "visible_gpus", lambda: ["gpu(0)", "gpu(1)"])


# 1. Selection on this machine: MXNet sees no GPU.

def test_mxnet_counts_no_gpu_here_without_raising_and_auto_is_the_cpu():
    assert mx.context.num_gpus() == 0  # a CPU-only build answers 0, no error
    assert visible_gpus() == []
    assert select() == select("auto") == select("cpu") == Device("cpu")
    assert native(select("auto")) == mx.cpu()


@pytest.mark.parametrize("requested", ["gpu", "gpu:0", "gpu:1", " GPU:1 "])
def test_a_gpu_is_refused_naming_what_mxnet_sees_never_the_cpu_instead(requested):
    with pytest.raises(DeviceError) as err:
        select(requested)
    assert str(err.value) == NO_GPU.format(requested.strip().lower())
    # The adapter resolves first: the same error, before any model is built.
    with pytest.raises(DeviceError) as err:
        resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), device=requested)
    assert str(err.value) == NO_GPU.format(requested.strip().lower())


@pytest.mark.parametrize("requested", ["cuda", "gpu:-1", "gpu:x", "cpu:0", "auto:1", "", "gpu0"])
def test_malformed_devices_are_refused_with_the_forms(requested):
    message = f"device: expected one of auto, cpu, gpu, gpu:N, got {requested!r}"
    with pytest.raises(DeviceError) as err:
        select(requested)
    assert str(err.value) == message
    with pytest.raises(DeviceError) as err:
        resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), device=requested)
    assert str(err.value) == message


def test_a_cuda_error_while_counting_gpus_is_a_device_error(monkeypatch):
    def broken():
        raise mx.base.MXNetError("[05:40:00] src/storage/storage.cc: CUDA: unknown error\nmore")
    monkeypatch.setattr(mx.context, "num_gpus", broken)
    with pytest.raises(DeviceError, match=r"^device: expected MXNet to count its GPUs, got a "
                                          r"CUDA error: .*CUDA: unknown error$"):
        select("auto")


# 2. Selection where MXNet pretends to see two GPUs.

def test_with_two_gpus_auto_takes_the_first_and_gpu_n_the_nth(two_gpus):
    assert select("auto") == select("gpu") == select("gpu:0") == Device("gpu", 0)
    assert select("gpu:1") == Device("gpu", 1)
    assert select(Device("gpu", 1)) == Device("gpu", 1)
    assert select("cpu") == Device("cpu")
    assert native(select("gpu:1")) == mx.gpu(1) and native(select("auto")) == mx.gpu(0)
    assert native(select("cpu")) == mx.cpu()
    with pytest.raises(DeviceError) as err:
        select("gpu:2")
    assert str(err.value) == ("device: expected a GPU that MXNet sees, got 'gpu:2'; MXNet sees "
                              "2 GPUs: gpu:0 (gpu(0)), gpu:1 (gpu(1))")


def test_with_two_gpus_the_adapter_asks_mxnet_for_that_gpu_not_the_cpu(two_gpus):
    """The adapter moves its model to mx.gpu(1), which this CPU-only MXNet cannot make: MXNet's
    own error, where a silent fall-back would have built the model on the CPU."""
    with pytest.raises(mx.base.MXNetError, match="GPU"):
        resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), device="gpu:1")


# 3. The CPU as the chosen device: placement and results.

def outputs(adapter, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    out = {"eval": adapter.logits(x), "train_logits": adapter.logits(x, training=True)}
    loss, grads = adapter.loss_and_grads(x, y)
    out["loss"] = np.float32(loss)
    out |= {f"grad.{k}": v for k, v in grads.items()}
    for i in range(2):
        loss, correct = adapter.train_step(x, y)
        out[f"step{i}"] = np.array([loss, correct], np.float64)
    out |= {f"w.{k}": v for k, v in adapter.get_weights().items()}
    out |= {f"opt.{k}": v for k, v in adapter.optimizer_state().items()}
    return out


def test_cpu_adapter_keeps_model_batches_and_state_on_the_cpu_and_computes_the_same():
    w, (x, y) = init_weights(SPEC, 3), batch()
    a = resnet_mx.Adapter(SPEC, w, optimizer=OPT, device="cpu")
    assert a.device == Device("cpu") and a.ctx == mx.cpu()
    params = a.model.collect_params().values()
    assert len(params) > 0 and all(p.list_ctx() == [mx.cpu()] for p in params)
    seen = []  # the batches as the network receives them
    a._net.register_forward_pre_hook(lambda block, args: seen.append(args[0].context))
    ours = outputs(a, x, y)
    assert seen and set(seen) == {mx.cpu()}
    updater = a.trainer._updaters[0]
    assert {s.context for s in updater.states.values()} == {mx.cpu()}
    # set_optimizer_state puts the slots on the device too.
    b = resnet_mx.Adapter(SPEC, w, optimizer=OPT, device=Device("cpu"))
    b.set_optimizer_state(a.optimizer_state())
    assert {s.context for s in b.trainer._updaters[0].states.values()} == {mx.cpu()}
    # Bit for bit what the default adapter computes (auto: the CPU here), and the eval logits
    # of a model that was never moved.
    default = outputs(resnet_mx.Adapter(SPEC, w, optimizer=OPT), x, y)
    assert ours.keys() == default.keys()
    for k in ours:
        assert np.array_equal(ours[k], default[k]), k
    model = resnet_mx.from_canonical(resnet_mx.build(SPEC, init="framework"), w)
    model.hybridize()
    from resnet_mx.modes import array
    assert np.array_equal(model(array(x)).asnumpy(), ours["eval"])


# 4. fp16.

def test_fp16_is_refused_on_the_cpu_with_the_reason():
    with pytest.raises(ValueError) as err:
        resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), precision="fp16", device="cpu")
    if MX_NUMPY:  # refused first for the mode, as bf16 is
        assert str(err.value).startswith("precision: expected fp32 under npx.set_np()")
        return
    assert str(err.value) == (
        "precision: expected fp32 or bf16 on the CPU, got 'fp16' on device cpu; MXNet 1.9 "
        "has no float16 matrix product on the CPU (its float16 Convolution fails with 'FP16 "
        "gemm on cpu not implemented!'): use fp16 on a GPU, or bf16 on the CPU")


def test_mxnet_cpu_has_no_float16_convolution():
    """Why fp16 is refused on the CPU: if a later MXNet computed this, the refusal should go."""
    x, w = mx.nd.ones((1, 1, 4, 4), dtype="float16"), mx.nd.ones((2, 1, 3, 3), dtype="float16")
    with pytest.raises(mx.base.MXNetError, match="FP16 gemm on cpu not implemented"):
        mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=2, no_bias=True).wait_to_read()


@pytest.fixture
def fp16_plumbing(monkeypatch):
    """An fp16 adapter whose graph stays float32, on the CPU: what fp16 adds around the graph
    (AMP's loss scaler on the Trainer, the scaled backward pass, the unscaled gradients, the
    skipped step, the scaler's state in optimizer_state) runs here; float16 arithmetic can't."""
    monkeypatch.setattr(resnet_mx.adapter, "select", lambda device: Device("gpu", 0))
    monkeypatch.setattr(resnet_mx.adapter, "native", lambda device: mx.cpu())
    monkeypatch.setattr(resnet_mx.adapter.Adapter, "_mixed_net", lambda self, graph: self.model)

    def make(w):
        return resnet_mx.Adapter(SPEC, w, optimizer=OPT, precision="fp16")
    return make


def test_fp16_loss_scaling_gives_the_float32_step_exactly(fp16_plumbing):
    """The loss scale is a power of two, so scaling the loss and dividing the gradients by it
    changes no bit: on a float32 graph the fp16 step is the fp32 step."""
    w, (x, y) = init_weights(SPEC, 5), batch(1)
    if MX_NUMPY:  # refused before any of it runs
        with pytest.raises(ValueError, match=r"^precision: expected fp32 under npx.set_np\(\)"):
            fp16_plumbing(w)
        return
    a, ref = fp16_plumbing(w), resnet_mx.Adapter(SPEC, w, optimizer=OPT)
    assert a.loss_scaler is a.trainer._amp_loss_scaler and a.loss_scaler.loss_scale == 2.0 ** 16
    loss, grads = a.loss_and_grads(x, y)
    loss_ref, grads_ref = ref.loss_and_grads(x, y)
    assert loss == loss_ref
    for k in grads_ref:
        assert np.array_equal(grads[k], grads_ref[k]), k
    raw = a.trainable["stem.conv.weight"].grad().asnumpy()  # the scaled gradient itself
    assert np.array_equal(raw, grads_ref["stem.conv.weight"] * np.float32(2 ** 16))
    for _ in range(2):
        assert a.train_step(x, y) == ref.train_step(x, y)
    mine, theirs = a.get_weights(), ref.get_weights()
    for k in theirs:
        assert mine[k].dtype == np.float32 and np.array_equal(mine[k], theirs[k]), k
    state = a.optimizer_state()
    assert {k: float(state[k]) for k in state if k.startswith("amp.")} == {
        "amp.loss_scale": 2.0 ** 16, "amp.next_loss_scale": 2.0 ** 16, "amp.unskipped": 2.0}
    assert not any(k.startswith("amp.") for k in ref.optimizer_state())


def test_fp16_overflow_skips_the_step_halves_the_scale_and_resumes_with_it(fp16_plumbing):
    w, (x, y) = init_weights(SPEC, 5), batch(2)
    if MX_NUMPY:  # refused before any of it runs
        with pytest.raises(ValueError, match=r"^precision: expected fp32 under npx.set_np\(\)"):
            fp16_plumbing(w)
        return
    a = fp16_plumbing(w)
    # A scale past float32's range (2**128): the scaled loss, and so every gradient, is inf.
    a.loss_scaler._loss_scale = a.loss_scaler._next_loss_scale = 2.0 ** 128
    loss, _ = a.train_step(x, y)
    assert np.isfinite(loss)  # the loss returned is the unscaled one
    after = a.get_weights()
    for k in a.trainable:  # the update was skipped (BatchNorm's running statistics moved:
        assert np.array_equal(after[k], w[k]), k  # the forward pass ran, as in fp32)
    state = a.optimizer_state()
    assert float(state["amp.next_loss_scale"]) == 2.0 ** 127
    assert not any(k.endswith(".momentum") for k in state)  # no update ran
    b = fp16_plumbing(w)
    b.set_optimizer_state(state)
    ls = b.loss_scaler
    # float32 holds 2**127 but not 2**128 (inf): the state says so, and the resumed scaler
    # halves on from there.
    assert (ls._loss_scale, ls._next_loss_scale, ls._unskipped) == (np.inf, 2.0 ** 127, 0)


# 5. set_deterministic.

def test_set_deterministic_refuses_once_mxnet_is_loaded_unless_already_set(monkeypatch):
    for k in resnet_mx.devices.DETERMINISM:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match=r"^determinism: expected "
                       r"MXNET_CUDNN_AUTOTUNE_DEFAULT=0, MXNET_ENFORCE_DETERMINISM=1, "
                       r"MXNET_CUDA_ALLOW_TENSOR_CORE=0, NVIDIA_TF32_OVERRIDE=0 before "
                       r"MXNet loads .* got MXNET_CUDNN_AUTOTUNE_DEFAULT=None, "
                       r"MXNET_ENFORCE_DETERMINISM=None, MXNET_CUDA_ALLOW_TENSOR_CORE=None, "
                       r"NVIDIA_TF32_OVERRIDE=None with mxnet already imported"):
        set_deterministic()
    assert all(k not in os.environ for k in resnet_mx.devices.DETERMINISM)  # nothing set
    for k, v in resnet_mx.devices.DETERMINISM.items():
        monkeypatch.setenv(k, v)
    assert set_deterministic() is None  # already in force: nothing to do


def test_set_deterministic_sets_the_switches_before_mxnet_loads():
    code = ("import os, sys; from resnet_mx.devices import set_deterministic; "
            "assert 'mxnet' not in sys.modules; set_deterministic(); set_deterministic(); "
            "import mxnet; print(os.environ['MXNET_CUDNN_AUTOTUNE_DEFAULT'], "
            "os.environ['MXNET_ENFORCE_DETERMINISM'], os.environ['MXNET_CUDA_ALLOW_TENSOR_CORE'], "
            "os.environ['NVIDIA_TF32_OVERRIDE'], mxnet.context.num_gpus())")
    env = {k: v for k, v in os.environ.items() if k not in resnet_mx.devices.DETERMINISM}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["0", "1", "0", "0", "0"]


# 6. On a GPU (skipped without one, by tests/conftest.py).

GPU_ENV = {"NVIDIA_TF32_OVERRIDE": "0", "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0",
           "MXNET_ENFORCE_DETERMINISM": "1"}


def gpu_child(out: str) -> None:
    """Run in a child (test_on_the_gpu_*): the CPU's and the GPU's results, to out (.npz)."""
    import resnet_mx as rmx
    from common.core.spec import get_spec
    spec = get_spec("d2l_resnet18", num_classes=10, in_channels=1)
    w = init_weights(spec, 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    res = {}
    for name in ("cpu", "gpu"):
        a = rmx.Adapter(spec, w, device=name)
        assert {c for p in a.model.collect_params().values() for c in p.list_ctx()} == {a.ctx}
        res[f"{name}.eval"] = a.logits(x)
        res[f"{name}.step"] = np.array(a.train_step(x, y), np.float64)
        res[f"{name}.weights"] = np.concatenate([v.ravel() for v in a.get_weights().values()])
    h = rmx.Adapter(spec, w, device="gpu", precision="fp16")
    res["fp16.eval"] = h.logits(x)
    res["fp16.step"] = np.array(h.train_step(x, y), np.float64)
    res["fp16.dtypes"] = np.array(sorted({str(v.dtype) for v in h.get_weights().values()}))
    res["fp16.scale"] = np.float64(h.optimizer_state()["amp.loss_scale"])
    np.savez(out, **res)


@pytest.fixture(scope="module")
def on_gpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("mx_gpu") / "res.npz"
    run = subprocess.run(
        [sys.executable, "-c", f"from tests.test_devices_mx import gpu_child; "
                               f"gpu_child({str(out)!r})"],
        cwd=ROOT, env={**os.environ, **GPU_ENV}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.gpu("mx")
def test_on_the_gpu_eval_logits_are_the_cpus_within_1e_4(on_gpu):
    gpu, cpu = on_gpu["gpu.eval"], on_gpu["cpu.eval"]
    assert np.abs(gpu - cpu).max() <= 1e-4 * max(1.0, np.abs(cpu).max())


@pytest.mark.gpu("mx")
def test_on_the_gpu_a_train_step_matches_the_cpus(on_gpu):
    assert on_gpu["gpu.step"][1] == on_gpu["cpu.step"][1]  # the correct count
    assert abs(on_gpu["gpu.step"][0] - on_gpu["cpu.step"][0]) <= 1e-4 * on_gpu["cpu.step"][0]
    assert np.abs(on_gpu["gpu.weights"] - on_gpu["cpu.weights"]).max() <= 1e-4


@pytest.mark.gpu("mx")
def test_on_the_gpu_fp16_steps_on_float32_weights_with_a_loss_scale(on_gpu):
    """float16 keeps 11 significant bits (bfloat16 8, measured 6e-3 in tests/test_precision.py):
    the fp16 logits within 1e-2 of fp32's, relative to the largest, and not equal to them."""
    fp16, fp32 = on_gpu["fp16.eval"], on_gpu["gpu.eval"]
    err = np.abs(fp16 - fp32).max() / np.abs(fp32).max()
    assert 0 < err < 1e-2, err
    assert list(on_gpu["fp16.dtypes"]) == ["float32"]
    assert on_gpu["fp16.scale"] == 2.0 ** 16
    assert np.isfinite(on_gpu["fp16.step"][0])


# 5. bf16 needs an AVX-512 CPU.

def test_bf16_is_refused_on_a_cpu_without_avx512_naming_it(monkeypatch):
    import resnet_mx.devices as devices
    from common.core.devices import Device
    monkeypatch.setattr(devices, "cpu", lambda: ("Old CPU", frozenset({"avx2", "avx512f"})))
    message = ("precision: expected a CPU with AVX-512 for bf16 in MXNet (oneDNN, its CPU "
               "backend, computes bfloat16 only there), got Old CPU without avx512bw, "
               "avx512vl, avx512dq; use fp32 here, or bf16 in PyTorch or TensorFlow")
    with pytest.raises(ValueError) as err:
        resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), precision="bf16", device="cpu")
    if MX_NUMPY:  # refused first for the mode
        assert str(err.value).startswith("precision: expected fp32 under npx.set_np()")
        return
    assert str(err.value) == message
    devices.check_bf16_cpu(Device("gpu", 0))  # a GPU computes bf16 without the CPU's help
    every = frozenset(devices.BF16_CPU_FLAGS)
    monkeypatch.setattr(devices, "cpu", lambda: ("New CPU", every | {"avx2"}))
    devices.check_bf16_cpu(Device("cpu"))
    monkeypatch.setattr(devices, "cpu", lambda: ("Unknown", None))  # no /proc/cpuinfo: tried
    devices.check_bf16_cpu(Device("cpu"))


def test_bf16_train_command_on_such_a_cpu_is_one_line(monkeypatch, capsys, tmp_path):
    import resnet_mx.devices as devices
    from common.commands.train import main
    monkeypatch.setattr(devices, "cpu", lambda: ("Old CPU", frozenset({"avx2"})))
    code = main("mx", ["--dataset", "digits", "--epochs", "1", "--precision", "bf16",
                       "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "expected a CPU with AVX-512 for bf16 in MXNet" in err or MX_NUMPY, err


def test_mxnet_bf16_fails_without_avx512_and_runs_with_it(monkeypatch):
    """Why the refusal: without it, MXNet's own error on a CPU that lacks AVX-512 is oneDNN's
    "could not create a primitive descriptor iterator"; where the CPU has it, bf16 runs. If a
    later MXNet computed bf16 on AVX2, the first branch fails and the refusal should go."""
    import resnet_mx.adapter as adapter
    import resnet_mx.devices as devices
    from common.core.devices import Device
    monkeypatch.setattr(adapter, "check_bf16_cpu", lambda device: None)
    if MX_NUMPY:  # refused for the mode before the CPU is asked
        with pytest.raises(ValueError, match="expected fp32 under npx.set_np"):
            resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), precision="bf16", device="cpu")
        return
    a = resnet_mx.Adapter(SPEC, init_weights(SPEC, 0), precision="bf16", device="cpu")
    x = np.random.default_rng(0).normal(size=(2, SPEC.in_channels, 16, 16)).astype(np.float32)
    try:
        devices.check_bf16_cpu(Device("cpu"))
    except ValueError:
        with pytest.raises(mx.base.MXNetError, match="could not create a primitive descriptor"):
            a.logits(x)
    else:
        assert np.isfinite(a.logits(x)).all()
