"""PyTorch's devices: `device=`/--device resolved against the CUDA devices PyTorch sees, the
clear refusals (never a fall-back to the CPU), the model and the batches on the chosen device
(the CPU here, bit for bit the default adapter and a plain PyTorch step), fp16 with loss
scaling, the determinism switches, and, where PyTorch sees a GPU, the GPU against the CPU."""
from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from common.core.devices import Device, DeviceError
from common.core.init import init_weights
from common.core.optim import OptimizerConfig
from common.core.oracle import zero_gradient_biases
from common.core.spec import ResNetSpec, Stage, Stem, get_spec
from resnet_torch import devices, reference
from resnet_torch.adapter import Adapter
from resnet_torch.model import ResNet
from resnet_torch.weights import canonical_tensors, from_canonical, to_canonical

SPEC = ResNetSpec("tiny", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=1, num_classes=4)
WEIGHTS = init_weights(SPEC, 0)
OPT = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
FORMS = "expected one of auto, cpu, gpu, gpu:N"
FAKE = ["Fake A100", "Fake H100"]
# fp16 against fp32 on this network and batch (measured): eval logits 1.4e-4 apart (|logits|
# <= 0.26; float16's 11-bit significand through 5 convolutions), weights after two SGD steps
# at lr 0.1 1.3e-3 apart (they moved 0.28), gradients 0.05% (head) to 5.5% (stem) apart in
# relative L2 norm: BatchNorm's backward pass subtracts means of float16 products.
FP16_LOGITS_ATOL, FP16_WEIGHTS_ATOL, FP16_GRADS_RTOL = 2e-3, 1e-2, 0.15


# fp16 runs emulated on CPUs without float16 arithmetic, with a warning (tested once below)
pytestmark = pytest.mark.filterwarnings("ignore:precision fp16 on a CPU without")


def batches(n: int = 3, size: int = 8, side: int = 12):
    rng = np.random.default_rng(15)
    return [(rng.normal(size=(size, 1, side, side)).astype(np.float32),
             rng.integers(0, SPEC.num_classes, size)) for _ in range(n)]


@pytest.fixture
def no_gpu(monkeypatch):
    """PyTorch sees no GPU, whatever this machine has."""
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])


@pytest.fixture
def two_gpus(monkeypatch):
    """PyTorch pretends to see two GPUs (nothing runs on them)."""
    monkeypatch.setattr(devices, "visible_gpus", lambda: list(FAKE))


@pytest.fixture
def restore_determinism(monkeypatch):
    """set_deterministic changes the process: put everything back afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored by monkeypatch
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.benchmark,
             cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:]


# ---- (1) selection where PyTorch sees no GPU ------------------------------------------------

def test_visible_gpus_are_the_cuda_devices_pytorch_sees():
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(devices.visible_gpus()) == expected
    assert devices.select() == (Device("gpu", 0) if expected else Device("cpu"))


def test_auto_and_cpu_are_the_cpu_where_pytorch_sees_no_gpu(no_gpu):
    for requested in ("auto", "AUTO", " cpu ", "cpu", Device("cpu")):
        assert devices.select(requested) == Device("cpu")
    assert devices.select() == Device("cpu")


@pytest.mark.parametrize("requested", ["gpu", "gpu:0", "gpu:1", "GPU:1", Device("gpu", 1)])
def test_a_gpu_pytorch_does_not_see_is_refused_naming_what_it_sees(no_gpu, requested):
    with pytest.raises(DeviceError) as err:
        devices.select(requested)
    text = str(err.value)
    assert "PyTorch sees no GPU" in text and repr(str(requested).lower()) in text
    if torch.version.cuda is None:  # this machine's build says why
        assert f"torch {torch.__version__} is a CPU-only build" in text
    with pytest.raises(DeviceError, match="PyTorch sees no GPU"):  # before building anything
        Adapter(SPEC, WEIGHTS, device=requested)


@pytest.mark.parametrize("bad", ["cuda", "cuda:0", "gpu:-1", "cpu:0", "auto:1", "gpu:x", "",
                                 "gpu0", "tpu", "gpu:1:2"])
def test_malformed_devices_are_refused_naming_the_forms(no_gpu, bad):
    with pytest.raises(DeviceError, match=FORMS) as err:
        devices.select(bad)
    assert repr(bad) in str(err.value) and "CPU-only" not in str(err.value)
    with pytest.raises(DeviceError, match=FORMS):
        Adapter(SPEC, WEIGHTS, device=bad)


# ---- (2) selection among pretended GPUs, and the torch.device it gives ---------------------

def test_pretended_gpus_resolve_to_the_right_index_and_cuda_device(two_gpus):
    for requested, index in (("auto", 0), ("gpu", 0), ("gpu:0", 0), ("gpu:1", 1),
                             (Device("gpu", 1), 1)):
        device = devices.select(requested)
        assert device == Device("gpu", index)
        assert devices.native(device) == torch.device("cuda", index)
    assert devices.select("cpu") == Device("cpu")  # asked for, the CPU even with GPUs
    assert devices.native(Device("cpu")) == torch.device("cpu")


def test_a_gpu_index_past_those_pytorch_sees_is_refused_listing_them(two_gpus):
    with pytest.raises(DeviceError) as err:
        devices.select("gpu:2")
    text = str(err.value)
    assert "'gpu:2'" in text and "PyTorch sees 2 GPUs: gpu:0 (Fake A100), gpu:1 (Fake H100)" in text
    assert "CPU-only" not in text


def test_native_takes_only_a_resolved_device():
    with pytest.raises(TypeError, match="expected a common.core.devices.Device"):
        devices.native("gpu:0")


def test_a_data_parallel_worker_keeps_its_engines_device_and_refuses_another():
    gpu1, cpu = torch.device("cuda", 1), torch.device("cpu")
    for requested in ("auto", "gpu", "gpu:1", Device("gpu", 1)):
        assert devices.for_engine(requested, gpu1) == Device("gpu", 1)
    for requested in ("cpu", "gpu:0"):
        with pytest.raises(DeviceError, match=r"expected auto, gpu or gpu:1 with this "
                                              r"data-parallel worker \(its engine placed it on "
                                              r"gpu:1\), got '" + requested):
            devices.for_engine(requested, gpu1)
    assert devices.for_engine("auto", cpu) == devices.for_engine("cpu", cpu) == Device("cpu")
    for requested in ("gpu", "gpu:0"):
        with pytest.raises(DeviceError, match="expected auto or cpu with this data-parallel"):
            devices.for_engine(requested, cpu)
    with pytest.raises(DeviceError, match=FORMS):
        devices.for_engine("cuda:1", gpu1)
    # the adapter refuses before it touches the engine (this one could not prepare anything)
    with pytest.raises(DeviceError, match="its engine placed it on cpu"):
        Adapter(SPEC, WEIGHTS, device="gpu", engine=SimpleNamespace(device=cpu))


# ---- (3) the adapter on the chosen device: the CPU -----------------------------------------

def test_model_optimiser_and_batches_are_on_the_chosen_device(monkeypatch):
    adapter = Adapter(SPEC, WEIGHTS, optimizer=OPT, device="cpu")
    assert adapter.device == Device("cpu")
    seen = []
    adapter.model.register_forward_pre_hook(lambda m, args: seen.append(("X", args[0])))
    cross_entropy = F.cross_entropy

    def spy(logits, Y, *a, **k):
        seen.append(("Y", Y))
        return cross_entropy(logits, Y, *a, **k)
    monkeypatch.setattr(F, "cross_entropy", spy)
    (x, y), = batches(1)
    adapter.train_step(x, y)
    adapter.eval_step(x)
    assert [k for k, _ in seen] == ["X", "Y", "X"]
    for _, t in seen:
        assert t.device == torch.device("cpu") and not t.is_pinned()  # pinned only for a GPU
    tensors = list(adapter.model.parameters()) + list(adapter.model.buffers())
    tensors += [s for state in adapter.optimizer.state.values() for s in state.values()]
    assert len(tensors) > 2 * len(list(adapter.model.parameters()))  # momentum buffers too
    assert {t.device for t in tensors} == {torch.device("cpu")}


def test_the_cpu_adapter_equals_the_default_one_and_a_plain_pytorch_step_bit_for_bit(no_gpu):
    chosen = Adapter(SPEC, WEIGHTS, optimizer=OPT, device=Device("cpu"))
    default = Adapter(SPEC, WEIGHTS, optimizer=OPT)  # auto: the CPU where no GPU is seen
    assert default.device == chosen.device == Device("cpu")
    plain = from_canonical(ResNet(SPEC), WEIGHTS)
    params = [t for t in canonical_tensors(plain).values() if t.requires_grad]
    sgd = torch.optim.SGD(params, lr=float(np.float32(OPT.lr)), momentum=OPT.momentum,
                          weight_decay=OPT.weight_decay)
    data = batches()
    for x, y in data:
        a, b = chosen.train_step(x, y), default.train_step(x, y)
        plain.train()
        logits = plain(torch.from_numpy(x))
        loss = F.cross_entropy(logits, torch.from_numpy(y))
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        assert a == b == (float(loss.detach()), int((logits.argmax(1).numpy() == y).sum()))
    for name, w in chosen.get_weights().items():
        assert np.array_equal(w, default.get_weights()[name]), name
        assert np.array_equal(w, to_canonical(plain)[name]), name
    assert chosen.optimizer_state().keys() == default.optimizer_state().keys()
    for k, v in chosen.optimizer_state().items():
        assert np.array_equal(v, default.optimizer_state()[k]), k
    x = data[0][0]
    plain.eval()
    with torch.no_grad():
        expected = plain(torch.from_numpy(x)).numpy()
    assert np.array_equal(chosen.eval_step(x), expected)
    assert np.array_equal(default.eval_step(x), expected)
    la, ga = chosen.loss_and_grads(*data[1])
    lb, gb = default.loss_and_grads(*data[1])
    assert la == lb and ga.keys() == gb.keys()
    assert all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_resumed_adam_state_lands_where_pytorch_puts_it():
    adam = OptimizerConfig("adam", lr=1e-3)
    first = Adapter(SPEC, WEIGHTS, optimizer=adam, device="cpu")
    data = batches()
    for x, y in data[:2]:
        first.train_step(x, y)
    resumed = Adapter(SPEC, first.get_weights(), optimizer=adam, device="cpu")
    resumed.set_optimizer_state(first.optimizer_state())
    for state in resumed.optimizer.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
        assert state["exp_avg"].dtype == torch.float32
    assert first.train_step(*data[2]) == resumed.train_step(*data[2])
    assert all(np.array_equal(v, resumed.get_weights()[k])
               for k, v in first.get_weights().items())


# ---- (4) fp16: autocast float16 and a loss scale, on the CPU too ---------------------------

def test_fp16_runs_float16_convolutions_keeps_float32_weights_and_is_close_to_fp32():
    half = Adapter(SPEC, WEIGHTS, optimizer=OPT, precision="fp16", device="cpu")
    full = Adapter(SPEC, WEIGHTS, optimizer=OPT, device="cpu")
    conv_out = []
    half.model.stem.conv.register_forward_hook(lambda m, a, out: conv_out.append(out.dtype))
    x = batches(1)[0][0]
    low, ref = half.eval_step(x), full.eval_step(x)
    assert conv_out == [torch.float16] and low.dtype == np.float32
    diff = float(np.max(np.abs(low - ref)))
    print(f"fp16 vs fp32 eval logits: max |diff| {diff:.2e} (|logits| <= "
          f"{float(np.max(np.abs(ref))):.2f})")
    assert 0 < diff <= FP16_LOGITS_ATOL
    for x, y in batches()[:2]:
        loss16, _ = half.train_step(x, y)
        loss32, _ = full.train_step(x, y)
        assert abs(loss16 - loss32) <= FP16_LOGITS_ATOL
    assert {t.dtype for t in half.model.state_dict().values() if t.is_floating_point()} == \
        {torch.float32}
    moved = max(float(np.max(np.abs(w - WEIGHTS[k]))) for k, w in half.get_weights().items())
    drift = max(float(np.max(np.abs(w - full.get_weights()[k])))
                for k, w in half.get_weights().items())
    print(f"after 2 steps: weights moved {moved:.2e}, fp16 vs fp32 {drift:.2e}")
    assert moved > 10 * drift and drift <= FP16_WEIGHTS_ATOL
    state = half.optimizer_state()
    assert float(state["grad_scaler.scale"]) == 2.0 ** 16  # GradScaler's initial scale
    assert float(state["grad_scaler.growth_tracker"]) == 2  # two clean steps
    assert "grad_scaler.scale" not in full.optimizer_state()


def test_fp16_resume_keeps_the_loss_scale_and_continues_bit_for_bit():
    data = batches()
    first = Adapter(SPEC, WEIGHTS, optimizer=OPT, precision="fp16", device="cpu")
    for x, y in data[:2]:
        first.train_step(x, y)
    saved = first.optimizer_state()
    saved["grad_scaler.scale"] = np.float32(2.0 ** 10)  # as if it had backed off
    first.set_optimizer_state(saved)
    resumed = Adapter(SPEC, first.get_weights(), optimizer=OPT, precision="fp16", device="cpu")
    resumed.set_optimizer_state(saved)
    assert resumed.scaler.get_scale() == 2.0 ** 10
    assert first.train_step(*data[2]) == resumed.train_step(*data[2])
    for k, v in first.get_weights().items():
        assert np.array_equal(v, resumed.get_weights()[k]), k
    assert float(resumed.optimizer_state()["grad_scaler.growth_tracker"]) == 3


def test_fp16_skips_a_step_whose_scaled_gradients_overflow_and_halves_the_scale():
    adapter = Adapter(SPEC, WEIGHTS, optimizer=OPT, precision="fp16", device="cpu")
    adapter.set_optimizer_state({"grad_scaler.scale": np.float32(2.0 ** 60)})  # float16: inf
    loss, _ = adapter.train_step(*batches(1)[0])
    assert np.isfinite(loss)
    for k, w in adapter.get_weights().items():
        if not k.endswith(("running_mean", "running_var")):  # the forward pass still ran
            assert np.array_equal(w, WEIGHTS[k]), k
    state = adapter.optimizer_state()
    assert float(state["grad_scaler.scale"]) == 2.0 ** 59
    assert float(state["grad_scaler.growth_tracker"]) == 0


def test_fp16_gradients_are_unscaled_and_closer_to_fp32_than_bf16s():
    x, y = batches(1)[0]
    grads = {p: Adapter(SPEC, WEIGHTS, precision=p, device="cpu").loss_and_grads(x, y)[1]
             for p in ("fp32", "fp16", "bf16")}
    zero = zero_gradient_biases(SPEC)  # 0 in exact arithmetic: no relative error to speak of
    errors = {p: {k: float(np.linalg.norm(g[k] - grads["fp32"][k])
                           / np.linalg.norm(grads["fp32"][k]))
                  for k in g if k not in zero} for p, g in grads.items() if p != "fp32"}
    worst = max(errors["fp16"], key=errors["fp16"].get)
    print(f"fp16 gradients vs fp32: relative L2 error up to {errors['fp16'][worst]:.1e} "
          f"({worst}); median fp16 {np.median(list(errors['fp16'].values())):.1e}, bf16 "
          f"{np.median(list(errors['bf16'].values())):.1e}")
    assert errors["fp16"][worst] <= FP16_GRADS_RTOL  # still scaled: off by a factor 65536
    assert errors["fp16"]["head.fc.weight"] <= 1e-3
    assert np.median(list(errors["fp16"].values())) < np.median(list(errors["bf16"].values()))


def test_fp16_on_a_cpu_without_float16_arithmetic_warns_that_it_is_emulated(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_float16", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"precision fp16 on a CPU without native float16 "
                                            r"arithmetic: PyTorch emulates it, ~100x slower"):
        Adapter(SPEC, WEIGHTS, precision="fp16", device="cpu")
    monkeypatch.setattr(devices, "cpu_has_float16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adapter(SPEC, WEIGHTS, precision="fp16", device="cpu")
        Adapter(SPEC, WEIGHTS, precision="bf16", device="cpu")


def test_fp16_is_refused_with_float64():
    with pytest.raises(ValueError, match="expected dtype float32 with fp16"):
        Adapter(SPEC, WEIGHTS, dtype="float64", precision="fp16", device="cpu")


# ---- determinism switches and the reference step -------------------------------------------

def test_set_deterministic_turns_on_each_switch_and_changes_nothing_on_the_cpu(
        restore_determinism, monkeypatch):
    adapter = Adapter(SPEC, WEIGHTS, device="cpu")
    x = batches(1)[0][0]
    before = adapter.eval_step(x)
    devices.set_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn
    assert not cudnn.benchmark and cudnn.deterministic and not cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
    assert np.array_equal(adapter.eval_step(x), before)
    adapter.train_step(*batches(1)[0])  # no operator of the step lacks a deterministic kernel
    doc = devices.set_deterministic.__doc__
    for switch in ("use_deterministic_algorithms(True)", "cudnn.benchmark = False",
                   "cudnn.deterministic = True", "CUBLAS_WORKSPACE_CONFIG=:4096:8", "allow_tf32"):
        assert switch in doc, switch
    for value, kept in ((":16:8", ":16:8"), (":0:0", ":4096:8")):  # the other deterministic
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", value)  # value is kept, others replaced
        devices.set_deterministic()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == kept


def test_reference_step_takes_a_device_and_fp16():
    assert reference.torch_device("gpu:1") == torch.device("cuda", 1)
    assert reference.torch_device(Device("gpu", 0)) == torch.device("cuda", 0)
    assert reference.torch_device("cpu") == torch.device("cpu")
    for precision in ("fp32", "fp16"):
        loss, correct = reference.make_step(SPEC, "train", 8, 12, precision=precision,
                                            device=Device("cpu"))()
        assert np.isfinite(loss) and 0 <= correct <= 8
    logits = reference.make_step(SPEC, "infer", 8, 12, device="cpu")()
    assert logits.shape == (8, SPEC.num_classes) and logits.dtype == np.float32
    reference.sync()


# ---- (5) on a GPU, where PyTorch sees one ---------------------------------------------------

@pytest.mark.gpu("torch")
def test_eval_logits_on_the_gpu_match_the_cpu_within_1e_4(restore_determinism):
    devices.set_deterministic()  # TF32 off: the GPU computes float32's function
    spec = get_spec("d2l_resnet18")
    weights = init_weights(spec, 0)
    x = np.random.default_rng(0).random((4, 1, 96, 96), dtype=np.float32)
    gpu = Adapter(spec, weights, device="gpu")
    assert gpu.device == Device("gpu", 0)
    assert {p.device for p in gpu.model.parameters()} == {torch.device("cuda", 0)}
    diff = float(np.max(np.abs(gpu.eval_step(x) - Adapter(spec, weights, device="cpu")
                               .eval_step(x))))
    print(f"d2l ResNet-18 eval logits, {torch.cuda.get_device_name(0)} vs CPU: max |diff| "
          f"{diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.gpu("torch")
def test_training_steps_on_the_gpu_match_the_cpu(restore_determinism, monkeypatch):
    devices.set_deterministic()
    gpu = Adapter(SPEC, WEIGHTS, optimizer=OPT, device="auto")
    cpu = Adapter(SPEC, WEIGHTS, optimizer=OPT, device="cpu")
    seen, pinned = [], []
    gpu.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    pin_memory = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda t, *a, **k: pinned.append(t.device) or pin_memory(t, *a, **k))
    for x, y in batches():
        (lg, cg), (lc, cc) = gpu.train_step(x, y), cpu.train_step(x, y)
        assert abs(lg - lc) <= 1e-4 and cg == cc
    assert set(seen) == {torch.device("cuda", 0)}
    assert pinned == [torch.device("cpu")] * 2 * len(batches())  # batch and labels, once each
    for k, v in gpu.get_weights().items():
        assert np.allclose(v, cpu.get_weights()[k], rtol=0, atol=1e-4), k
    half = Adapter(SPEC, WEIGHTS, optimizer=OPT, precision="fp16", device="gpu:0")
    for x, y in batches():
        assert np.isfinite(half.train_step(x, y)[0])
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    scale = float(half.optimizer_state()["grad_scaler.scale"])
    assert scale <= 2.0 ** 16 and np.log2(scale) == int(np.log2(scale))  # backed off, or not
