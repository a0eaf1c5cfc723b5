"""Data-quality checks run after each nightly ingest.

A run can succeed technically and still be wrong: NCBI returned nothing on a weekday,
a malformed update file sent a large share of records to quarantine, or the ingest has
stopped moving forward (neither the runs nor the dates show new records for days).
:func:`check_ingest` looks at the counts of one run, its window, the ingest runs and the
store, and raises :class:`~litpulse.core.errors.DataQualityError` (never retried:
repeating the same run gives the same answer) naming every failed check.

Example:
    >>> from litpulse.core.settings import Settings
    >>> s = Settings.from_env({}, quality_max_staleness_days=0)
    >>> report = check_ingest(s, {"inserted": 10, "quarantined": 0}, raise_on_failure=False)
    >>> report.ok
    True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from ingest.checkpoints import Checkpoints, forget_listed, listed_pmids
from ingest.dates import COVERED_HOURS, covered_days, each_day, searched_days
from ingest.runs import WINDOW_SOURCES, IngestCounts, judge_runs
from litpulse.core.errors import ConfigError, DataQualityError
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.core.timeutil import as_date, as_utc, iso

__all__ = [
    "QualityReport",
    "check_ingest",
    "counts_as_dict",
    "judge_runs",
    "newest_entrez_date",
    "progress_watermark",
]

logger = logging.getLogger(__name__)

_COUNT_FIELDS = tuple(f.name for f in dataclasses.fields(IngestCounts))
#: The checkpoints of the checks (the weekdays found without a record).
SCOPE = "quality"


@dataclass(frozen=True)
class QualityReport:
    """The outcome of the checks on one ingest run.

    Attributes:
        ok: Whether every check passed.
        problems: One sentence per failed check.
        records: Records the source returned (inserted + updated + unchanged + deleted +
            quarantined).
        quarantine_rate: Share of the records new to the check quarantined (0..1): of the
            parsed records, those an earlier check judged, met again (``requarantined``
            and ``reseen``), count neither above nor below the line.
        requarantined: Quarantined elements met again (judged by an earlier check).
        reseen: Unchanged records and deletions met again, whose stored rows an earlier
            check judged (:attr:`~ingest.runs.IngestCounts.reseen`).
        newest_entrez_date: Newest entrez date of a live article in the store.
        window_start: Start of the checked window (UTC), when known.
        window_end: End of the checked window (UTC), when known.
        checks: The checks that ran.
        progress_watermark: End of the newest succeeded ingest window that inserted or
            updated records (this run's window when it did), when known.
        progress: What showed the ingest moving forward (empty when it did not, or when
            the staleness check did not run): ``"run"`` (this run inserted or updated
            records), ``"runs"`` (a recent window did) and/or ``"dates"`` (a recent entrez
            date is in the store).
    """

    ok: bool
    problems: tuple[str, ...] = ()
    records: int = 0
    quarantine_rate: float = 0.0
    requarantined: int = 0
    reseen: int = 0
    newest_entrez_date: dt.date | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    checks: tuple[str, ...] = field(default=())
    progress_watermark: dt.datetime | None = None
    progress: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.quarantine_rate <= 1.0:
            raise ConfigError(f"quarantine_rate must be within [0, 1], got {self.quarantine_rate}")
        if self.records < 0:
            raise ConfigError(f"records must be >= 0, got {self.records}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (dates as ISO strings)."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "checks": list(self.checks),
            "records": self.records,
            "quarantine_rate": round(self.quarantine_rate, 6),
            "requarantined": self.requarantined,
            "reseen": self.reseen,
            "newest_entrez_date": iso(self.newest_entrez_date),
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "progress_watermark": iso(self.progress_watermark),
            "progress": list(self.progress),
        }


def counts_as_dict(counts: IngestCounts | Mapping[str, Any] | None) -> dict[str, int]:
    """The ingest counts of an ``IngestCounts``, a dict (e.g. from XCom) or ``None``.

    Counts a mapping lacks are 0.
    """
    if counts is None:
        return IngestCounts().to_dict()
    if isinstance(counts, IngestCounts):
        return counts.to_dict()
    if isinstance(counts, Mapping):
        return {name: int(counts.get(name, 0) or 0) for name in _COUNT_FIELDS}
    raise ConfigError(f"counts must be IngestCounts or a mapping, got {type(counts).__name__}")


def newest_entrez_date(engine: Engine) -> dt.date | None:
    """Newest entrez (or, lacking it, best) date of a live article; ``None`` when empty."""
    from litpulse.core.schema import articles

    with engine.connect() as conn:
        newest = conn.execute(
            select(func.max(func.coalesce(articles.c.entrez_date, articles.c.best_date))).where(
                articles.c.is_deleted.is_(False)
            )
        ).scalar()
    return as_date(newest)  # SQLite returns the coalesced date as text


def progress_watermark(engine: Engine) -> dt.datetime | None:
    """End of the newest succeeded E-utilities/update-file window that inserted or updated
    records (what the runs did, whatever dates the records carry); ``None`` when none did.
    """
    from litpulse.core.schema import ingest_runs

    r = ingest_runs.c
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(r.window_end)).where(
                r.source.in_(WINDOW_SOURCES),
                r.status == RunStatus.SUCCEEDED,
                r.window_end.is_not(None),
                r.inserted + r.updated > 0,
            )
        ).scalar()
    return as_utc(value)


def check_ingest(
    settings: Settings,
    counts: IngestCounts | Mapping[str, Any] | None,
    window: tuple[dt.datetime, dt.datetime] | None = None,
    *,
    engine: Engine | None = None,
    raise_on_failure: bool = True,
) -> QualityReport:
    """Check the outcome of one ingest run.

    Checks, each configurable:

    * **empty weekday** — a window whose searched days (PubMed's, from
      ``LITPULSE_WINDOW_OVERLAP_DAYS`` before its start: :func:`ingest.dates.searched_days`)
      hold a Monday-Friday and that returned no record at all
      (``LITPULSE_QUALITY_EXPECT_WEEKDAYS``): a Saturday window searches Friday again.
      ``counts`` are the window's whole: a rerun of a finished window counts the batches
      it skipped, or its records come back unchanged, so it is not empty. Articles the
      store holds of those days do not make it so: the window before searched the first
      day too. Day by day (with the run's record of its answer: a window of all PubMed
      that :func:`ingest.eutils.ingest_window` searched), each PubMed weekday the window
      covers for at least :data:`ingest.dates.COVERED_HOURS` hours
      (:func:`ingest.dates.covered_days`) must have a listed record entered on it: a
      catch-up window whose own days a mirror has not synced does not pass on the records
      of its overlap day, which are the day before its start.
      A weekday an earlier check found so, found so again by a window ending 20 hours or
      more later while later days have records, is taken for a day PubMed added nothing
      on (a holiday: warned, not failed for ever); listed PMIDs the store holds no row of
      (quarantined, owed) may be an empty weekday's and stand for it.
    * **short answer** (``short_answer``, with that record) — ESearch listed no record of
      a searched day while the store holds live records entered then; or EFetch still
      serves stored records entered in its days that ESearch did not list
      (``details["unlisted"]["missed"]``); or more stored records of its days are
      unlisted than withdrawals explain (``details["unlisted"]["skipped"]``): a degraded
      ESearch answers Count 0 without an error, and a day a passed window left out is
      never searched again. Weekend days included: the Monday window of the DAG searches
      Saturday and Sunday only.
    * **quarantine rate** — the bad elements new to the check (quarantined, less those
      met again: :attr:`~ingest.runs.IngestCounts.requarantined`) / the records new to
      the check (parsed, less the bad elements met again and the unchanged records met
      again: :attr:`~ingest.runs.IngestCounts.reseen`) above
      ``LITPULSE_MAX_QUARANTINE_RATE``, when at least ``LITPULSE_QUALITY_MIN_QUARANTINED``
      were (fewer: a warning). What an earlier check judged, good or bad, met again (the
      next window's overlap day, a failed window searched again), was judged then: it
      neither dilutes the share (a day's 5 bad records of 20 are 25 %, not 5 of the 520
      its overlap day makes) nor fails every night after one bad day (a warning says the
      bad ones again). What a run killed or failed before its check stored, met again,
      was judged by no check: the run meeting it takes it over and judges it, good and
      bad alike, so a window searched again reads as the clean run would have. With a
      ``window``, the check marks that window's runs judged, with their quarantine
      entries, whatever its outcome.
    * **not moving forward** (``stale_watermark``) — judged from what the runs did *and*
      from dates, with ``N = LITPULSE_QUALITY_MAX_STALENESS_DAYS`` (0 disables). The ingest
      moves forward when this run inserted or updated records (``"run"``), or a succeeded
      window that did ends at most ``N`` days before this window's end (``"runs"``, the
      progress watermark), or the newest entrez date in the store is at most ``N`` days
      older than the window end (``"dates"``). It fails only when none of them holds, and
      the message says what each showed: a mirror or a replay whose records carry old
      entrez dates passes as long as the runs insert records.

    Args:
        settings: The settings (thresholds and store).
        counts: The run's ``IngestCounts`` (or its ``to_dict()``).
        window: ``(start, end)`` of the ingested window; ``None`` for file ingests, where
            only the quarantine rate is checked.
        engine: The store (default: ``litpulse.core.db.connect(settings)``).
        raise_on_failure: Raise instead of returning a failed report.

    Returns:
        The report (``ok`` true when every check passed).

    Raises:
        DataQualityError: A check failed and ``raise_on_failure`` is true; the message
            lists every failed check.

    Longer than the usual 80 lines: a third is this docstring, the rest is the checks
    in the order they are reported, each a short block adding to the same report.
    """
    c = counts_as_dict(counts)
    if window is not None and isinstance(counts, Mapping) and "reseen" not in counts:
        c["reseen"] = _older_release_reseen(settings, engine, c, window)
    parsed = c["inserted"] + c["updated"] + c["unchanged"] + c["quarantined"]
    records = parsed + c["deleted"]
    again = min(c["requarantined"], c["quarantined"])
    reseen = min(c["reseen"], c["unchanged"])
    new_bad = c["quarantined"] - again
    judged = parsed - again - reseen  # the records new to this check
    rate = new_bad / judged if judged else 0.0
    of = f"{new_bad} of {judged} records quarantined ({rate:.2%}), of the records new to the check"
    if again or reseen:
        of += f" ({again + reseen} more met again, judged by an earlier check)"
    problems: list[str] = []
    checks = ["quarantine_rate"]

    if again:
        logger.warning(
            "%d quarantined element(s) met again, in quarantine from an earlier run (not "
            "judged again); see `litpulse quarantine`", again,
        )  # fmt: skip
    if rate > settings.max_quarantine_rate:
        if new_bad >= settings.quality_min_quarantined:
            problems.append(
                f"{of}, above "
                f"LITPULSE_MAX_QUARANTINE_RATE={settings.max_quarantine_rate:.2%} "
                f"(LITPULSE_QUALITY_MIN_QUARANTINED={settings.quality_min_quarantined}); "
                "see `litpulse quarantine`"
            )
        else:
            logger.warning(
                "%s: above the rate, but fewer than LITPULSE_QUALITY_MIN_QUARANTINED=%d; "
                "see `litpulse quarantine`", of, settings.quality_min_quarantined,
            )  # fmt: skip

    start = end = None
    newest = None
    watermark = None
    progress: list[str] = []
    if window is not None:
        start, end = (as_utc(w) for w in window)
        if end <= start:
            raise ConfigError(f"window end {end.isoformat()} must be after its start")
        if engine is None:
            from litpulse.core.db import connect

            engine = connect(settings)
        if settings.quality_expect_weekdays:
            checks.append("empty_weekday")
            # a repeated or resumed window is judged whole (its counts include the
            # batches an earlier try stored: ingest.eutils.ingest_window(whole_window=)),
            # so no count is an empty source; the store's articles of the window's days
            # do not say so (the window before searched its first day too)
            # the days ESearch searched, the overlap day included: a Saturday window
            # searches Friday again, and an empty answer for a Friday is no healthy source
            first, last = searched_days(settings, start, end)
            if records == 0 and _has_weekday(first, last):
                problems.append(
                    f"the window {start.isoformat()}..{end.isoformat()} (PubMed's days "
                    f"{first}..{last}, LITPULSE_WINDOW_OVERLAP_DAYS included) includes a "
                    "weekday but returned no record; "
                    "PubMed adds records every weekday (check the source and the query; set "
                    "LITPULSE_QUALITY_EXPECT_WEEKDAYS=false to allow empty weekdays)"
                )
        answer = _window_answer(engine, start, end)
        if answer is not None:
            problems += _answer_problems(settings, engine, answer, start, end, records)
            checks.append("short_answer")
        if settings.quality_max_staleness_days:
            checks.append("stale_watermark")
            days = settings.quality_max_staleness_days
            limit = end - dt.timedelta(days=days)
            newest = newest_entrez_date(engine)
            watermark = progress_watermark(engine)
            changed = c["inserted"] + c["updated"]
            if changed:
                progress.append("run")
            if watermark is not None and watermark >= limit:
                progress.append("runs")
            if newest is not None and newest >= limit.date():
                progress.append("dates")
            if not progress:
                problems.append(
                    "the ingest is not moving forward: this run inserted or updated no record; "
                    "the newest window that did "
                    + (f"ended {watermark.isoformat()}" if watermark else "does not exist")
                    + f"; the newest entrez date in the store is {newest or 'missing'} — all "
                    f"more than {days} days before the window end {end.date()} "
                    "(LITPULSE_QUALITY_MAX_STALENESS_DAYS); look for failed earlier runs"
                )
            elif "dates" not in progress:
                logger.warning(
                    "the newest entrez date in the store is %s, more than %d days before the "
                    "window end %s, but the ingest moves forward by what the runs did (%s; "
                    "progress watermark %s): a mirror or a replay?",
                    newest or "missing", days, end.date(), "+".join(progress), iso(watermark),
                )
        _mark_judged(engine, start, end)  # whatever the outcome: see the rate's rule
        # read above for the last time: the judged window's list of PMIDs goes
        forget_listed(Checkpoints(engine), settings, start, end)

    report = QualityReport(
        ok=not problems,
        problems=tuple(problems),
        records=records,
        quarantine_rate=rate,
        requarantined=again,
        reseen=reseen,
        newest_entrez_date=newest,
        window_start=start,
        window_end=end,
        checks=tuple(checks),
        progress_watermark=watermark,
        progress=tuple(progress),
    )
    if problems:
        logger.warning("data-quality check failed: %s", "; ".join(problems))
        if raise_on_failure:
            raise DataQualityError("data-quality check failed: " + "; ".join(problems))
    else:
        logger.info("data-quality check passed: %d records; %s", records, of)
    return report


def _window_answer(engine: Engine, start: dt.datetime, end: dt.datetime) -> dict[str, Any] | None:
    """What the newest succeeded E-utilities run of the window ``[start, end)`` recorded of
    its answer (:func:`ingest.eutils.ingest_window`'s details: ``days``, ``unlisted``), when
    it searched all of PubMed; ``None`` otherwise (an update-file window, a query, counts
    from elsewhere, a run of a release that recorded no days)."""
    from litpulse.core.schema import ingest_runs

    r = ingest_runs.c
    with engine.connect() as conn:
        details = conn.execute(
            select(r.details)
            .where(r.source == "eutils", r.status == RunStatus.SUCCEEDED,
                   r.window_start == start, r.window_end == end)
            .order_by(r.id.desc())
            .limit(1)
        ).scalar()  # fmt: skip
    if not details or details.get("query") or "days" not in details:
        return None
    return dict(details)


def _answer_problems(
    settings: Settings,
    engine: Engine,
    answer: Mapping[str, Any],
    start: dt.datetime,
    end: dt.datetime,
    records: int,
) -> list[str]:
    """The failed checks of what a window's ESearch answered, day by day (see
    :func:`check_ingest`: short answer, and the empty-weekday rule's days)."""
    problems: list[str] = []
    days = answer.get("days") or {}
    unlisted = answer.get("unlisted") or {}
    short = [str(d) for d in days.get("short") or ()]
    if short:
        problems.append(
            f"the window's ESearch listed no record of PubMed's day(s) {', '.join(short)}, "
            "though the store holds live records entered then: its answer came back short "
            "(a degraded ESearch answers Count 0 without an error); the window stays held "
            "and is searched again by the next run"
        )
    if unlisted.get("skipped"):
        problems.append(
            f"the window's ESearch left out more of the stored records entered in its days "
            f"than withdrawals explain ({unlisted['skipped']}): its answer came back short; "
            "the window stays held and is searched again by the next run"
        )
    if unlisted.get("missed"):
        problems.append(
            f"the window's ESearch did not list {unlisted['missed']} stored record(s) entered "
            "in its days that EFetch still serves: its answer came back short; the window "
            "stays held and is searched again by the next run"
        )
    if settings.quality_expect_weekdays and records:  # none at all: said above
        problems += _unanswered_weekdays(engine, days, start, end, records)
    return problems


#: A weekday an earlier check found without a record is taken for a day PubMed added
#: nothing on (a holiday) when a window ending this much later finds it so again, while
#: its answer holds records of a later day: the source has synced past it.
_EMPTY_AGAIN = dt.timedelta(hours=20)


def _unanswered_weekdays(
    engine: Engine, days: Mapping[str, Any], start: dt.datetime, end: dt.datetime, records: int
) -> list[str]:
    """The empty-weekday rule's days: each PubMed weekday the window covers for
    :data:`~ingest.dates.COVERED_HOURS` hours must have a listed record entered on it."""
    from ingest.store import Store

    entered = {str(k): int(v) for k, v in (days.get("entered") or {}).items() if v}
    missing = [d for d in covered_days(start, end)
               if d.weekday() < 5 and d.isoformat() not in entered]  # fmt: skip
    if not missing:
        return []
    unplaced = int(days.get("unplaced") or 0)
    if unplaced >= len(missing):  # its records may be those the store holds no row of
        logger.warning(
            "PubMed's weekday(s) %s returned no record the store holds, and %d listed PMIDs "
            "are quarantined or owed (their days unknown): the quarantine rate and the owed "
            "PMIDs judge them", ", ".join(map(str, missing)), unplaced,
        )  # fmt: skip
        return []
    store = Store(engine)
    newest = max(entered, default="")
    failing: list[dt.date] = []
    for day in missing:
        key = f"empty weekday {day.isoformat()}"
        seen = store.get_checkpoint(SCOPE, key)
        first_end = as_utc(dt.datetime.fromisoformat(seen["value"]["window_end"])) if seen else None
        if first_end is not None and end - first_end >= _EMPTY_AGAIN and newest > day.isoformat():
            logger.warning(
                "PubMed's weekday %s returned no record again (first found so by the window "
                "ending %s), while later days did: taken for a day PubMed added nothing on",
                day, first_end.isoformat(),
            )  # fmt: skip
            continue
        if seen is None:
            store.set_checkpoint(SCOPE, key, "empty", {"window_end": end.isoformat()})
        failing.append(day)
    if not failing:
        return []
    return [
        f"PubMed's weekday(s) {', '.join(d.isoformat() for d in failing)}, each covered by "
        f"the window {start.isoformat()}..{end.isoformat()} for at least {COVERED_HOURS} "
        f"hours, returned no record entered on them ({records} records came back, of other "
        "days: the day before the window, revisions); PubMed adds records every weekday (a "
        "source not synced yet? The window stays held and is searched again; a day still "
        f"empty for a window ending {_EMPTY_AGAIN.total_seconds() / 3600:.0f} hours or more "
        "later, while later days have records, is taken for a day PubMed added nothing on; "
        "set LITPULSE_QUALITY_EXPECT_WEEKDAYS=false to allow empty weekdays)"
    ]


def _mark_judged(engine: Engine, start: dt.datetime, end: dt.datetime) -> int:
    """Mark the window runs of ``[start, end)`` judged, with the runs whose batches they
    resumed (``details["resumed_runs"]``: a nightly rerun later the same day ends at
    another time, yet counts the batches its first try stored); see :func:`judge_runs`."""
    from litpulse.core.schema import ingest_runs

    r = ingest_runs.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.id, r.details).where(
                r.source.in_(WINDOW_SOURCES), r.window_start == start, r.window_end == end
            )
        ).all()
    ids = {int(run_id) for run_id, _ in rows}
    for _, details in rows:
        ids.update(int(p) for p in (details or {}).get("resumed_runs", ()))
    return judge_runs(engine, ids)


def _older_release_reseen(
    settings: Settings,
    engine: Engine | None,
    counts: Mapping[str, int],
    window: tuple[dt.datetime, dt.datetime],
) -> int:
    """The records met again of a window whose counts a release before ``reseen`` made
    (the DAG's ingest task ran before the upgrade, its check after): those of the
    window's listed PMIDs whose rows a check had judged (:meth:`Store.judged_among`),
    at most its ``unchanged``. 0 when the window's search is not recorded."""
    from ingest.store import Store
    from litpulse.core.db import connect

    if not counts["unchanged"]:
        return 0
    store = Store(engine or connect(settings))
    pmids = listed_pmids(store, settings, *window)
    if pmids is None:
        return 0
    met, _ = store.judged_among(pmids)
    return min(met, counts["unchanged"])


def _has_weekday(first: dt.date, last: dt.date) -> bool:
    """Whether the days ``first``..``last`` (both included) hold a Monday-Friday."""
    return any(day.weekday() < 5 for day in each_day(first, last))
