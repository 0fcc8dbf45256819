"""Prometheus metrics of the gRPC service: what an operator graphs and alerts on.

Every call passes through ``RecommenderServicer._serve``, which records here its RPC, its status
code and the server's time on it; Recommend answers served without the online store count as
degraded, RecordEvents counts each event accepted or rejected, and hot reloads count by outcome.
Each process also reports the versions it serves, whether it reads the online store, and how
often its user cache spared the user tower and the FAISS search. Recording costs a few
microseconds a call (docs/benchmarks.md, thirty-fourth and thirty-fifth sessions).

``shoprec serve`` exposes them over HTTP on ``metrics_port`` (0: not exposed) at ``/metrics``.
With several server processes on one port each child writes its values to files in a directory
of the parent's (prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set before
the children start, and the library reads it when it is first imported), and the parent serves
their sum, so one scrape covers the port. Counters survive a child that crashes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import REGISTRY, multiprocess

# prometheus_client keeps values in files when the first is set. Feast's metrics module, when a
# store operation imports it, makes a temporary directory of its own for the second unless it is
# set (and sets the first to it), and removes it only at a normal exit, which a server child's
# os._exit is not.
VALUES_ENV, FEAST_ENV = "PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"
MULTIPROCESS_ENV = (VALUES_ENV, FEAST_ENV)

REQUESTS = Counter("shoprec_requests", "gRPC calls answered, by RPC and status code", ["rpc", "code"])
# The handler's time: from the call reaching the service to its answer (or error). gRPC's own
# transport and a call's wait for the process are not in it; the client's latency is.
DURATION = Histogram("shoprec_request_duration_seconds", "Server time of a gRPC call, by RPC", ["rpc"],
                     buckets=(.001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .1, .25, .5, 1.0, 2.5, 10.0))
DEGRADED = Counter("shoprec_degraded_responses", "Answers served without the online store's features "
                   "(degraded = true: the store was down or too slow)", ["rpc"])
EVENTS = Counter("shoprec_events", "RecordEvents events, by outcome (rejected: failed validation or the push)",
                 ["result"])
RELOADS = Counter("shoprec_reloads", "Hot reloads of newly published versions, by outcome "
                  "(failed: the old version still serves; see the log)", ["result"])

SHED = Counter("shoprec_shed_calls", "Calls refused before any work because their deadline had passed or left "
               "too little time to answer (counted in shoprec_requests_total as DEADLINE_EXCEEDED too): the "
               "process is overloaded, or clients' deadlines are too short", ["rpc"])
USER_CACHE = Counter("shoprec_user_cache_lookups", "Recommend's user-cache lookups (hit: the user tower and "
                     "the FAISS search were skipped; a low share suggests a larger user_cache)", ["result"])
# With several processes, "max": 1 as soon as one of them skips the store. Down rather than up
# because a process's value starts at 0 when it imports this module, long before it serves.
STORE_DOWN = Gauge("shoprec_online_store_down", "1 while Recommend skips the online store after a failed "
                   "read (its answers are degraded) until a background read succeeds; 0 while it reads it",
                   multiprocess_mode="max")
# With several processes, one series a process (a pid label): a hot reload reaches each on its own.
SERVING = Gauge("shoprec_serving_versions", "1: the artifact versions this process serves; 0: versions it "
                "served before a hot reload", ["retrieval", "index", "ranking", "churn"], multiprocess_mode="all")
VERSION_LABELS = ("retrieval", "index", "ranking", "churn")

_by_call: dict[tuple[str, str], tuple] = {}


def record_call(rpc: str, code: str, seconds: float, degraded: bool = False) -> None:
    """One answered call: its status code (e.g. "OK", "INVALID_ARGUMENT") and the server's time."""
    children = _by_call.get((rpc, code))
    if children is None:  # labels() takes a lock and hashes; the few (rpc, code) pairs are kept
        children = _by_call[(rpc, code)] = (REQUESTS.labels(rpc, code), DURATION.labels(rpc), DEGRADED.labels(rpc))
    children[0].inc()
    children[1].observe(seconds)
    if degraded:
        children[2].inc()


def _add(counter: Counter, by_label: dict[str, int]) -> None:
    for label, n in by_label.items():
        if n:
            counter.labels(label).inc(n)


def record_events(accepted: int, rejected: int) -> None:
    _add(EVENTS, {"accepted": accepted, "rejected": rejected})


def record_reload(ok: bool) -> None:
    RELOADS.labels("ok" if ok else "failed").inc()


def record_shed(rpc: str) -> None:
    SHED.labels(rpc).inc()


def record_user_cache(hits: int, misses: int) -> None:
    _add(USER_CACHE, {"hit": hits, "miss": misses})


def record_store_down(down: bool) -> None:
    STORE_DOWN.set(1 if down else 0)


def record_serving(versions: dict[str, str], replaced: dict[str, str] | None = None) -> None:
    """The versions now served (1), then those they replaced (0: a series cannot be removed from
    the shared files, so the old one stays at 0 rather than at a misleading 1). A reload that
    changed only item features keeps the same versions: that series stays at 1 throughout."""
    now = tuple(versions.get(name, "") for name in VERSION_LABELS)
    SERVING.labels(*now).set(1)
    if replaced is not None:
        before = tuple(replaced.get(name, "") for name in VERSION_LABELS)
        if before != now:
            SERVING.labels(*before).set(0)


class SharedValues:
    """The directory where server processes write their values, for the processes started
    while it is open (set in this process's environment, which spawned children inherit).
    Closing restores the environment and deletes the directory.

    ``collect``: the children keep their values in files there (3.7 µs a call against 1.5 in
    memory), for ``registry()`` to sum; without it the directory only keeps Feast from making
    one per child."""

    def __init__(self, collect: bool = True) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="shoprec-metrics-"))
        self._before = {name: os.environ.get(name) for name in MULTIPROCESS_ENV}
        os.environ[FEAST_ENV] = str(self.path)
        if collect:
            os.environ[VALUES_ENV] = str(self.path)
        else:  # perhaps set by Feast in this process: the children keep their values in memory
            os.environ.pop(VALUES_ENV, None)

    def registry(self) -> CollectorRegistry:
        """A registry that sums every process's shoprec_* values at each scrape (Feast's module
        writes its own metrics there too: process gauges by pid, which are not ours to serve)."""
        registry = CollectorRegistry()
        registry.register(_Ours(multiprocess.MultiProcessCollector(None, path=str(self.path))))
        return registry

    def close(self) -> None:
        for name, value in self._before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.path, ignore_errors=True)


class _Ours:
    """A collector's shoprec_* families only."""

    def __init__(self, collector) -> None:
        self._collector = collector

    def collect(self):
        return [family for family in self._collector.collect() if family.name.startswith("shoprec_")]


class Exposed:
    """The HTTP endpoint serving ``/metrics`` (prometheus_client's server, on a daemon thread)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None):
        """``registry``: this process's values by default."""
        self.httpd, self._thread = start_http_server(port, addr=host, registry=registry or REGISTRY)
        self.port = self.httpd.server_port

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
