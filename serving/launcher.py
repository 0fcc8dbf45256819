"""Running ``shoprec serve``: one server in this process, or several processes on one port.

The idea: Python code runs one thread at a time per process (the GIL), so one machine's cores are
used by N independent server processes that all listen on the same port with SO_REUSEPORT; the
kernel spreads incoming connections over them. Each process loads its own models and index
(stateless replicas, DESIGN.md). Children are started with the "spawn" method because gRPC's
threads do not survive fork(). The parent only starts, watches and stops them: it reports each
ready process, fails (non-zero, naming the process and its error) if one dies at startup,
forwards SIGINT/SIGTERM for a graceful stop, and stops everything if one dies later, so that a
supervisor (systemd, Kubernetes) restarts the whole unit instead of it running at reduced capacity.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.config import ServingConfig
from serving.errors import ServingError

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class PortInUse(ServingError):
    """The configured host:port is taken (or not an address of this machine)."""


class ServerProcessFailed(ServingError):
    """A server process died, at startup or while serving; the message says which and why."""


def _load_and_start(cfg: ServingConfig, ws_root: Path, reuse_port: bool, number: int = 1):
    """Load the live artifacts, open the feature store and start listening (the slow part)."""
    from feature_repo.store import online_store_file, open_store
    from feature_repo.workspace import Workspace
    from serving.recommender import Recommender
    from serving.server import start
    from serving.tls import server_credentials

    limit_tensorflow_threads(cfg.tf_threads or max(1, len(os.sched_getaffinity(0)) // cfg.processes))
    ws = Workspace.at(ws_root)
    # None keeps the long-standing fallback ($SHOPREC_ONLINE_STORE, else sqlite) inside open_store.
    store = open_store(ws, cfg.online_store)
    # Requests read through a client of their own with a short timeout (store_read_timeout_seconds):
    # pushes keep the longer one. SQLite is a local file: one store, whose connection both share.
    reads = (None if online_store_file(store) is not None
             else open_store(ws, cfg.online_store, socket_timeout=cfg.store_read_timeout_seconds))
    recommender = Recommender(ws, quotas=cfg.quotas, feature_store=store, read_store=reads,
                              store_retry_seconds=cfg.store_retry_seconds, rules=cfg.rules, ranker=cfg.ranker,
                              user_cache=cfg.user_cache, model_runtime=cfg.model_runtime)
    recommender.watch(cfg.reload_seconds)  # hot reload of newly published versions
    credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
    return start(recommender, cfg.host, cfg.port, cfg.workers, cfg.limits, reuse_port=reuse_port,
                 max_batch=cfg.max_batch, max_event_batch=cfg.max_event_batch,
                 process=(number, cfg.processes), helper_threads=cfg.helper_threads, credentials=credentials)


def limit_tensorflow_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools before its runtime starts.

    Measured on 2 cores with one process per core: one thread runs the user tower in 0.42 ms
    of CPU instead of 1.04 ms, because the ops are too small to split and the pools' hand-offs
    cost more than they save.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime already started in this process (e.g. serve after training)
        log.warning("TensorFlow is already running in this process; tf_threads=%d is not applied", threads)


def check_port_free(host: str, port: int) -> None:
    """Fail before loading anything if host:port is taken.

    Needed because of SO_REUSEPORT: a leftover server of the same user that also set it would
    otherwise silently share the port (and the traffic) with the new processes.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortInUse(f"host {host!r} cannot be resolved ({e}); set host to an interface address "
                        f"such as 127.0.0.1 or 0.0.0.0") from e
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR as gRPC sets it (connections of a just-stopped server in TIME_WAIT are
            # no conflict); no SO_REUSEPORT, so any listener, reuse-port or not, makes bind fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                raise PortInUse(f"{host}:{port} is already in use ({e.strerror}; another shoprec serve?); "
                                f"stop it or choose another port (--port, SHOPREC_SERVE_PORT)") from e


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM (supervisors), so the server can drain calls."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve(cfg: ServingConfig, ws_root: Path, out: Callable[[str], None] = print, grace: float = 2.0) -> None:
    """Serve until SIGINT/SIGTERM: in this process when ``cfg.processes`` is 1, else in children."""
    check_port_free(cfg.host, cfg.port)
    if cfg.processes > 1:
        group = ServerProcesses(cfg, ws_root, out=out)
        stop = _stop_on_signals()
        try:
            if group.start(stop, grace):
                out(f"shoprec serving on {cfg.host}:{cfg.port}{_tls_words(cfg)} with {cfg.processes} processes "
                    f"(Ctrl-C to stop)" + _metrics_line(cfg))
                died = group.wait(stop)
                if died:
                    raise ServerProcessFailed(died)
        finally:
            group.stop(grace)
        return
    exposed = expose_metrics(cfg)
    try:
        running = _load_and_start(cfg, ws_root, reuse_port=False)
        out(f"shoprec serving on {cfg.host}:{running.port}{_tls_words(cfg)} (Ctrl-C to stop)" + _metrics_line(cfg))
        stop = _stop_on_signals()
        try:
            while not stop.wait(0.5):  # a timeout keeps the wait responsive to signal handlers
                pass
        finally:
            running.stop(grace)
    finally:
        if exposed is not None:
            exposed.close()


def expose_metrics(cfg: ServingConfig, registry=None):
    """The /metrics endpoint on ``cfg.metrics_port`` (None when it is 0), opened before anything
    loads so that a taken port fails at once; ``registry``: this process's values by default."""
    if not cfg.metrics_port:
        return None
    from serving.metrics import Exposed

    try:
        return Exposed(cfg.host.strip("[]"), cfg.metrics_port, registry)  # "[::]" as gRPC takes it
    except OSError as e:
        raise PortInUse(f"metrics_port {cfg.metrics_port} on {cfg.host} cannot be served ({e.strerror}); stop "
                        f"what holds it or choose another port (metrics_port, SHOPREC_SERVE_METRICS_PORT; "
                        f"0 serves no metrics)") from e


def _tls_words(cfg: ServingConfig) -> str:
    if not cfg.tls_cert:
        return ""
    return " over mutual TLS (client certificates required)" if cfg.tls_client_ca else " over TLS"


def _metrics_line(cfg: ServingConfig) -> str:
    return f"; metrics on http://{cfg.host}:{cfg.metrics_port}/metrics" if cfg.metrics_port else ""


def _child_main(number: int, cfg: ServingConfig, ws_root: Path, conn: multiprocessing.connection.Connection,
                log_level: int, grace: float) -> None:
    """One server process: start, report ("ready", port) or ("failed", why), serve until told to stop."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    # While loading there is nothing to drain: Ctrl-C (which reaches the whole process group) is
    # left to the parent, whose SIGTERM then ends this process at once (the default action).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        running = _load_and_start(cfg, ws_root, reuse_port=True, number=number)
    except BaseException as e:  # noqa: BLE001 - whatever it was, the parent must say it
        log.exception("process %d failed at startup", number)
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass  # the parent is gone; the log has it
        _exit(1)
    stop = _stop_on_signals()  # from now on SIGINT/SIGTERM drain in-flight calls first
    try:
        conn.send(("ready", running.port))
        # poll() also wakes when the parent dies (the pipe closes): never outlive the parent.
        while not stop.is_set() and not conn.poll(0.5):
            pass
    except OSError:
        pass  # the parent is gone
    finally:
        log.info("process %d stopping: draining in-flight calls for up to %.0f s", number, grace)
        running.stop(grace)
        log.info("process %d stopped", number)
    _exit(0)


def _exit(code: int) -> None:
    """End a child without interpreter teardown: TensorFlow's and gRPC's C++ destructors take
    seconds after the server has already drained, which only delays restarts and deploys."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ServerProcesses:
    """``cfg.processes`` server processes on ``cfg.host:cfg.port`` (SO_REUSEPORT).

    ``start()`` returns once every process serves (or raises ServerProcessFailed naming the first
    that did not and why); ``stop()`` asks each to drain and exit, and kills stragglers. As with
    any "spawn" child, a script that uses this needs the ``if __name__ == "__main__":`` guard.
    """

    def __init__(self, cfg: ServingConfig, ws_root: Path, out: Callable[[str], None] = print,
                 startup_timeout: float = 600.0):
        self.cfg, self.ws_root, self.out = cfg, Path(ws_root), out
        self.startup_timeout = startup_timeout
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.shared_metrics = None  # where the children write their metrics' values
        self.metrics = None  # with metrics_port: the endpoint that serves their sum

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "[::]", "::") else self.cfg.host
        return f"{host}:{self.cfg.port}"

    def start(self, stop: threading.Event | None = None, grace: float = 2.0) -> bool:
        """Start every process and wait until each serves; False if ``stop`` was set meanwhile."""
        stop = stop or threading.Event()
        from serving.metrics import SharedValues

        # Before the children start, so that they inherit it; also without metrics_port, because
        # Feast would otherwise leave a directory of its own in /tmp per child (serving/metrics.py).
        self.shared_metrics = SharedValues(collect=bool(self.cfg.metrics_port))
        self.metrics = expose_metrics(self.cfg, self.shared_metrics.registry())
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold gRPC threads
        n = self.cfg.processes
        for i in range(n):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_child_main, name=f"serve-{i + 1}/{n}",
                            args=(i + 1, self.cfg, self.ws_root, child_end, logging.getLogger().level, grace))
            p.start()
            child_end.close()  # only the child holds it now, so its death reads as EOF here
            self.processes.append(p)
            self.conns.append(parent_end)
        # All children load at once (one per core); report each as it becomes ready.
        waiting = dict(enumerate(self.conns))
        deadline = time.monotonic() + self.startup_timeout
        while waiting:
            if stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(self._name(i) for i in waiting)
                raise ServerProcessFailed(f"{names} not ready after {self.startup_timeout:.0f} s; see the log above")
            for conn in multiprocessing.connection.wait(list(waiting.values()), timeout=min(left, 0.5)):
                i = next(i for i, c in waiting.items() if c is conn)
                try:
                    status, detail = conn.recv()
                except EOFError:  # died without a word: a crash or a signal
                    self.processes[i].join(5)
                    status, detail = "failed", f"exited with code {self.processes[i].exitcode} before it was ready"
                if status != "ready" and stop.is_set():
                    return False  # it was stopped (Ctrl-C, SIGTERM), not broken
                if status != "ready":
                    raise ServerProcessFailed(f"{self._name(i)} failed at startup: {detail}")
                del waiting[i]
                self.out(f"process {i + 1}/{n} (pid {self.processes[i].pid}) serving on "
                         f"{self.cfg.host}:{detail}")
        return True

    def _name(self, i: int) -> str:
        return f"process {i + 1}/{len(self.processes)} (pid {self.processes[i].pid})"

    def wait(self, stop: threading.Event) -> str | None:
        """Block until ``stop`` is set (None) or a process dies (a message naming it)."""
        sentinels = {p.sentinel: i for i, p in enumerate(self.processes)}
        while not stop.is_set():
            for s in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                i = sentinels[s]
                self.processes[i].join()
                return (f"{self._name(i)} exited with code {self.processes[i].exitcode} while serving; "
                        f"stopped the others")
        return None

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM every live child (each drains in-flight calls for ``grace`` s), then kill stragglers."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + grace + 10.0
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("%s (pid %d) did not stop in time; killing it", p.name, p.pid)
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.shared_metrics is not None:
            self.shared_metrics.close()
            self.shared_metrics = None
