"""Unavailable items never reach a page: marked `available = false` in the catalog, or gone
from it, and picked up by a reload of the running Recommender (the catalog file is watched)."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_items_marked_unavailable_or_removed_leave_every_surface_after_a_reload(trained_workspace, tmp_path):
    from feature_repo.workspace import Workspace
    from serving.recommender import Recommender, RequestContext

    shutil.copytree(trained_workspace.root, tmp_path / "ws")
    ws = Workspace.at(tmp_path / "ws")
    rec = Recommender(ws)
    events = pd.read_parquet(ws.clean_dir / "events.parquet")
    users = events["user_id"].value_counts().index[:10].tolist()

    def shown() -> set[str]:
        seen = set()
        for user in users:
            seen |= {r.item_id for r in rec.recommend(user, 20).items}
        for item in list(seen)[:10]:
            seen |= {r.item_id for r in rec.similar_items(item, 10).items}
            seen |= {r.item_id for r in rec.recommend("walk-in", 10, RequestContext(viewed=item)).items}
        return seen

    before = shown()
    page = [r.item_id for r in rec.recommend(users[0], 20).items]
    marked, removed = page[0], page[1]
    catalog = pd.read_parquet(ws.clean_dir / "items.parquet")
    catalog["available"] = catalog["item_id"] != marked
    catalog[catalog["item_id"] != removed].to_parquet(ws.clean_dir / "items.parquet", index=False)
    assert rec.reload_if_changed()
    after = shown()
    assert {marked, removed} <= before and not {marked, removed} & after
    assert len(after) > 50  # the rest is still served
    rec.close()
