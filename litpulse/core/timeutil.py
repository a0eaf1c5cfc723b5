"""Time helpers: the one home for "now", UTC normalisation and ISO rendering.

The store's datetime columns use :class:`litpulse.core.schema.UTCDateTime`, so values read
back are already timezone-aware UTC on SQLite and PostgreSQL alike; these helpers serve
values that come from elsewhere (settings, CLI arguments, JSON).

Example:
    >>> as_utc(dt.datetime(2026, 1, 2, 3, 4))
    datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)
    >>> iso(dt.date(2026, 1, 2))
    '2026-01-02'
"""

from __future__ import annotations

import datetime as dt
from typing import Any, overload

from litpulse.core.errors import ConfigError

__all__ = ["utcnow", "as_utc", "iso", "as_date", "parse_date", "day_start", "nlm_day_start"]

#: The time zone of PubMed's dates (entrez, modification): NLM's day in Bethesda.
NLM_TIMEZONE = "America/New_York"


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def iso(value: Any) -> Any:
    """ISO 8601 text of a date or datetime (datetimes in UTC); anything else unchanged."""
    if isinstance(value, dt.datetime):
        return as_utc(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def as_date(value: Any) -> dt.date | None:
    """A ``date`` from a date, a datetime (its UTC day) or ISO text; ``None`` for anything else.

    Raises:
        ValueError: ``value`` is text that is not an ISO date.
    """
    if isinstance(value, dt.datetime):
        return as_utc(value).date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and value:
        return dt.date.fromisoformat(value[:10])
    return None


def parse_date(value: dt.date | str | None, name: str = "date") -> dt.date | None:
    """A user-given day: a date, a datetime (its UTC day) or strict ``YYYY-MM-DD`` text.

    Empty text and ``None`` give ``None``.

    Raises:
        ConfigError: Text that is not an ISO date; the message names ``name``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return as_date(value)
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{name} is not an ISO date (YYYY-MM-DD): {value!r}") from None


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC at the start of ``day``."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def nlm_day_start(day: dt.date) -> dt.datetime:
    """When PubMed's day ``day`` begins, in UTC: midnight in Bethesda (04:00 or 05:00 UTC).

    ESearch dates are NLM's US Eastern days: a search of ``day`` covers the records entered
    from this instant, not from UTC midnight.
    """
    from zoneinfo import ZoneInfo

    return dt.datetime.combine(day, dt.time(), ZoneInfo(NLM_TIMEZONE)).astimezone(dt.UTC)
