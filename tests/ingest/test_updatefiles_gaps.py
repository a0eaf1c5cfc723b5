"""Hostile review of the gap rule and the broken-mirror guards (update files, bootstrap).

Each test is a defect found in review, marked ``xfail(strict=True)``: it fails on the
current code because of the defect and passes once it is fixed (``--runxfail`` shows the
failure). Mirror scenarios run against the loopback emulator (``tests/emulator.py``,
127.0.0.1 only) or a ``file://`` mirror in the test's temporary folder.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.bootstrap import load_files
from ingest.updatefiles import apply_updates
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import IncompleteSourceError
from litpulse.core.schema import articles, source_files
from litpulse.core.settings import Settings
from tests.emulator import Emulator

EDAT = dt.date(2024, 6, 1)


def _configure(emu: Emulator, settings: Settings) -> Settings:
    return emu.configure(settings, ncbi_api_key="k")


def _file(pmids: range | list[int], deletions: tuple[int, ...] = (), **kw: Any) -> bytes:
    return gz(pubmed_set([article_xml(p, edat=EDAT, **kw) for p in pmids], deletions))


def _applied(settings: Settings) -> list[str]:
    with db.connect(settings).connect() as conn:
        return sorted(conn.execute(select(source_files.c.name)).scalars())


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        q = select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
        return set(conn.execute(q).scalars())


# ------------------------------------------------------------ the gap rule (updatefiles)


def test_first_update_file_of_the_new_year_missing_holds_the_later_ones(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)
    # a store bootstrapped on the 2025 baseline, with its update files
    emu.add_file("baseline", "pubmed25n0001.xml.gz", _file(range(1, 4)))
    emu.add_file("baseline", "pubmed25n0002.xml.gz", _file(range(4, 7)))
    emu.add_file("updatefiles", "pubmed25n0003.xml.gz", _file([7]))
    load_files(s, workers=0, prefetch=0)
    assert _applied(s) == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz",
                           "pubmed25n0003.xml.gz"]  # fmt: skip
    # December: NLM publishes the 2026 baseline (n0001..n0003); its update files go on
    # from n0004. The mirror has copied n0005 but not n0004 yet.
    with emu._lock:
        emu.files["baseline"] = {}
    for n in (1, 2, 3):
        emu.add_file("baseline", f"pubmed26n{n:04d}.xml.gz", _file(range(100 * n, 100 * n + 2)))
    emu.add_file("updatefiles", "pubmed26n0005.xml.gz", _file([500], deletions=(7,)))
    with pytest.raises(IncompleteSourceError, match=r"pubmed26n0004\.xml\.gz"):
        apply_updates(s, workers=0)
    assert "pubmed26n0005.xml.gz" not in _applied(s), "applied across the missing n0004"


def test_max_files_reaching_the_gap_still_fails_the_run(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", _file([10]))
    emu.add_file("updatefiles", "pubmed25n1277.xml.gz", _file([11]))  # 1276 missing
    with pytest.raises(IncompleteSourceError, match=r"pubmed25n1276"):
        apply_updates(s, workers=0, max_files=1)  # exactly the file before the gap


def test_bootstrap_report_does_not_count_held_files_as_applied(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)
    emu.add_file("baseline", "pubmed25n0001.xml.gz", _file(range(1, 4)))
    emu.add_file("baseline", "pubmed25n0002.xml.gz", _file(range(4, 7)))
    emu.add_file("updatefiles", "pubmed25n0004.xml.gz", _file([8]))  # n0003 not there yet
    report = load_files(s, workers=0, prefetch=0, max_files=1)
    assert report.applied == ("pubmed25n0001.xml.gz",)
    assert report.already == 0, f"nothing was applied before, the report says {report.already}"
    assert not report.nothing_to_do


def test_a_held_bootstrap_still_recounts_the_citations_it_deferred(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)
    emu.add_file("baseline", "pubmed25n0001.xml.gz", _file([1]))
    emu.add_file("baseline", "pubmed25n0002.xml.gz", _file([2], refs=[1]))  # 2 cites 1
    emu.add_file("updatefiles", "pubmed25n0004.xml.gz", _file([8]))  # n0003 missing
    for _ in range(2):  # the run fails; so does the rerun the next night
        with pytest.raises(IncompleteSourceError):
            load_files(s, workers=0, prefetch=0)
    assert _applied(s) == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz"]
    with db.connect(s).connect() as conn:
        cited = conn.execute(
            select(articles.c.cited_by_in_corpus).where(articles.c.pmid == 1)
        ).scalar()
    assert cited == 1, f"article 1 is cited by stored article 2, its count is {cited}"


def _mirror(root: Path, kind: str, name: str, data: bytes) -> None:
    import hashlib

    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    (folder / f"{name}.md5").write_text(f"MD5({name})= {digest}\n", encoding="ascii")


def test_a_local_mirror_without_baseline_folder_still_applies_update_files(
    tmp_path: Path, sqlite_settings: Settings
) -> None:
    root = tmp_path / "mirror"
    s = sqlite_settings.replace(pubmed_files_url=root.as_uri() + "/")
    _mirror(root, "baseline", "pubmed25n0001.xml.gz", _file(range(1, 4)))
    _mirror(root, "updatefiles", "pubmed25n0002.xml.gz", _file([5]))
    load_files(s, workers=0, prefetch=0)
    assert _live(s) == {1, 2, 3, 5}
    # the bootstrap is done: the operator frees the ~40 GB of baseline files
    for p in (root / "baseline").iterdir():
        p.unlink()
    (root / "baseline").rmdir()
    _mirror(root, "updatefiles", "pubmed25n0003.xml.gz", _file([6]))
    apply_updates(s, workers=0, accept_gaps=True)
    assert 6 in _live(s)
