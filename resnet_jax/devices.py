"""Which device JAX computes on: the GPUs it sees, `--device`/`device=` resolved against them
(common.core.devices), and the matching `jax.Device`."""
from __future__ import annotations

import os

import jax

from common.core.devices import Device, DeviceError, parse, resolve

NAME = "JAX"  # the framework's own name, in messages (the registry record's `short`)


def visible_gpus() -> list[str]:
    """The names of the GPUs JAX sees; [] with the CPU-only jaxlib."""
    try:
        return [d.device_kind for d in jax.devices("gpu")]
    except RuntimeError:  # no GPU backend in this jaxlib, or no device
        return []


def select(requested: str | Device = "auto") -> Device:
    """The device for `requested` (auto, cpu, gpu, gpu:N) among those JAX sees; a DeviceError
    names what it sees, never a fall-back to the CPU."""
    text = parse(str(requested))
    gpus = visible_gpus()
    try:
        return resolve(text, NAME, gpus)
    except DeviceError as err:
        if gpus:
            raise
        raise DeviceError(f"{err} (jaxlib {jax.__version__} here runs on the CPU only)") from None


def native(device: Device) -> jax.Device:
    """The jax.Device for a resolved common Device: one of this process's own (under
    jax.distributed, jax.devices() lists every process's)."""
    if device.is_gpu:
        return jax.local_devices(backend="gpu")[device.index]
    return jax.local_devices(backend="cpu")[0]


def set_deterministic() -> None:
    """XLA's switch for deterministic GPU operations (`--xla_gpu_deterministic_ops`), added to
    XLA_FLAGS; XLA reads it when JAX starts its backend, so call this before the first
    computation. The CPU's operations already are deterministic."""
    flag = "--xla_gpu_deterministic_ops=true"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def before_crosscheck() -> None:
    """Nothing must be set before JAX loads."""
