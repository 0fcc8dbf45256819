"""Each candidate source's contribution to Recall on the synthetic holdout.

For every holdout user (history before the cutoff, purchases after it), gather the candidates of
each source exactly as serving does (serving/candidates.py, default quotas) from what was known
at the cutoff: the user's recent items from Feast as of the cutoff, the item table as of the
cutoff (trending, new, popular), co-occurrence built from events before the cutoff, the live
two-tower model (trained on data before the cutoff). Reports per source the share of held-out
purchases it retrieves, the share only it retrieves, and the same for the merged set.

    .venv/bin/python bench/candidate_sources.py --workspace var
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from feature_repo.data.features import RECENT_N, collapse_sequence, pad_sequences
    from feature_repo.data.item_table import ItemTable
    from feature_repo.workspace import Workspace
    from retrieval.cooccurrence import CooccurrenceModel, sequences_from_events
    from retrieval.index import ItemIndex
    from serving.candidates import SOURCES, CandidateSources, Quotas
    from shoprec.pipeline import load_clean
    from shoprec.table import render
    from shoprec.training import TrainingConfig, _user_state, cutoff_time, holdout_targets, stores

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default="var")
    p.add_argument("--holdout-days", type=int, default=TrainingConfig.holdout_days)
    args = p.parse_args()

    ws = Workspace.at(args.workspace)
    events = load_clean(ws, "events")
    cutoff = cutoff_time(events, args.holdout_days)
    targets = holdout_targets(events, cutoff)
    histories, activity = _user_state(ws, targets["user_id"], pd.Series([cutoff] * len(targets)))
    stats = pd.read_parquet(ws.features_dir / "item_stats.parquet")
    items = ItemTable.from_stats(stats[stats["event_timestamp"] <= cutoff])
    s = stores(ws)
    index = ItemIndex.load(s["index"].current())
    tower = tf.saved_model.load(str(s["retrieval"].root / s["index"].manifest()["retrieval_version"] / "user_tower"))
    emb = tower.embed(tf.constant(targets["user_id"].to_numpy().astype(str)),
                      tf.constant(pad_sequences(histories, RECENT_N).astype(str)), tf.constant(activity)).numpy()
    before = collapse_sequence(events[events["timestamp"] < cutoff])
    cooc = CooccurrenceModel.fit(sequences_from_events(before), item_ids=list(index.item_ids))
    index_to_item = np.array([items.position.get(i, -1) for i in index.item_ids], dtype=np.int64)
    sources = CandidateSources(items, index, index_to_item, cooc, Quotas())

    found = {name: 0 for name in SOURCES}
    only = {name: 0 for name in SOURCES}
    merged, total, n_candidates = 0, 0, []
    for row, relevant in enumerate(targets["relevant"]):
        cand = sources.gather(emb[row:row + 1] if histories[row] else None, histories[row])
        n_candidates.append(len(cand))
        by_item = {items.item_ids[p]: names for p, names in cand.items()}
        for item in relevant:
            total += 1
            names = by_item.get(item, [])
            merged += bool(names)
            for name in names:
                found[name] += 1
            if len(names) == 1:
                only[names[0]] += 1
    rows = [{"source": name, "quota": getattr(Quotas(), name), "recall": round(found[name] / total, 4),
             "only_this_source": round(only[name] / total, 4)} for name in SOURCES]
    rows.append({"source": "merged", "quota": int(np.mean(n_candidates)), "recall": round(merged / total, 4),
                 "only_this_source": ""})
    print(json.dumps({"holdout_users": len(targets), "relevant_items": total, "cutoff": str(cutoff), "rows": rows},
                     indent=2))
    print(render(rows))


if __name__ == "__main__":
    main()
