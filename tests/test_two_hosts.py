"""Two network hosts for real: `resnet-launch --hosts` across two Linux network namespaces.

Each test makes two namespaces joined by a veth pair, 10.77.0.1 and 10.77.0.2 (a private range
used only inside them: no traffic leaves them, and the machine's own interfaces are not
touched), runs the launcher on each with one worker per host and the same shared `--out`, and
compares the first worker's final weights with a two-worker run on one host. The hostname
resolves to loopback in both namespaces, as on stock Debian and Ubuntu machines: the launcher
must find the interface that reaches the other host itself (no GLOO_SOCKET_IFNAME or other
variable is set by the test). The namespaces, and every process in them, are removed whatever
happens. They are made inside an unprivileged user namespace (`unshare -Urnm`) where the kernel
allows one, so no root is needed; else with root's `ip netns`; only where neither works are the
tests skipped, with the reasons, as the GPU tests are without a GPU. The interface test runs
both ways.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.commands.train import CHECKPOINT
from common.frameworks import FRAMEWORKS

ROOT = Path(__file__).resolve().parents[1]
ADDRESSES = ("10.77.0.1", "10.77.0.2")
PORT = 29511
DEADLINE = 200  # seconds for one launch; these take 10-30 s on 2 shared cores
TRAIN = ["--arch", "cifar_resnet20", "--dataset", "digits", "--limit", "64", "--resize", "0",
         "--batch-size", "32", "--threads", "1", "--lr", "0.1", "--momentum", "0.9",
         "--epochs", "1"]
# What the user did not set: the test proves the launcher needs none of it.
HIDDEN = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "DMLC_INTERFACE", "DMLC_NODE_HOST",
          "MASTER_ADDR", "TF_CONFIG")


def _ip(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, timeout=30)


def _user_namespace_holder() -> tuple[subprocess.Popen | None, str]:
    """A process in a new user, network and mount namespace (`unshare -Urnm`, no root needed),
    in which this process's user is root: `ip netns` works there on a private /run. (holder,
    "") once it is ready, else (None, the reason)."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return None, "needs util-linux's unshare and nsenter"
    holder = subprocess.Popen(
        ["unshare", "-Urnm", "sh", "-c",
         "mount -t tmpfs r3t /run && mkdir -p /run/netns && echo ready && exec sleep 100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    line = holder.stdout.readline().strip()
    if line == "ready":
        return holder, ""
    holder.kill()
    why = holder.stderr.read().strip().splitlines()
    holder.wait()
    return None, f"unshare -Urnm: {why[-1] if why else 'failed'}"


class Hosts:
    """Two namespaces, a veth pair between them, an address each; `start(k, argv, log)` runs a
    process on host k. Made inside an unprivileged user namespace when the kernel allows one
    (`unshare -Urnm`: no root needed, and nothing appears in the machine's `ip netns list`),
    else with root's `ip netns`; `how` forces one ("user" or "root")."""

    def __init__(self, tag: str, how: str):
        self.names = (f"r3t{tag}a", f"r3t{tag}b")
        self.links = (f"r3v{tag}a", f"r3v{tag}b")
        self.how = how
        self.holder: subprocess.Popen | None = None
        self.prefix: tuple[str, ...] = ()  # what enters the user namespace, if any

    def make(self) -> None:
        if self.how == "user":
            self.holder, why = _user_namespace_holder()
            assert self.holder is not None, why
            self.prefix = ("nsenter", "-t", str(self.holder.pid), "-U", "-m", "-n",
                           "--preserve-credentials")
        for name in self.names:
            done = _ip("netns", "add", name, prefix=self.prefix)
            assert done.returncode == 0, done.stderr
        a, b = self.names
        steps = [("link", "add", self.links[0], "netns", a, "type", "veth", "peer", "name",
                  self.links[1], "netns", b)]
        for name, link, address in zip(self.names, self.links, ADDRESSES):
            steps += [("-n", name, "addr", "add", f"{address}/24", "dev", link),
                      ("-n", name, "link", "set", "lo", "up"),
                      ("-n", name, "link", "set", link, "up")]
        for step in steps:
            done = _ip(*step, prefix=self.prefix)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"

    def argv(self, k: int, argv: list[str]) -> list[str]:
        """`argv` as a command that runs it on host k."""
        return [*self.prefix, "ip", "netns", "exec", self.names[k], *argv]

    def pids(self, k: int | None = None) -> set[int]:
        """The processes on host k (both hosts when None); the machine's PIDs."""
        found = set()
        for name in self.names if k is None else (self.names[k],):
            done = _ip("netns", "pids", name, prefix=self.prefix)
            found |= {int(p) for p in done.stdout.split()}
        return found

    def remove(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if self.holder is not None:  # its namespaces end with the last process in them
            self.holder.kill()
            self.holder.wait(timeout=30)
            return
        for name in self.names:  # deleting a namespace deletes its end of the veth pair
            _ip("netns", "del", name)

    def left(self) -> list[str]:
        """What remains after `remove`: namespaces listed by the machine, or the holder."""
        listed = _ip("netns", "list").stdout
        left = [name for name in self.names if name in listed]
        if self.holder is not None and self.holder.poll() is None:
            left.append(f"holder {self.holder.pid}")
        return left

    def start(self, k: int, argv: list[str], log: Path) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
        return subprocess.Popen(self.argv(k, argv), cwd=ROOT, env=env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _how() -> str:
    """How this machine makes the namespaces: "user" (unprivileged), else "root"; a skip
    with both reasons where neither works."""
    holder, why = _user_namespace_holder()
    if holder is not None:
        holder.kill()
        holder.wait()
        return "user"
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip to make network namespaces")
    if os.geteuid() == 0:
        return "root"
    pytest.skip(f"cannot make network namespaces: {why}; and ip netns needs root")


def _make_hosts(how: str):
    pair = Hosts(str(os.getpid() % 100000), how)
    try:
        pair.make()
        yield pair
    finally:
        pair.remove()
        assert not pair.left(), pair.left()


@pytest.fixture
def hosts():
    yield from _make_hosts(_how())


@pytest.fixture(params=["user", "root"])
def hosts_each_way(request):
    """The two hosts made each way this machine allows: both ways are code the tests rely on."""
    if request.param == "root" and (os.geteuid() != 0 or shutil.which("ip") is None):
        pytest.skip("ip netns needs root and iproute2")
    if request.param == "user":
        holder, why = _user_namespace_holder()
        if holder is None:
            pytest.skip(f"cannot make a user namespace: {why}")
        holder.kill()
        holder.wait()
    yield from _make_hosts(request.param)


def launch_argv(framework: str, k: int, out: Path, epochs: int = 1,
                *extra: str) -> list[str]:
    """Host k's launcher command; `extra`: more train flags (--resume)."""
    train = [*TRAIN[:-1], str(epochs), "--out", str(out), *extra]
    return [sys.executable, "-m", "common.commands.launch", "--framework", framework,
            "--workers", "2", "--hosts", ",".join(ADDRESSES), "--host-rank", str(k),
            "--port", str(PORT), "--host-timeout", "15", "--deadline", str(DEADLINE), "--",
            *train]


def start_both(hosts: Hosts, framework: str, out: Path, logs: Path, epochs: int = 1,
               *extra: str, name: str = "host") -> list[subprocess.Popen]:
    return [hosts.start(k, launch_argv(framework, k, out, epochs, *extra),
                        logs / f"{name}{k}.log") for k in range(2)]


def wait_all(procs: list[subprocess.Popen], seconds: float) -> list[int]:
    """Their exit statuses; whatever still runs after `seconds` is killed (a test failure)."""
    try:
        return [p.wait(timeout=seconds) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def one_host(framework: str, out: Path, epochs: int = 1) -> None:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    done = subprocess.run([sys.executable, "-m", "common.commands.launch", "--framework",
                           framework, "--workers", "2", "--deadline", str(DEADLINE), "--",
                           *TRAIN[:-1], str(epochs), "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=DEADLINE + 60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_loopback_host_among_several_is_refused_with_the_reason(tmp_path):
    done = subprocess.run([sys.executable, "-m", "common.commands.launch", "--framework", "tf",
                           "--workers", "2", "--hosts", "127.0.0.1,10.77.0.2", "--port",
                           str(PORT), "--", *TRAIN, "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert ("error: --hosts: expected addresses the other hosts can reach, got '127.0.0.1' "
            "(127.0.0.1, loopback) among 2 hosts") in done.stderr
    assert "Traceback" not in done.stderr


def test_print_hosts_names_the_interface_when_given(capsys):
    from common.commands.launch import main
    assert main(["--framework", "torch", "--workers", "2", "--hosts", ",".join(ADDRESSES),
                 "--port", str(PORT), "--iface", "eth1", "--print-hosts", "--", "--epochs",
                 "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for k, line in enumerate(lines):
        assert f"--host-rank {k} --port {PORT} --iface eth1 -- --epochs 1" in line, line


def test_the_interface_is_the_one_on_the_route_to_the_other_host(hosts_each_way):
    """From inside host 1, the route to host 0 leaves by host 1's end of the veth pair; the
    plan hands it to the engines that choose an interface themselves."""
    code = ("from common.commands.launch import interface_to, plan\n"
            f"iface = interface_to({ADDRESSES[0]!r})\n"
            "print(iface)\n"
            f"for fw in {list(FRAMEWORKS)!r}:\n"
            f"    (_, _, env), *_ = plan(fw, 2, ['x.py'], {list(ADDRESSES)!r}, 1, {PORT}, iface).processes\n"
            "    print(fw, env.get('GLOO_SOCKET_IFNAME'), env.get('DMLC_INTERFACE'))\n")
    hosts = hosts_each_way
    done = subprocess.run(hosts.argv(1, [sys.executable, "-c", code]), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    link = hosts.links[1]
    assert lines[0] == link
    assert f"torch {link} None" in lines and f"mx None {link}" in lines
    assert "tf None None" in lines


def test_print_hosts_refuses_a_loopback_host_as_written(capsys):
    from common.commands.launch import main
    assert main(["--framework", "mx", "--workers", "2", "--hosts", "localhost,10.77.0.2",
                 "--port", str(PORT), "--print-hosts"]) == 2
    assert "got 'localhost' (127.0.0.1, loopback) among 2 hosts" in capsys.readouterr().err


def wait_for(path: Path, text: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def worst_difference(a_path: Path, b_path: Path) -> float:
    """The largest difference between two weights files, relative to each tensor's largest
    value; their names must be the same, in the same order."""
    from common.core.weights import load_weights
    a, b = load_weights(a_path), load_weights(b_path)
    assert list(a) == list(b)
    return max(float(np.abs(a[n] - b[n]).max() / max(np.abs(b[n]).max(), 1e-12)) for n in a)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_host_stopped_mid_run_stops_the_other_and_both_resume_to_the_weights_of_one_host(
        framework, hosts, tmp_path):
    """Host 1's launcher gets SIGTERM after the first epoch: it stops its processes (143) and
    says why, and host 0's launcher stops its own within the heartbeat's bound, naming host 1
    and quoting its cause (MXNet's scheduler, server and workers would otherwise wait on in
    silence until --deadline). Then `--resume` on both hosts continues from the checkpoint the
    first worker wrote to the shared --out; each host reports its epochs, and the run ends with
    the weights of an uninterrupted two-worker run on one host (float32 rounding)."""
    import signal
    logs = tmp_path / "logs"
    logs.mkdir()
    # Stopped in a run of 50 epochs, resumed to two epochs beyond the last one done (--epochs
    # may grow on --resume, and the learning rate does not depend on it).
    procs = start_both(hosts, framework, tmp_path / "run", logs, 50)
    try:
        assert wait_for(logs / "host0.log", "epoch 1/50", DEADLINE), \
            (logs / "host0.log").read_text()[-3000:]
        # The epoch line comes before its checkpoint is written: stop once there is one to
        # resume from (on a loaded machine the SIGTERM once came between the two).
        end = time.monotonic() + DEADLINE
        while not (tmp_path / "run" / CHECKPOINT).exists() and time.monotonic() < end:
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        stopped = time.monotonic()
    finally:
        codes = wait_all(procs, 90)
    took = time.monotonic() - stopped
    said = [(logs / f"host{k}.log").read_text() for k in range(2)]
    assert codes[1] == 143, said[1][-2000:]
    assert "terminated (SIGTERM); stopped every process" in said[1]
    assert codes[0] == 1, said[0][-2000:]
    assert ("error: resnet-launch (" + framework + ", 2 workers): host 1 (10.77.0.2) failed: "
            "terminated (SIGTERM); stopped every process here") in said[0], said[0][-2000:]
    done = [int(k) for k in re.findall(r"^epoch (\d+)/50: loss", said[0], re.M)]
    assert done and done[-1] < 50, said[0][-2000:]
    epochs = done[-1] + 2
    assert took < 60, f"host 0 took {took:.1f} s to stop"
    end = time.monotonic() + 10
    while hosts.pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert not hosts.pids(), f"left running: {hosts.pids()}"

    again = start_both(hosts, framework, tmp_path / "run", logs, epochs, "--resume",
                       name="again")
    codes = wait_all(again, DEADLINE + 60)
    said = [(logs / f"again{k}.log").read_text() for k in range(2)]
    assert codes == [0, 0], f"exit statuses {codes}\n" + "\n".join(s[-3000:] for s in said)
    assert f"epoch {epochs}/{epochs}: loss" in said[0], said[0][-2000:]
    # host 1 reports too: its rank, its address, its worker's epoch line with the speed
    line = f"host 1 (10.77.0.2): worker-1: epoch {epochs}/{epochs}: loss"
    assert line in said[1], said[1][-2000:]
    assert "examples/sec" in said[1].split(line, 1)[1]
    assert "worker-1" not in said[0]  # the first host shows the first worker alone
    one_host(framework, tmp_path / "one", epochs)
    worst = worst_difference(tmp_path / "run" / "weights.safetensors",
                             tmp_path / "one" / "weights.safetensors")
    assert worst <= 1e-6, f"largest relative difference {worst:.2e}"


def test_a_host_that_dies_whole_stops_the_other(hosts, tmp_path):
    """Every process of host 1 is SIGKILLed at once (a machine that dies: its launcher says
    nothing). MXNet, whose engine would wait in silence: host 0's launcher notices the broken
    heartbeat connection, stops its scheduler, server and worker, and names host 1."""
    import signal
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = start_both(hosts, "mx", tmp_path / "run", logs, 50)
    try:
        assert wait_for(logs / "host0.log", "epoch 1/50", DEADLINE)
        for pid in hosts.pids(1):
            os.kill(pid, signal.SIGKILL)
        stopped = time.monotonic()
    finally:
        code = wait_all(procs, 90)[0]
    took = time.monotonic() - stopped
    said = (logs / "host0.log").read_text()
    assert code == 1, said[-2000:]
    assert ("error: resnet-launch (mx, 2 workers): host 1 (10.77.0.2) stopped: its launcher's "
            "connection closed; stopped every process here") in said, said[-2000:]
    assert took < 60, f"host 0 took {took:.1f} s to stop"
