"""FAISS inner-product item indexes: build time, size, memory, single-query latency, recall vs exact.

Every index goes through `retrieval.index.ItemIndex` exactly as serving uses it (HNSW's efSearch
is raised to k by `ItemIndex.search`). Per (catalogue, factory): build seconds, serialized index
bytes, the process's peak RSS while building and searching that index (Linux VmHWM, reset per
factory), then per search setting and k: p50/p99 of single-query searches (one query per call,
after warm-up) and recall@k against `exact_top_k` (computed once per catalogue, in query chunks
so 1M items stay bounded in memory).

Catalogues: a trained model's item embeddings (`--embeddings PATH.npy`) and/or synthetic ones
(`--sizes`): ~1000 Gaussian clusters with Zipf-like sizes and different spreads, L2-normalised,
because real item embeddings are clustered and uniform random vectors misjudge ANN. Queries are
user-like: a mixture of 1-3 cluster centres (picked by cluster size) plus noise, normalised; for
real embeddings the centres come from spherical k-means on the items. Fixed seeds.

Search settings per index: IVF nprobe as built (ItemIndex.build sets DEFAULT_NPROBE = 128) and
1 to 256; HNSW efSearch = k (ItemIndex's automatic raise), 2k, 4k. `--hnsw-efc 40,100` also builds
HNSW with a larger efConstruction (ItemIndex.build cannot set it; FAISS's default is 40). PQ
factories and extra efConstruction builds are skipped once `--budget-min` has passed.

Factories are separated by ';' (they contain commas); "{nlist}" becomes ~4*sqrt(n).

    .venv/bin/python bench/index.py --sizes 100000,1000000 --hnsw-efc 40,100 --out /tmp/index_bench.json
    .venv/bin/python bench/index.py --embeddings var/models/retrieval/<version>/item_embeddings.npy
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_FACTORIES = "Flat;HNSW32;IVF{nlist},Flat;IVF{nlist},PQ16"
OPTIONAL_PREFIX = "PQ"  # PQ factories and extra HNSW efConstruction builds are skipped once the budget is spent
DEFAULT_NPROBES = "1,8,32,64,128,256"
DEFAULT_EF_FACTORS = "1,2,4"


# --------------------------------------------------------------------------- catalogues, queries

def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def synthetic_catalogue(n: int, dim: int, clusters: int, seed: int, zipf: float = 1.0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n L2-normalised items from `clusters` Gaussian clusters; sizes ∝ 1/rank^zipf, per-cluster spread.

    Cluster centres are themselves grouped around 32 "categories", so neighbouring clusters
    overlap as in trained embeddings. Returns (embeddings, centres, cluster weights).
    """
    rng = np.random.default_rng(seed)
    categories = normalise(rng.standard_normal((32, dim)))
    centres = normalise(categories[rng.integers(0, 32, clusters)] + 0.9 * normalise(rng.standard_normal((clusters, dim))))
    weights = 1.0 / np.arange(1, clusters + 1) ** zipf
    weights = rng.permutation(weights / weights.sum())
    labels = rng.choice(clusters, size=n, p=weights)
    spread = rng.uniform(0.35, 0.8, clusters).astype("float32")  # norm of the noise relative to the centre
    emb = np.empty((n, dim), dtype="float32")
    for start in range(0, n, 100_000):  # chunked so 1M x 64 stays at ~256 MB plus one chunk
        lab = labels[start:start + 100_000]
        noise = rng.standard_normal((len(lab), dim), dtype=np.float32) * (spread[lab] / math.sqrt(dim))[:, None]
        emb[start:start + len(lab)] = normalise(centres[lab] + noise)
    return emb, centres, weights


def real_centres(emb: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means centres (~sqrt(n)) and cluster weights of real item embeddings."""
    import faiss

    k = max(8, int(round(math.sqrt(len(emb)))))
    km = faiss.Kmeans(emb.shape[1], k, niter=20, spherical=True, seed=seed, verbose=False)
    km.train(emb)
    assert km.centroids is not None
    _, assign = km.index.search(emb, 1)
    weights = np.bincount(assign.ravel(), minlength=k).astype("float64")
    return normalise(km.centroids), weights / weights.sum()


def user_queries(centres: np.ndarray, weights: np.ndarray, count: int, seed: int, noise: float = 0.3) -> np.ndarray:
    """User-like query vectors: Dirichlet mixture of 1-3 centres (picked ∝ cluster size) + noise."""
    rng = np.random.default_rng(seed + 1)
    dim = centres.shape[1]
    out = np.empty((count, dim), dtype="float32")
    for i in range(count):
        m = int(rng.integers(1, 4))
        picks = rng.choice(len(centres), size=m, replace=False, p=weights)
        mix = rng.dirichlet(np.ones(m)) @ centres[picks]
        out[i] = mix + rng.standard_normal(dim) * noise / math.sqrt(dim)
    return normalise(out)


# --------------------------------------------------------------------------- measurement helpers

def exact_top_k_chunked(emb: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50) -> np.ndarray:
    """`retrieval.index.exact_top_k` over chunks of queries (1M items: ~0.2 GB per chunk of 50)."""
    from retrieval.index import exact_top_k

    return np.concatenate([exact_top_k(emb, queries[s:s + chunk], k) for s in range(0, len(queries), chunk)])


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx, exact)]))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak since the last reset) in MiB; ru_maxrss as fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next build's RSS starts clean."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def index_bytes(index) -> int:
    """Size of the index as `faiss.write_index` writes it (what `ItemIndex.save` puts on disk)."""
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss", dir="/tmp") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def single_query_latency(index, queries: np.ndarray, k: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        index.search(queries[i % len(queries)][None, :], k)
    times = np.empty(len(queries))
    for i in range(len(queries)):
        q = queries[i][None, :]
        t = time.perf_counter()
        index.search(q, k)
        times[i] = time.perf_counter() - t
    ms = times * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def search_settings(index: Any, nprobes: list[int], ef_factors: list[int]) -> list[tuple[str, Callable[[int], None]]]:
    """(label, apply(k)) per search-time setting worth reporting for this index type."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is not None:
        built = ivf.nprobe  # what ItemIndex.build set (DEFAULT_NPROBE, capped at nlist): what serving searches with

        def nprobe(p):
            def apply(k):
                ivf.nprobe = p
            return apply
        return [(f"nprobe={p}" + (" (as built)" if p == built else ""), nprobe(p)) for p in nprobes if p <= ivf.nlist]
    if hasattr(index.index, "hnsw"):
        default_ef = index.index.hnsw.efSearch

        def ef(factor):
            def apply(k):
                # factor 1 is what serving does: the factory default, which ItemIndex.search raises to k
                index.index.hnsw.efSearch = default_ef if factor == 1 else factor * k
            return apply
        return [("efSearch=k (auto)" if f == 1 else f"efSearch={f}k", ef(f)) for f in ef_factors]
    return [("exact", lambda k: None)]


def build_variants(factory: str, dim: int, ef_constructions: list[int]) -> list[tuple[str, Callable[..., Any]]]:
    """(label, build(emb, ids)) per index to build from one factory string.

    Always `ItemIndex.build` (what `shoprec index` does). For HNSW factories, each extra
    efConstruction is built the same way (factory, add) with efConstruction set before `add`,
    which ItemIndex.build cannot do, and wrapped in ItemIndex so search is unchanged.
    """
    import faiss

    from retrieval.index import ItemIndex

    variants: list[tuple[str, Callable[..., Any]]] = [(factory, lambda emb, ids: ItemIndex.build(emb, ids, factory))]
    probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if hasattr(probe, "hnsw") and faiss.try_extract_index_ivf(probe) is None:
        default = probe.hnsw.efConstruction
        for efc in ef_constructions:
            if efc == default:
                continue

            def build(emb, ids, efc=efc):
                index = faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = efc
                index.add(np.ascontiguousarray(emb, dtype="float32"))
                return ItemIndex(index, list(ids), factory)
            variants.append((f"{factory} efC={efc}", build))
    return variants


# --------------------------------------------------------------------------- the benchmark

def measure_settings(index: Any, base: dict[str, Any], queries: np.ndarray, exact_max: np.ndarray,
                     args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per search setting: recall@k (one batched search) and single-query p50/p99 per k.

    A function of its own so the settings' closures, which hold the index, die on return.
    """
    rows = []
    for label, apply in search_settings(index, args.nprobes, args.ef_factors):
        row = {**base, "search": label}
        for k in args.ks:
            apply(k)
            approx, _ = index.search(queries, k)
            row[f"recall@{k}"] = round(recall(approx, exact_max[:, :k]), 4)
            apply(k)
            lat = single_query_latency(index, queries, k, args.warmup)
            row[f"p50_ms@{k}"], row[f"p99_ms@{k}"] = lat["p50_ms"], lat["p99_ms"]
        rows.append(row)
        print(f"  {base['factory']:16s} {label:19s} build {base['build_s']:7.1f}s  " +
              "  ".join(f"k={k}: p50 {row[f'p50_ms@{k}']:.3f} ms, recall {row[f'recall@{k}']:.4f}" for k in args.ks),
              flush=True)
    return rows


def bench_catalogue(name: str, emb: np.ndarray, queries: np.ndarray, factories: list[str], args: argparse.Namespace,
                    started: float) -> tuple[list[dict], list[str]]:
    ks, budget_s = args.ks, args.budget_min * 60
    n = len(emb)
    nlist = int(round(4 * math.sqrt(n)))
    t = time.perf_counter()
    exact_max = exact_top_k_chunked(emb, queries, max(ks))  # sorted, so the first k columns are the exact top-k
    exact_s = time.perf_counter() - t
    print(f"[{name}] n={n} dim={emb.shape[1]} exact top-{max(ks)} in {exact_s:.1f}s, load {os.getloadavg()}", flush=True)
    ids = [str(i) for i in range(n)]
    rows, notes = [], []
    builds = [v for template in factories for v in build_variants(template.format(nlist=nlist), emb.shape[1], args.hnsw_efc)]
    for factory, build in builds:
        elapsed = time.perf_counter() - started
        if (OPTIONAL_PREFIX in factory or "efC=" in factory) and elapsed > budget_s:
            notes.append(f"{name}: skipped {factory}: {elapsed / 60:.1f} min spent of the {budget_s / 60:.0f} min budget")
            print("  " + notes[-1], flush=True)
            continue
        release_memory()
        hwm_reset = reset_peak_rss()
        rss_before = rss_mb("VmRSS")
        t = time.perf_counter()
        index = build(emb, ids)
        build_s = time.perf_counter() - t
        base: dict[str, Any] = {"catalogue": name, "items": n, "factory": factory, "build_s": round(build_s, 2)}
        if hasattr(index.index, "hnsw"):
            base["efConstruction"] = index.index.hnsw.efConstruction
        rows += measure_settings(index, base, queries, exact_max, args)
        peak = rss_mb("VmHWM")
        size = index_bytes(index.index)
        for row in rows:
            if row["factory"] == factory and row["catalogue"] == name:
                row["index_mib"] = round(size / 2**20, 1)
                row["rss_before_mib"] = rss_before
                row["peak_rss_mib"] = peak if hwm_reset else None
                row["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        del index
        release_memory()
    return rows, notes


def main() -> None:
    import faiss

    from shoprec.table import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="synthetic catalogue sizes, comma-separated "
                   "(default 100000,1000000 unless --embeddings is given)")
    p.add_argument("--embeddings", type=Path, default=None, help="a trained model's item_embeddings.npy")
    p.add_argument("--factories", default=DEFAULT_FACTORIES, help="';'-separated FAISS factory strings, {nlist} = ~4*sqrt(n)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ks", default="100,500")
    p.add_argument("--nprobes", default=DEFAULT_NPROBES, help="IVF nprobe values to report")
    p.add_argument("--ef-factors", default=DEFAULT_EF_FACTORS, help="HNSW efSearch = factor*k (1 = ItemIndex's auto)")
    p.add_argument("--hnsw-efc", default="40", help="HNSW efConstruction values (40 = the factory default, "
                   "built by ItemIndex.build; others are extra builds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-min", type=float, default=20.0,
                   help="PQ factories are skipped once this many minutes have passed")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    ks = args.ks = [int(k) for k in args.ks.split(",")]
    args.nprobes = [int(x) for x in args.nprobes.split(",")]
    args.ef_factors = [int(x) for x in args.ef_factors.split(",")]
    args.hnsw_efc = [int(x) for x in args.hnsw_efc.split(",")]
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([] if args.embeddings else [100_000, 1_000_000])
    started = time.perf_counter()
    load_start = os.getloadavg()
    rows, notes, catalogues = [], [], []

    if args.embeddings:
        emb = np.ascontiguousarray(np.load(args.embeddings), dtype="float32")
        centres, weights = real_centres(emb, args.seed)
        queries = user_queries(centres, weights, args.queries, args.seed)
        catalogues.append({"name": f"real-{len(emb)}", "source": str(args.embeddings), "items": len(emb),
                           "dim": emb.shape[1], "query_centres": len(centres)})
        r, n_ = bench_catalogue(f"real-{len(emb)}", emb, queries, factories, args, started)
        rows += r
        notes += n_
        del emb
    for n in sizes:
        t = time.perf_counter()
        emb, centres, weights = synthetic_catalogue(n, args.dim, args.clusters, args.seed)
        queries = user_queries(centres, weights, args.queries, args.seed)
        catalogues.append({"name": f"synthetic-{n}", "items": n, "dim": args.dim, "clusters": args.clusters,
                           "zipf": 1.0, "generate_s": round(time.perf_counter() - t, 2)})
        r, n_ = bench_catalogue(f"synthetic-{n}", emb, queries, factories, args, started)
        rows += r
        notes += n_
        del emb
        gc.collect()

    machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "faiss": faiss.__version__, "numpy": np.__version__, "omp_threads": faiss.omp_get_max_threads(),
               "loadavg_start": [round(x, 2) for x in load_start],
               "loadavg_end": [round(x, 2) for x in os.getloadavg()],
               "total_s": round(time.perf_counter() - started, 1)}
    settings = {"queries": args.queries, "warmup": args.warmup, "ks": ks, "seed": args.seed,
                "factories": factories, "nprobes": args.nprobes, "ef_factors": args.ef_factors,
                "hnsw_ef_construction": args.hnsw_efc, "latency": "one query per ItemIndex.search call, wall clock",
                "peak_rss": "VmHWM reset before each build (includes the catalogue, ids and exact top-k)"}
    result = {"machine": machine, "settings": settings, "catalogues": catalogues, "notes": notes, "results": rows}
    print(json.dumps(result, indent=2))
    columns = ["catalogue", "factory", "search", "build_s", "index_mib", "peak_rss_mib"]
    for k in ks:
        columns += [f"p50_ms@{k}", f"p99_ms@{k}", f"recall@{k}"]
    print(render(rows, columns))
    for note in notes:
        print(note)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
