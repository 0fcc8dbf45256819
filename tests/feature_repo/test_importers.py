"""Importers: each external format becomes contract tables that validate with nothing quarantined."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.data.importers import (
    SYNTHETIC_START,
    ImportedDataset,
    import_amazon,
    import_events_file,
    import_movielens,
    write,
)
from feature_repo.errors import ContractError
from feature_repo.workspace import Workspace

NOW = pd.Timestamp("2026-06-01", tz="UTC")
DAY = 86_400
D0 = 1_388_534_400  # 2014-01-01, a day boundary like the Amazon CSV's timestamps
BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon_beauty"


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _assert_clean(ds: ImportedDataset) -> None:
    report = ds.validate(now=NOW)
    assert report.quarantine.empty, report.quarantine.to_dict("records")
    for name in ("events", "items", "users"):
        df = getattr(ds, name)
        assert report.counts[name]["kept"] == len(df) > 0
        for col in [c for c in ("user_id", "item_id") if c in df.columns]:
            assert all(isinstance(v, str) for v in df[col]), (name, col)


def _per_user_strictly_increasing(events: pd.DataFrame) -> bool:
    return bool(events.groupby("user_id")["timestamp"].apply(lambda s: s.is_monotonic_increasing and s.is_unique).all())


# ---------------------------------------------------------------- Amazon (S3-Rec)
SEQUENCES = "1 3 1 2\n2 2 4\n3 1 2 3 4 5\n"
# attribute 5 is the most common (3 items); item 4's attributes tie, so the smaller id (9, not 10) wins
ATTRIBUTES = json.dumps({"1": [5, 7], "2": [7], "3": [5, 30], "4": [10, 9], "6": [5]})
CSV_HEADER = "user_id,item_id,timestamp,position,reviewer_id,asin\n"
# rows deliberately not in file order: only (user, position) may decide the order
CSV_ROWS = [(1, 2, D0, 2), (1, 3, D0, 0), (1, 1, D0, 1), (2, 2, D0 + DAY, 0), (2, 4, D0 + 2 * DAY, 1),
            (3, 1, D0, 0), (3, 2, D0, 1), (3, 3, D0 + 3 * DAY, 2), (3, 4, D0 + 3 * DAY, 3), (3, 5, D0 + 4 * DAY, 4)]


def _csv(rows: list[tuple[int, int, int, int]]) -> str:
    return CSV_HEADER + "".join(f"{u},{i},{t},{p},R{u},ASIN{i}\n" for u, i, t, p in rows)


def _amazon(tmp_path: Path, rows: list[tuple[int, int, int, int]] | None = CSV_ROWS, name: str = "Toy") -> Path:
    files = {f"{name}.txt": SEQUENCES, f"{name}_item2attributes.json": ATTRIBUTES}
    if rows is not None:
        files[f"{name}_interactions.csv"] = _csv(rows)
    return _write(tmp_path / "amazon", files)


def test_amazon_sequence_order_beats_equal_timestamps(tmp_path):
    ds = import_amazon(_amazon(tmp_path))
    ev = ds.events
    assert list(ev.columns) == ["user_id", "item_id", "event_type", "timestamp", "position"]
    user1 = ev[ev["user_id"] == "1"]
    assert list(user1["item_id"]) == ["3", "1", "2"] and list(user1["position"]) == [0, 1, 2]
    # all three share a CSV day; the file order decides, and they stay on that day
    assert list(user1["timestamp"]) == [pd.Timestamp(D0 + k, unit="s", tz="UTC") for k in range(3)]
    assert _per_user_strictly_increasing(ev)
    assert (ev["timestamp"].dt.floor("D") == ev["timestamp"] - pd.to_timedelta(ev["position"], unit="s")).all()
    last_in_file = ev.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    latest = ev.loc[ev.groupby("user_id")["timestamp"].idxmax()].set_index("user_id")["item_id"]
    assert last_in_file.sort_index().equals(latest.sort_index())
    assert set(ev["event_type"]) == {"purchase"}
    assert ds.source["disagreements"]["matched"] == 10 and ds.source["disagreements"]["item_differs"] == 0
    _assert_clean(ds)


def test_amazon_items_and_users(tmp_path):
    ds = import_amazon(_amazon(tmp_path))
    items = ds.items.set_index("item_id")
    assert list(items.index) == ["1", "2", "3", "4", "5", "6"]  # 6 only has attributes, 5 only events
    assert items["category"].to_dict() == {"1": "attr_5", "2": "attr_7", "3": "attr_5", "4": "attr_9",
                                           "5": "unknown", "6": "attr_5"}
    assert items.loc["4", "attributes"] == ["10", "9"] and items.loc["5", "attributes"] == []
    assert (items["brand"] == "unknown").all() and (items["price"] == 0.0).all()
    assert items.loc["5", "created_at"] == pd.Timestamp(D0 + 4 * DAY + 4, unit="s", tz="UTC")
    assert items.loc["6", "created_at"] == ds.events["timestamp"].min()  # never bought: dataset start
    assert items.loc["3", "asin"] == "ASIN3"
    users = ds.users.set_index("user_id")
    assert users.loc["2", "created_at"] == pd.Timestamp(D0 + DAY, unit="s", tz="UTC")
    assert users.loc["3", "reviewer_id"] == "R3"
    assert ds.source["items_without_events"] == 1 and ds.source["items_without_attributes"] == 1


def test_amazon_csv_disagreements_trust_the_sequence(tmp_path):
    rows = [r for r in CSV_ROWS if (r[0], r[3]) != (3, 2)]  # user 3's third row is missing
    rows = [(2, 9, D0 + 50 * DAY, 1) if (u, p) == (2, 1) else (u, i, t, p) for u, i, t, p in rows]  # other item
    rows = [(3, 5, D0 - 9 * DAY, 4) if (u, p) == (3, 4) else (u, i, t, p) for u, i, t, p in rows]  # goes back
    rows.append((4, 1, D0, 0))  # a user the sequence file does not have
    ds = import_amazon(_amazon(tmp_path, rows))
    report = ds.source["disagreements"]
    assert {k: report[k] for k in ("missing_in_csv", "item_differs", "time_goes_back", "only_in_csv")} == \
        {"missing_in_csv": 1, "item_differs": 1, "time_goes_back": 1, "only_in_csv": 1}
    assert report["matched"] == 8
    ev = ds.events.set_index(["user_id", "position"])
    assert ev.loc[("2", 1), "item_id"] == "4"  # the sequence's item, not the CSV's
    assert ev.loc[("2", 1), "timestamp"] == pd.Timestamp(D0 + DAY + 1, unit="s", tz="UTC")  # previous day
    assert ev.loc[("3", 2), "timestamp"] == pd.Timestamp(D0 + 2, unit="s", tz="UTC")
    assert "4" not in set(ds.users["user_id"])
    assert _per_user_strictly_increasing(ds.events)
    _assert_clean(ds)


def test_amazon_without_csv_synthesizes_times_from_positions(tmp_path):
    ds = import_amazon(_amazon(tmp_path, rows=None))
    expected = SYNTHETIC_START + pd.to_timedelta(ds.events["position"], unit="D")
    assert (ds.events["timestamp"] == expected).all()
    assert "interactions" not in ds.source["files"] and ds.source["disagreements"] == {}
    _assert_clean(ds)


def test_amazon_missing_or_ambiguous_files_name_what_is_expected(tmp_path):
    with pytest.raises(ContractError, match=r"<Name>\.txt.*no \.txt file"):
        import_amazon(_write(tmp_path / "empty", {}))
    with pytest.raises(ContractError, match=r"Lone_item2attributes\.json"):
        import_amazon(_write(tmp_path / "lone", {"Lone.txt": SEQUENCES}))
    both = _write(tmp_path / "both", {f"{n}{s}": t for n in ("A", "B")
                                      for s, t in ((".txt", SEQUENCES), ("_item2attributes.json", ATTRIBUTES))})
    with pytest.raises(ContractError, match=r"A\.txt.*B\.txt"):
        import_amazon(both)
    assert import_amazon(both, name="B").source["name"] == "B"
    # a stray README.txt does not make a complete dataset ambiguous
    _write(tmp_path / "amazon", {"README.txt": "notes"})
    assert import_amazon(_amazon(tmp_path)).source["name"] == "Toy"
    bad_csv = _write(tmp_path / "badcsv", {"X.txt": SEQUENCES, "X_item2attributes.json": ATTRIBUTES,
                                            "X_interactions.csv": "user_id,item_id,time\n1,3,0\n"})
    with pytest.raises(ContractError, match=r"X_interactions\.csv.*'timestamp', 'position'"):
        import_amazon(bad_csv)


# ---------------------------------------------------------------- MovieLens
def _genre_flags(*on: int) -> str:
    return "|".join("1" if g in on else "0" for g in range(19))


def test_movielens_100k(tmp_path):
    d = _write(tmp_path / "ml-100k", {
        "u.data": "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n2\t20\t2\t881250952\n",
        "u.item": (f"10|Toy Story (1995)|01-Jan-1995||http://x|{_genre_flags(3, 4, 5)}\n"
                   f"20|GoldenEye (1995)|01-Jan-1995||http://y|{_genre_flags(0)}\n"
                   f"40|Never Rated (1996)|01-Jan-1996||http://z|{_genre_flags(8)}\n")})
    ds = import_movielens(d / "u.data")
    assert ds.source["format"] == "movielens-100k"
    assert list(ds.events["event_type"]) == ["purchase", "view", "purchase", "view"]  # rating >= 4
    assert list(ds.events["rating"]) == [5.0, 3.0, 4.0, 2.0]
    items = ds.items.set_index("item_id")
    assert items.loc["10", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items["category"].to_dict() == {"10": "Animation", "20": "unknown", "40": "Drama"}
    assert items.loc["40", "created_at"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert list(ds.users["created_at"]) == [pd.Timestamp(t, unit="s", tz="UTC") for t in (881250949, 881250951)]
    _assert_clean(ds)


def test_movielens_dat_and_csv_are_detected(tmp_path):
    dat = _write(tmp_path / "ml-1m", {"ratings.dat": "1::10::4::978300760\n2::10::3::978300761\n",
                                      "movies.dat": "10::Heat (1995)::Action|Crime|Thriller\n"})
    ds = import_movielens(dat)  # the directory is enough
    assert ds.source["format"] == "movielens-dat" and list(ds.events["event_type"]) == ["purchase", "view"]
    assert ds.items.set_index("item_id").loc["10", "category"] == "Action"
    _assert_clean(ds)
    csv = _write(tmp_path / "ml-latest", {
        "ratings.csv": "userId,movieId,rating,timestamp\n1,10,3.5,1500000000\n1,11,4.0,1500000001\n",
        "movies.csv": 'movieId,title,genres\n10,"Movie, The (2000)",Drama|War\n11,Odd (2001),(no genres listed)\n'})
    ds = import_movielens(csv / "ratings.csv")
    assert list(ds.events["event_type"]) == ["view", "purchase"]
    items = ds.items.set_index("item_id")
    assert items.loc["10", "title"] == "Movie, The (2000)" and items["category"].tolist() == ["Drama", "unknown"]
    _assert_clean(ds)


def test_movielens_without_movies_file_and_bad_input(tmp_path):
    d = _write(tmp_path / "bare", {"u.data": "1\t10\t5\t881250949\n"})
    ds = import_movielens(d / "u.data")
    assert ds.items["category"].tolist() == ["unknown"] and "movies" not in ds.source["files"]
    _assert_clean(ds)
    with pytest.raises(ContractError, match=r"ratings\.csv"):
        import_movielens(tmp_path / "nowhere")
    _write(tmp_path / "odd", {"ratings.csv": "a;b;c\n"})
    with pytest.raises(ContractError, match="unknown ratings format"):
        import_movielens(tmp_path / "odd" / "ratings.csv")


# ---------------------------------------------------------------- generic events file
MAPPING = {"user_id": "visitorid", "item_id": "itemid", "event_type": "event", "timestamp": "ts"}
TYPES = {"transaction": "purchase", "addtocart": "add_to_cart"}
MS = 1_433_221_332_117  # RetailRocket-style epoch milliseconds (2015-06-02)


def _retail(tmp_path: Path) -> Path:
    rows = ["ts,visitorid,event,itemid,transactionid,cat,amount",
            f"{MS},257597,view,355908,,c1,", f"{MS + 1000},257597,addtocart,355908,,c2,",
            f"{MS + 2000},257597,transaction,355908,4000,c2,12.5", f"{MS + 3000},992329,view,248676,,,",
            f"{MS + 4000},992329,transaction,248676,4001,,-3"]
    return _write(tmp_path / "retail", {"events.csv": "\n".join(rows) + "\n"}) / "events.csv"


def test_events_file_with_mapping(tmp_path):
    ds = import_events_file(_retail(tmp_path), {**MAPPING, "category": "cat", "price": "amount"}, TYPES)
    ev = ds.events
    assert list(ev["event_type"]) == ["view", "add_to_cart", "purchase", "view", "purchase"]
    assert ev["timestamp"].iloc[0] == pd.Timestamp(MS, unit="ms", tz="UTC")
    assert ev["transactionid"].iloc[2] == "4000"  # unmapped columns are kept
    assert "cat" not in ev.columns and "category" not in ev.columns  # item columns move to items
    items = ds.items.set_index("item_id")
    assert items["category"].to_dict() == {"248676": "unknown", "355908": "c2"}  # the latest non-blank
    assert items["price"].to_dict() == {"248676": 0.0, "355908": 12.5}  # negative price is not an item price
    assert items.loc["355908", "created_at"] == ev["timestamp"].iloc[0]
    assert ds.users.set_index("user_id")["created_at"].to_dict()["992329"] == ev["timestamp"].iloc[3]
    report = ds.validate(now=NOW)  # the negative event price is the one genuinely bad row
    assert report.quarantine["reason"].tolist() == ["bad price: negative"]
    ds.events = ev.drop(columns="price")
    _assert_clean(ds)


def test_events_file_unmapped_types_are_kept_for_validation_to_name(tmp_path):
    ds = import_events_file(_retail(tmp_path), MAPPING, {"transaction": "purchase"})
    assert ds.source["disagreements"]["unknown_event_types"] == {"addtocart": 1}
    q = ds.validate(now=NOW).quarantine
    assert len(q) == 1 and "'addtocart'" in q["reason"].iloc[0]


def test_events_file_parquet_ids_become_strings(tmp_path):
    path = tmp_path / "ev.parquet"
    pd.DataFrame({"u": [1.0, 2.0, np.nan], "i": [7, 8, 9], "type": ["view", "purchase", "view"],
                  "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"])}).to_parquet(path)
    ds = import_events_file(path, {"user_id": "u", "item_id": "i", "event_type": "type", "timestamp": "ts"})
    assert ds.events["user_id"].tolist() == ["1", "2", ""] and ds.events["item_id"].tolist() == ["7", "8", "9"]
    assert ds.users["user_id"].tolist() == ["1", "2"]  # a blank id is no user
    q = ds.validate(now=NOW).quarantine
    assert q["table"].tolist() == ["events"] and q["row"].tolist() == [2]
    assert q["reason"].iloc[0].startswith("missing user_id")


def test_events_file_bad_mapping_names_both_columns(tmp_path):
    path = _retail(tmp_path)
    with pytest.raises(ContractError, match=r"user_id.*'visitor_id'.*events\.csv"):
        import_events_file(path, {**MAPPING, "user_id": "visitor_id"})
    with pytest.raises(ContractError, match=r"\['event_type'\]"):
        import_events_file(path, {k: v for k, v in MAPPING.items() if k != "event_type"})
    with pytest.raises(ContractError, match=r"nope\.csv"):
        import_events_file(tmp_path / "nope.csv", MAPPING)


# ---------------------------------------------------------------- write
def test_write_replaces_the_raw_data_and_removes_truth(tmp_path):
    from shoprec import pipeline

    ws = Workspace.at(tmp_path / "ws")
    np.savez_compressed(ws.raw_dir / "truth.npz", x=np.zeros(1))
    (ws.raw_dir / "events.csv").write_text("stale\n")
    (ws.raw_dir / "source.json").write_text(json.dumps({"generator": "synthetic"}))
    ds = import_amazon(_amazon(tmp_path))
    assert write(ds, ws) == {"events": 10, "items": 6, "users": 3}
    assert not (ws.raw_dir / "truth.npz").exists() and not (ws.raw_dir / "events.csv").exists()
    source = json.loads((ws.raw_dir / "source.json").read_text())
    assert source["format"] == "amazon-s3rec" and "generator" not in source
    assert source["counts"] == {"events": 10, "items": 6, "users": 3}
    back = pd.read_parquet(ws.raw_dir / "events.parquet")
    pd.testing.assert_frame_equal(back, ds.events)
    report = pipeline.validate(ws, now=NOW)
    assert report.quarantine.empty and list(pd.read_parquet(ws.clean_dir / "items.parquet")["attributes"][3]) == ["10", "9"]


# ---------------------------------------------------------------- the real Beauty files
@pytest.mark.realdata
def test_real_amazon_beauty():
    if not BEAUTY.is_dir():
        pytest.skip(f"real data absent: {BEAUTY} does not exist (see ../shared/data/README.md)")
    start = time.perf_counter()
    ds = import_amazon(BEAUTY)
    seconds = time.perf_counter() - start
    print(f"imported Amazon Beauty in {seconds:.2f} s: {ds.source['counts']}")
    assert ds.source["counts"] == {"events": 198_502, "items": 12_101, "users": 22_363}
    assert ds.source["files"]["sequences"]["md5"] == "cb03635343187f36526ed4ba48102b53"
    assert ds.source["disagreements"]["matched"] == 198_502
    ev = ds.events
    last_in_file = ev.loc[ev.groupby("user_id")["position"].idxmax(), ["user_id", "item_id"]]
    latest = ev.loc[ev.groupby("user_id")["timestamp"].idxmax(), ["user_id", "item_id"]]
    assert last_in_file.sort_values("user_id").to_numpy().tolist() == latest.sort_values("user_id").to_numpy().tolist()
    assert _per_user_strictly_increasing(ev)
    report = ds.validate()
    assert report.quarantine.empty, report.summary()
