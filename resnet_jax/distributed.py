"""Data-parallel JAX on its own multi-process runtime: `jax.distributed` with gloo's CPU
collectives, and a `shard_map` step over a mesh of every worker's device.

`common.commands.launch` starts one process per worker, each told the coordinator's address
(resnet_jax/launch.py). `join(workers, rank)` calls `jax.distributed.initialize` with it, after
choosing gloo for cross-process collectives on the CPU (`jax_cpu_collectives_implementation`;
JAX's default, "none", gives a CPU client that cannot all-reduce across processes). Every
process then sees all the workers' devices (`jax.devices()`, one CPU each) and its own
(`jax.local_devices()`); the engine's `mesh` puts them on one axis, `WORKERS`.

How the adapter uses it (resnet_jax/adapter.py): its training step runs under
`jax.experimental.shard_map` on that mesh: the batch is sharded (each worker's share is its
block of the global array), the parameters, the BatchNorm statistics and the optimiser's slots
are replicated. Inside, each worker computes the gradient of its share's mean loss,
`lax.pmean` averages it over the workers (an all-reduce, gloo's), and every worker applies the
same update: with equal shares the gradient of the global batch's mean loss, the single
process's. BatchNorm normalises each share with its own batch statistics (as PyTorch's DDP
without SyncBatchNorm) and the running statistics are averaged over the workers after each
step, so that every worker holds the same weights.

`sync_bn=True` is refused: Flax's BatchNorm synchronises through its `axis_name`, which d2l's
blocks (resnet_jax/blocks.py) do not take.

Several hosts: jax 0.4.30 builds its gloo collectives without an interface
(`make_gloo_tcp_collectives(distributed_client)`), so gloo advertises the address of the
machine's hostname (127.0.0.1 on stock Debian and Ubuntu). With RESNET3_JAX_IFACE (the
launcher's --iface), `join` hands gloo that interface: jaxlib's
`make_gloo_tcp_collectives(..., interface=)` takes it, and JAX's CPU client factory is given
it before the backend starts (no public JAX setting offers it).
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.experimental import enable_x64, multihost_utils
from jax.sharding import Mesh

from common.core.errors import Error
from resnet_jax.launch import COORDINATOR, IFACE

WORKERS = "workers"  # the mesh's one axis


def _refuse_sync_bn(sync_bn: bool) -> None:
    if sync_bn:
        raise Error("--sync-bn: expected it off for JAX, got it on; Flax's BatchNorm "
                    "synchronises through its axis_name, which d2l's blocks "
                    "(resnet_jax/blocks.py) do not take")


class Engine:
    """This process's place in the group: the mesh of every worker's device, and the few
    collectives the training loop needs."""

    def __init__(self, workers: int, rank: int, sync_bn: bool = False):
        _refuse_sync_bn(sync_bn)
        if jax.process_count() != workers or jax.process_index() != rank:
            raise Error(f"workers: expected JAX's runtime to hold {workers} processes with "
                        f"this one at {rank}, got {jax.process_count()} and "
                        f"{jax.process_index()}")
        self.workers, self.rank, self.sync_bn = workers, rank, sync_bn
        devices = jax.devices()
        if len(devices) != workers:
            raise Error(f"devices: expected one per worker ({workers}), got {len(devices)}: "
                        f"{devices}")
        self.mesh = Mesh(np.array(devices), (WORKERS,))
        self.device = jax.local_devices()[0]
        self._open = True

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The float64 elementwise sum of `values` over the workers: every worker's array,
        gathered (an all-gather of JAX's runtime), summed in the same order everywhere."""
        values = np.asarray(values, np.float64)
        with enable_x64():  # float64 stays float64 through JAX
            gathered = multihost_utils.process_allgather(values)
        return np.asarray(gathered, np.float64).reshape(self.workers, *values.shape).sum(0)

    def barrier(self) -> None:
        multihost_utils.sync_global_devices("resnet3 barrier")

    def close(self) -> None:
        """Leave the group; a second call does nothing."""
        if self._open:
            self._open = False
            jax.distributed.shutdown()


def _use_interface(iface: str) -> None:
    """Give gloo `iface` when JAX builds its CPU client (see the module's doc)."""
    from jax._src.lib import xla_client
    make = xla_client._xla.make_gloo_tcp_collectives
    if not isinstance(make, functools.partial):
        xla_client._xla.make_gloo_tcp_collectives = functools.partial(make, interface=iface)


def join(workers: int, rank: int, sync_bn: bool = False) -> Engine:
    """Join the group that common.commands.launch started (RESNET3_JAX_COORDINATOR names the
    coordinator); gloo's collectives on the CPU."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    if not (isinstance(rank, int) and 0 <= rank < workers):
        raise ValueError(f"rank: expected an integer in [0, {workers}), got {rank!r}")
    _refuse_sync_bn(sync_bn)  # before anything connects: the refusal must not hang
    address = os.environ.get(COORDINATOR)
    if not address:
        raise Error(f"{COORDINATOR}: expected the coordinator's host:port in the environment "
                    f"(common.commands.launch sets it), got nothing")
    if os.environ.get(IFACE):
        _use_interface(os.environ[IFACE])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=workers,
                               process_id=rank)
    return Engine(workers, rank, sync_bn)
