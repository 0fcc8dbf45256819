"""Importers: public datasets in their own formats, turned into shoprec's three contract tables.

Each importer returns an ``ImportedDataset``: events, items, users (string ids, UTC timestamps)
and a ``source`` record of files, counts and disagreements; ``write`` makes it a workspace's raw
data for ``shoprec validate``. What a format lacks is filled by neutral conventions (no invented
signal), recorded in ``source["conventions"]``:

- category/brand "unknown" and price 0.0 when the format has none (price 0 is valid and puts
  every item in the same price bucket, so ranking learns nothing false from it);
- an item's ``created_at`` is its first event, or the dataset's first event for items nobody
  touched (the catalog date is unknown; this keeps "new item" features from lying);
- a user's ``created_at`` is their first event.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.data.contract import EVENT_TYPES, write_table
from feature_repo.data.validation import ValidationReport, validate
from feature_repo.errors import ContractError
from feature_repo.workspace import Workspace

TABLES = ("events", "items", "users")
UNKNOWN = "unknown"
# Amazon sequences without the interactions CSV get one day per position from this date: the
# order is all we know, and a day apart gives every event its own daily feature snapshot.
SYNTHETIC_START = pd.Timestamp("2000-01-01", tz="UTC")
MOVIELENS_PURCHASE_RATING = 4.0  # the usual "liked" threshold for implicit feedback on MovieLens
MOVIELENS_GENRES = tuple("unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|"
                         "Fantasy|Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western".split("|"))
ITEM_LEVEL = ("category", "brand", "title")  # mapped columns of a generic file that describe items


@dataclass
class ImportedDataset:
    """The three contract tables of one import and a JSON-able record of where they came from."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    source: dict[str, Any] = field(default_factory=dict)

    def validate(self, now: pd.Timestamp | None = None) -> ValidationReport:
        """Run the contract's row validation on these tables (nothing is written)."""
        return validate(self.events, self.items, self.users, now=now)


def write(ds: ImportedDataset, ws: Workspace) -> dict[str, int]:
    """Make the import the workspace's raw data: three parquet tables and ``source.json``.

    ``truth.npz`` belongs to the synthetic shop and would describe other data, so it goes first:
    an interrupted write then leaves no truth that evaluation could mistake for this data's.
    """
    ws.raw_dir.mkdir(parents=True, exist_ok=True)
    (ws.raw_dir / "truth.npz").unlink(missing_ok=True)
    for name in TABLES:
        write_table(getattr(ds, name), ws.raw_dir / f"{name}.parquet")
        # pipeline reads parquet before CSV; a stale CSV is removed so nobody reads it by hand.
        (ws.raw_dir / f"{name}.csv").unlink(missing_ok=True)
    tmp = ws.raw_dir / "source.json.tmp"
    tmp.write_text(json.dumps(ds.source, indent=2, default=str))
    tmp.replace(ws.raw_dir / "source.json")
    return {name: len(getattr(ds, name)) for name in TABLES}


# ---------------------------------------------------------------- shared helpers
def _file_info(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:  # md5 as in PROVENANCE.md files, so an import can be traced to them
        md5 = hashlib.file_digest(f, "md5").hexdigest()
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "md5": md5}


def _id_order(ids: Any) -> list[str]:
    """Numeric ids in numeric order ("2" before "10"), so tables read like the source files."""
    # A blank id is no entity: its events are quarantined; a blank user/item row would repeat that.
    return sorted(set(ids) - {""}, key=lambda s: (len(s), s))


def _as_id(s: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (ints with NaN, e.g. from parquet) lose their ".0"."""
    blank = s.isna()
    if pd.api.types.is_float_dtype(s) and (s.dropna() % 1 == 0).all():
        s = s.astype("Int64")
    return s.astype(str).str.strip().mask(blank, "")  # blank stays blank: validation flags it


def _parse_times(s: pd.Series) -> pd.Series:
    """UTC datetimes from datetimes, ISO strings or unix epochs; NaT where unparseable.

    Epoch values above 1e11 are milliseconds (as in RetailRocket): in seconds they would lie
    past the year 5000, and in milliseconds every date after 1973 is above it.
    """
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    num = pd.to_numeric(s, errors="coerce")
    unit = "ms" if num.notna().any() and num.abs().median() > 1e11 else "s"
    out = pd.to_datetime(num, unit=unit, utc=True, errors="coerce")
    if num.isna().any():
        out = out.fillna(pd.to_datetime(s.where(num.isna()), utc=True, errors="coerce", format="mixed"))
    return out


def _users_from(events: pd.DataFrame) -> pd.DataFrame:
    first = events.groupby("user_id", sort=False)["timestamp"].min()
    return pd.DataFrame({"user_id": _id_order(first.index)}).assign(
        created_at=lambda d: d["user_id"].map(first))


def _items_frame(item_ids: list[str], events: pd.DataFrame) -> pd.DataFrame:
    """Items with the neutral defaults; created_at = first event, else the dataset's start."""
    first = events.groupby("item_id", sort=False)["timestamp"].min()
    return pd.DataFrame({"item_id": item_ids, "category": UNKNOWN, "brand": UNKNOWN, "price": 0.0,
                         "created_at": pd.Series(item_ids).map(first).fillna(events["timestamp"].min())})


def _dataset(fmt: str, files: dict[str, Path], events: pd.DataFrame, items: pd.DataFrame,
             users: pd.DataFrame, **extra: Any) -> ImportedDataset:
    source = {"format": fmt, "files": {role: _file_info(p) for role, p in files.items()},
              "counts": {"events": len(events), "items": len(items), "users": len(users)},
              "imported_at": pd.Timestamp.now(tz="UTC").isoformat(), **extra}
    return ImportedDataset(events.reset_index(drop=True), items.reset_index(drop=True),
                           users.reset_index(drop=True), source)


# ---------------------------------------------------------------- Amazon (S3-Rec format)
def _amazon_files(directory: Path, name: str | None) -> tuple[str, Path, Path, Path | None]:
    expected = "<Name>.txt, <Name>_item2attributes.json and optionally <Name>_interactions.csv"
    if not directory.is_dir():
        raise ContractError(f"{directory} is not a directory; expected one holding {expected}.")
    if name is None:
        txts = sorted(directory.glob("*.txt"))
        # A stray README.txt must not make a complete dataset ambiguous: prefer paired files.
        paired = [p for p in txts if (directory / f"{p.stem}_item2attributes.json").exists()]
        found = paired if len(paired) == 1 else txts
        if len(found) != 1:
            raise ContractError(
                f"cannot tell the dataset name in {directory}: expected exactly one sequence file "
                f"with {expected}, found {[p.name for p in txts] or 'no .txt file'}; "
                f"pass name='<Name>' to choose.")
        name = found[0].stem
    seq, attrs = directory / f"{name}.txt", directory / f"{name}_item2attributes.json"
    for p in (seq, attrs):
        if not p.exists():
            raise ContractError(f"{p} does not exist; an Amazon import of {name!r} needs {expected} "
                                f"in {directory}.")
    csv = directory / f"{name}_interactions.csv"
    return name, seq, attrs, csv if csv.exists() else None


def _read_sequences(path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    seen: dict[str, int] = {}  # user → entries so far; a repeated user line continues the sequence
    stats: Counter[str] = Counter()
    with path.open(encoding="utf-8") as f:
        for line in f:
            tokens = line.split()
            if len(tokens) < 2:
                stats["lines_without_items"] += bool(tokens)
                continue
            user, seq = tokens[0], tokens[1:]
            start = seen.get(user, 0)
            stats["repeated_user_lines"] += start > 0
            seen[user] = start + len(seq)
            users += [user] * len(seq)
            items += seq
            positions += range(start, start + len(seq))
    events = pd.DataFrame({"user_id": users, "item_id": items, "event_type": "purchase",
                           "position": np.asarray(positions, dtype=np.int64)})
    return events, {k: int(v) for k, v in stats.items() if v}


def _csv_times(events: pd.DataFrame, path: Path) -> tuple[pd.Series, dict[str, int], pd.DataFrame]:
    """Per-event unix seconds from the CSV, trusting the sequence wherever the two disagree.

    A CSV row counts only if its (user, position) holds the same item in the sequence; times that
    are unknown (no row, other item) take the previous entry's time, and times that go back are
    raised to the running maximum, so the base time never decreases along a sequence.
    """
    csv = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("user_id", "item_id", "timestamp", "position") if c not in csv.columns]
    if missing:
        raise ContractError(f"{path} lacks column(s) {missing}; expected user_id,item_id,timestamp,position "
                            f"(unix seconds, position = index in the sequence file), got {list(csv.columns)}.")
    csv[["position", "timestamp"]] = csv[["position", "timestamp"]].apply(pd.to_numeric, errors="coerce")
    dup = csv.duplicated(["user_id", "position"])
    csv = csv[~dup]
    m = events[["user_id", "item_id", "position"]].merge(
        csv.rename(columns={"item_id": "csv_item"}), on=["user_id", "position"], how="left",
        validate="one_to_one")
    agree = (m["csv_item"] == m["item_id"]) & m["timestamp"].notna()
    known = m["timestamp"].where(agree)
    running = known.groupby(m["user_id"]).cummax()
    base = running.groupby(m["user_id"]).ffill().groupby(m["user_id"]).bfill()
    in_csv = m["csv_item"].notna()
    report = {"csv_rows": int(len(csv) + dup.sum()), "matched": int(agree.sum()), "duplicate_rows": int(dup.sum()),
              "missing_in_csv": int((~in_csv).sum()), "only_in_csv": int(len(csv) - in_csv.sum()),
              "item_differs": int((in_csv & (m["csv_item"] != m["item_id"])).sum()),
              "bad_timestamp": int((in_csv & m["timestamp"].isna()).sum()),
              "time_goes_back": int((known < running).sum()),
              "users_without_csv_time": int(m.loc[base.isna(), "user_id"].nunique())}
    base = base.fillna(known.min() if known.notna().any() else SYNTHETIC_START.timestamp())
    return base, report, m[agree]


def import_amazon(directory: Path, name: str | None = None) -> ImportedDataset:
    """Amazon reviews in the S3-Rec format: sequences, item attributes and (optionally) times.

    The sequence file's order is authoritative (the benchmark's leave-one-out uses it, and 43% of
    Beauty users share a day on their last two items), so every event's timestamp is its CSV
    time + ``position`` seconds: strictly increasing per user in file order, still on the same
    day (the CSV has day granularity). Without the CSV, entry ``k`` is at SYNTHETIC_START + k days.
    Every review is a ``purchase``; ``position`` (0-based, file order) is kept on events.
    Items: category ``attr_<a>`` with ``a`` the item's attribute that is most common in the
    catalog (the broadest sub-category, as S3-Rec dropped the top one; ties: smallest id), else
    "unknown"; the full list is kept in ``attributes``; brand "unknown", price 0.0.
    """
    name, seq_path, attr_path, csv_path = _amazon_files(Path(directory), name)
    events, seq_stats = _read_sequences(seq_path)
    files = {"sequences": seq_path, "attributes": attr_path}
    pos = events["position"].to_numpy()
    if csv_path is None:
        seconds, csv_report, matched = SYNTHETIC_START.timestamp() + pos * 86_400.0, None, None
    else:
        files["interactions"] = csv_path
        base, csv_report, matched = _csv_times(events, csv_path)
        seconds = base.to_numpy(dtype="float64") + pos
    events["timestamp"] = pd.to_datetime(seconds, unit="s", utc=True)
    events = events[["user_id", "item_id", "event_type", "timestamp", "position"]]

    try:
        raw_attrs = json.loads(attr_path.read_text(encoding="utf-8"))
        attrs = {str(k): [str(a) for a in v] for k, v in raw_attrs.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise ContractError(f"{attr_path} is not a JSON object {{item_id: [attr_id, ...]}}: {e}") from e
    freq = Counter(a for v in attrs.values() for a in v)
    items = _items_frame(_id_order(set(events["item_id"]) | set(attrs)), events)
    lists = items["item_id"].map(lambda i: attrs.get(i, []))
    items["category"] = lists.map(
        lambda v: "attr_" + min(v, key=lambda a: (-freq[a], len(a), a)) if v else UNKNOWN)
    items["attributes"] = lists
    users = _users_from(events)
    if matched is not None:  # ASINs and reviewer ids let later joins reach Amazon's metadata
        for table, key, col in ((items, "item_id", "asin"), (users, "user_id", "reviewer_id")):
            if col in matched.columns:
                table[col] = table[key].map(matched.drop_duplicates(key).set_index(key)[col]).fillna("")
    return _dataset(
        "amazon-s3rec", files, events, items, users, name=name,
        timestamps="csv day + position seconds" if csv_path else "synthetic: start + position days",
        disagreements=csv_report or {}, sequence_file=seq_stats,
        items_without_events=int((~items["item_id"].isin(events["item_id"])).sum()),
        items_without_attributes=int((lists.map(len) == 0).sum()),
        conventions={"event_type": "purchase (reviews)", "category": "attr_<most common attribute>",
                     "brand": UNKNOWN, "price": 0.0, "created_at": "first event, else dataset start"})


# ---------------------------------------------------------------- MovieLens
def _read_delimited(path: Path, sep: str, names: list[str], encoding: str = "latin-1") -> pd.DataFrame:
    text = path.read_text(encoding=encoding)
    if sep == "::":  # the C parser needs a one-character separator, and titles contain no tabs
        text, sep = text.replace("::", "\t"), "\t"
    df = pd.read_csv(StringIO(text), sep=sep, header=None, dtype=str, quoting=3, keep_default_na=False)
    return df.iloc[:, :len(names)].set_axis(names[:df.shape[1]], axis=1)


def _read_movies(fmt: str, directory: Path) -> tuple[Path | None, pd.DataFrame | None]:
    """item_id, title and the list of genres from the movies file next to the ratings."""
    path = directory / {"movielens-100k": "u.item", "movielens-dat": "movies.dat"}.get(fmt, "movies.csv")
    if not path.exists():
        return None, None
    if fmt == "movielens-100k":  # 19 genre flag columns, named by u.genre
        genre_path = directory / "u.genre"
        genres = (_read_delimited(genre_path, "|", ["name", "id"])["name"].tolist()
                  if genre_path.exists() else list(MOVIELENS_GENRES))
        raw = _read_delimited(path, "|", ["item_id", "title", "r", "v", "url", *genres])
        flags = raw[genres].to_numpy() == "1"
        return path, raw[["item_id", "title"]].assign(genres=[list(np.array(genres)[f]) for f in flags])
    raw = (_read_delimited(path, "::", ["item_id", "title", "g"]) if fmt == "movielens-dat" else
           pd.read_csv(path, dtype=str, keep_default_na=False).set_axis(["item_id", "title", "g"], axis=1))
    return path, raw[["item_id", "title"]].assign(
        genres=raw["g"].map(lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"]))


def import_movielens(path: Path) -> ImportedDataset:
    """MovieLens ratings (ml-100k ``u.data``, ml-1m/10m ``ratings.dat``, ml-latest ``ratings.csv``).

    ``path`` is the ratings file or its directory; the format is detected from the first line.
    A rating >= 4 becomes a ``purchase`` (the user liked what they "bought"), anything lower a
    ``view`` (seen, not liked); the rating is kept as a column. The movies file next to it
    (``u.item``, ``movies.dat``, ``movies.csv``), if present, gives ``title`` and ``genres``; the
    first genre is the category ("unknown" without one).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("ratings.csv", "ratings.dat", "u.data") if (path / n).exists()]
        path = found[0] if found else path / "ratings.csv"
    if not path.is_file():
        raise ContractError(f"{path} does not exist; pass a MovieLens u.data, ratings.dat or ratings.csv "
                            "(or the directory holding one).")
    with path.open(encoding="latin-1") as f:
        first = f.readline()
    cols = ["user_id", "item_id", "rating", "timestamp"]
    if "::" in first or "\t" in first:
        fmt = "movielens-dat" if "::" in first else "movielens-100k"
        ratings = _read_delimited(path, "::" if "::" in first else "\t", cols)
    elif first.strip().split(",")[:4] == ["userId", "movieId", "rating", "timestamp"]:
        fmt = "movielens-csv"
        ratings = pd.read_csv(path, dtype=str, keep_default_na=False).rename(
            columns={"userId": "user_id", "movieId": "item_id"})[cols]
    else:
        raise ContractError(f"{path}: unknown ratings format (first line {first.strip()!r}); expected "
                            "'user<TAB>item<TAB>rating<TAB>ts', 'user::item::rating::ts' or a CSV with "
                            "header userId,movieId,rating,timestamp.")
    rating = pd.to_numeric(ratings["rating"], errors="coerce")
    events = pd.DataFrame({
        "user_id": ratings["user_id"].str.strip(), "item_id": ratings["item_id"].str.strip(),
        # an unreadable rating gets no type, so validation quarantines the row instead of guessing
        "event_type": np.where(rating.isna(), "", np.where(rating >= MOVIELENS_PURCHASE_RATING, "purchase", "view")),
        "timestamp": _parse_times(ratings["timestamp"]), "rating": rating})
    movies_path, movies = _read_movies(fmt, path.parent)
    movie_ids = set(movies["item_id"]) if movies is not None else set()
    items = _items_frame(_id_order(set(events["item_id"]) | movie_ids), events)
    if movies is not None:
        m = movies.drop_duplicates("item_id").set_index("item_id")
        items["title"] = items["item_id"].map(m["title"]).fillna("")
        items["genres"] = items["item_id"].map(m["genres"]).map(lambda g: g if isinstance(g, list) else [])
        items["category"] = items["genres"].map(lambda g: g[0] if g else UNKNOWN)
    files = {"ratings": path, **({"movies": movies_path} if movies_path else {})}
    return _dataset(fmt, files, events, items, _users_from(events),
                    event_types={k: int(v) for k, v in events["event_type"].value_counts().items()},
                    conventions={"event_type": f"purchase if rating >= {MOVIELENS_PURCHASE_RATING}, else view",
                                 "category": "first genre, else unknown", "brand": UNKNOWN, "price": 0.0,
                                 "created_at": "first rating, else dataset start"})


# ---------------------------------------------------------------- generic events file
def import_events_file(path: Path, mapping: dict[str, str],
                       event_type_map: dict[str, str] | None = None) -> ImportedDataset:
    """A CSV or parquet event log with its own column names (``mapping``: contract → source).

    ``mapping`` must name user_id, item_id, event_type and timestamp; it may also name the
    optional event columns (price, quantity, session_id) and item columns carried on events
    (category, brand, title; the item's last non-blank value wins). Source columns not mapped are
    kept. ``event_type_map`` renames event values (e.g. {"transaction": "purchase"}); values it
    does not cover are kept as they are, so validation quarantines unknown ones with their name.
    Items and users are derived from the events: price is the median event price when events
    have one, else 0.0; category/brand "unknown" unless mapped; created_at = first event.
    """
    path = Path(path)
    if not path.exists():
        raise ContractError(f"{path} does not exist; pass a CSV or parquet events file.")
    if path.suffix not in (".csv", ".parquet"):
        raise ContractError(f"{path}: unknown file type {path.suffix!r}; expected .csv or .parquet.")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = [k for k in ("user_id", "item_id", "event_type", "timestamp") if k not in mapping]
    if needed:
        raise ContractError(f"mapping {mapping} does not name {needed}; map each contract column to the "
                            f"column of {path.name} that holds it, e.g. {{'user_id': 'visitorid'}}.")
    for target, col in mapping.items():
        if col not in df.columns:
            raise ContractError(f"mapping says {target} comes from column {col!r}, but {path.name} has no "
                                f"such column; its columns are {list(df.columns)}.")
    # unknown columns are kept, unless they would shadow a mapped one
    kept = {c: df[c] for c in df.columns if c not in mapping.values() and c not in mapping}
    ev = pd.DataFrame({**{target: df[col] for target, col in mapping.items()}, **kept})
    ev["user_id"], ev["item_id"] = _as_id(ev["user_id"]), _as_id(ev["item_id"])
    raw_types = ev["event_type"].astype(str).str.strip()
    ev["event_type"] = raw_types.map(event_type_map or {}).fillna(raw_types)
    ev["timestamp"] = _parse_times(ev["timestamp"])

    item_cols = [c for c in ITEM_LEVEL if c in mapping]
    items = _items_frame(_id_order(ev["item_id"]), ev)
    in_time = ev.sort_values("timestamp", kind="stable")
    for col in item_cols:  # last non-blank value: catalogs change, the newest wins
        vals = in_time[col].astype(str).str.strip()
        last = vals[vals != ""].groupby(in_time["item_id"]).last()
        items[col] = items["item_id"].map(last).fillna(UNKNOWN if col != "title" else "")
    if "price" in ev.columns:
        price = pd.to_numeric(ev["price"], errors="coerce")  # a bad price stays an event's problem
        median = price.where(price >= 0).groupby(ev["item_id"]).median()
        items["price"] = items["item_id"].map(median).fillna(0.0)
    ev = ev.drop(columns=item_cols)
    unknown = ev.loc[~ev["event_type"].isin(EVENT_TYPES), "event_type"].value_counts()
    return _dataset(
        "events-file", {"events": path}, ev, items, _users_from(ev), mapping=dict(mapping),
        event_type_map=dict(event_type_map or {}),
        disagreements={"missing_or_unparseable_timestamp": int(ev["timestamp"].isna().sum()),
                       "unknown_event_types": {str(k): int(v) for k, v in unknown.items()}},
        conventions={"category": "mapped, else unknown", "brand": "mapped, else unknown",
                     "price": "median event price, else 0.0", "created_at": "first event"})
