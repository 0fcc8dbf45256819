"""Cleaning rules that look at a user's behaviour as a whole, not at one row: bot detection.

A bot here is traffic that no shopper produces: more events in one clock hour than a person can
click through, or a long run of views without ever clicking. Every event of such a user is
quarantined with the rule that fired, so a human can review the decision; thresholds are
constructor arguments with documented defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class CleaningRules:
    """Thresholds of the behavioural rules.

    Args:
      max_events_per_hour: more events than this in any clock hour marks a bot (a person
        browsing fast produces well under 100).
      min_views_for_ctr: below this many views the click-through rule does not apply.
      min_click_through: a user with at least ``min_views_for_ctr`` views and a lower share of
        clicks per view is a bot (shoppers click on several percent of what they view).
      drop_duplicates: quarantine exact duplicate events (double-sent by a client).
    """

    max_events_per_hour: int = 200
    min_views_for_ctr: int = 500
    min_click_through: float = 0.005
    drop_duplicates: bool = True


def bot_reasons(events: pd.DataFrame, rules: CleaningRules = CleaningRules()) -> pd.Series:
    """The reason per bot user (index: user_id); users that pass are not in the result."""
    if events.empty:
        return pd.Series(dtype=object)
    hourly = events.groupby(["user_id", events["timestamp"].dt.floor("h")]).size().groupby(level=0).max()
    reasons = {}
    for user, n in hourly[hourly > rules.max_events_per_hour].items():
        reasons[user] = f"bot: {n} events in one hour (limit {rules.max_events_per_hour})"
    types = pd.crosstab(events["user_id"], events["event_type"])
    views = types["view"] if "view" in types else pd.Series(0, index=types.index)
    clicks = types["click"] if "click" in types else pd.Series(0, index=types.index)
    ctr = clicks / views.clip(lower=1)
    for user in types.index[(views >= rules.min_views_for_ctr) & (ctr < rules.min_click_through)]:
        reasons.setdefault(user, f"bot: {int(views[user])} views with {ctr[user]:.2%} click-through "
                                 f"(minimum {rules.min_click_through:.1%})")
    return pd.Series(reasons, dtype=object)
