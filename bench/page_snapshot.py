"""Pages for many users and contexts, written to a file or compared with one: a guard for
refactors of the request path that must not change any answer.

For each ranker kind, 300 seeded users get five requests each (home, a product page, a cart,
a category filter, exclude + session + a price limit), 40 unknown users get a cold start, and
50 items get SimilarItems and a two-item CartRecommendations; every field of every returned
item is kept (scores rounded to 1e-5). Run it before a change with ``--out``, after it with
``--compare``; it exits non-zero and prints the first differences if any page changed.

    .venv/bin/python bench/page_snapshot.py --workspace var --out /tmp/pages_before.json
    .venv/bin/python bench/page_snapshot.py --workspace var --compare /tmp/pages_before.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def snapshot(ws_root: Path, users_n: int = 300, seed: int = 3, rankers=("dcn", "lstm")) -> dict:
    import pandas as pd

    from feature_repo.workspace import Workspace
    from serving.candidates import Quotas
    from serving.recommender import Recommender, RequestContext

    ws = Workspace.at(ws_root)
    events = pd.read_parquet(ws.clean_dir / "events.parquet", columns=["user_id", "item_id"])
    users = events["user_id"].drop_duplicates().sample(users_n, random_state=seed).tolist()
    items = events["item_id"].drop_duplicates().sample(users_n, random_state=seed + 1).tolist()
    out = {}
    for kind in rankers:
        rec = Recommender(ws, quotas=Quotas(two_tower=520), ranker=kind)
        categories = sorted(set(rec.models.items.category))
        calls = []
        for i, user in enumerate(users):
            item, other = items[i], items[(i + 7) % len(items)]
            calls += [(user, 20, RequestContext()), (user, 10, RequestContext(surface="product", viewed=item)),
                      (user, 20, RequestContext(surface="cart", cart=(item, other))),
                      (user, 20, RequestContext(category=categories[i % len(categories)])),
                      (user, 15, RequestContext(exclude=(item,), session=(other,), max_price=40.0))]
        calls += [(f"new-user-{i}", 20, RequestContext(viewed=items[i]) if i % 2 else RequestContext())
                  for i in range(40)]
        pages = []
        for start in range(0, len(calls), 3):  # batches of 3, as the server's pipeline thread answers them
            for result in rec.recommend_many(calls[start:start + 3]):
                pages.append([[x.item_id, round(x.score, 5), round(x.retrieval_score, 5), x.source, x.reason,
                               x.category, x.brand, round(x.price, 4), [round(h, 5) for h in x.heads]]
                              for x in result.items] + [result.personalized, result.degraded])
        similar = [[[x.item_id, round(x.score, 5), x.reason] for x in rec.similar_items(i, 10).items]
                   for i in items[:50]]
        carts = [[[x.item_id, x.source, x.reason] for x in rec.cart([items[i], items[i + 1]], 10).items]
                 for i in range(50)]
        out[kind] = {"pages": pages, "similar": similar, "cart": carts}
        rec.close()
    return out


def differences(before: dict, after: dict, show: int = 5) -> int:
    found = 0
    for kind, parts in before.items():
        for part, rows in parts.items():
            other = after.get(kind, {}).get(part, [])
            if len(rows) != len(other):
                print(f"{kind} {part}: {len(rows)} answers before, {len(other)} after")
                found += 1
            for i, (x, y) in enumerate(zip(rows, other)):
                if x != y:
                    found += 1
                    if found <= show:  # the first entry of the answer that differs
                        at = next((j for j, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
                        print(f"{kind} {part} #{i}, entry {at}:\n  before {x[at:at + 1]}\n  after  {y[at:at + 1]}")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--out", default=None, help="write the snapshot here")
    p.add_argument("--compare", default=None, help="compare with this earlier snapshot")
    p.add_argument("--rankers", nargs="+", default=["dcn", "lstm"], choices=["dcn", "lstm"],
                   help="ranker kinds to answer with (the bench workspaces of 100k and 1M items train the DCN only)")
    args = p.parse_args()
    if not (args.out or args.compare):
        p.error("give --out FILE (take a snapshot) and/or --compare FILE (check against one)")
    pages = snapshot(Path(args.workspace), rankers=args.rankers)
    if args.out:
        Path(args.out).write_text(json.dumps(pages))
    counts = {kind: {part: len(rows) for part, rows in parts.items()} for kind, parts in pages.items()}
    if args.compare:
        found = differences(json.loads(Path(args.compare).read_text()), pages)
        print(json.dumps({"answers": counts, "differences": found}))
        sys.exit(1 if found else 0)
    print(json.dumps({"answers": counts, "written": args.out}))


if __name__ == "__main__":
    main()
