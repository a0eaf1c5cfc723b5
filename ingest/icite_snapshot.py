"""Load citation impact from an iCite database snapshot: the whole of iCite in one pass.

**The snapshot.** NIH's Office of Portfolio Analysis posts the whole iCite database
monthly on NIH figshare (collection 4586573, "iCite Database Snapshot YYYY-MM"): "a
single zipped CSV file, or compressed, tarred JSON files", and the NIH Open Citation
Collection as "a two-column CSV table in open_citation_collection.zip" (the figshare
description). The metadata CSV, ``icite_metadata.csv`` (~40M rows, ~40 GB unzipped),
has one row per PMID and 25 columns::

    pmid, doi, title, authors, year, journal, is_research_article, citation_count,
    field_citation_rate, expected_citations_per_year, citations_per_year,
    relative_citation_ratio, nih_percentile, human, animal, molecular_cellular,
    x_coord, y_coord, apt, is_clinical, cited_by_clin, cited_by, references,
    provisional, last_modified

Public loaders of it disagree on the order (seandavi/bioc-on-ice ``icite.py`` lists
``pmid, doi, year, title, …``), so this module reads the columns **by the header's names**.
Flags are ``True``/``False`` text where the API says ``Yes``/``No``; ``cited_by``,
``cited_by_clin`` and ``references`` are space-separated PMID lists, the longest ~2.3 MB
on one line (bioc-on-ice, the 2026-08 snapshot); titles hold quoted commas, quotes and line
breaks (standard CSV quoting with doubled quotes). ``open_citation_collection.csv`` has
the header ``citing,referenced`` (NCBI EDirect's ``rchive -nihocc`` checks exactly that).

**What is stored.** The same columns as the API refresh (:mod:`ingest.citations`), mapped
by the same function (:func:`ingest.citations.icite_values`): ``citation_count``,
``relative_citation_ratio``, ``citations_per_year``, ``icite_year``, ``icite_provisional``,
and ``icite_fetched_at`` set to the snapshot's date (``--as-of``, else the date the file
carries, which its download does not change: a ``.zip``'s CSV member time, a ``.gz``
header's time, else the file's modification time; :func:`snapshot_date` says how, the
run's details which), so the daily refresh (:func:`ingest.citations.due_pmids`) asks only
for what its policy finds due after that date. Only live articles the store holds are
written (a row for any other PMID is counted as ``skipped``; the store keeps no iCite data
for articles it does not have), and never over iCite values fetched later than the snapshot
(:func:`ingest.citations.icite_not_newer`, by ``icite_values_at``, the time of the fetch or
snapshot that wrote the values held): an API fetch that brought no values (a PMID iCite did
not know, a record quarantined or refused) stamps ``icite_fetched_at`` only, so a snapshot
newer than the values held still writes over them, and an article holding none takes the
snapshot's whatever its times.
The citation links (``cited_by``, ``references``, the Open Citation Collection) are not
loaded: the store's ``references`` come from the PubMed records themselves.

**Reading.** ``FILE`` is the CSV (plain, ``.gz``, or figshare's ``.zip`` holding one CSV),
or a folder of such files (loaded in name order). Given as ``FILE``, the JSON tarball is
refused (the CSV carries the same fields), and so is the Open Citation Collection or any
CSV without a ``pmid`` column or without any of the metrics' columns. A metric column
absent from the header (a field iCite dropped) is a missing value in every row (logged),
as the API refresh takes a JSON key an answer leaves out: the rows' other values load.
A folder is read as figshare's download is saved (the metrics beside
``open_citation_collection.zip`` and the JSON tarball): each file in it that is not the
metrics (another name ending, a header without the columns the loader needs, the Open
Citation Collection's ``citing,referenced``, a ``.zip`` without a CSV) is skipped, logged
and listed in the run's details (``skipped_files``) with the reason; a folder with nothing
to load is refused. A file whose header cannot be read (a damaged ``.zip``)
is not skipped: its load fails as below. Rows are streamed
(``csv`` over a byte-counting line reader) in batches of ``LITPULSE_ICITE_SNAPSHOT_BATCH``;
each batch is one transaction: PostgreSQL ``COPY`` into a temporary staging table and one
``UPDATE … FROM``, SQLite one ``executemany`` ``UPDATE`` by primary key. The loader holds
one batch at a time (memory does not grow with the file).

**Resuming.** The batch's transaction also writes the file's checkpoint (scope
``icite_snapshot``): the byte offset in the (decompressed) CSV after the batch's last row,
the line, the rows read. A killed load, run again on the unchanged file, seeks there and
goes on; since every write is keyed by PMID and stamped with the snapshot's fixed date, it
ends in the state of an uninterrupted load. A finished file loaded again is read again from
the start (articles ingested since then get their values); a changed file (size, mtime) or
another snapshot date (``--as-of``; a load begun by a release that dated a ``.zip`` or
``.gz`` by its mtime) is a new load.

**Values** follow the API refresh's rule (:func:`ingest.citations.icite_values`, the
module docstring of :mod:`ingest.citations`): a missing-value marker (empty, ``NaN``,
``NA``, …) is NULL and the row keeps its other values; a NULL never overwrites what the article had
(on both databases). A PMID met twice in a file is stored as the rows one after the other
would be: the later row's values, and the earlier one's where the later lacks them,
whatever the batch size (:func:`ingest.citations.merge_icite`: the API refresh's rule for a
PMID answered twice too). A value that is impossible for its
column (not a number, negative, infinite, out of range) makes the row a bad row.

**Bad rows** (a wrong number of fields, a PMID that is not one, an impossible value,
broken CSV quoting) are counted as ``malformed``, quarantined with their raw
text (first 64 KiB; NUL as ``\\x00``), source and line, and skipped; the load goes on. A bad
row is quarantined once per file and line: loading a file again adds nothing, and the same
bad row in next month's snapshot is quarantined for that file too.

**A stray quote** (a field that opens a quote and never closes it) would make CSV read the
lines after it, up to the next quote, as one field: rows swallowed unseen, and the broken
row given the values of the row where the quote happens to close. So each line a record
goes on over is checked: one that reads on its own as a complete row of the header's width
with a valid PMID ends the record before it (the rest of a real multi-line title would have
to start with a number and hold just the commas that make the header's width), and so does
the line after :data:`MAX_SPAN` lines. A record ended so, and any record spanning several
lines that is malformed, is quarantined as its first line only (one ``malformed`` row; the
reason names the lines), and the lines after it are read again as rows of their own: the
rows after a stray quote are loaded with their own values. (A real record over several
lines that is malformed is thus quarantined line by line.) Lines given back to be read
again are not in a checkpoint's offset until they are read again, so a resumed load reads
them again too and ends as an uninterrupted one.

**A truncated or corrupt file** (a ``.gz`` or ``.zip`` cut short, a flipped byte, a plain
CSV named ``.gz``) stops the load with a :class:`~litpulse.core.errors.ParseError` naming
the file and the last line committed; the batches committed before it stay, the run is
recorded ``failed``. So does a ``.zip`` whose CSV member is encrypted or compressed with a
method Python's ``zipfile`` cannot read (Deflate64, which Windows' built-in compressor
writes for large files): the error names the member and the method; extract the CSV with
a tool that can and load it.

Example:
    >>> counts = load_snapshot(settings, "icite_metadata.zip")  # doctest: +SKIP
    >>> counts.to_dict()                                          # doctest: +SKIP
    {'rows': 40000000, 'updated': 36000000, 'skipped': 3999990, 'malformed': 10}
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import hashlib
import logging
import struct
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    Table,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from ingest.boundaries import MAX_RAW_TAIL
from ingest.citations import (
    ICITE_FIELDS,
    icite_not_newer,
    icite_params,
    icite_update,
    icite_values,
    merge_icite,
)
from ingest.fields import MAX_PMID, id_value, quarantine_line
from ingest.records import ICITE_REASON, QuarantineEntry, SourceRef
from ingest.rows import quarantine_row
from ingest.runs import Counts, IngestCounts, OpenRun, add_run_counts, recorded_run
from ingest.store import Store
from litpulse.core.db import driver_errors, mark_written, retry_conflicts, upsert
from litpulse.core.errors import ConfigError, NotFoundError, ParseError
from litpulse.core.schema import articles, quarantine
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, utcnow

__all__ = [
    "SCOPE",
    "Batch",
    "SnapshotCounts",
    "iter_batches",
    "load_snapshot",
    "open_snapshot",
    "snapshot_date",
    "snapshot_files",
    "snapshot_plan",
]

logger = logging.getLogger(__name__)

#: Checkpoint scope: key SHA-1 of the file's path, value its identity, date and offset.
SCOPE = "icite_snapshot"
#: Longest physical line read at once (bytes): the longest real one is ~2.3 MB; a longer
#: "line" is cut here and its pieces end up malformed rather than in memory.
MAX_LINE = 64 << 20
#: Most physical lines one record may span (real titles with line breaks span a few): a
#: quoted field still open after that many is taken for a stray quote (module docstring).
MAX_SPAN = 32
#: What reading a damaged file raises: gzip's ``BadGzipFile`` and system errors are
#: ``OSError``, a cut gzip or zip member ``EOFError``, a corrupt deflate stream ``zlib.error``.
_UNREADABLE = (OSError, EOFError, zlib.error, zipfile.BadZipFile)
#: Names of zip compression methods (APPNOTE 4.4.5) a member may use that zipfile cannot
#: read: Deflate64 (Windows' built-in compressor writes it for large files) and others;
#: bzip2 and LZMA where Python lacks their module.
_ZIP_METHODS = {9: "Deflate64", 10: "PKWARE DCL Implode", 12: "bzip2", 14: "LZMA",
                93: "Zstandard", 95: "XZ", 98: "PPMd"}  # fmt: skip
#: The most a local time is ahead of UTC (UTC+14:00): a zip member's DOS time, whose zone
#: is not recorded, is taken this much earlier (its earliest possible instant).
_MAX_UTC_OFFSET = dt.timedelta(hours=14)
#: Where an NTFS FILETIME counts from.
_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)
#: Malformed rows shown in the run's details (all of them are quarantined).
SAMPLE = 10
#: The Open Citation Collection's header: a file of links, not of metrics.
_OCC_HEADER = ["citing", "referenced"]
#: The iCite metrics' columns the loader reads (:data:`ingest.citations.ICITE_FIELDS`).
METRICS = tuple(ICITE_FIELDS.values())
#: Columns the loader reads from the header: ``pmid`` and at least one of :data:`METRICS`
#: are needed; a metric absent (iCite dropped it) is a missing value in every row.
REQUIRED = ("pmid", *METRICS)

csv.field_size_limit(MAX_LINE)

_STAGE = Table(
    "icite_stage",
    MetaData(),
    Column("pmid", BigInteger),
    Column("citation_count", Integer),
    Column("relative_citation_ratio", Float),
    Column("citations_per_year", Float),
    Column("icite_year", Integer),
    Column("icite_provisional", Boolean),
)
_STAGE_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS icite_stage (pmid bigint, citation_count integer, "
    "relative_citation_ratio double precision, citations_per_year double precision, "
    "icite_year integer, icite_provisional boolean) ON COMMIT DELETE ROWS"
)


@dataclass(frozen=True)
class SnapshotCounts(Counts):
    """What a snapshot load did.

    Attributes:
        rows: Data rows read (malformed ones included).
        updated: Well-formed rows written: their article was given the snapshot's values
            (a PMID met in several rows counts each of them, whatever the batch size).
        skipped: Well-formed rows not written: the PMID is not live in the store, or the
            store holds iCite values fetched after the snapshot.
        malformed: Rows quarantined and skipped.
    """

    rows: int = 0
    updated: int = 0
    skipped: int = 0
    malformed: int = 0


@dataclass(frozen=True)
class Batch:
    """Consecutive rows of one CSV: what one transaction writes.

    Attributes:
        values: Column values per PMID (a PMID met twice: the later row's).
        bad: The malformed rows, as quarantine entries.
        rows: Data rows it covers (``len(values) + len(bad) + sum(repeats.values())``).
        offset: Byte offset in the decompressed CSV just after its last row.
        line: Physical lines read up to there (header included).
        repeats: Per PMID met in more than one well-formed row of the batch, its rows
            after the first (merged into ``values``: written with it, or skipped with it).
    """

    values: dict[int, dict[str, Any]]
    bad: list[QuarantineEntry] = field(default_factory=list)
    rows: int = 0
    offset: int = 0
    line: int = 0
    repeats: dict[int, int] = field(default_factory=dict)


class _CutShort(Exception):
    """Raised by :class:`_Lines` inside ``csv.reader``: the record being read ends at the
    lines read so far (a stray quote), its next line was given back. ``spanned``: it went
    on for :data:`MAX_SPAN` lines (else the next line reads as a row of its own)."""

    def __init__(self, *, spanned: bool) -> None:
        super().__init__("spanned" if spanned else "row")
        self.spanned = spanned


class _Lines:
    """The decoded lines of a binary stream, counting the bytes and lines handed out.

    Lines given back (:meth:`reread`, a record cut short) are handed out again before the
    stream's next ones and are not counted until then: ``offset`` and ``line`` are always
    those just after the last line handed out, where a resumed read starts.

    Args:
        stream: The binary stream, at ``offset``.
        offset: Bytes before the stream's position.
        line: Physical lines before it.
        starts_row: Whether a line reads as a row of its own; asked of each line a record
            goes on over (a quoted field is open): yes ends the record before that line.
    """

    def __init__(
        self,
        stream: IO[bytes],
        offset: int = 0,
        line: int = 0,
        starts_row: Callable[[str], bool] | None = None,
    ) -> None:
        self.stream = stream
        self.offset = offset
        self.line = line
        self.starts_row = starts_row
        self.pending: list[bytes] = []  # the lines of the record being read
        self.back: list[bytes] = []  # lines given back, the next one last

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.back:
            data = self.back.pop()
        else:
            data = self.stream.readline(MAX_LINE)
            if not data:
                raise StopIteration
        text = data.decode("utf-8", "replace")
        if self.pending:  # the record goes on over this line: a quoted field is open
            spanned = len(self.pending) >= MAX_SPAN
            if spanned or (self.starts_row is not None and self.starts_row(text)):
                self.back.append(data)
                raise _CutShort(spanned=spanned)
        self.offset += len(data)
        self.line += 1
        self.pending.append(data)
        return text

    def reread(self) -> int:
        """Give back the lines of the record being read after its first (they are read
        again); the number given back."""
        rest = self.pending[1:]
        if rest:
            del self.pending[1:]
            self.back.extend(reversed(rest))
            self.offset -= sum(map(len, rest))
            self.line -= len(rest)
        return len(rest)

    def take(self) -> str:
        """The raw text of the row just read (at most :data:`MAX_RAW_TAIL` characters)."""
        data = b"".join(self.pending)[: 4 * MAX_RAW_TAIL + 4]  # <= 4 bytes a character
        self.pending.clear()
        return data.decode("utf-8", "replace")[:MAX_RAW_TAIL]


def snapshot_files(path: str | Path) -> list[Path]:
    """The CSV files to load for ``path`` (a file, or a folder of them in name order).

    In a folder, the files that are not the metrics snapshot are skipped and logged
    (:func:`snapshot_plan` says which and why).

    Raises:
        NotFoundError: A folder without a metrics snapshot.
        ConfigError: Nothing at ``path``, or a format the loader does not read (the JSON
            tarball).
    """
    return snapshot_plan(path)[0]


def snapshot_plan(path: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to load for ``path`` and, for a folder, those skipped with the reason.

    A file given itself is loaded whatever its header (the load refuses one that is not
    the metrics, with the reason); in a folder, only files that can be the metrics are.

    Raises:
        NotFoundError: Nothing at ``path``, or a folder without a metrics snapshot.
        ConfigError: A format the loader does not read (the JSON tarball).
    """
    p = Path(path).resolve()
    if not p.exists():  # a usage error, as every path the command cannot read (exit 2)
        raise ConfigError(f"no such file: {p}")
    if p.is_dir():
        found: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for f in sorted(f for f in p.iterdir() if f.is_file()):
            why = _not_the_metrics(f)
            if why is None:
                found.append(f)
            else:
                logger.info("%s: skipped: %s", f, why)
                skipped.append((f, why))
        if not found:
            listed = "; ".join(f"{f.name}: {why}" for f, why in skipped[:10])
            raise NotFoundError(
                f"{p}: no iCite metrics snapshot (icite_metadata .csv, .csv.gz or .zip) in "
                f"this folder" + (f"; skipped {listed}" if listed else "")
            )
        return found, skipped
    if _kind(p) == "other":
        raise ConfigError(
            f"{p}: not an iCite snapshot CSV (.csv, .csv.gz or .zip); the JSON tarball "
            "(icite_metadata.tar.gz) is not read: load icite_metadata.csv/.zip, which "
            "carries the same fields"
        )
    return [p], []


def _not_the_metrics(path: Path) -> str | None:
    """Why a file in a folder is not the metrics snapshot, or None to load it (a file whose
    header cannot be read is loaded, so that its load says what is wrong with it)."""
    if _kind(path) == "other":
        if path.name.lower().endswith((".tar.gz", ".tgz", ".json")):
            return "the JSON form is not read (the CSV carries the same fields)"
        return "not a .csv, .csv.gz or .zip file"
    try:
        if _kind(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                if not any(n.lower().endswith(".csv") for n in zf.namelist()):
                    return "a .zip without a CSV inside"
        with open_snapshot(path) as stream:
            names = _names(stream.readline(MAX_LINE))
    # several CSVs in a .zip, a damaged file, a member zipfile cannot read: its load says
    except (ConfigError, ParseError, *_UNREADABLE):
        return None
    return _not_metrics_header(names)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".csv.gz", ".gz")) and not name.endswith(".tar.gz"):
        return "gzip"
    if name.endswith(".zip"):
        return "zip"
    return "other"


@contextmanager
def open_snapshot(path: Path) -> Iterator[IO[bytes]]:
    """The decompressed bytes of one snapshot file (seekable forward)."""
    kind = _kind(path)
    if kind == "gzip":
        with gzip.open(path, "rb") as gz:
            yield gz  # type: ignore[misc]
    elif kind == "zip":
        with zipfile.ZipFile(path) as zf:
            info = _csv_member(path, zf)
            if info.flag_bits & 0x1:  # zf.open: RuntimeError, "password required"
                raise ParseError(
                    f"{path}: its member {info.filename} is encrypted (a password is "
                    "needed), which the loader does not read; extract it with the password "
                    "and load the CSV; no row of it was loaded"
                )
            try:
                member = zf.open(info)
            except NotImplementedError:  # Deflate64, or bzip2/lzma without their module
                method = _ZIP_METHODS.get(info.compress_type, "an unknown method")
                raise ParseError(
                    f"{path}: its member {info.filename} is compressed with {method} (zip "
                    f"compression method {info.compress_type}), which Python's zipfile "
                    "cannot read; extract it with a tool that can (Info-ZIP unzip, 7-Zip) "
                    "and load the CSV; no row of it was loaded"
                ) from None
            with member:
                yield member
    else:
        with path.open("rb") as plain:
            yield plain


def _csv_member(path: Path, zf: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The one CSV member of a snapshot ``.zip``.

    Raises:
        ConfigError: It holds no CSV, or several.
    """
    members = [i for i in zf.infolist() if i.filename.lower().endswith(".csv")]
    if len(members) != 1:
        raise ConfigError(f"{path}: expected one CSV inside, found {[i.filename for i in members]}")
    return members[0]


def snapshot_date(path: Path) -> tuple[dt.datetime, str]:
    """The date of the snapshot in ``path`` when no ``--as-of`` is given, and what says so.

    The date the file carries itself, which its download does not change:

    * a ``.zip``: its CSV member's time (when the CSV was written, before it was zipped;
      what ``unzip`` gives the extracted CSV): the UTC time of the member's extended
      timestamp (``UT``, 0x5455) or NTFS (0x000a) extra field where it has one, else its
      DOS date and time, which is the zipping machine's local time with no zone: taken at
      the earliest instant it can denote (as at UTC+14:00), so it is never later than the
      snapshot;
    * a ``.gz``: the gzip header's MTIME (UTC), where it is set (not 0);
    * otherwise (a plain CSV, a header without a time) the file's modification time, which
      ``unzip`` sets to the member's time, but a download to the time it was saved.

    Each row's ``last_modified`` is not used: it is when iCite last changed that record
    (years back for most), not the snapshot's date, and the latest of them is known only
    after the whole file is read. A file whose date cannot be read (a damaged ``.zip``)
    gets its modification time.
    """
    at: dt.datetime | None = None
    try:
        if _kind(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                at, said = _zip_time(_csv_member(path, zf)), "the zip member's time"
        elif _kind(path) == "gzip":
            with path.open("rb") as raw:
                head = raw.read(10)
            seconds = int.from_bytes(head[4:8], "little") if len(head) == 10 else 0
            if head[:3] == b"\x1f\x8b\x08" and seconds:  # a gzip header with its MTIME
                at, said = dt.datetime.fromtimestamp(seconds, dt.UTC), "the gzip header's time"
    except (ConfigError, *_UNREADABLE):  # its load says what is wrong with it
        at = None
    if at is None:
        at, said = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC), "the file's mtime"
    return at, said


def _zip_time(info: zipfile.ZipInfo) -> dt.datetime | None:
    """The time of a zip member (:func:`snapshot_date`); None where it holds none."""
    extra, at = info.extra, 0
    try:
        while at + 4 <= len(extra):
            tag, size = struct.unpack_from("<HH", extra, at)
            data = extra[at + 4 : at + 4 + size]
            at += 4 + size
            if tag == 0x5455 and len(data) >= 5 and data[0] & 1:  # flags, then mtime
                return dt.datetime.fromtimestamp(struct.unpack_from("<I", data, 1)[0], dt.UTC)
            if tag == 0x000A:  # 4 reserved bytes, then attributes; tag 1: mtime (FILETIME)
                sub = 4
                while sub + 4 <= len(data):
                    attr, length = struct.unpack_from("<HH", data, sub)
                    if attr == 1 and length >= 8 and sub + 12 <= len(data):
                        ticks = struct.unpack_from("<Q", data, sub + 4)[0]  # 100 ns since 1601
                        return _FILETIME_EPOCH + dt.timedelta(microseconds=ticks // 10)
                    sub += 4 + length
        return dt.datetime(*info.date_time, tzinfo=dt.UTC) - _MAX_UTC_OFFSET
    except (ValueError, OverflowError, OSError):  # a time no calendar holds
        return None


def _names(first: bytes) -> list[str]:
    """The column names of a CSV's header line."""
    names = next(csv.reader([first.decode("utf-8", "replace").lstrip("\ufeff")]), [])
    return [n.strip() for n in names]


def _not_metrics_header(names: list[str]) -> str | None:
    """Why a CSV with this header is not the metrics snapshot, or None."""
    if names == _OCC_HEADER:
        return (
            "the Open Citation Collection (citing,referenced links); `citations load` "
            "reads the metrics file icite_metadata.csv"
        )
    # a metric iCite dropped is missing in each row, as a key the API leaves out; a CSV
    # with no PMID or none of the metrics is no snapshot
    missing = ["pmid"] if "pmid" not in names else []
    if not any(c in names for c in METRICS):
        missing += METRICS
    if missing:
        return (
            f"not an iCite snapshot CSV: no column {', '.join(missing)} in its header {names[:30]}"
        )
    return None


def _header(stream: IO[bytes], location: str) -> tuple[list[str], int]:
    """The column names of the CSV and the byte offset after the header line."""
    first = stream.readline(MAX_LINE)
    names = _names(first)
    why = _not_metrics_header(names)
    if why is not None:
        if names == _OCC_HEADER:
            raise ConfigError(f"{location} is {why}")
        raise ConfigError(f"{location}: {why}")
    absent = [c for c in METRICS if c not in names]
    if absent:
        logger.warning(
            "%s: no column %s in its header: a missing value in every row (the article "
            "keeps what it had), as a field the API leaves out", location, ", ".join(absent)
        )  # fmt: skip
    return names, len(first)


def iter_batches(
    stream: IO[bytes],
    *,
    location: str,
    size: int,
    offset: int = 0,
    line: int = 0,
) -> Iterator[Batch]:
    """Read the snapshot CSV in ``stream`` as batches of at most ``size`` rows.

    Args:
        stream: The decompressed CSV, at its start.
        location: Where it is (for quarantine entries and errors).
        size: Rows per batch (each batch holds only its own rows).
        offset: Resume at this byte offset (a :attr:`Batch.offset`; 0: after the header).
        line: The physical line count at ``offset``.

    A record that goes on over more lines (an open quoted field) ends before a line that
    reads as a row of its own, or after :data:`MAX_SPAN` lines; such a record, and one
    spanning several lines that is malformed, is quarantined as its first line only, and
    the lines after it are read again (the module's docstring, "A stray quote").

    Raises:
        ConfigError: The header lacks a column the loader needs.
    """
    names, after_header = _header(stream, location)
    if offset > after_header:
        stream.seek(offset)
    else:
        offset, line = after_header, 1
    width = len(names)
    wanted = [(n, names.index(n)) for n in REQUIRED if n in names]  # absent: missing
    pmid_at = names.index("pmid")
    source = SourceRef("file", location)

    def starts_row(text: str) -> bool:
        """Whether ``text`` reads on its own as a complete row of the header's width with a
        valid PMID (the rest of a quoted field spanning lines does not)."""
        if text.count(",") < width - 1:
            return False
        try:  # a blank line after it comes out as a row of its own unless a quote is open
            got = list(csv.reader((text, "\n")))
        except csv.Error:
            return False
        return (
            len(got) == 2
            and len(got[0]) == width
            and id_value(got[0][pmid_at], MAX_PMID) is not None
        )

    lines = _Lines(stream, offset, line, starts_row)
    reader = csv.reader(lines)
    values: dict[int, dict[str, Any]] = {}
    bad: list[QuarantineEntry] = []
    repeats: dict[int, int] = {}
    rows = 0

    def reject(reason: str, first_line: int, row: list[str] | None) -> None:
        if len(lines.pending) > 1:  # a record over several lines: keep only its first
            last = first_line + lines.reread()
            reason += (
                f"; read over lines {first_line}-{last} from an open quote: its first line "
                "is quarantined, the lines after it are read again"
            )
            row = None
        if row is None and lines.pending:  # its first line's PMID, where it has one
            first = lines.pending[0].decode("utf-8", "replace")
            try:
                row = next(csv.reader([first]), None)
            except csv.Error:
                row = None
        pmid = None
        if row is not None and len(row) > pmid_at:
            pmid = id_value(row[pmid_at], MAX_PMID)
        entry = QuarantineEntry(
            reason=f"{ICITE_REASON}snapshot row: {reason}",
            raw_xml=lines.take(),
            source=source,
            pmid=pmid,
            line=quarantine_line(first_line),
            key=f"{location}:{first_line}",  # each file's load names its own bad rows
        )
        bad.append(entry)

    while True:
        first_line = lines.line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except _CutShort as cut:
            rows += 1
            if cut.spanned:
                why = f"a quoted field still open after {MAX_SPAN} lines"
            else:
                why = f"a quote never closed: line {lines.line + 1} reads as a row of its own"
            reject(why, first_line, None)
        except csv.Error as exc:
            rows += 1
            reject(f"unreadable CSV ({exc})", first_line, None)
        else:
            if not row:  # a blank line
                lines.take()
                continue
            rows += 1
            if len(row) != width:
                reject(f"{len(row)} fields where the header has {width}", first_line, row)
            else:
                try:
                    parsed = icite_values({n: row[i] for n, i in wanted}, strict=True)
                except ValueError as exc:
                    reject(str(exc), first_line, row)
                else:
                    lines.pending.clear()
                    if parsed is not None:
                        if parsed[0] in values:  # counted with the row it is merged into
                            repeats[parsed[0]] = repeats.get(parsed[0], 0) + 1
                        merge_icite(values, *parsed)
        if rows >= size:
            yield Batch(values, bad, rows, lines.offset, lines.line, repeats)
            values, bad, repeats, rows = {}, [], {}, 0
    if rows:
        yield Batch(values, bad, rows, lines.offset, lines.line, repeats)


def _commit(store: Store, batch: Batch, fetched_at: dt.datetime, run_id: int, key: str,
            mark: dict[str, Any]) -> SnapshotCounts:
    """One batch, its counts added to the run's (a run killed after it counts what it
    stored: :func:`ingest.runs.add_run_counts`) and the file's checkpoint (``mark``: where
    it then stands) in a transaction of its own; what the batch did."""
    with store.engine.begin() as conn:
        updated = _write(conn, batch, fetched_at, run_id)
        malformed = len(batch.bad)
        step = SnapshotCounts(batch.rows, updated, batch.rows - malformed - updated, malformed)
        add_run_counts(conn, run_id, _run_counts(step))
        store.set_checkpoint(SCOPE, key, "running", mark, conn=conn)
    return step


def _run_counts(step: SnapshotCounts) -> IngestCounts:
    """The run's counts of what a batch did."""
    return IngestCounts(updated=step.updated, unchanged=step.skipped, quarantined=step.malformed)


def _write(conn: Connection, batch: Batch, fetched_at: dt.datetime, run_id: int) -> int:
    """Write one batch inside ``conn``'s transaction; the number of its well-formed rows
    written (:attr:`SnapshotCounts.updated`: a PMID met again in the batch counts each of
    its rows where its article is written, as batches of one row would)."""
    updated = 0
    if batch.repeats:  # the articles the update below writes, of those (rare: one query)
        a = articles.c
        written = conn.execute(
            select(a.pmid).where(a.pmid.in_(batch.repeats), icite_not_newer(fetched_at))
        ).scalars()
        updated += sum(batch.repeats[p] for p in written)
    if batch.values:
        if conn.dialect.name == "postgresql":
            updated += _copy_update(conn, batch.values, fetched_at)
        else:
            stmt = icite_update(keep_newer=True)
            updated += conn.execute(stmt, icite_params(batch.values, fetched_at)).rowcount
        if updated:
            mark_written(conn, "citations")  # what a search ranks by changed: store_version
    if batch.bad:
        now = utcnow()
        rows = [quarantine_row(e, run_id, now) for e in batch.bad]
        upsert(conn, quarantine, rows, keys=["digest"], update=[])
    return updated


def _copy_update(conn: Connection, values: Mapping[int, Mapping[str, Any]], at: dt.datetime) -> int:
    """PostgreSQL: ``COPY`` the batch into the staging table, then one ``UPDATE … FROM``."""
    conn.execute(text(_STAGE_DDL))
    cols = list(ICITE_FIELDS)
    sql = f"COPY icite_stage (pmid, {', '.join(cols)}) FROM STDIN"
    cursor: Any = conn.connection.cursor()
    # as text: the server checks each value's range (binary would wrap one past int4);
    # a driver error is SQLAlchemy's, as the store's COPY's (a deadlock is run again)
    try:
        with driver_errors(conn, sql), cursor.copy(sql) as copy:
            for pmid, v in values.items():
                copy.write_row((pmid, *(v[c] for c in cols)))
    finally:
        cursor.close()
    a, s = articles.c, _STAGE.c
    stmt = (
        update(articles)
        # a missing value is "not known": what the article had stays (as icite_update)
        .values({
            **{c: func.coalesce(s[c], a[c]) for c in cols},
            "icite_fetched_at": at,
            "icite_values_at": at,
        })  # fmt: skip
        .where(a.pmid == s.pmid, icite_not_newer(at))
    )
    return int(conn.execute(stmt).rowcount)  # the staged rows go at commit


def load_snapshot(
    settings: Settings,
    path: str | Path,
    *,
    as_of: dt.datetime | None = None,
    progress: bool = False,
    batch_size: int | None = None,
) -> SnapshotCounts:
    """Load an iCite snapshot into the store, as one run (source ``citations``).

    Args:
        settings: Where the store is; ``icite_snapshot_batch``.
        path: The snapshot CSV (plain, ``.gz``, ``.zip``) or a folder of them (its files
            that are not the metrics are skipped: :func:`snapshot_plan`).
        as_of: The snapshot's date, stored as the fetch time (default: the date each
            file carries, :func:`snapshot_date`; never later than now).
        progress: Show a progress bar (rows/s) on stderr.
        batch_size: Rows per transaction (default ``settings.icite_snapshot_batch``).

    Returns:
        What this run did (a resumed run: from where the killed one stopped).

    Raises:
        NotFoundError: Nothing at ``path``, or a folder without a metrics snapshot (no
            run is recorded).
        ConfigError: A file given that is not a snapshot CSV (the run is recorded as
            failed; the JSON tarball: no run is recorded).
        ParseError: A file is truncated or corrupt (a ``.gz``/``.zip`` cut short or
            damaged) or cannot be read; the batches committed before stay (the run is
            recorded as failed).
    """
    from litpulse.core.db import connect

    files, skipped = snapshot_plan(path)
    size = batch_size or settings.icite_snapshot_batch
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {size}")
    store = Store(connect(settings))
    total = SnapshotCounts()
    with recorded_run(store, "citations", target="snapshot " + " ".join(map(str, files))) as run:
        per_file: list[dict[str, Any]] = []
        sample: list[dict[str, Any]] = []
        run.details = {"snapshot": per_file, "malformed_sample": sample}
        if skipped:
            run.details["skipped_files"] = [{"path": str(f), "reason": why} for f, why in skipped]
        for f in files:
            total += _load_file(store, f, as_of, size, run, progress, per_file, sample)
        logger.info("iCite snapshot loaded: %s", total.to_dict())
    return total


def _load_file(
    store: Store,
    path: Path,
    as_of: dt.datetime | None,
    size: int,
    run: OpenRun,
    progress: bool,
    per_file: list[dict[str, Any]],
    sample: list[dict[str, Any]],
) -> SnapshotCounts:
    stat = path.stat()
    key = hashlib.sha1(str(path).encode()).hexdigest()
    default, dated_by = (as_utc(as_of), "--as-of") if as_of is not None else snapshot_date(path)
    # the date is part of what is loaded: another one (--as-of, or a load begun before the
    # file's own date was read) is a new load from the first row
    identity: dict[str, Any] = {
        "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "as_of": default.isoformat(),
    }  # fmt: skip
    fetched = store.first_read_at(SCOPE, key, identity, min(default, utcnow()))
    seen = (store.get_checkpoint(SCOPE, key) or {}).get("value", {})
    resume = "offset" in seen and not seen.get("done")
    offset, line, done_rows = (seen["offset"], seen["line"], seen["rows"]) if resume else (0, 0, 0)
    if resume:
        logger.info("%s: resuming after row %d (byte %d)", path, done_rows, offset)
    state = {**identity, "fetched_at": fetched.isoformat()}
    counts = SnapshotCounts()
    entry: dict[str, Any] = {
        "path": str(path), "as_of": fetched.isoformat(), "dated_by": dated_by,
        "resumed_at": done_rows,
    }  # fmt: skip
    per_file.append(entry)
    bar = _bar(path.name, done_rows) if progress else None
    committed = line  # the last line of the last batch committed (0: none)

    def unreadable(exc: BaseException) -> ParseError:
        kept = (
            f"the rows up to line {committed} are loaded and stay ({done_rows} rows)"
            if committed
            else "no row of it was loaded"
        )
        what = "cannot be read" if getattr(exc, "errno", None) else "is truncated or corrupt"
        cls = type(exc)
        name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        return ParseError(
            f"{path} {what} ({name}: {exc}); {kept}; load a complete copy of the file"
        )

    try:
        with closing(_guarded(_read(path, size, offset, line), unreadable)) as batches:
            for batch in batches:
                # PostgreSQL may roll it back to break a deadlock with an ingest batch
                step = retry_conflicts(
                    functools.partial(_commit, store, batch, fetched, run.id, key,
                                      {**state, "offset": batch.offset, "line": batch.line,
                                       "rows": done_rows + batch.rows}),
                    f"{path.name}: the batch up to line {batch.line}",
                )  # fmt: skip
                done_rows += batch.rows
                committed = batch.line
                counts += step
                run.counts += _run_counts(step)
                entry.update(counts.to_dict())
                for e in batch.bad[: max(0, SAMPLE - len(sample))]:
                    sample.append({"path": str(path), "line": e.line, "reason": e.reason})
                if bar is not None:
                    bar.update(batch.rows)
    finally:
        if bar is not None:
            bar.close()
    store.set_checkpoint(
        SCOPE, key, "done", {**state, "offset": 0, "line": 0, "rows": done_rows, "done": True}
    )
    logger.info("%s: %s", path, counts.to_dict())
    return counts


def _read(path: Path, size: int, offset: int, line: int) -> Iterator[Batch]:
    """The batches of one snapshot file, opened here (the generator closes it)."""
    with open_snapshot(path) as stream:
        yield from iter_batches(stream, location=str(path), size=size, offset=offset, line=line)


def _guarded(
    batches: Iterator[Batch], unreadable: Callable[[BaseException], ParseError]
) -> Generator[Batch, None, None]:
    """``batches``, a damaged file's error (:data:`_UNREADABLE`, raised while opening or
    reading it, never while a batch is written) raised as ``unreadable(error)``."""
    try:
        yield from batches
    except _UNREADABLE as exc:
        raise unreadable(exc) from exc


def _bar(name: str, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(desc=name, unit=" rows", unit_scale=True, initial=initial, leave=True)
