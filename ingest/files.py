"""Ingest local PubMed XML files (plain or ``.xml.gz``), as one recorded run.

**Reading a file again.** Each file is one source (its absolute path). Its fetch time,
which orders it against other sources of the same file number (every plain file has
number 0: any name but an NLM file's whole name, ``pubmedYYnNNNN.xml[.gz]``, so each
part of a split ``pubmed26n1320_part1.xml`` is a source of its own), is the time this
store first read that version of the file: it is kept in ``checkpoints`` (scope
``files``) with the file's size and modification time, before any of its items is
stored. So a run that resumes a killed one, or repeats a finished one,
reads every unchanged file as the same source as before: the part already stored is a
replay, and everything after it — including items of files the killed run had finished,
which meet rows written by later files — decides exactly as in a run never interrupted.
A changed file gets a new fetch time and counts as a newer source.

**A file that changes while it is read** (rewritten, truncated, appended to, or replaced
between the moment its identity is recorded and the moment a parser opens it) is never
stored as the recorded version: each parse job carries the identity recorded here
(device, inode, size, modification time: :class:`ingest.parallel.FileIdentity`), every
process reading the file checks its open file against it before handing on any item,
and the run fails with :class:`~litpulse.core.errors.FileChangedError` (retryable). Of
that file the store then holds a prefix of the recorded version — what a run killed
just before the change would have stored — and nothing after it: no item of another
version under the recorded fetch time, no item of the recorded version skipped. The
next run records the file as it is then (a new fetch time: a newer source), so it ends
exactly where a run killed at that point and resumed after the change ends. A new
version renamed over the path while the file is read does not change the open file: the
recorded version is read whole, and the next run reads the new one. Not seen (here as
in the fetch times): a rewrite of the same size that keeps the modification time.

**A copy of an NLM file this store applied from NLM's server** (``source_files``) is
told by its MD5 (:func:`_earlier_issues`): the issue applied is read as above; a copy of
an earlier issue that a re-issue replaced is left out with a warning (it would change
nothing: the new issue outranks it, while read as the number's one source its records
further down would undo the new issue's); any other copy is refused before anything is
applied (read as the issue applied, it would be half applied). A file read only from
local copies is told the same way by the MD5 of the copy read last (of its unpacked
content, so that a ``.xml.gz`` copy and its unpacked ``.xml`` are one issue:
``source_times.md5``; the server's ``.xml.gz`` of that content is that issue too): a
copy of an earlier one is left out, any other copy is read whole as a re-issue of it
(:func:`_reissue`: ranked after it), and an update-file run that then applies an issue
other than that copy's applies it as a re-issue too. The MD5 of a copy read first is
taken by its parse from the bytes it reads and unpacks (not by reading and unpacking it
once more: :func:`ingest.parallel.parse_ordered` ``contents``) and recorded once the
file's last batch is stored (:func:`_note_first_issues`): a run killed before that
leaves an issue not recorded, replaced whole as below by the next copy or issue, while
the same copy read again is the first read still and records it. A copy read first by a release
before MD5s were recorded (``source_times.md5`` NULL) is of an unknown issue: another
copy, or the server's issue, is read whole as a re-issue of it
(:data:`ingest.store.UNKNOWN_ISSUE`), never half as that copy read again.

Example:
    >>> from litpulse.core.settings import Settings
    >>> counts = ingest_files(Settings.from_env(), ["pubmed26n0001.xml.gz"])  # doctest: +SKIP
    >>> counts.inserted  # doctest: +SKIP
    30000
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.checkpoints import FILES_SCOPE, file_key
from ingest.records import SourceRef, nlm_file_name, nlm_file_order
from ingest.rows import StoreItem
from ingest.runs import IngestCounts, OpenRun, recorded_run
from ingest.store import Store
from litpulse.core.checksums import content_md5, file_md5
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow

if TYPE_CHECKING:
    from ingest.parallel import FileIdentity

__all__ = ["SCOPE", "ingest_files", "order_files"]

logger = logging.getLogger(__name__)

#: Checkpoint scope of the files read: key SHA-1 of the path, value its identity and time.
SCOPE = FILES_SCOPE


def order_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The paths in the order to apply them.

    NLM update and baseline files (named exactly ``pubmedYYnNNNN.xml.gz`` or ``.xml``:
    :func:`ingest.records.nlm_file_order`) are sorted by year, then number, among the
    slots they occupy; every other path keeps its place.
    """
    out = [Path(p) for p in paths]
    slots = [i for i, p in enumerate(out) if nlm_file_order(p) is not None]
    ordered = sorted((out[i] for i in slots), key=lambda p: nlm_file_order(p) or (0, 0))
    for i, p in zip(slots, ordered, strict=True):
        out[i] = p
    return out


def ingest_files(
    settings: Settings,
    paths: Sequence[str | os.PathLike[str]],
    *,
    progress: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    stripe: bool | None = None,
) -> IngestCounts:
    """Parse and store the given files in order, as one ingest run (source ``files``).

    Files are parsed in ``workers`` processes while this one stores
    (:func:`ingest.parallel.parse_ordered`): each file by one of them, and the files left
    when fewer remain than workers (one file alone) split over all of them; items are
    stored in file order whatever the number of workers.

    Args:
        settings: Where the store is.
        paths: XML files (plain or gzip); NLM files are applied in number order.
        progress: Show a progress bar per file (tqdm, on stderr).
        batch_size: Items per database transaction (default ``settings.store_batch``).
        workers: Parse processes (default ``settings.ingest_workers``; 0: parse here).
        stripe: Split every file over the workers (``True``), none (``False``), or as
            above (``None``); see :func:`ingest.parallel.parse_ordered`.

    Returns:
        The counts over all files. Running the same files again gives
        ``inserted == updated == deleted == 0``.

    Raises:
        ConfigError: A path does not exist or is a directory (nothing is applied, no run
            is recorded).
        FileChangedError: A file changed while it was read (see the module's notes).
        Exception: Whatever parsing or storing raised; the run is marked ``failed``
            with the error first.
    """
    from ingest import parse
    from ingest.parallel import parse_ordered, queue_batches_for
    from ingest.parse import ParseLimits, source_ref_for
    from litpulse.core.db import connect

    size = settings.store_batch if batch_size is None else batch_size
    files = [p.resolve() for p in order_files(paths)]
    folders = [str(p) for p in files if p.is_dir()]
    if folders:  # a usage error, as every path the command cannot read (exit 2)
        raise ConfigError(f"a directory, not a file: {', '.join(folders)} (give the files "
                          "in it, e.g. DIR/*.xml.gz)")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ConfigError(f"no such file: {', '.join(missing)}")
    limits = ParseLimits.from_settings(settings)
    store = Store(connect(settings))
    target = " ".join(str(p) for p in files)
    earlier, digests = _earlier_issues(store, files)
    files = [p for p in files if p not in earlier]
    per_file: list[dict[str, object]] = []
    with recorded_run(  # no window's check judges a local file's records
        store, "files", target=target, judged=True
    ) as run:
        run.details = {"files": per_file}
        if earlier:
            run.details["skipped"] = [{"path": str(p), "why": why} for p, why in earlier.items()]

        def on_batch(counts: IngestCounts) -> None:
            # what earlier batches stored, should a later one fail
            run.counts += counts

        fetched = _fetch_times(store, files)
        # absolute paths: a re-run from another folder is recognised as a replay; each job
        # carries the identity recorded with its fetch time: its parser checks it
        jobs = [
            (path, dataclasses.replace(source_ref_for(path), fetched_at=fetched[path][0]),
             fetched[path][1])
            for path in files
        ]  # fmt: skip
        # the NLM files' first reads, as the fetch times are fixed (ingest.rules: a file
        # killed before its first batch committed keeps the time it was first read)
        read = store.record_sources(src for _path, src, _identity in jobs)
        # the content MD5 of a first read not known yet is taken by its parse
        contents: dict[int, str | None] = _note_first_issues(store, jobs, read, digests)
        n_workers = settings.ingest_workers if workers is None else workers
        parsed = parse_ordered(
            jobs, workers=n_workers, limits=limits, parse=parse.iter_items,
            queue_batches=queue_batches_for(size), stripe=stripe, contents=contents,
        )  # fmt: skip
        with contextlib.closing(parsed):
            for index, items in parsed:
                path, src = files[index], jobs[index][1]
                if path in digests and read.get(src) is not src:
                    _reissue(store, run, path, src, digests[path] or _issue_md5(path))
                if progress:
                    items = _with_progress(items, path.name)
                counts = store.apply(items, run_id=run.id, batch_size=size, on_batch=on_batch)
                if index in contents:  # its parse took it (a damaged stream: not)
                    md5 = _read_issue_md5(path, contents[index], jobs[index][2])
                    if md5 is not None:  # else an unknown issue, replaced whole later
                        store.note_first_issue(src, md5)
                logger.info("%s: %s", path, counts.to_dict())
                per_file.append({"path": str(path), **counts.to_dict()})
    return run.counts


def _earlier_issues(
    store: Store, files: Sequence[Path]
) -> tuple[dict[Path, str], dict[Path, str | None]]:
    """Of ``files``, the copies of an NLM file's issue that a re-issue this store read
    replaced, each with why it is left out (logged): read, its records would meet the new
    issue's rows as the same source (the number's one as-of time) and undo those further
    down in it; as the earlier source it is, it changes nothing. And the MD5 of each copy
    of an NLM file not applied from NLM's server (plain or ``.xml.gz``) that is read: the
    issue its read is of (:func:`_note_first_issues`, :func:`_reissue`): ``None`` for a
    copy of a file of which no issue is recorded (nothing to tell it from), whose MD5
    (a ``.xml.gz``'s content MD5 costs a second unpacking of the file) is taken by its
    parse where its read is the file's first, else computed where it is needed
    (:func:`_issue_md5`).

    A copy of the issue applied from NLM's server is read as ever. An unpacked copy
    (``.xml``: its MD5 is not the published one) is read as the issue applied while the
    file was never re-issued. A copy of a file read only from local copies that is not the
    issue read last, nor an earlier one, is read whole as a re-issue (:func:`_reissue`).

    Raises:
        ConfigError: A copy of a file applied from NLM's server that is no issue this
            store applied (NLM's new issue fetched by hand before the update-file run
            found it, a copy edited or packed again): read as the issue applied, it would
            be half applied (its items at or before the positions that issue stored are
            replays). Nothing is applied.
    """
    skipped: dict[Path, str] = {}
    digests: dict[Path, str | None] = {}
    refused: list[str] = []
    for path in files:
        order = nlm_file_order(path)
        if order is None:
            continue
        current, earlier, applied = store.file_issues(*order)
        name = nlm_file_name(*order)
        packed = path.name.lower().endswith(".gz")
        if applied and not packed:
            if earlier:
                md5 = file_md5(path)
                if md5 in earlier:  # an unpacked copy read before the server's re-issue
                    skipped[path] = (f"an earlier issue of {name} (MD5 {md5}), which NLM "
                                     f"re-issued: the issue applied (MD5 {current}) outranks "
                                     "it; nothing to do")  # fmt: skip
                    logger.warning("%s is %s", path, skipped[path])
                    continue
                refused.append(
                    f"{path} is an unpacked copy of {name}, which NLM re-issued (MD5 {current} "
                    f"applied, replacing {', '.join(earlier)}): which issue it holds cannot "
                    "be told (give the .xml.gz as published)"
                )  # fmt: skip
            continue
        if current is None and not earlier and not applied:
            digests[path] = None  # no issue to tell it from: its MD5 taken later
            continue
        # a copy is told by its MD5 and its unpacked content's (an unpacked copy's is its
        # content's): a .xml.gz and its .xml are one issue, whichever was read first
        md5 = file_md5(path)
        content = _content_of(path, md5) if packed and md5 != current else md5
        if current in (md5, content):
            continue
        if md5 in earlier or content in earlier:
            skipped[path] = (f"an earlier issue of {name} (MD5 {md5}), which "
                             f"{'NLM' if applied else 'a later copy'} re-issued: the issue "
                             f"{'applied' if applied else 'read'} (MD5 {current}) outranks "
                             "it; nothing to do")  # fmt: skip
            logger.warning("%s is %s", path, skipped[path])
            continue
        if not applied:  # the first read of the file, or another copy: read whole
            digests[path] = content  # recorded as the issue read: its content's MD5
            continue
        refused.append(f"{path} (MD5 {md5}) is no issue of {name} this store applied (MD5 "
                       f"{current})")  # fmt: skip
    if refused:
        raise ConfigError(
            "; ".join(refused) + ". Nothing was applied: read as the issue applied, such a "
            "copy would be half applied. A re-issue NLM published is applied in its place by "
            "`litpulse ingest --updatefiles` (it reads the published .md5); a copy changed by "
            "hand, or packed again, is read as a plain file under another name (e.g. "
            "NAME_local.xml.gz)"
        )
    return skipped, digests


def _note_first_issues(
    store: Store,
    jobs: Sequence[tuple[Path, SourceRef, FileIdentity]],
    read: Mapping[SourceRef, SourceRef],
    digests: Mapping[Path, str | None],
) -> dict[int, str | None]:
    """Record the MD5 of each copy of an NLM file whose read is the file's first (its
    as-of time: :meth:`Store.record_sources`; ``.xml.gz`` or unpacked), so that an
    update-file run that then applies another issue of it (or a copy read later that is
    another one) applies that issue as a re-issue, ranked after the copy
    (:meth:`Store.reissue`), not as the copy read again (half of it a replay).

    Returns:
        The jobs (by index) whose MD5 is not known yet (:func:`_earlier_issues`): their
        parse takes it (:func:`_issue_md5`), recorded once the file's last
        batch is stored. Until then, as after a run killed before that, the as-of time
        is of an issue not recorded: a later read of another copy, or the server's issue,
        replaces it whole as a re-issue (:data:`ingest.store.UNKNOWN_ISSUE`), never half;
        the same copy read again is that first read still, and records it.
    """
    later: dict[int, str | None] = {}
    for index, (path, src, _identity) in enumerate(jobs):
        if path in digests and read.get(src) is src:
            md5 = digests[path]
            if md5 is None:
                later[index] = None
            else:
                store.note_first_issue(src, md5)
    return later


def _issue_md5(path: Path, parsed: str | None = None) -> str:
    """The MD5 a copy of an NLM file is told by (:func:`_earlier_issues`): a ``.xml.gz``
    copy's unpacked content's (a damaged stream's: its bytes'), an unpacked copy's bytes'.
    ``parsed``: the content MD5 its parse took (``None``: it could not), which is that
    unless the bytes of a ``.xml`` copy are gzip (its parse unpacked them)."""
    if not path.name.lower().endswith(".gz"):
        if parsed is not None:
            with path.open("rb") as fh:
                if fh.read(2) != b"\x1f\x8b":  # not gzip (RFC 1952): its bytes were hashed
                    return parsed
        return file_md5(path)
    return parsed or _content_of(path)


def _read_issue_md5(path: Path, parsed: str | None, identity: FileIdentity) -> str | None:
    """:func:`_issue_md5` of a copy just read whose file was ``identity``; ``None`` where
    it needs the path read again (no MD5 taken by the parse; a ``.xml`` copy's first
    bytes) and the path is another file now (renamed over, or changed, since the read):
    the MD5 of what is there is no MD5 of what was applied, and a wrong issue is worse
    than an unknown one (:data:`ingest.store.UNKNOWN_ISSUE`: replaced whole)."""
    from ingest.parallel import FileIdentity

    if parsed is not None and path.name.lower().endswith(".gz"):
        return parsed  # taken from the bytes the parse read: the path is not read
    md5: str | None = None
    before = FileIdentity.read(path)
    change = "gone" if before is None else identity.changes(before)
    if not change:
        try:
            md5 = _issue_md5(path, parsed)
        except OSError as exc:  # gone meanwhile
            change = str(exc)
        after = FileIdentity.read(path)
        change = change or ("gone" if after is None else identity.changes(after))
    if change:
        logger.warning("%s: %s since it was read: its MD5 is not recorded (an unknown "
                       "issue, which another copy or the server's replaces whole)", path,
                       change)  # fmt: skip
        return None
    return md5


def _content_of(path: Path, md5: str | None = None) -> str:
    """The MD5 of a copy's unpacked content (:func:`content_md5`: unpacks the file once
    more); of a damaged stream, its bytes' (``md5`` where known): its read says why."""
    try:
        return content_md5(path)
    except gzip.BadGzipFile:
        return md5 or file_md5(path)


def _reissue(store: Store, run: OpenRun, path: Path, src: SourceRef, md5: str) -> None:
    """Before its first item is stored, make a copy of an NLM file read only from local
    copies whose MD5 is another than the issue read last (:meth:`Store.file_issues`) a
    re-issue of it (:meth:`Store.reissue`): it ranks after that issue, so it is applied
    whole, not half of it as replays of the positions the other issue stored. Reported in
    the run's ``details.reissued``. A run resuming it finds it the issue read last."""
    # not the first read (its as-of time is another's): where that read's MD5 was never
    # recorded (a release before MD5s were), its issue is unknown, replaced whole
    was = store.reissue(src, md5, unknown=True)
    if was:
        logger.warning("%s: another issue of %s (MD5 %s) than the copy read before (MD5 %s): "
                       "read whole as a re-issue of it", path, src.location, md5, was)  # fmt: skip
        told = run.details.setdefault("reissued", [])
        told.append({"path": str(path), "md5": md5, "was": was})


def _fetch_times(
    store: Store, files: Sequence[Path]
) -> dict[Path, tuple[dt.datetime, FileIdentity]]:
    """The fetch time of each file (when this store first read it as it is now) and the
    identity of the version it is the time of.

    Unknown or changed files get now (one millisecond apart, in file order), recorded
    before any of their items is stored (:meth:`Checkpoints.first_read_at`).
    """
    from ingest.parallel import FileIdentity

    now = utcnow()
    out: dict[Path, tuple[dt.datetime, FileIdentity]] = {}
    for i, path in enumerate(files):
        stat = path.stat()
        identity: dict[str, Any] = {
            "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        }  # fmt: skip
        at = store.first_read_at(
            SCOPE, file_key(str(path)), identity, now + dt.timedelta(milliseconds=i)
        )
        out[path] = (at, FileIdentity.of(stat))
    return out


def _with_progress(items: Iterator[StoreItem], name: str) -> Iterator[StoreItem]:
    from tqdm import tqdm

    with tqdm(items, desc=name, unit=" records", leave=True) as bar:
        yield from bar
