"""Several machines under `resnet3 launch --hosts`: the interface that reaches the others, the
host list's sanity, and a heartbeat between the launchers.

The engines notice a dead peer only in their own time: gloo and TensorFlow's collectives when
a transfer breaks, MXNet's ps-lite not at all (its scheduler, server and workers wait on in
silence). So the launchers watch each other. The first host's launcher listens on the
heartbeat port (`--port` plus the number of workers: the ports below it are the engines');
every other launcher connects to it. Each side writes a line every `INTERVAL` seconds and
reads the other's; a launcher that stops writing for `timeout` seconds, or whose connection
breaks, is dead. A launcher whose run fails says so first (`failed <host> <reason>`), and the
first host passes it on to the others, so that every host stops with the cause. Nothing but
these short lines crosses: no data, no code.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Sequence

from common.core.errors import Error

INTERVAL = 2.0  # seconds between heartbeat lines


def _address_of(name: str) -> str | None:
    """The IPv4 address of the interface `name` (Linux SIOCGIFADDR), None if it has none."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_to(host: str) -> str:
    """The name of this machine's interface whose route reaches `host`: the source address the
    kernel picks for a UDP socket connected there (nothing is sent), matched to an interface."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            local = s.getsockname()[0]
    except OSError as e:
        raise Error(f"--hosts: expected a host this machine can reach, got {host!r} ({e}); "
                    "or name the interface with --iface") from None
    for _, name in socket.if_nameindex():
        if _address_of(name) == local:
            return name
    raise Error(f"--iface: expected an interface holding {local}, the address that reaches "
                f"{host!r}, found none; name it with --iface")


def check_hosts(hosts: Sequence[str], resolve: bool = True) -> None:
    """Several hosts must name addresses the others can reach: a host that resolves to
    loopback (127.x, ::1) would tell every other host to connect to itself. `resolve=False`
    (--print-hosts, which may run where the cluster's names do not resolve) checks the
    names as written."""
    if len(hosts) < 2:
        return
    for host in hosts:
        try:
            address = socket.gethostbyname(host) if resolve else (
                "127.0.0.1" if host == "localhost" else host)
        except OSError as e:
            raise Error(f"--hosts: expected names or addresses that resolve, got {host!r} "
                        f"({e})") from None
        if address.startswith("127.") or address == "::1":
            raise Error(f"--hosts: expected addresses the other hosts can reach, got {host!r} "
                        f"({address}, loopback) among {len(hosts)} hosts")


class Watch:
    """This launcher's side of the heartbeat. `failure()` is None while every other host is
    alive, else one line naming the host and why; `finish(failure)` tells the others how this
    host ended. The first host (rank 0) is the hub; the others talk only to it."""

    def __init__(self, hosts: Sequence[str], host_rank: int, port: int, timeout: float):
        self.hosts, self.rank, self.port, self.timeout = list(hosts), host_rank, port, timeout
        self._lock = threading.Lock()
        self._peers: dict[int, socket.socket] = {}  # rank -> connection (the hub holds several)
        self._seen: dict[int, float] = {}
        self._done: set[int] = set()
        self._failure: str | None = None
        self._closing = False
        if host_rank == 0:
            self._server = socket.create_server(("", port), reuse_port=False)
            self._server.settimeout(1.0)
            threading.Thread(target=self._accept, daemon=True).start()
            self._started = time.monotonic()
        else:
            self._connect()
        threading.Thread(target=self._beat, daemon=True).start()

    def _name(self, rank: int) -> str:
        return f"host {rank} ({self.hosts[rank]})"

    def _connect(self) -> None:
        """Reach the hub, retrying until `timeout`: it may not have started yet."""
        end = time.monotonic() + self.timeout
        while True:
            try:
                conn = socket.create_connection((self.hosts[0], self.port), timeout=5)
                break
            except OSError as e:
                if time.monotonic() > end:
                    raise Error(f"--hosts: expected the launcher of {self._name(0)} to answer "
                                f"on port {self.port} within {self.timeout:g} s, got {e}") from None
                time.sleep(0.5)
        conn.settimeout(None)
        self._add(0, conn)
        self._send(conn, f"hello {self.rank}")

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(None)
            threading.Thread(target=self._hello, args=(conn,), daemon=True).start()

    def _hello(self, conn: socket.socket) -> None:
        line = conn.makefile("r").readline().split()
        if len(line) == 2 and line[0] == "hello" and line[1].isdigit():
            self._add(int(line[1]), conn)

    def _add(self, rank: int, conn: socket.socket) -> None:
        with self._lock:
            self._peers[rank] = conn
            self._seen[rank] = time.monotonic()
        threading.Thread(target=self._listen, args=(rank, conn), daemon=True).start()

    def _send(self, conn: socket.socket, line: str) -> None:
        try:
            conn.sendall((line + "\n").encode())
        except OSError:
            pass  # the reader notices the broken connection

    def _listen(self, rank: int, conn: socket.socket) -> None:
        for raw in conn.makefile("r"):
            words = raw.rstrip("\n").split(" ", 2)
            with self._lock:
                self._seen[rank] = time.monotonic()
            if words[0] == "done":
                with self._lock:
                    self._done.add(rank)
            elif words[0] == "failed" and len(words) == 3:
                self._fail(f"{self._name(int(words[1]))} failed: {words[2]}", relay=raw)
        with self._lock:
            gone = rank not in self._done and not self._closing
        if gone:
            self._fail(f"{self._name(rank)} stopped: its launcher's connection closed")

    def _fail(self, why: str, relay: str | None = None) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = why
            peers = list(self._peers.values())
        if relay and self.rank == 0:  # the hub passes a failure on to every other host
            for conn in peers:
                self._send(conn, relay.rstrip("\n"))

    def _beat(self) -> None:
        while not self._closing:
            with self._lock:
                peers = list(self._peers.items())
                seen = dict(self._seen)
            for _, conn in peers:
                self._send(conn, "ok")
            now = time.monotonic()
            for rank, last in seen.items():
                if rank not in self._done and now - last > self.timeout:
                    self._fail(f"{self._name(rank)} stopped: no heartbeat for "
                               f"{self.timeout:g} s")
            if self.rank == 0 and now - self._started > self.timeout:
                missing = [r for r in range(1, len(self.hosts)) if r not in seen]
                if missing:
                    self._fail(f"{self._name(missing[0])} never joined: no launcher connected "
                               f"within {self.timeout:g} s")
            time.sleep(INTERVAL)

    def failure(self) -> str | None:
        with self._lock:
            return self._failure

    def finish(self, failure: str | None) -> None:
        """Tell the others how this host ended (its first line of failure, or done), then
        close."""
        cause = None if failure is None else failure.splitlines()[0].split("; stopped")[0]
        line = "done" if cause is None else f"failed {self.rank} {cause}"
        with self._lock:
            self._closing = True
            peers = list(self._peers.values())
        for conn in peers:
            self._send(conn, line)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        if self.rank == 0:
            self._server.close()
