"""Which device a framework computes on: `--device {auto,cpu,gpu,gpu:N}` and `device=`, written
once for the four frameworks.

`auto` (the default) takes the framework's first GPU when it sees one, else the CPU; `gpu` is
`gpu:0`; `gpu:N` is the framework's N-th GPU. Asking for a GPU the framework does not see is an
error naming what it does see: never a silent fall-back to the CPU. Each framework package
answers `visible_gpus()` (how many it sees, and what they are called) and turns the resolved
`Device` into its own (`torch.device`, `/GPU:N`, `mx.gpu(N)`).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from common.core.errors import Error

CHOICES = "auto, cpu, gpu, gpu:N"
_FORM = re.compile(r"^(auto|cpu|gpu)(?::(\d+))?$")


class DeviceError(Error):
    """A device that is malformed or that the framework does not see."""


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "gpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


def parse(text: str) -> str:
    """The text of a well-formed device (an argparse type); a DeviceError names the forms."""
    m = _FORM.match(str(text).strip().lower())
    if not m or (m.group(2) is not None and m.group(1) != "gpu"):
        raise DeviceError(f"device: expected one of {CHOICES}, got {text!r}")
    return m.group(0)


def device_arg(text: str) -> str:
    """`--device`'s argparse type."""
    try:
        return parse(text)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("device: ")) from None


def resolve(requested: str | Device, framework_name: str, gpus: list[str]) -> Device:
    """The device for `requested` given the names of the GPUs the framework sees."""
    if isinstance(requested, Device):
        requested = str(requested)
    text = parse(requested)
    kind, _, index = text.partition(":")
    if kind == "cpu" or (kind == "auto" and not gpus):
        return Device("cpu")
    n = int(index or 0)
    if n >= len(gpus):
        seen = (f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}: " + ", ".join(
            f"gpu:{i} ({name})" for i, name in enumerate(gpus))) if gpus else "no GPU"
        raise DeviceError(f"device: expected a GPU that {framework_name} sees, got {text!r}; "
                          f"{framework_name} sees {seen}")
    return Device("gpu", n)


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto: the framework's first GPU if it sees one, else the CPU; cpu; "
                        "gpu (gpu:0); gpu:N")


@functools.cache
def cpu() -> tuple[str, frozenset[str] | None]:
    """This machine's CPU model and feature flags, from /proc/cpuinfo (Linux); flags are None
    where that cannot be read, so callers can tell "unknown" from "absent"."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and flags is None:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


# --- what the machine can give: CPU cores and memory -------------------------------------------

OVERRIDE = "RESNET3_NO_RESOURCE_CHECK"  # =1: skip the refusals below (say, with swap to spare)


class ResourceError(DeviceError):
    """A request the machine cannot meet: more threads than cores, a batch beyond the memory."""


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (a container or `taskset` may
    give it fewer than the machine has), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_threads(n: int) -> int:
    """n, unless it is more threads than this process has cores: each framework would start
    that many (PyTorch twice over) and the machine would spend its time switching between them
    (--threads 999: a load average past 700, a 64-example run not done in 5 minutes)."""
    cores = usable_cores()
    if n > cores and not os.environ.get(OVERRIDE):
        raise ResourceError(f"--threads: expected at most {cores}, the CPU cores this process "
                            f"may use (os.sched_getaffinity), got {n}; set {OVERRIDE}=1 to "
                            f"run more threads than cores anyway")
    return n


def threads_arg(text: str) -> int:
    """`--threads`' argparse type: a positive integer, at most the usable cores."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    try:
        return check_threads(n)
    except ResourceError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--threads: ")) from None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What this process's cgroup (v2) may still take: memory.max less memory.current; None
    without a limit ("max") or where it cannot be read."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> tuple[int, str] | None:
    """Bytes this process can still have, and where the figure comes from: /proc/meminfo's
    MemAvailable, or the cgroup's limit (/sys/fs/cgroup/memory.max) where that is lower; None
    where neither can be read (then nothing is refused)."""
    figures = [(n, src) for n, src in ((_meminfo_available(), "MemAvailable in /proc/meminfo"),
                                       (_cgroup_room(), "the cgroup's memory.max"))
               if n is not None]
    return min(figures) if figures else None


def activation_bytes(spec, batch: int, size: int, training: bool, itemsize: int = 4) -> int:
    """A lower bound on the memory of one step on `batch` images of size x size, from the
    oracle's layer shapes: a training step keeps the input and every layer's output (ReLUs
    left out: they may run in place) for the backward pass; inference holds at least one
    layer's input and output at once. Weights, gradients and workspace come on top."""
    from common.core.oracle import layers
    shapes = [(batch, spec.in_channels, size, size)]
    shapes += [layer.out_shape for layer in layers(spec, size, batch) if layer.kind != "relu"]
    sizes = [math.prod(s) for s in shapes]
    if training:
        return itemsize * sum(sizes)
    return itemsize * max(a + b for a, b in zip(sizes, sizes[1:]))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(spec, batch: int, size: int, training: bool, given: str,
                 itemsize: int = 4) -> None:
    """Refuse a step whose activations alone exceed the memory available (it would end in an
    OOM kill or an allocator's traceback after the data and framework have loaded); warn when
    they take more than half of it. `given` names the flags, as the user wrote them."""
    room = available_memory()
    if room is None:
        return
    need, (free, source) = activation_bytes(spec, batch, size, training, itemsize), room
    step = f"{'a training' if training else 'an inference'} step of {spec.name} at {given}"
    if need > free and not os.environ.get(OVERRIDE):
        raise ResourceError(f"memory: expected a batch whose activations fit in the memory "
                            f"available, got {step}, whose activations alone take at least "
                            f"{_gib(need)} (from the layer shapes) against {_gib(free)} "
                            f"available ({source}); lower them, or set {OVERRIDE}=1 if the "
                            f"estimate is wrong here")
    if need > free / 2:
        warnings.warn(f"memory: {step} takes at least {_gib(need)} for its activations, more "
                      f"than half of the {_gib(free)} available ({source}); it may not fit",
                      RuntimeWarning, stacklevel=2)
