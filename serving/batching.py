"""Requests that queue up while a server process is busy, answered together.

With requests on the event loop (``workers = 0``), the requests that arrive while one is being
computed wait in gRPC. Answered one by one, each pays the per-call costs of the online read,
the user tower and the ranker (a TensorFlow call costs ~0.25 ms however small its batch). A
``LoopBatcher`` hands every call that is ready on the loop to one function that answers the
whole batch. An idle server's batch is the one request (it waits a few loop turns, microseconds,
for others); a busy one's is what queued up during the previous batch, at most ``max_size``.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

# Calls reach the loop one turn apart (gRPC's poller wakes it once per call): the batch is
# collected until this many turns bring no new call.
QUIET_TURNS = 2


class LoopBatcher:
    """``await batcher.submit(item)`` answers ``item`` with ``run(batch)[its position]``.

    ``run(items)`` is called on the loop's thread with 1 to ``max_size`` items and returns one
    answer per item: a value, or an exception to raise in that item's caller. If ``run`` raises,
    every caller of the batch gets its exception.
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_size: int):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1; got {max_size}")
        self._run, self.max_size = run, max_size
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._scheduled = False
        self.batches = 0  # for benchmarks and tests: batches run and calls answered
        self.calls = 0

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._collect, loop, len(self._pending), 0)
        return await future

    def _collect(self, loop: asyncio.AbstractEventLoop, seen: int, quiet: int) -> None:
        """Wait loop turns while calls keep arriving, then run what is there."""
        n = len(self._pending)
        if n < self.max_size and (n > seen or quiet < QUIET_TURNS):
            loop.call_soon(self._collect, loop, n, 0 if n > seen else quiet + 1)
            return
        batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size:]
        if self._pending:  # more than one batch queued: the rest goes next turn
            loop.call_soon(self._collect, loop, len(self._pending), QUIET_TURNS)
        else:
            self._scheduled = False
        batch = [(item, f) for item, f in batch if not f.done()]  # cancelled: the caller gave up
        if not batch:
            return
        self.batches += 1
        self.calls += len(batch)
        try:
            answers = self._run([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls got {len(answers)} answers")
        except Exception as e:  # noqa: BLE001 - every caller of the batch learns of it
            answers = [e] * len(batch)
        for (_, future), answer in zip(batch, answers):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
