"""Citation impact from NIH iCite, refreshed on an age-dependent schedule.

:func:`refresh_citations` asks iCite (``GET {icite_url}pubs?pmids=1,2,3&format=json``,
at most ``settings.icite_batch`` ≤ 200 PMIDs per request) and fills the ``articles``
columns ``citation_count``, ``relative_citation_ratio``, ``citations_per_year``,
``icite_year``, ``icite_provisional`` and ``icite_fetched_at``.

**Refresh policy** (when no PMIDs are given): every live article that was never
fetched, or whose last fetch is older than an interval that grows with the article's
age (from ``best_date``, else ``entrez_date``):

=========================  ==================
article age                refetched after
=========================  ==================
under 1 year               7 days
1 to 5 years               30 days
over 5 years or unknown    180 days
=========================  ==================

Young articles gain citations fast and their RCR is provisional; old ones barely move.

A PMID iCite does not know (too new, or outside its coverage) keeps what it had — its
in-corpus count (``cited_by_in_corpus``, from references inside the corpus) and any
earlier iCite values — and still gets ``icite_fetched_at``, so it is asked again only
on the schedule above rather than every night.

Example:
    >>> counts = refresh_citations(settings)            # doctest: +SKIP
    >>> counts.to_dict()                                 # doctest: +SKIP
    {'requested': 1200, 'updated': 1150, 'unknown': 50}
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Update, and_, bindparam, func, or_, select, update

from ingest.fields import MAX_PMID, id_value
from ingest.http import HttpClient
from ingest.runs import Counts, IngestCounts, recorded_run
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import TransientSourceError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow

__all__ = [
    "ICITE_FIELDS",
    "REFRESH_POLICY",
    "CitationCounts",
    "due_pmids",
    "icite_params",
    "icite_update",
    "icite_values",
    "parse_icite",
    "refresh_citations",
]

logger = logging.getLogger(__name__)

#: (articles younger than this many days, refetch after this many days); last row: all older.
REFRESH_POLICY: tuple[tuple[int | None, int], ...] = ((365, 7), (5 * 365, 30), (None, 180))


@dataclass(frozen=True)
class CitationCounts(Counts):
    """What one citation refresh did.

    Attributes:
        requested: PMIDs sent to iCite.
        updated: Articles given iCite values.
        unknown: PMIDs iCite did not return (their in-corpus count stays).
    """

    requested: int = 0
    updated: int = 0
    unknown: int = 0


def due_pmids(
    engine: Engine, *, now: dt.datetime | None = None, limit: int | None = None
) -> list[int]:
    """Live PMIDs whose citation data is missing or older than :data:`REFRESH_POLICY` allows.

    Args:
        engine: The store.
        now: The reference time (default: now, UTC).
        limit: At most this many PMIDs: never-fetched articles first, then the newest
            (their counts move fastest); the rest wait for the next run.

    Returns:
        The PMIDs, ascending.
    """
    now = now or utcnow()
    a = articles.c
    age_ref = func.coalesce(a.best_date, a.entrez_date)
    today = now.date()
    conditions: list[Any] = [a.icite_fetched_at.is_(None)]
    previous: dt.date | None = None  # birth-date bound of the previous (younger) row
    for max_age, interval in REFRESH_POLICY:
        parts: list[Any] = [a.icite_fetched_at < now - dt.timedelta(days=interval)]
        bound = None if max_age is None else today - dt.timedelta(days=max_age)
        if bound is not None:
            parts.append(age_ref >= bound)
        if previous is not None:
            older = age_ref < previous
            parts.append(older if bound is not None else or_(older, age_ref.is_(None)))
        conditions.append(and_(*parts))
        previous = bound
    query = (
        select(a.pmid)
        .where(a.is_deleted.is_(False), or_(*conditions))
        .order_by(a.icite_fetched_at.is_(None).desc(), age_ref.desc().nulls_last(), a.pmid)
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return sorted(int(p) for p in conn.execute(query).scalars())


#: The ``articles`` columns iCite fills, each from its iCite field (API JSON and snapshot CSV
#: name their fields alike). :func:`icite_values` is the one place that maps them.
ICITE_FIELDS: dict[str, str] = {
    "citation_count": "citation_count",
    "relative_citation_ratio": "relative_citation_ratio",
    "citations_per_year": "citations_per_year",
    "icite_year": "year",
    "icite_provisional": "provisional",
}
_KINDS: dict[str, type] = {
    "citation_count": int,
    "relative_citation_ratio": float,
    "citations_per_year": float,
    "icite_year": int,
    "icite_provisional": bool,
}


def _bool(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "y"):
        return True
    if text in ("no", "false", "0", "n", ""):
        return False
    return None


def _num(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    if kind is bool:
        return _bool(value)
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if kind is float and not math.isfinite(number):
        return None
    if kind is int and not -(2**31) <= number < 2**31:  # the columns are 32-bit
        return None
    return number


def icite_values(
    row: Mapping[str, Any], *, strict: bool = False
) -> tuple[int, dict[str, Any]] | None:
    """The PMID and the ``articles`` column values of one iCite record.

    Args:
        row: One iCite record: an object of the API's ``data`` list, or a row of the
            snapshot CSV as a dict (its values text, ``True``/``False`` for flags).
        strict: Raise on a value that is present but unreadable (the snapshot loader
            counts such rows as malformed); otherwise it becomes NULL.

    Returns:
        ``(pmid, {column: value})``, or None for a record without a valid PMID
        (1..2^31-1) when not ``strict``.

    Raises:
        ValueError: ``strict`` and the PMID or a value is unreadable (the message says which).
    """
    raw_pmid = row.get("pmid", row.get("_id"))
    pmid = None if raw_pmid is None else id_value(str(raw_pmid), MAX_PMID)
    if pmid is None:
        if strict:
            raise ValueError(f"pmid {raw_pmid!r} is not a PMID")
        return None
    values: dict[str, Any] = {}
    for column, name in ICITE_FIELDS.items():
        raw = row.get(name)
        value = _num(raw, _KINDS[column])
        if strict and value is None and raw not in (None, ""):
            raise ValueError(f"{name} {str(raw)[:40]!r} is not a valid {_KINDS[column].__name__}")
        values[column] = value
    return pmid, values


def parse_icite(body: Any, where: str = "icite") -> dict[int, dict[str, Any]]:
    """The article column values per PMID from one iCite JSON answer.

    Raises:
        TransientSourceError: The answer is not the expected JSON (an HTML error page
            behind a proxy, a truncated body).
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise TransientSourceError(f"{where}: unexpected answer (no data list)")
    out: dict[int, dict[str, Any]] = {}
    for row in body["data"]:
        if not isinstance(row, dict):
            continue
        parsed = icite_values(row)
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


def icite_update(*, keep_newer: bool = False) -> Update:
    """The ``UPDATE`` of one article's iCite columns, for ``executemany``.

    Its parameters: ``b_pmid``, ``b_<column>`` for each of :data:`ICITE_FIELDS` and
    ``b_now`` (the fetch time stored). With ``keep_newer`` only live articles whose
    iCite data is missing or not newer than ``b_now`` are written (a snapshot never
    overwrites a later API refresh).
    """
    a = articles.c
    stmt = (
        update(articles)
        .where(a.pmid == bindparam("b_pmid"))
        .values(
            {
                **{c: bindparam(f"b_{c}") for c in ICITE_FIELDS},
                "icite_fetched_at": bindparam("b_now"),
            }
        )
    )
    if keep_newer:
        stmt = stmt.where(
            a.is_deleted.is_(False),
            or_(a.icite_fetched_at.is_(None), a.icite_fetched_at <= bindparam("b_now")),
        )
    return stmt


def icite_params(found: Mapping[int, Mapping[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """The parameters of :func:`icite_update` for these PMIDs and values."""
    return [
        {"b_pmid": p, "b_now": now, **{f"b_{c}": v[c] for c in ICITE_FIELDS}}
        for p, v in found.items()
    ]


def _fetch(client: HttpClient, pmids: Sequence[int]) -> dict[int, dict[str, Any]]:
    where = f"icite {len(pmids)} pmids"

    def parse(response: Any) -> dict[int, dict[str, Any]]:
        try:
            body = response.json()
        except ValueError:
            raise TransientSourceError(f"{where}: body is not JSON") from None
        return parse_icite(body, where)

    result: dict[int, dict[str, Any]] = client.get(
        "pubs", params={"pmids": ",".join(str(p) for p in pmids), "format": "json"}, parse=parse
    )
    return result


def _write(engine: Engine, found: dict[int, dict[str, Any]], unknown: Iterable[int]) -> None:
    now = utcnow()
    a = articles.c
    with engine.begin() as conn:
        if found:
            conn.execute(icite_update(), icite_params(found, now))
        rest = [{"b_pmid": p, "b_now": now} for p in unknown]
        if rest:
            conn.execute(
                update(articles)
                .where(a.pmid == bindparam("b_pmid"))
                .values(icite_fetched_at=bindparam("b_now")),
                rest,
            )


def refresh_citations(
    settings: Settings,
    *,
    pmids: Iterable[int] | None = None,
    progress: bool = False,
) -> CitationCounts:
    """Fetch iCite data for the given PMIDs, or for every article due by the policy.

    Args:
        settings: ``icite_url``, ``icite_batch``, retry settings, database.
        pmids: Refresh exactly these (those not live in the store are ignored).
        progress: Log each batch.

    Returns:
        Requested, updated and unknown counts.

    Raises:
        TransientSourceError: iCite kept failing (batches already written stay).
    """
    engine = db.connect(settings)
    store = Store(engine)
    if pmids is None:
        wanted = due_pmids(engine, limit=settings.icite_max_per_run or None)
        target = "due"
    else:
        asked = sorted({int(p) for p in pmids})
        wanted = sorted(store.existing_pmids(asked))
        target = f"{len(asked)} pmids"
        if len(wanted) < len(asked):
            logger.info("%d of the PMIDs given are not live in the store", len(asked) - len(wanted))
    counts = CitationCounts()
    size = settings.icite_batch
    batches = [wanted[i : i + size] for i in range(0, len(wanted), size)]
    with (
        HttpClient(settings, settings.icite_url) as client,
        recorded_run(store, "citations", target=target, redact=client.redact) as run,
    ):
        run.details = {"citations": counts.to_dict(), "batches": len(batches)}
        for n, batch in enumerate(batches, 1):
            found = _fetch(client, batch)
            found = {p: v for p, v in found.items() if p in set(batch)}
            unknown = [p for p in batch if p not in found]
            _write(engine, found, unknown)
            counts = counts + CitationCounts(len(batch), len(found), len(unknown))
            run.counts = IngestCounts(updated=counts.updated, missing=counts.unknown)
            run.details["citations"] = counts.to_dict()
            if progress:
                logger.info("icite batch %d/%d: %s", n, len(batches), counts.to_dict())
        run.details.update(requests=client.requests_sent, retries=client.retries)
        logger.info("citations refreshed: %s", counts.to_dict())
    return counts
