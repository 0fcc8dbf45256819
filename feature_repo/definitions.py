"""Feast declarations: entities, sources, feature views, push source and feature services.

Read by `feast apply` run in this folder (module-level objects over ../var, the same default
workspace that feature_store.yaml points at) and by ``feature_repo.store``
(``declarations(features_dir)`` for any workspace, e.g. ``--workspace`` or $SHOPREC_HOME).
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

from feature_repo.data.features import COUNT_COLUMNS, WINDOWS


# Snapshots are daily; a year of TTL keeps a quiet customer's features instead of blanking them.
FEATURE_TTL = timedelta(days=365)
_SUFFIXES = ("", *(f"_{w}d" for w in WINDOWS))
USER_COUNT_FEATURES = [f"{c}{s}" for c in COUNT_COLUMNS for s in _SUFFIXES]
ITEM_COUNT_FEATURES = USER_COUNT_FEATURES
ITEM_RATE_FEATURES = [f"conversion_rate{s}" for s in _SUFFIXES]


def declarations(features_dir: Path) -> dict[str, object]:
    """Every Feast object of the repo, keyed by its variable name, over ``features_dir``."""
    features_dir = Path(features_dir).resolve()

    def source(name: str) -> FileSource:
        return FileSource(name=f"{name}_source", path=str(features_dir / f"{name}.parquet"),
                          timestamp_field="event_timestamp")

    # The shopper; ids are strings on the wire.
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    # A catalog item.
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)

    # Real-time path for the counters: events update them between nightly feature builds.
    user_activity_push = PushSource(name="user_activity_push", batch_source=source("user_activity"))
    # How much, how recently and how well a user shops: ranking features, churn signals.
    user_activity_fv = FeatureView(
        name="user_activity_fv", entities=[user], ttl=FEATURE_TTL, source=user_activity_push,
        schema=[*(Field(name=c, dtype=Int64) for c in USER_COUNT_FEATURES),
                Field(name="conversion_rate", dtype=Float64), Field(name="conversion_rate_30d", dtype=Float64),
                Field(name="avg_purchase_price", dtype=Float64), Field(name="max_purchase_price", dtype=Float64),
                Field(name="last_visit_epoch", dtype=Float64), Field(name="last_purchase_epoch", dtype=Float64),
                Field(name="favourite_categories", dtype=Array(String))],
    )
    # Real-time path: the server pushes a user's updated recent sequence after each event.
    user_recent_push = PushSource(name="user_recent_push", batch_source=source("user_recent"))
    # The user's last items: the input of the user tower and the sequence ranker.
    user_recent_fv = FeatureView(
        name="user_recent_fv", entities=[user], ttl=FEATURE_TTL, source=user_recent_push,
        schema=[Field(name="recent_items", dtype=Array(String)),
                Field(name="recent_event_types", dtype=Array(String))],
    )
    # Item attributes and popularity; served from memory, refreshed after materialization.
    item_stats_fv = FeatureView(
        name="item_stats_fv", entities=[item], ttl=FEATURE_TTL, source=source("item_stats"),
        schema=[Field(name="category", dtype=String), Field(name="brand", dtype=String),
                Field(name="price", dtype=Float64), Field(name="price_bucket", dtype=Int64),
                Field(name="created_epoch", dtype=Float64), Field(name="attributes", dtype=Array(String)),
                *(Field(name=c, dtype=Int64) for c in ITEM_COUNT_FEATURES),
                *(Field(name=c, dtype=Float64) for c in ITEM_RATE_FEATURES)],
    )
    # What the retrieval model reads for a user (one online read per request).
    retrieval_user_v1 = FeatureService(name="retrieval_user_v1", features=[user_recent_fv])
    # What the ranking model reads for a user; a superset, so serving reads only this one.
    ranking_user_v1 = FeatureService(name="ranking_user_v1", features=[user_activity_fv, user_recent_fv])
    return dict(user=user, item=item, user_activity_push=user_activity_push, user_activity_fv=user_activity_fv,
                user_recent_push=user_recent_push, user_recent_fv=user_recent_fv,
                item_stats_fv=item_stats_fv, retrieval_user_v1=retrieval_user_v1,
                ranking_user_v1=ranking_user_v1)


# Module-level names for `feast apply` run inside feature_repo/: always the ../var workspace,
# like feature_store.yaml, so the two can never point at different workspaces.
_objects = declarations(Path(__file__).resolve().parent.parent / "var" / "features")
user = _objects["user"]
item = _objects["item"]
user_activity_push = _objects["user_activity_push"]
user_activity_fv = _objects["user_activity_fv"]
user_recent_push = _objects["user_recent_push"]
user_recent_fv = _objects["user_recent_fv"]
item_stats_fv = _objects["item_stats_fv"]
retrieval_user_v1 = _objects["retrieval_user_v1"]
ranking_user_v1 = _objects["ranking_user_v1"]
