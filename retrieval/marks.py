"""Per-thread scratch for the one-pass compiled kernels of a request (candidate merging,
co-occurrence sums): an int32 array of -1 over every row, in which a kernel marks the rows it
has seen and which it resets before returning. One array per thread, because requests run on
several threads and the kernels release the GIL."""
from __future__ import annotations

import threading

import numpy as np


class PerThreadMarks:
    """``get()``: this thread's array of ``size`` marks, all -1 (made on first use)."""

    def __init__(self, size: int):
        self.size = size
        self._local = threading.local()

    def get(self) -> np.ndarray:
        marks = getattr(self._local, "marks", None)
        if marks is None:
            marks = self._local.marks = np.full(self.size, -1, np.int32)
        return marks
