"""Top-k metrics shared by training reports, `shoprec evaluate` and the tests (numpy only)."""
from __future__ import annotations

import numpy as np


def recall_at_k(recommended: list[list[str]], relevant: list[set[str]], k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / |relevant| (users with nothing relevant skipped)."""
    scores = [len(set(rec[:k]) & rel) / len(rel) for rec, rel in zip(recommended, relevant) if rel]
    return float(np.mean(scores)) if scores else 0.0


def ndcg_at_k(recommended: list[list[str]], relevant: list[set[str]], k: int) -> float:
    """Mean binary NDCG@k over users with at least one relevant item."""
    out = []
    for rec, rel in zip(recommended, relevant):
        if not rel:
            continue
        dcg = sum(1.0 / np.log2(i + 2) for i, r in enumerate(rec[:k]) if r in rel)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(rel))))
        out.append(dcg / idcg)
    return float(np.mean(out)) if out else 0.0
