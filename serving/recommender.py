"""The request pipeline: one user (and what the shop knows right now) in, k ranked items out.

Per request: ONE Feast online read for the user (feature_repo/online_read.py); the request
context (session items, cart, viewed item) extends the history → user tower (a TensorFlow Lite
copy of the exported tf.function, serving/lite.py, or the function itself) → candidates from FAISS,
co-occurrence, the context's complements and similar items, trending, new and popular →
filters (bought unless a repeat-purchase item, in the cart, excluded, unavailable, category,
price) → ranker heads over [user, item, cross] features (item features from memory) → page
rules (serving/rules.py) → k items with scores, sources and reasons.

Cold start: a user with neither stored history nor context gets popular items; with a cart or
a viewed item the context alone drives retrieval and ranking. An unreachable feature store
degrades to the context/popular path with ``degraded=True`` instead of failing the request.
Models, index and item features (serving/models.py) are reloaded when a new version is
published (``watch``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feature_repo.data.features import RECENT_N, pad_sequences
from feature_repo.online_read import OnlineRowReader
from feature_repo.workspace import Workspace
from ranking.features import rank_features
from retrieval.user_features import activity_vector
from serving import metrics
from serving.candidates import ALL_SOURCES, Candidates, CandidateSources, Quotas, passing
from serving.errors import ModelNotLoaded, StoreUnavailable, UnknownItem
from serving.models import NO_ITEM_IDS, Models, disk_fingerprint
from serving.page_cache import read_ahead
from serving.rules import SLOT_NAMES, Rules, category_cap, pick_item_ranks
from serving.user_cache import UserRetrieval, UserRetrievalCache

log = logging.getLogger(__name__)
USER_FEATURE_SERVICE = "ranking_user_v1"


@dataclass(slots=True)  # slots: a page makes 20 of these per request, ~25% cheaper each
class Recommendation:
    item_id: str
    score: float
    retrieval_score: float
    source: str
    reason: str
    category: str
    brand: str
    price: float
    heads: tuple[float, float, float] = (0.0, 0.0, 0.0)  # P(click), P(cart), P(purchase); 0 if not ranked


@dataclass
class RecommendResult:
    user_id: str
    items: list[Recommendation]
    personalized: bool
    degraded: bool
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestContext:
    """What the shop knows at request time (see Context in serving/proto/recommender.proto)."""

    surface: str = ""
    exclude: tuple[str, ...] = ()
    category: str = ""
    cart: tuple[str, ...] = ()
    viewed: str = ""
    session: tuple[str, ...] = ()  # this session's items not yet recorded, oldest first
    max_price: float = 0.0


@dataclass
class _Live:
    """One consistent set of loaded models, the candidate sources built on them, and the
    retrieval results of recent users' inputs (serving/user_cache.py)."""

    models: Models
    sources: CandidateSources
    users: UserRetrievalCache


@dataclass(eq=False)
class _Request:
    """One Recommend request on its way through the pipeline (``Recommender._recommend``)."""

    user_id: str
    k: int
    ctx: RequestContext
    rules: Rules
    user: dict[str, Any] = field(default_factory=dict)  # the online features read for it
    degraded: bool = False
    personalized: bool = False
    history: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    retrieved: UserRetrieval | None = None  # the user embedding and two-tower candidates (cached)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # candidates (ItemTable)
    masks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    retrieval: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    features: np.ndarray | None = None  # the ranker's input rows (ranking/features.py)
    probs: np.ndarray | None = None  # [len(positions), tasks] once ranked

    @property
    def user_emb(self) -> np.ndarray | None:
        """[1, D], or None for a request without history."""
        return self.retrieved.embedding if self.retrieved is not None else None


class Recommender:
    """Serves recommendations from a workspace's live artifacts and its Feast online store.

    Args:
      ws: the workspace (artifacts, feature tables, Feast registry and online store).
      quotas: candidates per source (serving/candidates.py) before filtering and ranking.
      feature_store: a Feast FeatureStore; opened from the workspace when omitted. RecordEvents
        pushes through it, and requests read users through it unless ``read_store`` is given.
      read_store: the same online store opened for the request path's reads, e.g. with a
        shorter Redis socket timeout than pushes get (serving/launcher.py): a read is on the
        event loop, and a hung store holds every call of the process until it times out.
      store_retry_seconds: after a failed online read, requests skip the store while a
        background read tries it again every this many seconds.
      rules: page rules (serving/rules.py).
      ranker: which ranking model: "published" or a kind (see ``Models.load``).
      user_cache: recent users' embeddings and two-tower candidates kept (0: none).
      model_runtime: "lite" (TensorFlow Lite copies of the user tower and ranker where they
        agree with TensorFlow, serving/lite.py) or "tensorflow".
    """

    def __init__(self, ws: Workspace, quotas: Quotas = Quotas(), feature_store=None, read_store=None,
                 store_retry_seconds: float = 5.0, rules: Rules = Rules(), ranker: str = "published",
                 user_cache: int = 4096, model_runtime: str = "lite"):
        from feature_repo.store import online_store_file, open_store

        self.ws = ws
        self.ranker = ranker
        self.user_cache = user_cache
        self.model_runtime = model_runtime
        self.quotas = quotas
        self.rules = rules
        # After a failed read, requests skip the store until a background read succeeds
        # (_probe_store): an outage costs one slow request, even when the store hangs instead of
        # refusing (a read then waits for the socket timeout, seconds, on the request path).
        self.store_retry_seconds = store_retry_seconds
        self._store_down = threading.Event()  # set: a probe thread runs (_store_failed)
        self._probe_lock = threading.Lock()
        self._live = self._build(self._load_models())
        self._reload_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.store = feature_store or open_store(ws)
        self.user_reader = OnlineRowReader(read_store or self.store, USER_FEATURE_SERVICE, "user_id")
        store_file = online_store_file(self.store)
        read_ahead([*self.models.mapped_files, *([store_file] if store_file else [])])
        self._warm_up(self._live)
        metrics.record_serving(self.models.versions)

    @property
    def models(self) -> Models:
        return self._live.models

    @property
    def retrieval_cache(self) -> UserRetrievalCache:
        """The live models' cache of recent users' retrieval (its hits and misses)."""
        return self._live.users

    def _load_models(self) -> Models:
        models = Models.load(self.ws, self.ranker)
        if self.model_runtime == "lite":
            models.compile_lite()
        return models

    def _build(self, models: Models) -> _Live:
        return _Live(models, CandidateSources(models.items, models.index, models.index_to_item,
                                              models.cooccurrence, self.quotas), UserRetrievalCache(self.user_cache))

    # -- hot reload ---------------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Load and swap in newly published models/index/item features; True if it swapped.

        Requests in flight keep the set they started with (one reference read per request), so
        a swap never fails a request. A broken new version is logged and the old one stays live.
        """
        with self._reload_lock:
            if disk_fingerprint(self.ws, self.ranker) == self.models.fingerprint:
                return False
            try:
                live = self._build(self._load_models())
                read_ahead(list(live.models.mapped_files))
                self._warm_up(live)
            except Exception:  # noqa: BLE001 - keep serving the old version, loudly
                log.exception("reload failed; still serving %s", self.models.versions)
                metrics.record_reload(ok=False)
                return False
            old = self.models.versions
            self._live = live
            metrics.record_reload(ok=True)
            metrics.record_serving(live.models.versions, replaced=old)
            log.info("reloaded: %s -> %s", old, live.models.versions)
            return True

    def _warm_up(self, live: _Live) -> None:
        """Serve a cold start and a product page before the first request does: the first Feast
        read, the first call of each model and the first run of the compiled loops (numba: seconds
        the first time on a machine, then read from its cache) are slow."""
        self._recommend(live, [_Request("warm-up", 10, RequestContext(), self.rules)])
        if len(live.models.popular):
            viewed = live.models.items.item_ids[live.models.popular[0]]
            self._recommend(live, [_Request("warm-up", 10, RequestContext(viewed=viewed), self.rules)])

    def watch(self, interval_seconds: float) -> None:
        """Check for new versions every ``interval_seconds`` in a daemon thread (0: never)."""
        if interval_seconds <= 0 or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                self.reload_if_changed()

        self._watcher = threading.Thread(target=loop, name="shoprec-reload", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        with self._probe_lock:  # its probe stops: a closed Recommender's outage is over for the metrics
            if self._store_down.is_set():
                metrics.record_store_down(False)

    # -- features -----------------------------------------------------------------------------

    def user_features(self, user_id: str) -> tuple[dict[str, Any], bool]:
        """The user's online features (one read) and whether the store failed."""
        rows, degraded = self.users_features([user_id])
        return rows[0], degraded

    def users_features(self, user_ids: list[str]) -> tuple[list[dict[str, Any]], bool]:
        """Several users' online features (one read of the store for all) and whether it failed."""
        wanted = [u for u in dict.fromkeys(user_ids) if u]
        if not wanted:
            return [{} for _ in user_ids], False
        if self._store_down.is_set():
            return [{} for _ in user_ids], True
        try:
            found = dict(zip(wanted, self.user_reader.read_many(wanted)))
        except Exception:  # store down: serve without personal features rather than fail
            log.exception("online feature read failed; serving without the store until a background read "
                          "succeeds (one every %.1fs)", self.store_retry_seconds)
            self._store_failed()
            return [{} for _ in user_ids], True
        return [found.get(u, {}) for u in user_ids], False

    @property
    def store_down(self) -> bool:
        """Whether requests are skipping the online store after a failed read."""
        return self._store_down.is_set()

    def _store_failed(self) -> None:
        with self._probe_lock:
            if self._store_down.is_set():  # already down: its probe runs
                return
            self._store_down.set()
            metrics.record_store_down(True)
        threading.Thread(target=self._probe_store, name="shoprec-store-probe", daemon=True).start()

    def _probe_store(self) -> None:
        """One read every ``store_retry_seconds`` until the store answers, off the request path."""
        while not self._stop.wait(max(self.store_retry_seconds, 0.05)):
            try:
                self.user_reader.read_many(["shoprec-store-probe"])
            except Exception:  # noqa: BLE001 - still down: requests keep skipping it
                continue
            with self._probe_lock:  # a request failing from here on starts a new probe
                self._store_down.clear()
                metrics.record_store_down(False)
            log.info("online store readable again: requests read it again")
            return

    # -- RPCs ---------------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, context: RequestContext | None = None, *,
                  exclude: tuple[str, ...] = (), category: str = "", rules: Rules | None = None) -> RecommendResult:
        """Top-k for a user in a context (``exclude``/``category``: shorthands for the context's;
        ``rules``: other page rules for this request, e.g. a retention mix)."""
        context = context or RequestContext(exclude=tuple(exclude), category=category)
        return self._recommend(self._live, [_Request(user_id, k, context, rules or self.rules)])[0]

    def recommend_many(self, calls: list[tuple[str, int, RequestContext]]) -> list[RecommendResult | Exception]:
        """Several (user_id, k, context) requests answered together: one online read, one
        user-tower call and (with the DCN) one ranker call for all of them, which costs less
        than one call per request (docs/benchmarks.md). Each answer is the request's result,
        or the exception it raised; a request that fails in a batch is retried alone, so that
        it cannot fail the others."""
        live = self._live
        if len(calls) > 1:
            try:
                return list(self._recommend(live, [_Request(u, k, ctx, self.rules) for u, k, ctx in calls]))
            except Exception:  # noqa: BLE001 - unexpected: find the request it belongs to
                log.exception("a batch of %d requests failed; answering them one by one", len(calls))
        out: list[RecommendResult | Exception] = []
        for u, k, ctx in calls:  # fresh requests: a failed batch may have filled in part of its own
            try:
                out.append(self._recommend(live, [_Request(u, k, ctx, self.rules)])[0])
            except Exception as e:  # noqa: BLE001 - the caller maps it to a status
                out.append(e)
        return out

    def cart(self, item_ids: list[str], k: int, user_id: str = "") -> RecommendResult:
        """Complements of a cart: the cart surface of ``recommend``, other categories first."""
        m = self.models
        known = [i for i in item_ids if i in m.items.position]
        if not known:
            raise UnknownItem(f"item_ids: none of {item_ids[:5]}{'...' if len(item_ids) > 5 else ''} is in the "
                              "catalog; send catalog item ids (the cart's contents).")
        return self._recommend(self._live, [_Request(user_id, k, RequestContext(surface="cart", cart=tuple(known)),
                                                     self.rules)])[0]

    def similar_items(self, item_id: str, k: int, exclude: tuple[str, ...] = (),
                      same_category: bool = False) -> RecommendResult:
        """Nearest items in the two-tower space; a new item is embedded from its content."""
        live = self._live
        m = live.models
        pos = m.items.position.get(item_id)
        if pos is None:
            raise UnknownItem(f"item_id: {item_id!r} is not in the catalog; after adding items run "
                              "`shoprec features` (and `shoprec index rebuild` to index them).")
        blocked = set(exclude) | {item_id}
        want = k + len(blocked)
        if same_category:
            want = max(want, 5 * k)
        hits = self._neighbours(m, pos, want + 10)
        out = []
        for p, sim in hits:
            if len(out) == k:
                break
            if m.items.item_ids[p] in blocked or not self._available(m, p):
                continue
            if same_category and m.items.category[p] != m.items.category[pos]:
                continue
            out.append(self._item(m, p, sim, sim, ["similar"], "similar"))
        return RecommendResult(item_id, out, False, False, m.versions)

    def insights(self, user_id: str) -> dict[str, Any]:
        """Churn risk, drivers and segment of one user (serving/churn.py), from one online read."""
        m = self.models
        if m.churn is None:
            raise ModelNotLoaded("no churn model is published; run `shoprec churn train` (after `shoprec features`).")
        user, degraded = self.user_features(user_id)
        if degraded:  # a risk computed from nothing would look like a real answer ("new user")
            raise StoreUnavailable("online store: the user's features cannot be read right now; retry")
        # "Now" is the data's now: the newest feature snapshot, or a newer visit pushed since.
        now = max(m.items.as_of_epoch, float(user.get("last_visit_epoch") or 0.0))
        out = m.churn.insights(user, now)
        out["drivers"] = [(f, v, c, m.churn.describe(f, v, c)) for f, v, c in out["drivers"]]
        return {**out, "horizon_days": m.churn.horizon_days, "version": m.churn.version}

    # -- pipeline -----------------------------------------------------------------------------

    def _neighbours(self, m: Models, pos: int, n: int) -> list[tuple[int, float]]:
        """ItemTable positions of the ``n`` nearest indexed items to item ``pos`` (itself included)."""
        vec = self._item_vector(m, pos)
        found, sims = m.index.search(vec[None, :].astype(np.float32), min(n, len(m.index)))
        return [(int(m.index_to_item[i]), float(s)) for i, s in zip(found[0], sims[0])
                if i >= 0 and m.index_to_item[i] >= 0]

    def _item_vector(self, m: Models, pos: int) -> np.ndarray:
        import tensorflow as tf

        row = m.item_to_index[pos]
        if row >= 0:
            return m.item_embeddings[row]
        it = m.items
        attrs = list(it.attributes[pos]) if it.attributes is not None and it.attributes[pos] is not None else []
        bucket = int(it.price_bucket[pos]) if it.price_bucket is not None else 0
        return m.item_tower.embed_content(
            tf.constant([str(it.item_ids[pos])]), tf.constant([str(it.category[pos])]),
            tf.constant([str(it.brand[pos])]), tf.constant([bucket], tf.int64),
            tf.constant([[str(a) for a in attrs] or [""]])).numpy()[0]

    @staticmethod
    def _available(m: Models, p: int) -> bool:
        return m.available is None or bool(m.available[p])

    def _recommend(self, live: _Live, requests: list["_Request"]) -> list[RecommendResult]:
        """The pipeline over a batch of requests: the steps with a per-call cost (the online
        read, the user tower, the DCN) run once for all of them, the rest per request."""
        m = live.models
        users, degraded = self.users_features([r.user_id for r in requests])
        for r, user in zip(requests, users):
            self._prepare(m, r, user, degraded)
        self._embed(live, [r for r in requests if r.history])
        for r in requests:
            self._candidates(live, r)
        self._rank(m, [r for r in requests if r.history and len(r.positions)])
        return [self._page(m, r) for r in requests]

    @staticmethod
    def _embed(live: _Live, requests: list["_Request"]) -> None:
        """User embeddings: from the cache for inputs seen lately, one user-tower call for the rest."""
        if not requests:
            return
        activity = [activity_vector(r.user) for r in requests]
        keys = [(r.user_id or "anonymous", tuple(r.history), a.tobytes()) for r, a in zip(requests, activity)]
        todo = []
        for i, (r, key) in enumerate(zip(requests, keys)):
            r.retrieved = live.users.get(key)
            if r.retrieved is None:
                todo.append(i)
        metrics.record_user_cache(len(requests) - len(todo), len(todo))
        if todo:
            embeddings = live.models.embed_users([keys[i][0] for i in todo],
                                                 pad_sequences([requests[i].history for i in todo], RECENT_N).astype(str),
                                                 np.stack([activity[i] for i in todo]))
            for i, emb in zip(todo, embeddings):
                emb = emb[None]
                emb.setflags(write=False)  # shared with later requests through the cache
                requests[i].retrieved = UserRetrieval(emb)
                live.users.put(keys[i], requests[i].retrieved)

    def _prepare(self, m: Models, r: "_Request", user: dict[str, Any], degraded: bool) -> None:
        """History (stored, then the request's context), what is blocked, and the flags."""
        items, ctx = m.items, r.ctx
        r.user, r.degraded = user, degraded
        stored = list(user.get("recent_items") or [])
        stored_types = list(user.get("recent_event_types") or [])
        stored_types = (stored_types + ["view"] * len(stored))[: len(stored)]
        # The request's context is the freshest behaviour: session views, then the cart, then
        # the product being viewed (the most recent step).
        extra = [(i, "view") for i in ctx.session] + [(i, "add_to_cart") for i in ctx.cart]
        if ctx.viewed:
            extra.append((ctx.viewed, "view"))
        extra = [(i, t) for i, t in extra if i in items.position]
        r.history = (stored + [i for i, _ in extra])[-RECENT_N:]
        r.types = (stored_types + [t for _, t in extra])[-RECENT_N:]
        r.personalized = bool(stored)
        bought = {i for i, t in zip(stored, stored_types) if t == "purchase"}
        repeatable = {i for i in bought if i in items.position and m.repeat_rate is not None
                      and m.repeat_rate[items.position[i]] >= r.rules.repeat_purchase_rate}
        r.blocked = set(ctx.exclude) | set(ctx.cart) | (bought - repeatable)
        if ctx.viewed:
            r.blocked.add(ctx.viewed)

    def _candidates(self, live: _Live, r: "_Request") -> None:
        """Gathered, filtered (and filled up to k) candidates with their retrieval scores."""
        m, ctx = live.models, r.ctx
        found = r.retrieved
        if found is not None and found.two_tower is None:  # kept with the embedding, for its next use
            # With an index that keeps the vectors, FAISS's scores are the inner products
            # _retrieval_scores needs: gathering ~500 scattered embedding rows again cost a
            # first visit ~0.07 ms (docs/benchmarks.md, twenty-ninth session).
            two_tower, scores = live.sources.two_tower_scored(found.embedding)
            if scores is None:  # compressed codes or a transform: FAISS's scores are not those
                scores = _inner_products(m, two_tower, found.embedding[0])
            two_tower.setflags(write=False)
            scores.setflags(write=False)
            found.two_tower, found.two_tower_scores = two_tower, scores
        cand = live.sources.gather(r.user_emb, r.history, self._context_candidates(m, ctx),
                                   found.two_tower if found is not None else None)
        retrieval = self._retrieval_scores(m, cand.positions, found)
        ok = self._allowed(m, cand.positions, ctx, r.blocked)
        positions, masks, retrieval = cand.positions[ok], cand.masks[ok], retrieval[ok]
        if len(positions) < r.k:  # filters must still fill the page: popular items that pass them
            fill = m.popular[~np.isin(m.popular, cand.positions)]
            fill = fill[np.flatnonzero(self._allowed(m, fill, ctx, r.blocked))[: r.k - len(positions)]]
            positions = np.concatenate([positions, fill])
            masks = np.concatenate([masks, np.zeros(len(fill), np.int64)])
            retrieval = np.concatenate([retrieval, self._retrieval_scores(m, fill, found)])
        r.positions, r.masks, r.retrieval = positions, masks, retrieval

    @staticmethod
    def _retrieval_scores(m: Models, positions: np.ndarray, found: UserRetrieval | None) -> np.ndarray:
        """The two-tower inner products of the user and each candidate (float32; 0 for an item
        not in the index or a request without history). The two-tower candidates' are kept with
        the user's retrieval: on a large catalog their ~500 embedding rows are scattered over
        hundreds of MB, and reading them again was ~6% of a request (docs/benchmarks.md)."""
        if found is None or not len(positions):
            return np.zeros(len(positions), dtype=np.float32)
        head = len(found.two_tower)  # gather() puts them first, in their order
        if head and len(positions) >= head and (positions[:head] == found.two_tower).all():
            return np.concatenate([found.two_tower_scores, _inner_products(m, positions[head:], found.embedding[0])])
        return _inner_products(m, positions, found.embedding[0])

    def _rank(self, m: Models, requests: list["_Request"]) -> None:
        """Head probabilities of every request's candidates: one ranker call for all of them
        when the ranker scores rows alone, else one per request (the LSTM reads its history)."""
        if not requests:
            return
        items = m.items
        for r in requests:
            r.features = rank_features(r.user, r.positions, r.retrieval, items, m.cooccurrence,
                                       m.item_to_cooccurrence)
        for group in [requests] if m.ranker_scores_rows_alone else [[r] for r in requests]:
            # The DCN reads neither item ids nor the history: sending none saves converting them
            # to strings and the exported graph's table lookups (~0.18 ms a request at 2 a batch
            # for the ids, docs/benchmarks.md). The LSTM's group is one request: its history.
            if m.ranker_scores_rows_alone:
                ids = history = types = NO_ITEM_IDS
            else:
                ids = items.item_ids[np.concatenate([r.positions for r in group])].astype(str)
                history, types = np.asarray(group[0].history, dtype=str), np.asarray(group[0].types, dtype=str)
            if len(group) == 1:  # the usual batch: np.concatenate and np.split cost ~40 us between them
                group[0].probs = m.score_heads(group[0].features, ids, history, types)
                continue
            probs = m.score_heads(np.concatenate([r.features for r in group]), ids, history, types)
            for r, part in zip(group, np.split(probs, np.cumsum([len(r.positions) for r in group])[:-1])):
                r.probs = part

    def _page(self, m: Models, r: "_Request") -> RecommendResult:
        """Final scores, the page rules and the response items of one request."""
        items, ctx, rules, positions = m.items, r.ctx, r.rules, r.positions
        if not len(positions):
            return RecommendResult(r.user_id, [], r.personalized, r.degraded, m.versions)
        if r.probs is not None:
            final = r.probs @ m.head_weights
        else:  # cold start without context: popularity order (nothing personal to rank with)
            final = 1.0 - np.arange(len(positions), dtype=np.float32) / len(positions)

        order = np.argsort(-final, kind="stable")  # candidates (indices into positions), best first
        if ctx.surface == "cart" and ctx.cart:
            cart = items.positions(list(ctx.cart))
            if len(cart):
                # Complements first: items from the cart's own categories go after the others (stable).
                later = items.category_mask(cart)[items.category_code[positions[order]]]
                order = np.concatenate([order[~later], order[later]])
        if ctx.category:  # a category page: no diversity, no cross-category slot
            rules = Rules(1.0, 0, rules.new_item_slots, rules.repeat_purchase_rate)
        recent = items.category_mask(items.positions(r.history))  # categories of the recent items
        ranks, slots = pick_item_ranks(order, positions, items.category_code, items.created_epoch,
                                       items.as_of_epoch - self.quotas.new_item_days * 86400, recent, r.k,
                                       category_cap(rules, r.k), rules.new_item_slots, rules.cross_category_slots)
        # The page's fields in one gather each: per-item numpy scalars cost more than the lists.
        page = order[ranks]
        at = positions[page]
        heads = np.zeros((len(page), 3), dtype=np.float32)
        if r.probs is not None:
            page_probs = r.probs[page]
            for col, src in enumerate(m.head_index):
                if src >= 0:
                    heads[:, col] = page_probs[:, src]
        rows = zip(slots.tolist(), items.item_ids[at].tolist(), items.category[at].tolist(), items.brand[at].tolist(),
                   items.price[at].tolist(), recent[items.category_code[at]].tolist(), final[page].tolist(),
                   r.retrieval[page].tolist(), r.masks[page].tolist(), heads.tolist())
        out = [Recommendation(item_id, score, retrieval, _SOURCE_TEXT[mask],
                              SLOT_NAMES[slot] or _REASONS[mask][in_recent], category, brand, price, tuple(head))
               for slot, item_id, category, brand, price, in_recent, score, retrieval, mask, head in rows]
        return RecommendResult(r.user_id, out, r.personalized, r.degraded, m.versions)

    def _context_candidates(self, m: Models, ctx: RequestContext) -> list[tuple[list[int], str]]:
        """Complements of the cart and the viewed item, and items similar to the viewed one."""
        q = self.quotas
        items = m.items
        parts: list[tuple[list[int], str]] = []
        if m.cooccurrence is not None and q.context:
            cart = [i for i in ctx.cart if i in items.position]
            if cart:
                # Complements come from other categories (a case for a phone, not a second phone):
                # look deeper and keep those first.
                cart_cats = {items.category[items.position[i]] for i in cart}
                recs = [items.position[i] for i, _ in m.cooccurrence.recommend(cart, 4 * q.context)
                        if i in items.position]
                recs.sort(key=lambda p: items.category[p] in cart_cats)  # stable: score order kept within
                parts.append((recs[: q.context], "cart"))
            if ctx.viewed in items.position:
                recs = m.cooccurrence.recommend([ctx.viewed], q.context)
                parts.append(([items.position[i] for i, _ in recs if i in items.position], "viewed"))
        if ctx.viewed in items.position and q.similar:
            parts.append(([p for p, _ in self._neighbours(m, items.position[ctx.viewed], q.similar + 1)], "similar"))
        return parts

    @staticmethod
    def _allowed(m: Models, positions: np.ndarray, ctx: RequestContext, blocked: set[str]) -> np.ndarray:
        """Which of ``positions`` pass the filters: not blocked, available, in the category and
        under the price limit (a boolean mask)."""
        items = m.items
        category = items.code_of_category.get(ctx.category, -2) if ctx.category else -1  # -2: no such category
        return passing(np.asarray(positions, dtype=np.int64), np.sort(items.positions(list(blocked))),
                       _EVERY_ITEM if m.available is None else m.available, items.category_code, category,
                       items.price, float(ctx.max_price))

    @staticmethod
    def _item(m: Models, p: int, score: float, retrieval: float, sources: list[str], reason: str,
              heads: tuple[float, ...] = (0.0, 0.0, 0.0)) -> Recommendation:
        items = m.items
        return Recommendation(items.item_ids[p], score, retrieval, "+".join(sources), reason, items.category[p],
                              items.brand[p], float(items.price[p]), tuple(float(h) for h in heads))


_EVERY_ITEM = np.zeros(0, dtype=bool)  # ``passing``'s "no availability column": every item is


def _inner_products(m: Models, positions: np.ndarray, user: np.ndarray) -> np.ndarray:
    """[len(positions)] float32: item embedding · ``user`` (0 for items outside the index)."""
    index_pos = m.item_to_index[positions]
    return np.where(index_pos >= 0, m.item_embeddings[np.maximum(index_pos, 0)] @ user, 0.0).astype(np.float32)


def _reason(sources: list[str], recent_category: bool) -> str:
    """A short code the shop can turn into copy ("Because you viewed ...", "New in", ...)."""
    if "cart" in sources:
        return "goes_with_cart"
    if "viewed" in sources:
        return "goes_with_viewed"
    if "cooccurrence" in sources:
        return "goes_with_recent"
    if "similar" in sources:
        return "similar"
    if "two_tower" in sources:
        return "recent_category" if recent_category else "personalized"
    return {"trending": "trending", "new": "new_arrival"}.get(sources[0], "popular")


# A page item's source text and reason code depend only on its source mask (and, for the
# two-tower reason, on whether its category is a recent one): looked up, not rebuilt per item.
_MASKS = range(1 << len(ALL_SOURCES))
_SOURCE_TEXT = ["+".join(Candidates.names(mask) or ("popular",)) for mask in _MASKS]
_REASONS = [tuple(_reason(Candidates.names(mask) or ["popular"], recent) for recent in (False, True))
            for mask in _MASKS]
