"""Progress lines for long jobs: each step says when it starts and how long it took."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Numbered steps with wall times; ``timings`` keeps them for the job summary."""

    def __init__(self, total: int | None = None, stream=None):
        self.total = total
        self.n = 0
        self.timings: dict[str, float] = {}
        self.stream = stream or sys.stdout

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.n += 1
        prefix = f"[{self.n}/{self.total}]" if self.total else f"[{self.n}]"
        self.say(f"{prefix} {name} ...")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[name] = round(seconds, 2)
        self.say(f"{prefix} {name}: done in {seconds:.1f}s")
