"""The `shoprec` command: one subcommand per job, plus `demo` that chains them all.

Heavy imports (TensorFlow, Feast) happen inside the commands that need them, so `--help` and
light commands stay fast.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import shoprec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything touches tf.keras)
from shoprec.table import render


def _ws(args: argparse.Namespace):
    from feature_repo.workspace import Workspace

    if args.online_store:  # every job of this process (materialize, serve, ...) uses it
        os.environ["SHOPREC_ONLINE_STORE"] = args.online_store
    return Workspace.at(args.workspace)


def cmd_generate(args: argparse.Namespace) -> None:
    from shoprec import pipeline

    counts = pipeline.generate(_ws(args), args.preset, args.seed, progress=print)
    print(render([{"table": k, "rows": v} for k, v in counts.items()]))


def cmd_import(args: argparse.Namespace) -> None:
    from feature_repo.data import importers

    path = Path(args.path)
    if args.format == "amazon":
        ds = importers.import_amazon(path, name=args.name)
    elif args.format == "movielens":
        ds = importers.import_movielens(path)
    else:
        mapping = dict(pair.split("=", 1) for pair in args.map)
        types = dict(pair.split("=", 1) for pair in args.event_type)
        ds = importers.import_events_file(path, mapping, types or None)
    counts = importers.write(ds, _ws(args))
    print(render([{"table": k, "rows": v} for k, v in counts.items()]))
    if ds.source.get("disagreements"):
        print("disagreements between source files: " + json.dumps(ds.source["disagreements"]))
    print("next: shoprec validate && shoprec features && shoprec materialize && shoprec train "
          "(clean tables, features and models still describe the previous data until then)")


def cmd_validate(args: argparse.Namespace) -> None:
    from shoprec import pipeline

    ws = _ws(args)
    from feature_repo.data.cleaning import CleaningRules

    report = pipeline.validate(ws, cleaning=None if args.no_cleaning else CleaningRules())
    print(render([{"table": t, **c} for t, c in report.counts.items()]))
    print(f"quarantined rows with reasons: {ws.clean_dir / 'quarantine.csv'}")


def cmd_features(args: argparse.Namespace) -> None:
    from shoprec import pipeline

    print(render(pipeline.build_features(_ws(args)).to_dict("records")))


def cmd_materialize(args: argparse.Namespace) -> None:
    from shoprec import pipeline

    print(json.dumps(pipeline.materialize(_ws(args)), indent=2))


def _training_config(args: argparse.Namespace):
    from shoprec.training import TrainingConfig

    kinds = ("dcn", "lstm") if args.ranker in ("both", "best") else (args.ranker,)
    return TrainingConfig(holdout_days=args.holdout_days, retrieval_epochs=args.retrieval_epochs,
                          ranking_epochs=args.ranking_epochs, index_factory=args.factory, seed=args.seed,
                          ranking_kinds=kinds, ranking_serve="best" if args.ranker == "both" else args.ranker)


def cmd_train(args: argparse.Namespace) -> None:
    from shoprec import training
    from shoprec.ranking_job import ranking_table

    ws, cfg = _ws(args), _training_config(args)
    if args.model in ("retrieval", "all"):
        version, manifest = training.train_retrieval(ws, cfg)
        print(f"retrieval {version}: {json.dumps(manifest['metrics'])}")
        version, manifest = training.build_index(ws, cfg)
        print(f"index {version}: {manifest['items']} items, {manifest['factory']}")
    if args.model in ("ranking", "all"):
        version, manifest = training.train_ranking(ws, cfg)
        print(ranking_table(ws))
        print(f"serving ranking {version} ({manifest['model']})")


def cmd_index(args: argparse.Namespace) -> None:
    from shoprec.index_job import IndexSettings, rebuild

    try:
        settings = IndexSettings(args.factory, args.min_recall, args.keep, args.seed, args.nprobe, args.target_recall)
    except ValueError as e:
        raise SystemExit(f"shoprec index: {e}")
    version, manifest = rebuild(_ws(args), settings)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2))


def cmd_serve(args: argparse.Namespace) -> None:
    from feature_repo.workspace import Workspace
    from serving.config import load_config
    from serving.launcher import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Flags beat SHOPREC_SERVE_* variables, which beat the --config file, which beats the defaults.
    flags = {name: getattr(args, name) for name in ("host", "port", "workers", "processes", "workspace",
                                                    "online_store")}
    cfg = load_config(Path(args.config) if args.config else None, os.environ, flags)
    serve(cfg, Workspace.at(cfg.workspace).root, out=lambda line: print(line, flush=True))


def print_recommendations(response, title: str = "") -> None:
    flags = "" if title else ("personalized" if response.personalized else "no stored history: context/popular items")
    flags += ", DEGRADED (feature store unreachable)" if response.degraded else ""
    print(f"\n{title or 'user ' + response.user_id}" + (f" ({flags.strip(', ')})" if flags else ""))
    print(render([{"rank": i + 1, "item": r.item_id, "category": r.category, "brand": r.brand,
                   "price": round(r.price, 2), "score": round(r.score, 4), "P(buy)": round(r.purchase_probability, 4),
                   "retrieval": round(r.retrieval_score, 4), "source": r.source, "reason": r.reason}
                  for i, r in enumerate(response.items)]))


def cmd_tls_certs(args: argparse.Namespace) -> None:
    from serving.tls import make_certificates

    made = make_certificates(args.out, tuple(args.host or ("127.0.0.1", "localhost")), args.days)
    print(f"made in {args.out}: {', '.join(p.name for p in made.values())}")
    print(f"serve:  SHOPREC_SERVE_TLS_CERT={made['server']} SHOPREC_SERVE_TLS_KEY={made['server_key']} "
          f"[SHOPREC_SERVE_TLS_CLIENT_CA={made['ca']}] shoprec serve")
    print(f"query:  shoprec query info --tls-ca {made['ca']} [--tls-cert {made['client']} "
          f"--tls-key {made['client_key']}]")
    print(f"keep {made['ca_key']} off the servers: it makes certificates they would accept")


def cmd_query(args: argparse.Namespace) -> None:
    import time

    from serving.client import RecommenderClient
    from serving.tls import channel_credentials

    tls = args.tls or any(f is not None for f in (args.tls_ca, args.tls_cert, args.tls_key))
    credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    with RecommenderClient(args.address, timeout=args.timeout, credentials=credentials) as client:
        if args.info or args.rpc == "info":
            print(client.info())
        if args.rpc == "recommend":
            for user in args.user:
                print_recommendations(client.recommend(user, args.k, exclude=args.exclude, category=args.category,
                                                       surface=args.surface, cart=args.cart, viewed=args.viewed,
                                                       session=args.session, max_price=args.max_price))
        elif args.rpc == "similar":
            for item in args.item:
                print_recommendations(client.similar_items(item, args.k, exclude=args.exclude,
                                                           same_category=args.same_category), f"similar to {item}")
        elif args.rpc == "cart":
            user = args.user[0] if args.user else ""
            print_recommendations(client.cart_recommendations(args.item, args.k, user_id=user),
                                  f"cart {args.item}" + (f" of {user}" if user else ""))
        elif args.rpc == "insights":
            rows = []
            for user in args.user:
                r = client.user_insights(user)
                rows.append({"user": r.user_id, "churn risk": round(r.churn_risk, 4), "horizon days": r.horizon_days,
                             "segment": r.segment, "drivers": "; ".join(d.description for d in r.drivers)})
            print(render(rows))
        elif args.rpc == "event":
            events = [{"user_id": u, "item_id": i, "event_type": args.event_type, "timestamp": time.time(),
                       **({"price": args.price} if args.price else {})}
                      for u in args.user for i in args.item]
            response = client.record_events(events)
            print(render([{"user": e["user_id"], "item": e["item_id"], "event": e["event_type"],
                           "accepted": r.accepted, "error": r.error} for e, r in zip(events, response.results)]))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from shoprec.evaluation import evaluate_dataset, render_report, write_json

    extra = {}
    models = set(args.models.split(","))
    unknown = models - {"popularity", "cooccurrence", "two_tower", "ranked"}
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from popularity, cooccurrence, two_tower, ranked")
    if models & {"two_tower", "ranked"}:
        from retrieval.train import TrainSettings
        from shoprec.evaluate_models import RankedPipeline, TwoTowerRecommender, load_items

        settings = TrainSettings(epochs=args.epochs, seed=args.seed)
        items = load_items(Path(args.dataset))
    if "two_tower" in models:
        extra["two_tower"] = TwoTowerRecommender(items, settings, factory=args.factory, seed=args.seed)
    if "ranked" in models:
        # One two-tower, one candidate merge, both rankers: the pipeline rows share a fit.
        ranked = RankedPipeline(items, settings, factory=args.factory, epochs=args.ranking_epochs, seed=args.seed)
        extra["pipeline, retrieval order"] = ranked.recommender(None)
        extra["pipeline + dcn ranker"] = ranked.recommender("dcn")
        extra["pipeline + lstm ranker"] = ranked.recommender("lstm")
    results = evaluate_dataset(Path(args.dataset), args.target, extra)
    for name in [m for m in ("popularity", "cooccurrence") if m not in models]:
        results["models"].pop(name, None)
    if "two_tower" in extra:
        results["two_tower_training"] = {k: v for k, v in extra["two_tower"].facts.items()}
    if "ranked" in models:
        results["pipeline_training"] = ranked.facts
    print(render_report(results, published=True))
    out = Path(args.out) if args.out else _ws(args).root / "evaluation" / f"{Path(args.dataset).name}-{args.target}.json"
    write_json(results, out)
    print(f"every metric: {out}")


def cmd_churn(args: argparse.Namespace) -> None:
    from shoprec import churn

    ws = _ws(args)
    if args.action == "train":
        version, manifest = churn.train_churn(ws, horizon_days=args.horizon_days, seed=args.seed)
        m = manifest["metrics"]
        print(render([{"version": version, "horizon days": manifest["horizon_days"],
                       **{k: m[k] for k in ("auc", "baseline_auc_days_since_last_visit", "brier", "brier_base_rate", "base_rate") if k in m}}]))
        if "calibration" in manifest:
            print(render(manifest["calibration"]))
    else:
        out = Path(args.out) if args.out else ws.root / "churn" / "at_risk.csv"
        table = churn.at_risk_users(ws, out, threshold=args.threshold)
        print(render(table.head(10).to_dict("records")))
        print(f"{len(table)} users at risk >= {args.threshold}: {out}")


def cmd_simulate(args: argparse.Namespace) -> None:
    from shoprec.simulate import POLICIES, SimulationConfig, simulate

    policies = tuple(args.policies.split(",")) if args.policies else POLICIES
    cfg = SimulationConfig(days=args.days, k=args.k, seeds=tuple(range(args.seeds)), return_days=args.return_days,
                           max_customers=args.customers, policies=policies, nightly=args.nightly)
    ws = _ws(args)
    out = Path(args.out) if args.out else ws.root / "simulation"
    simulate(ws, cfg, out)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (plot: {out / 'daily_conversion.svg'}; every number: {out / 'simulation.json'})")


def cmd_demo(args: argparse.Namespace) -> None:
    from shoprec.demo import run_demo

    run_demo(_ws(args), args.preset, args.seed, _training_config(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoprec", description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default=None,
                   help="directory for data, features, Feast stores and models (default: $SHOPREC_HOME or ./var)")
    p.add_argument("--online-store", default=None,
                   help="Feast online store: 'sqlite' (default, in the workspace) or 'redis://HOST:PORT[/DB]' "
                        "(default: $SHOPREC_ONLINE_STORE or sqlite)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", default="default", choices=["tiny", "default", "large"],
                        help="synthetic shop size: tiny (tests, seconds), default (demo), large (benchmarks: "
                             "1M users, 100k items, ~30M events, streamed)")
        sp.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data and models)")

    def train_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--holdout-days", type=int, default=14,
                        help="last N days held out to report quality (0: train on everything)")
        sp.add_argument("--retrieval-epochs", type=int, default=10,
                        help="two-tower epochs at most (default 10; early stopping on validation ends sooner)")
        sp.add_argument("--ranking-epochs", type=int, default=10,
                        help="ranker epochs at most (default 10; early stopping on validation ends sooner)")
        sp.add_argument("--ranker", default="both", choices=["both", "best", "dcn", "lstm"],
                        help="rankers to train: both (default; the better on validation is served), "
                             "dcn (feature-crossing MLP) or lstm (GRU over recent behaviour)")
        sp.add_argument("--factory", default="Flat", help="FAISS index factory string: Flat, HNSW32, IVF64,Flat, ...")

    data_args(add("generate", cmd_generate, "generate the synthetic shop into the workspace"))
    sp = add("import", cmd_import, "import real data into the workspace's raw tables (replaces them)")
    sp.add_argument("format", choices=["amazon", "movielens", "events"],
                    help="amazon: S3-Rec sequence + item2attributes (+ interactions CSV); movielens: "
                         "user item rating timestamp; events: any CSV/parquet events file with --map")
    sp.add_argument("path", help="dataset directory (amazon) or file")
    sp.add_argument("--name", default=None, help="amazon: dataset name, e.g. Beauty (default: detected)")
    sp.add_argument("--map", action="append", default=[], metavar="CONTRACT=SOURCE",
                    help="events: column mapping, e.g. --map user_id=visitorid --map timestamp=ts (repeatable)")
    sp.add_argument("--event-type", action="append", default=[], metavar="SOURCE=CONTRACT",
                    help="events: event value mapping, e.g. --event-type transaction=purchase (repeatable)")
    sp = add("validate", cmd_validate, "validate raw tables; write clean tables and the quarantine")
    sp.add_argument("--no-cleaning", action="store_true",
                    help="keep bots and duplicate events (to measure what cleaning is worth)")
    add("features", cmd_features, "compute the feature tables and print their summary")
    add("materialize", cmd_materialize, "apply the Feast repo and materialize into the online store")
    sp = add("train", cmd_train, "train models: retrieval (+ index) and/or ranking")
    sp.add_argument("model", nargs="?", default="all", choices=["all", "retrieval", "ranking"])
    sp.add_argument("--seed", type=int, default=0)
    train_args(sp)
    sp = add("index", cmd_index, "rebuild the FAISS index: embed the current catalog with the live item tower, "
                                 "verify, publish atomically, prune old versions")
    sp.add_argument("action", nargs="?", default="rebuild", choices=["rebuild"])
    sp.add_argument("--factory", default="Flat", help="FAISS index factory string: Flat, HNSW32, IVF256,Flat, ...")
    sp.add_argument("--min-recall", type=float, default=0.9, help="reject the index below this recall@100 vs exact")
    sp.add_argument("--keep", type=int, default=5, help="index versions kept (the live one always is)")
    sp.add_argument("--nprobe", type=int, default=0,
                    help="IVF lists searched per query (default 0: the smallest that finds --target-recall "
                         "of the exact top 500 for a sample of real users)")
    sp.add_argument("--target-recall", type=float, default=0.95,
                    help="recall of the exact top 500 that --nprobe 0 aims for (default 0.95)")
    sp.add_argument("--seed", type=int, default=0)
    sp = add("serve", cmd_serve, "serve the live artifacts over gRPC in the foreground")
    # No argparse defaults: an omitted flag leaves the value to $SHOPREC_SERVE_*, the file, or the default.
    sp.add_argument("--config", default=None, metavar="FILE",
                    help="TOML settings file (documented example: serving/shoprec-serve.toml); flags > "
                         "SHOPREC_SERVE_* environment variables > this file > defaults")
    sp.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=None, help="TCP port (default 50051; 0: a free one, 1 process only)")
    sp.add_argument("--workers", type=int, default=None, help="request threads per process (default 0: on the event loop)")
    sp.add_argument("--processes", type=int, default=None,
                    help="server processes sharing the port with SO_REUSEPORT (default 1; one per core)")
    sp = add("tls-certs", cmd_tls_certs, "make a private CA, a server and a client certificate (openssl) for TLS "
                                          "on the gRPC port: a trial's, not production's")
    sp.add_argument("--out", type=Path, required=True, help="directory for the PEM files (never overwritten)")
    sp.add_argument("--host", action="append", default=[],
                    help="a DNS name or IP address clients dial (repeatable; default 127.0.0.1 and localhost)")
    sp.add_argument("--days", type=int, default=365, help="validity of the certificates")
    sp = add("query", cmd_query, "call a running server: recommend, similar, cart, event, insights or info")
    sp.add_argument("rpc", nargs="?", default="recommend",
                    choices=["recommend", "similar", "cart", "event", "insights", "info"],
                    help="recommend (default): Recommend per --user; similar: SimilarItems per --item; cart: "
                         "CartRecommendations of the --item list (optional --user); event: RecordEvents of "
                         "--event-type for every --user x --item; insights: GetUserInsights per --user; "
                         "info: GetInfo")
    sp.add_argument("--address", default="127.0.0.1:50051")
    sp.add_argument("--tls", action="store_true",
                    help="connect over TLS, trusting the public root CAs grpcio ships (or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)")
    sp.add_argument("--tls-ca", type=Path, default=None,
                    help="connect over TLS, trusting this PEM CA certificate (the one that signed the server's)")
    sp.add_argument("--tls-cert", type=Path, default=None,
                    help="a PEM client certificate, for a server that asks for one (tls_client_ca); with --tls-key")
    sp.add_argument("--tls-key", type=Path, default=None, help="the PEM private key of --tls-cert")
    sp.add_argument("--user", action="append", default=[], help="user id (repeatable)")
    sp.add_argument("--item", action="append", default=[], help="item id (repeatable): similar, cart, event")
    sp.add_argument("--k", type=int, default=10)
    sp.add_argument("--exclude", action="append", default=[], help="item id to exclude (repeatable)")
    sp.add_argument("--category", default="", help="only this category")
    sp.add_argument("--surface", default="", choices=["", "home", "product", "cart"])
    sp.add_argument("--cart", action="append", default=[], help="recommend: an item in the cart (repeatable)")
    sp.add_argument("--viewed", default="", help="recommend: the product page being viewed")
    sp.add_argument("--session", action="append", default=[],
                    help="recommend: an item viewed this session, not yet recorded (repeatable, oldest first)")
    sp.add_argument("--max-price", type=float, default=0.0, help="recommend: only items up to this price")
    sp.add_argument("--same-category", action="store_true", help="similar: only the item's own category")
    sp.add_argument("--event-type", default="view", choices=["view", "click", "add_to_cart", "purchase"])
    sp.add_argument("--price", type=float, default=0.0, help="event: the price paid (purchases; 0: not sent)")
    sp.add_argument("--info", action="store_true", help="print the live versions first")
    sp.add_argument("--timeout", type=float, default=5.0, help="deadline per call in seconds")
    sp = add("evaluate", cmd_evaluate, "offline evaluation by the leave-one-out protocol (full ranking)")
    sp.add_argument("--dataset", required=True,
                    help="an Amazon S3-Rec directory (e.g. ../shared/data/amazon_beauty), a workspace, or an events file")
    sp.add_argument("--target", default="test", choices=["test", "valid"],
                    help="tune on valid, report test (the protocol)")
    sp.add_argument("--models", default="popularity,cooccurrence,two_tower,ranked",
                    help="comma-separated: popularity, cooccurrence, two_tower (retrieval through FAISS), "
                         "ranked (the deployable pipeline: FAISS + co-occurrence + popular candidates, "
                         "retrieval order and each ranker)")
    sp.add_argument("--ranking-epochs", type=int, default=10, help="ranker epochs at most (early stopping)")
    sp.add_argument("--epochs", type=int, default=30, help="two-tower epochs at most (early stopping)")
    sp.add_argument("--factory", default="Flat", help="FAISS index the two-tower retrieves through")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=None, help="JSON with every metric (default: <workspace>/evaluation/...)")
    sp = add("churn", cmd_churn, "churn early warning: train the model, or list the users at risk")
    sp.add_argument("action", choices=["train", "at-risk"])
    sp.add_argument("--horizon-days", type=int, default=14, help="train: churn = no visit within N days (default 14)")
    sp.add_argument("--threshold", type=float, default=0.5, help="at-risk: list users with risk >= this")
    sp.add_argument("--out", default=None, help="at-risk: CSV path (default <workspace>/churn/at_risk.csv)")
    sp.add_argument("--seed", type=int, default=0)
    sp = add("simulate", cmd_simulate, "A/B/n shop simulation: policies shown to the synthetic shop's hidden customers")
    sp.add_argument("--days", type=int, default=14, help="simulated days (default 14)")
    sp.add_argument("--seeds", type=int, default=3, help="repetitions with seeds 0..N-1 for confidence intervals")
    sp.add_argument("--customers", type=int, default=2000, help="customers sampled (same for every policy)")
    sp.add_argument("--return-days", type=int, default=7, help="a return = another visit within N days")
    sp.add_argument("--k", type=int, default=10, help="items shown per visit")
    sp.add_argument("--policies", default="", help="comma-separated subset of: random, popularity, cooccurrence, "
                                                   "two_tower, pipeline_dcn, pipeline_lstm, oracle (default all)")
    sp.add_argument("--out", default=None, help="report directory (default <workspace>/simulation)")
    sp.add_argument("--nightly", action="store_true",
                    help="run the nightly batch jobs (features + materialization) between days for every "
                         "pipeline policy (slower)")
    sp = add("demo", cmd_demo, "the whole pipeline on the synthetic shop, then real gRPC queries")
    data_args(sp)
    train_args(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except Exception as e:  # known errors get one clear line; anything else a traceback
        from feature_repo.errors import ShoprecDataError  # includes ConfigError
        from serving.errors import ServingError

        if isinstance(e, (ShoprecDataError, ServingError)):
            print(f"shoprec {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        import grpc

        if isinstance(e, grpc.RpcError):  # a status from the server (`query`): in its own words
            print(f"shoprec {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
