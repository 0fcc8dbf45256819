"""Event reporting from the shop: validate each event on its own, fold the accepted ones into
the users' online features (feature_repo/realtime.py) so the next Recommend reacts to them."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd

from feature_repo.data.contract import EVENT_TYPES
from feature_repo.realtime import apply_events
from serving.errors import StoreUnavailable

MAX_FUTURE_SECONDS = 300  # client clocks may run a little ahead; further is a bug


@dataclass
class EventResult:
    index: int
    accepted: bool
    error: str = ""


def check_event(event, known_items, max_id_length: int = 128, now: float | None = None) -> str:
    """Empty string if the event is acceptable, else "<field>: <problem>"."""
    now = time.time() if now is None else now
    for field in ("user_id", "item_id"):
        value = getattr(event, field)
        if not value:
            return f"{field}: is required"
        if len(value) > max_id_length:
            return f"{field}: is {len(value)} characters long; the limit is {max_id_length}"
    if event.item_id not in known_items:
        return f"item_id: {event.item_id!r} is not in the catalog"
    if event.event_type not in EVENT_TYPES:
        return f"event_type: {event.event_type!r} is not one of {list(EVENT_TYPES)}"
    # NaN passes both comparisons and infinity the first: either would fail the push that
    # carries every other valid event with it, or fold an infinite price into the features.
    if not math.isfinite(event.timestamp) or event.timestamp < 0 or event.timestamp > now + MAX_FUTURE_SECONDS:
        return (f"timestamp: {event.timestamp} is not a time: send unix seconds, not negative, not in the future "
                "(0 means now)")
    if not math.isfinite(event.price) or event.price < 0:
        return f"price: {event.price} is not a price: send a finite amount >= 0 (0 means unknown)"
    return ""


def record_events(store, events, known_items, max_id_length: int = 128) -> list[EventResult]:
    """Validate every event, push the accepted ones (one online read, one push per view)."""
    answer = record_event_calls(store, [events], known_items, max_id_length)[0]
    if isinstance(answer, Exception):
        raise answer
    return answer


def record_event_calls(store, calls, known_items, max_id_length: int = 128) -> list[list[EventResult] | Exception]:
    """Several RecordEvents calls at once: each call's events validated on their own, the
    accepted events of all calls folded in with one online read and one push per view (what
    costs ~6 ms per push on sqlite; 8 users in one push cost ~1.4 ms each, docs/benchmarks.md).

    Per call: its results, or StoreUnavailable if the store refused the write (then none or
    only part of the batch was stored, and the caller should retry the call)."""
    now = time.time()
    answers: list[list[EventResult] | Exception] = []
    rows: list[dict] = []
    writers = []  # calls with accepted events: their fate is the push's
    for n, events in enumerate(calls):
        results, before = [], len(rows)
        for i, event in enumerate(events):
            error = check_event(event, known_items, max_id_length, now)
            results.append(EventResult(i, not error, error))
            if not error:
                rows.append({"user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type,
                             "timestamp": pd.Timestamp(event.timestamp or now, unit="s", tz="UTC"),
                             "price": event.price if event.price > 0 else None})
        answers.append(results)
        if len(rows) > before:
            writers.append((n, len(rows) - before))
    if rows:
        try:
            apply_events(store, pd.DataFrame(rows))
        except Exception as e:  # the callers must know nothing was recorded, so they can retry
            for n, count in writers:
                error = StoreUnavailable(f"online store: {count} valid events could not be recorded "
                                         f"({type(e).__name__}); the call's events were not (or only partly) "
                                         "stored; retry the call")
                error.__cause__ = e
                answers[n] = error
    return answers
