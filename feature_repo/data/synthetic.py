"""The synthetic shop: shoprec's embedded default data, seeded and deterministic.

Users have a hidden taste vector and a preference over categories; items have a hidden vector
near their category's, a log-normal price per category and a long-tail popularity. Each user
visits in sessions: pick a category by preference, view a few items from it (popular items and
items close to the user's taste are viewed more), and walk down the funnel view → click →
add_to_cart → purchase with probabilities that grow with the user-item affinity. The latent truth
is returned next to the tables, for evaluation only; models never see it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORY_NAMES = (
    "phones", "phone_cases", "chargers", "headphones", "laptops", "skincare", "makeup",
    "haircare", "fragrance", "shoes", "tshirts", "jeans", "books", "toys", "kitchen",
    "coffee", "garden", "tools", "sports", "pet_supplies",
)
END_DATE = pd.Timestamp("2026-10-01", tz="UTC")  # fixed so that a seed gives the same data


@dataclass(frozen=True)
class ShopPreset:
    """Size of a generated shop; sessions per user is a mean, activity varies per user."""

    n_users: int
    n_items: int
    n_categories: int
    days: int
    sessions_per_user: float
    views_per_session: float = 2.5
    latent_dim: int = 8


PRESETS: dict[str, ShopPreset] = {
    "tiny": ShopPreset(n_users=600, n_items=500, n_categories=8, days=60, sessions_per_user=8),
    "default": ShopPreset(n_users=10_000, n_items=5_000, n_categories=20, days=90, sessions_per_user=8),
}


@dataclass
class Shop:
    """Generated tables in the data contract plus the hidden truth that produced them."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    truth: dict[str, np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(preset: str | ShopPreset = "default", seed: int = 0) -> Shop:
    """Generate a shop; the same preset and seed always give identical tables."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if p.n_categories > len(CATEGORY_NAMES):
        raise ValueError(f"n_categories={p.n_categories} exceeds the {len(CATEGORY_NAMES)} known categories")
    rng = np.random.default_rng(seed)
    start = END_DATE - pd.Timedelta(days=p.days)

    # Catalog: items sorted by category so that each category is a contiguous slice.
    cat_vecs = rng.normal(size=(p.n_categories, p.latent_dim))
    item_cat = np.sort(rng.integers(0, p.n_categories, size=p.n_items))
    item_vecs = cat_vecs[item_cat] + 0.7 * rng.normal(size=(p.n_items, p.latent_dim))
    popularity = rng.pareto(1.2, size=p.n_items) + 0.05  # long tail
    price_mu = rng.uniform(2.0, 5.5, size=p.n_categories)
    prices = np.round(np.exp(price_mu[item_cat] + 0.4 * rng.normal(size=p.n_items)), 2)
    n_brands = rng.integers(3, 9, size=p.n_categories)
    brand_idx = (rng.random(p.n_items) * n_brands[item_cat]).astype(int)
    item_created = (start - pd.to_timedelta(rng.uniform(0, 365, size=p.n_items), unit="D")).floor("s")
    items = pd.DataFrame({
        "item_id": [f"i{i:06d}" for i in range(p.n_items)],
        "category": [CATEGORY_NAMES[c] for c in item_cat],
        "brand": [f"{CATEGORY_NAMES[c]}_brand{b}" for c, b in zip(item_cat, brand_idx)],
        "price": prices,
        "created_at": item_created,
    })

    # Users: a concentrated preference over categories and a taste vector built from it.
    cat_pref = rng.dirichlet(np.full(p.n_categories, 0.25), size=p.n_users)
    user_vecs = cat_pref @ cat_vecs + 0.5 * rng.normal(size=(p.n_users, p.latent_dim))
    activity = rng.lognormal(0.0, 0.6, size=p.n_users)
    user_created = (start + pd.to_timedelta(rng.uniform(-60, 0.8 * p.days, size=p.n_users), unit="D")).floor("s")
    users = pd.DataFrame({
        "user_id": [f"u{u:06d}" for u in range(p.n_users)],
        "created_at": user_created,
    })

    # Sessions: count per user by activity; time uniform between sign-up (or start) and the end.
    n_sess = rng.poisson(p.sessions_per_user * activity) + 1
    sess_user = np.repeat(np.arange(p.n_users), n_sess)
    first = np.maximum((user_created - start).total_seconds().to_numpy(), 0.0)
    span = p.days * 86400.0
    sess_t = first[sess_user] + rng.random(len(sess_user)) * (span - first[sess_user] - 3600)
    cum_pref = np.cumsum(cat_pref, axis=1)
    sess_cat = (cum_pref[sess_user] < rng.random((len(sess_user), 1))).sum(axis=1)
    sess_cat = np.minimum(sess_cat, p.n_categories - 1)

    # Views: each picks among 10 popularity-sampled items of the session's category by taste.
    n_views = 1 + rng.poisson(p.views_per_session - 1, size=len(sess_user))
    v_sess = np.repeat(np.arange(len(sess_user)), n_views)
    v_rank = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    v_user, v_cat = sess_user[v_sess], sess_cat[v_sess]
    offsets = np.searchsorted(item_cat, np.arange(p.n_categories + 1))
    cand = np.empty((len(v_sess), 10), dtype=np.int64)
    draws = rng.random(cand.shape)
    for c in range(p.n_categories):
        lo, hi = offsets[c], offsets[c + 1]
        rows = v_cat == c
        if hi == lo:  # empty category: fall back to any item
            cand[rows] = rng.integers(0, p.n_items, size=(rows.sum(), 10))
            continue
        cdf = np.cumsum(popularity[lo:hi]) / popularity[lo:hi].sum()
        cand[rows] = lo + np.minimum(np.searchsorted(cdf, draws[rows]), hi - lo - 1)
    scale = np.sqrt(p.latent_dim)
    cand_aff = np.einsum("vd,vmd->vm", user_vecs[v_user], item_vecs[cand]) / scale
    logits = 2.0 * cand_aff
    gumbel = -np.log(-np.log(rng.random(logits.shape)))
    pick = np.argmax(logits + gumbel, axis=1)
    v_item = cand[np.arange(len(cand)), pick]
    aff = cand_aff[np.arange(len(cand)), pick]

    # Funnel: each step's probability rises with affinity; conversion from view ~ low percent.
    clicked = rng.random(len(v_item)) < _sigmoid(-3.2 + 1.0 * aff)
    carted = clicked & (rng.random(len(v_item)) < _sigmoid(-1.6 + 0.8 * aff))
    bought = carted & (rng.random(len(v_item)) < _sigmoid(-0.8 + 0.8 * aff))

    v_time = sess_t[v_sess] + 60.0 * v_rank + rng.uniform(0, 30, size=len(v_sess))
    parts = []
    for etype, mask, delay in (("view", np.ones_like(clicked), 0.0), ("click", clicked, 5.0),
                               ("add_to_cart", carted, 15.0), ("purchase", bought, 40.0)):
        parts.append(pd.DataFrame({
            "user_id": v_user[mask], "item_id": v_item[mask], "event_type": etype,
            "t": v_time[mask] + delay, "session_id": v_sess[mask],
        }))
    ev = pd.concat(parts, ignore_index=True).sort_values(["t", "user_id"], kind="stable")
    events = pd.DataFrame({
        "user_id": [f"u{u:06d}" for u in ev["user_id"]],
        "item_id": [f"i{i:06d}" for i in ev["item_id"]],
        "event_type": ev["event_type"].to_numpy(),
        "timestamp": start + pd.to_timedelta(np.floor(ev["t"].to_numpy()), unit="s"),
        "session_id": [f"s{s:07d}" for s in ev["session_id"]],
        "price": prices[ev["item_id"].to_numpy()],
        "quantity": 1,
    }).reset_index(drop=True)
    truth = {"user_vecs": user_vecs, "item_vecs": item_vecs, "category_pref": cat_pref,
             "item_popularity": popularity}
    return Shop(events=events, items=items, users=users, truth=truth)
