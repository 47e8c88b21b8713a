"""What the machine can give, checked before a command starts work: threads against the cores
this process may use, a step's activations against the memory available.

The refusals themselves, through every command, are rows of docs/bad-inputs.md
(tests/test_bad_inputs.py); here are the figures they rest on, against counts made by hand and
against a pretended machine (affinity, /proc/meminfo, a cgroup's memory.max).
"""
from __future__ import annotations

import warnings

import pytest

from common.core import devices
from common.core.devices import (OVERRIDE, ResourceError, activation_bytes, available_memory,
                                 check_memory, check_threads, usable_cores)
from common.core.spec import get_spec


def test_threads_are_checked_against_the_affinity_not_the_machine(monkeypatch):
    """A process pinned to one core (taskset, a container) may not ask for two threads, even on
    a machine of many; the train flags' default is that one core."""
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 64)
    monkeypatch.delenv(OVERRIDE, raising=False)
    assert usable_cores() == 1
    assert check_threads(1) == 1
    with pytest.raises(ResourceError, match=r"--threads: expected at most 1, the CPU cores this "
                                            r"process may use \(os.sched_getaffinity\), got 2"):
        check_threads(2)
    from common.commands.train import parser
    assert parser("x").parse_args([]).threads == 1
    monkeypatch.setenv(OVERRIDE, "1")
    assert check_threads(2) == 2


def test_activations_are_counted_from_the_layer_shapes():
    """cifar_resnet20 on 2 images of 3x8x8, counted by hand: the input (192 values), the stem's
    conv and BN (16x8x8 each), stage1's 3 blocks of conv, BN, conv, BN (12 maps of 16x8x8),
    stage2's and stage3's 3 blocks plus their first block's shortcut, the input subsampled and
    padded with zero channels (option A: 13 maps of 32x4x4, 13 of 64x2x2), the pooled 64 and
    the 10 logits; float32. Inference holds one
    layer's input and output at once: at most the input and the stem conv's output."""
    per_image = 192 + 2 * 1024 + 12 * 1024 + 13 * 512 + 13 * 256 + 64 + 10
    spec = get_spec("cifar_resnet20")
    assert activation_bytes(spec, 2, 8, training=True) == 4 * 2 * per_image
    assert activation_bytes(spec, 2, 8, training=True, itemsize=8) == 8 * 2 * per_image
    assert activation_bytes(spec, 2, 8, training=False) == 4 * 2 * (1024 + 1024)
    assert activation_bytes(spec, 1, 8, training=False) == 4 * (1024 + 1024)


CGROUP_ROOM = devices._cgroup_room


def pretend_memory(monkeypatch, meminfo, cgroup_root=None):
    monkeypatch.setattr(devices, "_meminfo_available", lambda: meminfo)
    if cgroup_root is not None:
        monkeypatch.setattr(devices, "_cgroup_room", lambda: CGROUP_ROOM(cgroup_root))


def test_available_memory_takes_the_lower_of_meminfo_and_the_cgroup(monkeypatch, tmp_path):
    (tmp_path / "memory.max").write_text("3000000000\n")
    (tmp_path / "memory.current").write_text("1000000000\n")
    pretend_memory(monkeypatch, 8_000_000_000, tmp_path)
    assert available_memory() == (2_000_000_000, "the cgroup's memory.max")
    pretend_memory(monkeypatch, 1_500_000_000, tmp_path)
    assert available_memory() == (1_500_000_000, "MemAvailable in /proc/meminfo")
    (tmp_path / "memory.max").write_text("max\n")  # no limit
    pretend_memory(monkeypatch, 8_000_000_000, tmp_path)
    assert available_memory() == (8_000_000_000, "MemAvailable in /proc/meminfo")
    pretend_memory(monkeypatch, None, tmp_path / "none")  # neither readable: nothing refused
    assert available_memory() is None


def test_a_step_beyond_the_memory_is_refused_and_one_near_it_warned(monkeypatch):
    spec = get_spec("cifar_resnet20")
    need = activation_bytes(spec, 64, 32, training=True)
    monkeypatch.delenv(OVERRIDE, raising=False)
    monkeypatch.setattr(devices, "_cgroup_room", lambda: None)
    monkeypatch.setattr(devices, "_meminfo_available", lambda: need - 1)
    with pytest.raises(ResourceError, match="memory: expected a batch whose activations fit"):
        check_memory(spec, 64, 32, True, "--batch-size 64, --resize 32")
    monkeypatch.setenv(OVERRIDE, "1")
    with pytest.warns(RuntimeWarning, match="it may not fit"):
        check_memory(spec, 64, 32, True, "--batch-size 64, --resize 32")
    monkeypatch.delenv(OVERRIDE)
    monkeypatch.setattr(devices, "_meminfo_available", lambda: int(need * 1.5))
    with pytest.warns(RuntimeWarning, match=r"more than half of the .* available"):
        check_memory(spec, 64, 32, True, "--batch-size 64, --resize 32")
    monkeypatch.setattr(devices, "_meminfo_available", lambda: need * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_memory(spec, 64, 32, True, "--batch-size 64, --resize 32")
