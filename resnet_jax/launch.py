"""How `resnet3 launch` (common.commands.launch) starts JAX's workers: one process per worker,
each told the coordinator's address (the first host, on the first port) for
`jax.distributed.initialize`; the CPU collectives are gloo's (resnet_jax/distributed.py).
Imports no framework: the launcher stays light."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

COORDINATOR = "RESNET3_JAX_COORDINATOR"  # host:port of jax.distributed's coordination service
IFACE = "RESNET3_JAX_IFACE"  # the interface gloo binds to, on several hosts


def plan(command: Sequence[str], workers: int, hosts: Sequence[str], host_rank: int,
         port: int | None, free_ports: Callable[[int], list[int]],
         env: dict[str, str], *, iface: str | None = None
         ) -> list[tuple[str, list[str], dict[str, str]]]:
    """This machine's processes, (name, argv, extra environment) each, for `workers` workers
    in all running `python <command>`, split equally over `hosts` (this machine is
    hosts[host_rank]); `port`: the first port every host can use, else `free_ports(n)` gives
    free ones; `env`: what every process gets; `iface`: the interface gloo binds to. Without
    it, gloo advertises the address of this machine's hostname, which stock Debian and Ubuntu
    resolve to 127.0.0.1: the other hosts then cannot connect (as for PyTorch's gloo)."""
    if iface:
        env = env | {IFACE: iface}
    per_host = workers // len(hosts)
    first = host_rank * per_host  # the global rank of this machine's first worker
    coordinator = f"{hosts[0]}:{port or free_ports(1)[0]}"
    return [(f"worker-{r}", [sys.executable, *command],
             env | {COORDINATOR: coordinator, "RESNET3_RANK": str(r)})
            for r in range(first, first + per_host)]
