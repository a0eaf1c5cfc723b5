"""Hostile review (session 33b) of citation counts end to end: the iCite snapshot loader
(``ingest/icite_snapshot.py``, ``litpulse citations load FILE``), the daily iCite API refresh
(``ingest/citations.py``, ``litpulse citations refresh``) and the citation-impact weight
(``litpulse/core/impact.py`` as ``ranking/scoring.py`` uses it), on SQLite and PostgreSQL.

Every test drives the real code: ``refresh_citations`` against the loopback emulator's iCite
(``tests/emulator.py``, through the :class:`HostileIcite` subclass of
``tests/ingest/test_icite_refresh_review.py``, which can fail for chosen PMIDs),
``load_snapshot`` on snapshot files written here with the real 25-column header, and the
CLI's ``main``. Each defect is a strict xfail asserting the correct behaviour.

Defects:

B1 **Two PMIDs iCite chokes on in one batch stop every citation refresh for good.**
   ``_fetch_isolating``/``_split`` (``ingest/citations.py``) split a batch iCite keeps
   refusing into halves "down to the PMIDs it chokes on", but raise the batch's error
   ("iCite is down") as soon as *both* halves of any split fail. Two bad PMIDs are always
   separated into two failing halves at some level, so any batch holding two of them fails
   the whole run, and since ``due_pmids`` returns the due PMIDs in ascending order and the
   batches are cut from it, the same batch (the two bad PMIDs and the PMIDs after them) is
   the first unrefreshed batch again the next night: nothing after it is refreshed again, ever
   (reproduced: PMIDs 200..207, iCite 500 for 200 and 201, batch 4: three nights, not one
   article refreshed, on both databases). In ``litpulse nightly`` the failed citations step
   also holds back the window's watermark and skips the index, retrain and digest steps
   (``litpulse/pipeline/nightly.py``, by reading), night after night. The module's own
   promise is "one bad record costs its own PMID, not every batch after it, night after
   night".
   Fix: when both halves fail, go on splitting (at most 2n requests for n PMIDs) and call
   iCite down only when no request in the batch (or in the run) got an answer, or when
   every single-PMID request fails; the refused PMIDs are stamped and wait for their turn.
   (test_b1_two_pmids_icite_chokes_on_do_not_stop_every_refresh)
   **Fixed:** ``_split`` goes on splitting every failing part down to single PMIDs (refused,
   stamped, listed in ``icite_refused``); where no part of a split is answered it asks iCite
   once for PMIDs it is known to answer for (``_Liveness``: one a request of this run got an
   answer for, else the newest live article holding iCite values, else the next batch) and
   calls iCite down only when that is not answered either. A failing single-PMID batch is
   asked about the same way (it was refused and stamped even when iCite was down).

B2 **A snapshot ``.zip`` loaded as downloaded overwrites newer API counts with older ones.**
   Without ``--as-of`` the snapshot's date is the file's mtime (``_load_file``: ``default =
   ... mtime``). A downloaded ``icite_metadata.zip`` has the download time as its mtime, never
   the snapshot's date; the date is in the file: the CSV member's zip timestamp (what
   ``unzip`` gives the extracted CSV, so the same snapshot loaded unzipped gets another date)
   and every row's ``last_modified``. Reproduced: the API refresh stores citation count 50
   for PMID 7; a snapshot whose CSV was written 2026-05-01 (member date and
   ``last_modified``) with count 10 is downloaded afterwards and loaded: 10 is stored over
   50 and ``icite_fetched_at`` moves forward to the load time, so the refresh does not ask
   again for 7 to 180 days (both databases). The loader promises "never over iCite data
   fetched later than the snapshot". At fault: ``ingest/icite_snapshot.py::_load_file``.
   Fix: default the date to what the file says (the zip member's ``date_time``, the gzip
   header's MTIME, else the latest ``last_modified`` of the rows read, or refuse a load
   without ``--as-of`` where the store holds API data newer than the file's mtime).
   (test_b2_a_downloaded_zip_snapshot_does_not_overwrite_newer_api_counts)
   **Fixed:** without ``--as-of`` the date is the one the file carries
   (``ingest.icite_snapshot.snapshot_date``): a ``.zip``'s CSV member time (the UTC time of
   its ``UT``/NTFS extra field, else its DOS time, zone unrecorded, taken at its earliest
   instant, UTC+14), a ``.gz`` header's MTIME where set, else the file's mtime; the run's
   details say which (``dated_by``). The rows' ``last_modified`` is not used: it is each
   record's own change date (years back for most), not the snapshot's, and its latest is
   known only after the whole file. ``--help`` and the README say so.

B3 **An article whose later API fetch brought no values never gets the snapshot's values.**
   The refresh stamps ``icite_fetched_at`` on PMIDs it asked but got nothing usable for
   (iCite answered a damaged record: quarantined; or refused the PMID), and the snapshot's
   ``keep_newer`` guard (``icite_update(keep_newer=True)``, ``_copy_update``) then skips the
   article because it was "fetched" after the snapshot, though the store holds no iCite data
   for it. Reproduced: iCite answers PMID 8 with citation count -1 (quarantined, article
   stamped, no values); the snapshot of the day before, with an intact row (count 42), is
   loaded: ``skipped``, the article keeps no citation data (both databases), and the next
   refresh is 7-180 days away. The loader's rule is "never over iCite data fetched later
   than the snapshot"; there is no such data here. Fix: guard on the time of the values
   held (e.g. apply the snapshot where the article has no iCite values, or keep a separate
   "values as of" time that only a write of values moves).
   (test_b3_a_snapshot_fills_an_article_whose_later_fetch_brought_nothing)
   **Fixed:** both write paths guard with one rule, ``ingest.citations.icite_not_newer``:
   a live article is written where it was never fetched, was fetched at or before the
   snapshot's date, or holds no iCite values at all (``icite_held``), whatever its stamp.

B4 **A record dated two years ahead loses all its citation metrics.** ``ingest.citations._num``
   rejects an ``icite_year`` above next year as "not a year", which makes the whole record
   impossible (quarantined, count, RCR and rate dropped), on the snapshot and the API path.
   iCite carries such years for ahead-of-print records (a load of the 2026-08 snapshot found
   years up to 2028 and notes they are real: seandavi/bioc-on-ice ``icite.py``), and the
   PubMed parser stores any year from 1000 (``ingest/dates.py``), so the store holds the
   article with that year but never its citations. The module docstring itself says only "a
   year outside 1..9999" is impossible (the README says "1000..next year"). Reproduced:
   PMID 11 with year ``utcnow().year + 2`` and citation count 77: quarantined, nothing
   stored (both databases). Fix: bound ``icite_year`` as the docstring says (1..9999 or
   MIN_YEAR..9999), or store NULL for a year out of range and keep the row's other values.
   (test_b4_a_record_dated_two_years_ahead_keeps_its_citation_metrics)
   **Fixed:** ``icite_year`` is bounded by the years the PubMed parser stores for an
   article, 1000..9999 (``ingest.dates.MIN_YEAR``), not by the clock: a record dated ahead
   keeps its year and metrics on both paths; a year outside it (0, 10000) is impossible as
   before. The module docstring and the README say 1000..9999 in both places.

B5 **A snapshot ``.zip`` with a compression method Python cannot read, or encrypted, crashes
   ``citations load`` with a traceback.** ``open_snapshot``'s ``zf.open`` raises
   ``NotImplementedError`` (Deflate64, which Windows' built-in compressor can write for large
   files; bzip2/lzma members are fine) or ``RuntimeError`` (an encrypted member); neither is in
   ``_UNREADABLE`` nor caught by the CLI: a Python traceback and exit 1, both for the file
   and for a folder holding it (``_not_the_metrics`` opens it while planning). Every other
   unreadable snapshot is one ``litpulse: error:`` line naming the file, exit 2. At fault:
   ``ingest/icite_snapshot.py::open_snapshot`` / ``_not_the_metrics`` / ``_UNREADABLE``.
   Fix: raise a ``ConfigError``/``ParseError`` naming the file and the method (and in a folder
   let the load say so, as for a damaged zip).
   (test_b5_an_unreadable_zip_method_is_a_clear_error_not_a_traceback)
   **Fixed:** ``open_snapshot`` refuses an encrypted member (flag bit 0) and turns
   ``zf.open``'s ``NotImplementedError`` into a ``ParseError`` naming the file, the member
   and the method (``Deflate64 (zip compression method 9)``) and how to go on (extract it
   with a tool that can, load the CSV): one ``litpulse: error:`` line, exit 2, the run
   recorded failed. In a folder ``_not_the_metrics`` leaves such a file to its load, which
   says so, as for a damaged zip.

Attacks that held (not kept as tests): a folder of random edge values (NaN markers, ``-0``,
``1e308``, ``1e309``, ``2147483648``, ``inf``, repeated PMIDs, bad PMIDs, tombstones, batch 7)
loads to the same articles, counts and quarantine on SQLite and PostgreSQL; empty files, a
header-only file, a plain CSV named ``.gz``, UTF-16, a zip with ``__MACOSX`` beside the CSV
and a missing path are one clear error line each; a changed file (size or mtime) or another
``--as-of`` restarts a killed load from its first row; the impact weight stays finite and
monotone for NULL, NaN, negative, text and 2^31-1 inputs (``impact._number``); ``due_pmids``
orders never-fetched first and then the longest wait on both databases.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.citations import refresh_citations
from ingest.icite_snapshot import load_snapshot
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import InvalidRequestError, TransientSourceError
from litpulse.core.settings import Settings
from tests.ingest.test_icite_refresh_review import HostileIcite, _fast, _row, _seed

TODAY = dt.date.today()
#: The real snapshot header (icite_metadata.csv, 25 columns).
HEADER = (
    "pmid,doi,title,authors,year,journal,is_research_article,citation_count,"
    "field_citation_rate,expected_citations_per_year,citations_per_year,"
    "relative_citation_ratio,nih_percentile,human,animal,molecular_cellular,x_coord,y_coord,"
    "apt,is_clinical,cited_by_clin,cited_by,references,provisional,last_modified"
).split(",")


@pytest.fixture
def icite() -> Iterator[HostileIcite]:
    """The loopback emulator with an iCite that can fail for chosen PMIDs."""
    emu = HostileIcite()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _snapshot(rows: list[dict[str, Any]]) -> str:
    """A snapshot CSV: the real header, the given values over plausible defaults."""
    out = io.StringIO()
    writer = csv.DictWriter(out, HEADER, lineterminator="\n")
    writer.writeheader()
    for given in rows:
        row = dict.fromkeys(HEADER, "")
        row.update(
            title="A finding, in a model", year="2020", journal="Cell",
            is_research_article="True", citations_per_year="1.5",
            relative_citation_ratio="1.2", provisional="False", last_modified="2026-05-01",
        )  # fmt: skip
        row.update({k: str(v) for k, v in given.items()})
        writer.writerow(row)
    return out.getvalue()


def _nights(settings: Settings, n: int) -> None:
    """``n`` nightly refreshes of what is due; a failed one is what the nightly would see."""
    for _ in range(n):
        try:
            refresh_citations(settings)
        except (TransientSourceError, InvalidRequestError):
            pass


# ----------------------------------------------------------------------------------- B1


def test_b1_two_pmids_icite_chokes_on_do_not_stop_every_refresh(
    icite: HostileIcite, settings: Settings
) -> None:
    pmids = list(range(200, 208))
    _seed(settings, dict.fromkeys(pmids, TODAY))
    for p in pmids:
        icite.set_icite(p, citation_count=p)
    icite.poison = {200: 500, 201: 500}  # any request naming 200 or 201 gets HTTP 500
    s = _fast(icite, settings, icite_batch=4, max_retries=1)
    _nights(s, 3)
    refreshed = [p for p in pmids[2:] if _row(s, p)["citation_count"] == p]
    assert refreshed == pmids[2:], f"refreshed after three nights: {refreshed}"


# ----------------------------------------------------------------------------------- B2


def test_b2_a_downloaded_zip_snapshot_does_not_overwrite_newer_api_counts(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, {7: TODAY})
    icite.set_icite(7, citation_count=50)
    s = _fast(icite, settings)
    assert refresh_citations(s).updated == 1
    fetched = _row(s, 7)["icite_fetched_at"]
    # the May snapshot, downloaded now: its CSV member and its rows say 2026-05-01
    snapshot = tmp_path / "icite_metadata.zip"
    member = zipfile.ZipInfo("icite_metadata.csv", (2026, 5, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(snapshot, "w") as zf:
        zf.writestr(member, _snapshot([{"pmid": 7, "citation_count": 10}]))
    now = time.time()
    os.utime(snapshot, (now, now))  # what a browser, curl or wget without -N leaves
    load_snapshot(s, snapshot)
    row = _row(s, 7)
    assert (row["citation_count"], row["icite_fetched_at"]) == (50, fetched)


# ----------------------------------------------------------------------------------- B3


def test_b3_a_snapshot_fills_an_article_whose_later_fetch_brought_nothing(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, {8: TODAY, 9: TODAY})
    icite.set_icite(8, citation_count=-1)  # a damaged record: quarantined, 8 stamped
    icite.set_icite(9, citation_count=5)
    s = _fast(icite, settings)
    counts = refresh_citations(s)
    assert (counts.updated, counts.rejected) == (1, 1)
    assert _row(s, 8)["citation_count"] is None and _row(s, 8)["icite_fetched_at"] is not None
    snapshot = tmp_path / "icite_metadata.csv"
    snapshot.write_text(_snapshot([{"pmid": 8, "citation_count": 42}]))
    loaded = load_snapshot(s, snapshot, as_of=db.utcnow() - dt.timedelta(days=1))
    assert (loaded.updated, _row(s, 8)["citation_count"]) == (1, 42)


# ----------------------------------------------------------------------------------- B4


def test_b4_a_record_dated_two_years_ahead_keeps_its_citation_metrics(
    settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, {11: TODAY})
    ahead = db.utcnow().year + 2
    snapshot = tmp_path / "icite_metadata.csv"
    snapshot.write_text(_snapshot([{"pmid": 11, "citation_count": 77, "year": ahead}]))
    counts = load_snapshot(settings, snapshot, as_of=db.utcnow() - dt.timedelta(days=1))
    row = _row(settings, 11)
    assert (counts.malformed, row["citation_count"], row["relative_citation_ratio"]) == (
        0, 77, 1.2,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- B5


def _odd_zip(path: Path, how: str) -> None:
    """A snapshot zip whose CSV member is Deflate64 (method 9) or marked encrypted."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("icite_metadata.csv", _snapshot([{"pmid": 7, "citation_count": 3}]))
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    if how == "deflate64":
        data[8:10] = struct.pack("<H", 9)  # local header: compression method
        data[central + 10 : central + 12] = struct.pack("<H", 9)
    else:
        data[6:8] = struct.pack("<H", 1)  # general purpose flag bit 0: encrypted
        data[central + 8 : central + 10] = struct.pack("<H", 1)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["deflate64", "encrypted"])
@pytest.mark.parametrize("given", ["file", "folder"])
def test_b5_an_unreadable_zip_method_is_a_clear_error_not_a_traceback(
    sqlite_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    given: str,
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    folder = tmp_path / "download"
    folder.mkdir()
    snapshot = folder / "icite_metadata.zip"
    _odd_zip(snapshot, how)
    target = snapshot if given == "file" else folder
    try:
        code = main(["citations", "load", str(target), "--as-of", "2026-05-01"])
    except Exception as exc:  # what reaches the user as a traceback
        pytest.fail(f"traceback: {type(exc).__name__}: {exc}")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("litpulse: error:") and "icite_metadata.zip" in err
