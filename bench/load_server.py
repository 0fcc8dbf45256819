"""The server side of bench/load.py: `shoprec serve` as a subprocess, and CPU accounting from /proc.

The server is started the way an operator starts it (`shoprec --workspace WS serve --port P
--processes N`; quotas through the documented SHOPREC_SERVE_QUOTAS__* variables), in its own
session so that it can be stopped as one group without touching anything else. CPU time is
read per process from /proc/<pid>/stat (all threads) and for the machine from /proc/stat, so a
window's CPU splits into client, server processes and everyone else.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# What each server process logs about its user cache when it stops (serving.server).
USER_CACHE_LINE = re.compile(r"user cache: (?P<hits>\d+) of (?P<lookups>\d+) lookups answered")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _proc_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime of all threads


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_snapshot(pids: list[int]) -> dict:
    t = os.times()
    return {"wall": time.monotonic(), "self": t.user + t.system, "machine": _machine_ticks(),
            "procs": {pid: _proc_ticks(pid) for pid in pids}}


def cpu_usage(before: dict, after: dict) -> dict:
    """Cores used over the window: this process (the client), each server process, the rest."""
    wall = after["wall"] - before["wall"]
    client = (after["self"] - before["self"]) / wall
    per_proc = {pid: (after["procs"][pid] - ticks) / TICK / wall for pid, ticks in before["procs"].items()
                if ticks is not None and after["procs"].get(pid) is not None}
    busy = (after["machine"][0] - before["machine"][0]) / max(after["machine"][1] - before["machine"][1], 1)
    machine = busy * os.cpu_count()
    server = sum(per_proc.values())
    return {"client_cores": round(client, 2), "server_cores": round(server, 2),
            "other_cores": round(max(machine - client - server, 0.0), 2), "machine_cores": round(machine, 2),
            "per_process_cores": [round(v, 2) for v in per_proc.values() if v >= 0.005]}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners(port: int) -> int:
    """Listening IPv4/IPv6 sockets on ``port`` (one per SO_REUSEPORT process)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            n += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return n


class ServerProcess:
    """``shoprec serve`` with N processes on a free loopback port; ``start()`` waits for SERVING."""

    def __init__(self, ws: Path, processes: int, quotas: dict[str, int], log_dir: Path, startup_timeout: float = 600,
                 settings: dict[str, str] | None = None, env: dict[str, str] | None = None):
        self.ws, self.processes, self.quotas, self.settings = ws, processes, quotas, settings or {}
        self.base_env = dict(os.environ if env is None else env)  # before the serving settings
        self.startup_timeout = startup_timeout
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = log_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None  # from launch to every process serving

    @property
    def served_workspace(self) -> str:
        """The workspace the server serves: the bench's own, or with workspace=DIR a copy of it
        (e.g. with another index kind published) whose users the requests still name, for a
        comparison in one run."""
        return self.settings.get("workspace", str(self.ws))

    def _command(self) -> list[str]:
        shoprec = str(Path(sys.executable).with_name("shoprec"))
        help_text = subprocess.run([shoprec, "serve", "--help"], capture_output=True, text=True).stdout
        cmd = [shoprec, "--workspace", self.served_workspace, "serve", "--port", str(self.port)]
        if "--processes" in help_text:
            cmd += ["--processes", str(self.processes)]
        elif self.processes != 1:
            raise SystemExit("`shoprec serve` has no --processes yet: only 1 process can be measured")
        if self.quotas and "SHOPREC_SERVE_" not in help_text:
            raise SystemExit("`shoprec serve` cannot set quotas (no SHOPREC_SERVE_* settings) in this version")
        return cmd

    def environment(self) -> tuple[dict[str, str], str | None]:
        """The server's environment, and the checkout it runs from (None: this one)."""
        settings = dict(self.settings)
        # code=DIR: serve another checkout of shoprec (e.g. a git worktree of an older commit)
        # with this virtualenv, for a before/after comparison in one run.
        code = settings.pop("code", None)
        settings.pop("workspace", None)  # a flag of the command (_command), not a variable
        env = dict(self.base_env, **{f"SHOPREC_SERVE_QUOTAS__{k.upper()}": str(v) for k, v in self.quotas.items()},
                   **{f"SHOPREC_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
        if code:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
        return env, code

    def startup_lines(self) -> list[str]:
        """What `shoprec serve` said while starting: each process's ready line (with its pid) and its own."""
        return [line for line in self.log.read_text().splitlines() if " serving on " in line]

    def user_cache_hits(self) -> tuple[int, int]:
        """(answered, lookups) of the processes' user caches, summed over the lines each process
        logs when it stops (serving.server); (0, 0) before the server has stopped."""
        hits = lookups = 0
        for m in USER_CACHE_LINE.finditer(self.log.read_text() if self.log.exists() else ""):
            hits, lookups = hits + int(m["hits"]), lookups + int(m["lookups"])
        return hits, lookups

    def start(self) -> str:
        started = time.monotonic()
        env, code = self.environment()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self._command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=code or Path(__file__).resolve().parents[1])
        address = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"shoprec serve exited with {self.proc.returncode}; its log {self.log} ends:\n"
                                 + "\n".join(self.log.read_text().splitlines()[-20:]))
            if "shoprec serving on" in self.log.read_text() and listeners(self.port) >= self.processes \
                    and _healthy(address):
                self.startup_seconds = round(time.monotonic() - started, 1)
                return address
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"shoprec serve did not become SERVING within {self.startup_timeout:.0f} s (log {self.log})")

    def pids(self) -> list[int]:
        """The serve process and its children (the SO_REUSEPORT server processes)."""
        if self.proc is None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # `shoprec serve` drains and forwards it to its children
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this bench started, nothing else
            self.proc.wait()


def _healthy(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING
