"""bench/load.py's capped least-busy routing (--routing least-busy-N) over real gRPC: it drives
serving/client.py's LeastBusy queue from coroutines, and every call still gets an answer."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.load import load_run  # noqa: E402
from serving.proto import recommender_pb2 as pb  # noqa: E402


def test_a_capped_load_window_waits_in_the_client_and_loses_no_call(grpc_server):
    out = asyncio.run(load_run(grpc_server.address, "GetInfo", [pb.GetInfoRequest()], concurrency=4,
                               warmup_s=0.0, duration_s=30.0, max_requests=200, deadline_s=10.0,
                               balance=True, cap=1))
    assert out["errors"] == {} and out["n"] >= 200
    assert out["calls_per_process"] == [sum(out["calls_per_process"])]  # one process
    assert 0.5 <= out["waited_share"] <= 1.0  # 4 callers, room for 1: most calls wait their turn
