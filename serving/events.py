"""Event reporting from the shop: validate each event on its own, fold the accepted ones into
the users' online features (feature_repo/realtime.py) so the next Recommend reacts to them."""
from __future__ import annotations

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
    if event.timestamp < 0 or event.timestamp > now + MAX_FUTURE_SECONDS:
        return f"timestamp: {event.timestamp} is negative or in the future (unix seconds; 0 means now)"
    if event.price < 0:
        return f"price: {event.price} is negative"
    return ""


def record_events(store, events, known_items, max_id_length: int = 128) -> list[EventResult]:
    """Validate every event, push the accepted ones (one online read, one push per view)."""
    now = time.time()
    results, rows = [], []
    for i, event in enumerate(events):
        error = check_event(event, known_items, max_id_length, now)
        results.append(EventResult(i, not error, error))
        if not error:
            rows.append({"user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type,
                         "timestamp": pd.Timestamp(event.timestamp or now, unit="s", tz="UTC"),
                         "price": event.price if event.price > 0 else None})
    if rows:
        try:
            apply_events(store, pd.DataFrame(rows))
        except Exception as e:  # the caller must know nothing was recorded, so it can retry
            raise StoreUnavailable(f"online store: {len(rows)} valid events could not be recorded ({type(e).__name__}); "
                                   "the call's events were not (or only partly) stored; retry the call") from e
    return results
