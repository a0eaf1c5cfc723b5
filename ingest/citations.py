"""Citation impact from NIH iCite, refreshed on an age-dependent schedule.

:func:`refresh_citations` asks iCite (``GET {icite_url}pubs?pmids=1,2,3&format=json``,
at most ``settings.icite_batch`` ≤ 200 PMIDs per request) and fills the ``articles``
columns ``citation_count``, ``relative_citation_ratio``, ``citations_per_year``,
``icite_year``, ``icite_provisional``, ``icite_fetched_at`` (when iCite was asked: the
schedule below) and ``icite_values_at`` (what the values held are as of: only a fetch
that brings values moves it; a snapshot writes over values not newer than itself).

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

**Values: one rule for the API and the snapshot** (:func:`icite_values`, used by both
this refresh and :mod:`ingest.icite_snapshot`):

* a *missing-value marker* is NULL and the record is kept with its other values: JSON
  ``null``, an empty field, and the markers tabular writers print for a missing number
  (``NaN``, ``-NaN``, ``NA``, ``N/A``, ``null``, ``None``; any case, see
  :data:`MISSING_MARKERS`). iCite leaves a metric out this way where it is not computed
  (an RCR for an article too new to have one: the figshare snapshot's description and
  NIH's iSearch notes on missing RCRs), and the other metrics of the row are real; so is
  a field the record lacks (a key iCite dropped from its answer, a column absent from the
  snapshot's header), and a field it adds is ignored;
* a value that is present but *not possible* for its column rejects the whole record,
  with a reason naming the column and the value: text that is not a number (or not a
  flag), a count or year that is not a whole number or does not fit the 32-bit column,
  a negative ``citation_count``, ``relative_citation_ratio`` or ``citations_per_year``,
  an infinite ratio or rate, a year outside 1000..9999 (the four-digit years from
  :data:`ingest.dates.MIN_YEAR` the PubMed parser stores for an article; a year ahead of
  the clock is kept: iCite dates ahead-of-print records ahead). Such a record is no set of facts
  (one impossible value says the record is damaged, so its other values are not trusted
  either): it is quarantined (the snapshot: the row with its file and line; this refresh:
  the record's JSON, source kind ``icite``), counted as ``quarantined`` in the run, and
  the article keeps what it had. Here it still gets ``icite_fetched_at``, like a PMID
  iCite does not know, so it is asked again on the schedule above.

**A PMID given twice** (in one API answer, or in rows of one snapshot): one rule for both
loaders (:func:`merge_icite`): its records are stored as they would be one after the
other: the later record's values, and the earlier one's where the later lacks them (a
missing-value marker never erases a value). A damaged copy is quarantined on its own as
above; the intact copies are stored. (The snapshot, ~40M rows streamed in batches, can
hold no record of every PMID it has met, so "neither copy is trusted" cannot be its rule
whatever the batch size; the API keeps the same one, so the same data stores the same
values whichever loader reads it.) An answer that is not JSON (an HTML page, a body cut
short, JSON nested past the decoder's depth) is transient: retried.

Example:
    >>> counts = refresh_citations(settings)            # doctest: +SKIP
    >>> counts.to_dict()                                 # doctest: +SKIP
    {'requested': 1200, 'updated': 1150, 'unknown': 50}
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Update,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)

from ingest.boundaries import MAX_RAW_TAIL
from ingest.dates import MIN_YEAR
from ingest.fields import MAX_PMID, id_value
from ingest.http import HttpClient
from ingest.records import ICITE_REASON
from ingest.runs import Counts, IngestCounts, add_run_counts, recorded_run
from ingest.store import Store
from litpulse.core import db
from litpulse.core.db import mark_written, upsert
from litpulse.core.errors import (
    BusyError,
    InvalidRequestError,
    RateLimitedError,
    TransientSourceError,
)
from litpulse.core.schema import articles, quarantine
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow

__all__ = [
    "ICITE_FIELDS",
    "MISSING_MARKERS",
    "REFRESH_POLICY",
    "CitationCounts",
    "CitationsBusyError",
    "IciteAnswer",
    "due_pmids",
    "icite_held",
    "icite_not_newer",
    "icite_params",
    "icite_update",
    "icite_values",
    "merge_icite",
    "parse_icite",
    "read_icite",
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

    The rest, ``requested - updated - unknown`` (:attr:`rejected`), are records iCite
    returned with an impossible value: quarantined, their articles keep what they had.
    """

    requested: int = 0
    updated: int = 0
    unknown: int = 0

    @property
    def rejected(self) -> int:
        """Records returned but quarantined (an impossible value; see the module docstring)."""
        return self.requested - self.updated - self.unknown


def due_pmids(
    engine: Engine, *, now: dt.datetime | None = None, limit: int | None = None
) -> list[int]:
    """Live PMIDs whose citation data is missing or older than :data:`REFRESH_POLICY` allows.

    Args:
        engine: The store.
        now: The reference time (default: now, UTC).
        limit: At most this many PMIDs: never-fetched articles first (the newest first),
            then those fetched longest ago, so every due article comes up within a
            bounded number of runs; the rest wait for the next run.

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
        # never fetched first (the newest of them first), then whoever waited longest: a
        # young article due every week never keeps an older one out for good
        .order_by(a.icite_fetched_at.is_(None).desc(), a.icite_fetched_at.asc(),
                  age_ref.desc().nulls_last(), a.pmid)
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


#: Text that means "no value" in an iCite field (compared stripped and lower-cased): the
#: empty field of a CSV writer and the NaN/NA/null markers of pandas, R and JSON dumps.
MISSING_MARKERS = frozenset({"", "nan", "-nan", "+nan", "na", "n/a", "null", "none"})
#: Columns that can never be negative (counts, ratios and rates of citations).
_NON_NEGATIVE = frozenset({"citation_count", "relative_citation_ratio", "citations_per_year"})
#: The years an ``icite_year`` may hold: those the PubMed parser stores for an article
#: (four digits from ingest.dates.MIN_YEAR). No bound by the clock: iCite dates
#: ahead-of-print records a year or two ahead, and their metrics are real.
_YEARS = (MIN_YEAR, 9999)
_INT32 = (-(2**31), 2**31 - 1)


class _Impossible(ValueError):
    """A value present but not possible for its column (the message says why)."""


def _missing(value: Any) -> bool:
    """Whether ``value`` is a missing-value marker (:data:`MISSING_MARKERS`, JSON null, NaN)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in MISSING_MARKERS
    return False


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "y"):
        return True
    if text in ("no", "false", "0", "n"):
        return False
    raise _Impossible("is not a flag (True/False, Yes/No)")


def _int(value: Any) -> int:
    """A whole number: ``42``, ``"42"``, or ``42.0``/``"42.0"`` as a writer that keeps a
    column with missing values as floats prints it; never a fraction or bool."""
    if isinstance(value, bool):
        raise _Impossible("is not a whole number")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _Impossible("is not a whole number") from None
    if not math.isfinite(number) or not number.is_integer():
        raise _Impossible("is not a whole number")
    return int(number)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Impossible("is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _Impossible("is not a number") from None
    if not math.isfinite(number):
        raise _Impossible("is not finite")
    return number + 0.0  # -0.0 is 0.0


def _num(value: Any, kind: type, column: str = "") -> Any:
    """The value of one iCite field for ``column``: None for a missing-value marker.

    Raises:
        ValueError: The value is present but impossible for the column (the module
            docstring lists what is); the message says why, without the value.
    """
    if _missing(value):
        return None
    number: Any
    if kind is bool:
        return _bool(value)
    if kind is int:
        number = _int(value)
        # the columns are 32-bit; a year is one the parser stores, not 0 nor 10000
        low, high = _YEARS if column == "icite_year" else _INT32
        if not low <= number <= high:
            raise _Impossible("is out of range" if column != "icite_year" else "is not a year")
    else:
        number = _float(value)
    if column in _NON_NEGATIVE and number < 0:
        raise _Impossible("is negative: not a possible count, ratio or rate")
    return number


def icite_values(
    row: Mapping[str, Any], *, strict: bool = False
) -> tuple[int, dict[str, Any]] | None:
    """The PMID and the ``articles`` column values of one iCite record.

    A missing-value marker (:data:`MISSING_MARKERS`, JSON ``null``, NaN) is NULL in either
    mode; the record keeps its other values.

    Args:
        row: One iCite record: an object of the API's ``data`` list, or a row of the
            snapshot CSV as a dict (its values text, ``True``/``False`` for flags).
        strict: Raise on a value that is present but impossible (the rule of both
            loaders: the record is quarantined, see the module docstring); otherwise such
            a value becomes NULL (a lenient reading for callers that want one).

    Returns:
        ``(pmid, {column: value})``, or None for a record without a valid PMID
        (1..2^31-1) when not ``strict``.

    Raises:
        ValueError: ``strict`` and the PMID or a value is impossible (the message names
            the field, the value and why).
    """
    raw_pmid = row.get("pmid", row.get("_id"))
    pmid = None if raw_pmid is None else id_value(str(raw_pmid), MAX_PMID)
    if pmid is None:
        if strict:
            raise ValueError(f"pmid {str(raw_pmid)[:40]!r} is not a PMID")
        return None
    values: dict[str, Any] = {}
    for column, name in ICITE_FIELDS.items():
        raw = row.get(name)
        kind = _KINDS[column]
        try:
            value = _num(raw, kind, column)
        except _Impossible as exc:
            if strict:
                raise ValueError(
                    f"{name} {str(raw)[:40]!r} is not a valid {kind.__name__}: it {exc}"
                ) from None
            value = None
        values[column] = value
    return pmid, values


def merge_icite(values: dict[int, dict[str, Any]], pmid: int, got: dict[str, Any]) -> None:
    """Add one record's column values (:func:`icite_values`) to ``values``: the one rule of
    both loaders for a PMID given twice (the module docstring). A PMID met again keeps,
    for each value the later record lacks (NULL), the earlier one's: the records stored one
    after the other (:func:`icite_update` never writes a NULL over a value) give the same."""
    held = values.get(pmid)
    if held is None:
        values[pmid] = got
        return
    if any(v is not None and held[c] not in (None, v) for c, v in got.items()):
        logger.warning("iCite gives PMID %d twice with different values: the later's "
                       "are stored, the earlier's fill its blanks", pmid)  # fmt: skip
    values[pmid] = {c: held[c] if v is None else v for c, v in got.items()}


@dataclass(frozen=True)
class IciteAnswer:
    """One iCite JSON answer read by the loaders' rule (:func:`icite_values`, strict).

    Attributes:
        values: The column values per PMID of the records kept.
        rejected: ``(pmid or None, reason, record)`` of each record with an impossible
            value (or no valid PMID): to be quarantined, never written.
    """

    values: dict[int, dict[str, Any]]
    rejected: list[tuple[int | None, str, Any]] = field(default_factory=list)


def read_icite(body: Any, where: str = "icite") -> IciteAnswer:
    """The records of one iCite JSON answer: the values kept and the records rejected.

    A PMID answered twice is stored as its records one after the other
    (:func:`merge_icite`, the snapshot's rule too); a damaged copy is rejected on its own.

    Raises:
        TransientSourceError: The answer is not the expected JSON (an HTML error page
            behind a proxy, a truncated body).
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise TransientSourceError(f"{where}: unexpected answer (no data list)")
    answer = IciteAnswer({})
    for row in body["data"]:
        if not isinstance(row, dict):
            answer.rejected.append((None, "not a JSON object", row))
            continue
        try:
            parsed = icite_values(row, strict=True)
        except ValueError as exc:
            raw_pmid = row.get("pmid", row.get("_id"))
            pmid = None if raw_pmid is None else id_value(str(raw_pmid), MAX_PMID)
            answer.rejected.append((pmid, str(exc), row))
            continue
        if parsed is not None:
            merge_icite(answer.values, *parsed)
    return answer


def parse_icite(body: Any, where: str = "icite") -> dict[int, dict[str, Any]]:
    """The article column values per PMID from one iCite JSON answer (records with an
    impossible value left out: :func:`read_icite` returns them too).

    Raises:
        TransientSourceError: The answer is not the expected JSON (an HTML error page
            behind a proxy, a truncated body).
    """
    return read_icite(body, where).values


def icite_held() -> ColumnElement[bool]:
    """Whether an article holds iCite values (any of :data:`ICITE_FIELDS` not NULL)."""
    return or_(*(articles.c[c].is_not(None) for c in ICITE_FIELDS))


def icite_not_newer(at: Any) -> ColumnElement[bool]:
    """Where values of iCite as of ``at`` (a snapshot's date) may be written: live articles
    whose iCite values held are not newer than ``at``.

    The time of the values held is ``icite_values_at``: when the fetch or snapshot that
    wrote them was, not ``icite_fetched_at``, which a later fetch that brought no values
    moves too (a PMID iCite did not know, a record quarantined or refused: the values held
    are no newer for it); where it is NULL beside values (written by a writer that knows
    no ``icite_values_at``), ``icite_fetched_at``. An article holding none takes them
    whatever its times.
    """
    a = articles.c
    held_at = func.coalesce(a.icite_values_at, a.icite_fetched_at)
    return and_(a.is_deleted.is_(False), or_(held_at.is_(None), held_at <= at, ~icite_held()))


def icite_update(*, keep_newer: bool = False) -> Update:
    """The ``UPDATE`` of one article's iCite columns, for ``executemany``.

    Its parameters: ``b_pmid``, ``b_<column>`` for each of :data:`ICITE_FIELDS` and
    ``b_now`` (the fetch time stored, as ``icite_fetched_at`` and ``icite_values_at``).
    With ``keep_newer`` only live articles whose iCite values held are not newer than
    ``b_now`` are written (:func:`icite_not_newer`: a snapshot never overwrites a later API
    refresh's values).
    """
    a = articles.c
    stmt = (
        update(articles)
        .where(a.pmid == bindparam("b_pmid"))
        .values(
            {
                # a null from iCite is "not known", not "none": what the article had stays
                **{c: func.coalesce(bindparam(f"b_{c}"), a[c]) for c in ICITE_FIELDS},
                "icite_fetched_at": bindparam("b_now"),
                "icite_values_at": bindparam("b_now"),
            }
        )
    )
    if keep_newer:
        stmt = stmt.where(icite_not_newer(bindparam("b_now")))
    return stmt


def icite_params(found: Mapping[int, Mapping[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """The parameters of :func:`icite_update` for these PMIDs and values."""
    return [
        {"b_pmid": p, "b_now": now, **{f"b_{c}": v[c] for c in ICITE_FIELDS}}
        for p, v in found.items()
    ]


def _fetch(client: HttpClient, pmids: Sequence[int]) -> IciteAnswer:
    where = f"icite {len(pmids)} pmids"

    def parse(response: Any) -> IciteAnswer:
        try:
            body = response.json()
        except (ValueError, RecursionError):  # nested past the decoder's depth: not JSON either
            raise TransientSourceError(f"{where}: body is not JSON") from None
        return read_icite(body, where)

    result: IciteAnswer = client.get(
        "pubs", params={"pmids": ",".join(str(p) for p in pmids), "format": "json"}, parse=parse
    )
    return result


class _Liveness:
    """Whether iCite answers at all: the evidence :func:`_split` asks for when no part of
    a split batch is answered (both halves failed), which alone cannot tell a record
    iCite chokes on in each half from an iCite that is down.

    The question is one request for PMIDs outside the failing ones that iCite is known to
    answer for: one a request of this run got an answer for, else the newest live article
    holding iCite values (iCite answered for it before), else the next batch of the run.
    Answered: iCite is up and the failing PMIDs are the records' fault, split further.
    Not answered, or nothing to ask: iCite is down.

    Args:
        client: The iCite client.
        engine: The store (for an article iCite answered for before).
    """

    def __init__(self, client: HttpClient, engine: Engine) -> None:
        self.client = client
        self.engine = engine
        #: The run's next batch (the question of last resort).
        self.ahead: Sequence[int] = ()
        self._known: int | None = None  # a PMID of a request this run got an answer for

    def fetch(self, pmids: Sequence[int]) -> IciteAnswer:
        """:func:`_fetch`, remembering a PMID iCite answers for."""
        answer = _fetch(self.client, pmids)
        self._known = pmids[0]
        return answer

    def answers(self, without: Sequence[int]) -> bool:
        """Whether iCite answers a request for PMIDs other than ``without`` now.

        Raises:
            RateLimitedError: iCite asks to slow down (never taken for an answer).
        """
        probe = self._probe(set(without))
        if not probe:
            return False
        try:
            self.fetch(probe)
        except RateLimitedError:
            raise
        except (TransientSourceError, InvalidRequestError) as exc:
            logger.warning("iCite does not answer for PMIDs it answers for either: %s", exc)
            return False
        return True

    def _probe(self, without: set[int]) -> list[int]:
        if self._known is not None and self._known not in without:
            return [self._known]
        a = articles.c
        query = (
            select(a.pmid)
            .where(a.is_deleted.is_(False), icite_held(), a.pmid.not_in(sorted(without)))
            .order_by(a.pmid.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            pmid = conn.execute(query).scalar()
        if pmid is not None:
            return [int(pmid)]
        return [p for p in self.ahead if p not in without]


def _fetch_isolating(live: _Liveness, batch: Sequence[int]) -> tuple[IciteAnswer, list[int]]:
    """The answer for ``batch``, and the PMIDs iCite refuses to answer for.

    A batch iCite keeps refusing (an error status after every retry) is split in halves,
    and every failing half again, down to the single PMIDs it chokes on: one bad record
    costs its own PMID, not every batch after it, night after night, and so do two or
    more (both halves of a split may fail, one bad record in each). The refused PMIDs
    are stamped like a PMID iCite does not know: asked again on their schedule.

    iCite is down, not a record, when no part of a split is answered and iCite does not
    answer for PMIDs it is known to answer for either (:class:`_Liveness`): the error is
    raised (the run fails, what it wrote stays). A rate limit is never split.

    Raises:
        TransientSourceError, InvalidRequestError: iCite answers nothing.
    """
    try:
        return live.fetch(batch), []
    except RateLimitedError:
        raise
    except (TransientSourceError, InvalidRequestError) as exc:
        if len(batch) == 1 and not live.answers(batch):
            raise
        return _split(live, batch, exc)


def _split(
    live: _Liveness, batch: Sequence[int], error: Exception
) -> tuple[IciteAnswer, list[int]]:
    """:func:`_fetch_isolating` of a ``batch`` whose request failed with ``error``, iCite
    known to answer (a single PMID here is refused: it was split off a failing part)."""
    if len(batch) == 1:
        logger.warning("iCite refuses to answer for PMID %d: %s", batch[0], error)
        return IciteAnswer({}), list(batch)
    half = len(batch) // 2
    outcomes: list[tuple[Sequence[int], IciteAnswer | None, Exception | None]] = []
    for part in (batch[:half], batch[half:]):
        try:
            outcomes.append((part, live.fetch(part), None))
        except RateLimitedError:
            raise
        except (TransientSourceError, InvalidRequestError) as exc:
            outcomes.append((part, None, exc))
    if all(answer is None for _, answer, _ in outcomes) and not live.answers(batch):
        raise error  # neither half, nor PMIDs iCite answers for: iCite is down
    merged, refused = IciteAnswer({}), list[int]()
    for part, answer, failure in outcomes:
        if answer is None and failure is not None:
            answer, lost = _split(live, part, failure)
            refused += lost
        if answer is not None:
            merged.values.update(answer.values)
            merged.rejected.extend(answer.rejected)
    return merged, refused


#: The lease one citation refresh holds: two at once would ask iCite for the same articles.
REFRESH_LEASE = "citations-refresh"


class CitationsBusyError(BusyError):
    """Another citation refresh of this store holds :data:`REFRESH_LEASE`; nothing was
    asked."""
#: The quarantine's ``source_kind`` of an iCite API record.
SOURCE_KIND = "icite"


def _quarantine_rows(
    rejected: Iterable[tuple[int | None, str, Any]], location: str, run_id: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """The quarantine rows of rejected API records: the record's JSON, the reason, the
    request (the same record met again is quarantined once: the digest is its JSON's)."""
    rows = []
    for pmid, reason, record in rejected:
        raw = json.dumps(record, sort_keys=True, default=str)[:MAX_RAW_TAIL]
        rows.append({
            "digest": hashlib.sha256(f"{SOURCE_KIND}\n{raw}".encode()).hexdigest(),
            "pmid": pmid,
            "reason": f"{ICITE_REASON}record: {reason}",
            "source_kind": SOURCE_KIND,
            "source_location": location if pmid is None else f"{location}?pmids={pmid}",
            "line": None,
            "raw_xml": raw,
            "run_id": run_id,
            "created_at": now,
        })  # fmt: skip
    return rows


def _write(
    engine: Engine,
    found: Mapping[int, dict[str, Any]],
    unknown: Iterable[int],
    bad: Sequence[dict[str, Any]] = (),
    *,
    run_id: int | None = None,
    delta: IngestCounts | None = None,
) -> None:
    """Write one batch: the values found; ``icite_fetched_at`` alone for the PMIDs not
    found or rejected (they keep what they had); the rejected records' quarantine rows;
    ``delta`` added to run ``run_id``'s counts in the same transaction (a run killed after
    it counts what it stored: :func:`ingest.runs.add_run_counts`)."""
    now = utcnow()
    a = articles.c
    with engine.begin() as conn:
        if run_id is not None and delta is not None:
            add_run_counts(conn, run_id, delta)
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
        if bad:
            upsert(conn, quarantine, list(bad), keys=["digest"], update=[])
        if found:  # last: what a search ranks by changed (store_version)
            mark_written(conn, "citations")


def refresh_citations(
    settings: Settings,
    *,
    pmids: Iterable[int] | None = None,
    progress: bool = False,
    wait_s: float = 0.0,
) -> CitationCounts:
    """Fetch iCite data for the given PMIDs, or for every article due by the policy.

    Args:
        settings: ``icite_url``, ``icite_batch``, retry settings, database.
        pmids: Refresh exactly these (those not live in the store are ignored).
        progress: Log each batch.
        wait_s: Seconds to wait for another citation refresh to end before giving up.

    Returns:
        Requested, updated and unknown counts (the rest were quarantined: an impossible
        value, see the module docstring; the run counts them as ``quarantined``).

    Raises:
        TransientSourceError: iCite kept failing (batches already written stay).
        CitationsBusyError: Another citation refresh of this store runs now (lease
            :data:`REFRESH_LEASE`; after ``wait_s``): it would ask iCite for the same
            articles.
    """
    engine = db.connect(settings)
    lease = db.take_lease(engine, REFRESH_LEASE, lambda who: CitationsBusyError(
        f"busy: another citation refresh ({who}) runs on this store; nothing was asked: "
        "run again when it is done"
    ), wait_s=wait_s)  # fmt: skip
    with lease:
        return _refresh(settings, engine, pmids, progress)


def _refresh(
    settings: Settings, engine: Engine, pmids: Iterable[int] | None, progress: bool
) -> CitationCounts:
    """:func:`refresh_citations` under its lease."""
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
    quarantined = 0  # records quarantined (a PMID's damaged copy beside an intact one too)
    size = settings.icite_batch
    batches = [wanted[i : i + size] for i in range(0, len(wanted), size)]
    with (
        HttpClient(settings, settings.icite_url, url_setting="LITPULSE_ICITE_URL") as client,
        recorded_run(store, "citations", target=target, redact=client.redact) as run,
    ):
        run.details = {"citations": counts.to_dict(), "batches": len(batches), "rejected": 0}
        location = client.redact(client.url("pubs"))
        live = _Liveness(client, engine)
        for n, batch in enumerate(batches, 1):
            live.ahead = batches[n] if n < len(batches) else ()
            answer, choked = _fetch_isolating(live, batch)
            if choked:  # asked again on their schedule, like a PMID iCite does not know
                run.details["icite_refused"] = sorted(
                    {*run.details.get("icite_refused", []), *choked})[:1000]
            in_batch = set(batch)
            found = {p: v for p, v in answer.values.items() if p in in_batch}
            rejected = [r for r in answer.rejected if r[0] is None or r[0] in in_batch]
            # a damaged copy beside an intact one: the intact one is stored (merge_icite)
            refused = {r[0] for r in rejected if r[0] is not None and r[0] not in found}
            for pmid, reason, _ in rejected:
                logger.warning("iCite record of pmid %s quarantined: %s", pmid, reason)
            bad = _quarantine_rows(rejected, location, run.id, utcnow())
            unknown = [p for p in batch if p not in found and p not in refused]
            delta = IngestCounts(
                updated=len(found), missing=len(unknown), quarantined=len(rejected)
            )
            # PostgreSQL may roll it back to break a deadlock with an ingest batch
            db.retry_conflicts(
                functools.partial(_write, engine, found, [*unknown, *sorted(refused)], bad,
                                  run_id=run.id, delta=delta),
                f"iCite batch {n}",
            )  # fmt: skip
            counts = counts + CitationCounts(len(batch), len(found), len(unknown))
            quarantined += len(rejected)
            run.counts = IngestCounts(
                updated=counts.updated, missing=counts.unknown, quarantined=quarantined
            )
            run.details["citations"] = counts.to_dict()
            run.details["rejected"] = quarantined
            if progress:
                logger.info("icite batch %d/%d: %s", n, len(batches), counts.to_dict())
        run.details.update(requests=client.requests_sent, retries=client.retries)
        logger.info("citations refreshed: %s", counts.to_dict())
    return counts
