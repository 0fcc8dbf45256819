"""What TLS costs a call: the same Recommender served on a plaintext port and a TLS port at once.

One call at a time on each port, in blocks alternated between them (these machines drift), for
GetInfo (a trivial call: the transport alone) and Recommend. Certificates are made for the run
(``serving.tls.make_certificates``, EC P-256). The connection's handshake is paid once, before
the measured calls; what remains is encrypting each call and its answer.

    .venv/bin/python bench/tls_cost.py --workspace var --users 200 --blocks 6
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import pandas as pd

    from feature_repo.workspace import Workspace
    from serving.client import RecommenderClient
    from serving.launcher import limit_tensorflow_threads
    from serving.server import start
    from serving.tls import channel_credentials, make_certificates, server_credentials
    from shoprec.table import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--users", type=int, default=200, help="calls per block, one user each")
    p.add_argument("--blocks", type=int, default=6, help="blocks per port, alternated")
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()

    limit_tensorflow_threads(1)
    from serving.recommender import Recommender

    ws = Workspace.at(args.workspace)
    users = (pd.read_parquet(ws.clean_dir / "events.parquet", columns=["user_id"])["user_id"].drop_duplicates()
             .sample(args.users, random_state=1).tolist())
    rec = Recommender(ws)
    with tempfile.TemporaryDirectory() as tmp:
        tls = make_certificates(tmp)
        servers = {"plaintext": start(rec, port=0),
                   "tls": start(rec, port=0, credentials=server_credentials(tls["server"], tls["server_key"]))}
        clients = {"plaintext": RecommenderClient(servers["plaintext"].address, timeout=10),
                   "tls": RecommenderClient(servers["tls"].address, timeout=10,
                                            credentials=channel_credentials(tls["ca"]))}
    blocks: dict[tuple[str, str], list[float]] = {}
    try:
        for client in clients.values():  # connect (the TLS handshake) and warm up
            for user in users[:50]:
                client.recommend(user, args.k)
                client.info()
        for b in range(args.blocks):
            order = list(clients.items()) if b % 2 == 0 else list(clients.items())[::-1]
            for port, client in order:
                for rpc, call in (("GetInfo", lambda u: client.info()), ("Recommend", lambda u: client.recommend(u, args.k))):
                    took = []
                    for user in users:
                        started = time.perf_counter()
                        call(user)
                        took.append((time.perf_counter() - started) * 1e3)
                    blocks.setdefault((rpc, port), []).append(statistics.median(took))
                print(f"block {b + 1}/{args.blocks} {port}: done", flush=True)
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
    rows = []
    for rpc in ("GetInfo", "Recommend"):
        plain, enc = statistics.median(blocks[(rpc, "plaintext")]), statistics.median(blocks[(rpc, "tls")])
        rows.append({"call": rpc, "plaintext_ms": round(plain, 3), "tls_ms": round(enc, 3),
                     "tls_vs_plaintext": round(enc / plain, 3),
                     "plaintext_blocks_ms": [round(x, 3) for x in blocks[(rpc, "plaintext")]],
                     "tls_blocks_ms": [round(x, 3) for x in blocks[(rpc, "tls")]]})
    machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "items": len(rec.models.items), "k": args.k, "users": args.users, "blocks": args.blocks,
               "quote": "the median over blocks of each block's median latency"}
    print(json.dumps({"machine": machine, "results": rows}, indent=2))
    print(render([{k: v for k, v in r.items() if not k.endswith("blocks_ms")} for r in rows]))


if __name__ == "__main__":
    main()
