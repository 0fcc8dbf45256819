"""A real redis-server for the feature-store tests: started once per session on a free loopback port.

No system service is used or needed: the fixture runs its own server (no persistence, a temp
dir) and stops it at the end. Without the `redis-server` binary the Redis tests are skipped
with a reason that says how to install it; under CI (CI=true, where .ci/run installs it) they
fail instead, so that a missing install step cannot pass as a green run.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = ("install it with `sudo apt-get install redis-server` (Debian/Ubuntu; no service needed, "
                "the tests start their own) or `brew install redis` (macOS); .ci/run installs it in CI")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_ping(proc: subprocess.Popen, port: int, log: Path, timeout: float = 15.0) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # exited: e.g. the port was taken between probe and bind
                return False
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on 127.0.0.1:{port} did not answer PING within {timeout:.0f}s; "
                           f"log:\n{log.read_text() if log.exists() else '(none)'}")
    finally:
        client.close()


def start_redis(workdir: Path, binary: str = "redis-server", attempts: int = 3,
                port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start redis-server on 127.0.0.1:<free port> (or ``port``: a Redis that comes back where it
    was), without persistence; return (process, port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    fixed = port
    for _ in range(attempts):
        port = fixed or free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            if _wait_for_ping(proc, port, log):
                return proc, port
        except BaseException:
            stop_redis(proc)
            raise
        stop_redis(proc)
    raise RuntimeError(f"redis-server failed to start {attempts} times; log:\n"
                       f"{log.read_text() if log.exists() else '(none)'}")


def stop_redis(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def free_tcp_port() -> int:
    """A loopback port where nothing listens: a Redis that is down."""
    return free_port()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, require_command) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server that lives for the test session."""
    binary = require_command("redis-server", INSTALL_HINT)
    proc, port = start_redis(tmp_path_factory.mktemp("redis"), binary)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)


class PrivateRedis:
    """A redis-server of one test's own, which the test may stop and start again on its port."""

    def __init__(self, workdir: Path, binary: str):
        self.workdir, self.binary = workdir, binary
        self.proc, self.port = start_redis(workdir, binary)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.resume()  # a stopped (SIGSTOP) process would hold SIGTERM until killed
        stop_redis(self.proc)

    def hang(self) -> None:
        """Freeze the server (SIGSTOP): the kernel still accepts connections and requests, and
        nothing answers them, as with a Redis stuck on a slow command or a paused VM."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def start_again(self) -> None:
        """Back on the same port, empty (no persistence), as after a restart without a dump."""
        self.proc, _ = start_redis(self.workdir, self.binary, port=self.port)


@pytest.fixture()
def private_redis(tmp_path: Path, require_command) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "private-redis", require_command("redis-server", INSTALL_HINT))
    try:
        yield server
    finally:
        server.stop()
