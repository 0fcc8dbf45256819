"""validate(): every bad row is quarantined with exactly one reason; clean tables keep the rest."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from feature_repo.data.validation import QUARANTINE_COLUMNS, validate
from feature_repo.errors import ContractError

NOW = pd.Timestamp("2026-06-01", tz="UTC")


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["i1", "i2", "i3", "i1"],
        "category": ["shoes", "shoes", "books", "shoes"],
        "brand": ["b1", "b2", "b3", "b9"],
        "price": ["10.5", "-3", "abc", "12"],  # i2 negative, i3 not a number, 2nd i1 duplicate
        "created_at": ["2026-01-01T00:00:00Z", "2026-01-02", "2026-01-03", "2026-01-04"],
        "title": ["Red shoe", "x", "y", "z"],  # unknown column: kept
    })


def _users() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        # u1 as unix seconds (2026-01-01T00:00:00Z), u2 missing, u3 ISO with an offset
        "created_at": ["1767225600", None, "2026-01-01T02:00:00+02:00"],
        "segment": ["a", "b", "c"],
    })


GOOD_EVENT = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2026-03-01T10:00:00Z",
              "campaign": "spring"}
# name -> (row, field the reason must name)
BAD_EVENTS = {
    "missing_user": ({**GOOD_EVENT, "user_id": None}, "user_id"),
    "empty_item": ({**GOOD_EVENT, "item_id": "  "}, "item_id"),
    "bad_timestamp": ({**GOOD_EVENT, "timestamp": "yesterday-ish"}, "timestamp"),
    "unknown_type": ({**GOOD_EVENT, "event_type": "like"}, "event_type"),
    "future": ({**GOOD_EVENT, "timestamp": "2026-07-01T00:00:00Z"}, "timestamp"),
    "unknown_item": ({**GOOD_EVENT, "item_id": "i404"}, "item_id"),
    "duplicate": (dict(GOOD_EVENT), "duplicate"),
}


def _events() -> pd.DataFrame:
    rows = [GOOD_EVENT,
            # a second good row, timestamp given as unix seconds (2026-03-01T09:00:00Z)
            {**GOOD_EVENT, "event_type": "click", "timestamp": "1772355600", "campaign": "x"}]
    rows += [row for row, _ in BAD_EVENTS.values()]
    return pd.DataFrame(rows)


@pytest.fixture()
def report():
    return validate(_events(), _items(), _users(), now=NOW)


def _q(report, table: str) -> pd.DataFrame:
    return report.quarantine[report.quarantine["table"] == table].set_index("row")


def test_each_bad_event_is_quarantined_with_one_reason_naming_the_field(report):
    q = _q(report, "events")
    assert list(report.quarantine.columns) == QUARANTINE_COLUMNS
    assert not q.index.duplicated().any(), "a row must appear once (one reason)"
    # rows 0 and 1 are good; bad rows follow in BAD_EVENTS order
    assert sorted(q.index) == list(range(2, 2 + len(BAD_EVENTS)))
    for pos, (name, (row, field)) in enumerate(BAD_EVENTS.items(), start=2):
        reason = q.loc[pos, "reason"]
        assert isinstance(reason, str) and field in reason, (name, reason)
        assert json.loads(q.loc[pos, "record"])["item_id"] == str(row["item_id"])


def test_specific_event_reasons(report):
    q = _q(report, "events")["reason"]
    assert q[2].startswith("missing user_id")
    assert q[3].startswith("missing item_id")
    assert q[4].startswith("bad timestamp")
    assert "like" in q[5] and "event_type" in q[5]
    assert "future" in q[6]
    assert q[7].startswith("unknown item_id")
    assert q[8].startswith("duplicate")


def test_bad_items_and_users_are_quarantined(report):
    qi = _q(report, "items")["reason"]
    assert dict(qi) == {
        1: "bad price: negative",
        2: "bad price: not a number",
        3: "duplicate of an earlier row",
    }
    qu = _q(report, "users")["reason"]
    assert dict(qu) == {1: "missing created_at"}


def test_clean_tables_hold_exactly_the_good_rows(report):
    ev = report.tables["events"]
    assert len(ev) == 2
    # sorted by time: the unix-seconds click (09:00) comes before the ISO view (10:00)
    assert ev["event_type"].tolist() == ["click", "view"]
    assert set(ev["user_id"]) == {"u1"} and set(ev["item_id"]) == {"i1"}
    items = report.tables["items"]
    assert items["item_id"].tolist() == ["i1"]
    assert items["price"].tolist() == [10.5]
    assert items["price"].dtype == "float64"
    assert items["brand"].tolist() == ["b1"]  # the first i1 wins
    assert report.tables["users"]["user_id"].tolist() == ["u1", "u3"]


def test_unknown_columns_are_kept(report):
    assert report.tables["events"]["campaign"].tolist() == ["x", "spring"]
    assert report.tables["items"]["title"].tolist() == ["Red shoe"]
    assert report.tables["users"]["segment"].tolist() == ["a", "c"]


def test_counts_add_up(report):
    sizes = {"events": len(_events()), "items": len(_items()), "users": len(_users())}
    for table, size in sizes.items():
        c = report.counts[table]
        assert c["input"] == size
        assert c["input"] == c["kept"] + c["quarantined"]
        assert c["kept"] == len(report.tables[table])
        assert c["quarantined"] == (report.quarantine["table"] == table).sum()
        reason_total = sum(v for k, v in c.items() if k not in ("input", "kept", "quarantined"))
        assert reason_total == c["quarantined"]
    assert report.counts["events"]["unknown event_type"] == 1
    assert report.counts["items"]["bad price"] == 2


def test_timestamps_iso_and_unix_seconds_parse_to_utc(report):
    ev = report.tables["events"]
    assert str(ev["timestamp"].dt.tz) == "UTC"
    assert ev["timestamp"].tolist() == [pd.Timestamp("2026-03-01T09:00:00Z"), pd.Timestamp("2026-03-01T10:00:00Z")]
    users = report.tables["users"]
    assert str(users["created_at"].dt.tz) == "UTC"
    # unix seconds and "+02:00" ISO both name 2026-01-01T00:00Z
    assert users["created_at"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z")] * 2
    assert report.tables["items"]["created_at"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z")]


def test_numeric_unix_seconds_and_naive_datetimes_are_utc():
    events = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"],
                           "timestamp": [1772355600]})  # int column
    items = _items().iloc[:1].assign(created_at=pd.to_datetime(["2026-01-01 00:00:00"]))  # naive
    users = _users().iloc[:1]
    rep = validate(events, items, users, now=NOW)
    assert rep.quarantine.empty
    assert rep.tables["events"]["timestamp"].tolist() == [pd.Timestamp("2026-03-01T09:00:00Z")]
    assert rep.tables["items"]["created_at"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z")]


@pytest.mark.parametrize("table,column", [("events", "event_type"), ("items", "price"), ("users", "created_at")])
def test_missing_required_column_raises_contract_error(table, column):
    tables = {"events": _events(), "items": _items(), "users": _users()}
    tables[table] = tables[table].drop(columns=[column])
    with pytest.raises(ContractError, match=column):
        validate(tables["events"], tables["items"], tables["users"], now=NOW)


def test_report_write(tmp_path, report):
    out = tmp_path / "clean"
    report.write(out)
    q = pd.read_csv(out / "quarantine.csv")
    assert list(q.columns) == QUARANTINE_COLUMNS
    assert len(q) == len(report.quarantine) == 7 + 3 + 1
    summary = json.loads((out / "validation.json").read_text())
    assert summary == report.counts
    assert summary["events"]["kept"] == 2


def test_duplicate_detected_across_timestamp_formats():
    # the same instant once as ISO and once as unix seconds is the same event
    events = pd.DataFrame([GOOD_EVENT, {**GOOD_EVENT, "timestamp": "1772359200"}])
    rep = validate(events, _items(), _users(), now=NOW)
    assert len(rep.tables["events"]) == 1
    q = _q(rep, "events")
    assert dict(q["reason"]) == {1: "duplicate of an earlier row"}


def test_event_for_a_quarantined_item_is_quarantined_too():
    # i2 has a negative price, so the clean catalog does not know it
    events = pd.DataFrame([GOOD_EVENT, {**GOOD_EVENT, "item_id": "i2"}])
    rep = validate(events, _items(), _users(), now=NOW)
    assert rep.tables["events"]["item_id"].tolist() == ["i1"]
    assert _q(rep, "events").loc[1, "reason"].startswith("unknown item_id")
