"""Generation rate of the synthetic shop (streamed to parquet in user chunks) and peak memory.

    .venv/bin/python bench/generate.py --preset large --out /tmp/shop_large
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_repo.data.synthetic import PRESETS, write_shop  # noqa: E402
from shoprec.table import render  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="large", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: a temp dir, deleted)")
    args = p.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="shop_"))
    start = time.perf_counter()
    counts = write_shop(out, args.preset, args.seed, progress=lambda m: print(m, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mib = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    result = {"preset": args.preset, **counts, "seconds": round(seconds, 1),
              "events_per_second": round(counts["events"] / seconds), "peak_rss_mib": round(peak_mib),
              "files_mib": round(size_mib), "chunk_users": PRESETS[args.preset].chunk_users,
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    print(render([result], ["preset", "users", "items", "events", "seconds", "events_per_second", "peak_rss_mib",
                            "files_mib"]))
    if not args.out:
        for f in out.iterdir():
            f.unlink()
        out.rmdir()


if __name__ == "__main__":
    main()
