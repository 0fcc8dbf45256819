"""bench/load.py's gRPC setting is the load generator's own: the servers it starts do not inherit it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.load_server import ServerProcess  # noqa: E402


def test_server_environment_is_the_given_one_plus_serving_settings(tmp_path):
    server = ServerProcess(tmp_path, 2, {"two_tower": 520}, tmp_path / "logs", settings={"ranker": "dcn"},
                           env={"PATH": "/usr/bin", "KEEP": "1"})
    env, code = server.environment()
    assert env == {"PATH": "/usr/bin", "KEEP": "1", "SHOPREC_SERVE_QUOTAS__TWO_TOWER": "520",
                   "SHOPREC_SERVE_RANKER": "dcn"}
    assert code is None


def test_code_setting_serves_another_checkout(tmp_path):
    server = ServerProcess(tmp_path, 1, {}, tmp_path / "logs", settings={"code": "/src/old"},
                           env={"PYTHONPATH": "/x"})
    env, code = server.environment()
    assert code == "/src/old" and env["PYTHONPATH"] == os.pathsep.join(["/src/old", "/x"])
    assert "SHOPREC_SERVE_CODE" not in env


def test_workspace_setting_serves_a_copy_of_the_workspace(tmp_path):
    server = ServerProcess(tmp_path / "ws", 2, {}, tmp_path / "logs", settings={"workspace": "/tmp/ws-sq8"}, env={})
    env, _ = server.environment()
    assert server.served_workspace == "/tmp/ws-sq8"
    assert "SHOPREC_SERVE_WORKSPACE" not in env  # the command's --workspace flag names it
    assert ServerProcess(tmp_path / "ws", 2, {}, tmp_path / "logs").served_workspace == str(tmp_path / "ws")


def test_importing_the_bench_leaves_grpc_settings_alone():
    # Only the bench's own process switches its gRPC client stack; a test (or tool) importing
    # its functions keeps the gRPC it was started with.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    probe = "import os, bench.load as b; print(os.environ.get('GRPC_EXPERIMENTS'), 'GRPC_EXPERIMENTS' in b.SERVER_ENV)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False"]


def test_user_cache_hits_sum_each_process_line_of_the_server_log(tmp_path):
    server = ServerProcess(tmp_path, 2, {}, tmp_path / "logs")
    assert server.user_cache_hits() == (0, 0)  # no log yet: nothing to report, no error
    server.log.parent.mkdir(parents=True, exist_ok=True)
    server.log.write_text(
        "2026-12-07 13:45:39,426 INFO serve-1/2 serving.server: user cache: 978 of 13516 lookups answered (7%) since the last reload\n"
        "2026-12-07 13:45:39,500 INFO serve-1/2 serving.server: Recommend: 10 calls answered in 5 batches\n"
        "2026-12-07 13:45:39,542 INFO serve-2/2 serving.server: user cache: 1196 of 13334 lookups answered (9%) since the last reload\n")
    assert server.user_cache_hits() == (978 + 1196, 13516 + 13334)
