"""Parse files in worker processes while the caller stores: ordered, bounded, fail-fast.

:func:`parse_ordered` runs ``workers`` parse processes (start method ``forkserver``
where the platform has it, else ``spawn``; never ``fork``, which would copy the
writer's threads and database connections). Worker ``w`` parses jobs ``w``, ``w + N``,
``w + 2N``… in order and prepares each record for the store in the same process
(:func:`ingest.rows.prepare`: its JSON, hash, terms and references), so the writer only
decides and writes. Items travel in chunks through one bounded queue per worker, and
the caller reads job 0 from worker 0, job 1 from worker 1 and so on: items come out
strictly in job order and, within a job, in file order — the positions the store's
replay rules rely on (:mod:`ingest.rules`).

Memory stays flat whatever the file size: at most ``queue_batches`` chunks of
``chunk_items`` items wait per worker. A worker that raises hands its exception to the
caller (raised where the caller reads that job); one that dies (killed, out of memory)
raises :class:`~litpulse.core.errors.WorkerError` there; neither hangs. When the caller
stops early (an error in the store, Ctrl-C, ``close()`` of the generator) the workers
are stopped; when the caller's process is killed, the workers notice within a fraction
of a second (a pipe only the caller holds reaches end-of-file) and exit.

``workers=0`` parses in the caller's process (tests, debugging; the same items).

**Striping** (one file over several workers): a job is *striped* when every worker
parses it, each its stripe of the file's units (:func:`ingest.parse.iter_units`: every
worker decompresses and cuts the whole file, which is cheap, ~10 % of the parse, and
parses, reads and prepares only the units ``u`` with ``u % N == w``; a unit is one batch
of about :data:`ingest.parse.BATCH_BYTES`, or one stretch that is not a record). A worker
sends each unit's items followed by ``None``, and the caller reads unit 0 from worker 0,
unit 1 from worker 1… so the items still come out in file order; the worker the unit
after the last would belong to sends the job's end. By default the jobs of a sequence
left when fewer remain than workers are striped (one file alone: all of it), so a single
file is no longer bound by one process; the jobs before them go one per worker, which
costs no duplicate cutting. A worker's exception or death is raised where the caller
next needs one of its units (every item before it was read), and the bounds, spilling
(one spill file per worker and job) and kill safety are those of whole jobs.

**Lazy jobs** (an iterable that is not a sequence, e.g. files as they finish
downloading): a feeder thread takes the next job only when it may go to a worker — at
most ``workers`` jobs beyond the one the caller reads, so even one worker parses the
next file while the caller stores the current one — so taking a job may block (on a
download) without stopping the caller, which reads the jobs already out.
An exception raised by the iterable is raised where the caller asks for that job. When
the stream stops it waits for the feeder thread, also inside the iterable: nothing the
stream started runs on after it is closed, so an iterable must stop taking a job soon
after its own caller stops (as the bootstrap's does).

**Spilling** (``spill_dir``): with bounded queues a worker can run only a few chunks
ahead of the caller, so a worker could not parse the next file while the caller stores
the current one. With ``spill_dir``, a worker whose job the caller has not
reached yet writes its chunks to a file there instead of waiting (pickled, as the queue
would send them); when the caller reaches the job it reads that file, then the rest
streams through the queue. Memory stays flat; disk holds at most the prepared items of
the ``workers`` jobs ahead. The files are removed as they are read and on exit.

**A file that changes while it is read.** Each job carries the identity of its file
(:class:`FileIdentity`: device, inode, size and modification time) as the caller
recorded it (``(path, ref, identity)``), or as this function finds it when it takes the
job (``(path, ref)``). Whoever parses the file (a worker, every worker of a striped job,
or this process) opens it once, checks the open file against that identity, and checks
it again (``fstat`` on the open file) before handing on any items read from it and at
its end. A mismatch raises :class:`~litpulse.core.errors.FileChangedError` where the job
is read, in order, like any worker error, so the caller stores exactly the items read
before the change — a prefix of the recorded version, what a run killed at that point
would have stored — and nothing after. Replaced by rename while it is read, a file is
still read whole as recorded (the open file is the old one); a striped worker that opens
it after the replacement finds another file and refuses, so all the workers of one job
read one version.

Example:
    >>> from ingest.parse import source_ref_for
    >>> jobs = [(p, source_ref_for(p)) for p in paths]  # doctest: +SKIP
    >>> for index, items in parse_ordered(jobs, workers=2):  # doctest: +SKIP
    ...     store.apply(items)
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingest.records import Record, SourceRef
from ingest.rows import PreparedRecord, StoreItem, prepare_item
from ingest.rows import prepare as prepare_record
from litpulse.core.errors import FileChangedError, ParseError, WorkerError

__all__ = ["CHUNK_ITEMS", "FileIdentity", "parse_ordered", "queue_batches_for", "start_method"]

logger = logging.getLogger(__name__)

#: Seconds between checks that the other side is still alive while waiting.
_POLL_S = 0.1
#: Seconds a worker gets to exit after it is told to stop, before it is killed.
_STOP_S = 2.0
#: What reading a gone worker's queue raises: its end of the pipe is closed, maybe part-way
#: through a message (the caller holds no write end: see :func:`parse_ordered`).
_GONE = (EOFError, OSError)
#: Items per chunk a worker sends (the default of :func:`parse_ordered`).
CHUNK_ITEMS = 250


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What tells one version of a file from another while it is read.

    Device and inode tell a file renamed over the path; size and modification time a file
    written in place. Not the change time: it moves when a file read whole as recorded is
    unlinked (renamed over) or its mode changes. A rewrite of the same size that sets the
    modification time back, or lands in the same tick of the file system's clock, is
    not seen.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> FileIdentity | None:
        """The identity of the file at ``path`` now (``None``: it cannot be read)."""
        try:
            return cls.of(os.stat(path))
        except OSError:
            return None

    def changes(self, now: FileIdentity) -> str:
        """How ``now`` differs from this identity, in words (empty: it does not)."""
        if (self.dev, self.ino) != (now.dev, now.ino):
            return "replaced by another file"
        out = []
        if self.size != now.size:
            out.append(f"size {self.size} -> {now.size} bytes")
        if self.mtime_ns != now.mtime_ns:
            out.append(f"modified at {now.mtime_ns} ns, recorded {self.mtime_ns}")
        return ", ".join(out)


#: A job: a file and the source of its items, and the identity its caller recorded (without
#: one, the identity found when the job is taken).
Job = tuple[Path, SourceRef] | tuple[Path, SourceRef, FileIdentity | None]


def queue_batches_for(batch_size: int, chunk_items: int = CHUNK_ITEMS) -> int:
    """Chunks per worker queue that let a worker prepare a whole store batch ahead.

    The caller takes a batch of ``batch_size`` items, then writes it; with room for
    fewer items than that, the worker stops soon after the writing starts and the two
    processes take turns instead of overlapping.
    """
    return -(-batch_size // chunk_items) + 1


def start_method() -> str:
    """``forkserver`` where available (fast starts, no inherited threads), else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def parse_ordered(
    jobs: Iterable[Job],
    *,
    workers: int,
    limits: Any = None,
    queue_batches: int = 4,
    chunk_items: int = CHUNK_ITEMS,
    prepare: bool = True,
    parse: Callable[..., Iterator[Any]] | None = None,
    spill_dir: Path | None = None,
    stripe: bool | None = None,
    units: Callable[..., Iterator[tuple[int, Iterator[Any] | None]]] | None = None,
    contents: dict[int, str | None] | None = None,
) -> Generator[tuple[int, Iterator[StoreItem]], None, None]:
    """Parse ``jobs`` in ``workers`` processes; yield ``(job index, items)`` in job order.

    Args:
        jobs: ``(path, source_ref)`` or ``(path, source_ref, identity)`` per file, in
            the order to apply them: a sequence, or a lazy iterable (taken at most
            ``workers`` jobs beyond the one read; taking one must end soon after the
            caller stops, since stopping waits for it: a lazy iterable with a ``stop``
            attribute, a :class:`threading.Event`, has it set first, whatever ends the
            stream — an error, the caller's close, a KeyboardInterrupt). ``identity``: the
            :class:`FileIdentity` the caller recorded (``None``, or left out: the one
            found when the job is taken); a file found otherwise raises
            :class:`~litpulse.core.errors.FileChangedError`.
        workers: Parse processes (``0``: parse here, in this process).
        limits: :class:`ingest.parse.ParseLimits` (default: its defaults).
        queue_batches: Chunks that may wait per worker (bounds memory;
            :func:`queue_batches_for` the caller's store batch lets parse and store overlap).
        chunk_items: Items per chunk sent from a worker.
        prepare: Turn records into :class:`ingest.rows.PreparedRecord` in the worker.
        parse: The parser, called as ``parse(file, source_ref=, limits=)`` with the
            job's file open (binary; default :func:`ingest.parse.iter_items`). Workers
            import it by name; one that cannot be sent by name (a closure, a test
            double) runs in this process instead.
        spill_dir: Where workers ahead of the caller spill their chunks (``None``: they
            wait on their bounded queue instead).
        stripe: Parse a job in all the workers at once, each its stripe of the file's
            units (:func:`ingest.parse.iter_units`): ``True`` every job; ``None`` (the
            default) the jobs of a sequence that are left when fewer remain than workers
            (the last ``len(jobs) % workers``: one file alone is striped), never a lazy
            job; ``False`` never. Needs ``workers >= 2`` and the default parser (or
            ``units``).
        units: The unit parser of striped jobs, called as ``units(file, source_ref=,
            limits=, part=, parts=)`` (default :func:`ingest.parse.iter_units`), by name.
        contents: The jobs (of a sequence) whose content MD5 to take as they are parsed,
            by index; each is set, as the end of its items is read, to the MD5 of the
            file's content (:class:`ingest.parse.ContentDigest`: a gzip file's unpacked
            bytes), or ``None`` where it was not read whole (a damaged gzip stream). Taken
            by the process that parses the job (of a striped job, stripe 0's, which then
            also sends it at the job's end), from the bytes it unpacks anyway: the file is
            not unpacked again. The parser (and ``units``) is called with ``content=``
            for those jobs (the default ones take it). Ignored for lazy jobs.

    Yields:
        The index of each job and an iterator of its items. Read each job's items to
        the end before the next (the generator skips what is left unread).

    Raises:
        WorkerError: A worker died before finishing its jobs.
        ValueError: A bad ``workers``, ``queue_batches`` or ``chunk_items``.
        FileChangedError: A job's file is not, or no longer, the version of its identity
            (raised after the items read before the change).
        Exception: Whatever a worker raised (:class:`~litpulse.core.errors.ParseError`
            for a file it cannot open...), where its job (its unit, when striped) is read.
    """
    if workers < 0 or queue_batches < 1 or chunk_items < 1:
        raise ValueError(
            f"need workers >= 0, queue_batches >= 1, chunk_items >= 1; got {workers}, "
            f"{queue_batches}, {chunk_items}"
        )
    if workers > 0 and parse is not None and not _by_name(parse):
        logger.info("parser %r cannot go to a worker process: parsing here", parse)
        workers = 0
    lazy = not isinstance(jobs, Sequence)
    wanted = contents if contents is not None and not lazy else {}
    if workers == 0:
        for index, job in enumerate(jobs):
            path, ref, identity = _identified(job)
            yield index, _parse_here(
                path, ref, identity, limits, prepare, parse, chunk_items,
                wanted if index in wanted else None, index,
            )  # fmt: skip
        return
    seq = [] if lazy else [_identified(job) for job in jobs]
    striping = stripe is not False and workers >= 2 and _can_stripe(parse, units)
    parts_of: list[int] = []  # per job of a sequence: 1, or the workers sharing it
    if lazy:
        n = workers
        striping = striping and stripe is True
    else:
        count = len(seq)
        tail = count if stripe else count % workers
        striping = striping and tail > 0
        n = workers if striping else min(workers, count)
        parts_of = [n if striping and i >= count - tail else 1 for i in range(count)]
    if n == 0:
        return
    ctx: Any = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["ingest.parallel", "ingest.parse"])  # warm server
    keep_r, keep_w = ctx.Pipe(duplex=False)  # EOF in the workers when we are gone
    queues: list[Any] = []
    procs: list[Any] = []
    at = ctx.RawValue("q", -1)  # the job the caller reads (workers ahead of it may spill)
    spill = Path(tempfile.mkdtemp(prefix="litpulse-spill-", dir=spill_dir)) if spill_dir else None
    feeder: _Feeder | None = None
    job_queues: list[Any] = []
    try:
        for w in range(n):
            mine: Any
            if lazy:
                mine = ctx.Queue()
                job_queues.append(mine)
            else:
                mine = [
                    (i, str(p), ref, ident, w if parts > 1 else 0, parts, i in wanted and w == 0
                     if parts > 1 else i in wanted)
                    for i, ((p, ref, ident), parts) in enumerate(zip(seq, parts_of, strict=True))
                    if parts > 1 or i % n == w
                ]  # fmt: skip
            q = ctx.Queue(maxsize=queue_batches)
            proc = ctx.Process(
                target=_worker,
                args=(mine, limits, prepare, chunk_items, q, keep_r, parse, at, spill, units),
                name=f"litpulse-parse-{w}",
                daemon=True,
            )
            proc.start()
            # we only read: without our copy of the write end, a worker killed part-way
            # through writing a message leaves EOF after the partial bytes, not a read that
            # waits forever for the rest
            q._writer.close()
            queues.append(q)
            procs.append(proc)
        keep_r.close()
        if lazy:
            feeder = _Feeder(iter(jobs), job_queues, n, striping)
            feeder.start()
        paths: dict[int, Path] = {}  # job → path, to name the job a late error is about
        for index, path in enumerate(feeder.paths() if feeder else (job[0] for job in seq)):
            at.value = index
            paths[index] = path
            reader: _JobReader | _StripedReader
            if striping and (lazy or parts_of[index] > 1):
                reader = _StripedReader(index, path, queues, procs, paths, wanted)
            else:
                reader = _JobReader(
                    index, path, queues[index % n], procs[index % n], paths, wanted
                )
            yield index, iter(reader)
            reader.drain()
        _finish(queues, procs, paths)
    finally:
        keep_w.close()  # tells every worker to stop
        if feeder is not None:
            stop = getattr(jobs, "stop", None)
            if isinstance(stop, threading.Event):
                stop.set()  # the job source ends a wait or download it is in (see Args)
            feeder.stop()
        _stop(procs, queues)
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)


def _finish(queues: list[Any], procs: list[Any], paths: Mapping[int, Path]) -> None:
    """After the last job: read each worker's queue up to its ``done``, raising an error a
    worker sent after its last unit of a striped job (whose end another worker sent, so no
    reader of that job met it). A worker that is gone sent all it could."""
    for q, proc in zip(queues, procs, strict=True):
        while True:
            try:
                kind, index, payload = q.get(timeout=_POLL_S)
            except _GONE:  # it sent all it could
                break
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:  # it exited: whatever it sent before is in the pipe by now
                    kind, index, payload = q.get(timeout=_POLL_S)
                except (queue.Empty, *_GONE):
                    break
            if kind == "done":
                break
            if kind == "error":
                raise _unpickle_error(payload, paths.get(index, f"job {index}"))
            raise WorkerError(  # pragma: no cover - the protocol forbids it
                f"parse worker sent {kind!r} of job {index} after the last job"
            )


def _can_stripe(parse: Callable[..., Any] | None, units: Callable[..., Any] | None) -> bool:
    """Whether jobs may be striped: the default parser (or a unit parser sent by name)."""
    if units is not None:
        return _by_name(units)
    if parse is None:
        return True
    from ingest.parse import iter_items

    return parse is iter_items


class _Feeder(threading.Thread):
    """Hands lazy jobs to their workers, at most ``n`` beyond the one the caller reads.

    :meth:`stop` waits for the thread, even inside the iterable (a download): a thread
    left running could write on after the stream is closed. The iterable must therefore
    end a job it is taking soon after its caller stops (the bootstrap sets its own stop
    event before closing the stream).
    """

    def __init__(
        self,
        jobs: Iterator[Job],
        job_queues: list[Any],
        n: int,
        striped: bool,
    ):
        super().__init__(name="litpulse-parse-feeder", daemon=True)
        self.jobs, self.job_queues, self.n, self.striped = jobs, job_queues, n, striped
        self.cond = threading.Condition()
        self.reading = 0  # the job the caller reads (or waits for)
        self.sent: list[Path] = []
        self.done = False
        self.stopped = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            index = 0
            while True:
                with self.cond:
                    while not self.stopped and index > self.reading + self.n:
                        self.cond.wait(_POLL_S)
                    if self.stopped:
                        return
                job = next(self.jobs, None)
                if job is None:
                    return
                path, ref, identity = _identified(job)
                if self.striped:  # every worker parses its stripe of it
                    for w, q in enumerate(self.job_queues):
                        q.put((index, str(path), ref, identity, w, self.n, False))
                else:
                    self.job_queues[index % self.n].put(
                        (index, str(path), ref, identity, 0, 1, False)
                    )
                with self.cond:
                    self.sent.append(path)
                    self.cond.notify_all()
                index += 1
        except BaseException as exc:  # noqa: BLE001 - raised where the caller reads that job
            self.error = exc
        finally:
            for q in self.job_queues:
                q.put(None)
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def paths(self) -> Iterator[Path]:
        """The path of each job in order, as soon as it is handed out (blocks until then)."""
        index = 0
        while True:
            with self.cond:
                self.reading = index
                self.cond.notify_all()
                while index >= len(self.sent) and not self.done:
                    self.cond.wait(_POLL_S)
                if index >= len(self.sent):
                    if self.error is not None:
                        raise self.error
                    return
                path = self.sent[index]
            yield path
            index += 1

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.join(timeout=_STOP_S)
        if self.is_alive():
            logger.warning("waiting for the parse feeder to finish taking a job")
            self.join()


def _by_name(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` pickles by reference (a module-level function a worker can import)."""
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _identified(job: Job) -> tuple[Path, SourceRef, FileIdentity | None]:
    """``job`` with an identity: its own, else the file's now (``None``: it cannot be read;
    opening it raises then)."""
    path, ref, *rest = job
    identity = rest[0] if rest else None
    return path, ref, identity if identity is not None else FileIdentity.read(path)


class _Opened:
    """A job's file, open, checked against its identity when opened and on :meth:`check`.

    The checks look at the open file (``fstat``): whatever was read from it before a check
    that passes is the version of the identity (``None``: the file as opened here).
    """

    def __init__(self, path: str | os.PathLike[str], identity: FileIdentity | None) -> None:
        self.path = os.fspath(path)
        try:
            self.fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ParseError(f"cannot open {self.path}: {exc}") from exc
        self.identity = identity or self._now()
        try:
            self.check("is not the version recorded before it was opened")
        except BaseException:
            self.fh.close()
            raise

    def _now(self) -> FileIdentity:
        return FileIdentity.of(os.fstat(self.fh.fileno()))

    def check(self, what: str = "changed while it was read") -> None:
        """Raise :class:`FileChangedError` when the open file is not the recorded version."""
        change = self.identity.changes(self._now())
        if change:
            raise FileChangedError(
                f"{self.path} {what} ({change}): nothing read after the change is stored; "
                "run again to read it as its new version"
            )

    def close(self) -> None:
        self.fh.close()


def _parse_here(
    path: Path,
    ref: SourceRef,
    identity: FileIdentity | None,
    limits: Any,
    prepare: bool,
    parse: Callable[..., Any] | None,
    chunk_items: int,
    contents: dict[int, str | None] | None = None,
    index: int = 0,
) -> Iterator[StoreItem]:
    """The items of one job parsed here, handed on a chunk at a time once the file is
    checked (as a worker sends them); ``contents[index]`` set to its content MD5 at its
    end, where ``contents`` is given."""
    from ingest.parse import ContentDigest, iter_items

    src = _Opened(path, identity)
    chunk: list[Any] = []
    digest = ContentDigest() if contents is not None else None
    kw: dict[str, Any] = {"content": digest} if digest is not None else {}
    try:
        for item in (parse or iter_items)(src.fh, source_ref=ref, limits=limits, **kw):
            chunk.append(prepare_item(item) if prepare else item)
            if len(chunk) >= chunk_items:
                src.check()
                yield from chunk
                chunk = []
        src.check()  # read to its end as recorded
    except Exception:
        src.check()  # the file changed: that error, and nothing read since the last check
        yield from chunk  # the items before the parser's error, as a worker sends them
        raise
    finally:
        src.close()
    if contents is not None and digest is not None:
        contents[index] = digest.hexdigest
    yield from chunk


class _JobReader:
    """The items of one job, read from its worker's queue."""

    def __init__(
        self,
        index: int,
        path: Path,
        q: Any,
        proc: Any,
        paths: Mapping[int, Path] | None = None,
        contents: dict[int, str | None] | None = None,
    ) -> None:
        self.index, self.path, self.q, self.proc = index, path, q, proc
        self.paths = paths or {}
        self.contents = contents if contents is not None and index in contents else None
        self.done = False

    def __iter__(self) -> Iterator[StoreItem]:
        while not self.done:
            kind, index, payload = self._get()
            if index != self.index:
                self.done = True
                if kind == "error" and index < self.index:
                    # it failed on a striped job after its last unit there: it stopped
                    raise _unpickle_error(payload, self.paths.get(index, f"job {index}"))
                raise WorkerError(  # pragma: no cover - the protocol forbids it
                    f"parse worker sent job {index} while job {self.index} was due"
                )
            if kind == "items":
                yield from _unwire(pickle.loads(payload))
            elif kind == "spill":
                yield from _read_spill(Path(payload))
            elif kind == "end":  # with the content MD5 of a job whose MD5 was asked
                self.done = True
                if self.contents is not None:
                    self.contents[self.index] = payload
            else:
                self.done = True
                raise _unpickle_error(payload, self.path)

    def drain(self) -> None:
        """Skip what the caller left unread of this job."""
        for _item in self:
            pass

    def _get(self) -> tuple[str, int, Any]:
        while True:
            try:
                msg: tuple[str, int, Any] = self.q.get(timeout=_POLL_S)
                return msg
            except queue.Empty:
                if self.proc.is_alive():
                    continue
            except _GONE:
                pass
            try:  # it exited: whatever it sent before is in the pipe by now
                msg = self.q.get(timeout=_POLL_S)
                return msg
            except (queue.Empty, *_GONE):
                self.proc.join(timeout=_STOP_S)  # its exit code, once the pipe said EOF
                raise WorkerError(
                    f"the parse worker of {self.path} died (exit code {self.proc.exitcode}) "
                    "before finishing it; committed batches stay, a re-run resumes"
                ) from None


class _StripedReader:
    """The items of one striped job: unit ``u`` read from worker ``u % N``, in order.

    Each worker sends its units' items, each unit closed by ``None``; the worker that
    would own the unit after the last one sends the job's end. Of a job whose content MD5
    is asked (``contents``), stripe 0 takes it and sends its end with it in any case: read
    here after the job's end where another worker sent that.
    """

    def __init__(
        self,
        index: int,
        path: Path,
        queues: list[Any],
        procs: list[Any],
        paths: Mapping[int, Path] | None = None,
        contents: dict[int, str | None] | None = None,
    ) -> None:
        self.hashed = contents is not None and index in contents
        self.streams = [
            iter(_JobReader(index, path, q, proc, paths, contents if w == 0 else None))
            for w, (q, proc) in enumerate(zip(queues, procs, strict=True))
        ]
        self.unit = 0
        self.done = False

    def __iter__(self) -> Iterator[StoreItem]:
        n = len(self.streams)
        while not self.done:
            for item in self.streams[self.unit % n]:
                if item is None:  # the end of this unit
                    break
                yield item
            else:  # the job's end
                self.done = True
                if self.hashed and self.unit % n:  # stripe 0's end, with the content MD5
                    for _item in self.streams[0]:
                        raise WorkerError(  # pragma: no cover - the protocol forbids it
                            "parse worker 0 sent items after the end of its stripe"
                        )
                return
            self.unit += 1

    def drain(self) -> None:
        """Skip what the caller left unread of this job."""
        for _item in self:
            pass


def _read_spill(path: Path) -> Iterator[StoreItem]:
    """The chunks a worker spilled to ``path`` (removed once read)."""
    try:
        with path.open("rb") as fh:
            while True:
                try:
                    chunk = pickle.load(fh)
                except EOFError:
                    return
                yield from _unwire(chunk)
    finally:
        path.unlink(missing_ok=True)


def _stop(procs: list[Any], queues: list[Any]) -> None:
    """Stop the workers (they see the closed pipe; stragglers are terminated)."""
    for q in queues:
        q.cancel_join_thread()
    deadline = _STOP_S
    for proc in procs:
        proc.join(timeout=deadline)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=_STOP_S)
        if proc.is_alive():  # pragma: no cover - ignored SIGTERM
            proc.kill()
            proc.join()
        deadline = 0.1
    for q in queues:
        q.close()


# ------------------------------------------------------------------------------ worker


def _worker(
    jobs: Any,
    limits: Any,
    prepare: bool,
    chunk_items: int,
    q: Any,
    keep: Connection,
    parse: Callable[..., Any] | None = None,
    at: Any = None,
    spill: Path | None = None,
    units: Callable[..., Any] | None = None,
) -> None:
    """Parse ``jobs`` in order into ``q``; stop when ``keep`` reaches end-of-file.

    ``jobs``: a list of ``(index, path, ref, identity, part, parts, hashed)``, or a queue
    of them ending with ``None``; a job with ``parts > 1`` is striped: only the units of
    stripe ``part`` are parsed (:func:`ingest.parse.iter_units`), each followed by
    ``None``, and the job's end is sent by the stripe the unit after the last would
    belong to. ``hashed``: the content MD5 of the job's file is taken as it is read
    (:class:`ingest.parse.ContentDigest`) and sent with the job's end (by this stripe,
    stripe 0, in any case: see :class:`_StripedReader`).
    The file is checked against ``identity`` when opened, before each chunk is sent or
    spilled, and at its end (:class:`_Opened`): a change is the job's error, and what
    was read since the last check is dropped.
    ``at`` (the job the caller reads) and ``spill`` (a folder): see :class:`_Out`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the caller stops us
    from ingest import parse as parsing

    iter_items = parse or parsing.iter_items  # one thread (its default): see iter_items
    iter_units = units or parsing.iter_units

    def put(msg: tuple[str, int, Any]) -> None:
        while True:
            try:
                q.put(msg, timeout=_POLL_S)
                return
            except queue.Full:
                if keep.poll():  # EOF: the caller is gone or stopped reading
                    os._exit(0)

    for index, path, ref, identity, part, parts, hashed in _jobs_of(jobs, keep):
        out = _Out(index, put, at, spill, part if parts > 1 else None)
        src: _Opened | None = None
        digest = parsing.ContentDigest() if hashed else None
        kw: dict[str, Any] = {"content": digest} if digest is not None else {}
        try:
            src = out.src = _Opened(path, identity)
            ends = True
            if parts == 1:
                for item in iter_items(src.fh, source_ref=ref, limits=limits, **kw):
                    out.add(_wire(item, prepare), chunk_items, keep)
            else:
                for u, items in iter_units(
                    src.fh, source_ref=ref, limits=limits, part=part, parts=parts, **kw
                ):
                    if items is None:  # u: the number of units
                        ends = u % parts == part
                        break
                    for item in items:
                        out.add(_wire(item, prepare), chunk_items, keep)
                    out.add(None, chunk_items, keep)  # the end of unit u
            src.check()  # read to its end as recorded
            out.flush()
            if ends or digest is not None:
                put(("end", index, digest.hexdigest if digest is not None else None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error = exc
            try:
                if src is not None:
                    src.check()  # a parser error may come of a change: that is the error
                out.flush()  # (checks the file again before sending what was read)
            except FileChangedError as changed:
                error = changed
                out.items.clear()  # read after the last check: maybe the new version
                out.flush()  # closes and announces the spill file (checked chunks)
            put(("error", index, _pickle_error(error)))
            break
        finally:
            if src is not None:
                src.close()
    put(("done", -1, None))  # the caller reads on to here: no late error goes unread
    # The last messages may still sit in the queue's feeder thread, which a normal exit
    # waits for: stay until the caller is done (or gone), then leave without waiting, so
    # a killed caller never leaves a worker blocked on a pipe nobody reads.
    keep.poll(None)
    os._exit(0)


def _jobs_of(
    jobs: Any, keep: Connection
) -> Iterator[tuple[int, str, SourceRef, FileIdentity | None, int, int, bool]]:
    """A worker's jobs: its list, or its job queue up to ``None`` (lazy jobs)."""
    if isinstance(jobs, list):
        yield from jobs
        return
    while True:
        try:
            job = jobs.get(timeout=_POLL_S)
        except queue.Empty:
            if keep.poll():  # EOF: the caller is gone
                os._exit(0)
            continue
        if job is None:
            return
        yield job


class _Out:
    """Where one job's chunks go: the queue, or a spill file while the caller is behind.

    A job the caller has not reached when it starts (``at`` below its index) spills to
    ``spill/job-INDEX.pkl``, so the worker parses on instead of waiting on a full queue.
    Once the caller reaches the job, the file is closed and announced on the queue
    (``("spill", index, path)``) and the rest streams through the queue: the caller
    reads the file first, so the items keep their order. The file is opened with the
    first chunk it takes: a worker that sends nothing of a job (a striped job none of
    whose units is its own, whose end another worker sends) announces nothing, since
    nobody reads its queue for that job. Every chunk is sent or spilled only once the
    job's file (``src``) is checked: its items were read from the recorded version.
    """

    def __init__(
        self,
        index: int,
        put: Callable[[Any], None],
        at: Any,
        spill: Path | None,
        part: int | None = None,
    ):
        self.index, self.put, self.at = index, put, at
        name = f"job-{index}.pkl" if part is None else f"job-{index}.{part}.pkl"
        self.path = spill / name if spill is not None else None
        self.fh: Any = None
        self.items: list[Any] = []
        self.src: _Opened | None = None
        self.spilling = self.path is not None and at.value < index

    def add(self, item: Any, chunk_items: int, keep: Connection) -> None:
        """Add one item; send the chunk when it is full (and leave if the caller is gone)."""
        self.items.append(item)
        if len(self.items) >= chunk_items:
            items, self.items = self.items, []
            self.chunk(items)
            if keep.poll():  # EOF: the caller is gone or stopped reading
                os._exit(0)

    def chunk(self, items: list[Any]) -> None:
        if self.src is not None:
            self.src.check()
        if self.spilling and self.at.value >= self.index:  # the caller is here: stream
            self.spilling = False
            self.flush()
        if self.spilling:
            if self.fh is None:
                assert self.path is not None
                self.fh = self.path.open("wb")
            pickle.dump(items, self.fh, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            # pickled here, not by the queue's feeder thread, which drops a message it cannot
            # pickle (a traceback on stderr): a failure is this job's error; the feeder
            # then only writes bytes (parse_ordered alone: ~10 % less worker CPU)
            self.put(("items", self.index, pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)))

    def flush(self) -> None:
        """Send the items added since the last chunk; close the spill file (if any) and
        announce it."""
        if self.items:
            items, self.items = self.items, []
            self.chunk(items)
        self.spilling = False
        if self.fh is not None:
            self.fh.close()
            self.fh = None
            self.put(("spill", self.index, str(self.path)))


def _wire(item: Any, prepare: bool) -> Any:
    """``item`` as a worker sends it: a prepared record as a plain tuple (see :func:`_unwire`)."""
    if type(item) is Record and prepare:
        return tuple(prepare_record(item))
    return item


def _unwire(chunk: list[Any]) -> list[Any]:
    """The items of a chunk a worker sent, prepared records as :class:`PreparedRecord` again.

    A named tuple pickles through ``copyreg`` and a Python ``__getnewargs__``, and
    unpickles through its Python ``__new__``: ~3× the cost of the same values as a plain
    tuple (measured: 23 → 8 µs a record to pickle, 26 → 9 to unpickle). Every other item
    is a dataclass, never a plain tuple.
    """
    new = tuple.__new__
    return [new(PreparedRecord, x) if type(x) is tuple else x for x in chunk]


def _pickle_error(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling
        return pickle.dumps(WorkerError(f"{type(exc).__name__}: {exc}"))


def _unpickle_error(data: bytes, where: Path | str) -> BaseException:
    exc: BaseException = pickle.loads(data)
    logger.error("parse worker failed on %s: %s: %s", where, type(exc).__name__, exc)
    return exc
