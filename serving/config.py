"""Serving configuration: one documented TOML file, environment overrides, validated at startup.

The idea: every setting of ``shoprec serve`` has a documented default here (and the same one in
the example file ``serving/shoprec-serve.toml``); a deployment changes only what it needs. Where
a value comes from, strongest first:

  command-line flags  >  SHOPREC_SERVE_* environment variables  >  the file  >  defaults

Top-level keys map to ``SHOPREC_SERVE_<KEY>`` and keys of the ``[limits]``, ``[quotas]`` and ``[rules]``
sections to ``SHOPREC_SERVE_<SECTION>__<KEY>`` (e.g. ``SHOPREC_SERVE_LIMITS__MAX_K=50``).
Everything is checked before anything heavy is loaded; a bad value raises ConfigError naming
where it came from (file key, variable or flag) and how to fix it.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_repo.errors import ConfigError
from serving.candidates import Quotas
from serving.rules import Rules
from serving.server import HELPER_THREADS, Limits
from serving.tls import check_server_files

ENV_PREFIX = "SHOPREC_SERVE_"
EXAMPLE_FILE = Path(__file__).with_name("shoprec-serve.toml")
MAX_PROCESSES = 64
RANKERS = ("published", "dcn", "lstm")  # "published" or a ranking.model.KINDS kind
MODEL_RUNTIMES = ("lite", "tensorflow")


@dataclass(frozen=True)
class ServingConfig:
    """Everything ``shoprec serve`` needs besides the artifacts themselves.

    Args:
      host: interface to listen on ("0.0.0.0" for every interface).
      port: TCP port; 0 picks a free one (single process only).
      tls_cert, tls_key: PEM files of the server's certificate (chain) and its private key; with
        both, the gRPC port speaks only TLS (serving/tls.py). None (default): plaintext.
      tls_client_ca: with TLS, a PEM CA certificate: clients must present a certificate it signed
        (mutual TLS); None (default): any client that trusts the server's certificate connects.
      metrics_port: HTTP port serving Prometheus metrics at /metrics (calls by RPC and status
        code, server time per call, degraded answers, events, reloads, served versions,
        online-store state, user-cache hits, calls shed under overload: serving/metrics.py),
        summed over the processes; 0 (default) does not serve them.
      workers: request threads per process; 0 (default) runs Recommend and the other reads on
        the server's event loop and RecordEvents on a thread of its own, fastest when the
        online store is local (docs/benchmarks.md); N threads let requests overlap the round
        trips of an online store across a network.
      max_batch: with ``workers = 0``, 1 (default) answers Recommend calls one at a time on the
        event loop; N > 1 runs them on a pipeline thread that answers up to N calls that queued
        up while it was busy together: one online read, one user-tower call and (with the DCN)
        one ranker call for all of them (serving/batching.py). With TensorFlow Lite models one
        at a time has the lower tail; batching paid off with the TensorFlow runtime.
      max_event_batch: with ``workers = 0``, up to this many RecordEvents calls that queued up
        during a push share the next one (one online read and one push); 1 pushes each alone.
      user_cache: per process, how many recent users' embeddings and two-tower candidates are
        kept, keyed by everything the user tower reads (serving/user_cache.py); 0 keeps none.
      ranker: "published" serves the ranking model training published (the better one on
        validation); "dcn" or "lstm" serves the newest model of that kind. The DCN costs a third
        of the LSTM's CPU per request for slightly lower quality (docs/benchmarks.md).
      model_runtime: "lite" (default) serves the user tower and the ranker through TensorFlow
        Lite copies made at load, where they convert and answer as TensorFlow does: a fraction
        of TensorFlow's per-call cost (serving/lite.py, docs/benchmarks.md); "tensorflow"
        serves them with the TensorFlow runtime only.
      tf_threads: TensorFlow threads per process (intra- and inter-op); 0 (default) means the
        cores divided by the processes, at least 1. Per-request models are small: with one
        process per core, one thread each is fastest (no oversubscription); a single process
        still gets every core (docs/benchmarks.md).
      processes: server processes sharing the port (SO_REUSEPORT); one per core uses them all.
      helper_threads: "normal" (default) leaves every thread's scheduling alone; "batch" runs
        every thread of a server process but its main thread and its event loop under Linux's
        SCHED_BATCH policy, so that gRPC's poller and event-engine threads stop preempting the
        thread that answers requests at each of their wake-ups. Measured on 2 cores:
        less server CPU per call and more calls per second on 100k items, mixed on 1M, p99 no
        better (docs/benchmarks.md, twenty-sixth session): for throughput, not for the tail.
      workspace: workspace directory; None means --workspace, else $SHOPREC_HOME, else ./var.
      online_store: "sqlite" or "redis://HOST:PORT[/DB]"; None means $SHOPREC_ONLINE_STORE or sqlite.
      store_read_timeout_seconds: how long a request's read of a Redis online store may wait
        for the answer. A slower read counts as failed: the request is answered degraded and
        the store is skipped (``store_retry_seconds``). Reads run on the event loop, so a hung
        store holds every call of the process this long once; pushes keep 2 s.
      store_retry_seconds: after a failed online-store read, requests skip the store (degraded
        answers) while a background read tries it again every this many seconds.
      reload_seconds: how often to look for new model/index versions.
      limits: request limits (serving.server.Limits).
      quotas: candidates per source and request (serving.candidates.Quotas).
      rules: page rules: diversity, cross-category and new-item slots, repeat purchases
        (serving.rules.Rules).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int = 0
    workers: int = 0
    max_batch: int = 1
    max_event_batch: int = 8
    user_cache: int = 4096
    tf_threads: int = 0
    ranker: str = "published"
    model_runtime: str = "lite"
    processes: int = 1
    helper_threads: str = "normal"
    workspace: Path | None = None
    online_store: str | None = None
    store_read_timeout_seconds: float = 0.25
    store_retry_seconds: float = 5.0
    reload_seconds: float = 10.0
    limits: Limits = Limits()
    quotas: Quotas = Quotas()
    rules: Rules = Rules()


SECTIONS: dict[str, type] = {"limits": Limits, "quotas": Quotas, "rules": Rules}


def _types(cls: type) -> dict[str, type]:
    """Field name → the plain type a value must have (Optional[X] → X)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


TOP_TYPES = {k: v for k, v in _types(ServingConfig).items() if k not in SECTIONS}
SECTION_TYPES = {s: _types(cls) for s, cls in SECTIONS.items()}
# None is meaningful for these (fall back to the general default) and has no TOML spelling.
OPTIONAL = {f.name for f in dataclasses.fields(ServingConfig) if f.default is None}
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", Path: "a path (string)"}


class _Source:
    """Where a setting's value came from, in the words the user would search for."""

    def __init__(self, kind: str, where: str = ""):
        self.kind, self.where = kind, where

    def label(self, section: str | None, name: str) -> str:
        key = f"[{section}] {name}" if section else name
        if self.kind == "file":
            return f"{key} in {self.where}"
        if self.kind == "env":
            return ENV_PREFIX + (f"{section}__{name}" if section else name).upper()
        if self.kind == "cli":
            return "--" + name.replace("_", "-")
        return f"{key} (default)"


def _valid_keys() -> str:
    top = ", ".join(TOP_TYPES)
    nested = "; ".join(f"[{s}] {', '.join(t)}" for s, t in SECTION_TYPES.items())
    return f"{top}; {nested}"


def _convert(value: Any, kind: type, label: str, from_text: bool) -> Any:
    """Check (file, flags) or parse (environment strings) one value into the field's type."""
    example = {int: "10", float: "5.0", str: '"text"', Path: '"/srv/shoprec"'}[kind]
    if from_text:  # environment variables are always strings
        text, unquoted = value.strip(), example.strip('"')
        try:
            return Path(text).expanduser() if kind is Path else kind(text)
        except ValueError:
            raise ConfigError(f"{label}: expected {TYPE_NAMES[kind]}, got {value!r}; e.g. {label}={unquoted}") from None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, (str, Path)):
        return Path(value).expanduser()
    if kind in (int, str) and type(value) is kind:  # type(), not isinstance: True is not an integer
        return value
    raise ConfigError(f"{label}: expected {TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__}); "
                      f"e.g. {example}")


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ,
                cli: Mapping[str, Any] | None = None) -> ServingConfig:
    """The validated config: defaults < file ``path`` < ``SHOPREC_SERVE_*`` in ``env`` < ``cli``.

    ``cli`` holds command-line values by field name (top-level fields only; None = not given).
    A relative path in the file (``workspace``, the TLS files) is relative to the file, so the file
    can be moved with them.
    """
    values: dict[tuple[str | None, str], Any] = {}  # (section, field) → value
    sources: dict[tuple[str | None, str], _Source] = {}

    def put(section: str | None, name: str, value: Any, source: _Source, from_text: bool = False) -> None:
        kind = (SECTION_TYPES[section] if section else TOP_TYPES)[name]
        label = source.label(section, name)
        if name in OPTIONAL and (value is None or (from_text and not value.strip())):
            value = None  # an empty variable restores the fallback
        else:
            value = _convert(value, kind, label, from_text)
        values[(section, name)], sources[(section, name)] = value, source

    if path is not None:
        for section, name, value in _read_file(Path(path)):
            if section is None and TOP_TYPES[name] is Path and isinstance(value, str) \
                    and not Path(value).expanduser().is_absolute():
                value = str(Path(path).resolve().parent / value)
            put(section, name, value, _Source("file", str(path)))
    for var, text in sorted(env.items()):
        if var.startswith(ENV_PREFIX):
            section, name = _env_key(var)
            put(section, name, text, _Source("env"), from_text=True)
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in TOP_TYPES:
            raise ValueError(f"not a command-line setting: {name}")  # a programming error, not the user's
        put(None, name, value, _Source("cli"))

    def label(section: str | None, name: str) -> str:
        return sources.get((section, name), _Source("default")).label(section, name)

    sections = {s: dataclasses.replace(cls(), **{n: v for (sec, n), v in values.items() if sec == s})
                for s, cls in SECTIONS.items()}
    cfg = ServingConfig(**{n: v for (sec, n), v in values.items() if sec is None}, **sections)
    _validate(cfg, label)
    return cfg


def _read_file(path: Path) -> list[tuple[str | None, str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing file to --config "
                          f"(the documented example: {EXAMPLE_FILE})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    out: list[tuple[str | None, str, Any]] = []
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} in {path}: must be a section ([{key}]), got {value!r}")
            for name, item in value.items():
                if name not in SECTION_TYPES[key]:
                    raise ConfigError(f"[{key}] {name} in {path}: unknown key; valid keys of [{key}]: "
                                      f"{', '.join(SECTION_TYPES[key])}")
                out.append((key, name, item))
        elif key in TOP_TYPES:
            if isinstance(value, dict):
                raise ConfigError(f"[{key}] in {path}: {key} is a plain key, not a section; "
                                  f"write `{key} = ...` above the first section")
            out.append((None, key, value))
        else:
            what = f"section [{key}]" if isinstance(value, dict) else f"key {key}"
            raise ConfigError(f"{what} in {path}: unknown; valid keys: {_valid_keys()}")
    return out


def _env_key(var: str) -> tuple[str | None, str]:
    rest = var[len(ENV_PREFIX):].lower()
    section, sep, name = rest.partition("__")
    if sep and section in SECTION_TYPES and name in SECTION_TYPES[section]:
        return section, name
    if not sep and rest in TOP_TYPES:
        return None, rest
    valid = [ENV_PREFIX + k.upper() for k in TOP_TYPES] + [
        f"{ENV_PREFIX}{s.upper()}__{k.upper()}" for s, t in SECTION_TYPES.items() for k in t]
    raise ConfigError(f"environment variable {var}: not a serving setting (a typo?); unset it or use one of "
                      f"{', '.join(valid)}")


def _validate(cfg: ServingConfig, label) -> None:
    """Ranges and consistency; every message names the setting and says what would work."""

    def require(ok: bool, section: str | None, name: str, rule: str) -> None:
        if not ok:
            value = getattr(getattr(cfg, section) if section else cfg, name)
            raise ConfigError(f"{label(section, name)}: {rule}; got {value!r}")

    require(bool(cfg.host.strip()), None, "host", 'must name an interface, e.g. "127.0.0.1" or "0.0.0.0"')
    require(0 <= cfg.port <= 65535, None, "port", "must be between 0 and 65535 (0 picks a free port)")
    check_server_files(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, lambda name: label(None, name))
    require(0 <= cfg.metrics_port <= 65535, None, "metrics_port",
            "must be between 0 and 65535 (0: no metrics endpoint; e.g. 9464)")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        raise ConfigError(f"{label(None, 'metrics_port')}: {cfg.metrics_port} is also the gRPC port (from "
                          f"{label(None, 'port')}); give the metrics endpoint a port of its own, e.g. 9464")
    require(cfg.workers >= 0, None, "workers", "must be >= 0 (request threads per process; 0: on the event loop)")
    require(1 <= cfg.max_batch <= 256, None, "max_batch",
            "must be between 1 and 256 (Recommend calls answered together; 1: one at a time)")
    require(1 <= cfg.max_event_batch <= 256, None, "max_event_batch",
            "must be between 1 and 256 (RecordEvents calls sharing one push; 1: each alone)")
    require(0 <= cfg.user_cache <= 1_000_000, None, "user_cache",
            "must be between 0 and 1000000 (recent users' retrieval kept per process; 0: none)")
    require(cfg.ranker in RANKERS, None, "ranker", f"must be one of {', '.join(RANKERS)}")
    require(cfg.helper_threads in HELPER_THREADS, None, "helper_threads",
            f"must be one of {', '.join(HELPER_THREADS)} (batch: gRPC's threads do not preempt the request's)")
    require(cfg.model_runtime in MODEL_RUNTIMES, None, "model_runtime",
            f"must be one of {', '.join(MODEL_RUNTIMES)} (lite: TensorFlow Lite copies where they agree)")
    require(cfg.tf_threads >= 0, None, "tf_threads", "must be >= 0 (0: the cores divided by the processes)")
    require(1 <= cfg.processes <= MAX_PROCESSES, None, "processes",
            f"must be between 1 and {MAX_PROCESSES} (one per core is the useful maximum)")
    if cfg.processes > 1 and cfg.port == 0:
        raise ConfigError(f"{label(None, 'port')}: port 0 cannot be used with {cfg.processes} processes (from "
                          f"{label(None, 'processes')}): each process would pick a different free port; set a "
                          f"fixed port (e.g. 50051) or use 1 process")
    if cfg.online_store is not None:
        _check_online_store(cfg.online_store, label(None, "online_store"))
    require(0 < cfg.store_read_timeout_seconds <= 60, None, "store_read_timeout_seconds",
            "must be between 0 and 60 seconds (a Redis read slower than this counts as failed; e.g. 0.25)")
    require(cfg.store_retry_seconds >= 0, None, "store_retry_seconds", "must be >= 0 seconds")
    require(cfg.reload_seconds > 0, None, "reload_seconds", "must be > 0 seconds")

    lim = cfg.limits
    require(lim.max_k >= 1, "limits", "max_k", "must be at least 1")
    if not 1 <= lim.default_k <= lim.max_k:
        raise ConfigError(f"{label('limits', 'default_k')}: must be between 1 and max_k ({lim.max_k}, from "
                          f"{label('limits', 'max_k')}); got {lim.default_k}; lower default_k or raise max_k")
    require(lim.max_id_length >= 1, "limits", "max_id_length", "must be at least 1 character")
    require(lim.max_list_size >= 1, "limits", "max_list_size", "must be at least 1")

    for name in SECTION_TYPES["quotas"]:
        require(getattr(cfg.quotas, name) >= 0, "quotas", name, "must be >= 0 (0 turns the source off)")
    q = cfg.quotas
    if not (q.trending or q.new or q.popular):
        raise ConfigError(f"{label('quotas', 'popular')}: trending, new and popular are all 0, so users without "
                          f"history would get empty lists; give popular (the cold-start source) a quota, e.g. 30")


def _check_online_store(url: str, label: str) -> None:
    # The same parser the feature store uses, so that a URL accepted here also opens there.
    from feature_repo.store import online_store_config
    from feature_repo.workspace import Workspace

    if url != "sqlite" and not url.startswith("redis://"):
        raise ConfigError(f"{label}: {url!r} is not supported; use \"sqlite\" or \"redis://HOST:PORT[/DB]\"")
    try:
        online_store_config(Workspace(Path(".")), url)  # Workspace() alone creates no directories
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from e
