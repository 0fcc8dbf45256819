"""Calls that arrive while a server process is busy, answered together.

Answered one by one, each Recommend pays the per-call costs of the online read, the user tower
and the ranker (a TensorFlow call costs ~0.25 ms however small its batch), and each
RecordEvents the cost of a push (~6 ms on sqlite, for one event or for eight users' events). A ``Batcher`` runs
the pipeline on one thread of its own and hands it, each time it is free, every call that
arrived meanwhile (at most ``max_size``): an idle server answers a call at once, a busy one
answers what queued up during the previous batch in one go.

Why a thread and not the event loop: gRPC's asyncio server takes a new call and its message
off the network in loop turns of its own, ~0.3-0.7 ms per call under load (measured, see
docs/benchmarks.md). While the pipeline ran on the loop, no other call got in, so every
batch held one call. On a thread of its own the loop keeps accepting calls while a batch is
computed, and those calls make the next batch.

RecordEvents always goes through a batcher (a push is the expensive part, shared by a batch).
Recommend does only with ``max_batch > 1``: with the TensorFlow Lite models served by default
a batch saves little, and the hand-off and the thread's GIL contention with the loop cost more
in the tail than it saves (docs/benchmarks.md, twelfth session).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

TIMINGS_KEPT = 20_000  # the latest calls' and batches' times behind ``timings()``


class Batcher:
    """``await batcher.submit(item)`` answers ``item`` with ``run(batch)[its position]``.

    ``run(items)`` is called on the batcher's thread, one batch at a time, with 1 to
    ``max_size`` items, and returns one answer per item: a value, or an exception to raise in
    that item's caller. If ``run`` raises, every caller of the batch gets its exception. A
    caller that is cancelled (its client gave up) before its batch starts is not computed.
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_size: int, name: str = "shoprec-batch"):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1; got {max_size}")
        self._run, self.max_size = run, max_size
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: list[tuple[Any, asyncio.Future, float]] = []  # item, its caller, arrival time
        self._busy = False
        self.batches = 0  # batches run and calls answered: for benchmarks and tests
        self.calls = 0
        # Where a call's time goes, for the server's log: waiting until its batch started on the
        # thread (the batch in progress, then the hand-over), and the run of its batch.
        self.waits: deque[float] = deque(maxlen=TIMINGS_KEPT)
        self.runs: deque[float] = deque(maxlen=TIMINGS_KEPT)

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future, time.perf_counter()))
        if not self._busy:
            self._next(loop)
        return await future

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a batch of what is waiting (called on the loop), or go idle."""
        waiting = [call for call in self._pending if not call[1].done()]
        batch, self._pending = waiting[: self.max_size], waiting[self.max_size:]
        self._busy = bool(batch)
        if not batch:
            return
        self.batches += 1
        self.calls += len(batch)
        work = loop.run_in_executor(self._thread, self._answer, [item for item, _, _ in batch])
        work.add_done_callback(lambda done: self._finish(loop, batch, done))

    def _answer(self, items: list[Any]) -> tuple[list[Any], float]:
        """The batch's answers and when its run started."""
        started = time.perf_counter()
        try:
            answers = self._run(items)
            if len(answers) != len(items):
                raise RuntimeError(f"a batch of {len(items)} calls got {len(answers)} answers")
        except Exception as e:  # noqa: BLE001 - every caller of the batch learns of it
            answers = [e] * len(items)
        self.runs.append(time.perf_counter() - started)
        return answers, started

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, done: asyncio.Future) -> None:
        if done.cancelled():
            answers = [asyncio.CancelledError()] * len(batch)
        else:
            answers, started = done.result()
            self.waits.extend(started - arrived for _, _, arrived in batch)
        for (_, future, _), answer in zip(batch, answers):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._next(loop)

    def timings(self) -> dict[str, float]:
        """p50 and p99 in ms of the latest calls' waits and batches' runs (empty before any)."""
        out = {}
        for name, values in (("wait", self.waits), ("run", self.runs)):
            if values:
                p50, p99 = np.percentile(np.array(values) * 1000, [50, 99])
                out.update({f"{name}_p50_ms": round(float(p50), 2), f"{name}_p99_ms": round(float(p99), 2)})
        return out

    def close(self) -> None:
        self._thread.shutdown(wait=False)
