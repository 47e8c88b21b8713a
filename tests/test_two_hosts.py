"""Two network hosts for real: `resnet-launch --hosts` across two Linux network namespaces.

Each test makes two namespaces joined by a veth pair, 10.77.0.1 and 10.77.0.2 (a private range
used only inside them: no traffic leaves them, and the machine's own interfaces are not
touched), runs the launcher on each with one worker per host and the same shared `--out`, and
compares the first worker's final weights with a two-worker run on one host. The hostname
resolves to loopback in both namespaces, as on stock Debian and Ubuntu machines: the launcher
must find the interface that reaches the other host itself (no GLOO_SOCKET_IFNAME or other
variable is set by the test). The namespaces, and every process in them, are removed whatever
happens. Making namespaces needs root (`ip netns`); without it the tests are skipped with that
reason, as the GPU tests are without a GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _why_no_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "needs iproute2's ip to make network namespaces"
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns)"
    return None


class Hosts:
    """Two namespaces, a veth pair between them, an address each; `run(k, argv)` runs a
    process on host k."""

    def __init__(self, tag: str):
        self.names = (f"r3t{tag}a", f"r3t{tag}b")
        self.links = (f"r3v{tag}a", f"r3v{tag}b")

    def make(self) -> None:
        for name in self.names:
            done = _ip("netns", "add", name)
            assert done.returncode == 0, done.stderr
        a, b = self.names
        steps = [("link", "add", self.links[0], "netns", a, "type", "veth", "peer", "name",
                  self.links[1], "netns", b)]
        for name, link, address in zip(self.names, self.links, ADDRESSES):
            steps += [("-n", name, "addr", "add", f"{address}/24", "dev", link),
                      ("-n", name, "link", "set", "lo", "up"),
                      ("-n", name, "link", "set", link, "up")]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"

    def pids(self) -> set[int]:
        found = set()
        for name in self.names:
            done = _ip("netns", "pids", name)
            found |= {int(p) for p in done.stdout.split()}
        return found

    def remove(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for name in self.names:  # deleting a namespace deletes its end of the veth pair
            _ip("netns", "del", name)

    def start(self, k: int, argv: list[str], log: Path) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
        return subprocess.Popen(["ip", "netns", "exec", self.names[k], *argv], cwd=ROOT,
                                env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


@pytest.fixture
def hosts():
    why = _why_no_namespaces()
    if why:
        pytest.skip(why)
    pair = Hosts(str(os.getpid() % 100000))
    try:
        pair.make()
        yield pair
    finally:
        pair.remove()
        listed = _ip("netns", "list").stdout
        assert not any(name in listed for name in pair.names), listed


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


def run_on_two_hosts(hosts: Hosts, framework: str, out: Path, logs: Path) -> list[str]:
    codes = wait_all(start_both(hosts, framework, out, logs), DEADLINE + 60)
    said = [(logs / f"host{k}.log").read_text() for k in range(2)]
    assert codes == [0, 0], f"exit statuses {codes}\n" + "\n".join(s[-3000:] for s in said)
    return said


def one_host(framework: str, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    done = subprocess.run([sys.executable, "-m", "common.commands.launch", "--framework",
                           framework, "--workers", "2", "--deadline", str(DEADLINE), "--",
                           *TRAIN, "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=DEADLINE + 60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_two_hosts_train_to_the_weights_of_two_workers_on_one(framework, hosts, tmp_path):
    from common.core.weights import load_weights
    logs = tmp_path / "logs"
    logs.mkdir()
    said = run_on_two_hosts(hosts, framework, tmp_path / "two", logs)
    assert "epoch 1/1: loss" in said[0], said[0][-2000:]
    # host 1 reports too: its rank, its address, its worker's epoch line with the speed
    assert "host 1 (10.77.0.2): worker-1: epoch 1/1: loss" in said[1], said[1][-2000:]
    assert "worker-1" not in said[0]  # the first host shows the first worker alone
    assert "examples/sec" in said[1].split("host 1 (10.77.0.2)", 1)[1]
    one_host(framework, tmp_path / "one")
    a = load_weights(tmp_path / "two" / "weights.safetensors")
    b = load_weights(tmp_path / "one" / "weights.safetensors")
    assert list(a) == list(b)
    worst = max(float(np.abs(a[n] - b[n]).max() / max(np.abs(b[n]).max(), 1e-12)) for n in a)
    assert worst <= 1e-6, f"largest relative difference {worst:.2e}"
    deadline = time.monotonic() + 10
    while hosts.pids() and time.monotonic() < deadline:  # every launcher and worker is gone
        time.sleep(0.2)
    assert not hosts.pids(), f"left running: {hosts.pids()}"


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


def test_the_interface_is_the_one_on_the_route_to_the_other_host(hosts):
    """From inside host 1, the route to host 0 leaves by host 1's end of the veth pair; the
    plan hands it to the engines that choose an interface themselves."""
    code = ("from common.commands.launch import interface_to, plan\n"
            f"iface = interface_to({ADDRESSES[0]!r})\n"
            "print(iface)\n"
            f"for fw in {list(FRAMEWORKS)!r}:\n"
            f"    (_, _, env), *_ = plan(fw, 2, ['x.py'], {list(ADDRESSES)!r}, 1, {PORT}, iface).processes\n"
            "    print(fw, env.get('GLOO_SOCKET_IFNAME'), env.get('DMLC_INTERFACE'))\n")
    done = subprocess.run(["ip", "netns", "exec", hosts.names[1], sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
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


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_host_stopped_mid_run_stops_the_other_with_its_cause(framework, hosts, tmp_path):
    """Host 1's launcher gets SIGTERM after the first epoch: it stops its processes (143) and
    says why, and host 0's launcher stops its own within the heartbeat's bound, naming host 1
    and quoting its cause (MXNet's scheduler, server and workers would otherwise wait on in
    silence until --deadline)."""
    import signal
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = start_both(hosts, framework, tmp_path / "run", logs, 50)
    try:
        assert wait_for(logs / "host0.log", "epoch 1/50", DEADLINE), \
            (logs / "host0.log").read_text()[-3000:]
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
    assert took < 60, f"host 0 took {took:.1f} s to stop"
    end = time.monotonic() + 10
    while hosts.pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert not hosts.pids(), f"left running: {hosts.pids()}"


def test_both_hosts_resume_after_a_stop_to_the_uninterrupted_weights(hosts, tmp_path):
    """PyTorch: a two-host run stopped by SIGTERM to host 1 after its first epoch, then
    `--resume` on both hosts, ends with the weights of an uninterrupted two-worker run: the
    first worker's checkpoint in the shared --out is where both hosts start again."""
    import signal

    from common.core.weights import load_weights
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = start_both(hosts, "torch", tmp_path / "run", logs, 4)
    try:
        assert wait_for(logs / "host0.log", "epoch 1/4", DEADLINE)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        codes = wait_all(procs, 90)
    assert codes == [1, 143], codes
    assert "epoch 4/4" not in (logs / "host0.log").read_text()
    again = start_both(hosts, "torch", tmp_path / "run", logs, 4, "--resume", name="again")
    codes = wait_all(again, DEADLINE + 60)
    assert codes == [0, 0], (logs / "again0.log").read_text()[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    train = [*TRAIN[:-1], "4", "--out", str(tmp_path / "one")]
    done = subprocess.run([sys.executable, "-m", "common.commands.launch", "--framework",
                           "torch", "--workers", "2", "--deadline", str(DEADLINE), "--", *train],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=DEADLINE + 60)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_weights(tmp_path / "run" / "weights.safetensors")
    b = load_weights(tmp_path / "one" / "weights.safetensors")
    worst = max(float(np.abs(a[n] - b[n]).max() / max(np.abs(b[n]).max(), 1e-12)) for n in a)
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
        for pid in {int(p) for p in _ip("netns", "pids", hosts.names[1]).stdout.split()}:
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
