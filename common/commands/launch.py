"""Data-parallel training on each framework's own engine: one command starts the processes.

    python -m common.commands.launch --framework torch --workers 2 -- --dataset mnist5k --epochs 2
    resnet-launch --framework tf --workers 2 -- --dataset mnist5k --batch-size 128 --sync-bn

The flags after `--` are the train script's (`python -m resnet_<fw>.train`); `--batch-size`
is the global batch, which the workers share equally. What starts (each package's module
`launch` plans it, without importing its framework):
- torch: `torch.distributed.run` (torchrun) with N worker processes; gloo on CPU, NCCL on GPU.
- tf: N worker processes, each with `TF_CONFIG` naming every worker and its own index, for
  `MultiWorkerMirroredStrategy`.
- mx: one KVStore scheduler, one server and N workers (`DMLC_*` variables) for `dist_sync`.

On one machine every address is 127.0.0.1 and the ports are free ones picked here. For several
machines, run the same command on each with `--hosts h0,h1,... --host-rank k --port P`
(`--workers` is the total, split equally over the hosts; h0 also runs MXNet's scheduler and
server, and torchrun's rendezvous); `--print-hosts` prints each machine's command. The
engines that choose a network interface themselves (gloo, ps-lite) are handed the one on this
machine's route to the other hosts, or `--iface NAME`.

The launcher enforces `--deadline` seconds, and stops every process it started, with their
children, when any of them fails, when the deadline passes, or on Ctrl-C; it then says which
process failed and why (its exit status and last lines).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from common.commands.cli import (Parser, Terminated, description, guarded, positive_float,
                                 positive_int)
from common.commands.hosts import Watch, check_hosts, interface_to
from common.core.devices import usable_cores
from common.core.errors import Error
from common.frameworks import FRAMEWORKS, module, record

TAIL = 20  # lines of each process's output kept for the failure message


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on 127.0.0.1 now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Process:
    """One process the launcher started: its name (worker-0, server, ...) and its output."""
    name: str
    popen: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL))


@dataclass
class LaunchResult:
    returncode: int
    failure: str | None
    outputs: dict[str, str]


@dataclass
class Plan:
    """The processes of one machine's part: (name, argv, extra environment) each."""
    processes: list[tuple[str, list[str], dict[str, str]]]


def plan(framework: str, workers: int, command: Sequence[str], hosts: Sequence[str] = (),
         host_rank: int = 0, port: int | None = None, iface: str | None = None) -> Plan:
    """The processes this machine starts for `workers` workers in all running `python
    <command>`; hosts empty means this machine alone (127.0.0.1, free ports). On several
    hosts, `iface` is the interface the engines use (launch finds it when none is given)."""
    if framework not in FRAMEWORKS:
        raise Error(f"--framework: expected one of {', '.join(FRAMEWORKS)}, "
                    f"got {framework!r}")
    hosts = list(hosts) or ["127.0.0.1"]
    if workers % len(hosts):
        raise Error(f"--workers: expected a multiple of the {len(hosts)} hosts, "
                    f"got {workers}")
    if not 0 <= host_rank < len(hosts):
        raise Error(f"--host-rank: expected 0..{len(hosts) - 1}, got {host_rank}")
    if len(hosts) > 1 and port is None:
        raise Error("--port: expected a port that every host can use (several hosts "
                    "cannot agree on free ones), got none")
    extra = {"RESNET3_WORKERS": str(workers), "RESNET3_HOST_RANK": str(host_rank)}
    return Plan(module(framework, "launch").plan(command, workers, hosts, host_rank, port,
                                                 free_ports, extra,
                                                 iface=iface if len(hosts) > 1 else None))


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process (Linux /proc): pid -> (parent pid, process group, state)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
            except (OSError, IndexError, ValueError):
                continue
    return out


def _children(pid: int) -> list[int]:
    """Every descendant of pid, deepest last."""
    parents: dict[int, list[int]] = {}
    for child, (ppid, _, _) in _processes().items():
        parents.setdefault(ppid, []).append(child)
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _running(pids: Sequence[int], groups: Sequence[int]) -> list[int]:
    """Those of pids, and the members of groups, that have not ended (a zombie has)."""
    wanted, groups = set(pids), set(groups)
    return [pid for pid, (_, group, state) in _processes().items()
            if (pid in wanted or group in groups) and state not in "ZX"]


def _signal(pids: Sequence[int], groups: Sequence[int], sig: int) -> None:
    for kill, ids in ((os.killpg, groups), (os.kill, pids)):
        for i in ids:
            try:
                kill(i, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(processes: Sequence[Process], grace: float = 5.0) -> None:
    """SIGTERM every process, its process group (each was started in its own, so a child
    orphaned by a worker that died is still found) and its descendants (which may have made
    groups of their own, as torchrun's workers); SIGKILL what remains after `grace` seconds;
    reap them, and return only when none of them runs any more (a signal is delivered
    asynchronously: a busy machine may take a moment to end a process that was sent one).
    Whether one runs is read from /proc, never waited for with Popen.wait: a Ctrl-C that lands
    inside Popen.poll, between its lock's acquire and its try, leaves that lock taken, and a
    wait without a timeout then blocks for ever (CPython's lock is taken before the try)."""
    groups = [p.popen.pid for p in processes]
    pids = [pid for p in processes if p.popen.poll() is None
            for pid in (p.popen.pid, *_children(p.popen.pid))]
    _signal(pids, groups, signal.SIGTERM)
    end = time.monotonic() + grace
    while _running(pids, groups) and time.monotonic() < end:
        time.sleep(0.05)
    _signal(pids, groups, signal.SIGKILL)
    end = time.monotonic() + 30  # SIGKILL cannot be ignored: this is only delivery time
    while (left := _running(pids, groups)) and time.monotonic() < end:
        _signal(left, [], signal.SIGKILL)
        time.sleep(0.05)
    for p in processes:
        p.popen.poll()  # reaps the ended (a zombie ends only when its parent reaps it)


def _read(p: Process, echo) -> None:
    for line in p.popen.stdout:
        p.lines.append(line)
        p.tail.append(line.rstrip("\n"))
        if echo:
            echo(p.name, line)


def _why(p: Process) -> str:
    rc = p.popen.returncode
    status = (f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}")
    last = "\n".join(f"    {line}" for line in p.tail) or "    (no output)"
    name = p.name
    # torchrun names the worker that failed first in its "Root Cause" block.
    text = "".join(p.lines)
    cause = text[text.rfind("Root Cause"):] if "Root Cause" in text else ""
    rank = re.search(r"rank\s*:\s*(\d+)", cause)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    if rank and code:
        worker = int(code.group(1))
        status = (f"killed by signal {signal.Signals(-worker).name}" if worker < 0
                  else f"exit status {worker}")
        name = f"worker-{rank.group(1)} (under torchrun)"
        found = _cause(text[:text.find("Root Cause")])
        if found:
            return f"{name} failed ({status}); its cause: {found}; its last lines:\n{last}"
    return f"{name} failed ({status}); its last lines:\n{last}"


def _cause(text: str) -> str | None:
    """The last error line a worker printed (`SomethingError: ...` or our `error: ...`), not
    torchrun's own report of the failure, which follows it."""
    lines = [line.strip() for line in text.splitlines()
             if re.match(r"\s*(\w+(Error|Exception)(: |$)|error: )", line)
             and "torch.distributed.elastic" not in line and "ChildFailedError" not in line]
    return lines[-1] if lines else None


def launch(framework: str, workers: int, command: Sequence[str], deadline: float = 3600.0,
           env: dict[str, str] | None = None, hosts: Sequence[str] = (), host_rank: int = 0,
           port: int | None = None, echo=None, iface: str | None = None,
           host_timeout: float = 60.0) -> LaunchResult:
    """Start this machine's processes for `python <command>` on `workers` workers and wait.
    Returns when every worker has finished (0), when one fails (its exit status; the others
    are stopped), or at the deadline (124; all stopped). `echo(name, line)` sees every output
    line as it comes. On several hosts the launchers watch each other (common.commands.hosts):
    another host's failure, or `host_timeout` seconds without its heartbeat, stops this one
    too (1), naming that host and its cause."""
    watch = None
    if len(hosts) > 1:  # before anything starts: the hosts, and the interface that reaches them
        check_hosts(hosts)
        iface = iface or interface_to(hosts[1] if host_rank == 0 else hosts[0])
        watch = Watch(hosts, host_rank, port + workers, host_timeout)
    processes: list[Process] = []
    readers = []
    failure, code = None, 0
    try:
        for name, argv, extra in plan(framework, workers, command, hosts, host_rank,
                                      port, iface).processes:
            quiet = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's C++ log, unless asked for
            popen = subprocess.Popen(argv, env={**quiet, **os.environ, **(env or {}), **extra},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)  # a group to stop it by
            processes.append(Process(name, popen))
            readers.append(threading.Thread(target=_read, args=(processes[-1], echo),
                                            daemon=True))
            readers[-1].start()
        end = time.monotonic() + deadline
        workers_only = [p for p in processes if p.name not in ("scheduler", "server")]
        while True:
            if watch and (lost := watch.failure()):
                failure, code = f"{lost}; stopped every process here", 1
                break
            failed = next((p for p in processes if p.popen.poll() not in (None, 0)), None)
            if failed:
                time.sleep(0.5)  # let the others' output and exit statuses arrive
                failure, code = _why(failed), failed.popen.returncode
                break
            if all(p.popen.poll() == 0 for p in workers_only):
                # MXNet's scheduler and server end when the workers have left; allow them a
                # moment, then stop them.
                helpers_end = time.monotonic() + 30
                while any(p.popen.poll() is None for p in processes) and \
                        time.monotonic() < helpers_end:
                    time.sleep(0.1)
                break
            if time.monotonic() > end:
                running = [p.name for p in processes if p.popen.poll() is None]
                failure, code = (f"deadline: expected the run to end within {deadline:g} s, "
                                 f"got {', '.join(running)} still running; stopped them"), 124
                break
            time.sleep(0.1)
    except Terminated:  # SIGTERM under cli.guarded
        failure, code = "terminated (SIGTERM); stopped every process", 143
    except KeyboardInterrupt:
        failure, code = "interrupted (Ctrl-C); stopped every process", 130
    finally:
        if watch:
            watch.finish(failure)
        stop(processes)
        for t in readers:
            t.join(5)
    if code < 0:
        code = 128 - code
    return LaunchResult(code, failure, {p.name: "".join(p.lines) for p in processes})


def host_commands(framework: str, workers: int, hosts: Sequence[str], port: int,
                  train: Sequence[str], iface: str | None = None) -> list[str]:
    """The command each machine runs, for --print-hosts; with `--iface` where one was given
    (without it, each machine finds its own from its route to the others)."""
    named = ["--iface", iface] if iface else []
    return [shlex.join(["python", "-m", "common.commands.launch", "--framework", framework,
                        "--workers", str(workers), "--hosts", ",".join(hosts), "--host-rank",
                        str(k), "--port", str(port), *named, "--", *train])
            for k in range(len(hosts))]


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = Parser(prog="python -m common.commands.launch", description=description(__doc__))
    p.add_argument("--framework", required=True, choices=FRAMEWORKS)
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes in all")
    p.add_argument("--hosts", default="", help="comma-separated machines; empty: this one")
    p.add_argument("--host-rank", type=int, default=0, help="this machine's index in --hosts")
    p.add_argument("--port", type=positive_int, default=None,
                   help="first port (several hosts); default: free ports on 127.0.0.1")
    p.add_argument("--iface", default=None,
                   help="network interface that reaches the other hosts (several hosts); "
                        "default: the one on the route to them")
    p.add_argument("--host-timeout", type=positive_float, default=60.0,
                   help="seconds without another host's heartbeat before the run stops "
                        "(several hosts)")
    p.add_argument("--deadline", type=positive_float, default=24 * 3600.0,
                   help="seconds before every process is stopped")
    p.add_argument("--print-hosts", action="store_true",
                   help="print each machine's command for --hosts and exit")
    args = p.parse_args(own)
    hosts = [h for h in args.hosts.split(",") if h]
    if args.print_hosts:
        if not hosts or args.port is None:
            p.error("--print-hosts: expected --hosts and --port, got "
                    f"{'no --hosts' if not hosts else 'no --port'}")
        check_hosts(hosts, resolve=False)
        print("\n".join(host_commands(args.framework, args.workers, hosts, args.port, train,
                                       args.iface)))
        return 0
    threads = next((train[i + 1] for i, flag in enumerate(train[:-1]) if flag == "--threads"),
                   None)
    if threads is None:
        # The train script's default is every core, per process: share them instead.
        per_host = args.workers // max(1, len(hosts))
        threads = str(max(1, usable_cores() // per_host))
        train += ["--threads", threads]
    command = ["-m", f"{record(args.framework).package}.train", *train]

    def echo(name: str, line: str) -> None:
        """The first worker speaks for the run; every other host prints its workers' epoch
        lines (their speed) with its rank and address, so that its operator sees it train."""
        if args.host_rank == 0 and name in ("worker-0", "torchrun") and \
                not line.startswith("worker-"):
            sys.stdout.write(line)
        elif args.host_rank > 0 and re.match(r"worker-\d+: epoch ", line):
            sys.stdout.write(f"host {args.host_rank} ({hosts[args.host_rank]}): {line}")
        sys.stdout.flush()

    # A SIGTERM to the launcher raises cli.Terminated (guarded): it stops the run as Ctrl-C does.
    # OMP_NUM_THREADS before any framework loads (MXNet reads it once; torchrun warns without)
    result = launch(args.framework, args.workers, command, args.deadline,
                    env={"OMP_NUM_THREADS": threads}, hosts=hosts,
                    host_rank=args.host_rank, port=args.port, echo=echo, iface=args.iface,
                    host_timeout=args.host_timeout)
    if result.failure:
        print(f"error: resnet-launch ({args.framework}, {args.workers} workers): "
              f"{result.failure}", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
