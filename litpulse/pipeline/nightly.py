"""The nightly pipeline in one process (its planning decisions: :mod:`litpulse.pipeline.planning`).

``litpulse nightly`` (:func:`run_nightly`) runs the same chain as the Airflow DAGs —
ingest → citations → data quality → embed → index → retrain when due → the saved
searches' digest — for sites without
Airflow (a cron line) and for tests. Each step is resumable on its own (ingest
checkpoints, per-chunk embedding transactions, write-aside index publishing), so a killed
run is simply started again.

Concurrency: a run holds the database lease ``nightly`` (:func:`litpulse.core.db.acquire_lease`)
for its whole duration, renewed by its heartbeat thread. A second run that finds the lease
held waits up to ``wait_s`` seconds (default 0) and then raises :class:`NightlyBusyError`
(the CLI exits 75, ``EX_TEMPFAIL``) naming the holder. A holder on this host whose process
no longer exists is taken over at once; elsewhere a dead holder's lease expires after
:data:`LEASE_TTL_S` seconds. A run whose lease was taken over meanwhile (its heartbeat
stalled that long) raises :class:`~litpulse.core.errors.LeaseLostError` before its next step.

Example:
    >>> files = ["pubmed26n0001.xml.gz"]
    >>> report = run_nightly(settings, source="files", files=files)  # doctest: +SKIP
    >>> report.ingest["inserted"]  # doctest: +SKIP
    1000
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine

from litpulse.core import db
from litpulse.core.errors import BusyError, ConfigError
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, iso, utcnow
from litpulse.pipeline.digest import digest_step
from litpulse.pipeline.planning import (
    PENDING_CHECK,
    last_watermark,
    leased_reindex,
    lexical_negatives,
    promoted_model,
    release_watermark,
    retrain_due,
    withhold_watermark,
)

__all__ = [
    "LEASE_NAME",
    "LEASE_TTL_S",
    "SOURCES",
    "NightlyBusyError",
    "NightlyReport",
    "check_window",
    "citations_step",
    "duration",
    "ingest_eutils_window",
    "run_nightly",
]

logger = logging.getLogger(__name__)

#: Name of the database lease a nightly run holds.
LEASE_NAME = "nightly"
#: Seconds a lease lives without renewal (a dead holder on another host blocks this long).
LEASE_TTL_S = db.LEASE_TTL_S
#: Ingest sources of :func:`run_nightly`.
SOURCES = ("eutils", "updatefiles", "files")

T = TypeVar("T")

#: Fewer training steps than this rarely teach a model anything; the summary says so.
FEW_STEPS = 5

#: What each step does, announced on stderr as it starts (with ``progress``).
STEP_TITLES = {
    "ingest": "reading and storing records",
    "citations": "refreshing iCite citation counts",
    "quality": "checking data quality",
    "index": "embedding new articles and publishing the index",
    "retrain": "fine-tuning the model, evaluating and gating the candidate",
}


class NightlyBusyError(BusyError):
    """Another nightly run holds the ``nightly`` lease; try again later."""

    retryable = True


# ------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class NightlyReport:
    """What one :func:`run_nightly` did, step by step.

    Attributes:
        source: ``eutils``, ``updatefiles`` or ``files``.
        window_start: Start of the ingested E-utilities window (``None`` otherwise).
        window_end: End of that window.
        ingest: The ingest counts.
        quality: The data-quality report.
        citations: The citation counts (``None`` when skipped).
        embedded: Articles embedded.
        index: The index report (``None`` when nothing changed and no index was built).
        retrain: The retrain report (``None`` when not run).
        retrain_decision: Why retraining ran or not.
        index_step: The index step's own report (``index`` is the promotion's when the
            retrain promoted a model and re-indexed for it).
        steps: Seconds spent per step, in order.
        started_at: When the run began (UTC).
        finished_at: When it ended (UTC).
        digest: The saved searches' digest (:func:`litpulse.pipeline.digest.digest_step`).
    """

    source: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    ingest: dict[str, int]
    quality: dict[str, Any]
    citations: dict[str, Any] | None
    embedded: int
    index: dict[str, Any] | None
    retrain: dict[str, Any] | None
    retrain_decision: dict[str, Any] | None
    steps: tuple[tuple[str, float], ...] = field(default=())
    index_step: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    digest: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"`source` must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.embedded < 0:
            raise ConfigError(f"`embedded` must be >= 0, got {self.embedded}")

    @property
    def promoted(self) -> str | None:
        """The model version promoted by this run, if any."""
        return promoted_model(self.retrain) if self.retrain else None

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """One row per step, (step, time, what happened), for a person to read at a glance.

        Steps that did not run say why (``skipped``, the retrain decision); the last row
        is the total.
        """
        took = dict(self.steps)
        rows: list[tuple[str, str, str]] = [
            ("ingest", duration(took.get("ingest")), _ingest_text(self.ingest))
        ]
        rows.append((
            "citations", duration(took.get("citations")),
            _counts_text(self.citations) if self.citations is not None else "skipped",
        ))
        if "quality" in took:
            ok = self.quality.get("ok", True)
            problems = "; ".join(map(str, self.quality.get("problems") or []))
            rows.append(("quality", duration(took["quality"]),
                         "ok" if ok else f"FAILED: {problems}"))
        if "index" in took:
            own = self.index_step if self.index_step is not None else self.index
            rows.append(("index", duration(took["index"]), _index_text(self.embedded, own)))
        if self.retrain is not None:
            rows.append(("retrain", duration(took.get("retrain")), _retrain_text(self.retrain)))
        elif self.retrain_decision is not None:
            rows.append(("retrain", "-", str(self.retrain_decision.get("reason", "not due"))))
        else:
            rows.append(("retrain", "-", "disabled"))
        if self.digest is not None:
            rows.append(("digest", duration(took.get("digest")), _digest_text(self.digest)))
        rows.append(("total", duration(sum(took.values())), ""))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "source": self.source,
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "ingest": dict(self.ingest),
            "quality": self.quality,
            "citations": self.citations,
            "embedded": self.embedded,
            "index": self.index,
            "retrain": self.retrain,
            "retrain_decision": self.retrain_decision,
            "promoted": self.promoted,
            "steps": [{"step": n, "seconds": round(s, 3)} for n, s in self.steps],
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "digest": self.digest,
        }


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``41.2 s``, ``2 min 41 s``; ``-`` for a step that did not run."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _counts_text(counts: dict[str, Any]) -> str:
    if counts.get("skipped"):
        return f"skipped: {counts['skipped']}"
    parts = [f"{k} {v:,}" for k, v in counts.items() if isinstance(v, int) and v]
    return ", ".join(parts) or "nothing to do"


def _ingest_text(counts: dict[str, int]) -> str:
    words = {"inserted": "new", "updated": "updated", "deleted": "deleted",
             "quarantined": "quarantined", "unchanged": "unchanged", "missing": "missing"}
    parts = [f"{counts.get(k, 0):,} {w}" for k, w in words.items()
             if counts.get(k, 0) or k == "inserted"]
    return "records: " + ", ".join(parts)


def _digest_text(digest: dict[str, Any]) -> str:
    """``2 new matches; 0 e-mailed, 0 posted; FAILED: …`` or why it did not run."""
    if digest.get("skipped"):
        return f"skipped: {digest['skipped']}"
    text = (f"{digest.get('matched', 0):,} new matches; {digest.get('emailed', 0):,} e-mailed, "
            f"{digest.get('posted', 0):,} posted")  # fmt: skip
    failures = "; ".join(map(str, digest.get("failures") or []))
    warnings = "; ".join(map(str, digest.get("warnings") or []))
    if failures:
        text += f"; FAILED (retried next time): {failures}"
    if warnings:
        text += f"; {warnings}"
    return text


def _index_text(embedded: int, index: dict[str, Any] | None) -> str:
    if not index:
        return f"{embedded:,} articles embedded; no index"
    model = index.get("model_version", "?")
    what = f"{embedded:,} articles embedded with model {model}"
    if index.get("published"):
        return f"{what}; {index.get('kind', '')} index of {index.get('size', 0):,} published"
    return f"{what}; index unchanged ({index.get('reason', 'up to date')})"


def _retrain_text(report: dict[str, Any]) -> str:
    """``promoted m-…: fresh recall@10 0.62 -> 0.71 …`` or why it was rejected/skipped."""
    status = str(report.get("status", "?"))
    metrics = report.get("metrics") or {}
    cand, active = metrics.get("candidate"), metrics.get("active")
    if not cand or not active:
        reasons = "; ".join(map(str, report.get("reasons") or []))
        return f"{status}: {reasons}" if reasons else status
    key = "recall@10"
    fresh_a, fresh_c = active["fresh"][key], cand["fresh"][key]
    older_a, older_c = active["older"][key], cand["older"][key]
    who = "base" if active.get("model") in (None, "base") else str(active.get("model"))
    text = (
        f"{status} {report.get('version_id')}: fresh {key} {fresh_a:.3f} -> {fresh_c:.3f} "
        f"({fresh_c - fresh_a:+.3f}), older {older_a:.3f} -> {older_c:.3f} "
        f"({older_c - older_a:+.3f}) against the {who} model"
    )
    training = report.get("training") or {}
    if training:
        text += (
            f"; trained {training.get('steps')} steps in {training.get('seconds', 0):.0f} s "
            f"(budget {training.get('budget_seconds', 0):g} s)"
        )
    if training and int(training.get("steps") or 0) < FEW_STEPS:
        text += (
            f"; only {training.get('steps')} steps fitted in the budget on this machine: "
            "raise LITPULSE_RETRAIN_BUDGET_S"
        )
    if status == "promoted":
        text += "; the index was rebuilt for it"
    else:
        failed = [r for r in (report.get("gate") or {}).get("reasons", [])
                  if "<" in r or "loses" in r or "no fresh" in r]
        if failed:
            text += "; " + "; ".join(failed)
    return text


# -------------------------------------------------------------------------------- lease


def _acquire(engine: Engine, ttl_s: float, wait_s: float) -> db.Lease:
    return db.take_lease(engine, LEASE_NAME, lambda who: NightlyBusyError(
        f"another nightly run is in progress (held by {who}); not starting a second one"
    ), ttl_s=ttl_s, wait_s=wait_s)  # fmt: skip


# -------------------------------------------------------------------------------- run


def run_nightly(
    settings: Settings,
    *,
    source: str = "eutils",
    files: Sequence[str | os.PathLike[str]] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    retrain: bool = True,
    citations: bool = True,
    quality: bool = True,
    progress: bool = False,
    wait_s: float = 0.0,
    lease_ttl_s: float = LEASE_TTL_S,
    citations_wait_s: float | None = None,
) -> NightlyReport:
    """Run the nightly chain once, holding the ``nightly`` lease.

    Steps: ingest (``eutils``: the window from the last watermark — or ``since`` — to
    ``until`` (default now); ``updatefiles``: every update file not applied yet;
    ``files``: the given local files) → iCite citations → data-quality check → embed
    pending articles → refresh the index → retrain when due (:func:`retrain_due`); a
    promotion re-embeds the corpus with the new model version and publishes its index
    (inside :func:`retrain.registry.promote`) → the saved searches' digest. A retrain that
    fails is raised after the digest: the index the night published has its digest.

    Args:
        settings: The settings.
        source: ``eutils``, ``updatefiles`` or ``files``.
        files: Local PubMed XML files (``source="files"``; required there).
        since: Start of the half-open E-utilities window ``[since, until)`` (default:
            the end of the last succeeded window, the watermark; with none, one day
            before ``until``).
        until: End of the window, excluded (default: now, UTC).
        retrain: Retrain when due.
        citations: Refresh iCite citations.
        quality: Run the data-quality check (raises ``DataQualityError``).
        progress: Progress bars on stderr.
        wait_s: Seconds to wait for a running nightly to finish before giving up.
        lease_ttl_s: Lease lifetime without renewal, in seconds.
        citations_wait_s: Seconds the citations step waits for a citation refresh another
            process runs (default ``LITPULSE_CITATIONS_WAIT_S``); then the step is skipped
            with a note (``citations["skipped"]``), and the night goes on.

    Returns:
        The report of every step.

    Raises:
        NightlyBusyError: Another run holds the lease (after ``wait_s``).
        LeaseLostError: Another run took the lease over meanwhile (this one stopped
            before its next step).
        DataQualityError: The ingest failed a quality check (nothing after it ran).
        ConfigError: Bad arguments (unknown source, files missing, end not after start).
    """
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    paths = [Path(p) for p in files or ()]
    if source == "files":
        if not paths:
            raise ConfigError("source 'files' needs --files PATH ...")
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ConfigError(f"files not found: {', '.join(missing)}")
    elif paths:
        raise ConfigError(f"--files only applies to source 'files', not {source!r}")
    if source != "eutils" and (since is not None or until is not None):
        # files and update files carry no window: the days named would be ingested by none
        raise ConfigError(f"--since/--until only apply to source 'eutils', not {source!r} "
                          "(whose files carry no window)")  # fmt: skip
    if since is not None or until is not None:
        _searchable(settings, since, until)
    if lease_ttl_s <= 0:
        raise ConfigError(f"lease_ttl_s must be positive, got {lease_ttl_s}")

    engine = db.connect(settings)
    started = utcnow()
    lease = _acquire(engine, lease_ttl_s, wait_s)
    logger.info("nightly run started (lease holder %s)", lease.holder)
    steps: list[tuple[str, float]] = []

    def step(name: str, fn: Callable[[], T]) -> T:
        lease.check()  # a run whose lease was taken over writes nothing more
        t0 = time.perf_counter()
        logger.info("nightly: %s", name)
        if progress:
            print(f"litpulse nightly: {name}: {STEP_TITLES.get(name, name)}", file=sys.stderr,
                  flush=True)
        try:
            return fn()
        finally:
            steps.append((name, time.perf_counter() - t0))

    try:
        with lease:
            window: tuple[dt.datetime, dt.datetime] | None = None
            if source == "eutils":
                window = _window(settings, engine, since, until)
            checked = citations or quality  # the window is through once these passed
            counts = step(
                "ingest",
                lambda: _ingest(settings, source, paths, window, progress, checked, quality),
            )
            cites = None
            report_q: dict[str, Any] = {"ok": True, "checks": [], "problems": []}
            try:  # a window is through only once it passed its check
                if citations:
                    cites = step("citations", lambda: citations_step(
                        settings, progress=progress, wait_s=citations_wait_s))  # fmt: skip
                if quality:
                    from ingest.quality import check_ingest

                    report_q = step(
                        "quality", lambda: check_ingest(settings, counts, window).to_dict()
                    )
            except BaseException as exc:
                if window is not None:  # the rerun ingests (and checks) this window again
                    withhold_watermark(engine, window, started, f"{steps[-1][0]} failed: "
                                       f"{type(exc).__name__}")  # fmt: skip
                raise
            if window is not None and checked:
                release_watermark(engine, window)
            embedded, index = step("index", lambda: _index(settings, progress))
            index_step = index
            decision = None
            retrained = None
            failed: Exception | None = None
            if retrain:
                d = retrain_due(settings, engine)
                decision = d.to_dict()
                logger.info("retrain: %s", d.reason)
                if d.due:
                    try:
                        # a promotion re-embeds the corpus and publishes its index inline
                        retrained = step("retrain", lambda: _retrain(settings, progress))
                    except Exception as exc:  # noqa: BLE001 - raised after the digest
                        # the night's index is published: its digest still goes out
                        logger.warning("retrain failed (%s: %s): the digest of the index "
                                       "published tonight goes out first", type(exc).__name__,
                                       exc)  # fmt: skip
                        failed = exc
                    else:
                        promoted_index = (retrained.get("promotion") or {}).get("index")
                        if isinstance(promoted_index, dict):
                            index = promoted_index
            digest = step("digest", lambda: digest_step(settings))
            if failed is not None:
                raise failed
    finally:
        logger.info("nightly run ended; lease released")

    return NightlyReport(
        source=source,
        window_start=window[0] if window else None,
        window_end=window[1] if window else None,
        ingest=counts,
        quality=report_q,
        citations=cites,
        embedded=embedded,
        index=index,
        retrain=retrained,
        retrain_decision=decision,
        steps=tuple(steps),
        index_step=index_step,
        started_at=started,
        finished_at=utcnow(),
        digest=digest,
    )


def _searchable(
    settings: Settings, since: dt.datetime | None, until: dt.datetime | None
) -> None:
    """Refuse, before anything is taken, a window whose searched days (from the overlap
    days before ``since``, in NLM's time zone) fall off the calendar's ends
    (:func:`ingest.dates.searched_days` raises :class:`ConfigError`)."""
    from ingest.dates import searched_days

    try:
        end = as_utc(until) if until is not None else utcnow()
        start = as_utc(since) if since is not None else end - dt.timedelta(days=1)
    except (OverflowError, ValueError):
        raise ConfigError(f"the window {since} .. {until} reaches past the calendar's ends "
                          "(its searched days must be dates of years 1 to 9999)") from None
    searched_days(settings, start, end)


def _window(
    settings: Settings,
    engine: Engine,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    """The half-open E-utilities window ``[since, until)``."""
    end = as_utc(until) if until is not None else utcnow()
    if since is not None:
        start = as_utc(since)
        if start >= end:
            raise ConfigError(
                f"the window end {end.isoformat()} is not after its start {start.isoformat()}"
            )
        return start, end
    mark = last_watermark(settings, engine)
    if mark is None:
        start = end - dt.timedelta(days=1)
        logger.info("no earlier window: ingesting the last day (%s..%s)", start, end)
    elif mark >= end:
        # the last window already reached `until`: repeat its last day (idempotent)
        start = end - dt.timedelta(days=1)
    else:
        start = mark
    return start, end


def ingest_eutils_window(
    settings: Settings,
    since: dt.datetime | dt.date,
    until: dt.datetime | dt.date,
    *,
    progress: bool = False,
    checked: bool = True,
    quality: bool | None = None,
) -> Any:
    """:func:`ingest.eutils.ingest_window` that alerts the on-call engineer (log, and the
    webhook when set) when the run gives PMIDs up: listed by ESearch, never returned by
    EFetch however often asked (``litpulse missing``); as it ends, failing or not, it
    alerts every give-up still owed one (:func:`~litpulse.pipeline.alerts.tell_given_up`:
    an earlier run killed before its alert, or whose webhook was down). The nightly job and
    the nightly DAG's ingest task call this. With ``checked`` (a data-quality check or the
    iCite step follows), the window moves the watermark only once
    :func:`planning.release_watermark` says it passed them. With ``quality`` (default:
    ``checked``) its data-quality check follows and judges the run
    (:func:`ingest.quality.check_ingest`); without one the run is judged once it
    succeeded, so the next window's overlap day meets it as judged.

    Returns:
        The window's :class:`ingest.store.IngestCounts`.
    """
    from ingest.eutils import ingest_window
    from litpulse.pipeline.alerts import tell_given_up

    # the whole window's counts: its data-quality check (the DAG's next task, the nightly's
    # quality step) judges a retried window whole, not the retry's batches alone
    # with a check to come (``checked``), the window's run is held from the watermark until
    # the check passed (planning.release_watermark): a kill before it leaves it held
    # with a data-quality check to come (``quality``, default ``checked``), that check
    # judges the run; without one, the run is judged once it succeeded
    try:
        return ingest_window(settings, since, until, progress=progress, whole_window=True,
                             run_details={"watermark": PENDING_CHECK} if checked else None,
                             check_follows=checked if quality is None else quality)
    finally:  # the give-ups of this run, and those an earlier one could not tell (an outbox)
        tell_given_up(settings)


def check_window(
    settings: Settings, counts: Mapping[str, Any], window: tuple[dt.datetime, dt.datetime]
) -> dict[str, Any]:
    """The data-quality check of an E-utilities window (:func:`ingest.quality.check_ingest`);
    once it passed, the window moves the watermark (:func:`planning.release_watermark`).
    The nightly DAG's ``data_quality`` task calls this.

    Raises:
        DataQualityError: The window failed a check; it stays held from the watermark.
    """
    from ingest.quality import check_ingest

    report = check_ingest(settings, counts, window).to_dict()
    release_watermark(db.connect(settings), window)
    return report


def _ingest(
    settings: Settings,
    source: str,
    paths: list[Path],
    window: tuple[dt.datetime, dt.datetime] | None,
    progress: bool,
    checked: bool,
    quality: bool,
) -> dict[str, int]:
    if source == "eutils":
        if window is None:
            raise ConfigError("the eutils source needs a window")
        counts: Any = ingest_eutils_window(
            settings, window[0], window[1], progress=progress, checked=checked, quality=quality
        )
    else:
        from litpulse.pipeline.alerts import tell_given_up

        # update files give nothing up; the give-ups an E-utilities run left owed (its
        # webhook down, a window ingested by hand) are told by every ingest, whatever
        # its source: a site reading update files alone would never tell them
        try:
            if source == "updatefiles":
                from ingest.updatefiles import apply_updates

                counts = apply_updates(settings, progress=progress)
            else:
                from ingest.files import ingest_files

                counts = ingest_files(settings, [str(p) for p in paths], progress=progress)
        finally:
            tell_given_up(settings)
    from ingest.quality import counts_as_dict

    return counts_as_dict(counts)


def citations_step(
    settings: Settings, *, progress: bool = False, wait_s: float | None = None
) -> dict[str, Any]:
    """The iCite refresh as a step of a chain (``litpulse nightly``, the nightly ingest
    DAG's ``refresh_citations``): its counts, or ``{"skipped": why}`` when a citation
    refresh another process runs held its lease past ``wait_s`` seconds
    (default ``LITPULSE_CITATIONS_WAIT_S``): it asks iCite for the same due articles, so
    the step waits for it and then refreshes what is still due (the night's new articles);
    one running longer is left to finish. A skipped step fails nothing: the articles it
    would have asked for stay due (never fetched, or on their schedule) for the next
    refresh.

    Raises:
        TransientSourceError: iCite kept failing (batches already written stay).
    """
    from ingest.citations import CitationsBusyError, refresh_citations

    if wait_s is None:
        wait_s = settings.citations_wait_s
    try:
        return dict(refresh_citations(settings, progress=progress, wait_s=wait_s).to_dict())
    except CitationsBusyError as exc:  # an operator's refresh asks iCite for the same articles
        logger.warning("citations step skipped: %s", exc)
        return {"skipped": f"another citation refresh runs on this store (waited "
                           f"{duration(wait_s)}); what is still due is refreshed the next "
                           f"night ({exc})"}  # fmt: skip


def _index(
    settings: Settings, progress: bool, *, rebuild: bool = False
) -> tuple[int, dict[str, Any]]:
    from ranking.refresh import refresh_index

    report = refresh_index(settings, rebuild=rebuild, progress=progress)  # embeds, then indexes
    return report.embedded, dict(report.to_dict())


def _retrain(settings: Settings, progress: bool) -> dict[str, Any]:
    from ranking.publish import IndexBusyError
    from retrain.run import RetrainBusyError, retrain

    try:
        report = retrain(
            settings,
            progress=progress,
            min_new_articles=settings.retrain_min_new_articles,
            reindex=leased_reindex(progress=progress),  # its lease before the switch
            negatives=lexical_negatives(settings),
        )
    except RetrainBusyError as exc:  # an operator's retrain runs: it trains on the same data
        logger.warning("retrain skipped: %s", exc)
        return {"status": "skipped", "reasons": [str(exc)]}
    except IndexBusyError as exc:
        # the gate passed while another process re-indexed: nothing was switched and the
        # version stays a candidate (the message names the command that promotes it); the
        # night's index is published already, so its digest still goes out
        logger.warning("retrain's promotion not made: %s", exc)
        return {"status": "not_promoted", "reasons": [str(exc)]}
    return dict(report.to_dict())
