"""Serving config (file + environment + flags, validated at load) and several processes on one port."""
from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import threading
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from feature_repo.errors import ConfigError
from serving.candidates import Quotas
from serving.config import EXAMPLE_FILE, ServingConfig, load_config
from serving.server import Limits


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_example_file_documents_every_key_with_its_default():
    assert load_config(EXAMPLE_FILE, env={}) == ServingConfig()
    data = tomllib.loads(EXAMPLE_FILE.read_text())
    text = EXAMPLE_FILE.read_text()
    optional = {"workspace", "online_store", "tls_cert", "tls_key", "tls_client_ca"}  # None has no TOML spelling: commented out
    assert set(data) | optional == {f.name for f in fields(ServingConfig)}
    assert all(f"# {name} = " in text for name in optional)
    assert set(data["limits"]) == {f.name for f in fields(Limits)}
    assert set(data["quotas"]) == {f.name for f in fields(Quotas)}
    settings = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert all("  # " in line for line in settings), "every key needs a one-line comment"


def test_file_values_are_read(tmp_path):
    path = _file(tmp_path, 'host = "0.0.0.0"\nport = 6000\nworkspace = "shop"\nstore_retry_seconds = 2\n'
                           '[limits]\nmax_k = 40\n[quotas]\npopular = 5\nnew_item_days = 3\n')
    cfg = load_config(path, env={})
    assert (cfg.host, cfg.port, cfg.store_retry_seconds) == ("0.0.0.0", 6000, 2.0)
    assert cfg.workspace == tmp_path / "shop"  # relative to the file, not to where serve runs
    assert cfg.limits == Limits(max_k=40) and cfg.quotas == Quotas(popular=5, new_item_days=3.0)
    assert isinstance(cfg.store_retry_seconds, float) and isinstance(cfg.quotas.new_item_days, float)


def test_environment_overrides_top_level_and_nested_keys_parsed_to_their_types():
    env = {"SHOPREC_SERVE_PORT": "50052", "SHOPREC_SERVE_HOST": " 0.0.0.0 ", "SHOPREC_SERVE_PROCESSES": "2",
           "SHOPREC_SERVE_STORE_RETRY_SECONDS": "1.5", "SHOPREC_SERVE_WORKSPACE": "/srv/shop",
           "SHOPREC_SERVE_ONLINE_STORE": "redis://127.0.0.1:6379/0", "SHOPREC_SERVE_LIMITS__MAX_K": "50",
           "SHOPREC_SERVE_QUOTAS__NEW_ITEM_DAYS": "7", "SHOPREC_SERVE_QUOTAS__TWO_TOWER": "300",
           "SHOPREC_HOME": "/elsewhere", "PATH": "/usr/bin"}  # other variables are none of its business
    cfg = load_config(None, env)
    assert (cfg.port, cfg.host, cfg.processes, cfg.store_retry_seconds) == (50052, "0.0.0.0", 2, 1.5)
    assert cfg.workspace == Path("/srv/shop") and cfg.online_store == "redis://127.0.0.1:6379/0"
    assert cfg.limits == Limits(max_k=50)
    assert cfg.quotas == Quotas(two_tower=300, new_item_days=7.0) and isinstance(cfg.quotas.new_item_days, float)


def test_an_empty_variable_restores_the_fallback_of_an_optional_key(tmp_path):
    path = _file(tmp_path, 'online_store = "sqlite"\n')
    assert load_config(path, {"SHOPREC_SERVE_ONLINE_STORE": ""}).online_store is None


def test_precedence_is_flags_then_environment_then_file_then_defaults(tmp_path):
    path = _file(tmp_path, "port = 6001\nworkers = 3\nprocesses = 2\n[limits]\nmax_k = 20\ndefault_k = 5\n")
    env = {"SHOPREC_SERVE_PORT": "6002", "SHOPREC_SERVE_WORKERS": "4", "SHOPREC_SERVE_LIMITS__MAX_K": "30"}
    cfg = load_config(path, env, {"port": 6003, "host": None})
    assert cfg.port == 6003  # flag over variable over file
    assert cfg.workers == 4  # variable over file
    assert cfg.processes == 2 and cfg.limits == Limits(max_k=30, default_k=5)  # file over default
    assert cfg.host == "127.0.0.1" and cfg.reload_seconds == 10.0  # defaults


BAD = [  # (file text, environment, flags) → substrings the message must contain: the field and the fix
    ("prot = 1\n", {}, {}, ["key prot", "valid keys", "port", "[limits] default_k"]),
    ("[limit]\nmax_k = 3\n", {}, {}, ["section [limit]", "valid keys", "[limits]"]),
    ("[limits]\nmaxk = 3\n", {}, {}, ["[limits] maxk", "max_k"]),
    ("limits = 3\n", {}, {}, ["limits in", "[limits]"]),
    ("[port]\nx = 1\n", {}, {}, ["[port]", "port = ..."]),
    ('port = "50051"\n', {}, {}, ["port in", "integer", "e.g. 10"]),
    ("workers = true\n", {}, {}, ["workers in", "integer"]),
    ("reload_seconds = \"soon\"\n", {}, {}, ["reload_seconds in", "a number"]),
    ("port = \n", {}, {}, ["not valid TOML"]),
    ("", {"SHOPREC_SERVE_WORKERS": "eight"}, {}, ["SHOPREC_SERVE_WORKERS", "integer", "SHOPREC_SERVE_WORKERS=10"]),
    ("", {"SHOPREC_SERVE_PORT": "5.5"}, {}, ["SHOPREC_SERVE_PORT", "integer"]),
    ("", {"SHOPREC_SERVE_PROCESS": "2"}, {}, ["SHOPREC_SERVE_PROCESS:", "SHOPREC_SERVE_PROCESSES"]),
    ("", {"SHOPREC_SERVE_LIMITS__MAXK": "2"}, {}, ["SHOPREC_SERVE_LIMITS__MAXK", "SHOPREC_SERVE_LIMITS__MAX_K"]),
    ("port = 70000\n", {}, {}, ["port in", "between 0 and 65535"]),
    ("", {"SHOPREC_SERVE_PORT": "-1"}, {}, ["SHOPREC_SERVE_PORT", "between 0 and 65535"]),
    ("workers = -1\n", {}, {}, ["workers in", ">= 0"]),
    ("tf_threads = -1\n", {}, {}, ["tf_threads in", ">= 0"]),
    ("max_batch = 0\n", {}, {}, ["max_batch in", "between 1 and 256"]),
    ("", {"SHOPREC_SERVE_MAX_EVENT_BATCH": "0"}, {}, ["SHOPREC_SERVE_MAX_EVENT_BATCH", "between 1 and 256"]),
    ('ranker = "mlp"\n', {}, {}, ["ranker in", "published, dcn, lstm"]),
    ('model_runtime = "onnx"\n', {}, {}, ["model_runtime in", "lite, tensorflow"]),
    ("", {"SHOPREC_SERVE_MODEL_RUNTIME": "tf"}, {}, ["SHOPREC_SERVE_MODEL_RUNTIME", "lite, tensorflow"]),
    ('helper_threads = "fifo"\n', {}, {}, ["helper_threads in", "batch, normal"]),
    ("processes = 65\n", {}, {}, ["processes in", "between 1 and 64"]),
    ("", {}, {"processes": 0}, ["--processes", "between 1 and 64"]),
    ("port = 0\n", {"SHOPREC_SERVE_PROCESSES": "2"}, {},
     ["port in", "SHOPREC_SERVE_PROCESSES", "different free port", "fixed port"]),
    ("", {}, {"port": 0, "processes": 2}, ["--port", "--processes"]),
    ("[limits]\ndefault_k = 20\n", {"SHOPREC_SERVE_LIMITS__MAX_K": "10"}, {},
     ["[limits] default_k in", "SHOPREC_SERVE_LIMITS__MAX_K", "raise max_k"]),
    ("[limits]\nmax_k = 0\n", {}, {}, ["[limits] max_k in", "at least 1"]),
    ("[limits]\nmax_id_length = 0\n", {}, {}, ["[limits] max_id_length in", "at least 1"]),
    ("[quotas]\ntwo_tower = -1\n", {}, {}, ["[quotas] two_tower in", ">= 0"]),
    ("", {"SHOPREC_SERVE_QUOTAS__NEW_ITEM_DAYS": "-2"}, {}, ["SHOPREC_SERVE_QUOTAS__NEW_ITEM_DAYS", ">= 0"]),
    ("[quotas]\ntrending = 0\nnew = 0\npopular = 0\n", {}, {}, ["[quotas] popular in", "cold-start"]),
    ('online_store = "mysql://db"\n', {}, {}, ["online_store in", "sqlite", "redis://HOST:PORT"]),
    ("", {}, {"online_store": "redis://nohost"}, ["--online-store", "redis://HOST:PORT"]),
    ("store_retry_seconds = -1\n", {}, {}, ["store_retry_seconds in", ">= 0"]),
    ("store_read_timeout_seconds = 0\n", {}, {}, ["store_read_timeout_seconds in", "between 0 and 60"]),
    ("reload_seconds = 0\n", {}, {}, ["reload_seconds in", "> 0"]),
    ('host = ""\n', {}, {}, ["host in", "0.0.0.0"]),
    ("metrics_port = 70000\n", {}, {}, ["metrics_port in", "between 0 and 65535"]),
    ("port = 9464\n", {"SHOPREC_SERVE_METRICS_PORT": "9464"}, {},
     ["SHOPREC_SERVE_METRICS_PORT", "port in", "a port of its own"]),
]


@pytest.mark.parametrize("text, env, cli, expected", BAD, ids=[f"{i}-{c[3][0]}" for i, c in enumerate(BAD)])
def test_every_invalid_setting_names_the_field_and_the_fix(tmp_path, text, env, cli, expected):
    path = _file(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, env, cli)
    message = str(error.value)
    assert all(part in message for part in expected), message
    if " in " in expected[0]:
        assert str(path) in message  # a file key is named with its file


def test_a_missing_file_points_at_the_example(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*shoprec-serve.toml"):
        load_config(tmp_path / "nope.toml", env={})


def test_serve_command_applies_flags_over_environment_over_file(tmp_path, monkeypatch, capsys):
    """Through the real CLI: the error names where the winning (invalid) value came from."""
    from shoprec.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, args.processes, args.config) == (None,) * 5  # unset, not defaulted
    path = _file(tmp_path, "processes = 2\nport = 6000\n")
    monkeypatch.setenv("SHOPREC_SERVE_PORT", "0")
    assert main(["--workspace", str(tmp_path), "serve", "--config", str(path)]) == 2
    assert "ConfigError: SHOPREC_SERVE_PORT: port 0 cannot be used" in capsys.readouterr().err
    monkeypatch.setenv("SHOPREC_SERVE_PORT", "6001")
    assert main(["--workspace", str(tmp_path), "serve", "--config", str(path), "--port", "0"]) == 2
    assert "ConfigError: --port: port 0 cannot be used with 2 processes (from processes in" in capsys.readouterr().err


def _listener(reuse_port: bool) -> socket.socket:
    s = socket.socket()
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_taken_port_is_refused_before_anything_loads(reuse_port):
    """Even by a listener with SO_REUSEPORT, which would otherwise silently share the traffic."""
    from serving.launcher import PortInUse, check_port_free

    with _listener(reuse_port) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is already in use.*--port"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def _channels_to_one_process(address: str) -> list:
    """Two connections that the kernel gave to the same server process."""
    import grpc

    from serving.client import OWN_CONNECTION
    from serving.proto import recommender_pb2 as pb
    from serving.proto import recommender_pb2_grpc as pb_grpc

    by_process: dict[int, list] = {}
    for _ in range(40):
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        process = pb_grpc.RecommenderStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10).process
        by_process.setdefault(process, []).append(channel)
        if len(by_process[process]) == 2:
            for other in by_process.values():
                for c in other:
                    if c not in by_process[process]:
                        c.close()
            return by_process[process]
    raise AssertionError("40 connections never shared a process")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_share_one_port_and_answer_real_calls(trained_workspace, scrape, free_ports):
    import pandas as pd

    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from serving.client import RecommenderClient, _Connections
    from serving.launcher import ServerProcesses
    from serving.metrics import MULTIPROCESS_ENV
    from serving.proto import recommender_pb2 as pb
    from serving.proto import recommender_pb2_grpc as pb_grpc

    port, metrics_port = free_ports(2)
    cfg = ServingConfig(port=port, processes=2, workers=2, metrics_port=metrics_port)
    env_before = {name: os.environ.get(name) for name in MULTIPROCESS_ENV}  # Feast may have set them
    feast_dirs = set(Path(tempfile.gettempdir()).glob("feast_metrics_*"))
    users = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[:10]
    lines: list[str] = []
    group = ServerProcesses(cfg, trained_workspace.root, out=lines.append, startup_timeout=90)
    try:
        assert group.start()
        assert len(lines) == 2 and all(f"127.0.0.1:{cfg.port}" in line for line in lines), lines
        assert len({p.pid for p in group.processes}) == 2 and all(p.is_alive() for p in group.processes)
        answered = 0
        for i in range(20):  # a new channel (connection) per call, so the kernel spreads them
            with RecommenderClient(group.address, timeout=10) as client:
                response = client.recommend(str(users[i % len(users)]), k=5)
                answered += len(response.items) == 5 and response.personalized
        assert answered == 20
        with RecommenderClient(group.address, timeout=10, balance=True) as client:
            # One connection per process, each knowing its number; calls in flight are spread.
            assert sorted(pb_grpc.RecommenderStub(c).GetInfo(pb.GetInfoRequest(), timeout=10).process
                          for c in client.channels) == [1, 2]
            with ThreadPoolExecutor(6) as pool:
                pages = list(pool.map(lambda n: client.recommend(str(users[n % 3]), k=5), range(36)))
            assert min(client.routes.calls) >= 6, client.routes.calls
            assert all(p.items == pages[n % 3].items for n, p in enumerate(pages))  # same answer from either
        with RecommenderClient(group.address, timeout=10, balance=True, max_in_flight_per_process=1) as capped:
            # 6 threads, 2 processes, one call each at a time: the rest wait in the client, and all answer.
            with ThreadPoolExecutor(6) as pool:
                capped_pages = list(pool.map(lambda n: capped.recommend(str(users[n % 3]), k=5), range(36)))
            assert [p.items for p in capped_pages] == [pages[n % 3].items for n in range(36)]
            assert capped.routes.peak == 1 and capped.routes.waited > 0, vars(capped.routes)
            assert min(capped.routes.calls) >= 6, capped.routes.calls
            # A reconnect may put both connections on one process: the next check connects anew,
            # while the other calls wait for room on the old connections; every call answers.
            capped._conns = _Connections.over(_channels_to_one_process(group.address), capped.routes.cap)
            capped._next_check = 0.0
            with ThreadPoolExecutor(6) as pool:
                after = list(pool.map(lambda n: capped.recommend(str(users[n % 3]), k=5), range(12)))
            assert [p.items for p in after] == [pages[n % 3].items for n in range(12)]
            assert sorted(pb_grpc.RecommenderStub(c).GetInfo(pb.GetInfoRequest(), timeout=10).process
                          for c in capped.channels) == [1, 2]
            assert capped.routes.cap == 1  # the new connections keep the client's cap
        with pytest.raises(grpc.RpcError) as error:
            RecommenderClient(group.address, timeout=10).recommend("", k=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # One scrape of the parent's endpoint sums both processes (each served some of the calls).
        counted = scrape(cfg.metrics_port)
        assert all(name.startswith("shoprec_") for name, _ in counted)  # not Feast's, which it writes there too
        assert counted[("shoprec_requests_total", frozenset({"rpc": "Recommend", "code": "OK"}.items()))] == 104
        assert counted[("shoprec_requests_total",
                        frozenset({"rpc": "Recommend", "code": "INVALID_ARGUMENT"}.items()))] == 1
        assert counted[("shoprec_request_duration_seconds_count", frozenset({"rpc": "Recommend"}.items()))] == 105
        lookups = sum(v for (name, _), v in counted.items() if name == "shoprec_user_cache_lookups_total")
        assert lookups == 104 + 2  # each answered call (all with history) and each process's warm-up product page
        # Per process, the versions it serves (a pid label each); the store gauge is their maximum.
        serving = {dict(labels)["pid"] for (name, labels), v in counted.items()
                   if name == "shoprec_serving_versions" and v == 1}
        assert serving == {str(p.pid) for p in group.processes}
        assert counted[("shoprec_online_store_down", frozenset())] == 0
        os.kill(group.processes[1].pid, signal.SIGKILL)  # a crash while serving is noticed and named
        assert re.match(r"process 2/2 \(pid \d+\) exited with code -9 while serving", group.wait(threading.Event()))
        # The killed process's counts are not lost: its values stay in the shared directory.
        assert scrape(cfg.metrics_port)[("shoprec_requests_total",
                                         frozenset({"rpc": "Recommend", "code": "OK"}.items()))] == 104
        shared = group.shared_metrics.path
    finally:
        group.stop()
    assert group.processes[0].exitcode == 0  # SIGTERM: drained and exited, not killed
    assert not shared.exists()
    assert {name: os.environ.get(name) for name in MULTIPROCESS_ENV} == env_before  # as it was
    assert set(Path(tempfile.gettempdir()).glob("feast_metrics_*")) <= feast_dirs  # none left by the children


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_process_that_cannot_start_is_named_with_its_error(tmp_path, free_ports):
    from serving.launcher import ServerProcesses, ServerProcessFailed

    group = ServerProcesses(ServingConfig(port=free_ports(1)[0], processes=2), tmp_path, out=print,
                            startup_timeout=90)
    try:
        with pytest.raises(ServerProcessFailed, match=r"process [12]/2 \(pid \d+\) failed at startup: "
                                                      r"ModelNotLoaded: .*shoprec train"):
            group.start()
    finally:
        group.stop()
    assert not any(p.is_alive() for p in group.processes)


def test_tensorflow_threads_are_capped_before_the_runtime_starts_and_a_late_cap_only_warns(caplog):
    import subprocess
    import sys

    code = ("from serving.launcher import limit_tensorflow_threads as cap; cap(1); import tensorflow as tf; "
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.split()[-2:] == ["1", "1"], out.stderr[-2000:]

    import tensorflow as tf

    from serving.launcher import limit_tensorflow_threads

    tf.constant(1.0) + 1.0  # the runtime is running in this process now
    before = tf.config.threading.get_intra_op_parallelism_threads()
    limit_tensorflow_threads(before + 1)
    assert tf.config.threading.get_intra_op_parallelism_threads() == before
    assert "not applied" in caplog.text
