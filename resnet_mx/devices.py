"""Which device MXNet computes on: `mx.gpu(N)` or `mx.cpu()`.

`select("auto" | "cpu" | "gpu" | "gpu:N")` resolves a request with common.core.devices against the
GPUs MXNet sees (`mx.context.num_gpus()`: CUDA's count, narrowed by CUDA_VISIBLE_DEVICES; 0 on
a CPU-only build of MXNet, such as the `mxnet` wheel); `native` turns the resolved device into
MXNet's context. MXNet 1.9 has no call that names a GPU (its Context knows a type and an index),
so the GPUs are named as MXNet prints its contexts: "gpu(0)".

This module imports mxnet only inside its functions: `set_deterministic` must be able to run
before MXNet loads (see there), and resnet_mx/__init__.py sets OMP_NUM_THREADS before then too.
"""
from __future__ import annotations

import os
import sys

from common.core.errors import Error
from common.core.devices import Device, DeviceError, cpu, resolve
from common.frameworks import record

NAME = record("mx").short  # the framework's own name, in messages

# MXNet's determinism switches (docs: MXNet's "Environment Variables" FAQ) and the values
# set_deterministic gives them.
DETERMINISM = {"MXNET_CUDNN_AUTOTUNE_DEFAULT": "0", "MXNET_ENFORCE_DETERMINISM": "1",
               # float32 stays float32 on tensor cores (Ampere and later use TF32 otherwise)
               "MXNET_CUDA_ALLOW_TENSOR_CORE": "0", "NVIDIA_TF32_OVERRIDE": "0"}


def visible_gpus() -> list[str]:
    """The GPUs MXNet sees, as MXNet names its contexts ("gpu(0)"), in mx.gpu(N) order; [] on a
    machine without one or with a CPU-only build. A CUDA error while counting (a broken driver,
    say) is a DeviceError that quotes it, not a traceback and not an empty list."""
    import mxnet as mx
    try:
        count = mx.context.num_gpus()
    except mx.base.MXNetError as err:  # CUDA's error other than "no device"/"old driver"
        raise DeviceError(f"device: expected MXNet to count its GPUs, got a CUDA error: "
                          f"{str(err).strip().splitlines()[0]}") from None
    return [str(mx.gpu(i)) for i in range(count)]


def select(requested: str | Device = "auto") -> Device:
    """The device for `requested` ("auto", "cpu", "gpu", "gpu:N"); a GPU MXNet does not see is
    a common.core.devices.DeviceError naming the GPUs it sees, never a fall-back to the CPU."""
    return resolve(requested, NAME, visible_gpus())


def native(device: Device):
    """The device as an MXNet context: mx.gpu(N) or mx.cpu()."""
    import mxnet as mx
    return mx.gpu(device.index) if device.is_gpu else mx.cpu()


# oneDNN, MXNet's CPU backend, has bfloat16 convolutions only on AVX-512 CPUs ("avx512_core":
# these four; native with avx512_bf16 or AMX, emulated in float32 otherwise). Elsewhere MXNet
# 1.9.1 fails in its first bfloat16 convolution with "could not create a primitive descriptor
# iterator" (docs/performance.md, "Measurements behind the code").
BF16_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


def check_bf16_cpu(device: Device) -> None:
    """Refuse bf16 on a CPU whose oneDNN cannot compute it, naming the CPU and what it lacks.
    Where the flags cannot be read (not Linux), bf16 is tried and MXNet says the rest."""
    model, flags = cpu()
    missing = [f for f in BF16_CPU_FLAGS if flags is not None and f not in flags]
    if not device.is_gpu and missing:
        raise Error(f"precision: expected a CPU with AVX-512 for bf16 in MXNet (oneDNN, "
                    f"its CPU backend, computes bfloat16 only there), got {model} without "
                    f"{', '.join(missing)}; use fp32 here, or bf16 in PyTorch or TensorFlow")


def set_deterministic() -> None:
    """Make MXNet's GPU operators deterministic, for crosscheck on a GPU; process-wide.

    - `MXNET_CUDNN_AUTOTUNE_DEFAULT=0`: no cuDNN autotuning. Autotuning times the convolution
      algorithms on the first batch and keeps the fastest, which may differ from run to run
      (timings vary); without it cuDNN's heuristics choose, the same way every time.
    - `MXNET_ENFORCE_DETERMINISM=1`: only deterministic algorithms, where MXNet chooses them:
      cuDNN's convolution algorithms (forward and both backward passes; MXNet raises where no
      deterministic one fits, rather than use another) and cuDNN's max-pooling
      (CUDNN_POOLING_MAX_DETERMINISTIC).
    - `MXNET_CUDA_ALLOW_TENSOR_CORE=0` and `NVIDIA_TF32_OVERRIDE=0`: no TensorFloat-32, which
      cuDNN uses for float32 convolutions on Ampere and later GPUs by default (10 bits of
      mantissa: far above the 1e-4 that the GPU checks allow).

    Both are environment variables that MXNet's C++ reads (dmlc::GetEnv) when a cuDNN
    convolution or pooling operator is set up, and MXNet keeps each convolution's chosen
    algorithm for the rest of the process (its cuDNN algorithm registry, keyed by shapes and
    types). So they count only if set before the first GPU operator runs. This function
    sets them in os.environ (which the C++ getenv sees, and child processes inherit) only
    while MXNet is not loaded yet; once `mxnet` is imported it checks that they already hold
    these values (set in the shell, or by an earlier call) and otherwise raises RuntimeError
    saying what to do, instead of setting them when it may be too late. Call it at the start
    of a command, before anything imports mxnet (this module does not, at import).

    Never undone. Deterministic means the same result on every run on the same GPU and
    software; it does not make the GPU's results equal the CPU's (the gpu tests' 1e-4 bound
    covers that). On the CPU (oneDNN) these variables change nothing. The cost: the
    convolution algorithms are no longer the fastest ones.
    """
    wrong = {k: os.environ.get(k) for k, v in DETERMINISM.items() if os.environ.get(k) != v}
    if not wrong:
        return
    if "mxnet" in sys.modules:
        expected = ", ".join(f"{k}={v}" for k, v in DETERMINISM.items())
        given = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
        raise RuntimeError(f"determinism: expected {expected} before MXNet loads (it reads "
                           f"them when it sets up its first cuDNN operators, and keeps the "
                           f"algorithms it chose), got {given} with mxnet already imported; "
                           f"call resnet_mx.devices.set_deterministic() before importing "
                           f"mxnet, or set them in the environment")
    os.environ.update(DETERMINISM)


def before_crosscheck() -> None:
    """crosscheck's hook on a GPU, before any framework computes: MXNet's determinism switches,
    while MXNet is not loaded yet (set_deterministic's rule; once it is, measure's own call to
    set_deterministic checks that they hold)."""
    if "mxnet" not in sys.modules:
        set_deterministic()
