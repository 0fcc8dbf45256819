"""Row-level validation of the contract tables.

Every row either passes, possibly with its types normalised, or goes to the quarantine with
exactly one reason (the first rule it breaks, in the order below). Nothing is dropped silently:
``ValidationReport.counts`` adds up to the input size.

Rules, in order: missing key or required value; value of the wrong type (unparseable timestamp
or number, negative price); unknown event_type; timestamp in the future; event for an item that
is not in the catalog; events of a bot (feature_repo/data/cleaning.py); duplicate of an earlier
row. ``cleaning=None`` turns the last two off (to measure what cleaning is worth).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.data.cleaning import CleaningRules, bot_reasons
from feature_repo.data.contract import EVENT_TYPES, EVENTS, ITEMS, USERS, TableSpec, check_columns

QUARANTINE_COLUMNS = ["table", "row", "reason", "record"]


@dataclass
class ValidationReport:
    """Clean tables, the quarantined rows (one reason each) and the counts per reason."""

    tables: dict[str, pd.DataFrame]
    quarantine: pd.DataFrame
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per table: input rows, kept rows, and quarantined rows per reason."""
        return self.counts

    def write(self, out_dir: Path) -> None:
        """Write the quarantine file and a JSON summary next to the clean tables."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine.to_csv(out_dir / "quarantine.csv", index=False)
        (out_dir / "validation.json").write_text(json.dumps(self.counts, indent=2))


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "") | s.astype(str).isin(["nan", "None", "NaT"])


def _to_utc(s: pd.Series) -> pd.Series:
    """Parse timestamps (datetimes, ISO strings, or unix seconds) to UTC; NaT where unparseable."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(s):
        return pd.to_datetime(s, unit="s", utc=True, errors="coerce")
    as_str = s.astype(str)
    numeric = pd.to_numeric(as_str, errors="coerce")
    parsed = pd.to_datetime(as_str.where(numeric.isna()), utc=True, errors="coerce", format="mixed")
    from_unix = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
    return parsed.fillna(from_unix)


class _Rows:
    """Assigns the first failing reason per row."""

    def __init__(self, df: pd.DataFrame):
        self.reason = pd.Series([None] * len(df), index=df.index, dtype=object)

    def flag(self, mask: pd.Series, reason: str | pd.Series) -> None:
        new = mask & self.reason.isna()
        if isinstance(reason, pd.Series):
            self.reason[new] = reason[new]
        else:
            self.reason[new] = reason

    @property
    def ok(self) -> pd.Series:
        return self.reason.isna()


def _validate_table(
    df: pd.DataFrame, spec: TableSpec, now: pd.Timestamp, known_items: pd.Index | None,
    cleaning: CleaningRules | None = CleaningRules(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    check_columns(df, spec)
    out = df.copy()
    rows = _Rows(out)
    for col in spec.keys + spec.strings:
        rows.flag(_blank(out[col]), f"missing {col}")
        out[col] = out[col].astype(str).str.strip()
    for col in spec.timestamps:
        rows.flag(_blank(out[col]), f"missing {col}")
        parsed = _to_utc(out[col])
        rows.flag(parsed.isna(), f"bad {col}: not a timestamp (use ISO 8601 or unix seconds)")
        out[col] = parsed
    for col in spec.numbers:
        rows.flag(_blank(out[col]), f"missing {col}")
        num = pd.to_numeric(out[col], errors="coerce")
        rows.flag(num.isna() | ~np.isfinite(num.fillna(0)), f"bad {col}: not a number")
        rows.flag(num < 0, f"bad {col}: negative")
        out[col] = num.astype("float64")
    for col in spec.optional_numbers:
        if col in out.columns:  # optional: blank is allowed (NaN), garbage is not
            num = pd.to_numeric(out[col], errors="coerce")
            rows.flag(num.isna() & ~_blank(out[col]), f"bad {col}: not a number")
            rows.flag(num < 0, f"bad {col}: negative")
            out[col] = num.astype("float64")
    if spec is EVENTS:
        unknown = ~out["event_type"].isin(EVENT_TYPES)
        rows.flag(unknown, "unknown event_type '" + out["event_type"].astype(str) + f"' (expected one of {list(EVENT_TYPES)})")
    for col in spec.timestamps:
        rows.flag(out[col] > now, f"{col} in the future (after {now.isoformat()})")
    if known_items is not None:
        rows.flag(~out["item_id"].isin(known_items), "unknown item_id (not in the items table)")
    if spec is EVENTS and cleaning is not None:
        ok = rows.ok
        bots = bot_reasons(out[ok], cleaning)
        rows.flag(ok & out["user_id"].isin(bots.index), out["user_id"].map(bots))
    # Duplicates: events are duplicates when every contract column matches; catalog rows when
    # the id repeats (the first one wins, later ones are quarantined for a human to look at).
    # Catalog duplicates are always rejected: two prices for one item cannot both be true.
    if spec is not EVENTS or cleaning is None or cleaning.drop_duplicates:
        dup_cols = list(spec.required) if spec is EVENTS else list(spec.keys)
        dup = pd.Series(False, index=out.index)
        ok_idx = rows.ok[rows.ok].index
        dup.loc[ok_idx] = out.loc[ok_idx].duplicated(subset=dup_cols, keep="first")
        rows.flag(dup, "duplicate of an earlier row")

    bad = rows.reason.notna()
    quarantine = pd.DataFrame(
        {
            "table": spec.name,
            "row": np.flatnonzero(bad.to_numpy()),
            "reason": rows.reason[bad].to_numpy(),
            "record": [json.dumps({k: str(v) for k, v in r.items()}) for r in df[bad.to_numpy()].to_dict("records")],
        },
        columns=QUARANTINE_COLUMNS,
    )
    return out[~bad].reset_index(drop=True), quarantine


def validate(
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    now: pd.Timestamp | None = None,
    cleaning: CleaningRules | None = CleaningRules(),
) -> ValidationReport:
    """Validate the three tables against the contract; see the module docstring for the rules.

    ``now`` defaults to the wall clock; timestamps after it are quarantined. ``cleaning=None``
    keeps bots and duplicate events (everything else is still enforced).
    """
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    clean_items, q_items = _validate_table(items, ITEMS, now, None)
    clean_users, q_users = _validate_table(users, USERS, now, None)
    clean_events, q_events = _validate_table(events, EVENTS, now, pd.Index(clean_items["item_id"]), cleaning)
    clean_events = clean_events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    quarantine = pd.concat([q_events, q_items, q_users], ignore_index=True)
    counts: dict[str, dict[str, int]] = {}
    for name, raw, clean in (("events", events, clean_events), ("items", items, clean_items), ("users", users, clean_users)):
        reasons = Counter(_reason_kind(r) for r in quarantine.loc[quarantine["table"] == name, "reason"])
        counts[name] = {"input": len(raw), "kept": len(clean), "quarantined": len(raw) - len(clean), **dict(reasons)}
    return ValidationReport({"events": clean_events, "items": clean_items, "users": clean_users}, quarantine, counts)


def _reason_kind(reason: str) -> str:
    """Group reasons that carry a value ("unknown event_type 'x' ...") under one count key."""
    return reason.split(" '")[0].split(" (")[0].split(":")[0]  # "bot: 812 events ..." → "bot"
