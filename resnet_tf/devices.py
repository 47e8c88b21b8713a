"""Which device TensorFlow computes on: its GPUs, with memory growth on, or the CPU.

`select("auto" | "cpu" | "gpu" | "gpu:N")` resolves a request with common.core.devices against the
GPUs TensorFlow sees; `native` names the resolved device as TensorFlow does ("/GPU:N",
"/CPU:0") for `tf.device`.

Memory growth. By default TensorFlow maps nearly all of a GPU's memory when it initialises its
devices, which leaves nothing to PyTorch and MXNet in the same process (crosscheck, compare's
tests) nor to a second process. Memory growth must be set before that initialisation (the
first TensorFlow operation), so this module sets it on import, and the adapter imports this
module: whoever imports resnet_tf.adapter before running a TensorFlow operation gets it. Listing
the physical devices (`tf.config.get_visible_devices`) does not initialise them. Where
TensorFlow was initialised first, `enable_memory_growth` warns that it is too late and says
what to move.
"""
from __future__ import annotations

import os
import warnings

from common.frameworks import import_first, record

# MXNet loads before TensorFlow (resnet_tf/__init__.py)
import_first((record("mx").package, record("mx").imports))
import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402

from common.core.devices import Device, resolve  # noqa: E402

NAME = record("tf").short  # the framework's own name, in messages


def _gpus() -> list:
    """The visible GPUs as TensorFlow's PhysicalDevice, in the order of "/GPU:N" (without
    initialising the runtime). `tf.config.set_visible_devices` and CUDA_VISIBLE_DEVICES
    both narrow it."""
    return tf.config.get_visible_devices("GPU")


def visible_gpus() -> list[str]:
    """The names of the GPUs TensorFlow sees ("NVIDIA H100 80GB HBM3"), "/GPU:N" order."""
    names = []
    for gpu in _gpus():
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name",
                                                                            gpu.name))
        except (ValueError, RuntimeError):  # a device without details (a pluggable one)
            names.append(gpu.name)
    return names


def enable_memory_growth() -> list[str]:
    """Turn on memory growth for every visible GPU; returns the names of the GPUs on which it
    is on. Idempotent. Too late (TensorFlow initialised its devices without it): a
    RuntimeWarning saying so, and TensorFlow keeps the memory it mapped."""
    done, late = [], []
    for gpu in _gpus():
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            done.append(gpu.name)
        except RuntimeError:  # "Physical devices cannot be modified after being initialized"
            late.append(gpu.name)
        except ValueError:  # the GPU was split into logical devices: each has its own limit
            pass
    if late:
        warnings.warn(f"TensorFlow initialised its GPUs ({', '.join(late)}) before memory "
                      f"growth could be set: it keeps nearly all their memory, which PyTorch "
                      f"and MXNet in this process cannot use; import resnet_tf.devices (or "
                      f"resnet_tf.adapter) before the first TensorFlow operation",
                      RuntimeWarning, stacklevel=2)
    return done


def select(requested: str | Device = "auto") -> Device:
    """The device for `requested` ("auto", "cpu", "gpu", "gpu:N"); a GPU TensorFlow does not
    see is a common.core.devices.DeviceError naming the GPUs it sees, never a fall-back."""
    device = resolve(requested, NAME, visible_gpus())
    if device.is_gpu:
        enable_memory_growth()
    return device


def native(device: Device) -> str:
    """The device's TensorFlow name, for `tf.device`: "/GPU:N" or "/CPU:0"."""
    return f"/GPU:{device.index}" if device.is_gpu else "/CPU:0"


def set_deterministic() -> None:
    """Make TensorFlow's operations deterministic, for crosscheck on a GPU.

    - `tf.config.experimental.enable_op_determinism()`: ops choose deterministic algorithms
      (cuDNN's convolution algorithms for the forward and backward passes, and GPU kernels
      such as softmax cross-entropy's, which otherwise add in a varying order); ops that have
      none raise UnimplementedError rather than vary; stateful random ops then need a seed
      (the adapters draw none: weights come from NumPy).
    - `TF_DETERMINISTIC_OPS=1`: the same switch as an environment variable, set as well so
      that child processes (bench workers, launch's workers) inherit it.

    Process-wide, and never undone. Deterministic means the same result on every run on the
    same GPU and software; it does not make the GPU's results equal the CPU's, which the
    1e-4 bound of the gpu tests covers. The cost: slower convolutions on the GPU; on the CPU
    TensorFlow's kernels already are deterministic.
    """
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    tf.config.experimental.enable_op_determinism()
    # float32 convolutions and matrix products in float32, not TensorFloat-32 (Ampere and later)
    tf.config.experimental.enable_tensor_float_32_execution(False)


def before_crosscheck() -> None:
    """crosscheck's hook on a GPU, before any framework computes: nothing, since
    set_deterministic works once the framework is loaded."""


def _initialised() -> bool:
    """Whether TensorFlow's runtime (and so its devices) has started."""
    return context.context()._context_handle is not None


# On import, while TensorFlow has (usually) not yet initialised its devices. A machine without
# a GPU lists none: nothing to do.
if not _initialised():
    enable_memory_growth()
