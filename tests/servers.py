"""Servers a test starts and stops itself: a private Redis-compatible server, the service's own `serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s")


class RedisServer:
    """A redis-server (or `binary`: valkey-server) on a private port, its data in `directory` (AOF survives restarts).

    `extra` are more command-line options, e.g. ("--replicaof", "127.0.0.1", "6379").
    """

    def __init__(self, directory: Path, *, appendonly: bool = True, appendfsync: str = "always",
                 binary: str = "redis-server", extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, "redis-server did not answer")
        return self

    def kill(self) -> None:
        """Stop it abruptly (SIGKILL): what it acknowledged survives only through its AOF."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: its connections stay open and nothing answers (a hung host)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


class ServiceProcess:
    """`python -m service serve` in a subprocess, configured by environment (docs/api.md §7)."""

    def __init__(self, env: dict[str, str], *, args: tuple[str, ...] = ("--no-migrate", "--workers", "1"),
                 log_path: Path | None = None) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {**os.environ, "HOST": "127.0.0.1", "LOG_LEVEL": "info", **env, "PORT": str(self.port)}
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}; see {self.log_path}")
        try:
            return httpx.get(self.base_url + "/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 30) -> ServiceProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "service", "serve", *self.args], cwd=ROOT,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(self._healthy, timeout, "serve did not become healthy")
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
            raise


class LocalCluster:
    """A Redis Cluster of `masters` redis-server 7.0 nodes (and `replicas` per master) on private
    loopback ports, no persistence, each node's files in its own directory under `directory`.

    `node_timeout_ms` is how long a master may be unreachable before its replica is promoted.
    """

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.directory = directory
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for n in range(masters * (1 + replicas)):
            node_directory = directory / f"node{n}"
            node_directory.mkdir(parents=True)
            # The bus port too is a free one (by default it is the port + 10000, which may be taken or past 65535).
            self.nodes.append(RedisServer(node_directory, appendonly=False, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_directory / "nodes.conf"),
                "--cluster-port", str(free_port()), "--cluster-node-timeout", str(node_timeout_ms),
                # A replica's first sync starts at once (by default a master waits 5 s for more replicas).
                "--repl-diskless-sync-delay", "0")))

    @property
    def url(self) -> str:
        """A seed node's URL (REDIS_URL with REDIS_CLUSTER=true): the first node still running."""
        return next(node.url for node in self.nodes if node.process is not None)

    def cli(self, *args: str, port: int | None = None) -> str:
        port = port if port is not None else next(node.port for node in self.nodes if node.process is not None)
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=30, check=True).stdout

    def is_ok(self) -> bool:
        """Whether every running node says the cluster is ok, with every slot served."""
        for node in self.nodes:
            if node.process is None:
                continue
            info = self.cli("cluster", "info", port=node.port)
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        return True

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.stop()
            raise
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"], capture_output=True, text=True, timeout=60, check=True)
        wait_until(self.is_ok, 30, "the cluster did not become ok")
        wait_until(self._replicas_synced, 30, "the replicas did not sync with their masters")
        return self

    def _replicas_synced(self) -> bool:
        """Whether every replica has finished its first sync (only then can it be promoted)."""
        for node in self.nodes:
            info = self.cli("info", "replication", port=node.port)
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def masters(self) -> dict[int, tuple[int, int]]:
        """port -> (first slot, last slot) of each master serving slots (one range each, as created)."""
        owners: dict[int, tuple[int, int]] = {}
        for line in self.cli("cluster", "nodes").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                first, _, last = fields[8].partition("-")
                owners[int(fields[1].split(":")[1].split("@")[0])] = (int(first), int(last or first))
        return owners

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
