"""The shop simulator (`shoprec simulate`): conversion and loyalty of recommendation policies, A/B/n.

The idea: offline ranking metrics are a proxy; what a shop is paid for is visits that end in a
purchase and customers who come back. The synthetic shop knows every customer's hidden taste
(``truth.npz``), so it can play them: each simulated day, customers arrive, a policy shows them
``k`` items, and they click, add to cart and buy by the same hidden model that generated the
data. Their events flow back through the serving path (``serving.events.record_events``, what
RecordEvents runs) into the policy's own copy of the online store, so a pipeline policy reacts
to them the next time, as in production.

The customer model (documented assumptions; the generator's funnel is reused where it exists):
- who: the shop's customers at the end of the data: not bots, not churned, active in the last
  30 days. Each visits on a day with probability ``base_rate × loyalty`` (base_rate: their
  visit days / days in the data, clipped to [0.02, 0.5]).
- attention: an item at rank r is looked at with probability ``position_decay^r ×
  (0.5 + 0.5 × category_pref[c] / max category_pref)``: preferred categories get more of it.
- funnel (the generator's): click ~ sigmoid(-3.2 + aff); cart | click ~ sigmoid(-1.6 + 0.8 aff);
  buy | cart ~ sigmoid(-0.8 + 0.8 aff), with aff = <user, item> / sqrt(d). A durable item bought
  once is bought again with a tenth of the chance (consumables: full chance).
- loyalty: after a visit with a purchase ×1.15, with a click but no purchase ×1.0, with nothing
  ×0.85 (clipped to [0.2, 2]): customers who find what they want come back more often. This is
  the assumption that turns recommendation quality into a return rate; its constants are
  parameters of ``CustomerModel``.

Policies (same customers, same seeds, common random numbers for arrivals and funnel draws):
random, popularity, co-occurrence (of the customer's recent items), two-tower order (the
serving pipeline's candidates ordered by retrieval score), the full pipeline with each ranker,
a retention variant of the pipeline (customers whose churn risk, from the churn model on their
online features, is at least ``RETENTION_RISK`` get ``RETENTION_RULES``: the safest bets, no
exploration), and an oracle that knows the hidden preferences (expected purchase probability,
the upper bound).

Between days the online features change through RecordEvents. With ``nightly`` the batch jobs
also run for every pipeline world: the day's events join its clean history, the features are
rebuilt and materialized, and the item features are hot-reloaded. Models are not retrained.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.artifacts import ArtifactStore
from feature_repo.errors import ConfigError
from feature_repo.workspace import Workspace

POLICIES = ("random", "popularity", "cooccurrence", "two_tower", "pipeline_dcn", "pipeline_lstm", "pipeline_retention",
            "oracle")
RETENTION_RISK = 0.3  # churn risk from which the retention policy changes a customer's mix
# The retention mix: no exploration slots and no diversity cap, only the ranker's safest bets
# (what the customer is most likely to buy now), and bought consumables shown again sooner.
RETENTION_RULES = {"max_category_share": 1.0, "cross_category_slots": 0, "new_item_slots": 0,
                   "repeat_purchase_rate": 0.05}
CONSUMABLE = frozenset({"skincare", "makeup", "haircare", "coffee", "pet_supplies"})


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class CustomerModel:
    """Constants of the simulated customers (module docstring)."""

    position_decay: float = 0.85
    loyalty_after_purchase: float = 1.15
    loyalty_after_click: float = 1.0
    loyalty_after_nothing: float = 0.85
    loyalty_bounds: tuple[float, float] = (0.2, 2.0)
    rebuy_durable: float = 0.1


@dataclass(frozen=True)
class SimulationConfig:
    days: int = 14
    k: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    return_days: int = 7  # "came back within N days" (the 30 needs days >= 31)
    max_customers: int = 2000  # sampled (same sample for every policy) to bound the run time
    policies: tuple[str, ...] = POLICIES
    customers: CustomerModel = field(default_factory=CustomerModel)
    page_rules: Any = None  # serving.rules.Rules for the pipeline policies (None: serving's defaults)
    # Between days, for each pipeline policy's world: append the day's events to its clean
    # events, rebuild the feature tables and materialize (the nightly batch jobs); the server
    # then hot-reloads the item features. Slower (about 20 s per world and day on `default`).
    nightly: bool = False


class Shop:
    """The hidden truth and the catalog, aligned by item and user number."""

    def __init__(self, ws: Workspace, max_customers: int, seed: int = 0):
        truth = np.load(ws.raw_dir / "truth.npz")
        items = pd.read_parquet(ws.clean_dir / "items.parquet")
        events = pd.read_parquet(ws.clean_dir / "events.parquet")
        self.item_ids = items["item_id"].astype(str).to_numpy()
        number = np.array([int(i[1:]) for i in self.item_ids])
        self.item_vecs = truth["item_vecs"][number]
        self.category = items["category"].astype(str).to_numpy()
        self.price = items["price"].to_numpy(dtype=float)
        self.launch = pd.to_datetime(items["created_at"], utc=True)
        self.categories = sorted(set(self.category))
        cat_names = sorted({c for c in self.category})
        self.cat_index = np.array([cat_names.index(c) for c in self.category])
        self.consumable = np.isin(self.category, list(CONSUMABLE))
        self.end = events["timestamp"].max()
        recent = events[events["timestamp"] >= self.end - pd.Timedelta(days=30)]
        days_active = events.assign(day=events["timestamp"].dt.floor("D")).groupby("user_id")["day"].nunique()
        span_days = max((self.end - events["timestamp"].min()).days, 1)
        users = pd.Series(sorted(set(recent["user_id"].astype(str))))
        number = users.str[1:].astype(int).to_numpy()
        ok = ~truth["is_bot"][number] & ~truth["churned"][number]
        users, number = users[ok].to_numpy(), number[ok]
        if len(users) > max_customers:
            pick = np.sort(np.random.default_rng(seed).choice(len(users), max_customers, replace=False))
            users, number = users[pick], number[pick]
        self.users = users
        self.user_vecs = truth["user_vecs"][number]
        # category_pref columns follow the generator's category order: the first n names.
        from feature_repo.data.synthetic import CATEGORY_NAMES

        gen_order = list(CATEGORY_NAMES[: truth["category_pref"].shape[1]])
        pref = truth["category_pref"][number]
        self.pref = np.stack([pref[:, gen_order.index(c)] if c in gen_order else np.zeros(len(users))
                              for c in cat_names], axis=1)
        self.base_rate = np.clip(days_active.reindex(users).fillna(1).to_numpy() / span_days, 0.02, 0.5)
        self.top_categories = [set(c) for c in np.array(cat_names)[np.argsort(-self.pref, axis=1)[:, :3]]]
        self.position = {item: i for i, item in enumerate(self.item_ids)}
        self.new_items = self.launch >= self.end - pd.Timedelta(days=14)
        history = events.sort_values("timestamp").groupby("user_id")["item_id"].apply(lambda s: list(s)[-50:])
        self.history = {u: list(history.get(u, [])) for u in users}
        self.bought = events[events["event_type"] == "purchase"].groupby("user_id")["item_id"].agg(set)

    def affinity(self, u: int, items: np.ndarray) -> np.ndarray:
        return self.item_vecs[items] @ self.user_vecs[u] / math.sqrt(self.user_vecs.shape[1])

    def attention(self, u: int, items: np.ndarray) -> np.ndarray:
        pref = self.pref[u]
        return 0.5 + 0.5 * pref[self.cat_index[items]] / max(pref.max(), 1e-9)

    def purchase_probability(self, u: int, items: np.ndarray) -> np.ndarray:
        """Expected purchase probability if the item is looked at (the oracle's score)."""
        a = self.affinity(u, items)
        return self.attention(u, items) * _sigmoid(-3.2 + a) * _sigmoid(-1.6 + 0.8 * a) * _sigmoid(-0.8 + 0.8 * a)


# -- policies -----------------------------------------------------------------------------------

Policy = Callable[[int, str, int], list[str]]  # (customer number, user id, k) -> item ids


def _blocked(shop: Shop, user: str, bought: set[str]) -> set[str]:
    return {i for i in bought if i in shop.position and not shop.consumable[shop.position[i]]}


class Policies:
    """Builds each policy; pipeline policies get their own copy of the workspace (online store)."""

    def __init__(self, ws: Workspace, shop: Shop, scratch: Path, page_rules: Any = None):
        self.ws, self.shop, self.scratch, self.page_rules = ws, shop, scratch, page_rules
        from feature_repo.data.item_table import ItemTable

        items = ItemTable.load(ws.features_dir)
        self.popular = [str(items.item_ids[p]) for p in items.most_popular(len(items))]
        index_dir = ArtifactStore(ws.models_dir / "index").current()
        from retrieval.cooccurrence import CooccurrenceModel

        self.cooc = CooccurrenceModel.load(index_dir / "cooccurrence")

    def build(self, name: str, seed: int, state: "World") -> Policy:
        shop = self.shop
        rng = np.random.default_rng(seed + 1000)
        if name == "random":
            return lambda u, user, k: [str(shop.item_ids[i]) for i in rng.choice(len(shop.item_ids), k, replace=False)]
        if name == "popularity":
            return lambda u, user, k: [i for i in self.popular if i not in _blocked(shop, user, state.bought[user])][:k]
        if name == "cooccurrence":
            def cooc(u: int, user: str, k: int) -> list[str]:
                blocked = _blocked(shop, user, state.bought[user])
                recs = [i for i, _ in self.cooc.recommend(state.history[user], 3 * k) if i not in blocked]
                return (recs + [i for i in self.popular if i not in blocked and i not in recs])[:k]
            return cooc
        if name == "oracle":
            def oracle(u: int, user: str, k: int) -> list[str]:
                p = shop.purchase_probability(u, np.arange(len(shop.item_ids)))
                for i in _blocked(shop, user, state.bought[user]):
                    p[shop.position[i]] = -1
                return [str(shop.item_ids[i]) for i in np.argsort(-p, kind="stable")[:k]]
            return oracle
        return self._pipeline(name, seed, state)

    def _pipeline(self, name: str, seed: int, state: "World") -> Policy:
        """A Recommender on a private copy of the workspace (its own online store)."""
        from serving.recommender import Recommender

        world = self.scratch / f"{name}-{seed}"
        if world.exists():
            shutil.rmtree(world)
        shutil.copytree(self.ws.root, world, ignore=shutil.ignore_patterns("raw", "evaluation", "simulation"))
        wws = Workspace.at(world)
        kind = {"pipeline_dcn": "dcn", "pipeline_lstm": "lstm"}.get(name)
        store = ArtifactStore(wws.models_dir / "ranking")
        if kind:
            versions = [v for v in store.versions() if store.manifest(v)["model"] == kind]
            if not versions:
                raise ValueError(f"policy {name}: no {kind} ranker in {self.ws.models_dir / 'ranking'}; "
                                 "run `shoprec train ranking --ranker both` first.")
            store.publish(versions[-1])
        rec = Recommender(wws, rules=self.page_rules) if self.page_rules is not None else Recommender(wws)
        state.stores[name] = rec

        retention = None
        if name == "pipeline_retention":
            from serving.rules import Rules

            if rec.models.churn is None:
                raise ValueError("policy pipeline_retention needs a churn model; run `shoprec churn train` first.")
            retention = Rules(**RETENTION_RULES)

        def pipeline(u: int, user: str, k: int) -> list[str]:
            if retention is not None:  # at-risk customers get the retention mix
                at_risk = rec.insights(user)["churn_risk"] >= RETENTION_RISK
                state.retention_shown += at_risk
                return [r.item_id for r in rec.recommend(user, k, rules=retention if at_risk else None).items]
            if name == "two_tower":  # the same candidates, retrieval order
                result = rec.recommend(user, min(100, 5 * k))
                ranked = sorted(result.items, key=lambda r: -r.retrieval_score) if result.personalized else result.items
                return [r.item_id for r in ranked[:k]]
            return [r.item_id for r in rec.recommend(user, k).items]
        return pipeline


@dataclass
class World:
    """What one policy's simulation remembers about its customers."""

    history: dict[str, list[str]]
    bought: dict[str, set[str]]
    loyalty: np.ndarray
    stores: dict[str, Any] = field(default_factory=dict)
    retention_shown: int = 0  # visits that got the retention mix (pipeline_retention)


def _record(rec, rows: list[dict]) -> None:
    """Send events through the serving path (what RecordEvents does)."""
    from serving.events import record_events
    from serving.proto import recommender_pb2 as pb

    if rows:
        record_events(rec.store, [pb.Event(**r) for r in rows], rec.models.items.position)


def run_policy(shop: Shop, policies: Policies, name: str, seed: int, cfg: SimulationConfig) -> dict[str, Any]:
    """Simulate ``cfg.days`` days for one policy and seed; returns totals and daily series."""
    cm = cfg.customers
    n = len(shop.users)
    world = World({u: list(shop.history[u]) for u in shop.users},
                  {u: set(shop.bought.get(u, set())) for u in shop.users}, np.ones(n))
    policy = policies.build(name, seed, world)
    # Common random numbers: the same draws for every policy at the same (seed, day, customer).
    crn = np.random.default_rng(seed)
    visit_draws = crn.random((cfg.days, n))
    funnel_draws = crn.random((cfg.days, n, cfg.k, 4))
    totals = dict(visits=0, impressions=0, clicks=0, carts=0, purchases=0, buying_visits=0, revenue=0.0,
                  cross_category=0, new_item_impressions=0)
    shown: set[str] = set()
    daily = []
    visits_by_user: list[list[int]] = [[] for _ in range(n)]
    rec = world.stores.get(name)
    for day in range(cfg.days):
        now = (shop.end + pd.Timedelta(days=day + 1)).timestamp()
        day_visits = day_buys = day_impressions = 0
        events: list[dict] = []
        visiting = np.flatnonzero(visit_draws[day] < shop.base_rate * world.loyalty)
        for u in visiting:
            user = str(shop.users[u])
            items = [i for i in policy(u, user, cfg.k) if i in shop.position][: cfg.k]
            if not items:
                continue
            pos = np.array([shop.position[i] for i in items])
            a = shop.affinity(u, pos)
            look = cm.position_decay ** np.arange(len(pos)) * shop.attention(u, pos)
            d = funnel_draws[day, u, : len(pos)]
            clicked = (d[:, 0] < look) & (d[:, 1] < _sigmoid(-3.2 + a))
            carted = clicked & (d[:, 2] < _sigmoid(-1.6 + 0.8 * a))
            rebuy = np.array([cm.rebuy_durable if (i in world.bought[user] and not shop.consumable[p]) else 1.0
                              for i, p in zip(items, pos)])
            bought = carted & (d[:, 3] < _sigmoid(-0.8 + 0.8 * a) * rebuy)
            day_visits += 1
            day_impressions += len(pos)
            visits_by_user[u].append(day)
            totals["impressions"] += len(pos)
            totals["clicks"] += int(clicked.sum())
            totals["carts"] += int(carted.sum())
            totals["purchases"] += int(bought.sum())
            totals["revenue"] += float(shop.price[pos][bought].sum())
            totals["buying_visits"] += int(bought.any())
            totals["cross_category"] += sum(shop.category[p] not in shop.top_categories[u] for p in pos)
            totals["new_item_impressions"] += int(shop.new_items[pos].sum())
            day_buys += int(bought.any())
            shown.update(items)
            lo, hi = cm.loyalty_bounds
            factor = cm.loyalty_after_purchase if bought.any() else cm.loyalty_after_click if clicked.any() \
                else cm.loyalty_after_nothing
            world.loyalty[u] = min(max(world.loyalty[u] * factor, lo), hi)
            for step, mask in (("click", clicked), ("add_to_cart", carted), ("purchase", bought)):
                for i, p in zip(np.asarray(items)[mask], pos[mask]):
                    events.append({"user_id": user, "item_id": str(i), "event_type": step, "timestamp": now,
                                   "price": float(shop.price[p]) if step == "purchase" else 0.0})
                    if step == "click":
                        world.history[user] = (world.history[user] + [str(i)])[-50:]
                    if step == "purchase":
                        world.bought[user].add(str(i))
        totals["visits"] += day_visits
        if rec is not None:
            for lo in range(0, len(events), 1000):
                _record(rec, events[lo:lo + 1000])
            if cfg.nightly:
                nightly_jobs(rec, events, shop)
        daily.append({"day": day + 1, "visits": day_visits,
                      "conversion_per_visit": day_buys / day_visits if day_visits else 0.0})
    returned = eligible = 0
    for days_seen in visits_by_user:
        for d0 in days_seen:
            if d0 + cfg.return_days < cfg.days:
                eligible += 1
                returned += any(d0 < d1 <= d0 + cfg.return_days for d1 in days_seen)
                break  # each customer's first eligible visit counts once
    t = totals
    return {
        "ctr": t["clicks"] / max(t["impressions"], 1),
        "conversion_per_impression": t["purchases"] / max(t["impressions"], 1),
        "conversion_per_visit": t["buying_visits"] / max(t["visits"], 1),
        "revenue_per_visit": t["revenue"] / max(t["visits"], 1),
        "return_rate": returned / max(eligible, 1),
        "coverage": len(shown) / len(shop.item_ids),
        "cross_category_share": t["cross_category"] / max(t["impressions"], 1),
        "new_item_share": t["new_item_impressions"] / max(t["impressions"], 1),
        "visits": t["visits"], "purchases": t["purchases"], "daily": daily,
        "retention_share": world.retention_shown / max(t["visits"], 1),
    }


def nightly_jobs(rec, events: list[dict], shop: Shop) -> None:
    """The batch side of a day: the day's events join the clean history, features are rebuilt
    and materialized, and the pipeline reloads the new item features (hot reload)."""
    from shoprec import pipeline

    ws = rec.ws
    if events:
        day = pd.DataFrame(events)
        day = day.assign(timestamp=pd.to_datetime(day["timestamp"], unit="s", utc=True),
                         session_id="sim-" + day["user_id"] + "-" + day["timestamp"].astype(int).astype(str),
                         price=[float(shop.price[shop.position[i]]) for i in day["item_id"]], quantity=1.0)
        path = ws.clean_dir / "events.parquet"
        history = pd.read_parquet(path)
        pd.concat([history, day[history.columns]], ignore_index=True).to_parquet(path, index=False)
    pipeline.build_features(ws)
    pipeline.materialize(ws)
    rec.reload_if_changed()


METRICS = ("ctr", "conversion_per_impression", "conversion_per_visit", "revenue_per_visit", "return_rate",
           "coverage", "cross_category_share", "new_item_share", "retention_share")


def simulate(ws: Workspace, cfg: SimulationConfig = SimulationConfig(), out_dir: Path | None = None,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every policy for every seed; write ``simulation.json``, ``report.md`` and the plot."""
    start = time.perf_counter()
    unknown = [p for p in cfg.policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"policies: {unknown} are unknown; choose from {', '.join(POLICIES)}")
    if not 1 <= cfg.return_days < cfg.days:
        raise ConfigError(f"return_days={cfg.return_days} must be between 1 and days - 1 ({cfg.days - 1}): a return "
                          "is only seen if the simulation runs past it; raise --days or lower --return-days")
    if not cfg.seeds or cfg.k < 1 or cfg.max_customers < 1:
        raise ConfigError("seeds must not be empty, k and max_customers must be >= 1")
    if not (ws.raw_dir / "truth.npz").exists():
        raise FileNotFoundError(f"{ws.raw_dir / 'truth.npz'} is missing: the simulator plays the synthetic shop's "
                                "hidden customers; run `shoprec generate` (real data has no hidden truth).")
    shop = Shop(ws, cfg.max_customers)
    out_dir = Path(out_dir or ws.root / "simulation")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in cfg.policies}
    with tempfile.TemporaryDirectory(prefix="shoprec-sim-") as scratch:
        policies = Policies(ws, shop, Path(scratch), cfg.page_rules)
        for seed in cfg.seeds:
            for name in cfg.policies:
                t0 = time.perf_counter()
                r = run_policy(shop, policies, name, seed, cfg)
                runs[name].append(r)
                say(f"seed {seed} {name:<14} visits {r['visits']:>6}  conversion/impression "
                    f"{r['conversion_per_impression']:.4f}  return {r['return_rate']:.3f}  "
                    f"({time.perf_counter() - t0:.1f} s)")
    summary = {name: {m: _mean_ci([r[m] for r in rs]) for m in METRICS} for name, rs in runs.items() if rs}
    results = {"config": asdict(cfg), "customers": len(shop.users), "summary": summary,
               "daily": {name: _daily_mean(rs) for name, rs in runs.items() if rs},
               "seconds": round(time.perf_counter() - start, 1)}
    results["targets"] = _targets(summary)
    (out_dir / "simulation.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "daily_conversion.svg").write_text(line_plot_svg(results["daily"], "conversion per visit, by day"))
    (out_dir / "report.md").write_text(render_report(results))
    return results


def _mean_ci(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "ci95": float(half)}


def _daily_mean(rs: list[dict[str, Any]]) -> list[float]:
    return [float(np.mean([r["daily"][d]["conversion_per_visit"] for r in rs])) for d in range(len(rs[0]["daily"]))]


def _targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, for the best pipeline policy present."""
    pipes = [p for p in ("pipeline_lstm", "pipeline_dcn", "pipeline_retention") if p in summary]
    if not pipes or "popularity" not in summary or "oracle" not in summary:
        return {}
    best = max(pipes, key=lambda p: summary[p]["conversion_per_impression"]["mean"])
    conv = {p: summary[p]["conversion_per_impression"]["mean"] for p in (best, "popularity", "oracle")}
    ret = {p: summary[p]["return_rate"]["mean"] for p in (best, "popularity")}
    return {"policy": best,
            "conversion_vs_popularity": conv[best] / max(conv["popularity"], 1e-12),
            "conversion_vs_oracle": conv[best] / max(conv["oracle"], 1e-12),
            "return_rate_minus_popularity": ret[best] - ret["popularity"],
            "met": {"2x_popularity": conv[best] >= 2 * conv["popularity"],
                    "70pct_oracle": conv[best] >= 0.7 * conv["oracle"],
                    "return_above_popularity": ret[best] > ret["popularity"]}}


def render_report(results: dict[str, Any]) -> str:
    from shoprec.table import render

    rows = []
    for name, s in results["summary"].items():
        rows.append({"policy": name, **{m: f"{s[m]['mean']:.4f} ± {s[m]['ci95']:.4f}" for m in METRICS}})
    cfg = results["config"]
    t = results.get("targets") or {}
    lines = [f"# Shop simulation: {results['customers']} customers, {cfg['days']} days, seeds {cfg['seeds']}, k={cfg['k']}",
             "", "Mean ± 95% interval across seeds. return_rate: came back within "
             f"{cfg['return_days']} days of their first visit.", "", render(rows), "",
             "![conversion per visit by day](daily_conversion.svg)", ""]
    if t:
        lines += [f"Best pipeline policy: {t['policy']}: conversion per impression {t['conversion_vs_popularity']:.2f}x "
                  f"popularity (target 2x), {t['conversion_vs_oracle']:.0%} of the oracle (target 70%), return rate "
                  f"{t['return_rate_minus_popularity']:+.3f} vs popularity (target > 0). Met: {t['met']}", ""]
    lines.append(f"Run time {results['seconds']} s.")
    return "\n".join(lines) + "\n"


def line_plot_svg(series: dict[str, list[float]], title: str) -> str:
    """Conversion by day, one line per policy (shoprec/plots.py draws it)."""
    from shoprec.plots import Line, line_chart_svg

    days = max((len(v) for v in series.values()), default=1)
    return line_chart_svg([Line(name, list(range(1, len(values) + 1)), list(values)) for name, values in series.items()],
                          title, "day", [(d, str(d)) for d in range(1, days + 1)])
