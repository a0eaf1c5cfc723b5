"""The owed PMIDs of E-utilities windows (:mod:`ingest.missing`), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, update

from ingest import missing
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import missing_pmids
from litpulse.core.settings import Settings
from tests.ingest.test_store import make_record


def _state(engine: Engine) -> dict[int, tuple[int, bool]]:
    return {r["pmid"]: (r["tries"], r["given_up"]) for r in missing.listing(engine)}


def test_a_try_is_counted_once_per_key_and_given_up_after_the_retries(settings: Settings) -> None:
    engine = db.connect(settings)
    kw = {"where": "2024-01-01..2024-01-02 (run 1)", "retries": 2}
    assert missing.note_window(engine, listed=[1, 2, 3], missing=[2, 3], key="w1#gen1", **kw) == []
    assert _state(engine) == {2: (1, False), 3: (1, False)}
    # the same window's run resumed (same key): no try counted twice
    assert missing.note_window(engine, listed=[1, 2, 3], missing=[2, 3], key="w1#gen1", **kw) == []
    assert _state(engine) == {2: (1, False), 3: (1, False)}
    assert missing.owed(engine, "w1#gen1") == []  # asked by that key already
    assert missing.owed(engine, "w2#gen1") == [2, 3]
    # a later run asks: 2 comes, 3 does not
    assert missing.settle(engine, asked=[2, 3], missing=[3], key="w2#gen1", retries=2) == []
    assert _state(engine) == {3: (2, False)}
    assert missing.settle(engine, asked=[3], missing=[3], key="w2#gen1", retries=2) == []  # again
    with engine.begin() as conn:  # its first miss is as old as the retries ask (2 days)
        conn.execute(update(missing_pmids).values(
            first_missing_at=db.utcnow() - dt.timedelta(days=2, minutes=1)))  # fmt: skip
    assert missing.settle(engine, asked=[3], missing=[3], key="w3#gen1", retries=2) == [3]
    assert _state(engine) == {3: (3, True)}
    assert missing.owed(engine, "w4#gen1") == []  # given up: asked no more
    with engine.connect() as conn:
        assert missing.counts(conn) == {"waiting": 0, "given_up": 1}
    # a window listing it again and getting it settles it, given up or not
    assert missing.note_window(engine, listed=[3], missing=[], key="w5#gen1", **kw) == []
    assert _state(engine) == {}


def test_no_retries_gives_up_at_once(settings: Settings) -> None:
    engine = db.connect(settings)
    got = missing.note_window(engine, listed=[5], missing=[5], where="w", key="k", retries=0)
    assert got == [5] and _state(engine) == {5: (1, True)}


def test_a_pmid_stored_after_its_last_ask_is_settled(settings: Settings) -> None:
    engine = db.connect(settings)
    missing.note_window(engine, listed=[7, 8], missing=[7, 8], where="w", key="k", retries=3)
    with engine.begin() as conn:  # asked before the update file below brought PMID 7
        conn.execute(update(missing_pmids).values(
            last_asked_at=db.utcnow() - dt.timedelta(minutes=5)))  # fmt: skip
    Store(engine).apply([make_record(7)])
    assert missing.drop_stored(engine) == 1
    assert _state(engine) == {8: (1, False)}


def test_review_a_window_listing_a_huge_owed_list_settles_it(settings: Settings) -> None:
    """A backfill window that lists (and gets) more than 65,535 owed PMIDs at once: the
    settle is one ``DELETE … IN`` with a bound parameter each (psycopg's limit is 65,535;
    SQLite's is 32,766 or 250,000 by build), so the run fails after its batches, and
    again on each resume. Skipped on SQLite, whose build here binds 250,000."""
    if not settings.effective_database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's bound-parameter limit (SQLite's is larger in this build)")
    engine = db.connect(settings)
    pmids = list(range(1, 65_537))
    where = "2024-01-01..2024-03-31 (run 1)"
    missing.note_window(engine, listed=pmids, missing=pmids, where=where, key="w1#gen1", retries=3)
    # the next window lists them all again and EFetch returns every one
    missing.note_window(engine, listed=pmids, missing=[], where=where, key="w2#gen1", retries=3)
    with engine.connect() as conn:
        assert missing.counts(conn) == {"waiting": 0, "given_up": 0}
