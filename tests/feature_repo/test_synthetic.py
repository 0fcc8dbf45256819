"""The synthetic shop: deterministic per seed, contract-clean, with a realistic funnel."""
from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.data.synthetic import generate
from feature_repo.data.validation import validate

NOW = pd.Timestamp("2026-11-01", tz="UTC")


@pytest.fixture(scope="module")
def shop():
    return generate("tiny", seed=0)


def test_same_seed_same_tables(shop):
    again = generate("tiny", seed=0)
    for name in ("events", "items", "users"):
        pd.testing.assert_frame_equal(getattr(shop, name), getattr(again, name))


def test_different_seed_different_events(shop):
    other = generate("tiny", seed=1)
    assert not shop.events.equals(other.events)
    same_len = min(len(shop.events), len(other.events))
    a = shop.events.iloc[:same_len].reset_index(drop=True)
    b = other.events.iloc[:same_len].reset_index(drop=True)
    assert (a[["user_id", "item_id"]] != b[["user_id", "item_id"]]).any(axis=None)


def test_tiny_shop_passes_validation(shop):
    report = validate(shop.events, shop.items, shop.users, now=NOW)
    assert report.quarantine.empty, report.quarantine.head()
    for name in ("events", "items", "users"):
        assert report.counts[name]["quarantined"] == 0
        assert report.counts[name]["kept"] == len(getattr(shop, name)) > 0


def test_funnel_is_ordered_with_plausible_conversion(shop):
    n = shop.events["event_type"].value_counts()
    assert n["view"] > n["click"] > n["add_to_cart"] > n["purchase"] > 0
    assert 0.005 <= n["purchase"] / n["view"] <= 0.15


def test_every_purchase_follows_an_add_to_cart_in_the_same_session(shop):
    ev = shop.events
    keys = ["user_id", "item_id", "session_id"]
    buys = ev[ev["event_type"] == "purchase"][keys + ["timestamp"]]
    carts = ev[ev["event_type"] == "add_to_cart"].groupby(keys)["timestamp"].min().rename("first_cart")
    joined = buys.join(carts, on=keys)
    assert len(joined) == len(buys) > 0
    assert joined["first_cart"].notna().all(), "purchase without add_to_cart"
    assert (joined["first_cart"] <= joined["timestamp"]).all()


def test_popularity_is_long_tailed(shop):
    views = shop.events.loc[shop.events["event_type"] == "view", "item_id"].value_counts()
    views = views.reindex(shop.items["item_id"], fill_value=0).sort_values(ascending=False)
    top = views.iloc[: len(views) // 10]
    assert top.sum() / views.sum() > 0.30
