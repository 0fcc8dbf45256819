"""The synthetic shop: deterministic per seed, noisy in known ways, with a realistic funnel."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feature_repo.data.synthetic import COMPLEMENTS, CONSUMABLES, END_DATE, generate, write_shop
from feature_repo.data.validation import validate


@pytest.fixture(scope="module")
def shop():
    return generate("tiny", seed=0)


@pytest.fixture(scope="module")
def clean(shop):
    """The tiny shop after validation (noise removed), as the models see it."""
    return validate(shop.events, shop.items, shop.users, now=END_DATE)


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


def test_validation_catches_exactly_the_injected_noise(shop, clean):
    counts, noise = clean.counts["events"], shop.noise
    assert counts["timestamp in the future"] == noise["future"] > 0
    assert counts["missing user_id"] == noise["missing_user_id"]
    assert counts["unknown event_type"] == noise["unknown_event_type"]
    assert counts["unknown item_id"] == noise["unknown_item_id"]
    assert counts["missing timestamp"] == noise["missing_timestamp"]
    # Duplicates of rows that an earlier rule rejects are counted under that rule instead.
    assert 0.8 * noise["duplicate"] <= counts["duplicate of an earlier row"] <= noise["duplicate"]
    bots = clean.quarantine[clean.quarantine["reason"].str.startswith("bot")]
    flagged = {json.loads(r)["user_id"] for r in bots["record"]}
    true_bots = set(shop.users["user_id"][shop.truth["is_bot"]])
    assert flagged <= true_bots and len(flagged) == noise["bot_users"] > 0
    assert clean.counts["items"]["quarantined"] == clean.counts["users"]["quarantined"] == 0


def test_funnel_is_ordered_with_plausible_conversion(clean):
    n = clean.tables["events"]["event_type"].value_counts()
    assert n["view"] > n["click"] > n["add_to_cart"] > n["purchase"] > 0
    assert 0.005 <= n["purchase"] / n["view"] <= 0.15


def test_every_purchase_follows_an_add_to_cart_in_the_same_session(clean):
    ev = clean.tables["events"]
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


def test_items_keep_launching_and_users_keep_arriving(shop, clean):
    start = END_DATE - pd.Timedelta(days=60)
    new_items = shop.items[shop.items["created_at"] > start]
    assert 0.05 < len(new_items) / len(shop.items) < 0.3
    ev = clean.tables["events"].merge(shop.items[["item_id", "created_at"]], on="item_id")
    assert (ev["timestamp"] >= ev["created_at"]).all(), "an item was seen before its launch"
    assert ev["item_id"].isin(new_items["item_id"]).any()
    assert (shop.users["created_at"] > start + pd.Timedelta(days=30)).mean() > 0.1


def test_churners_stop_coming(shop, clean):
    ev = clean.tables["events"]
    last = ev.groupby("user_id")["timestamp"].max()
    users = shop.users.assign(churned=shop.truth["churned"], last=lambda d: d["user_id"].map(last)).dropna()
    end_gap = (END_DATE - users["last"]).dt.days
    assert end_gap[users["churned"]].median() > end_gap[~users["churned"]].median() + 5


def test_purchases_lead_to_complements_and_repeats(clean, shop):
    ev = clean.tables["events"].merge(shop.items[["item_id", "category"]], on="item_id")
    buys = ev[ev["event_type"] == "purchase"].sort_values("timestamp")
    # Repeat purchases of the same consumable item by the same user.
    repeat = buys.duplicated(["user_id", "item_id"], keep="first")
    consumable = buys["category"].isin(CONSUMABLES)
    assert repeat[consumable].mean() > 2 * repeat[~consumable].mean(), (repeat[consumable].mean(),
                                                                      repeat[~consumable].mean())
    # In the week after a purchase, the buyer views that category's complements more than before.
    before, after = [], []
    views = ev[ev["event_type"] == "view"]
    for category, complements in COMPLEMENTS.items():
        first = buys[buys["category"] == category].groupby("user_id")["timestamp"].min()
        v = views[views["user_id"].isin(first.index)]
        days = (v["timestamp"] - v["user_id"].map(first)).dt.total_seconds() / 86400
        hit = v["category"].isin(complements)
        before.append(hit[days < 0])
        after.append(hit[(days > 0) & (days <= 7)])
    before_share, after_share = pd.concat(before).mean(), pd.concat(after).mean()
    assert after_share > 1.3 * before_share, (after_share, before_share)


def test_streamed_shop_equals_the_in_memory_one(tmp_path, shop):
    counts = write_shop(tmp_path, "tiny", seed=0)
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert counts["events"] == len(events) == len(shop.events)
    key = ["timestamp", "user_id", "item_id", "event_type", "session_id"]
    a = events.sort_values(key, na_position="last").reset_index(drop=True)
    b = shop.events.sort_values(key, na_position="last").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key], check_dtype=False)
    truth = np.load(tmp_path / "truth.npz")
    assert truth["user_vecs"].shape[0] == len(shop.users) and truth["churned"].dtype == bool
    assert json.loads((tmp_path / "source.json").read_text())["as_of"] == str(END_DATE)
