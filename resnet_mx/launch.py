"""How `resnet3 launch` (common.commands.launch) starts MXNet's workers: one KVStore scheduler
and one server (on the first machine) and the workers, told their roles by `DMLC_*` variables,
for `dist_sync`. Imports no framework: the launcher stays light."""
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
    free ones; `env`: what every process gets; `iface`: the interface ps-lite's scheduler,
    server and workers announce (DMLC_INTERFACE)."""
    if iface:
        env = env | {"DMLC_INTERFACE": iface}
    per_host = workers // len(hosts)
    first = host_rank * per_host  # the global rank of this machine's first worker
    root = port or free_ports(1)[0]
    dmlc = env | {"DMLC_PS_ROOT_URI": hosts[0], "DMLC_PS_ROOT_PORT": str(root),
                  "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": str(workers)}
    serve = [sys.executable, "-m", "resnet_mx.distributed"]
    roles = [("scheduler", serve, dmlc | {"DMLC_ROLE": "scheduler"}),
             ("server", serve, dmlc | {"DMLC_ROLE": "server"})] if host_rank == 0 else []
    return roles + [(f"worker-{r}", [sys.executable, *command],
                     dmlc | {"DMLC_ROLE": "worker", "RESNET3_RANK": str(r)})
                    for r in range(first, first + per_host)]
