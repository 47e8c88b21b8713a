"""Which device a framework computes on: `--device {auto,cpu,gpu,gpu:N}` and `device=`, written
once for the three frameworks.

`auto` (the default) takes the framework's first GPU when it sees one, else the CPU; `gpu` is
`gpu:0`; `gpu:N` is the framework's N-th GPU. Asking for a GPU the framework does not see is an
error naming what it does see: never a silent fall-back to the CPU. Each framework package
answers `visible_gpus()` (how many it sees, and what they are called) and turns the resolved
`Device` into its own (`torch.device`, `/GPU:N`, `mx.gpu(N)`).
"""
from __future__ import annotations

import argparse
import functools
import platform
import re
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
