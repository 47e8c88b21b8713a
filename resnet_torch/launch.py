"""How `resnet3 launch` (common.commands.launch) starts PyTorch's workers: one
`torch.distributed.run` (torchrun) per machine with its share of the worker processes; gloo on
CPU, NCCL on GPU. Imports no framework: the launcher stays light."""
from __future__ import annotations

import sys
from typing import Callable, Sequence


def plan(command: Sequence[str], workers: int, hosts: Sequence[str], host_rank: int,
         port: int | None, free_ports: Callable[[int], list[int]],
         env: dict[str, str], *, iface: str | None = None
         ) -> list[tuple[str, list[str], dict[str, str]]]:
    """This machine's processes, (name, argv, extra environment) each, for `workers` workers
    in all running `python <command>`, split equally over `hosts` (this machine is
    hosts[host_rank]); `port`: the first port every host can use, else `free_ports(n)` gives
    free ones; `env`: what every process gets; `iface`: the interface gloo binds to.
    Without GLOO_SOCKET_IFNAME gloo advertises the address of this machine's hostname, which
    stock Debian and Ubuntu resolve to 127.0.0.1: the other hosts then cannot connect."""
    if iface:
        env = env | {"GLOO_SOCKET_IFNAME": iface}
    per_host = workers // len(hosts)
    master = port or free_ports(1)[0]
    rdzv = ["--standalone"] if len(hosts) == 1 else [
        f"--nnodes={len(hosts)}", f"--node-rank={host_rank}", f"--master-addr={hosts[0]}",
        f"--master-port={master}"]
    argv = [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc-per-node={per_host}",
            *command]
    return [("torchrun", argv, env)]
