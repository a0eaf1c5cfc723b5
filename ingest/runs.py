"""The run ledger: what each ingest did (``ingest_runs``) and the counts it reports.

Every ingest (E-utilities window, files, update files, iCite) is one row of
``ingest_runs``: opened ``running`` by :meth:`RunLedger.start_run`, closed ``succeeded``
or ``failed`` by :meth:`RunLedger.finish_run`. :func:`recorded_run` is the one way the
ingest modules do that bookkeeping: it opens the run, hands out a :class:`OpenRun` to
keep counts and details in, and closes the run whichever way the block ends (an
exception is recorded, redacted, and raised again).

A run left ``running`` by a process that died is closed as ``abandoned`` by the next
:meth:`RunLedger.start_run` of the same host (:meth:`RunLedger.close_abandoned_runs`).

**One writer of articles at a time.** A run of a source that writes articles
(:data:`ARTICLE_SOURCES`: files, E-utilities, update files) holds the database lease
:data:`STORE_LEASE` (:func:`store_writer`) from before it opens until it closes; a second
one, in any process on any host, fails at once with :class:`StoreBusyError` (retryable:
Airflow's retries or a later run go on) and writes nothing. Two writers would each decide
against the state they read (an older version upserted over a newer one) and move the
in-corpus citation counts under each other's feet (the bootstrap's final recount would
overwrite a count another writer had just moved). The bootstrap holds the lease for its
whole call, its runs and its recount included (the lease is re-entrant within a process).
A writer checks the lease inside each transaction that writes articles
(:func:`verify_store_writer`): one whose heartbeat stalled past the lease's TTL and lost
it to another writer rolls the batch back and stops with
:class:`~litpulse.core.errors.LeaseLostError` (retryable).
iCite runs write only the citation columns and take no lease.

Example:
    >>> from litpulse.core import db
    >>> from litpulse.core.settings import Settings
    >>> ledger = RunLedger(db.connect(Settings.from_env({}, database_url="sqlite:///:memory:")))
    >>> with recorded_run(ledger, "files") as run:
    ...     run.counts = IngestCounts(inserted=1)
    >>> ledger.get_run(run.id)["status"]
    'succeeded'
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from sqlalchemy import Connection, Engine, insert, select, update

from litpulse.core.db import Lease, default_holder, holder_alive, take_lease
from litpulse.core.errors import BusyError, ConfigError, NotFoundError
from litpulse.core.schema import ingest_runs
from litpulse.core.states import RunStatus
from litpulse.core.timeutil import iso, utcnow

__all__ = [
    "ARTICLE_SOURCES",
    "CHECK_FAILED",
    "STORE_LEASE",
    "IngestCounts",
    "OpenRun",
    "PENDING_CHECK",
    "RunLedger",
    "StoreBusyError",
    "WINDOW_SOURCES",
    "add_run_counts",
    "holds_store_writer",
    "judge_runs",
    "judge_runs_in",
    "recorded_run",
    "run_dict",
    "store_writer",
    "verify_store_writer",
]

logger = logging.getLogger(__name__)

#: The database lease every writer of articles holds (:func:`store_writer`).
STORE_LEASE = "store-writer"
#: Run sources that write articles, so that their runs hold :data:`STORE_LEASE`.
ARTICLE_SOURCES = frozenset({"files", "eutils", "updatefiles"})
#: Run sources that cover a time window (the watermark), which a data-quality check of
#: that window judges (:func:`ingest.quality.check_ingest`).
WINDOW_SOURCES = ("eutils", "updatefiles")
#: The ``details.watermark`` an E-utilities run of the nightly (or the nightly DAG) is
#: stored with: its window is not through until its checks passed
#: (:func:`litpulse.pipeline.planning.release_watermark` removes it); a run killed between
#: its ingest and its check stays held, and the next nightly ingests (and checks) the
#: window again.
PENDING_CHECK = "pending: its data-quality check has not passed yet"
#: The ``details.watermark`` ``litpulse nightly`` leaves on a window whose data-quality
#: check failed (:func:`litpulse.pipeline.planning.withhold_watermark`): a check judged it.
CHECK_FAILED = "withheld: quality failed: DataQualityError"


class StoreBusyError(BusyError):
    """Another live process is writing articles (it holds :data:`STORE_LEASE`); nothing
    was written. Retry when it is done."""

    retryable = True


_local = threading.local()  # this thread's store leases: {database: (lease, depth)}


@contextmanager
def store_writer(engine: Engine) -> Iterator[None]:
    """Hold :data:`STORE_LEASE` for the block (re-entrant: an inner block of the same
    thread and database shares the outer one's lease; another thread is another writer).

    Raises:
        StoreBusyError: Another live process (or thread) holds it.
    """
    if not hasattr(_local, "held"):
        _local.held = {}
    held: dict[str, tuple[Lease, int]] = _local.held
    key = engine.url.render_as_string(hide_password=False)
    if key in held:
        lease, depth = held[key]
        held[key] = (lease, depth + 1)
    else:
        taken = take_lease(engine, STORE_LEASE, lambda who: StoreBusyError(
            f"another process ({who}) is writing articles to this store (see `litpulse "
            "status`); nothing was written: run again when it is done"
        ))  # fmt: skip
        held[key] = (taken, 1)
    try:
        yield
    finally:
        lease, depth = held[key]
        if depth > 1:
            held[key] = (lease, depth - 1)
        else:
            del held[key]
            lease.release()


def verify_store_writer(conn: Connection) -> None:
    """Inside a writer's transaction, last before its commit: make sure this thread still holds
    :data:`STORE_LEASE` of the store (:meth:`litpulse.core.db.Lease.verify`: the lease row
    stays locked until the transaction ends, so no takeover slips in before the commit).
    A writer whose heartbeat stalled past the lease's TTL (a suspended process) and lost
    the lease to another writer stops here, its transaction rolled back, instead of
    writing beside it. Nothing to check without the lease (a test's bare store).

    Raises:
        LeaseLostError: Another process took the lease over (roll back).
    """
    held: dict[str, tuple[Lease, int]] = getattr(_local, "held", {})
    entry = held.get(conn.engine.url.render_as_string(hide_password=False))
    if entry is not None:
        entry[0].verify(conn)


def holds_store_writer(engine: Engine) -> bool:
    """Whether this thread holds :data:`STORE_LEASE` of ``engine``'s store (inside
    :func:`store_writer`)."""
    held: dict[str, tuple[Lease, int]] = getattr(_local, "held", {})
    return engine.url.render_as_string(hide_password=False) in held


@dataclass(frozen=True)
class Counts:
    """Base of the count records of a run: every field a count >= 0; add, subtract, dict."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be a count >= 0, got {value!r}"
                )

    def _combine(self, other: object, sign: int) -> Self:
        names = [f.name for f in dataclasses.fields(self)]
        values = {n: getattr(self, n) + sign * getattr(other, n) for n in names}
        return type(self)(**values)

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        return self._combine(other, 1)

    def __sub__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        return self._combine(other, -1)

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IngestCounts(Counts):
    """What one ingest did, item by item.

    Attributes:
        inserted: Records of PMIDs the store did not hold.
        updated: Records that replaced an older stored record (or lifted a tombstone).
        unchanged: Items that changed nothing: older or identical records, replays,
            deletions of PMIDs already deleted or unknown.
        deleted: Deletions that tombstoned a live article.
        quarantined: Elements that could not be parsed (each one met in this run, even
            when the same element was quarantined before).
        requarantined: Of ``quarantined``, those met *again*: in quarantine already, and
            judged by the data-quality check of an earlier window (the next window's
            overlap day, a failed window searched again). The check judges the others,
            the bad elements new to the store. Met again before any check judged it (a
            killed or failed try, which a resumed run repeats), an element counts as new.
        reseen: Of ``unchanged``, the records and deletions met *again* whose stored row
            was written by a run a data-quality check has judged (``articles.run_id``,
            ``ingest_runs.judged_at``; a row older than the column counts as judged): the
            next window's overlap day. The same rule as ``requarantined``, for the rows:
            a row whose run no check judged yet (killed or failed before its check) is
            taken over by this run and counts as new to its check.
        missing: PMIDs a source listed but did not deliver (E-utilities).
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    quarantined: int = 0
    requarantined: int = 0
    reseen: int = 0
    missing: int = 0

    @property
    def total(self) -> int:
        """Items seen (``missing`` excluded: those never arrived)."""
        return self.inserted + self.updated + self.unchanged + self.deleted + self.quarantined



@dataclass
class OpenRun:
    """A run in progress inside :func:`recorded_run` (mutable on purpose: the block fills it).

    Attributes:
        id: The ``ingest_runs`` id.
        counts: What the run has stored so far; written when the run closes (the store
            adds each batch's to the run's row as it commits: :func:`add_run_counts`).
        details: The run's details, written when it closes.
        on_failure: Extra details to add when the block raises (called then).
    """

    id: int
    counts: IngestCounts = field(default_factory=IngestCounts)
    details: dict[str, Any] = field(default_factory=dict)
    on_failure: Callable[[], dict[str, Any]] | None = None


@contextmanager
def recorded_run(
    ledger: RunLedger,
    source: str,
    *,
    target: str | None = None,
    window_start: dt.datetime | None = None,
    window_end: dt.datetime | None = None,
    redact: Callable[[str], str] = str,
    judged: bool = False,
) -> Iterator[OpenRun]:
    """Open a run, yield it, and close it ``succeeded`` or ``failed`` (then re-raise).

    Args:
        ledger: Where runs are recorded (a :class:`ingest.store.Store`).
        source: ``eutils``, ``files``, ``updatefiles`` or ``citations``.
        target: What the run works on (window, files, URL).
        window_start: Start of the window, for window sources.
        window_end: End of the window, for window sources.
        redact: Applied to the error text (removes credentials from URLs).
        judged: No data-quality check is to come for the run (files, update files, a
            bootstrap, a window taken unchecked): it is judged as it opens, so the rows
            it writes are met again, not new, by a later window even if it is killed, and
            its quarantine entries as it closes, however it ends (:func:`judge_runs`).

    Yields:
        The open run; set its ``counts`` and ``details`` as the work goes on.

    Raises:
        StoreBusyError: ``source`` writes articles (:data:`ARTICLE_SOURCES`) and another
            process is writing them now (no run is opened).
    """
    writes = source in ARTICLE_SOURCES
    with store_writer(ledger.engine) if writes else contextlib.nullcontext():
        run = OpenRun(ledger.start_run(source, target=target, window_start=window_start,
                                       window_end=window_end))  # fmt: skip
        if judged:
            judge_runs(ledger.engine, [run.id])
        try:
            yield run
        except BaseException as exc:
            extra = run.on_failure() if run.on_failure is not None else {}
            ledger.finish_run(
                run.id,
                run.counts,
                status=RunStatus.FAILED,
                error=redact(f"{type(exc).__name__}: {exc}"),
                details={**run.details, **extra},
            )
            raise
        finally:
            if judged:
                judge_runs(ledger.engine, [run.id])
        ledger.finish_run(run.id, run.counts, details=run.details)


def judge_runs(engine: Engine, run_ids: Iterable[int]) -> int:
    """Mark runs judged, and the quarantine entries they hold, in one transaction: met
    again, their rows and entries are not new to a check
    (:attr:`IngestCounts.reseen`, ``requarantined``). The check of a window does it
    whatever its outcome (:func:`ingest.quality.check_ingest`); a run no check is to come
    for (``recorded_run(judged=True)``) is judged as it opens and its entries as it
    closes, however it ends: nothing else would judge them, and the next window's overlap
    day would count its records as new. Returns how many entries."""
    with engine.begin() as conn:
        return judge_runs_in(conn, run_ids)


def judge_runs_in(conn: Connection, run_ids: Iterable[int]) -> int:
    """:func:`judge_runs` in the caller's transaction."""
    from litpulse.core.db import id_in_clause
    from litpulse.core.schema import quarantine

    ids = sorted({int(i) for i in run_ids})
    if not ids:
        return 0
    r, q = ingest_runs.c, quarantine.c
    now = utcnow()
    done = conn.execute(
        update(quarantine)
        .where(id_in_clause(conn, "run_id", ids), q.judged_at.is_(None))
        .values(judged_at=now)
    ).rowcount
    conn.execute(update(ingest_runs)
                 .where(id_in_clause(conn, "id", ids), r.judged_at.is_(None))
                 .values(judged_at=now))  # fmt: skip
    return int(done or 0)


def add_run_counts(conn: Connection, run_id: int, delta: IngestCounts) -> None:
    """Add ``delta`` to the counts of run ``run_id`` while it is ``running``, in the
    caller's transaction: the store calls it in each batch's, so a run killed after a
    batch committed still counts what it stored (closed ``abandoned`` with those counts).
    :meth:`RunLedger.finish_run` writes the run's whole counts when it closes."""
    changes = {k: v for k, v in delta.to_dict().items() if v}
    if not changes:
        return
    c = ingest_runs.c
    conn.execute(
        update(ingest_runs)
        .where(c.id == run_id, c.status == RunStatus.RUNNING)
        .values({k: c[k] + v for k, v in changes.items()})
    )


#: The error of a run whose process ended without closing it.
_ABANDONED = "process {holder} ended without finishing the run (killed?)"


def _dead_holder(details: dict[str, Any] | None) -> str | None:
    """The recorded holder of a run whose process (on this host) is gone, else ``None``:
    another host's, or a run without a holder, cannot be judged from here."""
    holder = (details or {}).get("holder")
    return str(holder) if holder and not holder_alive(str(holder)) else None


class RunLedger:
    """Opens, closes and lists ingest runs.

    Args:
        engine: An engine from :func:`litpulse.core.db.connect` (tables exist).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start_run(
        self,
        source: str,
        *,
        target: str | None = None,
        window_start: dt.datetime | None = None,
        window_end: dt.datetime | None = None,
    ) -> int:
        """Open an ingest run (status ``running``) and return its id.

        Runs left ``running`` by a process of this host that no longer exists (killed)
        are closed first as ``abandoned``, so ``litpulse status`` tells the truth.
        """
        self.close_abandoned_runs()
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(ingest_runs).values(
                    source=source,
                    target=target,
                    window_start=window_start,
                    window_end=window_end,
                    status=RunStatus.RUNNING,
                    details={"holder": default_holder()},
                    started_at=utcnow(),
                )
            )
            run_id = result.inserted_primary_key[0]  # type: ignore[index]
        logger.info("ingest run %s started: %s %s", run_id, source, target or "")
        return int(run_id)

    def close_abandoned_runs(self) -> list[int]:
        """Mark ``running`` runs whose process on this host is gone as ``abandoned``.

        Returns:
            The ids of the runs closed. Runs of other hosts, or without a recorded
            holder, are left alone: their liveness cannot be told from here.
        """
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(ingest_runs.c.id, ingest_runs.c.details).where(
                    ingest_runs.c.status == RunStatus.RUNNING
                )
            ).all()
            dead = [(r.id, holder) for r in rows if (holder := _dead_holder(r.details))]
            for run_id, holder in dead:
                conn.execute(
                    update(ingest_runs)
                    .where(ingest_runs.c.id == run_id, ingest_runs.c.status == RunStatus.RUNNING)
                    .values(
                        status=RunStatus.ABANDONED,
                        error=_ABANDONED.format(holder=holder),
                        finished_at=utcnow(),
                    )
                )
        for run_id, holder in dead:
            logger.warning("ingest run %s abandoned by %s", run_id, holder)
        return [run_id for run_id, _ in dead]

    def finish_run(
        self,
        run_id: int,
        counts: IngestCounts,
        *,
        status: str = RunStatus.SUCCEEDED,
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Close a run with its counts, status (``succeeded``/``failed``) and error."""
        if status not in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            raise ConfigError(f"status must be 'succeeded' or 'failed', got {status!r}")
        values: dict[str, Any] = {
            **counts.to_dict(),
            "status": RunStatus(status),
            "error": error,
            "finished_at": utcnow(),
        }
        if details is not None:
            values["details"] = details
        with self.engine.begin() as conn:
            n = conn.execute(
                update(ingest_runs).where(ingest_runs.c.id == run_id).values(**values)
            ).rowcount
        if not n:
            raise NotFoundError(f"no ingest run {run_id}")
        logger.info("ingest run %s %s: %s", run_id, status, counts.to_dict())

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One ingest run as a dict; :class:`NotFoundError` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(ingest_runs).where(ingest_runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"no ingest run {run_id}")
        return run_dict(row._mapping)

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The latest ingest runs, newest first. A run still ``running`` whose process on
        this host is gone (killed) is shown ``abandoned``, as the next ingest records it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ingest_runs).order_by(ingest_runs.c.id.desc()).limit(limit)
            ).all()
        out = [run_dict(r._mapping) for r in rows]
        for run in out:
            holder = _dead_holder(run["details"]) if run["status"] == RunStatus.RUNNING else None
            if holder:
                run["status"] = str(RunStatus.ABANDONED)
                run["error"] = _ABANDONED.format(holder=holder) + "; the next ingest records it so"
        return out


def run_dict(m: Any) -> dict[str, Any]:
    """One ``ingest_runs`` row (a mapping) as the dict ``litpulse status --json`` shows."""
    started, finished = m["started_at"], m["finished_at"]
    seconds = None
    if started is not None and finished is not None:
        seconds = round((finished - started).total_seconds(), 3)
    return {
        "id": m["id"],
        "source": m["source"],
        "target": m["target"],
        "window_start": iso(m["window_start"]),
        "window_end": iso(m["window_end"]),
        "status": m["status"],
        "inserted": m["inserted"],
        "updated": m["updated"],
        "unchanged": m["unchanged"],
        "deleted": m["deleted"],
        "quarantined": m["quarantined"],
        "requarantined": m["requarantined"],
        "reseen": m["reseen"],
        "missing": m["missing"],
        "details": dict(m["details"] or {}),
        "error": m["error"],
        "started_at": iso(started),
        "finished_at": iso(finished),
        "seconds": seconds,
    }
