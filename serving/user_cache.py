"""Recent users' retrieval: the user tower's embedding and the two-tower candidates, kept.

Both are pure functions of what the user tower reads (the user id, the history as this request
extends it, the activity features) and of the loaded models and index. A shopper browsing
sends several Recommend calls between two recorded events, and each would pay the user-tower
call and the FAISS search again for the same inputs. Under load on 2 cores those are a third of
the pipeline's time (docs/benchmarks.md). The key is the complete input, so an event that
changes the history or the activity makes a new key, never a stale answer. Each loaded set of
models gets a new cache, so a hot reload cannot mix versions.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np


@dataclass(eq=False)
class UserRetrieval:
    """What retrieval made of one user's tower inputs; read-only arrays, shared through the cache."""

    embedding: np.ndarray  # [1, D]
    two_tower: np.ndarray | None = None  # ItemTable positions, best first; found on first use
    two_tower_scores: np.ndarray | None = None  # their inner products with the embedding (float32), found with them


class UserRetrievalCache:
    """A bounded least-recently-used map from a user's tower inputs to what retrieval made of
    them. Thread-safe: the pipeline thread and the event loop (cart calls) both use it."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"size must be >= 0 (0 keeps nothing); got {size}")
        self.size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # lookups answered and not: for benchmarks and tests
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, value: Any) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
