"""Which ranking model serving loads: the published one, or the newest of a kind (latency budget)."""
from __future__ import annotations

import numpy as np
import pytest

from feature_repo.artifacts import ArtifactStore
from serving.errors import ModelNotLoaded
from serving.models import ranking_version_for


def _store(tmp_path, kinds: list[str], live: int) -> tuple[ArtifactStore, list[str]]:
    store = ArtifactStore(tmp_path / "ranking")
    versions = []
    for kind in kinds:
        with store.build(kind="ranking", model=kind) as b:
            (b.path / "scorer").write_text(kind)
        versions.append(b.version)
    store.publish(versions[live])
    return store, versions


def test_published_is_the_live_version_and_a_kind_its_newest(tmp_path):
    store, v = _store(tmp_path, ["dcn", "lstm", "dcn", "lstm"], live=1)
    assert ranking_version_for(store, "published") == v[1]
    assert ranking_version_for(store, "dcn") == v[2]  # the newest DCN
    assert ranking_version_for(store, "lstm") == v[1]  # the live one is an LSTM: a rollback is kept


def test_a_kind_never_trained_says_how_to_train_it(tmp_path):
    store, _ = _store(tmp_path, ["lstm"], live=0)
    with pytest.raises(ModelNotLoaded, match=r"no dcn ranking model.*--ranker dcn"):
        ranking_version_for(store, "dcn")


@pytest.mark.parametrize("kind", ["dcn", "lstm"])
def test_serving_a_kind_loads_that_kind_and_ranks(trained_workspace, kind):
    from serving.recommender import Recommender

    rec = Recommender(trained_workspace, ranker=kind)
    version = rec.models.versions["ranking"]
    assert ArtifactStore(trained_workspace.models_dir / "ranking").manifest(version)["model"] == kind
    import pandas as pd

    user = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[0]
    result = rec.recommend(user, 10)
    assert result.personalized and result.versions["ranking"] == version
    assert len(result.items) == 10 and all(0 < r.heads[2] < 1 for r in result.items)  # ranked by this model


def test_concurrent_requests_get_the_pages_they_get_alone(trained_workspace):
    """The Recommender is shared by the server's request threads: no state leaks between them."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from serving.recommender import Recommender

    rec = Recommender(trained_workspace, ranker="dcn")
    users = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")["user_id"].value_counts().index[:24]
    def page(user):
        items = rec.recommend(user, 10).items
        return [r.item_id for r in items], [r.score for r in items]

    alone = [page(u) for u in users]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(page, users))
    assert [ids for ids, _ in together] == [ids for ids, _ in alone]
    np.testing.assert_allclose([s for _, s in together], [s for _, s in alone], rtol=1e-5, atol=1e-6)
