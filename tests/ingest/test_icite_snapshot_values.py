"""The iCite snapshot's values as its real files carry them (found by a hostile review):
missing-value markers, impossible values, the figshare download as a folder. The API
refresh reads the same values by the same rule (one function, :func:`icite_values`)."""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.citations import ICITE_FIELDS, icite_values, read_icite, refresh_citations
from ingest.icite_snapshot import REQUIRED, iter_batches, load_snapshot, snapshot_plan
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator, running_emulator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "icite_metadata_sample.csv"
AS_OF = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
HEADER = (
    "pmid,doi,title,authors,year,journal,is_research_article,citation_count,"
    "field_citation_rate,expected_citations_per_year,citations_per_year,"
    "relative_citation_ratio,nih_percentile,human,animal,molecular_cellular,x_coord,"
    "y_coord,apt,is_clinical,cited_by_clin,cited_by,references,provisional,last_modified\n"
)


def _row(pmid: int, *, rcr: str = "1.5", count: str = "10", cpy: str = "2.0") -> str:
    return (
        f"{pmid},,A title,,2019,J,True,{count},1.0,1.0,{cpy},{rcr},50.0,0.5,0.25,0.25,"
        f"0.0,0.4,0.3,False,,,,False,2026-05-01\n"
    )


def _batch(text: str):  # type: ignore[no-untyped-def]
    batches = list(iter_batches(io.BytesIO(text.encode()), location="review.csv", size=100))
    assert len(batches) == 1
    return batches[0]


# --------------------------------------------------------------------------------------
# iCite snapshot: missing-value markers and impossible values
# --------------------------------------------------------------------------------------

MARKERS = ["NaN", "NA", "nan", "-nan", "N/A", "na", "null", "NULL", "None", "", " NaN "]


@pytest.mark.parametrize("marker", MARKERS)
def test_snapshot_missing_rcr_marker_keeps_the_rows_other_values(marker: str) -> None:
    batch = _batch(HEADER + _row(7, rcr=marker, count="42", cpy="6.0"))
    assert not batch.bad, [e.reason for e in batch.bad]
    assert batch.values[7] == {
        "citation_count": 42, "relative_citation_ratio": None, "citations_per_year": 6.0,
        "icite_year": 2019, "icite_provisional": False,
    }  # fmt: skip


@pytest.mark.parametrize("marker", ["NaN", "NA", ""])
def test_snapshot_missing_markers_in_every_metric_are_null(marker: str) -> None:
    batch = _batch(HEADER + _row(9, rcr=marker, count=marker, cpy=marker))
    assert not batch.bad, [e.reason for e in batch.bad]
    assert batch.values[9]["citation_count"] is None
    assert batch.values[9]["citations_per_year"] is None
    assert batch.values[9]["icite_year"] == 2019  # the row's real values stay


def _api(**fields: Any) -> dict[str, Any]:
    record = {"pmid": 7, "citation_count": 42, "relative_citation_ratio": 1.5,
              "citations_per_year": 6.0, "year": 2019, "provisional": "No"}  # fmt: skip
    return {**record, **fields}


@pytest.mark.parametrize("marker", [None, float("nan"), "NaN", "NA", ""])
def test_api_missing_marker_is_null_by_the_same_rule(marker: object) -> None:
    """The API's JSON null, a NaN (Python's json reads the literal), and the text markers:
    NULL, the record kept, exactly as the snapshot row with the same values."""
    answer = read_icite({"data": [_api(relative_citation_ratio=marker)]})
    assert not answer.rejected
    assert answer.values[7]["relative_citation_ratio"] is None
    assert answer.values[7]["citation_count"] == 42
    snapshot = _batch(HEADER + _row(7, rcr="NaN", count="42", cpy="6.0")).values[7]
    assert answer.values[7] == snapshot


def test_whole_numbers_written_as_floats_are_counts() -> None:
    """A writer that keeps a column with missing values as floats prints ``42.0``."""
    batch = _batch(HEADER + _row(7, count="42.0"))
    assert not batch.bad and batch.values[7]["citation_count"] == 42
    assert read_icite({"data": [_api(citation_count=42.0)]}).values[7]["citation_count"] == 42
    bad = _batch(HEADER + _row(7, count="42.5")).bad
    assert len(bad) == 1 and "citation_count '42.5'" in bad[0].reason


IMPOSSIBLE = [
    ("relative_citation_ratio", {"rcr": "-1.5"}, "negative"),
    ("citation_count", {"count": "-3"}, "negative"),
    ("citations_per_year", {"cpy": "-0.5"}, "negative"),
    ("relative_citation_ratio", {"rcr": "inf"}, "not finite"),
    ("relative_citation_ratio", {"rcr": "-Infinity"}, "not finite"),
    ("citations_per_year", {"cpy": "Infinity"}, "not finite"),
    ("citation_count", {"count": "4294967296"}, "out of range"),
]


@pytest.mark.parametrize(("column", "kwargs", "why"), IMPOSSIBLE)
def test_snapshot_impossible_citation_metrics_quarantine_the_row(
    column: str, kwargs: dict[str, str], why: str
) -> None:
    batch = _batch(HEADER + _row(8, **kwargs) + _row(10))
    stored = batch.values.get(8, {}).get(column)
    # the row is quarantined with the reason: the impossible value is never stored
    assert stored is None or stored >= 0, f"{column} stored as {stored!r}"
    assert 8 not in batch.values and 10 in batch.values  # the next row loads
    assert [e.pmid for e in batch.bad] == [8]
    reason = batch.bad[0].reason
    assert column in reason and why in reason, reason


@pytest.mark.parametrize(("column", "kwargs", "why"), IMPOSSIBLE)
def test_api_impossible_values_are_rejected_by_the_same_rule(
    column: str, kwargs: dict[str, str], why: str
) -> None:
    name = ICITE_FIELDS[column]
    value = next(iter(kwargs.values()))
    for raw in (value, float(value)):  # as text and as a JSON number
        answer = read_icite({"data": [_api(**{name: raw}), _api(pmid=10)]})
        assert 7 not in answer.values and 10 in answer.values
        assert [(p, column in r and why in r) for p, r, _ in answer.rejected] == [(7, True)]
    with pytest.raises(ValueError, match=column):
        icite_values({k: str(v) for k, v in _api(**{name: value}).items()}, strict=True)


@pytest.mark.parametrize("ahead", [0, 1, 2, 5])
def test_a_year_ahead_of_the_clock_keeps_the_record(ahead: int) -> None:
    """iCite dates ahead-of-print records ahead: the API record keeps its year and metrics
    (session 33b, B4; the snapshot's row: its review test); the bound is the years the
    PubMed parser stores, 1000..9999."""
    year = db.utcnow().year + ahead
    answer = read_icite({"data": [_api(year=year)]})
    assert not answer.rejected and answer.values[7]["icite_year"] == year
    assert answer.values[7]["citation_count"] == 42
    for edge in (1000, 9999):
        assert read_icite({"data": [_api(year=edge)]}).values[7]["icite_year"] == edge


@pytest.mark.parametrize("year", [0, 999, 10000, -2019])
def test_a_year_the_parser_would_not_store_is_impossible(year: int) -> None:
    answer = read_icite({"data": [_api(year=year), _api(pmid=10)]})
    assert 7 not in answer.values and 10 in answer.values
    assert [(p, "year" in r) for p, r, _ in answer.rejected] == [(7, True)]


def test_negative_zero_is_zero() -> None:
    batch = _batch(HEADER + _row(7, rcr="-0.0"))
    assert not batch.bad
    assert math.copysign(1.0, batch.values[7]["relative_citation_ratio"]) == 1.0


@pytest.fixture
def emu() -> Iterator[Emulator]:
    yield from running_emulator()


def test_api_refresh_quarantines_a_record_with_an_impossible_value(
    emu: Emulator, settings: Settings
) -> None:
    """The API path: the record is quarantined (kind ``icite``, with its JSON and the
    reason), the article keeps what it had and is stamped as asked; a NaN RCR is NULL."""
    src = SourceRef("generated", "review")
    engine = db.connect(settings)
    Store(engine).apply(
        [Record(pmid=p, version=1, title=f"Article {p}", source=src) for p in (21, 22, 23)]
    )
    with engine.begin() as conn:
        conn.execute(articles.update().where(articles.c.pmid == 21).values(citation_count=5))
    emu.set_icite(21, citation_count=-3, relative_citation_ratio=1.2)
    emu.set_icite(22, citation_count=12, relative_citation_ratio=float("nan"),
                  citations_per_year=4.0)  # fmt: skip
    s = emu.configure(settings)
    counts = refresh_citations(s, pmids=[21, 22, 23])
    assert (counts.requested, counts.updated, counts.unknown, counts.rejected) == (3, 1, 1, 1)
    with engine.connect() as conn:
        got = {r.pmid: r for r in conn.execute(select(articles).order_by(articles.c.pmid))}
    assert got[21].citation_count == 5 and got[21].relative_citation_ratio is None
    assert got[21].icite_fetched_at is not None  # asked again on the schedule
    assert (got[22].citation_count, got[22].relative_citation_ratio) == (12, None)
    assert got[22].citations_per_year == 4.0
    store = Store(engine)
    (q,) = store.quarantined()
    assert q["pmid"] == 21 and q["source_kind"] == "icite"
    assert "citation_count '-3'" in q["reason"] and "negative" in q["reason"]
    assert '"citation_count": -3' in q["raw_xml"] and "pmids=21" in q["source_location"]
    run = store.runs(1)[0]
    assert run["status"] == "succeeded" and run["details"]["rejected"] == 1
    # the same bad record again is quarantined once
    refresh_citations(s, pmids=[21])
    assert len(store.quarantined()) == 1


# --------------------------------------------------------------------------------------
# iCite snapshot: the figshare download as a folder
# --------------------------------------------------------------------------------------


def test_folder_with_the_open_citation_collection_beside_loads_the_metrics(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = SourceRef("generated", "review")
    Store(db.connect(settings)).apply(
        [Record(pmid=p, version=1, title=f"Article {p}", source=src) for p in (1001, 1002)]
    )
    folder = tmp_path / "icite_2026_05"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "icite_metadata.csv")
    (folder / "open_citation_collection.csv").write_text("citing,referenced\n1002,1001\n")
    with zipfile.ZipFile(folder / "open_citation_collection.zip", "w") as zf:
        zf.writestr("open_citation_collection.csv", "citing,referenced\n1002,1001\n")
    (folder / "icite_metadata.tar.gz").write_bytes(b"")  # skipped by the folder listing
    (folder / "README.txt").write_text("iCite snapshot")
    with caplog.at_level(logging.INFO, logger="ingest.icite_snapshot"):
        counts = load_snapshot(settings, folder, as_of=AS_OF)
    assert counts.updated == 3  # 1002's row and both of 1001's (the fixture repeats it)
    run = Store(db.connect(settings)).runs(1)[0]
    assert run["status"] == "succeeded"
    assert [Path(f["path"]).name for f in run["details"]["snapshot"]] == ["icite_metadata.csv"]
    skipped = {Path(f["path"]).name: f["reason"] for f in run["details"]["skipped_files"]}
    assert set(skipped) == {
        "open_citation_collection.csv", "open_citation_collection.zip",
        "icite_metadata.tar.gz", "README.txt",
    }  # fmt: skip
    assert "Open Citation Collection" in skipped["open_citation_collection.zip"]
    assert "JSON" in skipped["icite_metadata.tar.gz"]
    logged = caplog.text
    assert all(f"{name}: skipped" in logged for name in skipped), logged


def test_folder_without_the_metrics_is_refused_naming_what_it_skipped(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "open_citation_collection.csv").write_text("citing,referenced\n1002,1001\n")
    (tmp_path / "other.csv").write_text("pmid,title\n1,x\n")
    with pytest.raises(NotFoundError, match="no iCite metrics snapshot") as err:
        load_snapshot(sqlite_settings, tmp_path)
    assert "open_citation_collection.csv: the Open Citation Collection" in str(err.value)
    assert "other.csv: not an iCite snapshot CSV" in str(err.value)
    assert Store(db.connect(sqlite_settings)).runs(5) == []  # no run recorded


def test_given_as_a_file_the_open_citation_collection_is_still_an_error(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    occ = tmp_path / "open_citation_collection.zip"
    with zipfile.ZipFile(occ, "w") as zf:
        zf.writestr("open_citation_collection.csv", "citing,referenced\n1002,1001\n")
    assert snapshot_plan(occ) == ([occ.resolve()], [])
    with pytest.raises(ConfigError, match="Open Citation Collection"):
        load_snapshot(sqlite_settings, occ)


def test_a_damaged_zip_in_a_folder_is_not_skipped(tmp_path: Path) -> None:
    """A file whose header cannot be read may be the metrics: its load says what is wrong."""
    (tmp_path / "icite_metadata.zip").write_bytes(b"PK\x03\x04 cut short")
    header = ",".join(REQUIRED)
    (tmp_path / "b.csv").write_text(header + "\n")
    files, skipped = snapshot_plan(tmp_path)
    assert [f.name for f in files] == ["b.csv", "icite_metadata.zip"] and skipped == []
