"""Hostile input through the real ingest path (``ingest_files`` and the CLI).

Each defect sits in one record (or between two) of an otherwise good file: that record
ends in quarantine with its raw bytes and the reason, every other record of the file is
stored, and the counts say so exactly. The memory tests run the ``litpulse ingest``
command in a child process and compare its peak RSS with that of a run on a small
clean file. Inputs are built at test time by :mod:`tests.ingest.hostile`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.files import ingest_files
from ingest.parse import ParseLimits
from ingest.store import IngestCounts, Store
from litpulse.core import db
from litpulse.core.schema import articles, quarantine
from litpulse.core.schema import references as references_table
from litpulse.core.settings import Settings
from tests.ingest.hostile import (
    PROLOG,
    article,
    blanks,
    corpus,
    deep,
    deletion,
    document,
    laughs_doctype,
    stream,
    write_gzip,
    xxe_doctype,
)

N = 520
ROOT = Path(__file__).resolve().parents[2]


def _ingest(settings: Settings, path: Path) -> IngestCounts:
    return ingest_files(settings, [path])


def _stored(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(conn.execute(select(articles.c.pmid)).scalars())


def _quarantine(settings: Settings) -> list[dict[str, Any]]:
    with db.connect(settings).connect() as conn:
        rows = conn.execute(select(quarantine).order_by(quarantine.c.id)).all()
    return [dict(r._mapping) for r in rows]


def _succeeded(settings: Settings) -> dict[str, Any]:
    run = Store(db.connect(settings)).runs()[0]
    assert run["status"] == "succeeded", run
    return run


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _expect(
    settings: Settings, path: Path, *, missing: set[int], quarantined: int, **more: int
) -> list[dict[str, Any]]:
    """Ingest ``path``; every PMID 1..N but ``missing`` is stored; return the quarantine."""
    counts = _ingest(settings, path)
    want = N - len(missing)
    assert counts == IngestCounts(inserted=want, quarantined=quarantined, **more), counts
    assert _stored(settings) == set(range(1, N + 1)) - missing
    _succeeded(settings)
    rows = _quarantine(settings)
    assert len(rows) == quarantined
    return rows


# --------------------------------------------------------------------------- bad bytes


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc3(", b"\x00", b"\x1b"],
    ids=["ff", "bad-utf8", "nul", "control"],
)
def test_bad_bytes_mid_file_quarantine_one_record(
    settings: Settings, tmp_path: Path, bad: bytes
) -> None:
    data = document(corpus(N, {20: article(20).replace(b"Title 20.", b"Title " + bad + b" 20.")}))
    path = _write(tmp_path, "bad.xml", data)
    (row,) = _expect(settings, path, missing={20}, quarantined=1)
    assert row["pmid"] == 20
    assert row["reason"].startswith("XML syntax error at line ")
    assert row["line"] == data[: data.index(b"Title " + bad)].count(b"\n") + 1
    # the raw bytes are kept: undecodable bytes escaped, control bytes written out
    assert '<PMID Version="1">20</PMID>' in row["raw_xml"]
    assert "\x00" not in row["raw_xml"]
    escaped = bad.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    assert f"Title {escaped} 20." in row["raw_xml"]


# --------------------------------------------------------------------------- broken markup


def _unterminated(pmid: int) -> bytes:
    return article(pmid).replace(b"</PubmedArticle>", b"")


@pytest.mark.parametrize(
    ("replace", "missing", "quarantined"),
    [
        ({20: article(20, title="<b>unclosed")}, {20}, 1),
        ({20: article(20, title="a</i>b")}, {20}, 1),
        ({20: _unterminated(20)}, {20}, 1),
        ({20: article(20).replace(b"<PubmedData>", b"<PubmedData")}, {20}, 1),
        ({20: b"<<< junk >>> &&& \n" + article(20)}, set(), 1),
        ({20: b"</PubmedArticleSet>\n" + article(20)}, set(), 1),
        ({20: b"<!-- a comment between records -->\n" + article(20)}, set(), 0),
        ({20: article(20, title="&undeclared;")}, {20}, 1),
        ({20: article(20, title="x" * 20_000 + "<i>")}, {20}, 1),
    ],
    ids=[
        "unclosed-b", "stray-end-tag", "no-end-tag", "broken-start-tag", "junk-between",
        "early-root-end", "comment-between", "undeclared-entity", "long-then-broken",
    ],
)  # fmt: skip
def test_malformed_record_mid_file_keeps_the_rest(
    sqlite_settings: Settings,
    tmp_path: Path,
    replace: dict[int, bytes],
    missing: set[int],
    quarantined: int,
) -> None:
    path = _write(tmp_path, "broken.xml", document(corpus(N, replace)))
    rows = _expect(sqlite_settings, path, missing=missing, quarantined=quarantined)
    for row in rows:
        assert row["reason"] and row["raw_xml"] and row["line"]


def test_unterminated_records_of_every_kind(sqlite_settings: Settings, tmp_path: Path) -> None:
    book = (
        b'<PubmedBookArticle><BookDocument><PMID Version="1">600</PMID>'
        b"<Book><BookTitle>B</BookTitle></Book>"
    )  # no end tag: the next record must still be read
    items = [
        *corpus(10),
        book,
        *corpus(20)[10:],
        deletion("5").replace(b"</DeleteCitation>", b""),
        *corpus(N)[20:],
    ]
    path = _write(tmp_path, "unterminated.xml", document(items))
    rows = _expect(sqlite_settings, path, missing=set(), quarantined=2)
    assert [r["pmid"] for r in rows] == [600, 5]
    assert rows[1]["raw_xml"].startswith("<DeleteCitation>")
    assert _stored(sqlite_settings) == set(range(1, N + 1))  # nothing was deleted


def test_mismatched_tags_in_many_records(sqlite_settings: Settings, tmp_path: Path) -> None:
    bad = {i: article(i, title="<sup>x") for i in range(7, N, 50)}
    path = _write(tmp_path, "many.xml", document(corpus(N, bad)))
    rows = _expect(sqlite_settings, path, missing=set(bad), quarantined=len(bad))
    assert sorted(r["pmid"] for r in rows) == sorted(bad)


def test_internal_subset_with_a_broken_record(sqlite_settings: Settings, tmp_path: Path) -> None:
    prolog = (
        b'<?xml version="1.0"?>\n<!DOCTYPE PubmedArticleSet [\n  <!ENTITY nlm "NLM">\n'
        b"  <!ELEMENT PubmedArticleSet ANY>\n]>\n"
    )
    items = corpus(N, {20: article(20, title="<b>x"), 30: article(30, title="&nlm;")})
    path = _write(tmp_path, "subset.xml", document(items, prolog=prolog))
    rows = _expect(sqlite_settings, path, missing={20, 30}, quarantined=2)
    assert "nlm" in rows[1]["reason"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_truncated_file_keeps_every_whole_record(
    sqlite_settings: Settings, tmp_path: Path, gz: bool
) -> None:
    data = document(corpus(N))
    cut = data.index(b'<PMID Version="1">520<') + 40
    if gz:
        packed = gzip.compress(data)
        packed = packed[: len(packed) * 9 // 10]  # a download cut short
        readable = zlib.decompressobj(31).decompress(packed)
        whole = readable.count(b"</PubmedArticle>")
        assert 400 < whole < N
        path = _write(tmp_path, "cut.xml.gz", packed)
        counts = _ingest(sqlite_settings, path)
        assert counts == IngestCounts(inserted=whole, quarantined=1)
        assert _stored(sqlite_settings) == set(range(1, whole + 1))
        (row,) = _quarantine(sqlite_settings)
        assert "truncated" in row["reason"]
    else:
        path = _write(tmp_path, "cut.xml", data[:cut])
        (row,) = _expect(sqlite_settings, path, missing={520}, quarantined=1)
        assert row["pmid"] == 520 and row["reason"].startswith("XML syntax error")
    _succeeded(sqlite_settings)


# --------------------------------------------------------------------------- identifiers


def test_odd_identifiers_are_quarantined_and_the_rest_kept(
    settings: Settings, tmp_path: Path
) -> None:
    odd = {
        20: article("²"),
        21: article("١٢٣"),
        22: article(str(2**63)),
        23: article("0"),
        24: article(24, version=str(10**23)),
        25: article(str(2**31)),
        26: article(26, version="0"),
        27: article(27, version="²"),
        28: article("9" * 5000),
        29: article("-29"),
    }
    refs = ["²", str(2**64), "0", "7", "١٢٣", "-3", "9" * 5000]
    odd[30] = article(30, refs=refs, cites=["١٢٣", str(10**30), "8", "0"])
    items = [*corpus(N, odd), deletion("0", "²", str(2**63), "5", "١٢٣")]
    path = _write(tmp_path, "odd.xml", document(items))
    counts = _ingest(settings, path)
    assert counts == IngestCounts(inserted=N - 10, deleted=1, quarantined=10 + 4), counts
    _succeeded(settings)
    assert _stored(settings) == set(range(1, N + 1)) - set(range(20, 30))
    store = Store(db.connect(settings))
    assert store.get_article(5)["is_deleted"] is True
    assert store.get_article(30)["references"] == [7, 8]
    with db.connect(settings).connect() as conn:
        cited = set(
            conn.execute(
                select(references_table.c.cited_pmid).where(references_table.c.citing_pmid == 30)
            ).scalars()
        )
    assert cited == {7, 8}
    rows = _quarantine(settings)
    reasons = [r["reason"] for r in rows]
    assert all(r["pmid"] is None or 1 <= r["pmid"] < 2**31 for r in rows)
    for needle in ("'²'", "'١٢٣'", str(2**63), "PMID '0'", str(2**31), "Version"):
        assert any(needle in r for r in reasons), (needle, reasons)
    assert sum("DeleteCitation" in r for r in reasons) == 4
    version_rows = [r for r in rows if "Version" in r["reason"]]
    assert sorted(r["pmid"] for r in version_rows) == [24, 26, 27]


# --------------------------------------------------------------------------- entities


def _all_text(settings: Settings) -> str:
    with db.connect(settings).connect() as conn:
        a = [tuple(r) for r in conn.execute(select(articles)).all()]
        q = [tuple(r) for r in conn.execute(select(quarantine)).all()]
    return repr(a) + repr(q)


def test_xxe_is_never_resolved(sqlite_settings: Settings, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-7c1e", encoding="utf-8")
    items = corpus(N, {20: article(20, title="&xxe; &xxp; &pwd; &net;"), 21: article(21)})
    path = _write(tmp_path, "xxe.xml", document(items, prolog=xxe_doctype(secret)))
    (row,) = _expect(sqlite_settings, path, missing={20}, quarantined=1)
    assert "&xxe;" in row["raw_xml"]
    text = _all_text(sqlite_settings)
    assert "TOPSECRET" not in text and "root:x:0:0" not in text


def test_xxe_behind_a_long_prolog_is_never_resolved(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """A prolog too long to skip goes through the pull parser: still nothing is read."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-9f2a", encoding="utf-8")
    padding = b"<!-- " + b"pad " * (1 << 19) + b" -->\n"
    prolog = xxe_doctype(secret).replace(b"]>\n", b"]>\n" + padding)
    items = corpus(N, {20: article(20, title="&xxe; &xxp; &pwd;")})
    path = _write(tmp_path, "xxe-long.xml", document(items, prolog=prolog))
    _expect(sqlite_settings, path, missing={20}, quarantined=1)
    text = _all_text(sqlite_settings)
    assert "TOPSECRET" not in text and "root:x:0:0" not in text


def test_billion_laughs_is_quarantined_fast(sqlite_settings: Settings, tmp_path: Path) -> None:
    items = corpus(N, {20: article(20, title="&lol9;"), 40: article(40, abstract="&lol3;")})
    path = _write(tmp_path, "laughs.xml", document(items, prolog=laughs_doctype()))
    start = time.perf_counter()
    _expect(sqlite_settings, path, missing={20, 40}, quarantined=2)
    assert time.perf_counter() - start < 10


def test_deep_nesting_is_quarantined(sqlite_settings: Settings, tmp_path: Path) -> None:
    items = corpus(N, {20: article(20, abstract=deep(100_000)), 21: article(21, title=deep(50))})
    path = _write(tmp_path, "deep.xml", document(items))
    (row,) = _expect(sqlite_settings, path, missing={20}, quarantined=1)
    assert "depth" in row["reason"].lower()


# --------------------------------------------------------------------------- size caps


def test_limits_follow_the_settings() -> None:
    s = Settings.from_env(
        {"LITPULSE_MAX_RECORD_BYTES": "1048576", "LITPULSE_MAX_TEXT_CHARS": "5000"}
    )
    assert ParseLimits.from_settings(s) == ParseLimits(1 << 20, 5000)
    defaults = {f.name: f for f in dataclasses.fields(Settings)}
    for name in ("max_record_bytes", "max_text_chars"):
        f = defaults[name]
        assert getattr(ParseLimits(), name) == f.default
        assert f.metadata["min"] <= f.default <= f.metadata["max"]
    with pytest.raises(ValueError, match="max_record_bytes"):
        ParseLimits(max_record_bytes=0)


def test_oversize_records_are_quarantined_with_a_bounded_prefix(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.replace(max_record_bytes=1 << 20)
    big = "lorem ipsum " * (3 << 18)  # 3 MiB
    unterminated = article(40, abstract=big).replace(b"</PubmedArticle>", b"")
    items = corpus(N, {20: article(20, abstract=big), 40: unterminated, 41: article(41)})
    path = _write(tmp_path, "big.xml", document(items))
    rows = _expect(settings, path, missing={20, 40}, quarantined=2)
    assert [r["pmid"] for r in rows] == [20, 40]
    data = path.read_bytes()
    for row, pmid in zip(rows, (20, 40), strict=True):
        assert "LITPULSE_MAX_RECORD_BYTES" in row["reason"]
        assert len(row["raw_xml"]) <= (1 << 16) + 1000
        assert row["raw_xml"].count("<PubmedArticle>") == 1
        marker = f'<PMID Version="1">{pmid}<'.encode()
        assert row["line"] == data[: data.index(marker)].count(b"\n") + 1


def test_overlong_text_field_is_quarantined(sqlite_settings: Settings, tmp_path: Path) -> None:
    settings = sqlite_settings.replace(max_text_chars=10_000)
    items = corpus(
        N,
        {
            20: article(20, abstract="word " * 4_000),  # 20,000 characters
            21: article(21, title="t" * 9_000),  # under the cap: kept
            22: article(22, title="<i>ab</i>" * 6_000),  # 12,000 characters of markup
        },
    )
    path = _write(tmp_path, "long.xml", document(items))
    rows = _expect(settings, path, missing={20, 22}, quarantined=2)
    assert [r["pmid"] for r in rows] == [20, 22]
    assert "LITPULSE_MAX_TEXT_CHARS" in rows[0]["reason"] and "abstract" in rows[0]["reason"]
    assert "title" in rows[1]["reason"]
    assert Store(db.connect(settings)).get_article(21)["title"] == "t" * 9_000


# --------------------------------------------------------------------------- CLI, memory

_PEAK = (
    "import resource, sys\n"
    "import ingest.files, ingest.parse, ingest.store, litpulse.app.cli, litpulse.core.db\n"
    "from litpulse.app.cli import main\n"
    "def hwm():\n"
    "    for row in open('/proc/self/status'):\n"
    "        if row.startswith('VmHWM:'):\n"
    "            return int(row.split()[1])\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "try:  # reset the peak so that it measures the ingest, not the imports\n"
    "    open('/proc/self/clear_refs', 'w').write('5')\n"
    "except OSError:\n"
    "    pass\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write(f'\\nPEAK_RSS_KIB={hwm()}\\n')\n"
    "sys.exit(rc)\n"
)


def _cli(
    home: Path, *files: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[dict[str, Any], str, int]:
    """Run ``litpulse ingest --files ... --json`` in a child; (counts, stderr, peak KiB)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    child_env.update({"LITPULSE_HOME": str(home), "PYTHONPATH": str(ROOT)})
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, "ingest", "--files", *map(str, files), "--json"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    peak = int(proc.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
    return json.loads(proc.stdout), proc.stderr, peak


def test_cli_survives_every_hostile_file_without_a_traceback(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-41d0", encoding="utf-8")
    hostile = {
        "a-ff.xml": ({20: article(20).replace(b"Title 20.", b"Title \xff 20.")}, None),
        "b-ids.xml": (
            {
                30: article("²"),
                31: article(str(2**63)),
                32: article(32, version=str(10**23)),
                33: article("0"),
            },
            None,
        ),
        "c-xxe.xml": ({40: article(40, title="&xxe;")}, xxe_doctype(secret)),
        "d-lol.xml": ({50: article(50, title="&lol9;")}, laughs_doctype()),
        "e-deep.xml": ({60: article(60, title=deep(10**5))}, None),
    }
    files = [
        _write(tmp_path, name, document(corpus(N, bad), prolog=prolog or PROLOG))
        for name, (bad, prolog) in hostile.items()
    ]
    counts, err, _peak = _cli(tmp_path / "home", *files)
    # every file holds PMIDs 1..520, each good in some file: all inserted once
    assert counts["quarantined"] == 8, err
    assert counts["inserted"] == N
    assert counts["inserted"] + counts["unchanged"] + counts["quarantined"] == 5 * N
    assert "TOPSECRET" not in err


def test_gzip_bomb_and_huge_record_keep_memory_flat(tmp_path: Path) -> None:
    """256 MiB of blanks, 32 MiB of junk and a 64 MiB abstract inside a ~1 MB gzip file."""
    huge = b"lorem ipsum dolor sit amet " * ((64 << 20) // 27)

    def blocks() -> Any:
        yield from corpus(200)
        yield from blanks(256 << 20)
        yield from (b"junk without markup " * 52_428 for _ in range(32))  # 32 MiB
        yield b"\n"
        for pmid in range(201, 401):
            if pmid == 300:
                head, tail = article(300, abstract="@@").split(b"@@")
                yield head
                yield from (huge[i : i + (1 << 20)] for i in range(0, len(huge), 1 << 20))
                yield tail
            else:
                yield article(pmid)

    bomb = write_gzip(tmp_path / "bomb.xml.gz", stream(blocks()), level=6)
    assert bomb.stat().st_size < 4 << 20
    clean = _write(tmp_path, "clean.xml", document(corpus(400)))
    _counts, _err, base = _cli(tmp_path / "base", clean)
    start = time.perf_counter()
    counts, _err, peak = _cli(tmp_path / "home", bomb)  # default caps (16 MiB records)
    elapsed = time.perf_counter() - start
    assert (counts["inserted"], counts["quarantined"]) == (399, 2), counts
    growth_mib = (peak - base) / 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB over a clean run"
    assert elapsed < 60
