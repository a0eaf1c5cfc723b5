"""Hostile-review findings: the baseline bootstrap and the update files under a broken mirror.

Each test is a defect found in review, marked ``xfail(strict=True)``: it fails on the
current code because of the defect and passes once it is fixed. Every scenario runs
against the loopback emulator (``tests/emulator.py``, 127.0.0.1 only) and asserts what the
store ends up holding, compared with an uninterrupted run against a healthy mirror.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.bootstrap import load_files
from ingest.updatefiles import apply_updates
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import IncompleteSourceError, LitpulseError
from litpulse.core.schema import articles, source_files
from litpulse.core.settings import Settings
from tests.emulator import Emulator
from tests.ingest.test_crash_resume import differences, quick, reset, snapshot

EDAT = dt.date(2024, 6, 1)


def _configure(emu: Emulator, settings: Settings) -> Settings:
    # an API key: 10 requests/s to the loopback host instead of 3
    return emu.configure(quick(settings, store_batch=7), ncbi_api_key="k")


def _file(pmids: range | list[int], deletions: tuple[int, ...] = (), **kw: Any) -> bytes:
    return gz(pubmed_set([article_xml(p, edat=EDAT, **kw) for p in pmids], deletions))


def _revised(pmid: int, title: str) -> bytes:
    return article_xml(pmid, edat=EDAT, mdat=dt.date(2024, 7, 1), version=2, title=title)


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        q = select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
        return set(conn.execute(q).scalars())


def _applied(settings: Settings) -> list[str]:
    with db.connect(settings).connect() as conn:
        return sorted(conn.execute(select(source_files.c.name)).scalars())


def _clean_state(
    emu: Emulator, s: Settings, publish: Callable[[Emulator], None], run: Callable[[Settings], Any]
) -> dict[str, Any]:
    """The snapshot of an uninterrupted run against a healthy mirror (same database,
    emptied first; the emulator's files replaced by ``publish``)."""
    engine = db.connect(s)
    reset(engine)
    shutil.rmtree(s.home / "downloads", ignore_errors=True)
    emu.faults.clear()
    with emu._lock:
        emu.files = {"updatefiles": {}, "baseline": {}}
    publish(emu)
    run(s)
    return snapshot(engine)


# ------------------------------------------------- 1. a truncated file whose md5 matches


def test_a_truncated_update_file_is_not_recorded_as_applied(
    emu: Emulator, settings: Settings
) -> None:
    s = _configure(emu, settings)
    whole = _file(range(1, 301))
    cut = whole[: len(whole) * 6 // 10]  # the mirror copied it half-way, then its .md5
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", cut)  # md5 of the cut bytes
    with pytest.raises(IncompleteSourceError, match="matches its published MD5 but is not whole"):
        apply_updates(s, workers=0)
    assert _applied(s) == [], "a damaged file was recorded as applied"
    # the mirror is repaired: the whole file and its (new) md5
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", whole)
    with contextlib.suppress(LitpulseError):
        apply_updates(s, workers=0)
    assert _live(s) == set(range(1, 301))


def test_a_file_cut_at_a_record_boundary_under_a_whole_gzip_is_not_applied(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """The mirror cut the XML (a whole gzip of a partial document): no end tag."""
    import gzip

    s = _configure(emu, sqlite_settings)
    text = gzip.decompress(_file(range(1, 11)))
    cut = text[: text.index(b"<PubmedArticle>", len(text) // 2)]  # records 1.. up to half
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", gzip.compress(cut))
    emu.add_file("updatefiles", "pubmed25n1276.xml.gz", _file([20]))
    with pytest.raises(IncompleteSourceError, match="does not end with the </PubmedArticleSet>"):
        apply_updates(s, workers=0)
    assert _applied(s) == [] and not _live(s), "a cut file or a later one was applied"


# -------------------------------------------------- 2. a gap in the update-file numbers


U1 = _file([10, 11, 12])
U2 = gz(pubmed_set([_revised(10, "Revised in 1276"), article_xml(13, edat=EDAT)]))
U3 = gz(pubmed_set([article_xml(14, edat=EDAT)], [10, 13]))


def _publish_updates(emu: Emulator) -> None:
    for name, data in (("pubmed25n1275.xml.gz", U1), ("pubmed25n1276.xml.gz", U2),
                       ("pubmed25n1277.xml.gz", U3)):  # fmt: skip
        emu.add_file("updatefiles", name, data)


def test_a_gap_in_the_update_file_numbers_is_not_applied_across(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)  # the file plan's rule: one database is enough
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", U1)
    emu.add_file("updatefiles", "pubmed25n1277.xml.gz", U3)  # 1276 not on the mirror yet
    with pytest.raises(IncompleteSourceError, match=r"pubmed25n1276\.xml\.gz is not on the"):
        apply_updates(s, workers=0)  # the run fails, loudly ...
    assert _applied(s) == ["pubmed25n1275.xml.gz"]  # ... with what came before the gap
    emu.add_file("updatefiles", "pubmed25n1276.xml.gz", U2)  # the next day it is
    apply_updates(s, workers=0)
    got = snapshot(db.connect(s))
    want = _clean_state(emu, s, _publish_updates, lambda s: apply_updates(s, workers=0))
    assert not differences(got, want)


def test_an_operator_applies_past_a_file_nlm_withdrew(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)
    emu.add_file("updatefiles", "pubmed25n1275.xml.gz", U1)
    emu.add_file("updatefiles", "pubmed25n1277.xml.gz", U3)
    with pytest.raises(IncompleteSourceError):
        apply_updates(s, workers=0)
    apply_updates(s, workers=0, accept_gaps=True)
    assert _applied(s) == ["pubmed25n1275.xml.gz", "pubmed25n1277.xml.gz"]
    # the hole is behind the store now: the next day's file is applied without the flag
    emu.add_file("updatefiles", "pubmed25n1278.xml.gz", _file([30]))
    apply_updates(s, workers=0)
    assert 30 in _live(s)


# ------------------------------------- 3./4. an empty or gapped baseline listing trusted


B = {
    "pubmed25n0001.xml.gz": _file(range(1, 6)),
    "pubmed25n0002.xml.gz": _file(range(6, 11)),
    "pubmed25n0003.xml.gz": _file(range(11, 16)),
}
# the first update file deletes a record of each baseline file and revises another
UPD = gz(pubmed_set([_revised(2, "r2"), _revised(7, "r7"), _revised(12, "r12")], [3, 8, 13]))


def _publish_bootstrap(emu: Emulator) -> None:
    for name, data in B.items():
        emu.add_file("baseline", name, data)
    emu.add_file("updatefiles", "pubmed25n0004.xml.gz", UPD)


def _bootstrap(s: Settings) -> None:
    load_files(s, workers=0, prefetch=0)


def test_update_files_wait_for_the_baseline_even_when_its_listing_is_an_error_page(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)  # the file plan's rule: one database is enough
    _publish_bootstrap(emu)
    load_files(s, workers=0, prefetch=0, max_files=1)  # a bootstrap cut short
    emu.faults.add("garbage", path="=/pubmed/baseline/", times=1)
    with contextlib.suppress(LitpulseError):
        apply_updates(s, workers=0)  # the nightly on update files
    with contextlib.suppress(LitpulseError):
        _bootstrap(s)  # the operator finishes the bootstrap
    got = snapshot(db.connect(s))
    assert not differences(got, _clean_state(emu, s, _publish_bootstrap, _bootstrap))


@pytest.mark.parametrize("broken", ["error page", "a missing file"])
def test_a_bootstrap_does_not_apply_update_files_past_a_broken_baseline_listing(
    emu: Emulator, sqlite_settings: Settings, broken: str
) -> None:
    s = _configure(emu, sqlite_settings)
    _publish_bootstrap(emu)
    if broken == "error page":
        emu.faults.add("garbage", path="=/pubmed/baseline/", times=1)
    else:
        original = emu.listing
        page = original("baseline").replace(b"pubmed25n0002", b"pubmed25n000x")
        emu.listing = (  # type: ignore[method-assign]
            lambda kind: page if kind == "baseline" else original(kind)
        )
    with contextlib.suppress(LitpulseError):
        _bootstrap(s)
    if broken != "error page":
        del emu.listing  # the instance attribute: the class's method again
    with contextlib.suppress(LitpulseError):
        _bootstrap(s)  # the mirror is whole again; the operator runs it once more
    got = snapshot(db.connect(s))
    assert not differences(got, _clean_state(emu, s, _publish_bootstrap, _bootstrap))


# ------------------------------------------- 5. last year's baseline left on the mirror


def test_a_bootstrap_loads_one_annual_baseline_not_every_year_the_mirror_kept(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _configure(emu, sqlite_settings)  # the file plan's rule: one database is enough
    emu.add_file("baseline", "pubmed24n0001.xml.gz", _file(range(1, 9)))  # stale
    emu.add_file("baseline", "pubmed25n0001.xml.gz", _file(range(1, 7)))  # 7, 8 deleted since
    emu.add_file("updatefiles", "pubmed25n0002.xml.gz", _file([20]))
    with contextlib.suppress(LitpulseError):
        _bootstrap(s)
    assert not {7, 8} & _live(s)


def test_review_helpers_reach_the_clean_state(emu: Emulator, sqlite_settings: Settings) -> None:
    """Control: the helpers above give the ordered run's state on a healthy mirror."""
    s = _configure(emu, sqlite_settings)
    _publish_bootstrap(emu)
    _bootstrap(s)
    first = snapshot(db.connect(s))
    assert _live(s) == set(range(1, 16)) - {3, 8, 13}
    assert _applied(s) == sorted([*B, "pubmed25n0004.xml.gz"])
    assert not differences(first, _clean_state(emu, s, _publish_bootstrap, _bootstrap))
    assert (
        hashlib.md5(UPD, usedforsecurity=False).hexdigest()
        == emu.files["updatefiles"]["pubmed25n0004.xml.gz"].md5
    )


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_local_mirrors_dangling_link_is_a_clear_error_naming_the_file(
    tmp_path: Path, settings: Settings
) -> None:
    """A ``file://`` mirror listing ``pubmed26n0002.xml.gz`` as a symbolic link whose
    target is gone (a share re-mounted elsewhere, a pruned store the links point into):
    the copy failed with a raw ``FileNotFoundError`` (the CLI showed its text, the DAG a
    traceback); it is refused as a file the mirror cannot serve, naming it, after the
    files before it are applied."""
    from tests.review.test_session34d_review import _file, _mirror, _stored

    root = tmp_path / "mirror"
    s = settings.replace(pubmed_files_url=root.as_uri() + "/")
    day = dt.date(2026, 1, 5)
    _mirror(root, "updatefiles", "pubmed26n0001.xml.gz", _file([1], day))
    _mirror(root, "updatefiles", "pubmed26n0002.xml.gz", _file([2], day))
    link = root / "updatefiles" / "pubmed26n0002.xml.gz"
    link.unlink()
    link.symlink_to(tmp_path / "gone" / "pubmed26n0002.xml.gz")
    with pytest.raises(LitpulseError, match="pubmed26n0002.xml.gz"):
        apply_updates(s, workers=0)
    assert _stored(s) == {1}
