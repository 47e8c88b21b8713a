"""How `resnet3 launch` (common.commands.launch) starts TensorFlow's workers: one process per
worker, each with `TF_CONFIG` naming every worker and its own index, for
`MultiWorkerMirroredStrategy`. Imports no framework: the launcher stays light."""
from __future__ import annotations

import json
import sys
from typing import Callable, Sequence


def plan(command: Sequence[str], workers: int, hosts: Sequence[str], host_rank: int,
         port: int | None, free_ports: Callable[[int], list[int]],
         env: dict[str, str], *, iface: str | None = None
         ) -> list[tuple[str, list[str], dict[str, str]]]:
    """This machine's processes, (name, argv, extra environment) each, for `workers` workers
    in all running `python <command>`, split equally over `hosts` (this machine is
    hosts[host_rank]); `port`: the first port every host can use, else `free_ports(n)` gives
    free ones; `env`: what every process gets. `iface` changes nothing: TF_CONFIG names each
    worker's address, which gRPC binds and dials as given."""
    per_host = workers // len(hosts)
    first = host_rank * per_host  # the global rank of this machine's first worker
    ports = [port + i for i in range(workers)] if port else free_ports(workers)
    cluster = [f"{hosts[i // per_host]}:{ports[i]}" for i in range(workers)]
    return [(f"worker-{r}", [sys.executable, *command], env | {
        "RESNET3_RANK": str(r),
        "TF_CONFIG": json.dumps({"cluster": {"worker": cluster},
                                 "task": {"type": "worker", "index": r}})})
        for r in range(first, first + per_host)]
