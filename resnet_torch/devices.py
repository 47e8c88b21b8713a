"""Which device PyTorch computes on: the CUDA devices it sees, `--device`/`device=` resolved
against them (common.core.devices), the matching `torch.device`, and the switches that make a GPU
run deterministic for crosscheck.

A data-parallel engine (resnet_torch.distributed) has already placed its worker on a device
(LOCAL_RANK's GPU, or the CPU); `for_engine` checks a requested device against it.
"""
from __future__ import annotations

import os

import torch

from common.core.devices import Device, DeviceError, parse, resolve
from common.frameworks import record

NAME = record("torch").short  # the framework's own name, in messages
# CUBLAS_WORKSPACE_CONFIG values that make cuBLAS deterministic (NVIDIA's cuBLAS docs).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def visible_gpus() -> list[str]:
    """The names of the CUDA devices PyTorch sees, in its numbering (after
    CUDA_VISIBLE_DEVICES); [] with a CPU-only build or without a usable driver."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _why_none() -> str:
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build; requirements-gpu.txt installs "
                f"the CUDA one")
    return (f"torch {torch.__version__} with CUDA {torch.version.cuda} finds no usable CUDA "
            f"device: check the driver and CUDA_VISIBLE_DEVICES")


def cpu_has_float16() -> bool:
    """Whether this CPU does float16 arithmetic natively (x86 AVX512-FP16 or AMX-FP16, ARM
    FP16 arithmetic), as torch.cpu.get_capabilities() reports it. Without it PyTorch still runs
    float16 convolutions on the CPU, but emulated and about a hundred times slower than fp32
    (docs/performance.md, "Measurements behind the code"), so the adapter warns."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(k, False) for k in ("avx512_fp16", "amx_fp16", "fp16_arith"))


def select(requested: str | Device = "auto") -> Device:
    """The device for `requested` (auto, cpu, gpu, gpu:N) among those PyTorch sees; a
    DeviceError names what it sees, never a fall-back to the CPU."""
    text = parse(str(requested))  # a malformed value: a DeviceError naming the forms
    gpus = visible_gpus()
    try:
        return resolve(text, NAME, gpus)
    except DeviceError as err:
        if gpus:
            raise
        raise DeviceError(f"{err} ({_why_none()})") from None


def native(device: Device) -> torch.device:
    """PyTorch's own device: torch.device("cuda", N) for gpu:N, torch.device("cpu")."""
    if not isinstance(device, Device):
        raise TypeError(f"device: expected a common.core.devices.Device (from select), got "
                        f"{device!r}")
    return torch.device("cuda", device.index) if device.is_gpu else torch.device("cpu")


def of(device: torch.device) -> Device:
    """The common Device of a torch.device (cuda -> gpu:N, cpu -> cpu)."""
    if device.type == "cuda":
        return Device("gpu", torch.cuda.current_device() if device.index is None
                      else device.index)
    if device.type == "cpu":
        return Device("cpu")
    raise DeviceError(f"device: expected a CUDA device or the CPU, got {device}")


def for_engine(requested: str | Device, engine_device: torch.device) -> Device:
    """The device of a data-parallel worker, whose engine has already chosen it. `auto` takes
    it; `gpu` (any GPU) fits a worker on a GPU; `cpu` and `gpu:N` must name it exactly.
    Anything else is a DeviceError: the engine's device wins, but not silently."""
    text = parse(str(requested))
    placed = of(engine_device)
    if text == "auto" or text == str(placed) or (text == "gpu" and placed.is_gpu):
        return placed
    accepted = "auto, gpu or " if placed.is_gpu else "auto or "
    raise DeviceError(f"device: expected {accepted}{placed} with this data-parallel worker "
                      f"(its engine placed it on {placed}), got {text!r}")


def set_deterministic() -> None:
    """PyTorch's determinism switches, for crosscheck on a GPU (process-wide; call it before
    the first CUDA computation):

    - `torch.use_deterministic_algorithms(True)`: every operator takes its deterministic
      implementation; one that has none raises a RuntimeError instead of running. On the CPU
      none of this ResNet's operators, forward or backward, is such a one (tested). On a GPU
      (not run here): its global average pool is a mean (1x1 output), not the listed
      AdaptiveAvgPool2d backward, and torch's alert for NLLLoss is in the 2-D (per-pixel)
      form, not the 1-D cross-entropy used here;
    - `torch.backends.cudnn.benchmark = False`: cuDNN does not time candidate convolution
      algorithms and keep the fastest (which may differ from run to run);
    - `torch.backends.cudnn.deterministic = True`: cuDNN picks only deterministic
      convolution algorithms (no atomics-based backward kernels);
    - `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment (kept if it already holds ":4096:8"
      or ":16:8"): cuBLAS (CUDA >= 10.2) is deterministic only with a fixed workspace, and
      PyTorch refuses cuBLAS calls in deterministic mode without it. PyTorch reads it when it
      sizes the cuBLAS workspace, at the process's first cuBLAS call (a matrix product, the
      linear layer): call set_deterministic before that. Starting CUDA is not too late
      (`visible_gpus` and `select` start it), a first computation may be;
    - TF32 off (`torch.backends.cudnn.allow_tf32 = False`, `torch.backends.cuda.matmul.
      allow_tf32 = False`): on Ampere and later GPUs cuDNN convolutions default to TF32
      (10-bit mantissa), which is not float32's function; off, the GPU agrees with the CPU
      and the other frameworks to float32 rounding.

    On the CPU the switches change nothing this ResNet computes (its CPU operators are
    deterministic already)."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def before_crosscheck() -> None:
    """crosscheck's hook on a GPU, before any framework computes: nothing, since
    set_deterministic works once the framework is loaded."""
