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

Example:
    >>> from ingest.parse import source_ref_for
    >>> jobs = [(p, source_ref_for(p)) for p in paths]  # doctest: +SKIP
    >>> for index, items in parse_ordered(jobs, workers=2):  # doctest: +SKIP
    ...     store.apply(items)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
from collections.abc import Callable, Generator, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingest.records import SourceRef
from ingest.rows import StoreItem, prepare_item
from litpulse.core.errors import WorkerError

__all__ = ["parse_ordered", "start_method"]

logger = logging.getLogger(__name__)

#: Seconds between checks that the other side is still alive while waiting.
_POLL_S = 0.1
#: Seconds a worker gets to exit after it is told to stop, before it is killed.
_STOP_S = 2.0


def start_method() -> str:
    """``forkserver`` where available (fast starts, no inherited threads), else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def parse_ordered(
    jobs: Sequence[tuple[Path, SourceRef]],
    *,
    workers: int,
    limits: Any = None,
    queue_batches: int = 4,
    chunk_items: int = 250,
    prepare: bool = True,
    parse: Callable[..., Iterator[Any]] | None = None,
) -> Generator[tuple[int, Iterator[StoreItem]], None, None]:
    """Parse ``jobs`` in ``workers`` processes; yield ``(job index, items)`` in job order.

    Args:
        jobs: ``(path, source_ref)`` per file, in the order to apply them.
        workers: Parse processes (``0``: parse here, in this process).
        limits: :class:`ingest.parse.ParseLimits` (default: its defaults).
        queue_batches: Chunks that may wait per worker (bounds memory).
        chunk_items: Items per chunk sent from a worker.
        prepare: Turn records into :class:`ingest.rows.PreparedRecord` in the worker.
        parse: The parser, called as ``parse(path, source_ref=, limits=)`` (default
            :func:`ingest.parse.iter_items`). Workers import it by name; one that cannot
            be sent by name (a closure, a test double) runs in this process instead.

    Yields:
        The index of each job and an iterator of its items. Read each job's items to
        the end before the next (the generator skips what is left unread).

    Raises:
        WorkerError: A worker died before finishing its jobs.
        ValueError: A bad ``workers``, ``queue_batches`` or ``chunk_items``.
        Exception: Whatever a worker raised (:class:`~litpulse.core.errors.ParseError`
            for a file it cannot open...), where its job is read.
    """
    if workers < 0 or queue_batches < 1 or chunk_items < 1:
        raise ValueError(
            f"need workers >= 0, queue_batches >= 1, chunk_items >= 1; got {workers}, "
            f"{queue_batches}, {chunk_items}"
        )
    if workers > 0 and parse is not None and not _by_name(parse):
        logger.info("parser %r cannot go to a worker process: parsing here", parse)
        workers = 0
    if workers == 0:
        for index, (path, ref) in enumerate(jobs):
            yield index, _parse_here(path, ref, limits, prepare, parse)
        return
    n = min(workers, len(jobs))
    if n == 0:
        return
    ctx: Any = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["ingest.parallel", "ingest.parse"])  # warm server
    keep_r, keep_w = ctx.Pipe(duplex=False)  # EOF in the workers when we are gone
    queues: list[Any] = []
    procs: list[Any] = []
    try:
        for w in range(n):
            mine = [(i, str(p), ref) for i, (p, ref) in enumerate(jobs) if i % n == w]
            q = ctx.Queue(maxsize=queue_batches)
            proc = ctx.Process(
                target=_worker,
                args=(mine, limits, prepare, chunk_items, q, keep_r, parse),
                name=f"litpulse-parse-{w}",
                daemon=True,
            )
            proc.start()
            queues.append(q)
            procs.append(proc)
        keep_r.close()
        for index, (path, _ref) in enumerate(jobs):
            reader = _JobReader(index, path, queues[index % n], procs[index % n])
            yield index, iter(reader)
            reader.drain()
    finally:
        keep_w.close()  # tells every worker to stop
        _stop(procs, queues)


def _by_name(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` pickles by reference (a module-level function a worker can import)."""
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _parse_here(
    path: Path, ref: SourceRef, limits: Any, prepare: bool, parse: Callable[..., Any] | None
) -> Iterator[StoreItem]:
    from ingest.parse import iter_items

    for item in (parse or iter_items)(path, source_ref=ref, limits=limits):
        yield prepare_item(item) if prepare else item


class _JobReader:
    """The items of one job, read from its worker's queue."""

    def __init__(self, index: int, path: Path, q: Any, proc: Any) -> None:
        self.index, self.path, self.q, self.proc = index, path, q, proc
        self.done = False

    def __iter__(self) -> Iterator[StoreItem]:
        while not self.done:
            kind, index, payload = self._get()
            if index != self.index:  # pragma: no cover - the protocol forbids it
                raise WorkerError(f"parse worker sent job {index} while job {self.index} was due")
            if kind == "items":
                yield from payload
            elif kind == "end":
                self.done = True
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
            try:  # it exited: whatever it sent before is in the pipe by now
                msg = self.q.get(timeout=_POLL_S)
                return msg
            except queue.Empty:
                raise WorkerError(
                    f"the parse worker of {self.path} died (exit code {self.proc.exitcode}) "
                    "before finishing it; committed batches stay, a re-run resumes"
                ) from None


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
    jobs: list[tuple[int, str, SourceRef]],
    limits: Any,
    prepare: bool,
    chunk_items: int,
    q: Any,
    keep: Connection,
    parse: Callable[..., Any] | None = None,
) -> None:
    """Parse ``jobs`` in order into ``q``; stop when ``keep`` reaches end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the caller stops us
    from ingest.parse import iter_items

    iter_items = parse or iter_items

    def put(msg: tuple[str, int, Any]) -> None:
        while True:
            try:
                q.put(msg, timeout=_POLL_S)
                return
            except queue.Full:
                if keep.poll():  # EOF: the caller is gone or stopped reading
                    os._exit(0)

    for index, path, ref in jobs:
        try:
            chunk: list[Any] = []
            for item in iter_items(path, source_ref=ref, limits=limits):
                chunk.append(prepare_item(item) if prepare else item)
                if len(chunk) >= chunk_items:
                    put(("items", index, chunk))
                    chunk = []
                    if keep.poll():
                        os._exit(0)
            if chunk:
                put(("items", index, chunk))
            put(("end", index, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put(("error", index, _pickle_error(exc)))
            break
    # The last messages may still sit in the queue's feeder thread, which a normal exit
    # waits for: stay until the caller is done (or gone), then leave without waiting, so
    # a killed caller never leaves a worker blocked on a pipe nobody reads.
    keep.poll(None)
    os._exit(0)


def _pickle_error(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling
        return pickle.dumps(WorkerError(f"{type(exc).__name__}: {exc}"))


def _unpickle_error(data: bytes, path: Path) -> BaseException:
    exc: BaseException = pickle.loads(data)
    logger.error("parse worker failed on %s: %s: %s", path, type(exc).__name__, exc)
    return exc
