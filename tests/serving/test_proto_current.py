"""The committed generated gRPC code matches serving/proto/recommender.proto (run `make proto`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import subprocess
import sys

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path):
    (tmp_path / "serving" / "proto").mkdir(parents=True)
    shutil.copy(ROOT / "serving/proto/recommender.proto", tmp_path / "serving/proto/recommender.proto")
    # In a subprocess: protoc's C++ runtime and TensorFlow's in one process can crash.
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                           str(tmp_path / "serving/proto/recommender.proto")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "serving/proto" / name).read_text()
        assert fresh == (ROOT / "serving/proto" / name).read_text(), f"{name} is stale: run `make proto`"
