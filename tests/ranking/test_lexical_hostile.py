"""Hostile review of the lexical (tantivy BM25) index and of the nightly data-quality checks.

Each test failed before its fix (a strict xfail first): tantivy's ``doc_freq`` counts the
superseded copies an incremental refresh deletes, until a merge drops them (the idf now
counts live documents: ``LexicalIndex._idf``); the empty-weekday check took the store's
articles of the window's first day, stored by the window before, for a rerun.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, update

from ingest.parse import parse_bytes
from ingest.quality import check_ingest
from ingest.records import SourceRef
from ingest.store import IngestCounts, Store
from litpulse.core import db
from litpulse.core.errors import DataQualityError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from ranking import lexical, refresh
from ranking.publish import IndexReport
from tests.emulator import article_xml, pubmed_set
from tests.ranking.test_lexical import found, load, put

UTC = dt.UTC


def _revise_mesh(engine: Engine, pmids: list[int], mesh: list[str]) -> None:
    """A MeSH revision of the given articles, as an update file brings it (text unchanged)."""
    with engine.begin() as conn:
        conn.execute(
            update(articles)
            .where(articles.c.pmid.in_(pmids))
            .values(
                mesh=[{"descriptor": m, "major": False} for m in mesh],
                updated_at=db.utcnow(),
            )
        )


def _sepsis_nights(settings: Settings, nights: int = 3) -> Iterator[IndexReport]:
    """Two sepsis papers among unrelated ones, indexed; then each night their MeSH headings
    are revised while an unrelated paper arrives (an ordinary update-file night) and the
    index is refreshed: each night's refresh report."""
    engine = db.connect(settings)
    load(engine, [2, 5])
    put(engine, 7, "Sepsis in children", "Sepsis outcomes.", ["Sepsis"], [])
    put(engine, 8, "Neonatal sepsis", "Early sepsis.", ["Sepsis"], [])
    refresh.refresh_index(settings)
    assert found(settings, "sepsis") == [7, 8]
    for night in range(nights):
        _revise_mesh(engine, [7, 8], ["Sepsis", f"Heading {night}"])
        put(engine, 20 + night, f"Knee surgery {night}", "Outcomes of knee surgery.", [], [])
        yield refresh.refresh_index(settings)


# ------------------------------------------------------------ BM25 after revisions


def test_revised_articles_stay_findable_after_nightly_refreshes(
    sqlite_settings: Settings,
) -> None:
    for night, report in enumerate(_sepsis_nights(sqlite_settings)):
        assert report.published and not report.lexical_rebuilt
        # the two live sepsis papers are found every night, with a positive BM25
        assert sorted(found(sqlite_settings, "sepsis")) == [7, 8], f"night {night}"
        lex = lexical.open_lexical(sqlite_settings)
        assert lex is not None
        assert all(m.score > 0 for m in lex.explain("sepsis", [7, 8]).values())


def test_explained_bm25_after_an_update_equals_the_documented_formula(
    sqlite_settings: Settings,
) -> None:
    engine = db.connect(sqlite_settings)
    load(engine, [1, 2, 3])
    refresh.refresh_index(sqlite_settings)
    _revise_mesh(engine, [1], ["Sepsis", "Shock, Septic"])
    report = refresh.refresh_index(sqlite_settings)
    assert report.published and not report.lexical_rebuilt and report.lexical_added == 1
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None and lex.size == 3
    got = lex.explain("sepsis", [1])[1]
    # "sepsi" is in the title of 1 of the 3 live articles: idf = ln(1 + (3-1+.5)/(1+.5))
    idf = np.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    k1, b = lex.bm25.k1, lex.bm25.b
    stats = lexical._Stats.read(lexical.Path(lex.path))
    # title "IL-6 signalling in sepsis" -> il, 6, il6, signal, sepsi: 5 terms
    norm = k1 * (1 - b + b * 5 / stats.avg("title"))
    want_title = 2.0 * idf * (k1 + 1) * 1 / (1 + norm)
    assert got.terms[0].fields["title"] == pytest.approx(want_title, rel=1e-6)
    # and the same store, the index rebuilt, explains the same number
    refresh.refresh_index(sqlite_settings, rebuild=True)
    rebuilt = lexical.open_lexical(sqlite_settings)
    assert rebuilt is not None
    assert rebuilt.explain("sepsis", [1])[1].score == pytest.approx(got.score, rel=1e-6)


def test_bm25_of_given_candidates_covers_every_live_match_after_revisions(
    sqlite_settings: Settings,
) -> None:
    for _report in _sepsis_nights(sqlite_settings):
        pass
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None
    # every live document holding the query term is a candidate with a BM25 score
    assert set(lex.scores("sepsis", [7, 8, 2, 5])) == {7, 8}


# ------------------------------------------------------------------- data quality


def _store_articles(settings: Settings, edats: list[dt.date]) -> None:
    xml = pubmed_set([article_xml(100 + i, edat=d) for i, d in enumerate(edats)])
    items = parse_bytes(xml, source_ref=SourceRef("file", "test.xml"))
    Store(db.connect(settings)).apply(items)


def test_empty_nightly_window_fails_even_if_its_first_day_was_partly_ingested_before(
    sqlite_settings: Settings,
) -> None:
    # yesterday's nightly window [Mon 02:00, Tue 02:00) stored articles entered on Monday
    # and on Tuesday (E-utilities windows are whole days); today's window
    # [Tue 02:00, Wed 02:00) -- Tuesday and Wednesday, both weekdays -- returned nothing
    _store_articles(sqlite_settings, [dt.date(2024, 1, 1)] * 5 + [dt.date(2024, 1, 2)])
    window = (dt.datetime(2024, 1, 2, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, 2, tzinfo=UTC))
    with pytest.raises(DataQualityError, match="returned no record"):
        check_ingest(sqlite_settings, IngestCounts(), window)
