"""Bootstrap the store from NLM's annual baseline, then the update files since.

The work is every listed ``baseline/`` and ``updatefiles/`` file not yet recorded in
``source_files``, in application order (:class:`ingest.updatefiles.RemoteFile`). Two roles
share it:

* **Stagers** download a file and verify its MD5 into the staging folder
  (``<home>/downloads/<store id>``, one per store:
  :func:`ingest.updatefiles.downloads_folder`): ``NAME`` plus a ``NAME.verified`` marker
  (``md5 size`` and the verified file's identity: device, inode, modification time) written
  last, atomically,
  so a half-downloaded file is never taken for a staged one, and a staged file changed
  after its check is neither: it is staged again, and its parse checks the identity the
  marker holds (:class:`ingest.parallel.FileIdentity`). A stager
  first takes the lease ``bootstrap-stage:NAME`` (:func:`litpulse.core.db.acquire_lease`),
  so two processes never write the same ``.part`` file; a partial download is resumed
  with an HTTP Range request by whoever stages the file next. Stagers never write the
  store. In ``litpulse bootstrap`` a prefetch thread stages up to ``prefetch`` files
  ahead of the writer; in the ``litpulse_bootstrap`` DAG, mapped tasks do
  (:func:`prefetch_file`).
* **One writer** (:func:`load_files`, holding the lease ``bootstrap-writer``) reads one
  :func:`ingest.parallel.parse_ordered` stream over the staged files in order: ``workers``
  parse processes take the next files as they are staged (at most ``workers`` beyond the
  one being stored; one ahead of the writer spills its prepared items to the staging
  folder instead of waiting), so N workers parse the next N files while the writer
  stores the current one (one worker: the next file). The writer applies the items
  strictly in file order, records each file in ``source_files``
  (:func:`ingest.updatefiles._store_file`) once its last batch commits, and deletes its
  download. A file nobody staged yet is staged by the stream itself, so the writer never
  depends on a stager (no deadlock whatever the stagers do); a file another live process
  is staging is waited for.

Why one ordered writer: the store's rules make the live set independent of the order
files arrive in, but not every row: a deletion read before the record it deletes leaves
a bare tombstone where the ordered run keeps the deleted record's content, and the
counts differ. Applying in file order gives exactly the state of one uninterrupted run;
SQLite has one writer anyway, and two writers deciding the same PMID against the state
each read are not safe. Network and parsing still overlap the store: downloads run
ahead in other threads/processes, parsing of the next files in worker processes.

Resuming: a kill anywhere leaves (a) verified staged files, reused; (b) ``.part`` files,
resumed; (c) a file partly applied, continued after the items the killed run committed
(:func:`ingest.updatefiles._store_file`; without its progress mark, replayed to where it
stopped and continued: :mod:`ingest.rules`); (d) a staged file already recorded in
``source_files``, deleted at the next start; (e) spill files of the parse workers
(``litpulse-spill-*``), removed at the next start. A second run with nothing pending
records no run and says so, unless it completes a run killed after its last file (its
recount, or after its last commit): then a run of its own records how far the killed
one reaches (the watermark).

Disk: at most ``prefetch + workers + 1`` staged files: the one being applied, the next
``workers`` in the parse workers' hands, and ``prefetch`` downloaded ahead of those (plus,
under Airflow, one per fetcher in flight); and the spilled items of at most ``workers``
files ahead of the writer (prepared records, several times their compressed size).

Example:
    >>> report = load_files(settings, workers=4, prefetch=2)   # doctest: +SKIP
    >>> report.nothing_to_do                                   # doctest: +SKIP
    False
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from ingest.http import raise_if_stopped
from ingest.parallel import FileIdentity, Job
from ingest.runs import IngestCounts, OpenRun, recorded_run, store_writer
from ingest.store import Store
from ingest.updatefiles import (
    STAGE_LEASE,
    STAGED_MARKER,
    FilePlan,
    RemoteFile,
    _download_verified,
    _file_ref,
    _source,
    _store_file,
    applied_files,
    coverage_details,
    discard_applied_downloads,
    discard_download,
    downloads_folder,
    known_baselines,
    note_listed,
    plan_files,
)
from litpulse.core import db
from litpulse.core.errors import BusyError, ConfigError, LitpulseError, StoppedError
from litpulse.core.schema import source_files
from litpulse.core.settings import Settings, bounds
from litpulse.core.timeutil import iso

__all__ = [
    "BootstrapBusyError",
    "LoadReport",
    "StagedFile",
    "file_from_dict",
    "file_to_dict",
    "load_files",
    "pending_files",
    "prefetch_file",
    "resolve_workers",
    "stage_file",
    "staged",
    "staged_count",
]

logger = logging.getLogger(__name__)

WRITER_LEASE = "bootstrap-writer"
#: Folders of spilled parse output in the staging folder (:func:`ingest.parallel.parse_ordered`).
SPILL_GLOB = "litpulse-spill-*"
#: Seconds between two looks at a file another process is staging.
POLL_S = 0.2
#: Records per file assumed before the first file is applied (NLM's baseline files hold
#: up to 30,000 records each; update files usually fewer).
RECORDS_PER_FILE_GUESS = 30_000


class BootstrapBusyError(BusyError):
    """Another live process is applying bootstrap files (the writer lease is held)."""

    retryable = True


@dataclass(frozen=True)
class StagedFile:
    """A downloaded file whose MD5 matched the published one.

    Attributes:
        file: The published file.
        path: Where it lies in the staging folder.
        size: Bytes.
        md5: Hex digest (the published one).
    """

    file: RemoteFile
    path: Path
    size: int
    md5: str
    identity: FileIdentity | None = None  # of the verified file (None: an older marker)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_files` did.

    Attributes:
        listed: Files listed by the server (baseline and updates).
        already: Of those, files applied before this call.
        applied: Names of the files this call applied, in order.
        counts: Summed item counts of those files.
        bytes: Compressed bytes applied.
        seconds: Wall time.
        workers: Parse worker processes asked for.
        run_id: The ``ingest_runs`` row (``None`` when there was nothing to do).
        recounted: Rows whose in-corpus citation count the final recount changed
            (``None``: no recount ran, because files remain or nothing was deferred).
    """

    listed: int
    already: int
    applied: tuple[str, ...] = ()
    counts: IngestCounts = field(default_factory=IngestCounts)
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    run_id: int | None = None
    recounted: int | None = None

    @property
    def nothing_to_do(self) -> bool:
        """Every listed file had been applied before."""
        return self.already == self.listed

    def to_dict(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "already": self.already,
            "applied": len(self.applied),
            "nothing_to_do": self.nothing_to_do,
            **self.counts.to_dict(),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.counts.total / self.seconds, 1) if self.seconds else 0.0,
            "workers": self.workers,
            "run_id": self.run_id,
            "recounted": self.recounted,
        }


# ------------------------------------------------------------------------------- files


def file_to_dict(f: RemoteFile) -> dict[str, Any]:
    """A small dict of a file (an XCom value of the DAG)."""
    return {"year": f.year, "number": f.number, "name": f.name, "kind": f.kind,
            "listed": f.listed, "reissue": f.reissue}  # fmt: skip


def file_from_dict(data: dict[str, Any]) -> RemoteFile:
    kind = str(data["kind"])
    if kind not in ("baseline", "updatefile"):
        raise ConfigError(f"a file's kind must be baseline or updatefile, got {kind!r}")
    return RemoteFile(
        int(data["year"]), int(data["number"]), str(data["name"]), kind,
        str(data.get("listed", "")), str(data.get("reissue", "")),
    )  # fmt: skip


def resolve_workers(settings: Settings, workers: int | None = None) -> int:
    """Parse worker processes: ``workers``, else ``LITPULSE_INGEST_WORKERS`` (default the
    cores); ``0`` parses in the writer's process."""
    if workers is None:
        workers = settings.ingest_workers
    low, high = bounds("ingest_workers")
    if not low <= workers <= high:
        raise ConfigError(
            f"workers must be from {low} to {high} (0: parse in the writer), got {workers!r}"
        )
    return workers


def _is_applied(engine: Engine, f: RemoteFile) -> bool:
    """Whether ``f`` is recorded applied (a re-issue: under another MD5 than the one it
    replaces, :attr:`RemoteFile.reissue`)."""
    sf = source_files.c
    with engine.connect() as conn:
        md5 = conn.execute(select(sf.md5).where(sf.name == f.name)).scalar_one_or_none()
    return md5 is not None and md5 != f.reissue


def pending_files(
    settings: Settings, engine: Engine | None = None, *, accept_gaps: bool = False
) -> FilePlan:
    """The listed files not applied yet, in application order, up to a gap in the listing
    (:func:`ingest.updatefiles.plan_files`: one annual baseline, then its update files)."""
    engine = engine or db.connect(settings)
    kinds, issues = applied_files(engine)
    plan = plan_files(settings, kinds, include_baseline=True, accept_gaps=accept_gaps,
                      issues=issues, known=known_baselines(engine))
    note_listed(engine, plan)
    return plan


# ----------------------------------------------------------------------------- staging


def _marker(path: Path) -> Path:
    return path.with_name(path.name + STAGED_MARKER)


def staged(folder: Path, f: RemoteFile) -> StagedFile | None:
    """The staged, verified copy of ``f`` in ``folder``, or ``None``."""
    path = folder / f.name
    try:
        fields, _, listed = _marker(path).read_text(encoding="ascii").partition("\n")
        md5, size, *ident = fields.split()
        now = FileIdentity.of(path.stat())
        if now.size != int(size):
            return None
        identity = None
        if ident:  # dev ino mtime_ns of the file whose MD5 matched (markers since 2026-12)
            dev, ino, mtime_ns = (int(v) for v in ident)
            identity = FileIdentity(dev, ino, int(size), mtime_ns)
            change = identity.changes(now)
            if change:
                logger.warning("staged %s changed after its MD5 check (%s): staging it again",
                               f.name, change)
                return None
    except (OSError, ValueError):
        return None
    # the listing's entry when it was staged (markers since 35a; older ones: unknown)
    return StagedFile(replace(f, listed=listed.strip()), path, int(size), md5, identity)


def staged_count(folder: Path) -> int:
    """Files staged in ``folder`` (verified, not applied yet)."""
    return sum(1 for _ in folder.glob(f"*.xml.gz{STAGED_MARKER}"))


def _busy_elsewhere(engine: Engine, name: str) -> bool:
    """Whether a live process holds the staging lease of ``name`` now."""
    return _busy(engine, STAGE_LEASE.format(name=name))


def _busy(engine: Engine, lease: str) -> bool:
    """Whether a live process holds ``lease`` now."""
    return db.live_holder(engine, lease) is not None


def stage_file(
    settings: Settings,
    f: RemoteFile,
    *,
    engine: Engine | None = None,
    source: Any = None,
    stop: threading.Event | None = None,
) -> StagedFile | None:
    """Download ``f`` and verify its MD5 into the staging folder (resuming a partial one).

    ``stop``: once set, the download stops before its next chunk and
    :class:`~litpulse.core.errors.StoppedError` is raised (the partial file is kept).

    Returns:
        The staged file (already staged counts); ``None`` when another live process is
        staging it now, or when it has been applied meanwhile.

    Raises:
        ChecksumError: The MD5 kept failing (the partial file is removed).
        TransientSourceError: The server kept failing (the partial file is kept).
        StoppedError: ``stop`` was set.
    """
    engine = engine or db.connect(settings)
    folder = downloads_folder(settings, engine)
    found = staged(folder, f)
    if found is not None:
        return found
    lease = db.acquire_lease(engine, STAGE_LEASE.format(name=f.name))
    if lease is None:
        return None
    own = source is None
    src = _source(settings) if own else source
    try:
        with lease:
            # checked under the lease: a file applied (or staged) meanwhile is not fetched
            found = staged(folder, f)
            if found is not None or _is_applied(engine, f):
                return found
            path = folder / f.name
            size, md5 = _download_verified(src, f, path, stop)
            identity = FileIdentity.of(path.stat())  # the file whose MD5 just matched
            tmp = path.with_name(path.name + STAGED_MARKER + ".tmp")
            # the listing's entry of what was verified: the writer records it, not the
            # entry of its own plan (the file may be re-issued meanwhile)
            listed = f.listed.encode("ascii", "replace").decode()
            tmp.write_text(f"{md5} {size} {identity.dev} {identity.ino} {identity.mtime_ns}\n"
                           f"{listed}\n", encoding="ascii")  # fmt: skip
            os.replace(tmp, _marker(path))
            logger.info("staged %s (%d bytes)", f.name, size)
            return StagedFile(f, path, size, md5, identity)
    finally:
        if own:
            src.close()


def prefetch_file(
    settings: Settings, f: RemoteFile, *, window: int, max_wait_s: float = 1800.0
) -> str:
    """Stage ``f`` ahead of the writer once fewer than ``window`` files are staged.

    The body of a mapped DAG task. Waiting keeps the staging folder bounded; it cannot
    deadlock, since the writer stages any file nobody staged, and a fetcher waits only
    while a writer is running (under ``airflow dags test`` tasks run one at a time). A
    failed download is left to the writer (which retries it and fails the run if the file
    stays bad).

    Returns:
        ``applied``, ``staged``, ``elsewhere`` (another process stages it) or
        ``left to the writer: <why>`` (a failed download, or the window stayed full for
        ``max_wait_s`` seconds: the writer is not moving).
    """
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window!r}")
    engine = db.connect(settings)
    folder = downloads_folder(settings, engine)
    deadline = time.monotonic() + max_wait_s
    while True:
        if _is_applied(engine, f):
            return "applied"
        if staged(folder, f) is not None:
            return "staged"
        if staged_count(folder) < window:
            break
        if not _busy(engine, WRITER_LEASE):
            return f"left to the writer: {window} files wait staged and no writer is running"
        if time.monotonic() > deadline:
            return f"left to the writer: {window} files stayed staged for {max_wait_s:g} s"
        time.sleep(POLL_S * 5)
    try:
        got = stage_file(settings, f, engine=engine)
    except LitpulseError as exc:
        logger.warning("prefetching %s failed (the writer will try it): %s", f.name, exc)
        return f"left to the writer: {type(exc).__name__}"
    if got is None:
        return "applied" if _is_applied(engine, f) else "elsewhere"
    return "staged"


class _Prefetcher(threading.Thread):
    """Stages the files after the last one handed to the parsers, at most ``window`` ahead.

    :meth:`stop` stops a download in progress before its next chunk and waits for the
    thread: nothing writes in the staging folder after it returns.
    """

    def __init__(
        self, settings: Settings, engine: Engine, files: list[RemoteFile], window: int
    ) -> None:
        super().__init__(name="bootstrap-prefetch", daemon=True)
        self.settings, self.engine, self.files, self.window = settings, engine, files, window
        self.cond = threading.Condition()
        self.frontier = 0
        self.stopped = False
        self.halt = threading.Event()  # stops a download in progress

    def _may_stage(self, i: int) -> bool:
        return self.stopped or i <= self.frontier + self.window

    def reach(self, i: int) -> None:
        """File ``i`` went to the parsers: files up to ``i + window`` may be staged."""
        with self.cond:
            self.frontier = max(self.frontier, i)
            self.cond.notify_all()

    def stop(self) -> None:
        self.halt.set()
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        source = _source(self.settings)
        try:
            for i, f in enumerate(self.files[1:], 1):
                with self.cond:
                    self.cond.wait_for(lambda i=i: self._may_stage(i))  # type: ignore[misc]
                    if self.stopped:
                        return
                try:
                    stage_file(self.settings, f, engine=self.engine, source=source, stop=self.halt)
                except StoppedError:
                    return
                except Exception as exc:  # noqa: BLE001 - the writer fetches it and reports
                    # left to the writer; the files after it are still worth fetching ahead
                    logger.warning("prefetching %s failed (the writer will retry): %s", f.name, exc)
        finally:
            source.close()


def _wait_staged(
    settings: Settings,
    engine: Engine,
    f: RemoteFile,
    source: Any,
    stop: threading.Event | None = None,
) -> StagedFile:
    """``f`` staged: by a stager, or by this process when nobody else is at it (``stop``:
    once set, :class:`~litpulse.core.errors.StoppedError` before the next wait or chunk)."""
    folder = downloads_folder(settings, engine)
    while True:
        raise_if_stopped(stop, f"waiting for {f.name}")
        found = staged(folder, f)
        if found is not None:
            return found
        if not _busy_elsewhere(engine, f.name):
            found = stage_file(settings, f, engine=engine, source=source, stop=stop)
            if found is not None:
                return found
        time.sleep(POLL_S)


# ------------------------------------------------------------------------------ writer


class _Progress:
    """One bar over the whole job: records, records/s and an ETA.

    The total is an estimate, refined after every file: the records applied so far, plus
    for each pending file its size times the records per byte seen so far (its size
    unknown: the mean records per file seen so far; before any file:
    :data:`RECORDS_PER_FILE_GUESS`). The bar follows the run's committed counts (read
    twice a second), so it moves within a file too.
    """

    def __init__(self, run: OpenRun, files: list[RemoteFile], enabled: bool) -> None:
        from tqdm import tqdm

        self.run, self.files = run, files
        self.done_files, self.done_bytes, self.base = 0, 0, run.counts.total
        self.sizes: dict[str, int] = {}
        self.bar = tqdm(
            total=self.estimate(),
            unit="rec",
            unit_scale=True,
            disable=not enabled,
            desc=f"bootstrap 0/{len(files)} files",
            dynamic_ncols=True,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="bootstrap-progress", daemon=True)
        if enabled:
            self._thread.start()

    def estimate(self) -> int:
        done = self.run.counts.total - self.base
        left = self.files[self.done_files :]
        if not self.done_files:
            return len(left) * RECORDS_PER_FILE_GUESS
        per_byte = done / max(1, self.done_bytes)
        per_file = done / self.done_files
        rest = sum(
            self.sizes[f.name] * per_byte if f.name in self.sizes else per_file for f in left
        )
        return int(done + rest)

    def sized(self, f: RemoteFile, size: int) -> None:
        self.sizes[f.name] = size

    def file_done(self, f: RemoteFile) -> None:
        self.done_files += 1
        self.done_bytes += self.sizes.get(f.name, 0)
        self.bar.set_description(f"bootstrap {self.done_files}/{len(self.files)} files")
        self._refresh()

    def _refresh(self) -> None:
        n = self.run.counts.total - self.base
        self.bar.total = max(self.estimate(), n)
        self.bar.n = n
        self.bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._refresh()
        self.bar.close()


class _StagedJobs:
    """The parse jobs of ``files``: each file once it is staged, in order (a lazy iterable).

    Taking a job waits for its file (staging it here when nobody else does) and lets the
    prefetch thread stage ``prefetch`` files past it. Read from the parse stream's feeder
    thread (the writer's own thread with ``workers=0``), which the stream waits for when
    it stops: setting :attr:`stop` first ends a wait or download within a poll or chunk.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        files: list[RemoteFile],
        source: Any,
        stager: _Prefetcher,
        bar: _Progress,
    ) -> None:
        self.settings, self.engine, self.files, self.source = settings, engine, files, source
        self.stager, self.bar = stager, bar
        self.staged: list[StagedFile] = []
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[Job]:
        for i, f in enumerate(self.files):
            sf = _wait_staged(self.settings, self.engine, f, self.source, self.stop)
            self.staged.append(sf)
            self.bar.sized(f, sf.size)
            self.stager.reach(i)
            # the verified file's identity (an older marker: None, the one when taken)
            yield sf.path, _file_ref(f), sf.identity


def load_files(
    settings: Settings,
    *,
    workers: int | None = None,
    prefetch: int = 2,
    max_files: int | None = None,
    progress: bool = False,
    on_file: Callable[[str, IngestCounts], None] | None = None,
    defer_counts: bool = True,
    accept_gaps: bool = False,
) -> LoadReport:
    """Apply every pending baseline file, then the update files, in order (the writer).

    Args:
        settings: ``pubmed_files_url``, ``home`` (staging folder), database, retries.
        workers: Parse worker processes (default :func:`resolve_workers`; 0: parse in
            the writer's process). Each parses whole files, the next ones in order.
        prefetch: Files staged by a thread ahead of those handed to the parsers (0: none).
        max_files: Apply at most this many files in this call.
        progress: Show one tqdm bar over the whole job on stderr.
        on_file: Called with each applied file's name and counts.
        defer_counts: Leave the in-corpus citation counts alone while files are applied
            and recount them once after the last one (``False``: keep them batch by
            batch, as other ingests do; a recount deferred before still runs at the end).
        accept_gaps: Apply the files after a number missing from the listing
            (:func:`ingest.updatefiles.plan_files`).

    Returns:
        What was done; :attr:`LoadReport.nothing_to_do` when every file was applied before
        (no run is recorded then).

    Raises:
        BootstrapBusyError: Another live process is the writer.
        StoreBusyError: Another process writes articles (an ingest, a nightly run): the
            bootstrap holds :data:`ingest.runs.STORE_LEASE` for its whole call, its final
            recount included, so no other writer moves a count under it.
        ChecksumError: A file kept failing its MD5; it and later files stay unapplied.
        IncompleteSourceError: The listing is not whole (an error page; a number missing:
            the files before it are applied, then the run fails), or a file is cut short
            under its MD5.
        TransientSourceError: The server kept failing.
    """
    low, high = bounds("bootstrap_prefetch")
    if not low <= prefetch <= high:
        raise ConfigError(f"prefetch must be from {low} to {high}, got {prefetch!r}")
    if max_files is not None and max_files < 0:
        raise ConfigError(f"max_files must be >= 0, got {max_files!r}")
    from ingest import parse
    from ingest.parallel import parse_ordered, queue_batches_for
    from ingest.parse import ParseLimits

    workers = resolve_workers(settings, workers)
    limits = ParseLimits.from_settings(settings)
    t0 = time.perf_counter()
    engine = db.connect(settings)
    # counts of citations inside the corpus are recounted once, after the last file
    store = Store(engine, defer_counts=defer_counts)
    lease = db.take_lease(engine, WRITER_LEASE, lambda who: BootstrapBusyError(
        f"another process ({who}) is applying the bootstrap files"
    ))  # fmt: skip
    with lease, store_writer(engine):
        plan = pending_files(settings, engine, accept_gaps=accept_gaps)
        pending, listed = list(plan.pending), plan.listed
        n_pending = len(pending)
        folder = downloads_folder(settings, engine)
        # killed after recording a file, before (or while) deleting it
        discard_applied_downloads(folder, engine, pending)
        for spill in folder.glob(SPILL_GLOB):  # parse output of a killed writer
            shutil.rmtree(spill, ignore_errors=True)
        already = plan.applied
        if max_files is not None:
            pending = pending[:max_files]
        if not pending and n_pending:  # max_files=0: nothing asked while files remain
            return LoadReport(listed, already, workers=workers, seconds=time.perf_counter() - t0)
        if not pending:
            if plan.held is None:
                logger.info("bootstrap: all %d listed files were applied before", listed)
            deferred = store.counts_deferred()  # read once: the recount is given the answer
            closed = store.close_abandoned_runs()  # a run killed after its last commit
            completes = None if plan.held is not None else _completes(engine)
            if not deferred and completes is None:
                plan.raise_if_held()  # files wait behind a missing one: not bootstrapped
                return LoadReport(listed, already, workers=workers,
                                  seconds=time.perf_counter() - t0)  # fmt: skip
            # killed in the recount after the last file (or held by a gap), or after its
            # last commit: finish the recount of what is applied, as a run of its own,
            # which reaches as far as the killed run that applied the last file
            # (``completes``: planning.last_watermark; that run is not a succeeded one)
            with recorded_run(
                store, "updatefiles", target=str(settings.pubmed_files_url), judged=True
            ) as run:  # fmt: skip
                run.details = {"bootstrap": True, "listed": listed, "pending": 0}
                if completes is not None:
                    run.details["completes"] = completes
                recounted = _finish_counts(store, deferred=deferred)
                run.details["recounted"] = recounted
                if closed:
                    run.details["closed"] = closed
            plan.raise_if_held()
            return LoadReport(
                listed, already, workers=workers, seconds=time.perf_counter() - t0,
                run_id=run.id, recounted=recounted,
            )  # fmt: skip
        last_call = max_files is None or len(pending) == n_pending
        source = _source(settings)
        redact = getattr(getattr(source, "client", None), "redact", str)
        applied: list[str] = []
        total_bytes = 0
        try:
            with recorded_run(  # no window's check judges the baseline's records
                store, "updatefiles", target=str(settings.pubmed_files_url), redact=redact,
                judged=True,
            ) as run:
                run.details = {
                    "files": applied,
                    "include_baseline": True,
                    "bootstrap": True,
                    "listed": listed,
                    "pending": len(pending),
                    "workers": workers,
                }
                bar = _Progress(run, pending, progress)
                read = store.issues_read(_file_ref(f).sequence for f in pending)
                stager = _Prefetcher(settings, engine, pending, prefetch)
                if prefetch:
                    stager.start()
                jobs = _StagedJobs(settings, engine, pending, source, stager, bar)
                parsed = parse_ordered(
                    jobs, workers=workers, limits=limits, parse=parse.iter_items,
                    spill_dir=folder, queue_batches=queue_batches_for(settings.store_batch),
                )  # fmt: skip
                try:
                    with contextlib.ExitStack() as stack:
                        stack.enter_context(contextlib.closing(parsed))
                        stack.callback(jobs.stop.set)  # first: a feeder waiting on a file
                        for i, items in parsed:
                            lease.check()
                            f, sf = pending[i], jobs.staged[i]
                            run.details["current"] = f.name
                            counts = _store_file(settings, store, replace(f, listed=sf.file.listed),
                                                 items, sf.size, sf.md5, run, sf.path,
                                                 read)  # fmt: skip
                            discard_download(folder, f.name)
                            applied.append(f.name)
                            total_bytes += sf.size
                            bar.file_done(f)
                            logger.info("applied %s: %s", f.name, counts.to_dict())
                            if on_file is not None:
                                on_file(f.name, counts)
                finally:
                    if prefetch:
                        stager.stop()
                    bar.close()
                run.details.pop("current", None)
                run.details["bytes"] = total_bytes
                run.details.update(coverage_details(plan.pending, pending))
                if last_call and plan.held is not None:
                    # files wait behind a missing one: the counts of what is applied are
                    # made right, then the run fails; the files wait
                    run.details["held"] = plan.held
                    run.details["recounted"] = _finish_counts(store)
                    plan.raise_if_held()
            recounted = _finish_counts(store) if last_call else None
        finally:
            source.close()
    return LoadReport(
        listed,
        already,
        tuple(applied),
        run.counts,
        total_bytes,
        time.perf_counter() - t0,
        workers,
        run.id,
        recounted,
    )


def _completes(engine: Engine) -> dict[str, Any] | None:
    """The run that applied the newest file the store holds, when it did not succeed
    (killed after its last file: in the closing recount, or after its last commit):
    ``run``, ``started_at`` and the ``files`` it applied, with how many were
    ``update_files``. Its listing found nothing newer, and no later call did either, so
    it holds what it listed: the call that completes it records how far that reaches
    (``details.completes``: :func:`litpulse.pipeline.planning.last_watermark`)."""
    from litpulse.core.schema import ingest_runs
    from litpulse.core.states import RunStatus

    sf, r = source_files.c, ingest_runs.c
    with engine.connect() as conn:
        newest = conn.execute(
            select(sf.run_id).order_by(sf.sequence.desc(), sf.applied_at.desc()).limit(1)
        ).scalar()
        if newest is None:
            return None
        row = conn.execute(select(r.status, r.started_at).where(r.id == newest)).first()
        if row is None or row.status in (RunStatus.SUCCEEDED, RunStatus.RUNNING):
            return None  # its own row counts (or will)
        files = conn.execute(select(sf.name, sf.kind).where(sf.run_id == newest)).all()
    return {"run": int(newest), "started_at": iso(row.started_at),
            "files": [name for name, _ in files],
            "update_files": sum(kind == "updatefile" for _, kind in files)}


def _finish_counts(store: Store, *, deferred: bool | None = None) -> int | None:
    """The deferred in-corpus citation counts recounted (rows changed), or ``None`` when
    none were deferred (``deferred``: :meth:`Store.finish_counts`)."""
    t0 = time.perf_counter()
    changed = store.finish_counts(deferred=deferred)
    if changed is None:
        return None
    logger.info(
        "bootstrap: in-corpus citation counts recounted (%d changed) in %.1f s",
        changed, time.perf_counter() - t0,
    )  # fmt: skip
    return changed
