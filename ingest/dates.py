"""PubMed dates: ``PubDate``/``MedlineDate`` text into a :class:`~ingest.records.PartialDate`,
and the ``Year``/``Month``/``Day`` elements of the other dates into a ``date``.

Dates that do not exist (30 February) become ``None``; seasons mean the first month
they can fall in (``Winter 2020`` → January).

Example:
    >>> parse_medline_date("2019 Nov-Dec").month
    11
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from collections.abc import Iterator
from typing import Any

from ingest.records import PartialDate
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, nlm_day_start

__all__ = [
    "PERIOD_MARKS", "names_period", "parse_medline_date", "period_end", "pub_date_of",
    "read_pub_date", "read_ymd", "searched_days", "ymd_of",
]  # fmt: skip

_MONTHS: dict[str, int] = {}
for _i, _name in enumerate(calendar.month_name):
    if _i:
        _MONTHS[_name.lower()] = _i
        _MONTHS[_name[:3].lower()] = _i
_MONTHS["sept"] = 9
#: Season → the first month it can mean within its year.
_SEASONS = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 1}
_TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]+")


def parse_medline_date(raw: str) -> PartialDate:
    """Read a free-text ``MedlineDate`` into a :class:`PartialDate` (start of the period).

    ``"1998 Dec-1999 Jan"`` → 1998-12, ``"2024 Sep-Oct"`` → 2024-09, ``"2000 Spring"`` →
    2000-03 (season kept), ``"1975-1976"`` → 1975, ``"2001 Jul 15-31"`` → 2001-07-15; a
    month before the year is the start as well: ``"Nov-Dec 2019"`` → 2019-11, ``"Dec
    2019-Jan 2020"`` → 2019-12; a winter over two years starts in December of the first
    (``"1998-1999 Winter"``, ``"Winter 2023-2024"`` → 12).

    Args:
        raw: The MedlineDate text.

    Returns:
        The date; ``raw`` always holds the original text.
    """
    raw = " ".join(raw.split())
    tokens = _TOKEN_RE.findall(raw)
    yi = next(
        (i for i, t in enumerate(tokens) if len(t) == 4 and t.isdigit() and t != "0000"), None
    )
    if yi is None:
        return PartialDate(raw=raw)
    year = int(tokens[yi])
    month = day = None
    season = None
    nxt = tokens[yi + 1] if yi + 1 < len(tokens) else None
    spans_years = nxt is not None and len(nxt) == 4 and nxt.isdigit()
    # a month or season before the year: the first of them starts the period ("Nov-Dec
    # 2019", "Dec 2019-Jan 2020": what follows the year is the period's end)
    before = (_month_or_season(t) for t in tokens[:yi] if t.isalpha())
    month, season = next((m for m in before if m[0] is not None), (None, None))
    if month is not None:
        if season == "Winter" and spans_years:
            month = 12  # "Winter 2023-2024" starts in the first year's December
    elif nxt is not None and nxt.isalpha():
        month, season = _month_or_season(nxt)
        if month is not None and season is None and yi + 2 < len(tokens):
            d = tokens[yi + 2]
            if d.isdigit() and len(d) <= 2:
                day = int(d)
    elif spans_years:
        # "1998-1999 Winter": a season spanning two years starts in the first.
        after = tokens[yi + 2] if yi + 2 < len(tokens) else None
        if after is not None and after.isalpha():
            month, season = _month_or_season(after)
            if season == "Winter":
                month = 12
    return PartialDate(year, month, _valid_day(year, month, day), raw, season)


#: Season → the last month it means (winter: its February, the first year's December
#: being its start only when it spans two years, as :func:`parse_medline_date` reads it).
_SEASON_ENDS = {"spring": 5, "summer": 8, "fall": 11, "autumn": 11, "winter": 2}
#: What a date text names a period by (letter case aside): a dash ("2019 Nov-Dec", "2001
#: Jul 15-31", "1975-1976") or a season ("2000 Spring"). Only such a text has a period end
#: (:func:`period_end`); the store's catch-up finds the rows to read by these too.
PERIOD_MARKS = ("-", "\u2013", *_SEASON_ENDS)


def names_period(raw: str) -> bool:
    """Whether the date text ``raw`` names a period (:data:`PERIOD_MARKS`): ``"2019
    Nov-Dec"``, ``"2000 Spring"``; not ``"2019 Mar 05"`` nor ``"2019 03 05"`` (the text of
    ``Year``/``Month``/``Day`` elements)."""
    text = raw.lower()
    return any(mark in text for mark in PERIOD_MARKS)


@functools.lru_cache(maxsize=4096)
def period_end(pd: PartialDate) -> dt.date | None:
    """The last day of the publication period ``pd``'s text names when it reaches beyond
    what its start says (a range of months or years, a season, a span of days:
    :func:`names_period`); ``None`` when the start's own precision says it all (a year:
    its 31 December; a month: its last day; a day), and for a text naming no period (the
    ``Year``/``Month``/``Day`` elements' ``"2019 03 05"``). A date filter takes an article
    in while any day of its period is in range: ``"2019 Nov-Dec"`` → 2019-12-31, ``"Dec
    2019-Jan 2020"`` → 2020-01-31, ``"2000 Spring"`` → 2000-05-31, ``"Winter 2023-2024"``
    → 2024-02-29, ``"1975-1976"`` → 1976-12-31, ``"2001 Jul 15-31"`` → 2001-07-31. An end
    month before the start's month in the one year written is in the next year: ``"2019
    Dec-Jan"`` → 2020-01-31, ``"2001 Fall-Winter"`` → 2002-02-28.

    Example:
        >>> period_end(parse_medline_date("2019 Nov-Dec"))
        datetime.date(2019, 12, 31)
    """
    if pd.year is None or not pd.raw or not names_period(pd.raw):
        return None
    tokens = _TOKEN_RE.findall(pd.raw)
    years = [int(t) for t in tokens if len(t) == 4 and t.isdigit() and int(t) >= pd.year]
    end_year = max(years, default=pd.year)
    month = day = None
    season = None
    for i, t in enumerate(tokens):
        if t.isalpha():
            m, s = _month_or_season(t)
            if m is not None:
                month, season, day = m, s, None
        elif month is not None and len(t) <= 2 and t.isdigit() and i == len(tokens) - 1:
            day = int(t)  # "Jul 15-31": the span's last day
    if season is not None:
        month = _SEASON_ENDS[season.lower()]
    if month is not None and pd.month is not None and month < pd.month and end_year == pd.year:
        end_year += 1  # "2019 Dec-Jan", "2001 Fall-Winter": it runs into the next year
    if month is None:
        end = dt.date(end_year, 12, 31)
    else:
        last = calendar.monthrange(end_year, month)[1]
        end = dt.date(end_year, month, day if day and day <= last else last)
    start_month = pd.month or 12
    start_end = dt.date(pd.year, start_month,
                        pd.day or calendar.monthrange(pd.year, start_month)[1])  # fmt: skip
    return end if end > start_end else None


def read_pub_date(pd: Any) -> PartialDate:
    """The ``PubDate`` element ``pd`` (Year/Month/Day/Season or MedlineDate) as a date."""
    year_t = month_t = day_t = season_t = medline = None
    for c in pd:
        tag = c.tag
        if tag == "Year":
            year_t = c.text
        elif tag == "Month":
            month_t = c.text
        elif tag == "Day":
            day_t = c.text
        elif tag == "Season":
            season_t = c.text
        elif tag == "MedlineDate":
            medline = c.text or ""
    return pub_date_of(year_t, month_t, day_t, season_t, medline)


def pub_date_of(
    year_t: str | None,
    month_t: str | None,
    day_t: str | None,
    season_t: str | None,
    medline: str | None,
) -> PartialDate:
    """A ``PubDate`` from the texts of its children (``medline``: MedlineDate, if any)."""
    key = (year_t, month_t, day_t, season_t, medline)
    cached = _DATE_CACHE.get(key)
    if cached is None:
        if medline is not None:
            cached = parse_medline_date(medline)
        else:
            cached = _partial_date(*(t.strip() if t else None for t in key[:4]))
        if len(_DATE_CACHE) >= _DATE_CACHE_SIZE:
            _DATE_CACHE.clear()
        _DATE_CACHE[key] = cached
    return cached


def _partial_date(
    year_t: str | None, month_t: str | None, day_t: str | None, season_t: str | None
) -> PartialDate:
    raw = " ".join(t for t in (year_t, month_t or season_t, day_t) if t)
    year = _year(year_t)
    month = season = None
    if month_t:
        month = _small_int(month_t)
        if month is None:
            month = _MONTHS.get(month_t.lower())
        elif not 1 <= month <= 12:
            month = None
    elif season_t:
        month, season = _month_or_season(season_t)
    if month is None and year is not None and (month_t or season_t):
        # a Month or Season naming no single month or season is the rest of a MedlineDate:
        # EFetch renders "1994 Sep-Dec" as Year 1994, Season "Sep-Dec". Read as that, it is
        # dated (and its period ends) as the baseline's MedlineDate is (the store reads its
        # rows of earlier releases again the same way: ingest.store.reread_periods)
        return parse_medline_date(raw)
    day = _small_int(day_t) if month else None
    return PartialDate(year, month, _valid_day(year, month, day), raw, season)


#: Years before this are not real publication years: a two-digit ``<Year>98</Year>``, a
#: typo. Such a date is unknown (the next date in line stands in: the entrez date).
MIN_YEAR = 1000


def _year(text: str | None) -> int | None:
    """A four-digit year from :data:`MIN_YEAR` on, else None (``98`` is not 98 AD)."""
    value = _small_int(text.strip() if text else None)
    return value if value is not None and value >= MIN_YEAR else None


def _small_int(text: str | None) -> int | None:
    """The value of one to four ASCII digits, else None."""
    if text and len(text) <= 4 and text.isdigit() and text.isascii():
        return int(text)
    return None


#: PubDate elements and DateRevised-style dates repeat a lot within a file.
_DATE_CACHE: dict[tuple[str | None, ...], PartialDate] = {}
_YMD_CACHE: dict[tuple[str | None, ...], dt.date | None] = {}
_DATE_CACHE_SIZE = 20_000


def _month_or_season(word: str) -> tuple[int | None, str | None]:
    w = word.lower()
    month = _MONTHS.get(w)
    if month is not None:
        return month, None
    if w in _SEASONS:
        return _SEASONS[w], word.capitalize()
    return None, None


def _valid_day(year: int | None, month: int | None, day: int | None) -> int | None:
    if day is None or year is None or month is None:
        return None
    if 1 <= day <= calendar.monthrange(year, month)[1]:
        return day
    return None


def read_ymd(el: Any) -> dt.date | None:
    """A Year/Month/Day date element (DateRevised, History's PubMedPubDate...) as a date."""
    y = m = d = None
    for c in el:
        tag = c.tag
        if tag == "Year":
            y = c.text
        elif tag == "Month":
            m = c.text
        elif tag == "Day":
            d = c.text
            break
    return ymd_of(y, m, d)


def ymd_of(y: str | None, m: str | None, d: str | None) -> dt.date | None:
    """A date from the texts of Year/Month/Day; None where it does not exist."""
    key = (y, m, d)
    try:
        return _YMD_CACHE[key]
    except KeyError:
        pass
    value = _to_date(y, m, d)
    if len(_YMD_CACHE) >= _DATE_CACHE_SIZE:
        _YMD_CACHE.clear()
    _YMD_CACHE[key] = value
    return value


def _to_date(y: str | None, m: str | None, d: str | None) -> dt.date | None:
    year = _year(y)
    if year is None:
        return None
    try:
        month = 1
        if m:
            m = m.strip()
            month = int(m) if m.isdigit() else _MONTHS[m.lower()]
        return dt.date(year, month, int(d) if d else 1)
    except (ValueError, KeyError, OverflowError):
        return None


def searched_days(
    settings: Settings, since: dt.datetime, until: dt.datetime
) -> tuple[dt.date, dt.date]:
    """The first and last PubMed day ESearch searches for the window ``[since, until)``
    (UTC instants): every day the window touches, from ``LITPULSE_WINDOW_OVERLAP_DAYS``
    before ``since``. PubMed's days are NLM's Eastern days
    (:func:`litpulse.core.timeutil.nlm_day_start` says when one begins).

    Raises:
        ConfigError: The searched days, with a day's margin either side (the checks walk
            the days around them), fall off the calendar's ends (years 1 to 9999).
    """
    since, until = as_utc(since), as_utc(until)
    try:
        first = (since - dt.timedelta(days=settings.window_overlap_days)).date()
        last = (until - dt.timedelta(microseconds=1)).date()
        for day in (first - dt.timedelta(days=1), last + dt.timedelta(days=1)):  # a margin
            nlm_day_start(day)
    except (OverflowError, ValueError):
        raise ConfigError(
            f"the window {since.isoformat()} .. {until.isoformat()} reaches past the "
            "calendar's ends (its searched days must be dates of years 1 to 9999)"
        ) from None
    return first, last


def each_day(first: dt.date, last: dt.date) -> Iterator[dt.date]:
    """The days ``first``..``last``, both included."""
    day = first
    while day <= last:
        yield day
        day += dt.timedelta(days=1)


#: A PubMed day the window covers for at least this long is the window's own to answer
#: for (:func:`covered_days`); a shorter part is the day's edge (the evening before the
#: window, a morning not yet begun in Bethesda), answered by the window before or after.
COVERED_HOURS = 12


def covered_days(
    since: dt.datetime, until: dt.datetime, *, hours: float = COVERED_HOURS
) -> list[dt.date]:
    """PubMed's days (NLM's Eastern days: :func:`litpulse.core.timeutil.nlm_day_start`)
    of which the window ``[since, until)`` (UTC instants) covers at least ``hours``.

    The nightly DAG's window ``[Mon 00:00, Tue 00:00)`` UTC covers Monday in Bethesda for
    19 hours and Sunday for 5; a window ending at 02:00 UTC on a Monday covers none of
    Monday, which has not begun there.
    """
    since, until = as_utc(since), as_utc(until)
    need = dt.timedelta(hours=hours)
    # PubMed's day of an instant is its UTC date or the day before (Bethesda is behind)
    day = since.date() - dt.timedelta(days=1)
    out: list[dt.date] = []
    while nlm_day_start(day) < until:
        begin, end = nlm_day_start(day), nlm_day_start(day + dt.timedelta(days=1))
        if min(end, until) - max(begin, since) >= need:
            out.append(day)
        day += dt.timedelta(days=1)
    return out
