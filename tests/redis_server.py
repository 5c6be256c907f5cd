"""A throwaway ``redis-server`` on a free loopback port, for integration tests.

Started with persistence off (``--save '' --appendonly no``: tests need a
shared store, not durability) in a temporary folder, and killed at the end.
Missing ``redis-server``: the test is skipped with the reason locally and
fails in CI (``CI`` set), where a skip would hide a broken prerequisite.

:func:`redis_cluster` does the same for a 3-master Redis Cluster (``redis-server
--cluster-enabled yes`` per node, then ``redis-cli --cluster create``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stitcher.drill.rig import free_port, redis_ping


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run a redis-server until the block ends; yields its ``redis://`` URL."""
    binary = require_redis_server()
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)  # waiting for a child process to listen: nothing to block on
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


class RedisProcess:
    """A redis-server with append-only persistence that a test can SIGKILL and start
    again on the same port and folder, as a crashed and restarted Redis.

    ``fsync``: ``always`` (every write on disk before Redis answers) or ``everysec``
    (Redis answers first; when a background fsync is slow it even postpones the
    write, so a crash can lose a second or two of acknowledged writes)."""

    def __init__(self, workdir: Path, fsync: str = "always") -> None:
        self.fsync = fsync
        self.binary = require_redis_server()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", self.fsync, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)  # a child process starting to listen: nothing to block on

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def require_redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        reason = "redis-cli is not installed (apt-get install redis-tools)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port in taken or port + 10000 in taken or port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _cluster_ok(cli: str, port: int) -> bool:
    info = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
                          capture_output=True, text=True, timeout=5, check=False).stdout
    return "cluster_state:ok" in info


@contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[str]:
    """Run a ``masters``-master Redis Cluster (no replicas) on free loopback ports
    until the block ends; yields a ``redis://`` URL of one node (the client finds
    the others)."""
    binary = require_redis_server()
    cli = require_redis_cli()
    taken: set[int] = set()
    ports: list[int] = []
    for _ in range(masters):
        port = _cluster_port(taken)
        taken |= {port, port + 10000}
        ports.append(port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node = workdir / f"node{port}"
            node.mkdir(parents=True, exist_ok=True)
            procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf"),
                 "--appendonly", "no", "--save", "", "--dir", str(node)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        for port, proc in zip(ports, procs, strict=True):
            while not redis_ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server (cluster node) did not start on {port}")
                time.sleep(0.02)  # a child process starting to listen: nothing to block on
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n"
                               f"{created.stderr}")
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(cli, p) for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster never reached cluster_state:ok")
            time.sleep(0.1)  # gossip converging between the nodes: nothing to block on
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)
