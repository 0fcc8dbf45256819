"""Load generator for the gRPC service: fixed concurrency, warm-up, measured window, percentiles.

C coroutines (grpc.aio) send requests back to back, each on its own channel (TCP connection)
so that SO_REUSEPORT can spread them over the server processes; with ``--routing least-busy``
instead, over one connection per server process, each request to the process with fewer in
flight (what serving/client.py's balancing client does). Requests started during the warm-up
are not measured; requests started in the measured window count (p50/p90/p99 over the
successful ones, QPS = measured requests / window, errors by status code, the client's own GC
pauses). Recommend (k=20) goes to real user ids of the workspace (a seeded sample of users with
events; ``--unknown-share`` of new ids).
Baseline in the same run: GetInfo, a trivial unary call, at the same concurrency, alternated
with Recommend in every repetition. The client runs in this process and the server in its own
(``shoprec serve --processes N`` started here, or ``--address`` of a running one); CPU time of
each, and of everything else on the machine, is read from /proc over every window, because on
2 cores client and server compete for the same CPUs.

Then, per server: RecordEvents → visible latency (a purchase of the user's highest-placed item
that is not a repeat-purchase item, a view of an item outside the page; poll Recommend until the
page changes and the bought item has left it), idle and under background
load. Finally, in this process after the servers are gone: candidates actually ranked per quota
setting, and the naive path (bench/naive_path.py) against the design's, sequential and on 8
threads.

With ``--out``, the JSON is written there and a plot beside it (``.svg``): latency by
percentile, one line per start and method, against the p99 target.

    cp -r var /tmp/load_ws   # a trained workspace; RecordEvents writes into its online store
    .venv/bin/python bench/load.py --workspace /tmp/load_ws --servers 1 2 2:two_tower=520 \
        --concurrency 1 8 --rates 100 200 400 --repeats 3 --out /tmp/load.json   # ~30 min
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The servers get the environment this bench was started with; the gRPC setting below is the
# client's alone. On 2 cores the load generator takes its CPU from the servers it measures, and
# grpcio's event-engine client costs ~0.11 ms more CPU per call than the older client stack
# (0.41 vs 0.30 ms per Recommend, docs/benchmarks.md, nineteenth session). Set GRPC_EXPERIMENTS
# yourself to override.
CLIENT_GRPC_EXPERIMENTS = "-event_engine_client"
SERVER_ENV = dict(os.environ)
if __name__ == "__main__":  # the bench's own process, not a test importing its functions
    os.environ.setdefault("GRPC_EXPERIMENTS", CLIENT_GRPC_EXPERIMENTS)

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from bench.load_server import ServerProcess, cpu_snapshot, cpu_usage, loadavg  # noqa: E402
from serving.client import OWN_CONNECTION, LeastBusy, ProcessFinder  # noqa: E402
from serving.proto import recommender_pb2 as pb  # noqa: E402
from serving.proto import recommender_pb2_grpc as pb_grpc  # noqa: E402

CHANNEL_OPTIONS = OWN_CONNECTION  # one TCP connection per channel


class GcPauses:
    """The client's garbage-collection pauses while it is in use: every coroutine stops during
    one, so a pause would count as server latency for each call in flight."""

    def __init__(self):
        self.started, self.pauses = 0.0, []  # (generation, seconds)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self.started))

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def summary(self) -> dict:
        ms = [p * 1000 for _, p in self.pauses]
        return {"collections": len(ms), "gen2": sum(g == 2 for g, _ in self.pauses),
                "total_ms": round(sum(ms), 1), "max_ms": round(max(ms, default=0.0), 2)}


def per_request_cpu(out: dict) -> dict:
    """CPU milliseconds per request of the server and of the client: steadier than QPS on a
    shared machine, and what decides throughput once the cores are full."""
    for side in ("server", "client"):
        out[f"{side}_cpu_ms_per_req"] = round(out[f"{side}_cores"] * 1000 / out["qps"], 3) if out["qps"] else None
    return out


# The latency curve each window records (``latency_by_percentile_ms``) and --plot draws: denser
# towards the tail, where the target is.
CURVE_PERCENTILES = (10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.8, 99.9)


def summary(lat_s: list[float], window_s: float, errors: dict[str, int]) -> dict:
    ms = np.array(lat_s) * 1000 if lat_s else np.array([np.nan])
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3),
            "n": len(lat_s), "qps": round((len(lat_s) + sum(errors.values())) / window_s, 1), "errors": errors,
            "latency_by_percentile_ms": [[q, round(float(v), 3)]
                                         for q, v in zip(CURVE_PERCENTILES, np.percentile(ms, CURVE_PERCENTILES))]}


def stalls(started_s: list[float], lat_s: list[float], routes: list[int], processes: int,
           window_s: float, gap_s: float = 0.05) -> dict:
    """The shape of a window's tail, per server process (``routes``; with one connection per
    coroutine the process is not known and all count as one): a slow start (docs/benchmarks.md) stalls
    one process now and then, so that the few calls it has in flight all come back late together,
    while a slow machine makes every call a little slower. A call is slow above twice the
    window's p50; a stall is a run of slow calls to one process that started within ``gap_s``
    of each other."""
    if not lat_s:
        return {}
    lat, started, route = np.array(lat_s) * 1000, np.array(started_s), np.array(routes)
    slow = lat > 2 * np.percentile(lat, 50)
    runs = 0
    for k in range(processes):
        times = np.sort(started[slow & (route == k)])
        runs += int(len(times) > 0) + int(np.sum(np.diff(times) > gap_s))
    out = {"slow_share": round(float(slow.mean()), 4), "stalls_per_s": round(runs / window_s, 2)}
    if processes > 1:
        out["p99_ms_per_process"] = [round(float(np.percentile(lat[route == k], 99)), 2) if np.any(route == k)
                                     else None for k in range(processes)]
    return out


async def channels_per_process(address: str) -> list[grpc.aio.Channel]:
    """One connection to each server process, as ``RecommenderClient(balance=True)`` opens them."""
    finder = ProcessFinder()
    while finder.wanted():
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        info = await pb_grpc.RecommenderStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10)
        if not finder.offer(info, channel):
            await channel.close()
    return finder.found()


async def load_run(address: str, method: str, requests: list, concurrency: int, warmup_s: float,
                   duration_s: float, max_requests: int, deadline_s: float, server_pids=lambda: [],
                   stop: asyncio.Event | None = None, connections: int = 0, balance: bool = False,
                   cap: int = 0) -> dict:
    """One measured window at fixed concurrency; ``method``: "Recommend", "GetInfo" or "RecordEvents".

    ``connections``: 0 gives each coroutine a connection of its own; N > 0 opens N and sends
    each request on the next one in turn (a backend's connection pool: with many connections
    SO_REUSEPORT's random split of them over the server processes evens out).
    ``balance``: instead, one connection per server process and each request to the process
    with the fewest requests in flight (serving/client.py's balancing client).
    With ``stop``, the window lasts until it is set (background load for the freshness test).
    ``cap`` (with ``balance``): at most this many calls in flight per process; the others wait in
    the client, and their latency counts from before the wait.
    """
    pooled = connections > 0 and not balance
    if balance:
        channels = await channels_per_process(address)
    else:
        channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                    for _ in range(connections if pooled else concurrency)]
    await asyncio.gather(*(c.channel_ready() for c in channels))
    calls = [getattr(pb_grpc.RecommenderStub(c), method) for c in channels]
    routes = LeastBusy(len(calls), cap)
    counter = iter(range(1 << 62))
    turn = iter(range(1 << 62))
    lat: list[float] = []
    started: list[float] = []  # send times and processes of the calls in lat (for stalls())
    routed: list[int] = []
    errors: dict[str, int] = {}
    personalized = [0]
    loop = asyncio.get_running_loop()
    window = {"start": loop.time() + warmup_s, "end": float("inf")}
    done = asyncio.Event()

    async def take() -> int:  # the balancing client's routing, cap and queue, on futures
        slot = loop.create_future()
        route = routes.take_or_queue(slot.set_result)
        return route if route is not None else await slot  # done() hands the freed process over

    async def worker(own_call) -> None:
        while not done.is_set():
            req = requests[next(counter) % len(requests)]
            t0 = loop.time()
            route = await take() if balance else None
            call = calls[route] if balance else calls[next(turn) % len(calls)] if pooled else own_call
            try:
                resp = await call(req, timeout=deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            finally:
                if balance:
                    routes.done(route)
            t1 = loop.time()
            if window["start"] <= t0 < window["end"]:
                if code == "OK":
                    lat.append(t1 - t0)
                    started.append(t0)
                    routed.append(route if balance else 0)
                    personalized[0] += bool(getattr(resp, "personalized", False))
                else:
                    errors[code] = errors.get(code, 0) + 1
                if max_requests and len(lat) + sum(errors.values()) >= max_requests:
                    window["end"] = t1
                    done.set()

    async def clock() -> dict:
        await asyncio.sleep(warmup_s)
        before = cpu_snapshot(server_pids())
        try:
            if stop is not None:
                await stop.wait()
                raise asyncio.TimeoutError
            await asyncio.wait_for(done.wait(), timeout=duration_s if not max_requests else None)
        except asyncio.TimeoutError:
            window["end"] = loop.time()
        done.set()
        return cpu_usage(before, cpu_snapshot(server_pids()))

    workers = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(concurrency)]
    with GcPauses() as pauses:
        cpu = await clock()
    await asyncio.gather(*workers)
    await asyncio.gather(*(c.close() for c in channels))
    out = summary(lat, window["end"] - window["start"], errors)
    out.update(cpu)
    per_request_cpu(out)
    out["client_gc"] = pauses.summary()
    out.update(personalized_share=round(personalized[0] / max(len(lat), 1), 3) if method == "Recommend" else None)
    if balance:
        out["calls_per_process"] = routes.calls
        if cap:  # how often the cap made a call wait in the client
            out["waited_share"] = round(routes.waited / max(sum(routes.calls), 1), 3)
    out.update(stalls(started, lat, routed, len(calls) if balance else 1, window["end"] - window["start"]))
    return out


async def open_loop(address: str, requests: list, rate: float, warmup_s: float, duration_s: float,
                    deadline_s: float, server_pids=lambda: [], channels_n: int = 8, max_in_flight: int = 256,
                    seed: int = 0, balance: bool = False) -> dict:
    """Poisson arrivals at ``rate`` per second, whatever the server's speed (a shop's traffic does
    not wait for the previous answer). Latency counts from the scheduled send time, so a client
    or server that falls behind shows up in the percentiles instead of slowing the arrivals.
    Arrivals beyond ``max_in_flight`` outstanding calls are counted as shed, not sent.

    Without ``balance`` the calls take ``channels_n`` connections in turn, wherever SO_REUSEPORT
    put them: 8 connections over 2 processes are split 7 + 1 about one time in fourteen, and
    then one process gets 7/8 of the traffic. With it, as in ``load_run``: one connection per
    process, each call to the one with fewer in flight."""
    if balance:
        channels = await channels_per_process(address)
    else:
        channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channels_n)]
    await asyncio.gather(*(c.channel_ready() for c in channels))
    calls = [pb_grpc.RecommenderStub(c).Recommend for c in channels]
    routes = LeastBusy(len(calls))
    started: list[float] = []  # scheduled send times and processes of the calls in lat (for stalls())
    routed: list[int] = []
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    start = loop.time() + warmup_s
    end = start + duration_s
    lat: list[float] = []
    errors: dict[str, int] = {}
    shed = [0]
    tasks: set[asyncio.Task] = set()

    async def one(n: int, t_sched: float) -> None:
        route = routes.take() if balance else n % len(calls)
        try:
            await calls[route](requests[n % len(requests)], timeout=deadline_s)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        finally:
            if balance:
                routes.done(route)
        if t_sched >= start:
            if code == "OK":
                lat.append(loop.time() - t_sched)
                started.append(t_sched)
                routed.append(route if balance else 0)
            else:
                errors[code] = errors.get(code, 0) + 1

    t_sched, n, before = loop.time(), 0, None
    while t_sched < end:
        t_sched += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, t_sched - loop.time()))
        if before is None and t_sched >= start:
            before = cpu_snapshot(server_pids())
        if len(tasks) >= max_in_flight:
            shed[0] += t_sched >= start
            continue
        task = asyncio.create_task(one(n, t_sched))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    cpu = cpu_usage(before, cpu_snapshot(server_pids()))
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in channels))
    out = summary(lat, duration_s, errors)
    out.update(cpu)
    per_request_cpu(out)
    out.update(offered_qps=rate, shed=shed[0], routing="least-busy" if balance else "connection")
    if balance:
        out["calls_per_process"] = routes.calls
    out.update(stalls(started, lat, routed, len(calls) if balance else 1, duration_s))
    return out


async def freshness(address: str, users: list[str], event_type: str, k: int, timeout_s: float,
                    pool_users: list[str], background=None, read_recent=None, repeatable=frozenset()) -> dict:
    """Per user: the page before, one event, then Recommend back to back until the page changes.

    purchase: of the highest-placed item not in ``repeatable`` (items people buy again may
    rightly stay on the page), and records when it leaves the page; view/add_to_cart: of an item
    not on the page (from other users' pages) and not the user's latest item.
    ``read_recent(user)``: the user's recent items from the online store, read once after the
    polls: whether the event reached the features even when it did not move the top k.
    """
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        item_pool: list[str] = []  # items on other users' pages: what a view "outside the page" picks from
        for u in pool_users[:20]:
            page = await stub.Recommend(pb.RecommendRequest(user_id=u, k=k), timeout=5)
            item_pool += [r.item_id for r in page.items if r.item_id not in item_pool]
        stop = asyncio.Event()
        bg = asyncio.create_task(background(stop)) if background is not None else None
        if bg is not None:
            await asyncio.sleep(2.0)  # let the background load reach steady state
        changed, gone, ack, polls, rejected, repeat_only = [], [], [], [], 0, 0
        in_features: list[bool] = []
        loop = asyncio.get_running_loop()

        async def newest_stored(user: str) -> list[str]:
            # On a thread: a synchronous store read here would hold up this loop's background
            # load coroutines too, and show up as their latency.
            return list(await asyncio.to_thread(read_recent, user))[-1:]

        for n, user in enumerate(users):
            before = await stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=5)
            ids = [r.item_id for r in before.items]
            if not ids:
                continue
            if event_type == "purchase":
                pos = next((p for p, i in enumerate(ids) if i not in repeatable), None)
                if pos is None:  # a page of repeat-purchase items only: nothing that must leave it
                    repeat_only += 1
                    continue
                item, price = ids[pos], before.items[pos].price
            else:
                # Not the user's latest item either: a repeat of it is merged into it by design
                # (feature_repo/realtime.py), so it need not move the page. Runs on one workspace
                # view the same items again: 24 of 100 such repeats left the page as it was.
                latest = set(await newest_stored(user)) if read_recent is not None else set()
                item, price = next(i for i in item_pool[n % len(item_pool):] + item_pool
                                   if i not in ids and i not in latest), 0.0
            t0 = loop.time()
            resp = await stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(
                user_id=user, item_id=item, event_type=event_type, price=price)]), timeout=5)
            ack.append(loop.time() - t0)
            if resp.accepted != 1:
                rejected += 1
                continue
            t_changed = t_gone = None
            count = 0
            while loop.time() - t0 < timeout_s and (t_changed is None or (event_type == "purchase" and t_gone is None)):
                page = [r.item_id for r in (await stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=5)).items]
                count += 1
                now = loop.time() - t0
                if t_changed is None and page != ids:
                    t_changed = now
                if t_gone is None and item not in page:
                    t_gone = now
            changed.append(t_changed)
            gone.append(t_gone)
            polls.append(count)
            if read_recent is not None:
                in_features.append(await newest_stored(user) == [item])
        stop.set()
        bg_result = await bg if bg is not None else None

    def dist(values: list) -> dict:
        seen = np.array([v for v in values if v is not None]) * 1000
        if not len(seen):
            return {"visible": 0, "of": len(values)}
        return {"visible": len(seen), "of": len(values), "p50_ms": round(float(np.percentile(seen, 50)), 2),
                "p90_ms": round(float(np.percentile(seen, 90)), 2), "p99_ms": round(float(np.percentile(seen, 99)), 2),
                "max_ms": round(float(seen.max()), 2),
                "share_within_1s": round(float(np.sum(seen <= 1000) / len(values)), 4)}

    out = {"event": event_type, "users": len(users), "rejected": rejected, "page_changed": dist(changed),
           "record_events_p50_ms": round(float(np.median(ack)) * 1000, 2) if ack else None,
           "polls_p50": float(np.median(polls)) if polls else None,
           "newest_in_features": f"{sum(in_features)}/{len(in_features)}" if read_recent is not None else None}
    if event_type == "purchase":
        out.update(item_left_page=dist(gone), pages_of_repeat_items_only=repeat_only)
    if bg_result is not None:
        out["background_load"] = bg_result
    return out


def repeat_purchase_items(ws_root: Path) -> frozenset[str]:
    """Items the live index lets back on a buyer's page (repeat rate at or above the default rule's)."""
    from feature_repo.artifacts import ArtifactStore
    from feature_repo.workspace import Workspace
    from serving.models import repeat_purchase_rates
    from serving.rules import Rules

    rates = repeat_purchase_rates(ArtifactStore(Workspace.at(ws_root).models_dir / "index").current())
    return frozenset(i for i, rate in rates.items() if rate >= Rules().repeat_purchase_rate)


def pick_users(ws_root: Path, n: int, seed: int) -> list[str]:
    """A seeded shuffle of users with events in the clean tables (known to the online store)."""
    import pyarrow.parquet as pq

    users = sorted(set(pq.read_table(ws_root / "data" / "clean" / "events.parquet", columns=["user_id"])
                       .column("user_id").to_pylist()))
    random.Random(seed).shuffle(users)
    return users[:n]


def parse_server(spec: str) -> tuple[int, dict[str, int], dict[str, str]]:
    """"2" → 2 processes, defaults; "2:two_tower=520,ranker=dcn" → with those quotas
    (serving/candidates.py) and top-level serving settings (serving/config.py)."""
    from dataclasses import fields

    from serving.candidates import Quotas

    procs, _, rest = spec.partition(":")
    pairs = [kv.split("=", 1) for kv in rest.split(",") if kv]
    quota_names = {f.name for f in fields(Quotas)}
    return (int(procs), {k: int(v) for k, v in pairs if k in quota_names},
            {k: v for k, v in pairs if k not in quota_names})


def median_of(runs: list[dict]) -> dict:
    keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "qps", "client_cores", "server_cores", "other_cores",
            "server_cpu_ms_per_req", "client_cpu_ms_per_req", "slow_share", "stalls_per_s")
    out = {k: round(float(np.median([r[k] for r in runs])), 3) for k in keys if all(k in r for r in runs)}
    errors: dict[str, int] = {}
    for r in runs:
        for code, count in r["errors"].items():
            errors[code] = errors.get(code, 0) + count
    out.update(n=sum(r["n"] for r in runs), errors=errors, repeats=len(runs),
               loadavg_1m=[min(r["loadavg_1m"] for r in runs), max(r["loadavg_1m"] for r in runs)])
    curves = [r["latency_by_percentile_ms"] for r in runs if r.get("latency_by_percentile_ms")]
    if curves and len(curves) == len(runs):  # each percentile's median over the repeats
        out["latency_by_percentile_ms"] = [[q, round(float(np.median([c[i][1] for c in curves])), 3)]
                                           for i, (q, _) in enumerate(curves[0])]
    if runs[0].get("per_process_cores"):
        out["per_process_cores"] = runs[len(runs) // 2]["per_process_cores"]
    per_process = [r["p99_ms_per_process"] for r in runs if r.get("p99_ms_per_process")]
    if per_process and len({len(p) for p in per_process}) == 1:  # process k's median over the repeats
        out["p99_ms_per_process"] = [None if None in ps else round(float(np.median(ps)), 2)
                                     for ps in zip(*per_process)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var", help="trained workspace (RecordEvents writes to its online store)")
    p.add_argument("--address", default=None, help="load a running server instead of starting one")
    p.add_argument("--servers", nargs="+", default=["1", "2"],
                   help="server setups to start, each PROCESSES[:KEY=VALUE,...]: quotas of serving/candidates.py "
                        "and top-level serving settings, e.g. 2:two_tower=520,ranker=dcn; code=DIR serves another "
                        "checkout (before/after in one run), workspace=DIR a copy of the workspace (e.g. "
                        "with another index published)")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    p.add_argument("--connections", nargs="+", type=int, default=[0],
                   help="TCP connections of the client: 0 = one per coroutine (the default), N = a pool of N "
                        "used in turn; each value is a window of its own")
    p.add_argument("--routing", nargs="+", choices=["connection", "least-busy", "least-busy-1", "least-busy-2",
                                                    "least-busy-3"], default=["connection"],
                   help="how Recommend calls reach the server processes, each a window of its own: connection = "
                        "where the kernel put each connection (SO_REUSEPORT), least-busy = the balancing client "
                        "(one connection per process, each call to the one with fewer in flight); least-busy-N "
                        "= the same with at most N calls in flight per process, the rest waiting in the client "
                        "(first come, first served; the wait counts in the latency); least-busy-2 is what "
                        "RecommenderClient(balance=True) does by default. Open-loop windows take "
                        "least-busy or connection")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds not measured, per window")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per window")
    p.add_argument("--rates", nargs="*", type=float, default=[],
                   help="also open-loop Recommend at these arrival rates (requests/s, Poisson)")
    p.add_argument("--events-load", action="store_true",
                   help="also a RecordEvents window (one view per call) at each concurrency; writes to the store")
    p.add_argument("--requests", type=int, default=0, help="end each window after this many requests instead")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--users", type=int, default=20000,
                   help="known users in the request mix. 20,000 leaves each process's user cache ~10%% of "
                        "calls, as traffic spread over many shoppers would; 2,000 lets it answer ~90%% "
                        "(a repeat-heavy mix). Each start reports its share.")
    p.add_argument("--unknown-share", type=float, default=0.0, help="share of requests for unknown user ids")
    p.add_argument("--deadline", type=float, default=2.0, help="per-call deadline in seconds")
    p.add_argument("--fresh-users", type=int, default=50, help="users per RecordEvents freshness test (0: skip)")
    p.add_argument("--fresh-events", default="purchase,view")
    p.add_argument("--fresh-load", type=int, default=8, help="background concurrency for the test under load (0: skip)")
    p.add_argument("--naive-requests", type=int, default=200, help="sequential calls per in-process path (0: skip)")
    p.add_argument("--naive-duration", type=float, default=15.0, help="measured seconds of the threaded runs")
    p.add_argument("--naive-threads", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="/tmp/shoprec_load_logs")
    p.add_argument("--out", default=None, help="write the JSON here too (and the latency plot beside it, as .svg)")
    p.add_argument("--plot", default=None, help="write the latency-by-percentile plot (SVG) here "
                   "(default: --out with .svg; none without either)")
    p.add_argument("--target-p99", type=float, default=15.0, help="the p99 target drawn on the plot, in ms")
    args = p.parse_args()

    ws = Path(args.workspace).resolve()
    # Each freshness test (per server setup, event and background load) uses users of its own.
    fresh_events = args.fresh_events.split(",") if args.fresh_users else []
    fresh_slots = len(fresh_events) * 2
    wanted_fresh = (1 if args.address else len(args.servers)) * fresh_slots * args.fresh_users
    pool = pick_users(ws, args.users + wanted_fresh, args.seed)
    fresh = min(wanted_fresh, len(pool) // 2)  # a small shop's users: half each, not an empty load mix
    fresh_pool, load_users = pool[:fresh], pool[fresh:][: args.users]
    if len(load_users) < args.users:
        print(f"note: {len(pool)} users with events in the workspace; Recommend goes to {len(load_users)} "
              f"of them, not --users {args.users}", file=sys.stderr)
    rng = random.Random(args.seed)
    ids = [u if rng.random() >= args.unknown_share else f"load-new-{i}" for i, u in enumerate(load_users * 5)]
    requests = {"Recommend": [pb.RecommendRequest(user_id=u, k=args.k) for u in ids], "GetInfo": [pb.GetInfoRequest()]}
    methods = ("GetInfo", "Recommend")
    if args.events_load:  # one view per call, as a shop reporting page views does; writes to the store
        import pyarrow.parquet as pq

        catalog = pq.read_table(ws / "data" / "clean" / "items.parquet", columns=["item_id"]).column("item_id")
        catalog = [str(i) for i in catalog.to_pylist()]
        requests["RecordEvents"] = [pb.RecordEventsRequest(events=[pb.Event(
            user_id=u, item_id=catalog[rng.randrange(len(catalog))], event_type="view")]) for u in ids]
        methods += ("RecordEvents",)
    setups = [("external", 0, {}, {})] if args.address else [(s, *parse_server(s)) for s in args.servers]
    read_recent = None
    if args.fresh_users and not args.address:
        # The bench reads the workspace's online store itself, as the server does.
        from feature_repo.store import open_store
        from feature_repo.workspace import Workspace

        store = open_store(Workspace.at(ws))

        def read_recent(user: str) -> list[str]:
            row = store.get_online_features(features=["user_recent_fv:recent_items"],
                                            entity_rows=[{"user_id": user}]).to_dict()
            return list(row["recent_items"][0] or [])
    repeatable = repeat_purchase_items(ws) if args.fresh_users and not args.address else frozenset()
    result = {"machine": machine(), "workspace": str(ws), "args": vars(args), "starts": [], "load": [],
              "open_loop": [], "freshness": []}

    for n_setup, (name, processes, quotas, settings) in enumerate(setups):
        server = None if args.address else ServerProcess(ws, processes, quotas, Path(args.log_dir), settings=settings,
                                                          env=SERVER_ENV)
        address = args.address or server.start()
        pids = (lambda: []) if server is None else server.pids
        if server is not None:
            result["starts"].append({"server": name, "seconds": server.startup_seconds, "log": str(server.log),
                                     "lines": server.startup_lines()})
        try:
            # A fresh server's first seconds are slow (first reads of each process, lazy imports,
            # page cache): load it untimed before the first window.
            asyncio.run(load_run(address, "Recommend", requests["Recommend"], 4, 0.0, 8.0, 0, 5.0, pids))
            windows = [(m, "connection") for m in methods if m != "Recommend"]
            windows[1:1] = [("Recommend", routing) for routing in args.routing]  # after the GetInfo baseline
            for c, conns in [(c, n) for c in args.concurrency for n in args.connections]:
                runs = {window: [] for window in windows}
                for rep in range(args.repeats):
                    for method, routing in windows:  # baseline alternates with the targets
                        r = asyncio.run(load_run(address, method, requests[method], c, args.warmup, args.duration,
                                                 args.requests, args.deadline, pids, connections=conns,
                                                 balance=routing.startswith("least-busy"),
                                                 cap=int(routing[len("least-busy-"):] or 0)
                                                 if routing.startswith("least-busy-") else 0))
                        r["loadavg_1m"] = loadavg()[0]
                        runs[method, routing].append(r)
                        print(f"[{name}] {method} C={c} connections={conns or c} routing={routing} rep {rep + 1}: "
                              f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms, {r['qps']} QPS, {r.get('stalls_per_s')} stalls/s, "
                              f"errors {r['errors']}, "
                              f"load {r['loadavg_1m']}", file=sys.stderr)
                for (method, routing), rs in runs.items():
                    result["load"].append({"server": name, "start": n_setup + 1, "processes": processes, "quotas": quotas or "default",
                                           "method": method, "routing": routing, "concurrency": c,
                                           "connections": conns or c, **median_of(rs), "runs": rs})
            for rate, routing in [(rate, routing) for rate in args.rates for routing in args.routing]:
                rs = []
                for rep in range(args.repeats):
                    r = asyncio.run(open_loop(address, requests["Recommend"], rate, args.warmup, args.duration,
                                              args.deadline, pids, seed=args.seed + rep,
                                              balance=routing.startswith("least-busy")))
                    r["loadavg_1m"] = loadavg()[0]
                    rs.append(r)
                    print(f"[{name}] open loop {rate}/s routing={routing} rep {rep + 1}: "
                          f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms, "
                          f"{r['qps']} QPS, errors {r['errors']}, shed {r['shed']}, load {r['loadavg_1m']}",
                          file=sys.stderr)
                result["open_loop"].append({"server": name, "processes": processes, "quotas": quotas or "default",
                                            "offered_qps": rate, "routing": routing, **median_of(rs),
                                            "shed": sum(r["shed"] for r in rs), "runs": rs})
            for k_fresh, event in enumerate(fresh_events):
                for under_load in ([0, args.fresh_load] if args.fresh_load else [0]):
                    lo = ((n_setup * fresh_slots) + k_fresh * 2 + bool(under_load)) * args.fresh_users
                    users = fresh_pool[lo: lo + args.fresh_users]
                    if len(users) < args.fresh_users:
                        print(f"note: freshness {event} bg={under_load} has {len(users)} users, not --fresh-users "
                              f"{args.fresh_users}: the workspace has too few users for every test", file=sys.stderr)
                    bg = None
                    if under_load:
                        def bg(stop, c=under_load):
                            return load_run(address, "Recommend", requests["Recommend"], c, 0.0, 0.0, 0,
                                            args.deadline, pids, stop)
                    r = asyncio.run(freshness(address, users, event, args.k, 5.0, load_users, bg, read_recent, repeatable))
                    r.update(server=name, background_concurrency=under_load, loadavg_1m=loadavg()[0])
                    result["freshness"].append(r)
                    print(f"[{name}] freshness {event} bg={under_load}: {r['page_changed']}", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()
                hits, lookups = server.user_cache_hits()
                # The share of calls the user cache answered decides the cost of a call (~1 ms more
                # for a miss on 2 cores): --users sets it, so every start reports it.
                result["starts"][-1]["user_cache_hit_share"] = round(hits / lookups, 3) if lookups else None

    if args.naive_requests and not args.address:
        from bench.naive_path import inprocess

        result["inprocess"] = inprocess(ws, load_users, [parse_server(s)[1] for s in args.servers], args)
    report(result, args.out)
    plot = args.plot or (str(Path(args.out).with_suffix(".svg")) if args.out else None)
    if plot and result["load"]:
        Path(plot).write_text(latency_plot_svg(result["load"], args.target_p99))
        print(f"latency plot: {plot}", file=sys.stderr)


def latency_plot_svg(load: list[dict], target_p99_ms: float) -> str:
    """Latency by percentile, one line per start and method (the median of its windows at each
    percentile; GetInfo, the trivial baseline, dashed), on a scale that spreads the tail: the
    distance from p50 to p90 equals that from p90 to p99 and from p99 to p99.9."""
    from shoprec.plots import Line, line_chart_svg

    nines = lambda q: -np.log10(1 - q / 100)  # noqa: E731 - p90 → 1, p99 → 2, p99.9 → 3
    lines = [Line(f"start {r.get('start', '?')}: {r['method']}"
                  + (f" {r['routing']}" if r["method"] == "Recommend" else "") + f" ({r['server']})",
                  [float(nines(q)) for q, _ in r["latency_by_percentile_ms"]],
                  [ms for _, ms in r["latency_by_percentile_ms"]], dashed=r["method"] != "Recommend")
             for r in load if r.get("latency_by_percentile_ms")]
    concurrency = sorted({r["concurrency"] for r in load})
    return line_chart_svg(lines, f"latency by percentile, C = {', '.join(map(str, concurrency))} "
                          "(start: method, server)", "percentile",
                          [(float(nines(q)), f"p{q:g}") for q in (50, 90, 99, 99.9)], y_label="ms",
                          reference=(target_p99_ms, f"target p99 {target_p99_ms:g} ms"), x_grid=True,
                          width=900, height=360, legend_width=380)


def machine() -> dict:
    import subprocess as sp

    root = Path(__file__).resolve().parents[1]
    git = lambda *a: sp.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731 - read-only
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "grpcio": grpc.__version__, "client_grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""),
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_files": git("status", "--short").splitlines(),
            "note": "client (this process) and server processes share the same cores"}


def cpu_columns(r: dict) -> dict:
    return {"server_ms/req": r.get("server_cpu_ms_per_req", ""), "client_ms/req": r.get("client_cpu_ms_per_req", ""),
            "server_cores": r.get("server_cores", ""),
            "per_process": "+".join(map(str, r.get("per_process_cores", []))) if r["processes"] > 1 else "",
            "other_cores": r.get("other_cores", ""), "load_1m": "–".join(map(str, r["loadavg_1m"]))}


def report(result: dict, out: str | None) -> None:
    from shoprec.table import render

    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        Path(out).write_text(text)
    rows = []
    def setup(r: dict) -> tuple:
        return r["server"], r["concurrency"], r.get("connections", r["concurrency"])

    base = {setup(r): r["p50_ms"] for r in result["load"] if r["method"] == "GetInfo"}
    for r in result["load"]:
        rows.append({"server": r["server"], "method": r["method"], "routing": r.get("routing", "connection"),
                     "C": r["concurrency"], "conns": r.get("connections", r["concurrency"]), "p50_ms": r["p50_ms"],
                     "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "qps": r["qps"],
                     "errors": sum(r["errors"].values()),
                     "p50/GetInfo": round(r["p50_ms"] / base[setup(r)], 1), "stalls/s": r.get("stalls_per_s", ""),
                     "p99/process": " + ".join(map(str, r.get("p99_ms_per_process", []))),
                     **cpu_columns(r)})
    print(render(rows))
    if result.get("starts"):
        print(render([{"server": st["server"], "startup_s": st["seconds"],
                       "user_cache_hits": st.get("user_cache_hit_share", ""), "log": st["log"]}
                      for st in result["starts"]]))
    if result["open_loop"]:
        print(render([{"server": r["server"], "offered_qps": r["offered_qps"], "routing": r.get("routing", ""),
                       "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "qps": r["qps"],
                       "errors": sum(r["errors"].values()), "shed": r["shed"], "stalls/s": r.get("stalls_per_s", ""),
                       "p99/process": " + ".join(map(str, r.get("p99_ms_per_process", []))), **cpu_columns(r)}
                      for r in result["open_loop"]]))
    if result["freshness"]:
        print(render([{"server": f["server"], "event": f["event"], "bg_C": f["background_concurrency"],
                       "page_changed": f"{f['page_changed']['visible']}/{f['page_changed']['of']}",
                       "newest_in_features": f.get("newest_in_features") or "",
                       "bought_item_left": (f"{f['item_left_page']['visible']}/{f['item_left_page']['of']}"
                                            if "item_left_page" in f else ""),
                       **{k: f["page_changed"].get(k, "") for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms",
                                                                      "share_within_1s")},
                       "ack_p50_ms": f["record_events_p50_ms"], "load_1m": f["loadavg_1m"]}
                      for f in result["freshness"]]))
    if result.get("inprocess"):
        ip = result["inprocess"]
        print(render(ip["candidates"]))
        if "naive_skipped" in ip:
            print(f"naive path not measured: {ip['naive_skipped']}")
        else:
            print(render(ip["paths"]))
            print(render(ip["steps"]))


if __name__ == "__main__":
    main()
