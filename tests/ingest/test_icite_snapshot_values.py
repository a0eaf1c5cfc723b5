"""The iCite snapshot's values as its real files carry them (found by a hostile review):
missing-value markers, impossible values, the figshare download as a folder."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pytest

from ingest.icite_snapshot import iter_batches, load_snapshot
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings

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


@pytest.mark.xfail(
    strict=True,
    reason="snapshot row whose RCR is a missing-value marker (NaN/NA) is quarantined whole: "
    "its citation_count, citations_per_year and year are lost (the API path maps it to NULL)",
)
@pytest.mark.parametrize("marker", ["NaN", "NA"])
def test_snapshot_missing_rcr_marker_keeps_the_rows_other_values(marker: str) -> None:
    batch = _batch(HEADER + _row(7, rcr=marker, count="42", cpy="6.0"))
    assert not batch.bad, [e.reason for e in batch.bad]
    assert batch.values[7]["citation_count"] == 42
    assert batch.values[7]["citations_per_year"] == 6.0
    assert batch.values[7]["relative_citation_ratio"] is None


@pytest.mark.xfail(
    strict=True,
    reason="negative citation_count / relative_citation_ratio in a snapshot row are stored "
    "as is (no range check), and ranking then scores the article as uncited (0.0)",
)
@pytest.mark.parametrize("column", ["relative_citation_ratio", "citation_count"])
def test_snapshot_negative_citation_metrics_are_not_stored(column: str) -> None:
    kwargs = {"rcr": "-1.5"} if column == "relative_citation_ratio" else {"count": "-3"}
    batch = _batch(HEADER + _row(8, **kwargs))
    stored = batch.values.get(8, {}).get(column)
    # either the row is quarantined or the impossible value becomes NULL: never stored
    assert stored is None or stored >= 0, f"{column} stored as {stored!r}"


# --------------------------------------------------------------------------------------
# iCite snapshot: the figshare download as a folder
# --------------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="`citations load FOLDER` on the figshare snapshot download (icite_metadata + "
    "open_citation_collection) raises ConfigError on the OCC file after loading the metrics "
    "and records the run failed (the JSON tarball beside it is skipped silently)",
)
def test_folder_with_the_open_citation_collection_beside_loads_the_metrics(
    settings: Settings, tmp_path: Path
) -> None:
    src = SourceRef("generated", "review")
    Store(db.connect(settings)).apply(
        [Record(pmid=p, version=1, title=f"Article {p}", source=src) for p in (1001, 1002)]
    )
    folder = tmp_path / "icite_2026_05"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "icite_metadata.csv")
    (folder / "open_citation_collection.csv").write_text("citing,referenced\n1002,1001\n")
    (folder / "icite_metadata.tar.gz").write_bytes(b"")  # skipped by the folder listing
    counts = load_snapshot(settings, folder, as_of=AS_OF)
    assert counts.updated == 2
    run = Store(db.connect(settings)).runs(1)[0]
    assert run["status"] == "succeeded"
