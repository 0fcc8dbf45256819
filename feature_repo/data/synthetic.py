"""The synthetic shop: shoprec's embedded default data, seeded and deterministic.

The idea: simulate customers from a hidden preference model, so that every claim the product
makes can be checked against a known truth. Users have a taste vector and a preference over
categories; items have a vector near their category's (categories near their department's), a
log-normal price per category, a long-tail popularity and a launch date (new items keep
arriving). Users arrive over time and some churn. Each visit is a session: pick a category,
view a few items (popular and well-matching items more often), walk down the funnel view →
click → add_to_cart → purchase with probabilities that grow with affinity. A purchase can
trigger a later visit to a complementary category (phone → case or charger) and, for
consumables, a repeat purchase about a month later.

The raw tables also carry the noise real shops have, for the cleaning rules to catch: bots with
huge event counts, double-sent events, malformed rows and device clocks set in the future.
The latent truth (``Shop.truth``) is for evaluation only; models never see it.

Generation runs in chunks of users against one shared catalog, so ``write_shop`` streams the
``large`` preset (1M users) to parquet in bounded memory; ``generate`` returns small shops whole.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEPARTMENTS = {
    "electronics": ("phones", "phone_cases", "chargers", "headphones", "laptops"),
    "beauty": ("skincare", "makeup", "haircare", "fragrance"),
    "home": ("coffee", "kitchen", "garden", "tools"),
    "fashion": ("shoes", "tshirts", "jeans"),
    "leisure": ("books", "toys", "sports", "pet_supplies"),
}
# Ordered so that small presets (the first n categories) still contain complement pairs.
CATEGORY_NAMES = ("phones", "phone_cases", "chargers", "skincare", "makeup", "coffee", "kitchen", "shoes",
                  "headphones", "laptops", "haircare", "fragrance", "tshirts", "jeans", "books", "toys",
                  "garden", "tools", "sports", "pet_supplies")
DEPARTMENT_OF = {c: d for d, cats in DEPARTMENTS.items() for c in cats}
# Buying in the key category raises the chance of a later visit to one of the values.
COMPLEMENTS = {"phones": ("phone_cases", "chargers", "headphones"), "laptops": ("headphones", "chargers"),
               "makeup": ("skincare",), "skincare": ("makeup",), "coffee": ("kitchen",),
               "shoes": ("jeans", "tshirts"), "jeans": ("tshirts", "shoes"), "tools": ("garden",),
               "toys": ("books",)}
CONSUMABLES = frozenset({"skincare", "makeup", "haircare", "coffee", "pet_supplies"})
END_DATE = pd.Timestamp("2026-10-01", tz="UTC")  # fixed so that a seed gives the same data
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "session_id", "price", "quantity")
EVENTS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
                           ("timestamp", pa.timestamp("ns", tz="UTC")), ("session_id", pa.string()),
                           ("price", pa.float64()), ("quantity", pa.int64())])
USERS_SCHEMA = pa.schema([("user_id", pa.string()), ("created_at", pa.timestamp("ns", tz="UTC"))])
DAY = 86400.0


@dataclass(frozen=True)
class ShopPreset:
    """Size and behaviour of a generated shop; every rate is a documented default."""

    n_users: int
    n_items: int
    n_categories: int
    days: int
    sessions_per_user: float  # mean; activity varies per user (log-normal)
    views_per_session: float = 2.5
    latent_dim: int = 8
    new_item_share: float = 0.15  # items launched during the period
    churn_share: float = 0.25  # users who stop coming at some point
    complement_prob: float = 0.6  # purchase → later visit to a complement category
    repeat_prob: float = 0.5  # consumable purchase → repeat purchase ~a month later
    bot_share: float = 0.005
    bot_views: tuple[int, int] = (800, 3000)
    duplicate_share: float = 0.005  # events sent twice
    skew_share: float = 0.001  # events stamped by a clock in the future
    malformed_share: float = 0.0005  # garbage rows (missing ids, typos, no timestamp)
    chunk_users: int = 20_000  # users generated at once (bounds memory)


PRESETS: dict[str, ShopPreset] = {
    "tiny": ShopPreset(n_users=600, n_items=500, n_categories=8, days=60, sessions_per_user=8,
                       bot_views=(200, 600)),
    "default": ShopPreset(n_users=10_000, n_items=5_000, n_categories=20, days=90, sessions_per_user=8),
    "large": ShopPreset(n_users=1_000_000, n_items=100_000, n_categories=20, days=90, sessions_per_user=8),
}


@dataclass
class Shop:
    """Generated tables in the data contract plus the hidden truth that produced them."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    truth: dict[str, np.ndarray]
    noise: dict[str, int] = field(default_factory=dict)  # injected noise, by kind


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, numbers: np.ndarray, n_total: int) -> np.ndarray:
    width = max(6, len(str(max(n_total - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in numbers], dtype=object)


@dataclass
class _Catalog:
    """Items and the latent space shared by every chunk of users."""

    p: ShopPreset
    start: pd.Timestamp
    cat_vecs: np.ndarray
    item_cat: np.ndarray
    item_vecs: np.ndarray
    popularity: np.ndarray
    prices: np.ndarray
    launch_s: np.ndarray  # launch time in seconds from start (negative: before the period)
    offsets: np.ndarray  # items of category c are rows offsets[c]:offsets[c+1]
    complements: list[np.ndarray]
    consumable: np.ndarray
    items: pd.DataFrame


def _catalog(p: ShopPreset, rng: np.random.Generator) -> _Catalog:
    names = CATEGORY_NAMES[: p.n_categories]
    depts = sorted({DEPARTMENT_OF[c] for c in names})
    dept_vecs = rng.normal(size=(len(depts), p.latent_dim))
    cat_vecs = np.array([dept_vecs[depts.index(DEPARTMENT_OF[c])] for c in names])
    cat_vecs = (cat_vecs + 0.8 * rng.normal(size=cat_vecs.shape)) / np.sqrt(1.64)  # unit variance
    item_cat = np.sort(rng.integers(0, p.n_categories, size=p.n_items))
    item_vecs = (cat_vecs[item_cat] + 0.7 * rng.normal(size=(p.n_items, p.latent_dim))).astype(np.float32)
    popularity = rng.pareto(1.2, size=p.n_items) + 0.05  # long tail
    price_mu = rng.uniform(2.0, 5.5, size=p.n_categories)
    prices = np.round(np.exp(price_mu[item_cat] + 0.4 * rng.normal(size=p.n_items)), 2)
    n_brands = rng.integers(3, 9, size=p.n_categories)
    brand_idx = (rng.random(p.n_items) * n_brands[item_cat]).astype(int)
    span = p.days * DAY
    new = rng.random(p.n_items) < p.new_item_share
    launch_s = np.floor(np.where(new, rng.uniform(0, 0.95 * span, p.n_items), -rng.uniform(0, 365 * DAY, p.n_items)))
    start = END_DATE - pd.Timedelta(days=p.days)
    items = pd.DataFrame({
        "item_id": _ids("i", np.arange(p.n_items), p.n_items),
        "category": np.array(names, dtype=object)[item_cat],
        "brand": [f"{names[c]}_brand{b}" for c, b in zip(item_cat, brand_idx)],
        "price": prices,
        "created_at": start + pd.to_timedelta(launch_s, unit="s"),
        "department": [DEPARTMENT_OF[names[c]] for c in item_cat],
    })
    complements = [np.array([names.index(x) for x in COMPLEMENTS.get(c, ()) if x in names], dtype=np.int64)
                   for c in names]
    return _Catalog(p, start, cat_vecs, item_cat, item_vecs, popularity, prices, launch_s,
                    np.searchsorted(item_cat, np.arange(p.n_categories + 1)), complements,
                    np.array([c in CONSUMABLES for c in names]), items)


def _views(cat: _Catalog, rng: np.random.Generator, user_vecs: np.ndarray, s_user: np.ndarray,
           s_time: np.ndarray, s_cat: np.ndarray) -> dict[str, np.ndarray]:
    """Views of the given sessions and how far down the funnel each went."""
    p = cat.p
    n_views = 1 + rng.poisson(p.views_per_session - 1, size=len(s_user))
    v_sess = np.repeat(np.arange(len(s_user)), n_views)
    v_rank = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    v_cat = s_cat[v_sess]
    v_time = s_time[v_sess] + 60.0 * v_rank + rng.uniform(0, 30, size=len(v_sess))
    cand = np.empty((len(v_sess), 10), dtype=np.int64)
    draws = rng.random(cand.shape)
    for c in range(p.n_categories):
        lo, hi = cat.offsets[c], cat.offsets[c + 1]
        rows = v_cat == c
        if hi == lo:  # empty category: any item
            cand[rows] = rng.integers(0, p.n_items, size=(int(rows.sum()), 10))
            continue
        cdf = np.cumsum(cat.popularity[lo:hi]) / cat.popularity[lo:hi].sum()
        cand[rows] = lo + np.minimum(np.searchsorted(cdf, draws[rows]), hi - lo - 1)
    aff = np.einsum("vd,vmd->vm", user_vecs[s_user[v_sess]], cat.item_vecs[cand]) / np.sqrt(p.latent_dim)
    launched = cat.launch_s[cand] <= v_time[:, None]  # nobody sees an item before its launch
    logits = np.where(launched, 2.0 * aff, -np.inf)
    pick = np.argmax(logits - np.log(-np.log(rng.random(logits.shape))), axis=1)
    rows = np.arange(len(cand))
    ok = launched[rows, pick]
    v_item, v_aff = cand[rows, pick], aff[rows, pick]
    # Funnel: each step's probability rises with affinity; view → purchase in the low percent.
    clicked = ok & (rng.random(len(rows)) < _sigmoid(-3.2 + 1.0 * v_aff))
    carted = clicked & (rng.random(len(rows)) < _sigmoid(-1.6 + 0.8 * v_aff))
    bought = carted & (rng.random(len(rows)) < _sigmoid(-0.8 + 0.8 * v_aff))
    return {"sess": v_sess[ok], "item": v_item[ok], "t": v_time[ok], "clicked": clicked[ok],
            "carted": carted[ok], "bought": bought[ok]}


def _funnel_rows(v: dict[str, np.ndarray], s_user: np.ndarray, s_id: np.ndarray) -> list[pd.DataFrame]:
    parts = []
    for etype, mask, delay in (("view", np.ones(len(v["item"]), bool), 0.0), ("click", v["clicked"], 5.0),
                               ("add_to_cart", v["carted"], 15.0), ("purchase", v["bought"], 40.0)):
        parts.append(pd.DataFrame({"u": s_user[v["sess"][mask]], "i": v["item"][mask], "event_type": etype,
                                   "t": v["t"][mask] + delay, "s": s_id[v["sess"][mask]]}))
    return parts


def _chunk(cat: _Catalog, rng: np.random.Generator, u0: int, u1: int) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """Users u0..u1-1: their table, their events (noise included), truth and noise counts."""
    p, n = cat.p, u1 - u0
    span = p.days * DAY
    cat_pref = rng.dirichlet(np.full(p.n_categories, 0.25), size=n)
    user_vecs = (cat_pref @ cat.cat_vecs + 0.5 * rng.normal(size=(n, p.latent_dim))).astype(np.float32)
    activity = rng.lognormal(0.0, 0.6, size=n)
    created = np.floor(rng.uniform(-60 * DAY, 0.8 * span, size=n))
    first = np.maximum(created, 0.0)
    churned = rng.random(n) < p.churn_share
    active_until = np.where(churned, first + rng.uniform(0.2, 0.9, n) * (span - first), span - 3600)
    is_bot = rng.random(n) < p.bot_share

    # Regular sessions, spread between sign-up and churn (or the end).
    active_frac = (active_until - first) / (span - first)
    n_sess = np.where(is_bot, 0, rng.poisson(p.sessions_per_user * activity * active_frac) + 1)
    s_user = np.repeat(np.arange(n), n_sess)
    s_time = first[s_user] + rng.random(len(s_user)) * (active_until[s_user] - first[s_user])
    cum_pref = np.cumsum(cat_pref, axis=1)
    s_cat = np.minimum((cum_pref[s_user] < rng.random((len(s_user), 1))).sum(axis=1), p.n_categories - 1)
    s_id = np.arange(len(s_user))
    v = _views(cat, rng, user_vecs, s_user, s_time, s_cat)
    parts = _funnel_rows(v, s_user, s_id)

    # Purchases lead to later visits: complements (any category) and repeats (consumables).
    b_user, b_item, b_t = s_user[v["sess"][v["bought"]]], v["item"][v["bought"]], v["t"][v["bought"]]
    b_cat = cat.item_cat[b_item]
    has_comp = np.array([len(cat.complements[c]) > 0 for c in b_cat], dtype=bool)
    go = has_comp & (rng.random(len(b_user)) < p.complement_prob)
    c_time = b_t[go] + rng.exponential(3 * DAY, size=int(go.sum()))
    c_cat = np.array([rng.choice(cat.complements[c]) for c in b_cat[go]], dtype=np.int64)
    keep = c_time < active_until[b_user[go]]
    c_user, c_time, c_cat = b_user[go][keep], c_time[keep], c_cat[keep]
    c_id = len(s_user) + np.arange(len(c_user))
    if len(c_user):
        cv = _views(cat, rng, user_vecs, c_user, c_time, c_cat)
        parts += _funnel_rows(cv, c_user, c_id)
    rep = cat.consumable[b_cat] & (rng.random(len(b_user)) < p.repeat_prob)
    r_time = b_t[rep] + rng.normal(28 * DAY, 5 * DAY, size=int(rep.sum()))
    keep = (r_time > b_t[rep]) & (r_time < active_until[b_user[rep]])
    r_user, r_item, r_time = b_user[rep][keep], b_item[rep][keep], r_time[keep]
    r_id = len(s_user) + len(c_user) + np.arange(len(r_user))
    r_buy = rng.random(len(r_user)) < 0.7
    for etype, mask, delay in (("view", np.ones(len(r_user), bool), 0.0), ("add_to_cart", r_buy, 20.0),
                               ("purchase", r_buy, 45.0)):
        parts.append(pd.DataFrame({"u": r_user[mask], "i": r_item[mask], "event_type": etype,
                                   "t": r_time[mask] + delay, "s": r_id[mask]}))

    # Bots: thousands of views of random catalog items, a second or two apart, no clicks.
    bots = np.flatnonzero(is_bot)
    bot_n = rng.integers(p.bot_views[0], p.bot_views[1] + 1, size=len(bots))
    bot_u = np.repeat(bots, bot_n)
    bot_t = np.repeat(first[bots] + rng.random(len(bots)) * 0.5 * span, bot_n) + np.concatenate(
        [np.cumsum(rng.uniform(1, 3, k)) for k in bot_n]) if len(bots) else np.array([])
    old_items = np.flatnonzero(cat.launch_s <= 0)
    parts.append(pd.DataFrame({"u": bot_u, "i": rng.choice(old_items, size=len(bot_u)), "event_type": "view",
                               "t": bot_t, "s": -1 - bot_u}))

    ev = pd.concat(parts, ignore_index=True)
    ev = ev[ev["t"] < span].sort_values(["t", "u"], kind="stable").reset_index(drop=True)
    # Nobody buys the same durable item twice: a later purchase of it stays an abandoned cart.
    buy = ev["event_type"] == "purchase"
    again = buy & ev[["u", "i"]].where(buy).duplicated(keep="first") & ~cat.consumable[cat.item_cat[ev["i"]]]
    ev = ev[~again].reset_index(drop=True)
    events = pd.DataFrame({
        "user_id": _ids("u", u0 + ev["u"].to_numpy(), p.n_users),
        "item_id": _ids("i", ev["i"].to_numpy(), p.n_items),
        "event_type": ev["event_type"].to_numpy(dtype=object),
        "timestamp": cat.start + pd.to_timedelta(np.floor(ev["t"].to_numpy()), unit="s"),
        "session_id": [f"s{u0 + u:07d}-{s}" if s >= 0 else f"bot{u0 + u:07d}" for u, s in zip(ev["u"], ev["s"])],
        "price": cat.prices[ev["i"].to_numpy()],
        "quantity": np.ones(len(ev), dtype=np.int64),
    })
    events, noise = _add_noise(events, p, rng, cat.start + pd.Timedelta(seconds=span))
    noise["bot_users"] = int(ev.loc[ev["s"] < 0, "u"].nunique())  # bots with events in the period
    noise["bot_events"] = int((ev["s"] < 0).sum())
    users = pd.DataFrame({"user_id": _ids("u", np.arange(u0, u1), p.n_users),
                          "created_at": cat.start + pd.to_timedelta(created, unit="s")})
    truth = {"user_vecs": user_vecs, "category_pref": cat_pref.astype(np.float32), "churned": churned,
             "churn_day": np.where(churned, active_until / DAY, np.nan).astype(np.float32), "is_bot": is_bot}
    return users, events, truth, noise


def _add_noise(events: pd.DataFrame, p: ShopPreset, rng: np.random.Generator,
               end: pd.Timestamp) -> tuple[pd.DataFrame, dict[str, int]]:
    """Double-sent events, future-clock events and malformed rows, appended to the real ones."""
    n = len(events)
    dup = events.iloc[rng.choice(n, size=int(n * p.duplicate_share), replace=False)] if n else events.iloc[:0]
    skew = events.iloc[rng.choice(n, size=int(n * p.skew_share), replace=False)].copy() if n else events.iloc[:0]
    skew["timestamp"] = end + pd.to_timedelta(rng.uniform(1, 30, len(skew)), unit="D").floor("s")
    bad = events.iloc[rng.choice(n, size=int(n * p.malformed_share), replace=False)].copy() if n else events.iloc[:0]
    kind = np.arange(len(bad)) % 4
    bad.loc[kind == 0, "user_id"] = ""
    bad.loc[kind == 1, "event_type"] = "clik"
    bad.loc[kind == 2, "item_id"] = "i_unknown"
    bad.loc[kind == 3, "timestamp"] = pd.NaT
    noisy = pd.concat([events, dup, skew, bad], ignore_index=True)
    order = np.argsort(noisy["timestamp"].to_numpy(), kind="stable")  # NaT sorts last
    noise = {"duplicate": len(dup), "future": len(skew), "missing_user_id": int((kind == 0).sum()),
             "unknown_event_type": int((kind == 1).sum()), "unknown_item_id": int((kind == 2).sum()),
             "missing_timestamp": int((kind == 3).sum())}
    return noisy.iloc[order].reset_index(drop=True), noise


def _chunks(p: ShopPreset, seed: int) -> tuple[_Catalog, Iterator[tuple[pd.DataFrame, pd.DataFrame, dict, dict]]]:
    root = np.random.SeedSequence(seed)
    cat_seq, *chunk_seqs = root.spawn(1 + -(-p.n_users // p.chunk_users))
    cat = _catalog(p, np.random.default_rng(cat_seq))

    def run() -> Iterator[tuple[pd.DataFrame, pd.DataFrame, dict, dict]]:
        for k, seq in enumerate(chunk_seqs):
            u0 = k * p.chunk_users
            yield _chunk(cat, np.random.default_rng(seq), u0, min(u0 + p.chunk_users, p.n_users))

    return cat, run()


def _preset(preset: str | ShopPreset) -> ShopPreset:
    if isinstance(preset, ShopPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    if p.n_categories > len(CATEGORY_NAMES):
        raise ValueError(f"n_categories={p.n_categories} exceeds the {len(CATEGORY_NAMES)} known categories")
    return p


def _truth(cat: _Catalog, parts: list[dict]) -> dict[str, np.ndarray]:
    out = {k: np.concatenate([t[k] for t in parts]) for k in parts[0]}
    out.update(item_vecs=cat.item_vecs, item_popularity=cat.popularity, item_launch_day=cat.launch_s / DAY)
    return out


def _add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def generate(preset: str | ShopPreset = "default", seed: int = 0) -> Shop:
    """Generate a shop in memory; the same preset and seed always give identical tables."""
    p = _preset(preset)
    cat, chunks = _chunks(p, seed)
    users, events, truths, noise = [], [], [], {}
    for u, e, t, n in chunks:
        users.append(u), events.append(e), truths.append(t)
        _add_counts(noise, n)
    ev = pd.concat(events, ignore_index=True)
    ev = ev.iloc[np.argsort(ev["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)
    return Shop(ev, cat.items, pd.concat(users, ignore_index=True), _truth(cat, truths), noise)


def write_shop(out_dir: Path, preset: str | ShopPreset = "default", seed: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Stream a shop to ``out_dir`` chunk by chunk (events sorted within each chunk).

    Writes events/items/users.parquet, truth.npz and source.json; returns row counts.
    """
    p = _preset(preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    cat, chunks = _chunks(p, seed)
    cat.items.to_parquet(out_dir / "items.parquet", index=False)
    counts, noise, truths = {"events": 0, "users": 0, "items": len(cat.items)}, {}, []
    tmp_events, tmp_users = out_dir / ".events.parquet.tmp", out_dir / ".users.parquet.tmp"
    with pq.ParquetWriter(tmp_events, EVENTS_SCHEMA) as ew, pq.ParquetWriter(tmp_users, USERS_SCHEMA) as uw:
        for k, (u, e, t, n) in enumerate(chunks):
            ew.write_table(pa.Table.from_pandas(e[list(EVENT_COLUMNS)], schema=EVENTS_SCHEMA, preserve_index=False))
            uw.write_table(pa.Table.from_pandas(u, schema=USERS_SCHEMA, preserve_index=False))
            counts["events"] += len(e)
            counts["users"] += len(u)
            truths.append(t)
            _add_counts(noise, n)
            if progress:
                progress(f"  users {counts['users']:,}/{p.n_users:,}  events {counts['events']:,}")
    tmp_events.replace(out_dir / "events.parquet")
    tmp_users.replace(out_dir / "users.parquet")
    np.savez_compressed(out_dir / "truth.npz", **_truth(cat, truths))
    source = {"generator": "synthetic", "preset": preset if isinstance(preset, str) else "custom", "seed": seed,
              "as_of": str(END_DATE), "injected_noise": noise, **counts}
    (out_dir / "source.json").write_text(json.dumps(source, indent=2))
    return counts
