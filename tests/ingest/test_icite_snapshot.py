"""The iCite snapshot loader: the API's columns, only stored PMIDs, bad rows, resume, memory.

``tests/fixtures/icite_metadata_sample.csv`` has the real snapshot header (25 columns,
``True``/``False`` flags, space-separated PMID lists, quoted commas, quotes and a line
break in titles); its values are made up. It holds 30 good rows, four malformed ones (too
few fields, a PMID that is not one, an unreadable count, an unknown flag) and PMID 1001
a second time with another count (the later row wins).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, update

from ingest.citations import ICITE_FIELDS, due_pmids, refresh_citations
from ingest.icite_snapshot import (
    MAX_SPAN,
    SCOPE,
    Batch,
    SnapshotCounts,
    iter_batches,
    load_snapshot,
    snapshot_date,
)
from ingest.records import Deletion, Record, SourceRef
from ingest.store import Store
from litpulse.app.cli import citations as cli
from litpulse.core import db
from litpulse.core.errors import ConfigError, ParseError
from litpulse.core.schema import articles, checkpoints, quarantine
from litpulse.core.settings import Settings
from tests.emulator import running_emulator
from tests.ingest.test_crash_resume import KillPoint, child_env, run_and_kill

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "icite_metadata_sample.csv"
AS_OF = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
TODAY = dt.date.today()
_COLUMNS = [*ICITE_FIELDS, "icite_fetched_at"]


def _fixture_rows() -> dict[int, dict[str, str]]:
    """The well-formed rows of the fixture by PMID (the later of a repeated PMID)."""
    out: dict[int, dict[str, str]] = {}
    with FIXTURE.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["pmid"].isdigit() and len(row) == 25 and None not in row.values():
                if row["citation_count"].isdigit() and row["provisional"] in ("True", "False"):
                    out[int(row["pmid"])] = row
    return out


def _seed(settings: Settings, pmids: list[int], *, deleted: tuple[int, ...] = ()) -> None:
    src = SourceRef("generated", "test")
    items: list[Any] = [
        Record(pmid=p, version=1, title=f"Article {p}", source=src, entrez_date=TODAY)
        for p in pmids
    ]
    items += [Deletion(pmid=p, source=src) for p in deleted]
    Store(db.connect(settings)).apply(items)


def _icite(engine: Engine) -> dict[int, dict[str, Any]]:
    cols = [articles.c[c] for c in _COLUMNS]
    with engine.connect() as conn:
        rows = conn.execute(select(articles.c.pmid, *cols).order_by(articles.c.pmid)).all()
    return {r[0]: dict(zip(_COLUMNS, r[1:], strict=True)) for r in rows}


GOOD = _fixture_rows()
STORED = sorted(GOOD)[:20] + [2001, 2002]  # 2001/2002 appear only in malformed rows


def test_load_fills_the_api_columns_for_stored_live_pmids(settings: Settings) -> None:
    _seed(settings, STORED, deleted=(1015,))
    counts = load_snapshot(settings, FIXTURE, as_of=AS_OF, batch_size=7)
    live = [p for p in STORED if p in GOOD and p != 1015]
    assert counts == SnapshotCounts(
        rows=35, updated=len(live) + 1, skipped=35 - 4 - 20, malformed=4
    )
    got = _icite(db.connect(settings))
    for p in live:
        row = GOOD[p]
        want = {
            "citation_count": int(row["citation_count"]),
            "relative_citation_ratio": float(row["relative_citation_ratio"])
            if row["relative_citation_ratio"]
            else None,
            "citations_per_year": float(row["citations_per_year"]),
            "icite_year": int(row["year"]),
            "icite_provisional": row["provisional"] == "True",
            "icite_fetched_at": AS_OF,
        }
        assert got[p] == want, p
    assert got[1001]["citation_count"] == 999  # the later of its two rows
    assert got[1006]["icite_year"] == 2023  # the row whose title spans two lines
    # the tombstone and the PMIDs only in malformed rows are untouched
    for p in (1015, 2001, 2002):
        assert got[p]["icite_fetched_at"] is None and got[p]["citation_count"] is None
    assert not set(got) - set(STORED)  # nothing added for PMIDs the store lacks
    store = Store(db.connect(settings))
    run = store.runs(1)[0]
    assert run["source"] == "citations" and run["status"] == "succeeded"
    assert (run["updated"], run["quarantined"]) == (counts.updated, 4)
    assert run["details"]["snapshot"][0]["rows"] == 35
    assert len(run["details"]["malformed_sample"]) == 4
    assert store.get_checkpoint(SCOPE, _key(FIXTURE))["status"] == "done"


def _key(path: Path) -> str:
    import hashlib

    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()


def test_malformed_rows_are_quarantined_with_their_line_and_the_load_goes_on(
    settings: Settings,
) -> None:
    _seed(settings, STORED)
    load_snapshot(settings, FIXTURE, as_of=AS_OF)
    with db.connect(settings).connect() as conn:
        q = conn.execute(select(quarantine).order_by(quarantine.c.line)).all()
    reasons = [(r.line, r.pmid, r.reason) for r in q]
    assert [line for line, _, _ in reasons] == [
        15,
        16,
        17,
        18,
    ]  # header is line 1; one 2-line title
    assert "5 fields where the header has 25" in reasons[0][2]
    assert "pmid 'PMID-X' is not a PMID" in reasons[1][2]
    assert reasons[2][1] == 2001 and "citation_count 'many'" in reasons[2][2]
    assert reasons[3][1] == 2002 and "provisional 'Maybe'" in reasons[3][2]
    assert q[0].raw_xml.startswith("1999,10.1000/short,Too few fields")
    assert {r.source_location for r in q} == {str(FIXTURE)}
    # rows after the bad ones were loaded
    assert _icite(db.connect(settings))[1020]["icite_fetched_at"] == AS_OF


def test_same_columns_as_the_api_refresh(settings: Settings, tmp_path: Path) -> None:
    """The snapshot and the API, given the same records, store the same values."""
    pmids = sorted(GOOD)[:12]
    _seed(settings, pmids)
    load_snapshot(settings, FIXTURE, as_of=AS_OF)
    from_snapshot = _icite(db.connect(settings))
    api_settings = Settings.from_env({}, home=tmp_path / "api")
    _seed(api_settings, pmids)
    for emu in running_emulator():
        for p in pmids:
            row = GOOD[p]
            yes_no = {"True": "Yes", "False": "No"}
            emu.set_icite(
                p,
                citation_count=int(row["citation_count"]),
                relative_citation_ratio=float(rcr)
                if (rcr := row["relative_citation_ratio"])
                else None,
                citations_per_year=float(row["citations_per_year"]),
                year=int(row["year"]),
                provisional=yes_no[row["provisional"]],
            )
        refresh_citations(emu.configure(api_settings), pmids=pmids)
    from_api = _icite(db.connect(api_settings))
    db._ENGINES.pop(api_settings.effective_database_url).dispose()
    strip = [c for c in _COLUMNS if c != "icite_fetched_at"]
    assert len(from_snapshot) == len(from_api) == 12
    for p in pmids:
        assert {c: from_snapshot[p][c] for c in strip} == {c: from_api[p][c] for c in strip}


def test_the_daily_refresh_asks_only_for_what_is_due_after_the_snapshot(
    settings: Settings,
) -> None:
    now = db.utcnow()
    _seed(settings, [*sorted(GOOD)[:10], 5001])  # 5001 is not in the snapshot
    load_snapshot(settings, FIXTURE, as_of=now - dt.timedelta(days=1))
    engine = db.connect(settings)
    assert due_pmids(engine, now=now) == [5001]
    # articles here are under a year old: due 7 days after the snapshot's date
    assert due_pmids(engine, now=now + dt.timedelta(days=7)) == [*sorted(GOOD)[:10], 5001]


def test_a_later_api_refresh_is_not_overwritten_by_an_older_snapshot(settings: Settings) -> None:
    _seed(settings, [1002, 1003])
    engine = db.connect(settings)
    later = AS_OF + dt.timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(
            update(articles)
            .where(articles.c.pmid == 1002)
            .values(citation_count=7, icite_fetched_at=later)
        )
    counts = load_snapshot(settings, FIXTURE, as_of=AS_OF)
    assert counts.updated == 1
    got = _icite(engine)
    assert (got[1002]["citation_count"], got[1002]["icite_fetched_at"]) == (7, later)
    assert got[1003]["icite_fetched_at"] == AS_OF


def test_gzip_zip_and_folder_load_like_the_plain_csv(settings: Settings, tmp_path: Path) -> None:
    _seed(settings, STORED)
    engine = db.connect(settings)
    load_snapshot(settings, FIXTURE, as_of=AS_OF)
    want = _icite(engine)
    gz = tmp_path / "icite_metadata.csv.gz"
    gz.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    zp = tmp_path / "icite_metadata.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(FIXTURE, "icite_metadata.csv")
    folder = tmp_path / "parts"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "a.csv")
    (folder / "notes.txt").write_text("not a snapshot")
    for path in (gz, zp, folder):
        with engine.begin() as conn:
            conn.execute(update(articles).values({c: None for c in _COLUMNS}))
        counts = load_snapshot(settings, path, as_of=AS_OF, batch_size=4)
        assert counts.rows == 35 and counts.malformed == 4, path
        assert _icite(engine) == want, path


def _zip_with(path: Path, extra: bytes = b"") -> None:
    """A snapshot zip whose CSV member is dated 2026-05-01 00:00 (DOS time) with ``extra``."""
    member = zipfile.ZipInfo("icite_metadata.csv", (2026, 5, 1, 0, 0, 0))
    member.extra = extra
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, FIXTURE.read_bytes())


def test_the_snapshot_date_is_the_one_the_file_carries_not_its_download(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Session 33b, B2: a zip's member time (UTC from a UT or NTFS extra field, else its
    DOS time at the earliest instant, UTC+14), a gzip header's MTIME, else the mtime; each
    file is given today's mtime, as a download leaves it."""
    may = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    noon = may + dt.timedelta(hours=12)
    ut = struct.pack("<HHBI", 0x5455, 5, 1, int(noon.timestamp()))
    ticks = int((noon - dt.datetime(1601, 1, 1, tzinfo=dt.UTC)).total_seconds()) * 10**7
    ntfs = struct.pack("<HHIHHQQQ", 0x000A, 32, 0, 1, 24, ticks, ticks, ticks)
    files = {
        "dos.zip": (lambda f: _zip_with(f), may - dt.timedelta(hours=14), "zip member's time"),
        "ut.zip": (lambda f: _zip_with(f, ut), noon, "zip member's time"),
        "ntfs.zip": (lambda f: _zip_with(f, ntfs), noon, "zip member's time"),
        "dated.csv.gz": (
            lambda f: f.write_bytes(gzip.compress(FIXTURE.read_bytes(), mtime=noon.timestamp())),
            noon, "gzip header's time",
        ),
        "undated.csv.gz": (
            lambda f: f.write_bytes(gzip.compress(FIXTURE.read_bytes(), mtime=0)),
            None, "file's mtime",
        ),
        "plain.csv": (lambda f: f.write_bytes(FIXTURE.read_bytes()), None, "file's mtime"),
        "damaged.zip": (lambda f: f.write_bytes(b"PK\x03\x04 not a zip"), None, "file's mtime"),
    }  # fmt: skip
    now = db.utcnow()
    for name, (write, want, said) in files.items():
        path = tmp_path / name
        write(path)
        at, dated_by = snapshot_date(path)
        assert dated_by == f"the {said}", (name, dated_by)
        if want is None:  # the mtime: the download's, now
            assert abs(at - now) < dt.timedelta(minutes=5), name
        else:
            assert at == want, name
    _seed(sqlite_settings, [1002])
    load_snapshot(sqlite_settings, tmp_path / "ut.zip")
    (run,) = Store(db.connect(sqlite_settings)).runs(1)
    (entry,) = run["details"]["snapshot"]
    assert (entry["as_of"], entry["dated_by"]) == (noon.isoformat(), "the zip member's time")
    assert _icite(db.connect(sqlite_settings))[1002]["icite_fetched_at"] == noon


def test_a_load_dated_by_the_download_is_not_resumed_under_the_files_own_date(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """A load of a .zip begun by a release that dated it by its mtime (its checkpoint: no
    as-of given, the download's date) is a new load from the first row, dated by the zip."""
    zp = tmp_path / "icite_metadata.zip"
    _zip_with(zp)
    stat, now = zp.stat(), db.utcnow()
    old = {"path": str(zp), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "as_of": None,
           "fetched_at": now.isoformat(), "offset": 400, "line": 3, "rows": 2}  # fmt: skip
    store = Store(db.connect(sqlite_settings))
    store.set_checkpoint(SCOPE, _key(zp), "running", old)
    _seed(sqlite_settings, [1002])
    counts = load_snapshot(sqlite_settings, zp)
    assert counts.rows == 35
    (entry,) = store.runs(1)[0]["details"]["snapshot"]
    may = dt.datetime(2026, 5, 1, tzinfo=dt.UTC) - dt.timedelta(hours=14)
    assert (entry["resumed_at"], entry["as_of"]) == (0, may.isoformat())


def test_other_files_are_refused_with_the_reason(sqlite_settings: Settings, tmp_path: Path) -> None:
    occ = tmp_path / "open_citation_collection.csv"
    occ.write_text("citing,referenced\n1001,1002\n")
    with pytest.raises(ConfigError, match="Open Citation Collection"):
        load_snapshot(sqlite_settings, occ)
    other = tmp_path / "other.csv"
    other.write_text("pmid,title\n1,x\n")
    with pytest.raises(ConfigError, match="no column citation_count"):
        load_snapshot(sqlite_settings, other)
    tar = tmp_path / "icite_metadata.tar.gz"
    tar.write_bytes(b"")
    with pytest.raises(ConfigError, match="JSON tarball"):
        load_snapshot(sqlite_settings, tar)
    with pytest.raises(ConfigError, match="no such file"):
        load_snapshot(sqlite_settings, tmp_path / "missing.csv")
    runs = Store(db.connect(sqlite_settings)).runs(5)
    assert [r["status"] for r in runs] == ["failed", "failed"]  # the two read, then refused


# ----------------------------------------------------------------------- memory, resume


def _big_csv(path: Path, n: int, *, first: int = 100_000) -> Path:
    header = FIXTURE.read_text().splitlines()[0]
    template = FIXTURE.read_text().splitlines()[1].split(",")
    with path.open("w") as f:
        f.write(header + "\n")
        for i in range(n):
            row = list(template)
            row[0] = str(first + i)
            row[7] = str(i % 500)
            f.write(",".join(row) + "\n")
    return path


class _Counting(io.RawIOBase):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.inner.seek(pos, whence)

    def readinto(self, b: Any) -> int:
        n = self.inner.readinto(b)
        self.read_bytes += n
        return n


def test_the_loader_reads_one_batch_at_a_time(tmp_path: Path) -> None:
    data = _big_csv(tmp_path / "big.csv", 2000).read_bytes()
    raw = _Counting(data)
    stream = io.BufferedReader(raw, buffer_size=4096)
    batches = iter_batches(stream, location="big.csv", size=50)
    first = next(batches)
    assert first.rows == 50 and len(first.values) == 50
    assert raw.read_bytes < len(data) // 10  # the rest of the file is still unread
    rest = list(batches)
    assert [b.rows for b in rest] == [50] * 39
    offsets = [first.offset] + [b.offset for b in rest]
    assert offsets == sorted(offsets) and offsets[-1] == len(data)
    # each batch resumes exactly: reading from a batch's offset gives the next batches
    again = list(
        iter_batches(
            io.BytesIO(data), location="big.csv", size=50, offset=rest[9].offset, line=rest[9].line
        )
    )
    assert [b.values for b in again] == [b.values for b in rest[10:]]


def test_a_killed_load_resumes_to_the_state_of_a_clean_load(
    settings: Settings, tmp_path: Path
) -> None:
    big = _big_csv(tmp_path / "icite_metadata.csv", 20_000)
    stored = list(range(100_000, 120_000, 40))  # 500 articles spread over the file
    _seed(settings, stored)
    engine = db.connect(settings)
    clean_counts = load_snapshot(settings, big, as_of=AS_OF, batch_size=100)
    clean = _icite(engine)
    assert clean_counts.updated == len(stored)
    with engine.begin() as conn:  # back to before the load
        conn.execute(update(articles).values({c: None for c in _COLUMNS}))
        conn.execute(delete(checkpoints).where(checkpoints.c.scope == SCOPE))
    store = Store(engine)
    argv = ["-m", "litpulse", "citations", "load", str(big), "--as-of", "2026-05-01",
            "--batch-size", "100"]  # fmt: skip
    point = KillPoint("mid-load", articles.c.icite_fetched_at.isnot(None), 150)
    run_and_kill(argv, child_env(settings), engine, point, tmp_path / "child.log")
    cp = store.get_checkpoint(SCOPE, _key(big))
    assert cp is not None and cp["status"] == "running" and 0 < cp["value"]["rows"] < 20_000
    resumed = load_snapshot(settings, big, as_of=AS_OF, batch_size=100)
    assert 0 < resumed.rows < 20_000  # it went on from the checkpoint
    assert _icite(engine) == clean
    runs = store.runs(2)
    assert [r["status"] for r in runs] == ["succeeded", "abandoned"]
    assert runs[0]["details"]["snapshot"][0]["resumed_at"] == cp["value"]["rows"]
    # a finished file loaded again is read again from the start, changing nothing
    again = load_snapshot(settings, big, as_of=AS_OF, batch_size=100)
    assert again.rows == 20_000 and _icite(engine) == clean


# ----------------------------------------------------------------------------------- CLI


def test_cli_citations_load_json(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(sqlite_settings, [1003, 1004])
    parser = argparse.ArgumentParser(prog="litpulse")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["citations", "load", str(FIXTURE), "--as-of", "2026-05-01", "--json"])
    assert args.func(args, sqlite_settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"rows": 35, "updated": 2, "skipped": 29, "malformed": 4}
    got = _icite(db.connect(sqlite_settings))
    assert got[1004]["icite_fetched_at"] == AS_OF


# ------------------------------------------------------------ review (rev-api): findings


def _snapshot_row(pmid: int, *, title: str = "A title", count: int = 5) -> str:
    """One snapshot CSV line with the fixture's header order and these values."""
    names = FIXTURE.read_text().splitlines()[0].split(",")
    values = {n: "" for n in names}
    values.update(
        pmid=str(pmid), title=title, citation_count=str(count),
        relative_citation_ratio="1.0", citations_per_year="2.0", year="2020",
        provisional="False",
    )  # fmt: skip
    return ",".join(values[n] for n in names)


def test_a_stray_quote_loses_no_row_and_gives_no_row_another_rows_values(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    header = FIXTURE.read_text().splitlines()[0]
    lines = [
        header,
        _snapshot_row(1),
        _snapshot_row(2, title='"A title whose closing quote was lost', count=2),
        *[_snapshot_row(p, count=p) for p in range(3, 53)],
        _snapshot_row(53, title='"A ""quoted"" title"', count=777),  # well-formed quoting
        *[_snapshot_row(p, count=p) for p in range(54, 60)],
    ]
    path = tmp_path / "icite_metadata.csv"
    path.write_text("\n".join(lines) + "\n")
    _seed(sqlite_settings, list(range(1, 60)))
    counts = load_snapshot(sqlite_settings, path, as_of=AS_OF)
    got = _icite(db.connect(sqlite_settings))
    # every one of the 59 data lines is read and accounted for
    assert counts.rows == 59, counts
    assert counts.updated + counts.skipped + counts.malformed == counts.rows
    # the well-formed rows after the broken one are loaded with their own values
    for p in range(3, 60):
        assert got[p]["icite_fetched_at"] == AS_OF, p
        assert got[p]["citation_count"] == (777 if p == 53 else p), p
    # and the broken row does not take over another row's values
    assert got[2]["citation_count"] != 777


def _cut_gzip(path: Path) -> Path:
    data = gzip.compress(FIXTURE.read_bytes())
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_gzip(path: Path) -> Path:
    path.write_bytes(b"pmid,doi\n1,x\n")  # a plain CSV named .gz
    return path


def _cut_zip(path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("icite_metadata.csv", FIXTURE.read_bytes())
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_zip(path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("icite_metadata.csv", FIXTURE.read_bytes())
    data = bytearray(buf.getvalue())
    data[len(data) // 3] ^= 0xFF  # a flipped byte inside the deflated member
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("icite_metadata.csv.gz", _cut_gzip),
        ("icite_metadata.csv.gz", _not_gzip),
        ("icite_metadata.zip", _cut_zip),
        ("icite_metadata.zip", _corrupt_zip),
    ],
)
def test_a_truncated_or_corrupt_compressed_snapshot_is_a_clear_error(
    sqlite_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    make: Any,
) -> None:
    from litpulse.app.cli import main
    from litpulse.core.errors import LitpulseError

    path = make(tmp_path / name)
    _seed(sqlite_settings, [1001, 1002])
    with pytest.raises(LitpulseError):
        load_snapshot(sqlite_settings, path, as_of=AS_OF, batch_size=4)
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    capsys.readouterr()
    rc = main(["citations", "load", str(path), "--as-of", "2026-05-01"])
    err = capsys.readouterr().err
    assert rc == 2 and "litpulse: error:" in err and str(path) in err


def _stray_quote_csv(path: Path) -> Path:
    """Rows 1-80 with three kinds of broken quoting among them (see the asserts)."""
    header = FIXTURE.read_text().splitlines()[0]
    lines = [header]
    for p in range(1, 81):
        if p == 5:  # a stray quote; the next rows read as rows of their own
            lines.append(_snapshot_row(p, title='"lost its closing quote'))
        elif p == 20:  # a stray quote just before a real title over two lines
            lines.append(_snapshot_row(p, title='"stray'))
        elif p == 21:
            lines.append(_snapshot_row(p, title='"Real title\nover two lines"', count=p))
        elif p == 40:  # a stray quote, then lines that are no rows, longer than MAX_SPAN
            lines.append(_snapshot_row(p, title='"stray'))
            lines += [f"junk {i}, no row" for i in range(MAX_SPAN + 8)]
        else:
            lines.append(_snapshot_row(p, count=p))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stray_quotes_quarantine_only_their_row_and_resume_reads_on_exactly(
    tmp_path: Path,
) -> None:
    data = _stray_quote_csv(tmp_path / "icite_metadata.csv").read_bytes()
    clean = list(iter_batches(io.BytesIO(data), location="s.csv", size=3))
    values = {p: v["citation_count"] for b in clean for p, v in b.values.items()}
    assert values == {p: p for p in range(1, 81) if p not in (5, 20, 40)}
    bad = [e for b in clean for e in b.bad]
    stray = [(e.line, e.pmid) for e in bad if e.pmid is not None]
    assert stray == [(6, 5), (21, 20), (42, 40)]  # header line 1, row 21 spans 2 lines
    assert "line 7 reads as a row of its own" in bad[0].reason
    assert "lines 21-22" in bad[1].reason and "read again" in bad[1].reason
    assert f"still open after {MAX_SPAN} lines" in bad[2].reason
    assert bad[0].raw_xml == _snapshot_row(5, title='"lost its closing quote') + "\n"
    junk = [e for e in bad if e.pmid is None]
    assert [e.raw_xml for e in junk] == [f"junk {i}, no row\n" for i in range(MAX_SPAN + 8)]
    assert sum(b.rows for b in clean) == 80 + MAX_SPAN + 8  # every line read and counted
    assert clean[-1].offset == len(data)

    def seen(batches: list[Batch]) -> list[Any]:
        return [
            (b.values, [(e.line, e.pmid, e.reason, e.raw_xml) for e in b.bad], b.rows,
             b.offset, b.line)
            for b in batches
        ]  # fmt: skip

    # from every batch's checkpoint, reading goes on exactly as the uninterrupted read
    for i, b in enumerate(clean[:-1]):
        again = iter_batches(
            io.BytesIO(data), location="s.csv", size=3, offset=b.offset, line=b.line
        )
        assert seen(list(again)) == seen(clean[i + 1 :]), i


def test_a_load_stopped_after_a_stray_quote_resumes_to_a_clean_load(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.icite_snapshot as snap

    path = _stray_quote_csv(tmp_path / "icite_metadata.csv")
    _seed(sqlite_settings, list(range(1, 81)))
    engine = db.connect(sqlite_settings)
    clean_counts = load_snapshot(sqlite_settings, path, as_of=AS_OF, batch_size=2)
    clean = _icite(engine)
    with engine.connect() as conn:
        clean_q = conn.execute(select(quarantine.c.line, quarantine.c.raw_xml)).all()
    assert clean_counts.malformed == 3 + MAX_SPAN + 8
    with engine.begin() as conn:  # back to before the load
        conn.execute(update(articles).values({c: None for c in _COLUMNS}))
        conn.execute(delete(checkpoints).where(checkpoints.c.scope == SCOPE))
        conn.execute(delete(quarantine))
    write, calls = snap._write, []

    def stop_at_the_21st(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 21:
            raise KeyboardInterrupt
        return write(*args)

    # batch 20 ends with row 40's stray quote: the 32 lines after it, given back to be
    # read again, are not in its checkpoint
    monkeypatch.setattr(snap, "_write", stop_at_the_21st)
    with pytest.raises(KeyboardInterrupt):
        load_snapshot(sqlite_settings, path, as_of=AS_OF, batch_size=2)
    cp = Store(engine).get_checkpoint(SCOPE, _key(path))
    assert cp is not None and (cp["value"]["rows"], cp["value"]["line"]) == (40, 42)
    monkeypatch.setattr(snap, "_write", write)
    resumed = load_snapshot(sqlite_settings, path, as_of=AS_OF, batch_size=2)
    assert resumed.rows == clean_counts.rows - 40
    assert _icite(engine) == clean
    with engine.connect() as conn:
        assert sorted(conn.execute(select(quarantine.c.line, quarantine.c.raw_xml)).all()) == (
            sorted(clean_q)
        )


def test_a_cut_gzip_keeps_the_committed_batches_and_names_the_last_line(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    big = _big_csv(tmp_path / "icite_metadata.csv", 2000)
    gz = tmp_path / "icite_metadata.csv.gz"
    data = gzip.compress(big.read_bytes())
    gz.write_bytes(data[: len(data) * 3 // 4])
    _seed(sqlite_settings, list(range(100_000, 102_000)))
    with pytest.raises(ParseError, match="truncated or corrupt") as err:
        load_snapshot(sqlite_settings, gz, as_of=AS_OF, batch_size=100)
    store = Store(db.connect(sqlite_settings))
    cp = store.get_checkpoint(SCOPE, _key(gz))
    assert cp is not None and cp["status"] == "running" and cp["value"]["rows"] > 0
    assert f"{gz} is truncated or corrupt (EOFError" in str(err.value)
    assert f"up to line {cp['value']['line']} are loaded and stay" in str(err.value)
    got = _icite(db.connect(sqlite_settings))
    assert sum(v["icite_fetched_at"] == AS_OF for v in got.values()) == cp["value"]["rows"]
    run = store.runs(1)[0]
    assert run["status"] == "failed" and run["updated"] == cp["value"]["rows"]


# --------------------------------------------------- review (full size): findings


def _header() -> str:
    return FIXTURE.read_text().splitlines()[0]


def test_a_nul_byte_in_a_malformed_row_is_quarantined_and_the_load_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    """A block of zero bytes (a copy cut by a crash and filled with zeros) makes a
    malformed row. Its raw text was quarantined as it was, and PostgreSQL refuses NUL in
    text: the batch failed and the load stopped there, at the same row on every rerun
    (SQLite stored the NULs themselves)."""
    _seed(settings, [1, 2, 3])
    f = tmp_path / "icite_metadata.csv"
    f.write_bytes(
        f"{_header()}\n{_snapshot_row(1)}\n".encode() + b"\x00" * 64 + b"\n"
        + f"{_snapshot_row(2)}\n{_snapshot_row(3)}\n".encode()
    )  # fmt: skip
    counts = load_snapshot(settings, f, as_of=AS_OF, batch_size=1)
    assert counts.malformed == 1
    got = _icite(db.connect(settings))
    assert got[2]["citation_count"] == 5 and got[3]["citation_count"] == 5
    with db.connect(settings).connect() as conn:
        (line, raw), = conn.execute(select(quarantine.c.line, quarantine.c.raw_xml)).all()
    assert line == 3 and raw.rstrip("\r\n") == "\\x00" * 64  # escapes, as the XML path


def test_the_same_bad_row_in_next_months_snapshot_is_quarantined_for_that_file(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """A bad row iCite publishes unchanged month after month was counted malformed in
    each month's load, but only the first month's file and line were ever quarantined:
    nothing named the file just loaded. A repeated load of one file still adds nothing."""
    settings = sqlite_settings
    _seed(settings, [1, 2])
    bad = _snapshot_row(2).replace(",5,", ",many,", 1)  # an unreadable citation count
    april = tmp_path / "2026-04" / "icite_metadata.csv"
    may = tmp_path / "2026-05" / "icite_metadata.csv"
    april.parent.mkdir()
    may.parent.mkdir()
    april.write_text(f"{_header()}\n{_snapshot_row(1)}\n{bad}\n")
    may.write_text(f"{_header()}\n{bad}\n{_snapshot_row(1, count=7)}\n")
    assert load_snapshot(settings, april, as_of=AS_OF).malformed == 1
    assert load_snapshot(settings, may, as_of=AS_OF + dt.timedelta(days=31)).malformed == 1
    assert load_snapshot(settings, may, as_of=AS_OF + dt.timedelta(days=31)).malformed == 1

    with db.connect(settings).connect() as conn:
        q = conn.execute(select(quarantine.c.source_location, quarantine.c.line)).all()
    assert sorted((Path(loc).parent.name, line) for loc, line in q) == [
        ("2026-04", 3), ("2026-05", 2)]
